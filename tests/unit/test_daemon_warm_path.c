/*
 * The warm path (proto/directory.h) through a real lorastored and real client
 * processes: a resident version is leased in shared memory without a
 * request, and such a lease keeps every guarantee of a lease: no eviction,
 * a deletion deferred, the lease gone with its process (SIGKILL included),
 * counted in stats and against the pin limit.  A client that writes garbage
 * into its lease page harms only itself.  The stress test runs eight
 * acquirer processes on both tiers (the device tier through the CUDA driver
 * double) against an admin that evicts, deletes and re-imports the same
 * names under budgets that force eviction, and checks every byte read.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorastore.h>

#include "adapter_sum.h"
#include "daemon_proc.h"
#include "directory.h"
#include "raw_conn.h"
#include "synth.h"
#include "syscall_trap.h"
#ifdef LS_HAVE_CUDRV
#include "ls_cudrv.h"
#endif

static struct ls_daemon_proc dp;
static char *work_dir;

static void setup(void)
{
	memset(&dp, 0, sizeof(dp));
	dp.pid = -1;
	dp.notify_fd = -1;
	work_dir = synth_mkdtemp("warmpath");
	chmod(work_dir, 0755);
}

static void teardown(void)
{
	if (dp.dir[0] || dp.pid > 0 || dp.notify_fd >= 0)
		ls_daemon_cleanup(&dp);
	synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(warm_path, .init = setup, .fini = teardown, .timeout = 180);

/* ---- helpers */

