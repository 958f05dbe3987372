/*
 * The device tier: lorastored with GPU slabs, and clients that import them.
 *
 * In CI the GPU is the CUDA driver double (tests/support/cuda_double), which
 * the daemon and this process load through LORASTORE_CUDA_DRIVER.  With
 * LS_TEST_REAL_GPU=1 (the GPU check) both use the machine's libcuda.so.1
 * instead; the tests that need the double (call counting, several GPUs)
 * then skip, and with LSK_REQUIRE_GPU=1 a skip for want of a device fails.
 * Device bytes are always read back through the driver (cuMemcpyDtoH), never
 * by dereferencing a device address, so every test means the same on both.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
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

#include <lorastore.h>

#include "blob.h"
#include "daemon_proc.h"
#include "synth.h"

#ifdef LS_HAVE_CUDRV
#include "ls_cudrv.h"
#endif

static struct ls_daemon_proc dp;
static char *work_dir;

static __attribute__((unused)) bool real_gpu(void)
{
	const char *v = getenv("LS_TEST_REAL_GPU");
	return v && strcmp(v, "1") == 0;
}

static void setup(void)
{
	memset(&dp, 0, sizeof(dp));
	dp.pid = -1;
	dp.notify_fd = -1;
	work_dir = synth_mkdtemp("device");
	chmod(work_dir, 0755);
#ifdef LS_HAVE_CUDRV
	if (!real_gpu())
		setenv("LORASTORE_CUDA_DRIVER", LS_CUDA_DOUBLE_PATH, 1);
#endif
}

static void teardown(void)
{
	if (dp.dir[0] || dp.pid > 0 || dp.notify_fd >= 0)
		ls_daemon_cleanup(&dp);
	synth_rm_rf(work_dir);
	free(work_dir);
	work_dir = NULL;
}

TestSuite(device, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers */

static const char *daemon_log(void)
{
	static char text[16384];
	text[0] = '\0';
	FILE *f = fopen(dp.log, "r");
	if (!f)
		return text;
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

/* Skip unless this build has the CUDA path; with the double, unless told to use it. */
static void need_cuda(bool double_only)
{
#ifndef LS_HAVE_CUDRV
	(void)double_only;
	cr_skip_test("this build has no CUDA path (LORASTORE_CUDA=OFF or no toolkit)");
#else
	if (double_only && real_gpu())
		cr_skip_test("needs the CUDA driver double; this run uses the real driver");
#endif
}

static void start_device_daemon(const char *const *extra)
{
	const char *args[24] = {"--backend", "cuda", "--device-budget", "256MiB"};
	int n = 4;
	for (int i = 0; extra && extra[i] && n < 22; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	int rc = ls_daemon_start(&dp, NULL, args);
	cr_assert_eq(rc, 0, "lorastored did not start; log:\n%s", daemon_log());
}

static lorastore *connect_ok(void)
{
	lorastore *conn = NULL;
	int rc = lorastore_connect(dp.socket, &conn);
	cr_assert_eq(rc, 0, "connect %s: %s", dp.socket, lorastore_strerror(rc));
	return conn;
}

/* A synthetic adapter of seed in its own folder, imported as name. */
static void import_seed(lorastore *conn, const char *name, uint64_t seed, int layers, int hidden)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/s%" PRIu64, work_dir, seed);
	cr_assert_eq(mkdir(dir, 0755), 0, "mkdir %s: %s", dir, strerror(errno));
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = layers, .rank = 16,
			       .dtype = LS_DTYPE_F16, .hidden = hidden, .heads = 4,
			       .kv_heads = 4, .seed = seed};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	lorastore_import_opts io = {.name = name};
	int rc = lorastore_import_dir(conn, dir, &io, NULL);
	cr_assert_eq(rc, 0, "import %s: %s", name, lorastore_errmsg(conn));
}

