/*
 * The shrink kernel (see shrink.cuh).
 *
 * Grid: x = tiles of NT consecutive tokens, y = slice * rank tiles of
 * LSK_SHRINK_RANKS ranks.  Block: LSK_CUDA_BLOCK threads that split `in`:
 * thread i reads elements i*8.. (or i.. when the rows are not aligned for
 * vector loads) of the tile's x rows and of the LSK_SHRINK_RANKS rows of A,
 * keeps NT * LSK_SHRINK_RANKS F32 partial sums, and the block reduces them
 * (warp shuffles, then one shared array) into v.
 *
 * Decode (NT = 1) is the BGMV shape: one block per token, slice and rank
 * tile, each adapter row read once per token.  Segments (NT = 4) is the
 * SGMV shape: the tile's tokens usually share one adapter, and then each row
 * of A is read once for the four of them.  A tile whose tokens differ (at a
 * segment boundary) takes each adapter's tokens as one group, in turn.
 *
 * Everything the threads of a block branch on before a barrier (adapter[],
 * rank[], the A pointer) is the same for every thread, so every
 * __syncthreads is reached by the whole block.
 */
#include "shrink.cuh"

static constexpr int R = LSK_SHRINK_RANKS;

/*
 * Ranks r0 .. r0 + nr - 1 of one slice for the tokens t0 + j of the tile
 * whose bit j is set in mask (they share one adapter, whose A is given; jf
 * is the first of them).  v points at slice s of token 0; v_tok floats
 * separate tokens.  red is shared memory of LSK_CUDA_WARPS * NT * R floats.
 */
template <typename TA, typename TW, int NT>
static __device__ __forceinline__ void shrink_tile(const TA *__restrict__ x, int64_t ldx, int64_t in,
                                                   const TW *__restrict__ A, int32_t r0, int32_t nr,
                                                   int64_t t0, uint32_t mask, int jf, bool vec,
                                                   float *__restrict__ v, int64_t v_tok, float *red)
{
	float acc[NT][R];
#pragma unroll
	for (int j = 0; j < NT; j++)
#pragma unroll
		for (int i = 0; i < R; i++)
			acc[j][i] = 0.0f;

	/* Tokens outside the mask (perhaps past the batch) are never read;
	 * their row pointers are those of token jf, which exists. */
	const TA *xr[NT];
#pragma unroll
	for (int j = 0; j < NT; j++)
		xr[j] = x + (t0 + ((mask >> j) & 1u ? j : jf)) * ldx;
	/* Rows past nr point at row r0 (which exists) and are never read. */
	const TW *ar[R];
#pragma unroll
	for (int i = 0; i < R; i++)
		ar[i] = A + (int64_t)(r0 + (i < nr ? i : 0)) * in;

	if (vec) {
		/* in is a multiple of 8, so k + 8 <= in whenever k < in. */
		for (int64_t k = (int64_t)threadIdx.x * LSK_CUDA_VEC; k < in;
		     k += (int64_t)blockDim.x * LSK_CUDA_VEC) {
			float xv[NT][LSK_CUDA_VEC];
#pragma unroll
			for (int j = 0; j < NT; j++) {
				if ((mask >> j) & 1u) {
					lsk_cu_load8(xr[j] + k, xv[j]);
				} else {
#pragma unroll
					for (int e = 0; e < LSK_CUDA_VEC; e++)
						xv[j][e] = 0.0f;
				}
			}
#pragma unroll
			for (int i = 0; i < R; i++) {
				if (i >= nr)
					continue;
				float av[LSK_CUDA_VEC];
				lsk_cu_load8(ar[i] + k, av);
#pragma unroll
				for (int j = 0; j < NT; j++)
#pragma unroll
					for (int e = 0; e < LSK_CUDA_VEC; e++)
						acc[j][i] = fmaf(xv[j][e], av[e], acc[j][i]);
			}
		}
	} else {
		for (int64_t k = threadIdx.x; k < in; k += blockDim.x) {
			float xv[NT];
#pragma unroll
			for (int j = 0; j < NT; j++)
				xv[j] = (mask >> j) & 1u ? lsk_cu_to_f32(xr[j][k]) : 0.0f;
#pragma unroll
			for (int i = 0; i < R; i++) {
				if (i >= nr)
					continue;
				const float av = lsk_cu_to_f32(ar[i][k]);
#pragma unroll
				for (int j = 0; j < NT; j++)
					acc[j][i] = fmaf(xv[j], av, acc[j][i]);
			}
		}
	}

	/* Reduce over the block: within each warp, then across the warps. */
	const int lane = threadIdx.x & 31;
	const int warp = threadIdx.x >> 5;
#pragma unroll
	for (int j = 0; j < NT; j++) {
#pragma unroll
		for (int i = 0; i < R; i++) {
			float s = acc[j][i];
#pragma unroll
			for (int off = 16; off > 0; off >>= 1)
				s += __shfl_xor_sync(0xffffffffu, s, off);
			if (lane == 0)
				red[warp * (NT * R) + j * R + i] = s;
		}
	}
	__syncthreads();
	if (threadIdx.x < NT * R) {
		const int j = threadIdx.x / R;
		const int i = threadIdx.x % R;
		if (i < nr && ((mask >> j) & 1u)) {
			float s = 0.0f;
#pragma unroll
			for (int w = 0; w < LSK_CUDA_WARPS; w++)
				s += red[w * (NT * R) + threadIdx.x];
			v[(t0 + j) * v_tok + r0 + i] = s;
		}
	}
	/* red is reused by the next group of this block. */
	__syncthreads();
}

