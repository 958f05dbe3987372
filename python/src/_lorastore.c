/*
 * lorastore._lorastore: the CPython binding of liblorastore (linked in
 * statically), written against the limited API (abi3, Python 3.10 and later).
 *
 * Objects and who keeps what alive:
 *
 *   Connection   a lorastore handle, a mutex that serializes calls on it (a
 *                connection may be shared by threads), and the number of its
 *                live leases.
 *   _Lease       one acquired adapter (lorastore_adapter *).  It holds its
 *                Connection; its dealloc releases the adapter.  Every object
 *                that points into the adapter's memory holds the _Lease: the
 *                Adapter (until ad.release()), each Tensor, and each DLPack
 *                capsule handed to a consumer (until the consumer's deleter
 *                runs).  So the lease ends with the last of them, and no
 *                Python object can point at memory that is no longer leased.
 *   Adapter      facts about the adapter, and its _Lease until release().
 *   Tensor       one tensor of an adapter: __dlpack__, __dlpack_device__,
 *                shape, dtype.
 *
 * This file: the module, its exceptions, Connection, _Lease, Adapter, and
 * the C API capsule (ls_capi.h) through which lorastore._cuda takes Adapter
 * objects; tensor.c: Tensor and DLPack; plan.c: Plan (ls_py.h is what they
 * share).
 *
 * Connection.close() with live leases raises and unmaps nothing.  Calls
 * that may block (connect, acquire waiting for a load, import, verify, gc)
 * release the GIL; the connection's mutex is never held while waiting for
 * the GIL, so the two cannot deadlock.
 */
#include "ls_py.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ls_dlpack.h"

/* ------------------------------------------------------------------ */
/* Module state: types and exceptions */

static PyObject *ls_Error, *ls_NotFound, *ls_PermissionDenied, *ls_Corrupt, *ls_NoSpace,
	*ls_InvalidAdapter, *ls_ConnectionClosed, *ls_InvalidArgument, *ls_Timeout,
	*ls_DeviceError;
static PyTypeObject *ls_ConnectionType, *ls_LeaseType, *ls_AdapterType;
PyTypeObject *ls_TensorType, *ls_PlanType;

/* The exception class of a library code. */
static PyObject *ls_error_class(int code)
{
	switch (code) {
	case LORASTORE_E_NOT_FOUND:
	case -ENOENT:
		return ls_NotFound;
	case -EPERM:
	case -EACCES:
		return ls_PermissionDenied;
	case LORASTORE_E_CORRUPT:
	case LORASTORE_E_BLOB_FORMAT:
	case LORASTORE_E_BLOB_MISSING:
	case LORASTORE_E_BLOB_TRUNCATED:
		return ls_Corrupt;
	case LORASTORE_E_NO_SPACE:
	case LORASTORE_E_PIN_LIMIT:
	case -ENOSPC:
		return ls_NoSpace;
	case LORASTORE_E_CLOSED:
	case -EPIPE:
	case -ECONNRESET:
	case -ECONNREFUSED:
		return ls_ConnectionClosed;
	case -ETIMEDOUT:
		return ls_Timeout;
	case -EUSERS:
	case -EMFILE:
		return ls_ConnectionClosed;
	case LORASTORE_E_SHAPE:
	case LORASTORE_E_DTYPE:
	case LORASTORE_E_TIER:
	case LORASTORE_E_NAME_INVALID:  /* a name or reference the caller gave */
	case -EINVAL:
		return ls_InvalidArgument;
	case LORASTORE_E_NO_DEVICE:
	case LORASTORE_E_DEVICE:
	case LORASTORE_E_NOT_BUILT:
	case LORASTORE_E_BACKEND:
		return ls_DeviceError;
	}
	/* What an import can refuse: the file, the config, the bounds, the base model. */
	if ((code >= LORASTORE_E_TRUNCATED && code <= LORASTORE_E_CONFIG_INVALID) ||
	    code == LORASTORE_E_ADAPTER_LIMIT || code == LORASTORE_E_BASE_CHANGED)
		return ls_InvalidAdapter;
	return ls_Error;
}

/* Raise the exception of code with message (NULL: the code's description). */
PyObject *ls_raise(int code, const char *message)
{
	PyObject *cls = ls_error_class(code);
	const char *msg = message && *message ? message : lorastore_strerror(code);
	PyObject *exc = PyObject_CallFunction(cls, "s", msg);
	if (!exc)
		return NULL;
	PyObject *c = PyLong_FromLong(code);
	PyObject *m = PyUnicode_FromString(msg);
	if (c && m && PyObject_SetAttrString(exc, "code", c) == 0 &&
	    PyObject_SetAttrString(exc, "message", m) == 0)
		PyErr_SetObject(cls, exc);
	Py_XDECREF(c);
	Py_XDECREF(m);
	Py_DECREF(exc);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Connection */

/*
 * Run call (an int expression on c->conn) with the GIL released and the
 * connection locked, into rc; on failure the connection's message goes to
 * msg (a char array) before the lock is let go.
 */
#define LS_BLOCKING(c, rc, msg, call)                                               \
	do {                                                                        \
		Py_BEGIN_ALLOW_THREADS                                              \
		pthread_mutex_lock(&(c)->lock);                                     \
		(rc) = (call);                                                      \
		if (rc)                                                             \
			snprintf((msg), sizeof(msg), "%s", lorastore_errmsg((c)->conn)); \
		pthread_mutex_unlock(&(c)->lock);                                   \
		Py_END_ALLOW_THREADS                                                \
	} while (0)

/* Raise for a failed call on c (its message), with code. */
static PyObject *ls_conn_raise(ls_Connection *c, int code)
{
	char msg[512];
	snprintf(msg, sizeof(msg), "%s", c->conn ? lorastore_errmsg(c->conn) : "");
	return ls_raise(code, msg);
}

static int ls_conn_open(ls_Connection *c)
{
	if (c->conn)
		return 0;
	ls_raise(LORASTORE_E_CLOSED, "the connection is closed");
	return -1;
}

static PyObject *ls_connection_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"socket", "connect_timeout_ms", NULL};
	const char *path = NULL;
	int timeout_ms = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|zi", kwlist, &path, &timeout_ms))
		return NULL;
	ls_Connection *c = (ls_Connection *)PyType_GenericAlloc(type, 0);
	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	lorastore *conn = NULL;
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = lorastore_connect_timeout(path, timeout_ms, &conn);
	Py_END_ALLOW_THREADS
	if (rc) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", conn ? lorastore_errmsg(conn) : lorastore_strerror(rc));
		lorastore_close(conn);
		Py_DECREF(c);
		return ls_raise(rc, msg);
	}
	c->conn = conn;
	return (PyObject *)c;
}

