/*
 * Crash safety of imports: a child process imports adapters in a loop and is
 * killed with SIGKILL after a random delay, many times over.  After each kill
 * the store must open, every catalog version must have an intact blob, the
 * versions of each name must be consecutive (a crash before the commit
 * creates no version, so none is skipped), and gc must remove exactly what
 * the interrupted import left (temporaries, a ref or a blob without a
 * committed version), after which tmp/ is empty and refs/ and blobs/ match
 * the catalog one to one.
 *
 * The delays are random but seeded; the seed is printed and can be set with
 * LS_CRASH_SEED to replay a run.  Each round imports fresh content (new
 * seeds), so every import writes a new blob and the kill can land in any
 * phase: analysis, blob write and fsync, ref write, LMDB commit.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"
#include "store.h"
#include "synth.h"

/* Rounds of fork, import, kill and check; sized to fit under ASan too. */
#define CRASH_ROUNDS 60
/*
 * Upper bound of the random delay before the kill, in microseconds: 30 ms, or
 * CRASH_DELAY_IMPORTS times the duration of one import measured before the
 * rounds when that is longer (fsync on a slow disk, sanitizers), so that the
 * kills spread over whole imports and some imports still commit.
 */
#define CRASH_MIN_DELAY_US 30000
#define CRASH_DELAY_IMPORTS 2.5
/* Adapters each child imports, round robin, under the names below. */
#define CRASH_ADAPTERS 3

static const char *const crash_names[CRASH_ADAPTERS] = {"crash/small", "crash/mid", "crash/large"};

static char *state_dir;
static char *work_dir;

static void setup(void)
{
	state_dir = synth_mkdtemp("crash-state");
	work_dir = synth_mkdtemp("crash-adapters");
}

static void teardown(void)
{
	synth_rm_rf(state_dir);
	synth_rm_rf(work_dir);
	free(state_dir);
	free(work_dir);
}

TestSuite(crash, .init = setup, .fini = teardown);

/* About 100 KB, 800 KB and 2.6 MB of safetensors; the large one is converted. */
static struct synth_opts crash_shape(size_t j, uint64_t seed)
{
	struct synth_opts o = {.layers = 2, .seed = seed};
	switch (j) {
	case 0:
		o.family = SYNTH_LLAMA;
		o.hidden = 256;
		o.rank = 16;
		o.dtype = LS_DTYPE_F16;
		break;
	case 1:
		o.family = SYNTH_GPT2;
		o.hidden = 512;
		o.rank = 32;
		o.dtype = LS_DTYPE_F32;
		break;
	default:
		o.family = SYNTH_LLAMA;
		o.hidden = 768;
		o.heads = 12;
		o.kv_heads = 4;
		o.rank = 64;
		o.dtype = LS_DTYPE_F32;
		break;
	}
	return o;
}

static void path_join(char *buf, size_t len, const char *a, const char *b)
{
	int n = snprintf(buf, len, "%s/%s", a, b);
	cr_assert(n > 0 && (size_t)n < len, "path too long");
}

/* Import adapter j of a round from dir under its name. */
static int crash_import(struct ls_store *s, size_t j, const char *dir, struct ls_err *err)
{
	char path[PATH_MAX + 32];
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	int cfg = open(path, O_RDONLY | O_CLOEXEC);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int st = open(path, O_RDONLY | O_CLOEXEC);
	if (cfg < 0 || st < 0) {
		if (cfg >= 0)
			close(cfg);
		if (st >= 0)
			close(st);
		return ls_err_set(err, -ENOENT, "%s: adapter files missing", dir);
	}
	struct ls_import_opts opts = {
		.convert = j == 2 ? LS_CONVERT_BF16 : LS_CONVERT_KEEP,
		.source = "test_crash",
	};
	int rc = ls_store_import(s, crash_names[j], cfg, st, dir, &opts, NULL, NULL, err);
	close(cfg);
	close(st);
	return rc;
}

/*
 * The child: open the store, say so on ready_fd, then import the round's
 * adapters forever.  It never returns into Criterion; any failure is an exit
 * status the parent reports.
 */
static void crash_child(int ready_fd, char dirs[CRASH_ADAPTERS][PATH_MAX], unsigned round)
{
	struct ls_store *s = NULL;
	struct ls_err err;
	if (ls_store_open(state_dir, &s, &err) != 0) {
		fprintf(stderr, "child: open: %s\n", err.msg);
		_exit(10);
	}
	if (write(ready_fd, "r", 1) != 1)
		_exit(11);
	for (unsigned k = 0;; k++) {
		size_t j = (round + k) % CRASH_ADAPTERS;
		if (crash_import(s, j, dirs[j], &err) != 0) {
			fprintf(stderr, "child: import %s: %s\n", crash_names[j], err.msg);
			_exit(13);
		}
	}
}

