/*
 * Loads into GPU memory (the device tier) against their floors, in one run.
 *
 * COUNT distinct synthetic adapters (Llama q/k/v/o, LAYERS layers, rank
 * RANK, HIDDEN wide, F16; 67.1 MB each by default) are imported into a real
 * lorastored with --backend cuda.  Methods, each timed per adapter, their
 * order rotating from adapter to adapter within a round:
 *
 *   cold       lorastore_load_tier(device) of a version resident nowhere:
 *              the daemon reads the blob into the host tier (O_DIRECT,
 *              hashed on the workers), then copies it to the GPU from that
 *              pinned host memory; done when the copy has finished.
 *   host->gpu  the same of a version resident in the host tier only: one
 *              copy from pinned host memory, no disk.
 *   floor (b)  O_DIRECT read(2) of the blob file into a 4096-aligned buffer.
 *   floor (h)  cuMemcpyHtoD of the adapter's bytes from a registered
 *              (pinned) memfd mapping into a VMM allocation, in this process.
 *   (h) async + host function: the same copy as the daemon issues it
 *              (cuMemcpyHtoDAsync on a stream, then cuLaunchHostFunc writing
 *              an eventfd that this process polls): the cost of the daemon's
 *              completion path alone, not a floor.
 *
 * Targets (issue: the CUDA backend): cold >= 0.80 of the smaller floor;
 * host->gpu >= 0.85 of floor (h).  MB is 10^6 bytes of the data region.
 * LORASTORE_CUDA_DRIVER names the driver as for lorastored (with the test
 * double the figures mean nothing: the control path only).
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
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_args.h"
#include "daemon_proc.h"
#include "lorastore.h"
#include "synth.h"

#ifdef LS_HAVE_CUDRV
#include "ls_cudrv.h"
#endif

#define BENCH_PAGE 4096u

enum bench_method { M_COLD, M_HOST2GPU, M_DIRECT, M_HTOD, M_HTOD_CB, M_COUNT };

static const char *const bench_label[M_COUNT] = {
	"cold: disk -> GPU (lorastore)",
	"host tier -> GPU (lorastore)",
	"floor (b) O_DIRECT read(2)",
	"floor (h) pinned cuMemcpyHtoD",
	"(h) async + host function",
};

struct bench_args {
	size_t count, rounds;
	int layers, rank, hidden;
};

struct bench_adapter {
	char ref[64];
	char blob[PATH_MAX];
	uint64_t data_bytes;
	uint64_t blob_bytes;
};

static double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void bench_usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--count N] [--rounds N] [--layers N] [--rank N] [--hidden N]\n"
		"\n"
		"Import N synthetic adapters (q/k/v/o, F16) into a lorastored with a GPU and\n"
		"time loads into the GPU's memory, from disk and from the host tier, against\n"
		"an O_DIRECT read of the blob and a pinned host-to-device copy of its bytes.\n"
		"\n"
		"  --count N   adapters (default 8)\n"
		"  --rounds N  timed loads of each adapter by each method (default 3)\n"
		"  --layers N  layers of each adapter (default 16)\n"
		"  --rank N    rank (default 64)\n"
		"  --hidden N  width of the modules, a multiple of 16 (default 4096)\n"
		"  --help      this text\n"
		"\n"
		"LORASTORE_CUDA_DRIVER names the CUDA driver (default libcuda.so.1).\n",
		argv0);
}

static int bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option longopts[] = {
		{"count", required_argument, NULL, 'n'}, {"rounds", required_argument, NULL, 'r'},
		{"layers", required_argument, NULL, 'l'}, {"rank", required_argument, NULL, 'R'},
		{"hidden", required_argument, NULL, 'H'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	*a = (struct bench_args){.count = 8, .rounds = 3, .layers = 16, .rank = 64, .hidden = 4096};
	int c;
	unsigned long long v;
	while ((c = getopt_long(argc, argv, "n:r:l:R:H:h", longopts, NULL)) != -1) {
		bool ok = true;
		switch (c) {
		case 'n': ok = bench_parse_num(optarg, 1, 1000, &v); a->count = (size_t)v; break;
		case 'r': ok = bench_parse_num(optarg, 1, 100, &v); a->rounds = (size_t)v; break;
		case 'l': ok = bench_parse_num(optarg, 1, 512, &v); a->layers = (int)v; break;
		case 'R': ok = bench_parse_num(optarg, 1, 1024, &v); a->rank = (int)v; break;
		case 'H': ok = bench_parse_num(optarg, 16, 65536, &v) && v % 16 == 0;
			  a->hidden = (int)v; break;
		case 'h': bench_usage(stdout, argv[0]); return 1;
		default: bench_usage(stderr, argv[0]); return 2;
		}
		if (!ok) {
			fprintf(stderr, "%s: --%s: value out of range\n", argv[0],
				longopts[c == 'n' ? 0 : c == 'r' ? 1 : c == 'l' ? 2 : c == 'R' ? 3 : 4].name);
			return 2;
		}
	}
	if (optind != argc) {
		bench_usage(stderr, argv[0]);
		return 2;
	}
	return 0;
}

#ifndef LS_HAVE_CUDRV

int main(int argc, char **argv)
{
	struct bench_args a;
	int rc = bench_parse(argc, argv, &a);
	if (rc)
		return rc == 1 ? 0 : rc;
	printf("bench_device_load: this build has no CUDA path; nothing to measure\n");
	return 0;
}

#else

/* The floor (h): a pinned memfd mapping and a device allocation of cap bytes. */
struct bench_htod {
	const struct ls_cudrv *d;
	uint8_t *host;
	size_t cap;
	CUmemGenericAllocationHandle h;
	CUdeviceptr dst;
	CUcontext ctx;
	CUdevice dev;
	CUstream stream;
	int efd;
};

