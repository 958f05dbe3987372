/* lorastore._lorastore's Tensor: one tensor of an acquired adapter, exported through DLPack. */
#include "ls_py.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "ls_dlpack.h"

/* DLPack's dtype of a safetensors dtype name; false when it has none. */
static bool ls_dl_dtype_of(const char *name, ls_dl_dtype *out)
{
	static const struct {
		const char *name;
		uint8_t code, bits;
	} map[] = {
		{"F64", LS_DL_FLOAT, 64}, {"F32", LS_DL_FLOAT, 32}, {"F16", LS_DL_FLOAT, 16},
		{"BF16", LS_DL_BFLOAT, 16}, {"I64", LS_DL_INT, 64}, {"I32", LS_DL_INT, 32},
		{"I16", LS_DL_INT, 16}, {"I8", LS_DL_INT, 8}, {"U64", LS_DL_UINT, 64},
		{"U32", LS_DL_UINT, 32}, {"U16", LS_DL_UINT, 16}, {"U8", LS_DL_UINT, 8},
		{"BOOL", LS_DL_BOOL, 8},
	};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(map[i].name, name) == 0) {
			*out = (ls_dl_dtype){map[i].code, map[i].bits, 1};
			return true;
		}
	return false;
}

ls_Tensor *ls_tensor_make(ls_Lease *lease, const lorastore_tensor *t, const char *dtype)
{
	ls_Tensor *x = PyObject_New(ls_Tensor, ls_TensorType);
	if (!x)
		return NULL;
	Py_INCREF(lease);
	x->lease = lease;
	x->t = *t;
	snprintf(x->dtype_name, sizeof(x->dtype_name), "%s", dtype);
	return x;
}

static void ls_tensor_dealloc(ls_Tensor *x)
{
	Py_XDECREF(x->lease);
	PyTypeObject *tp = Py_TYPE(x);
	PyObject_Free(x);
	Py_DECREF(tp);
}

/* What a DLPack consumer holds: the lease, until its deleter runs. */
struct ls_dl_ctx {
	ls_Lease *lease;
	int64_t dims[2 * LORASTORE_MAX_DIMS]; /* shape, then strides */
};

/* Fill a DLPack tensor view of x; ctx keeps its shape and strides. */
static int ls_dl_fill(ls_Tensor *x, ls_dl_tensor *dl, struct ls_dl_ctx *ctx)
{
	const lorastore_tensor *t = &x->t;
	ls_dl_dtype dt;
	if (!ls_dl_dtype_of(x->dtype_name, &dt)) {
		PyErr_Format(PyExc_BufferError, "dtype %s has no DLPack type", x->dtype_name);
		return -1;
	}
	size_t esize = dt.bits / 8;
	uint64_t elems = 1;
	for (unsigned i = 0; i < t->ndim; i++)
		elems *= t->shape[i];
	if (elems * esize != t->bytes) {
		PyErr_Format(PyExc_BufferError, "%s: %llu bytes are not %llu elements of %s",
			     t->module, (unsigned long long)t->bytes, (unsigned long long)elems,
			     x->dtype_name);
		return -1;
	}
	int64_t stride = 1;
	for (unsigned i = t->ndim; i-- > 0;) {
		ctx->dims[i] = (int64_t)t->shape[i];
		ctx->dims[LORASTORE_MAX_DIMS + i] = stride;
		stride *= (int64_t)t->shape[i];
	}
	dl->data = (void *)t->data;
	dl->device = t->device >= 0 ? (ls_dl_device){LS_DL_CUDA, t->device}
				    : (ls_dl_device){LS_DL_CPU, 0};
	dl->ndim = (int32_t)t->ndim;
	dl->dtype = dt;
	dl->shape = ctx->dims;
	dl->strides = ctx->dims + LORASTORE_MAX_DIMS;
	dl->byte_offset = 0;
	return 0;
}

/* Drop the lease a consumer held; the deleter may run on any thread. */
static void ls_dl_release_ctx(struct ls_dl_ctx *ctx)
{
	if (!ctx)
		return;
	if (Py_IsInitialized()) {
		PyGILState_STATE g = PyGILState_Ensure();
		Py_XDECREF(ctx->lease);
		PyGILState_Release(g);
	}
	free(ctx);
}

