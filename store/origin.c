/* The origin: publish and pull versions through an S3-compatible object store (origin.h). */
#define _GNU_SOURCE
#include "origin.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob.h"
#include "fsutil.h"
#include "ls_clock.h"
#include "ls_name.h"
#include "store.h"
#include "store_internal.h"

/* The origin's version records are small; anything far larger is not one. */
#define LS_ORIGIN_RECORD_MAX (LS_RECORD_MAX + (64u << 10))
/* Races lost in a row before an import gives up (each loss is another node's version). */
#define LS_ORIGIN_PUBLISH_TRIES 32
/* Looks remembered for the TTL; past this many the memory is cleared and begins again. */
#define LS_ORIGIN_LOOKS_MAX 65536

/* One pull in progress, which later requests for the same version wait on. */
struct ls_pull {
	struct ls_pull *next;
	char ref[LS_NAME_MAX + 16];
	bool done;
	int rc;
	struct ls_err err;
	unsigned waiters;
};

/* When a reference was last looked up in the origin (an open-addressing table). */
struct ls_look {
	char *ref;
	int64_t at_ns;
	uint32_t latest;            /* the origin's latest version then (0: none) */
};

struct ls_origin {
	struct ls_s3 *s3;
	char *prefix;               /* "" or "p/" */
	char *label;
	int64_t ttl_ns;
	pthread_mutex_t lock;       /* pulls, looks, stats */
	pthread_cond_t pulled;
	struct ls_pull *pulls;
	struct ls_look *looks;
	size_t n_looks, cap_looks;
	/* When each blob was last used (digest -> monotonic ns), open addressing. */
	struct ls_use {
		uint8_t digest[LS_DIGEST_LEN];
		int64_t at_ns;
		bool used;
	} *uses;
	size_t n_uses, cap_uses;
	uint64_t cache_bytes;       /* pulled blobs on disk: as of the last trim, plus pulls */
	struct ls_origin_stats st;
};

int ls_origin_parse_url(const char *url, char *bucket, size_t bucket_len, char *prefix,
			size_t prefix_len, struct ls_err *err)
{
	if (!url || strncmp(url, "s3://", 5) != 0 || !url[5] || url[5] == '/')
		return ls_err_set(err, -EINVAL, "origin '%s': give s3://BUCKET or s3://BUCKET/PREFIX",
				  url ? url : "");
	const char *b = url + 5, *slash = strchr(b, '/');
	size_t blen = slash ? (size_t)(slash - b) : strlen(b);
	const char *p = slash ? slash + 1 : "";
	size_t plen = strlen(p);
	while (plen > 0 && p[plen - 1] == '/')
		plen--;
	if (blen >= bucket_len || plen >= prefix_len)
		return ls_err_set(err, -EINVAL, "origin '%s': bucket or prefix too long", url);
	memcpy(bucket, b, blen);
	bucket[blen] = '\0';
	memcpy(prefix, p, plen);
	prefix[plen] = '\0';
	return 0;
}

int ls_origin_open(const struct ls_origin_config *cfg, struct ls_origin **out,
		   struct ls_err *err)
{
	*out = NULL;
	struct ls_origin *o = calloc(1, sizeof(*o));
	if (!o)
		return ls_err_set(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&o->lock, NULL);
	pthread_cond_init(&o->pulled, NULL);
	o->ttl_ns = (cfg->ttl_ms > 0 ? cfg->ttl_ms : 5000) * 1000000;
	const char *p = cfg->prefix ? cfg->prefix : "";
	if (asprintf(&o->prefix, "%s%s", p, *p ? "/" : "") < 0)
		o->prefix = NULL;
	if (!o->prefix || asprintf(&o->label, "s3://%s%s%s at %s", cfg->s3.bucket ? cfg->s3.bucket : "",
				   *p ? "/" : "", p, cfg->s3.endpoint ? cfg->s3.endpoint : "") < 0) {
		o->label = NULL;
		ls_origin_close(o);
		return ls_err_set(err, -ENOMEM, "out of memory");
	}
	/* Every message of the client names the origin as this file does. */
	struct ls_s3_config s3cfg = cfg->s3;
	s3cfg.label = o->label;
	int rc = ls_s3_new(&s3cfg, &o->s3, err);
	if (rc) {
		ls_origin_close(o);
		return rc;
	}
	*out = o;
	return 0;
}

void ls_origin_close(struct ls_origin *o)
{
	if (!o)
		return;
	ls_s3_free(o->s3);
	for (size_t i = 0; i < o->cap_looks; i++)
		free(o->looks[i].ref);
	free(o->looks);
	free(o->uses);
	pthread_mutex_destroy(&o->lock);
	pthread_cond_destroy(&o->pulled);
	free(o->prefix);
	free(o->label);
	free(o);
}

const char *ls_origin_label(const struct ls_origin *o)
{
	return o->label;
}

void ls_origin_stats(struct ls_origin *o, struct ls_origin_stats *out)
{
	pthread_mutex_lock(&o->lock);
	*out = o->st;
	out->cache_bytes = o->cache_bytes;
	pthread_mutex_unlock(&o->lock);
	ls_s3_counters(o->s3, &out->s3);
}

void ls_store_set_origin(struct ls_store *s, struct ls_origin *o)
{
	ls_origin_close(s->origin);
	s->origin = o;
}

struct ls_origin *ls_store_origin(struct ls_store *s)
{
	return s->origin;
}

static int ls_no_key(void *ud, const char *key, uint64_t size)
{
	(void)ud;
	(void)key;
	(void)size;
	return 1; /* one key is enough */
}

