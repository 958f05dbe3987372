/*
 * The tensor table lorastored writes into shared memory and clients read in
 * place (proto/table.h): what is written reads back, lookups find every
 * tensor, and a damaged table is refused rather than read out of bounds.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ls_types.h"
#include "table.h"

/* A record of 6 tensors in an order that is not sorted, two modules with patterns. */
struct fixture {
	Lorastore__VersionRecord rec;
	Lorastore__Tensor t[6];
	Lorastore__Tensor *tp[6];
	Lorastore__ModuleScale sc[2];
	Lorastore__ModuleScale *scp[2];
	uint64_t shapes[6][3];
	uint8_t digest[32];
};

static void add_tensor(struct fixture *f, int i, const char *module, int layer,
		       Lorastore__TensorKind kind, const char *dtype, unsigned ndim, uint64_t d0,
		       uint64_t d1, uint64_t d2, uint64_t offset, uint64_t length)
{
	Lorastore__Tensor *t = &f->t[i];
	lorastore__tensor__init(t);
	t->module = (char *)module;
	t->layer = layer;
	t->kind = kind;
	t->dtype = (Lorastore__Dtype)ls_dtype_from_name(dtype);
	f->shapes[i][0] = d0;
	f->shapes[i][1] = d1;
	f->shapes[i][2] = d2;
	t->shape = f->shapes[i];
	t->n_shape = ndim;
	t->offset = offset;
	t->length = length;
	f->tp[i] = t;
}

static void fixture_init(struct fixture *f)
{
	memset(f, 0, sizeof(*f));
	const Lorastore__TensorKind A = LORASTORE__TENSOR_KIND__TENSOR_KIND_A;
	const Lorastore__TensorKind B = LORASTORE__TENSOR_KIND__TENSOR_KIND_B;
	add_tensor(f, 0, "model.layers.1.self_attn.v_proj", 1, B, "F16", 2, 64, 4, 0, 0, 512);
	add_tensor(f, 1, "model.layers.1.self_attn.v_proj", 1, A, "F16", 2, 4, 64, 0, 512, 512);
	add_tensor(f, 2, "model.layers.0.self_attn.q_proj", 0, A, "BF16", 2, 8, 64, 0, 1024, 1024);
	add_tensor(f, 3, "model.layers.0.self_attn.q_proj", 0, B, "BF16", 2, 64, 8, 0, 2048, 1024);
	add_tensor(f, 4, "model.layers.0.self_attn.q_proj", 0,
		   LORASTORE__TENSOR_KIND__TENSOR_KIND_MAGNITUDE, "F32", 1, 64, 0, 0, 3072, 256);
	add_tensor(f, 5, "lm_head", -1, LORASTORE__TENSOR_KIND__TENSOR_KIND_EXTRA, "F32", 3, 2, 4,
		   8, 3328, 256);
	for (int i = 0; i < 2; i++) {
		lorastore__module_scale__init(&f->sc[i]);
		f->scp[i] = &f->sc[i];
	}
	f->sc[0].module = "model.layers.1.self_attn.v_proj";
	f->sc[0].rank = 4;
	f->sc[0].scale = 4.0;
	f->sc[1].module = "model.layers.0.self_attn.q_proj";
	f->sc[1].rank = 8;
	f->sc[1].scale = 2.0;
	lorastore__version_record__init(&f->rec);
	f->rec.name = "tenant/adapter";
	f->rec.version = 3;
	for (int i = 0; i < 32; i++)
		f->digest[i] = (uint8_t)(i * 7);
	f->rec.digest.data = f->digest;
	f->rec.digest.len = 32;
	f->rec.generation = 41;
	f->rec.n_tensors = 6;
	f->rec.tensors = f->tp;
	f->rec.n_scales = 2;
	f->rec.scales = f->scp;
	f->rec.data_length = 3584;
	f->rec.dtype = LORASTORE__DTYPE__DTYPE_NONE; /* mixed */
	f->rec.rank = 8;
	f->rec.scale = 2.0;
}

