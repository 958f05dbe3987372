/* Garbage collection and catalog rebuild of the store. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob.h"
#include "fsutil.h"
#include "store.h"
#include "store_internal.h"

/* What the catalog references: digests (hex) and generations, sorted. */
struct ls_live {
	size_t n, cap;
	char (*digests)[LS_DIGEST_HEX];
	uint64_t *generations;
	int rc;
};

static int ls_live_add(void *ud, const Lorastore__VersionRecord *rec)
{
	struct ls_live *l = ud;
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 256;
		void *d = realloc(l->digests, cap * sizeof(*l->digests));
		if (d)
			l->digests = d;
		void *g = realloc(l->generations, cap * sizeof(*l->generations));
		if (g)
			l->generations = g;
		if (!d || !g) {
			l->rc = -ENOMEM;
			return 1;
		}
		l->cap = cap;
	}
	if (rec->digest.len == LS_DIGEST_LEN)
		ls_digest_hex(rec->digest.data, l->digests[l->n]);
	else
		l->digests[l->n][0] = '\0';
	l->generations[l->n] = rec->generation;
	l->n++;
	return 0;
}

static int ls_cmp_hex(const void *a, const void *b)
{
	return strcmp(a, b);
}

static int ls_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Whether name is "<64 hex>.blob"; the hex part goes to hex. */
static bool ls_blob_name(const char *name, char hex[LS_DIGEST_HEX])
{
	if (strlen(name) != LS_DIGEST_HEX - 1 + 5 || strcmp(name + LS_DIGEST_HEX - 1, ".blob"))
		return false;
	for (int i = 0; i < LS_DIGEST_HEX - 1; i++)
		if (!strchr("0123456789abcdef", name[i]) || !name[i])
			return false;
	memcpy(hex, name, LS_DIGEST_HEX - 1);
	hex[LS_DIGEST_HEX - 1] = '\0';
	return true;
}

/* Whether name is "<digits>.ref"; the number goes to gen. */
static bool ls_ref_file(const char *name, uint64_t *gen)
{
	char *end;
	if (name[0] < '0' || name[0] > '9')
		return false;
	errno = 0;
	unsigned long long v = strtoull(name, &end, 10);
	if (errno || strcmp(end, ".ref") != 0)
		return false;
	*gen = v;
	return true;
}

int ls_store_gc(struct ls_store *s, struct ls_gc_stats *stats, struct ls_err *err)
{
	struct ls_gc_stats local;
	if (!stats)
		stats = &local;
	memset(stats, 0, sizeof(*stats));
	struct ls_live live = {0};
	pthread_rwlock_wrlock(&s->gc_lock);
	int rc = ls_catalog_walk(s->cat, ls_live_add, &live, err);
	if (rc == 0 && live.rc)
		rc = ls_err_set(err, live.rc, "out of memory");
	if (rc)
		goto out;
	if (live.n) {
		qsort(live.generations, live.n, sizeof(*live.generations), ls_cmp_u64);
		qsort(live.digests, live.n, sizeof(*live.digests), ls_cmp_hex);
	}

	int fds[3] = {s->blobs_fd, s->refs_fd, s->tmp_fd};
	for (int which = 0; which < 3 && rc == 0; which++) {
		int dfd = dup(fds[which]);
		DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
		if (!d) {
			rc = ls_err_set(err, -errno, "%s: listing: %s", s->dir, strerror(errno));
			if (dfd >= 0)
				close(dfd);
			break;
		}
		rewinddir(d);
		struct dirent *e;
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			char hex[LS_DIGEST_HEX];
			uint64_t gen;
			struct stat st;
			bool remove = false;
			if (which == 0 && ls_blob_name(e->d_name, hex))
				remove = !live.n || !bsearch(hex, live.digests, live.n, sizeof(*live.digests),
						  ls_cmp_hex);
			else if (which == 1 && ls_ref_file(e->d_name, &gen))
				remove = !live.n || !bsearch(&gen, live.generations, live.n,
						  sizeof(*live.generations), ls_cmp_u64);
			else if (which == 2)
				/* The exclusive lock keeps imports out: every temporary is a leftover. */
				remove = true;
			if (!remove)
				continue;
			off_t size = fstatat(fds[which], e->d_name, &st, 0) == 0 ? st.st_size : 0;
			if (unlinkat(fds[which], e->d_name, 0) != 0) {
				if (errno == ENOENT)
					continue;
				rc = ls_err_set(err, -errno, "%s: removing %s: %s", s->dir, e->d_name,
						strerror(errno));
				break;
			}
			if (which == 0) {
				stats->blobs_removed++;
				stats->bytes_removed += (uint64_t)size;
			} else if (which == 1) {
				stats->refs_removed++;
			} else {
				stats->temps_removed++;
			}
		}
		closedir(d);
		fsync(fds[which]);
	}
out:
	pthread_rwlock_unlock(&s->gc_lock);
	free(live.digests);
	free(live.generations);
	return rc;
}

