/*
 * Two real lorastored nodes, each with its own state directory, fed from one
 * bucket of a real S3 server (SeaweedFS on loopback): what one node imports
 * the other serves with the same digest and bytes; "NAME" follows the fleet
 * within the TTL; a node with an empty state serves every version; the
 * origin's absence and wrong credentials are clear errors that name the
 * origin and never the secret.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <lorastore.h>

#include "adapter_sum.h"
#include "daemon_proc.h"
#include "proc_run.h"
#include "s3.h"
#include "s3_server.h"
#include "synth.h"

static struct ls_s3_server srv;
static char bucket[32];      /* this test's own, on the shared server */
static char origin_url[64];  /* s3://BUCKET/nodes: what the nodes are given and messages say */
static struct ls_daemon_proc node[2];
static lorastore *conn[2];
static char *work_dir;
static char creds[PATH_MAX];

/* Start node i (dir NULL: a new state) with the origin, these credentials and extra (or NULL). */
static void start_node_with(int i, const char *dir, const char *credentials, const char *extra,
			    const char *value)
{
	const char *args[] = {"--origin", origin_url, "--origin-endpoint", srv.endpoint,
			      "--origin-credentials", credentials, "--origin-ttl", "300",
			      "--origin-timeout", "15000", "--host-budget", "64MiB", extra, value,
			      NULL};
	cr_assert_eq(ls_daemon_start(&node[i], dir, args), 0, "node %d did not start", i);
	cr_assert_eq(lorastore_connect(node[i].socket, &conn[i]), 0, "connect: %s",
		     lorastore_errmsg(conn[i]));
}

static void start_node(int i, const char *dir, const char *credentials)
{
	start_node_with(i, dir, credentials, NULL, NULL);
}

static void stop_node(int i)
{
	lorastore_close(conn[i]);
	conn[i] = NULL;
	cr_expect_eq(ls_daemon_stop(&node[i]), 0, "node %d did not exit 0", i);
}

static void setup(void)
{
	if (!ls_weed_binary())
		cr_skip_test("no SeaweedFS weed binary: run scripts/install-deps");
	cr_assert_eq(ls_s3_server_use_shared(&srv), 0, "weed did not start");
	snprintf(bucket, sizeof(bucket), "d%d", (int)getpid());
	snprintf(origin_url, sizeof(origin_url), "s3://%s/nodes", bucket);
	cr_assert_eq(ls_s3_server_bucket(&srv, bucket), 0);
	work_dir = synth_mkdtemp("origin");
	snprintf(creds, sizeof(creds), "%s/credentials", work_dir);
	cr_assert_eq(ls_s3_server_credentials(creds, LS_S3_TEST_ACCESS_KEY, LS_S3_TEST_SECRET_KEY),
		     0);
	for (int i = 0; i < 2; i++)
		start_node(i, NULL, creds);
}

static void teardown(void)
{
	for (int i = 0; i < 2; i++) {
		if (conn[i])
			stop_node(i);
		ls_daemon_cleanup(&node[i]);
	}
	ls_s3_server_cleanup(&srv);
	if (work_dir)
		synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(origin, .init = setup, .fini = teardown, .timeout = 180);

/* One S3 server for the tests of this binary. */
#include "s3_shared_hooks.h"

/* A server of this test's own, which it may kill: both nodes restarted on it, empty. */
static void private_server(void)
{
	for (int i = 0; i < 2; i++) {
		stop_node(i);
		ls_daemon_cleanup(&node[i]);
	}
	memset(&srv, 0, sizeof(srv));
	cr_assert_eq(ls_s3_server_start(&srv), 0, "weed did not start");
	cr_assert_eq(ls_s3_server_bucket(&srv, bucket), 0);
	for (int i = 0; i < 2; i++)
		start_node(i, NULL, creds);
}

static void import_on(int i, const char *name, uint64_t seed)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/a%llu", work_dir, (unsigned long long)seed);
	mkdir(dir, 0755);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 4, .seed = seed};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	lorastore_import_opts io = {.name = name};
	cr_assert_eq(lorastore_import_dir(conn[i], dir, &io, NULL), 0, "import %s on node %d: %s",
		     name, i, lorastore_errmsg(conn[i]));
}

static uint64_t tensor_sum(const lorastore_adapter *ad)
{
	uint64_t h = ls_adapter_sum(ad);
	cr_assert_neq(h, 0, "the adapter's tensors cannot be read");
	return h;
}

