/* Requests of lorastored's protocol and their answers. */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "ls_size.h"
#include "ls_file.h"
#include "metrics.h"
#include "server.h"

#define LS_LIST_PAGE_DEFAULT 100u
/*
 * Bytes of records one page of a listing holds at most (the first record
 * always goes in, and a record has at most LS_RECORD_MAX): with the entries'
 * own fields the reply stays under the 16 MiB frame cap.
 */
#define LS_LIST_PAGE_BYTES ((size_t)8 << 20)

static void ls_send_done(struct ls_session *s, uint64_t id)
{
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = id;
	resp.body_case = LORASTORE__RESPONSE__BODY_DONE;
	resp.done = &empty;
	ls_session_send(s, &resp, -1);
}

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

static bool ls_need_admin(struct ls_session *s, uint64_t id, const char *what)
{
	if (s->admin)
		return true;
	ls_session_error(s, id, -EPERM,
			 "%s needs an admin peer (root, the daemon's user or its admin group); "
			 "uid %u is not",
			 what, (unsigned)s->cred.uid);
	return false;
}

/*
 * The tier a request names: host (tier "" or "host"), or the device tier of
 * the GPU with that UUID ("" when the daemon serves one GPU).  NULL with the
 * reason sent as the error.
 */
static struct ls_tier *ls_request_tier(struct ls_session *s, uint64_t id, const char *tier,
				       const char *device)
{
	struct ls_residency *r = &s->srv->res;
	if (!tier || !*tier || strcmp(tier, "host") == 0)
		return ls_res_host(r);
	if (strcmp(tier, "device") != 0) {
		ls_session_error(s, id, LS_E_PROTOCOL, "unknown tier '%s' (host or device)", tier);
		return NULL;
	}
	if (r->n_tiers == 1) {
		ls_session_error(s, id, LS_E_BACKEND,
				 "this lorastored has no device tier: it serves host memory only "
				 "(no usable GPU, or --backend host)");
		return NULL;
	}
	struct ls_tier *t = ls_res_device_tier(r, device);
	if (!t) {
		char served[LS_ERR_MSG_MAX / 2] = "";
		size_t len = 0;
		for (uint32_t i = 1; i < r->n_tiers && len < sizeof(served); i++)
			len += (size_t)snprintf(served + len, sizeof(served) - len, "%s%s",
						i > 1 ? ", " : "", r->tiers[i].uuid);
		ls_session_error(s, id, LS_E_NOT_FOUND,
				 device && *device ? "no device tier for %s; this lorastored serves %s"
						   : "%sname the GPU: this lorastored serves %s",
				 device && *device ? device : "", served);
	}
	return t;
}

/* ---- Reference cache */

static uint32_t ls_ref_hash(const char *ref)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)ref; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % LS_REFCACHE_SIZE;
}

static uint64_t ls_refcache_get(struct ls_server *srv, const char *ref)
{
	if (!srv->refcache)
		return 0;
	struct ls_refcache_entry *e = &srv->refcache[ls_ref_hash(ref)];
	return e->generation && strcmp(e->ref, ref) == 0 ? e->generation : 0;
}

static void ls_refcache_put(struct ls_server *srv, const char *ref, uint64_t generation)
{
	if (!srv->refcache || strlen(ref) >= sizeof(srv->refcache[0].ref))
		return;
	struct ls_refcache_entry *e = &srv->refcache[ls_ref_hash(ref)];
	e->generation = generation;
	strcpy(e->ref, ref);
}

/* Forget the references of name: "name" always, "name@N" too when all is set. */
static void ls_refcache_drop(struct ls_server *srv, const char *name, bool all)
{
	if (!srv->refcache)
		return;
	size_t len = strlen(name);
	for (uint32_t i = 0; i < LS_REFCACHE_SIZE; i++) {
		struct ls_refcache_entry *e = &srv->refcache[i];
		if (!e->generation || strncmp(e->ref, name, len) != 0)
			continue;
		if (e->ref[len] == '\0' || (all && e->ref[len] == '@'))
			e->generation = 0;
	}
}

/* ---- Hello */

static void ls_on_hello(struct ls_session *s, Lorastore__Request *req)
{
	if (s->hello_done) {
		ls_session_error(s, req->id, LS_E_PROTOCOL,
				 "this connection has already said Hello; a connection says it "
				 "once, first");
		return;
	}
	if (req->hello->protocol_version != LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_1) {
		ls_session_error(s, req->id, LS_E_VERSION,
				 "protocol version %u is not supported; this daemon speaks 1",
				 req->hello->protocol_version);
		s->close_after_send = true;
		return;
	}
	s->hello_done = true;
	Lorastore__HelloReply hr = LORASTORE__HELLO_REPLY__INIT;
	hr.protocol_version = LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
	hr.daemon_version = LS_VERSION;
	hr.admin = s->admin;
	hr.backend = s->srv->n_devices ? "cuda" : "host";
	hr.instance = s->srv->instance;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = req->id;
	resp.body_case = LORASTORE__RESPONSE__BODY_HELLO;
	resp.hello = &hr;
	ls_session_send(s, &resp, -1);
}

/* ---- Worker jobs: import, delete, verify, gc */

enum ls_job_kind {
	LS_JOB_IMPORT,
	LS_JOB_DELETE,
	LS_JOB_VERIFY,
	LS_JOB_GC,
	LS_JOB_REBUILD,
	LS_JOB_TAG,
	LS_JOB_UNTAG,
	LS_JOB_EXPORT,
};

struct ls_req_job {
	struct ls_job job;
	enum ls_job_kind kind;
	struct ls_session *s;
	uint64_t id;
	int rc;
	struct ls_err err;
	/* import */
	char name[LS_NAME_MAX + 1];
	char source[4096];
	int cfg_fd, st_fd;
	struct ls_import_opts opts;
	Lorastore__VersionRecord *rec;  /* import, tag: the version answered */
	bool unchanged;                 /* import: the latest version had this content */
	/* delete, verify, tag */
	char ref[LS_ALIAS_MAX + 16];
	char alias[LS_ALIAS_MAX + 1];   /* tag, untag */
	struct ls_export exported;      /* export */
	struct ls_deleted_gens deleted;  /* delete: what its transaction removed */
	/*
	 * Imports and deletes of one name run one at a time, in the order the
	 * loop received them: key is the name, next_same the job that waits
	 * for this one, and the job in flight is on the server's list.
	 */
	char key[LS_NAME_MAX + 1];
	struct ls_req_job *next_same, *next_inflight;
	/* verify */
	Lorastore__VerifyItem **items;
	size_t n_items;
	size_t bad;
	/* gc */
	struct ls_gc_stats gc;
	/* rebuild */
	struct ls_rebuild_stats rebuild;
	uint64_t versions_after;
};

static void ls_name_job_done(struct ls_server *srv, struct ls_req_job *j);

