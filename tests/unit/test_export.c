/*
 * Export of a stored version as a PEFT directory: importing what it wrote
 * gives the same digest, for every real PEFT fixture and synthetic family.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob.h"
#include "store.h"
#include "synth.h"

static struct ls_store *store;
static char *state_dir, *work_dir;

static void setup(void)
{
	state_dir = synth_mkdtemp("export-store");
	work_dir = synth_mkdtemp("export-out");
	struct ls_err err;
	cr_assert_eq(ls_store_open(state_dir, &store, &err), 0, "%s", err.msg);
}

static void teardown(void)
{
	ls_store_close(store);
	synth_rm_rf(state_dir);
	synth_rm_rf(work_dir);
	free(state_dir);
	free(work_dir);
}

TestSuite(export, .init = setup, .fini = teardown);

static Lorastore__VersionRecord *import_dir(const char *name, const char *dir, bool nonfinite)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	int cfg = open(path, O_RDONLY);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int st = open(path, O_RDONLY);
	cr_assert_geq(st, 0, "%s", path);
	struct ls_import_opts o = {.allow_nonfinite = nonfinite};
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	int rc = ls_store_import(store, name, cfg, st, dir, &o, &rec, NULL, &err);
	cr_assert_eq(rc, 0, "import %s: %s", dir, err.msg);
	if (cfg >= 0)
		close(cfg);
	close(st);
	return rec;
}

/* Export ref into out_dir as lorastore_export does: config, head, then each tensor's bytes. */
static void export_dir(const char *ref, const char *out_dir)
{
	struct ls_export ex;
	struct ls_err err;
	cr_assert_eq(ls_store_export(store, ref, &ex, &err), 0, "export %s: %s", ref, err.msg);
	mkdir(out_dir, 0755);
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/adapter_config.json", out_dir);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(ex.config_json, f);
	fclose(f);
	ls_store_blob_path(store, ex.rec->digest.data, path, sizeof(path));
	int fd;
	struct ls_blob_header hdr;
	cr_assert_eq(ls_blob_open(path, ex.rec->digest.data, &fd, &hdr, &err), 0, "%s", err.msg);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", out_dir);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	cr_assert_eq(fwrite(ex.head, 1, ex.head_len, f), ex.head_len);
	for (size_t i = 0; i < ex.rec->n_tensors; i++) {
		const Lorastore__Tensor *t = ex.rec->tensors[i];
		char *buf = malloc(t->length ? t->length : 1);
		cr_assert_eq(pread(fd, buf, t->length, (off_t)(hdr.data_offset + t->offset)),
			     (ssize_t)t->length);
		cr_assert_eq(fwrite(buf, 1, t->length, f), t->length);
		free(buf);
	}
	fclose(f);
	close(fd);
	ls_export_free(&ex);
}

static void assert_round_trip(const char *dir, bool nonfinite)
{
	Lorastore__VersionRecord *a = import_dir("x/orig", dir, nonfinite);
	char out[PATH_MAX];
	snprintf(out, sizeof(out), "%s/out-%llu", work_dir, (unsigned long long)a->generation);
	export_dir("x/orig", out);
	Lorastore__VersionRecord *b = import_dir("x/again", out, nonfinite);
	char ha[LS_DIGEST_HEX], hb[LS_DIGEST_HEX];
	ls_digest_hex(a->digest.data, ha);
	ls_digest_hex(b->digest.data, hb);
	cr_assert_str_eq(ha, hb, "%s: exported and imported again, another digest", dir);
	lorastore__version_record__free_unpacked(a, NULL);
	lorastore__version_record__free_unpacked(b, NULL);
	struct ls_err err;
	cr_assert_eq(ls_store_delete(store, "x/orig", NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_delete(store, "x/again", NULL, &err), 0, "%s", err.msg);
}

Test(export, every_real_peft_fixture_exports_to_the_digest_it_has)
{
	static const char *const fixtures[] = {
		"bert-seqcls",	     "distilbert-rslora", "gemma-dora-bf16", "gpt2-conv1d",
		"llama-embeddings", "nan-neox",	  "neox-r1",	     "roberta-patterns",
		"smollm-f16",	     "t5-regex",
	};
	for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/tests/fixtures/peft/%s", LS_SOURCE_DIR, fixtures[i]);
		assert_round_trip(dir, strcmp(fixtures[i], "nan-neox") == 0);
	}
}

Test(export, synthetic_families_and_config_forms_export_to_their_digest)
{
	const struct synth_opts opts[] = {
		{.family = SYNTH_LLAMA, .seed = 1, .rslora = true, .head = true},
		{.family = SYNTH_GPT2, .seed = 2, .regex_targets = true},
		{.family = SYNTH_T5, .seed = 3, .dtype = LS_DTYPE_BF16, .dora = true},
		{.family = SYNTH_BERT, .seed = 4, .old_config = true},
		{.family = SYNTH_LLAMA, .seed = 5, .rank_pattern = "{\"q_proj\": 4}",
		 .alpha_pattern = "{\"v_proj\": 3.5}"},
	};
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/synth-%zu", work_dir, i);
		mkdir(dir, 0755);
		cr_assert_eq(synth_adapter_dir(dir, &opts[i]), 0);
		assert_round_trip(dir, false);
	}
}

Test(export, an_unknown_version_is_not_found)
{
	struct ls_export ex;
	struct ls_err err;
	cr_assert_eq(ls_store_export(store, "no/such@3", &ex, &err), LS_E_NOT_FOUND);
}
