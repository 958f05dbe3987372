/*
 * Acquire, load, release, prefetch, evict: the requests that make versions
 * resident, lease them, and let them go.  A warm acquire is answered from
 * the reference cache and residency alone; a cold one reads the catalog on
 * a worker first (catalog_reads.h), and one that waits for a load is a
 * pending request (pending.h) until residency calls back.  Leases are the
 * lease module's; this file only asks for them and says where they are.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog_reads.h"
#include "ls_clock.h"
#include "request.h"

/* A load is answered with the version its reference named. */
static void ls_send_loaded(struct ls_session *s, uint64_t id, struct ls_resident *e)
{
	Lorastore__LoadReply lr = LORASTORE__LOAD_REPLY__INIT;
	lr.name = (char *)ls_res_name(e);
	lr.version = ls_res_version(e);
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = id;
	resp.body_case = LORASTORE__RESPONSE__BODY_LOADED;
	resp.loaded = &lr;
	ls_session_send(s, &resp, -1);
}

/* Grant a lease on a resident version and answer the acquire. */
static void ls_grant(struct ls_session *s, uint64_t id, struct ls_resident *e, int64_t t0_ns)
{
	struct ls_server *srv = s->srv;
	struct ls_lease *l;
	struct ls_err err;
	int rc = ls_lease_take(&srv->leases, &s->leases, e, &l, &err);
	if (rc) {
		ls_session_error(s, id, rc, "%s", err.msg);
		return;
	}
	/* Acquired once through a request, it can be acquired in shared memory next time. */
	ls_res_publish(e);
	struct ls_res_share where;
	ls_res_share_of(e, &where);
	int send_data = ls_session_slab_unsent(s, where.data_slab_id);
	int send_table = where.table_slab_id == where.data_slab_id
				 ? 0
				 : ls_session_slab_unsent(s, where.table_slab_id);
	if (send_data < 0 || send_table < 0) {
		ls_lease_release(&srv->leases, &s->leases, l->id);
		ls_session_error(s, id, -ENOMEM, "out of memory");
		return;
	}
	ls_hist_observe(&srv->acquire_hist, ls_hist_acquire_bounds,
			(double)(ls_mono_ns() - t0_ns) * 1e-9);

	Lorastore__AcquireReply ar = LORASTORE__ACQUIRE_REPLY__INIT;
	ar.lease_id = l->id;
	ar.pinned_bytes = l->pinned_bytes;
	ar.generation = where.generation;
	ar.slab_id = where.data_slab_id;
	ar.slab_size = where.data_slab_size;
	ar.offset = where.data_offset;
	ar.fd_attached = send_data;
	ar.table_slab_id = where.table_slab_id;
	ar.table_slab_size = where.table_slab_size;
	ar.table_offset = where.table_offset;
	ar.table_length = where.table_length;
	ar.table_fd_attached = send_table;
	ar.tier = (Lorastore__Tier)ls_tier_kind(where.tier);
	ar.device = (char *)ls_tier_uuid(where.tier);
	int fds[2];
	unsigned n_fds = 0;
	if (send_data)
		fds[n_fds++] = where.data_fd;
	if (send_table)
		fds[n_fds++] = where.table_fd;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = id;
	resp.body_case = LORASTORE__RESPONSE__BODY_ACQUIRE;
	resp.acquire = &ar;
	ls_session_send_fds(s, &resp, fds, n_fds);
}

/* Answer a request that waited for a load (pending.h). */
static void ls_pending_answer(struct ls_pending *p, struct ls_resident *e, int rc, const char *msg)
{
	struct ls_session *s = p->owner;
	if (rc)
		ls_session_error(s, p->request_id, rc, "%s", msg);
	else if (p->lease)
		ls_grant(s, p->request_id, e, p->t0_ns);
	else
		ls_send_loaded(s, p->request_id, e);
}

/*
 * Make a version resident in tier, from rec, or (rec NULL) from the host
 * tier's entry h, and answer the acquire or load: at once when it is
 * resident, else when the load ends (or its deadline passes).
 */
static void ls_request_answer(struct ls_session *s, uint64_t id, struct ls_tier *tier,
			      const struct ls_res_version *rec, struct ls_resident *h,
			      int64_t timeout_ms, bool lease, int64_t t0_ns)
{
	struct ls_err err;
	/* The timeout counts from the request's arrival, a catalog read included. */
	struct ls_pending *p = ls_pending_new(ls_pending_answer, s, id, lease,
					      timeout_ms > 0 ? t0_ns / 1000000 + timeout_ms : -1,
					      t0_ns);
	if (!p) {
		ls_session_error(s, id, -ENOMEM, "out of memory");
		return;
	}
	struct ls_resident *e = NULL;
	int rc = rec ? ls_res_request(tier, rec, &p->waiter, &e, &err)
		     : ls_res_request_staged(tier, h, &p->waiter, &e, &err);
	if (rc == 1) {
		ls_pending_wait(&s->pending, p);
		return;
	}
	ls_pending_free(p);
	if (rc < 0)
		ls_session_error(s, id, rc, "%s", err.msg);
	else if (lease)
		ls_grant(s, id, e, t0_ns);
	else
		ls_send_loaded(s, id, e);
}

static void ls_acquire_read_done(struct ls_read_job *j);

