/* Residency of adapter versions: tiers, slabs, budgets, LRU, loads, uploads. */
#include "residency_internal.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "ls_clock.h"
#include "ls_size.h"
#include "log.h"

/* A table slab of a device tier (host memory): tables are kilobytes each. */
#define LS_TABLE_SLAB (8ull << 20)
#define LS_RES_BUCKETS 4096u

static int ls_tier_init(struct ls_residency *r, struct ls_tier *t, enum ls_tier_kind kind,
			struct ls_backend *backend, uint64_t budget, uint64_t slab_size,
			struct ls_err *err)
{
	memset(t, 0, sizeof(*t));
	t->owner = r;
	t->kind = kind;
	t->index = (uint32_t)(t - r->tiers);
	t->ordinal = -1;
	t->backend = backend;
	t->budget = budget;
	uint64_t gran = ls_backend_granularity(backend);
	t->slab_size = ls_align_up(budget < slab_size ? budget : slab_size, gran);
	if (t->slab_size == 0)
		t->slab_size = gran;
	/*
	 * Slabs may total more than the budget by one regular slab: adapters
	 * of mixed sizes leave gaps at slab ends that no adapter fits, and the
	 * slab sized to what the budget has left makes up for them, so that
	 * admission stays by the adapters' bytes.
	 */
	t->slab_limit = ls_align_up(budget, gran) + t->slab_size;
	t->n_buckets = LS_RES_BUCKETS;
	t->buckets = calloc(t->n_buckets, sizeof(*t->buckets));
	if (!t->buckets)
		return ls_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

int ls_residency_create(struct ls_backend *host_backend, uint64_t host_budget,
			uint64_t host_slab_size, struct ls_loop *loop, struct ls_workers *workers,
			struct ls_store *store, struct ls_residency **out, struct ls_err *err)
{
	struct ls_residency *r = calloc(1, sizeof(*r));
	if (!r)
		return ls_err_set(err, -ENOMEM, "out of memory");
	r->host_backend = host_backend;
	r->loop = loop;
	r->workers = workers;
	r->store = store;
	r->direct_io = true;
	r->n_tiers = 1;
	int rc = ls_tier_init(r, &r->tiers[0], LS_TIER_HOST, host_backend, host_budget,
			      host_slab_size, err);
	if (rc) {
		free(r);
		return rc;
	}
	*out = r;
	return 0;
}

/* Pin a host slab with the driver of the first device tier, so uploads from it run fast. */
static void ls_host_slab_register(struct ls_residency *r, struct ls_slab *slab)
{
	if (!r->register_backend)
		return;
	struct ls_err err;
	void *p = ls_backend_host_ptr(r->host_backend, slab, 0, slab->size);
	if (p && ls_backend_host_register(r->register_backend, p, slab->size, &err))
		ls_warn("host slab %u stays pageable (uploads from it are slower): %s", slab->id,
			err.msg);
}

static void ls_host_slab_unregister(struct ls_residency *r, struct ls_slab *slab)
{
	if (!r->register_backend)
		return;
	void *p = ls_backend_host_ptr(r->host_backend, slab, 0, slab->size);
	if (p)
		ls_backend_host_unregister(r->register_backend, p);
}

static void ls_completion_ready(struct ls_loop *loop, struct ls_op *op, int res);

static void ls_completion_watch(struct ls_tier *t)
{
	int fd = ls_backend_completion_fd(t->backend);
	if (fd < 0)
		return;
	ls_loop_poll_in(t->owner->loop, &t->completion_op, ls_completion_ready, fd);
	t->watching = true;
}

static void ls_completion_ready(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_tier *t = (struct ls_tier *)((char *)op - offsetof(struct ls_tier, completion_op));
	(void)loop;
	t->watching = false;
	if (res == -ECANCELED)
		return;
	ls_backend_reap(t->backend);
	ls_completion_watch(t);
}

int ls_residency_add_device(struct ls_residency *r, struct ls_backend *backend, int ordinal,
			    const char *uuid, uint64_t budget, uint64_t slab_size,
			    struct ls_err *err)
{
	if (r->n_tiers >= LS_RES_MAX_TIERS)
		return ls_err_set(err, -E2BIG, "at most %d GPUs", LS_RES_MAX_TIERS - 1);
	struct ls_tier *t = &r->tiers[r->n_tiers];
	int rc = ls_tier_init(r, t, LS_TIER_DEVICE, backend, budget, slab_size, err);
	if (rc)
		return rc;
	t->ordinal = ordinal;
	snprintf(t->uuid, sizeof(t->uuid), "%s", uuid);
	r->n_tiers++;
	if (!r->register_backend) {
		r->register_backend = backend;
		struct ls_tier *h = ls_res_host(r);
		for (uint32_t i = 0; i < h->n_slabs; i++)
			ls_host_slab_register(r, &h->slabs[i].slab);
	}
	if (r->loop)
		ls_completion_watch(t);
	return 0;
}

struct ls_tier *ls_res_device_tier(struct ls_residency *r, const char *uuid)
{
	struct ls_tier *only = r->n_tiers == 2 ? &r->tiers[1] : NULL;
	if (!uuid || !*uuid)
		return only;
	for (uint32_t i = 1; i < r->n_tiers; i++)
		if (strcmp(r->tiers[i].uuid, uuid) == 0)
			return &r->tiers[i];
	return NULL;
}

static void ls_tier_destroy(struct ls_residency *r, struct ls_tier *t)
{
	for (uint32_t b = 0; t->buckets && b < t->n_buckets; b++) {
		struct ls_resident *e = t->buckets[b];
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
	free(t->buckets);
	for (uint32_t i = 0; i < t->n_slabs; i++) {
		ls_extents_destroy(&t->slabs[i].ext);
		if (t->kind == LS_TIER_HOST)
			ls_host_slab_unregister(r, &t->slabs[i].slab);
		ls_backend_slab_free(t->backend, &t->slabs[i].slab);
	}
	free(t->slabs);
	for (uint32_t i = 0; i < t->n_table_slabs; i++) {
		ls_extents_destroy(&t->table_slabs[i].ext);
		ls_backend_slab_free(r->host_backend, &t->table_slabs[i].slab);
	}
	free(t->table_slabs);
	memset(t, 0, sizeof(*t));
}

void ls_residency_destroy(struct ls_residency *r)
{
	if (!r)
		return;
	/* Device tiers first: the host tier's slabs are registered with their driver. */
	for (uint32_t i = r->n_tiers; i-- > 0;)
		ls_tier_destroy(r, &r->tiers[i]);
	free(r);
}

struct ls_tier *ls_res_host(struct ls_residency *r)
{
	return &r->tiers[0];
}

const char *ls_res_name(const struct ls_resident *e)
{
	const struct ls_table_hdr *h = ls_res_table(e);
	return (const char *)h + h->pool + h->name;
}

uint32_t ls_res_version(const struct ls_resident *e)
{
	return ls_res_table(e)->version;
}

const struct ls_table_hdr *ls_res_table(const struct ls_resident *e)
{
	struct ls_slab_slot *slot = ls_res_table_slab(e);
	return ls_backend_host_ptr(e->tier->owner->host_backend, &slot->slab, e->table_offset,
				   e->table_length);
}

/* Leased, staging a device load, or lending its data region to another version. */
static bool ls_held(const struct ls_resident *e)
{
	return e->pins || e->sharers;
}

/*
 * A resident entry of t holding its own copy of the content digest, to
 * share; NULL when there is none.  A walk of the tier's entries: it runs
 * for a version not resident yet, before a load that costs far more.
 */
static struct ls_resident *ls_content_find(struct ls_tier *t, const uint8_t *digest)
{
	for (uint32_t b = 0; b < t->n_buckets; b++)
		for (struct ls_resident *e = t->buckets[b]; e; e = e->hnext)
			if (!e->data_of && !e->deleted && e->state == LS_RES_RESIDENT &&
			    memcmp(e->digest, digest, LS_DIGEST_LEN) == 0)
				return e;
	return NULL;
}

struct ls_resident *ls_res_find(struct ls_tier *t, uint64_t generation)
{
	for (struct ls_resident *e = t->buckets[generation % t->n_buckets]; e; e = e->hnext)
		if (e->generation == generation)
			return e;
	return NULL;
}

static void ls_hash_remove(struct ls_tier *t, struct ls_resident *e)
{
	struct ls_resident **p = &t->buckets[e->generation % t->n_buckets];
	while (*p && *p != e)
		p = &(*p)->hnext;
	if (*p)
		*p = e->hnext;
}

static bool ls_on_lru(struct ls_tier *t, struct ls_resident *e)
{
	return e->lru_prev || e->lru_next || t->lru_head == e;
}

static void ls_lru_remove(struct ls_tier *t, struct ls_resident *e)
{
	if (!ls_on_lru(t, e))
		return;
	if (e->lru_prev)
		e->lru_prev->lru_next = e->lru_next;
	else
		t->lru_head = e->lru_next;
	if (e->lru_next)
		e->lru_next->lru_prev = e->lru_prev;
	else
		t->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

/* Append as most recently used. */
static void ls_lru_push(struct ls_tier *t, struct ls_resident *e)
{
	e->lru_prev = t->lru_tail;
	e->lru_next = NULL;
	if (t->lru_tail)
		t->lru_tail->lru_next = e;
	else
		t->lru_head = e;
	t->lru_tail = e;
}

/* Take a device entry off its staging host entry's followers, if it is on them. */
static void ls_unfollow(struct ls_resident *e)
{
	for (struct ls_resident **p = &e->staging->followers; *p; p = &(*p)->follow_next)
		if (*p == e) {
			*p = e->follow_next;
			e->follow_next = NULL;
			return;
		}
}

static void ls_res_retire(struct ls_resident *e, enum ls_retire_why why);
static void ls_retire_deleted(struct ls_resident *e);

/*
 * Give back an entry's memory and forget it.  Two callers only: the retire
 * point of a resident version (ls_res_retire) and the end of a load that
 * never made its version resident (ls_load_abandon).
 */
static void ls_entry_free(struct ls_resident *e)
{
	struct ls_tier *t = e->tier;
	ls_lru_remove(t, e);
	ls_hash_remove(t, e);
	/*
	 * Off the deferred list too: a deleted version waiting there can be
	 * retired by another path (leased again by a request that read the
	 * catalog before the delete, then released).
	 */
	if (e->deferred) {
		struct ls_resident **p = &t->owner->deferred;
		while (*p && *p != e)
			p = &(*p)->deferred_next;
		if (*p)
			*p = e->deferred_next;
		e->deferred = false;
	}
	if (e->length) {
		/* Its own extent: data and table, or (sharing another's data) the table. */
		struct ls_slab_slot *slot = &t->slabs[e->slab];
		ls_extents_free(&slot->ext, e->offset, e->length);
		slot->adapters--;
	}
	if (t->kind == LS_TIER_DEVICE)
		ls_extents_free(&t->table_slabs[e->table_slab].ext, e->table_offset,
				ls_align_up(e->table_length, LS_BLOB_PAGE));
	t->used -= e->length;
	t->count--;
	if (e->staging_wait.res)
		ls_res_cancel(&e->staging_wait);
	if (e->staging) {
		ls_unfollow(e);
		ls_res_unpin(e->staging);
	}
	if (e->fd >= 0)
		close(e->fd);
	if (e->xxh)
		XXH3_freeState(e->xxh);
	struct ls_resident *owner = e->data_of;
	free(e);
	if (owner && --owner->sharers == 0 && owner->pins == 0 &&
	    owner->state == LS_RES_RESIDENT) {
		if (owner->deleted)
			ls_retire_deleted(owner);
		else
			ls_lru_push(t, owner);
	}
}

/*
 * The one point where a resident version stops existing on a tier: evicted
 * (for room, or by an admin) or deleted from the catalog once nothing holds
 * it.  Whoever retires an entry has checked that no lease, staging device
 * load or sharing version holds it; clients that still map its slab keep
 * their mappings, but no new lease can find it.
 */
static void ls_res_retire(struct ls_resident *e, enum ls_retire_why why)
{
	struct ls_tier *t = e->tier;
	if (why == LS_RETIRE_EVICTED) {
		t->stats.evictions++;
		ls_debug("evicting %s@%u (%llu bytes) from %s tier %u", ls_res_name(e),
			 ls_res_version(e), (unsigned long long)e->length, ls_tier_kind_name(t),
			 t->index);
	} else {
		ls_debug("freeing deleted %s@%u from %s tier %u", ls_res_name(e),
			 ls_res_version(e), ls_tier_kind_name(t), t->index);
	}
	ls_entry_free(e);
}

/* A load that never made its version resident ends (failed, or refused at once). */
static void ls_load_abandon(struct ls_resident *e)
{
	ls_entry_free(e);
}

/* ---- The warm path: a published version leaves only once no lease page holds it */

/*
 * Whether a lease page holds e.  One ever published is taken out of the
 * directory and the pages are scanned (directory.h says why in that order); one
 * never published cannot be in a page.
 */
static bool ls_warm_held(struct ls_resident *e)
{
	struct ls_residency *r = e->tier->owner;
	if (!e->published || !r->warm.held)
		return false;
	if (r->warm.held(r->warm.ctx, e))
		return true;
	e->published = false;
	return false;
}

void ls_res_publish(struct ls_resident *e)
{
	struct ls_residency *r = e->tier->owner;
	if (r->warm.publish && ls_res_usable(e) && r->warm.publish(r->warm.ctx, e))
		e->published = true;
}

/* A deleted version a lease page holds: looked at again by ls_res_rescan. */
static void ls_defer(struct ls_resident *e)
{
	if (!e->deferred) {
		struct ls_residency *r = e->tier->owner;
		e->deferred = true;
		e->deferred_next = r->deferred;
		r->deferred = e;
		ls_debug("deleted %s@%u waits for the warm leases on it to end", ls_res_name(e),
			 ls_res_version(e));
	}
}

/* A deleted version nothing else holds: freed now, or once no page holds it. */
static void ls_retire_deleted(struct ls_resident *e)
{
	if (ls_warm_held(e))
		ls_defer(e);
	else
		ls_res_retire(e, LS_RETIRE_DELETED);
}

void ls_res_rescan(struct ls_residency *r)
{
	struct ls_resident **p = &r->deferred;
	while (*p) {
		struct ls_resident *e = *p;
		if (ls_warm_held(e)) {
			p = &e->deferred_next;
			continue;
		}
		*p = e->deferred_next;
		e->deferred = false;
		ls_res_retire(e, LS_RETIRE_DELETED);
	}
}

uint32_t ls_res_deferred_count(const struct ls_residency *r)
{
	uint32_t n = 0;
	for (const struct ls_resident *e = r->deferred; e; e = e->deferred_next)
		n++;
	return n;
}

void ls_res_used(struct ls_residency *r, uint32_t tier, uint64_t generation)
{
	if (tier >= r->n_tiers)
		return;
	struct ls_tier *t = &r->tiers[tier];
	struct ls_resident *e = ls_res_find(t, generation);
	if (e && ls_on_lru(t, e)) {
		ls_lru_remove(t, e);
		ls_lru_push(t, e);
	}
}

void ls_residency_set_warm(struct ls_residency *r, const struct ls_res_warm *warm)
{
	r->warm = *warm;
}

/*
 * Evict the least recently used entry of a tier that nothing holds; false
 * when there is none.  One a lease page holds goes to the back of the LRU,
 * published again: each is looked at once at most.
 */
static bool ls_evict_one(struct ls_tier *t)
{
	for (uint32_t n = t->count; n > 0 && t->lru_head; n--) {
		struct ls_resident *e = t->lru_head;
		if (ls_warm_held(e)) {
			ls_lru_remove(t, e);
			ls_lru_push(t, e);
			ls_res_publish(e);
			continue;
		}
		ls_res_retire(e, LS_RETIRE_EVICTED);
		return true;
	}
	return false;
}

/* A new slab for a tier's slot array (data or tables); 0 or an error. */
static int ls_slab_add(struct ls_tier *t, struct ls_backend *b, struct ls_slab_slot **slots,
		       uint32_t *n, uint64_t size, struct ls_err *err)
{
	struct ls_residency *r = t->owner;
	struct ls_slab_slot *grown = realloc(*slots, (*n + 1) * sizeof(**slots));
	if (!grown)
		return ls_err_set(err, -ENOMEM, "out of memory");
	*slots = grown;
	struct ls_slab_slot *slot = &grown[*n];
	memset(slot, 0, sizeof(*slot));
	struct ls_err berr;
	int rc = ls_backend_slab_alloc(b, size, &slot->slab, &berr);
	if (rc)
		return ls_err_set(err, rc, "allocating a %s slab of %llu bytes: %s",
				  ls_backend_name(b), (unsigned long long)size, berr.msg);
	rc = ls_extents_init(&slot->ext, slot->slab.size);
	if (rc) {
		ls_backend_slab_free(b, &slot->slab);
		return ls_err_set(err, rc, "out of memory");
	}
	slot->slab.id = ++r->next_slab_id;
	if (b == r->host_backend)
		ls_host_slab_register(r, &slot->slab);
	(*n)++;
	char slab_size[32];
	ls_format_size(slot->slab.size, slab_size, sizeof(slab_size));
	ls_info("slab %u: %s (%s, %s tier %u)", slot->slab.id, slab_size, ls_backend_name(b),
		ls_tier_kind_name(t), t->index);
	return 0;
}

/*
 * The size of a new data slab for len bytes in tier t, or 0 when the slabs
 * may not grow: regular, or what the budget has left when that is less (the
 * last slab), never less than len, all to the backend's granularity.
 */
static uint64_t ls_new_slab_size(const struct ls_tier *t, uint64_t len)
{
	uint64_t gran = ls_backend_granularity(t->backend);
	uint64_t need = ls_align_up(len, gran);
	uint64_t left = ls_align_up(t->budget - t->used, gran);
	uint64_t size = left < t->slab_size ? left : t->slab_size;
	if (size < need)
		size = need;
	return t->slab_bytes + size <= t->slab_limit ? size : 0;
}

/* The slab whose best fit for len leaves the fewest bytes over, or UINT32_MAX. */
static uint32_t ls_best_slab(const struct ls_tier *t, uint64_t len)
{
	uint32_t best = UINT32_MAX;
	uint64_t best_slack = UINT64_MAX;
	for (uint32_t i = 0; i < t->n_slabs && best_slack; i++) {
		uint64_t k = ls_extents_best_slack(&t->slabs[i].ext, len, LS_BLOB_PAGE);
		if (k < best_slack) {
			best = i;
			best_slack = k;
		}
	}
	return best;
}

/*
 * Find room for len bytes of data in tier t: the best fit across its slabs,
 * else a new slab, else evict the least recently used and try again.
 */
static int ls_place(struct ls_tier *t, uint64_t len, uint32_t *slab, uint64_t *offset,
		    struct ls_err *err)
{
	if (len > t->budget)
		return ls_err_set(err, LS_E_NO_SPACE,
				  "adapter needs %llu bytes but the %s budget is %llu",
				  (unsigned long long)len, ls_tier_kind_name(t),
				  (unsigned long long)t->budget);
	/* Deleted versions that warm leases held may be free to go by now. */
	if (t->used + len > t->budget && t->owner->deferred)
		ls_res_rescan(t->owner);
	while (t->used + len > t->budget)
		if (!ls_evict_one(t))
			return ls_err_set(err, LS_E_NO_SPACE,
					  "the %s budget of %llu bytes is held by pinned adapters",
					  ls_tier_kind_name(t), (unsigned long long)t->budget);
	for (;;) {
		uint32_t i = ls_best_slab(t, len);
		if (i != UINT32_MAX && ls_extents_alloc(&t->slabs[i].ext, len, LS_BLOB_PAGE,
							offset) == 0) {
			*slab = i;
			return 0;
		}
		uint64_t size = ls_new_slab_size(t, len);
		if (size) {
			struct ls_err aerr;
			int rc = ls_slab_add(t, t->backend, &t->slabs, &t->n_slabs, size, &aerr);
			if (rc == 0) {
				t->slab_bytes += t->slabs[t->n_slabs - 1].slab.size;
				continue;
			}
			/*
			 * The memory itself ran out before the budget (another
			 * process took it, or a budget above what the device
			 * has): make room in the slabs there are.
			 */
			if (!t->lru_head) {
				*err = aerr;
				return rc;
			}
			ls_warn("%s; evicting to make room instead", aerr.msg);
		}
		/* Fragmented, or out of memory: evict and try again. */
		if (!ls_evict_one(t))
			return ls_err_set(err, LS_E_NO_SPACE,
					  "no %s slab has %llu contiguous bytes free and nothing "
					  "is evictable",
					  ls_tier_kind_name(t), (unsigned long long)len);
	}
}

/* Room for a device tier's table of len bytes in its host table slabs. */
static int ls_place_table(struct ls_tier *t, uint64_t len, uint32_t *slab, uint64_t *offset,
			  struct ls_err *err)
{
	len = ls_align_up(len, LS_BLOB_PAGE);
	for (uint32_t i = 0; i < t->n_table_slabs; i++)
		if (ls_extents_alloc(&t->table_slabs[i].ext, len, LS_BLOB_PAGE, offset) == 0) {
			*slab = i;
			return 0;
		}
	uint64_t size = len > LS_TABLE_SLAB ? len : LS_TABLE_SLAB;
	int rc = ls_slab_add(t, t->owner->host_backend, &t->table_slabs, &t->n_table_slabs, size,
			     err);
	if (rc)
		return rc;
	t->table_bytes += t->table_slabs[t->n_table_slabs - 1].slab.size;
	*slab = t->n_table_slabs - 1;
	return ls_extents_alloc(&t->table_slabs[*slab].ext, len, LS_BLOB_PAGE, offset) == 0
		       ? 0
		       : ls_err_set(err, -ENOMEM, "a new table slab has no room");
}

static void ls_wake(struct ls_resident *e, int rc, const char *msg)
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
}

static void ls_load_fail(struct ls_resident *e, int rc, const char *msg)
{
	ls_error("load of %s@%u into the %s tier failed: %s", ls_res_name(e), ls_res_version(e),
		 ls_tier_kind_name(e->tier), msg);
	e->tier->stats.load_errors++;
	/* Waiters learn of the failure (with no entry) before the entry goes. */
	ls_wake(e, rc, msg);
	ls_load_abandon(e);
}

/* The entry is loaded: resident, on the LRU unless pinned, waiters told. */
static void ls_load_finish(struct ls_resident *e)
{
	struct ls_tier *t = e->tier;
	e->state = LS_RES_RESIDENT;
	t->stats.loads++;
	int64_t ns = ls_mono_ns() - e->load_t0_ns;
	ls_hist_observe(&t->stats.load_seconds, ls_hist_load_bounds, (double)ns * 1e-9);
	ls_debug("loaded %s@%u (%llu bytes) into %s slab %u at %llu", ls_res_name(e),
		 ls_res_version(e), (unsigned long long)e->length, ls_tier_kind_name(t),
		 t->slabs[e->slab].slab.id, (unsigned long long)e->offset);
	if (!ls_held(e))
		ls_lru_push(t, e);
	ls_wake(e, 0, "ok");
	if (!ls_held(e) && e->deleted)
		ls_retire_deleted(e);
}

/* ---- host loads: read the blob into the slab, hash it on the workers */

/* Bytes asked of one read: large enough for the device, small enough to overlap hashing. */
#define LS_READ_CHUNK (8u << 20)

static void ls_load_step(struct ls_resident *e);
static void ls_stream_step(struct ls_resident *e);

/* The host mapping of bytes of the entry's data region. */
static uint8_t *ls_data_ptr(struct ls_resident *e, uint64_t from, uint64_t len)
{
	return ls_backend_host_ptr(e->tier->backend, &ls_res_slab(e)->slab, e->offset + from, len);
}

static void ls_hash_run(struct ls_job *job)
{
	struct ls_resident *e = (struct ls_resident *)((char *)job - offsetof(struct ls_resident, hash_job));
	XXH3_64bits_update(e->xxh, ls_data_ptr(e, e->hashed, e->hash_len), e->hash_len);
}

static void ls_hash_done(struct ls_job *job)
{
	struct ls_resident *e = (struct ls_resident *)((char *)job - offsetof(struct ls_resident, hash_job));
	e->hashing = false;
	e->hashed += e->hash_len;
	ls_load_step(e);
}

static void ls_read_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_resident *e = (struct ls_resident *)((char *)op - offsetof(struct ls_resident, read_op));
	(void)loop;
	e->reading = false;
	if (res <= 0 && !e->fail_rc) {
		e->fail_rc = res ? res : LS_E_BLOB_TRUNCATED;
		snprintf(e->fail_msg, sizeof(e->fail_msg), "%s@%u: reading the blob: %s",
			 ls_res_name(e), ls_res_version(e),
			 res ? strerror(-res) : "unexpected end of file (blob truncated)");
	} else if (res > 0) {
		e->done += (uint64_t)res;
		/* Device loads following this one copy the chunk while the next is read. */
		for (struct ls_resident *f = e->followers; f; f = f->follow_next)
			ls_stream_step(f);
	}
	ls_load_step(e);
}

/*
 * Advance a load: keep one read and one hash job going until the whole
 * region is read and hashed, then compare the checksum.  Failures wait for
 * whatever is in flight before the entry goes.
 */
static void ls_load_step(struct ls_resident *e)
{
	struct ls_residency *r = e->tier->owner;
	uint64_t len = e->hdr.data_length;
	if (e->opening)
		return;
	if (e->fail_rc) {
		if (!e->reading && !e->hashing)
			ls_load_fail(e, e->fail_rc, e->fail_msg);
		return;
	}
	if (!e->reading && e->done < len) {
		uint64_t left = len - e->done;
		unsigned chunk = left > LS_READ_CHUNK ? LS_READ_CHUNK : (unsigned)left;
		ls_loop_read(r->loop, &e->read_op, ls_read_done, e->fd, ls_data_ptr(e, e->done, chunk),
			     chunk, e->hdr.data_offset + e->done);
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
	uint64_t digest = XXH3_64bits_digest(e->xxh);
	XXH3_freeState(e->xxh);
	e->xxh = NULL;
	if (digest != e->hdr.data_xxh3) {
		char msg[256];
		snprintf(msg, sizeof(msg), "%s@%u: blob data checksum mismatch (corrupt blob)",
			 ls_res_name(e), ls_res_version(e));
		ls_load_fail(e, LS_E_CORRUPT, msg);
		return;
	}
	ls_load_finish(e);
}

/*
 * Opening a blob for a load runs on a worker, so that the loop never waits on
 * the disk: open, header, digest against the catalog's, manifest checksum,
 * the data region's size, and the O_DIRECT descriptor the reads use.  The
 * worker writes only e->fd, e->hdr, e->direct_refused and the failure.
 */
static void ls_open_run(struct ls_job *job)
{
	struct ls_resident *e = (struct ls_resident *)((char *)job - offsetof(struct ls_resident, hash_job));
	struct ls_residency *r = e->tier->owner;
	const struct ls_table_hdr *t = ls_res_table(e);
	struct ls_err err;
	int fd = -1;
	bool direct_refused = false;
	int rc = ls_store_blob_open(r->store, t->digest, e->want_direct, &fd, &e->hdr,
				    &direct_refused, &err);
	if (rc == 0 && e->hdr.data_length != e->region_bytes)
		rc = ls_err_set(&err, LS_E_CORRUPT, "its blob's data region is %llu bytes, expected %llu",
				(unsigned long long)e->hdr.data_length,
				(unsigned long long)e->region_bytes);
	/*
	 * A delete removes a blob after its catalog commit: a version the
	 * catalog no longer has was deleted while it loaded, which is no fault
	 * of the store.
	 */
	if (rc == LS_E_BLOB_MISSING && ls_store_version_gone(r->store, ls_res_name(e), t->version))
		rc = ls_err_set(&err, LS_E_DELETED, "deleted while it was being loaded");
	if (rc) {
		if (fd >= 0)
			close(fd);
		e->fail_rc = rc;
		snprintf(e->fail_msg, sizeof(e->fail_msg), "%s@%u: %s", ls_res_name(e), t->version,
			 err.msg);
		return;
	}
	e->direct_refused = direct_refused;
	e->fd = fd;
}

static void ls_open_done(struct ls_job *job)
{
	struct ls_resident *e = (struct ls_resident *)((char *)job - offsetof(struct ls_resident, hash_job));
	struct ls_residency *r = e->tier->owner;
	e->opening = false;
	if (e->direct_refused && r->direct_io) {
		r->direct_io = false;
		ls_info("O_DIRECT is not supported where the blobs are; using buffered reads");
	}
	if (!e->fail_rc && !(e->xxh = XXH3_createState())) {
		e->fail_rc = -ENOMEM;
		snprintf(e->fail_msg, sizeof(e->fail_msg), "out of memory");
	}
	if (e->fail_rc) {
		ls_load_step(e);
		return;
	}
	XXH3_64bits_reset(e->xxh);
	e->done = e->hashed = 0;
	ls_load_step(e);
}

/* Start a host load: the blob is opened and checked on a worker, then read. */
static void ls_load_start(struct ls_resident *e)
{
	struct ls_residency *r = e->tier->owner;
	e->fd = -1;
	e->opening = true;
	e->want_direct = r->direct_io;
	e->direct_refused = false;
	e->hash_job.run = ls_open_run;
	e->hash_job.done = ls_open_done;
	ls_workers_submit(r->workers, &e->hash_job);
}

/* ---- device loads: stage on the host tier, copy each chunk as it is read */

static void ls_upload_done(struct ls_upload *up, int rc);

/*
 * Advance a device load: copy what the staging host entry has read beyond
 * what is copied (one copy in flight at a time), and finish once all is
 * copied and the host copy is verified.  A failure waits for the copy in
 * flight before the entry goes.
 */
static void ls_stream_step(struct ls_resident *e)
{
	if (e->uploading)
		return;
	if (e->fail_rc) {
		ls_load_fail(e, e->fail_rc, e->fail_msg);
		return;
	}
	struct ls_resident *h = e->staging;
	uint64_t avail = e->staged ? e->region_bytes : h->done;
	if (e->uploaded < avail) {
		struct ls_err err;
		e->upload_len = avail - e->uploaded;
		e->upload.done = ls_upload_done;
		const void *src = ls_backend_host_ptr(h->tier->backend, &ls_res_slab(h)->slab,
						      ls_res_data_offset(h) + e->uploaded,
						      e->upload_len);
		int rc = ls_backend_upload(e->tier->backend, &ls_res_slab(e)->slab,
					   e->offset + e->uploaded, src, e->upload_len, &e->upload,
					   &err);
		if (rc) {
			ls_load_fail(e, rc, err.msg);
			return;
		}
		e->uploading = true;
		ls_debug("copying bytes %llu-%llu of %s@%u to GPU %s (host copy: %llu of %llu "
			 "bytes read)", (unsigned long long)e->uploaded,
			 (unsigned long long)(e->uploaded + e->upload_len), ls_res_name(e),
			 ls_res_version(e), e->tier->uuid, (unsigned long long)avail,
			 (unsigned long long)e->region_bytes);
		return;
	}
	if (!e->staged)
		return; /* the next chunk, or the checksum, is still to come */
	e->staging = NULL;
	ls_res_unpin(h);
	ls_load_finish(e);
}

static void ls_upload_done(struct ls_upload *up, int rc)
{
	struct ls_resident *e = (struct ls_resident *)((char *)up - offsetof(struct ls_resident, upload));
	e->uploading = false;
	if (rc && !e->fail_rc) {
		e->fail_rc = rc;
		snprintf(e->fail_msg, sizeof(e->fail_msg), "%s@%u: copying to GPU %s failed (%s)",
			 ls_res_name(e), ls_res_version(e), e->tier->uuid, ls_strerror(rc));
	} else if (rc == 0) {
		e->uploaded += e->upload_len;
	}
	ls_stream_step(e);
}

/*
 * Copy host entry h's data region into the device entry e: at once when h
 * is resident, else chunk by chunk as h's load reads it (e follows h).
 */
static void ls_upload_start(struct ls_resident *e, struct ls_resident *h)
{
	ls_res_pin(h);
	e->staging = h;
	e->state = LS_RES_UPLOADING;
	e->uploaded = 0;
	e->staged = h->state == LS_RES_RESIDENT;
	if (!e->staged) {
		e->follow_next = h->followers;
		h->followers = e;
	}
	ls_stream_step(e);
}

/* The host tier finished (or failed) staging a device entry's version. */
static void ls_staging_ready(struct ls_waiter *w, struct ls_resident *h, int rc, const char *msg)
{
	struct ls_resident *e =
		(struct ls_resident *)((char *)w - offsetof(struct ls_resident, staging_wait));
	/* ls_upload_start made e follow h before the request returned to the loop. */
	if (rc) {
		/* The host entry goes right after this: let go of it first. */
		ls_unfollow(e);
		e->staging = NULL;
		if (!e->fail_rc) {
			e->fail_rc = rc;
			snprintf(e->fail_msg, sizeof(e->fail_msg), "%s", msg);
		}
		ls_stream_step(e);
		return;
	}
	(void)h;
	ls_unfollow(e);
	e->staged = true;
	ls_stream_step(e);
}

/* ---- requests */

_Static_assert(LS_TABLE_PAGE == LS_BLOB_PAGE, "resident pages are the blob's pages");

/*
 * A new entry of tier t, placed, its table written, in the tier's index: for
 * rec, or (rec NULL) for the version of from, a resident entry of another
 * tier whose table is copied.
 */
static int ls_entry_new(struct ls_tier *t, const struct ls_res_version *rec,
			const struct ls_resident *from, struct ls_resident *share,
			struct ls_resident **out, struct ls_err *err)
{
	size_t table = rec ? rec->table_length : from->table_length;
	if (table == 0)
		return ls_err_set(err, LS_E_CATALOG, "generation %llu: no tensor table",
				  (unsigned long long)rec->generation);
	struct ls_resident *e = calloc(1, sizeof(*e));
	if (!e)
		return ls_err_set(err, -ENOMEM, "out of memory");
	e->tier = t;
	e->fd = -1;
	e->generation = rec ? rec->generation : from->generation;
	e->load_t0_ns = ls_mono_ns();
	e->region_bytes = rec ? ls_align_up(rec->data_length ? rec->data_length : 1, LS_BLOB_PAGE)
			     : from->region_bytes;
	memcpy(e->digest, rec ? rec->digest : from->digest, LS_DIGEST_LEN);
	e->table_length = table;
	e->state = LS_RES_LOADING;
	int rc;
	if (share) {
		/*
		 * The data region is share's: this version places its table alone,
		 * and share is pinned meanwhile, or making room could evict it.
		 */
		ls_res_pin(share);
		e->data_of = share;
		if (t->kind == LS_TIER_HOST) {
			e->length = ls_align_up(table, LS_BLOB_PAGE);
			rc = ls_place(t, e->length, &e->slab, &e->offset, err);
			e->table_slab = e->slab;
			e->table_offset = e->offset;
		} else {
			e->length = 0;
			rc = ls_place_table(t, table, &e->table_slab, &e->table_offset, err);
		}
	} else if (t->kind == LS_TIER_HOST) {
		/* The table right after the data, in the same extent. */
		e->length = e->region_bytes + ls_align_up(table, LS_BLOB_PAGE);
		rc = ls_place(t, e->length, &e->slab, &e->offset, err);
		e->table_slab = e->slab;
		e->table_offset = e->offset + e->region_bytes;
	} else {
		e->length = e->region_bytes;
		rc = ls_place_table(t, table, &e->table_slab, &e->table_offset, err);
		if (rc == 0) {
			rc = ls_place(t, e->length, &e->slab, &e->offset, err);
			if (rc)
				ls_extents_free(&t->table_slabs[e->table_slab].ext, e->table_offset,
						ls_align_up(table, LS_BLOB_PAGE));
		}
	}
	if (rc) {
		free(e);
		if (share)
			ls_res_unpin(share);
		return rc;
	}
	/* The table first: messages about the load name the adapter from it. */
	struct ls_slab_slot *ts = ls_res_table_slab(e);
	void *dst = ls_backend_host_ptr(t->owner->host_backend, &ts->slab, e->table_offset,
					e->table_length);
	if (!dst)
		rc = -EINVAL;
	else
		memcpy(dst, rec ? rec->table : (const void *)ls_res_table(from), e->table_length);
	if (rc) {
		uint64_t gen = e->generation;
		if (e->length)
			ls_extents_free(&t->slabs[e->slab].ext, e->offset, e->length);
		if (t->kind == LS_TIER_DEVICE)
			ls_extents_free(&ts->ext, e->table_offset, ls_align_up(table, LS_BLOB_PAGE));
		free(e);
		if (share)
			ls_res_unpin(share);
		return ls_err_set(err, rc, "generation %llu: writing its tensor table: %s",
				  (unsigned long long)gen, strerror(-rc));
	}
	if (e->length)
		t->slabs[e->slab].adapters++;
	t->used += e->length;
	t->count++;
	if (share) {
		/* Held while another version reads its data; the placement's pin ends. */
		share->sharers++;
		ls_res_unpin(share);
	}
	e->hnext = t->buckets[e->generation % t->n_buckets];
	t->buckets[e->generation % t->n_buckets] = e;
	*out = e;
	return 0;
}

/*
 * ls_res_request and ls_res_request_staged: make generation gen resident in
 * tier t, from its record rec, or (rec NULL) by uploading the host entry h.
 */
static int ls_request(struct ls_tier *t, uint64_t gen, const struct ls_res_version *rec,
		      struct ls_resident *h, struct ls_waiter *w, struct ls_resident **out,
		      struct ls_err *err)
{
	*out = NULL;
	struct ls_resident *e = ls_res_find(t, gen);
	if (e && e->state == LS_RES_RESIDENT) {
		ls_res_touch(e);
		*out = e;
		return 0;
	}
	if (!e) {
		t->stats.misses++;
		/* The same content resident already: one copy serves both versions. */
		struct ls_resident *same = ls_content_find(t, rec ? rec->digest : h->digest);
		int rc = ls_entry_new(t, rec, h, same, &e, err);
		if (rc)
			return rc;
		if (same) {
			e->state = LS_RES_RESIDENT;
			ls_lru_push(t, e);
			*out = e;
			return 0;
		}
		if (h) {
			/* The host copy counts as used: it is the source of this upload. */
			ls_res_touch(h);
			ls_upload_start(e, h);
		} else if (t->kind == LS_TIER_HOST) {
			ls_load_start(e);
		} else {
			/*
			 * Staged on the host tier, which reads the disk only if
			 * it must; while it reads, the chunks are copied as
			 * they arrive.
			 */
			e->staging_wait.fn = ls_staging_ready;
			rc = ls_res_request(ls_res_host(t->owner), rec, &e->staging_wait, &h, err);
			if (rc > 0)
				h = e->staging_wait.res;
			if (rc >= 0)
				ls_upload_start(e, h);
			rc = rc > 0 ? 0 : rc;
		}
		if (rc) {
			t->stats.load_errors++;
			ls_error("%s", err ? err->msg : "load failed");
			ls_load_abandon(e);
			return rc;
		}
		/* An upload can fail at once: the entry is gone then. */
		if (!(e = ls_res_find(t, gen)))
			return ls_err_set(err, LS_E_DEVICE, "generation %llu: the upload to GPU %s "
					  "failed", (unsigned long long)gen, t->uuid);
		if (e->state == LS_RES_RESIDENT) {
			*out = e;
			return 0;
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

int ls_res_request(struct ls_tier *t, const struct ls_res_version *rec, struct ls_waiter *w,
		   struct ls_resident **out, struct ls_err *err)
{
	return ls_request(t, rec->generation, rec, NULL, w, out, err);
}

int ls_res_request_staged(struct ls_tier *t, struct ls_resident *h, struct ls_waiter *w,
			  struct ls_resident **out, struct ls_err *err)
{
	return ls_request(t, h->generation, NULL, h, w, out, err);
}

void ls_res_touch(struct ls_resident *e)
{
	struct ls_tier *t = e->tier;
	t->stats.hits++;
	ls_lru_remove(t, e);
	if (!ls_held(e))
		ls_lru_push(t, e); /* most recently used */
}

void ls_res_cancel(struct ls_waiter *w)
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
}

void ls_res_pin(struct ls_resident *e)
{
	if (e->pins++ == 0)
		ls_lru_remove(e->tier, e);
}

void ls_res_unpin(struct ls_resident *e)
{
	if (--e->pins > 0 || e->sharers || e->state != LS_RES_RESIDENT)
		return;
	if (e->deleted) {
		ls_info("freeing deleted %s@%u now that its last lease ended", ls_res_name(e),
			ls_res_version(e));
		ls_retire_deleted(e);
		return;
	}
	ls_lru_push(e->tier, e);
}

int ls_res_evict(struct ls_residency *r, uint64_t generation)
{
	struct ls_resident *found[LS_RES_MAX_TIERS];
	uint32_t n = 0;
	/* Device tiers first: a device entry may be staging from the host one. */
	for (uint32_t i = r->n_tiers; i-- > 0;) {
		struct ls_resident *e = ls_res_find(&r->tiers[i], generation);
		if (!e)
			continue;
		if (ls_held(e) || e->state != LS_RES_RESIDENT)
			return -EBUSY;
		found[n++] = e;
	}
	if (n == 0)
		return LS_E_NOT_FOUND;
	bool warm = false;
	for (uint32_t i = 0; i < n; i++)
		warm |= ls_warm_held(found[i]);
	if (warm) {
		/* Leased through a page: nothing is evicted, and all stay published. */
		for (uint32_t i = 0; i < n; i++)
			ls_res_publish(found[i]);
		return -EBUSY;
	}
	for (uint32_t i = 0; i < n; i++)
		ls_res_retire(found[i], LS_RETIRE_EVICTED);
	return 0;
}

int ls_res_evict_tier(struct ls_tier *t, uint64_t generation)
{
	struct ls_resident *e = ls_res_find(t, generation);
	if (!e)
		return LS_E_NOT_FOUND;
	if (ls_held(e) || e->state != LS_RES_RESIDENT)
		return -EBUSY;
	if (ls_warm_held(e)) {
		ls_res_publish(e);
		return -EBUSY;
	}
	ls_res_retire(e, LS_RETIRE_EVICTED);
	return 0;
}

void ls_res_deleted(struct ls_residency *r, uint64_t generation)
{
	for (uint32_t i = r->n_tiers; i-- > 0;) {
		struct ls_resident *e = ls_res_find(&r->tiers[i], generation);
		if (!e)
			continue;
		e->deleted = true;
		/* Out of the directory at once: no warm lease is taken on it from now on. */
		bool warm = ls_warm_held(e);
		if (ls_held(e) || e->state != LS_RES_RESIDENT || e->waiters)
			continue; /* freed when the last of those ends */
		if (warm)
			ls_defer(e);
		else
			ls_res_retire(e, LS_RETIRE_DELETED);
	}
}

/* ---- What the rest of the daemon may know of an entry and a tier */

bool ls_res_usable(const struct ls_resident *e)
{
	return e->state == LS_RES_RESIDENT && !e->deleted;
}

uint64_t ls_res_generation(const struct ls_resident *e)
{
	return e->generation;
}

const struct ls_tier *ls_res_tier_of(const struct ls_resident *e)
{
	return e->tier;
}

uint64_t ls_res_pinned_bytes(const struct ls_resident *e)
{
	return e->length;
}

void ls_res_share_of(const struct ls_resident *e, struct ls_res_share *out)
{
	const struct ls_slab_slot *slot = ls_res_slab(e), *tslot = ls_res_table_slab(e);
	const struct ls_residency *r = e->tier->owner;
	memset(out, 0, sizeof(*out));
	out->generation = e->generation;
	out->data_slab_id = slot->slab.id;
	out->data_slab_size = slot->slab.size;
	out->data_fd = ls_backend_slab_export(e->tier->backend, &slot->slab);
	out->data_offset = ls_res_data_offset(e);
	out->table_slab_id = tslot->slab.id;
	out->table_slab_size = tslot->slab.size;
	out->table_fd = ls_backend_slab_export(r->host_backend, &tslot->slab);
	out->table_offset = e->table_offset;
	out->table_length = e->table_length;
	out->tier = e->tier;
}

void ls_res_presence(struct ls_residency *r, uint64_t generation, bool *host, bool *device,
		     uint32_t *pins)
{
	*host = *device = false;
	*pins = 0;
	for (uint32_t i = 0; i < r->n_tiers; i++) {
		struct ls_resident *e = ls_res_find(&r->tiers[i], generation);
		if (!e)
			continue;
		if (e->state == LS_RES_RESIDENT)
			*(i == 0 ? host : device) = true;
		*pins += e->pins;
	}
}

static int ls_gen_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

size_t ls_res_generations(struct ls_residency *r, uint64_t **out)
{
	size_t n = 0;
	for (uint32_t i = 0; i < r->n_tiers; i++)
		n += r->tiers[i].count;
	*out = malloc((n ? n : 1) * sizeof(**out));
	if (!*out)
		return 0;
	size_t k = 0;
	for (uint32_t i = 0; i < r->n_tiers; i++) {
		const struct ls_tier *t = &r->tiers[i];
		for (uint32_t b = 0; b < t->n_buckets; b++)
			for (const struct ls_resident *e = t->buckets[b]; e && k < n; e = e->hnext)
				(*out)[k++] = e->generation;
	}
	if (k)
		qsort(*out, k, sizeof(**out), ls_gen_cmp);
	return k;
}

uint32_t ls_res_tier_count(const struct ls_residency *r)
{
	return r->n_tiers;
}

struct ls_tier *ls_res_tier_at(struct ls_residency *r, uint32_t i)
{
	return i < r->n_tiers ? &r->tiers[i] : NULL;
}

uint32_t ls_tier_index(const struct ls_tier *t)
{
	return t->index;
}

enum ls_tier_kind ls_tier_kind(const struct ls_tier *t)
{
	return t->kind;
}

const char *ls_tier_kind_name(const struct ls_tier *t)
{
	return ls_tier_name(t->kind);
}

const char *ls_tier_uuid(const struct ls_tier *t)
{
	return t->uuid;
}

void ls_tier_figures(const struct ls_tier *t, struct ls_tier_figures *out)
{
	out->kind = t->kind;
	out->ordinal = t->ordinal;
	out->uuid = t->uuid;
	out->budget = t->budget;
	out->used = t->used;
	out->slab_bytes = t->slab_bytes;
	out->table_bytes = t->table_bytes;
	out->adapters = t->count;
	out->loads = t->stats.loads;
	out->hits = t->stats.hits;
	out->misses = t->stats.misses;
	out->evictions = t->stats.evictions;
	out->load_errors = t->stats.load_errors;
	out->load_seconds = &t->stats.load_seconds;
}