static void ls_verify_item(void *ud, const Lorastore__VersionRecord *rec, int code,
			   const char *message)
{
	struct ls_req_job *j = ud;
	if (code == 0)
		return;
	Lorastore__VerifyItem **items = realloc(j->items, (j->n_items + 1) * sizeof(*items));
	Lorastore__VerifyItem *it = malloc(sizeof(*it));
	if (!items || !it) {
		free(it);
		if (items)
			j->items = items;
		return;
	}
	j->items = items;
	lorastore__verify_item__init(it);
	it->name = strdup(rec->name);
	it->version = rec->version;
	it->code = code;
	it->message = strdup(message);
	j->items[j->n_items++] = it;
}

static void ls_job_run(struct ls_job *job)
{
	struct ls_req_job *j = (struct ls_req_job *)job;
	ls_err_clear(&j->err);
	switch (j->kind) {
	case LS_JOB_IMPORT:
		j->rc = ls_store_import(j->s->srv->store, j->name, j->cfg_fd, j->st_fd, j->source,
					&j->opts, &j->rec, &j->unchanged, &j->err);
		break;
	case LS_JOB_TAG:
		j->rc = ls_store_tag(j->s->srv->store, j->alias, j->ref, &j->rec, &j->err);
		break;
	case LS_JOB_UNTAG:
		j->rc = ls_store_untag(j->s->srv->store, j->alias, &j->err);
		break;
	case LS_JOB_EXPORT:
		j->rc = ls_store_export(j->s->srv->store, j->ref, &j->exported, &j->err);
		break;
	case LS_JOB_DELETE:
		j->rc = ls_store_delete(j->s->srv->store, j->ref, &j->deleted, &j->err);
		break;
	case LS_JOB_VERIFY:
		j->rc = ls_store_verify(j->s->srv->store, j->ref[0] ? j->ref : NULL, ls_verify_item,
					j, &j->bad, &j->err);
		break;
	case LS_JOB_GC:
		j->rc = ls_store_gc(j->s->srv->store, &j->gc, &j->err);
		break;
	case LS_JOB_REBUILD:
		j->rc = ls_store_rebuild(j->s->srv->store, &j->rebuild, &j->err);
		if (j->rc == 0)
			j->rc = ls_store_count_versions(j->s->srv->store, &j->versions_after, &j->err);
		break;
	}
}

static void ls_job_done(struct ls_job *job)
{
	struct ls_req_job *j = (struct ls_req_job *)job;
	struct ls_session *s = j->s;
	struct ls_server *srv = s->srv;
	s->jobs--;
	if (job->cancelled) /* its connection closed before a worker took it */
		j->rc = -ECANCELED;
	if (j->cfg_fd >= 0)
		close(j->cfg_fd);
	if (j->st_fd >= 0)
		close(j->st_fd);
	if (j->kind == LS_JOB_DELETE && j->rc == 0) {
		char name[LS_NAME_MAX + 1];
		uint32_t version;
		if (ls_ref_parse(j->ref, name, &version, NULL) == 0)
			ls_refcache_drop(srv, name, true);
		for (size_t i = 0; i < j->deleted.n; i++)
			ls_res_deleted(&srv->res, j->deleted.gens[i]);
		srv->catalog_versions -= j->deleted.n < srv->catalog_versions
						 ? j->deleted.n
						 : srv->catalog_versions;
		srv->delete_seq++;
		srv->catalog_seq++;
	}
	if (j->kind == LS_JOB_REBUILD) {
		srv->rebuilding = false;
		/* Names may map to other versions now; reads in flight are stale. */
		memset(srv->refcache, 0, LS_REFCACHE_SIZE * sizeof(*srv->refcache));
		srv->delete_seq++;
		srv->catalog_seq++;
		if (j->rc == 0)
			srv->catalog_versions = j->versions_after;
	}
	if ((j->kind == LS_JOB_TAG || j->kind == LS_JOB_UNTAG) && j->rc == 0) {
		/* The alias names another version now (or none): reads in flight are stale. */
		ls_refcache_drop(srv, j->alias, false);
		srv->catalog_seq++;
	}
	if (j->kind == LS_JOB_IMPORT && j->rc == 0 && j->unchanged) {
		srv->imports++;
	} else if (j->kind == LS_JOB_IMPORT && j->rc == 0) {
		ls_refcache_drop(srv, j->name, false);
		srv->catalog_versions++;
		srv->imports++;
		srv->catalog_seq++;
	} else if (j->kind == LS_JOB_IMPORT && !job->cancelled) {
		srv->import_errors++;
	}
	if (j->rc) {
		ls_session_error(s, j->id, j->rc, "%s", j->err.msg[0] ? j->err.msg : ls_strerror(j->rc));
	} else {
		Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
		resp.id = j->id;
		Lorastore__VerifyReply vr = LORASTORE__VERIFY_REPLY__INIT;
		Lorastore__GcReply gr = LORASTORE__GC_REPLY__INIT;
		Lorastore__RebuildReply rr = LORASTORE__REBUILD_REPLY__INIT;
		Lorastore__ImportReply ir = LORASTORE__IMPORT_REPLY__INIT;
		Lorastore__DeleteReply dr = LORASTORE__DELETE_REPLY__INIT;
		Lorastore__ExportReply er = LORASTORE__EXPORT_REPLY__INIT;
		switch (j->kind) {
		case LS_JOB_IMPORT:
			if (j->unchanged)
				ls_info("import of %s for uid %u: unchanged, the same content as "
					"%s@%u",
					j->name, (unsigned)s->cred.uid, j->rec->name, j->rec->version);
			else {
				char size[32];
				ls_format_size(j->rec->tensor_bytes, size, sizeof(size));
				ls_info("imported %s@%u (%s) for uid %u", j->rec->name,
					j->rec->version, size, (unsigned)s->cred.uid);
			}
			ir.record = j->rec;
			ir.unchanged = j->unchanged;
			resp.body_case = LORASTORE__RESPONSE__BODY_IMPORTED;
			resp.imported = &ir;
			ls_session_send(s, &resp, -1);
			break;
		case LS_JOB_DELETE: {
			char freed[32];
			ls_format_size(j->deleted.freed_bytes, freed, sizeof(freed));
			ls_info("deleted %s: %zu versions, %zu blobs removed (%s)", j->ref,
				j->deleted.n, j->deleted.blobs_freed, freed);
			dr.versions = (uint32_t)j->deleted.n;
			dr.blob_bytes = j->deleted.blob_bytes;
			dr.freed_bytes = j->deleted.freed_bytes;
			resp.body_case = LORASTORE__RESPONSE__BODY_DELETED;
			resp.deleted = &dr;
			ls_session_send(s, &resp, -1);
			break;
		}
		case LS_JOB_TAG:
			ls_info("alias %s now points at %s@%u (uid %u)", j->alias, j->rec->name,
				j->rec->version, (unsigned)s->cred.uid);
			resp.body_case = LORASTORE__RESPONSE__BODY_RECORD;
			resp.record = j->rec;
			ls_session_send(s, &resp, -1);
			break;
		case LS_JOB_UNTAG:
			ls_info("alias %s removed (uid %u)", j->alias, (unsigned)s->cred.uid);
			ls_send_done(s, j->id);
			break;
		case LS_JOB_EXPORT:
			er.record = j->exported.rec;
			er.config_json = j->exported.config_json;
			er.safetensors_head.data = j->exported.head;
			er.safetensors_head.len = j->exported.head_len;
			resp.body_case = LORASTORE__RESPONSE__BODY_EXPORTED;
			resp.exported = &er;
			ls_session_send(s, &resp, -1);
			break;
		case LS_JOB_VERIFY:
			vr.n_items = j->n_items;
			vr.items = j->items;
			vr.bad = (uint32_t)j->bad;
			resp.body_case = LORASTORE__RESPONSE__BODY_VERIFY;
			resp.verify = &vr;
			ls_session_send(s, &resp, -1);
			break;
		case LS_JOB_REBUILD:
			ls_info("catalog rebuilt from refs/ and blobs/: %zu versions, %zu skipped",
				j->rebuild.versions, j->rebuild.skipped);
			rr.versions = j->rebuild.versions;
			rr.skipped = j->rebuild.skipped;
			resp.body_case = LORASTORE__RESPONSE__BODY_REBUILD;
			resp.rebuild = &rr;
			ls_session_send(s, &resp, -1);
			break;
		case LS_JOB_GC:
			gr.blobs_removed = j->gc.blobs_removed;
			gr.bytes_removed = j->gc.bytes_removed;
			gr.refs_removed = j->gc.refs_removed;
			gr.temps_removed = j->gc.temps_removed;
			resp.body_case = LORASTORE__RESPONSE__BODY_GC;
			resp.gc = &gr;
			ls_session_send(s, &resp, -1);
			break;
		}
	}
	if (j->rec)
		lorastore__version_record__free_unpacked(j->rec, NULL);
	for (size_t i = 0; i < j->n_items; i++)
		lorastore__verify_item__free_unpacked(j->items[i], NULL);
	free(j->items);
	free(j->deleted.gens);
	ls_export_free(&j->exported);
	if (j->key[0])
		ls_name_job_done(srv, j);
	bool big = j->kind == LS_JOB_IMPORT || j->kind == LS_JOB_VERIFY || j->kind == LS_JOB_GC ||
		   j->kind == LS_JOB_EXPORT;
	free(j);
	/*
	 * Imports and verifies allocate whole adapters on worker threads, whose
	 * malloc arenas would otherwise keep that memory after the job.
	 */
	if (big && ls_workers_busy(srv->workers) == 0)
		malloc_trim(0);
}

