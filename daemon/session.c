/* Client sessions: accept, receive and frame, send with descriptors, teardown. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "ls_clock.h"
#include "server.h"

#define LS_CONTAINER(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

static void ls_recv_submit(struct ls_session *s);
static void ls_send_next(struct ls_session *s);
static void ls_session_process(struct ls_session *s);
static void ls_session_close_fds(struct ls_session *s);

/*
 * Whether the peer may import, delete, evict and gc: root, the daemon's own
 * user, or a process whose group or supplementary groups (SO_PEERGROUPS: the
 * peer's own, as the kernel knew them at connect) hold the admin group.  The
 * socket's group (the clients') grants nothing by itself.  On a kernel
 * without SO_PEERGROUPS the group database stands in for the peer's list.
 */
static bool ls_peer_is_admin(struct ls_server *srv, int fd, const struct ucred *cred)
{
	if (cred->uid == 0 || cred->uid == geteuid())
		return true;
	if (!srv->have_admin_gid)
		return false;
	if (cred->gid == srv->admin_gid)
		return true;
	gid_t groups[256];
	socklen_t len = sizeof(groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
		for (size_t i = 0; i < len / sizeof(gid_t); i++)
			if (groups[i] == srv->admin_gid)
				return true;
		return false;
	}
	if (errno != ENOPROTOOPT)
		return false; /* ERANGE: over 256 groups; refuse rather than guess */
	char buf[4096];
	struct passwd pw, *pwp = NULL;
	if (getpwuid_r(cred->uid, &pw, buf, sizeof(buf), &pwp) != 0 || !pwp)
		return false;
	int n = 256;
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
		return false;
	for (int i = 0; i < n; i++)
		if (groups[i] == srv->admin_gid)
			return true;
	return false;
}

/*
 * Tell a connection that will not be served why, in one error frame (id 0,
 * which the client reports as the connection's failure), and close it.  The
 * frame is small enough for an empty socket buffer; a peer that cannot take
 * it loses only the reason.
 */
static void ls_send_error_frame(int fd, int code, const char *msg)
{
	Lorastore__Error e = LORASTORE__ERROR__INIT;
	e.code = code;
	e.message = (char *)msg;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.error = &e;
	uint8_t *buf = NULL;
	size_t len = 0;
	if (ls_response_encode(&resp, &buf, &len) == 0) {
		ssize_t n = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		(void)n;
	}
	free(buf);
}

static void ls_refuse_connection(int fd, int code, const char *msg)
{
	ls_send_error_frame(fd, code, msg);
	close(fd);
}

/* Most queued connections refused at once when descriptors run out. */
#define LS_REFUSE_BATCH 256u

/*
 * accept failed for want of descriptors (or memory): stop accepting for a
 * while instead of retrying at once, which would spin.  The connection at
 * the head of the queue is accepted with the spare descriptor and told why.
 */
static void ls_accept_exhausted(struct ls_server *srv, int res)
{
	unsigned refused = 0;
	if (srv->spare_fd >= 0 && (res == -EMFILE || res == -ENFILE)) {
		/*
		 * One slot is enough to tell every queued peer: each is
		 * accepted into it, answered and closed.  The poll keeps the
		 * accept from waiting once the queue is empty.
		 */
		close(srv->spare_fd);
		srv->spare_fd = -1;
		char msg[160];
		snprintf(msg, sizeof(msg),
			 "lorastored is out of file descriptors (limit %u, %u clients); try again "
			 "later",
			 srv->fd_limit, srv->n_sessions);
		for (; refused < LS_REFUSE_BATCH; refused++) {
			struct pollfd p = {.fd = srv->listen_fd, .events = POLLIN};
			int fd = poll(&p, 1, 0) == 1 ? accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC)
						     : -1;
			if (fd < 0)
				break;
			ls_refuse_connection(fd, -EMFILE, msg);
		}
		srv->refused_connections += refused;
		srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	unsigned backoff = srv->accept_backoff_ms ? srv->accept_backoff_ms * 2 : 50;
	srv->accept_backoff_ms = backoff > 1000 ? 1000 : backoff;
	srv->accept_resume_ms = ls_mono_ms() + srv->accept_backoff_ms;
	srv->accept_paused = true;
	ls_log_limited(&srv->log_exhausted, LS_LOG_WARNING,
		       "accept: %s (descriptor limit %u, %u clients, %u waiting refused); "
		       "accepting paused until a connection closes or %u ms pass",
		       strerror(-res), srv->fd_limit, srv->n_sessions, refused,
		       srv->accept_backoff_ms);
}