struct held {
	lorastore_adapter *ad;
	lorastore_adapter_info info;
	uint64_t sum;
};

static struct held acquire_on(int i, const char *ref)
{
	struct held h;
	cr_assert_eq(lorastore_acquire(conn[i], ref, 30000, &h.ad), 0, "acquire %s on node %d: %s",
		     ref, i, lorastore_errmsg(conn[i]));
	cr_assert_eq(lorastore_adapter_info_get(h.ad, &h.info), 0);
	h.sum = tensor_sum(h.ad);
	return h;
}

Test(origin, an_adapter_imported_on_one_node_is_acquired_on_another_with_the_same_digest_and_bytes)
{
	import_on(0, "fleet/a", 1);
	struct held a = acquire_on(0, "fleet/a");
	struct held b = acquire_on(1, "fleet/a");
	cr_assert_eq(b.info.version, 1);
	cr_assert_eq(memcmp(a.info.digest, b.info.digest, 32), 0);
	cr_assert_eq(a.info.tensor_count, b.info.tensor_count);
	cr_assert_eq(a.sum, b.sum, "node 1 serves other bytes than node 0 imported");
	lorastore_adapter_release(a.ad);
	lorastore_adapter_release(b.ad);
}

Test(origin, a_new_version_on_one_node_is_served_by_name_on_the_other_within_the_ttl)
{
	import_on(0, "fleet/v", 1);
	struct held b1 = acquire_on(1, "fleet/v");
	cr_assert_eq(b1.info.version, 1);
	import_on(0, "fleet/v", 2);
	usleep(400 * 1000); /* the TTL is 300 ms */
	struct held b2 = acquire_on(1, "fleet/v");
	cr_assert_eq(b2.info.version, 2, "node 1 still serves version %u", b2.info.version);
	struct held a2 = acquire_on(0, "fleet/v@2");
	cr_assert_eq(a2.sum, b2.sum);
	/* The fixed version stays what it was. */
	struct held b1again = acquire_on(1, "fleet/v@1");
	cr_assert_eq(b1again.info.version, 1);
	cr_assert_eq(b1again.sum, b1.sum);
	lorastore_adapter_release(b1.ad);
	lorastore_adapter_release(b2.ad);
	lorastore_adapter_release(a2.ad);
	lorastore_adapter_release(b1again.ad);
}

Test(origin, a_node_restarted_with_an_empty_state_directory_serves_every_version)
{
	import_on(0, "fleet/r", 1);
	import_on(1, "fleet/r", 2);
	import_on(0, "fleet/s", 3);
	stop_node(1);
	ls_daemon_cleanup(&node[1]);
	start_node(1, NULL, creds);
	const char *refs[] = {"fleet/r@1", "fleet/r@2", "fleet/r", "fleet/s"};
	for (size_t k = 0; k < sizeof(refs) / sizeof(refs[0]); k++) {
		struct held a = acquire_on(0, refs[k]);
		struct held b = acquire_on(1, refs[k]);
		cr_assert_eq(a.info.version, b.info.version, "%s", refs[k]);
		cr_assert_eq(a.sum, b.sum, "%s", refs[k]);
		lorastore_adapter_release(a.ad);
		lorastore_adapter_release(b.ad);
	}
}

Test(origin, wrong_credentials_give_a_clear_error_naming_the_origin_not_the_secret)
{
	import_on(0, "fleet/c", 1);
	stop_node(1);
	char bad[PATH_MAX];
	snprintf(bad, sizeof(bad), "%s/bad-credentials", work_dir);
	static const char wrong[] = "wrong-secret-7Hk2";
	cr_assert_eq(ls_s3_server_credentials(bad, LS_S3_TEST_ACCESS_KEY, wrong), 0);
	start_node(1, node[1].dir, bad);
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn[1], "fleet/c", 30000, &ad);
	cr_assert_eq(rc, LORASTORE_E_ORIGIN, "%d: %s", rc, lorastore_errmsg(conn[1]));
	const char *msg = lorastore_errmsg(conn[1]);
	cr_assert(strstr(msg, origin_url), "%s", msg);
	cr_assert(strstr(msg, "credentials"), "%s", msg);
	cr_assert_null(strstr(msg, wrong), "the error shows the secret: %s", msg);
	/* Nor does the daemon's log. */
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof(cmd), "grep -c -- '%s' %s", wrong, node[1].log);
	FILE *p = popen(cmd, "r");
	int n = -1;
	cr_assert(fscanf(p, "%d", &n) == 1);
	pclose(p);
	cr_assert_eq(n, 0, "the log shows the secret");
}

