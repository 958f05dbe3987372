/*
 * The CUDA path of lsk (kernels/cuda) against the CPU reference
 * (lsk_ref_apply), on fresh random data at every run.
 *
 * Every test that needs a GPU first asks lsk_cuda_available(); without a
 * device it skips with the reason, unless LSK_REQUIRE_GPU=1 (set by
 * scripts/gpu-check), which makes the skip a failure.  The checks of the
 * call's arguments run on the host before any CUDA call, so their tests run
 * everywhere.
 *
 * What a run compares: y is filled before each run with a random base where
 * the reference adds something and with NaNs (a different payload per
 * element) everywhere else, x's padding columns and the workspace with NaNs
 * too.  An element written that should not be, or read where nothing was
 * written, shows as a changed NaN pattern or a NaN in a result.  Every case
 * counts what it compared and fails when it compared nothing.
 *
 * The seed is printed with any failure; LSK_TEST_SEED=<seed> repeats a run.
 */
#include <criterion/criterion.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda/lsk_cuda.h"
#include "ls_error.h"
#include "lsk.h"
#include "lsk_internal.h"

/*
 * Tolerances, |cuda - reference| <= REL * M + ulp, where M is the sum of the
 * magnitudes of every term of the element: |y0| + |scale| * sum_r
 * (sum_k |x_k A_rk|) |B_or|.
 *
 * REL_KERNELS: both paths accumulate in F32, in different orders (the
 * reference adds k and r in ascending order with separate roundings; the
 * shrink kernel splits k over 256 threads and adds the partial sums as a
 * tree, and fuses multiply and add).  The difference is a sum of F32
 * roundings of partial sums, about sqrt(in) * 2^-24 of M with random signs
 * (below 2e-6 for in <= 1000, 4e-6 for in = 4096); 1e-5 is that with margin,
 * and still far below any real error (a missing or doubled term is of the
 * order of M / rank).
 *
 * REL_CUBLAS_16: cuBLAS on F16 and BF16 inputs uses tensor cores, which add
 * the products of one MMA step with their own internal alignment before the
 * F32 accumulator rounds; its error stays of the order of F32 rounding but
 * is not IEEE-ordered, so it gets ten times the margin.  (F32 inputs use the
 * pedantic compute type: plain F32, REL_KERNELS.)
 *
 * ulp: for F16 and BF16 outputs, one unit in the last place of the output
 * dtype at the larger of the two results: each side rounds its F32 sum once
 * (half an ulp each), so two F32 sums that differ by d round to values at
 * most one ulp + d apart.  For F32 outputs the REL term covers the last
 * rounding; FLT_MIN keeps an all-zero element from needing bit equality
 * of signs of zero.
 */
#define REL_KERNELS 1e-5
#define REL_CUBLAS_16 1e-4

/* Adapters a test case may have. */
#define T_MAX_ADAPTERS 16

/* ------------------------------------------------------------------ */
/* Device presence                                                    */

static void need_device(void)
{
	int rc = lsk_cuda_available();
	if (rc == 0)
		return;
	char why[256] = "";
	lsk_cuda_available_impl(why, sizeof(why));
	const char *req = getenv("LSK_REQUIRE_GPU");
	if (req && strcmp(req, "1") == 0)
		cr_assert_fail("LSK_REQUIRE_GPU=1 but no CUDA device: %s (%s)", ls_strerror(rc), why);
	/* Criterion shows skips only with --verbose: say it in every run. */
	fprintf(stderr, "test_kernels_cuda: skipping %s::%s: no CUDA device: %s (%s)\n",
	        criterion_current_test->category, criterion_current_test->name, ls_strerror(rc), why);
	cr_skip_test("no CUDA device: %s (%s)", ls_strerror(rc), why);
}

#define CK(call)                                                                     \
	do {                                                                         \
		cudaError_t e_ = (call);                                             \
		cr_assert_eq(e_, cudaSuccess, "%s: %s (%s)", #call, cudaGetErrorString(e_), \
		             cudaGetErrorName(e_));                                  \
	} while (0)

/* ------------------------------------------------------------------ */
/* Random data                                                        */

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_unit(uint64_t *s)
{
	return (float)((double)(rng_next(s) >> 40) * 0x1p-23 - 1.0);
}

static uint64_t test_seed(void)
{
	const char *e = getenv("LSK_TEST_SEED");
	if (e && *e)
		return strtoull(e, NULL, 0);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 24) ^ ((uint64_t)getpid() << 44);
	return rng_next(&s);
}

/* A NaN of dtype dt with a payload that depends on i, as element i of p. */
static void put_nan(lsk_dtype dt, void *p, int64_t i)
{
	uint32_t h = (uint32_t)((uint64_t)i * 2654435761u);
	if (dt == LSK_F32) {
		uint32_t u = 0x7fc00000u | (h & 0x3fffffu);
		memcpy((char *)p + 4 * i, &u, 4);
	} else if (dt == LSK_F16) {
		uint16_t u = (uint16_t)(0x7e00u | (h & 0x1ffu));
		memcpy((char *)p + 2 * i, &u, 2);
	} else {
		uint16_t u = (uint16_t)(0x7fc0u | (h & 0x3fu));
		memcpy((char *)p + 2 * i, &u, 2);
	}
}

/* One unit in the last place of dtype dt at magnitude m (0 for F32). */
static double out_ulp(lsk_dtype dt, double m)
{
	if (dt == LSK_F32)
		return 0.0;
	int mant = dt == LSK_F16 ? 10 : 7;
	int emin = dt == LSK_F16 ? -14 : -126;
	int e = m > 0 ? ilogb(m) : emin;
	if (e < emin)
		e = emin;
	return ldexp(1.0, e - mant);
}

/* ------------------------------------------------------------------ */
/* One case: build, run both paths, compare                           */

