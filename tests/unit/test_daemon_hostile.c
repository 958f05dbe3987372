/*
 * Clients that misbehave, against a real lorastored, over raw connections
 * (tests/support/raw_conn.h): descriptors a request does not take, a pipe
 * where a file belongs, a pipeline that is never read, more jobs than a
 * connection may queue, a connection that leaves its jobs behind, and
 * floods of requests that cannot be answered.  None of them may leak the
 * daemon's descriptors or memory, hold its workers, or change what another
 * request does; each is answered with a clear error where it can be.
 *
 * Daemons start through ls_daemon_start( ... ), once per event-loop engine
 * (tests/CMakeLists.txt), and stop with SIGTERM, expecting exit 0.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lorastore.h>

#include "daemon_proc.h"
#include "raw_conn.h"
#include "synth.h"

static struct ls_daemon_proc dp;
static char *work_dir;

static void setup(void)
{
	memset(&dp, 0, sizeof(dp));
	dp.pid = -1;
	dp.notify_fd = -1;
	work_dir = synth_mkdtemp("hostile");
}

static void teardown(void)
{
	if (getenv("LS_IT_KEEP")) {
		fprintf(stderr, "kept %s and %s\n", dp.dir, work_dir);
		if (dp.pid > 0)
			ls_daemon_kill(&dp);
	} else {
		ls_daemon_cleanup(&dp);
		synth_rm_rf(work_dir);
	}
	free(work_dir);
	work_dir = NULL;
}

TestSuite(hostile, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers */

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

static void daemon_start(const char *const *args)
{
	cr_assert_eq(ls_daemon_start(&dp, NULL, args), 0, "lorastored did not start (log %s)",
		     dp.log);
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap + 1);
	size_t got;
	while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
		n += got;
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
		}
	}
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

/* SIGTERM; the daemon must drain and exit 0 (a sanitizer report makes it fail). */
static void daemon_stop_ok(void)
{
	int rc = ls_daemon_stop(&dp);
	if (rc != 0) {
		char *log = read_file(dp.log, NULL);
		size_t n = strlen(log);
		cr_assert_fail("lorastored exited with %d; log:\n%s", rc,
			       log + (n > 4000 ? n - 4000 : 0));
	}
}

/* Descriptors the daemon has open now. */
static int daemon_fd_count(void)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)dp.pid);
	DIR *d = opendir(path);
	cr_assert_not_null(d, "%s: %s", path, strerror(errno));
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* Wait up to 3 s for the daemon to be back at want descriptors; the count last seen. */
static int daemon_fds_settle(int want)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int n;
	while ((n = daemon_fd_count()) != want && ms_since(&t0) < 3000)
		sleep_ms(20);
	return n;
}

/* A field of /proc/PID/status in kB ("VmHWM", "VmRSS"). */
static long daemon_status_kb(const char *field)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)dp.pid);
	char *text = read_file(path, NULL);
	char key[32];
	snprintf(key, sizeof(key), "\n%s:", field);
	char *p = strstr(text, key);
	cr_assert_not_null(p, "no %s in %s", field, path);
	long kb = strtol(p + strlen(key), NULL, 10);
	free(text);
	return kb;
}

/* Whether the daemon runs with a sanitizer's runtime (its allocator keeps memory). */
static bool daemon_sanitized(void)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)dp.pid);
	char *maps = read_file(path, NULL);
	bool yes = strstr(maps, "libasan") || strstr(maps, "libtsan");
	free(maps);
	return yes;
}

static int raw_open_hello(struct ls_framer *f)
{
	int fd = raw_conn_open(dp.socket);
	cr_assert_geq(fd, 0, "connect %s: %s", dp.socket, strerror(-fd));
	ls_framer_init(f, 0);
	int rc = raw_conn_hello(fd, f);
	cr_assert_eq(rc, 0, "Hello: %s", strerror(-rc));
	return fd;
}

static Lorastore__Response *raw_answer(int fd, struct ls_framer *f)
{
	Lorastore__Response *resp = NULL;
	int rc = raw_conn_read(fd, f, 10000, &resp);
	cr_assert_eq(rc, 0, "no answer within 10 s: %s", strerror(-rc));
	return resp;
}

