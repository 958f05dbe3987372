/*
 * liblorastore_cuda: device plans (lorastore_cuda.h).
 *
 * A device plan is the host plan's layout (plan_layout.h, built from the
 * adapters' tables through liblorastore's public API; its tensor pointers
 * are device addresses) plus a copy of the layout's arrays on the adapters'
 * GPU, made once.  The kernels (lsk_cuda_apply) read the device copy; the
 * checks and the choice of kernels read the host mirror, so an apply reads
 * no device memory on the host and makes no allocation.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "lorastore_cuda.h"
#include "ls_error.h"
#include "lsk.h"
#include "plan_layout.h"

#define LS_PUBLIC __attribute__((visibility("default")))

struct lorastore_cuda_plan {
	struct ls_plan_layout layout;    /* the host mirror */
	int device;                      /* CUDA ordinal of the adapters' GPU */
	void *dev_arrays;                /* layout.arrays on the GPU, then the counter */
	uint32_t *bad;                   /* device: indices found out of range */
	lsk_lora dev[LSK_MAX_SLICES];    /* layout.groups[g].lora, arrays on the GPU */
};

/*
 * A failed runtime call: reported on stderr, and cleared from CUDA's
 * last-error state unless the caller had an error of its own pending there.
 */
static int ls_cuda_fail(const char *call, cudaError_t e, bool caller_pending)
{
	fprintf(stderr, "lorastore_cuda: %s failed: %s (%s)\n", call, cudaGetErrorString(e),
		cudaGetErrorName(e));
	if (!caller_pending)
		(void)cudaGetLastError();
	return e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ? LS_E_NO_DEVICE
									  : LS_E_DEVICE;
}

/* Make `device` current for a call; *prev gets what was. */
static cudaError_t ls_cuda_enter(int device, int *prev)
{
	cudaError_t e = cudaGetDevice(prev);
	if (e == cudaSuccess && *prev != device)
		e = cudaSetDevice(device);
	return e;
}

static void ls_cuda_leave(int device, int prev)
{
	if (prev != device)
		(void)cudaSetDevice(prev);
}

/* The device copy of a pointer into the layout's arrays. */
static void *ls_on_dev(const lorastore_cuda_plan *p, const void *host)
{
	return (char *)p->dev_arrays + ((const char *)host - (const char *)p->layout.arrays);
}

LS_PUBLIC void lorastore_cuda_plan_free(lorastore_cuda_plan *plan)
{
	if (!plan)
		return;
	if (plan->dev_arrays) {
		int prev;
		bool pending = cudaPeekAtLastError() != cudaSuccess;
		if (ls_cuda_enter(plan->device, &prev) == cudaSuccess) {
			cudaError_t e = cudaFree(plan->dev_arrays);
			if (e != cudaSuccess)
				ls_cuda_fail("cudaFree", e, pending);
			ls_cuda_leave(plan->device, prev);
		}
	}
	ls_plan_layout_free(&plan->layout);
	free(plan);
}

/* Copy the layout's arrays and a zeroed counter to the plan's GPU. */
static int ls_plan_upload(lorastore_cuda_plan *p)
{
	const bool pending = cudaPeekAtLastError() != cudaSuccess;
	int prev;
	cudaError_t e = ls_cuda_enter(p->device, &prev);
	if (e != cudaSuccess)
		return ls_cuda_fail("cudaSetDevice", e, pending);
	/* The counter after the arrays, at a 256-byte boundary. */
	size_t counter = (p->layout.arrays_bytes + 255) & ~(size_t)255;
	const char *call = "cudaMalloc";
	e = cudaMalloc(&p->dev_arrays, counter + 256);
	if (e == cudaSuccess) {
		call = "cudaMemcpy";
		e = cudaMemcpy(p->dev_arrays, p->layout.arrays, p->layout.arrays_bytes,
			       cudaMemcpyHostToDevice);
	}
	if (e == cudaSuccess) {
		p->bad = (uint32_t *)((char *)p->dev_arrays + counter);
		call = "cudaMemset";
		e = cudaMemset(p->bad, 0, sizeof(*p->bad));
	}
	ls_cuda_leave(p->device, prev);
	return e == cudaSuccess ? 0 : ls_cuda_fail(call, e, pending);
}

LS_PUBLIC int lorastore_cuda_plan_create(lorastore_adapter *const *adapters, size_t n_adapters,
					 const float *factors, uint64_t in,
					 const lorastore_slice *slices, size_t n_slices,
					 lorastore_cuda_plan **out)
{
	_Static_assert(offsetof(lorastore_cuda_plan, layout) == 0, "the layout comes first");
	if (!out)
		return -EINVAL;
	*out = NULL;
	lorastore_cuda_plan *p = NULL;
	int device = -1;
	int rc = ls_plan_layout_new(sizeof(*p), adapters, n_adapters, factors, in, slices, n_slices,
				    LS_TIER_DEVICE, &device, (void **)&p);
	if (rc)
		return rc;
	p->device = device;
	rc = lsk_cuda_available();
	if (rc == 0)
		rc = ls_plan_upload(p);
	if (rc) {
		lorastore_cuda_plan_free(p);
		return rc;
	}
	for (size_t g = 0; g < p->layout.n_groups; g++) {
		const lsk_lora *h = &p->layout.groups[g].lora;
		lsk_lora *d = &p->dev[g];
		*d = *h;
		d->scale = ls_on_dev(p, h->scale);
		for (int32_t s = 0; s < h->n_slices; s++) {
			d->slices[s].a = ls_on_dev(p, h->slices[s].a);
			d->slices[s].b = ls_on_dev(p, h->slices[s].b);
			d->slices[s].rank = ls_on_dev(p, h->slices[s].rank);
		}
	}
	*out = p;
	return 0;
}

