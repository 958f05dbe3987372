/*
 * Reader of Hugging Face PEFT adapter_config.json files (LoRA only).
 *
 * Missing keys take PEFT's defaults: r = 8, lora_alpha = 8, use_rslora =
 * false, empty rank_pattern and alpha_pattern, bias = "none", use_dora =
 * false, fan_in_fan_out = false, base_model_name_or_path = null.
 */
#ifndef LS_PEFT_CONFIG_H
#define LS_PEFT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ls_error.h"

/* One entry of rank_pattern or alpha_pattern: a PEFT key pattern and a value. */
struct ls_peft_pattern {
	char *pattern;
	double value;
};

struct ls_peft_config {
	char *peft_type;                 /* "LORA"; NULL when the key is missing */
	char *task_type;                 /* NULL when missing or null */
	int r;
	double lora_alpha;
	bool use_rslora;
	bool use_dora;
	bool fan_in_fan_out;
	char *bias;                      /* "none", "all" or "lora_only" */
	char *base_model;                /* base_model_name_or_path; NULL for null */

	/*
	 * target_modules: either a list of names or one regex string.  A list
	 * in the file leaves target_modules non-NULL even when it is empty;
	 * both NULL means the key was missing or null.
	 */
	size_t n_target_modules;
	char **target_modules;
	char *target_regex;              /* non-NULL when target_modules is a string */

	size_t n_modules_to_save;
	char **modules_to_save;

	size_t n_rank_pattern;
	struct ls_peft_pattern *rank_pattern;   /* in file order */
	size_t n_alpha_pattern;
	struct ls_peft_pattern *alpha_pattern;  /* in file order */

	/* Private to peft_config.c: the compiled regexes; NULL until parsed. */
	void *priv;
};

/*
 * Parse the JSON text json/len (not NUL terminated).  Returns 0, or
 * LS_E_CONFIG_INVALID with a message naming the key (invalid JSON, a wrong
 * type, r < 1, a non-positive or non-finite alpha, a rank_pattern value that is
 * not a positive integer, an invalid regex, peft_type other than LORA), or
 * -ENOMEM.  `what` names the file in messages.
 */
int ls_peft_config_parse(const char *json, size_t len, const char *what,
			 struct ls_peft_config *out, struct ls_err *err);

/*
 * Read the whole file open on fd (from its current offset) and parse it.
 * Returns what ls_peft_config_parse returns, -EINVAL at once when fd is not
 * a regular file (a pipe or a socket would hold the reader for as long as
 * its writer lives), LS_E_CONFIG_INVALID for a file over 1 MiB, or -errno
 * when fstat or read fails.
 */
int ls_peft_config_read_fd(int fd, const char *what, struct ls_peft_config *out,
			   struct ls_err *err);

void ls_peft_config_free(struct ls_peft_config *cfg);

/*
 * Rank, alpha and scale of one module, after rank_pattern and alpha_pattern,
 * matched as PEFT matches them: the first pattern p (in file order) for which
 * the module path matches the regex `(.*\.)?(p)$` wins.  module is the path
 * without the "base_model.model." prefix, e.g. "model.layers.3.self_attn.q_proj".
 * scale = alpha / r, or alpha / sqrt(r) with use_rslora.
 */
int ls_peft_rank_for(const struct ls_peft_config *cfg, const char *module);
double ls_peft_alpha_for(const struct ls_peft_config *cfg, const char *module);
double ls_peft_scale_for(const struct ls_peft_config *cfg, const char *module);

/* The one formula: alpha / r, or alpha / sqrt(r) with use_rslora; 0 for r < 1. */
double ls_lora_scale(double alpha, int64_t r, bool use_rslora);

/*
 * Whether target_modules selects a module as PEFT does: a regex string must
 * match the whole path; a list entry t matches when the path equals t or ends
 * with "." t; PEFT's shorthand "all-linear" (any case, as the string or as a
 * list entry) selects every module.  A config with no target_modules selects
 * everything; an empty list selects nothing.
 */
bool ls_peft_targets(const struct ls_peft_config *cfg, const char *module);

#endif
