/*
 * Tests of the safetensors header reader.  Files are built by hand here: an
 * 8-byte length, a literal JSON header and data bytes, so that each test
 * shows exactly which byte makes a file valid or invalid.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "st_strict.h"

#define WHAT "adapter_model.safetensors"

struct blob {
	unsigned char *p;
	size_t len;
};

static void put_le64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* A file: the length of header, the header, then data_len pattern bytes. */
static struct blob file_with(const char *header, size_t header_len, size_t data_len)
{
	struct blob b = {.len = 8 + header_len + data_len};
	b.p = malloc(b.len ? b.len : 1);
	cr_assert_not_null(b.p);
	put_le64(b.p, header_len);
	memcpy(b.p + 8, header, header_len);
	for (size_t i = 0; i < data_len; i++)
		b.p[8 + header_len + i] = (unsigned char)i;
	return b;
}

static int parse(const char *header, size_t data_len, struct ls_st_file *f, struct ls_err *e)
{
	struct blob b = file_with(header, strlen(header), data_len);
	int rc = ls_st_parse_buffer(b.p, b.len, WHAT, f, e);
	free(b.p);
	return rc;
}

/* Write bytes to an unlinked temporary file and read it with ls_st_read_fd. */
static int parse_fd(const void *bytes, size_t len, struct ls_st_file *f, struct ls_err *e)
{
	char path[] = "/tmp/test_safetensors_XXXXXX";
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	unlink(path);
	cr_assert_eq(write(fd, bytes, len), (ssize_t)len);
	int rc = ls_st_read_fd(fd, WHAT, f, e);
	close(fd);
	return rc;
}

static void assert_empty(const struct ls_st_file *f)
{
	cr_assert_eq(f->n_tensors, 0);
	cr_assert_null(f->tensors);
	cr_assert_eq(f->n_meta, 0);
	cr_assert_null(f->meta);
}

/* Parse, expect the code, and check the message names the file. */
static void expect_error(const char *header, size_t data_len, int code)
{
	struct ls_st_file f;
	struct ls_err e;
	int rc = parse(header, data_len, &f, &e);
	cr_assert_eq(rc, code, "header %s: got %d (%s), want %d (%s): %s", header, rc,
		     ls_error_name(rc), code, ls_error_name(code), e.msg);
	cr_assert_eq(e.code, code);
	cr_assert(strstr(e.msg, WHAT) != NULL, "message does not name the file: %s", e.msg);
	assert_empty(&f);
}

#define X_F32 "\"x\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}"
#define ONE_F32 "{" X_F32 "}"

/* Valid files */

Test(safetensors, accepts_single_f32_tensor)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse(ONE_F32, 24, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.n_tensors, 1);
	cr_assert_str_eq(f.tensors[0].name, "x");
	cr_assert_eq(f.tensors[0].dtype, LS_DTYPE_F32);
	cr_assert_eq(f.tensors[0].ndim, 2);
	cr_assert_eq(f.tensors[0].shape[0], 2);
	cr_assert_eq(f.tensors[0].shape[1], 3);
	cr_assert_eq(f.tensors[0].begin, 0);
	cr_assert_eq(f.tensors[0].end, 24);
	cr_assert_eq(ls_st_tensor_numel(&f.tensors[0]), 6);
	cr_assert_eq(f.header_len, strlen(ONE_F32));
	cr_assert_eq(f.data_offset, 8 + strlen(ONE_F32));
	cr_assert_eq(f.data_len, 24);
	cr_assert_eq(f.n_meta, 0);
	ls_st_file_free(&f);
	assert_empty(&f);
}

Test(safetensors, accepts_leading_and_trailing_whitespace)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse(" \n\t\r" ONE_F32 "        ", 24, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.n_tensors, 1);
	ls_st_file_free(&f);
}

Test(safetensors, accepts_empty_header_without_data)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse("{}", 0, &f, &e), 0, "%s", e.msg);
	assert_empty(&f);
	cr_assert_eq(f.data_len, 0);
	ls_st_file_free(&f);
}

