/*
 * Benchmark of the CUDA path of lsk (kernels/cuda), for scripts/gpu-check.
 *
 *   copy     device-to-device cudaMemcpy of 256 MiB: the bandwidth floor
 *            (bytes read + bytes written per second).
 *   decode   one adapter index per token, BF16, in = out = 4096: GB/s of
 *            the bytes the call must touch (every distinct adapter's A and
 *            B once, x, y read and written, v written and read) against
 *            the copy floor (target: 70%).
 *   prefill  one segment of L tokens, one adapter, BF16: TFLOP/s of the
 *            kernel path (no handle), of the cuBLAS path (handle, every
 *            segment to cuBLAS) and of plain cublasGemmEx for the same two
 *            products (target: 50% of it on long segments), and the
 *            shortest L from which the cuBLAS path stays faster than the
 *            kernels: what LSK_CUDA_CUBLAS_MIN_TOKENS should be.
 *   latency  per-layer time for batches 1..256 with 1, 8 and 64 distinct
 *            adapters, rank 16 and 64.
 *
 * Times are medians of 15 runs of back-to-back calls on one stream,
 * measured with CUDA events after a warm-up.  The last lines, starting with
 * "SUMMARY", are for scripts/gpu-check.  Without a device it says so and
 * exits 0, so it can run anywhere.
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/lsk_cuda.h"
#include "ls_error.h"
#include "lsk.h"

#define DIM 4096          /* in = out */
#define MAX_ADAPTERS 64
#define MAX_TOKENS 2048
#define REPS 15

