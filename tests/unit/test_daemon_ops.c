/*
 * Operations of a real lorastored, driven from real processes: the CLI, the
 * client library (static), the README example and a program built against the
 * installed library with pkg-config.  Each test starts its own daemon on a
 * temporary socket and state directory and removes them at the end.
 *
 * Set LS_OPS_KEEP=1 to keep the temporary directories (and daemon.log) of
 * the tests for a look after a failure; LS_OPS_SEED replays the random kill
 * delays of the crash test.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/io_uring.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorastore.h>

#include "blob.h"
#include "daemon_proc.h"
#include "proc_run.h"
#include "synth.h"

#define MAX_DAEMONS 2
#define MAX_CHILDREN 8

static struct ls_daemon_proc daemons[MAX_DAEMONS];
static char *work_dir;              /* adapters, captured output, installs */
static pid_t children[MAX_CHILDREN]; /* processes to kill when a test fails early */

static void setup(void)
{
	for (int i = 0; i < MAX_DAEMONS; i++) {
		memset(&daemons[i], 0, sizeof(daemons[i]));
		daemons[i].pid = -1;
		daemons[i].notify_fd = -1;
	}
	for (int i = 0; i < MAX_CHILDREN; i++)
		children[i] = -1;
	char *dir = synth_mkdtemp("ops");
	/* Resolved, because the client reports import sources as resolved paths. */
	work_dir = realpath(dir, NULL);
	cr_assert_not_null(work_dir);
	free(dir);
}

static void teardown(void)
{
	bool keep = getenv("LS_OPS_KEEP") != NULL;
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] > 0) {
			kill(children[i], SIGKILL);
			waitpid(children[i], NULL, 0);
		}
	for (int i = 0; i < MAX_DAEMONS; i++) {
		struct ls_daemon_proc *d = &daemons[i];
		if (keep && d->dir[0]) {
			fprintf(stderr, "kept %s\n", d->dir);
			if (d->pid > 0)
				ls_daemon_kill(d);
			continue;
		}
		if (d->dir[0] || d->pid > 0 || d->notify_fd >= 0)
			ls_daemon_cleanup(d);
	}
	if (keep)
		fprintf(stderr, "kept %s\n", work_dir);
	else
		synth_rm_rf(work_dir);
	free(work_dir);
	work_dir = NULL;
}

TestSuite(daemon_ops, .init = setup, .fini = teardown);

static void child_track(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] <= 0) {
			children[i] = pid;
			return;
		}
}

/* Wait for a tracked child; its exit status, or 128 + the signal. */
static int child_wait(pid_t pid)
{
	int st = ls_proc_wait(pid);
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] == pid)
			children[i] = -1;
	return st;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---- daemons */

static struct ls_daemon_proc *daemon_start(int i, const char *const *args)
{
	struct ls_daemon_proc *d = &daemons[i];
	int rc = ls_daemon_start(d, NULL, args);
	cr_assert_eq(rc, 0, "lorastored did not start (log %s)", d->log);
	return d;
}

/* Start d again on its own directory (state and socket kept). */
static void daemon_restart(struct ls_daemon_proc *d, const char *const *args)
{
	char dir[sizeof(d->dir)];
	snprintf(dir, sizeof(dir), "%s", d->dir);
	if (d->pid > 0)
		ls_daemon_kill(d);
	if (d->notify_fd >= 0)
		close(d->notify_fd);
	int rc = ls_daemon_start(d, dir, args);
	cr_assert_eq(rc, 0, "lorastored did not start again on %s (log %s)", dir, d->log);
}

static bool daemon_alive(struct ls_daemon_proc *d)
{
	int st;
	return d->pid > 0 && waitpid(d->pid, &st, WNOHANG) == 0;
}

static lorastore *connect_to(const struct ls_daemon_proc *d)
{
	lorastore *conn = NULL;
	int rc = lorastore_connect(d->socket, &conn);
	cr_assert_eq(rc, 0, "connect %s: %s (%s)", d->socket, conn ? lorastore_errmsg(conn) : "",
		     lorastore_strerror(rc));
	return conn;
}

/* ---- processes with captured output (proc_run.h) */

static char *slurp(const char *path, size_t *len_out)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc((size_t)len + 1);
	cr_assert_not_null(buf);
	cr_assert_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
	buf[len] = '\0';
	fclose(f);
	if (len_out)
		*len_out = (size_t)len;
	return buf;
}

/* Run argv to its end, its output captured in the work directory. */
static void run_argv(const char *const *argv, const char *const *env, struct ls_proc_result *p)
{
	cr_assert_eq(ls_proc_run(argv, env, work_dir, p), 0, "could not start %s", argv[0]);
}

/* The CLI against d: lorastore --socket SOCKET args... */
static void cli_v(const struct ls_daemon_proc *d, struct ls_proc_result *p,
		  const char *const *args)
{
	cr_assert_eq(ls_cli_run(d->socket, work_dir, args, p), 0, "could not start the CLI");
}

#define CLI(d, p, ...) cli_v((d), (p), (const char *const[]){__VA_ARGS__, NULL})

static cJSON *parse_json(const char *text, const char *what)
{
	cJSON *doc = cJSON_Parse(text);
	cr_assert_not_null(doc, "%s: not JSON:\n%s", what, text);
	return doc;
}

static const cJSON *json_get(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	cr_assert_not_null(v, "no \"%s\" in %s", key, cJSON_PrintUnformatted(o));
	return v;
}

static double json_num(const cJSON *o, const char *key)
{
	const cJSON *v = json_get(o, key);
	cr_assert(cJSON_IsNumber(v), "\"%s\" is not a number", key);
	return v->valuedouble;
}

static const char *json_str(const cJSON *o, const char *key)
{
	const cJSON *v = json_get(o, key);
	cr_assert(cJSON_IsString(v), "\"%s\" is not a string", key);
	return v->valuestring;
}

/* ---- adapters and their source bytes */

/* Write a synthetic PEFT adapter into dir (created with its parents). */
static void make_adapter(const char *dir, const struct synth_opts *o)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s", dir);
	for (char *p = tmp + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			mkdir(tmp, 0755);
			*p = '/';
		}
	mkdir(tmp, 0755);
	cr_assert_eq(synth_adapter_dir(dir, o), 0, "synth_adapter_dir %s", dir);
}

/* A safetensors file read whole, its header parsed (independently of store/). */
struct st_file {
	unsigned char *buf;
	size_t len;
	cJSON *header;
	uint64_t data_start;   /* bytes from the start of the file */
};

static void st_open(struct st_file *f, const char *dir)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	f->buf = (unsigned char *)slurp(path, &f->len);
	cr_assert_geq(f->len, 8);
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | f->buf[i];
	cr_assert_leq(hlen, f->len - 8);
	f->header = cJSON_ParseWithLength((const char *)f->buf + 8, hlen);
	cr_assert_not_null(f->header, "%s: header", path);
	f->data_start = 8 + hlen;
}

static void st_close(struct st_file *f)
{
	cJSON_Delete(f->header);
	free(f->buf);
}

/*
 * The module path and kind of a LoRA tensor name, as PEFT writes it
 * ("base_model.model.<module>.lora_A.weight"); false for other tensors.
 */
static bool st_lora_name(const char *name, char *module, size_t len, lorastore_kind *kind)
{
	static const char prefix[] = "base_model.model.";
	static const struct {
		const char *suffix;
		lorastore_kind kind;
	} kinds[] = {{".lora_A.weight", LORASTORE_KIND_A}, {".lora_B.weight", LORASTORE_KIND_B}};
	while (strncmp(name, prefix, strlen(prefix)) == 0)
		name += strlen(prefix);
	size_t n = strlen(name);
	for (size_t k = 0; k < 2; k++) {
		size_t s = strlen(kinds[k].suffix);
		if (n > s && strcmp(name + n - s, kinds[k].suffix) == 0) {
			snprintf(module, len, "%.*s", (int)(n - s), name);
			*kind = kinds[k].kind;
			return true;
		}
	}
	return false;
}

