/*
 * lsk: lorastore's LoRA apply kernels.
 *
 * For tokens t = 0..T-1 that use adapter a (a = -1: no adapter),
 *
 *     y[t, off_s + o] += scale[a] * sum_r (sum_k x[t, k] * A_s[a][r, k]) * B_s[a][o, r]
 *
 * for every slice s of the operation (one slice for a plain projection;
 * several for a fused one such as q/k/v packed into one output, each slice
 * with its own A, B and output columns).  Every adapter's A and B stay where
 * they are (arrays of per-adapter pointers); ranks differ per adapter and
 * are never padded.
 *
 * The batch is given either per token (decode: one adapter index per token,
 * the BGMV shape) or as segments of consecutive tokens (prefill: the SGMV
 * shape).  x and y share one dtype (F32, F16 or BF16); all adapter weights of
 * one call share one dtype (F32, F16 or BF16); accumulation is F32.  The
 * shrink result x * A^T is kept in F32 in the workspace; y is read, the
 * update added in F32 and the sum rounded once (round to nearest even) to y's
 * dtype.
 *
 * Paths: lsk_ref_apply (the reference: plain loops, obviously right, the
 * oracle of every test), lsk_cpu_apply (blocked, vectorized, threaded) and
 * lsk_cuda_apply (shrink and expand kernels, cuBLAS for large segments).  The
 * optimized paths allocate nothing: the caller queries lsk_workspace_size()
 * and passes that many bytes.
 *
 * This library stands alone: it knows nothing of the daemon or the store.
 * Every function returns 0 or a negative LS_E_* code (common/ls_error.h):
 * LS_E_SHAPE, LS_E_DTYPE, -EINVAL (a null pointer where one is needed),
 * LS_E_NOT_BUILT, LS_E_NO_DEVICE, LS_E_DEVICE.
 */
#ifndef LSK_H
#define LSK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Numbered as lorastore's dtypes (LS_DTYPE_*, LORASTORE_DTYPE_*); 0 is none. */
typedef enum lsk_dtype {
	LSK_F32 = 1,
	LSK_F16 = 2,
	LSK_BF16 = 3,
} lsk_dtype;

/* At most this many slices in one fused operation. */
#define LSK_MAX_SLICES 8
/* Largest rank the kernels take (a PEFT rank beyond it is very unusual). */
#define LSK_MAX_RANK 512

/*
 * One slice: the same module of every adapter in the call.  Adapter i's A is
 * [rank[i]][in] and its B is [out][rank[i]], both dense and row-major in the
 * weight dtype, at a[i] and b[i].  rank[i] == 0 (with a[i] and b[i] NULL)
 * means adapter i does not have this module: its tokens get nothing added in
 * these columns.
 */
typedef struct lsk_slice {
	const void *const *a;  /* [n_adapters] pointers to A */
	const void *const *b;  /* [n_adapters] pointers to B */
	const int32_t *rank;   /* [n_adapters] ranks, 0..max_rank */
	int64_t out_offset;    /* first column of y this slice adds into */
	int64_t out;           /* columns of y this slice adds into (rows of B) */
} lsk_slice;

/*
 * The operation: the adapters of the call and the shapes of x and y.
 * Slices must not overlap in y and must lie inside a row of y
 * (out_offset + out <= ldy).
 */
typedef struct lsk_lora {
	lsk_dtype act_dtype;     /* dtype of x and y */
	lsk_dtype weight_dtype;  /* dtype of every A and B */
	int64_t in;              /* columns of x, columns of every A */
	int64_t ldx;             /* elements between rows of x, >= in */
	int64_t ldy;             /* elements between rows of y */
	int32_t n_adapters;      /* entries in scale and in each slice's arrays */
	int32_t max_rank;        /* >= every rank[i]; sizes the workspace; <= LSK_MAX_RANK */
	const float *scale;      /* [n_adapters] final scale of each adapter */
	int32_t n_slices;        /* 1..LSK_MAX_SLICES */
	lsk_slice slices[LSK_MAX_SLICES];
} lsk_lora;

/* Consecutive tokens [start, start + len) that use one adapter (-1: none). */
typedef struct lsk_segment {
	int32_t start;
	int32_t len;
	int32_t adapter;
} lsk_segment;

/*
 * The batch: T tokens, rows 0..T-1 of x and y.  Exactly one of
 * token_adapter (decode) and segments (prefill) is set.  Segments must not
 * overlap and must lie in [0, T); tokens outside every segment are left
 * alone.  An adapter index outside [-1, n_adapters) is LS_E_SHAPE.
 *
 * Segments may come in any order (sorted ones are checked in one pass,
 * others pair by pair) and may be empty (len 0, start in [0, T]).  T == 0
 * is a valid empty batch that changes nothing; it needs neither array, and
 * x and y may then be NULL.
 */
typedef struct lsk_batch {
	int64_t n_tokens;
	const int32_t *token_adapter;  /* [n_tokens] adapter per token, or NULL */
	int32_t n_segments;
	const lsk_segment *segments;   /* [n_segments], or NULL */
	/*
	 * CUDA path only (the CPU paths refuse an index out of range with
	 * LS_E_SHAPE and ignore this): a counter in device memory, or NULL.
	 * Each token (per-token indices) or segment whose adapter index the
	 * device finds outside [-1, n_adapters) adds 1 to it, and is skipped.
	 */
	uint32_t *bad_index_count;
} lsk_batch;

/* Bytes of each dtype's element. */
size_t lsk_dtype_size(lsk_dtype dt);
const char *lsk_dtype_name(lsk_dtype dt);

