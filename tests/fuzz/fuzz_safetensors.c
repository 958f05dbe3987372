/*
 * libFuzzer harness for the safetensors reader: any byte string is a whole
 * file.  Besides crashes and sanitizer reports, it checks the promises the
 * reader makes: on success the tensors are sorted, contiguous, inside the
 * data section and sized by their shape; on failure the output is empty.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ls_st_file f;
	struct ls_err err;
	int rc = ls_st_parse_buffer(data, size, "fuzz.safetensors", &f, &err);
	if (rc != 0) {
		if (f.n_tensors || f.tensors || f.n_meta || f.meta || err.code != rc ||
		    !memchr(err.msg, '\0', sizeof(err.msg)))
			abort();
		return 0;
	}
	uint64_t pos = 0;
	for (size_t i = 0; i < f.n_tensors; i++) {
		const struct ls_st_tensor *t = &f.tensors[i];
		uint64_t bytes = ls_st_tensor_numel(t) * ls_dtype_size(t->dtype);
		if (t->begin != pos || t->end < t->begin || t->end - t->begin != bytes ||
		    t->ndim > LS_ST_MAX_DIMS || !t->name)
			abort();
		pos = t->end;
	}
	if (pos != f.data_len || f.data_offset + f.data_len != size ||
	    f.data_offset != 8 + f.header_len)
		abort();
	for (size_t i = 0; i < f.n_meta; i++)
		if (!f.meta[i].key || !f.meta[i].value)
			abort();
	ls_st_file_free(&f);
	return 0;
}
