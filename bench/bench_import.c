/*
 * Import throughput of the store against a floor on the same machine.
 *
 * Inputs: COUNT synthetic PEFT adapters (Llama-style q/k/v/o, 16 layers,
 * rank 8, hidden 1024 with as many key/value heads as heads, so every module
 * is 1024 wide; F16), each from its own seed so that no two share content.
 * Content-addressed blobs dedupe identical content, and re-importing the same
 * bytes would skip the blob write and flatter the result.
 *
 * Two timed runs over the same files, floor first:
 *   floor      for each safetensors file: read it whole, write it to a new
 *              temporary file, fsync, rename into place, fsync the directory
 *              (the durability steps an import takes for its blob);
 *   lorastore  ls_store_import of each adapter into a fresh state directory.
 * Before both, every input file is read once so that both runs read from the
 * page cache (the page cache is not dropped: that would disturb the machine).
 *
 * MB is 10^6 bytes of safetensors input; latencies are per adapter, wall
 * clock (CLOCK_MONOTONIC).
 */
#include <dirent.h>
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_args.h"
#include "store.h"
#include "synth.h"

/* The adapter shape of this benchmark. */
#define BENCH_LAYERS 16
#define BENCH_RANK 8
#define BENCH_HIDDEN 1024
#define BENCH_HEADS 16

struct bench_args {
	size_t count;       /* adapters to generate and import */
	const char *dir;    /* parent of the work directory, or NULL for $TMPDIR or /tmp */
	bool keep;          /* leave the work directory in place */
};

struct bench_result {
	const char *label;
	size_t n;
	double total_s;     /* wall clock of the whole run */
	double cpu_s;       /* user + system CPU time of this process during the run */
	uint64_t bytes;     /* safetensors bytes consumed */
	double *lat_ms;     /* per-adapter latency, sorted after the run */
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

/* User + system CPU seconds of this process so far. */
static double bench_cpu(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0.0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static void bench_usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--count N] [--dir DIR] [--keep]\n"
		"\n"
		"Import N synthetic adapters (rank %d, %d layers, q/k/v/o, %d wide, F16)\n"
		"into a fresh store and compare with copying the same safetensors bytes\n"
		"with fsync and rename (the floor).\n"
		"\n"
		"  --count N  adapters to generate and import (default 1000)\n"
		"  --dir DIR  create the work directory under DIR (default $TMPDIR or /tmp)\n"
		"  --keep     keep the work directory (inputs, state, floor copies)\n"
		"  --help     this text\n",
		argv0, BENCH_RANK, BENCH_LAYERS, BENCH_HIDDEN);
}

