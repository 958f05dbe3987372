/* The tensor table in shared memory: written by lorastored, read by clients. */
#include "table.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ls_types.h"

_Static_assert((int)LORASTORE__DTYPE__DTYPE_F32 == (int)LS_DTYPE_F32 &&
		       (int)LORASTORE__DTYPE__DTYPE_F16 == (int)LS_DTYPE_F16 &&
		       (int)LORASTORE__DTYPE__DTYPE_BF16 == (int)LS_DTYPE_BF16 &&
		       (int)LORASTORE__DTYPE__DTYPE_F64 == (int)LS_DTYPE_F64 &&
		       (int)LORASTORE__DTYPE__DTYPE_F8_E4M3 == (int)LS_DTYPE_F8_E4M3 &&
		       (int)LORASTORE__DTYPE__DTYPE_U64 == (int)LS_DTYPE_U64 &&
		       (int)LS_DTYPE_U64 + 1 == (int)LS_DTYPE_COUNT,
	       "the wire's and the catalog's dtypes are lorastore's");

static size_t ls_align8(size_t n)
{
	return (n + 7u) & ~(size_t)7u;
}

/* Byte offsets of the parts of a table, from its counts. */
struct ls_table_layout {
	size_t entries, dims, order, pool, pool_bytes, bytes;
};

static void ls_layout(size_t n, size_t n_dims, size_t pool_bytes, struct ls_table_layout *l)
{
	l->entries = ls_align8(sizeof(struct ls_table_hdr));
	l->dims = l->entries + ls_align8(n * sizeof(struct ls_table_entry));
	l->order = l->dims + n_dims * sizeof(uint64_t);
	l->pool = ls_align8(l->order + n * sizeof(uint32_t));
	l->pool_bytes = pool_bytes;
	l->bytes = ls_align8(l->pool + pool_bytes);
}

/* A tensor with its index in the record, to sort. */
struct ls_sorted {
	const Lorastore__Tensor *t;
	uint32_t j;
};

static int ls_cmp_sorted(const void *a, const void *b)
{
	const struct ls_sorted *x = a, *y = b;
	int c = strcmp(x->t->module, y->t->module);
	if (c)
		return c;
	return (int)x->t->kind - (int)y->t->kind;
}

static int ls_cmp_scale_ptr(const void *a, const void *b)
{
	const Lorastore__ModuleScale *x = *(const Lorastore__ModuleScale *const *)a;
	const Lorastore__ModuleScale *y = *(const Lorastore__ModuleScale *const *)b;
	return strcmp(x->module, y->module);
}

static bool ls_record_ok(const Lorastore__VersionRecord *rec)
{
	if (!rec->name || rec->digest.len != 32 || rec->n_tensors > UINT32_MAX / 2 ||
	    (unsigned)rec->dtype >= LS_DTYPE_COUNT)
		return false;
	for (size_t j = 0; j < rec->n_tensors; j++) {
		const Lorastore__Tensor *t = rec->tensors[j];
		if (!t || !t->module || t->dtype == LORASTORE__DTYPE__DTYPE_NONE ||
		    (unsigned)t->dtype >= LS_DTYPE_COUNT || t->n_shape > LS_TABLE_MAX_DIMS)
			return false;
	}
	return true;
}

/*
 * An upper bound of the pool's bytes, and the dims: every module name
 * counted once per tensor.  The writer shares module names between
 * tensors, so the pool it fills is smaller; the rest stays zero.
 */
static size_t ls_pool_bound(const Lorastore__VersionRecord *rec, size_t *n_dims)
{
	size_t pool = strlen(rec->name) + 1 + 1;
	*n_dims = 0;
	for (size_t j = 0; j < rec->n_tensors; j++) {
		const Lorastore__Tensor *t = rec->tensors[j];
		pool += strlen(t->module) + 1;
		*n_dims += t->n_shape;
	}
	return pool;
}

size_t ls_table_size(const Lorastore__VersionRecord *rec)
{
	if (!rec || !ls_record_ok(rec))
		return 0;
	size_t n_dims;
	size_t pool = ls_pool_bound(rec, &n_dims);
	if (pool > UINT32_MAX / 2 || n_dims > UINT32_MAX / 2)
		return 0;
	struct ls_table_layout l;
	ls_layout(rec->n_tensors, n_dims, pool, &l);
	return l.bytes;
}