Test(safetensors, keeps_metadata_in_header_order)
{
	struct ls_st_file f;
	struct ls_err e;
	const char *h = "{\"__metadata__\":{\"format\":\"pt\",\"b\":\"2\",\"a\":\"\"}," X_F32 "}";
	cr_assert_eq(parse(h, 24, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.n_meta, 3);
	cr_assert_str_eq(f.meta[0].key, "format");
	cr_assert_str_eq(f.meta[0].value, "pt");
	cr_assert_str_eq(f.meta[1].key, "b");
	cr_assert_str_eq(f.meta[1].value, "2");
	cr_assert_str_eq(f.meta[2].key, "a");
	cr_assert_str_eq(f.meta[2].value, "");
	cr_assert_eq(f.n_tensors, 1);
	ls_st_file_free(&f);
}

Test(safetensors, accepts_empty_metadata_object)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse("{\"__metadata__\":{}}", 0, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.n_meta, 0);
	ls_st_file_free(&f);
}

Test(safetensors, accepts_zero_size_tensors)
{
	struct ls_st_file f;
	struct ls_err e;
	const char *h = "{\"z\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[8,8]},"
			"\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
			"\"e\":{\"dtype\":\"F32\",\"shape\":[4,0],\"data_offsets\":[0,0]},"
			"\"t\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[8,8]}}";
	cr_assert_eq(parse(h, 8, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.n_tensors, 4);
	cr_assert_str_eq(f.tensors[0].name, "e");
	cr_assert_str_eq(f.tensors[1].name, "a");
	cr_assert_eq(ls_st_tensor_numel(&f.tensors[2]), 0);
	ls_st_file_free(&f);
}

Test(safetensors, accepts_only_zero_size_tensor_without_data)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse("{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0,
			   &f, &e),
		     0, "%s", e.msg);
	ls_st_file_free(&f);
}

Test(safetensors, accepts_scalar_with_empty_shape)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse("{\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, &f,
			   &e),
		     0, "%s", e.msg);
	cr_assert_eq(f.tensors[0].ndim, 0);
	cr_assert_eq(ls_st_tensor_numel(&f.tensors[0]), 1);
	ls_st_file_free(&f);
}

Test(safetensors, accepts_eight_dimensions)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse("{\"x\":{\"dtype\":\"U8\",\"shape\":[1,2,1,2,1,2,1,2],"
			   "\"data_offsets\":[0,16]}}",
			   16, &f, &e),
		     0, "%s", e.msg);
	cr_assert_eq(f.tensors[0].ndim, 8);
	cr_assert_eq(ls_st_tensor_numel(&f.tensors[0]), 16);
	ls_st_file_free(&f);
}

Test(safetensors, sorts_tensors_by_begin)
{
	struct ls_st_file f;
	struct ls_err e;
	const char *h = "{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
			"\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]},"
			"\"a\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}";
	cr_assert_eq(parse(h, 12, &f, &e), 0, "%s", e.msg);
	cr_assert_str_eq(f.tensors[0].name, "a");
	cr_assert_str_eq(f.tensors[1].name, "b");
	cr_assert_str_eq(f.tensors[2].name, "c");
	cr_assert_eq(f.tensors[1].dtype, LS_DTYPE_F16);
	ls_st_file_free(&f);
}

Test(safetensors, accepts_every_known_dtype)
{
	for (int d = LS_DTYPE_INVALID + 1; d < LS_DTYPE_COUNT; d++) {
		char h[200];
		size_t size = ls_dtype_size((enum ls_dtype)d);
		snprintf(h, sizeof(h), "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
			 ls_dtype_name((enum ls_dtype)d), 3 * size);
		struct ls_st_file f;
		struct ls_err e;
		cr_assert_eq(parse(h, 3 * size, &f, &e), 0, "%s: %s", h, e.msg);
		cr_assert_eq(f.tensors[0].dtype, (enum ls_dtype)d);
		ls_st_file_free(&f);
	}
}

/* The reference's TensorInfo has no deny_unknown_fields: serde ignores extra keys. */
Test(safetensors, ignores_unknown_keys_in_tensor_entry_like_reference)
{
	struct ls_st_file f;
	struct ls_err e;
	const char *h = "{\"x\":{\"dtype\":\"U8\",\"extra\":[1,{}],\"shape\":[2],"
			"\"data_offsets\":[0,2]}}";
	cr_assert_eq(parse(h, 2, &f, &e), 0, "%s", e.msg);
	ls_st_file_free(&f);
}

