/*
 * lorastored as a real process, driven through liblorastore by real
 * processes: the test process and children it forks, each child with its own
 * connection.  Every test starts its own daemon on a temporary socket and
 * state directory (tests/support/daemon_proc.h), and a test that ends with
 * the daemon still running stops it with SIGTERM and expects exit status 0,
 * so that a sanitizer report inside the daemon fails the test too.
 *
 * Set LS_IT_KEEP=1 to keep the temporary directories (and daemon.log) for a
 * look after a failure.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorastore.h>

#include "daemon_proc.h"
#include "frame.h"
#include "raw_conn.h"
#include "safetensors.h"
#include "synth.h"

#define MAX_CHILDREN 16

static struct ls_daemon_proc dp;
static char *work_dir;               /* synthetic adapters */
static pid_t children[MAX_CHILDREN]; /* killed at teardown when a test fails early */

static void setup(void)
{
	memset(&dp, 0, sizeof(dp));
	dp.pid = -1;
	dp.notify_fd = -1;
	for (int i = 0; i < MAX_CHILDREN; i++)
		children[i] = -1;
	work_dir = synth_mkdtemp("it");
	/* World-readable: the non-admin test reads adapters as nobody. */
	chmod(work_dir, 0755);
}

static void teardown(void)
{
	bool keep = getenv("LS_IT_KEEP") != NULL;
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] > 0) {
			kill(children[i], SIGKILL);
			waitpid(children[i], NULL, 0);
			children[i] = -1;
		}
	if (keep) {
		if (dp.pid > 0)
			ls_daemon_kill(&dp);
		fprintf(stderr, "kept %s and %s\n", dp.dir, work_dir);
	} else {
		if (dp.dir[0] || dp.pid > 0 || dp.notify_fd >= 0)
			ls_daemon_cleanup(&dp);
		synth_rm_rf(work_dir);
	}
	free(work_dir);
	work_dir = NULL;
}

TestSuite(daemon, .init = setup, .fini = teardown, .timeout = 60);

/* ---- small helpers */

static long ms_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void child_track(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] <= 0) {
			children[i] = pid;
			return;
		}
}

/* Wait for a tracked child: its exit status, or 128 + the signal that ended it. */
static int child_wait(pid_t pid)
{
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] == pid)
			children[i] = -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* FNV-1a, 64 bits: enough to tell copies of the same bytes apart from others. */
static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
	const uint8_t *p = data;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

#define FNV_OFFSET 0xcbf29ce484222325ull

/* Hash of every tensor of an acquired adapter, in table order. */
static uint64_t adapter_hash(const lorastore_adapter *ad)
{
	lorastore_adapter_info info;
	if (lorastore_adapter_info_get(ad, &info) != 0)
		return 0;
	uint64_t h = FNV_OFFSET;
	for (size_t i = 0; i < info.tensor_count; i++) {
		lorastore_tensor t;
		if (lorastore_adapter_tensor_at(ad, i, &t) != 0)
			return 0;
		h = fnv1a(h, &t.bytes, sizeof(t.bytes));
		h = fnv1a(h, t.data, (size_t)t.bytes);
	}
	return h;
}

/* ---- daemons */

static const char *daemon_log_tail(const struct ls_daemon_proc *d)
{
	static char text[4096];
	text[0] = '\0';
	FILE *f = fopen(d->log, "r");
	if (!f)
		return "(no daemon.log)";
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	long from = size > (long)sizeof(text) - 1 ? size - (long)sizeof(text) + 1 : 0;
	fseek(f, from, SEEK_SET);
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static void daemon_start(const char *const *args)
{
	int rc = ls_daemon_start(&dp, NULL, args);
	cr_assert_eq(rc, 0, "lorastored did not start (log %s)", dp.log);
}

/* Start the daemon again on its own directory (state and socket path kept). */
static void daemon_restart(const char *const *args)
{
	char dir[sizeof(dp.dir)];
	snprintf(dir, sizeof(dir), "%s", dp.dir);
	cr_assert_eq(dp.pid, -1, "restart of a running daemon");
	if (dp.notify_fd >= 0)
		close(dp.notify_fd);
	dp.notify_fd = -1;
	int rc = ls_daemon_start(&dp, dir, args);
	cr_assert_eq(rc, 0, "lorastored did not start again on %s (log %s)", dir, dp.log);
}

/* SIGTERM; the daemon must drain and exit 0 (sanitizer reports make it fail). */
static void daemon_stop_ok(void)
{
	int rc = ls_daemon_stop(&dp);
	cr_assert_eq(rc, 0, "lorastored exited with %d; log:\n%s", rc, daemon_log_tail(&dp));
}

static bool daemon_alive(void)
{
	int st;
	return dp.pid > 0 && waitpid(dp.pid, &st, WNOHANG) == 0;
}

static lorastore *connect_ok(void)
{
	lorastore *conn = NULL;
	int rc = lorastore_connect(dp.socket, &conn);
	cr_assert_eq(rc, 0, "connect %s: %s (%s)", dp.socket, conn ? lorastore_errmsg(conn) : "",
		     lorastore_strerror(rc));
	return conn;
}

/* ---- adapters */

static struct synth_opts adapter_opts(uint64_t seed)
{
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 8, .seed = seed};
	return o;
}

/* Write a synthetic adapter into work_dir/sub; its path (static buffer). */
static const char *make_adapter(const char *sub, const struct synth_opts *o)
{
	static char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/%s", work_dir, sub);
	cr_assert_eq(mkdir(dir, 0755), 0, "mkdir %s: %s", dir, strerror(errno));
	cr_assert_eq(synth_adapter_dir(dir, o), 0, "synthetic adapter in %s", dir);
	return dir;
}

/* Write the adapter of seed under work_dir/<seed> and import it as name. */
static void import_seed(lorastore *conn, const char *name, uint64_t seed)
{
	char sub[32];
	snprintf(sub, sizeof(sub), "s%" PRIu64, seed);
	struct synth_opts o = adapter_opts(seed);
	const char *dir = make_adapter(sub, &o);
	lorastore_import_opts io = {.name = name};
	int rc = lorastore_import_dir(conn, dir, &io, NULL);
	cr_assert_eq(rc, 0, "import %s as %s: %s (%s)", dir, name, lorastore_errmsg(conn),
		     lorastore_strerror(rc));
}

struct entry_facts {
	int found;
	int resident;
	uint32_t pins;
	uint64_t bytes;
};

static struct entry_facts entry_of(lorastore *conn, const char *ref)
{
	struct entry_facts f = {0};
	lorastore_list *l = NULL;
	int rc = lorastore_show(conn, ref, &l);
	if (rc == LORASTORE_E_NOT_FOUND)
		return f;
	cr_assert_eq(rc, 0, "show %s: %s", ref, lorastore_errmsg(conn));
	cr_assert_eq(lorastore_list_count(l), 1);
	const lorastore_entry *e = lorastore_list_entry(l, 0);
	f.found = 1;
	f.resident = e->resident;
	f.pins = e->pins;
	f.bytes = e->resident_bytes;
	lorastore_list_free(l);
	return f;
}

