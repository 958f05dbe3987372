/*
 * Pending acquires: requests (an acquire or a load) waiting for a version
 * to finish loading, each with its deadline.  This module owns them from
 * allocation to free: residency calls back through the waiter when the load
 * ends, the tick expires those whose deadline passed, and a connection that
 * goes cancels its own.  It answers nothing itself: each pending request
 * carries the function that answers it.  Loop thread only.
 */
#ifndef LS_PENDING_H
#define LS_PENDING_H

#include <stdbool.h>
#include <stdint.h>

#include "residency.h"

struct ls_pending;

/*
 * Answer a pending request: rc 0 with the resident entry, or an error with
 * its message (-ETIMEDOUT when the deadline passed; res is NULL then).
 * p is freed when it returns.
 */
typedef void (*ls_pending_fn)(struct ls_pending *p, struct ls_resident *res, int rc,
			      const char *msg);

struct ls_pending {
	struct ls_waiter waiter;     /* first: residency calls back through it */
	struct ls_pending_list *list;
	ls_pending_fn answer;
	void *owner;                 /* the connection that asked */
	uint64_t request_id;
	bool lease;                  /* acquire (take a lease) or load (just wait) */
	int64_t deadline_ms;         /* CLOCK_MONOTONIC (ls_mono_ms); < 0 for none */
	int64_t t0_ns;               /* CLOCK_MONOTONIC when the request arrived */
	struct ls_pending *next, *prev;
};

/* One connection's pending requests. */
struct ls_pending_list {
	struct ls_pending *head;
};

/* A pending request, not yet waiting (NULL when out of memory). */
struct ls_pending *ls_pending_new(ls_pending_fn answer, void *owner, uint64_t request_id,
				  bool lease, int64_t deadline_ms, int64_t t0_ns);

/* p waits on list: residency accepted its waiter (the load is under way). */
void ls_pending_wait(struct ls_pending_list *list, struct ls_pending *p);

/* Free a request that never waited (the version was resident, or the request failed). */
void ls_pending_free(struct ls_pending *p);

/* Answer -ETIMEDOUT to the requests of list whose deadline is past now_ms. */
void ls_pending_expire(struct ls_pending_list *list, int64_t now_ms);

/* Stop every request of list without answering: its connection is going. */
void ls_pending_cancel_all(struct ls_pending_list *list);

#endif
