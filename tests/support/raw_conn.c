/* A raw connection to lorastored for tests (raw_conn.h). */
#define _GNU_SOURCE
#include "raw_conn.h"

#include <errno.h>
#include <stdbool.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int raw_conn_open(const char *path)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	memcpy(addr.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

int raw_conn_send_bytes(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int raw_conn_send(int fd, const Lorastore__Request *req, const int *fds, unsigned n_fds)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = ls_request_encode(req, &buf, &len);
	if (rc)
		return rc;
	size_t sent = 0;
	if (n_fds) {
		size_t space = CMSG_SPACE(sizeof(int) * n_fds);
		char *cbuf = calloc(1, space);
		if (!cbuf) {
			free(buf);
			return -ENOMEM;
		}
		struct iovec iov = {.iov_base = buf, .iov_len = len};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				     .msg_controllen = space};
		struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * n_fds);
		ssize_t n;
		do
			n = sendmsg(fd, &msg, MSG_NOSIGNAL);
		while (n < 0 && errno == EINTR);
		rc = n < 0 ? -errno : 0;
		free(cbuf);
		if (rc) {
			free(buf);
			return rc;
		}
		sent = (size_t)n;
	}
	rc = raw_conn_send_bytes(fd, buf + sent, len - sent);
	free(buf);
	return rc;
}

static long raw_ms_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

int raw_conn_read(int fd, struct ls_framer *f, int timeout_ms, Lorastore__Response **out)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	const uint8_t *p;
	size_t n;
	int rc;
	while ((rc = ls_framer_next(f, &p, &n)) == 0) {
		/* A timeout of 0 still takes what has arrived. */
		long left = timeout_ms - raw_ms_since(&t0);
		struct pollfd pf = {.fd = fd, .events = POLLIN};
		int ready = poll(&pf, 1, left > 0 ? (int)left : 0);
		if (ready <= 0 && left <= 0)
			return -ETIMEDOUT;
		if (ready <= 0)
			continue;
		size_t avail = 0;
		uint8_t *space = ls_framer_space(f, 64 << 10, &avail);
		if (!space)
			return -ENOMEM;
		ssize_t got = recv(fd, space, avail, 0);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return errno == ECONNRESET ? -EPIPE : -errno;
		if (got == 0)
			return -EPIPE;
		ls_framer_commit(f, (size_t)got);
	}
	if (rc < 0)
		return -EPROTO;
	struct ls_err e;
	return ls_response_decode(p, n, out, &e) == 0 ? 0 : -EPROTO;
}

/* Send Hello (request id 1), asking for the warm path or not. */
static int raw_hello_send(int fd, bool warm)
{
	Lorastore__Hello h = LORASTORE__HELLO__INIT;
	h.protocol_version = LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2;
	h.warm_path = warm;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 1;
	req.body_case = LORASTORE__REQUEST__BODY_HELLO;
	req.hello = &h;
	return raw_conn_send(fd, &req, NULL, 0);
}

int raw_conn_hello(int fd, struct ls_framer *f)
{
	int rc = raw_hello_send(fd, false);
	Lorastore__Response *resp = NULL;
	if (rc == 0)
		rc = raw_conn_read(fd, f, 10000, &resp);
	if (rc == 0 && resp->body_case != LORASTORE__RESPONSE__BODY_HELLO)
		rc = -EPROTO;
	if (resp)
		lorastore__response__free_unpacked(resp, NULL);
	return rc;
}

int raw_conn_hello_warm(int fd, struct ls_framer *f, int *dir_fd, uint64_t *dir_size,
			int *page_fd)
{
	*dir_fd = *page_fd = -1;
	int rc = raw_hello_send(fd, true);
	if (rc)
		return rc;
	/* The descriptors ride on the reply's first bytes: one recvmsg takes both. */
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	if (poll(&pf, 1, 10000) <= 0)
		return -ETIMEDOUT;
	size_t avail = 0;
	uint8_t *space = ls_framer_space(f, 64 << 10, &avail);
	if (!space)
		return -ENOMEM;
	union {
		char buf[CMSG_SPACE(sizeof(int) * 2)];
		struct cmsghdr align;
	} cbuf;
	struct iovec iov = {.iov_base = space, .iov_len = avail};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf,
			   .msg_controllen = sizeof(cbuf.buf)};
	ssize_t got = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
	if (got <= 0)
		return got == 0 ? -EPIPE : -errno;
	ls_framer_commit(f, (size_t)got);
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(int) * 2)) {
			int fds[2];
			memcpy(fds, CMSG_DATA(c), sizeof(fds));
			*dir_fd = fds[0];
			*page_fd = fds[1];
		}
	Lorastore__Response *resp = NULL;
	rc = raw_conn_read(fd, f, 10000, &resp);
	if (rc == 0 && (resp->body_case != LORASTORE__RESPONSE__BODY_HELLO || !resp->hello->warm_attached))
		rc = -EPROTO;
	if (rc == 0)
		*dir_size = resp->hello->directory_size;
	if (resp)
		lorastore__response__free_unpacked(resp, NULL);
	if (rc == 0 && *page_fd < 0)
		rc = -ENOMSG;
	return rc;
}
