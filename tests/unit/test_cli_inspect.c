/*
 * `lorastore inspect` as a user runs it: the built CLI started as a real
 * process, its exit status, standard output (text and --json) and standard
 * error checked.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc_run.h"
#include "synth.h"

#define CLI LS_BINARY_DIR "/cli/lorastore"

static char *work_dir;

static void setup(void)
{
	work_dir = synth_mkdtemp("cli-inspect");
}

static void teardown(void)
{
	synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(cli_inspect, .init = setup, .fini = teardown);

struct run {
	int status;     /* exit status, or 128 + the signal that ended it */
	char *out;      /* standard output, NUL-terminated */
	char *err;      /* standard error */
};

/* Run the CLI with the arguments after argv[0] (NULL-terminated). */
static struct run run_cli(const char *const *args)
{
	cr_assert(access(CLI, X_OK) == 0, "%s is not built", CLI);
	char *argv[16];
	size_t n = 0;
	argv[n++] = (char *)CLI;
	for (size_t i = 0; args[i]; i++) {
		cr_assert_lt(n, sizeof(argv) / sizeof(argv[0]) - 1);
		argv[n++] = (char *)args[i];
	}
	argv[n] = NULL;

	struct ls_proc_result pr;
	cr_assert_eq(ls_proc_run((const char *const *)argv, NULL, work_dir, &pr), 0,
		     "could not start %s", CLI);
	struct run r = {.status = pr.status, .out = pr.out, .err = pr.err};
	cr_assert_neq(r.status, 126, "could not redirect the CLI's output");
	cr_assert_neq(r.status, 127, "could not start %s", CLI);
	return r;
}

static void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
}

static const char *make_adapter(const char *sub, const struct synth_opts *o)
{
	static char dir[PATH_MAX];
	int n = snprintf(dir, sizeof(dir), "%s/%s", work_dir, sub);
	cr_assert(n > 0 && (size_t)n < sizeof(dir));
	mkdir(dir, 0755);
	cr_assert_eq(synth_adapter_dir(dir, o), 0);
	return dir;
}

/*
 * Whether some line of text starts with the given whitespace-separated words
 * (NULL-terminated), whatever the spacing between them.
 */
static bool has_line(const char *text, const char *const *words)
{
	for (const char *line = text; line && *line;) {
		const char *eol = strchr(line, '\n');
		size_t len = eol ? (size_t)(eol - line) : strlen(line);
		char buf[512];
		if (len < sizeof(buf)) {
			memcpy(buf, line, len);
			buf[len] = '\0';
			char *save = NULL;
			char *tok = strtok_r(buf, " \t", &save);
			size_t i = 0;
			while (words[i] && tok && strcmp(tok, words[i]) == 0) {
				i++;
				tok = strtok_r(NULL, " \t", &save);
			}
			if (!words[i])
				return true;
		}
		line = eol ? eol + 1 : NULL;
	}
	return false;
}

#define ASSERT_LINE(text, ...)                                                            \
	do {                                                                              \
		const char *const words_[] = {__VA_ARGS__, NULL};                         \
		cr_assert(has_line((text), words_), "no line \"%s ...\" in:\n%s", words_[0], \
			  (text));                                                        \
	} while (0)

/* LLaMA, 2 layers, hidden 64, 4 heads and 2 key/value heads, rank 8, alpha 16, F16. */
static const struct synth_opts llama = {.family = SYNTH_LLAMA, .rank = 8, .alpha = 16};

/* Tensor bytes of `llama`: per layer q and o 2 x 8 x 64, k and v 8 x 64 + 32 x 8; F16. */
#define LLAMA_BYTES (2 * 2 * (2 * (8 * 64 + 64 * 8) + 2 * (8 * 64 + 32 * 8)))

Test(cli_inspect, valid_adapter_exits_0_with_rank_alpha_scale_and_module_table)
{
	const char *dir = make_adapter("valid", &llama);
	struct run r = run_cli((const char *const[]){"inspect", dir, NULL});
	cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
	ASSERT_LINE(r.out, "rank", "8");
	ASSERT_LINE(r.out, "alpha", "16");
	ASSERT_LINE(r.out, "scale", "2");
	ASSERT_LINE(r.out, "dtype", "F16");
	ASSERT_LINE(r.out, "base", "model", "meta-llama/Llama-3.2-1B");
	ASSERT_LINE(r.out, "MODULE", "LAYER", "KIND", "SHAPE", "DTYPE");
	ASSERT_LINE(r.out, "model.layers.0.self_attn.q_proj", "0", "A", "[8,", "64]", "F16");
	ASSERT_LINE(r.out, "model.layers.1.self_attn.k_proj", "1", "B", "[32,", "8]", "F16");
	ASSERT_LINE(r.out, "problems", "none");
	cr_assert_str_empty(r.err);
	run_free(&r);
}

