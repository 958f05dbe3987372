/*
 * Names, versions and aliases through the CLI against a real lorastored:
 * what a user meets when importing real folders, importing again, tagging,
 * deleting, and reading through an alias from a client process.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lorastore.h>

#include "proc_run.h"
#include "daemon_proc.h"
#include "ls_size.h"
#include "synth.h"

static struct ls_daemon_proc daemon;
static char *work_dir;

static void setup(void)
{
	work_dir = synth_mkdtemp("cli-catalog");
	cr_assert_eq(ls_daemon_start(&daemon, NULL, NULL), 0, "lorastored did not start");
}

static void teardown(void)
{
	ls_daemon_cleanup(&daemon);
	synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(cli_catalog, .init = setup, .fini = teardown, .timeout = 60);

#define CLI(r, ...)                                                                        \
	cr_assert_eq(ls_cli_run(daemon.socket, work_dir, (const char *const[]){__VA_ARGS__, NULL}, \
				(r)),                                                      \
		     0)

/* A synthetic adapter in work_dir/sub (made with its parents); its path, malloc'd. */
static char *adapter(const char *sub, enum synth_family family, uint64_t seed)
{
	char *dir = malloc(PATH_MAX);
	snprintf(dir, PATH_MAX, "%s/%s", work_dir, sub);
	for (char *p = dir + strlen(work_dir) + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			mkdir(dir, 0755);
			*p = '/';
		}
	mkdir(dir, 0755);
	struct synth_opts o = {.family = family, .seed = seed};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	return dir;
}

static cJSON *json_of(const struct ls_proc_result *r)
{
	cJSON *doc = cJSON_Parse(r->out);
	cr_assert_not_null(doc, "not JSON (exit %d, stderr %s):\n%s", r->status, r->err, r->out);
	return doc;
}

Test(cli_catalog, a_folder_named_like_every_training_output_needs_a_name)
{
	static const char *const dull[] = {"adapter", "outputs", "checkpoint-14", "final"};
	for (size_t i = 0; i < sizeof(dull) / sizeof(dull[0]); i++) {
		char sub[64];
		snprintf(sub, sizeof(sub), "run%zu/%s", i, dull[i]);
		char *dir = adapter(sub, SYNTH_GPT2, i);
		struct ls_proc_result r;
		CLI(&r, "import", dir);
		cr_assert_eq(r.status, 1, "%s: exit %d", dull[i], r.status);
		cr_assert(strstr(r.err, "--name"), "%s: %s", dull[i], r.err);
		ls_proc_result_free(&r);
		free(dir);
	}
	struct ls_proc_result r;
	CLI(&r, "--json", "ls");
	cJSON *doc = json_of(&r);
	cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(doc, "adapters")), 0,
		     "nothing was imported");
	cJSON_Delete(doc);
	ls_proc_result_free(&r);
	/* A telling folder name is taken as the name. */
	char *dir = adapter("acme-support", SYNTH_GPT2, 9);
	CLI(&r, "import", dir);
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "imported acme-support@1"), "%s", r.out);
	ls_proc_result_free(&r);
	free(dir);
}

Test(cli_catalog, importing_the_same_folder_again_says_unchanged)
{
	char *dir = adapter("a", SYNTH_LLAMA, 1);
	struct ls_proc_result r;
	CLI(&r, "import", dir, "--name", "t/a");
	cr_assert_eq(r.status, 0, "%s", r.err);
	ls_proc_result_free(&r);
	CLI(&r, "import", dir, "--name", "t/a");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "unchanged t/a@1"), "%s", r.out);
	ls_proc_result_free(&r);
	CLI(&r, "--json", "import", dir, "--name", "t/a");
	cJSON *doc = json_of(&r);
	const cJSON *im = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "imported"), 0);
	cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(im, "unchanged")), "%s", r.out);
	cr_assert_eq(cJSON_GetObjectItem(im, "version")->valuedouble, 1);
	cJSON_Delete(doc);
	ls_proc_result_free(&r);
	free(dir);
}

