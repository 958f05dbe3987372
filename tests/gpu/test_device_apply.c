/*
 * Device apply (liblorastore_cuda) over a real lorastored's device tier.
 *
 * The adapters are the daemon's single device copy, imported by this
 * process through liblorastore; the plan's kernels read them in place.
 * The oracle is a float64 product computed on the CPU from the host tier's
 * copy of the same version (the same bytes), with the magnitude of its
 * terms for the tolerance.
 *
 * The applies need a GPU and the real driver: LS_TEST_REAL_GPU=1 (the GPU
 * check sets it, with LSK_REQUIRE_GPU=1, which turns their skips into
 * failures).  Without them the daemon's GPU is the CUDA driver double and
 * only the tests that need no kernel run: the tier checks of both plans and
 * a device plan's clear error where no GPU is usable.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lorastore.h>
#include <lorastore_cuda.h>

#include "daemon_proc.h"
#include "dtype.h"
#include "synth.h"

/* Llama synth: hidden 64, 4 heads, 2 kv heads: q is 64 wide, k and v 32. */
#define HIDDEN 64
#define KV 32
#define QKV (HIDDEN + 2 * KV)
#define N_ADAPTERS 3

static struct ls_daemon_proc dp;
static char *work_dir;
static lorastore *conn;

static bool real_gpu(void)
{
	const char *v = getenv("LS_TEST_REAL_GPU");
	return v && strcmp(v, "1") == 0;
}

static void setup(void)
{
	memset(&dp, 0, sizeof(dp));
	dp.pid = -1;
	dp.notify_fd = -1;
	conn = NULL;
	work_dir = synth_mkdtemp("devapply");
	chmod(work_dir, 0755);
	if (!real_gpu())
		setenv("LORASTORE_CUDA_DRIVER", LS_CUDA_DOUBLE_PATH, 1);
}

static void teardown(void)
{
	if (conn)
		lorastore_close(conn);
	if (dp.dir[0] || dp.pid > 0 || dp.notify_fd >= 0)
		ls_daemon_cleanup(&dp);
	synth_rm_rf(work_dir);
	free(work_dir);
	unsetenv("LS_CUDA_DOUBLE_DEVICES");
}

TestSuite(device_apply, .init = setup, .fini = teardown, .timeout = 120);

/* Skip (or fail, under LSK_REQUIRE_GPU=1) unless kernels can run on adapters here. */
static void need_real_gpu(void)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess)
		(void)cudaGetLastError();
	if (real_gpu() && e == cudaSuccess && n > 0)
		return;
	char why[200];
	snprintf(why, sizeof(why), "device apply runs kernels: it needs a GPU (%s) and "
		 "LS_TEST_REAL_GPU=1 (the GPU check sets both)",
		 e == cudaSuccess ? (n > 0 ? "present" : "none found") : cudaGetErrorName(e));
	const char *req = getenv("LSK_REQUIRE_GPU");
	if (req && strcmp(req, "1") == 0)
		cr_assert_fail("LSK_REQUIRE_GPU=1: %s", why);
	fprintf(stderr, "test_device_apply: skipping %s: %s\n", criterion_current_test->name, why);
	cr_skip_test("%s", why);
}

#define CK(call)                                                                          \
	do {                                                                              \
		cudaError_t e_ = (call);                                                  \
		cr_assert_eq(e_, cudaSuccess, "%s: %s (%s)", #call, cudaGetErrorString(e_), \
			     cudaGetErrorName(e_));                                       \
	} while (0)

static void start_daemon(const char *const *extra)
{
	const char *args[16] = {"--backend", "cuda", "--device-budget", "256MiB"};
	int n = 4;
	for (int i = 0; extra && extra[i] && n < 15; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	cr_assert_eq(ls_daemon_start(&dp, NULL, args), 0, "lorastored did not start");
	cr_assert_eq(lorastore_connect(dp.socket, &conn), 0, "connect %s", dp.socket);
}

/* Import a synthetic adapter of rank r and weight dtype dt as name. */
static void import_adapter(const char *name, int rank, enum ls_dtype dt, uint64_t seed)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/%s", work_dir, strchr(name, '/') + 1);
	cr_assert_eq(mkdir(dir, 0755), 0, "mkdir %s: %s", dir, strerror(errno));
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = rank, .dtype = dt,
			       .hidden = HIDDEN, .heads = 4, .kv_heads = 2, .seed = seed};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	lorastore_import_opts io = {.name = name};
	cr_assert_eq(lorastore_import_dir(conn, dir, &io, NULL), 0, "import %s: %s", name,
		     lorastore_errmsg(conn));
}

