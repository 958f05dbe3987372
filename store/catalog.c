/*
 * The catalog on LMDB; catalog.h describes the databases and their keys.
 *
 * Threads.  The environment is opened with MDB_NOTLS, so a read transaction
 * belongs to its handle rather than to the thread that began it, and one
 * struct ls_catalog may be shared by the threads of a worker pool.  Every
 * transaction of ours begins and ends inside one call, while the call holds
 * map_lock shared.  LMDB allows mdb_env_set_mapsize only while no transaction
 * of the process is open, so a writer that hit MDB_MAP_FULL first aborts its
 * transaction and drops its shared hold, then doubles the map while holding
 * map_lock exclusively: at that moment no other transaction of ours is open.
 * The write is then redone from the start, in a new transaction.
 *
 * Callbacks.  ls_catalog_walk calls its callback inside the read transaction,
 * and ls_catalog_add its prepare callback inside the write transaction, both
 * under map_lock; those must not call back into the catalog, since a call
 * from them could wait forever for a map growth that waits for them.
 * ls_catalog_list and ls_catalog_delete call theirs after the transaction
 * has ended, and those may use the catalog.  A non-zero return of a list or walk callback
 * stops the listing and becomes the result of the call; the result of a
 * delete callback only stops the calls, since the deletion is committed.
 *
 * Integers in "meta" are fixed-width little-endian; versions in the keys of
 * "versions" are big-endian so that they sort numerically.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np */
#endif
#include "catalog.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ls_types.h"

/* Map size of a new environment, in bytes; it doubles whenever it is full. */
#define LS_CATALOG_MAP_INITIAL ((size_t)64 << 20)
#define LS_CATALOG_MAXDBS 8

/* A key of "versions": the name, a NUL, a big-endian 32-bit version. */
#define LS_VKEY_MAX (LS_NAME_MAX + 1 + 4)

static const char ls_meta_schema[] = "schema";
static const char ls_meta_next_generation[] = "next_generation";
/* Set once "digests" counts every version (catalogs made before it existed count at open). */
static const char ls_meta_digests_counted[] = "digests_counted";

struct ls_catalog {
	MDB_env *env;
	MDB_dbi meta;
	MDB_dbi names;
	MDB_dbi versions;
	MDB_dbi digests;   /* digest -> u32 LE: how many versions use that blob */
	MDB_dbi aliases;   /* alias -> key of "versions" */
	MDB_dbi tagged;    /* key of "versions" -> alias (several: MDB_DUPSORT) */
	/* Held shared around every transaction, exclusively to resize the map. */
	pthread_rwlock_t map_lock;
};

/* A NameRecord, decoded. */
struct ls_name_state {
	bool exists;
	uint32_t next_version;
	uint32_t latest_version;
	uint32_t version_count;
};

/* ---- errors ---------------------------------------------------------- */

/* An LMDB failure as a store error: -ENOMEM for lack of memory, else LS_E_CATALOG. */
static int cat_mdb_fail(struct ls_err *err, int rc, const char *op)
{
	int code = rc == ENOMEM ? -ENOMEM : LS_E_CATALOG;
	return ls_err_set(err, code, "catalog: %s: %s", op, mdb_strerror(rc));
}

/*
 * The same inside the body of a write: MDB_MAP_FULL goes back unchanged to
 * cat_write, which grows the map and redoes the write.
 */
static int cat_write_fail(struct ls_err *err, int rc, const char *op)
{
	if (rc == MDB_MAP_FULL)
		return MDB_MAP_FULL;
	return cat_mdb_fail(err, rc, op);
}

/* ---- encodings ------------------------------------------------------- */