Test(safetensors, parse_header_reads_json_without_length_prefix)
{
	struct ls_st_file f;
	struct ls_err e;
	/* Not NUL terminated: the byte after the header is garbage. */
	char buf[sizeof(ONE_F32) + 1];
	memcpy(buf, ONE_F32, strlen(ONE_F32));
	buf[strlen(ONE_F32)] = 'X';
	cr_assert_eq(ls_st_parse_header(buf, strlen(ONE_F32), 24, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.n_tensors, 1);
	cr_assert_eq(f.header_len, strlen(ONE_F32));
	cr_assert_eq(f.data_len, 24);
	ls_st_file_free(&f);
}

Test(safetensors, parse_header_rejects_gap_and_names_tensor)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_parse_header(ONE_F32, strlen(ONE_F32), 25, &f, &e), LS_E_OFFSET_GAP);
	cr_assert(strstr(e.msg, "'x'") != NULL, "%s", e.msg);
	assert_empty(&f);
}

Test(safetensors, read_fd_accepts_valid_file)
{
	struct blob b = file_with(ONE_F32, strlen(ONE_F32), 24);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse_fd(b.p, b.len, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.n_tensors, 1);
	cr_assert_eq(f.data_offset, 8 + strlen(ONE_F32));
	cr_assert_eq(f.data_len, 24);
	ls_st_file_free(&f);
	free(b.p);
}

Test(safetensors, file_free_is_safe_twice_and_on_zeroed_file)
{
	struct ls_st_file f;
	memset(&f, 0, sizeof(f));
	ls_st_file_free(&f);
	struct ls_err e;
	cr_assert_eq(parse(ONE_F32, 24, &f, &e), 0);
	ls_st_file_free(&f);
	ls_st_file_free(&f);
	ls_st_file_free(NULL);
}

/* File structure */

Test(safetensors, rejects_file_shorter_than_8_bytes)
{
	unsigned char b[7] = {2, 0, 0, 0, 0, 0, 0};
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_parse_buffer(b, sizeof(b), WHAT, &f, &e), LS_E_TRUNCATED);
	cr_assert(strstr(e.msg, WHAT) != NULL);
	cr_assert_eq(ls_st_parse_buffer(b, 0, WHAT, &f, &e), LS_E_TRUNCATED);
	assert_empty(&f);
}

Test(safetensors, read_fd_rejects_file_shorter_than_8_bytes)
{
	unsigned char b[5] = {2, 0, 0, 0, 0};
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse_fd(b, sizeof(b), &f, &e), LS_E_TRUNCATED);
	cr_assert(strstr(e.msg, WHAT) != NULL);
	cr_assert_eq(parse_fd(b, 0, &f, &e), LS_E_TRUNCATED);
	assert_empty(&f);
}

Test(safetensors, rejects_header_length_past_end_of_file)
{
	struct blob b = file_with(ONE_F32, strlen(ONE_F32), 0);
	put_le64(b.p, strlen(ONE_F32) + 1);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_parse_buffer(b.p, b.len, WHAT, &f, &e), LS_E_HEADER_BOUNDS);
	cr_assert_eq(parse_fd(b.p, b.len, &f, &e), LS_E_HEADER_BOUNDS);
	cr_assert(strstr(e.msg, WHAT) != NULL);
	assert_empty(&f);
	free(b.p);
}

Test(safetensors, rejects_header_length_of_2_pow_64_minus_1)
{
	unsigned char b[16];
	memset(b, 0xff, 8);
	memcpy(b + 8, "{}      ", 8);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_parse_buffer(b, sizeof(b), WHAT, &f, &e), LS_E_HEADER_TOO_LARGE);
	cr_assert_eq(parse_fd(b, sizeof(b), &f, &e), LS_E_HEADER_TOO_LARGE);
}

Test(safetensors, rejects_header_length_one_above_cap_before_reading)
{
	unsigned char b[16];
	put_le64(b, LS_ST_HEADER_MAX + 1);
	memcpy(b + 8, "{}      ", 8);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_parse_buffer(b, sizeof(b), WHAT, &f, &e), LS_E_HEADER_TOO_LARGE);
	cr_assert_eq(parse_fd(b, sizeof(b), &f, &e), LS_E_HEADER_TOO_LARGE);
	cr_assert(strstr(e.msg, WHAT) != NULL);
}

/* A length exactly at the cap passes the cap check, so the short file is the error. */
Test(safetensors, header_length_at_cap_is_checked_against_file_size)
{
	unsigned char b[16];
	put_le64(b, LS_ST_HEADER_MAX);
	memcpy(b + 8, "{}      ", 8);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_parse_buffer(b, sizeof(b), WHAT, &f, &e), LS_E_HEADER_BOUNDS);
	cr_assert_eq(parse_fd(b, sizeof(b), &f, &e), LS_E_HEADER_BOUNDS);
}