static void ls_dl_deleter(ls_dl_managed *m)
{
	ls_dl_release_ctx(m->manager_ctx);
	free(m);
}

static void ls_dl_deleter_v(ls_dl_managed_v *m)
{
	ls_dl_release_ctx(m->manager_ctx);
	free(m);
}

/* A capsule nobody consumed still owns its tensor. */
static void ls_capsule_destructor(PyObject *cap)
{
	if (PyCapsule_IsValid(cap, "dltensor")) {
		ls_dl_managed *m = PyCapsule_GetPointer(cap, "dltensor");
		if (m && m->deleter)
			m->deleter(m);
	} else if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
		ls_dl_managed_v *m = PyCapsule_GetPointer(cap, "dltensor_versioned");
		if (m && m->deleter)
			m->deleter(m);
	} else {
		PyErr_Clear(); /* consumed: the consumer calls the deleter */
	}
}

static PyObject *ls_tensor_dlpack(ls_Tensor *x, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
	PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None,
		 *copy = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOOO", kwlist, &stream, &max_version,
					 &dl_device, &copy))
		return NULL;
	(void)stream; /* the data is complete: a load finished before the acquire returned */
	if (copy == Py_True) {
		PyErr_SetString(PyExc_BufferError,
				"lorastore tensors are the daemon's shared read-only memory: "
				"export without copy=True, then copy with the consumer");
		return NULL;
	}
	bool versioned = false;
	if (max_version != Py_None) {
		long major = -1;
		if (PyTuple_Check(max_version) && PyTuple_Size(max_version) >= 1)
			major = PyLong_AsLong(PyTuple_GetItem(max_version, 0));
		if (major == -1 && PyErr_Occurred())
			return NULL;
		versioned = major >= 1;
	}
	if (dl_device != Py_None) {
		long type = -1, id = -1;
		if (PyTuple_Check(dl_device) && PyTuple_Size(dl_device) == 2) {
			type = PyLong_AsLong(PyTuple_GetItem(dl_device, 0));
			id = PyLong_AsLong(PyTuple_GetItem(dl_device, 1));
		}
		if (PyErr_Occurred())
			return NULL;
		long want_type = x->t.device >= 0 ? LS_DL_CUDA : LS_DL_CPU;
		long want_id = x->t.device >= 0 ? x->t.device : 0;
		if (type != want_type || id != want_id) {
			PyErr_SetString(PyExc_BufferError,
					"the tensor lives on another device; lorastore does not copy");
			return NULL;
		}
	}
	struct ls_dl_ctx *ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return PyErr_NoMemory();
	PyObject *cap = NULL;
	if (versioned) {
		ls_dl_managed_v *m = calloc(1, sizeof(*m));
		if (!m || ls_dl_fill(x, &m->dl_tensor, ctx)) {
			free(m);
			free(ctx);
			return m ? NULL : PyErr_NoMemory();
		}
		m->version.major = 1;
		m->version.minor = 0;
		m->flags = LS_DL_FLAG_READ_ONLY;
		m->manager_ctx = ctx;
		m->deleter = ls_dl_deleter_v;
		Py_INCREF(x->lease);
		ctx->lease = x->lease;
		cap = PyCapsule_New(m, "dltensor_versioned", ls_capsule_destructor);
		if (!cap)
			ls_dl_deleter_v(m);
	} else {
		ls_dl_managed *m = calloc(1, sizeof(*m));
		if (!m || ls_dl_fill(x, &m->dl_tensor, ctx)) {
			free(m);
			free(ctx);
			return m ? NULL : PyErr_NoMemory();
		}
		m->manager_ctx = ctx;
		m->deleter = ls_dl_deleter;
		Py_INCREF(x->lease);
		ctx->lease = x->lease;
		cap = PyCapsule_New(m, "dltensor", ls_capsule_destructor);
		if (!cap)
			ls_dl_deleter(m);
	}
	return cap;
}