int ls_origin_check(struct ls_origin *o, struct ls_err *err)
{
	char prefix[PATH_MAX];
	snprintf(prefix, sizeof(prefix), "%sversions/", o->prefix);
	int rc = ls_s3_list(o->s3, prefix, NULL, ls_no_key, NULL, err);
	return rc == 1 ? 0 : rc;
}

/* --- keys ------------------------------------------------------------------ */

static void ls_blob_key(const struct ls_origin *o, const uint8_t *digest, char *buf, size_t len)
{
	char hex[LS_DIGEST_HEX];
	ls_digest_hex(digest, hex);
	snprintf(buf, len, "%sblobs/%s.blob", o->prefix, hex);
}

static void ls_version_key(const struct ls_origin *o, const char *name, uint32_t version,
			   char *buf, size_t len)
{
	snprintf(buf, len, "%sversions/%s@%010" PRIu32, o->prefix, name, version);
}

/* --- the latest version of a name ---------------------------------------------- */

struct ls_latest_walk {
	size_t prefix_len;
	uint32_t latest;
};

static int ls_latest_key(void *ud, const char *key, uint64_t size)
{
	(void)size;
	struct ls_latest_walk *w = ud;
	const char *v = key + w->prefix_len;
	char *end;
	errno = 0;
	unsigned long n = strtoul(v, &end, 10);
	/* Keys that are not ten digits are not ours: skipped, never trusted. */
	if (strlen(v) == 10 && *end == '\0' && errno == 0 && n > 0 && n < UINT32_MAX &&
	    n > w->latest)
		w->latest = (uint32_t)n;
	return 0;
}

/* The origin's latest version of name (0 when it has none). */
static int ls_origin_latest(struct ls_origin *o, const char *name, uint32_t *latest,
			    struct ls_err *err)
{
	char prefix[PATH_MAX];
	snprintf(prefix, sizeof(prefix), "%sversions/%s@", o->prefix, name);
	struct ls_latest_walk w = {strlen(prefix), 0};
	int rc = ls_s3_list(o->s3, prefix, NULL, ls_latest_key, &w, err);
	*latest = w.latest;
	return rc;
}

/* Read and check the origin's record of name@version. */
static int ls_origin_record(struct ls_origin *o, const char *name, uint32_t version,
			    Lorastore__OriginVersion **out, struct ls_err *err)
{
	char key[PATH_MAX];
	ls_version_key(o, name, version, key, sizeof(key));
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = ls_s3_get(o->s3, key, LS_ORIGIN_RECORD_MAX, &buf, &len, err);
	if (rc)
		return rc;
	Lorastore__OriginVersion *ov = lorastore__origin_version__unpack(NULL, len, buf);
	free(buf);
	const Lorastore__VersionRecord *r = ov ? ov->record : NULL;
	if (!r || ov->format != 1 || !r->name || strcmp(r->name, name) != 0 ||
	    r->version != version || r->digest.len != LS_DIGEST_LEN) {
		if (ov)
			lorastore__origin_version__free_unpacked(ov, NULL);
		pthread_mutex_lock(&o->lock);
		o->st.refused++;
		pthread_mutex_unlock(&o->lock);
		return ls_err_set(err, LS_E_CORRUPT, "origin %s: %s is not a record of %s@%u",
				  o->label, key, name, version);
	}
	*out = ov;
	return 0;
}

/* --- pull ------------------------------------------------------------------------ */

/* The manifest's tensors lie inside the data region (what a load will trust). */
static int ls_manifest_in_bounds(const Lorastore__BlobManifest *m,
				 const struct ls_blob_header *hdr)
{
	if (m->data_length > hdr->data_length)
		return -1;
	for (size_t i = 0; i < m->n_tensors; i++) {
		const Lorastore__BlobTensor *t = m->tensors[i];
		if (t->offset > m->data_length || t->length > m->data_length - t->offset)
			return -1;
	}
	return 0;
}

/* A download going to a temporary file and through the blob's checks at once. */
struct ls_pull_sink {
	int fd;
	struct ls_blob_check *check;
	char what[PATH_MAX + 128];
	struct ls_err *err;
	uint64_t pos;               /* bytes written */
	bool refused;               /* the check stopped it: not the network's doing */
};

static int ls_pull_write(void *ud, const void *data, size_t len)
{
	struct ls_pull_sink *k = ud;
	int rc = ls_blob_check_feed(k->check, data, len, k->what, k->err);
	if (rc) {
		k->refused = true;
		return rc;
	}
	rc = ls_write_all(k->fd, data, len, k->pos);
	if (rc)
		return ls_err_set(k->err, rc, "%s: writing: %s", k->what, strerror(-rc));
	k->pos += len;
	return 0;
}

/*
 * Download the blob of digest into blobs/ unless an intact one is there:
 * into tmp/, checked, then renamed.  Holds the store's gc lock shared.
 */
