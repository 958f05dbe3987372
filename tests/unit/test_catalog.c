/* Tests of the LMDB catalog (store/catalog.c). */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <errno.h>
#include <ftw.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "catalog.h"
#include "lorastore.pb-c.h"

/* Each test runs in its own process, with its own directory and catalog. */
static char test_dir[64];
static struct ls_catalog *cat;
static struct ls_err err;

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	return remove(path);
}

static void setup(void)
{
	strcpy(test_dir, "/tmp/ls-catalog-XXXXXX");
	cr_assert_not_null(mkdtemp(test_dir), "mkdtemp: %s", strerror(errno));
	int rc = ls_catalog_open(test_dir, &cat, &err);
	cr_assert_eq(rc, 0, "open: %s", err.msg);
}

static void teardown(void)
{
	ls_catalog_close(cat);
	cat = NULL;
	nftw(test_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(catalog, .init = setup, .fini = teardown);

static void reopen(void)
{
	ls_catalog_close(cat);
	cat = NULL;
	int rc = ls_catalog_open(test_dir, &cat, &err);
	cr_assert_eq(rc, 0, "reopen: %s", err.msg);
}

/*
 * A record as an import would fill it, with ntensors tensor entries; `pad`
 * makes each entry's source name longer (bytes), to make records large.
 */
static Lorastore__VersionRecord *record_new(const char *name, size_t ntensors, size_t pad)
{
	Lorastore__VersionRecord *rec = calloc(1, sizeof(*rec));
	cr_assert_not_null(rec);
	lorastore__version_record__init(rec);
	rec->name = strdup(name);
	rec->digest.len = 32;
	rec->digest.data = calloc(1, 32);
	memset(rec->digest.data, 0xab, 32);
	rec->blob_bytes = 4096;
	rec->data_length = 1000;
	rec->created_unix_ns = 1700000000000000000LL;
	rec->source = strdup("/srv/adapters/x");
	rec->dtype = LORASTORE__DTYPE__DTYPE_BF16;
	rec->rank = 16;
	rec->scale = 2.0;
	rec->n_tensors = ntensors;
	rec->tensors = ntensors ? calloc(ntensors, sizeof(*rec->tensors)) : NULL;
	for (size_t i = 0; i < ntensors; i++) {
		Lorastore__Tensor *t = calloc(1, sizeof(*t));
		cr_assert_not_null(t);
		lorastore__tensor__init(t);
		char module[128];
		snprintf(module, sizeof(module), "model.layers.%zu.self_attn.q_proj", i / 2);
		t->module = strdup(module);
		t->layer = (int32_t)(i / 2);
		t->kind = i % 2 ? LORASTORE__TENSOR_KIND__TENSOR_KIND_B
				: LORASTORE__TENSOR_KIND__TENSOR_KIND_A;
		t->dtype = LORASTORE__DTYPE__DTYPE_BF16;
		t->n_shape = 2;
		t->shape = calloc(2, sizeof(uint64_t));
		t->shape[0] = 16;
		t->shape[1] = 4096;
		t->offset = i * 131072;
		t->length = 131072;
		char *src = malloc(pad + 64);
		int n = snprintf(src, pad + 64, "base_model.model.%s.lora_%c.weight", module,
				 i % 2 ? 'B' : 'A');
		memset(src + n, 'x', pad);
		src[n + pad] = '\0';
		t->source_name = src;
		t->source_dtype = LORASTORE__DTYPE__DTYPE_F32;
		rec->tensors[i] = t;
	}
	return rec;
}

static void record_free(Lorastore__VersionRecord *rec)
{
	for (size_t i = 0; i < rec->n_tensors; i++) {
		Lorastore__Tensor *t = rec->tensors[i];
		free(t->module);
		free(t->shape);
		free(t->source_name);
		free(t);
	}
	free(rec->tensors);
	free(rec->name);
	free(rec->digest.data);
	free(rec->source);
	free(rec);
}

/* Add a small record for name; returns its version. */
static uint32_t add_name(const char *name)
{
	Lorastore__VersionRecord *rec = record_new(name, 2, 0);
	int rc = ls_catalog_add(cat, rec, NULL, NULL, &err);
	cr_assert_eq(rc, 0, "add %s: %s", name, err.msg);
	uint32_t v = rec->version;
	record_free(rec);
	return v;
}

static uint64_t next_generation(void)
{
	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0, "stats: %s", err.msg);
	return st.next_generation;
}

/* ---- add and get ----------------------------------------------------- */

Test(catalog, add_assigns_versions_1_2_3_and_increasing_generations)
{
	uint64_t last_gen = 0;
	for (uint32_t want = 1; want <= 3; want++) {
		Lorastore__VersionRecord *rec = record_new("acme/chat", 2, 0);
		cr_assert_eq(ls_catalog_add(cat, rec, NULL, NULL, &err), 0, "%s", err.msg);
		cr_assert_eq(rec->version, want);
		cr_assert_gt(rec->generation, last_gen);
		cr_assert_eq(rec->schema, LS_CATALOG_SCHEMA);
		last_gen = rec->generation;
		record_free(rec);
	}
	/* Another name starts at version 1 but shares the store's generations. */
	Lorastore__VersionRecord *rec = record_new("acme/code", 2, 0);
	cr_assert_eq(ls_catalog_add(cat, rec, NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 1);
	cr_assert_gt(rec->generation, last_gen);
	record_free(rec);
}

Test(catalog, get_version_0_is_latest_and_a_fixed_version_is_that_one)
{
	for (int i = 0; i < 3; i++)
		add_name("acme/chat");
	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 0, &got, &err), 0, "%s", err.msg);
	cr_assert_eq(got->version, 3);
	cr_assert_str_eq(got->name, "acme/chat");
	lorastore__version_record__free_unpacked(got, NULL);

	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 2, &got, &err), 0, "%s", err.msg);
	cr_assert_eq(got->version, 2);
	/* The fields written come back. */
	cr_assert_eq(got->n_tensors, 2);
	cr_assert_str_eq(got->tensors[1]->module, "model.layers.0.self_attn.q_proj");
	cr_assert_eq(got->tensors[1]->kind, LORASTORE__TENSOR_KIND__TENSOR_KIND_B);
	cr_assert_eq(got->tensors[1]->shape[1], 4096);
	cr_assert_eq(got->digest.len, 32);
	cr_assert_eq(got->digest.data[31], 0xab);
	cr_assert_eq(got->dtype, LORASTORE__DTYPE__DTYPE_BF16);
	cr_assert_eq(got->tensors[1]->source_dtype, LORASTORE__DTYPE__DTYPE_F32);
	cr_assert_eq(got->rank, 16);
	lorastore__version_record__free_unpacked(got, NULL);
}

