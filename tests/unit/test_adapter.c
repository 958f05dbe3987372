/*
 * ls_adapter_analyze_dir on valid adapters of the shapes PEFT writes: name
 * normalization, layer indices, tensor kinds, per-module ranks and scales.
 * Every adapter here is synthetic (tests/support/synth.c).
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapter.h"
#include "synth.h"

static char *work_dir;

static void setup(void)
{
	work_dir = synth_mkdtemp("adapter");
}

static void teardown(void)
{
	synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(adapter, .init = setup, .fini = teardown);

/* Write a synthetic adapter under work_dir/sub, analyze it, and expect success. */
static void analyze(const char *sub, const struct synth_opts *o, struct ls_adapter *ad)
{
	char dir[PATH_MAX];
	int n = snprintf(dir, sizeof(dir), "%s/%s", work_dir, sub);
	cr_assert(n > 0 && (size_t)n < sizeof(dir));
	mkdir(dir, 0755);
	cr_assert_eq(synth_adapter_dir(dir, o), 0);
	struct ls_err err;
	int rc = ls_adapter_analyze_dir(dir, NULL, ad, &err);
	cr_assert_eq(rc, 0, "analyze %s: %s", sub, err.msg);
}

static const struct ls_adapter_module *module_of(const struct ls_adapter *ad, const char *path)
{
	const struct ls_adapter_module *m = ls_adapter_find_module(ad, path);
	cr_assert_not_null(m, "no module '%s'", path);
	return m;
}

/* Whether the analysis recorded any problem, even a warning. */
static void assert_no_problems(const struct ls_adapter *ad)
{
	for (size_t i = 0; i < ad->n_problems; i++)
		cr_assert_fail("unexpected problem: %s", ad->problems[i].message);
}

Test(adapter, doubled_base_model_prefix_gives_the_same_module_paths)
{
	struct synth_opts once = {.family = SYNTH_LLAMA, .layers = 3};
	struct synth_opts twice = once;
	twice.prefix_repeat = 2;
	struct ls_adapter a, b;
	analyze("once", &once, &a);
	analyze("twice", &twice, &b);
	cr_assert_eq(a.n_tensors, b.n_tensors);
	cr_assert_eq(a.n_modules, b.n_modules);
	for (size_t i = 0; i < a.n_tensors; i++) {
		cr_assert_str_eq(a.tensors[i].module, b.tensors[i].module);
		cr_assert_eq(a.tensors[i].kind, b.tensors[i].kind);
		cr_assert_eq(a.tensors[i].layer, b.tensors[i].layer);
		cr_assert(strncmp(b.tensors[i].source_name,
				  "base_model.model.base_model.model.", 34) == 0,
			  "%s", b.tensors[i].source_name);
	}
	module_of(&b, "model.layers.2.self_attn.q_proj");
	ls_adapter_free(&a);
	ls_adapter_free(&b);
}

Test(adapter, gpt2_c_attn_has_a_r_by_hidden_and_b_three_hidden_by_r)
{
	struct synth_opts o = {.family = SYNTH_GPT2, .rank = 8, .hidden = 64};
	struct ls_adapter ad;
	analyze("gpt2", &o, &ad);
	const struct ls_adapter_module *m = module_of(&ad, "transformer.h.1.attn.c_attn");
	cr_assert_eq(m->layer, 1);
	cr_assert_eq(m->rank, 8);
	cr_assert_eq(m->in, 64);
	cr_assert_eq(m->out, 3 * 64);
	const struct ls_adapter_tensor *a = &ad.tensors[m->a], *b = &ad.tensors[m->b];
	cr_assert_eq(a->kind, LS_KIND_A);
	cr_assert_eq(a->shape[0], 8);
	cr_assert_eq(a->shape[1], 64);
	cr_assert_eq(b->kind, LS_KIND_B);
	cr_assert_eq(b->shape[0], 192);
	cr_assert_eq(b->shape[1], 8);
	ls_adapter_free(&ad);
}

