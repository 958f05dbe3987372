/*
 * liblorastore: connection set-up and teardown, errors, and the small
 * requests (prefetch, stats).  Adapters are in adapter.c, listings in list.c,
 * administration in admin.c, socket I/O in conn.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client_internal.h"

/* The public codes are the shared ones, value for value. */
#define LS_SAME(x) _Static_assert((int)LORASTORE_E_##x == (int)LS_E_##x, "LORASTORE_E_" #x)
LS_SAME(TRUNCATED);
LS_SAME(HEADER_BOUNDS);
LS_SAME(HEADER_TOO_LARGE);
LS_SAME(HEADER_JSON);
LS_SAME(HEADER_SCHEMA);
LS_SAME(DTYPE_UNKNOWN);
LS_SAME(DTYPE_UNSUPPORTED);
LS_SAME(SHAPE_SIZE);
LS_SAME(OFFSET_BOUNDS);
LS_SAME(OFFSET_OVERLAP);
LS_SAME(OFFSET_GAP);
LS_SAME(NONFINITE);
LS_SAME(LORA_UNPAIRED);
LS_SAME(LORA_RANK);
LS_SAME(LORA_SHAPE);
LS_SAME(TENSOR_NAME);
LS_SAME(NO_TENSORS);
LS_SAME(CONFIG_MISSING);
LS_SAME(CONFIG_INVALID);
LS_SAME(NAME_INVALID);
LS_SAME(NOT_FOUND);
LS_SAME(CORRUPT);
LS_SAME(BLOB_FORMAT);
LS_SAME(CATALOG);
LS_SAME(CATALOG_SCHEMA);
LS_SAME(BUSY);
LS_SAME(PROTOCOL);
LS_SAME(FRAME_TOO_LARGE);
LS_SAME(VERSION);
LS_SAME(NO_SPACE);
LS_SAME(PIN_LIMIT);
LS_SAME(DELETED);
LS_SAME(CLOSED);
LS_SAME(BACKEND);
LS_SAME(SHAPE);
LS_SAME(DTYPE);
LS_SAME(NOT_BUILT);
LS_SAME(NO_DEVICE);
LS_SAME(DEVICE);
LS_SAME(TIER);
LS_SAME(BLOB_MISSING);
LS_SAME(BLOB_TRUNCATED);
LS_SAME(ADAPTER_LIMIT);
LS_SAME(BASE_CHANGED);
LS_SAME(ALIASED);
LS_SAME(ORIGIN);
/* Both lists end at the same code, so neither has one the other lacks. */
_Static_assert((int)LORASTORE_E_ORIGIN == (int)LS_E_LAST, "a code missing from lorastore.h");
_Static_assert((int)LORASTORE_E_TRUNCATED == (int)LS_E_FIRST, "lorastore.h starts elsewhere");
#undef LS_SAME

/* The public enums are lorastore's own (ls_types.h), and the wire's. */
_Static_assert((int)LORASTORE_DTYPE_F32 == (int)LS_DTYPE_F32 &&
		       (int)LORASTORE_DTYPE_F16 == (int)LS_DTYPE_F16 &&
		       (int)LORASTORE_DTYPE_BF16 == (int)LS_DTYPE_BF16,
	       "lorastore_dtype");
_Static_assert((int)LORASTORE_KIND_A == (int)LS_KIND_A && (int)LORASTORE_KIND_B == (int)LS_KIND_B &&
		       (int)LORASTORE_KIND_EXTRA == (int)LS_KIND_EXTRA &&
		       (int)LORASTORE_KIND_MAGNITUDE == (int)LS_KIND_MAGNITUDE,
	       "lorastore_kind");
_Static_assert((int)LORASTORE_TIER_HOST == (int)LS_TIER_HOST &&
		       (int)LORASTORE_TIER_DEVICE == (int)LS_TIER_DEVICE,
	       "lorastore_tier");