static void ls_accept_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_server *srv = LS_CONTAINER(op, struct ls_server, accept_op);
	(void)loop;
	srv->accepting = false;
	if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
		if (!srv->stopping)
			ls_accept_exhausted(srv, res);
		return;
	}
	if (res < 0) {
		if (res != -ECANCELED && res != -EINVAL)
			ls_log_limited(&srv->log_accept, LS_LOG_WARNING, "accept: %s",
				       strerror(-res));
	} else if (srv->n_sessions >= srv->max_clients) {
		char msg[160];
		snprintf(msg, sizeof(msg),
			 "lorastored serves at most %u clients at once (--max-clients) and has "
			 "that many; try again later",
			 srv->max_clients);
		ls_refuse_connection(res, -EUSERS, msg);
		srv->refused_connections++;
		ls_log_limited(&srv->log_refused, LS_LOG_WARNING,
			       "refused a connection: %u clients, the --max-clients limit",
			       srv->max_clients);
	} else {
		srv->accept_backoff_ms = 0;
		struct ls_session *s = calloc(1, sizeof(*s));
		socklen_t len = sizeof(s ? s->cred : (struct ucred){0});
		if (!s) {
			close(res);
		} else if (getsockopt(res, SOL_SOCKET, SO_PEERCRED, &s->cred, &len) != 0) {
			ls_warn("SO_PEERCRED: %s", strerror(errno));
			close(res);
			free(s);
		} else {
			s->srv = srv;
			s->fd = res;
			s->id = ++srv->next_session_id;
			s->accepted_ms = ls_mono_ms();
			s->admin = ls_peer_is_admin(srv, res, &s->cred);
			ls_framer_init(&s->framer, LS_FRAME_MAX);
			s->next = srv->sessions;
			if (srv->sessions)
				srv->sessions->prev = s;
			srv->sessions = s;
			srv->n_sessions++;
			ls_debug("session %u: pid %d uid %u%s", s->id, (int)s->cred.pid,
				 (unsigned)s->cred.uid, s->admin ? " (admin)" : "");
			ls_recv_submit(s);
		}
	}
	if (!srv->stopping)
		ls_server_accept(srv);
}

void ls_server_accept(struct ls_server *srv)
{
	srv->accept_paused = false;
	ls_loop_accept(&srv->loop, &srv->accept_op, ls_accept_done, srv->listen_fd);
	srv->accepting = true;
}

void ls_server_check_connections(struct ls_server *srv, int64_t now_ms)
{
	if (srv->accept_paused && !srv->stopping && now_ms >= srv->accept_resume_ms)
		ls_server_accept(srv);
	unsigned timeout = srv->cfg->hello_timeout_ms, expired = 0;
	for (struct ls_session *s = srv->sessions; s; s = s->next) {
		if (s->hello_done || s->closing || now_ms - s->accepted_ms < (int64_t)timeout)
			continue;
		/* Nothing is sent to a session before its Hello: the socket is idle. */
		char msg[96];
		snprintf(msg, sizeof(msg), "no Hello within %u ms (--hello-timeout)", timeout);
		if (!s->out_head)
			ls_send_error_frame(s->fd, -ETIMEDOUT, msg);
		ls_debug("session %u (pid %d, uid %u): no Hello in time", s->id, (int)s->cred.pid,
			 (unsigned)s->cred.uid);
		ls_session_close(s, "no Hello in time");
		expired++;
	}
	if (expired) {
		srv->hello_timeouts += expired;
		ls_log_limited(&srv->log_hello, LS_LOG_WARNING,
			       "closed %u connection%s that sent no Hello within %u ms "
			       "(--hello-timeout)",
			       expired, expired == 1 ? "" : "s", timeout);
	}
}