static void le_put(uint8_t *p, uint64_t v, size_t width)
{
	for (size_t i = 0; i < width; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t le_get(const uint8_t *p, size_t width)
{
	uint64_t v = 0;
	for (size_t i = 0; i < width; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* Fill buf (LS_VKEY_MAX bytes) with the key of name@version; returns its length. */
static size_t vkey_make(uint8_t *buf, const char *name, size_t len, uint32_t version)
{
	memcpy(buf, name, len);
	buf[len] = 0;
	buf[len + 1] = (uint8_t)(version >> 24);
	buf[len + 2] = (uint8_t)(version >> 16);
	buf[len + 3] = (uint8_t)(version >> 8);
	buf[len + 4] = (uint8_t)version;
	return len + 5;
}

static uint32_t be32_get(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Split a key of "versions"; false when it is not name NUL version. */
static bool vkey_parse(const MDB_val *key, size_t *name_len, uint32_t *version)
{
	if (key->mv_size < 6)
		return false;
	const uint8_t *p = key->mv_data;
	size_t len = key->mv_size - 5;
	if (p[len] != 0 || memchr(p, 0, len) != NULL)
		return false;
	*name_len = len;
	*version = be32_get(p + len + 1);
	return true;
}

/* Order of LMDB's default comparison: bytes, then the shorter first. */
static int key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
	size_t n = alen < blen ? alen : blen;
	int c = memcmp(a, b, n);
	if (c != 0)
		return c;
	return alen < blen ? -1 : alen > blen;
}

/* A dtype name of a record written before the Dtype enum: read as Dtype, then gone. */
static Lorastore__Dtype cat_dtype_of(char **name, Lorastore__Dtype have)
{
	if (!*name || !**name)
		return have;
	Lorastore__Dtype d = (Lorastore__Dtype)ls_dtype_from_name(*name); /* "mixed": none */
	free(*name);
	*name = (char *)protobuf_c_empty_string;
	return d;
}

static void cat_record_dtypes(Lorastore__VersionRecord *rec)
{
	rec->dtype = cat_dtype_of(&rec->dtype_name, rec->dtype);
	for (size_t i = 0; i < rec->n_tensors; i++) {
		Lorastore__Tensor *t = rec->tensors[i];
		if (t) {
			t->dtype = cat_dtype_of(&t->dtype_name, t->dtype);
			t->source_dtype = cat_dtype_of(&t->source_dtype_name, t->source_dtype);
		}
	}
}

/* Decode the record stored under key, and check that it is the one the key names. */
static int version_decode(const MDB_val *key, const MDB_val *val,
			  Lorastore__VersionRecord **out, struct ls_err *err)
{
	size_t len;
	uint32_t version;
	if (!vkey_parse(key, &len, &version))
		return ls_err_set(err, LS_E_CATALOG,
				  "catalog: malformed key of %zu bytes in \"versions\"",
				  key->mv_size);
	const char *name = key->mv_data;
	Lorastore__VersionRecord *rec =
		lorastore__version_record__unpack(NULL, val->mv_size, val->mv_data);
	if (!rec)
		return ls_err_set(err, LS_E_CATALOG,
				  "catalog: the record of %.*s@%u (%zu bytes) cannot be decoded",
				  (int)len, name, version, val->mv_size);
	if (rec->version != version || !rec->name || strlen(rec->name) != len ||
	    memcmp(rec->name, name, len) != 0) {
		int rc = ls_err_set(err, LS_E_CATALOG,
				    "catalog: the record stored under %.*s@%u is %.*s@%u",
				    (int)len, name, version, LS_NAME_MAX,
				    rec->name ? rec->name : "", rec->version);
		lorastore__version_record__free_unpacked(rec, NULL);
		return rc;
	}
	/* Records written before tensor_bytes existed: the sum of their tensors. */
	if (rec->tensor_bytes == 0)
		for (size_t i = 0; i < rec->n_tensors; i++)
			rec->tensor_bytes += rec->tensors[i] ? rec->tensors[i]->length : 0;
	cat_record_dtypes(rec);
	*out = rec;
	return 0;
}

/* ---- transactions ---------------------------------------------------- */

/* Take over a map that another process has grown past ours. */
static int cat_adopt_map(struct ls_catalog *cat, struct ls_err *err)
{
	pthread_rwlock_wrlock(&cat->map_lock);
	int rc = mdb_env_set_mapsize(cat->env, 0);
	pthread_rwlock_unlock(&cat->map_lock);
	return rc ? cat_mdb_fail(err, rc, "adopt the grown map") : 0;
}

/* Double the map, unless another writer already grew it past seen bytes. */
static int cat_grow_map(struct ls_catalog *cat, size_t seen, struct ls_err *err)
{
	int ret = 0;
	pthread_rwlock_wrlock(&cat->map_lock);
	/* No transaction of ours is open now: every one holds map_lock shared. */
	MDB_envinfo info;
	mdb_env_info(cat->env, &info);
	if (info.me_mapsize <= seen) {
		if (seen > SIZE_MAX / 2) {
			ret = ls_err_set(err, LS_E_CATALOG,
					 "catalog: the map of %zu bytes is full and cannot grow", seen);
		} else {
			int rc = mdb_env_set_mapsize(cat->env, seen * 2);
			if (rc)
				ret = cat_mdb_fail(err, rc, "grow the map");
		}
	}
	pthread_rwlock_unlock(&cat->map_lock);
	return ret;
}

static int cat_read_begin(struct ls_catalog *cat, MDB_txn **txn, struct ls_err *err)
{
	for (;;) {
		pthread_rwlock_rdlock(&cat->map_lock);
		int rc = mdb_txn_begin(cat->env, NULL, MDB_RDONLY, txn);
		if (rc == 0)
			return 0;
		pthread_rwlock_unlock(&cat->map_lock);
		if (rc != MDB_MAP_RESIZED)
			return cat_mdb_fail(err, rc, "begin a read transaction");
		rc = cat_adopt_map(cat, err);
		if (rc)
			return rc;
	}
}

static void cat_read_end(struct ls_catalog *cat, MDB_txn *txn)
{
	mdb_txn_abort(txn);
	pthread_rwlock_unlock(&cat->map_lock);
}

/*
 * The body of a write: 0 to commit, MDB_MAP_FULL to grow the map and run the
 * body again in a new transaction, any other value to abort and return it.
 */
typedef int (*cat_body_fn)(struct ls_catalog *cat, MDB_txn *txn, void *arg,
			   struct ls_err *err);

static int cat_write(struct ls_catalog *cat, cat_body_fn body, void *arg, struct ls_err *err)
{
	for (;;) {
		pthread_rwlock_rdlock(&cat->map_lock);
		MDB_envinfo info;
		mdb_env_info(cat->env, &info);
		MDB_txn *txn;
		int rc = mdb_txn_begin(cat->env, NULL, 0, &txn);
		if (rc) {
			pthread_rwlock_unlock(&cat->map_lock);
			if (rc != MDB_MAP_RESIZED)
				return cat_mdb_fail(err, rc, "begin a write transaction");
			rc = cat_adopt_map(cat, err);
			if (rc)
				return rc;
			continue;
		}
		rc = body(cat, txn, arg, err);
		if (rc == 0) {
			/* Commit frees the transaction, whether it succeeds or not. */
			rc = mdb_txn_commit(txn);
			if (rc == 0) {
				pthread_rwlock_unlock(&cat->map_lock);
				return 0;
			}
			if (rc != MDB_MAP_FULL) {
				pthread_rwlock_unlock(&cat->map_lock);
				return cat_mdb_fail(err, rc, "commit");
			}
		} else {
			mdb_txn_abort(txn);
			if (rc != MDB_MAP_FULL) {
				pthread_rwlock_unlock(&cat->map_lock);
				return rc;
			}
		}
		pthread_rwlock_unlock(&cat->map_lock);
		rc = cat_grow_map(cat, info.me_mapsize, err);
		if (rc)
			return rc;
	}
}

/* ---- records --------------------------------------------------------- */

static int meta_read(struct ls_catalog *cat, MDB_txn *txn, const char *key, size_t width,
		     uint64_t *out, bool *found, struct ls_err *err)
{
	MDB_val k = {strlen(key), (void *)key};
	MDB_val v;
	*found = false;
	int rc = mdb_get(txn, cat->meta, &k, &v);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return cat_mdb_fail(err, rc, "read meta");
	if (v.mv_size != width)
		return ls_err_set(err, LS_E_CATALOG,
				  "catalog: meta \"%s\" holds %zu bytes instead of %zu", key,
				  v.mv_size, width);
	*out = le_get(v.mv_data, width);
	*found = true;
	return 0;
}

static int meta_write(struct ls_catalog *cat, MDB_txn *txn, const char *key, size_t width,
		      uint64_t value, struct ls_err *err)
{
	uint8_t buf[8];
	le_put(buf, value, width);
	MDB_val k = {strlen(key), (void *)key};
	MDB_val v = {width, buf};
	int rc = mdb_put(txn, cat->meta, &k, &v, 0);
	return rc ? cat_write_fail(err, rc, "write meta") : 0;
}

static int next_generation_read(struct ls_catalog *cat, MDB_txn *txn, uint64_t *out,
				struct ls_err *err)
{
	bool found;
	int rc = meta_read(cat, txn, ls_meta_next_generation, 8, out, &found, err);
	if (rc)
		return rc;
	if (!found || *out == 0)
		return ls_err_set(err, LS_E_CATALOG, "catalog: meta has no next_generation");
	return 0;
}

static int name_read(struct ls_catalog *cat, MDB_txn *txn, const char *name, size_t len,
		     struct ls_name_state *st, struct ls_err *err)
{
	memset(st, 0, sizeof(*st));
	MDB_val k = {len, (void *)name};
	MDB_val v;
	int rc = mdb_get(txn, cat->names, &k, &v);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return cat_mdb_fail(err, rc, "read a name");
	Lorastore__NameRecord *nr = lorastore__name_record__unpack(NULL, v.mv_size, v.mv_data);
	if (!nr)
		return ls_err_set(err, LS_E_CATALOG,
				  "catalog: the name record of %.*s (%zu bytes) cannot be decoded",
				  (int)len, name, v.mv_size);
	st->exists = true;
	st->next_version = nr->next_version;
	st->latest_version = nr->latest_version;
	st->version_count = nr->version_count;
	lorastore__name_record__free_unpacked(nr, NULL);
	return 0;
}

static int name_write(struct ls_catalog *cat, MDB_txn *txn, const char *name, size_t len,
		      const struct ls_name_state *st, struct ls_err *err)
{
	Lorastore__NameRecord nr;
	lorastore__name_record__init(&nr);
	nr.schema = LS_CATALOG_SCHEMA;
	nr.next_version = st->next_version;
	nr.latest_version = st->latest_version;
	nr.version_count = st->version_count;
	MDB_val k = {len, (void *)name};
	MDB_val v = {lorastore__name_record__get_packed_size(&nr), NULL};
	/* MDB_RESERVE lets protobuf-c pack straight into the page. */
	int rc = mdb_put(txn, cat->names, &k, &v, MDB_RESERVE);
	if (rc)
		return cat_write_fail(err, rc, "write a name");
	lorastore__name_record__pack(&nr, v.mv_data);
	return 0;
}

/* Store rec under its name and version; LS_E_CATALOG when they exist already. */
static int version_write(struct ls_catalog *cat, MDB_txn *txn,
			 const Lorastore__VersionRecord *rec, size_t len, struct ls_err *err)
{
	uint8_t kb[LS_VKEY_MAX];
	MDB_val k = {vkey_make(kb, rec->name, len, rec->version), kb};
	MDB_val v = {lorastore__version_record__get_packed_size(rec), NULL};
	int rc = mdb_put(txn, cat->versions, &k, &v, MDB_RESERVE | MDB_NOOVERWRITE);
	if (rc == MDB_KEYEXIST)
		return ls_err_set(err, LS_E_CATALOG, "catalog: %s@%u already exists", rec->name,
				  rec->version);
	if (rc)
		return cat_write_fail(err, rc, "write a version");
	lorastore__version_record__pack(rec, v.mv_data);
	return 0;
}

/* The highest version of name left in "versions", or 0. */
static int latest_remaining(struct ls_catalog *cat, MDB_txn *txn, const char *name, size_t len,
			    uint32_t *latest, struct ls_err *err)
{
	*latest = 0;
	MDB_cursor *cur;
	int rc = mdb_cursor_open(txn, cat->versions, &cur);
	if (rc)
		return cat_mdb_fail(err, rc, "open a cursor");
	/* Land just past the name's last key, then step back onto it. */
	uint8_t kb[LS_VKEY_MAX];
	MDB_val k = {vkey_make(kb, name, len, UINT32_MAX), kb};
	MDB_val v;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	if (rc == 0)
		rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
	else if (rc == MDB_NOTFOUND)
		rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
	size_t klen;
	uint32_t version;
	if (rc == 0 && vkey_parse(&k, &klen, &version) && klen == len &&
	    memcmp(k.mv_data, name, len) == 0)
		*latest = version;
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND)
		return cat_mdb_fail(err, rc, "find the latest version");
	return 0;
}

/* ---- digests: how many versions use each blob ---------------------- */

/* Add delta to the count of digest; the new count goes to *after (may be NULL). */
static int digest_ref(struct ls_catalog *cat, MDB_txn *txn, const ProtobufCBinaryData *digest,
		      int delta, uint32_t *after, struct ls_err *err)
{
	if (after)
		*after = 0;
	if (!digest->len)
		return 0;
	MDB_val k = {digest->len, digest->data};
	MDB_val v;
	uint64_t n = 0;
	int rc = mdb_get(txn, cat->digests, &k, &v);
	if (rc == 0 && v.mv_size == 4)
		n = le_get(v.mv_data, 4);
	else if (rc && rc != MDB_NOTFOUND)
		return cat_mdb_fail(err, rc, "read a digest count");
	n = delta < 0 ? (n >= (uint64_t)-delta ? n - (uint64_t)-delta : 0) : n + (uint64_t)delta;
	if (after)
		*after = (uint32_t)n;
	if (n == 0) {
		rc = mdb_del(txn, cat->digests, &k, NULL);
		return rc && rc != MDB_NOTFOUND ? cat_write_fail(err, rc, "drop a digest count") : 0;
	}
	uint8_t buf[4];
	le_put(buf, n, 4);
	v.mv_size = 4;
	v.mv_data = buf;
	rc = mdb_put(txn, cat->digests, &k, &v, 0);
	return rc ? cat_write_fail(err, rc, "write a digest count") : 0;
}

/* Count the digests of every version once, for a catalog made before "digests". */
static int digests_count_all(struct ls_catalog *cat, MDB_txn *txn, struct ls_err *err)
{
	uint64_t done = 0;
	bool found;
	int rc = meta_read(cat, txn, ls_meta_digests_counted, 4, &done, &found, err);
	if (rc || found)
		return rc;
	rc = mdb_drop(txn, cat->digests, 0);
	if (rc)
		return cat_write_fail(err, rc, "empty the digest counts");
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, cat->versions, &cur);
	if (rc)
		return cat_mdb_fail(err, rc, "open a cursor");
	MDB_val k, v;
	int ret = 0;
	rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0 && ret == 0) {
		Lorastore__VersionRecord *rec;
		ret = version_decode(&k, &v, &rec, err);
		if (ret)
			break;
		ret = digest_ref(cat, txn, &rec->digest, 1, NULL, err);
		lorastore__version_record__free_unpacked(rec, NULL);
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (ret)
		return ret;
	if (rc != MDB_NOTFOUND)
		return cat_mdb_fail(err, rc, "count the digests");
	return meta_write(cat, txn, ls_meta_digests_counted, 4, 1, err);
}

int ls_catalog_digest_refs(struct ls_catalog *cat, const uint8_t *digest, size_t len,
			   uint32_t *out, struct ls_err *err)
{
	*out = 0;
	MDB_txn *txn;
	int rc = cat_read_begin(cat, &txn, err);
	if (rc)
		return rc;
	MDB_val k = {len, (void *)digest};
	MDB_val v;
	rc = mdb_get(txn, cat->digests, &k, &v);
	if (rc == 0 && v.mv_size == 4)
		*out = (uint32_t)le_get(v.mv_data, 4);
	else if (rc == MDB_NOTFOUND)
		rc = 0;
	else if (rc == 0)
		rc = ls_err_set(err, LS_E_CATALOG, "catalog: a digest count of %zu bytes", v.mv_size);
	else
		rc = cat_mdb_fail(err, rc, "read a digest count");
	cat_read_end(cat, txn);
	return rc;
}

/* ---- open and close -------------------------------------------------- */

static int open_schema(struct ls_catalog *cat, MDB_txn *txn, struct ls_err *err);

static int open_body(struct ls_catalog *cat, MDB_txn *txn, void *arg, struct ls_err *err)
{
	(void)arg;
	int rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &cat->meta);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "names", MDB_CREATE, &cat->names);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "versions", MDB_CREATE, &cat->versions);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "digests", MDB_CREATE, &cat->digests);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "aliases", MDB_CREATE, &cat->aliases);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "tagged", MDB_CREATE | MDB_DUPSORT, &cat->tagged);
	if (rc)
		return cat_write_fail(err, rc, "open the databases");
	rc = open_schema(cat, txn, err);
	return rc ? rc : digests_count_all(cat, txn, err);
}

