/*
 * Between the optimized CPU driver (lsk_cpu.c) and its kernels.
 *
 * The driver groups the batch, splits the work between threads and calls the
 * kernels through one table; each instruction set has its own table, built
 * from the same source (lsk_cpu_kern.h) with different compiler flags:
 * lsk_cpu_generic.c for any target, lsk_cpu_avx2.c with AVX2, FMA and F16C.
 */
#ifndef LSK_CPU_INTERNAL_H
#define LSK_CPU_INTERNAL_H

#include <stdint.h>

#include "lsk.h"

/* One adapter's slice applied to one group of tokens that all use it. */
struct lsk_cpu_job {
	lsk_dtype adt;          /* dtype of x and y */
	lsk_dtype wdt;          /* dtype of A and B */
	int64_t in;             /* columns of x and of A */
	int64_t ldx;            /* elements between rows of x */
	int64_t ldy;            /* elements between rows of y */
	const void *x;
	void *y;
	int64_t y_col;          /* first column of y this slice adds into */
	/* Token i of the group is (int32_t)keys[i], or t0 + i when keys is NULL. */
	const uint64_t *keys;
	int64_t t0;
	int64_t n;              /* tokens in the group */
	const void *a;          /* A, [rank][in] */
	const void *b;          /* B, [out][rank] */
	int32_t rank;           /* 1..LSK_MAX_RANK */
	int64_t out;            /* rows of B */
	float scale;
	float *v;               /* this slice's shrink results: token t at v + t * v_ld */
	int64_t v_ld;           /* floats between tokens in v */
};

static inline int64_t lsk_cpu_token(const struct lsk_cpu_job *j, int64_t i)
{
	return j->keys ? (int64_t)(uint32_t)j->keys[i] : j->t0 + i;
}

/* The kernels of one instruction set. */
struct lsk_cpu_kern {
	const char *name;
	/*
	 * v[token i][r] = sum_k x[token i][k] * A[r][k] for tokens [i0, i1) of
	 * the group and ranks [r0, r1).
	 */
	void (*shrink)(const struct lsk_cpu_job *j, int64_t i0, int64_t i1, int32_t r0, int32_t r1);
	/*
	 * y[token][y_col + o] += scale * sum_r v[token][r] * B[o][r] for every
	 * token of the group and o in [o0, o1).  v must be zero from rank up to
	 * rank rounded up to 8.
	 */
	void (*expand)(const struct lsk_cpu_job *j, int64_t o0, int64_t o1);
};

extern const struct lsk_cpu_kern lsk_cpu_kern_generic;
#ifdef LSK_CPU_AVX2
extern const struct lsk_cpu_kern lsk_cpu_kern_avx2;
#endif

#endif