static lorastore_adapter *acquire(const char *name, lorastore_tier tier, const char *uuid)
{
	lorastore_adapter *ad = NULL;
	int rc = tier == LORASTORE_TIER_HOST
			 ? lorastore_acquire(conn, name, -1, &ad)
			 : lorastore_acquire_tier(conn, name, tier, uuid, -1, &ad);
	cr_assert_eq(rc, 0, "acquire %s: %s (%s)", name, lorastore_errmsg(conn),
		     lorastore_strerror(rc));
	return ad;
}

static const lorastore_slice qkv[3] = {
	{"model.layers.1.self_attn.q_proj", 0, HIDDEN},
	{"model.layers.1.self_attn.k_proj", HIDDEN, KV},
	{"model.layers.1.self_attn.v_proj", HIDDEN + KV, KV},
};

/* Three adapters of ranks 4, 8 and 16, held on both tiers. */
struct trio {
	lorastore_adapter *host[N_ADAPTERS];
	lorastore_adapter *dev[N_ADAPTERS];
};

static void trio_make(struct trio *t, enum ls_dtype dt)
{
	static const int ranks[N_ADAPTERS] = {4, 8, 16};
	char name[32];
	for (int i = 0; i < N_ADAPTERS; i++) {
		snprintf(name, sizeof(name), "gpu/a%d", i);
		import_adapter(name, ranks[i], dt, 40 + (uint64_t)i);
		t->host[i] = acquire(name, LORASTORE_TIER_HOST, NULL);
		t->dev[i] = acquire(name, LORASTORE_TIER_DEVICE, NULL);
	}
}

static void trio_release(struct trio *t)
{
	for (int i = 0; i < N_ADAPTERS; i++) {
		cr_assert_eq(lorastore_adapter_release(t->dev[i]), 0);
		cr_assert_eq(lorastore_adapter_release(t->host[i]), 0);
	}
}

static double elem(const lorastore_tensor *t, uint64_t i)
{
	const uint16_t *h = t->data;
	switch (t->dtype) {
	case LORASTORE_DTYPE_F32:
		return ((const float *)t->data)[i];
	case LORASTORE_DTYPE_F16:
		return ls_f16_to_f32(h[i]);
	case LORASTORE_DTYPE_BF16:
		return ls_bf16_to_f32(h[i]);
	}
	cr_assert_fail("tensor of dtype %d", (int)t->dtype);
	return 0;
}

/*
 * y[t] += times * scale * (x A^T) B^T in float64 for each token's adapter
 * (read from the host tier), and mag[t] the magnitude of the terms.
 */
static void oracle(lorastore_adapter *const *host, const int32_t *tok, size_t n_tokens,
		   const float *x, double times, double *y, double *mag)
{
	for (size_t t = 0; t < n_tokens; t++) {
		if (tok[t] < 0 || tok[t] >= N_ADAPTERS)
			continue;
		for (int s = 0; s < 3; s++) {
			lorastore_tensor a, b;
			cr_assert_eq(lorastore_adapter_tensor(host[tok[t]], qkv[s].module,
							      LORASTORE_KIND_A, &a), 0);
			cr_assert_eq(lorastore_adapter_tensor(host[tok[t]], qkv[s].module,
							      LORASTORE_KIND_B, &b), 0);
			uint64_t r = a.shape[0];
			double v[64], vabs[64];
			for (uint64_t i = 0; i < r; i++) {
				v[i] = vabs[i] = 0;
				for (int k = 0; k < HIDDEN; k++) {
					double p = (double)x[t * HIDDEN + k] * elem(&a, i * HIDDEN + k);
					v[i] += p;
					vabs[i] += fabs(p);
				}
			}
			for (uint64_t o = 0; o < qkv[s].out; o++) {
				double acc = 0, m = 0;
				for (uint64_t i = 0; i < r; i++) {
					acc += v[i] * elem(&b, o * r + i);
					m += vabs[i] * fabs(elem(&b, o * r + i));
				}
				y[t * QKV + qkv[s].out_offset + o] += times * b.scale * acc;
				mag[t * QKV + qkv[s].out_offset + o] += times * fabs(b.scale) * m;
			}
		}
	}
}