static lorastore_adapter *acquire_dev(lorastore *conn, const char *ref, const char *uuid)
{
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire_tier(conn, ref, LORASTORE_TIER_DEVICE, uuid, -1, &ad);
	cr_assert_eq(rc, 0, "device acquire of %s: %s (%s)", ref, lorastore_errmsg(conn),
		     lorastore_strerror(rc));
	return ad;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

#ifdef LS_HAVE_CUDRV
/* Copy n bytes at device address src of GPU ordinal dev into dst; a CUresult. */
static int dtoh(int dev, void *dst, const void *src, size_t n)
{
	const struct ls_cudrv *d;
	struct ls_err err;
	if (ls_cudrv_load(&d, &err))
		return -1;
	CUdevice cd;
	CUcontext ctx;
	CUresult r = d->cuDeviceGet(&cd, dev);
	if (r == CUDA_SUCCESS)
		r = d->cuDevicePrimaryCtxRetain(&ctx, cd);
	if (r == CUDA_SUCCESS)
		r = d->cuCtxSetCurrent(ctx);
	if (r == CUDA_SUCCESS)
		r = d->cuMemcpyDtoH(dst, (CUdeviceptr)(uintptr_t)src, n);
	return (int)r;
}
#endif

/*
 * FNV-1a of every tensor of an acquired adapter, read on the CPU for host
 * adapters and through the driver for device ones.
 */
static uint64_t adapter_hash(const lorastore_adapter *ad)
{
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
	cr_assert_gt(info.tensor_count, 0);
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < info.tensor_count; i++) {
		lorastore_tensor t;
		cr_assert_eq(lorastore_adapter_tensor_at(ad, i, &t), 0);
		if (t.device < 0) {
			h = fnv(h, t.data, (size_t)t.bytes);
			continue;
		}
#ifdef LS_HAVE_CUDRV
		void *buf = malloc((size_t)t.bytes);
		cr_assert_not_null(buf);
		int r = dtoh(t.device, buf, t.data, (size_t)t.bytes);
		cr_assert_eq(r, 0, "cuMemcpyDtoH of %s: CUresult %d", t.module, r);
		h = fnv(h, buf, (size_t)t.bytes);
		free(buf);
#else
		cr_assert_fail("a device tensor in a build without CUDA");
#endif
	}
	return h;
}

static uint64_t host_hash(lorastore *conn, const char *ref)
{
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(conn, ref, -1, &ad);
	cr_assert_eq(rc, 0, "host acquire of %s: %s", ref, lorastore_errmsg(conn));
	uint64_t h = adapter_hash(ad);
	lorastore_adapter_release(ad);
	return h;
}

static lorastore_stats stats_of(lorastore *conn)
{
	lorastore_stats s;
	cr_assert_eq(lorastore_stats_get(conn, &s), 0, "stats: %s", lorastore_errmsg(conn));
	return s;
}

/* The device tier's line of the stats (the first, when uuid is NULL). */
static lorastore_tier_stats device_stats(lorastore *conn, const char *uuid)
{
	lorastore_stats s = stats_of(conn);
	for (size_t i = 0; i < s.tier_count; i++)
		if (strcmp(s.tiers[i].name, "device") == 0 &&
		    (!uuid || strcmp(s.tiers[i].device, uuid) == 0))
			return s.tiers[i];
	cr_assert_fail("no device tier in the stats");
	return s.tiers[0];
}

/* ---- bytes */

Test(device, two_processes_read_the_same_device_bytes_as_the_host_tier_holds)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/a", 1, 4, 512);
	uint64_t want = host_hash(conn, "dev/a");
	int pipes[2][2];
	pid_t kids[2];
	for (int k = 0; k < 2; k++) {
		cr_assert_eq(pipe(pipes[k]), 0);
		kids[k] = fork();
		cr_assert_geq(kids[k], 0);
		if (kids[k] == 0) {
			/* A process of its own: its own connection and its own driver. */
			lorastore *c = NULL;
			if (lorastore_connect(dp.socket, &c))
				_exit(2);
			lorastore_adapter *ad = NULL;
			if (lorastore_acquire_tier(c, "dev/a", LORASTORE_TIER_DEVICE, NULL, -1, &ad)) {
				fprintf(stderr, "child: %s\n", lorastore_errmsg(c));
				_exit(3);
			}
			uint64_t h = adapter_hash(ad);
			if (write(pipes[k][1], &h, sizeof(h)) != sizeof(h))
				_exit(4);
			lorastore_adapter_release(ad);
			lorastore_close(c);
			_exit(0);
		}
		close(pipes[k][1]);
	}
	for (int k = 0; k < 2; k++) {
		uint64_t got = 0;
		cr_assert_eq(read(pipes[k][0], &got, sizeof(got)), (ssize_t)sizeof(got),
			     "child %d sent no hash", k);
		close(pipes[k][0]);
		int st;
		waitpid(kids[k], &st, 0);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d: status 0x%x", k, st);
		cr_assert_eq(got, want, "child %d read other bytes on the device", k);
	}
	/* One device copy, whatever the number of readers. */
	lorastore_tier_stats t = device_stats(conn, NULL);
	cr_assert_eq(t.adapters, 1);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0, "log:\n%s", daemon_log());
}

/*
 * lorastored.service sets MemoryDenyWriteExecute=yes: the CUDA backend (on
 * the GPU machine, the real driver) must start and serve under it.
 */
Test(device, the_device_tier_serves_without_writable_executable_memory)
{
	need_cuda(false);
	const char *args[] = {"--backend", "cuda", "--device-budget", "256MiB", NULL};
	int rc = ls_daemon_start_ex(&dp, NULL, args, LS_DAEMON_NO_WX);
	cr_assert_eq(rc, 0, "lorastored did not start without W+X memory; log:\n%s", daemon_log());
	lorastore *conn = connect_ok();
	import_seed(conn, "wx/a", 9, 2, 256);
	uint64_t want = host_hash(conn, "wx/a");
	lorastore_adapter *ad = NULL;
	rc = lorastore_acquire_tier(conn, "wx/a", LORASTORE_TIER_DEVICE, NULL, -1, &ad);
	cr_assert_eq(rc, 0, "device acquire: %s\nlog:\n%s", lorastore_errmsg(conn), daemon_log());
	cr_assert_eq(adapter_hash(ad), want, "the device copy differs from the host copy");
	lorastore_adapter_release(ad);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0, "log:\n%s", daemon_log());
}