struct tcase {
	lsk_dtype act, wt;
	int64_t in;
	int64_t ldx;                   /* 0: in */
	int32_t n_slices;              /* 0: 1 */
	int64_t out[LSK_MAX_SLICES];
	int64_t gap;                   /* unused columns before each slice and after the last */
	int32_t n_adapters;
	int32_t rank[T_MAX_ADAPTERS][LSK_MAX_SLICES];
	int32_t max_rank_extra;        /* max_rank above the largest rank */
	int64_t n_tokens;
	const int32_t *tok;            /* decode: the reference's adapter per token */
	const int32_t *dev_tok;        /* decode: what the device reads, when it differs */
	bool host_tok;                 /* the host mirror gets the indices too */
	int32_t n_segments;
	const lsk_segment *seg;        /* segments instead of tok */
	bool handle;                   /* pass a cuBLAS handle */
	int32_t min_tokens;            /* 0: lsk_cuda_apply and its default threshold */
	bool x_misaligned;             /* x one element past an aligned address */
	bool w_misaligned;             /* every A and B one element past one */
	bool device_pointer_mode;      /* the handle is in CUBLAS_POINTER_MODE_DEVICE */
	bool expect_nothing;           /* no element is updated: y must be untouched */
	int32_t expect_bad;            /* > 0: pass a counter; it must reach this (-1: 0) */
	bool caller_error;             /* the caller's error is pending: keep it, read nothing */
};

struct tresult {
	int64_t n_close;  /* elements compared with the tolerance */
	int64_t n_same;   /* elements that must be bitwise unchanged */
};

/* Device allocations of one case, freed at its end. */
struct dev_mem {
	void *p[4 * T_MAX_ADAPTERS * LSK_MAX_SLICES + 64];
	int n;
};

static void *dev_alloc(struct dev_mem *m, size_t bytes)
{
	void *p = NULL;
	CK(cudaMalloc(&p, bytes ? bytes : 1));
	cr_assert_lt(m->n, (int)(sizeof(m->p) / sizeof(m->p[0])));
	m->p[m->n++] = p;
	return p;
}