#define CK(call)                                                                         \
	do {                                                                             \
		cudaError_t e_ = (call);                                                 \
		if (e_ != cudaSuccess) {                                                 \
			fprintf(stderr, "bench_kernels_cuda: %s:%d: %s: %s\n", __FILE__,   \
			        __LINE__, #call, cudaGetErrorString(e_));                \
			exit(1);                                                         \
		}                                                                        \
	} while (0)

#define CKB(call)                                                                        \
	do {                                                                             \
		cublasStatus_t s_ = (call);                                              \
		if (s_ != CUBLAS_STATUS_SUCCESS) {                                       \
			fprintf(stderr, "bench_kernels_cuda: %s:%d: %s: %s\n", __FILE__,   \
			        __LINE__, #call, cublasGetStatusString(s_));             \
			exit(1);                                                         \
		}                                                                        \
	} while (0)

static cudaStream_t stream;
static cudaEvent_t ev0, ev1;

/* ------------------------------------------------------------------ */
/* Timing                                                             */

typedef void (*bench_fn)(void *ctx);

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Median seconds of one call of fn. */
static double time_call(bench_fn fn, void *ctx)
{
	for (int i = 0; i < 3; i++)
		fn(ctx);
	CK(cudaStreamSynchronize(stream));
	/* Calls per sample: enough for about 200 us, so that event
	 * resolution and launch gaps between samples do not dominate. */
	float ms = 0;
	CK(cudaEventRecord(ev0, stream));
	fn(ctx);
	CK(cudaEventRecord(ev1, stream));
	CK(cudaEventSynchronize(ev1));
	CK(cudaEventElapsedTime(&ms, ev0, ev1));
	int k = ms > 0 ? (int)(0.2 / ms) : 50;
	if (k < 1)
		k = 1;
	if (k > 50)
		k = 50;
	double t[REPS];
	for (int r = 0; r < REPS; r++) {
		CK(cudaEventRecord(ev0, stream));
		for (int i = 0; i < k; i++)
			fn(ctx);
		CK(cudaEventRecord(ev1, stream));
		CK(cudaEventSynchronize(ev1));
		CK(cudaEventElapsedTime(&ms, ev0, ev1));
		t[r] = ms * 1e-3 / k;
	}
	qsort(t, REPS, sizeof(t[0]), cmp_double);
	return t[REPS / 2];
}

/* ------------------------------------------------------------------ */
/* Data                                                               */

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint16_t rand_bf16(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	/* Uniform-ish in (-1, 1): sign, exponent 2^-1..2^-8, random mantissa. */
	uint16_t sign = (uint16_t)(rng & 0x8000u);
	uint16_t exp = (uint16_t)(126 - ((rng >> 16) & 7));
	uint16_t man = (uint16_t)((rng >> 24) & 0x7f);
	return (uint16_t)(sign | (exp << 7) | man);
}

/* n BF16 values of random data at device address p. */
static void fill_random(void *p, size_t n)
{
	const size_t chunk = 1 << 20;
	uint16_t *h = malloc(chunk * 2);
	if (!h)
		exit(1);
	for (size_t i = 0; i < chunk; i++)
		h[i] = rand_bf16();
	for (size_t off = 0; off < n; off += chunk) {
		size_t m = n - off < chunk ? n - off : chunk;
		CK(cudaMemcpy((uint16_t *)p + off, h, m * 2, cudaMemcpyHostToDevice));
	}
	free(h);
}

/* n_adapters adapters of one rank, one slice, in = out = DIM, BF16. */
struct op {
	int n_adapters, rank;
	lsk_lora dev, host;
	const void *a[MAX_ADAPTERS], *b[MAX_ADAPTERS];
	int32_t ranks[MAX_ADAPTERS];
	float scale[MAX_ADAPTERS];
	void *weights, *d_a, *d_b, *d_rank, *d_scale;
};

static void op_init(struct op *o, int n_adapters, int rank)
{
	memset(o, 0, sizeof(*o));
	o->n_adapters = n_adapters;
	o->rank = rank;
	const size_t per = (size_t)rank * DIM * 2; /* elements of one adapter: A, then B */
	CK(cudaMalloc(&o->weights, per * n_adapters * 2));
	fill_random(o->weights, per * n_adapters);
	for (int i = 0; i < n_adapters; i++) {
		o->a[i] = (const uint16_t *)o->weights + per * i;
		o->b[i] = (const uint16_t *)o->weights + per * i + (size_t)rank * DIM;
		o->ranks[i] = rank;
		o->scale[i] = 0.5f;
	}
	CK(cudaMalloc(&o->d_a, sizeof(void *) * n_adapters));
	CK(cudaMalloc(&o->d_b, sizeof(void *) * n_adapters));
	CK(cudaMalloc(&o->d_rank, sizeof(int32_t) * n_adapters));
	CK(cudaMalloc(&o->d_scale, sizeof(float) * n_adapters));
	CK(cudaMemcpy(o->d_a, o->a, sizeof(void *) * n_adapters, cudaMemcpyHostToDevice));
	CK(cudaMemcpy(o->d_b, o->b, sizeof(void *) * n_adapters, cudaMemcpyHostToDevice));
	CK(cudaMemcpy(o->d_rank, o->ranks, sizeof(int32_t) * n_adapters, cudaMemcpyHostToDevice));
	CK(cudaMemcpy(o->d_scale, o->scale, sizeof(float) * n_adapters, cudaMemcpyHostToDevice));

	lsk_lora *h = &o->host;
	h->act_dtype = LSK_BF16;
	h->weight_dtype = LSK_BF16;
	h->in = DIM;
	h->ldx = DIM;
	h->ldy = DIM;
	h->n_adapters = n_adapters;
	h->max_rank = rank;
	h->scale = o->scale;
	h->n_slices = 1;
	h->slices[0].a = o->a;
	h->slices[0].b = o->b;
	h->slices[0].rank = o->ranks;
	h->slices[0].out = DIM;
	o->dev = o->host;
	o->dev.scale = o->d_scale;
	o->dev.slices[0].a = o->d_a;
	o->dev.slices[0].b = o->d_b;
	o->dev.slices[0].rank = o->d_rank;
}

static void op_free(struct op *o)
{
	cudaFree(o->weights);
	cudaFree(o->d_a);
	cudaFree(o->d_b);
	cudaFree(o->d_rank);
	cudaFree(o->d_scale);
}

/* Buffers every run shares. */
static void *x_d, *y_d, *ws_d, *v16_d, *tok_d, *seg_d;
static size_t ws_size;
static cublasHandle_t handle;

/* One call of lsk_cuda_apply_ex. */
struct call {
	struct op *op;
	lsk_batch dbatch, hbatch;
	cublasHandle_t handle;
	int32_t min_tokens;
};

static void run_call(void *ctx)
{
	struct call *c = ctx;
	int rc = lsk_cuda_apply_ex(&c->op->dev, &c->op->host, &c->dbatch, &c->hbatch, x_d, y_d, ws_d,
	                           ws_size, stream, c->handle, c->min_tokens);
	if (rc) {
		fprintf(stderr, "bench_kernels_cuda: lsk_cuda_apply: %s\n", ls_strerror(rc));
		exit(1);
	}
}

/* Decode: token t uses adapter t % n_distinct. */
static struct call decode_call(struct op *o, int n_tokens, int n_distinct)
{
	int32_t tok[MAX_TOKENS];
	for (int t = 0; t < n_tokens; t++)
		tok[t] = t % n_distinct;
	CK(cudaMemcpy(tok_d, tok, sizeof(int32_t) * n_tokens, cudaMemcpyHostToDevice));
	struct call c = {.op = o, .min_tokens = LSK_CUDA_CUBLAS_MIN_TOKENS};
	c.dbatch = (lsk_batch){.n_tokens = n_tokens, .token_adapter = tok_d};
	c.hbatch = (lsk_batch){.n_tokens = n_tokens};
	return c;
}

static lsk_segment host_seg;

/* Prefill: one segment of n_tokens tokens with adapter 0. */
static struct call prefill_call(struct op *o, int n_tokens, cublasHandle_t h, int32_t min_tokens)
{
	host_seg = (lsk_segment){0, n_tokens, 0};
	CK(cudaMemcpy(seg_d, &host_seg, sizeof(host_seg), cudaMemcpyHostToDevice));
	struct call c = {.op = o, .handle = h, .min_tokens = min_tokens};
	c.dbatch = (lsk_batch){.n_tokens = n_tokens, .n_segments = 1, .segments = seg_d};
	c.hbatch = (lsk_batch){.n_tokens = n_tokens, .n_segments = 1, .segments = &host_seg};
	return c;
}

/* The same two products with cublasGemmEx alone: v = x A^T rounded to
 * BF16, then y += v B^T (see kernels/cuda/cublas_path.cu for the mapping of
 * row-major products to column-major calls). */
struct gemm_ref {
	struct op *op;
	int n_tokens;
};

static void run_gemm_ref(void *ctx)
{
	struct gemm_ref *g = ctx;
	const float one = 1.0f, zero = 0.0f;
	const int r = g->op->rank;
	CKB(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, r, g->n_tokens, DIM, &one, g->op->a[0],
	                 CUDA_R_16BF, DIM, x_d, CUDA_R_16BF, DIM, &zero, v16_d, CUDA_R_16BF, r,
	                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	CKB(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, DIM, g->n_tokens, r, &one, g->op->b[0],
	                 CUDA_R_16BF, r, v16_d, CUDA_R_16BF, r, &one, y_d, CUDA_R_16BF, DIM,
	                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static void run_copy(void *ctx)
{
	void **p = ctx;
	CK(cudaMemcpyAsync(p[0], p[1], (size_t)256 << 20, cudaMemcpyDeviceToDevice, stream));
}

/* ------------------------------------------------------------------ */

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	char why[256] = "";
	int rc = lsk_cuda_available_impl(why, sizeof(why));
	if (rc != 0) {
		printf("bench_kernels_cuda: no CUDA device (%s: %s), skipped\n", ls_strerror(rc), why);
		return 0;
	}
	int dev = 0;
	struct cudaDeviceProp prop;
	CK(cudaGetDevice(&dev));
	CK(cudaGetDeviceProperties(&prop, dev));
	printf("device: %s, %d SMs, %.0f GiB\n", prop.name, prop.multiProcessorCount,
	       (double)prop.totalGlobalMem / (1 << 30));

	CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
	CK(cudaEventCreate(&ev0));
	CK(cudaEventCreate(&ev1));
	CKB(cublasCreate(&handle));

	/* Copy floor. */
	void *cp[2];
	CK(cudaMalloc(&cp[0], (size_t)256 << 20));
	CK(cudaMalloc(&cp[1], (size_t)256 << 20));
	CK(cudaMemset(cp[1], 1, (size_t)256 << 20));
	const double copy_gbps = 2.0 * (double)(256 << 20) / time_call(run_copy, cp) / 1e9;
	cudaFree(cp[0]);
	cudaFree(cp[1]);
	printf("\ncopy: device-to-device cudaMemcpy, 256 MiB: %.0f GB/s (read + write)\n", copy_gbps);

	CK(cudaMalloc(&x_d, (size_t)MAX_TOKENS * DIM * 2));
	CK(cudaMalloc(&y_d, (size_t)MAX_TOKENS * DIM * 2));
	CK(cudaMalloc(&v16_d, (size_t)MAX_TOKENS * 64 * 2));
	CK(cudaMalloc(&tok_d, sizeof(int32_t) * MAX_TOKENS));
	CK(cudaMalloc(&seg_d, sizeof(lsk_segment)));
	fill_random(x_d, (size_t)MAX_TOKENS * DIM);
	fill_random(y_d, (size_t)MAX_TOKENS * DIM);

	static const int ranks[2] = {16, 64};
	struct op ops[2];
	for (int i = 0; i < 2; i++) {
		op_init(&ops[i], MAX_ADAPTERS, ranks[i]);
		size_t need = lsk_workspace_size(&ops[i].host, MAX_TOKENS);
		if (need > ws_size)
			ws_size = need;
	}
	CK(cudaMalloc(&ws_d, ws_size));

	/* Decode bandwidth. */
	printf("\ndecode (BF16, in = out = %d): GB/s of the bytes touched, %% of the copy floor\n", DIM);
	printf("  rank  batch  adapters      us     GB/s   %%copy\n");
	double best_decode = 0, best_pct = 0;
	int best_rank = 0, best_batch = 0, best_ad = 0;
	static const int dec_batch[] = {64, 256};
	static const int dec_ad[] = {8, 64};
	for (int ri = 0; ri < 2; ri++) {
		for (int bi = 0; bi < 2; bi++) {
			for (int ai = 0; ai < 2; ai++) {
				const int T = dec_batch[bi], na = dec_ad[ai], r = ranks[ri];
				struct call c = decode_call(&ops[ri], T, na);
				double t = time_call(run_call, &c);
				double bytes = (double)na * 2.0 * r * DIM * 2 + (double)T * DIM * 2 +
				               2.0 * T * DIM * 2 + 2.0 * T * r * 4;
				double gbps = bytes / t / 1e9, pct = 100.0 * gbps / copy_gbps;
				printf("  %4d  %5d  %8d  %6.1f  %7.0f  %5.0f%%\n", r, T, na, t * 1e6, gbps, pct);
				if (gbps > best_decode) {
					best_decode = gbps;
					best_pct = pct;
					best_rank = r;
					best_batch = T;
					best_ad = na;
				}
			}
		}
	}

	/* Prefill throughput and the crossover. */
	printf("\nprefill (one segment, one adapter, BF16, in = out = %d): TFLOP/s\n", DIM);
	printf("  rank    len   kernels  cuBLAS path  GemmEx alone  path/GemmEx  faster\n");
	static const int lens[] = {8, 16, 32, 48, 64, 96, 128, 256, 512, 1024, 2048};
	const int n_lens = (int)(sizeof(lens) / sizeof(lens[0]));
	int crossover[2] = {0, 0};
	double long_path[2] = {0, 0}, long_gemm[2] = {0, 0}, long_kern[2] = {0, 0};
	for (int ri = 0; ri < 2; ri++) {
		const int r = ranks[ri];
		bool cublas_faster[sizeof(lens) / sizeof(lens[0])];
		for (int li = 0; li < n_lens; li++) {
			const int L = lens[li];
			struct call ck = prefill_call(&ops[ri], L, NULL, INT32_MAX);
			double tk = time_call(run_call, &ck);
			struct call cb = prefill_call(&ops[ri], L, handle, 1);
			double tb = time_call(run_call, &cb);
			struct gemm_ref g = {&ops[ri], L};
			CKB(cublasSetStream(handle, stream));
			double tg = time_call(run_gemm_ref, &g);
			const double flop = 2.0 * L * DIM * r * 2;
			cublas_faster[li] = tb < tk;
			printf("  %4d  %5d  %8.2f  %11.2f  %12.2f  %10.0f%%  %s\n", r, L, flop / tk / 1e12,
			       flop / tb / 1e12, flop / tg / 1e12, 100.0 * tg / tb,
			       tb < tk ? "cuBLAS" : "kernels");
			if (li == n_lens - 1) {
				long_kern[ri] = flop / tk / 1e12;
				long_path[ri] = flop / tb / 1e12;
				long_gemm[ri] = flop / tg / 1e12;
			}
		}
		/* The shortest length from which cuBLAS wins at every longer one. */
		crossover[ri] = -1;
		for (int li = n_lens - 1; li >= 0 && cublas_faster[li]; li--)
			crossover[ri] = lens[li];
	}

	/* Per-layer latency. */
	printf("\nlatency per layer (decode, BF16, in = out = %d), us\n", DIM);
	printf("  rank  adapters   b=1    b=4   b=16   b=64  b=256\n");
	static const int lat_batch[] = {1, 4, 16, 64, 256};
	static const int lat_ad[] = {1, 8, 64};
	for (int ri = 0; ri < 2; ri++) {
		for (int ai = 0; ai < 3; ai++) {
			printf("  %4d  %8d", ranks[ri], lat_ad[ai]);
			for (int bi = 0; bi < 5; bi++) {
				struct call c = decode_call(&ops[ri], lat_batch[bi], lat_ad[ai]);
				printf("  %5.1f", time_call(run_call, &c) * 1e6);
			}
			printf("\n");
		}
	}

	CK(cudaStreamSynchronize(stream));
	CK(cudaGetLastError());

	printf("\nSUMMARY copy_gbps=%.0f\n", copy_gbps);
	printf("SUMMARY decode_gbps=%.0f pct_of_copy=%.0f (rank %d, batch %d, %d adapters; target 70)\n",
	       best_decode, best_pct, best_rank, best_batch, best_ad);
	for (int ri = 0; ri < 2; ri++)
		printf("SUMMARY prefill rank=%d len=%d kernels_tflops=%.2f cublas_path_tflops=%.2f "
		       "gemmex_tflops=%.2f pct_of_gemmex=%.0f (target 50)\n",
		       ranks[ri], lens[n_lens - 1], long_kern[ri], long_path[ri], long_gemm[ri],
		       100.0 * long_path[ri] / long_gemm[ri]);
	printf("SUMMARY crossover rank16=%d rank64=%d threshold=%d (-1: cuBLAS never stays faster)\n",
	       crossover[0], crossover[1], LSK_CUDA_CUBLAS_MIN_TOKENS);

	for (int i = 0; i < 2; i++)
		op_free(&ops[i]);
	cublasDestroy(handle);
	cudaFree(x_d);
	cudaFree(y_d);
	cudaFree(ws_d);
	cudaFree(v16_d);
	cudaFree(tok_d);
	cudaFree(seg_d);
	cudaEventDestroy(ev0);
	cudaEventDestroy(ev1);
	cudaStreamDestroy(stream);
	return 0;
}
