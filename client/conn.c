/*
 * liblorastore's socket I/O: one request out, read until its response.
 *
 * Frames are cut from the byte stream by the shared framer (proto/frame.h).
 * Descriptors arrive as SCM_RIGHTS beside the bytes; the kernel may deliver
 * them with a read that also carries bytes of an earlier frame, so they are
 * queued in arrival order and a response that says it brought one claims the
 * oldest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client_internal.h"
#include "ls_name.h"

/* Bytes asked of the framer for each read. */
#define LS_RECV_CHUNK 65536u
/* Descriptors one read can bring (the daemon sends one per frame at most). */
#define LS_RECV_MAX_FDS 32
/* Descriptors one request may carry (import: config and safetensors). */
#define LS_SEND_MAX_FDS 4

static void ls_vmsg(lorastore *c, const char *fmt, va_list ap)
{
	vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
}

int ls_conn_error(lorastore *c, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ls_vmsg(c, fmt, ap);
	va_end(ap);
	return code;
}

int ls_conn_fail(lorastore *c, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ls_vmsg(c, fmt, ap);
	va_end(ap);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	return code;
}

int ls_ref_check(lorastore *c, const char *what, const char *ref)
{
	if (!ref || !*ref)
		return ls_conn_error(c, LS_E_NAME_INVALID, "%s: no adapter named", what);
	struct ls_err err;
	if (ls_ref_check_any(ref, &err))
		return ls_conn_error(c, err.code, "%s: %s", what, err.msg);
	return 0;
}

int ls_conn_check(lorastore *c)
{
	/* The message of the failure that closed it stays for errmsg. */
	return c->fd < 0 ? LS_E_CLOSED : 0;
}

