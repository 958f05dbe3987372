/*
 * The reference cache: references ("name", "name@3", "name:tag") resolved
 * to generations, so that a warm acquire needs no catalog read.  It owns
 * nothing but that mapping; who fills it (a catalog read that came back)
 * and who empties it (a finished import, delete, tag or rebuild) are its
 * callers.  Loop thread only (clients read the directory's copy of it).
 */
#ifndef LS_REFCACHE_H
#define LS_REFCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "directory.h"

struct ls_refcache;

/* An empty cache in the directory dir's reference slots, where clients read it.  0 or -ENOMEM. */
int ls_refcache_create(struct ls_dir_hdr *dir, struct ls_refcache **out);
void ls_refcache_destroy(struct ls_refcache *c);

/* The generation ref resolved to when it was last read, or 0. */
uint64_t ls_refcache_get(const struct ls_refcache *c, const char *ref);

/* Remember that ref resolved to generation (a longer ref is not kept). */
void ls_refcache_put(struct ls_refcache *c, const char *ref, uint64_t generation);

/* Forget the references of name: "name" always, "name@N" too when all is set. */
void ls_refcache_drop(struct ls_refcache *c, const char *name, bool all);

/*
 * With an origin, "name" (the latest version) may mean a newer version that
 * another node imported: such a reference resolves from the cache for ttl_ns
 * after it was read, then is read again (which asks the origin).
 */
void ls_refcache_set_latest_ttl(struct ls_refcache *c, int64_t ttl_ns);

/* Forget every reference (the catalog was rebuilt). */
void ls_refcache_clear(struct ls_refcache *c);

#endif