/* The answer to request id must be an error whose message holds words. */
static void expect_error(Lorastore__Response *resp, uint64_t id, const char *words)
{
	cr_assert_eq(resp->id, id, "answer to %" PRIu64 ", expected %" PRIu64, resp->id, id);
	cr_assert_not_null(resp->error, "request %" PRIu64 " was not refused (body %d)", id,
			   (int)resp->body_case);
	cr_assert_not_null(strstr(resp->error->message, words), "'%s' lacks '%s'",
			   resp->error->message, words);
	lorastore__response__free_unpacked(resp, NULL);
}

static void send_stats(int fd, uint64_t id, const int *fds, unsigned n_fds)
{
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = id;
	req.body_case = LORASTORE__REQUEST__BODY_STATS;
	req.stats = &empty;
	int rc = raw_conn_send(fd, &req, fds, n_fds);
	cr_assert_eq(rc, 0, "send: %s", strerror(-rc));
}

/* The hidden size of the adapters adapter_files writes (64 unless a test wants bigger). */
static int adapter_hidden = 64;

/* A synthetic adapter in work_dir/sub; its two files opened: fds[0] config, fds[1] weights. */
static void adapter_files(const char *sub, uint64_t seed, int fds[2])
{
	char dir[PATH_MAX], path[PATH_MAX + 32];
	snprintf(dir, sizeof(dir), "%s/%s", work_dir, sub);
	if (access(dir, F_OK) != 0) {
		cr_assert_eq(mkdir(dir, 0755), 0, "mkdir %s: %s", dir, strerror(errno));
		struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 8, .seed = seed,
				       .hidden = adapter_hidden};
		cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	}
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	fds[0] = open(path, O_RDONLY | O_CLOEXEC);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	fds[1] = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert(fds[0] >= 0 && fds[1] >= 0, "open %s: %s", path, strerror(errno));
}

static void send_import(int fd, uint64_t id, const char *name, bool has_config, const int *fds,
			unsigned n_fds)
{
	Lorastore__ImportRequest im = LORASTORE__IMPORT_REQUEST__INIT;
	im.name = (char *)name;
	im.has_config = has_config;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = id;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &im;
	int rc = raw_conn_send(fd, &req, fds, n_fds);
	cr_assert_eq(rc, 0, "send: %s", strerror(-rc));
}

/* Import the adapter of seed as name through liblorastore. */
static void import_ok(lorastore *conn, const char *name, uint64_t seed)
{
	char sub[32], dir[PATH_MAX];
	snprintf(sub, sizeof(sub), "s%" PRIu64, seed);
	int fds[2];
	adapter_files(sub, seed, fds);
	close(fds[0]);
	close(fds[1]);
	snprintf(dir, sizeof(dir), "%s/%s", work_dir, sub);
	lorastore_import_opts io = {.name = name};
	int rc = lorastore_import_dir(conn, dir, &io, NULL);
	cr_assert_eq(rc, 0, "import %s: %s", name, lorastore_errmsg(conn));
}

static lorastore *connect_ok(void)
{
	lorastore *conn = NULL;
	int rc = lorastore_connect(dp.socket, &conn);
	cr_assert_eq(rc, 0, "connect: %s", lorastore_strerror(rc));
	return conn;
}

/* ---- descriptors */

/*
 * Before: the daemon cut off a message of 9 descriptors (MSG_CTRUNC) and
 * closed the connection without closing the 8 the kernel had installed.
 * Ten such connections, before any Hello, must leave the daemon with the
 * descriptors it had.
 */
Test(hostile, nine_descriptors_in_one_message_before_hello_are_all_closed)
{
	daemon_start(NULL);
	int before = daemon_fd_count();
	int nine[9];
	for (int i = 0; i < 9; i++)
		cr_assert_geq(nine[i] = open("/dev/null", O_RDONLY | O_CLOEXEC), 0);
	for (int c = 0; c < 10; c++) {
		int fd = raw_conn_open(dp.socket);
		cr_assert_geq(fd, 0);
		send_stats(fd, 7, nine, 9);
		struct ls_framer f;
		ls_framer_init(&f, 0);
		Lorastore__Response *resp = NULL;
		int rc = raw_conn_read(fd, &f, 5000, &resp);
		/* Refused with a reason, or closed; never served. */
		if (rc == 0) {
			cr_assert_not_null(resp->error, "a stats request with 9 descriptors was served");
			lorastore__response__free_unpacked(resp, NULL);
		} else {
			cr_assert_eq(rc, -EPIPE, "%s", strerror(-rc));
		}
		ls_framer_free(&f);
		close(fd);
	}
	for (int i = 0; i < 9; i++)
		close(nine[i]);
	int after = daemon_fds_settle(before);
	cr_assert_leq(after, before, "the daemon holds %d descriptors, %d before the 10 connections",
		      after, before);
	daemon_stop_ok();
}

