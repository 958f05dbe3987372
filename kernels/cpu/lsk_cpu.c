/*
 * The optimized CPU path: checks, groups the batch by adapter, splits the
 * work between threads and runs the kernels of the best instruction set.
 *
 * Grouping: segments are groups already.  Per-token batches are sorted by
 * (adapter, token) in the workspace, so that each adapter's weights are
 * streamed once for all the tokens that use it rather than once per token.
 *
 * Work: every (group, slice) is a shrink, which fills that slice's part of
 * the shrink buffer v for the group's tokens, then an expand, which adds
 * into the slice's columns of y.  All shrinks run before all expands.  With
 * n threads each thread takes 1/n of every shrink (by ranks, or by tokens
 * when the group is long) and 1/n of every expand (by output columns), so
 * each weight is read by one thread, the shares are balanced whatever the
 * mix of adapters, and no thread writes where another writes.  One OpenMP
 * region with one barrier between the phases; nothing is allocated.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ls_error.h"
#include "lsk.h"
#include "lsk_cpu_internal.h"
#include "../lsk_internal.h"

/* What every thread needs to find its share of the work. */
struct lsk_cpu_plan {
	const lsk_lora *l;
	const lsk_batch *b;
	const void *x;
	void *y;
	float *v;                 /* shrink buffer, [n_tokens][n_slices][rank_stride] */
	int64_t rank_stride;
	const uint64_t *keys;     /* decode: (adapter << 32 | token), sorted */
	int64_t n_keys;
	const struct lsk_cpu_kern *kern;
};

/*
 * The kernels for this CPU: AVX2 when it has AVX2, FMA and F16C, portable
 * ones otherwise.  LSK_CPU_ISA=generic in the environment forces the
 * portable kernels, so that the tests can check them on any machine.  The
 * choice is made once; a race between two first calls makes the same choice.
 */
static const struct lsk_cpu_kern *lsk_cpu_pick(void)
{
	static _Atomic(const struct lsk_cpu_kern *) chosen;
	const struct lsk_cpu_kern *k = atomic_load_explicit(&chosen, memory_order_relaxed);
	if (k)
		return k;
	k = &lsk_cpu_kern_generic;
	const char *env = getenv("LSK_CPU_ISA");
	bool force_generic = env && strcmp(env, "generic") == 0;
#ifdef LSK_CPU_AVX2
	__builtin_cpu_init();
	if (!force_generic && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
	    __builtin_cpu_supports("f16c"))
		k = &lsk_cpu_kern_avx2;
#else
	(void)force_generic;
#endif
	atomic_store_explicit(&chosen, k, memory_order_relaxed);
	return k;
}

/* In-place heapsort: qsort may allocate, and this path must not. */
static void lsk_cpu_sift(uint64_t *k, int64_t root, int64_t n)
{
	for (;;) {
		int64_t c = 2 * root + 1;
		if (c >= n)
			return;
		if (c + 1 < n && k[c + 1] > k[c])
			c++;
		if (k[root] >= k[c])
			return;
		uint64_t tmp = k[root];
		k[root] = k[c];
		k[c] = tmp;
		root = c;
	}
}

static void lsk_cpu_sort(uint64_t *k, int64_t n)
{
	int64_t i = 1;
	while (i < n && k[i - 1] <= k[i])
		i++;
	if (i >= n)
		return; /* already grouped, as a batch built per adapter is */
	for (i = n / 2 - 1; i >= 0; i--)
		lsk_cpu_sift(k, i, n);
	for (i = n - 1; i > 0; i--) {
		uint64_t tmp = k[0];
		k[0] = k[i];
		k[i] = tmp;
		lsk_cpu_sift(k, 0, i);
	}
}

/* [n * part / parts, n * (part + 1) / parts): an even share of n items. */
static void lsk_cpu_share(int64_t n, int part, int parts, int64_t *lo, int64_t *hi)
{
	*lo = n * part / parts;
	*hi = n * (part + 1) / parts;
}

