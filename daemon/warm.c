/* The warm path, the daemon's side (warm.h). */
#include "warm.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"
#include "server.h"

static bool ls_warm_publish(void *ctx, const struct ls_resident *e)
{
	struct ls_server *srv = ctx;
	struct ls_res_share sh;
	ls_res_share_of(e, &sh);
	struct ls_dir_where w = {
		.generation = sh.generation,
		.tier = ls_tier_index(sh.tier),
		.data_slab_id = sh.data_slab_id,
		.table_slab_id = sh.table_slab_id,
		.data_slab_size = sh.data_slab_size,
		.data_offset = sh.data_offset,
		.table_slab_size = sh.table_slab_size,
		.table_offset = sh.table_offset,
		.table_length = sh.table_length,
		.pinned_bytes = ls_res_pinned_bytes(e),
	};
	if (ls_dir_res_put(srv->warm.dir, &w))
		return true;
	srv->warm.unpublished++;
	return false;
}

static bool ls_warm_scan(void *ctx, const struct ls_resident *e)
{
	struct ls_server *srv = ctx;
	uint64_t gen = ls_res_generation(e);
	uint32_t tier = ls_tier_index(ls_res_tier_of(e));
	/*
	 * The removal (its sequence, stored seq_cst) before the scan's seq_cst
	 * loads: a client whose slot the scan misses reads the new sequence
	 * and backs out (directory.h).
	 */
	ls_dir_res_remove(srv->warm.dir, gen, tier);
	return ls_lease_pages_hold(&srv->leases, gen, tier);
}

int ls_warm_init(struct ls_server *srv, struct ls_err *err)
{
	struct ls_warm *w = &srv->warm;
	w->dir_fd = -1;
	size_t bytes = ls_dir_size();
	int fd = memfd_create("lorastore-directory", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return ls_err_set(err, -errno, "directory: memfd_create: %s", strerror(errno));
	void *p = MAP_FAILED;
	if (ftruncate(fd, (off_t)bytes) == 0)
		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	/* Written by the daemon alone: no one maps it writable after this. */
	if (p == MAP_FAILED || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW |
						      F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0) {
		int e = errno;
		if (p != MAP_FAILED)
			munmap(p, bytes);
		close(fd);
		return ls_err_set(err, -e, "directory: %s", strerror(e));
	}
	ls_dir_init(p, srv->instance);
	w->dir = p;
	w->dir_bytes = bytes;
	w->dir_fd = fd;
	uint32_t n = ls_res_tier_count(srv->res);
	for (uint32_t i = 0; i < n && i < LS_DIR_MAX_TIERS; i++) {
		const struct ls_tier *t = ls_res_tier_at(srv->res, i);
		w->dir->tiers[i].kind = (uint32_t)ls_tier_kind(t);
		strncpy(w->dir->tiers[i].uuid, ls_tier_uuid(t), sizeof(w->dir->tiers[i].uuid) - 1);
	}
	w->dir->n_tiers = n < LS_DIR_MAX_TIERS ? n : LS_DIR_MAX_TIERS;
	atomic_store_explicit(&w->dir->pin_limit, srv->leases.pin_limit, memory_order_relaxed);
	srv->leases.res = srv->res;
	struct ls_res_warm hooks = {.ctx = srv, .publish = ls_warm_publish, .held = ls_warm_scan};
	ls_residency_set_warm(srv->res, &hooks);
	return 0;
}

void ls_warm_destroy(struct ls_warm *w)
{
	if (w->dir)
		munmap(w->dir, w->dir_bytes);
	if (w->dir_fd >= 0)
		close(w->dir_fd);
	w->dir = NULL;
	w->dir_fd = -1;
}

static void ls_warm_used(void *ctx, uint64_t generation, uint32_t tier)
{
	struct ls_server *srv = ctx;
	ls_res_used(srv->res, tier, generation);
}

static void ls_warm_over(void *ctx, struct ls_lease_set *set, uint64_t bytes)
{
	struct ls_server *srv = ctx;
	struct ls_session *s =
		(struct ls_session *)((char *)set - offsetof(struct ls_session, leases));
	srv->warm.over_limit++;
	ls_warn("closing the connection of pid %d (uid %u): it pins %llu bytes through its "
		"lease page and its leases, over --client-pin-limit %llu",
		(int)s->cred.pid, (unsigned)s->cred.uid, (unsigned long long)bytes,
		(unsigned long long)srv->leases.pin_limit);
	ls_session_close(s, "over its pin limit through its lease page");
}

void ls_warm_tick(struct ls_server *srv)
{
	if (!srv->warm.dir)
		return;
	ls_lease_pages_look(&srv->leases, ls_warm_used, ls_warm_over, srv);
	ls_res_rescan(srv->res);
}
