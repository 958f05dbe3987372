/*
 * The catalog: an LMDB environment that maps adapter names to versions and
 * versions to their records.
 *
 * Databases inside the environment:
 *   "meta"      "schema" -> u32 (LS_CATALOG_SCHEMA), "next_generation" -> u64
 *   "names"     name -> NameRecord (protobuf)
 *   "versions"  name '\0' version(u32 big-endian) -> VersionRecord (protobuf)
 *   "digests"   SHA-256 digest -> u32 little-endian: the versions using that blob
 *   "aliases"   alias ("name:tag") -> key of "versions" (the version it names)
 *   "tagged"    key of "versions" -> alias, one entry per alias (MDB_DUPSORT)
 * Keys of "versions" sort by name and then by version, so a prefix listing is
 * one cursor walk.  Every write is one LMDB write transaction (LMDB allows one
 * writer at a time); read transactions last only as long as one call.  When a
 * write fails with MDB_MAP_FULL the map is doubled and the transaction redone.
 *
 * Records returned are protobuf-c messages owned by the caller: free them with
 * lorastore__version_record__free_unpacked(rec, NULL).
 */
#ifndef LS_CATALOG_H
#define LS_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lorastore.pb-c.h"
#include "ls_error.h"
#include "ls_name.h"

/* Version of the catalog's layout; a catalog with another one is refused. */
#define LS_CATALOG_SCHEMA 1

struct ls_catalog;

/*
 * Open (creating if needed) the catalog environment in directory dir, which
 * must exist.  Returns 0, LS_E_CATALOG_SCHEMA for a catalog of another schema,
 * LS_E_CATALOG for an LMDB failure, or -errno.
 */
int ls_catalog_open(const char *dir, struct ls_catalog **out, struct ls_err *err);
void ls_catalog_close(struct ls_catalog *cat);

/*
 * Called inside ls_catalog_add's write transaction once the version and
 * generation are known, before the commit: the store writes the blob's ref
 * file here.  A non-zero return aborts the transaction and is returned.
 */
typedef int (*ls_catalog_prepare_fn)(void *ud, const Lorastore__VersionRecord *rec,
				     struct ls_err *err);

/*
 * Add a new version of rec->name.  The caller fills every field but version,
 * generation and schema, which this call assigns (the next version of the
 * name, never reused; the next generation of the store) and writes back into
 * rec.  prepare may be NULL.  Returns 0, LS_E_NAME_INVALID, LS_E_CATALOG or
 * prepare's error.
 */
int ls_catalog_add(struct ls_catalog *cat, Lorastore__VersionRecord *rec,
		   ls_catalog_prepare_fn prepare, void *ud, struct ls_err *err);

/*
 * ls_catalog_add with the version number given (one an origin gave,
 * store/origin.h) rather than the name's next: -EEXIST when the name has
 * that version already; the name's next version moves past it.
 */
int ls_catalog_add_version(struct ls_catalog *cat, Lorastore__VersionRecord *rec,
			   uint32_t version, ls_catalog_prepare_fn prepare, void *ud,
			   struct ls_err *err);

/* What a check returns to add nothing and answer with the name's latest version. */
#define LS_CATALOG_SAME 1

/*
 * Called inside ls_catalog_add_checked's write transaction before anything
 * is written, with the name's latest version (NULL when it has none): 0
 * adds rec, LS_CATALOG_SAME (only with a latest) adds nothing, any other
 * value aborts and is returned.  It must not call back into the catalog.
 */
typedef int (*ls_catalog_check_fn)(void *ud, const Lorastore__VersionRecord *latest,
				   const Lorastore__VersionRecord *rec, struct ls_err *err);

/*
 * ls_catalog_add with a check.  When the check answers LS_CATALOG_SAME,
 * nothing is written, rec is left as it was and the latest version's
 * record goes to *same (the caller frees it; freed here when same is NULL).
 * Otherwise *same is NULL.
 */
int ls_catalog_add_checked(struct ls_catalog *cat, Lorastore__VersionRecord *rec,
			   ls_catalog_check_fn check, ls_catalog_prepare_fn prepare, void *ud,
			   Lorastore__VersionRecord **same, struct ls_err *err);

