/*
 * The reference cache (refcache.h): direct-mapped, one entry per hash slot,
 * a newer reference replacing an older one in its slot.
 */
#include "refcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ls_clock.h"
#include "ls_name.h"

#define LS_REFCACHE_SIZE 4096u

struct ls_refcache_entry {
	uint64_t generation;         /* 0: empty */
	int64_t put_ns;              /* when it was resolved (monotonic) */
	char ref[LS_ALIAS_MAX + 16];
};

struct ls_refcache {
	int64_t latest_ttl_ns;       /* 0: "name" holds until dropped */
	struct ls_refcache_entry e[LS_REFCACHE_SIZE];
};

void ls_refcache_set_latest_ttl(struct ls_refcache *c, int64_t ttl_ns)
{
	c->latest_ttl_ns = ttl_ns;
}

int ls_refcache_create(struct ls_refcache **out)
{
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : -ENOMEM;
}

void ls_refcache_destroy(struct ls_refcache *c)
{
	free(c);
}

static uint32_t ls_ref_hash(const char *ref)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (const unsigned char *p = (const unsigned char *)ref; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % LS_REFCACHE_SIZE;
}

uint64_t ls_refcache_get(const struct ls_refcache *c, const char *ref)
{
	const struct ls_refcache_entry *e = &c->e[ls_ref_hash(ref)];
	if (!e->generation || strcmp(e->ref, ref) != 0)
		return 0;
	/* "name" may mean a newer version elsewhere (an origin): it holds for the TTL only. */
	if (c->latest_ttl_ns && !strpbrk(ref, "@:") && ls_mono_ns() - e->put_ns >= c->latest_ttl_ns)
		return 0;
	return e->generation;
}

void ls_refcache_put(struct ls_refcache *c, const char *ref, uint64_t generation)
{
	size_t len = strlen(ref);
	if (len >= sizeof(c->e[0].ref))
		return;
	struct ls_refcache_entry *e = &c->e[ls_ref_hash(ref)];
	e->generation = generation;
	e->put_ns = ls_mono_ns();
	memcpy(e->ref, ref, len + 1);
}

void ls_refcache_drop(struct ls_refcache *c, const char *name, bool all)
{
	size_t len = strlen(name);
	for (uint32_t i = 0; i < LS_REFCACHE_SIZE; i++) {
		struct ls_refcache_entry *e = &c->e[i];
		if (!e->generation || strncmp(e->ref, name, len) != 0)
			continue;
		if (e->ref[len] == '\0' || (all && e->ref[len] == '@'))
			e->generation = 0;
	}
}

void ls_refcache_clear(struct ls_refcache *c)
{
	memset(c->e, 0, sizeof(c->e));
}
