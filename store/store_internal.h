/* What store.c and store_gc.c share: the store's state. */
#ifndef LS_STORE_INTERNAL_H
#define LS_STORE_INTERNAL_H

#include <pthread.h>

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
};

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
