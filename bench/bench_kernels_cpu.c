/*
 * The optimized CPU LoRA kernel (lsk_cpu_apply) against two yardsticks
 * measured in the same run on the same machine:
 *
 *   floor   the memory-bandwidth floor: the bytes a call must move (every
 *           weight of every adapter it touches, x read, y read and written)
 *           divided by a STREAM-like copy rate over buffers larger than the
 *           last-level cache (copy bytes counted as read + written, the
 *           STREAM convention; the best of several runs, so the floor is
 *           the strictest one);
 *   sgemm   the same product with OpenBLAS cblas_sgemm on F32 copies of the
 *           inputs, two calls per adapter group (V = X_g A^T, then
 *           Y_g += scale V B^T), with the tokens of each group already
 *           contiguous (a gather the kernel does itself is not timed there).
 *
 * Two more rates give the floor its context: a read-only pass over the same
 * buffers (decode is nearly all reads, and one core reads slower than a
 * copy moves), and the peak FMA rate of the cores (a loop of independent
 * 8-lane fused multiply-adds in registers): "fma us" is the time the call's
 * arithmetic takes at that peak, so where it exceeds the floor, the floor
 * cannot be reached with these threads.  "roof%" compares the call with the
 * larger of the two (a roofline: bytes at the copy rate, or FLOPs at the
 * FMA peak, whichever takes longer).
 *
 * Shape: one projection 4096 -> 4096, rank 16, BF16 activations and BF16
 * weights (a Llama-7B-like layer).  Decode: one token per request, requests
 * assigned to adapters round-robin (so the kernel must group them).
 * Prefill: segments of 128 to 512 tokens.
 *
 * Weights are cold, as they are in a model whose every layer has its own
 * adapters: each call uses the next adapters of a pool twice the size of the
 * last-level cache, so they come from memory, not from cache.  Activations
 * stay hot (they are small and just written by the previous layer), yet the
 * floor counts them at memory speed, which only makes the floor stricter.
 *
 * Times are the median of per-call wall clock (CLOCK_MONOTONIC) after
 * warm-up calls.  GB = 10^9 bytes; GFLOP/s counts 2 * T * r * (in + out).
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_args.h"
#include "lsk.h"

#define BENCH_IN 4096
#define BENCH_OUT 4096
#define BENCH_RANK 16
#define BENCH_ACT LSK_BF16
#define BENCH_WEIGHT LSK_BF16

struct bench_args {
	bool quick;
	int threads;
};

struct bench_pool {
	size_t n;          /* adapters in the pool */
	void **a, **b;     /* [n] A and B in the weight dtype */
	float **af, **bf;  /* [n] F32 copies for sgemm (a pool of its own size) */
	size_t nf;
};

struct bench_row {
	const char *kind;
	int64_t tokens;
	int adapters;
	double ours_s;     /* median seconds per call */
	double floor_s;
	double fma_s;      /* the call's FLOPs at the peak FMA rate, 0: unknown */
	double sgemm_s;
	double bytes;
	double flops;
};

static double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t bench_rng = 0x5eedbe11c0ffeeull;