/*
 * Keep the descriptors that came with a receive, each marked with the
 * position of the receive's last byte: they belong to the request whose
 * frame holds that byte.  Any that cannot be kept (more than the session
 * holds, or cut off by the kernel: MSG_CTRUNC) are closed, and that request
 * is refused.
 */
static void ls_collect_fds(struct ls_session *s)
{
	uint64_t pos = s->rx_bytes - 1;
	bool dropped = (s->rmsg.msg_flags & MSG_CTRUNC) != 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&s->rmsg); c; c = CMSG_NXTHDR(&s->rmsg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		const int *fds = (const int *)CMSG_DATA(c);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, fds + i, sizeof(fd));
			if (s->n_rx_fds < LS_SESSION_MAX_FDS) {
				s->rx_fds[s->n_rx_fds].fd = fd;
				s->rx_fds[s->n_rx_fds++].pos = pos;
			} else {
				close(fd);
				dropped = true;
			}
		}
	}
	if (dropped) {
		s->rx_fds_dropped = true;
		s->rx_dropped_pos = pos;
	}
}

/* Give the frame that ends before stream position end the descriptors that belong to it. */
static void ls_frame_take_fds(struct ls_session *s, uint64_t end)
{
	unsigned k = 0;
	while (k < s->n_rx_fds && s->rx_fds[k].pos < end) {
		s->req_fds[s->req_n_fds++] = s->rx_fds[k].fd;
		k++;
	}
	memmove(s->rx_fds, s->rx_fds + k, (s->n_rx_fds - k) * sizeof(s->rx_fds[0]));
	s->n_rx_fds -= k;
	if (s->rx_fds_dropped && s->rx_dropped_pos < end) {
		s->req_fds_dropped = true;
		s->rx_fds_dropped = false;
	}
}

/* Close whatever descriptors the request just handled did not use. */
static void ls_request_fds_close(struct ls_session *s)
{
	for (unsigned i = 0; i < s->req_n_fds; i++)
		if (s->req_fds[i] >= 0)
			close(s->req_fds[i]);
	s->req_n_fds = 0;
	s->req_fds_dropped = false;
}

int ls_session_take_fd(struct ls_session *s)
{
	for (unsigned i = 0; i < s->req_n_fds; i++) {
		int fd = s->req_fds[i];
		if (fd >= 0) {
			s->req_fds[i] = -1;
			return fd;
		}
	}
	return -1;
}

/*
 * A request that decoded but broke a rule (a string over the cap, a NUL
 * byte, a missing field, descriptors it does not take) is answered with an
 * error, and the connection goes on.  False when it cannot be answered (no
 * id): then the connection closes, since the stream can no longer be
 * trusted.  Either way the descriptors it brought are closed afterwards.
 */
static bool ls_refuse_request(struct ls_session *s, const struct ls_request_head *head, int code,
			      const char *msg)
{
	if (!head->answerable)
		return false;
	ls_session_error(s, head->id, code, "%s", msg);
	return !s->closing;
}

/* The name of a request's kind, as the protocol spells it ("import", "stats"). */
static const char *ls_request_kind(const Lorastore__Request *req)
{
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
		&lorastore__request__descriptor, (unsigned)req->body_case);
	return f ? f->name : "unknown";
}

/*
 * Whether req brought exactly the descriptors it takes; if not it is
 * answered with an error (and false is returned).
 */
static bool ls_request_fds_match(struct ls_session *s, const Lorastore__Request *req)
{
	unsigned want = ls_request_fd_count(req);
	if (!s->req_fds_dropped && s->req_n_fds == want)
		return true;
	char msg[LS_ERR_MSG_MAX];
	const char *kind = ls_request_kind(req);
	const char *a = strchr("aeiou", kind[0]) ? "an" : "a";
	if (s->req_fds_dropped)
		snprintf(msg, sizeof(msg),
			 "%s %s request brought more than %u file descriptors; it takes %u",
			 a, kind, LS_SESSION_MAX_FDS, want);
	else
		snprintf(msg, sizeof(msg),
			 "%s %s request brought %u file descriptor%s; it takes %u, sent with "
			 "its own frame",
			 a, kind, s->req_n_fds, s->req_n_fds == 1 ? "" : "s", want);
	struct ls_request_head head = {.id = req->id, .answerable = req->id != 0};
	if (!ls_refuse_request(s, &head, LS_E_PROTOCOL, msg) && !s->closing)
		ls_session_close(s, "descriptors that do not match the request");
	return false;
}

