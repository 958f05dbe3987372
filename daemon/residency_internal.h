/*
 * Residency's own structures, for residency.c alone: the rest of the daemon
 * sees entries and tiers through the functions of residency.h.
 */
#ifndef LS_RESIDENCY_INTERNAL_H
#define LS_RESIDENCY_INTERNAL_H

#include "residency.h"

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
	/*
	 * Published in the directory since the last scan of the lease pages
	 * that found it in none: a page may hold it (the warm path).
	 */
	bool published;
	bool deferred;                  /* deleted, and waiting for the pages to let go */
	struct ls_resident *deferred_next;
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
	struct ls_res_warm warm;              /* the warm path's hooks; zeroed: none */
	struct ls_resident *deferred;         /* deleted versions a lease page still holds */
};

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

#endif