static void ls_connection_dealloc(ls_Connection *c)
{
	/* No lease is alive: each holds its connection. */
	lorastore_close(c->conn);
	pthread_mutex_destroy(&c->lock);
	PyTypeObject *tp = Py_TYPE(c);
	freefunc f = (freefunc)PyType_GetSlot(tp, Py_tp_free);
	f(c);
	Py_DECREF(tp);
}

static PyObject *ls_connection_close(ls_Connection *c, PyObject *unused)
{
	(void)unused;
	if (!c->conn)
		Py_RETURN_NONE;
	if (c->leases > 0) {
		char msg[256];
		snprintf(msg, sizeof(msg),
			 "%zd adapter lease(s) of this connection are still alive (adapters not "
			 "released, or tensors still viewed); release them and drop the views first",
			 c->leases);
		return ls_raise(-EBUSY, msg);
	}
	pthread_mutex_lock(&c->lock);
	lorastore_close(c->conn);
	c->conn = NULL;
	pthread_mutex_unlock(&c->lock);
	Py_RETURN_NONE;
}

static PyObject *ls_connection_closed(ls_Connection *c, void *unused)
{
	(void)unused;
	return PyBool_FromLong(c->conn == NULL);
}

static PyObject *ls_connection_leases(ls_Connection *c, void *unused)
{
	(void)unused;
	return PyLong_FromSsize_t(c->leases);
}

/* ------------------------------------------------------------------ */
/* _Lease */

static void ls_lease_dealloc(ls_Lease *l)
{
	if (l->ad) {
		pthread_mutex_lock(&l->conn->lock);
		lorastore_adapter_release(l->ad);
		pthread_mutex_unlock(&l->conn->lock);
		l->conn->leases--;
	}
	Py_XDECREF(l->conn);
	PyTypeObject *tp = Py_TYPE(l);
	freefunc f = (freefunc)PyType_GetSlot(tp, Py_tp_free);
	f(l);
	Py_DECREF(tp);
}

/* ------------------------------------------------------------------ */
/* Adapter */

typedef struct {
	PyObject_HEAD
	ls_Lease *lease;          /* NULL once released */
	lorastore_adapter_info info;
	char name[256];
	char tier[16];
	char uuid[48];
} ls_Adapter;

static int ls_adapter_held(ls_Adapter *a)
{
	if (a->lease)
		return 0;
	ls_raise(-EINVAL, "the adapter was released");
	return -1;
}

static void ls_adapter_dealloc(ls_Adapter *a)
{
	Py_XDECREF(a->lease);
	PyTypeObject *tp = Py_TYPE(a);
	PyObject_Free(a);
	Py_DECREF(tp);
}

static PyObject *ls_adapter_release(ls_Adapter *a, PyObject *unused)
{
	(void)unused;
	/* The lease ends when the last tensor view of it goes, not before. */
	Py_CLEAR(a->lease);
	Py_RETURN_NONE;
}

static int ls_kind_parse(const char *s, lorastore_kind *out)
{
	if (lorastore_kind_from_name(s, out) == 0)
		return 0;
	PyErr_Format(PyExc_ValueError,
		     "kind must be \"A\", \"B\", \"extra\" or \"magnitude\", not \"%s\"", s);
	return -1;
}

/* (module, kind, layer, dtype, shape, rank, scale) of every tensor. */
static PyObject *ls_adapter_tensor_rows(ls_Adapter *a, PyObject *unused)
{
	(void)unused;
	if (ls_adapter_held(a))
		return NULL;
	PyObject *list = PyList_New(0);
	for (size_t i = 0; list && i < a->info.tensor_count; i++) {
		lorastore_tensor t;
		if (lorastore_adapter_tensor_at(a->lease->ad, i, &t)) {
			Py_DECREF(list);
			return ls_raise(LORASTORE_E_PROTOCOL, "a tensor of the table is unreadable");
		}
		PyObject *shape = PyTuple_New(t.ndim);
		for (unsigned d = 0; shape && d < t.ndim; d++)
			PyTuple_SetItem(shape, d, PyLong_FromUnsignedLongLong(t.shape[d]));
		PyObject *row = shape ? Py_BuildValue("(ssisNId)", t.module, lorastore_kind_name(t.kind),
						      t.layer, t.dtype_name, shape, t.rank, t.scale)
				      : NULL;
		if (!row || PyList_Append(list, row)) {
			Py_XDECREF(row);
			Py_DECREF(list);
			return NULL;
		}
		Py_DECREF(row);
	}
	return list;
}

static PyObject *ls_adapter_tensor(ls_Adapter *a, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"module", "kind", NULL};
	const char *module, *kind_s;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "ss", kwlist, &module, &kind_s))
		return NULL;
	if (ls_adapter_held(a))
		return NULL;
	lorastore_kind kind;
	if (ls_kind_parse(kind_s, &kind))
		return NULL;
	lorastore_tensor t;
	int rc = lorastore_adapter_tensor(a->lease->ad, module, kind, &t);
	if (rc) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s@%u has no %s tensor of module %s", a->name,
			 a->info.version, kind_s, module);
		return ls_raise(rc, msg);
	}
	return (PyObject *)ls_tensor_make(a->lease, &t, t.dtype_name);
}

/* The C API's adapter(): obj's lorastore_adapter, and its lease to keep. */
static lorastore_adapter *ls_capi_adapter(PyObject *obj, PyObject **keep)
{
	if (!PyObject_TypeCheck(obj, ls_AdapterType)) {
		PyErr_Format(PyExc_TypeError, "expected a lorastore adapter, not %R",
			     (PyObject *)Py_TYPE(obj));
		return NULL;
	}
	ls_Adapter *a = (ls_Adapter *)obj;
	if (ls_adapter_held(a))
		return NULL;
	*keep = Py_NewRef((PyObject *)a->lease);
	return a->lease->ad;
}

const struct ls_capi ls_capi_local = {
	/* .version = */ LS_CAPI_VERSION,
	/* .adapter = */ ls_capi_adapter,
	/* .raise   = */ ls_raise,
};

/* The i-th tensor, as a Tensor. */
static PyObject *ls_adapter_tensor_at(ls_Adapter *a, PyObject *arg)
{
	if (ls_adapter_held(a))
		return NULL;
	Py_ssize_t i = PyLong_AsSsize_t(arg);
	if (i == -1 && PyErr_Occurred())
		return NULL;
	lorastore_tensor t;
	if (i < 0 || lorastore_adapter_tensor_at(a->lease->ad, (size_t)i, &t))
		return ls_raise(-EINVAL, "tensor index out of range");
	return (PyObject *)ls_tensor_make(a->lease, &t, t.dtype_name);
}

