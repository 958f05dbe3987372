/*
 * What an event-loop engine implements (loop.h is what the daemon sees).
 * One file per engine fills a static const table; loop.c fills in each
 * operation's request and calls through the table.  Only loop.c and the
 * engines include this header.
 */
#ifndef LS_LOOP_ENGINE_H
#define LS_LOOP_ENGINE_H

#include "loop.h"

struct ls_loop_engine {
	const char *name;
	/*
	 * Set up loop->ctx.  A refusal by the kernel or a sandbox (the engine
	 * cannot run here at all) returns the -errno it got, with err saying
	 * which call refused.
	 */
	int (*init)(struct ls_loop *loop, unsigned entries, struct ls_err *err);
	void (*destroy)(struct ls_loop *loop);
	/* Start op (its request filled, fn set, counted pending). */
	void (*submit)(struct ls_loop *loop, struct ls_op *op);
	void (*cancel)(struct ls_loop *loop, struct ls_op *op);
	void (*cancel_fd)(struct ls_loop *loop, int fd);
	/* Forget what the engine keeps for a socket about to be closed. */
	void (*forget_fd)(struct ls_loop *loop, int fd);
	int (*run_once)(struct ls_loop *loop, int timeout_ms);
};

extern const struct ls_loop_engine ls_loop_engine_uring;
extern const struct ls_loop_engine ls_loop_engine_epoll;

/* For engines: mark op done and call it. */
static inline void ls_loop_complete(struct ls_loop *loop, struct ls_op *op, int res)
{
	op->pending = false;
	loop->pending--;
	op->fn(loop, op, res);
}

#endif