/*
 * Whether s may queue one more worker job; if not, the request is answered
 * busy.  A connection cannot fill the workers' queue: it waits for its
 * answers once it has --client-jobs requests there.
 */
static bool ls_job_allowed(struct ls_session *s, uint64_t id)
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

static struct ls_req_job *ls_job_new(struct ls_session *s, uint64_t id, enum ls_job_kind kind)
{
	if (!ls_job_allowed(s, id))
		return NULL;
	struct ls_req_job *j = calloc(1, sizeof(*j));
	if (!j) {
		ls_session_error(s, id, -ENOMEM, "out of memory");
		return NULL;
	}
	j->job.run = ls_job_run;
	j->job.done = ls_job_done;
	j->job.owner = &s->job_owner;
	j->kind = kind;
	j->s = s;
	j->id = id;
	j->cfg_fd = j->st_fd = -1;
	return j;
}

/*
 * Submit a job; one with a key (an import or delete of a name) waits behind
 * the job of that name in flight, if any, so that a delete received before
 * an import cannot remove the version the import adds, and the reverse.
 */
static void ls_job_submit(struct ls_req_job *j)
{
	struct ls_server *srv = j->s->srv;
	j->s->jobs++;
	if (j->key[0]) {
		for (struct ls_req_job *f = srv->name_jobs; f; f = f->next_inflight) {
			if (strcmp(f->key, j->key) != 0)
				continue;
			while (f->next_same)
				f = f->next_same;
			f->next_same = j;
			return;
		}
		j->next_inflight = srv->name_jobs;
		srv->name_jobs = j;
	}
	ls_workers_submit(srv->workers, &j->job);
}

/* A keyed job is done: the next job of its name, if any, goes to the workers. */
static void ls_name_job_done(struct ls_server *srv, struct ls_req_job *j)
{
	struct ls_req_job **p = &srv->name_jobs;
	while (*p && *p != j)
		p = &(*p)->next_inflight;
	if (*p)
		*p = j->next_inflight;
	struct ls_req_job *next = j->next_same;
	if (next) {
		next->next_inflight = srv->name_jobs;
		srv->name_jobs = next;
		ls_workers_submit(srv->workers, &next->job);
		/* It waited behind this one while its own connection closed: dropped unstarted. */
		if (next->s->closing)
			srv->jobs_cancelled += ls_workers_cancel(srv->workers, &next->s->job_owner);
	}
}

/* Imports and deletes are refused while a rebuild runs (the catalog is closed for writes). */
static bool ls_catalog_writable(struct ls_session *s, uint64_t id)
{
	if (!s->srv->rebuilding)
		return true;
	ls_session_error(s, id, LS_E_BUSY,
			 "the catalog is being rebuilt (lorastore rebuild); try again when it "
			 "finishes");
	return false;
}

static void ls_on_import(struct ls_session *s, Lorastore__Request *req)
{
	Lorastore__ImportRequest *im = req->import;
	/* The descriptors came with this frame: take them even when refusing. */
	int cfg_fd = im->has_config ? ls_session_take_fd(s) : -1;
	int st_fd = ls_session_take_fd(s);
	if (st_fd < 0 || (im->has_config && cfg_fd < 0)) {
		if (cfg_fd >= 0)
			close(cfg_fd);
		ls_session_error(s, req->id, LS_E_PROTOCOL,
				 "import needs the descriptors of its files with the request");
		s->close_after_send = true;
		return;
	}
	struct ls_req_job *j = NULL;
	enum ls_convert conv = LS_CONVERT_KEEP;
	if (!ls_need_admin(s, req->id, "import") || !ls_catalog_writable(s, req->id))
		goto refuse;
	/* Checked here, before a worker reads them: a pipe would hold the worker. */
	const int fds[2] = {cfg_fd, st_fd};
	static const char *const what[2] = {"adapter_config.json", "adapter_model.safetensors"};
	for (int i = 0; i < 2; i++) {
		const char *kind = NULL;
		int rc = fds[i] >= 0 ? ls_fd_check_regular(fds[i], &kind) : 0;
		if (rc) {
			if (rc == -EINVAL)
				ls_session_error(s, req->id, rc,
						 "import: the descriptor sent for %s is %s, not a "
						 "regular file",
						 what[i], kind);
			else
				ls_session_error(s, req->id, rc, "import: fstat of %s: %s", what[i],
						 strerror(-rc));
			goto refuse;
		}
	}
	if (im->dtype && im->dtype[0] && ls_convert_from_name(im->dtype, &conv) != 0) {
		ls_session_error(s, req->id, -EINVAL, "dtype '%s': expected keep, f16, bf16 or f32",
				 im->dtype);
		goto refuse;
	}
	if (!ls_name_valid(im->name)) {
		ls_session_error(s, req->id, LS_E_NAME_INVALID,
				 "'%s': a name has 1 to %d characters of [A-Za-z0-9._/-]", im->name,
				 LS_NAME_MAX);
		goto refuse;
	}
	j = ls_job_new(s, req->id, LS_JOB_IMPORT);
	if (!j)
		goto refuse;
	snprintf(j->name, sizeof(j->name), "%s", im->name);
	snprintf(j->key, sizeof(j->key), "%s", im->name);
	snprintf(j->source, sizeof(j->source), "%s", im->source && im->source[0] ? im->source : im->name);
	j->cfg_fd = cfg_fd;
	j->st_fd = st_fd;
	j->opts.convert = conv;
	j->opts.allow_nonfinite = im->allow_nonfinite;
	j->opts.allow_new_base = im->allow_new_base;
	j->opts.source = j->source;
	ls_job_submit(j);
	return;
refuse:
	if (cfg_fd >= 0)
		close(cfg_fd);
	close(st_fd);
}

