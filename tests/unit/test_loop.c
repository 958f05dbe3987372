/*
 * Tests of the daemon's event loop (daemon/loop.h).  Every behaviour runs on
 * both engines, as uring_<what it proves> and epoll_<what it proves>, over
 * real sockets, files and eventfds.  The io_uring variants skip, saying
 * why, where the kernel or a sandbox refuses io_uring.  A completion that
 * never comes fails its test at a deadline rather than hanging it.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

#define CONTAINER(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* How long a test waits for a completion before it fails (ms). */
#define DEADLINE_MS 5000
/* Submission entries, as lorastored asks for (main.c). */
#define ENTRIES 1024

TestSuite(loop, .timeout = 30);

/* ---- Operations and what their completions said */

/* A message header with its one buffer and room for a few descriptors. */
struct msg {
	struct msghdr h;
	struct iovec iov;
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} ctl;
};

/* One operation, its message, and what its completions said. */
struct rec {
	struct ls_op op;
	struct msg m;
	int res;                     /* the last completion's result */
	int count;                   /* completions delivered */
	int seq;                     /* the last one's place among all completions */
	bool op_pending_in_fn;       /* op->pending as the callback saw it */
	unsigned loop_pending_in_fn; /* loop->pending as the callback saw it */
};

static int completions; /* every completion in this test, counted in order */

static void rec_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct rec *r = CONTAINER(op, struct rec, op);
	r->res = res;
	r->count++;
	r->seq = ++completions;
	r->op_pending_in_fn = op->pending;
	r->loop_pending_in_fn = loop->pending;
}

#define RECV (-2) /* msg_set's fd for a receive */

/*
 * Describe buf in m: for a receive (fd RECV) with room for descriptors, for
 * a send with fd as SCM_RIGHTS when fd >= 0.
 */
static struct msghdr *msg_set(struct msg *m, const void *buf, size_t len, int fd)
{
	memset(m, 0, sizeof(*m));
	m->iov = (struct iovec){.iov_base = (void *)buf, .iov_len = len};
	m->h.msg_iov = &m->iov;
	m->h.msg_iovlen = 1;
	if (fd == RECV || fd >= 0) {
		m->h.msg_control = m->ctl.buf;
		m->h.msg_controllen = fd == RECV ? sizeof(m->ctl.buf) : CMSG_SPACE(sizeof(int));
	}
	if (fd >= 0) {
		struct cmsghdr *c = CMSG_FIRSTHDR(&m->h);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	return &m->h;
}

/* The descriptors a received message carried: how many; the first in *fd (else -1). */
static int msg_fds(struct msghdr *m, int *fd)
{
	int n = 0;
	*fd = -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		if (n == 0 && k > 0)
			memcpy(fd, CMSG_DATA(c), sizeof(int));
		n += k;
	}
	return n;
}

static void submit_recv(struct ls_loop *loop, struct rec *r, int fd, void *buf, size_t len)
{
	struct msghdr *m = msg_set(&r->m, buf, len, RECV);
	ls_loop_recvmsg(loop, &r->op, rec_done, fd, m, MSG_CMSG_CLOEXEC); /* as the daemon does */
}

static void submit_send(struct ls_loop *loop, struct rec *r, int fd, const void *buf, size_t len,
			int passfd)
{
	ls_loop_sendmsg(loop, &r->op, rec_done, fd, msg_set(&r->m, buf, len, passfd), MSG_NOSIGNAL);
}

/* ---- Driving the loop */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Run the loop until *count reaches want: false when DEADLINE_MS passes first. */
static bool run_until(struct ls_loop *loop, const int *count, int want)
{
	int64_t end = now_ms() + DEADLINE_MS;
	while (*count < want) {
		int64_t left = end - now_ms();
		if (left <= 0)
			return false;
		int n = ls_loop_run_once(loop, left < 50 ? (int)left : 50);
		cr_assert_geq(n, 0, "ls_loop_run_once: %s", strerror(-n));
	}
	return true;
}

static void await(struct ls_loop *loop, const int *count, int want, const char *what)
{
	cr_assert(run_until(loop, count, want), "%s: no completion within %d ms (%d of %d)", what,
		  DEADLINE_MS, *count, want);
}

/* Run the loop for ms; the completions dispatched meanwhile. */
static int run_for(struct ls_loop *loop, int ms)
{
	int total = 0;
	int64_t end = now_ms() + ms;
	for (int64_t left = ms; left > 0; left = end - now_ms()) {
		int n = ls_loop_run_once(loop, (int)left);
		cr_assert_geq(n, 0, "ls_loop_run_once: %s", strerror(-n));
		total += n;
	}
	return total;
}

/* Nothing completes for ms: the operations submitted are waiting, not done. */
static void assert_quiet(struct ls_loop *loop, int ms, const char *what)
{
	int n = run_for(loop, ms);
	cr_assert_eq(n, 0, "%s: %d completion(s) with nothing to complete", what, n);
}

