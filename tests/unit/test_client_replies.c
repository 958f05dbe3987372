/*
 * liblorastore against a daemon that answers out of turn: a fake lorastored
 * on a socket of the test, speaking the protocol from plain frames, so that
 * a reply no real daemon sends can be sent.
 */
#define _GNU_SOURCE /* memfd_create */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <lorastore.h>

#include "frame.h"
#include "synth.h"

static char *work_dir;
static char sock_path[256];
static sem_t sent; /* posted once the fake daemon has sent and closed its slabs */

static void setup(void)
{
	work_dir = synth_mkdtemp("client-replies");
	snprintf(sock_path, sizeof(sock_path), "%s/fake.sock", work_dir);
}

static void teardown(void)
{
	synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(client_replies, .init = setup, .fini = teardown, .timeout = 30);

/* Read one request frame from fd; its id goes to *id. */
static void fake_read_request(int fd, struct ls_framer *f, uint64_t *id)
{
	for (;;) {
		const uint8_t *payload;
		size_t len;
		if (ls_framer_next(f, &payload, &len) == 1) {
			Lorastore__Request *req;
			struct ls_err err;
			cr_assert_eq(ls_request_decode(payload, len, &req, NULL, &err), 0, "%s", err.msg);
			*id = req->id;
			lorastore__request__free_unpacked(req, NULL);
			return;
		}
		uint8_t buf[4096];
		ssize_t n = read(fd, buf, sizeof(buf));
		cr_assert_gt(n, 0, "the client hung up");
		cr_assert_eq(ls_framer_feed(f, buf, (size_t)n), 0);
	}
}

/* Send resp on fd with fds attached (SCM_RIGHTS). */
static void fake_send(int fd, const Lorastore__Response *resp, const int *fds, int n_fds)
{
	uint8_t *buf;
	size_t len;
	cr_assert_eq(ls_response_encode(resp, &buf, &len), 0);
	struct iovec iov = {buf, len};
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	if (n_fds) {
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE((size_t)n_fds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN((size_t)n_fds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, (size_t)n_fds * sizeof(int));
	}
	cr_assert_eq(sendmsg(fd, &msg, 0), (ssize_t)len);
	free(buf);
}

/* Accept the client on lfd and answer its Hello as a daemon of that protocol and release. */
static int fake_accept_hello(int lfd, struct ls_framer *f, Lorastore__ProtocolVersion version,
			     const char *release)
{
	int fd = accept(lfd, NULL, NULL);
	cr_assert_geq(fd, 0);
	ls_framer_init(f, 0);
	uint64_t id;
	fake_read_request(fd, f, &id);
	Lorastore__HelloReply hr = LORASTORE__HELLO_REPLY__INIT;
	hr.protocol_version = version;
	hr.daemon_version = (char *)release;
	hr.backend = "host";
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = id;
	resp.body_case = LORASTORE__RESPONSE__BODY_HELLO;
	resp.hello = &hr;
	fake_send(fd, &resp, NULL, 0);
	return fd;
}

/* The fake daemon: Hello, then a stats request answered with an acquire reply and two slabs. */
static void *fake_daemon(void *arg)
{
	struct ls_framer f;
	int fd = fake_accept_hello(*(int *)arg, &f, LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2,
				   "fake");
	uint64_t id;
	fake_read_request(fd, &f, &id);
	int slabs[2] = {memfd_create("data", MFD_CLOEXEC), memfd_create("table", MFD_CLOEXEC)};
	Lorastore__AcquireReply ar = LORASTORE__ACQUIRE_REPLY__INIT;
	ar.lease_id = 1;
	ar.slab_id = 1;
	ar.table_slab_id = 2;
	ar.fd_attached = true;
	ar.table_fd_attached = true;
	ar.tier = LORASTORE__TIER__TIER_HOST;
	Lorastore__Response wrong = LORASTORE__RESPONSE__INIT;
	wrong.id = id;
	wrong.body_case = LORASTORE__RESPONSE__BODY_ACQUIRE;
	wrong.acquire = &ar;
	fake_send(fd, &wrong, slabs, 2);
	close(slabs[0]);
	close(slabs[1]);
	sem_post(&sent);
	/* Wait for the client to go. */
	char c;
	while (read(fd, &c, 1) > 0)
		;
	ls_framer_free(&f);
	close(fd);
	return NULL;
}

/* A daemon of protocol 1: it answers Hello with its version, then waits for the client to go. */
static void *fake_old_daemon(void *arg)
{
	struct ls_framer f;
	int fd = fake_accept_hello(*(int *)arg, &f, LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_1,
				   "0.0.9");
	char c;
	while (read(fd, &c, 1) > 0)
		;
	ls_framer_free(&f);
	close(fd);
	return NULL;
}

/* A listening socket at sock_path. */
static int fake_listen(void)
{
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	cr_assert_lt(strlen(sock_path), sizeof(a.sun_path));
	memcpy(a.sun_path, sock_path, strlen(sock_path) + 1);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0, "%s", strerror(errno));
	cr_assert_eq(listen(lfd, 1), 0);
	return lfd;
}

/* Descriptors open in this process. */
static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	for (struct dirent *e; (e = readdir(d));)
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1; /* the directory's own */
}

Test(client_replies, both_slab_descriptors_of_an_unexpected_acquire_reply_are_closed)
{
	int lfd = fake_listen();
	pthread_t th;
	cr_assert_eq(sem_init(&sent, 0, 0), 0);
	cr_assert_eq(pthread_create(&th, NULL, fake_daemon, &lfd), 0);

	lorastore *conn;
	cr_assert_eq(lorastore_connect(sock_path, &conn), 0, "%s", lorastore_errmsg(conn));
	int before = open_fds();
	lorastore_stats s;
	cr_assert_eq(lorastore_stats_get(conn, &s), LORASTORE_E_PROTOCOL);
	/* The fake daemon's own copies of the slabs are closed too before counting. */
	while (sem_wait(&sent) != 0 && errno == EINTR)
		;
	cr_assert_eq(open_fds(), before,
		     "a descriptor of the out-of-turn reply stayed queued for the next one");
	lorastore_close(conn);
	pthread_join(th, NULL);
	sem_destroy(&sent);
	close(lfd);
}

Test(client_replies, a_daemon_of_another_protocol_version_is_refused_by_name)
{
	int lfd = fake_listen();
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, fake_old_daemon, &lfd), 0);
	lorastore *conn = NULL;
	cr_assert_eq(lorastore_connect(sock_path, &conn), LORASTORE_E_VERSION);
	const char *msg = lorastore_errmsg(conn);
	cr_assert_not_null(strstr(msg, "lorastored 0.0.9 speaks protocol version 1"), "%s", msg);
	cr_assert_not_null(strstr(msg, "speaks 2"), "%s", msg);
	lorastore_close(conn);
	pthread_join(th, NULL);
	close(lfd);
}
