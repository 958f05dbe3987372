/* What every request module shares (request.h). */
#include "request.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void ls_send_done(struct ls_session *s, uint64_t id)
{
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = id;
	resp.body_case = LORASTORE__RESPONSE__BODY_DONE;
	resp.done = &empty;
	ls_session_send(s, &resp, -1);
}

bool ls_need_admin(struct ls_session *s, uint64_t id, const char *what)
{
	if (s->admin)
		return true;
	ls_session_error(s, id, -EPERM,
			 "%s needs an admin peer (root, the daemon's user or its admin group); "
			 "uid %u is not",
			 what, (unsigned)s->cred.uid);
	return false;
}

_Static_assert((int)LORASTORE__TIER__TIER_HOST == (int)LS_TIER_HOST &&
		       (int)LORASTORE__TIER__TIER_DEVICE == (int)LS_TIER_DEVICE,
	       "the wire's tiers are lorastore's");

struct ls_tier *ls_request_tier(struct ls_session *s, uint64_t id, Lorastore__Tier tier,
				const char *device)
{
	struct ls_residency *r = s->srv->res;
	if (tier == LORASTORE__TIER__TIER_HOST)
		return ls_res_host(r);
	if (tier != LORASTORE__TIER__TIER_DEVICE) {
		ls_session_error(s, id, LS_E_PROTOCOL, "unknown tier %d (host or device)", (int)tier);
		return NULL;
	}
	uint32_t n = ls_res_tier_count(r);
	if (n == 1) {
		ls_session_error(s, id, LS_E_BACKEND,
				 "this lorastored has no device tier: it serves host memory only "
				 "(no usable GPU, or --backend host)");
		return NULL;
	}
	struct ls_tier *t = ls_res_device_tier(r, device);
	if (!t) {
		char served[LS_ERR_MSG_MAX / 2] = "";
		size_t len = 0;
		for (uint32_t i = 1; i < n && len < sizeof(served); i++)
			len += (size_t)snprintf(served + len, sizeof(served) - len, "%s%s",
						i > 1 ? ", " : "",
						ls_tier_uuid(ls_res_tier_at(r, i)));
		ls_session_error(s, id, LS_E_NOT_FOUND,
				 device && *device ? "no device tier for %s; this lorastored serves %s"
						   : "%sname the GPU: this lorastored serves %s",
				 device && *device ? device : "", served);
	}
	return t;
}

bool ls_job_allowed(struct ls_session *s, uint64_t id)
{
	unsigned limit = s->srv->cfg->client_jobs;
	if (!limit || s->jobs < limit)
		return true;
	s->srv->jobs_refused++;
	ls_session_error(s, id, LS_E_BUSY,
			 "this connection has %u requests waiting for the daemon's workers "
			 "(--client-jobs %u); wait for their answers before sending more",
			 s->jobs, limit);
	return false;
}
