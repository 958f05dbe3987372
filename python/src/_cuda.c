/*
 * lorastore._cuda: device apply from Python, through liblorastore_cuda's
 * device plan (client/cuda/plan_cuda.c, built into this module with the CUDA
 * kernels and the CUDA runtime; cuBLAS is linked).  A separate module, so
 * that `import lorastore` never needs a CUDA library: the package imports
 * this one only when a plan of device-tier adapters is made.
 *
 * The adapters come as lorastore._lorastore's Adapter objects, read through
 * that module's C API (ls_capi.h), which gives each one's lease: a plan
 * holds those leases.  A Python plan keeps a
 * workspace and a buffer for host-given indices on its GPU, grown when a
 * larger batch comes (so the first call of a size allocates; later ones
 * allocate nothing).
 */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include <lorastore.h>
#include <lorastore_cuda.h>

#include "ls_dlpack.h"
#include "ls_plan_args.h"

static PyTypeObject *ls_CudaPlanType;

/* lorastore._lorastore's C API: Adapter objects, and the package's exceptions. */
static const struct ls_capi *ls_api;

static PyObject *ls_cuda_raise(int code, const char *message)
{
	return ls_api->raise(code, message);
}

typedef struct {
	PyObject_HEAD
	lorastore_cuda_plan *plan;
	PyObject *leases;        /* what keeps the adapters' memory */
	void *ws;                /* device workspace */
	size_t ws_size;
	int32_t *idx;            /* device buffer for indices or segments given on the host */
	size_t idx_size;         /* bytes */
} ls_CudaPlan;

static void ls_cuda_plan_dealloc(ls_CudaPlan *p)
{
	if (p->plan) {
		int prev = 0;
		cudaGetDevice(&prev);
		cudaSetDevice(lorastore_cuda_plan_device(p->plan));
		cudaFree(p->ws);
		cudaFree(p->idx);
		cudaSetDevice(prev);
		lorastore_cuda_plan_free(p->plan);
	}
	Py_XDECREF(p->leases);
	PyTypeObject *tp = Py_TYPE(p);
	PyObject_Free(p);
	Py_DECREF(tp);
}

/* plan_create(adapters, in_features, slices, factors) */
static PyObject *ls_cuda_plan_create(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *adapters_o, *slices_o, *factors_o;
	unsigned long long in;
	if (!PyArg_ParseTuple(args, "OKOO", &adapters_o, &in, &slices_o, &factors_o))
		return NULL;
	struct ls_plan_args pa;
	if (ls_plan_args_parse(ls_api, adapters_o, slices_o, factors_o, &pa))
		return NULL;
	ls_CudaPlan *p = PyObject_New(ls_CudaPlan, ls_CudaPlanType);
	if (p) {
		p->plan = NULL;
		p->ws = NULL;
		p->ws_size = 0;
		p->idx = NULL;
		p->idx_size = 0;
		p->leases = Py_NewRef(pa.keep);
		int rc = lorastore_cuda_plan_create(pa.ads, pa.n, pa.factors, in, pa.slices, pa.ns,
						    &p->plan);
		if (rc) {
			Py_CLEAR(p);
			ls_cuda_raise(rc, NULL);
		}
	}
	ls_plan_args_free(&pa);
	return (PyObject *)p;
}

/* Grow a device buffer of the plan's GPU to at least need bytes; 0 or an error raised. */
static int ls_grow(ls_CudaPlan *p, void **buf, size_t *size, size_t need)
{
	if (need <= *size)
		return 0;
	int prev = 0;
	cudaGetDevice(&prev);
	cudaSetDevice(lorastore_cuda_plan_device(p->plan));
	cudaFree(*buf);
	*buf = NULL;
	*size = 0;
	cudaError_t e = cudaMalloc(buf, need);
	cudaSetDevice(prev);
	if (e != cudaSuccess) {
		(void)cudaGetLastError();
		char msg[160];
		snprintf(msg, sizeof(msg), "cudaMalloc of %zu bytes: %s", need, cudaGetErrorString(e));
		ls_cuda_raise(LORASTORE_E_DEVICE, msg);
		return -1;
	}
	*size = need;
	return 0;
}

