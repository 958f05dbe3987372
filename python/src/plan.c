/* lorastore._lorastore's Plan: held adapters applied to arrays that export DLPack. */
#include "ls_py.h"

#include <stdint.h>

#include "ls_dlpack.h"
#include "ls_plan_args.h"

typedef struct {
	PyObject_HEAD
	lorastore_plan *plan;
	PyObject *leases;        /* the adapters' leases: what keeps the memory the plan reads */
	uint64_t in;
} ls_Plan;

static void ls_plan_dealloc(ls_Plan *p)
{
	lorastore_plan_free(p->plan);
	Py_XDECREF(p->leases);
	PyTypeObject *tp = Py_TYPE(p);
	PyObject_Free(p);
	Py_DECREF(tp);
}

/* plan_create(adapters, in_features, slices, factors): a Plan holding the adapters' leases. */
PyObject *ls_plan_create(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *adapters_o, *slices_o, *factors_o;
	unsigned long long in;
	if (!PyArg_ParseTuple(args, "OKOO", &adapters_o, &in, &slices_o, &factors_o))
		return NULL;
	struct ls_plan_args pa;
	if (ls_plan_args_parse(&ls_capi_local, adapters_o, slices_o, factors_o, &pa))
		return NULL;
	ls_Plan *p = PyObject_New(ls_Plan, ls_PlanType);
	if (p) {
		p->plan = NULL;
		p->in = in;
		p->leases = Py_NewRef(pa.keep);
		int rc = lorastore_plan_create(pa.ads, pa.n, pa.factors, in, pa.slices, pa.ns,
					       &p->plan);
		if (rc) {
			Py_CLEAR(p);
			ls_raise(rc, NULL);
		}
	}
	ls_plan_args_free(&pa);
	return (PyObject *)p;
}

/*
 * apply(x, y, token_adapter, segments, threads, bf16_bits): y += the LoRA
 * deltas, in place.
 */
static PyObject *ls_plan_apply(ls_Plan *p, PyObject *args)
{
	PyObject *x_o, *y_o, *tok_o, *seg_o;
	int threads, bf16_bits;
	if (!PyArg_ParseTuple(args, "OOOOip", &x_o, &y_o, &tok_o, &seg_o, &threads, &bf16_bits))
		return NULL;
	if ((tok_o == Py_None) == (seg_o == Py_None)) {
		PyErr_SetString(PyExc_ValueError, "give exactly one of token_adapter and segments");
		return NULL;
	}
	struct ls_dl_in x, y, idx;
	memset(&x, 0, sizeof(x));
	memset(&y, 0, sizeof(y));
	memset(&idx, 0, sizeof(idx));
	PyObject *ret = NULL;
	if (ls_dl_take(x_o, "x", false, LS_DL_CPU, NULL, &x) ||
	    ls_dl_take(y_o, "y", true, LS_DL_CPU, NULL, &y) ||
	    ls_dl_take(tok_o != Py_None ? tok_o : seg_o,
		       tok_o != Py_None ? "token_adapter" : "segments", false, LS_DL_CPU, NULL, &idx))
		goto out;
	lorastore_dtype xdt;
	size_t n_tokens;
	if (ls_apply_args_check(&ls_capi_local, x.t, y.t, idx.t, tok_o != Py_None, bf16_bits, &xdt,
				&n_tokens))
		goto out;
	lorastore_batch b = {.n_tokens = n_tokens};
	if (tok_o != Py_None) {
		b.token_adapter = ls_dl_data(idx.t);
	} else {
		b.n_segments = (size_t)idx.t->shape[0];
		b.segments = ls_dl_data(idx.t);
	}
	size_t ws_size = lorastore_plan_workspace_size(p->plan, n_tokens);
	void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64 + 64);
	if (!ws) {
		PyErr_NoMemory();
		goto out;
	}
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = lorastore_apply(p->plan, &b, xdt, ls_dl_data(x.t), (size_t)x.t->shape[1],
			     (void *)ls_dl_data(y.t), (size_t)y.t->shape[1], ws, ws_size,
			     threads);
	Py_END_ALLOW_THREADS
	free(ws);
	if (rc) {
		ls_raise(rc, NULL);
		goto out;
	}
	ret = Py_None;
	Py_INCREF(ret);
out:
	ls_dl_release(&idx);
	ls_dl_release(&y);
	ls_dl_release(&x);
	return ret;
}

static PyObject *ls_plan_workspace(ls_Plan *p, PyObject *arg)
{
	Py_ssize_t n = PyLong_AsSsize_t(arg);
	if (n < 0)
		return PyErr_Occurred() ? NULL : ls_raise(-EINVAL, "n_tokens < 0");
	return PyLong_FromSize_t(lorastore_plan_workspace_size(p->plan, (size_t)n));
}


static PyMethodDef ls_plan_methods[] = {
	{"apply", (PyCFunction)ls_plan_apply, METH_VARARGS,
	 "apply(x, y, token_adapter, segments, threads, bf16_bits)\n--\n\ny += the adapters' "
	 "deltas, in place (one of token_adapter and segments is None; bf16_bits: x and y are "
	 "uint16 views of bfloat16 arrays)."},
	{"workspace_size", (PyCFunction)ls_plan_workspace, METH_O,
	 "workspace_size(n_tokens)\n--\n\nBytes of workspace a batch of n_tokens uses."},
	{NULL, NULL, 0, NULL},
};

static PyType_Slot ls_plan_slots[] = {
	{Py_tp_dealloc, ls_plan_dealloc},
	{Py_tp_methods, ls_plan_methods},
	{Py_tp_doc, "Adapters prepared for one layer (lorastore_plan_create)."},
	{0, NULL},
};

PyType_Spec ls_plan_spec = {
	"lorastore._lorastore.Plan", sizeof(ls_Plan), 0, Py_TPFLAGS_DEFAULT, ls_plan_slots,
};
