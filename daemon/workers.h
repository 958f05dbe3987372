/*
 * A pool of threads for work the event loop must not wait on.  A job runs
 * `run` on a pool thread, then `done` on the loop thread, after the loop
 * reads the pool's eventfd and reaps.  The daemon's pools: the workers
 * (imports, checksums, verify, gc, catalog reads), the epoll engine's reads
 * (loop_epoll.c), and each CUDA backend's completion waits (backend_cuda.c,
 * one thread: in submission order).  Jobs of one owner run in the order
 * submitted; owners take turns.
 */
#ifndef LS_WORKERS_H
#define LS_WORKERS_H

#include <stdbool.h>

struct ls_job;
typedef void (*ls_job_fn)(struct ls_job *job);

/*
 * Whom jobs are for (a client connection).  The pool takes the owners with
 * queued jobs in turn, one job each, so that a long queue of one owner does
 * not hold up another's.  Embedded in the owner, zeroed, and kept in place
 * while any of its jobs is queued.
 */
struct ls_job_owner {
	struct ls_job *head, *tail;  /* queued, owned by the pool */
	struct ls_job_owner *next;   /* on the pool's ring of owners with queued jobs */
	bool queued;
};

struct ls_job {
	ls_job_fn run;        /* on a worker thread */
	ls_job_fn done;       /* on the loop thread, after run (or after a cancel) */
	struct ls_job_owner *owner; /* NULL: the pool's own queue */
	bool cancelled;       /* done without run: ls_workers_cancel */
	struct ls_job *next;  /* queue link, owned by the pool */
};

struct ls_workers;

/* Start n threads; the eventfd to watch goes to *efd. 0 or -errno. */
int ls_workers_start(unsigned n, struct ls_workers **out, int *efd);

/* Queue a job (any thread), behind the jobs of the same owner. */
void ls_workers_submit(struct ls_workers *w, struct ls_job *job);

/*
 * Drop the jobs of owner that no thread has started: each comes back
 * through done() with cancelled set.  Jobs running finish as usual.
 * Returns how many were dropped.
 */
unsigned ls_workers_cancel(struct ls_workers *w, struct ls_job_owner *owner);

/*
 * On the loop thread after the eventfd fired: call done() of every finished
 * job.  Returns how many ran.
 */
unsigned ls_workers_reap(struct ls_workers *w);

/* Jobs queued or running and not yet reaped. */
unsigned ls_workers_busy(struct ls_workers *w);

/* Finish queued jobs, join the threads, free the pool (done() is not called). */
void ls_workers_stop(struct ls_workers *w);

#endif