static void CUDA_CB bench_copied(void *arg)
{
	uint64_t one = 1;
	if (write(*(int *)arg, &one, sizeof(one)) < 0) {
		/* cannot overflow at one write per copy */
	}
}

static int bench_htod_init(struct bench_htod *x, size_t cap)
{
	struct ls_err err;
	memset(x, 0, sizeof(*x));
	if (ls_cudrv_load(&x->d, &err)) {
		fprintf(stderr, "driver: %s\n", err.msg);
		return -1;
	}
	const struct ls_cudrv *d = x->d;
	CUmemAllocationProp prop;
	memset(&prop, 0, sizeof(prop));
	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop.location.id = 0;
	size_t g = 0;
	if (d->cuDeviceGet(&x->dev, 0) || d->cuDevicePrimaryCtxRetain(&x->ctx, x->dev) ||
	    d->cuCtxSetCurrent(x->ctx) ||
	    d->cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
		return -1;
	x->cap = (cap + g - 1) / g * g;
	int fd = memfd_create("bench-htod", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)x->cap) != 0)
		return -1;
	x->host = mmap(NULL, x->cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (x->host == MAP_FAILED)
		return -1;
	for (size_t i = 0; i < x->cap; i++)
		x->host[i] = (uint8_t)(i * 2654435761u >> 24);
	CUmemAccessDesc access;
	memset(&access, 0, sizeof(access));
	access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	access.location.id = 0;
	access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	if (d->cuMemHostRegister(x->host, x->cap, CU_MEMHOSTREGISTER_PORTABLE) ||
	    d->cuMemCreate(&x->h, x->cap, &prop, 0) ||
	    d->cuMemAddressReserve(&x->dst, x->cap, 0, 0, 0) ||
	    d->cuMemMap(x->dst, x->cap, 0, x->h, 0) || d->cuMemSetAccess(x->dst, x->cap, &access, 1) ||
	    d->cuStreamCreate(&x->stream, CU_STREAM_NON_BLOCKING))
		return -1;
	x->efd = eventfd(0, EFD_CLOEXEC);
	return x->efd < 0 ? -1 : 0;
}

/* The daemon's way: an async copy, a host function, an eventfd to wait on. */
static int bench_htod_async(struct bench_htod *x, size_t n)
{
	if (x->d->cuMemcpyHtoDAsync(x->dst, x->host, n, x->stream) != CUDA_SUCCESS ||
	    x->d->cuLaunchHostFunc(x->stream, bench_copied, &x->efd) != CUDA_SUCCESS)
		return -1;
	struct pollfd p = {.fd = x->efd, .events = POLLIN};
	uint64_t v;
	if (poll(&p, 1, 10000) != 1 || read(x->efd, &v, sizeof(v)) != sizeof(v))
		return -1;
	return 0;
}

static int bench_htod_copy(struct bench_htod *x, size_t n)
{
	return x->d->cuMemcpyHtoD(x->dst, x->host, n) == CUDA_SUCCESS ? 0 : -1;
}

/* Read a whole file with O_DIRECT into buf (cap bytes at most); bytes or -errno. */
static int64_t bench_read_direct(const char *path, uint8_t *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (fd < 0)
		return -errno;
	int64_t total = 0;
	while ((size_t)total < cap) {
		ssize_t r = read(fd, buf + total, cap - (size_t)total);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r < 0)
				total = -errno;
			break;
		}
		total += r;
	}
	close(fd);
	return total;
}