/* The table of f, written into a fresh 8-aligned buffer of its exact size. */
static uint64_t *table_of(struct fixture *f, size_t *size)
{
	*size = ls_table_size(&f->rec);
	cr_assert_gt(*size, sizeof(struct ls_table_hdr));
	uint64_t *buf = calloc(1, *size);
	cr_assert_not_null(buf);
	cr_assert_eq(ls_table_write(&f->rec, buf, *size), 0);
	return buf;
}

Test(table, header_reads_back_name_version_digest_rank_scale_and_dtype)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	const struct ls_table_hdr *h = ls_table_open(buf, size, 41, 3584);
	cr_assert_not_null(h);
	cr_assert_str_eq(ls_table_str(h, h->name), "tenant/adapter");
	cr_assert_eq(h->dtype, LS_DTYPE_INVALID, "tensors of mixed dtypes have no one dtype");
	cr_assert_eq(h->version, 3);
	cr_assert_eq(h->generation, 41);
	cr_assert_eq(h->n_tensors, 6);
	cr_assert_eq(h->rank, 8);
	cr_assert_float_eq(h->scale, 2.0, 0);
	cr_assert_eq(memcmp(h->digest, f.digest, 32), 0);
	cr_assert_eq(h->data_length, 3584);
	free(buf);
}

Test(table, entries_keep_record_order_with_shapes_places_and_module_scales)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	const struct ls_table_hdr *h = ls_table_open(buf, size, 41, 3584);
	cr_assert_not_null(h);
	for (uint32_t i = 0; i < 6; i++) {
		const struct ls_table_entry *e = ls_table_entry(h, i);
		cr_assert_not_null(e, "entry %u", i);
		const Lorastore__Tensor *t = &f.t[i];
		cr_assert_str_eq(ls_table_str(h, e->module), t->module);
		cr_assert_eq(e->dtype, (uint32_t)t->dtype);
		cr_assert_eq(e->kind, (uint8_t)t->kind);
		cr_assert_eq(e->layer, t->layer);
		cr_assert_eq(e->offset, t->offset);
		cr_assert_eq(e->bytes, t->length);
		cr_assert_eq(e->ndim, t->n_shape);
		const uint64_t *d = ls_table_dims(h, e);
		for (unsigned k = 0; k < e->ndim; k++)
			cr_assert_eq(d[k], t->shape[k], "entry %u dim %u", i, k);
	}
	/* A and B carry their module's rank and scale; the others carry none. */
	cr_assert_eq(ls_table_entry(h, 0)->rank, 4);
	cr_assert_float_eq(ls_table_entry(h, 0)->scale, 4.0, 0);
	cr_assert_eq(ls_table_entry(h, 2)->rank, 8);
	cr_assert_float_eq(ls_table_entry(h, 3)->scale, 2.0, 0);
	cr_assert_eq(ls_table_entry(h, 4)->rank, 0);
	cr_assert_eq(ls_table_entry(h, 5)->rank, 0);
	cr_assert_null(ls_table_entry(h, 6));
	free(buf);
}

Test(table, find_returns_every_tensor_by_module_and_kind_and_nothing_else)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	const struct ls_table_hdr *h = ls_table_open(buf, size, 41, 3584);
	cr_assert_not_null(h);
	for (int i = 0; i < 6; i++) {
		const struct ls_table_entry *e = ls_table_find(h, f.t[i].module, (int)f.t[i].kind);
		cr_assert_not_null(e, "tensor %d", i);
		cr_assert_eq(e->offset, f.t[i].offset, "tensor %d", i);
	}
	cr_assert_null(ls_table_find(h, "lm_head", LORASTORE__TENSOR_KIND__TENSOR_KIND_A));
	cr_assert_null(ls_table_find(h, "model.layers.0.self_attn", 1));
	cr_assert_null(ls_table_find(h, "", 1));
	cr_assert_null(ls_table_find(h, "zzz", 1));
	free(buf);
}