Test(hostile, a_request_with_more_descriptors_than_it_takes_is_refused_and_the_connection_goes_on)
{
	daemon_start(NULL);
	int before = daemon_fd_count();
	struct ls_framer f;
	int fd = raw_open_hello(&f);
	int nine[9];
	for (int i = 0; i < 9; i++)
		cr_assert_geq(nine[i] = open("/dev/null", O_RDONLY | O_CLOEXEC), 0);
	send_stats(fd, 2, nine, 9);
	expect_error(raw_answer(fd, &f), 2, "more than 8 file descriptors");
	send_stats(fd, 3, nine, 1);
	expect_error(raw_answer(fd, &f), 3, "a stats request brought 1 file descriptor; it takes 0");
	for (int i = 0; i < 9; i++)
		close(nine[i]);
	send_stats(fd, 4, NULL, 0);
	Lorastore__Response *resp = raw_answer(fd, &f);
	cr_assert_eq(resp->id, 4);
	cr_assert_eq(resp->body_case, LORASTORE__RESPONSE__BODY_STATS);
	lorastore__response__free_unpacked(resp, NULL);
	/* The connection's own descriptor is the only one more (9 would be a leak). */
	int after = daemon_fds_settle(before + 1);
	cr_assert_leq(after, before + 1, "%d descriptors, %d before and one connection", after,
		      before);
	ls_framer_free(&f);
	close(fd);
	daemon_stop_ok();
}

/*
 * Before: descriptors that came with a stats request stayed queued on the
 * session, and the next import took them first, committing another
 * adapter's files under the name it gave.
 */
Test(hostile, descriptors_sent_with_a_stats_request_are_closed_not_taken_by_the_next_import)
{
	daemon_start(NULL);
	struct ls_framer f;
	int fd = raw_open_hello(&f);
	int a0[2], a1[2];
	adapter_files("a0", 100, a0);
	adapter_files("a1", 101, a1);

	/* a0 alone, for its digest. */
	send_import(fd, 2, "t/a0", true, a0, 2);
	Lorastore__Response *resp = raw_answer(fd, &f);
	cr_assert_null(resp->error, "%s", resp->error ? resp->error->message : "");
	cr_assert_eq(resp->body_case, LORASTORE__RESPONSE__BODY_IMPORTED);
	ProtobufCBinaryData want = resp->imported->record->digest;
	uint8_t digest_a0[64];
	cr_assert_leq(want.len, sizeof(digest_a0));
	memcpy(digest_a0, want.data, want.len);
	size_t digest_len = want.len;
	lorastore__response__free_unpacked(resp, NULL);

	/* a1's files ride on a stats request, then an import sends a0's (opened anew). */
	close(a0[0]);
	close(a0[1]);
	adapter_files("a0", 100, a0);
	send_stats(fd, 3, a1, 2);
	expect_error(raw_answer(fd, &f), 3, "a stats request brought 2 file descriptors");
	send_import(fd, 4, "t/confused", true, a0, 2);
	resp = raw_answer(fd, &f);
	cr_assert_null(resp->error, "%s", resp->error ? resp->error->message : "");
	cr_assert_eq(resp->body_case, LORASTORE__RESPONSE__BODY_IMPORTED);
	cr_assert_eq(resp->imported->record->digest.len, digest_len);
	cr_assert_eq(memcmp(resp->imported->record->digest.data, digest_a0, digest_len), 0,
		     "t/confused holds other files than the ones its import sent");
	lorastore__response__free_unpacked(resp, NULL);
	for (int i = 0; i < 2; i++) {
		close(a0[i]);
		close(a1[i]);
	}
	ls_framer_free(&f);
	close(fd);
	daemon_stop_ok();
}

