/* Tests of the PEFT adapter_config.json reader (store/peft_config.c). */
#include <criterion/criterion.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "peft_config.h"

#define WHAT "adapter_config.json"

/* A config as recent PEFT versions write it (trimmed of keys we ignore). */
static const char modern_config[] =
	"{\n"
	"  \"alpha_pattern\": {},\n"
	"  \"auto_mapping\": null,\n"
	"  \"base_model_name_or_path\": \"meta-llama/Llama-3.1-8B\",\n"
	"  \"bias\": \"none\",\n"
	"  \"fan_in_fan_out\": false,\n"
	"  \"inference_mode\": true,\n"
	"  \"init_lora_weights\": true,\n"
	"  \"layers_pattern\": null,\n"
	"  \"layers_to_transform\": null,\n"
	"  \"loftq_config\": {},\n"
	"  \"lora_alpha\": 32,\n"
	"  \"lora_dropout\": 0.05,\n"
	"  \"megatron_config\": null,\n"
	"  \"modules_to_save\": null,\n"
	"  \"peft_type\": \"LORA\",\n"
	"  \"r\": 16,\n"
	"  \"rank_pattern\": {},\n"
	"  \"revision\": null,\n"
	"  \"target_modules\": [\"v_proj\", \"q_proj\", \"k_proj\", \"o_proj\"],\n"
	"  \"task_type\": \"CAUSAL_LM\",\n"
	"  \"use_dora\": false,\n"
	"  \"use_rslora\": false\n"
	"}\n";

static void parse_ok(const char *json, struct ls_peft_config *cfg)
{
	struct ls_err err;
	int rc = ls_peft_config_parse(json, strlen(json), WHAT, cfg, &err);
	cr_assert_eq(rc, 0, "parse failed (%d): %s", rc, err.msg);
}

/* Parse json, expect LS_E_CONFIG_INVALID with a message naming the file and key. */
static void parse_invalid(const char *json, const char *key)
{
	struct ls_peft_config cfg;
	struct ls_err err;
	int rc = ls_peft_config_parse(json, strlen(json), WHAT, &cfg, &err);
	cr_assert_eq(rc, LS_E_CONFIG_INVALID, "expected LS_E_CONFIG_INVALID, got %d for %s", rc,
		     json);
	cr_assert_eq(err.code, LS_E_CONFIG_INVALID);
	cr_assert(strstr(err.msg, WHAT) != NULL, "message does not name the file: %s", err.msg);
	if (key) {
		char quoted[128];
		snprintf(quoted, sizeof(quoted), "\"%s\"", key);
		cr_assert(strstr(err.msg, quoted) != NULL, "message does not name %s: %s", quoted,
			  err.msg);
	}
	/* A failed parse leaves nothing behind. */
	cr_assert_null(cfg.priv);
	cr_assert_null(cfg.bias);
	ls_peft_config_free(&cfg);
}