Test(table, an_f16_adapters_dtype_is_the_number_of_f16)
{
	struct fixture f;
	fixture_init(&f);
	f.rec.dtype = LORASTORE__DTYPE__DTYPE_F16;
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	const struct ls_table_hdr *h = ls_table_open(buf, size, 41, 3584);
	cr_assert_not_null(h);
	cr_assert_eq(h->dtype, LS_DTYPE_F16);
	free(buf);
}

Test(table, module_names_are_stored_once_per_module)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	const struct ls_table_hdr *h = ls_table_open(buf, size, 41, 3584);
	cr_assert_not_null(h);
	cr_assert_eq(ls_table_entry(h, 2)->module, ls_table_entry(h, 3)->module);
	cr_assert_eq(ls_table_entry(h, 2)->module, ls_table_entry(h, 4)->module);
	cr_assert_eq(ls_table_entry(h, 0)->module, ls_table_entry(h, 1)->module);
	free(buf);
}

Test(table, an_adapter_of_thousands_of_tensors_fits_and_every_lookup_finds_its_own)
{
	enum { N = 3000 };
	Lorastore__Tensor *t = calloc(N, sizeof(*t));
	Lorastore__Tensor **tp = calloc(N, sizeof(*tp));
	char (*names)[48] = calloc(N / 2, sizeof(*names));
	uint64_t(*shapes)[2] = calloc(N, sizeof(*shapes));
	cr_assert(t && tp && names && shapes);
	uint8_t digest[32] = {0};
	for (int i = 0; i < N; i++) {
		lorastore__tensor__init(&t[i]);
		snprintf(names[i / 2], sizeof(names[0]), "model.layers.%d.mlp.proj", N - i / 2);
		t[i].module = names[i / 2];
		t[i].kind = i % 2 ? LORASTORE__TENSOR_KIND__TENSOR_KIND_B
				  : LORASTORE__TENSOR_KIND__TENSOR_KIND_A;
		t[i].dtype = LORASTORE__DTYPE__DTYPE_F16;
		t[i].shape = shapes[i];
		t[i].n_shape = 2;
		t[i].offset = (uint64_t)i * 64;
		t[i].length = 64;
		tp[i] = &t[i];
	}
	Lorastore__VersionRecord rec = LORASTORE__VERSION_RECORD__INIT;
	rec.name = "big";
	rec.dtype = LORASTORE__DTYPE__DTYPE_F16;
	rec.digest.data = digest;
	rec.digest.len = 32;
	rec.generation = 5;
	rec.n_tensors = N;
	rec.tensors = tp;
	rec.data_length = (uint64_t)N * 64;
	size_t size = ls_table_size(&rec);
	uint64_t *buf = calloc(1, size);
	cr_assert_eq(ls_table_write(&rec, buf, size), 0);
	const struct ls_table_hdr *h = ls_table_open(buf, size, 5, rec.data_length);
	cr_assert_not_null(h);
	for (int i = 0; i < N; i++) {
		const struct ls_table_entry *e = ls_table_find(h, t[i].module, (int)t[i].kind);
		cr_assert_not_null(e, "tensor %d", i);
		cr_assert_eq(e->offset, t[i].offset, "tensor %d", i);
	}
	free(buf);
	free(shapes);
	free(names);
	free(tp);
	free(t);
}

Test(table, write_refuses_a_buffer_smaller_than_the_table)
{
	struct fixture f;
	fixture_init(&f);
	size_t size = ls_table_size(&f.rec);
	uint64_t *buf = calloc(1, size);
	cr_assert_eq(ls_table_write(&f.rec, buf, size - 8), -ENOSPC);
	free(buf);
}

Test(table, write_refuses_a_record_with_a_tensor_without_module_or_too_many_dims)
{
	struct fixture f;
	fixture_init(&f);
	f.t[2].module = NULL;
	cr_assert_eq(ls_table_size(&f.rec), 0);
	uint64_t buf[512];
	cr_assert_eq(ls_table_write(&f.rec, buf, sizeof(buf)), -EINVAL);
	fixture_init(&f);
	f.t[5].n_shape = LS_TABLE_MAX_DIMS + 1;
	cr_assert_eq(ls_table_size(&f.rec), 0);
}