static int bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option longopts[] = {
		{"count", required_argument, NULL, 'n'},
		{"dir", required_argument, NULL, 'd'},
		{"keep", no_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	a->count = 1000;
	a->dir = NULL;
	a->keep = false;
	int c;
	while ((c = getopt_long(argc, argv, "n:d:kh", longopts, NULL)) != -1) {
		switch (c) {
		case 'n': {
			unsigned long long v;
			if (!bench_parse_num(optarg, 1, 1000000, &v)) {
				fprintf(stderr, "%s: --count wants 1 to 1000000\n", argv[0]);
				return 2;
			}
			a->count = (size_t)v;
			break;
		}
		case 'd':
			a->dir = optarg;
			break;
		case 'k':
			a->keep = true;
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
	bench_path(tmpl, sizeof(tmpl), "%s/lorastore-bench-import-XXXXXX", parent);
	if (!mkdtemp(tmpl)) {
		fprintf(stderr, "%s: %s\n", tmpl, strerror(errno));
		return NULL;
	}
	return strdup(tmpl);
}

static void bench_input_dir(const char *work, size_t i, char *buf, size_t len)
{
	bench_path(buf, len, "%s/in/a%06zu", work, i);
}

/* Read a file whole and throw the bytes away; returns its size or -errno. */
static int64_t bench_read_through(const char *path, void *buf, size_t buflen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int64_t total = 0;
	for (;;) {
		ssize_t r = read(fd, buf, buflen);
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

/* Generate the inputs (not timed) and read every file once into the page cache. */
static int bench_generate(const char *work, size_t count, uint64_t *st_bytes)
{
	char path[PATH_MAX];
	bench_path(path, sizeof(path), "%s/in", work);
	if (mkdir(path, 0755) != 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	double t0 = bench_now();
	for (size_t i = 0; i < count; i++) {
		char dir[PATH_MAX];
		bench_input_dir(work, i, dir, sizeof(dir));
		if (mkdir(dir, 0755) != 0) {
			fprintf(stderr, "%s: %s\n", dir, strerror(errno));
			return -1;
		}
		struct synth_opts o = {
			.family = SYNTH_LLAMA,
			.layers = BENCH_LAYERS,
			.rank = BENCH_RANK,
			.dtype = LS_DTYPE_F16,
			.hidden = BENCH_HIDDEN,
			.heads = BENCH_HEADS,
			.kv_heads = BENCH_HEADS,
			.seed = 0x5eed0000u + (uint64_t)i,
		};
		int rc = synth_adapter_dir(dir, &o);
		if (rc) {
			fprintf(stderr, "%s: synth_adapter_dir: %s\n", dir, strerror(-rc));
			return -1;
		}
	}
	double t1 = bench_now();

	size_t buflen = 1u << 20;
	void *buf = malloc(buflen);
	if (!buf)
		return -1;
	*st_bytes = 0;
	for (size_t i = 0; i < count; i++) {
		static const char *const files[] = {"adapter_config.json",
						    "adapter_model.safetensors"};
		char dir[PATH_MAX];
		bench_input_dir(work, i, dir, sizeof(dir));
		for (size_t f = 0; f < 2; f++) {
			bench_path(path, sizeof(path), "%s/%s", dir, files[f]);
			int64_t n = bench_read_through(path, buf, buflen);
			if (n < 0) {
				fprintf(stderr, "%s: %s\n", path, strerror((int)-n));
				free(buf);
				return -1;
			}
			if (f == 1)
				*st_bytes += (uint64_t)n;
		}
	}
	free(buf);
	fprintf(stderr, "generated %zu adapters (%.1f MB of safetensors) in %.1f s\n", count,
		(double)*st_bytes / 1e6, t1 - t0);
	return 0;
}

/* Write len bytes at the current offset; 0 or -errno. */
static int bench_write_all(int fd, const uint8_t *p, size_t len)
{
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Floor: one file copied durably: read whole, write, fsync, rename, fsync dir. */
static int bench_copy_durable(const char *src, int out_dir_fd, size_t i, uint8_t **buf,
			      size_t *cap, uint64_t *bytes)
{
	int in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -errno;
	struct stat sb;
	if (fstat(in, &sb) != 0) {
		int rc = -errno;
		close(in);
		return rc;
	}
	size_t len = (size_t)sb.st_size;
	if (len > *cap) {
		uint8_t *nb = realloc(*buf, len);
		if (!nb) {
			close(in);
			return -ENOMEM;
		}
		*buf = nb;
		*cap = len;
	}
	size_t got = 0;
	while (got < len) {
		ssize_t r = read(in, *buf + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int rc = r < 0 ? -errno : -EIO;
			close(in);
			return rc;
		}
		got += (size_t)r;
	}
	close(in);

	char tmp[64], dst[64];
	snprintf(tmp, sizeof(tmp), "tmp-%06zu", i);
	snprintf(dst, sizeof(dst), "c%06zu.safetensors", i);
	int out = openat(out_dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (out < 0)
		return -errno;
	int rc = bench_write_all(out, *buf, len);
	if (rc == 0 && fsync(out) != 0)
		rc = -errno;
	if (close(out) != 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && renameat(out_dir_fd, tmp, out_dir_fd, dst) != 0)
		rc = -errno;
	if (rc == 0 && fsync(out_dir_fd) != 0)
		rc = -errno;
	if (rc == 0)
		*bytes += len;
	return rc;
}

static int bench_run_floor(const char *work, size_t count, struct bench_result *r)
{
	char path[PATH_MAX];
	bench_path(path, sizeof(path), "%s/floor", work);
	if (mkdir(path, 0755) != 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	uint8_t *buf = NULL;
	size_t cap = 0;
	int ret = 0;
	double c0 = bench_cpu();
	double t0 = bench_now();
	for (size_t i = 0; i < count; i++) {
		char dir[PATH_MAX];
		bench_input_dir(work, i, dir, sizeof(dir));
		bench_path(path, sizeof(path), "%s/adapter_model.safetensors", dir);
		double a = bench_now();
		int rc = bench_copy_durable(path, dfd, i, &buf, &cap, &r->bytes);
		r->lat_ms[i] = (bench_now() - a) * 1e3;
		if (rc) {
			fprintf(stderr, "floor: %s: %s\n", path, strerror(-rc));
			ret = -1;
			break;
		}
		r->n++;
	}
	r->total_s = bench_now() - t0;
	r->cpu_s = bench_cpu() - c0;
	free(buf);
	close(dfd);
	return ret;
}

/* One import the way the CLI drives it: open both files, pass the fds, close. */
static int bench_import_one(struct ls_store *store, const char *dir, const char *name,
			    uint64_t *bytes, struct ls_err *err)
{
	char path[PATH_MAX];
	bench_path(path, sizeof(path), "%s/adapter_config.json", dir);
	int cfg = open(path, O_RDONLY | O_CLOEXEC);
	if (cfg < 0)
		return ls_err_set(err, -errno, "%s: %s", path, strerror(errno));
	bench_path(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int st = open(path, O_RDONLY | O_CLOEXEC);
	if (st < 0) {
		int rc = -errno;
		close(cfg);
		return ls_err_set(err, rc, "%s: %s", path, strerror(-rc));
	}
	struct stat sb;
	int rc = fstat(st, &sb) != 0 ? -errno : 0;
	if (rc == 0)
		rc = ls_store_import(store, name, cfg, st, dir, NULL, NULL, NULL, err);
	else
		ls_err_set(err, rc, "%s: %s", path, strerror(-rc));
	close(cfg);
	close(st);
	if (rc == 0)
		*bytes += (uint64_t)sb.st_size;
	return rc;
}

static int bench_run_store(const char *work, size_t count, struct bench_result *r)
{
	char state[PATH_MAX];
	bench_path(state, sizeof(state), "%s/state", work);
	struct ls_store *store = NULL;
	struct ls_err err = {0};
	int rc = ls_store_open(state, &store, &err);
	if (rc) {
		fprintf(stderr, "ls_store_open %s: %s\n", state, err.msg);
		return -1;
	}
	int ret = 0;
	double c0 = bench_cpu();
	double t0 = bench_now();
	for (size_t i = 0; i < count; i++) {
		char dir[PATH_MAX], name[64];
		bench_input_dir(work, i, dir, sizeof(dir));
		snprintf(name, sizeof(name), "bench/a%06zu", i);
		double a = bench_now();
		rc = bench_import_one(store, dir, name, &r->bytes, &err);
		r->lat_ms[i] = (bench_now() - a) * 1e3;
		if (rc) {
			fprintf(stderr, "import %s: %s\n", dir, err.msg);
			ret = -1;
			break;
		}
		r->n++;
	}
	r->total_s = bench_now() - t0;
	r->cpu_s = bench_cpu() - c0;
	ls_store_close(store);
	return ret;
}

/* Bytes and files in a directory (not recursive). */
static void bench_dir_usage(const char *path, uint64_t *bytes, size_t *files)
{
	*bytes = 0;
	*files = 0;
	DIR *d = opendir(path);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		struct stat sb;
		if (fstatat(dirfd(d), e->d_name, &sb, 0) == 0 && S_ISREG(sb.st_mode)) {
			*bytes += (uint64_t)sb.st_size;
			(*files)++;
		}
	}
	closedir(d);
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

static void bench_print_row(const struct bench_result *r)
{
	qsort(r->lat_ms, r->n, sizeof(double), bench_cmp_double);
	double n = r->n ? (double)r->n : 1.0;
	printf("%-32s %5zu adapters  %6.1f adapters/s  %6.1f MB/s  median %6.2f ms  "
	       "p99 %6.2f ms  cpu %5.2f ms/adapter\n",
	       r->label, r->n, (double)r->n / r->total_s, (double)r->bytes / 1e6 / r->total_s,
	       bench_percentile(r->lat_ms, r->n, 50.0), bench_percentile(r->lat_ms, r->n, 99.0),
	       r->cpu_s * 1e3 / n);
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
	struct bench_result floor_r = {.label = "floor (read+write+fsync+rename)"};
	struct bench_result store_r = {.label = "import (ls_store_import)"};
	floor_r.lat_ms = calloc(args.count, sizeof(double));
	store_r.lat_ms = calloc(args.count, sizeof(double));
	uint64_t st_bytes = 0;
	if (!floor_r.lat_ms || !store_r.lat_ms)
		goto out;
	if (bench_generate(work, args.count, &st_bytes) != 0)
		goto out;
	if (bench_run_floor(work, args.count, &floor_r) != 0)
		goto out;
	if (bench_run_store(work, args.count, &store_r) != 0)
		goto out;

	char path[PATH_MAX];
	uint64_t blob_bytes;
	size_t blobs;
	bench_path(path, sizeof(path), "%s/state/blobs", work);
	bench_dir_usage(path, &blob_bytes, &blobs);

	printf("bench_import: %zu distinct synthetic adapters (Llama q/k/v/o, %d layers, rank %d, "
	       "%d wide, F16), %.1f MB of safetensors, %.3f MB each\n",
	       args.count, BENCH_LAYERS, BENCH_RANK, BENCH_HIDDEN, (double)st_bytes / 1e6,
	       (double)st_bytes / 1e6 / (double)args.count);
	printf("inputs pre-read into the page cache; floor ran first, then lorastore; "
	       "MB = 10^6 bytes of safetensors input;\n"
	       "cpu = user + system time of this process per adapter (the rest of the "
	       "latency is waiting, mostly on fsync)\n");
	printf("store wrote %zu blobs, %.1f MB\n\n", blobs, (double)blob_bytes / 1e6);
	bench_print_row(&store_r);
	bench_print_row(&floor_r);
	double ratio = (store_r.total_s > 0 && floor_r.total_s > 0)
			       ? ((double)store_r.n / store_r.total_s) /
					 ((double)floor_r.n / floor_r.total_s)
			       : 0.0;
	printf("ratio lorastore/floor (adapters/s): %.2f\n", ratio);
	ret = 0;

out:
	free(floor_r.lat_ms);
	free(store_r.lat_ms);
	if (args.keep) {
		fprintf(stderr, "kept %s\n", work);
	} else {
		synth_rm_rf(work);
	}
	free(work);
	return ret;
}
