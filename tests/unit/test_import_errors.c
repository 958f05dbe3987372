/*
 * Bad input to ls_store_import: each case gets its own specific error code, a
 * message naming the file (and the tensor where there is one), and leaves the
 * store exactly as it was: no catalog version, nothing in blobs/, refs/ or
 * tmp/.
 *
 * The adapters here are crafted by hand (header text + data bytes) so that one
 * defect at a time can be put in; the valid parts follow PEFT's layout.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "st_strict.h"
#include "store.h"
#include "synth.h"

static char *state_dir;
static char *work_dir;
static struct ls_store *store;

static void setup(void)
{
	state_dir = synth_mkdtemp("import-errors-state");
	work_dir = synth_mkdtemp("import-errors-adapters");
	struct ls_err err;
	int rc = ls_store_open(state_dir, &store, &err);
	cr_assert_eq(rc, 0, "open: %s", err.msg);
}

static void teardown(void)
{
	ls_store_close(store);
	synth_rm_rf(state_dir);
	synth_rm_rf(work_dir);
	free(state_dir);
	free(work_dir);
}

TestSuite(import_errors, .init = setup, .fini = teardown);

/* The module every crafted adapter uses, with and without PEFT's prefix. */
#define MODULE "model.layers.0.self_attn.q_proj"
#define NAME_A "base_model.model." MODULE ".lora_A.weight"
#define NAME_B "base_model.model." MODULE ".lora_B.weight"

/* A config consistent with the crafted tensors: rank 4, alpha 8. */
#define CONFIG_R4                                                                        \
	"{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": 4, \"lora_alpha\": 8," \
	" \"target_modules\": [\"q_proj\", \"v_proj\"]}"

/* A header under construction: text of a JSON object, tensors added one by one. */
struct header {
	char text[8192];
	size_t len;
	int entries;
};

static void hdr_init(struct header *h)
{
	h->len = (size_t)snprintf(h->text, sizeof(h->text), "{");
	h->entries = 0;
}

/* Append one tensor entry: dtype text, shape (ndim values) and data_offsets. */
static void hdr_add(struct header *h, const char *name, const char *dtype, unsigned ndim,
		    const uint64_t *shape, uint64_t begin, uint64_t end)
{
	char dims[128] = "";
	size_t dl = 0;
	for (unsigned i = 0; i < ndim; i++)
		dl += (size_t)snprintf(dims + dl, sizeof(dims) - dl, "%s%llu", i ? "," : "",
				       (unsigned long long)shape[i]);
	int n = snprintf(h->text + h->len, sizeof(h->text) - h->len,
			 "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],\"data_offsets\":[%llu,%llu]}",
			 h->entries ? "," : "", name, dtype, dims, (unsigned long long)begin,
			 (unsigned long long)end);
	cr_assert(n > 0 && (size_t)n < sizeof(h->text) - h->len, "header text too long");
	h->len += (size_t)n;
	h->entries++;
}

/* Shorthand for the common 2-D case. */
static void hdr_add2(struct header *h, const char *name, const char *dtype, uint64_t d0,
		     uint64_t d1, uint64_t begin, uint64_t end)
{
	uint64_t shape[2] = {d0, d1};
	hdr_add(h, name, dtype, 2, shape, begin, end);
}

static const char *hdr_end(struct header *h)
{
	cr_assert_lt(h->len + 1, sizeof(h->text));
	h->text[h->len++] = '}';
	h->text[h->len] = '\0';
	return h->text;
}

/* data_len bytes of small finite F32 values (any 4-byte-aligned slice is finite). */
static uint8_t *f32_data(size_t data_len)
{
	uint8_t *d = calloc(1, data_len ? data_len : 1);
	cr_assert_not_null(d);
	for (size_t i = 0; i + 4 <= data_len; i += 4) {
		float v = (float)((int)(i / 4 % 97) - 48) * 0.001f;
		memcpy(d + i, &v, 4);
	}
	return d;
}

static void put_f32(uint8_t *data, size_t element, float v)
{
	memcpy(data + 4 * element, &v, 4);
}

/* Write 8-byte little-endian header length, header text, then data. */
static void write_safetensors_raw(const char *path, const char *header, const void *data,
				  size_t data_len)
{
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f, "%s", path);
	uint64_t n = strlen(header);
	uint8_t le[8];
	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)(n >> (8 * i));
	cr_assert_eq(fwrite(le, 1, 8, f), 8);
	cr_assert_eq(fwrite(header, 1, n, f), n);
	if (data_len)
		cr_assert_eq(fwrite(data, 1, data_len, f), data_len);
	cr_assert_eq(fclose(f), 0);
}

