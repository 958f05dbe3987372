/*
 * The per-name job queue: catalog writes of one name (imports and deletes)
 * run one at a time, in the order the loop received them, so that a delete
 * received before an import cannot remove the version the import adds, and
 * the reverse.  Jobs of different names, and jobs without a name, go to the
 * workers at once.  Loop thread only.
 */
#ifndef LS_JOB_QUEUE_H
#define LS_JOB_QUEUE_H

#include <stdbool.h>

#include "ls_name.h"
#include "workers.h"

/* A worker job that may be keyed by a name; embedded first in the caller's job. */
struct ls_keyed_job {
	struct ls_job job;
	char key[LS_NAME_MAX + 1];   /* "": not keyed */
	struct ls_keyed_job *next_same;     /* the job of the same key waiting for this one */
	struct ls_keyed_job *next_inflight; /* on the queue's list of keys in flight */
};

struct ls_job_queue {
	struct ls_workers *workers;
	struct ls_keyed_job *inflight; /* one job per key in flight */
};

/* Hand j to the workers, or queue it behind the job of its key in flight. */
void ls_job_queue_submit(struct ls_job_queue *q, struct ls_keyed_job *j);

/*
 * A keyed job is done (its done() runs): the next job of its key, if any,
 * goes to the workers and is returned.
 */
struct ls_keyed_job *ls_job_queue_done(struct ls_job_queue *q, struct ls_keyed_job *j);

/* Whether any keyed job is queued or running. */
static inline bool ls_job_queue_busy(const struct ls_job_queue *q)
{
	return q->inflight != NULL;
}

#endif
