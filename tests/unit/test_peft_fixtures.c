/*
 * `lorastore inspect` on real PEFT adapters.  tests/fixtures/peft/ holds
 * adapters that the PEFT library itself wrote from tiny random models
 * (scripts/make-peft-fixtures, run by hand), and expected.json, what PEFT's own
 * model objects say about each: config r and alpha, every LoRA module's rank,
 * scaling and A/B shapes, and every saved tensor's kind, shape and dtype.
 * Each test runs the built CLI as a real process with --json and compares its
 * report with that, so the expectations come from PEFT, not from our code.
 */
#define _GNU_SOURCE

#include <criterion/criterion.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIXTURES LS_SOURCE_DIR "/tests/fixtures/peft"
#define CLI LS_BINARY_DIR "/cli/lorastore"

/*
 * Scales are alpha / r or alpha / sqrt(r) in double precision on both sides
 * and cJSON prints a double so that it reads back exactly, so the values should
 * be equal; 1e-9 relative leaves room only for a different order of the same
 * operations, and is far below any real difference (the nearest distinct
 * scales in the fixtures differ by more than 10%).
 */
#define SCALE_RTOL 1e-9

/* Every fixture that a test below checks; expected.json must list exactly these. */
static const char *const tested[] = {
	"gpt2-conv1d",	    "bert-seqcls",     "roberta-patterns", "distilbert-rslora",
	"t5-regex",	    "gemma-dora-bf16", "smollm-f16",	   "llama-embeddings",
	"neox-r1",
};
static const char nan_fixture[] = "nan-neox";

struct cli_run {
	int status; /* exit status, or 128 + signal */
	char *out;
	char *err;
};

static char *slurp_fd(int fd)
{
	size_t cap = 65536, n = 0;
	char *buf = malloc(cap + 1);
	cr_assert(buf);
	cr_assert(lseek(fd, 0, SEEK_SET) == 0);
	for (;;) {
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
			cr_assert(buf);
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		cr_assert(r >= 0, "read: %s", strerror(errno));
		if (r == 0)
			break;
		n += (size_t)r;
	}
	buf[n] = '\0';
	return buf;
}

static char *slurp(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
	char *text = slurp_fd(fd);
	close(fd);
	return text;
}

static int temp_file(void)
{
	char path[] = "/tmp/ls-peft-fixture-XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0, "mkstemp: %s", strerror(errno));
	unlink(path);
	return fd;
}

/* Run `lorastore --json inspect FIXTURES/name` with stdout and stderr captured. */
static struct cli_run run_inspect(const char *name)
{
	cr_assert(access(CLI, X_OK) == 0,
		  "%s is missing: build the lorastore target before this test", CLI);
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/%s", FIXTURES, name);
	cr_assert(access(dir, R_OK) == 0, "fixture %s is missing: %s", dir, strerror(errno));

	int out = temp_file(), err = temp_file();
	posix_spawn_file_actions_t fa;
	cr_assert_eq(posix_spawn_file_actions_init(&fa), 0);
	cr_assert_eq(posix_spawn_file_actions_adddup2(&fa, out, STDOUT_FILENO), 0);
	cr_assert_eq(posix_spawn_file_actions_adddup2(&fa, err, STDERR_FILENO), 0);
	char *argv[] = {(char *)CLI, "--json", "inspect", dir, NULL};
	pid_t pid;
	fflush(NULL);
	int rc = posix_spawn(&pid, CLI, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	cr_assert_eq(rc, 0, "posix_spawn %s: %s", CLI, strerror(rc));
	int status;
	while (waitpid(pid, &status, 0) < 0)
		cr_assert_eq(errno, EINTR, "waitpid: %s", strerror(errno));

	struct cli_run run = {
		.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
		.out = slurp_fd(out),
		.err = slurp_fd(err),
	};
	close(out);
	close(err);
	return run;
}

static void run_free(struct cli_run *run)
{
	free(run->out);
	free(run->err);
}

static cJSON *load_expected(void)
{
	char *text = slurp(FIXTURES "/expected.json");
	cJSON *root = cJSON_Parse(text);
	cr_assert(root, "%s/expected.json is not valid JSON", FIXTURES);
	free(text);
	return root;
}

static const cJSON *member(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	cr_assert(v, "no \"%s\" in %s", key, obj->string ? obj->string : "the object");
	return v;
}

static double number(const cJSON *obj, const char *key)
{
	const cJSON *v = member(obj, key);
	cr_assert(cJSON_IsNumber(v), "\"%s\" is not a number", key);
	return v->valuedouble;
}

static const char *string(const cJSON *obj, const char *key)
{
	const cJSON *v = member(obj, key);
	cr_assert(cJSON_IsString(v), "\"%s\" is not a string", key);
	return v->valuestring;
}

static bool flag(const cJSON *obj, const char *key)
{
	const cJSON *v = member(obj, key);
	cr_assert(cJSON_IsBool(v), "\"%s\" is not a boolean", key);
	return cJSON_IsTrue(v);
}

/* A layer index, or -1 for null. */
static int layer(const cJSON *obj)
{
	const cJSON *v = member(obj, "layer");
	if (cJSON_IsNull(v))
		return -1;
	cr_assert(cJSON_IsNumber(v), "\"layer\" is neither a number nor null");
	return v->valueint;
}

/* The element of array whose string member key equals value, or NULL. */
static const cJSON *find_by(const cJSON *array, const char *key, const char *value)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, array)
	{
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, key);
		if (cJSON_IsString(v) && strcmp(v->valuestring, value) == 0)
			return it;
	}
	return NULL;
}

