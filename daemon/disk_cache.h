/*
 * The origin, as the loop sees it: versions a worker pulled are counted
 * into the catalog's figures, and the disk cache of pulled blobs is kept
 * under --disk-budget by a trim on the workers (ls_store_trim_pulled), which
 * keeps every version a tier holds.  Loop thread only.
 */
#ifndef LS_DISK_CACHE_H
#define LS_DISK_CACHE_H

#include "server.h"

/*
 * At start, with an origin: on a worker, a first look at it (a warning when
 * it does not answer or refuses) and a count of the pulled blobs on disk
 * (trimmed to the budget).
 */
void ls_disk_cache_start(struct ls_server *srv);

/* After a catalog read came back: its pulls counted, and a trim when over the budget. */
void ls_disk_cache_after_read(struct ls_server *srv);

#endif
