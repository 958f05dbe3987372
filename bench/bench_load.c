/*
 * Cold load throughput (blob -> resident) against reading the same blobs.
 *
 * COUNT distinct synthetic adapters (Llama-style q/k/v/o, LAYERS layers,
 * rank RANK, HIDDEN wide, F16; 67.1 MB each by default) are imported into a
 * real lorastored.  A timed lorastore load is one lorastore_load of an adapter
 * that is not resident, which returns when the adapter is resident: the daemon
 * opens the blob, reads its header, reads the data region with one io_uring
 * O_DIRECT read into a memfd slab, and checks the region's XXH3 on a worker
 * thread.  It always verifies, so there is no lorastore run without it.
 *
 * Floors, over the same blob files (state/blobs/<digest>.blob), in the same run:
 *   (a) page cache   open, read(2) the whole file into a buffer, close; the
 *                    blobs are in the page cache (written by the import, and
 *                    read once before timing);
 *   (b) O_DIRECT     the same with O_DIRECT into a 4096-aligned buffer: the
 *                    daemon's own read path, bypassing the page cache;
 *   (c) O_DIRECT + XXH3   (b), then XXH3-64 of the bytes read: the work of a
 *                    load without the daemon around it;
 *   (d) io_uring     the whole file with one io_uring O_DIRECT read, waited
 *                    for: the daemon's read, without the daemon (on the
 *                    machine this was written on, (b) and (d) agree within a
 *                    few percent).
 * --event-loop both starts two daemons, one per event-loop engine (io_uring
 * and epoll, each with its own state directory holding the same adapters),
 * and their loads take turns with the floors like any other method; on the
 * epoll engine the daemon's read is a pread(2) on an I/O thread.
 * Each adapter has its own destination, on both sides: the floors read
 * adapter i into buffer i, and the daemon keeps a round's adapters resident
 * (so each lands in its own part of the slabs) and they are all evicted, not
 * timed, at the end of the round.  On the VM this was written on, the speed
 * of an O_DIRECT read depended on the memory it landed in (the same file read
 * into one buffer at 600 MB/s and into another at 1,500 MB/s, run after run),
 * so one shared buffer made either side look 2-3x faster by chance.
 * Buffers are allocated and touched before timing, as the daemon's slab pages
 * are: every method runs once on every adapter before the timed rounds (so
 * the slabs and the buffers are faulted in, and the disk's own caches are as
 * warm for one method as for another).  Within a round the order of the
 * methods rotates from adapter to adapter.  Nothing is dropped globally.
 *
 * MB is 10^6 bytes moved by the method: the blob's data region for
 * lorastore (what it reads and verifies), the whole blob file for the floors
 * (header and manifest pages add about 0.1%).  MB/s is total bytes over total
 * time of that method; MB/s@med is the bytes of one load over the median
 * latency (a typical load, unmoved by the few reads that land in slow memory);
 * latencies are per adapter, wall clock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>
#include <xxhash.h>

#include "bench_args.h"
#include "daemon_proc.h"
#include "lorastore.h"
#include "synth.h"

#define BENCH_PAGE 4096u

struct bench_args {
	size_t count;       /* adapters */
	int layers, rank, hidden;
	size_t rounds;      /* timed loads of each adapter by each method */
	const char *dir;    /* parent of the work directory, or NULL for $TMPDIR or /tmp */
	bool keep;          /* leave the work directory in place */
	bool trace;         /* print every timed load on stderr */
	const char *engines[2]; /* --event-loop of each daemon */
	unsigned n_engines;
};

struct bench_adapter {
	char ref[64];
	char blob[PATH_MAX];
	uint64_t data_bytes;   /* its tensors' bytes (tensor_bytes): what a load moves */
	uint64_t blob_bytes;   /* the blob file */
};

/* M_LORASTORE is the first daemon's load, M_LORASTORE2 the second's (--event-loop both). */
enum bench_method {
	M_LORASTORE, M_LORASTORE2, M_DIRECT, M_CACHE, M_DIRECT_XXH3, M_URING, M_COUNT
};

