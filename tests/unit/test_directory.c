/*
 * The directory of the warm path (proto/directory.h) read while it is
 * written: a reader racing the daemon's updates gets a whole entry or none,
 * never a torn one, for references and resident entries alike.  One writer
 * thread and one reader thread here stand for the daemon and a client (the
 * seqlock is the same whether they share a process or a memfd).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "directory.h"

static struct ls_dir_hdr *dir_new(void)
{
	struct ls_dir_hdr *d = aligned_alloc(4096, ls_dir_size());
	cr_assert_not_null(d);
	memset(d, 0, ls_dir_size());
	ls_dir_init(d, 42);
	cr_assert_not_null(ls_dir_open(d, ls_dir_size()));
	return d;
}

/* An entry whose every field follows from v: a torn copy mixes two v's. */
static struct ls_dir_where where_of(uint64_t gen, uint64_t v)
{
	return (struct ls_dir_where){.generation = gen, .tier = 1, .data_slab_id = (uint32_t)v,
				     .table_slab_id = (uint32_t)(v + 1), .data_slab_size = v * 3,
				     .data_offset = v * 5, .table_slab_size = v * 7,
				     .table_offset = v * 11, .table_length = v * 13,
				     .pinned_bytes = v * 17};
}

static bool where_whole(const struct ls_dir_where *w)
{
	uint64_t v = w->data_slab_id;
	return w->table_slab_id == v + 1 && w->data_slab_size == v * 3 && w->data_offset == v * 5 &&
	       w->table_slab_size == v * 7 && w->table_offset == v * 11 &&
	       w->table_length == v * 13 && w->pinned_bytes == v * 17;
}

static _Atomic bool stop;
static struct ls_dir_hdr *shared;

/* A moment between writes: readers see the entry both settled and changing. */
static void writer_pause(uint64_t k)
{
	if (k % 64 == 0)
		sched_yield();
	for (volatile int i = 0; i < 200; i++)
		;
}

static void *res_writer(void *arg)
{
	(void)arg;
	for (uint64_t v = 1; !atomic_load(&stop); v++) {
		struct ls_dir_where w = where_of(9, v);
		cr_assert(ls_dir_res_put(shared, &w));
		if (v % 7 == 0)
			ls_dir_res_remove(shared, 9, 1);
		writer_pause(v);
	}
	return NULL;
}

Test(directory, a_resident_entry_read_while_it_is_rewritten_is_whole_or_absent)
{
	shared = dir_new();
	atomic_store(&stop, false);
	pthread_t t;
	pthread_create(&t, NULL, res_writer, NULL);
	uint64_t found = 0, absent = 0, torn = 0;
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		for (int i = 0; i < 1000; i++) {
			struct ls_dir_where w;
			const struct ls_dir_res *e;
			uint64_t seq;
			if (!ls_dir_res_get(shared, 9, 1, &w, &e, &seq)) {
				absent++;
				continue;
			}
			found++;
			torn += !where_whole(&w) || w.generation != 9 || w.tier != 1 || (seq & 1);
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 < 400);
	atomic_store(&stop, true);
	pthread_join(t, NULL);
	cr_log_info("%llu reads found the entry, %llu did not", (unsigned long long)found,
		    (unsigned long long)absent);
	cr_assert_gt(found, 1000, "the reader never saw the entry: nothing was tested");
	cr_assert_eq(torn, 0, "%llu torn reads", (unsigned long long)torn);
	free(shared);
}

/* Two references of different lengths written in turn into one slot. */
static const char *ref_short = "t/a";
static char ref_long[LS_ALIAS_MAX + 1];

static void *name_writer(void *arg)
{
	(void)arg;
	struct ls_dir_name *n = &ls_dir_names(shared)[ls_dir_ref_slot(ref_short)];
	for (uint64_t k = 0; !atomic_load(&stop); k++) {
		if (k % 2)
			ls_dir_name_write(n, ref_long, 2, 0);
		else
			ls_dir_name_write(n, ref_short, 1, 0);
		writer_pause(k);
	}
	return NULL;
}