static lorastore_stats stats_of(lorastore *conn)
{
	lorastore_stats s;
	memset(&s, 0, sizeof(s));
	int rc = lorastore_stats_get(conn, &s);
	cr_assert_eq(rc, 0, "stats: %s", lorastore_errmsg(conn));
	cr_assert_geq(s.tier_count, 1);
	return s;
}

static lorastore_adapter *acquire_ok(lorastore *conn, const char *ref)
{
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn, ref, -1, &ad);
	cr_assert_eq(rc, 0, "acquire %s: %s (%s)", ref, lorastore_errmsg(conn),
		     lorastore_strerror(rc));
	return ad;
}

/* The size as a decimal byte count for a --host-budget style option. */
static const char *size_arg(uint64_t bytes)
{
	static char buf[4][32];
	static int i;
	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%" PRIu64, bytes);
	return buf[i];
}

/* ---- 1. lifecycle */

Test(daemon, ready_arrives_on_notify_socket_and_sigterm_exits_zero_after_stopping)
{
	/* ls_daemon_start returns only once READY=1 came on the NOTIFY_SOCKET. */
	daemon_start(NULL);
	/* An idle client must not hold up the drain. */
	lorastore *conn = connect_ok();
	cr_assert_eq(kill(dp.pid, SIGTERM), 0);
	cr_assert(ls_daemon_wait_notify(&dp, "STOPPING=1", 5000),
		  "no STOPPING=1 after SIGTERM; log:\n%s", daemon_log_tail(&dp));
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int rc = ls_daemon_stop(&dp);
	cr_assert_eq(rc, 0, "lorastored exited with %d; log:\n%s", rc, daemon_log_tail(&dp));
	cr_expect_lt(ms_since(&t0), 5000, "drain took %ld ms", ms_since(&t0));
	lorastore_close(conn);
}

/* ---- 2. bytes */

/*
 * The module and kind a PEFT tensor name stands for: the adapter analysis
 * strips "base_model.model." and takes the kind from the suffix.  Only the
 * suffixes a plain SYNTH_LLAMA adapter has are handled here.
 */
static bool peft_name_split(const char *name, char *module, size_t cap, lorastore_kind *kind)
{
	static const char prefix[] = "base_model.model.";
	while (strncmp(name, prefix, sizeof(prefix) - 1) == 0)
		name += sizeof(prefix) - 1;
	static const struct {
		const char *suffix;
		lorastore_kind kind;
	} kinds[] = {{".lora_A.weight", LORASTORE_KIND_A}, {".lora_B.weight", LORASTORE_KIND_B}};
	size_t len = strlen(name);
	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		size_t sl = strlen(kinds[k].suffix);
		if (len > sl && strcmp(name + len - sl, kinds[k].suffix) == 0 && len - sl < cap) {
			memcpy(module, name, len - sl);
			module[len - sl] = '\0';
			*kind = kinds[k].kind;
			return true;
		}
	}
	return false;
}

Test(daemon, import_then_acquire_reads_tensors_equal_to_the_safetensors_bytes)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	struct synth_opts o = adapter_opts(7);
	const char *dir = make_adapter("bytes", &o);
	lorastore_import_opts io = {.name = "tenant/bytes"};
	cr_assert_eq(lorastore_import_dir(conn, dir, &io, NULL), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter *ad = acquire_ok(conn, "tenant/bytes");
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);

	/* The file's own layout, read with the store's parser, the bytes with pread. */
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	struct ls_st_file st;
	struct ls_err err;
	cr_assert_eq(ls_st_read_fd(fd, path, &st, &err), 0, "%s", err.msg);
	cr_assert_gt(st.n_tensors, 0);
	cr_assert_eq(info.tensor_count, st.n_tensors, "adapter has %zu tensors, the file %zu",
		     info.tensor_count, st.n_tensors);
	for (size_t i = 0; i < st.n_tensors; i++) {
		const struct ls_st_tensor *ft = &st.tensors[i];
		char module[512];
		lorastore_kind kind;
		cr_assert(peft_name_split(ft->name, module, sizeof(module), &kind),
			  "tensor name %s is not a LoRA A/B name", ft->name);
		lorastore_tensor t;
		int rc = lorastore_adapter_tensor(ad, module, kind, &t);
		cr_assert_eq(rc, 0, "no tensor %s kind %d for %s", module, (int)kind, ft->name);
		uint64_t len = ft->end - ft->begin;
		cr_assert_eq(t.bytes, len,
			     "%s: %" PRIu64 " bytes resident, %" PRIu64 " in the file", ft->name,
			     t.bytes, len);
		cr_assert_eq(t.ndim, ft->ndim, "%s: rank of the shape", ft->name);
		for (unsigned d = 0; d < ft->ndim; d++)
			cr_assert_eq(t.shape[d], ft->shape[d], "%s: dim %u", ft->name, d);
		uint8_t *want = malloc(len ? len : 1);
		cr_assert_not_null(want);
		ssize_t n = pread(fd, want, len, (off_t)(st.data_offset + ft->begin));
		cr_assert_eq(n, (ssize_t)len, "short read of %s", ft->name);
		cr_assert_not_null(t.data);
		cr_assert_eq(memcmp(t.data, want, len), 0, "%s differs from the file's bytes",
			     ft->name);
		free(want);
	}
	ls_st_file_free(&st);
	close(fd);
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- 3. shared load, shared memory */

struct child_report {
	int rc;             /* 0, or the step that failed (> 0) */
	int err;            /* library error of that step */
	uint64_t hash;
	unsigned dev_major, dev_minor;
	unsigned long inode;
	char perms[8];
	char path[64];
};

/* Find the mapping holding addr in /proc/self/maps. */
static int mapping_of(const void *addr, struct child_report *r)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return -1;
	char line[1024];
	int found = -1;
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi, off, inode;
		unsigned maj, min;
		char perms[8];
		int pos = 0;
		if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu %n", &lo, &hi, perms, &off, &maj, &min,
			   &inode, &pos) < 7)
			continue;
		if (a < lo || a >= hi)
			continue;
		r->dev_major = maj;
		r->dev_minor = min;
		r->inode = inode;
		snprintf(r->perms, sizeof(r->perms), "%s", perms);
		line[strcspn(line, "\n")] = '\0';
		snprintf(r->path, sizeof(r->path), "%s", pos > 0 ? line + pos : "");
		found = 0;
		break;
	}
	fclose(f);
	return found;
}

