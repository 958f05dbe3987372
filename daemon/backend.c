/*
 * Dispatchers of the memory-backend interface (backend.h).
 *
 * These are the only callers of a backend's table.  Optional members that a
 * backend leaves NULL get their default here and nowhere else, so a backend
 * never has to repeat the generic behaviour and callers never test for NULL.
 */
#include "backend.h"

#include <errno.h>
#include <string.h>

/* The granularity a backend that does not say otherwise is assumed to have. */
#define LS_BACKEND_DEFAULT_GRANULARITY 4096u

const char *ls_backend_name(const struct ls_backend *b)
{
	return b->iface->name(b->ctx);
}

int ls_backend_slab_alloc(const struct ls_backend *b, uint64_t size, struct ls_slab *out,
			  struct ls_err *err)
{
	if (!out)
		return ls_err_set(err, -EINVAL, "no slab to fill");
	/* A failed allocation leaves a slab that slab_free and callers can tell is empty. */
	memset(out, 0, sizeof(*out));
	if (size == 0)
		return ls_err_set(err, -EINVAL, "a slab of 0 bytes");
	return b->iface->slab_alloc(b->ctx, size, out, err);
}

void ls_backend_slab_free(const struct ls_backend *b, struct ls_slab *slab)
{
	if (!slab || slab->size == 0)
		return;
	b->iface->slab_free(b->ctx, slab);
}

int ls_backend_slab_export(const struct ls_backend *b, const struct ls_slab *slab)
{
	if (!slab || slab->size == 0)
		return -1;
	return b->iface->slab_export(b->ctx, slab);
}

/* Whether [offset, offset + len) lies inside the slab, written so that it cannot overflow. */
static bool ls_in_slab(const struct ls_slab *slab, uint64_t offset, uint64_t len)
{
	return slab && offset <= slab->size && len <= slab->size - offset;
}

void *ls_backend_host_ptr(const struct ls_backend *b, struct ls_slab *slab, uint64_t offset,
			  uint64_t len)
{
	if (!ls_in_slab(slab, offset, len))
		return NULL;
	/* Default: no host memory; the slab is filled by upload. */
	return b->iface->host_ptr ? b->iface->host_ptr(b->ctx, slab, offset, len) : NULL;
}

int ls_backend_upload(const struct ls_backend *b, struct ls_slab *slab, uint64_t offset,
		      const void *src, uint64_t len, struct ls_upload *up, struct ls_err *err)
{
	if (!ls_in_slab(slab, offset, len) || (!src && len > 0) || !up || !up->done)
		return ls_err_set(err, -EINVAL, "upload of %llu bytes at %llu: outside the slab",
				  (unsigned long long)len, (unsigned long long)offset);
	/* Default: this backend's slabs are filled through host_ptr only. */
	if (!b->iface->upload)
		return ls_err_set(err, -ENOTSUP, "the %s backend does not upload",
				  ls_backend_name(b));
	up->rc = 0;
	up->event = NULL;
	return b->iface->upload(b->ctx, slab, offset, src, len, up, err);
}

int ls_backend_completion_fd(const struct ls_backend *b)
{
	/* Default: nothing completes asynchronously. */
	return b->iface->completion_fd ? b->iface->completion_fd(b->ctx) : -1;
}

void ls_backend_reap(const struct ls_backend *b)
{
	if (b->iface->reap)
		b->iface->reap(b->ctx);
}

int ls_backend_host_register(const struct ls_backend *b, void *p, uint64_t len,
			     struct ls_err *err)
{
	/* Default: nothing to register; uploads read pageable memory. */
	return b->iface->host_register ? b->iface->host_register(b->ctx, p, len, err) : 0;
}

void ls_backend_host_unregister(const struct ls_backend *b, void *p)
{
	if (b->iface->host_unregister)
		b->iface->host_unregister(b->ctx, p);
}

int ls_backend_query_memory(const struct ls_backend *b, uint64_t *free_bytes,
			    uint64_t *total_bytes)
{
	uint64_t free_v = 0, total_v = 0;
	int rc = 0;

	/* Default: 0 / 0, meaning "unknown"; admission then relies on the budget alone. */
	if (b->iface->query_memory)
		rc = b->iface->query_memory(b->ctx, &free_v, &total_v);
	if (rc < 0)
		return rc;
	if (free_bytes)
		*free_bytes = free_v;
	if (total_bytes)
		*total_bytes = total_v;
	return 0;
}

uint64_t ls_backend_granularity(const struct ls_backend *b)
{
	uint64_t g = 0;

	if (b->iface->granularity)
		g = b->iface->granularity(b->ctx);
	/* A backend answering 0 would make every rounding divide by zero. */
	return g ? g : LS_BACKEND_DEFAULT_GRANULARITY;
}

void ls_backend_destroy(struct ls_backend *b)
{
	if (!b || !b->iface)
		return;
	/* Default: nothing to tear down. */
	if (b->iface->destroy)
		b->iface->destroy(b->ctx);
	b->iface = NULL;
	b->ctx = NULL;
}
