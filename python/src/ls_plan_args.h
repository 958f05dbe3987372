/*
 * The arguments of a plan, as both extension modules take them from the
 * package: adapter handles (from Adapter._handle(), whose leases the caller
 * keeps), slices as (module, out_offset, out) tuples, and factors (None, or
 * one float per adapter).  The library checks the rest (lorastore_plan_create,
 * lorastore_cuda_plan_create).
 */
#ifndef LS_PLAN_ARGS_H
#define LS_PLAN_ARGS_H

#include <Python.h>

#include <stdlib.h>
#include <string.h>

#include <lorastore.h>

struct ls_plan_args {
	lorastore_adapter **ads;
	size_t n;
	lorastore_slice *slices;     /* module strings belong to slices_fast */
	size_t ns;
	float *factors;              /* NULL when none were given */
	PyObject *slices_fast;
};

static inline void ls_plan_args_free(struct ls_plan_args *a)
{
	free(a->ads);
	free(a->slices);
	free(a->factors);
	Py_XDECREF(a->slices_fast);
	memset(a, 0, sizeof(*a));
}

/* 0, or -1 with an exception set (a->... freed). */
static inline int ls_plan_args_parse(PyObject *handles_o, PyObject *slices_o,
				     PyObject *factors_o, struct ls_plan_args *a)
{
	memset(a, 0, sizeof(*a));
	PyObject *hs = PySequence_Fast(handles_o, "adapters must be a sequence");
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
	if (!a->ads || !a->slices || (fcs && !a->factors)) {
		PyErr_NoMemory();
		goto fail;
	}
	for (size_t i = 0; i < a->n; i++) {
		PyObject *h = PySequence_GetItem(hs, (Py_ssize_t)i);
		a->ads[i] = h ? PyLong_AsVoidPtr(h) : NULL;
		Py_XDECREF(h);
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

#endif
