/*
 * liblorastore: acquired adapters and the slabs they live in.
 *
 * Each slab is mapped once per connection, read-only, when the daemon first
 * sends its descriptor; later leases in the same slab only add an offset.
 * Mappings stay until lorastore_close, since a slab outlives the adapters
 * placed in it.  A device tier's data slab is imported through the CUDA
 * driver (device.c); its tensor table is in a host slab mapped as any other.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client_internal.h"

/* ---- slabs */

static const struct ls_slab_map *ls_slab_find(const lorastore *c, uint32_t id)
{
	for (size_t i = c->n_slabs; i-- > 0;)
		if (c->slabs[i].id == id)
			return &c->slabs[i];
	return NULL;
}

/*
 * The mapping of slab id: mapped now from fd (which is closed here) when the
 * reply brought one, else the one mapped earlier.  uuid names the GPU of a
 * device slab, NULL for a host slab.
 */
static int ls_slab_get(lorastore *c, uint32_t id, uint64_t size, int fd, const char *uuid,
		       const struct ls_slab_map **out)
{
	const struct ls_slab_map *known = ls_slab_find(c, id);
	if (fd < 0) {
		if (!known)
			return ls_conn_error(c, LS_E_PROTOCOL,
					     "lorastored referred to slab %u, never sent on this connection",
					     id);
		*out = known;
		return 0;
	}
	if (known && known->size >= size) {
		/* Sent again: the mapping we have already covers it. */
		close(fd);
		*out = known;
		return 0;
	}
	if (size == 0 || size > SIZE_MAX) {
		close(fd);
		return ls_conn_error(c, LS_E_PROTOCOL, "slab %u of impossible size %llu", id,
				     (unsigned long long)size);
	}
	if (c->n_slabs == c->cap_slabs) {
		size_t cap = c->cap_slabs ? c->cap_slabs * 2 : 4;
		struct ls_slab_map *s = realloc(c->slabs, cap * sizeof(*s));
		if (!s) {
			close(fd);
			return ls_conn_error(c, -ENOMEM, "out of memory for the slab table");
		}
		c->slabs = s;
		c->cap_slabs = cap;
	}
	struct ls_slab_map *m = &c->slabs[c->n_slabs];
	if (uuid) {
		int rc = ls_device_import(c, id, size, fd, uuid, m);
		if (rc)
			return rc;
	} else {
		void *addr = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
		int e = errno;
		close(fd);
		if (addr == MAP_FAILED)
			return ls_conn_error(c, -e, "map slab %u (%llu bytes): %s", id,
					     (unsigned long long)size, strerror(e));
		memset(m, 0, sizeof(*m));
		m->id = id;
		m->addr = addr;
		m->size = (size_t)size;
		m->device = -1;
	}
	c->n_slabs++;
	*out = m;
	return 0;
}

void ls_slabs_unmap(lorastore *c)
{
	for (size_t i = 0; i < c->n_slabs; i++)
		if (c->slabs[i].device >= 0)
			ls_device_unmap(&c->slabs[i]);
		else
			munmap((void *)c->slabs[i].addr, c->slabs[i].size);
	free(c->slabs);
	c->slabs = NULL;
	c->n_slabs = c->cap_slabs = 0;
}

/* ---- leases */

static int ls_release_request(lorastore *c, uint64_t lease_id)
{
	Lorastore__ReleaseRequest rr = LORASTORE__RELEASE_REQUEST__INIT;
	rr.lease_id = lease_id;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_RELEASE;
	req.release = &rr;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(c, &req, NULL, 0, LORASTORE__RESPONSE__BODY_DONE, &resp);
	if (resp)
		lorastore__response__free_unpacked(resp, NULL);
	return rc;
}

/* Give back a lease we cannot use, keeping the message of why. */
static void ls_release_quietly(lorastore *c, uint64_t lease_id)
{
	char why[sizeof(c->errmsg)];
	memcpy(why, c->errmsg, sizeof(why));
	if (ls_conn_check(c) == 0)
		ls_release_request(c, lease_id);
	memcpy(c->errmsg, why, sizeof(why));
}

