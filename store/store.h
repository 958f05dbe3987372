/*
 * The adapter store: a state directory holding the catalog and the blobs.
 *
 *   STATE/lock        held with flock(LOCK_EX) by the one process that owns it
 *   STATE/catalog/    the LMDB catalog (catalog.h)
 *   STATE/blobs/      <sha256 hex>.blob, content-addressed (blob.h)
 *   STATE/refs/       <generation>.ref: name and version of each version, so
 *                     the catalog can be rebuilt from this directory alone
 *   STATE/tmp/        files of imports in progress
 *
 * Crash safety of an import: the blob is written under tmp/, fsync'ed and
 * renamed into blobs/ (directory fsync'ed); then one LMDB write transaction
 * assigns the version, writes the ref file the same way, and commits.  A crash
 * before the commit leaves no new version (only files that gc removes); after
 * it, a complete one.
 *
 * Thread safety: a store may be used from several threads at once.  gc
 * excludes imports while it runs, so that it never removes a blob an import is
 * about to commit.
 */
#ifndef LS_STORE_H
#define LS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "blob.h"
#include "catalog.h"
#include "lorastore.pb-c.h"
#include "ls_error.h"

struct ls_store;

/*
 * Open the state directory dir, creating it and its parts if needed.
 * Returns 0, LS_E_BUSY when another process holds it, the catalog's errors,
 * or -errno.
 */
int ls_store_open(const char *dir, struct ls_store **out, struct ls_err *err);
void ls_store_close(struct ls_store *store);

struct ls_import_opts {
	enum ls_convert convert;   /* dtype conversion (default: keep) */
	bool allow_nonfinite;      /* accept NaN and infinity */
	const char *source;        /* recorded as the version's source; may be NULL */
	bool allow_new_base;       /* accept another base model or other modules than the
				      name's latest version has */
};

/*
 * Largest packed version record (config, scales, tensor table) an import
 * may make.  Every reply that carries a record (the import's own, show, a
 * page of a listing) then fits the protocol's 16 MiB frame.
 */
#define LS_RECORD_MAX ((size_t)4 << 20)

/*
 * Whether rec, packed, fits LS_RECORD_MAX: 0, or LS_E_ADAPTER_LIMIT with a
 * message naming label and what makes the record large.
 */
int ls_record_check_size(const Lorastore__VersionRecord *rec, const char *label,
			 struct ls_err *err);

/*
 * Import an adapter from open file descriptors: config_fd is its
 * adapter_config.json (-1 when it has none, which is an error), st_fd its
 * safetensors file.  label names the adapter in messages.  The new version's
 * record goes to *out when out is not NULL (free with
 * lorastore__version_record__free_unpacked).
 *
 * When the name's latest version has the same digest, no version is added:
 * *out is that version and *unchanged (may be NULL) is set.  A new version
 * whose base model, or whose set of LoRA modules with their input and output
 * sizes, differs from the latest version's is refused (LS_E_BASE_CHANGED)
 * unless opts->allow_new_base.
 *
 * Errors: those of ls_adapter_analyze, LS_E_NAME_INVALID, LS_E_ADAPTER_LIMIT
 * (a record over LS_RECORD_MAX, found before the blob is written),
 * LS_E_BASE_CHANGED, the catalog's, -errno.  On any error the catalog is
 * unchanged.
 */
int ls_store_import(struct ls_store *store, const char *name, int config_fd, int st_fd,
		    const char *label, const struct ls_import_opts *opts,
		    Lorastore__VersionRecord **out, bool *unchanged, struct ls_err *err);

/*
 * Look up a reference ("name", "name@N" or an alias "name:tag");
 * LS_E_NOT_FOUND when there is no such version.
 */
int ls_store_lookup(struct ls_store *store, const char *ref, Lorastore__VersionRecord **out,
		    struct ls_err *err);

/*
 * One page of the versions whose name begins with prefix, after the cursor
 * (a "name@version" returned by the previous page, or NULL for the first).
 * When more remain, the cursor of the next page is written to next (at least
 * LS_NAME_MAX + 16 bytes), else next is set to "".  fn may end the page
 * before limit by returning LS_LIST_PAGE_FULL for a record it does not take
 * (the page's bytes are spent): that record begins the next page.  Any other
 * non-zero return stops the listing with that code.
 */
#define LS_LIST_PAGE_FULL 1
int ls_store_list(struct ls_store *store, const char *prefix, const char *cursor,
		  size_t limit, ls_catalog_record_fn fn, void *ud, char *next,
		  struct ls_err *err);

/* The generations a delete removed, exactly those its transaction removed. */
struct ls_deleted_gens {
	uint64_t *gens;        /* malloc'ed; free() it */
	size_t n;              /* versions deleted */
	uint64_t blob_bytes;   /* bytes of their blob files, a shared blob once */
	uint64_t freed_bytes;  /* bytes of the blob files removed (no version used them) */
	size_t blobs_freed;
	/* With an origin (origin.h): its version records the delete removed, or why not. */
	uint32_t origin_versions;
	int origin_rc;         /* 0, or the origin's error (origin_error says it) */
	char origin_error[LS_ERR_MSG_MAX];
};

