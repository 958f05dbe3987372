/* The per-name job queue (job_queue.h): a list of keys in flight, each with its waiting chain. */
#include "job_queue.h"

#include <string.h>

void ls_job_queue_submit(struct ls_job_queue *q, struct ls_keyed_job *j)
{
	j->next_same = j->next_inflight = NULL;
	if (j->key[0]) {
		for (struct ls_keyed_job *f = q->inflight; f; f = f->next_inflight) {
			if (strcmp(f->key, j->key) != 0)
				continue;
			while (f->next_same)
				f = f->next_same;
			f->next_same = j;
			return;
		}
		j->next_inflight = q->inflight;
		q->inflight = j;
	}
	ls_workers_submit(q->workers, &j->job);
}

struct ls_keyed_job *ls_job_queue_done(struct ls_job_queue *q, struct ls_keyed_job *j)
{
	if (!j->key[0])
		return NULL;
	struct ls_keyed_job **p = &q->inflight;
	while (*p && *p != j)
		p = &(*p)->next_inflight;
	if (*p)
		*p = j->next_inflight;
	struct ls_keyed_job *next = j->next_same;
	if (next) {
		next->next_inflight = q->inflight;
		q->inflight = next;
		ls_workers_submit(q->workers, &next->job);
	}
	return next;
}
