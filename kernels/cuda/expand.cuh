/*
 * The expand: y[t][off_s + o] = round(y + scale[a_t] * sum_r v[t][s][r] *
 * B_s[a_t][o][r]) for o < out_s, for every token t with an adapter whose
 * rank in slice s is not 0.  Every element of y is read and written by one
 * thread, once; tokens without adapter and columns outside the slices are
 * not touched.
 */
#pragma once

#include "common.cuh"

/* Tokens per block when the batch is made of segments (they share B's rows). */
#define LSK_EXPAND_TILE_SEGMENTS 16

/*
 * Launches the expand on stream.  tile: tokens per block, 1 or
 * LSK_EXPAND_TILE_SEGMENTS.  max_out: the largest out of the slices (sizes
 * the grid).  Returns the launch's error.
 */
cudaError_t lsk_expand_launch(const lsk_lora &l, const lsk_dev_batch &b, const float *v, void *y,
                              int tile, int64_t max_out, cudaStream_t stream);
