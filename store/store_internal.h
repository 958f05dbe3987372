/* What store.c and store_gc.c share: the store's state. */
#ifndef LS_STORE_INTERNAL_H
#define LS_STORE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>

#include "blob.h"
#include "catalog.h"

struct ls_store {
	char *dir;
	int lock_fd;                 /* STATE/lock, flock'ed for the store's life */
	int blobs_fd, refs_fd, tmp_fd;
	struct ls_catalog *cat;
	/*
	 * Imports hold it shared from their first temporary file to their commit;
	 * gc and rebuild hold it exclusively, so they never see half an import.
	 */
	pthread_rwlock_t gc_lock;
	/*
	 * Held around an import's catalog write and around a delete from its
	 * catalog write to the unlink of the blobs no version uses any more, so
	 * that an import never commits a version whose blob a delete removed.
	 */
	pthread_mutex_t digest_lock;
	struct ls_origin *origin;    /* NULL, or the object store every import goes to (origin.h) */
};

/* What an import's catalog write is given: the store, and what its check allows. */
struct ls_import_check {
	struct ls_store *s;
	bool allow_new_base;
};

/*
 * An import's check of rec against the name's latest version (NULL: none):
 * 0, LS_CATALOG_SAME for the same content, LS_E_BASE_CHANGED.  ud is a
 * struct ls_import_check.
 */
int ls_import_check(void *ud, const Lorastore__VersionRecord *latest,
		    const Lorastore__VersionRecord *rec, struct ls_err *err);

/* Inside a catalog write: the version's ref file beside the blobs (ud: struct ls_import_check). */
int ls_store_write_ref(void *ud, const Lorastore__VersionRecord *rec, struct ls_err *err);

/*
 * Bring what the origin has of name into the catalog (origin.c): version
 * N, or with version 0 the origin's latest when it is newer than
 * local_latest (0: none here) and the origin was not asked within the TTL.
 * 0, LS_E_NOT_FOUND (neither here nor there), LS_E_ORIGIN, LS_E_CORRUPT,
 * or the catalog's errors.  Called without the gc lock held.
 */
int ls_origin_sync(struct ls_store *s, const char *name, uint32_t version, uint32_t local_latest,
		   struct ls_err *err);

/*
 * ls_store_delete of this store alone (the origin keeps what it has):
 * name@version, every version of name when version is 0.
 */
int ls_store_delete_here(struct ls_store *s, const char *name, uint32_t version,
			 struct ls_deleted_gens *out, struct ls_err *err);

/*
 * Delete name@version (every version of name when version is 0) from the
 * origin: its version records.  *n: how many there were.  0, or LS_E_ORIGIN.
 */
int ls_origin_delete(struct ls_store *s, const char *name, uint32_t version, uint32_t *n,
		     struct ls_err *err);

/*
 * Create rec (blob in blobs/, version 0) in the origin: the blob uploaded
 * when the origin lacks it, then the version record with the next number
 * the fleet has not given, written to *version.  LS_CATALOG_SAME when the
 * origin's latest version has the same content (*same: its record, with
 * *version).  Called with the gc lock held shared.
 */
int ls_origin_publish(struct ls_store *s, Lorastore__VersionRecord *rec,
		      struct ls_import_check *check, uint32_t *version,
		      Lorastore__VersionRecord **same, struct ls_err *err);

/*
 * A record whose content fields point into the manifest and header (keep
 * them while it is used), with tensors of its own (the manifest's dtype
 * names as Dtype): free them with ls_record_from_manifest_free.  The caller
 * sets name, version, generation, time and source.  0, or -ENOMEM.
 */
int ls_record_from_manifest(Lorastore__VersionRecord *rec, const Lorastore__BlobManifest *m,
			    const struct ls_blob_header *hdr);
void ls_record_from_manifest_free(Lorastore__VersionRecord *rec);

/* Scale of modules without a pattern: alpha / r, or alpha / sqrt(r) with rslora. */
double ls_scale_of_config(const Lorastore__AdapterConfig *config);

#endif
