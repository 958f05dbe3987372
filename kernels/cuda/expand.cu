/*
 * The expand kernel (see expand.cuh).
 *
 * Grid: x = tiles of NT consecutive tokens, y = slice * output blocks of
 * LSK_CUDA_BLOCK columns (a block strides over further columns when a slice
 * is wider than the grid).  Block: LSK_CUDA_BLOCK threads; the tile's rows of
 * v (rank F32 values per token) are staged in shared memory, then thread i
 * owns column o = i (+ strides) of the slice: it reads row o of B once,
 * forms the NT dot products over r in order r = 0, 1, ..., adds each times
 * the adapter's scale to y in F32 and rounds once.  No two threads own the
 * same element of y, so there is no atomic, and no element is written twice.
 *
 * Decode uses NT = 1 (one token per block, the BGMV shape); segments use
 * NT = LSK_EXPAND_TILE_SEGMENTS (the SGMV shape: the tile's tokens share an
 * adapter, and each row of B serves all of them).  A tile whose tokens
 * differ (at a segment boundary) takes each adapter's tokens as one group,
 * in turn.
 *
 * As in the shrink, every branch taken before a barrier depends only on
 * values that are the same for the whole block.
 */
#include "expand.cuh"

/*
 * The tokens t0 + j of the tile whose bit j is set in mask, all with one
 * adapter (B, rank, scale), slice columns [col0, col0 + out) of y.  v points
 * at slice s of token 0 (v_tok floats between tokens); vs is shared memory
 * of NT rows of LSK_MAX_RANK floats.
 */
template <typename TA, typename TW, int NT>
static __device__ __forceinline__ void expand_tile(const TW *__restrict__ B, int32_t rank, float scale,
                                                   const float *__restrict__ v, int64_t v_tok,
                                                   float (*vs)[LSK_MAX_RANK], TA *__restrict__ y,
                                                   int64_t ldy, int64_t col0, int64_t out, int64_t t0,
                                                   uint32_t mask, int32_t ob, int32_t n_ob)
{
	/* Only the tokens of the mask: the others' v may not be written. */
	for (int32_t idx = threadIdx.x; idx < NT * rank; idx += blockDim.x) {
		const int32_t j = idx / rank;
		const int32_t r = idx - j * rank;
		if ((mask >> j) & 1u)
			vs[j][r] = v[(t0 + j) * v_tok + r];
	}
	__syncthreads();

	/* B's rows are rank elements long: 16-byte aligned when B is and rank
	 * is a multiple of 8. */
	const bool vec = (rank % LSK_CUDA_VEC) == 0 && lsk_cu_aligned16(B);
	for (int64_t o = (int64_t)ob * blockDim.x + threadIdx.x; o < out;
	     o += (int64_t)n_ob * blockDim.x) {
		const TW *br = B + o * rank;
		/* The rows of vs outside the mask hold stale values: their sums
		 * are formed (the loops stay branch-free) and thrown away. */
		float acc[NT];
#pragma unroll
		for (int j = 0; j < NT; j++)
			acc[j] = 0.0f;
		if (vec) {
			for (int32_t r = 0; r < rank; r += LSK_CUDA_VEC) {
				float bv[LSK_CUDA_VEC];
				lsk_cu_load8(br + r, bv);
				/* vs rows are 16-byte aligned and r is a multiple of 8:
				 * two 16-byte shared loads per token (a broadcast, as
				 * every thread reads the same address), then the eight
				 * products in the order r, r + 1, ... */
#pragma unroll
				for (int j = 0; j < NT; j++) {
					const float4 v0 = *reinterpret_cast<const float4 *>(&vs[j][r]);
					const float4 v1 = *reinterpret_cast<const float4 *>(&vs[j][r + 4]);
					float a = acc[j];
					a = fmaf(v0.x, bv[0], a);
					a = fmaf(v0.y, bv[1], a);
					a = fmaf(v0.z, bv[2], a);
					a = fmaf(v0.w, bv[3], a);
					a = fmaf(v1.x, bv[4], a);
					a = fmaf(v1.y, bv[5], a);
					a = fmaf(v1.z, bv[6], a);
					a = fmaf(v1.w, bv[7], a);
					acc[j] = a;
				}
			}
		} else {
			for (int32_t r = 0; r < rank; r++) {
				const float bv = lsk_cu_to_f32(br[r]);
#pragma unroll
				for (int j = 0; j < NT; j++)
					acc[j] = fmaf(vs[j][r], bv, acc[j]);
			}
		}
#pragma unroll
		for (int j = 0; j < NT; j++) {
			if (!((mask >> j) & 1u))
				continue;
			TA *yp = y + (t0 + j) * ldy + col0 + o;
			*yp = lsk_cu_from_f32<TA>(lsk_cu_to_f32(*yp) + scale * acc[j]);
		}
	}
	/* vs is refilled by the next group of this block. */
	__syncthreads();
}