static void child_acquire_and_report(const char *socket, const char *ref, int ready_w, int go_r,
				     int result_w)
{
	struct child_report r;
	memset(&r, 0, sizeof(r));
	lorastore *conn = NULL;
	lorastore_adapter *ad = NULL;
	int rc = lorastore_connect(socket, &conn);
	if (rc) {
		r.rc = 1;
		r.err = rc;
		goto out;
	}
	char c = 'r';
	if (write(ready_w, &c, 1) != 1) {
		r.rc = 2;
		goto out;
	}
	/* The barrier: the parent closes the go pipe when all are connected. */
	while (read(go_r, &c, 1) < 0 && errno == EINTR)
		;
	rc = lorastore_acquire(conn, ref, -1, &ad);
	if (rc) {
		r.rc = 3;
		r.err = rc;
		goto out;
	}
	r.hash = adapter_hash(ad);
	lorastore_tensor t;
	if (lorastore_adapter_tensor_at(ad, 0, &t) != 0 || mapping_of(t.data, &r) != 0) {
		r.rc = 4;
		goto out;
	}
out:
	if (write(result_w, &r, sizeof(r)) != (ssize_t)sizeof(r))
		_exit(9);
	if (ad)
		lorastore_adapter_release(ad);
	lorastore_close(conn);
	_exit(0);
}

#define N_CLIENTS 8

Test(daemon, show_gives_the_peft_config_of_the_imported_file)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	struct synth_opts o = adapter_opts(8);
	o.rank = 8;
	o.alpha = 24;
	o.rslora = true;
	o.rank_pattern = "{\"q_proj\": 4}";
	o.alpha_pattern = "{\"v_proj\": 12.5}";
	const char *dir = make_adapter("config", &o);
	lorastore_import_opts io = {.name = "tenant/config"};
	cr_assert_eq(lorastore_import_dir(conn, dir, &io, NULL), 0, "%s", lorastore_errmsg(conn));
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_show(conn, "tenant/config", &l), 0, "%s", lorastore_errmsg(conn));
	lorastore_peft_config c;
	cr_assert_eq(lorastore_list_peft_config(l, 0, &c), 0);
	cr_assert_eq(c.r, 8);
	cr_assert_float_eq(c.lora_alpha, 24.0, 1e-12);
	cr_assert(c.use_rslora && !c.use_dora);
	cr_assert_str_eq(c.bias, "none");
	cr_assert_null(c.target_regex);
	cr_assert_gt(c.n_target_modules, 0);
	bool q = false;
	for (size_t i = 0; i < c.n_target_modules; i++)
		q |= strcmp(c.target_modules[i], "q_proj") == 0;
	cr_assert(q, "q_proj is not among the target modules");
	const char *key;
	double value;
	cr_assert_eq(c.n_rank_pattern, 1);
	cr_assert_eq(lorastore_list_peft_pattern(l, 0, 0, 0, &key, &value), 0);
	cr_assert_str_eq(key, "q_proj");
	cr_assert_float_eq(value, 4.0, 1e-12);
	cr_assert_eq(c.n_alpha_pattern, 1);
	cr_assert_eq(lorastore_list_peft_pattern(l, 0, 1, 0, &key, &value), 0);
	cr_assert_str_eq(key, "v_proj");
	cr_assert_float_eq(value, 12.5, 1e-12);
	cr_assert_eq(lorastore_list_peft_pattern(l, 0, 1, 1, &key, &value), -EINVAL);
	cr_assert_eq(lorastore_list_peft_config(l, 1, &c), -EINVAL);
	lorastore_list_free(l);
	lorastore_close(conn);
	daemon_stop_ok();
}

Test(daemon, eight_clients_acquire_the_same_adapter_at_once_read_identical_bytes_and_memory_exists_once)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "shared/one", 3);
	struct entry_facts e = entry_of(conn, "shared/one");
	cr_assert(e.found && !e.resident, "the adapter must not be resident before the test");

	int ready[2], go[2], result[2];
	cr_assert_eq(pipe(ready), 0);
	cr_assert_eq(pipe(go), 0);
	cr_assert_eq(pipe(result), 0);
	pid_t pids[N_CLIENTS];
	for (int i = 0; i < N_CLIENTS; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0) {
			close(ready[0]);
			close(go[1]);
			close(result[0]);
			child_acquire_and_report(dp.socket, "shared/one", ready[1], go[0],
						 result[1]);
		}
		child_track(pids[i]);
	}
	close(ready[1]);
	close(go[0]);
	close(result[1]);
	for (int i = 0; i < N_CLIENTS; i++) {
		char c;
		cr_assert_eq(read(ready[0], &c, 1), 1, "client %d did not connect", i);
	}
	close(go[1]); /* all acquire now */

	struct child_report r[N_CLIENTS];
	for (int i = 0; i < N_CLIENTS; i++) {
		size_t got = 0;
		while (got < sizeof(r[i])) {
			ssize_t n = read(result[0], (char *)&r[i] + got, sizeof(r[i]) - got);
			if (n < 0 && errno == EINTR)
				continue;
			cr_assert_gt(n, 0, "client report %d missing", i);
			got += (size_t)n;
		}
	}
	close(ready[0]);
	close(result[0]);
	for (int i = 0; i < N_CLIENTS; i++)
		cr_assert_eq(child_wait(pids[i]), 0, "client %d", i);

	for (int i = 0; i < N_CLIENTS; i++) {
		cr_assert_eq(r[i].rc, 0, "client %d failed at step %d: %s", i, r[i].rc,
			     lorastore_strerror(r[i].err));
		cr_assert_neq(r[i].hash, 0);
		cr_assert(strstr(r[i].path, "memfd:lorastore-slab"),
			  "client %d maps the tensor from '%s'", i, r[i].path);
		cr_assert_eq(r[i].perms[1], '-', "client %d maps it writable (%s)", i, r[i].perms);
		cr_assert_eq(r[i].perms[3], 's', "client %d maps it private (%s)", i, r[i].perms);
		cr_assert_eq(r[i].hash, r[0].hash, "client %d read other bytes", i);
		cr_assert(r[i].dev_major == r[0].dev_major && r[i].dev_minor == r[0].dev_minor &&
				  r[i].inode == r[0].inode,
			  "client %d maps %x:%x inode %lu, client 0 %x:%x inode %lu", i,
			  r[i].dev_major, r[i].dev_minor, r[i].inode, r[0].dev_major,
			  r[0].dev_minor, r[0].inode);
	}

	e = entry_of(conn, "shared/one");
	lorastore_stats s = stats_of(conn);
	cr_assert_eq(s.tiers[0].used, e.bytes, "tier holds %" PRIu64 " bytes, one copy is %" PRIu64,
		     s.tiers[0].used, e.bytes);
	cr_assert_eq(s.tiers[0].adapters, 1);
	cr_assert_eq(s.loads, 1, "%" PRIu64 " loads for one adapter", s.loads);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- 4. crashes release leases */

