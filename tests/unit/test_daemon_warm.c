/*
 * Warm acquires through a real lorastored: the client reads each adapter's
 * tensor table in the shared mapping and the daemon resolves references from
 * its cache, yet every acquire still sees the right version and the right
 * bytes, also after the adapter moved.  An acquire that may not wait
 * (timeout 0) is answered only by a resident version, such as one prefetched.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lorastore.h>

#include "adapter_sum.h"
#include "daemon_proc.h"
#include "synth.h"

static struct ls_daemon_proc dp;
static char *work_dir;
static lorastore *conn;

static void setup(void)
{
	work_dir = synth_mkdtemp("warm");
	const char *args[] = {"--host-budget", "64MiB", NULL};
	cr_assert_eq(ls_daemon_start(&dp, NULL, args), 0, "the daemon did not start");
	cr_assert_eq(lorastore_connect(dp.socket, &conn), 0, "connect: %s", lorastore_errmsg(conn));
}

static void teardown(void)
{
	lorastore_close(conn);
	cr_expect_eq(ls_daemon_stop(&dp), 0, "lorastored did not exit 0");
	ls_daemon_cleanup(&dp);
	synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(warm, .init = setup, .fini = teardown, .timeout = 60);

static void import_layers(const char *name, uint64_t seed, int layers)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/a%llu", work_dir, (unsigned long long)seed);
	mkdir(dir, 0755);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = layers, .rank = 4, .seed = seed};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	lorastore_import_opts io = {.name = name};
	cr_assert_eq(lorastore_import_dir(conn, dir, &io, NULL), 0, "import %s: %s", name,
		     lorastore_errmsg(conn));
}

static void import(const char *name, uint64_t seed)
{
	import_layers(name, seed, 2);
}

static uint64_t tensor_sum(const lorastore_adapter *ad)
{
	uint64_t h = ls_adapter_sum(ad);
	cr_assert_neq(h, 0, "the adapter's tensors cannot be read");
	return h;
}

Test(warm, second_acquire_on_a_connection_sees_the_same_table_and_the_same_bytes)
{
	import("w/a", 1);
	lorastore_adapter *a1, *a2;
	cr_assert_eq(lorastore_acquire(conn, "w/a", -1, &a1), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_acquire(conn, "w/a", -1, &a2), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter_info i1, i2;
	lorastore_adapter_info_get(a1, &i1);
	lorastore_adapter_info_get(a2, &i2);
	cr_assert_eq(i1.generation, i2.generation);
	cr_assert_eq(i1.tensor_count, i2.tensor_count);
	cr_assert_str_eq(i2.name, "w/a");
	lorastore_tensor t;
	cr_assert_eq(lorastore_adapter_tensor(a2, "model.layers.1.self_attn.v_proj", LORASTORE_KIND_B,
					      &t),
		     0);
	cr_assert_eq(tensor_sum(a1), tensor_sum(a2));
	cr_assert_eq(lorastore_adapter_release(a1), 0);
	cr_assert_eq(lorastore_adapter_release(a2), 0);
}

Test(warm, a_reloaded_adapter_reads_right_through_its_new_table)
{
	import("w/a", 1);
	import("w/b", 2);
	lorastore_adapter *ad;
	cr_assert_eq(lorastore_acquire(conn, "w/a", -1, &ad), 0, "%s", lorastore_errmsg(conn));
	uint64_t before = tensor_sum(ad);
	lorastore_adapter_release(ad);
	/* Evict a, load b where a was, then load a again elsewhere. */
	cr_assert_eq(lorastore_evict(conn, "w/a"), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_load(conn, "w/b"), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_acquire(conn, "w/a", -1, &ad), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(tensor_sum(ad), before);
	lorastore_adapter_release(ad);
}