/* The daemons' labels are filled in once their engines are known. */
static const char *bench_method_label[M_COUNT] = {
	"lorastore_load (not resident)",
	"lorastore_load (not resident)",
	"floor (b) O_DIRECT read(2)",
	"floor (a) page-cache read(2)",
	"floor (c) O_DIRECT read(2) + XXH3",
	"floor (d) O_DIRECT io_uring read",
};

struct bench_result {
	size_t n;
	double total_s;
	uint64_t bytes;
	uint64_t dev_bytes; /* read from the block device (read_bytes of /proc/PID/io) */
	double *lat_ms;     /* rounds * count, sorted after the run */
};

static double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* snprintf for paths: a path that does not fit ends the benchmark. */
static void bench_path(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void bench_path(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= len) {
		fprintf(stderr, "path too long: %s...\n", buf);
		exit(1);
	}
}

static void bench_usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--count N] [--rounds N] [--layers N] [--rank N] [--hidden N]\n"
		"       [--event-loop auto|io_uring|epoll|both] [--dir DIR] [--keep] [--trace]\n"
		"\n"
		"Import N synthetic adapters (q/k/v/o, F16) into a real lorastored, then time\n"
		"evict + lorastore_load of each (O_DIRECT read into a memfd slab and an\n"
		"XXH3 check) against reading the same blob files with read(2) from the page\n"
		"cache, with O_DIRECT, and with O_DIRECT plus XXH3 (the floors).\n"
		"\n"
		"  --count N   adapters (default 8)\n"
		"  --rounds N  timed loads of each adapter by each method (default 5)\n"
		"  --layers N  layers of each adapter (default 16)\n"
		"  --rank N    rank (default 64)\n"
		"  --hidden N  width of the q/k/v/o modules (default 4096)\n"
		"              bytes per adapter: layers * 4 * 2 * rank * hidden * 2\n"
		"              (default 67.1 MB)\n"
		"  --event-loop ENGINE\n"
		"              the daemon's event-loop engine (default auto: the daemon's\n"
		"              choice); both: one daemon per engine, taking turns with the\n"
		"              floors\n"
		"  --dir DIR   create the work directory under DIR (default $TMPDIR or /tmp)\n"
		"  --keep      keep the work directory (inputs, daemon state and log)\n"
		"  --trace     print every timed load or read on stderr\n"
		"  --help      this text\n",
		argv0);
}