Test(catalog, get_of_unknown_name_or_version_is_not_found)
{
	add_name("acme/chat");
	Lorastore__VersionRecord *got = (void *)1;
	cr_assert_eq(ls_catalog_get(cat, "acme/other", 0, &got, &err), LS_E_NOT_FOUND);
	cr_assert_null(got);
	cr_assert_eq(ls_catalog_get(cat, "acme/other", 1, &got, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 2, &got, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_catalog_get(cat, "acme/cha", 0, &got, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_catalog_get(cat, "acme@1", 0, &got, &err), LS_E_NOT_FOUND);
	cr_assert_null(got);
}

Test(catalog, add_accepts_null_string_fields)
{
	Lorastore__VersionRecord rec;
	lorastore__version_record__init(&rec);
	rec.name = "acme/bare";
	rec.source = NULL;
	rec.dtype_name = NULL;
	cr_assert_eq(ls_catalog_add(cat, &rec, NULL, NULL, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/bare", 1, &got, &err), 0, "%s", err.msg);
	cr_assert_str_eq(got->source, "");
	cr_assert_eq(got->n_tensors, 0);
	cr_assert_null(got->config);
	lorastore__version_record__free_unpacked(got, NULL);
}

Test(catalog, a_record_written_with_dtype_names_reads_back_with_the_dtype_enum_alone)
{
	/* As catalogs wrote records before the Dtype enum: names, no numbers. */
	Lorastore__Tensor t = LORASTORE__TENSOR__INIT, *tp = &t;
	t.module = "model.layers.0.self_attn.q_proj";
	t.kind = LORASTORE__TENSOR_KIND__TENSOR_KIND_A;
	t.dtype_name = "F16";
	t.source_dtype_name = "F32";
	Lorastore__VersionRecord rec;
	lorastore__version_record__init(&rec);
	rec.name = "acme/old";
	rec.dtype_name = "F16";
	rec.n_tensors = 1;
	rec.tensors = &tp;
	cr_assert_eq(ls_catalog_add(cat, &rec, NULL, NULL, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/old", 1, &got, &err), 0, "%s", err.msg);
	cr_assert_eq(got->dtype, LORASTORE__DTYPE__DTYPE_F16);
	cr_assert_str_empty(got->dtype_name);
	cr_assert_eq(got->tensors[0]->dtype, LORASTORE__DTYPE__DTYPE_F16);
	cr_assert_eq(got->tensors[0]->source_dtype, LORASTORE__DTYPE__DTYPE_F32);
	cr_assert_str_empty(got->tensors[0]->dtype_name);
	cr_assert_str_empty(got->tensors[0]->source_dtype_name);
	/* Packed again (a reply), it carries the numbers alone. */
	size_t len = lorastore__version_record__get_packed_size(got);
	uint8_t *buf = malloc(len);
	lorastore__version_record__pack(got, buf);
	cr_assert_null(memmem(buf, len, "F16", 3), "a dtype name is still in the record");
	free(buf);
	lorastore__version_record__free_unpacked(got, NULL);
}

/* ---- names ----------------------------------------------------------- */

Test(catalog, name_valid_accepts_ordinary_names)
{
	cr_assert(ls_name_valid("a"));
	cr_assert(ls_name_valid("acme/llama-3.1_chat"));
	cr_assert(ls_name_valid("A.b/C-d/e_f/0.9"));
	cr_assert(ls_name_valid("tenant/..hidden"));
}

Test(catalog, name_empty_or_null_rejected)
{
	cr_assert_not(ls_name_valid(""));
	cr_assert_not(ls_name_valid(NULL));
}

Test(catalog, name_longer_than_200_rejected)
{
	char name[LS_NAME_MAX + 2];
	memset(name, 'a', LS_NAME_MAX);
	name[LS_NAME_MAX] = '\0';
	cr_assert(ls_name_valid(name));
	name[LS_NAME_MAX] = 'a';
	name[LS_NAME_MAX + 1] = '\0';
	cr_assert_not(ls_name_valid(name));
}

Test(catalog, name_with_at_sign_rejected)
{
	cr_assert_not(ls_name_valid("acme/chat@3"));
	cr_assert_not(ls_name_valid("@"));
}

Test(catalog, name_with_other_characters_rejected)
{
	cr_assert_not(ls_name_valid("acme chat"));
	cr_assert_not(ls_name_valid("acme:chat"));
	cr_assert_not(ls_name_valid("acme\\chat"));
	cr_assert_not(ls_name_valid("acme/ch\xc3\xa4t"));
	cr_assert_not(ls_name_valid("acme\nchat"));
}

Test(catalog, name_with_leading_or_trailing_slash_rejected)
{
	cr_assert_not(ls_name_valid("/acme/chat"));
	cr_assert_not(ls_name_valid("/"));
	cr_assert_not(ls_name_valid("acme/chat/"));
}

Test(catalog, name_with_double_slash_rejected)
{
	cr_assert_not(ls_name_valid("acme//chat"));
}

Test(catalog, name_with_dot_or_dotdot_component_rejected)
{
	cr_assert_not(ls_name_valid(".."));
	cr_assert_not(ls_name_valid("acme/../chat"));
	cr_assert_not(ls_name_valid("acme/.."));
	cr_assert_not(ls_name_valid("../acme"));
	cr_assert_not(ls_name_valid("acme/./chat"));
	cr_assert_not(ls_name_valid("."));
}

Test(catalog, add_with_invalid_name_fails_and_writes_nothing)
{
	const char *bad[] = {"", "/acme", "acme//x", "acme/../x", "acme@2", "acme x"};
	uint64_t gen = next_generation();
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		Lorastore__VersionRecord *rec = record_new(bad[i], 1, 0);
		cr_assert_eq(ls_catalog_add(cat, rec, NULL, NULL, &err), LS_E_NAME_INVALID,
			     "\"%s\" accepted", bad[i]);
		cr_assert_eq(err.code, LS_E_NAME_INVALID);
		cr_assert_eq(rec->version, 0);
		record_free(rec);
	}
	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	cr_assert_eq(st.versions, 0);
	cr_assert_eq(st.names, 0);
	cr_assert_eq(st.next_generation, gen);
}

/* ---- delete ---------------------------------------------------------- */

struct collected {
	size_t n;
	uint32_t versions[16];
	char names[16][64];
};

static int collect(void *ud, const Lorastore__VersionRecord *rec)
{
	struct collected *c = ud;
	cr_assert_lt(c->n, 16);
	c->versions[c->n] = rec->version;
	snprintf(c->names[c->n], sizeof(c->names[0]), "%s", rec->name);
	c->n++;
	return 0;
}

Test(catalog, delete_of_latest_makes_highest_remaining_latest)
{
	for (int i = 0; i < 3; i++)
		add_name("acme/chat");
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 3, NULL, NULL, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 0, &got, &err), 0, "%s", err.msg);
	cr_assert_eq(got->version, 2);
	lorastore__version_record__free_unpacked(got, NULL);
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 3, &got, &err), LS_E_NOT_FOUND);
}

Test(catalog, delete_of_latest_skips_gaps_to_highest_remaining)
{
	for (int i = 0; i < 4; i++)
		add_name("acme/chat");
	add_name("acme/chat2"); /* a neighbouring key must not be taken for ours */
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 3, NULL, NULL, &err), 0);
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 4, NULL, NULL, &err), 0);
	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 0, &got, &err), 0, "%s", err.msg);
	cr_assert_eq(got->version, 2);
	lorastore__version_record__free_unpacked(got, NULL);
}

