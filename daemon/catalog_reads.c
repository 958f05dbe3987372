/* Catalog reads on the workers (catalog_reads.h): show, list, lookups. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog_reads.h"
#include "disk_cache.h"
#include "request.h"

#define LS_LIST_PAGE_DEFAULT 100u
/*
 * Bytes of records one page of a listing holds at most (the first record
 * always goes in, and a record has at most LS_RECORD_MAX): with the entries'
 * own fields the reply stays under the 16 MiB frame cap.
 */
#define LS_LIST_PAGE_BYTES ((size_t)8 << 20)

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
	Lorastore__VersionRecord **recs = realloc(j->recs, (j->n + 1) * sizeof(*recs));
	if (recs)
		j->recs = recs;
	uint32_t *counts = realloc(j->tensor_counts, (j->n + 1) * sizeof(*counts));
	if (counts)
		j->tensor_counts = counts;
	uint64_t *fp = realloc(j->footprints, (j->n + 1) * sizeof(*fp));
	if (fp)
		j->footprints = fp;
	Lorastore__VersionRecord *copy = recs && counts && fp ? ls_record_copy(&shallow) : NULL;
	if (!copy)
		return j->rc = -ENOMEM;
	j->recs[j->n] = copy;
	j->tensor_counts[j->n] = (uint32_t)rec->n_tensors;
	j->footprints[j->n] = ls_table_footprint(rec);
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

/*
 * The version residency takes, from a catalog record: its tensor table
 * built here, on the worker, so that the loop only copies it.
 */
static int ls_res_version_of(const Lorastore__VersionRecord *rec, struct ls_res_version *v,
			     struct ls_err *err)
{
	size_t len = ls_table_size(rec);
	if (len == 0 || rec->digest.len != LS_DIGEST_LEN)
		return ls_err_set(err, LS_E_CATALOG, "%s@%u: malformed catalog record", rec->name,
				  rec->version);
	memset(v, 0, sizeof(*v));
	if (!(v->table = malloc(len)))
		return ls_err_set(err, -ENOMEM, "out of memory");
	int rc = ls_table_write(rec, v->table, len);
	if (rc) {
		free(v->table);
		v->table = NULL;
		return ls_err_set(err, rc, "%s@%u: writing its tensor table: %s", rec->name,
				  rec->version, strerror(-rc));
	}
	v->table_length = len;
	v->generation = rec->generation;
	memcpy(v->digest, rec->digest.data, LS_DIGEST_LEN);
	v->data_length = rec->data_length;
	return 0;
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
		if (rc == 0 && j->versions)
			rc = ls_res_version_of(j->recs[i], &j->versions[i], &j->err);
		if (rc) {
			j->rc = rc;
			return;
		}
	}
	if (j->purpose == LS_READ_SHOW)
		ls_read_aliases(j, store);
}

/* Forget the records and versions a lookup read (it is read again). */
static void ls_read_forget(struct ls_read_job *j)
{
	for (size_t i = 0; i < j->n; i++) {
		if (j->recs && j->recs[i])
			lorastore__version_record__free_unpacked(j->recs[i], NULL);
		if (j->recs)
			j->recs[i] = NULL;
		if (j->versions) {
			free(j->versions[i].table);
			j->versions[i].table = NULL;
		}
	}
}

static void ls_read_free(struct ls_read_job *j)
{
	ls_read_forget(j);
	free(j->versions);
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

void ls_read_submit(struct ls_read_job *j)
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
			  Lorastore__VersionRecord *rec, uint32_t tensor_count, uint64_t footprint,
			  const uint64_t *warm, size_t n_warm)
{
	lorastore__adapter_entry__init(e);
	e->record = rec;
	/* Every tier the version is resident in, host first. */
	bool host, device;
	ls_res_presence(srv->res, rec->generation, &host, &device, &e->pins);
	/* Leases taken in lease pages pin too (warm: sorted generations). */
	size_t lo = 0, hi = n_warm;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (warm[mid] < rec->generation)
			lo = mid + 1;
		else
			hi = mid;
	}
	while (lo < n_warm && warm[lo] == rec->generation) {
		e->pins++;
		lo++;
	}
	static Lorastore__Tier host_device[2] = {LORASTORE__TIER__TIER_HOST,
						 LORASTORE__TIER__TIER_DEVICE};
	e->n_tiers = (size_t)host + (size_t)device;
	e->tiers = host ? &host_device[0] : &host_device[1];
	e->resident = host || device;
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
	uint64_t *warm;
	size_t n_warm = ls_lease_pages_held(&srv->leases, &warm);
	for (size_t i = 0; i < j->n; i++) {
		const Lorastore__VersionRecord *r = j->recs[i];
		ls_entry_fill(srv, &j->entries[i], j->recs[i],
			      j->tensor_counts ? j->tensor_counts[i] : (uint32_t)r->n_tensors,
			      j->footprints ? j->footprints[i] : ls_table_footprint(r), warm,
			      n_warm);
		if (j->aliases && j->n_aliases) {
			j->entries[i].n_aliases = j->n_aliases[i];
			j->entries[i].aliases = j->aliases[i];
		}
		j->entry_ptrs[i] = &j->entries[i];
	}
	free(warm);
	lorastore__list_reply__init(&j->reply);
	j->reply.n_adapters = j->n;
	j->reply.adapters = j->entry_ptrs;
	j->reply.next_cursor = (char *)next_cursor; /* j->next, or a static "" */
	j->packing = true;
	ls_read_submit(j);
}

void ls_on_show(struct ls_session *s, Lorastore__Request *req)
{
	const char *ref = req->show->ref;
	struct ls_read_job *j = ls_read_new(s, req->id, LS_READ_SHOW, &ref, 1);
	if (j)
		ls_read_submit(j);
}

void ls_on_list(struct ls_session *s, Lorastore__Request *req)
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

/*
 * A catalog read is back on the loop.  Nothing is answered to a session
 * that closed meanwhile.  A read that will make a version resident is done
 * again when a delete finished meanwhile: the version it found may be gone,
 * and a resident copy made of it now would never learn of the delete.
 */
static void ls_read_answer(struct ls_job *job)
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
	if (!s->closing && j->rc == 0 && j->makes_resident && j->delete_seq != srv->delete_seq) {
		ls_read_forget(j);
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
		case LS_READ_LOOKUP:
			j->then(j);
			break;
		}
	}
	ls_read_free(j);
}

/*
 * A read is back: answered, then the versions it may have pulled from the
 * origin are counted and the disk cache kept (after the answer, so that a
 * load it started is among what the cache keeps).
 */
static void ls_read_done(struct ls_job *job)
{
	struct ls_server *srv = ((struct ls_read_job *)job)->s->srv;
	ls_read_answer(job);
	ls_disk_cache_after_read(srv);
}

struct ls_read_job *ls_read_lookup(struct ls_session *s, uint64_t id, const char *const *refs,
				   size_t n, bool makes_resident,
				   void (*then)(struct ls_read_job *j))
{
	struct ls_read_job *j = ls_read_new(s, id, LS_READ_LOOKUP, refs, n);
	if (!j)
		return NULL;
	j->then = then;
	j->makes_resident = makes_resident;
	if (!makes_resident)
		return j; /* an evict needs the records alone */
	j->versions = calloc(n ? n : 1, sizeof(*j->versions));
	if (!j->versions) {
		ls_read_free(j);
		ls_session_error(s, id, -ENOMEM, "out of memory");
		return NULL;
	}
	return j;
}
