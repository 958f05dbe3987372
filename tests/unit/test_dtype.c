/* Tests of dtype names, sizes, half-precision conversions and the NaN scan. */
#include <criterion/criterion.h>

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static bool f16_is_nan(uint16_t h)
{
	return (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
}

/* Names and sizes */

static const struct {
	const char *name;
	enum ls_dtype d;
	size_t size;
} known[] = {
	{"F32", LS_DTYPE_F32, 4},         {"F16", LS_DTYPE_F16, 2},
	{"BF16", LS_DTYPE_BF16, 2},       {"F64", LS_DTYPE_F64, 8},
	{"BOOL", LS_DTYPE_BOOL, 1},       {"U8", LS_DTYPE_U8, 1},
	{"I8", LS_DTYPE_I8, 1},           {"F8_E5M2", LS_DTYPE_F8_E5M2, 1},
	{"F8_E4M3", LS_DTYPE_F8_E4M3, 1}, {"I16", LS_DTYPE_I16, 2},
	{"U16", LS_DTYPE_U16, 2},         {"I32", LS_DTYPE_I32, 4},
	{"U32", LS_DTYPE_U32, 4},         {"I64", LS_DTYPE_I64, 8},
	{"U64", LS_DTYPE_U64, 8},
};
#define N_KNOWN (sizeof(known) / sizeof(known[0]))

Test(dtype, every_known_name_round_trips)
{
	cr_assert_eq(N_KNOWN, LS_DTYPE_COUNT - 1);
	for (size_t i = 0; i < N_KNOWN; i++) {
		cr_assert_eq(ls_dtype_from_name(known[i].name), known[i].d, "%s", known[i].name);
		cr_assert_str_eq(ls_dtype_name(known[i].d), known[i].name);
	}
}

Test(dtype, sizes_match_safetensors)
{
	for (size_t i = 0; i < N_KNOWN; i++)
		cr_assert_eq(ls_dtype_size(known[i].d), known[i].size, "%s", known[i].name);
}

Test(dtype, rejects_unknown_and_miscased_names)
{
	const char *bad[] = {"", "f32", "F 32", "F32 ", "FLOAT", "F8_E4M3FN", "F4", "C64", "?"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(ls_dtype_from_name(bad[i]), LS_DTYPE_INVALID, "'%s'", bad[i]);
	cr_assert_eq(ls_dtype_from_name(NULL), LS_DTYPE_INVALID);
}

Test(dtype, invalid_dtype_has_question_mark_name_and_size_zero)
{
	cr_assert_str_eq(ls_dtype_name(LS_DTYPE_INVALID), "?");
	cr_assert_str_eq(ls_dtype_name(LS_DTYPE_COUNT), "?");
	cr_assert_eq(ls_dtype_size(LS_DTYPE_INVALID), 0);
	cr_assert_eq(ls_dtype_size(LS_DTYPE_COUNT), 0);
}

Test(dtype, only_f32_f16_bf16_are_lora_floats)
{
	for (int d = 0; d < LS_DTYPE_COUNT; d++) {
		bool want = d == LS_DTYPE_F32 || d == LS_DTYPE_F16 || d == LS_DTYPE_BF16;
		cr_assert_eq(ls_dtype_is_lora_float((enum ls_dtype)d), want, "%d", d);
	}
}

Test(dtype, convert_names_round_trip)
{
	const char *names[] = {"keep", "f16", "bf16", "f32"};
	for (size_t i = 0; i < 4; i++) {
		enum ls_convert c = LS_CONVERT_KEEP;
		cr_assert_eq(ls_convert_from_name(names[i], &c), 0);
		cr_assert_str_eq(ls_convert_name(c), names[i]);
	}
}

Test(dtype, convert_from_name_rejects_unknown)
{
	enum ls_convert c = LS_CONVERT_F32;
	cr_assert_eq(ls_convert_from_name("F16", &c), -EINVAL);
	cr_assert_eq(ls_convert_from_name("", &c), -EINVAL);
	cr_assert_eq(ls_convert_from_name(NULL, &c), -EINVAL);
	cr_assert_eq(c, LS_CONVERT_F32);
}

Test(dtype, convert_target_changes_only_lora_floats)
{
	cr_assert_eq(ls_convert_target(LS_CONVERT_KEEP, LS_DTYPE_BF16), LS_DTYPE_BF16);
	cr_assert_eq(ls_convert_target(LS_CONVERT_F16, LS_DTYPE_F32), LS_DTYPE_F16);
	cr_assert_eq(ls_convert_target(LS_CONVERT_BF16, LS_DTYPE_F16), LS_DTYPE_BF16);
	cr_assert_eq(ls_convert_target(LS_CONVERT_F32, LS_DTYPE_BF16), LS_DTYPE_F32);
	cr_assert_eq(ls_convert_target(LS_CONVERT_F16, LS_DTYPE_I64), LS_DTYPE_I64);
}

/* f16 */

Test(dtype, f16_to_f32_decodes_known_values)
{
	cr_assert_eq(ls_f16_to_f32(0x3c00), 1.0f);
	cr_assert_eq(ls_f16_to_f32(0xc000), -2.0f);
	cr_assert_eq(ls_f16_to_f32(0x7bff), 65504.0f);
	cr_assert_eq(ls_f16_to_f32(0x0001), ldexpf(1.0f, -24));
	cr_assert_eq(ls_f16_to_f32(0x03ff), ldexpf(1023.0f, -24));
	cr_assert_eq(ls_f16_to_f32(0x0400), ldexpf(1.0f, -14));
	cr_assert_eq(f32_bits(ls_f16_to_f32(0x8000)), 0x80000000u);
	cr_assert_eq(ls_f16_to_f32(0x7c00), INFINITY);
	cr_assert_eq(ls_f16_to_f32(0xfc00), -INFINITY);
}

Test(dtype, f16_to_f32_matches_exact_value_for_all_finite_halves)
{
	for (uint32_t h = 0; h < 0x10000; h++) {
		uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
		if (e == 0x1f)
			continue;
		double v = e ? ldexp(1024.0 + m, (int)e - 25) : ldexp((double)m, -24);
		if (h & 0x8000)
			v = -v;
		cr_assert_eq((double)ls_f16_to_f32((uint16_t)h), v, "h=0x%04x", h);
	}
}

Test(dtype, f16_nan_becomes_quiet_f32_nan_with_payload)
{
	uint32_t q = f32_bits(ls_f16_to_f32(0x7e00));
	cr_assert_eq(q, 0x7fc00000u);
	uint32_t s = f32_bits(ls_f16_to_f32(0xfc01)); /* signalling, payload 1 */
	cr_assert_eq(s, 0xffc02000u);
}

Test(dtype, f16_round_trips_through_f32_for_all_65536_values)
{
	for (uint32_t h = 0; h < 0x10000; h++) {
		uint16_t back = ls_f32_to_f16(ls_f16_to_f32((uint16_t)h));
		if (f16_is_nan((uint16_t)h))
			cr_assert_eq(back, h | 0x0200, "NaN h=0x%04x back=0x%04x", h, back);
		else
			cr_assert_eq(back, h, "h=0x%04x back=0x%04x", h, back);
	}
}

Test(dtype, f32_to_f16_rounds_ties_to_even)
{
	/* Halfway between 1.0 (even) and the next half: stays at 1.0. */
	cr_assert_eq(ls_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
	/* Halfway between 0x3c01 (odd) and 0x3c02 (even): goes up. */
	cr_assert_eq(ls_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
	/* Just above halfway rounds up, just below rounds down. */
	cr_assert_eq(ls_f32_to_f16(nextafterf(1.0f + ldexpf(1.0f, -11), 2.0f)), 0x3c01);
	cr_assert_eq(ls_f32_to_f16(nextafterf(1.0f + 3 * ldexpf(1.0f, -11), 0.0f)), 0x3c01);
	cr_assert_eq(ls_f32_to_f16(-(1.0f + ldexpf(1.0f, -11))), 0xbc00);
}

/*
 * For every pair of neighbouring finite halves, the f32 midpoint (exact in
 * f32) must go to the even one, and its f32 neighbours to the nearer half.
 */
Test(dtype, f32_to_f16_rounds_every_midpoint_to_nearest_even)
{
	for (uint32_t h = 0; h < 0x7bff; h++) {
		float lo = ls_f16_to_f32((uint16_t)h), hi = ls_f16_to_f32((uint16_t)(h + 1));
		float mid = (lo + hi) / 2;
		uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
		cr_assert_eq(ls_f32_to_f16(mid), even, "h=0x%04x", h);
		cr_assert_eq(ls_f32_to_f16(nextafterf(mid, 0.0f)), h, "h=0x%04x", h);
		cr_assert_eq(ls_f32_to_f16(nextafterf(mid, INFINITY)), h + 1, "h=0x%04x", h);
		cr_assert_eq(ls_f32_to_f16(-mid), even | 0x8000, "h=0x%04x", h);
	}
}

Test(dtype, f32_to_f16_handles_subnormals)
{
	float tiny = ldexpf(1.0f, -24); /* smallest subnormal half */
	cr_assert_eq(ls_f32_to_f16(tiny), 0x0001);
	cr_assert_eq(ls_f32_to_f16(tiny / 2), 0x0000);          /* tie to even 0 */
	cr_assert_eq(ls_f32_to_f16(nextafterf(tiny / 2, 1.0f)), 0x0001);
	cr_assert_eq(ls_f32_to_f16(tiny * 1.5f), 0x0002);       /* tie to even 2 */
	cr_assert_eq(ls_f32_to_f16(tiny * 2.5f), 0x0002);       /* tie to even 2 */
	cr_assert_eq(ls_f32_to_f16(-tiny / 2), 0x8000);
	/* Largest subnormal plus half an ulp rounds up to the smallest normal. */
	cr_assert_eq(ls_f32_to_f16(ldexpf(1023.5f, -24)), 0x0400);
	/* f32 subnormals are far below the half range. */
	cr_assert_eq(ls_f32_to_f16(FLT_TRUE_MIN), 0x0000);
	cr_assert_eq(ls_f32_to_f16(-FLT_TRUE_MIN), 0x8000);
}

Test(dtype, f32_to_f16_overflows_to_infinity)
{
	cr_assert_eq(ls_f32_to_f16(65504.0f), 0x7bff);
	cr_assert_eq(ls_f32_to_f16(nextafterf(65520.0f, 0.0f)), 0x7bff);
	cr_assert_eq(ls_f32_to_f16(65520.0f), 0x7c00); /* tie goes to even: inf */
	cr_assert_eq(ls_f32_to_f16(1e10f), 0x7c00);
	cr_assert_eq(ls_f32_to_f16(-FLT_MAX), 0xfc00);
	cr_assert_eq(ls_f32_to_f16(INFINITY), 0x7c00);
	cr_assert_eq(ls_f32_to_f16(-INFINITY), 0xfc00);
}

Test(dtype, f32_to_f16_keeps_nan_as_quiet_nan)
{
	uint16_t a = ls_f32_to_f16(bits_f32(0x7f800001u)); /* payload lost below f16 bits */
	cr_assert(f16_is_nan(a), "0x%04x", a);
	cr_assert(a & 0x0200);
	uint16_t b = ls_f32_to_f16(bits_f32(0xffc00000u));
	cr_assert_eq(b, 0xfe00);
	uint16_t c = ls_f32_to_f16(NAN);
	cr_assert(f16_is_nan(c));
}

/* bf16 */

Test(dtype, bf16_to_f32_is_exact_for_all_non_nan_values)
{
	for (uint32_t b = 0; b < 0x10000; b++) {
		if ((b & 0x7f80) == 0x7f80 && (b & 0x7f))
			continue;
		cr_assert_eq(f32_bits(ls_bf16_to_f32((uint16_t)b)), b << 16, "b=0x%04x", b);
	}
}

Test(dtype, bf16_round_trips_through_f32_for_all_65536_values)
{
	for (uint32_t b = 0; b < 0x10000; b++) {
		uint16_t back = ls_f32_to_bf16(ls_bf16_to_f32((uint16_t)b));
		if ((b & 0x7f80) == 0x7f80 && (b & 0x7f))
			cr_assert_eq(back, b | 0x0040, "NaN b=0x%04x back=0x%04x", b, back);
		else
			cr_assert_eq(back, b, "b=0x%04x back=0x%04x", b, back);
	}
}

Test(dtype, f32_to_bf16_rounds_ties_to_even)
{
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x3f808000u)), 0x3f80); /* tie, even below */
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x3f818000u)), 0x3f82); /* tie, even above */
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x3f808001u)), 0x3f81);
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x3f817fffu)), 0x3f81);
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0xbf808000u)), 0xbf80);
}