static uint64_t bench_next(void)
{
	uint64_t z = (bench_rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* A uniform value in [-amp, amp). */
static float bench_value(double amp)
{
	return (float)(amp * ((double)(bench_next() >> 11) * 0x1p-52 - 1.0));
}

/* The BF16 of f, truncated (benchmark data: its rounding does not matter). */
static uint16_t bench_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return (uint16_t)(u >> 16);
}

static float bench_bf16_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static void *bench_alloc(size_t n)
{
	void *p = aligned_alloc(64, (n + 63) / 64 * 64);
	if (!p) {
		fprintf(stderr, "out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

static int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double bench_median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- the copy rate ---- */

struct bench_copy_part {
	char *dst;
	const char *src;
	size_t len;
};

static void *bench_copy_thread(void *arg)
{
	struct bench_copy_part *p = arg;
	memcpy(p->dst, p->src, p->len);
	return NULL;
}

/* Bytes per second of a copy of len bytes by n threads (read + written). */
static double bench_copy_rate(size_t len, int threads, int reps)
{
	char *src = bench_alloc(len), *dst = bench_alloc(len);
	memset(src, 1, len);
	memset(dst, 2, len);
	double best = 0;
	for (int r = 0; r < reps; r++) {
		struct bench_copy_part parts[64];
		pthread_t tid[64];
		int n = threads < 64 ? threads : 64;
		size_t chunk = len / (size_t)n / 64 * 64;
		double t0 = bench_now();
		for (int i = 0; i < n; i++) {
			parts[i].dst = dst + (size_t)i * chunk;
			parts[i].src = src + (size_t)i * chunk;
			parts[i].len = i == n - 1 ? len - (size_t)i * chunk : chunk;
			if (n > 1)
				pthread_create(&tid[i], NULL, bench_copy_thread, &parts[i]);
		}
		if (n == 1)
			bench_copy_thread(&parts[0]);
		for (int i = 0; n > 1 && i < n; i++)
			pthread_join(tid[i], NULL);
		double rate = 2.0 * (double)len / (bench_now() - t0);
		if (rate > best)
			best = rate;
	}
	free(src);
	free(dst);
	return best;
}

struct bench_read_part {
	const uint64_t *p;
	size_t n;
	uint64_t sum;
};

static void *bench_read_thread(void *arg)
{
	struct bench_read_part *r = arg;
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i + 4 <= r->n; i += 4) {
		s0 += r->p[i];
		s1 += r->p[i + 1];
		s2 += r->p[i + 2];
		s3 += r->p[i + 3];
	}
	r->sum = s0 + s1 + s2 + s3;
	return NULL;
}

/* Bytes per second of one read-only pass over len bytes by n threads. */
static double bench_read_rate(size_t len, int threads, int reps)
{
	uint64_t *buf = bench_alloc(len);
	memset(buf, 3, len);
	double best = 0;
	uint64_t keep = 0;
	for (int r = 0; r < reps; r++) {
		struct bench_read_part parts[64];
		pthread_t tid[64];
		int n = threads < 64 ? threads : 64;
		size_t words = len / 8, chunk = words / (size_t)n;
		double t0 = bench_now();
		for (int i = 0; i < n; i++) {
			parts[i].p = buf + (size_t)i * chunk;
			parts[i].n = i == n - 1 ? words - (size_t)i * chunk : chunk;
			if (n > 1)
				pthread_create(&tid[i], NULL, bench_read_thread, &parts[i]);
		}
		if (n == 1)
			bench_read_thread(&parts[0]);
		for (int i = 0; n > 1 && i < n; i++)
			pthread_join(tid[i], NULL);
		double rate = (double)len / (bench_now() - t0);
		for (int i = 0; i < n; i++)
			keep += parts[i].sum;
		if (rate > best)
			best = rate;
	}
	free(buf);
	if (keep == 42)
		fprintf(stderr, "(sum %llu)\n", (unsigned long long)keep);
	return best;
}

/* ---- the peak FMA rate ---- */

#if defined(__x86_64__) && defined(__GNUC__)
typedef float bench_v8f __attribute__((vector_size(32)));

/* FLOP/s of one core: ten independent chains of 8-lane FMAs, kept in
 * registers (the empty asm hides the values from the optimizer). */
__attribute__((target("avx2,fma"))) static void *bench_fma_thread(void *arg)
{
	double *flops = arg;
	bench_v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0},
		  a7 = {0}, a8 = {0}, a9 = {0};
	bench_v8f m = {1, 1, 1, 1, 1, 1, 1, 1}, c = {0};
	const long n = 20000000;
	double t0 = bench_now();
	for (long i = 0; i < n; i++) {
		__asm__ volatile("" : "+x"(m), "+x"(c));
		a0 = a0 * m + c;
		a1 = a1 * m + c;
		a2 = a2 * m + c;
		a3 = a3 * m + c;
		a4 = a4 * m + c;
		a5 = a5 * m + c;
		a6 = a6 * m + c;
		a7 = a7 * m + c;
		a8 = a8 * m + c;
		a9 = a9 * m + c;
		__asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
				 "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9));
	}
	*flops = (double)n * 10 * 16 / (bench_now() - t0);
	return NULL;
}
#endif

/* FLOP/s of `threads` cores together; 0 where this build cannot measure it. */
static double bench_fma_rate(int threads)
{
#if defined(__x86_64__) && defined(__GNUC__)
	if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
		return 0;
	double best = 0;
	for (int r = 0; r < 3; r++) {
		double rate[64] = {0};
		pthread_t tid[64];
		int n = threads < 64 ? threads : 64;
		for (int i = 0; i < n; i++)
			pthread_create(&tid[i], NULL, bench_fma_thread, &rate[i]);
		double total = 0;
		for (int i = 0; i < n; i++) {
			pthread_join(tid[i], NULL);
			total += rate[i];
		}
		if (total > best)
			best = total;
	}
	return best;
#else
	(void)threads;
	return 0;
#endif
}

/* ---- data ---- */

static size_t bench_adapter_bytes(lsk_dtype dt)
{
	return (size_t)BENCH_RANK * (BENCH_IN + BENCH_OUT) * lsk_dtype_size(dt);
}

static void bench_pool_init(struct bench_pool *p, size_t bytes)
{
	p->n = bytes / bench_adapter_bytes(BENCH_WEIGHT);
	p->nf = bytes / bench_adapter_bytes(LSK_F32);
	p->a = calloc(p->n, sizeof(void *));
	p->b = calloc(p->n, sizeof(void *));
	p->af = calloc(p->nf, sizeof(float *));
	p->bf = calloc(p->nf, sizeof(float *));
	if (!p->a || !p->b || !p->af || !p->bf) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	size_t na = (size_t)BENCH_RANK * BENCH_IN, nb = (size_t)BENCH_OUT * BENCH_RANK;
	for (size_t i = 0; i < p->n; i++) {
		uint16_t *a = bench_alloc(na * 2), *b = bench_alloc(nb * 2);
		for (size_t k = 0; k < na; k++)
			a[k] = bench_bf16(bench_value(1.0 / 64));
		for (size_t k = 0; k < nb; k++)
			b[k] = bench_bf16(bench_value(0.25));
		p->a[i] = a;
		p->b[i] = b;
	}
	/* The F32 pool holds the same values as the first adapters of the BF16
	 * pool, so that the two paths compute the same product. */
	for (size_t i = 0; i < p->nf; i++) {
		float *a = bench_alloc(na * 4), *b = bench_alloc(nb * 4);
		const uint16_t *sa = p->a[i % p->n], *sb = p->b[i % p->n];
		for (size_t k = 0; k < na; k++)
			a[k] = bench_bf16_f32(sa[k]);
		for (size_t k = 0; k < nb; k++)
			b[k] = bench_bf16_f32(sb[k]);
		p->af[i] = a;
		p->bf[i] = b;
	}
}

static void bench_pool_free(struct bench_pool *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->a[i]);
		free(p->b[i]);
	}
	for (size_t i = 0; i < p->nf; i++) {
		free(p->af[i]);
		free(p->bf[i]);
	}
	free(p->a);
	free(p->b);
	free(p->af);
	free(p->bf);
}

