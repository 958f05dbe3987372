/*
 * liblorastore: device slabs, imported through the CUDA driver.
 *
 * A device tier's slab comes as a POSIX file descriptor of a CUDA VMM
 * allocation.  It is imported once per process
 * (cuMemImportFromShareableHandle), mapped at an address reserved in the
 * process's unified address space, given read access for its GPU, and the
 * descriptor is closed: the imported handle and the mapping keep the memory.
 * Connections of the process to the same daemon run share the import (a
 * slab is named by the daemon's instance and its id); the last connection
 * that holds it unmaps it.
 * The driver is loaded at run time (common/cuda/ls_cudrv.h) only when a
 * device tier is acquired, so liblorastore loads and serves host memory on
 * machines without CUDA.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "client_internal.h"

#ifndef LS_HAVE_CUDRV

int ls_device_import(lorastore *conn, uint32_t id, uint64_t size, int fd, const char *uuid,
		     struct ls_slab_map *m)
{
	(void)size;
	(void)uuid;
	(void)m;
	close(fd);
	return ls_conn_error(conn, LS_E_NOT_BUILT,
			     "device slab %u: this liblorastore was built without the CUDA path", id);
}

void ls_device_unmap(struct ls_slab_map *m)
{
	(void)m;
}

void ls_device_current_uuid(char *buf, size_t cap)
{
	if (cap)
		buf[0] = '\0';
}

#else

#include <pthread.h>
#include <stdlib.h>

#include "ls_cudrv.h"

/* An import of this process, shared by its connections. */
struct ls_dev_import {
	struct ls_dev_import *next;
	uint64_t instance;          /* 0: a daemon too old to name its run; never shared */
	struct ls_slab_map m;       /* what a connection's slab map copies */
	unsigned refs;              /* connections holding it */
};

static pthread_mutex_t ls_imports_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ls_dev_import *ls_imports;

/*
 * The GPU of this thread's current context, kept per thread with the
 * context it was found for: a warm acquire that names no GPU asks the
 * driver one thing (cuCtxGetCurrent), and the device and its UUID only
 * when the thread's context changed.
 */
static _Thread_local CUcontext ls_current_ctx;
static _Thread_local char ls_current_uuid[48];

void ls_device_current_uuid(char *buf, size_t cap)
{
	const struct ls_cudrv *d;
	struct ls_err err;
	CUcontext ctx = NULL;
	CUdevice dev;
	CUuuid uuid;
	if (cap)
		buf[0] = '\0';
	if (ls_cudrv_load(&d, &err) || d->cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || !ctx)
		return;
	if (ctx != ls_current_ctx || !ls_current_uuid[0]) {
		if (d->cuCtxGetDevice(&dev) != CUDA_SUCCESS ||
		    d->cuDeviceGetUuid(&uuid, dev) != CUDA_SUCCESS)
			return;
		ls_cudrv_uuid_str(&uuid, ls_current_uuid, sizeof(ls_current_uuid));
		ls_current_ctx = ctx;
	}
	snprintf(buf, cap, "%s", ls_current_uuid);
}

/* This process's ordinal of the GPU with uuid, or -1. */
static int ls_device_ordinal(const struct ls_cudrv *d, const char *uuid)
{
	int n = 0;
	if (d->cuDeviceGetCount(&n) != CUDA_SUCCESS)
		return -1;
	for (int i = 0; i < n; i++) {
		CUdevice dev;
		CUuuid u;
		char s[48];
		if (d->cuDeviceGet(&dev, i) != CUDA_SUCCESS || d->cuDeviceGetUuid(&u, dev) != CUDA_SUCCESS)
			continue;
		ls_cudrv_uuid_str(&u, s, sizeof(s));
		if (strcasecmp(s, uuid) == 0)
			return i;
	}
	return -1;
}

