/*
 * A thousand adapters into GPU memory: the time until the first is usable
 * and the time until all are resident, through a real lorastored.
 *
 * N adapter versions (Llama q/k/v/o, LAYERS layers, rank RANK, HIDDEN wide,
 * BF16: 33.6 MB each by default, 33.6 GB for the default thousand) are
 * imported under distinct names from DISTINCT synthetic adapters (the
 * store keeps one blob per content; every version is its own resident
 * copy), by CLIENTS threads with a connection each.  Then the same threads
 * ask the daemon to load their share into the device tier
 * (lorastore_load_tier), all at once, with nothing resident anywhere before: every load reads its
 * blob from disk (O_DIRECT) into the host tier, which is small and evicts
 * as it goes, and copies it to the GPU chunk by chunk.
 *
 * It reports the time from the first request to the first load done (the
 * first adapter usable) and to the last (all usable), the aggregate rate,
 * and the device tier's memory afterwards (bytes used, slabs, evictions:
 * none expected, every adapter must be resident at once).  The issue names
 * no target for these two times; BENCHMARKS.md puts them beside the cold
 * load rate of bench_device_load measured in the same run.
 *
 * LORASTORE_CUDA_DRIVER names the driver as for lorastored (with the test
 * double the figures mean nothing: the control path only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "bench_args.h"
#include "daemon_proc.h"
#include "lorastore.h"
#include "synth.h"

struct bench_args {
	size_t adapters, distinct, clients;
	int layers, rank, hidden, workers;
	unsigned long long host_budget_mib;
};

static double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void bench_usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--adapters N] [--distinct N] [--clients N] [--layers N] [--rank N]\n"
		"       [--hidden N] [--workers N] [--host-budget-mib N]\n"
		"\n"
		"Import N adapter versions into a lorastored with a GPU, then load them all\n"
		"into the GPU's memory at once from CLIENTS connections: the time until the\n"
		"first is usable and until all are.\n"
		"\n"
		"  --adapters N         versions loaded (default 1000)\n"
		"  --distinct N         distinct synthetic adapters they are imported from\n"
		"                       (default 10)\n"
		"  --clients N          connections loading at once, one thread each (default 8)\n"
		"  --layers N           layers of each adapter (default 32)\n"
		"  --rank N             rank (default 16)\n"
		"  --hidden N           width of the modules, a multiple of 16 (default 4096)\n"
		"  --workers N          the daemon's worker threads (default 8)\n"
		"  --host-budget-mib N  the daemon's host tier, the staging cache (default 2048)\n"
		"  --help               this text\n"
		"\n"
		"LORASTORE_CUDA_DRIVER names the CUDA driver (default libcuda.so.1).\n",
		argv0);
}

static int bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option longopts[] = {
		{"adapters", required_argument, NULL, 'n'},
		{"distinct", required_argument, NULL, 'd'},
		{"clients", required_argument, NULL, 'c'},
		{"layers", required_argument, NULL, 'l'},
		{"rank", required_argument, NULL, 'R'},
		{"hidden", required_argument, NULL, 'H'},
		{"workers", required_argument, NULL, 'w'},
		{"host-budget-mib", required_argument, NULL, 'b'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	*a = (struct bench_args){.adapters = 1000, .distinct = 10, .clients = 8, .layers = 32,
				 .rank = 16, .hidden = 4096, .workers = 8,
				 .host_budget_mib = 2048};
	int c, idx = 0;
	unsigned long long v;
	while ((c = getopt_long(argc, argv, "", longopts, &idx)) != -1) {
		bool ok = true;
		switch (c) {
		case 'n': ok = bench_parse_num(optarg, 1, 100000, &v); a->adapters = (size_t)v; break;
		case 'd': ok = bench_parse_num(optarg, 1, 1000, &v); a->distinct = (size_t)v; break;
		case 'c': ok = bench_parse_num(optarg, 1, 64, &v); a->clients = (size_t)v; break;
		case 'l': ok = bench_parse_num(optarg, 1, 512, &v); a->layers = (int)v; break;
		case 'R': ok = bench_parse_num(optarg, 1, 512, &v); a->rank = (int)v; break;
		case 'H': ok = bench_parse_num(optarg, 16, 65536, &v) && v % 16 == 0;
			  a->hidden = (int)v; break;
		case 'w': ok = bench_parse_num(optarg, 1, 64, &v); a->workers = (int)v; break;
		case 'b': ok = bench_parse_num(optarg, 64, 1 << 20, &v); a->host_budget_mib = v; break;
		case 'h': bench_usage(stdout, argv[0]); return 1;
		default: bench_usage(stderr, argv[0]); return 2;
		}
		if (!ok) {
			fprintf(stderr, "%s: --%s: value out of range\n", argv[0], longopts[idx].name);
			return 2;
		}
	}
	if (optind != argc) {
		bench_usage(stderr, argv[0]);
		return 2;
	}
	if (a->distinct > a->adapters)
		a->distinct = a->adapters;
	return 0;
}

struct bench_client {
	pthread_t thread;
	const char *socket;
	char (*dirs)[PATH_MAX];     /* the distinct adapters */
	size_t n_dirs;
	size_t first, step, count;  /* versions first, first + step, ... (count of them) */
	double t0;                  /* when every client was told to start loading */
	double first_done, last_done;
	int rc;
	char msg[256];
	pthread_barrier_t *imported, *start;
};

