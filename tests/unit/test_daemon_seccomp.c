/*
 * lorastored where io_uring is refused, as inside a container with Docker's
 * default seccomp profile: the daemon is started under a seccomp filter that
 * answers io_uring_setup, io_uring_enter and io_uring_register with EPERM
 * (tests/support/daemon_proc.h, LS_DAEMON_NO_IO_URING).  With --event-loop
 * auto it must fall back to epoll, say why once, and serve everything: import,
 * acquire, load, a SIGKILL and a restart, verify.  With --event-loop
 * io_uring it must refuse to start and say what to do.
 *
 * These tests choose the engine themselves, so the LS_TEST_EVENT_LOOP of
 * their ctest runs does not apply to them.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lorastore.h>

#include "daemon_proc.h"
#include "synth.h"

static struct ls_daemon_proc dp;
static char *work_dir;

static void setup(void)
{
	memset(&dp, 0, sizeof(dp));
	dp.pid = -1;
	dp.notify_fd = -1;
	work_dir = synth_mkdtemp("seccomp");
}

static void teardown(void)
{
	if (dp.dir[0] || dp.pid > 0 || dp.notify_fd >= 0)
		ls_daemon_cleanup(&dp);
	synth_rm_rf(work_dir);
	free(work_dir);
	work_dir = NULL;
}

TestSuite(seccomp, .init = setup, .fini = teardown, .timeout = 60);

static const char *const auto_args[] = {"--event-loop", "auto", NULL};

/* The daemon's whole log (it is short). */
static const char *daemon_log(const struct ls_daemon_proc *d)
{
	static char text[16384];
	text[0] = '\0';
	FILE *f = fopen(d->log, "r");
	if (!f)
		return text;
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static int count_lines_with(const char *text, const char *needle)
{
	int n = 0;
	for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static void start_refused(const char *dir, const char *const *args)
{
	if (dp.notify_fd >= 0)
		close(dp.notify_fd);
	dp.notify_fd = -1;
	int rc = ls_daemon_start_ex(&dp, dir, args, LS_DAEMON_NO_IO_URING);
	cr_assert_eq(rc, 0, "lorastored did not start under the filter; log:\n%s", daemon_log(&dp));
}

static lorastore *connect_ok(void)
{
	lorastore *conn = NULL;
	int rc = lorastore_connect(dp.socket, &conn);
	cr_assert_eq(rc, 0, "connect %s: %s", dp.socket, lorastore_strerror(rc));
	return conn;
}

static void import_seed(lorastore *conn, const char *name, uint64_t seed)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/s%" PRIu64, work_dir, seed);
	cr_assert_eq(mkdir(dir, 0755), 0, "mkdir %s: %s", dir, strerror(errno));
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 8, .seed = seed};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	lorastore_import_opts io = {.name = name};
	int rc = lorastore_import_dir(conn, dir, &io, NULL);
	cr_assert_eq(rc, 0, "import %s: %s", name, lorastore_errmsg(conn));
}

/* FNV-1a over every tensor of an acquired adapter. */
static uint64_t adapter_hash(lorastore *conn, const char *ref)
{
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn, ref, -1, &ad);
	cr_assert_eq(rc, 0, "acquire %s: %s", ref, lorastore_errmsg(conn));
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
	cr_assert_gt(info.tensor_count, 0);
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < info.tensor_count; i++) {
		lorastore_tensor t;
		cr_assert_eq(lorastore_adapter_tensor_at(ad, i, &t), 0);
		const uint8_t *p = t.data;
		for (uint64_t k = 0; k < t.bytes; k++) {
			h ^= p[k];
			h *= 0x100000001b3ull;
		}
	}
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	return h;
}

static const char *engine_of(lorastore *conn)
{
	static lorastore_stats s;
	cr_assert_eq(lorastore_stats_get(conn, &s), 0, "stats: %s", lorastore_errmsg(conn));
	return s.event_loop;
}

Test(seccomp, auto_falls_back_to_epoll_with_one_log_line_naming_the_seccomp_cause)
{
	start_refused(NULL, auto_args);
	cr_assert_str_eq(dp.engine, "epoll", "READY status: %s", dp.status);
	lorastore *conn = connect_ok();
	cr_assert_str_eq(engine_of(conn), "epoll");
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0, "log:\n%s", daemon_log(&dp));
	const char *log = daemon_log(&dp);
	cr_assert_eq(count_lines_with(log, "io_uring refused"), 1, "log:\n%s", log);
	cr_assert(strstr(log, "Operation not permitted") && strstr(log, "seccomp"),
		  "the fallback line names neither the error nor the likely cause:\n%s", log);
}

