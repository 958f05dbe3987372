/* Error text for store codes and errno values. */
#include "ls_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct ls_code_text {
	int code;
	const char *name;
	const char *text;
};

static const struct ls_code_text ls_codes[] = {
	{LS_E_TRUNCATED, "truncated", "file truncated"},
	{LS_E_HEADER_BOUNDS, "header_bounds", "header length past the end of the file"},
	{LS_E_HEADER_TOO_LARGE, "header_too_large", "header larger than the 100,000,000-byte cap"},
	{LS_E_HEADER_JSON, "header_json", "header is not valid JSON"},
	{LS_E_HEADER_SCHEMA, "header_schema", "header is not a safetensors header"},
	{LS_E_DTYPE_UNKNOWN, "dtype_unknown", "unknown dtype"},
	{LS_E_DTYPE_UNSUPPORTED, "dtype_unsupported", "dtype not allowed for LoRA tensors"},
	{LS_E_SHAPE_SIZE, "shape_size", "shape and dtype do not match the byte range"},
	{LS_E_OFFSET_BOUNDS, "offset_bounds", "tensor data out of bounds"},
	{LS_E_OFFSET_OVERLAP, "offset_overlap", "tensor data ranges overlap"},
	{LS_E_OFFSET_GAP, "offset_gap", "gap in tensor data"},
	{LS_E_NONFINITE, "nonfinite", "tensor holds NaN or infinity"},
	{LS_E_LORA_UNPAIRED, "lora_unpaired", "LoRA A without B, or B without A"},
	{LS_E_LORA_RANK, "lora_rank", "LoRA rank mismatch"},
	{LS_E_LORA_SHAPE, "lora_shape", "LoRA tensor of an impossible shape"},
	{LS_E_TENSOR_NAME, "tensor_name", "tensor name not understood"},
	{LS_E_NO_TENSORS, "no_tensors", "adapter has no LoRA tensors"},
	{LS_E_CONFIG_MISSING, "config_missing", "adapter_config.json missing"},
	{LS_E_CONFIG_INVALID, "config_invalid", "adapter_config.json invalid"},
	{LS_E_NAME_INVALID, "name_invalid", "invalid adapter name"},
	{LS_E_NOT_FOUND, "not_found", "no such adapter or version"},
	{LS_E_CORRUPT, "corrupt", "blob corrupt (checksum mismatch)"},
	{LS_E_BLOB_FORMAT, "blob_format", "not a lorastore blob, or an unreadable format version"},
	{LS_E_CATALOG, "catalog", "catalog failure"},
	{LS_E_CATALOG_SCHEMA, "catalog_schema", "catalog written by an incompatible version"},
	{LS_E_BUSY, "busy", "busy (state directory in use, a rebuild running, or too many requests waiting)"},
	{LS_E_PROTOCOL, "protocol", "malformed message"},
	{LS_E_FRAME_TOO_LARGE, "frame_too_large", "message larger than the frame cap"},
	{LS_E_VERSION, "version", "protocol version not supported"},
	{LS_E_NO_SPACE, "no_space", "memory budget exhausted by pinned adapters"},
	{LS_E_PIN_LIMIT, "pin_limit", "the client's pinned-bytes limit is reached"},
	{LS_E_DELETED, "deleted", "the adapter was deleted"},
	{LS_E_CLOSED, "closed", "the connection is closed"},
	{LS_E_BACKEND, "backend", "memory backend not available"},
	{LS_E_SHAPE, "shape", "shapes or ranks do not fit together"},
	{LS_E_DTYPE, "dtype", "dtypes do not fit together"},
	{LS_E_NOT_BUILT, "not_built", "path not built into this binary"},
	{LS_E_NO_DEVICE, "no_device", "no usable GPU"},
	{LS_E_DEVICE, "device", "CUDA or cuBLAS call failed"},
	{LS_E_TIER, "tier", "adapter held in another tier or on another GPU than the call needs"},
	{LS_E_BLOB_MISSING, "blob_missing", "blob file missing from the store"},
	{LS_E_BLOB_TRUNCATED, "blob_truncated", "blob file shorter than its header says"},
	{LS_E_ADAPTER_LIMIT, "adapter_limit",
	 "adapter past lorastore's bounds (tensors, metadata, header values or record size)"},
	{LS_E_BASE_CHANGED, "base_changed",
	 "a new version for another base model or other modules than the name's latest"},
	{LS_E_ALIASED, "aliased", "an alias points at the version"},
	{LS_E_ORIGIN, "origin", "the origin object store is unreachable or refused the request"},
};

static const struct ls_code_text *ls_code_find(int code)
{
	for (size_t i = 0; i < sizeof(ls_codes) / sizeof(ls_codes[0]); i++)
		if (ls_codes[i].code == code)
			return &ls_codes[i];
	return NULL;
}

const char *ls_strerror(int code)
{
	if (code == 0)
		return "success";
	const struct ls_code_text *t = ls_code_find(code);
	if (t)
		return t->text;
	if (code < 0 && code > -4096)
		return strerror(-code);
	return "unknown error";
}

const char *ls_error_name(int code)
{
	if (code == 0)
		return "ok";
	const struct ls_code_text *t = ls_code_find(code);
	if (t)
		return t->name;
	return "system";
}

int ls_err_set(struct ls_err *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	err->code = code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return code;
}

void ls_err_clear(struct ls_err *err)
{
	if (!err)
		return;
	err->code = 0;
	err->msg[0] = '\0';
}