Test(peft_config, full_modern_config_reads_every_key)
{
	struct ls_peft_config cfg;
	parse_ok(modern_config, &cfg);
	cr_assert_str_eq(cfg.peft_type, "LORA");
	cr_assert_str_eq(cfg.task_type, "CAUSAL_LM");
	cr_assert_eq(cfg.r, 16);
	cr_assert_float_eq(cfg.lora_alpha, 32.0, 1e-12);
	cr_assert_not(cfg.use_rslora);
	cr_assert_not(cfg.use_dora);
	cr_assert_not(cfg.fan_in_fan_out);
	cr_assert_str_eq(cfg.bias, "none");
	cr_assert_str_eq(cfg.base_model, "meta-llama/Llama-3.1-8B");
	cr_assert_eq(cfg.n_target_modules, 4);
	cr_assert_str_eq(cfg.target_modules[0], "v_proj");
	cr_assert_str_eq(cfg.target_modules[3], "o_proj");
	cr_assert_null(cfg.target_regex);
	cr_assert_eq(cfg.n_modules_to_save, 0);
	cr_assert_eq(cfg.n_rank_pattern, 0);
	cr_assert_eq(cfg.n_alpha_pattern, 0);
	cr_assert_float_eq(ls_peft_scale_for(&cfg, "model.layers.0.self_attn.q_proj"), 2.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, old_config_missing_keys_takes_peft_defaults)
{
	struct ls_peft_config cfg;
	parse_ok("{\"peft_type\": \"LORA\", \"target_modules\": [\"q_proj\", \"v_proj\"]}", &cfg);
	cr_assert_eq(cfg.r, 8);
	cr_assert_float_eq(cfg.lora_alpha, 8.0, 1e-12);
	cr_assert_not(cfg.use_rslora);
	cr_assert_not(cfg.use_dora);
	cr_assert_not(cfg.fan_in_fan_out);
	cr_assert_str_eq(cfg.bias, "none");
	cr_assert_null(cfg.base_model);
	cr_assert_null(cfg.task_type);
	cr_assert_eq(cfg.n_rank_pattern, 0);
	cr_assert_eq(cfg.n_alpha_pattern, 0);
	cr_assert_float_eq(ls_peft_scale_for(&cfg, "model.layers.0.self_attn.q_proj"), 1.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, empty_object_takes_peft_defaults_and_targets_everything)
{
	struct ls_peft_config cfg;
	parse_ok("{}", &cfg);
	cr_assert_null(cfg.peft_type);
	cr_assert_eq(cfg.r, 8);
	cr_assert_float_eq(cfg.lora_alpha, 8.0, 1e-12);
	cr_assert_str_eq(cfg.bias, "none");
	cr_assert_null(cfg.target_modules);
	cr_assert_null(cfg.target_regex);
	cr_assert(ls_peft_targets(&cfg, "model.layers.0.mlp.down_proj"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, lora_alpha_accepts_a_float)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 4, \"lora_alpha\": 6.5}", &cfg);
	cr_assert_float_eq(cfg.lora_alpha, 6.5, 1e-12);
	cr_assert_float_eq(ls_peft_scale_for(&cfg, "x.q_proj"), 6.5 / 4.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, lora_alpha_accepts_an_integer)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 4, \"lora_alpha\": 12}", &cfg);
	cr_assert_float_eq(cfg.lora_alpha, 12.0, 1e-12);
	cr_assert_float_eq(ls_peft_scale_for(&cfg, "x.q_proj"), 3.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, r_accepts_a_float_with_integral_value)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 16.0}", &cfg);
	cr_assert_eq(cfg.r, 16);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rslora_scale_is_alpha_over_sqrt_r)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 16, \"lora_alpha\": 8, \"use_rslora\": true}", &cfg);
	cr_assert(cfg.use_rslora);
	cr_assert_float_eq(ls_peft_scale_for(&cfg, "model.layers.0.self_attn.q_proj"), 2.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rslora_scale_uses_the_pattern_rank)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 16, \"lora_alpha\": 8, \"use_rslora\": true,"
		 " \"rank_pattern\": {\"v_proj\": 4}}",
		 &cfg);
	cr_assert_float_eq(ls_peft_scale_for(&cfg, "model.layers.0.self_attn.v_proj"), 4.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rank_pattern_suffix_overrides_r_in_every_layer)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 8, \"rank_pattern\": {\"q_proj\": 32}}", &cfg);
	cr_assert_eq(cfg.n_rank_pattern, 1);
	cr_assert_str_eq(cfg.rank_pattern[0].pattern, "q_proj");
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.0.self_attn.q_proj"), 32);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.31.self_attn.q_proj"), 32);
	cr_assert_eq(ls_peft_rank_for(&cfg, "q_proj"), 32);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.0.self_attn.k_proj"), 8);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rank_pattern_with_dots_matches_only_that_layer)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 8, \"rank_pattern\": {\"model.layers.0.self_attn.q_proj\": 4}}", &cfg);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.0.self_attn.q_proj"), 4);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.10.self_attn.q_proj"), 8);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.1.self_attn.q_proj"), 8);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rank_pattern_does_not_match_a_module_that_merely_contains_it)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 8, \"rank_pattern\": {\"proj\": 2, \"layers.1\": 3}}", &cfg);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.0.self_attn.q_proj"), 8);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.1.mlp.up_proj"), 8);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.1"), 3);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.proj"), 2);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rank_pattern_is_a_regex)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 8, \"rank_pattern\": {\"layers\\\\.[0-3]\\\\.self_attn\\\\.(q|k)_proj\": 2}}",
		 &cfg);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.2.self_attn.k_proj"), 2);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.4.self_attn.k_proj"), 8);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.2.self_attn.v_proj"), 8);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rank_pattern_first_match_in_file_order_wins)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 8, \"rank_pattern\": {\"self_attn.q_proj\": 4, \"q_proj\": 16}}", &cfg);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.0.self_attn.q_proj"), 4);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.0.cross_attn.q_proj"), 16);
	ls_peft_config_free(&cfg);

	parse_ok("{\"r\": 8, \"rank_pattern\": {\"q_proj\": 16, \"self_attn.q_proj\": 4}}", &cfg);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.0.self_attn.q_proj"), 16);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rank_pattern_repeated_key_keeps_first_place_and_last_value)
{
	/* As a Python dict from json.loads: position of the first, value of the last. */
	struct ls_peft_config cfg;
	parse_ok("{\"rank_pattern\": {\"q_proj\": 2, \"proj\": 3, \"q_proj\": 5}}", &cfg);
	cr_assert_eq(cfg.n_rank_pattern, 2);
	cr_assert_str_eq(cfg.rank_pattern[0].pattern, "q_proj");
	cr_assert_float_eq(cfg.rank_pattern[0].value, 5.0, 1e-12);
	cr_assert_eq(ls_peft_rank_for(&cfg, "a.q_proj"), 5);
	ls_peft_config_free(&cfg);
}

