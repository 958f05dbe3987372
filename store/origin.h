/*
 * The origin: an S3-compatible object store that every node's store imports
 * into and pulls from, so that versions and digests are the same on every
 * node.  It sits behind the store's door (store.h): an import publishes
 * through it before the store acknowledges it, and a lookup of a version the
 * node does not have pulls it, so neither the daemon's residency nor its
 * requests know where a blob came from.
 *
 * Layout under s3://BUCKET/PREFIX/:
 *   blobs/<sha256 hex>.blob       the blob file as it is (blob.h): immutable,
 *                                 self-describing, checked on every pull
 *   versions/<name>@<%010u>       an OriginVersion (lorastore.proto): the
 *                                 version's record, digest included; created
 *                                 with If-None-Match: * so that one version
 *                                 number is given once across the fleet
 * '@' never appears in a name, so the versions of a name are exactly the keys
 * beginning with "versions/<name>@", and ten digits sort them by number: the
 * latest version is the last key of that listing.
 *
 * Import with an origin: the blob is written locally, uploaded when the
 * origin lacks it, then the version record is created as the origin's latest
 * + 1 (or the local latest + 1, when higher); a node that loses the race
 * (412) looks again and takes the next number.  Only then does the local
 * catalog commit the version, with that number.  A crash in between leaves
 * a version in the origin that the node pulls back when asked.
 *
 * Pull: the record is read, the blob downloaded into the store's tmp/ on the
 * calling thread (a worker of the daemon), its header, SHA-256 digest,
 * checksums and manifest checked against the record before it is renamed
 * into blobs/ and the version committed: a cut, truncated or tampered
 * download leaves nothing visible, is counted, and is tried again by the next
 * request.  Concurrent pulls of one version share one download.
 *
 * "NAME" (latest) asks the origin for newer versions at most once per TTL;
 * when the origin cannot be reached, the local versions keep being served.
 */
#ifndef LS_ORIGIN_H
#define LS_ORIGIN_H

#include <stdbool.h>
#include <stdint.h>

#include "ls_error.h"
#include "ls_name.h"
#include "s3.h"

struct ls_origin;
struct ls_store;

struct ls_origin_config {
	struct ls_s3_config s3;
	const char *prefix;        /* inside the bucket; "" or NULL for none */
	int64_t ttl_ms;            /* how long a look at the origin holds for "NAME"; 0: 5,000 */
};

/*
 * Split "s3://BUCKET[/PREFIX]" into bucket and prefix (no leading or
 * trailing '/'): 0, or -EINVAL with a message.
 */
int ls_origin_parse_url(const char *url, char *bucket, size_t bucket_len, char *prefix,
			size_t prefix_len, struct ls_err *err);

/* An origin client (nothing is asked of the server yet): 0, -EINVAL, -ENOMEM. */
int ls_origin_open(const struct ls_origin_config *cfg, struct ls_origin **out,
		   struct ls_err *err);
void ls_origin_close(struct ls_origin *o);

/* "s3://BUCKET/PREFIX at ENDPOINT". */
const char *ls_origin_label(const struct ls_origin *o);

/* The bucket is there and the credentials are accepted (a listing of the prefix). */
int ls_origin_check(struct ls_origin *o, struct ls_err *err);

struct ls_origin_stats {
	struct ls_s3_counters s3;
	uint64_t pulls;            /* versions pulled into the catalog */
	uint64_t pull_bytes;       /* bytes of blobs downloaded */
	uint64_t pulls_in_flight;
	uint64_t refused;          /* downloads refused: digest, checksum, manifest or record */
	uint64_t published;        /* versions this node created in the origin */
	uint64_t uploaded_bytes;   /* bytes of blobs this node uploaded */
	uint64_t cache_bytes;      /* pulled blobs on disk (ls_origin_cache_bytes) */
};
void ls_origin_stats(struct ls_origin *o, struct ls_origin_stats *out);

/*
 * Attach an origin to a store, which owns it from then on (closed with the
 * store).  Call before the store is shared between threads.
 */
void ls_store_set_origin(struct ls_store *s, struct ls_origin *o);

/* The store's origin, or NULL. */
struct ls_origin *ls_store_origin(struct ls_store *s);

/*
 * Push the versions of ref ("name": every version here; "name@N": one) into
 * the origin under their own numbers: versions imported before the store
 * had an origin, or while it was away.  *pushed counts those uploaded,
 * *present those the origin had with the same digest.  0, LS_E_NOT_FOUND,
 * -EEXIST (the origin has that number with another digest: another node
 * took it; import the files again for a new number), LS_E_ORIGIN (also: no
 * origin configured).
 */
int ls_store_push(struct ls_store *s, const char *ref, uint32_t *pushed, uint32_t *present,
		  struct ls_err *err);

/* What a trim of the pulled blobs did. */
struct ls_trim_result {
	uint64_t cache_bytes;      /* bytes of pulled blobs on disk after it (a blob once) */
	uint64_t freed_bytes;      /* bytes of the blobs it removed */
	size_t n;                  /* versions it removed from the catalog */
	struct ls_trimmed {
		uint64_t generation;
		char name[LS_NAME_MAX + 1];
		uint32_t version;
	} *versions;               /* malloc'ed; free() it */
};

/*
 * The disk cache of pulled blobs: remove pulled versions here (catalog
 * entries, ref files, and their blobs once no version uses them; the
 * origin keeps them, and a later request pulls them again), the blobs
 * used least recently first, until the pulled blobs total at most budget
 * bytes.  A blob is kept when a version using it is in keep (sorted
 * generations: resident, loading or leased), was imported here, or has an
 * alias.  Use is an open of the blob through the store's door (every load)
 * or its pull; before any since the store opened, the blob file's time.
 * budget UINT64_MAX only counts.  0, or the catalog's errors.
 */
int ls_store_trim_pulled(struct ls_store *s, uint64_t budget, const uint64_t *keep,
			 size_t n_keep, struct ls_trim_result *out, struct ls_err *err);

/* Bytes of pulled blobs on disk as of the last trim, and pulled since. */
uint64_t ls_origin_cache_bytes(struct ls_origin *o);

/* The store's door was opened on the blob of digest: it is in use now (store.c calls it). */
void ls_origin_touch(struct ls_origin *o, const uint8_t *digest);

/* A version the origin has; here: whether this store's catalog has it too. */
typedef int (*ls_origin_entry_fn)(void *ud, const char *name, uint32_t version, bool here);

/*
 * One page of the origin's versions whose name begins with prefix, after
 * cursor ("name@version" of the previous page's last, or NULL), at most
 * limit.  next gets the cursor of the next page, or "" (at least
 * LS_NAME_MAX + 16 bytes).  Nothing is downloaded: the names and numbers
 * are the keys'.  0, or LS_E_ORIGIN.
 */
int ls_store_origin_list(struct ls_store *s, const char *prefix, const char *cursor,
			 size_t limit, ls_origin_entry_fn fn, void *ud, char *next,
			 struct ls_err *err);

#endif