Test(device, device_adapter_info_names_the_tier_the_gpu_and_read_only_access)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/info", 2, 2, 256);
	lorastore_adapter *ad = acquire_dev(conn, "dev/info", NULL);
	lorastore_adapter_info info;
	cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
	cr_assert_str_eq(info.tier, "device");
	cr_assert_geq(info.device, 0);
	cr_assert_eq(strncmp(info.device_uuid, "GPU-", 4), 0, "uuid %s", info.device_uuid);
	cr_assert_str_eq(info.device_uuid, device_stats(conn, NULL).device);
	cr_assert_eq(info.device_read_only, 1, "the driver refused a read-only mapping");
	lorastore_tensor t;
	cr_assert_eq(lorastore_adapter_tensor_at(ad, 0, &t), 0);
	cr_assert_eq(t.device, info.device);
	lorastore_adapter_release(ad);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, a_write_through_a_device_mapping_fails_and_changes_nothing)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/ro", 3, 2, 256);
	uint64_t want = host_hash(conn, "dev/ro");
	/* Forked before this process touches CUDA: the driver does not survive a fork. */
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
#ifdef LS_HAVE_CUDRV
		/* A write faults the context on a real GPU: only in a process of its own. */
		lorastore *c = NULL;
		lorastore_adapter *a = NULL;
		if (lorastore_connect(dp.socket, &c) ||
		    lorastore_acquire_tier(c, "dev/ro", LORASTORE_TIER_DEVICE, NULL, -1, &a)) {
			fprintf(stderr, "child: %s\n", c ? lorastore_errmsg(c) : "no connection");
			_exit(2);
		}
		lorastore_tensor t;
		lorastore_adapter_tensor_at(a, 0, &t);
		const struct ls_cudrv *d;
		struct ls_err err;
		if (ls_cudrv_load(&d, &err))
			_exit(4);
		char junk[64];
		memset(junk, 0x7e, sizeof(junk));
		/* Synchronous: a fault shows in its own result. */
		CUresult r = d->cuMemcpyHtoD((CUdeviceptr)(uintptr_t)t.data, junk, sizeof(junk));
		_exit(r == CUDA_SUCCESS ? 3 : 0);
#else
		_exit(0);
#endif
	}
	int st;
	waitpid(pid, &st, 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "a write into a read-only device mapping succeeded (status 0x%x)", st);
	lorastore_adapter *ad = acquire_dev(conn, "dev/ro", NULL);
	cr_assert_eq(adapter_hash(ad), want, "the device bytes changed");
	lorastore_adapter_release(ad);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

/* ---- leases and residency */