/* One call's operation: adapters g of the pool starting at base. */
struct bench_call {
	lsk_lora l;
	const void *a[64], *b[64];
	int32_t rank[64];
	float scale[64];
};

static void bench_call_init(struct bench_call *c, const struct bench_pool *p, size_t base,
			    int adapters)
{
	memset(c, 0, sizeof(*c));
	for (int i = 0; i < adapters; i++) {
		size_t k = (base + (size_t)i) % p->n;
		c->a[i] = p->a[k];
		c->b[i] = p->b[k];
		c->rank[i] = BENCH_RANK;
		c->scale[i] = 2.0f;
	}
	c->l = (lsk_lora){
		.act_dtype = BENCH_ACT,
		.weight_dtype = BENCH_WEIGHT,
		.in = BENCH_IN,
		.ldx = BENCH_IN,
		.ldy = BENCH_OUT,
		.n_adapters = adapters,
		.max_rank = BENCH_RANK,
		.scale = c->scale,
		.n_slices = 1,
	};
	c->l.slices[0] = (lsk_slice){.a = c->a, .b = c->b, .rank = c->rank, .out = BENCH_OUT};
}

/* One case of the table: its batch and, for sgemm, its adapter groups. */
struct bench_spec {
	const char *kind;
	int64_t tokens;
	int adapters;
	int32_t *idx;               /* decode: adapter of each token, or NULL */
	lsk_segment seg[64];        /* prefill: segment i on adapter i */
	int n_seg;
	int64_t start[64], len[64]; /* adapter i's tokens, contiguous for sgemm */
};