static int64_t ms_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

Test(origin, with_the_origin_away_local_versions_serve_and_remote_ones_fail_then_succeed_once_back)
{
	private_server();
	import_on(0, "fleet/d", 1);
	struct held b1 = acquire_on(1, "fleet/d");
	lorastore_adapter_release(b1.ad);
	import_on(0, "fleet/d", 2);
	ls_s3_server_kill(&srv);
	usleep(400 * 1000);
	int64_t t0 = ms_now();
	/* "NAME" falls back on the local latest... */
	struct held local = acquire_on(1, "fleet/d");
	cr_assert_eq(local.info.version, 1);
	lorastore_adapter_release(local.ad);
	/* ...and a version only the origin has fails, clearly and soon. */
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn[1], "fleet/d@2", 30000, &ad);
	cr_assert_eq(rc, LORASTORE_E_ORIGIN, "%d: %s", rc, lorastore_errmsg(conn[1]));
	cr_assert(strstr(lorastore_errmsg(conn[1]), origin_url), "%s",
		  lorastore_errmsg(conn[1]));
	cr_assert_lt(ms_now() - t0, 10000);
	cr_assert_eq(ls_s3_server_start(&srv), 0);
	struct held b2 = acquire_on(1, "fleet/d@2");
	cr_assert_eq(b2.info.version, 2);
	lorastore_adapter_release(b2.ad);
}

/* The CLI against node i: its standard output (the test frees it); the status must be 0. */
static char *cli_on(int i, const char *const *args)
{
	struct ls_proc_result r;
	cr_assert_eq(ls_cli_run(node[i].socket, work_dir, args, &r), 0);
	cr_assert_eq(r.status, 0, "lorastore %s: %s", args[0], r.err);
	char *out = strdup(r.out);
	ls_proc_result_free(&r);
	return out;
}

Test(origin, versions_imported_before_the_origin_are_pushed_and_then_served_elsewhere)
{
	/* Node 0 without an origin: its versions stay its own. */
	stop_node(0);
	const char *plain[] = {"--host-budget", "64MiB", NULL};
	cr_assert_eq(ls_daemon_start(&node[0], node[0].dir, plain), 0);
	cr_assert_eq(lorastore_connect(node[0].socket, &conn[0]), 0);
	import_on(0, "fleet/old", 1);
	import_on(0, "fleet/old", 2);
	stop_node(0);
	start_node(0, node[0].dir, creds);
	lorastore_adapter *ad = NULL;
	cr_assert_eq(lorastore_acquire(conn[1], "fleet/old@1", 30000, &ad), LORASTORE_E_NOT_FOUND,
		     "%s", lorastore_errmsg(conn[1]));
	const char *push[] = {"push", "fleet/old", NULL};
	char *out = cli_on(0, push);
	cr_assert(strstr(out, "2 uploaded, 0 there already"), "%s", out);
	free(out);
	out = cli_on(0, push);
	cr_assert(strstr(out, "0 uploaded, 2 there already"), "%s", out);
	free(out);
	for (int v = 1; v <= 2; v++) {
		char ref[32];
		snprintf(ref, sizeof(ref), "fleet/old@%d", v);
		struct held a = acquire_on(0, ref), b = acquire_on(1, ref);
		cr_assert_eq(a.sum, b.sum, "%s", ref);
		lorastore_adapter_release(a.ad);
		lorastore_adapter_release(b.ad);
	}
	/* The next import anywhere takes the fleet's next number. */
	import_on(1, "fleet/old", 3);
	struct held b3 = acquire_on(1, "fleet/old@3");
	lorastore_adapter_release(b3.ad);
}

/* In `lorastore --json ls --origin` output: -1 when name@version is not listed, else "here". */
static int listed_here(const char *json, const char *name, uint32_t version)
{
	cJSON *doc = cJSON_Parse(json);
	cr_assert_not_null(doc, "not JSON: %s", json);
	int here = -1;
	const cJSON *v;
	cJSON_ArrayForEach(v, cJSON_GetObjectItem(doc, "versions"))
	{
		const cJSON *n = cJSON_GetObjectItem(v, "name");
		if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0 &&
		    cJSON_GetObjectItem(v, "version")->valuedouble == version)
			here = cJSON_IsTrue(cJSON_GetObjectItem(v, "here"));
	}
	cJSON_Delete(doc);
	return here;
}

