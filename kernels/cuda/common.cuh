/*
 * What the shrink and expand kernels share: the block shape, dtype
 * conversions and vector loads, and the lookup of each token's adapter.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "lsk.h"

/* Threads per block of every kernel; a multiple of 32 (whole warps). */
#define LSK_CUDA_BLOCK 256
#define LSK_CUDA_WARPS (LSK_CUDA_BLOCK / 32)
/* Blocks per SM the kernels are compiled for: at most 128 registers a
 * thread, so that two blocks (16 warps) hide memory latency. */
#define LSK_CUDA_MIN_BLOCKS 2

/* Elements per vector load: 16 bytes of a 16-bit dtype, two loads of F32. */
#define LSK_CUDA_VEC 8

/*
 * The batch as the kernels read it.  Exactly one of token_adapter and
 * segments is set (apply.cu checks it).  Segments of skip_min_len tokens or
 * more are treated as having no adapter: the cuBLAS path has done their
 * shrink (INT32_MAX: nothing is skipped).
 */
struct lsk_dev_batch {
	const int32_t *token_adapter; /* [n_tokens] adapter per token, or NULL */
	const lsk_segment *segments;  /* [n_segments], or NULL */
	int32_t n_segments;
	int32_t skip_min_len;
	int64_t n_tokens;
	uint32_t *bad_index;          /* device counter of indices out of range, or NULL */
};

/*
 * Reports a failed CUDA or cuBLAS call on stderr (file, line, the call and
 * the library's reason), clears CUDA's last error so that the next call
 * does not see it, and returns LS_E_DEVICE.  (apply.cu)
 */
int lsk_cuda_report(const char *file, int line, const char *call, const char *reason);

/* The element type of each dtype, for templates. */
template <typename T> __device__ __forceinline__ float lsk_cu_to_f32(T v);
template <> __device__ __forceinline__ float lsk_cu_to_f32<float>(float v)
{
	return v;
}
template <> __device__ __forceinline__ float lsk_cu_to_f32<__half>(__half v)
{
	return __half2float(v);
}
template <> __device__ __forceinline__ float lsk_cu_to_f32<__nv_bfloat16>(__nv_bfloat16 v)
{
	return __bfloat162float(v);
}

/* F32 to the dtype, rounded to nearest even (the reference's rounding). */
template <typename T> __device__ __forceinline__ T lsk_cu_from_f32(float v);
template <> __device__ __forceinline__ float lsk_cu_from_f32<float>(float v)
{
	return v;
}
template <> __device__ __forceinline__ __half lsk_cu_from_f32<__half>(float v)
{
	return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 lsk_cu_from_f32<__nv_bfloat16>(float v)
{
	return __float2bfloat16_rn(v);
}

/*
 * Eight consecutive elements from p, widened to F32.  p must be 16-byte
 * aligned: the caller checks that before it takes this path.
 */
template <typename T> __device__ __forceinline__ void lsk_cu_load8(const T *p, float out[8]);
template <> __device__ __forceinline__ void lsk_cu_load8<float>(const float *p, float out[8])
{
	const float4 lo = *reinterpret_cast<const float4 *>(p);
	const float4 hi = *reinterpret_cast<const float4 *>(p + 4);
	out[0] = lo.x; out[1] = lo.y; out[2] = lo.z; out[3] = lo.w;
	out[4] = hi.x; out[5] = hi.y; out[6] = hi.z; out[7] = hi.w;
}
template <> __device__ __forceinline__ void lsk_cu_load8<__half>(const __half *p, float out[8])
{
	const uint4 u = *reinterpret_cast<const uint4 *>(p);
	const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__half2 h;
		memcpy(&h, &w[i], sizeof(h));
		const float2 f = __half22float2(h);
		out[2 * i] = f.x;
		out[2 * i + 1] = f.y;
	}
}
template <>
__device__ __forceinline__ void lsk_cu_load8<__nv_bfloat16>(const __nv_bfloat16 *p, float out[8])
{
	const uint4 u = *reinterpret_cast<const uint4 *>(p);
	const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__nv_bfloat162 h;
		memcpy(&h, &w[i], sizeof(h));
		const float2 f = __bfloat1622float2(h);
		out[2 * i] = f.x;
		out[2 * i + 1] = f.y;
	}
}