/* A directory work_dir/sub (static buffer), created. */
static const char *adapter_path(const char *sub)
{
	static char dir[PATH_MAX];
	int n = snprintf(dir, sizeof(dir), "%s/%s", work_dir, sub);
	cr_assert(n > 0 && (size_t)n < sizeof(dir));
	mkdir(dir, 0755);
	return dir;
}

static void file_in(char *buf, size_t len, const char *dir, const char *leaf)
{
	int n = snprintf(buf, len, "%s/%s", dir, leaf);
	cr_assert(n > 0 && (size_t)n < len);
}

/*
 * Write an adapter directory: config text (NULL for none) and a safetensors
 * file from header text and data.  Returns the directory (static buffer).
 */
static const char *craft(const char *sub, const char *config, const char *header,
			 const void *data, size_t data_len)
{
	const char *dir = adapter_path(sub);
	char path[PATH_MAX + 64];
	if (config) {
		file_in(path, sizeof(path), dir, "adapter_config.json");
		cr_assert_eq(synth_write_text(path, config), 0);
	}
	file_in(path, sizeof(path), dir, "adapter_model.safetensors");
	write_safetensors_raw(path, header, data, data_len);
	return dir;
}

/* The standard valid pair: A F32 [4, 16] at [0, 256), B F32 [16, 4] at [256, 512). */
static const char *valid_pair_header(struct header *h)
{
	hdr_init(h);
	hdr_add2(h, NAME_A, "F32", 4, 16, 0, 256);
	hdr_add2(h, NAME_B, "F32", 16, 4, 256, 512);
	return hdr_end(h);
}

static int import_dir(const char *name, const char *dir, const struct ls_import_opts *opts,
		      Lorastore__VersionRecord **rec, struct ls_err *err)
{
	char path[PATH_MAX + 64];
	file_in(path, sizeof(path), dir, "adapter_config.json");
	int cfg = open(path, O_RDONLY);
	file_in(path, sizeof(path), dir, "adapter_model.safetensors");
	int st = open(path, O_RDONLY);
	cr_assert_geq(st, 0, "%s", path);
	int rc = ls_store_import(store, name, cfg, st, dir, opts, rec, NULL, err);
	if (cfg >= 0)
		close(cfg);
	close(st);
	return rc;
}