static void bench_ref(size_t i, char *buf, size_t cap)
{
	snprintf(buf, cap, "many/a%05zu", i);
}

static void *bench_client_run(void *arg)
{
	struct bench_client *c = arg;
	lorastore *conn = NULL;
	char ref[32];
	c->rc = lorastore_connect(c->socket, &conn);
	if (c->rc)
		snprintf(c->msg, sizeof(c->msg), "connect: %s", lorastore_strerror(c->rc));
	for (size_t k = 0; k < c->count && !c->rc; k++) {
		size_t i = c->first + k * c->step;
		bench_ref(i, ref, sizeof(ref));
		lorastore_import_opts io = {.name = ref};
		c->rc = lorastore_import_dir(conn, c->dirs[i % c->n_dirs], &io, NULL);
		if (c->rc)
			snprintf(c->msg, sizeof(c->msg), "import %s: %s", ref, lorastore_errmsg(conn));
	}
	pthread_barrier_wait(c->imported);
	pthread_barrier_wait(c->start);
	if (c->rc) {
		lorastore_close(conn);
		return NULL;
	}
	for (size_t k = 0; k < c->count; k++) {
		bench_ref(c->first + k * c->step, ref, sizeof(ref));
		int rc = lorastore_load_tier(conn, ref, LORASTORE_TIER_DEVICE, NULL);
		double t = bench_now() - c->t0;
		if (rc) {
			c->rc = rc;
			snprintf(c->msg, sizeof(c->msg), "load %s: %s", ref, lorastore_errmsg(conn));
			break;
		}
		if (k == 0)
			c->first_done = t;
		c->last_done = t;
	}
	lorastore_close(conn);
	return NULL;
}

static const lorastore_tier_stats *bench_device_tier(const lorastore_stats *s)
{
	for (size_t i = 0; i < s->tier_count; i++)
		if (strcmp(s->tiers[i].name, "device") == 0)
			return &s->tiers[i];
	return NULL;
}