/* Decode: T requests, one token each, token t on adapter t mod adapters. */
static void bench_spec_decode(struct bench_spec *c, int64_t T, int adapters)
{
	memset(c, 0, sizeof(*c));
	c->kind = "decode";
	c->tokens = T;
	c->adapters = adapters;
	c->idx = calloc((size_t)T, sizeof(int32_t));
	if (!c->idx) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	for (int64_t t = 0; t < T; t++)
		c->idx[t] = (int32_t)(t % adapters);
	/* For sgemm the tokens of each adapter are taken as already contiguous. */
	for (int i = 0; i < adapters; i++) {
		c->len[i] = T / adapters + (i < T % adapters);
		c->start[i] = i ? c->start[i - 1] + c->len[i - 1] : 0;
	}
}

/* Prefill: segments of the given lengths, segment i on adapter i. */
static void bench_spec_prefill(struct bench_spec *c, const int *lens, int n)
{
	memset(c, 0, sizeof(*c));
	c->kind = "prefill";
	c->adapters = n;
	c->n_seg = n;
	for (int i = 0; i < n; i++) {
		c->seg[i] = (lsk_segment){.start = (int32_t)c->tokens, .len = lens[i], .adapter = i};
		c->start[i] = c->tokens;
		c->len[i] = lens[i];
		c->tokens += lens[i];
	}
}

/* x in BF16 and in F32 (the same values), y in both, zero. */
struct bench_data {
	uint16_t *x, *y;
	float *xf, *yf, *vf;
};

static void bench_data_init(struct bench_data *d, int64_t T)
{
	size_t asz = lsk_dtype_size(BENCH_ACT);
	d->x = bench_alloc((size_t)T * BENCH_IN * asz);
	d->y = bench_alloc((size_t)T * BENCH_OUT * asz);
	d->xf = bench_alloc((size_t)T * BENCH_IN * 4);
	d->yf = bench_alloc((size_t)T * BENCH_OUT * 4);
	d->vf = bench_alloc((size_t)T * BENCH_RANK * 4);
	for (int64_t i = 0; i < T * BENCH_IN; i++) {
		d->x[i] = bench_bf16(bench_value(1.0));
		d->xf[i] = bench_bf16_f32(d->x[i]);
	}
	memset(d->y, 0, (size_t)T * BENCH_OUT * asz);
	memset(d->yf, 0, (size_t)T * BENCH_OUT * 4);
}

static void bench_data_free(struct bench_data *d)
{
	free(d->x);
	free(d->y);
	free(d->xf);
	free(d->yf);
	free(d->vf);
}

#define BENCH_WARM 2

static double *bench_times(int reps)
{
	double *t = calloc((size_t)reps, sizeof(double));
	if (!t) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	return t;
}

/* Median seconds of `reps` calls of lsk_cpu_apply, the adapters of each call
 * the next ones of the pool. */