/* What the catalog holds after a crash. */
struct crash_version {
	char name[64];
	uint32_t version;
	uint64_t generation;
	char hex[LS_DIGEST_HEX];
};

struct crash_catalog {
	size_t n;
	struct crash_version v[4096];
	int overflow;
};

static int crash_collect(void *ud, const Lorastore__VersionRecord *rec)
{
	struct crash_catalog *c = ud;
	if (c->n == sizeof(c->v) / sizeof(c->v[0])) {
		c->overflow = 1;
		return 1;
	}
	struct crash_version *v = &c->v[c->n++];
	snprintf(v->name, sizeof(v->name), "%s", rec->name);
	v->version = rec->version;
	v->generation = rec->generation;
	if (rec->digest.len == LS_DIGEST_LEN)
		ls_digest_hex(rec->digest.data, v->hex);
	else
		v->hex[0] = '\0';
	return 0;
}

static bool crash_has_generation(const struct crash_catalog *c, uint64_t gen)
{
	for (size_t i = 0; i < c->n; i++)
		if (c->v[i].generation == gen)
			return true;
	return false;
}

static bool crash_has_digest(const struct crash_catalog *c, const char *hex)
{
	for (size_t i = 0; i < c->n; i++)
		if (strcmp(c->v[i].hex, hex) == 0)
			return true;
	return false;
}

/* Files of one kind found under the state directory and how many the catalog lacks. */
struct crash_dir_count {
	size_t files;
	size_t stray;  /* tmp: every file; refs: no such generation; blobs: no such digest */
};

static struct crash_dir_count crash_scan(const char *sub, const struct crash_catalog *c)
{
	char path[PATH_MAX + 16];
	path_join(path, sizeof(path), state_dir, sub);
	DIR *d = opendir(path);
	cr_assert_not_null(d, "%s: %s", path, strerror(errno));
	struct crash_dir_count n = {0, 0};
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		n.files++;
		if (strcmp(sub, "tmp") == 0) {
			n.stray++;
		} else if (strcmp(sub, "refs") == 0) {
			char *end;
			unsigned long long gen = strtoull(e->d_name, &end, 10);
			cr_assert_str_eq(end, ".ref", "unexpected file refs/%s", e->d_name);
			n.stray += !crash_has_generation(c, gen);
		} else {
			size_t len = strlen(e->d_name);
			cr_assert(len == LS_DIGEST_HEX - 1 + 5 &&
					  strcmp(e->d_name + LS_DIGEST_HEX - 1, ".blob") == 0,
				  "unexpected file blobs/%s", e->d_name);
			char hex[LS_DIGEST_HEX];
			memcpy(hex, e->d_name, LS_DIGEST_HEX - 1);
			hex[LS_DIGEST_HEX - 1] = '\0';
			n.stray += !crash_has_digest(c, hex);
		}
	}
	closedir(d);
	return n;
}

static void crash_read_catalog(struct ls_store *s, struct crash_catalog *c)
{
	struct ls_err err;
	c->n = 0;
	c->overflow = 0;
	cr_assert_eq(ls_catalog_walk(ls_store_catalog(s), crash_collect, c, &err), 0, "%s",
		     err.msg);
	cr_assert_not(c->overflow, "more versions than the test expects");
}

/* A seeded generator for the delays (splitmix64). */
static uint64_t crash_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static uint64_t crash_seed(void)
{
	const char *env = getenv("LS_CRASH_SEED");
	if (env && *env)
		return strtoull(env, NULL, 0);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000007ULL ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid();
}

static double crash_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Counts across all rounds, printed at the end. */
struct crash_tally {
	size_t rounds_with_leftovers;  /* the kill landed between first temporary and commit */
	size_t temps, refs, blobs;     /* leftovers gc removed, by kind */
	size_t versions;               /* imports that committed */
};