Test(dtype, f32_to_bf16_handles_subnormals)
{
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x00008000u)), 0x0000); /* tie to even 0 */
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x00008001u)), 0x0001);
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x00018000u)), 0x0002);
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x007fffffu)), 0x0080); /* up to min normal */
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x80008000u)), 0x8000);
}

Test(dtype, f32_to_bf16_overflows_to_infinity)
{
	cr_assert_eq(ls_f32_to_bf16(FLT_MAX), 0x7f80);
	cr_assert_eq(ls_f32_to_bf16(-FLT_MAX), 0xff80);
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0x7f7f7fffu)), 0x7f7f);
	cr_assert_eq(ls_f32_to_bf16(INFINITY), 0x7f80);
}

Test(dtype, f32_to_bf16_keeps_nan_as_quiet_nan)
{
	/* A NaN whose payload sits only in the low 16 bits must not become inf. */
	uint16_t a = ls_f32_to_bf16(bits_f32(0x7f800001u));
	cr_assert_eq(a, 0x7fc0);
	cr_assert_eq(ls_f32_to_bf16(bits_f32(0xff810000u)), 0xffc1);
	cr_assert_eq(f32_bits(ls_bf16_to_f32(0x7f81)), 0x7fc10000u);
}

/* Array conversion */

Test(dtype, convert_f32_to_f16_and_back_on_unaligned_buffers)
{
	enum { N = 1000 };
	unsigned char *src = malloc(N * 4 + 1), *mid = malloc(N * 2 + 1), *back = malloc(N * 4 + 1);
	for (int i = 0; i < N; i++) {
		float v = ls_f16_to_f32((uint16_t)(i * 31)); /* finite halves, exact in f32 */
		memcpy(src + 1 + i * 4, &v, 4);
	}
	cr_assert_eq(ls_dtype_convert(LS_DTYPE_F32, src + 1, LS_DTYPE_F16, mid + 1, N), 0);
	cr_assert_eq(ls_dtype_convert(LS_DTYPE_F16, mid + 1, LS_DTYPE_F32, back + 1, N), 0);
	for (int i = 0; i < N; i++) {
		uint16_t h;
		memcpy(&h, mid + 1 + i * 2, 2);
		cr_assert_eq(h, (uint16_t)(i * 31), "i=%d", i);
	}
	cr_assert_eq(memcmp(src + 1, back + 1, N * 4), 0);
	free(src);
	free(mid);
	free(back);
}

