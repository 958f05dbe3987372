/*
 * Interoperability with the Hugging Face safetensors library: adapters written
 * by tests/interop/write_adapter.py (numpy arrays saved by the library, BF16
 * through its raw serialize_file API) are imported, and every tensor read back
 * from the blob equals the file's bytes and the SHA-256 the writer recorded of
 * the numpy bytes, bit for bit.
 *
 * The writer runs under LS_PYTHON, a virtual environment with numpy and
 * safetensors.  Without it these tests fail: they must never pass having
 * compared nothing.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blob.h"
#include "safetensors.h"
#include "store.h"
#include "synth.h"

#define WRITER LS_SOURCE_DIR "/tests/interop/write_adapter.py"

static char *state_dir;
static char *work_dir;
static struct ls_store *store;

static void setup(void)
{
	state_dir = synth_mkdtemp("interop-state");
	work_dir = synth_mkdtemp("interop-adapters");
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

TestSuite(interop, .init = setup, .fini = teardown);

struct written {
	char dir[PATH_MAX];        /* the adapter directory */
	char sidecar[PATH_MAX];    /* the writer's description of it */
};

/* Run the Python writer; fails the test when LS_PYTHON cannot run it. */
static void write_adapter(const char *sub, const char *dtype, int rank, const char *metadata,
			  struct written *w)
{
	cr_assert(access(LS_PYTHON, X_OK) == 0,
		  "LS_PYTHON (%s) is not executable: these tests need a virtual environment "
		  "with numpy and safetensors there (python3 -m venv .venv && .venv/bin/pip "
		  "install numpy safetensors)",
		  LS_PYTHON);
	cr_assert(access(WRITER, R_OK) == 0, "%s is missing", WRITER);
	int n = snprintf(w->dir, sizeof(w->dir), "%s/%s", work_dir, sub);
	cr_assert(n > 0 && (size_t)n < sizeof(w->dir));
	n = snprintf(w->sidecar, sizeof(w->sidecar), "%s/%s.json", work_dir, sub);
	cr_assert(n > 0 && (size_t)n < sizeof(w->sidecar));
	char rank_text[16];
	snprintf(rank_text, sizeof(rank_text), "%d", rank);

	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		char *argv[] = {(char *)LS_PYTHON, (char *)WRITER,   w->dir,
				w->sidecar,	   (char *)"--dtype", (char *)dtype,
				(char *)"--rank",  rank_text,	      (char *)"--seed",
				rank_text,	   (char *)"--metadata", (char *)metadata,
				NULL};
		execv(LS_PYTHON, argv);
		fprintf(stderr, "exec %s: %s\n", LS_PYTHON, strerror(errno));
		_exit(127);
	}
	int status = 0;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "%s %s failed (status %d): is safetensors installed in that environment?",
		  LS_PYTHON, WRITER, status);
}

static cJSON *read_sidecar(const char *path)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	static char text[1 << 20];
	size_t len = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	cr_assert_lt(len, sizeof(text) - 1, "%s is too large", path);
	text[len] = '\0';
	cJSON *root = cJSON_Parse(text);
	cr_assert_not_null(root, "%s is not JSON", path);
	return root;
}

static Lorastore__VersionRecord *import(const char *name, const struct written *w)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/adapter_config.json", w->dir);
	int cfg = open(path, O_RDONLY);
	cr_assert_geq(cfg, 0, "%s", path);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", w->dir);
	int st = open(path, O_RDONLY);
	cr_assert_geq(st, 0, "%s", path);
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	int rc = ls_store_import(store, name, cfg, st, w->dir, NULL, &rec, NULL, &err);
	close(cfg);
	close(st);
	cr_assert_eq(rc, 0, "import %s: %s", w->dir, err.msg);
	return rec;
}

