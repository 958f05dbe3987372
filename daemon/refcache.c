/*
 * The reference cache (refcache.h): direct-mapped, one entry per hash slot,
 * a newer reference replacing an older one in its slot.  The slots are the
 * directory's (proto/directory.h), which clients read without a request.
 */
#include "refcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ls_clock.h"

struct ls_refcache {
	struct ls_dir_hdr *dir;
};

int ls_refcache_create(struct ls_dir_hdr *dir, struct ls_refcache **out)
{
	struct ls_refcache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->dir = dir;
	*out = c;
	return 0;
}

void ls_refcache_destroy(struct ls_refcache *c)
{
	free(c);
}

void ls_refcache_set_latest_ttl(struct ls_refcache *c, int64_t ttl_ns)
{
	atomic_store_explicit(&c->dir->latest_ttl_ns, ttl_ns, memory_order_relaxed);
}

uint64_t ls_refcache_get(const struct ls_refcache *c, const char *ref)
{
	/* The one lookup, the clients' too: the TTL of "name" is applied there. */
	return ls_dir_ref_get(c->dir, ref, ls_mono_ns());
}

void ls_refcache_put(struct ls_refcache *c, const char *ref, uint64_t generation)
{
	if (strlen(ref) > LS_ALIAS_MAX || !generation)
		return;
	ls_dir_name_write(&ls_dir_names(c->dir)[ls_dir_ref_slot(ref)], ref, generation,
			  ls_mono_ns());
}

/* The reference of slot n into buf (LS_ALIAS_MAX + 1 bytes); the cache's own writes. */
static void ls_refcache_ref(const struct ls_dir_name *n, char *buf)
{
	for (size_t w = 0; w < LS_DIR_REF_WORDS; w++) {
		uint64_t word = atomic_load_explicit(&n->ref[w], memory_order_relaxed);
		size_t part = LS_ALIAS_MAX + 1 - w * 8 < 8 ? LS_ALIAS_MAX + 1 - w * 8 : 8;
		memcpy(buf + w * 8, &word, part);
	}
	buf[LS_ALIAS_MAX] = '\0';
}

void ls_refcache_drop(struct ls_refcache *c, const char *name, bool all)
{
	size_t len = strlen(name);
	struct ls_dir_name *names = ls_dir_names(c->dir);
	char ref[LS_ALIAS_MAX + 1];
	for (uint32_t i = 0; i < LS_DIR_NAMES; i++) {
		struct ls_dir_name *n = &names[i];
		if (!atomic_load_explicit(&n->generation, memory_order_relaxed))
			continue;
		ls_refcache_ref(n, ref);
		if (strncmp(ref, name, len) != 0)
			continue;
		if (ref[len] == '\0' || (all && ref[len] == '@'))
			ls_dir_name_write(n, "", 0, 0);
	}
}

void ls_refcache_clear(struct ls_refcache *c)
{
	struct ls_dir_name *names = ls_dir_names(c->dir);
	for (uint32_t i = 0; i < LS_DIR_NAMES; i++)
		if (atomic_load_explicit(&names[i].generation, memory_order_relaxed))
			ls_dir_name_write(&names[i], "", 0, 0);
}