Test(table, open_refuses_another_generation_or_a_too_small_mapping)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	cr_assert_null(ls_table_open(buf, size, 42, 3584), "another generation");
	cr_assert_null(ls_table_open(buf, size - 8, 41, 3584), "table past the mapping");
	cr_assert_null(ls_table_open(buf, size, 41, 3583), "data region past the mapping");
	cr_assert_null(ls_table_open((uint8_t *)buf + 4, size - 4, 41, 3584), "misaligned");
	cr_assert_null(ls_table_open(NULL, size, 41, 3584));
	free(buf);
}

Test(table, open_refuses_a_bad_magic_format_or_parts_outside_the_table)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	struct ls_table_hdr *h = (struct ls_table_hdr *)buf;
	struct ls_table_hdr good = *h;
	h->magic ^= 1;
	cr_assert_null(ls_table_open(buf, size, 41, 3584), "magic");
	*h = good;
	h->format = LS_TABLE_FORMAT + 1;
	cr_assert_null(ls_table_open(buf, size, 41, 3584), "format");
	*h = good;
	h->n_tensors = 1u << 30;
	cr_assert_null(ls_table_open(buf, size, 41, 3584), "entries past the end");
	*h = good;
	h->n_dims = 1u << 30;
	cr_assert_null(ls_table_open(buf, size, 41, 3584), "dims past the end");
	*h = good;
	h->pool = (uint32_t)size;
	cr_assert_null(ls_table_open(buf, size, 41, 3584), "pool past the end");
	*h = good;
	h->name = h->pool_bytes;
	cr_assert_null(ls_table_open(buf, size, 41, 3584), "name outside the pool");
	*h = good;
	cr_assert_not_null(ls_table_open(buf, size, 41, 3584));
	free(buf);
}

Test(table, open_refuses_a_pool_without_a_final_nul)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	struct ls_table_hdr *h = (struct ls_table_hdr *)buf;
	((char *)buf)[h->pool + h->pool_bytes - 1] = 'x';
	cr_assert_null(ls_table_open(buf, size, 41, 3584));
	free(buf);
}

Test(table, a_damaged_entry_is_refused_when_read)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	const struct ls_table_hdr *h = ls_table_open(buf, size, 41, 3584);
	cr_assert_not_null(h);
	struct ls_table_entry *e = (struct ls_table_entry *)((uint8_t *)buf + h->entries);
	struct ls_table_entry good = e[1];
	e[1].bytes = 4096;
	cr_assert_null(ls_table_entry(h, 1), "tensor past the data region");
	e[1] = good;
	e[1].offset = UINT64_MAX - 8;
	cr_assert_null(ls_table_entry(h, 1), "offset overflow");
	e[1] = good;
	e[1].module = h->pool_bytes;
	cr_assert_null(ls_table_entry(h, 1), "module outside the pool");
	e[1] = good;
	e[1].dim0 = h->n_dims;
	cr_assert_null(ls_table_entry(h, 1), "dims past the array");
	e[1] = good;
	e[1].ndim = LS_TABLE_MAX_DIMS + 1;
	cr_assert_null(ls_table_entry(h, 1), "too many dims");
	e[1] = good;
	cr_assert_not_null(ls_table_entry(h, 1));
	free(buf);
}

Test(table, a_damaged_order_makes_lookups_miss_not_read_out_of_bounds)
{
	struct fixture f;
	fixture_init(&f);
	size_t size;
	uint64_t *buf = table_of(&f, &size);
	const struct ls_table_hdr *h = ls_table_open(buf, size, 41, 3584);
	cr_assert_not_null(h);
	uint32_t *order = (uint32_t *)((uint8_t *)buf + h->order);
	for (uint32_t i = 0; i < h->n_tensors; i++)
		order[i] = 0xffffffu;
	cr_assert_null(ls_table_find(h, "lm_head", LORASTORE__TENSOR_KIND__TENSOR_KIND_EXTRA));
	free(buf);
}
