/*
 * The one place that knows whether the CUDA path is built (LSK_HAVE_CUDA,
 * set by kernels/CMakeLists.txt when nvcc is found).  With it, the CUDA
 * entry points forward to kernels/cuda; without it, they answer
 * LS_E_NOT_BUILT and nothing here needs a CUDA header.
 */
#include "ls_error.h"
#include "lsk.h"

#ifdef LSK_HAVE_CUDA
#include "cuda/lsk_cuda.h"
#endif

int lsk_cuda_available(void)
{
#ifdef LSK_HAVE_CUDA
	return lsk_cuda_available_impl(NULL, 0);
#else
	return LS_E_NOT_BUILT;
#endif
}

int lsk_cuda_apply(const lsk_lora *dev, const lsk_lora *host,
                   const lsk_batch *dev_batch, const lsk_batch *host_batch,
                   const void *x, void *y, void *workspace, size_t workspace_size,
                   void *stream, void *cublas)
{
#ifdef LSK_HAVE_CUDA
	return lsk_cuda_apply_impl(dev, host, dev_batch, host_batch, x, y, workspace,
	                           workspace_size, stream, cublas);
#else
	return LS_E_NOT_BUILT;
#endif
}