/* Byte range [*start, *start + *len) of tensor item in the file. */
static void st_range(const struct st_file *f, const cJSON *item, uint64_t *start, uint64_t *len)
{
	const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
	cr_assert(cJSON_IsArray(off) && cJSON_GetArraySize(off) == 2);
	uint64_t b = (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble;
	uint64_t e = (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble;
	cr_assert_leq(f->data_start + e, f->len);
	*start = f->data_start + b;
	*len = e - b;
}

/* Every LoRA tensor of the held adapter equals, bit for bit, its bytes in dir's file. */
static void expect_tensors_equal_source(const lorastore_adapter *ad, const char *dir)
{
	struct st_file f;
	st_open(&f, dir);
	size_t count = 0;
	const cJSON *item;
	cJSON_ArrayForEach(item, f.header)
	{
		char module[256];
		lorastore_kind kind;
		if (!st_lora_name(item->string, module, sizeof(module), &kind))
			continue;
		uint64_t start, len;
		st_range(&f, item, &start, &len);
		lorastore_tensor t;
		int rc = lorastore_adapter_tensor(ad, module, kind, &t);
		cr_assert_eq(rc, 0, "%s: tensor %s: %s", dir, module, lorastore_strerror(rc));
		cr_assert_eq(t.bytes, len, "%s: %s: %llu bytes, source has %llu", dir, module,
			     (unsigned long long)t.bytes, (unsigned long long)len);
		cr_assert(memcmp(t.data, f.buf + start, len) == 0, "%s: %s differs from the source",
			  dir, module);
		count++;
	}
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
	cr_assert_eq(info.tensor_count, count, "%s: %zu tensors held, %zu in the source", dir,
		     info.tensor_count, count);
	st_close(&f);
}

static size_t dir_entries(const char *path)
{
	DIR *dir = opendir(path);
	cr_assert_not_null(dir, "%s: %s", path, strerror(errno));
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(dir)))
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(dir);
	return n;
}

/* ---- 1. SIGKILL during a bulk import through the CLI */

#define BULK_ADAPTERS 40
#define BULK_ROUNDS 8
#define BULK_MAX_VERSIONS 64

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* About 26 KB of F16 safetensors; fresh content for every seed. */
static struct synth_opts bulk_shape(uint64_t seed)
{
	return (struct synth_opts){
		.family = SYNTH_LLAMA, .layers = 2, .hidden = 128, .rank = 8, .seed = seed};
}

struct bulk_name {
	uint32_t versions;                 /* listed versions */
	uint64_t seen;                     /* bit v-1 set when version v is listed */
	int round_of[BULK_MAX_VERSIONS];   /* the round whose directory version v came from */
};

/*
 * After a restart: verify finds no bad version, every listed version is
 * acquired and equals its source directory (named by the record), versions
 * of each name are 1..n without a gap and come from increasing rounds, and
 * gc leaves tmp/ empty.  Returns the number of versions listed; the files
 * tmp/ held before gc go to *tmp_before_gc.
 */
static size_t bulk_check(struct ls_daemon_proc *d, size_t *tmp_before_gc)
{
	struct ls_proc_result p;
	CLI(d, &p, "--json", "verify");
	cr_assert_eq(p.status, 0, "verify exited %d: %s", p.status, p.err);
	cJSON *doc = parse_json(p.out, "verify");
	cr_assert_eq(json_num(doc, "bad"), 0, "verify: %s", p.out);
	cr_assert_eq(cJSON_GetArraySize(json_get(doc, "items")), 0, "verify: %s", p.out);
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	struct bulk_name names[BULK_ADAPTERS + 1];
	memset(names, 0, sizeof(names));
	lorastore *conn = connect_to(d);
	char cursor[512] = "";
	size_t total = 0;
	do {
		lorastore_list *l = NULL;
		int rc = lorastore_list_page(conn, NULL, cursor[0] ? cursor : NULL, 0, &l);
		cr_assert_eq(rc, 0, "list: %s", lorastore_errmsg(conn));
		for (size_t i = 0; i < lorastore_list_count(l); i++) {
			const lorastore_entry *e = lorastore_list_entry(l, i);
			int idx, round = -1, src_idx;
			if (strcmp(e->name, "calib") == 0) {
				idx = BULK_ADAPTERS;
			} else {
				cr_assert_eq(sscanf(e->name, "a%d", &idx), 1, "unexpected %s", e->name);
				cr_assert(idx >= 0 && idx < BULK_ADAPTERS);
				size_t wl = strlen(work_dir);
				cr_assert(strncmp(e->source, work_dir, wl) == 0, "%s@%u: source %s",
					  e->name, e->version, e->source);
				cr_assert_eq(sscanf(e->source + wl, "/r%d/a%d", &round, &src_idx), 2,
					     "%s@%u: source %s", e->name, e->version, e->source);
				cr_assert_eq(src_idx, idx, "%s@%u: source %s", e->name, e->version,
					     e->source);
			}
			cr_assert(e->version >= 1 && e->version <= BULK_MAX_VERSIONS);
			struct bulk_name *n = &names[idx];
			uint64_t bit = 1ull << (e->version - 1);
			cr_assert_eq(n->seen & bit, 0, "%s@%u listed twice", e->name, e->version);
			n->seen |= bit;
			n->versions++;
			n->round_of[e->version - 1] = round;

			char ref[300];
			snprintf(ref, sizeof(ref), "%s@%u", e->name, e->version);
			lorastore_adapter *ad = NULL;
			rc = lorastore_acquire(conn, ref, -1, &ad);
			cr_assert_eq(rc, 0, "acquire %s: %s", ref, lorastore_errmsg(conn));
			expect_tensors_equal_source(ad, e->source);
			cr_assert_eq(lorastore_adapter_release(ad), 0);
			total++;
		}
		const char *next = lorastore_list_next(l);
		snprintf(cursor, sizeof(cursor), "%s", next ? next : "");
		lorastore_list_free(l);
	} while (cursor[0]);
	lorastore_close(conn);

	for (int i = 0; i <= BULK_ADAPTERS; i++) {
		struct bulk_name *n = &names[i];
		/* Versions 1..n: a crash before the commit must not use up a number. */
		uint64_t want = n->versions == 64 ? ~0ull : (1ull << n->versions) - 1;
		cr_assert_eq(n->seen, want, "adapter %d: versions %#llx are not 1..%u", i,
			     (unsigned long long)n->seen, n->versions);
		for (uint32_t v = 1; v < n->versions; v++)
			cr_assert_lt(n->round_of[v - 1], n->round_of[v],
				     "a%02d: version %u from round %d, version %u from round %d", i,
				     v, n->round_of[v - 1], v + 1, n->round_of[v]);
	}

	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s/tmp", d->state);
	*tmp_before_gc = dir_entries(tmp);
	CLI(d, &p, "--json", "gc");
	cr_assert_eq(p.status, 0, "gc exited %d: %s", p.status, p.err);
	ls_proc_result_free(&p);
	cr_assert_eq(dir_entries(tmp), 0, "gc left files in %s", tmp);
	return total;
}

