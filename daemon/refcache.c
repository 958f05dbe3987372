/*
 * The reference cache (refcache.h): direct-mapped, one entry per hash slot,
 * a newer reference replacing an older one in its slot.
 */
#include "refcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ls_name.h"

#define LS_REFCACHE_SIZE 4096u

struct ls_refcache_entry {
	uint64_t generation;         /* 0: empty */
	char ref[LS_ALIAS_MAX + 16];
};

struct ls_refcache {
	struct ls_refcache_entry e[LS_REFCACHE_SIZE];
};

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
	return e->generation && strcmp(e->ref, ref) == 0 ? e->generation : 0;
}

void ls_refcache_put(struct ls_refcache *c, const char *ref, uint64_t generation)
{
	size_t len = strlen(ref);
	if (len >= sizeof(c->e[0].ref))
		return;
	struct ls_refcache_entry *e = &c->e[ls_ref_hash(ref)];
	e->generation = generation;
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
	memset(c, 0, sizeof(*c));
}