/* Check the schema of an existing environment, or write it into a new one. */
static int open_schema(struct ls_catalog *cat, MDB_txn *txn, struct ls_err *err)
{
	int rc;

	MDB_val k = {sizeof(ls_meta_schema) - 1, (void *)ls_meta_schema};
	MDB_val v;
	rc = mdb_get(txn, cat->meta, &k, &v);
	if (rc == 0) {
		if (v.mv_size != 4)
			return ls_err_set(err, LS_E_CATALOG_SCHEMA,
					  "catalog: schema of %zu bytes; this build reads schema %d",
					  v.mv_size, LS_CATALOG_SCHEMA);
		uint64_t schema = le_get(v.mv_data, 4);
		if (schema != LS_CATALOG_SCHEMA)
			return ls_err_set(err, LS_E_CATALOG_SCHEMA,
					  "catalog: schema %llu; this build reads schema %d",
					  (unsigned long long)schema, LS_CATALOG_SCHEMA);
		uint64_t gen;
		return next_generation_read(cat, txn, &gen, err);
	}
	if (rc != MDB_NOTFOUND)
		return cat_mdb_fail(err, rc, "read the schema");

	/* No schema: a new environment, unless it already holds records. */
	MDB_stat sn, sv;
	rc = mdb_stat(txn, cat->names, &sn);
	if (rc == 0)
		rc = mdb_stat(txn, cat->versions, &sv);
	if (rc)
		return cat_mdb_fail(err, rc, "count records");
	if (sn.ms_entries || sv.ms_entries)
		return ls_err_set(err, LS_E_CATALOG_SCHEMA,
				  "catalog: records without a schema; this build reads schema %d",
				  LS_CATALOG_SCHEMA);
	rc = meta_write(cat, txn, ls_meta_schema, 4, LS_CATALOG_SCHEMA, err);
	if (rc)
		return rc;
	return meta_write(cat, txn, ls_meta_next_generation, 8, 1, err);
}