static void ls_adapter_free(lorastore_adapter *ad)
{
	free(ad);
}

/* Fill ad's info from its table; data is the slab map of its data region. */
static void ls_adapter_info_fill(lorastore_adapter *ad, const struct ls_slab_map *data)
{
	const struct ls_table_hdr *h = ad->table;
	lorastore_adapter_info *info = &ad->info;
	info->name = ls_table_str(h, h->name);
	info->version = h->version;
	memcpy(info->digest, h->digest, 32);
	info->generation = h->generation;
	info->rank = h->rank;
	info->scale = h->scale;
	info->dtype = ls_dtype_is_lora_float(h->dtype) ? (lorastore_dtype)h->dtype : 0;
	info->tensor_count = h->n_tensors;
	info->tensor_bytes = 0; /* summed when asked for: an acquire stays O(1) */
	/* What the lease's tier holds: a device tier's table is in host memory. */
	info->resident_bytes =
		ls_table_footprint_of(h->data_length, data->device >= 0 ? 0 : h->bytes);
	info->tier = data->device >= 0 ? "device" : "host";
	info->device = data->device;
	info->device_uuid = data->device >= 0 ? data->uuid : "";
	info->device_read_only = data->device >= 0 && data->read_only;
}

/* Take the reply's descriptor when it says one came, else -1; < -1 on a protocol break. */
static int ls_reply_fd(lorastore *conn, bool attached, const char *what)
{
	if (!attached)
		return -1;
	int fd = ls_conn_take_fd(conn);
	if (fd < 0)
		/* Descriptors and replies are out of step: nothing after is trustworthy. */
		return ls_conn_fail(conn, LS_E_PROTOCOL, "acquire reply said %s came with it, "
				    "but none did", what);
	return fd;
}

/* Where an acquire found its adapter: a reply's fields, or a directory entry's. */
struct ls_found {
	uint64_t generation;
	const struct ls_slab_map *slab, *tslab;
	uint64_t offset, table_offset, table_length; /* bytes */
};

/* A handle on the adapter at f, its table checked; 0 or an error on conn. */
static int ls_adapter_make(lorastore *conn, const struct ls_found *f, lorastore_adapter **out)
{
	const struct ls_slab_map *slab = f->slab, *tslab = f->tslab;
	const struct ls_table_hdr *table = NULL;
	if (f->offset > slab->size || f->table_offset > tslab->size ||
	    f->table_length > tslab->size - f->table_offset ||
	    !(table = ls_table_open(tslab->addr + f->table_offset, (size_t)f->table_length,
				    f->generation, slab->size - f->offset)))
		return ls_conn_error(conn, LS_E_PROTOCOL,
				     "the tensor table of generation %llu in slab %u is not valid",
				     (unsigned long long)f->generation, slab->id);
	lorastore_adapter *ad = calloc(1, sizeof(*ad));
	if (!ad)
		return ls_conn_error(conn, -ENOMEM, "out of memory");
	ad->conn = conn;
	ad->table = table;
	ad->base = slab->addr + f->offset;
	ls_adapter_info_fill(ad, slab);
	*out = ad;
	return 0;
}

static void ls_adapter_link(lorastore_adapter *ad)
{
	lorastore *conn = ad->conn;
	ad->next = conn->adapters;
	if (conn->adapters)
		conn->adapters->prev = ad;
	conn->adapters = ad;
	conn->pinned_bytes += ad->pinned_bytes;
}

/*
 * The index of a tier in the directory: host, or the device tier of GPU uuid
 * ("": the only device tier, as the daemon reads it); -1 when none.
 */
static int ls_warm_tier(const struct ls_dir_hdr *d, lorastore_tier tier, const char *uuid)
{
	int found = -1, devices = 0;
	for (uint32_t i = 0; i < d->n_tiers; i++) {
		const struct ls_dir_tier *t = &d->tiers[i];
		if (tier == LORASTORE_TIER_HOST && t->kind == LS_TIER_HOST)
			return (int)i;
		if (tier != LORASTORE_TIER_DEVICE || t->kind != LS_TIER_DEVICE)
			continue;
		devices++;
		if (!uuid[0] || strncmp(t->uuid, uuid, sizeof(t->uuid)) == 0)
			found = (int)i;
	}
	return uuid[0] || devices == 1 ? found : -1;
}

