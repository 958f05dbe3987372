/*
 * What the request modules share: the answers every request may give
 * (done, an admin refusal), the tier a request names, and the bound on the
 * worker jobs one connection may have queued.  Below every request module,
 * above session.c.  Also the entry points of the request modules, by file,
 * for dispatch.c.
 */
#ifndef LS_REQUEST_H
#define LS_REQUEST_H

#include <stdbool.h>
#include <stdint.h>

#include "server.h"

/* Answer "done" (a request with nothing to say back). */
void ls_send_done(struct ls_session *s, uint64_t id);

/* Whether s is an admin peer; if not, the request is refused with what it needed. */
bool ls_need_admin(struct ls_session *s, uint64_t id, const char *what);

/*
 * The tier a request names: host, or the device tier of the GPU with that
 * UUID (a UUID of "" when the daemon serves one GPU).  NULL with the reason
 * sent as the error.
 */
struct ls_tier *ls_request_tier(struct ls_session *s, uint64_t id, Lorastore__Tier tier,
				const char *device);

/*
 * Whether s may queue one more worker job; if not, the request is answered
 * busy.  A connection cannot fill the workers' queue: it waits for its
 * answers once it has --client-jobs requests there.
 */
bool ls_job_allowed(struct ls_session *s, uint64_t id);

/* catalog_jobs.c */
void ls_on_import(struct ls_session *s, Lorastore__Request *req);
void ls_on_delete(struct ls_session *s, Lorastore__Request *req);
void ls_on_verify(struct ls_session *s, Lorastore__Request *req);
void ls_on_rebuild(struct ls_session *s, Lorastore__Request *req);
void ls_on_tag(struct ls_session *s, Lorastore__Request *req, bool untag);
void ls_on_export(struct ls_session *s, Lorastore__Request *req);
void ls_on_gc(struct ls_session *s, Lorastore__Request *req);
void ls_on_push(struct ls_session *s, Lorastore__Request *req);
void ls_on_origin_list(struct ls_session *s, Lorastore__Request *req);

/* catalog_reads.c */
void ls_on_show(struct ls_session *s, Lorastore__Request *req);
void ls_on_list(struct ls_session *s, Lorastore__Request *req);

/* acquire.c */
void ls_on_acquire_or_load(struct ls_session *s, uint64_t id, const char *ref,
			   int64_t timeout_ms, bool lease, Lorastore__Tier tier, const char *device);
void ls_on_release(struct ls_session *s, Lorastore__Request *req);
void ls_on_prefetch(struct ls_session *s, Lorastore__Request *req);
void ls_on_evict(struct ls_session *s, Lorastore__Request *req);

/* stats.c */
void ls_on_stats(struct ls_session *s, Lorastore__Request *req);

#endif