int ls_catalog_open(const char *dir, struct ls_catalog **out, struct ls_err *err)
{
	*out = NULL;
	struct ls_catalog *cat = calloc(1, sizeof(*cat));
	if (!cat)
		return ls_err_set(err, -ENOMEM, "catalog: out of memory");
	/*
	 * Writers first, so that a writer waiting to grow the map is not starved
	 * by a stream of readers.  No call takes map_lock twice in one thread.
	 */
	pthread_rwlockattr_t attr;
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	int rc = pthread_rwlock_init(&cat->map_lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	if (rc) {
		free(cat);
		return ls_err_set(err, -rc, "catalog: cannot create a lock: %s", strerror(rc));
	}
	int ret;
	rc = mdb_env_create(&cat->env);
	if (rc) {
		ret = cat_mdb_fail(err, rc, "create the environment");
		goto fail_lock;
	}
	rc = mdb_env_set_maxdbs(cat->env, LS_CATALOG_MAXDBS);
	if (rc) {
		ret = cat_mdb_fail(err, rc, "set maxdbs");
		goto fail_env;
	}
	/*
	 * No map size before the open: an existing environment keeps the size
	 * it grew to, and only a smaller one is raised to the initial size.
	 */
	rc = mdb_env_open(cat->env, dir, MDB_NOTLS, 0600);
	if (rc) {
		ret = ls_err_set(err, rc > 0 ? -rc : LS_E_CATALOG,
				 "catalog: cannot open the environment in %s: %s", dir,
				 mdb_strerror(rc));
		goto fail_env;
	}
	/* Free the reader slots of processes that died inside a read. */
	int dead;
	mdb_reader_check(cat->env, &dead);
	MDB_envinfo info;
	mdb_env_info(cat->env, &info);
	if (info.me_mapsize < LS_CATALOG_MAP_INITIAL) {
		rc = mdb_env_set_mapsize(cat->env, LS_CATALOG_MAP_INITIAL);
		if (rc) {
			ret = cat_mdb_fail(err, rc, "set the map size");
			goto fail_env;
		}
	}
	ret = cat_write(cat, open_body, NULL, err);
	if (ret)
		goto fail_env;
	*out = cat;
	return 0;

fail_env:
	mdb_env_close(cat->env);
fail_lock:
	pthread_rwlock_destroy(&cat->map_lock);
	free(cat);
	return ret;
}

void ls_catalog_close(struct ls_catalog *cat)
{
	if (!cat)
		return;
	mdb_env_close(cat->env);
	pthread_rwlock_destroy(&cat->map_lock);
	free(cat);
}


/* ---- add and restore ------------------------------------------------- */

struct add_arg {
	Lorastore__VersionRecord *rec;
	size_t name_len;
	ls_catalog_check_fn check;
	ls_catalog_prepare_fn prepare;
	void *ud;
	Lorastore__VersionRecord *same;   /* the latest version, when check said so */
	uint32_t fixed;                   /* the version number the caller gives, or 0 */
};

/* Decode name@version inside txn: 0 and *out, LS_E_NOT_FOUND, or LS_E_CATALOG. */
static int version_read(struct ls_catalog *cat, MDB_txn *txn, const char *name, size_t len,
			uint32_t version, Lorastore__VersionRecord **out, struct ls_err *err)
{
	uint8_t kb[LS_VKEY_MAX];
	MDB_val k = {vkey_make(kb, name, len, version), kb};
	MDB_val v;
	int rc = mdb_get(txn, cat->versions, &k, &v);
	if (rc == MDB_NOTFOUND)
		return ls_err_set(err, LS_E_NOT_FOUND, "no adapter %.*s@%u", (int)len,
				  name, version);
	if (rc)
		return cat_mdb_fail(err, rc, "read a version");
	return version_decode(&k, &v, out, err);
}

static int add_body(struct ls_catalog *cat, MDB_txn *txn, void *varg, struct ls_err *err)
{
	struct add_arg *a = varg;
	Lorastore__VersionRecord *rec = a->rec;
	struct ls_name_state st;
	int rc = name_read(cat, txn, rec->name, a->name_len, &st, err);
	if (rc)
		return rc;
	if (!st.exists)
		st.next_version = 1;
	if (a->check) {
		/* A write redone after growing the map asks again. */
		if (a->same)
			lorastore__version_record__free_unpacked(a->same, NULL);
		a->same = NULL;
		Lorastore__VersionRecord *latest = NULL;
		if (st.latest_version) {
			rc = version_read(cat, txn, rec->name, a->name_len, st.latest_version,
					  &latest, err);
			if (rc)
				return rc;
		}
		rc = a->check(a->ud, latest, rec, err);
		if (rc == LS_CATALOG_SAME && latest) {
			a->same = latest;
			return 0;
		}
		if (latest)
			lorastore__version_record__free_unpacked(latest, NULL);
		if (rc)
			return rc == LS_CATALOG_SAME ? ls_err_set(err, LS_E_CATALOG,
								  "catalog: same as no version")
						     : rc;
	}
	if (a->fixed) {
		Lorastore__VersionRecord *had = NULL;
		rc = version_read(cat, txn, rec->name, a->name_len, a->fixed, &had, err);
		if (rc == 0) {
			lorastore__version_record__free_unpacked(had, NULL);
			return ls_err_set(err, -EEXIST, "catalog: %s@%u exists", rec->name, a->fixed);
		}
		if (rc != LS_E_NOT_FOUND)
			return rc;
		ls_err_clear(err);
	} else if (st.next_version == 0 || st.next_version == UINT32_MAX) {
		return ls_err_set(err, LS_E_CATALOG, "catalog: %s has no version number left",
				  rec->name);
	}
	uint64_t gen;
	rc = next_generation_read(cat, txn, &gen, err);
	if (rc)
		return rc;
	if (gen == UINT64_MAX)
		return ls_err_set(err, LS_E_CATALOG, "catalog: no generation number left");

	rec->schema = LS_CATALOG_SCHEMA;
	rec->version = a->fixed ? a->fixed : st.next_version;
	rec->generation = gen;
	rc = version_write(cat, txn, rec, a->name_len, err);
	if (rc == 0)
		rc = digest_ref(cat, txn, &rec->digest, 1, NULL, err);
	if (rc)
		return rc;
	st.exists = true;
	if (st.latest_version < rec->version)
		st.latest_version = rec->version;
	st.version_count++;
	if (st.next_version <= rec->version)
		st.next_version = rec->version + 1;
	rc = name_write(cat, txn, rec->name, a->name_len, &st, err);
	if (rc)
		return rc;
	rc = meta_write(cat, txn, ls_meta_next_generation, 8, gen + 1, err);
	if (rc)
		return rc;
	/*
	 * prepare runs last, so that a full map is usually met before it; when
	 * the commit itself finds the map full, the write is redone and prepare
	 * is called again with the same version and generation.
	 */
	if (a->prepare) {
		rc = a->prepare(a->ud, rec, err);
		if (rc && err && err->code == 0)
			ls_err_set(err, rc, "catalog: preparing %s@%u failed: %s", rec->name,
				   rec->version, ls_strerror(rc));
	}
	return rc;
}

static int cat_add(struct ls_catalog *cat, Lorastore__VersionRecord *rec, uint32_t fixed,
		   ls_catalog_check_fn check, ls_catalog_prepare_fn prepare, void *ud,
		   Lorastore__VersionRecord **same, struct ls_err *err);

int ls_catalog_add(struct ls_catalog *cat, Lorastore__VersionRecord *rec,
		   ls_catalog_prepare_fn prepare, void *ud, struct ls_err *err)
{
	return cat_add(cat, rec, 0, NULL, prepare, ud, NULL, err);
}

int ls_catalog_add_version(struct ls_catalog *cat, Lorastore__VersionRecord *rec,
			   uint32_t version, ls_catalog_prepare_fn prepare, void *ud,
			   struct ls_err *err)
{
	if (version == 0 || version == UINT32_MAX)
		return ls_err_set(err, LS_E_CATALOG, "catalog: no version %u", version);
	return cat_add(cat, rec, version, NULL, prepare, ud, NULL, err);
}

int ls_catalog_add_checked(struct ls_catalog *cat, Lorastore__VersionRecord *rec,
			   ls_catalog_check_fn check, ls_catalog_prepare_fn prepare, void *ud,
			   Lorastore__VersionRecord **same, struct ls_err *err)
{
	return cat_add(cat, rec, 0, check, prepare, ud, same, err);
}

static int cat_add(struct ls_catalog *cat, Lorastore__VersionRecord *rec, uint32_t fixed,
		   ls_catalog_check_fn check, ls_catalog_prepare_fn prepare, void *ud,
		   Lorastore__VersionRecord **same, struct ls_err *err)
{
	if (same)
		*same = NULL;
	ls_err_clear(err);
	if (!rec || !ls_name_valid(rec->name))
		return ls_err_set(err, LS_E_NAME_INVALID,
				  "catalog: \"%.*s\" is not a valid adapter name (1-%d characters "
				  "of A-Z a-z 0-9 . _ - /, no empty, \".\" or \"..\" component)",
				  LS_NAME_MAX + 1, rec && rec->name ? rec->name : "", LS_NAME_MAX);
	uint32_t schema = rec->schema, version = rec->version;
	uint64_t generation = rec->generation;
	struct add_arg a = {rec, strlen(rec->name), check, prepare, ud, NULL, fixed};
	int rc = cat_write(cat, add_body, &a, err);
	if (rc == 0 && a.same) {
		if (same)
			*same = a.same;
		else
			lorastore__version_record__free_unpacked(a.same, NULL);
	} else if (a.same) {
		lorastore__version_record__free_unpacked(a.same, NULL);
	}
	if (rc) {
		/* A failed add leaves the caller's record as it was. */
		rec->schema = schema;
		rec->version = version;
		rec->generation = generation;
	}
	return rc;
}

struct restore_arg {
	const Lorastore__VersionRecord *rec;
	size_t name_len;
};

static int restore_body(struct ls_catalog *cat, MDB_txn *txn, void *varg, struct ls_err *err)
{
	struct restore_arg *a = varg;
	const Lorastore__VersionRecord *rec = a->rec;
	struct ls_name_state st;
	int rc = name_read(cat, txn, rec->name, a->name_len, &st, err);
	if (rc)
		return rc;
	rc = version_write(cat, txn, rec, a->name_len, err);
	if (rc == 0)
		rc = digest_ref(cat, txn, &rec->digest, 1, NULL, err);
	if (rc)
		return rc;
	if (st.next_version <= rec->version)
		st.next_version = rec->version + 1;
	if (st.latest_version < rec->version)
		st.latest_version = rec->version;
	st.version_count++;
	st.exists = true;
	rc = name_write(cat, txn, rec->name, a->name_len, &st, err);
	if (rc)
		return rc;
	uint64_t gen;
	rc = next_generation_read(cat, txn, &gen, err);
	if (rc)
		return rc;
	if (gen <= rec->generation)
		return meta_write(cat, txn, ls_meta_next_generation, 8, rec->generation + 1, err);
	return 0;
}

int ls_catalog_restore(struct ls_catalog *cat, const Lorastore__VersionRecord *rec,
		       struct ls_err *err)
{
	ls_err_clear(err);
	if (!rec || !ls_name_valid(rec->name))
		return ls_err_set(err, LS_E_NAME_INVALID,
				  "catalog: cannot restore \"%.*s\": not a valid adapter name",
				  LS_NAME_MAX + 1, rec && rec->name ? rec->name : "");
	/* The counters must be able to move past the record. */
	if (rec->version == 0 || rec->version == UINT32_MAX || rec->generation == 0 ||
	    rec->generation == UINT64_MAX)
		return ls_err_set(err, LS_E_CATALOG,
				  "catalog: cannot restore %s@%u with generation %llu", rec->name,
				  rec->version, (unsigned long long)rec->generation);
	struct restore_arg a = {rec, strlen(rec->name)};
	return cat_write(cat, restore_body, &a, err);
}

/* ---- get ------------------------------------------------------------- */

int ls_catalog_get(struct ls_catalog *cat, const char *name, uint32_t version,
		   Lorastore__VersionRecord **out, struct ls_err *err)
{
	*out = NULL;
	if (!ls_name_valid(name))
		return ls_err_set(err, LS_E_NOT_FOUND,
				  "no adapter \"%.*s\" (not a valid adapter name)",
				  LS_NAME_MAX + 1, name ? name : "");
	size_t len = strlen(name);
	MDB_txn *txn;
	int rc = cat_read_begin(cat, &txn, err);
	if (rc)
		return rc;
	if (version == 0) {
		struct ls_name_state st;
		rc = name_read(cat, txn, name, len, &st, err);
		if (rc)
			goto out;
		if (st.latest_version == 0) {
			rc = ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s", name);
			goto out;
		}
		version = st.latest_version;
	}
	uint8_t kb[LS_VKEY_MAX];
	MDB_val k = {vkey_make(kb, name, len, version), kb};
	MDB_val v;
	rc = mdb_get(txn, cat->versions, &k, &v);
	if (rc == MDB_NOTFOUND)
		rc = ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s@%u", name, version);
	else if (rc)
		rc = cat_mdb_fail(err, rc, "read a version");
	else
		rc = version_decode(&k, &v, out, err);
out:
	cat_read_end(cat, txn);
	return rc;
}

/* ---- list ------------------------------------------------------------ */

/* A growing array of decoded records. */
struct rec_list {
	Lorastore__VersionRecord **recs;
	size_t n;
	size_t cap;
};

static int rec_list_push(struct rec_list *l, Lorastore__VersionRecord *rec, struct ls_err *err)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		Lorastore__VersionRecord **recs = realloc(l->recs, cap * sizeof(*recs));
		if (!recs)
			return ls_err_set(err, -ENOMEM, "catalog: out of memory");
		l->recs = recs;
		l->cap = cap;
	}
	l->recs[l->n++] = rec;
	return 0;
}

