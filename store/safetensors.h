/*
 * A safetensors reader as strict as the reference implementation.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON, then the
 * data section.  The JSON is an object mapping tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} plus an optional
 * "__metadata__" object of string values.  The reader accepts a header only if:
 * N <= LS_ST_HEADER_MAX; the header is valid JSON as serde_json reads it
 * (leading and trailing whitespace allowed; no raw control character in a
 * string, no malformed escape or lone surrogate, numbers in JSON's own form
 * and within a double's range, at most 127 levels of nesting: st_strict.h)
 * whose top level is an object; no string holds U+0000; shapes and
 * data_offsets are written as plain non-negative integers; every dtype is
 * one lorastore takes; the
 * product of the shape times the dtype size equals end - begin; every range
 * lies inside the data section; and the ranges, sorted, are contiguous, do not
 * overlap and cover the data section exactly.
 */
#ifndef LS_SAFETENSORS_H
#define LS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "ls_error.h"

/* Largest header the reference implementation accepts, in bytes. */
#define LS_ST_HEADER_MAX 100000000ULL

/* Most dimensions a tensor may have here. */
#define LS_ST_MAX_DIMS 8

struct ls_st_tensor {
	char *name;                      /* tensor name as in the file */
	enum ls_dtype dtype;
	unsigned ndim;                   /* 0 for a scalar */
	uint64_t shape[LS_ST_MAX_DIMS];
	uint64_t begin;                  /* byte offset in the data section */
	uint64_t end;                    /* one past the last byte */
};

struct ls_st_meta {
	char *key;
	char *value;
};

struct ls_st_file {
	uint64_t header_len;             /* N, bytes of JSON */
	uint64_t data_offset;            /* 8 + N: where the data section starts */
	uint64_t data_len;               /* bytes in the data section */
	size_t n_tensors;
	struct ls_st_tensor *tensors;    /* in file order of data_offsets */
	size_t n_meta;
	struct ls_st_meta *meta;         /* "__metadata__", in header order */
};

/*
 * Parse and validate a header.  json/json_len are the N header bytes (not NUL
 * terminated); data_len is the size of the data section that follows.
 * On success fills *out (release with ls_st_file_free) and returns 0.  On
 * failure returns one of LS_E_HEADER_JSON, LS_E_HEADER_SCHEMA,
 * LS_E_DTYPE_UNKNOWN, LS_E_DTYPE_UNSUPPORTED (a dtype safetensors defines
 * and lorastore does not take: F4, F6_*, F8_E8M0, the FNUZ floats, C64),
 * LS_E_SHAPE_SIZE, LS_E_OFFSET_BOUNDS,
 * LS_E_OFFSET_OVERLAP, LS_E_OFFSET_GAP or -ENOMEM, with a message in err
 * naming the tensor; *out is left empty.
 */
int ls_st_parse_header(const char *json, size_t json_len, uint64_t data_len,
		       struct ls_st_file *out, struct ls_err *err);

/*
 * Read and validate the header of the safetensors file open on fd (a regular
 * file; read with pread, the file offset is not used).  Besides the errors of
 * ls_st_parse_header: LS_E_TRUNCATED when the file is shorter than 8 bytes,
 * LS_E_HEADER_TOO_LARGE, LS_E_HEADER_BOUNDS when N runs past the end, or
 * -errno.  `what` names the file in messages (a path or a label).
 */
int ls_st_read_fd(int fd, const char *what, struct ls_st_file *out, struct ls_err *err);

/*
 * Same as ls_st_read_fd for a whole file already in memory.
 */
int ls_st_parse_buffer(const void *buf, size_t len, const char *what, struct ls_st_file *out,
		       struct ls_err *err);

/* Release what a parse filled in; safe on a zeroed or already freed file. */
void ls_st_file_free(struct ls_st_file *f);

/* Number of elements of t (1 for a scalar). */
uint64_t ls_st_tensor_numel(const struct ls_st_tensor *t);

#endif