Test(cli_catalog, a_version_for_another_base_model_needs_allow_new_base)
{
	char *llama = adapter("llama", SYNTH_LLAMA, 1), *bert = adapter("bert", SYNTH_BERT, 2);
	struct ls_proc_result r;
	CLI(&r, "import", llama, "--name", "t/m");
	cr_assert_eq(r.status, 0, "%s", r.err);
	ls_proc_result_free(&r);
	CLI(&r, "import", bert, "--name", "t/m");
	cr_assert_eq(r.status, 1);
	cr_assert(strstr(r.err, "base model") && strstr(r.err, "--allow-new-base"), "%s", r.err);
	ls_proc_result_free(&r);
	CLI(&r, "import", bert, "--name", "t/m", "--allow-new-base");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "imported t/m@2"), "%s", r.out);
	ls_proc_result_free(&r);
	/* ls names each version's base model, and filters by it. */
	CLI(&r, "--json", "ls", "--base-model", "google-bert/bert-base-uncased");
	cJSON *doc = json_of(&r);
	const cJSON *arr = cJSON_GetObjectItem(doc, "adapters");
	cr_assert_eq(cJSON_GetArraySize(arr), 1, "%s", r.out);
	const cJSON *e = cJSON_GetArrayItem(arr, 0);
	cr_assert_eq(cJSON_GetObjectItem(e, "version")->valuedouble, 2);
	cr_assert_str_eq(cJSON_GetObjectItem(e, "base_model")->valuestring,
			 "google-bert/bert-base-uncased");
	cJSON_Delete(doc);
	ls_proc_result_free(&r);
	free(llama);
	free(bert);
}

Test(cli_catalog, an_alias_is_listed_read_by_a_client_moved_and_removed)
{
	char *v1 = adapter("v1", SYNTH_LLAMA, 1), *v2 = adapter("v2", SYNTH_LLAMA, 2);
	struct ls_proc_result r;
	CLI(&r, "import", v1, "--name", "acme/support");
	ls_proc_result_free(&r);
	CLI(&r, "import", v2, "--name", "acme/support");
	ls_proc_result_free(&r);
	CLI(&r, "tag", "acme/support@1", "acme/support:prod");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert_str_eq(r.out, "acme/support:prod -> acme/support@1\n");
	ls_proc_result_free(&r);
	CLI(&r, "--json", "ls", "acme/");
	cJSON *doc = json_of(&r);
	const cJSON *arr = cJSON_GetObjectItem(doc, "adapters");
	const cJSON *al = cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 0), "aliases");
	cr_assert_eq(cJSON_GetArraySize(al), 1, "%s", r.out);
	cr_assert_str_eq(cJSON_GetArrayItem(al, 0)->valuestring, "acme/support:prod");
	cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 1), "aliases")),
		     0);
	cJSON_Delete(doc);
	ls_proc_result_free(&r);

	/* load says which version the alias named. */
	CLI(&r, "load", "acme/support:prod");
	cr_assert_str_eq(r.out, "loaded acme/support:prod (acme/support@1)\n");
	ls_proc_result_free(&r);
	CLI(&r, "--json", "load", "acme/support");
	doc = json_of(&r);
	cr_assert_str_eq(cJSON_GetObjectItem(doc, "version")->valuestring, "acme/support@2");
	cJSON_Delete(doc);
	ls_proc_result_free(&r);

	/* A client acquires through the alias. */
	lorastore *conn;
	cr_assert_eq(lorastore_connect(daemon.socket, &conn), 0);
	lorastore_adapter *ad;
	cr_assert_eq(lorastore_acquire(conn, "acme/support:prod", -1, &ad), 0, "%s",
		     lorastore_errmsg(conn));
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
	cr_assert_eq(info.version, 1);
	lorastore_adapter_release(ad);

	/* The version it points at is not deleted; the alias moves, and then it may be. */
	CLI(&r, "rm", "acme/support@1");
	cr_assert_eq(r.status, 1);
	cr_assert(strstr(r.err, "acme/support:prod"), "%s", r.err);
	ls_proc_result_free(&r);
	CLI(&r, "tag", "acme/support", "acme/support:prod");
	cr_assert_str_eq(r.out, "acme/support:prod -> acme/support@2\n");
	ls_proc_result_free(&r);
	cr_assert_eq(lorastore_acquire(conn, "acme/support:prod", -1, &ad), 0, "%s",
		     lorastore_errmsg(conn));
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
	cr_assert_eq(info.version, 2, "an alias moved is seen at once");
	lorastore_adapter_release(ad);
	CLI(&r, "rm", "acme/support@1");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "deleted acme/support@1 (1 version, "), "%s", r.out);
	ls_proc_result_free(&r);
	CLI(&r, "untag", "acme/support:prod");
	cr_assert_str_eq(r.out, "untagged acme/support:prod\n");
	ls_proc_result_free(&r);
	cr_assert_eq(lorastore_acquire(conn, "acme/support:prod", -1, &ad), LORASTORE_E_NOT_FOUND);
	lorastore_close(conn);
	free(v1);
	free(v2);
}

