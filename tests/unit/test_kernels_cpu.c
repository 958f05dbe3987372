/*
 * Tests of the CPU LoRA kernels (kernels/): the reference against a float64
 * computation done here, the optimized path against the reference on fresh
 * random data, every validation error, and the parts of y that must not
 * change.
 *
 * Random data comes from a seed read from /dev/urandom (or LSK_TEST_SEED),
 * printed with every failure so that the failing case can be rerun.  Inputs
 * are rounded to their dtypes before use and the float64 computation reads
 * the rounded values back, so it sees exactly what the kernels see.  Every
 * comparison counts the elements it compared, and a test that compared none
 * fails.
 *
 * Tolerances (kt_tol): the kernels sum in F32.  A sum of n products has an
 * error of at most gamma_n = n u / (1 - n u) times the sum of the magnitudes
 * of its terms (u = 2^-24), whatever the order of summation.  Here
 * v[r] sums `in` products, acc sums r products of v, and scale * acc and
 * y + update round once each, so the F32 result is within
 * gamma_(in + r + 2) * M of the exact one, with
 * M = |y| + |scale| * sum_r |B[o][r]| * sum_k |x[k] A[r][k]|.
 * A 16-bit y then rounds once more: half an ulp, at most 2^-11 (F16) or
 * 2^-8 (BF16) of the value, or half the smallest subnormal.  The optimized
 * path sums in another order (and may fuse multiply-adds, which only removes
 * roundings), so it obeys the same bound, and the two paths differ by at
 * most twice that bound.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ls_error.h"
#include "lsk.h"

#define KT_MAX_AD 12
#define KT_MAX_SEG 16

/* ---- random numbers ---- */

static uint64_t kt_seed;
static uint64_t kt_state;

