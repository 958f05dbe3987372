/*
 * The synthetic adapter writer, proven against the safetensors reference
 * library: tests/interop/st_dump.py reads what synth.c wrote with the Python
 * package, recomputes the promised values by other means, and dumps each
 * tensor's raw bytes, which must equal synth_tensor_bytes.  Without the
 * virtualenv these tests fail: they exist to check against the reference.
 */
#define _GNU_SOURCE

#include <criterion/criterion.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "synth.h"

#define MAX_DUMPED 512

struct dumped {
	char name[256];
	char dtype[16];
	unsigned ndim;
	uint64_t shape[SYNTH_MAX_DIMS];
	size_t nbytes;
};

struct dump {
	unsigned long header_len;
	char metadata[512];
	size_t n;
	struct dumped t[MAX_DUMPED];
};

static char *read_all(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	cr_assert(f, "open %s: %s", path, strerror(errno));
	char *buf = NULL;
	size_t cap = 0, n = 0;
	for (;;) {
		if (cap - n < 4096) {
			cap = cap ? 2 * cap : 65536;
			buf = realloc(buf, cap + 1);
			cr_assert(buf);
		}
		size_t r = fread(buf + n, 1, cap - n, f);
		n += r;
		if (r == 0)
			break;
	}
	fclose(f);
	buf[n] = '\0';
	*len = n;
	return buf;
}

/* Run st_dump.py on file with stdout to out; returns the exit status. */
static int run_st_dump(const char *file, const char *dump_dir, uint64_t seed, const char *out)
{
	char script[4096], seed_s[32];
	snprintf(script, sizeof script, "%s/tests/interop/st_dump.py", LS_SOURCE_DIR);
	snprintf(seed_s, sizeof seed_s, "%" PRIu64, seed);
	cr_assert(access(LS_PYTHON, X_OK) == 0,
		  "the Python virtualenv is missing (%s): create %s/.venv with numpy and "
		  "safetensors; these tests check synth.c against the reference library",
		  LS_PYTHON, LS_SOURCE_DIR);

	fflush(NULL);
	pid_t pid = fork();
	cr_assert(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0)
			_exit(126);
		char *argv[] = {(char *)LS_PYTHON, script,		  (char *)file,
				"--dump",	   (char *)dump_dir, "--seed",
				seed_s,		   NULL};
		execv(LS_PYTHON, argv);
		_exit(127);
	}
	int status;
	cr_assert(waitpid(pid, &status, 0) == pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void parse_dump(const char *path, struct dump *d)
{
	size_t len;
	char *text = read_all(path, &len);
	char *save = NULL;

	memset(d, 0, sizeof *d);
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *f[8] = {0};
		size_t nf = 0;
		char *fsave = NULL;
		for (char *p = strtok_r(line, "\t", &fsave); p && nf < 8;
		     p = strtok_r(NULL, "\t", &fsave))
			f[nf++] = p;
		if (nf == 2 && strcmp(f[0], "header") == 0) {
			d->header_len = strtoul(f[1], NULL, 10);
		} else if (nf == 2 && strcmp(f[0], "metadata") == 0) {
			snprintf(d->metadata, sizeof d->metadata, "%s", f[1]);
		} else {
			cr_assert(nf == 7 && strcmp(f[0], "tensor") == 0, "bad dump line: %s", line);
			cr_assert(d->n < MAX_DUMPED);
			cr_assert_eq(strtoul(f[1], NULL, 10), d->n);
			struct dumped *t = &d->t[d->n++];
			snprintf(t->name, sizeof t->name, "%s", f[2]);
			snprintf(t->dtype, sizeof t->dtype, "%s", f[3]);
			if (strcmp(f[4], "-") != 0) {
				for (char *p = f[4]; *p; p++) {
					cr_assert(t->ndim < SYNTH_MAX_DIMS);
					t->shape[t->ndim++] = strtoull(p, &p, 10);
					if (*p != 'x')
						break;
				}
			}
			t->nbytes = strtoull(f[5], NULL, 10);
		}
	}
	free(text);
}

