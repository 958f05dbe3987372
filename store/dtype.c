/*
 * Tensor element types: half-precision conversions and the non-finite scan.
 *
 * Everything here works on bit patterns.  Element data is little-endian in
 * safetensors files and lorastore only targets little-endian hosts, so a
 * memcpy into a uint16_t or uint32_t gives the element's bits directly; the
 * memcpy also makes unaligned data safe and lets the compiler vectorise.
 */
#include "dtype.h"

#include <errno.h>
#include <string.h>

/*
 * Only the float types LoRA weights may use are converted; anything else keeps
 * its dtype (the importer rejects such tensors separately).
 */
enum ls_dtype ls_convert_target(enum ls_convert c, enum ls_dtype from)
{
	if (!ls_dtype_is_lora_float(from))
		return from;
	switch (c) {
	case LS_CONVERT_F16:
		return LS_DTYPE_F16;
	case LS_CONVERT_BF16:
		return LS_DTYPE_BF16;
	case LS_CONVERT_F32:
		return LS_DTYPE_F32;
	case LS_CONVERT_KEEP:
	default:
		return from;
	}
}

static uint32_t ls_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static float ls_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

#define F32_QUIET 0x00400000u
#define F16_QUIET 0x0200u
#define BF16_QUIET 0x0040u

float ls_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t mant = h & 0x3ffu;

	if (exp == 0x1f) {
		if (mant == 0)
			return ls_bits_f32(sign | 0x7f800000u);
		/* Keep the payload, and make a signalling NaN quiet. */
		return ls_bits_f32(sign | 0x7f800000u | F32_QUIET | (mant << 13));
	}
	if (exp == 0) {
		if (mant == 0)
			return ls_bits_f32(sign);
		/*
		 * Subnormal: mant * 2^-24.  Shift the leading one up to the
		 * implicit-bit position, lowering the exponent by one per step.
		 */
		uint32_t e = 113; /* f32 biased exponent of 2^-14 */
		while (!(mant & 0x400u)) {
			mant <<= 1;
			e--;
		}
		return ls_bits_f32(sign | (e << 23) | ((mant & 0x3ffu) << 13));
	}
	return ls_bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t ls_f32_to_f16(float f)
{
	uint32_t x = ls_f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
	x &= 0x7fffffffu;

	if (x >= 0x7f800000u) {
		if (x == 0x7f800000u)
			return sign | 0x7c00u;
		/* NaN: keep the top payload bits, force quiet (never inf). */
		return sign | 0x7c00u | F16_QUIET | (uint16_t)((x >> 13) & 0x3ffu);
	}
	/*
	 * 65520 lies halfway between the largest half, 65504 (odd mantissa),
	 * and 65536; ties to even round it up, so it and anything larger is inf.
	 */
	if (x >= 0x477ff000u)
		return sign | 0x7c00u;
	if (x >= 0x38800000u) {
		/* Normal half: add the rounding bias, then rebias the exponent. */
		x += 0x0fffu + ((x >> 13) & 1u);
		return sign | (uint16_t)((x - 0x38000000u) >> 13);
	}
	/* 2^-25 is halfway between 0 and the smallest subnormal; ties go to 0. */
	if (x <= 0x33000000u)
		return sign;
	/*
	 * Subnormal half: the value in units of 2^-24 is mant * 2^(exp - 126),
	 * with exp <= 112 here, so a right shift of 14 to 24 bits.
	 */
	uint32_t exp = x >> 23;
	uint32_t mant = (x & 0x7fffffu) | 0x800000u;
	uint32_t shift = 126 - exp;
	uint32_t r = mant >> shift;
	uint32_t rem = mant & ((1u << shift) - 1);
	uint32_t half = 1u << (shift - 1);
	if (rem > half || (rem == half && (r & 1u)))
		r++; /* may carry into 0x400, the smallest normal: still right */
	return sign | (uint16_t)r;
}

float ls_bf16_to_f32(uint16_t b)
{
	uint32_t x = (uint32_t)b << 16;
	if ((b & 0x7f80u) == 0x7f80u && (b & 0x7fu))
		x |= F32_QUIET;
	return ls_bits_f32(x);
}

