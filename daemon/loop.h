/*
 * The event loop of lorastored on io_uring: every socket accept, receive and
 * send, blob read, signal and worker completion arrives here as a completion,
 * dispatched to the operation that asked for it.
 */
#ifndef LS_LOOP_H
#define LS_LOOP_H

#include <liburing.h>
#include <stdbool.h>

struct ls_loop;
struct ls_op;

/* Called on the loop thread with the completion's result and flags. */
typedef void (*ls_op_fn)(struct ls_loop *loop, struct ls_op *op, int res, unsigned flags);

/* Embedded in whatever owns an operation; its address is the user_data. */
struct ls_op {
	ls_op_fn fn;
	bool pending;         /* submitted and not yet completed */
};

struct ls_loop {
	struct io_uring ring;
	unsigned pending;     /* operations submitted and not yet completed */
};

int ls_loop_init(struct ls_loop *loop, unsigned entries);
void ls_loop_destroy(struct ls_loop *loop);

/*
 * A submission entry for op (submitting queued ones first if the ring is
 * full); the caller fills it with io_uring_prep_*.  Never NULL.
 */
struct io_uring_sqe *ls_loop_sqe(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn);

/*
 * Submit what is queued, wait for at least one completion (or until
 * timeout_ms passes) and dispatch every completion available.
 * Returns the number dispatched or -errno.
 */
int ls_loop_run_once(struct ls_loop *loop, int timeout_ms);

#endif