/* ---- Engines: every LOOP_TEST runs once per engine, on a loop of its own */

/* Whether an io_uring failure is a refusal by the kernel or a sandbox, as loop.c judges. */
static bool uring_refused(int rc)
{
	return rc == -EPERM || rc == -EACCES || rc == -ENOSYS || rc == -EINVAL ||
	       rc == -ENOMEM || rc == -EOPNOTSUPP;
}

static void with_loop(enum ls_loop_kind kind, void (*body)(struct ls_loop *))
{
	struct ls_loop loop;
	struct ls_err err;
	ls_err_clear(&err);
	int rc = ls_loop_init(&loop, kind, ENTRIES, &err);
	if (rc && kind == LS_LOOP_IO_URING && uring_refused(rc))
		cr_skip_test("io_uring is refused here: %s", err.msg);
	cr_assert_eq(rc, 0, "ls_loop_init(%s): %s", ls_loop_kind_name(kind), err.msg);
	cr_assert_str_eq(ls_loop_name(&loop), ls_loop_kind_name(kind));
	completions = 0;
	body(&loop);
	cr_assert_eq(loop.pending, 0, "%u operation(s) still pending at the end", loop.pending);
	ls_loop_destroy(&loop);
}

#define LOOP_TEST(name)                                                                       \
	static void name(struct ls_loop *loop);                                               \
	Test(loop, uring_##name) { with_loop(LS_LOOP_IO_URING, name); }                       \
	Test(loop, epoll_##name) { with_loop(LS_LOOP_EPOLL, name); }                          \
	static void name(struct ls_loop *loop)

/* ---- Peers, descriptors, files */

static void make_pair(int sv[2])
{
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0, "socketpair: %s",
		     strerror(errno));
}

/* Close the loop's end of a pair as the daemon does, and the peer's end. */
static void close_pair(struct ls_loop *loop, int sv[2])
{
	ls_loop_close_fd(loop, sv[0]);
	close(sv[1]);
}

/* A blocking send on the peer's side, all of it. */
static void peer_send(int sock, const void *buf, size_t len, int fd)
{
	struct msg m;
	ssize_t n = sendmsg(sock, msg_set(&m, buf, len, fd), MSG_NOSIGNAL);
	cr_assert_eq(n, (ssize_t)len, "peer sendmsg: %zd (%s)", n, strerror(errno));
}

/* A blocking receive on the peer's side; the descriptor that came in *fd (else -1). */
static ssize_t peer_recv(int sock, void *buf, size_t len, int *fd)
{
	struct msg m;
	ssize_t n = recvmsg(sock, msg_set(&m, buf, len, RECV), MSG_CMSG_CLOEXEC);
	cr_assert_geq(n, 0, "peer recvmsg: %s", strerror(errno));
	msg_fds(&m.h, fd);
	return n;
}

/* fd is a working write end of the pipe whose read end is rd; closed after. */
static void assert_pipe_writer(int fd, int rd)
{
	cr_assert_geq(fd, 0, "no descriptor came with the message");
	cr_assert_eq(write(fd, "ping", 4), 4, "write through the passed descriptor: %s",
		     strerror(errno));
	char b[4];
	cr_assert_eq(read(rd, b, 4), 4, "read from the pipe: %s", strerror(errno));
	cr_assert_arr_eq(b, "ping", 4);
	close(fd);
}

static void assert_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	cr_assert(fl >= 0 && (fl & FD_CLOEXEC), "descriptor %d is not close-on-exec", fd);
}

/* A byte of the test pattern at offset i: no short period, so a chunk out of place shows. */
static uint8_t pattern(size_t i)
{
	return (uint8_t)(((uint32_t)i * 2654435761u) >> 24);
}

static const char *tmp_root(void)
{
	const char *t = getenv("TMPDIR");
	return t && *t ? t : "/tmp";
}

/* A temporary file of len pattern bytes; its path in path (the caller unlinks it). */
static int make_file(char path[PATH_MAX], size_t len)
{
	snprintf(path, PATH_MAX, "%s/ls_loop_XXXXXX", tmp_root());
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
	uint8_t *b = malloc(len);
	cr_assert_not_null(b);
	for (size_t i = 0; i < len; i++)
		b[i] = pattern(i);
	cr_assert_eq(write(fd, b, len), (ssize_t)len, "write: %s", strerror(errno));
	free(b);
	return fd;
}

static void assert_pattern(const uint8_t *b, size_t len, size_t offset)
{
	for (size_t i = 0; i < len; i++)
		cr_assert_eq(b[i], pattern(offset + i), "byte %zu of the file differs", offset + i);
}

/* ---- Threads on the other side */