uint16_t ls_f32_to_bf16(float f)
{
	uint32_t x = ls_f32_bits(f);
	if ((x & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)(x >> 16) | BF16_QUIET;
	/* Round to nearest even; a carry out of the mantissa reaches inf. */
	x += 0x7fffu + ((x >> 16) & 1u);
	return (uint16_t)(x >> 16);
}

static float ls_load_as_f32(enum ls_dtype d, const unsigned char *p)
{
	uint16_t h;
	float f;
	switch (d) {
	case LS_DTYPE_F16:
		memcpy(&h, p, 2);
		return ls_f16_to_f32(h);
	case LS_DTYPE_BF16:
		memcpy(&h, p, 2);
		return ls_bf16_to_f32(h);
	default:
		memcpy(&f, p, 4);
		return f;
	}
}

static void ls_store_f32(enum ls_dtype d, unsigned char *p, float f)
{
	uint16_t h;
	switch (d) {
	case LS_DTYPE_F16:
		h = ls_f32_to_f16(f);
		memcpy(p, &h, 2);
		break;
	case LS_DTYPE_BF16:
		h = ls_f32_to_bf16(f);
		memcpy(p, &h, 2);
		break;
	default:
		memcpy(p, &f, 4);
		break;
	}
}

/*
 * Every half-precision value is exact in f32, so going through f32 rounds
 * only once, even for F16 <-> BF16.
 */
int ls_dtype_convert(enum ls_dtype from, const void *src, enum ls_dtype to, void *dst,
		     size_t n)
{
	if (!ls_dtype_is_lora_float(from) || !ls_dtype_is_lora_float(to))
		return -EINVAL;
	size_t fs = ls_dtype_size(from), ts = ls_dtype_size(to);
	if (n == 0)
		return 0;
	if (from == to) {
		memcpy(dst, src, n * fs);
		return 0;
	}
	const unsigned char *s = src;
	unsigned char *o = dst;
	for (size_t i = 0; i < n; i++)
		ls_store_f32(to, o + i * ts, ls_load_as_f32(from, s + i * fs));
	return 0;
}

/*
 * A float is NaN or infinite exactly when its exponent bits are all ones, so
 * each scan is a mask and compare per element with no branch.  The inner
 * loop runs a fixed 64 elements so that the compiler vectorises it even at
 * -O2 (a loop of unknown length needs a scalar tail it may not emit there).
 */
#define LS_SCAN_BLOCK 64
#define LS_COUNT_EXP_ALL_ONES(type, mask)                                        \
	do {                                                                    \
		const unsigned char *p_ = data;                                 \
		size_t i_ = 0;                                                  \
		for (; i_ + LS_SCAN_BLOCK <= n; i_ += LS_SCAN_BLOCK) {          \
			type block_ = 0; /* at most 64: fits every type */  \
			for (size_t k_ = 0; k_ < LS_SCAN_BLOCK; k_++) {         \
				type v_;                                        \
				memcpy(&v_, p_ + (i_ + k_) * sizeof(type),      \
				       sizeof(type));                           \
				block_ += (type)((v_ & (mask)) == (mask));      \
			}                                                       \
			count += block_;                                        \
		}                                                               \
		for (; i_ < n; i_++) {                                          \
			type v_;                                                \
			memcpy(&v_, p_ + i_ * sizeof(type), sizeof(type));      \
			count += (v_ & (mask)) == (mask);                       \
		}                                                               \
	} while (0)

size_t ls_count_nonfinite(enum ls_dtype d, const void *data, size_t n)
{
	size_t count = 0;
	if (!data || n == 0)
		return 0;
	switch (d) {
	case LS_DTYPE_F32:
		LS_COUNT_EXP_ALL_ONES(uint32_t, 0x7f800000u);
		break;
	case LS_DTYPE_F16:
		LS_COUNT_EXP_ALL_ONES(uint16_t, 0x7c00u);
		break;
	case LS_DTYPE_BF16:
		LS_COUNT_EXP_ALL_ONES(uint16_t, 0x7f80u);
		break;
	case LS_DTYPE_F64:
		LS_COUNT_EXP_ALL_ONES(uint64_t, 0x7ff0000000000000ull);
		break;
	case LS_DTYPE_F8_E5M2:
		LS_COUNT_EXP_ALL_ONES(uint8_t, 0x7cu);
		break;
	case LS_DTYPE_F8_E4M3:
		/* The "fn" variant safetensors uses: no infinities, NaN is S.1111.111. */
		LS_COUNT_EXP_ALL_ONES(uint8_t, 0x7fu);
		break;
	default:
		break;
	}
	return count;
}
