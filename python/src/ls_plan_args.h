/*
 * The arguments of a plan, as both extension modules take them from the
 * package: Adapter objects (through the C API of ls_capi.h, which gives each
 * one's lease to keep), slices as (module, out_offset, out) tuples, and
 * factors (None, or one float per adapter).  The library checks the rest
 * (lorastore_plan_create, lorastore_cuda_plan_create).
 */
#ifndef LS_PLAN_ARGS_H
#define LS_PLAN_ARGS_H

#include <Python.h>

#include <stdlib.h>
#include <string.h>

#include <lorastore.h>

#include "ls_capi.h"
#include "ls_dlpack.h"

struct ls_plan_args {
	lorastore_adapter **ads;
	size_t n;
	lorastore_slice *slices;     /* module strings belong to slices_fast */
	size_t ns;
	float *factors;              /* NULL when none were given */
	PyObject *slices_fast;
	PyObject *keep;              /* a tuple of the adapters' leases: the plan holds it */
};

static inline void ls_plan_args_free(struct ls_plan_args *a)
{
	free(a->ads);
	free(a->slices);
	free(a->factors);
	Py_XDECREF(a->slices_fast);
	Py_XDECREF(a->keep);
	memset(a, 0, sizeof(*a));
}

/* 0, or -1 with an exception set (a->... freed). */
static inline int ls_plan_args_parse(const struct ls_capi *api, PyObject *adapters_o,
				     PyObject *slices_o, PyObject *factors_o,
				     struct ls_plan_args *a)
{
	memset(a, 0, sizeof(*a));
	PyObject *hs = PySequence_Fast(adapters_o, "adapters must be a sequence");
	PyObject *fcs = hs && factors_o != Py_None
				? PySequence_Fast(factors_o, "factors must be a sequence of float")
				: NULL;
	a->slices_fast = hs ? PySequence_Fast(slices_o, "slices must be a sequence") : NULL;
	if (!hs || !a->slices_fast || (factors_o != Py_None && !fcs))
		goto fail;
	a->n = (size_t)PySequence_Size(hs);
	a->ns = (size_t)PySequence_Size(a->slices_fast);
	if (fcs && (size_t)PySequence_Size(fcs) != a->n) {
		PyErr_SetString(PyExc_ValueError, "give one factor per adapter");
		goto fail;
	}
	a->ads = calloc(a->n ? a->n : 1, sizeof(*a->ads));
	a->slices = calloc(a->ns ? a->ns : 1, sizeof(*a->slices));
	a->factors = fcs ? calloc(a->n ? a->n : 1, sizeof(*a->factors)) : NULL;
	a->keep = PyTuple_New((Py_ssize_t)a->n);
	if (!a->ads || !a->slices || (fcs && !a->factors) || !a->keep) {
		if (!PyErr_Occurred())
			PyErr_NoMemory();
		goto fail;
	}
	for (size_t i = 0; i < a->n; i++) {
		PyObject *h = PySequence_GetItem(hs, (Py_ssize_t)i);
		PyObject *lease = NULL;
		a->ads[i] = h ? api->adapter(h, &lease) : NULL;
		Py_XDECREF(h);
		if (!a->ads[i])
			goto fail;
		PyTuple_SetItem(a->keep, (Py_ssize_t)i, lease); /* steals it */
		if (fcs) {
			PyObject *f = PySequence_GetItem(fcs, (Py_ssize_t)i);
			a->factors[i] = f ? (float)PyFloat_AsDouble(f) : 0;
			Py_XDECREF(f);
		}
		if (PyErr_Occurred())
			goto fail;
	}
	for (size_t s = 0; s < a->ns; s++) {
		PyObject *o = PySequence_GetItem(a->slices_fast, (Py_ssize_t)s);
		const char *module;
		unsigned long long off, out;
		int ok = o && PyTuple_Check(o) && PyArg_ParseTuple(o, "sKK", &module, &off, &out);
		Py_XDECREF(o); /* the slices sequence keeps the str alive */
		if (!ok) {
			if (!PyErr_Occurred())
				PyErr_SetString(PyExc_TypeError,
						"each slice is a tuple (module, out_offset, out)");
			goto fail;
		}
		a->slices[s] = (lorastore_slice){module, off, out};
	}
	Py_DECREF(hs);
	Py_XDECREF(fcs);
	return 0;
fail:
	Py_XDECREF(hs);
	Py_XDECREF(fcs);
	ls_plan_args_free(a);
	return -1;
}

/*
 * The arrays of an apply checked alike on either module: x and y of one
 * activation dtype, 2-D with one row per token, and int32 indices (one per
 * token, or rows of (start, len, adapter)).  0 with *dt and *n_tokens, or
 * -1 with lorastore's exception raised.
 */
static inline int ls_apply_args_check(const struct ls_capi *api, const ls_dl_tensor *x,
				      const ls_dl_tensor *y, const ls_dl_tensor *idx, bool tokens,
				      bool bf16_bits, lorastore_dtype *dt, size_t *n_tokens)
{
	lorastore_dtype ydt;
	if (!ls_act_dtype(x, bf16_bits, dt) || !ls_act_dtype(y, bf16_bits, &ydt) || *dt != ydt) {
		api->raise(LORASTORE_E_DTYPE, "x and y must share one dtype: float32, float16 or "
					      "bfloat16");
		return -1;
	}
	if (x->ndim != 2 || y->ndim != 2 || x->shape[0] != y->shape[0]) {
		api->raise(LORASTORE_E_SHAPE, "x and y must be 2-D with one row per token");
		return -1;
	}
	if (!ls_dl_is_int32(idx)) {
		api->raise(LORASTORE_E_DTYPE, "token_adapter and segments must be int32");
		return -1;
	}
	*n_tokens = (size_t)x->shape[0];
	if (tokens && (idx->ndim != 1 || (size_t)idx->shape[0] != *n_tokens)) {
		api->raise(LORASTORE_E_SHAPE, "token_adapter must have one index per token");
		return -1;
	}
	if (!tokens && (idx->ndim != 2 || idx->shape[1] != 3)) {
		api->raise(LORASTORE_E_SHAPE, "segments must be rows of (start, len, adapter)");
		return -1;
	}
	return 0;
}

#endif