Test(hostile, an_import_with_fewer_descriptors_than_it_declares_is_refused_and_commits_nothing)
{
	daemon_start(NULL);
	struct ls_framer f;
	int fd = raw_open_hello(&f);
	int a[2];
	adapter_files("a", 102, a);
	send_import(fd, 2, "t/short", true, a + 1, 1);
	expect_error(raw_answer(fd, &f), 2, "an import request brought 1 file descriptor; it takes 2");
	send_import(fd, 3, "t/long", false, a, 2);
	expect_error(raw_answer(fd, &f), 3, "brought 2 file descriptors; it takes 1");
	close(a[0]);
	close(a[1]);
	lorastore *conn = connect_ok();
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_list_page(conn, "t/", NULL, 0, &l), 0, "%s",
		     lorastore_errmsg(conn));
	cr_assert_eq(lorastore_list_count(l), 0, "a refused import committed a version");
	lorastore_list_free(l);
	lorastore_close(conn);
	ls_framer_free(&f);
	close(fd);
	daemon_stop_ok();
}

/*
 * Before: a pipe as the config descriptor held a worker reading it for as
 * long as its writer lived; two such imports held both workers, and every
 * other client's imports and cold loads waited.
 */
Test(hostile, an_import_whose_config_is_a_pipe_is_refused_at_once_and_holds_no_worker)
{
	daemon_start(NULL);
	int pipes[2][2];
	int fds[2];
	adapter_files("p", 103, fds);
	struct ls_framer f[2];
	int conns[2];
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(pipe2(pipes[i], O_CLOEXEC), 0);
		conns[i] = raw_open_hello(&f[i]);
		int sent[2] = {pipes[i][0], fds[1]};
		send_import(conns[i], 2, "t/pipe", true, sent, 2);
	}
	for (int i = 0; i < 2; i++)
		expect_error(raw_answer(conns[i], &f[i]), 2, "is a pipe or FIFO, not a regular file");
	/* The writers are still open: only a refusal before any read got here. */
	lorastore *conn = connect_ok();
	import_ok(conn, "t/after", 104);
	lorastore_close(conn);
	for (int i = 0; i < 2; i++) {
		close(pipes[i][0]);
		close(pipes[i][1]);
		ls_framer_free(&f[i]);
		close(conns[i]);
	}
	close(fds[0]);
	close(fds[1]);
	daemon_stop_ok();
}

/* ---- backpressure */

/*
 * Before: a client that pipelined stats requests and never read made the
 * daemon queue every reply (6 million requests took it from 10 to 760 MB).
 * Now reading from it pauses above --client-reply-limit: its sends stall,
 * the daemon's peak memory stays near the bound, another client is served
 * meanwhile, and once the replies are read every request is answered, in
 * order.
 */
