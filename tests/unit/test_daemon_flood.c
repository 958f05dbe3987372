/*
 * Connection floods against a real lorastored under a descriptor limit of 64
 * (as `prlimit --nofile=64:64 lorastored`): 100 connections that send
 * nothing.  The daemon must not spin (its CPU time over the flood stays
 * low), must not flood its log, must give a new client an answer or a clear
 * error within the client's connect timeout, must keep serving the clients
 * it has, and must recover once the flood is gone.
 *
 * Daemons start through ls_daemon_start( ... )'s flags variant, once per
 * event-loop engine (tests/CMakeLists.txt).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorastore.h>

#include "daemon_proc.h"
#include "synth.h"

#define FLOOD 100
/* The connect timeout the new client uses (ms). */
#define NEW_CLIENT_TIMEOUT_MS 3000
/* The daemon's --hello-timeout in these tests (ms). */
#define HELLO_TIMEOUT_MS 2000

static struct ls_daemon_proc dp;
static char *scratch_dir;
static int flood[FLOOD];
static size_t n_flood;

static void setup(void)
{
	memset(&dp, 0, sizeof(dp));
	dp.pid = -1;
	dp.notify_fd = -1;
	for (size_t i = 0; i < FLOOD; i++)
		flood[i] = -1;
	n_flood = 0;
}

static void teardown(void)
{
	for (size_t i = 0; i < FLOOD; i++)
		if (flood[i] >= 0)
			close(flood[i]);
	ls_daemon_cleanup(&dp);
	if (scratch_dir)
		synth_rm_rf(scratch_dir);
	free(scratch_dir);
	scratch_dir = NULL;
}

TestSuite(daemon_flood, .init = setup, .fini = teardown, .timeout = 90);

static long ms_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* CPU time (user + system) the daemon has used so far, in milliseconds. */
static long daemon_cpu_ms(void)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)dp.pid);
	FILE *f = fopen(path, "re");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields after the command, which ends with the last ')': state is field 3. */
	const char *p = strrchr(buf, ')');
	cr_assert_not_null(p);
	unsigned long utime = 0, stime = 0;
	cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
			    &stime),
		     2, "%s", buf);
	return (long)((utime + stime) * 1000 / (unsigned long)sysconf(_SC_CLK_TCK));
}

static long log_bytes(void)
{
	struct stat st;
	cr_assert_eq(stat(dp.log, &st), 0);
	return (long)st.st_size;
}

static const char *log_tail(void)
{
	static char buf[4096];
	buf[0] = '\0';
	int fd = open(dp.log, O_RDONLY);
	if (fd < 0)
		return buf;
	off_t size = lseek(fd, 0, SEEK_END);
	off_t from = size > (off_t)sizeof(buf) - 1 ? size - (off_t)sizeof(buf) + 1 : 0;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, from);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

/* Open FLOOD connections that never send a byte; returns how many connected. */
static size_t open_flood(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	cr_assert_lt(strlen(dp.socket), sizeof(addr.sun_path));
	memcpy(addr.sun_path, dp.socket, strlen(dp.socket) + 1);
	size_t ok = 0;
	for (size_t i = 0; i < FLOOD; i++) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
		flood[n_flood++] = fd;
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
			ok++;
	}
	return ok;
}

static void close_flood(void)
{
	for (size_t i = 0; i < n_flood; i++) {
		close(flood[i]);
		flood[i] = -1;
	}
	n_flood = 0;
}

static lorastore *connect_ok(void)
{
	lorastore *c = NULL;
	int rc = lorastore_connect_timeout(dp.socket, 5000, &c);
	cr_assert_eq(rc, 0, "connect: %s (%s)\nlog:\n%s", c ? lorastore_errmsg(c) : "",
		     lorastore_strerror(rc), log_tail());
	return c;
}

/* A daemon with an imported adapter and a client that holds a lease on it. */
static lorastore *start_with_client(const char *max_clients, lorastore_adapter **ad)
{
	const char *args[8];
	size_t n = 0;
	char hello[16];
	snprintf(hello, sizeof(hello), "%d", HELLO_TIMEOUT_MS);
	args[n++] = "--hello-timeout";
	args[n++] = hello;
	if (max_clients) {
		args[n++] = "--max-clients";
		args[n++] = max_clients;
	}
	args[n] = NULL;
	cr_assert_eq(ls_daemon_start_ex(&dp, NULL, args, LS_DAEMON_NOFILE_64), 0,
		     "daemon start failed");
	static char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/adapter", dp.dir);
	cr_assert_eq(mkdir(dir, 0755), 0);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 8, .seed = 5};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	lorastore *c = connect_ok();
	int rc = lorastore_import_dir(c, dir, &(lorastore_import_opts){.name = "flood/a"}, NULL);
	cr_assert_eq(rc, 0, "import: %s", lorastore_errmsg(c));
	rc = lorastore_acquire(c, "flood/a", -1, ad);
	cr_assert_eq(rc, 0, "acquire: %s", lorastore_errmsg(c));
	return c;
}