/*
 * apply(x, y, token_adapter, segments, stream, cublas, bf16_bits):
 * token_adapter is a GPU int32 array, or a host one (copied to the plan's
 * buffer); segments are a host int32 [n, 3] array (copied likewise).
 */
static PyObject *ls_cuda_plan_apply(ls_CudaPlan *p, PyObject *args)
{
	PyObject *x_o, *y_o, *tok_o, *seg_o, *stream_o, *cublas_o;
	int bf16_bits;
	if (!PyArg_ParseTuple(args, "OOOOOOp", &x_o, &y_o, &tok_o, &seg_o, &stream_o, &cublas_o,
			      &bf16_bits))
		return NULL;
	if ((tok_o == Py_None) == (seg_o == Py_None)) {
		PyErr_SetString(PyExc_ValueError, "give exactly one of token_adapter and segments");
		return NULL;
	}
	void *stream = stream_o == Py_None ? NULL : PyLong_AsVoidPtr(stream_o);
	void *cublas = cublas_o == Py_None ? NULL : PyLong_AsVoidPtr(cublas_o);
	if (PyErr_Occurred())
		return NULL;
	/* DLPack's name for the stream the consumer works on: 1 is the legacy default. */
	PyObject *dl_stream = stream ? PyLong_FromVoidPtr(stream) : PyLong_FromLong(1);
	if (!dl_stream)
		return NULL;
	struct ls_dl_in x, y, idx;
	memset(&x, 0, sizeof(x));
	memset(&y, 0, sizeof(y));
	memset(&idx, 0, sizeof(idx));
	PyObject *ret = NULL;
	bool tok_on_gpu = false;
	if (tok_o != Py_None) {
		PyObject *dev = PyObject_CallMethod(tok_o, "__dlpack_device__", NULL);
		if (dev && PyTuple_Check(dev) && PyTuple_Size(dev) == 2)
			tok_on_gpu = PyLong_AsLong(PyTuple_GetItem(dev, 0)) == LS_DL_CUDA;
		Py_XDECREF(dev);
		if (PyErr_Occurred())
			goto out;
	}
	if (ls_dl_take(x_o, "x", false, LS_DL_CUDA, dl_stream, &x) ||
	    ls_dl_take(y_o, "y", true, LS_DL_CUDA, dl_stream, &y))
		goto out;
	if (tok_o != Py_None ? ls_dl_take(tok_o, "token_adapter", false,
					  tok_on_gpu ? LS_DL_CUDA : LS_DL_CPU, dl_stream, &idx)
			     : ls_dl_take(seg_o, "segments", false, LS_DL_CPU, NULL, &idx))
		goto out;
	lorastore_dtype xdt;
	size_t n_tokens;
	if (ls_apply_args_check(ls_api, x.t, y.t, idx.t, tok_o != Py_None, bf16_bits, &xdt,
				&n_tokens))
		goto out;
	int dev = lorastore_cuda_plan_device(p->plan);
	if (x.t->device.device_id != dev || y.t->device.device_id != dev ||
	    (tok_on_gpu && idx.t->device.device_id != dev)) {
		ls_cuda_raise(LORASTORE_E_TIER, "x, y and the indices must be on the adapters' GPU");
		goto out;
	}
	lorastore_cuda_batch b = {.n_tokens = n_tokens};
	size_t idx_bytes;
	if (tok_o != Py_None) {
		idx_bytes = n_tokens * sizeof(int32_t);
	} else {
		b.n_segments = (size_t)idx.t->shape[0];
		b.host_segments = ls_dl_data(idx.t);
		idx_bytes = b.n_segments * sizeof(lorastore_segment);
	}
	size_t ws_need = lorastore_cuda_plan_workspace_size(p->plan, n_tokens);
	if (ls_grow(p, &p->ws, &p->ws_size, ws_need ? ws_need : 256))
		goto out;
	const int32_t *dev_idx = ls_dl_data(idx.t);
	if (!tok_on_gpu && idx_bytes) {
		if (ls_grow(p, (void **)&p->idx, &p->idx_size, idx_bytes))
			goto out;
		/* From pageable memory: the call returns once the bytes are staged. */
		cudaError_t e = cudaMemcpyAsync(p->idx, dev_idx, idx_bytes, cudaMemcpyHostToDevice,
						(cudaStream_t)stream);
		if (e != cudaSuccess) {
			(void)cudaGetLastError();
			ls_cuda_raise(LORASTORE_E_DEVICE, cudaGetErrorString(e));
			goto out;
		}
		dev_idx = p->idx;
	}
	if (tok_o != Py_None)
		b.token_adapter = dev_idx;
	else
		b.segments = (const lorastore_segment *)dev_idx;
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = lorastore_cuda_apply(p->plan, &b, xdt, ls_dl_data(x.t), (size_t)x.t->shape[1],
				  (void *)ls_dl_data(y.t), (size_t)y.t->shape[1], p->ws, p->ws_size,
				  stream, cublas);
	Py_END_ALLOW_THREADS
	if (rc) {
		ls_cuda_raise(rc, NULL);
		goto out;
	}
	ret = Py_NewRef(Py_None);
out:
	ls_dl_release(&idx);
	ls_dl_release(&y);
	ls_dl_release(&x);
	Py_DECREF(dl_stream);
	return ret;
}

