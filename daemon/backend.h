/*
 * Memory backends of lorastored: where resident adapters live.
 *
 * One interface struct per backend (host: memfd slabs; cuda: VMM allocations
 * on one GPU, exported as POSIX file descriptors), a table of functions plus
 * a context.  Optional members say their default; ls_backend_*() below are
 * the only callers and apply those defaults.  The residency reaches slab
 * memory only through these calls: where a read lands and a table is written
 * (host_ptr), an asynchronous copy from host memory (upload, completed
 * through completion_fd and reap), the descriptor clients are sent
 * (slab_export), memory queries, granularity.
 *
 * A slab is one large allocation that adapters are sub-allocated in.  Its
 * descriptor is sent once per connection (SCM_RIGHTS); clients map it
 * read-only (host) or import it (cuda) and address adapters by offset.
 */
#ifndef LS_BACKEND_H
#define LS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ls_error.h"
#include "workers.h"

struct ls_slab {
	uint32_t id;            /* set by the residency: unique among the daemon's slabs */
	uint64_t size;          /* bytes */
	void *priv;             /* the backend's own state; NULL for no slab */
};

/* An asynchronous copy into a slab; done is called once, on the loop thread. */
struct ls_upload {
	void (*done)(struct ls_upload *up, int rc);
	int rc;
	/* The backend's, while in flight: */
	struct ls_job job;      /* waiting for the copy's end, on the backend's pool */
	void *event;            /* what marks the copy's end */
};

struct ls_backend_i {
	/* "host" or "cuda". */
	const char *(*name)(void *ctx);

	/*
	 * Allocate a slab of at least size bytes (rounded up to the backend's
	 * granularity) with a descriptor to share.  0, or -ENOMEM / -errno /
	 * LS_E_DEVICE with err.
	 */
	int (*slab_alloc)(void *ctx, uint64_t size, struct ls_slab *out, struct ls_err *err);

	/*
	 * Release a slab.  Clients that mapped or imported it keep what they
	 * mapped until they unmap it (the kernel's and the driver's own
	 * references).
	 */
	void (*slab_free)(void *ctx, struct ls_slab *slab);

	/*
	 * The descriptor that shares the slab: clients map it (host) or import
	 * it (cuda).  It belongs to the slab: the caller sends it and never
	 * closes it.
	 */
	int (*slab_export)(void *ctx, const struct ls_slab *slab);

	/*
	 * The daemon's host mapping of [offset, offset + len) of the slab,
	 * writable: where blob reads land, what the checksum reads, where tables
	 * are written.  Optional: default NULL (no host memory: fill the slab
	 * with upload).
	 */
	void *(*host_ptr)(void *ctx, struct ls_slab *slab, uint64_t offset, uint64_t len);

	/*
	 * Copy len bytes of host memory src into the slab at offset.  Returns 0
	 * when the copy is on its way (up->done follows, from reap) or an error
	 * (done is then never called).  src must stay unchanged until done.
	 * Optional: default -ENOTSUP.
	 */
	int (*upload)(void *ctx, struct ls_slab *slab, uint64_t offset, const void *src,
		      uint64_t len, struct ls_upload *up, struct ls_err *err);

	/*
	 * A descriptor that becomes readable when uploads have finished; then
	 * reap calls their done.  Optional: default -1 and nothing.
	 */
	int (*completion_fd)(void *ctx);
	void (*reap)(void *ctx);

	/*
	 * Register host memory that uploads will read from (pinned, so copies
	 * run at the bus's speed), and undo it before that memory goes.
	 * Optional: default nothing (the copy works, slower).
	 */
	int (*host_register)(void *ctx, void *p, uint64_t len, struct ls_err *err);
	void (*host_unregister)(void *ctx, void *p);

	/* Bytes the backend could still allocate and its total. Optional: 0 / 0 (unknown). */
	int (*query_memory)(void *ctx, uint64_t *free_bytes, uint64_t *total_bytes);

	/* Granularity of slab sizes in bytes. Optional: default 4096. */
	uint64_t (*granularity)(void *ctx);

	/* Tear the backend down (no upload in flight). Optional: default nothing. */
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
int ls_backend_slab_alloc(const struct ls_backend *b, uint64_t size, struct ls_slab *out,
			  struct ls_err *err);
void ls_backend_slab_free(const struct ls_backend *b, struct ls_slab *slab);
/* The slab's shared descriptor (owned by the slab), or -1 for no slab. */
int ls_backend_slab_export(const struct ls_backend *b, const struct ls_slab *slab);
void *ls_backend_host_ptr(const struct ls_backend *b, struct ls_slab *slab, uint64_t offset,
			  uint64_t len);
int ls_backend_upload(const struct ls_backend *b, struct ls_slab *slab, uint64_t offset,
		      const void *src, uint64_t len, struct ls_upload *up, struct ls_err *err);
int ls_backend_completion_fd(const struct ls_backend *b);
void ls_backend_reap(const struct ls_backend *b);
int ls_backend_host_register(const struct ls_backend *b, void *p, uint64_t len,
			     struct ls_err *err);
void ls_backend_host_unregister(const struct ls_backend *b, void *p);
int ls_backend_query_memory(const struct ls_backend *b, uint64_t *free_bytes,
			    uint64_t *total_bytes);
uint64_t ls_backend_granularity(const struct ls_backend *b);
void ls_backend_destroy(struct ls_backend *b);

#endif