_Static_assert((int)LORASTORE_KIND_A == (int)LORASTORE__TENSOR_KIND__TENSOR_KIND_A, "kind A");
_Static_assert((int)LORASTORE_KIND_B == (int)LORASTORE__TENSOR_KIND__TENSOR_KIND_B, "kind B");
_Static_assert((int)LORASTORE_KIND_EXTRA == (int)LORASTORE__TENSOR_KIND__TENSOR_KIND_EXTRA,
	       "kind extra");
_Static_assert((int)LORASTORE_KIND_MAGNITUDE == (int)LORASTORE__TENSOR_KIND__TENSOR_KIND_MAGNITUDE,
	       "kind magnitude");

LS_PUBLIC const char *lorastore_kind_name(lorastore_kind kind)
{
	return ls_tensor_kind_name((enum ls_tensor_kind)kind);
}

LS_PUBLIC int lorastore_kind_from_name(const char *s, lorastore_kind *out)
{
	enum ls_tensor_kind k;
	if (!out || ls_tensor_kind_from_name(s, &k) != 0)
		return -EINVAL;
	*out = (lorastore_kind)k;
	return 0;
}

LS_PUBLIC const char *lorastore_strerror(int err)
{
	/* ls_strerror knows every LS_E_* code and falls back to strerror(-err). */
	return ls_strerror(err);
}

static int ls_hello(lorastore *c)
{
	Lorastore__Hello hello = LORASTORE__HELLO__INIT;
	hello.protocol_version = LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2;
	hello.client_name = program_invocation_short_name ? program_invocation_short_name : "";
	const char *warm = getenv("LORASTORE_WARM_PATH");
	hello.warm_path = !(warm && strcmp(warm, "0") == 0);
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_HELLO;
	req.hello = &hello;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(c, &req, NULL, 0, LORASTORE__RESPONSE__BODY_HELLO, &resp);
	if (rc) {
		/* No request is possible on a connection that has not shaken hands. */
		if (c->fd >= 0) {
			char why[sizeof(c->errmsg)];
			memcpy(why, c->errmsg, sizeof(why));
			ls_conn_fail(c, rc, "handshake with lorastored: %s", why);
		}
		return rc;
	}
	const Lorastore__HelloReply *h = resp->hello;
	if (!h || h->protocol_version != LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2) {
		unsigned v = h ? (unsigned)h->protocol_version : 0;
		char dv[64];
		snprintf(dv, sizeof(dv), "%s", h && h->daemon_version ? h->daemon_version : "?");
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_fail(c, LS_E_VERSION,
				    "lorastored %s speaks protocol version %u; this liblorastore "
				    "speaks %d: use a client and a daemon of the same release",
				    dv, v, LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2);
	}
	c->instance = h->instance;
	int dir_fd = -1, page_fd = -1;
	if (h->warm_attached) {
		dir_fd = ls_conn_take_fd(c);
		page_fd = ls_conn_take_fd(c);
	}
	uint64_t dir_size = h->directory_size;
	bool attached = h->warm_attached;
	lorastore__response__free_unpacked(resp, NULL);
	if (attached && (dir_fd < 0 || page_fd < 0)) {
		if (dir_fd >= 0)
			close(dir_fd);
		return ls_conn_fail(c, LS_E_PROTOCOL,
				    "hello reply said the warm path came with it, but it did not");
	}
	/* Without it (an older daemon, or a map refused) acquires take requests. */
	if (attached)
		ls_warm_map(c, dir_fd, dir_size, page_fd);
	return 0;
}

