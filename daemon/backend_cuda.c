/*
 * The CUDA memory backend: device slabs for one GPU.
 *
 * A slab is one cuMemCreate allocation of pinned device memory with the
 * POSIX file descriptor handle type, in a multiple of the allocation
 * granularity.  The daemon maps it read-write into its own address space
 * (to upload into it) and exports it once with cuMemExportToShareableHandle;
 * that descriptor is what connections receive.  A client imports it, maps it
 * read-only and reads adapters by offset.
 *
 * Uploads are cuMemcpyHtoDAsync on the backend's copy stream, from host
 * memory the residency registered as pinned, each followed by an event.  A
 * pool of one thread (workers.h) waits on those events in order and hands
 * each finished upload, with the result of its copy, to the loop through the
 * pool's eventfd.  (A
 * host function queued after the copy did the same, but the driver runs
 * host functions on a thread of its own after a delay: on an H200, 0.2 ms
 * per copy, a sixth of a 67 MB upload.)
 *
 * Every call makes the GPU's primary context current on the calling thread
 * first: the loop thread owns the backend, and the driver's current context
 * is per thread.
 */
#define _GNU_SOURCE
#include "backend_cuda.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifndef LS_HAVE_CUDRV

int ls_cuda_devices(struct ls_cuda_device *out, int *n, struct ls_err *err)
{
	(void)out;
	*n = 0;
	return ls_err_set(err, LS_E_NOT_BUILT, "this lorastored was built without the CUDA backend");
}

int ls_backend_cuda_create(int ordinal, struct ls_backend *out, struct ls_err *err)
{
	(void)ordinal;
	(void)out;
	return ls_err_set(err, LS_E_NOT_BUILT, "this lorastored was built without the CUDA backend");
}

#else

#include <stdlib.h>
#include <unistd.h>

#include "ls_cudrv.h"

struct ls_cuda {
	const struct ls_cudrv *d;
	int ordinal;
	CUdevice dev;
	CUcontext ctx;               /* the primary context, retained */
	CUstream stream;             /* uploads, in order */
	uint64_t granularity;
	/*
	 * One thread waits, in stream order, on the event recorded after each
	 * copy, and hands the upload to the loop (its eventfd, then reap).
	 */
	struct ls_workers *waits;
	int efd;                     /* the pool's: readable when uploads finished */
	struct ls_job_owner uploads; /* the owner of every wait job: c is found from it */
};

/* What a slab of this backend keeps. */
struct ls_cuda_slab {
	CUmemGenericAllocationHandle handle;
	CUdeviceptr va;              /* the daemon's read-write mapping */
	int fd;                      /* the handle exported as a POSIX file descriptor */
};

static int cuda_current(struct ls_cuda *c, struct ls_err *err)
{
	LS_CU(c->d, err, cuCtxSetCurrent, c->ctx);
	return 0;
}

static const char *cuda_name(void *ctx)
{
	(void)ctx;
	return "cuda";
}

static uint64_t cuda_granularity(void *ctx)
{
	return ((struct ls_cuda *)ctx)->granularity;
}

static CUmemAllocationProp cuda_prop(int ordinal)
{
	CUmemAllocationProp prop;
	memset(&prop, 0, sizeof(prop));
	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop.location.id = ordinal;
	prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
	return prop;
}