Test(daemon, client_killed_with_sigkill_while_holding_leases_leaves_no_lease_and_adapter_becomes_evictable)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "crash/a", 11);
	import_seed(conn, "crash/b", 12);

	int held[2];
	cr_assert_eq(pipe(held), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(held[0]);
		lorastore *c = NULL;
		lorastore_adapter *a = NULL, *b = NULL;
		if (lorastore_connect(dp.socket, &c) || lorastore_acquire(c, "crash/a", -1, &a) ||
		    lorastore_acquire(c, "crash/b", -1, &b))
			_exit(1);
		char x = 'h';
		if (write(held[1], &x, 1) != 1)
			_exit(2);
		for (;;)
			pause();
	}
	child_track(pid);
	close(held[1]);
	char x;
	cr_assert_eq(read(held[0], &x, 1), 1, "the child did not acquire");
	close(held[0]);
	lorastore_stats s = stats_of(conn);
	cr_assert_eq(s.leases, 2);
	cr_assert_eq(lorastore_evict(conn, "crash/a"), -EBUSY, "evict of a leased adapter");

	cr_assert_eq(kill(pid, SIGKILL), 0);
	cr_assert_eq(child_wait(pid), 128 + SIGKILL);
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		s = stats_of(conn);
		if (s.leases == 0)
			break;
		cr_assert_lt(ms_since(&t0), 5000, "%" PRIu64 " leases left 5 s after the kill",
			     s.leases);
		sleep_ms(10);
	}
	cr_assert_eq(entry_of(conn, "crash/a").pins, 0);
	int rc = lorastore_evict(conn, "crash/a");
	cr_assert_eq(rc, 0, "evict: %s (%s)", lorastore_errmsg(conn), lorastore_strerror(rc));
	rc = lorastore_evict(conn, "crash/b");
	cr_assert_eq(rc, 0, "evict: %s (%s)", lorastore_errmsg(conn), lorastore_strerror(rc));
	cr_assert_not(entry_of(conn, "crash/a").resident);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- 5. LRU */

/*
 * Import names[0..n) (seeds 100 + i) into a daemon without limits and return
 * the resident size of one (all have the same shapes, so the same size), then
 * stop that daemon: the caller restarts it with limits computed from the size.
 */
static uint64_t import_and_measure(const char *const *names, size_t n)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	uint64_t size = 0;
	for (size_t i = 0; i < n; i++) {
		import_seed(conn, names[i], 100 + i);
		struct entry_facts e = entry_of(conn, names[i]);
		cr_assert(e.found);
		cr_assert_gt(e.bytes, 0);
		if (i == 0)
			size = e.bytes;
		cr_assert_eq(e.bytes, size, "%s has %" PRIu64 " resident bytes, %s %" PRIu64,
			     names[i], e.bytes, names[0], size);
	}
	lorastore_close(conn);
	daemon_stop_ok();
	return size;
}

Test(daemon, lru_evicts_the_least_recently_used_unpinned_adapter_under_a_small_budget)
{
	const char *names[] = {"lru/a", "lru/b", "lru/c", "lru/d"};
	uint64_t size = import_and_measure(names, 4);
	const char *args[] = {"--host-budget", size_arg(3 * size), NULL};
	daemon_restart(args);
	lorastore *conn = connect_ok();
	for (int i = 0; i < 3; i++) {
		int rc = lorastore_load(conn, names[i]);
		cr_assert_eq(rc, 0, "load %s: %s", names[i], lorastore_errmsg(conn));
	}
	lorastore_stats s = stats_of(conn);
	cr_assert_eq(s.tiers[0].budget, 3 * size);
	cr_assert_eq(s.tiers[0].used, 3 * size);
	cr_assert_eq(s.evictions, 0);
	/* Touch A: B becomes the least recently used. */
	lorastore_adapter *a = acquire_ok(conn, "lru/a");
	cr_assert_eq(lorastore_adapter_release(a), 0);
	int rc = lorastore_load(conn, "lru/d");
	cr_assert_eq(rc, 0, "load lru/d: %s", lorastore_errmsg(conn));

	cr_assert(entry_of(conn, "lru/a").resident, "A was used last but one and must stay");
	cr_assert_not(entry_of(conn, "lru/b").resident, "B was least recently used");
	cr_assert(entry_of(conn, "lru/c").resident);
	cr_assert(entry_of(conn, "lru/d").resident);
	s = stats_of(conn);
	cr_assert_eq(s.evictions, 1);
	cr_assert_eq(s.tiers[0].adapters, 3);
	cr_assert_eq(s.tiers[0].used, 3 * size);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- 6. deferred delete */

Test(daemon, deleting_a_leased_adapter_defers_until_release)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "del/x", 21);
	lorastore_adapter *ad = acquire_ok(conn, "del/x");
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
	/* A copy of every tensor, to compare after the delete. */
	size_t total = 0;
	for (size_t i = 0; i < info.tensor_count; i++) {
		lorastore_tensor t;
		cr_assert_eq(lorastore_adapter_tensor_at(ad, i, &t), 0);
		total += (size_t)t.bytes;
	}
	uint8_t *copy = malloc(total ? total : 1);
	cr_assert_not_null(copy);
	size_t off = 0;
	for (size_t i = 0; i < info.tensor_count; i++) {
		lorastore_tensor t;
		lorastore_adapter_tensor_at(ad, i, &t);
		memcpy(copy + off, t.data, (size_t)t.bytes);
		off += (size_t)t.bytes;
	}

	int rc = lorastore_delete(conn, "del/x");
	cr_assert_eq(rc, 0, "delete: %s (%s)", lorastore_errmsg(conn), lorastore_strerror(rc));
	off = 0;
	for (size_t i = 0; i < info.tensor_count; i++) {
		lorastore_tensor t;
		cr_assert_eq(lorastore_adapter_tensor_at(ad, i, &t), 0);
		cr_assert_eq(memcmp(copy + off, t.data, (size_t)t.bytes), 0,
			     "tensor %zu changed after the delete", i);
		off += (size_t)t.bytes;
	}
	free(copy);
	lorastore_adapter *again = NULL;
	rc = lorastore_acquire(conn, "del/x", -1, &again);
	cr_assert_eq(rc, LORASTORE_E_NOT_FOUND, "acquire after delete gave %d (%s)", rc,
		     lorastore_strerror(rc));
	lorastore_stats s = stats_of(conn);
	cr_assert_eq(s.tiers[0].adapters, 1, "the leased adapter must stay resident");

	cr_assert_eq(lorastore_adapter_release(ad), 0);
	s = stats_of(conn);
	cr_assert_eq(s.tiers[0].adapters, 0, "%u adapters resident after the last release",
		     s.tiers[0].adapters);
	cr_assert_eq(s.tiers[0].used, 0);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- 7. per-client pin limit */

