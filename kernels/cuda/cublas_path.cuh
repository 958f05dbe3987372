/*
 * The cuBLAS path: the shrink of long single-adapter segments (prefill) as
 * one cublasGemmEx per slice, written into the same F32 workspace the
 * shrink kernel fills.  The expand kernel then runs on every token.
 */
#pragma once

#include <cublas_v2.h>

#include "common.cuh"

/*
 * Whether the operation may use cuBLAS at all: x and the adapters share a
 * dtype (cublasGemmEx takes A and B of one type) and the sizes fit its int
 * arguments.
 */
bool lsk_cublas_eligible(const lsk_lora *host);

/*
 * Shrinks, with cuBLAS on stream, every segment of at least min_tokens
 * tokens that has an adapter: v[t][s][r] for its tokens, every slice where
 * the adapter's rank is not 0.  host is the host mirror (its A addresses are
 * device addresses); segs are the host copy of the segments, already
 * checked.  Returns 0 or LS_E_DEVICE (with a message on stderr).
 */
int lsk_cublas_shrink(cublasHandle_t handle, cudaStream_t stream, const lsk_lora *host,
                      const lsk_segment *segs, int32_t n_segments, int32_t min_tokens,
                      const void *x, float *v);
