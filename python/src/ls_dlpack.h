/*
 * DLPack for the Python package: the data structures of its ABI (version
 * 1.0) as producers and consumers exchange them, and the consumer side (an
 * array taken from any producer for the length of one call).  Included by
 * both extension modules (_lorastore.c, _cuda.c).
 */
#ifndef LS_DLPACK_H
#define LS_DLPACK_H

#include <Python.h>

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* DLPack: the data structures of its ABI (version 1.0), as consumers read them. */

enum { LS_DL_CPU = 1, LS_DL_CUDA = 2 };
enum { LS_DL_INT = 0, LS_DL_UINT = 1, LS_DL_FLOAT = 2, LS_DL_BFLOAT = 4, LS_DL_BOOL = 6 };
#define LS_DL_FLAG_READ_ONLY (1ull << 0)

typedef struct {
	int32_t device_type; /* an enum in the ABI: the size of an int */
	int32_t device_id;
} ls_dl_device;

typedef struct {
	uint8_t code;
	uint8_t bits;
	uint16_t lanes;
} ls_dl_dtype;

typedef struct {
	void *data;
	ls_dl_device device;
	int32_t ndim;
	ls_dl_dtype dtype;
	int64_t *shape;
	int64_t *strides;
	uint64_t byte_offset;
} ls_dl_tensor;

/* The unversioned managed tensor ("dltensor" capsules). */
typedef struct ls_dl_managed {
	ls_dl_tensor dl_tensor;
	void *manager_ctx;
	void (*deleter)(struct ls_dl_managed *self);
} ls_dl_managed;

/* The versioned one ("dltensor_versioned" capsules), which carries flags. */
typedef struct ls_dl_managed_v {
	struct {
		uint32_t major, minor;
	} version;
	void *manager_ctx;
	void (*deleter)(struct ls_dl_managed_v *self);
	uint64_t flags;
	ls_dl_tensor dl_tensor;
} ls_dl_managed_v;

/* An array taken from a DLPack producer for the length of one call. */
struct ls_dl_in {
	PyObject *capsule;
	bool versioned;
	void *managed;            /* ls_dl_managed or ls_dl_managed_v */
	const ls_dl_tensor *t;
};

/*
 * Take obj's DLPack tensor (versioned when the producer can): a
 * C-contiguous array on device type want (LS_DL_CPU or LS_DL_CUDA).
 * writable: refuse a read-only one.  stream (CUDA arrays): the consumer's
 * stream, as __dlpack__ takes it (the producer orders its work before it).
 * 0, or -1 with an exception set (BufferError for an array on another
 * device type; the caller may say more).
 */
