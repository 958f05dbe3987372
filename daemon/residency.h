/*
 * Residency: which adapter versions are in memory, in which tier, where, and
 * for whom.
 *
 * The residency has tiers: tier 0 is host memory (memfd slabs), and each GPU
 * the daemon serves adds a device tier (CUDA VMM slabs).  Each tier has its
 * own backend, budget, slabs, LRU and entries; a version may be resident in
 * several tiers at once, as separate entries.
 *
 * Adapters are sub-allocated inside a tier's slabs, exactly their blob's
 * data region long: admission is by bytes against the tier's budget, never
 * by count, and ranks are never padded.  Placement is best fit across the
 * tier's slabs; where no slab has room, a new slab is regular-sized, or
 * sized to what the budget has left when that is less, so that an adapter
 * is evicted only when the budget has no room for it (or the slabs are
 * fragmented and at their limit: the budget plus one regular slab).  Every resident version's tensor
 * table (proto/table.h) is in host memory that clients read in place: on the
 * host tier right after the data, on a device tier in table slabs of host
 * memory that the tier keeps beside its device slabs.
 *
 * Versions of one content (one digest: the same adapter imported under two
 * names, or again after a change and back) share one copy per tier: a
 * version asked for while another of its digest is resident there gets an
 * entry of its own with its own table, reading the other's data region
 * (data_of); that entry is held (not evicted, not freed) while any such
 * reader remains.
 *
 * Unpinned resident entries sit on their tier's LRU list and are evicted
 * oldest first when the tier needs space.  A host load reads the blob's data
 * region through the event loop straight into the slab, then verifies its
 * XXH3 checksum on the worker pool.  A device load stages the version on
 * the host tier (the staging cache: a version already there reads no disk)
 * and pins it there; while the host load reads, each chunk read is copied to
 * the GPU with the device backend's asynchronous copy as the next chunk is
 * read and the last one hashed.  Copies complete through the loop; the
 * device entry is resident once its last copy and the host copy's checksum
 * have both completed.  Every request for an entry that is loading waits on
 * that one load.
 *
 * A resident version leaves a tier at one point only, its retire point
 * (residency.c: ls_res_retire), evicted or deleted, once no lease, staging
 * device load or sharing version holds it; a load that never made its
 * version resident ends apart (ls_load_abandon).
 *
 * The residency reaches slab memory only through the backends (backend.h),
 * and blobs only through the store (ls_store_blob_open, by digest): it never
 * builds a path.  Its inputs are its own (struct ls_res_version), made from
 * catalog records by its callers; its entries and tiers are its own too
 * (residency_internal.h), seen from outside through the functions below.
 * Everything here runs on the loop thread, but for the jobs it hands the
 * worker pool (a blob's open and checks, hashing), whose results come back
 * to the loop.
 */
#ifndef LS_RESIDENCY_H
#define LS_RESIDENCY_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "blob.h"
#include "extents.h"
#include "hist.h"
#include "loop.h"
#include "ls_types.h"
#include "store.h"
#include "table.h"
#include "workers.h"

struct ls_residency;
struct ls_resident;
struct ls_tier;

/* Someone waiting for a load: fn is called once, with 0 or an error. */
struct ls_waiter {
	struct ls_waiter *next, *prev;
	struct ls_resident *res;     /* the entry waited on, NULL once called */
	void (*fn)(struct ls_waiter *w, struct ls_resident *res, int rc, const char *msg);
};


/* Why a resident version leaves a tier (its retire point, residency.c). */
enum ls_retire_why { LS_RETIRE_EVICTED, LS_RETIRE_DELETED };


/* Tiers at most: host, and one per GPU of an 8-GPU node. */
#define LS_RES_MAX_TIERS 9

/* The residency with its host tier (budget and regular slabs in bytes). */
int ls_residency_create(struct ls_backend *host_backend, uint64_t host_budget,
			uint64_t host_slab_size, struct ls_loop *loop, struct ls_workers *workers,
			struct ls_store *store, struct ls_residency **out, struct ls_err *err);

/*
 * Add a device tier served by backend (its slabs of slab_size bytes, rounded
 * to the backend's granularity).  The first device tier also registers the
 * host tier's slabs with its driver, so that uploads read pinned memory.
 */
int ls_residency_add_device(struct ls_residency *r, struct ls_backend *backend, int ordinal,
			    const char *uuid, uint64_t budget, uint64_t slab_size,
			    struct ls_err *err);

/*
 * The warm path (proto/directory.h) as residency sees it: a version it may
 * be leased through shared memory once published, and leaves a tier only
 * after a scan of the lease pages finds it in none (directory.h gives the
 * protocol).  Residency calls:
 *   publish(ctx, e)  e is usable: put it in the directory (false: not
 *                    published, its set is full);
 *   held(ctx, e)     e is about to leave: remove it from the directory,
 *                    fence, and say whether any lease page holds it.
 * An eviction passes over a version a page holds (and publishes it again);
 * a deleted one waits, and is looked at again by ls_res_rescan.
 */
struct ls_res_warm {
	void *ctx;
	bool (*publish)(void *ctx, const struct ls_resident *e);
	bool (*held)(void *ctx, const struct ls_resident *e);
};
void ls_residency_set_warm(struct ls_residency *r, const struct ls_res_warm *warm);

/* Publish a usable entry for warm leases (nothing without hooks, or for one not usable). */
void ls_res_publish(struct ls_resident *e);

/* Free the deleted versions that no lease page holds any more. */
void ls_res_rescan(struct ls_residency *r);

/* A warm lease used generation in tier (index) lately: most recently used now. */
void ls_res_used(struct ls_residency *r, uint32_t tier, uint64_t generation);

/* Deleted versions waiting for lease pages to let go. */
uint32_t ls_res_deferred_count(const struct ls_residency *r);