/*
 * Whether the replies queued for s are over the bound: then no further
 * request is taken from it until they drain (a client that sends and never
 * reads cannot make the daemon queue without limit).
 */
static bool ls_session_throttled(struct ls_session *s)
{
	uint64_t limit = s->srv->cfg->client_reply_limit;
	return limit && s->out_bytes > limit;
}

/*
 * Dispatch every whole frame buffered, then receive more; stop (and do not
 * receive) while the reply queue is over its bound, and go on from
 * ls_send_done once it drained.
 */
static void ls_session_process(struct ls_session *s)
{
	for (;;) {
		if (ls_session_throttled(s)) {
			if (!s->recv_paused) {
				s->recv_paused = true;
				s->srv->throttled++;
			}
			return;
		}
		const uint8_t *payload;
		size_t len;
		int rc = ls_framer_next(&s->framer, &payload, &len);
		if (rc == 0)
			break;
		if (rc < 0) {
			s->srv->malformed++;
			ls_log_limited(&s->srv->log_malformed, LS_LOG_WARNING,
				       "session %u (pid %d, uid %u): a frame over the %u-byte cap; "
				       "closing",
				       s->id, (int)s->cred.pid, (unsigned)s->cred.uid, LS_FRAME_MAX);
			ls_session_close(s, "frame over the size cap");
			return;
		}
		s->rx_framed += LS_FRAME_HEADER + len;
		ls_frame_take_fds(s, s->rx_framed);
		Lorastore__Request *req = NULL;
		struct ls_request_head head;
		struct ls_err err;
		rc = ls_request_decode(payload, len, &req, &head, &err);
		if (rc) {
			if (!ls_refuse_request(s, &head, rc, err.msg) && !s->closing) {
				s->srv->malformed++;
				ls_log_limited(&s->srv->log_malformed, LS_LOG_WARNING,
					       "session %u (pid %d, uid %u): %s; closing", s->id,
					       (int)s->cred.pid, (unsigned)s->cred.uid, err.msg);
				ls_session_close(s, "malformed request");
			}
		} else if ((!s->hello_done && req->body_case != LORASTORE__REQUEST__BODY_HELLO) ||
			   ls_request_fds_match(s, req)) {
			/* Before Hello every other request is refused and the connection closed. */
			s->srv->dispatch(s, req);
		}
		ls_request_fds_close(s);
		if (req)
			lorastore__request__free_unpacked(req, NULL);
		if (s->closing)
			return;
	}
	s->recv_paused = false;
	ls_recv_submit(s);
}

static void ls_recv_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_session *s = LS_CONTAINER(op, struct ls_session, recv_op);
	(void)loop;
	if (res > 0) {
		ls_framer_commit(&s->framer, (size_t)res);
		s->rx_bytes += (uint64_t)res;
	}
	/* Descriptors are the session's to close from here, whatever happens next. */
	if (res >= 0)
		ls_collect_fds(s);
	if (s->closing) {
		ls_session_close_fds(s);
		return;
	}
	if (res <= 0) {
		ls_session_close(s, res == 0 ? "closed by peer" : strerror(-res));
		return;
	}
	ls_session_process(s);
}

static void ls_recv_submit(struct ls_session *s)
{
	size_t avail = 0;
	uint8_t *space = ls_framer_space(&s->framer, LS_RECV_CHUNK, &avail);
	if (!space) {
		ls_session_close(s, "out of memory");
		return;
	}
	s->riov.iov_base = space;
	s->riov.iov_len = avail;
	memset(&s->rmsg, 0, sizeof(s->rmsg));
	s->rmsg.msg_iov = &s->riov;
	s->rmsg.msg_iovlen = 1;
	s->rmsg.msg_control = s->rcmsg.buf;
	s->rmsg.msg_controllen = sizeof(s->rcmsg.buf);
	ls_loop_recvmsg(&s->srv->loop, &s->recv_op, ls_recv_done, s->fd, &s->rmsg, MSG_CMSG_CLOEXEC);
}