int main(int argc, char **argv)
{
	struct bench_args a;
	int prc = bench_parse(argc, argv, &a);
	if (prc)
		return prc == 1 ? 0 : prc;
	setvbuf(stdout, NULL, _IOLBF, 0);
	char *work = synth_mkdtemp("bench-device-load");
	int ret = 1;
	struct ls_daemon_proc dp = {.pid = -1, .notify_fd = -1};
	lorastore *conn = NULL;
	struct bench_adapter *ad = calloc(a.count, sizeof(*ad));
	double *lat[M_COUNT];
	uint8_t **bufs = calloc(a.count, sizeof(*bufs));
	for (int m = 0; m < M_COUNT; m++)
		lat[m] = calloc(a.count * a.rounds, sizeof(double));
	size_t n_lat[M_COUNT] = {0};
	if (!ad || !bufs || !lat[0] || !lat[1] || !lat[2] || !lat[3] || !lat[4])
		goto out;

	/* Inputs, then the daemon (before this process loads the driver: a fork follows). */
	uint64_t per = (uint64_t)a.layers * 4 * 2 * (uint64_t)a.rank * (uint64_t)a.hidden * 2;
	char budget[32];
	snprintf(budget, sizeof(budget), "%llu",
		 (unsigned long long)((per + (4u << 20)) * a.count + (512ull << 20)));
	const char *const dargs[] = {"--backend", "cuda", "--host-budget", budget,
				     "--device-budget", budget, "--log-level", "warning", NULL};
	if (ls_daemon_start(&dp, NULL, dargs) != 0)
		goto out;
	if (lorastore_connect(dp.socket, &conn) != 0) {
		fprintf(stderr, "connect: %s\n", conn ? lorastore_errmsg(conn) : "");
		goto out;
	}
	double t0 = bench_now();
	for (size_t i = 0; i < a.count; i++) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/a%04zu", work, i);
		struct synth_opts o = {.family = SYNTH_LLAMA, .layers = a.layers, .rank = a.rank,
				       .dtype = LS_DTYPE_F16, .hidden = a.hidden, .heads = 16,
				       .kv_heads = 16, .seed = 0xde71ce00u + i};
		if (mkdir(dir, 0755) != 0 || synth_adapter_dir(dir, &o) != 0) {
			fprintf(stderr, "%s: cannot write the adapter\n", dir);
			goto out;
		}
		snprintf(ad[i].ref, sizeof(ad[i].ref), "bench/dev%04zu", i);
		lorastore_import_opts io = {.name = ad[i].ref};
		lorastore_list *l = NULL;
		if (lorastore_import_dir_entry(conn, dir, &io, &l) != 0) {
			fprintf(stderr, "import: %s\n", lorastore_errmsg(conn));
			goto out;
		}
		const lorastore_entry *e = lorastore_list_entry(l, 0);
		snprintf(ad[i].blob, sizeof(ad[i].blob), "%s/blobs/%s.blob", dp.state, e->digest);
		ad[i].data_bytes = e->tensor_bytes;
		lorastore_list_free(l);
		struct stat sb;
		if (stat(ad[i].blob, &sb) != 0) {
			fprintf(stderr, "%s: %s\n", ad[i].blob, strerror(errno));
			goto out;
		}
		ad[i].blob_bytes = (uint64_t)sb.st_size;
	}
	fprintf(stderr, "generated and imported %zu adapters in %.1f s\n", a.count, bench_now() - t0);

	size_t cap = 0;
	for (size_t i = 0; i < a.count; i++)
		if (ad[i].blob_bytes > cap)
			cap = (size_t)ad[i].blob_bytes;
	cap = (cap + BENCH_PAGE - 1) / BENCH_PAGE * BENCH_PAGE;
	for (size_t i = 0; i < a.count; i++)
		if (posix_memalign((void **)&bufs[i], BENCH_PAGE, cap) != 0 || !memset(bufs[i], 0, cap))
			goto out;
	struct bench_htod htod;
	if (bench_htod_init(&htod, cap) != 0) {
		fprintf(stderr, "the pinned copy floor could not be set up\n");
		goto out;
	}

	/* Warm-up: every method once on every adapter; then the timed rounds. */
	for (size_t r = 0; r <= a.rounds; r++)
		for (size_t i = 0; i < a.count; i++)
			for (int k = 0; k < M_COUNT; k++) {
				enum bench_method m = (enum bench_method)((k + r + i) % M_COUNT);
				int rc = 0;
				/* Untimed preparation: where the version is resident before. */
				if (m == M_COLD) {
					rc = lorastore_evict(conn, ad[i].ref);
					if (rc == LORASTORE_E_NOT_FOUND)
						rc = 0;
				} else if (m == M_HOST2GPU) {
					rc = lorastore_load(conn, ad[i].ref);
					int e = lorastore_evict_tier(conn, ad[i].ref, LORASTORE_TIER_DEVICE, NULL);
					if (rc == 0 && e && e != LORASTORE_E_NOT_FOUND)
						rc = e;
				}
				if (rc) {
					fprintf(stderr, "%s: %s\n", ad[i].ref, lorastore_errmsg(conn));
					goto out;
				}
				double s = bench_now();
				int64_t n = 0;
				if (m == M_COLD || m == M_HOST2GPU)
					rc = lorastore_load_tier(conn, ad[i].ref, LORASTORE_TIER_DEVICE, NULL);
				else if (m == M_DIRECT)
					rc = (n = bench_read_direct(ad[i].blob, bufs[i], cap)) ==
						     (int64_t)ad[i].blob_bytes ? 0 : -1;
				else if (m == M_HTOD)
					rc = bench_htod_copy(&htod, (size_t)ad[i].data_bytes);
				else
					rc = bench_htod_async(&htod, (size_t)ad[i].data_bytes);
				double ms = (bench_now() - s) * 1e3;
				if (rc) {
					fprintf(stderr, "%s by %s failed: %s\n", ad[i].ref, bench_label[m],
						m <= M_HOST2GPU ? lorastore_errmsg(conn) : "read or copy");
					goto out;
				}
				if (r > 0)
					lat[m][n_lat[m]++] = ms;
			}

	printf("bench_device_load: %zu adapters (Llama q/k/v/o, %d layers, rank %d, %d wide, F16), "
	       "%.1f MB each; %zu rounds; MB/s@med = the bytes of one adapter over the median\n\n",
	       a.count, a.layers, a.rank, a.hidden, (double)ad[0].data_bytes / 1e6, a.rounds);
	printf("%-32s %6s %10s %10s %9s %9s\n", "what", "loads", "MB/s@med", "median ms", "min ms",
	       "max ms");
	double mbps[M_COUNT];
	for (int m = 0; m < M_COUNT; m++) {
		qsort(lat[m], n_lat[m], sizeof(double), bench_cmp);
		double med = lat[m][n_lat[m] / 2];
		mbps[m] = med > 0 ? (double)ad[0].data_bytes / 1e6 / (med / 1e3) : 0;
		printf("%-32s %6zu %10.1f %10.2f %9.2f %9.2f\n", bench_label[m], n_lat[m], mbps[m],
		       med, lat[m][0], lat[m][n_lat[m] - 1]);
	}
	double floor_cold = mbps[M_DIRECT] < mbps[M_HTOD] ? mbps[M_DIRECT] : mbps[M_HTOD];
	printf("\ncold / smaller floor (%s): %.2f (target >= 0.80)\n",
	       floor_cold == mbps[M_DIRECT] ? "O_DIRECT read" : "pinned copy",
	       floor_cold > 0 ? mbps[M_COLD] / floor_cold : 0);
	printf("host tier -> GPU / pinned copy: %.2f (target >= 0.85)\n",
	       mbps[M_HTOD] > 0 ? mbps[M_HOST2GPU] / mbps[M_HTOD] : 0);
	printf("SUMMARY device_load cold_mbps=%.0f host2gpu_mbps=%.0f direct_mbps=%.0f "
	       "htod_mbps=%.0f cold_ratio=%.2f host2gpu_ratio=%.2f\n",
	       mbps[M_COLD], mbps[M_HOST2GPU], mbps[M_DIRECT], mbps[M_HTOD],
	       floor_cold > 0 ? mbps[M_COLD] / floor_cold : 0,
	       mbps[M_HTOD] > 0 ? mbps[M_HOST2GPU] / mbps[M_HTOD] : 0);
	ret = 0;
out:
	lorastore_close(conn);
	if (dp.pid > 0 && ls_daemon_stop(&dp) != 0) {
		fprintf(stderr, "lorastored did not stop cleanly (log %s)\n", dp.log);
		ret = 1;
	}
	ls_daemon_cleanup(&dp);
	for (size_t i = 0; bufs && i < a.count; i++)
		free(bufs[i]);
	free(bufs);
	free(ad);
	for (int m = 0; m < M_COUNT; m++)
		free(lat[m]);
	synth_rm_rf(work);
	free(work);
	return ret;
}

#endif