Test(cli_catalog, rm_all_says_what_it_removed_and_frees_the_blobs)
{
	char *v1 = adapter("v1", SYNTH_GPT2, 1), *v2 = adapter("v2", SYNTH_GPT2, 2);
	struct ls_proc_result r;
	CLI(&r, "import", v1, "--name", "t/gone");
	ls_proc_result_free(&r);
	CLI(&r, "import", v2, "--name", "t/gone");
	ls_proc_result_free(&r);
	char blobs[PATH_MAX + 16];
	snprintf(blobs, sizeof(blobs), "ls %s/blobs | wc -l", daemon.state);
	FILE *p = popen(blobs, "r");
	int n = -1;
	cr_assert_eq(fscanf(p, "%d", &n), 1);
	pclose(p);
	cr_assert_eq(n, 2);
	CLI(&r, "--json", "rm", "--all", "t/gone");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cJSON *doc = json_of(&r);
	cr_assert_eq(cJSON_GetObjectItem(doc, "versions")->valuedouble, 2);
	cr_assert_gt(cJSON_GetObjectItem(doc, "freed_bytes")->valuedouble, 0);
	cr_assert_eq(cJSON_GetObjectItem(doc, "freed_bytes")->valuedouble,
		     cJSON_GetObjectItem(doc, "blob_bytes")->valuedouble);
	cJSON_Delete(doc);
	ls_proc_result_free(&r);
	p = popen(blobs, "r");
	cr_assert_eq(fscanf(p, "%d", &n), 1);
	pclose(p);
	cr_assert_eq(n, 0, "the blobs went with their versions, without gc");
	free(v1);
	free(v2);
}

Test(cli_catalog, export_writes_a_directory_that_imports_back_unchanged)
{
	char *dir = adapter("src", SYNTH_LLAMA, 7);
	struct ls_proc_result r;
	CLI(&r, "import", dir, "--name", "t/exp");
	cr_assert_eq(r.status, 0, "%s", r.err);
	ls_proc_result_free(&r);
	char out[PATH_MAX];
	snprintf(out, sizeof(out), "%s/exported", work_dir);
	CLI(&r, "export", "t/exp", out);
	cr_assert_eq(r.status, 0, "%s", r.err);
	char want[PATH_MAX + 32];
	snprintf(want, sizeof(want), "exported t/exp@1 to %s\n", out);
	cr_assert_str_eq(r.out, want);
	ls_proc_result_free(&r);
	CLI(&r, "import", out, "--name", "t/exp");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "unchanged t/exp@1"), "the same digest: %s", r.out);
	ls_proc_result_free(&r);
	CLI(&r, "export", "t/exp", out);
	cr_assert_eq(r.status, 1, "a directory holding an adapter is not written over");
	cr_assert(strstr(r.err, "already holds"), "%s", r.err);
	ls_proc_result_free(&r);
	free(dir);
}

static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	cr_assert(cJSON_IsNumber(v), "no number \"%s\" in %s", key, cJSON_PrintUnformatted(o));
	return v->valuedouble;
}

