/* The name tables of ls_types.h. */
#include "ls_types.h"

#include <errno.h>
#include <string.h>

struct ls_dtype_info {
	const char *name;
	size_t size; /* bytes per element */
};

/* Indexed by enum ls_dtype; names are exactly those of the safetensors format. */
static const struct ls_dtype_info ls_dtypes[LS_DTYPE_COUNT] = {
	[LS_DTYPE_INVALID] = {"?", 0},
	[LS_DTYPE_F32] = {"F32", 4},
	[LS_DTYPE_F16] = {"F16", 2},
	[LS_DTYPE_BF16] = {"BF16", 2},
	[LS_DTYPE_F64] = {"F64", 8},
	[LS_DTYPE_BOOL] = {"BOOL", 1},
	[LS_DTYPE_U8] = {"U8", 1},
	[LS_DTYPE_I8] = {"I8", 1},
	[LS_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
	[LS_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
	[LS_DTYPE_I16] = {"I16", 2},
	[LS_DTYPE_U16] = {"U16", 2},
	[LS_DTYPE_I32] = {"I32", 4},
	[LS_DTYPE_U32] = {"U32", 4},
	[LS_DTYPE_I64] = {"I64", 8},
	[LS_DTYPE_U64] = {"U64", 8},
};

static bool ls_dtype_valid(enum ls_dtype d)
{
	return d > LS_DTYPE_INVALID && d < LS_DTYPE_COUNT;
}

enum ls_dtype ls_dtype_from_name(const char *s)
{
	if (!s)
		return LS_DTYPE_INVALID;
	for (int d = LS_DTYPE_INVALID + 1; d < LS_DTYPE_COUNT; d++)
		if (strcmp(s, ls_dtypes[d].name) == 0)
			return (enum ls_dtype)d;
	return LS_DTYPE_INVALID;
}

const char *ls_dtype_name(enum ls_dtype d)
{
	return ls_dtype_valid(d) ? ls_dtypes[d].name : "?";
}

size_t ls_dtype_size(enum ls_dtype d)
{
	return ls_dtype_valid(d) ? ls_dtypes[d].size : 0;
}

bool ls_dtype_is_lora_float(enum ls_dtype d)
{
	return d == LS_DTYPE_F32 || d == LS_DTYPE_F16 || d == LS_DTYPE_BF16;
}

static const char *const ls_convert_names[] = {
	[LS_CONVERT_KEEP] = "keep",
	[LS_CONVERT_F16] = "f16",
	[LS_CONVERT_BF16] = "bf16",
	[LS_CONVERT_F32] = "f32",
};

#define LS_CONVERT_COUNT (sizeof(ls_convert_names) / sizeof(ls_convert_names[0]))

int ls_convert_from_name(const char *s, enum ls_convert *out)
{
	for (size_t i = 0; s && i < LS_CONVERT_COUNT; i++)
		if (strcmp(s, ls_convert_names[i]) == 0) {
			if (out)
				*out = (enum ls_convert)i;
			return 0;
		}
	return -EINVAL;
}

const char *ls_convert_name(enum ls_convert c)
{
	return (unsigned)c < LS_CONVERT_COUNT ? ls_convert_names[c] : "?";
}

static const char *const ls_kind_names[] = {
	[LS_KIND_A] = "A",
	[LS_KIND_B] = "B",
	[LS_KIND_EXTRA] = "extra",
	[LS_KIND_MAGNITUDE] = "magnitude",
};

const char *ls_tensor_kind_name(enum ls_tensor_kind k)
{
	return k >= LS_KIND_A && k <= LS_KIND_MAGNITUDE ? ls_kind_names[k] : "?";
}

int ls_tensor_kind_from_name(const char *s, enum ls_tensor_kind *out)
{
	for (int k = LS_KIND_A; s && k <= LS_KIND_MAGNITUDE; k++)
		if (strcmp(s, ls_kind_names[k]) == 0) {
			*out = (enum ls_tensor_kind)k;
			return 0;
		}
	return -EINVAL;
}

const char *ls_tier_name(enum ls_tier_kind t)
{
	return t == LS_TIER_HOST ? "host" : t == LS_TIER_DEVICE ? "device" : "?";
}

int ls_tier_from_name(const char *s, enum ls_tier_kind *out)
{
	if (s && strcmp(s, "host") == 0)
		*out = LS_TIER_HOST;
	else if (s && strcmp(s, "device") == 0)
		*out = LS_TIER_DEVICE;
	else
		return -EINVAL;
	return 0;
}