Test(hostile, a_client_that_never_reads_its_replies_stalls_instead_of_growing_the_daemon)
{
	const char *args[] = {"--client-reply-limit", "1MiB", NULL};
	daemon_start(args);
	lorastore *other = connect_ok();
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(other, &st), 0);
	long hwm0 = daemon_status_kb("VmHWM");
	long rss0 = daemon_status_kb("VmRSS");

	struct ls_framer f;
	int fd = raw_open_hello(&f);
	/* A million stats requests, ids 2, 3, ...: about 10 MB to send. */
	enum { N = 1000000 };
	size_t cap = (size_t)N * 16, len = 0;
	uint8_t *wire = malloc(cap);
	size_t *ends = malloc(N * sizeof(*ends));
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_STATS;
	req.stats = &empty;
	for (size_t i = 0; i < N; i++) {
		uint8_t *buf;
		size_t n;
		req.id = 2 + i;
		cr_assert_eq(ls_request_encode(&req, &buf, &n), 0);
		cr_assert_leq(len + n, cap);
		memcpy(wire + len, buf, n);
		len += n;
		ends[i] = len;
		free(buf);
	}
	cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
	/* Send until the daemon stops taking bytes for half a second. */
	size_t sent = 0;
	while (sent < len) {
		ssize_t n = send(fd, wire + sent, len - sent, MSG_NOSIGNAL);
		if (n > 0) {
			sent += (size_t)n;
			continue;
		}
		cr_assert(n < 0 && (errno == EAGAIN || errno == EINTR), "send: %s", strerror(errno));
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		if (errno == EAGAIN && poll(&p, 1, 500) == 0)
			break;
	}
	/* Whole requests on the wire, the one cut short completed below. */
	size_t n_req = 0;
	while (n_req < N && ends[n_req] <= sent)
		n_req++;
	size_t target = n_req < N && sent > (n_req ? ends[n_req - 1] : 0) ? ends[n_req++] : sent;
	cr_assert_lt(sent, len, "the daemon took all %zu bytes of requests without their replies "
				"being read",
		     len);
	long hwm = daemon_status_kb("VmHWM");
	cr_assert_lt(hwm - hwm0, 32 * 1024,
		     "the daemon's peak memory grew by %ld kB for %zu unread requests", hwm - hwm0,
		     n_req);
	/* Another client is served while this one stalls. */
	for (int i = 0; i < 5; i++)
		cr_assert_eq(lorastore_stats_get(other, &st), 0, "%s", lorastore_errmsg(other));

	/* Read every reply (sending the rest of the cut request): all come, in order. */
	uint64_t next_id = 2;
	while (next_id < 2 + n_req) {
		struct pollfd p = {.fd = fd, .events = POLLIN | (sent < target ? POLLOUT : 0)};
		cr_assert_gt(poll(&p, 1, 10000), 0, "no reply after %" PRIu64 " of %zu",
			     next_id - 2, n_req);
		if ((p.revents & POLLOUT) && sent < target) {
			ssize_t n = send(fd, wire + sent, target - sent, MSG_NOSIGNAL);
			if (n > 0)
				sent += (size_t)n;
		}
		if (!(p.revents & POLLIN))
			continue;
		Lorastore__Response *resp = NULL;
		int rc;
		while ((rc = raw_conn_read(fd, &f, 0, &resp)) == 0) {
			cr_assert_eq(resp->id, next_id, "reply %" PRIu64 " out of order", resp->id);
			cr_assert_eq(resp->body_case, LORASTORE__RESPONSE__BODY_STATS);
			lorastore__response__free_unpacked(resp, NULL);
			next_id++;
		}
		cr_assert_eq(rc, -ETIMEDOUT, "%s", strerror(-rc));
	}
	free(wire);
	free(ends);
	ls_framer_free(&f);
	close(fd);
	/*
	 * What the client made the daemon take comes back when it leaves (with
	 * glibc's allocator; a sanitizer's keeps freed memory and shadow pages).
	 */
	cr_assert_eq(lorastore_stats_get(other, &st), 0);
	long rss = daemon_status_kb("VmRSS");
	if (daemon_sanitized())
		fprintf(stderr, "the daemon runs a sanitizer's allocator: its resident memory after "
				"the client left (+%ld kB) is not checked\n",
			rss - rss0);
	else
		cr_assert_lt(rss - rss0, 8 * 1024,
			     "the daemon holds %ld kB more after the client left", rss - rss0);
	lorastore_close(other);
	daemon_stop_ok();
}

/* ---- bounded jobs */

/* A free TCP port on 127.0.0.1 for --metrics-listen. */
static int free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t len = sizeof(a);
	cr_assert_eq(getsockname(s, (struct sockaddr *)&a, &len), 0);
	close(s);
	return ntohs(a.sin_port);
}

/* The value of a metric without labels, scraped from the daemon's /metrics. */
static double metric(int port, const char *name)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0, "metrics: %s",
		     strerror(errno));
	const char get[] = "GET /metrics HTTP/1.0\r\n\r\n";
	cr_assert_eq(raw_conn_send_bytes(s, get, sizeof(get) - 1), 0);
	size_t cap = 1 << 16, n = 0;
	char *body = malloc(cap + 1);
	ssize_t got;
	while ((got = recv(s, body + n, cap - n, 0)) > 0) {
		n += (size_t)got;
		if (n == cap)
			body = realloc(body, (cap *= 2) + 1);
	}
	close(s);
	body[n] = '\0';
	char key[128];
	snprintf(key, sizeof(key), "\n%s ", name);
	char *p = strstr(body, key);
	cr_assert_not_null(p, "no metric %s", name);
	double v = strtod(p + strlen(key), NULL);
	free(body);
	return v;
}

/* Import n small adapters "j/0", "j/1", ... so that a verify has work. */
static void import_many(unsigned n)
{
	lorastore *conn = connect_ok();
	for (unsigned i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof(name), "j/%u", i);
		import_ok(conn, name, 200 + i);
	}
	lorastore_close(conn);
}

static void send_verify(int fd, uint64_t id)
{
	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = "";
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = id;
	req.body_case = LORASTORE__REQUEST__BODY_VERIFY;
	req.verify = &rr;
	cr_assert_eq(raw_conn_send(fd, &req, NULL, 0), 0);
}