static size_t count_files(const char *sub)
{
	char path[PATH_MAX + 64];
	file_in(path, sizeof(path), state_dir, sub);
	DIR *d = opendir(path);
	cr_assert_not_null(d, "%s", path);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* No version of name, no version at all, and nothing written under the state directory. */
static void assert_store_unchanged(const char *name)
{
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(ls_store_lookup(store, name, &rec, &err), LS_E_NOT_FOUND,
		     "a version of %s was created", name);
	struct ls_catalog_stats cs;
	cr_assert_eq(ls_catalog_stats(ls_store_catalog(store), &cs, &err), 0, "%s", err.msg);
	cr_assert_eq(cs.versions, 0, "the catalog holds %llu versions",
		     (unsigned long long)cs.versions);
	cr_assert_eq(count_files("blobs"), 0, "blobs/ is not empty");
	cr_assert_eq(count_files("refs"), 0, "refs/ is not empty");
	cr_assert_eq(count_files("tmp"), 0, "tmp/ is not empty");
}

/* The message names dir/leaf, the file at fault. */
static void assert_names_file(const struct ls_err *err, const char *dir, const char *leaf)
{
	char path[PATH_MAX + 64];
	file_in(path, sizeof(path), dir, leaf);
	cr_assert(strstr(err->msg, path), "message does not name %s: %s", path, err->msg);
}

static void assert_names(const struct ls_err *err, const char *what)
{
	cr_assert(strstr(err->msg, what), "message does not name '%s': %s", what, err->msg);
}

/* After `after` in the message, the number n appears as a whole number. */
static void assert_number_after(const struct ls_err *err, const char *after, unsigned long n)
{
	const char *p = strstr(err->msg, after);
	cr_assert_not_null(p, "message does not name '%s': %s", after, err->msg);
	p += strlen(after);
	char want[32];
	snprintf(want, sizeof(want), "%lu", n);
	size_t lw = strlen(want);
	for (const char *q = strstr(p, want); q; q = strstr(q + 1, want)) {
		bool left = q == p || !(q[-1] >= '0' && q[-1] <= '9');
		bool right = !(q[lw] >= '0' && q[lw] <= '9');
		if (left && right)
			return;
	}
	cr_assert_fail("message does not give the count %lu after '%s': %s", n, after, err->msg);
}

/* Import dir as "bad" and check the code, the file named and an unchanged store. */
static struct ls_err import_fails(const char *dir, const struct ls_import_opts *opts, int code,
				  const char *leaf)
{
	struct ls_err err;
	memset(&err, 0, sizeof(err));
	int rc = import_dir("bad", dir, opts, NULL, &err);
	cr_assert_eq(rc, code, "expected %s, got %d (%s): %s", ls_error_name(code), rc,
		     ls_error_name(rc), err.msg);
	cr_assert_eq(err.code, code, "err.code %d differs from the return value", err.code);
	assert_store_unchanged("bad");
	assert_names_file(&err, dir, leaf);
	return err;
}

#define ST "adapter_model.safetensors"
#define CFG "adapter_config.json"

/* ---- file structure ---------------------------------------------------- */

Test(import_errors, file_shorter_than_8_bytes_gives_truncated_and_leaves_store_unchanged)
{
	const char *dir = adapter_path("short");
	char path[PATH_MAX + 64];
	file_in(path, sizeof(path), dir, CFG);
	cr_assert_eq(synth_write_text(path, CONFIG_R4), 0);
	file_in(path, sizeof(path), dir, ST);
	/* Five bytes: not even the 8-byte length field. */
	FILE *f = fopen(path, "wb");
	cr_assert_eq(fwrite("\x10\0\0\0\0", 1, 5, f), 5);
	fclose(f);
	import_fails(dir, NULL, LS_E_TRUNCATED, ST);
}

/*
 * A file cut inside its data section still has a complete header, whose
 * data_offsets now run past the end of the (shorter) data section: the reader
 * reports that range, so the code is LS_E_OFFSET_BOUNDS, not LS_E_TRUNCATED
 * (which is for files shorter than the length field) nor LS_E_OFFSET_GAP.
 */
Test(import_errors, data_section_cut_short_gives_offset_bounds_and_leaves_store_unchanged)
{
	struct header h;
	uint8_t *data = f32_data(512);
	/* Cut 100 bytes off the end: B's range [256, 512) now runs past 412. */
	const char *dir = craft("cut", CONFIG_R4, valid_pair_header(&h), data, 412);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_OFFSET_BOUNDS, ST);
	assert_names(&err, NAME_B);
}

Test(import_errors, header_length_past_end_of_file_gives_header_bounds_and_leaves_store_unchanged)
{
	const char *dir = adapter_path("bounds");
	char path[PATH_MAX + 64];
	file_in(path, sizeof(path), dir, CFG);
	cr_assert_eq(synth_write_text(path, CONFIG_R4), 0);
	file_in(path, sizeof(path), dir, ST);
	/* The length field says 1000 bytes; only 2 follow. */
	uint8_t bytes[10] = {0xe8, 0x03, 0, 0, 0, 0, 0, 0, '{', '}'};
	FILE *f = fopen(path, "wb");
	cr_assert_eq(fwrite(bytes, 1, sizeof(bytes), f), sizeof(bytes));
	fclose(f);
	import_fails(dir, NULL, LS_E_HEADER_BOUNDS, ST);
}

Test(import_errors, header_length_over_100000000_gives_header_too_large_and_leaves_store_unchanged)
{
	const char *dir = adapter_path("huge");
	char path[PATH_MAX + 64];
	file_in(path, sizeof(path), dir, CFG);
	cr_assert_eq(synth_write_text(path, CONFIG_R4), 0);
	file_in(path, sizeof(path), dir, ST);
	/* Only the 8-byte length 100,000,001: the cap is checked before the file size. */
	uint64_t n = LS_ST_HEADER_MAX + 1;
	uint8_t le[8];
	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)(n >> (8 * i));
	FILE *f = fopen(path, "wb");
	cr_assert_eq(fwrite(le, 1, 8, f), 8);
	fclose(f);
	import_fails(dir, NULL, LS_E_HEADER_TOO_LARGE, ST);
}