/* Writes 1 to an eventfd after ms, from another thread. */
struct delayed_write {
	pthread_t t;
	int fd, ms;
	int err; /* errno of a failed write, or 0 */
};

static void *delayed_write_main(void *arg)
{
	struct delayed_write *w = arg;
	usleep((useconds_t)w->ms * 1000);
	uint64_t one = 1;
	if (write(w->fd, &one, sizeof(one)) != sizeof(one))
		w->err = errno;
	return NULL;
}

/* Reads a socket to end of stream, checking the pattern, pausing now and then. */
struct reader {
	pthread_t t;
	int fd;
	size_t got;    /* bytes read */
	size_t bad_at; /* the first offset whose byte differs, or SIZE_MAX */
	int err;       /* errno of a failed read, or 0 */
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	static uint8_t buf[65536];
	size_t next_pause = 256 * 1024;
	for (;;) {
		ssize_t n = recv(r->fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r->err = errno;
		if (n <= 0)
			return NULL;
		for (ssize_t i = 0; i < n && r->bad_at == SIZE_MAX; i++)
			if (buf[i] != pattern(r->got + (size_t)i))
				r->bad_at = r->got + (size_t)i;
		r->got += (size_t)n;
		if (r->got >= next_pause) {
			usleep(2000);
			next_pause += 256 * 1024;
		}
	}
}

/* ---- Accept and receive */

LOOP_TEST(accept_gives_a_close_on_exec_descriptor_that_receives_what_the_client_sent)
{
	char dir[80]; /* with "/sock", short enough for sun_path */
	int len = snprintf(dir, sizeof(dir), "%s/ls_loop_XXXXXX", tmp_root());
	cr_assert_lt(len, (int)sizeof(dir), "TMPDIR is too long for a socket path");
	cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/sock", dir);
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&addr, sizeof(addr)), 0, "bind: %s",
		     strerror(errno));
	cr_assert_eq(listen(lfd, 8), 0);

	struct rec a = {0};
	ls_loop_accept(loop, &a.op, rec_done, lfd);
	assert_quiet(loop, 20, "accept with no client");
	int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(connect(cfd, (struct sockaddr *)&addr, sizeof(addr)), 0, "connect: %s",
		     strerror(errno));
	peer_send(cfd, "hello", 5, -1);
	await(loop, &a.count, 1, "accept");
	cr_assert_geq(a.res, 0, "accept: %s", strerror(-a.res));
	assert_cloexec(a.res);

	struct rec r = {0};
	char buf[64];
	submit_recv(loop, &r, a.res, buf, sizeof(buf));
	await(loop, &r.count, 1, "recvmsg on the accepted connection");
	cr_assert_eq(r.res, 5, "recvmsg: %d", r.res);
	cr_assert_arr_eq(buf, "hello", 5);

	ls_loop_close_fd(loop, a.res);
	close(cfd);
	close(lfd);
	unlink(addr.sun_path);
	rmdir(dir);
}

LOOP_TEST(recvmsg_gives_the_bytes_and_a_usable_descriptor_sent_with_scm_rights)
{
	int sv[2], p[2];
	make_pair(sv);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	peer_send(sv[1], "abc", 3, p[1]);

	struct rec r = {0};
	char buf[64];
	submit_recv(loop, &r, sv[0], buf, sizeof(buf));
	await(loop, &r.count, 1, "recvmsg");
	cr_assert_eq(r.res, 3, "recvmsg: %d", r.res);
	cr_assert_arr_eq(buf, "abc", 3);
	int fd;
	cr_assert_eq(msg_fds(&r.m.h, &fd), 1, "descriptors received");
	assert_cloexec(fd); /* MSG_CMSG_CLOEXEC, as the daemon receives */
	assert_pipe_writer(fd, p[0]);
	close(p[0]);
	close(p[1]);
	close_pair(loop, sv);
}

/*
 * The peer sends "first" and "second" back to back, the descriptor with one
 * of them, to a receive already parked; receives follow until all 11 bytes
 * came.
 */
static void two_messages_sent_together(struct ls_loop *loop, bool fd_first)
{
	int sv[2], p[2];
	make_pair(sv);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	struct rec r = {0};
	char buf[128];
	size_t got = 0;
	int n = 0, fd = -1;
	/* Parked first, so that both messages come with a single wakeup. */
	submit_recv(loop, &r, sv[0], buf, 64);
	assert_quiet(loop, 20, "recvmsg on an empty socket");
	peer_send(sv[1], "first", 5, fd_first ? p[1] : -1);
	peer_send(sv[1], "second", 6, fd_first ? -1 : p[1]);
	for (;;) {
		await(loop, &r.count, ++n, "recvmsg of the next message");
		cr_assert_gt(r.res, 0, "recvmsg %d: %d", n, r.res);
		/* The kernel ends a receive after a message with descriptors. */
		if (n == 1 && fd_first)
			cr_assert_eq(r.res, 5, "the first receive goes past its message");
		got += (size_t)r.res;
		int f, k = msg_fds(&r.m.h, &f);
		cr_assert(k == 0 || (k == 1 && fd < 0), "recvmsg %d brought %d more fds", n, k);
		if (k)
			fd = f;
		if (got >= 11)
			break;
		cr_assert_lt(n, 8, "too many receives for 11 bytes");
		submit_recv(loop, &r, sv[0], buf + got, 64);
	}
	cr_assert_eq(got, 11, "bytes received");
	cr_assert_arr_eq(buf, "firstsecond", 11);
	assert_pipe_writer(fd, p[0]);
	close(p[0]);
	close(p[1]);
	close_pair(loop, sv);
}