/*
 * Write nothing new: read path with the reference library, then require that
 * each tensor's bytes there equal synth_tensor_bytes of the tensor list the
 * file describes (which is the list the writer was given, in order).
 */
static void check_against_reference(const char *dir, const char *file, uint64_t seed,
				    struct dump *d)
{
	char dump_dir[4096], out[4096];
	snprintf(dump_dir, sizeof dump_dir, "%s/dump", dir);
	snprintf(out, sizeof out, "%s/dump.txt", dir);
	int rc = run_st_dump(file, dump_dir, seed, out);
	cr_assert_eq(rc, 0, "st_dump.py failed on %s (status %d); see its stderr", file, rc);
	parse_dump(out, d);
	cr_assert_gt(d->header_len, 0, "no header line from st_dump.py");
	cr_assert_eq(d->header_len % 8, 0);

	struct synth_tensor *list = calloc(d->n ? d->n : 1, sizeof *list);
	cr_assert(list);
	for (size_t i = 0; i < d->n; i++) {
		snprintf(list[i].name, sizeof list[i].name, "%s", d->t[i].name);
		list[i].dtype = LS_DTYPE_INVALID;
		/* Map names back with a table of our own, not ls_dtype_from_name. */
		static const char *const names[LS_DTYPE_COUNT] = {
			[LS_DTYPE_F32] = "F32",		[LS_DTYPE_F16] = "F16",
			[LS_DTYPE_BF16] = "BF16",	[LS_DTYPE_F64] = "F64",
			[LS_DTYPE_BOOL] = "BOOL",	[LS_DTYPE_U8] = "U8",
			[LS_DTYPE_I8] = "I8",		[LS_DTYPE_F8_E5M2] = "F8_E5M2",
			[LS_DTYPE_F8_E4M3] = "F8_E4M3", [LS_DTYPE_I16] = "I16",
			[LS_DTYPE_U16] = "U16",		[LS_DTYPE_I32] = "I32",
			[LS_DTYPE_U32] = "U32",		[LS_DTYPE_I64] = "I64",
			[LS_DTYPE_U64] = "U64",
		};
		for (int k = 1; k < LS_DTYPE_COUNT; k++)
			if (strcmp(names[k], d->t[i].dtype) == 0)
				list[i].dtype = (enum ls_dtype)k;
		cr_assert_neq(list[i].dtype, LS_DTYPE_INVALID, "dtype %s", d->t[i].dtype);
		list[i].ndim = d->t[i].ndim;
		memcpy(list[i].shape, d->t[i].shape, sizeof list[i].shape);
	}
	for (size_t i = 0; i < d->n; i++) {
		char bin[4200];
		size_t got_len, want_len;
		snprintf(bin, sizeof bin, "%s/%zu.bin", dump_dir, i);
		char *got = read_all(bin, &got_len);
		void *want = synth_tensor_bytes(list, d->n, i, seed, &want_len);
		cr_assert(want, "synth_tensor_bytes(%zu) failed", i);
		cr_assert_eq(got_len, want_len, "%s: %zu bytes in file, %zu expected", list[i].name,
			     got_len, want_len);
		cr_assert_eq(got_len, d->t[i].nbytes);
		cr_assert(memcmp(got, want, want_len) == 0, "%s: bytes differ", list[i].name);
		free(want);
		free(got);
	}
	free(list);
}

static const struct dumped *find(const struct dump *d, const char *name)
{
	for (size_t i = 0; i < d->n; i++)
		if (strcmp(d->t[i].name, name) == 0)
			return &d->t[i];
	return NULL;
}