/* The CLI's tensor of module with the given kind, or NULL. */
static const cJSON *find_tensor(const cJSON *tensors, const char *module, const char *kind)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, tensors)
	{
		if (strcmp(string(it, "module"), module) == 0 && strcmp(string(it, "kind"), kind) == 0)
			return it;
	}
	return NULL;
}

static bool same_shape(const cJSON *a, const cJSON *b)
{
	if (!cJSON_IsArray(a) || !cJSON_IsArray(b) || cJSON_GetArraySize(a) != cJSON_GetArraySize(b))
		return false;
	for (int i = 0; i < cJSON_GetArraySize(a); i++)
		if (cJSON_GetArrayItem(a, i)->valuedouble != cJSON_GetArrayItem(b, i)->valuedouble)
			return false;
	return true;
}

static void shape_text(const cJSON *shape, char *buf, size_t len)
{
	char *p = cJSON_PrintUnformatted(shape);
	snprintf(buf, len, "%s", p ? p : "?");
	free(p);
}

static bool close_rel(double got, double want)
{
	return fabs(got - want) <= SCALE_RTOL * fabs(want);
}

/* Every problem, one per line, for failure messages. */
static void problems_text(const cJSON *problems, char *buf, size_t len)
{
	size_t off = 0;
	buf[0] = '\0';
	const cJSON *p;
	cJSON_ArrayForEach(p, problems)
	{
		if (off >= len)
			break;
		off += (size_t)snprintf(buf + off, len - off, "\n  %s %s: %s",
					string(p, "severity"), string(p, "code"),
					string(p, "message"));
	}
}

/* Each expected LoRA module: rank, alpha, scale, layer, A/B (and magnitude) shapes. */
static void check_modules(const char *name, const cJSON *want, const cJSON *got)
{
	const cJSON *wmods = member(want, "modules");
	const cJSON *scales = member(got, "scales");
	const cJSON *tensors = member(got, "tensors");
	int n = cJSON_GetArraySize(wmods);
	cr_assert_gt(n, 0, "%s: expected.json lists no LoRA module; nothing would be tested", name);
	cr_expect_eq(number(got, "modules"), n, "%s: %g LoRA modules reported, PEFT has %d", name,
		     number(got, "modules"), n);
	cr_expect_eq(cJSON_GetArraySize(scales), n, "%s: %d scales reported, PEFT has %d modules",
		     name, cJSON_GetArraySize(scales), n);

	const cJSON *w;
	cJSON_ArrayForEach(w, wmods)
	{
		const char *mod = string(w, "module");
		const cJSON *s = find_by(scales, "module", mod);
		cr_expect(s, "%s: module '%s' missing from the scales", name, mod);
		if (!s)
			continue;
		cr_expect_eq(number(s, "rank"), number(w, "rank"), "%s: '%s' rank %g, PEFT %g", name,
			     mod, number(s, "rank"), number(w, "rank"));
		cr_expect(close_rel(number(s, "alpha"), number(w, "alpha")),
			  "%s: '%s' alpha %.17g, PEFT %.17g", name, mod, number(s, "alpha"),
			  number(w, "alpha"));
		cr_expect(close_rel(number(s, "scale"), number(w, "scale")),
			  "%s: '%s' scale %.17g, PEFT's scaling %.17g", name, mod, number(s, "scale"),
			  number(w, "scale"));
		cr_expect_eq(layer(s), layer(w), "%s: '%s' layer %d, expected %d", name, mod,
			     layer(s), layer(w));

		static const char *const kinds[] = {"A", "B", "magnitude"};
		static const char *const keys[] = {"a_shape", "b_shape", "magnitude_shape"};
		for (int k = 0; k < 3; k++) {
			const cJSON *ws = member(w, keys[k]);
			const cJSON *t = find_tensor(tensors, mod, kinds[k]);
			if (cJSON_IsNull(ws)) {
				cr_expect(!t, "%s: '%s' has a %s tensor PEFT does not have", name,
					  mod, kinds[k]);
				continue;
			}
			cr_expect(t, "%s: '%s' has no %s tensor", name, mod, kinds[k]);
			if (!t)
				continue;
			char gs[64], ws_text[64];
			shape_text(member(t, "shape"), gs, sizeof gs);
			shape_text(ws, ws_text, sizeof ws_text);
			cr_expect(same_shape(member(t, "shape"), ws), "%s: '%s' %s is %s, PEFT %s",
				  name, mod, kinds[k], gs, ws_text);
		}
	}
}