/* A string pool under construction (its size was counted before). */
struct ls_pool {
	char *base;
	size_t len;
};

static uint32_t ls_pool_add(struct ls_pool *p, const char *s)
{
	size_t n = strlen(s) + 1;
	uint32_t off = (uint32_t)p->len;
	memcpy(p->base + p->len, s, n);
	p->len += n;
	return off;
}

int ls_table_write(const Lorastore__VersionRecord *rec, void *dst, size_t size)
{
	size_t need = ls_table_size(rec);
	if (need == 0)
		return -EINVAL;
	if (size < need)
		return -ENOSPC;
	size_t n = rec->n_tensors;
	size_t n_dims;
	size_t pool_cap = ls_pool_bound(rec, &n_dims);
	struct ls_table_layout l;
	ls_layout(n, n_dims, pool_cap, &l);

	/* The sorted views: tensors by (module, kind), scales by module. */
	struct ls_sorted *sorted = malloc((n ? n : 1) * sizeof(*sorted));
	const Lorastore__ModuleScale **scales =
		malloc((rec->n_scales ? rec->n_scales : 1) * sizeof(*scales));
	if (!sorted || !scales) {
		free(sorted);
		free(scales);
		return -ENOMEM;
	}
	for (size_t j = 0; j < n; j++)
		sorted[j] = (struct ls_sorted){.t = rec->tensors[j], .j = (uint32_t)j};
	qsort(sorted, n, sizeof(*sorted), ls_cmp_sorted);
	size_t ns = 0;
	for (size_t i = 0; i < rec->n_scales; i++)
		if (rec->scales[i] && rec->scales[i]->module)
			scales[ns++] = rec->scales[i];
	qsort(scales, ns, sizeof(*scales), ls_cmp_scale_ptr);

	uint8_t *t = dst;
	memset(t, 0, l.bytes);
	struct ls_table_hdr *h = (struct ls_table_hdr *)t;
	struct ls_table_entry *ent = (struct ls_table_entry *)(t + l.entries);
	uint64_t *dims = (uint64_t *)(t + l.dims);
	uint32_t *order = (uint32_t *)(t + l.order);
	struct ls_pool pool = {.base = (char *)t + l.pool, .len = 0};
	h->name = ls_pool_add(&pool, rec->name);
	h->dtype = (uint32_t)rec->dtype; /* DTYPE_NONE: mixed */

	/* Modules in sorted order, each written once; entries point at them. */
	const char *last_module = NULL;
	uint32_t last_off = 0;
	for (size_t k = 0; k < n; k++) {
		const Lorastore__Tensor *s = sorted[k].t;
		uint32_t j = sorted[k].j;
		order[k] = j;
		if (!last_module || strcmp(last_module, s->module) != 0) {
			last_module = s->module;
			last_off = ls_pool_add(&pool, s->module);
		}
		ent[j].module = last_off;
	}
	uint32_t dim_at = 0;
	for (size_t j = 0; j < n; j++) {
		const Lorastore__Tensor *s = rec->tensors[j];
		struct ls_table_entry *e = &ent[j];
		e->offset = s->offset;
		e->bytes = s->length;
		e->dtype = (uint32_t)s->dtype;
		e->layer = s->layer;
		e->kind = (uint8_t)s->kind;
		e->ndim = (uint8_t)s->n_shape;
		e->dim0 = dim_at;
		for (size_t d = 0; d < s->n_shape; d++)
			dims[dim_at++] = s->shape[d];
		if (s->kind == LORASTORE__TENSOR_KIND__TENSOR_KIND_A ||
		    s->kind == LORASTORE__TENSOR_KIND__TENSOR_KIND_B) {
			Lorastore__ModuleScale key = LORASTORE__MODULE_SCALE__INIT;
			key.module = s->module;
			const Lorastore__ModuleScale *kp = &key;
			const Lorastore__ModuleScale **hit =
				bsearch(&kp, scales, ns, sizeof(*scales), ls_cmp_scale_ptr);
			if (hit) {
				e->rank = (*hit)->rank;
				e->scale = (*hit)->scale;
			}
		}
	}
	free(sorted);
	free(scales);
	/* The pool ends with a NUL: every offset inside it names a terminated string. */
	pool.base[pool.len++] = '\0';

	h->magic = LS_TABLE_MAGIC;
	h->format = LS_TABLE_FORMAT;
	h->bytes = l.bytes;
	h->generation = rec->generation;
	h->data_length = rec->data_length;
	memcpy(h->digest, rec->digest.data, 32);
	h->version = rec->version;
	h->n_tensors = (uint32_t)n;
	h->rank = rec->rank;
	h->entries = (uint32_t)l.entries;
	h->dims = (uint32_t)l.dims;
	h->n_dims = (uint32_t)n_dims;
	h->order = (uint32_t)l.order;
	h->pool = (uint32_t)l.pool;
	h->pool_bytes = (uint32_t)pool.len;
	h->scale = rec->scale;
	return 0;
}

