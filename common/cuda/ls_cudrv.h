/*
 * The CUDA driver, resolved at run time.
 *
 * lorastored and liblorastore never link libcuda: a daemon or a client on a
 * machine without a GPU or driver must start and serve.  ls_cudrv_load()
 * opens the driver with dlopen (libcuda.so.1, or the file that
 * LORASTORE_CUDA_DRIVER names: the test double of tests/support) and fills a
 * table with every entry point the daemon's CUDA backend and the client's
 * device mapping use.  <cuda.h> gives the types and prototypes only.
 *
 * The table is process-wide and read-only once loaded; loading is
 * thread-safe and happens once per process: a failure is final, and a later
 * change of LORASTORE_CUDA_DRIVER is not seen.  The driver does not survive
 * a fork: a child forked after the load must not use the table (it inherits
 * it, and every call fails or worse); fork first, then load in each process.
 */
#ifndef LS_CUDRV_H
#define LS_CUDRV_H

#include <cuda.h>
#include <stdbool.h>

/*
 * Per-thread default streams rename entry points (cuMemcpyHtoD to
 * cuMemcpyHtoD_v2_ptds, ...): the table would differ between files and
 * resolve other symbols than it declares.
 */
#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
#error "ls_cudrv.h needs the legacy default stream names (no per-thread default stream)"
#endif

#include "ls_error.h"

/*
 * Every entry point used, spelt as the API spells it.  cuda.h #defines
 * several of these names to versioned exports (cuMemAlloc to cuMemAlloc_v2
 * and so on); the macro renames the member and the string looked up alike,
 * so the symbol resolved is always the one whose prototype the header
 * gives.  A driver double must export exactly these symbols.
 */
#define LS_CUDRV_FUNCS(X)                                                                  \
	X(cuGetErrorName) X(cuGetErrorString) X(cuInit) X(cuDriverGetVersion)             \
	X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName) X(cuDeviceGetUuid)          \
	X(cuDeviceGetAttribute) X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease)  \
	X(cuCtxSetCurrent) X(cuCtxGetCurrent) X(cuCtxGetDevice) X(cuMemGetInfo)           \
	X(cuMemGetAllocationGranularity) X(cuMemCreate) X(cuMemRelease)                   \
	X(cuMemExportToShareableHandle) X(cuMemImportFromShareableHandle)                 \
	X(cuMemAddressReserve) X(cuMemAddressFree) X(cuMemMap) X(cuMemUnmap)              \
	X(cuMemSetAccess) X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemcpyHtoDAsync)            \
	X(cuStreamCreate) X(cuStreamDestroy) X(cuStreamSynchronize) X(cuLaunchHostFunc)   \
	X(cuEventCreate) X(cuEventRecord) X(cuEventSynchronize) X(cuEventDestroy)         \
	X(cuMemHostRegister) X(cuMemHostUnregister)

#define LS_CUDRV_MEMBER(fn) __typeof__(fn) *fn;
struct ls_cudrv {
	LS_CUDRV_FUNCS(LS_CUDRV_MEMBER)
	char path[256];            /* the file loaded */
	int version;               /* cuDriverGetVersion, e.g. 13000 */
};
#undef LS_CUDRV_MEMBER

/*
 * Load the driver (once) and cuInit it.  *out is the table.  Errors:
 * LS_E_NO_DEVICE with err saying why (no driver library, a symbol missing,
 * cuInit failing, for example with no device present).
 */
int ls_cudrv_load(const struct ls_cudrv **out, struct ls_err *err);

/* A driver result in words, "CUDA_ERROR_OUT_OF_MEMORY (out of memory)". */
const char *ls_cudrv_strerror(const struct ls_cudrv *d, CUresult r, char *buf, size_t cap);

/*
 * Record a failed driver call in err: the call, the result in words, and
 * the file and line.  Returns code (LS_E_DEVICE, or -ENOMEM for
 * CUDA_ERROR_OUT_OF_MEMORY) so callers can return it.
 */
int ls_cudrv_fail(const struct ls_cudrv *d, struct ls_err *err, CUresult r, const char *call,
		  const char *file, int line);

/* Call a driver entry point; on failure record it and return from the caller. */
#define LS_CU(d, err, fn, ...)                                                             \
	do {                                                                               \
		CUresult ls_cu_r_ = (d)->fn(__VA_ARGS__);                                  \
		if (ls_cu_r_ != CUDA_SUCCESS)                                              \
			return ls_cudrv_fail((d), (err), ls_cu_r_, #fn, __FILE__, __LINE__); \
	} while (0)

/* A device's UUID as "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (buf of at least 41). */
void ls_cudrv_uuid_str(const CUuuid *u, char *buf, size_t cap);

#endif