static const char *daemon_log(void)
{
	static char text[65536];
	text[0] = '\0';
	FILE *f = fopen(dp.log, "r");
	if (!f)
		return text;
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static void start(const char *const *extra)
{
	const char *args[24] = {"--host-budget", "64MiB"};
	int n = 2;
	for (int i = 0; extra && extra[i] && n < 22; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	cr_assert_eq(ls_daemon_start(&dp, NULL, args), 0, "lorastored did not start:\n%s",
		     daemon_log());
}

static lorastore *connect_ok(void)
{
	lorastore *c = NULL;
	int rc = lorastore_connect(dp.socket, &c);
	cr_assert_eq(rc, 0, "connect: %s", lorastore_strerror(rc));
	return c;
}

/* The folder of content variant seed (written once). */
static const char *variant_dir(uint64_t seed, int hidden)
{
	static char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/v%" PRIu64, work_dir, seed);
	if (access(dir, F_OK) != 0) {
		cr_assert_eq(mkdir(dir, 0755), 0);
		struct synth_opts o = {.family = SYNTH_LLAMA, .layers = 1, .rank = 4,
				       .hidden = hidden, .heads = 4, .kv_heads = 4, .seed = seed};
		cr_assert_eq(synth_adapter_dir(dir, &o), 0);
	}
	return dir;
}

static void import(lorastore *c, const char *name, uint64_t seed)
{
	lorastore_import_opts io = {.name = name};
	int rc = lorastore_import_dir(c, variant_dir(seed, 64), &io, NULL);
	cr_assert_eq(rc, 0, "import %s: %s", name, lorastore_errmsg(c));
}

static lorastore_adapter *acquire(lorastore *c, const char *ref)
{
	lorastore_adapter *ad = NULL;
	int rc = lorastore_acquire(c, ref, -1, &ad);
	cr_assert_eq(rc, 0, "acquire %s: %s", ref, lorastore_errmsg(c));
	return ad;
}

static lorastore_stats stats(lorastore *c)
{
	lorastore_stats s;
	cr_assert_eq(lorastore_stats_get(c, &s), 0, "stats: %s", lorastore_errmsg(c));
	return s;
}

/* Acquired once by request, released, acquired again: the second is warm. */
static lorastore_adapter *acquire_warm(lorastore *c, const char *ref)
{
	lorastore_adapter_release(acquire(c, ref));
	uint64_t before = stats(c).warm_leases;
	lorastore_adapter *ad = acquire(c, ref);
	cr_assert_eq(stats(c).warm_leases, before + 1, "the second acquire of %s was not warm",
		     ref);
	return ad;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* ---- the lease itself */

Test(warm_path, a_second_acquire_is_taken_in_shared_memory_and_counted_as_a_lease)
{
	start(NULL);
	lorastore *c = connect_ok();
	import(c, "w/a", 1);
	lorastore_adapter *a1 = acquire(c, "w/a");
	lorastore_adapter_info i1, i2;
	lorastore_adapter_info_get(a1, &i1);
	uint64_t sum1 = ls_adapter_sum(a1);
	lorastore_adapter_release(a1);
	lorastore_stats s0 = stats(c);
	cr_assert_eq(s0.leases, 0);

	lorastore_adapter *a2 = acquire(c, "w/a");
	lorastore_stats s1 = stats(c);
	cr_assert_eq(s1.warm_leases, 1, "the second acquire took a request, not the page");
	cr_assert_eq(s1.leases, 1, "a warm lease is a lease in stats");
	lorastore_list *l = NULL;
	cr_assert_eq(lorastore_show(c, "w/a", &l), 0);
	cr_assert_eq(lorastore_list_entry(l, 0)->pins, 1, "show does not count the warm lease");
	lorastore_list_free(l);
	lorastore_adapter_info_get(a2, &i2);
	cr_assert_eq(i2.generation, i1.generation);
	cr_assert_eq(memcmp(i2.digest, i1.digest, 32), 0);
	cr_assert_eq(i2.tensor_bytes, i1.tensor_bytes);
	cr_assert_eq(ls_adapter_sum(a2), sum1, "the warm lease reads other bytes");
	cr_assert_eq(lorastore_adapter_release(a2), 0);
	cr_assert_eq(stats(c).warm_leases, 0, "a released warm lease is still counted");
	/* The clients' count of warm acquires reaches the daemon on its tick. */
	for (int i = 0; i < 50 && stats(c).warm_acquires == 0; i++)
		sleep_ms(20);
	cr_assert_geq(stats(c).warm_acquires, 1);
	lorastore_close(c);
}

Test(warm_path, a_fixed_version_and_the_latest_by_name_are_both_leased_warm)
{
	start(NULL);
	lorastore *c = connect_ok();
	import(c, "w/v", 1);
	import(c, "w/v", 2);
	lorastore_adapter *old = acquire_warm(c, "w/v@1");
	lorastore_adapter *cur = acquire_warm(c, "w/v");
	lorastore_adapter_info io, ic;
	lorastore_adapter_info_get(old, &io);
	lorastore_adapter_info_get(cur, &ic);
	cr_assert_eq(io.version, 1);
	cr_assert_eq(ic.version, 2, "\"name\" leased the old version warm");
	lorastore_adapter_release(old);
	lorastore_adapter_release(cur);
	/* A new version replaces "name" at once: the next acquire leases it. */
	import(c, "w/v", 3);
	lorastore_adapter *next = acquire(c, "w/v");
	lorastore_adapter_info_get(next, &ic);
	cr_assert_eq(ic.version, 3, "a warm acquire of \"name\" missed the new version");
	lorastore_adapter_release(next);
	lorastore_close(c);
}

Test(warm_path, an_eviction_passes_over_a_version_a_lease_page_holds)
{
	start(NULL);
	lorastore *c = connect_ok();
	import(c, "w/e", 1);
	lorastore_adapter *ad = acquire_warm(c, "w/e");
	cr_assert_eq(lorastore_evict(c, "w/e"), -EBUSY, "evicted under a warm lease");
	uint64_t sum = ls_adapter_sum(ad);
	lorastore_adapter_release(ad);
	/* Published again after the refused eviction: still leased warm. */
	ad = acquire(c, "w/e");
	cr_assert_eq(stats(c).warm_leases, 1, "a refused eviction left the version unpublished");
	cr_assert_eq(ls_adapter_sum(ad), sum);
	lorastore_adapter_release(ad);
	cr_assert_eq(lorastore_evict(c, "w/e"), 0, "evict after the lease ended: %s",
		     lorastore_errmsg(c));
	lorastore_close(c);
}

Test(warm_path, a_deleted_version_stays_while_a_warm_lease_holds_it_and_goes_after)
{
	start(NULL);
	lorastore *c = connect_ok();
	import(c, "w/d", 1);
	lorastore_adapter *ad = acquire_warm(c, "w/d");
	uint64_t sum = ls_adapter_sum(ad);
	cr_assert_eq(lorastore_delete(c, "w/d"), 0, "delete: %s", lorastore_errmsg(c));
	cr_assert_eq(stats(c).tiers[0].adapters, 1, "freed under a warm lease");
	cr_assert_eq(ls_adapter_sum(ad), sum, "the bytes changed under a warm lease");
	lorastore_adapter *again = NULL;
	cr_assert_eq(lorastore_acquire(c, "w/d", 0, &again), LORASTORE_E_NOT_FOUND,
		     "a deleted version was leased again");
	lorastore_adapter_release(ad);
	/* The daemon's tick finds the page empty and frees the version. */
	int waited = 0;
	while (stats(c).tiers[0].adapters != 0 && waited < 3000) {
		sleep_ms(20);
		waited += 20;
	}
	cr_assert_eq(stats(c).tiers[0].adapters, 0, "the deleted version outlived its warm lease");
	lorastore_close(c);
}

Test(warm_path, a_sigkilled_clients_warm_leases_end)
{
	start(NULL);
	lorastore *c = connect_ok();
	import(c, "w/k", 1);
	lorastore_adapter_release(acquire(c, "w/k"));
	int pipefd[2];
	cr_assert_eq(pipe(pipefd), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		lorastore *cc = NULL;
		lorastore_adapter *ad = NULL;
		if (lorastore_connect(dp.socket, &cc) || lorastore_acquire(cc, "w/k", -1, &ad))
			_exit(1);
		lorastore_adapter_release(ad);
		if (lorastore_acquire(cc, "w/k", -1, &ad))
			_exit(1);
		char ok = 'k';
		if (write(pipefd[1], &ok, 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	close(pipefd[1]);
	char got = 0;
	cr_assert_eq(read(pipefd[0], &got, 1), 1, "the child could not acquire");
	close(pipefd[0]);
	cr_assert_eq(stats(c).warm_leases, 1, "the child's lease is not a warm one");
	cr_assert_eq(lorastore_evict(c, "w/k"), -EBUSY);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	int rc = -EBUSY;
	for (int i = 0; i < 250 && rc == -EBUSY; i++) {
		rc = lorastore_evict(c, "w/k");
		if (rc == -EBUSY)
			sleep_ms(20);
	}
	cr_assert_eq(rc, 0, "the killed client's warm lease outlived it: %s", lorastore_errmsg(c));
	cr_assert_eq(stats(c).warm_leases, 0);
	lorastore_close(c);
}

Test(warm_path, a_full_lease_page_sends_the_next_acquires_through_requests)
{
	start(NULL);
	lorastore *c = connect_ok();
	import(c, "w/f", 1);
	enum { N = LS_LEASE_SLOTS + 20 };
	static lorastore_adapter *held[N];
	uint64_t sum = 0;
	for (size_t i = 0; i < N; i++) {
		held[i] = acquire(c, "w/f");
		if (i == 0)
			sum = ls_adapter_sum(held[0]);
	}
	lorastore_stats s = stats(c);
	cr_assert_eq(s.leases, N, "every acquire is a lease");
	cr_assert_eq(s.warm_leases, LS_LEASE_SLOTS, "the page held %llu warm leases of %zu slots",
		     (unsigned long long)s.warm_leases, (size_t)LS_LEASE_SLOTS);
	cr_assert_eq(ls_adapter_sum(held[N - 1]), sum);
	for (size_t i = 0; i < N; i++)
		cr_assert_eq(lorastore_adapter_release(held[i]), 0);
	cr_assert_eq(stats(c).leases, 0);
	lorastore_close(c);
}

Test(warm_path, a_device_tier_acquire_is_warm_too_without_naming_the_gpu)
{
#ifndef LS_HAVE_CUDRV
	cr_skip_test("this build has no CUDA path: no device tier, GPU or driver double");
#else
	const char *gpu = getenv("LS_TEST_REAL_GPU");
	if (!(gpu && strcmp(gpu, "1") == 0))
		setenv("LORASTORE_CUDA_DRIVER", LS_CUDA_DOUBLE_PATH, 1);
	const char *args[] = {"--backend", "cuda", "--device-budget", "64MiB", NULL};
	if (ls_daemon_start(&dp, NULL, args) != 0)
		cr_skip_test("this lorastored has no CUDA device tier (built without the CUDA path, "
			     "as the ThreadSanitizer daemon is): %.200s", daemon_log());
	lorastore *c = connect_ok();
	import(c, "w/dev", 1);
	lorastore_adapter *ad = NULL;
	/* NULL: the GPU of the thread's context, or the daemon's only one; this thread has none. */
	cr_assert_eq(lorastore_acquire_tier(c, "w/dev", LORASTORE_TIER_DEVICE, NULL, -1, &ad), 0,
		     "%s", lorastore_errmsg(c));
	lorastore_adapter_release(ad);
	cr_assert_eq(lorastore_acquire_tier(c, "w/dev", LORASTORE_TIER_DEVICE, NULL, -1, &ad), 0,
		     "%s", lorastore_errmsg(c));
	lorastore_adapter_info info;
	lorastore_adapter_info_get(ad, &info);
	cr_assert_str_eq(info.tier, "device");
	cr_assert_eq(stats(c).warm_leases, 1, "the second device acquire took a request");
	cr_assert_eq(lorastore_evict_tier(c, "w/dev", LORASTORE_TIER_DEVICE, NULL), -EBUSY);
	lorastore_adapter_release(ad);
	cr_assert_eq(lorastore_evict_tier(c, "w/dev", LORASTORE_TIER_DEVICE, NULL), 0, "%s",
		     lorastore_errmsg(c));
	lorastore_close(c);
#endif
}

/* ---- no request, no system call */

Test(warm_path, a_warm_acquire_and_its_release_make_no_system_call)
{
#if !defined(__x86_64__)
	cr_skip_test("the SIGSYS handler sets the return register of x86-64 only");
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	cr_skip_test("runs in the non-sanitized build: a sanitizer's allocator maps memory on its "
		     "own schedule, which would count as system calls of the warm path");
#endif
	start(NULL);
	lorastore *c = connect_ok();
	import(c, "w/s", 1);
	lorastore_adapter_release(acquire(c, "w/s"));
	lorastore_close(c);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		lorastore *cc = NULL;
		lorastore_adapter *ad = NULL;
		if (lorastore_connect(dp.socket, &cc) || lorastore_acquire(cc, "w/s", -1, &ad))
			_exit(101);
		lorastore_adapter_release(ad);
		/* Warm up the allocator and the caches before counting. */
		for (int i = 0; i < 1000; i++) {
			if (lorastore_acquire(cc, "w/s", -1, &ad))
				_exit(102);
			lorastore_adapter_release(ad);
		}
		if (ls_syscall_trap_on())
			_exit(103);
		int failed = 0;
		for (int i = 0; i < 100000; i++) {
			failed += lorastore_acquire(cc, "w/s", -1, &ad) != 0;
			if (!failed)
				lorastore_adapter_release(ad);
		}
		long trapped = ls_syscall_trapped();
		ls_syscall_trap_exit(failed ? 104 : (int)(trapped > 99 ? 99 : trapped));
	}
	int status = 0;
	waitpid(pid, &status, 0);
	cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
	int code = WEXITSTATUS(status);
	cr_assert_neq(code, 101, "the child could not connect or acquire");
	cr_assert_neq(code, 103, "seccomp refused the filter");
	cr_assert_neq(code, 104, "a warm acquire failed (it took the request path and its "
				 "system calls were refused)");
	cr_assert_eq(code, 0, "100,000 warm acquires and releases made %d system call(s)", code);
}

/* ---- a hostile page */

/* A raw connection with the warm path: its page mapped for writing as the client may. */
static _Atomic uint64_t *raw_page(int *fd_out, struct ls_framer *f)
{
	int fd = raw_conn_open(dp.socket);
	cr_assert_geq(fd, 0);
	ls_framer_init(f, 0);
	int dir_fd, page_fd;
	uint64_t dir_size;
	cr_assert_eq(raw_conn_hello_warm(fd, f, &dir_fd, &dir_size, &page_fd), 0,
		     "no warm path in the Hello reply");
	cr_assert_gt(dir_size, 0);
	/* The directory is sealed against writable mappings. */
	cr_assert_eq(mmap(NULL, dir_size, PROT_READ | PROT_WRITE, MAP_SHARED, dir_fd, 0),
		     MAP_FAILED, "the directory could be mapped writable");
	close(dir_fd);
	/* And the page cannot shrink under the daemon. */
	cr_assert_neq(ftruncate(page_fd, 0), 0, "the lease page could be shrunk");
	void *p = mmap(NULL, LS_LEASE_PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, page_fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	close(page_fd);
	*fd_out = fd;
	return p;
}

Test(warm_path, garbage_in_a_lease_page_harms_only_its_writer)
{
	start(NULL);
	lorastore *c = connect_ok();
	import(c, "w/g", 1);
	import(c, "w/h", 2);
	lorastore_adapter *ad = acquire(c, "w/g");
	uint64_t sum = ls_adapter_sum(ad);
	lorastore_adapter_release(ad);

	int fd;
	struct ls_framer f;
	_Atomic uint64_t *page = raw_page(&fd, &f);
	/* Header, count and every slot: random words, many with the held bit. */
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < LS_LEASE_PAGE_BYTES / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		atomic_store(&page[i], x);
	}
	sleep_ms(300); /* the daemon's tick looks at the page */
	/* Everyone else is served as before: acquire, warm acquire, evict, delete. */
	lorastore_adapter *g = acquire_warm(c, "w/g");
	cr_assert_eq(ls_adapter_sum(g), sum);
	lorastore_adapter_release(g);
	cr_assert_eq(lorastore_evict(c, "w/g"), 0, "garbage in another page held w/g: %s",
		     lorastore_errmsg(c));
	lorastore_adapter_release(acquire(c, "w/h"));
	cr_assert_eq(lorastore_delete(c, "w/h"), 0);
	lorastore_stats s = stats(c);
	cr_assert_eq(s.clients, 2, "the daemon dropped a connection over garbage in a page");
	cr_assert_eq(s.tiers[0].adapters, 0, "garbage in a page pinned a version");
	munmap((void *)page, LS_LEASE_PAGE_BYTES);
	close(fd);
	ls_framer_free(&f);
	lorastore_close(c);
}

Test(warm_path, a_client_pinning_over_its_limit_through_its_page_is_disconnected)
{
	const char *args[] = {"--client-pin-limit", "1MiB", NULL};
	start(args);
	lorastore *c = connect_ok();
	import(c, "w/p", 1);
	lorastore_adapter *ad = acquire(c, "w/p");
	lorastore_adapter_info info;
	lorastore_adapter_info_get(ad, &info);
	lorastore_adapter_release(ad);
	cr_assert_lt(info.resident_bytes, 1u << 20);

	int fd;
	struct ls_framer f;
	_Atomic uint64_t *page = raw_page(&fd, &f);
	struct ls_lease_page *hdr = (struct ls_lease_page *)page;
	/* The same version held in every slot: hundreds of times its size. */
	uint64_t word = LS_LEASE_WORD(info.generation, 0) | LS_LEASE_HELD;
	for (size_t i = 0; i < LS_LEASE_SLOTS; i++)
		atomic_store(&hdr->slots[i], word);
	Lorastore__Response *resp = NULL;
	int rc = raw_conn_read(fd, &f, 5000, &resp);
	if (resp)
		lorastore__response__free_unpacked(resp, NULL);
	cr_assert_eq(rc, -EPIPE, "the connection over its limit was not closed (%d)", rc);
	cr_assert_not_null(strstr(daemon_log(), "over --client-pin-limit"),
			   "the log does not say why:\n%s", daemon_log());
	/* Its leases ended with it. */
	cr_assert_eq(lorastore_evict(c, "w/p"), 0, "%s", lorastore_errmsg(c));
	munmap((void *)page, LS_LEASE_PAGE_BYTES);
	close(fd);
	ls_framer_free(&f);
	lorastore_close(c);
}

/* ---- stress */

#define STRESS_NAMES 16
#define STRESS_VARIANTS 5
#define STRESS_ACQUIRERS 8
#define STRESS_HIDDEN 256

/* What each process reports, in memory shared across fork. */
struct stress_report {
	_Atomic uint64_t acquires, checks, mismatches, refused, errors, admin_ops;
	_Atomic int device_tier; /* acquirers take the device tier too */
	char first_error[256];
	struct {
		uint8_t digest[32];
		uint64_t sum;
	} expected[STRESS_VARIANTS];
};

#ifdef LS_HAVE_CUDRV
/* The device memory of an adapter, read through the driver (the double in CI). */
static int device_copy(void *dst, const void *src, size_t n)
{
	static const struct ls_cudrv *d;
	if (!d) {
		struct ls_err err;
		CUdevice cd;
		CUcontext ctx;
		if (ls_cudrv_load(&d, &err) || d->cuInit(0) || d->cuDeviceGet(&cd, 0) ||
		    d->cuDevicePrimaryCtxRetain(&ctx, cd) || d->cuCtxSetCurrent(ctx))
			return -1;
	}
	return d->cuMemcpyDtoH(dst, (CUdeviceptr)(uintptr_t)src, n) == CUDA_SUCCESS ? 0 : -1;
}
#endif

/* FNV-1a over 8-byte words of every tensor, read from either tier. */
static uint64_t stress_sum(const lorastore_adapter *ad, bool device)
{
	static uint8_t buf[1 << 20];
	lorastore_adapter_info info;
	lorastore_adapter_info_get(ad, &info);
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < info.tensor_count; i++) {
		lorastore_tensor t;
		if (lorastore_adapter_tensor_at(ad, i, &t) || t.bytes > sizeof(buf))
			return 0;
		const uint8_t *p = t.data;
		if (device) {
#ifdef LS_HAVE_CUDRV
			if (device_copy(buf, t.data, t.bytes))
				return 0;
			p = buf;
#else
			return 0;
#endif
		}
		size_t k = 0;
		for (; k + 8 <= t.bytes; k += 8) {
			uint64_t w;
			memcpy(&w, p + k, 8);
			h = (h ^ w) * 1099511628211ull;
		}
		for (; k < t.bytes; k++)
			h = (h ^ p[k]) * 1099511628211ull;
	}
	return h;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stress_fail(struct stress_report *r, _Atomic uint64_t *counter, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void stress_fail(struct stress_report *r, _Atomic uint64_t *counter, const char *fmt, ...)
{
	if (atomic_fetch_add(counter, 1) == 0 && !r->first_error[0]) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(r->first_error, sizeof(r->first_error), fmt, ap);
		va_end(ap);
	}
}

/* The variant an adapter's digest names and whether its bytes hash to that variant's. */
static bool stress_check(struct stress_report *r, const lorastore_adapter *ad, bool device)
{
	lorastore_adapter_info info;
	lorastore_adapter_info_get(ad, &info);
	uint64_t sum = stress_sum(ad, device);
	atomic_fetch_add(&r->checks, 1);
	for (int v = 0; v < STRESS_VARIANTS; v++)
		if (memcmp(info.digest, r->expected[v].digest, 32) == 0)
			return sum == r->expected[v].sum;
	return false;
}

static void stress_acquirer(struct stress_report *r, unsigned seed, int64_t until)
{
	lorastore *c = NULL;
	if (lorastore_connect(dp.socket, &c)) {
		stress_fail(r, &r->errors, "acquirer: connect failed");
		_exit(1);
	}
	struct {
		lorastore_adapter *ad;
		bool device;
		char ref[32];
	} held[2] = {{0}};
	for (uint64_t i = 0; now_ms() < until; i++) {
		char ref[32];
		snprintf(ref, sizeof(ref), "s/%u", (unsigned)(rand_r(&seed) % STRESS_NAMES));
		bool device = atomic_load(&r->device_tier) && (i & 1);
		lorastore_adapter *ad = NULL;
		int rc = lorastore_acquire_tier(c, ref, device ? LORASTORE_TIER_DEVICE
							       : LORASTORE_TIER_HOST,
						NULL, -1, &ad);
		if (rc == LORASTORE_E_NOT_FOUND || rc == LORASTORE_E_NO_SPACE || rc == -EBUSY) {
			atomic_fetch_add(&r->refused, 1);
			continue;
		}
		if (rc) {
			stress_fail(r, &r->errors, "acquire %s (%s tier): %s", ref,
				    device ? "device" : "host", lorastore_errmsg(c));
			break;
		}
		atomic_fetch_add(&r->acquires, 1);
		if (!stress_check(r, ad, device))
			stress_fail(r, &r->mismatches, "%s (%s tier) read wrong bytes at acquire", ref,
				    device ? "device" : "host");
		/* Now and then a lease held for a while, as a batch would: evictions go on. */
		if (i % 64 == 0) {
			sleep_ms(1);
			if (!stress_check(r, ad, device))
				stress_fail(r, &r->mismatches,
					    "%s (%s tier) changed while leased for 1 ms", ref,
					    device ? "device" : "host");
		}
		/* Held across the next acquire (a load, an eviction): read again, then let go. */
		int k = (int)(i & 1);
		if (held[k].ad) {
			if (!stress_check(r, held[k].ad, held[k].device))
				stress_fail(r, &r->mismatches,
					    "%s (%s tier) changed while leased", held[k].ref,
					    held[k].device ? "device" : "host");
			lorastore_adapter_release(held[k].ad);
		}
		held[k].ad = ad;
		held[k].device = device;
		snprintf(held[k].ref, sizeof(held[k].ref), "%s", ref);
	}
	lorastore_close(c);
	_exit(0);
}

static void stress_admin(struct stress_report *r, unsigned seed, int64_t until)
{
	lorastore *c = NULL;
	if (lorastore_connect(dp.socket, &c)) {
		stress_fail(r, &r->errors, "admin: connect failed");
		_exit(1);
	}
	while (now_ms() < until) {
		char ref[32];
		snprintf(ref, sizeof(ref), "s/%u", (unsigned)(rand_r(&seed) % STRESS_NAMES));
		int rc;
		if (rand_r(&seed) % 2) {
			rc = lorastore_evict(c, ref);
			if (rc && rc != -EBUSY && rc != LORASTORE_E_NOT_FOUND)
				stress_fail(r, &r->errors, "evict %s: %s", ref, lorastore_errmsg(c));
		} else {
			/* The name's versions go, and it comes back with other content. */
			rc = lorastore_delete(c, ref);
			if (rc && rc != LORASTORE_E_NOT_FOUND)
				stress_fail(r, &r->errors, "delete %s: %s", ref, lorastore_errmsg(c));
			lorastore_import_opts io = {.name = ref};
			rc = lorastore_import_dir(
				c, variant_dir(rand_r(&seed) % STRESS_VARIANTS, STRESS_HIDDEN), &io,
				NULL);
			if (rc)
				stress_fail(r, &r->errors, "import %s: %s", ref, lorastore_errmsg(c));
		}
		atomic_fetch_add(&r->admin_ops, 1);
		sleep_ms(2);
	}
	lorastore_close(c);
	_exit(0);
}

Test(warm_path, eight_acquirers_never_read_a_wrong_byte_while_an_admin_evicts_deletes_and_reimports)
{
	bool device = false;
#ifdef LS_HAVE_CUDRV
	const char *gpu = getenv("LS_TEST_REAL_GPU");
	if (!(gpu && strcmp(gpu, "1") == 0)) {
		setenv("LORASTORE_CUDA_DRIVER", LS_CUDA_DOUBLE_PATH, 1);
		device = true;
	}
#endif
	/*
	 * Room for about eight of the sixteen names per tier (20 KiB each on the
	 * host, data and table; 16 KiB on the device): loads evict all the time.
	 */
	const char *host_args[] = {"--host-budget", "160KiB", NULL};
	const char *dev_args[] = {"--backend", "cuda", "--host-budget", "160KiB",
				  "--device-budget", "128KiB", NULL};
	if (device && ls_daemon_start(&dp, NULL, dev_args) != 0) {
		/* The ThreadSanitizer daemon of scripts/test is built without the CUDA path. */
		cr_assert_not_null(strstr(daemon_log(), "built without the CUDA backend"),
				   "lorastored did not start:\n%s", daemon_log());
		ls_daemon_cleanup(&dp);
		memset(&dp, 0, sizeof(dp));
		dp.pid = -1;
		dp.notify_fd = -1;
		device = false;
	}
	if (!device) {
		cr_log_info("no device tier (a build or a daemon without the CUDA path): the stress "
			    "runs on the host tier alone");
		start(host_args);
	}

	struct stress_report *r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE,
				       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(r, MAP_FAILED);
	memset(r, 0, sizeof(*r));
	atomic_store(&r->device_tier, device);
	lorastore *c = connect_ok();
	/* What each content variant's bytes hash to, read before anything races. */
	for (int v = 0; v < STRESS_VARIANTS; v++) {
		char name[32];
		snprintf(name, sizeof(name), "ref/%d", v);
		lorastore_import_opts io = {.name = name};
		cr_assert_eq(lorastore_import_dir(c, variant_dir((uint64_t)v, STRESS_HIDDEN), &io,
						  NULL),
			     0, "%s", lorastore_errmsg(c));
		lorastore_adapter *ad = acquire(c, name);
		lorastore_adapter_info info;
		lorastore_adapter_info_get(ad, &info);
		memcpy(r->expected[v].digest, info.digest, 32);
		r->expected[v].sum = stress_sum(ad, false);
		cr_assert_neq(r->expected[v].sum, 0);
		lorastore_adapter_release(ad);
		cr_assert_eq(lorastore_delete(c, name), 0);
	}
	for (int i = 0; i < STRESS_NAMES; i++) {
		char name[32];
		snprintf(name, sizeof(name), "s/%d", i);
		lorastore_import_opts io = {.name = name};
		cr_assert_eq(lorastore_import_dir(c, variant_dir((uint64_t)(i % STRESS_VARIANTS),
								 STRESS_HIDDEN),
						  &io, NULL),
			     0, "%s", lorastore_errmsg(c));
	}
	lorastore_stats s0 = stats(c);
	const char *secs = getenv("LS_TEST_STRESS_SECONDS");
	int64_t until = now_ms() + (secs && atoi(secs) > 0 ? atoi(secs) : 6) * 1000;
	pid_t pids[STRESS_ACQUIRERS + 1];
	for (int i = 0; i <= STRESS_ACQUIRERS; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0) {
			if (i == STRESS_ACQUIRERS)
				stress_admin(r, 7777, until);
			stress_acquirer(r, (unsigned)(i + 1) * 7919u, until);
		}
	}
	for (int i = 0; i <= STRESS_ACQUIRERS; i++) {
		int status;
		waitpid(pids[i], &status, 0);
		cr_expect(WIFEXITED(status), "process %d died of signal %d", i, WTERMSIG(status));
	}
	lorastore_stats s1 = stats(c);
	uint64_t evictions = s1.evictions - s0.evictions;
	/* Warm acquires reach the daemon's count on its tick. */
	sleep_ms(300);
	uint64_t warm = stats(c).warm_acquires - s0.warm_acquires;
	cr_log_info("stress (%s): %" PRIu64 " acquires (%" PRIu64 " warm), %" PRIu64
		    " byte checks, %" PRIu64 " refused, %" PRIu64 " admin operations, %" PRIu64
		    " evictions",
		    device ? "host and device tiers" : "host tier", atomic_load(&r->acquires), warm,
		    atomic_load(&r->checks), atomic_load(&r->refused), atomic_load(&r->admin_ops),
		    evictions);
	cr_assert_eq(atomic_load(&r->errors), 0, "%s", r->first_error);
	cr_assert_eq(atomic_load(&r->mismatches), 0, "%" PRIu64 " wrong reads; the first: %s",
		     atomic_load(&r->mismatches), r->first_error);
	cr_assert_gt(atomic_load(&r->acquires), 1000, "too few acquires to prove anything");
	cr_assert_gt(warm, atomic_load(&r->acquires) / 4, "few acquires were warm: the stress "
							  "tested the request path");
	/*
	 * Bounds that the slowest run (AddressSanitizer on a busy machine: 73
	 * evictions and 109 admin operations in 6 s) still clears.
	 */
	cr_assert_gt(evictions, 20, "the budget forced too few evictions to prove anything");
	cr_assert_gt(atomic_load(&r->admin_ops), 20);
	lorastore_close(c);
	munmap(r, sizeof(*r));
}