static void random_floats(float *p, size_t n, unsigned seed)
{
	srand(seed);
	for (size_t i = 0; i < n; i++)
		p[i] = (float)rand() / (float)RAND_MAX - 0.5f;
}

/*
 * F32 activations, F32 accumulation over in + r terms (in any order, fused
 * or not): the error is at most about (in + r) * 2^-24 times the terms'
 * magnitudes, below 1e-5 of them for in + r <= 80 with a margin of 10x;
 * 1e-6 absolute covers the final rounding of elements near 0.  An element
 * of no slice's token (mag 0) must be bitwise unchanged.
 */
static size_t compare(const float *got, const float *y0, const double *want, const double *mag,
		      size_t n, const char *what)
{
	size_t compared = 0;
	for (size_t i = 0; i < n; i++) {
		if (mag[i] == 0) {
			cr_assert(memcmp(&got[i], &y0[i], sizeof(float)) == 0,
				  "%s: y[%zu][%zu] changed (%.9g -> %.9g) though no adapter covers it",
				  what, i / QKV, i % QKV, y0[i], got[i]);
			continue;
		}
		double tol = 1e-5 * mag[i] + 1e-6;
		cr_assert(fabs(got[i] - want[i]) <= tol,
			  "%s: y[%zu][%zu] = %.9g, oracle %.9g, |diff| %.3g > %.3g", what, i / QKV,
			  i % QKV, got[i], want[i], fabs(got[i] - want[i]), tol);
		compared++;
	}
	return compared;
}

/* A batch's buffers: x, y (and its start), the indices, on both sides. */
struct bufs {
	size_t n_tokens;
	float *x, *y0, *y;
	double *want, *mag;
	float *x_d, *y_d;
	void *ws_d;
	size_t ws_size;
};

static void bufs_make(struct bufs *b, const lorastore_cuda_plan *plan, size_t n_tokens,
		      unsigned seed)
{
	b->n_tokens = n_tokens;
	b->x = malloc(n_tokens * HIDDEN * sizeof(float));
	b->y0 = malloc(n_tokens * QKV * sizeof(float));
	b->y = malloc(n_tokens * QKV * sizeof(float));
	b->want = calloc(n_tokens * QKV, sizeof(double));
	b->mag = calloc(n_tokens * QKV, sizeof(double));
	cr_assert(b->x && b->y0 && b->y && b->want && b->mag);
	random_floats(b->x, n_tokens * HIDDEN, seed);
	random_floats(b->y0, n_tokens * QKV, seed + 1);
	for (size_t i = 0; i < n_tokens * QKV; i++)
		b->want[i] = b->y0[i];
	CK(cudaMalloc((void **)&b->x_d, n_tokens * HIDDEN * sizeof(float)));
	CK(cudaMalloc((void **)&b->y_d, n_tokens * QKV * sizeof(float)));
	CK(cudaMemcpy(b->x_d, b->x, n_tokens * HIDDEN * sizeof(float), cudaMemcpyHostToDevice));
	CK(cudaMemcpy(b->y_d, b->y0, n_tokens * QKV * sizeof(float), cudaMemcpyHostToDevice));
	b->ws_size = lorastore_cuda_plan_workspace_size(plan, n_tokens);
	cr_assert_gt(b->ws_size, 0);
	CK(cudaMalloc(&b->ws_d, b->ws_size));
}

static void bufs_fetch(struct bufs *b)
{
	CK(cudaMemcpy(b->y, b->y_d, b->n_tokens * QKV * sizeof(float), cudaMemcpyDeviceToHost));
}