/* Take a slot's lease back (clear its held bit; the daemon's LRU reads the rest). */
static void ls_warm_clear(lorastore *conn, uint32_t slot, uint64_t word)
{
	/* Release: every read of the adapter's memory comes before the slot says so. */
	atomic_store_explicit(&conn->page->slots[slot], word & ~(uint64_t)LS_LEASE_HELD,
			      memory_order_release);
}

/*
 * The warm path (proto/directory.h): a lease on ref's resident version in
 * tier, taken in shared memory without a request.  0 with *out; 1 when it
 * cannot be taken that way (not in the directory, a slab not mapped yet,
 * a full page, the pin limit near, the entry changing): the request path
 * answers then.  An error only for a table that does not check.
 */
static int ls_warm_acquire(lorastore *conn, const char *ref, lorastore_tier tier,
			   const char *uuid, lorastore_adapter **out)
{
	const struct ls_dir_hdr *d = conn->dir;
	if (!d || !conn->n_free)
		return 1;
	int t = ls_warm_tier(d, tier, uuid);
	uint64_t gen = t < 0 ? 0 : ls_dir_ref_get(d, ref, -1);
	struct ls_dir_where w;
	const struct ls_dir_res *entry;
	uint64_t seq;
	if (!gen || !ls_dir_res_get(d, gen, (uint32_t)t, &w, &entry, &seq))
		return 1;
	uint64_t limit = atomic_load_explicit(&d->pin_limit, memory_order_relaxed);
	if (limit && conn->pinned_bytes + w.pinned_bytes > limit)
		return 1; /* the request path says why it is refused, or counts exactly */
	struct ls_found f = {.generation = gen,
			     .slab = ls_slab_find(conn, w.data_slab_id),
			     .offset = w.data_offset,
			     .table_offset = w.table_offset,
			     .table_length = w.table_length};
	f.tslab = w.table_slab_id == w.data_slab_id ? f.slab : ls_slab_find(conn, w.table_slab_id);
	if (!f.slab || !f.tslab || (f.slab->device >= 0) != (tier == LORASTORE_TIER_DEVICE) ||
	    f.tslab->device >= 0)
		return 1; /* a slab this connection has not mapped yet: the reply will bring it */
	uint32_t slot = conn->free_slots[conn->n_free - 1];
	uint64_t word = LS_LEASE_WORD(gen, (uint32_t)t) | LS_LEASE_HELD;
	/* The slot, then the sequence again, both seq_cst (directory.h: why it is safe). */
	atomic_store_explicit(&conn->page->slots[slot], word, memory_order_seq_cst);
	if (atomic_load_explicit(&entry->seq, memory_order_seq_cst) != seq) {
		ls_warm_clear(conn, slot, word);
		return 1;
	}
	lorastore_adapter *ad;
	int rc = ls_adapter_make(conn, &f, &ad);
	if (rc) {
		ls_warm_clear(conn, slot, word);
		return rc;
	}
	conn->n_free--;
	ad->warm_slot = slot + 1;
	ad->pinned_bytes = w.pinned_bytes;
	/* The page's count: the daemon's figures and LRU order read it. */
	atomic_store_explicit(&conn->page->acquires, ++conn->warm_acquires, memory_order_relaxed);
	ls_adapter_link(ad);
	*out = ad;
	return 0;
}

LS_PUBLIC int lorastore_acquire(lorastore *conn, const char *ref, int timeout_ms,
				lorastore_adapter **out)
{
	return lorastore_acquire_tier(conn, ref, LORASTORE_TIER_HOST, NULL, timeout_ms, out);
}

