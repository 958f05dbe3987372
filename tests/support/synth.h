/*
 * Synthetic PEFT adapters for tests and benchmarks.
 *
 * The safetensors writer here is independent of the store's reader: it builds
 * the header with cJSON and writes bytes itself, so that tests of the reader
 * do not check the reader against itself.  Tensor values are deterministic
 * pseudo-random numbers in [-0.5, 0.5) from a seed.
 */
#ifndef LS_SYNTH_H
#define LS_SYNTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define SYNTH_MAX_DIMS 4

struct synth_tensor {
	char name[256];
	enum ls_dtype dtype;            /* any dtype; float ones get random values */
	unsigned ndim;
	uint64_t shape[SYNTH_MAX_DIMS];
};

/* A fresh directory under $TMPDIR (or /tmp); malloc'd path. Aborts on failure. */
char *synth_mkdtemp(const char *tag);

/* Remove a directory tree (tests clean up with it). */
void synth_rm_rf(const char *path);

/* Write text to path (creating or truncating). Returns 0 or -errno. */
int synth_write_text(const char *path, const char *text);

/*
 * Write a valid safetensors file holding tensors t[0..n) in that order, with
 * values from seed.  metadata_json, when not NULL, is the text of a JSON object
 * of strings stored as "__metadata__".  Returns 0 or -errno.
 */
int synth_write_safetensors(const char *path, const struct synth_tensor *t, size_t n,
			    uint64_t seed, const char *metadata_json);

/*
 * The bytes of tensor i as synth_write_safetensors writes them for the same
 * t, n and seed (malloc'd, *len set), so tests can compare bit for bit.
 */
void *synth_tensor_bytes(const struct synth_tensor *t, size_t n, size_t i, uint64_t seed,
			 size_t *len);

enum synth_family {
	SYNTH_LLAMA,   /* q/k/v/o_proj with grouped-query k/v, optional MLP */
	SYNTH_GPT2,    /* fused c_attn (out = 3 * hidden), c_proj; Conv1D, fan_in_fan_out */
	SYNTH_T5,      /* encoder/decoder SelfAttention and EncDecAttention q/v */
	SYNTH_NEOX,    /* fused query_key_value (out = 3 * hidden) */
	SYNTH_BERT,    /* query/value LoRA plus a classifier head in modules_to_save */
};

struct synth_opts {
	enum synth_family family;
	int layers;                  /* default 2 */
	int rank;                    /* default 8 */
	double alpha;                /* default 2 * rank */
	enum ls_dtype dtype;         /* default F16 (LS_DTYPE_INVALID means default) */
	int hidden;                  /* default 64 */
	int heads;                   /* default 4 */
	int kv_heads;                /* default 2 (grouped-query for SYNTH_LLAMA) */
	bool rslora;
	bool dora;                   /* add lora_magnitude_vector per module */
	bool head;                   /* add a classifier/score head (modules_to_save) */
	int prefix_repeat;           /* "base_model.model." repeated this often; default 1 */
	bool regex_targets;          /* target_modules as a regex string */
	bool old_config;             /* only peft_type, r, lora_alpha, target_modules */
	const char *rank_pattern;    /* JSON object text, or NULL */
	const char *alpha_pattern;   /* JSON object text, or NULL */
	uint64_t seed;
};

/*
 * Write adapter_config.json and adapter_model.safetensors into dir (which must
 * exist).  Returns 0 or -errno.
 */
int synth_adapter_dir(const char *dir, const struct synth_opts *o);

/* Number of LoRA modules (A/B pairs) the options produce. */
size_t synth_lora_modules(const struct synth_opts *o);

/* Number of tensors in the safetensors file the options produce. */
size_t synth_tensor_count(const struct synth_opts *o);

#endif
