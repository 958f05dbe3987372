/*
 * Error codes and error reports shared by the store, the daemon and the client.
 * The values equal the LORASTORE_E_* codes of the public header lorastore.h.
 *
 * Every function returns an int: 0 on success, a negative errno for a
 * system failure, or one of the negative LS_E_* codes below for lorastore's own
 * failures.  Functions that can fail on user input also fill a struct ls_err
 * with a message in full words naming the file, the tensor and the reason.
 */
#ifndef LS_ERROR_H
#define LS_ERROR_H

#include <stddef.h>

/* lorastore's own codes live in [LS_E_FIRST, LS_E_LAST], far from any errno. */
enum ls_error_code {
	LS_E_FIRST = -31000,

	/* safetensors file structure */
	LS_E_TRUNCATED = LS_E_FIRST,   /* file shorter than its 8-byte length field */
	LS_E_HEADER_BOUNDS,            /* header length runs past the end of the file */
	LS_E_HEADER_TOO_LARGE,         /* header longer than 100,000,000 bytes */
	LS_E_HEADER_JSON,              /* header is not valid JSON */
	LS_E_HEADER_SCHEMA,            /* valid JSON, but not a safetensors header */
	LS_E_DTYPE_UNKNOWN,            /* a dtype string safetensors does not define */
	LS_E_DTYPE_UNSUPPORTED,        /* a known dtype that LoRA tensors may not use */
	LS_E_SHAPE_SIZE,               /* shape x dtype size differs from the byte range */
	LS_E_OFFSET_BOUNDS,            /* a byte range past the end of the data section */
	LS_E_OFFSET_OVERLAP,           /* two byte ranges overlap */
	LS_E_OFFSET_GAP,               /* a gap between ranges, or data not covered */

	/* tensor values and LoRA structure */
	LS_E_NONFINITE,                /* NaN or infinity in a tensor */
	LS_E_LORA_UNPAIRED,            /* lora_A without lora_B or the reverse */
	LS_E_LORA_RANK,                /* rank differs between A, B and the config */
	LS_E_LORA_SHAPE,               /* a LoRA tensor of an impossible shape */
	LS_E_TENSOR_NAME,              /* a tensor name that cannot be normalized */
	LS_E_NO_TENSORS,               /* an adapter without any LoRA tensor */

	/* PEFT configuration */
	LS_E_CONFIG_MISSING,           /* no adapter_config.json */
	LS_E_CONFIG_INVALID,           /* adapter_config.json unreadable or inconsistent */

	/* store and catalog */
	LS_E_NAME_INVALID,             /* adapter name or reference malformed */
	LS_E_NOT_FOUND,                /* no such adapter or version */
	LS_E_CORRUPT,                  /* checksum mismatch or unreadable blob */
	LS_E_BLOB_FORMAT,              /* not a blob, or a format version we cannot read */
	LS_E_CATALOG,                  /* catalog schema or LMDB failure */
	LS_E_CATALOG_SCHEMA,           /* catalog written by an incompatible version */
	LS_E_BUSY,                     /* busy: the state directory is another process's, a
					  rebuild runs, or a connection is at --client-jobs */

	/* daemon and protocol */
	LS_E_PROTOCOL,                 /* malformed message */
	LS_E_FRAME_TOO_LARGE,          /* message over the frame cap */
	LS_E_VERSION,                  /* protocol version not supported */
	LS_E_NO_SPACE,                 /* budget exhausted by pinned adapters */
	LS_E_PIN_LIMIT,                /* the client's pinned-bytes limit reached */
	LS_E_DELETED,                  /* the adapter was deleted */
	LS_E_CLOSED,                   /* the connection is closed */
	LS_E_BACKEND,                  /* the memory backend is not available */

	/* kernels (applying adapters) */
	LS_E_SHAPE,                    /* shapes or ranks that do not fit together */
	LS_E_DTYPE,                    /* dtypes that do not fit together */
	LS_E_NOT_BUILT,                /* the path (CUDA) is not built into this binary */
	LS_E_NO_DEVICE,                /* no usable GPU */
	LS_E_DEVICE,                   /* a CUDA or cuBLAS call failed */
	LS_E_TIER,                     /* adapters held in another tier (or GPU) than the call needs */

	/* store (added later; kept after the others so that no value moves) */
	LS_E_BLOB_MISSING,             /* the catalog names a blob that is not on disk */
	LS_E_BLOB_TRUNCATED,           /* a blob shorter than its header says */
	LS_E_ADAPTER_LIMIT,            /* an adapter past lorastore's bounds (st_strict.h, LS_RECORD_MAX) */
	LS_E_BASE_CHANGED,             /* a new version for another base model or other modules */
	LS_E_ALIASED,                  /* a version an alias points at cannot be deleted */
	LS_E_ORIGIN,                   /* the origin (object store) is unreachable or refused */

	LS_E_LAST = LS_E_ORIGIN,
};

/* Longest message an ls_err holds, including the terminating NUL. */
#define LS_ERR_MSG_MAX 512

/* Where an error is reported: a code and a human sentence. */
struct ls_err {
	int code;
	char msg[LS_ERR_MSG_MAX];
};

/* Static text for a code (store codes and -errno); never NULL. */
const char *ls_strerror(int code);

/* Short stable identifier for a code, such as "offset_overlap" (for JSON). */
const char *ls_error_name(int code);

/*
 * Fill err (which may be NULL) with code and a printf-style message; returns
 * code so that callers can write `return ls_err_set(err, LS_E_..., "...")`.
 */
int ls_err_set(struct ls_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Clear err to "no error". */
void ls_err_clear(struct ls_err *err);

#endif