/* Thread tid's share of one phase for one group of tokens using adapter a. */
static void lsk_cpu_group(const struct lsk_cpu_plan *p, int32_t a, const uint64_t *keys,
			  int64_t t0, int64_t n, int tid, int nth, int phase)
{
	const lsk_lora *l = p->l;
	for (int32_t s = 0; s < l->n_slices; s++) {
		const lsk_slice *sl = &l->slices[s];
		int32_t rank = sl->rank[a];
		if (rank == 0)
			continue;
		struct lsk_cpu_job j = {
			.adt = l->act_dtype,
			.wdt = l->weight_dtype,
			.in = l->in,
			.ldx = l->ldx,
			.ldy = l->ldy,
			.x = p->x,
			.y = p->y,
			.y_col = sl->out_offset,
			.keys = keys,
			.t0 = t0,
			.n = n,
			.a = sl->a[a],
			.b = sl->b[a],
			.rank = rank,
			.out = sl->out,
			.scale = l->scale[a],
			.v = p->v + s * p->rank_stride,
			.v_ld = l->n_slices * p->rank_stride,
		};
		int64_t lo, hi;
		if (phase == 0) {
			/* A long group splits by tokens (each thread reads all of A,
			 * from a shared cache); a short one by ranks (each thread
			 * reads its rows of A, once). */
			if (n >= 8 * (int64_t)nth) {
				lsk_cpu_share(n, tid, nth, &lo, &hi);
				if (lo < hi)
					p->kern->shrink(&j, lo, hi, 0, rank);
			} else {
				lsk_cpu_share(rank, tid, nth, &lo, &hi);
				if (lo < hi)
					p->kern->shrink(&j, 0, n, (int32_t)lo, (int32_t)hi);
			}
			/* The expand reads v in whole vectors of 8: zero the tail. */
			int64_t rp = (rank + 7) & ~(int64_t)7;
			lsk_cpu_share(n, tid, nth, &lo, &hi);
			for (int64_t i = lo; i < hi && rp > rank; i++) {
				float *vt = j.v + lsk_cpu_token(&j, i) * j.v_ld;
				memset(vt + rank, 0, (size_t)(rp - rank) * sizeof(float));
			}
		} else {
			/* Columns in units of 16, the widest expand tile. */
			lsk_cpu_share((sl->out + 15) / 16, tid, nth, &lo, &hi);
			lo *= 16;
			hi = hi * 16 < sl->out ? hi * 16 : sl->out;
			if (lo < hi)
				p->kern->expand(&j, lo, hi);
		}
	}
}

static void lsk_cpu_phase(const struct lsk_cpu_plan *p, int tid, int nth, int phase)
{
	if (p->keys) {
		for (int64_t i = 0; i < p->n_keys;) {
			uint64_t a = p->keys[i] >> 32;
			int64_t e = i + 1;
			while (e < p->n_keys && p->keys[e] >> 32 == a)
				e++;
			lsk_cpu_group(p, (int32_t)a, p->keys + i, 0, e - i, tid, nth, phase);
			i = e;
		}
		return;
	}
	for (int32_t i = 0; i < p->b->n_segments; i++) {
		const lsk_segment *sg = &p->b->segments[i];
		if (sg->adapter >= 0 && sg->len > 0)
			lsk_cpu_group(p, sg->adapter, NULL, sg->start, sg->len, tid, nth, phase);
	}
}

int lsk_cpu_apply(const lsk_lora *l, const lsk_batch *b, const void *x, void *y,
		  void *workspace, size_t workspace_size, int n_threads)
{
	int rc = lsk_check(l, b);
	if (rc)
		return rc;
	if (!workspace || (uintptr_t)workspace % 64 != 0)
		return -EINVAL;
	size_t need = lsk_workspace_size(l, b->n_tokens);
	if (need == SIZE_MAX || workspace_size < need)
		return LS_E_SHAPE;
	if (b->n_tokens == 0)
		return 0;
	if (!x || !y)
		return -EINVAL;

	struct lsk_cpu_plan p = {
		.l = l,
		.b = b,
		.x = x,
		.y = y,
		.v = workspace,
		.rank_stride = lsk_ws_rank_stride(l->max_rank),
		.kern = lsk_cpu_pick(),
	};
	if (b->token_adapter) {
		uint64_t *keys = (uint64_t *)((char *)workspace + lsk_ws_v_bytes(l, b->n_tokens));
		int64_t m = 0;
		for (int64_t t = 0; t < b->n_tokens; t++)
			if (b->token_adapter[t] >= 0)
				keys[m++] = (uint64_t)b->token_adapter[t] << 32 | (uint64_t)t;
		lsk_cpu_sort(keys, m);
		p.keys = keys;
		p.n_keys = m;
		if (m == 0)
			return 0;
	}

	int nth = n_threads > 1 ? n_threads : 1;
#ifdef _OPENMP
	if (nth > 1) {
#pragma omp parallel num_threads(nth)
		{
			int tid = omp_get_thread_num();
			int got = omp_get_num_threads();
			lsk_cpu_phase(&p, tid, got, 0);
#pragma omp barrier
			lsk_cpu_phase(&p, tid, got, 1);
		}
		return 0;
	}
#else
	(void)nth; /* built without OpenMP: the calling thread does it all */
#endif
	lsk_cpu_phase(&p, 0, 1, 0);
	lsk_cpu_phase(&p, 0, 1, 1);
	return 0;
}
