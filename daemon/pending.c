/* Pending acquires (pending.h). */
#include "pending.h"

#include <errno.h>
#include <stdlib.h>

static void ls_pending_unlink(struct ls_pending *p)
{
	struct ls_pending_list *list = p->list;
	if (p->prev)
		p->prev->next = p->next;
	else
		list->head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	p->list = NULL;
}

/* The load a pending request waited on finished (or failed). */
static void ls_pending_woken(struct ls_waiter *w, struct ls_resident *res, int rc, const char *msg)
{
	struct ls_pending *p = (struct ls_pending *)w;
	ls_pending_unlink(p);
	p->answer(p, res, rc, msg);
	free(p);
}

struct ls_pending *ls_pending_new(ls_pending_fn answer, void *owner, uint64_t request_id,
				  bool lease, int64_t deadline_ms, int64_t t0_ns)
{
	struct ls_pending *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->waiter.fn = ls_pending_woken;
	p->answer = answer;
	p->owner = owner;
	p->request_id = request_id;
	p->lease = lease;
	p->deadline_ms = deadline_ms;
	p->t0_ns = t0_ns;
	return p;
}

void ls_pending_wait(struct ls_pending_list *list, struct ls_pending *p)
{
	p->list = list;
	p->prev = NULL;
	p->next = list->head;
	if (list->head)
		list->head->prev = p;
	list->head = p;
}

void ls_pending_free(struct ls_pending *p)
{
	free(p);
}

void ls_pending_expire(struct ls_pending_list *list, int64_t now_ms)
{
	struct ls_pending *p = list->head;
	while (p) {
		struct ls_pending *next = p->next;
		if (p->deadline_ms >= 0 && now_ms >= p->deadline_ms) {
			ls_res_cancel(&p->waiter);
			ls_pending_unlink(p);
			p->answer(p, NULL, -ETIMEDOUT, "the adapter did not finish loading in time");
			free(p);
		}
		p = next;
	}
}

void ls_pending_cancel_all(struct ls_pending_list *list)
{
	while (list->head) {
		struct ls_pending *p = list->head;
		ls_res_cancel(&p->waiter);
		ls_pending_unlink(p);
		free(p);
	}
}
