/* The store API on real state directories: import, lookup, list, delete, verify, gc, rebuild. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blob.h"
#include "store.h"
#include "synth.h"

static char *state_dir;
static char *work_dir;
static struct ls_store *store;

static void setup(void)
{
	state_dir = synth_mkdtemp("store");
	work_dir = synth_mkdtemp("adapters");
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

TestSuite(store, .init = setup, .fini = teardown);

/* Write a synthetic adapter under work_dir/sub and return its path (static buffer). */
static const char *make_adapter(const char *sub, const struct synth_opts *o)
{
	static char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/%s", work_dir, sub);
	mkdir(dir, 0755);
	cr_assert_eq(synth_adapter_dir(dir, o), 0);
	return dir;
}

static int import_dir_unchanged(const char *name, const char *dir,
				const struct ls_import_opts *opts, Lorastore__VersionRecord **rec,
				bool *unchanged, struct ls_err *err)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	int cfg = open(path, O_RDONLY);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int st = open(path, O_RDONLY);
	cr_assert_geq(st, 0);
	int rc = ls_store_import(store, name, cfg, st, dir, opts, rec, unchanged, err);
	if (cfg >= 0)
		close(cfg);
	close(st);
	return rc;
}

static int import_dir(const char *name, const char *dir, const struct ls_import_opts *opts,
		      Lorastore__VersionRecord **rec, struct ls_err *err)
{
	return import_dir_unchanged(name, dir, opts, rec, NULL, err);
}

static size_t count_files(const char *sub)
{
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof(cmd), "ls -1 %s/%s | wc -l", state_dir, sub);
	FILE *p = popen(cmd, "r");
	size_t n = 0;
	cr_assert(fscanf(p, "%zu", &n) == 1);
	pclose(p);
	return n;
}

Test(store, import_assigns_version_digest_and_generation)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 8};
	const char *dir = make_adapter("a", &o);
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("tenant/a", dir, NULL, &rec, &err), 0, "%s", err.msg);
	cr_assert_str_eq(rec->name, "tenant/a");
	cr_assert_eq(rec->version, 1);
	cr_assert_eq(rec->digest.len, 32);
	cr_assert_gt(rec->generation, 0);
	cr_assert_eq(rec->rank, 8);
	cr_assert_eq(rec->n_tensors, synth_tensor_count(&o));
	cr_assert_eq(rec->dtype, LORASTORE__DTYPE__DTYPE_F16);
	cr_assert_eq(rec->blob_bytes % LS_BLOB_PAGE, 0);
	for (size_t i = 0; i < rec->n_tensors; i++)
		cr_assert_eq(rec->tensors[i]->offset % LS_BLOB_ALIGN, 0, "tensor %zu misaligned", i);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(store, reimport_of_the_same_content_is_unchanged_and_adds_no_version)
{
	struct synth_opts o = {.family = SYNTH_GPT2};
	const char *dir = make_adapter("g", &o);
	Lorastore__VersionRecord *r1 = NULL, *r2 = NULL;
	struct ls_err err;
	bool unchanged = true;
	cr_assert_eq(import_dir_unchanged("g", dir, NULL, &r1, &unchanged, &err), 0, "%s",
		     err.msg);
	cr_assert_not(unchanged);
	cr_assert_eq(import_dir_unchanged("g", dir, NULL, &r2, &unchanged, &err), 0, "%s",
		     err.msg);
	cr_assert(unchanged, "the same digest as the latest version is not a new version");
	cr_assert_eq(r2->version, 1);
	cr_assert_eq(r2->generation, r1->generation);
	cr_assert_eq(count_files("refs"), 1);
	lorastore__version_record__free_unpacked(r1, NULL);
	lorastore__version_record__free_unpacked(r2, NULL);
}

