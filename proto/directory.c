/* The directory and the lease page (directory.h): seqlocked reads and the daemon's writes. */
#include "directory.h"

#include <string.h>
#include <time.h>

#define LS_DIR_TRIES 4 /* reads of an entry being written, before giving up */

_Static_assert(sizeof(struct ls_dir_res) == 128, "a resident entry is two cache lines");
_Static_assert(LS_LEASE_SLOTS >= 256, "a lease page holds at least 256 leases");

static size_t ls_dir_names_off(void)
{
	return (sizeof(struct ls_dir_hdr) + 127) & ~(size_t)127;
}

static size_t ls_dir_res_off(void)
{
	return ls_dir_names_off() + ((LS_DIR_NAMES * sizeof(struct ls_dir_name) + 127) & ~(size_t)127);
}

size_t ls_dir_size(void)
{
	size_t end = ls_dir_res_off() + (size_t)LS_DIR_SETS * LS_DIR_WAYS * sizeof(struct ls_dir_res);
	return (end + 4095) & ~(size_t)4095;
}

void ls_dir_init(void *mem, uint64_t instance)
{
	struct ls_dir_hdr *d = mem;
	d->magic = LS_DIR_MAGIC;
	d->format = LS_DIR_FORMAT;
	d->bytes = ls_dir_size();
	d->instance = instance;
	d->n_names = LS_DIR_NAMES;
	d->n_sets = LS_DIR_SETS;
	d->ways = LS_DIR_WAYS;
	d->names = ls_dir_names_off();
	d->residents = ls_dir_res_off();
}

const struct ls_dir_hdr *ls_dir_open(const void *mem, size_t avail)
{
	const struct ls_dir_hdr *d = mem;
	if (!mem || avail < sizeof(*d) || d->magic != LS_DIR_MAGIC || d->format != LS_DIR_FORMAT ||
	    d->bytes > avail || d->n_names != LS_DIR_NAMES || d->n_sets != LS_DIR_SETS ||
	    d->ways != LS_DIR_WAYS || d->n_tiers > LS_DIR_MAX_TIERS ||
	    d->names != ls_dir_names_off() || d->residents != ls_dir_res_off() ||
	    d->bytes < ls_dir_size())
		return NULL;
	return d;
}

uint32_t ls_dir_ref_slot(const char *ref)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (const unsigned char *p = (const unsigned char *)ref; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h & (LS_DIR_NAMES - 1);
}

static uint32_t ls_dir_res_set(uint64_t key)
{
	key *= 0x9e3779b97f4a7c15ull; /* Fibonacci hashing: the high bits mix every bit of key */
	return (uint32_t)(key >> 40) & (LS_DIR_SETS - 1);
}

static int64_t ls_dir_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * Compare ref with the entry's reference word by word: the caller
 * checks the sequence afterwards, so a half-written entry is never kept.
 */
static bool ls_dir_ref_equal(const struct ls_dir_name *n, const char *ref, size_t len)
{
	for (size_t w = 0; w * 8 <= len; w++) {
		uint64_t word = atomic_load_explicit(&n->ref[w], memory_order_acquire);
		char have[8], want[8] = {0};
		memcpy(have, &word, 8);
		size_t part = len + 1 - w * 8 < 8 ? len + 1 - w * 8 : 8;
		memcpy(want, ref + w * 8, part);
		if (memcmp(have, want, part) != 0)
			return false;
	}
	return true;
}