static void bufs_free(struct bufs *b)
{
	cudaFree(b->x_d);
	cudaFree(b->y_d);
	cudaFree(b->ws_d);
	free(b->x);
	free(b->y0);
	free(b->y);
	free(b->want);
	free(b->mag);
}

static int32_t *dev_indices(const int32_t *tok, size_t n)
{
	int32_t *d = NULL;
	CK(cudaMalloc((void **)&d, n * sizeof(*d)));
	CK(cudaMemcpy(d, tok, n * sizeof(*d), cudaMemcpyHostToDevice));
	return d;
}

/* ---- tiers: no kernel runs, so these run on the driver double in CI */

Test(device_apply, each_plan_refuses_adapters_held_in_the_other_tier)
{
	start_daemon(NULL);
	import_adapter("gpu/t", 8, LS_DTYPE_F16, 7);
	lorastore_adapter *h = acquire("gpu/t", LORASTORE_TIER_HOST, NULL);
	lorastore_adapter *d = acquire("gpu/t", LORASTORE_TIER_DEVICE, NULL);
	lorastore_cuda_plan *cp = NULL;
	int rc = lorastore_cuda_plan_create(&h, 1, NULL, HIDDEN, qkv, 3, &cp);
	cr_assert_eq(rc, LORASTORE_E_TIER, "a device plan of a host adapter: %s",
		     lorastore_strerror(rc));
	cr_assert_null(cp);
	lorastore_plan *hp = NULL;
	rc = lorastore_plan_create(&d, 1, NULL, HIDDEN, qkv, 3, &hp);
	cr_assert_eq(rc, LORASTORE_E_TIER, "a host plan of a device adapter: %s",
		     lorastore_strerror(rc));
	cr_assert_null(hp);
	lorastore_adapter *mixed[2] = {d, h};
	cr_assert_eq(lorastore_cuda_plan_create(mixed, 2, NULL, HIDDEN, qkv, 3, &cp),
		     LORASTORE_E_TIER);
	lorastore_adapter_release(d);
	lorastore_adapter_release(h);
}

Test(device_apply, a_device_plan_refuses_adapters_of_two_gpus)
{
	if (real_gpu())
		cr_skip_test("needs the driver double's two GPUs; this run uses the real driver");
	setenv("LS_CUDA_DOUBLE_DEVICES", "2", 1);
	start_daemon(NULL);
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(conn, &st), 0);
	cr_assert_eq(st.tier_count, 3, "host and two device tiers expected");
	import_adapter("gpu/two", 8, LS_DTYPE_F16, 9);
	lorastore_adapter *d0 = acquire("gpu/two", LORASTORE_TIER_DEVICE, st.tiers[1].device);
	lorastore_adapter *d1 = acquire("gpu/two", LORASTORE_TIER_DEVICE, st.tiers[2].device);
	lorastore_adapter *both[2] = {d0, d1};
	lorastore_cuda_plan *cp = NULL;
	cr_assert_eq(lorastore_cuda_plan_create(both, 2, NULL, HIDDEN, qkv, 3, &cp),
		     LORASTORE_E_TIER);
	lorastore_adapter_release(d0);
	lorastore_adapter_release(d1);
}

Test(device_apply, without_a_usable_gpu_a_device_plan_says_no_device)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	(void)cudaGetLastError();
	if (real_gpu() || (e == cudaSuccess && n > 0))
		cr_skip_test("a GPU is usable here: the refusal it tests cannot happen");
	start_daemon(NULL);
	import_adapter("gpu/none", 8, LS_DTYPE_F16, 11);
	lorastore_adapter *d = acquire("gpu/none", LORASTORE_TIER_DEVICE, NULL);
	lorastore_cuda_plan *cp = NULL;
	int rc = lorastore_cuda_plan_create(&d, 1, NULL, HIDDEN, qkv, 3, &cp);
	cr_assert_eq(rc, LORASTORE_E_NO_DEVICE, "got %s", lorastore_strerror(rc));
	cr_assert_null(cp);
	lorastore_adapter_release(d);
}

/* ---- applies: a real GPU */