__device__ __forceinline__ bool lsk_cu_aligned16(const void *p)
{
	return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

/*
 * Fills adapter[j] (shared memory, NT entries) with the adapter of token
 * t0 + j: -1 for a token past the batch, without adapter, outside every
 * segment, in a segment the cuBLAS path has done, or with an index outside
 * [-1, n_adapters), which is skipped.  When count is true (one kernel, in
 * one block per token tile, does it) each such index adds 1 to
 * b.bad_index: once per token, or once per segment in the tile row's first
 * block.  Every thread of the block calls it; it ends with a barrier, after
 * which adapter[] is the same for every thread.
 *
 * Segments come in any order: the threads of the block read them together
 * (one segment per thread per step), and each writes the tokens of the tile
 * its segment covers.  Valid segments do not overlap, so no slot is written
 * twice; overlapping ones (a caller's bug the host check rejects) would only
 * race on which index lands, never on an address.
 */
template <int NT>
__device__ __forceinline__ void lsk_cu_tile_adapters(const lsk_dev_batch &b, int32_t n_adapters,
                                                     int64_t t0, int32_t *adapter, bool count)
{
	count = count && b.bad_index;
	if (threadIdx.x < NT)
		adapter[threadIdx.x] = -1;
	__syncthreads();
	if (b.token_adapter) {
		if (threadIdx.x < NT) {
			const int64_t t = t0 + threadIdx.x;
			if (t < b.n_tokens) {
				const int32_t a = b.token_adapter[t];
				if (a >= 0 && a < n_adapters)
					adapter[threadIdx.x] = a;
				else if (a != -1 && count)
					atomicAdd(b.bad_index, 1u);
			}
		}
	} else {
		const int64_t tile_end = min(t0 + NT, b.n_tokens);
		for (int32_t i = threadIdx.x; i < b.n_segments; i += blockDim.x) {
			const lsk_segment sg = b.segments[i];
			if ((sg.adapter < -1 || sg.adapter >= n_adapters) && count && t0 == 0)
				atomicAdd(b.bad_index, 1u);
			if (sg.adapter < 0 || sg.adapter >= n_adapters || sg.len <= 0 ||
			    sg.len >= b.skip_min_len)
				continue;
			const int64_t lo = max((int64_t)sg.start, max(t0, (int64_t)0));
			const int64_t hi = min((int64_t)sg.start + sg.len, tile_end);
			for (int64_t t = lo; t < hi; t++)
				adapter[t - t0] = sg.adapter;
		}
	}
	__syncthreads();
}

/*
 * The tokens of the tile that share token j's adapter, as a bit mask, when j
 * is the first of them; 0 when an earlier token of the tile has the same
 * adapter (that token's group covers j).  Each adapter of a tile is then
 * handled once, at its first token.
 */
template <int NT>
__device__ __forceinline__ uint32_t lsk_cu_group_mask(const int32_t *adapter, int j)
{
	const int32_t a = adapter[j];
	uint32_t mask = 0;
#pragma unroll
	for (int i = 0; i < NT; i++) {
		if (adapter[i] == a) {
			if (i < j)
				return 0;
			mask |= 1u << i;
		}
	}
	return mask;
}

/*
 * The rank of adapter a in slice sl as the device may use it: 0 when a < 0,
 * when a pointer is missing, or when the rank is outside [0, max_rank] (so
 * that no index computed from it leaves the workspace).  Shrink and expand
 * apply the same rule, so the expand reads exactly what the shrink wrote.
 */
__device__ __forceinline__ int32_t lsk_cu_rank(const lsk_slice &sl, int32_t a, int32_t max_rank)
{
	if (a < 0)
		return 0;
	const int32_t r = sl.rank[a];
	if (r <= 0 || r > max_rank || !sl.a[a] || !sl.b[a])
		return 0;
	return r;
}