Test(hostile, requests_over_the_connections_job_limit_are_answered_busy)
{
	const char *args[] = {"--client-jobs", "2", "--workers", "1", NULL};
	daemon_start(args);
	import_many(8);
	struct ls_framer f;
	int fd = raw_open_hello(&f);
	for (uint64_t id = 2; id < 12; id++)
		send_verify(fd, id);
	unsigned busy = 0, done = 0;
	for (int i = 0; i < 10; i++) {
		Lorastore__Response *resp = raw_answer(fd, &f);
		if (resp->error) {
			cr_assert_eq(resp->error->code, LORASTORE_E_BUSY, "%s", resp->error->message);
			cr_assert_not_null(strstr(resp->error->message, "--client-jobs 2"), "%s",
					   resp->error->message);
			busy++;
		} else {
			cr_assert_eq(resp->body_case, LORASTORE__RESPONSE__BODY_VERIFY);
			done++;
		}
		lorastore__response__free_unpacked(resp, NULL);
	}
	cr_assert_geq(done, 2);
	cr_assert_geq(busy, 1, "10 verifies pipelined, none refused with --client-jobs 2");
	ls_framer_free(&f);
	close(fd);
	daemon_stop_ok();
}

/*
 * Before: 40 verifies pipelined and then a disconnect kept the workers busy
 * for over a minute.  The jobs no worker started are dropped when their
 * connection closes (counted in lorastore_jobs_cancelled_total).
 */
Test(hostile, the_queued_jobs_of_a_closed_connection_are_dropped)
{
	int port = free_port();
	char listen[64];
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
	const char *args[] = {"--workers", "1", "--metrics-listen", listen, NULL};
	daemon_start(args);
	/*
	 * Adapters of a few MB, so that the verifies cannot all finish in the
	 * moment between the requests' arrival and the disconnect's on a loaded
	 * machine (each verify reads every version).
	 */
	adapter_hidden = 2048;
	import_many(16);
	adapter_hidden = 64;
	struct ls_framer f;
	int fd = raw_open_hello(&f);
	for (uint64_t id = 2; id < 18; id++)
		send_verify(fd, id);
	close(fd);
	ls_framer_free(&f);
	/* Published every 100 ms: wait for the count to settle. */
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	double cancelled = 0;
	while ((cancelled = metric(port, "lorastore_jobs_cancelled_total")) < 8 &&
	       ms_since(&t0) < 5000)
		sleep_ms(100);
	cr_assert_geq(cancelled, 8, "%g of 16 queued verifies dropped after the disconnect",
		      cancelled);
	daemon_stop_ok();
}

/*
 * The workers take connections in turn: a show sent while another
 * connection has 15 verifies waiting is answered after the verify running
 * now, not after all of them.
 */
Test(hostile, one_connections_queue_of_jobs_does_not_hold_up_anothers)
{
	const char *args[] = {"--workers", "1", NULL};
	daemon_start(args);
	/* Adapters of a few MB each, so that a verify takes a while. */
	adapter_hidden = 2048;
	import_many(6);
	adapter_hidden = 64;
	struct ls_framer fa, fb;
	int a = raw_open_hello(&fa), b = raw_open_hello(&fb);
	for (uint64_t id = 2; id < 18; id++)
		send_verify(a, id);
	/* The first verify is done: the worker is on the second, 14 wait. */
	Lorastore__Response *resp = raw_answer(a, &fa);
	cr_assert_eq(resp->body_case, LORASTORE__RESPONSE__BODY_VERIFY);
	lorastore__response__free_unpacked(resp, NULL);
	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = "j/0";
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 2;
	req.body_case = LORASTORE__REQUEST__BODY_SHOW;
	req.show = &rr;
	cr_assert_eq(raw_conn_send(b, &req, NULL, 0), 0);
	unsigned a_before = 0;
	for (;;) {
		struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
		cr_assert_gt(poll(p, 2, 10000), 0, "no answer");
		if (p[1].revents & POLLIN) {
			resp = raw_answer(b, &fb);
			cr_assert_null(resp->error, "%s", resp->error ? resp->error->message : "");
			lorastore__response__free_unpacked(resp, NULL);
			break;
		}
		resp = raw_answer(a, &fa);
		lorastore__response__free_unpacked(resp, NULL);
		a_before++;
	}
	/*
	 * In one queue it would wait for all 15; in turns, for the verify or two
	 * in flight.  Answers that a's verifies gave while this process was off
	 * the CPU, before the show was even sent, count too (a loaded machine
	 * runs a few verifies in that gap), hence the margin: well under 15.
	 */
	cr_assert_leq(a_before, 10, "the show waited for %u of the other connection's verifies",
		      a_before);
	ls_framer_free(&fa);
	ls_framer_free(&fb);
	close(a);
	close(b);
	daemon_stop_ok();
}