uint64_t ls_dir_ref_get(const struct ls_dir_hdr *d, const char *ref, int64_t now_ns)
{
	size_t len = strlen(ref);
	if (len > LS_ALIAS_MAX)
		return 0;
	const struct ls_dir_name *n = &ls_dir_names(d)[ls_dir_ref_slot(ref)];
	for (int t = 0; t < LS_DIR_TRIES; t++) {
		uint64_t s1 = atomic_load_explicit(&n->seq, memory_order_acquire);
		if (s1 & 1)
			continue;
		uint64_t gen = atomic_load_explicit(&n->generation, memory_order_acquire);
		int64_t put_ns = atomic_load_explicit(&n->put_ns, memory_order_acquire);
		bool same = gen && ls_dir_ref_equal(n, ref, len);
		if (atomic_load_explicit(&n->seq, memory_order_relaxed) != s1)
			continue;
		if (!same)
			return 0;
		int64_t ttl = atomic_load_explicit(&d->latest_ttl_ns, memory_order_relaxed);
		if (ttl && ls_dir_ref_is_latest(ref)) {
			if (now_ns < 0)
				now_ns = ls_dir_now_ns();
			if (now_ns - put_ns >= ttl)
				return 0;
		}
		return gen;
	}
	return 0;
}

bool ls_dir_res_get(const struct ls_dir_hdr *d, uint64_t generation, uint32_t tier,
		    struct ls_dir_where *out, const struct ls_dir_res **entry, uint64_t *seq)
{
	uint64_t key = LS_LEASE_WORD(generation, tier);
	const struct ls_dir_res *set = &ls_dir_residents(d)[(size_t)ls_dir_res_set(key) * LS_DIR_WAYS];
	for (uint32_t w = 0; w < LS_DIR_WAYS; w++) {
		const struct ls_dir_res *e = &set[w];
		for (int t = 0; t < LS_DIR_TRIES; t++) {
			uint64_t s1 = atomic_load_explicit(&e->seq, memory_order_acquire);
			if (s1 & 1)
				continue;
			uint64_t k = atomic_load_explicit(&e->key, memory_order_acquire);
			uint64_t ids = atomic_load_explicit(&e->slab_ids, memory_order_acquire);
			out->data_slab_size = atomic_load_explicit(&e->data_slab_size, memory_order_acquire);
			out->data_offset = atomic_load_explicit(&e->data_offset, memory_order_acquire);
			out->table_slab_size = atomic_load_explicit(&e->table_slab_size, memory_order_acquire);
			out->table_offset = atomic_load_explicit(&e->table_offset, memory_order_acquire);
			out->table_length = atomic_load_explicit(&e->table_length, memory_order_acquire);
			out->pinned_bytes = atomic_load_explicit(&e->pinned_bytes, memory_order_acquire);
			if (atomic_load_explicit(&e->seq, memory_order_relaxed) != s1)
				continue;
			if (k != key)
				break; /* another version's entry, or none: the next way */
			out->generation = generation;
			out->tier = tier;
			out->data_slab_id = (uint32_t)(ids >> 32);
			out->table_slab_id = (uint32_t)ids;
			*entry = e;
			*seq = s1;
			return true;
		}
	}
	return false;
}

/* ---- Writes (one writer: the daemon's loop thread) */

/*
 * The odd sequence: a seq_cst store, the daemon's half of the pattern that
 * keeps a version in a page from being freed (directory.h).  The fields are
 * stored with release order after it, so a reader that sees a new field
 * value sees the sequence moved too.
 */
static void ls_seq_begin(_Atomic uint64_t *seq)
{
	uint64_t s = atomic_load_explicit(seq, memory_order_relaxed);
	atomic_store_explicit(seq, s + 1, memory_order_seq_cst);
}

static void ls_seq_end(_Atomic uint64_t *seq)
{
	uint64_t s = atomic_load_explicit(seq, memory_order_relaxed);
	atomic_store_explicit(seq, s + 1, memory_order_release);
}

void ls_dir_name_write(struct ls_dir_name *n, const char *ref, uint64_t generation,
		       int64_t put_ns)
{
	ls_seq_begin(&n->seq);
	atomic_store_explicit(&n->generation, generation, memory_order_release);
	atomic_store_explicit(&n->put_ns, put_ns, memory_order_release);
	if (generation) {
		size_t len = strnlen(ref, LS_ALIAS_MAX);
		for (size_t w = 0; w * 8 <= len; w++) {
			char part[8] = {0};
			memcpy(part, ref + w * 8, len + 1 - w * 8 < 8 ? len + 1 - w * 8 : 8);
			uint64_t word;
			memcpy(&word, part, 8);
			atomic_store_explicit(&n->ref[w], word, memory_order_release);
		}
	}
	ls_seq_end(&n->seq);
}