LOOP_TEST(a_descriptor_message_then_a_plain_one_sent_together_are_both_received)
{
	two_messages_sent_together(loop, true);
}

LOOP_TEST(a_plain_message_then_a_descriptor_message_sent_together_are_both_received)
{
	two_messages_sent_together(loop, false);
}

/* One receive of exactly what the peer wrote, the peer writing after or before the submit. */
static void recv_one(struct ls_loop *loop, struct rec *r, int sv[2], const char *s, bool early)
{
	char buf[64];
	size_t len = strlen(s);
	int want = r->count + 1;
	if (early)
		peer_send(sv[1], s, len, -1);
	submit_recv(loop, r, sv[0], buf, sizeof(buf));
	if (!early) {
		assert_quiet(loop, 20, "recvmsg on an empty socket");
		cr_assert(r->op.pending && loop->pending == 1, "the recvmsg is not waiting");
		peer_send(sv[1], s, len, -1);
	}
	await(loop, &r->count, want, s);
	cr_assert_eq(r->res, (int)len, "recvmsg of \"%s\": %d", s, r->res);
	cr_assert_arr_eq(buf, s, len);
}

LOOP_TEST(a_receive_parks_until_the_peer_writes)
{
	int sv[2];
	make_pair(sv);
	struct rec r = {0};
	recv_one(loop, &r, sv, "wake", false);
	close_pair(loop, sv);
}

LOOP_TEST(a_receive_after_a_short_receive_that_emptied_the_socket_completes_when_more_data_comes)
{
	int sv[2];
	make_pair(sv);
	struct rec r = {0};
	/* Short receives each empty the socket; the next data comes before or after the submit. */
	recv_one(loop, &r, sv, "a", true);  /* a socket never parked */
	recv_one(loop, &r, sv, "bb", true); /* data came between the receives */
	recv_one(loop, &r, sv, "ccc", false);
	recv_one(loop, &r, sv, "dddd", true); /* now on a socket that has parked */
	recv_one(loop, &r, sv, "eeeee", false);
	close_pair(loop, sv);
}

LOOP_TEST(end_of_stream_completes_a_parked_receive_with_0)
{
	int sv[2];
	make_pair(sv);
	struct rec r = {0};
	char buf[64];
	submit_recv(loop, &r, sv[0], buf, sizeof(buf));
	assert_quiet(loop, 20, "recvmsg on an empty socket");
	close(sv[1]);
	await(loop, &r.count, 1, "recvmsg at end of stream");
	cr_assert_eq(r.res, 0, "recvmsg: %d", r.res);
	ls_loop_close_fd(loop, sv[0]);
}

LOOP_TEST(data_and_end_of_stream_arriving_together_give_the_data_then_0)
{
	int sv[2];
	make_pair(sv);
	struct rec r = {0};
	char buf[64];
	submit_recv(loop, &r, sv[0], buf, sizeof(buf));
	assert_quiet(loop, 20, "recvmsg on an empty socket");
	/* The last request of a client that then goes: one wakeup of the loop for both. */
	peer_send(sv[1], "last", 4, -1);
	close(sv[1]);
	await(loop, &r.count, 1, "recvmsg of the data");
	cr_assert_eq(r.res, 4, "recvmsg: %d", r.res);
	submit_recv(loop, &r, sv[0], buf, sizeof(buf));
	await(loop, &r.count, 2, "recvmsg at end of stream after the data");
	cr_assert_eq(r.res, 0, "recvmsg: %d", r.res);
	ls_loop_close_fd(loop, sv[0]);
}

/* ---- Send */

LOOP_TEST(sendmsg_passes_bytes_and_a_usable_descriptor_with_scm_rights)
{
	int sv[2], p[2];
	make_pair(sv);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	struct rec s = {0};
	submit_send(loop, &s, sv[0], "reply", 5, p[1]);
	await(loop, &s.count, 1, "sendmsg");
	cr_assert_eq(s.res, 5, "sendmsg: %d", s.res);

	char buf[64];
	int fd;
	cr_assert_eq(peer_recv(sv[1], buf, sizeof(buf), &fd), 5);
	cr_assert_arr_eq(buf, "reply", 5);
	assert_pipe_writer(fd, p[0]);
	close(p[0]);
	close(p[1]);
	close_pair(loop, sv);
}