/* The import and mapping steps; *done counts the ones to undo. */
static int ls_device_map(const struct ls_cudrv *d, struct ls_slab_map *m, int fd, int *done,
			 struct ls_err *err)
{
	CUmemGenericAllocationHandle h;
	LS_CU(d, err, cuMemImportFromShareableHandle, &h, (void *)(uintptr_t)fd,
	      CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
	m->handle = h;
	*done = 1;
	CUdeviceptr va;
	LS_CU(d, err, cuMemAddressReserve, &va, m->size, 0, 0, 0);
	m->addr = (const uint8_t *)(uintptr_t)va;
	*done = 2;
	LS_CU(d, err, cuMemMap, va, m->size, 0, h, 0);
	*done = 3;
	CUmemAccessDesc access;
	memset(&access, 0, sizeof(access));
	access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	access.location.id = m->device;
	access.flags = CU_MEM_ACCESS_FLAGS_PROT_READ;
	CUresult r = d->cuMemSetAccess(va, m->size, &access, 1);
	m->read_only = r == CUDA_SUCCESS;
	if (!m->read_only) {
		/* Drivers that refuse read-only imports get read-write (the header's Caveats). */
		access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
		LS_CU(d, err, cuMemSetAccess, va, m->size, &access, 1);
	}
	return 0;
}

static void ls_device_undo(const struct ls_cudrv *d, struct ls_slab_map *m, int done)
{
	CUdeviceptr va = (CUdeviceptr)(uintptr_t)m->addr;
	if (done >= 3)
		d->cuMemUnmap(va, m->size);
	if (done >= 2)
		d->cuMemAddressFree(va, m->size);
	if (done >= 1)
		d->cuMemRelease((CUmemGenericAllocationHandle)m->handle);
}

/* Import and map a slab for this process (fd closed here). */
static int ls_device_import_new(lorastore *conn, uint32_t id, uint64_t size, int fd,
				const char *uuid, struct ls_slab_map *m)
{
	const struct ls_cudrv *d;
	struct ls_err err;
	int rc = ls_cudrv_load(&d, &err);
	if (rc) {
		close(fd);
		return ls_conn_error(conn, rc, "device slab %u: %s", id, err.msg);
	}
	memset(m, 0, sizeof(*m));
	m->id = id;
	m->size = (size_t)size;
	snprintf(m->uuid, sizeof(m->uuid), "%s", uuid);
	m->device = ls_device_ordinal(d, uuid);
	if (m->device < 0) {
		close(fd);
		return ls_conn_error(conn, LS_E_NO_DEVICE,
				     "device slab %u is on GPU %s, which this process cannot see "
				     "(CUDA_VISIBLE_DEVICES?)",
				     id, uuid);
	}
	/*
	 * The GPU's primary context is retained for as long as the slab is
	 * mapped (so that the device state the mapping lives in stays up even
	 * if the application releases its own references) and is current on
	 * this thread only while the driver works; the caller's current context
	 * comes back afterwards.
	 */
	CUcontext prev = NULL, ctx = NULL;
	CUdevice dev;
	int done = 0;
	d->cuCtxGetCurrent(&prev);
	CUresult r = d->cuDeviceGet(&dev, m->device);
	if (r == CUDA_SUCCESS)
		r = d->cuDevicePrimaryCtxRetain(&ctx, dev);
	if (r == CUDA_SUCCESS)
		r = d->cuCtxSetCurrent(ctx);
	if (r != CUDA_SUCCESS)
		rc = ls_cudrv_fail(d, &err, r, "cuDevicePrimaryCtxRetain", __FILE__, __LINE__);
	else
		rc = ls_device_map(d, m, fd, &done, &err);
	close(fd);
	if (rc)
		ls_device_undo(d, m, done);
	if (ctx) {
		d->cuCtxSetCurrent(prev);
		if (rc)
			d->cuDevicePrimaryCtxRelease(dev);
	}
	if (rc)
		return ls_conn_error(conn, rc, "device slab %u on %s: %s", id, uuid, err.msg);
	return 0;
}

int ls_device_import(lorastore *conn, uint32_t id, uint64_t size, int fd, const char *uuid,
		     struct ls_slab_map *m)
{
	pthread_mutex_lock(&ls_imports_lock);
	struct ls_dev_import *imp = NULL;
	for (imp = conn->instance ? ls_imports : NULL; imp; imp = imp->next)
		if (imp->instance == conn->instance && imp->m.id == id && imp->m.size >= size)
			break;
	int rc = 0;
	if (imp) {
		close(fd); /* imported already, by another connection */
	} else {
		imp = calloc(1, sizeof(*imp));
		if (!imp) {
			close(fd);
			rc = ls_conn_error(conn, -ENOMEM, "out of memory");
		} else if ((rc = ls_device_import_new(conn, id, size, fd, uuid, &imp->m))) {
			free(imp);
			imp = NULL;
		} else {
			imp->instance = conn->instance;
			imp->next = ls_imports;
			ls_imports = imp;
		}
	}
	if (imp) {
		imp->refs++;
		*m = imp->m;
		m->import = imp;
	}
	pthread_mutex_unlock(&ls_imports_lock);
	return rc;
}

/* Unmap and release an import nobody holds any more. */
static void ls_device_unmap_now(struct ls_slab_map *m)
{
	const struct ls_cudrv *d;
	struct ls_err err;
	CUcontext prev = NULL, ctx = NULL;
	CUdevice dev;
	if (ls_cudrv_load(&d, &err) || d->cuDeviceGet(&dev, m->device) != CUDA_SUCCESS)
		return;
	d->cuCtxGetCurrent(&prev);
	/* Retained at import: this retain only finds it, the release below ends both. */
	if (d->cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS)
		return;
	d->cuCtxSetCurrent(ctx);
	ls_device_undo(d, m, 3);
	d->cuCtxSetCurrent(prev);
	d->cuDevicePrimaryCtxRelease(dev);
	d->cuDevicePrimaryCtxRelease(dev);
}

void ls_device_unmap(struct ls_slab_map *m)
{
	pthread_mutex_lock(&ls_imports_lock);
	struct ls_dev_import *imp = m->import;
	if (imp && --imp->refs == 0) {
		struct ls_dev_import **p = &ls_imports;
		while (*p && *p != imp)
			p = &(*p)->next;
		if (*p)
			*p = imp->next;
		ls_device_unmap_now(&imp->m);
		free(imp);
	}
	m->import = NULL;
	pthread_mutex_unlock(&ls_imports_lock);
}

#endif