static void ls_dir_res_write(struct ls_dir_res *e, uint64_t key, const struct ls_dir_where *w)
{
	ls_seq_begin(&e->seq);
	atomic_store_explicit(&e->key, key, memory_order_release);
	if (w) {
		atomic_store_explicit(&e->slab_ids,
				      (uint64_t)w->data_slab_id << 32 | w->table_slab_id,
				      memory_order_release);
		atomic_store_explicit(&e->data_slab_size, w->data_slab_size, memory_order_release);
		atomic_store_explicit(&e->data_offset, w->data_offset, memory_order_release);
		atomic_store_explicit(&e->table_slab_size, w->table_slab_size, memory_order_release);
		atomic_store_explicit(&e->table_offset, w->table_offset, memory_order_release);
		atomic_store_explicit(&e->table_length, w->table_length, memory_order_release);
		atomic_store_explicit(&e->pinned_bytes, w->pinned_bytes, memory_order_release);
	}
	ls_seq_end(&e->seq);
}

/* Whether entry e says what w says (the writer's own words: relaxed loads). */
static bool ls_dir_res_same(const struct ls_dir_res *e, const struct ls_dir_where *w)
{
	return atomic_load_explicit(&e->slab_ids, memory_order_relaxed) ==
		       ((uint64_t)w->data_slab_id << 32 | w->table_slab_id) &&
	       atomic_load_explicit(&e->data_slab_size, memory_order_relaxed) == w->data_slab_size &&
	       atomic_load_explicit(&e->data_offset, memory_order_relaxed) == w->data_offset &&
	       atomic_load_explicit(&e->table_slab_size, memory_order_relaxed) ==
		       w->table_slab_size &&
	       atomic_load_explicit(&e->table_offset, memory_order_relaxed) == w->table_offset &&
	       atomic_load_explicit(&e->table_length, memory_order_relaxed) == w->table_length &&
	       atomic_load_explicit(&e->pinned_bytes, memory_order_relaxed) == w->pinned_bytes;
}

bool ls_dir_res_put(struct ls_dir_hdr *d, const struct ls_dir_where *w)
{
	uint64_t key = LS_LEASE_WORD(w->generation, w->tier);
	struct ls_dir_res *set = &ls_dir_residents(d)[(size_t)ls_dir_res_set(key) * LS_DIR_WAYS];
	struct ls_dir_res *free_way = NULL;
	for (uint32_t i = 0; i < LS_DIR_WAYS; i++) {
		uint64_t k = atomic_load_explicit(&set[i].key, memory_order_relaxed);
		if (k == key) {
			/*
			 * Published already where it still lies: no write, so the
			 * sequence stays and warm acquires under way keep their lease.
			 */
			if (!ls_dir_res_same(&set[i], w))
				ls_dir_res_write(&set[i], key, w);
			return true;
		}
		if (!k && !free_way)
			free_way = &set[i];
	}
	if (!free_way)
		return false;
	ls_dir_res_write(free_way, key, w);
	return true;
}

void ls_dir_res_remove(struct ls_dir_hdr *d, uint64_t generation, uint32_t tier)
{
	uint64_t key = LS_LEASE_WORD(generation, tier);
	struct ls_dir_res *set = &ls_dir_residents(d)[(size_t)ls_dir_res_set(key) * LS_DIR_WAYS];
	for (uint32_t i = 0; i < LS_DIR_WAYS; i++)
		if (atomic_load_explicit(&set[i].key, memory_order_relaxed) == key)
			ls_dir_res_write(&set[i], 0, NULL);
}
