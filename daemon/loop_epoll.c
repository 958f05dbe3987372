/*
 * The epoll engine, for where io_uring is refused.  It gives the same
 * completions as the io_uring engine:
 *
 * - Sockets (accept, recvmsg, sendmsg) are nonblocking.  An operation is
 *   tried on the loop thread in the next pass of the run queue; only when it
 *   would block is it parked on its descriptor, which is in the epoll set
 *   edge-triggered from then on, so a parked operation costs no system call
 *   until the descriptor becomes ready.  Once a receive has emptied the
 *   socket, the next one parks without trying: the edge of new data wakes it.
 * - A poll (eventfds, the signalfd) arms the descriptor one-shot.
 * - File reads go to a small pool of I/O threads (workers.h) doing pread
 *   (into the slab, O_DIRECT where the caller opened the file so); their
 *   completions come back through the pool's eventfd in the epoll set.
 * - Timers are kept in a short list; the wait's timeout is the nearest.
 *
 * Completions are always delivered from ls_loop_run_once, never from inside
 * the call that submitted the operation.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "loop_engine.h"
#include "ls_clock.h"

/* Threads reading blobs.  Loads rarely overlap much; reads are large. */
#define LS_EPOLL_IO_THREADS 4
#define LS_EPOLL_EVENTS 128
/* The epoll data of the I/O pool's eventfd; descriptors are below it. */
#define LS_EPOLL_IO_TAG UINT64_MAX

enum ls_ep_state {
	LS_EP_QUEUED = 1,   /* on the run queue, to be tried */
	LS_EP_PARKED,       /* waiting for its descriptor to become ready */
	LS_EP_TIMER,        /* on the timer list */
	LS_EP_IO,           /* with the I/O threads */
	LS_EP_DONE,         /* result known, on the run queue to be delivered */
};

enum ls_ep_mode { LS_EP_UNWATCHED, LS_EP_EDGE, LS_EP_ONESHOT };

/* What the engine keeps per descriptor (indexed by its number). */
struct ls_ep_fd {
	struct ls_op *in, *out;  /* parked: waiting to read / to write */
	uint8_t mode;            /* enum ls_ep_mode */
	bool drained;            /* edge mode: nothing to read since the last edge */
	bool hup;                /* the peer hung up: no edge will come again */
};

struct ls_ep_queue {
	struct ls_op *head, *tail;
};

struct ls_epoll {
	int epfd;
	struct ls_ep_fd *fds;
	unsigned n_fds;
	struct ls_ep_queue run;       /* ops to try or deliver, in order */
	struct ls_ep_queue now;       /* the part of it being run by this pass */
	struct ls_op *timers;

	/* The I/O pool (workers.h): file reads, which epoll cannot wait on. */
	struct ls_workers *io;
	int io_efd;                   /* the pool's */
	struct ls_job_owner io_reads; /* the owner of every read job: ep is found from it */
};

static void ls_q_push(struct ls_ep_queue *q, struct ls_op *op)
{
	op->next = NULL;
	if (q->tail)
		q->tail->next = op;
	else
		q->head = op;
	q->tail = op;
}

static struct ls_op *ls_q_pop(struct ls_ep_queue *q)
{
	struct ls_op *op = q->head;
	if (op) {
		q->head = op->next;
		if (!q->head)
			q->tail = NULL;
		op->next = NULL;
	}
	return op;
}

/* ---- I/O pool */

static void ls_ep_done(struct ls_epoll *ep, struct ls_op *op, int res);

/* A read, on a thread of the I/O pool. */
static void ls_io_read_run(struct ls_job *job)
{
	struct ls_op *op = (struct ls_op *)((char *)job - offsetof(struct ls_op, job));
	ssize_t n;
	do
		n = pread(op->fd, op->u.read.buf, op->u.read.len, (off_t)op->u.read.offset);
	while (n < 0 && errno == EINTR);
	op->res = n < 0 ? -errno : (int)n;
}