Test(catalog, delete_of_older_version_keeps_latest)
{
	for (int i = 0; i < 3; i++)
		add_name("acme/chat");
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 1, NULL, NULL, &err), 0);
	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 0, &got, &err), 0, "%s", err.msg);
	cr_assert_eq(got->version, 3);
	lorastore__version_record__free_unpacked(got, NULL);
}

Test(catalog, delete_all_then_add_continues_numbering)
{
	for (int i = 0; i < 3; i++)
		add_name("acme/chat");
	struct collected c = {0};
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 0, collect, &c, &err), 0, "%s", err.msg);
	cr_assert_eq(c.n, 3);
	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 0, &got, &err), LS_E_NOT_FOUND);
	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	cr_assert_eq(st.names, 0);
	cr_assert_eq(st.versions, 0);
	cr_assert_eq(add_name("acme/chat"), 4);
}

Test(catalog, delete_calls_fn_with_each_deleted_record)
{
	for (int i = 0; i < 3; i++)
		add_name("acme/chat");
	add_name("acme/chat-other");
	struct collected c = {0};
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 0, collect, &c, &err), 0, "%s", err.msg);
	cr_assert_eq(c.n, 3);
	for (size_t i = 0; i < 3; i++) {
		cr_assert_eq(c.versions[i], i + 1);
		cr_assert_str_eq(c.names[i], "acme/chat");
	}
	struct collected one = {0};
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat-other", 1, collect, &one, &err), 0);
	cr_assert_eq(one.n, 1);
	cr_assert_eq(one.versions[0], 1);
}