Test(safetensors, accepts_header_exactly_at_cap)
{
	size_t n = LS_ST_HEADER_MAX;
	unsigned char *b = malloc(8 + n);
	cr_assert_not_null(b);
	put_le64(b, n);
	memset(b + 8, ' ', n);
	memcpy(b + 8, "{}", 2);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_parse_buffer(b, 8 + n, WHAT, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.header_len, n);
	ls_st_file_free(&f);
	free(b);
}

/* JSON */

Test(safetensors, rejects_invalid_json)
{
	expect_error("{\"x\":", 0, LS_E_HEADER_JSON);
	expect_error("", 0, LS_E_HEADER_JSON);
	expect_error("   ", 0, LS_E_HEADER_JSON);
	expect_error("{'x':1}", 0, LS_E_HEADER_JSON);
}

Test(safetensors, rejects_trailing_bytes_after_json)
{
	expect_error("{} x", 0, LS_E_HEADER_JSON);
	expect_error("{}{}", 0, LS_E_HEADER_JSON);
	expect_error(ONE_F32 " ,", 24, LS_E_HEADER_JSON);
}

Test(safetensors, rejects_nul_padding_after_json)
{
	struct blob b = file_with("{}\0\0", 4, 0);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_parse_buffer(b.p, b.len, WHAT, &f, &e), LS_E_HEADER_JSON);
	free(b.p);
}

Test(safetensors, rejects_control_byte_outside_strings)
{
	expect_error("{}\x01", 0, LS_E_HEADER_JSON);
	expect_error("\x0b{}", 0, LS_E_HEADER_JSON);
}

Test(safetensors, rejects_raw_control_byte_inside_string)
{
	expect_error("{\"__metadata__\":{\"a\":\"x\x01y\"}}", 0, LS_E_HEADER_JSON);
}

Test(safetensors, rejects_byte_order_mark)
{
	expect_error("\xef\xbb\xbf{}", 0, LS_E_HEADER_JSON);
}

Test(safetensors, rejects_invalid_utf8)
{
	expect_error("{\"__metadata__\":{\"a\":\"\xff\"}}", 0, LS_E_HEADER_JSON);
	expect_error("{\"__metadata__\":{\"a\":\"\xc0\x80\"}}", 0, LS_E_HEADER_JSON);   /* overlong */
	expect_error("{\"__metadata__\":{\"a\":\"\xed\xa0\x80\"}}", 0, LS_E_HEADER_JSON); /* surrogate */
	expect_error("{\"__metadata__\":{\"a\":\"\xe2\x82\"}}", 0, LS_E_HEADER_JSON);   /* cut short */
}

Test(safetensors, accepts_valid_utf8_names)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse("{\"caf\xc3\xa9\xf0\x9f\x98\x80\":{\"dtype\":\"U8\",\"shape\":[1],"
			   "\"data_offsets\":[0,1]}}",
			   1, &f, &e),
		     0, "%s", e.msg);
	cr_assert_str_eq(f.tensors[0].name, "caf\xc3\xa9\xf0\x9f\x98\x80");
	ls_st_file_free(&f);
}

/* Schema */