static void *dev_copy(struct dev_mem *m, const void *src, size_t bytes)
{
	void *p = dev_alloc(m, bytes);
	if (bytes)
		CK(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
	return p;
}

/* A copy that starts `offset` bytes into its allocation. */
static void *dev_copy_at(struct dev_mem *m, const void *src, size_t bytes, size_t offset)
{
	char *p = dev_alloc(m, bytes + offset);
	if (bytes)
		CK(cudaMemcpy(p + offset, src, bytes, cudaMemcpyHostToDevice));
	return p + offset;
}

static void dev_free_all(struct dev_mem *m)
{
	for (int i = 0; i < m->n; i++)
		cudaFree(m->p[i]);
	m->n = 0;
}

/* The adapter of token t in the reference's batch, -1 for none. */
static int32_t ref_adapter(const struct tcase *c, int64_t t)
{
	if (c->tok)
		return c->tok[t];
	for (int32_t i = 0; i < c->n_segments; i++)
		if (t >= c->seg[i].start && t < (int64_t)c->seg[i].start + c->seg[i].len)
			return c->seg[i].adapter;
	return -1;
}

/* Whether this case can send a segment to cuBLAS (for the tolerance). */
static bool may_use_cublas(const struct tcase *c)
{
	if (!c->seg || !c->handle || c->act != c->wt)
		return false;
	int32_t min = c->min_tokens ? c->min_tokens : LSK_CUDA_CUBLAS_MIN_TOKENS;
	for (int32_t i = 0; i < c->n_segments; i++)
		if (c->seg[i].adapter >= 0 && c->seg[i].len >= min)
			return true;
	return false;
}

static struct tresult run_case(const struct tcase *c, uint64_t seed, const char *what)
{
	struct tresult res = {0, 0};
	struct dev_mem mem = {.n = 0};
	uint64_t rng = seed;
	const int32_t n_slices = c->n_slices ? c->n_slices : 1;
	const int32_t na = c->n_adapters;
	const size_t asz = lsk_dtype_size(c->act);
	const size_t wsz = lsk_dtype_size(c->wt);
	const int64_t ldx = c->ldx ? c->ldx : c->in;
	const int64_t T = c->n_tokens;

	/* The operation: reference (host weights), host mirror (host arrays
	 * of device addresses), device (device arrays). */
	lsk_lora ref, mir, dev;
	memset(&ref, 0, sizeof(ref));
	ref.act_dtype = c->act;
	ref.weight_dtype = c->wt;
	ref.in = c->in;
	ref.ldx = ldx;
	ref.n_adapters = na;
	ref.n_slices = n_slices;
	int32_t max_rank = 1;
	for (int32_t a = 0; a < na; a++)
		for (int32_t s = 0; s < n_slices; s++)
			if (c->rank[a][s] > max_rank)
				max_rank = c->rank[a][s];
	ref.max_rank = max_rank + c->max_rank_extra;
	int64_t col = 0;
	for (int32_t s = 0; s < n_slices; s++) {
		col += c->gap;
		ref.slices[s].out_offset = col;
		ref.slices[s].out = c->out[s];
		col += c->out[s];
	}
	ref.ldy = col + c->gap;
	const int64_t ldy = ref.ldy;
	mir = ref;
	dev = ref;

	static float scale[T_MAX_ADAPTERS];
	static int32_t rank[LSK_MAX_SLICES][T_MAX_ADAPTERS];
	static const void *ha[LSK_MAX_SLICES][T_MAX_ADAPTERS], *hb[LSK_MAX_SLICES][T_MAX_ADAPTERS];
	static const void *da[LSK_MAX_SLICES][T_MAX_ADAPTERS], *db[LSK_MAX_SLICES][T_MAX_ADAPTERS];
	memset(ha, 0, sizeof(ha));
	memset(hb, 0, sizeof(hb));
	memset(da, 0, sizeof(da));
	memset(db, 0, sizeof(db));
	for (int32_t a = 0; a < na; a++) {
		scale[a] = (0.25f + 0.875f * (rng_unit(&rng) + 1.0f)) * (rng_next(&rng) & 1 ? 1.0f : -1.0f);
		for (int32_t s = 0; s < n_slices; s++) {
			const int32_t r = c->rank[a][s];
			rank[s][a] = r;
			if (r == 0)
				continue;
			const int64_t na_el = (int64_t)r * c->in, nb_el = c->out[s] * r;
			void *A = malloc((size_t)na_el * wsz), *B = malloc((size_t)nb_el * wsz);
			cr_assert(A && B);
			const float sa = 1.0f / sqrtf((float)c->in), sb = 1.0f / sqrtf((float)r);
			for (int64_t i = 0; i < na_el; i++)
				lsk_store(c->wt, A, i, sa * rng_unit(&rng));
			for (int64_t i = 0; i < nb_el; i++)
				lsk_store(c->wt, B, i, sb * rng_unit(&rng));
			ha[s][a] = A;
			hb[s][a] = B;
			const size_t woff = c->w_misaligned ? wsz : 0;
			da[s][a] = dev_copy_at(&mem, A, (size_t)na_el * wsz, woff);
			db[s][a] = dev_copy_at(&mem, B, (size_t)nb_el * wsz, woff);
		}
	}
	ref.scale = mir.scale = scale;
	dev.scale = na ? dev_copy(&mem, scale, sizeof(float) * (size_t)na) : NULL;
	for (int32_t s = 0; s < n_slices; s++) {
		ref.slices[s].rank = mir.slices[s].rank = rank[s];
		ref.slices[s].a = ha[s];
		ref.slices[s].b = hb[s];
		mir.slices[s].a = da[s];
		mir.slices[s].b = db[s];
		if (na) {
			dev.slices[s].rank = dev_copy(&mem, rank[s], sizeof(int32_t) * (size_t)na);
			dev.slices[s].a = dev_copy(&mem, da[s], sizeof(void *) * (size_t)na);
			dev.slices[s].b = dev_copy(&mem, db[s], sizeof(void *) * (size_t)na);
		} else {
			dev.slices[s].rank = NULL;
			dev.slices[s].a = dev.slices[s].b = NULL;
		}
	}

	/* x: random in [0, in), NaN in the padding columns. */
	const int64_t x_el = T * ldx + (c->x_misaligned ? 1 : 0);
	void *x = malloc((size_t)(x_el ? x_el : 1) * asz);
	cr_assert(x);
	const int64_t x0 = c->x_misaligned ? 1 : 0;
	if (x0)
		put_nan(c->act, x, 0);
	for (int64_t t = 0; t < T; t++)
		for (int64_t k = 0; k < ldx; k++) {
			if (k < c->in)
				lsk_store(c->act, x, x0 + t * ldx + k, rng_unit(&rng));
			else
				put_nan(c->act, x, x0 + t * ldx + k);
		}

	/* y: a random base where the reference adds, NaNs elsewhere. */
	const int64_t y_el = T * ldy;
	void *y = malloc((size_t)(y_el ? y_el : 1) * asz);
	void *y_ref = malloc((size_t)(y_el ? y_el : 1) * asz);
	void *y_got = malloc((size_t)(y_el ? y_el : 1) * asz);
	double *mag = calloc((size_t)(y_el ? y_el : 1), sizeof(double));
	bool *used = calloc((size_t)(y_el ? y_el : 1), sizeof(bool));
	cr_assert(y && y_ref && y_got && mag && used);
	for (int64_t t = 0; t < T; t++) {
		const int32_t a = ref_adapter(c, t);
		for (int32_t s = 0; s < n_slices && a >= 0; s++)
			if (rank[s][a] > 0)
				for (int64_t o = 0; o < c->out[s]; o++)
					used[t * ldy + ref.slices[s].out_offset + o] = true;
	}
	for (int64_t i = 0; i < y_el; i++) {
		if (used[i])
			lsk_store(c->act, y, i, rng_unit(&rng));
		else
			put_nan(c->act, y, i);
	}
	memcpy(y_ref, y, (size_t)y_el * asz);

	/* M per updated element (see the tolerances above). */
	for (int64_t t = 0; t < T; t++) {
		const int32_t a = ref_adapter(c, t);
		if (a < 0)
			continue;
		for (int32_t s = 0; s < n_slices; s++) {
			const int32_t r = rank[s][a];
			double w[LSK_MAX_RANK];
			for (int32_t i = 0; i < r; i++) {
				double sum = 0;
				for (int64_t k = 0; k < c->in; k++)
					sum += fabs((double)lsk_load(c->act, x, x0 + t * ldx + k) *
					            (double)lsk_load(c->wt, ha[s][a], (int64_t)i * c->in + k));
				w[i] = sum;
			}
			for (int64_t o = 0; o < c->out[s] && r > 0; o++) {
				double sum = 0;
				for (int32_t i = 0; i < r; i++)
					sum += w[i] * fabs((double)lsk_load(c->wt, hb[s][a], o * r + i));
				const int64_t e = t * ldy + ref.slices[s].out_offset + o;
				mag[e] = fabs((double)lsk_load(c->act, y, e)) + fabs((double)scale[a]) * sum;
			}
		}
	}

	/* The reference. */
	lsk_batch rb = {.n_tokens = T};
	if (c->seg) {
		rb.n_segments = c->n_segments;
		rb.segments = c->seg;
	} else {
		rb.token_adapter = c->tok;
	}
	int rc = lsk_ref_apply(&ref, &rb, (const char *)x + x0 * asz, y_ref);
	cr_assert_eq(rc, 0, "%s: lsk_ref_apply: %s (seed %llu)", what, ls_strerror(rc),
	             (unsigned long long)seed);

	/* The CUDA path. */
	lsk_batch dbatch = {.n_tokens = T}, hbatch = {.n_tokens = T};
	if (c->seg) {
		dbatch.n_segments = hbatch.n_segments = c->n_segments;
		dbatch.segments = dev_copy(&mem, c->seg, sizeof(lsk_segment) * (size_t)c->n_segments);
		hbatch.segments = c->seg;
	} else if (c->tok) {
		const int32_t *dt = c->dev_tok ? c->dev_tok : c->tok;
		dbatch.token_adapter = dev_copy(&mem, dt, sizeof(int32_t) * (size_t)(T ? T : 1));
		hbatch.token_adapter = c->host_tok ? c->tok : NULL;
	}
	uint32_t *bad_d = NULL;
	if (c->expect_bad) {
		bad_d = dev_alloc(&mem, sizeof(*bad_d));
		CK(cudaMemset(bad_d, 0, sizeof(*bad_d)));
		dbatch.bad_index_count = bad_d;
	}
	char *x_d = dev_copy(&mem, x, (size_t)(x_el ? x_el : 1) * asz);
	void *y_d = dev_copy(&mem, y, (size_t)(y_el ? y_el : 1) * asz);
	size_t ws_size = lsk_workspace_size(&mir, T);
	cr_assert_neq(ws_size, SIZE_MAX);
	void *ws = dev_alloc(&mem, ws_size);
	/* All-ones bytes: every float of the workspace is a NaN until written. */
	CK(cudaMemset(ws, 0xff, ws_size));

	cudaStream_t stream;
	CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
	cublasHandle_t h = NULL;
	if (c->handle) {
		cublasStatus_t st = cublasCreate(&h);
		cr_assert_eq(st, CUBLAS_STATUS_SUCCESS, "cublasCreate: %s", cublasGetStatusString(st));
		if (c->device_pointer_mode)
			cr_assert_eq(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE), CUBLAS_STATUS_SUCCESS);
	}
	CK(cudaDeviceSynchronize());

	if (c->min_tokens)
		rc = lsk_cuda_apply_ex(&dev, &mir, &dbatch, &hbatch, x_d + x0 * asz, y_d, ws, ws_size,
		                       stream, h, c->min_tokens);
	else
		rc = lsk_cuda_apply(&dev, &mir, &dbatch, &hbatch, x_d + x0 * asz, y_d, ws, ws_size,
		                    stream, h);
	cr_assert_eq(rc, 0, "%s: lsk_cuda_apply: %s (seed %llu)", what, ls_strerror(rc),
	             (unsigned long long)seed);
	CK(cudaStreamSynchronize(stream));
	if (!c->caller_error)
		CK(cudaGetLastError());
	CK(cudaMemcpy(y_got, y_d, (size_t)y_el * asz, cudaMemcpyDeviceToHost));
	if (bad_d) {
		uint32_t bad = 0;
		CK(cudaMemcpy(&bad, bad_d, sizeof(bad), cudaMemcpyDeviceToHost));
		cr_assert_eq(bad, (uint32_t)(c->expect_bad < 0 ? 0 : c->expect_bad),
		             "%s: the device counted %u indices out of range", what, bad);
	}
	if (h) {
		/* The handle was made on the default stream; the call ran on another. */
		cudaStream_t hs = stream;
		cr_assert_eq(cublasGetStream(h, &hs), CUBLAS_STATUS_SUCCESS);
		cr_assert_null(hs, "%s: the handle's stream was not put back", what);
	}
	if (h && c->device_pointer_mode) {
		cublasPointerMode_t pm;
		cr_assert_eq(cublasGetPointerMode(h, &pm), CUBLAS_STATUS_SUCCESS);
		cr_assert_eq(pm, CUBLAS_POINTER_MODE_DEVICE,
		             "%s: the handle's pointer mode was not restored", what);
	}

	/* Compare. */
	const double rel = may_use_cublas(c) && c->act != LSK_F32 ? REL_CUBLAS_16 : REL_KERNELS;
	for (int64_t t = 0; t < T; t++) {
		for (int64_t j = 0; j < ldy; j++) {
			const int64_t e = t * ldy + j;
			if (!used[e]) {
				cr_assert(memcmp((char *)y_got + e * asz, (char *)y_ref + e * asz, asz) == 0,
				          "%s: y[%lld][%lld] was written (token without adapter or column "
				          "outside its slices) (seed %llu)",
				          what, (long long)t, (long long)j, (unsigned long long)seed);
				res.n_same++;
				continue;
			}
			const double g = lsk_load(c->act, y_got, e), r = lsk_load(c->act, y_ref, e);
			const double tol = rel * mag[e] + out_ulp(c->act, fmax(fabs(g), fabs(r))) + FLT_MIN;
			cr_assert(isfinite(g) && fabs(g - r) <= tol,
			          "%s: %s x %s: y[%lld][%lld] = %.9g, reference %.9g, |diff| %.3g > tolerance "
			          "%.3g (sum of |terms| %.3g) (seed %llu)",
			          what, lsk_dtype_name(c->act), lsk_dtype_name(c->wt), (long long)t,
			          (long long)j, g, r, fabs(g - r), tol, mag[e], (unsigned long long)seed);
			res.n_close++;
		}
	}
	if (c->expect_nothing)
		cr_assert_eq(res.n_close, 0, "%s: elements were expected untouched", what);
	else
		cr_assert_gt(res.n_close, 0, "%s: compared nothing (seed %llu)", what,
		             (unsigned long long)seed);

	if (h)
		cublasDestroy(h);
	cudaStreamDestroy(stream);
	dev_free_all(&mem);
	for (int32_t a = 0; a < na; a++)
		for (int32_t s = 0; s < n_slices; s++) {
			free((void *)ha[s][a]);
			free((void *)hb[s][a]);
		}
	free(x);
	free(y);
	free(y_ref);
	free(y_got);
	free(mag);
	free(used);
	return res;
}