Test(peft_config, rank_pattern_accepts_integral_float_values)
{
	struct ls_peft_config cfg;
	parse_ok("{\"rank_pattern\": {\"q_proj\": 4.0}}", &cfg);
	cr_assert_eq(ls_peft_rank_for(&cfg, "a.q_proj"), 4);
	ls_peft_config_free(&cfg);
}

Test(peft_config, alpha_pattern_overrides_alpha_for_matching_module)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 8, \"lora_alpha\": 16, \"alpha_pattern\": {\"v_proj\": 4.5}}", &cfg);
	cr_assert_eq(cfg.n_alpha_pattern, 1);
	cr_assert_float_eq(ls_peft_alpha_for(&cfg, "model.layers.3.self_attn.v_proj"), 4.5, 1e-12);
	cr_assert_float_eq(ls_peft_alpha_for(&cfg, "model.layers.3.self_attn.q_proj"), 16.0, 1e-12);
	cr_assert_float_eq(ls_peft_scale_for(&cfg, "model.layers.3.self_attn.v_proj"), 4.5 / 8.0,
			   1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, alpha_pattern_with_dots_matches_only_that_layer)
{
	struct ls_peft_config cfg;
	parse_ok("{\"lora_alpha\": 16, \"alpha_pattern\": {\"model.layers.0.self_attn.q_proj\": 2}}",
		 &cfg);
	cr_assert_float_eq(ls_peft_alpha_for(&cfg, "model.layers.0.self_attn.q_proj"), 2.0, 1e-12);
	cr_assert_float_eq(ls_peft_alpha_for(&cfg, "model.layers.10.self_attn.q_proj"), 16.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, alpha_pattern_does_not_match_a_module_that_merely_contains_it)
{
	struct ls_peft_config cfg;
	parse_ok("{\"lora_alpha\": 16, \"alpha_pattern\": {\"proj\": 2}}", &cfg);
	cr_assert_float_eq(ls_peft_alpha_for(&cfg, "model.layers.0.self_attn.q_proj"), 16.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, patterns_without_a_match_fall_back_to_r_and_alpha)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 12, \"lora_alpha\": 24, \"rank_pattern\": {\"o_proj\": 2},"
		 " \"alpha_pattern\": {\"o_proj\": 1}}",
		 &cfg);
	cr_assert_eq(ls_peft_rank_for(&cfg, "model.layers.0.mlp.gate_proj"), 12);
	cr_assert_float_eq(ls_peft_alpha_for(&cfg, "model.layers.0.mlp.gate_proj"), 24.0, 1e-12);
	cr_assert_float_eq(ls_peft_scale_for(&cfg, "model.layers.0.mlp.gate_proj"), 2.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_list_matches_name_or_dotted_suffix)
{
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": [\"q_proj\", \"mlp.down_proj\"]}", &cfg);
	cr_assert(ls_peft_targets(&cfg, "model.layers.0.self_attn.q_proj"));
	cr_assert(ls_peft_targets(&cfg, "q_proj"));
	cr_assert(ls_peft_targets(&cfg, "model.layers.7.mlp.down_proj"));
	cr_assert_not(ls_peft_targets(&cfg, "model.layers.0.self_attn.k_proj"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_list_does_not_match_a_partial_name)
{
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": [\"proj\", \"down_proj\"]}", &cfg);
	cr_assert_not(ls_peft_targets(&cfg, "model.layers.0.self_attn.q_proj"));
	cr_assert_not(ls_peft_targets(&cfg, "model.layers.0.mlp.xdown_proj"));
	cr_assert(ls_peft_targets(&cfg, "model.layers.0.mlp.down_proj"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_string_is_a_regex_that_must_match_the_whole_path)
{
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": \".*\\\\.(q|v)_proj\"}", &cfg);
	cr_assert_str_eq(cfg.target_regex, ".*\\.(q|v)_proj");
	cr_assert_null(cfg.target_modules);
	cr_assert(ls_peft_targets(&cfg, "model.layers.0.self_attn.q_proj"));
	cr_assert(ls_peft_targets(&cfg, "model.layers.0.self_attn.v_proj"));
	cr_assert_not(ls_peft_targets(&cfg, "model.layers.0.self_attn.k_proj"));
	/* A match of a prefix is not enough: fullmatch. */
	cr_assert_not(ls_peft_targets(&cfg, "model.layers.0.self_attn.q_proj.base_layer"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_regex_is_anchored_at_the_start)
{
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": \"layers\\\\.\\\\d+\\\\.mlp\\\\.up_proj\"}", &cfg);
	cr_assert(ls_peft_targets(&cfg, "layers.3.mlp.up_proj"));
	cr_assert_not(ls_peft_targets(&cfg, "model.layers.3.mlp.up_proj"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_regex_alternation_needs_a_full_match)
{
	/* re.fullmatch("a|ab", "ab") matches through the second branch. */
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": \"x\\\\.q|x\\\\.q_proj\"}", &cfg);
	cr_assert(ls_peft_targets(&cfg, "x.q_proj"));
	cr_assert(ls_peft_targets(&cfg, "x.q"));
	cr_assert_not(ls_peft_targets(&cfg, "x.q_pro"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_all_linear_string_selects_everything)
{
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": \"all-linear\"}", &cfg);
	cr_assert(ls_peft_targets(&cfg, "model.layers.0.self_attn.q_proj"));
	cr_assert(ls_peft_targets(&cfg, "model.layers.5.mlp.gate_proj"));
	ls_peft_config_free(&cfg);

	parse_ok("{\"target_modules\": \"ALL-LINEAR\"}", &cfg);
	cr_assert(ls_peft_targets(&cfg, "model.layers.5.mlp.gate_proj"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_all_linear_list_selects_everything)
{
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": [\"all-linear\"]}", &cfg);
	cr_assert(ls_peft_targets(&cfg, "model.layers.0.self_attn.o_proj"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_null_selects_everything)
{
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": null}", &cfg);
	cr_assert_null(cfg.target_modules);
	cr_assert_null(cfg.target_regex);
	cr_assert(ls_peft_targets(&cfg, "model.layers.0.self_attn.o_proj"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, target_modules_empty_list_selects_nothing)
{
	struct ls_peft_config cfg;
	parse_ok("{\"target_modules\": []}", &cfg);
	cr_assert_not_null(cfg.target_modules);
	cr_assert_eq(cfg.n_target_modules, 0);
	cr_assert_not(ls_peft_targets(&cfg, "model.layers.0.self_attn.o_proj"));
	ls_peft_config_free(&cfg);
}

Test(peft_config, base_model_null_reads_as_null)
{
	struct ls_peft_config cfg;
	parse_ok("{\"base_model_name_or_path\": null, \"task_type\": null}", &cfg);
	cr_assert_null(cfg.base_model);
	cr_assert_null(cfg.task_type);
	ls_peft_config_free(&cfg);
}

Test(peft_config, modules_to_save_list_is_kept_in_order)
{
	struct ls_peft_config cfg;
	parse_ok("{\"modules_to_save\": [\"score\", \"classifier\"]}", &cfg);
	cr_assert_eq(cfg.n_modules_to_save, 2);
	cr_assert_str_eq(cfg.modules_to_save[0], "score");
	cr_assert_str_eq(cfg.modules_to_save[1], "classifier");
	ls_peft_config_free(&cfg);
}

Test(peft_config, modules_to_save_null_is_empty)
{
	struct ls_peft_config cfg;
	parse_ok("{\"modules_to_save\": null}", &cfg);
	cr_assert_eq(cfg.n_modules_to_save, 0);
	cr_assert_null(cfg.modules_to_save);
	ls_peft_config_free(&cfg);
}

Test(peft_config, dora_fan_in_fan_out_and_bias_are_read)
{
	struct ls_peft_config cfg;
	parse_ok("{\"use_dora\": true, \"fan_in_fan_out\": true, \"bias\": \"lora_only\"}", &cfg);
	cr_assert(cfg.use_dora);
	cr_assert(cfg.fan_in_fan_out);
	cr_assert_str_eq(cfg.bias, "lora_only");
	ls_peft_config_free(&cfg);
}

Test(peft_config, unknown_keys_are_ignored)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 4, \"layer_replication\": [[0, 4]], \"eva_config\": {\"x\": [1, {}]},"
		 " \"corda_config\": null, \"lora_bias\": false, \"exclude_modules\": \"x\"}",
		 &cfg);
	cr_assert_eq(cfg.r, 4);
	ls_peft_config_free(&cfg);
}

Test(peft_config, keys_are_case_sensitive)
{
	struct ls_peft_config cfg;
	parse_ok("{\"R\": -1, \"Lora_Alpha\": \"x\"}", &cfg);
	cr_assert_eq(cfg.r, 8);
	cr_assert_float_eq(cfg.lora_alpha, 8.0, 1e-12);
	ls_peft_config_free(&cfg);
}

Test(peft_config, repeated_top_level_key_takes_the_last_value)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 4, \"r\": 32}", &cfg);
	cr_assert_eq(cfg.r, 32);
	ls_peft_config_free(&cfg);
}

Test(peft_config, peft_type_missing_is_accepted)
{
	struct ls_peft_config cfg;
	parse_ok("{\"r\": 4}", &cfg);
	cr_assert_null(cfg.peft_type);
	ls_peft_config_free(&cfg);
}

Test(peft_config, text_is_not_read_past_len)
{
	/* The text is not NUL terminated; the bytes after len must not count. */
	static const char text[] = "{\"r\": 4}garbage";
	struct ls_peft_config cfg;
	struct ls_err err;
	cr_assert_eq(ls_peft_config_parse(text, 8, WHAT, &cfg, &err), 0, "%s", err.msg);
	cr_assert_eq(cfg.r, 4);
	ls_peft_config_free(&cfg);
}

/* Invalid input. */

Test(peft_config, invalid_json_is_rejected)
{
	parse_invalid("{\"r\": 8,", NULL);
}

Test(peft_config, empty_text_is_rejected)
{
	parse_invalid("", NULL);
}

Test(peft_config, data_after_the_object_is_rejected)
{
	parse_invalid("{\"r\": 8} {}", NULL);
}

Test(peft_config, top_level_list_is_rejected)
{
	parse_invalid("[{\"r\": 8}]", NULL);
}

Test(peft_config, negative_r_is_rejected_with_its_value)
{
	struct ls_peft_config cfg;
	struct ls_err err;
	static const char json[] = "{\"r\": -4}";
	int rc = ls_peft_config_parse(json, strlen(json), WHAT, &cfg, &err);
	cr_assert_eq(rc, LS_E_CONFIG_INVALID);
	cr_assert_str_eq(err.msg, "adapter_config.json: \"r\" must be a positive integer, got -4");
}

Test(peft_config, zero_r_is_rejected)
{
	parse_invalid("{\"r\": 0}", "r");
}

Test(peft_config, fractional_r_is_rejected)
{
	parse_invalid("{\"r\": 2.5}", "r");
}

Test(peft_config, r_beyond_int_is_rejected)
{
	parse_invalid("{\"r\": 4294967296}", "r");
}

Test(peft_config, string_r_is_rejected)
{
	parse_invalid("{\"r\": \"8\"}", "r");
}

Test(peft_config, zero_lora_alpha_is_rejected)
{
	parse_invalid("{\"lora_alpha\": 0}", "lora_alpha");
}

Test(peft_config, negative_lora_alpha_is_rejected)
{
	parse_invalid("{\"lora_alpha\": -16}", "lora_alpha");
}

Test(peft_config, infinite_lora_alpha_is_rejected)
{
	/* strtod turns 1e999 into infinity. */
	parse_invalid("{\"lora_alpha\": 1e999}", "lora_alpha");
}

Test(peft_config, string_lora_alpha_is_rejected)
{
	parse_invalid("{\"lora_alpha\": \"16\"}", "lora_alpha");
}

Test(peft_config, non_boolean_use_rslora_is_rejected)
{
	parse_invalid("{\"use_rslora\": 1}", "use_rslora");
}

Test(peft_config, non_boolean_use_dora_is_rejected)
{
	parse_invalid("{\"use_dora\": \"false\"}", "use_dora");
}

Test(peft_config, non_boolean_fan_in_fan_out_is_rejected)
{
	parse_invalid("{\"fan_in_fan_out\": null}", "fan_in_fan_out");
}

Test(peft_config, rank_pattern_fractional_value_is_rejected)
{
	parse_invalid("{\"rank_pattern\": {\"q_proj\": 4.5}}", "rank_pattern");
}

Test(peft_config, rank_pattern_zero_value_is_rejected)
{
	parse_invalid("{\"rank_pattern\": {\"q_proj\": 0}}", "rank_pattern");
}

Test(peft_config, rank_pattern_string_value_is_rejected)
{
	parse_invalid("{\"rank_pattern\": {\"q_proj\": \"4\"}}", "rank_pattern");
}

Test(peft_config, rank_pattern_that_is_a_list_is_rejected)
{
	parse_invalid("{\"rank_pattern\": [\"q_proj\", 4]}", "rank_pattern");
}

Test(peft_config, alpha_pattern_negative_value_is_rejected)
{
	parse_invalid("{\"alpha_pattern\": {\"q_proj\": -1}}", "alpha_pattern");
}

Test(peft_config, alpha_pattern_infinite_value_is_rejected)
{
	parse_invalid("{\"alpha_pattern\": {\"q_proj\": -1e999}}", "alpha_pattern");
}

Test(peft_config, alpha_pattern_boolean_value_is_rejected)
{
	parse_invalid("{\"alpha_pattern\": {\"q_proj\": true}}", "alpha_pattern");
}

Test(peft_config, target_modules_number_is_rejected)
{
	parse_invalid("{\"target_modules\": 3}", "target_modules");
}

Test(peft_config, target_modules_list_with_a_number_is_rejected)
{
	parse_invalid("{\"target_modules\": [\"q_proj\", 7]}", "target_modules");
}

Test(peft_config, modules_to_save_string_is_rejected)
{
	parse_invalid("{\"modules_to_save\": \"score\"}", "modules_to_save");
}

Test(peft_config, modules_to_save_list_with_null_is_rejected)
{
	parse_invalid("{\"modules_to_save\": [null]}", "modules_to_save");
}

Test(peft_config, unknown_bias_is_rejected)
{
	parse_invalid("{\"bias\": \"some\"}", "bias");
}

Test(peft_config, peft_type_other_than_lora_is_rejected)
{
	parse_invalid("{\"peft_type\": \"IA3\"}", "peft_type");
}

Test(peft_config, peft_type_null_is_rejected)
{
	parse_invalid("{\"peft_type\": null}", "peft_type");
}

Test(peft_config, numeric_task_type_is_rejected)
{
	parse_invalid("{\"task_type\": 1}", "task_type");
}

Test(peft_config, numeric_base_model_is_rejected)
{
	parse_invalid("{\"base_model_name_or_path\": 1}", "base_model_name_or_path");
}

Test(peft_config, invalid_regex_in_target_modules_is_rejected)
{
	parse_invalid("{\"target_modules\": \"model\\\\.(q_proj\"}", "target_modules");
}

Test(peft_config, invalid_regex_in_rank_pattern_is_rejected)
{
	parse_invalid("{\"rank_pattern\": {\"q_proj[\": 4}}", "rank_pattern");
}

Test(peft_config, invalid_regex_in_alpha_pattern_is_rejected)
{
	parse_invalid("{\"alpha_pattern\": {\"*q_proj\": 4}}", "alpha_pattern");
}

Test(peft_config, invalid_regex_message_gives_the_pattern_and_reason)
{
	struct ls_peft_config cfg;
	struct ls_err err;
	static const char json[] = "{\"rank_pattern\": {\"ok\": 2, \"bad(\": 4}}";
	int rc = ls_peft_config_parse(json, strlen(json), WHAT, &cfg, &err);
	cr_assert_eq(rc, LS_E_CONFIG_INVALID);
	cr_assert(strstr(err.msg, "\"bad(\"") != NULL, "%s", err.msg);
	cr_assert(strstr(err.msg, "not a valid regular expression") != NULL, "%s", err.msg);
}

/* Lifetime. */

Test(peft_config, free_is_safe_on_a_zeroed_struct_and_twice)
{
	struct ls_peft_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	ls_peft_config_free(&cfg);
	parse_ok(modern_config, &cfg);
	ls_peft_config_free(&cfg);
	ls_peft_config_free(&cfg);
	ls_peft_config_free(NULL);
}

Test(peft_config, parse_accepts_a_null_err)
{
	struct ls_peft_config cfg;
	cr_assert_eq(ls_peft_config_parse("{\"r\": 0}", 8, WHAT, &cfg, NULL), LS_E_CONFIG_INVALID);
	cr_assert_eq(ls_peft_config_parse("{}", 2, WHAT, &cfg, NULL), 0);
	ls_peft_config_free(&cfg);
}

/* Reading from a file descriptor. */

static int temp_file_with(const char *text, size_t len)
{
	char path[] = "/tmp/ls_peft_XXXXXX";
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	unlink(path);
	cr_assert_eq(write(fd, text, len), (ssize_t)len);
	cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

Test(peft_config, read_fd_reads_a_whole_file)
{
	int fd = temp_file_with(modern_config, strlen(modern_config));
	struct ls_peft_config cfg;
	struct ls_err err;
	cr_assert_eq(ls_peft_config_read_fd(fd, WHAT, &cfg, &err), 0, "%s", err.msg);
	cr_assert_eq(cfg.r, 16);
	cr_assert_eq(cfg.n_target_modules, 4);
	ls_peft_config_free(&cfg);
	close(fd);
}

/*
 * A pipe is refused before anything reads it: with its writer alive a read
 * would wait for ever (it held a daemon worker so before).
 */
Test(peft_config, read_fd_refuses_a_pipe_at_once_while_its_writer_is_open, .timeout = 10)
{
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	struct ls_peft_config cfg;
	struct ls_err err;
	cr_assert_eq(ls_peft_config_read_fd(fds[0], WHAT, &cfg, &err), -EINVAL);
	cr_assert_not_null(strstr(err.msg, "a pipe or FIFO, not a regular file"), "%s", err.msg);
	cr_assert_not_null(strstr(err.msg, WHAT), "%s", err.msg);
	close(fds[0]);
	close(fds[1]);
}

Test(peft_config, read_fd_rejects_a_file_over_1_mib)
{
	int fd = temp_file_with("{}", 2);
	cr_assert_eq(ftruncate(fd, (1 << 20) + 1), 0);
	struct ls_peft_config cfg;
	struct ls_err err;
	cr_assert_eq(ls_peft_config_read_fd(fd, WHAT, &cfg, &err), LS_E_CONFIG_INVALID);
	cr_assert(strstr(err.msg, WHAT) != NULL, "%s", err.msg);
	ls_peft_config_free(&cfg);
	close(fd);
}

Test(peft_config, read_fd_accepts_a_file_of_exactly_1_mib)
{
	/* Spaces are JSON whitespace: the object plus padding is still valid. */
	size_t len = (size_t)1 << 20;
	char *text = malloc(len);
	cr_assert_not_null(text);
	memset(text, ' ', len);
	memcpy(text, "{\"r\": 3}", 8);
	int fd = temp_file_with(text, len);
	free(text);
	struct ls_peft_config cfg;
	struct ls_err err;
	cr_assert_eq(ls_peft_config_read_fd(fd, WHAT, &cfg, &err), 0, "%s", err.msg);
	cr_assert_eq(cfg.r, 3);
	ls_peft_config_free(&cfg);
	close(fd);
}

Test(peft_config, read_fd_of_a_closed_descriptor_returns_ebadf)
{
	int fd = temp_file_with("{}", 2);
	close(fd);
	struct ls_peft_config cfg;
	struct ls_err err;
	cr_assert_eq(ls_peft_config_read_fd(fd, WHAT, &cfg, &err), -EBADF);
	cr_assert_eq(err.code, -EBADF);
	ls_peft_config_free(&cfg);
}