Test(daemon_ops, sigkill_of_the_daemon_during_a_bulk_import_then_restart_leaves_the_store_consistent,
     .timeout = 120)
{
	const char *seed_env = getenv("LS_OPS_SEED");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0)
				 : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
	rng_state = seed;
	fprintf(stderr, "sigkill during bulk import: seed %llu (LS_OPS_SEED replays it)\n",
		(unsigned long long)seed);
	double t0 = now_s();
	struct ls_daemon_proc *d = daemon_start(0, NULL);

	/* One import, timed, so that the kills spread over the 40 of a round. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/calib", work_dir);
	struct synth_opts o = bulk_shape(seed ^ 0xca11b);
	make_adapter(dir, &o);
	lorastore *conn = connect_to(d);
	double ti = now_s();
	int rc = lorastore_import_dir(conn, dir, &(lorastore_import_opts){.name = "calib"}, NULL);
	double one = now_s() - ti;
	cr_assert_eq(rc, 0, "import calib: %s", lorastore_errmsg(conn));
	lorastore_close(conn);
	double max_delay = BULK_ADAPTERS * one;
	if (max_delay < 0.05)
		max_delay = 0.05;

	size_t committed = 1;
	for (int round = 0; round < BULK_ROUNDS; round++) {
		const char *argv[BULK_ADAPTERS + 8];
		char dirs[BULK_ADAPTERS][PATH_MAX];
		int n = 0;
		argv[n++] = ls_cli_binary();
		argv[n++] = "--socket";
		argv[n++] = d->socket;
		argv[n++] = "import";
		for (int i = 0; i < BULK_ADAPTERS; i++) {
			snprintf(dirs[i], sizeof(dirs[i]), "%s/r%d/a%02d", work_dir, round, i);
			o = bulk_shape(seed + (uint64_t)round * 1000 + (uint64_t)i + 1);
			make_adapter(dirs[i], &o);
			argv[n++] = dirs[i];
		}
		argv[n] = NULL;
		char out_path[PATH_MAX], err_path[PATH_MAX];
		snprintf(out_path, sizeof(out_path), "%s/import-%d.out", work_dir, round);
		snprintf(err_path, sizeof(err_path), "%s/import-%d.err", work_dir, round);

		double delay = max_delay * (double)(rng_next() % 1000) / 1000.0;
		pid_t cli = ls_proc_spawn(argv, (const char *const[]){"LORASTORE_SOCKET", NULL},
					  out_path, err_path);
		cr_assert_geq(cli, 0);
		child_track(cli);
		usleep((useconds_t)(delay * 1e6));
		ls_daemon_kill(d);
		int st = child_wait(cli);
		char *err = slurp(err_path, NULL);
		/* The CLI sees the daemon go away: an error (or success if it finished), no crash. */
		cr_assert(st == 0 || st == 1, "round %d: the import CLI ended with %d: %s", round, st,
			  err);
		free(err);

		daemon_restart(d, NULL);
		size_t left = 0;
		size_t total = bulk_check(d, &left);
		fprintf(stderr, "  round %d: kill after %.0f ms (one import %.1f ms), %zu of %d "
				"imports committed, %zu file(s) in tmp/ for gc\n",
			round, delay * 1000, one * 1000, total - committed, BULK_ADAPTERS, left);
		cr_assert_geq(total, committed, "versions disappeared: %zu, was %zu", total,
			      committed);
		cr_assert_leq(total - committed, BULK_ADAPTERS);
		committed = total;
	}
	cr_assert_eq(ls_daemon_stop(d), 0);
	fprintf(stderr, "  %d rounds in %.1f s\n", BULK_ROUNDS, now_s() - t0);
}

/* ---- 2. a corrupt blob */

struct verify_seen {
	size_t n;
	char name[64];
	uint32_t version;
	int code;
	char message[512];
};

static void verify_collect(void *ud, const char *name, uint32_t version, int code,
			   const char *message)
{
	struct verify_seen *v = ud;
	if (v->n++ == 0) {
		snprintf(v->name, sizeof(v->name), "%s", name);
		v->version = version;
		v->code = code;
		snprintf(v->message, sizeof(v->message), "%s", message);
	}
}

Test(daemon_ops, a_corrupt_blob_gives_a_clear_error_shows_in_verify_and_the_daemon_serves_the_rest,
     .timeout = 60)
{
	struct ls_daemon_proc *d = daemon_start(0, NULL);
	char good_dir[PATH_MAX], bad_dir[PATH_MAX];
	snprintf(good_dir, sizeof(good_dir), "%s/good", work_dir);
	snprintf(bad_dir, sizeof(bad_dir), "%s/bad", work_dir);
	make_adapter(good_dir, &(struct synth_opts){.family = SYNTH_LLAMA, .seed = 1});
	make_adapter(bad_dir, &(struct synth_opts){.family = SYNTH_GPT2, .seed = 2});

	lorastore *conn = connect_to(d);
	lorastore_list *good = NULL, *bad = NULL;
	cr_assert_eq(lorastore_import_dir_entry(conn, good_dir,
						&(lorastore_import_opts){.name = "ops/good"}, &good),
		     0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_import_dir_entry(conn, bad_dir,
						&(lorastore_import_opts){.name = "ops/bad"}, &bad),
		     0, "%s", lorastore_errmsg(conn));
	cr_assert_str_neq(lorastore_list_entry(good, 0)->digest, lorastore_list_entry(bad, 0)->digest);

	/* Flip one byte in the middle of the data region of ops/bad's blob. */
	char blob[PATH_MAX];
	snprintf(blob, sizeof(blob), "%s/blobs/%s.blob", d->state, lorastore_list_entry(bad, 0)->digest);
	int fd = open(blob, O_RDWR);
	cr_assert_geq(fd, 0, "%s: %s", blob, strerror(errno));
	struct ls_blob_header hdr;
	cr_assert_eq(pread(fd, &hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	cr_assert_eq(hdr.data_offset % LS_BLOB_PAGE, 0);
	cr_assert_gt(hdr.data_length, 0);
	off_t at = (off_t)(hdr.data_offset + hdr.data_length / 2);
	unsigned char byte;
	cr_assert_eq(pread(fd, &byte, 1, at), 1);
	byte ^= 0x5a;
	cr_assert_eq(pwrite(fd, &byte, 1, at), 1);
	cr_assert_eq(fsync(fd), 0);
	close(fd);
	lorastore_list_free(good);
	lorastore_list_free(bad);

	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn, "ops/bad", -1, &ad);
	cr_assert_eq(rc, LORASTORE_E_CORRUPT, "acquire of the corrupt adapter: %d (%s) %s", rc,
		     lorastore_strerror(rc), lorastore_errmsg(conn));
	cr_assert_null(ad);
	cr_assert_not_null(strstr(lorastore_errmsg(conn), "ops/bad"),
			   "the message does not name the adapter: %s", lorastore_errmsg(conn));
	/* Still refused the second time: the broken load is not kept as resident. */
	rc = lorastore_acquire(conn, "ops/bad", -1, &ad);
	cr_assert_eq(rc, LORASTORE_E_CORRUPT, "second acquire: %d %s", rc, lorastore_errmsg(conn));

	size_t nbad = 0;
	struct verify_seen seen = {0};
	rc = lorastore_verify(conn, NULL, &nbad, verify_collect, &seen);
	cr_assert_eq(rc, 0, "verify: %s", lorastore_errmsg(conn));
	cr_assert_eq(nbad, 1);
	cr_assert_eq(seen.n, 1);
	cr_assert_str_eq(seen.name, "ops/bad");
	cr_assert_eq(seen.version, 1);
	cr_assert_eq(seen.code, LORASTORE_E_CORRUPT, "verify code %d (%s): %s", seen.code,
		     lorastore_strerror(seen.code), seen.message);
	cr_assert_neq(seen.message[0], '\0');

	struct ls_proc_result p;
	CLI(d, &p, "--json", "verify");
	cr_assert_eq(p.status, 1, "CLI verify of a broken store exited %d", p.status);
	cJSON *doc = parse_json(p.out, "verify");
	cr_assert_eq(json_num(doc, "bad"), 1);
	const cJSON *items = json_get(doc, "items");
	cr_assert_eq(cJSON_GetArraySize(items), 1, "%s", p.out);
	const cJSON *it = cJSON_GetArrayItem(items, 0);
	cr_assert_str_eq(json_str(it, "name"), "ops/bad");
	cr_assert_eq(json_num(it, "version"), 1);
	cr_assert_neq(json_str(it, "code")[0], '\0');
	cr_assert_neq(json_str(it, "message")[0], '\0');
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	rc = lorastore_acquire(conn, "ops/good", -1, &ad);
	cr_assert_eq(rc, 0, "acquire of the intact adapter: %s", lorastore_errmsg(conn));
	expect_tensors_equal_source(ad, good_dir);
	lorastore_adapter_release(ad);
	lorastore_close(conn);
	cr_assert(daemon_alive(d), "lorastored died (log %s)", d->log);
	cr_assert_eq(ls_daemon_stop(d), 0);
}

/*
 * Damage the blob of a fresh import with how (0 delete it, 1 cut 4096 bytes
 * off its end, 2 flip a byte of its manifest), then acquire: want is the code.
 */
static void assert_damaged_blob_refused(int how, int want, const char *words)
{
	struct ls_daemon_proc *d = daemon_start(0, NULL);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/damaged", work_dir);
	make_adapter(dir, &(struct synth_opts){.family = SYNTH_GPT2, .seed = 7});
	lorastore *conn = connect_to(d);
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_import_dir_entry(conn, dir, &(lorastore_import_opts){.name = "ops/dmg"},
						&l),
		     0, "%s", lorastore_errmsg(conn));
	char blob[PATH_MAX];
	snprintf(blob, sizeof(blob), "%s/blobs/%s.blob", d->state, lorastore_list_entry(l, 0)->digest);
	lorastore_list_free(l);
	if (how == 0) {
		cr_assert_eq(unlink(blob), 0);
	} else if (how == 1) {
		struct stat st;
		cr_assert_eq(stat(blob, &st), 0);
		cr_assert_eq(truncate(blob, st.st_size - 4096), 0);
	} else {
		int fd = open(blob, O_RDWR);
		cr_assert_geq(fd, 0);
		struct ls_blob_header hdr;
		cr_assert_eq(pread(fd, &hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
		off_t at = (off_t)(hdr.manifest_offset + hdr.manifest_length / 2);
		unsigned char byte;
		cr_assert_eq(pread(fd, &byte, 1, at), 1);
		byte ^= 0x01;
		cr_assert_eq(pwrite(fd, &byte, 1, at), 1);
		close(fd);
	}
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn, "ops/dmg", -1, &ad);
	cr_assert_eq(rc, want, "acquire: %d (%s) %s", rc, lorastore_strerror(rc),
		     lorastore_errmsg(conn));
	cr_assert_not_null(strstr(lorastore_errmsg(conn), words), "message: %s",
			   lorastore_errmsg(conn));
	cr_assert_not_null(strstr(lorastore_errmsg(conn), "ops/dmg"), "message: %s",
			   lorastore_errmsg(conn));
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(d), 0);
}