/* Free the records from index `from` on, and forget them. */
static void rec_list_truncate(struct rec_list *l, size_t from)
{
	for (size_t i = from; i < l->n; i++)
		lorastore__version_record__free_unpacked(l->recs[i], NULL);
	if (from < l->n)
		l->n = from;
}

static void rec_list_free(struct rec_list *l)
{
	rec_list_truncate(l, 0);
	free(l->recs);
	l->recs = NULL;
	l->cap = 0;
}

/*
 * Hand the records to fn one by one, freeing each after its call; a non-zero
 * return stops the calls and is returned.  *stopped_early says whether some
 * records were not given.
 */
static int rec_list_deliver(struct rec_list *l, ls_catalog_record_fn fn, void *ud,
			    bool *stopped_early)
{
	int ret = 0;
	size_t i = 0;
	*stopped_early = false;
	for (; i < l->n && fn; i++) {
		ret = fn(ud, l->recs[i]);
		lorastore__version_record__free_unpacked(l->recs[i], NULL);
		l->recs[i] = NULL;
		if (ret) {
			i++;
			*stopped_early = i < l->n;
			break;
		}
	}
	for (; i < l->n; i++)
		lorastore__version_record__free_unpacked(l->recs[i], NULL);
	l->n = 0;
	return ret;
}