Test(daemon, pinned_bytes_limit_refuses_a_lease_past_the_per_client_limit)
{
	const char *names[] = {"pin/a", "pin/b"};
	uint64_t size = import_and_measure(names, 2);
	const char *args[] = {"--client-pin-limit", size_arg(size), NULL};
	daemon_restart(args);
	lorastore *conn = connect_ok();
	lorastore_adapter *a = acquire_ok(conn, "pin/a");
	lorastore_adapter *b = NULL;
	int rc = lorastore_acquire(conn, "pin/b", -1, &b);
	cr_assert_eq(rc, LORASTORE_E_PIN_LIMIT, "second lease gave %d (%s)", rc,
		     lorastore_strerror(rc));
	cr_assert_null(b);
	cr_assert_eq(stats_of(conn).leases, 1);
	/* Another connection has a limit of its own. */
	lorastore *other = connect_ok();
	lorastore_adapter *ob = acquire_ok(other, "pin/b");
	cr_assert_eq(lorastore_adapter_release(ob), 0);
	lorastore_close(other);

	cr_assert_eq(lorastore_adapter_release(a), 0);
	rc = lorastore_acquire(conn, "pin/b", -1, &b);
	cr_assert_eq(rc, 0, "after the release: %s (%s)", lorastore_errmsg(conn),
		     lorastore_strerror(rc));
	cr_assert_eq(lorastore_adapter_release(b), 0);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- 8. admin operations */

enum {
	NOBODY_OK = 0,
	NOBODY_SETUID = 10,
	NOBODY_CANNOT_READ,
	NOBODY_CONNECT,
	NOBODY_IMPORT_RC,
	NOBODY_IMPORT_MSG,
	NOBODY_DELETE,
	NOBODY_EVICT,
	NOBODY_GC,
	NOBODY_ACQUIRE,
	NOBODY_READ,
};

static int nobody_child(const char *socket, const char *adapter_dir)
{
	gid_t nobody = 65534;
	if (setgroups(0, NULL) != 0 || setgid(nobody) != 0 || setuid(nobody) != 0 ||
	    geteuid() != 65534)
		return NOBODY_SETUID;
	/* The files must be readable to this process, so a refusal is the daemon's. */
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", adapter_dir);
	if (access(path, R_OK) != 0)
		return NOBODY_CANNOT_READ;
	snprintf(path, sizeof(path), "%s/adapter_config.json", adapter_dir);
	if (access(path, R_OK) != 0)
		return NOBODY_CANNOT_READ;
	lorastore *c = NULL;
	if (lorastore_connect(socket, &c) != 0)
		return NOBODY_CONNECT;
	lorastore_import_opts io = {.name = "nobody/new"};
	int rc = lorastore_import_dir(c, adapter_dir, &io, NULL);
	if (rc != -EPERM) {
		fprintf(stderr, "import as nobody: %d %s\n", rc, lorastore_errmsg(c));
		return NOBODY_IMPORT_RC;
	}
	/* The daemon's words, not an open(2) failure in the library. */
	if (!strstr(lorastore_errmsg(c), "admin")) {
		fprintf(stderr, "import as nobody: %s\n", lorastore_errmsg(c));
		return NOBODY_IMPORT_MSG;
	}
	if (lorastore_delete(c, "adm/a") != -EPERM)
		return NOBODY_DELETE;
	if (lorastore_evict(c, "adm/a") != -EPERM)
		return NOBODY_EVICT;
	uint64_t blobs = 0, bytes = 0;
	if (lorastore_gc(c, &blobs, &bytes) != -EPERM)
		return NOBODY_GC;
	if (lorastore_rebuild(c, NULL, NULL) != -EPERM)
		return NOBODY_GC;
	lorastore_adapter *ad = NULL;
	if (lorastore_acquire(c, "adm/a", -1, &ad) != 0) {
		fprintf(stderr, "acquire as nobody: %s\n", lorastore_errmsg(c));
		return NOBODY_ACQUIRE;
	}
	lorastore_tensor t;
	if (lorastore_adapter_tensor_at(ad, 0, &t) != 0 || t.bytes == 0 ||
	    fnv1a(FNV_OFFSET, t.data, (size_t)t.bytes) == 0)
		return NOBODY_READ;
	lorastore_adapter_release(ad);
	lorastore_close(c);
	return NOBODY_OK;
}

Test(daemon, non_admin_peer_cannot_import_or_delete_but_can_acquire)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run a client as nobody");
	daemon_start(NULL);
	/* Let nobody reach the socket: the directory and the socket itself. */
	cr_assert_eq(chmod(dp.dir, 0755), 0);
	cr_assert_eq(chmod(dp.socket, 0666), 0);
	lorastore *conn = connect_ok();
	import_seed(conn, "adm/a", 31);
	lorastore_adapter *held = acquire_ok(conn, "adm/a"); /* keeps it resident for evict */
	struct synth_opts o = adapter_opts(32);
	const char *dir = make_adapter("for-nobody", &o);

	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(nobody_child(dp.socket, dir));
	child_track(pid);
	int rc = child_wait(pid);
	cr_assert_eq(rc, NOBODY_OK, "the nobody client failed with %d (see the enum in the test)",
		     rc);
	/* Refused requests changed nothing. */
	lorastore_stats s = stats_of(conn);
	cr_assert_eq(s.catalog_versions, 1);
	cr_assert(entry_of(conn, "adm/a").found);
	cr_assert_not(entry_of(conn, "nobody/new").found);
	cr_assert_eq(lorastore_adapter_release(held), 0);
	lorastore_close(conn);
	daemon_stop_ok();
}

/*
 * A client whose supplementary groups (not its passwd entry: nobody is in no
 * group) hold the admin group may import: the daemon reads the peer's own
 * groups.  Exits 0 when the import was allowed, else a code.
 */
static int supplementary_admin_child(const char *socket, const char *adapter_dir, gid_t admin)
{
	gid_t nobody = 65534;
	if (setgroups(1, &admin) != 0 || setgid(nobody) != 0 || setuid(nobody) != 0)
		return 2;
	lorastore *c = NULL;
	if (lorastore_connect(socket, &c) != 0)
		return 3;
	lorastore_import_opts io = {.name = "supp/admin"};
	int rc = lorastore_import_dir(c, adapter_dir, &io, NULL);
	if (rc != 0)
		fprintf(stderr, "import with the admin group as a supplementary group: %s\n",
			lorastore_errmsg(c));
	lorastore_close(c);
	return rc == 0 ? 0 : 4;
}

Test(daemon, a_peer_with_the_admin_group_among_its_supplementary_groups_is_admin)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run a client as nobody with chosen groups");
	struct group *g = getgrnam("adm");
	if (!g)
		cr_skip_test("this system has no group 'adm' to stand for the admin group");
	gid_t admin = g->gr_gid;
	daemon_start((const char *const[]){"--admin-group", "adm", NULL});
	cr_assert_eq(chmod(dp.dir, 0755), 0);
	cr_assert_eq(chmod(dp.socket, 0666), 0);
	struct synth_opts o = adapter_opts(33);
	const char *dir = make_adapter("for-supp", &o);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(supplementary_admin_child(dp.socket, dir, admin));
	child_track(pid);
	int rc = child_wait(pid);
	cr_assert_eq(rc, 0, "the client with the admin group failed with %d", rc);
	lorastore *conn = connect_ok();
	cr_assert(entry_of(conn, "supp/admin").found);
	lorastore_close(conn);
	daemon_stop_ok();
}

