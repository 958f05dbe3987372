/*
 * The host memory backend: slabs are sealed memfds.
 *
 * Each slab is a memfd that the daemon maps read-write once and then seals
 * with F_SEAL_FUTURE_WRITE: from then on nobody can create a new writable
 * shared mapping of it or write(2) to it, while the daemon's own mapping,
 * made before the seal, stays writable.  Clients receive the descriptor by
 * SCM_RIGHTS and can only map it read-only, so a misbehaving client cannot
 * corrupt adapters that other clients read.  F_SEAL_SHRINK and F_SEAL_GROW
 * fix the size, so a client's mapping can never be truncated under it
 * (SIGBUS), and F_SEAL_SEAL stops anyone from changing the seals afterwards.
 *
 * Slab sizes are rounded up to 2 MiB.  A 2 MiB-aligned shmem file can be
 * backed by transparent huge pages when the administrator allows it
 * (/sys/kernel/mm/transparent_hugepage/shmem_enabled "always", "within_size",
 * or "advise" together with the MADV_HUGEPAGE below); with "never" the slab
 * simply uses 4 KiB pages.  Pages are faulted in lazily as adapters are
 * uploaded: an empty slab costs address space, not memory.
 */
#define _GNU_SOURCE
#include "backend.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

/* Slab size granularity in bytes: one x86-64 / arm64 huge page. */
#define LS_HOST_GRANULARITY (2u * 1024u * 1024u)

/* The seals every slab carries once the daemon's writable mapping exists. */
#define LS_HOST_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)

static const char *host_name(void *ctx)
{
	(void)ctx;
	return "host";
}

static uint64_t host_granularity(void *ctx)
{
	(void)ctx;
	return LS_HOST_GRANULARITY;
}

/* A host slab: the memfd clients map, and the daemon's writable mapping of it. */
struct ls_host_slab {
	int fd;
	void *map;
};

static int host_slab_alloc(void *ctx, uint64_t size, struct ls_slab *out, struct ls_err *err)
{
	(void)ctx;
	const uint64_t g = LS_HOST_GRANULARITY;
	int rc;

	/* Round up without overflow; anything past off_t or size_t cannot exist. */
	if (size > UINT64_MAX - (g - 1))
		return ls_err_set(err, -ENOMEM, "a host slab of %llu bytes cannot exist",
				  (unsigned long long)size);
	uint64_t rounded = (size + g - 1) / g * g;
	if (rounded > (uint64_t)INT64_MAX || rounded > (uint64_t)SIZE_MAX)
		return ls_err_set(err, -ENOMEM, "a host slab of %llu bytes cannot exist",
				  (unsigned long long)size);

	int fd = memfd_create("lorastore-slab", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return ls_err_set(err, -errno, "memfd_create: %s", strerror(errno));
	if (ftruncate(fd, (off_t)rounded) < 0) {
		rc = ls_err_set(err, -errno, "a host slab of %llu bytes: %s",
				(unsigned long long)rounded, strerror(errno));
		goto fail_fd;
	}

	/* The daemon's writable mapping must exist before F_SEAL_FUTURE_WRITE. */
	void *host = mmap(NULL, (size_t)rounded, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (host == MAP_FAILED) {
		rc = ls_err_set(err, -errno, "mapping a host slab of %llu bytes: %s",
				(unsigned long long)rounded, strerror(errno));
		goto fail_fd;
	}
	/*
	 * Both hints are best effort: huge pages where "advise" mode asks for
	 * them, and no slab contents in the daemon's core dumps (slabs can be
	 * tens of GiB of adapter weights, which are on disk anyway).
	 */
	(void)madvise(host, (size_t)rounded, MADV_HUGEPAGE);
	(void)madvise(host, (size_t)rounded, MADV_DONTDUMP);

	if (fcntl(fd, F_ADD_SEALS, LS_HOST_SEALS) < 0) {
		rc = ls_err_set(err, -errno, "sealing a host slab: %s", strerror(errno));
		goto fail_map;
	}

	struct ls_host_slab *hs = malloc(sizeof(*hs));
	if (!hs) {
		rc = ls_err_set(err, -ENOMEM, "out of memory");
		goto fail_map;
	}
	hs->fd = fd;
	hs->map = host;
	out->size = rounded;
	out->priv = hs;
	return 0;

fail_map:
	munmap(host, (size_t)rounded);
fail_fd:
	close(fd);
	return rc;
}

static void host_slab_free(void *ctx, struct ls_slab *slab)
{
	(void)ctx;
	/*
	 * Clients' mappings hold their own reference to the memfd's pages, so
	 * they stay readable after this; the memory goes when the last one is
	 * unmapped and the last descriptor is closed.
	 */
	struct ls_host_slab *hs = slab->priv;
	if (hs) {
		munmap(hs->map, (size_t)slab->size);
		close(hs->fd);
		free(hs);
	}
	slab->priv = NULL;
	slab->size = 0;
}

static int host_slab_export(void *ctx, const struct ls_slab *slab)
{
	(void)ctx;
	const struct ls_host_slab *hs = slab->priv;
	return hs ? hs->fd : -1;
}

static void *host_host_ptr(void *ctx, struct ls_slab *slab, uint64_t offset, uint64_t len)
{
	(void)ctx;
	(void)len;
	const struct ls_host_slab *hs = slab->priv;
	return hs ? (uint8_t *)hs->map + offset : NULL;
}

/* Parse "Key:   12345 kB" lines of /proc/meminfo; 0, or -errno. */
static int read_meminfo(uint64_t *avail, uint64_t *total)
{
	FILE *f = fopen("/proc/meminfo", "re");
	if (!f)
		return -errno;
	char line[256];
	bool have_avail = false, have_total = false;
	while (fgets(line, sizeof(line), f) && !(have_avail && have_total)) {
		uint64_t kib;
		if (sscanf(line, "MemTotal: %" SCNu64 " kB", &kib) == 1) {
			*total = kib * 1024;
			have_total = true;
		} else if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kib) == 1) {
			*avail = kib * 1024;
			have_avail = true;
		}
	}
	fclose(f);
	return have_avail && have_total ? 0 : -ENOENT;
}