static int ls_pull_blob(struct ls_store *s, const char *ref, const uint8_t *digest,
			struct ls_err *err)
{
	struct ls_origin *o = s->origin;
	char path[PATH_MAX];
	ls_store_blob_path(s, digest, path, sizeof(path));
	int fd;
	struct ls_blob_header hdr;
	struct ls_err local;
	if (ls_blob_open(path, digest, &fd, &hdr, &local) == 0) {
		close(fd);
		return 0;
	}
	char key[PATH_MAX], tmp[64];
	ls_blob_key(o, digest, key, sizeof(key));
	fd = ls_tmpfile_create(s->tmp_fd, "pull", tmp, sizeof(tmp));
	if (fd < 0)
		return ls_err_set(err, fd, "%s/tmp: %s", s->dir, strerror(-fd));
	/* Written and checked as the bytes arrive: no second read of the blob. */
	struct ls_pull_sink sink = {.fd = fd, .err = err};
	snprintf(sink.what, sizeof(sink.what), "origin %s: %s of %s", o->label, key, ref);
	int rc = ls_blob_check_new(digest, &sink.check);
	if (rc)
		rc = ls_err_set(err, rc, "out of memory");
	uint64_t got = 0;
	if (rc == 0)
		rc = ls_s3_get_to(o->s3, key, ls_pull_write, &sink, &got, err);
	pthread_mutex_lock(&o->lock);
	o->st.pull_bytes += got;
	pthread_mutex_unlock(&o->lock);
	if (rc == LS_E_NOT_FOUND)
		rc = ls_err_set(err, LS_E_ORIGIN, "origin %s: %s names blob %s, which it lacks",
				o->label, ref, key);
	Lorastore__BlobManifest *m = NULL;
	bool refused = sink.refused;
	if (rc == 0) {
		rc = ls_blob_check_end(sink.check, sink.what, &hdr, err);
		refused = rc != 0;
	}
	if (rc == 0 && fsync(fd) != 0)
		rc = ls_err_set(err, -errno, "%s/tmp/%s: %s", s->dir, tmp, strerror(errno));
	close(fd);
	/* The manifest, decoded, and its tensors inside the data: what a load will trust. */
	fd = rc ? -1 : openat(s->tmp_fd, tmp, O_RDONLY | O_CLOEXEC);
	if (rc == 0 && fd < 0)
		rc = ls_err_set(err, -errno, "%s/tmp/%s: %s", s->dir, tmp, strerror(errno));
	if (rc == 0) {
		rc = ls_blob_read_manifest(fd, sink.what, &hdr, &m, err);
		if (rc == 0 && ls_manifest_in_bounds(m, &hdr) != 0)
			rc = ls_err_set(err, LS_E_CORRUPT, "%s: a tensor lies outside its data",
					sink.what);
		refused = rc != 0;
	}
	if (refused && err->code == rc) {
		char msg[LS_ERR_MSG_MAX];
		snprintf(msg, sizeof(msg), "%s", err->msg);
		ls_err_set(err, rc, "%s; refused, nothing kept", msg);
	}
	ls_blob_check_free(sink.check);
	if (m)
		lorastore__blob_manifest__free_unpacked(m, NULL);
	if (fd >= 0)
		close(fd);
	char hex[LS_DIGEST_HEX], name[LS_DIGEST_HEX + 8];
	ls_digest_hex(digest, hex);
	snprintf(name, sizeof(name), "%s.blob", hex);
	if (rc == 0 && renameat(s->tmp_fd, tmp, s->blobs_fd, name) != 0)
		rc = ls_err_set(err, -errno, "%s: %s", path, strerror(errno));
	if (rc == 0 && fsync(s->blobs_fd) != 0)
		rc = ls_err_set(err, -errno, "%s/blobs: %s", s->dir, strerror(errno));
	if (rc) {
		unlinkat(s->tmp_fd, tmp, 0);
		if (refused) {
			pthread_mutex_lock(&o->lock);
			o->st.refused++;
			pthread_mutex_unlock(&o->lock);
		}
	}
	return rc;
}

/* Commit name@version (from its origin record) into the catalog, its blob in blobs/. */
static int ls_pull_commit(struct ls_store *s, const Lorastore__VersionRecord *orec,
			  struct ls_err *err)
{
	char path[PATH_MAX];
	ls_store_blob_path(s, orec->digest.data, path, sizeof(path));
	int fd;
	struct ls_blob_header hdr;
	int rc = ls_blob_open(path, orec->digest.data, &fd, &hdr, err);
	if (rc)
		return rc;
	Lorastore__BlobManifest *m = NULL;
	rc = ls_blob_read_manifest(fd, path, &hdr, &m, err);
	close(fd);
	if (rc)
		return rc;
	/* The tensor table is the blob's own; the origin's record gives the name and history. */
	Lorastore__VersionRecord rec;
	if (ls_record_from_manifest(&rec, m, &hdr) != 0) {
		lorastore__blob_manifest__free_unpacked(m, NULL);
		return ls_err_set(err, -ENOMEM, "out of memory");
	}
	rec.name = orec->name;
	rec.created_unix_ns = orec->created_unix_ns;
	rec.source = orec->source;
	rec.pulled = true;
	struct ls_import_check c = {s, false};
	pthread_mutex_lock(&s->digest_lock);
	rc = ls_catalog_add_version(s->cat, &rec, orec->version, ls_store_write_ref, &c, err);
	pthread_mutex_unlock(&s->digest_lock);
	if (rc == 0) {
		struct ls_origin *o = s->origin;
		pthread_mutex_lock(&o->lock);
		o->cache_bytes += rec.blob_bytes;
		pthread_mutex_unlock(&o->lock);
		ls_origin_touch(o, orec->digest.data);
	}
	ls_record_from_manifest_free(&rec);
	lorastore__blob_manifest__free_unpacked(m, NULL);
	return rc == -EEXIST ? 0 : rc; /* committed meanwhile by an import of this node */
}