Test(import_errors, invalid_json_header_gives_header_json_and_leaves_store_unchanged)
{
	const char *dir = craft("json", CONFIG_R4, "{\"" NAME_A "\": {\"dtype\": \"F32\",", NULL, 0);
	import_fails(dir, NULL, LS_E_HEADER_JSON, ST);
}

Test(import_errors, overlapping_offsets_give_offset_overlap_and_leave_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, NAME_A, "F32", 4, 16, 0, 256);
	hdr_add2(&h, NAME_B, "F32", 16, 4, 128, 384);
	uint8_t *data = f32_data(384);
	const char *dir = craft("overlap", CONFIG_R4, hdr_end(&h), data, 384);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_OFFSET_OVERLAP, ST);
	assert_names(&err, NAME_A);
	assert_names(&err, NAME_B);
}

Test(import_errors, gapped_offsets_give_offset_gap_and_leave_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, NAME_A, "F32", 4, 16, 0, 256);
	hdr_add2(&h, NAME_B, "F32", 16, 4, 264, 520);
	uint8_t *data = f32_data(520);
	const char *dir = craft("gap", CONFIG_R4, hdr_end(&h), data, 520);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_OFFSET_GAP, ST);
	assert_names(&err, NAME_B);
}

Test(import_errors, shape_and_byte_range_mismatch_gives_shape_size_and_leaves_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	/* [4, 16] of F32 needs 256 bytes; the range holds 200. */
	hdr_add2(&h, NAME_A, "F32", 4, 16, 0, 200);
	hdr_add2(&h, NAME_B, "F32", 16, 4, 200, 456);
	uint8_t *data = f32_data(456);
	const char *dir = craft("size", CONFIG_R4, hdr_end(&h), data, 456);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_SHAPE_SIZE, ST);
	assert_names(&err, NAME_A);
}

Test(import_errors, unknown_dtype_gives_dtype_unknown_and_leaves_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, NAME_A, "F12", 4, 16, 0, 256);
	hdr_add2(&h, NAME_B, "F32", 16, 4, 256, 512);
	uint8_t *data = f32_data(512);
	const char *dir = craft("f12", CONFIG_R4, hdr_end(&h), data, 512);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_DTYPE_UNKNOWN, ST);
	assert_names(&err, NAME_A);
	assert_names(&err, "F12");
}

Test(import_errors, integer_dtype_lora_tensor_gives_dtype_unsupported_and_leaves_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, NAME_A, "I32", 4, 16, 0, 256);
	hdr_add2(&h, NAME_B, "F32", 16, 4, 256, 512);
	uint8_t *data = f32_data(512);
	const char *dir = craft("i32", CONFIG_R4, hdr_end(&h), data, 512);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_DTYPE_UNSUPPORTED, ST);
	assert_names(&err, NAME_A);
	assert_names(&err, "I32");
}

/* ---- values -------------------------------------------------------------- */

/* The valid pair with three NaN in A (64 elements). */
static const char *nan_adapter(void)
{
	struct header h;
	uint8_t *data = f32_data(512);
	put_f32(data, 3, NAN);
	put_f32(data, 17, -NAN);
	put_f32(data, 60, NAN);
	const char *dir = craft("nan", CONFIG_R4, valid_pair_header(&h), data, 512);
	free(data);
	return dir;
}

Test(import_errors, nan_in_a_tensor_gives_nonfinite_naming_tensor_and_count)
{
	struct ls_err err = import_fails(nan_adapter(), NULL, LS_E_NONFINITE, ST);
	assert_names(&err, NAME_A);
	assert_number_after(&err, NAME_A, 3);
	cr_assert(strstr(err.msg, "1 tensor in all") && strstr(err.msg, "--allow-nonfinite"),
		  "the refusal counts the tensors and names the way to accept them: %s", err.msg);
}

Test(import_errors, infinity_in_a_tensor_gives_nonfinite_naming_tensor_and_count)
{
	struct header h;
	uint8_t *data = f32_data(512);
	/* B is elements 64..127. */
	put_f32(data, 64 + 5, INFINITY);
	put_f32(data, 64 + 40, -INFINITY);
	const char *dir = craft("inf", CONFIG_R4, valid_pair_header(&h), data, 512);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_NONFINITE, ST);
	assert_names(&err, NAME_B);
	assert_number_after(&err, NAME_B, 2);
}

