/*
 * Catalog reads on the workers.  Show, list, and the catalog part of a cold
 * acquire, a load, a prefetch and an evict read LMDB and decode records on
 * a worker, so the loop never waits on the catalog (its pages may have to
 * come from disk).  What depends on residency is done on the loop when the
 * read is back: show and list fill in where each version is resident here;
 * a lookup calls the then() its requester gave.
 */
#ifndef LS_CATALOG_READS_H
#define LS_CATALOG_READS_H

#include "server.h"

enum ls_read_for { LS_READ_SHOW, LS_READ_LIST, LS_READ_LOOKUP };

struct ls_read_job {
	struct ls_job job;
	enum ls_read_for purpose;
	/* A lookup's next step, on the loop, once its records are read. */
	void (*then)(struct ls_read_job *j);
	bool makes_resident;            /* then() makes versions resident: redone after a delete */
	struct ls_session *s;
	uint64_t id;
	int rc;
	struct ls_err err;
	/* lookups: refs in, records out (with tensors) */
	size_t n;
	char **refs;
	Lorastore__VersionRecord **recs;
	struct ls_res_version *versions; /* lookups: what residency takes of each record */
	uint64_t delete_seq;            /* srv->delete_seq when submitted */
	uint64_t catalog_seq;           /* srv->catalog_seq when submitted */
	/* acquire and load */
	int64_t t0_ns;                  /* when the request arrived */
	int64_t timeout_ms;
	bool lease;
	Lorastore__Tier tier;
	bool every_tier;                /* evict: from every tier */
	char device[64];
	/* list: a page of records without tensors, with what the tensors tell */
	char prefix[LS_NAME_MAX + 1];
	char cursor[LS_NAME_MAX + 16];
	char next[LS_NAME_MAX + 16];
	unsigned limit;
	size_t page_bytes;              /* packed bytes of the records taken so far */
	uint32_t *tensor_counts;
	uint64_t *footprints;
	char ***aliases;                /* list and show: the aliases of each record */
	size_t *n_aliases;
	/*
	 * Show and list answer in two hops: the loop fills in residency, then
	 * a worker encodes the reply (a page of 1,000 entries is a few hundred
	 * KB of protobuf), and the loop sends the bytes.
	 */
	bool packing;
	Lorastore__AdapterEntry *entries;
	Lorastore__AdapterEntry **entry_ptrs;
	Lorastore__ListReply reply;
	uint8_t *frame;
	size_t frame_len;
};

/*
 * A lookup of refs (copied) whose records then() is given on the loop; with
 * makes_resident, also what residency takes of each (versions, built on the
 * worker), and the read is redone when a delete finished meanwhile.  NULL
 * after answering the request (out of memory, or over --client-jobs).
 */
struct ls_read_job *ls_read_lookup(struct ls_session *s, uint64_t id, const char *const *refs,
				   size_t n, bool makes_resident,
				   void (*then)(struct ls_read_job *j));

/* Hand a read to the workers. */
void ls_read_submit(struct ls_read_job *j);

#endif