static inline int ls_dl_take(PyObject *obj, const char *what, bool writable, int want,
			     PyObject *stream, struct ls_dl_in *in)
{
	memset(in, 0, sizeof(*in));
	PyObject *fn = PyObject_GetAttrString(obj, "__dlpack__");
	if (!fn) {
		PyErr_Format(PyExc_TypeError, "%s does not export DLPack (no __dlpack__)", what);
		return -1;
	}
	PyObject *kw = want == LS_DL_CUDA && stream
			       ? Py_BuildValue("{s:(ii),s:O}", "max_version", 1, 0, "stream", stream)
			       : Py_BuildValue("{s:(ii)}", "max_version", 1, 0);
	PyObject *empty = PyTuple_New(0);
	PyObject *cap = kw && empty ? PyObject_Call(fn, empty, kw) : NULL;
	if (!cap && PyErr_ExceptionMatches(PyExc_TypeError)) {
		/* A producer from before DLPack 1.0. */
		PyErr_Clear();
		PyObject *kw0 = want == LS_DL_CUDA && stream
					? Py_BuildValue("{s:O}", "stream", stream)
					: NULL;
		cap = PyObject_Call(fn, empty, kw0);
		Py_XDECREF(kw0);
	}
	Py_XDECREF(kw);
	Py_XDECREF(empty);
	Py_DECREF(fn);
	if (!cap)
		return -1;
	in->capsule = cap;
	if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
		ls_dl_managed_v *m = PyCapsule_GetPointer(cap, "dltensor_versioned");
		if (m->version.major != 1) {
			PyErr_Format(PyExc_BufferError, "%s: DLPack version %u is not supported", what,
				     m->version.major);
			return -1;
		}
		if (writable && (m->flags & LS_DL_FLAG_READ_ONLY)) {
			PyErr_Format(PyExc_ValueError, "%s is read-only", what);
			return -1;
		}
		PyCapsule_SetName(cap, "used_dltensor_versioned");
		in->versioned = true;
		in->managed = m;
		in->t = &m->dl_tensor;
	} else if (PyCapsule_IsValid(cap, "dltensor")) {
		ls_dl_managed *m = PyCapsule_GetPointer(cap, "dltensor");
		PyCapsule_SetName(cap, "used_dltensor");
		in->managed = m;
		in->t = &m->dl_tensor;
	} else {
		PyErr_Format(PyExc_BufferError, "%s: __dlpack__ gave no DLPack capsule", what);
		return -1;
	}
	const ls_dl_tensor *t = in->t;
	if (t->device.device_type != want) {
		PyErr_Format(PyExc_BufferError, "%s is in %s memory; this call takes %s memory", what,
			     t->device.device_type == LS_DL_CUDA ? "GPU" : "other",
			     want == LS_DL_CUDA ? "GPU" : "host");
		return -1;
	}
	/* C-contiguous: no strides, or the row-major ones. */
	int64_t expect = 1;
	for (int32_t d = t->ndim; t->strides && d-- > 0;) {
		if (t->shape[d] != 1 && t->strides[d] != expect) {
			PyErr_Format(PyExc_ValueError, "%s must be C-contiguous", what);
			return -1;
		}
		expect *= t->shape[d];
	}
	return 0;
}

/* Done with an array: the producer's deleter runs (the capsule was consumed). */
static inline void ls_dl_release(struct ls_dl_in *in)
{
	if (in->managed) {
		if (in->versioned) {
			ls_dl_managed_v *m = in->managed;
			if (m->deleter)
				m->deleter(m);
		} else {
			ls_dl_managed *m = in->managed;
			if (m->deleter)
				m->deleter(m);
		}
	}
	Py_XDECREF(in->capsule);
	memset(in, 0, sizeof(*in));
}

static inline const void *ls_dl_data(const ls_dl_tensor *t)
{
	return (const char *)t->data + t->byte_offset;
}

/*
 * lorastore's dtype of an activation array; false when it has none.
 * bf16_bits: uint16 arrays hold bfloat16 bits (numpy's bfloat16, from
 * ml_dtypes, cannot export DLPack, so the package passes a uint16 view).
 */
static inline bool ls_act_dtype(const ls_dl_tensor *t, bool bf16_bits, lorastore_dtype *out)
{
	if (t->dtype.lanes != 1)
		return false;
	if (bf16_bits)
		return t->dtype.code == LS_DL_UINT && t->dtype.bits == 16 &&
		       (*out = LORASTORE_DTYPE_BF16, true);
	if (t->dtype.code == LS_DL_FLOAT && t->dtype.bits == 32)
		*out = LORASTORE_DTYPE_F32;
	else if (t->dtype.code == LS_DL_FLOAT && t->dtype.bits == 16)
		*out = LORASTORE_DTYPE_F16;
	else if (t->dtype.code == LS_DL_BFLOAT && t->dtype.bits == 16)
		*out = LORASTORE_DTYPE_BF16;
	else
		return false;
	return true;
}

/* A 32-bit signed integer array of the batch (indices, segments). */
static inline bool ls_dl_is_int32(const ls_dl_tensor *t)
{
	return t->dtype.code == LS_DL_INT && t->dtype.bits == 32 && t->dtype.lanes == 1;
}

#endif
