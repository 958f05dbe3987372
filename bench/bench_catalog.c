/*
 * A large catalog must not slow the warm path: warm-acquire latency while a
 * second client lists the whole catalog in a loop, against the same latency
 * with no lister, in one run; and the daemon's start-up time to serving with
 * that catalog.
 *
 * The catalog: VERSIONS versions (default 100,000) of one small adapter
 * under as many names, imported through the store API into a state
 * directory before the daemon starts (blobs are content-addressed, so they
 * share one blob; each version has its record and ref file, as an import
 * through the daemon leaves them).  --state DIR keeps that directory for
 * later runs, which reuse it when it holds the versions asked for.
 *
 * Runs, alternated ROUNDS times in one daemon: "alone" (one client, warm
 * acquire + release round trips for SECONDS), "busy" (the same while
 * SPINNERS processes, default 2, spin on the CPU without touching the
 * daemon: as many as the listing keeps busy, the lister and the daemon's
 * worker that reads the catalog) and
 * "listing" (the same while a second process pages through the whole
 * catalog, 1,000 entries a page, in a loop).  Latency per round trip,
 * CLOCK_MONOTONIC, in the client; reported per run as p50, p99 and max, and
 * the median over runs.  "busy" separates the cost of sharing two CPUs with
 * a second process (and of CPUs that never idle, which on a virtual machine
 * makes wake-ups faster than on an idle one) from the cost of the listing.
 *
 * Start-up: the time from starting lorastored to READY=1 on its notify
 * socket (the socket serves), median of STARTS starts on the same catalog.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon_proc.h"
#include "lorastore.h"
#include "store.h"
#include "synth.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
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

static void die(const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, "bench_catalog: ");
	fprintf(stderr, fmt, a, b);
	fputc('\n', stderr);
	exit(1);
}

/* Versions in the catalog of state (0 when there is none). */
static uint64_t catalog_versions(const char *state)
{
	struct ls_store *st = NULL;
	struct ls_err err;
	if (ls_store_open(state, &st, &err) != 0)
		return 0;
	uint64_t n = 0;
	if (ls_catalog_count_versions(ls_store_catalog(st), &n, &err) != 0)
		n = 0;
	ls_store_close(st);
	return n;
}

/* Import the adapter in dir as names bench/v000000... until state holds n versions. */
static void populate(const char *state, const char *dir, uint64_t n)
{
	struct ls_store *st = NULL;
	struct ls_err err;
	if (mkdir(state, 0750) != 0 && errno != EEXIST)
		die("%s: %s", state, strerror(errno));
	if (ls_store_open(state, &st, &err) != 0)
		die("%s: %s", state, err.msg);
	char cfg[PATH_MAX + 64], weights[PATH_MAX + 64];
	snprintf(cfg, sizeof(cfg), "%s/adapter_config.json", dir);
	snprintf(weights, sizeof(weights), "%s/adapter_model.safetensors", dir);
	uint64_t have = 0;
	ls_catalog_count_versions(ls_store_catalog(st), &have, &err);
	double t0 = now_s();
	for (uint64_t i = have; i < n; i++) {
		int cfd = open(cfg, O_RDONLY | O_CLOEXEC), sfd = open(weights, O_RDONLY | O_CLOEXEC);
		if (cfd < 0 || sfd < 0)
			die("%s: %s", dir, strerror(errno));
		char name[64];
		snprintf(name, sizeof(name), "bench/v%06" PRIu64, i);
		struct ls_import_opts io = {.source = dir};
		Lorastore__VersionRecord *rec = NULL;
		if (ls_store_import(st, name, cfd, sfd, dir, &io, &rec, NULL, &err) != 0)
			die("import %s: %s", name, err.msg);
		lorastore__version_record__free_unpacked(rec, NULL);
		close(cfd);
		close(sfd);
		if ((i + 1) % 10000 == 0)
			fprintf(stderr, "  %" PRIu64 " versions (%.0f s)\n", i + 1, now_s() - t0);
	}
	ls_store_close(st);
}

struct lat {
	double p50, p99, max; /* microseconds */
	size_t n;
};

