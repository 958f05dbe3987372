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
 * The residency reaches slab memory only through the backends (backend.h).
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
#include "lorastore.pb-c.h"
#include "store.h"
#include "table.h"
#include "workers.h"

struct ls_resident;
struct ls_tier;

/* Someone waiting for a load: fn is called once, with 0 or an error. */
struct ls_waiter {
	struct ls_waiter *next, *prev;
	struct ls_resident *res;     /* the entry waited on, NULL once called */
	void (*fn)(struct ls_waiter *w, struct ls_resident *res, int rc, const char *msg);
};

enum ls_res_state { LS_RES_LOADING, LS_RES_VERIFYING, LS_RES_UPLOADING, LS_RES_RESIDENT };

struct ls_resident {
	struct ls_tier *tier;
	uint64_t generation;
	enum ls_res_state state;
	int64_t load_t0_ns;             /* CLOCK_MONOTONIC when its load started */
	uint32_t slab;                  /* index into the tier's slabs */
	uint64_t offset;                /* bytes from the slab's start to the data region */
	uint64_t length;                /* bytes of the extent in the slab: data (and table on host) */
	uint64_t region_bytes;          /* bytes of the data region in memory: the record's
					   data_length in whole pages (the blob's region) */
	uint32_t table_slab;            /* index into the tier's table slabs */
	uint64_t table_offset;          /* bytes from that slab's start to the table */
	uint64_t table_length;          /* bytes of the table */
	uint32_t pins;                  /* leases, and device loads staging from this entry */
	uint8_t digest[LS_DIGEST_LEN];  /* the content: versions of one digest share a copy */
	/*
	 * The entry of the same tier and digest whose data region this one
	 * reads (its own extent is then its table alone, on a device tier
	 * nothing), or NULL: the data is its own.  That entry counts this one
	 * in sharers and is neither evicted nor freed while any remain.
	 */
	struct ls_resident *data_of;
	uint32_t sharers;
	bool deleted;                   /* removed from the catalog: free at pins == 0 */
	struct ls_resident *lru_prev, *lru_next;  /* on the LRU while unpinned and resident */
	struct ls_resident *hnext;
	struct ls_waiter *waiters;
	/*
	 * Host load in progress: the data region is read in chunks, and each
	 * chunk read is hashed (XXH3, streaming) on the worker pool while the
	 * next one is read.
	 */
	int fd;
	struct ls_blob_header hdr;
	uint64_t done;                  /* bytes read so far */
	uint64_t hashed;                /* bytes hashed so far */
	uint64_t hash_len;              /* bytes the hash job in flight covers */
	void *xxh;                      /* XXH3_state_t */
	bool opening;                   /* the open job (blob checks, on a worker) in flight */
	bool want_direct, direct_refused; /* O_DIRECT asked for; refused by the file system */
	bool reading, hashing;          /* a read / a hash job in flight */
	int fail_rc;                    /* first failure; reported once nothing is in flight */
	char fail_msg[LS_NAME_MAX + LS_ERR_MSG_MAX + 32]; /* "name@version: " and a message */
	struct ls_op read_op;
	struct ls_job hash_job;
	/*
	 * Device load in progress: the host entry it stages from, pinned until
	 * the last copy is done, and the copies.  While that host entry loads,
	 * this entry is on its followers list and copies each chunk it reads.
	 */
	struct ls_waiter staging_wait;
	struct ls_resident *staging;
	struct ls_resident *follow_next; /* the next follower of the same host entry */
	bool staged;                    /* the host copy is read and its checksum matched */
	bool uploading;                 /* a copy in flight */
	uint64_t uploaded;              /* bytes of the data region copied so far */
	uint64_t upload_len;            /* bytes the copy in flight covers */
	struct ls_upload upload;
	/* Host entries: device entries copying this one's chunks as they are read. */
	struct ls_resident *followers;
};

struct ls_slab_slot {
	struct ls_slab slab;
	struct ls_extents ext;
	uint32_t adapters;
};

struct ls_residency_stats {
	uint64_t loads, hits, misses, evictions, load_errors;
	struct ls_hist load_seconds;    /* start of a load to resident */
};

enum ls_tier_kind { LS_TIER_HOST, LS_TIER_DEVICE };

/* Tiers at most: host, and one per GPU of an 8-GPU node. */
#define LS_RES_MAX_TIERS 9

