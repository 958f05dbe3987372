/*
 * TEST DOUBLE, NEVER SHIPPED: a stand-in for libcuda.so.1 that CI loads
 * through LORASTORE_CUDA_DRIVER.  It is not installed, and nothing links it.
 *
 * It implements, over memfd and mmap, exactly the driver entry points of
 * LS_CUDRV_FUNCS (common/cuda/ls_cudrv.h) under the names cuda.h exports
 * them by (cuMemcpyHtoD is defined here, and cuda.h's macro makes it
 * cuMemcpyHtoD_v2), plus a small test API.  Everything else is hidden.
 *
 * The aim: code that works here works on an H200, and code that misuses the
 * driver fails here.  A device pointer is an address of this process, device
 * memory is a memfd, and every copy is checked against a registry of
 * reservations, mappings and their access instead of ever faulting.  Where
 * the behaviour copies a rule of the real driver, a comment says so.
 *
 * Configuration, read at cuInit from the environment:
 *   LS_CUDA_DOUBLE_DEVICES  devices (default 1, at most 8; 0: no device)
 *   LS_CUDA_DOUBLE_MEMORY   bytes of memory per device (default 8 GiB)
 *
 * Host functions (cuLaunchHostFunc) run on a stream's own thread and must
 * not call the driver: as on the real driver, such a call fails with
 * CUDA_ERROR_NOT_PERMITTED.
 */
#define _GNU_SOURCE
#include <cuda.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LS_EXPORT __attribute__((visibility("default")))

/* The test API: driver calls since load or reset, and device bytes in use here. */
LS_EXPORT unsigned long long ls_cuda_double_calls(void);
LS_EXPORT void ls_cuda_double_reset_calls(void);
LS_EXPORT unsigned long long ls_cuda_double_used(int ordinal);

#define LS_GRAN (2ull << 20) /* bytes: the VMM granularity of an H200 */
#define LS_MAX_DEVICES 8
#define LS_MEMFD_PREFIX "ls-cuda-double-dev"

/* One primary context per device; the CUcontext handed out points here. */
struct ls_ctx {
	int dev;
	atomic_int refs; /* cuDevicePrimaryCtxRetain minus Release */
};

/* Device memory: one memfd, shared by the handles and mappings of this process. */
struct ls_alloc {
	struct ls_alloc *next;
	int fd, dev;
	size_t size; /* bytes */
	int refs;    /* handles plus mappings in this process */
	bool exportable;
	dev_t st_dev; /* the memfd's identity, so an import of it is not counted twice */
	ino_t st_ino;
};

/* A CUmemGenericAllocationHandle is the address of one of these. */
struct ls_handle {
	struct ls_handle *next;
	struct ls_alloc *alloc;
};

/* An allocation mapped into a reservation, with the access of each device. */
struct ls_map {
	struct ls_map *next;
	uintptr_t base;
	size_t size; /* bytes */
	struct ls_alloc *alloc;
	int access[LS_MAX_DEVICES]; /* PROT_* */
};

/* A reserved address range (maps == NULL), or a registered host range (cuMemHostRegister). */
struct ls_range {
	struct ls_range *next;
	uintptr_t base;
	size_t size; /* bytes */
	struct ls_map *maps;
};

/* Work queued on a stream: a copy (fn == NULL) or a host function. */
struct ls_op {
	struct ls_op *next;
	CUhostFn fn;
	void *data;
	uintptr_t dst;
	const void *src;
	size_t n; /* bytes */
};

struct ls_stream {
	struct ls_stream *next;
	int dev;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct ls_op *head, *tail;
	bool busy, stop;
	CUresult error; /* the first fault of a queued copy, sticky */
};

static atomic_ullong ls_calls;
static pthread_once_t ls_once = PTHREAD_ONCE_INIT;
static CUresult ls_init_result = CUDA_ERROR_NOT_INITIALIZED;
static atomic_bool ls_ready, ls_forked;
static int ls_ndev;
static unsigned long long ls_capacity; /* bytes per device */
static struct ls_ctx ls_ctxs[LS_MAX_DEVICES];
static _Thread_local struct ls_ctx *ls_current;
static _Thread_local bool ls_no_driver_calls; /* on stream threads and in host functions */

/* ls_lock guards what follows, and device memory during a copy. */
static pthread_mutex_t ls_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long ls_used[LS_MAX_DEVICES]; /* bytes */
static struct ls_alloc *ls_allocs;
static struct ls_handle *ls_handles;
static struct ls_range *ls_resvs, *ls_hostregs;
static struct ls_stream *ls_streams;

/* Return the result of expr if it failed; return err unless cond holds. */
#define LS_TRY(expr) do { CUresult ls_r_ = (expr); if (ls_r_) return ls_r_; } while (0)
#define LS_ENSURE(cond, err) do { if (!(cond)) return (err); } while (0)
#define LS_PUSH(head, x) ((x)->next = (head), (head) = (x))
/* Unlink x, which must be on the list. */
#define LS_UNLINK(head, x)                                                                  \
	do {                                                                                \
		__typeof__(x) *ls_pp_ = &(head);                                            \
		while (*ls_pp_ != (x))                                                      \
			ls_pp_ = &(*ls_pp_)->next;                                          \
		*ls_pp_ = (x)->next;                                                        \
	} while (0)

/* ---- Entry, initialization, errors ---- */

/*
 * The real driver cannot be used in the child of a fork made after cuInit:
 * every call there fails, cuInit included.  So here.
 */
static void ls_after_fork_child(void)
{
	atomic_store(&ls_forked, true);
}

/* A number from the environment into *out; false, with a line on stderr, if it is not one. */
static bool ls_parse(const char *name, unsigned long long *out)
{
	const char *s = getenv(name);
	char *end;
	if (!s || !*s)
		return true;
	errno = 0;
	*out = strtoull(s, &end, 10);
	if (!errno && !*end && *s >= '0' && *s <= '9')
		return true;
	fprintf(stderr, "ls_cuda_double: %s=%s is not a number\n", name, s);
	return false;
}