/* Read refs/<name> and the manifest of its blob into one catalog record. */
static int ls_rebuild_one(struct ls_store *s, struct ls_catalog *cat, const char *ref_name,
			  struct ls_err *err)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/refs/%s", s->dir, ref_name);
	int fd = openat(s->refs_fd, ref_name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ls_err_set(err, -errno, "%s: %s", path, strerror(errno));
	struct stat st;
	uint8_t *buf = NULL;
	int rc = fstat(fd, &st) == 0 ? 0 : -errno;
	if (rc == 0 && st.st_size > (16 << 20))
		rc = LS_E_CORRUPT;
	if (rc == 0 && !(buf = malloc(st.st_size ? (size_t)st.st_size : 1)))
		rc = -ENOMEM;
	if (rc == 0)
		rc = ls_read_all(fd, buf, (size_t)st.st_size, 0);
	close(fd);
	Lorastore__RefRecord *ref =
		rc == 0 ? lorastore__ref_record__unpack(NULL, (size_t)st.st_size, buf) : NULL;
	free(buf);
	if (!ref)
		return ls_err_set(err, rc ? rc : LS_E_CORRUPT, "%s: unreadable ref file", path);
	if (ref->digest.len != LS_DIGEST_LEN) {
		lorastore__ref_record__free_unpacked(ref, NULL);
		return ls_err_set(err, LS_E_CORRUPT, "%s: ref without a digest", path);
	}

	char blob[PATH_MAX];
	ls_store_blob_path(s, ref->digest.data, blob, sizeof(blob));
	Lorastore__BlobManifest *m = NULL;
	struct ls_blob_header hdr;
	rc = ls_blob_open(blob, ref->digest.data, &fd, &hdr, err);
	if (rc == 0) {
		rc = ls_blob_verify(fd, blob, &hdr, 0, err);
		if (rc == 0)
			rc = ls_blob_read_manifest(fd, blob, &hdr, &m, err);
		close(fd);
	}
	if (rc == 0) {
		Lorastore__VersionRecord rec;
		rc = ls_record_from_manifest(&rec, m, &hdr);
		if (rc) {
			lorastore__blob_manifest__free_unpacked(m, NULL);
			lorastore__ref_record__free_unpacked(ref, NULL);
			return ls_err_set(err, rc, "out of memory");
		}
		rec.schema = LS_CATALOG_SCHEMA;
		rec.name = ref->name;
		rec.version = ref->version;
		rec.digest = ref->digest;
		rec.generation = ref->generation;
		rec.created_unix_ns = ref->created_unix_ns;
		rec.source = ref->source;
		rec.pulled = ref->pulled;
		rc = ls_catalog_restore(cat, &rec, err);
		ls_record_from_manifest_free(&rec);
		lorastore__blob_manifest__free_unpacked(m, NULL);
	}
	lorastore__ref_record__free_unpacked(ref, NULL);
	return rc;
}

int ls_store_rebuild(struct ls_store *s, struct ls_rebuild_stats *stats, struct ls_err *err)
{
	struct ls_rebuild_stats local;
	if (!stats)
		stats = &local;
	memset(stats, 0, sizeof(*stats));
	char cur[PATH_MAX], old[PATH_MAX], next[PATH_MAX];
	snprintf(cur, sizeof(cur), "%s/catalog", s->dir);
	snprintf(old, sizeof(old), "%s/catalog.old", s->dir);
	snprintf(next, sizeof(next), "%s/catalog.rebuild", s->dir);

	pthread_rwlock_wrlock(&s->gc_lock);
	ls_remove_dir(next);
	int rc = ls_mkdir(next, 0750);
	struct ls_catalog *cat = NULL;
	if (rc)
		rc = ls_err_set(err, rc, "%s: %s", next, strerror(-rc));
	if (rc == 0)
		rc = ls_catalog_open(next, &cat, err);
	if (rc)
		goto out;

	int dfd = dup(s->refs_fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		rc = ls_err_set(err, -errno, "%s/refs: %s", s->dir, strerror(errno));
		if (dfd >= 0)
			close(dfd);
		goto out;
	}
	rewinddir(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		uint64_t gen;
		if (!ls_ref_file(e->d_name, &gen))
			continue;
		struct ls_err one;
		int one_rc = ls_rebuild_one(s, cat, e->d_name, &one);
		if (one_rc == -ENOMEM) {
			rc = ls_err_set(err, one_rc, "%s", one.msg);
			break;
		}
		if (one_rc)
			stats->skipped++;
		else
			stats->versions++;
	}
	closedir(d);
	ls_catalog_close(cat);
	cat = NULL;
	if (rc)
		goto out;

	/* Swap: the new catalog is complete on disk before the old one moves away. */
	ls_catalog_close(s->cat);
	s->cat = NULL;
	if (rename(cur, old) != 0) {
		rc = ls_err_set(err, -errno, "%s: swapping catalogs: %s", s->dir, strerror(errno));
	} else if (rename(next, cur) != 0) {
		rc = ls_err_set(err, -errno, "%s: swapping catalogs: %s", s->dir, strerror(errno));
		rename(old, cur);
	} else {
		ls_fsync_path(s->dir);
		ls_remove_dir(old);
	}
	int orc = ls_catalog_open(cur, &s->cat, rc ? NULL : err);
	if (rc == 0)
		rc = orc;
out:
	if (cat)
		ls_catalog_close(cat);
	pthread_rwlock_unlock(&s->gc_lock);
	return rc;
}