Test(daemon_ops, a_missing_blob_is_refused_at_load_as_missing, .timeout = 60)
{
	assert_damaged_blob_refused(0, LORASTORE_E_BLOB_MISSING, "missing");
}

Test(daemon_ops, a_truncated_blob_is_refused_at_load_as_truncated, .timeout = 60)
{
	assert_damaged_blob_refused(1, LORASTORE_E_BLOB_TRUNCATED, "truncated");
}

Test(daemon_ops, a_flipped_manifest_byte_is_refused_at_load, .timeout = 60)
{
	assert_damaged_blob_refused(2, LORASTORE_E_CORRUPT, "manifest checksum");
}

/* name@version -> digest and generation, from a full listing. */
struct listed {
	char ref[64];
	char digest[65];
	uint64_t generation;
};

static size_t list_all(lorastore *conn, struct listed *out, size_t cap)
{
	lorastore_list *l = NULL;
	int rc = lorastore_list_page(conn, "", NULL, 1000, &l);
	cr_assert_eq(rc, 0, "%s", lorastore_errmsg(conn));
	size_t n = lorastore_list_count(l);
	cr_assert_leq(n, cap);
	for (size_t i = 0; i < n; i++) {
		const lorastore_entry *e = lorastore_list_entry(l, i);
		snprintf(out[i].ref, sizeof(out[i].ref), "%s@%u", e->name, e->version);
		memcpy(out[i].digest, e->digest, sizeof(out[i].digest));
		out[i].generation = e->generation;
	}
	lorastore_list_free(l);
	return n;
}

Test(daemon_ops, rebuild_after_the_catalog_directory_is_lost_restores_every_version, .timeout = 60)
{
	struct ls_daemon_proc *d = daemon_start(0, NULL);
	lorastore *conn = connect_to(d);
	static const char *const names[] = {"rb/a", "rb/b", "rb/a", "rb/c"};
	for (int i = 0; i < 4; i++) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/rb%d", work_dir, i);
		make_adapter(dir, &(struct synth_opts){.family = SYNTH_GPT2, .seed = 40 + (uint64_t)i});
		int rc = lorastore_import_dir(conn, dir, &(lorastore_import_opts){.name = names[i]},
					      NULL);
		cr_assert_eq(rc, 0, "%s", lorastore_errmsg(conn));
	}
	cr_assert_eq(lorastore_delete(conn, "rb/c"), 0, "%s", lorastore_errmsg(conn));
	struct listed before[8], after[8];
	size_t n = list_all(conn, before, 8);
	cr_assert_eq(n, 3);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(d), 0);

	/* The catalog directory is gone; the daemon starts on an empty one. */
	char cat[PATH_MAX + 16];
	snprintf(cat, sizeof(cat), "%s/catalog", d->state);
	synth_rm_rf(cat);
	daemon_restart(d, NULL);
	conn = connect_to(d);
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(conn, &st), 0);
	cr_assert_eq(st.catalog_versions, 0);

	struct ls_proc_result p;
	CLI(d, &p, "--json", "rebuild");
	cr_assert_eq(p.status, 0, "rebuild exited %d: %s", p.status, p.err);
	cJSON *doc = parse_json(p.out, "rebuild");
	cr_assert_eq(json_num(doc, "versions"), 3, "%s", p.out);
	cr_assert_eq(json_num(doc, "skipped"), 0, "%s", p.out);
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	cr_assert_eq(list_all(conn, after, 8), n);
	for (size_t i = 0; i < n; i++) {
		cr_assert_str_eq(after[i].ref, before[i].ref);
		cr_assert_str_eq(after[i].digest, before[i].digest, "%s", before[i].ref);
		cr_assert_eq(after[i].generation, before[i].generation, "%s", before[i].ref);
	}
	cr_assert_eq(lorastore_stats_get(conn, &st), 0);
	cr_assert_eq(st.catalog_versions, 3);
	lorastore_adapter *ad = NULL;
	cr_assert_eq(lorastore_acquire(conn, "rb/a@2", -1, &ad), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	/* New imports go on after the restored ones: no version or generation reused. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/rb0", work_dir);
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_import_dir_entry(conn, dir, &(lorastore_import_opts){.name = "rb/a"},
						&l),
		     0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_list_entry(l, 0)->version, 3);
	for (size_t i = 0; i < n; i++)
		cr_assert_gt(lorastore_list_entry(l, 0)->generation, before[i].generation);
	lorastore_list_free(l);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(d), 0);
}

Test(daemon_ops, the_cli_manual_of_rebuild_says_it_needs_an_admin, .timeout = 30)
{
	struct ls_proc_result p;
	run_argv((const char *const[]){ls_cli_binary(), "rebuild", "--help", NULL}, NULL, &p);
	cr_assert_eq(p.status, 0);
	cr_assert_not_null(strstr(p.out, "admin"), "%s", p.out);
	ls_proc_result_free(&p);
}

/* ---- 3. ten thousand adapters */

#define MANY_ADAPTERS 10000
#define MANY_DIRS 100
#define MANY_CLIENTS 4

Test(daemon_ops, ten_thousand_small_adapters_imported_and_listed, .timeout = 300)
{
#if defined(__SANITIZE_ADDRESS__)
	bool asan = true;
#else
	bool asan = getenv("ASAN_OPTIONS") != NULL;
#endif
	if (asan)
		cr_skip_test("runs in the non-sanitized build: 10,000 imports with fsync take too "
			     "long under AddressSanitizer");

	/* 100 distinct tiny adapters; names differ, content repeats (blobs are shared). */
	static char dirs[MANY_DIRS][PATH_MAX];
	for (int i = 0; i < MANY_DIRS; i++) {
		snprintf(dirs[i], sizeof(dirs[i]), "%s/tiny/t%03d", work_dir, i);
		make_adapter(dirs[i], &(struct synth_opts){.family = SYNTH_LLAMA, .layers = 1,
							   .rank = 1, .hidden = 8,
							   .seed = 100 + (uint64_t)i});
	}
	struct ls_daemon_proc *d = daemon_start(0, (const char *const[]){"--workers", "4", NULL});

	double t0 = now_s();
	pid_t pids[MANY_CLIENTS];
	for (int c = 0; c < MANY_CLIENTS; c++) {
		pids[c] = fork();
		cr_assert_geq(pids[c], 0);
		if (pids[c] == 0) {
			lorastore *conn = NULL;
			if (lorastore_connect(d->socket, &conn) != 0) {
				fprintf(stderr, "client %d: connect: %s\n", c, lorastore_errmsg(conn));
				_exit(1);
			}
			for (int k = 0; k < MANY_ADAPTERS / MANY_CLIENTS; k++) {
				int i = c * (MANY_ADAPTERS / MANY_CLIENTS) + k;
				char name[64];
				snprintf(name, sizeof(name), "tenant%d/adapter-%05d", i % 10, i);
				uint32_t v = 0;
				int rc = lorastore_import_dir(conn, dirs[i % MANY_DIRS],
							      &(lorastore_import_opts){.name = name}, &v);
				if (rc || v != 1) {
					fprintf(stderr, "client %d: import %s: %s (version %u)\n", c, name,
						lorastore_errmsg(conn), v);
					_exit(1);
				}
			}
			lorastore_close(conn);
			_exit(0);
		}
		child_track(pids[c]);
	}
	for (int c = 0; c < MANY_CLIENTS; c++)
		cr_assert_eq(child_wait(pids[c]), 0, "importing client %d failed", c);
	double t_import = now_s() - t0;

	t0 = now_s();
	static unsigned char seen[MANY_ADAPTERS];
	memset(seen, 0, sizeof(seen));
	lorastore *conn = connect_to(d);
	char cursor[512] = "";
	size_t total = 0, pages = 0;
	do {
		lorastore_list *l = NULL;
		int rc = lorastore_list_page(conn, NULL, cursor[0] ? cursor : NULL, 0, &l);
		cr_assert_eq(rc, 0, "list after %zu entries: %s", total, lorastore_errmsg(conn));
		pages++;
		for (size_t i = 0; i < lorastore_list_count(l); i++) {
			const lorastore_entry *e = lorastore_list_entry(l, i);
			int tenant, idx;
			cr_assert_eq(sscanf(e->name, "tenant%d/adapter-%d", &tenant, &idx), 2, "%s",
				     e->name);
			cr_assert(idx >= 0 && idx < MANY_ADAPTERS && tenant == idx % 10, "%s", e->name);
			cr_assert_eq(e->version, 1, "%s@%u", e->name, e->version);
			cr_assert_eq(seen[idx], 0, "%s listed twice", e->name);
			seen[idx] = 1;
			total++;
		}
		const char *next = lorastore_list_next(l);
		snprintf(cursor, sizeof(cursor), "%s", next ? next : "");
		lorastore_list_free(l);
		cr_assert_leq(pages, MANY_ADAPTERS, "the cursor does not advance");
	} while (cursor[0]);
	double t_list = now_s() - t0;
	cr_assert_eq(total, MANY_ADAPTERS, "listed %zu", total);

	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(conn, &st), 0);
	cr_assert_eq(st.catalog_versions, MANY_ADAPTERS);
	lorastore_close(conn);
	char blobs[PATH_MAX];
	snprintf(blobs, sizeof(blobs), "%s/blobs", d->state);
	cr_assert_eq(dir_entries(blobs), MANY_DIRS, "content-addressed blobs");
	fprintf(stderr, "10,000 adapters: import %.1f s (%.0f/s, %d clients), list %.2f s "
			"(%zu pages)\n",
		t_import, MANY_ADAPTERS / t_import, MANY_CLIENTS, t_list, pages);
	cr_assert_eq(ls_daemon_stop(d), 0);
}