Test(device_apply, decode_over_the_daemons_device_copy_equals_the_cpu_oracle)
{
	need_real_gpu();
	start_daemon(NULL);
	struct trio t;
	trio_make(&t, LS_DTYPE_F16);
	lorastore_cuda_plan *plan = NULL;
	int rc = lorastore_cuda_plan_create(t.dev, N_ADAPTERS, NULL, HIDDEN, qkv, 3, &plan);
	cr_assert_eq(rc, 0, "plan: %s", lorastore_strerror(rc));
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(t.dev[0], &info), 0);
	cr_assert_eq(lorastore_cuda_plan_device(plan), info.device);

	enum { T = 37 };
	int32_t tok[T];
	for (int i = 0; i < T; i++)
		tok[i] = i % (N_ADAPTERS + 1) - 1; /* -1, 0, 1, 2, -1, ... */
	struct bufs b;
	bufs_make(&b, plan, T, 1234);
	int32_t *tok_d = dev_indices(tok, T);
	cudaStream_t st;
	CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	lorastore_cuda_batch batch = {.n_tokens = T, .token_adapter = tok_d};
	rc = lorastore_cuda_apply(plan, &batch, LORASTORE_DTYPE_F32, b.x_d, HIDDEN, b.y_d, QKV,
				  b.ws_d, b.ws_size, st, NULL);
	cr_assert_eq(rc, 0, "apply: %s", lorastore_strerror(rc));
	CK(cudaStreamSynchronize(st));
	bufs_fetch(&b);
	oracle(t.host, tok, T, b.x, 1.0, b.want, b.mag);
	size_t n = compare(b.y, b.y0, b.want, b.mag, T * QKV, "decode");
	cr_assert_gt(n, (size_t)(T / 2) * QKV, "compared only %zu elements", n);
	uint32_t bad = 1;
	cr_assert_eq(lorastore_cuda_plan_bad_indices(plan, st, 0, &bad), 0);
	cr_assert_eq(bad, 0);

	cudaStreamDestroy(st);
	cudaFree(tok_d);
	bufs_free(&b);
	lorastore_cuda_plan_free(plan);
	trio_release(&t);
}

Test(device_apply, prefill_segments_through_a_callers_cublas_handle_equal_the_oracle)
{
	need_real_gpu();
	start_daemon(NULL);
	struct trio t;
	trio_make(&t, LS_DTYPE_F32); /* F32 weights and activations: cuBLAS may take them */
	lorastore_cuda_plan *plan = NULL;
	cr_assert_eq(lorastore_cuda_plan_create(t.dev, N_ADAPTERS, NULL, HIDDEN, qkv, 3, &plan), 0);

	/* Long segments go to cuBLAS (64 tokens and more), short ones to the kernels. */
	static const lorastore_segment seg[4] = {{0, 100, 2}, {100, 5, -1}, {105, 70, 0},
						 {175, 9, 1}};
	enum { T = 184 };
	int32_t tok[T];
	for (int s = 0; s < 4; s++)
		for (int i = 0; i < seg[s].len; i++)
			tok[seg[s].start + i] = seg[s].adapter;
	struct bufs b;
	bufs_make(&b, plan, T, 99);
	lorastore_segment *seg_d = NULL;
	CK(cudaMalloc((void **)&seg_d, sizeof(seg)));
	CK(cudaMemcpy(seg_d, seg, sizeof(seg), cudaMemcpyHostToDevice));
	cudaStream_t st, other;
	CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	CK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
	cublasHandle_t h;
	cr_assert_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
	cr_assert_eq(cublasSetStream(h, other), CUBLAS_STATUS_SUCCESS);
	cr_assert_eq(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE), CUBLAS_STATUS_SUCCESS);

	lorastore_cuda_batch batch = {.n_tokens = T, .n_segments = 4, .segments = seg_d,
				      .host_segments = seg};
	int rc = lorastore_cuda_apply(plan, &batch, LORASTORE_DTYPE_F32, b.x_d, HIDDEN, b.y_d, QKV,
				      b.ws_d, b.ws_size, st, h);
	cr_assert_eq(rc, 0, "apply: %s", lorastore_strerror(rc));
	CK(cudaStreamSynchronize(st));
	bufs_fetch(&b);
	oracle(t.host, tok, T, b.x, 1.0, b.want, b.mag);
	cr_assert_gt(compare(b.y, b.y0, b.want, b.mag, T * QKV, "prefill"), 0);

	cudaStream_t hs = NULL;
	cublasPointerMode_t pm;
	cr_assert_eq(cublasGetStream(h, &hs), CUBLAS_STATUS_SUCCESS);
	cr_assert_eq(cublasGetPointerMode(h, &pm), CUBLAS_STATUS_SUCCESS);
	cr_assert_eq(hs, other, "the caller's handle was left on another stream");
	cr_assert_eq(pm, CUBLAS_POINTER_MODE_DEVICE, "the caller's pointer mode was changed");

	cublasDestroy(h);
	cudaStreamDestroy(st);
	cudaStreamDestroy(other);
	cudaFree(seg_d);
	bufs_free(&b);
	lorastore_cuda_plan_free(plan);
	trio_release(&t);
}

