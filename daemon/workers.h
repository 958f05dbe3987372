/*
 * The worker pool: a few threads for CPU-heavy or blocking work (imports,
 * checksums, verify, gc) so that the event loop never blocks.  A job runs
 * `run` on a worker thread, then `done` on the loop thread, after the loop
 * reads the pool's eventfd.
 */
#ifndef LS_WORKERS_H
#define LS_WORKERS_H

#include <stdbool.h>

struct ls_job;
typedef void (*ls_job_fn)(struct ls_job *job);

struct ls_job {
	ls_job_fn run;        /* on a worker thread */
	ls_job_fn done;       /* on the loop thread, after run */
	struct ls_job *next;  /* queue link, owned by the pool */
};

struct ls_workers;

/* Start n threads; the eventfd to watch goes to *efd. 0 or -errno. */
int ls_workers_start(unsigned n, struct ls_workers **out, int *efd);

/* Queue a job (any thread). */
void ls_workers_submit(struct ls_workers *w, struct ls_job *job);

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