/* The client that was there before the flood still gets answers. */
static void assert_existing_client_served(lorastore *c)
{
	lorastore_stats st;
	int rc = lorastore_stats_get(c, &st);
	cr_assert_eq(rc, 0, "stats on the existing connection: %s", lorastore_errmsg(c));
	lorastore_adapter *again = NULL;
	rc = lorastore_acquire(c, "flood/a", 1000, &again);
	cr_assert_eq(rc, 0, "acquire on the existing connection: %s", lorastore_errmsg(c));
	cr_assert_eq(lorastore_adapter_release(again), 0);
}

/*
 * The flood, then: a new client within its timeout; the daemon's CPU time
 * and log growth over the flood; recovery.  want_new is the error the new
 * client must get while the flood holds (0: any answer or clear error).
 */
static void run_flood(lorastore *c, int want_new, const char *want_words)
{
	long cpu0 = daemon_cpu_ms(), log0 = log_bytes();
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	size_t connected = open_flood();
	cr_assert_gt(connected, 0, "no flood connection got through");
	sleep_ms(300);

	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	lorastore *nc = NULL;
	int rc = lorastore_connect_timeout(dp.socket, NEW_CLIENT_TIMEOUT_MS, &nc);
	long took = ms_since(&t1);
	cr_assert_leq(took, NEW_CLIENT_TIMEOUT_MS + 500, "the new client waited %ld ms", took);
	if (want_new) {
		cr_assert_eq(rc, want_new, "new client: %d (%s) %s", rc, lorastore_strerror(rc),
			     nc ? lorastore_errmsg(nc) : "");
		cr_assert_not_null(strstr(lorastore_errmsg(nc), want_words), "message: %s",
				   lorastore_errmsg(nc));
	} else {
		cr_assert(rc == 0 || rc == -EMFILE || rc == -EUSERS,
			  "new client: %d (%s) %s", rc, lorastore_strerror(rc),
			  nc ? lorastore_errmsg(nc) : "");
	}
	lorastore_close(nc);
	assert_existing_client_served(c);

	/* Over a window longer than the Hello deadline the flood connections stay open. */
	while (ms_since(&t0) < HELLO_TIMEOUT_MS + 1000)
		sleep_ms(100);
	long cpu = daemon_cpu_ms() - cpu0, grew = log_bytes() - log0;
	cr_assert_lt(cpu, 500, "the daemon used %ld ms of CPU over a %ld ms flood (a busy loop?)",
		     cpu, ms_since(&t0));
	cr_assert_lt(grew, 16384, "the log grew by %ld bytes over the flood:\n%s", grew,
		     log_tail());
	assert_existing_client_served(c);

	/* The flood goes; new clients are served again. */
	close_flood();
	sleep_ms(200);
	lorastore *after = connect_ok();
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(after, &st), 0, "%s", lorastore_errmsg(after));
	cr_assert_eq(st.clients, 2, "%u clients after the flood closed", st.clients);
	lorastore_close(after);
}

Test(daemon_flood, idle_connections_past_max_clients_are_refused_with_a_reason_and_nothing_spins)
{
	lorastore_adapter *ad = NULL;
	lorastore *c = start_with_client(NULL, &ad);
	run_flood(c, -EUSERS, "--max-clients");
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	lorastore_close(c);
	cr_assert_eq(ls_daemon_stop(&dp), 0, "log:\n%s", log_tail());
	dp.pid = -1;
}

Test(daemon_flood, running_out_of_descriptors_pauses_accepting_and_tells_waiting_peers_why)
{
	/* A client limit the descriptors cannot back: the daemon meets EMFILE. */
	lorastore_adapter *ad = NULL;
	lorastore *c = start_with_client("1000", &ad);
	run_flood(c, 0, NULL);
	cr_assert_not_null(strstr(log_tail(), "Too many open files"),
			   "the log never says descriptors ran out:\n%s", log_tail());
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	lorastore_close(c);
	cr_assert_eq(ls_daemon_stop(&dp), 0, "log:\n%s", log_tail());
	dp.pid = -1;
}