/* The read is back on the loop thread (reaped): it completes like any op. */
static void ls_io_read_done(struct ls_job *job)
{
	struct ls_op *op = (struct ls_op *)((char *)job - offsetof(struct ls_op, job));
	struct ls_epoll *ep = (struct ls_epoll *)((char *)job->owner -
						  offsetof(struct ls_epoll, io_reads));
	ls_ep_done(ep, op, op->res);
}

/* ---- descriptors */

static struct ls_ep_fd *ls_ep_fd(struct ls_epoll *ep, int fd)
{
	if ((unsigned)fd >= ep->n_fds) {
		unsigned n = ep->n_fds ? ep->n_fds : 64;
		while (n <= (unsigned)fd)
			n *= 2;
		struct ls_ep_fd *fds = realloc(ep->fds, n * sizeof(*fds));
		if (!fds)
			return NULL;
		memset(fds + ep->n_fds, 0, (n - ep->n_fds) * sizeof(*fds));
		ep->fds = fds;
		ep->n_fds = n;
	}
	return &ep->fds[fd];
}

/* Put fd in the epoll set in the mode asked (re-arming a one-shot). 0 or -errno. */
static int ls_ep_watch(struct ls_epoll *ep, int fd, struct ls_ep_fd *f, enum ls_ep_mode mode)
{
	if (f->mode == mode && mode == LS_EP_EDGE)
		return 0;
	struct epoll_event ev = {.data.u64 = (uint64_t)fd};
	ev.events = mode == LS_EP_EDGE ? EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
				       : EPOLLIN | EPOLLONESHOT;
	int how = f->mode == LS_EP_UNWATCHED ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
	int rc = epoll_ctl(ep->epfd, how, fd, &ev);
	if (rc != 0 && errno == EEXIST)
		rc = epoll_ctl(ep->epfd, EPOLL_CTL_MOD, fd, &ev);
	if (rc != 0)
		return -errno;
	f->mode = (uint8_t)mode;
	return 0;
}

static void ls_ep_done(struct ls_epoll *ep, struct ls_op *op, int res)
{
	op->res = res;
	op->state = LS_EP_DONE;
	ls_q_push(&ep->run, op);
}

/* Wait for fd to be ready for op: 0, or -errno when it cannot be watched. */
static int ls_ep_park(struct ls_epoll *ep, struct ls_op *op, bool out)
{
	struct ls_ep_fd *f = ls_ep_fd(ep, op->fd);
	if (!f)
		return -ENOMEM;
	enum ls_ep_mode mode = op->kind == LS_OP_POLL_IN ? LS_EP_ONESHOT : LS_EP_EDGE;
	int rc = ls_ep_watch(ep, op->fd, f, mode);
	if (rc)
		return rc;
	if (!out)
		f->drained = true;
	if (out)
		f->out = op;
	else
		f->in = op;
	op->state = LS_EP_PARKED;
	return 0;
}