int ls_warm_map(lorastore *c, int dir_fd, uint64_t dir_size, int page_fd)
{
	void *d = MAP_FAILED, *p = MAP_FAILED;
	if (dir_size >= sizeof(struct ls_dir_hdr) && dir_size <= (1ull << 30))
		d = mmap(NULL, (size_t)dir_size, PROT_READ, MAP_SHARED, dir_fd, 0);
	p = mmap(NULL, LS_LEASE_PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, page_fd, 0);
	close(dir_fd);
	close(page_fd);
	const struct ls_dir_hdr *dir = d == MAP_FAILED ? NULL : ls_dir_open(d, (size_t)dir_size);
	struct ls_lease_page *page = p == MAP_FAILED ? NULL : p;
	uint16_t *slots = NULL;
	if (page && (page->magic != LS_LEASE_PAGE_MAGIC || page->n_slots != LS_LEASE_SLOTS))
		page = NULL;
	if (dir && page && dir->instance == c->instance)
		slots = malloc(LS_LEASE_SLOTS * sizeof(*slots));
	if (!slots) {
		if (d != MAP_FAILED)
			munmap(d, (size_t)dir_size);
		if (p != MAP_FAILED)
			munmap(p, LS_LEASE_PAGE_BYTES);
		return -1;
	}
	for (uint32_t i = 0; i < LS_LEASE_SLOTS; i++)
		slots[i] = (uint16_t)(LS_LEASE_SLOTS - 1 - i);
	c->dir = dir;
	c->dir_bytes = (size_t)dir_size;
	c->page = page;
	c->free_slots = slots;
	c->n_free = (uint32_t)LS_LEASE_SLOTS;
	return 0;
}

void ls_warm_unmap(lorastore *c)
{
	if (c->dir)
		munmap((void *)c->dir, c->dir_bytes);
	if (c->page)
		munmap(c->page, LS_LEASE_PAGE_BYTES);
	free(c->free_slots);
	c->dir = NULL;
	c->page = NULL;
	c->free_slots = NULL;
	c->n_free = 0;
}

/* The default limit of a connect and its handshake (milliseconds). */
#define LS_CONNECT_TIMEOUT_DEFAULT_MS 10000

/* timeout_ms of lorastore_connect_timeout resolved: > 0 a limit, 0 none. */
static int64_t ls_connect_limit_ms(int timeout_ms)
{
	if (timeout_ms > 0)
		return timeout_ms;
	if (timeout_ms < 0)
		return 0;
	const char *env = getenv("LORASTORE_CONNECT_TIMEOUT_MS");
	if (env && *env) {
		char *end;
		errno = 0;
		long long v = strtoll(env, &end, 10);
		if (!*end && !errno && v >= 0 && v <= INT_MAX)
			return v; /* 0: no limit */
	}
	return LS_CONNECT_TIMEOUT_DEFAULT_MS;
}

LS_PUBLIC int lorastore_connect(const char *socket_path, lorastore **out)
{
	return lorastore_connect_timeout(socket_path, 0, out);
}

LS_PUBLIC int lorastore_connect_timeout(const char *socket_path, int timeout_ms, lorastore **out)
{
	if (!out)
		return -EINVAL;
	*out = NULL;
	lorastore *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = -1;
	c->next_id = 1;
	ls_framer_init(&c->framer, 0);
	*out = c;

	const char *path = socket_path;
	if (!path || !*path)
		path = getenv("LORASTORE_SOCKET");
	if (!path || !*path)
		path = LORASTORE_DEFAULT_SOCKET;
	int64_t limit = ls_connect_limit_ms(timeout_ms);
	c->deadline_ms = limit ? ls_mono_ms() + limit : 0;
	int rc = ls_conn_open(c, path);
	if (rc == 0)
		rc = ls_hello(c);
	/* Later calls wait as long as they need (an acquire may wait on a load). */
	c->deadline_ms = 0;
	if (rc == -ETIMEDOUT) {
		char why[sizeof(c->errmsg)];
		memcpy(why, c->errmsg, sizeof(why));
		ls_conn_fail(c, rc, "%.400s (%lld ms)", why, (long long)limit);
	}
	return rc;
}

LS_PUBLIC void lorastore_close(lorastore *conn)
{
	if (!conn)
		return;
	/* Closing the socket ends every lease; the daemon needs no release. */
	ls_adapters_drop(conn);
	if (conn->fd >= 0)
		close(conn->fd);
	conn->fd = -1;
	ls_slabs_unmap(conn);
	ls_warm_unmap(conn);
	ls_conn_teardown_io(conn);
	free(conn);
}

