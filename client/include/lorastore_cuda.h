/*
 * liblorastore_cuda: applying device-resident adapters on the GPU.
 *
 * liblorastore gives a GPU worker the daemon's single device copy of each
 * adapter (lorastore_acquire_tier with LORASTORE_TIER_DEVICE): tensor
 * pointers are device addresses in the daemon's shared memory.  This
 * library applies them, y += scale * (x A^T) B^T for a batch in which every
 * token or segment may use another adapter, with lorastore's CUDA kernels
 * (kernels/cuda) and, for long segments, cuBLAS.  It is the only part of
 * lorastore linked with the CUDA runtime and cuBLAS; liblorastore itself
 * needs neither.
 *
 * Build with pkg-config lorastore-cuda (it requires lorastore), or CMake's
 * find_package(lorastore) and the target lorastore::lorastore_cuda.
 *
 * Caveats:
 * - Context: a plan belongs to the GPU its adapters are held on (all on
 *   one).  Its arrays live there, allocated in that GPU's primary context
 *   (the CUDA runtime's); x, y, the workspace, the batch's index arrays and
 *   the stream must be of that GPU too.  The adapters' tensor pointers are
 *   valid in every context of the process on that GPU.
 * - Leases: a plan borrows its adapters; keep them held while the plan is
 *   used, and release them (and free the plan) only after the kernels that
 *   read them have finished (synchronize the stream or wait on an event).
 * - Streams and graphs: lorastore_cuda_apply enqueues on the caller's
 *   stream and returns; it allocates nothing and synchronizes nothing, so a
 *   call can be captured in a CUDA graph (the graph then holds the batch's
 *   shape: its host segments are read at capture).  Threads may apply one
 *   plan at once, each with its own workspace and y.
 * - cuBLAS: a handle passed to lorastore_cuda_apply is used for the shrink
 *   of long segments; its stream and pointer mode are set for the call and
 *   put back before it returns, and nothing else of it (its workspace, its
 *   math mode) is changed.  Do not use that handle from another thread
 *   during the call.  Without a handle, the kernels do everything.
 * - Runtime: the library carries its own (static) copy of the CUDA
 *   runtime, so it works beside any runtime the application links.  Device
 *   memory, streams, events and graphs are the driver's and are shared;
 *   CUDA's last-error state is per runtime copy, so the library never
 *   returns, reads or clears an error the caller left pending in its own.
 * - Errors: 0, a negative errno, or a negative LORASTORE_E_* code
 *   (lorastore_strerror).  A launch that fails is LORASTORE_E_DEVICE, with
 *   the call and CUDA's reason on stderr.
 */
#ifndef LORASTORE_CUDA_H
#define LORASTORE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <lorastore.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lorastore_cuda_plan lorastore_cuda_plan;

/*
 * Prepare device-held adapters[0..n_adapters) (indices 0..n-1 in batches)
 * for the slices[0..n_slices) (at most 8) of a layer whose input has `in`
 * columns, as lorastore_plan_create does for host adapters: factors (NULL:
 * all 1) multiplies each adapter's scale; an adapter without a slice's
 * module adds nothing there; every lora_A is [r, in] and every lora_B
 * [out, r] with r at most 512, in one dtype (F32, F16 or BF16).  The
 * per-(adapter, slice) pointer, rank and scale arrays are built once and
 * copied to the adapters' GPU (one allocation, and a counter of indices out
 * of range), synchronously.
 * Errors: -EINVAL (null pointer, no slice, too many), LORASTORE_E_SHAPE,
 * LORASTORE_E_DTYPE, LORASTORE_E_TIER (an adapter held on the host tier, or
 * adapters on different GPUs), LORASTORE_E_NO_DEVICE (no usable GPU, or no
 * kernel for it), LORASTORE_E_DEVICE (an allocation or copy failed),
 * -ENOMEM.
 */
int lorastore_cuda_plan_create(lorastore_adapter *const *adapters, size_t n_adapters,
			       const float *factors, uint64_t in, const lorastore_slice *slices,
			       size_t n_slices, lorastore_cuda_plan **out);

/*
 * Free a plan and its device memory (NULL is a no-op), after the work that
 * uses it has finished.  The adapters stay held.
 */
void lorastore_cuda_plan_free(lorastore_cuda_plan *plan);

/* The CUDA ordinal (in this process) of the GPU the plan belongs to. */
int lorastore_cuda_plan_device(const lorastore_cuda_plan *plan);

/*
 * Device workspace bytes lorastore_cuda_apply needs for batches of up to
 * n_tokens tokens (0 for a NULL plan).
 */
size_t lorastore_cuda_plan_workspace_size(const lorastore_cuda_plan *plan, size_t n_tokens);

/*
 * The tokens of one call: rows 0..n_tokens-1 of x and y.  Decode gives one
 * adapter index per token (token_adapter, device memory, -1: none); prefill
 * gives segments (device memory, sorted by start, not overlapping) and the
 * same segments in host memory (host_segments), from which the call chooses
 * its kernels and which segments go to cuBLAS.  Exactly one of
 * token_adapter and segments is set, unless n_tokens is 0.
 */
typedef struct lorastore_cuda_batch {
	size_t n_tokens;
	const int32_t *token_adapter;            /* device: [n_tokens], or NULL */
	size_t n_segments;
	const lorastore_segment *segments;       /* device: [n_segments], or NULL */
	const lorastore_segment *host_segments;  /* host: the same segments */
} lorastore_cuda_batch;

/*
 * Enqueue y[t, slice columns] += scale_a * (x[t, :] A_a^T) B_a^T for every
 * token t of adapter a on `stream` (a cudaStream_t; NULL: the default
 * stream) and return without waiting.  x is [n_tokens][ldx] and y
 * [n_tokens][ldy] elements of act_dtype (F32, F16 or BF16) in device
 * memory; accumulation is F32 and y is rounded once.  workspace is device
 * memory of lorastore_cuda_plan_workspace_size(plan, n_tokens) bytes,
 * aligned to 256.  cublas is a cublasHandle_t (see the Caveats) or NULL.
 * Columns of y outside the slices, and tokens of adapter -1, are left
 * untouched.  A device index outside [-1, n_adapters) is skipped and
 * counted (lorastore_cuda_plan_bad_indices).
 * Errors (before anything is enqueued): -EINVAL (null pointer, a misaligned
 * workspace, x or y), LORASTORE_E_SHAPE (ldx < in, a slice past ldy, a host
 * segment out of range, a small workspace), LORASTORE_E_DTYPE (act_dtype);
 * then LORASTORE_E_DEVICE when a launch or cuBLAS call fails.
 */
int lorastore_cuda_apply(const lorastore_cuda_plan *plan, const lorastore_cuda_batch *batch,
			 lorastore_dtype act_dtype, const void *x, size_t ldx, void *y, size_t ldy,
			 void *workspace, size_t workspace_size, void *stream, void *cublas);

/*
 * The number of batch indices the device found out of range since the
 * plan was made or last reset, in *count: the work enqueued on `stream`
 * before this call is counted (it waits for that stream).  With reset, the
 * counter is set back to 0 after it is read.
 * Errors: -EINVAL, LORASTORE_E_DEVICE.
 */
int lorastore_cuda_plan_bad_indices(lorastore_cuda_plan *plan, void *stream, int reset,
				    uint32_t *count);

#ifdef __cplusplus
}
#endif

#endif
