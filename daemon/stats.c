/* The daemon's figures (stats.h) and the stats request, answered from them. */
#include <stdio.h>
#include <string.h>

#include "origin.h"
#include "request.h"
#include "stats.h"

void ls_stats_snapshot(struct ls_server *srv, struct ls_metrics_snapshot *out)
{
	memset(out, 0, sizeof(*out));
	struct ls_residency *r = srv->res;
	out->n_tiers = ls_res_tier_count(r);
	for (uint32_t i = 0; i < out->n_tiers; i++) {
		struct ls_tier_figures f;
		ls_tier_figures(ls_res_tier_at(r, i), &f);
		struct ls_metrics_tier *m = &out->tiers[i];
		m->kind = f.kind;
		snprintf(m->tier, sizeof(m->tier), "%s", ls_tier_name(f.kind));
		snprintf(m->device, sizeof(m->device), "%s", f.uuid);
		m->ordinal = f.ordinal;
		m->budget = f.budget;
		m->used = f.used;
		m->slab_bytes = f.slab_bytes;
		m->table_bytes = f.table_bytes;
		m->adapters = f.adapters;
		m->loads = f.loads;
		m->hits = f.hits;
		m->misses = f.misses;
		m->evictions = f.evictions;
		m->load_errors = f.load_errors;
		m->load = *f.load_seconds;
	}
	out->acquire = srv->acquire_hist;
	out->clients = srv->n_sessions;
	out->max_clients = srv->max_clients;
	for (const struct ls_lease_set *set = srv->leases.pages; set; set = set->page_next) {
		uint64_t n;
		ls_lease_page_pinned(&srv->leases, set, &n);
		out->warm_leases += n;
	}
	out->leases = srv->leases.held + out->warm_leases;
	out->warm_acquires = srv->leases.warm_acquires;
	out->warm_unpublished = srv->warm.unpublished;
	out->warm_over_limit = srv->warm.over_limit;
	out->imports = srv->imports;
	out->import_errors = srv->import_errors;
	out->catalog_versions = srv->catalog_versions;
	out->refused_connections = srv->refused_connections;
	out->hello_timeouts = srv->hello_timeouts;
	out->throttled = srv->throttled;
	out->malformed = srv->malformed;
	out->jobs_refused = srv->jobs_refused;
	out->jobs_cancelled = srv->jobs_cancelled;
	snprintf(out->event_loop, sizeof(out->event_loop), "%s", ls_loop_name(&srv->loop));
	snprintf(out->backend, sizeof(out->backend), "%s", srv->n_devices ? "cuda" : "host");
	snprintf(out->version, sizeof(out->version), "%s", LS_VERSION);
	out->start_time = srv->start_time;
	struct ls_origin *o = ls_store_origin(srv->store);
	if (o) {
		struct ls_origin_stats st;
		ls_origin_stats(o, &st);
		snprintf(out->origin, sizeof(out->origin), "%s", ls_origin_label(o));
		out->origin_requests = st.s3.requests;
		out->origin_errors = st.s3.errors;
		out->origin_bytes_in = st.s3.bytes_in;
		out->origin_bytes_out = st.s3.bytes_out;
		out->origin_pulls = st.pulls;
		out->origin_pulls_in_flight = st.pulls_in_flight;
		out->origin_refused = st.refused;
		out->origin_published = st.published;
		out->origin_cache_bytes = st.cache_bytes;
		out->origin_cache_budget = srv->cfg->disk_budget;
		out->origin_cache_evictions = srv->cache_evictions;
		_Static_assert(LS_S3_LATENCY_BUCKETS == LS_HIST_BUCKETS, "one bucket count");
		memcpy(out->origin_latency.counts, st.s3.latency, sizeof(st.s3.latency));
		out->origin_latency.sum = st.s3.latency_sum_s;
		for (size_t i = 0; i <= LS_HIST_BUCKETS; i++)
			out->origin_latency.count += st.s3.latency[i];
	}
}

void ls_on_stats(struct ls_session *s, Lorastore__Request *req)
{
	struct ls_metrics_snapshot snap;
	ls_stats_snapshot(s->srv, &snap);
	Lorastore__TierStats ts[LS_RES_MAX_TIERS], *tiers[LS_RES_MAX_TIERS];
	Lorastore__StatsReply sr = LORASTORE__STATS_REPLY__INIT;
	for (unsigned i = 0; i < snap.n_tiers; i++) {
		const struct ls_metrics_tier *m = &snap.tiers[i];
		lorastore__tier_stats__init(&ts[i]);
		tiers[i] = &ts[i];
		ts[i].tier = (Lorastore__Tier)m->kind;
		ts[i].device = (char *)m->device;
		ts[i].ordinal = m->ordinal;
		ts[i].budget = m->budget;
		ts[i].used = m->used;
		ts[i].adapters = (uint32_t)m->adapters;
		ts[i].slab_bytes = m->slab_bytes;
		ts[i].table_bytes = m->table_bytes;
		sr.loads += m->loads;
		sr.hits += m->hits;
		sr.misses += m->misses;
		sr.evictions += m->evictions;
		sr.load_errors += m->load_errors;
	}
	sr.n_tiers = snap.n_tiers;
	sr.tiers = tiers;
	sr.clients = (uint32_t)snap.clients;
	sr.leases = snap.leases;
	sr.warm_leases = snap.warm_leases;
	sr.warm_acquires = snap.warm_acquires;
	sr.catalog_versions = snap.catalog_versions;
	sr.event_loop = snap.event_loop;
	Lorastore__OriginStats os = LORASTORE__ORIGIN_STATS__INIT;
	if (snap.origin[0]) {
		os.origin = snap.origin;
		os.requests = snap.origin_requests;
		os.errors = snap.origin_errors;
		os.bytes_in = snap.origin_bytes_in;
		os.bytes_out = snap.origin_bytes_out;
		os.pulls = snap.origin_pulls;
		os.pulls_in_flight = (uint32_t)snap.origin_pulls_in_flight;
		os.refused = snap.origin_refused;
		os.published = snap.origin_published;
		os.cache_bytes = snap.origin_cache_bytes;
		os.cache_budget = snap.origin_cache_budget;
		os.cache_evictions = snap.origin_cache_evictions;
		sr.origin = &os;
	}
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = req->id;
	resp.body_case = LORASTORE__RESPONSE__BODY_STATS;
	resp.stats = &sr;
	ls_session_send(s, &resp, -1);
}