Test(daemon, the_socket_it_creates_belongs_to_the_socket_group_with_mode_0660)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to give the socket to another group");
	struct group *g = getgrnam("users");
	if (!g)
		cr_skip_test("this system has no group 'users'");
	gid_t users = g->gr_gid;
	daemon_start((const char *const[]){"--socket-group", "users", NULL});
	struct stat st;
	cr_assert_eq(stat(dp.socket, &st), 0);
	cr_assert_eq(st.st_gid, users, "socket group %u, want %u", (unsigned)st.st_gid,
		     (unsigned)users);
	cr_assert_eq(st.st_mode & 0777, 0660, "mode %o", st.st_mode & 0777);
	daemon_stop_ok();
}

/* ---- 9. read-only mappings */

/*
 * SIGSEGV back to its default action with the raw system call: sanitizer
 * runtimes intercept signal() and sigaction() and may keep their own handler.
 * Only the handler field is set; the kernel's struct starts with it.
 */
static void segv_default(void)
{
	struct {
		void (*handler)(int);
		unsigned long flags;
		void (*restorer)(void);
		uint64_t mask;
	} ka;
	memset(&ka, 0, sizeof(ka));
	ka.handler = SIG_DFL;
	syscall(SYS_rt_sigaction, SIGSEGV, &ka, NULL, sizeof(ka.mask));
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGSEGV);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
}

Test(daemon, writing_through_a_client_mapping_faults)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "ro/a", 41);
	lorastore_adapter *ad = acquire_ok(conn, "ro/a");
	uint64_t before = adapter_hash(ad);

	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct rlimit no_core = {0, 0};
		setrlimit(RLIMIT_CORE, &no_core);
		segv_default();
		lorastore *c = NULL;
		lorastore_adapter *a = NULL;
		lorastore_tensor t;
		if (lorastore_connect(dp.socket, &c) || lorastore_acquire(c, "ro/a", -1, &a) ||
		    lorastore_adapter_tensor_at(a, 0, &t))
			_exit(1);
		volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)t.data;
		uint8_t v = p[0]; /* reading is fine */
		p[0] = (uint8_t)~v; /* writing must fault */
		_exit(2);
	}
	child_track(pid);
	int rc = child_wait(pid);
	cr_assert_eq(rc, 128 + SIGSEGV, "the writer ended with %d, not SIGSEGV", rc);
	cr_assert_eq(adapter_hash(ad), before, "the adapter changed under its readers");
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- 10. restart */

Test(daemon, catalog_survives_a_restart)
{
	const char *names[] = {"keep/a", "keep/b", "keep/c"};
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	char digests[3][65];
	uint64_t hashes[3];
	for (int i = 0; i < 3; i++) {
		import_seed(conn, names[i], 51 + (uint64_t)i);
		lorastore_list *l = NULL;
		cr_assert_eq(lorastore_show(conn, names[i], &l), 0);
		snprintf(digests[i], sizeof(digests[i]), "%s", lorastore_list_entry(l, 0)->digest);
		lorastore_list_free(l);
		lorastore_adapter *ad = acquire_ok(conn, names[i]);
		hashes[i] = adapter_hash(ad);
		lorastore_adapter_release(ad);
	}
	lorastore_close(conn);
	daemon_stop_ok();

	daemon_restart(NULL);
	conn = connect_ok();
	lorastore_list *l = NULL;
	int rc = lorastore_list_page(conn, "keep/", NULL, 0, &l);
	cr_assert_eq(rc, 0, "list: %s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_list_count(l), 3);
	for (int i = 0; i < 3; i++) {
		bool seen = false;
		for (size_t j = 0; j < lorastore_list_count(l); j++) {
			const lorastore_entry *e = lorastore_list_entry(l, j);
			if (strcmp(e->name, names[i]) != 0)
				continue;
			seen = true;
			cr_assert_eq(e->version, 1);
			cr_assert_str_eq(e->digest, digests[i]);
			cr_assert_not(e->resident, "nothing is resident after a restart");
		}
		cr_assert(seen, "%s is missing after the restart", names[i]);
	}
	lorastore_list_free(l);
	for (int i = 0; i < 3; i++) {
		lorastore_adapter *ad = acquire_ok(conn, names[i]);
		cr_assert_eq(adapter_hash(ad), hashes[i], "%s reads other bytes after the restart",
			     names[i]);
		lorastore_adapter_release(ad);
	}
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- 11. malformed input */

static int raw_connect(const char *path)
{
	int fd = raw_conn_open(path);
	cr_assert_geq(fd, 0, "connect %s: %s", path, strerror(-fd));
	return fd;
}

/* Whether the peer closes fd within timeout_ms (any bytes before the end are read). */
static bool closed_by_peer(int fd, int timeout_ms, int *last_errno)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	*last_errno = 0;
	for (;;) {
		long left = timeout_ms - ms_since(&t0);
		if (left <= 0)
			return false;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		char buf[4096];
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n == 0)
			return true;
		if (n < 0 && errno != EINTR) {
			*last_errno = errno;
			return false;
		}
	}
}

static void send_all(int fd, const void *buf, size_t len)
{
	int rc = raw_conn_send_bytes(fd, buf, len);
	cr_assert_eq(rc, 0, "send: %s", strerror(-rc));
}

Test(daemon, a_malformed_frame_closes_that_connection_only)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "frame/a", 61);

	/* A frame of plausible length whose payload is no protobuf message. */
	int junk = raw_connect(dp.socket);
	uint8_t garbage[4 + 16];
	uint32_t len = 16;
	garbage[0] = (uint8_t)len;
	garbage[1] = garbage[2] = garbage[3] = 0;
	memset(garbage + 4, 0xff, 16);
	send_all(junk, garbage, sizeof(garbage));
	int e = 0;
	cr_assert(closed_by_peer(junk, 5000, &e), "garbage frame: connection not closed (%s)",
		  e ? strerror(e) : "timeout");
	close(junk);

	/* A length prefix far past the frame cap. */
	int big = raw_connect(dp.socket);
	uint8_t prefix[4 + 8] = {0xf0, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8};
	send_all(big, prefix, sizeof(prefix));
	cr_assert(closed_by_peer(big, 5000, &e), "oversized prefix: connection not closed (%s)",
		  e ? strerror(e) : "timeout");
	close(big);

	cr_assert(daemon_alive(), "lorastored died; log:\n%s", daemon_log_tail(&dp));
	lorastore_adapter *ad = acquire_ok(conn, "frame/a");
	cr_assert_neq(adapter_hash(ad), 0);
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	lorastore_stats s = stats_of(conn);
	cr_assert_eq(s.clients, 1, "%u clients: a bad connection lingers", s.clients);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* Read one response frame from a raw connection (decoded). */