void ls_on_acquire_or_load(struct ls_session *s, uint64_t id, const char *ref,
			   int64_t timeout_ms, bool lease, Lorastore__Tier tier_name, const char *device)
{
	struct ls_server *srv = s->srv;
	struct ls_tier *tier = ls_request_tier(s, id, tier_name, device);
	if (!tier)
		return;
	/* Warm: a resident version found through the reference cache, no catalog read. */
	uint64_t gen = ls_refcache_get(srv->refcache, ref);
	struct ls_resident *warm = gen ? ls_res_find(tier, gen) : NULL;
	if (warm && ls_res_usable(warm)) {
		ls_res_touch(warm);
		if (lease)
			ls_grant(s, id, warm, s->req_t0_ns);
		else
			ls_send_loaded(s, id, warm);
		return;
	}
	/* On the host tier and wanted on a device: no catalog read, no disk. */
	struct ls_resident *staged = gen && ls_tier_kind(tier) == LS_TIER_DEVICE && !warm
					     ? ls_res_find(ls_res_host(srv->res), gen)
					     : NULL;
	if (staged && ls_res_usable(staged) && timeout_ms != 0) {
		ls_request_answer(s, id, tier, NULL, staged, timeout_ms, lease, s->req_t0_ns);
		return;
	}
	/* Cold: the catalog is read on a worker; ls_acquire_read_done goes on. */
	struct ls_read_job *j = ls_read_lookup(s, id, &ref, 1, true, ls_acquire_read_done);
	if (!j)
		return;
	j->timeout_ms = timeout_ms;
	j->lease = lease;
	j->tier = tier_name;
	snprintf(j->device, sizeof(j->device), "%s", device ? device : "");
	ls_read_submit(j);
}

/* The record of a cold acquire or load is read: make it resident and answer. */
static void ls_acquire_read_done(struct ls_read_job *j)
{
	struct ls_session *s = j->s;
	struct ls_server *srv = s->srv;
	struct ls_tier *tier = ls_request_tier(s, j->id, j->tier, j->device[0] ? j->device : NULL);
	if (!tier)
		return;
	const Lorastore__VersionRecord *rec = j->recs[0];
	/*
	 * Cached only when no import, delete or rebuild finished while the
	 * record was read: "name" may mean a newer version now, and the cache
	 * entry their completion dropped must not come back stale.
	 */
	if (j->catalog_seq == srv->catalog_seq)
		ls_refcache_put(srv->refcache, j->refs[0], rec->generation);
	if (j->lease && j->timeout_ms == 0) {
		struct ls_resident *e = ls_res_find(tier, rec->generation);
		if (!e || !ls_res_usable(e)) {
			ls_session_error(s, j->id, -ETIMEDOUT, "%s@%u is not resident", rec->name,
					 rec->version);
			return;
		}
	}
	ls_request_answer(s, j->id, tier, &j->versions[0], NULL, j->timeout_ms, j->lease, j->t0_ns);
}

void ls_on_release(struct ls_session *s, Lorastore__Request *req)
{
	if (ls_lease_release(&s->srv->leases, &s->leases, req->release->lease_id) != 0) {
		ls_session_error(s, req->id, LS_E_NOT_FOUND, "no lease %llu on this connection",
				 (unsigned long long)req->release->lease_id);
		return;
	}
	ls_send_done(s, req->id);
}

static void ls_prefetch_read_done(struct ls_read_job *j);
static void ls_evict_read_done(struct ls_read_job *j);

void ls_on_prefetch(struct ls_session *s, Lorastore__Request *req)
{
	struct ls_read_job *j = ls_read_lookup(s, req->id, (const char *const *)req->prefetch->refs,
					       req->prefetch->n_refs, true, ls_prefetch_read_done);
	if (!j)
		return;
	ls_read_submit(j);
}

static void ls_prefetch_read_done(struct ls_read_job *j)
{
	struct ls_session *s = j->s;
	for (size_t i = 0; i < j->n; i++) {
		struct ls_resident *e;
		struct ls_err err;
		int rc = ls_res_request(ls_res_host(s->srv->res), &j->versions[i], NULL, &e, &err);
		if (rc < 0) {
			ls_session_error(s, j->id, rc, "%s", err.msg);
			return;
		}
	}
	ls_send_done(s, j->id);
}

void ls_on_evict(struct ls_session *s, Lorastore__Request *req)
{
	if (!ls_need_admin(s, req->id, "evict"))
		return;
	const char *ref = req->evict->ref;
	struct ls_read_job *j = ls_read_lookup(s, req->id, &ref, 1, false, ls_evict_read_done);
	if (!j)
		return;
	j->tier = req->evict->tier;
	j->every_tier = req->evict->every_tier;
	snprintf(j->device, sizeof(j->device), "%s", req->evict->device ? req->evict->device : "");
	ls_read_submit(j);
}

static void ls_evict_read_done(struct ls_read_job *j)
{
	struct ls_session *s = j->s;
	const Lorastore__VersionRecord *rec = j->recs[0];
	/* Every tier, or the tier named alone. */
	struct ls_tier *tier = NULL;
	if (!j->every_tier) {
		tier = ls_request_tier(s, j->id, j->tier, j->device[0] ? j->device : NULL);
		if (!tier)
			return;
	}
	int rc = tier ? ls_res_evict_tier(tier, rec->generation)
		      : ls_res_evict(s->srv->res, rec->generation);
	const char *where = tier ? ls_tier_kind_name(tier) : "any";
	if (rc == -EBUSY)
		ls_session_error(s, j->id, rc,
				 "%s@%u is leased, loading, or lending its memory to a version "
				 "of the same content (%s tier)",
				 rec->name, rec->version, where);
	else if (rc == LS_E_NOT_FOUND)
		ls_session_error(s, j->id, rc, "%s@%u is not resident (%s tier)", rec->name,
				 rec->version, where);
	else
		ls_send_done(s, j->id);
}
