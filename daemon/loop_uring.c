/*
 * The io_uring engine: every operation is one submission entry whose
 * user_data is the operation; one io_uring_enter submits what is queued and
 * waits for completions.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <liburing.h>

#include "loop_engine.h"

/* The operations the daemon submits; a ring without one of them is refused. */
static const int ls_uring_ops[] = {
	IORING_OP_ACCEPT, IORING_OP_RECVMSG, IORING_OP_SENDMSG,     IORING_OP_READ,
	IORING_OP_POLL_ADD, IORING_OP_TIMEOUT, IORING_OP_ASYNC_CANCEL,
};

static const char *ls_uring_op_name(int op)
{
	switch (op) {
	case IORING_OP_ACCEPT: return "ACCEPT";
	case IORING_OP_RECVMSG: return "RECVMSG";
	case IORING_OP_SENDMSG: return "SENDMSG";
	case IORING_OP_READ: return "READ";
	case IORING_OP_POLL_ADD: return "POLL_ADD";
	case IORING_OP_TIMEOUT: return "TIMEOUT";
	default: return "ASYNC_CANCEL";
	}
}

/*
 * Only the loop thread submits, and it reaps completions only when it waits
 * for them: with DEFER_TASKRUN the kernel runs completion work then, in one
 * batch, instead of interrupting the loop (an IPI and a task-work run) for
 * every message a client sends.  Kernels before 6.1 lack it; the ring then
 * falls back to cooperative task running, then to none.
 */
static int ls_uring_init(struct ls_loop *loop, unsigned entries, struct ls_err *err)
{
	static const unsigned tries[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	struct io_uring *ring = calloc(1, sizeof(*ring));
	if (!ring)
		return ls_err_set(err, -ENOMEM, "out of memory");
	int rc = -EINVAL;
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		rc = io_uring_queue_init(entries, ring, tries[i]);
		if (rc != -EINVAL)
			break;
	}
	if (rc) {
		free(ring);
		return ls_err_set(err, rc, "io_uring_setup: %s", strerror(-rc));
	}
	/*
	 * A sandbox may give a ring that lacks operations (gVisor's has only a
	 * few): better to refuse it now, and let auto pick epoll, than to fail
	 * on the first client.
	 */
	struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
	if (!probe) {
		io_uring_queue_exit(ring);
		free(ring);
		return ls_err_set(err, -EOPNOTSUPP, "io_uring_register (probe): refused");
	}
	for (size_t i = 0; i < sizeof(ls_uring_ops) / sizeof(ls_uring_ops[0]); i++)
		if (!io_uring_opcode_supported(probe, ls_uring_ops[i])) {
			rc = ls_err_set(err, -EOPNOTSUPP, "io_uring: no %s operation",
					ls_uring_op_name(ls_uring_ops[i]));
			break;
		}
	io_uring_free_probe(probe);
	if (rc) {
		io_uring_queue_exit(ring);
		free(ring);
		return rc;
	}
	loop->ctx = ring;
	return 0;
}

static void ls_uring_destroy(struct ls_loop *loop)
{
	struct io_uring *ring = loop->ctx;
	io_uring_queue_exit(ring);
	free(ring);
}

/* A submission entry, submitting what is queued first if the ring is full. */
static struct io_uring_sqe *ls_uring_sqe(struct io_uring *ring)
{
	struct io_uring_sqe *sqe;
	while (!(sqe = io_uring_get_sqe(ring)))
		io_uring_submit(ring);
	return sqe;
}

_Static_assert(sizeof(((struct ls_op *)0)->u.timeout) == sizeof(struct __kernel_timespec),
	       "the timeout is laid out as a __kernel_timespec");

static void ls_uring_submit(struct ls_loop *loop, struct ls_op *op)
{
	struct io_uring_sqe *sqe = ls_uring_sqe(loop->ctx);
	switch ((enum ls_op_kind)op->kind) {
	case LS_OP_ACCEPT:
		io_uring_prep_accept(sqe, op->fd, NULL, NULL, SOCK_CLOEXEC);
		break;
	case LS_OP_RECVMSG:
		io_uring_prep_recvmsg(sqe, op->fd, op->u.msg.msg, (unsigned)op->u.msg.flags);
		break;
	case LS_OP_SENDMSG:
		io_uring_prep_sendmsg(sqe, op->fd, op->u.msg.msg, (unsigned)op->u.msg.flags);
		break;
	case LS_OP_READ:
		io_uring_prep_read(sqe, op->fd, op->u.read.buf, op->u.read.len, op->u.read.offset);
		break;
	case LS_OP_POLL_IN:
		io_uring_prep_poll_add(sqe, op->fd, POLLIN);
		break;
	case LS_OP_TIMEOUT:
		io_uring_prep_timeout(sqe, (struct __kernel_timespec *)&op->u.timeout, 0, 0);
		break;
	}
	io_uring_sqe_set_data(sqe, op);
}

static void ls_uring_cancel(struct ls_loop *loop, struct ls_op *op)
{
	struct io_uring_sqe *sqe = ls_uring_sqe(loop->ctx);
	io_uring_prep_cancel(sqe, op, 0);
	io_uring_sqe_set_data(sqe, NULL);
}

static void ls_uring_cancel_fd(struct ls_loop *loop, int fd)
{
	struct io_uring_sqe *sqe = ls_uring_sqe(loop->ctx);
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data(sqe, NULL);
}

static void ls_uring_forget_fd(struct ls_loop *loop, int fd)
{
	(void)loop;
	(void)fd; /* the ring keeps nothing per descriptor */
}

static int ls_uring_run_once(struct ls_loop *loop, int timeout_ms)
{
	struct io_uring *ring = loop->ctx;
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000,
				       .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
	int rc = io_uring_submit_and_wait_timeout(ring, &cqe, 1, timeout_ms < 0 ? NULL : &ts, NULL);
	if (rc < 0 && rc != -ETIME && rc != -EINTR)
		return rc;
	int n = 0;
	while (io_uring_peek_cqe(ring, &cqe) == 0) {
		struct ls_op *op = io_uring_cqe_get_data(cqe);
		int res = cqe->res;
		io_uring_cqe_seen(ring, cqe);
		if (!op)
			continue; /* a cancel request's own completion */
		ls_loop_complete(loop, op, res);
		n++;
	}
	return n;
}

const struct ls_loop_engine ls_loop_engine_uring = {
	/* .name      = */ "io_uring",
	/* .init      = */ ls_uring_init,
	/* .destroy   = */ ls_uring_destroy,
	/* .submit    = */ ls_uring_submit,
	/* .cancel    = */ ls_uring_cancel,
	/* .cancel_fd = */ ls_uring_cancel_fd,
	/* .forget_fd = */ ls_uring_forget_fd,
	/* .run_once  = */ ls_uring_run_once,
};