Test(catalog, delete_of_unknown_is_not_found)
{
	add_name("acme/chat");
	cr_assert_eq(ls_catalog_delete(cat, "acme/none", 0, NULL, NULL, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 2, NULL, NULL, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 0, NULL, NULL, &err), 0);
	cr_assert_eq(ls_catalog_delete(cat, "acme/chat", 0, NULL, NULL, &err), LS_E_NOT_FOUND);
}

/* ---- prepare --------------------------------------------------------- */

struct prepare_seen {
	uint32_t version;
	uint64_t generation;
	int calls;
	int result;
};

static int prepare_cb(void *ud, const Lorastore__VersionRecord *rec, struct ls_err *e)
{
	struct prepare_seen *p = ud;
	p->version = rec->version;
	p->generation = rec->generation;
	p->calls++;
	if (p->result)
		return ls_err_set(e, p->result, "ref file could not be written");
	return 0;
}

Test(catalog, prepare_sees_the_assigned_version_and_generation)
{
	add_name("acme/chat");
	struct prepare_seen p = {0};
	Lorastore__VersionRecord *rec = record_new("acme/chat", 2, 0);
	cr_assert_eq(ls_catalog_add(cat, rec, prepare_cb, &p, &err), 0, "%s", err.msg);
	cr_assert_eq(p.calls, 1);
	cr_assert_eq(p.version, 2);
	cr_assert_eq(p.version, rec->version);
	cr_assert_eq(p.generation, rec->generation);
	record_free(rec);
}

Test(catalog, prepare_failure_leaves_no_record_behind)
{
	add_name("acme/chat");
	uint64_t gen = next_generation();
	struct prepare_seen p = {.result = -EIO};
	Lorastore__VersionRecord *rec = record_new("acme/chat", 2, 0);
	cr_assert_eq(ls_catalog_add(cat, rec, prepare_cb, &p, &err), -EIO);
	cr_assert_eq(err.code, -EIO);
	cr_assert_str_eq(err.msg, "ref file could not be written");
	cr_assert_eq(p.calls, 1);
	cr_assert_eq(rec->version, 0, "a failed add must leave the record as it was");
	record_free(rec);

	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 2, &got, &err), LS_E_NOT_FOUND);
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 0, &got, &err), 0);
	cr_assert_eq(got->version, 1);
	lorastore__version_record__free_unpacked(got, NULL);
	cr_assert_eq(next_generation(), gen);
	/* A new name whose add failed leaves no name either. */
	rec = record_new("acme/new", 2, 0);
	cr_assert_eq(ls_catalog_add(cat, rec, prepare_cb, &p, &err), -EIO);
	record_free(rec);
	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	cr_assert_eq(st.names, 1);
	cr_assert_eq(st.versions, 1);
	cr_assert_eq(add_name("acme/new"), 1);
}

/* ---- list ------------------------------------------------------------ */

/* What a paging test saw: every record in order, checked as it comes. */
struct pager {
	size_t seen;          /* records given in all pages */
	size_t page;          /* records given in the current page */
	char last_name[LS_NAME_MAX + 1];
	uint32_t last_version;
	const char *prefix;
	unsigned char *hits;  /* per expected record, how often it was seen */
	size_t (*index)(const Lorastore__VersionRecord *rec); /* position in hits */
};

static int pager_fn(void *ud, const Lorastore__VersionRecord *rec)
{
	struct pager *p = ud;
	cr_assert_eq(strncmp(rec->name, p->prefix, strlen(p->prefix)), 0,
		     "%s does not start with %s", rec->name, p->prefix);
	if (p->seen > 0) {
		int c = strcmp(rec->name, p->last_name);
		cr_assert(c > 0 || (c == 0 && rec->version > p->last_version),
			  "%s@%u after %s@%u", rec->name, rec->version, p->last_name,
			  p->last_version);
	}
	p->hits[p->index(rec)]++;
	snprintf(p->last_name, sizeof(p->last_name), "%s", rec->name);
	p->last_version = rec->version;
	p->seen++;
	p->page++;
	return 0;
}

/* Page through prefix with pages of page_size; returns the number of pages. */
static size_t page_through(struct pager *p, size_t page_size)
{
	size_t pages = 0;
	bool more = true;
	while (more) {
		p->page = 0;
		int rc = ls_catalog_list(cat, p->prefix, p->seen ? p->last_name : NULL,
					 p->seen ? p->last_version : 0, page_size, pager_fn, p,
					 &more, &err);
		cr_assert_eq(rc, 0, "list: %s", err.msg);
		cr_assert_leq(p->page, page_size);
		if (more)
			cr_assert_eq(p->page, page_size, "a short page that says more follow");
		pages++;
		cr_assert_lt(pages, 100000, "listing does not end");
	}
	return pages;
}

static const char *const list_prefixes[] = {"alpha/", "beta/", "beta2/", "gamma/", "zeta/"};
#define LIST_PER_PREFIX 500 /* 5 prefixes: 2,500 records */

static size_t list_index(const Lorastore__VersionRecord *rec)
{
	for (size_t i = 0; i < 5; i++) {
		size_t n = strlen(list_prefixes[i]);
		if (strncmp(rec->name, list_prefixes[i], n) == 0) {
			unsigned k;
			cr_assert_eq(sscanf(rec->name + n, "m%u", &k), 1);
			cr_assert_lt(k, LIST_PER_PREFIX / 5);
			cr_assert_geq(rec->version, 1);
			cr_assert_leq(rec->version, 5);
			return i * LIST_PER_PREFIX + k * 5 + rec->version - 1;
		}
	}
	cr_assert_fail("unexpected record %s", rec->name);
	return 0;
}

