/*
 * lorastore_plan_create and lorastore_apply through a real lorastored: two
 * adapters of different ranks, acquired by a client, applied to one batch.
 * The oracle is a float64 product computed here from the tensors' bytes and
 * from the scale the synthetic config implies (alpha / r), not from what the
 * plan looked up.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lorastore.h>

#include "daemon_proc.h"
#include "dtype.h"
#include "synth.h"

/* Llama synth: hidden 64, 4 heads, 2 kv heads: q is 64 wide, k and v 32. */
#define HIDDEN 64
#define KV 32
#define QKV (HIDDEN + 2 * KV)

static struct ls_daemon_proc dp;
static char *work_dir;
static lorastore *conn;

static void setup(void)
{
	work_dir = synth_mkdtemp("apply");
	const char *args[] = {"--host-budget", "64MiB", NULL};
	cr_assert_eq(ls_daemon_start(&dp, NULL, args), 0, "the daemon did not start");
	cr_assert_eq(lorastore_connect(dp.socket, &conn), 0, "connect: %s", lorastore_errmsg(conn));
}

static void teardown(void)
{
	lorastore_close(conn);
	cr_expect_eq(ls_daemon_stop(&dp), 0, "lorastored did not exit 0");
	ls_daemon_cleanup(&dp);
	synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(apply, .init = setup, .fini = teardown, .timeout = 60);

static lorastore_adapter *import_and_acquire(const char *name, const struct synth_opts *o)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/%s", work_dir, strchr(name, '/') + 1);
	mkdir(dir, 0755);
	cr_assert_eq(synth_adapter_dir(dir, o), 0);
	lorastore_import_opts io = {.name = name};
	cr_assert_eq(lorastore_import_dir(conn, dir, &io, NULL), 0, "import %s: %s", name,
		     lorastore_errmsg(conn));
	lorastore_adapter *ad = NULL;
	cr_assert_eq(lorastore_acquire(conn, name, -1, &ad), 0, "%s", lorastore_errmsg(conn));
	return ad;
}

static const lorastore_slice qkv[3] = {
	{"model.layers.1.self_attn.q_proj", 0, HIDDEN},
	{"model.layers.1.self_attn.k_proj", HIDDEN, KV},
	{"model.layers.1.self_attn.v_proj", HIDDEN + KV, KV},
};

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
 * y[t, slice] += scale * (x A^T) B^T in float64 for every token's adapter,
 * and the bound of the terms' magnitudes (for the tolerance).
 */
static void oracle(lorastore_adapter *const *ads, const double *scales, const int32_t *tok,
		   size_t n_tokens, const float *x, double *y, double *mag)
{
	for (size_t t = 0; t < n_tokens; t++) {
		if (tok[t] < 0)
			continue;
		for (int s = 0; s < 3; s++) {
			lorastore_tensor a, b;
			cr_assert_eq(lorastore_adapter_tensor(ads[tok[t]], qkv[s].module,
							      LORASTORE_KIND_A, &a), 0);
			cr_assert_eq(lorastore_adapter_tensor(ads[tok[t]], qkv[s].module,
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
				y[t * QKV + qkv[s].out_offset + o] += scales[s * 2 + tok[t]] * acc;
				mag[t * QKV + qkv[s].out_offset + o] += fabs(scales[s * 2 + tok[t]]) * m;
			}
		}
	}
}

static void random_x(float *x, size_t n, unsigned seed)
{
	srand(seed);
	for (size_t i = 0; i < n; i++)
		x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
}

/*
 * F32 activations, accumulation in F32 over in + r terms: the error is at
 * most about (in + r) * 2^-24 times the sum of the terms' magnitudes; 1e-5
 * of that sum, plus 1e-6 absolute, leaves a margin of more than 10x.
 */
static size_t compare(const float *y, const double *want, const double *mag, size_t n)
{
	size_t compared = 0;
	for (size_t i = 0; i < n; i++) {
		double tol = 1e-5 * mag[i] + 1e-6;
		cr_assert(fabs((double)y[i] - want[i]) <= tol, "y[%zu] = %.9g, expected %.9g (tol %g)",
			  i, (double)y[i], want[i], tol);
		compared++;
	}
	return compared;
}

static void run_decode(lorastore_adapter *const *ads, const float *factors, const double *scales)
{
	enum { T = 7 };
	const int32_t tok[T] = {0, 1, -1, 1, 0, 0, 1};
	float x[T * HIDDEN], y[T * QKV];
	double want[T * QKV], mag[T * QKV] = {0};
	random_x(x, T * HIDDEN, 7);
	for (size_t i = 0; i < T * QKV; i++)
		want[i] = y[i] = (float)(i % 13) * 0.25f;
	oracle(ads, scales, tok, T, x, want, mag);

	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(ads, 2, factors, HIDDEN, qkv, 3, &plan), 0);
	size_t ws_size = lorastore_plan_workspace_size(plan, T);
	void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
	lorastore_batch b = {.n_tokens = T, .token_adapter = tok};
	cr_assert_eq(lorastore_apply(plan, &b, LORASTORE_DTYPE_F32, x, HIDDEN, y, QKV, ws, ws_size, 1),
		     0);
	cr_assert_eq(compare(y, want, mag, T * QKV), T * QKV);
	free(ws);
	lorastore_plan_free(plan);
}