Test(dtype, convert_f16_to_bf16_rounds_to_nearest)
{
	/* 0x3c01 = 1 + 2^-10 is below half a bf16 ulp (2^-8) above 1.0. */
	uint16_t in[3] = {0x3c01, 0x3c00, 0x7c00}, out[3];
	cr_assert_eq(ls_dtype_convert(LS_DTYPE_F16, in, LS_DTYPE_BF16, out, 3), 0);
	cr_assert_eq(out[0], 0x3f80);
	cr_assert_eq(out[1], 0x3f80);
	cr_assert_eq(out[2], 0x7f80);
}

Test(dtype, convert_same_dtype_copies_bytes)
{
	uint16_t in[4] = {0x7c01, 1, 2, 3}, out[4] = {0};
	cr_assert_eq(ls_dtype_convert(LS_DTYPE_BF16, in, LS_DTYPE_BF16, out, 4), 0);
	cr_assert_eq(memcmp(in, out, sizeof(in)), 0);
}

Test(dtype, convert_rejects_non_float_dtypes)
{
	uint32_t a = 0, b = 0;
	cr_assert_eq(ls_dtype_convert(LS_DTYPE_I32, &a, LS_DTYPE_F32, &b, 1), -EINVAL);
	cr_assert_eq(ls_dtype_convert(LS_DTYPE_F32, &a, LS_DTYPE_F64, &b, 1), -EINVAL);
	cr_assert_eq(ls_dtype_convert(LS_DTYPE_INVALID, &a, LS_DTYPE_F16, &b, 1), -EINVAL);
}

