/*
 * The CUDA memory backend: one per GPU, its slabs CUDA VMM allocations
 * exported as POSIX file descriptors (backend_cuda.c).  The driver is
 * resolved at run time (common/cuda/ls_cudrv.h), so a daemon built with this
 * backend starts and serves on a machine without a GPU or driver.  A build
 * without the CUDA path answers LS_E_NOT_BUILT.
 */
#ifndef LS_BACKEND_CUDA_H
#define LS_BACKEND_CUDA_H

#include "backend.h"

#define LS_CUDA_MAX_DEVICES 8

/* A GPU as the daemon sees it. */
struct ls_cuda_device {
	int ordinal;               /* in this process's CUDA numbering */
	char uuid[48];             /* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
	char name[96];
	bool usable;               /* VMM with POSIX file descriptor handles */
	uint64_t free_bytes, total_bytes;
};

/*
 * The GPUs of this machine, at most LS_CUDA_MAX_DEVICES.  0 with *n (maybe
 * 0), or LS_E_NO_DEVICE / LS_E_NOT_BUILT with err saying why.
 */
int ls_cuda_devices(struct ls_cuda_device *out, int *n, struct ls_err *err);

/* A backend on GPU ordinal. */
int ls_backend_cuda_create(int ordinal, struct ls_backend *out, struct ls_err *err);

#endif