/* Pull name@version: the record, the blob, the commit. */
static int ls_pull(struct ls_store *s, const char *name, uint32_t version, struct ls_err *err)
{
	struct ls_origin *o = s->origin;
	Lorastore__OriginVersion *ov = NULL;
	int rc = ls_origin_record(o, name, version, &ov, err);
	if (rc == LS_E_NOT_FOUND)
		return ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s@%u here or in origin %s", name,
				  version, o->label);
	if (rc)
		return rc;
	char ref[LS_NAME_MAX + 16];
	snprintf(ref, sizeof(ref), "%s@%u", name, version);
	pthread_rwlock_rdlock(&s->gc_lock);
	rc = ls_pull_blob(s, ref, ov->record->digest.data, err);
	if (rc == 0)
		rc = ls_pull_commit(s, ov->record, err);
	pthread_rwlock_unlock(&s->gc_lock);
	lorastore__origin_version__free_unpacked(ov, NULL);
	if (rc == 0) {
		pthread_mutex_lock(&o->lock);
		o->st.pulls++;
		pthread_mutex_unlock(&o->lock);
	}
	return rc;
}

/* The slot of digest in the table of uses (a free one when absent); o->lock held. */
static struct ls_use *ls_use_slot(struct ls_origin *o, const uint8_t *digest)
{
	size_t h;
	memcpy(&h, digest, sizeof(h)); /* a SHA-256: its first bytes are as good as a hash */
	size_t j = h & (o->cap_uses - 1);
	while (o->uses[j].used && memcmp(o->uses[j].digest, digest, LS_DIGEST_LEN) != 0)
		j = (j + 1) & (o->cap_uses - 1);
	return &o->uses[j];
}

void ls_origin_touch(struct ls_origin *o, const uint8_t *digest)
{
	int64_t now = ls_mono_ns();
	pthread_mutex_lock(&o->lock);
	if (o->n_uses * 2 >= o->cap_uses) {
		size_t cap = o->cap_uses ? o->cap_uses * 2 : 256;
		struct ls_use *old = o->uses, *nu = calloc(cap, sizeof(*nu));
		if (!nu) {
			pthread_mutex_unlock(&o->lock);
			return; /* the blob's file time stands in for it */
		}
		size_t old_cap = o->cap_uses;
		o->uses = nu;
		o->cap_uses = cap;
		for (size_t i = 0; i < old_cap; i++)
			if (old[i].used)
				*ls_use_slot(o, old[i].digest) = old[i];
		free(old);
	}
	struct ls_use *u = ls_use_slot(o, digest);
	if (!u->used) {
		memcpy(u->digest, digest, LS_DIGEST_LEN);
		u->used = true;
		o->n_uses++;
	}
	u->at_ns = now;
	pthread_mutex_unlock(&o->lock);
}

uint64_t ls_origin_cache_bytes(struct ls_origin *o)
{
	pthread_mutex_lock(&o->lock);
	uint64_t v = o->cache_bytes;
	pthread_mutex_unlock(&o->lock);
	return v;
}

/* A pulled version, as a trim sees it. */
struct ls_pulled {
	uint8_t digest[LS_DIGEST_LEN];
	uint64_t generation, bytes;
	uint32_t version;
	char name[LS_NAME_MAX + 1];
};

struct ls_trim_walk {
	struct ls_pulled *v;
	size_t n, cap;
	uint8_t (*mine)[LS_DIGEST_LEN]; /* digests of versions imported here */
	size_t n_mine, cap_mine;
	bool oom;
};

static int ls_trim_collect(void *ud, const Lorastore__VersionRecord *rec)
{
	struct ls_trim_walk *w = ud;
	if (rec->digest.len != LS_DIGEST_LEN)
		return 0;
	if (!rec->pulled) {
		if (w->n_mine == w->cap_mine) {
			size_t cap = w->cap_mine ? w->cap_mine * 2 : 64;
			void *m = realloc(w->mine, cap * LS_DIGEST_LEN);
			if (!m) {
				w->oom = true;
				return 1;
			}
			w->mine = m;
			w->cap_mine = cap;
		}
		memcpy(w->mine[w->n_mine++], rec->digest.data, LS_DIGEST_LEN);
		return 0;
	}
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 64;
		struct ls_pulled *v = realloc(w->v, cap * sizeof(*v));
		if (!v) {
			w->oom = true;
			return 1;
		}
		w->v = v;
		w->cap = cap;
	}
	struct ls_pulled *p = &w->v[w->n++];
	memcpy(p->digest, rec->digest.data, LS_DIGEST_LEN);
	p->generation = rec->generation;
	p->bytes = rec->blob_bytes;
	p->version = rec->version;
	snprintf(p->name, sizeof(p->name), "%s", rec->name);
	return 0;
}

static int ls_pulled_by_digest(const void *a, const void *b)
{
	return memcmp(((const struct ls_pulled *)a)->digest, ((const struct ls_pulled *)b)->digest,
		      LS_DIGEST_LEN);
}

static int ls_digest_cmp(const void *a, const void *b)
{
	return memcmp(a, b, LS_DIGEST_LEN);
}

static int ls_gen_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* A blob of pulled versions: v[first, first + count) of the walk. */
struct ls_blob_group {
	size_t first, count;
	uint64_t bytes;
	int64_t used_ns;            /* last use (monotonic), or the file's time mapped onto it */
	bool kept;
};

static int ls_group_by_use(const void *a, const void *b)
{
	const struct ls_blob_group *x = a, *y = b;
	return x->used_ns < y->used_ns ? -1 : x->used_ns > y->used_ns;
}