/* Non-finite counting */

Test(dtype, counts_nonfinite_f32_on_unaligned_data)
{
	float v[] = {1.0f, NAN, -INFINITY, FLT_MAX, INFINITY, -0.0f, FLT_TRUE_MIN};
	unsigned char buf[sizeof(v) + 3];
	memcpy(buf + 3, v, sizeof(v));
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F32, buf + 3, 7), 3);
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F32, buf + 3, 1), 0);
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F32, buf + 3, 0), 0);
}

Test(dtype, counts_nonfinite_f16)
{
	uint16_t v[] = {0x3c00, 0x7c00, 0xfc00, 0x7e00, 0x7c01, 0x7bff, 0xfbff, 0x0001};
	unsigned char buf[sizeof(v) + 1];
	memcpy(buf + 1, v, sizeof(v));
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F16, buf + 1, 8), 4);
}

Test(dtype, counts_nonfinite_bf16)
{
	uint16_t v[] = {0x3f80, 0x7f80, 0xff80, 0x7fc0, 0x7f81, 0x7f7f, 0x0080};
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_BF16, v, 7), 4);
}

Test(dtype, counts_nonfinite_f64)
{
	double v[] = {1.0, NAN, INFINITY, -INFINITY, DBL_MAX, 0.0};
	unsigned char buf[sizeof(v) + 5];
	memcpy(buf + 5, v, sizeof(v));
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F64, buf + 5, 6), 3);
}

