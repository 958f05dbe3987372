/* The worker pool of lorastored. */
#include "workers.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct ls_workers {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct ls_job_owner *ring_head, *ring_tail; /* owners with jobs waiting for a thread */
	struct ls_job_owner own;                    /* jobs submitted without an owner */
	struct ls_job *done_head, *done_tail;  /* waiting for the loop */
	unsigned busy;                          /* submitted and not yet reaped */
	bool stopping;
	int efd;
	unsigned n;
	pthread_t threads[];
};

static void ls_push(struct ls_job **head, struct ls_job **tail, struct ls_job *job)
{
	job->next = NULL;
	if (*tail)
		(*tail)->next = job;
	else
		*head = job;
	*tail = job;
}

static struct ls_job *ls_pop(struct ls_job **head, struct ls_job **tail)
{
	struct ls_job *job = *head;
	if (job) {
		*head = job->next;
		if (!*head)
			*tail = NULL;
	}
	return job;
}

/* Put an owner with queued jobs at the end of the ring. */
static void ls_ring_push(struct ls_workers *w, struct ls_job_owner *o)
{
	o->next = NULL;
	o->queued = true;
	if (w->ring_tail)
		w->ring_tail->next = o;
	else
		w->ring_head = o;
	w->ring_tail = o;
}

/* The next job in turn: the first of the owner at the head of the ring, which goes to the end. */
static struct ls_job *ls_next_job(struct ls_workers *w)
{
	struct ls_job_owner *o = w->ring_head;
	if (!o)
		return NULL;
	w->ring_head = o->next;
	if (!w->ring_head)
		w->ring_tail = NULL;
	o->queued = false;
	struct ls_job *job = ls_pop(&o->head, &o->tail);
	if (o->head)
		ls_ring_push(w, o);
	return job;
}

static void *ls_worker_main(void *arg)
{
	struct ls_workers *w = arg;
	pthread_mutex_lock(&w->lock);
	for (;;) {
		struct ls_job *job;
		while (!(job = ls_next_job(w)) && !w->stopping)
			pthread_cond_wait(&w->cond, &w->lock);
		if (!job)
			break;
		pthread_mutex_unlock(&w->lock);
		job->run(job);
		pthread_mutex_lock(&w->lock);
		ls_push(&w->done_head, &w->done_tail, job);
		uint64_t one = 1;
		/* The loop reads the eventfd; a full counter cannot happen with 2^64 - 1. */
		ssize_t n = write(w->efd, &one, sizeof(one));
		(void)n;
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

int ls_workers_start(unsigned n, struct ls_workers **out, int *efd)
{
	struct ls_workers *w = calloc(1, sizeof(*w) + n * sizeof(pthread_t));
	if (!w)
		return -ENOMEM;
	w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->efd < 0) {
		int e = errno;
		free(w);
		return -e;
	}
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	for (unsigned i = 0; i < n; i++) {
		int rc = pthread_create(&w->threads[i], NULL, ls_worker_main, w);
		if (rc) {
			w->n = i;
			ls_workers_stop(w);
			return -rc;
		}
		w->n = i + 1;
	}
	*out = w;
	*efd = w->efd;
	return 0;
}

void ls_workers_submit(struct ls_workers *w, struct ls_job *job)
{
	struct ls_job_owner *o = job->owner ? job->owner : &w->own;
	job->cancelled = false;
	pthread_mutex_lock(&w->lock);
	ls_push(&o->head, &o->tail, job);
	if (!o->queued)
		ls_ring_push(w, o);
	w->busy++;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

unsigned ls_workers_cancel(struct ls_workers *w, struct ls_job_owner *owner)
{
	unsigned n = 0;
	pthread_mutex_lock(&w->lock);
	if (owner->queued) {
		struct ls_job_owner **p = &w->ring_head, *prev = NULL;
		while (*p != owner) {
			prev = *p;
			p = &(*p)->next;
		}
		*p = owner->next;
		if (w->ring_tail == owner)
			w->ring_tail = prev;
		owner->queued = false;
	}
	struct ls_job *job;
	while ((job = ls_pop(&owner->head, &owner->tail))) {
		job->cancelled = true;
		ls_push(&w->done_head, &w->done_tail, job);
		n++;
	}
	pthread_mutex_unlock(&w->lock);
	if (n) {
		uint64_t one = 1;
		ssize_t r = write(w->efd, &one, sizeof(one));
		(void)r;
	}
	return n;
}

unsigned ls_workers_reap(struct ls_workers *w)
{
	uint64_t count;
	ssize_t n = read(w->efd, &count, sizeof(count));
	(void)n;
	pthread_mutex_lock(&w->lock);
	struct ls_job *list = w->done_head;
	w->done_head = w->done_tail = NULL;
	pthread_mutex_unlock(&w->lock);
	unsigned reaped = 0;
	while (list) {
		struct ls_job *job = list;
		list = job->next;
		pthread_mutex_lock(&w->lock);
		w->busy--;
		pthread_mutex_unlock(&w->lock);
		job->done(job);
		reaped++;
	}
	return reaped;
}

unsigned ls_workers_busy(struct ls_workers *w)
{
	pthread_mutex_lock(&w->lock);
	unsigned n = w->busy;
	pthread_mutex_unlock(&w->lock);
	return n;
}

void ls_workers_stop(struct ls_workers *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	for (unsigned i = 0; i < w->n; i++)
		pthread_join(w->threads[i], NULL);
	close(w->efd);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	free(w);
}