static cJSON *field(const cJSON *o, const char *key)
{
	cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	cr_assert_not_null(v, "JSON has no \"%s\"", key);
	return v;
}

static cJSON *inspect_json(const char *dir, struct run *r)
{
	*r = run_cli((const char *const[]){"--json", "inspect", dir, NULL});
	cJSON *doc = cJSON_Parse(r->out);
	cr_assert_not_null(doc, "stdout is not JSON:\n%s", r->out);
	return doc;
}

Test(cli_inspect, json_inspect_gives_rank_alpha_scale_dtype_base_model_bytes_and_problems)
{
	const char *dir = make_adapter("json", &llama);
	struct run r;
	cJSON *doc = inspect_json(dir, &r);
	cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
	cr_assert_eq(field(doc, "rank")->valuedouble, 8);
	cr_assert_eq(field(doc, "alpha")->valuedouble, 16);
	cr_assert_float_eq(field(doc, "scale")->valuedouble, 2.0, 1e-12);
	cr_assert_str_eq(field(doc, "dtype")->valuestring, "F16");
	cr_assert_str_eq(field(doc, "base_model")->valuestring, "meta-llama/Llama-3.2-1B");
	cr_assert_eq(field(doc, "tensor_bytes")->valuedouble, LLAMA_BYTES);
	cJSON *problems = field(doc, "problems");
	cr_assert(cJSON_IsArray(problems));
	cr_assert_eq(cJSON_GetArraySize(problems), 0);
	cJSON_Delete(doc);
	run_free(&r);
}

Test(cli_inspect, json_tensors_have_module_layer_kind_shape_and_dtype)
{
	struct synth_opts o = {.family = SYNTH_BERT, .dora = true, .dtype = LS_DTYPE_BF16};
	const char *dir = make_adapter("kinds", &o);
	struct run r;
	cJSON *doc = inspect_json(dir, &r);
	cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
	cJSON *tensors = field(doc, "tensors");
	cr_assert(cJSON_IsArray(tensors));
	cr_assert_eq((size_t)cJSON_GetArraySize(tensors), synth_tensor_count(&o));
	size_t kinds[4] = {0}; /* A, B, extra, magnitude */
	static const char *const names[4] = {"A", "B", "extra", "magnitude"};
	const cJSON *t;
	cJSON_ArrayForEach(t, tensors)
	{
		const char *module = field(t, "module")->valuestring;
		cr_assert_not_null(module);
		const cJSON *layer = field(t, "layer");
		cr_assert(cJSON_IsNumber(layer) || cJSON_IsNull(layer), "%s: layer", module);
		const char *kind = field(t, "kind")->valuestring;
		cr_assert_not_null(kind);
		size_t k = 0;
		while (k < 4 && strcmp(kind, names[k]) != 0)
			k++;
		cr_assert_lt(k, 4, "%s: kind \"%s\"", module, kind);
		kinds[k]++;
		const cJSON *shape = field(t, "shape");
		cr_assert(cJSON_IsArray(shape) && cJSON_GetArraySize(shape) >= 1, "%s: shape", module);
		cr_assert_str_eq(field(t, "dtype")->valuestring, "BF16");
		if (strcmp(module, "classifier.weight") == 0) {
			cr_assert_str_eq(kind, "extra");
			cr_assert(cJSON_IsNull(layer));
		}
		if (strcmp(module, "bert.encoder.layer.1.attention.self.value") == 0)
			cr_assert_eq(layer->valuedouble, 1);
	}
	size_t modules = synth_lora_modules(&o);
	cr_assert_eq(kinds[0], modules);
	cr_assert_eq(kinds[1], modules);
	cr_assert_eq(kinds[2], 2, "the classifier weight and bias");
	cr_assert_eq(kinds[3], modules);
	cJSON_Delete(doc);
	run_free(&r);
}

static const char nan_a_name[] = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
static const char nan_b_name[] = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

/* An adapter whose A (F32 [4, 16]) is entirely NaN and whose B is valid; its directory. */
static const char *make_nan_adapter(void)
{
	static const char *const a_name = nan_a_name, *const b_name = nan_b_name;
	static char dir[PATH_MAX];
	char path[PATH_MAX + 64];
	snprintf(dir, sizeof(dir), "%s/nan", work_dir);
	mkdir(dir, 0755);
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	cr_assert_eq(synth_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8}"), 0);

	/* A (F32 [4, 16]) entirely NaN; B valid. */
	char header[512];
	int hl = snprintf(header, sizeof(header),
			  "{\"%s\":{\"dtype\":\"F32\",\"shape\":[4,16],\"data_offsets\":[0,256]},"
			  "\"%s\":{\"dtype\":\"F32\",\"shape\":[16,4],\"data_offsets\":[256,512]}}",
			  a_name, b_name);
	float data[128];
	for (int i = 0; i < 128; i++)
		data[i] = i < 64 ? NAN : 0.01f * (float)(i - 64);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f);
	uint8_t le[8];
	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)((uint64_t)hl >> (8 * i));
	cr_assert_eq(fwrite(le, 1, 8, f), 8);
	cr_assert_eq(fwrite(header, 1, (size_t)hl, f), (size_t)hl);
	cr_assert_eq(fwrite(data, 1, sizeof(data), f), sizeof(data));
	fclose(f);
	return dir;
}