Test(directory, a_reference_read_while_its_slot_changes_hands_never_resolves_to_another)
{
	shared = dir_new();
	/* "t/a" followed by more: a torn read of its first word would match the short one. */
	memset(ref_long, 'x', LS_ALIAS_MAX);
	memcpy(ref_long, "t/a", 3);
	ref_long[LS_ALIAS_MAX] = '\0';
	atomic_store(&stop, false);
	pthread_t t;
	pthread_create(&t, NULL, name_writer, NULL);
	uint64_t hits_short = 0, wrong = 0;
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		for (int i = 0; i < 1000; i++) {
			uint64_t g = ls_dir_ref_get(shared, ref_short, 0);
			hits_short += g == 1;
			wrong += g != 0 && g != 1;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 < 400);
	atomic_store(&stop, true);
	pthread_join(t, NULL);
	cr_assert_gt(hits_short, 100, "the short reference was never found: nothing was tested");
	cr_assert_eq(wrong, 0, "%llu reads resolved \"t/a\" to the other reference's generation",
		     (unsigned long long)wrong);
	free(shared);
}

Test(directory, the_latest_version_by_name_expires_after_the_ttl_and_a_fixed_one_does_not)
{
	shared = dir_new();
	atomic_store(&shared->latest_ttl_ns, 1000);
	ls_dir_name_write(&ls_dir_names(shared)[ls_dir_ref_slot("t/b")], "t/b", 5, 100);
	ls_dir_name_write(&ls_dir_names(shared)[ls_dir_ref_slot("t/b@5")], "t/b@5", 5, 100);
	cr_assert_eq(ls_dir_ref_get(shared, "t/b", 1099), 5);
	cr_assert_eq(ls_dir_ref_get(shared, "t/b", 1100), 0, "\"name\" outlived its TTL");
	cr_assert_eq(ls_dir_ref_get(shared, "t/b@5", 1000000), 5, "a fixed version expired");
	free(shared);
}

Test(directory, a_full_set_refuses_another_version_and_a_removal_makes_room)
{
	shared = dir_new();
	struct ls_dir_where w = where_of(1, 1), got;
	const struct ls_dir_res *e0, *e;
	uint64_t seq, same[LS_DIR_WAYS] = {1}, refused = 0;
	unsigned n = 1;
	cr_assert(ls_dir_res_put(shared, &w));
	cr_assert(ls_dir_res_get(shared, 1, 1, &got, &e0, &seq));
	size_t set0 = (size_t)(e0 - ls_dir_residents(shared)) / LS_DIR_WAYS;
	/* Fill generation 1's set with others that hash there; only it can fill up. */
	for (uint64_t g = 2; g < 10000000 && !refused; g++) {
		w = where_of(g, g);
		if (!ls_dir_res_put(shared, &w)) {
			refused = g;
			break;
		}
		cr_assert(ls_dir_res_get(shared, g, 1, &got, &e, &seq));
		if ((size_t)(e - ls_dir_residents(shared)) / LS_DIR_WAYS == set0)
			same[n++] = g;
		else
			ls_dir_res_remove(shared, g, 1);
	}
	cr_assert_neq(refused, 0, "no set ever filled");
	cr_assert_eq(n, LS_DIR_WAYS, "a set of %u refused its entry %u", LS_DIR_WAYS, n + 1);
	ls_dir_res_remove(shared, same[2], 1);
	cr_assert(!ls_dir_res_get(shared, same[2], 1, &got, &e, &seq), "removed, yet found");
	w = where_of(refused, refused);
	cr_assert(ls_dir_res_put(shared, &w), "the removal made no room");
	cr_assert(ls_dir_res_get(shared, refused, 1, &got, &e, &seq) && where_whole(&got));
	free(shared);
}

Test(directory, publishing_a_version_again_where_it_lies_leaves_its_sequence_alone)
{
	/* Every request's grant publishes again: warm acquires under way must not back out. */
	shared = dir_new();
	struct ls_dir_where w = where_of(3, 3), got;
	const struct ls_dir_res *e;
	uint64_t seq0, seq1, seq2;
	cr_assert(ls_dir_res_put(shared, &w));
	cr_assert(ls_dir_res_get(shared, 3, 1, &got, &e, &seq0));
	cr_assert(ls_dir_res_put(shared, &w));
	cr_assert(ls_dir_res_get(shared, 3, 1, &got, &e, &seq1));
	cr_assert_eq(seq1, seq0, "the same entry published again moved its sequence");
	w.data_offset += 4096;
	cr_assert(ls_dir_res_put(shared, &w));
	cr_assert(ls_dir_res_get(shared, 3, 1, &got, &e, &seq2));
	cr_assert_neq(seq2, seq1, "a changed entry kept its sequence");
	cr_assert_eq(got.data_offset, w.data_offset);
	free(shared);
}