Test(adapter, grouped_query_k_and_v_with_fewer_outputs_are_accepted)
{
	/* 8 heads of 16, 2 key/value heads: k_proj and v_proj give 32 outputs. */
	struct synth_opts o = {.family = SYNTH_LLAMA, .hidden = 128, .heads = 8, .kv_heads = 2};
	struct ls_adapter ad;
	analyze("gqa", &o, &ad);
	cr_assert_eq(ad.n_modules, synth_lora_modules(&o));
	cr_assert_eq(module_of(&ad, "model.layers.0.self_attn.q_proj")->out, 128);
	cr_assert_eq(module_of(&ad, "model.layers.0.self_attn.k_proj")->out, 32);
	cr_assert_eq(module_of(&ad, "model.layers.0.self_attn.v_proj")->out, 32);
	cr_assert_eq(module_of(&ad, "model.layers.1.self_attn.v_proj")->in, 128);
	assert_no_problems(&ad);
	ls_adapter_free(&ad);
}

Test(adapter, t5_encoder_and_decoder_modules_keep_their_paths_and_block_index)
{
	struct synth_opts o = {.family = SYNTH_T5, .layers = 3};
	struct ls_adapter ad;
	analyze("t5", &o, &ad);
	cr_assert_eq(ad.n_modules, 3 * 6);
	cr_assert_eq(module_of(&ad, "encoder.block.0.layer.0.SelfAttention.q")->layer, 0);
	cr_assert_eq(module_of(&ad, "encoder.block.2.layer.0.SelfAttention.v")->layer, 2);
	cr_assert_eq(module_of(&ad, "decoder.block.1.layer.0.SelfAttention.q")->layer, 1);
	/* The layer is the block, not the "layer.1" sub-index after it. */
	cr_assert_eq(module_of(&ad, "decoder.block.2.layer.1.EncDecAttention.v")->layer, 2);
	cr_assert_eq(module_of(&ad, "decoder.block.0.layer.1.EncDecAttention.q")->layer, 0);
	ls_adapter_free(&ad);
}

Test(adapter, dora_magnitude_vector_is_kind_magnitude_of_its_module)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .dora = true};
	struct ls_adapter ad;
	analyze("dora", &o, &ad);
	cr_assert_eq(ad.n_tensors, synth_tensor_count(&o));
	size_t magnitudes = 0;
	for (size_t i = 0; i < ad.n_tensors; i++)
		magnitudes += ad.tensors[i].kind == LS_KIND_MAGNITUDE;
	cr_assert_eq(magnitudes, synth_lora_modules(&o));
	const struct ls_adapter_module *m = module_of(&ad, "model.layers.1.self_attn.k_proj");
	cr_assert_geq(m->magnitude, 0);
	const struct ls_adapter_tensor *t = &ad.tensors[m->magnitude];
	cr_assert_eq(t->kind, LS_KIND_MAGNITUDE);
	cr_assert_str_eq(t->module, "model.layers.1.self_attn.k_proj");
	cr_assert_eq(t->shape[0], m->out);
	assert_no_problems(&ad);
	ls_adapter_free(&ad);
}

static const struct ls_adapter_tensor *tensor_of(const struct ls_adapter *ad, const char *module)
{
	for (size_t i = 0; i < ad->n_tensors; i++)
		if (strcmp(ad->tensors[i].module, module) == 0)
			return &ad->tensors[i];
	cr_assert_fail("no tensor of module '%s'", module);
	return NULL;
}

Test(adapter, classifier_head_tensors_are_extra_with_their_full_name_as_module)
{
	struct synth_opts o = {.family = SYNTH_BERT};
	struct ls_adapter ad;
	analyze("bert", &o, &ad);
	const struct ls_adapter_tensor *w = tensor_of(&ad, "classifier.weight");
	const struct ls_adapter_tensor *b = tensor_of(&ad, "classifier.bias");
	cr_assert_eq(w->kind, LS_KIND_EXTRA);
	cr_assert_eq(b->kind, LS_KIND_EXTRA);
	cr_assert_eq(w->layer, -1);
	cr_assert_eq(b->ndim, 1);
	/* Extra tensors are no LoRA module. */
	cr_assert_null(ls_adapter_find_module(&ad, "classifier.weight"));
	cr_assert_eq(ad.n_modules, synth_lora_modules(&o));
	ls_adapter_free(&ad);
}