/* Free the residency and every slab (NULL is a no-op). */
void ls_residency_destroy(struct ls_residency *r);
/* The host tier. */
struct ls_tier *ls_res_host(struct ls_residency *r);

/* The device tier of a GPU by UUID ("" or NULL: the only one), or NULL. */
struct ls_tier *ls_res_device_tier(struct ls_residency *r, const char *uuid);

/* The entry of a generation in a tier, or NULL. */
struct ls_resident *ls_res_find(struct ls_tier *t, uint64_t generation);

/*
 * A version as residency takes it: what a load needs, made from the
 * catalog's record by the caller (catalog_reads.c, on the worker that read
 * it), so that residency knows no catalog format.
 */
struct ls_res_version {
	uint64_t generation;
	uint8_t digest[LS_DIGEST_LEN];  /* the content: its blob, and versions sharing a copy */
	uint64_t data_length;           /* bytes of the blob's data region */
	void *table;                    /* the shared tensor table (table.h), as clients read it */
	size_t table_length;            /* bytes */
};

/*
 * Make rec's version resident in tier t; its table is copied at once, and
 * rec is not kept.  Returns 0 with *out when it is resident now (a hit), 1
 * when it is loading and w (if not NULL) will be called, or an error
 * (LS_E_NO_SPACE, LS_E_CORRUPT, LS_E_DEVICE, -errno) with err.
 */
int ls_res_request(struct ls_tier *t, const struct ls_res_version *rec, struct ls_waiter *w,
		   struct ls_resident **out, struct ls_err *err);

/*
 * The same for a device tier t, of the version of h, resident on the host
 * tier: no catalog record is needed (the table is copied from h's) and the
 * data is uploaded from h.
 */
int ls_res_request_staged(struct ls_tier *t, struct ls_resident *h, struct ls_waiter *w,
			  struct ls_resident **out, struct ls_err *err);

/* A hit on a resident entry: count it and make it the most recently used. */
void ls_res_touch(struct ls_resident *e);

/* Stop waiting (the waiter's owner is going away). */
void ls_res_cancel(struct ls_waiter *w);

void ls_res_pin(struct ls_resident *e);
void ls_res_unpin(struct ls_resident *e);

/*
 * Evict a version from every tier: 0, -EBUSY when it is pinned or loading in
 * one (nothing is evicted then), LS_E_NOT_FOUND when it is resident nowhere.
 */
int ls_res_evict(struct ls_residency *r, uint64_t generation);

/* Evict a version from one tier: 0, -EBUSY (pinned or loading), LS_E_NOT_FOUND. */
int ls_res_evict_tier(struct ls_tier *t, uint64_t generation);

/* A version left the catalog: free it now in every tier, or when its last lease ends. */
void ls_res_deleted(struct ls_residency *r, uint64_t generation);
/* The entry's name and version, from its table (for messages). */
const char *ls_res_name(const struct ls_resident *e);
uint32_t ls_res_version(const struct ls_resident *e);

/* ---- What the rest of the daemon may know of an entry and a tier */

/* Resident and not deleted: a request may be answered with it at once. */
bool ls_res_usable(const struct ls_resident *e);
uint64_t ls_res_generation(const struct ls_resident *e);
const struct ls_tier *ls_res_tier_of(const struct ls_resident *e);

/* Bytes a lease on e counts against its connection's limit: e's own extent. */
uint64_t ls_res_pinned_bytes(const struct ls_resident *e);

/* Where a client finds a resident entry: what an acquire's reply says. */
struct ls_res_share {
	uint64_t generation;
	uint32_t data_slab_id;
	uint64_t data_slab_size;        /* bytes */
	int data_fd;                    /* the slab's exported descriptor; owned by the slab */
	uint64_t data_offset;           /* bytes from the slab's start to the data region */
	uint32_t table_slab_id;         /* the data slab's id when the table is beside the data */
	uint64_t table_slab_size;
	int table_fd;
	uint64_t table_offset, table_length; /* bytes */
	const struct ls_tier *tier;
};
void ls_res_share_of(const struct ls_resident *e, struct ls_res_share *out);

/* Whether a version is resident on the host tier, on a device tier, and its pins in all. */
void ls_res_presence(struct ls_residency *r, uint64_t generation, bool *host, bool *device,
		     uint32_t *pins);

uint32_t ls_res_tier_count(const struct ls_residency *r);

/*
 * Every generation present in a tier (resident, loading or pinned; one that
 * two tiers hold, twice), sorted, in a malloc'ed array: the versions whose
 * blobs the disk cache keeps.  Returns the count (0 with *out NULL when out
 * of memory).
 */
size_t ls_res_generations(struct ls_residency *r, uint64_t **out);
/* Tier i (0: host), or NULL past the last. */
struct ls_tier *ls_res_tier_at(struct ls_residency *r, uint32_t i);
enum ls_tier_kind ls_tier_kind(const struct ls_tier *t);
/* The tier's index: 0 for host, then the device tiers in order. */
uint32_t ls_tier_index(const struct ls_tier *t);
/* "host", or "device" */
const char *ls_tier_kind_name(const struct ls_tier *t);
/* "GPU-..." of a device tier; "" on host. */
const char *ls_tier_uuid(const struct ls_tier *t);

/* A tier's figures, for stats and metrics. */
struct ls_tier_figures {
	enum ls_tier_kind kind;
	int ordinal;
	const char *uuid;
	uint64_t budget, used, slab_bytes, table_bytes; /* bytes */
	uint32_t adapters;
	uint64_t loads, hits, misses, evictions, load_errors;
	const struct ls_hist *load_seconds;
};
void ls_tier_figures(const struct ls_tier *t, struct ls_tier_figures *out);

#endif
