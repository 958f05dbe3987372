/*
 * The CUDA path of lsk as the rest of the library sees it: plain C, no CUDA
 * type.  kernels/lsk_registry.c forwards lsk_cuda_available and
 * lsk_cuda_apply here when the path is built; the GPU tests and benchmarks
 * call the _ex form to force one path or the other.
 */
#ifndef LSK_CUDA_H
#define LSK_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "lsk.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Segments of at least this many tokens, whose adapter has the same dtype as
 * the activations, go to cuBLAS (cublasGemmEx) for the shrink when the caller
 * passes a handle; shorter ones go to the shrink kernel.  The expand is the
 * kernel for every token (see cublas_path.cu).
 *
 * 64 lies between the crossovers measured on an H200 (BENCHMARKS.md,
 * bench_kernels_cuda's "prefill" table: cuBLAS stays faster from L = 512 at
 * rank 16 and from L = 16 at rank 64 on one machine, from L = 48 at rank 16
 * on another).  The kernel reads A once per group of 4 tokens while cuBLAS
 * tiles with tensor cores, and cuBLAS's fixed cost (a few microseconds of
 * launch and heuristics) is repaid after a few dozen tokens.  A change to
 * the prefill kernels moves the crossover: set this from that table again.
 */
#define LSK_CUDA_CUBLAS_MIN_TOKENS 64

/*
 * 0 when a device is usable, LS_E_NO_DEVICE otherwise (no driver, no device,
 * or no kernel image for the device).  why, when not NULL, receives a
 * sentence saying which; why_size bytes at most, NUL included.
 */
int lsk_cuda_available_impl(char *why, size_t why_size);

/* lsk_cuda_apply with the default cuBLAS threshold. */
int lsk_cuda_apply_impl(const lsk_lora *dev, const lsk_lora *host,
                        const lsk_batch *dev_batch, const lsk_batch *host_batch,
                        const void *x, void *y, void *workspace, size_t workspace_size,
                        void *stream, void *cublas);

/*
 * lsk_cuda_apply with the threshold given: segments of at least
 * cublas_min_tokens tokens use cuBLAS (when cublas is not NULL and the
 * dtypes allow it).  1 sends every eligible segment to cuBLAS; INT32_MAX
 * none.  For tests and benchmarks.
 */
int lsk_cuda_apply_ex(const lsk_lora *dev, const lsk_lora *host,
                      const lsk_batch *dev_batch, const lsk_batch *host_batch,
                      const void *x, void *y, void *workspace, size_t workspace_size,
                      void *stream, void *cublas, int32_t cublas_min_tokens);

#ifdef __cplusplus
}
#endif

#endif
