/*
 * The cuBLAS shrink of long segments (see cublas_path.cuh).
 *
 * Row-major products as column-major cuBLAS calls.  cuBLAS reads a matrix
 * stored row-major as [rows][ld] as the column-major matrix of its
 * transpose, with the same leading dimension.  For one segment of len
 * tokens starting at token t0, and one slice:
 *
 *   X_seg  row-major [len][in], ld = ldx         = column-major X^T (in x len)
 *   A      row-major [r][in],   ld = in          = column-major A^T (in x r)
 *   V_seg  row-major [len][r],  ld = S * R_max   = column-major V^T (r x len)
 *
 * We want V = X A^T, that is V^T = A X^T = (A^T)^T X^T: in cuBLAS terms
 * C (m = r, n = len) = op(Acb) * op(Bcb) with Acb = the column-major A^T
 * (lda = in) taken with CUBLAS_OP_T, Bcb = the column-major X^T (ldb = ldx)
 * taken with CUBLAS_OP_N, k = in, and C = V^T with ldc = S * R_max (the
 * workspace's token stride), which writes exactly v[t0 + j][s][0 .. r - 1]
 * for j < len.  Leading dimensions satisfy lda = in >= k, ldb = ldx >= k,
 * ldc = S * R_max >= r = m.
 *
 * Only the shrink goes to cuBLAS.  cublasGemmEx needs its A and B of one
 * type, and v is F32 while B is the weight dtype; rounding v to the weight
 * dtype would add one rounding the reference does not make.  So the expand
 * kernel, which reads v in F32, finishes every token, and the result keeps
 * the reference's rounding order (one rounding of y).
 *
 * Compute type: CUBLAS_COMPUTE_32F for F16 and BF16 (F32 accumulation, with
 * tensor cores).  For F32 data, CUBLAS_COMPUTE_32F_PEDANTIC: with the plain
 * compute type, a handle whose math mode allows TF32 (the caller's choice,
 * cublasSetMathMode) would round x and A to 10-bit mantissas, far outside
 * the F32 tolerance; pedantic keeps true F32 whatever the handle says.
 */
#include <limits.h>

#include "cublas_path.cuh"
#include "ls_error.h"

static cudaDataType_t cublas_type(lsk_dtype dt)
{
	switch (dt) {
	case LSK_F16:
		return CUDA_R_16F;
	case LSK_BF16:
		return CUDA_R_16BF;
	default:
		return CUDA_R_32F;
	}
}

bool lsk_cublas_eligible(const lsk_lora *host)
{
	return host->act_dtype == host->weight_dtype && host->in >= 1 && host->in <= INT_MAX &&
	       host->ldx <= INT_MAX && (int64_t)host->n_slices * host->max_rank <= INT_MAX;
}

static int cublas_fail(const char *file, int line, const char *call, cublasStatus_t st)
{
	return lsk_cuda_report(file, line, call, cublasGetStatusString(st));
}

#define LSK_CUBLAS_CHECK(call)                                          \
	do {                                                            \
		cublasStatus_t st_ = (call);                            \
		if (st_ != CUBLAS_STATUS_SUCCESS) {                     \
			rc = cublas_fail(__FILE__, __LINE__, #call, st_); \
			goto out;                                       \
		}                                                       \
	} while (0)

int lsk_cublas_shrink(cublasHandle_t handle, cudaStream_t stream, const lsk_lora *host,
                      const lsk_segment *segs, int32_t n_segments, int32_t min_tokens,
                      const void *x, float *v)
{
	const cudaDataType_t dt = cublas_type(host->act_dtype);
	const cublasComputeType_t ct =
		host->act_dtype == LSK_F32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
	const size_t esize = lsk_dtype_size(host->act_dtype);
	const int in = (int)host->in;
	const int ldx = (int)host->ldx;
	const int ldv = host->n_slices * host->max_rank;
	/* alpha and beta are host floats (the compute type is F32). */
	const float one = 1.0f;
	const float zero = 0.0f;
	cublasPointerMode_t mode = CUBLAS_POINTER_MODE_HOST;
	bool restore = false;
	cudaStream_t callers_stream = NULL;
	bool restore_stream = false;
	int rc = 0;

	if (min_tokens < 1)
		min_tokens = 1;
	/* The handle is the caller's: its stream is put back before returning. */
	LSK_CUBLAS_CHECK(cublasGetStream(handle, &callers_stream));
	if (callers_stream != stream) {
		LSK_CUBLAS_CHECK(cublasSetStream(handle, stream));
		restore_stream = true;
	}
	/* The caller's handle may read scalars from device memory; ours are on
	 * the host.  Its mode is put back before returning. */
	LSK_CUBLAS_CHECK(cublasGetPointerMode(handle, &mode));
	if (mode != CUBLAS_POINTER_MODE_HOST) {
		LSK_CUBLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
		restore = true;
	}
	for (int32_t i = 0; i < n_segments; i++) {
		const lsk_segment sg = segs[i];
		if (sg.adapter < 0 || sg.len < min_tokens)
			continue;
		const char *xs = static_cast<const char *>(x) + (size_t)sg.start * (size_t)ldx * esize;
		for (int32_t s = 0; s < host->n_slices; s++) {
			const lsk_slice *sl = &host->slices[s];
			const int r = sl->rank[sg.adapter];
			if (r == 0)
				continue;
			float *vs = v + ((int64_t)sg.start * host->n_slices + s) * host->max_rank;
			LSK_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, r, sg.len, in, &one,
			                              sl->a[sg.adapter], dt, in, xs, dt, ldx, &zero, vs,
			                              CUDA_R_32F, ldv, ct, CUBLAS_GEMM_DEFAULT));
		}
	}
out:
	if (restore) {
		cublasStatus_t st = cublasSetPointerMode(handle, mode);
		if (st != CUBLAS_STATUS_SUCCESS && rc == 0)
			rc = cublas_fail(__FILE__, __LINE__, "cublasSetPointerMode", st);
	}
	if (restore_stream) {
		cublasStatus_t st = cublasSetStream(handle, callers_stream);
		if (st != CUBLAS_STATUS_SUCCESS && rc == 0)
			rc = cublas_fail(__FILE__, __LINE__, "cublasSetStream", st);
	}
	return rc;
}