LS_PUBLIC const char *lorastore_errmsg(const lorastore *conn)
{
	if (!conn)
		return "no connection (out of memory)";
	return conn->errmsg;
}

LS_PUBLIC int lorastore_prefetch(lorastore *conn, const char *const *refs, size_t n)
{
	if (!conn)
		return -EINVAL;
	if (n > 0 && !refs)
		return ls_conn_error(conn, -EINVAL, "prefetch: no refs");
	for (size_t i = 0; i < n; i++)
		if (!refs[i] || !*refs[i])
			return ls_conn_error(conn, LS_E_NAME_INVALID, "prefetch: ref %zu is empty", i);
		else if (ls_ref_check(conn, "prefetch", refs[i]))
			return LS_E_NAME_INVALID;
	/* Nothing to ask for (the daemon refuses an empty prefetch). */
	if (n == 0)
		return ls_conn_check(conn);
	Lorastore__PrefetchRequest p = LORASTORE__PREFETCH_REQUEST__INIT;
	p.n_refs = n;
	p.refs = (char **)refs;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_PREFETCH;
	req.prefetch = &p;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_DONE, &resp);
	if (resp)
		lorastore__response__free_unpacked(resp, NULL);
	return rc;
}

LS_PUBLIC int lorastore_stats_get(lorastore *conn, lorastore_stats *out)
{
	if (!conn || !out)
		return -EINVAL;
	Lorastore__Empty e = LORASTORE__EMPTY__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_STATS;
	req.stats = &e;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_STATS, &resp);
	if (rc)
		return rc;
	const Lorastore__StatsReply *s = resp->stats;
	if (!s) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, LS_E_PROTOCOL, "stats reply without a body");
	}
	memset(out, 0, sizeof(*out));
	size_t max = sizeof(out->tiers) / sizeof(out->tiers[0]);
	for (size_t i = 0; i < s->n_tiers && out->tier_count < max; i++) {
		const Lorastore__TierStats *t = s->tiers[i];
		lorastore_tier_stats *o = &out->tiers[out->tier_count++];
		snprintf(o->name, sizeof(o->name), "%s", ls_tier_name((enum ls_tier_kind)t->tier));
		snprintf(o->device, sizeof(o->device), "%s", t->device ? t->device : "");
		o->ordinal = t->ordinal;
		o->table_bytes = t->table_bytes;
		o->budget = t->budget;
		o->used = t->used;
		o->slab_bytes = t->slab_bytes;
		o->adapters = t->adapters;
	}
	out->clients = s->clients;
	out->leases = s->leases;
	out->warm_leases = s->warm_leases;
	out->warm_acquires = s->warm_acquires;
	out->loads = s->loads;
	out->hits = s->hits;
	out->misses = s->misses;
	out->evictions = s->evictions;
	out->load_errors = s->load_errors;
	out->catalog_versions = s->catalog_versions;
	snprintf(out->event_loop, sizeof(out->event_loop), "%s", s->event_loop ? s->event_loop : "");
	memset(&out->origin, 0, sizeof(out->origin));
	const Lorastore__OriginStats *o = s->origin;
	if (o) {
		snprintf(out->origin.origin, sizeof(out->origin.origin), "%s", o->origin ? o->origin : "");
		out->origin.requests = o->requests;
		out->origin.errors = o->errors;
		out->origin.bytes_in = o->bytes_in;
		out->origin.bytes_out = o->bytes_out;
		out->origin.pulls = o->pulls;
		out->origin.pulls_in_flight = o->pulls_in_flight;
		out->origin.refused = o->refused;
		out->origin.published = o->published;
		out->origin.cache_bytes = o->cache_bytes;
		out->origin.cache_budget = o->cache_budget;
		out->origin.cache_evictions = o->cache_evictions;
	}
	lorastore__response__free_unpacked(resp, NULL);
	return 0;
}