/* Sends a buffer through as many sends as it takes, each from where the last ended. */
struct chain {
	struct rec r;
	int fd;
	const uint8_t *buf;
	size_t len, off;
	int sends; /* completions */
	int done;  /* 1 once all was sent or a send failed */
	int err;   /* the failed send's result */
};

static void chain_next(struct ls_loop *loop, struct chain *c);

static void chain_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct chain *c = CONTAINER(op, struct chain, r.op);
	c->sends++;
	if (res <= 0) {
		c->err = res ? res : -EIO;
		c->done = 1;
		return;
	}
	c->off += (size_t)res;
	if (c->off >= c->len)
		c->done = 1;
	else
		chain_next(loop, c);
}

static void chain_next(struct ls_loop *loop, struct chain *c)
{
	struct msghdr *m = msg_set(&c->r.m, c->buf + c->off, c->len - c->off, -1);
	ls_loop_sendmsg(loop, &c->r.op, chain_done, c->fd, m, MSG_NOSIGNAL);
}

LOOP_TEST(a_send_that_would_block_parks_and_completes_when_the_peer_reads)
{
	enum { LEN = 4 << 20 };
	int sv[2];
	make_pair(sv);
	int sndbuf = 8192;
	cr_assert_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	uint8_t *buf = malloc(LEN);
	cr_assert_not_null(buf);
	for (size_t i = 0; i < LEN; i++)
		buf[i] = pattern(i);

	struct chain c = {.fd = sv[0], .buf = buf, .len = LEN};
	chain_next(loop, &c);
	run_for(loop, 200);
	cr_assert_eq(c.err, 0, "sendmsg: %s", strerror(-c.err));
	cr_assert(!c.done && c.r.op.pending, "all %d bytes went with nobody reading", LEN);
	cr_assert_gt(c.off, 0, "nothing was sent into an empty socket");

	struct reader rd = {.fd = sv[1], .bad_at = SIZE_MAX};
	cr_assert_eq(pthread_create(&rd.t, NULL, reader_main, &rd), 0);
	await(loop, &c.done, 1, "the rest of the sends");
	shutdown(sv[0], SHUT_WR);
	pthread_join(rd.t, NULL);
	cr_assert_eq(c.err, 0, "sendmsg: %s", strerror(-c.err));
	cr_assert_eq(c.off, (size_t)LEN, "bytes sent");
	cr_assert_gt(c.sends, 1, "sends (a full socket buffer cuts sends short)");
	cr_assert_eq(rd.err, 0, "peer recv: %s", strerror(rd.err));
	cr_assert_eq(rd.got, (size_t)LEN, "bytes the peer read");
	cr_assert_eq(rd.bad_at, SIZE_MAX, "byte %zu arrived wrong", rd.bad_at);

	free(buf);
	close_pair(loop, sv);
}

/* ---- File reads */

/* A read of len at offset; its result. */
static int read_at(struct ls_loop *loop, int fd, void *buf, uint32_t len, uint64_t offset)
{
	struct rec r = {0};
	ls_loop_read(loop, &r.op, rec_done, fd, buf, len, offset);
	await(loop, &r.count, 1, "read");
	return r.res;
}

LOOP_TEST(read_gives_the_bytes_at_an_offset_and_0_past_the_end)
{
	enum { SIZE = 65536 };
	char path[PATH_MAX];
	int fd = make_file(path, SIZE);
	unlink(path);
	uint8_t buf[4096];
	cr_assert_eq(read_at(loop, fd, buf, 1000, 12345), 1000, "read inside the file");
	assert_pattern(buf, 1000, 12345);
	cr_assert_eq(read_at(loop, fd, buf, sizeof(buf), SIZE - 10), 10, "read across the end");
	assert_pattern(buf, 10, SIZE - 10);
	cr_assert_eq(read_at(loop, fd, buf, sizeof(buf), SIZE), 0, "read at the end");
	cr_assert_eq(read_at(loop, fd, buf, sizeof(buf), SIZE + 4096), 0, "read past the end");
	close(fd);
}