static int bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option longopts[] = {
		{"count", required_argument, NULL, 'n'},
		{"rounds", required_argument, NULL, 'r'},
		{"layers", required_argument, NULL, 'l'},
		{"rank", required_argument, NULL, 'R'},
		{"hidden", required_argument, NULL, 'H'},
		{"dir", required_argument, NULL, 'd'},
		{"keep", no_argument, NULL, 'k'},
		{"trace", no_argument, NULL, 't'},
		{"event-loop", required_argument, NULL, 'e'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	a->count = 8;
	a->rounds = 5;
	a->layers = 16;
	a->rank = 64;
	a->hidden = 4096;
	a->dir = NULL;
	a->keep = false;
	a->trace = false;
	a->engines[0] = "auto";
	a->n_engines = 1;
	int c;
	unsigned long long v;
	while ((c = getopt_long(argc, argv, "n:r:l:R:H:d:kte:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'n':
			if (!bench_parse_num(optarg, 1, 10000, &v)) {
				fprintf(stderr, "%s: --count wants 1 to 10000\n", argv[0]);
				return 2;
			}
			a->count = (size_t)v;
			break;
		case 'r':
			if (!bench_parse_num(optarg, 1, 1000, &v)) {
				fprintf(stderr, "%s: --rounds wants 1 to 1000\n", argv[0]);
				return 2;
			}
			a->rounds = (size_t)v;
			break;
		case 'l':
			if (!bench_parse_num(optarg, 1, 512, &v)) {
				fprintf(stderr, "%s: --layers wants 1 to 512\n", argv[0]);
				return 2;
			}
			a->layers = (int)v;
			break;
		case 'R':
			if (!bench_parse_num(optarg, 1, 1024, &v)) {
				fprintf(stderr, "%s: --rank wants 1 to 1024\n", argv[0]);
				return 2;
			}
			a->rank = (int)v;
			break;
		case 'H':
			/* A multiple of 16: the heads of the synthetic model divide it. */
			if (!bench_parse_num(optarg, 16, 65536, &v) || v % 16) {
				fprintf(stderr, "%s: --hidden wants a multiple of 16, 16 to 65536\n",
					argv[0]);
				return 2;
			}
			a->hidden = (int)v;
			break;
		case 'd':
			a->dir = optarg;
			break;
		case 'k':
			a->keep = true;
			break;
		case 't':
			a->trace = true;
			break;
		case 'e':
			if (!bench_parse_engines(optarg, a->engines, &a->n_engines)) {
				fprintf(stderr, "%s: --event-loop wants auto, io_uring, epoll or both\n",
					argv[0]);
				return 2;
			}
			break;
		case 'h':
			bench_usage(stdout, argv[0]);
			return 1;
		default:
			bench_usage(stderr, argv[0]);
			return 2;
		}
	}
	if (optind != argc) {
		bench_usage(stderr, argv[0]);
		return 2;
	}
	return 0;
}

/* A fresh work directory under parent (mkdtemp), malloc'd; NULL on failure. */
static char *bench_workdir(const char *parent)
{
	char tmpl[PATH_MAX];
	if (mkdir(parent, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "%s: %s\n", parent, strerror(errno));
		return NULL;
	}
	bench_path(tmpl, sizeof(tmpl), "%s/lorastore-bench-load-XXXXXX", parent);
	if (!mkdtemp(tmpl)) {
		fprintf(stderr, "%s: %s\n", tmpl, strerror(errno));
		return NULL;
	}
	return strdup(tmpl);
}

/* User + system CPU seconds of a live process (all its threads), from /proc. */
static double bench_proc_cpu(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0.0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0.0;
	buf[n] = '\0';
	const char *p = strrchr(buf, ')');
	if (!p)
		return 0.0;
	unsigned long long ut = 0, st = 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return 0.0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/*
 * Bytes a process has had read from the block layer for it (read_bytes of
 * /proc/PID/io, all threads, io_uring's workers included): tells a read that
 * reached the device from one served by the page cache.  0 when unreadable.
 */
static uint64_t bench_proc_dev_read(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/io", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	const char *p = strstr(buf, "\nread_bytes:");
	unsigned long long v = 0;
	if (!p || sscanf(p + 12, "%llu", &v) != 1)
		return 0;
	return v;
}

/* Read a whole file (at most cap bytes) into buf with extra open flags; bytes or -errno. */
static int64_t bench_read_file(const char *path, int flags, uint8_t *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | flags);
	if (fd < 0)
		return -errno;
	int64_t total = 0;
	while ((size_t)total < cap) {
		ssize_t r = read(fd, buf + total, cap - (size_t)total);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			total = -errno;
			break;
		}
		if (r == 0)
			break;
		total += r;
	}
	close(fd);
	return total;
}

/* Read a whole file (at most cap bytes) with O_DIRECT io_uring reads, one at a time. */
static int64_t bench_read_uring(struct io_uring *ring, const char *path, uint8_t *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (fd < 0)
		return -errno;
	int64_t total = 0;
	while ((size_t)total < cap) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
		size_t left = cap - (size_t)total;
		io_uring_prep_read(sqe, fd, buf + total, left > (1u << 30) ? (1u << 30) : (unsigned)left,
				   (uint64_t)total);
		struct io_uring_cqe *cqe;
		int rc = io_uring_submit_and_wait(ring, 1);
		if (rc >= 0)
			rc = io_uring_peek_cqe(ring, &cqe);
		if (rc < 0) {
			total = rc;
			break;
		}
		int res = cqe->res;
		io_uring_cqe_seen(ring, cqe);
		if (res < 0) {
			total = res;
			break;
		}
		if (res == 0)
			break;
		total += res;
	}
	close(fd);
	return total;
}