static uint64_t kt_next(void)
{
	uint64_t z = (kt_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [lo, hi). */
static double kt_uniform(double lo, double hi)
{
	return lo + (hi - lo) * (double)(kt_next() >> 11) * 0x1p-53;
}

static int64_t kt_below(int64_t n)
{
	return (int64_t)(kt_next() % (uint64_t)n);
}

static void kt_seed_init(void)
{
	const char *env = getenv("LSK_TEST_SEED");
	if (env && *env) {
		kt_seed = strtoull(env, NULL, 0);
	} else {
		int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
		if (fd < 0 || read(fd, &kt_seed, sizeof(kt_seed)) != (ssize_t)sizeof(kt_seed))
			kt_seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
		if (fd >= 0)
			close(fd);
	}
	kt_state = kt_seed;
}

/* Every failure names the seed: LSK_TEST_SEED=<seed> reruns the same data. */
#define KT_ASSERT(cond, fmt, ...)                                                      \
	cr_assert((cond), fmt " (LSK_TEST_SEED=%" PRIu64 ")", ##__VA_ARGS__, kt_seed)

/* ---- this test's own dtype arithmetic, independent of the kernels ---- */

/* The value of element i of an array of dtype dt, exactly. */
static double kt_get(lsk_dtype dt, const void *p, int64_t i)
{
	if (dt == LSK_F32)
		return ((const float *)p)[i];
	uint16_t h = ((const uint16_t *)p)[i];
	if (dt == LSK_BF16) {
		uint32_t u = (uint32_t)h << 16;
		float f;
		memcpy(&f, &u, sizeof(f));
		return f;
	}
	double sign = (h & 0x8000) ? -1.0 : 1.0;
	int e = (h >> 10) & 31, m = h & 1023;
	if (e == 31)
		return m ? NAN : sign * INFINITY;
	if (e == 0)
		return sign * ldexp(m, -24);
	return sign * ldexp(1024 + m, e - 25);
}

/* v rounded to nearest even in dtype dt (infinity past the largest value). */
static double kt_round(lsk_dtype dt, double v)
{
	if (dt == LSK_F32)
		return (float)v; /* C's double-to-float conversion rounds to nearest even */
	if (v == 0 || isnan(v) || isinf(v))
		return v;
	int digits = dt == LSK_F16 ? 11 : 8;         /* significand bits */
	int min_q = dt == LSK_F16 ? -24 : -133;      /* exponent of the smallest subnormal */
	double max = dt == LSK_F16 ? 65504.0 : ldexp(255.0 / 128.0, 127);
	int e;
	frexp(fabs(v), &e);
	int q = e - digits > min_q ? e - digits : min_q;
	double r = ldexp(nearbyint(ldexp(fabs(v), -q)), q);
	if (r > max)
		r = INFINITY;
	return v < 0 ? -r : r;
}

/* Store v, which must be exactly representable in dt (kt_round's output). */
static void kt_put(lsk_dtype dt, void *p, int64_t i, double v)
{
	if (dt == LSK_F32) {
		((float *)p)[i] = (float)v;
		return;
	}
	if (dt == LSK_BF16) {
		float f = (float)v;
		uint32_t u;
		memcpy(&u, &f, sizeof(u));
		((uint16_t *)p)[i] = (uint16_t)(u >> 16);
		return;
	}
	uint16_t sign = signbit(v) ? 0x8000 : 0;
	double a = fabs(v);
	uint16_t bits;
	if (isnan(v)) {
		bits = 0x7e00;
	} else if (isinf(a)) {
		bits = 0x7c00;
	} else if (a < 0x1p-14) {
		bits = (uint16_t)ldexp(a, 24);
	} else {
		int e;
		double m = frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
		bits = (uint16_t)((e + 14) << 10 | (uint16_t)(ldexp(m, 11) - 1024));
	}
	((uint16_t *)p)[i] = sign | bits;
}

/* A value that no kernel writes: y outside the update must keep it, bit for bit. */
static void kt_put_sentinel(lsk_dtype dt, void *p, int64_t i)
{
	if (dt == LSK_F32)
		memcpy((float *)p + i, &(uint32_t){0x7fbadbadu}, 4);
	else
		((uint16_t *)p)[i] = dt == LSK_F16 ? 0x7d5a : 0x7fa5;
}

static size_t kt_size(lsk_dtype dt)
{
	return dt == LSK_F32 ? 4 : 2;
}

/* The bound of the file comment for one element of y. */
static double kt_tol(lsk_dtype act, double exact, double m, int64_t in, int32_t r)
{
	double n = (double)(in + r + 2), u = 0x1p-24;
	double g = n * u / (1.0 - n * u) * m;
	if (act == LSK_F16)
		return g + (fabs(exact) + g) * 0x1p-11 + 0x1p-25;
	if (act == LSK_BF16)
		return g + (fabs(exact) + g) * 0x1p-8 + 0x1p-134;
	return g;
}

/* ---- one operation with its data ---- */

struct kt_op {
	lsk_lora l;
	lsk_batch b;
	int64_t n_rows;                 /* rows of x and y allocated */
	const void *ap[LSK_MAX_SLICES][KT_MAX_AD];
	const void *bp[LSK_MAX_SLICES][KT_MAX_AD];
	void *own[LSK_MAX_SLICES][KT_MAX_AD][2]; /* what kt_free frees: tests may repoint ap and bp */
	int32_t rank[LSK_MAX_SLICES][KT_MAX_AD];
	float scale[KT_MAX_AD];
	int32_t *tok;                   /* [n_rows] */
	lsk_segment seg[KT_MAX_SEG];
	void *x;
	void *y0;                       /* y before the call */
	size_t y_bytes;
};

static void *kt_alloc(size_t n)
{
	void *p = calloc(1, n ? n : 1);
	cr_assert(p, "out of memory");
	return p;
}

/* n random values of dtype dt, uniform in [-amp, amp), rounded to dt. */
static void *kt_random(lsk_dtype dt, int64_t n, double amp)
{
	void *p = kt_alloc((size_t)n * kt_size(dt));
	for (int64_t i = 0; i < n; i++)
		kt_put(dt, p, i, kt_round(dt, kt_uniform(-amp, amp)));
	return p;
}

/* An operation without slices or batch; x has 3 unused columns per row. */
static void kt_new(struct kt_op *op, lsk_dtype act, lsk_dtype wdt, int64_t in, int64_t ldy,
		   int64_t n_tokens, int32_t n_adapters)
{
	memset(op, 0, sizeof(*op));
	cr_assert(n_adapters <= KT_MAX_AD);
	op->l.act_dtype = act;
	op->l.weight_dtype = wdt;
	op->l.in = in;
	op->l.ldx = in + 3;
	op->l.ldy = ldy;
	op->l.n_adapters = n_adapters;
	op->l.max_rank = 1;
	op->l.scale = op->scale;
	for (int32_t a = 0; a < n_adapters; a++)
		op->scale[a] = (float)kt_uniform(0.5, 2.0);
	op->b.n_tokens = n_tokens;
	op->n_rows = n_tokens > 0 ? n_tokens : 4;
	op->tok = kt_alloc((size_t)op->n_rows * sizeof(int32_t));
	op->y_bytes = (size_t)(op->n_rows * ldy) * kt_size(act);
	op->y0 = kt_alloc(op->y_bytes);
	op->x = kt_alloc((size_t)(op->n_rows * op->l.ldx) * kt_size(act));
}

/* A slice at columns [off, off + out) with ranks[a] for each adapter (0: none). */
static void kt_slice(struct kt_op *op, int64_t off, int64_t out, const int32_t *ranks)
{
	int32_t s = op->l.n_slices++;
	lsk_slice *sl = &op->l.slices[s];
	sl->out_offset = off;
	sl->out = out;
	sl->a = op->ap[s];
	sl->b = op->bp[s];
	sl->rank = op->rank[s];
	for (int32_t a = 0; a < op->l.n_adapters; a++) {
		int32_t r = ranks[a];
		op->rank[s][a] = r;
		if (r == 0)
			continue;
		/* Magnitudes that keep every value near 1 whatever in and r are. */
		op->own[s][a][0] = kt_random(op->l.weight_dtype, r * op->l.in,
					     1.0 / sqrt((double)op->l.in));
		op->own[s][a][1] = kt_random(op->l.weight_dtype, out * r, 1.0 / sqrt((double)r));
		op->ap[s][a] = op->own[s][a][0];
		op->bp[s][a] = op->own[s][a][1];
		if (r > op->l.max_rank)
			op->l.max_rank = r;
	}
}

/* The same rank for every adapter. */
static void kt_slice_rank(struct kt_op *op, int64_t off, int64_t out, int32_t rank)
{
	int32_t ranks[KT_MAX_AD];
	for (int a = 0; a < KT_MAX_AD; a++)
		ranks[a] = rank;
	kt_slice(op, off, out, ranks);
}

static void kt_decode(struct kt_op *op, const int32_t *idx)
{
	memcpy(op->tok, idx, (size_t)op->b.n_tokens * sizeof(int32_t));
	op->b.token_adapter = op->tok;
}

/* Token t uses a random adapter, or none with probability 1/(n_adapters + 1). */
static void kt_decode_random(struct kt_op *op)
{
	for (int64_t t = 0; t < op->b.n_tokens; t++)
		op->tok[t] = (int32_t)kt_below(op->l.n_adapters + 1) - 1;
	op->b.token_adapter = op->tok;
}

static void kt_segments(struct kt_op *op, const lsk_segment *sg, int32_t n)
{
	cr_assert(n <= KT_MAX_SEG);
	memcpy(op->seg, sg, (size_t)n * sizeof(*sg));
	op->b.segments = op->seg;
	op->b.n_segments = n;
}

/* The adapter of token t under the batch (-1: none). */
static int32_t kt_adapter_of(const struct kt_op *op, int64_t t)
{
	if (t >= op->b.n_tokens)
		return -1;
	if (op->b.token_adapter)
		return op->b.token_adapter[t];
	for (int32_t i = 0; i < op->b.n_segments; i++)
		if (t >= op->seg[i].start && t < (int64_t)op->seg[i].start + op->seg[i].len)
			return op->seg[i].adapter;
	return -1;
}

/* The slice whose columns hold c and that adapter a has, or -1. */
static int32_t kt_slice_of(const struct kt_op *op, int32_t a, int64_t c)
{
	if (a < 0)
		return -1;
	for (int32_t s = 0; s < op->l.n_slices; s++) {
		const lsk_slice *sl = &op->l.slices[s];
		if (c >= sl->out_offset && c < sl->out_offset + sl->out)
			return op->rank[s][a] > 0 ? s : -1;
	}
	return -1;
}

/* x random (its unused columns NaN, which would show if read); y random
 * where the call adds, the sentinel everywhere else. */
static void kt_fill(struct kt_op *op)
{
	lsk_dtype act = op->l.act_dtype;
	for (int64_t t = 0; t < op->n_rows; t++) {
		for (int64_t k = 0; k < op->l.ldx; k++)
			kt_put(act, op->x, t * op->l.ldx + k,
			       k < op->l.in ? kt_round(act, kt_uniform(-1.0, 1.0)) : NAN);
		int32_t a = kt_adapter_of(op, t);
		for (int64_t c = 0; c < op->l.ldy; c++) {
			if (kt_slice_of(op, a, c) >= 0)
				kt_put(act, op->y0, t * op->l.ldy + c,
				       kt_round(act, kt_uniform(-1.0, 1.0)));
			else
				kt_put_sentinel(act, op->y0, t * op->l.ldy + c);
		}
	}
}

static void kt_free(struct kt_op *op)
{
	for (int32_t s = 0; s < LSK_MAX_SLICES; s++)
		for (int32_t a = 0; a < KT_MAX_AD; a++) {
			free(op->own[s][a][0]);
			free(op->own[s][a][1]);
		}
	free(op->tok);
	free(op->x);
	free(op->y0);
}

static void *kt_workspace(const struct kt_op *op, size_t *size)
{
	*size = lsk_workspace_size(&op->l, op->b.n_tokens);
	cr_assert(*size != SIZE_MAX);
	void *ws = aligned_alloc(64, (*size + 63) / 64 * 64);
	cr_assert(ws, "out of memory");
	return ws;
}

static void *kt_run_ref(const struct kt_op *op)
{
	void *y = kt_alloc(op->y_bytes);
	memcpy(y, op->y0, op->y_bytes);
	int rc = lsk_ref_apply(&op->l, &op->b, op->x, y);
	KT_ASSERT(rc == 0, "lsk_ref_apply: %d", rc);
	return y;
}

static void *kt_run_cpu(const struct kt_op *op, int n_threads)
{
	void *y = kt_alloc(op->y_bytes);
	memcpy(y, op->y0, op->y_bytes);
	size_t wsz;
	void *ws = kt_workspace(op, &wsz);
	int rc = lsk_cpu_apply(&op->l, &op->b, op->x, y, ws, wsz, n_threads);
	free(ws);
	KT_ASSERT(rc == 0, "lsk_cpu_apply: %d", rc);
	return y;
}

/*
 * The shrink of token t by slice s of its adapter in float64: v[q] and the
 * sum of magnitudes of its terms vm[q], for the bound.
 */
static void kt_exact_shrink(const struct kt_op *op, int64_t t, int32_t s, double *v, double *vm)
{
	const lsk_lora *l = &op->l;
	int32_t a = kt_adapter_of(op, t);
	for (int32_t q = 0; q < op->rank[s][a]; q++) {
		v[q] = vm[q] = 0.0;
		for (int64_t k = 0; k < l->in; k++) {
			double p = kt_get(l->act_dtype, op->x, t * l->ldx + k) *
				   kt_get(l->weight_dtype, op->ap[s][a], (int64_t)q * l->in + k);
			v[q] += p;
			vm[q] += fabs(p);
		}
	}
}

/* The exact y[t][off_s + o] after the call, in float64, with M of the bound. */
static double kt_exact(const struct kt_op *op, int64_t t, int32_t s, int64_t o, const double *v,
		       const double *vm, double *m)
{
	const lsk_lora *l = &op->l;
	int32_t a = kt_adapter_of(op, t);
	int32_t r = op->rank[s][a];
	double acc = 0.0, mag = 0.0;
	for (int32_t q = 0; q < r; q++) {
		double bw = kt_get(l->weight_dtype, op->bp[s][a], o * r + q);
		acc += v[q] * bw;
		mag += vm[q] * fabs(bw);
	}
	int64_t idx = t * l->ldy + l->slices[s].out_offset + o;
	double y0 = kt_get(l->act_dtype, op->y0, idx);
	*m = fabs(y0) + fabs((double)op->scale[a]) * mag;
	return y0 + (double)op->scale[a] * acc;
}

enum kt_mode {
	KT_REF_VS_EXACT,  /* the reference against float64, within kt_tol */
	KT_CPU_VS_REF,    /* the optimized path against the reference, within 2 kt_tol */
};

/*
 * Runs the reference (and, for KT_CPU_VS_REF, the optimized path with
 * n_threads), checks every element the call adds into against the bound and
 * every other element of y against its sentinel.  Returns the number of
 * elements compared with the bound.
 */
static int64_t kt_check(const struct kt_op *op, enum kt_mode mode, int n_threads)
{
	const lsk_lora *l = &op->l;
	lsk_dtype act = l->act_dtype;
	size_t es = kt_size(act);
	void *ref = kt_run_ref(op);
	void *got = mode == KT_CPU_VS_REF ? kt_run_cpu(op, n_threads) : ref;
	int64_t compared = 0;
	double v[LSK_MAX_RANK], vm[LSK_MAX_RANK];
	for (int64_t t = 0; t < op->n_rows; t++) {
		int32_t a = kt_adapter_of(op, t);
		for (int64_t c = 0; c < l->ldy; c++) {
			int64_t idx = t * l->ldy + c;
			if (kt_slice_of(op, a, c) < 0)
				KT_ASSERT(memcmp((char *)got + idx * es, (char *)op->y0 + idx * es, es) == 0 &&
					  memcmp((char *)ref + idx * es, (char *)op->y0 + idx * es, es) == 0,
					  "y[%" PRId64 "][%" PRId64 "] outside the update changed", t, c);
		}
		for (int32_t s = 0; a >= 0 && s < l->n_slices; s++) {
			int32_t r = op->rank[s][a];
			if (r == 0)
				continue;
			kt_exact_shrink(op, t, s, v, vm);
			for (int64_t o = 0; o < l->slices[s].out; o++) {
				int64_t c = l->slices[s].out_offset + o, idx = t * l->ldy + c;
				double m;
				double exact = kt_exact(op, t, s, o, v, vm, &m);
				double tol = kt_tol(act, exact, m, l->in, r);
				double vr = kt_get(act, ref, idx), vg = kt_get(act, got, idx);
				if (mode == KT_REF_VS_EXACT)
					KT_ASSERT(fabs(vr - exact) <= tol,
						  "%s/%s y[%" PRId64 "][%" PRId64 "]: reference %.9g, "
						  "exact %.9g, bound %.3g", lsk_dtype_name(act),
						  lsk_dtype_name(l->weight_dtype), t, c, vr, exact, tol);
				else
					KT_ASSERT(fabs(vg - vr) <= 2.0 * tol,
						  "%s/%s y[%" PRId64 "][%" PRId64 "] (threads %d): cpu "
						  "%.9g, reference %.9g, bound %.3g", lsk_dtype_name(act),
						  lsk_dtype_name(l->weight_dtype), t, c, n_threads, vg, vr,
						  2.0 * tol);
				compared++;
			}
		}
	}
	if (got != ref)
		free(got);
	free(ref);
	return compared;
}

static const lsk_dtype kt_dtypes[3] = {LSK_F32, LSK_F16, LSK_BF16};

/* Two adapters of one rank, 12 tokens: 9 of one (a long group), 3 of the other. */
static void kt_two_groups(struct kt_op *op, lsk_dtype act, lsk_dtype wdt, int64_t in,
			  int64_t out, int32_t rank)
{
	static const int32_t idx[12] = {0, 1, 0, 0, -1, 0, 1, 0, 0, 0, 1, 0};
	kt_new(op, act, wdt, in, out + 5, 12, 2);
	kt_slice_rank(op, 2, out, rank);
	kt_decode(op, idx);
	kt_fill(op);
}

/* ---- (a) the reference against float64 ---- */

Test(kernels_cpu, reference_is_within_the_f32_rounding_bound_for_every_dtype_pair)
{
	kt_seed_init();
	int64_t compared = 0;
	for (int i = 0; i < 3; i++)
		for (int w = 0; w < 3; w++) {
			struct kt_op op;
			kt_two_groups(&op, kt_dtypes[i], kt_dtypes[w], 300, 37, 16);
			compared += kt_check(&op, KT_REF_VS_EXACT, 1);
			kt_free(&op);
		}
	KT_ASSERT(compared > 0, "nothing compared");
}

Test(kernels_cpu, reference_is_within_the_bound_for_segments_and_slices)
{
	kt_seed_init();
	static const lsk_segment sg[3] = {{0, 5, 1}, {7, 4, 0}, {11, 0, 1}};
	struct kt_op op;
	kt_new(&op, LSK_BF16, LSK_F16, 129, 100, 12, 2);
	kt_slice(&op, 0, 40, (const int32_t[]){8, 3});
	kt_slice(&op, 50, 30, (const int32_t[]){0, 64});
	kt_segments(&op, sg, 3);
	kt_fill(&op);
	KT_ASSERT(kt_check(&op, KT_REF_VS_EXACT, 1) > 0, "nothing compared");
	kt_free(&op);
}

/* ---- conversions, through the public calls ---- */

/*
 * Every 16-bit weight pattern reaches y unchanged: 8 slices of rank 8 over
 * one input column, slice s's A picks rank s and its B holds the pattern
 * s * 8192 + o in row o, lane s (the other lanes zero), so that the
 * vectorized conversions see every pattern in every lane position.  y is
 * F32, starts at zero, and scale is 1: each output is exactly the weight.
 */
static void kt_widen_every_pattern(lsk_dtype wdt, bool cpu)
{
	struct kt_op op;
	kt_new(&op, LSK_F32, wdt, 1, 8 * 8192, 1, 1);
	op.scale[0] = 1.0f;
	for (int32_t s = 0; s < 8; s++) {
		kt_slice_rank(&op, s * 8192, 8192, 8);
		uint16_t *A = (uint16_t *)op.ap[s][0];
		uint16_t *B = (uint16_t *)op.bp[s][0];
		for (int32_t r = 0; r < 8; r++)
			kt_put(wdt, A, r, r == s ? 1.0 : 0.0);
		for (int64_t o = 0; o < 8192; o++)
			for (int32_t r = 0; r < 8; r++)
				B[o * 8 + r] = r == s ? (uint16_t)(s * 8192 + o) : 0;
	}
	kt_decode(&op, (const int32_t[]){0});
	kt_fill(&op);
	kt_put(LSK_F32, op.x, 0, 1.0);
	memset(op.y0, 0, op.y_bytes);
	void *y = cpu ? kt_run_cpu(&op, 1) : kt_run_ref(&op);
	int64_t compared = 0;
	for (int64_t c = 0; c < 8 * 8192; c++) {
		uint16_t pattern = (uint16_t)c;
		double want = kt_get(wdt, &pattern, 0);
		double got = kt_get(LSK_F32, y, c);
		if (isnan(want))
			KT_ASSERT(isnan(got), "%s 0x%04x: got %g, want NaN", lsk_dtype_name(wdt),
				  pattern, got);
		else
			KT_ASSERT(got == want, "%s 0x%04x: got %.9g, want %.9g", lsk_dtype_name(wdt),
				  pattern, got, want);
		compared++;
	}
	KT_ASSERT(compared == 65536, "compared %" PRId64, compared);
	free(y);
	kt_free(&op);
}

Test(kernels_cpu, every_f16_weight_widens_exactly)
{
	kt_seed_init();
	kt_widen_every_pattern(LSK_F16, false);
	kt_widen_every_pattern(LSK_F16, true);
}

Test(kernels_cpu, every_bf16_weight_widens_exactly)
{
	kt_seed_init();
	kt_widen_every_pattern(LSK_BF16, false);
	kt_widen_every_pattern(LSK_BF16, true);
}

/*
 * F32 values chosen to test rounding into a 16-bit y: every midpoint between
 * neighbours (a tie), the floats on either side of it, random values over
 * the whole range, subnormals, overflow and the special values.
 */
static int64_t kt_rounding_inputs(lsk_dtype dt, float *f, int64_t cap)
{
	int64_t n = 0;
	for (uint32_t h = 0; h < 0x7bffu && n + 6 <= cap; h += 13) {
		uint16_t lo = (uint16_t)h, hi = (uint16_t)(h + 1);
		double mid = (kt_get(dt, &lo, 0) + kt_get(dt, &hi, 0)) / 2; /* exact in F32 */
		float fm = (float)mid;
		f[n++] = fm;
		f[n++] = -fm;
		f[n++] = nextafterf(fm, INFINITY);
		f[n++] = nextafterf(fm, 0.0f);
		f[n++] = (float)kt_uniform(-70000.0, 70000.0);
		f[n++] = (float)ldexp(kt_uniform(-1.0, 1.0), (int)kt_below(60) - 40);
	}
	static const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f,
					65519.99f, 65520.0f, -65520.0f, 0x1p-25f, 0x1.000002p-25f,
					0x1p-26f, 0x1p-24f, 0x1.8p-24f, 0x1p-14f, 3.0e38f, 0x1p-149f,
					0x1.fffffep127f};
	for (size_t i = 0; i < sizeof(special) / sizeof(special[0]) && n < cap; i++)
		f[n++] = special[i];
	return n & ~(int64_t)7;
}

/* y (dtype act) starts at zero and receives exactly f[o] (x = A = scale = 1,
 * rank 1), so each output is f[o] rounded once into act. */
static void kt_round_every_input(lsk_dtype act, bool cpu)
{
	enum { N = 16384 };
	float *f = kt_alloc(N * sizeof(float));
	int64_t n = kt_rounding_inputs(act, f, N);
	struct kt_op op;
	kt_new(&op, act, LSK_F32, 1, n, 1, 1);
	op.scale[0] = 1.0f;
	kt_slice_rank(&op, 0, n, 1);
	kt_put(LSK_F32, (void *)op.ap[0][0], 0, 1.0);
	memcpy((void *)op.bp[0][0], f, (size_t)n * sizeof(float));
	kt_decode(&op, (const int32_t[]){0});
	kt_fill(&op);
	kt_put(act, op.x, 0, 1.0);
	memset(op.y0, 0, op.y_bytes);
	void *y = cpu ? kt_run_cpu(&op, 1) : kt_run_ref(&op);
	int64_t compared = 0;
	for (int64_t o = 0; o < n; o++) {
		double want = kt_round(act, f[o]);
		double got = kt_get(act, y, o);
		if (isnan(want))
			KT_ASSERT(isnan(got), "%s of %a: got %a, want NaN", lsk_dtype_name(act),
				  (double)f[o], got);
		else
			KT_ASSERT(got == want, "%s of %a: got %a, want %a", lsk_dtype_name(act),
				  (double)f[o], got, want);
		compared++;
	}
	KT_ASSERT(compared > 1000, "compared %" PRId64, compared);
	free(y);
	free(f);
	kt_free(&op);
}

Test(kernels_cpu, f16_output_rounds_to_nearest_even)
{
	kt_seed_init();
	kt_round_every_input(LSK_F16, false);
	kt_round_every_input(LSK_F16, true);
}

Test(kernels_cpu, bf16_output_rounds_to_nearest_even)
{
	kt_seed_init();
	kt_round_every_input(LSK_BF16, false);
	kt_round_every_input(LSK_BF16, true);
}

/* ---- (b) the optimized path against the reference ---- */

Test(kernels_cpu, cpu_matches_reference_for_every_rank)
{
	kt_seed_init();
	static const int32_t ranks[] = {1, 2, 3, 7, 8, 16, 31, 64, 127, 128};
	int64_t compared = 0;
	for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++) {
		struct kt_op op;
		kt_two_groups(&op, LSK_F32, LSK_F16, 67, 45, ranks[i]);
		compared += kt_check(&op, KT_CPU_VS_REF, 1);
		kt_free(&op);
	}
	KT_ASSERT(compared > 0, "nothing compared");
}

Test(kernels_cpu, cpu_matches_reference_for_widths_that_are_and_are_not_multiples_of_8)
{
	kt_seed_init();
	static const int64_t ins[] = {1, 13, 67, 1000, 8, 64, 2500};
	static const int64_t outs[] = {1, 13, 67, 1000, 8, 16, 64};
	int64_t compared = 0;
	for (size_t i = 0; i < sizeof(ins) / sizeof(ins[0]); i++)
		for (size_t o = 0; o < sizeof(outs) / sizeof(outs[0]); o++) {
			struct kt_op op;
			kt_two_groups(&op, LSK_F32, LSK_BF16, ins[i], outs[o], 5);
			compared += kt_check(&op, KT_CPU_VS_REF, 1);
			kt_free(&op);
		}
	KT_ASSERT(compared > 0, "nothing compared");
}

Test(kernels_cpu, cpu_matches_reference_for_every_dtype_pair)
{
	kt_seed_init();
	int64_t compared = 0;
	for (int i = 0; i < 3; i++)
		for (int w = 0; w < 3; w++) {
			struct kt_op op;
			/* in > 1024: a long group of 16-bit x is widened block by block. */
			kt_two_groups(&op, kt_dtypes[i], kt_dtypes[w], 1100, 70, 16);
			compared += kt_check(&op, KT_CPU_VS_REF, 1);
			kt_free(&op);
		}
	KT_ASSERT(compared > 0, "nothing compared");
}

Test(kernels_cpu, cpu_matches_reference_with_mixed_ranks_and_no_adapter_in_one_batch)
{
	kt_seed_init();
	struct kt_op op;
	kt_new(&op, LSK_F16, LSK_F16, 96, 300, 40, 6);
	kt_slice(&op, 0, 300, (const int32_t[]){1, 16, 7, 64, 3, 33});
	kt_decode_random(&op);
	kt_fill(&op);
	KT_ASSERT(kt_check(&op, KT_CPU_VS_REF, 1) > 0, "nothing compared");
	kt_free(&op);
}

Test(kernels_cpu, cpu_matches_reference_for_a_single_token)
{
	kt_seed_init();
	struct kt_op op;
	kt_new(&op, LSK_BF16, LSK_BF16, 4096 / 8 + 3, 130, 1, 3);
	kt_slice_rank(&op, 1, 129, 16);
	kt_decode(&op, (const int32_t[]){2});
	kt_fill(&op);
	KT_ASSERT(kt_check(&op, KT_CPU_VS_REF, 1) > 0, "nothing compared");
	kt_free(&op);
}

Test(kernels_cpu, cpu_matches_reference_for_many_tokens_of_one_adapter_interleaved)
{
	kt_seed_init();
	struct kt_op op;
	kt_new(&op, LSK_F32, LSK_F32, 77, 90, 70, 3);
	kt_slice(&op, 0, 90, (const int32_t[]){16, 5, 8});
	/* Adapter 0 on most tokens, in no order the kernels could rely on. */
	for (int64_t t = 0; t < 70; t++)
		op.tok[t] = kt_below(5) == 0 ? (int32_t)kt_below(4) - 1 : 0;
	op.b.token_adapter = op.tok;
	kt_fill(&op);
	KT_ASSERT(kt_check(&op, KT_CPU_VS_REF, 1) > 0, "nothing compared");
	kt_free(&op);
}

Test(kernels_cpu, cpu_matches_reference_for_every_group_size_from_1_to_9)
{
	/* Adapter g has g + 1 tokens: every remainder of the 4-token tiles, and
	 * groups on both sides of the switch to the broadcast expand. */
	kt_seed_init();
	int64_t compared = 0;
	for (int32_t rank = 5; rank <= 16; rank += 11) {
		struct kt_op op;
		kt_new(&op, LSK_F16, LSK_BF16, 90, 40, 45, 9);
		kt_slice_rank(&op, 0, 37, rank);
		for (int32_t g = 0, t = 0; g < 9; g++)
			for (int32_t i = 0; i <= g; i++)
				op.tok[t++] = g;
		op.b.token_adapter = op.tok;
		kt_fill(&op);
		compared += kt_check(&op, KT_CPU_VS_REF, 1);
		kt_free(&op);
	}
	KT_ASSERT(compared > 0, "nothing compared");
}

Test(kernels_cpu, cpu_matches_reference_for_segments_with_empty_ones_and_gaps)
{
	kt_seed_init();
	/* Long and short segments, an empty one, one without adapter, gaps at
	 * 3..4, 30..31 and after 40. */
	static const lsk_segment sg[6] = {{0, 3, 1},   {5, 17, 0}, {22, 0, 2},
					  {22, 8, -1}, {32, 1, 2}, {33, 7, 1}};
	struct kt_op op;
	kt_new(&op, LSK_F16, LSK_BF16, 200, 70, 45, 3);
	kt_slice(&op, 3, 64, (const int32_t[]){16, 8, 31});
	kt_segments(&op, sg, 6);
	kt_fill(&op);
	KT_ASSERT(kt_check(&op, KT_CPU_VS_REF, 1) > 0, "nothing compared");
	kt_free(&op);
}

Test(kernels_cpu, cpu_matches_reference_for_segments_in_any_order)
{
	kt_seed_init();
	static const lsk_segment sg[4] = {{20, 12, 0}, {0, 9, 1}, {40, 0, 0}, {9, 11, 0}};
	struct kt_op op;
	kt_new(&op, LSK_F32, LSK_F16, 100, 50, 40, 2);
	kt_slice_rank(&op, 0, 50, 12);
	kt_segments(&op, sg, 4);
	kt_fill(&op);
	KT_ASSERT(kt_check(&op, KT_CPU_VS_REF, 1) > 0, "nothing compared");
	kt_free(&op);
}

/* q/k/v packed in one row of y with gaps between the slices and after them. */
static void kt_qkv(struct kt_op *op, lsk_dtype act, lsk_dtype wdt, int64_t n_tokens)
{
	kt_new(op, act, wdt, 160, 400, n_tokens, 4);
	kt_slice(op, 0, 128, (const int32_t[]){16, 8, 0, 64});
	kt_slice(op, 130, 64, (const int32_t[]){16, 8, 4, 0});
	kt_slice(op, 200, 77, (const int32_t[]){16, 0, 4, 64});
	kt_decode_random(op);
	kt_fill(op);
}

Test(kernels_cpu, cpu_matches_reference_for_three_slices_like_qkv)
{
	kt_seed_init();
	struct kt_op op;
	kt_qkv(&op, LSK_BF16, LSK_F16, 30);
	KT_ASSERT(kt_check(&op, KT_CPU_VS_REF, 1) > 0, "nothing compared");
	kt_free(&op);
}

Test(kernels_cpu, cpu_with_two_threads_matches_reference)
{
	kt_seed_init();
	int64_t compared = 0;
	struct kt_op op;
	kt_qkv(&op, LSK_F32, LSK_BF16, 50);
	compared += kt_check(&op, KT_CPU_VS_REF, 2);
	kt_free(&op);
	static const lsk_segment sg[3] = {{0, 40, 1}, {40, 3, 0}, {45, 5, 2}};
	kt_new(&op, LSK_F16, LSK_F16, 300, 100, 50, 3);
	kt_slice(&op, 0, 100, (const int32_t[]){16, 3, 64});
	kt_segments(&op, sg, 3);
	kt_fill(&op);
	compared += kt_check(&op, KT_CPU_VS_REF, 2);
	kt_free(&op);
	kt_two_groups(&op, LSK_BF16, LSK_F32, 50, 20, 1);
	compared += kt_check(&op, KT_CPU_VS_REF, 2);
	kt_free(&op);
	KT_ASSERT(compared > 0, "nothing compared");
}

Test(kernels_cpu, cpu_portable_kernels_match_reference)
{
	/* Each Criterion test runs in its own process, so this choice (made at
	 * the first call) stays inside this test. */
	setenv("LSK_CPU_ISA", "generic", 1);
	kt_seed_init();
	int64_t compared = 0;
	for (int i = 0; i < 3; i++)
		for (int w = 0; w < 3; w++) {
			struct kt_op op;
			kt_two_groups(&op, kt_dtypes[i], kt_dtypes[w], 75, 37, 9);
			compared += kt_check(&op, KT_CPU_VS_REF, 1);
			kt_free(&op);
		}
	struct kt_op op;
	kt_qkv(&op, LSK_F16, LSK_BF16, 20);
	compared += kt_check(&op, KT_CPU_VS_REF, 2);
	kt_free(&op);
	kt_round_every_input(LSK_F16, true);
	kt_widen_every_pattern(LSK_F16, true);
	KT_ASSERT(compared > 0, "nothing compared");
}

/* ---- (d) what must not change ---- */

/* y is all sentinel: nothing may be written. */
static void kt_expect_y_untouched(const struct kt_op *op)
{
	void *y = kt_alloc(op->y_bytes);
	memcpy(y, op->y0, op->y_bytes);
	int rc = lsk_ref_apply(&op->l, &op->b, op->x, y);
	KT_ASSERT(rc == 0, "lsk_ref_apply: %d", rc);
	KT_ASSERT(memcmp(y, op->y0, op->y_bytes) == 0, "the reference wrote into y");
	size_t wsz;
	void *ws = kt_workspace(op, &wsz);
	for (int threads = 1; threads <= 2; threads++) {
		rc = lsk_cpu_apply(&op->l, &op->b, op->x, y, ws, wsz, threads);
		KT_ASSERT(rc == 0, "lsk_cpu_apply: %d", rc);
		KT_ASSERT(memcmp(y, op->y0, op->y_bytes) == 0, "the cpu path wrote into y");
	}
	free(ws);
	free(y);
}

Test(kernels_cpu, empty_batch_leaves_y_untouched)
{
	kt_seed_init();
	struct kt_op op;
	kt_new(&op, LSK_F32, LSK_F16, 33, 40, 0, 2);
	kt_slice_rank(&op, 0, 40, 8);
	kt_fill(&op);
	kt_expect_y_untouched(&op);
	op.b.token_adapter = op.tok;
	kt_expect_y_untouched(&op);
	KT_ASSERT(lsk_ref_apply(&op.l, &op.b, NULL, NULL) == 0, "NULL x and y with no tokens");
	kt_free(&op);
}

Test(kernels_cpu, tokens_without_adapter_are_untouched)
{
	kt_seed_init();
	struct kt_op op;
	kt_new(&op, LSK_BF16, LSK_BF16, 40, 24, 9, 2);
	kt_slice_rank(&op, 0, 24, 8);
	kt_decode(&op, (const int32_t[]){-1, -1, -1, -1, -1, -1, -1, -1, -1});
	kt_fill(&op);
	kt_expect_y_untouched(&op);
	/* The same rows left out of every segment, or in a segment of adapter -1. */
	kt_segments(&op, (const lsk_segment[]){{2, 5, -1}, {8, 0, 1}}, 2);
	op.b.token_adapter = NULL;
	kt_expect_y_untouched(&op);
	kt_free(&op);
}

Test(kernels_cpu, slice_an_adapter_lacks_is_untouched)
{
	kt_seed_init();
	struct kt_op op;
	kt_new(&op, LSK_F16, LSK_F32, 50, 64, 6, 2);
	kt_slice(&op, 0, 30, (const int32_t[]){0, 0});
	kt_slice(&op, 32, 30, (const int32_t[]){0, 0});
	op.l.max_rank = 16;
	kt_decode(&op, (const int32_t[]){0, 1, 1, 0, -1, 0});
	kt_fill(&op);
	kt_expect_y_untouched(&op);
	kt_free(&op);
}

Test(kernels_cpu, columns_outside_every_slice_keep_their_sentinel)
{
	kt_seed_init();
	struct kt_op op;
	/* Columns 0..4, 50..59 and 90..120 belong to no slice; kt_check
	 * compares them bit for bit with their sentinel, on both paths. */
	kt_new(&op, LSK_F16, LSK_F16, 64, 121, 20, 2);
	kt_slice(&op, 5, 45, (const int32_t[]){8, 16});
	kt_slice(&op, 60, 30, (const int32_t[]){4, 3});
	kt_decode_random(&op);
	kt_fill(&op);
	KT_ASSERT(kt_check(&op, KT_CPU_VS_REF, 2) > 0, "nothing compared");
	kt_free(&op);
}

/* ---- (c) validation ---- */

/* A valid operation: 2 adapters, 2 slices, 3 tokens per token or as segments. */
static void kt_valid(struct kt_op *op, bool segments)
{
	kt_new(op, LSK_F32, LSK_F16, 16, 40, 3, 2);
	kt_slice(op, 0, 16, (const int32_t[]){4, 0});
	kt_slice(op, 20, 16, (const int32_t[]){4, 2});
	if (segments)
		kt_segments(op, (const lsk_segment[]){{0, 2, 1}, {2, 1, 0}}, 2);
	else
		kt_decode(op, (const int32_t[]){1, 0, -1});
	kt_fill(op);
}

enum kt_where {
	KT_EVERYWHERE,   /* lsk_check, lsk_ref_apply and lsk_cpu_apply report it */
	KT_APPLY,        /* both apply calls (x or y), not lsk_check */
	KT_CPU_ONLY,     /* the workspace: lsk_cpu_apply only */
};

/* The call fails with want and leaves y as it was.  ws NULL with wsz 0: a
 * workspace of the right size. */
static void kt_expect_rejected(struct kt_op *op, int want, enum kt_where where, bool null_x,
			       bool null_y, void *ws, size_t wsz, const char *what)
{
	if (where == KT_EVERYWHERE) {
		int rc = lsk_check(&op->l, &op->b);
		cr_assert_eq(rc, want, "%s: lsk_check %d, want %d", what, rc, want);
	}
	void *y = kt_alloc(op->y_bytes);
	memcpy(y, op->y0, op->y_bytes);
	const void *x = null_x ? NULL : op->x;
	void *yy = null_y ? NULL : y;
	if (where != KT_CPU_ONLY) {
		int rc = lsk_ref_apply(&op->l, &op->b, x, yy);
		cr_assert_eq(rc, want, "%s: lsk_ref_apply %d, want %d", what, rc, want);
	}
	/* The valid operation's workspace, more than large enough; the size is
	 * not asked of the broken one, which has none. */
	void *own = NULL;
	if (!ws && wsz == 0) {
		wsz = 1 << 16;
		own = aligned_alloc(64, wsz);
		cr_assert(own, "out of memory");
		ws = own;
	}
	int rc = lsk_cpu_apply(&op->l, &op->b, x, yy, ws, wsz, 1);
	cr_assert_eq(rc, want, "%s: lsk_cpu_apply %d, want %d", what, rc, want);
	cr_assert(memcmp(y, op->y0, op->y_bytes) == 0, "%s: y changed", what);
	free(own);
	free(y);
}

/* One test per rejected input: build a valid operation, break one thing. */
#define KT_REJECTS(name, segs, want, where, ...)                                  \
	Test(kernels_validate, name)                                               \
	{                                                                          \
		kt_seed_init();                                                    \
		struct kt_op op_, *op = &op_;                                      \
		kt_valid(op, segs);                                                \
		bool null_x = false, null_y = false;                               \
		void *ws = NULL;                                                   \
		size_t wsz = 0;                                                    \
		__VA_ARGS__;                                                       \
		kt_expect_rejected(op, want, where, null_x, null_y, ws, wsz, #name); \
		kt_free(op);                                                       \
	}

/* The mutations may not use every variable the macro declares. */
#define KT_UNUSED (void)null_x, (void)null_y, (void)ws, (void)wsz

Test(kernels_validate, null_operation_or_batch_is_einval)
{
	struct kt_op op;
	kt_seed_init();
	kt_valid(&op, false);
	cr_assert_eq(lsk_check(NULL, &op.b), -EINVAL);
	cr_assert_eq(lsk_check(&op.l, NULL), -EINVAL);
	cr_assert_eq(lsk_ref_apply(NULL, &op.b, op.x, op.y0), -EINVAL);
	cr_assert_eq(lsk_ref_apply(&op.l, NULL, op.x, op.y0), -EINVAL);
	cr_assert_eq(lsk_cpu_apply(NULL, &op.b, op.x, op.y0, NULL, 0, 1), -EINVAL);
	cr_assert_eq(lsk_cpu_apply(&op.l, NULL, op.x, op.y0, NULL, 0, 1), -EINVAL);
	kt_free(&op);
}

KT_REJECTS(null_x_is_einval, false, -EINVAL, KT_APPLY, KT_UNUSED; null_x = true)
KT_REJECTS(null_y_is_einval, false, -EINVAL, KT_APPLY, KT_UNUSED; null_y = true)
KT_REJECTS(null_scale_is_einval, false, -EINVAL, KT_EVERYWHERE, KT_UNUSED; op->l.scale = NULL)
KT_REJECTS(null_rank_array_is_einval, false, -EINVAL, KT_EVERYWHERE,
	   KT_UNUSED; op->l.slices[1].rank = NULL)
KT_REJECTS(null_a_array_is_einval, false, -EINVAL, KT_EVERYWHERE,
	   KT_UNUSED; op->l.slices[0].a = NULL)
KT_REJECTS(null_a_of_an_adapter_with_rank_is_einval, false, -EINVAL, KT_EVERYWHERE,
	   KT_UNUSED; op->ap[1][1] = NULL)
KT_REJECTS(null_b_of_an_adapter_with_rank_is_einval, false, -EINVAL, KT_EVERYWHERE,
	   KT_UNUSED; op->bp[0][0] = NULL)
KT_REJECTS(no_index_array_with_tokens_is_einval, false, -EINVAL, KT_EVERYWHERE,
	   KT_UNUSED; op->b.token_adapter = NULL)
KT_REJECTS(segment_count_without_segments_is_einval, true, -EINVAL, KT_EVERYWHERE,
	   KT_UNUSED; op->b.segments = NULL)
KT_REJECTS(null_workspace_is_einval, false, -EINVAL, KT_CPU_ONLY, KT_UNUSED; wsz = 1 << 20)
KT_REJECTS(misaligned_workspace_is_einval, false, -EINVAL, KT_CPU_ONLY,
	   KT_UNUSED; static _Alignas(64) char buf[1 << 16]; ws = buf + 8; wsz = sizeof(buf) - 8)
KT_REJECTS(workspace_one_byte_short_is_shape, false, LS_E_SHAPE, KT_CPU_ONLY,
	   KT_UNUSED; static _Alignas(64) char buf[1 << 16];
	   ws = buf; wsz = lsk_workspace_size(&op->l, op->b.n_tokens) - 1)

KT_REJECTS(unknown_act_dtype_is_dtype, false, LS_E_DTYPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.act_dtype = (lsk_dtype)4)
KT_REJECTS(unset_act_dtype_is_dtype, false, LS_E_DTYPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.act_dtype = (lsk_dtype)0)
KT_REJECTS(unknown_weight_dtype_is_dtype, false, LS_E_DTYPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.weight_dtype = (lsk_dtype)-1)

KT_REJECTS(no_slices_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE, KT_UNUSED; op->l.n_slices = 0)
KT_REJECTS(too_many_slices_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.n_slices = LSK_MAX_SLICES + 1)
KT_REJECTS(zero_in_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE, KT_UNUSED; op->l.in = 0)
KT_REJECTS(ldx_below_in_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.ldx = op->l.in - 1)
KT_REJECTS(zero_max_rank_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.max_rank = 0)
KT_REJECTS(max_rank_over_the_limit_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.max_rank = LSK_MAX_RANK + 1)
KT_REJECTS(negative_adapter_count_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.n_adapters = -1)
KT_REJECTS(zero_out_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.slices[0].out = 0)
KT_REJECTS(negative_out_offset_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.slices[0].out_offset = -1)
KT_REJECTS(slice_past_the_row_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.slices[1].out_offset = 25)
KT_REJECTS(overlapping_slices_are_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.slices[1].out_offset = 15)
KT_REJECTS(rank_over_max_rank_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->l.max_rank = 3)
KT_REJECTS(negative_rank_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->rank[0][1] = -1)
KT_REJECTS(weights_for_rank_zero_are_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->ap[0][1] = op->ap[0][0])
KT_REJECTS(negative_token_count_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->b.n_tokens = -1)
KT_REJECTS(adapter_index_past_the_end_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->tok[2] = 2)
KT_REJECTS(adapter_index_below_minus_one_is_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->tok[0] = -2)
KT_REJECTS(both_index_array_and_segments_are_shape, false, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->b.segments = op->seg; op->b.n_segments = 0)
KT_REJECTS(overlapping_segments_are_shape, true, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->seg[1].start = 1)
KT_REJECTS(overlapping_unsorted_segments_are_shape, true, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->seg[0] = (lsk_segment){1, 2, 1}; op->seg[1] = (lsk_segment){0, 2, 0})
KT_REJECTS(segment_past_the_batch_is_shape, true, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->seg[1].len = 2)
KT_REJECTS(negative_segment_start_is_shape, true, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->seg[0].start = -1)
KT_REJECTS(negative_segment_length_is_shape, true, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->seg[1].len = -1)
KT_REJECTS(segment_adapter_out_of_range_is_shape, true, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->seg[0].adapter = 2)
KT_REJECTS(negative_segment_count_is_shape, true, LS_E_SHAPE, KT_EVERYWHERE,
	   KT_UNUSED; op->b.n_segments = -1)

Test(kernels_validate, valid_operations_pass_the_check)
{
	/* The base of every rejection test is itself valid: each test above
	 * fails for the one thing it breaks. */
	kt_seed_init();
	for (int segs = 0; segs < 2; segs++) {
		struct kt_op op;
		kt_valid(&op, segs);
		cr_assert_eq(lsk_check(&op.l, &op.b), 0);
		KT_ASSERT(kt_check(&op, KT_CPU_VS_REF, 1) > 0, "nothing compared");
		kt_free(&op);
	}
}

/* ---- workspace and dtype facts ---- */

Test(kernels_cpu, workspace_holds_the_cuda_layout)
{
	/* The CUDA path puts [n_tokens][n_slices][max_rank] floats at a
	 * 256-byte boundary of the same workspace. */
	lsk_lora l = {.n_slices = 3, .max_rank = 16};
	int64_t checked = 0;
	for (int64_t t = 0; t <= 300; t += 37) {
		for (int32_t r = 1; r <= LSK_MAX_RANK; r = r * 3 + 1) {
			l.max_rank = r;
			size_t need = ((size_t)(t * 3 * r) * 4 + 255) / 256 * 256 + 256;
			cr_assert_geq(lsk_workspace_size(&l, t), need, "t %" PRId64 " r %d", t, r);
			checked++;
		}
	}
	cr_assert_gt(checked, 0);
	cr_assert_eq(lsk_workspace_size(NULL, 1), SIZE_MAX);
	cr_assert_eq(lsk_workspace_size(&l, -1), SIZE_MAX);
	cr_assert_eq(lsk_workspace_size(&l, INT64_MAX), SIZE_MAX);
}

Test(kernels_cpu, dtype_sizes_and_names)
{
	cr_assert_eq(lsk_dtype_size(LSK_F32), 4);
	cr_assert_eq(lsk_dtype_size(LSK_F16), 2);
	cr_assert_eq(lsk_dtype_size(LSK_BF16), 2);
	cr_assert_eq(lsk_dtype_size((lsk_dtype)7), 0);
	cr_assert_str_eq(lsk_dtype_name(LSK_F32), "F32");
	cr_assert_str_eq(lsk_dtype_name(LSK_F16), "F16");
	cr_assert_str_eq(lsk_dtype_name(LSK_BF16), "BF16");
	cr_assert_str_eq(lsk_dtype_name((lsk_dtype)7), "unknown");
}