/* Runs a case once per pair of dtypes in acts x wts. */
static void run_dtypes(struct tcase c, const char *what)
{
	static const lsk_dtype all[] = {LSK_F32, LSK_F16, LSK_BF16};
	uint64_t seed = test_seed();
	int64_t n = 0;
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 3; j++) {
			c.act = all[i];
			c.wt = all[j];
			char name[160];
			snprintf(name, sizeof(name), "%s [%s x %s]", what, lsk_dtype_name(c.act),
			         lsk_dtype_name(c.wt));
			n += run_case(&c, seed + (uint64_t)(3 * i + j), name).n_close;
		}
	cr_assert_gt(n, 0);
}

static void run_one(struct tcase c, const char *what)
{
	run_case(&c, test_seed(), what);
}

/* Token indices cycling through -1 and the adapters: token t gets
 * (t % (n + 1)) - 1. */
static int32_t *cycle_indices(int64_t n_tokens, int32_t n_adapters)
{
	int32_t *tok = malloc(sizeof(int32_t) * (size_t)(n_tokens ? n_tokens : 1));
	cr_assert(tok);
	for (int64_t t = 0; t < n_tokens; t++)
		tok[t] = (int32_t)(t % (n_adapters + 1)) - 1;
	return tok;
}

/* ------------------------------------------------------------------ */
/* Decode (one adapter index per token)                               */