#define LS_ADAPTER_GET(field, expr)                                          \
	static PyObject *ls_adapter_get_##field(ls_Adapter *a, void *unused) \
	{                                                                    \
		(void)unused;                                                \
		return expr;                                                 \
	}
LS_ADAPTER_GET(name, PyUnicode_FromString(a->name))
LS_ADAPTER_GET(version, PyLong_FromUnsignedLong(a->info.version))
LS_ADAPTER_GET(generation, PyLong_FromUnsignedLongLong(a->info.generation))
LS_ADAPTER_GET(rank, PyLong_FromUnsignedLong(a->info.rank))
LS_ADAPTER_GET(scale, PyFloat_FromDouble(a->info.scale))
LS_ADAPTER_GET(tier, PyUnicode_FromString(a->tier))
LS_ADAPTER_GET(tensor_bytes, PyLong_FromUnsignedLongLong(a->info.tensor_bytes))
LS_ADAPTER_GET(resident_bytes, PyLong_FromUnsignedLongLong(a->info.resident_bytes))
LS_ADAPTER_GET(device, PyLong_FromLong(a->info.device))
LS_ADAPTER_GET(device_uuid, PyUnicode_FromString(a->uuid))
LS_ADAPTER_GET(tensor_count, PyLong_FromSize_t(a->info.tensor_count))
LS_ADAPTER_GET(released, PyBool_FromLong(a->lease == NULL))

static PyObject *ls_adapter_get_digest(ls_Adapter *a, void *unused)
{
	(void)unused;
	return PyBytes_FromStringAndSize((const char *)a->info.digest, sizeof(a->info.digest));
}

static PyObject *ls_adapter_get_dtype(ls_Adapter *a, void *unused)
{
	(void)unused;
	switch (a->info.dtype) {
	case LORASTORE_DTYPE_F32:
		return PyUnicode_FromString("F32");
	case LORASTORE_DTYPE_F16:
		return PyUnicode_FromString("F16");
	case LORASTORE_DTYPE_BF16:
		return PyUnicode_FromString("BF16");
	}
	return PyUnicode_FromString("mixed");
}

/* ------------------------------------------------------------------ */
/* Connection calls */

static PyObject *ls_connection_acquire(ls_Connection *c, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"ref", "timeout", "tier", "device", NULL};
	const char *ref, *tier_s = "host", *device = NULL;
	PyObject *timeout = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "s|Osz", kwlist, &ref, &timeout, &tier_s,
					 &device))
		return NULL;
	int timeout_ms = -1;
	if (timeout != Py_None) {
		double s = PyFloat_AsDouble(timeout);
		if (s == -1.0 && PyErr_Occurred())
			return NULL;
		if (s < 0 || s > 2e6) {
			PyErr_SetString(PyExc_ValueError, "timeout must be None or 0..2e6 seconds");
			return NULL;
		}
		timeout_ms = (int)(s * 1000.0 + 0.5);
	}
	lorastore_tier tier;
	if (strcmp(tier_s, "host") == 0)
		tier = LORASTORE_TIER_HOST;
	else if (strcmp(tier_s, "device") == 0)
		tier = LORASTORE_TIER_DEVICE;
	else {
		PyErr_Format(PyExc_ValueError, "tier must be \"host\" or \"device\", not \"%s\"",
			     tier_s);
		return NULL;
	}
	if (ls_conn_open(c))
		return NULL;
	ls_Lease *l = PyObject_New(ls_Lease, ls_LeaseType);
	if (!l)
		return NULL;
	l->ad = NULL;
	Py_INCREF(c);
	l->conn = c;
	lorastore_adapter *ad = NULL;
	int rc;
	char msg[512] = "";
	LS_BLOCKING(c, rc, msg,
		    lorastore_acquire_tier(c->conn, ref, tier, device, timeout_ms, &ad));
	if (rc) {
		Py_DECREF(l);
		return ls_raise(rc, msg);
	}
	l->ad = ad;
	c->leases++;
	lorastore_adapter_info_get(ad, &l->info);

	ls_Adapter *a = PyObject_New(ls_Adapter, ls_AdapterType);
	if (!a) {
		Py_DECREF(l);
		return NULL;
	}
	a->lease = l;
	a->info = l->info;
	snprintf(a->name, sizeof(a->name), "%s", l->info.name);
	snprintf(a->tier, sizeof(a->tier), "%s", l->info.tier);
	snprintf(a->uuid, sizeof(a->uuid), "%s", l->info.device_uuid ? l->info.device_uuid : "");
	return (PyObject *)a;
}

/* A listing entry as a dict. */
static PyObject *ls_str_list(const char *const *v, size_t n);