/*
 * Delete a version ("name@N") or every version of a name ("name").  The ref
 * files go at once, and the blob of each deleted version when no version
 * uses it any more (a crash in between leaves a blob that gc removes).
 * With an origin, the versions' records go from the origin too (also those
 * this node never pulled; the blobs stay there, immutable, for versions
 * that share them): when the origin cannot do it, the local delete stands
 * and out->origin_rc says why (run the delete again).  A version only the
 * origin has is deleted there.
 * Memory holding a deleted version is the daemon's to free.  With out
 * non-NULL, the generations removed are listed there (the daemon drops
 * their resident copies: a version imported while the delete waited is in
 * the list only if this delete removed it), with the bytes removed.
 * Nothing is deleted (LS_E_ALIASED) when an alias points at a version.
 */
int ls_store_delete(struct ls_store *store, const char *ref, struct ls_deleted_gens *out,
		    struct ls_err *err);

/*
 * Point alias at ref ("name" for the latest version, resolved now, or
 * "name@N"); the version goes to *out (may be NULL).  Aliases move
 * atomically.  Errors: LS_E_NAME_INVALID, LS_E_NOT_FOUND, the catalog's.
 */
int ls_store_tag(struct ls_store *store, const char *alias, const char *ref,
		 Lorastore__VersionRecord **out, struct ls_err *err);

/* Remove alias: 0, LS_E_NOT_FOUND, LS_E_NAME_INVALID or the catalog's errors. */
int ls_store_untag(struct ls_store *store, const char *alias, struct ls_err *err);

/* The aliases pointing at name@version (ls_catalog_aliases_of). */
int ls_store_aliases_of(struct ls_store *store, const char *name, uint32_t version,
			char ***out, size_t *n, struct ls_err *err);

/*
 * The store's one door to a blob for a reader outside it (the daemon's
 * loads): open the blob of a content digest, its header, digest and
 * manifest checked as ls_blob_open does.  With direct set the descriptor
 * reads with O_DIRECT where the file system allows it, and *direct_refused
 * says where it did not.  Returns 0 with *fd (the caller closes it) and
 * *hdr, LS_E_BLOB_MISSING, or what the checks return, with err.  The caller
 * never learns where the blob is: a later store may fetch it from elsewhere
 * first, and keep it while the descriptor is open.
 */
int ls_store_blob_open(struct ls_store *store, const uint8_t digest[LS_DIGEST_LEN], bool direct,
		       int *fd, struct ls_blob_header *hdr, bool *direct_refused,
		       struct ls_err *err);

/* Whether the catalog says it has no name@version (false when it cannot be read). */
bool ls_store_version_gone(struct ls_store *store, const char *name, uint32_t version);

/* Result of verifying one version: code 0 when its blob is intact. */
typedef void (*ls_verify_fn)(void *ud, const Lorastore__VersionRecord *rec, int code,
			     const char *message);

/*
 * Verify the blobs of every version (ref NULL), of one name, or of one
 * name@version: header, manifest and data checksums and the SHA-256 digest.
 * fn is called for each version.  *bad counts the versions that failed.
 */
int ls_store_verify(struct ls_store *store, const char *ref, ls_verify_fn fn, void *ud,
		    size_t *bad, struct ls_err *err);

struct ls_gc_stats {
	size_t blobs_removed;        /* blobs no version references */
	uint64_t bytes_removed;
	size_t refs_removed;         /* ref files of versions not in the catalog */
	size_t temps_removed;        /* files left in tmp/ by interrupted imports */
};

/* Remove what no version references and what interrupted imports left. */
int ls_store_gc(struct ls_store *store, struct ls_gc_stats *stats, struct ls_err *err);

struct ls_rebuild_stats {
	size_t versions;             /* versions restored */
	size_t skipped;              /* ref files whose blob is missing or corrupt */
};

/*
 * Build a new catalog from refs/ and blobs/ and put it in place of the old
 * one (which is kept until the new one is complete).
 */
int ls_store_rebuild(struct ls_store *store, struct ls_rebuild_stats *stats, struct ls_err *err);

/*
 * A version as the PEFT directory it came from (export.c): the text of
 * adapter_config.json, and the head of adapter_model.safetensors (its 8-byte
 * length and JSON header) after which come the data of rec->tensors, in
 * that order, back to back (tensor i: rec->tensors[i]->length bytes, found
 * at its offset in the version's data region).  Imported again, the two
 * files give the same digest (the dtype and the metadata are the stored
 * ones: a version converted at import comes out converted).
 */
struct ls_export {
	Lorastore__VersionRecord *rec;
	char *config_json;
	uint8_t *head;
	size_t head_len;
};

/* Export ref: 0, or the errors of ls_store_lookup and ls_blob_open, -ENOMEM. */
int ls_store_export(struct ls_store *store, const char *ref, struct ls_export *out,
		    struct ls_err *err);
void ls_export_free(struct ls_export *e);

/* A deep copy of a record (free with lorastore__version_record__free_unpacked). */
Lorastore__VersionRecord *ls_record_copy(const Lorastore__VersionRecord *rec);

/* The number of versions in the catalog, in O(1). */
int ls_store_count_versions(struct ls_store *store, uint64_t *out, struct ls_err *err);

/*
 * For the store's own tests and benchmarks, which look behind its door: the
 * catalog, and where the blob of a digest is (into buf, PATH_MAX bytes).
 */
struct ls_catalog *ls_store_catalog(struct ls_store *store);
void ls_store_blob_path(const struct ls_store *store, const uint8_t *digest, char *buf,
			size_t len);

#endif