int ls_store_trim_pulled(struct ls_store *s, uint64_t budget, const uint64_t *keep,
			 size_t n_keep, struct ls_trim_result *out, struct ls_err *err)
{
	memset(out, 0, sizeof(*out));
	struct ls_origin *o = s->origin;
	if (!o)
		return 0;
	int64_t started = ls_mono_ns();
	struct ls_trim_walk w = {0};
	pthread_rwlock_rdlock(&s->gc_lock);
	int rc = ls_catalog_walk(s->cat, ls_trim_collect, &w, err);
	pthread_rwlock_unlock(&s->gc_lock);
	struct ls_blob_group *g = NULL;
	size_t ng = 0;
	if (rc == 0 && w.oom)
		rc = ls_err_set(err, -ENOMEM, "out of memory");
	if (rc == 0 && !(g = calloc(w.n ? w.n : 1, sizeof(*g))))
		rc = ls_err_set(err, -ENOMEM, "out of memory");
	if (rc) {
		free(w.v);
		free(w.mine);
		return rc;
	}
	if (w.n)
		qsort(w.v, w.n, sizeof(*w.v), ls_pulled_by_digest);
	if (w.n_mine)
		qsort(w.mine, w.n_mine, LS_DIGEST_LEN, ls_digest_cmp);
	/* File times are wall clock; uses are monotonic: map the former onto the latter. */
	int64_t mono_now = ls_mono_ns(), wall_now = ls_unix_ns();
	uint64_t total = 0;
	for (size_t i = 0; i < w.n;) {
		struct ls_blob_group *b = &g[ng++];
		b->first = i;
		while (i < w.n && memcmp(w.v[i].digest, w.v[b->first].digest, LS_DIGEST_LEN) == 0) {
			if (n_keep && bsearch(&w.v[i].generation, keep, n_keep, sizeof(*keep),
					      ls_gen_cmp))
				b->kept = true;
			i++;
		}
		b->count = i - b->first;
		const uint8_t *d = w.v[b->first].digest;
		if (w.n_mine && bsearch(d, w.mine, w.n_mine, LS_DIGEST_LEN, ls_digest_cmp)) {
			b->kept = true; /* a version imported here uses it: not the cache's to free */
			continue;
		}
		b->bytes = w.v[b->first].bytes;
		total += b->bytes;
		char path[PATH_MAX];
		ls_store_blob_path(s, d, path, sizeof(path));
		struct stat st;
		b->used_ns = stat(path, &st) == 0
				     ? mono_now - (wall_now - ((int64_t)st.st_mtim.tv_sec * 1000000000 +
							       st.st_mtim.tv_nsec))
				     : INT64_MIN / 2;
		pthread_mutex_lock(&o->lock);
		if (o->cap_uses) {
			struct ls_use *u = ls_use_slot(o, d);
			if (u->used && u->at_ns > b->used_ns)
				b->used_ns = u->at_ns;
		}
		pthread_mutex_unlock(&o->lock);
	}
	if (ng)
		qsort(g, ng, sizeof(*g), ls_group_by_use);
	for (size_t k = 0; k < ng && total > budget; k++) {
		struct ls_blob_group *b = &g[k];
		if (b->kept || b->bytes == 0)
			continue;
		/* Looked up or loaded since this trim began: in use after all. */
		bool used = false;
		pthread_mutex_lock(&o->lock);
		if (o->cap_uses) {
			struct ls_use *u = ls_use_slot(o, w.v[b->first].digest);
			used = u->used && u->at_ns >= started;
		}
		pthread_mutex_unlock(&o->lock);
		if (used)
			continue;
		/* A version an alias points at stays, and with it its blob. */
		bool aliased = false;
		for (size_t i = b->first; i < b->first + b->count && !aliased; i++) {
			char **al = NULL;
			size_t na = 0;
			struct ls_err e;
			if (ls_store_aliases_of(s, w.v[i].name, w.v[i].version, &al, &na, &e) != 0)
				aliased = true;
			for (size_t j = 0; j < na; j++)
				free(al[j]);
			free(al);
			aliased |= na > 0;
		}
		if (aliased)
			continue;
		struct ls_trimmed *t = realloc(out->versions, (out->n + b->count) * sizeof(*t));
		if (!t) {
			rc = ls_err_set(err, -ENOMEM, "out of memory");
			break;
		}
		out->versions = t;
		uint64_t freed = 0;
		for (size_t i = b->first; i < b->first + b->count; i++) {
			struct ls_deleted_gens d;
			struct ls_err e;
			if (ls_store_delete_here(s, w.v[i].name, w.v[i].version, &d, &e) != 0)
				continue;
			free(d.gens);
			freed += d.freed_bytes;
			struct ls_trimmed *x = &out->versions[out->n++];
			x->generation = w.v[i].generation;
			x->version = w.v[i].version;
			snprintf(x->name, sizeof(x->name), "%s", w.v[i].name);
		}
		out->freed_bytes += freed;
		total -= b->bytes;
	}
	out->cache_bytes = total;
	pthread_mutex_lock(&o->lock);
	o->cache_bytes = total;
	pthread_mutex_unlock(&o->lock);
	free(g);
	free(w.v);
	free(w.mine);
	return rc;
}

/* Pull name@version once however many ask at the same time. */
static int ls_pull_shared(struct ls_store *s, const char *name, uint32_t version,
			  struct ls_err *err)
{
	struct ls_origin *o = s->origin;
	char ref[LS_NAME_MAX + 16];
	snprintf(ref, sizeof(ref), "%s@%u", name, version);
	pthread_mutex_lock(&o->lock);
	struct ls_pull *p = o->pulls;
	while (p && strcmp(p->ref, ref) != 0)
		p = p->next;
	if (p) {
		p->waiters++;
		while (!p->done)
			pthread_cond_wait(&o->pulled, &o->lock);
		int rc = p->rc;
		if (rc)
			*err = p->err;
		if (--p->waiters == 0)
			free(p);
		pthread_mutex_unlock(&o->lock);
		return rc;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		pthread_mutex_unlock(&o->lock);
		return ls_err_set(err, -ENOMEM, "out of memory");
	}
	snprintf(p->ref, sizeof(p->ref), "%s", ref);
	p->waiters = 1;
	p->next = o->pulls;
	o->pulls = p;
	o->st.pulls_in_flight++;
	pthread_mutex_unlock(&o->lock);