LS_PUBLIC int lorastore_acquire_tier(lorastore *conn, const char *ref, lorastore_tier tier,
				     const char *device, int timeout_ms, lorastore_adapter **out)
{
	if (!conn || !out || (tier != LORASTORE_TIER_HOST && tier != LORASTORE_TIER_DEVICE))
		return -EINVAL;
	*out = NULL;
	int rc = ls_ref_check(conn, "acquire", ref);
	if (rc)
		return rc;
	char current[48] = "";
	if (tier == LORASTORE_TIER_DEVICE && !device)
		ls_device_current_uuid(current, sizeof(current));
	const char *uuid = device ? device : current;
	if (conn->fd >= 0 && (rc = ls_warm_acquire(conn, ref, tier, uuid, out)) <= 0)
		return rc;
	Lorastore__AcquireRequest ar = LORASTORE__ACQUIRE_REQUEST__INIT;
	ar.ref = (char *)ref;
	ar.timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
	ar.tier = (Lorastore__Tier)tier;
	if (tier == LORASTORE_TIER_DEVICE)
		ar.device = (char *)uuid;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_ACQUIRE;
	req.acquire = &ar;
	Lorastore__Response *resp = NULL;
	rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_ACQUIRE, &resp);
	if (rc)
		return rc;
	const Lorastore__AcquireReply *a = resp->acquire;
	if (!a) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_fail(conn, LS_E_PROTOCOL, "acquire reply without a body");
	}
	uint64_t lease = a->lease_id;
	bool on_device = a->tier == LORASTORE__TIER__TIER_DEVICE;
	uint32_t tslab_id = a->table_slab_id;
	uint64_t tslab_size = a->table_slab_size;
	if (on_device != (tier == LORASTORE_TIER_DEVICE) || (on_device && tslab_id == a->slab_id)) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_fail(conn, LS_E_PROTOCOL, "acquire reply of the wrong tier");
	}
	int fd = ls_reply_fd(conn, a->fd_attached, "a slab");
	int tfd = fd < -1 ? -1 : ls_reply_fd(conn, a->table_fd_attached, "a table slab");
	if (fd < -1 || tfd < -1) {
		if (fd >= 0)
			close(fd);
		lorastore__response__free_unpacked(resp, NULL);
		return fd < -1 ? fd : tfd;
	}
	lorastore_adapter *ad = NULL;
	struct ls_found f = {.generation = a->generation,
			     .offset = a->offset,
			     .table_offset = a->table_offset,
			     .table_length = a->table_length};
	rc = ls_slab_get(conn, a->slab_id, a->slab_size, fd, on_device ? a->device : NULL, &f.slab);
	fd = -1;
	if (rc == 0 && tslab_id != a->slab_id) {
		rc = ls_slab_get(conn, tslab_id, tslab_size, tfd, NULL, &f.tslab);
		tfd = -1;
		/* The second may have moved the slab table: look the first up again. */
		f.slab = ls_slab_find(conn, a->slab_id);
	} else if (rc == 0) {
		f.tslab = f.slab;
	}
	if (tfd >= 0)
		close(tfd);
	if (rc == 0)
		rc = ls_adapter_make(conn, &f, &ad);
	if (rc) {
		lorastore__response__free_unpacked(resp, NULL);
		ls_release_quietly(conn, lease);
		return rc;
	}
	ad->lease_id = lease;
	ad->pinned_bytes = a->pinned_bytes;
	lorastore__response__free_unpacked(resp, NULL);
	ls_adapter_link(ad);
	*out = ad;
	return 0;
}

static void ls_adapter_unlink(lorastore_adapter *ad)
{
	lorastore *c = ad->conn;
	c->pinned_bytes -= ad->pinned_bytes;
	if (ad->prev)
		ad->prev->next = ad->next;
	else if (c->adapters == ad)
		c->adapters = ad->next;
	if (ad->next)
		ad->next->prev = ad->prev;
	ad->prev = ad->next = NULL;
}