/* Close the descriptors a message owns (they went with it, or it is dropped). */
static void ls_outmsg_close_owned(struct ls_outmsg *m)
{
	for (unsigned i = 0; i < m->n_fds; i++)
		if (m->owned & (1u << i))
			close(m->fds[i]);
	m->owned = 0;
}

static void ls_send_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_session *s = LS_CONTAINER(op, struct ls_session, send_op);
	(void)loop;
	if (s->closing)
		return;
	if (res < 0) {
		ls_session_close(s, strerror(-res));
		return;
	}
	struct ls_outmsg *m = s->out_head;
	m->off += (size_t)res;
	s->out_bytes -= (uint64_t)res;
	ls_outmsg_close_owned(m);
	m->n_fds = 0; /* the descriptors went with the first bytes */
	if (m->off >= m->len) {
		s->out_head = m->next;
		if (!s->out_head)
			s->out_tail = NULL;
		free(m->buf);
		free(m);
	}
	ls_send_next(s);
	/* Requests wait while replies are over the bound; half drained, they go on. */
	if (s->recv_paused && !s->closing && s->out_bytes <= s->srv->cfg->client_reply_limit / 2)
		ls_session_process(s);
}

static void ls_send_next(struct ls_session *s)
{
	struct ls_outmsg *m = s->out_head;
	if (!m) {
		if (s->close_after_send)
			ls_session_close(s, "closed after the last response");
		return;
	}
	s->siov.iov_base = m->buf + m->off;
	s->siov.iov_len = m->len - m->off;
	memset(&s->smsg, 0, sizeof(s->smsg));
	s->smsg.msg_iov = &s->siov;
	s->smsg.msg_iovlen = 1;
	if (m->n_fds) {
		s->smsg.msg_control = s->scmsg.buf;
		s->smsg.msg_controllen = CMSG_SPACE(sizeof(int) * m->n_fds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&s->smsg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * m->n_fds);
		memcpy(CMSG_DATA(c), m->fds, sizeof(int) * m->n_fds);
	}
	ls_loop_sendmsg(&s->srv->loop, &s->send_op, ls_send_done, s->fd, &s->smsg, MSG_NOSIGNAL);
}

int ls_session_slab_unsent(struct ls_session *s, uint32_t id)
{
	if (id >= s->n_slabs_sent) {
		uint32_t bits = s->n_slabs_sent ? s->n_slabs_sent : 64;
		while (bits <= id)
			bits *= 2;
		uint8_t *grown = realloc(s->slabs_sent, bits / 8);
		if (!grown)
			return -ENOMEM;
		memset(grown + s->n_slabs_sent / 8, 0, (bits - s->n_slabs_sent) / 8);
		s->slabs_sent = grown;
		s->n_slabs_sent = bits;
	}
	uint8_t bit = (uint8_t)(1u << (id % 8));
	if (s->slabs_sent[id / 8] & bit)
		return 0;
	s->slabs_sent[id / 8] |= bit;
	return 1;
}

void ls_session_send(struct ls_session *s, const Lorastore__Response *resp, int fd)
{
	ls_session_send_fds(s, resp, &fd, fd >= 0 ? 1 : 0);
}

/* Put m at the end of the send queue, and start sending when it was idle. */
static void ls_outmsg_queue(struct ls_session *s, struct ls_outmsg *m)
{
	bool idle = s->out_head == NULL;
	s->out_bytes += m->len;
	if (s->out_tail)
		s->out_tail->next = m;
	else
		s->out_head = m;
	s->out_tail = m;
	if (idle)
		ls_send_next(s);
}