/* The steps of a slab, undone in reverse by cuda_slab_undo. */
static int cuda_slab_make(struct ls_cuda *c, uint64_t size, struct ls_cuda_slab *s, int *fd,
			  int *done, struct ls_err *err)
{
	CUmemAllocationProp prop = cuda_prop(c->ordinal);
	LS_CU(c->d, err, cuMemCreate, &s->handle, size, &prop, 0);
	*done = 1;
	LS_CU(c->d, err, cuMemAddressReserve, &s->va, size, 0, 0, 0);
	*done = 2;
	LS_CU(c->d, err, cuMemMap, s->va, size, 0, s->handle, 0);
	*done = 3;
	CUmemAccessDesc access;
	memset(&access, 0, sizeof(access));
	access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	access.location.id = c->ordinal;
	access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	LS_CU(c->d, err, cuMemSetAccess, s->va, size, &access, 1);
	LS_CU(c->d, err, cuMemExportToShareableHandle, fd, s->handle,
	      CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
	*done = 4;
	return 0;
}

static void cuda_slab_undo(struct ls_cuda *c, uint64_t size, struct ls_cuda_slab *s, int fd,
			   int done)
{
	if (done >= 4 && fd >= 0)
		close(fd);
	if (done >= 3)
		c->d->cuMemUnmap(s->va, size);
	if (done >= 2)
		c->d->cuMemAddressFree(s->va, size);
	if (done >= 1)
		c->d->cuMemRelease(s->handle);
}

static int cuda_slab_alloc(void *ctx, uint64_t size, struct ls_slab *out, struct ls_err *err)
{
	struct ls_cuda *c = ctx;
	int rc = cuda_current(c, err);
	if (rc)
		return rc;
	uint64_t g = c->granularity;
	if (size > UINT64_MAX - (g - 1))
		return ls_err_set(err, -ENOMEM, "a device slab of %llu bytes cannot exist",
				  (unsigned long long)size);
	size = (size + g - 1) / g * g;
	struct ls_cuda_slab *s = calloc(1, sizeof(*s));
	if (!s)
		return ls_err_set(err, -ENOMEM, "out of memory");
	int fd = -1, done = 0;
	rc = cuda_slab_make(c, size, s, &fd, &done, err);
	if (rc) {
		cuda_slab_undo(c, size, s, fd, done);
		free(s);
		return rc;
	}
	s->fd = fd;
	out->size = size;
	out->priv = s;
	return 0;
}

/*
 * Never wait for clients here: a client that imported the slab holds its own
 * handle and mapping, and the driver keeps the physical memory until the
 * last of those goes (seen on an H200: memory imported from a descriptor
 * reads intact after the exporter unmapped it, released its handle, closed
 * the descriptor and exited).  So the daemon gives up only its own
 * references; the memory returns to the GPU's pool when the last client
 * unmaps it.  Copies still queued into the slab finish first.
 */
static void cuda_slab_free(void *ctx, struct ls_slab *slab)
{
	struct ls_cuda *c = ctx;
	struct ls_cuda_slab *s = slab->priv;
	struct ls_err err;
	if (cuda_current(c, &err) == 0 && s) {
		c->d->cuStreamSynchronize(c->stream);
		cuda_slab_undo(c, slab->size, s, s->fd, 4);
	} else if (s && s->fd >= 0) {
		close(s->fd);
	}
	free(s);
	slab->priv = NULL;
	slab->size = 0;
}

static int cuda_slab_export(void *ctx, const struct ls_slab *slab)
{
	(void)ctx;
	const struct ls_cuda_slab *s = slab->priv;
	return s ? s->fd : -1;
}

/*
 * A wait job, on the backend's one waiting thread: the copy's event, in
 * stream order (spinning while a copy is in flight, per the context's
 * default scheduling, which is what makes it prompt).
 */
static void cuda_wait_run(struct ls_job *job)
{
	struct ls_upload *up = (struct ls_upload *)((char *)job - offsetof(struct ls_upload, job));
	struct ls_cuda *c = (struct ls_cuda *)((char *)job->owner - offsetof(struct ls_cuda, uploads));
	c->d->cuCtxSetCurrent(c->ctx);
	CUevent ev = (CUevent)up->event;
	CUresult r = c->d->cuEventSynchronize(ev);
	c->d->cuEventDestroy(ev);
	up->event = NULL;
	up->rc = r == CUDA_SUCCESS ? 0 : r == CUDA_ERROR_OUT_OF_MEMORY ? -ENOMEM : LS_E_DEVICE;
}

/* On the loop thread (reap): the upload is done. */
static void cuda_wait_done(struct ls_job *job)
{
	struct ls_upload *up = (struct ls_upload *)((char *)job - offsetof(struct ls_upload, job));
	up->done(up, up->rc);
}

static int cuda_upload(void *ctx, struct ls_slab *slab, uint64_t offset, const void *src,
		       uint64_t len, struct ls_upload *up, struct ls_err *err)
{
	struct ls_cuda *c = ctx;
	struct ls_cuda_slab *s = slab->priv;
	int rc = cuda_current(c, err);
	if (rc)
		return rc;
	CUevent ev;
	LS_CU(c->d, err, cuEventCreate, &ev, CU_EVENT_DISABLE_TIMING);
	CUresult r = c->d->cuMemcpyHtoDAsync(s->va + offset, src, len, c->stream);
	if (r == CUDA_SUCCESS)
		r = c->d->cuEventRecord(ev, c->stream);
	if (r != CUDA_SUCCESS) {
		c->d->cuEventDestroy(ev);
		return ls_cudrv_fail(c->d, err, r, "cuMemcpyHtoDAsync", __FILE__, __LINE__);
	}
	up->event = (void *)ev;
	up->job = (struct ls_job){.run = cuda_wait_run, .done = cuda_wait_done, .owner = &c->uploads};
	ls_workers_submit(c->waits, &up->job);
	return 0;
}

static int cuda_completion_fd(void *ctx)
{
	return ((struct ls_cuda *)ctx)->efd;
}

static void cuda_reap(void *ctx)
{
	ls_workers_reap(((struct ls_cuda *)ctx)->waits);
}

static int cuda_host_register(void *ctx, void *p, uint64_t len, struct ls_err *err)
{
	struct ls_cuda *c = ctx;
	int rc = cuda_current(c, err);
	if (rc)
		return rc;
	/* PORTABLE: every GPU's context copies from it at full speed, not only this one's. */
	LS_CU(c->d, err, cuMemHostRegister, p, len, CU_MEMHOSTREGISTER_PORTABLE);
	return 0;
}

static void cuda_host_unregister(void *ctx, void *p)
{
	struct ls_cuda *c = ctx;
	struct ls_err err;
	if (cuda_current(c, &err) == 0)
		c->d->cuMemHostUnregister(p);
}

static int cuda_query_memory(void *ctx, uint64_t *free_bytes, uint64_t *total_bytes)
{
	struct ls_cuda *c = ctx;
	struct ls_err err;
	int rc = cuda_current(c, &err);
	if (rc)
		return rc;
	size_t f = 0, t = 0;
	if (c->d->cuMemGetInfo(&f, &t) != CUDA_SUCCESS)
		return LS_E_DEVICE;
	*free_bytes = f;
	*total_bytes = t;
	return 0;
}

static void cuda_destroy(void *ctx)
{
	struct ls_cuda *c = ctx;
	struct ls_err err;
	/* No upload is in flight (the interface's rule): the thread ends at once. */
	ls_workers_stop(c->waits);
	if (c->stream && cuda_current(c, &err) == 0) {
		c->d->cuStreamSynchronize(c->stream);
		c->d->cuStreamDestroy(c->stream);
	}
	if (c->ctx)
		c->d->cuDevicePrimaryCtxRelease(c->dev);
	free(c);
}

static const struct ls_backend_i cuda_iface = {
	/* .name            = */ cuda_name,
	/* .slab_alloc      = */ cuda_slab_alloc,
	/* .slab_free       = */ cuda_slab_free,
	/* .slab_export     = */ cuda_slab_export,
	/* .host_ptr        = */ NULL, /* device memory: filled by upload */
	/* .upload          = */ cuda_upload,
	/* .completion_fd   = */ cuda_completion_fd,
	/* .reap            = */ cuda_reap,
	/* .host_register   = */ cuda_host_register,
	/* .host_unregister = */ cuda_host_unregister,
	/* .query_memory    = */ cuda_query_memory,
	/* .granularity     = */ cuda_granularity,
	/* .destroy         = */ cuda_destroy,
};

static int cuda_device_info(const struct ls_cudrv *d, int ordinal, struct ls_cuda_device *out,
			    struct ls_err *err)
{
	memset(out, 0, sizeof(*out));
	out->ordinal = ordinal;
	CUdevice dev;
	LS_CU(d, err, cuDeviceGet, &dev, ordinal);
	CUuuid uuid;
	LS_CU(d, err, cuDeviceGetUuid, &uuid, dev);
	ls_cudrv_uuid_str(&uuid, out->uuid, sizeof(out->uuid));
	LS_CU(d, err, cuDeviceGetName, out->name, (int)sizeof(out->name), dev);
	int vmm = 0, fd = 0;
	LS_CU(d, err, cuDeviceGetAttribute, &vmm,
	      CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev);
	LS_CU(d, err, cuDeviceGetAttribute, &fd,
	      CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev);
	out->usable = vmm && fd;
	CUcontext ctx;
	LS_CU(d, err, cuDevicePrimaryCtxRetain, &ctx, dev);
	int rc = 0;
	size_t f = 0, t = 0;
	CUresult r = d->cuCtxSetCurrent(ctx);
	if (r == CUDA_SUCCESS)
		r = d->cuMemGetInfo(&f, &t);
	if (r != CUDA_SUCCESS)
		rc = ls_cudrv_fail(d, err, r, "cuMemGetInfo", __FILE__, __LINE__);
	out->free_bytes = f;
	out->total_bytes = t;
	d->cuCtxSetCurrent(NULL);
	d->cuDevicePrimaryCtxRelease(dev);
	return rc;
}

int ls_cuda_devices(struct ls_cuda_device *out, int *n, struct ls_err *err)
{
	*n = 0;
	const struct ls_cudrv *d;
	int rc = ls_cudrv_load(&d, err);
	if (rc)
		return rc;
	int count = 0;
	LS_CU(d, err, cuDeviceGetCount, &count);
	for (int i = 0; i < count && i < LS_CUDA_MAX_DEVICES; i++) {
		rc = cuda_device_info(d, i, &out[i], err);
		if (rc)
			return rc;
		(*n)++;
	}
	return 0;
}

static int cuda_setup(struct ls_cuda *c, struct ls_err *err)
{
	const struct ls_cudrv *d = c->d;
	LS_CU(d, err, cuDeviceGet, &c->dev, c->ordinal);
	LS_CU(d, err, cuDevicePrimaryCtxRetain, &c->ctx, c->dev);
	LS_CU(d, err, cuCtxSetCurrent, c->ctx);
	CUmemAllocationProp prop = cuda_prop(c->ordinal);
	size_t g = 0;
	LS_CU(d, err, cuMemGetAllocationGranularity, &g, &prop,
	      CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
	c->granularity = g ? g : (2u << 20);
	LS_CU(d, err, cuStreamCreate, &c->stream, CU_STREAM_NON_BLOCKING);
	int rc = ls_workers_start(1, &c->waits, &c->efd);
	if (rc)
		return ls_err_set(err, rc, "the completion thread: %s", strerror(-rc));
	return 0;
}

int ls_backend_cuda_create(int ordinal, struct ls_backend *out, struct ls_err *err)
{
	struct ls_cuda *c = calloc(1, sizeof(*c));
	if (!c)
		return ls_err_set(err, -ENOMEM, "out of memory");
	c->ordinal = ordinal;
	c->efd = -1;
	int rc = ls_cudrv_load(&c->d, err);
	if (rc == 0)
		rc = cuda_setup(c, err);
	if (rc) {
		if (c->d)
			cuda_destroy(c);
		else
			free(c);
		return rc;
	}
	out->iface = &cuda_iface;
	out->ctx = c;
	return 0;
}

#endif