static void fill_list_catalog(void)
{
	/* Each prefix has 100 names of 5 versions. */
	Lorastore__VersionRecord *rec = record_new("x", 1, 0);
	for (size_t i = 0; i < 5; i++) {
		for (unsigned k = 0; k < LIST_PER_PREFIX / 5; k++) {
			for (int v = 0; v < 5; v++) {
				char name[64];
				snprintf(name, sizeof(name), "%sm%u", list_prefixes[i], k);
				free(rec->name);
				rec->name = strdup(name);
				cr_assert_eq(ls_catalog_add(cat, rec, NULL, NULL, &err), 0, "%s",
					     err.msg);
			}
		}
	}
	record_free(rec);
}

Test(catalog, list_by_prefix_pages_through_each_match_once_in_order)
{
	fill_list_catalog();
	for (size_t i = 0; i < 5; i++) {
		unsigned char *hits = calloc(5 * LIST_PER_PREFIX, 1);
		struct pager p = {.prefix = list_prefixes[i], .hits = hits, .index = list_index};
		size_t pages = page_through(&p, 100);
		cr_assert_eq(p.seen, LIST_PER_PREFIX, "prefix %s: %zu records", p.prefix, p.seen);
		cr_assert_eq(pages, LIST_PER_PREFIX / 100);
		for (size_t j = 0; j < 5 * LIST_PER_PREFIX; j++)
			cr_assert_eq(hits[j], j / LIST_PER_PREFIX == i ? 1 : 0, "record %zu", j);
		free(hits);
	}
	/* "beta" covers beta/ and beta2/, an empty prefix covers everything. */
	unsigned char *hits = calloc(5 * LIST_PER_PREFIX, 1);
	struct pager p = {.prefix = "beta", .hits = hits, .index = list_index};
	page_through(&p, 100);
	cr_assert_eq(p.seen, 2 * LIST_PER_PREFIX);
	memset(hits, 0, 5 * LIST_PER_PREFIX);
	struct pager all = {.prefix = "", .hits = hits, .index = list_index};
	page_through(&all, 100);
	cr_assert_eq(all.seen, 5 * LIST_PER_PREFIX);
	for (size_t j = 0; j < 5 * LIST_PER_PREFIX; j++)
		cr_assert_eq(hits[j], 1, "record %zu", j);
	free(hits);
}

Test(catalog, list_starts_after_the_given_position)
{
	for (int i = 0; i < 3; i++)
		add_name("acme/a");
	add_name("acme/b");
	add_name("other/c");
	struct collected c = {0};
	bool more;
	cr_assert_eq(ls_catalog_list(cat, "acme/", "acme/a", 2, 10, collect, &c, &more, &err), 0);
	cr_assert_eq(c.n, 2);
	cr_assert_str_eq(c.names[0], "acme/a");
	cr_assert_eq(c.versions[0], 3);
	cr_assert_str_eq(c.names[1], "acme/b");
	cr_assert_not(more);
	/* A position before the prefix starts at the prefix. */
	memset(&c, 0, sizeof(c));
	cr_assert_eq(ls_catalog_list(cat, "other/", "acme/a", 1, 10, collect, &c, &more, &err), 0);
	cr_assert_eq(c.n, 1);
	cr_assert_str_eq(c.names[0], "other/c");
	/* A position past every record gives nothing. */
	memset(&c, 0, sizeof(c));
	cr_assert_eq(ls_catalog_list(cat, "", "zzz", 0, 10, collect, &c, &more, &err), 0);
	cr_assert_eq(c.n, 0);
	cr_assert_not(more);
}

Test(catalog, list_with_limit_0_reports_whether_records_exist)
{
	add_name("acme/a");
	struct collected c = {0};
	bool more = false;
	cr_assert_eq(ls_catalog_list(cat, "acme/", NULL, 0, 0, collect, &c, &more, &err), 0);
	cr_assert_eq(c.n, 0);
	cr_assert(more);
	cr_assert_eq(ls_catalog_list(cat, "nope/", NULL, 0, 0, collect, &c, &more, &err), 0);
	cr_assert_not(more);
}

static int stop_after_two(void *ud, const Lorastore__VersionRecord *rec)
{
	int *n = ud;
	return ++*n == 2 ? 42 : 0;
}

Test(catalog, list_stops_when_fn_returns_non_zero)
{
	for (int i = 0; i < 4; i++)
		add_name("acme/a");
	int n = 0;
	bool more = false;
	cr_assert_eq(ls_catalog_list(cat, "", NULL, 0, 10, stop_after_two, &n, &more, &err), 42);
	cr_assert_eq(n, 2);
	cr_assert(more);
	n = 0;
	cr_assert_eq(ls_catalog_walk(cat, stop_after_two, &n, &err), 42);
	cr_assert_eq(n, 2);
}

static int count_fn(void *ud, const Lorastore__VersionRecord *rec)
{
	(*(size_t *)ud)++;
	return 0;
}

