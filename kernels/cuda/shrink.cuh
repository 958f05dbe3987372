/*
 * The shrink: v[t][s][r] = sum_k x[t][k] * A_s[a_t][r][k], in F32, for every
 * token t with an adapter a_t, every slice s and every r below the adapter's
 * rank in that slice.  v is the workspace, a dense [n_tokens][n_slices]
 * [max_rank] array of F32; entries the shrink does not write are not read.
 */
#pragma once

#include "common.cuh"

/* Ranks of one slice that one block computes. */
#define LSK_SHRINK_RANKS 8
/* Tokens per block when the batch is made of segments (they share A's rows). */
#define LSK_SHRINK_TILE_SEGMENTS 4

/*
 * Launches the shrink on stream.  tile: tokens per block, 1 or
 * LSK_SHRINK_TILE_SEGMENTS.  x_vec: x's rows may be read 8 elements at a
 * time (x and ldx * element size are multiples of 16 bytes and in is a
 * multiple of 8).  Returns the launch's error.
 */
cudaError_t lsk_shrink_launch(const lsk_lora &l, const lsk_dev_batch &b, const void *x,
                              bool x_vec, float *v, int tile, cudaStream_t stream);

/* cudaSuccess when the current device can run these kernels. */
cudaError_t lsk_shrink_probe(void);
