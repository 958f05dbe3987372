/* The adapter store: state directory, import, lookup, delete, verify, gc, rebuild. */
#define _GNU_SOURCE /* O_DIRECT */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"
#include "fsutil.h"
#include "ls_clock.h"
#include "manifest.h"
#include "origin.h"
#include "store_internal.h"


static int ls_open_subdir(const char *dir, const char *sub, int *fd, struct ls_err *err)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	int rc = ls_mkdir(path, 0750);
	if (rc)
		return ls_err_set(err, rc, "%s: %s", path, strerror(-rc));
	*fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0)
		return ls_err_set(err, -errno, "%s: %s", path, strerror(errno));
	return 0;
}

static int ls_catalog_path(const struct ls_store *s, const char *leaf, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/%s", s->dir, leaf);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/*
 * A rebuild swaps catalog directories with renames: catalog.rebuild is
 * complete before catalog moves to catalog.old.  Finish or undo an
 * interrupted swap.
 */
static int ls_catalog_recover(struct ls_store *s)
{
	char cur[PATH_MAX], old[PATH_MAX], next[PATH_MAX];
	ls_catalog_path(s, "catalog", cur, sizeof(cur));
	ls_catalog_path(s, "catalog.old", old, sizeof(old));
	ls_catalog_path(s, "catalog.rebuild", next, sizeof(next));
	struct stat st;
	bool have_cur = stat(cur, &st) == 0;
	bool have_old = stat(old, &st) == 0;
	bool have_next = stat(next, &st) == 0;
	if (!have_cur && have_next) {
		/* Crashed between the two renames: the new catalog was complete. */
		if (rename(next, cur) != 0)
			return -errno;
		have_next = false;
	}
	if (!have_cur && !have_next && have_old && rename(old, cur) != 0)
		return -errno;
	ls_remove_dir(old);
	ls_remove_dir(next);
	return 0;
}

int ls_store_open(const char *dir, struct ls_store **out, struct ls_err *err)
{
	*out = NULL;
	struct ls_store *s = calloc(1, sizeof(*s));
	if (!s)
		return ls_err_set(err, -ENOMEM, "out of memory");
	s->lock_fd = s->blobs_fd = s->refs_fd = s->tmp_fd = -1;
	pthread_rwlock_init(&s->gc_lock, NULL);
	pthread_mutex_init(&s->digest_lock, NULL);
	int rc = ls_mkdir(dir, 0750);
	if (rc) {
		ls_err_set(err, rc, "%s: %s", dir, strerror(-rc));
		goto fail;
	}
	s->dir = realpath(dir, NULL);
	if (!s->dir) {
		rc = ls_err_set(err, -errno, "%s: %s", dir, strerror(errno));
		goto fail;
	}
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/lock", s->dir);
	s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (s->lock_fd < 0) {
		rc = ls_err_set(err, -errno, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		rc = errno == EWOULDBLOCK
			     ? ls_err_set(err, LS_E_BUSY, "%s: state directory in use by another process",
					  s->dir)
			     : ls_err_set(err, -errno, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if ((rc = ls_open_subdir(s->dir, "blobs", &s->blobs_fd, err)) ||
	    (rc = ls_open_subdir(s->dir, "refs", &s->refs_fd, err)) ||
	    (rc = ls_open_subdir(s->dir, "tmp", &s->tmp_fd, err)))
		goto fail;
	rc = ls_catalog_recover(s);
	if (rc) {
		ls_err_set(err, rc, "%s: recovering an interrupted rebuild: %s", s->dir,
			   strerror(-rc));
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/catalog", s->dir);
	if ((rc = ls_mkdir(path, 0750))) {
		ls_err_set(err, rc, "%s: %s", path, strerror(-rc));
		goto fail;
	}
	if ((rc = ls_catalog_open(path, &s->cat, err)))
		goto fail;
	*out = s;
	return 0;
fail:
	ls_store_close(s);
	return rc;
}

void ls_store_close(struct ls_store *s)
{
	if (!s)
		return;
	ls_catalog_close(s->cat);
	ls_origin_close(s->origin);
	int fds[] = {s->blobs_fd, s->refs_fd, s->tmp_fd, s->lock_fd};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	pthread_rwlock_destroy(&s->gc_lock);
	pthread_mutex_destroy(&s->digest_lock);
	free(s->dir);
	free(s);
}

int ls_store_count_versions(struct ls_store *s, uint64_t *out, struct ls_err *err)
{
	pthread_rwlock_rdlock(&s->gc_lock);
	int rc = ls_catalog_count_versions(s->cat, out, err);
	pthread_rwlock_unlock(&s->gc_lock);
	return rc;
}

struct ls_catalog *ls_store_catalog(struct ls_store *s)
{
	return s->cat;
}

void ls_store_blob_path(const struct ls_store *s, const uint8_t *digest, char *buf, size_t len)
{
	char hex[LS_DIGEST_HEX];
	ls_digest_hex(digest, hex);
	snprintf(buf, len, "%s/blobs/%s.blob", s->dir, hex);
}

int ls_store_blob_open(struct ls_store *s, const uint8_t digest[LS_DIGEST_LEN], bool direct,
		       int *fd, struct ls_blob_header *hdr, bool *direct_refused,
		       struct ls_err *err)
{
	char path[PATH_MAX];
	ls_store_blob_path(s, digest, path, sizeof(path));
	*direct_refused = false;
	int rc = ls_blob_open(path, digest, fd, hdr, err);
	if (rc == 0 && s->origin)
		ls_origin_touch(s->origin, digest); /* the disk cache's LRU (origin.h) */
	if (rc || !direct)
		return rc;
	/* One large O_DIRECT read into page-aligned memory: offsets and sizes are page multiples. */
	int dfd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (dfd >= 0) {
		close(*fd);
		*fd = dfd;
	} else if (errno == EINVAL) {
		*direct_refused = true;
	}
	return 0;
}

bool ls_store_version_gone(struct ls_store *s, const char *name, uint32_t version)
{
	/* Here, not in the origin: a version deleted here is gone whatever the origin has. */
	Lorastore__VersionRecord *rec = NULL;
	struct ls_err err;
	pthread_rwlock_rdlock(&s->gc_lock);
	int rc = ls_catalog_get(s->cat, name, version, &rec, &err);
	pthread_rwlock_unlock(&s->gc_lock);
	if (rec)
		lorastore__version_record__free_unpacked(rec, NULL);
	return rc == LS_E_NOT_FOUND;
}

/* Write a small file atomically into dir_fd: temporary, fsync, rename, fsync dir. */
static int ls_write_atomic(struct ls_store *s, int dir_fd, const char *name, const void *buf,
			   size_t len)
{
	char tmp[64];
	int fd = ls_tmpfile_create(s->tmp_fd, "ref", tmp, sizeof(tmp));
	if (fd < 0)
		return fd;
	int rc = ls_write_all(fd, buf, len, 0);
	if (rc == 0 && fsync(fd) != 0)
		rc = -errno;
	close(fd);
	if (rc == 0 && renameat(s->tmp_fd, tmp, dir_fd, name) != 0)
		rc = -errno;
	if (rc == 0 && fsync(dir_fd) != 0)
		rc = -errno;
	if (rc)
		unlinkat(s->tmp_fd, tmp, 0);
	return rc;
}

static void ls_ref_name(uint64_t generation, char *buf, size_t len)
{
	snprintf(buf, len, "%020llu.ref", (unsigned long long)generation);
}

/* Inside the catalog's write transaction: record the version's name beside the blobs. */
int ls_store_write_ref(void *ud, const Lorastore__VersionRecord *rec, struct ls_err *err)
{
	struct ls_store *s = ((const struct ls_import_check *)ud)->s;
	/* Under digest_lock: a delete may have removed the blob since it was written. */
	char hex[LS_DIGEST_HEX], blob[LS_DIGEST_HEX + 8];
	ls_digest_hex(rec->digest.data, hex);
	snprintf(blob, sizeof(blob), "%s.blob", hex);
	if (faccessat(s->blobs_fd, blob, F_OK, 0) != 0)
		return ls_err_set(err, errno == ENOENT ? LS_E_BLOB_MISSING : -errno,
				  "%s/blobs/%s: %s", s->dir, blob, strerror(errno));
	Lorastore__RefRecord ref;
	lorastore__ref_record__init(&ref);
	ref.schema = LS_CATALOG_SCHEMA;
	ref.name = rec->name;
	ref.version = rec->version;
	ref.digest = rec->digest;
	ref.generation = rec->generation;
	ref.created_unix_ns = rec->created_unix_ns;
	ref.source = rec->source;
	ref.pulled = rec->pulled;
	size_t len = lorastore__ref_record__get_packed_size(&ref);
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		return ls_err_set(err, -ENOMEM, "out of memory");
	lorastore__ref_record__pack(&ref, buf);
	char name[32];
	ls_ref_name(rec->generation, name, sizeof(name));
	int rc = ls_write_atomic(s, s->refs_fd, name, buf, len);
	free(buf);
	if (rc)
		return ls_err_set(err, rc, "%s/refs/%s: %s", s->dir, name, strerror(-rc));
	return 0;
}

Lorastore__VersionRecord *ls_record_copy(const Lorastore__VersionRecord *rec)
{
	size_t len = lorastore__version_record__get_packed_size(rec);
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		return NULL;
	lorastore__version_record__pack(rec, buf);
	Lorastore__VersionRecord *copy = lorastore__version_record__unpack(NULL, len, buf);
	free(buf);
	return copy;
}

int ls_record_from_manifest(Lorastore__VersionRecord *rec, const Lorastore__BlobManifest *m,
			    const struct ls_blob_header *hdr)
{
	lorastore__version_record__init(rec);
	/* The record's tensors: the blob's, their dtype names turned into Dtype once, here. */
	size_t n = m->n_tensors;
	void *block = calloc(1, (n ? n : 1) * (sizeof(Lorastore__Tensor *) + sizeof(Lorastore__Tensor)));
	if (!block)
		return -ENOMEM;
	Lorastore__Tensor **ptrs = block;
	Lorastore__Tensor *ts = (Lorastore__Tensor *)(ptrs + (n ? n : 1));
	for (size_t i = 0; i < n; i++) {
		const Lorastore__BlobTensor *b = m->tensors[i];
		Lorastore__Tensor *t = &ts[i];
		lorastore__tensor__init(t);
		t->module = b->module;
		t->layer = b->layer;
		t->kind = b->kind;
		t->n_shape = b->n_shape;
		t->shape = b->shape;
		t->offset = b->offset;
		t->length = b->length;
		t->source_name = b->source_name;
		t->dtype = (Lorastore__Dtype)ls_dtype_from_name(b->dtype);
		t->source_dtype = (Lorastore__Dtype)ls_dtype_from_name(b->source_dtype);
		ptrs[i] = t;
	}
	rec->digest.data = (uint8_t *)hdr->digest;
	rec->digest.len = LS_DIGEST_LEN;
	rec->config = m->config;
	rec->n_scales = m->n_scales;
	rec->scales = m->scales;
	rec->n_tensors = n;
	rec->tensors = ptrs;
	rec->blob_bytes = hdr->file_length;
	rec->data_length = m->data_length;
	rec->tensor_bytes = 0;
	for (size_t i = 0; i < m->n_tensors; i++)
		rec->tensor_bytes += m->tensors[i]->length;
	rec->dtype = (Lorastore__Dtype)ls_dtype_from_name(m->dtype); /* "mixed": none */
	rec->rank = m->config ? m->config->r : 0;
	for (size_t i = 0; i < m->n_scales; i++)
		if (m->scales[i]->rank > rec->rank)
			rec->rank = m->scales[i]->rank;
	rec->scale = ls_scale_of_config(m->config);
	return 0;
}

void ls_record_from_manifest_free(Lorastore__VersionRecord *rec)
{
	free(rec->tensors); /* the one block of pointers and tensors */
	rec->tensors = NULL;
	rec->n_tensors = 0;
}

double ls_scale_of_config(const Lorastore__AdapterConfig *c)
{
	return c ? ls_lora_scale(c->lora_alpha, c->r, c->use_rslora) : 0.0;
}

int ls_record_check_size(const Lorastore__VersionRecord *rec, const char *label,
			 struct ls_err *err)
{
	size_t len = lorastore__version_record__get_packed_size(rec);
	if (len <= LS_RECORD_MAX)
		return 0;
	size_t cfg = rec->config ? lorastore__adapter_config__get_packed_size(rec->config) : 0;
	return ls_err_set(err, LS_E_ADAPTER_LIMIT,
			  "%s: its record would be %zu bytes (config %zu, %zu tensors), more than "
			  "the %zu a version may have",
			  label, len, cfg, rec->n_tensors, LS_RECORD_MAX);
}

/* A LoRA module as the base model sees it: its path and its input and output sizes. */
struct ls_module_dims {
	const char *module;
	uint64_t in, out;
};

static int ls_module_dims_cmp(const void *a, const void *b)
{
	return strcmp(((const struct ls_module_dims *)a)->module,
		      ((const struct ls_module_dims *)b)->module);
}

/*
 * The LoRA modules of rec with their sizes, sorted by module (A gives the
 * input size, B the output size; the rank is not part of it).  *n is the
 * count; NULL when out of memory.
 */
static struct ls_module_dims *ls_modules_of(const Lorastore__VersionRecord *rec, size_t *n)
{
	struct ls_module_dims *m = calloc(rec->n_tensors ? rec->n_tensors : 1, sizeof(*m));
	*n = 0;
	if (!m)
		return NULL;
	for (size_t i = 0; i < rec->n_tensors; i++) {
		const Lorastore__Tensor *t = rec->tensors[i];
		bool a = t->kind == LORASTORE__TENSOR_KIND__TENSOR_KIND_A;
		if ((!a && t->kind != LORASTORE__TENSOR_KIND__TENSOR_KIND_B) || t->n_shape < 2)
			continue;
		size_t j = 0;
		while (j < *n && strcmp(m[j].module, t->module) != 0)
			j++;
		if (j == *n)
			m[(*n)++].module = t->module;
		if (a)
			m[j].in = t->shape[1];
		else
			m[j].out = t->shape[0];
	}
	qsort(m, *n, sizeof(*m), ls_module_dims_cmp);
	return m;
}

/*
 * Whether rec's modules and sizes are latest's: 0, or LS_E_BASE_CHANGED with
 * the first difference named.
 */
static int ls_check_modules(const Lorastore__VersionRecord *latest,
			    const Lorastore__VersionRecord *rec, struct ls_err *err)
{
	size_t na, nb;
	struct ls_module_dims *a = ls_modules_of(latest, &na), *b = ls_modules_of(rec, &nb);
	int rc = 0;
	if (!a || !b) {
		rc = ls_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	size_t i = 0, j = 0;
	while (rc == 0 && (i < na || j < nb)) {
		int c = i == na ? 1 : j == nb ? -1 : strcmp(a[i].module, b[j].module);
		if (c < 0)
			rc = ls_err_set(err, LS_E_BASE_CHANGED,
					"%s@%u adapts %s, which this adapter does not", latest->name,
					latest->version, a[i].module);
		else if (c > 0)
			rc = ls_err_set(err, LS_E_BASE_CHANGED,
					"this adapter adapts %s, which %s@%u does not", b[j].module,
					latest->name, latest->version);
		else if (a[i].in != b[j].in || a[i].out != b[j].out)
			rc = ls_err_set(err, LS_E_BASE_CHANGED,
					"%s is %llu to %llu wide in this adapter, %llu to %llu in %s@%u",
					a[i].module, (unsigned long long)b[j].in,
					(unsigned long long)b[j].out, (unsigned long long)a[i].in,
					(unsigned long long)a[i].out, latest->name, latest->version);
		i += c <= 0;
		j += c >= 0;
	}
out:
	free(a);
	free(b);
	return rc;
}

static const char *ls_base_of(const Lorastore__VersionRecord *rec)
{
	return rec->config && rec->config->has_base_model && rec->config->base_model
		       ? rec->config->base_model
		       : "";
}

/* Inside the catalog's write: the same content again, or a version for another base. */
int ls_import_check(void *ud, const Lorastore__VersionRecord *latest,
			   const Lorastore__VersionRecord *rec, struct ls_err *err)
{
	const struct ls_import_check *c = ud;
	if (!latest)
		return 0;
	if (latest->digest.len == rec->digest.len &&
	    memcmp(latest->digest.data, rec->digest.data, rec->digest.len) == 0)
		return LS_CATALOG_SAME;
	if (c->allow_new_base)
		return 0;
	const char *was = ls_base_of(latest), *now = ls_base_of(rec);
	int rc = 0;
	if (strcmp(was, now) != 0)
		rc = ls_err_set(err, LS_E_BASE_CHANGED, "its base model is %s%s%s, but %s@%u is for %s%s%s",
				*now ? "'" : "", *now ? now : "not named", *now ? "'" : "",
				latest->name, latest->version, *was ? "'" : "",
				*was ? was : "no named base model", *was ? "'" : "");
	else
		rc = ls_check_modules(latest, rec, err);
	if (rc == LS_E_BASE_CHANGED) {
		char msg[LS_ERR_MSG_MAX];
		snprintf(msg, sizeof(msg), "%s", err->msg);
		ls_err_set(err, rc,
			   "%s: %s; import it under another --name, or pass --allow-new-base to "
			   "make it version %u of %s",
			   rec->name, msg, latest->version + 1, rec->name);
	}
	return rc;
}

int ls_store_import(struct ls_store *s, const char *name, int config_fd, int st_fd,
		    const char *label, const struct ls_import_opts *opts,
		    Lorastore__VersionRecord **out, bool *unchanged, struct ls_err *err)
{
	static const struct ls_import_opts defaults = {0};
	if (!opts)
		opts = &defaults;
	if (out)
		*out = NULL;
	if (unchanged)
		*unchanged = false;
	if (!ls_name_valid(name))
		return ls_err_set(err, LS_E_NAME_INVALID,
				  "'%s': a name has 1 to %d characters of [A-Za-z0-9._/-]", name,
				  LS_NAME_MAX);
	struct ls_adapter ad;
	struct ls_adapter_opts aopts = {.convert = opts->convert,
					.allow_nonfinite = opts->allow_nonfinite};
	int rc = ls_adapter_analyze(config_fd, st_fd, label ? label : name, &aopts, &ad, err);
	if (rc) {
		ls_adapter_free(&ad);
		return rc;
	}
	Lorastore__BlobManifest *m = NULL;
	void *data = NULL;
	uint64_t data_length = 0;
	rc = ls_manifest_build(&ad, label ? label : name, opts->allow_nonfinite, &m, &data,
			       &data_length, err);
	ls_adapter_free(&ad);
	if (rc)
		return rc;
	/* The record as it will be (digest and lengths have fixed sizes): it must fit a reply. */
	struct ls_blob_header probe = {.file_length = UINT64_MAX};
	Lorastore__VersionRecord sized;
	rc = ls_record_from_manifest(&sized, m, &probe);
	if (rc == 0) {
		sized.name = (char *)name;
		sized.created_unix_ns = INT64_MAX;
		sized.source = (char *)(opts->source ? opts->source : "");
		rc = ls_record_check_size(&sized, label ? label : name, err);
		ls_record_from_manifest_free(&sized);
	} else {
		rc = ls_err_set(err, rc, "out of memory");
	}
	if (rc) {
		lorastore__blob_manifest__free_unpacked(m, NULL);
		free(data);
		return rc;
	}

	pthread_rwlock_rdlock(&s->gc_lock);
	struct ls_import_check check = {s, opts->allow_new_base};
	uint32_t fixed = 0;          /* with an origin: the version it gave */
	Lorastore__VersionRecord *fleet_same = NULL; /* with an origin: its latest, same content */
	/* A delete may remove the blob between its write and the commit: write it again. */
	for (int attempt = 0;; attempt++) {
		struct ls_blob_header hdr;
		rc = ls_blob_write(s->tmp_fd, s->blobs_fd, m, data, data_length, &hdr, err);
		if (rc)
			break;
		Lorastore__VersionRecord rec, *same = NULL;
		if (ls_record_from_manifest(&rec, m, &hdr) != 0) {
			rc = ls_err_set(err, -ENOMEM, "out of memory");
			break;
		}
		rec.name = (char *)name;
		rec.created_unix_ns = ls_unix_ns();
		rec.source = (char *)(opts->source ? opts->source : "");
		/* With an origin, the fleet gives the number, once: in the origin before here. */
		if (s->origin && !fixed) {
			rc = ls_origin_publish(s, &rec, &check, &fixed, &fleet_same, err);
			if (rc != 0 && rc != LS_CATALOG_SAME) {
				ls_record_from_manifest_free(&rec);
				break;
			}
		}
		if (fleet_same) {
			rec.created_unix_ns = fleet_same->created_unix_ns;
			rec.source = fleet_same->source;
		}
		pthread_mutex_lock(&s->digest_lock);
		if (s->origin)
			rc = ls_catalog_add_version(s->cat, &rec, fixed, ls_store_write_ref, &check,
						    err);
		else
			rc = ls_catalog_add_checked(s->cat, &rec, ls_import_check,
						    ls_store_write_ref, &check, &same, err);
		pthread_mutex_unlock(&s->digest_lock);
		if (rc == LS_E_BLOB_MISSING && attempt < 3) {
			ls_record_from_manifest_free(&rec);
			continue;
		}
		if (rc == -EEXIST && fleet_same) {
			/* The fleet's latest is here already: that is the answer. */
			rc = ls_catalog_get(s->cat, name, fixed, &same, err);
		} else if (rc == -EEXIST) {
			/* Pulled meanwhile by a lookup of this node: the same version. */
			rc = ls_catalog_get(s->cat, name, fixed, out ? out : &same, err);
			if (same)
				lorastore__version_record__free_unpacked(same, NULL);
			ls_record_from_manifest_free(&rec);
			break;
		}
		if (rc == 0 && fleet_same && !same && !(same = ls_record_copy(&rec)))
			rc = ls_err_set(err, -ENOMEM, "out of memory");
		if (rc == 0 && same) {
			if (unchanged)
				*unchanged = true;
			if (out)
				*out = same;
			else
				lorastore__version_record__free_unpacked(same, NULL);
		} else if (rc == 0 && out && !(*out = ls_record_copy(&rec))) {
			rc = ls_err_set(err, -ENOMEM, "out of memory");
		}
		ls_record_from_manifest_free(&rec);
		break;
	}
	if (fleet_same)
		lorastore__version_record__free_unpacked(fleet_same, NULL);
	pthread_rwlock_unlock(&s->gc_lock);
	free(data);
	lorastore__blob_manifest__free_unpacked(m, NULL);
	return rc;
}

int ls_store_lookup(struct ls_store *s, const char *ref, Lorastore__VersionRecord **out,
		    struct ls_err *err)
{
	char name[LS_NAME_MAX + 1];
	uint32_t version;
	int rc;
	if (ref && strchr(ref, ':') && !strchr(ref, '@')) { /* an alias (checked there) */
		pthread_rwlock_rdlock(&s->gc_lock);
		rc = ls_catalog_get_alias(s->cat, ref, out, err);
		pthread_rwlock_unlock(&s->gc_lock);
		return rc;
	}
	rc = ls_ref_parse(ref, name, &version, err);
	if (rc)
		return rc;
	/* A rebuild swaps s->cat: every use of it holds the lock (rebuild: for writing). */
	pthread_rwlock_rdlock(&s->gc_lock);
	rc = ls_catalog_get(s->cat, name, version, out, err);
	pthread_rwlock_unlock(&s->gc_lock);
	/* A pulled version looked up is in use: the disk cache keeps it (origin.h). */
	if (rc == 0 && s->origin && (*out)->pulled)
		ls_origin_touch(s->origin, (*out)->digest.data);
	if (!s->origin || (rc != 0 && rc != LS_E_NOT_FOUND) || (rc == 0 && version))
		return rc;
	/*
	 * With an origin: a version missing here is pulled; "name" takes the
	 * origin's latest when it is newer (asked at most once per TTL).  When
	 * the origin cannot answer, what is here is served.
	 */
	uint32_t here = rc == 0 ? (*out)->version : 0;
	struct ls_err oerr;
	ls_err_clear(&oerr);
	int orc = ls_origin_sync(s, name, version, here, &oerr);
	if (orc != 0 && rc == 0)
		return 0;
	if (orc != 0) {
		*err = oerr;
		return orc;
	}
	Lorastore__VersionRecord *now = NULL;
	pthread_rwlock_rdlock(&s->gc_lock);
	orc = ls_catalog_get(s->cat, name, version, &now, err);
	pthread_rwlock_unlock(&s->gc_lock);
	if (orc != 0)
		return rc == 0 ? 0 : orc;
	if (rc == 0)
		lorastore__version_record__free_unpacked(*out, NULL);
	*out = now;
	return 0;
}

struct ls_list_page {
	ls_catalog_record_fn fn;
	void *ud;
	char last[LS_NAME_MAX + 16];
};

static int ls_list_one(void *ud, const Lorastore__VersionRecord *rec)
{
	struct ls_list_page *p = ud;
	int rc = p->fn(p->ud, rec);
	if (rc != LS_LIST_PAGE_FULL)
		snprintf(p->last, sizeof(p->last), "%s@%u", rec->name, rec->version);
	return rc;
}

int ls_store_list(struct ls_store *s, const char *prefix, const char *cursor, size_t limit,
		  ls_catalog_record_fn fn, void *ud, char *next, struct ls_err *err)
{
	char after[LS_NAME_MAX + 1];
	uint32_t after_version = 0;
	const char *after_name = NULL;
	if (cursor && *cursor) {
		int rc = ls_ref_parse(cursor, after, &after_version, err);
		if (rc)
			return rc;
		after_name = after;
	}
	struct ls_list_page page = {.fn = fn, .ud = ud, .last = ""};
	bool more = false;
	pthread_rwlock_rdlock(&s->gc_lock);
	int rc = ls_catalog_list(s->cat, prefix ? prefix : "", after_name, after_version, limit,
				 ls_list_one, &page, &more, err);
	pthread_rwlock_unlock(&s->gc_lock);
	if (rc == LS_LIST_PAGE_FULL) {
		/* The record not taken is still to come. */
		rc = 0;
		more = true;
	}
	if (next)
		strcpy(next, rc == 0 && more ? page.last : "");
	return rc;
}

struct ls_deleted {
	struct ls_store *s;
	int rc;
	struct ls_deleted_gens *out;
	/* The digests of the deleted versions, each once, with their blob sizes. */
	uint8_t (*digests)[LS_DIGEST_LEN];
	uint64_t *sizes;
	size_t n_digests;
};

static int ls_unlink_ref(void *ud, const Lorastore__VersionRecord *rec)
{
	struct ls_deleted *d = ud;
	char name[32];
	ls_ref_name(rec->generation, name, sizeof(name));
	if (unlinkat(d->s->refs_fd, name, 0) != 0 && errno != ENOENT && d->rc == 0)
		d->rc = -errno;
	bool seen = rec->digest.len != LS_DIGEST_LEN;
	for (size_t i = 0; !seen && i < d->n_digests; i++)
		seen = memcmp(d->digests[i], rec->digest.data, LS_DIGEST_LEN) == 0;
	if (!seen) {
		uint8_t(*dg)[LS_DIGEST_LEN] = realloc(d->digests, (d->n_digests + 1) * sizeof(*dg));
		if (dg)
			d->digests = dg;
		uint64_t *sz = realloc(d->sizes, (d->n_digests + 1) * sizeof(*sz));
		if (sz)
			d->sizes = sz;
		/* Out of memory, a blob stays for gc. */
		if (dg && sz) {
			memcpy(dg[d->n_digests], rec->digest.data, LS_DIGEST_LEN);
			sz[d->n_digests++] = rec->blob_bytes;
		}
	}
	if (d->out) {
		/* Out of memory, the list falls short; the other refs still go. */
		uint64_t *g = realloc(d->out->gens, (d->out->n + 1) * sizeof(*g));
		if (g) {
			d->out->gens = g;
			g[d->out->n++] = rec->generation;
		}
	}
	return 0;
}

int ls_store_delete_here(struct ls_store *s, const char *name, uint32_t version,
			 struct ls_deleted_gens *out, struct ls_err *err)
{
	struct ls_deleted d = {.s = s, .rc = 0, .out = out, .digests = NULL};
	if (out)
		*out = (struct ls_deleted_gens){0};
	int rc;
	pthread_rwlock_rdlock(&s->gc_lock);
	pthread_mutex_lock(&s->digest_lock);
	rc = ls_catalog_delete(s->cat, name, version, ls_unlink_ref, &d, err);
	/* The blobs no version uses now; a crash before their unlink leaves them to gc. */
	bool unlinked = false;
	for (size_t i = 0; rc == 0 && i < d.n_digests; i++) {
		uint32_t refs = 1;
		struct ls_err e;
		if (out)
			out->blob_bytes += d.sizes[i];
		if (ls_catalog_digest_refs(s->cat, d.digests[i], LS_DIGEST_LEN, &refs, &e) || refs)
			continue;
		char hex[LS_DIGEST_HEX], blob[LS_DIGEST_HEX + 8];
		ls_digest_hex(d.digests[i], hex);
		snprintf(blob, sizeof(blob), "%s.blob", hex);
		if (unlinkat(s->blobs_fd, blob, 0) == 0 && out) {
			out->freed_bytes += d.sizes[i];
			out->blobs_freed++;
		}
		unlinked = true;
	}
	pthread_mutex_unlock(&s->digest_lock);
	pthread_rwlock_unlock(&s->gc_lock);
	free(d.digests);
	free(d.sizes);
	if (rc)
		return rc;
	/* A ref left behind by a failed unlink is removed by gc: the catalog decides. */
	if (d.rc == 0)
		fsync(s->refs_fd);
	if (unlinked)
		fsync(s->blobs_fd);
	return 0;
}

int ls_store_delete(struct ls_store *s, const char *ref, struct ls_deleted_gens *out,
		    struct ls_err *err)
{
	char name[LS_NAME_MAX + 1];
	uint32_t version;
	int rc = ls_ref_parse(ref, name, &version, err);
	if (rc)
		return rc;
	rc = ls_store_delete_here(s, name, version, out, err);
	if (s->origin && (rc == 0 || rc == LS_E_NOT_FOUND)) {
		/* After the local delete, which an alias may refuse; the origin cannot. */
		uint32_t n = 0;
		struct ls_err oerr;
		ls_err_clear(&oerr);
		int orc = ls_origin_delete(s, name, version, &n, &oerr);
		if (out) {
			out->origin_versions = n;
			out->origin_rc = orc;
			snprintf(out->origin_error, sizeof(out->origin_error), "%s",
				 orc ? oerr.msg : "");
		}
		if (rc == LS_E_NOT_FOUND && (n > 0 || orc)) {
			/* Only the origin had it: its answer is the delete's. */
			if (orc) {
				*err = oerr;
				return orc;
			}
			ls_err_clear(err);
			rc = 0;
		}
	}
	return rc;
}

int ls_store_tag(struct ls_store *s, const char *alias, const char *ref,
		 Lorastore__VersionRecord **out, struct ls_err *err)
{
	char name[LS_NAME_MAX + 1];
	uint32_t version;
	int rc = ls_ref_parse(ref, name, &version, err);
	if (rc)
		return rc;
	pthread_rwlock_rdlock(&s->gc_lock);
	rc = ls_catalog_tag(s->cat, alias, name, version, out, err);
	pthread_rwlock_unlock(&s->gc_lock);
	return rc;
}

int ls_store_untag(struct ls_store *s, const char *alias, struct ls_err *err)
{
	pthread_rwlock_rdlock(&s->gc_lock);
	int rc = ls_catalog_untag(s->cat, alias, err);
	pthread_rwlock_unlock(&s->gc_lock);
	return rc;
}

int ls_store_aliases_of(struct ls_store *s, const char *name, uint32_t version, char ***out,
			size_t *n, struct ls_err *err)
{
	pthread_rwlock_rdlock(&s->gc_lock);
	int rc = ls_catalog_aliases_of(s->cat, name, version, out, n, err);
	pthread_rwlock_unlock(&s->gc_lock);
	return rc;
}

static int ls_verify_record(struct ls_store *s, const Lorastore__VersionRecord *rec,
			    struct ls_err *err)
{
	char path[PATH_MAX];
	if (rec->digest.len != LS_DIGEST_LEN)
		return ls_err_set(err, LS_E_CATALOG, "%s@%u: record has no digest", rec->name,
				  rec->version);
	ls_store_blob_path(s, rec->digest.data, path, sizeof(path));
	int fd;
	struct ls_blob_header hdr;
	int rc = ls_blob_open(path, rec->digest.data, &fd, &hdr, err);
	if (rc)
		return rc;
	rc = ls_blob_verify(fd, path, &hdr, 1, err);
	close(fd);
	return rc;
}

struct ls_verify_walk {
	const char *name;              /* only this name, or NULL */
	uint32_t version;              /* only this version, or 0 */
	size_t n;
	Lorastore__VersionRecord **recs;
	int rc;
};

static int ls_collect_record(void *ud, const Lorastore__VersionRecord *rec)
{
	struct ls_verify_walk *w = ud;
	if (w->name && strcmp(w->name, rec->name) != 0)
		return 0;
	if (w->version && w->version != rec->version)
		return 0;
	Lorastore__VersionRecord **r = realloc(w->recs, (w->n + 1) * sizeof(*r));
	if (!r || !(r[w->n] = ls_record_copy(rec))) {
		if (r)
			w->recs = r;
		w->rc = -ENOMEM;
		return 1;
	}
	w->recs = r;
	w->n++;
	return 0;
}

int ls_store_verify(struct ls_store *s, const char *ref, ls_verify_fn fn, void *ud, size_t *bad,
		    struct ls_err *err)
{
	char name[LS_NAME_MAX + 1];
	struct ls_verify_walk w = {0};
	*bad = 0;
	if (ref && ls_alias_valid(ref)) {
		/* An alias: the version it points at. */
		Lorastore__VersionRecord *rec;
		int rc = ls_store_lookup(s, ref, &rec, err);
		if (rc)
			return rc;
		snprintf(name, sizeof(name), "%s", rec->name);
		w.version = rec->version;
		w.name = name;
		lorastore__version_record__free_unpacked(rec, NULL);
	} else if (ref) {
		int rc = ls_ref_parse(ref, name, &w.version, err);
		if (rc)
			return rc;
		w.name = name;
	}
	/* Collect first: the read transaction stays short while blobs are hashed. */
	pthread_rwlock_rdlock(&s->gc_lock);
	int rc = ls_catalog_walk(s->cat, ls_collect_record, &w, err);
	pthread_rwlock_unlock(&s->gc_lock);
	if (rc == 0 && w.rc)
		rc = ls_err_set(err, w.rc, "out of memory");
	if (rc == 0 && ref && w.n == 0)
		rc = ls_err_set(err, LS_E_NOT_FOUND, "%s: no such adapter or version", ref);
	for (size_t i = 0; i < w.n; i++) {
		if (rc == 0) {
			struct ls_err one;
			ls_err_clear(&one);
			int vrc = ls_verify_record(s, w.recs[i], &one);
			if (vrc)
				(*bad)++;
			if (fn)
				fn(ud, w.recs[i], vrc, vrc ? one.msg : "ok");
		}
		lorastore__version_record__free_unpacked(w.recs[i], NULL);
	}
	free(w.recs);
	return rc;
}
