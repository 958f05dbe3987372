/*
 * Requests answered by a job on the workers that writes or scans the
 * catalog: import, delete, tag, untag, export, verify, gc, rebuild, and
 * the origin's push and listing.  The
 * loop checks the request, a worker runs the store's call, and the loop
 * answers and updates what depends on the catalog (the reference cache, the
 * residency of deleted versions, the counts).  Imports and deletes of one
 * name go through the per-name job queue.
 */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "ls_file.h"
#include "ls_size.h"
#include "origin.h"
#include "request.h"

enum ls_job_kind {
	LS_JOB_IMPORT,
	LS_JOB_DELETE,
	LS_JOB_VERIFY,
	LS_JOB_GC,
	LS_JOB_REBUILD,
	LS_JOB_TAG,
	LS_JOB_UNTAG,
	LS_JOB_EXPORT,
	LS_JOB_PUSH,
	LS_JOB_ORIGIN_LIST,
};

struct ls_req_job {
	struct ls_keyed_job kjob;       /* first; keyed by the name for imports and deletes */
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
	/* verify */
	Lorastore__VerifyItem **items;
	size_t n_items;
	size_t bad;
	/* gc */
	struct ls_gc_stats gc;
	/* rebuild */
	struct ls_rebuild_stats rebuild;
	uint64_t versions_after;
	/* push */
	uint32_t pushed, present;
	/* origin list: a page of entries (names malloc'ed) */
	char prefix[LS_NAME_MAX + 1];
	char cursor[LS_NAME_MAX + 16];
	char next[LS_NAME_MAX + 16];
	unsigned limit;
	Lorastore__OriginEntry *entries;
	size_t n_entries, cap_entries;
};