static void ls_on_delete(struct ls_session *s, Lorastore__Request *req)
{
	if (!ls_need_admin(s, req->id, "delete") || !ls_catalog_writable(s, req->id))
		return;
	char name[LS_NAME_MAX + 1];
	uint32_t version;
	struct ls_err err;
	if (ls_alias_valid(req->delete_->ref)) {
		ls_session_error(s, req->id, LS_E_NAME_INVALID,
				 "%s is an alias: untag removes it; delete takes NAME or NAME@V",
				 req->delete_->ref);
		return;
	}
	int rc = ls_ref_parse(req->delete_->ref, name, &version, &err);
	if (rc) {
		ls_session_error(s, req->id, rc, "%s", err.msg);
		return;
	}
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_DELETE);
	if (!j)
		return;
	snprintf(j->ref, sizeof(j->ref), "%s", req->delete_->ref);
	snprintf(j->key, sizeof(j->key), "%s", name);
	ls_job_submit(j);
}

static void ls_on_verify(struct ls_session *s, Lorastore__Request *req)
{
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_VERIFY);
	if (!j)
		return;
	snprintf(j->ref, sizeof(j->ref), "%s", req->verify->ref ? req->verify->ref : "");
	ls_job_submit(j);
}

static void ls_on_rebuild(struct ls_session *s, Lorastore__Request *req)
{
	if (!ls_need_admin(s, req->id, "rebuild"))
		return;
	if (s->srv->rebuilding || s->srv->name_jobs) {
		ls_session_error(s, req->id, LS_E_BUSY,
				 s->srv->rebuilding ? "a rebuild is already running"
						    : "imports or deletes are running; rebuild "
						      "when they are done");
		return;
	}
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_REBUILD);
	if (!j)
		return;
	s->srv->rebuilding = true;
	ls_info("rebuilding the catalog from refs/ and blobs/ for uid %u; imports and deletes "
		"are refused until it is done",
		(unsigned)s->cred.uid);
	ls_job_submit(j);
}

/* Tag (ref set) or untag an alias: a catalog write on a worker, keyed by the alias. */
static void ls_on_tag(struct ls_session *s, Lorastore__Request *req, bool untag)
{
	Lorastore__TagRequest *tr = untag ? req->untag : req->tag;
	if (!ls_need_admin(s, req->id, untag ? "untag" : "tag") ||
	    !ls_catalog_writable(s, req->id))
		return;
	struct ls_err err;
	if (!ls_alias_valid(tr->alias)) {
		ls_session_error(s, req->id, LS_E_NAME_INVALID,
				 "'%.*s': an alias is NAME:TAG, a tag 1 to %d characters of "
				 "[A-Za-z0-9._-]",
				 LS_ALIAS_MAX, tr->alias ? tr->alias : "", LS_TAG_MAX);
		return;
	}
	char name[LS_NAME_MAX + 1];
	uint32_t version;
	if (!untag && ls_ref_parse(tr->ref, name, &version, &err)) {
		ls_session_error(s, req->id, err.code, "%s", err.msg);
		return;
	}
	struct ls_req_job *j = ls_job_new(s, req->id, untag ? LS_JOB_UNTAG : LS_JOB_TAG);
	if (!j)
		return;
	snprintf(j->alias, sizeof(j->alias), "%s", tr->alias);
	snprintf(j->ref, sizeof(j->ref), "%s", untag ? "" : tr->ref);
	ls_job_submit(j);
}

/* Export: the catalog record and the blob's manifest read on a worker. */
static void ls_on_export(struct ls_session *s, Lorastore__Request *req)
{
	struct ls_err err;
	if (ls_ref_check_any(req->export->ref, &err)) {
		ls_session_error(s, req->id, err.code, "%s", err.msg);
		return;
	}
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_EXPORT);
	if (!j)
		return;
	snprintf(j->ref, sizeof(j->ref), "%s", req->export->ref);
	ls_job_submit(j);
}

static void ls_on_gc(struct ls_session *s, Lorastore__Request *req)
{
	if (!ls_need_admin(s, req->id, "gc"))
		return;
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_GC);
	if (j)
		ls_job_submit(j);
}

/*
 * ---- Catalog reads on the workers
 *
 * Show, list, and the catalog part of a cold acquire, a load, a prefetch and
 * an evict read LMDB and decode records on a worker, so the loop never waits
 * on the catalog (its pages may have to come from disk).  What depends on
 * residency (where a version is resident, its pins, the load itself) is done
 * on the loop when the read is back.
 */

enum ls_read_for { LS_READ_SHOW, LS_READ_LIST, LS_READ_ACQUIRE, LS_READ_PREFETCH, LS_READ_EVICT };

struct ls_read_job {
	struct ls_job job;
	enum ls_read_for purpose;
	struct ls_session *s;
	uint64_t id;
	int rc;
	struct ls_err err;
	/* lookups: refs in, records out (with tensors) */
	size_t n;
	char **refs;
	Lorastore__VersionRecord **recs;
	uint64_t delete_seq;            /* srv->delete_seq when submitted */
	uint64_t catalog_seq;           /* srv->catalog_seq when submitted */
	/* acquire and load */
	int64_t t0_ns;                  /* when the request arrived */
	int64_t timeout_ms;
	bool lease;
	char tier[16];
	char device[64];
	/* list: a page of records without tensors, with what the tensors tell */
	char prefix[LS_NAME_MAX + 1];
	char cursor[LS_NAME_MAX + 16];
	char next[LS_NAME_MAX + 16];
	unsigned limit;
	size_t page_bytes;              /* packed bytes of the records taken so far */
	uint32_t *tensor_counts;
	uint64_t *footprints;
	char ***aliases;                /* list and show: the aliases of each record */
	size_t *n_aliases;
	/*
	 * Show and list answer in two hops: the loop fills in residency, then
	 * a worker encodes the reply (a page of 1,000 entries is a few hundred
	 * KB of protobuf), and the loop sends the bytes.
	 */
	bool packing;
	Lorastore__AdapterEntry *entries;
	Lorastore__AdapterEntry **entry_ptrs;
	Lorastore__ListReply reply;
	uint8_t *frame;
	size_t frame_len;
};

