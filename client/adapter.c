/*
 * liblorastore: acquired adapters and the slabs they live in.
 *
 * Each slab is mapped once per connection, read-only, when the daemon first
 * sends its descriptor; later leases in the same slab only add an offset.
 * Mappings stay until lorastore_close, since a slab outlives the adapters
 * placed in it.
 */
#define _GNU_SOURCE
#include <errno.h>
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
 * reply brought one, else the one mapped earlier.
 */
static int ls_slab_get(lorastore *c, uint32_t id, uint64_t size, int fd,
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
	void *addr = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
	int e = errno;
	close(fd);
	if (addr == MAP_FAILED)
		return ls_conn_error(c, -e, "map slab %u (%llu bytes): %s", id,
				     (unsigned long long)size, strerror(e));
	struct ls_slab_map *m = &c->slabs[c->n_slabs++];
	m->id = id;
	m->addr = addr;
	m->size = (size_t)size;
	*out = m;
	return 0;
}

void ls_slabs_unmap(lorastore *c)
{
	for (size_t i = 0; i < c->n_slabs; i++)
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

static int ls_cmp_scale(const void *a, const void *b)
{
	const Lorastore__ModuleScale *x = *(const Lorastore__ModuleScale *const *)a;
	const Lorastore__ModuleScale *y = *(const Lorastore__ModuleScale *const *)b;
	return strcmp(x->module, y->module);
}

static int ls_cmp_tensor(const void *a, const void *b)
{
	const lorastore_tensor *x = *(const lorastore_tensor *const *)a;
	const lorastore_tensor *y = *(const lorastore_tensor *const *)b;
	int c = strcmp(x->module, y->module);
	if (c)
		return c;
	return (int)x->kind - (int)y->kind;
}

static void ls_adapter_free(lorastore_adapter *ad)
{
	free(ad->tensors);
	free(ad->order);
	free(ad);
}

/* Check every tensor of rec lies inside the `room` bytes after the data region's start. */
static int ls_check_bounds(lorastore *c, const Lorastore__VersionRecord *rec, uint64_t room)
{
	for (size_t j = 0; j < rec->n_tensors; j++) {
		const Lorastore__Tensor *t = rec->tensors[j];
		if (!t || t->offset > room || t->length > room - t->offset)
			return ls_conn_error(c, LS_E_PROTOCOL,
					     "tensor %zu of %s lies outside its slab", j,
					     rec->name ? rec->name : "");
	}
	return 0;
}

/* The cached record of a generation, or NULL. */
static const Lorastore__VersionRecord *ls_record_find(const lorastore *c, uint64_t gen)
{
	for (size_t i = 0; i < c->n_records; i++)
		if (c->records[i].generation == gen)
			return c->records[i].resp->acquire->record;
	return NULL;
}

/* Keep resp (whose acquire reply carries a record) for later acquires of its generation. */
static int ls_record_keep(lorastore *c, uint64_t gen, Lorastore__Response *resp)
{
	if (c->n_records == c->cap_records) {
		size_t cap = c->cap_records ? 2 * c->cap_records : 16;
		struct ls_record_cache *r = realloc(c->records, cap * sizeof(*r));
		if (!r)
			return ls_conn_error(c, -ENOMEM, "out of memory");
		c->records = r;
		c->cap_records = cap;
	}
	c->records[c->n_records].generation = gen;
	c->records[c->n_records].resp = resp;
	c->n_records++;
	return 0;
}

void ls_records_drop(lorastore *c)
{
	for (size_t i = 0; i < c->n_records; i++)
		lorastore__response__free_unpacked(c->records[i].resp, NULL);
	free(c->records);
	c->records = NULL;
	c->n_records = c->cap_records = 0;
}

/* Fill ad's info and tensor table from its record. */
static int ls_adapter_build(lorastore *c, lorastore_adapter *ad, const uint8_t *base,
			    const char *tier)
{
	const Lorastore__VersionRecord *rec = ad->rec;
	size_t n = rec->n_tensors;
	if (rec->digest.len != 32)
		return ls_conn_error(c, LS_E_PROTOCOL, "digest of %zu bytes, not 32", rec->digest.len);
	ad->tensors = calloc(n ? n : 1, sizeof(*ad->tensors));
	lorastore_tensor **order = calloc(n ? n : 1, sizeof(*order));
	const Lorastore__ModuleScale **scales = calloc(rec->n_scales ? rec->n_scales : 1,
						       sizeof(*scales));
	ad->order = order;
	if (!ad->tensors || !order || !scales) {
		free(scales);
		return ls_conn_error(c, -ENOMEM, "out of memory for %zu tensors", n);
	}
	size_t ns = 0;
	for (size_t i = 0; i < rec->n_scales; i++)
		if (rec->scales[i] && rec->scales[i]->module)
			scales[ns++] = rec->scales[i];
	qsort(scales, ns, sizeof(*scales), ls_cmp_scale);
	for (size_t j = 0; j < n; j++) {
		const Lorastore__ModuleScale *s = NULL;
		if (rec->tensors[j]->module) {
			Lorastore__ModuleScale key = LORASTORE__MODULE_SCALE__INIT;
			key.module = rec->tensors[j]->module;
			const Lorastore__ModuleScale *kp = &key;
			const Lorastore__ModuleScale **hit =
				bsearch(&kp, scales, ns, sizeof(*scales), ls_cmp_scale);
			s = hit ? *hit : NULL;
		}
		if (ls_tensor_fill(rec, j, s, base, &ad->tensors[j])) {
			free(scales);
			return ls_conn_error(c, LS_E_PROTOCOL, "tensor %zu of %s is malformed", j,
					     rec->name ? rec->name : "");
		}
		order[j] = &ad->tensors[j];
	}
	free(scales);
	qsort(order, n, sizeof(*order), ls_cmp_tensor);

	lorastore_adapter_info *info = &ad->info;
	info->name = rec->name ? rec->name : "";
	info->version = rec->version;
	memcpy(info->digest, rec->digest.data, 32);
	info->generation = rec->generation;
	info->rank = rec->rank;
	info->scale = rec->scale;
	info->dtype = ls_dtype_from_str(rec->dtype);
	info->tensor_count = n;
	info->bytes = rec->data_length;
	info->tier = tier && strcmp(tier, "device") == 0 ? "device" : "host";
	return 0;
}

LS_PUBLIC int lorastore_acquire(lorastore *conn, const char *ref, int timeout_ms,
				lorastore_adapter **out)
{
	if (!conn || !out)
		return -EINVAL;
	*out = NULL;
	if (!ref || !*ref)
		return ls_conn_error(conn, LS_E_NAME_INVALID, "acquire: no adapter named");
	Lorastore__AcquireRequest ar = LORASTORE__ACQUIRE_REQUEST__INIT;
	ar.ref = (char *)ref;
	ar.timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_ACQUIRE;
	req.acquire = &ar;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_ACQUIRE, &resp);
	if (rc)
		return rc;
	const Lorastore__AcquireReply *a = resp->acquire;
	if (!a) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_fail(conn, LS_E_PROTOCOL, "acquire reply without a body");
	}
	uint64_t lease = a->lease_id;
	int fd = -1;
	if (a->fd_attached) {
		fd = ls_conn_take_fd(conn);
		if (fd < 0) {
			/* Descriptors and replies are out of step: nothing after is trustworthy. */
			lorastore__response__free_unpacked(resp, NULL);
			return ls_conn_fail(conn, LS_E_PROTOCOL,
					    "acquire reply said a slab came with it, but none did");
		}
	}
	lorastore_adapter *ad = NULL;
	const struct ls_slab_map *slab = NULL;
	const Lorastore__VersionRecord *rec = a->record;
	bool cached = false;
	rc = ls_slab_get(conn, a->slab_id, a->slab_size, fd, &slab);
	if (rc)
		goto fail;
	if (!rec) {
		rec = ls_record_find(conn, a->generation);
		if (!rec) {
			rc = ls_conn_error(conn, LS_E_PROTOCOL,
					   "acquire reply without a record for generation %llu",
					   (unsigned long long)a->generation);
			goto fail;
		}
	} else if (a->generation && rec->generation != a->generation) {
		rc = ls_conn_error(conn, LS_E_PROTOCOL, "acquire reply names two generations");
		goto fail;
	}
	if (a->offset > slab->size || rec->data_length > slab->size - a->offset) {
		rc = ls_conn_error(conn, LS_E_PROTOCOL,
				   "adapter at %llu + %llu bytes lies outside slab %u (%zu bytes)",
				   (unsigned long long)a->offset,
				   (unsigned long long)rec->data_length, a->slab_id, slab->size);
		goto fail;
	}
	rc = ls_check_bounds(conn, rec, slab->size - a->offset);
	if (rc)
		goto fail;
	if (a->record) {
		rc = ls_record_keep(conn, rec->generation, resp);
		if (rc)
			goto fail;
		cached = true;
	}
	ad = calloc(1, sizeof(*ad));
	if (!ad) {
		rc = ls_conn_error(conn, -ENOMEM, "out of memory");
		goto fail;
	}
	ad->conn = conn;
	ad->lease_id = lease;
	ad->rec = rec;
	ad->base = slab->addr + a->offset;
	rc = ls_adapter_build(conn, ad, NULL, a->tier);
	if (rc)
		goto fail;
	if (!cached)
		lorastore__response__free_unpacked(resp, NULL);
	ad->next = conn->adapters;
	if (conn->adapters)
		conn->adapters->prev = ad;
	conn->adapters = ad;
	*out = ad;
	return 0;