/* ---- 4. socket activation */

Test(daemon_ops, socket_activation_serves_an_inherited_listening_socket, .timeout = 30)
{
	struct ls_daemon_proc *d = &daemons[0];
	char *dir = synth_mkdtemp("ops-activate");
	snprintf(d->dir, sizeof(d->dir), "%s", dir);
	free(dir);
	snprintf(d->socket, sizeof(d->socket), "%s/activated.sock", d->dir);
	snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
	snprintf(d->notify, sizeof(d->notify), "%s/notify", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/daemon.log", d->dir);

	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	cr_assert_lt(strlen(d->socket), sizeof(addr.sun_path));
	cr_assert_lt(strlen(d->notify), sizeof(addr.sun_path));
	d->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memcpy(addr.sun_path, d->notify, strlen(d->notify) + 1);
	cr_assert_eq(bind(d->notify_fd, (struct sockaddr *)&addr, sizeof(addr)), 0);

	/* What systemd does for lorastored.socket: bind, listen, pass as fd 3. */
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memcpy(addr.sun_path, d->socket, strlen(d->socket) + 1);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&addr, sizeof(addr)), 0, "%s", strerror(errno));
	cr_assert_eq(listen(lfd, 16), 0);

	d->pid = fork();
	cr_assert_geq(d->pid, 0);
	if (d->pid == 0) {
		int log = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (log >= 0)
			dup2(log, STDERR_FILENO);
		if (lfd == 3)
			fcntl(3, F_SETFD, 0);
		else if (dup2(lfd, 3) != 3)
			_exit(126);
		char pid[32];
		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		setenv("LISTEN_FDS", "1", 1);
		setenv("LISTEN_PID", pid, 1);
		setenv("NOTIFY_SOCKET", d->notify, 1);
		unsetenv("LISTEN_FDNAMES");
		unsetenv("LORASTORE_SOCKET");
		execl(ls_daemon_binary(), ls_daemon_binary(), "--state-dir", d->state, (char *)NULL);
		_exit(127);
	}
	close(lfd);
	cr_assert(ls_daemon_wait_notify(d, "READY=1", 10000),
		  "lorastored did not report READY=1 on an inherited socket (log %s)", d->log);

	lorastore *conn = connect_to(d);
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(conn, &st), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(st.clients, 1);
	lorastore_close(conn);
	char *log = slurp(d->log, NULL);
	cr_assert_not_null(strstr(log, "serving the socket systemd passed"), "log:\n%s", log);
	free(log);
	cr_assert_eq(ls_daemon_stop(d), 0);
}

/* ---- 5. the config file */

static uint64_t host_budget(struct ls_daemon_proc *d)
{
	lorastore *conn = connect_to(d);
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(conn, &st), 0, "%s", lorastore_errmsg(conn));
	lorastore_close(conn);
	cr_assert_eq(st.tier_count, 1);
	cr_assert_str_eq(st.tiers[0].name, "host");
	return st.tiers[0].budget;
}

Test(daemon_ops, config_file_sets_options_and_command_line_wins, .timeout = 60)
{
	char conf[PATH_MAX];
	snprintf(conf, sizeof(conf), "%s/lorastored.conf", work_dir);
	cr_assert_eq(synth_write_text(conf, "# lorastored test configuration\n"
					    "host-budget = 1MiB\n"
					    "log-level = debug\n"),
		     0);

	struct ls_daemon_proc *d = daemon_start(0, (const char *const[]){"--config", conf, NULL});
	cr_assert_eq(host_budget(d), 1024 * 1024, "the file's host-budget is not used");
	cr_assert_eq(ls_daemon_stop(d), 0);
	char *log = slurp(d->log, NULL);
	cr_assert_not_null(strstr(log, "lorastored: debug:"), "log-level = debug had no effect:\n%s",
			   log);
	free(log);

	d = daemon_start(1, (const char *const[]){"--config", conf, "--host-budget", "2MiB", NULL});
	cr_assert_eq(host_budget(d), 2 * 1024 * 1024, "--host-budget does not win over the file");
	cr_assert_eq(ls_daemon_stop(d), 0);

	char bad[PATH_MAX], state[PATH_MAX], sock[PATH_MAX];
	snprintf(bad, sizeof(bad), "%s/bad.conf", work_dir);
	snprintf(state, sizeof(state), "%s/bad-state", work_dir);
	snprintf(sock, sizeof(sock), "%s/bad.sock", work_dir);
	cr_assert_eq(synth_write_text(bad, "# a typo on line 3\n"
					   "host-budget = 1MiB\n"
					   "host-budgte = 2MiB\n"),
		     0);
	struct ls_proc_result p;
	run_argv((const char *const[]){ls_daemon_binary(), "--config", bad, "--state-dir", state,
				       "--socket", sock, NULL},
		 NULL, &p);
	cr_assert_eq(p.status, 2, "a bad key exited %d: %s", p.status, p.err);
	char where[PATH_MAX + 8];
	snprintf(where, sizeof(where), "%s:3", bad);
	cr_assert_not_null(strstr(p.err, where), "the message does not name %s: %s", where, p.err);
	cr_assert_not_null(strstr(p.err, "host-budgte"), "the message does not name the key: %s",
			   p.err);
	ls_proc_result_free(&p);
}