Test(dtype, counts_nonfinite_f8)
{
	uint8_t e5m2[] = {0x3c, 0x7c, 0xfc, 0x7d, 0x7b};
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F8_E5M2, e5m2, 5), 3);
	uint8_t e4m3[] = {0x7f, 0xff, 0x7e, 0x78};
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F8_E4M3, e4m3, 4), 2);
}

Test(dtype, integer_dtypes_have_no_nonfinite_values)
{
	uint32_t v[] = {0x7f800000u, 0x7fc00000u, 0xffffffffu};
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_I32, v, 3), 0);
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_U8, v, 12), 0);
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_INVALID, v, 3), 0);
}

Test(dtype, counts_nonfinite_at_block_edges_and_in_the_tail)
{
	/* The scan works in blocks of 64: put NaNs on both sides of each edge. */
	enum { N = 130 };
	float v[N + 1];
	for (int i = 0; i <= N; i++)
		v[i] = (float)i;
	v[0] = NAN;
	v[63] = INFINITY;
	v[64] = -INFINITY;
	v[127] = NAN;
	v[128] = NAN;
	v[129] = NAN;
	v[130] = NAN; /* past n: not counted */
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F32, v, N), 6);
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F32, v, 64), 2);
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F32, v, 63), 1);
}

Test(dtype, counts_nonfinite_over_a_large_buffer)
{
	enum { N = 1 << 20 };
	uint16_t *v = calloc(N, sizeof(*v));
	cr_assert_not_null(v);
	for (size_t i = 0; i < N; i += 1000)
		v[i] = 0x7e00;
	cr_assert_eq(ls_count_nonfinite(LS_DTYPE_F16, v, N), (N + 999) / 1000);
	free(v);
}