int ls_conn_open(lorastore *c, const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t len = strlen(path);
	if (len == 0)
		return ls_conn_fail(c, -EINVAL, "empty socket path");
	if (len >= sizeof(sa.sun_path))
		return ls_conn_fail(c, -ENAMETOOLONG, "socket path too long (%zu bytes, at most %zu): %s",
				    len, sizeof(sa.sun_path) - 1, path);
	memcpy(sa.sun_path, path, len + 1);
	/*
	 * Nonblocking, so that a full backlog (a daemon flooded, or stopped in
	 * a debugger) gives EAGAIN instead of a connect that never returns;
	 * a Unix socket has no connect in progress to wait on, so it is
	 * retried, backing off from 5 to 100 ms.
	 */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return ls_conn_fail(c, -errno, "socket: %s", strerror(errno));
	c->fd = fd;
	unsigned wait_ms = 5;
	while (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		if (e == EINTR)
			continue;
		if (e == EAGAIN) {
			int64_t left = c->deadline_ms ? c->deadline_ms - ls_mono_ms() : wait_ms;
			if (left <= 0)
				return ls_conn_fail(c, -ETIMEDOUT,
						    "connect to %s: the daemon's backlog stayed full "
						    "(timed out)",
						    path);
			struct timespec ts = {.tv_nsec = (long)(left < wait_ms ? left : wait_ms) *
							 1000000};
			nanosleep(&ts, NULL);
			wait_ms = wait_ms * 2 > 100 ? 100 : wait_ms * 2;
			continue;
		}
		const char *hint = e == ENOENT || e == ECONNREFUSED ? " (is lorastored running?)" : "";
		return ls_conn_fail(c, -e, "connect to %s: %s%s", path, strerror(e), hint);
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		return ls_conn_fail(c, -errno, "fcntl: %s", strerror(errno));
	return 0;
}

/* ---- the descriptor queue */

static int ls_fdq_push(lorastore *c, int fd)
{
	if (c->fdq_head + c->fdq_len == c->fdq_cap) {
		if (c->fdq_head > 0) {
			memmove(c->fdq, c->fdq + c->fdq_head, c->fdq_len * sizeof(int));
			c->fdq_head = 0;
		} else {
			size_t cap = c->fdq_cap ? c->fdq_cap * 2 : 8;
			int *q = realloc(c->fdq, cap * sizeof(int));
			if (!q)
				return -ENOMEM;
			c->fdq = q;
			c->fdq_cap = cap;
		}
	}
	c->fdq[c->fdq_head + c->fdq_len++] = fd;
	return 0;
}

int ls_conn_take_fd(lorastore *c)
{
	if (c->fdq_len == 0)
		return -1;
	int fd = c->fdq[c->fdq_head++];
	if (--c->fdq_len == 0)
		c->fdq_head = 0;
	return fd;
}

void ls_conn_teardown_io(lorastore *c)
{
	int fd;
	while ((fd = ls_conn_take_fd(c)) >= 0)
		close(fd);
	free(c->fdq);
	c->fdq = NULL;
	c->fdq_cap = 0;
	ls_framer_free(&c->framer);
}

/* ---- sending */

/*
 * The daemon closed the connection: it may have said why first (a refused
 * connection, a Hello that came too late).  The reason is read without
 * waiting; false when none is there.
 */
static bool ls_last_words(lorastore *c, int *code, char *msg, size_t cap)
{
	struct ls_framer f;
	ls_framer_init(&f, 1u << 16);
	bool found = false;
	for (int i = 0; i < 8 && !found; i++) {
		size_t avail = 0;
		uint8_t *space = ls_framer_space(&f, 4096, &avail);
		if (!space)
			break;
		ssize_t n = recv(c->fd, space, avail, MSG_DONTWAIT);
		if (n <= 0)
			break;
		ls_framer_commit(&f, (size_t)n);
		const uint8_t *payload;
		size_t len;
		while (!found && ls_framer_next(&f, &payload, &len) == 1) {
			Lorastore__Response *r = NULL;
			struct ls_err err;
			if (ls_response_decode(payload, len, &r, &err) != 0)
				continue;
			if (r->error && r->error->code != 0) {
				*code = r->error->code > 0 ? -r->error->code : r->error->code;
				snprintf(msg, cap, "%s", r->error->message ? r->error->message : "");
				found = true;
			}
			lorastore__response__free_unpacked(r, NULL);
		}
	}
	ls_framer_free(&f);
	return found;
}

static int ls_send_failed(lorastore *c, int e)
{
	int code;
	char why[LS_CLIENT_ERRMSG_MAX / 2];
	if ((e == EPIPE || e == ECONNRESET) && ls_last_words(c, &code, why, sizeof(why)))
		return ls_conn_fail(c, code, "lorastored: %s", why);
	if (e == EPIPE || e == ECONNRESET || e == ENOTCONN)
		return ls_conn_fail(c, LS_E_CLOSED, "lorastored closed the connection");
	return ls_conn_fail(c, -e, "send to lorastored: %s", strerror(e));
}

/*
 * Send one whole frame.  The descriptors ride on the first sendmsg; what it
 * did not take is sent with plain send.
 */
static int ls_conn_send(lorastore *c, const uint8_t *buf, size_t len, const int *fds, size_t nfds)
{
	size_t off = 0;
	if (nfds > LS_SEND_MAX_FDS)
		return ls_conn_error(c, -EINVAL, "too many descriptors for one request (%zu)", nfds);
	if (nfds > 0) {
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(sizeof(int) * LS_SEND_MAX_FDS)];
		} cbuf;
		memset(&cbuf, 0, sizeof(cbuf));
		struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
		struct msghdr msg = {
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = cbuf.buf,
			.msg_controllen = CMSG_SPACE(sizeof(int) * nfds),
		};
		struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
		ssize_t n;
		do
			n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
		while (n < 0 && errno == EINTR);
		if (n < 0) {
			int e = errno;
			/* Nothing went out: the connection is still in step. */
			if (e != EPIPE && e != ECONNRESET && e != ENOTCONN)
				return ls_conn_error(c, -e, "send with descriptors: %s", strerror(e));
			return ls_send_failed(c, e);
		}
		off = (size_t)n;
	}
	while (off < len) {
		ssize_t n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ls_send_failed(c, errno);
		}
		off += (size_t)n;
	}
	return 0;
}

/* ---- receiving */

/* One read: bytes into the framer, descriptors onto the queue. */
static int ls_conn_recv_some(lorastore *c)
{
	size_t avail = 0;
	uint8_t *space = ls_framer_space(&c->framer, LS_RECV_CHUNK, &avail);
	if (!space)
		return ls_conn_fail(c, -ENOMEM, "out of memory for a response");
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * LS_RECV_MAX_FDS)];
	} cbuf;
	struct iovec iov = {.iov_base = space, .iov_len = avail};
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = cbuf.buf,
		.msg_controllen = sizeof(cbuf.buf),
	};
	ssize_t n;
	for (;;) {
		if (c->deadline_ms) {
			int64_t left = c->deadline_ms - ls_mono_ms();
			struct pollfd p = {.fd = c->fd, .events = POLLIN};
			int pr = left > 0 ? poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left) : 0;
			if (pr < 0 && errno == EINTR)
				continue;
			if (pr == 0)
				return ls_conn_fail(c, -ETIMEDOUT,
						    "lorastored did not answer in time (connect "
						    "timeout; see LORASTORE_CONNECT_TIMEOUT_MS)");
		}
		n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
		if (n >= 0 || errno != EINTR)
			break;
	}
	if (n < 0) {
		int e = errno;
		if (e == ECONNRESET)
			return ls_conn_fail(c, LS_E_CLOSED, "lorastored closed the connection");
		return ls_conn_fail(c, -e, "receive from lorastored: %s", strerror(e));
	}

	/* Take every descriptor first, so that none leaks on any path below. */
	int got[LS_RECV_MAX_FDS];
	size_t ngot = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k && ngot < LS_RECV_MAX_FDS; i++)
			memcpy(&got[ngot++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
	}
	if (msg.msg_flags & MSG_CTRUNC) {
		for (size_t i = 0; i < ngot; i++)
			close(got[i]);
		return ls_conn_fail(c, LS_E_PROTOCOL,
				    "lorastored sent more descriptors than one read can take");
	}
	for (size_t i = 0; i < ngot; i++) {
		if (ls_fdq_push(c, got[i]) < 0) {
			for (size_t j = i; j < ngot; j++)
				close(got[j]);
			return ls_conn_fail(c, -ENOMEM, "out of memory for received descriptors");
		}
	}
	if (n == 0)
		return ls_conn_fail(c, LS_E_CLOSED, "lorastored closed the connection");
	ls_framer_commit(&c->framer, (size_t)n);
	return 0;
}