/* The ranks of the CPU tests, all in one batch, each adapter its own. */
static const int32_t every_rank[] = {1, 2, 7, 8, 16, 64, 127, 128};

static struct tcase every_rank_case(int64_t in, int64_t out, int64_t n_tokens, int32_t **tok)
{
	struct tcase c = {.in = in, .out = {out}, .n_adapters = 8, .n_tokens = n_tokens};
	for (int a = 0; a < 8; a++)
		c.rank[a][0] = every_rank[a];
	*tok = cycle_indices(n_tokens, 8);
	c.tok = *tok;
	return c;
}

Test(decode, every_rank_in_one_batch_unaligned_width)
{
	need_device();
	int32_t *tok;
	struct tcase c = every_rank_case(67, 131, 27, &tok);
	run_dtypes(c, "ranks 1..128, in 67 (scalar loads)");
	free(tok);
}

Test(decode, every_rank_in_one_batch_vector_width)
{
	need_device();
	int32_t *tok;
	struct tcase c = every_rank_case(1000, 67, 27, &tok);
	run_dtypes(c, "ranks 1..128, in 1000 (vector loads)");
	free(tok);
}

Test(decode, width_13_and_rank_tiles_past_the_rank)
{
	need_device();
	int32_t *tok;
	struct tcase c = every_rank_case(13, 13, 18, &tok);
	c.max_rank_extra = 21; /* max_rank above every rank: rank tiles with nothing to do */
	run_dtypes(c, "in 13, out 13, max_rank 149");
	free(tok);
}

Test(decode, single_token)
{
	need_device();
	static const int32_t tok[1] = {0};
	struct tcase c = {.in = 1000, .out = {1000}, .n_adapters = 1, .rank = {{16}},
	                  .n_tokens = 1, .tok = tok};
	run_dtypes(c, "one token");
}

Test(decode, rank_512_the_largest)
{
	need_device();
	static const int32_t tok[5] = {0, 1, -1, 1, 0};
	struct tcase c = {.in = 64, .out = {40}, .n_adapters = 2, .rank = {{512}, {3}},
	                  .n_tokens = 5, .tok = tok, .act = LSK_BF16, .wt = LSK_BF16};
	run_one(c, "rank 512");
	c.act = c.wt = LSK_F32;
	run_one(c, "rank 512");
}

Test(decode, index_out_of_range_on_the_device_is_skipped)
{
	need_device();
	/* The reference sees -1 where the device reads an index it must skip. */
	static const int32_t tok[6] = {0, -1, 1, -1, -1, 0};
	static const int32_t dev_tok[6] = {0, 2, 1, 1000000, -7, 0};
	struct tcase c = {.in = 80, .out = {96}, .n_adapters = 2, .rank = {{8}, {5}},
	                  .n_tokens = 6, .tok = tok, .dev_tok = dev_tok,
	                  .act = LSK_F16, .wt = LSK_F16};
	run_one(c, "device indices out of range");
}

Test(decode, each_index_out_of_range_is_counted_once_and_minus_one_is_not)
{
	need_device();
	static const int32_t tok[6] = {0, -1, 1, -1, -1, 0};
	static const int32_t dev_tok[6] = {0, 2, 1, 1000000, -7, 0};
	/* Three slices and wide outputs: many blocks see each token; one counts. */
	struct tcase c = {.in = 64, .n_slices = 3, .out = {300, 64, 520}, .n_adapters = 2,
	                  .rank = {{8, 4, 16}, {5, 5, 5}}, .n_tokens = 6, .tok = tok,
	                  .dev_tok = dev_tok, .act = LSK_BF16, .wt = LSK_BF16, .expect_bad = 3};
	run_one(c, "three indices out of range");
	c.dev_tok = NULL;
	c.expect_bad = -1;
	run_one(c, "none out of range");
}

Test(segments, a_counter_stays_zero_for_valid_segments)
{
	need_device();
	static const lsk_segment seg[3] = {{0, 40, 1}, {40, 30, -1}, {70, 50, 0}};
	struct tcase c = {.in = 96, .out = {128}, .n_adapters = 2, .rank = {{16}, {7}},
	                  .n_tokens = 120, .n_segments = 3, .seg = seg, .act = LSK_F16,
	                  .wt = LSK_F16, .expect_bad = -1};
	run_one(c, "valid segments");
}

Test(decode, an_error_the_caller_left_pending_is_neither_returned_nor_cleared)
{
	need_device();
	/* A failed allocation leaves a non-sticky error in the last-error state. */
	void *p = NULL;
	cr_assert_neq(cudaMalloc(&p, (size_t)1 << 62), cudaSuccess);
	cr_assert_eq(cudaPeekAtLastError(), cudaErrorMemoryAllocation);
	static const int32_t tok[4] = {1, 0, -1, 1};
	struct tcase c = {.in = 64, .out = {64}, .n_adapters = 2, .rank = {{4}, {8}},
	                  .n_tokens = 4, .tok = tok, .act = LSK_F32, .wt = LSK_F32,
	                  .caller_error = true};
	run_one(c, "with the caller's error pending");
	cr_assert_eq(cudaGetLastError(), cudaErrorMemoryAllocation,
	             "the apply took or cleared the caller's pending error");
}

Test(decode, host_indices_when_given_are_used_for_the_checks)
{
	need_device();
	int32_t *tok = cycle_indices(12, 2);
	struct tcase c = {.in = 40, .out = {24}, .n_adapters = 2, .rank = {{4}, {9}},
	                  .n_tokens = 12, .tok = tok, .host_tok = true,
	                  .act = LSK_F32, .wt = LSK_BF16};
	run_one(c, "host indices given");
	free(tok);
}