LOOP_TEST(read_on_a_closed_descriptor_or_a_directory_gives_a_negative_errno)
{
	uint8_t buf[64];
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	close(fd);
	int res = read_at(loop, fd, buf, sizeof(buf), 0);
	cr_assert_eq(res, -EBADF, "read of a closed descriptor: %d (%s)", res, strerror(-res));
	int dfd = open(tmp_root(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(dfd, 0);
	res = read_at(loop, dfd, buf, sizeof(buf), 0);
	cr_assert_eq(res, -EISDIR, "read of a directory: %d (%s)", res, strerror(-res));
	close(dfd);
}

LOOP_TEST(read_of_an_o_direct_file_into_an_aligned_buffer_gives_the_bytes)
{
	enum { SIZE = 65536, ALIGN = 4096 };
	char path[PATH_MAX];
	int wfd = make_file(path, SIZE);
	fsync(wfd);
	close(wfd);
	int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	int open_errno = errno;
	unlink(path);
	if (fd < 0 && open_errno == EINVAL)
		cr_skip_test("the filesystem of %s refuses O_DIRECT", tmp_root());
	cr_assert_geq(fd, 0, "open O_DIRECT: %s", strerror(open_errno));
	void *buf;
	cr_assert_eq(posix_memalign(&buf, ALIGN, 2 * ALIGN), 0);
	int res = read_at(loop, fd, buf, 2 * ALIGN, 3 * ALIGN);
	cr_assert_eq(res, 2 * ALIGN, "O_DIRECT read: %d (%s)", res, res < 0 ? strerror(-res) : "");
	assert_pattern(buf, 2 * ALIGN, 3 * ALIGN);
	cr_assert_eq(read_at(loop, fd, buf, ALIGN, SIZE), 0, "O_DIRECT read at the end");
	free(buf);
	close(fd);
}

/* ---- Polls and timeouts */

LOOP_TEST(poll_in_on_an_eventfd_fires_only_once_written_and_again_when_rearmed)
{
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	cr_assert_geq(efd, 0);
	struct rec p = {0};
	for (int round = 1; round <= 2; round++) {
		ls_loop_poll_in(loop, &p.op, rec_done, efd);
		assert_quiet(loop, 30, "poll of an unwritten eventfd");
		struct delayed_write w = {.fd = efd, .ms = 20};
		cr_assert_eq(pthread_create(&w.t, NULL, delayed_write_main, &w), 0);
		await(loop, &p.count, round, "poll of a written eventfd");
		pthread_join(w.t, NULL);
		cr_assert_eq(w.err, 0, "the other thread's write: %s", strerror(w.err));
		cr_assert_gt(p.res, 0, "poll: %d", p.res);
		cr_assert(p.res & POLLIN, "poll events %#x lack POLLIN", (unsigned)p.res);
		uint64_t v = 0;
		cr_assert_eq(read(efd, &v, sizeof(v)), (ssize_t)sizeof(v));
		cr_assert_eq(v, 1);
	}
	ls_loop_close_fd(loop, efd);
}

LOOP_TEST(a_50_ms_timeout_completes_with_etime_no_earlier_than_45_ms)
{
	struct rec t = {0};
	int64_t t0 = now_ms();
	ls_loop_timeout(loop, &t.op, rec_done, 50);
	await(loop, &t.count, 1, "timeout");
	int64_t took = now_ms() - t0;
	cr_assert_eq(t.res, -ETIME, "timeout: %d", t.res);
	cr_assert_geq(took, 45, "a 50 ms timeout came after %lld ms", (long long)took);
	cr_assert_lt(took, 1000, "a 50 ms timeout came after %lld ms", (long long)took);
}

LOOP_TEST(timeouts_complete_in_deadline_order)
{
	struct rec t[3];
	memset(t, 0, sizeof(t));
	static const unsigned ms[3] = {90, 30, 60};
	for (int i = 0; i < 3; i++)
		ls_loop_timeout(loop, &t[i].op, rec_done, ms[i]);
	await(loop, &completions, 3, "timeouts");
	for (int i = 0; i < 3; i++)
		cr_assert_eq(t[i].res, -ETIME, "timeout of %u ms: %d", ms[i], t[i].res);
	cr_assert(t[1].seq < t[2].seq && t[2].seq < t[0].seq,
		  "order of 30, 60, 90 ms: %d, %d, %d", t[1].seq, t[2].seq, t[0].seq);
}

/* ---- Cancel, close, counts */

LOOP_TEST(cancel_of_a_parked_receive_completes_it_with_ecanceled)
{
	int sv[2];
	make_pair(sv);
	struct rec r = {0};
	char buf[64];
	submit_recv(loop, &r, sv[0], buf, sizeof(buf));
	assert_quiet(loop, 20, "recvmsg on an empty socket");
	ls_loop_cancel(loop, &r.op);
	await(loop, &r.count, 1, "the cancelled recvmsg");
	/* loop.h: -ECANCELED, or its own result had it finished (it cannot: no data came). */
	cr_assert_eq(r.res, -ECANCELED, "cancelled recvmsg: %d (%s)", r.res, strerror(-r.res));
	cr_assert(!r.op.pending);
	ls_loop_cancel(loop, &r.op); /* not pending: nothing */
	assert_quiet(loop, 20, "cancel of a completed operation");
	cr_assert_eq(r.count, 1);
	close_pair(loop, sv);
}

LOOP_TEST(cancel_of_a_pending_timeout_completes_it_with_ecanceled)
{
	struct rec t = {0};
	int64_t t0 = now_ms();
	ls_loop_timeout(loop, &t.op, rec_done, 10000);
	assert_quiet(loop, 20, "a 10 s timeout");
	ls_loop_cancel(loop, &t.op);
	await(loop, &t.count, 1, "the cancelled timeout");
	cr_assert_eq(t.res, -ECANCELED, "cancelled timeout: %d", t.res);
	cr_assert_lt(now_ms() - t0, 1000, "the cancel waited for the timeout");
	cr_assert(!t.op.pending);
}

LOOP_TEST(cancel_right_after_submit_completes_once_with_ecanceled_or_the_result)
{
	int sv[2];
	make_pair(sv);
	peer_send(sv[1], "x", 1, -1);
	struct rec r = {0};
	char buf[64];
	submit_recv(loop, &r, sv[0], buf, sizeof(buf));
	ls_loop_cancel(loop, &r.op);
	await(loop, &r.count, 1, "the cancelled recvmsg");
	cr_assert(r.res == -ECANCELED || r.res == 1, "recvmsg cancelled at once: %d", r.res);
	if (r.res == 1)
		cr_assert_eq(buf[0], 'x');
	assert_quiet(loop, 20, "after the one completion");
	cr_assert_eq(r.count, 1);
	close_pair(loop, sv);
}

/* Fill sock's send buffer (made small) until a send would block. */
static void fill_send_buffer(int sock)
{
	int sndbuf = 4096;
	cr_assert_eq(setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	static char junk[4096];
	for (int i = 0;; i++) {
		cr_assert_lt(i, 10000, "the send buffer never filled");
		if (send(sock, junk, sizeof(junk), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
			cr_assert_eq(errno, EAGAIN, "send: %s", strerror(errno));
			return;
		}
	}
}

LOOP_TEST(cancel_fd_cancels_a_parked_receive_and_a_parked_send_on_one_socket)
{
	int sv[2];
	make_pair(sv);
	fill_send_buffer(sv[0]);
	struct rec r = {0}, s = {0};
	char buf[64];
	submit_recv(loop, &r, sv[0], buf, sizeof(buf));
	submit_send(loop, &s, sv[0], "more", 4, -1);
	assert_quiet(loop, 30, "recvmsg on an empty socket and sendmsg on a full one");
	cr_assert_eq(loop->pending, 2);
	ls_loop_cancel_fd(loop, sv[0]);
	await(loop, &completions, 2, "the cancelled operations");
	cr_assert_eq(r.res, -ECANCELED, "recvmsg: %d (%s)", r.res, strerror(-r.res));
	cr_assert_eq(s.res, -ECANCELED, "sendmsg: %d (%s)", s.res, strerror(-s.res));
	cr_assert(!r.op.pending && !s.op.pending);
	close_pair(loop, sv);
}

LOOP_TEST(a_descriptor_number_closed_with_close_fd_and_reused_works_with_the_loop)
{
	int sv[2];
	make_pair(sv);
	struct rec r = {0};
	char buf[64];
	recv_one(loop, &r, sv, "parked", false);
	submit_recv(loop, &r, sv[0], buf, sizeof(buf));
	assert_quiet(loop, 20, "recvmsg on an empty socket");
	ls_loop_cancel(loop, &r.op);
	await(loop, &r.count, 2, "the cancelled recvmsg");
	cr_assert_eq(r.res, -ECANCELED);
	int old = sv[0];
	close_pair(loop, sv);

	make_pair(sv);
	if (sv[0] != old) {
		cr_assert_eq(dup3(sv[0], old, O_CLOEXEC), old, "dup3: %s", strerror(errno));
		close(sv[0]);
		sv[0] = old;
	}
	struct rec n = {0};
	recv_one(loop, &n, sv, "again", false);
	recv_one(loop, &n, sv, "and again", false);
	struct rec s = {0};
	submit_send(loop, &s, sv[0], "out", 3, -1);
	await(loop, &s.count, 1, "sendmsg on the reused number");
	cr_assert_eq(s.res, 3, "sendmsg: %d", s.res);
	int fd;
	cr_assert_eq(peer_recv(sv[1], buf, sizeof(buf), &fd), 3);
	close_pair(loop, sv);
}

LOOP_TEST(pending_counts_submitted_operations_until_each_completes)
{
	int sv[2];
	make_pair(sv);
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	cr_assert_geq(efd, 0);
	char path[PATH_MAX];
	int ffd = make_file(path, 4096);
	unlink(path);

	struct rec rd = {0}, tm = {0}, pl = {0}, rv = {0};
	char buf[64], fbuf[64];
	cr_assert_eq(loop->pending, 0);
	ls_loop_read(loop, &rd.op, rec_done, ffd, fbuf, sizeof(fbuf), 0);
	cr_assert_eq(loop->pending, 1);
	ls_loop_timeout(loop, &tm.op, rec_done, 40);
	cr_assert_eq(loop->pending, 2);
	ls_loop_poll_in(loop, &pl.op, rec_done, efd);
	cr_assert_eq(loop->pending, 3);
	submit_recv(loop, &rv, sv[0], buf, sizeof(buf));
	cr_assert_eq(loop->pending, 4);
	cr_assert(rd.op.pending && tm.op.pending && pl.op.pending && rv.op.pending);

	await(loop, &rd.count, 1, "read");
	cr_assert_eq(rd.res, (int)sizeof(fbuf), "read: %d", rd.res);
	cr_assert_eq(loop->pending, 3);
	await(loop, &tm.count, 1, "timeout");
	cr_assert_eq(tm.res, -ETIME);
	cr_assert_eq(loop->pending, 2);
	uint64_t one = 1;
	cr_assert_eq(write(efd, &one, sizeof(one)), (ssize_t)sizeof(one));
	await(loop, &pl.count, 1, "poll");
	cr_assert(pl.res & POLLIN, "poll: %d", pl.res);
	cr_assert_eq(loop->pending, 1);
	peer_send(sv[1], "z", 1, -1);
	await(loop, &rv.count, 1, "recvmsg");
	cr_assert_eq(rv.res, 1);
	cr_assert_eq(loop->pending, 0);

	/* Each callback saw its op done and the count already down by it. */
	struct rec *all[4] = {&rd, &tm, &pl, &rv};
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(all[i]->count, 1);
		cr_assert(!all[i]->op_pending_in_fn, "op %d was still pending in its callback", i);
		cr_assert_eq(all[i]->loop_pending_in_fn, 4u - (unsigned)all[i]->seq,
			     "loop->pending in callback %d", i);
	}
	close(ffd);
	ls_loop_close_fd(loop, efd);
	close_pair(loop, sv);
}

LOOP_TEST(sixty_four_parked_receives_each_complete_exactly_once)
{
	enum { N = 64 };
	static int sv[N][2];
	static struct rec r[N];
	static char buf[N][32];
	memset(r, 0, sizeof(r));
	for (int i = 0; i < N; i++) {
		make_pair(sv[i]);
		submit_recv(loop, &r[i], sv[i][0], buf[i], sizeof(buf[i]));
	}
	assert_quiet(loop, 30, "64 recvmsg on empty sockets");
	cr_assert_eq(loop->pending, N);
	for (int i = 0; i < N; i++) {
		char s[16];
		int len = snprintf(s, sizeof(s), "message %d", i);
		peer_send(sv[i][1], s, (size_t)len, -1);
	}
	await(loop, &completions, N, "64 recvmsg");
	assert_quiet(loop, 30, "after all 64");
	for (int i = 0; i < N; i++) {
		char s[16];
		int len = snprintf(s, sizeof(s), "message %d", i);
		cr_assert_eq(r[i].count, 1, "socket %d: %d completions", i, r[i].count);
		cr_assert_eq(r[i].res, len, "socket %d: recvmsg %d", i, r[i].res);
		cr_assert_arr_eq(buf[i], s, (size_t)len, "socket %d", i);
		ls_loop_close_fd(loop, sv[i][0]);
		close(sv[i][1]);
	}
}

/* ---- Choosing an engine */

Test(loop, auto_runs_io_uring_where_allowed_else_epoll_and_epoll_asked_for_runs_epoll)
{
	struct ls_loop loop;
	struct ls_err err;
	ls_err_clear(&err);
	int rc = ls_loop_init(&loop, LS_LOOP_IO_URING, ENTRIES, &err);
	bool uring = rc == 0;
	if (uring) {
		cr_assert_str_eq(ls_loop_name(&loop), "io_uring");
		ls_loop_destroy(&loop);
	} else {
		cr_assert(uring_refused(rc), "io_uring failed, not refused: %s", err.msg);
		cr_assert(strstr(err.msg, "--event-loop epoll"), "no way out named: %s", err.msg);
	}
	static const enum ls_loop_kind kinds[] = {LS_LOOP_AUTO, LS_LOOP_EPOLL};
	for (int i = 0; i < 2; i++) {
		ls_err_clear(&err);
		rc = ls_loop_init(&loop, kinds[i], ENTRIES, &err);
		cr_assert_eq(rc, 0, "ls_loop_init(%s): %s", ls_loop_kind_name(kinds[i]), err.msg);
		cr_assert_str_eq(ls_loop_name(&loop), i == 0 && uring ? "io_uring" : "epoll");
		ls_loop_destroy(&loop);
		cr_assert_str_eq(ls_loop_name(&loop), "none");
	}
}
