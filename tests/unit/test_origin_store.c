/*
 * The origin at the store's door, against a real S3 server (SeaweedFS on
 * loopback): two stores with their own state directories are two nodes
 * sharing one bucket.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "origin.h"
#include "s3.h"
#include "s3_server.h"
#include "store.h"
#include "synth.h"

static struct ls_s3_server srv;
static char bucket[32];      /* this test's own, on the shared server */
static char label[64];       /* how messages name the origin: "s3://BUCKET/p" */
static char *dirs[2];
static char *work_dir;
static struct ls_store *node[2];
static struct ls_err err;

static struct ls_origin *origin_parts(const char *secret, int64_t ttl_ms, uint64_t multipart)
{
	struct ls_origin_config cfg = {
		.s3 = {.endpoint = srv.endpoint,
		       .bucket = bucket,
		       .access_key = LS_S3_TEST_ACCESS_KEY,
		       .secret_key = secret,
		       .connect_timeout_ms = 1000,
		       .stall_timeout_ms = 15000,
		       .multipart_threshold = multipart},
		.prefix = "p",
		.ttl_ms = ttl_ms,
	};
	struct ls_origin *o = NULL;
	cr_assert_eq(ls_origin_open(&cfg, &o, &err), 0, "%s", err.msg);
	return o;
}

static struct ls_origin *origin_with(const char *secret, int64_t ttl_ms)
{
	return origin_parts(secret, ttl_ms, 0);
}

static void open_node(int i, int64_t ttl_ms)
{
	cr_assert_eq(ls_store_open(dirs[i], &node[i], &err), 0, "%s", err.msg);
	ls_store_set_origin(node[i], origin_with(LS_S3_TEST_SECRET_KEY, ttl_ms));
}

static void setup(void)
{
	if (!ls_weed_binary())
		cr_skip_test("no SeaweedFS weed binary: run scripts/install-deps");
	cr_assert_eq(ls_s3_server_use_shared(&srv), 0, "weed did not start");
	snprintf(bucket, sizeof(bucket), "t%d", (int)getpid());
	snprintf(label, sizeof(label), "s3://%s/p", bucket);
	cr_assert_eq(ls_s3_server_bucket(&srv, bucket), 0);
	struct ls_err e;
	cr_assert_eq(ls_s3_global_init(&e), 0);
	work_dir = synth_mkdtemp("adapters");
	for (int i = 0; i < 2; i++) {
		dirs[i] = synth_mkdtemp("node");
		open_node(i, 200);
	}
}

static void teardown(void)
{
	for (int i = 0; i < 2; i++) {
		ls_store_close(node[i]);
		node[i] = NULL;
		if (dirs[i])
			synth_rm_rf(dirs[i]);
		free(dirs[i]);
		dirs[i] = NULL;
	}
	if (work_dir)
		synth_rm_rf(work_dir);
	free(work_dir);
	work_dir = NULL;
	ls_s3_server_cleanup(&srv);
}

TestSuite(origin_store, .init = setup, .fini = teardown, .timeout = 180);

/* One S3 server for the tests of this binary. */
#include "s3_shared_hooks.h"

/* A server of this test's own, which it may stop or kill; both nodes use it from now on. */
static void private_server(void)
{
	memset(&srv, 0, sizeof(srv));
	cr_assert_eq(ls_s3_server_start(&srv), 0, "weed did not start");
	cr_assert_eq(ls_s3_server_bucket(&srv, bucket), 0);
	for (int i = 0; i < 2; i++)
		ls_store_set_origin(node[i], origin_with(LS_S3_TEST_SECRET_KEY, 200));
}

static const char *make_adapter(const char *sub, uint64_t seed)
{
	static char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/%s", work_dir, sub);
	mkdir(dir, 0755);
	struct synth_opts o = {.family = SYNTH_LLAMA, .seed = seed};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	return dir;
}