static PyObject *ls_tensor_dlpack_device(ls_Tensor *x, PyObject *unused)
{
	(void)unused;
	if (x->t.device >= 0)
		return Py_BuildValue("(ii)", LS_DL_CUDA, x->t.device);
	return Py_BuildValue("(ii)", LS_DL_CPU, 0);
}

/* The same bytes seen as another dtype of the same element size (BF16 as U16). */
static PyObject *ls_tensor_view_as(ls_Tensor *x, PyObject *arg)
{
	const char *dtype = PyUnicode_AsUTF8AndSize(arg, NULL);
	if (!dtype)
		return NULL;
	ls_dl_dtype a, b;
	if (!ls_dl_dtype_of(dtype, &b) || !ls_dl_dtype_of(x->dtype_name, &a) || a.bits != b.bits) {
		PyErr_Format(PyExc_ValueError, "cannot view %s as %s", x->dtype_name, dtype);
		return NULL;
	}
	return (PyObject *)ls_tensor_make(x->lease, &x->t, dtype);
}

static PyObject *ls_tensor_shape(ls_Tensor *x, void *unused)
{
	(void)unused;
	PyObject *s = PyTuple_New(x->t.ndim);
	for (unsigned i = 0; s && i < x->t.ndim; i++)
		PyTuple_SetItem(s, i, PyLong_FromUnsignedLongLong(x->t.shape[i]));
	return s;
}

static PyObject *ls_tensor_dtype(ls_Tensor *x, void *unused)
{
	(void)unused;
	return PyUnicode_FromString(x->dtype_name);
}

static PyObject *ls_tensor_module(ls_Tensor *x, void *unused)
{
	(void)unused;
	return PyUnicode_FromString(x->t.module);
}

static PyObject *ls_tensor_device(ls_Tensor *x, void *unused)
{
	(void)unused;
	return PyLong_FromLong(x->t.device);
}

static PyObject *ls_tensor_nbytes(ls_Tensor *x, void *unused)
{
	(void)unused;
	return PyLong_FromUnsignedLongLong(x->t.bytes);
}

static PyObject *ls_tensor_data_ptr(ls_Tensor *x, void *unused)
{
	(void)unused;
	return PyLong_FromVoidPtr((void *)x->t.data);
}


static PyMethodDef ls_tensor_methods[] = {
	{"__dlpack__", (PyCFunction)(void (*)(void))ls_tensor_dlpack, METH_VARARGS | METH_KEYWORDS,
	 "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None)\n--\n\nA "
	 "DLPack capsule of the tensor, read-only, sharing its memory (versioned when the "
	 "consumer asks for 1.0 or later).  The lease lasts until the consumer frees it."},
	{"__dlpack_device__", (PyCFunction)ls_tensor_dlpack_device, METH_NOARGS,
	 "__dlpack_device__()\n--\n\n(device type, device id) as DLPack names them."},
	{"_view_as", (PyCFunction)ls_tensor_view_as, METH_O,
	 "_view_as(dtype)\n--\n\nThe same bytes as another dtype of the same element size."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef ls_tensor_getset[] = {
	{"shape", (getter)ls_tensor_shape, NULL, "The shape, a tuple.", NULL},
	{"dtype", (getter)ls_tensor_dtype, NULL, "The dtype as safetensors names it.", NULL},
	{"module", (getter)ls_tensor_module, NULL, "The module path.", NULL},
	{"device", (getter)ls_tensor_device, NULL, "The CUDA ordinal, or -1 on host.", NULL},
	{"nbytes", (getter)ls_tensor_nbytes, NULL, "Bytes of data.", NULL},
	{"data_ptr", (getter)ls_tensor_data_ptr, NULL, "The address of the data.", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ls_tensor_slots[] = {
	{Py_tp_dealloc, ls_tensor_dealloc},
	{Py_tp_methods, ls_tensor_methods},
	{Py_tp_getset, ls_tensor_getset},
	{Py_tp_doc, "One tensor of an acquired adapter, exported through DLPack without a copy."},
	{0, NULL},
};

PyType_Spec ls_tensor_spec = {
	"lorastore._lorastore.Tensor", sizeof(ls_Tensor), 0, Py_TPFLAGS_DEFAULT, ls_tensor_slots,
};