/* Keep a listed record without its tensor table (pages stay small). */
static int ls_page_add(void *ud, const Lorastore__VersionRecord *rec)
{
	struct ls_read_job *j = ud;
	Lorastore__VersionRecord shallow = *rec;
	shallow.n_tensors = 0;
	shallow.tensors = NULL;
	size_t len = lorastore__version_record__get_packed_size(&shallow);
	if (j->n && j->page_bytes + len > LS_LIST_PAGE_BYTES)
		return LS_LIST_PAGE_FULL;
	j->page_bytes += len;
	uint8_t *buf = malloc(len ? len : 1);
	Lorastore__VersionRecord **recs = realloc(j->recs, (j->n + 1) * sizeof(*recs));
	if (recs)
		j->recs = recs;
	uint32_t *counts = realloc(j->tensor_counts, (j->n + 1) * sizeof(*counts));
	if (counts)
		j->tensor_counts = counts;
	uint64_t *fp = realloc(j->footprints, (j->n + 1) * sizeof(*fp));
	if (fp)
		j->footprints = fp;
	if (!buf || !recs || !counts || !fp) {
		free(buf);
		return j->rc = -ENOMEM;
	}
	lorastore__version_record__pack(&shallow, buf);
	Lorastore__VersionRecord *copy = lorastore__version_record__unpack(NULL, len, buf);
	free(buf);
	if (!copy)
		return j->rc = -ENOMEM;
	j->recs[j->n] = copy;
	j->tensor_counts[j->n] = (uint32_t)rec->n_tensors;
	j->footprints[j->n] = ls_res_footprint(rec);
	j->n++;
	return 0;
}

/* The aliases of the records a list or show read (none when out of memory). */
static void ls_read_aliases(struct ls_read_job *j, struct ls_store *store)
{
	if (!j->n)
		return;
	j->aliases = calloc(j->n, sizeof(*j->aliases));
	j->n_aliases = calloc(j->n, sizeof(*j->n_aliases));
	for (size_t i = 0; j->aliases && j->n_aliases && i < j->n; i++) {
		struct ls_err err;
		if (ls_store_aliases_of(store, j->recs[i]->name, j->recs[i]->version,
					&j->aliases[i], &j->n_aliases[i], &err) != 0)
			break;
	}
}

static void ls_read_run(struct ls_job *job)
{
	struct ls_read_job *j = (struct ls_read_job *)job;
	struct ls_store *store = j->s->srv->store;
	if (j->packing) {
		Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
		resp.id = j->id;
		resp.body_case = LORASTORE__RESPONSE__BODY_LIST;
		resp.list = &j->reply;
		j->rc = ls_response_encode(&resp, &j->frame, &j->frame_len);
		if (j->rc)
			ls_err_set(&j->err, j->rc, "cannot encode the listing");
		return;
	}
	if (j->purpose == LS_READ_LIST) {
		int rc = ls_store_list(store, j->prefix, j->cursor[0] ? j->cursor : NULL, j->limit,
				       ls_page_add, j, j->next, &j->err);
		if (j->rc == -ENOMEM)
			ls_err_set(&j->err, -ENOMEM, "out of memory listing");
		else
			j->rc = rc;
		if (j->rc == 0)
			ls_read_aliases(j, store);
		return;
	}
	for (size_t i = 0; i < j->n; i++) {
		int rc = ls_store_lookup(store, j->refs[i], &j->recs[i], &j->err);
		if (rc) {
			j->rc = rc;
			return;
		}
	}
	if (j->purpose == LS_READ_SHOW)
		ls_read_aliases(j, store);
}

static void ls_read_free(struct ls_read_job *j)
{
	for (size_t i = 0; i < j->n; i++) {
		if (j->recs && j->recs[i])
			lorastore__version_record__free_unpacked(j->recs[i], NULL);
		if (j->refs)
			free(j->refs[i]);
	}
	for (size_t i = 0; j->aliases && j->n_aliases && i < j->n; i++) {
		for (size_t k = 0; k < j->n_aliases[i]; k++)
			free(j->aliases[i][k]);
		free(j->aliases[i]);
	}
	free(j->aliases);
	free(j->n_aliases);
	free(j->recs);
	free(j->refs);
	free(j->tensor_counts);
	free(j->footprints);
	free(j->entries);
	free(j->entry_ptrs);
	free(j->frame);
	free(j);
}

static void ls_read_done(struct ls_job *job);

static void ls_read_submit(struct ls_read_job *j)
{
	j->s->jobs++;
	j->delete_seq = j->s->srv->delete_seq;
	j->catalog_seq = j->s->srv->catalog_seq;
	j->rc = 0;
	ls_err_clear(&j->err);
	ls_workers_submit(j->s->srv->workers, &j->job);
}

/* A read job for refs (copied), or NULL after answering out of memory. */
static struct ls_read_job *ls_read_new(struct ls_session *s, uint64_t id, enum ls_read_for purpose,
				       const char *const *refs, size_t n)
{
	if (!ls_job_allowed(s, id))
		return NULL;
	struct ls_read_job *j = calloc(1, sizeof(*j));
	if (j && n) {
		j->refs = calloc(n, sizeof(*j->refs));
		j->recs = calloc(n, sizeof(*j->recs));
		j->n = n;
		for (size_t i = 0; j->refs && j->recs && i < n; i++)
			if (!(j->refs[i] = strdup(refs[i])))
				break;
	}
	if (!j || (n && (!j->refs || !j->recs || !j->refs[n - 1]))) {
		if (j)
			ls_read_free(j);
		ls_session_error(s, id, -ENOMEM, "out of memory");
		return NULL;
	}
	j->job.run = ls_read_run;
	j->job.done = ls_read_done;
	j->job.owner = &s->job_owner;
	j->t0_ns = s->req_t0_ns;
	j->purpose = purpose;
	j->s = s;
	j->id = id;
	return j;
}

/*
 * An entry for rec, with where it is resident.  footprint is the resident
 * size of the full record (its tensor table counts).
 */
static void ls_entry_fill(struct ls_server *srv, Lorastore__AdapterEntry *e,
			  Lorastore__VersionRecord *rec, uint32_t tensor_count, uint64_t footprint)
{
	lorastore__adapter_entry__init(e);
	e->record = rec;
	/* "host", "device", "host,device": every tier the version is resident in. */
	bool host = false, device = false;
	for (uint32_t i = 0; i < srv->res.n_tiers; i++) {
		struct ls_resident *r = ls_res_find(&srv->res.tiers[i], rec->generation);
		if (!r)
			continue;
		if (r->state == LS_RES_RESIDENT)
			*(i == 0 ? &host : &device) = true;
		e->pins += r->pins;
	}
	e->resident = host || device;
	e->tier = host && device ? "host,device" : host ? "host" : device ? "device" : "disk";
	e->tensor_count = tensor_count;
	e->resident_bytes = footprint;
}