template <typename TA, typename TW, int NT>
static __global__ void __launch_bounds__(LSK_CUDA_BLOCK, LSK_CUDA_MIN_BLOCKS)
lsk_expand_kernel(const lsk_lora l, const lsk_dev_batch b, const float *__restrict__ v,
                  TA *__restrict__ y, const int32_t n_ob)
{
	__shared__ int32_t adapter[NT];
	__shared__ int32_t rank[NT];
	__shared__ __align__(16) float vs[NT][LSK_MAX_RANK];

	const int32_t s = blockIdx.y / n_ob;
	const int32_t ob = blockIdx.y % n_ob;
	const int64_t t0 = (int64_t)blockIdx.x * NT;
	if (s >= l.n_slices)
		return;
	const lsk_slice &sl = l.slices[s];
	/* No column of this slice for this block: leave before any barrier. */
	if ((int64_t)ob * blockDim.x >= sl.out)
		return;

	/* Each token tile is seen by n_slices * n_ob blocks: the first counts. */
	lsk_cu_tile_adapters<NT>(b, l.n_adapters, t0, adapter, blockIdx.y == 0);
	if (threadIdx.x < NT)
		rank[threadIdx.x] = lsk_cu_rank(sl, adapter[threadIdx.x], l.max_rank);
	__syncthreads();

	const int64_t v_tok = (int64_t)l.n_slices * l.max_rank;
	const float *const vsl = v + (int64_t)s * l.max_rank;

	/* Each adapter of the tile once, at its first token, with the mask of
	 * its tokens (see the shrink).  Rank 0: no adapter, or no module. */
	for (int j = 0; j < NT; j++) {
		const int32_t a = adapter[j];
		if (rank[j] == 0)
			continue;
		const uint32_t mask = lsk_cu_group_mask<NT>(adapter, j);
		if (!mask)
			continue;
		expand_tile<TA, TW, NT>(static_cast<const TW *>(sl.b[a]), rank[j], l.scale[a], vsl, v_tok,
		                        vs, y, l.ldy, sl.out_offset, sl.out, t0, mask, ob, n_ob);
	}
}

template <typename TA, typename TW>
static cudaError_t expand_typed(const lsk_lora &l, const lsk_dev_batch &b, const float *v, void *y,
                                int tile, int32_t n_ob, cudaStream_t stream)
{
	/* apply.cu keeps n_tokens <= INT32_MAX and n_slices * n_ob <= 65535. */
	const dim3 grid((unsigned)((b.n_tokens + tile - 1) / tile), (unsigned)(l.n_slices * n_ob));
	TA *yt = static_cast<TA *>(y);
	void *args[] = {const_cast<lsk_lora *>(&l), const_cast<lsk_dev_batch *>(&b),
	                &v, &yt, &n_ob};
	const void *fn = tile == LSK_EXPAND_TILE_SEGMENTS
	                         ? reinterpret_cast<const void *>(
	                                   lsk_expand_kernel<TA, TW, LSK_EXPAND_TILE_SEGMENTS>)
	                         : reinterpret_cast<const void *>(lsk_expand_kernel<TA, TW, 1>);
	/* The launch's own result: an error the caller left pending is not ours. */
	return cudaLaunchKernel(fn, grid, dim3(LSK_CUDA_BLOCK), args, 0, stream);
}

template <typename TA>
static cudaError_t expand_act(const lsk_lora &l, const lsk_dev_batch &b, const float *v, void *y,
                              int tile, int32_t n_ob, cudaStream_t stream)
{
	switch (l.weight_dtype) {
	case LSK_F32:
		return expand_typed<TA, float>(l, b, v, y, tile, n_ob, stream);
	case LSK_F16:
		return expand_typed<TA, __half>(l, b, v, y, tile, n_ob, stream);
	case LSK_BF16:
		return expand_typed<TA, __nv_bfloat16>(l, b, v, y, tile, n_ob, stream);
	}
	return cudaErrorInvalidValue;
}

cudaError_t lsk_expand_launch(const lsk_lora &l, const lsk_dev_batch &b, const float *v, void *y,
                              int tile, int64_t max_out, cudaStream_t stream)
{
	/* Output blocks per slice: enough for the widest slice, within the
	 * grid's y limit (65535) for 8 slices; blocks stride beyond that. */
	int64_t n_ob = (max_out + LSK_CUDA_BLOCK - 1) / LSK_CUDA_BLOCK;
	const int64_t cap = 65535 / l.n_slices;
	if (n_ob > cap)
		n_ob = cap;
	if (n_ob < 1)
		n_ob = 1;
	switch (l.act_dtype) {
	case LSK_F32:
		return expand_act<float>(l, b, v, y, tile, (int32_t)n_ob, stream);
	case LSK_F16:
		return expand_act<__half>(l, b, v, y, tile, (int32_t)n_ob, stream);
	case LSK_BF16:
		return expand_act<__nv_bfloat16>(l, b, v, y, tile, (int32_t)n_ob, stream);
	}
	return cudaErrorInvalidValue;
}
