/*
 * Residency: which adapter versions are in memory, where, and for whom.
 *
 * Adapters are sub-allocated inside large slabs of one backend (host memfd
 * slabs, or CUDA VMM slabs), exactly their blob's data region long, followed
 * by their tensor table (proto/table.h), which clients read in place:
 * admission is by bytes against a budget, never by count, and ranks are
 * never padded.
 * Unpinned resident adapters sit on an LRU list and are evicted oldest first
 * when space is needed.  A load reads the blob's data region through the
 * event loop straight into the slab, then verifies its XXH3 checksum on the
 * worker pool; every request for an adapter that is loading waits on that one load.
 *
 * Everything here runs on the loop thread.
 */
#ifndef LS_RESIDENCY_H
#define LS_RESIDENCY_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "blob.h"
#include "extents.h"
#include "loop.h"
#include "lorastore.pb-c.h"
#include "store.h"
#include "table.h"
#include "workers.h"

struct ls_resident;

/* Someone waiting for a load: fn is called once, with 0 or an error. */
struct ls_waiter {
	struct ls_waiter *next, *prev;
	struct ls_resident *res;     /* the entry waited on, NULL once called */
	void (*fn)(struct ls_waiter *w, struct ls_resident *res, int rc, const char *msg);
};

enum ls_res_state { LS_RES_LOADING, LS_RES_VERIFYING, LS_RES_RESIDENT };

struct ls_resident {
	uint64_t generation;
	enum ls_res_state state;
	uint32_t slab;                  /* index into the residency's slabs */
	uint64_t offset;                /* bytes from the slab's start */
	uint64_t length;                /* bytes of the extent: data region and table */
	uint64_t data_length;           /* bytes of the blob's data region (page multiple) */
	uint64_t table_length;          /* bytes of the table, at offset + data_length */
	uint32_t pins;                  /* leases */
	bool deleted;                   /* removed from the catalog: free at pins == 0 */
	struct ls_resident *lru_prev, *lru_next;  /* on the LRU while unpinned and resident */
	struct ls_resident *hnext;
	struct ls_waiter *waiters;
	/*
	 * Load in progress: the data region is read in chunks, and each chunk
	 * read is hashed (XXH3, streaming) on the worker pool while the next
	 * one is read.
	 */
	int fd;
	struct ls_blob_header hdr;
	uint64_t done;                  /* bytes read so far */
	uint64_t hashed;                /* bytes hashed so far */
	uint64_t hash_len;              /* bytes the hash job in flight covers */
	void *xxh;                      /* XXH3_state_t */
	bool reading, hashing;          /* a read / a hash job in flight */
	int fail_rc;                    /* first failure; reported once nothing is in flight */
	char fail_msg[256];
	struct ls_op read_op;
	struct ls_job hash_job;
	struct ls_residency *owner;
};

struct ls_slab_slot {
	struct ls_slab slab;
	struct ls_extents ext;
	uint32_t adapters;
};

struct ls_residency_stats {
	uint64_t loads, hits, misses, evictions, load_errors;
};

struct ls_residency {
	struct ls_backend *backend;
	struct ls_loop *loop;
	struct ls_workers *workers;
	struct ls_store *store;
	uint64_t budget;                /* bytes of adapters */
	uint64_t used;                  /* bytes of resident and loading adapters */
	uint64_t slab_bytes;            /* bytes of slabs allocated */
	uint64_t slab_size;             /* size of a regular slab */
	uint32_t n_slabs;
	struct ls_slab_slot *slabs;
	uint32_t count;                 /* entries */
	struct ls_resident *lru_head, *lru_tail;   /* head: least recently used */
	struct ls_resident **buckets;
	uint32_t n_buckets;
	struct ls_residency_stats stats;
	bool direct_io;                 /* O_DIRECT reads work on this filesystem */
};

int ls_residency_init(struct ls_residency *r, struct ls_backend *backend, uint64_t budget,
		      struct ls_loop *loop, struct ls_workers *workers, struct ls_store *store,
		      struct ls_err *err);
void ls_residency_destroy(struct ls_residency *r);

/* The entry of a generation, or NULL. */
struct ls_resident *ls_res_find(struct ls_residency *r, uint64_t generation);

/*
 * Make rec's version resident; its table is written into the slab at once,
 * and rec is not kept.  Returns 0 with *out when it is
 * resident now (a hit), 1 when it is loading and w (if not NULL) will be
 * called, or an error (LS_E_NO_SPACE, LS_E_CORRUPT, -errno) with err.
 */
int ls_res_request(struct ls_residency *r, const Lorastore__VersionRecord *rec,
		   struct ls_waiter *w, struct ls_resident **out, struct ls_err *err);

/*
 * Bytes rec's version takes when resident: its data region and its table,
 * each to whole pages; 0 when rec is malformed.
 */
uint64_t ls_res_footprint(const Lorastore__VersionRecord *rec);

/* A hit on a resident entry: count it and make it the most recently used. */
void ls_res_touch(struct ls_residency *r, struct ls_resident *e);

/* Stop waiting (the waiter's owner is going away). */
void ls_res_cancel(struct ls_residency *r, struct ls_waiter *w);

void ls_res_pin(struct ls_residency *r, struct ls_resident *e);
void ls_res_unpin(struct ls_residency *r, struct ls_resident *e);

/* Evict one version: 0, -EBUSY while pinned or loading, LS_E_NOT_FOUND. */
int ls_res_evict(struct ls_residency *r, uint64_t generation);

/* A version left the catalog: free it now, or when its last lease ends. */
void ls_res_deleted(struct ls_residency *r, uint64_t generation);

/* The slab slot of an entry. */
static inline struct ls_slab_slot *ls_res_slab(struct ls_residency *r, const struct ls_resident *e)
{
	return &r->slabs[e->slab];
}

/*
 * The entry's table, in the daemon's mapping of the slab.  A host slab has
 * one; a device tier keeps its tables in host memory of its own.
 */
static inline const struct ls_table_hdr *ls_res_table(const struct ls_residency *r,
						      const struct ls_resident *e)
{
	return (const struct ls_table_hdr *)((const uint8_t *)r->slabs[e->slab].slab.host +
					     e->offset + e->data_length);
}

/* The entry's name, from its table (for messages). */
static inline const char *ls_res_name(const struct ls_residency *r, const struct ls_resident *e)
{
	const struct ls_table_hdr *h = ls_res_table(r, e);
	return (const char *)h + h->pool + h->name;
}

static inline uint32_t ls_res_version(const struct ls_residency *r, const struct ls_resident *e)
{
	return ls_res_table(r, e)->version;
}

#endif