static void assert_shape(const struct dump *d, const char *name, unsigned ndim, uint64_t d0,
			 uint64_t d1)
{
	const struct dumped *t = find(d, name);
	cr_assert(t, "no tensor %s", name);
	cr_assert_eq(t->ndim, ndim, "%s: ndim %u", name, t->ndim);
	cr_assert_eq(t->shape[0], d0, "%s: dim 0 is %" PRIu64, name, t->shape[0]);
	if (ndim > 1)
		cr_assert_eq(t->shape[1], d1, "%s: dim 1 is %" PRIu64, name, t->shape[1]);
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t ls = strlen(s), lx = strlen(suffix);
	return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* Every lora_A has its lora_B with the same rank: A is [r, in], B is [out, r]. */
static void assert_pairs(const struct dump *d, size_t modules)
{
	size_t pairs = 0;
	for (size_t i = 0; i < d->n; i++) {
		const struct dumped *a = &d->t[i];
		if (!ends_with(a->name, ".lora_A.weight"))
			continue;
		char bname[300];
		snprintf(bname, sizeof bname, "%.*s.lora_B.weight",
			 (int)(strlen(a->name) - strlen(".lora_A.weight")), a->name);
		const struct dumped *b = find(d, bname);
		cr_assert(b, "no %s", bname);
		cr_assert(a->ndim == 2 && b->ndim == 2);
		cr_assert_eq(a->shape[0], b->shape[1], "%s: rank of A and B differ", a->name);
		pairs++;
	}
	cr_assert_eq(pairs, modules);
}

static cJSON *read_config(const char *dir)
{
	char path[4096];
	size_t len;
	snprintf(path, sizeof path, "%s/adapter_config.json", dir);
	char *text = read_all(path, &len);
	cJSON *c = cJSON_Parse(text);
	cr_assert(c && cJSON_IsObject(c), "adapter_config.json is not a JSON object: %s", text);
	free(text);
	return c;
}

static const char *const family_names[] = {"llama", "gpt2", "t5", "neox", "bert"};

/* Write one adapter per float dtype and check it all against the reference. */
static void check_family(enum synth_family family, const char *probe, uint64_t probe_out,
			 uint64_t probe_in)
{
	static const enum ls_dtype dtypes[] = {LS_DTYPE_F32, LS_DTYPE_F16, LS_DTYPE_BF16};
	static const char *const dtype_names[] = {"F32", "F16", "BF16"};

	for (size_t k = 0; k < 3; k++) {
		struct synth_opts o = {.family = family, .dtype = dtypes[k], .seed = 1000 + k};
		char *dir = synth_mkdtemp(family_names[family]);
		char file[4096];
		struct dump *d = malloc(sizeof *d);
		cr_assert(d);

		cr_assert_eq(synth_adapter_dir(dir, &o), 0);
		snprintf(file, sizeof file, "%s/adapter_model.safetensors", dir);
		check_against_reference(dir, file, o.seed, d);

		cr_assert_eq(d->n, synth_tensor_count(&o));
		cr_assert_str_eq(d->metadata, "{\"format\":\"pt\"}");
		for (size_t i = 0; i < d->n; i++) {
			cr_assert_str_eq(d->t[i].dtype, dtype_names[k]);
			cr_assert(strncmp(d->t[i].name, "base_model.model.", 17) == 0, "%s",
				  d->t[i].name);
			cr_assert(strncmp(d->t[i].name + 17, "base_model.model.", 17) != 0);
			if (i > 0)
				cr_assert_lt(strcmp(d->t[i - 1].name, d->t[i].name), 0,
					     "tensors not sorted by name at %s", d->t[i].name);
		}
		assert_pairs(d, synth_lora_modules(&o));
		char name[300];
		snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", probe);
		assert_shape(d, name, 2, 8, probe_in);
		snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", probe);
		assert_shape(d, name, 2, probe_out, 8);

		cJSON *c = read_config(dir);
		cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(c, "peft_type")), "LORA");
		cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(c, "r")), 8);
		cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(c, "lora_alpha")), 16);
		cr_assert(cJSON_IsArray(cJSON_GetObjectItem(c, "target_modules")));
		cr_assert_eq(cJSON_IsTrue(cJSON_GetObjectItem(c, "fan_in_fan_out")),
			     family == SYNTH_GPT2);
		cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(c, "use_dora")));
		cr_assert(cJSON_IsString(cJSON_GetObjectItem(c, "base_model_name_or_path")));
		cJSON_Delete(c);

		free(d);
		synth_rm_rf(dir);
		free(dir);
	}
}