static double bench_run_ours(const struct bench_spec *c, const struct bench_pool *p,
			     int threads, int reps)
{
	struct bench_data d;
	bench_data_init(&d, c->tokens);
	lsk_batch b = {.n_tokens = c->tokens};
	if (c->idx) {
		b.token_adapter = c->idx;
	} else {
		b.segments = c->seg;
		b.n_segments = c->n_seg;
	}
	struct bench_call call;
	bench_call_init(&call, p, 0, c->adapters);
	size_t wsz = lsk_workspace_size(&call.l, c->tokens);
	void *ws = bench_alloc(wsz);
	double *t = bench_times(reps);
	size_t base = 0;
	for (int r = -BENCH_WARM; r < reps; r++) {
		bench_call_init(&call, p, base, c->adapters);
		base += (size_t)c->adapters;
		double t0 = bench_now();
		int rc = lsk_cpu_apply(&call.l, &b, d.x, d.y, ws, wsz, threads);
		double t1 = bench_now();
		if (rc) {
			fprintf(stderr, "lsk_cpu_apply: %d\n", rc);
			exit(1);
		}
		if (r >= 0)
			t[r] = t1 - t0;
	}
	double med = bench_median(t, reps);
	free(t);
	free(ws);
	bench_data_free(&d);
	return med;
}

/* Median seconds of `reps` runs of the same product with sgemm, on F32. */
static double bench_run_sgemm(const struct bench_spec *c, const struct bench_pool *p, int reps)
{
	struct bench_data d;
	bench_data_init(&d, c->tokens);
	double *t = bench_times(reps);
	size_t base = 0;
	for (int r = -BENCH_WARM; r < reps; r++) {
		double t0 = bench_now();
		for (int i = 0; i < c->adapters; i++) {
			size_t k = (base + (size_t)i) % p->nf;
			int n = (int)c->len[i];
			const float *xg = d.xf + c->start[i] * BENCH_IN;
			float *yg = d.yf + c->start[i] * BENCH_OUT;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, BENCH_RANK, BENCH_IN,
				    1.0f, xg, BENCH_IN, p->af[k], BENCH_IN, 0.0f, d.vf, BENCH_RANK);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, BENCH_OUT, BENCH_RANK,
				    2.0f, d.vf, BENCH_RANK, p->bf[k], BENCH_RANK, 1.0f, yg, BENCH_OUT);
		}
		double t1 = bench_now();
		base += (size_t)c->adapters;
		if (r >= 0)
			t[r] = t1 - t0;
	}
	double med = bench_median(t, reps);
	free(t);
	bench_data_free(&d);
	return med;
}

/* The row of a case from its two medians and the machine's rates. */
static void bench_fill_row(struct bench_row *row, const struct bench_spec *c, double copy_rate,
			   double fma_rate)
{
	double asz = (double)lsk_dtype_size(BENCH_ACT);
	row->kind = c->kind;
	row->tokens = c->tokens;
	row->adapters = c->adapters;
	row->bytes = (double)c->adapters * (double)bench_adapter_bytes(BENCH_WEIGHT) +
		     (double)c->tokens * asz * (BENCH_IN + 2.0 * BENCH_OUT);
	row->floor_s = row->bytes / copy_rate;
	row->flops = 2.0 * (double)c->tokens * BENCH_RANK * (BENCH_IN + BENCH_OUT);
	row->fma_s = fma_rate > 0 ? row->flops / fma_rate : 0;
}

static void bench_print_header(void)
{
	printf("%-8s %6s %8s | %9s %7s %9s %7s %8s %7s %8s | %9s %8s %8s\n", "case", "tokens",
	       "adapters", "ours us", "GB/s", "floor us", "floor%", "fma us", "roof%", "GFLOP/s",
	       "sgemm us", "GFLOP/s", "vs sgemm");
}