struct ls_tier {
	struct ls_residency *owner;
	enum ls_tier_kind kind;
	uint32_t index;                 /* in the residency's tiers */
	int ordinal;                    /* the daemon's CUDA ordinal of a device tier; -1 on host */
	char uuid[48];                  /* "GPU-..." of a device tier; "" on host */
	struct ls_backend *backend;     /* of the data slabs */
	uint64_t budget;                /* bytes of adapters */
	uint64_t used;                  /* bytes of resident and loading adapters */
	uint64_t slab_bytes;            /* bytes of data slabs allocated */
	uint64_t slab_size;             /* size of a regular slab */
	uint64_t slab_limit;            /* bytes the data slabs may total: budget + slab_size */
	uint32_t n_slabs;
	struct ls_slab_slot *slabs;
	/* Device tiers: the tables, in host memory; on host, the data slabs hold them. */
	uint32_t n_table_slabs;
	struct ls_slab_slot *table_slabs;
	uint64_t table_bytes;           /* bytes of table slabs allocated */
	uint32_t count;                 /* entries */
	struct ls_resident *lru_head, *lru_tail;   /* head: least recently used */
	struct ls_resident **buckets;
	uint32_t n_buckets;
	struct ls_residency_stats stats;
	struct ls_op completion_op;     /* watching the backend's completion_fd */
	bool watching;
};

struct ls_residency {
	struct ls_loop *loop;
	struct ls_workers *workers;
	struct ls_store *store;
	struct ls_backend *host_backend;      /* of the host tier and device tiers' tables */
	struct ls_backend *register_backend;  /* pins host slabs for uploads, or NULL */
	uint32_t n_tiers;
	struct ls_tier tiers[LS_RES_MAX_TIERS]; /* [0] host, then one per GPU */
	uint32_t next_slab_id;                /* slab ids are unique across tiers */
	bool direct_io;                       /* O_DIRECT reads work on this filesystem */
};

/* The residency with its host tier (budget and regular slabs in bytes). */
int ls_residency_init(struct ls_residency *r, struct ls_backend *host_backend,
		      uint64_t host_budget, uint64_t host_slab_size, struct ls_loop *loop,
		      struct ls_workers *workers,
		      struct ls_store *store, struct ls_err *err);

/*
 * Add a device tier served by backend (its slabs of slab_size bytes, rounded
 * to the backend's granularity).  The first device tier also registers the
 * host tier's slabs with its driver, so that uploads read pinned memory.
 */
int ls_residency_add_device(struct ls_residency *r, struct ls_backend *backend, int ordinal,
			    const char *uuid, uint64_t budget, uint64_t slab_size,
			    struct ls_err *err);

void ls_residency_destroy(struct ls_residency *r);

static inline struct ls_tier *ls_res_host(struct ls_residency *r)
{
	return &r->tiers[0];
}

/* The device tier of a GPU by UUID ("" or NULL: the only one), or NULL. */
struct ls_tier *ls_res_device_tier(struct ls_residency *r, const char *uuid);

/* The entry of a generation in a tier, or NULL. */
struct ls_resident *ls_res_find(struct ls_tier *t, uint64_t generation);

/*
 * Make rec's version resident in tier t; its table is written at once, and
 * rec is not kept.  Returns 0 with *out when it is resident now (a hit), 1
 * when it is loading and w (if not NULL) will be called, or an error
 * (LS_E_NO_SPACE, LS_E_CORRUPT, LS_E_DEVICE, -errno) with err.
 */
int ls_res_request(struct ls_tier *t, const Lorastore__VersionRecord *rec, struct ls_waiter *w,
		   struct ls_resident **out, struct ls_err *err);

/*
 * The same for a device tier t, of the version of h, resident on the host
 * tier: no catalog record is needed (the table is copied from h's) and the
 * data is uploaded from h.
 */
int ls_res_request_staged(struct ls_tier *t, struct ls_resident *h, struct ls_waiter *w,
			  struct ls_resident **out, struct ls_err *err);

/*
 * Bytes rec's version takes on the host tier: its data region and its table,
 * each to whole pages; 0 when rec is malformed.
 */
uint64_t ls_res_footprint(const Lorastore__VersionRecord *rec);

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

/* The slab slot of an entry's data (another version's, when it shares it), and of its table. */
static inline struct ls_slab_slot *ls_res_slab(const struct ls_resident *e)
{
	const struct ls_resident *d = e->data_of ? e->data_of : e;
	return &d->tier->slabs[d->slab];
}

/* Bytes from the start of ls_res_slab(e) to the entry's data region. */
static inline uint64_t ls_res_data_offset(const struct ls_resident *e)
{
	return e->data_of ? e->data_of->offset : e->offset;
}

static inline struct ls_slab_slot *ls_res_table_slab(const struct ls_resident *e)
{
	return e->tier->kind == LS_TIER_HOST ? &e->tier->slabs[e->table_slab]
					     : &e->tier->table_slabs[e->table_slab];
}

/* The entry's table, in the daemon's host mapping. */
const struct ls_table_hdr *ls_res_table(const struct ls_resident *e);

/* The entry's name and version, from its table (for messages). */
static inline const char *ls_res_name(const struct ls_resident *e)
{
	const struct ls_table_hdr *h = ls_res_table(e);
	return (const char *)h + h->pool + h->name;
}

static inline uint32_t ls_res_version(const struct ls_resident *e)
{
	return ls_res_table(e)->version;
}

/* "host", or "device" */
static inline const char *ls_tier_kind_name(const struct ls_tier *t)
{
	return t->kind == LS_TIER_HOST ? "host" : "device";
}

#endif