static int host_query_memory(void *ctx, uint64_t *free_bytes, uint64_t *total_bytes)
{
	(void)ctx;
	/*
	 * MemAvailable counts reclaimable page cache, which is what a new slab
	 * can really take; sysinfo's freeram does not, so it is only the fallback
	 * (kernels before 3.14, or no /proc mounted).
	 */
	if (read_meminfo(free_bytes, total_bytes) == 0)
		return 0;
	struct sysinfo si;
	if (sysinfo(&si) < 0)
		return -errno;
	*free_bytes = (uint64_t)si.freeram * si.mem_unit;
	*total_bytes = (uint64_t)si.totalram * si.mem_unit;
	return 0;
}

static const struct ls_backend_i host_iface = {
	/* .name            = */ host_name,
	/* .slab_alloc      = */ host_slab_alloc,
	/* .slab_free       = */ host_slab_free,
	/* .slab_export     = */ host_slab_export,
	/* .host_ptr        = */ host_host_ptr,
	/* .upload          = */ NULL, /* reads land in the slab itself */
	/* .completion_fd   = */ NULL,
	/* .reap            = */ NULL,
	/* .host_register   = */ NULL,
	/* .host_unregister = */ NULL,
	/* .query_memory    = */ host_query_memory,
	/* .granularity     = */ host_granularity,
	/* .destroy         = */ NULL,
};

/*
 * Check once at start-up that this kernel can seal a memfd the way slabs
 * need (F_SEAL_FUTURE_WRITE arrived in Linux 5.1), so that a missing feature
 * is one clear error instead of a failure at the first acquire.
 */
static int host_probe(struct ls_err *err)
{
	int fd = memfd_create("lorastore-probe", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0) {
		int e = errno;
		return ls_err_set(err, LS_E_BACKEND, "host backend: memfd_create failed: %s",
				  strerror(e));
	}
	int rc = 0;
	if (fcntl(fd, F_ADD_SEALS, LS_HOST_SEALS) < 0) {
		int e = errno;
		rc = ls_err_set(err, LS_E_BACKEND,
				"host backend: this kernel cannot seal a memfd with "
				"F_SEAL_FUTURE_WRITE (needs Linux 5.1 or later): %s",
				strerror(e));
	}
	close(fd);
	return rc;
}

int ls_backend_host_create(struct ls_backend *out, struct ls_err *err)
{
	int rc = host_probe(err);
	if (rc < 0)
		return rc;
	out->iface = &host_iface;
	out->ctx = NULL;
	return 0;
}