Test(synth, llama_adapter_matches_reference_library)
{
	/* k_proj: grouped-query, kv_heads * hidden / heads = 2 * 16 outputs. */
	check_family(SYNTH_LLAMA, "model.layers.1.self_attn.k_proj", 32, 64);
	struct synth_opts o = {.family = SYNTH_LLAMA};
	cr_assert_eq(synth_lora_modules(&o), 8);
	cr_assert_eq(synth_tensor_count(&o), 16);
}

Test(synth, gpt2_adapter_matches_reference_library)
{
	check_family(SYNTH_GPT2, "transformer.h.0.attn.c_attn", 192, 64);
	struct synth_opts o = {.family = SYNTH_GPT2};
	cr_assert_eq(synth_tensor_count(&o), 8);
}

Test(synth, t5_adapter_matches_reference_library)
{
	check_family(SYNTH_T5, "decoder.block.1.layer.1.EncDecAttention.v", 64, 64);
	struct synth_opts o = {.family = SYNTH_T5};
	cr_assert_eq(synth_tensor_count(&o), 24);
}

Test(synth, neox_adapter_matches_reference_library)
{
	check_family(SYNTH_NEOX, "gpt_neox.layers.0.attention.query_key_value", 192, 64);
	struct synth_opts o = {.family = SYNTH_NEOX};
	cr_assert_eq(synth_tensor_count(&o), 4);
}

Test(synth, bert_adapter_has_classifier_and_matches_reference_library)
{
	check_family(SYNTH_BERT, "bert.encoder.layer.1.attention.self.value", 64, 64);
	struct synth_opts o = {.family = SYNTH_BERT};
	cr_assert_eq(synth_tensor_count(&o), 10); /* 4 pairs + classifier weight, bias */
}

/* Every dtype, scalar and empty tensors, metadata: the raw writer itself. */
Test(synth, writer_all_dtypes_match_reference_library)
{
	struct synth_tensor t[LS_DTYPE_COUNT + 2];
	size_t n = 0;
	for (int k = 1; k < LS_DTYPE_COUNT; k++, n++) {
		memset(&t[n], 0, sizeof t[n]);
		snprintf(t[n].name, sizeof t[n].name, "t%02d.odd", k);
		t[n].dtype = (enum ls_dtype)k;
		t[n].ndim = 3;
		t[n].shape[0] = 3;
		t[n].shape[1] = 5;
		t[n].shape[2] = 7 + (uint64_t)k;
	}
	memset(&t[n], 0, sizeof t[n]);
	snprintf(t[n].name, sizeof t[n].name, "scalar");
	t[n].dtype = LS_DTYPE_F32;
	n++;
	memset(&t[n], 0, sizeof t[n]);
	snprintf(t[n].name, sizeof t[n].name, "empty");
	t[n].dtype = LS_DTYPE_BF16;
	t[n].ndim = 2;
	t[n].shape[0] = 0;
	t[n].shape[1] = 4;
	n++;

	char *dir = synth_mkdtemp("writer");
	char file[4096];
	snprintf(file, sizeof file, "%s/all.safetensors", dir);
	cr_assert_eq(synth_write_safetensors(file, t, n, 42, "{\"format\":\"pt\",\"note\":\"a b\"}"),
		     0);
	struct dump *d = malloc(sizeof *d);
	cr_assert(d);
	check_against_reference(dir, file, 42, d);
	cr_assert_eq(d->n, n);
	for (size_t i = 0; i < n; i++) {
		cr_assert_str_eq(d->t[i].name, t[i].name, "file order differs from given order");
		cr_assert_eq(d->t[i].ndim, t[i].ndim);
	}
	cr_assert_str_eq(d->metadata, "{\"format\":\"pt\",\"note\":\"a b\"}");
	free(d);
	synth_rm_rf(dir);
	free(dir);
}

