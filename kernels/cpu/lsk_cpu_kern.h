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
		/* lsk_f32_to_bf16 on 8 lanes. */
		lsk_v8u x = (lsk_v8u)v;
		lsk_v8u nan = (lsk_v8u)(v != v);
		lsk_v8u r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
		r = (nan & ((x >> 16) | 0x40u)) | (~nan & r);
		h = __builtin_convertvector(r, lsk_v8h);
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

/*
 * out[i][j] = sum over k in [k0, k1) of xr[i][k - xoff] * ar[j][k] for a
 * tile of MT rows of x by NR rows of A (xoff is k0 when x is a widened copy
 * of the block, 0 otherwise).  MT and NR are constants after inlining, so
 * the accumulators live in registers.
 */
LSK_INLINE void kv_shrink_tile(const int MT, const int NR, lsk_dtype adt, lsk_dtype wdt,
			       const void *const xr[4], int64_t xoff, const void *const ar[8],
			       int64_t k0, int64_t k1, float out[4][8])
{
	lsk_v8f acc[4][8];
	for (int i = 0; i < MT; i++)
		for (int j = 0; j < NR; j++)
			acc[i][j] = (lsk_v8f){0};
	int64_t k = k0;
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
LSK_INLINE void kv_shrink_rows(const int MT, const int NR, const struct lsk_cpu_job *j,
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
		kv_shrink_tile(MT, NR, adt, wdt, xr, xoff, ar, k0, k1, out);
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
 * point into buf; rows past mt repeat the last.
 */
LSK_INLINE void kv_widen_x(lsk_dtype adt, const void *xr[4], int64_t mt, int64_t k0,
			   int64_t k1, float *buf)
{
	for (int64_t q = 0; q < 4; q++) {
		if (q >= mt) {
			xr[q] = xr[mt - 1];
			continue;
		}
		float *d = buf + q * LSK_KB;
		int64_t k = k0;
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
				kv_shrink_rows(1, 8, j, tok, xr, 0, mt, r0, r1, k0, k1, adt, wdt);
			} else if (blocked && adt != LSK_F32 && r1 - r0 > 4) {
				kv_widen_x(adt, xr, mt, k0, k1, xbuf);
				if (mt == 2)
					kv_shrink_rows(2, 4, j, tok, xr, k0, mt, r0, r1, k0, k1,
						       LSK_F32, wdt);
				else
					kv_shrink_rows(4, 2, j, tok, xr, k0, mt, r0, r1, k0, k1,
						       LSK_F32, wdt);
			} else if (mt == 2) {
				kv_shrink_rows(2, 4, j, tok, xr, 0, mt, r0, r1, k0, k1, adt, wdt);
			} else {
				kv_shrink_rows(4, 2, j, tok, xr, 0, mt, r0, r1, k0, k1, adt, wdt);
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
			const float *vt = j->v + t * j->v_ld;
			lsk_v8f acc[8];
			for (int q = 0; q < 8; q++)
				acc[q] = (lsk_v8f){0};
			for (int64_t c = 0; c < rank; c += 8) {
				lsk_v8f vv = kv_load(LSK_F32, vt, c);
				for (int q = 0; q < 8; q++)
					acc[q] += kv_load(wdt, j->b, row[q] + c) * vv;
			}
			kv_update_y(adt, j->y, t * j->ldy + j->y_col + o, ov, j->scale,
				    kv_reduce8(acc));
		}
	}
}

/* Expand with few tokens and any rank: as kv_expand_direct, from a
 * zero-padded F32 copy of 8 rows of B. */
LSK_INLINE void kv_expand_reduce(const struct lsk_cpu_job *j, int64_t o0, int64_t o1,
				 lsk_dtype adt, lsk_dtype wdt)
{
	float bt[8 * LSK_MAX_RANK] __attribute__((aligned(32)));
	const int64_t rp = (j->rank + 7) & ~(int64_t)7;
	for (int64_t o = o0; o < o1; o += 8) {
		int64_t ov = o1 - o < 8 ? o1 - o : 8;
		kv_rows_f32(wdt, j->b, o, ov, j->rank, rp, bt);
		for (int64_t i = 0; i < j->n; i++) {
			int64_t t = lsk_cpu_token(j, i);
			const float *vt = j->v + t * j->v_ld;
			lsk_v8f acc[8];
			for (int q = 0; q < 8; q++)
				acc[q] = (lsk_v8f){0};
			for (int64_t c = 0; c < rp; c += 8) {
				lsk_v8f vv = kv_load(LSK_F32, vt, c);
				for (int q = 0; q < 8; q++)
					acc[q] += kv_load(LSK_F32, bt, q * rp + c) * vv;
			}
			kv_update_y(adt, j->y, t * j->ldy + j->y_col + o, ov, j->scale,
				    kv_reduce8(acc));
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

/* Rows [o, o + ov) of B (ov <= 16) as F32, transposed: dst[r * 16 + q]. */
LSK_INLINE void kv_cols_f32(lsk_dtype wdt, const void *b, int64_t o, int64_t ov, int64_t rank,
			    float *dst)
{
	if (rank % 8 == 0) {
		/* Whole 8 x 8 blocks: rows o + 8h .. o + 8h + 7, ranks c .. c + 7. */
		for (int64_t h = 0; h < 2; h++) {
			for (int64_t c = 0; c < rank; c += 8) {
				lsk_v8f m[8];
				for (int64_t q = 0; q < 8; q++)
					m[q] = 8 * h + q < ov ? kv_load(wdt, b, (o + 8 * h + q) * rank + c)
							      : (lsk_v8f){0};
				kv_transpose8(m);
				for (int64_t l = 0; l < 8; l++)
					memcpy(dst + (c + l) * 16 + 8 * h, &m[l], sizeof(m[l]));
			}
		}
		return;
	}
	for (int64_t q = 0; q < 16; q++) {
		int64_t c = 0;
		if (q >= ov) {
			for (; c < rank; c++)
				dst[c * 16 + q] = 0.0f;
			continue;
		}
		int64_t base = (o + q) * rank;
		for (; c + 8 <= rank; c += 8) {
			lsk_v8f w = kv_load(wdt, b, base + c);
			for (int l = 0; l < 8; l++)
				dst[(c + l) * 16 + q] = w[l];
		}
		for (; c < rank; c++)
			dst[c * 16 + q] = lsk_load(wdt, b, base + c);
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
	const int64_t rank = j->rank;
	const int64_t run = (LSK_BCAST_BUF / rank) & ~(int64_t)15; /* >= 16: rank <= 512 */
	for (int64_t oc = o0; oc < o1; oc += run) {
		int64_t oe = o1 - oc < run ? o1 : oc + run;
		for (int64_t o = oc; o < oe; o += 16)
			kv_cols_f32(wdt, j->b, o, oe - o < 16 ? oe - o : 16, rank,
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
						yv[q][0] = kv_load(adt, j->y, idx[q]);
						yv[q][1] = kv_load(adt, j->y, idx[q] + 8);
					}
					for (int64_t q = 0; q < mt; q++) {
						kv_store(adt, j->y, idx[q], yv[q][0] + acc[q][0] * j->scale);
						kv_store(adt, j->y, idx[q] + 8,
							 yv[q][1] + acc[q][1] * j->scale);
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
	if (j->n >= (j->rank % 8 == 0 ? LSK_BCAST_MIN8 : LSK_BCAST_MIN)) {
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
