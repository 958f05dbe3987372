/*
 * Analysis of a PEFT LoRA adapter: the safetensors file and adapter_config.json
 * read together, tensor names normalized, every A/B pair checked against the
 * other and against the config, and every problem collected.
 *
 * Normalization: the "base_model.model." prefix is stripped as often as it
 * repeats; ".lora_A.weight" / ".lora_B.weight" (with or without an adapter name
 * before "weight"), ".lora_embedding_A" / ".lora_embedding_B" and
 * ".lora_magnitude_vector" (DoRA) suffixes give the kind and the module path;
 * any other tensor is an extra full tensor (a classifier head, a bias) whose
 * module is its whole normalized name, with PEFT's ".modules_to_save.<name>"
 * wrapper removed.  The layer is the first all-digit component of the path.
 */
#ifndef LS_ADAPTER_H
#define LS_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "ls_error.h"
#include "peft_config.h"
#include "safetensors.h"

struct ls_adapter_tensor {
	char *source_name;          /* name in the safetensors file */
	char *module;               /* normalized module path */
	int layer;                  /* -1 when the path has no layer index */
	enum ls_tensor_kind kind;
	enum ls_dtype source_dtype;
	enum ls_dtype dtype;        /* after the import's conversion */
	unsigned ndim;
	uint64_t shape[LS_ST_MAX_DIMS];
	uint64_t source_begin;      /* byte range in the file's data section */
	uint64_t source_end;
	uint64_t length;            /* bytes after conversion */
	size_t nonfinite;           /* NaN and infinite elements in the file */
};

struct ls_adapter_module {
	char *module;
	int layer;
	int a, b, magnitude;        /* indices into tensors[], -1 when absent */
	uint32_t rank;              /* from the A tensor */
	double alpha;               /* after alpha_pattern */
	double scale;               /* alpha / r, or alpha / sqrt(r) with rslora */
	uint64_t in, out;           /* A is [rank, in], B is [out, rank] */
};

struct ls_problem {
	int code;                   /* an LS_E_* code */
	bool fatal;                 /* false for a warning that does not stop an import */
	char *tensor;               /* the tensor concerned, or NULL */
	char *message;              /* a full sentence */
};

struct ls_adapter {
	bool have_config;
	struct ls_peft_config config;   /* defaults when the config was missing */
	struct ls_st_file st;
	uint8_t *data;                  /* the file's data section (st.data_len bytes) */

	size_t n_tensors;
	struct ls_adapter_tensor *tensors;  /* ordered by layer, module, kind */
	size_t n_modules;
	struct ls_adapter_module *modules;  /* LoRA modules, in the same order */
	size_t n_problems;
	struct ls_problem *problems;

	uint32_t max_rank;              /* largest rank of any module */
	enum ls_dtype dtype;            /* of the LoRA tensors; INVALID when mixed */
	uint64_t bytes;                 /* tensor bytes after conversion, unpadded */
};

struct ls_adapter_opts {
	enum ls_convert convert;        /* dtype conversion at import */
	bool allow_nonfinite;           /* accept NaN and infinity */
};

/*
 * Read and check an adapter.  config_fd is adapter_config.json (or -1 when
 * the directory has none), st_fd the safetensors file; label names the
 * adapter in messages (its directory).  opts may be NULL for the defaults.
 *
 * Returns 0 when no fatal problem was found.  Otherwise returns the code of the
 * first fatal problem with its message in err; *out then still holds every
 * problem found (as far as the file could be read) and must be released with
 * ls_adapter_free.  Codes: those of ls_st_read_fd and ls_peft_config_parse,
 * LS_E_CONFIG_MISSING, LS_E_DTYPE_UNSUPPORTED, LS_E_TENSOR_NAME,
 * LS_E_LORA_SHAPE, LS_E_LORA_UNPAIRED, LS_E_LORA_RANK, LS_E_NONFINITE,
 * LS_E_NO_TENSORS, LS_E_ADAPTER_LIMIT (past the header's bounds of
 * st_strict.h, found before anything is read but the header), -errno.
 */
int ls_adapter_analyze(int config_fd, int st_fd, const char *label,
		       const struct ls_adapter_opts *opts, struct ls_adapter *out,
		       struct ls_err *err);

/* Open DIR/adapter_config.json and DIR/adapter_model.safetensors and analyze. */
int ls_adapter_analyze_dir(const char *dir, const struct ls_adapter_opts *opts,
			   struct ls_adapter *out, struct ls_err *err);

void ls_adapter_free(struct ls_adapter *ad);

/* The module of a given path, or NULL. */
const struct ls_adapter_module *ls_adapter_find_module(const struct ls_adapter *ad,
						       const char *module);

/*
 * Compare module paths so that numeric components compare as numbers
 * ("layers.2" before "layers.10").
 */
int ls_path_compare(const char *a, const char *b);

#endif
