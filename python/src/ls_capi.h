/*
 * The C API that lorastore._lorastore exports to the package's other
 * extension modules (lorastore._cuda, and engine modules to come) through a
 * capsule, so that they take Adapter objects themselves, never raw pointers
 * passed as integers beside a separate tuple of leases.
 */
#ifndef LS_CAPI_H
#define LS_CAPI_H

#include <Python.h>

#include <lorastore.h>

#define LS_CAPI_NAME "lorastore._lorastore._C_API"
#define LS_CAPI_VERSION 1u

struct ls_capi {
	unsigned version;            /* LS_CAPI_VERSION of the module that filled it */
	/*
	 * The lorastore_adapter of obj, an Adapter of lorastore._lorastore,
	 * and in *keep a new reference to what keeps its memory (its lease):
	 * hold it while the pointer is used.  NULL with an exception set when
	 * obj is not an Adapter or was released.
	 */
	lorastore_adapter *(*adapter)(PyObject *obj, PyObject **keep);
	/* Raise the package's exception of a library code; returns NULL. */
	PyObject *(*raise)(int code, const char *message);
};

/* The API of lorastore._lorastore (imported if need be), or NULL with an exception set. */
static inline const struct ls_capi *ls_capi_import(void)
{
	const struct ls_capi *api = PyCapsule_Import(LS_CAPI_NAME, 0);
	if (api && api->version != LS_CAPI_VERSION) {
		PyErr_Format(PyExc_ImportError, "lorastore._lorastore's C API is version %u, not %u",
			     api->version, LS_CAPI_VERSION);
		return NULL;
	}
	return api;
}

#endif