LS_PUBLIC int lorastore_cuda_plan_device(const lorastore_cuda_plan *plan)
{
	return plan ? plan->device : -1;
}

LS_PUBLIC size_t lorastore_cuda_plan_workspace_size(const lorastore_cuda_plan *plan,
						    size_t n_tokens)
{
	return plan ? ls_plan_layout_workspace(&plan->layout, n_tokens) : 0;
}

LS_PUBLIC int lorastore_cuda_apply(const lorastore_cuda_plan *plan,
				   const lorastore_cuda_batch *batch, lorastore_dtype act_dtype,
				   const void *x, size_t ldx, void *y, size_t ldy, void *workspace,
				   size_t workspace_size, void *stream, void *cublas)
{
	static const lsk_segment no_segment = {0, 0, -1};

	if (!plan || !batch)
		return -EINVAL;
	lsk_dtype adt;
	int crc = ls_plan_batch_check(act_dtype, batch->n_tokens, batch->n_segments, ldx, ldy, &adt);
	if (crc)
		return crc;
	if (batch->segments && !batch->host_segments)
		return -EINVAL;
	_Static_assert(sizeof(lorastore_segment) == sizeof(lsk_segment) &&
			       offsetof(lorastore_segment, adapter) == offsetof(lsk_segment, adapter),
		       "lorastore_segment and lsk_segment differ");
	lsk_batch db = {
		.n_tokens = (int64_t)batch->n_tokens,
		.token_adapter = batch->token_adapter,
		.n_segments = (int32_t)batch->n_segments,
		.segments = (const lsk_segment *)batch->segments,
		.bad_index_count = plan->bad,
	};
	lsk_batch hb = {
		.n_tokens = (int64_t)batch->n_tokens,
		.n_segments = batch->segments ? (int32_t)batch->n_segments : 0,
		.segments = batch->segments ? (const lsk_segment *)batch->host_segments : NULL,
	};

	const size_t n_groups = plan->layout.n_groups;
	lsk_lora host[LSK_MAX_SLICES], dev[LSK_MAX_SLICES];
	for (size_t g = 0; g < n_groups; g++) {
		host[g] = plan->layout.groups[g].lora;
		dev[g] = plan->dev[g];
		host[g].act_dtype = dev[g].act_dtype = adt;
		host[g].ldx = dev[g].ldx = (int64_t)ldx;
		host[g].ldy = dev[g].ldy = (int64_t)ldy;
	}
	/*
	 * With several groups, every one is checked before the first is
	 * enqueued, so that an error enqueues nothing (the first group's call
	 * checks x, y and the workspace, which are the same for all).
	 */
	if (n_groups > 1) {
		lsk_batch cb = hb;
		if (!cb.segments && cb.n_tokens > 0)
			cb.segments = &no_segment; /* device indices: checked on the device */
		for (size_t g = 0; g < n_groups; g++) {
			int rc = lsk_check(&host[g], &cb);
			if (rc)
				return rc;
		}
		if (workspace_size < ls_plan_layout_workspace(&plan->layout, batch->n_tokens))
			return LS_E_SHAPE;
	}

	const bool pending = cudaPeekAtLastError() != cudaSuccess;
	int prev;
	cudaError_t e = ls_cuda_enter(plan->device, &prev);
	if (e != cudaSuccess)
		return ls_cuda_fail("cudaSetDevice", e, pending);
	int rc = 0;
	for (size_t g = 0; g < n_groups && rc == 0; g++) {
		rc = lsk_cuda_apply(&dev[g], &host[g], &db, &hb, x, y, workspace, workspace_size,
				    stream, cublas);
		db.bad_index_count = NULL; /* each index is counted once, by the first group */
	}
	ls_cuda_leave(plan->device, prev);
	return rc;
}

LS_PUBLIC int lorastore_cuda_plan_bad_indices(lorastore_cuda_plan *plan, void *stream, int reset,
					      uint32_t *count)
{
	if (!plan || !count)
		return -EINVAL;
	const bool pending = cudaPeekAtLastError() != cudaSuccess;
	int prev;
	cudaError_t e = ls_cuda_enter(plan->device, &prev);
	if (e != cudaSuccess)
		return ls_cuda_fail("cudaSetDevice", e, pending);
	cudaStream_t st = (cudaStream_t)stream;
	const char *call = "cudaMemcpyAsync";
	e = cudaMemcpyAsync(count, plan->bad, sizeof(*count), cudaMemcpyDeviceToHost, st);
	if (e == cudaSuccess && reset) {
		call = "cudaMemsetAsync";
		e = cudaMemsetAsync(plan->bad, 0, sizeof(*plan->bad), st);
	}
	if (e == cudaSuccess) {
		call = "cudaStreamSynchronize";
		e = cudaStreamSynchronize(st);
	}
	ls_cuda_leave(plan->device, prev);
	return e == cudaSuccess ? 0 : ls_cuda_fail(call, e, pending);
}