/* "2024-05-01T12:00:00Z", as the CLI's JSON gives "created"; None before 1970. */
static PyObject *ls_iso_time(int64_t unix_ns)
{
	if (unix_ns <= 0)
		Py_RETURN_NONE;
	time_t t = (time_t)(unix_ns / 1000000000);
	struct tm tm;
	char buf[64];
	if (!gmtime_r(&t, &tm) || !strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
		Py_RETURN_NONE;
	return PyUnicode_FromString(buf);
}

/* The fields of one version: the same set as the CLI's --json (ls and show). */
static PyObject *ls_entry_dict(const lorastore_entry *e)
{
	PyObject *aliases = ls_str_list(e->aliases, e->alias_count);
	PyObject *created = aliases ? ls_iso_time(e->created_unix_ns) : NULL;
	PyObject *base = !created ? NULL
		       : *e->base_model ? PyUnicode_FromString(e->base_model)
					: Py_NewRef(Py_None);
	if (!base) {
		Py_XDECREF(aliases);
		Py_XDECREF(created);
		return NULL;
	}
	PyObject *d = Py_BuildValue(
		"{s:s,s:I,s:s,s:K,s:I,s:d,s:s,s:K,s:K,s:K,s:n,s:O,s:s,s:I,s:N,s:N,s:s,s:N}", "name",
		e->name, "version", e->version, "digest", e->digest, "generation",
		(unsigned long long)e->generation, "rank", e->rank, "scale", e->scale, "dtype",
		e->dtype, "tensor_bytes", (unsigned long long)e->tensor_bytes, "resident_bytes",
		(unsigned long long)e->resident_bytes, "blob_bytes",
		(unsigned long long)e->blob_bytes, "tensor_count",
		(Py_ssize_t)e->tensor_count, "resident", e->resident ? Py_True : Py_False, "tier",
		e->tier, "pins", e->pins, "created", created, "base_model", base, "source",
		e->source, "aliases", aliases);
	return d;
}

/* A list of strings, or None for a NULL array with n 0 and absent. */
static PyObject *ls_str_list(const char *const *v, size_t n)
{
	PyObject *l = PyList_New((Py_ssize_t)n);
	for (size_t i = 0; l && i < n; i++) {
		PyObject *s = PyUnicode_FromString(v[i] ? v[i] : "");
		if (!s) {
			Py_CLEAR(l);
			break;
		}
		PyList_SetItem(l, (Py_ssize_t)i, s);
	}
	return l;
}

/* {key: value} of rank_pattern (alpha 0) or alpha_pattern (alpha 1) of entry i. */
static PyObject *ls_pattern_dict(const lorastore_list *l, size_t i, int alpha, size_t n)
{
	PyObject *d = PyDict_New();
	for (size_t j = 0; d && j < n; j++) {
		const char *key;
		double value;
		if (lorastore_list_peft_pattern(l, i, alpha, j, &key, &value))
			continue;
		PyObject *v = alpha ? PyFloat_FromDouble(value) : PyLong_FromLong((long)value);
		if (!v || PyDict_SetItemString(d, key, v))
			Py_CLEAR(d);
		Py_XDECREF(v);
	}
	return d;
}

/* The PEFT config of entry i, with PEFT's field names; None when absent. */
static PyObject *ls_peft_config_dict(const lorastore_list *l, size_t i)
{
	lorastore_peft_config c;
	if (lorastore_list_peft_config(l, i, &c))
		Py_RETURN_NONE;
	PyObject *targets = c.target_regex ? PyUnicode_FromString(c.target_regex)
					   : ls_str_list(c.target_modules, c.n_target_modules);
	PyObject *save = ls_str_list(c.modules_to_save, c.n_modules_to_save);
	PyObject *rp = ls_pattern_dict(l, i, 0, c.n_rank_pattern);
	PyObject *ap = ls_pattern_dict(l, i, 1, c.n_alpha_pattern);
	PyObject *base = c.base_model ? PyUnicode_FromString(c.base_model) : Py_NewRef(Py_None);
	PyObject *d = NULL;
	if (targets && save && rp && ap && base) {
		/* lora_alpha as PEFT writes it: an int when it is whole. */
		PyObject *alpha = c.lora_alpha == (double)(long)c.lora_alpha
					  ? PyLong_FromLong((long)c.lora_alpha)
					  : PyFloat_FromDouble(c.lora_alpha);
		d = alpha ? Py_BuildValue("{s:s,s:I,s:N,s:O,s:O,s:O,s:O,s:O,s:s,s:O,s:O,s:O,s:s}",
					  "peft_type", "LORA", "r", c.r, "lora_alpha", alpha,
					  "target_modules", targets, "use_rslora",
					  c.use_rslora ? Py_True : Py_False, "rank_pattern", rp,
					  "alpha_pattern", ap, "fan_in_fan_out",
					  c.fan_in_fan_out ? Py_True : Py_False, "bias", c.bias,
					  "use_dora", c.use_dora ? Py_True : Py_False,
					  "base_model_name_or_path", base, "modules_to_save", save,
					  "task_type", c.task_type)
			  : NULL;
	}
	Py_XDECREF(targets);
	Py_XDECREF(save);
	Py_XDECREF(rp);
	Py_XDECREF(ap);
	Py_XDECREF(base);
	return d;
}

static PyObject *ls_list_dicts(lorastore_list *l)
{
	PyObject *out = PyList_New(0);
	for (size_t i = 0; out && i < lorastore_list_count(l); i++) {
		PyObject *d = ls_entry_dict(lorastore_list_entry(l, i));
		if (!d || PyList_Append(out, d)) {
			Py_XDECREF(d);
			Py_CLEAR(out);
			break;
		}
		Py_DECREF(d);
	}
	return out;
}

static PyObject *ls_connection_list(ls_Connection *c, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"prefix", NULL};
	const char *prefix = "";
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|s", kwlist, &prefix))
		return NULL;
	if (ls_conn_open(c))
		return NULL;
	PyObject *all = PyList_New(0);
	char cursor[512] = "";
	bool more = true;
	while (all && more) {
		lorastore_list *l = NULL;
		int rc;
		pthread_mutex_lock(&c->lock);
		rc = lorastore_list_page(c->conn, prefix, cursor[0] ? cursor : NULL, 0, &l);
		if (rc) {
			pthread_mutex_unlock(&c->lock);
			Py_DECREF(all);
			return ls_conn_raise(c, rc);
		}
		pthread_mutex_unlock(&c->lock);
		PyObject *page = ls_list_dicts(l);
		const char *next = lorastore_list_next(l);
		more = next && *next;
		if (more)
			snprintf(cursor, sizeof(cursor), "%s", next);
		lorastore_list_free(l);
		if (!page) {
			Py_DECREF(all);
			return NULL;
		}
		Py_ssize_t n = PyList_Size(page);
		for (Py_ssize_t i = 0; i < n; i++)
			PyList_Append(all, PyList_GetItem(page, i));
		Py_DECREF(page);
	}
	return all;
}

/* The tensor table of entry i, as the CLI's show --json gives it. */
static PyObject *ls_tensor_dicts(const lorastore_list *l, size_t i)
{
	size_t n = lorastore_list_tensor_count(l, i);
	PyObject *out = PyList_New(0);
	for (size_t j = 0; out && j < n; j++) {
		lorastore_tensor t;
		if (lorastore_list_tensor(l, i, j, &t))
			continue;
		PyObject *shape = PyList_New((Py_ssize_t)t.ndim);
		for (unsigned k = 0; shape && k < t.ndim; k++)
			PyList_SetItem(shape, k, PyLong_FromUnsignedLongLong(t.shape[k]));
		PyObject *layer = !shape ? NULL : t.layer >= 0 ? PyLong_FromLong(t.layer)
							       : Py_NewRef(Py_None);
		PyObject *d = layer ? Py_BuildValue("{s:s,s:N,s:s,s:N,s:s,s:K,s:K}", "module", t.module,
						    "layer", layer, "kind", lorastore_kind_name(t.kind),
						    "shape", shape, "dtype", t.dtype_name, "offset",
						    (unsigned long long)t.offset, "bytes",
						    (unsigned long long)t.bytes)
				    : NULL;
		if (!layer)
			Py_XDECREF(shape);
		if (!d || PyList_Append(out, d))
			Py_CLEAR(out);
		Py_XDECREF(d);
	}
	return out;
}