Test(safetensors, rejects_top_level_that_is_not_an_object)
{
	expect_error("[]", 0, LS_E_HEADER_SCHEMA);
	expect_error("\"x\"", 0, LS_E_HEADER_SCHEMA);
	expect_error("null", 0, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_tensor_entry_that_is_not_an_object)
{
	expect_error("{\"x\":1}", 0, LS_E_HEADER_SCHEMA);
	expect_error("{\"x\":[\"F32\",[1],[0,4]]}", 4, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_missing_dtype)
{
	expect_error("{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_missing_shape)
{
	expect_error("{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_missing_data_offsets)
{
	expect_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_field_given_twice_in_tensor)
{
	expect_error("{\"x\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],"
		     "\"data_offsets\":[0,4]}}",
		     4, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_dtype_that_is_not_a_string)
{
	expect_error("{\"x\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
		     LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_shape_that_is_not_an_array)
{
	expect_error("{\"x\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4,
		     LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_non_integer_shape)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1,
		     LS_E_HEADER_SCHEMA);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}", 1,
		     LS_E_HEADER_SCHEMA);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[null],\"data_offsets\":[0,1]}}", 1,
		     LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_negative_shape)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1,
		     LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_shape_above_2_pow_53)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[9007199254740994],"
		     "\"data_offsets\":[0,1]}}",
		     1, LS_E_HEADER_SCHEMA);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1e400],\"data_offsets\":[0,1]}}", 1,
		     LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_more_than_eight_dimensions)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
		     "\"data_offsets\":[0,1]}}",
		     1, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_data_offsets_without_two_values)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 2,
		     LS_E_HEADER_SCHEMA);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1]}}", 1,
		     LS_E_HEADER_SCHEMA);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":{\"0\":1}}}", 1,
		     LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_negative_or_fractional_data_offsets)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1,
		     LS_E_HEADER_SCHEMA);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,0.5]}}", 1,
		     LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_data_offsets_ending_before_they_begin)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,0]}}", 1,
		     LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_duplicate_tensor_names)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
		     "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
		     2, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_metadata_that_is_not_an_object)
{
	expect_error("{\"__metadata__\":[\"a\"]}", 0, LS_E_HEADER_SCHEMA);
	expect_error("{\"__metadata__\":\"a\"}", 0, LS_E_HEADER_SCHEMA);
	expect_error("{\"__metadata__\":null}", 0, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_metadata_value_that_is_not_a_string)
{
	expect_error("{\"__metadata__\":{\"a\":\"b\",\"n\":1}}", 0, LS_E_HEADER_SCHEMA);
	expect_error("{\"__metadata__\":{\"o\":{}}}", 0, LS_E_HEADER_SCHEMA);
}

Test(safetensors, rejects_a_metadata_key_given_twice)
{
	expect_error("{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"a\":\"3\"}}", 0,
		     LS_E_HEADER_SCHEMA);
}

/*
 * The duplicate check of "__metadata__" was quadratic (80,000 keys took
 * 10 s); it sorts now, and more than 4,096 entries are refused before it
 * (below).  A repeat is found wherever it is among the most a map may have.
 */
Test(safetensors, a_key_repeated_anywhere_among_4096_metadata_entries_is_refused)
{
	enum { N = LS_ST_META_MAX };
	size_t cap = (size_t)N * 24 + 64, len = 0;
	char *h = malloc(cap);
	len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{");
	for (unsigned i = 0; i < N; i++)
		len += (size_t)snprintf(h + len, cap - len, "%s\"k%u\":\"\"", i ? "," : "",
					i == N - 1 ? 7u : i);
	len += (size_t)snprintf(h + len, cap - len, "}}");
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse(h, 0, &f, &e), LS_E_HEADER_SCHEMA, "%s", e.msg);
	cr_assert_not_null(strstr(e.msg, "\"k7\" more than once"), "%s", e.msg);
	free(h);
}

Test(safetensors, rejects_metadata_given_twice)
{
	expect_error("{\"__metadata__\":{},\"__metadata__\":{}}", 0, LS_E_HEADER_SCHEMA);
	expect_error("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0, LS_E_HEADER_SCHEMA);
}

/* dtype and sizes */

Test(safetensors, rejects_unknown_dtype)
{
	expect_error("{\"x\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
		     LS_E_DTYPE_UNKNOWN);
	expect_error("{\"x\":{\"dtype\":\"F5\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1,
		     LS_E_DTYPE_UNKNOWN);
}

Test(safetensors, rejects_shape_that_does_not_match_byte_range)
{
	struct ls_st_file f;
	struct ls_err e;
	int rc = parse("{\"x.lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[4,8],"
		       "\"data_offsets\":[0,96]}}",
		       96, &f, &e);
	cr_assert_eq(rc, LS_E_SHAPE_SIZE);
	cr_assert_str_eq(e.msg, WHAT ": tensor 'x.lora_A.weight': data_offsets [0, 96] hold 96 "
				"bytes but shape [4, 8] of F32 needs 128");
	assert_empty(&f);
}

Test(safetensors, rejects_shape_whose_size_overflows)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
		     "\"data_offsets\":[0,0]}}",
		     0, LS_E_SHAPE_SIZE);
	/* Overflow before a zero dimension is still an overflow, as in the reference. */
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,0],"
		     "\"data_offsets\":[0,0]}}",
		     0, LS_E_SHAPE_SIZE);
	expect_error("{\"x\":{\"dtype\":\"U64\",\"shape\":[4294967296,536870912],"
		     "\"data_offsets\":[0,0]}}",
		     0, LS_E_SHAPE_SIZE);
}