LS_PUBLIC int lorastore_adapter_release(lorastore_adapter *adapter)
{
	if (!adapter)
		return -EINVAL;
	lorastore *c = adapter->conn;
	int rc = 0;
	if (adapter->warm_slot) {
		/* A warm lease ends in the page; the daemon's scans see it gone. */
		uint32_t slot = adapter->warm_slot - 1;
		ls_warm_clear(c, slot,
			      atomic_load_explicit(&c->page->slots[slot], memory_order_relaxed));
		c->free_slots[c->n_free++] = (uint16_t)slot;
	} else {
		rc = ls_conn_check(c);
		if (rc == 0)
			rc = ls_release_request(c, adapter->lease_id);
	}
	ls_adapter_unlink(adapter);
	ls_adapter_free(adapter);
	return rc;
}

void ls_adapters_drop(lorastore *c)
{
	while (c->adapters) {
		lorastore_adapter *ad = c->adapters;
		ls_adapter_unlink(ad);
		ls_adapter_free(ad);
	}
}

LS_PUBLIC int lorastore_adapter_info_get(const lorastore_adapter *adapter,
					 lorastore_adapter_info *out)
{
	if (!adapter || !out)
		return -EINVAL;
	*out = adapter->info;
	const struct ls_table_hdr *h = adapter->table;
	for (uint32_t i = 0; i < h->n_tensors; i++) {
		const struct ls_table_entry *e = ls_table_entry(h, i);
		out->tensor_bytes += e ? e->bytes : 0;
	}
	return 0;
}

_Static_assert((int)LORASTORE_KIND_A == (int)LORASTORE__TENSOR_KIND__TENSOR_KIND_A &&
		       (int)LORASTORE_KIND_B == (int)LORASTORE__TENSOR_KIND__TENSOR_KIND_B &&
		       (int)LORASTORE_KIND_EXTRA == (int)LORASTORE__TENSOR_KIND__TENSOR_KIND_EXTRA &&
		       (int)LORASTORE_KIND_MAGNITUDE == (int)LORASTORE__TENSOR_KIND__TENSOR_KIND_MAGNITUDE,
	       "lorastore_kind and the table's kinds differ");

/* A public tensor from a checked table entry. */
static void ls_tensor_from_entry(const lorastore_adapter *ad, const struct ls_table_entry *e,
				 lorastore_tensor *out)
{
	const struct ls_table_hdr *h = ad->table;
	memset(out, 0, sizeof(*out));
	out->data = ad->base + e->offset;
	out->module = ls_table_str(h, e->module);
	out->kind = (lorastore_kind)e->kind;
	out->dtype_name = ls_dtype_name(e->dtype);
	out->dtype = ls_dtype_is_lora_float(e->dtype) ? (lorastore_dtype)e->dtype : 0;
	out->layer = e->layer;
	out->ndim = e->ndim;
	const uint64_t *dims = ls_table_dims(h, e);
	for (unsigned k = 0; k < e->ndim; k++)
		out->shape[k] = dims[k];
	out->bytes = e->bytes;
	out->offset = e->offset;
	out->rank = e->rank;
	out->scale = e->scale;
	out->device = ad->info.device;
}

LS_PUBLIC int lorastore_adapter_tensor(const lorastore_adapter *adapter, const char *module,
				       lorastore_kind kind, lorastore_tensor *out)
{
	/* No message is recorded: lookups may run in many threads at once. */
	if (!adapter || !module || !out || kind < LORASTORE_KIND_A || kind > LORASTORE_KIND_MAGNITUDE)
		return -EINVAL;
	const struct ls_table_entry *e = ls_table_find(adapter->table, module, (int)kind);
	if (!e)
		return LS_E_NOT_FOUND;
	ls_tensor_from_entry(adapter, e, out);
	return 0;
}

LS_PUBLIC int lorastore_adapter_tensor_at(const lorastore_adapter *adapter, size_t i,
					  lorastore_tensor *out)
{
	if (!adapter || !out || i >= adapter->info.tensor_count)
		return -EINVAL;
	const struct ls_table_entry *e = ls_table_entry(adapter->table, (uint32_t)i);
	if (!e)
		return LS_E_PROTOCOL;
	ls_tensor_from_entry(adapter, e, out);
	return 0;
}
