/*
 * GPU memory of WORKERS processes that all hold the same ADAPTERS adapters
 * in GPU memory through lorastored, against one copy of them.
 *
 * A lorastored with --backend cuda makes the adapters resident on its GPU.
 * Then WORKERS processes start, each with its own CUDA context, and each
 * acquires every adapter on the device tier (importing the daemon's slabs)
 * and reads one byte of each through the driver.  The GPU's used memory is
 * read from the driver's memory info (cuMemGetInfo, in a short-lived
 * observer process, since this process must not hold CUDA across the forks
 * of its workers) at four points:
 *
 *   M0  the daemon up, nothing resident
 *   M1  the adapters resident on the GPU                 (M1 - M0: the copy)
 *   M2  the workers up, each with a context, nothing imported
 *   M3  every worker holding every adapter               (M3 - M2: the imports)
 *
 * Memory for the adapters with WORKERS readers = (M1 - M0) + (M3 - M2),
 * against one copy (the adapters' bytes) and against WORKERS copies, which
 * is what each worker loading its own would take.  Target: at most 1.05 of
 * one copy.  The contexts' own memory (M2 - M1) is reported apart: it is
 * the workers', whatever they read.
 *
 * With the CUDA driver double (LORASTORE_CUDA_DRIVER) the memory info is
 * per process and the figures mean nothing: the control path only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_args.h"
#include "daemon_proc.h"
#include "lorastore.h"
#include "synth.h"

#ifdef LS_HAVE_CUDRV
#include "ls_cudrv.h"
#endif

struct bench_args {
	unsigned workers, adapters;
	int layers, rank, hidden;
};

static void bench_usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--workers N] [--adapters N] [--layers N] [--rank N] [--hidden N]\n"
		"\n"
		"GPU memory used when N worker processes hold the same adapters in GPU\n"
		"memory through lorastored, against one copy and against N copies.\n"
		"\n"
		"  --workers N   processes reading the adapters (default 8)\n"
		"  --adapters N  adapters (default 100)\n"
		"  --layers N    layers of each (default 8)\n"
		"  --rank N      rank (default 16)\n"
		"  --hidden N    width, a multiple of 16 (default 2048): 4.2 MB an adapter\n"
		"  --help        this text\n",
		argv0);
}

static int bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option longopts[] = {
		{"workers", required_argument, NULL, 'w'}, {"adapters", required_argument, NULL, 'n'},
		{"layers", required_argument, NULL, 'l'}, {"rank", required_argument, NULL, 'R'},
		{"hidden", required_argument, NULL, 'H'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	*a = (struct bench_args){.workers = 8, .adapters = 100, .layers = 8, .rank = 16,
				 .hidden = 2048};
	int c;
	unsigned long long v;
	while ((c = getopt_long(argc, argv, "w:n:l:R:H:h", longopts, NULL)) != -1) {
		bool ok = true;
		switch (c) {
		case 'w': ok = bench_parse_num(optarg, 1, 64, &v); a->workers = (unsigned)v; break;
		case 'n': ok = bench_parse_num(optarg, 1, 10000, &v); a->adapters = (unsigned)v; break;
		case 'l': ok = bench_parse_num(optarg, 1, 512, &v); a->layers = (int)v; break;
		case 'R': ok = bench_parse_num(optarg, 1, 1024, &v); a->rank = (int)v; break;
		case 'H': ok = bench_parse_num(optarg, 16, 65536, &v) && v % 16 == 0;
			  a->hidden = (int)v; break;
		case 'h': bench_usage(stdout, argv[0]); return 1;
		default: bench_usage(stderr, argv[0]); return 2;
		}
		if (!ok) {
			fprintf(stderr, "%s: a value out of range\n", argv[0]);
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
	printf("bench_device_memory: this build has no CUDA path; nothing to measure\n");
	return 0;
}

#else

/* Bytes of GPU 0 in use, from the memory info, read in a process of its own. */
static int64_t bench_used(void)
{
	int p[2];
	if (pipe(p) != 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		close(p[0]);
		const struct ls_cudrv *d;
		struct ls_err err;
		CUdevice dev;
		CUcontext ctx;
		size_t f = 0, t = 0;
		if (ls_cudrv_load(&d, &err) || d->cuDeviceGet(&dev, 0) ||
		    d->cuDevicePrimaryCtxRetain(&ctx, dev) || d->cuCtxSetCurrent(ctx) ||
		    d->cuMemGetInfo(&f, &t))
			_exit(1);
		int64_t used = (int64_t)(t - f);
		_exit(write(p[1], &used, sizeof(used)) == sizeof(used) ? 0 : 1);
	}
	close(p[1]);
	int64_t used = -1;
	if (pid < 0 || read(p[0], &used, sizeof(used)) != sizeof(used))
		used = -1;
	close(p[0]);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	return used;
}