Test(cli_inspect, adapter_full_of_nan_exits_1_naming_the_tensor_on_stderr)
{
	static const char *const a_name = nan_a_name, *const b_name = nan_b_name;
	const char *dir = make_nan_adapter();
	struct run r = run_cli((const char *const[]){"inspect", dir, NULL});
	cr_assert_eq(r.status, 1, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strstr(r.err, a_name), "stderr does not name the tensor: %s", r.err);
	cr_assert(strstr(r.err, "NaN"), "stderr does not say NaN: %s", r.err);
	cr_assert(strstr(r.err, "64"), "stderr does not give the count: %s", r.err);
	cr_assert_null(strstr(r.err, b_name), "stderr blames the valid tensor: %s", r.err);
	run_free(&r);
}

/* inspect checks as import does: with the same --allow-nonfinite, the same verdict. */
Test(cli_inspect, allow_nonfinite_accepts_the_nan_adapter_as_import_would)
{
	const char *dir = make_nan_adapter();
	struct run r = run_cli((const char *const[]){"inspect", "--allow-nonfinite", dir, NULL});
	cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
	run_free(&r);
}

Test(cli_inspect, missing_directory_exits_1_naming_it)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/does-not-exist", work_dir);
	struct run r = run_cli((const char *const[]){"inspect", dir, NULL});
	cr_assert_eq(r.status, 1, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strstr(r.err, dir), "stderr does not name %s: %s", dir, r.err);
	cr_assert_str_empty(r.out);
	run_free(&r);
}

/* dir/file replaced by a FIFO; inspect must say so and exit, not block in open(). */
static void assert_fifo_refused(const char *sub, const char *file)
{
	const char *dir = make_adapter(sub, &llama);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo: %s", strerror(errno));
	struct run r = run_cli((const char *const[]){"inspect", dir, NULL});
	cr_assert_eq(r.status, 1, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strstr(r.err, path), "stderr does not name %s: %s", path, r.err);
	cr_assert(strstr(r.err, "not a regular file"), "stderr: %s", r.err);
	run_free(&r);
}

Test(cli_inspect, a_fifo_as_the_safetensors_file_exits_1_without_blocking, .timeout = 30)
{
	assert_fifo_refused("fifo-st", "adapter_model.safetensors");
}

Test(cli_inspect, a_fifo_as_the_config_file_exits_1_without_blocking, .timeout = 30)
{
	assert_fifo_refused("fifo-cfg", "adapter_config.json");
}

Test(cli_inspect, no_argument_exits_2)
{
	struct run r = run_cli((const char *const[]){NULL});
	cr_assert_eq(r.status, 2, "exit %d, stderr: %s", r.status, r.err);
	cr_assert_str_not_empty(r.err);
	run_free(&r);
}

Test(cli_inspect, inspect_without_directory_exits_2)
{
	struct run r = run_cli((const char *const[]){"inspect", NULL});
	cr_assert_eq(r.status, 2, "exit %d, stderr: %s", r.status, r.err);
	run_free(&r);
}

Test(cli_inspect, unknown_command_exits_2)
{
	struct run r = run_cli((const char *const[]){"frobnicate", work_dir, NULL});
	cr_assert_eq(r.status, 2, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strstr(r.err, "frobnicate"), "stderr: %s", r.err);
	run_free(&r);
}

Test(cli_inspect, unknown_global_option_exits_2)
{
	const char *dir = make_adapter("opt", &llama);
	struct run r = run_cli((const char *const[]){"--frobnicate", "inspect", dir, NULL});
	cr_assert_eq(r.status, 2, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strstr(r.err, "--frobnicate"), "stderr: %s", r.err);
	run_free(&r);
}

Test(cli_inspect, json_after_the_command_is_taken_as_before_it)
{
	/* --json is a global option, taken after the command too. */
	const char *dir = make_adapter("late-json", &llama);
	struct run r = run_cli((const char *const[]){"inspect", "--json", dir, NULL});
	cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
	cr_assert_eq(r.out[0], '{', "not a JSON document: %s", r.out);
	run_free(&r);
}
