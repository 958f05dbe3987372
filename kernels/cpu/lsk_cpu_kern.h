/*
 * The optimized CPU kernels, written once with GCC vector extensions (which
 * Clang also reads) and compiled once per instruction set: the including
 * file defines LSK_KERN_TABLE (the name of the struct lsk_cpu_kern it
 * exports) and LSK_KERN_LABEL, and is compiled with its own target flags.
 * With F16C the F16 conversions use the instructions; without, integer
 * operations that give the same exact results.
 *
 * Shrink (x * A^T) is a small GEMM whose operands both run along k: tiles of
 * 4 tokens by 2 ranks (2 by 4; 1 token by 8 ranks for a lone token) keep
 * their partial sums in 8-lane registers; a tile walks its rows of x once,
 * in blocks of LSK_KB columns, and every rank of A passes over each block.
 *
 * Expand (v * B^T) runs along r, which is short (often 8 to 64).  With few
 * tokens, each token's dot products with 8 rows of B are summed across lanes
 * together (kv_reduce8), the rows read straight from B when the rank is a
 * multiple of 8 and from a zero-padded copy otherwise.  With many tokens,
 * rows of B are widened and transposed into a stack tile once and each
 * token's v[r] is broadcast against it, which needs no reduction at all.
 *
 * BF16 is widened to F32 by a 16-bit shift, two operations per 8 values.
 * Where BF16 meets BF16 (x and A; B and a rank that is a multiple of 16; y
 * in the broadcast expand), 16 values are split instead into their even and
 * odd elements with one shift and one mask (kv_load_bf16_eo), and the other
 * operand is ordered to match, which halves that work.  The results differ
 * from the plain order only in the order of the F32 additions.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lsk.h"
#include "lsk_cpu_internal.h"
#include "../lsk_internal.h"

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define LSK_INLINE static inline __attribute__((always_inline))

typedef float lsk_v8f __attribute__((vector_size(32)));
typedef uint32_t lsk_v8u __attribute__((vector_size(32)));
typedef uint16_t lsk_v8h __attribute__((vector_size(16)));

/* Columns of x per shrink block: a 4-token tile's block widened to F32 is
 * 16 KiB, which stays in L1 while every rank of A passes over it. */
#define LSK_KB 1024
/* Groups of at least this many tokens use the broadcast expand: below it,
 * transposing the tile of B costs more than the reductions it saves (the
 * transpose is vectorized only when the rank is a multiple of 8). */
#define LSK_BCAST_MIN8 3
#define LSK_BCAST_MIN 8
/* With BF16 weights and a rank that is a multiple of 16, groups of fewer
 * tokens than this use the split expand (kv_expand_split) instead, which
 * needs no transposed copy of B. */
#define LSK_SPLIT_MAX 6

LSK_INLINE size_t kv_size(lsk_dtype dt)
{
	return dt == LSK_F32 ? 4 : 2;
}

LSK_INLINE lsk_v8f kv_f16_to_f32(lsk_v8h h)
{
#ifdef __F16C__
	__m128i hi;
	memcpy(&hi, &h, sizeof(hi));
	return (lsk_v8f)_mm256_cvtph_ps(hi);
#else
	/* lsk_f16_to_f32 on 8 lanes, without branches: normal numbers are
	 * rebiased, infinities and NaNs get the top exponent, and subnormals
	 * are built as 2^-14 + m * 2^-24 and then lose the 2^-14, exactly. */
	lsk_v8u w = __builtin_convertvector(h, lsk_v8u);
	lsk_v8u sign = (w & 0x8000u) << 16;
	lsk_v8u em = w & 0x7fffu;
	lsk_v8u bits = (em << 13) + ((127u - 15u) << 23);
	lsk_v8u infnan = (lsk_v8u)(em >= 0x7c00u);
	bits += infnan & ((128u - 16u) << 23);
	lsk_v8f sub = (lsk_v8f)((em << 13) + (113u << 23)) - 0x1p-14f;
	lsk_v8u is_sub = (lsk_v8u)(em < 0x400u);
	bits = (is_sub & (lsk_v8u)sub) | (~is_sub & bits);
	return (lsk_v8f)(bits | sign);
#endif
}

/* Eight consecutive elements of dtype dt from element i of p, as F32. */
LSK_INLINE lsk_v8f kv_load(lsk_dtype dt, const void *p, int64_t i)
{
	if (dt == LSK_F32) {
		lsk_v8f v;
		memcpy(&v, (const float *)p + i, sizeof(v));
		return v;
	}
	lsk_v8h h;
	memcpy(&h, (const uint16_t *)p + i, sizeof(h));
	if (dt == LSK_F16)
		return kv_f16_to_f32(h);
#ifdef __AVX2__
	/* GCC widens a 16-byte vector in two halves; one vpmovzxwd does it. */
	__m128i hi;
	memcpy(&hi, &h, sizeof(hi));
	return (lsk_v8f)_mm256_slli_epi32(_mm256_cvtepu16_epi32(hi), 16);
#else
	return (lsk_v8f)(__builtin_convertvector(h, lsk_v8u) << 16);
#endif
}