Test(adapter, modules_to_save_wrapper_is_removed_from_extra_tensor_modules)
{
	/* PEFT can save a head as <module>.modules_to_save.<adapter>.<param>. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/wrapped", work_dir);
	mkdir(dir, 0755);
	struct synth_tensor t[3] = {
		{"base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight",
		 LS_DTYPE_F32, 2, {4, 32}},
		{"base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight",
		 LS_DTYPE_F32, 2, {32, 4}},
		{"base_model.model.classifier.modules_to_save.default.weight", LS_DTYPE_F32, 2,
		 {2, 32}},
	};
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	cr_assert_eq(synth_write_safetensors(path, t, 3, 5, NULL), 0);
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	cr_assert_eq(synth_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8,"
					    " \"target_modules\": [\"query\"],"
					    " \"modules_to_save\": [\"classifier\"]}"),
		     0);
	struct ls_adapter ad;
	struct ls_err err;
	cr_assert_eq(ls_adapter_analyze_dir(dir, NULL, &ad, &err), 0, "%s", err.msg);
	const struct ls_adapter_tensor *w = tensor_of(&ad, "classifier.weight");
	cr_assert_eq(w->kind, LS_KIND_EXTRA);
	cr_assert_str_eq(w->source_name, t[2].name);
	ls_adapter_free(&ad);
}

Test(adapter, regex_target_modules_select_every_module_without_warnings)
{
	struct synth_opts o = {.family = SYNTH_T5, .regex_targets = true};
	struct ls_adapter ad;
	analyze("regex", &o, &ad);
	cr_assert_not_null(ad.config.target_regex);
	cr_assert_eq(ad.n_modules, synth_lora_modules(&o));
	assert_no_problems(&ad);
	ls_adapter_free(&ad);
}

Test(adapter, old_config_without_newer_keys_takes_peft_defaults)
{
	struct synth_opts o = {.family = SYNTH_GPT2, .old_config = true, .rank = 4, .alpha = 32};
	struct ls_adapter ad;
	analyze("old", &o, &ad);
	cr_assert(ad.have_config);
	cr_assert_null(ad.config.base_model);
	cr_assert_not(ad.config.use_rslora);
	cr_assert_not(ad.config.use_dora);
	const struct ls_adapter_module *m = module_of(&ad, "transformer.h.0.attn.c_proj");
	cr_assert_eq(m->rank, 4);
	cr_assert_float_eq(m->scale, 32.0 / 4.0, 1e-12);
	ls_adapter_free(&ad);
}

Test(adapter, rslora_scale_is_alpha_over_sqrt_r)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .rank = 16, .alpha = 24, .rslora = true};
	struct ls_adapter ad;
	analyze("rslora", &o, &ad);
	cr_assert(ad.config.use_rslora);
	for (size_t i = 0; i < ad.n_modules; i++)
		cr_assert_float_eq(ad.modules[i].scale, 24.0 / 4.0, 1e-12, "%s: scale %g",
				   ad.modules[i].module, ad.modules[i].scale);
	ls_adapter_free(&ad);
}

Test(adapter, rank_and_alpha_patterns_give_per_module_ranks_and_scales)
{
	struct synth_opts o = {.family = SYNTH_LLAMA,
			       .rank = 8,
			       .alpha = 16,
			       .rank_pattern = "{\"q_proj\": 4, \"model.layers.1.self_attn.o_proj\": 2}",
			       .alpha_pattern = "{\"v_proj\": 64, \"o_proj\": 6}"};
	struct ls_adapter ad;
	analyze("patterns", &o, &ad);
	const struct ls_adapter_module *q = module_of(&ad, "model.layers.0.self_attn.q_proj");
	cr_assert_eq(q->rank, 4);
	cr_assert_float_eq(q->alpha, 16.0, 1e-12);
	cr_assert_float_eq(q->scale, 4.0, 1e-12);
	const struct ls_adapter_module *k = module_of(&ad, "model.layers.0.self_attn.k_proj");
	cr_assert_eq(k->rank, 8);
	cr_assert_float_eq(k->scale, 2.0, 1e-12);
	const struct ls_adapter_module *v = module_of(&ad, "model.layers.1.self_attn.v_proj");
	cr_assert_eq(v->rank, 8);
	cr_assert_float_eq(v->alpha, 64.0, 1e-12);
	cr_assert_float_eq(v->scale, 8.0, 1e-12);
	/* A full path pattern reaches one layer only. */
	const struct ls_adapter_module *o0 = module_of(&ad, "model.layers.0.self_attn.o_proj");
	const struct ls_adapter_module *o1 = module_of(&ad, "model.layers.1.self_attn.o_proj");
	cr_assert_eq(o0->rank, 8);
	cr_assert_float_eq(o0->scale, 6.0 / 8.0, 1e-12);
	cr_assert_eq(o1->rank, 2);
	cr_assert_float_eq(o1->scale, 6.0 / 2.0, 1e-12);
	cr_assert_eq(ad.max_rank, 8);
	ls_adapter_free(&ad);
}