fail:
	if (ad)
		ls_adapter_free(ad);
	if (!cached)
		lorastore__response__free_unpacked(resp, NULL);
	ls_release_quietly(conn, lease);
	return rc;
}

static void ls_adapter_unlink(lorastore_adapter *ad)
{
	lorastore *c = ad->conn;
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
	int rc = ls_conn_check(c);
	if (rc == 0)
		rc = ls_release_request(c, adapter->lease_id);
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
	return 0;
}

LS_PUBLIC int lorastore_adapter_tensor(const lorastore_adapter *adapter, const char *module,
				       lorastore_kind kind, lorastore_tensor *out)
{
	/* No message is recorded: lookups may run in many threads at once. */
	if (!adapter || !module || !out || kind < LORASTORE_KIND_A || kind > LORASTORE_KIND_MAGNITUDE)
		return -EINVAL;
	lorastore_tensor key = {.module = module, .kind = kind};
	const lorastore_tensor *kp = &key;
	lorastore_tensor *const *hit = bsearch(&kp, adapter->order, adapter->info.tensor_count,
					       sizeof(*adapter->order), ls_cmp_tensor);
	if (!hit)
		return LS_E_NOT_FOUND;
	*out = **hit;
	out->data = adapter->base + out->offset;
	return 0;
}

LS_PUBLIC int lorastore_adapter_tensor_at(const lorastore_adapter *adapter, size_t i,
					  lorastore_tensor *out)
{
	if (!adapter || !out || i >= adapter->info.tensor_count)
		return -EINVAL;
	*out = adapter->tensors[i];
	out->data = adapter->base + out->offset;
	return 0;
}