static const char *engine_of(struct ls_daemon_proc *d)
{
	static lorastore_stats st;
	lorastore *conn = connect_to(d);
	cr_assert_eq(lorastore_stats_get(conn, &st), 0, "%s", lorastore_errmsg(conn));
	lorastore_close(conn);
	return st.event_loop;
}

Test(daemon_ops, event_loop_from_the_config_file_and_the_command_line_wins, .timeout = 60)
{
	/* This test chooses the engines itself, whatever its ctest run asks for. */
	unsetenv("LS_TEST_EVENT_LOOP");
	char conf[PATH_MAX];
	snprintf(conf, sizeof(conf), "%s/engine.conf", work_dir);
	cr_assert_eq(synth_write_text(conf, "event-loop = epoll\n"), 0);

	struct ls_daemon_proc *d = daemon_start(0, (const char *const[]){"--config", conf, NULL});
	cr_assert_str_eq(engine_of(d), "epoll", "the file's event-loop is not used");
	cr_assert_str_eq(d->engine, "epoll", "READY status: %s", d->status);
	cr_assert_eq(ls_daemon_stop(d), 0);

	d = daemon_start(1, (const char *const[]){"--config", conf, "--event-loop", "auto", NULL});
	cr_assert_str_neq(d->engine, "", "READY status names no engine: %s", d->status);
	cr_assert_str_eq(engine_of(d), d->engine);
	/* auto is io_uring wherever the kernel allows it (as on the test machines). */
	struct io_uring_params params = {0};
	int probe = (int)syscall(__NR_io_uring_setup, 1, &params);
	if (probe >= 0) {
		close(probe);
		cr_assert_str_eq(d->engine, "io_uring", "--event-loop auto did not win over the file");
	}
	cr_assert_eq(ls_daemon_stop(d), 0);
}

/* ---- 6. bad options */

Test(daemon_ops, bad_options_exit_with_usage_status, .timeout = 30)
{
	char state[PATH_MAX], sock[PATH_MAX];
	snprintf(state, sizeof(state), "%s/state", work_dir);
	snprintf(sock, sizeof(sock), "%s/sock", work_dir);
	struct ls_proc_result p;

	run_argv((const char *const[]){ls_daemon_binary(), "--state-dir", state, "--socket", sock,
				       "--frobnicate", NULL},
		 NULL, &p);
	cr_assert_eq(p.status, 2, "an unknown option exited %d", p.status);
	cr_assert_not_null(strstr(p.err, "--frobnicate"), "stderr: %s", p.err);
	ls_proc_result_free(&p);

	run_argv((const char *const[]){ls_daemon_binary(), "--state-dir", state, "--socket", sock,
				       "--backend", "cuda", NULL},
		 NULL, &p);
	cr_assert(p.status != 0 && p.status < 128, "--backend cuda exited %d", p.status);
	cr_assert_not_null(strstr(p.err, "cuda"), "no clear message: %s", p.err);
	ls_proc_result_free(&p);

	run_argv((const char *const[]){ls_daemon_binary(), "--state-dir", state, "--socket", sock,
				       "--event-loop", "kqueue", NULL},
		 NULL, &p);
	cr_assert_eq(p.status, 2, "--event-loop kqueue exited %d", p.status);
	cr_assert_not_null(strstr(p.err, "--event-loop") && strstr(p.err, "kqueue"),
			   "the message names neither the option nor the value: %s", p.err);
	ls_proc_result_free(&p);

	static const char *const bad_values[][2] = {
		{"--max-clients", "0"}, {"--max-clients", "many"}, {"--hello-timeout", "-5"},
		{"--socket-group", "a-group-name-far-longer-than-any-group-name-may-be-on-this-system"}};
	for (size_t i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
		run_argv((const char *const[]){ls_daemon_binary(), "--state-dir", state, "--socket",
					       sock, bad_values[i][0], bad_values[i][1], NULL},
			 NULL, &p);
		cr_assert_eq(p.status, 2, "%s %s exited %d", bad_values[i][0], bad_values[i][1],
			     p.status);
		cr_assert_not_null(strstr(p.err, bad_values[i][0]), "stderr: %s", p.err);
		ls_proc_result_free(&p);
	}

	run_argv((const char *const[]){ls_daemon_binary(), "--help", NULL}, NULL, &p);
	cr_assert_eq(p.status, 0);
	cr_assert_not_null(strstr(p.out, "Usage"), "--help printed: %s", p.out);
	ls_proc_result_free(&p);
}

/* ---- 7. the CLI with --json */

static const cJSON *ls_only(cJSON *doc, int want)
{
	const cJSON *arr = json_get(doc, "adapters");
	cr_assert(cJSON_IsArray(arr));
	cr_assert_eq(cJSON_GetArraySize(arr), want, "%s", cJSON_PrintUnformatted(doc));
	return want ? cJSON_GetArrayItem(arr, 0) : NULL;
}