Test(decode, no_adapter_anywhere_leaves_y_untouched)
{
	need_device();
	static const int32_t tok[4] = {-1, -1, -1, -1};
	struct tcase c = {.in = 32, .out = {16}, .n_adapters = 1, .rank = {{4}}, .n_tokens = 4,
	                  .tok = tok, .act = LSK_BF16, .wt = LSK_BF16, .expect_nothing = true};
	struct tresult r = run_case(&c, test_seed(), "every index -1");
	cr_assert_gt(r.n_same, 0);
}

Test(decode, misaligned_x_and_padded_rows_use_scalar_loads)
{
	need_device();
	int32_t *tok = cycle_indices(9, 3);
	struct tcase c = {.in = 1024, .ldx = 1027, .out = {72}, .n_adapters = 3,
	                  .rank = {{16}, {8}, {33}}, .n_tokens = 9, .tok = tok,
	                  .x_misaligned = true};
	run_dtypes(c, "x off by one element, ldx 1027");
	free(tok);
}

Test(decode, misaligned_weights_use_scalar_loads)
{
	need_device();
	int32_t *tok = cycle_indices(7, 2);
	/* x and the widths allow vector loads; A and B do not (checked on the
	 * device, per adapter). */
	struct tcase c = {.in = 1024, .out = {40}, .n_adapters = 2, .rank = {{16}, {8}},
	                  .n_tokens = 7, .tok = tok, .w_misaligned = true};
	run_dtypes(c, "A and B off by one element");
	free(tok);
}

Test(decode, in_4096_rank_64_the_benchmark_shape)
{
	need_device();
	int32_t *tok = cycle_indices(6, 2);
	struct tcase c = {.in = 4096, .out = {4096}, .n_adapters = 2, .rank = {{64}, {16}},
	                  .n_tokens = 6, .tok = tok, .act = LSK_BF16, .wt = LSK_BF16};
	run_one(c, "in = out = 4096, BF16");
	c.act = c.wt = LSK_F32;
	run_one(c, "in = out = 4096, F32");
	free(tok);
}

/* ------------------------------------------------------------------ */
/* Fused slices (q, k, v)                                             */

Test(slices, qkv_with_gaps_and_a_missing_module)
{
	need_device();
	int32_t *tok = cycle_indices(14, 3);
	/* Adapter 1 has no k (rank 0 in slice 1): its tokens keep those
	 * columns; the gaps between slices are never written. */
	struct tcase c = {.in = 96, .n_slices = 3, .out = {64, 16, 16}, .gap = 3,
	                  .n_adapters = 3,
	                  .rank = {{8, 8, 8}, {16, 0, 16}, {7, 2, 127}},
	                  .n_tokens = 14, .tok = tok};
	run_dtypes(c, "q/k/v decode");
	free(tok);
}

Test(slices, qkv_segments)
{
	need_device();
	/* Boundaries off the tiles' multiples of 4 and 16: tiles with two and
	 * three adapters. */
	static const lsk_segment seg[] = {{0, 21, 0}, {21, 3, 1}, {24, 41, 2}, {65, 2, -1},
	                                  {67, 5, 1}};
	struct tcase c = {.in = 72, .n_slices = 3, .out = {48, 24, 24}, .gap = 1,
	                  .n_adapters = 3,
	                  .rank = {{8, 8, 8}, {16, 0, 16}, {64, 32, 1}},
	                  .n_tokens = 73, .n_segments = 5, .seg = seg};
	run_dtypes(c, "q/k/v segments");
	/* The same through cuBLAS: its output lands at each slice's place in
	 * the workspace's [token][slice][max_rank] layout. */
	static const lsk_dtype same[] = {LSK_F32, LSK_F16, LSK_BF16};
	c.handle = true;
	c.min_tokens = 1;
	for (int i = 0; i < 3; i++) {
		c.act = c.wt = same[i];
		run_one(c, "q/k/v segments, cuBLAS");
	}
}

/* ------------------------------------------------------------------ */
/* Segments                                                           */

/* Short, unsorted, with gaps, one without adapter: the kernels (a handle
 * is given, but nothing reaches the cuBLAS threshold). */
Test(segments, short_ones_use_the_kernels)
{
	need_device();
	static const lsk_segment seg[] = {{30, 17, 1}, {0, 1, 0}, {2, 3, 2}, {6, 5, -1},
	                                  {12, 2, 0}, {50, 40, 2}};
	struct tcase c = {.in = 200, .out = {67}, .n_adapters = 3, .rank = {{16}, {7}, {64}},
	                  .n_tokens = 95, .n_segments = 6, .seg = seg, .handle = true};
	run_dtypes(c, "short segments");
}

/* Long segments with the same dtype for x and the weights, with a handle:
 * cuBLAS does their shrink, the kernels the short one. */
Test(segments, long_ones_use_cublas_with_a_handle)
{
	need_device();
	/* 61 and 3 tokens: below the threshold; 203 and 130: above.  The
	 * boundaries are off the tiles' multiples, so tiles mix adapters, and
	 * tokens the kernels do with tokens cuBLAS does. */
	static const lsk_segment seg[] = {{0, 61, 0}, {61, 203, 1}, {264, 3, 2}, {267, 130, 0},
	                                  {400, 70, -1}};
	static const lsk_dtype same[] = {LSK_F32, LSK_F16, LSK_BF16};
	struct tcase c = {.in = 256, .out = {131}, .n_adapters = 3, .rank = {{16}, {64}, {127}},
	                  .n_tokens = 470, .n_segments = 5, .seg = seg, .handle = true};
	for (int i = 0; i < 3; i++) {
		c.act = c.wt = same[i];
		run_one(c, "long segments, cuBLAS");
	}
}