Test(catalog, walk_visits_every_version)
{
	for (int i = 0; i < 3; i++)
		add_name("acme/a");
	add_name("b/c");
	add_name("z");
	size_t n = 0;
	cr_assert_eq(ls_catalog_walk(cat, count_fn, &n, &err), 0, "%s", err.msg);
	cr_assert_eq(n, 5);
}

/* ---- scale ----------------------------------------------------------- */

/* "tenants/name-i" for i < SCALE_NAMES, with 1 + i % 4 versions: 10,000 in all. */
#define SCALE_NAMES 4000

static size_t scale_index(const Lorastore__VersionRecord *rec)
{
	unsigned i;
	cr_assert_eq(sscanf(rec->name, "tenants/name-%u", &i), 1, "%s", rec->name);
	cr_assert_lt(i, SCALE_NAMES);
	cr_assert_geq(rec->version, 1);
	cr_assert_leq(rec->version, 1 + i % 4, "%s@%u", rec->name, rec->version);
	return (size_t)i * 4 + rec->version - 1;
}

Test(catalog, scale_10000_versions_listed_in_pages_of_500_each_once, .timeout = 120)
{
	Lorastore__VersionRecord *rec = record_new("x", 2, 0);
	size_t total = 0;
	for (unsigned i = 0; i < SCALE_NAMES; i++) {
		char name[64];
		snprintf(name, sizeof(name), "tenants/name-%u", i);
		free(rec->name);
		rec->name = strdup(name);
		for (unsigned v = 0; v < 1 + i % 4; v++) {
			cr_assert_eq(ls_catalog_add(cat, rec, NULL, NULL, &err), 0, "%s", err.msg);
			total++;
		}
	}
	record_free(rec);
	cr_assert_eq(total, 10000);
	/* Neighbours outside the prefix. */
	add_name("tenant/name-1");
	add_name("tenantsx/name-1");
	add_name("a/b");
	add_name("zzz/y");

	unsigned char *hits = calloc(SCALE_NAMES * 4, 1);
	struct pager p = {.prefix = "tenants/", .hits = hits, .index = scale_index};
	size_t pages = page_through(&p, 500);
	cr_assert_eq(p.seen, 10000);
	cr_assert_eq(pages, 20);
	for (unsigned i = 0; i < SCALE_NAMES; i++)
		for (unsigned v = 0; v < 4; v++)
			cr_assert_eq(hits[i * 4 + v], v < 1 + i % 4 ? 1 : 0,
				     "tenants/name-%u@%u seen %u times", i, v + 1,
				     hits[i * 4 + v]);
	free(hits);

	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	cr_assert_eq(st.versions, 10004);
	cr_assert_eq(st.names, SCALE_NAMES + 4);
}

/* ---- map growth, schema, restore, persistence ----------------------- */

Test(catalog, full_map_grows_and_every_record_survives_reopen, .timeout = 120)
{
	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	uint64_t initial = st.map_size;
	cr_assert_eq(initial, (uint64_t)64 << 20);

	/* About 48 KiB per record: 2,000 of them need about 100 MiB. */
	Lorastore__VersionRecord *rec = record_new("x", 200, 160);
	size_t packed = lorastore__version_record__get_packed_size(rec);
	cr_assert_gt(packed * 2000, initial + initial / 2, "records of %zu bytes", packed);
	for (unsigned i = 0; i < 2000; i++) {
		char name[64];
		snprintf(name, sizeof(name), "big/adapter-%u", i);
		free(rec->name);
		rec->name = strdup(name);
		rec->blob_bytes = i;
		cr_assert_eq(ls_catalog_add(cat, rec, NULL, NULL, &err), 0, "add %u: %s", i,
			     err.msg);
	}
	record_free(rec);
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	cr_assert_gt(st.map_size, initial, "the map never grew");

	reopen();
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	cr_assert_eq(st.versions, 2000);
	cr_assert_gt(st.map_size, initial, "the grown map was not kept");
	for (unsigned i = 0; i < 2000; i++) {
		char name[64];
		snprintf(name, sizeof(name), "big/adapter-%u", i);
		Lorastore__VersionRecord *got;
		cr_assert_eq(ls_catalog_get(cat, name, 0, &got, &err), 0, "%s: %s", name, err.msg);
		cr_assert_eq(got->n_tensors, 200);
		cr_assert_eq(got->blob_bytes, i);
		cr_assert_eq(got->tensors[199]->offset, 199 * 131072);
		lorastore__version_record__free_unpacked(got, NULL);
	}
	/* And it still takes writes. */
	cr_assert_eq(add_name("big/adapter-0"), 2);
}

Test(catalog, other_schema_refused_on_open)
{
	add_name("acme/chat");
	ls_catalog_close(cat);
	cat = NULL;

	/* Rewrite meta "schema" as another build would have written it. */
	MDB_env *env;
	cr_assert_eq(mdb_env_create(&env), 0);
	cr_assert_eq(mdb_env_set_maxdbs(env, 4), 0);
	cr_assert_eq(mdb_env_open(env, test_dir, 0, 0600), 0);
	MDB_txn *txn;
	MDB_dbi meta;
	cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
	cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &meta), 0);
	uint8_t other[4] = {LS_CATALOG_SCHEMA + 1, 0, 0, 0};
	MDB_val k = {6, "schema"}, v = {4, other};
	cr_assert_eq(mdb_put(txn, meta, &k, &v, 0), 0);
	cr_assert_eq(mdb_txn_commit(txn), 0);
	mdb_env_close(env);

	cr_assert_eq(ls_catalog_open(test_dir, &cat, &err), LS_E_CATALOG_SCHEMA);
	cr_assert_null(cat);
	cr_assert_eq(err.code, LS_E_CATALOG_SCHEMA);
	cr_assert_neq(strstr(err.msg, "schema"), NULL, "%s", err.msg);
}