Test(apply, two_adapters_of_different_ranks_in_one_decode_batch_match_a_float64_product)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .rank = 4, .alpha = 8, .seed = 11};
	struct synth_opts o2 = {.family = SYNTH_LLAMA, .rank = 16, .alpha = 8, .seed = 12};
	lorastore_adapter *ads[2] = {import_and_acquire("ap/a", &o1), import_and_acquire("ap/b", &o2)};
	/* scales[slice * 2 + adapter]: alpha / r. */
	const double scales[6] = {2.0, 0.5, 2.0, 0.5, 2.0, 0.5};
	run_decode(ads, NULL, scales);
}

Test(apply, per_request_factors_multiply_each_adapters_scale)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .rank = 8, .alpha = 16, .seed = 21};
	struct synth_opts o2 = {.family = SYNTH_LLAMA, .rank = 2, .alpha = 2, .seed = 22};
	lorastore_adapter *ads[2] = {import_and_acquire("ap/c", &o1), import_and_acquire("ap/d", &o2)};
	const float factors[2] = {0.5f, -3.0f};
	const double scales[6] = {1.0, -3.0, 1.0, -3.0, 1.0, -3.0};
	run_decode(ads, factors, scales);
}

Test(apply, a_module_with_its_own_alpha_pattern_gets_its_own_scale)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .rank = 4, .alpha = 8, .seed = 31,
				.alpha_pattern = "{\"k_proj\": 32}"};
	struct synth_opts o2 = {.family = SYNTH_LLAMA, .rank = 8, .alpha = 8, .seed = 32};
	lorastore_adapter *ads[2] = {import_and_acquire("ap/e", &o1), import_and_acquire("ap/f", &o2)};
	const double scales[6] = {2.0, 1.0, 8.0, 1.0, 2.0, 1.0};
	run_decode(ads, NULL, scales);
}