static PyObject *ls_connection_show(ls_Connection *c, PyObject *args)
{
	const char *ref;
	if (!PyArg_ParseTuple(args, "s", &ref) || ls_conn_open(c))
		return NULL;
	lorastore_list *l = NULL;
	pthread_mutex_lock(&c->lock);
	int rc = lorastore_show(c->conn, ref, &l);
	pthread_mutex_unlock(&c->lock);
	if (rc)
		return ls_conn_raise(c, rc);
	PyObject *d = lorastore_list_count(l) ? ls_entry_dict(lorastore_list_entry(l, 0)) : NULL;
	PyObject *cfg = d ? ls_peft_config_dict(l, 0) : NULL;
	PyObject *tensors = cfg ? ls_tensor_dicts(l, 0) : NULL;
	lorastore_list_free(l);
	if (d && (!cfg || !tensors || PyDict_SetItemString(d, "peft_config", cfg) ||
		  PyDict_SetItemString(d, "tensors", tensors)))
		Py_CLEAR(d);
	Py_XDECREF(cfg);
	Py_XDECREF(tensors);
	if (!d && !PyErr_Occurred())
		return ls_raise(LORASTORE_E_NOT_FOUND, ref);
	return d;
}

/* The adapter's PEFT config, from the daemon's record of its version. */
static PyObject *ls_adapter_peft_config(ls_Adapter *a, PyObject *unused)
{
	(void)unused;
	if (ls_adapter_held(a))
		return NULL;
	ls_Connection *c = a->lease->conn;
	if (ls_conn_open(c))
		return NULL;
	char ref[300];
	snprintf(ref, sizeof(ref), "%s@%u", a->name, a->info.version);
	lorastore_list *l = NULL;
	pthread_mutex_lock(&c->lock);
	int rc = lorastore_show(c->conn, ref, &l);
	pthread_mutex_unlock(&c->lock);
	if (rc)
		return ls_conn_raise(c, rc);
	PyObject *cfg = ls_peft_config_dict(l, 0);
	lorastore_list_free(l);
	return cfg;
}

static PyObject *ls_connection_stats(ls_Connection *c, PyObject *unused)
{
	(void)unused;
	if (ls_conn_open(c))
		return NULL;
	lorastore_stats s;
	pthread_mutex_lock(&c->lock);
	int rc = lorastore_stats_get(c->conn, &s);
	pthread_mutex_unlock(&c->lock);
	if (rc)
		return ls_conn_raise(c, rc);
	PyObject *tiers = PyList_New(0);
	for (size_t i = 0; tiers && i < s.tier_count; i++) {
		const lorastore_tier_stats *t = &s.tiers[i];
		PyObject *d = Py_BuildValue("{s:s,s:K,s:K,s:K,s:I}", "name", t->name, "budget",
					    (unsigned long long)t->budget, "used",
					    (unsigned long long)t->used, "slab_bytes",
					    (unsigned long long)t->slab_bytes, "adapters", t->adapters);
		/* A GPU's tier only, as the CLI's stats --json. */
		PyObject *dev = d && t->ordinal >= 0
					? Py_BuildValue("{s:s,s:i,s:K}", "device", t->device, "ordinal",
							t->ordinal, "table_bytes",
							(unsigned long long)t->table_bytes)
					: NULL;
		if (dev && PyDict_Update(d, dev))
			Py_CLEAR(d);
		Py_XDECREF(dev);
		if (!d || PyList_Append(tiers, d))
			Py_CLEAR(tiers);
		Py_XDECREF(d);
	}
	if (!tiers)
		return NULL;
	const lorastore_origin_stats *g = &s.origin;
	PyObject *origin =
		g->origin[0]
			? Py_BuildValue("{s:s,s:K,s:K,s:K,s:K,s:K,s:I,s:K,s:K,s:K,s:K,s:K}", "origin",
					g->origin,
					"requests", (unsigned long long)g->requests, "errors",
					(unsigned long long)g->errors, "bytes_in",
					(unsigned long long)g->bytes_in, "bytes_out",
					(unsigned long long)g->bytes_out, "pulls",
					(unsigned long long)g->pulls, "pulls_in_flight",
					g->pulls_in_flight, "refused", (unsigned long long)g->refused,
					"published", (unsigned long long)g->published, "cache_bytes",
					(unsigned long long)g->cache_bytes, "cache_budget",
					(unsigned long long)g->cache_budget, "cache_evictions",
					(unsigned long long)g->cache_evictions)
			: Py_NewRef(Py_None);
	if (!origin) {
		Py_DECREF(tiers);
		return NULL;
	}
	return Py_BuildValue("{s:N,s:I,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:s,s:N}", "tiers",
			     tiers, "clients", s.clients, "leases", (unsigned long long)s.leases,
			     "warm_leases", (unsigned long long)s.warm_leases, "warm_acquires",
			     (unsigned long long)s.warm_acquires, "loads",
			     (unsigned long long)s.loads, "hits", (unsigned long long)s.hits,
			     "misses", (unsigned long long)s.misses, "evictions",
			     (unsigned long long)s.evictions, "load_errors",
			     (unsigned long long)s.load_errors, "catalog_versions",
			     (unsigned long long)s.catalog_versions, "event_loop", s.event_loop,
			     "origin", origin);
}

/* A call of one ref (or alias) that may block: delete, evict, untag. */
static PyObject *ls_ref_call(ls_Connection *c, PyObject *args,
			     int (*fn)(lorastore *conn, const char *ref))
{
	const char *ref;
	if (!PyArg_ParseTuple(args, "s", &ref) || ls_conn_open(c))
		return NULL;
	int rc;
	char msg[512] = "";
	LS_BLOCKING(c, rc, msg, fn(c->conn, ref));
	if (rc)
		return ls_raise(rc, msg);
	Py_RETURN_NONE;
}

static PyObject *ls_connection_load(ls_Connection *c, PyObject *args)
{
	const char *ref;
	if (!PyArg_ParseTuple(args, "s", &ref) || ls_conn_open(c))
		return NULL;
	int rc;
	char msg[512] = "", loaded[256] = "";
	LS_BLOCKING(c, rc, msg,
		    lorastore_load_resolved(c->conn, ref, LORASTORE_TIER_HOST, NULL, loaded,
					    sizeof(loaded)));
	if (rc)
		return ls_raise(rc, msg);
	return PyUnicode_FromString(loaded);
}

static PyObject *ls_connection_delete(ls_Connection *c, PyObject *args)
{
	const char *ref;
	if (!PyArg_ParseTuple(args, "s", &ref) || ls_conn_open(c))
		return NULL;
	int rc;
	char msg[512] = "";
	lorastore_delete_result r;
	LS_BLOCKING(c, rc, msg, lorastore_delete_report(c->conn, ref, &r));
	if (rc)
		return ls_raise(rc, msg);
	return Py_BuildValue("{s:I,s:K,s:K,s:s,s:I,s:s}", "versions", r.versions, "blob_bytes",
			     (unsigned long long)r.blob_bytes, "freed_bytes",
			     (unsigned long long)r.freed_bytes, "origin", r.origin,
			     "origin_versions", r.origin_versions, "origin_error", r.origin_error);
}