Test(device, a_client_killed_with_sigkill_leaves_no_device_lease)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/kill", 4, 2, 256);
	int ready[2];
	cr_assert_eq(pipe(ready), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		lorastore *c = NULL;
		lorastore_adapter *a = NULL;
		if (lorastore_connect(dp.socket, &c) ||
		    lorastore_acquire_tier(c, "dev/kill", LORASTORE_TIER_DEVICE, NULL, -1, &a))
			_exit(2);
		if (write(ready[1], "r", 1) != 1)
			_exit(3);
		pause();
		_exit(0);
	}
	close(ready[1]);
	char c;
	cr_assert_eq(read(ready[0], &c, 1), 1, "the child did not acquire");
	cr_assert_eq(lorastore_evict(conn, "dev/kill"), -EBUSY, "evicted while leased");
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	int rc = -EBUSY;
	for (int i = 0; i < 200 && rc == -EBUSY; i++) {
		rc = lorastore_evict(conn, "dev/kill");
		if (rc == -EBUSY)
			usleep(10000);
	}
	cr_assert_eq(rc, 0, "still leased after the client's death: %s", lorastore_errmsg(conn));
	cr_assert_eq(device_stats(conn, NULL).adapters, 0);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, a_small_device_budget_evicts_the_oldest_and_reloads_it_from_the_host_tier)
{
	need_cuda(false);
	/* Four 512 KiB adapters fill the 2 MiB budget (one slab of the granularity). */
	static const char *const args[] = {"--device-budget", "2MiB", NULL};
	start_device_daemon(args);
	lorastore *conn = connect_ok();
	char name[32];
	uint64_t want[5];
	for (int i = 0; i < 5; i++) {
		snprintf(name, sizeof(name), "dev/lru%d", i);
		import_seed(conn, name, 10 + (uint64_t)i, 4, 512);
		want[i] = host_hash(conn, name);
	}
	lorastore_stats before = stats_of(conn);
	for (int i = 0; i < 5; i++) {
		snprintf(name, sizeof(name), "dev/lru%d", i);
		lorastore_adapter *ad = acquire_dev(conn, name, NULL);
		cr_assert_eq(adapter_hash(ad), want[i], "%s differs on the device", name);
		lorastore_adapter_release(ad);
	}
	lorastore_tier_stats t = device_stats(conn, NULL);
	cr_assert_leq(t.used, t.budget);
	cr_assert_lt(t.adapters, 5, "nothing was evicted under a 2 MiB budget");
	lorastore_stats mid = stats_of(conn);
	cr_assert_gt(mid.evictions, before.evictions);
	/* The oldest went; back on the device from the host tier, without the disk. */
	lorastore_adapter *ad = acquire_dev(conn, "dev/lru0", NULL);
	cr_assert_eq(adapter_hash(ad), want[0]);
	lorastore_adapter_release(ad);
	lorastore_stats after = stats_of(conn);
	cr_assert_eq(after.tiers[0].adapters, 5, "the host tier lost adapters");
	cr_assert_eq(after.loads, mid.loads + 1, "a reload from the host tier read the disk "
		     "(loads %llu -> %llu)", (unsigned long long)mid.loads,
		     (unsigned long long)after.loads);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, a_thousand_adapters_are_resident_on_the_device_at_once, .timeout = 300)
{
	need_cuda(false);
	static const char *const args[] = {"--device-budget", "1GiB", NULL};
	start_device_daemon(args);
	lorastore *conn = connect_ok();
	/* One small adapter on disk, imported a thousand times under distinct names. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/tiny", work_dir);
	cr_assert_eq(mkdir(dir, 0755), 0);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 1, .rank = 4, .seed = 99};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	char name[32];
	lorastore_adapter *held[1000];
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "many/a%04d", i);
		lorastore_import_opts io = {.name = name};
		cr_assert_eq(lorastore_import_dir(conn, dir, &io, NULL), 0, "import %s: %s", name,
			     lorastore_errmsg(conn));
		held[i] = acquire_dev(conn, name, NULL);
	}
	lorastore_tier_stats t = device_stats(conn, NULL);
	cr_assert_eq(t.adapters, 1000);
	uint64_t h0 = adapter_hash(held[0]);
	cr_assert_eq(adapter_hash(held[999]), h0, "the same bytes read differently");
	for (int i = 0; i < 1000; i++)
		cr_assert_eq(lorastore_adapter_release(held[i]), 0);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

/* The stats line of the host tier, or of the (first) device tier. */
static lorastore_tier_stats tier_stats(lorastore *conn, bool device)
{
	return device ? device_stats(conn, NULL) : stats_of(conn).tiers[0];
}

/*
 * Adapters of mixed sizes (384 KiB to 1.5 MiB) into a 12 MiB budget of
 * 4 MiB slabs, each released at once: none may evict another while the
 * budget has room for it, whatever room the slab ends leave.  Stops at the
 * first eviction, which must come only when the budget is full.
 */
static void fill_with_mixed_sizes(lorastore *conn, bool device)
{
	static const int layers[] = {7, 12, 10, 5, 12, 3};
	const uint64_t slab = 4ull << 20;
	int admitted = 0;
	bool evicted = false;
	char name[32];
	for (int i = 0; i < 60 && !evicted; i++) {
		snprintf(name, sizeof(name), "mix/a%02d", i);
		import_seed(conn, name, 300 + (uint64_t)i, layers[i % 6], 512);
		lorastore_tier_stats tb = tier_stats(conn, device);
		uint64_t ev = stats_of(conn).evictions;
		lorastore_adapter *ad = NULL;
		int rc = device ? lorastore_acquire_tier(conn, name, LORASTORE_TIER_DEVICE, NULL,
							 -1, &ad)
				: lorastore_acquire(conn, name, -1, &ad);
		cr_assert_eq(rc, 0, "acquire of %s: %s", name, lorastore_errmsg(conn));
		/* A device copy is its data region; a host copy adds its table (show). */
		lorastore_adapter_info info;
		cr_assert_eq(lorastore_adapter_info_get(ad, &info), 0);
		uint64_t bytes = info.resident_bytes;
		cr_assert_eq(lorastore_adapter_release(ad), 0);
		if (!device) {
			lorastore_list *l = NULL;
			cr_assert_eq(lorastore_show(conn, name, &l), 0);
			bytes = lorastore_list_entry(l, 0)->resident_bytes;
			lorastore_list_free(l);
		}
		lorastore_tier_stats ta = tier_stats(conn, device);
		cr_assert_leq(ta.slab_bytes, ta.budget + slab,
			      "slabs of %llu bytes exceed the budget by more than one slab",
			      (unsigned long long)ta.slab_bytes);
		if (stats_of(conn).evictions == ev) {
			cr_assert_eq(ta.used, tb.used + bytes, "%s: used %llu -> %llu, size %llu",
				     name, (unsigned long long)tb.used,
				     (unsigned long long)ta.used, (unsigned long long)bytes);
			admitted++;
			continue;
		}
		cr_assert_gt(tb.used + bytes, tb.budget,
			     "%s (%llu bytes) evicted another while the budget had %llu of "
			     "%llu bytes free (slabs %llu bytes)",
			     name, (unsigned long long)bytes,
			     (unsigned long long)(tb.budget - tb.used),
			     (unsigned long long)tb.budget, (unsigned long long)tb.slab_bytes);
		evicted = true;
	}
	cr_assert(evicted, "the budget never filled: the test checked nothing");
	cr_assert_geq(admitted, 8, "only %d adapters fit before the first eviction", admitted);
}

Test(device, mixed_sizes_fill_the_host_budget_before_any_eviction)
{
	static const char *const args[] = {"--backend", "host", "--host-budget", "12MiB",
					   "--host-slab-size", "4MiB", NULL};
	int rc = ls_daemon_start(&dp, NULL, args);
	cr_assert_eq(rc, 0, "lorastored did not start; log:\n%s", daemon_log());
	lorastore *conn = connect_ok();
	fill_with_mixed_sizes(conn, false);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, mixed_sizes_fill_the_device_budget_before_any_eviction)
{
	need_cuda(false);
	static const char *const args[] = {"--device-budget", "12MiB", "--device-slab-size",
					   "4MiB", NULL};
	start_device_daemon(args);
	lorastore *conn = connect_ok();
	fill_with_mixed_sizes(conn, true);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, a_cold_device_load_copies_each_chunk_while_the_next_is_read)
{
	need_cuda(false);
	static const char *const args[] = {"--log-level", "debug", NULL};
	start_device_daemon(args);
	lorastore *conn = connect_ok();
	/* 48 layers of 512 KiB: a 24 MiB data region, three of the loads' 8 MiB reads. */
	import_seed(conn, "dev/big", 21, 48, 2048);
	uint64_t want = host_hash(conn, "dev/big");
	cr_assert_eq(lorastore_evict(conn, "dev/big"), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter *ad = acquire_dev(conn, "dev/big", NULL);
	cr_assert_eq(adapter_hash(ad), want, "the device copy differs from the host copy");
	lorastore_adapter_release(ad);
	/* The daemon logs each copy with how much of the blob was read by then. */
	FILE *f = fopen(dp.log, "r");
	cr_assert_not_null(f);
	static char log[1 << 20];
	log[fread(log, 1, sizeof(log) - 1, f)] = '\0';
	fclose(f);
	int copies = 0;
	unsigned long long first_read = 0, total = 0;
	for (const char *p = log; (p = strstr(p, "bytes read)")); p++) {
		const char *q = p;
		while (q > log && q[-1] != '(')
			q--;
		unsigned long long r, n;
		cr_assert_eq(sscanf(q, "host copy: %llu of %llu", &r, &n), 2, "%.80s", q);
		if (copies++ == 0) {
			first_read = r;
			total = n;
		}
	}
	cr_assert_eq(total, 24ull << 20, "%d copies logged, of a region of %llu bytes", copies, total);
	cr_assert_geq(copies, 2, "one copy of the whole region: nothing overlapped");
	cr_assert_lt(first_read, total, "the first copy waited for the whole read");
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, a_corrupt_blob_fails_a_streamed_device_load_and_leaves_no_memory_held)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/good", 22, 4, 512);
	/* 24 MiB: the chunks before the broken byte are copied before the checksum fails. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/bad", work_dir);
	cr_assert_eq(mkdir(dir, 0755), 0);
	struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 48, .rank = 16,
			       .dtype = LS_DTYPE_F16, .hidden = 2048, .heads = 4, .kv_heads = 4,
			       .seed = 23};
	cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_import_dir_entry(conn, dir, &(lorastore_import_opts){.name = "dev/bad"},
						&l), 0, "%s", lorastore_errmsg(conn));
	char blob[PATH_MAX];
	snprintf(blob, sizeof(blob), "%s/blobs/%s.blob", dp.state, lorastore_list_entry(l, 0)->digest);
	lorastore_list_free(l);
	int fd = open(blob, O_RDWR);
	cr_assert_geq(fd, 0, "%s: %s", blob, strerror(errno));
	struct ls_blob_header hdr;
	cr_assert_eq(pread(fd, &hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	off_t at = (off_t)(hdr.data_offset + hdr.data_length - 100);
	unsigned char byte;
	cr_assert_eq(pread(fd, &byte, 1, at), 1);
	byte ^= 0x5a;
	cr_assert_eq(pwrite(fd, &byte, 1, at), 1);
	close(fd);

	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire_tier(conn, "dev/bad", LORASTORE_TIER_DEVICE, NULL, -1, &ad);
	cr_assert_eq(rc, LORASTORE_E_CORRUPT, "device acquire of a corrupt blob: %s (%s)",
		     lorastore_strerror(rc), lorastore_errmsg(conn));
	cr_assert_null(ad);
	lorastore_tier_stats t = device_stats(conn, NULL);
	cr_assert_eq(t.adapters, 0, "the failed device load stayed resident");
	cr_assert_eq(t.used, 0, "the failed device load holds %llu bytes",
		     (unsigned long long)t.used);
	cr_assert_eq(stats_of(conn).tiers[0].used, 0, "the failed host copy holds memory");
	/* The daemon serves the rest. */
	ad = acquire_dev(conn, "dev/good", NULL);
	cr_assert_eq(adapter_hash(ad), host_hash(conn, "dev/good"));
	lorastore_adapter_release(ad);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, deleting_a_device_leased_adapter_defers_until_release)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/del", 5, 2, 256);
	lorastore_adapter *ad = acquire_dev(conn, "dev/del", NULL);
	uint64_t h = adapter_hash(ad);
	cr_assert_eq(lorastore_delete(conn, "dev/del"), 0, "delete: %s", lorastore_errmsg(conn));
	cr_assert_eq(adapter_hash(ad), h, "the leased device bytes changed after the delete");
	cr_assert_eq(device_stats(conn, NULL).adapters, 1);
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	cr_assert_eq(device_stats(conn, NULL).adapters, 0, "freed only at the last release");
	lorastore_adapter *again = NULL;
	cr_assert_eq(lorastore_acquire_tier(conn, "dev/del", LORASTORE_TIER_DEVICE, NULL, -1, &again),
		     LORASTORE_E_NOT_FOUND);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, evicting_the_device_copy_keeps_the_host_copy_and_reloading_reads_no_disk)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/tiers", 9, 2, 256);
	cr_assert_eq(lorastore_load_tier(conn, "dev/tiers", LORASTORE_TIER_DEVICE, NULL), 0, "%s",
		     lorastore_errmsg(conn));
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_show(conn, "dev/tiers", &l), 0);
	cr_assert_str_eq(lorastore_list_entry(l, 0)->tier, "host,device");
	lorastore_list_free(l);
	cr_assert_eq(lorastore_evict_tier(conn, "dev/tiers", LORASTORE_TIER_DEVICE, NULL), 0, "%s",
		     lorastore_errmsg(conn));
	cr_assert_eq(device_stats(conn, NULL).adapters, 0);
	cr_assert_eq(lorastore_show(conn, "dev/tiers", &l), 0);
	cr_assert_str_eq(lorastore_list_entry(l, 0)->tier, "host");
	lorastore_list_free(l);
	cr_assert_eq(lorastore_evict_tier(conn, "dev/tiers", LORASTORE_TIER_DEVICE, NULL),
		     LORASTORE_E_NOT_FOUND);
	lorastore_stats before = stats_of(conn);
	cr_assert_eq(lorastore_load_tier(conn, "dev/tiers", LORASTORE_TIER_DEVICE, NULL), 0);
	lorastore_stats after = stats_of(conn);
	cr_assert_eq(after.loads, before.loads + 1, "the reload read the disk again");
	cr_assert_eq(after.tiers[0].adapters, 1);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, two_connections_of_one_process_share_one_import_of_a_slab)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *c1 = connect_ok(), *c2 = connect_ok();
	import_seed(c1, "dev/share", 11, 2, 256);
	lorastore_adapter *a1 = acquire_dev(c1, "dev/share", NULL);
	lorastore_adapter *a2 = acquire_dev(c2, "dev/share", NULL);
	lorastore_tensor t1, t2;
	cr_assert_eq(lorastore_adapter_tensor_at(a1, 0, &t1), 0);
	cr_assert_eq(lorastore_adapter_tensor_at(a2, 0, &t2), 0);
	cr_assert_eq(t1.data, t2.data, "each connection imported the slab again");
	uint64_t h = adapter_hash(a2);
	/* The first connection's close leaves the import to the second. */
	lorastore_close(c1);
	cr_assert_eq(adapter_hash(a2), h, "the shared import went with the first connection");
	lorastore_adapter_release(a2);
	lorastore_close(c2);
	/* A new connection imports it afresh and reads the same bytes. */
	lorastore *c3 = connect_ok();
	lorastore_adapter *a3 = acquire_dev(c3, "dev/share", NULL);
	cr_assert_eq(adapter_hash(a3), h);
	lorastore_adapter_release(a3);
	lorastore_close(c3);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