Test(apply, prefill_segments_match_the_same_product_token_by_token)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .rank = 4, .alpha = 8, .seed = 41};
	struct synth_opts o2 = {.family = SYNTH_LLAMA, .rank = 16, .alpha = 8, .seed = 42};
	lorastore_adapter *ads[2] = {import_and_acquire("ap/g", &o1), import_and_acquire("ap/h", &o2)};
	enum { T = 40 };
	const lorastore_segment seg[3] = {{0, 17, 1}, {17, 3, -1}, {20, 20, 0}};
	int32_t tok[T];
	for (int t = 0; t < T; t++)
		tok[t] = t < 17 ? 1 : t < 20 ? -1 : 0;
	const double scales[6] = {2.0, 0.5, 2.0, 0.5, 2.0, 0.5};
	static float x[T * HIDDEN], y[T * QKV];
	static double want[T * QKV], mag[T * QKV];
	random_x(x, T * HIDDEN, 9);
	for (size_t i = 0; i < T * QKV; i++) {
		want[i] = y[i] = 1.0f;
		mag[i] = 0;
	}
	oracle(ads, scales, tok, T, x, want, mag);
	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(ads, 2, NULL, HIDDEN, qkv, 3, &plan), 0);
	size_t ws_size = lorastore_plan_workspace_size(plan, T);
	void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
	lorastore_batch b = {.n_tokens = T, .n_segments = 3, .segments = seg};
	cr_assert_eq(lorastore_apply(plan, &b, LORASTORE_DTYPE_F32, x, HIDDEN, y, QKV, ws, ws_size, 2),
		     0);
	cr_assert_eq(compare(y, want, mag, T * QKV), T * QKV);
	free(ws);
	lorastore_plan_free(plan);
}

Test(apply, a_module_no_adapter_has_adds_nothing)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .rank = 4, .seed = 51};
	lorastore_adapter *ad = import_and_acquire("ap/i", &o1);
	const lorastore_slice gate = {"model.layers.1.mlp.gate_proj", 0, 128};
	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(&ad, 1, NULL, HIDDEN, &gate, 1, &plan), 0);
	float x[2 * HIDDEN], y[2 * 128];
	random_x(x, 2 * HIDDEN, 3);
	for (int i = 0; i < 2 * 128; i++)
		y[i] = (float)i;
	const int32_t tok[2] = {0, 0};
	size_t ws_size = lorastore_plan_workspace_size(plan, 2);
	void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
	lorastore_batch b = {.n_tokens = 2, .token_adapter = tok};
	cr_assert_eq(lorastore_apply(plan, &b, LORASTORE_DTYPE_F32, x, HIDDEN, y, 128, ws, ws_size, 1),
		     0);
	for (int i = 0; i < 2 * 128; i++)
		cr_assert_eq(y[i], (float)i, "y[%d] changed", i);
	free(ws);
	lorastore_plan_free(plan);
}

Test(apply, plan_refuses_an_input_width_that_is_not_lora_As)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .rank = 4, .seed = 61};
	lorastore_adapter *ad = import_and_acquire("ap/j", &o);
	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(&ad, 1, NULL, HIDDEN + 1, qkv, 3, &plan),
		     LORASTORE_E_SHAPE);
	cr_assert_null(plan);
}

Test(apply, plan_refuses_an_output_width_that_is_not_lora_Bs)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .rank = 4, .seed = 62};
	lorastore_adapter *ad = import_and_acquire("ap/k", &o);
	lorastore_slice wrong[3] = {qkv[0], qkv[1], qkv[2]};
	wrong[1].out = KV * 2;
	wrong[2].out_offset = HIDDEN + KV * 2;
	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(&ad, 1, NULL, HIDDEN, wrong, 3, &plan), LORASTORE_E_SHAPE);
}

Test(apply, plan_refuses_overlapping_slices)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .rank = 4, .seed = 63};
	lorastore_adapter *ad = import_and_acquire("ap/l", &o);
	lorastore_slice wrong[3] = {qkv[0], qkv[1], qkv[2]};
	wrong[2].out_offset = HIDDEN + KV / 2;
	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(&ad, 1, NULL, HIDDEN, wrong, 3, &plan), LORASTORE_E_SHAPE);
}

Test(apply, plan_refuses_adapters_whose_weights_differ_in_dtype)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .rank = 4, .seed = 71, .dtype = LS_DTYPE_F16};
	struct synth_opts o2 = {.family = SYNTH_LLAMA, .rank = 4, .seed = 72, .dtype = LS_DTYPE_BF16};
	lorastore_adapter *ads[2] = {import_and_acquire("ap/m", &o1), import_and_acquire("ap/n", &o2)};
	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(ads, 2, NULL, HIDDEN, qkv, 3, &plan), LORASTORE_E_DTYPE);
}