/* Warm acquire + release round trips for seconds; latencies in microseconds. */
static struct lat warm_run(const char *socket, double seconds)
{
	lorastore *c = NULL;
	if (lorastore_connect(socket, &c) != 0)
		die("connect: %s%s", c ? lorastore_errmsg(c) : "", "");
	size_t cap = 1 << 20, n = 0;
	double *v = malloc(cap * sizeof(*v));
	lorastore_adapter *ad = NULL;
	if (lorastore_acquire(c, "warm/a", -1, &ad) != 0) /* maps the slab once */
		die("acquire: %s%s", lorastore_errmsg(c), "");
	lorastore_adapter_release(ad);
	double end = now_s() + seconds;
	while (n < cap) {
		double t = now_s();
		if (t >= end)
			break;
		if (lorastore_acquire(c, "warm/a", -1, &ad) != 0 || lorastore_adapter_release(ad) != 0)
			die("warm acquire: %s%s", lorastore_errmsg(c), "");
		v[n++] = (now_s() - t) * 1e6;
	}
	lorastore_close(c);
	qsort(v, n, sizeof(*v), cmp_double);
	struct lat l = {.p50 = v[n / 2], .p99 = v[(size_t)((double)n * 0.99)], .max = v[n - 1], .n = n};
	free(v);
	return l;
}

/* A process that spins on the CPU until killed, touching nothing else. */
static pid_t start_spinner(void)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	volatile uint64_t x = 0;
	for (;;)
		x++;
}

static void stop_child(pid_t pid)
{
	int status = 0;
	if (waitpid(pid, &status, WNOHANG) == pid)
		die("a helper process stopped (%s)%s", WIFEXITED(status) ? "exit" : "signal", "");
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
}

/* A process that pages through the whole catalog until killed. */
static pid_t start_lister(const char *socket, uint64_t versions)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	lorastore *c = NULL;
	if (lorastore_connect(socket, &c) != 0)
		_exit(2);
	for (;;) {
		char cursor[512] = "";
		uint64_t seen = 0;
		for (;;) {
			lorastore_list *l = NULL;
			if (lorastore_list_page(c, "", cursor[0] ? cursor : NULL, 1000, &l) != 0)
				_exit(3);
			seen += lorastore_list_count(l);
			const char *next = lorastore_list_next(l);
			snprintf(cursor, sizeof(cursor), "%s", next ? next : "");
			lorastore_list_free(l);
			if (!cursor[0])
				break;
		}
		if (seen < versions)
			_exit(4);
	}
}