Test(seccomp, io_uring_asked_for_where_it_is_refused_fails_at_start_and_says_the_way_out)
{
	static const char *const args[] = {"--event-loop", "io_uring", NULL};
	int rc = ls_daemon_start_ex(&dp, NULL, args, LS_DAEMON_NO_IO_URING);
	cr_assert_neq(rc, 0, "lorastored started with io_uring refused");
	cr_assert_eq(dp.pid, -1, "lorastored is still running");
	const char *log = daemon_log(&dp);
	cr_assert(strstr(log, "seccomp"), "no likely cause in:\n%s", log);
	cr_assert(strstr(log, "--event-loop epoll"), "no way out in:\n%s", log);
	cr_assert(strstr(log, "kernel.io_uring_disabled"), "sysctl not named in:\n%s", log);
}

Test(seccomp, auto_serves_import_acquire_load_a_sigkill_a_restart_and_verify)
{
	start_refused(NULL, auto_args);
	lorastore *conn = connect_ok();
	import_seed(conn, "box/a", 11);
	import_seed(conn, "box/b", 12);
	uint64_t ha = adapter_hash(conn, "box/a");
	cr_assert_eq(lorastore_load(conn, "box/b"), 0, "load: %s", lorastore_errmsg(conn));
	uint64_t hb = adapter_hash(conn, "box/b");
	cr_assert_neq(ha, hb);
	lorastore_close(conn);

	ls_daemon_kill(&dp);
	char dir[sizeof(dp.dir)];
	snprintf(dir, sizeof(dir), "%s", dp.dir);
	start_refused(dir, auto_args);
	cr_assert_str_eq(dp.engine, "epoll");

	conn = connect_ok();
	cr_assert_str_eq(engine_of(conn), "epoll");
	cr_assert_eq(adapter_hash(conn, "box/a"), ha, "box/a reads other bytes after SIGKILL");
	cr_assert_eq(adapter_hash(conn, "box/b"), hb, "box/b reads other bytes after SIGKILL");
	size_t bad = 99;
	int rc = lorastore_verify(conn, NULL, &bad, NULL, NULL);
	cr_assert_eq(rc, 0, "verify: %s", lorastore_errmsg(conn));
	cr_assert_eq(bad, 0, "%zu versions broken after SIGKILL and restart", bad);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0, "log:\n%s", daemon_log(&dp));
}

/* ---- the service's memory rule: no writable and executable memory */

/* The filter itself refuses what it claims to, so the next test proves something. */
Test(seccomp, the_no_wx_filter_refuses_a_writable_executable_mapping)
{
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		if (ls_seccomp_refuse_wx() != 0)
			_exit(10);
		void *rw = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (rw == MAP_FAILED)
			_exit(11); /* plain memory still maps */
		void *wx = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (wx != MAP_FAILED || errno != EPERM)
			_exit(12);
		if (mprotect(rw, 4096, PROT_READ | PROT_EXEC) == 0 || errno != EPERM)
			_exit(13);
		_exit(0);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the filter test failed with %d",
		  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/*
 * lorastored.service sets MemoryDenyWriteExecute=yes: the daemon must serve
 * under it, on both engines (the CUDA backend's side is test_device_tier's).
 */
Test(seccomp, the_daemon_serves_without_writable_executable_memory)
{
	static const char *const engines[] = {"io_uring", "epoll"};
	for (int i = 0; i < 2; i++) {
		const char *args[] = {"--event-loop", engines[i], "--backend", "host", NULL};
		if (dp.dir[0])
			ls_daemon_cleanup(&dp);
		int rc = ls_daemon_start_ex(&dp, NULL, args, LS_DAEMON_NO_WX);
		cr_assert_eq(rc, 0, "%s: lorastored did not start without W+X memory; log:\n%s",
			     engines[i], daemon_log(&dp));
		lorastore *conn = connect_ok();
		char name[32];
		snprintf(name, sizeof(name), "wx/%s", engines[i]);
		import_seed(conn, name, 70 + (uint64_t)i);
		cr_assert_neq(adapter_hash(conn, name), 0);
		lorastore_close(conn);
		cr_assert_eq(ls_daemon_stop(&dp), 0, "log:\n%s", daemon_log(&dp));
	}
}