/* Each saved tensor: its module, layer, kind, shape and dtype, found by file name. */
static void check_tensors(const char *name, const cJSON *want, const cJSON *got)
{
	const cJSON *wt = member(want, "tensors");
	const cJSON *tensors = member(got, "tensors");
	int n = (int)number(want, "n_tensors");
	cr_expect_eq(cJSON_GetArraySize(tensors), n, "%s: %d tensors reported, the file has %d",
		     name, cJSON_GetArraySize(tensors), n);
	cr_expect_eq(cJSON_GetArraySize(wt), n);

	const cJSON *w;
	cJSON_ArrayForEach(w, wt)
	{
		const char *tn = string(w, "name");
		const cJSON *t = find_by(tensors, "name", tn);
		cr_expect(t, "%s: tensor '%s' missing from the report", name, tn);
		if (!t)
			continue;
		cr_expect_str_eq(string(t, "kind"), string(w, "kind"), "%s: '%s' kind %s, expected %s",
				 name, tn, string(t, "kind"), string(w, "kind"));
		cr_expect_str_eq(string(t, "module"), string(w, "module"),
				 "%s: '%s' module '%s', expected '%s'", name, tn, string(t, "module"),
				 string(w, "module"));
		cr_expect_eq(layer(t), layer(w), "%s: '%s' layer %d, expected %d", name, tn, layer(t),
			     layer(w));
		cr_expect_str_eq(string(t, "dtype"), string(w, "dtype"), "%s: '%s' dtype %s, file %s",
				 name, tn, string(t, "dtype"), string(w, "dtype"));
		char gs[64], ws[64];
		shape_text(member(t, "shape"), gs, sizeof gs);
		shape_text(member(w, "shape"), ws, sizeof ws);
		cr_expect(same_shape(member(t, "shape"), member(w, "shape")),
			  "%s: '%s' shape %s, file %s", name, tn, gs, ws);
	}

	/* The modules_to_save tensors, and whatever else PEFT saved in full, are extras. */
	const cJSON *extras = member(want, "extras");
	int n_extra = 0;
	const cJSON *t;
	cJSON_ArrayForEach(t, tensors)
	{
		n_extra += strcmp(string(t, "kind"), "extra") == 0;
	}
	cr_expect_eq(n_extra, cJSON_GetArraySize(extras), "%s: %d extra tensors, expected %d",
		     name, n_extra, cJSON_GetArraySize(extras));
	const cJSON *e;
	cJSON_ArrayForEach(e, extras)
	{
		const cJSON *x = find_by(tensors, "name", e->valuestring);
		cr_expect(x && strcmp(string(x, "kind"), "extra") == 0,
			  "%s: '%s' is not reported as an extra tensor", name, e->valuestring);
	}
}

static void check_fixture(const char *name)
{
	cJSON *exp = load_expected();
	const cJSON *want = cJSON_GetObjectItemCaseSensitive(member(exp, "fixtures"), name);
	cr_assert(want, "expected.json has no fixture '%s'; rerun scripts/make-peft-fixtures",
		  name);

	struct cli_run run = run_inspect(name);
	cr_assert_eq(run.status, 0, "lorastore inspect %s exited %d:\n%s", name, run.status,
		     run.err);
	cJSON *got = cJSON_Parse(run.out);
	cr_assert(got, "%s: the --json output is not JSON:\n%s", name, run.out);

	char ptext[4096];
	problems_text(member(got, "problems"), ptext, sizeof ptext);
	cr_expect_eq(cJSON_GetArraySize(member(got, "problems")), 0, "%s: problems reported:%s",
		     name, ptext);
	cr_expect(flag(got, "valid"), "%s: reported invalid", name);
	cr_expect_eq(number(got, "rank"), number(want, "r"), "%s: rank %g, config r %g", name,
		     number(got, "rank"), number(want, "r"));
	cr_expect(close_rel(number(got, "alpha"), number(want, "lora_alpha")),
		  "%s: alpha %g, config lora_alpha %g", name, number(got, "alpha"),
		  number(want, "lora_alpha"));
	cr_expect_eq(flag(got, "use_rslora"), flag(want, "use_rslora"), "%s: use_rslora", name);
	cr_expect_eq(flag(got, "use_dora"), flag(want, "use_dora"), "%s: use_dora", name);

	check_modules(name, want, got);
	check_tensors(name, want, got);

	cJSON_Delete(got);
	cJSON_Delete(exp);
	run_free(&run);
}