Test(cli_catalog, each_size_is_one_number_on_every_surface)
{
	char *dir = adapter("sized", SYNTH_BERT, 5);
	struct ls_proc_result r;
	CLI(&r, "--json", "inspect", dir);
	cJSON *doc = json_of(&r);
	double tensor = num(doc, "tensor_bytes");
	cJSON_Delete(doc);
	ls_proc_result_free(&r);

	CLI(&r, "--json", "import", dir, "--name", "t/sized");
	doc = json_of(&r);
	cr_assert_eq(num(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "imported"), 0),
			 "tensor_bytes"),
		     tensor, "import and inspect disagree on the size");
	char digest[65];
	snprintf(digest, sizeof(digest), "%s",
		 cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "imported"), 0),
				     "digest")
			 ->valuestring);
	cJSON_Delete(doc);
	ls_proc_result_free(&r);

	CLI(&r, "--json", "ls", "t/sized");
	doc = json_of(&r);
	const cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "adapters"), 0);
	cr_assert_eq(num(e, "tensor_bytes"), tensor, "ls and inspect disagree on the size");
	double resident = num(e, "resident_bytes"), blob = num(e, "blob_bytes");
	cr_assert_gt(resident, tensor);
	cJSON_Delete(doc);
	ls_proc_result_free(&r);

	CLI(&r, "--json", "show", "t/sized");
	doc = json_of(&r);
	cr_assert_eq(num(doc, "tensor_bytes"), tensor);
	cr_assert_eq(num(doc, "resident_bytes"), resident);
	cr_assert_eq(num(doc, "blob_bytes"), blob);
	double sum = 0;
	const cJSON *t;
	cJSON_ArrayForEach(t, cJSON_GetObjectItem(doc, "tensors"))
		sum += num(t, "bytes");
	cr_assert_eq(sum, tensor, "the size is the tensors' bytes summed");
	cJSON_Delete(doc);
	ls_proc_result_free(&r);

	char path[PATH_MAX + 96];
	snprintf(path, sizeof(path), "%s/blobs/%s.blob", daemon.state, digest);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0, "%s", path);
	cr_assert_eq((double)st.st_size, blob, "blob_bytes is the blob file's size");

	/* Resident: what the tier counts, and what a client's lease says. */
	lorastore *conn;
	cr_assert_eq(lorastore_connect(daemon.socket, &conn), 0);
	lorastore_adapter *ad;
	cr_assert_eq(lorastore_acquire(conn, "t/sized", -1, &ad), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
	cr_assert_eq((double)info.tensor_bytes, tensor);
	cr_assert_eq((double)info.resident_bytes, resident);
	CLI(&r, "--json", "stats");
	doc = json_of(&r);
	cr_assert_eq(num(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "tiers"), 0), "used"), resident,
		     "the host tier holds resident_bytes for its one adapter");
	cJSON_Delete(doc);
	ls_proc_result_free(&r);
	lorastore_adapter_release(ad);
	lorastore_close(conn);

	/* The text says the same size everywhere. */
	char want[32];
	ls_format_size((uint64_t)tensor, want, sizeof(want));
	CLI(&r, "ls", "t/sized");
	cr_assert(strstr(r.out, want), "ls does not show %s:\n%s", want, r.out);
	ls_proc_result_free(&r);
	CLI(&r, "show", "t/sized");
	cr_assert(strstr(r.out, want), "show does not show %s:\n%s", want, r.out);
	ls_proc_result_free(&r);
	CLI(&r, "inspect", dir);
	cr_assert(strstr(r.out, want), "inspect does not show %s:\n%s", want, r.out);
	ls_proc_result_free(&r);
	free(dir);
}