const struct ls_table_hdr *ls_table_open(const void *t, size_t avail, uint64_t gen,
					 uint64_t room)
{
	const struct ls_table_hdr *h = t;
	if (!t || ((uintptr_t)t & 7u) || avail < sizeof(*h))
		return NULL;
	if (h->magic != LS_TABLE_MAGIC || h->format != LS_TABLE_FORMAT || h->bytes > avail ||
	    h->generation != gen || h->data_length > room)
		return NULL;
	uint64_t n = h->n_tensors;
	uint64_t bytes = h->bytes;
	/* Each part lies inside the table, aligned for its type. */
	if (h->entries % 8 || h->entries > bytes ||
	    n * sizeof(struct ls_table_entry) > bytes - h->entries)
		return NULL;
	if (h->dims % 8 || h->dims > bytes || (uint64_t)h->n_dims * 8u > bytes - h->dims)
		return NULL;
	if (h->order % 4 || h->order > bytes || n * 4u > bytes - h->order)
		return NULL;
	if (h->pool_bytes == 0 || h->pool > bytes || h->pool_bytes > bytes - h->pool)
		return NULL;
	const char *pool = (const char *)t + h->pool;
	if (pool[h->pool_bytes - 1] != '\0' || h->name >= h->pool_bytes || h->dtype >= LS_DTYPE_COUNT)
		return NULL;
	return h;
}

const char *ls_table_str(const struct ls_table_hdr *h, uint32_t off)
{
	if (off >= h->pool_bytes)
		return NULL;
	return (const char *)h + h->pool + off;
}

const struct ls_table_entry *ls_table_entry(const struct ls_table_hdr *h, uint32_t i)
{
	if (i >= h->n_tensors)
		return NULL;
	const struct ls_table_entry *e =
		(const struct ls_table_entry *)((const uint8_t *)h + h->entries) + i;
	if (e->module >= h->pool_bytes || e->dtype == LS_DTYPE_INVALID || e->dtype >= LS_DTYPE_COUNT ||
	    e->ndim > LS_TABLE_MAX_DIMS || e->dim0 > h->n_dims || e->ndim > h->n_dims - e->dim0 ||
	    e->offset > h->data_length || e->bytes > h->data_length - e->offset)
		return NULL;
	return e;
}

const uint64_t *ls_table_dims(const struct ls_table_hdr *h, const struct ls_table_entry *e)
{
	return (const uint64_t *)((const uint8_t *)h + h->dims) + e->dim0;
}

const struct ls_table_entry *ls_table_find(const struct ls_table_hdr *h, const char *module,
					   int kind)
{
	const uint32_t *order = (const uint32_t *)((const uint8_t *)h + h->order);
	size_t lo = 0, hi = h->n_tensors;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct ls_table_entry *e = ls_table_entry(h, order[mid]);
		if (!e)
			return NULL;
		int c = strcmp(module, ls_table_str(h, e->module));
		if (c == 0)
			c = kind - (int)e->kind;
		if (c == 0)
			return e;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

uint64_t ls_table_footprint_of(uint64_t data_length, uint64_t table_length)
{
	uint64_t page = LS_TABLE_PAGE;
	uint64_t data = data_length ? data_length : 1;
	return (data + page - 1) / page * page + (table_length + page - 1) / page * page;
}

uint64_t ls_table_footprint(const Lorastore__VersionRecord *rec)
{
	size_t table = ls_table_size(rec);
	return table ? ls_table_footprint_of(rec->data_length, table) : 0;
}