/* How many versions use the blob of digest (len bytes): 0 when none. */
int ls_catalog_digest_refs(struct ls_catalog *cat, const uint8_t *digest, size_t len,
			   uint32_t *out, struct ls_err *err);

/*
 * Point alias ("name:tag", ls_alias_valid) at name@version (version 0: the
 * name's latest version, resolved now): created, or moved from where it
 * pointed, in one transaction.  The version it names goes to *out (may be
 * NULL).  Returns 0, LS_E_NAME_INVALID, LS_E_NOT_FOUND or LS_E_CATALOG.
 */
int ls_catalog_tag(struct ls_catalog *cat, const char *alias, const char *name,
		   uint32_t version, Lorastore__VersionRecord **out, struct ls_err *err);

/* Remove alias: 0, LS_E_NOT_FOUND or LS_E_CATALOG. */
int ls_catalog_untag(struct ls_catalog *cat, const char *alias, struct ls_err *err);

/* The version alias points at: 0 and *out, LS_E_NOT_FOUND, LS_E_NAME_INVALID, LS_E_CATALOG. */
int ls_catalog_get_alias(struct ls_catalog *cat, const char *alias,
			 Lorastore__VersionRecord **out, struct ls_err *err);

/*
 * The aliases pointing at name@version, in their order: *out is a malloc'ed
 * array of *n malloc'ed strings (free each, then the array).
 */
int ls_catalog_aliases_of(struct ls_catalog *cat, const char *name, uint32_t version,
			  char ***out, size_t *n, struct ls_err *err);

/*
 * Insert a record exactly as given (version, generation and all), as a
 * catalog rebuild does; the name's next version and the store's next
 * generation move past it.  Returns 0, or LS_E_CATALOG when that name and
 * version already exist.
 */
int ls_catalog_restore(struct ls_catalog *cat, const Lorastore__VersionRecord *rec,
		       struct ls_err *err);

/*
 * Look up name@version, or the latest version of name when version is 0.
 * Returns 0 and *out, LS_E_NOT_FOUND, or LS_E_CATALOG.
 */
int ls_catalog_get(struct ls_catalog *cat, const char *name, uint32_t version,
		   Lorastore__VersionRecord **out, struct ls_err *err);

/* Called for each record of a listing or walk; non-zero stops the walk. */
typedef int (*ls_catalog_record_fn)(void *ud, const Lorastore__VersionRecord *rec);

/*
 * List the versions whose name starts with prefix ("" for all), in name then
 * version order, starting after the position (after_name, after_version)
 * (after_name NULL for the start) and calling fn for at most limit records.
 * *more says whether records remain after the last one given.
 * The records passed to fn are freed when fn returns.
 */
int ls_catalog_list(struct ls_catalog *cat, const char *prefix, const char *after_name,
		    uint32_t after_version, size_t limit, ls_catalog_record_fn fn, void *ud,
		    bool *more, struct ls_err *err);

/*
 * Delete name@version, or every version of name when version is 0, in one
 * transaction; nothing is deleted (LS_E_ALIASED) when an alias points at a
 * version it would delete.  fn (may be NULL) is called with each deleted record after the
 * commit.  Version numbers of a name are not reused after a deletion.
 * Returns 0 or LS_E_NOT_FOUND or LS_E_CATALOG.
 */
int ls_catalog_delete(struct ls_catalog *cat, const char *name, uint32_t version,
		      ls_catalog_record_fn fn, void *ud, struct ls_err *err);

/*
 * Walk every version record in one read transaction (gc and verify use it).
 * fn must not call back into the catalog.
 */
int ls_catalog_walk(struct ls_catalog *cat, ls_catalog_record_fn fn, void *ud,
		    struct ls_err *err);

struct ls_catalog_stats {
	uint64_t names;            /* names with at least one version */
	uint64_t versions;
	uint64_t next_generation;
	uint64_t map_size;         /* bytes of the LMDB map */
};

int ls_catalog_stats(struct ls_catalog *cat, struct ls_catalog_stats *out, struct ls_err *err);

/* The number of versions, in O(1) (LMDB keeps the count): no walk. */
int ls_catalog_count_versions(struct ls_catalog *cat, uint64_t *out, struct ls_err *err);

#endif
