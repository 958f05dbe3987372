/*
 * Tensor element types as safetensors names them, and the conversions and
 * value checks the importer needs.
 */
#ifndef LS_DTYPE_H
#define LS_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Every dtype string the safetensors reference implementation accepts.  Only
 * F32, F16 and BF16 may carry LoRA weights; the others are recognised so that
 * a file using them gets "not allowed" rather than "unknown".
 */
enum ls_dtype {
	LS_DTYPE_INVALID = 0,
	LS_DTYPE_F32,
	LS_DTYPE_F16,
	LS_DTYPE_BF16,
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

/* The dtype named by s (exact, case-sensitive), or LS_DTYPE_INVALID. */
enum ls_dtype ls_dtype_from_name(const char *s);

/* The safetensors name of d ("F32", ...), or "?" for an invalid value. */
const char *ls_dtype_name(enum ls_dtype d);

/* Size of one element in bytes; 0 for LS_DTYPE_INVALID. */
size_t ls_dtype_size(enum ls_dtype d);

/* True for F32, F16 and BF16, the types LoRA tensors may use. */
bool ls_dtype_is_lora_float(enum ls_dtype d);

/* What an import does to tensor element types. */
enum ls_convert {
	LS_CONVERT_KEEP = 0, /* store tensors in the dtype of the file (default) */
	LS_CONVERT_F16,
	LS_CONVERT_BF16,
	LS_CONVERT_F32,
};

/* Parse "keep", "f16", "bf16" or "f32"; returns 0 or -EINVAL. */
int ls_convert_from_name(const char *s, enum ls_convert *out);
const char *ls_convert_name(enum ls_convert c);

/* The dtype a tensor of dtype `from` has after conversion c. */
enum ls_dtype ls_convert_target(enum ls_convert c, enum ls_dtype from);

/* Scalar conversions; float-to-half ones round to nearest, ties to even. */
float ls_f16_to_f32(uint16_t h);
uint16_t ls_f32_to_f16(float f);
float ls_bf16_to_f32(uint16_t b);
uint16_t ls_f32_to_bf16(float f);

/*
 * Convert n elements of a float dtype (F32/F16/BF16) into another float dtype.
 * src and dst may not overlap; neither needs any alignment.  Returns 0, or
 * -EINVAL when either dtype is not F32, F16 or BF16.
 */
int ls_dtype_convert(enum ls_dtype from, const void *src, enum ls_dtype to, void *dst,
		     size_t n);

/*
 * Count NaN and infinite elements among n elements of a float dtype.  Other
 * dtypes have no non-finite values and count 0.  The data needs no alignment.
 */
size_t ls_count_nonfinite(enum ls_dtype d, const void *data, size_t n);

#endif