Test(store, one_content_under_two_names_is_two_versions_of_one_blob)
{
	struct synth_opts o = {.family = SYNTH_GPT2};
	const char *dir = make_adapter("g", &o);
	Lorastore__VersionRecord *r1 = NULL, *r2 = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("g/one", dir, NULL, &r1, &err), 0, "%s", err.msg);
	cr_assert_eq(import_dir("g/two", dir, NULL, &r2, &err), 0, "%s", err.msg);
	cr_assert_gt(r2->generation, r1->generation);
	cr_assert_arr_eq(r1->digest.data, r2->digest.data, 32);
	cr_assert_eq(count_files("blobs"), 1, "content-addressed: one blob backs both");
	cr_assert_eq(count_files("refs"), 2);
	/* Deleting one keeps the blob the other uses. */
	struct ls_deleted_gens d;
	cr_assert_eq(ls_store_delete(store, "g/one", &d, &err), 0, "%s", err.msg);
	cr_assert_eq(d.n, 1);
	cr_assert_eq(d.freed_bytes, 0);
	cr_assert_eq(d.blob_bytes, r1->blob_bytes);
	free(d.gens);
	cr_assert_eq(count_files("blobs"), 1);
	cr_assert_eq(ls_store_delete(store, "g/two", &d, &err), 0, "%s", err.msg);
	cr_assert_eq(d.freed_bytes, r2->blob_bytes, "the last user of a blob frees it");
	cr_assert_eq(d.blobs_freed, 1);
	free(d.gens);
	cr_assert_eq(count_files("blobs"), 0);
	lorastore__version_record__free_unpacked(r1, NULL);
	lorastore__version_record__free_unpacked(r2, NULL);
}