Test(apply, plan_refuses_null_pointers_and_too_many_slices)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .rank = 4, .seed = 81};
	lorastore_adapter *ad = import_and_acquire("ap/o", &o);
	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(NULL, 1, NULL, HIDDEN, qkv, 3, &plan), -EINVAL);
	cr_assert_eq(lorastore_plan_create(&ad, 1, NULL, HIDDEN, NULL, 3, &plan), -EINVAL);
	cr_assert_eq(lorastore_plan_create(&ad, 1, NULL, HIDDEN, qkv, 3, NULL), -EINVAL);
	lorastore_adapter *none = NULL;
	cr_assert_eq(lorastore_plan_create(&none, 1, NULL, HIDDEN, qkv, 3, &plan), -EINVAL);
	lorastore_slice many[9];
	for (int i = 0; i < 9; i++)
		many[i] = (lorastore_slice){qkv[0].module, (uint64_t)i * HIDDEN, HIDDEN};
	cr_assert_eq(lorastore_plan_create(&ad, 1, NULL, HIDDEN, many, 9, &plan), -EINVAL);
}

Test(apply, apply_refuses_bad_calls_and_leaves_y_unchanged)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .rank = 4, .seed = 91};
	lorastore_adapter *ad = import_and_acquire("ap/p", &o);
	lorastore_plan *plan = NULL;
	cr_assert_eq(lorastore_plan_create(&ad, 1, NULL, HIDDEN, qkv, 3, &plan), 0);
	float x[2 * HIDDEN], y[2 * QKV];
	random_x(x, 2 * HIDDEN, 5);
	for (int i = 0; i < 2 * QKV; i++)
		y[i] = (float)i;
	size_t ws_size = lorastore_plan_workspace_size(plan, 2);
	void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
	const int32_t tok[2] = {0, 0}, bad_tok[2] = {0, 1};
	lorastore_batch b = {.n_tokens = 2, .token_adapter = tok};
	lorastore_batch bad = {.n_tokens = 2, .token_adapter = bad_tok};
	cr_assert_eq(lorastore_apply(NULL, &b, LORASTORE_DTYPE_F32, x, HIDDEN, y, QKV, ws, ws_size, 1),
		     -EINVAL);
	cr_assert_eq(lorastore_apply(plan, &b, LORASTORE_DTYPE_F32, NULL, HIDDEN, y, QKV, ws,
				     ws_size, 1),
		     -EINVAL);
	cr_assert_eq(lorastore_apply(plan, &b, (lorastore_dtype)9, x, HIDDEN, y, QKV, ws, ws_size, 1),
		     LORASTORE_E_DTYPE);
	cr_assert_eq(lorastore_apply(plan, &bad, LORASTORE_DTYPE_F32, x, HIDDEN, y, QKV, ws, ws_size,
				     1),
		     LORASTORE_E_SHAPE, "adapter index past the plan's adapters");
	cr_assert_eq(lorastore_apply(plan, &b, LORASTORE_DTYPE_F32, x, HIDDEN - 1, y, QKV, ws,
				     ws_size, 1),
		     LORASTORE_E_SHAPE, "ldx below the input width");
	cr_assert_eq(lorastore_apply(plan, &b, LORASTORE_DTYPE_F32, x, HIDDEN, y, QKV - 1, ws,
				     ws_size, 1),
		     LORASTORE_E_SHAPE, "a slice past ldy");
	cr_assert_neq(lorastore_apply(plan, &b, LORASTORE_DTYPE_F32, x, HIDDEN, y, QKV, ws,
				      ws_size / 2, 1),
		      0, "a small workspace");
	for (int i = 0; i < 2 * QKV; i++)
		cr_assert_eq(y[i], (float)i, "y[%d] changed by a refused call", i);
	free(ws);
	lorastore_plan_free(plan);
}