/* The adapters of one round, with content no other round has. */
static void crash_make_adapters(unsigned round, char *round_dir, size_t len,
				char dirs[CRASH_ADAPTERS][PATH_MAX])
{
	char sub[32];
	snprintf(sub, sizeof(sub), "round%u", round);
	path_join(round_dir, len, work_dir, sub);
	cr_assert_eq(mkdir(round_dir, 0755), 0);
	for (size_t j = 0; j < CRASH_ADAPTERS; j++) {
		snprintf(sub, sizeof(sub), "a%zu", j);
		path_join(dirs[j], PATH_MAX, round_dir, sub);
		cr_assert_eq(mkdir(dirs[j], 0755), 0);
		struct synth_opts o = crash_shape(j, (uint64_t)round * CRASH_ADAPTERS + j + 1);
		cr_assert_eq(synth_adapter_dir(dirs[j], &o), 0);
	}
}

/* Kill one child after delay_us and check the store it leaves. */
static void crash_round(unsigned round, unsigned delay_us, uint32_t max_version[CRASH_ADAPTERS],
			struct crash_tally *t, struct crash_catalog *cat, uint64_t seed)
{
	char round_dir[PATH_MAX];
	char dirs[CRASH_ADAPTERS][PATH_MAX];
	crash_make_adapters(round, round_dir, sizeof(round_dir), dirs);

	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(pfd[0]);
		crash_child(pfd[1], dirs, round);
		_exit(99);
	}
	close(pfd[1]);
	char ready;
	ssize_t got = read(pfd[0], &ready, 1);
	close(pfd[0]);
	if (got == 1) {
		struct timespec ts = {0, (long)delay_us * 1000};
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
		kill(pid, SIGKILL);
	}
	int status = 0;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(got == 1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		  "round %u (seed %llu): the child was not killed as planned: %s %d", round,
		  (unsigned long long)seed, WIFEXITED(status) ? "exit status" : "signal",
		  WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));

	/* The store opens after the crash. */
	struct ls_store *s = NULL;
	struct ls_err err;
	cr_assert_eq(ls_store_open(state_dir, &s, &err), 0, "round %u: open after kill: %s", round,
		     err.msg);
	crash_read_catalog(s, cat);

	/* Versions of each name: 1..k without holes, never fewer than before. */
	for (size_t j = 0; j < CRASH_ADAPTERS; j++) {
		uint32_t count = 0, max = 0;
		for (size_t i = 0; i < cat->n; i++) {
			if (strcmp(cat->v[i].name, crash_names[j]) != 0)
				continue;
			count++;
			if (cat->v[i].version > max)
				max = cat->v[i].version;
		}
		cr_assert_eq(count, max, "round %u (seed %llu): %s has %u versions, the highest %u",
			     round, (unsigned long long)seed, crash_names[j], count, max);
		cr_assert_geq(max, max_version[j], "round %u: versions of %s went back", round,
			      crash_names[j]);
		/* Every version this child committed has an intact blob. */
		for (uint32_t v = max_version[j] + 1; v <= max; v++) {
			char ref[96];
			snprintf(ref, sizeof(ref), "%s@%u", crash_names[j], v);
			size_t bad = 99;
			cr_assert_eq(ls_store_verify(s, ref, NULL, NULL, &bad, &err), 0, "%s: %s", ref,
				     err.msg);
			cr_assert_eq(bad, 0, "round %u (seed %llu): %s has a damaged blob", round,
				     (unsigned long long)seed, ref);
		}
		t->versions += max - max_version[j];
		max_version[j] = max;
	}
	for (size_t i = 0; i < cat->n; i++)
		for (size_t k = i + 1; k < cat->n; k++)
			cr_assert_neq(cat->v[i].generation, cat->v[k].generation,
				      "two versions share generation %llu",
				      (unsigned long long)cat->v[i].generation);

	/* What the interrupted import left, then gc removes exactly that. */
	struct crash_dir_count tmp = crash_scan("tmp", cat);
	struct crash_dir_count refs = crash_scan("refs", cat);
	struct crash_dir_count blobs = crash_scan("blobs", cat);
	struct ls_gc_stats gc;
	cr_assert_eq(ls_store_gc(s, &gc, &err), 0, "round %u: gc: %s", round, err.msg);
	cr_assert_eq(gc.temps_removed, tmp.stray, "round %u: gc removed %zu temporaries of %zu",
		     round, gc.temps_removed, tmp.stray);
	cr_assert_eq(gc.refs_removed, refs.stray, "round %u: gc removed %zu refs, %zu are orphans",
		     round, gc.refs_removed, refs.stray);
	cr_assert_eq(gc.blobs_removed, blobs.stray,
		     "round %u: gc removed %zu blobs, %zu are unreferenced", round, gc.blobs_removed,
		     blobs.stray);
	if (tmp.stray || refs.stray || blobs.stray)
		t->rounds_with_leftovers++;
	t->temps += tmp.stray;
	t->refs += refs.stray;
	t->blobs += blobs.stray;

	/* After gc: tmp/ empty, one ref per version, every blob referenced and present. */
	tmp = crash_scan("tmp", cat);
	refs = crash_scan("refs", cat);
	blobs = crash_scan("blobs", cat);
	cr_assert_eq(tmp.files, 0, "round %u: tmp/ not empty after gc", round);
	cr_assert_eq(refs.stray, 0);
	cr_assert_eq(refs.files, cat->n, "round %u: %zu ref files for %zu versions", round,
		     refs.files, cat->n);
	cr_assert_eq(blobs.stray, 0);
	for (size_t i = 0; i < cat->n; i++) {
		char path[PATH_MAX + 128];
		snprintf(path, sizeof(path), "%s/blobs/%s.blob", state_dir, cat->v[i].hex);
		struct stat st;
		cr_assert_eq(stat(path, &st), 0, "round %u: %s@%u lost its blob after gc", round,
			     cat->v[i].name, cat->v[i].version);
	}
	ls_store_close(s);
	synth_rm_rf(round_dir);
}