Test(import_errors, nan_file_is_accepted_with_allow_nonfinite)
{
	const char *dir = nan_adapter();
	struct ls_import_opts opts = {.allow_nonfinite = true};
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("nan", dir, &opts, &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 1);
	cr_assert_eq(rec->n_tensors, 2);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(count_files("blobs"), 1);
	cr_assert_eq(count_files("refs"), 1);
	cr_assert_eq(count_files("tmp"), 0);
}

Test(import_errors, f32_value_overflowing_f16_conversion_gives_nonfinite_naming_file_and_tensor)
{
	struct header h;
	uint8_t *data = f32_data(512);
	put_f32(data, 7, 1e6f); /* F16's largest finite value is 65504. */
	const char *dir = craft("overflow", CONFIG_R4, valid_pair_header(&h), data, 512);
	free(data);
	struct ls_import_opts opts = {.convert = LS_CONVERT_F16};
	struct ls_err err = import_fails(dir, &opts, LS_E_NONFINITE, ST);
	assert_names(&err, NAME_A);
}

/* ---- LoRA structure -------------------------------------------------------- */

Test(import_errors, lora_a_without_b_gives_lora_unpaired_and_leaves_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, NAME_A, "F32", 4, 16, 0, 256);
	uint8_t *data = f32_data(256);
	const char *dir = craft("only-a", CONFIG_R4, hdr_end(&h), data, 256);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_LORA_UNPAIRED, ST);
	assert_names(&err, NAME_A);
}

Test(import_errors, lora_b_without_a_gives_lora_unpaired_and_leaves_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, NAME_B, "F32", 16, 4, 0, 256);
	uint8_t *data = f32_data(256);
	const char *dir = craft("only-b", CONFIG_R4, hdr_end(&h), data, 256);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_LORA_UNPAIRED, ST);
	assert_names(&err, NAME_B);
}

Test(import_errors, rank_differing_between_a_and_b_gives_lora_rank_and_leaves_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, NAME_A, "F32", 4, 16, 0, 256);
	hdr_add2(&h, NAME_B, "F32", 16, 2, 256, 384);
	uint8_t *data = f32_data(384);
	const char *dir = craft("rank-ab", CONFIG_R4, hdr_end(&h), data, 384);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_LORA_RANK, ST);
	assert_names(&err, MODULE);
}

Test(import_errors, rank_differing_from_config_r_gives_lora_rank_and_leaves_store_unchanged)
{
	struct header h;
	uint8_t *data = f32_data(512);
	const char *dir = craft("rank-cfg",
				"{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16,"
				" \"target_modules\": [\"q_proj\"]}",
				valid_pair_header(&h), data, 512);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_LORA_RANK, ST);
	assert_names(&err, MODULE);
}

Test(import_errors, rank_pattern_consistent_with_tensor_ranks_is_accepted)
{
	/* r = 8, but k_proj and v_proj have rank 4 by rank_pattern, and tensors to match. */
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 8,
			       .rank_pattern = "{\"k_proj\": 4, \"v_proj\": 4}"};
	const char *dir = adapter_path("pattern");
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("pattern", dir, NULL, &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->n_scales, synth_lora_modules(&o));
	for (size_t i = 0; i < rec->n_scales; i++) {
		const Lorastore__ModuleScale *s = rec->scales[i];
		bool small = strstr(s->module, "k_proj") || strstr(s->module, "v_proj");
		cr_assert_eq(s->rank, small ? 4u : 8u, "%s has rank %u", s->module, s->rank);
	}
	lorastore__version_record__free_unpacked(rec, NULL);
}

/* ---- config ---------------------------------------------------------------- */

Test(import_errors, missing_config_gives_config_missing_and_leaves_store_unchanged)
{
	struct header h;
	uint8_t *data = f32_data(512);
	const char *dir = craft("no-config", NULL, valid_pair_header(&h), data, 512);
	free(data);
	struct ls_err err;
	int rc = import_dir("bad", dir, NULL, NULL, &err);
	cr_assert_eq(rc, LS_E_CONFIG_MISSING, "got %d (%s): %s", rc, ls_error_name(rc), err.msg);
	assert_names(&err, dir);
	assert_names(&err, CFG);
	assert_store_unchanged("bad");
}

Test(import_errors, invalid_config_json_gives_config_invalid_and_leaves_store_unchanged)
{
	struct header h;
	uint8_t *data = f32_data(512);
	const char *dir = craft("bad-config", "{\"peft_type\": \"LORA\", \"r\": ", valid_pair_header(&h),
				data, 512);
	free(data);
	import_fails(dir, NULL, LS_E_CONFIG_INVALID, CFG);
}

