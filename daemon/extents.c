/*
 * Sub-allocation of byte ranges inside one slab (see extents.h for costs).
 *
 * Invariant kept by every function: free[0..count) are sorted by offset,
 * each has len > 0, lies inside [0, size), and no two overlap or touch
 * (touching ranges are always merged).  Every check that can fail is done
 * before the first change, so a refused call leaves the state as it was.
 */
#include "extents.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define LS_EXTENTS_INITIAL_CAP 16

/* Make room for one more range; 0 or -ENOMEM. */
static int extents_reserve_one(struct ls_extents *e)
{
	if (e->count < e->cap)
		return 0;
	size_t cap = e->cap ? e->cap * 2 : LS_EXTENTS_INITIAL_CAP;
	if (cap > SIZE_MAX / sizeof(*e->free))
		return -ENOMEM;
	struct ls_extent *p = realloc(e->free, cap * sizeof(*p));
	if (!p)
		return -ENOMEM;
	e->free = p;
	e->cap = cap;
	return 0;
}

/* Insert r at index i, shifting the rest right; room must be reserved. */
static void extents_insert(struct ls_extents *e, size_t i, struct ls_extent r)
{
	memmove(&e->free[i + 1], &e->free[i], (e->count - i) * sizeof(*e->free));
	e->free[i] = r;
	e->count++;
}

static void extents_remove(struct ls_extents *e, size_t i)
{
	memmove(&e->free[i], &e->free[i + 1], (e->count - i - 1) * sizeof(*e->free));
	e->count--;
}

int ls_extents_init(struct ls_extents *e, uint64_t size)
{
	memset(e, 0, sizeof(*e));
	e->size = size;
	if (extents_reserve_one(e) < 0)
		return -ENOMEM;
	if (size > 0) {
		e->free[0] = (struct ls_extent){ .off = 0, .len = size };
		e->count = 1;
		e->free_bytes = size;
	}
	return 0;
}

/*
 * Where len bytes aligned to align would go in free range i: the start, and
 * the bytes of the range left over; false when they do not fit.
 */
static bool extents_fit(const struct ls_extents *e, size_t i, uint64_t len, uint64_t align,
			uint64_t *start, uint64_t *slack)
{
	struct ls_extent r = e->free[i];
	uint64_t end = r.off + r.len; /* <= size, cannot overflow */
	if (r.off > UINT64_MAX - (align - 1))
		return false;
	uint64_t s = (r.off + align - 1) & ~(align - 1);
	if (s >= end || len > end - s)
		return false;
	*start = s;
	*slack = r.len - len;
	return true;
}

/* The best fit's range index (count when none fits), its start and its slack. */
static size_t extents_best(const struct ls_extents *e, uint64_t len, uint64_t align,
			   uint64_t *start, uint64_t *slack)
{
	size_t best = e->count;
	uint64_t best_start = 0, best_slack = UINT64_MAX;
	for (size_t i = 0; i < e->count; i++) {
		uint64_t s, k;
		if (extents_fit(e, i, len, align, &s, &k) && k < best_slack) {
			best = i;
			best_start = s;
			best_slack = k;
			if (k == 0)
				break;
		}
	}
	*start = best_start;
	*slack = best_slack;
	return best;
}

static bool extents_args_ok(uint64_t len, uint64_t *align)
{
	if (*align == 0)
		*align = 1;
	return len != 0 && (*align & (*align - 1)) == 0;
}

uint64_t ls_extents_best_slack(const struct ls_extents *e, uint64_t len, uint64_t align)
{
	if (!extents_args_ok(len, &align))
		return UINT64_MAX;
	uint64_t start, slack;
	extents_best(e, len, align, &start, &slack);
	return slack;
}

int ls_extents_alloc(struct ls_extents *e, uint64_t len, uint64_t align, uint64_t *off)
{
	if (!extents_args_ok(len, &align))
		return -EINVAL;
	uint64_t start, slack;
	size_t i = extents_best(e, len, align, &start, &slack);
	if (i == e->count)
		return -ENOSPC;

	/*
	 * Cutting [start, start + len) out of r leaves a head [r.off, start)
	 * and a tail [start + len, end), either possibly empty.  Only both at
	 * once add a range, and need room first.
	 */
	struct ls_extent r = e->free[i];
	uint64_t end = r.off + r.len;
	uint64_t head = start - r.off;
	uint64_t tail = end - (start + len);
	if (head > 0 && tail > 0) {
		if (extents_reserve_one(e) < 0)
			return -ENOMEM;
		e->free[i].len = head;
		extents_insert(e, i + 1, (struct ls_extent){ .off = start + len, .len = tail });
	} else if (head > 0) {
		e->free[i].len = head;
	} else if (tail > 0) {
		e->free[i] = (struct ls_extent){ .off = start + len, .len = tail };
	} else {
		extents_remove(e, i);
	}
	e->free_bytes -= len;
	*off = start;
	return 0;
}

/* Index of the first free range with off > x (count if none). */
static size_t extents_upper_bound(const struct ls_extents *e, uint64_t x)
{
	size_t lo = 0, hi = e->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (e->free[mid].off > x)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

int ls_extents_free(struct ls_extents *e, uint64_t off, uint64_t len)
{
	if (len == 0 || off > e->size || len > e->size - off)
		return -EINVAL;
	uint64_t end = off + len;

	/* The ranges just before and just after off; neither may overlap us. */
	size_t i = extents_upper_bound(e, off);
	struct ls_extent *prev = i > 0 ? &e->free[i - 1] : NULL;
	struct ls_extent *next = i < e->count ? &e->free[i] : NULL;
	if (prev && prev->off + prev->len > off)
		return -EINVAL;
	if (next && next->off < end)
		return -EINVAL;

	bool join_prev = prev && prev->off + prev->len == off;
	bool join_next = next && next->off == end;
	if (join_prev && join_next) {
		prev->len += len + next->len;
		extents_remove(e, i);
	} else if (join_prev) {
		prev->len += len;
	} else if (join_next) {
		next->off = off;
		next->len += len;
	} else {
		if (extents_reserve_one(e) < 0)
			return -ENOMEM;
		extents_insert(e, i, (struct ls_extent){ .off = off, .len = len });
	}
	e->free_bytes += len;
	return 0;
}

uint64_t ls_extents_free_bytes(const struct ls_extents *e)
{
	return e->free_bytes;
}

uint64_t ls_extents_largest_free(const struct ls_extents *e)
{
	uint64_t best = 0;
	for (size_t i = 0; i < e->count; i++)
		if (e->free[i].len > best)
			best = e->free[i].len;
	return best;
}

void ls_extents_destroy(struct ls_extents *e)
{
	free(e->free);
	memset(e, 0, sizeof(*e));
}