Test(peft_fixtures, gpt2_conv1d_fused_c_attn_fan_in_fan_out)
{
	check_fixture("gpt2-conv1d");
}

Test(peft_fixtures, bert_seq_cls_with_classifier_saved_in_full)
{
	check_fixture("bert-seqcls");
}

Test(peft_fixtures, roberta_rank_and_alpha_patterns_first_match_wins)
{
	check_fixture("roberta-patterns");
}

Test(peft_fixtures, distilbert_rslora_scale_is_alpha_over_sqrt_r)
{
	check_fixture("distilbert-rslora");
}

Test(peft_fixtures, t5_target_modules_regex_string)
{
	check_fixture("t5-regex");
}

Test(peft_fixtures, gemma_dora_bf16_multi_query_magnitudes)
{
	check_fixture("gemma-dora-bf16");
}

Test(peft_fixtures, smollm_grouped_query_all_linear_f16)
{
	check_fixture("smollm-f16");
}

Test(peft_fixtures, llama_embedding_lora_and_saved_base_embeddings)
{
	check_fixture("llama-embeddings");
}

Test(peft_fixtures, neox_fused_qkv_rank_1)
{
	check_fixture("neox-r1");
}

Test(peft_fixtures, all_nan_adapter_is_refused_naming_the_tensor)
{
	cJSON *exp = load_expected();
	const cJSON *want = cJSON_GetObjectItemCaseSensitive(member(exp, "nonfinite"), nan_fixture);
	cr_assert(want, "expected.json has no nonfinite fixture '%s'", nan_fixture);
	const cJSON *nan_tensors = member(want, "nan_tensors");
	cr_assert_gt(cJSON_GetArraySize(nan_tensors), 0);

	struct cli_run run = run_inspect(nan_fixture);
	cr_assert_eq(run.status, 1, "%s: exit status %d, expected 1; stderr:\n%s", nan_fixture,
		     run.status, run.err);
	cr_expect(strstr(run.err, "NaN"), "%s: stderr does not say NaN:\n%s", nan_fixture,
		  run.err);
	bool named = false;
	const cJSON *n;
	cJSON_ArrayForEach(n, nan_tensors)
	{
		named = named || strstr(run.err, n->valuestring);
	}
	cr_expect(named, "%s: stderr names none of the NaN tensors:\n%s", nan_fixture, run.err);

	/* The report still lists every tensor, each with its own error. */
	cJSON *got = cJSON_Parse(run.out);
	cr_assert(got, "%s: the --json output is not JSON:\n%s", nan_fixture, run.out);
	cr_expect(!flag(got, "valid"), "%s: reported valid", nan_fixture);
	const cJSON *problems = member(got, "problems");
	cr_expect_eq(cJSON_GetArraySize(problems), cJSON_GetArraySize(nan_tensors),
		     "%s: %d problems for %d NaN tensors", nan_fixture,
		     cJSON_GetArraySize(problems), cJSON_GetArraySize(nan_tensors));
	cJSON_ArrayForEach(n, nan_tensors)
	{
		const cJSON *p = find_by(problems, "tensor", n->valuestring);
		cr_expect(p, "%s: no problem names '%s'", nan_fixture, n->valuestring);
		if (!p)
			continue;
		cr_expect_str_eq(string(p, "code"), "nonfinite");
		cr_expect_str_eq(string(p, "severity"), "error");
		cr_expect(strstr(string(p, "message"), "NaN"), "message: %s",
			  string(p, "message"));
	}
	cJSON_Delete(got);
	cJSON_Delete(exp);
	run_free(&run);
}

/* A fixture added to expected.json without a test here would silently go unchecked. */
Test(peft_fixtures, every_fixture_in_expected_json_has_a_test)
{
	cJSON *exp = load_expected();
	const cJSON *fixtures = member(exp, "fixtures");
	size_t n = sizeof tested / sizeof tested[0];
	cr_expect_eq((size_t)cJSON_GetArraySize(fixtures), n,
		     "expected.json has %d fixtures, this file tests %zu",
		     cJSON_GetArraySize(fixtures), n);
	const cJSON *f;
	cJSON_ArrayForEach(f, fixtures)
	{
		bool found = false;
		for (size_t i = 0; i < n; i++)
			found = found || strcmp(tested[i], f->string) == 0;
		cr_expect(found, "fixture '%s' in expected.json has no test", f->string);
	}
	cr_expect(cJSON_GetObjectItemCaseSensitive(member(exp, "nonfinite"), nan_fixture),
		  "expected.json has no '%s'", nan_fixture);
	cJSON_Delete(exp);
}