/* Fill in where each listed version is resident, then have a worker encode the reply. */
static void ls_pack_entries(struct ls_read_job *j, const char *next_cursor)
{
	struct ls_server *srv = j->s->srv;
	j->entries = calloc(j->n ? j->n : 1, sizeof(*j->entries));
	j->entry_ptrs = calloc(j->n ? j->n : 1, sizeof(*j->entry_ptrs));
	if (!j->entries || !j->entry_ptrs) {
		ls_session_error(j->s, j->id, -ENOMEM, "out of memory");
		ls_read_free(j);
		return;
	}
	for (size_t i = 0; i < j->n; i++) {
		const Lorastore__VersionRecord *r = j->recs[i];
		ls_entry_fill(srv, &j->entries[i], j->recs[i],
			      j->tensor_counts ? j->tensor_counts[i] : (uint32_t)r->n_tensors,
			      j->footprints ? j->footprints[i] : ls_res_footprint(r));
		if (j->aliases && j->n_aliases) {
			j->entries[i].n_aliases = j->n_aliases[i];
			j->entries[i].aliases = j->aliases[i];
		}
		j->entry_ptrs[i] = &j->entries[i];
	}
	lorastore__list_reply__init(&j->reply);
	j->reply.n_adapters = j->n;
	j->reply.adapters = j->entry_ptrs;
	j->reply.next_cursor = (char *)next_cursor; /* j->next, or a static "" */
	j->packing = true;
	ls_read_submit(j);
}

static void ls_on_show(struct ls_session *s, Lorastore__Request *req)
{
	const char *ref = req->show->ref;
	struct ls_read_job *j = ls_read_new(s, req->id, LS_READ_SHOW, &ref, 1);
	if (j)
		ls_read_submit(j);
}

static void ls_on_list(struct ls_session *s, Lorastore__Request *req)
{
	Lorastore__ListRequest *lq = req->list;
	struct ls_read_job *j = ls_read_new(s, req->id, LS_READ_LIST, NULL, 0);
	if (!j)
		return;
	unsigned limit = lq->limit ? lq->limit : LS_LIST_PAGE_DEFAULT;
	j->limit = limit; /* the framer refused a limit over LS_PROTO_LIST_LIMIT_MAX */
	snprintf(j->prefix, sizeof(j->prefix), "%.*s", LS_NAME_MAX, lq->prefix ? lq->prefix : "");
	snprintf(j->cursor, sizeof(j->cursor), "%.*s", LS_NAME_MAX + 15,
		 lq->cursor ? lq->cursor : "");
	ls_read_submit(j);
}

/* ---- Acquire, load, release, prefetch, evict */

/* Grant a lease on a resident version and answer the acquire. */
static void ls_grant(struct ls_session *s, uint64_t id, struct ls_resident *e, int64_t t0_ns)
{
	struct ls_server *srv = s->srv;
	uint64_t limit = srv->cfg->client_pin_limit;
	if (limit && s->pinned_bytes + e->length > limit) {
		ls_session_error(s, id, LS_E_PIN_LIMIT,
				 "%s@%u needs %llu bytes; this connection pins %llu of its %llu",
				 ls_res_name(e), ls_res_version(e), (unsigned long long)e->length,
				 (unsigned long long)s->pinned_bytes, (unsigned long long)limit);
		return;
	}
	struct ls_slab_slot *slot = ls_res_slab(e), *tslot = ls_res_table_slab(e);
	struct ls_lease *l = calloc(1, sizeof(*l));
	int send_data = ls_session_slab_unsent(s, slot->slab.id);
	int send_table = tslot == slot ? 0 : ls_session_slab_unsent(s, tslot->slab.id);
	if (!l || send_data < 0 || send_table < 0) {
		free(l);
		ls_session_error(s, id, -ENOMEM, "out of memory");
		return;
	}
	l->id = ++srv->next_lease_id;
	l->res = e;
	l->next = s->leases;
	s->leases = l;
	s->pinned_bytes += e->length;
	s->lease_count++;
	srv->leases++;
	ls_hist_observe(&srv->acquire_hist, ls_hist_acquire_bounds,
			(double)(ls_now_ns() - t0_ns) * 1e-9);
	ls_res_pin(e);

	Lorastore__AcquireReply ar = LORASTORE__ACQUIRE_REPLY__INIT;
	ar.lease_id = l->id;
	ar.generation = e->generation;
	ar.slab_id = slot->slab.id;
	ar.slab_size = slot->slab.size;
	ar.offset = ls_res_data_offset(e);
	ar.fd_attached = send_data;
	ar.table_slab_id = tslot->slab.id;
	ar.table_slab_size = tslot->slab.size;
	ar.table_offset = e->table_offset;
	ar.table_length = e->table_length;
	ar.table_fd_attached = send_table;
	ar.tier = (char *)ls_tier_kind_name(e->tier);
	ar.device = e->tier->uuid;
	int fds[2];
	unsigned n_fds = 0;
	if (send_data)
		fds[n_fds++] = slot->slab.fd;
	if (send_table)
		fds[n_fds++] = tslot->slab.fd;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = id;
	resp.body_case = LORASTORE__RESPONSE__BODY_ACQUIRE;
	resp.acquire = &ar;
	ls_session_send_fds(s, &resp, fds, n_fds);
}

static void ls_pending_remove(struct ls_session *s, struct ls_pending *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		s->pending = p->next;
	if (p->next)
		p->next->prev = p->prev;
}

/* The residency finished (or failed) the load a pending request waited on. */
static void ls_pending_woken(struct ls_waiter *w, struct ls_resident *e, int rc, const char *msg)
{
	struct ls_pending *p = (struct ls_pending *)w;
	struct ls_session *s = p->session;
	ls_pending_remove(s, p);
	if (rc)
		ls_session_error(s, p->request_id, rc, "%s", msg);
	else if (p->lease)
		ls_grant(s, p->request_id, e, p->t0_ns);
	else
		ls_send_loaded(s, p->request_id, e);
	free(p);
}

/*
 * Make a version resident in tier, from rec, or (rec NULL) from the host
 * tier's entry h, and answer the acquire or load: at once when it is
 * resident, else when the load ends (or its deadline passes).
 */
static void ls_request_answer(struct ls_session *s, uint64_t id, struct ls_tier *tier,
			      const Lorastore__VersionRecord *rec, struct ls_resident *h,
			      int64_t timeout_ms, bool lease, int64_t t0_ns)
{
	struct ls_err err;
	struct ls_pending *p = calloc(1, sizeof(*p));
	if (!p) {
		ls_session_error(s, id, -ENOMEM, "out of memory");
		return;
	}
	p->waiter.fn = ls_pending_woken;
	p->session = s;
	p->request_id = id;
	p->lease = lease;
	/* The timeout counts from the request's arrival, a catalog read included. */
	p->deadline_ms = timeout_ms > 0 ? t0_ns / 1000000 + timeout_ms : -1;
	p->t0_ns = t0_ns;
	struct ls_resident *e = NULL;
	int rc = rec ? ls_res_request(tier, rec, &p->waiter, &e, &err)
		     : ls_res_request_staged(tier, h, &p->waiter, &e, &err);
	if (rc == 1) {
		p->next = s->pending;
		if (s->pending)
			s->pending->prev = p;
		s->pending = p;
		return;
	}
	free(p);
	if (rc < 0)
		ls_session_error(s, id, rc, "%s", err.msg);
	else if (lease)
		ls_grant(s, id, e, t0_ns);
	else
		ls_send_loaded(s, id, e);
}