void ls_session_send_fds_owned(struct ls_session *s, const Lorastore__Response *resp,
			       const int *fds, unsigned n_fds, unsigned owned)
{
	struct ls_outmsg *m = s->closing || n_fds > LS_OUTMSG_MAX_FDS ? NULL : calloc(1, sizeof(*m));
	int rc = !m ? -ENOMEM : ls_response_encode(resp, &m->buf, &m->len);
	if (rc)
		for (unsigned i = 0; i < n_fds; i++)
			if (owned & (1u << i))
				close(fds[i]);
	if (s->closing) {
		free(m);
		return;
	}
	if (rc == LS_E_FRAME_TOO_LARGE && !resp->error) {
		/* Bounds upstream keep replies small; should one still be over, say so. */
		free(m);
		ls_session_error(s, resp->id, rc,
				 "the reply would be %zu bytes, more than a frame may have (%u)",
				 lorastore__response__get_packed_size(resp), LS_FRAME_MAX);
		return;
	}
	if (rc) {
		free(m);
		ls_session_close(s, "cannot encode a response");
		return;
	}
	memcpy(m->fds, fds, sizeof(int) * n_fds);
	m->n_fds = n_fds;
	m->owned = owned;
	ls_outmsg_queue(s, m);
}

void ls_session_send_fds(struct ls_session *s, const Lorastore__Response *resp, const int *fds,
			 unsigned n_fds)
{
	ls_session_send_fds_owned(s, resp, fds, n_fds, 0);
}

void ls_session_send_packed(struct ls_session *s, uint8_t *frame, size_t len)
{
	struct ls_outmsg *m = s->closing ? NULL : calloc(1, sizeof(*m));
	if (!m) {
		free(frame);
		if (!s->closing)
			ls_session_close(s, "out of memory");
		return;
	}
	m->buf = frame;
	m->len = len;
	ls_outmsg_queue(s, m);
}

void ls_session_error(struct ls_session *s, uint64_t id, int code, const char *fmt, ...)
{
	char msg[LS_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	Lorastore__Error e = LORASTORE__ERROR__INIT;
	e.code = code;
	e.message = msg;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = id;
	resp.error = &e;
	ls_session_send(s, &resp, -1);
}

void ls_session_close(struct ls_session *s, const char *why)
{
	if (s->closing)
		return;
	ls_debug("session %u: %s", s->id, why);
	s->closing = true;
	/* Leases end with the connection, crashes included. */
	ls_leases_end_all(&s->srv->leases, &s->leases);
	ls_pending_cancel_all(&s->pending);
	ls_session_close_fds(s);
	/* Nobody waits for the answers of jobs no worker has started. */
	s->srv->jobs_cancelled += ls_workers_cancel(s->srv->workers, &s->job_owner);
	/* Completions of operations still in flight come back with errors. */
	shutdown(s->fd, SHUT_RDWR);
	if (s->recv_op.pending || s->send_op.pending)
		ls_loop_cancel_fd(&s->srv->loop, s->fd);
}

/* Close every descriptor received and not used: queued, or the current request's. */
static void ls_session_close_fds(struct ls_session *s)
{
	for (unsigned i = 0; i < s->n_rx_fds; i++)
		close(s->rx_fds[i].fd);
	s->n_rx_fds = 0;
	s->rx_fds_dropped = false;
	ls_request_fds_close(s);
}

void ls_server_reap_sessions(struct ls_server *srv)
{
	struct ls_session *s = srv->sessions;
	while (s) {
		struct ls_session *next = s->next;
		if (s->closing && !s->recv_op.pending && !s->send_op.pending && s->jobs == 0) {
			if (s->prev)
				s->prev->next = s->next;
			else
				srv->sessions = s->next;
			if (s->next)
				s->next->prev = s->prev;
			srv->n_sessions--;
			ls_loop_close_fd(&srv->loop, s->fd);
			/* A descriptor is free again: a paused accept goes on. */
			if (srv->accept_paused && !srv->stopping)
				ls_server_accept(srv);
			while (s->out_head) {
				struct ls_outmsg *m = s->out_head;
				s->out_head = m->next;
				ls_outmsg_close_owned(m);
				free(m->buf);
				free(m);
			}
			ls_framer_free(&s->framer);
			free(s->slabs_sent);
			free(s);
		}
		s = next;
	}
}