/* Generate the inputs (not timed). */
static int bench_generate(const char *work, const struct bench_args *a, uint64_t *st_bytes)
{
	char path[PATH_MAX];
	bench_path(path, sizeof(path), "%s/in", work);
	if (mkdir(path, 0755) != 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	*st_bytes = 0;
	for (size_t i = 0; i < a->count; i++) {
		char dir[PATH_MAX];
		bench_path(dir, sizeof(dir), "%s/in/a%04zu", work, i);
		if (mkdir(dir, 0755) != 0) {
			fprintf(stderr, "%s: %s\n", dir, strerror(errno));
			return -1;
		}
		struct synth_opts o = {
			.family = SYNTH_LLAMA,
			.layers = a->layers,
			.rank = a->rank,
			.dtype = LS_DTYPE_F16,
			.hidden = a->hidden,
			.heads = 16,
			.kv_heads = 16,
			.seed = 0x10ad0000u + (uint64_t)i,
		};
		int rc = synth_adapter_dir(dir, &o);
		if (rc) {
			fprintf(stderr, "%s: synth_adapter_dir: %s\n", dir, strerror(-rc));
			return -1;
		}
		struct stat sb;
		bench_path(path, sizeof(path), "%s/adapter_model.safetensors", dir);
		if (stat(path, &sb) == 0)
			*st_bytes += (uint64_t)sb.st_size;
	}
	return 0;
}

/* Import every input and learn its blob path and sizes. */
static int bench_import(lorastore *conn, const char *work, const char *state,
			const struct bench_args *a, struct bench_adapter *ad)
{
	for (size_t i = 0; i < a->count; i++) {
		char dir[PATH_MAX];
		bench_path(dir, sizeof(dir), "%s/in/a%04zu", work, i);
		snprintf(ad[i].ref, sizeof(ad[i].ref), "bench/load%04zu", i);
		lorastore_import_opts io = {.name = ad[i].ref};
		lorastore_list *l = NULL;
		int rc = lorastore_import_dir_entry(conn, dir, &io, &l);
		if (rc) {
			fprintf(stderr, "import %s: %s\n", dir, lorastore_errmsg(conn));
			return -1;
		}
		const lorastore_entry *e = lorastore_list_entry(l, 0);
		bench_path(ad[i].blob, sizeof(ad[i].blob), "%s/blobs/%s.blob", state, e->digest);
		ad[i].data_bytes = e->tensor_bytes;
		lorastore_list_free(l);
		struct stat sb;
		if (stat(ad[i].blob, &sb) != 0) {
			fprintf(stderr, "%s: %s\n", ad[i].blob, strerror(errno));
			return -1;
		}
		ad[i].blob_bytes = (uint64_t)sb.st_size;
	}
	return 0;
}

/* One load or read of adapter i by method m; its wall time in *ms. */
static int bench_one(enum bench_method m, lorastore *conn, struct io_uring *ring,
		     const struct bench_adapter *ad, uint8_t *buf, size_t cap, double *ms,
		     uint64_t *bytes)
{
	/* Both daemons' loads are the same call, on their own connections. */
	if (m == M_LORASTORE2)
		m = M_LORASTORE;
	double t0 = bench_now();
	int64_t n = 0;
	int rc = 0;
	switch (m) {
	case M_LORASTORE:
	case M_LORASTORE2:
		rc = lorastore_load(conn, ad->ref);
		n = (int64_t)ad->data_bytes;
		break;
	case M_DIRECT:
	case M_DIRECT_XXH3:
		n = bench_read_file(ad->blob, O_DIRECT, buf, cap);
		if (n >= 0 && m == M_DIRECT_XXH3) {
			/* Kept in a volatile so that the hash cannot be skipped. */
			volatile XXH64_hash_t h = XXH3_64bits(buf, (size_t)n);
			(void)h;
		}
		break;
	case M_CACHE:
		n = bench_read_file(ad->blob, 0, buf, cap);
		break;
	case M_URING:
		n = bench_read_uring(ring, ad->blob, buf, cap);
		break;
	case M_COUNT:
		break;
	}
	*ms = (bench_now() - t0) * 1e3;
	if (m == M_LORASTORE) {
		if (rc) {
			fprintf(stderr, "load %s: %s\n", ad->ref, lorastore_errmsg(conn));
			return -1;
		}
	} else if (n < 0 || (uint64_t)n != ad->blob_bytes) {
		fprintf(stderr, "%s: read %lld of %llu bytes: %s\n", ad->blob, (long long)n,
			(unsigned long long)ad->blob_bytes, n < 0 ? strerror((int)-n) : "short");
		return -1;
	}
	*bytes += (uint64_t)n;
	return 0;
}

/* Back to cold: evict every adapter (not timed). */
static int bench_evict_all(lorastore *conn, const struct bench_adapter *ad, size_t count)
{
	for (size_t i = 0; i < count; i++)
		if (lorastore_evict(conn, ad[i].ref) != 0) {
			fprintf(stderr, "evict %s: %s\n", ad[i].ref, lorastore_errmsg(conn));
			return -1;
		}
	return 0;
}

static int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static double bench_percentile(const double *v, size_t n, double p)
{
	if (n == 0)
		return 0.0;
	size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

/* Total bytes over total time: what a stream of loads achieves, slow ones included. */
static double bench_mbps(const struct bench_result *r)
{
	return r->total_s > 0 ? (double)r->bytes / 1e6 / r->total_s : 0.0;
}

/* Mean bytes of one load over the median latency (lat_ms sorted): a typical load. */
static double bench_mbps_median(const struct bench_result *r)
{
	double med = bench_percentile(r->lat_ms, r->n, 50.0);
	return med > 0 && r->n ? (double)r->bytes / (double)r->n / 1e6 / (med / 1e3) : 0.0;
}

int main(int argc, char **argv)
{
	struct bench_args args;
	setvbuf(stdout, NULL, _IOLBF, 0);
	int prc = bench_parse(argc, argv, &args);
	if (prc)
		return prc == 1 ? 0 : prc;

	const char *parent = args.dir;
	if (!parent) {
		parent = getenv("TMPDIR");
		if (!parent || !*parent)
			parent = "/tmp";
	}
	char *work = bench_workdir(parent);
	if (!work)
		return 1;
	fprintf(stderr, "work directory %s\n", work);

	int ret = 1;
	unsigned ne = args.n_engines;
	struct ls_daemon_proc d[2] = {{.pid = -1, .notify_fd = -1}, {.pid = -1, .notify_fd = -1}};
	lorastore *conns[2] = {NULL, NULL};
	char labels[2][64];
	struct io_uring ring;
	bool ring_up = false;
	uint8_t **bufs = NULL;   /* one destination buffer per adapter */
	struct bench_result res[M_COUNT];
	memset(res, 0, sizeof(res));
	/* The adapters as each daemon has them: the same refs, each its own blobs. */
	struct bench_adapter *ads[2] = {calloc(args.count, sizeof(struct bench_adapter)),
					calloc(args.count, sizeof(struct bench_adapter))};
	struct bench_adapter *ad = ads[0];
	bool alloc_ok = ads[0] && ads[1];
	for (int m = 0; m < M_COUNT; m++) {
		res[m].lat_ms = calloc(args.count * args.rounds, sizeof(double));
		alloc_ok = alloc_ok && res[m].lat_ms;
	}
	if (!alloc_ok)
		goto out;

	uint64_t st_bytes = 0;
	double g0 = bench_now();
	if (bench_generate(work, &args, &st_bytes) != 0)
		goto out;
	fprintf(stderr, "generated %zu adapters (%.1f MB of safetensors) in %.1f s\n", args.count,
		(double)st_bytes / 1e6, bench_now() - g0);

	/*
	 * Room for every adapter at once, so that no load evicts another: each
	 * adapter's data and table, plus one slab (256 MiB) of slack, since
	 * adapters of just over a quarter slab leave the rest of a slab unused.
	 */
	uint64_t per = (uint64_t)args.layers * 4 * 2 * (uint64_t)args.rank *
		       (uint64_t)args.hidden * 2;
	uint64_t budget = (per + (1u << 20)) * args.count + (256ull << 20);
	char budget_s[32];
	snprintf(budget_s, sizeof(budget_s), "%llu", (unsigned long long)budget);
	for (unsigned e = 0; e < ne; e++) {
		char ddir[PATH_MAX];
		bench_path(ddir, sizeof(ddir), "%s/daemon-%u", work, e);
		if (mkdir(ddir, 0755) != 0) {
			fprintf(stderr, "%s: %s\n", ddir, strerror(errno));
			goto out;
		}
		const char *const dargs[] = {"--host-budget", budget_s, "--log-level", "warning",
					     "--event-loop", args.engines[e], NULL};
		if (ls_daemon_start(&d[e], ddir, dargs) != 0)
			goto out;
		snprintf(labels[e], sizeof(labels[e]), "lorastore_load (%s)", d[e].engine);
		bench_method_label[e == 0 ? M_LORASTORE : M_LORASTORE2] = labels[e];
		int rc = lorastore_connect(d[e].socket, &conns[e]);
		if (rc) {
			fprintf(stderr, "connect: %s\n", lorastore_errmsg(conns[e]));
			goto out;
		}
		g0 = bench_now();
		if (bench_import(conns[e], work, d[e].state, &args, ads[e]) != 0)
			goto out;
		fprintf(stderr, "imported into the %s daemon in %.1f s\n", d[e].engine,
			bench_now() - g0);
	}
	/* The methods of this run: the second daemon's only with two engines. */
	bool used[M_COUNT];
	for (int m = 0; m < M_COUNT; m++)
		used[m] = m != M_LORASTORE2 || ne == 2;

	size_t cap = 0;
	for (size_t i = 0; i < args.count; i++)
		if (ad[i].blob_bytes > cap)
			cap = (size_t)ad[i].blob_bytes;
	cap = (cap + BENCH_PAGE - 1) / BENCH_PAGE * BENCH_PAGE;
	bufs = calloc(args.count, sizeof(*bufs));
	if (!bufs)
		goto out;
	for (size_t i = 0; i < args.count; i++) {
		if (posix_memalign((void **)&bufs[i], BENCH_PAGE, cap) != 0) {
			bufs[i] = NULL;
			fprintf(stderr, "out of memory for a %zu-byte buffer\n", cap);
			goto out;
		}
		memset(bufs[i], 0, cap);
	}
	int urc = io_uring_queue_init(4, &ring, 0);
	if (urc < 0) {
		fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-urc));
		goto out;
	}
	ring_up = true;

	/* Warm-up, not timed: every method once on every adapter. */
	for (size_t i = 0; i < args.count; i++)
		for (int m = 0; m < M_COUNT; m++) {
			if (!used[m])
				continue;
			double ms;
			uint64_t b = 0;
			unsigned e = m == M_LORASTORE2;
			if (bench_one((enum bench_method)m, conns[e], &ring, &ads[e][i], bufs[i], cap,
				      &ms, &b) != 0)
				goto out;
		}
	for (unsigned e = 0; e < ne; e++)
		if (bench_evict_all(conns[e], ads[e], args.count) != 0)
			goto out;

	double dcpu0[2] = {bench_proc_cpu(d[0].pid), ne == 2 ? bench_proc_cpu(d[1].pid) : 0.0};
	for (size_t r = 0; r < args.rounds; r++) {
		for (size_t i = 0; i < args.count; i++)
			for (int k = 0; k < M_COUNT; k++) {
				enum bench_method m = (enum bench_method)((k + r + i) % M_COUNT);
				if (!used[m])
					continue;
				unsigned e = m == M_LORASTORE2;
				struct bench_result *x = &res[m];
				pid_t who = m == M_LORASTORE || m == M_LORASTORE2 ? d[e].pid : getpid();
				uint64_t dev0 = bench_proc_dev_read(who);
				double ms;
				if (bench_one(m, conns[e], &ring, &ads[e][i], bufs[i], cap, &ms,
					      &x->bytes) != 0)
					goto out;
				x->dev_bytes += bench_proc_dev_read(who) - dev0;
				if (args.trace)
					fprintf(stderr, "round %zu adapter %zu %-34s %8.2f ms\n", r, i,
						bench_method_label[m], ms);
				x->lat_ms[x->n++] = ms;
				x->total_s += ms / 1e3;
			}
		for (unsigned e = 0; e < ne; e++)
			if (bench_evict_all(conns[e], ads[e], args.count) != 0)
				goto out;
	}
	double dcpu[2] = {bench_proc_cpu(d[0].pid) - dcpu0[0],
			  ne == 2 ? bench_proc_cpu(d[1].pid) - dcpu0[1] : 0.0};

	printf("bench_load: %zu distinct adapters (Llama q/k/v/o, %d layers, rank %d, %d wide, "
	       "F16), %.1f MB resident each, %.1f MB blob files; %zu rounds\n",
	       args.count, args.layers, args.rank, args.hidden, (double)ad[0].data_bytes / 1e6,
	       (double)ad[0].blob_bytes / 1e6, args.rounds);
	printf("every method ran once on every adapter before timing; MB = 10^6 bytes moved "
	       "(data region for lorastore, whole blob for the floors);\n"
	       "device MB/ld = bytes the block layer read per load (read_bytes of /proc/PID/io: "
	       "0 means the page cache served it)\n\n");
	printf("%-34s %6s %9s %9s %10s %9s %9s %12s\n", "what", "loads", "MB/s", "MB/s@med",
	       "median ms", "min ms", "max ms", "device MB/ld");
	static const int order[M_COUNT] = {M_LORASTORE, M_LORASTORE2, M_DIRECT,
					   M_CACHE,     M_DIRECT_XXH3, M_URING};
	for (int k = 0; k < M_COUNT; k++) {
		struct bench_result *x = &res[order[k]];
		if (!used[order[k]])
			continue;
		qsort(x->lat_ms, x->n, sizeof(double), bench_cmp_double);
		printf("%-34s %6zu %9.1f %9.1f %10.2f %9.2f %9.2f %12.1f\n",
		       bench_method_label[order[k]], x->n, bench_mbps(x), bench_mbps_median(x),
		       bench_percentile(x->lat_ms, x->n, 50.0), x->lat_ms[0], x->lat_ms[x->n - 1],
		       (double)x->dev_bytes / 1e6 / (double)x->n);
	}
	static const int floors[] = {M_DIRECT, M_DIRECT_XXH3, M_URING, M_CACHE};
	for (unsigned e = 0; e < ne; e++) {
		const struct bench_result *l = &res[e == 0 ? M_LORASTORE : M_LORASTORE2];
		double ls = bench_mbps(l), lsm = bench_mbps_median(l);
		printf("\n%s / floor, in MB/s and in MB/s@med (target >= 0.80 of (b)):\n",
		       labels[e]);
		for (size_t k = 0; k < sizeof(floors) / sizeof(floors[0]); k++)
			printf("  %-34s %5.2f %5.2f\n", bench_method_label[floors[k]],
			       ls / bench_mbps(&res[floors[k]]), lsm / bench_mbps_median(&res[floors[k]]));
		printf("daemon cpu (%s): %.2f ms per load (user + system, all threads, /proc tick "
		       "resolution)\n",
		       d[e].engine, l->n ? dcpu[e] * 1e3 / (double)l->n : 0.0);
	}
	ret = 0;

out:
	for (unsigned e = 0; e < 2; e++) {
		lorastore_close(conns[e]);
		if (d[e].pid > 0) {
			int st = ls_daemon_stop(&d[e]);
			if (st != 0) {
				fprintf(stderr, "lorastored exited with %d (log: %s)\n", st, d[e].log);
				ret = 1;
			}
		}
		if (d[e].notify_fd >= 0)
			close(d[e].notify_fd);
	}
	if (ring_up)
		io_uring_queue_exit(&ring);
	for (size_t i = 0; bufs && i < args.count; i++)
		free(bufs[i]);
	free(bufs);
	free(ads[0]);
	free(ads[1]);
	for (int m = 0; m < M_COUNT; m++)
		free(res[m].lat_ms);
	if (args.keep) {
		fprintf(stderr, "kept %s\n", work);
	} else {
		synth_rm_rf(work);
	}
	free(work);
	return ret;
}
