/*
 * A sub-allocator of byte ranges inside one slab.
 *
 * Adapters are placed in slabs at exact lengths (the blob format already
 * rounds each adapter to 4096 bytes; ranks are never padded).  The free
 * space is kept as a sorted array of disjoint, non-adjacent ranges, so that
 * a slab with n free ranges costs:
 *
 *   ls_extents_alloc         O(n) best-fit scan, plus O(n) to insert a split
 *   ls_extents_best_slack    O(n)
 *   ls_extents_free          O(log n) search, plus O(n) to insert or merge
 *   ls_extents_free_bytes    O(1)
 *   ls_extents_largest_free  O(n)
 *
 * A slab holds at most a few thousand adapters, so n stays small and the
 * array beats a tree on both memory and cache behaviour.
 *
 * Not thread-safe: one slab's extents belong to the daemon's event loop.
 */
#ifndef LS_EXTENTS_H
#define LS_EXTENTS_H

#include <stddef.h>
#include <stdint.h>

struct ls_extent {
	uint64_t off; /* bytes from the start of the slab */
	uint64_t len; /* bytes, never 0 */
};

struct ls_extents {
	uint64_t size;            /* bytes managed, [0, size) */
	uint64_t free_bytes;      /* sum of the free ranges' lengths */
	struct ls_extent *free;   /* free ranges, sorted by off, never touching */
	size_t count;             /* ranges in use in free[] */
	size_t cap;               /* ranges allocated in free[] */
};

/* Start with all of [0, size) free.  0 or -ENOMEM. */
int ls_extents_init(struct ls_extents *e, uint64_t size);

/*
 * Take len bytes at an offset that is a multiple of align, from the free
 * range that leaves the fewest bytes over (best fit; the lowest such range
 * on a tie), at the lowest aligned offset in it; the offset goes to *off.
 * Best fit keeps large ranges whole for large adapters.  align is a power
 * of two, counted from the start of the slab; 0 means 1.
 * 0; -EINVAL if len is 0 or align not a power of two; -ENOSPC if no free
 * range fits; -ENOMEM if the free list could not grow (nothing changed).
 */
int ls_extents_alloc(struct ls_extents *e, uint64_t len, uint64_t align, uint64_t *off);

/*
 * Give back [off, off + len), merging it with free neighbours.
 * 0; -EINVAL if len is 0, the range runs past the end, or any byte of it is
 * already free (a double free), in which case nothing changes; -ENOMEM if
 * the free list could not grow (nothing changed).  Freeing a range that was
 * never handed out but is entirely in use cannot be detected here.
 */
int ls_extents_free(struct ls_extents *e, uint64_t off, uint64_t len);

/*
 * The bytes ls_extents_alloc would leave over in the range it would take
 * (0: an exact fit); UINT64_MAX when nothing fits or the arguments are bad.
 * Nothing changes: it lets a caller pick the best of several slabs.
 */
uint64_t ls_extents_best_slack(const struct ls_extents *e, uint64_t len, uint64_t align);

/* Total free bytes. */
uint64_t ls_extents_free_bytes(const struct ls_extents *e);

/* Length of the largest free range: the largest alloc with align 1 that succeeds. */
uint64_t ls_extents_largest_free(const struct ls_extents *e);

/* Release the free list; e may be initialized again. */
void ls_extents_destroy(struct ls_extents *e);

#endif