static Lorastore__Response *raw_read(int fd, struct ls_framer *f)
{
	Lorastore__Response *resp = NULL;
	int rc = raw_conn_read(fd, f, 10000, &resp);
	cr_assert_eq(rc, 0, "no response: %s", strerror(-rc));
	return resp;
}

/* Send req on a raw connection and read the one response frame (decoded). */
static Lorastore__Response *raw_call(int fd, const Lorastore__Request *req, const char *patch_x)
{
	uint8_t *buf;
	size_t len;
	cr_assert_eq(ls_request_encode(req, &buf, &len), 0);
	/* The test writes a byte protobuf-c cannot encode (a NUL) over an 'X'. */
	if (patch_x) {
		uint8_t *x = memchr(buf, 'X', len);
		cr_assert_not_null(x);
		*x = (uint8_t)*patch_x;
	}
	send_all(fd, buf, len);
	free(buf);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	Lorastore__Response *resp = raw_read(fd, &f);
	ls_framer_free(&f);
	return resp;
}

Test(daemon, an_oversized_or_nul_field_in_a_valid_frame_gets_an_error_response_and_the_connection_goes_on)
{
	daemon_start(NULL);
	int fd = raw_connect(dp.socket);
	struct ls_framer hf;
	ls_framer_init(&hf, 0);
	cr_assert_eq(raw_conn_hello(fd, &hf), 0);
	ls_framer_free(&hf);
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	Lorastore__Response *resp;

	/* A name of 5,000 bytes: over the 4,096-byte cap on any string. */
	char *big = malloc(5001);
	memset(big, 'n', 5000);
	big[5000] = '\0';
	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = big;
	req.id = 2;
	req.body_case = LORASTORE__REQUEST__BODY_SHOW;
	req.show = &rr;
	resp = raw_call(fd, &req, NULL);
	free(big);
	cr_assert_eq(resp->id, 2);
	cr_assert_not_null(resp->error);
	cr_assert_eq(resp->error->code, LORASTORE_E_PROTOCOL);
	cr_assert_not_null(strstr(resp->error->message, "5000 bytes"), "%s", resp->error->message);
	lorastore__response__free_unpacked(resp, NULL);

	/* A name with a NUL byte inside: refused, never cut short and used. */
	rr.ref = "nulXname";
	req.id = 3;
	resp = raw_call(fd, &req, "");
	cr_assert_eq(resp->id, 3);
	cr_assert_not_null(resp->error);
	cr_assert_not_null(strstr(resp->error->message, "NUL"), "%s", resp->error->message);
	lorastore__response__free_unpacked(resp, NULL);

	/* The same connection still serves. */
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	req.id = 4;
	req.body_case = LORASTORE__REQUEST__BODY_STATS;
	req.stats = &empty;
	resp = raw_call(fd, &req, NULL);
	cr_assert_eq(resp->id, 4);
	cr_assert_eq(resp->body_case, LORASTORE__RESPONSE__BODY_STATS);
	lorastore__response__free_unpacked(resp, NULL);
	close(fd);
	daemon_stop_ok();
}


/*
 * Requests pipelined on one connection, an import and then a delete of the
 * same name, run in that order although two workers could take them at
 * once: the delete finds the imported version and removes it.  Before the
 * order was kept, the quick delete ran first, found nothing (or an older
 * version), and the import's version survived a delete sent after it.
 */
Test(daemon, an_import_and_a_delete_of_one_name_pipelined_run_in_the_order_sent)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	struct synth_opts o = adapter_opts(90);
	const char *dir = make_adapter("ordered", &o);
	char cfg_path[PATH_MAX], st_path[PATH_MAX];
	snprintf(cfg_path, sizeof(cfg_path), "%s/adapter_config.json", dir);
	snprintf(st_path, sizeof(st_path), "%s/adapter_model.safetensors", dir);

	int fd = raw_connect(dp.socket);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	cr_assert_eq(raw_conn_hello(fd, &f), 0);
	Lorastore__Response *resp;

	for (unsigned round = 0; round < 12; round++) {
		Lorastore__ImportRequest im = LORASTORE__IMPORT_REQUEST__INIT;
		im.name = "ordered/a";
		im.has_config = true;
		im.source = (char *)dir;
		Lorastore__Request ireq = LORASTORE__REQUEST__INIT;
		ireq.id = 100 + 2 * round;
		ireq.body_case = LORASTORE__REQUEST__BODY_IMPORT;
		ireq.import = &im;
		Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
		rr.ref = "ordered/a";
		Lorastore__Request dreq = LORASTORE__REQUEST__INIT;
		dreq.id = 101 + 2 * round;
		dreq.body_case = LORASTORE__REQUEST__BODY_DELETE;
		dreq.delete_ = &rr;
		/*
		 * The import's frame with its two descriptors, then at once the
		 * delete's: both are in the socket before the import can finish.
		 */
		int fds[2] = {open(cfg_path, O_RDONLY | O_CLOEXEC), open(st_path, O_RDONLY | O_CLOEXEC)};
		cr_assert(fds[0] >= 0 && fds[1] >= 0);
		cr_assert_eq(raw_conn_send(fd, &ireq, fds, 2), 0);
		cr_assert_eq(raw_conn_send(fd, &dreq, NULL, 0), 0);
		close(fds[0]);
		close(fds[1]);

		for (int k = 0; k < 2; k++) {
			resp = raw_read(fd, &f);
			cr_assert(resp->id == ireq.id || resp->id == dreq.id);
			cr_assert(!resp->error || resp->error->code == 0,
				  "round %u: request %llu failed: %s", round,
				  (unsigned long long)resp->id, resp->error->message);
			lorastore__response__free_unpacked(resp, NULL);
		}
		cr_assert_not(entry_of(conn, "ordered/a").found,
			      "round %u: the version imported before the delete survived it", round);
	}
	ls_framer_free(&f);
	close(fd);
	lorastore_close(conn);
	daemon_stop_ok();
}

/*
 * Three clients race on one name: one imports, one deletes, one acquires
 * (so new versions become resident).  Afterwards every version is deleted
 * and nothing is leased: the host tier must hold nothing.  A resident copy
 * of a version that a delete removed without telling residency would stay.
 */
static int race_child(const char *socket, const char *dir, int role)
{
	lorastore *c = NULL;
	if (lorastore_connect(socket, &c) != 0)
		return 10;
	for (int i = 0; i < 25; i++) {
		int rc = 0;
		if (role == 0) {
			rc = lorastore_import_dir(c, dir, &(lorastore_import_opts){.name = "race/b"},
						  NULL);
		} else if (role == 1) {
			rc = lorastore_delete(c, "race/b");
			if (rc == LORASTORE_E_NOT_FOUND)
				rc = 0;
		} else {
			lorastore_adapter *ad = NULL;
			rc = lorastore_acquire(c, "race/b", -1, &ad);
			if (rc == 0)
				rc = lorastore_adapter_release(ad);
			else if (rc == LORASTORE_E_NOT_FOUND || rc == LORASTORE_E_DELETED)
				rc = 0;
		}
		if (rc) {
			fprintf(stderr, "race role %d: %d %s\n", role, rc, lorastore_errmsg(c));
			return 11 + role;
		}
	}
	lorastore_close(c);
	return 0;
}