static int import_into(struct ls_store *s, const char *name, const char *dir,
		       Lorastore__VersionRecord **rec, struct ls_err *e)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	int cfg = open(path, O_RDONLY);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int st = open(path, O_RDONLY);
	cr_assert(cfg >= 0 && st >= 0);
	int rc = ls_store_import(s, name, cfg, st, dir, NULL, rec, NULL, e);
	close(cfg);
	close(st);
	return rc;
}

static uint32_t import_version(struct ls_store *s, const char *name, const char *dir)
{
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(import_into(s, name, dir, &rec, &err), 0, "import %s: %s", name, err.msg);
	uint32_t v = rec->version;
	lorastore__version_record__free_unpacked(rec, NULL);
	return v;
}

/* The bytes of a file (malloc'ed). */
static uint8_t *file_bytes(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	cr_assert(f, "%s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc(*len ? *len : 1);
	cr_assert_eq(fread(b, 1, *len, f), *len);
	fclose(f);
	return b;
}

static size_t files_in(const char *dir, const char *sub)
{
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof(cmd), "ls -1 %s/%s | wc -l", dir, sub);
	FILE *p = popen(cmd, "r");
	size_t n = 0;
	cr_assert(fscanf(p, "%zu", &n) == 1);
	pclose(p);
	return n;
}

/* A client of the bucket with the test credentials, to act behind the stores' backs. */
static struct ls_s3 *bucket_client(void)
{
	struct ls_s3_config cfg = {.endpoint = srv.endpoint,
				   .bucket = bucket,
				   .access_key = LS_S3_TEST_ACCESS_KEY,
				   .secret_key = LS_S3_TEST_SECRET_KEY};
	struct ls_s3 *c = NULL;
	cr_assert_eq(ls_s3_new(&cfg, &c, &err), 0, "%s", err.msg);
	return c;
}

static void blob_key(const Lorastore__VersionRecord *rec, char *key, size_t len)
{
	char hex[LS_DIGEST_HEX];
	ls_digest_hex(rec->digest.data, hex);
	snprintf(key, len, "p/blobs/%s.blob", hex);
}