int ls_catalog_list(struct ls_catalog *cat, const char *prefix, const char *after_name,
		    uint32_t after_version, size_t limit, ls_catalog_record_fn fn, void *ud,
		    bool *more, struct ls_err *err)
{
	bool more_unused;
	if (!more)
		more = &more_unused;
	*more = false;
	if (!prefix)
		prefix = "";
	size_t plen = strlen(prefix);
	if (plen > LS_NAME_MAX)
		return 0; /* no name is that long */

	/* Start at the larger of the prefix and the position after_name@after_version. */
	uint8_t start[LS_VKEY_MAX];
	size_t slen = plen;
	memcpy(start, prefix, plen);
	uint8_t after[LS_VKEY_MAX];
	size_t alen = 0;
	if (after_name) {
		size_t an = strlen(after_name);
		if (an > LS_NAME_MAX) {
			/*
			 * No stored key is this long; its first LS_NAME_MAX + 1
			 * bytes compare with every stored key as the whole would.
			 */
			alen = LS_NAME_MAX + 1;
			memcpy(after, after_name, alen);
		} else {
			alen = vkey_make(after, after_name, an, after_version);
		}
		if (key_cmp(after, alen, start, slen) > 0) {
			memcpy(start, after, alen);
			slen = alen;
		}
	}

	struct rec_list l = {0};
	MDB_txn *txn;
	int rc = cat_read_begin(cat, &txn, err);
	if (rc)
		return rc;
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, cat->versions, &cur);
	if (rc) {
		cat_read_end(cat, txn);
		return cat_mdb_fail(err, rc, "open a cursor");
	}
	MDB_val k = {slen, start};
	MDB_val v;
	rc = mdb_cursor_get(cur, &k, &v, slen ? MDB_SET_RANGE : MDB_FIRST);
	if (rc == 0 && alen && key_cmp(k.mv_data, k.mv_size, after, alen) == 0)
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	int ret = 0;
	while (rc == 0) {
		if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)
			break;
		if (l.n == limit) {
			*more = true;
			break;
		}
		Lorastore__VersionRecord *rec;
		ret = version_decode(&k, &v, &rec, err);
		if (ret)
			break;
		ret = rec_list_push(&l, rec, err);
		if (ret) {
			lorastore__version_record__free_unpacked(rec, NULL);
			break;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (ret == 0 && rc && rc != MDB_NOTFOUND)
		ret = cat_mdb_fail(err, rc, "list versions");
	mdb_cursor_close(cur);
	cat_read_end(cat, txn);

	if (ret == 0) {
		bool stopped_early;
		ret = rec_list_deliver(&l, fn, ud, &stopped_early);
		if (stopped_early)
			*more = true;
	} else {
		*more = false;
	}
	rec_list_free(&l);
	return ret;
}

/* ---- delete ---------------------------------------------------------- */

struct delete_arg {
	const char *name;
	size_t len;
	uint32_t version;
	struct rec_list deleted;
};

/*
 * Delete the version rec stored under key k, and its use of its blob;
 * LS_E_ALIASED when an alias points at it.
 */
static int delete_one(struct ls_catalog *cat, MDB_txn *txn, const Lorastore__VersionRecord *rec,
		      MDB_val *k, struct ls_err *err)
{
	MDB_val v;
	int rc = mdb_get(txn, cat->tagged, k, &v);
	if (rc == 0)
		return ls_err_set(err, LS_E_ALIASED,
				  "%s@%u is what the alias %.*s points at: move the alias "
				  "(lorastore tag) or remove it (lorastore untag) first",
				  rec->name, rec->version, (int)v.mv_size, (const char *)v.mv_data);
	if (rc != MDB_NOTFOUND)
		return cat_mdb_fail(err, rc, "read the aliases of a version");
	rc = mdb_del(txn, cat->versions, k, NULL);
	if (rc)
		return cat_write_fail(err, rc, "delete a version");
	return digest_ref(cat, txn, &rec->digest, -1, NULL, err);
}

