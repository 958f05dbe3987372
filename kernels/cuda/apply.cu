/*
 * The CUDA path's entry points (lsk_cuda.h): whether a device is usable, and
 * the apply, which checks the call on the host, then enqueues on the
 * caller's stream
 *
 *   1. the cuBLAS shrink of long segments (cublas_path.cu), when chosen;
 *   2. the shrink kernel for every other token with an adapter (shrink.cu);
 *   3. the expand kernel for every token with an adapter (expand.cu);
 *
 * and returns without waiting.  Nothing is allocated and nothing is
 * synchronized: the F32 shrink results go to the caller's workspace, laid
 * out as v[n_tokens][n_slices][max_rank].
 *
 * Errors: the checks return what lsk_check returns (-EINVAL, LS_E_SHAPE,
 * LS_E_DTYPE) before any CUDA call, so they work without a device; a failed
 * launch or cuBLAS call returns LS_E_DEVICE (LS_E_NO_DEVICE when the runtime
 * finds no device or driver), with file, line, call and reason on stderr.
 * Launches report their own result (cudaLaunchKernel's), so an error the
 * caller left pending in CUDA's last-error state is neither taken for ours
 * nor cleared; ours is cleared only when nothing of the caller's was
 * pending, so that the next call does not see it.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cublas_path.cuh"
#include "expand.cuh"
#include "ls_error.h"
#include "lsk_cuda.h"
#include "shrink.cuh"

/*
 * Segments whose mean length (over those with an adapter) is at least this
 * use the tiled kernels (LSK_SHRINK_TILE_SEGMENTS, LSK_EXPAND_TILE_SEGMENTS
 * tokens per block, sharing the adapter's rows); shorter ones, and decode,
 * use one token per block, which keeps many blocks in flight for small
 * batches.  A tile inside one segment costs one pass, a tile across a
 * boundary one pass per adapter, so tiling pays once segments are a tile
 * long or more.  Like LSK_CUDA_CUBLAS_MIN_TOKENS, to be checked on the H200
 * (bench_kernels_cuda's prefill table runs the kernel path on segments).
 */
#define LSK_CUDA_TILE_MIN_MEAN 16

int lsk_cuda_report(const char *file, int line, const char *call, const char *reason)
{
	fprintf(stderr, "lsk cuda: %s:%d: %s failed: %s\n", file, line, call, reason);
	return LS_E_DEVICE;
}