/* DoRA, a head, a doubled prefix, a rank pattern and regex targets together. */
Test(synth, llama_options_shape_the_file_and_config)
{
	struct synth_opts o = {
		.family = SYNTH_LLAMA,
		.layers = 3,
		.rank = 16,
		.dtype = LS_DTYPE_BF16,
		.dora = true,
		.head = true,
		.prefix_repeat = 2,
		.regex_targets = true,
		.rank_pattern = "{\"k_proj\": 4, \"model.layers.2.self_attn.q_proj\": 2}",
		.alpha_pattern = "{\"v_proj\": 3}",
		.seed = 7,
	};
	char *dir = synth_mkdtemp("options");
	char file[4096];
	struct dump *d = malloc(sizeof *d);
	cr_assert(d);
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	snprintf(file, sizeof file, "%s/adapter_model.safetensors", dir);
	check_against_reference(dir, file, o.seed, d);

	cr_assert_eq(synth_lora_modules(&o), 12);
	cr_assert_eq(d->n, synth_tensor_count(&o));
	cr_assert_eq(d->n, 12 * 3 + 1);
	const char *p = "base_model.model.base_model.model.";
	char name[300];
	snprintf(name, sizeof name, "%smodel.layers.0.self_attn.k_proj.lora_A.weight", p);
	assert_shape(d, name, 2, 4, 64);
	snprintf(name, sizeof name, "%smodel.layers.2.self_attn.q_proj.lora_B.weight", p);
	assert_shape(d, name, 2, 64, 2);
	snprintf(name, sizeof name, "%smodel.layers.1.self_attn.q_proj.lora_A.weight", p);
	assert_shape(d, name, 2, 16, 64);
	snprintf(name, sizeof name, "%smodel.layers.1.self_attn.v_proj.lora_magnitude_vector", p);
	assert_shape(d, name, 1, 32, 0);
	snprintf(name, sizeof name, "%sscore.weight", p);
	assert_shape(d, name, 2, 2, 64);
	assert_pairs(d, 12);

	cJSON *c = read_config(dir);
	cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(c, "target_modules")),
			 ".*\\.self_attn\\.(q_proj|k_proj|v_proj|o_proj)");
	cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(c, "lora_alpha")), 32);
	cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(c, "use_dora")));
	cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(c, "task_type")), "SEQ_CLS");
	cJSON *mts = cJSON_GetObjectItem(c, "modules_to_save");
	cr_assert(cJSON_IsArray(mts) && cJSON_GetArraySize(mts) == 1);
	cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetArrayItem(mts, 0)), "score");
	cJSON *rp = cJSON_GetObjectItem(c, "rank_pattern");
	cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(rp, "k_proj")), 4);
	cJSON *ap = cJSON_GetObjectItem(c, "alpha_pattern");
	cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(ap, "v_proj")), 3);
	cJSON_Delete(c);

	free(d);
	synth_rm_rf(dir);
	free(dir);
}

Test(synth, old_config_has_only_four_fields)
{
	struct synth_opts o = {.family = SYNTH_GPT2, .old_config = true, .rank = 4, .alpha = 8};
	char *dir = synth_mkdtemp("oldcfg");
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	cJSON *c = read_config(dir);
	cr_assert_eq(cJSON_GetArraySize(c), 4);
	cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(c, "peft_type")), "LORA");
	cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(c, "r")), 4);
	cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(c, "lora_alpha")), 8);
	cr_assert(cJSON_IsArray(cJSON_GetObjectItem(c, "target_modules")));
	cJSON_Delete(c);
	synth_rm_rf(dir);
	free(dir);
}

Test(synth, bad_rank_pattern_json_is_einval)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .rank_pattern = "{not json"};
	char *dir = synth_mkdtemp("badrp");
	cr_assert_eq(synth_adapter_dir(dir, &o), -EINVAL);
	synth_rm_rf(dir);
	free(dir);
}

Test(synth, rm_rf_removes_a_nested_tree)
{
	char *dir = synth_mkdtemp("rmrf");
	char path[4096];
	cr_assert(strstr(dir, "rmrf"), "tag missing from %s", dir);
	snprintf(path, sizeof path, "%s/a", dir);
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(path, sizeof path, "%s/a/f.txt", dir);
	cr_assert_eq(synth_write_text(path, "hello\n"), 0);
	snprintf(path, sizeof path, "%s/link", dir);
	cr_assert_eq(symlink("/", path), 0); /* FTW_PHYS: removed, not followed */
	synth_rm_rf(dir);
	struct stat st;
	cr_assert_eq(stat(dir, &st), -1);
	cr_assert_eq(errno, ENOENT);
	free(dir);
}
