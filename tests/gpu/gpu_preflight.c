/*
 * gpu_preflight: the facts lorastore's CUDA backend relies on, one "FACT
 * <key>: <value>" line each, in under 30 seconds.  It runs first on a
 * bare GPU machine (a VM or a gVisor sandbox), so it must not hang or crash,
 * and must say why a fact is missing.
 *
 * The parent never touches CUDA: the driver does not support fork() after
 * cuInit(), and the read-only check faults its context on purpose.  Each
 * CUDA check runs in children started by fork() and execv("/proc/self/exe",
 * "--role", ...), which start with a clean driver state; they talk over
 * socketpairs the parent made, and write to a memfd the parent reads once
 * they are done (or killed at their deadline).  The functional checks run
 * at the same time; then the timed one runs alone, so that no other
 * traffic skews it.  The parent prints each check's facts in a fixed
 * order, and a stand-in "unavailable (<why>)" for any fact that no child
 * printed.  libcuda.so.1 is opened with dlopen, so that the program runs
 * where there is no driver; <cuda.h> gives only types, constants, and the
 * functions' prototypes.  Last come whether memory shared as an fd
 * outlives its exporter (vmm_outlives_exporter,
 * vmm_import_after_exporter_exit) and the timed facts: vmm_slab_setup_ms,
 * host_register_ms, htod_pinned_memfd_gbps, htod_async_pinned_gbps,
 * htod_pageable_gbps, dtod_gbps.
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
 * Seconds one check may take: each child sets alarm() to it and the parent
 * sends SIGKILL a second later.  The checks of a round run at the same
 * time, so a round takes at most this plus one, plus GIVE_UP_S for a child
 * that even SIGKILL cannot end while it sits in the driver (the parent then
 * stops waiting for it); two rounds, 26 s in all.
 */
#define CHECK_TIMEOUT_S 10
#define GIVE_UP_S 2

#define HOST_REGISTER_BYTES ((size_t)64 << 20)
#define LEGACY_IPC_BYTES ((size_t)1 << 20)
/* The daemon's default device slab, and the size of every timed copy. */
#define SLAB_BYTES ((size_t)256 << 20)
#define TIMED_COPIES 5
/* How long an importer waits after the exporter is gone, for any deferred teardown. */
#define SETTLE_MS 200
/* What the read-only store writes at word 0; the pattern differs there. */
#define STORE_VALUE 0x5eedf00du

#define STR(x) #x
#define XSTR(x) STR(x)

/* ---- The driver, through dlsym ---- */

/*
 * Every entry point used, spelt as the API is.  cuda.h #defines many of
 * these names to their versioned exports (cuMemAlloc to cuMemAlloc_v2,
 * cuMemcpyHtoD to cuMemcpyHtoD_v2, cuMemcpyHtoDAsync to ..._v2,
 * cuStreamDestroy to ..._v2, cuIpcOpenMemHandle to ..._v2); the macro
 * renames the member, its __typeof__ and the string XSTR() makes alike, so
 * the symbol looked up is always the one whose prototype the header gives.
 */
#define CU_FUNCS(X)                                                                       \
	X(cuGetErrorName) X(cuGetErrorString) X(cuInit) X(cuDriverGetVersion)            \
	X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName) X(cuDeviceGetAttribute)    \
	X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent)      \
	X(cuCtxSynchronize) X(cuMemGetInfo) X(cuMemGetAllocationGranularity)             \
	X(cuMemCreate) X(cuMemRelease) X(cuMemExportToShareableHandle)                   \
	X(cuMemImportFromShareableHandle) X(cuMemAddressReserve) X(cuMemAddressFree)     \
	X(cuMemMap) X(cuMemUnmap) X(cuMemSetAccess) X(cuMemcpyHtoD) X(cuMemcpyDtoH)      \
	X(cuMemsetD32) X(cuMemAlloc) X(cuMemFree) X(cuIpcGetMemHandle)                   \
	X(cuIpcOpenMemHandle) X(cuIpcCloseMemHandle) X(cuMemHostRegister)               \
	X(cuMemHostUnregister) X(cuModuleLoadData) X(cuModuleGetFunction)                \
	X(cuModuleUnload) X(cuLaunchKernel) X(cuStreamCreate) X(cuStreamDestroy)         \
	X(cuStreamSynchronize) X(cuMemcpyHtoDAsync) X(cuMemcpyDtoD)

#define CU_MEMBER(fn) __typeof__(fn) *fn;
static struct {
	CU_FUNCS(CU_MEMBER)
	/* Resolved apart: the plain name is the fallback for older drivers. */
	__typeof__(cuDeviceGetUuid) *cuDeviceGetUuid;
} cu;

/* This process's last failure in words, for the fact that it spoils. */
static char g_why[768];
static const char *g_role = "parent"; /* for notes */
static int g_ordinal;                 /* the device checked (--device) */
static int g_device_count = -1;       /* once cuDeviceGetCount has answered */

static bool cu_note(CUresult r, const char *call)
{
	const char *name = NULL, *text = NULL;
	if (r == CUDA_SUCCESS)
		return true;
	if (cu.cuGetErrorName == NULL || cu.cuGetErrorName(r, &name) != CUDA_SUCCESS)
		name = "unknown CUresult";
	if (cu.cuGetErrorString == NULL || cu.cuGetErrorString(r, &text) != CUDA_SUCCESS)
		text = "no description";
	snprintf(g_why, sizeof g_why, "%s failed: %d %s (%s)", call, (int)r, name, text);
	return false;
}

/* Calls a driver entry point; false, with g_why set, when it fails. */
#define CU(fn, ...) cu_note(cu.fn(__VA_ARGS__), XSTR(fn))

/* A failed clean-up spoils no fact, but the parent shows it as a note. */
#define CU_TIDY(fn, ...)                                                   \
	do {                                                               \
		if (!CU(fn, __VA_ARGS__))                                  \
			printf("note (%s): %s\n", g_role, g_why);          \
	} while (0)

static bool gpu_dlopen(void)
{
	void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) {
		snprintf(g_why, sizeof g_why, "no NVIDIA driver: %s", dlerror());
		return false;
	}
#define CU_LOAD(fn)                                                                       \
	if ((cu.fn = (__typeof__(cu.fn))dlsym(lib, XSTR(fn))) == NULL) {                  \
		snprintf(g_why, sizeof g_why, "libcuda.so.1 does not export %s", XSTR(fn)); \
		return false;                                                             \
	}
	CU_FUNCS(CU_LOAD)
#undef CU_LOAD
	cu.cuDeviceGetUuid = (__typeof__(cu.cuDeviceGetUuid))dlsym(lib, XSTR(cuDeviceGetUuid));
	if (cu.cuDeviceGetUuid == NULL)
		cu.cuDeviceGetUuid = (__typeof__(cu.cuDeviceGetUuid))dlsym(lib, "cuDeviceGetUuid");
	if (cu.cuDeviceGetUuid == NULL)
		snprintf(g_why, sizeof g_why, "libcuda.so.1 exports no cuDeviceGetUuid");
	return cu.cuDeviceGetUuid != NULL;
}

/* Finds device g_ordinal and makes its primary context current. */
static bool gpu_attach(CUdevice *dev)
{
	CUcontext ctx;
	if (!CU(cuDeviceGetCount, &g_device_count))
		return false;
	if (g_ordinal >= g_device_count) {
		snprintf(g_why, sizeof g_why, "no CUDA device %d (cuDeviceGetCount found %d)",
			 g_ordinal, g_device_count);
		return false;
	}
	if (!CU(cuDeviceGet, dev, g_ordinal) || !CU(cuDevicePrimaryCtxRetain, &ctx, *dev) ||
	    !CU(cuCtxSetCurrent, ctx))
		return false;
	/* Whichever child gets here tells the parent that a driver and the device work. */
	printf("@gpu yes\n");
	fflush(stdout);
	return true;
}

/* ---- Small helpers ---- */

static int g_facts; /* FACT lines this process printed */