static void sha256_hex(const void *data, size_t len, char hex[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	cr_assert_eq(EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL), 1);
	cr_assert_eq(md_len, 32);
	for (unsigned i = 0; i < md_len; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static void *read_at(int fd, size_t len, uint64_t off, const char *what)
{
	char *buf = malloc(len ? len : 1);
	cr_assert_not_null(buf);
	cr_assert_eq(pread(fd, buf, len, (off_t)off), (ssize_t)len, "%s: short read", what);
	return buf;
}

static const Lorastore__Tensor *record_tensor(const Lorastore__VersionRecord *rec,
					      const char *name)
{
	for (size_t i = 0; i < rec->n_tensors; i++)
		if (strcmp(rec->tensors[i]->source_name, name) == 0)
			return rec->tensors[i];
	cr_assert_fail("tensor %s is not in the imported version", name);
	return NULL;
}

/*
 * Every tensor of the sidecar: same dtype, shape and length in the record,
 * and the blob's bytes equal the file's bytes and hash to the writer's digest.
 */
static void assert_bit_for_bit(const Lorastore__VersionRecord *rec, const struct written *w)
{
	cJSON *side = read_sidecar(w->sidecar);
	const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(side, "tensors");
	const cJSON *hlen = cJSON_GetObjectItemCaseSensitive(side, "header_len");
	cr_assert(cJSON_IsArray(tensors) && cJSON_IsNumber(hlen));
	cr_assert_eq((size_t)cJSON_GetArraySize(tensors), rec->n_tensors);
	uint64_t file_data = 8 + (uint64_t)hlen->valuedouble;

	char blob_path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, blob_path, sizeof(blob_path));
	int bfd = open(blob_path, O_RDONLY);
	cr_assert_geq(bfd, 0, "%s", blob_path);
	struct ls_blob_header hdr;
	struct ls_err err;
	cr_assert_eq(ls_blob_read_header(bfd, blob_path, &hdr, &err), 0, "%s", err.msg);
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", w->dir);
	int sfd = open(path, O_RDONLY);
	cr_assert_geq(sfd, 0, "%s", path);

	size_t compared = 0;
	const cJSON *t;
	cJSON_ArrayForEach(t, tensors)
	{
		const char *name = cJSON_GetObjectItemCaseSensitive(t, "name")->valuestring;
		const char *dtype = cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring;
		const char *sha = cJSON_GetObjectItemCaseSensitive(t, "sha256")->valuestring;
		const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
		const cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
		uint64_t begin = (uint64_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
		uint64_t end = (uint64_t)cJSON_GetArrayItem(offs, 1)->valuedouble;

		const Lorastore__Tensor *rt = record_tensor(rec, name);
		cr_assert_str_eq(ls_dtype_name((enum ls_dtype)rt->dtype), dtype, "%s", name);
		cr_assert_str_eq(ls_dtype_name((enum ls_dtype)rt->source_dtype), dtype, "%s", name);
		cr_assert_eq(rt->n_shape, (size_t)cJSON_GetArraySize(shape), "%s", name);
		for (size_t k = 0; k < rt->n_shape; k++)
			cr_assert_eq(rt->shape[k],
				     (uint64_t)cJSON_GetArrayItem(shape, (int)k)->valuedouble,
				     "%s: dimension %zu", name, k);
		cr_assert_eq(rt->length, end - begin, "%s: length", name);

		void *stored = read_at(bfd, rt->length, hdr.data_offset + rt->offset, blob_path);
		void *source = read_at(sfd, rt->length, file_data + begin, path);
		cr_assert_arr_eq(stored, source, rt->length, "%s: blob bytes differ from the file",
				 name);
		char hex[65];
		sha256_hex(stored, rt->length, hex);
		cr_assert_str_eq(hex, sha, "%s: SHA-256 differs from the writer's", name);
		free(stored);
		free(source);
		compared++;
	}
	cr_assert_eq(compared, rec->n_tensors);
	close(sfd);
	close(bfd);
	cJSON_Delete(side);
}

static void round_trip(const char *dtype, int rank)
{
	char sub[32];
	snprintf(sub, sizeof(sub), "%s-r%d", dtype, rank);
	struct written w;
	write_adapter(sub, dtype, rank, "{\"format\": \"pt\"}", &w);
	char name[64];
	snprintf(name, sizeof(name), "interop/%s", sub);
	Lorastore__VersionRecord *rec = import(name, &w);
	cr_assert_str_eq(ls_dtype_name((enum ls_dtype)rec->dtype), dtype);
	cr_assert_eq(rec->rank, (uint32_t)rank);
	assert_bit_for_bit(rec, &w);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(interop, f32_file_from_save_file_is_stored_bit_for_bit)
{
	round_trip("F32", 8);
}

Test(interop, f16_file_from_save_file_is_stored_bit_for_bit)
{
	round_trip("F16", 8);
}

Test(interop, bf16_file_from_serialize_file_is_stored_bit_for_bit)
{
	round_trip("BF16", 8);
}

Test(interop, rank_1_file_is_stored_bit_for_bit)
{
	round_trip("F32", 1);
}

Test(interop, rank_64_file_is_stored_bit_for_bit)
{
	round_trip("BF16", 64);
}

Test(interop, metadata_dict_is_kept_in_the_blob_manifest)
{
	static const char meta[] =
		"{\"format\": \"pt\", \"trained_by\": \"interop test\", \"note\": \"caf\\u00e9 \\u2713\","
		" \"empty\": \"\"}";
	struct written w;
	write_adapter("meta", "F16", 4, meta, &w);
	Lorastore__VersionRecord *rec = import("interop/meta", &w);
	assert_bit_for_bit(rec, &w);

	char blob_path[PATH_MAX];
	ls_store_blob_path(store, rec->digest.data, blob_path, sizeof(blob_path));
	int fd = open(blob_path, O_RDONLY);
	cr_assert_geq(fd, 0);
	struct ls_blob_header hdr;
	struct ls_err err;
	cr_assert_eq(ls_blob_read_header(fd, blob_path, &hdr, &err), 0, "%s", err.msg);
	Lorastore__BlobManifest *m = NULL;
	cr_assert_eq(ls_blob_read_manifest(fd, blob_path, &hdr, &m, &err), 0, "%s", err.msg);
	close(fd);

	/* The library's reading of the metadata, against the manifest's pairs. */
	cJSON *side = read_sidecar(w.sidecar);
	const cJSON *want = cJSON_GetObjectItemCaseSensitive(side, "metadata");
	cr_assert(cJSON_IsObject(want));
	cr_assert_eq(m->n_metadata_keys, (size_t)cJSON_GetArraySize(want));
	cr_assert_eq(m->n_metadata_values, m->n_metadata_keys);
	const cJSON *kv;
	cJSON_ArrayForEach(kv, want)
	{
		size_t k = 0;
		while (k < m->n_metadata_keys && strcmp(m->metadata_keys[k], kv->string) != 0)
			k++;
		cr_assert_lt(k, m->n_metadata_keys, "metadata key '%s' is missing", kv->string);
		cr_assert_str_eq(m->metadata_values[k], kv->valuestring, "metadata '%s'",
				 kv->string);
	}
	cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(want, "note")->valuestring,
			 "caf\xc3\xa9 \xe2\x9c\x93");
	cJSON_Delete(side);
	lorastore__blob_manifest__free_unpacked(m, NULL);
	lorastore__version_record__free_unpacked(rec, NULL);
}

/* ---- headers at the edges of the format, the reference as the oracle */

#define CASES LS_SOURCE_DIR "/tests/interop/st_header_cases.py"

/*
 * 800 generated headers (escapes, number spellings, raw control characters,
 * nesting depths, every dtype name, metadata, mixes of them), each judged by
 * the reference implementation: lorastore must refuse every header the
 * reference refuses.  It may refuse more (names with NUL, duplicate keys,
 * dtypes it does not take), and says how many.
 */
Test(interop, no_safetensors_header_the_reference_refuses_is_accepted, .timeout = 120)
{
	cr_assert(access(LS_PYTHON, X_OK) == 0, "LS_PYTHON (%s) is not executable", LS_PYTHON);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/cases", work_dir);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char *argv[] = {(char *)LS_PYTHON, (char *)CASES, dir, (char *)"--count",
				(char *)"800", NULL};
		execv(LS_PYTHON, argv);
		_exit(127);
	}
	int status = 0;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed (status %d)", CASES,
		  status);

	char path[PATH_MAX + 32];
	snprintf(path, sizeof(path), "%s/verdicts.txt", dir);
	FILE *v = fopen(path, "r");
	cr_assert_not_null(v, "%s: %s", path, strerror(errno));
	unsigned cases = 0, both_accept = 0, both_reject = 0, stricter = 0, looser = 0;
	char line[8192];
	while (fgets(line, sizeof(line), v)) {
		unsigned id;
		char verdict[16];
		cr_assert_eq(sscanf(line, "%u %15s", &id, verdict), 2, "bad line: %s", line);
		bool ref_ok = strcmp(verdict, "ok") == 0;
		snprintf(path, sizeof(path), "%s/%04u.safetensors", dir, id);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
		struct ls_st_file f;
		struct ls_err err;
		int rc = ls_st_read_fd(fd, path, &f, &err);
		close(fd);
		if (rc == 0)
			ls_st_file_free(&f);
		if (rc == 0 && !ref_ok) {
			looser++;
			fprintf(stderr, "accepted, the reference refuses: case %04u: %s", id,
				strchr(line, '\t') ? strchr(line, '\t') + 1 : line);
		}
		both_accept += rc == 0 && ref_ok;
		both_reject += rc != 0 && !ref_ok;
		stricter += rc != 0 && ref_ok;
		cases++;
	}
	fclose(v);
	fprintf(stderr,
		"%u headers: %u accepted by both, %u refused by both, %u refused by lorastore "
		"alone (its own rules), %u accepted that the reference refuses\n",
		cases, both_accept, both_reject, stricter, looser);
	cr_assert_eq(cases, 800);
	cr_assert_eq(looser, 0, "%u headers the reference refuses were accepted", looser);
	/* A comparison that compared nothing is no pass. */
	cr_assert_geq(both_accept, 40, "only %u headers accepted by both", both_accept);
	cr_assert_geq(both_reject, 200, "only %u headers refused by both", both_reject);
}