/* Read until the response with id arrives; any other id breaks the connection. */
static int ls_conn_recv_response(lorastore *c, uint64_t id, Lorastore__Response **out)
{
	for (;;) {
		const uint8_t *payload = NULL;
		size_t len = 0;
		int rc = ls_framer_next(&c->framer, &payload, &len);
		if (rc < 0)
			return ls_conn_fail(c, rc == LS_E_FRAME_TOO_LARGE ? LS_E_FRAME_TOO_LARGE
									 : LS_E_PROTOCOL,
					    "response from lorastored: %s", ls_strerror(rc));
		if (rc == 0) {
			rc = ls_conn_recv_some(c);
			if (rc)
				return rc;
			continue;
		}
		struct ls_err err;
		ls_err_clear(&err);
		Lorastore__Response *r = NULL;
		rc = ls_response_decode(payload, len, &r, &err);
		if (rc)
			return ls_conn_fail(c, LS_E_PROTOCOL, "malformed response from lorastored: %s",
					    err.msg[0] ? err.msg : ls_strerror(rc));
		if (r->id != id) {
			/* A daemon that gives up on a connection may say why first. */
			if (r->error && r->error->code != 0) {
				int code = r->error->code;
				ls_conn_fail(c, code, "lorastored: %s",
					     r->error->message ? r->error->message : "");
				lorastore__response__free_unpacked(r, NULL);
				return code;
			}
			unsigned long long got = (unsigned long long)r->id;
			lorastore__response__free_unpacked(r, NULL);
			return ls_conn_fail(c, LS_E_PROTOCOL,
					    "lorastored answered request %llu while %llu was expected", got,
					    (unsigned long long)id);
		}
		*out = r;
		return 0;
	}
}

int ls_conn_call(lorastore *c, Lorastore__Request *req, const int *fds, size_t nfds,
		 Lorastore__Response__BodyCase expected, Lorastore__Response **out)
{
	*out = NULL;
	int rc = ls_conn_check(c);
	if (rc)
		return rc;
	req->id = c->next_id++;
	uint8_t *buf = NULL;
	size_t len = 0;
	rc = ls_request_encode(req, &buf, &len);
	if (rc)
		return ls_conn_error(c, rc, "cannot encode the request: %s", ls_strerror(rc));
	rc = ls_conn_send(c, buf, len, fds, nfds);
	free(buf);
	if (rc)
		return rc;
	Lorastore__Response *r = NULL;
	rc = ls_conn_recv_response(c, req->id, &r);
	if (rc)
		return rc;
	if (r->error && r->error->code != 0) {
		int code = r->error->code > 0 ? -r->error->code : r->error->code;
		const char *m = r->error->message;
		ls_conn_error(c, code, "%s", m && *m ? m : lorastore_strerror(code));
		lorastore__response__free_unpacked(r, NULL);
		return code;
	}
	if (r->body_case != expected) {
		/*
		 * Descriptors that came with the wrong answer are nobody's: both
		 * go, or the next reply would take the one left over.
		 */
		if (r->body_case == LORASTORE__RESPONSE__BODY_ACQUIRE && r->acquire) {
			int n = !!r->acquire->fd_attached + !!r->acquire->table_fd_attached;
			for (int i = 0; i < n; i++) {
				int fd = ls_conn_take_fd(c);
				if (fd >= 0)
					close(fd);
			}
		}
		int got = (int)r->body_case;
		lorastore__response__free_unpacked(r, NULL);
		return ls_conn_error(c, LS_E_PROTOCOL,
				     "lorastored answered with body %d where %d was expected", got,
				     (int)expected);
	}
	*out = r;
	return 0;
}
