/*
 * The event loop's one interface: each verb fills in an operation and hands
 * it to the engine that runs (loop_uring.c or loop_epoll.c), chosen here.
 */
#include "loop.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "loop_engine.h"

int ls_loop_kind_parse(const char *s, enum ls_loop_kind *out)
{
	static const char *const names[] = {"auto", "io_uring", "epoll"};
	for (int i = 0; i < 3; i++)
		if (strcmp(s, names[i]) == 0) {
			*out = (enum ls_loop_kind)i;
			return 0;
		}
	return -EINVAL;
}

const char *ls_loop_kind_name(enum ls_loop_kind kind)
{
	return kind == LS_LOOP_IO_URING ? "io_uring" : kind == LS_LOOP_EPOLL ? "epoll" : "auto";
}

/* Whether an io_uring failure means "not allowed or not there" rather than a fault. */
static bool ls_uring_refused(int rc)
{
	return rc == -EPERM || rc == -EACCES || rc == -ENOSYS || rc == -EINVAL ||
	       rc == -ENOMEM || rc == -EOPNOTSUPP;
}

/* The likely cause of a refusal, for the log and the error message. */
static const char *ls_uring_cause(int rc)
{
	switch (rc) {
	case -EPERM:
	case -EACCES:
		return "a seccomp profile (Docker's default refuses io_uring) or "
		       "kernel.io_uring_disabled=2 forbids it";
	case -ENOSYS:
		return "this kernel or sandbox has no io_uring (gVisor, or a kernel built "
		       "without it)";
	case -ENOMEM:
		return "RLIMIT_MEMLOCK is too low for the ring (raise LimitMEMLOCK)";
	case -EOPNOTSUPP:
		return "this kernel's io_uring lacks operations lorastored needs";
	default:
		return "the kernel refused the ring's setup";
	}
}

int ls_loop_init(struct ls_loop *loop, enum ls_loop_kind kind, unsigned entries,
		 struct ls_err *err)
{
	memset(loop, 0, sizeof(*loop));
	if (kind != LS_LOOP_EPOLL) {
		struct ls_err uerr;
		ls_err_clear(&uerr);
		loop->engine = &ls_loop_engine_uring;
		int rc = loop->engine->init(loop, entries, &uerr);
		if (rc == 0)
			return 0;
		loop->engine = NULL;
		if (kind == LS_LOOP_IO_URING || !ls_uring_refused(rc))
			return ls_err_set(err, rc,
					  "io_uring: %s: %s; run with --event-loop epoll (or auto), "
					  "or allow io_uring (Docker: a seccomp profile that permits "
					  "io_uring_setup, io_uring_enter and io_uring_register; "
					  "sysctl kernel.io_uring_disabled=0)",
					  uerr.msg, ls_uring_cause(rc));
		ls_info("event loop: io_uring refused (%s: %s); using epoll", uerr.msg,
			ls_uring_cause(rc));
	}
	loop->engine = &ls_loop_engine_epoll;
	int rc = loop->engine->init(loop, entries, err);
	if (rc)
		loop->engine = NULL;
	return rc;
}

void ls_loop_destroy(struct ls_loop *loop)
{
	if (loop->engine)
		loop->engine->destroy(loop);
	loop->engine = NULL;
	loop->ctx = NULL;
}

const char *ls_loop_name(const struct ls_loop *loop)
{
	return loop->engine ? loop->engine->name : "none";
}

static void ls_submit(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, enum ls_op_kind kind,
		      int fd)
{
	op->fn = fn;
	op->kind = (uint8_t)kind;
	op->fd = fd;
	op->pending = true;
	loop->pending++;
	loop->engine->submit(loop, op);
}

void ls_loop_accept(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd)
{
	ls_submit(loop, op, fn, LS_OP_ACCEPT, fd);
}

void ls_loop_recvmsg(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd,
		     struct msghdr *msg, int flags)
{
	op->u.msg.msg = msg;
	op->u.msg.flags = flags;
	ls_submit(loop, op, fn, LS_OP_RECVMSG, fd);
}

void ls_loop_sendmsg(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd,
		     struct msghdr *msg, int flags)
{
	op->u.msg.msg = msg;
	op->u.msg.flags = flags;
	ls_submit(loop, op, fn, LS_OP_SENDMSG, fd);
}

void ls_loop_read(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd, void *buf,
		  uint32_t len, uint64_t offset)
{
	op->u.read.buf = buf;
	op->u.read.len = len;
	op->u.read.offset = offset;
	ls_submit(loop, op, fn, LS_OP_READ, fd);
}

void ls_loop_poll_in(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd)
{
	ls_submit(loop, op, fn, LS_OP_POLL_IN, fd);
}

void ls_loop_timeout(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, unsigned ms)
{
	op->u.timeout.sec = ms / 1000;
	op->u.timeout.nsec = (int64_t)(ms % 1000) * 1000000;
	ls_submit(loop, op, fn, LS_OP_TIMEOUT, -1);
}

void ls_loop_cancel(struct ls_loop *loop, struct ls_op *op)
{
	if (op->pending)
		loop->engine->cancel(loop, op);
}

void ls_loop_cancel_fd(struct ls_loop *loop, int fd)
{
	loop->engine->cancel_fd(loop, fd);
}

void ls_loop_close_fd(struct ls_loop *loop, int fd)
{
	if (loop->engine)
		loop->engine->forget_fd(loop, fd);
	close(fd);
}

int ls_loop_run_once(struct ls_loop *loop, int timeout_ms)
{
	return loop->engine->run_once(loop, timeout_ms);
}