/* lsk_f32_to_bf16 on 8 lanes, the BF16 value left in the top half of each
 * lane (the bottom half is not cleared). */
LSK_INLINE lsk_v8u kv_bf16_round(lsk_v8f v)
{
	lsk_v8u x = (lsk_v8u)v;
	lsk_v8u nan = (lsk_v8u)(v != v);
	lsk_v8u r = x + 0x7fffu + ((x >> 16) & 1u);
	return (nan & (x | 0x400000u)) | (~nan & r);
}

/*
 * Sixteen BF16 values from element i of p, split into even and odd
 * elements: a 32-bit lane holds elements 2q (low half) and 2q + 1 (high
 * half), so a shift and a mask make F32 of both, one operation per eight
 * values instead of two.  Where both operands of a product are split the
 * same way, as in a dot product, the order of the lanes does not matter.
 */
LSK_INLINE void kv_load_bf16_eo(const void *p, int64_t i, lsk_v8f *even, lsk_v8f *odd)
{
	lsk_v8u w;
	memcpy(&w, (const uint16_t *)p + i, sizeof(w));
	*even = (lsk_v8f)(w << 16);
	*odd = (lsk_v8f)(w & 0xffff0000u);
}

/* The inverse: even and odd F32 values rounded to BF16 and stored as the
 * sixteen elements from i. */
LSK_INLINE void kv_store_bf16_eo(void *p, int64_t i, lsk_v8f even, lsk_v8f odd)
{
	lsk_v8u w = (kv_bf16_round(even) >> 16) | (kv_bf16_round(odd) & 0xffff0000u);
	memcpy((uint16_t *)p + i, &w, sizeof(w));
}

/* Store eight F32 values at element i of p in dtype dt, rounded to nearest even. */
LSK_INLINE void kv_store(lsk_dtype dt, void *p, int64_t i, lsk_v8f v)
{
	if (dt == LSK_F32) {
		memcpy((float *)p + i, &v, sizeof(v));
		return;
	}
	lsk_v8h h;
	if (dt == LSK_F16) {
#ifdef __F16C__
		__m128i r = _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT);
		memcpy(&h, &r, sizeof(h));
#else
		for (int q = 0; q < 8; q++)
			h[q] = lsk_f32_to_f16(v[q]);
#endif
	} else {
		h = __builtin_convertvector(kv_bf16_round(v) >> 16, lsk_v8h);
	}
	memcpy((uint16_t *)p + i, &h, sizeof(h));
}

LSK_INLINE float kv_hsum(lsk_v8f v)
{
	lsk_v8f s = v + __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
	s = s + __builtin_shufflevector(s, s, 2, 3, 0, 1, 6, 7, 4, 5);
	s = s + __builtin_shufflevector(s, s, 1, 0, 3, 2, 5, 4, 7, 6);
	return s[0];
}

/* Lane q of the result is the sum of the lanes of p[q]: three rounds of
 * pairwise shuffles and adds instead of eight separate reductions. */