Test(import_errors, config_with_r_zero_gives_config_invalid_and_leaves_store_unchanged)
{
	struct header h;
	uint8_t *data = f32_data(512);
	const char *dir = craft("r0", "{\"peft_type\": \"LORA\", \"r\": 0, \"lora_alpha\": 8}",
				valid_pair_header(&h), data, 512);
	free(data);
	import_fails(dir, NULL, LS_E_CONFIG_INVALID, CFG);
}

/* ---- names ------------------------------------------------------------------ */

Test(import_errors, lora_marker_in_unknown_form_gives_tensor_name_and_leaves_store_unchanged)
{
	/* A quantization side tensor: ".lora_A.weight.absmax" is none of PEFT's forms. */
	static const char odd[] = "base_model.model." MODULE ".lora_A.weight.absmax";
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, NAME_A, "F32", 4, 16, 0, 256);
	hdr_add2(&h, NAME_B, "F32", 16, 4, 256, 512);
	uint64_t shape[1] = {4};
	hdr_add(&h, odd, "F32", 1, shape, 512, 528);
	uint8_t *data = f32_data(528);
	const char *dir = craft("odd-name", CONFIG_R4, hdr_end(&h), data, 528);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_TENSOR_NAME, ST);
	assert_names(&err, odd);
}

Test(import_errors, only_extra_tensors_give_no_tensors_and_leave_store_unchanged)
{
	struct header h;
	hdr_init(&h);
	hdr_add2(&h, "base_model.model.classifier.weight", "F32", 2, 16, 0, 128);
	uint64_t shape[1] = {2};
	hdr_add(&h, "base_model.model.classifier.bias", "F32", 1, shape, 128, 136);
	uint8_t *data = f32_data(136);
	const char *dir = craft("extras", CONFIG_R4, hdr_end(&h), data, 136);
	free(data);
	import_fails(dir, NULL, LS_E_NO_TENSORS, ST);
}

/* ---- bounds ------------------------------------------------------------- */

/*
 * An adapter of 250,000 two-byte tensors was committed before (64 MB
 * resident for 500 KB of data, and a record too large for any reply).
 * One tensor over the bound is refused before the data is read.
 */
Test(import_errors, more_than_65536_tensors_give_adapter_limit_and_leave_store_unchanged)
{
	const unsigned n = LS_ST_TENSORS_MAX + 1;
	size_t cap = (size_t)n * 96 + 16, len = 0;
	char *h = malloc(cap);
	cr_assert_not_null(h);
	h[len++] = '{';
	for (unsigned i = 0; i < n; i++)
		len += (size_t)snprintf(h + len, cap - len,
					"%s\"t%u\":{\"dtype\":\"F32\",\"shape\":[1],"
					"\"data_offsets\":[%u,%u]}",
					i ? "," : "", i, 4 * i, 4 * i + 4);
	h[len++] = '}';
	h[len] = '\0';
	uint8_t *data = f32_data((size_t)n * 4);
	const char *dir = craft("many", CONFIG_R4, h, data, (size_t)n * 4);
	free(h);
	free(data);
	struct ls_err err = import_fails(dir, NULL, LS_E_ADAPTER_LIMIT, ST);
	assert_number_after(&err, "more than", LS_ST_TENSORS_MAX);
}

/* A record bigger than a reply may carry is refused (imports check it before writing). */
Test(import_errors, a_record_over_4_mib_gives_adapter_limit)
{
	Lorastore__AdapterConfig cfg = LORASTORE__ADAPTER_CONFIG__INIT;
	enum { N = 5000 };
	char *names[N];
	char name[1024];
	memset(name, 'm', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	for (int i = 0; i < N; i++)
		names[i] = name;
	cfg.n_target_modules = N;
	cfg.target_modules = names;
	Lorastore__VersionRecord rec = LORASTORE__VERSION_RECORD__INIT;
	rec.name = "t/big";
	rec.config = &cfg;
	struct ls_err err;
	cr_assert_eq(ls_record_check_size(&rec, "t/big", &err), LS_E_ADAPTER_LIMIT);
	cr_assert_not_null(strstr(err.msg, "t/big: its record would be"), "%s", err.msg);
	cfg.n_target_modules = 100;
	cr_assert_eq(ls_record_check_size(&rec, "t/big", &err), 0, "%s", err.msg);
}
