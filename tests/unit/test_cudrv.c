/*
 * The CUDA driver resolved at run time (common/cuda/ls_cudrv.h), driven
 * against the driver double of tests/support/cuda_double.
 *
 * Every test goes through ls_cudrv_load and its table, as the daemon and the
 * client do; only the double's test API (call counter) is looked up
 * directly.  Criterion runs each test in its own process, so each one sets
 * its environment before its first load.  Tests with two processes fork
 * before either loads the driver: a CUDA process cannot be forked, on the
 * real driver as on the double.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#ifndef LS_HAVE_CUDRV

Test(cudrv, no_cuda_path)
{
	cr_skip_test("this build has no CUDA path");
}

#else

#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ls_cudrv.h"

#define MiB (1024ull * 1024ull)
#define SLAB (4 * MiB) /* two granules of 2 MiB */

static const struct ls_cudrv *drv;

/* Load the double (the environment is already set); NULL and a message on failure. */
static const struct ls_cudrv *load_quiet(struct ls_err *err)
{
	setenv("LORASTORE_CUDA_DRIVER", LS_CUDA_DOUBLE_PATH, 1);
	ls_err_clear(err);
	const struct ls_cudrv *d = NULL;
	return ls_cudrv_load(&d, err) == 0 ? d : NULL;
}

static const struct ls_cudrv *load(void)
{
	struct ls_err err;
	drv = load_quiet(&err);
	cr_assert_not_null(drv, "ls_cudrv_load(%s): %s", LS_CUDA_DOUBLE_PATH, err.msg);
	return drv;
}

static const char *words(CUresult r)
{
	static char buf[200];
	return ls_cudrv_strerror(drv, r, buf, sizeof(buf));
}

#define CU_OK(fn, ...)                                                                      \
	do {                                                                                \
		CUresult cu_r_ = drv->fn(__VA_ARGS__);                                      \
		cr_assert_eq(cu_r_, CUDA_SUCCESS, "%s: %s", #fn, words(cu_r_));              \
	} while (0)

/* In a forked child: report the failed call and exit non-zero. */
#define CHILD_OK(fn, ...)                                                                   \
	do {                                                                                \
		CUresult cu_r_ = drv->fn(__VA_ARGS__);                                      \
		if (cu_r_ != CUDA_SUCCESS) {                                                \
			fprintf(stderr, "child: %s: %s (line %d)\n", #fn, words(cu_r_),    \
				__LINE__);                                                  \
			_exit(2);                                                           \
		}                                                                           \
	} while (0)

/* Make device ordinal's primary context current on this thread. */
static CUresult use_device(int ordinal)
{
	CUdevice dev;
	CUcontext ctx;
	CUresult r = drv->cuDeviceGet(&dev, ordinal);
	if (r == CUDA_SUCCESS)
		r = drv->cuDevicePrimaryCtxRetain(&ctx, dev);
	if (r == CUDA_SUCCESS)
		r = drv->cuCtxSetCurrent(ctx);
	return r;
}

static CUmemAllocationProp slab_prop(int ordinal)
{
	CUmemAllocationProp prop;
	memset(&prop, 0, sizeof(prop));
	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
	prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop.location.id = ordinal;
	return prop;
}

static CUresult create_slab(size_t size, CUmemGenericAllocationHandle *h)
{
	CUmemAllocationProp prop = slab_prop(0);
	return drv->cuMemCreate(h, size, &prop, 0);
}

/* Reserve an address range and map h there with access flags, as a client maps a slab. */
static CUresult map_slab(CUmemGenericAllocationHandle h, size_t size, CUmemAccess_flags flags,
			 CUdeviceptr *ptr)
{
	CUmemAccessDesc access;
	memset(&access, 0, sizeof(access));
	access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	access.location.id = 0;
	access.flags = flags;
	CUresult r = drv->cuMemAddressReserve(ptr, size, 0, 0, 0);
	if (r != CUDA_SUCCESS)
		return r;
	r = drv->cuMemMap(*ptr, size, 0, h, 0);
	if (r == CUDA_SUCCESS)
		r = drv->cuMemSetAccess(*ptr, size, &access, 1);
	return r;
}

static CUresult unmap_slab(CUdeviceptr ptr, size_t size)
{
	CUresult r = drv->cuMemUnmap(ptr, size);
	return r == CUDA_SUCCESS ? drv->cuMemAddressFree(ptr, size) : r;
}

/* A byte pattern that depends on the offset and a seed, so misplaced bytes are caught. */
static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)((i * 131u + seed) ^ (i >> 12));
}