static int ls_origin_entry_add(void *ud, const char *name, uint32_t version, bool here)
{
	struct ls_req_job *j = ud;
	if (j->n_entries == j->cap_entries) {
		size_t cap = j->cap_entries ? j->cap_entries * 2 : 16;
		Lorastore__OriginEntry *e = realloc(j->entries, cap * sizeof(*e));
		if (!e)
			return -ENOMEM;
		j->entries = e;
		j->cap_entries = cap;
	}
	Lorastore__OriginEntry *e = &j->entries[j->n_entries];
	lorastore__origin_entry__init(e);
	e->name = strdup(name);
	if (!e->name)
		return -ENOMEM;
	e->version = version;
	e->here = here;
	j->n_entries++;
	return 0;
}

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
	case LS_JOB_PUSH:
		j->rc = ls_store_push(j->s->srv->store, j->ref, &j->pushed, &j->present, &j->err);
		break;
	case LS_JOB_ORIGIN_LIST:
		j->rc = ls_store_origin_list(j->s->srv->store, j->prefix,
					     j->cursor[0] ? j->cursor : NULL, j->limit,
					     ls_origin_entry_add, j, j->next, &j->err);
		if (j->rc == -ENOMEM)
			ls_err_set(&j->err, -ENOMEM, "out of memory listing the origin");
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
			ls_refcache_drop(srv->refcache, name, true);
		for (size_t i = 0; i < j->deleted.n; i++)
			ls_res_deleted(srv->res, j->deleted.gens[i]);
		srv->catalog_versions -= j->deleted.n < srv->catalog_versions
						 ? j->deleted.n
						 : srv->catalog_versions;
		srv->delete_seq++;
		srv->catalog_seq++;
	}
	if (j->kind == LS_JOB_REBUILD) {
		srv->rebuilding = false;
		/* Names may map to other versions now; reads in flight are stale. */
		ls_refcache_clear(srv->refcache);
		srv->delete_seq++;
		srv->catalog_seq++;
		if (j->rc == 0)
			srv->catalog_versions = j->versions_after;
	}
	if ((j->kind == LS_JOB_TAG || j->kind == LS_JOB_UNTAG) && j->rc == 0) {
		/* The alias names another version now (or none): reads in flight are stale. */
		ls_refcache_drop(srv->refcache, j->alias, false);
		srv->catalog_seq++;
	}
	if (j->kind == LS_JOB_IMPORT && j->rc == 0 && j->unchanged) {
		srv->imports++;
	} else if (j->kind == LS_JOB_IMPORT && j->rc == 0) {
		ls_refcache_drop(srv->refcache, j->name, false);
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
		Lorastore__PushReply pr = LORASTORE__PUSH_REPLY__INIT;
		Lorastore__OriginListReply olr = LORASTORE__ORIGIN_LIST_REPLY__INIT;
		Lorastore__OriginEntry **eps = NULL;
		struct ls_origin *origin = ls_store_origin(srv->store);
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
			struct ls_origin *o = ls_store_origin(srv->store);
			if (o) {
				dr.origin = (char *)ls_origin_label(o);
				dr.origin_versions = j->deleted.origin_versions;
				dr.origin_error = j->deleted.origin_error;
				if (j->deleted.origin_rc)
					ls_warn("deleted %s here, not in the origin: %s", j->ref,
						j->deleted.origin_error);
			}
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
		case LS_JOB_PUSH:
			ls_info("pushed %s to the origin: %u uploaded, %u there already (uid %u)",
				j->ref, j->pushed, j->present, (unsigned)s->cred.uid);
			pr.pushed = j->pushed;
			pr.present = j->present;
			pr.origin = (char *)(origin ? ls_origin_label(origin) : "");
			resp.body_case = LORASTORE__RESPONSE__BODY_PUSHED;
			resp.pushed = &pr;
			ls_session_send(s, &resp, -1);
			break;
		case LS_JOB_ORIGIN_LIST:
			eps = malloc((j->n_entries ? j->n_entries : 1) * sizeof(*eps));
			if (!eps) {
				ls_session_error(s, j->id, -ENOMEM, "out of memory");
				break;
			}
			for (size_t i = 0; i < j->n_entries; i++)
				eps[i] = &j->entries[i];
			olr.n_entries = j->n_entries;
			olr.entries = eps;
			olr.next_cursor = j->next;
			olr.origin = (char *)(origin ? ls_origin_label(origin) : "");
			resp.body_case = LORASTORE__RESPONSE__BODY_ORIGIN_LIST;
			resp.origin_list = &olr;
			ls_session_send(s, &resp, -1);
			free(eps);
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
	for (size_t i = 0; i < j->n_entries; i++)
		free(j->entries[i].name);
	free(j->entries);
	free(j->deleted.gens);
	ls_export_free(&j->exported);
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

static struct ls_req_job *ls_job_new(struct ls_session *s, uint64_t id, enum ls_job_kind kind)
{
	if (!ls_job_allowed(s, id))
		return NULL;
	struct ls_req_job *j = calloc(1, sizeof(*j));
	if (!j) {
		ls_session_error(s, id, -ENOMEM, "out of memory");
		return NULL;
	}
	j->kjob.job.run = ls_job_run;
	j->kjob.job.done = ls_job_done;
	j->kjob.job.owner = &s->job_owner;
	j->kind = kind;
	j->s = s;
	j->id = id;
	j->cfg_fd = j->st_fd = -1;
	return j;
}

/* Submit a job: one with a key waits behind the job of that key in flight. */
static void ls_job_submit(struct ls_req_job *j)
{
	j->s->jobs++;
	ls_job_queue_submit(&j->s->srv->name_jobs, &j->kjob);
}

/* A keyed job is done: the next job of its name, if any, goes to the workers. */
static void ls_name_job_done(struct ls_server *srv, struct ls_req_job *j)
{
	struct ls_keyed_job *next = ls_job_queue_done(&srv->name_jobs, &j->kjob);
	/* It waited behind this one while its own connection closed: dropped unstarted. */
	struct ls_session *owner = next ? ((struct ls_req_job *)next)->s : NULL;
	if (owner && owner->closing)
		srv->jobs_cancelled += ls_workers_cancel(srv->workers, &owner->job_owner);
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

_Static_assert((int)LORASTORE__CONVERT__CONVERT_KEEP == (int)LS_CONVERT_KEEP &&
		       (int)LORASTORE__CONVERT__CONVERT_F16 == (int)LS_CONVERT_F16 &&
		       (int)LORASTORE__CONVERT__CONVERT_BF16 == (int)LS_CONVERT_BF16 &&
		       (int)LORASTORE__CONVERT__CONVERT_F32 == (int)LS_CONVERT_F32,
	       "the wire's conversions are lorastore's");

void ls_on_import(struct ls_session *s, Lorastore__Request *req)
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
	if (strcmp(ls_convert_name((enum ls_convert)im->convert), "?") == 0) {
		ls_session_error(s, req->id, -EINVAL,
				 "convert %d: expected keep, f16, bf16 or f32 (0 to 3)",
				 (int)im->convert);
		goto refuse;
	}
	conv = (enum ls_convert)im->convert;
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
	snprintf(j->kjob.key, sizeof(j->kjob.key), "%s", im->name);
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

void ls_on_delete(struct ls_session *s, Lorastore__Request *req)
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
	snprintf(j->kjob.key, sizeof(j->kjob.key), "%s", name);
	ls_job_submit(j);
}

void ls_on_verify(struct ls_session *s, Lorastore__Request *req)
{
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_VERIFY);
	if (!j)
		return;
	snprintf(j->ref, sizeof(j->ref), "%s", req->verify->ref ? req->verify->ref : "");
	ls_job_submit(j);
}