/* The CLI against the test's daemon; its exit status. */
static int cli(const char *args)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "%s --socket %s %s >/dev/null 2>&1", ls_cli_binary(), dp.socket,
		 args);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

Test(device, the_cli_loads_into_and_evicts_from_the_device_tier)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/cli", 10, 2, 256);
	cr_assert_eq(cli("load --tier device dev/cli"), 0);
	cr_assert_eq(device_stats(conn, NULL).adapters, 1);
	char args[128];
	snprintf(args, sizeof(args), "evict --device %s dev/cli", device_stats(conn, NULL).device);
	cr_assert_eq(cli(args), 0);
	cr_assert_eq(device_stats(conn, NULL).adapters, 0);
	cr_assert_eq(stats_of(conn).tiers[0].adapters, 1, "the host copy went too");
	cr_assert_eq(cli("load --device GPU-00000000-0000-0000-0000-000000000000 dev/cli"), 1);
	cr_assert_eq(cli("load --tier gpu dev/cli"), 2);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

#ifdef LS_HAVE_CUDRV
static unsigned long long double_calls(void)
{
	void *lib = dlopen(LS_CUDA_DOUBLE_PATH, RTLD_NOW | RTLD_NOLOAD);
	cr_assert_not_null(lib, "the driver double is not loaded in this process");
	unsigned long long (*calls)(void) = (unsigned long long (*)(void))dlsym(lib, "ls_cuda_double_calls");
	cr_assert_not_null(calls);
	unsigned long long n = calls();
	dlclose(lib);
	return n;
}
#endif