static void ls_init(void)
{
	unsigned long long ndev = 1, mem = 8ull << 30;
	if (!ls_parse("LS_CUDA_DOUBLE_DEVICES", &ndev) ||
	    !ls_parse("LS_CUDA_DOUBLE_MEMORY", &mem) || ndev > LS_MAX_DEVICES) {
		ls_init_result = CUDA_ERROR_INVALID_VALUE;
		return;
	}
	if (ndev == 0) {
		ls_init_result = CUDA_ERROR_NO_DEVICE; /* the real driver, with no GPU */
		return;
	}
	ls_ndev = (int)ndev;
	ls_capacity = mem;
	for (int i = 0; i < ls_ndev; i++)
		ls_ctxs[i].dev = i;
	pthread_atfork(NULL, NULL, ls_after_fork_child);
	ls_init_result = CUDA_SUCCESS;
	atomic_store(&ls_ready, true);
}

static void ls_count(void)
{
	atomic_fetch_add_explicit(&ls_calls, 1, memory_order_relaxed);
}

/* Every entry point starts here: count the call, then refuse what the driver refuses. */
static CUresult ls_enter(void)
{
	ls_count();
	if (ls_no_driver_calls)
		return CUDA_ERROR_NOT_PERMITTED;
	if (atomic_load(&ls_forked) || !atomic_load(&ls_ready))
		return CUDA_ERROR_NOT_INITIALIZED;
	return CUDA_SUCCESS;
}

/* As ls_enter, for the calls that need a current context on the real driver. */
static CUresult ls_enter_ctx(struct ls_ctx **ctx)
{
	LS_TRY(ls_enter());
	/* A primary context released to zero references is destroyed: not usable. */
	LS_ENSURE(ls_current && atomic_load(&ls_current->refs) > 0, CUDA_ERROR_INVALID_CONTEXT);
	if (ctx)
		*ctx = ls_current;
	return CUDA_SUCCESS;
}

static bool ls_dev_ok(CUdevice dev)
{
	return dev >= 0 && dev < ls_ndev;
}

static bool ls_aligned(uint64_t v)
{
	return v % LS_GRAN == 0;
}

#define LS_ERR(code, text) { code, #code, text }
static const struct {
	CUresult r;
	const char *name, *text;
} ls_errors[] = {
	LS_ERR(CUDA_SUCCESS, "no error"),
	LS_ERR(CUDA_ERROR_INVALID_VALUE, "invalid argument"),
	LS_ERR(CUDA_ERROR_OUT_OF_MEMORY, "out of memory"),
	LS_ERR(CUDA_ERROR_NOT_INITIALIZED, "initialization error"),
	LS_ERR(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected"),
	LS_ERR(CUDA_ERROR_INVALID_DEVICE, "invalid device ordinal"),
	LS_ERR(CUDA_ERROR_INVALID_CONTEXT, "invalid device context"),
	LS_ERR(CUDA_ERROR_OPERATING_SYSTEM, "OS call failed or operation not supported on this OS"),
	LS_ERR(CUDA_ERROR_INVALID_HANDLE, "invalid resource handle"),
	LS_ERR(CUDA_ERROR_ILLEGAL_ADDRESS, "an illegal memory access was encountered"),
	LS_ERR(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
	       "part or all of the requested memory range is already mapped"),
	LS_ERR(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED,
	       "pointer does not correspond to a registered memory region"),
	LS_ERR(CUDA_ERROR_NOT_PERMITTED, "operation not permitted"),
	LS_ERR(CUDA_ERROR_NOT_SUPPORTED, "operation not supported"),
};

/* Names and strings need no cuInit on the real driver: they explain its failure. */
static CUresult ls_error_lookup(CUresult error, const char **pStr, bool name)
{
	ls_count();
	LS_ENSURE(pStr, CUDA_ERROR_INVALID_VALUE);
	for (size_t i = 0; i < sizeof(ls_errors) / sizeof(ls_errors[0]); i++) {
		if (ls_errors[i].r == error) {
			*pStr = name ? ls_errors[i].name : ls_errors[i].text;
			return CUDA_SUCCESS;
		}
	}
	*pStr = NULL;
	return CUDA_ERROR_INVALID_VALUE;
}

LS_EXPORT CUresult CUDAAPI cuGetErrorName(CUresult error, const char **pStr)
{
	return ls_error_lookup(error, pStr, true);
}

LS_EXPORT CUresult CUDAAPI cuGetErrorString(CUresult error, const char **pStr)
{
	return ls_error_lookup(error, pStr, false);
}

LS_EXPORT CUresult CUDAAPI cuInit(unsigned int Flags)
{
	ls_count();
	LS_ENSURE(!ls_no_driver_calls, CUDA_ERROR_NOT_PERMITTED);
	LS_ENSURE(!atomic_load(&ls_forked), CUDA_ERROR_NOT_INITIALIZED);
	LS_ENSURE(Flags == 0, CUDA_ERROR_INVALID_VALUE);
	pthread_once(&ls_once, ls_init);
	return ls_init_result;
}

/* As on the real driver, the version is known before cuInit. */
LS_EXPORT CUresult CUDAAPI cuDriverGetVersion(int *driverVersion)
{
	ls_count();
	LS_ENSURE(driverVersion, CUDA_ERROR_INVALID_VALUE);
	*driverVersion = 13000;
	return CUDA_SUCCESS;
}

/* ---- Devices and contexts ---- */

LS_EXPORT CUresult CUDAAPI cuDeviceGetCount(int *count)
{
	LS_TRY(ls_enter());
	LS_ENSURE(count, CUDA_ERROR_INVALID_VALUE);
	*count = ls_ndev;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuDeviceGet(CUdevice *device, int ordinal)
{
	LS_TRY(ls_enter());
	LS_ENSURE(device, CUDA_ERROR_INVALID_VALUE);
	LS_ENSURE(ls_dev_ok(ordinal), CUDA_ERROR_INVALID_DEVICE);
	*device = ordinal;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuDeviceGetName(char *name, int len, CUdevice dev)
{
	LS_TRY(ls_enter());
	LS_ENSURE(name && len > 0, CUDA_ERROR_INVALID_VALUE);
	LS_ENSURE(ls_dev_ok(dev), CUDA_ERROR_INVALID_DEVICE);
	snprintf(name, (size_t)len, "%s", "lorastore CUDA driver double");
	return CUDA_SUCCESS;
}

/* A fixed UUID per ordinal, the same in every process, as a real GPU's is. */
LS_EXPORT CUresult CUDAAPI cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
	static const char base[16] = "lsCUDAdouble\x8d\x00\x1d";
	LS_TRY(ls_enter());
	LS_ENSURE(uuid, CUDA_ERROR_INVALID_VALUE);
	LS_ENSURE(ls_dev_ok(dev), CUDA_ERROR_INVALID_DEVICE);
	memcpy(uuid->bytes, base, sizeof(base));
	uuid->bytes[15] = (char)dev;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
	/* What an H200 (sm_90) answers; the double models no other attribute. */
	static const struct {
		CUdevice_attribute attrib;
		int value;
	} known[] = {
		{ CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1 },
		{ CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, 1 },
		{ CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED, 1 },
		{ CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 9 },
		{ CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0 },
		{ CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 132 },
	};
	LS_TRY(ls_enter());
	LS_ENSURE(pi, CUDA_ERROR_INVALID_VALUE);
	LS_ENSURE(ls_dev_ok(dev), CUDA_ERROR_INVALID_DEVICE);
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		if (known[i].attrib == attrib) {
			*pi = known[i].value;
			return CUDA_SUCCESS;
		}
	}
	/* Code must not come to rely, unseen, on an attribute nobody modelled. */
	return CUDA_ERROR_INVALID_VALUE;
}

LS_EXPORT CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
	LS_TRY(ls_enter());
	LS_ENSURE(pctx, CUDA_ERROR_INVALID_VALUE);
	LS_ENSURE(ls_dev_ok(dev), CUDA_ERROR_INVALID_DEVICE);
	atomic_fetch_add(&ls_ctxs[dev].refs, 1);
	*pctx = (CUcontext)(void *)&ls_ctxs[dev];
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice dev)
{
	LS_TRY(ls_enter());
	LS_ENSURE(ls_dev_ok(dev), CUDA_ERROR_INVALID_DEVICE);
	int refs = atomic_load(&ls_ctxs[dev].refs);
	do {
		/* Released more often than retained: no context is left to release. */
		LS_ENSURE(refs > 0, CUDA_ERROR_INVALID_CONTEXT);
	} while (!atomic_compare_exchange_weak(&ls_ctxs[dev].refs, &refs, refs - 1));
	return CUDA_SUCCESS;
}

