/*
 * The event loop of lorastored: one thread on which every socket accept,
 * receive and send, blob read, signal, timer and worker completion arrives
 * as the completion of an operation, dispatched to the function that asked
 * for it.
 *
 * Two engines sit behind this one interface (loop_engine.h), one file each:
 * io_uring (loop_uring.c, preferred: one system call submits and reaps
 * everything) and epoll (loop_epoll.c, for where io_uring is refused:
 * Docker's default seccomp profile, gVisor, kernel.io_uring_disabled).
 * Nothing above the loop knows which one runs; an operation completes the
 * same way on both, with a result in io_uring's convention (a count or a
 * descriptor, or -errno).
 */
#ifndef LS_LOOP_H
#define LS_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ls_error.h"
#include "workers.h"

enum ls_loop_kind { LS_LOOP_AUTO, LS_LOOP_IO_URING, LS_LOOP_EPOLL };

struct ls_loop;
struct ls_op;

/* Called on the loop thread with the operation's result (>= 0, or -errno). */
typedef void (*ls_op_fn)(struct ls_loop *loop, struct ls_op *op, int res);

enum ls_op_kind {
	LS_OP_ACCEPT,     /* res: the new connection's descriptor (close-on-exec) */
	LS_OP_RECVMSG,    /* res: bytes received, 0 at end of stream */
	LS_OP_SENDMSG,    /* res: bytes sent (possibly fewer than asked) */
	LS_OP_READ,       /* res: bytes read from a file at an offset (possibly fewer) */
	LS_OP_POLL_IN,    /* res: poll events once the descriptor is readable */
	LS_OP_TIMEOUT,    /* res: -ETIME once the time has passed */
};

/*
 * Embedded in whatever owns an operation, which must stay in place until
 * the completion has been delivered.  ls_loop_<verb> fills the request; the
 * rest belongs to the engine.
 */
struct ls_op {
	ls_op_fn fn;
	bool pending;                /* submitted and not yet completed */
	uint8_t kind;                /* enum ls_op_kind */
	int fd;
	union {
		struct {
			struct msghdr *msg;
			int flags;
		} msg;
		struct {
			void *buf;
			uint32_t len;
			uint64_t offset;
		} read;
		struct {
			int64_t sec, nsec;   /* laid out as io_uring's __kernel_timespec */
		} timeout;
	} u;
	/* Engine-private. */
	uint8_t state;
	int res;
	int64_t deadline_ns;
	struct ls_op *next;
	struct ls_job job;           /* epoll: a read, on the engine's I/O pool */
};

struct ls_loop_engine;

struct ls_loop {
	const struct ls_loop_engine *engine;  /* NULL before init and after destroy */
	void *ctx;                            /* the engine's state */
	unsigned pending;                     /* operations submitted and not yet completed */
};

/* "auto", "io_uring" or "epoll" to a kind: 0 or -EINVAL. */
int ls_loop_kind_parse(const char *s, enum ls_loop_kind *out);
const char *ls_loop_kind_name(enum ls_loop_kind kind);

/*
 * Start an engine.  AUTO tries io_uring and, when the kernel or a sandbox
 * refuses it, falls back to epoll and logs the cause once.  IO_URING where
 * io_uring is refused fails with a message naming the likely cause and the
 * way out.  Returns 0 or an error with err.
 */
int ls_loop_init(struct ls_loop *loop, enum ls_loop_kind kind, unsigned entries,
		 struct ls_err *err);
void ls_loop_destroy(struct ls_loop *loop);

/* "io_uring" or "epoll": the engine running. */
const char *ls_loop_name(const struct ls_loop *loop);

/* Accept one connection on a listening socket. */
void ls_loop_accept(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd);
/* Receive into msg (with ancillary data); flags as recvmsg's. */
void ls_loop_recvmsg(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd,
		     struct msghdr *msg, int flags);
/* Send msg (with ancillary data, e.g. SCM_RIGHTS); flags as sendmsg's. */
void ls_loop_sendmsg(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd,
		     struct msghdr *msg, int flags);
/* Read len bytes of a file at offset into buf (O_DIRECT descriptors allowed). */
void ls_loop_read(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd, void *buf,
		  uint32_t len, uint64_t offset);
/* Complete once fd is readable; the caller reads it. */
void ls_loop_poll_in(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, int fd);
/* Complete with -ETIME after ms milliseconds. */
void ls_loop_timeout(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn, unsigned ms);

/*
 * Ask a pending operation to end early: it completes with -ECANCELED, or
 * with its own result if it had already finished.  Nothing if not pending.
 */
void ls_loop_cancel(struct ls_loop *loop, struct ls_op *op);
/* The same for every pending operation on a socket. */
void ls_loop_cancel_fd(struct ls_loop *loop, int fd);

/* Close a socket the loop has served, once nothing is pending on it. */
void ls_loop_close_fd(struct ls_loop *loop, int fd);

/*
 * Wait for at least one completion (or until timeout_ms passes; < 0: no
 * limit) and dispatch every completion available.  Returns the number
 * dispatched or -errno.
 */
int ls_loop_run_once(struct ls_loop *loop, int timeout_ms);

#endif