static void ls_on_acquire_or_load(struct ls_session *s, uint64_t id, const char *ref,
				  int64_t timeout_ms, bool lease, const char *tier_name,
				  const char *device)
{
	struct ls_server *srv = s->srv;
	struct ls_tier *tier = ls_request_tier(s, id, tier_name, device);
	if (!tier)
		return;
	/* Warm: a resident version found through the reference cache, no catalog read. */
	uint64_t gen = ls_refcache_get(srv, ref);
	struct ls_resident *warm = gen ? ls_res_find(tier, gen) : NULL;
	if (warm && warm->state == LS_RES_RESIDENT && !warm->deleted) {
		ls_res_touch(warm);
		if (lease)
			ls_grant(s, id, warm, s->req_t0_ns);
		else
			ls_send_loaded(s, id, warm);
		return;
	}
	/* On the host tier and wanted on a device: no catalog read, no disk. */
	struct ls_resident *staged = gen && tier->kind == LS_TIER_DEVICE && !warm
					     ? ls_res_find(ls_res_host(&srv->res), gen)
					     : NULL;
	if (staged && staged->state == LS_RES_RESIDENT && !staged->deleted && timeout_ms != 0) {
		ls_request_answer(s, id, tier, NULL, staged, timeout_ms, lease, s->req_t0_ns);
		return;
	}
	/* Cold: the catalog is read on a worker; ls_acquire_read_done goes on. */
	struct ls_read_job *j = ls_read_new(s, id, LS_READ_ACQUIRE, &ref, 1);
	if (!j)
		return;
	j->timeout_ms = timeout_ms;
	j->lease = lease;
	snprintf(j->tier, sizeof(j->tier), "%s", tier_name ? tier_name : "");
	snprintf(j->device, sizeof(j->device), "%s", device ? device : "");
	ls_read_submit(j);
}

/* The record of a cold acquire or load is read: make it resident and answer. */
static void ls_acquire_read_done(struct ls_read_job *j)
{
	struct ls_session *s = j->s;
	struct ls_server *srv = s->srv;
	struct ls_tier *tier = ls_request_tier(s, j->id, j->tier[0] ? j->tier : NULL,
					       j->device[0] ? j->device : NULL);
	if (!tier)
		return;
	const Lorastore__VersionRecord *rec = j->recs[0];
	/*
	 * Cached only when no import, delete or rebuild finished while the
	 * record was read: "name" may mean a newer version now, and the cache
	 * entry their completion dropped must not come back stale.
	 */
	if (j->catalog_seq == srv->catalog_seq)
		ls_refcache_put(srv, j->refs[0], rec->generation);
	if (j->lease && j->timeout_ms == 0) {
		struct ls_resident *e = ls_res_find(tier, rec->generation);
		if (!e || e->state != LS_RES_RESIDENT) {
			ls_session_error(s, j->id, -ETIMEDOUT, "%s@%u is not resident", rec->name,
					 rec->version);
			return;
		}
	}
	ls_request_answer(s, j->id, tier, rec, NULL, j->timeout_ms, j->lease, j->t0_ns);
}

static void ls_on_release(struct ls_session *s, Lorastore__Request *req)
{
	struct ls_lease **pl = &s->leases;
	while (*pl && (*pl)->id != req->release->lease_id)
		pl = &(*pl)->next;
	if (!*pl) {
		ls_session_error(s, req->id, LS_E_NOT_FOUND, "no lease %llu on this connection",
				 (unsigned long long)req->release->lease_id);
		return;
	}
	struct ls_lease *l = *pl;
	*pl = l->next;
	s->pinned_bytes -= l->res->length;
	s->lease_count--;
	s->srv->leases--;
	ls_res_unpin(l->res);
	free(l);
	ls_send_done(s, req->id);
}

void ls_session_release_all(struct ls_session *s)
{
	while (s->leases) {
		struct ls_lease *l = s->leases;
		s->leases = l->next;
		s->srv->leases--;
		ls_res_unpin(l->res);
		free(l);
	}
	s->pinned_bytes = 0;
	s->lease_count = 0;
}

static void ls_on_prefetch(struct ls_session *s, Lorastore__Request *req)
{
	struct ls_read_job *j = ls_read_new(s, req->id, LS_READ_PREFETCH,
					    (const char *const *)req->prefetch->refs,
					    req->prefetch->n_refs);
	if (j)
		ls_read_submit(j);
}

static void ls_prefetch_read_done(struct ls_read_job *j)
{
	struct ls_session *s = j->s;
	for (size_t i = 0; i < j->n; i++) {
		struct ls_resident *e;
		struct ls_err err;
		int rc = ls_res_request(ls_res_host(&s->srv->res), j->recs[i], NULL, &e, &err);
		if (rc < 0) {
			ls_session_error(s, j->id, rc, "%s", err.msg);
			return;
		}
	}
	ls_send_done(s, j->id);
}

static void ls_on_evict(struct ls_session *s, Lorastore__Request *req)
{
	if (!ls_need_admin(s, req->id, "evict"))
		return;
	const char *ref = req->evict->ref;
	struct ls_read_job *j = ls_read_new(s, req->id, LS_READ_EVICT, &ref, 1);
	if (!j)
		return;
	snprintf(j->tier, sizeof(j->tier), "%s", req->evict->tier ? req->evict->tier : "");
	snprintf(j->device, sizeof(j->device), "%s", req->evict->device ? req->evict->device : "");
	ls_read_submit(j);
}