Test(segments, long_ones_use_the_tiled_kernels_without_a_handle)
{
	need_device();
	/* 61 and 3 tokens: below the threshold; 203 and 130: above.  The
	 * boundaries are off the tiles' multiples, so tiles mix adapters, and
	 * tokens the kernels do with tokens cuBLAS does. */
	static const lsk_segment seg[] = {{0, 61, 0}, {61, 203, 1}, {264, 3, 2}, {267, 130, 0},
	                                  {400, 70, -1}};
	struct tcase c = {.in = 256, .out = {131}, .n_adapters = 3, .rank = {{16}, {64}, {127}},
	                  .n_tokens = 470, .n_segments = 5, .seg = seg};
	run_dtypes(c, "long segments, no handle");
}

Test(segments, long_ones_with_mixed_dtypes_use_the_kernels)
{
	need_device();
	static const lsk_segment seg[] = {{0, 99, 0}, {99, 91, 1}};
	struct tcase c = {.in = 136, .out = {80}, .n_adapters = 2, .rank = {{8}, {24}},
	                  .n_tokens = 190, .n_segments = 2, .seg = seg, .handle = true};
	const lsk_dtype pairs[][2] = {{LSK_BF16, LSK_F32}, {LSK_F32, LSK_F16}, {LSK_F16, LSK_BF16}};
	for (int i = 0; i < 3; i++) {
		c.act = pairs[i][0];
		c.wt = pairs[i][1];
		run_one(c, "long segments, x and weights of different dtypes");
	}
}

Test(segments, cublas_forced_on_every_segment)
{
	need_device();
	static const lsk_segment seg[] = {{0, 1, 0}, {1, 2, 1}, {5, 9, 0}, {14, 33, 1}};
	static const lsk_dtype same[] = {LSK_F32, LSK_F16, LSK_BF16};
	struct tcase c = {.in = 48, .ldx = 56, .out = {40}, .n_adapters = 2, .rank = {{2}, {16}},
	                  .n_tokens = 50, .n_segments = 4, .seg = seg, .handle = true,
	                  .min_tokens = 1};
	for (int i = 0; i < 3; i++) {
		c.act = c.wt = same[i];
		run_one(c, "every segment through cuBLAS");
	}
}

Test(segments, kernels_forced_on_long_segments_with_a_handle)
{
	need_device();
	static const lsk_segment seg[] = {{0, 300, 0}};
	struct tcase c = {.in = 512, .out = {256}, .n_adapters = 1, .rank = {{64}},
	                  .n_tokens = 300, .n_segments = 1, .seg = seg, .handle = true,
	                  .min_tokens = INT32_MAX, .act = LSK_BF16, .wt = LSK_BF16};
	run_one(c, "long segment, cuBLAS threshold out of reach");
}

Test(segments, cublas_restores_a_device_pointer_mode)
{
	need_device();
	static const lsk_segment seg[] = {{0, 80, 0}};
	struct tcase c = {.in = 64, .out = {32}, .n_adapters = 1, .rank = {{8}}, .n_tokens = 80,
	                  .n_segments = 1, .seg = seg, .handle = true, .device_pointer_mode = true,
	                  .act = LSK_F16, .wt = LSK_F16};
	run_one(c, "handle in device pointer mode");
}

Test(segments, single_token_segment)
{
	need_device();
	static const lsk_segment seg[] = {{0, 1, 0}};
	struct tcase c = {.in = 1000, .out = {13}, .n_adapters = 1, .rank = {{7}}, .n_tokens = 1,
	                  .n_segments = 1, .seg = seg, .handle = true};
	run_dtypes(c, "one segment of one token");
}

Test(segments, without_adapter_or_outside_leave_y_untouched)
{
	need_device();
	static const lsk_segment seg[] = {{2, 100, -1}};
	struct tcase c = {.in = 32, .out = {16}, .n_adapters = 1, .rank = {{4}}, .n_tokens = 110,
	                  .n_segments = 1, .seg = seg, .handle = true, .act = LSK_F16,
	                  .wt = LSK_F16, .expect_nothing = true};
	struct tresult r = run_case(&c, test_seed(), "segment without adapter");
	cr_assert_gt(r.n_same, 0);
}

/* ------------------------------------------------------------------ */
/* Checks of the call: host only, no device needed                    */

/* A well-formed call whose device addresses are never dereferenced. */
struct fake_call {
	lsk_lora dev, host;
	lsk_batch dbatch, hbatch;
	int32_t rank[2];
	float scale[2];
	const void *ptrs[2];
	lsk_segment seg[2];
	size_t ws_size;
};

static void fake_call_init(struct fake_call *f)
{
	memset(f, 0, sizeof(*f));
	f->rank[0] = 4;
	f->rank[1] = 8;
	f->scale[0] = f->scale[1] = 1.0f;
	f->ptrs[0] = (const void *)(uintptr_t)0x10000;
	f->ptrs[1] = (const void *)(uintptr_t)0x20000;
	lsk_lora *h = &f->host;
	h->act_dtype = LSK_BF16;
	h->weight_dtype = LSK_BF16;
	h->in = 64;
	h->ldx = 64;
	h->ldy = 32;
	h->n_adapters = 2;
	h->max_rank = 8;
	h->scale = f->scale;
	h->n_slices = 1;
	h->slices[0].a = f->ptrs;
	h->slices[0].b = f->ptrs;
	h->slices[0].rank = f->rank;
	h->slices[0].out = 32;
	f->dev = f->host; /* the same "device" arrays: never read on the host */
	f->seg[0] = (lsk_segment){0, 3, 0};
	f->seg[1] = (lsk_segment){3, 2, 1};
	f->dbatch = (lsk_batch){.n_tokens = 5, .n_segments = 2, .segments = f->seg};
	f->hbatch = f->dbatch;
	f->ws_size = lsk_workspace_size(&f->host, 5);
}

#define FAKE_X ((const void *)(uintptr_t)0x100000)
#define FAKE_Y ((void *)(uintptr_t)0x200000)
#define FAKE_WS ((void *)(uintptr_t)0x300000)

static int fake_apply(struct fake_call *f)
{
	return lsk_cuda_apply(&f->dev, &f->host, &f->dbatch, &f->hbatch, FAKE_X, FAKE_Y, FAKE_WS,
	                      f->ws_size, NULL, NULL);
}