int main(int argc, char **argv)
{
	uint64_t versions = 100000;
	double seconds = 3;
	int rounds = 3, starts = 5, spinners = 2;
	const char *state_arg = NULL;
	static const struct option opts[] = {
		{"versions", required_argument, NULL, 'v'}, {"seconds", required_argument, NULL, 's'},
		{"rounds", required_argument, NULL, 'r'},   {"starts", required_argument, NULL, 'S'},
		{"state", required_argument, NULL, 'd'},    {"help", no_argument, NULL, 'h'},
		{"spinners", required_argument, NULL, 'p'},
		{NULL, 0, NULL, 0},
	};
	int o;
	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case 'v':
			versions = strtoull(optarg, NULL, 10);
			break;
		case 's':
			seconds = atof(optarg);
			break;
		case 'r':
			rounds = atoi(optarg);
			break;
		case 'S':
			starts = atoi(optarg);
			break;
		case 'd':
			state_arg = optarg;
			break;
		case 'p':
			spinners = atoi(optarg);
			break;
		default:
			printf("usage: bench_catalog [--versions N] [--seconds S] [--rounds R] "
			       "[--starts N] [--spinners 1-4] [--state DIR]\n");
			return o == 'h' ? 0 : 2;
		}
	}
	if (versions < 1 || rounds < 1 || starts < 1 || seconds <= 0 || spinners < 1 || spinners > 4)
		die("bad arguments%s%s", "", "");

	char *tmp = synth_mkdtemp("bench-catalog");
	char state[PATH_MAX], adir[PATH_MAX + 16], wdir[PATH_MAX + 16];
	snprintf(state, sizeof(state), "%s", state_arg ? state_arg : "");
	if (!state_arg)
		snprintf(state, sizeof(state), "%s/state", tmp);
	snprintf(adir, sizeof(adir), "%s/small", tmp);
	snprintf(wdir, sizeof(wdir), "%s/warm", tmp);
	mkdir(adir, 0755);
	mkdir(wdir, 0755);
	struct synth_opts small = {.family = SYNTH_LLAMA, .layers = 1, .rank = 2, .hidden = 16,
				   .heads = 2, .kv_heads = 1, .seed = 1};
	struct synth_opts warm = {.family = SYNTH_LLAMA, .layers = 4, .rank = 8, .seed = 2};
	if (synth_adapter_dir(adir, &small) || synth_adapter_dir(wdir, &warm))
		die("synthetic adapters in %s%s", tmp, "");

	uint64_t have = catalog_versions(state);
	if (have < versions) {
		fprintf(stderr, "populating %s: %" PRIu64 " versions (has %" PRIu64 ")\n", state,
			versions, have);
		double t0 = now_s();
		populate(state, adir, versions);
		fprintf(stderr, "populated in %.1f s\n", now_s() - t0);
	}
	have = catalog_versions(state);

	/* Start-up to READY with this catalog. */
	double *st = calloc((size_t)starts, sizeof(double));
	struct ls_daemon_proc d;
	const char *args[] = {"--state-dir", state, "--log-level", "warning", NULL};
	for (int i = 0; i < starts; i++) {
		memset(&d, 0, sizeof(d));
		double t0 = now_s();
		if (ls_daemon_start(&d, NULL, args) != 0)
			die("daemon start%s%s", "", "");
		st[i] = (now_s() - t0) * 1e3;
		if (ls_daemon_stop(&d) != 0)
			die("daemon stop%s%s", "", "");
		ls_daemon_cleanup(&d);
	}
	double startup_ms = median(st, (size_t)starts);

	memset(&d, 0, sizeof(d));
	if (ls_daemon_start(&d, NULL, args) != 0)
		die("daemon start%s%s", "", "");
	lorastore *c = NULL;
	if (lorastore_connect(d.socket, &c) != 0 ||
	    lorastore_import_dir(c, wdir, &(lorastore_import_opts){.name = "warm/a"}, NULL) != 0)
		die("warm import: %s%s", c ? lorastore_errmsg(c) : "", "");
	lorastore_close(c);

	printf("bench_catalog: %" PRIu64 " versions, %s engine, %d rounds of %.1f s\n", have + 1,
	       d.engine, rounds, seconds);
	printf("%-8s %5s %10s %10s %10s %10s\n", "run", "round", "acquires", "p50 us", "p99 us",
	       "max us");
	double *p99a = calloc((size_t)rounds, sizeof(double)), *p99l = calloc((size_t)rounds, sizeof(double));
	double *p50a = calloc((size_t)rounds, sizeof(double)), *p50l = calloc((size_t)rounds, sizeof(double));
	double *p99b = calloc((size_t)rounds, sizeof(double)), *p50b = calloc((size_t)rounds, sizeof(double));
	for (int r = 0; r < rounds; r++) {
		struct lat a = warm_run(d.socket, seconds);
		printf("%-8s %5d %10zu %10.1f %10.1f %10.1f\n", "alone", r, a.n, a.p50, a.p99, a.max);
		pid_t spinner[4];
		for (int k = 0; k < spinners; k++)
			spinner[k] = start_spinner();
		usleep(200000);
		struct lat b = warm_run(d.socket, seconds);
		for (int k = 0; k < spinners; k++)
			stop_child(spinner[k]);
		printf("%-8s %5d %10zu %10.1f %10.1f %10.1f\n", "busy", r, b.n, b.p50, b.p99, b.max);
		pid_t lister = start_lister(d.socket, have);
		usleep(200000);
		struct lat l = warm_run(d.socket, seconds);
		stop_child(lister);
		printf("%-8s %5d %10zu %10.1f %10.1f %10.1f\n", "listing", r, l.n, l.p50, l.p99, l.max);
		p99a[r] = a.p99;
		p99b[r] = b.p99;
		p99l[r] = l.p99;
		p50a[r] = a.p50;
		p50b[r] = b.p50;
		p50l[r] = l.p50;
		fflush(stdout);
	}
	double ma = median(p99a, (size_t)rounds), mb = median(p99b, (size_t)rounds),
	       ml = median(p99l, (size_t)rounds);
	printf("\nmedian p50: alone %.1f us, busy %.1f us, listing %.1f us\n",
	       median(p50a, (size_t)rounds), median(p50b, (size_t)rounds),
	       median(p50l, (size_t)rounds));
	printf("median p99: alone %.1f us, busy %.1f us, listing %.1f us\n", ma, mb, ml);
	printf("p99 listing / alone %.2f, listing / busy %.2f (target <= 1.5)\n", ml / ma, ml / mb);
	printf("start-up to READY with %" PRIu64 " versions: median %.1f ms of %d (target < 100 ms)\n",
	       have, startup_ms, starts);
	ls_daemon_stop(&d);
	ls_daemon_cleanup(&d);
	if (!state_arg)
		synth_rm_rf(tmp);
	else {
		synth_rm_rf(adir);
		synth_rm_rf(wdir);
		rmdir(tmp);
	}
	free(tmp);
	return 0;
}