Test(device_apply, indices_out_of_range_are_counted_and_their_tokens_left_alone)
{
	need_real_gpu();
	start_daemon(NULL);
	struct trio t;
	trio_make(&t, LS_DTYPE_F16);
	lorastore_cuda_plan *plan = NULL;
	cr_assert_eq(lorastore_cuda_plan_create(t.dev, N_ADAPTERS, NULL, HIDDEN, qkv, 3, &plan), 0);
	enum { T = 8 };
	const int32_t tok[T] = {0, 3, 1, -1, 1000, 2, -5, 0};
	struct bufs b;
	bufs_make(&b, plan, T, 5);
	int32_t *tok_d = dev_indices(tok, T);
	cudaStream_t st;
	CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	lorastore_cuda_batch batch = {.n_tokens = T, .token_adapter = tok_d};
	cr_assert_eq(lorastore_cuda_apply(plan, &batch, LORASTORE_DTYPE_F32, b.x_d, HIDDEN, b.y_d,
					  QKV, b.ws_d, b.ws_size, st, NULL), 0);
	uint32_t bad = 0;
	cr_assert_eq(lorastore_cuda_plan_bad_indices(plan, st, 1, &bad), 0);
	cr_assert_eq(bad, 3, "indices 3, 1000 and -5 are out of range; the plan counted %u", bad);
	bufs_fetch(&b);
	/* The oracle skips them too: their rows must be bitwise unchanged. */
	oracle(t.host, tok, T, b.x, 1.0, b.want, b.mag);
	cr_assert_gt(compare(b.y, b.y0, b.want, b.mag, T * QKV, "out of range"), 0);
	cr_assert_eq(lorastore_cuda_plan_bad_indices(plan, st, 0, &bad), 0);
	cr_assert_eq(bad, 0, "the reset did not clear the counter");

	cudaStreamDestroy(st);
	cudaFree(tok_d);
	bufs_free(&b);
	lorastore_cuda_plan_free(plan);
	trio_release(&t);
}