/*
 * A worker: a context first (then says 'c'), then on 'g' acquire every
 * adapter on the device tier and read a byte of each (then says 'a'), then
 * hold everything until the pipe closes.
 */
static void bench_worker(const char *sock, unsigned n, int go, int say)
{
	const struct ls_cudrv *d;
	struct ls_err err;
	CUdevice dev;
	CUcontext ctx;
	if (ls_cudrv_load(&d, &err) || d->cuDeviceGet(&dev, 0) ||
	    d->cuDevicePrimaryCtxRetain(&ctx, dev) || d->cuCtxSetCurrent(ctx))
		_exit(2);
	char c;
	if (write(say, "c", 1) != 1 || read(go, &c, 1) != 1)
		_exit(3);
	lorastore *conn = NULL;
	if (lorastore_connect(sock, &conn))
		_exit(4);
	char ref[32];
	for (unsigned i = 0; i < n; i++) {
		snprintf(ref, sizeof(ref), "mem/a%04u", i);
		lorastore_adapter *ad = NULL;
		lorastore_tensor t;
		unsigned char b;
		if (lorastore_acquire_tier(conn, ref, LORASTORE_TIER_DEVICE, NULL, -1, &ad) ||
		    lorastore_adapter_tensor_at(ad, 0, &t) ||
		    d->cuMemcpyDtoH(&b, (CUdeviceptr)(uintptr_t)t.data, 1)) {
			fprintf(stderr, "worker: %s: %s\n", ref, lorastore_errmsg(conn));
			_exit(5);
		}
	}
	if (write(say, "a", 1) != 1)
		_exit(6);
	while (read(go, &c, 1) > 0)
		;
	lorastore_close(conn);
	_exit(0);
}

