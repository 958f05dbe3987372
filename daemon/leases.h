/*
 * Leases: the one owner of who pins what.  A lease is one pin of one
 * resident version, held by one connection; while any lease on a version
 * exists, residency neither evicts nor frees it.  This module keeps each
 * connection's leases and the bytes they pin against the per-client limit
 * (--client-pin-limit), and the daemon's count of leases held.  A
 * connection's leases end all at once when it goes (ls_leases_end_all), a
 * crash included.
 *
 * A connection may also have a lease page (proto/directory.h): leases it
 * takes in shared memory without a request (warm leases).  This module
 * creates and unmaps the pages, and answers the two questions the rest of
 * the daemon asks of them: does any page hold this version (the scan before
 * a version is freed), and what does each page pin (stats, the per-client
 * limit).  Loop thread only.
 */
#ifndef LS_LEASES_H
#define LS_LEASES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "directory.h"
#include "ls_error.h"

struct ls_resident;
struct ls_residency;

/* One pin of one resident version. */
struct ls_lease {
	uint64_t id;                 /* unique in this run of the daemon */
	struct ls_resident *res;
	uint64_t pinned_bytes;       /* what it counts against its connection's limit */
	struct ls_lease *next;
};

/* The leases of one connection. */
struct ls_lease_set {
	struct ls_lease *head;
	uint64_t pinned_bytes;       /* bytes its leases pin, summed (warm leases apart) */
	uint64_t count;
	/* The lease page shared with the client, or NULL (ls_lease_page_open). */
	struct ls_lease_page *page;
	uint64_t page_acquires_seen; /* the page's count at the last look (ls_lease_pages_look) */
	struct ls_lease_set *page_prev, *page_next; /* sets with a page */
};

/* The daemon's leases, every connection's. */
struct ls_leases {
	uint64_t pin_limit;          /* bytes one connection may pin; 0: no limit */
	uint64_t next_id;
	uint64_t held;               /* leases held, all connections (warm leases apart) */
	struct ls_residency *res;    /* where the versions in pages are found */
	struct ls_lease_set *pages;  /* sets with a page */
	uint64_t warm_acquires;      /* counted from the pages' counts (the clients' word) */
};

/*
 * Pin res for set: 0 with *out, LS_E_PIN_LIMIT when the connection would
 * pin more than its limit, -ENOMEM (each with err).
 */
int ls_lease_take(struct ls_leases *all, struct ls_lease_set *set, struct ls_resident *res,
		  struct ls_lease **out, struct ls_err *err);

/* End the lease id of set: 0, or LS_E_NOT_FOUND when set holds none of that id. */
int ls_lease_release(struct ls_leases *all, struct ls_lease_set *set, uint64_t id);

/* End every lease of set, its page's too: its connection is going. */
void ls_leases_end_all(struct ls_leases *all, struct ls_lease_set *set);

/*
 * Give set a lease page: a sealed memfd of LS_LEASE_PAGE_BYTES mapped here
 * and returned in *fd for the client (the caller closes it once sent).
 * 0, or -errno with err.
 */
int ls_lease_page_open(struct ls_leases *all, struct ls_lease_set *set, int *fd,
		       struct ls_err *err);

/*
 * Whether any page holds a lease on generation in tier (index).  The
 * caller has removed the version from the directory and fenced first
 * (proto/directory.h says why).
 */
bool ls_lease_pages_hold(const struct ls_leases *all, uint64_t generation, uint32_t tier);

/*
 * The generations of every warm lease held now (one per lease, any tier),
 * sorted, in a malloc'ed array: what listings count as pins.  Returns the
 * count (0 with *out NULL when none or out of memory).
 */
size_t ls_lease_pages_held(const struct ls_leases *all, uint64_t **out);

/* The warm leases of set's page and the bytes they pin (versions not resident count 0). */
uint64_t ls_lease_page_pinned(const struct ls_leases *all, const struct ls_lease_set *set,
			      uint64_t *count);

/*
 * Look at every page that acquired since the last look: count its
 * acquires, call used(ctx, generation, tier) for each version its slots
 * held or hold (the LRU learns of warm use), and call over(ctx, set, bytes)
 * for a set that pins more than the limit, warm leases included.
 */
void ls_lease_pages_look(struct ls_leases *all,
			 void (*used)(void *ctx, uint64_t generation, uint32_t tier),
			 void (*over)(void *ctx, struct ls_lease_set *set, uint64_t bytes),
			 void *ctx);

#endif