static void check_rank(int rank)
{
	struct synth_opts o = {.family = SYNTH_NEOX, .rank = rank, .hidden = 128};
	char sub[32];
	snprintf(sub, sizeof(sub), "rank%d", rank);
	struct ls_adapter ad;
	analyze(sub, &o, &ad);
	cr_assert_eq(ad.max_rank, (uint32_t)rank);
	for (size_t i = 0; i < ad.n_modules; i++) {
		const struct ls_adapter_module *m = &ad.modules[i];
		cr_assert_eq(m->rank, (uint32_t)rank);
		cr_assert_eq(ad.tensors[m->a].shape[0], (uint64_t)rank);
		cr_assert_eq(ad.tensors[m->b].shape[1], (uint64_t)rank);
		cr_assert_float_eq(m->scale, 2.0, 1e-12); /* synth's alpha is 2 r */
	}
	ls_adapter_free(&ad);
}

Test(adapter, rank_1_is_accepted)
{
	check_rank(1);
}

Test(adapter, rank_64_is_accepted)
{
	check_rank(64);
}

static void check_dtype(enum ls_dtype d, size_t size)
{
	struct synth_opts o = {.family = SYNTH_GPT2, .dtype = d, .head = true};
	struct ls_adapter ad;
	analyze(ls_dtype_name(d), &o, &ad);
	cr_assert_eq(ad.dtype, d, "adapter dtype %s", ls_dtype_name(ad.dtype));
	uint64_t bytes = 0;
	for (size_t i = 0; i < ad.n_tensors; i++) {
		const struct ls_adapter_tensor *t = &ad.tensors[i];
		uint64_t numel = 1;
		for (unsigned k = 0; k < t->ndim; k++)
			numel *= t->shape[k];
		cr_assert_eq(t->dtype, d);
		cr_assert_eq(t->source_dtype, d);
		cr_assert_eq(t->length, numel * size);
		cr_assert_eq(t->nonfinite, 0);
		bytes += t->length;
	}
	cr_assert_eq(ad.bytes, bytes);
	ls_adapter_free(&ad);
}

Test(adapter, f32_tensors_are_accepted)
{
	check_dtype(LS_DTYPE_F32, 4);
}

Test(adapter, f16_tensors_are_accepted)
{
	check_dtype(LS_DTYPE_F16, 2);
}

Test(adapter, bf16_tensors_are_accepted)
{
	check_dtype(LS_DTYPE_BF16, 2);
}