static PyObject *ls_connection_tag(ls_Connection *c, PyObject *args)
{
	const char *ref, *alias;
	if (!PyArg_ParseTuple(args, "ss", &ref, &alias) || ls_conn_open(c))
		return NULL;
	int rc;
	char msg[512] = "";
	lorastore_list *l = NULL;
	LS_BLOCKING(c, rc, msg, lorastore_tag(c->conn, alias, ref, &l));
	if (rc)
		return ls_raise(rc, msg);
	PyObject *d = ls_entry_dict(lorastore_list_entry(l, 0));
	lorastore_list_free(l);
	return d;
}

static PyObject *ls_connection_export(ls_Connection *c, PyObject *args)
{
	const char *ref;
	PyObject *path_o;
	if (!PyArg_ParseTuple(args, "sO&", &ref, PyUnicode_FSConverter, &path_o))
		return NULL;
	if (ls_conn_open(c)) {
		Py_DECREF(path_o);
		return NULL;
	}
	const char *path = PyBytes_AsString(path_o);
	int rc;
	char msg[512] = "", exported[512] = "";
	LS_BLOCKING(c, rc, msg, lorastore_export(c->conn, ref, path, exported, sizeof(exported)));
	Py_DECREF(path_o);
	if (rc)
		return ls_raise(rc, msg);
	return PyUnicode_FromString(exported);
}

static PyObject *ls_connection_untag(ls_Connection *c, PyObject *args)
{
	return ls_ref_call(c, args, lorastore_untag);
}

static PyObject *ls_connection_evict(ls_Connection *c, PyObject *args)
{
	return ls_ref_call(c, args, lorastore_evict);
}

static PyObject *ls_connection_prefetch(ls_Connection *c, PyObject *args)
{
	PyObject *seq;
	if (!PyArg_ParseTuple(args, "O", &seq) || ls_conn_open(c))
		return NULL;
	PyObject *fast = PySequence_Fast(seq, "refs must be a sequence of str");
	if (!fast)
		return NULL;
	Py_ssize_t n = PySequence_Size(fast);
	const char **refs = calloc(n ? (size_t)n : 1, sizeof(*refs));
	if (!refs) {
		Py_DECREF(fast);
		return PyErr_NoMemory();
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *o = PySequence_GetItem(fast, i);
		refs[i] = o ? PyUnicode_AsUTF8AndSize(o, NULL) : NULL;
		Py_XDECREF(o); /* the list keeps the str, and its UTF-8 */
		if (!refs[i]) {
			free(refs);
			Py_DECREF(fast);
			return NULL;
		}
	}
	pthread_mutex_lock(&c->lock);
	int rc = lorastore_prefetch(c->conn, refs, (size_t)n);
	pthread_mutex_unlock(&c->lock);
	free(refs);
	Py_DECREF(fast);
	if (rc)
		return ls_conn_raise(c, rc);
	Py_RETURN_NONE;
}

static PyObject *ls_connection_import_dir(ls_Connection *c, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"path", "name", "dtype", "allow_nonfinite", "allow_new_base",
				 NULL};
	PyObject *path_o;
	const char *name = NULL, *dtype = "keep";
	int allow = 0, new_base = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|zspp", kwlist, PyUnicode_FSConverter,
					 &path_o, &name, &dtype, &allow, &new_base))
		return NULL;
	const char *path = PyBytes_AsString(path_o);
	if (ls_conn_open(c)) {
		Py_DECREF(path_o);
		return NULL;
	}
	/* No name: the library takes the folder's, or says why it will not. */
	lorastore_import_opts io = {.name = name,
				    .dtype = strcmp(dtype, "keep") == 0 ? NULL : dtype,
				    .allow_nonfinite = allow,
				    .allow_new_base = new_base};
	lorastore_list *l = NULL;
	int rc;
	char msg[512] = "";
	LS_BLOCKING(c, rc, msg, lorastore_import_dir_entry(c->conn, path, &io, &l));
	Py_DECREF(path_o);
	if (rc)
		return ls_raise(rc, msg);
	PyObject *d = lorastore_list_count(l) ? ls_entry_dict(lorastore_list_entry(l, 0)) : NULL;
	if (d && PyDict_SetItemString(d, "unchanged",
				      lorastore_list_entry(l, 0)->unchanged ? Py_True : Py_False)) {
		Py_CLEAR(d);
	}
	lorastore_list_free(l);
	if (!d && !PyErr_Occurred())
		return ls_raise(LORASTORE_E_PROTOCOL, "the import's reply held no entry");
	return d;
}

static PyObject *ls_connection_verify(ls_Connection *c, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"ref", NULL};
	const char *ref = NULL;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|z", kwlist, &ref) || ls_conn_open(c))
		return NULL;
	size_t bad = 0;
	int rc;
	char msg[512] = "";
	LS_BLOCKING(c, rc, msg, lorastore_verify(c->conn, ref, &bad, NULL, NULL));
	if (rc)
		return ls_raise(rc, msg);
	return PyLong_FromSize_t(bad);
}

static PyObject *ls_connection_gc(ls_Connection *c, PyObject *unused)
{
	(void)unused;
	if (ls_conn_open(c))
		return NULL;
	uint64_t blobs = 0, bytes = 0;
	int rc;
	char msg[512] = "";
	LS_BLOCKING(c, rc, msg, lorastore_gc(c->conn, &blobs, &bytes));
	if (rc)
		return ls_raise(rc, msg);
	return Py_BuildValue("{s:K,s:K}", "blobs_removed", (unsigned long long)blobs,
			     "bytes_removed", (unsigned long long)bytes);
}

static PyObject *ls_connection_rebuild(ls_Connection *c, PyObject *unused)
{
	(void)unused;
	if (ls_conn_open(c))
		return NULL;
	uint64_t versions = 0, skipped = 0;
	int rc;
	char msg[512] = "";
	LS_BLOCKING(c, rc, msg, lorastore_rebuild(c->conn, &versions, &skipped));
	if (rc)
		return ls_raise(rc, msg);
	return Py_BuildValue("{s:K,s:K}", "versions", (unsigned long long)versions, "skipped",
			     (unsigned long long)skipped);
}

/* ------------------------------------------------------------------ */
/* Types */