	int rc = ls_pull(s, name, version, err);

	pthread_mutex_lock(&o->lock);
	o->st.pulls_in_flight--;
	for (struct ls_pull **pp = &o->pulls; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	p->done = true;
	p->rc = rc;
	if (rc)
		p->err = *err;
	if (--p->waiters == 0)
		free(p);
	else
		pthread_cond_broadcast(&o->pulled);
	pthread_mutex_unlock(&o->lock);
	return rc;
}

/* --- looks (the TTL of "NAME") ------------------------------------------------------ */

static size_t ls_look_hash(const char *s)
{
	size_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

/* The slot of ref in the table of looks (an empty one when absent); o->lock held, a table there. */
static struct ls_look *ls_look_slot(struct ls_origin *o, const char *ref)
{
	size_t j = ls_look_hash(ref) & (o->cap_looks - 1);
	while (o->looks[j].ref && strcmp(o->looks[j].ref, ref) != 0)
		j = (j + 1) & (o->cap_looks - 1);
	return &o->looks[j];
}

/*
 * Whether ref was looked up within the TTL (then *latest is what the origin
 * said); if not, it is taken as looked up now (ls_look_set says the answer).
 */
static bool ls_look_fresh(struct ls_origin *o, const char *ref, uint32_t *latest)
{
	int64_t now = ls_mono_ns();
	pthread_mutex_lock(&o->lock);
	if (o->n_looks * 2 >= o->cap_looks) {
		size_t cap = o->cap_looks ? o->cap_looks * 2 : 256;
		if (o->n_looks >= LS_ORIGIN_LOOKS_MAX || !o->cap_looks) {
			for (size_t i = 0; i < o->cap_looks; i++)
				free(o->looks[i].ref);
			free(o->looks);
			o->looks = NULL;
			o->n_looks = o->cap_looks = 0;
			cap = 256;
		}
		struct ls_look *old = o->looks;
		size_t old_cap = o->cap_looks;
		struct ls_look *nl = calloc(cap, sizeof(*nl));
		if (!nl) {
			pthread_mutex_unlock(&o->lock);
			return false; /* no memory to remember: look again */
		}
		for (size_t i = 0; i < old_cap; i++) {
			if (!old[i].ref)
				continue;
			size_t j = ls_look_hash(old[i].ref) & (cap - 1);
			while (nl[j].ref)
				j = (j + 1) & (cap - 1);
			nl[j] = old[i];
		}
		free(old);
		o->looks = nl;
		o->cap_looks = cap;
	}
	struct ls_look *l = ls_look_slot(o, ref);
	bool fresh = false;
	if (l->ref) {
		fresh = now - l->at_ns < o->ttl_ns;
		*latest = l->latest;
		if (!fresh)
			l->at_ns = now;
	} else if ((l->ref = strdup(ref))) {
		l->at_ns = now;
		l->latest = 0;
		o->n_looks++;
	}
	pthread_mutex_unlock(&o->lock);
	return fresh;
}

/* What the origin said of ref's latest version, for the looks within the TTL. */
static void ls_look_set(struct ls_origin *o, const char *ref, uint32_t latest)
{
	pthread_mutex_lock(&o->lock);
	struct ls_look *l = o->cap_looks ? ls_look_slot(o, ref) : NULL;
	if (l && l->ref)
		l->latest = latest;
	pthread_mutex_unlock(&o->lock);
}

/* Forget the look at ref (a failed one: the next request looks again). */
static void ls_look_forget(struct ls_origin *o, const char *ref)
{
	pthread_mutex_lock(&o->lock);
	struct ls_look *l = o->cap_looks ? ls_look_slot(o, ref) : NULL;
	if (l && l->ref)
		l->at_ns = INT64_MIN / 2;
	pthread_mutex_unlock(&o->lock);
}

/* --- what the store calls ---------------------------------------------------------- */

int ls_origin_sync(struct ls_store *s, const char *name, uint32_t version, uint32_t local_latest,
		   struct ls_err *err)
{
	struct ls_origin *o = s->origin;
	if (version)
		return ls_pull_shared(s, name, version, err);
	uint32_t latest = 0;
	if (ls_look_fresh(o, name, &latest)) {
		/* What the origin said within the TTL; a version removed here since is pulled again. */
		if (latest > local_latest)
			return ls_pull_shared(s, name, latest, err);
		return local_latest ? 0
				    : ls_err_set(err, LS_E_NOT_FOUND,
						 "no adapter %s here or in origin %s", name, o->label);
	}
	int rc = ls_origin_latest(o, name, &latest, err);
	if (rc == 0)
		ls_look_set(o, name, latest);
	if (rc == 0 && latest == 0 && !local_latest)
		rc = ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s here or in origin %s", name,
				o->label);
	else if (rc == 0 && latest > local_latest)
		rc = ls_pull_shared(s, name, latest, err);
	if (rc && rc != LS_E_NOT_FOUND)
		ls_look_forget(o, name);
	return rc;
}

struct ls_delete_walk {
	struct ls_origin *o;
	uint32_t n;
	struct ls_err *err;
};

static int ls_delete_key(void *ud, const char *key, uint64_t size)
{
	(void)size;
	struct ls_delete_walk *w = ud;
	int rc = ls_s3_delete(w->o->s3, key, w->err);
	if (rc == 0)
		w->n++;
	return rc;
}

int ls_origin_delete(struct ls_store *s, const char *name, uint32_t version, uint32_t *n,
		     struct ls_err *err)
{
	struct ls_origin *o = s->origin;
	struct ls_delete_walk w = {o, 0, err};
	char key[PATH_MAX];
	int rc;
	if (version) {
		ls_version_key(o, name, version, key, sizeof(key));
		rc = ls_s3_head(o->s3, key, NULL, err);
		if (rc == 0)
			rc = ls_delete_key(&w, key, 0);
		else if (rc == LS_E_NOT_FOUND)
			rc = 0;
	} else {
		snprintf(key, sizeof(key), "%sversions/%s@", o->prefix, name);
		rc = ls_s3_list(o->s3, key, NULL, ls_delete_key, &w, err);
	}
	*n = w.n;
	/* "NAME" must not be answered from a look taken before the delete. */
	ls_look_forget(o, name);
	return rc;
}

/* Upload the blob of rec unless the origin has it; *sent says whether it did. */
static int ls_origin_upload_blob(struct ls_store *s, const Lorastore__VersionRecord *rec,
				 struct ls_err *err)
{
	struct ls_origin *o = s->origin;
	char key[PATH_MAX];
	ls_blob_key(o, rec->digest.data, key, sizeof(key));
	int rc = ls_s3_head(o->s3, key, NULL, err);
	if (rc != LS_E_NOT_FOUND)
		return rc;
	char path[PATH_MAX];
	ls_store_blob_path(s, rec->digest.data, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ls_err_set(err, errno == ENOENT ? LS_E_BLOB_MISSING : -errno, "%s: %s", path,
				  strerror(errno));
	rc = ls_s3_put_file(o->s3, key, fd, rec->blob_bytes, err);
	close(fd);
	if (rc == 0) {
		pthread_mutex_lock(&o->lock);
		o->st.uploaded_bytes += rec->blob_bytes;
		pthread_mutex_unlock(&o->lock);
	}
	return rc;
}

/* Create the origin's record of rec under version (If-None-Match: *): 0, -EEXIST, errors. */
static int ls_origin_put_record(struct ls_origin *o, Lorastore__VersionRecord *rec,
				uint32_t version, struct ls_err *err)
{
	Lorastore__VersionRecord copy = *rec;
	copy.schema = LS_CATALOG_SCHEMA;
	copy.version = version;
	copy.generation = 0; /* each node's own */
	Lorastore__OriginVersion out = LORASTORE__ORIGIN_VERSION__INIT;
	out.format = 1;
	out.record = &copy;
	size_t len = lorastore__origin_version__get_packed_size(&out);
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		return ls_err_set(err, -ENOMEM, "out of memory");
	lorastore__origin_version__pack(&out, buf);
	char key[PATH_MAX];
	ls_version_key(o, rec->name, version, key, sizeof(key));
	int rc = ls_s3_put(o->s3, key, buf, len, true, err);
	free(buf);
	if (rc == 0) {
		pthread_mutex_lock(&o->lock);
		o->st.published++;
		pthread_mutex_unlock(&o->lock);
	}
	return rc;
}

struct ls_push_walk {
	struct ls_store *s;
	const char *name;
	uint32_t version;           /* 0: every version */
	uint32_t pushed, present, seen;
	int rc;
	struct ls_err *err;
};

/* One local version into the origin under its own number. */
static int ls_push_one(void *ud, const Lorastore__VersionRecord *rec)
{
	struct ls_push_walk *w = ud;
	if (strcmp(rec->name, w->name) != 0 || (w->version && rec->version != w->version))
		return 0;
	w->seen++;
	struct ls_origin *o = w->s->origin;
	Lorastore__OriginVersion *ov = NULL;
	int rc = ls_origin_record(o, rec->name, rec->version, &ov, w->err);
	if (rc == 0) {
		bool same = memcmp(ov->record->digest.data, rec->digest.data, LS_DIGEST_LEN) == 0;
		lorastore__origin_version__free_unpacked(ov, NULL);
		if (same) {
			w->present++;
			return 0;
		}
		rc = -EEXIST;
	} else if (rc == LS_E_NOT_FOUND) {
		ls_err_clear(w->err);
		rc = ls_origin_upload_blob(w->s, rec, w->err);
		if (rc == 0)
			rc = ls_origin_put_record(o, (Lorastore__VersionRecord *)rec, rec->version,
						  w->err);
		if (rc == 0)
			w->pushed++;
	}
	if (rc == -EEXIST)
		ls_err_set(w->err, -EEXIST,
			   "origin %s has another %s@%u (another node took that number); import "
			   "its files again to give it a number of the fleet's",
			   o->label, rec->name, rec->version);
	w->rc = rc;
	return rc;
}

int ls_store_push(struct ls_store *s, const char *ref, uint32_t *pushed, uint32_t *present,
		  struct ls_err *err)
{
	*pushed = *present = 0;
	if (!s->origin)
		return ls_err_set(err, LS_E_ORIGIN, "this daemon has no origin (lorastored --origin)");
	char name[LS_NAME_MAX + 1];
	uint32_t version;
	int rc = ls_ref_parse(ref, name, &version, err);
	if (rc)
		return rc;
	struct ls_push_walk w = {s, name, version, 0, 0, 0, 0, err};
	/* A walk of the name's versions; uploads run inside it, in the catalog's order. */
	char cursor[LS_NAME_MAX + 16] = "", next[LS_NAME_MAX + 16];
	do {
		rc = ls_store_list(s, name, cursor[0] ? cursor : NULL, 64, ls_push_one, &w, next,
				   err);
		snprintf(cursor, sizeof(cursor), "%s", next);
	} while (rc == 0 && next[0]);
	*pushed = w.pushed;
	*present = w.present;
	if (rc == 0 && w.seen == 0)
		rc = ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s here", ref);
	return rc;
}

struct ls_list_walk {
	struct ls_store *s;
	size_t skip;                /* characters of the key before the name */
	size_t limit, n;
	ls_origin_entry_fn fn;
	void *ud;
	char *next;
	char last[LS_NAME_MAX + 16];
};

static int ls_list_key(void *ud, const char *key, uint64_t size)
{
	(void)size;
	struct ls_list_walk *w = ud;
	const char *ref = key + w->skip, *at = strrchr(ref, '@');
	char name[LS_NAME_MAX + 1];
	if (!at || (size_t)(at - ref) > LS_NAME_MAX || strlen(at + 1) != 10)
		return 0; /* not a key of ours */
	memcpy(name, ref, (size_t)(at - ref));
	name[at - ref] = '\0';
	char *end;
	unsigned long v = strtoul(at + 1, &end, 10);
	if (*end || v == 0 || v >= UINT32_MAX || !ls_name_valid(name))
		return 0;
	if (w->n == w->limit) {
		snprintf(w->next, LS_NAME_MAX + 16, "%s", w->last);
		return 1;
	}
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err e;
	pthread_rwlock_rdlock(&w->s->gc_lock);
	bool here = ls_catalog_get(w->s->cat, name, (uint32_t)v, &rec, &e) == 0;
	pthread_rwlock_unlock(&w->s->gc_lock);
	if (rec)
		lorastore__version_record__free_unpacked(rec, NULL);
	int rc = w->fn(w->ud, name, (uint32_t)v, here);
	w->n++;
	snprintf(w->last, sizeof(w->last), "%s@%lu", name, v);
	return rc;
}

int ls_store_origin_list(struct ls_store *s, const char *prefix, const char *cursor,
			 size_t limit, ls_origin_entry_fn fn, void *ud, char *next,
			 struct ls_err *err)
{
	next[0] = '\0';
	struct ls_origin *o = s->origin;
	if (!o)
		return ls_err_set(err, LS_E_ORIGIN, "this daemon has no origin (lorastored --origin)");
	char keys[PATH_MAX], after[PATH_MAX];
	snprintf(keys, sizeof(keys), "%sversions/%s", o->prefix, prefix ? prefix : "");
	const char *start = NULL;
	if (cursor && *cursor) {
		const char *at = strrchr(cursor, '@');
		if (!at)
			return ls_err_set(err, LS_E_NAME_INVALID, "cursor '%s' is not NAME@VERSION",
					  cursor);
		snprintf(after, sizeof(after), "%sversions/%.*s@%010lu", o->prefix,
			 (int)(at - cursor), cursor, strtoul(at + 1, NULL, 10));
		start = after;
	}
	struct ls_list_walk w = {.s = s, .skip = strlen(o->prefix) + 9, .limit = limit ? limit : 1000,
				 .fn = fn, .ud = ud, .next = next};
	int rc = ls_s3_list(o->s3, keys, start, ls_list_key, &w, err);
	return rc == 1 ? 0 : rc;
}

int ls_origin_publish(struct ls_store *s, Lorastore__VersionRecord *rec,
		      struct ls_import_check *check, uint32_t *version,
		      Lorastore__VersionRecord **same, struct ls_err *err)
{
	struct ls_origin *o = s->origin;
	*version = 0;
	*same = NULL;
	bool uploaded = false;
	for (int attempt = 0; attempt < LS_ORIGIN_PUBLISH_TRIES; attempt++) {
		uint32_t latest = 0;
		int rc = ls_origin_latest(o, rec->name, &latest, err);
		Lorastore__OriginVersion *ov = NULL;
		if (rc == 0 && latest)
			rc = ls_origin_record(o, rec->name, latest, &ov, err);
		if (rc)
			return rc;
		/* The checks of an import, against the fleet's latest version. */
		rc = ls_import_check(check, ov ? ov->record : NULL, rec, err);
		if (rc == LS_CATALOG_SAME) {
			*same = ls_record_copy(ov->record);
			*version = latest;
			lorastore__origin_version__free_unpacked(ov, NULL);
			return *same ? LS_CATALOG_SAME : ls_err_set(err, -ENOMEM, "out of memory");
		}
		if (ov)
			lorastore__origin_version__free_unpacked(ov, NULL);
		if (rc)
			return rc;
		if (!uploaded) {
			rc = ls_origin_upload_blob(s, rec, err);
			if (rc)
				return rc;
			uploaded = true;
		}
		/* Past both the fleet's latest and this node's (versions imported before the origin). */
		Lorastore__VersionRecord *mine = NULL;
		struct ls_err lerr;
		uint32_t next = latest + 1;
		if (ls_catalog_get(s->cat, rec->name, 0, &mine, &lerr) == 0) {
			if (mine->version >= next)
				next = mine->version + 1;
			lorastore__version_record__free_unpacked(mine, NULL);
		}
		rc = ls_origin_put_record(o, rec, next, err);
		if (rc == -EEXIST)
			continue; /* another node took that number: look again */
		if (rc)
			return rc;
		*version = next;
		return 0;
	}
	return ls_err_set(err, LS_E_ORIGIN,
			  "origin %s: %s: %d other versions were created while this one was; try again",
			  o->label, rec->name, LS_ORIGIN_PUBLISH_TRIES);
}