Test(daemon_ops, cli_end_to_end_json_shapes, .timeout = 60)
{
	struct ls_daemon_proc *d = daemon_start(0, NULL);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/e2e-llama", work_dir);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 8, .seed = 5};
	make_adapter(dir, &o);
	struct ls_proc_result p;

	CLI(d, &p, "--json", "import", dir);
	cr_assert_eq(p.status, 0, "import: %s", p.err);
	cJSON *doc = parse_json(p.out, "import");
	const cJSON *imported = json_get(doc, "imported");
	cr_assert_eq(cJSON_GetArraySize(imported), 1, "%s", p.out);
	cr_assert_eq(cJSON_GetArraySize(json_get(doc, "failed")), 0, "%s", p.out);
	const cJSON *im = cJSON_GetArrayItem(imported, 0);
	cr_assert_str_eq(json_str(im, "name"), "e2e-llama", "the name comes from the folder");
	cr_assert_eq(json_num(im, "version"), 1);
	char digest[65];
	snprintf(digest, sizeof(digest), "%s", json_str(im, "digest"));
	cr_assert_eq(strlen(digest), 64);
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "ls");
	cr_assert_eq(p.status, 0, "ls: %s", p.err);
	doc = parse_json(p.out, "ls");
	const cJSON *e = ls_only(doc, 1);
	cr_assert_str_eq(json_str(e, "name"), "e2e-llama");
	cr_assert_eq(json_num(e, "version"), 1);
	cr_assert_str_eq(json_str(e, "digest"), digest);
	cr_assert_eq(json_num(e, "rank"), 8);
	cr_assert_gt(json_num(e, "tensor_bytes"), 0);
	cr_assert(cJSON_IsFalse(json_get(e, "resident")));
	cr_assert_str_eq(json_str(e, "tier"), "disk");
	cr_assert_eq(json_num(e, "pins"), 0);
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "show", "e2e-llama");
	cr_assert_eq(p.status, 0, "show: %s", p.err);
	doc = parse_json(p.out, "show");
	cr_assert_str_eq(json_str(doc, "name"), "e2e-llama");
	cr_assert_eq(json_num(doc, "version"), 1);
	cr_assert_str_eq(json_str(doc, "digest"), digest);
	const cJSON *tensors = json_get(doc, "tensors");
	cr_assert_eq((size_t)cJSON_GetArraySize(tensors), synth_tensor_count(&o), "%s", p.out);
	const cJSON *t;
	cJSON_ArrayForEach(t, tensors)
	{
		cr_assert_neq(json_str(t, "module")[0], '\0');
		const char *kind = json_str(t, "kind");
		cr_assert(strcmp(kind, "A") == 0 || strcmp(kind, "B") == 0, "kind %s", kind);
		cr_assert_eq(cJSON_GetArraySize(json_get(t, "shape")), 2);
		cr_assert_str_eq(json_str(t, "dtype"), "F16");
		json_num(t, "offset");
		cr_assert_gt(json_num(t, "bytes"), 0);
	}
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "load", "e2e-llama");
	cr_assert_eq(p.status, 0, "load: %s", p.err);
	doc = parse_json(p.out, "load");
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "ls");
	cr_assert_eq(p.status, 0, "ls: %s", p.err);
	doc = parse_json(p.out, "ls");
	e = ls_only(doc, 1);
	cr_assert(cJSON_IsTrue(json_get(e, "resident")), "not resident after load: %s", p.out);
	cr_assert_str_eq(json_str(e, "tier"), "host");
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "stats");
	cr_assert_eq(p.status, 0, "stats: %s", p.err);
	doc = parse_json(p.out, "stats");
	const cJSON *tiers = json_get(doc, "tiers");
	cr_assert_eq(cJSON_GetArraySize(tiers), 1, "%s", p.out);
	const cJSON *tier = cJSON_GetArrayItem(tiers, 0);
	cr_assert_str_eq(json_str(tier, "name"), "host");
	cr_assert_eq(json_num(tier, "budget"), 1024.0 * 1024 * 1024);
	cr_assert_gt(json_num(tier, "used"), 0);
	cr_assert_eq(json_num(tier, "adapters"), 1);
	cr_assert_geq(json_num(doc, "clients"), 1);
	cr_assert_eq(json_num(doc, "leases"), 0);
	cr_assert_geq(json_num(doc, "loads"), 1);
	json_num(doc, "hits");
	json_num(doc, "misses");
	cr_assert_eq(json_num(doc, "evictions"), 0);
	cr_assert_str_eq(json_str(doc, "event_loop"), d->engine,
			 "stats --json names another engine than the daemon's READY status");
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "evict", "e2e-llama");
	cr_assert_eq(p.status, 0, "evict: %s", p.err);
	ls_proc_result_free(&p);
	CLI(d, &p, "--json", "ls");
	doc = parse_json(p.out, "ls");
	cr_assert(cJSON_IsFalse(json_get(ls_only(doc, 1), "resident")), "resident after evict");
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "rm", "e2e-llama");
	cr_assert_eq(p.status, 2, "rm of every version without --all: %s", p.err);
	cr_assert(strstr(p.err, "--all"), "%s", p.err);
	ls_proc_result_free(&p);
	CLI(d, &p, "--json", "rm", "--all", "e2e-llama");
	cr_assert_eq(p.status, 0, "rm: %s", p.err);
	doc = parse_json(p.out, "rm");
	cr_assert_eq(json_num(doc, "versions"), 1);
	cr_assert_gt(json_num(doc, "blob_bytes"), 0);
	cr_assert_eq(json_num(doc, "freed_bytes"), json_num(doc, "blob_bytes"));
	cJSON_Delete(doc);
	ls_proc_result_free(&p);
	CLI(d, &p, "--json", "ls");
	doc = parse_json(p.out, "ls");
	ls_only(doc, 0);
	cJSON_Delete(doc);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "gc");
	cr_assert_eq(p.status, 0, "gc: %s", p.err);
	doc = parse_json(p.out, "gc");
	cr_assert_geq(json_num(doc, "blobs_removed"), 0);
	cr_assert_geq(json_num(doc, "bytes_removed"), 0);
	cJSON_Delete(doc);
	ls_proc_result_free(&p);
	char blobs[PATH_MAX];
	snprintf(blobs, sizeof(blobs), "%s/blobs", d->state);
	cr_assert_eq(dir_entries(blobs), 0, "rm then gc left a blob");

	CLI(d, &p, "--json", "show", "nope/missing");
	cr_assert_eq(p.status, 1, "an unknown adapter exited %d", p.status);
	cr_assert_eq(strncmp(p.err, "lorastore: show: ", 17), 0, "stderr: %s", p.err);
	cr_assert_not_null(strstr(p.err, "nope/missing"), "the message does not name it: %s",
			   p.err);
	cr_assert_eq(p.out[0], '\0', "stdout: %s", p.out);
	ls_proc_result_free(&p);

	CLI(d, &p, "--json", "frobnicate");
	cr_assert_eq(p.status, 2, "an unknown command exited %d", p.status);
	ls_proc_result_free(&p);
	CLI(d, &p, "--json", "show");
	cr_assert_eq(p.status, 2, "show without NAME exited %d", p.status);
	ls_proc_result_free(&p);
	cr_assert_eq(ls_daemon_stop(d), 0);
}

/* ---- 8. the README example */

Test(daemon_ops, the_readme_c_example_acquires_an_adapter, .timeout = 30)
{
	struct ls_daemon_proc *d = daemon_start(0, NULL);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/example", work_dir);
	make_adapter(dir, &(struct synth_opts){.family = SYNTH_LLAMA, .rank = 4, .seed = 9});
	lorastore *conn = connect_to(d);
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_import_dir(conn, dir, &(lorastore_import_opts){.name = "demo/llama"},
					  NULL),
		     0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_show(conn, "demo/llama", &l), 0, "%s", lorastore_errmsg(conn));
	lorastore_tensor t0;
	cr_assert_eq(lorastore_list_tensor(l, 0, 0, &t0), 0);
	char shape[64] = "shape [";
	for (unsigned i = 0; i < t0.ndim; i++)
		snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), "%s%llu",
			 i ? ", " : "", (unsigned long long)t0.shape[i]);
	strcat(shape, "]");
	lorastore_list_free(l);
	lorastore_close(conn);

	char env[PATH_MAX + 32];
	snprintf(env, sizeof(env), "LORASTORE_SOCKET=%s", d->socket);
	struct ls_proc_result p;
	run_argv((const char *const[]){LS_BINARY_DIR "/client/lorastore_example_acquire",
				       "demo/llama", NULL},
		 (const char *const[]){env, NULL}, &p);
	cr_assert_eq(p.status, 0, "the example exited %d: %s", p.status, p.err);
	cr_assert_not_null(strstr(p.out, shape), "no '%s' in:\n%s", shape, p.out);
	ls_proc_result_free(&p);
	cr_assert_eq(ls_daemon_stop(d), 0);
}

Test(daemon_ops, the_readme_apply_example_applies_two_adapters_to_one_batch, .timeout = 30)
{
	struct ls_daemon_proc *d = daemon_start(0, NULL);
	lorastore *conn = connect_to(d);
	const char *names[2] = {"demo/a", "demo/b"};
	for (int i = 0; i < 2; i++) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/apply%d", work_dir, i);
		make_adapter(dir, &(struct synth_opts){.family = SYNTH_LLAMA, .rank = 4 + 4 * i,
						      .seed = 30 + (uint64_t)i});
		cr_assert_eq(lorastore_import_dir(conn, dir, &(lorastore_import_opts){.name = names[i]},
						  NULL),
			     0, "%s", lorastore_errmsg(conn));
	}
	lorastore_close(conn);

	char env[PATH_MAX + 32];
	snprintf(env, sizeof(env), "LORASTORE_SOCKET=%s", d->socket);
	struct ls_proc_result p;
	run_argv((const char *const[]){LS_BINARY_DIR "/client/lorastore_example_apply", "demo/a",
				       "demo/b", "model.layers.0.self_attn.q_proj", NULL},
		 (const char *const[]){env, NULL}, &p);
	cr_assert_eq(p.status, 0, "the example exited %d: %s", p.status, p.err);
	double norm[4];
	const char *at = p.out;
	for (int t = 0; t < 4; t++) {
		at = strstr(at, "|delta y| = ");
		cr_assert_not_null(at, "token %d missing in:\n%s", t, p.out);
		at += strlen("|delta y| = ");
		norm[t] = strtod(at, NULL);
	}
	cr_assert(norm[0] > 0 && norm[1] > 0 && norm[2] > 0, "an adapter added nothing:\n%s", p.out);
	cr_assert_eq(norm[3], 0.0, "the token without adapter changed:\n%s", p.out);
	cr_assert_not_null(strstr(p.out, "token 1 (adapter demo/b)"), "%s", p.out);
	ls_proc_result_free(&p);
	cr_assert_eq(ls_daemon_stop(d), 0);
}