Test(daemon, racing_imports_deletes_and_acquires_of_one_name_leave_no_orphaned_resident_copy)
{
	daemon_start(NULL);
	struct synth_opts o = adapter_opts(91);
	const char *dir = make_adapter("race", &o);
	pid_t pids[3];
	for (int role = 0; role < 3; role++) {
		pids[role] = fork();
		cr_assert_geq(pids[role], 0);
		if (pids[role] == 0)
			_exit(race_child(dp.socket, dir, role));
		child_track(pids[role]);
	}
	for (int role = 0; role < 3; role++)
		cr_assert_eq(child_wait(pids[role]), 0, "racing client %d failed", role);
	lorastore *conn = connect_ok();
	int rc = lorastore_delete(conn, "race/b");
	cr_assert(rc == 0 || rc == LORASTORE_E_NOT_FOUND, "%s", lorastore_errmsg(conn));
	lorastore_stats st = stats_of(conn);
	cr_assert_eq(st.catalog_versions, 0);
	cr_assert_eq(st.leases, 0);
	cr_assert_eq(st.tiers[0].adapters, 0,
		     "%u adapters resident with every version deleted: an orphaned copy",
		     st.tiers[0].adapters);
	cr_assert_eq(st.tiers[0].used, 0);
	lorastore_close(conn);
	daemon_stop_ok();
}

/*
 * "name" must mean the latest version as soon as an import of it returned:
 * a cold acquire whose catalog read was in flight while the import finished
 * must not put the older version back in the daemon's reference cache.
 * One process imports versions one after another; another acquires "name"
 * without a pause (cold and warm) meanwhile; after each import returns, an
 * acquire gets that version or a later one.
 */
Test(daemon, an_acquire_of_a_name_after_its_import_returned_gets_that_version_or_later)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	struct synth_opts o = adapter_opts(95);
	const char *dir = make_adapter("latest", &o);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s", dir);
	int rc = lorastore_import_dir(conn, path, &(lorastore_import_opts){.name = "latest/a"}, NULL);
	cr_assert_eq(rc, 0, "%s", lorastore_errmsg(conn));
	int stop[2];
	cr_assert_eq(pipe(stop), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(stop[1]);
		lorastore *c = NULL;
		if (lorastore_connect(dp.socket, &c) != 0)
			_exit(2);
		struct pollfd pf = {.fd = stop[0], .events = POLLIN};
		while (poll(&pf, 1, 0) == 0) {
			lorastore_adapter *ad = NULL;
			if (lorastore_acquire(c, "latest/a", -1, &ad) == 0)
				lorastore_adapter_release(ad);
			/* Evictions keep the acquires cold now and then. */
			lorastore_evict(c, "latest/a");
		}
		lorastore_close(c);
		_exit(0);
	}
	child_track(pid);
	close(stop[0]);
	for (uint32_t i = 0; i < 30; i++) {
		uint32_t v = 0;
		rc = lorastore_import_dir(conn, path, &(lorastore_import_opts){.name = "latest/a"}, &v);
		cr_assert_eq(rc, 0, "%s", lorastore_errmsg(conn));
		lorastore_adapter *ad = NULL;
		rc = lorastore_acquire(conn, "latest/a", -1, &ad);
		cr_assert_eq(rc, 0, "%s", lorastore_errmsg(conn));
		lorastore_adapter_info info;
		cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
		cr_assert_geq(info.version, v, "import %u returned version %u, then \"latest/a\" gave %u",
			      i, v, info.version);
		lorastore_adapter_release(ad);
	}
	close(stop[1]);
	cr_assert_eq(child_wait(pid), 0);
	lorastore_close(conn);
	daemon_stop_ok();
}

Test(daemon, an_overlong_or_malformed_name_is_refused_by_the_client_with_the_name_rule)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	struct synth_opts o = adapter_opts(71);
	const char *dir = make_adapter("long", &o);
	char *big = malloc(5001);
	memset(big, 'n', 5000);
	big[5000] = '\0';
	lorastore_import_opts io = {.name = big};
	int rc = lorastore_import_dir(conn, dir, &io, NULL);
	cr_assert_eq(rc, LORASTORE_E_NAME_INVALID, "%d: %s", rc, lorastore_errmsg(conn));
	cr_assert_not_null(strstr(lorastore_errmsg(conn), "1 to 200 characters"), "%s",
			   lorastore_errmsg(conn));
	lorastore_adapter *ad = NULL;
	rc = lorastore_acquire(conn, big, 0, &ad);
	cr_assert_eq(rc, LORASTORE_E_NAME_INVALID, "%d: %s", rc, lorastore_errmsg(conn));
	free(big);
	static const char *const bad[] = {"a@0", "a@x", "/a", "a//b", "../a", "a b", "a@"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		rc = lorastore_delete(conn, bad[i]);
		cr_assert_eq(rc, LORASTORE_E_NAME_INVALID, "delete '%s': %d %s", bad[i], rc,
			     lorastore_errmsg(conn));
	}
	/* The connection was never closed by any of it. */
	lorastore_stats st = stats_of(conn);
	cr_assert_eq(st.clients, 1);
	lorastore_close(conn);
	daemon_stop_ok();
}

Test(daemon, importing_a_fifo_as_an_adapter_file_fails_at_once_without_blocking)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	static const char *const files[] = {"adapter_model.safetensors", "adapter_config.json"};
	for (size_t i = 0; i < 2; i++) {
		struct synth_opts o = adapter_opts(80 + i);
		char sub[16];
		snprintf(sub, sizeof(sub), "fifo%zu", i);
		const char *dir = make_adapter(sub, &o);
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		cr_assert_eq(unlink(path), 0);
		cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo: %s", strerror(errno));
		struct timespec t0;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		lorastore_import_opts io = {.name = "fifo/a"};
		int rc = lorastore_import_dir(conn, dir, &io, NULL);
		cr_assert_eq(rc, -EINVAL, "%s: %d %s", files[i], rc, lorastore_errmsg(conn));
		cr_assert_not_null(strstr(lorastore_errmsg(conn), "not a regular file"), "%s",
				   lorastore_errmsg(conn));
		cr_assert_not_null(strstr(lorastore_errmsg(conn), files[i]), "%s",
				   lorastore_errmsg(conn));
		/* A blocked open would never return; the suite's timeout is the bound. */
		cr_assert_lt(ms_since(&t0), 10000);
	}
	lorastore_close(conn);
	daemon_stop_ok();
}