Test(crash, sigkill_at_random_points_of_imports_leaves_a_consistent_store_that_gc_cleans,
     .timeout = 500)
{
	uint64_t seed = crash_seed();
	uint64_t rng = seed;
	fprintf(stderr, "test_crash: seed %llu (set LS_CRASH_SEED to replay)\n",
		(unsigned long long)seed);
	double start = crash_now();

	/*
	 * One version of each name before any crash (they must survive all of
	 * them), timed to size the delays.
	 */
	char round_dir[PATH_MAX];
	char dirs[CRASH_ADAPTERS][PATH_MAX];
	crash_make_adapters(CRASH_ROUNDS, round_dir, sizeof(round_dir), dirs);
	struct ls_store *s = NULL;
	struct ls_err err;
	cr_assert_eq(ls_store_open(state_dir, &s, &err), 0, "%s", err.msg);
	double t0 = crash_now();
	for (size_t j = 0; j < CRASH_ADAPTERS; j++)
		cr_assert_eq(crash_import(s, j, dirs[j], &err), 0, "%s", err.msg);
	double import_us = (crash_now() - t0) / CRASH_ADAPTERS * 1e6;
	ls_store_close(s);
	synth_rm_rf(round_dir);
	unsigned max_delay_us = CRASH_MIN_DELAY_US;
	if (import_us * CRASH_DELAY_IMPORTS > max_delay_us)
		max_delay_us = (unsigned)(import_us * CRASH_DELAY_IMPORTS);
	fprintf(stderr, "test_crash: one import takes %.1f ms; kills come after 0 to %.1f ms\n",
		import_us / 1000, max_delay_us / 1000.0);

	uint32_t max_version[CRASH_ADAPTERS] = {1, 1, 1};
	struct crash_tally t = {0};
	struct crash_catalog *cat = malloc(sizeof(*cat));
	cr_assert_not_null(cat);
	for (unsigned round = 0; round < CRASH_ROUNDS; round++) {
		unsigned delay_us = (unsigned)(crash_next(&rng) % (max_delay_us + 1));
		crash_round(round, delay_us, max_version, &t, cat, seed);
	}

	/* The whole store, once more, after all the crashes. */
	cr_assert_eq(ls_store_open(state_dir, &s, &err), 0, "%s", err.msg);
	size_t bad = 99;
	cr_assert_eq(ls_store_verify(s, NULL, NULL, NULL, &bad, &err), 0, "%s", err.msg);
	cr_assert_eq(bad, 0);
	ls_store_close(s);
	free(cat);

	fprintf(stderr,
		"test_crash: %d rounds in %.1f s: %zu versions committed; %zu kills landed "
		"mid-import (gc removed %zu temporaries, %zu orphan refs, %zu unreferenced "
		"blobs)\n",
		CRASH_ROUNDS, crash_now() - start, t.versions, t.rounds_with_leftovers, t.temps,
		t.refs, t.blobs);
	/* Proof that the kills hit the window between the first temporary and the commit. */
	cr_assert_geq(t.rounds_with_leftovers, 3,
		      "only %zu of %d kills landed mid-import (seed %llu)", t.rounds_with_leftovers,
		      CRASH_ROUNDS, (unsigned long long)seed);
	/* And that imports did complete between kills, so later rounds had versions to keep. */
	cr_assert_geq(t.versions, 3, "only %zu imports committed in %d rounds", t.versions,
		      CRASH_ROUNDS);
}