LSK_INLINE lsk_v8f kv_reduce8(const lsk_v8f p[8])
{
	lsk_v8f t[4], u[2];
	for (int q = 0; q < 4; q++)
		t[q] = __builtin_shufflevector(p[2 * q], p[2 * q + 1], 0, 8, 1, 9, 4, 12, 5, 13) +
		       __builtin_shufflevector(p[2 * q], p[2 * q + 1], 2, 10, 3, 11, 6, 14, 7, 15);
	for (int q = 0; q < 2; q++)
		u[q] = __builtin_shufflevector(t[2 * q], t[2 * q + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
		       __builtin_shufflevector(t[2 * q], t[2 * q + 1], 2, 3, 10, 11, 6, 7, 14, 15);
	return __builtin_shufflevector(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) +
	       __builtin_shufflevector(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* y[idx + q] = round(y[idx + q] + scale * s[q]) for q < n (n <= 8). */
LSK_INLINE void kv_update_y(lsk_dtype adt, void *y, int64_t idx, int64_t n, float scale,
			    lsk_v8f s)
{
	if (n == 8) {
		kv_store(adt, y, idx, kv_load(adt, y, idx) + s * scale);
		return;
	}
	for (int64_t q = 0; q < n; q++)
		lsk_store(adt, y, idx + q, lsk_load(adt, y, idx + q) + scale * s[q]);
}

/* Sixteen elements of x from element i as even and odd F32 values: split
 * from BF16, or read from a copy widened by kv_widen_x in that order. */
LSK_INLINE void kv_load_x_eo(lsk_dtype adt, const void *x, int64_t i, lsk_v8f *even,
			     lsk_v8f *odd)
{
	if (adt == LSK_BF16) {
		kv_load_bf16_eo(x, i, even, odd);
		return;
	}
	*even = kv_load(LSK_F32, x, i);
	*odd = kv_load(LSK_F32, x, i + 8);
}

/*
 * out[i][j] = sum over k in [k0, k1) of xr[i][k - xoff] * ar[j][k] for a
 * tile of MT rows of x by NR rows of A (xoff is k0 when x is a widened copy
 * of the block, 0 otherwise).  MT and NR are constants after inlining, so
 * the accumulators live in registers.
 *
 * EO (A is BF16, and so is x or its widened copy is in even/odd order, see
 * kv_widen_x): the whole runs of 16 columns from k0 are split into even and
 * odd elements (kv_load_bf16_eo); the operand with fewer rows in the tile
 * is split first and kept, the other split a row at a time, so that the
 * accumulators and both halves fit in 16 registers.
 */
LSK_INLINE void kv_shrink_tile(const int MT, const int NR, const bool EO, lsk_dtype adt,
			       lsk_dtype wdt, const void *const xr[4], int64_t xoff,
			       const void *const ar[8], int64_t k0, int64_t k1, float out[4][8])
{
	lsk_v8f acc[4][8];
	for (int i = 0; i < MT; i++)
		for (int j = 0; j < NR; j++)
			acc[i][j] = (lsk_v8f){0};
	int64_t k = k0;
	for (; EO && k + 16 <= k1; k += 16) {
		if (MT > NR) {
			lsk_v8f ae[8], ao[8];
			for (int j = 0; j < NR; j++)
				kv_load_bf16_eo(ar[j], k, &ae[j], &ao[j]);
			for (int i = 0; i < MT; i++) {
				lsk_v8f xe, xo;
				kv_load_x_eo(adt, xr[i], k - xoff, &xe, &xo);
				for (int j = 0; j < NR; j++)
					acc[i][j] = acc[i][j] + xe * ae[j] + xo * ao[j];
			}
		} else {
			lsk_v8f xe[4], xo[4];
			for (int i = 0; i < MT; i++)
				kv_load_x_eo(adt, xr[i], k - xoff, &xe[i], &xo[i]);
			for (int j = 0; j < NR; j++) {
				lsk_v8f ae, ao;
				kv_load_bf16_eo(ar[j], k, &ae, &ao);
				for (int i = 0; i < MT; i++)
					acc[i][j] = acc[i][j] + xe[i] * ae + xo[i] * ao;
			}
		}
	}
	for (; k + 8 <= k1; k += 8) {
		lsk_v8f xv[4];
		for (int i = 0; i < MT; i++)
			xv[i] = kv_load(adt, xr[i], k - xoff);
		for (int j = 0; j < NR; j++) {
			lsk_v8f av = kv_load(wdt, ar[j], k);
			for (int i = 0; i < MT; i++)
				acc[i][j] += xv[i] * av;
		}
	}
	for (int i = 0; i < MT; i++)
		for (int j = 0; j < NR; j++) {
			float s = kv_hsum(acc[i][j]);
			for (int64_t q = k; q < k1; q++)
				s += lsk_load(adt, xr[i], q - xoff) * lsk_load(wdt, ar[j], q);
			out[i][j] = s;
		}
}

/*
 * Ranks [r0, r1) of the mt (1..4) tokens tok[] over columns [k0, k1), added
 * into v (assigned on the first block).  A tile that runs past the last
 * token or rank repeats the last one and discards the copy, so that only
 * three tile shapes exist per dtype pair.
 */
LSK_INLINE void kv_shrink_rows(const int MT, const int NR, const bool EO,
			       const struct lsk_cpu_job *j,
			       const int64_t tok[4], const void *const xr[4], int64_t xoff,
			       int64_t mt, int32_t r0, int32_t r1, int64_t k0, int64_t k1,
			       lsk_dtype adt, lsk_dtype wdt)
{
	const char *a = j->a;
	const size_t row = (size_t)j->in * kv_size(wdt);
	for (int32_t r = r0; r < r1; r += NR) {
		int32_t nr = r1 - r < NR ? r1 - r : NR;
		const void *ar[8];
		for (int q = 0; q < 8; q++)
			ar[q] = a + (size_t)(r + (q < nr ? q : nr - 1)) * row;
		float out[4][8];
		kv_shrink_tile(MT, NR, EO, adt, wdt, xr, xoff, ar, k0, k1, out);
		for (int64_t i = 0; i < mt; i++)
			for (int32_t q = 0; q < nr; q++) {
				float *vp = j->v + tok[i] * j->v_ld + r + q;
				*vp = (k0 == 0 ? 0.0f : *vp) + out[i][q];
			}
	}
}

/*
 * The block [k0, k1) of the rows xr[0..mt) (dtype adt) widened to F32 into
 * buf[4][LSK_KB] (buf row q holds column k at index k - k0).  The rows then
 * point into buf; rows past mt repeat the last.  EO (x is BF16): each whole
 * run of 16 columns from k0 holds its even elements, then its odd ones.
 */
LSK_INLINE void kv_widen_x(const bool EO, lsk_dtype adt, const void *xr[4], int64_t mt,
			   int64_t k0, int64_t k1, float *buf)
{
	for (int64_t q = 0; q < 4; q++) {
		if (q >= mt) {
			xr[q] = xr[mt - 1];
			continue;
		}
		float *d = buf + q * LSK_KB;
		int64_t k = k0;
		for (; EO && k + 16 <= k1; k += 16) {
			lsk_v8f e, o;
			kv_load_bf16_eo(xr[q], k, &e, &o);
			memcpy(d + (k - k0), &e, sizeof(e));
			memcpy(d + (k - k0) + 8, &o, sizeof(o));
		}
		for (; k + 8 <= k1; k += 8) {
			lsk_v8f w = kv_load(adt, xr[q], k);
			memcpy(d + (k - k0), &w, sizeof(w));
		}
		for (; k < k1; k++)
			d[k - k0] = lsk_load(adt, xr[q], k);
		xr[q] = d;
	}
}

LSK_INLINE void kv_shrink(const struct lsk_cpu_job *j, int64_t i0, int64_t i1, int32_t r0,
			  int32_t r1, lsk_dtype adt, lsk_dtype wdt)
{
	float xbuf[4 * LSK_KB] __attribute__((aligned(32)));
	const char *x = j->x;
	const size_t xrow = (size_t)j->ldx * kv_size(adt);
	/* Tiles of tokens go outside, blocks of columns inside: each tile's rows
	 * of x are then read from memory in long forward runs, and A (rank 16
	 * by 4096, BF16: 128 KiB) is read again from L2 by the next tile.
	 * Blocks pay when several tiles of tokens share A, and so does widening
	 * x (into xbuf, one block long).  With one tile, each weight is read
	 * once, and whole rows of A make longer streams than blocks would. */
	const bool blocked = i1 - i0 > 4;
	/* BF16 by BF16, the common pair: split rather than widen. */
	const bool eo = adt == LSK_BF16 && wdt == LSK_BF16;
	const int64_t kb = blocked ? LSK_KB : j->in;
	for (int64_t i = i0; i < i1;) {
		int64_t mt = i1 - i >= 4 ? 4 : i1 - i;
		int64_t tok[4];
		const void *rows[4];
		for (int q = 0; q < 4; q++) {
			tok[q] = lsk_cpu_token(j, i + (q < mt ? q : mt - 1));
			rows[q] = x + (size_t)tok[q] * xrow;
		}
		for (int64_t k0 = 0; k0 < j->in; k0 += kb) {
			int64_t k1 = j->in - k0 > kb ? k0 + kb : j->in;
			const void *xr[4] = {rows[0], rows[1], rows[2], rows[3]};
			/* Tiles of 8 accumulators: with the x and A vectors they fit
			 * in 16 registers.  A lone token's x is widened once per 8
			 * ranks; in long groups with more than a few ranks, 16-bit x
			 * is widened once per block instead. */
			if (mt == 1) {
				kv_shrink_rows(1, 8, eo, j, tok, xr, 0, mt, r0, r1, k0, k1, adt,
					       wdt);
			} else if (blocked && adt != LSK_F32 && r1 - r0 > 4) {
				kv_widen_x(eo, adt, xr, mt, k0, k1, xbuf);
				if (mt == 2)
					kv_shrink_rows(2, 4, eo, j, tok, xr, k0, mt, r0, r1, k0,
						       k1, LSK_F32, wdt);
				else
					kv_shrink_rows(4, 2, eo, j, tok, xr, k0, mt, r0, r1, k0,
						       k1, LSK_F32, wdt);
			} else if (mt == 2) {
				kv_shrink_rows(2, 4, eo, j, tok, xr, 0, mt, r0, r1, k0, k1, adt,
					       wdt);
			} else {
				kv_shrink_rows(4, 2, eo, j, tok, xr, 0, mt, r0, r1, k0, k1, adt,
					       wdt);
			}
		}
		i += mt;
	}
}

/* Rows [o, o + ov) of B (ov <= 8) as F32 in dst[8][stride], zero-padded. */
LSK_INLINE void kv_rows_f32(lsk_dtype wdt, const void *b, int64_t o, int64_t ov, int64_t rank,
			    int64_t stride, float *dst)
{
	for (int64_t q = 0; q < 8; q++) {
		float *d = dst + q * stride;
		int64_t c = 0;
		if (q < ov) {
			int64_t base = (o + q) * rank;
			for (; c + 8 <= rank; c += 8) {
				lsk_v8f w = kv_load(wdt, b, base + c);
				memcpy(d + c, &w, sizeof(w));
			}
			for (; c < rank; c++)
				d[c] = lsk_load(wdt, b, base + c);
		}
		for (; c < stride; c++)
			d[c] = 0.0f;
	}
}

/* Lane q: the dot product of the n elements of b (dtype wdt) from element
 * row[q] with v (n a multiple of 8), for the eight rows of an expand step. */
LSK_INLINE lsk_v8f kv_dot8(lsk_dtype wdt, const void *b, const int64_t row[8], int64_t n,
			   const float *v)
{
	lsk_v8f acc[8];
	for (int q = 0; q < 8; q++)
		acc[q] = (lsk_v8f){0};
	for (int64_t c = 0; c < n; c += 8) {
		lsk_v8f vv = kv_load(LSK_F32, v, c);
		for (int q = 0; q < 8; q++)
			acc[q] += kv_load(wdt, b, row[q] + c) * vv;
	}
	return kv_reduce8(acc);
}

/*
 * Expand with few tokens and a rank that is a multiple of 8: eight outputs
 * per step straight from B (its rows then start on whole vectors), reduced
 * across lanes.  No copy of B: with one token each weight is used once.
 */
LSK_INLINE void kv_expand_direct(const struct lsk_cpu_job *j, int64_t o0, int64_t o1,
				 lsk_dtype adt, lsk_dtype wdt)
{
	const int64_t rank = j->rank;
	for (int64_t o = o0; o < o1; o += 8) {
		int64_t ov = o1 - o < 8 ? o1 - o : 8;
		int64_t row[8];
		for (int64_t q = 0; q < 8; q++)
			row[q] = (o + (q < ov ? q : ov - 1)) * rank;
		for (int64_t i = 0; i < j->n; i++) {
			int64_t t = lsk_cpu_token(j, i);
			kv_update_y(adt, j->y, t * j->ldy + j->y_col + o, ov, j->scale,
				    kv_dot8(wdt, j->b, row, rank, j->v + t * j->v_ld));
		}
	}
}

/* Lane q: the dot product of row q of b (rows stride elements apart, BF16)
 * with v, over rank ranks, v split as kv_expand_split describes. */
LSK_INLINE lsk_v8f kv_dot8_bf16_eo(const uint16_t *b, int64_t stride, int64_t rank,
				   const float *vs)
{
	lsk_v8f acc[8];
	for (int q = 0; q < 8; q++)
		acc[q] = (lsk_v8f){0};
	for (int64_t c = 0; c < rank; c += 16) {
		lsk_v8f ve = kv_load(LSK_F32, vs, c), vo = kv_load(LSK_F32, vs, c + 8);
		for (int q = 0; q < 8; q++) {
			lsk_v8f be, bo;
			kv_load_bf16_eo(b, q * stride + c, &be, &bo);
			acc[q] = acc[q] + be * ve + bo * vo;
		}
	}
	return kv_reduce8(acc);
}

/*
 * Expand with few tokens, BF16 B and a rank that is a multiple of 16: as
 * kv_expand_direct, with each run of 16 ranks of a row of B split into even
 * and odd ranks (kv_load_bf16_eo) and v split the same way once per token,
 * so that B costs one operation per eight weights to widen instead of two.
 * Sixteen outputs per step, reduced in two halves: with BF16 y, the even
 * outputs, then the odd ones, which kv_store_bf16_eo joins without
 * shuffles; otherwise the first eight, then the next.
 */
LSK_INLINE void kv_expand_split(const struct lsk_cpu_job *j, int64_t o0, int64_t o1,
				lsk_dtype adt)
{
	float vs[LSK_SPLIT_MAX][LSK_MAX_RANK] __attribute__((aligned(32)));
	const bool eo = adt == LSK_BF16;
	const int64_t rank = j->rank;
	const uint16_t *b = j->b;
	for (int64_t i = 0; i < j->n; i++) {
		const float *vt = j->v + lsk_cpu_token(j, i) * j->v_ld;
		for (int64_t c = 0; c < rank; c += 16) {
			lsk_v8f lo = kv_load(LSK_F32, vt, c), hi = kv_load(LSK_F32, vt, c + 8);
			lsk_v8f e = __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14);
			lsk_v8f d = __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15);
			memcpy(&vs[i][c], &e, sizeof(e));
			memcpy(&vs[i][c + 8], &d, sizeof(d));
		}
	}
	int64_t o = o0;
	for (; o + 16 <= o1; o += 16) {
		const uint16_t *bo = b + o * rank;
		for (int64_t i = 0; i < j->n; i++) {
			int64_t idx = lsk_cpu_token(j, i) * j->ldy + j->y_col + o;
			if (eo) {
				lsk_v8f e = kv_dot8_bf16_eo(bo, 2 * rank, rank, vs[i]);
				lsk_v8f d = kv_dot8_bf16_eo(bo + rank, 2 * rank, rank, vs[i]);
				lsk_v8f ye, yo;
				kv_load_bf16_eo(j->y, idx, &ye, &yo);
				kv_store_bf16_eo(j->y, idx, ye + e * j->scale,
						 yo + d * j->scale);
			} else {
				lsk_v8f lo = kv_dot8_bf16_eo(bo, rank, rank, vs[i]);
				lsk_v8f hi = kv_dot8_bf16_eo(bo + 8 * rank, rank, rank, vs[i]);
				kv_update_y(adt, j->y, idx, 8, j->scale, lo);
				kv_update_y(adt, j->y, idx + 8, 8, j->scale, hi);
			}
		}
	}
	/* The last columns, fewer than 16: one at a time. */
	for (; o < o1; o++)
		for (int64_t i = 0; i < j->n; i++) {
			const uint16_t *br = b + o * rank;
			const float *vi = vs[i];
			float s = 0.0f;
			for (int64_t c = 0; c < rank; c += 16)
				for (int q = 0; q < 8; q++)
					s += lsk_load(LSK_BF16, br, c + 2 * q) * vi[c + q] +
					     lsk_load(LSK_BF16, br, c + 2 * q + 1) * vi[c + 8 + q];
			int64_t idx = lsk_cpu_token(j, i) * j->ldy + j->y_col + o;
			lsk_store(adt, j->y, idx, lsk_load(adt, j->y, idx) + j->scale * s);
		}
}

/* Expand with few tokens and any rank: as kv_expand_direct, from a
 * zero-padded F32 copy of 8 rows of B. */
LSK_INLINE void kv_expand_reduce(const struct lsk_cpu_job *j, int64_t o0, int64_t o1,
				 lsk_dtype adt, lsk_dtype wdt)
{
	float bt[8 * LSK_MAX_RANK] __attribute__((aligned(32)));
	const int64_t rp = (j->rank + 7) & ~(int64_t)7;
	int64_t row[8];
	for (int64_t q = 0; q < 8; q++)
		row[q] = q * rp;
	for (int64_t o = o0; o < o1; o += 8) {
		int64_t ov = o1 - o < 8 ? o1 - o : 8;
		kv_rows_f32(wdt, j->b, o, ov, j->rank, rp, bt);
		for (int64_t i = 0; i < j->n; i++) {
			int64_t t = lsk_cpu_token(j, i);
			kv_update_y(adt, j->y, t * j->ldy + j->y_col + o, ov, j->scale,
				    kv_dot8(LSK_F32, bt, row, rp, j->v + t * j->v_ld));
		}
	}
}

/* Transposes the 8 x 8 matrix whose rows are m[0..7] (unpack, shuffle and
 * swap halves: 24 shuffles for 64 elements). */
LSK_INLINE void kv_transpose8(lsk_v8f m[8])
{
	lsk_v8f t[8], u[8];
	for (int q = 0; q < 4; q++) {
		t[2 * q] = __builtin_shufflevector(m[2 * q], m[2 * q + 1], 0, 8, 1, 9, 4, 12, 5, 13);
		t[2 * q + 1] =
			__builtin_shufflevector(m[2 * q], m[2 * q + 1], 2, 10, 3, 11, 6, 14, 7, 15);
	}
	for (int h = 0; h < 2; h++) {
		lsk_v8f *s = t + 4 * h, *d = u + 4 * h;
		d[0] = __builtin_shufflevector(s[0], s[2], 0, 1, 8, 9, 4, 5, 12, 13);
		d[1] = __builtin_shufflevector(s[0], s[2], 2, 3, 10, 11, 6, 7, 14, 15);
		d[2] = __builtin_shufflevector(s[1], s[3], 0, 1, 8, 9, 4, 5, 12, 13);
		d[3] = __builtin_shufflevector(s[1], s[3], 2, 3, 10, 11, 6, 7, 14, 15);
	}
	for (int q = 0; q < 4; q++) {
		m[q] = __builtin_shufflevector(u[q], u[q + 4], 0, 1, 2, 3, 8, 9, 10, 11);
		m[q + 4] = __builtin_shufflevector(u[q], u[q + 4], 4, 5, 6, 7, 12, 13, 14, 15);
	}
}

/*
 * Rows [o, o + ov) of B (ov <= 16) as F32, transposed: dst[r * 16 + p] is
 * B[o + q][r], where p = q, or with EO p = q / 2 for even q and 8 + q / 2
 * for odd q (the order kv_load_bf16_eo gives the sixteen columns of y).
 */
LSK_INLINE void kv_cols_f32(const bool EO, lsk_dtype wdt, const void *b, int64_t o,
			    int64_t ov, int64_t rank, float *dst)
{
	if (rank % 8 == 0) {
		/* Whole 8 x 8 blocks: the rows of slots 8h .. 8h + 7, ranks
		 * c .. c + 7. */
		for (int64_t h = 0; h < 2; h++) {
			for (int64_t c = 0; c < rank; c += 8) {
				lsk_v8f m[8];
				for (int64_t q = 0; q < 8; q++) {
					int64_t row = EO ? 2 * q + h : 8 * h + q;
					m[q] = row < ov ? kv_load(wdt, b, (o + row) * rank + c)
							: (lsk_v8f){0};
				}
				kv_transpose8(m);
				for (int64_t l = 0; l < 8; l++)
					memcpy(dst + (c + l) * 16 + 8 * h, &m[l], sizeof(m[l]));
			}
		}
		return;
	}
	for (int64_t q = 0; q < 16; q++) {
		int64_t p = EO ? (q & 1) * 8 + q / 2 : q;
		int64_t c = 0;
		if (q >= ov) {
			for (; c < rank; c++)
				dst[c * 16 + p] = 0.0f;
			continue;
		}
		int64_t base = (o + q) * rank;
		for (; c + 8 <= rank; c += 8) {
			lsk_v8f w = kv_load(wdt, b, base + c);
			for (int l = 0; l < 8; l++)
				dst[(c + l) * 16 + p] = w[l];
		}
		for (; c < rank; c++)
			dst[c * 16 + p] = lsk_load(wdt, b, base + c);
	}
}

/* Floats of the transposed tiles of B that kv_expand_bcast keeps on the
 * stack (32 KiB, half of L1 on many cores): a run of columns it revisits for
 * every token. */
#define LSK_BCAST_BUF 8192

/*
 * Expand with many tokens: 4 tokens by 16 outputs, v[r] broadcast against a
 * transposed tile of B.  Columns go in runs whose tiles fill LSK_BCAST_BUF;
 * within a run, tokens go outside and columns inside, so that each token's
 * row of y is walked forward rather than visited 16 columns at a time
 * (rows of y lie ldy apart, which would make every visit a cache miss).
 */
LSK_INLINE void kv_expand_bcast(const struct lsk_cpu_job *j, int64_t o0, int64_t o1,
				lsk_dtype adt, lsk_dtype wdt)
{
	float bt[LSK_BCAST_BUF] __attribute__((aligned(32)));
	/* BF16 y: the tiles hold even columns, then odd ones, so that y is
	 * split and joined with shifts and masks (kv_load_bf16_eo). */
	const bool eo = adt == LSK_BF16;
	const int64_t rank = j->rank;
	const int64_t run = (LSK_BCAST_BUF / rank) & ~(int64_t)15; /* >= 16: rank <= 512 */
	for (int64_t oc = o0; oc < o1; oc += run) {
		int64_t oe = o1 - oc < run ? o1 : oc + run;
		for (int64_t o = oc; o < oe; o += 16)
			kv_cols_f32(eo, wdt, j->b, o, oe - o < 16 ? oe - o : 16, rank,
				    bt + (o - oc) * rank);
		for (int64_t i = 0; i < j->n; i += 4) {
			int64_t mt = j->n - i < 4 ? j->n - i : 4;
			int64_t tok[4];
			const float *vr[4];
			for (int q = 0; q < 4; q++) {
				tok[q] = lsk_cpu_token(j, i + (q < mt ? q : mt - 1));
				vr[q] = j->v + tok[q] * j->v_ld;
			}
			for (int64_t o = oc; o < oe; o += 16) {
				int64_t ov = oe - o < 16 ? oe - o : 16;
				const float *tile = bt + (o - oc) * rank;
				lsk_v8f acc[4][2];
				for (int q = 0; q < 4; q++)
					acc[q][0] = acc[q][1] = (lsk_v8f){0};
				for (int64_t r = 0; r < rank; r++) {
					lsk_v8f b0 = kv_load(LSK_F32, tile, r * 16);
					lsk_v8f b1 = kv_load(LSK_F32, tile, r * 16 + 8);
					for (int q = 0; q < 4; q++) {
						float s = vr[q][r];
						acc[q][0] += s * b0;
						acc[q][1] += s * b1;
					}
				}
				int64_t idx[4];
				for (int q = 0; q < 4; q++)
					idx[q] = tok[q] * j->ldy + j->y_col + o;
				if (ov == 16) {
					/* Every load before any store: rows of y often lie a
					 * multiple of 4 KiB apart, and a load behind a store
					 * to the same address bits waits for it. */
					lsk_v8f yv[4][2];
					for (int q = 0; q < 4; q++) {
						if (eo) {
							kv_load_bf16_eo(j->y, idx[q], &yv[q][0],
									&yv[q][1]);
						} else {
							yv[q][0] = kv_load(adt, j->y, idx[q]);
							yv[q][1] = kv_load(adt, j->y, idx[q] + 8);
						}
					}
					for (int64_t q = 0; q < mt; q++) {
						lsk_v8f y0 = yv[q][0] + acc[q][0] * j->scale;
						lsk_v8f y1 = yv[q][1] + acc[q][1] * j->scale;
						if (eo) {
							kv_store_bf16_eo(j->y, idx[q], y0, y1);
						} else {
							kv_store(adt, j->y, idx[q], y0);
							kv_store(adt, j->y, idx[q] + 8, y1);
						}
					}
					continue;
				}
				if (eo) {
					/* A last, narrower tile: column c is in slot
					 * c / 2 of the even or odd half. */
					for (int64_t q = 0; q < mt; q++)
						for (int64_t c = 0; c < ov; c++) {
							float add = acc[q][c & 1][c / 2];
							int64_t at = idx[q] + c;
							lsk_store(adt, j->y, at,
								  lsk_load(adt, j->y, at) +
									  j->scale * add);
						}
					continue;
				}
				for (int64_t q = 0; q < mt; q++) {
					kv_update_y(adt, j->y, idx[q], ov < 8 ? ov : 8, j->scale,
						    acc[q][0]);
					if (ov > 8)
						kv_update_y(adt, j->y, idx[q] + 8, ov - 8, j->scale,
							    acc[q][1]);
				}
			}
		}
	}
}

/* One instance of a kernel per pair of dtypes, the dtypes constant inside. */
#define LSK_KERN_DISPATCH(CALL)                                  \
	switch ((int)j->adt * 3 + (int)j->wdt) {                 \
	case LSK_F32 * 3 + LSK_F32: CALL(LSK_F32, LSK_F32); break;    \
	case LSK_F32 * 3 + LSK_F16: CALL(LSK_F32, LSK_F16); break;    \
	case LSK_F32 * 3 + LSK_BF16: CALL(LSK_F32, LSK_BF16); break;  \
	case LSK_F16 * 3 + LSK_F32: CALL(LSK_F16, LSK_F32); break;    \
	case LSK_F16 * 3 + LSK_F16: CALL(LSK_F16, LSK_F16); break;    \
	case LSK_F16 * 3 + LSK_BF16: CALL(LSK_F16, LSK_BF16); break;  \
	case LSK_BF16 * 3 + LSK_F32: CALL(LSK_BF16, LSK_F32); break;  \
	case LSK_BF16 * 3 + LSK_F16: CALL(LSK_BF16, LSK_F16); break;  \
	case LSK_BF16 * 3 + LSK_BF16: CALL(LSK_BF16, LSK_BF16); break; \
	}

static void kv_shrink_entry(const struct lsk_cpu_job *j, int64_t i0, int64_t i1, int32_t r0,
			    int32_t r1)
{
#define LSK_CALL(A, W) kv_shrink(j, i0, i1, r0, r1, A, W)
	LSK_KERN_DISPATCH(LSK_CALL)
#undef LSK_CALL
}

static void kv_expand_entry(const struct lsk_cpu_job *j, int64_t o0, int64_t o1)
{
	if (j->wdt == LSK_BF16 && j->rank % 16 == 0 && j->n < LSK_SPLIT_MAX) {
		switch (j->adt) {
		case LSK_F32: kv_expand_split(j, o0, o1, LSK_F32); break;
		case LSK_F16: kv_expand_split(j, o0, o1, LSK_F16); break;
		case LSK_BF16: kv_expand_split(j, o0, o1, LSK_BF16); break;
		}
	} else if (j->n >= (j->rank % 8 == 0 ? LSK_BCAST_MIN8 : LSK_BCAST_MIN)) {
#define LSK_CALL(A, W) kv_expand_bcast(j, o0, o1, A, W)
		LSK_KERN_DISPATCH(LSK_CALL)
#undef LSK_CALL
	} else if (j->rank % 8 == 0) {
#define LSK_CALL(A, W) kv_expand_direct(j, o0, o1, A, W)
		LSK_KERN_DISPATCH(LSK_CALL)
#undef LSK_CALL
	} else {
#define LSK_CALL(A, W) kv_expand_reduce(j, o0, o1, A, W)
		LSK_KERN_DISPATCH(LSK_CALL)
#undef LSK_CALL
	}
}

const struct lsk_cpu_kern LSK_KERN_TABLE = {
	/* .name = */ LSK_KERN_LABEL,
	/* .shrink = */ kv_shrink_entry,
	/* .expand = */ kv_expand_entry,
};