static bool has(const unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (unsigned char)((i * 131u + seed) ^ (i >> 12)))
			return false;
	return true;
}

static void send_fd(int sock, int fd)
{
	char byte = 'f';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	memset(&u, 0, sizeof(u));
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, 0) != 1) {
		perror("sendmsg");
		_exit(3);
	}
}

/* The descriptor passed over sock, or -1. */
static int recv_fd(int sock)
{
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof(u.buf) };
	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_RIGHTS)
		return -1;
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

static void wait_child_ok(pid_t pid)
{
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the child failed (status %#x): see its stderr", status);
}

/*
 * The exporter: a slab with the pattern seed written through a read-write
 * mapping, sent over sock as a descriptor.
 */
static void export_slab_child(int sock, unsigned seed, bool release_all)
{
	struct ls_err err;
	drv = load_quiet(&err);
	if (!drv) {
		fprintf(stderr, "child: %s\n", err.msg);
		_exit(2);
	}
	CUmemGenericAllocationHandle h;
	CUdeviceptr ptr;
	int fd;
	static unsigned char buf[SLAB];
	fill(buf, SLAB, seed);
	if (use_device(0) != CUDA_SUCCESS || create_slab(SLAB, &h) != CUDA_SUCCESS ||
	    map_slab(h, SLAB, CU_MEM_ACCESS_FLAGS_PROT_READWRITE, &ptr) != CUDA_SUCCESS)
		_exit(4);
	CHILD_OK(cuMemcpyHtoD, ptr, buf, SLAB);
	CHILD_OK(cuMemExportToShareableHandle, &fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
	send_fd(sock, fd);
	close(fd);
	if (release_all) {
		if (unmap_slab(ptr, SLAB) != CUDA_SUCCESS)
			_exit(5);
		CHILD_OK(cuMemRelease, h);
	} else {
		/* Keep everything until the importer says it is done. */
		char done;
		if (read(sock, &done, 1) != 1)
			_exit(6);
	}
	_exit(0);
}

/* The importer: import fd, map it read-only, and check the pattern seed. */
static void import_and_check(int fd, unsigned seed)
{
	CUmemGenericAllocationHandle h;
	CUdeviceptr ptr;
	static unsigned char buf[SLAB];
	cr_assert_geq(fd, 0, "no descriptor received");
	CU_OK(cuMemImportFromShareableHandle, &h, (void *)(uintptr_t)fd,
	      CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
	close(fd); /* the caller's descriptor stays the caller's */
	CUresult r = map_slab(h, SLAB, CU_MEM_ACCESS_FLAGS_PROT_READ, &ptr);
	cr_assert_eq(r, CUDA_SUCCESS, "map read-only: %s", words(r));
	CU_OK(cuMemcpyDtoH, buf, ptr, SLAB);
	cr_assert(has(buf, SLAB, seed), "the importer does not read what the exporter wrote");
	cr_assert_eq(unmap_slab(ptr, SLAB), CUDA_SUCCESS);
	CU_OK(cuMemRelease, h);
}

Test(cudrv, load_gives_driver_version_13000)
{
	load();
	cr_assert_eq(drv->version, 13000);
	cr_assert_str_eq(drv->path, LS_CUDA_DOUBLE_PATH);
}

Test(cudrv, missing_driver_file_is_no_device_naming_it)
{
	const char *missing = "/nonexistent/lorastore/libcuda-missing.so.1";
	setenv("LORASTORE_CUDA_DRIVER", missing, 1);
	struct ls_err err;
	ls_err_clear(&err);
	const struct ls_cudrv *d = (const void *)1;
	cr_assert_eq(ls_cudrv_load(&d, &err), LS_E_NO_DEVICE);
	cr_assert_null(d);
	cr_assert(strstr(err.msg, missing), "the message does not name the file: %s", err.msg);
}

Test(cudrv, no_device_is_no_device_naming_cuinit)
{
	setenv("LS_CUDA_DOUBLE_DEVICES", "0", 1);
	struct ls_err err;
	cr_assert_null(load_quiet(&err));
	cr_assert_eq(err.code, LS_E_NO_DEVICE, "code %d: %s", err.code, err.msg);
	cr_assert(strstr(err.msg, "cuInit"), "the message does not name cuInit: %s", err.msg);
	cr_assert(strstr(err.msg, "CUDA_ERROR_NO_DEVICE"), "%s", err.msg);
}

Test(cudrv, slab_round_trip_between_two_processes)
{
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(sv[1]);
		export_slab_child(sv[0], 7, false);
	}
	close(sv[0]);
	load();
	CU_OK(cuCtxSetCurrent, NULL);
	cr_assert_eq(use_device(0), CUDA_SUCCESS);
	import_and_check(recv_fd(sv[1]), 7);
	cr_assert_eq(write(sv[1], "d", 1), 1);
	wait_child_ok(pid);
	close(sv[1]);
}

Test(cudrv, write_into_read_only_mapping_faults_and_changes_nothing)
{
	static unsigned char a[SLAB], b[SLAB], out[SLAB];
	CUmemGenericAllocationHandle h;
	CUdeviceptr rw, ro;
	load();
	cr_assert_eq(use_device(0), CUDA_SUCCESS);
	cr_assert_eq(create_slab(SLAB, &h), CUDA_SUCCESS);
	cr_assert_eq(map_slab(h, SLAB, CU_MEM_ACCESS_FLAGS_PROT_READWRITE, &rw), CUDA_SUCCESS);
	cr_assert_eq(map_slab(h, SLAB, CU_MEM_ACCESS_FLAGS_PROT_READ, &ro), CUDA_SUCCESS);
	fill(a, SLAB, 1);
	fill(b, SLAB, 2);
	CU_OK(cuMemcpyHtoD, rw, a, SLAB);
	CUresult r = drv->cuMemcpyHtoD(ro + MiB, b, MiB);
	cr_assert_eq(r, CUDA_ERROR_ILLEGAL_ADDRESS, "a write into read-only memory gave %s",
		     words(r));
	CU_OK(cuMemcpyDtoH, out, ro, SLAB);
	cr_assert(has(out, SLAB, 1), "the refused copy changed the slab");
	cr_assert_eq(unmap_slab(ro, SLAB), CUDA_SUCCESS);
	cr_assert_eq(unmap_slab(rw, SLAB), CUDA_SUCCESS);
	CU_OK(cuMemRelease, h);
}

Test(cudrv, memory_outlives_the_exporters_release_and_exit)
{
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(sv[1]);
		export_slab_child(sv[0], 11, true);
	}
	close(sv[0]);
	/* The exporter has unmapped, released and exited before the import. */
	wait_child_ok(pid);
	load();
	cr_assert_eq(use_device(0), CUDA_SUCCESS);
	import_and_check(recv_fd(sv[1]), 11);
	close(sv[1]);
}

Test(cudrv, free_memory_returns_after_the_last_reference)
{
	size_t free0, free1, total;
	CUmemGenericAllocationHandle h, imported;
	CUdeviceptr ptr;
	int fd;
	load();
	cr_assert_eq(use_device(0), CUDA_SUCCESS);
	CU_OK(cuMemGetInfo, &free0, &total);
	cr_assert_eq(create_slab(SLAB, &h), CUDA_SUCCESS);
	CU_OK(cuMemGetInfo, &free1, &total);
	cr_assert_eq(free1, free0 - SLAB);
	/* An import of this process's own memory is the same memory, not more. */
	CU_OK(cuMemExportToShareableHandle, &fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
	CU_OK(cuMemImportFromShareableHandle, &imported, (void *)(uintptr_t)fd,
	      CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
	close(fd);
	CU_OK(cuMemGetInfo, &free1, &total);
	cr_assert_eq(free1, free0 - SLAB, "an import of its own memory counted it twice");
	CU_OK(cuMemRelease, h);
	cr_assert_eq(map_slab(imported, SLAB, CU_MEM_ACCESS_FLAGS_PROT_READ, &ptr), CUDA_SUCCESS);
	CU_OK(cuMemRelease, imported);
	CU_OK(cuMemGetInfo, &free1, &total);
	cr_assert_eq(free1, free0 - SLAB, "the mapping alone must keep the slab");
	cr_assert_eq(unmap_slab(ptr, SLAB), CUDA_SUCCESS);
	CU_OK(cuMemGetInfo, &free1, &total);
	cr_assert_eq(free1, free0, "the slab outlived its last reference");
}

Test(cudrv, out_of_memory_beyond_the_configured_capacity)
{
	CUmemGenericAllocationHandle a, b, c;
	size_t free_bytes, total;
	setenv("LS_CUDA_DOUBLE_MEMORY", "8388608", 1); /* 8 MiB */
	load();
	cr_assert_eq(use_device(0), CUDA_SUCCESS);
	CU_OK(cuMemGetInfo, &free_bytes, &total);
	cr_assert_eq(total, 8 * MiB);
	cr_assert_eq(create_slab(SLAB, &a), CUDA_SUCCESS);
	cr_assert_eq(create_slab(SLAB, &b), CUDA_SUCCESS);
	CUresult r = create_slab(2 * MiB, &c);
	cr_assert_eq(r, CUDA_ERROR_OUT_OF_MEMORY, "a full device gave %s", words(r));
	struct ls_err err;
	ls_err_clear(&err);
	cr_assert_eq(ls_cudrv_fail(drv, &err, r, "cuMemCreate", __FILE__, __LINE__), -ENOMEM);
	cr_assert(strstr(err.msg, "CUDA_ERROR_OUT_OF_MEMORY"), "%s", err.msg);
	CU_OK(cuMemRelease, a);
	cr_assert_eq(create_slab(2 * MiB, &c), CUDA_SUCCESS);
	CU_OK(cuMemRelease, b);
	CU_OK(cuMemRelease, c);
}

/* What the host function saw, on the stream's thread. */
struct seen {
	CUdeviceptr ptr;
	int calls;
	bool first_pattern; /* the copies before it had all landed, the one after had not */
	CUresult driver_call;
};

static void check_on_stream(void *arg)
{
	struct seen *s = arg;
	s->calls++;
	/*
	 * A device pointer is an address of this process in the double, so the
	 * function can read it (on a GPU it could not): what it sees is what
	 * the stream had done when the function ran.
	 */
	s->first_pattern = has((const unsigned char *)(uintptr_t)s->ptr, 8 * SLAB, 3);
}

Test(cudrv, async_copies_then_host_function_run_in_order)
{
	size_t len = 8 * SLAB;
	unsigned char *src = malloc(len), *again = malloc(SLAB), *out = malloc(len);
	cr_assert(src && again && out);
	fill(src, len, 3);
	fill(again, SLAB, 4);
	CUmemGenericAllocationHandle h;
	CUdeviceptr ptr;
	CUstream stream;
	load();
	cr_assert_eq(use_device(0), CUDA_SUCCESS);
	cr_assert_eq(create_slab(len, &h), CUDA_SUCCESS);
	cr_assert_eq(map_slab(h, len, CU_MEM_ACCESS_FLAGS_PROT_READWRITE, &ptr), CUDA_SUCCESS);
	/* Pinned sources, so the copies are truly asynchronous. */
	CU_OK(cuMemHostRegister, src, len, 0);
	CU_OK(cuMemHostRegister, again, SLAB, CU_MEMHOSTREGISTER_READ_ONLY);
	CU_OK(cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING);
	struct seen seen = { .ptr = ptr };
	for (size_t off = 0; off < len; off += SLAB)
		CU_OK(cuMemcpyHtoDAsync, ptr + off, src + off, SLAB, stream);
	CU_OK(cuLaunchHostFunc, stream, check_on_stream, &seen);
	CU_OK(cuMemcpyHtoDAsync, ptr, again, SLAB, stream);
	CU_OK(cuStreamSynchronize, stream);
	cr_assert_eq(seen.calls, 1);
	cr_assert(seen.first_pattern, "the host function ran out of order with the copies");
	CU_OK(cuMemcpyDtoH, out, ptr, len);
	cr_assert(has(out, SLAB, 4), "the copy queued after the host function did not land");
	cr_assert_eq(memcmp(out + SLAB, src + SLAB, len - SLAB), 0);
	CU_OK(cuStreamDestroy, stream);
	CU_OK(cuMemHostUnregister, src);
	CU_OK(cuMemHostUnregister, again);
	cr_assert_eq(unmap_slab(ptr, len), CUDA_SUCCESS);
	CU_OK(cuMemRelease, h);
	free(src);
	free(again);
	free(out);
}

/* Holds its stream until the test lets it go, or 5 s, so a bug fails rather than hangs. */
static void hold_stream(void *arg)
{
	for (int ms = 0; ms < 5000 && !atomic_load((atomic_bool *)arg); ms++)
		usleep(1000);
}

Test(cudrv, pinned_source_is_read_when_the_copy_runs)
{
	static unsigned char src[SLAB], out[SLAB];
	CUmemGenericAllocationHandle h;
	CUdeviceptr ptr;
	CUstream stream;
	atomic_bool go = false;
	load();
	cr_assert_eq(use_device(0), CUDA_SUCCESS);
	cr_assert_eq(create_slab(SLAB, &h), CUDA_SUCCESS);
	cr_assert_eq(map_slab(h, SLAB, CU_MEM_ACCESS_FLAGS_PROT_READWRITE, &ptr), CUDA_SUCCESS);
	CU_OK(cuMemHostRegister, src, SLAB, 0);
	CU_OK(cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING);
	fill(src, SLAB, 5);
	CU_OK(cuLaunchHostFunc, stream, hold_stream, &go);
	CU_OK(cuMemcpyHtoDAsync, ptr, src, SLAB, stream);
	/*
	 * Reusing a pinned staging buffer before its copy completed is a bug
	 * a GPU punishes with wrong data: the double must punish it too.
	 */
	fill(src, SLAB, 6);
	atomic_store(&go, true);
	CU_OK(cuStreamSynchronize, stream);
	CU_OK(cuMemcpyDtoH, out, ptr, SLAB);
	cr_assert(has(out, SLAB, 6), "the copy read its pinned source when it was queued");
	CU_OK(cuStreamDestroy, stream);
	CU_OK(cuMemHostUnregister, src);
	cr_assert_eq(unmap_slab(ptr, SLAB), CUDA_SUCCESS);
	CU_OK(cuMemRelease, h);
}

static void call_driver_on_stream(void *arg)
{
	CUcontext ctx;
	*(CUresult *)arg = drv->cuCtxGetCurrent(&ctx);
}

Test(cudrv, host_function_may_not_call_the_driver)
{
	CUstream stream;
	CUresult r = CUDA_SUCCESS;
	load();
	cr_assert_eq(use_device(0), CUDA_SUCCESS);
	CU_OK(cuStreamCreate, &stream, 0);
	CU_OK(cuLaunchHostFunc, stream, call_driver_on_stream, &r);
	CU_OK(cuStreamSynchronize, stream);
	cr_assert_eq(r, CUDA_ERROR_NOT_PERMITTED, "a driver call in a host function gave %s",
		     words(r));
	CU_OK(cuStreamDestroy, stream);
}

Test(cudrv, two_devices_have_different_uuids)
{
	int count;
	CUdevice d0, d1;
	CUuuid u0, u1;
	char s0[48], s1[48];
	setenv("LS_CUDA_DOUBLE_DEVICES", "2", 1);
	load();
	CU_OK(cuDeviceGetCount, &count);
	cr_assert_eq(count, 2);
	CU_OK(cuDeviceGet, &d0, 0);
	CU_OK(cuDeviceGet, &d1, 1);
	CU_OK(cuDeviceGetUuid, &u0, d0);
	CU_OK(cuDeviceGetUuid, &u1, d1);
	ls_cudrv_uuid_str(&u0, s0, sizeof(s0));
	ls_cudrv_uuid_str(&u1, s1, sizeof(s1));
	cr_assert_eq(strlen(s0), 40, "%s", s0);
	cr_assert_eq(strncmp(s0, "GPU-", 4), 0, "%s", s0);
	cr_assert_str_neq(s0, s1);
	CUresult r = drv->cuDeviceGet(&d0, 2);
	cr_assert_eq(r, CUDA_ERROR_INVALID_DEVICE, "ordinal 2 of 2 gave %s", words(r));
}

Test(cudrv, uuid_is_the_same_in_every_process)
{
	int pfd[2];
	char mine[48], theirs[48] = "";
	CUuuid u;
	cr_assert_eq(pipe(pfd), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct ls_err err;
		drv = load_quiet(&err);
		if (!drv || drv->cuDeviceGetUuid(&u, 0) != CUDA_SUCCESS)
			_exit(2);
		ls_cudrv_uuid_str(&u, mine, sizeof(mine));
		_exit(write(pfd[1], mine, sizeof(mine)) == (ssize_t)sizeof(mine) ? 0 : 3);
	}
	close(pfd[1]);
	wait_child_ok(pid);
	cr_assert_eq(read(pfd[0], theirs, sizeof(theirs)), (ssize_t)sizeof(theirs));
	close(pfd[0]);
	load();
	CU_OK(cuDeviceGetUuid, &u, 0);
	ls_cudrv_uuid_str(&u, mine, sizeof(mine));
	cr_assert_str_eq(mine, theirs);
}

Test(cudrv, call_counter_counts_calls_and_resets)
{
	load();
	/* The double's test API, from the copy ls_cudrv_load opened. */
	void *lib = dlopen(LS_CUDA_DOUBLE_PATH, RTLD_NOW | RTLD_NOLOAD);
	cr_assert_not_null(lib, "the double is not loaded: %s", dlerror());
	unsigned long long (*calls)(void) = (unsigned long long (*)(void))dlsym(lib,
										"ls_cuda_double_calls");
	void (*reset)(void) = (void (*)(void))dlsym(lib, "ls_cuda_double_reset_calls");
	cr_assert(calls && reset, "the double exports no test API");
	reset();
	cr_assert_eq(calls(), 0);
	CUcontext ctx;
	int n;
	CU_OK(cuCtxGetCurrent, &ctx);
	CU_OK(cuDeviceGetCount, &n);
	cr_assert_eq(drv->cuCtxGetDevice(&n), CUDA_ERROR_INVALID_CONTEXT);
	cr_assert_eq(calls(), 3, "three driver calls counted as %llu", calls());
	reset();
	cr_assert_eq(calls(), 0);
	dlclose(lib);
}

#endif
