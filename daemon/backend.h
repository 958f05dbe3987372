/*
 * Memory backends of lorastored: where resident adapters live.
 *
 * One interface struct per backend (host: memfd slabs; cuda: VMM allocations
 * exported as POSIX file descriptors), a table of functions plus a context,
 * chosen at start-up.  Optional members say their default; ls_backend_*()
 * below are the only callers and apply those defaults.
 *
 * A slab is one large allocation that adapters are sub-allocated in.  Its
 * descriptor is sent once per connection (SCM_RIGHTS); clients map it
 * read-only and address adapters by offset.
 */
#ifndef LS_BACKEND_H
#define LS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ls_error.h"

struct ls_slab {
	uint32_t id;            /* unique within the daemon's life */
	uint64_t size;          /* bytes */
	int fd;                 /* the descriptor clients map; owned by the slab */
	void *host;             /* the daemon's writable mapping (host tier), or NULL */
	uint64_t device;        /* device address (cuda tier), or 0 */
	void *priv;             /* backend's own state */
};

struct ls_backend_i {
	/* "host" or "cuda". */
	const char *(*name)(void *ctx);

	/*
	 * Allocate a slab of at least size bytes (rounded up to the backend's
	 * granularity) with a descriptor to share.  0, -ENOMEM, or -errno.
	 */
	int (*slab_alloc)(void *ctx, uint64_t size, struct ls_slab *out);

	/* Release a slab; mappings clients still hold stay valid until unmapped. */
	void (*slab_free)(void *ctx, struct ls_slab *slab);

	/*
	 * Copy len bytes from host memory src into the slab at offset.
	 * Optional: default memcpy into slab->host.
	 */
	int (*upload)(void *ctx, struct ls_slab *slab, uint64_t offset, const void *src,
		      uint64_t len);

	/*
	 * Bytes the backend could still allocate and its total.
	 * Optional: default reports 0 / 0 (unknown).
	 */
	int (*query_memory)(void *ctx, uint64_t *free_bytes, uint64_t *total_bytes);

	/* Granularity of slab sizes in bytes. Optional: default 4096. */
	uint64_t (*granularity)(void *ctx);

	/* Tear the backend down. Optional: default nothing. */
	void (*destroy)(void *ctx);
};

struct ls_backend {
	const struct ls_backend_i *iface;
	void *ctx;
};

/* The host backend (memfd slabs, sealed, mapped read-only by clients). */
int ls_backend_host_create(struct ls_backend *out, struct ls_err *err);

/* Dispatchers: the one place where optional members get their defaults. */
const char *ls_backend_name(const struct ls_backend *b);
int ls_backend_slab_alloc(const struct ls_backend *b, uint64_t size, struct ls_slab *out);
void ls_backend_slab_free(const struct ls_backend *b, struct ls_slab *slab);
int ls_backend_upload(const struct ls_backend *b, struct ls_slab *slab, uint64_t offset,
		      const void *src, uint64_t len);
int ls_backend_query_memory(const struct ls_backend *b, uint64_t *free_bytes,
			    uint64_t *total_bytes);
uint64_t ls_backend_granularity(const struct ls_backend *b);
void ls_backend_destroy(struct ls_backend *b);

#endif