static PyObject *ls_cuda_plan_bad(ls_CudaPlan *p, PyObject *args)
{
	PyObject *stream_o;
	int reset;
	if (!PyArg_ParseTuple(args, "Op", &stream_o, &reset))
		return NULL;
	void *stream = stream_o == Py_None ? NULL : PyLong_AsVoidPtr(stream_o);
	if (PyErr_Occurred())
		return NULL;
	uint32_t n = 0;
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = lorastore_cuda_plan_bad_indices(p->plan, stream, reset, &n);
	Py_END_ALLOW_THREADS
	if (rc)
		return ls_cuda_raise(rc, NULL);
	return PyLong_FromUnsignedLong(n);
}

static PyObject *ls_cuda_plan_device(ls_CudaPlan *p, void *unused)
{
	(void)unused;
	return PyLong_FromLong(lorastore_cuda_plan_device(p->plan));
}

static PyMethodDef ls_cuda_plan_methods[] = {
	{"apply", (PyCFunction)ls_cuda_plan_apply, METH_VARARGS,
	 "apply(x, y, token_adapter, segments, stream, cublas, bf16_bits)\n--\n\nEnqueue y += "
	 "the adapters' deltas on stream."},
	{"bad_indices", (PyCFunction)ls_cuda_plan_bad, METH_VARARGS,
	 "bad_indices(stream, reset)\n--\n\nIndices the GPU found out of range (waits for "
	 "stream)."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef ls_cuda_plan_getset[] = {
	{"device", (getter)ls_cuda_plan_device, NULL, "The CUDA ordinal of the plan's GPU.", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ls_cuda_plan_slots[] = {
	{Py_tp_dealloc, ls_cuda_plan_dealloc},
	{Py_tp_methods, ls_cuda_plan_methods},
	{Py_tp_getset, ls_cuda_plan_getset},
	{Py_tp_doc, "Device-tier adapters prepared for one layer (lorastore_cuda_plan_create)."},
	{0, NULL},
};

static PyType_Spec ls_cuda_plan_spec = {
	"lorastore._cuda.CudaPlan", sizeof(ls_CudaPlan), 0, Py_TPFLAGS_DEFAULT, ls_cuda_plan_slots,
};

static PyMethodDef ls_cuda_methods[] = {
	{"plan_create", ls_cuda_plan_create, METH_VARARGS,
	 "plan_create(adapters, in_features, slices, factors)\n--\n\nA device plan of "
	 "lorastore._lorastore Adapter objects."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef ls_cuda_module = {
	PyModuleDef_HEAD_INIT, "_cuda", "Device apply of lorastore (liblorastore_cuda).", -1,
	ls_cuda_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cuda(void)
{
	if (!(ls_api = ls_capi_import()))
		return NULL;
	PyObject *m = PyModule_Create(&ls_cuda_module);
	if (!m)
		return NULL;
	ls_CudaPlanType = (PyTypeObject *)PyType_FromSpec(&ls_cuda_plan_spec);
	if (!ls_CudaPlanType) {
		Py_DECREF(m);
		return NULL;
	}
	Py_INCREF(ls_CudaPlanType);
	if (PyModule_AddObject(m, "CudaPlan", (PyObject *)ls_CudaPlanType)) {
		Py_DECREF(ls_CudaPlanType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