static void ls_evict_read_done(struct ls_read_job *j)
{
	struct ls_session *s = j->s;
	const Lorastore__VersionRecord *rec = j->recs[0];
	/* No tier named: every tier; else that tier alone. */
	struct ls_tier *tier = NULL;
	if (j->tier[0]) {
		tier = ls_request_tier(s, j->id, j->tier, j->device[0] ? j->device : NULL);
		if (!tier)
			return;
	}
	int rc = tier ? ls_res_evict_tier(tier, rec->generation)
		      : ls_res_evict(&s->srv->res, rec->generation);
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

/*
 * A catalog read is back on the loop.  Nothing is answered to a session
 * that closed meanwhile.  A read that will make a version resident is done
 * again when a delete finished meanwhile: the version it found may be gone,
 * and a resident copy made of it now would never learn of the delete.
 */
static void ls_read_done(struct ls_job *job)
{
	struct ls_read_job *j = (struct ls_read_job *)job;
	struct ls_session *s = j->s;
	struct ls_server *srv = s->srv;
	s->jobs--;
	if (job->cancelled) { /* its connection closed before a worker took it */
		ls_read_free(j);
		return;
	}
	if (j->packing) {
		if (!s->closing && j->rc)
			ls_session_error(s, j->id, j->rc, "%s", j->err.msg);
		else if (!s->closing) {
			ls_session_send_packed(s, j->frame, j->frame_len);
			j->frame = NULL;
		}
		ls_read_free(j);
		return;
	}
	bool makes_resident = j->purpose == LS_READ_ACQUIRE || j->purpose == LS_READ_PREFETCH;
	if (!s->closing && j->rc == 0 && makes_resident && j->delete_seq != srv->delete_seq) {
		for (size_t i = 0; i < j->n; i++) {
			if (j->recs[i])
				lorastore__version_record__free_unpacked(j->recs[i], NULL);
			j->recs[i] = NULL;
		}
		ls_read_submit(j);
		return;
	}
	if (s->closing) {
		/* the session is gone: nothing to answer */
	} else if (j->rc) {
		ls_session_error(s, j->id, j->rc, "%s",
				 j->err.msg[0] ? j->err.msg : ls_strerror(j->rc));
	} else {
		switch (j->purpose) {
		case LS_READ_SHOW:
			ls_pack_entries(j, "");
			return; /* j goes back to a worker, then is freed */
		case LS_READ_LIST:
			ls_pack_entries(j, j->next);
			return;
		case LS_READ_ACQUIRE:
			ls_acquire_read_done(j);
			break;
		case LS_READ_PREFETCH:
			ls_prefetch_read_done(j);
			break;
		case LS_READ_EVICT:
			ls_evict_read_done(j);
			break;
		}
	}
	ls_read_free(j);
}

static void ls_on_stats(struct ls_session *s, Lorastore__Request *req)
{
	struct ls_server *srv = s->srv;
	struct ls_residency *r = &srv->res;
	Lorastore__TierStats ts[LS_RES_MAX_TIERS], *tiers[LS_RES_MAX_TIERS];
	Lorastore__StatsReply sr = LORASTORE__STATS_REPLY__INIT;
	for (uint32_t i = 0; i < r->n_tiers; i++) {
		const struct ls_tier *t = &r->tiers[i];
		lorastore__tier_stats__init(&ts[i]);
		tiers[i] = &ts[i];
		ts[i].name = (char *)ls_tier_kind_name(t);
		ts[i].device = (char *)t->uuid;
		ts[i].ordinal = t->ordinal;
		ts[i].budget = t->budget;
		ts[i].used = t->used;
		ts[i].adapters = t->count;
		ts[i].slab_bytes = t->slab_bytes;
		ts[i].table_bytes = t->table_bytes;
		sr.loads += t->stats.loads;
		sr.hits += t->stats.hits;
		sr.misses += t->stats.misses;
		sr.evictions += t->stats.evictions;
		sr.load_errors += t->stats.load_errors;
	}
	sr.n_tiers = r->n_tiers;
	sr.tiers = tiers;
	sr.clients = srv->n_sessions;
	sr.leases = srv->leases;
	sr.catalog_versions = srv->catalog_versions;
	sr.event_loop = (char *)ls_loop_name(&srv->loop);
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = req->id;
	resp.body_case = LORASTORE__RESPONSE__BODY_STATS;
	resp.stats = &sr;
	ls_session_send(s, &resp, -1);
}

void ls_dispatch(struct ls_session *s, Lorastore__Request *req)
{
	s->req_t0_ns = ls_now_ns();
	if (!s->hello_done && req->body_case != LORASTORE__REQUEST__BODY_HELLO) {
		ls_session_error(s, req->id, LS_E_PROTOCOL, "the first request must be Hello");
		s->close_after_send = true;
		return;
	}
	switch (req->body_case) {
	case LORASTORE__REQUEST__BODY_HELLO:
		ls_on_hello(s, req);
		break;
	case LORASTORE__REQUEST__BODY_IMPORT:
		ls_on_import(s, req);
		break;
	case LORASTORE__REQUEST__BODY_SHOW:
		ls_on_show(s, req);
		break;
	case LORASTORE__REQUEST__BODY_LIST:
		ls_on_list(s, req);
		break;
	case LORASTORE__REQUEST__BODY_DELETE:
		ls_on_delete(s, req);
		break;
	case LORASTORE__REQUEST__BODY_LOAD:
		ls_on_acquire_or_load(s, req->id, req->load->ref, -1, false, req->load->tier,
				      req->load->device);
		break;
	case LORASTORE__REQUEST__BODY_EVICT:
		ls_on_evict(s, req);
		break;
	case LORASTORE__REQUEST__BODY_ACQUIRE:
		ls_on_acquire_or_load(s, req->id, req->acquire->ref, req->acquire->timeout_ms, true,
				      req->acquire->tier, req->acquire->device);
		break;
	case LORASTORE__REQUEST__BODY_RELEASE:
		ls_on_release(s, req);
		break;
	case LORASTORE__REQUEST__BODY_PREFETCH:
		ls_on_prefetch(s, req);
		break;
	case LORASTORE__REQUEST__BODY_STATS:
		ls_on_stats(s, req);
		break;
	case LORASTORE__REQUEST__BODY_VERIFY:
		ls_on_verify(s, req);
		break;
	case LORASTORE__REQUEST__BODY_GC:
		ls_on_gc(s, req);
		break;
	case LORASTORE__REQUEST__BODY_TAG:
		ls_on_tag(s, req, false);
		break;
	case LORASTORE__REQUEST__BODY_EXPORT:
		ls_on_export(s, req);
		break;
	case LORASTORE__REQUEST__BODY_UNTAG:
		ls_on_tag(s, req, true);
		break;
	case LORASTORE__REQUEST__BODY_REBUILD:
		ls_on_rebuild(s, req);
		break;
	default:
		ls_session_error(s, req->id, LS_E_PROTOCOL, "unknown request");
		break;
	}
}

/* Expire acquires whose timeout passed; check connections (session.c). */
void ls_server_tick(struct ls_server *srv)
{
	int64_t now = ls_now_ms();
	ls_server_check_connections(srv, now);
	for (struct ls_session *s = srv->sessions; s; s = s->next) {
		struct ls_pending *p = s->pending;
		while (p) {
			struct ls_pending *next = p->next;
			if (p->deadline_ms >= 0 && now >= p->deadline_ms) {
				ls_res_cancel(&p->waiter);
				ls_pending_remove(s, p);
				ls_session_error(s, p->request_id, -ETIMEDOUT,
						 "the adapter did not finish loading in time");
				free(p);
			}
			p = next;
		}
	}
}

void ls_server_metrics_snapshot(struct ls_server *srv, struct ls_metrics_snapshot *out)
{
	memset(out, 0, sizeof(*out));
	const struct ls_residency *r = &srv->res;
	out->n_tiers = r->n_tiers;
	for (uint32_t i = 0; i < r->n_tiers; i++) {
		const struct ls_tier *t = &r->tiers[i];
		struct ls_metrics_tier *m = &out->tiers[i];
		snprintf(m->tier, sizeof(m->tier), "%s", ls_tier_kind_name(t));
		snprintf(m->device, sizeof(m->device), "%s", t->uuid);
		m->budget = t->budget;
		m->used = t->used;
		m->slab_bytes = t->slab_bytes;
		m->adapters = t->count;
		m->loads = t->stats.loads;
		m->hits = t->stats.hits;
		m->misses = t->stats.misses;
		m->evictions = t->stats.evictions;
		m->load_errors = t->stats.load_errors;
		m->load = t->stats.load_seconds;
	}
	out->acquire = srv->acquire_hist;
	out->clients = srv->n_sessions;
	out->max_clients = srv->max_clients;
	out->leases = srv->leases;
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
}