/* ---- replies that fit */

/*
 * Before: configs with long target_modules lists made one page of a listing
 * larger than a frame may be, and `lorastore ls` failed for everyone.  Pages
 * now end at 8 MiB of records: 20 versions of 900 KB configs (18 MB) come
 * back in several pages, each version once.
 */
Test(hostile, a_listing_of_large_records_is_paged_by_bytes_and_every_page_fits)
{
	daemon_start(NULL);
	lorastore *conn = connect_ok();
	enum { VERSIONS = 20, PAD = 42000 };
	int fds[2];
	adapter_files("big", 300, fds);
	close(fds[0]);
	close(fds[1]);
	char dir[PATH_MAX], path[PATH_MAX + 32];
	snprintf(dir, sizeof(dir), "%s/big", work_dir);
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	size_t len = 0;
	char *cfg = read_file(path, &len);
	char *at = strstr(cfg, "\"target_modules\"");
	cr_assert_not_null(at, "%s", cfg);
	at = strchr(at, '[');
	cr_assert_not_null(at);
	/*
	 * Names that match no module: PEFT lists such, and they only make the
	 * record long.  Each version names them apart, so that each is new
	 * content (the same content again would not be a new version).
	 */
	size_t cap = len + (size_t)PAD * 32;
	char *big = malloc(cap);
	for (int v = 0; v < VERSIONS; v++) {
		size_t n = (size_t)snprintf(big, cap, "%.*s", (int)(at - cfg + 1), cfg);
		for (unsigned i = 0; i < PAD; i++)
			n += (size_t)snprintf(big + n, cap - n, "\"unused_mod%02d_%06u\",", v, i);
		n += (size_t)snprintf(big + n, cap - n, "%s", at + 1);
		FILE *f = fopen(path, "w");
		cr_assert_not_null(f);
		cr_assert_eq(fwrite(big, 1, n, f), n);
		fclose(f);
		lorastore_import_opts io = {.name = "t/long"};
		cr_assert_eq(lorastore_import_dir(conn, dir, &io, NULL), 0, "import %d: %s", v,
			     lorastore_errmsg(conn));
	}
	free(big);
	free(cfg);
	unsigned seen[VERSIONS + 1] = {0}, pages = 0, total = 0;
	char cursor[256] = "";
	do {
		lorastore_list *l = NULL;
		int rc = lorastore_list_page(conn, "t/", cursor[0] ? cursor : NULL, 1000, &l);
		cr_assert_eq(rc, 0, "page %u: %s", pages, lorastore_errmsg(conn));
		pages++;
		for (size_t i = 0; i < lorastore_list_count(l); i++) {
			const lorastore_entry *e = lorastore_list_entry(l, i);
			cr_assert(e->version >= 1 && e->version <= VERSIONS);
			seen[e->version]++;
			total++;
		}
		const char *next = lorastore_list_next(l);
		snprintf(cursor, sizeof(cursor), "%s", next ? next : "");
		lorastore_list_free(l);
	} while (cursor[0] && pages < 100);
	cr_assert_eq(total, VERSIONS, "%u versions listed in %u pages", total, pages);
	for (int v = 1; v <= VERSIONS; v++)
		cr_assert_eq(seen[v], 1, "version %d listed %u times", v, seen[v]);
	cr_assert_geq(pages, 3, "18 MB of records in %u pages", pages);
	/* show carries one whole record: it fits too. */
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_show(conn, "t/long@20", &l), 0, "%s", lorastore_errmsg(conn));
	lorastore_list_free(l);
	lorastore_close(conn);
	daemon_stop_ok();
}

/* ---- requests that cannot be answered, and a second Hello */

/*
 * Before: every connection closed for a frame that does not decode left a
 * warning, and 426,000 of them grew the log by 45 MB.  Now one line per
 * interval says how many more there were.
 */