Test(origin, the_cli_lists_the_origin_pulls_a_version_and_says_what_a_delete_did_there)
{
	import_on(0, "fleet/cli", 1);
	import_on(0, "fleet/cli", 2);
	const char *ls[] = {"--json", "ls", "--origin", "fleet/", NULL};
	char *out = cli_on(1, ls);
	cr_assert_eq(listed_here(out, "fleet/cli", 1), 0, "%s", out);
	cr_assert_eq(listed_here(out, "fleet/cli", 2), 0, "%s", out);
	cr_assert_eq(listed_here(out, "fleet/cli", 3), -1, "%s", out);
	free(out);
	const char *pull[] = {"pull", "fleet/cli@1", NULL};
	out = cli_on(1, pull);
	cr_assert(strstr(out, "fleet/cli@1 here"), "%s", out);
	free(out);
	out = cli_on(1, ls);
	cr_assert_eq(listed_here(out, "fleet/cli", 1), 1, "%s", out);
	cr_assert_eq(listed_here(out, "fleet/cli", 2), 0, "%s", out);
	free(out);
	const char *rm[] = {"rm", "--all", "fleet/cli", NULL};
	out = cli_on(1, rm);
	cr_assert(strstr(out, "deleted fleet/cli (1 version"), "%s", out);
	char said[128];
	snprintf(said, sizeof(said), "2 versions from the origin %s", origin_url);
	cr_assert(strstr(out, said), "%s", out);
	free(out);
	const char *ls_text[] = {"ls", "--origin", "fleet/cli", NULL};
	out = cli_on(0, ls_text);
	cr_assert(strstr(out, "no versions beginning with fleet/cli in the origin"), "%s", out);
	free(out);
	/* Stats count what the origin did for node 1. */
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(conn[1], &st), 0);
	cr_assert(strstr(st.origin.origin, origin_url), "%s", st.origin.origin);
	cr_assert_eq(st.origin.pulls, 1);
	cr_assert_geq(st.origin.requests, 4);
	cr_assert_eq(st.origin.refused, 0);
}

/* Node 1's stats once its disk cache has removed at least n versions (up to 10 s). */
static lorastore_stats stats_after_evictions(uint64_t n)
{
	lorastore_stats st;
	for (int i = 0; i < 200; i++) {
		cr_assert_eq(lorastore_stats_get(conn[1], &st), 0);
		if (st.origin.cache_evictions >= n)
			return st;
		usleep(50 * 1000);
	}
	cr_assert_fail("the disk cache removed %llu versions, not %llu",
		       (unsigned long long)st.origin.cache_evictions, (unsigned long long)n);
	return st;
}

static int here_on_1(const char *name, uint32_t version)
{
	const char *ls[] = {"--json", "ls", "--origin", name, NULL};
	char *out = cli_on(1, ls);
	int here = listed_here(out, name, version);
	free(out);
	return here;
}

/* Acquire on node 1, release, and drop it from memory: on disk only. */
static void use_once_on_1(const char *ref)
{
	struct held h = acquire_on(1, ref);
	lorastore_adapter_release(h.ad);
	cr_assert_eq(lorastore_evict(conn[1], ref), 0, "%s", lorastore_errmsg(conn[1]));
}

Test(origin, the_disk_budget_removes_pulled_blobs_no_tier_holds_and_never_a_held_one)
{
	const char *names[] = {"cache/a", "cache/b", "cache/c", "cache/d"};
	for (int i = 0; i < 4; i++)
		import_on(0, names[i], 40 + (uint64_t)i);
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_show(conn[0], "cache/a", &l), 0);
	uint64_t blob = lorastore_list_entry(l, 0)->blob_bytes;
	lorastore_list_free(l);
	/* Room for two pulled blobs and a half. */
	stop_node(1);
	ls_daemon_cleanup(&node[1]);
	char budget[32];
	snprintf(budget, sizeof(budget), "%llu", (unsigned long long)(blob * 5 / 2));
	start_node_with(1, NULL, creds, "--disk-budget", budget);
	struct held a = acquire_on(1, "cache/a"); /* held throughout */
	use_once_on_1("cache/b");
	use_once_on_1("cache/c");
	/* Three pulled blobs: the least recently used that no tier holds goes (b). */
	lorastore_stats st = stats_after_evictions(1);
	cr_assert_eq(st.origin.cache_evictions, 1);
	cr_assert_leq(st.origin.cache_bytes, blob * 5 / 2);
	cr_assert_eq(st.origin.cache_budget, blob * 5 / 2);
	cr_assert_eq(here_on_1("cache/a", 1), 1, "the held version was removed");
	cr_assert_eq(here_on_1("cache/b", 1), 0);
	cr_assert_eq(here_on_1("cache/c", 1), 1);
	use_once_on_1("cache/d");
	stats_after_evictions(2);
	cr_assert_eq(here_on_1("cache/a", 1), 1, "the held version was removed");
	cr_assert_eq(here_on_1("cache/c", 1), 0);
	cr_assert_eq(here_on_1("cache/d", 1), 1);
	/* The held one's bytes are the same as ever, and a removed one comes back on demand. */
	struct held a0 = acquire_on(0, "cache/a");
	cr_assert_eq(a.sum, a0.sum);
	lorastore_adapter_release(a0.ad);
	lorastore_adapter_release(a.ad);
	struct held b = acquire_on(1, "cache/b");
	cr_assert_eq(b.info.version, 1);
	lorastore_adapter_release(b.ad);
}