int main(int argc, char **argv)
{
	struct bench_args a;
	int prc = bench_parse(argc, argv, &a);
	if (prc)
		return prc == 1 ? 0 : prc;

	char *work = synth_mkdtemp("bench-many");
	/* The distinct adapters, written once each. */
	char (*dirs)[PATH_MAX] = calloc(a.distinct, sizeof(*dirs));
	if (!dirs)
		return 1;
	for (size_t i = 0; i < a.distinct; i++) {
		snprintf(dirs[i], sizeof(dirs[i]), "%s/src%zu", work, i);
		struct synth_opts o = {.family = SYNTH_LLAMA, .layers = a.layers, .rank = a.rank,
				       .dtype = LS_DTYPE_BF16, .hidden = a.hidden, .heads = 32,
				       .kv_heads = 32, .seed = 1000 + i};
		if (mkdir(dirs[i], 0755) || synth_adapter_dir(dirs[i], &o)) {
			fprintf(stderr, "bench_device_many: writing %s failed\n", dirs[i]);
			return 1;
		}
	}
	/* q/k/v/o, each A [rank][hidden] and B [hidden][rank], BF16. */
	uint64_t data = (uint64_t)a.layers * 4 * 2 * (uint64_t)a.rank * (uint64_t)a.hidden * 2;
	uint64_t device_budget = a.adapters * (data + (64u << 10)) + (1ull << 30);
	char dev_budget[32], host_budget[32], workers[16];
	snprintf(dev_budget, sizeof(dev_budget), "%lluMiB",
		 (unsigned long long)(device_budget >> 20));
	snprintf(host_budget, sizeof(host_budget), "%lluMiB", a.host_budget_mib);
	snprintf(workers, sizeof(workers), "%d", a.workers);
	const char *args[] = {"--backend", "cuda", "--device-budget", dev_budget,
			      "--host-budget", host_budget, "--workers", workers,
			      "--log-level", "warning", NULL};
	struct ls_daemon_proc dp;
	if (ls_daemon_start(&dp, NULL, args)) {
		fprintf(stderr, "bench_device_many: lorastored did not start (log: %s)\n", dp.log);
		return 1;
	}
	lorastore *conn = NULL;
	if (lorastore_connect(dp.socket, &conn)) {
		fprintf(stderr, "bench_device_many: connect failed\n");
		return 1;
	}
	lorastore_stats st;
	if (lorastore_stats_get(conn, &st) || !bench_device_tier(&st)) {
		fprintf(stderr, "bench_device_many: the daemon serves no device tier\n");
		return 1;
	}

	pthread_barrier_t imported, start;
	pthread_barrier_init(&imported, NULL, (unsigned)a.clients + 1);
	pthread_barrier_init(&start, NULL, (unsigned)a.clients + 1);
	struct bench_client *cl = calloc(a.clients, sizeof(*cl));
	if (!cl)
		return 1;
	double t = bench_now();
	for (size_t c = 0; c < a.clients; c++) {
		cl[c] = (struct bench_client){.socket = dp.socket, .dirs = dirs,
					      .n_dirs = a.distinct, .first = c,
					      .step = a.clients, .imported = &imported,
					      .start = &start};
		cl[c].count = c < a.adapters ? (a.adapters - c + a.clients - 1) / a.clients : 0;
		pthread_create(&cl[c].thread, NULL, bench_client_run, &cl[c]);
	}
	pthread_barrier_wait(&imported);
	double import_s = bench_now() - t;
	/* Every version imported, nothing resident: one clock for all the clients. */
	double t0 = bench_now();
	for (size_t c = 0; c < a.clients; c++)
		cl[c].t0 = t0;
	pthread_barrier_wait(&start);
	double first = -1, all = 0;
	int failed = 0;
	for (size_t c = 0; c < a.clients; c++) {
		pthread_join(cl[c].thread, NULL);
		if (cl[c].rc) {
			fprintf(stderr, "bench_device_many: client %zu: %s\n", c, cl[c].msg);
			failed = 1;
			continue;
		}
		if (cl[c].count == 0)
			continue;
		if (first < 0 || cl[c].first_done < first)
			first = cl[c].first_done;
		if (cl[c].last_done > all)
			all = cl[c].last_done;
	}

	lorastore_stats after;
	int src = lorastore_stats_get(conn, &after);
	const lorastore_tier_stats *dt = src ? NULL : bench_device_tier(&after);
	double gb = (double)a.adapters * (double)data / 1e9;
	printf("bench_device_many: %zu adapters of %.1f MB (%d layers, rank %d, %d wide, BF16, "
	       "from %zu distinct), %zu clients\n",
	       a.adapters, (double)data / 1e6, a.layers, a.rank, a.hidden, a.distinct, a.clients);
	printf("  import of all versions:        %8.2f s\n", import_s);
	if (!failed) {
		printf("  first adapter usable after:    %8.3f s\n", first);
		printf("  all %zu usable after:        %8.2f s  (%.2f GB, %.2f GB/s)\n", a.adapters,
		       all, gb, gb / all);
	}
	if (dt) {
		printf("  device tier: %u adapters resident, %.2f GB used of a %.2f GB budget, "
		       "slabs %.2f GB\n",
		       dt->adapters, (double)dt->used / 1e9, (double)dt->budget / 1e9,
		       (double)dt->slab_bytes / 1e9);
		printf("  evictions (all tiers): %llu; loads %llu\n",
		       (unsigned long long)after.evictions, (unsigned long long)after.loads);
		if (dt->adapters != a.adapters) {
			fprintf(stderr, "bench_device_many: %u of %zu adapters resident on the device "
				"at the end\n", dt->adapters, a.adapters);
			failed = 1;
		}
	}
	const char *drv = getenv("LORASTORE_CUDA_DRIVER");
	if (drv && *drv)
		printf("  (driver %s: with the test double these figures mean nothing)\n", drv);

	lorastore_close(conn);
	if (ls_daemon_stop(&dp))
		failed = 1;
	ls_daemon_cleanup(&dp);
	synth_rm_rf(work);
	free(work);
	free(dirs);
	free(cl);
	return failed;
}