/* Make the double's first GPU's primary context current on this thread. */
static void double_make_current(void)
{
#ifdef LS_HAVE_CUDRV
	void *lib = dlopen(LS_CUDA_DOUBLE_PATH, RTLD_NOW | RTLD_NOLOAD);
	cr_assert_not_null(lib, "the driver double is not loaded in this process");
	CUresult (*init)(unsigned) = (CUresult(*)(unsigned))dlsym(lib, "cuInit");
	CUresult (*get)(CUdevice *, int) = (CUresult(*)(CUdevice *, int))dlsym(lib, "cuDeviceGet");
	CUresult (*retain)(CUcontext *, CUdevice) =
		(CUresult(*)(CUcontext *, CUdevice))dlsym(lib, "cuDevicePrimaryCtxRetain");
	CUresult (*set)(CUcontext) = (CUresult(*)(CUcontext))dlsym(lib, "cuCtxSetCurrent");
	cr_assert(init && get && retain && set);
	CUdevice dev;
	CUcontext ctx;
	cr_assert_eq(init(0), CUDA_SUCCESS);
	cr_assert_eq(get(&dev, 0), CUDA_SUCCESS);
	cr_assert_eq(retain(&ctx, dev), CUDA_SUCCESS);
	cr_assert_eq(set(ctx), CUDA_SUCCESS);
	dlclose(lib);
#endif
}