Test(catalog, open_of_missing_directory_is_enoent)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/missing", test_dir);
	struct ls_catalog *other = (void *)1;
	cr_assert_eq(ls_catalog_open(path, &other, &err), -ENOENT);
	cr_assert_null(other);
}

Test(catalog, restore_moves_counters_past_the_record)
{
	add_name("acme/chat");
	Lorastore__VersionRecord *rec = record_new("acme/chat", 2, 0);
	rec->version = 7;
	rec->generation = 100;
	rec->schema = LS_CATALOG_SCHEMA;
	cr_assert_eq(ls_catalog_restore(cat, rec, &err), 0, "%s", err.msg);
	/* Restoring an older version moves nothing back. */
	rec->version = 5;
	rec->generation = 50;
	cr_assert_eq(ls_catalog_restore(cat, rec, &err), 0, "%s", err.msg);
	record_free(rec);

	Lorastore__VersionRecord *got;
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 0, &got, &err), 0);
	cr_assert_eq(got->version, 7);
	cr_assert_eq(got->generation, 100);
	lorastore__version_record__free_unpacked(got, NULL);
	cr_assert_eq(next_generation(), 101);

	rec = record_new("acme/chat", 2, 0);
	cr_assert_eq(ls_catalog_add(cat, rec, NULL, NULL, &err), 0);
	cr_assert_eq(rec->version, 8);
	cr_assert_eq(rec->generation, 101);
	record_free(rec);

	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	cr_assert_eq(st.versions, 4);
	cr_assert_eq(st.names, 1);
}

Test(catalog, restore_of_a_new_name_creates_it)
{
	Lorastore__VersionRecord *rec = record_new("rebuilt/one", 2, 0);
	rec->version = 3;
	rec->generation = 9;
	cr_assert_eq(ls_catalog_restore(cat, rec, &err), 0, "%s", err.msg);
	record_free(rec);
	cr_assert_eq(add_name("rebuilt/one"), 4);
	cr_assert_eq(next_generation(), 11);
}

Test(catalog, restore_of_an_existing_version_fails)
{
	add_name("acme/chat");
	Lorastore__VersionRecord *rec = record_new("acme/chat", 2, 0);
	rec->version = 1;
	rec->generation = 500;
	cr_assert_eq(ls_catalog_restore(cat, rec, &err), LS_E_CATALOG);
	cr_assert_eq(err.code, LS_E_CATALOG);
	record_free(rec);
	cr_assert_lt(next_generation(), 500);
}

Test(catalog, catalog_survives_close_and_reopen)
{
	for (int i = 0; i < 3; i++)
		add_name("acme/chat");
	add_name("acme/code");
	cr_assert_eq(ls_catalog_delete(cat, "acme/code", 0, NULL, NULL, &err), 0);
	uint64_t gen = next_generation();
	reopen();
	cr_assert_eq(next_generation(), gen);
	Lorastore__VersionRecord *got;
	for (uint32_t v = 1; v <= 3; v++) {
		cr_assert_eq(ls_catalog_get(cat, "acme/chat", v, &got, &err), 0, "%s", err.msg);
		cr_assert_eq(got->version, v);
		lorastore__version_record__free_unpacked(got, NULL);
	}
	cr_assert_eq(ls_catalog_get(cat, "acme/chat", 0, &got, &err), 0);
	cr_assert_eq(got->version, 3);
	lorastore__version_record__free_unpacked(got, NULL);
	cr_assert_eq(add_name("acme/chat"), 4);
	cr_assert_eq(add_name("acme/code"), 2, "deleted versions are not reused after reopen");
}

Test(catalog, stats_count_only_names_with_versions)
{
	add_name("a/one");
	add_name("a/one");
	add_name("a/two");
	add_name("a/three");
	cr_assert_eq(ls_catalog_delete(cat, "a/three", 1, NULL, NULL, &err), 0);
	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0, "%s", err.msg);
	cr_assert_eq(st.names, 2);
	cr_assert_eq(st.versions, 3);
	cr_assert_eq(st.next_generation, 5);
	cr_assert_geq(st.map_size, (uint64_t)64 << 20);
}

/* ---- threads --------------------------------------------------------- */

#define THREAD_WRITERS 4
#define THREAD_ADDS 300 /* of about 58 KiB each: 70 MiB, past the initial map */

struct writer {
	pthread_t thread;
	int id;
	int failures;
	uint32_t versions[THREAD_ADDS];
	uint64_t generations[THREAD_ADDS];
};

static atomic_int writers_left;
static atomic_int reader_failures;

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	char name[32];
	snprintf(name, sizeof(name), "thread-%d/adapter", w->id);
	Lorastore__VersionRecord *rec = record_new(name, 200, 160);
	for (int i = 0; i < THREAD_ADDS; i++) {
		struct ls_err e;
		if (ls_catalog_add(cat, rec, NULL, NULL, &e) != 0) {
			w->failures++;
			continue;
		}
		w->versions[i] = rec->version;
		w->generations[i] = rec->generation;
	}
	record_free(rec);
	atomic_fetch_sub(&writers_left, 1);
	return NULL;
}