static void fact(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fact(const char *key, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("FACT %s: ", key);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	/* Flushed at once, so that a child that dies later loses nothing. */
	fflush(stdout);
	g_facts++;
}

/* A child that cannot reach the GPU leaves its facts to the parent, with this reason. */
static int child_unavailable(const char *why)
{
	printf("@unavailable %s\n", why);
	return 3;
}

/* CLOCK_MONOTONIC in nanoseconds, for the timed facts, and in milliseconds. */
static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t now_ms(void)
{
	return now_ns() / 1000000;
}

static int64_t g_start_ms;
/* The sockets the parent handed this child: to each peer, or to the first role. */
static int g_link[2] = {-1, -1};

/* How long a child may wait for a peer: its time, less two seconds to report in. */
static int child_ms_left(void)
{
	int64_t left = (int64_t)(CHECK_TIMEOUT_S - 2) * 1000 - (now_ms() - g_start_ms);
	return left > 0 ? (int)left : 0;
}

/* A pattern that no zero fill, stale page or stuck bit matches by chance. */
static uint32_t pattern_word(size_t i)
{
	uint32_t x = (uint32_t)i * 2654435761u ^ 0x6c6f7261u;
	x ^= x >> 15;
	x *= 0x2c1b3c6du;
	x ^= x >> 12;
	return i == 0 && x == STORE_VALUE ? ~x : x;
}

/* Fills w with the pattern, or (fill false) finds the first word that differs, or -1. */
static long pattern(uint32_t *w, size_t bytes, bool fill)
{
	for (size_t i = 0; i < bytes / 4; i++) {
		if (fill)
			w[i] = pattern_word(i);
		else if (w[i] != pattern_word(i))
			return (long)i;
	}
	return -1;
}

/*
 * Reads a mapping back: the first word unlike the pattern (its value in
 * *word), -1 when none is, or -2 with g_why set when the read failed.
 */
static long read_back(CUdeviceptr va, size_t size, uint32_t *word)
{
	uint32_t *host = calloc(1, size);
	long bad = -2;
	if (host == NULL)
		snprintf(g_why, sizeof g_why, "calloc(%zu) failed", size);
	else if (CU(cuMemcpyDtoH, host, va, size) && (bad = pattern(host, size, false)) >= 0)
		*word = host[bad];
	free(host);
	return bad;
}

/*
 * Sends fd over sock (SCM_RIGHTS) with the allocation's size as the body,
 * or, with fd < 0, receives them: the descriptor, or -1 when the peer
 * closed without sending one.
 */
static int pass_fd(int sock, int fd, uint64_t *size)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctrl;
	memset(&ctrl, 0, sizeof ctrl);
	struct iovec iov = {.iov_base = size, .iov_len = sizeof *size};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.buf,
			   .msg_controllen = sizeof ctrl.buf};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	if (fd >= 0) {
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
		return sendmsg(sock, &m, MSG_NOSIGNAL) == (ssize_t)sizeof *size ? fd : -1;
	}
	if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) != (ssize_t)sizeof *size ||
	    (c = CMSG_FIRSTHDR(&m)) == NULL || c->cmsg_type != SCM_RIGHTS)
		return -1;
	memcpy(&fd, CMSG_DATA(c), sizeof fd);
	return fd;
}

/* One byte from the peer, or 0 on EOF or when the wait runs out. */
static char wait_byte(int sock)
{
	struct pollfd p = {.fd = sock, .events = POLLIN};
	char c;
	if (poll(&p, 1, child_ms_left()) <= 0 || read(sock, &c, 1) != 1)
		return 0;
	return c;
}

/* Tells the peer a step is done; if it is gone, its own facts say so. */
static void send_byte(int sock, char c)
{
	if (send(sock, &c, 1, MSG_NOSIGNAL) != 1)
		printf("note (%s): telling the peer failed: %s\n", g_role, strerror(errno));
}

/* ---- Child "probe": driver, runtime and device ---- */

static void report_runtime(void)
{
	static const char *const names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
	char rt[512] = "";
	for (size_t i = 0; i < sizeof names / sizeof names[0] && rt[0] == '\0'; i++) {
		void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
		/* cudaError_t is an enum, so an int; the call needs no driver. */
		int (*get)(int *) = h != NULL ? (int (*)(int *))dlsym(h, "cudaRuntimeGetVersion") : NULL;
		int v = 0, r = get != NULL ? get(&v) : -1;
		if (h == NULL && i + 1 == sizeof names / sizeof names[0])
			snprintf(rt, sizeof rt, "no libcudart could be loaded (%s)", dlerror());
		else if (r == 0)
			snprintf(rt, sizeof rt, "%s reports %d.%d (raw %d)", names[i], v / 1000,
				 v % 1000 / 10, v);
		else if (h != NULL)
			snprintf(rt, sizeof rt, "%s loaded, but cudaRuntimeGetVersion %s %d",
				 names[i], get != NULL ? "returned" : "is missing", r);
	}
	fact("runtime", "%d.%d (raw %d) -- the cuda.h compiled against; %s", CUDA_VERSION / 1000,
	     CUDA_VERSION % 1000 / 10, CUDA_VERSION, rt);
}

static CUmemAllocationProp vmm_prop(CUdevice dev)
{
	CUmemAllocationProp prop;
	/* win32HandleMetaData and allocFlags must be zero on Linux. */
	memset(&prop, 0, sizeof prop);
	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
	prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop.location.id = dev;
	return prop;
}

static void report_attribute(const char *key, CUdevice_attribute a, CUdevice dev, const char *what)
{
	int v = 0;
	if (CU(cuDeviceGetAttribute, &v, a, dev))
		fact(key, "%s (attribute %d = %d) -- %s", v ? "yes" : "no", (int)a, v, what);
	else
		fact(key, "unavailable (%s)", g_why);
}