/*
 * An acquire that names no GPU means the GPU of the thread's current
 * context: the library asks the driver for that context (one call) and
 * keeps its GPU per thread, so a warm one makes exactly that one call.
 */
Test(device, a_warm_acquire_of_the_current_contexts_gpu_asks_the_driver_one_thing)
{
	need_cuda(true);
#ifdef LS_HAVE_CUDRV
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/ctx", 7, 2, 256);
	lorastore_adapter *ad = acquire_dev(conn, "dev/ctx", "");
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	double_make_current();
	ad = acquire_dev(conn, "dev/ctx", NULL);
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	unsigned long long before = double_calls();
	for (int i = 0; i < 100; i++) {
		ad = acquire_dev(conn, "dev/ctx", NULL);
		cr_assert_eq(lorastore_adapter_release(ad), 0);
	}
	cr_assert_eq(double_calls() - before, 100,
		     "100 warm acquires naming no GPU made %llu driver calls",
		     double_calls() - before);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
#endif
}

Test(device, a_warm_device_acquire_makes_no_driver_call)
{
	need_cuda(true);
#ifdef LS_HAVE_CUDRV
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/warm", 6, 2, 256);
	/* The first acquire on a connection imports the slab: not a warm one. */
	lorastore_adapter *ad = acquire_dev(conn, "dev/warm", NULL);
	cr_assert_eq(lorastore_adapter_release(ad), 0);
	unsigned long long before = double_calls();
	for (int i = 0; i < 100; i++) {
		ad = acquire_dev(conn, "dev/warm", "");
		lorastore_tensor t;
		cr_assert_eq(lorastore_adapter_tensor_at(ad, 0, &t), 0);
		cr_assert_eq(lorastore_adapter_release(ad), 0);
	}
	cr_assert_eq(double_calls(), before, "100 warm device acquires made %llu driver calls",
		     double_calls() - before);
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
#endif
}