/* The current context is per thread, as on the real driver; NULL unsets it. */
LS_EXPORT CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx)
{
	LS_TRY(ls_enter());
	for (int i = 0; ctx && i < ls_ndev; i++) {
		if (ctx == (CUcontext)(void *)&ls_ctxs[i]) {
			ls_current = &ls_ctxs[i];
			return CUDA_SUCCESS;
		}
	}
	LS_ENSURE(!ctx, CUDA_ERROR_INVALID_CONTEXT);
	ls_current = NULL;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuCtxGetCurrent(CUcontext *pctx)
{
	LS_TRY(ls_enter());
	LS_ENSURE(pctx, CUDA_ERROR_INVALID_VALUE);
	*pctx = (CUcontext)(void *)ls_current;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuCtxGetDevice(CUdevice *device)
{
	struct ls_ctx *c;
	LS_TRY(ls_enter_ctx(&c));
	LS_ENSURE(device, CUDA_ERROR_INVALID_VALUE);
	*device = c->dev;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
	struct ls_ctx *c;
	LS_TRY(ls_enter_ctx(&c));
	LS_ENSURE(free_bytes && total_bytes, CUDA_ERROR_INVALID_VALUE);
	pthread_mutex_lock(&ls_lock);
	unsigned long long used = ls_used[c->dev];
	pthread_mutex_unlock(&ls_lock);
	*free_bytes = used < ls_capacity ? ls_capacity - used : 0;
	*total_bytes = ls_capacity;
	return CUDA_SUCCESS;
}

/* ---- Allocations and sharing ---- */

static CUresult ls_check_prop(const CUmemAllocationProp *prop)
{
	LS_ENSURE(prop && prop->type == CU_MEM_ALLOCATION_TYPE_PINNED &&
			  prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE,
		  CUDA_ERROR_INVALID_VALUE);
	LS_ENSURE(ls_dev_ok(prop->location.id), CUDA_ERROR_INVALID_DEVICE);
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuMemGetAllocationGranularity(size_t *granularity,
							const CUmemAllocationProp *prop,
							CUmemAllocationGranularity_flags option)
{
	LS_TRY(ls_enter());
	LS_ENSURE(granularity && (option == CU_MEM_ALLOC_GRANULARITY_MINIMUM ||
				  option == CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
		  CUDA_ERROR_INVALID_VALUE);
	LS_TRY(ls_check_prop(prop));
	*granularity = LS_GRAN;
	return CUDA_SUCCESS;
}

/* Under ls_lock.  A handle is checked against the list, never dereferenced blind. */
static struct ls_handle *ls_handle_find(CUmemGenericAllocationHandle h)
{
	struct ls_handle *p = ls_handles;
	while (p && (CUmemGenericAllocationHandle)(uintptr_t)p != h)
		p = p->next;
	return p;
}

/*
 * Under ls_lock.  The real driver frees device memory when the last handle
 * and the last mapping of it in this process are gone; other processes hold
 * their own references, here their descriptors of the memfd.
 */
static void ls_alloc_unref(struct ls_alloc *a)
{
	if (--a->refs > 0)
		return;
	LS_UNLINK(ls_allocs, a);
	ls_used[a->dev] -= a->size;
	close(a->fd);
	free(a);
}

/*
 * Under ls_lock: a new handle on an allocation, which is a (taking one
 * reference) or else a new one on fd (which it then owns).
 */
static CUresult ls_handle_new(struct ls_alloc *a, int fd, const struct stat *st, int dev,
			      bool exportable, CUmemGenericAllocationHandle *out)
{
	struct ls_handle *h = calloc(1, sizeof(*h));
	if (!h || (!a && !(a = calloc(1, sizeof(*a))))) {
		free(h);
		return CUDA_ERROR_OUT_OF_MEMORY;
	}
	if (a->refs++ == 0) {
		a->fd = fd;
		a->dev = dev;
		a->size = (size_t)st->st_size;
		a->exportable = exportable;
		a->st_dev = st->st_dev;
		a->st_ino = st->st_ino;
		ls_used[dev] += a->size;
		LS_PUSH(ls_allocs, a);
	}
	h->alloc = a;
	LS_PUSH(ls_handles, h);
	*out = (CUmemGenericAllocationHandle)(uintptr_t)h;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
				       const CUmemAllocationProp *prop, unsigned long long flags)
{
	LS_TRY(ls_enter());
	LS_ENSURE(handle && flags == 0 && size != 0 && ls_aligned(size), CUDA_ERROR_INVALID_VALUE);
	LS_TRY(ls_check_prop(prop));
	/* Win32 handles do not exist on Linux; fabric handles need IMEX, absent here. */
	LS_ENSURE(!(prop->requestedHandleTypes & ~CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
		  CUDA_ERROR_NOT_SUPPORTED);
	int dev = prop->location.id, fd = -1;
	char name[32];
	struct stat st;
	snprintf(name, sizeof(name), LS_MEMFD_PREFIX "%d", dev);
	CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
	pthread_mutex_lock(&ls_lock);
	if (ls_used[dev] > ls_capacity || size > ls_capacity - ls_used[dev])
		goto out;
	/* An allocation's size is fixed: no process holding the descriptor may change it. */
	fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, (off_t)size) ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) || fstat(fd, &st))
		goto out;
	r = ls_handle_new(NULL, fd, &st, dev,
			  prop->requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, handle);
out:
	pthread_mutex_unlock(&ls_lock);
	if (r != CUDA_SUCCESS && fd >= 0)
		close(fd);
	return r;
}

/* Mappings made from the handle stay valid after it is released, as on the real driver. */
LS_EXPORT CUresult CUDAAPI cuMemRelease(CUmemGenericAllocationHandle handle)
{
	LS_TRY(ls_enter());
	pthread_mutex_lock(&ls_lock);
	struct ls_handle *h = ls_handle_find(handle);
	bool found = h != NULL;
	if (found) {
		LS_UNLINK(ls_handles, h);
		ls_alloc_unref(h->alloc);
		free(h);
	}
	pthread_mutex_unlock(&ls_lock);
	return found ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

LS_EXPORT CUresult CUDAAPI cuMemExportToShareableHandle(void *shareableHandle,
							CUmemGenericAllocationHandle handle,
							CUmemAllocationHandleType handleType,
							unsigned long long flags)
{
	LS_TRY(ls_enter());
	LS_ENSURE(shareableHandle && flags == 0 &&
			  handleType == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
		  CUDA_ERROR_INVALID_VALUE);
	CUresult r = CUDA_ERROR_INVALID_VALUE;
	pthread_mutex_lock(&ls_lock);
	struct ls_handle *h = ls_handle_find(handle);
	if (h && !h->alloc->exportable) {
		/* The real driver exports only the handle types requested at cuMemCreate. */
		r = CUDA_ERROR_NOT_SUPPORTED;
	} else if (h) {
		/* A new descriptor each time, which the caller owns and closes. */
		int fd = fcntl(h->alloc->fd, F_DUPFD_CLOEXEC, 0);
		r = fd < 0 ? CUDA_ERROR_OPERATING_SYSTEM : CUDA_SUCCESS;
		if (fd >= 0)
			*(int *)shareableHandle = fd;
	}
	pthread_mutex_unlock(&ls_lock);
	return r;
}

/* The device of an exported memfd, from its name; -1 if it is not one. */
static int ls_memfd_device(int fd)
{
	char link[64], target[128];
	int dev;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return -1;
	target[n] = '\0';
	return sscanf(target, "/memfd:" LS_MEMFD_PREFIX "%d", &dev) == 1 ? dev : -1;
}

LS_EXPORT CUresult CUDAAPI cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle,
							  void *osHandle,
							  CUmemAllocationHandleType shHandleType)
{
	LS_TRY(ls_enter());
	LS_ENSURE(handle && shHandleType == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
		  CUDA_ERROR_INVALID_VALUE);
	int fd = (int)(intptr_t)osHandle, dev = ls_memfd_device(fd);
	struct stat st;
	/* Only what the driver exported imports: not a host memfd, not a file. */
	LS_ENSURE(dev >= 0 && fstat(fd, &st) == 0 && st.st_size > 0 &&
			  ls_aligned((uint64_t)st.st_size),
		  CUDA_ERROR_INVALID_VALUE);
	LS_ENSURE(ls_dev_ok(dev), CUDA_ERROR_INVALID_DEVICE);
	pthread_mutex_lock(&ls_lock);
	struct ls_alloc *a = ls_allocs;
	while (a && (a->st_dev != st.st_dev || a->st_ino != st.st_ino))
		a = a->next;
	/*
	 * Memory this process already holds takes one more reference, not more
	 * memory.  Memory from another process counts as used here (this
	 * process keeps it alive) but is not checked against the capacity:
	 * importing allocates nothing.  The caller keeps its descriptor, so the
	 * double holds a dup of it.
	 */
	int own = a ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
	CUresult r = CUDA_ERROR_OPERATING_SYSTEM;
	if (a || own >= 0)
		r = ls_handle_new(a, own, &st, dev, true, handle);
	pthread_mutex_unlock(&ls_lock);
	if (r != CUDA_SUCCESS && own >= 0)
		close(own);
	return r;
}

/* ---- Virtual addresses: reservations, mappings, access ---- */

/* Under ls_lock: the range of list that wholly holds [p, p + n). */
static struct ls_range *ls_range_find(struct ls_range *list, uintptr_t p, size_t n)
{
	if (n == 0 || p + n < p)
		return NULL;
	while (list && !(p >= list->base && p + n <= list->base + list->size))
		list = list->next;
	return list;
}

/* Under ls_lock: the mapping of r that holds address p. */
static struct ls_map *ls_map_at(struct ls_range *r, uintptr_t p)
{
	struct ls_map *m = r->maps;
	while (m && !(p >= m->base && p < m->base + m->size))
		m = m->next;
	return m;
}

/*
 * Under ls_lock: the reservation in which [p, p + n) is a run of whole
 * adjacent mappings, or NULL.  The real driver unmaps and sets access only
 * on whole mappings.
 */
static struct ls_range *ls_whole_maps(uintptr_t p, size_t n)
{
	struct ls_range *r = ls_range_find(ls_resvs, p, n);
	uintptr_t cur = p;
	while (r && cur < p + n) {
		struct ls_map *m = ls_map_at(r, cur);
		if (!m || m->base != cur)
			return NULL;
		cur = m->base + m->size;
	}
	return r && cur == p + n ? r : NULL;
}

LS_EXPORT CUresult CUDAAPI cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
					       CUdeviceptr addr, unsigned long long flags)
{
	LS_TRY(ls_enter_ctx(NULL));
	LS_ENSURE(ptr && flags == 0 && size != 0 && ls_aligned(size) &&
			  (alignment & (alignment - 1)) == 0,
		  CUDA_ERROR_INVALID_VALUE);
	(void)addr; /* a hint the real driver may ignore; the double always does */
	size_t align = alignment > LS_GRAN ? alignment : LS_GRAN;
	LS_ENSURE(size <= SIZE_MAX - align, CUDA_ERROR_OUT_OF_MEMORY);
	struct ls_range *r = calloc(1, sizeof(*r));
	LS_ENSURE(r, CUDA_ERROR_OUT_OF_MEMORY);
	/* Reserve more, then trim to an aligned range: PROT_NONE until something is mapped. */
	char *raw = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			 -1, 0);
	if (raw == MAP_FAILED) {
		free(r);
		return CUDA_ERROR_OUT_OF_MEMORY;
	}
	uintptr_t base = ((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1);
	if (base > (uintptr_t)raw)
		munmap(raw, base - (uintptr_t)raw);
	munmap((void *)(base + size), (uintptr_t)raw + align - base); /* never empty */
	r->base = base;
	r->size = size;
	pthread_mutex_lock(&ls_lock);
	LS_PUSH(ls_resvs, r);
	pthread_mutex_unlock(&ls_lock);
	*ptr = (CUdeviceptr)base;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
	LS_TRY(ls_enter());
	pthread_mutex_lock(&ls_lock);
	struct ls_range *r = ls_resvs;
	while (r && (r->base != (uintptr_t)ptr || r->size != size))
		r = r->next;
	/* Stricter than the driver promises, on purpose: unmap before freeing. */
	bool ok = r && !r->maps;
	if (ok) {
		LS_UNLINK(ls_resvs, r);
		munmap((void *)r->base, r->size);
		free(r);
	}
	pthread_mutex_unlock(&ls_lock);
	return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

LS_EXPORT CUresult CUDAAPI cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
				    CUmemGenericAllocationHandle handle, unsigned long long flags)
{
	LS_TRY(ls_enter_ctx(NULL));
	/* ptr, size and offset are multiples of the granularity, as the real driver demands. */
	LS_ENSURE(flags == 0 && size != 0 && ls_aligned(ptr) && ls_aligned(size) &&
			  ls_aligned(offset),
		  CUDA_ERROR_INVALID_VALUE);
	uintptr_t p = (uintptr_t)ptr;
	CUresult r = CUDA_ERROR_INVALID_VALUE;
	pthread_mutex_lock(&ls_lock);
	struct ls_handle *h = ls_handle_find(handle);
	struct ls_range *v = ls_range_find(ls_resvs, p, size);
	if (!h || !v || offset > h->alloc->size || size > h->alloc->size - offset)
		goto out;
	/* Only into reserved ranges that are not mapped yet, as on the real driver. */
	for (struct ls_map *m = v->maps; m; m = m->next)
		if (p < m->base + m->size && m->base < p + size)
			goto out;
	r = CUDA_ERROR_OUT_OF_MEMORY;
	struct ls_map *m = calloc(1, sizeof(*m));
	/* No access until cuMemSetAccess: "cuMemMap does not make the address accessible". */
	if (!m || mmap((void *)p, size, PROT_NONE, MAP_SHARED | MAP_FIXED, h->alloc->fd,
		       (off_t)offset) == MAP_FAILED) {
		free(m);
		goto out;
	}
	m->base = p;
	m->size = size;
	m->alloc = h->alloc;
	m->alloc->refs++;
	LS_PUSH(v->maps, m);
	r = CUDA_SUCCESS;
out:
	pthread_mutex_unlock(&ls_lock);
	return r;
}

LS_EXPORT CUresult CUDAAPI cuMemUnmap(CUdeviceptr ptr, size_t size)
{
	LS_TRY(ls_enter());
	uintptr_t p = (uintptr_t)ptr;
	CUresult r = CUDA_ERROR_INVALID_VALUE;
	pthread_mutex_lock(&ls_lock);
	struct ls_range *v = ls_whole_maps(p, size);
	/* Back to a bare reservation; the memory goes with its last reference. */
	const int anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED;
	if (v && mmap((void *)p, size, PROT_NONE, anon, -1, 0) == MAP_FAILED)
		r = CUDA_ERROR_OUT_OF_MEMORY;
	else if (v)
		r = CUDA_SUCCESS;
	for (struct ls_map *m = r == CUDA_SUCCESS ? v->maps : NULL, *next; m; m = next) {
		next = m->next;
		if (m->base >= p && m->base + m->size <= p + size) {
			LS_UNLINK(v->maps, m);
			ls_alloc_unref(m->alloc);
			free(m);
		}
	}
	pthread_mutex_unlock(&ls_lock);
	return r;
}

static int ls_prot(CUmemAccess_flags f)
{
	if (f == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
		return PROT_READ | PROT_WRITE;
	return f == CU_MEM_ACCESS_FLAGS_PROT_READ ? PROT_READ : PROT_NONE;
}

LS_EXPORT CUresult CUDAAPI cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
					  size_t count)
{
	LS_TRY(ls_enter_ctx(NULL));
	LS_ENSURE(desc && count > 0, CUDA_ERROR_INVALID_VALUE);
	for (size_t i = 0; i < count; i++) {
		LS_ENSURE(desc[i].location.type == CU_MEM_LOCATION_TYPE_DEVICE &&
				  (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_NONE ||
				   desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READ ||
				   desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE),
			  CUDA_ERROR_INVALID_VALUE);
		LS_ENSURE(ls_dev_ok(desc[i].location.id), CUDA_ERROR_INVALID_DEVICE);
	}
	uintptr_t p = (uintptr_t)ptr;
	pthread_mutex_lock(&ls_lock);
	/* "The range must be a fully mapped address range containing all allocations." */
	struct ls_range *v = ls_whole_maps(p, size);
	CUresult r = v ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
	for (struct ls_map *m = v ? v->maps : NULL; m; m = m->next) {
		if (m->base < p || m->base + m->size > p + size)
			continue;
		for (size_t i = 0; i < count; i++)
			m->access[desc[i].location.id] = ls_prot(desc[i].flags);
		/* The pages get what any device may do; a copy checks its own device's access. */
		int prot = PROT_NONE;
		for (int d = 0; d < ls_ndev; d++)
			prot |= m->access[d];
		if (mprotect((void *)m->base, m->size, prot))
			r = CUDA_ERROR_OPERATING_SYSTEM;
	}
	pthread_mutex_unlock(&ls_lock);
	return r;
}

/* ---- Copies ---- */

/*
 * Under ls_lock: may device dev access [p, p + n) as need (PROT_READ or
 * PROT_WRITE)?  Unmapped memory is an invalid argument; mapped memory
 * without the access is what a device fault reports.
 */
static CUresult ls_check_device(uintptr_t p, size_t n, int dev, int need)
{
	struct ls_range *v = ls_range_find(ls_resvs, p, n);
	LS_ENSURE(v, CUDA_ERROR_INVALID_VALUE);
	for (uintptr_t cur = p; cur < p + n;) {
		struct ls_map *m = ls_map_at(v, cur);
		LS_ENSURE(m, CUDA_ERROR_INVALID_VALUE);
		LS_ENSURE(m->access[dev] & need, CUDA_ERROR_ILLEGAL_ADDRESS);
		cur = m->base + m->size;
	}
	return CUDA_SUCCESS;
}

/* A checked copy.  ls_lock is held across it, so no unmap pulls the pages away. */
static CUresult ls_copy(void *dst, const void *src, size_t n, uintptr_t dev_ptr, int dev, int need)
{
	pthread_mutex_lock(&ls_lock);
	CUresult r = ls_check_device(dev_ptr, n, dev, need);
	if (r == CUDA_SUCCESS)
		memcpy(dst, src, n);
	pthread_mutex_unlock(&ls_lock);
	return r;
}

LS_EXPORT CUresult CUDAAPI cuMemcpyHtoD(CUdeviceptr dstDevice, const void *srcHost,
					size_t ByteCount)
{
	struct ls_ctx *c;
	LS_TRY(ls_enter_ctx(&c));
	if (ByteCount == 0)
		return CUDA_SUCCESS;
	LS_ENSURE(srcHost, CUDA_ERROR_INVALID_VALUE);
	return ls_copy((void *)(uintptr_t)dstDevice, srcHost, ByteCount, (uintptr_t)dstDevice,
		       c->dev, PROT_WRITE);
}

LS_EXPORT CUresult CUDAAPI cuMemcpyDtoH(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount)
{
	struct ls_ctx *c;
	LS_TRY(ls_enter_ctx(&c));
	if (ByteCount == 0)
		return CUDA_SUCCESS;
	LS_ENSURE(dstHost, CUDA_ERROR_INVALID_VALUE);
	return ls_copy(dstHost, (const void *)(uintptr_t)srcDevice, ByteCount, (uintptr_t)srcDevice,
		       c->dev, PROT_READ);
}

/* ---- Streams ---- */

static void *ls_stream_main(void *arg)
{
	struct ls_stream *s = arg;
	ls_no_driver_calls = true; /* host functions run on this thread */
	pthread_mutex_lock(&s->mu);
	for (;;) {
		while (!s->head && !s->stop)
			pthread_cond_wait(&s->cv, &s->mu);
		struct ls_op *op = s->head;
		if (!op)
			break; /* stopping, and everything queued has run */
		if (!(s->head = op->next))
			s->tail = NULL;
		s->busy = true;
		pthread_mutex_unlock(&s->mu);
		CUresult r = CUDA_SUCCESS;
		if (op->fn)
			op->fn(op->data);
		else /* checked again: the range may have been unmapped since */
			r = ls_copy((void *)op->dst, op->src, op->n, op->dst, s->dev, PROT_WRITE);
		free(op);
		pthread_mutex_lock(&s->mu);
		if (s->error == CUDA_SUCCESS)
			s->error = r;
		s->busy = false;
		pthread_cond_broadcast(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* A live stream, or NULL.  A stream used while another thread destroys it is the caller's bug. */
static struct ls_stream *ls_stream_find(CUstream hStream)
{
	pthread_mutex_lock(&ls_lock);
	struct ls_stream *s = ls_streams;
	while (s && (CUstream)(void *)s != hStream)
		s = s->next;
	pthread_mutex_unlock(&ls_lock);
	return s;
}

/* Queue a copy (fn NULL) or a host function on s. */
static CUresult ls_stream_push(struct ls_stream *s, CUhostFn fn, void *data, uintptr_t dst,
			       const void *src, size_t n)
{
	struct ls_op *op = calloc(1, sizeof(*op));
	LS_ENSURE(op, CUDA_ERROR_OUT_OF_MEMORY);
	*op = (struct ls_op){ .fn = fn, .data = data, .dst = dst, .src = src, .n = n };
	pthread_mutex_lock(&s->mu);
	*(s->tail ? &s->tail->next : &s->head) = op;
	s->tail = op;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	return CUDA_SUCCESS;
}

static CUresult ls_stream_wait(struct ls_stream *s)
{
	pthread_mutex_lock(&s->mu);
	while (s->head || s->busy)
		pthread_cond_wait(&s->cv, &s->mu);
	CUresult r = s->error;
	pthread_mutex_unlock(&s->mu);
	return r;
}

LS_EXPORT CUresult CUDAAPI cuStreamCreate(CUstream *phStream, unsigned int Flags)
{
	struct ls_ctx *c;
	LS_TRY(ls_enter_ctx(&c));
	LS_ENSURE(phStream && (Flags == CU_STREAM_DEFAULT || Flags == CU_STREAM_NON_BLOCKING),
		  CUDA_ERROR_INVALID_VALUE);
	struct ls_stream *s = calloc(1, sizeof(*s));
	LS_ENSURE(s, CUDA_ERROR_OUT_OF_MEMORY);
	s->dev = c->dev;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	if (pthread_create(&s->thread, NULL, ls_stream_main, s)) {
		free(s);
		return CUDA_ERROR_OUT_OF_MEMORY;
	}
	pthread_mutex_lock(&ls_lock);
	LS_PUSH(ls_streams, s);
	pthread_mutex_unlock(&ls_lock);
	*phStream = (CUstream)(void *)s;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuStreamDestroy(CUstream hStream)
{
	LS_TRY(ls_enter());
	struct ls_stream *s = ls_stream_find(hStream);
	LS_ENSURE(s, CUDA_ERROR_INVALID_HANDLE);
	pthread_mutex_lock(&ls_lock);
	LS_UNLINK(ls_streams, s);
	pthread_mutex_unlock(&ls_lock);
	/* What was queued still runs; the thread leaves once the queue is empty. */
	pthread_mutex_lock(&s->mu);
	s->stop = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuStreamSynchronize(CUstream hStream)
{
	LS_TRY(ls_enter());
	if (!hStream)
		return CUDA_SUCCESS; /* in the double, the legacy stream's work is synchronous */
	struct ls_stream *s = ls_stream_find(hStream);
	return s ? ls_stream_wait(s) : CUDA_ERROR_INVALID_HANDLE;
}

LS_EXPORT CUresult CUDAAPI cuMemcpyHtoDAsync(CUdeviceptr dstDevice, const void *srcHost,
					     size_t ByteCount, CUstream hStream)
{
	struct ls_ctx *c;
	LS_TRY(ls_enter_ctx(&c));
	struct ls_stream *s = hStream ? ls_stream_find(hStream) : NULL;
	LS_ENSURE(s || !hStream, CUDA_ERROR_INVALID_HANDLE);
	if (ByteCount == 0)
		return CUDA_SUCCESS;
	LS_ENSURE(srcHost, CUDA_ERROR_INVALID_VALUE);
	uintptr_t dst = (uintptr_t)dstDevice;
	int dev = s ? s->dev : c->dev;
	pthread_mutex_lock(&ls_lock);
	CUresult r = ls_check_device(dst, ByteCount, dev, PROT_WRITE);
	bool pinned = ls_range_find(ls_hostregs, (uintptr_t)srcHost, ByteCount) != NULL;
	pthread_mutex_unlock(&ls_lock);
	LS_TRY(r);
	/*
	 * From pageable memory the real driver waits for the stream, then
	 * returns once the source is staged, so the caller may reuse it at once:
	 * the double copies now.  From pinned memory the copy is truly
	 * asynchronous and the source must stay untouched until it completes:
	 * the double reads it later, on the stream's thread.
	 */
	if (s && pinned)
		return ls_stream_push(s, NULL, NULL, dst, srcHost, ByteCount);
	if (s)
		ls_stream_wait(s);
	return ls_copy((void *)dst, srcHost, ByteCount, dst, dev, PROT_WRITE);
}

LS_EXPORT CUresult CUDAAPI cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData)
{
	LS_TRY(ls_enter_ctx(NULL));
	LS_ENSURE(fn, CUDA_ERROR_INVALID_VALUE);
	if (!hStream) {
		/* Nothing is pending on the legacy stream in the double: run it now, driver barred. */
		ls_no_driver_calls = true;
		fn(userData);
		ls_no_driver_calls = false;
		return CUDA_SUCCESS;
	}
	struct ls_stream *s = ls_stream_find(hStream);
	LS_ENSURE(s, CUDA_ERROR_INVALID_HANDLE);
	return ls_stream_push(s, fn, userData, 0, NULL, 0);
}

/* ---- Events ---- */

/*
 * An event completes when the work queued on its stream before each
 * cuEventRecord has run: a marker queued behind that work counts it done.
 */
struct ls_event {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned long long recorded, completed;
};

static void ls_event_reached(void *arg)
{
	struct ls_event *e = arg;
	pthread_mutex_lock(&e->mu);
	e->completed++;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
}

LS_EXPORT CUresult CUDAAPI cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
	LS_TRY(ls_enter_ctx(NULL));
	LS_ENSURE(phEvent, CUDA_ERROR_INVALID_VALUE);
	(void)Flags; /* how a waiter waits (spin or block) changes nothing here */
	struct ls_event *e = calloc(1, sizeof(*e));
	LS_ENSURE(e, CUDA_ERROR_OUT_OF_MEMORY);
	pthread_mutex_init(&e->mu, NULL);
	pthread_cond_init(&e->cv, NULL);
	*phEvent = (CUevent)(void *)e;
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuEventRecord(CUevent hEvent, CUstream hStream)
{
	LS_TRY(ls_enter_ctx(NULL));
	struct ls_event *e = (struct ls_event *)(void *)hEvent;
	LS_ENSURE(e, CUDA_ERROR_INVALID_HANDLE);
	struct ls_stream *s = hStream ? ls_stream_find(hStream) : NULL;
	LS_ENSURE(s || !hStream, CUDA_ERROR_INVALID_HANDLE);
	pthread_mutex_lock(&e->mu);
	e->recorded++;
	pthread_mutex_unlock(&e->mu);
	if (!s) {
		ls_event_reached(e); /* the legacy stream has nothing pending in the double */
		return CUDA_SUCCESS;
	}
	return ls_stream_push(s, ls_event_reached, e, 0, NULL, 0);
}

LS_EXPORT CUresult CUDAAPI cuEventSynchronize(CUevent hEvent)
{
	LS_TRY(ls_enter());
	struct ls_event *e = (struct ls_event *)(void *)hEvent;
	LS_ENSURE(e, CUDA_ERROR_INVALID_HANDLE);
	/* Never recorded: done at once, as on the real driver. */
	pthread_mutex_lock(&e->mu);
	while (e->completed < e->recorded)
		pthread_cond_wait(&e->cv, &e->mu);
	pthread_mutex_unlock(&e->mu);
	return CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuEventDestroy(CUevent hEvent)
{
	LS_TRY(ls_enter());
	struct ls_event *e = (struct ls_event *)(void *)hEvent;
	LS_ENSURE(e, CUDA_ERROR_INVALID_HANDLE);
	/* The real driver frees it once its work is done; the double waits for that. */
	pthread_mutex_lock(&e->mu);
	while (e->completed < e->recorded)
		pthread_cond_wait(&e->cv, &e->mu);
	pthread_mutex_unlock(&e->mu);
	pthread_cond_destroy(&e->cv);
	pthread_mutex_destroy(&e->mu);
	free(e);
	return CUDA_SUCCESS;
}

/* ---- Pinned host memory ---- */

LS_EXPORT CUresult CUDAAPI cuMemHostRegister(void *p, size_t bytesize, unsigned int Flags)
{
	LS_TRY(ls_enter_ctx(NULL));
	const unsigned int known = CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP |
				   CU_MEMHOSTREGISTER_IOMEMORY | CU_MEMHOSTREGISTER_READ_ONLY;
	uintptr_t base = (uintptr_t)p;
	LS_ENSURE(p && bytesize > 0 && base + bytesize > base && !(Flags & ~known),
		  CUDA_ERROR_INVALID_VALUE);
	struct ls_range *r = calloc(1, sizeof(*r));
	LS_ENSURE(r, CUDA_ERROR_OUT_OF_MEMORY);
	r->base = base;
	r->size = bytesize;
	pthread_mutex_lock(&ls_lock);
	struct ls_range *h = ls_hostregs;
	while (h && !(base < h->base + h->size && h->base < base + bytesize))
		h = h->next;
	if (!h)
		LS_PUSH(ls_hostregs, r);
	pthread_mutex_unlock(&ls_lock);
	if (h)
		free(r);
	return h ? CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED : CUDA_SUCCESS;
}

LS_EXPORT CUresult CUDAAPI cuMemHostUnregister(void *p)
{
	LS_TRY(ls_enter_ctx(NULL));
	pthread_mutex_lock(&ls_lock);
	struct ls_range *h = ls_hostregs;
	while (h && h->base != (uintptr_t)p)
		h = h->next;
	bool found = h != NULL;
	if (found)
		LS_UNLINK(ls_hostregs, h);
	pthread_mutex_unlock(&ls_lock);
	free(h);
	return found ? CUDA_SUCCESS : CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
}

/* ---- Test API ---- */

LS_EXPORT unsigned long long ls_cuda_double_calls(void)
{
	return atomic_load(&ls_calls);
}

LS_EXPORT void ls_cuda_double_reset_calls(void)
{
	atomic_store(&ls_calls, 0);
}

LS_EXPORT unsigned long long ls_cuda_double_used(int ordinal)
{
	if (ordinal < 0 || ordinal >= LS_MAX_DEVICES)
		return 0;
	pthread_mutex_lock(&ls_lock);
	unsigned long long v = ls_used[ordinal];
	pthread_mutex_unlock(&ls_lock);
	return v;
}