Test(origin_store, a_version_imported_on_one_node_is_found_on_another_with_the_same_blob)
{
	cr_assert_eq(import_version(node[0], "t/a", make_adapter("a", 1)), 1);
	Lorastore__VersionRecord *ra = NULL, *rb = NULL;
	cr_assert_eq(ls_store_lookup(node[0], "t/a@1", &ra, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_lookup(node[1], "t/a@1", &rb, &err), 0, "%s", err.msg);
	cr_assert_eq(rb->version, 1);
	cr_assert_eq(memcmp(ra->digest.data, rb->digest.data, LS_DIGEST_LEN), 0);
	cr_assert_eq(ra->n_tensors, rb->n_tensors);
	char pa[PATH_MAX], pb[PATH_MAX];
	ls_store_blob_path(node[0], ra->digest.data, pa, sizeof(pa));
	ls_store_blob_path(node[1], rb->digest.data, pb, sizeof(pb));
	size_t la, lb;
	uint8_t *ba = file_bytes(pa, &la), *bb = file_bytes(pb, &lb);
	cr_assert_eq(la, lb);
	cr_assert_eq(memcmp(ba, bb, la), 0, "the pulled blob differs from the imported one");
	free(ba);
	free(bb);
	struct ls_origin_stats st;
	ls_origin_stats(ls_store_origin(node[1]), &st);
	cr_assert_eq(st.pulls, 1);
	cr_assert_eq(st.refused, 0);
	lorastore__version_record__free_unpacked(ra, NULL);
	lorastore__version_record__free_unpacked(rb, NULL);
}

Test(origin_store, version_numbers_come_from_the_origin_so_nodes_never_reuse_one)
{
	cr_assert_eq(import_version(node[0], "t/n", make_adapter("a", 1)), 1);
	/* Node 1 has never seen t/n: its import still becomes version 2. */
	cr_assert_eq(import_version(node[1], "t/n", make_adapter("b", 2)), 2);
	cr_assert_eq(import_version(node[0], "t/n", make_adapter("c", 3)), 3);
	/* The same content as the fleet's latest adds nothing. */
	bool unchanged = false;
	Lorastore__VersionRecord *rec = NULL;
	const char *dir = make_adapter("c", 3);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	int cfg = open(path, O_RDONLY);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int stf = open(path, O_RDONLY);
	cr_assert_eq(ls_store_import(node[1], "t/n", cfg, stf, dir, NULL, &rec, &unchanged, &err), 0,
		     "%s", err.msg);
	close(cfg);
	close(stf);
	cr_assert(unchanged);
	cr_assert_eq(rec->version, 3);
	lorastore__version_record__free_unpacked(rec, NULL);
}

struct racer {
	int node;
	const char *dir;
	uint32_t version;
	int rc;
	struct ls_err err;
};

static void *race_import(void *arg)
{
	struct racer *r = arg;
	Lorastore__VersionRecord *rec = NULL;
	r->rc = import_into(node[r->node], "t/race", r->dir, &rec, &r->err);
	if (r->rc == 0) {
		r->version = rec->version;
		lorastore__version_record__free_unpacked(rec, NULL);
	}
	return NULL;
}

Test(origin_store, two_nodes_importing_one_name_at_once_get_versions_1_and_2)
{
	char d0[PATH_MAX], d1[PATH_MAX];
	snprintf(d0, sizeof(d0), "%s", make_adapter("r0", 10));
	snprintf(d1, sizeof(d1), "%s", make_adapter("r1", 11));
	struct racer r[2] = {{.node = 0, .dir = d0}, {.node = 1, .dir = d1}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, race_import, &r[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(r[i].rc, 0, "node %d: %s", i, r[i].err.msg);
	cr_assert_eq(r[0].version + r[1].version, 3, "versions %u and %u", r[0].version,
		     r[1].version);
	/* Both are in the origin, each with its own content: nothing lost. */
	for (int i = 0; i < 2; i++) {
		char ref[64];
		snprintf(ref, sizeof(ref), "t/race@%u", r[i].version);
		Lorastore__VersionRecord *here = NULL, *there = NULL;
		cr_assert_eq(ls_store_lookup(node[i], ref, &here, &err), 0, "%s", err.msg);
		cr_assert_eq(ls_store_lookup(node[1 - i], ref, &there, &err), 0, "%s", err.msg);
		cr_assert_eq(memcmp(here->digest.data, there->digest.data, LS_DIGEST_LEN), 0);
		lorastore__version_record__free_unpacked(here, NULL);
		lorastore__version_record__free_unpacked(there, NULL);
	}
}

Test(origin_store, the_latest_version_imported_elsewhere_is_seen_within_the_ttl)
{
	import_version(node[0], "t/l", make_adapter("a", 1));
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(node[1], "t/l", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 1);
	lorastore__version_record__free_unpacked(rec, NULL);
	import_version(node[0], "t/l", make_adapter("b", 2));
	usleep(250 * 1000); /* the TTL is 200 ms */
	cr_assert_eq(ls_store_lookup(node[1], "t/l", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 2);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(ls_store_lookup(node[1], "t/l@1", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 1);
	lorastore__version_record__free_unpacked(rec, NULL);
}

/* Import a version on node 0; its record, its blob's key in the origin and its bytes (malloc'ed). */
static uint8_t *imported_blob(const char *name, Lorastore__VersionRecord **rec, char *key,
			      size_t key_len, size_t *len)
{
	import_version(node[0], name, make_adapter("a", 1));
	char ref[64], path[PATH_MAX];
	snprintf(ref, sizeof(ref), "%s@1", name);
	cr_assert_eq(ls_store_lookup(node[0], ref, rec, &err), 0, "%s", err.msg);
	blob_key(*rec, key, key_len);
	ls_store_blob_path(node[0], (*rec)->digest.data, path, sizeof(path));
	return file_bytes(path, len);
}

Test(origin_store, a_blob_overwritten_in_the_origin_is_refused_and_nothing_is_kept)
{
	Lorastore__VersionRecord *rec = NULL;
	char key[256];
	size_t len;
	uint8_t *good = imported_blob("t/bad", &rec, key, sizeof(key), &len);
	/* One byte of the data region changed behind the stores' backs. */
	uint8_t *bad = malloc(len);
	memcpy(bad, good, len);
	bad[len - 4096 - 1] ^= 0x5a;
	bad[8192] ^= 0x01;
	struct ls_s3 *c = bucket_client();
	cr_assert_eq(ls_s3_put(c, key, bad, len, false, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *got = NULL;
	int rc = ls_store_lookup(node[1], "t/bad@1", &got, &err);
	cr_assert_eq(rc, LS_E_CORRUPT, "%d %s", rc, err.msg);
	cr_assert(strstr(err.msg, "refused"), "%s", err.msg);
	cr_assert_eq(files_in(dirs[1], "blobs"), 0, "a refused blob was kept");
	cr_assert_eq(files_in(dirs[1], "tmp"), 0, "a refused download was left in tmp/");
	struct ls_origin_stats st;
	ls_origin_stats(ls_store_origin(node[1]), &st);
	cr_assert_eq(st.refused, 1);
	cr_assert_eq(st.pulls, 0);
	/* Put right again, the next request pulls it. */
	cr_assert_eq(ls_s3_put(c, key, good, len, false, &err), 0, "%s", err.msg);
	cr_assert_eq(ls_store_lookup(node[1], "t/bad@1", &got, &err), 0, "%s", err.msg);
	lorastore__version_record__free_unpacked(got, NULL);
	ls_s3_free(c);
	free(good);
	free(bad);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(origin_store, a_truncated_blob_in_the_origin_is_refused)
{
	Lorastore__VersionRecord *rec = NULL;
	char key[256];
	size_t len;
	uint8_t *good = imported_blob("t/short", &rec, key, sizeof(key), &len);
	struct ls_s3 *c = bucket_client();
	cr_assert_eq(ls_s3_put(c, key, good, len / 2, false, &err), 0, "%s", err.msg);
	Lorastore__VersionRecord *got = NULL;
	int rc = ls_store_lookup(node[1], "t/short@1", &got, &err);
	cr_assert(rc == LS_E_BLOB_TRUNCATED || rc == LS_E_CORRUPT, "%d %s", rc, err.msg);
	cr_assert_eq(files_in(dirs[1], "blobs"), 0);
	cr_assert_eq(files_in(dirs[1], "tmp"), 0);
	ls_s3_free(c);
	free(good);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(origin_store, wrong_credentials_are_refused_naming_the_origin_and_not_the_secret)
{
	import_version(node[0], "t/c", make_adapter("a", 1));
	static const char wrong[] = "not-the-secret-3fQ9";
	ls_store_set_origin(node[1], origin_with(wrong, 200));
	Lorastore__VersionRecord *rec = NULL;
	int rc = ls_store_lookup(node[1], "t/c@1", &rec, &err);
	cr_assert_eq(rc, LS_E_ORIGIN, "%d %s", rc, err.msg);
	cr_assert(strstr(err.msg, label), "%s", err.msg);
	cr_assert(strstr(err.msg, "403"), "%s", err.msg);
	cr_assert(strstr(err.msg, "credentials"), "%s", err.msg);
	cr_assert_null(strstr(err.msg, wrong), "the message shows the secret: %s", err.msg);
	cr_assert_null(strstr(err.msg, LS_S3_TEST_SECRET_KEY), "%s", err.msg);
	/* An import with them is refused too, and the catalog is unchanged. */
	rc = import_into(node[1], "t/c2", make_adapter("b", 2), &rec, &err);
	cr_assert_eq(rc, LS_E_ORIGIN, "%d %s", rc, err.msg);
	cr_assert_eq(ls_store_lookup(node[1], "t/c2", &rec, &err), LS_E_ORIGIN);
}

static int64_t ms_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

Test(origin_store, with_the_origin_down_local_versions_serve_and_remote_ones_fail_in_bounded_time)
{
	private_server();
	import_version(node[0], "t/down", make_adapter("a", 1));
	import_version(node[0], "t/down", make_adapter("b", 2));
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(node[1], "t/down@1", &rec, &err), 0, "%s", err.msg);
	lorastore__version_record__free_unpacked(rec, NULL);
	ls_s3_server_kill(&srv);
	usleep(250 * 1000); /* past the TTL: "t/down" asks the origin, which is away */
	int64_t t0 = ms_now();
	cr_assert_eq(ls_store_lookup(node[1], "t/down", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 1, "the local latest is served");
	lorastore__version_record__free_unpacked(rec, NULL);
	int rc = ls_store_lookup(node[1], "t/down@2", &rec, &err);
	cr_assert_eq(rc, LS_E_ORIGIN, "%d %s", rc, err.msg);
	cr_assert(strstr(err.msg, label), "%s", err.msg);
	cr_assert_lt(ms_now() - t0, 10000, "the origin's absence took %lld ms to say",
		     (long long)(ms_now() - t0));
	cr_assert_eq(files_in(dirs[1], "tmp"), 0);
	/* Back: the same request succeeds. */
	cr_assert_eq(ls_s3_server_start(&srv), 0);
	cr_assert_eq(ls_store_lookup(node[1], "t/down@2", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 2);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(origin_store, a_node_with_an_empty_state_directory_serves_every_version_from_the_origin)
{
	for (int i = 0; i < 3; i++) {
		char sub[16];
		snprintf(sub, sizeof(sub), "v%d", i);
		import_version(node[0], "t/all", make_adapter(sub, 20 + (uint64_t)i));
	}
	import_version(node[0], "t/other", make_adapter("o", 30));
	for (uint32_t v = 1; v <= 3; v++) {
		char ref[32];
		snprintf(ref, sizeof(ref), "t/all@%u", v);
		Lorastore__VersionRecord *a = NULL, *b = NULL;
		cr_assert_eq(ls_store_lookup(node[0], ref, &a, &err), 0);
		cr_assert_eq(ls_store_lookup(node[1], ref, &b, &err), 0, "%s: %s", ref, err.msg);
		cr_assert_eq(memcmp(a->digest.data, b->digest.data, LS_DIGEST_LEN), 0);
		lorastore__version_record__free_unpacked(a, NULL);
		lorastore__version_record__free_unpacked(b, NULL);
	}
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(node[1], "t/other", &rec, &err), 0, "%s", err.msg);
	lorastore__version_record__free_unpacked(rec, NULL);
	cr_assert_eq(ls_store_lookup(node[1], "t/none", &rec, &err), LS_E_NOT_FOUND);
	cr_assert(strstr(err.msg, "origin"), "%s", err.msg);
}

Test(origin_store, a_delete_removes_the_versions_from_the_origin_so_no_node_pulls_them)
{
	import_version(node[0], "t/del", make_adapter("a", 1));
	import_version(node[0], "t/del", make_adapter("b", 2));
	struct ls_deleted_gens d;
	cr_assert_eq(ls_store_delete(node[0], "t/del@1", &d, &err), 0, "%s", err.msg);
	cr_assert_eq(d.n, 1);
	cr_assert_eq(d.origin_versions, 1);
	cr_assert_eq(d.origin_rc, 0);
	free(d.gens);
	cr_assert(ls_store_version_gone(node[0], "t/del", 1));
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(node[1], "t/del@1", &rec, &err), LS_E_NOT_FOUND, "%s", err.msg);
	cr_assert_eq(ls_store_lookup(node[1], "t/del", &rec, &err), 0, "%s", err.msg);
	cr_assert_eq(rec->version, 2);
	lorastore__version_record__free_unpacked(rec, NULL);
	/* Every version, from a node that has only one of them and then none. */
	import_version(node[0], "t/del", make_adapter("c", 3));
	cr_assert_eq(ls_store_delete(node[1], "t/del", &d, &err), 0, "%s", err.msg);
	cr_assert_eq(d.n, 1, "node 1 had version 2 only");
	cr_assert_eq(d.origin_versions, 2, "the origin had versions 2 and 3");
	free(d.gens);
	usleep(250 * 1000);
	cr_assert_eq(ls_store_lookup(node[1], "t/del", &rec, &err), LS_E_NOT_FOUND, "%s", err.msg);
	cr_assert_eq(ls_store_delete(node[1], "t/del", &d, &err), LS_E_NOT_FOUND);
}

Test(origin_store, with_the_origin_away_a_delete_stands_here_and_says_the_origin_kept_it)
{
	private_server();
	import_version(node[0], "t/keep", make_adapter("a", 1));
	ls_s3_server_kill(&srv);
	struct ls_deleted_gens d;
	cr_assert_eq(ls_store_delete(node[0], "t/keep@1", &d, &err), 0, "%s", err.msg);
	cr_assert_eq(d.n, 1);
	cr_assert_eq(d.origin_rc, LS_E_ORIGIN);
	cr_assert(strstr(d.origin_error, label), "%s", d.origin_error);
	free(d.gens);
	cr_assert(ls_store_version_gone(node[0], "t/keep", 1));
	/* Once it is back, deleting again finishes it. */
	cr_assert_eq(ls_s3_server_start(&srv), 0);
	cr_assert_eq(ls_store_delete(node[0], "t/keep@1", &d, &err), 0, "%s", err.msg);
	cr_assert_eq(d.n, 0);
	cr_assert_eq(d.origin_versions, 1);
	free(d.gens);
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(node[1], "t/keep@1", &rec, &err), LS_E_NOT_FOUND);
}

/* The size of the one tmp-pull-* file in dir/tmp, or -1 when there is none. */
static long long pull_in_progress(const char *dir)
{
	char cmd[PATH_MAX + 96];
	snprintf(cmd, sizeof(cmd), "stat -c %%s %s/tmp/tmp-pull-* 2>/dev/null | head -n 1", dir);
	FILE *p = popen(cmd, "r");
	long long n = -1;
	if (fscanf(p, "%lld", &n) != 1)
		n = -1;
	pclose(p);
	return n;
}

struct puller {
	const char *ref;
	int rc;
	struct ls_err err;
	volatile bool done;
};

static void *pull_one(void *arg)
{
	struct puller *p = arg;
	Lorastore__VersionRecord *rec = NULL;
	p->rc = ls_store_lookup(node[1], p->ref, &rec, &p->err);
	if (rec)
		lorastore__version_record__free_unpacked(rec, NULL);
	p->done = true;
	return NULL;
}

Test(origin_store, a_download_cut_halfway_leaves_nothing_and_the_next_request_pulls_it)
{
	private_server();
	/* About 60 MB: long enough a transfer on loopback to be cut in the middle. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/big", work_dir);
	mkdir(dir, 0755);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 16, .rank = 64, .hidden = 4096,
			       .heads = 32, .kv_heads = 8, .seed = 5};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	import_version(node[0], "t/big", dir);
	bool cut = false;
	for (int attempt = 0; attempt < 5 && !cut; attempt++) {
		struct puller p = {.ref = "t/big@1"};
		pthread_t t;
		pthread_create(&t, NULL, pull_one, &p);
		while (!p.done && pull_in_progress(dirs[1]) <= 0)
			usleep(200);
		if (!p.done) {
			ls_s3_server_kill(&srv);
			cut = true;
		}
		pthread_join(t, NULL);
		if (cut) {
			cr_assert_eq(p.rc, LS_E_ORIGIN, "%d %s", p.rc, p.err.msg);
			cr_assert(strstr(p.err.msg, label), "%s", p.err.msg);
		} else {
			/* The whole download beat the kill: forget it here and try again. */
			cr_assert_eq(p.rc, 0, "%s", p.err.msg);
			struct ls_deleted_gens d;
			ls_store_set_origin(node[1], NULL);
			cr_assert_eq(ls_store_delete(node[1], "t/big@1", &d, &err), 0, "%s", err.msg);
			free(d.gens);
			ls_store_set_origin(node[1], origin_with(LS_S3_TEST_SECRET_KEY, 200));
		}
	}
	cr_assert(cut, "no download could be cut in five attempts");
	cr_assert_eq(files_in(dirs[1], "blobs"), 0, "half a blob is visible");
	cr_assert_eq(files_in(dirs[1], "tmp"), 0, "half a download was left in tmp/");
	cr_assert(ls_store_version_gone(node[1], "t/big", 1));
	cr_assert_eq(ls_s3_server_start(&srv), 0);
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(node[1], "t/big@1", &rec, &err), 0, "%s", err.msg);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(origin_store, a_blob_past_the_multipart_threshold_goes_up_in_parts_and_comes_back_whole)
{
	ls_store_set_origin(node[0], origin_parts(LS_S3_TEST_SECRET_KEY, 200, LS_S3_PART_SIZE));
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/parts", work_dir);
	mkdir(dir, 0755);
	/* About 60 MB: four parts of 16 MiB. */
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 16, .rank = 64, .hidden = 4096,
			       .heads = 32, .kv_heads = 8, .seed = 9};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	struct ls_origin_stats before, after;
	ls_origin_stats(ls_store_origin(node[0]), &before);
	import_version(node[0], "t/parts", dir);
	ls_origin_stats(ls_store_origin(node[0]), &after);
	/* list, HEAD, begin, 4 parts, complete, the record: not one PUT of the blob */
	cr_assert_geq(after.s3.requests - before.s3.requests, 9, "%llu requests",
		      (unsigned long long)(after.s3.requests - before.s3.requests));
	Lorastore__VersionRecord *a = NULL, *b = NULL;
	cr_assert_eq(ls_store_lookup(node[0], "t/parts@1", &a, &err), 0);
	cr_assert_gt(a->blob_bytes, 3 * LS_S3_PART_SIZE);
	char key[256];
	blob_key(a, key, sizeof(key));
	struct ls_s3 *c = bucket_client();
	uint64_t size = 0;
	cr_assert_eq(ls_s3_head(c, key, &size, &err), 0, "%s", err.msg);
	cr_assert_eq(size, a->blob_bytes, "the object is %llu bytes, the blob %llu",
		     (unsigned long long)size, (unsigned long long)a->blob_bytes);
	/* The other node's pull checks its SHA-256: the parts are whole and in order. */
	cr_assert_eq(ls_store_lookup(node[1], "t/parts@1", &b, &err), 0, "%s", err.msg);
	cr_assert_eq(memcmp(a->digest.data, b->digest.data, LS_DIGEST_LEN), 0);
	ls_s3_free(c);
	lorastore__version_record__free_unpacked(a, NULL);
	lorastore__version_record__free_unpacked(b, NULL);
}

Test(origin_store, concurrent_requests_for_one_version_share_one_download)
{
	import_version(node[0], "t/one", make_adapter("a", 1));
	Lorastore__VersionRecord *rec = NULL;
	cr_assert_eq(ls_store_lookup(node[0], "t/one@1", &rec, &err), 0);
	uint64_t blob = rec->blob_bytes;
	lorastore__version_record__free_unpacked(rec, NULL);
	enum { N = 6 };
	struct puller p[N];
	pthread_t t[N];
	for (int i = 0; i < N; i++) {
		p[i] = (struct puller){.ref = "t/one@1"};
		pthread_create(&t[i], NULL, pull_one, &p[i]);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		cr_assert_eq(p[i].rc, 0, "request %d: %s", i, p[i].err.msg);
	}
	struct ls_origin_stats st;
	ls_origin_stats(ls_store_origin(node[1]), &st);
	cr_assert_eq(st.pulls, 1, "%llu pulls", (unsigned long long)st.pulls);
	cr_assert_eq(st.pull_bytes, blob, "%llu bytes downloaded for a blob of %llu",
		     (unsigned long long)st.pull_bytes, (unsigned long long)blob);
}

Test(origin_store, an_origin_that_stops_answering_fails_a_remote_request_within_the_timeout)
{
	private_server();
	import_version(node[0], "t/slow", make_adapter("a", 1));
	/* A stall of 1.5 s fails a request; the origin is frozen, its connections left open. */
	struct ls_origin_config cfg = {
		.s3 = {.endpoint = srv.endpoint, .bucket = bucket,
		       .access_key = LS_S3_TEST_ACCESS_KEY, .secret_key = LS_S3_TEST_SECRET_KEY,
		       .connect_timeout_ms = 1000, .stall_timeout_ms = 1500},
		.prefix = "p", .ttl_ms = 200};
	struct ls_origin *o = NULL;
	cr_assert_eq(ls_origin_open(&cfg, &o, &err), 0);
	ls_store_set_origin(node[1], o);
	cr_assert_eq(kill(srv.pid, SIGSTOP), 0);
	int64_t t0 = ms_now();
	Lorastore__VersionRecord *rec = NULL;
	int rc = ls_store_lookup(node[1], "t/slow@1", &rec, &err);
	int64_t took = ms_now() - t0;
	kill(srv.pid, SIGCONT);
	cr_assert_eq(rc, LS_E_ORIGIN, "%d %s", rc, err.msg);
	cr_assert(strstr(err.msg, label), "%s", err.msg);
	cr_assert_lt(took, 5000, "a frozen origin held the request %lld ms", (long long)took);
	cr_assert_eq(files_in(dirs[1], "tmp"), 0);
	cr_assert_eq(ls_store_lookup(node[1], "t/slow@1", &rec, &err), 0, "%s", err.msg);
	lorastore__version_record__free_unpacked(rec, NULL);
}

Test(origin_store, virtual_host_addressing_reaches_the_same_bucket_as_path_style)
{
	import_version(node[0], "t/vhost", make_adapter("a", 1));
	/* BUCKET.localhost:PORT, as AWS's virtual-hosted style names BUCKET.s3.REGION... */
	char endpoint[64];
	snprintf(endpoint, sizeof(endpoint), "http://localhost:%d", srv.ports[0]);
	struct ls_origin_config cfg = {
		.s3 = {.endpoint = endpoint, .bucket = bucket, .virtual_host = true,
		       .access_key = LS_S3_TEST_ACCESS_KEY, .secret_key = LS_S3_TEST_SECRET_KEY,
		       .connect_timeout_ms = 1000, .stall_timeout_ms = 15000},
		.prefix = "p", .ttl_ms = 200};
	struct ls_origin *o = NULL;
	cr_assert_eq(ls_origin_open(&cfg, &o, &err), 0);
	ls_store_set_origin(node[1], o);
	Lorastore__VersionRecord *a = NULL, *b = NULL;
	cr_assert_eq(ls_store_lookup(node[0], "t/vhost@1", &a, &err), 0);
	cr_assert_eq(ls_store_lookup(node[1], "t/vhost@1", &b, &err), 0, "%s", err.msg);
	cr_assert_eq(memcmp(a->digest.data, b->digest.data, LS_DIGEST_LEN), 0);
	/* And an import through it is seen path-style. */
	lorastore__version_record__free_unpacked(b, NULL);
	cr_assert_eq(import_version(node[1], "t/vhost", make_adapter("b", 2)), 2);
	usleep(250 * 1000);
	cr_assert_eq(ls_store_lookup(node[0], "t/vhost", &b, &err), 0, "%s", err.msg);
	cr_assert_eq(b->version, 2);
	lorastore__version_record__free_unpacked(a, NULL);
	lorastore__version_record__free_unpacked(b, NULL);
}
