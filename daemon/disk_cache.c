/* The disk cache of pulled blobs, from the loop (disk_cache.h). */
#include "disk_cache.h"

#include <errno.h>
#include <stdlib.h>

#include "log.h"
#include "ls_size.h"
#include "origin.h"
#include "refcache.h"

struct ls_trim_job {
	struct ls_job job;
	struct ls_server *srv;
	uint64_t budget;
	uint64_t *keep;              /* generations a tier holds, sorted */
	size_t n_keep;
	struct ls_trim_result res;
	int rc;
	struct ls_err err;
	bool first_look;             /* the start's job: is the origin there, are we let in? */
	int look_rc;
	struct ls_err look_err;
};

static void ls_trim_run(struct ls_job *job)
{
	struct ls_trim_job *j = (struct ls_trim_job *)job;
	if (j->first_look)
		j->look_rc = ls_origin_check(ls_store_origin(j->srv->store), &j->look_err);
	j->rc = ls_store_trim_pulled(j->srv->store, j->budget, j->keep, j->n_keep, &j->res,
				     &j->err);
}

static void ls_trim_done(struct ls_job *job)
{
	struct ls_trim_job *j = (struct ls_trim_job *)job;
	struct ls_server *srv = j->srv;
	srv->cache_trimming = false;
	if (j->first_look && j->look_rc)
		ls_warn("%s; local versions are served, remote ones fail until it answers",
			j->look_err.msg);
	if (j->rc)
		ls_warn("disk cache: %s", j->err.msg);
	for (size_t i = 0; i < j->res.n; i++)
		ls_refcache_drop(srv->refcache, j->res.versions[i].name, true);
	if (j->res.n) {
		char freed[32], used[32], budget[32];
		ls_format_size(j->res.freed_bytes, freed, sizeof(freed));
		ls_format_size(j->res.cache_bytes, used, sizeof(used));
		ls_format_size(srv->cfg->disk_budget, budget, sizeof(budget));
		ls_info("disk cache: removed %zu pulled version%s (%s freed; %s of %s used), the "
			"origin keeps them",
			j->res.n, j->res.n == 1 ? "" : "s", freed, used, budget);
		srv->catalog_versions -= j->res.n < srv->catalog_versions ? j->res.n
									  : srv->catalog_versions;
		srv->cache_evictions += j->res.n;
		/* Reads in flight may have seen them: stale now, as after a delete. */
		srv->delete_seq++;
		srv->catalog_seq++;
	}
	free(j->res.versions);
	free(j->keep);
	free(j);
}

/* Submit a trim to budget (UINT64_MAX: a count) unless one runs. */
static void ls_trim_submit(struct ls_server *srv, uint64_t budget, bool first_look)
{
	if (srv->cache_trimming)
		return;
	struct ls_trim_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->job.run = ls_trim_run;
	j->job.done = ls_trim_done;
	j->srv = srv;
	j->budget = budget;
	j->first_look = first_look;
	j->n_keep = ls_res_generations(srv->res, &j->keep);
	srv->cache_trimming = true;
	ls_workers_submit(srv->workers, &j->job);
}

void ls_disk_cache_start(struct ls_server *srv)
{
	struct ls_origin *o = ls_store_origin(srv->store);
	if (!o)
		return;
	struct ls_origin_stats st;
	ls_origin_stats(o, &st);
	srv->origin_pulls_seen = st.pulls;
	ls_trim_submit(srv, srv->cfg->disk_budget ? srv->cfg->disk_budget : UINT64_MAX, true);
}

void ls_disk_cache_after_read(struct ls_server *srv)
{
	struct ls_origin *o = ls_store_origin(srv->store);
	if (!o)
		return;
	struct ls_origin_stats st;
	ls_origin_stats(o, &st);
	if (st.pulls == srv->origin_pulls_seen)
		return;
	srv->catalog_versions += st.pulls - srv->origin_pulls_seen;
	srv->origin_pulls_seen = st.pulls;
	if (srv->cfg->disk_budget && st.cache_bytes > srv->cfg->disk_budget)
		ls_trim_submit(srv, srv->cfg->disk_budget, false);
}