/*
 * Checks an operation and a batch whose arrays the caller can read: every
 * dtype known, no null pointer where one is needed, shapes, ranks, slices
 * and indices consistent.  The CPU paths call it; the CUDA path calls it on
 * the host mirror.  Returns 0, -EINVAL, LS_E_SHAPE or LS_E_DTYPE:
 *   -EINVAL      l or b NULL; scale or a slice's a, b or rank NULL while
 *                n_adapters > 0; a[i] or b[i] NULL while rank[i] > 0; no
 *                index array and no segments while T > 0 (or n_segments > 0)
 *   LS_E_DTYPE   act_dtype or weight_dtype not an lsk_dtype
 *   LS_E_SHAPE   anything else out of range: n_slices, in, ldx < in,
 *                max_rank, n_adapters < 0, a slice's out < 1, out_offset < 0
 *                or out_offset + out > ldy, two slices sharing a column, a
 *                rank outside 0..max_rank, a[i] or b[i] set while rank[i] is
 *                0, T < 0, n_segments < 0, both arrays set, an index or a
 *                segment out of range, two segments sharing a token, rows
 *                whose element offsets overflow int64_t
 * It reads every index and segment, nothing behind a[i] or b[i], and not x
 * or y.  x and y must not overlap (not checked).
 */
int lsk_check(const lsk_lora *l, const lsk_batch *b);

/*
 * Workspace bytes an optimized path needs for this operation and n_tokens
 * tokens (it depends on n_tokens, n_slices and max_rank only, so a caller
 * may size it once for its largest batch).  At least
 * align256(n_tokens * n_slices * max_rank * 4) + 256, so that a dense F32
 * [n_tokens][n_slices][max_rank] array fits at a 256-byte boundary; the CPU
 * path uses [n_tokens][n_slices][max_rank rounded up to 8] floats at offset
 * 0 and 8 bytes per token after them.  SIZE_MAX for an l that is NULL or
 * whose n_slices or max_rank is out of range, for n_tokens < 0, and when the
 * size overflows.
 */
size_t lsk_workspace_size(const lsk_lora *l, int64_t n_tokens);

/*
 * The reference: plain loops over tokens, slices, ranks and columns,
 * accumulating in F32 in the order written above.  Slow on purpose; the
 * tests use it as the oracle.  x is [n_tokens][ldx], y is [n_tokens][ldy],
 * both in act_dtype, in host memory.
 */
int lsk_ref_apply(const lsk_lora *l, const lsk_batch *b, const void *x, void *y);

/*
 * The optimized CPU path.  Same inputs as lsk_ref_apply, plus a workspace of
 * at least lsk_workspace_size(l, b->n_tokens) bytes aligned to 64, and
 * n_threads (0 or 1: the calling thread only).  Allocates nothing.
 *
 * Beyond lsk_check's errors: -EINVAL for a NULL or misaligned workspace (also
 * for an empty batch) and for NULL x or y while T > 0; LS_E_SHAPE for a
 * workspace_size below lsk_workspace_size.  y is untouched on any error.
 *
 * n_threads > 1 runs one OpenMP parallel region (when built with OpenMP)
 * with that many threads; each thread takes an even share of every adapter's
 * ranks or tokens and output columns, and uses up to about 64 KiB of stack.
 * It uses AVX2, FMA and F16C kernels when the CPU has all three, portable
 * ones otherwise; LSK_CPU_ISA=generic in the environment (read at the first
 * call) forces the portable ones.  It sums in another order than the
 * reference (and may fuse multiply-adds): each element stays within
 * gamma_(in + r + 2) * M of the exact result, as the reference does
 * (gamma_n = n 2^-24 / (1 - n 2^-24),
 * M = |y| + |scale| sum_r |B[o][r]| sum_k |x[k] A[r][k]|), plus the final
 * rounding of a 16-bit y, so the two paths differ by at most twice that.
 */
int lsk_cpu_apply(const lsk_lora *l, const lsk_batch *b, const void *x, void *y,
                  void *workspace, size_t workspace_size, int n_threads);

/*
 * The CUDA path.  0 when it is built and a device is usable, LS_E_NOT_BUILT
 * or LS_E_NO_DEVICE otherwise.  Never aborts, also without a driver.
 */
int lsk_cuda_available(void);

/*
 * Launches the operation on `stream` (a cudaStream_t; NULL: the default
 * stream) and returns without waiting.
 *
 * dev describes the operation as the device reads it: the pointer arrays,
 * ranks and scales in device memory, A and B in device memory.  host is the
 * same operation with its arrays in host memory (the same A and B
 * addresses): the checks and the choice between kernels and cuBLAS read it,
 * the device never does.  dev_batch's index arrays are in device memory;
 * host_batch has n_tokens and, for segments, the same segments in host
 * memory (token indices are not needed on the host; an index out of range on
 * the device is skipped, and counted in dev_batch->bad_index_count when that
 * is set).  x and y are device memory; the workspace is device memory of at
 * least lsk_workspace_size(host, n_tokens) bytes, aligned to 256.  cublas is
 * a cublasHandle_t the caller created, or NULL to use the kernels only; the
 * call sets its stream and pointer mode and puts both back before it
 * returns.
 *
 * It allocates and synchronizes nothing, so it can be captured in a CUDA
 * graph.  A launch that fails is reported as LS_E_DEVICE; an error the
 * caller left pending in CUDA's last-error state is neither returned nor
 * cleared (the kernels' launches report their own result).
 */
int lsk_cuda_apply(const lsk_lora *dev, const lsk_lora *host,
                   const lsk_batch *dev_batch, const lsk_batch *host_batch,
                   const void *x, void *y, void *workspace, size_t workspace_size,
                   void *stream, void *cublas);

#ifdef __cplusplus
}
#endif

#endif