/* Offsets */

Test(safetensors, rejects_offsets_past_end_of_data)
{
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 3,
		     LS_E_OFFSET_BOUNDS);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[9,9]}}", 3,
		     LS_E_OFFSET_BOUNDS);
}

Test(safetensors, rejects_overlapping_offsets)
{
	expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		     "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
		     6, LS_E_OFFSET_OVERLAP);
}

Test(safetensors, rejects_identical_ranges)
{
	expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		     "\"b\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
		     4, LS_E_OFFSET_OVERLAP);
}

Test(safetensors, rejects_zero_size_tensor_inside_another)
{
	expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		     "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}",
		     4, LS_E_OFFSET_OVERLAP);
}

Test(safetensors, rejects_gap_between_tensors)
{
	expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[5,7]}}",
		     7, LS_E_OFFSET_GAP);
}

Test(safetensors, rejects_first_tensor_not_at_zero)
{
	expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[1,5]}}", 5,
		     LS_E_OFFSET_GAP);
}

Test(safetensors, rejects_data_not_fully_covered)
{
	expect_error(ONE_F32, 25, LS_E_OFFSET_GAP);
}

Test(safetensors, rejects_data_without_any_tensor)
{
	expect_error("{}", 1, LS_E_OFFSET_GAP);
	expect_error("{\"__metadata__\":{\"a\":\"b\"}}", 8, LS_E_OFFSET_GAP);
}

/* Errors */

Test(safetensors, error_message_names_file_tensor_and_reason)
{
	struct ls_st_file f;
	struct ls_err e;
	int rc = parse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		       "\"b.weight\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
		       6, &f, &e);
	cr_assert_eq(rc, LS_E_OFFSET_OVERLAP);
	cr_assert(strncmp(e.msg, WHAT ": ", strlen(WHAT) + 2) == 0, "%s", e.msg);
	cr_assert(strstr(e.msg, "'b.weight'") != NULL, "%s", e.msg);
	cr_assert(strstr(e.msg, "overlaps") != NULL, "%s", e.msg);
}

Test(safetensors, long_tensor_names_do_not_overflow_message)
{
	char h[2000];
	char name[1500];
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	snprintf(h, sizeof(h), "{\"%s\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,1]}}",
		 name);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse(h, 1, &f, &e), LS_E_SHAPE_SIZE);
	cr_assert_lt(strlen(e.msg), (size_t)LS_ERR_MSG_MAX);
	cr_assert(strstr(e.msg, WHAT) != NULL);
}

Test(safetensors, error_after_metadata_and_tensors_leaves_output_empty)
{
	struct ls_st_file f;
	struct ls_err e;
	int rc = parse("{\"__metadata__\":{\"a\":\"b\"},"
		       "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		       "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
		       9, &f, &e);
	cr_assert_eq(rc, LS_E_OFFSET_GAP);
	assert_empty(&f);
	cr_assert_eq(f.header_len, 0);
	cr_assert_eq(f.data_len, 0);
}

Test(safetensors, read_fd_rejects_directory_and_bad_fd)
{
	struct ls_st_file f;
	struct ls_err e;
	int fd = open("/tmp", O_RDONLY | O_DIRECTORY);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ls_st_read_fd(fd, WHAT, &f, &e), -EINVAL);
	close(fd);
	cr_assert_eq(ls_st_read_fd(-1, WHAT, &f, &e), -EBADF);
	assert_empty(&f);
}

Test(safetensors, read_fd_reports_json_errors_like_parse_buffer)
{
	struct blob b = file_with("{\"x\":{}} x", 10, 0);
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse_fd(b.p, b.len, &f, &e), LS_E_HEADER_JSON);
	cr_assert(strstr(e.msg, WHAT) != NULL);
	free(b.p);
}

Test(safetensors, read_fd_ignores_file_offset)
{
	struct blob b = file_with(ONE_F32, strlen(ONE_F32), 24);
	char path[] = "/tmp/test_safetensors_XXXXXX";
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	unlink(path);
	cr_assert_eq(write(fd, b.p, b.len), (ssize_t)b.len);
	/* The file offset is now at the end; pread must not care. */
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(ls_st_read_fd(fd, WHAT, &f, &e), 0, "%s", e.msg);
	ls_st_file_free(&f);
	close(fd);
	free(b.p);
}