template <typename TA, typename TW, int NT>
static __global__ void __launch_bounds__(LSK_CUDA_BLOCK, LSK_CUDA_MIN_BLOCKS)
lsk_shrink_kernel(const lsk_lora l, const lsk_dev_batch b, const TA *__restrict__ x,
                  const bool x_vec, float *__restrict__ v)
{
	__shared__ int32_t adapter[NT];
	__shared__ int32_t rank[NT];
	__shared__ float red[LSK_CUDA_WARPS * NT * R];

	const int32_t n_rtiles = (l.max_rank + R - 1) / R;
	const int32_t s = blockIdx.y / n_rtiles;
	const int32_t r0 = (blockIdx.y % n_rtiles) * R;
	const int64_t t0 = (int64_t)blockIdx.x * NT;
	/* The grid is sized exactly; this guards the slice index anyway, for
	 * the whole block at once (before any barrier). */
	if (s >= l.n_slices)
		return;
	const lsk_slice &sl = l.slices[s];

	lsk_cu_tile_adapters<NT>(b, l.n_adapters, t0, adapter, false);
	if (threadIdx.x < NT)
		rank[threadIdx.x] = lsk_cu_rank(sl, adapter[threadIdx.x], l.max_rank);
	__syncthreads();

	const int64_t v_tok = (int64_t)l.n_slices * l.max_rank;
	float *const vs = v + (int64_t)s * l.max_rank;

	/* Each adapter of the tile once, at its first token, with the mask of
	 * its tokens: one group when the tile lies inside a segment, two at a
	 * boundary.  A token without adapter has rank 0 and is skipped. */
	for (int j = 0; j < NT; j++) {
		const int32_t a = adapter[j];
		if (r0 >= rank[j])
			continue;
		const uint32_t mask = lsk_cu_group_mask<NT>(adapter, j);
		if (!mask)
			continue;
		const TW *A = static_cast<const TW *>(sl.a[a]);
		shrink_tile<TA, TW, NT>(x, l.ldx, l.in, A, r0, min(R, rank[j] - r0), t0, mask, j,
		                        x_vec && lsk_cu_aligned16(A), vs, v_tok, red);
	}
}

template <typename TA, typename TW>
static cudaError_t shrink_typed(const lsk_lora &l, const lsk_dev_batch &b, const void *x, bool x_vec,
                                float *v, int tile, cudaStream_t stream)
{
	const int32_t n_rtiles = (l.max_rank + R - 1) / R;
	/* apply.cu keeps n_tokens <= INT32_MAX; n_slices * n_rtiles <= 8 * 64. */
	const dim3 grid((unsigned)((b.n_tokens + tile - 1) / tile), (unsigned)(l.n_slices * n_rtiles));
	const TA *xt = static_cast<const TA *>(x);
	void *args[] = {const_cast<lsk_lora *>(&l), const_cast<lsk_dev_batch *>(&b), &xt, &x_vec, &v};
	const void *fn = tile == LSK_SHRINK_TILE_SEGMENTS
	                         ? reinterpret_cast<const void *>(
	                                   lsk_shrink_kernel<TA, TW, LSK_SHRINK_TILE_SEGMENTS>)
	                         : reinterpret_cast<const void *>(lsk_shrink_kernel<TA, TW, 1>);
	/* The launch's own result: an error the caller left pending is not ours. */
	return cudaLaunchKernel(fn, grid, dim3(LSK_CUDA_BLOCK), args, 0, stream);
}

template <typename TA>
static cudaError_t shrink_act(const lsk_lora &l, const lsk_dev_batch &b, const void *x, bool x_vec,
                              float *v, int tile, cudaStream_t stream)
{
	switch (l.weight_dtype) {
	case LSK_F32:
		return shrink_typed<TA, float>(l, b, x, x_vec, v, tile, stream);
	case LSK_F16:
		return shrink_typed<TA, __half>(l, b, x, x_vec, v, tile, stream);
	case LSK_BF16:
		return shrink_typed<TA, __nv_bfloat16>(l, b, x, x_vec, v, tile, stream);
	}
	return cudaErrorInvalidValue;
}

cudaError_t lsk_shrink_launch(const lsk_lora &l, const lsk_dev_batch &b, const void *x, bool x_vec,
                              float *v, int tile, cudaStream_t stream)
{
	switch (l.act_dtype) {
	case LSK_F32:
		return shrink_act<float>(l, b, x, x_vec, v, tile, stream);
	case LSK_F16:
		return shrink_act<__half>(l, b, x, x_vec, v, tile, stream);
	case LSK_BF16:
		return shrink_act<__nv_bfloat16>(l, b, x, x_vec, v, tile, stream);
	}
	return cudaErrorInvalidValue;
}

cudaError_t lsk_shrink_probe(void)
{
	cudaFuncAttributes attr;
	return cudaFuncGetAttributes(&attr, reinterpret_cast<const void *>(lsk_shrink_kernel<float, float, 1>));
}