int main(int argc, char **argv)
{
	struct bench_args a;
	int prc = bench_parse(argc, argv, &a);
	if (prc)
		return prc == 1 ? 0 : prc;
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	char *work = synth_mkdtemp("bench-device-memory");
	struct ls_daemon_proc dp = {.pid = -1, .notify_fd = -1};
	lorastore *conn = NULL;
	pid_t *kids = calloc(a.workers, sizeof(*kids));
	int go[2] = {-1, -1}, say[2] = {-1, -1};
	int ret = 1;
	uint64_t bytes = 0;
	if (!kids)
		goto out;
	/* Small slabs, so that rounding a slab up is a small share of one copy. */
	const char *const dargs[] = {"--backend", "cuda", "--device-budget", "8GiB",
				     "--device-slab-size", "32MiB", "--log-level", "warning", NULL};
	if (ls_daemon_start(&dp, NULL, dargs) != 0 || lorastore_connect(dp.socket, &conn) != 0)
		goto out;
	for (unsigned i = 0; i < a.adapters; i++) {
		char sub[PATH_MAX + 16], ref[32];
		snprintf(sub, sizeof(sub), "%.*s/in%04u", PATH_MAX - 1, work, i);
		struct synth_opts o = {.family = SYNTH_LLAMA, .layers = a.layers, .rank = a.rank,
				       .dtype = LS_DTYPE_F16, .hidden = a.hidden, .heads = 16,
				       .kv_heads = 16, .seed = 0x3e3000u + i};
		snprintf(ref, sizeof(ref), "mem/a%04u", i);
		lorastore_import_opts io = {.name = ref};
		lorastore_list *l = NULL;
		if (mkdir(sub, 0755) != 0 || synth_adapter_dir(sub, &o) != 0 ||
		    lorastore_import_dir_entry(conn, sub, &io, &l) != 0) {
			fprintf(stderr, "%s: %s\n", ref, conn ? lorastore_errmsg(conn) : "");
			goto out;
		}
		bytes += lorastore_list_entry(l, 0)->resident_bytes;
		lorastore_list_free(l);
		synth_rm_rf(sub);
	}
	int64_t m0 = bench_used();
	for (unsigned i = 0; i < a.adapters; i++) {
		char ref[32];
		snprintf(ref, sizeof(ref), "mem/a%04u", i);
		/* "": the daemon's GPU, without loading the driver in this process. */
		if (lorastore_load_tier(conn, ref, LORASTORE_TIER_DEVICE, "") != 0) {
			fprintf(stderr, "load %s: %s\n", ref, lorastore_errmsg(conn));
			goto out;
		}
	}
	int64_t m1 = bench_used();
	if (pipe(go) != 0 || pipe(say) != 0)
		goto out;
	for (unsigned k = 0; k < a.workers; k++) {
		kids[k] = fork();
		if (kids[k] == 0) {
			close(go[1]);
			close(say[0]);
			bench_worker(dp.socket, a.adapters, go[0], say[1]);
		}
	}
	close(go[0]);
	close(say[1]);
	char c;
	for (unsigned k = 0; k < a.workers; k++)
		if (read(say[0], &c, 1) != 1 || c != 'c')
			goto out;
	int64_t m2 = bench_used();
	for (unsigned k = 0; k < a.workers; k++)
		if (write(go[1], "g", 1) != 1)
			goto out;
	for (unsigned k = 0; k < a.workers; k++)
		if (read(say[0], &c, 1) != 1 || c != 'a') {
			fprintf(stderr, "a worker failed\n");
			goto out;
		}
	int64_t m3 = bench_used();
	if (m0 < 0 || m1 < 0 || m2 < 0 || m3 < 0) {
		fprintf(stderr, "the driver's memory info could not be read\n");
		goto out;
	}
	double mb = 1e6, copy = (double)bytes;
	double shared = (double)(m1 - m0) + (double)(m3 - m2);
	printf("bench_device_memory: %u adapters (Llama q/k/v/o, %d layers, rank %d, %d wide, F16), "
	       "%.1f MB in all; %u workers, each holding every adapter on the GPU\n\n",
	       a.adapters, a.layers, a.rank, a.hidden, copy / mb, a.workers);
	printf("GPU memory in use (driver memory info), MB:\n");
	printf("  M0 daemon up, nothing resident      %10.1f\n", (double)m0 / mb);
	printf("  M1 adapters resident on the GPU     %10.1f  (+%.1f: the daemon's copy)\n",
	       (double)m1 / mb, (double)(m1 - m0) / mb);
	printf("  M2 %2u workers with a context each   %10.1f  (+%.1f: their contexts)\n", a.workers,
	       (double)m2 / mb, (double)(m2 - m1) / mb);
	printf("  M3 every worker holding every one   %10.1f  (+%.1f: the imports)\n",
	       (double)m3 / mb, (double)(m3 - m2) / mb);
	printf("\nmemory for the adapters with %u readers: %.1f MB = %.3f x one copy (target <= 1.05); "
	       "%u copies, one per worker, would be %.1f MB\n",
	       a.workers, shared / mb, shared / copy, a.workers, copy * a.workers / mb);
	printf("SUMMARY device_memory workers=%u one_copy_mb=%.1f shared_mb=%.1f ratio=%.3f "
	       "per_worker_copies_mb=%.1f contexts_mb=%.1f\n",
	       a.workers, copy / mb, shared / mb, shared / copy, copy * a.workers / mb,
	       (double)(m2 - m1) / mb);
	ret = 0;
out:
	if (go[1] >= 0)
		close(go[1]);
	if (say[0] >= 0)
		close(say[0]);
	for (unsigned k = 0; kids && k < a.workers; k++)
		if (kids[k] > 0) {
			int st;
			waitpid(kids[k], &st, 0);
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				ret = 1;
		}
	free(kids);
	lorastore_close(conn);
	if (dp.pid > 0 && ls_daemon_stop(&dp) != 0)
		ret = 1;
	ls_daemon_cleanup(&dp);
	synth_rm_rf(work);
	free(work);
	return ret;
}

#endif