static void bench_print_row(const struct bench_row *r)
{
	double roof_s = r->fma_s > r->floor_s ? r->fma_s : r->floor_s;
	printf("%-8s %6lld %8d | %9.1f %7.2f %9.1f %6.0f%% %8.1f %6.0f%% %8.2f | %9.1f %8.2f "
	       "%7.2fx\n",
	       r->kind, (long long)r->tokens, r->adapters, r->ours_s * 1e6,
	       r->bytes / r->ours_s / 1e9, r->floor_s * 1e6, 100.0 * r->floor_s / r->ours_s,
	       r->fma_s * 1e6, 100.0 * roof_s / r->ours_s, r->flops / r->ours_s / 1e9,
	       r->sgemm_s * 1e6, r->flops / r->sgemm_s / 1e9, r->sgemm_s / r->ours_s);
}

static void bench_usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--quick] [--threads N]\n"
		"\n"
		"Time lsk_cpu_apply (in %d, out %d, rank %d, %s activations, %s weights)\n"
		"for decode and prefill batches against the memory-bandwidth floor and\n"
		"OpenBLAS sgemm, measured in the same run.\n"
		"\n"
		"Columns: floor%% is the floor's time over ours; fma us is the call's\n"
		"FLOPs at the measured peak FMA rate; roof%% is the larger of the floor\n"
		"and fma us over ours.  The last line says whether every decode case\n"
		"reaches 50%% of its floor.\n"
		"\n"
		"  --quick      fewer cases and repetitions, a smaller weight pool (smoke run)\n"
		"  --threads N  threads for lsk_cpu_apply, OpenBLAS and the copy (default 1)\n"
		"  --help       this text\n",
		argv0, BENCH_IN, BENCH_OUT, BENCH_RANK, lsk_dtype_name(BENCH_ACT),
		lsk_dtype_name(BENCH_WEIGHT));
}