Test(warm, a_new_version_is_acquired_by_name_right_after_its_import)
{
	import("w/v", 1);
	lorastore_adapter *ad;
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_acquire(conn, "w/v", -1, &ad), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter_info_get(ad, &info);
	cr_assert_eq(info.version, 1);
	lorastore_adapter_release(ad);
	import("w/v", 2);
	cr_assert_eq(lorastore_acquire(conn, "w/v", -1, &ad), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter_info_get(ad, &info);
	cr_assert_eq(info.version, 2, "the name still resolved to version %u", info.version);
	lorastore_adapter_release(ad);
}

Test(warm, a_deleted_adapter_is_not_served_from_the_reference_cache)
{
	import("w/d", 1);
	lorastore_adapter *ad;
	cr_assert_eq(lorastore_acquire(conn, "w/d", -1, &ad), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter_release(ad);
	cr_assert_eq(lorastore_acquire(conn, "w/d@1", -1, &ad), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter_release(ad);
	cr_assert_eq(lorastore_delete(conn, "w/d"), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_acquire(conn, "w/d", -1, &ad), LORASTORE_E_NOT_FOUND);
	cr_assert_eq(lorastore_acquire(conn, "w/d@1", -1, &ad), LORASTORE_E_NOT_FOUND);
}

/* Bug fixed: listings counted the tensor table of a record without its tensors. */
Test(warm, listing_and_show_give_the_resident_size_the_tier_holds_once_loaded)
{
	/* 48 layers: a table of several pages, where the record's tensors count. */
	import_layers("w/size", 3, 48);
	lorastore_list *ls = NULL, *show = NULL;
	cr_assert_eq(lorastore_list_page(conn, "w/size", NULL, 0, &ls), 0, "%s",
		     lorastore_errmsg(conn));
	cr_assert_eq(lorastore_show(conn, "w/size", &show), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_list_count(ls), 1);
	uint64_t listed = lorastore_list_entry(ls, 0)->resident_bytes;
	uint64_t shown = lorastore_list_entry(show, 0)->resident_bytes;
	lorastore_list_free(ls);
	lorastore_list_free(show);
	cr_assert_eq(listed, shown, "ls says %llu bytes, show %llu", (unsigned long long)listed,
		     (unsigned long long)shown);
	cr_assert_eq(lorastore_load(conn, "w/size"), 0, "%s", lorastore_errmsg(conn));
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(conn, &st), 0);
	cr_assert_eq(st.tiers[0].used, listed, "the tier holds %llu bytes, ls says %llu",
		     (unsigned long long)st.tiers[0].used, (unsigned long long)listed);
}

/* Whether ref is resident, and its pins. */
static bool resident_of(const char *ref, uint32_t *pins)
{
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_show(conn, ref, &l), 0, "show %s: %s", ref, lorastore_errmsg(conn));
	const lorastore_entry *e = lorastore_list_entry(l, 0);
	bool resident = e->resident;
	*pins = e->pins;
	lorastore_list_free(l);
	return resident;
}

static uint64_t leases_held(void)
{
	lorastore_stats s;
	cr_assert_eq(lorastore_stats_get(conn, &s), 0, "stats: %s", lorastore_errmsg(conn));
	return s.leases;
}

Test(warm, timeout_zero_acquire_of_a_non_resident_adapter_fails_with_etimedout)
{
	import("t0/a", 71);
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn, "t0/a", 0, &ad);
	cr_assert_eq(rc, -ETIMEDOUT, "acquire with timeout 0 gave %d (%s)", rc,
		     lorastore_strerror(rc));
	cr_assert_null(ad);
	cr_assert_eq(leases_held(), 0);
	/* Once resident, the same call succeeds at once. */
	cr_assert_eq(lorastore_load(conn, "t0/a"), 0, "load: %s", lorastore_errmsg(conn));
	rc = lorastore_acquire(conn, "t0/a", 0, &ad);
	cr_assert_eq(rc, 0, "acquire of a resident adapter with timeout 0: %s",
		     lorastore_errmsg(conn));
	cr_assert_eq(lorastore_adapter_release(ad), 0);
}

Test(warm, prefetch_makes_adapters_resident_without_leases)
{
	import("pf/a", 81);
	import("pf/b", 82);
	const char *refs[] = {"pf/a", "pf/b"};
	int rc = lorastore_prefetch(conn, refs, 2);
	cr_assert_eq(rc, 0, "prefetch: %s (%s)", lorastore_errmsg(conn), lorastore_strerror(rc));
	/* Prefetch answers before the loads finish. */
	uint32_t pins_a = 0, pins_b = 0;
	for (int waited_ms = 0; !resident_of("pf/a", &pins_a) || !resident_of("pf/b", &pins_b);
	     waited_ms += 10) {
		cr_assert_lt(waited_ms, 5000, "prefetched adapters not resident after 5 s");
		usleep(10000);
	}
	cr_assert_eq(pins_a, 0);
	cr_assert_eq(pins_b, 0);
	cr_assert_eq(leases_held(), 0);
	/* Resident, so a timeout-0 acquire hits; and nothing pins them: evict works. */
	lorastore_adapter *ad = NULL;
	cr_assert_eq(lorastore_acquire(conn, "pf/a", 0, &ad), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	cr_assert_eq(lorastore_evict(conn, "pf/a"), 0, "%s", lorastore_errmsg(conn));
	cr_assert_eq(lorastore_evict(conn, "pf/b"), 0, "%s", lorastore_errmsg(conn));
}