Test(daemon_flood, a_connection_that_never_says_hello_is_closed_after_the_deadline)
{
	lorastore_adapter *ad = NULL;
	lorastore *c = start_with_client(NULL, &ad);
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	cr_assert_lt(strlen(dp.socket), sizeof(addr.sun_path));
	memcpy(addr.sun_path, dp.socket, strlen(dp.socket) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	flood[n_flood++] = fd;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	char buf[256];
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	ssize_t n;
	size_t got = 0;
	while ((n = recv(fd, buf, sizeof(buf), 0)) > 0)
		got += (size_t)n;
	long took = ms_since(&t0);
	cr_assert_eq(n, 0, "the connection was not closed (%s)", n < 0 ? strerror(errno) : "");
	cr_assert_gt(got, 0, "closed without saying why");
	cr_assert_geq(took, HELLO_TIMEOUT_MS - 200, "closed after %ld ms", took);
	cr_assert_leq(took, HELLO_TIMEOUT_MS + 1500, "closed after %ld ms", took);
	assert_existing_client_served(c);
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	lorastore_close(c);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
	dp.pid = -1;
}

/* ---- the client never waits forever */

/* A socket that listens and never accepts (a daemon hung before its loop). */
static int silent_listener(const char *path, int backlog)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	cr_assert_lt(strlen(path), sizeof(addr.sun_path));
	memcpy(addr.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(fd, backlog), 0);
	return fd;
}

/* A socket path in a directory of its own, removed at teardown. */
static char *scratch_socket(const char *name)
{
	static char path[PATH_MAX];
	scratch_dir = synth_mkdtemp("flood");
	snprintf(path, sizeof(path), "%s/%s", scratch_dir, name);
	return path;
}

Test(daemon_flood, connect_to_a_daemon_that_never_answers_the_hello_times_out)
{
	const char *path = scratch_socket("silent.sock");
	int l = silent_listener(path, 16);
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	lorastore *c = NULL;
	int rc = lorastore_connect_timeout(path, 400, &c);
	long took = ms_since(&t0);
	cr_assert_eq(rc, -ETIMEDOUT, "%d (%s) %s", rc, lorastore_strerror(rc),
		     c ? lorastore_errmsg(c) : "");
	cr_assert_geq(took, 350);
	cr_assert_lt(took, 2000, "waited %ld ms", took);
	cr_assert_not_null(strstr(lorastore_errmsg(c), "400 ms"), "%s", lorastore_errmsg(c));
	lorastore_close(c);
	close(l);
}

Test(daemon_flood, connect_while_the_backlog_is_full_retries_then_times_out)
{
	const char *path = scratch_socket("full.sock");
	int l = silent_listener(path, 0);
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	memcpy(addr.sun_path, path, strlen(path) + 1);
	/* Fill the backlog until a nonblocking connect is refused with EAGAIN. */
	int held[8];
	size_t n = 0;
	for (; n < 8; n++) {
		held[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (connect(held[n], (struct sockaddr *)&addr, sizeof(addr)) != 0) {
			cr_assert_eq(errno, EAGAIN, "connect: %s", strerror(errno));
			n++;
			break;
		}
	}
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	lorastore *c = NULL;
	int rc = lorastore_connect_timeout(path, 300, &c);
	long took = ms_since(&t0);
	cr_assert_eq(rc, -ETIMEDOUT, "%d (%s) %s", rc, lorastore_strerror(rc),
		     c ? lorastore_errmsg(c) : "");
	cr_assert_not_null(strstr(lorastore_errmsg(c), "backlog"), "%s", lorastore_errmsg(c));
	cr_assert_lt(took, 2000, "waited %ld ms", took);
	lorastore_close(c);
	for (size_t i = 0; i < n; i++)
		close(held[i]);
	close(l);
}

Test(daemon_flood, the_cli_gives_up_after_the_connect_timeout_from_the_environment)
{
	const char *path = scratch_socket("cli.sock");
	int l = silent_listener(path, 16);
	char cmd[PATH_MAX + 256];
	snprintf(cmd, sizeof(cmd),
		 "LORASTORE_CONNECT_TIMEOUT_MS=300 %s --socket %s stats 2>&1", ls_cli_binary(), path);
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	char out[1024] = "";
	size_t got = fread(out, 1, sizeof(out) - 1, p);
	out[got] = '\0';
	int status = pclose(p);
	long took = ms_since(&t0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d: %s", status, out);
	cr_assert_not_null(strstr(out, "did not answer in time"), "%s", out);
	cr_assert_lt(took, 3000, "the CLI waited %ld ms", took);
	close(l);
}