Test(device_apply, an_apply_captured_in_a_cuda_graph_replays_on_each_launch)
{
	need_real_gpu();
	start_daemon(NULL);
	struct trio t;
	trio_make(&t, LS_DTYPE_BF16);
	lorastore_cuda_plan *plan = NULL;
	cr_assert_eq(lorastore_cuda_plan_create(t.dev, N_ADAPTERS, NULL, HIDDEN, qkv, 3, &plan), 0);
	enum { T = 16 };
	int32_t tok[T];
	for (int i = 0; i < T; i++)
		tok[i] = (i * 7) % N_ADAPTERS;
	struct bufs b;
	bufs_make(&b, plan, T, 77);
	int32_t *tok_d = dev_indices(tok, T);
	cudaStream_t st;
	CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

	/* Capture fails if the call allocates or synchronizes. */
	CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
	lorastore_cuda_batch batch = {.n_tokens = T, .token_adapter = tok_d};
	int rc = lorastore_cuda_apply(plan, &batch, LORASTORE_DTYPE_F32, b.x_d, HIDDEN, b.y_d, QKV,
				      b.ws_d, b.ws_size, st, NULL);
	cudaGraph_t g = NULL;
	cudaError_t e = cudaStreamEndCapture(st, &g);
	cr_assert_eq(rc, 0, "apply under capture: %s", lorastore_strerror(rc));
	CK(e);
	cudaGraphExec_t ge;
	CK(cudaGraphInstantiate(&ge, g, 0));
	CK(cudaGraphLaunch(ge, st));
	CK(cudaGraphLaunch(ge, st));
	CK(cudaStreamSynchronize(st));
	bufs_fetch(&b);
	oracle(t.host, tok, T, b.x, 2.0, b.want, b.mag);
	cr_assert_gt(compare(b.y, b.y0, b.want, b.mag, T * QKV, "graph, two launches"), 0);

	cudaGraphExecDestroy(ge);
	cudaGraphDestroy(g);
	cudaStreamDestroy(st);
	cudaFree(tok_d);
	bufs_free(&b);
	lorastore_cuda_plan_free(plan);
	trio_release(&t);
}

/* ---- packaging: the pkg-config file, as a GPU worker's build uses it */

static const char pc_program[] =
	"#include <stdio.h>\n"
	"#include <lorastore_cuda.h>\n"
	"int main(void)\n"
	"{\n"
	"\tif (lorastore_cuda_plan_workspace_size(NULL, 8) != 0 ||\n"
	"\t    lorastore_cuda_plan_device(NULL) != -1)\n"
	"\t\treturn 1;\n"
	"\tprintf(\"%s\\n\", lorastore_strerror(LORASTORE_E_TIER));\n"
	"\treturn 0;\n"
	"}\n";

Test(device_apply, a_program_builds_with_pkg_config_lorastore_cuda_and_runs, .timeout = 180)
{
	if (system("pkg-config --version >/dev/null 2>&1") != 0)
		cr_skip_test("pkg-config is not installed (scripts/install-deps installs it)");
	char cmd[8 * PATH_MAX];
	snprintf(cmd, sizeof(cmd), "cmake --install '%s' --prefix '%s/prefix' >'%s/install.log' 2>&1",
		 LS_BINARY_DIR, work_dir, work_dir);
	cr_assert_eq(system(cmd), 0, "cmake --install failed (%s/install.log)", work_dir);
	char pc[PATH_MAX] = "";
	snprintf(cmd, sizeof(cmd), "find '%s/prefix' -name lorastore-cuda.pc", work_dir);
	FILE *fp = popen(cmd, "r");
	cr_assert(fp && fgets(pc, sizeof(pc), fp), "no lorastore-cuda.pc installed");
	pclose(fp);
	pc[strcspn(pc, "\n")] = '\0';
	*strrchr(pc, '/') = '\0'; /* its folder */
	char src[PATH_MAX];
	snprintf(src, sizeof(src), "%s/prog.c", work_dir);
	cr_assert_eq(synth_write_text(src, pc_program), 0);
#if defined(__SANITIZE_ADDRESS__)
	const char *san = "-fsanitize=address,undefined";
#else
	const char *san = "";
#endif
	snprintf(cmd, sizeof(cmd),
		 "export PKG_CONFIG_PATH='%s' && cc -std=c17 -Wall -Werror %s '%s' -o '%s/prog' "
		 "$(pkg-config --cflags --libs lorastore-cuda) >'%s/cc.log' 2>&1 && "
		 "LD_LIBRARY_PATH=\"$(pkg-config --variable=libdir lorastore-cuda)\" '%s/prog' "
		 ">'%s/prog.out'",
		 pc, san, src, work_dir, work_dir, work_dir, work_dir);
	cr_assert_eq(system(cmd), 0, "build or run failed: %s", cmd);
	char out[256] = "";
	snprintf(cmd, sizeof(cmd), "%s/prog.out", work_dir);
	fp = fopen(cmd, "r");
	cr_assert(fp && fgets(out, sizeof(out), fp));
	fclose(fp);
	cr_assert(strstr(out, "another tier"), "the program printed: %s", out);
}