struct racer {
	int node;
	char dir[PATH_MAX];
	uint32_t version;
	int rc;
	char msg[512];
};

static void *race_import(void *arg)
{
	struct racer *r = arg;
	lorastore_import_opts io = {.name = "fleet/race"};
	lorastore_list *l = NULL;
	r->rc = lorastore_import_dir_entry(conn[r->node], r->dir, &io, &l);
	if (r->rc == 0)
		r->version = lorastore_list_entry(l, 0)->version;
	else
		snprintf(r->msg, sizeof(r->msg), "%s", lorastore_errmsg(conn[r->node]));
	lorastore_list_free(l);
	return NULL;
}

Test(origin, two_nodes_importing_one_name_at_once_get_versions_1_and_2_and_serve_both)
{
	struct racer r[2];
	for (int i = 0; i < 2; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].node = i;
		snprintf(r[i].dir, sizeof(r[i].dir), "%s/race%d", work_dir, i);
		mkdir(r[i].dir, 0755);
		struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 2, .rank = 4,
				       .seed = 70 + (uint64_t)i};
		cr_assert_eq(synth_adapter_dir(r[i].dir, &o), 0);
	}
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, race_import, &r[i]);
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i], NULL);
		cr_assert_eq(r[i].rc, 0, "node %d: %s", i, r[i].msg);
	}
	cr_assert_eq(r[0].version + r[1].version, 3, "versions %u and %u", r[0].version,
		     r[1].version);
	/* Each node serves both, with the bytes their importer had. */
	for (uint32_t v = 1; v <= 2; v++) {
		char ref[32];
		snprintf(ref, sizeof(ref), "fleet/race@%u", v);
		struct held a = acquire_on(0, ref), b = acquire_on(1, ref);
		cr_assert_eq(a.sum, b.sum, "%s", ref);
		cr_assert_eq(memcmp(a.info.digest, b.info.digest, 32), 0, "%s", ref);
		lorastore_adapter_release(a.ad);
		lorastore_adapter_release(b.ad);
	}
}

/* The size of a tmp-pull-* file in node 1's state, or -1 when there is none. */
static long long pull_in_progress_on_1(void)
{
	char cmd[PATH_MAX + 96];
	snprintf(cmd, sizeof(cmd), "stat -c %%s %s/tmp/tmp-pull-* 2>/dev/null | head -n 1",
		 node[1].state);
	FILE *p = popen(cmd, "r");
	long long n = -1;
	if (fscanf(p, "%lld", &n) != 1)
		n = -1;
	pclose(p);
	return n;
}

struct remote_acquire {
	const char *ref;
	int rc;
	char msg[512];
	volatile bool done;
};

static void *acquire_on_1(void *arg)
{
	struct remote_acquire *r = arg;
	lorastore_adapter *ad = NULL;
	r->rc = lorastore_acquire(conn[1], r->ref, 60000, &ad);
	if (r->rc == 0)
		lorastore_adapter_release(ad);
	else
		snprintf(r->msg, sizeof(r->msg), "%s", lorastore_errmsg(conn[1]));
	r->done = true;
	return NULL;
}

static size_t files_on_1(const char *sub)
{
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof(cmd), "ls -1 %s/%s | wc -l", node[1].state, sub);
	FILE *p = popen(cmd, "r");
	size_t n = 0;
	cr_assert(fscanf(p, "%zu", &n) == 1);
	pclose(p);
	return n;
}

