/*
 * What the kernel paths share and the public header does not show: exact
 * scalar conversions between F32 and the 16-bit dtypes, element access by
 * dtype, and the layout of the workspace.
 *
 * The conversions are written with integer operations so that they are exact
 * and round to nearest even whatever the compiler and the target: GCC 12
 * converts _Float16 through libgcc calls on x86-64 without AVX-512, which is
 * correct but far too slow for a loop, and BF16 has no C type at all.
 */
#ifndef LSK_INTERNAL_H
#define LSK_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "lsk.h"

static inline uint32_t lsk_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static inline float lsk_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* IEEE binary16 to binary32: exact for every input, NaN payloads kept. */
static inline float lsk_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t em = h & 0x7fffu;
	if (em >= 0x7c00u)
		return lsk_bits_f32(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
	if (em >= 0x0400u)
		return lsk_bits_f32(sign | ((em << 13) + ((uint32_t)(127 - 15) << 23)));
	/* A subnormal half is em * 2^-24: em has at most 10 bits, so exact. */
	float f = (float)em * 0x1p-24f;
	return sign ? -f : f;
}

/* binary32 to binary16, rounded to nearest even; NaN stays a (quiet) NaN. */
static inline uint16_t lsk_f32_to_f16(float f)
{
	uint32_t x = lsk_f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
	x &= 0x7fffffffu;
	if (x > 0x7f800000u)
		return (uint16_t)(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
	/* 65520 is the midpoint between 65504 (the largest half) and 2^16; the
	 * tie goes to the even neighbour, 2^16, which is infinity. */
	if (x >= 0x477ff000u)
		return (uint16_t)(sign | 0x7c00u);
	if (x >= 0x38800000u) {
		/* Normal half: rebias the exponent, then drop 13 mantissa bits with
		 * round to nearest even; a carry moves into the exponent correctly. */
		uint32_t m = x - ((uint32_t)(127 - 15) << 23);
		m += 0x0fffu + ((m >> 13) & 1u);
		return (uint16_t)(sign | (m >> 13));
	}
	uint32_t e = x >> 23;
	if (e < 102) /* below 2^-25, half the smallest subnormal: rounds to zero */
		return sign;
	/* Subnormal half: the value in units of 2^-24 is mant * 2^(e - 126). */
	uint32_t mant = (x & 0x7fffffu) | 0x800000u;
	uint32_t shift = 126 - e; /* 14..24 */
	uint32_t q = mant >> shift;
	uint32_t rem = mant & ((1u << shift) - 1u);
	uint32_t half = 1u << (shift - 1);
	if (rem > half || (rem == half && (q & 1u)))
		q++;
	return (uint16_t)(sign | q);
}

/* bfloat16 is the top half of a binary32, so widening is a shift. */
static inline float lsk_bf16_to_f32(uint16_t h)
{
	return lsk_bits_f32((uint32_t)h << 16);
}

/* binary32 to bfloat16, rounded to nearest even; NaN stays a (quiet) NaN. */
static inline uint16_t lsk_f32_to_bf16(float f)
{
	uint32_t x = lsk_f32_bits(f);
	if ((x & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((x >> 16) | 0x0040u);
	x += 0x7fffu + ((x >> 16) & 1u);
	return (uint16_t)(x >> 16);
}

/* Element i of an array of dtype dt, widened to F32. */
static inline float lsk_load(lsk_dtype dt, const void *p, int64_t i)
{
	switch (dt) {
	case LSK_F16:
		return lsk_f16_to_f32(((const uint16_t *)p)[i]);
	case LSK_BF16:
		return lsk_bf16_to_f32(((const uint16_t *)p)[i]);
	default:
		return ((const float *)p)[i];
	}
}

/* Store f as element i of an array of dtype dt, rounded to nearest even. */
static inline void lsk_store(lsk_dtype dt, void *p, int64_t i, float f)
{
	switch (dt) {
	case LSK_F16:
		((uint16_t *)p)[i] = lsk_f32_to_f16(f);
		break;
	case LSK_BF16:
		((uint16_t *)p)[i] = lsk_f32_to_bf16(f);
		break;
	default:
		((float *)p)[i] = f;
		break;
	}
}

/*
 * The workspace, for T tokens, S slices and max rank R:
 *
 *   [0, v_bytes)          F32 shrink results v[T][S][lsk_ws_rank_stride(R)]
 *   [key_off, +8 T)       decode only: one 64-bit key per token, to group
 *                         tokens by adapter (lsk_cpu_apply)
 *
 * The rank stride is R rounded up to 8 so that the expand kernels read whole
 * 8-float vectors; the padding is zeroed before use.  Each part starts on a
 * 256-byte boundary, which also suits the CUDA path (it uses the first part
 * as a dense [T][S][R] array).
 */
#define LSK_WS_ALIGN 256

static inline int64_t lsk_ws_rank_stride(int64_t max_rank)
{
	return (max_rank + 7) & ~(int64_t)7;
}

/* Bytes of the F32 part, rounded up to the alignment (the key part's offset). */
static inline size_t lsk_ws_v_bytes(const lsk_lora *l, int64_t n_tokens)
{
	size_t n = (size_t)n_tokens * (size_t)l->n_slices *
		   (size_t)lsk_ws_rank_stride(l->max_rank) * sizeof(float);
	return (n + LSK_WS_ALIGN - 1) / LSK_WS_ALIGN * LSK_WS_ALIGN;
}

#endif
