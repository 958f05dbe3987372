/* The io_uring event loop of lorastored. */
#include "loop.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "log.h"

/*
 * Only the loop thread submits, and it reaps completions only when it waits
 * for them: with DEFER_TASKRUN the kernel runs completion work then, in one
 * batch, instead of interrupting the loop (an IPI and a task-work run) for
 * every message a client sends.  Kernels before 6.1 lack it; the ring then
 * falls back to cooperative task running, then to none.
 */
int ls_loop_init(struct ls_loop *loop, unsigned entries)
{
	static const unsigned tries[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	memset(loop, 0, sizeof(*loop));
	int rc = -EINVAL;
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		rc = io_uring_queue_init(entries, &loop->ring, tries[i]);
		if (rc != -EINVAL)
			break;
	}
	return rc;
}

void ls_loop_destroy(struct ls_loop *loop)
{
	io_uring_queue_exit(&loop->ring);
}

struct io_uring_sqe *ls_loop_sqe(struct ls_loop *loop, struct ls_op *op, ls_op_fn fn)
{
	struct io_uring_sqe *sqe;
	while (!(sqe = io_uring_get_sqe(&loop->ring)))
		io_uring_submit(&loop->ring);
	op->fn = fn;
	op->pending = true;
	loop->pending++;
	io_uring_sqe_set_data(sqe, op);
	return sqe;
}

int ls_loop_run_once(struct ls_loop *loop, int timeout_ms)
{
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000,
				       .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
	int rc = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1, &ts, NULL);
	if (rc < 0 && rc != -ETIME && rc != -EINTR)
		return rc;
	int n = 0;
	while (io_uring_peek_cqe(&loop->ring, &cqe) == 0) {
		struct ls_op *op = io_uring_cqe_get_data(cqe);
		int res = cqe->res;
		unsigned flags = cqe->flags;
		io_uring_cqe_seen(&loop->ring, cqe);
		if (!op)
			continue; /* a cancel request's own completion */
		op->pending = false;
		loop->pending--;
		op->fn(loop, op, res, flags);
		n++;
	}
	return n;
}