/* A Hugging Face hub cache under work_dir/hub holding acme/tiny-lora at commit c. */
static char *hf_cache(const char *commit)
{
	char *hub = malloc(PATH_MAX);
	snprintf(hub, PATH_MAX, "%s/hub", work_dir);
	char sub[PATH_MAX];
	snprintf(sub, sizeof(sub), "hub/models--acme--tiny-lora/snapshots/%s", commit);
	free(adapter(sub, SYNTH_T5, 3));
	char refs[PATH_MAX + 64];
	snprintf(refs, sizeof(refs), "%s/models--acme--tiny-lora/refs", hub);
	mkdir(refs, 0755);
	snprintf(refs, sizeof(refs), "%s/models--acme--tiny-lora/refs/main", hub);
	FILE *f = fopen(refs, "w");
	cr_assert_not_null(f);
	fprintf(f, "%s", commit);
	fclose(f);
	return hub;
}

Test(cli_catalog, an_adapter_in_the_hugging_face_cache_imports_by_repository_id)
{
	const char *commit = "0123456789abcdef0123456789abcdef01234567";
	char *hub = hf_cache(commit);
	setenv("HF_HUB_CACHE", hub, 1);
	struct ls_proc_result r;
	CLI(&r, "import", "hf:acme/tiny-lora");
	unsetenv("HF_HUB_CACHE");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "imported acme/tiny-lora@1"), "named after the repository: %s",
		  r.out);
	ls_proc_result_free(&r);
	/* The repository's folder is the same adapter; its snapshot folder needs a name. */
	char repo[PATH_MAX + 64], snap[PATH_MAX + 128];
	snprintf(repo, sizeof(repo), "%s/models--acme--tiny-lora", hub);
	CLI(&r, "import", repo);
	cr_assert(strstr(r.out, "unchanged acme/tiny-lora@1"), "%s%s", r.out, r.err);
	ls_proc_result_free(&r);
	snprintf(snap, sizeof(snap), "%s/snapshots/%s", repo, commit);
	CLI(&r, "import", snap);
	cr_assert_eq(r.status, 1);
	cr_assert(strstr(r.err, "--name"), "%s", r.err);
	ls_proc_result_free(&r);
	setenv("HF_HUB_CACHE", hub, 1);
	CLI(&r, "import", "hf:acme/not-downloaded");
	unsetenv("HF_HUB_CACHE");
	cr_assert_eq(r.status, 1);
	cr_assert(strstr(r.err, "not in the Hugging Face cache"), "%s", r.err);
	ls_proc_result_free(&r);
	free(hub);
}

Test(cli_catalog, a_pickle_and_a_folder_of_adapters_are_refused_with_what_to_do)
{
	char *dir = adapter("pickled", SYNTH_GPT2, 1);
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	char bin[PATH_MAX + 64];
	snprintf(bin, sizeof(bin), "%s/adapter_model.bin", dir);
	cr_assert_eq(rename(path, bin), 0);
	struct ls_proc_result r;
	CLI(&r, "import", dir, "--name", "t/pickled");
	cr_assert_eq(r.status, 1);
	cr_assert(strstr(r.err, "pickle") && strstr(r.err, "save_file"), "%s", r.err);
	ls_proc_result_free(&r);
	free(dir);

	free(adapter("runs/one", SYNTH_GPT2, 2));
	free(adapter("runs/two", SYNTH_GPT2, 3));
	char runs[PATH_MAX];
	snprintf(runs, sizeof(runs), "%s/runs", work_dir);
	CLI(&r, "import", runs, "--name", "t/runs");
	cr_assert_eq(r.status, 1);
	cr_assert(strstr(r.err, "holds 2 adapter folders"), "%s", r.err);
	cr_assert(strstr(r.err, "one") && strstr(r.err, "two"), "%s", r.err);
	ls_proc_result_free(&r);
}

Test(cli_catalog, errors_say_each_thing_once)
{
	struct ls_proc_result r;
	CLI(&r, "show", "my adapter");
	cr_assert_eq(r.status, 1);
	cr_assert_null(strstr(r.err, "show: show:"), "%s", r.err);
	ls_proc_result_free(&r);
	char missing[PATH_MAX];
	snprintf(missing, sizeof(missing), "%s/nowhere", work_dir);
	CLI(&r, "import", missing, "--name", "t/x");
	cr_assert_eq(r.status, 1);
	const char *first = strstr(r.err, missing);
	cr_assert(first && !strstr(first + 1, missing), "the directory is named once: %s", r.err);
	ls_proc_result_free(&r);
	CLI(&r, "show", "t/nothing");
	cr_assert_null(strstr(r.err, "catalog:"), "%s", r.err);
	ls_proc_result_free(&r);
}

