/*
 * A strict pass over a safetensors header's JSON, made before cJSON reads
 * it.  cJSON is lax where serde_json, the parser of the reference
 * implementation, is not: raw tabs and newlines inside strings, malformed
 * \u escapes and lone surrogates (which cJSON turns into U+0000), numbers
 * such as 01024, 1024. and 1e400, and nesting past serde_json's limit.  The
 * pass refuses each of these as the reference does, and beside it what
 * lorastore cannot hold: U+0000 in any string (names are C strings), and a
 * shape or data_offsets value that is not written as a plain non-negative
 * integer (1024.0, 1024E+0, -0: the reference reads them as floats and
 * refuses them; cJSON would read 1024).
 */
#ifndef LS_ST_STRICT_H
#define LS_ST_STRICT_H

#include <stddef.h>

/*
 * Most arrays and objects nested in one another.  serde_json refuses the
 * 128th (its recursion limit of 128 counts down to zero there).
 */
#define LS_ST_DEPTH_MAX 127

/*
 * lorastore's bounds on a header, checked in this pass, before cJSON
 * allocates a node for every value (a 95 MB header of millions of keys
 * took 1.7 GB and seconds of a worker).  A large real adapter has a few
 * thousand tensors (every linear module of every layer, experts included)
 * and a handful of metadata entries.  Each tensor also costs an entry in
 * the version's record and 256-byte alignment of its data.  Past any bound
 * the header is refused with LS_E_ADAPTER_LIMIT.
 */
#define LS_ST_TENSORS_MAX 65536u   /* tensors (the header's keys besides __metadata__) */
#define LS_ST_META_MAX 4096u       /* entries of __metadata__ */
#define LS_ST_VALUES_MAX 2000000u  /* JSON values in all (65,536 tensors take about 1M) */

/*
 * Check text[0..len] (valid UTF-8, with text[len] a NUL byte).  Returns 0,
 * LS_E_HEADER_SCHEMA for a shape or data_offsets number not written as a
 * plain non-negative integer, LS_E_ADAPTER_LIMIT past a bound above, or
 * LS_E_HEADER_JSON; the reason and the byte offset go to msg.
 */
int ls_st_strict_check(const char *text, size_t len, char *msg, size_t cap);

#endif