Test(checks, null_host_mirror_is_einval)
{
	struct fake_call f;
	fake_call_init(&f);
	cr_assert_eq(lsk_cuda_apply(&f.dev, NULL, &f.dbatch, &f.hbatch, FAKE_X, FAKE_Y, FAKE_WS,
	                            f.ws_size, NULL, NULL),
	             -EINVAL);
	cr_assert_eq(lsk_cuda_apply(&f.dev, &f.host, &f.dbatch, NULL, FAKE_X, FAKE_Y, FAKE_WS,
	                            f.ws_size, NULL, NULL),
	             -EINVAL);
}

Test(checks, workspace_too_small_is_a_shape_error)
{
	struct fake_call f;
	fake_call_init(&f);
	f.ws_size -= 1;
	cr_assert_eq(fake_apply(&f), LS_E_SHAPE);
}

Test(checks, unaligned_or_missing_workspace_is_einval)
{
	struct fake_call f;
	fake_call_init(&f);
	cr_assert_eq(lsk_cuda_apply(&f.dev, &f.host, &f.dbatch, &f.hbatch, FAKE_X, FAKE_Y,
	                            (char *)FAKE_WS + 16, f.ws_size, NULL, NULL),
	             -EINVAL);
	cr_assert_eq(lsk_cuda_apply(&f.dev, &f.host, &f.dbatch, &f.hbatch, FAKE_X, FAKE_Y, NULL,
	                            f.ws_size, NULL, NULL),
	             -EINVAL);
}

Test(checks, unknown_dtype_is_a_dtype_error)
{
	struct fake_call f;
	fake_call_init(&f);
	f.host.act_dtype = f.dev.act_dtype = (lsk_dtype)7;
	cr_assert_eq(fake_apply(&f), LS_E_DTYPE);
}

Test(checks, device_and_host_dtypes_that_differ_are_a_dtype_error)
{
	struct fake_call f;
	fake_call_init(&f);
	f.dev.weight_dtype = LSK_F16;
	cr_assert_eq(fake_apply(&f), LS_E_DTYPE);
}

Test(checks, device_and_host_shapes_that_differ_are_a_shape_error)
{
	struct fake_call f;
	fake_call_init(&f);
	f.dev.in = 65;
	cr_assert_eq(fake_apply(&f), LS_E_SHAPE);
	fake_call_init(&f);
	f.dbatch.n_tokens = 6;
	cr_assert_eq(fake_apply(&f), LS_E_SHAPE);
}

Test(checks, both_index_arrays_is_a_shape_error)
{
	struct fake_call f;
	fake_call_init(&f);
	static const int32_t tok[5] = {0, 0, 0, 1, 1};
	f.dbatch.token_adapter = tok;
	cr_assert_eq(fake_apply(&f), LS_E_SHAPE);
}

Test(checks, no_index_array_is_einval)
{
	struct fake_call f;
	fake_call_init(&f);
	f.dbatch.segments = NULL;
	f.dbatch.n_segments = 0;
	cr_assert_eq(fake_apply(&f), -EINVAL);
}

Test(checks, host_segment_with_adapter_out_of_range_is_a_shape_error)
{
	struct fake_call f;
	fake_call_init(&f);
	f.seg[1].adapter = 2;
	cr_assert_eq(fake_apply(&f), LS_E_SHAPE);
}

Test(checks, host_segments_that_overlap_are_a_shape_error)
{
	struct fake_call f;
	fake_call_init(&f);
	f.seg[1].start = 2;
	cr_assert_eq(fake_apply(&f), LS_E_SHAPE);
}

Test(checks, decode_without_host_indices_checks_the_operation)
{
	struct fake_call f;
	fake_call_init(&f);
	static const int32_t dev_tok[5] = {0, 1, 0, 1, 0};
	f.dbatch = (lsk_batch){.n_tokens = 5, .token_adapter = dev_tok};
	f.hbatch = (lsk_batch){.n_tokens = 5};
	f.host.slices[0].out = 33; /* past ldy */
	f.dev.slices[0].out = 33;
	cr_assert_eq(fake_apply(&f), LS_E_SHAPE);
}

Test(checks, null_x_is_einval)
{
	struct fake_call f;
	fake_call_init(&f);
	cr_assert_eq(lsk_cuda_apply(&f.dev, &f.host, &f.dbatch, &f.hbatch, NULL, FAKE_Y, FAKE_WS,
	                            f.ws_size, NULL, NULL),
	             -EINVAL);
}

Test(checks, empty_batch_returns_zero_without_touching_the_device)
{
	struct fake_call f;
	fake_call_init(&f);
	f.dbatch = (lsk_batch){.n_tokens = 0, .segments = f.seg, .n_segments = 0};
	f.hbatch = f.dbatch;
	f.ws_size = lsk_workspace_size(&f.host, 0);
	/* Nothing to do: no launch, so this holds with or without a GPU. */
	cr_assert_eq(fake_apply(&f), 0);
}

/* No GPU means an error code, never a crash: a call that passes every
 * check fails at its first launch, reports it and returns. */
Test(checks, apply_without_a_device_returns_an_error)
{
	if (lsk_cuda_available() == 0)
		cr_skip_test("a CUDA device is present (this test is for machines without one)");
	struct fake_call f;
	fake_call_init(&f);
	int rc = fake_apply(&f);
	cr_assert(rc == LS_E_NO_DEVICE || rc == LS_E_DEVICE, "lsk_cuda_apply: %d (%s)", rc,
	          ls_strerror(rc));
}

Test(checks, available_answers_without_aborting)
{
	int rc = lsk_cuda_available();
	cr_assert(rc == 0 || rc == LS_E_NO_DEVICE, "lsk_cuda_available: %d (%s)", rc,
	          ls_strerror(rc));
	char why[256] = "";
	cr_assert_eq(lsk_cuda_available_impl(why, sizeof(why)), rc);
	cr_assert_neq(why[0], '\0', "no reason given");
	cr_log_info("lsk_cuda_available: %s (%s)", rc == 0 ? "yes" : ls_strerror(rc), why);
}
