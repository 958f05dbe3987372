/*
 * What the files of lorastore._lorastore share: the module's exceptions and
 * types, the objects more than one file knows (Connection, _Lease, Tensor),
 * and the calls between files.  _lorastore.c: the module, errors,
 * Connection, _Lease, Adapter and the C API capsule; tensor.c: Tensor and
 * DLPack; plan.c: Plan.
 */
#ifndef LS_PY_H
#define LS_PY_H

/* The build defines Py_LIMITED_API (CMake: USE_SABI 3.10). */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>

#include <lorastore.h>

#include "ls_capi.h"

/* Names shared between the module's files, and kept inside it. */
#define LS_PY_INTERNAL __attribute__((visibility("hidden")))

typedef struct {
	PyObject_HEAD
	lorastore *conn;         /* NULL once closed */
	pthread_mutex_t lock;    /* serializes calls on conn */
	Py_ssize_t leases;       /* live _Lease objects of this connection */
} ls_Connection;

typedef struct {
	PyObject_HEAD
	ls_Connection *conn;
	lorastore_adapter *ad;
	lorastore_adapter_info info;
} ls_Lease;

typedef struct {
	PyObject_HEAD
	ls_Lease *lease;
	lorastore_tensor t;
	char dtype_name[16];     /* the dtype it exports as (a view may reinterpret) */
} ls_Tensor;

LS_PY_INTERNAL extern PyTypeObject *ls_TensorType, *ls_PlanType;
LS_PY_INTERNAL extern PyType_Spec ls_tensor_spec, ls_plan_spec;
/* The C API this module exports (ls_capi.h), which its own plans use too. */
LS_PY_INTERNAL extern const struct ls_capi ls_capi_local;

/* Raise the exception of code with message (NULL: the code's description); returns NULL. */
LS_PY_INTERNAL PyObject *ls_raise(int code, const char *message);

/* tensor.c: a Tensor of lease (a new reference to it is kept) exporting as dtype. */
LS_PY_INTERNAL ls_Tensor *ls_tensor_make(ls_Lease *lease, const lorastore_tensor *t,
					 const char *dtype);

/* plan.c: plan_create(adapters, in_features, slices, factors). */
LS_PY_INTERNAL PyObject *ls_plan_create(PyObject *self, PyObject *args);

#endif