/* The system call of a socket operation; -EAGAIN when it would block. */
static int ls_ep_try(struct ls_op *op)
{
	ssize_t n;
	switch ((enum ls_op_kind)op->kind) {
	case LS_OP_ACCEPT:
		n = accept4(op->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		break;
	case LS_OP_RECVMSG:
		n = recvmsg(op->fd, op->u.msg.msg, op->u.msg.flags | MSG_DONTWAIT);
		break;
	case LS_OP_SENDMSG:
		n = sendmsg(op->fd, op->u.msg.msg, op->u.msg.flags | MSG_DONTWAIT);
		break;
	default:
		return -EINVAL;
	}
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	return (int)n;
}

/*
 * Whether a receive of res bytes left the socket empty.  A Unix stream
 * receive stops early only after a message that carried descriptors;
 * without any, and short of the buffer, it took everything queued, and
 * whatever arrives later raises a new edge.
 */
static bool ls_ep_recv_drained(const struct ls_op *op, int res)
{
	const struct msghdr *m = op->u.msg.msg;
	size_t cap = 0;
	for (size_t i = 0; i < m->msg_iovlen; i++)
		cap += m->msg_iov[i].iov_len;
	return res > 0 && (size_t)res < cap && m->msg_controllen == 0 &&
	       !(m->msg_flags & MSG_CTRUNC);
}

/* Deliver or try one op from the run queue.  Returns 1 when delivered. */
static int ls_ep_step(struct ls_loop *loop, struct ls_epoll *ep, struct ls_op *op)
{
	if (op->state == LS_EP_DONE) {
		op->state = 0;
		ls_loop_complete(loop, op, op->res);
		return 1;
	}
	bool out = op->kind == LS_OP_SENDMSG;
	struct ls_ep_fd *f = (unsigned)op->fd < ep->n_fds ? &ep->fds[op->fd] : NULL;
	int res = -EAGAIN;
	if (out || !f || !f->drained) {
		do
			res = ls_ep_try(op);
		while (res == -EINTR);
	}
	if (res == -EAGAIN) {
		res = ls_ep_park(ep, op, out);
		if (res == 0)
			return 0;
	} else if (op->kind == LS_OP_RECVMSG && ls_ep_recv_drained(op, res)) {
		/*
		 * Not after a hang-up: data and the end of the stream can come
		 * with one edge, and the receive that reads the data must not
		 * leave the end unread for an edge that never comes.
		 */
		f = ls_ep_fd(ep, op->fd);
		if (f && !f->hup)
			f->drained = true;
	}
	op->state = 0;
	ls_loop_complete(loop, op, res);
	return 1;
}

/*
 * Passes over the run queue; ops queued by a pass (a reply to send, the next
 * receive) run in the next one.  A few passes at most, so that an operation
 * that completes at once forever (an accept failing for want of
 * descriptors) cannot hold the loop here.
 */
static int ls_ep_run_queue(struct ls_loop *loop, struct ls_epoll *ep)
{
	int n = 0;
	for (int pass = 0; pass < 4 && ep->run.head; pass++) {
		ep->now = ep->run;
		ep->run.head = ep->run.tail = NULL;
		struct ls_op *op;
		while ((op = ls_q_pop(&ep->now)))
			n += ls_ep_step(loop, ep, op);
	}
	return n;
}

/* ---- the engine */

static void ls_epoll_destroy(struct ls_loop *loop);

static int ls_epoll_init(struct ls_loop *loop, unsigned entries, struct ls_err *err)
{
	(void)entries;
	struct ls_epoll *ep = calloc(1, sizeof(*ep));
	if (!ep)
		return ls_err_set(err, -ENOMEM, "out of memory");
	ep->epfd = epoll_create1(EPOLL_CLOEXEC);
	ep->io_efd = -1;
	loop->ctx = ep;
	if (ep->epfd < 0) {
		int rc = -errno;
		ls_epoll_destroy(loop);
		return ls_err_set(err, rc, "epoll: %s", strerror(-rc));
	}
	int prc = ls_workers_start(LS_EPOLL_IO_THREADS, &ep->io, &ep->io_efd);
	if (prc) {
		ls_epoll_destroy(loop);
		return ls_err_set(err, prc, "I/O threads: %s", strerror(-prc));
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = LS_EPOLL_IO_TAG};
	if (epoll_ctl(ep->epfd, EPOLL_CTL_ADD, ep->io_efd, &ev) != 0) {
		int rc = -errno;
		ls_epoll_destroy(loop);
		return ls_err_set(err, rc, "epoll: %s", strerror(-rc));
	}
	return 0;
}

static void ls_epoll_destroy(struct ls_loop *loop)
{
	struct ls_epoll *ep = loop->ctx;
	if (!ep)
		return;
	/* Reads still queued finish first; their completions are not delivered. */
	ls_workers_stop(ep->io);
	if (ep->epfd >= 0)
		close(ep->epfd);
	free(ep->fds);
	free(ep);
	loop->ctx = NULL;
}

static void ls_epoll_submit(struct ls_loop *loop, struct ls_op *op)
{
	struct ls_epoll *ep = loop->ctx;
	op->next = NULL;
	switch ((enum ls_op_kind)op->kind) {
	case LS_OP_ACCEPT: {
		/* The listening socket is ours or systemd's: make it nonblocking once. */
		int fl = fcntl(op->fd, F_GETFL);
		if (fl >= 0 && !(fl & O_NONBLOCK))
			fcntl(op->fd, F_SETFL, fl | O_NONBLOCK);
	}
		/* fall through */
	case LS_OP_RECVMSG:
	case LS_OP_SENDMSG:
		op->state = LS_EP_QUEUED;
		ls_q_push(&ep->run, op);
		break;
	case LS_OP_POLL_IN: {
		int rc = ls_ep_park(ep, op, false);
		if (rc)
			ls_ep_done(ep, op, rc);
		break;
	}
	case LS_OP_READ:
		op->state = LS_EP_IO;
		op->job = (struct ls_job){
			.run = ls_io_read_run, .done = ls_io_read_done, .owner = &ep->io_reads};
		ls_workers_submit(ep->io, &op->job);
		break;
	case LS_OP_TIMEOUT: {
		/* Kept in deadline order, so that timers due together complete in it. */
		op->state = LS_EP_TIMER;
		op->deadline_ns = ls_mono_ns() + op->u.timeout.sec * 1000000000 + op->u.timeout.nsec;
		struct ls_op **p = &ep->timers;
		while (*p && (*p)->deadline_ns <= op->deadline_ns)
			p = &(*p)->next;
		op->next = *p;
		*p = op;
		break;
	}
	}
}

/* Take op off wherever it waits and complete it with -ECANCELED. */
static void ls_epoll_cancel(struct ls_loop *loop, struct ls_op *op)
{
	struct ls_epoll *ep = loop->ctx;
	switch (op->state) {
	case LS_EP_QUEUED:
		op->res = -ECANCELED; /* still on the run queue: delivered from there */
		op->state = LS_EP_DONE;
		break;
	case LS_EP_PARKED: {
		struct ls_ep_fd *f = &ep->fds[op->fd];
		if (f->in == op)
			f->in = NULL;
		if (f->out == op)
			f->out = NULL;
		ls_ep_done(ep, op, -ECANCELED);
		break;
	}
	case LS_EP_TIMER:
		for (struct ls_op **p = &ep->timers; *p; p = &(*p)->next)
			if (*p == op) {
				*p = op->next;
				break;
			}
		ls_ep_done(ep, op, -ECANCELED);
		break;
	default:
		break; /* a read in flight or a result on its way: it completes as it is */
	}
}

static void ls_epoll_cancel_fd(struct ls_loop *loop, int fd)
{
	struct ls_epoll *ep = loop->ctx;
	struct ls_op *queues[2] = {ep->now.head, ep->run.head};
	for (int q = 0; q < 2; q++)
		for (struct ls_op *op = queues[q]; op; op = op->next)
			if (op->fd == fd && op->state == LS_EP_QUEUED) {
				op->res = -ECANCELED;
				op->state = LS_EP_DONE;
			}
	if ((unsigned)fd < ep->n_fds) {
		struct ls_ep_fd *f = &ep->fds[fd];
		if (f->in)
			ls_epoll_cancel(loop, f->in);
		if (f->out)
			ls_epoll_cancel(loop, f->out);
	}
}

static void ls_epoll_forget_fd(struct ls_loop *loop, int fd)
{
	struct ls_epoll *ep = loop->ctx;
	if ((unsigned)fd >= ep->n_fds || ep->fds[fd].mode == LS_EP_UNWATCHED)
		return;
	epoll_ctl(ep->epfd, EPOLL_CTL_DEL, fd, NULL);
	memset(&ep->fds[fd], 0, sizeof(ep->fds[fd]));
}

/* Hand the I/O pool's finished reads to the run queue (ls_io_read_done). */
static void ls_ep_io_reap(struct ls_epoll *ep)
{
	ls_workers_reap(ep->io);
}

static void ls_ep_event(struct ls_epoll *ep, const struct epoll_event *ev)
{
	if (ev->data.u64 == LS_EPOLL_IO_TAG) {
		ls_ep_io_reap(ep);
		return;
	}
	int fd = (int)ev->data.u64;
	if ((unsigned)fd >= ep->n_fds)
		return;
	struct ls_ep_fd *f = &ep->fds[fd];
	uint32_t e = ev->events;
	bool err = e & (EPOLLERR | EPOLLHUP);
	if (err || e & EPOLLRDHUP)
		f->hup = true;
	if (err || e & (EPOLLIN | EPOLLRDHUP))
		f->drained = false;
	if (f->in && (err || e & (EPOLLIN | EPOLLRDHUP))) {
		struct ls_op *op = f->in;
		f->in = NULL;
		if (op->kind == LS_OP_POLL_IN) {
			ls_ep_done(ep, op, (int)(e & (EPOLLIN | EPOLLERR | EPOLLHUP)));
		} else {
			op->state = LS_EP_QUEUED;
			ls_q_push(&ep->run, op);
		}
	}
	if (f->out && (err || e & EPOLLOUT)) {
		struct ls_op *op = f->out;
		f->out = NULL;
		op->state = LS_EP_QUEUED;
		ls_q_push(&ep->run, op);
	}
}

/* Complete the timers that are due; the milliseconds until the next, or -1. */
static int ls_ep_timers(struct ls_epoll *ep)
{
	int64_t now = ls_mono_ns(), next = -1;
	struct ls_op **p = &ep->timers;
	while (*p) {
		struct ls_op *op = *p;
		if (op->deadline_ns <= now) {
			*p = op->next;
			ls_ep_done(ep, op, -ETIME);
			continue;
		}
		if (next < 0 || op->deadline_ns - now < next)
			next = op->deadline_ns - now;
		p = &op->next;
	}
	return next < 0 ? -1 : (int)((next + 999999) / 1000000);
}

/*
 * Like io_uring_enter: wait only when nothing is ready, and return after
 * delivering what was (so the caller reaps sessions between batches).
 */
static int ls_epoll_run_once(struct ls_loop *loop, int timeout_ms)
{
	struct ls_epoll *ep = loop->ctx;
	int n = ls_ep_run_queue(loop, ep);
	int next = ls_ep_timers(ep);
	if (n > 0)
		return n + ls_ep_run_queue(loop, ep);
	int wait = ep->run.head ? 0 : timeout_ms < 0 ? -1 : timeout_ms;
	if (next >= 0 && (wait < 0 || next < wait))
		wait = next;
	struct epoll_event evs[LS_EPOLL_EVENTS];
	int nev = epoll_wait(ep->epfd, evs, LS_EPOLL_EVENTS, wait);
	if (nev < 0 && errno != EINTR)
		return -errno;
	for (int i = 0; i < nev; i++)
		ls_ep_event(ep, &evs[i]);
	ls_ep_timers(ep);
	return n + ls_ep_run_queue(loop, ep);
}

const struct ls_loop_engine ls_loop_engine_epoll = {
	/* .name      = */ "epoll",
	/* .init      = */ ls_epoll_init,
	/* .destroy   = */ ls_epoll_destroy,
	/* .submit    = */ ls_epoll_submit,
	/* .cancel    = */ ls_epoll_cancel,
	/* .cancel_fd = */ ls_epoll_cancel_fd,
	/* .forget_fd = */ ls_epoll_forget_fd,
	/* .run_once  = */ ls_epoll_run_once,
};