/* The probe opens the driver itself, step by step, to report each step. */
static int role_probe(void)
{
	char why[sizeof g_why];
	int ver = 0, major = 0, minor = 0;
	Dl_info info = {0};
	bool loaded = gpu_dlopen();
	bool inited = loaded && CU(cuInit, 0);
	snprintf(why, sizeof why, "%s", g_why);
	/* cuDriverGetVersion answers without cuInit: useful when cuInit fails. */
	bool have_ver = loaded && CU(cuDriverGetVersion, &ver);
	const char *lib = loaded && dladdr((void *)cu.cuInit, &info) && info.dli_fname != NULL
				  ? info.dli_fname : "libcuda.so.1";
	if (inited && have_ver)
		fact("driver", "%d.%d (raw %d) -- cuInit(0) succeeded; %s", ver / 1000,
		     ver % 1000 / 10, ver, lib);
	else if (have_ver)
		fact("driver", "unavailable (%s) -- %s is version %d.%d (raw %d)", why, lib,
		     ver / 1000, ver % 1000 / 10, ver);
	else
		fact("driver", "unavailable (%s)", inited ? g_why : why);
	report_runtime();
	if (!inited)
		return child_unavailable(why);

	CUdevice dev;
	if (!gpu_attach(&dev)) {
		if (g_device_count >= 0)
			fact("device", "%d -- %s", g_device_count, g_why);
		return child_unavailable(g_why);
	}
	char name[256];
	CUuuid u;
	size_t free_b = 0, total_b = 0;
	if (!CU(cuDeviceGetName, name, (int)sizeof name, dev) || !CU(cuDeviceGetUuid, &u, dev) ||
	    !CU(cuDeviceGetAttribute, &major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev) ||
	    !CU(cuDeviceGetAttribute, &minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev) ||
	    !CU(cuMemGetInfo, &free_b, &total_b)) {
		fact("device", "%d -- device %d: %s", g_device_count, g_ordinal, g_why);
	} else {
		const unsigned char *b = (const unsigned char *)u.bytes;
		fact("device", "%d -- device %d: %s, GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-"
		     "%02x%02x-%02x%02x%02x%02x%02x%02x, compute capability %d.%d, %zu B total, "
		     "%zu B free", g_device_count, g_ordinal, name, b[0], b[1], b[2], b[3], b[4],
		     b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15], major,
		     minor, total_b, free_b);
	}
	report_attribute("vmm_supported", CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
			 dev, "cuMemCreate, cuMemAddressReserve, cuMemMap");
	report_attribute("posix_fd_supported",
			 CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev,
			 "cuMemExportToShareableHandle to a POSIX fd");
	CUmemAllocationProp prop = vmm_prop(dev);
	size_t gmin = 0, grec = 0;
	if (CU(cuMemGetAllocationGranularity, &gmin, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) &&
	    CU(cuMemGetAllocationGranularity, &grec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
		fact("granularity", "%zu -- minimum %zu B, recommended %zu B, for pinned device "
		     "memory exportable as a POSIX fd", gmin, gmin, grec);
	else
		fact("granularity", "unavailable (%s)", g_why);
	CU_TIDY(cuDevicePrimaryCtxRelease, dev);
	return 0;
}

/* ---- Children "vmm-a", "vmm-b", "vmm-b2": an allocation shared as an fd ---- */

static CUmemAccessDesc vmm_access(CUdevice dev, CUmemAccess_flags flags)
{
	CUmemAccessDesc d;
	memset(&d, 0, sizeof d);
	d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	d.location.id = dev;
	d.flags = flags;
	return d;
}

/* Reserves an address range for the allocation, maps it there, and sets access. */
static bool vmm_map(CUmemGenericAllocationHandle h, size_t size, CUdevice dev,
		    CUmemAccess_flags flags, CUdeviceptr *va)
{
	CUmemAccessDesc d = vmm_access(dev, flags);
	return CU(cuMemAddressReserve, va, size, 0, 0, 0) && CU(cuMemMap, *va, size, 0, h, 0) &&
	       CU(cuMemSetAccess, *va, size, &d, 1);
}

static void vmm_unmap(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h)
{
	CU_TIDY(cuMemUnmap, va, size);
	CU_TIDY(cuMemAddressFree, va, size);
	CU_TIDY(cuMemRelease, h);
}

/* The exporter's half: one granule, mapped read-write, filled with the pattern, exported. */
static bool vmm_export_pattern(CUdevice dev, CUmemGenericAllocationHandle *h, CUdeviceptr *va,
			       uint64_t *size, int *fd)
{
	CUmemAllocationProp prop = vmm_prop(dev);
	uint32_t *host = NULL;
	bool ok = CU(cuMemGetAllocationGranularity, size, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
	if (ok && (host = malloc(*size)) == NULL) {
		snprintf(g_why, sizeof g_why, "malloc(%zu) failed", (size_t)*size);
		ok = false;
	}
	if (ok)
		pattern(host, *size, true);
	ok = ok && CU(cuMemCreate, h, *size, &prop, 0) &&
	     vmm_map(*h, *size, dev, CU_MEM_ACCESS_FLAGS_PROT_READWRITE, va) &&
	     CU(cuMemcpyHtoD, *va, host, *size) &&
	     CU(cuMemExportToShareableHandle, fd, *h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
	free(host);
	return ok;
}

/*
 * vmm-a, the exporter, in the daemon's place: one granule filled with the
 * pattern through its own mapping, exported as a POSIX fd, handed to vmm-b
 * and then to vmm-b2; at the end it reads its own mapping again, to see
 * whether vmm-b2's store through a read-only mapping changed anything.
 * On a failure a role returns at once: its process ends, and the driver
 * releases what it held.
 */
static int role_vmm_a(CUdevice dev)
{
	static const char *const later[] = {"vmm_read_only_access", "vmm_fd_read_only",
					    "vmm_read_only_write_faults",
					    "vmm_read_only_owner_unchanged"};
	CUmemGenericAllocationHandle h;
	CUdeviceptr va = 0;
	uint64_t size = 0;
	int fd = -1;
	long bad;
	uint32_t w = 0;
	if (!vmm_export_pattern(dev, &h, &va, &size, &fd)) {
		/* vmm-b and vmm-b2 see their socket close and leave every fact to this one. */
		fact("vmm_fd_cross_process", "no -- in the exporting process: %s", g_why);
		for (size_t i = 0; i < sizeof later / sizeof later[0]; i++)
			fact(later[i], "unavailable (nothing exported: %s)", g_why);
		return 0;
	}
	if (pass_fd(g_link[0], fd, &size) >= 0)
		wait_byte(g_link[0]);
	char b2 = pass_fd(g_link[1], fd, &size) >= 0 ? wait_byte(g_link[1]) : 0;

	if (b2 == 'r')
		fact("vmm_read_only_owner_unchanged", "unavailable (vmm-b2 attempted no store)");
	else if ((bad = read_back(va, size, &w)) == -2)
		fact("vmm_read_only_owner_unchanged", "unavailable (%s)", g_why);
	else if (bad < 0)
		fact("vmm_read_only_owner_unchanged", "yes -- the exporter reads its pattern intact%s",
		     b2 == 'w' ? " after vmm-b2's store through a read-only mapping"
			       : "; vmm-b2 did not report (it may have died before its store)");
	else
		fact("vmm_read_only_owner_unchanged", "no -- word %ld is now 0x%08x (the store "
		     "writes 0x%08x at word 0)", bad, w, STORE_VALUE);
	close(fd);
	vmm_unmap(va, size, h);
	return 0;
}

/* Imports fd, closes it, and maps the allocation with the access given. */
static bool vmm_import_fd(int fd, CUdevice dev, CUmemAccess_flags flags,
			  CUmemGenericAllocationHandle *h, CUdeviceptr *va, uint64_t size)
{
	/* The fd travels in the pointer argument itself, as an integer. */
	bool ok = CU(cuMemImportFromShareableHandle, h, (void *)(uintptr_t)fd,
		     CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) && vmm_map(*h, size, dev, flags, va);
	close(fd);
	return ok;
}

/*
 * Imports the fd vmm-a sends and maps it with the access given; *got_fd is
 * false when vmm-a sent none, having failed and said why itself.
 */
static bool vmm_import(CUdevice dev, CUmemAccess_flags flags, CUmemGenericAllocationHandle *h,
		       CUdeviceptr *va, uint64_t *size, bool *got_fd)
{
	int fd = pass_fd(g_link[0], -1, size);
	if (!(*got_fd = fd >= 0))
		return false;
	return vmm_import_fd(fd, dev, flags, h, va, *size);
}

/* vmm-b, a client: imports, maps read-write, and reads the pattern back. */
static int role_vmm_b(CUdevice dev)
{
	CUmemGenericAllocationHandle h;
	CUdeviceptr va = 0;
	uint64_t size = 0;
	uint32_t w = 0;
	bool got_fd;
	bool ok = vmm_import(dev, CU_MEM_ACCESS_FLAGS_PROT_READWRITE, &h, &va, &size, &got_fd);
	if (!got_fd)
		return 0;
	long bad = ok ? read_back(va, size, &w) : -2;
	if (bad == -2)
		fact("vmm_fd_cross_process", "no -- in the importing process: %s", g_why);
	else if (bad >= 0)
		fact("vmm_fd_cross_process", "no -- imported and mapped, but word %ld reads 0x%08x, "
		     "not 0x%08x", bad, w, pattern_word((size_t)bad));
	else
		fact("vmm_fd_cross_process", "yes -- a %zu B cuMemCreate allocation, exported as a "
		     "POSIX fd and passed with SCM_RIGHTS, was imported, mapped read-write and read "
		     "back intact in another process", (size_t)size);
	if (ok)
		vmm_unmap(va, size, h);
	send_byte(g_link[0], 'y');
	return 0;
}

/* The store of the read-only check, as PTX that the driver compiles for any device. */
static const char ro_store_ptx[] =
	".version 7.0\n"
	".target sm_50\n"
	".address_size 64\n"
	".visible .entry ro_store(.param .u64 p, .param .u32 v)\n"
	"{\n"
	"\t.reg .b32 %r<2>;\n"
	"\t.reg .b64 %rd<3>;\n"
	"\tld.param.u64 %rd1, [p];\n"
	"\tld.param.u32 %r1, [v];\n"
	"\tcvta.to.global.u64 %rd2, %rd1;\n"
	"\tst.global.u32 [%rd2], %r1;\n"
	"\tret;\n"
	"}\n";

/*
 * vmm-b2, a client given read-only access, which then stores through it.
 * The store may fault, and a faulted context is unusable for the rest of
 * the process, which is why this is a process of its own.  It tells vmm-a
 * 'w' once the store has run or faulted, 'r' when it attempted none.
 */
static int role_vmm_b2(CUdevice dev)
{
	static const char *const ro_keys[] = {"vmm_read_only_access", "vmm_fd_read_only",
					      "vmm_read_only_write_faults"};
	CUmemGenericAllocationHandle h;
	CUdeviceptr va = 0;
	uint64_t size = 0;
	bool got_fd;
	long bad;
	if (!vmm_import(dev, CU_MEM_ACCESS_FLAGS_PROT_READ, &h, &va, &size, &got_fd)) {
		if (!got_fd)
			return 0;
		/* A refused cuMemSetAccess answers "no"; a failure before it answers nothing. */
		bool refused = strncmp(g_why, XSTR(cuMemSetAccess) " failed",
				       strlen(XSTR(cuMemSetAccess) " failed")) == 0;
		fact(ro_keys[0], refused ? "no -- %s" : "unavailable (%s)", g_why);
		fact(ro_keys[1], refused ? "no -- no read-only mapping: %s" : "unavailable (%s)", g_why);
		fact(ro_keys[2], "unavailable (no read-only mapping: %s)", g_why);
		send_byte(g_link[0], 'r');
		return 0;
	}
	fact(ro_keys[0], "yes -- cuMemSetAccess(CU_MEM_ACCESS_FLAGS_PROT_READ) accepted on an "
	     "imported allocation");
	uint32_t *host = calloc(1, size);
	if (host == NULL)
		fact(ro_keys[1], "unavailable (calloc(%zu) failed)", (size_t)size);
	else if (!CU(cuMemcpyDtoH, host, va, size))
		fact(ro_keys[1], "no -- %s", g_why);
	else if ((bad = pattern(host, size, false)) >= 0)
		fact(ro_keys[1], "no -- word %ld differs from the pattern", bad);
	else
		fact(ro_keys[1], "yes -- the pattern reads back intact through a read-only mapping "
		     "in another process");
	free(host);

	CUmodule mod;
	CUfunction fn;
	CUdeviceptr p = va;
	unsigned int v = STORE_VALUE;
	uint32_t w0 = 0;
	void *params[] = {&p, &v};
	if (!CU(cuModuleLoadData, &mod, ro_store_ptx) ||
	    !CU(cuModuleGetFunction, &fn, mod, "ro_store") ||
	    !CU(cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL)) {
		fact(ro_keys[2], "unavailable (%s)", g_why);
		send_byte(g_link[0], 'r');
		return 0;
	}
	CUresult r = cu.cuCtxSynchronize();
	cu_note(r, XSTR(cuCtxSynchronize));
	if (r == CUDA_ERROR_ILLEGAL_ADDRESS)
		fact(ro_keys[2], "yes -- the store faulted: %s", g_why);
	else if (r != CUDA_SUCCESS)
		fact(ro_keys[2], "yes -- the store failed, though not with "
		     "CUDA_ERROR_ILLEGAL_ADDRESS: %s", g_why);
	else if (!CU(cuMemcpyDtoH, &w0, va, sizeof w0))
		fact(ro_keys[2], "no -- the store completed without an error; reading it back: %s",
		     g_why);
	else
		fact(ro_keys[2], "no -- the store completed without an error, and word 0 reads "
		     "0x%08x (%s)", w0, w0 == STORE_VALUE ? "it went through" : "it was dropped");
	send_byte(g_link[0], 'w');
	/* After a fault the context is gone; the process ends without tidying. */
	if (r == CUDA_SUCCESS) {
		CU_TIDY(cuModuleUnload, mod);
		vmm_unmap(va, size, h);
	}
	return 0;
}

/* ---- Children "ipc-c", "ipc-d": legacy CUDA IPC ---- */

/*
 * The runtime's cudaIpcGetMemHandle and cudaIpcOpenMemHandle are this same
 * mechanism over the driver calls used here, so this answers for both.
 * ipc-c allocates, fills and exports; ipc-d opens the handle, reads the
 * pattern back and says when it is done, so that ipc-c frees nothing that
 * ipc-d still uses.
 */
struct ipc_msg {
	CUipcMemHandle handle; /* CU_IPC_HANDLE_SIZE (64) bytes */
	uint64_t size;
};

static int role_ipc_c(CUdevice dev)
{
	(void)dev; /* the context is current; cuMemAlloc needs no more */
	struct ipc_msg m = {.size = LEGACY_IPC_BYTES};
	CUdeviceptr d = 0;
	uint32_t *host = malloc(m.size);
	if (host == NULL) {
		fact("legacy_ipc", "unavailable (malloc failed)");
		return 0;
	}
	pattern(host, m.size, true);
	if (!CU(cuMemAlloc, &d, m.size) || !CU(cuMemcpyHtoD, d, host, m.size) ||
	    !CU(cuIpcGetMemHandle, &m.handle, d)) {
		fact("legacy_ipc", "no -- in the exporting process: %s", g_why);
		return 0;
	}
	if (send(g_link[0], &m, sizeof m, MSG_NOSIGNAL) == (ssize_t)sizeof m)
		wait_byte(g_link[0]);
	else
		printf("note (%s): sending the handle failed: %s\n", g_role, strerror(errno));
	CU_TIDY(cuMemFree, d);
	free(host);
	return 0;
}

static int role_ipc_d(CUdevice dev)
{
	(void)dev;
	struct ipc_msg m;
	CUdeviceptr d = 0;
	long bad;
	if (recv(g_link[0], &m, sizeof m, MSG_WAITALL) != (ssize_t)sizeof m)
		return 0; /* ipc-c failed and said why */
	uint32_t *host = calloc(1, m.size);
	if (host == NULL) {
		fact("legacy_ipc", "unavailable (calloc failed)");
	} else if (!CU(cuIpcOpenMemHandle, &d, m.handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) ||
		   !CU(cuMemcpyDtoH, host, d, m.size)) {
		fact("legacy_ipc", "no -- in the importing process: %s", g_why);
	} else {
		if ((bad = pattern(host, m.size, false)) < 0)
			fact("legacy_ipc", "yes -- a %zu B cuMemAlloc buffer, opened with "
			     "cuIpcOpenMemHandle in another process, read back intact", (size_t)m.size);
		else
			fact("legacy_ipc", "no -- opened, but word %ld differs from the pattern", bad);
		CU_TIDY(cuIpcCloseMemHandle, d);
	}
	send_byte(g_link[0], 'd');
	free(host);
	return 0;
}

/* ---- Child "host-register": memfd pages registered with the driver ---- */

/* Registers p with flags, copies from it to d and back, and says how that went. */
static void register_and_copy(const char *key, void *p, unsigned int flags, const char *what,
			      CUdeviceptr d, uint32_t *back)
{
	const size_t size = HOST_REGISTER_BYTES;
	long bad = -1;
	if (!CU(cuMemHostRegister, p, size, flags)) {
		fact(key, "no -- %s: %s", what, g_why);
		return;
	}
	/* The device copy is cleared first, so that a copy that did nothing cannot pass. */
	if (!CU(cuMemsetD32, d, 0, size / 4) || !CU(cuMemcpyHtoD, d, p, size) ||
	    !CU(cuMemcpyDtoH, back, d, size))
		fact(key, "no -- %s: registered, but %s", what, g_why);
	else if ((bad = pattern(back, size, false)) >= 0)
		fact(key, "no -- %s: registered, but the copy came back wrong at word %ld", what, bad);
	else
		fact(key, "yes -- %s: registered, and a copy from it came back intact", what);
	CU_TIDY(cuMemHostUnregister, p);
}

static int role_host_register(CUdevice dev)
{
	const size_t size = HOST_REGISTER_BYTES;
	int fd = memfd_create("lorastore-preflight", MFD_CLOEXEC);
	void *rw = MAP_FAILED, *ro = MAP_FAILED;
	uint32_t *back = malloc(size);
	CUdeviceptr d = 0;
	if (fd < 0 || ftruncate(fd, (off_t)size) != 0 || back == NULL ||
	    (rw = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED ||
	    (ro = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0)) == MAP_FAILED) {
		snprintf(g_why, sizeof g_why, "memfd, mmap or malloc: %s", strerror(errno));
		return child_unavailable(g_why);
	}
	if (!CU(cuMemAlloc, &d, size))
		return child_unavailable(g_why);
	pattern(rw, size, true);
	/* One registration at a time, so that the read-only one stands alone. */
	register_and_copy("host_register_memfd", rw, CU_MEMHOSTREGISTER_PORTABLE,
			  "a 64 MiB read-write MAP_SHARED memfd mapping, PORTABLE", d, back);
	report_attribute("host_register_read_only_supported",
			 CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED, dev,
			 "CU_MEMHOSTREGISTER_READ_ONLY (tried below whatever this says)");
	register_and_copy("host_register_read_only", ro, CU_MEMHOSTREGISTER_READ_ONLY,
			  "a PROT_READ mapping of the same memfd, READ_ONLY", d, back);
	CU_TIDY(cuMemFree, d);
	munmap(rw, size);
	munmap(ro, size);
	close(fd);
	free(back);
	return 0;
}

/* ---- Children "outlive-a", "outlive-b", "outlive-c": after the exporter is gone ---- */

/*
 * What a daemon that frees a slab, or dies, leaves its clients.  outlive-a
 * exports one granule and sends the fd, then its pid, to outlive-b and
 * outlive-c.  outlive-b imports and reads it, and says so; outlive-a then
 * unmaps, frees the range, releases the handle, closes its fd, says 'r' to
 * both ('x' when one of those failed) and exits.  Only once it is gone
 * does outlive-b read again, and outlive-c import, map and read.
 */
static int role_outlive_a(CUdevice dev)
{
	static const char *const keys[] = {"vmm_outlives_exporter",
					   "vmm_import_after_exporter_exit"};
	CUmemGenericAllocationHandle h;
	CUdeviceptr va = 0;
	uint64_t size = 0;
	int fd = -1;
	int32_t pid = (int32_t)getpid();
	if (!vmm_export_pattern(dev, &h, &va, &size, &fd)) {
		/* outlive-b and outlive-c see their sockets close and leave the facts to this. */
		for (int i = 0; i < 2; i++)
			fact(keys[i], "unavailable (nothing exported: %s)", g_why);
		return 0;
	}
	for (int i = 0; i < 2; i++)
		if (pass_fd(g_link[i], fd, &size) < 0 ||
		    send(g_link[i], &pid, sizeof pid, MSG_NOSIGNAL) != (ssize_t)sizeof pid)
			printf("note (%s): sending the fd failed: %s\n", g_role, strerror(errno));
	char b = wait_byte(g_link[0]); /* 'y': outlive-b has read the pattern, and waits */
	bool ok = CU(cuMemUnmap, va, size) && CU(cuMemAddressFree, va, size) && CU(cuMemRelease, h);
	if (ok && close(fd) != 0) {
		snprintf(g_why, sizeof g_why, "close of the exported fd: %s", strerror(errno));
		ok = false;
	}
	for (int i = 0; !ok && i < 2; i++)
		fact(keys[i], "unavailable (the exporter could not let go: %s)", g_why);
	for (int i = b == 'y' ? 0 : 1; i < 2; i++)
		send_byte(g_link[i], ok ? 'r' : 'x');
	/* Gone at once, with nothing left to tidy at exit: that is what is checked. */
	fflush(stdout);
	_exit(0);
}

/*
 * Waits until outlive-a has let go and exited: its 'r', then its pid gone
 * (the parent reaped it, so every file it held is closed), then SETTLE_MS
 * for any teardown the driver defers.  False when it did not, with g_why
 * set, or empty when outlive-a has said why.
 */
static bool await_exporter_exit(int sock, pid_t a)
{
	char c = wait_byte(sock);
	g_why[0] = '\0';
	if (c != 'r' && c != 'x')
		snprintf(g_why, sizeof g_why, "the exporter ended or timed out without saying "
			 "that it had let go");
	if (c != 'r')
		return false;
	while ((kill(a, 0) == 0 || errno != ESRCH) && child_ms_left() > 0)
		nanosleep(&(struct timespec){.tv_nsec = 5 * 1000000}, NULL);
	if (kill(a, 0) == 0 || errno != ESRCH) {
		snprintf(g_why, sizeof g_why, "the exporter, pid %d, had not exited in time", a);
		return false;
	}
	nanosleep(&(struct timespec){.tv_nsec = SETTLE_MS * 1000000L}, NULL);
	return true;
}

/*
 * outlive-b imports, maps read-only and reads while the exporter lives,
 * and reads again once it has exited; outlive-c holds the fd unimported
 * until then, and only then imports, maps read-only and reads.
 */
static int role_outlive_client(CUdevice dev)
{
	const bool early = strcmp(g_role, "outlive-b") == 0;
	const char *key = early ? "vmm_outlives_exporter" : "vmm_import_after_exporter_exit";
	CUmemGenericAllocationHandle h;
	CUdeviceptr va = 0;
	uint64_t size = 0;
	uint32_t w = 0;
	int32_t a = 0;
	long bad = -1;
	int fd = pass_fd(g_link[0], -1, &size);
	if (fd < 0)
		return 0; /* the exporter failed, and said why */
	bool ok = recv(g_link[0], &a, sizeof a, MSG_WAITALL) == (ssize_t)sizeof a && a > 0;
	if (!ok)
		snprintf(g_why, sizeof g_why, "the exporter sent no pid");
	if (early) {
		ok = ok && vmm_import_fd(fd, dev, CU_MEM_ACCESS_FLAGS_PROT_READ, &h, &va, size);
		if (ok && (bad = read_back(va, size, &w)) >= 0)
			snprintf(g_why, sizeof g_why, "word %ld reads 0x%08x, not 0x%08x", bad, w,
				 pattern_word((size_t)bad));
		ok = ok && bad == -1;
		send_byte(g_link[0], ok ? 'y' : 'n');
	}
	if (!ok || !await_exporter_exit(g_link[0], a)) {
		if (g_why[0] != '\0')
			fact(key, "unavailable (%s: %s)", ok ? "waiting" : "before the exporter "
			     "let go", g_why);
		return 0;
	}
	if (!early && !vmm_import_fd(fd, dev, CU_MEM_ACCESS_FLAGS_PROT_READ, &h, &va, size))
		bad = -3;
	else
		bad = read_back(va, size, &w);
	if (bad < -1)
		fact(key, "no -- after the exporter exited: %s", g_why);
	else if (bad >= 0)
		fact(key, "no -- after the exporter exited, word %ld reads 0x%08x, not 0x%08x", bad,
		     w, pattern_word((size_t)bad));
	else
		fact(key, "yes -- a %zu B allocation whose fd came while the exporter lived, %s, "
		     "read back intact once the exporter had unmapped it, freed the range, "
		     "released its handle, closed its fd and exited", (size_t)size,
		     early ? "imported and mapped read-only then" : "imported and mapped "
		     "read-only only after that");
	if (bad > -2)
		vmm_unmap(va, size, h);
	return 0;
}

/* ---- Child "copy-bandwidth": copies and setup costs, timed, alone on the device ---- */

/* Stores the milliseconds since *t in *ms and restarts *t; true, to sit in a chain of calls. */
static bool lap(int64_t *t, double *ms)
{
	int64_t now = now_ns();
	*ms = (double)(now - *t) / 1e6;
	*t = now;
	return true;
}

/* A slab as the daemon makes it, exported once (the fd closed here); each call's ms in ms[]. */
static bool slab_create(CUdevice dev, CUmemGenericAllocationHandle *h, CUdeviceptr *va,
			double ms[5])
{
	CUmemAllocationProp prop = vmm_prop(dev);
	CUmemAccessDesc d = vmm_access(dev, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
	int fd = -1;
	int64_t t = now_ns();
	bool ok = CU(cuMemCreate, h, SLAB_BYTES, &prop, 0) && lap(&t, &ms[0]) &&
		  CU(cuMemAddressReserve, va, SLAB_BYTES, 0, 0, 0) && lap(&t, &ms[1]) &&
		  CU(cuMemMap, *va, SLAB_BYTES, 0, *h, 0) && lap(&t, &ms[2]) &&
		  CU(cuMemSetAccess, *va, SLAB_BYTES, &d, 1) && lap(&t, &ms[3]) &&
		  CU(cuMemExportToShareableHandle, &fd, *h,
		     CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0) && lap(&t, &ms[4]);
	if (fd >= 0)
		close(fd);
	return ok;
}

/*
 * Copies SLAB_BYTES to dst from host (on stream, if any) or else from the
 * slab at src, once to warm up and TIMED_COPIES times timed, each waited
 * for (cuMemcpyDtoD, and cuMemcpyHtoD from pageable memory, may return
 * before the copy is done).  dst is cleared first and its last 4 KiB
 * checked after, so that a copy that did nothing reports no rate.
 */
static void report_copy(const char *key, CUdeviceptr dst, const void *host, CUdeviceptr src,
			CUstream stream, double moved, const char *what)
{
	double gbps[TIMED_COPIES];
	uint32_t tail[1024];
	const size_t first = (SLAB_BYTES - sizeof tail) / 4, n = sizeof tail / 4; /* tail's words */
	size_t i = 0;
	bool ok = CU(cuMemsetD32, dst, 0, SLAB_BYTES / 4) && CU(cuCtxSynchronize);
	for (int k = -1; ok && k < TIMED_COPIES; k++) {
		int64_t t = now_ns();
		if (host == NULL)
			ok = CU(cuMemcpyDtoD, dst, src, SLAB_BYTES) && CU(cuCtxSynchronize);
		else if (stream != NULL)
			ok = CU(cuMemcpyHtoDAsync, dst, host, SLAB_BYTES, stream) &&
			     CU(cuStreamSynchronize, stream);
		else
			ok = CU(cuMemcpyHtoD, dst, host, SLAB_BYTES) && CU(cuCtxSynchronize);
		double rate = moved / (double)(now_ns() - t); /* bytes per ns is 10^9 B/s */
		/* Kept sorted as it goes, for the median; k = -1 is the warm-up. */
		int j = k;
		for (; j > 0 && gbps[j - 1] > rate; j--)
			gbps[j] = gbps[j - 1];
		if (k >= 0)
			gbps[j] = rate;
	}
	ok = ok && CU(cuMemcpyDtoH, tail, dst + SLAB_BYTES - sizeof tail, sizeof tail);
	while (ok && i < n && tail[i] == pattern_word(first + i))
		i++;
	if (!ok)
		fact(key, "unavailable (%s)", g_why);
	else if (i < n)
		fact(key, "unavailable (the copy did not land: word %zu reads 0x%08x, not 0x%08x)",
		     first + i, tail[i], pattern_word(first + i));
	else
		fact(key, "%.1f -- %s; the median of %d copies of %zu B after one warm-up (min "
		     "%.1f, max %.1f), each timed with CLOCK_MONOTONIC around the copy and its "
		     "synchronize; GB/s = 10^9 B/s", gbps[TIMED_COPIES / 2], what, TIMED_COPIES,
		     SLAB_BYTES, gbps[0], gbps[TIMED_COPIES - 1]);
}

/*
 * The daemon's upload path, priced: a host slab (a memfd mapping) pinned,
 * device slabs made, copies from pinned and pageable memory and between
 * slabs.  It runs alone, so that no other check's traffic is timed.
 */
static int role_copy_bandwidth(CUdevice dev)
{
	static const char *const gbps_keys[] = {"htod_pinned_memfd_gbps", "htod_async_pinned_gbps",
						"htod_pageable_gbps", "dtod_gbps"};
	CUmemGenericAllocationHandle h[2];
	CUdeviceptr va[2] = {0, 0};
	double ms[2][5], reg = 0, unreg = 0;
	CUstream stream = NULL;
	int fd = memfd_create("lorastore-preflight-slab", MFD_CLOEXEC);
	void *pinned = MAP_FAILED, *pageable = malloc(SLAB_BYTES);
	if (fd < 0 || ftruncate(fd, (off_t)SLAB_BYTES) != 0 || pageable == NULL ||
	    (pinned = mmap(NULL, SLAB_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) ==
		    MAP_FAILED) {
		snprintf(g_why, sizeof g_why, "memfd, mmap or malloc of 256 MiB: %s",
			 strerror(errno));
		return child_unavailable(g_why);
	}
	/* Every page of both sources written: no zero page, no first touch in a timed copy. */
	pattern(pinned, SLAB_BYTES, true);
	memcpy(pageable, pinned, SLAB_BYTES);

	int64_t t = now_ns();
	if (CU(cuMemHostRegister, pinned, SLAB_BYTES, CU_MEMHOSTREGISTER_PORTABLE) &&
	    lap(&t, &reg) && CU(cuMemHostUnregister, pinned) && lap(&t, &unreg))
		fact("host_register_ms", "%.3f -- cuMemHostRegister(PORTABLE) of a 256 MiB "
		     "MAP_SHARED memfd mapping, every page written; cuMemHostUnregister %.3f ms",
		     reg, unreg);
	else
		fact("host_register_ms", "unavailable (%s)", g_why);

	if (!slab_create(dev, &h[0], &va[0], ms[0]) || !slab_create(dev, &h[1], &va[1], ms[1])) {
		fact("vmm_slab_setup_ms", "unavailable (%s)", g_why);
		for (int i = 0; i < 4; i++)
			fact(gbps_keys[i], "unavailable (no 256 MiB slab: %s)", g_why);
		return 0;
	}
	fact("vmm_slab_setup_ms", "%.3f -- a 256 MiB slab: cuMemCreate %.3f + cuMemAddressReserve "
	     "%.3f + cuMemMap %.3f + cuMemSetAccess(READWRITE) %.3f ms; then "
	     "cuMemExportToShareableHandle (POSIX fd) %.3f ms; a second slab: %.3f ms, export "
	     "%.3f ms", ms[0][0] + ms[0][1] + ms[0][2] + ms[0][3], ms[0][0], ms[0][1], ms[0][2],
	     ms[0][3], ms[0][4], ms[1][0] + ms[1][1] + ms[1][2] + ms[1][3], ms[1][4]);

	bool pin = CU(cuMemHostRegister, pinned, SLAB_BYTES, CU_MEMHOSTREGISTER_PORTABLE);
	for (int i = 0; !pin && i < 2; i++)
		fact(gbps_keys[i], "unavailable (%s)", g_why);
	if (pin) {
		report_copy(gbps_keys[0], va[0], pinned, 0, NULL, SLAB_BYTES, "cuMemcpyHtoD from a "
			    "256 MiB memfd mapping registered PORTABLE into a slab");
		if (CU(cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING)) {
			report_copy(gbps_keys[1], va[0], pinned, 0, stream, SLAB_BYTES,
				    "cuMemcpyHtoDAsync of the same, on a CU_STREAM_NON_BLOCKING "
				    "stream, waited with cuStreamSynchronize");
			CU_TIDY(cuStreamDestroy, stream);
		} else {
			fact(gbps_keys[1], "unavailable (%s)", g_why);
		}
		CU_TIDY(cuMemHostUnregister, pinned);
	}
	report_copy(gbps_keys[2], va[0], pageable, 0, NULL, SLAB_BYTES, "cuMemcpyHtoD from a "
		    "malloc'd 256 MiB buffer, not registered (pageable), into a slab");
	/* The source slab is filled here, whatever became of the copies above. */
	if (CU(cuMemcpyHtoD, va[0], pageable, SLAB_BYTES))
		report_copy(gbps_keys[3], va[1], NULL, va[0], NULL, 2.0 * SLAB_BYTES,
			    "cuMemcpyDtoD from one slab to another, counting the bytes read and "
			    "the bytes written (2 x 256 MiB a copy)");
	else
		fact(gbps_keys[3], "unavailable (filling the source slab: %s)", g_why);
	for (int i = 0; i < 2; i++)
		vmm_unmap(va[i], SLAB_BYTES, h[i]);
	munmap(pinned, SLAB_BYTES);
	close(fd);
	free(pageable);
	return 0;
}

/* ---- Parent: the facts that need no GPU ---- */

static void report_kernel(void)
{
	struct utsname u;
	if (uname(&u) != 0)
		fact("kernel", "unavailable (uname: %s)", strerror(errno));
	else
		fact("kernel", "%s -- %s %s, %s", u.release, u.sysname, u.machine, u.version);
}

/* An errno's name, and what it usually means from io_uring_setup. */
static const char *errno_hint(int e, const char **hint)
{
	*hint = e == EPERM    ? "; a seccomp profile or kernel.io_uring_disabled forbids it"
		: e == ENOSYS ? "; no io_uring_setup: gVisor without io_uring, or a kernel "
				"built without it"
		: e == EINVAL ? "; the kernel rejects the ring parameters (too old?)"
		: e == ENOMEM ? "; no memory for the rings (before Linux 5.12 they count "
				"against RLIMIT_MEMLOCK)"
			      : "";
	const char *n = strerrorname_np(e);
	return n != NULL ? n : "unknown errno";
}

static void report_io_uring(void)
{
#define OP(name) {IORING_OP_##name, #name}
	static const struct {
		int op;
		const char *name;
	} ops[] = {OP(ACCEPT),   OP(RECVMSG), OP(SENDMSG),     OP(READ),
		   OP(POLL_ADD), OP(TIMEOUT), OP(ASYNC_CANCEL)};
#undef OP
	const uint64_t tag = 0x6c6f7261u;
	char disabled[64] = "", have[128] = "", missing[128] = "";
	const char *hint;
	int v;
	FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
	if (f != NULL) {
		if (fscanf(f, "%d", &v) == 1)
			snprintf(disabled, sizeof disabled, "; kernel.io_uring_disabled = %d", v);
		fclose(f);
	}
	struct io_uring ring;
	int r = io_uring_queue_init(8, &ring, 0);
	if (r < 0) {
		const char *name = errno_hint(-r, &hint);
		fact("io_uring", "no -- io_uring_queue_init: %s (%s)%s%s", name, strerror(-r), hint,
		     disabled);
		fact("io_uring_opcodes", "unavailable (io_uring does not work here)");
		return;
	}
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	struct io_uring_cqe *cqe = NULL;
	struct __kernel_timespec ts = {.tv_sec = 1};
	io_uring_prep_nop(sqe);
	sqe->user_data = tag;
	r = io_uring_submit(&ring);
	if (r == 1)
		r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
	else if (r >= 0)
		r = -EIO; /* nothing submitted, and no error either */
	if (r < 0)
		fact("io_uring", "no -- the ring was set up, but submitting or reaping a NOP "
		     "failed: %s (%s)%s", errno_hint(-r, &hint), strerror(-r), disabled);
	else if (cqe->user_data != tag || cqe->res != 0)
		fact("io_uring", "no -- the NOP completed with res %d, user_data 0x%llx%s", cqe->res,
		     (unsigned long long)cqe->user_data, disabled);
	else
		fact("io_uring", "yes -- a NOP was submitted and its completion reaped%s", disabled);
	if (cqe != NULL)
		io_uring_cqe_seen(&ring, cqe);

	struct io_uring_probe *probe = io_uring_get_probe_ring(&ring);
	for (size_t i = 0; probe != NULL && i < sizeof ops / sizeof ops[0]; i++) {
		char *list = io_uring_opcode_supported(probe, ops[i].op) ? have : missing;
		size_t n = strlen(list);
		snprintf(list + n, sizeof have - n, "%s%s", n > 0 ? " " : "", ops[i].name);
	}
	if (probe == NULL)
		fact("io_uring_opcodes", "unavailable (IORING_REGISTER_PROBE failed; Linux before "
		     "5.6 has none)");
	else if (missing[0] == '\0')
		fact("io_uring_opcodes", "yes -- all supported: %s", have);
	else
		fact("io_uring_opcodes", "no -- missing: %s; supported: %s", missing, have);
	if (probe != NULL)
		io_uring_free_probe(probe);
	io_uring_queue_exit(&ring);
}

static void report_memlock(void)
{
	struct rlimit rl;
	char soft[32] = "unlimited", hard[32] = "unlimited";
	if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) {
		fact("memlock", "unavailable (getrlimit: %s)", strerror(errno));
		return;
	}
	if (rl.rlim_cur != RLIM_INFINITY)
		snprintf(soft, sizeof soft, "%llu", (unsigned long long)rl.rlim_cur);
	if (rl.rlim_max != RLIM_INFINITY)
		snprintf(hard, sizeof hard, "%llu", (unsigned long long)rl.rlim_max);
	fact("memlock", "%s -- RLIMIT_MEMLOCK soft %s, hard %s (bytes)", soft, soft, hard);
}

/* ---- Parent: running the checks ---- */

/* The roles; every one but the probe finds the driver and device before it starts. */
static const struct role {
	const char *name;
	int (*run)(CUdevice dev);
} g_roles[] = {
	{"vmm-a", role_vmm_a},   {"vmm-b", role_vmm_b}, {"vmm-b2", role_vmm_b2},
	{"ipc-c", role_ipc_c},   {"ipc-d", role_ipc_d}, {"host-register", role_host_register},
	{"outlive-a", role_outlive_a}, {"outlive-b", role_outlive_client},
	{"outlive-c", role_outlive_client}, {"copy-bandwidth", role_copy_bandwidth},
};

struct child {
	pid_t pid;   /* 0 when it was never started */
	int out;     /* the memfd that is its stdout */
	int status;  /* from waitpid, once reaped */
	bool reaped;
	bool killed; /* the parent sent SIGKILL at the deadline */
};

/*
 * One check: its roles (the first one talks to each of the others over a
 * socketpair) and the facts it owes, in the order they are printed.
 */
struct check {
	const char *roles[3];
	const char *keys[6];
	int round; /* 0 with the others at once; 1 alone, after them (the timed check) */
	struct child kids[3];
	char reason[sizeof g_why]; /* from an @unavailable line, or why a start failed */
};

static struct check g_checks[] = {
	{.roles = {"probe"}, .keys = {"driver", "runtime", "device", "vmm_supported",
				      "posix_fd_supported", "granularity"}},
	{.roles = {"vmm-a", "vmm-b", "vmm-b2"},
	 .keys = {"vmm_fd_cross_process", "vmm_read_only_access", "vmm_fd_read_only",
		  "vmm_read_only_write_faults", "vmm_read_only_owner_unchanged"}},
	{.roles = {"ipc-c", "ipc-d"}, .keys = {"legacy_ipc"}},
	{.roles = {"host-register"},
	 .keys = {"host_register_memfd", "host_register_read_only_supported",
		  "host_register_read_only"}},
	{.roles = {"outlive-a", "outlive-b", "outlive-c"},
	 .keys = {"vmm_outlives_exporter", "vmm_import_after_exporter_exit"}},
	{.roles = {"copy-bandwidth"}, .round = 1,
	 .keys = {"vmm_slab_setup_ms", "host_register_ms", "htod_pinned_memfd_gbps",
		  "htod_async_pinned_gbps", "htod_pageable_gbps", "dtod_gbps"}},
};
#define N_CHECKS (sizeof g_checks / sizeof g_checks[0])

static bool g_gpu_found;

static void spawn(struct check *c, int i, int fd0, int fd1)
{
	/* A file, not a pipe: a child never blocks on it, nor needs reading while it runs. */
	int out = memfd_create(c->roles[i], MFD_CLOEXEC);
	pid_t pid = out < 0 ? -1 : (fflush(stdout), fork());
	if (pid == 0) {
		/* dup2 clears close-on-exec on fd 1; so does fcntl on the sockets this child keeps. */
		dup2(out, STDOUT_FILENO);
		if (fd0 >= 0)
			fcntl(fd0, F_SETFD, 0);
		if (fd1 >= 0)
			fcntl(fd1, F_SETFD, 0);
		char dev[16], a[16], b[16];
		snprintf(dev, sizeof dev, "%d", g_ordinal);
		snprintf(a, sizeof a, "%d", fd0);
		snprintf(b, sizeof b, "%d", fd1);
		char *argv[] = {"gpu_preflight", "--role", (char *)c->roles[i], dev, a, b, NULL};
		execv("/proc/self/exe", argv);
		printf("@unavailable cannot run /proc/self/exe: %s\n", strerror(errno));
		fflush(stdout);
		_exit(127);
	}
	if (pid < 0) {
		if (c->reason[0] == '\0')
			snprintf(c->reason, sizeof c->reason, "cannot start %s: %s", c->roles[i],
				 strerror(errno));
		if (out >= 0)
			close(out);
		return;
	}
	c->kids[i].pid = pid;
	c->kids[i].out = out;
}

static void start_check(struct check *c)
{
	int links[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
	for (int i = 1; i < 3 && c->roles[i] != NULL; i++)
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, links[i]) != 0)
			snprintf(c->reason, sizeof c->reason, "socketpair: %s", strerror(errno));
	spawn(c, 0, links[1][0], links[2][0]);
	for (int i = 1; i < 3 && c->roles[i] != NULL; i++)
		spawn(c, i, links[i][1], -1);
	for (int i = 1; i < 3; i++)
		for (int j = 0; j < 2; j++)
			if (links[i][j] >= 0)
				close(links[i][j]);
}

/* Reaps a round's children, killing those past the deadline; gives up on any SIGKILL can't end. */
static void wait_children(int round, int64_t start_ms)
{
	const int64_t kill_at = start_ms + (CHECK_TIMEOUT_S + 1) * 1000;
	for (;;) {
		bool running = false;
		int64_t now = now_ms();
		for (size_t c = 0; c < N_CHECKS; c++) {
			for (int i = 0; g_checks[c].round == round && i < 3; i++) {
				struct child *k = &g_checks[c].kids[i];
				if (k->pid <= 0 || k->reaped)
					continue;
				if (waitpid(k->pid, &k->status, WNOHANG) == k->pid) {
					k->reaped = true;
					continue;
				}
				if (now >= kill_at && !k->killed)
					k->killed = kill(k->pid, SIGKILL) == 0;
				running = true;
			}
		}
		if (!running || now >= kill_at + GIVE_UP_S * 1000)
			return;
		nanosleep(&(struct timespec){.tv_nsec = 5 * 1000000}, NULL);
	}
}

/* Why a check's children left a fact unsaid, for the parent's stand-in. */
static void missing_reason(const struct check *c, char *why, size_t len)
{
	snprintf(why, len, "%s", c->reason[0] != '\0' ? c->reason : "no child reported it");
	for (int i = 0; c->reason[0] == '\0' && i < 3 && c->roles[i] != NULL; i++) {
		const struct child *k = &c->kids[i];
		int sig = WIFSIGNALED(k->status) ? WTERMSIG(k->status) : 0;
		if (!k->reaped)
			snprintf(why, len, "timed out after %d s; %s did not end even on SIGKILL",
				 CHECK_TIMEOUT_S, c->roles[i]);
		else if (k->killed || sig == SIGALRM)
			snprintf(why, len, "timed out after %d s in %s", CHECK_TIMEOUT_S, c->roles[i]);
		else if (sig != 0)
			snprintf(why, len, "killed by signal %d (%s) in %s", sig, strsignal(sig),
				 c->roles[i]);
		else if (WEXITSTATUS(k->status) != 0)
			snprintf(why, len, "%s exited with status %d without saying why",
				 c->roles[i], WEXITSTATUS(k->status));
		else
			continue;
		return;
	}
}

/* The line in text (after a newline) that starts with prefix, or NULL. */
static const char *find_line(const char *text, const char *prefix)
{
	for (const char *l = text; l != NULL; l = strchr(l + 1, '\n'))
		if (strncmp(l + 1, prefix, strlen(prefix)) == 0)
			return l + 1;
	return NULL;
}

/*
 * Prints a check's facts in the order of its keys, whichever child printed
 * them, with a stand-in for each fact that none printed, then any other
 * line (notes).  Lines that begin with '@' are for the parent alone.
 */
static void print_check(struct check *c)
{
	/* A few lines from each child; a newline first, as every line follows one. */
	char text[16384] = "\n", why[sizeof g_why], prefix[64];
	size_t len = 1;
	const char *l;
	for (int i = 0; i < 3; i++) {
		struct child *k = &c->kids[i];
		ssize_t n = k->pid > 0 ? pread(k->out, text + len, sizeof text - len - 2, 0) : 0;
		if (n > 0 && text[len + (size_t)n - 1] != '\n')
			text[len + (size_t)n++] = '\n';
		len += n > 0 ? (size_t)n : 0;
		text[len] = '\0';
		if (k->pid > 0)
			close(k->out);
	}
	if (c->reason[0] == '\0' && (l = find_line(text, "@unavailable ")) != NULL)
		snprintf(c->reason, sizeof c->reason, "%.*s", (int)strcspn(l + 13, "\n"), l + 13);
	g_gpu_found |= find_line(text, "@gpu yes\n") != NULL;
	missing_reason(c, why, sizeof why);
	for (int k = 0; k < 6 && c->keys[k] != NULL; k++) {
		snprintf(prefix, sizeof prefix, "FACT %s: ", c->keys[k]);
		if ((l = find_line(text, prefix)) == NULL)
			fact(c->keys[k], "unavailable (%s)", why);
		else
			g_facts += fwrite(l, strcspn(l, "\n") + 1, 1, stdout) == 1;
	}
	for (l = text + 1; *l != '\0'; l += strcspn(l, "\n") + 1)
		if (*l != '@' && strncmp(l, "FACT ", 5) != 0)
			fwrite(l, 1, strcspn(l, "\n") + 1, stdout);
}

/* ---- Entry points ---- */

static int child_main(char **argv)
{
	CUdevice dev;
	g_role = argv[2];
	g_ordinal = atoi(argv[3]);
	g_link[0] = atoi(argv[4]);
	g_link[1] = atoi(argv[5]);
	g_start_ms = now_ms();
	/* A role stuck in the driver ends here; the parent reads SIGALRM as a timeout. */
	alarm(CHECK_TIMEOUT_S);
	signal(SIGPIPE, SIG_IGN);
	if (strcmp(g_role, "probe") == 0)
		return role_probe();
	for (size_t i = 0; i < sizeof g_roles / sizeof g_roles[0]; i++) {
		if (strcmp(g_roles[i].name, g_role) != 0)
			continue;
		if (!gpu_dlopen() || !CU(cuInit, 0) || !gpu_attach(&dev))
			return child_unavailable(g_why);
		return g_roles[i].run(dev);
	}
	return child_unavailable("unknown role");
}

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--device N]\n"
		"\n"
		"Print, one \"FACT <key>: <value>\" line each, what lorastore's CUDA backend\n"
		"relies on: the kernel, io_uring and its opcodes, RLIMIT_MEMLOCK; then, with\n"
		"libcuda.so.1 opened at run time, the driver and runtime versions, the device,\n"
		"VMM and POSIX-fd support and granularity, a cuMemCreate allocation shared\n"
		"with other processes as a POSIX fd (read-write, and read-only with a store\n"
		"that should fault), legacy CUDA IPC, cuMemHostRegister of memfd pages\n"
		"(read-write, and READ_ONLY), whether memory shared as an fd outlives its\n"
		"exporter (vmm_outlives_exporter, vmm_import_after_exporter_exit); then, timed\n"
		"with 256 MiB buffers, vmm_slab_setup_ms, host_register_ms and, in GB/s\n"
		"(10^9 B/s), htod_pinned_memfd_gbps, htod_async_pinned_gbps, htod_pageable_gbps\n"
		"and dtod_gbps (read plus write).  The CUDA checks run in child processes, the\n"
		"timed one alone after the others, each round for at most %d s; a fact that\n"
		"cannot be had reads \"unavailable (<why>)\".\n"
		"The last line is \"PREFLIGHT gpu=<yes|no> facts=<n> elapsed_ms=<n>\".\n"
		"\n"
		"  --device N  the device ordinal to check (default 0)\n"
		"  --help      this text\n"
		"\n"
		"Exit status: 0 when a driver and the device were found, whatever the facts\n"
		"say; 1 when not; 2 on a usage error.\n",
		argv0, CHECK_TIMEOUT_S);
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "--role") == 0)
		return child_main(argv);
	for (int i = 1; i < argc; i++) {
		const char *val = NULL;
		char *end;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout, argv[0]);
			return 0;
		} else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
			val = argv[++i];
		} else if (strncmp(argv[i], "--device=", 9) == 0) {
			val = argv[i] + 9;
		} else {
			fprintf(stderr, "%s: unknown argument '%s'\n", argv[0], argv[i]);
			usage(stderr, argv[0]);
			return 2;
		}
		errno = 0;
		long v = strtol(val, &end, 10);
		if (errno != 0 || end == val || *end != '\0' || v < 0 || v > 1023) {
			fprintf(stderr, "%s: --device wants an ordinal from 0 to 1023\n", argv[0]);
			return 2;
		}
		g_ordinal = (int)v;
	}

	int64_t start = now_ms();
	report_kernel();
	report_io_uring();
	report_memlock();
	for (int round = 0; round < 2; round++) {
		int64_t round_start = now_ms();
		for (size_t c = 0; c < N_CHECKS; c++)
			if (g_checks[c].round == round)
				start_check(&g_checks[c]);
		wait_children(round, round_start);
	}
	for (size_t c = 0; c < N_CHECKS; c++)
		print_check(&g_checks[c]);
	if (!g_gpu_found) {
		char why[sizeof g_why];
		missing_reason(&g_checks[0], why, sizeof why);
		printf("note: no GPU facts: %s\n", why);
	}
	printf("PREFLIGHT gpu=%s facts=%d elapsed_ms=%lld\n", g_gpu_found ? "yes" : "no", g_facts,
	       (long long)(now_ms() - start));
	return g_gpu_found ? 0 : 1;
}