/* The bytes of an adapter's first tensor, summed (to see that they stay the same). */
static uint64_t first_tensor_sum(const lorastore_adapter *ad)
{
	lorastore_tensor t;
	cr_assert_eq(lorastore_adapter_tensor_at(ad, 0, &t), 0);
	uint64_t sum = 0;
	for (uint64_t i = 0; i < t.bytes; i++)
		sum = sum * 31 + ((const uint8_t *)t.data)[i];
	return sum;
}

Test(cli_catalog, two_versions_of_one_content_share_one_resident_copy)
{
	char *dir = adapter("same", SYNTH_LLAMA, 11);
	struct ls_proc_result r;
	CLI(&r, "import", dir, "--name", "t/one");
	ls_proc_result_free(&r);
	CLI(&r, "import", dir, "--name", "t/two");
	ls_proc_result_free(&r);
	lorastore *conn;
	cr_assert_eq(lorastore_connect(daemon.socket, &conn), 0);
	lorastore_adapter *a, *b;
	cr_assert_eq(lorastore_acquire(conn, "t/one", -1, &a), 0, "%s", lorastore_errmsg(conn));
	lorastore_stats s1;
	cr_assert_eq(lorastore_stats_get(conn, &s1), 0);
	cr_assert_eq(lorastore_acquire(conn, "t/two", -1, &b), 0, "%s", lorastore_errmsg(conn));
	lorastore_stats s2;
	cr_assert_eq(lorastore_stats_get(conn, &s2), 0);
	cr_assert_eq(s2.tiers[0].adapters, 2);
	cr_assert_gt(s2.tiers[0].used, s1.tiers[0].used, "the second version has its own table");
	cr_assert_lt(s2.tiers[0].used - s1.tiers[0].used, s1.tiers[0].used / 2,
		     "but not its own copy of the data (%llu, then %llu bytes)",
		     (unsigned long long)s1.tiers[0].used, (unsigned long long)s2.tiers[0].used);
	lorastore_tensor ta, tb;
	cr_assert_eq(lorastore_adapter_tensor_at(a, 0, &ta), 0);
	cr_assert_eq(lorastore_adapter_tensor_at(b, 0, &tb), 0);
	cr_assert_eq(ta.data, tb.data, "both versions read one copy");
	uint64_t before = first_tensor_sum(b);
	lorastore_adapter_release(a);

	/* The version whose copy it is goes from the catalog: the copy stays while read. */
	CLI(&r, "rm", "t/one@1");
	cr_assert_eq(r.status, 0, "%s", r.err);
	ls_proc_result_free(&r);
	cr_assert_eq(first_tensor_sum(b), before);
	lorastore_adapter_release(b);
	lorastore_adapter *again;
	cr_assert_eq(lorastore_acquire(conn, "t/two", -1, &again), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(first_tensor_sum(again), before);
	lorastore_adapter_release(again);
	cr_assert_eq(lorastore_evict(conn, "t/two"), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_stats_get(conn, &s2), 0);
	cr_assert_eq(s2.tiers[0].adapters, 0, "the deleted version's copy went with its last reader");
	cr_assert_eq(s2.tiers[0].used, 0);
	lorastore_close(conn);
	free(dir);
}

Test(cli_catalog, a_list_page_over_the_protocols_limit_is_refused_not_clamped)
{
	lorastore *conn;
	cr_assert_eq(lorastore_connect(daemon.socket, &conn), 0);
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_list_page(conn, "", NULL, 1001, &l), -EINVAL);
	cr_assert(strstr(lorastore_errmsg(conn), "at most 1000"), "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_list_page(conn, "", NULL, 1000, &l), 0, "%s", lorastore_errmsg(conn));
	lorastore_list_free(l);
	lorastore_close(conn);
}