Test(device, two_gpus_are_two_device_tiers_named_by_uuid)
{
	need_cuda(true);
	setenv("LS_CUDA_DOUBLE_DEVICES", "2", 1);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/two", 7, 2, 256);
	lorastore_stats s = stats_of(conn);
	cr_assert_eq(s.tier_count, 3, "host and two GPUs");
	cr_assert_str_neq(s.tiers[1].device, s.tiers[2].device);
	uint64_t want = host_hash(conn, "dev/two");
	int ordinals[2];
	for (int k = 0; k < 2; k++) {
		lorastore_adapter *ad = acquire_dev(conn, "dev/two", s.tiers[1 + k].device);
		lorastore_adapter_info info;
		lorastore_adapter_info_get(ad, &info);
		cr_assert_str_eq(info.device_uuid, s.tiers[1 + k].device);
		ordinals[k] = info.device;
		cr_assert_eq(adapter_hash(ad), want);
		lorastore_adapter_release(ad);
	}
	cr_assert_neq(ordinals[0], ordinals[1]);
	cr_assert_eq(device_stats(conn, s.tiers[1].device).adapters, 1);
	cr_assert_eq(device_stats(conn, s.tiers[2].device).adapters, 1);
	/* With two GPUs and no context current, the daemon cannot guess which. */
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire_tier(conn, "dev/two", LORASTORE_TIER_DEVICE, "", -1, &ad);
	cr_assert_eq(rc, LORASTORE_E_NOT_FOUND);
	cr_assert(strstr(lorastore_errmsg(conn), "name the GPU"), "%s", lorastore_errmsg(conn));
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

/* ---- without a GPU */

Test(device, backend_cuda_without_a_driver_fails_at_start_and_says_why)
{
	need_cuda(false);
	setenv("LORASTORE_CUDA_DRIVER", "/nonexistent/libcuda.so.1", 1);
	static const char *const args[] = {"--backend", "cuda", NULL};
	cr_assert_neq(ls_daemon_start(&dp, NULL, args), 0, "started without a driver");
	const char *log = daemon_log();
	cr_assert(strstr(log, "--backend cuda") && strstr(log, "no NVIDIA driver"), "log:\n%s", log);
}

Test(device, auto_without_a_driver_serves_host_memory_and_refuses_the_device_tier)
{
	need_cuda(false);
	setenv("LORASTORE_CUDA_DRIVER", "/nonexistent/libcuda.so.1", 1);
	int rc = ls_daemon_start(&dp, NULL, NULL);
	cr_assert_eq(rc, 0, "log:\n%s", daemon_log());
	cr_assert(strstr(daemon_log(), "host memory only"), "log:\n%s", daemon_log());
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/nogpu", 8, 2, 256);
	cr_assert_eq(stats_of(conn).tier_count, 1);
	lorastore_adapter *ad = NULL;
	rc = lorastore_acquire_tier(conn, "dev/nogpu", LORASTORE_TIER_DEVICE, NULL, -1, &ad);
	cr_assert_eq(rc, LORASTORE_E_BACKEND, "%s", lorastore_errmsg(conn));
	cr_assert(strstr(lorastore_errmsg(conn), "no device tier"), "%s", lorastore_errmsg(conn));
	host_hash(conn, "dev/nogpu");
	lorastore_close(conn);
	cr_assert_eq(ls_daemon_stop(&dp), 0);
}

Test(device, two_versions_of_one_content_share_one_device_copy)
{
	need_cuda(false);
	start_device_daemon(NULL);
	lorastore *conn = connect_ok();
	import_seed(conn, "dev/one", 7, 2, 256);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/s7", work_dir);
	lorastore_import_opts io = {.name = "dev/two"};
	cr_assert_eq(lorastore_import_dir(conn, dir, &io, NULL), 0, "%s", lorastore_errmsg(conn));
	lorastore_adapter *a = acquire_dev(conn, "dev/one", NULL);
	lorastore_tier_stats one = device_stats(conn, NULL);
	lorastore_adapter *b = acquire_dev(conn, "dev/two", NULL);
	lorastore_tier_stats two = device_stats(conn, NULL);
	cr_assert_eq(two.adapters, 2);
	cr_assert_eq(two.used, one.used, "a second version of one content takes no more GPU memory");
	lorastore_tensor ta, tb;
	cr_assert_eq(lorastore_adapter_tensor_at(a, 0, &ta), 0);
	cr_assert_eq(lorastore_adapter_tensor_at(b, 0, &tb), 0);
	cr_assert_eq(ta.data, tb.data, "both versions read one device copy");
	lorastore_adapter_info ib;
	cr_assert_eq(lorastore_adapter_info_get(b, &ib), 0);
	cr_assert_str_eq(ib.name, "dev/two", "each version has its own table");
	lorastore_adapter_release(a);
	lorastore_adapter_release(b);
	cr_assert_eq(lorastore_evict_tier(conn, "dev/one", LORASTORE_TIER_DEVICE, NULL), -EBUSY,
		     "the copy dev/two reads stays");
	cr_assert_eq(lorastore_evict_tier(conn, "dev/two", LORASTORE_TIER_DEVICE, NULL), 0, "%s",
		     lorastore_errmsg(conn));
	cr_assert_eq(lorastore_evict_tier(conn, "dev/one", LORASTORE_TIER_DEVICE, NULL), 0, "%s",
		     lorastore_errmsg(conn));
	cr_assert_eq(device_stats(conn, NULL).adapters, 0);
	cr_assert_eq(device_stats(conn, NULL).used, 0);
	lorastore_close(conn);
}