static int bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option longopts[] = {
		{"quick", no_argument, NULL, 'q'},
		{"threads", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	a->quick = false;
	a->threads = 1;
	int c;
	while ((c = getopt_long(argc, argv, "qt:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'q':
			a->quick = true;
			break;
		case 't': {
			unsigned long long v;
			if (!bench_parse_num(optarg, 1, 64, &v)) {
				fprintf(stderr, "%s: --threads wants 1 to 64\n", argv[0]);
				return 2;
			}
			a->threads = (int)v;
			break;
		}
		case 'h':
			bench_usage(stdout, argv[0]);
			return 1;
		default:
			bench_usage(stderr, argv[0]);
			return 2;
		}
	}
	if (optind != argc) {
		bench_usage(stderr, argv[0]);
		return 2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct bench_args args;
	setvbuf(stdout, NULL, _IOLBF, 0);
	int prc = bench_parse(argc, argv, &args);
	if (prc)
		return prc == 1 ? 0 : prc;
	openblas_set_num_threads(args.threads);

	long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
	if (llc <= 0)
		llc = 32L << 20;
	/* Twice the last-level cache, at least 64 MiB, at most 1 GiB. */
	size_t big = (size_t)llc * 2;
	if (big < (64u << 20))
		big = 64u << 20;
	if (big > (1u << 30))
		big = 1u << 30;
	if (args.quick)
		big = 64u << 20;
	int reps = args.quick ? 5 : 21;

	double copy_rate = bench_copy_rate(big, args.threads, args.quick ? 3 : 7);
	double read_rate = bench_read_rate(big, args.threads, args.quick ? 3 : 7);
	double fma_rate = bench_fma_rate(args.threads);
	struct bench_pool pool;
	double t0 = bench_now();
	bench_pool_init(&pool, big);
	fprintf(stderr, "pool of %zu adapters (%.0f MB) and %zu F32 copies built in %.1f s\n",
		pool.n, (double)pool.n * (double)bench_adapter_bytes(BENCH_WEIGHT) / 1e6, pool.nf,
		bench_now() - t0);

	printf("bench_kernels_cpu: in %d, out %d, rank %d, one slice, %s activations, %s weights, "
	       "%d thread(s)%s\n",
	       BENCH_IN, BENCH_OUT, BENCH_RANK, lsk_dtype_name(BENCH_ACT),
	       lsk_dtype_name(BENCH_WEIGHT), args.threads, args.quick ? ", quick" : "");
	printf("cpu: avx2 %s, fma %s, f16c %s; last-level cache %.0f MB (sysconf); "
	       "weights cold: a %.0f MB pool\n",
	       __builtin_cpu_supports("avx2") ? "yes" : "no",
	       __builtin_cpu_supports("fma") ? "yes" : "no",
	       __builtin_cpu_supports("f16c") ? "yes" : "no", (double)llc / 1e6,
	       (double)big / 1e6);
	printf("copy rate %.2f GB/s (read + write, %.0f MB buffers, best of runs); "
	       "floor = bytes / copy rate; floor%% = floor time / our time\n",
	       copy_rate / 1e9, (double)big / 1e6);
	printf("read-only rate %.2f GB/s (for context: decode reads); peak FMA rate %.1f GFLOP/s "
	       "(fma us = FLOPs at that rate)\n",
	       read_rate / 1e9, fma_rate / 1e9);
	printf("median of %d calls after %d warm-up calls\n\n", reps, BENCH_WARM);
	bench_print_header();

	/* The cases; every lorastore run first, then every sgemm run, so that
	 * neither library's idle threads (OpenBLAS spins for a while after a
	 * call) compete with the other's. */
	static const int dec_tokens[] = {1, 4, 16, 64, 256};
	static const int dec_adapters[] = {1, 8, 64};
	static const int pf1[] = {512};
	static const int pf4[] = {256, 256, 256, 256};
	static const int pf8[] = {128, 512, 384, 192, 448, 256, 320, 160};
	struct bench_spec specs[20];
	int n = 0;
	for (size_t i = 0; i < sizeof(dec_tokens) / sizeof(dec_tokens[0]); i++)
		for (size_t j = 0; j < sizeof(dec_adapters) / sizeof(dec_adapters[0]); j++)
			if (dec_adapters[j] <= dec_tokens[i] && !(args.quick && dec_tokens[i] > 64))
				bench_spec_decode(&specs[n++], dec_tokens[i], dec_adapters[j]);
	bench_spec_prefill(&specs[n++], pf1, 1);
	if (!args.quick) {
		bench_spec_prefill(&specs[n++], pf4, 4);
		bench_spec_prefill(&specs[n++], pf8, 8);
	}
	struct bench_row rows[20];
	for (int i = 0; i < n; i++) {
		bench_fill_row(&rows[i], &specs[i], copy_rate, fma_rate);
		rows[i].ours_s = bench_run_ours(&specs[i], &pool, args.threads, reps);
	}
	for (int i = 0; i < n; i++)
		rows[i].sgemm_s = bench_run_sgemm(&specs[i], &pool, reps);

	double worst = 1e9;
	int n_decode = 0, n_compute = 0, n_met = 0;
	for (int i = 0; i < n; i++) {
		bench_print_row(&rows[i]);
		if (specs[i].idx) {
			double frac = rows[i].floor_s / rows[i].ours_s;
			if (frac < worst)
				worst = frac;
			n_decode++;
			n_met += frac >= 0.5;
			/* At the peak FMA rate the call would still take more than
			 * twice its floor: 50% of the floor is out of reach. */
			if (rows[i].fma_s > 2.0 * rows[i].floor_s)
				n_compute++;
		}
		free(specs[i].idx);
	}
	printf("\ndecode target (every decode case at >= 50%% of its floor): %s "
	       "(%d of %d cases at >= 50%%, worst %.0f%%; in %d of them fma us > 2 x floor us, "
	       "so the target is out of reach at the peak FMA rate)\n",
	       worst >= 0.5 ? "met" : "NOT met", n_met, n_decode, 100.0 * worst, n_compute);
	bench_pool_free(&pool);
	return 0;
}