static int delete_body(struct ls_catalog *cat, MDB_txn *txn, void *varg, struct ls_err *err)
{
	struct delete_arg *a = varg;
	/* A write redone after growing the map collects its records again. */
	rec_list_truncate(&a->deleted, 0);
	struct ls_name_state st;
	int rc = name_read(cat, txn, a->name, a->len, &st, err);
	if (rc)
		return rc;
	if (st.version_count == 0)
		return ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s", a->name);

	uint8_t kb[LS_VKEY_MAX];
	MDB_val k, v;
	if (a->version != 0) {
		k.mv_size = vkey_make(kb, a->name, a->len, a->version);
		k.mv_data = kb;
		rc = mdb_get(txn, cat->versions, &k, &v);
		if (rc == MDB_NOTFOUND)
			return ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s@%u",
					  a->name, a->version);
		if (rc)
			return cat_mdb_fail(err, rc, "read a version");
		Lorastore__VersionRecord *rec;
		rc = version_decode(&k, &v, &rec, err);
		if (rc)
			return rc;
		rc = rec_list_push(&a->deleted, rec, err);
		if (rc) {
			lorastore__version_record__free_unpacked(rec, NULL);
			return rc;
		}
		rc = delete_one(cat, txn, rec, &k, err);
		if (rc)
			return rc;
		st.version_count--;
		if (st.latest_version == a->version) {
			rc = latest_remaining(cat, txn, a->name, a->len, &st.latest_version, err);
			if (rc)
				return rc;
		}
		return name_write(cat, txn, a->name, a->len, &st, err);
	}

	/* Every version: collect them with a cursor, then delete them by key. */
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, cat->versions, &cur);
	if (rc)
		return cat_mdb_fail(err, rc, "open a cursor");
	memcpy(kb, a->name, a->len);
	kb[a->len] = 0;
	k.mv_size = a->len + 1;
	k.mv_data = kb;
	int ret = 0;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && k.mv_size > a->len + 1 && memcmp(k.mv_data, kb, a->len + 1) == 0) {
		Lorastore__VersionRecord *rec;
		ret = version_decode(&k, &v, &rec, err);
		if (ret)
			break;
		ret = rec_list_push(&a->deleted, rec, err);
		if (ret) {
			lorastore__version_record__free_unpacked(rec, NULL);
			break;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (ret)
		return ret;
	if (rc && rc != MDB_NOTFOUND)
		return cat_mdb_fail(err, rc, "list the versions to delete");
	if (a->deleted.n == 0)
		return ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s", a->name);
	for (size_t i = 0; i < a->deleted.n; i++) {
		k.mv_size = vkey_make(kb, a->name, a->len, a->deleted.recs[i]->version);
		k.mv_data = kb;
		rc = delete_one(cat, txn, a->deleted.recs[i], &k, err);
		if (rc)
			return rc;
	}
	/* The name record stays, so that its version numbers are not reused. */
	st.version_count = 0;
	st.latest_version = 0;
	return name_write(cat, txn, a->name, a->len, &st, err);
}

int ls_catalog_delete(struct ls_catalog *cat, const char *name, uint32_t version,
		      ls_catalog_record_fn fn, void *ud, struct ls_err *err)
{
	if (!ls_name_valid(name))
		return ls_err_set(err, LS_E_NOT_FOUND,
				  "no adapter \"%.*s\" (not a valid adapter name)",
				  LS_NAME_MAX + 1, name ? name : "");
	struct delete_arg a = {name, strlen(name), version, {0}};
	int rc = cat_write(cat, delete_body, &a, err);
	if (rc == 0) {
		/* The deletion is committed: fn's result only stops the calls. */
		bool stopped_early;
		rec_list_deliver(&a.deleted, fn, ud, &stopped_early);
	}
	rec_list_free(&a.deleted);
	return rc;
}

/* ---- aliases ---------------------------------------------------------- */

struct tag_arg {
	const char *alias;
	const char *name;
	uint32_t version;
	Lorastore__VersionRecord *rec;   /* what the alias points at now */
};

static int tag_body(struct ls_catalog *cat, MDB_txn *txn, void *varg, struct ls_err *err)
{
	struct tag_arg *a = varg;
	if (a->rec)
		lorastore__version_record__free_unpacked(a->rec, NULL);
	a->rec = NULL;
	size_t len = strlen(a->name);
	uint32_t version = a->version;
	if (version == 0) {
		struct ls_name_state st;
		int rc = name_read(cat, txn, a->name, len, &st, err);
		if (rc)
			return rc;
		if (st.latest_version == 0)
			return ls_err_set(err, LS_E_NOT_FOUND, "no adapter %s", a->name);
		version = st.latest_version;
	}
	int rc = version_read(cat, txn, a->name, len, version, &a->rec, err);
	if (rc)
		return rc;
	MDB_val ak = {strlen(a->alias), (void *)a->alias};
	MDB_val old;
	rc = mdb_get(txn, cat->aliases, &ak, &old);
	if (rc == 0) {
		/* Moved: the old target forgets it (its key is copied: the put may move pages). */
		uint8_t ob[LS_VKEY_MAX];
		MDB_val ok = {old.mv_size < sizeof(ob) ? old.mv_size : sizeof(ob), ob};
		memcpy(ob, old.mv_data, ok.mv_size);
		rc = mdb_del(txn, cat->tagged, &ok, &ak);
		if (rc && rc != MDB_NOTFOUND)
			return cat_write_fail(err, rc, "move an alias");
	} else if (rc != MDB_NOTFOUND) {
		return cat_mdb_fail(err, rc, "read an alias");
	}
	uint8_t kb[LS_VKEY_MAX];
	MDB_val vk = {vkey_make(kb, a->name, len, version), kb};
	rc = mdb_put(txn, cat->aliases, &ak, &vk, 0);
	if (rc == 0)
		rc = mdb_put(txn, cat->tagged, &vk, &ak, MDB_NODUPDATA);
	if (rc && rc != MDB_KEYEXIST)
		return cat_write_fail(err, rc, "write an alias");
	return 0;
}

int ls_catalog_tag(struct ls_catalog *cat, const char *alias, const char *name,
		   uint32_t version, Lorastore__VersionRecord **out, struct ls_err *err)
{
	if (out)
		*out = NULL;
	if (!ls_alias_valid(alias))
		return ls_err_set(err, LS_E_NAME_INVALID,
				  "'%.*s': an alias is NAME:TAG, a tag 1 to %d characters of "
				  "[A-Za-z0-9._-]",
				  LS_ALIAS_MAX, alias ? alias : "", LS_TAG_MAX);
	if (!ls_name_valid(name))
		return ls_err_set(err, LS_E_NAME_INVALID, "'%.*s': not an adapter name",
				  LS_NAME_MAX, name ? name : "");
	struct tag_arg a = {alias, name, version, NULL};
	int rc = cat_write(cat, tag_body, &a, err);
	if (rc == 0 && out)
		*out = a.rec;
	else if (a.rec)
		lorastore__version_record__free_unpacked(a.rec, NULL);
	return rc;
}

static int untag_body(struct ls_catalog *cat, MDB_txn *txn, void *varg, struct ls_err *err)
{
	const char *alias = varg;
	MDB_val ak = {strlen(alias), (void *)alias};
	MDB_val old;
	int rc = mdb_get(txn, cat->aliases, &ak, &old);
	if (rc == MDB_NOTFOUND)
		return ls_err_set(err, LS_E_NOT_FOUND, "no alias %s", alias);
	if (rc)
		return cat_mdb_fail(err, rc, "read an alias");
	uint8_t ob[LS_VKEY_MAX];
	MDB_val ok = {old.mv_size < sizeof(ob) ? old.mv_size : sizeof(ob), ob};
	memcpy(ob, old.mv_data, ok.mv_size);
	rc = mdb_del(txn, cat->tagged, &ok, &ak);
	if (rc && rc != MDB_NOTFOUND)
		return cat_write_fail(err, rc, "remove an alias");
	rc = mdb_del(txn, cat->aliases, &ak, NULL);
	return rc ? cat_write_fail(err, rc, "remove an alias") : 0;
}

int ls_catalog_untag(struct ls_catalog *cat, const char *alias, struct ls_err *err)
{
	if (!ls_alias_valid(alias))
		return ls_err_set(err, LS_E_NAME_INVALID, "'%.*s': not an alias (NAME:TAG)",
				  LS_ALIAS_MAX, alias ? alias : "");
	return cat_write(cat, untag_body, (void *)alias, err);
}

int ls_catalog_get_alias(struct ls_catalog *cat, const char *alias,
			 Lorastore__VersionRecord **out, struct ls_err *err)
{
	*out = NULL;
	if (!ls_alias_valid(alias))
		return ls_err_set(err, LS_E_NAME_INVALID, "'%.*s': not an alias (NAME:TAG)",
				  LS_ALIAS_MAX, alias ? alias : "");
	MDB_txn *txn;
	int rc = cat_read_begin(cat, &txn, err);
	if (rc)
		return rc;
	MDB_val ak = {strlen(alias), (void *)alias};
	MDB_val vk, v;
	rc = mdb_get(txn, cat->aliases, &ak, &vk);
	if (rc == MDB_NOTFOUND) {
		rc = ls_err_set(err, LS_E_NOT_FOUND, "no alias %s", alias);
		goto out;
	}
	if (rc) {
		rc = cat_mdb_fail(err, rc, "read an alias");
		goto out;
	}
	rc = mdb_get(txn, cat->versions, &vk, &v);
	if (rc == 0)
		rc = version_decode(&vk, &v, out, err);
	else
		/* Deletes refuse aliased versions: this is a damaged catalog. */
		rc = ls_err_set(err, LS_E_CATALOG, "catalog: the alias %s points at no version",
				alias);
out:
	cat_read_end(cat, txn);
	return rc;
}

int ls_catalog_aliases_of(struct ls_catalog *cat, const char *name, uint32_t version,
			  char ***out, size_t *n, struct ls_err *err)
{
	*out = NULL;
	*n = 0;
	if (!ls_name_valid(name))
		return 0;
	MDB_txn *txn;
	int rc = cat_read_begin(cat, &txn, err);
	if (rc)
		return rc;
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, cat->tagged, &cur);
	if (rc) {
		cat_read_end(cat, txn);
		return cat_mdb_fail(err, rc, "open a cursor");
	}
	uint8_t kb[LS_VKEY_MAX];
	MDB_val k = {vkey_make(kb, name, strlen(name), version), kb};
	MDB_val v;
	int ret = 0;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET);
	while (rc == 0) {
		char **arr = realloc(*out, (*n + 1) * sizeof(*arr));
		char *a = arr ? strndup(v.mv_data, v.mv_size) : NULL;
		if (arr)
			*out = arr;
		if (!a) {
			ret = ls_err_set(err, -ENOMEM, "out of memory");
			break;
		}
		arr[(*n)++] = a;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP);
	}
	if (ret == 0 && rc != MDB_NOTFOUND)
		ret = cat_mdb_fail(err, rc, "read the aliases of a version");
	mdb_cursor_close(cur);
	cat_read_end(cat, txn);
	if (ret) {
		for (size_t i = 0; i < *n; i++)
			free((*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
	}
	return ret;
}

/* ---- walk and stats -------------------------------------------------- */

int ls_catalog_walk(struct ls_catalog *cat, ls_catalog_record_fn fn, void *ud,
		    struct ls_err *err)
{
	MDB_txn *txn;
	int rc = cat_read_begin(cat, &txn, err);
	if (rc)
		return rc;
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, cat->versions, &cur);
	if (rc) {
		cat_read_end(cat, txn);
		return cat_mdb_fail(err, rc, "open a cursor");
	}
	MDB_val k, v;
	int ret = 0;
	rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0) {
		Lorastore__VersionRecord *rec = NULL;
		ret = version_decode(&k, &v, &rec, err);
		if (ret)
			break;
		ret = fn ? fn(ud, rec) : 0;
		lorastore__version_record__free_unpacked(rec, NULL);
		if (ret)
			break;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (ret == 0 && rc && rc != MDB_NOTFOUND)
		ret = cat_mdb_fail(err, rc, "walk versions");
	mdb_cursor_close(cur);
	cat_read_end(cat, txn);
	return ret;
}

