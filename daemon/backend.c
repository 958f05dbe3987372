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

int ls_backend_slab_alloc(const struct ls_backend *b, uint64_t size, struct ls_slab *out)
{
	if (!out)
		return -EINVAL;
	/* A failed allocation leaves a slab that slab_free and callers can tell is empty. */
	memset(out, 0, sizeof(*out));
	out->fd = -1;
	if (size == 0)
		return -EINVAL;
	return b->iface->slab_alloc(b->ctx, size, out);
}

void ls_backend_slab_free(const struct ls_backend *b, struct ls_slab *slab)
{
	if (!slab)
		return;
	b->iface->slab_free(b->ctx, slab);
}

int ls_backend_upload(const struct ls_backend *b, struct ls_slab *slab, uint64_t offset,
		      const void *src, uint64_t len)
{
	if (!slab || (!src && len > 0))
		return -EINVAL;
	/* Written so that offset + len cannot overflow. */
	if (offset > slab->size || len > slab->size - offset)
		return -EINVAL;
	if (b->iface->upload)
		return b->iface->upload(b->ctx, slab, offset, src, len);

	/* Default: the slab has a host mapping and the copy is a memcpy. */
	if (!slab->host)
		return -EINVAL;
	if (len > 0)
		memcpy((unsigned char *)slab->host + offset, src, (size_t)len);
	return 0;
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