Test(hostile, requests_that_cannot_be_answered_are_logged_at_a_bounded_rate)
{
	daemon_start(NULL);
	size_t log0 = 0;
	free(read_file(dp.log, &log0));
	uint8_t garbage[4 + 16] = {16, 0, 0, 0};
	memset(garbage + 4, 0xff, 16);
	for (int i = 0; i < 200; i++) {
		int fd = raw_conn_open(dp.socket);
		cr_assert_geq(fd, 0);
		cr_assert_eq(raw_conn_send_bytes(fd, garbage, sizeof(garbage)), 0);
		struct ls_framer f;
		ls_framer_init(&f, 0);
		Lorastore__Response *resp = NULL;
		cr_assert_eq(raw_conn_read(fd, &f, 5000, &resp), -EPIPE,
			     "a frame that does not decode: the connection was not closed");
		ls_framer_free(&f);
		close(fd);
	}
	size_t log1 = 0;
	char *log = read_file(dp.log, &log1);
	unsigned lines = 0;
	for (char *p = log + log0; (p = strstr(p, "; closing")); p++)
		lines++;
	free(log);
	cr_assert_leq(lines, 2, "%u log lines for 200 malformed requests", lines);
	cr_assert_lt(log1 - log0, 4096, "the log grew by %zu bytes", log1 - log0);
	daemon_stop_ok();
}

/* A stats request (id) on fd is answered: the connection goes on after a refusal. */
static void expect_connection_goes_on(int fd, struct ls_framer *f, uint64_t id)
{
	send_stats(fd, id, NULL, 0);
	Lorastore__Response *resp = raw_answer(fd, f);
	cr_assert_eq(resp->body_case, LORASTORE__RESPONSE__BODY_STATS);
	lorastore__response__free_unpacked(resp, NULL);
}

Test(hostile, an_import_with_an_unknown_conversion_is_refused_and_its_files_closed)
{
	daemon_start(NULL);
	struct ls_framer f;
	int fd = raw_open_hello(&f);
	int before = daemon_fd_count();
	int a[2];
	adapter_files("conv", 102, a);
	Lorastore__ImportRequest im = LORASTORE__IMPORT_REQUEST__INIT;
	im.name = "t/conv";
	im.has_config = true;
	im.convert = (Lorastore__Convert)9;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 2;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &im;
	cr_assert_eq(raw_conn_send(fd, &req, a, 2), 0);
	close(a[0]);
	close(a[1]);
	expect_error(raw_answer(fd, &f), 2, "convert 9: expected keep, f16, bf16 or f32");
	int after = daemon_fds_settle(before);
	cr_assert_eq(after, before, "the daemon holds %d descriptors, %d before the import",
		     after, before);
	/* The refusal was of that request alone. */
	expect_connection_goes_on(fd, &f, 3);
	ls_framer_free(&f);
	close(fd);
	daemon_stop_ok();
}

Test(hostile, a_hello_of_protocol_1_is_refused_naming_the_version_spoken)
{
	daemon_start(NULL);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	int fd = raw_conn_open(dp.socket);
	cr_assert_geq(fd, 0);
	Lorastore__Hello h = LORASTORE__HELLO__INIT;
	h.protocol_version = LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 1;
	req.body_case = LORASTORE__REQUEST__BODY_HELLO;
	req.hello = &h;
	cr_assert_eq(raw_conn_send(fd, &req, NULL, 0), 0);
	Lorastore__Response *resp = raw_answer(fd, &f);
	cr_assert_not_null(resp->error);
	cr_assert_eq(resp->error->code, LORASTORE_E_VERSION);
	expect_error(resp, 1, "protocol version 1 is not supported");
	ls_framer_free(&f);
	close(fd);
	daemon_stop_ok();
}

Test(hostile, a_second_hello_on_one_connection_is_refused)
{
	daemon_start(NULL);
	struct ls_framer f;
	int fd = raw_open_hello(&f);
	Lorastore__Hello h = LORASTORE__HELLO__INIT;
	h.protocol_version = LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 2;
	req.body_case = LORASTORE__REQUEST__BODY_HELLO;
	req.hello = &h;
	cr_assert_eq(raw_conn_send(fd, &req, NULL, 0), 0);
	expect_error(raw_answer(fd, &f), 2, "already said Hello");
	expect_connection_goes_on(fd, &f, 3);
	ls_framer_free(&f);
	close(fd);
	daemon_stop_ok();
}