static int cuda_fail(const char *file, int line, const char *call, cudaError_t e)
{
	char reason[192];
	snprintf(reason, sizeof(reason), "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
	int rc = lsk_cuda_report(file, line, call, reason);
	if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
		return LS_E_NO_DEVICE;
	return rc;
}

#define LSK_CUDA_CHECK(call)                                                  \
	do {                                                                  \
		cudaError_t e_ = (call);                                      \
		if (e_ != cudaSuccess)                                        \
			return cuda_fail(__FILE__, __LINE__, #call, e_);      \
	} while (0)

__attribute__((format(printf, 3, 4))) static void say(char *why, size_t why_size,
                                                      const char *fmt, ...)
{
	if (!why || why_size == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, why_size, fmt, ap);
	va_end(ap);
}

int lsk_cuda_available_impl(char *why, size_t why_size)
{
	int count = 0;
	cudaError_t e = cudaGetDeviceCount(&count);
	if (e != cudaSuccess) {
		/* cudaErrorInsufficientDriver without a driver, cudaErrorNoDevice
		 * without a device: both mean "no GPU", never a crash. */
		(void)cudaGetLastError();
		say(why, why_size, "cudaGetDeviceCount: %s (%s)", cudaGetErrorString(e),
		    cudaGetErrorName(e));
		return LS_E_NO_DEVICE;
	}
	if (count < 1) {
		say(why, why_size, "cudaGetDeviceCount found no device");
		return LS_E_NO_DEVICE;
	}
	/* A device of an architecture the build has no image for (see
	 * CMAKE_CUDA_ARCHITECTURES) would fail every launch: say so now. */
	e = lsk_shrink_probe();
	if (e != cudaSuccess) {
		(void)cudaGetLastError();
		say(why, why_size, "no kernel for the current device: %s (%s)", cudaGetErrorString(e),
		    cudaGetErrorName(e));
		return LS_E_NO_DEVICE;
	}
	say(why, why_size, "%d device(s)", count);
	return 0;
}

/* Same scalars and shapes; the pointers differ (device vs host arrays). */
static int check_mirror(const lsk_lora *dev, const lsk_lora *host)
{
	if (dev->act_dtype != host->act_dtype || dev->weight_dtype != host->weight_dtype)
		return LS_E_DTYPE;
	if (dev->in != host->in || dev->ldx != host->ldx || dev->ldy != host->ldy ||
	    dev->n_adapters != host->n_adapters || dev->max_rank != host->max_rank ||
	    dev->n_slices != host->n_slices)
		return LS_E_SHAPE;
	if (dev->n_adapters > 0 && !dev->scale)
		return -EINVAL;
	for (int32_t s = 0; s < host->n_slices; s++) {
		const lsk_slice *d = &dev->slices[s];
		const lsk_slice *h = &host->slices[s];
		if (d->out_offset != h->out_offset || d->out != h->out)
			return LS_E_SHAPE;
		if (dev->n_adapters > 0 && (!d->a || !d->b || !d->rank))
			return -EINVAL;
	}
	return 0;
}

/*
 * The checks, on what the host can read.  The host mirror of a decode batch
 * has no token indices (they are in device memory), so the batch lsk_check
 * sees then is the same n_tokens with an empty list of segments: the
 * operation and n_tokens are checked, the indices are left to the device,
 * which skips an index out of range.  When the caller does give host
 * indices, they are checked too.
 */
static int check_call(const lsk_lora *dev, const lsk_lora *host, const lsk_batch *dev_batch,
                      const lsk_batch *host_batch, const void *x, void *y, void *workspace,
                      size_t workspace_size)
{
	static const lsk_segment no_segment = {0, 0, -1};

	if (!dev || !host || !dev_batch || !host_batch)
		return -EINVAL;
	/* Exactly one of the index arrays, as lsk_check says. */
	if (dev_batch->token_adapter && dev_batch->segments)
		return LS_E_SHAPE;
	if (!dev_batch->token_adapter && !dev_batch->segments &&
	    (dev_batch->n_tokens > 0 || dev_batch->n_segments > 0))
		return -EINVAL;
	if (dev_batch->n_tokens != host_batch->n_tokens)
		return LS_E_SHAPE;

	lsk_batch hb = *host_batch;
	if (dev_batch->token_adapter) {
		if (dev_batch->n_segments != 0)
			return LS_E_SHAPE;
		if (!hb.token_adapter) {
			hb.n_segments = 0;
			hb.segments = &no_segment;
		}
	} else if (dev_batch->segments) {
		if (!hb.segments)
			return -EINVAL;
		if (hb.token_adapter)
			return LS_E_SHAPE;
		if (dev_batch->n_segments != hb.n_segments)
			return LS_E_SHAPE;
	}
	int rc = lsk_check(host, &hb);
	if (rc)
		return rc;
	rc = check_mirror(dev, host);
	if (rc)
		return rc;

	/* Grid x counts token tiles; segment starts are int32 anyway. */
	if (host_batch->n_tokens > INT32_MAX)
		return LS_E_SHAPE;
	if (!workspace || (uintptr_t)workspace % 256 != 0)
		return -EINVAL;
	size_t need = lsk_workspace_size(host, host_batch->n_tokens);
	if (need == SIZE_MAX || workspace_size < need)
		return LS_E_SHAPE;
	if (host_batch->n_tokens == 0)
		return 0;
	if (!x || !y)
		return -EINVAL;
	/* The kernels read and write whole elements. */
	if ((uintptr_t)x % lsk_dtype_size(host->act_dtype) != 0 ||
	    (uintptr_t)y % lsk_dtype_size(host->act_dtype) != 0)
		return -EINVAL;
	return 0;
}

static int apply_checked(const lsk_lora *dev, const lsk_lora *host, const lsk_batch *dev_batch,
                         const lsk_batch *host_batch, const void *x, void *y, void *workspace,
                         void *stream, void *cublas, int32_t cublas_min_tokens);

int lsk_cuda_apply_ex(const lsk_lora *dev, const lsk_lora *host, const lsk_batch *dev_batch,
                      const lsk_batch *host_batch, const void *x, void *y, void *workspace,
                      size_t workspace_size, void *stream, void *cublas, int32_t cublas_min_tokens)
{
	int rc = check_call(dev, host, dev_batch, host_batch, x, y, workspace, workspace_size);
	if (rc)
		return rc;
	/* Peeking neither clears nor changes the caller's pending error. */
	const bool caller_pending = cudaPeekAtLastError() != cudaSuccess;
	rc = apply_checked(dev, host, dev_batch, host_batch, x, y, workspace, stream, cublas,
	                   cublas_min_tokens);
	if (rc && !caller_pending)
		(void)cudaGetLastError();
	return rc;
}

/* The launches of a call that check_call accepted. */
static int apply_checked(const lsk_lora *dev, const lsk_lora *host, const lsk_batch *dev_batch,
                         const lsk_batch *host_batch, const void *x, void *y, void *workspace,
                         void *stream, void *cublas, int32_t cublas_min_tokens)
{
	int rc;
	const int64_t n_tokens = host_batch->n_tokens;
	if (n_tokens == 0 || host->n_adapters == 0)
		return 0; /* no token can have an adapter */

	cudaStream_t st = static_cast<cudaStream_t>(stream);
	float *v = static_cast<float *>(workspace);
	if (cublas_min_tokens < 1)
		cublas_min_tokens = 1;

	lsk_dev_batch db;
	db.token_adapter = dev_batch->token_adapter;
	db.segments = dev_batch->token_adapter ? NULL : dev_batch->segments;
	db.n_segments = dev_batch->token_adapter ? 0 : dev_batch->n_segments;
	db.skip_min_len = INT32_MAX;
	db.n_tokens = n_tokens;
	db.bad_index = dev_batch->bad_index_count;

	int tile_shrink = 1;
	int tile_expand = 1;
	bool use_cublas = false;
	bool kernel_shrink = true;
	if (db.segments) {
		/* The host copy of the segments decides the kernels' shape and
		 * which segments go to cuBLAS; the device applies the same rule
		 * to its copy (the two are the same, lsk.h says). */
		const lsk_segment *sg = host_batch->segments;
		int64_t covered = 0, n_with = 0, n_short = 0, n_long = 0;
		for (int32_t i = 0; i < host_batch->n_segments; i++) {
			if (sg[i].adapter < 0 || sg[i].len == 0)
				continue;
			covered += sg[i].len;
			n_with++;
			if (sg[i].len >= cublas_min_tokens)
				n_long++;
			else
				n_short++;
		}
		if (n_with == 0)
			return 0;
		if (covered >= (int64_t)LSK_CUDA_TILE_MIN_MEAN * n_with) {
			tile_shrink = LSK_SHRINK_TILE_SEGMENTS;
			tile_expand = LSK_EXPAND_TILE_SEGMENTS;
		}
		use_cublas = cublas && n_long > 0 && lsk_cublas_eligible(host);
		/* When cuBLAS takes every segment, the shrink kernel has nothing
		 * to do. */
		kernel_shrink = !use_cublas || n_short > 0;
	}

	/* x's rows can be read 16 bytes at a time (A's rows are checked on the
	 * device, per adapter). */
	const size_t esize = lsk_dtype_size(host->act_dtype);
	const bool x_vec = (uintptr_t)x % 16 == 0 && (host->ldx * (int64_t)esize) % 16 == 0 &&
	                   host->in % LSK_CUDA_VEC == 0;
	int64_t max_out = 0;
	for (int32_t s = 0; s < host->n_slices; s++)
		if (host->slices[s].out > max_out)
			max_out = host->slices[s].out;

	if (use_cublas) {
		rc = lsk_cublas_shrink(static_cast<cublasHandle_t>(cublas), st, host,
		                       host_batch->segments, host_batch->n_segments, cublas_min_tokens, x, v);
		if (rc)
			return rc;
		db.skip_min_len = cublas_min_tokens;
	}
	if (kernel_shrink)
		LSK_CUDA_CHECK(lsk_shrink_launch(*dev, db, x, x_vec, v, tile_shrink, st));
	db.skip_min_len = INT32_MAX;
	LSK_CUDA_CHECK(lsk_expand_launch(*dev, db, v, y, tile_expand, max_out, st));
	return 0;
}

int lsk_cuda_apply_impl(const lsk_lora *dev, const lsk_lora *host, const lsk_batch *dev_batch,
                        const lsk_batch *host_batch, const void *x, void *y, void *workspace,
                        size_t workspace_size, void *stream, void *cublas)
{
	return lsk_cuda_apply_ex(dev, host, dev_batch, host_batch, x, y, workspace, workspace_size,
	                         stream, cublas, LSK_CUDA_CUBLAS_MIN_TOKENS);
}