/* ---- as strict as the reference's JSON parser (serde_json), where cJSON is not */

#define X_ENTRY(shape, offs) "{\"dtype\":\"U8\",\"shape\":" shape ",\"data_offsets\":" offs "}"

Test(safetensors, rejects_an_escaped_nul_that_would_cut_a_string_short)
{
	/* "F16\u0000xyz" was read as F16, a key "dtype\u0000x" as dtype. */
	expect_error("{\"x\":{\"dtype\":\"U8\\u0000xyz\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
		     LS_E_HEADER_JSON);
	expect_error("{\"x\":{\"dtype\\u0000x\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],"
		     "\"data_offsets\":[0,1]}}",
		     1, LS_E_HEADER_JSON);
	/* A LoRA A name with a tail after a NUL: refused, never imported as the A. */
	expect_error("{\"m.lora_A.weight\\u0000junk\":" X_ENTRY("[1]", "[0,1]") "}", 1,
		     LS_E_HEADER_JSON);
}

Test(safetensors, rejects_malformed_u_escapes_and_lone_surrogates)
{
	expect_error("{\"x\\uZZZZ\":" X_ENTRY("[1]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
	expect_error("{\"x\\u12\":" X_ENTRY("[1]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
	expect_error("{\"x\\ud800\":" X_ENTRY("[1]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
	expect_error("{\"x\\udc00\":" X_ENTRY("[1]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
	expect_error("{\"x\\ud800\\u0041\":" X_ENTRY("[1]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
	expect_error("{\"x\\q\":" X_ENTRY("[1]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
}

Test(safetensors, accepts_escapes_serde_json_takes_and_reads_them_decoded)
{
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse("{\"a\\u00e9\\ud83d\\ude00\\t\\\"\":{\"dtype\":\"U8\",\"sh\\u0061pe\":[1],"
			   "\"data_offsets\":[0,1]}}",
			   1, &f, &e),
		     0, "%s", e.msg);
	cr_assert_str_eq(f.tensors[0].name, "a\xc3\xa9\xf0\x9f\x98\x80\t\"");
	ls_st_file_free(&f);
}

Test(safetensors, rejects_raw_tab_newline_and_return_inside_strings)
{
	expect_error("{\"x\ty\":" X_ENTRY("[1]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
	expect_error("{\"x\ny\":" X_ENTRY("[1]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
	expect_error("{\"__metadata__\":{\"a\":\"b\rc\"}}", 0, LS_E_HEADER_JSON);
}

Test(safetensors, rejects_shapes_and_offsets_not_written_as_plain_integers)
{
	static const char *const bad[] = {"1.0", "1e0", "1E+0", "10e-1", "-0", "1."};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char h[200];
		snprintf(h, sizeof(h), "{\"x\":{\"dtype\":\"U8\",\"shape\":[%s],\"data_offsets\":[0,1]}}",
			 bad[i]);
		struct ls_st_file f;
		struct ls_err e;
		int rc = parse(h, 1, &f, &e);
		cr_assert(rc == LS_E_HEADER_SCHEMA || rc == LS_E_HEADER_JSON, "%s: %d %s", h, rc,
			  e.msg);
		snprintf(h, sizeof(h), "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,%s]}}",
			 bad[i]);
		rc = parse(h, 1, &f, &e);
		cr_assert(rc == LS_E_HEADER_SCHEMA || rc == LS_E_HEADER_JSON, "%s: %d %s", h, rc,
			  e.msg);
	}
	expect_error("{\"x\":" X_ENTRY("[1.0]", "[0,1]") "}", 1, LS_E_HEADER_SCHEMA);
	expect_error("{\"x\":" X_ENTRY("[01]", "[0,1]") "}", 1, LS_E_HEADER_JSON);
}

Test(safetensors, rejects_json_numbers_cjson_takes_and_serde_json_refuses)
{
	/* In a field the reference ignores, still parsed by it. */
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"z\":1e400}}", 1,
		     LS_E_HEADER_JSON);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"z\":01}}", 1,
		     LS_E_HEADER_JSON);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"z\":1.}}", 1,
		     LS_E_HEADER_JSON);
	expect_error("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"z\":-}}", 1,
		     LS_E_HEADER_JSON);
	/* What serde_json does take: an underflow is 0, a long integer a double. */
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],"
			   "\"z\":[1e-400,123456789012345678901234567890,-0.5e3]}}",
			   1, &f, &e),
		     0, "%s", e.msg);
	ls_st_file_free(&f);
}

/* serde_json's recursion limit: 127 nested arrays and objects pass, the 128th fails. */
Test(safetensors, nesting_is_limited_to_127_levels_as_the_reference_does)
{
	for (int total = 126; total <= 129; total++) {
		/* The header's object and the tensor's are two levels; z holds the rest. */
		int inner = total - 2;
		size_t cap = 256 + 2 * (size_t)inner;
		char *h = malloc(cap);
		size_t n = (size_t)snprintf(h, cap,
					    "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],"
					    "\"z\":");
		for (int i = 0; i < inner; i++)
			h[n++] = '[';
		for (int i = 0; i < inner; i++)
			h[n++] = ']';
		n += (size_t)snprintf(h + n, cap - n, "}}");
		struct ls_st_file f;
		struct ls_err e;
		int rc = parse(h, 1, &f, &e);
		if (total <= 127) {
			cr_assert_eq(rc, 0, "%d levels: %s", total, e.msg);
			ls_st_file_free(&f);
		} else {
			cr_assert_eq(rc, LS_E_HEADER_JSON, "%d levels: %d", total, rc);
			cr_assert_not_null(strstr(e.msg, "nested more than 127"), "%s", e.msg);
		}
		free(h);
	}
}

Test(safetensors, dtypes_safetensors_defines_and_lorastore_does_not_take_are_unsupported)
{
	static const char *const names[] = {"F4",	   "F6_E2M3",	  "F6_E3M2", "F8_E8M0",
					    "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char h[200];
		snprintf(h, sizeof(h), "{\"x\":{\"dtype\":\"%s\",\"shape\":[2],\"data_offsets\":[0,2]}}",
			 names[i]);
		struct ls_st_file f;
		struct ls_err e;
		cr_assert_eq(parse(h, 2, &f, &e), LS_E_DTYPE_UNSUPPORTED, "%s: %s", names[i], e.msg);
		cr_assert_not_null(strstr(e.msg, "unsupported dtype"), "%s", e.msg);
	}
	expect_error("{\"x\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
		     LS_E_DTYPE_UNKNOWN);
}

/*
 * Bounds checked before cJSON allocates a node per value: a 95 MB header of
 * 6.8 million metadata keys took 1.7 GB and seconds of a worker.
 */
Test(safetensors, more_than_4096_metadata_entries_are_refused_before_the_json_is_built)
{
	size_t cap = (size_t)(LS_ST_META_MAX + 1) * 16 + 64, len = 0;
	char *h = malloc(cap);
	len += (size_t)snprintf(h, cap, "{\"__metadata__\":{");
	for (unsigned i = 0; i <= LS_ST_META_MAX; i++)
		len += (size_t)snprintf(h + len, cap - len, "%s\"k%u\":\"\"", i ? "," : "", i);
	snprintf(h + len, cap - len, "}}");
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse(h, 0, &f, &e), LS_E_ADAPTER_LIMIT, "%s", e.msg);
	cr_assert_not_null(strstr(e.msg, "more than 4096 __metadata__ entries"), "%s", e.msg);
	/* Exactly at the bound is fine. */
	char *last = strrchr(h, ',');
	strcpy(last, "}}");
	cr_assert_eq(parse(h, 0, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.n_meta, LS_ST_META_MAX);
	ls_st_file_free(&f);
	free(h);
}

Test(safetensors, more_than_two_million_json_values_are_refused_before_the_json_is_built)
{
	/* One ignored field of 2,000,001 zeros. */
	size_t cap = (size_t)LS_ST_VALUES_MAX * 2 + 256, len = 0;
	char *h = malloc(cap);
	len += (size_t)snprintf(h, cap,
				"{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"z\":[0");
	for (unsigned i = 0; i < LS_ST_VALUES_MAX; i++) {
		h[len++] = ',';
		h[len++] = '0';
	}
	snprintf(h + len, cap - len, "]}}");
	struct ls_st_file f;
	struct ls_err e;
	cr_assert_eq(parse(h, 1, &f, &e), LS_E_ADAPTER_LIMIT, "%s", e.msg);
	cr_assert_not_null(strstr(e.msg, "more than 2000000 JSON values"), "%s", e.msg);
	free(h);
}
