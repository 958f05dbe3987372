/*
 * The conversions and value checks the importer needs on tensor element
 * types (the types themselves, their names and sizes: ls_types.h).
 */
#ifndef LS_DTYPE_H
#define LS_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ls_types.h"

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
