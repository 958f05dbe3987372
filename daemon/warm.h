/*
 * The warm path, the daemon's side (proto/directory.h has the protocol): the
 * directory's memfd and mapping, the versions published in it, and what
 * joins residency to the lease pages: residency's hooks (publish, and the
 * scan before a version leaves), and the tick's look at the pages (LRU
 * order, the per-client limit, deleted versions waiting for warm leases to
 * end).  The reference cache keeps its entries in the directory too
 * (refcache.h).  Loop thread only.
 */
#ifndef LS_WARM_H
#define LS_WARM_H

#include <stddef.h>
#include <stdint.h>

#include "directory.h"
#include "ls_error.h"

struct ls_server;

struct ls_warm {
	int dir_fd;                  /* the directory's memfd: sent at each Hello that asks */
	struct ls_dir_hdr *dir;      /* the daemon's writable mapping */
	size_t dir_bytes;
	uint64_t unpublished;        /* publications refused: the version's set was full */
	uint64_t over_limit;         /* connections closed for pinning too much through a page */
};

/*
 * Create the directory (sealed: clients can map it read-only alone), list
 * srv's tiers in it, and join residency and leases to it.  0, or -errno
 * with err.
 */
int ls_warm_init(struct ls_server *srv, struct ls_err *err);
void ls_warm_destroy(struct ls_warm *w);

/* The tick: look at the lease pages, and free deleted versions they let go. */
void ls_warm_tick(struct ls_server *srv);

#endif
