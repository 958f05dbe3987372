/*
 * One enum per concept that crosses modules, and its one name table:
 * tensor element types, tensor kinds, memory tiers.  The public header
 * (lorastore.h), the wire protocol (lorastore.proto) and the kernels (lsk.h)
 * use the same values; each of those asserts it where it meets these.
 */
#ifndef LS_TYPES_H
#define LS_TYPES_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Every dtype the safetensors format names.  Only F32, F16 and BF16 may
 * carry LoRA weights; the others are known so that a file using them gets
 * "not allowed" rather than "unknown".
 */
enum ls_dtype {
	LS_DTYPE_INVALID = 0,
	LS_DTYPE_F32 = 1,
	LS_DTYPE_F16 = 2,
	LS_DTYPE_BF16 = 3,
	LS_DTYPE_F64,
	LS_DTYPE_BOOL,
	LS_DTYPE_U8,
	LS_DTYPE_I8,
	LS_DTYPE_F8_E5M2,
	LS_DTYPE_F8_E4M3,
	LS_DTYPE_I16,
	LS_DTYPE_U16,
	LS_DTYPE_I32,
	LS_DTYPE_U32,
	LS_DTYPE_I64,
	LS_DTYPE_U64,
	LS_DTYPE_COUNT,
};

/* The dtype named by s (exact, case-sensitive, as safetensors writes it), or LS_DTYPE_INVALID. */
enum ls_dtype ls_dtype_from_name(const char *s);

/* The safetensors name of d ("F32", ...), or "?" for an invalid value. */
const char *ls_dtype_name(enum ls_dtype d);

/* Size of one element in bytes; 0 for an invalid value. */
size_t ls_dtype_size(enum ls_dtype d);

/* True for F32, F16 and BF16, the types LoRA tensors may use. */
bool ls_dtype_is_lora_float(enum ls_dtype d);

/* What an import does to the element types of LoRA tensors. */
enum ls_convert {
	LS_CONVERT_KEEP = 0, /* store tensors in the dtype of the file (default) */
	LS_CONVERT_F16 = 1,
	LS_CONVERT_BF16 = 2,
	LS_CONVERT_F32 = 3,
};

/* "keep", "f16", "bf16" or "f32" to its value: 0, or -EINVAL. */
int ls_convert_from_name(const char *s, enum ls_convert *out);
/* Its name; "?" for another value. */
const char *ls_convert_name(enum ls_convert c);

/* What a tensor of an adapter is. */
enum ls_tensor_kind {
	LS_KIND_A = 1,          /* lora_A / lora_embedding_A: [r, in, ...] */
	LS_KIND_B = 2,          /* lora_B / lora_embedding_B: [out, r, ...] */
	LS_KIND_EXTRA = 3,      /* a full tensor saved beside the LoRA ones (a head, a bias) */
	LS_KIND_MAGNITUDE = 4,  /* DoRA magnitude vector: [out] */
};

/* "A", "B", "extra" or "magnitude"; "?" for another value. */
const char *ls_tensor_kind_name(enum ls_tensor_kind k);

/* The kind named s: 0, or -EINVAL. */
int ls_tensor_kind_from_name(const char *s, enum ls_tensor_kind *out);

/* A memory tier of the daemon. */
enum ls_tier_kind {
	LS_TIER_HOST = 0,       /* host memory, readable by the CPU */
	LS_TIER_DEVICE = 1,     /* a GPU's memory */
};

/* "host" or "device"; "?" for another value. */
const char *ls_tier_name(enum ls_tier_kind t);

/* The tier named s: 0, or -EINVAL. */
int ls_tier_from_name(const char *s, enum ls_tier_kind *out);

#endif