static int reader_count(void *ud, const Lorastore__VersionRecord *rec)
{
	if (rec->n_tensors != 200)
		atomic_fetch_add(&reader_failures, 1);
	return 0;
}

static void *reader_main(void *arg)
{
	while (atomic_load(&writers_left) > 0) {
		struct ls_err e;
		bool more;
		if (ls_catalog_list(cat, "thread-", NULL, 0, 20, reader_count, NULL, &more, &e))
			atomic_fetch_add(&reader_failures, 1);
		Lorastore__VersionRecord *got;
		int rc = ls_catalog_get(cat, "thread-0/adapter", 0, &got, &e);
		if (rc == 0)
			lorastore__version_record__free_unpacked(got, NULL);
		else if (rc != LS_E_NOT_FOUND)
			atomic_fetch_add(&reader_failures, 1);
		usleep(200);
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

Test(catalog, threads_add_and_read_while_the_map_grows, .timeout = 120)
{
	static struct writer writers[THREAD_WRITERS];
	pthread_t readers[2];
	atomic_store(&writers_left, THREAD_WRITERS);
	for (int i = 0; i < THREAD_WRITERS; i++) {
		writers[i].id = i;
		cr_assert_eq(pthread_create(&writers[i].thread, NULL, writer_main, &writers[i]), 0);
	}
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&readers[i], NULL, reader_main, NULL), 0);
	for (int i = 0; i < THREAD_WRITERS; i++)
		pthread_join(writers[i].thread, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(readers[i], NULL);

	cr_assert_eq(atomic_load(&reader_failures), 0);
	uint64_t *gens = calloc(THREAD_WRITERS * THREAD_ADDS, sizeof(*gens));
	for (int i = 0; i < THREAD_WRITERS; i++) {
		cr_assert_eq(writers[i].failures, 0, "writer %d", i);
		for (int j = 0; j < THREAD_ADDS; j++) {
			cr_assert_eq(writers[i].versions[j], (uint32_t)j + 1);
			gens[i * THREAD_ADDS + j] = writers[i].generations[j];
		}
	}
	qsort(gens, THREAD_WRITERS * THREAD_ADDS, sizeof(*gens), cmp_u64);
	for (size_t k = 1; k < THREAD_WRITERS * THREAD_ADDS; k++)
		cr_assert_neq(gens[k], gens[k - 1], "generation %lu given twice",
			      (unsigned long)gens[k]);
	free(gens);

	struct ls_catalog_stats st;
	cr_assert_eq(ls_catalog_stats(cat, &st, &err), 0);
	cr_assert_eq(st.versions, THREAD_WRITERS * THREAD_ADDS);
	cr_assert_gt(st.map_size, (uint64_t)64 << 20, "the map never grew");
}

/* Remove what a catalog made before the digest counts lacks: the counts and their marker. */
static void forget_digest_counts(void)
{
	ls_catalog_close(cat);
	cat = NULL;
	MDB_env *env;
	cr_assert_eq(mdb_env_create(&env), 0);
	cr_assert_eq(mdb_env_set_maxdbs(env, 8), 0);
	cr_assert_eq(mdb_env_open(env, test_dir, MDB_NOTLS, 0600), 0);
	MDB_txn *txn;
	cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
	MDB_dbi meta, digests;
	cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &meta), 0);
	cr_assert_eq(mdb_dbi_open(txn, "digests", 0, &digests), 0);
	MDB_val k = {strlen("digests_counted"), "digests_counted"};
	cr_assert_eq(mdb_del(txn, meta, &k, NULL), 0);
	cr_assert_eq(mdb_drop(txn, digests, 1), 0);
	cr_assert_eq(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	reopen();
}

Test(catalog, versions_sharing_a_blob_are_counted_and_an_older_catalog_counts_them_at_open)
{
	uint8_t shared[32], other[32];
	memset(shared, 0xab, 32);
	memset(other, 0xcd, 32);
	for (int i = 0; i < 3; i++) {
		Lorastore__VersionRecord *rec = record_new(i == 2 ? "b" : "a", 2, 0);
		if (i == 1)
			memset(rec->digest.data, 0xcd, 32);
		cr_assert_eq(ls_catalog_add(cat, rec, NULL, NULL, &err), 0, "%s", err.msg);
		record_free(rec);
	}
	uint32_t n;
	cr_assert_eq(ls_catalog_digest_refs(cat, shared, 32, &n, &err), 0);
	cr_assert_eq(n, 2, "a@1 and b@1 use one blob");
	forget_digest_counts();
	cr_assert_eq(ls_catalog_digest_refs(cat, shared, 32, &n, &err), 0);
	cr_assert_eq(n, 2, "counted again at open");
	cr_assert_eq(ls_catalog_digest_refs(cat, other, 32, &n, &err), 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(ls_catalog_delete(cat, "a", 0, NULL, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_catalog_digest_refs(cat, other, 32, &n, &err), 0);
	cr_assert_eq(n, 0, "no version uses it: its blob may go");
	cr_assert_eq(ls_catalog_digest_refs(cat, shared, 32, &n, &err), 0);
	cr_assert_eq(n, 1);
}