static PyMethodDef ls_connection_methods[] = {
	{"close", (PyCFunction)ls_connection_close, METH_NOARGS,
	 "close()\n--\n\nClose the connection.  Raises lorastore.Error while leases of it are "
	 "alive (adapters not released, or tensors still viewed): nothing is unmapped under a "
	 "view."},
	{"acquire", (PyCFunction)(void (*)(void))ls_connection_acquire, METH_VARARGS | METH_KEYWORDS,
	 "acquire(ref, timeout=None, tier='host', device=None)\n--\n\nLease an adapter version "
	 "(\"name\" for the latest, or \"name@N\"), loading it first when it is not resident; "
	 "timeout in seconds (None: as long as the load takes).  tier \"device\" gives the copy "
	 "in a GPU's memory (device: its UUID, None for the current one)."},
	{"list", (PyCFunction)(void (*)(void))ls_connection_list, METH_VARARGS | METH_KEYWORDS,
	 "list(prefix='')\n--\n\nEvery version whose name begins with prefix, as dicts."},
	{"show", (PyCFunction)ls_connection_show, METH_VARARGS,
	 "show(ref)\n--\n\nThe record of one version, as a dict."},
	{"stats", (PyCFunction)ls_connection_stats, METH_NOARGS,
	 "stats()\n--\n\nThe daemon's counters and tiers, as a dict."},
	{"load", (PyCFunction)ls_connection_load, METH_VARARGS,
	 "load(ref)\n--\n\nMake a version resident without leasing it; returns the "
	 "\"name@version\" ref named."},
	{"prefetch", (PyCFunction)ls_connection_prefetch, METH_VARARGS,
	 "prefetch(refs)\n--\n\nAsk the daemon to load refs in the background."},
	{"import_dir", (PyCFunction)(void (*)(void))ls_connection_import_dir,
	 METH_VARARGS | METH_KEYWORDS,
	 "import_dir(path, name=None, dtype='keep', allow_nonfinite=False, allow_new_base=False)"
	 "\n--\n\nImport the PEFT adapter in folder path (name: the folder's name when None); "
	 "returns the version's entry (unchanged: the name's latest version had this content).  "
	 "Needs an admin peer."},
	{"delete", (PyCFunction)ls_connection_delete, METH_VARARGS,
	 "delete(ref)\n--\n\nDelete a version, or every version of a name; returns what was "
	 "removed.  Needs an admin peer."},
	{"tag", (PyCFunction)ls_connection_tag, METH_VARARGS,
	 "tag(ref, alias)\n--\n\nPoint alias (NAME:TAG) at ref; returns its version's entry.  "
	 "Needs an admin peer."},
	{"export", (PyCFunction)ls_connection_export, METH_VARARGS,
	 "export(ref, path)\n--\n\nWrite a version as a PEFT directory; returns the "
	 "name@version written."},
	{"untag", (PyCFunction)ls_connection_untag, METH_VARARGS,
	 "untag(alias)\n--\n\nRemove alias.  Needs an admin peer."},
	{"evict", (PyCFunction)ls_connection_evict, METH_VARARGS,
	 "evict(ref)\n--\n\nDrop a version from memory.  Needs an admin peer."},
	{"verify", (PyCFunction)(void (*)(void))ls_connection_verify, METH_VARARGS | METH_KEYWORDS,
	 "verify(ref=None)\n--\n\nCheck blobs against their checksums; returns how many are bad."},
	{"rebuild", (PyCFunction)ls_connection_rebuild, METH_NOARGS,
	 "Build the catalog again from ref files and blobs (admin)."},
	{"gc", (PyCFunction)ls_connection_gc, METH_NOARGS,
	 "gc()\n--\n\nRemove blobs no version refers to."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef ls_connection_getset[] = {
	{"closed", (getter)ls_connection_closed, NULL, "True once closed.", NULL},
	{"live_leases", (getter)ls_connection_leases, NULL,
	 "Leases of this connection still alive (held by adapters or tensor views).", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ls_connection_slots[] = {
	{Py_tp_new, ls_connection_new},
	{Py_tp_dealloc, ls_connection_dealloc},
	{Py_tp_methods, ls_connection_methods},
	{Py_tp_getset, ls_connection_getset},
	{Py_tp_doc, "Connection(socket=None)\n--\n\nA connection to lorastored ($LORASTORE_SOCKET "
		    "or the default socket when socket is None)."},
	{0, NULL},
};

static PyType_Spec ls_connection_spec = {
	"lorastore._lorastore.Connection", sizeof(ls_Connection), 0, Py_TPFLAGS_DEFAULT,
	ls_connection_slots,
};

static PyType_Slot ls_lease_slots[] = {
	{Py_tp_dealloc, ls_lease_dealloc},
	{Py_tp_doc, "A lease on one adapter; it ends when nothing refers to it."},
	{0, NULL},
};

static PyType_Spec ls_lease_spec = {
	"lorastore._lorastore._Lease", sizeof(ls_Lease), 0, Py_TPFLAGS_DEFAULT, ls_lease_slots,
};

static PyMethodDef ls_adapter_methods[] = {
	{"release", (PyCFunction)ls_adapter_release, METH_NOARGS,
	 "release()\n--\n\nGive up this adapter's hold on its lease; the lease ends when the "
	 "last tensor view of it is gone too."},
	{"tensor", (PyCFunction)(void (*)(void))ls_adapter_tensor, METH_VARARGS | METH_KEYWORDS,
	 "tensor(module, kind)\n--\n\nThe tensor of module and kind (\"A\", \"B\", \"extra\", "
	 "\"magnitude\")."},
	{"_tensor_rows", (PyCFunction)ls_adapter_tensor_rows, METH_NOARGS,
	 "_tensor_rows()\n--\n\n(module, kind, layer, dtype, shape, rank, scale) of each tensor."},
	{"_tensor_at", (PyCFunction)ls_adapter_tensor_at, METH_O,
	 "_tensor_at(i)\n--\n\nThe i-th tensor."},
	{"peft_config", (PyCFunction)ls_adapter_peft_config, METH_NOARGS,
	 "peft_config()\n--\n\nThe adapter's PEFT config fields, as a dict."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef ls_adapter_getset[] = {
	{"name", (getter)ls_adapter_get_name, NULL, "The adapter's name.", NULL},
	{"version", (getter)ls_adapter_get_version, NULL, "The version number.", NULL},
	{"digest", (getter)ls_adapter_get_digest, NULL, "SHA-256 content digest, 32 bytes.", NULL},
	{"generation", (getter)ls_adapter_get_generation, NULL, "Unique across the store.", NULL},
	{"rank", (getter)ls_adapter_get_rank, NULL, "The config's r.", NULL},
	{"scale", (getter)ls_adapter_get_scale, NULL, "alpha / r (or / sqrt(r)).", NULL},
	{"dtype", (getter)ls_adapter_get_dtype, NULL, "F32, F16, BF16 or mixed.", NULL},
	{"tier", (getter)ls_adapter_get_tier, NULL, "\"host\" or \"device\".", NULL},
	{"tensor_bytes", (getter)ls_adapter_get_tensor_bytes, NULL,
	 "The adapter's size: its tensors' bytes.", NULL},
	{"resident_bytes", (getter)ls_adapter_get_resident_bytes, NULL,
	 "Bytes it takes in its tier's memory.", NULL},
	{"device", (getter)ls_adapter_get_device, NULL, "The CUDA ordinal; -1 on host.", NULL},
	{"device_uuid", (getter)ls_adapter_get_device_uuid, NULL, "The GPU's UUID; \"\" on host.",
	 NULL},
	{"tensor_count", (getter)ls_adapter_get_tensor_count, NULL, "Tensors in the table.", NULL},
	{"released", (getter)ls_adapter_get_released, NULL, "True after release().", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ls_adapter_slots[] = {
	{Py_tp_dealloc, ls_adapter_dealloc},
	{Py_tp_methods, ls_adapter_methods},
	{Py_tp_getset, ls_adapter_getset},
	{Py_tp_doc, "An acquired adapter version."},
	{0, NULL},
};

static PyType_Spec ls_adapter_spec = {
	"lorastore._lorastore.Adapter", sizeof(ls_Adapter), 0, Py_TPFLAGS_DEFAULT,
	ls_adapter_slots,
};

/* ------------------------------------------------------------------ */
/* The module */

static PyObject *ls_strerror(PyObject *self, PyObject *arg)
{
	(void)self;
	long code = PyLong_AsLong(arg);
	if (code == -1 && PyErr_Occurred())
		return NULL;
	return PyUnicode_FromString(lorastore_strerror((int)code));
}

/* _raise(code, message): raise the package's exception of a library code. */
static PyObject *ls_raise_py(PyObject *self, PyObject *args)
{
	(void)self;
	int code;
	const char *message;
	if (!PyArg_ParseTuple(args, "is", &code, &message))
		return NULL;
	return ls_raise(code, message);
}

static PyMethodDef ls_module_methods[] = {
	{"_raise", ls_raise_py, METH_VARARGS,
	 "_raise(code, message)\n--\n\nRaise lorastore's exception for a library code."},
	{"strerror", ls_strerror, METH_O,
	 "strerror(code)\n--\n\nThe description of a library error code."},
	{"plan_create", ls_plan_create, METH_VARARGS,
	 "plan_create(adapters, in_features, slices, factors)\n--\n\nA Plan of held "
	 "adapters for one layer; slices are (module, out_offset, out)."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef ls_module = {
	PyModuleDef_HEAD_INIT, "_lorastore", "The C binding of liblorastore.", -1,
	ls_module_methods, NULL, NULL, NULL, NULL,
};

static PyObject *ls_new_error(PyObject *m, const char *name, PyObject *base, const char *doc)
{
	char full[96];
	snprintf(full, sizeof(full), "lorastore.%s", name);
	PyObject *e = PyErr_NewExceptionWithDoc(full, doc, base, NULL);
	if (e && PyModule_AddObject(m, name, e) == 0) {
		Py_INCREF(e); /* the module took one reference; this file keeps its own */
		return e;
	}
	Py_XDECREF(e);
	return NULL;
}

static PyTypeObject *ls_add_type(PyObject *m, PyType_Spec *spec, const char *name)
{
	PyObject *t = PyType_FromSpec(spec);
	if (!t)
		return NULL;
	Py_INCREF(t);
	if (PyModule_AddObject(m, name, t)) {
		Py_DECREF(t);
		Py_DECREF(t);
		return NULL;
	}
	return (PyTypeObject *)t;
}

PyMODINIT_FUNC PyInit__lorastore(void)
{
	PyObject *m = PyModule_Create(&ls_module);
	if (!m)
		return NULL;
	PyObject *two = NULL;
	if (!(ls_Error = ls_new_error(m, "Error", NULL,
				      "A lorastore failure: .code (the library's code) and "
				      ".message.")) ||
	    !(ls_NotFound = ls_new_error(m, "NotFound", ls_Error, "No such adapter or version.")) ||
	    !(ls_PermissionDenied = ls_new_error(m, "PermissionDenied", ls_Error,
						 "The call needs an admin peer.")) ||
	    !(ls_Corrupt = ls_new_error(m, "Corrupt", ls_Error, "A blob is missing, truncated or failed its checksum.")) ||
	    !(ls_NoSpace = ls_new_error(m, "NoSpace", ls_Error,
					"The budget is held by pinned adapters, or the client's "
					"pin limit is reached.")) ||
	    !(ls_InvalidAdapter = ls_new_error(m, "InvalidAdapter", ls_Error,
					       "An import refused the adapter, or a name is "
					       "malformed.")) ||
	    !(ls_ConnectionClosed = ls_new_error(m, "ConnectionClosed", ls_Error,
						 "The connection is closed, or no daemon "
						 "answers.")) ||
	    !(ls_DeviceError = ls_new_error(m, "DeviceError", ls_Error,
					    "A GPU is not available, or a CUDA call failed.")))
		goto fail;
	two = PyTuple_Pack(2, ls_Error, PyExc_ValueError);
	if (!two || !(ls_InvalidArgument = ls_new_error(m, "InvalidArgument", two,
							"Arguments that do not fit together.")))
		goto fail;
	Py_CLEAR(two);
	two = PyTuple_Pack(2, ls_Error, PyExc_TimeoutError);
	if (!two || !(ls_Timeout = ls_new_error(m, "Timeout", two,
						"The adapter was not resident in time.")))
		goto fail;
	Py_CLEAR(two);
	if (!(ls_ConnectionType = ls_add_type(m, &ls_connection_spec, "Connection")) ||
	    !(ls_LeaseType = ls_add_type(m, &ls_lease_spec, "_Lease")) ||
	    !(ls_TensorType = ls_add_type(m, &ls_tensor_spec, "Tensor")) ||
	    !(ls_AdapterType = ls_add_type(m, &ls_adapter_spec, "Adapter")) ||
	    !(ls_PlanType = ls_add_type(m, &ls_plan_spec, "Plan")))
		goto fail;
	/* Other extension modules of the package take Adapter objects through it. */
	PyObject *capi = PyCapsule_New((void *)&ls_capi_local, LS_CAPI_NAME, NULL);
	if (!capi || PyModule_AddObject(m, "_C_API", capi)) {
		Py_XDECREF(capi);
		goto fail;
	}
	if (PyModule_AddStringConstant(m, "__version__", LS_PY_VERSION) ||
	    PyModule_AddStringConstant(m, "DEFAULT_SOCKET", LORASTORE_DEFAULT_SOCKET))
		goto fail;
	return m;
fail:
	Py_XDECREF(two);
	Py_DECREF(m);
	return NULL;
}