/* ---- 9. a program built with pkg-config against the installed library */

static const char pc_program[] =
	"/* Acquire argv[2] from the daemon at argv[1] and compare tensor argv[3] (A)\n"
	"   with argv[6] bytes at offset argv[5] of file argv[4]. */\n"
	"#include <stdio.h>\n"
	"#include <stdlib.h>\n"
	"#include <string.h>\n"
	"#include <lorastore.h>\n"
	"int main(int argc, char **argv)\n"
	"{\n"
	"	if (argc != 7)\n"
	"		return 2;\n"
	"	lorastore *conn = NULL;\n"
	"	int rc = lorastore_connect(argv[1], &conn);\n"
	"	if (rc) {\n"
	"		fprintf(stderr, \"connect: %s\\n\", lorastore_strerror(rc));\n"
	"		return 1;\n"
	"	}\n"
	"	lorastore_adapter *ad = NULL;\n"
	"	rc = lorastore_acquire(conn, argv[2], -1, &ad);\n"
	"	if (rc) {\n"
	"		fprintf(stderr, \"acquire: %s\\n\", lorastore_errmsg(conn));\n"
	"		return 1;\n"
	"	}\n"
	"	lorastore_tensor t;\n"
	"	rc = lorastore_adapter_tensor(ad, argv[3], LORASTORE_KIND_A, &t);\n"
	"	if (rc) {\n"
	"		fprintf(stderr, \"tensor: %s\\n\", lorastore_strerror(rc));\n"
	"		return 1;\n"
	"	}\n"
	"	long off = atol(argv[5]), len = atol(argv[6]);\n"
	"	unsigned char *want = malloc((size_t)len);\n"
	"	FILE *f = fopen(argv[4], \"rb\");\n"
	"	if (!want || !f || fseek(f, off, SEEK_SET) || fread(want, 1, (size_t)len, f) != (size_t)len)\n"
	"		return 1;\n"
	"	fclose(f);\n"
	"	int same = t.bytes == (unsigned long long)len && memcmp(t.data, want, (size_t)len) == 0;\n"
	"	printf(\"%s: %llu bytes, %s\\n\", t.module, (unsigned long long)t.bytes,\n"
	"	       same ? \"equal\" : \"different\");\n"
	"	free(want);\n"
	"	lorastore_adapter_release(ad);\n"
	"	lorastore_close(conn);\n"
	"	return same ? 0 : 3;\n"
	"}\n";

Test(daemon_ops, pkg_config_build_of_a_small_program_works, .timeout = 120)
{
	struct ls_proc_result p;
	run_argv((const char *const[]){"pkg-config", "--version", NULL}, NULL, &p);
	bool have_pkg_config = p.status == 0;
	ls_proc_result_free(&p);
	if (!have_pkg_config)
		cr_skip_test("pkg-config is not installed (scripts/install-deps installs it)");

	char prefix[PATH_MAX];
	snprintf(prefix, sizeof(prefix), "%s/prefix", work_dir);
	run_argv((const char *const[]){"cmake", "--install", LS_BINARY_DIR, "--prefix", prefix, NULL},
		 NULL, &p);
	cr_assert_eq(p.status, 0, "cmake --install: %s%s", p.out, p.err);
	ls_proc_result_free(&p);

	char find[PATH_MAX + 64];
	snprintf(find, sizeof(find), "find '%s' -name lorastore.pc", prefix);
	FILE *fp = popen(find, "r");
	char pc[PATH_MAX] = "";
	cr_assert(fp && fgets(pc, sizeof(pc), fp), "no lorastore.pc installed under %s", prefix);
	pclose(fp);
	pc[strcspn(pc, "\n")] = '\0';
	char pcdir[PATH_MAX], libdir[PATH_MAX];
	snprintf(pcdir, sizeof(pcdir), "%s", pc);
	*strrchr(pcdir, '/') = '\0';
	snprintf(libdir, sizeof(libdir), "%s", pcdir);
	*strrchr(libdir, '/') = '\0';

	char src[PATH_MAX], prog[PATH_MAX];
	snprintf(src, sizeof(src), "%s/prog.c", work_dir);
	snprintf(prog, sizeof(prog), "%s/prog", work_dir);
	cr_assert_eq(synth_write_text(src, pc_program), 0);
#if defined(__SANITIZE_ADDRESS__)
	/* The installed library is instrumented: so must the program be. */
	const char *san = "-fsanitize=address,undefined";
#else
	const char *san = "";
#endif
	char cmd[4 * PATH_MAX];
	snprintf(cmd, sizeof(cmd),
		 "cc -std=c17 -Wall -Werror %s '%s' -o '%s' $(pkg-config --cflags --libs lorastore)",
		 san, src, prog);
	char env_pc[PATH_MAX + 32];
	snprintf(env_pc, sizeof(env_pc), "PKG_CONFIG_PATH=%s", pcdir);
	run_argv((const char *const[]){"sh", "-c", cmd, NULL}, (const char *const[]){env_pc, NULL},
		 &p);
	cr_assert_eq(p.status, 0, "%s\n%s%s", cmd, p.out, p.err);
	ls_proc_result_free(&p);

	struct ls_daemon_proc *d = daemon_start(0, NULL);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/pc-adapter", work_dir);
	make_adapter(dir, &(struct synth_opts){.family = SYNTH_LLAMA, .seed = 11});
	lorastore *conn = connect_to(d);
	cr_assert_eq(lorastore_import_dir(conn, dir, &(lorastore_import_opts){.name = "pc/llama"},
					  NULL),
		     0, "%s", lorastore_errmsg(conn));
	lorastore_close(conn);

	/* The first lora_A tensor of the file and its byte range. */
	struct st_file f;
	st_open(&f, dir);
	char module[256] = "";
	uint64_t start = 0, len = 0;
	const cJSON *item;
	cJSON_ArrayForEach(item, f.header)
	{
		lorastore_kind kind;
		if (st_lora_name(item->string, module, sizeof(module), &kind) &&
		    kind == LORASTORE_KIND_A) {
			st_range(&f, item, &start, &len);
			break;
		}
	}
	st_close(&f);
	cr_assert_gt(len, 0);
	char file[PATH_MAX + 32], off_s[32], len_s[32], env_ld[PATH_MAX + 32];
	snprintf(file, sizeof(file), "%s/adapter_model.safetensors", dir);
	snprintf(off_s, sizeof(off_s), "%llu", (unsigned long long)start);
	snprintf(len_s, sizeof(len_s), "%llu", (unsigned long long)len);
	snprintf(env_ld, sizeof(env_ld), "LD_LIBRARY_PATH=%s", libdir);
	run_argv((const char *const[]){prog, d->socket, "pc/llama", module, file, off_s, len_s,
				       NULL},
		 (const char *const[]){env_ld, NULL}, &p);
	cr_assert_eq(p.status, 0, "the program exited %d: %s%s", p.status, p.out, p.err);
	cr_assert_not_null(strstr(p.out, "equal"), "%s", p.out);
	ls_proc_result_free(&p);
	cr_assert_eq(ls_daemon_stop(d), 0);
}