Test(origin, the_origin_killed_during_a_download_gives_a_clear_error_and_nothing_half_visible)
{
	private_server();
	/* About 60 MB: a transfer long enough on loopback to be cut in the middle. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/big", work_dir);
	mkdir(dir, 0755);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 16, .rank = 64, .hidden = 4096,
			       .heads = 32, .kv_heads = 8, .seed = 90};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	lorastore_import_opts io = {.name = "fleet/big"};
	cr_assert_eq(lorastore_import_dir(conn[0], dir, &io, NULL), 0, "%s",
		     lorastore_errmsg(conn[0]));
	bool cut = false;
	for (int attempt = 0; attempt < 5 && !cut; attempt++) {
		struct remote_acquire r = {.ref = "fleet/big@1"};
		pthread_t t;
		pthread_create(&t, NULL, acquire_on_1, &r);
		while (!r.done && pull_in_progress_on_1() <= 0)
			usleep(200);
		if (!r.done) {
			ls_s3_server_kill(&srv);
			cut = true;
		}
		pthread_join(t, NULL);
		if (cut) {
			cr_assert_eq(r.rc, LORASTORE_E_ORIGIN, "%d: %s", r.rc, r.msg);
			cr_assert(strstr(r.msg, origin_url), "%s", r.msg);
		} else {
			/* The whole download beat the kill: start node 1 afresh and try again. */
			cr_assert_eq(r.rc, 0, "%s", r.msg);
			stop_node(1);
			ls_daemon_cleanup(&node[1]);
			start_node(1, NULL, creds);
		}
	}
	cr_assert(cut, "no download could be cut in five attempts");
	cr_assert_eq(files_on_1("blobs"), 0, "half a blob is visible");
	cr_assert_eq(files_on_1("tmp"), 0, "half a download was left in tmp/");
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_show(conn[1], "fleet/big@1", &l), LORASTORE_E_ORIGIN);
	cr_assert_eq(ls_s3_server_start(&srv), 0);
	struct held b = acquire_on(1, "fleet/big@1");
	struct held a = acquire_on(0, "fleet/big@1");
	cr_assert_eq(a.sum, b.sum);
	lorastore_adapter_release(a.ad);
	lorastore_adapter_release(b.ad);
}

Test(origin, an_object_overwritten_behind_the_fleets_back_is_refused_and_counted)
{
	import_on(0, "fleet/tamper", 1);
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_show(conn[0], "fleet/tamper", &l), 0);
	const lorastore_entry *e = lorastore_list_entry(l, 0);
	char key[160], path[PATH_MAX];
	snprintf(key, sizeof(key), "nodes/blobs/%s.blob", e->digest);
	snprintf(path, sizeof(path), "%s/blobs/%s.blob", node[0].state, e->digest);
	lorastore_list_free(l);
	/* Other bytes under the blob's key: the same length, one byte of its data changed. */
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f);
	fseek(f, 0, SEEK_END);
	size_t len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc(len);
	cr_assert_eq(fread(b, 1, len, f), len);
	fclose(f);
	b[len - 100] ^= 0x40;
	struct ls_s3_config cfg = {.endpoint = srv.endpoint, .bucket = bucket,
				   .access_key = LS_S3_TEST_ACCESS_KEY,
				   .secret_key = LS_S3_TEST_SECRET_KEY};
	struct ls_s3 *c = NULL;
	struct ls_err err;
	cr_assert_eq(ls_s3_global_init(&err), 0);
	cr_assert_eq(ls_s3_new(&cfg, &c, &err), 0);
	cr_assert_eq(ls_s3_put(c, key, b, len, false, &err), 0, "%s", err.msg);
	ls_s3_free(c);
	free(b);
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn[1], "fleet/tamper", 30000, &ad);
	cr_assert_eq(rc, LORASTORE_E_CORRUPT, "%d: %s", rc, lorastore_errmsg(conn[1]));
	cr_assert(strstr(lorastore_errmsg(conn[1]), "refused"), "%s", lorastore_errmsg(conn[1]));
	cr_assert_eq(files_on_1("blobs"), 0, "the tampered blob was kept");
	lorastore_stats st;
	cr_assert_eq(lorastore_stats_get(conn[1], &st), 0);
	cr_assert_eq(st.origin.refused, 1);
	cr_assert_eq(st.origin.pulls, 0);
}
