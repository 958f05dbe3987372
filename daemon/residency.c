/* Residency of adapter versions: slabs, budget, LRU, loads. */
#include "residency.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "log.h"

/* A regular slab: large enough for many adapters, small enough to share well. */
#define LS_SLAB_DEFAULT (256ull << 20)
#define LS_RES_BUCKETS 4096u

int ls_residency_init(struct ls_residency *r, struct ls_backend *backend, uint64_t budget,
		      struct ls_loop *loop, struct ls_workers *workers, struct ls_store *store,
		      struct ls_err *err)
{
	memset(r, 0, sizeof(*r));
	r->backend = backend;
	r->loop = loop;
	r->workers = workers;
	r->store = store;
	r->budget = budget;
	uint64_t gran = ls_backend_granularity(backend);
	r->slab_size = ls_align_up(budget < LS_SLAB_DEFAULT ? budget : LS_SLAB_DEFAULT, gran);
	if (r->slab_size == 0)
		r->slab_size = gran;
	r->n_buckets = LS_RES_BUCKETS;
	r->buckets = calloc(r->n_buckets, sizeof(*r->buckets));
	r->direct_io = true;
	if (!r->buckets)
		return ls_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

static void ls_res_free_entry(struct ls_residency *r, struct ls_resident *e);

void ls_residency_destroy(struct ls_residency *r)
{
	for (uint32_t b = 0; b < r->n_buckets; b++) {
		struct ls_resident *e = r->buckets ? r->buckets[b] : NULL;
		while (e) {
			struct ls_resident *next = e->hnext;
			if (e->fd >= 0)
				close(e->fd);
			if (e->xxh)
				XXH3_freeState(e->xxh);
			free(e);
			e = next;
		}
	}
	free(r->buckets);
	for (uint32_t i = 0; i < r->n_slabs; i++) {
		ls_extents_destroy(&r->slabs[i].ext);
		ls_backend_slab_free(r->backend, &r->slabs[i].slab);
	}
	free(r->slabs);
	memset(r, 0, sizeof(*r));
}

struct ls_resident *ls_res_find(struct ls_residency *r, uint64_t generation)
{
	for (struct ls_resident *e = r->buckets[generation % r->n_buckets]; e; e = e->hnext)
		if (e->generation == generation)
			return e;
	return NULL;
}

static void ls_hash_remove(struct ls_residency *r, struct ls_resident *e)
{
	struct ls_resident **p = &r->buckets[e->generation % r->n_buckets];
	while (*p && *p != e)
		p = &(*p)->hnext;
	if (*p)
		*p = e->hnext;
}

static bool ls_on_lru(struct ls_residency *r, struct ls_resident *e)
{
	return e->lru_prev || e->lru_next || r->lru_head == e;
}

static void ls_lru_remove(struct ls_residency *r, struct ls_resident *e)
{
	if (!ls_on_lru(r, e))
		return;
	if (e->lru_prev)
		e->lru_prev->lru_next = e->lru_next;
	else
		r->lru_head = e->lru_next;
	if (e->lru_next)
		e->lru_next->lru_prev = e->lru_prev;
	else
		r->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

/* Append as most recently used. */
static void ls_lru_push(struct ls_residency *r, struct ls_resident *e)
{
	e->lru_prev = r->lru_tail;
	e->lru_next = NULL;
	if (r->lru_tail)
		r->lru_tail->lru_next = e;
	else
		r->lru_head = e;
	r->lru_tail = e;
}

/* Give back an entry's memory and forget it. */
static void ls_res_free_entry(struct ls_residency *r, struct ls_resident *e)
{
	ls_lru_remove(r, e);
	ls_hash_remove(r, e);
	struct ls_slab_slot *slot = &r->slabs[e->slab];
	ls_extents_free(&slot->ext, e->offset, e->length);
	slot->adapters--;
	r->used -= e->length;
	r->count--;
	if (e->fd >= 0)
		close(e->fd);
	if (e->xxh)
		XXH3_freeState(e->xxh);
	free(e);
}

/* Evict the least recently used unpinned adapter; false when there is none. */
static bool ls_evict_one(struct ls_residency *r)
{
	struct ls_resident *e = r->lru_head;
	if (!e)
		return false;
	ls_debug("evicting %s@%u (%llu bytes)", ls_res_name(r, e), ls_res_version(r, e),
		 (unsigned long long)e->length);
	r->stats.evictions++;
	ls_res_free_entry(r, e);
	return true;
}

/* Find room for len bytes: evict as needed; allocate a slab when allowed. */
static int ls_place(struct ls_residency *r, uint64_t len, uint32_t *slab, uint64_t *offset,
		    struct ls_err *err)
{
	if (len > r->budget)
		return ls_err_set(err, LS_E_NO_SPACE,
				  "adapter needs %llu bytes but the budget is %llu",
				  (unsigned long long)len, (unsigned long long)r->budget);
	while (r->used + len > r->budget)
		if (!ls_evict_one(r))
			return ls_err_set(err, LS_E_NO_SPACE,
					  "budget of %llu bytes is held by pinned adapters",
					  (unsigned long long)r->budget);
	for (;;) {
		for (uint32_t i = 0; i < r->n_slabs; i++)
			if (ls_extents_alloc(&r->slabs[i].ext, len, LS_BLOB_PAGE, offset) == 0) {
				*slab = i;
				return 0;
			}
		/* A new slab, as long as all slabs together stay within the budget. */
		uint64_t gran = ls_backend_granularity(r->backend);
		uint64_t size = ls_align_up(len > r->slab_size ? len : r->slab_size, gran);
		uint64_t cap = ls_align_up(r->budget, gran);
		if (r->slab_bytes + size > cap && len <= r->slab_size &&
		    r->slab_bytes + ls_align_up(len, gran) <= cap)
			size = ls_align_up(len, gran);
		if (r->slab_bytes + size <= cap) {
			struct ls_slab_slot *slots =
				realloc(r->slabs, (r->n_slabs + 1) * sizeof(*r->slabs));
			if (!slots)
				return ls_err_set(err, -ENOMEM, "out of memory");
			r->slabs = slots;
			struct ls_slab_slot *slot = &r->slabs[r->n_slabs];
			memset(slot, 0, sizeof(*slot));
			int rc = ls_backend_slab_alloc(r->backend, size, &slot->slab);
			if (rc)
				return ls_err_set(err, rc, "allocating a slab of %llu bytes: %s",
						  (unsigned long long)size, strerror(-rc));
			rc = ls_extents_init(&slot->ext, slot->slab.size);
			if (rc) {
				ls_backend_slab_free(r->backend, &slot->slab);
				return ls_err_set(err, rc, "out of memory");
			}
			r->slab_bytes += slot->slab.size;
			r->n_slabs++;
			ls_info("slab %u: %llu bytes (%s)", slot->slab.id,
				(unsigned long long)slot->slab.size, ls_backend_name(r->backend));
			continue;
		}
		/* Fragmented: evict and try again. */
		if (!ls_evict_one(r))
			return ls_err_set(err, LS_E_NO_SPACE,
					  "no slab has %llu contiguous bytes free and nothing is "
					  "evictable",
					  (unsigned long long)len);
	}
}

static void ls_wake(struct ls_residency *r, struct ls_resident *e, int rc, const char *msg)
{
	struct ls_waiter *w = e->waiters;
	e->waiters = NULL;
	while (w) {
		struct ls_waiter *next = w->next;
		w->next = w->prev = NULL;
		w->res = NULL;
		w->fn(w, rc == 0 ? e : NULL, rc, msg);
		w = next;
	}
	(void)r;
}

static void ls_load_fail(struct ls_residency *r, struct ls_resident *e, int rc, const char *msg)
{
	ls_error("load of %s@%u failed: %s", ls_res_name(r, e), ls_res_version(r, e), msg);
	r->stats.load_errors++;
	/* Waiters learn of the failure (with no entry) before the entry goes. */
	ls_wake(r, e, rc, msg);
	ls_res_free_entry(r, e);
}

/* Bytes asked of one read: large enough for the device, small enough to overlap hashing. */
#define LS_READ_CHUNK (8u << 20)

static void ls_load_step(struct ls_residency *r, struct ls_resident *e);

static void ls_hash_run(struct ls_job *job)
{
	struct ls_resident *e = (struct ls_resident *)((char *)job - offsetof(struct ls_resident, hash_job));
	struct ls_slab_slot *slot = &e->owner->slabs[e->slab];
	const uint8_t *p = (const uint8_t *)slot->slab.host + e->offset + e->hashed;
	XXH3_64bits_update(e->xxh, p, e->hash_len);
}

static void ls_hash_done(struct ls_job *job)
{
	struct ls_resident *e = (struct ls_resident *)((char *)job - offsetof(struct ls_resident, hash_job));
	e->hashing = false;
	e->hashed += e->hash_len;
	ls_load_step(e->owner, e);
}

static void ls_load_finish(struct ls_residency *r, struct ls_resident *e)
{
	XXH3_freeState(e->xxh);
	e->xxh = NULL;
	e->state = LS_RES_RESIDENT;
	r->stats.loads++;
	ls_debug("loaded %s@%u (%llu bytes) into slab %u at %llu", ls_res_name(r, e),
		 ls_res_version(r, e),
		 (unsigned long long)e->length, r->slabs[e->slab].slab.id,
		 (unsigned long long)e->offset);
	if (e->pins == 0)
		ls_lru_push(r, e);
	ls_wake(r, e, 0, "ok");
	if (e->pins == 0 && e->deleted)
		ls_res_free_entry(r, e);
}

static void ls_read_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_resident *e = (struct ls_resident *)((char *)op - offsetof(struct ls_resident, read_op));
	(void)loop;
	e->reading = false;
	if (res <= 0 && !e->fail_rc) {
		e->fail_rc = res ? res : LS_E_CORRUPT;
		snprintf(e->fail_msg, sizeof(e->fail_msg), "%s@%u: reading the blob: %s",
			 ls_res_name(e->owner, e), ls_res_version(e->owner, e),
			 res ? strerror(-res) : "unexpected end of file");
	} else if (res > 0) {
		e->done += (uint64_t)res;
	}
	ls_load_step(e->owner, e);
}

/*
 * Advance a load: keep one read and one hash job going until the whole
 * region is read and hashed, then compare the checksum.  Failures wait for
 * whatever is in flight before the entry goes.
 */
static void ls_load_step(struct ls_residency *r, struct ls_resident *e)
{
	uint64_t len = e->hdr.data_length;
	if (e->fail_rc) {
		if (!e->reading && !e->hashing)
			ls_load_fail(r, e, e->fail_rc, e->fail_msg);
		return;
	}
	if (!e->reading && e->done < len) {
		struct ls_slab_slot *slot = &r->slabs[e->slab];
		uint8_t *dst = (uint8_t *)slot->slab.host + e->offset + e->done;
		uint64_t left = len - e->done;
		unsigned chunk = left > LS_READ_CHUNK ? LS_READ_CHUNK : (unsigned)left;
		ls_loop_read(r->loop, &e->read_op, ls_read_done, e->fd, dst, chunk,
			     e->hdr.data_offset + e->done);
		e->reading = true;
	}
	if (!e->hashing && e->hashed < e->done) {
		e->hash_len = e->done - e->hashed;
		e->hash_job.run = ls_hash_run;
		e->hash_job.done = ls_hash_done;
		e->hashing = true;
		if (e->hashed == 0 && e->done == len)
			e->state = LS_RES_VERIFYING;
		ls_workers_submit(r->workers, &e->hash_job);
		return;
	}
	if (e->reading || e->hashing || e->hashed < len)
		return;
	close(e->fd);
	e->fd = -1;
	if (XXH3_64bits_digest(e->xxh) != e->hdr.data_xxh3) {
		char msg[256];
		snprintf(msg, sizeof(msg), "%s@%u: blob data checksum mismatch (corrupt blob)",
			 ls_res_name(r, e), ls_res_version(r, e));
		ls_load_fail(r, e, LS_E_CORRUPT, msg);
		return;
	}
	ls_load_finish(r, e);
}

/* Open the blob, check its header against the record, and start reading. */
static int ls_load_start(struct ls_residency *r, struct ls_resident *e, struct ls_err *err)
{
	char path[PATH_MAX];
	const struct ls_table_hdr *t = ls_res_table(r, e);
	ls_store_blob_path(r->store, t->digest, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ls_err_set(err, errno == ENOENT ? LS_E_CORRUPT : -errno,
				  "%s@%u: blob %s: %s", ls_res_name(r, e), t->version, path,
				  strerror(errno));
	int rc = ls_blob_read_header(fd, path, &e->hdr, err);
	if (rc == 0 && memcmp(e->hdr.digest, t->digest, LS_DIGEST_LEN) != 0)
		rc = ls_err_set(err, LS_E_CORRUPT, "%s: digest differs from the catalog", path);
	if (rc == 0 && e->hdr.data_length != e->data_length)
		rc = ls_err_set(err, LS_E_CORRUPT, "%s: data region of %llu bytes, expected %llu",
				path, (unsigned long long)e->hdr.data_length,
				(unsigned long long)e->data_length);
	if (rc) {
		close(fd);
		return rc;
	}
	/* One large O_DIRECT read into the slab: offsets and sizes are page multiples. */
	if (r->direct_io) {
		int dfd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
		if (dfd >= 0) {
			close(fd);
			fd = dfd;
		} else if (errno == EINVAL) {
			r->direct_io = false;
			ls_info("O_DIRECT is not supported for %s; using buffered reads", path);
		}
	}
	e->xxh = XXH3_createState();
	if (!e->xxh) {
		close(fd);
		return ls_err_set(err, -ENOMEM, "out of memory");
	}
	XXH3_64bits_reset(e->xxh);
	e->fd = fd;
	e->done = e->hashed = 0;
	ls_load_step(r, e);
	return 0;
}

uint64_t ls_res_footprint(const Lorastore__VersionRecord *rec)
{
	size_t table = ls_table_size(rec);
	if (table == 0)
		return 0;
	return ls_align_up(rec->data_length ? rec->data_length : 1, LS_BLOB_PAGE) +
	       ls_align_up(table, LS_BLOB_PAGE);
}

int ls_res_request(struct ls_residency *r, const Lorastore__VersionRecord *rec,
		   struct ls_waiter *w, struct ls_resident **out, struct ls_err *err)
{
	*out = NULL;
	struct ls_resident *e = ls_res_find(r, rec->generation);
	if (e && e->state == LS_RES_RESIDENT) {
		ls_res_touch(r, e);
		*out = e;
		return 0;
	}
	if (!e) {
		r->stats.misses++;
		size_t table = ls_table_size(rec);
		if (table == 0)
			return ls_err_set(err, LS_E_CATALOG, "%s@%u: malformed catalog record",
					  rec->name, rec->version);
		e = calloc(1, sizeof(*e));
		if (!e)
			return ls_err_set(err, -ENOMEM, "out of memory");
		e->owner = r;
		e->fd = -1;
		e->generation = rec->generation;
		e->data_length = ls_align_up(rec->data_length ? rec->data_length : 1, LS_BLOB_PAGE);
		e->table_length = table;
		e->length = ls_res_footprint(rec);
		e->state = LS_RES_LOADING;
		int rc = ls_place(r, e->length, &e->slab, &e->offset, err);
		if (rc) {
			free(e);
			return rc;
		}
		/* The table first: messages about the load name the adapter from it. */
		rc = ls_table_write(rec, (uint8_t *)r->slabs[e->slab].slab.host + e->offset +
						 e->data_length, e->length - e->data_length);
		if (rc) {
			ls_extents_free(&r->slabs[e->slab].ext, e->offset, e->length);
			free(e);
			return ls_err_set(err, rc, "%s@%u: writing its tensor table: %s", rec->name,
					  rec->version, strerror(-rc));
		}
		r->slabs[e->slab].adapters++;
		r->used += e->length;
		r->count++;
		e->hnext = r->buckets[e->generation % r->n_buckets];
		r->buckets[e->generation % r->n_buckets] = e;
		rc = ls_load_start(r, e, err);
		if (rc) {
			r->stats.load_errors++;
			ls_error("%s", err ? err->msg : "load failed");
			ls_res_free_entry(r, e);
			return rc;
		}
	}
	if (w) {
		w->res = e;
		w->prev = NULL;
		w->next = e->waiters;
		if (e->waiters)
			e->waiters->prev = w;
		e->waiters = w;
	}
	return 1;
}

void ls_res_touch(struct ls_residency *r, struct ls_resident *e)
{
	r->stats.hits++;
	ls_lru_remove(r, e);
	if (e->pins == 0)
		ls_lru_push(r, e); /* most recently used */
}

void ls_res_cancel(struct ls_residency *r, struct ls_waiter *w)
{
	struct ls_resident *e = w->res;
	if (!e)
		return;
	if (w->prev)
		w->prev->next = w->next;
	else
		e->waiters = w->next;
	if (w->next)
		w->next->prev = w->prev;
	w->next = w->prev = NULL;
	w->res = NULL;
	(void)r;
}

void ls_res_pin(struct ls_residency *r, struct ls_resident *e)
{
	if (e->pins++ == 0)
		ls_lru_remove(r, e);
}

void ls_res_unpin(struct ls_residency *r, struct ls_resident *e)
{
	if (--e->pins > 0 || e->state != LS_RES_RESIDENT)
		return;
	if (e->deleted) {
		ls_info("freeing deleted %s@%u now that its last lease ended", ls_res_name(r, e),
			ls_res_version(r, e));
		ls_res_free_entry(r, e);
		return;
	}
	ls_lru_push(r, e);
}

int ls_res_evict(struct ls_residency *r, uint64_t generation)
{
	struct ls_resident *e = ls_res_find(r, generation);
	if (!e)
		return LS_E_NOT_FOUND;
	if (e->pins || e->state != LS_RES_RESIDENT)
		return -EBUSY;
	r->stats.evictions++;
	ls_res_free_entry(r, e);
	return 0;
}

void ls_res_deleted(struct ls_residency *r, uint64_t generation)
{
	struct ls_resident *e = ls_res_find(r, generation);
	if (!e)
		return;
	e->deleted = true;
	if (e->pins == 0 && e->state == LS_RES_RESIDENT && !e->waiters)
		ls_res_free_entry(r, e);
}