int ls_catalog_count_versions(struct ls_catalog *cat, uint64_t *out, struct ls_err *err)
{
	*out = 0;
	MDB_txn *txn;
	int rc = cat_read_begin(cat, &txn, err);
	if (rc)
		return rc;
	MDB_stat st;
	rc = mdb_stat(txn, cat->versions, &st);
	if (rc == 0)
		*out = st.ms_entries;
	else
		rc = cat_mdb_fail(err, rc, "count versions");
	cat_read_end(cat, txn);
	return rc;
}

int ls_catalog_stats(struct ls_catalog *cat, struct ls_catalog_stats *out, struct ls_err *err)
{
	memset(out, 0, sizeof(*out));
	MDB_txn *txn;
	int rc = cat_read_begin(cat, &txn, err);
	if (rc)
		return rc;
	MDB_envinfo info;
	mdb_env_info(cat->env, &info);
	out->map_size = info.me_mapsize;
	MDB_stat st;
	rc = mdb_stat(txn, cat->versions, &st);
	if (rc) {
		rc = cat_mdb_fail(err, rc, "count versions");
		goto out;
	}
	out->versions = st.ms_entries;
	rc = next_generation_read(cat, txn, &out->next_generation, err);
	if (rc)
		goto out;

	/* Names whose versions were all deleted keep a record; count only the others. */
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, cat->names, &cur);
	if (rc) {
		rc = cat_mdb_fail(err, rc, "open a cursor");
		goto out;
	}
	MDB_val k, v;
	int mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (mrc == 0) {
		Lorastore__NameRecord *nr =
			lorastore__name_record__unpack(NULL, v.mv_size, v.mv_data);
		if (!nr) {
			rc = ls_err_set(err, LS_E_CATALOG,
					"catalog: the name record of %.*s cannot be decoded",
					(int)(k.mv_size < LS_NAME_MAX ? k.mv_size : LS_NAME_MAX),
					(const char *)k.mv_data);
			break;
		}
		if (nr->version_count > 0)
			out->names++;
		lorastore__name_record__free_unpacked(nr, NULL);
		mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (rc == 0 && mrc != MDB_NOTFOUND)
		rc = cat_mdb_fail(err, mrc, "count names");
	mdb_cursor_close(cur);
out:
	cat_read_end(cat, txn);
	return rc;
}