Test(store, a_version_for_another_base_model_is_refused_unless_allowed)
{
	struct synth_opts llama = {.family = SYNTH_LLAMA, .seed = 1};
	struct synth_opts t5 = {.family = SYNTH_T5, .seed = 2};
	struct ls_err err;
	cr_assert_eq(import_dir("mix", make_adapter("m1", &llama), NULL, NULL, &err), 0, "%s",
		     err.msg);
	cr_assert_eq(import_dir("mix", make_adapter("m2", &t5), NULL, NULL, &err),
		     LS_E_BASE_CHANGED);
	cr_assert(strstr(err.msg, "--allow-new-base"), "the message names the way out: %s", err.msg);
	cr_assert_eq(count_files("refs"), 1, "nothing is added");
	struct ls_import_opts allow = {.allow_new_base = true};
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(import_dir("mix", make_adapter("m2", &t5), &allow, &rec, &err), 0, "%s",
		     err.msg);
	cr_assert_eq(rec->version, 2);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(store, a_new_rank_of_the_same_modules_is_a_new_version)
{
	struct synth_opts r4 = {.family = SYNTH_LLAMA, .rank = 4, .seed = 1};
	struct synth_opts r16 = {.family = SYNTH_LLAMA, .rank = 16, .seed = 1};
	struct ls_err err;
	cr_assert_eq(import_dir("rk", make_adapter("rk4", &r4), NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(import_dir("rk", make_adapter("rk16", &r16), NULL, NULL, &err), 0, "%s",
		     err.msg);
}

Test(store, an_alias_resolves_moves_and_goes_with_untag)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .seed = 1};
	struct synth_opts o2 = {.family = SYNTH_LLAMA, .seed = 2};
	struct ls_err err;
	cr_assert_eq(import_dir("acme/s", make_adapter("a1", &o1), NULL, NULL, &err), 0, "%s",
		     err.msg);
	cr_assert_eq(import_dir("acme/s", make_adapter("a2", &o2), NULL, NULL, &err), 0, "%s",
		     err.msg);
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_tag(store, "acme/s:prod", "acme/s@1", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 1);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(ls_store_lookup(store, "acme/s:prod", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 1);
	lorastore__version_record__free_unpacked(rec, NULL);
	size_t bad = 9;
	cr_assert_eq(ls_store_verify(store, "acme/s:prod", NULL, NULL, &bad, &err), 0, "%s",
		     err.msg);
	cr_assert_eq(bad, 0, "verify takes an alias as every reference does");
	char **aliases;
	size_t n;
	cr_assert_eq(ls_store_aliases_of(store, "acme/s", 1, &aliases, &n, &err), 0);
	cr_assert_eq(n, 1);
	cr_assert_str_eq(aliases[0], "acme/s:prod");
	free(aliases[0]);
	free(aliases);
	/* Tagging "name" takes the latest version, and moves the alias. */
	cr_assert_eq(ls_store_tag(store, "acme/s:prod", "acme/s", NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_lookup(store, "acme/s:prod", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 2);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(ls_store_aliases_of(store, "acme/s", 1, &aliases, &n, &err), 0);
	cr_assert_eq(n, 0, "the old version forgets the alias");
	free(aliases);
	cr_assert_eq(ls_store_untag(store, "acme/s:prod", &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_lookup(store, "acme/s:prod", &rec, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_store_untag(store, "acme/s:prod", &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_store_tag(store, "acme/s:prod", "acme/s@9", NULL, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_store_tag(store, "acme/s:", "acme/s", NULL, &err), LS_E_NAME_INVALID);
	cr_assert_eq(ls_store_tag(store, "acme/s:a b", "acme/s", NULL, &err), LS_E_NAME_INVALID);
}

Test(store, a_version_an_alias_points_at_is_not_deleted)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .seed = 1};
	struct synth_opts o2 = {.family = SYNTH_LLAMA, .seed = 2};
	struct ls_err err;
	cr_assert_eq(import_dir("t", make_adapter("t1", &o1), NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(import_dir("t", make_adapter("t2", &o2), NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_tag(store, "t:prod", "t@1", NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_delete(store, "t@1", NULL, &err), LS_E_ALIASED);
	cr_assert(strstr(err.msg, "t:prod"), "%s", err.msg);
	cr_assert_eq(ls_store_delete(store, "t", NULL, &err), LS_E_ALIASED,
		     "every version of a name: none goes while one is aliased");
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(store, "t@2", &rec, &err), 0, "%s", err.msg);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(ls_store_delete(store, "t@2", NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_untag(store, "t:prod", &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_delete(store, "t", NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(count_files("blobs"), 0);
}

Test(store, lookup_by_name_gives_latest_and_by_version_gives_that_one)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .rank = 4, .seed = 1};
	struct synth_opts o2 = {.family = SYNTH_LLAMA, .rank = 16, .seed = 2};
	struct ls_err err;
	cr_assert_eq(import_dir("x", make_adapter("x1", &o1), NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(import_dir("x", make_adapter("x2", &o2), NULL, NULL, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(store, "x", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 2);
	cr_assert_eq(rec->rank, 16);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(ls_store_lookup(store, "x@1", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 1);
	cr_assert_eq(rec->rank, 4);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(ls_store_lookup(store, "x@3", &rec, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_store_lookup(store, "y", &rec, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_store_lookup(store, "x@0", &rec, &err), LS_E_NAME_INVALID);
	cr_assert_eq(ls_store_lookup(store, "x@", &rec, &err), LS_E_NAME_INVALID);
	cr_assert_eq(ls_store_lookup(store, "bad name", &rec, &err), LS_E_NAME_INVALID);
}

Test(store, blob_holds_tensor_bytes_bit_for_bit)
{
	struct synth_opts o = {.family = SYNTH_T5, .dtype = LS_DTYPE_BF16, .seed = 7};
	const char *dir = make_adapter("t5", &o);
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("t5", dir, NULL, &rec, &err), 0, "%s", err.msg);

	char path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, path, sizeof(path));
	int fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	struct ls_blob_header hdr;
	cr_assert_eq(ls_blob_read_header(fd, path, &hdr, &err), 0, "%s", err.msg);

	/* Each stored tensor equals the bytes of the same tensor in the file. */
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int sfd = open(path, O_RDONLY);
	struct ls_st_file st;
	cr_assert_eq(ls_st_read_fd(sfd, path, &st, &err), 0, "%s", err.msg);
	for (size_t i = 0; i < rec->n_tensors; i++) {
		const Lorastore__Tensor *t = rec->tensors[i];
		const struct ls_st_tensor *src = NULL;
		for (size_t k = 0; k < st.n_tensors; k++)
			if (strcmp(st.tensors[k].name, t->source_name) == 0)
				src = &st.tensors[k];
		cr_assert_not_null(src, "%s not in the file", t->source_name);
		cr_assert_eq(t->length, src->end - src->begin);
		char *a = malloc(t->length), *b = malloc(t->length);
		cr_assert_eq(pread(fd, a, t->length, (off_t)(hdr.data_offset + t->offset)),
			     (ssize_t)t->length);
		cr_assert_eq(pread(sfd, b, t->length, (off_t)(st.data_offset + src->begin)),
			     (ssize_t)t->length);
		cr_assert_arr_eq(a, b, t->length, "tensor %s differs", t->source_name);
		free(a);
		free(b);
	}
	ls_st_file_free(&st);
	close(sfd);
	close(fd);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(store, dtype_conversion_to_f32_widens_exactly)
{
	struct synth_opts o = {.family = SYNTH_NEOX, .rank = 1, .dtype = LS_DTYPE_F16};
	struct ls_import_opts opts = {.convert = LS_CONVERT_F32};
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("neox", make_adapter("n", &o), &opts, &rec, &err), 0, "%s",
		     err.msg);
	cr_assert_eq(rec->dtype, LORASTORE__DTYPE__DTYPE_F32);
	for (size_t i = 0; i < rec->n_tensors; i++) {
		cr_assert_eq(rec->tensors[i]->dtype, LORASTORE__DTYPE__DTYPE_F32);
		cr_assert_eq(rec->tensors[i]->source_dtype, LORASTORE__DTYPE__DTYPE_F16);
	}
	lorastore__version_record__free_unpacked(rec, NULL);
}

static int count_record(void *ud, const Lorastore__VersionRecord *rec)
{
	(*(size_t *)ud)++;
	(void)rec;
	return 0;
}

Test(store, list_pages_by_prefix_with_cursor)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 1, .rank = 2, .hidden = 32};
	const char *dir = make_adapter("l", &o);
	struct ls_err err;
	char name[64];
	for (int i = 0; i < 25; i++) {
		snprintf(name, sizeof(name), "%s/a%02d", i % 2 ? "odd" : "even", i);
		cr_assert_eq(import_dir(name, dir, NULL, NULL, &err), 0, "%s", err.msg);
	}
	size_t seen = 0, pages = 0;
	char cursor[LS_NAME_MAX + 16] = "", next[LS_NAME_MAX + 16];
	do {
		cr_assert_eq(ls_store_list(store, "even/", cursor, 5, count_record, &seen, next, &err),
			     0, "%s", err.msg);
		strcpy(cursor, next);
		pages++;
	} while (cursor[0]);
	cr_assert_eq(seen, 13);
	cr_assert_eq(pages, 3);
}

Test(store, delete_version_keeps_others_and_removes_the_blob_no_version_uses)
{
	struct synth_opts o1 = {.family = SYNTH_BERT, .seed = 1};
	struct synth_opts o2 = {.family = SYNTH_BERT, .seed = 2};
	struct ls_err err;
	cr_assert_eq(import_dir("b", make_adapter("b1", &o1), NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(import_dir("b", make_adapter("b2", &o2), NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(count_files("blobs"), 2);
	cr_assert_eq(ls_store_delete(store, "b@1", NULL, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(store, "b@1", &rec, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_store_lookup(store, "b", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 2);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(count_files("refs"), 1);
	cr_assert_eq(count_files("blobs"), 1, "the deleted version's blob goes with it");

	struct ls_gc_stats gc;
	cr_assert_eq(ls_store_gc(store, &gc, &err), 0, "%s", err.msg);
	cr_assert_eq(gc.blobs_removed, 0, "nothing is left for gc");
	cr_assert_eq(count_files("blobs"), 1);
	size_t bad = 99;
	cr_assert_eq(ls_store_verify(store, NULL, NULL, NULL, &bad, &err), 0, "%s", err.msg);
	cr_assert_eq(bad, 0);
}

Test(store, delete_name_removes_every_version_and_numbering_continues)
{
	struct synth_opts o = {.family = SYNTH_GPT2}, o2 = {.family = SYNTH_GPT2, .seed = 2};
	const char *dir = make_adapter("d", &o);
	struct ls_err err;
	cr_assert_eq(import_dir("d", dir, NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(import_dir("d", make_adapter("d2", &o2), NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_delete(store, "d", NULL, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(store, "d", &rec, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_store_delete(store, "d", NULL, &err), LS_E_NOT_FOUND);
	cr_assert_eq(import_dir("d", dir, NULL, &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 3, "versions are never reused");
	lorastore__version_record__free_unpacked(rec, NULL);
}

struct verify_log {
	size_t calls;
	int last_code;
	char last_msg[512];
};

static void on_verify(void *ud, const Lorastore__VersionRecord *rec, int code, const char *msg)
{
	struct verify_log *l = ud;
	l->calls++;
	l->last_code = code;
	snprintf(l->last_msg, sizeof(l->last_msg), "%s", msg);
	(void)rec;
}

Test(store, verify_finds_a_flipped_byte_in_the_data)
{
	struct synth_opts o = {.family = SYNTH_LLAMA};
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("v", make_adapter("v", &o), NULL, &rec, &err), 0, "%s", err.msg);
	char path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, path, sizeof(path));
	int fd = open(path, O_RDWR);
	struct ls_blob_header hdr;
	cr_assert_eq(ls_blob_read_header(fd, path, &hdr, &err), 0);
	unsigned char byte;
	off_t at = (off_t)(hdr.data_offset + rec->tensors[1]->offset + 3);
	cr_assert_eq(pread(fd, &byte, 1, at), 1);
	byte ^= 0x10;
	cr_assert_eq(pwrite(fd, &byte, 1, at), 1);
	close(fd);

	struct verify_log log = {0};
	size_t bad = 0;
	cr_assert_eq(ls_store_verify(store, "v", on_verify, &log, &bad, &err), 0, "%s", err.msg);
	cr_assert_eq(bad, 1);
	cr_assert_eq(log.calls, 1);
	cr_assert_eq(log.last_code, LS_E_CORRUPT);
	cr_assert(strstr(log.last_msg, "checksum"), "message: %s", log.last_msg);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(store, verify_reports_a_missing_blob)
{
	struct synth_opts o = {.family = SYNTH_GPT2};
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("m", make_adapter("m", &o), NULL, &rec, &err), 0, "%s", err.msg);
	char path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, path, sizeof(path));
	cr_assert_eq(unlink(path), 0);
	size_t bad = 0;
	struct verify_log log = {0};
	cr_assert_eq(ls_store_verify(store, NULL, on_verify, &log, &bad, &err), 0, "%s", err.msg);
	cr_assert_eq(bad, 1);
	cr_assert_eq(log.last_code, LS_E_BLOB_MISSING, "code %d: %s", log.last_code, log.last_msg);
	cr_assert(strstr(log.last_msg, "missing"), "message: %s", log.last_msg);
	lorastore__version_record__free_unpacked(rec, NULL);
}

/* Cut the blob of rec to length bytes, verify it, and check the report. */
static void assert_truncated_blob_reported(const char *name, off_t length)
{
	struct synth_opts o = {.family = SYNTH_GPT2};
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir(name, make_adapter(name, &o), NULL, &rec, &err), 0, "%s", err.msg);
	char path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, path, sizeof(path));
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_lt(length, st.st_size);
	cr_assert_eq(truncate(path, length < 0 ? st.st_size + length : length), 0);
	size_t bad = 0;
	struct verify_log log = {0};
	cr_assert_eq(ls_store_verify(store, name, on_verify, &log, &bad, &err), 0, "%s", err.msg);
	cr_assert_eq(bad, 1);
	cr_assert_eq(log.last_code, LS_E_BLOB_TRUNCATED, "code %d: %s", log.last_code, log.last_msg);
	cr_assert(strstr(log.last_msg, "truncated"), "message: %s", log.last_msg);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(store, verify_reports_a_blob_cut_inside_its_data_as_truncated)
{
	assert_truncated_blob_reported("cut-data", -4096);
}

Test(store, verify_reports_a_blob_cut_inside_its_header_page_as_truncated)
{
	assert_truncated_blob_reported("cut-head", 100);
}

Test(store, verify_reports_an_empty_blob_as_truncated)
{
	assert_truncated_blob_reported("cut-all", 0);
}

Test(store, a_flipped_manifest_byte_fails_the_blob_open_that_every_load_does)
{
	struct synth_opts o = {.family = SYNTH_GPT2};
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("man", make_adapter("man", &o), NULL, &rec, &err), 0, "%s", err.msg);
	char path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, path, sizeof(path));
	int fd = open(path, O_RDWR);
	struct ls_blob_header hdr;
	cr_assert_eq(ls_blob_read_header(fd, path, &hdr, &err), 0);
	unsigned char byte;
	off_t at = (off_t)(hdr.manifest_offset + hdr.manifest_length / 2);
	cr_assert_eq(pread(fd, &byte, 1, at), 1);
	byte ^= 0x01;
	cr_assert_eq(pwrite(fd, &byte, 1, at), 1);
	close(fd);
	int bfd = -1;
	cr_assert_eq(ls_blob_open(path, rec->digest.data, &bfd, &hdr, &err), LS_E_CORRUPT);
	cr_assert(strstr(err.msg, "manifest checksum"), "message: %s", err.msg);
	cr_assert_eq(bfd, -1);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(store, gc_removes_temporaries_and_orphan_refs)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/tmp/tmp-blob-0123456789abcdef", state_dir);
	cr_assert_eq(synth_write_text(path, "partial"), 0);
	snprintf(path, sizeof(path), "%s/refs/00000000000000000099.ref", state_dir);
	cr_assert_eq(synth_write_text(path, "orphan"), 0);
	struct ls_gc_stats gc;
	struct ls_err err;
	cr_assert_eq(ls_store_gc(store, &gc, &err), 0, "%s", err.msg);
	cr_assert_eq(gc.temps_removed, 1);
	cr_assert_eq(gc.refs_removed, 1);
	cr_assert_eq(count_files("tmp"), 0);
	cr_assert_eq(count_files("refs"), 0);
}

Test(store, rebuild_restores_names_versions_and_counters_from_blobs)
{
	struct synth_opts o1 = {.family = SYNTH_LLAMA, .seed = 1};
	struct synth_opts o1b = {.family = SYNTH_LLAMA, .seed = 3};
	struct synth_opts o2 = {.family = SYNTH_T5, .seed = 2};
	struct ls_err err;
	Lorastore__VersionRecord *before = NULL;
	cr_assert_eq(import_dir("r/one", make_adapter("r1", &o1), NULL, NULL, &err), 0, "%s",
		     err.msg);
	cr_assert_eq(import_dir("r/one", make_adapter("r2", &o1b), NULL, NULL, &err), 0, "%s",
		     err.msg);
	cr_assert_eq(import_dir("r/two", make_adapter("r3", &o2), NULL, &before, &err), 0, "%s",
		     err.msg);

	/* Lose the catalog entirely. */
	ls_store_close(store);
	char cmd[PATH_MAX + 32];
	snprintf(cmd, sizeof(cmd), "rm -rf %s/catalog", state_dir);
	cr_assert_eq(system(cmd), 0);
	cr_assert_eq(ls_store_open(state_dir, &store, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(store, "r/two", &rec, &err), LS_E_NOT_FOUND);

	struct ls_rebuild_stats rs;
	cr_assert_eq(ls_store_rebuild(store, &rs, &err), 0, "%s", err.msg);
	cr_assert_eq(rs.versions, 3);
	cr_assert_eq(rs.skipped, 0);
	cr_assert_eq(ls_store_lookup(store, "r/two", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->generation, before->generation);
	cr_assert_arr_eq(rec->digest.data, before->digest.data, 32);
	cr_assert_eq(rec->n_tensors, before->n_tensors);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(ls_store_lookup(store, "r/one", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 2);
	lorastore__version_record__free_unpacked(rec, NULL);

	/* New imports continue after the restored counters. */
	struct synth_opts o2b = {.family = SYNTH_T5, .seed = 4};
	cr_assert_eq(import_dir("r/two", make_adapter("r4", &o2b), NULL, &rec, &err), 0, "%s",
		     err.msg);
	cr_assert_eq(rec->version, 2);
	cr_assert_gt(rec->generation, before->generation);
	lorastore__version_record__free_unpacked(rec, NULL);
	lorastore__version_record__free_unpacked(before, NULL);
}

Test(store, second_process_cannot_open_the_same_state_directory)
{
	pid_t pid = fork();
	if (pid == 0) {
		struct ls_store *other = NULL;
		struct ls_err err;
		int rc = ls_store_open(state_dir, &other, &err);
		_exit(rc == LS_E_BUSY ? 0 : 1);
	}
	int status = 0;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

Test(store, invalid_name_is_refused_before_reading_files)
{
	struct synth_opts o = {.family = SYNTH_GPT2};
	struct ls_err err;
	cr_assert_eq(import_dir("has space", make_adapter("n", &o), NULL, NULL, &err),
		     LS_E_NAME_INVALID);
	cr_assert_eq(import_dir("a@2", make_adapter("n", &o), NULL, NULL, &err), LS_E_NAME_INVALID);
	cr_assert_eq(count_files("blobs"), 0);
}

Test(store, reimport_of_same_content_replaces_a_damaged_blob)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .seed = 3};
	const char *dir = make_adapter("dmg", &o);
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir("dmg", dir, NULL, &rec, &err), 0, "%s", err.msg);
	char path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, path, sizeof(path));
	int fd = open(path, O_RDWR);
	struct ls_blob_header hdr;
	cr_assert_eq(ls_blob_read_header(fd, path, &hdr, &err), 0);
	unsigned char zero[64] = {0};
	cr_assert_eq(pwrite(fd, zero, sizeof(zero), (off_t)hdr.data_offset), (ssize_t)sizeof(zero));
	close(fd);
	size_t bad = 0;
	cr_assert_eq(ls_store_verify(store, NULL, NULL, NULL, &bad, &err), 0, "%s", err.msg);
	cr_assert_eq(bad, 1);

	cr_assert_eq(import_dir("dmg", dir, NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_verify(store, NULL, NULL, NULL, &bad, &err), 0, "%s", err.msg);
	cr_assert_eq(bad, 0, "the second import wrote a good copy for both versions");
	lorastore__version_record__free_unpacked(rec, NULL);
}

/* The blob of a fresh import, its bytes in memory (malloc'ed), and its digest. */
static uint8_t *blob_bytes_of(const char *name, uint64_t seed, size_t *len, uint8_t digest[32])
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .seed = seed};
	const char *dir = make_adapter(name, &o);
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	cr_assert_eq(import_dir(name, dir, NULL, &rec, &err), 0, "%s", err.msg);
	memcpy(digest, rec->digest.data, 32);
	char path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, path, sizeof(path));
	lorastore__version_record__free_unpacked(rec, NULL);
	int fd = open(path, O_RDONLY);
	struct stat st;
	cr_assert(fd >= 0 && fstat(fd, &st) == 0);
	*len = (size_t)st.st_size;
	uint8_t *b = malloc(*len);
	cr_assert_eq(pread(fd, b, *len, 0), (ssize_t)*len);
	close(fd);
	return b;
}

/* Feed b in pieces of odd sizes (as a download arrives): the check's verdict. */
static int check_in_pieces(const uint8_t *b, size_t len, const uint8_t digest[32],
			   struct ls_err *err)
{
	struct ls_blob_check *c = NULL;
	cr_assert_eq(ls_blob_check_new(digest, &c), 0);
	int rc = 0;
	for (size_t off = 0, step = 1; off < len && rc == 0; off += step, step = step * 3 + 7) {
		size_t n = len - off < step ? len - off : step;
		rc = ls_blob_check_feed(c, b + off, n, "blob", err);
	}
	struct ls_blob_header hdr;
	if (rc == 0)
		rc = ls_blob_check_end(c, "blob", &hdr, err);
	ls_blob_check_free(c);
	return rc;
}

Test(store, a_blob_checked_as_it_arrives_passes_whole_and_fails_changed_cut_or_long)
{
	size_t len;
	uint8_t digest[32];
	uint8_t *b = blob_bytes_of("stream", 5, &len, digest);
	struct ls_err err;
	cr_assert_eq(check_in_pieces(b, len, digest, &err), 0, "%s", err.msg);
	/* One bit of the data region. */
	b[len - 1] ^= 1;
	cr_assert_eq(check_in_pieces(b, len, digest, &err), LS_E_CORRUPT);
	b[len - 1] ^= 1;
	/* One bit of the manifest. */
	b[LS_BLOB_PAGE + 3] ^= 1;
	cr_assert_eq(check_in_pieces(b, len, digest, &err), LS_E_CORRUPT);
	b[LS_BLOB_PAGE + 3] ^= 1;
	/* Cut short, in the header and in the data. */
	cr_assert_eq(check_in_pieces(b, 100, digest, &err), LS_E_BLOB_TRUNCATED);
	cr_assert_eq(check_in_pieces(b, len - 4096, digest, &err), LS_E_BLOB_TRUNCATED);
	/* Longer than its header says. */
	uint8_t *longer = calloc(1, len + 10);
	memcpy(longer, b, len);
	cr_assert_eq(check_in_pieces(longer, len + 10, digest, &err), LS_E_CORRUPT);
	free(longer);
	/* Another blob's bytes for this digest: refused at its header. */
	uint8_t other_digest[32];
	size_t other_len;
	uint8_t *other = blob_bytes_of("stream2", 6, &other_len, other_digest);
	cr_assert_eq(check_in_pieces(other, other_len, digest, &err), LS_E_CORRUPT);
	cr_assert(strstr(err.msg, "digest"), "%s", err.msg);
	free(other);
	free(b);
}