void ls_on_rebuild(struct ls_session *s, Lorastore__Request *req)
{
	if (!ls_need_admin(s, req->id, "rebuild"))
		return;
	if (s->srv->rebuilding || ls_job_queue_busy(&s->srv->name_jobs)) {
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
void ls_on_tag(struct ls_session *s, Lorastore__Request *req, bool untag)
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
void ls_on_export(struct ls_session *s, Lorastore__Request *req)
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

void ls_on_gc(struct ls_session *s, Lorastore__Request *req)
{
	if (!ls_need_admin(s, req->id, "gc"))
		return;
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_GC);
	if (j)
		ls_job_submit(j);
}

void ls_on_push(struct ls_session *s, Lorastore__Request *req)
{
	if (!ls_need_admin(s, req->id, "push"))
		return;
	char name[LS_NAME_MAX + 1];
	uint32_t version;
	struct ls_err err;
	if (ls_ref_parse(req->push->ref, name, &version, &err)) {
		ls_session_error(s, req->id, err.code, "%s", err.msg);
		return;
	}
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_PUSH);
	if (!j)
		return;
	snprintf(j->ref, sizeof(j->ref), "%s", req->push->ref);
	/* In order with the imports and deletes of the name. */
	snprintf(j->kjob.key, sizeof(j->kjob.key), "%s", name);
	ls_job_submit(j);
}

void ls_on_origin_list(struct ls_session *s, Lorastore__Request *req)
{
	const Lorastore__ListRequest *l = req->origin_list;
	const char *prefix = l->prefix ? l->prefix : "", *cursor = l->cursor ? l->cursor : "";
	if (strlen(prefix) > LS_NAME_MAX || strlen(cursor) >= LS_NAME_MAX + 16) {
		ls_session_error(s, req->id, LS_E_NAME_INVALID, "prefix or cursor too long");
		return;
	}
	struct ls_req_job *j = ls_job_new(s, req->id, LS_JOB_ORIGIN_LIST);
	if (!j)
		return;
	snprintf(j->prefix, sizeof(j->prefix), "%s", prefix);
	snprintf(j->cursor, sizeof(j->cursor), "%s", cursor);
	/* The framer bounded it (LS_PROTO_ORIGIN_LIST_LIMIT_MAX); 0 asks for a default page. */
	j->limit = l->limit ? l->limit : 1000;
	ls_job_submit(j);
}
