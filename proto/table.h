/*
 * The tensor table: what a client needs to use a resident adapter (its name,
 * version, digest, rank, scale and, per tensor, module, kind, dtype, shape,
 * rank, scale and place), written once by lorastored into shared memory
 * next to the adapter's data and read in place by every client.
 *
 * It replaces sending the catalog record with each acquire: one copy in
 * memory however many processes use the adapter, and an acquire reply of a
 * few fixed fields.  The layout is native-endian (writer and readers are on
 * one machine):
 *
 *   header | entries[n_tensors] | order[n_tensors] | dims[] | string pool
 *
 * Entries are in the record's tensor order; order[] lists the entries
 * sorted by (module, kind) for lookups.  Strings are NUL-terminated in the
 * pool; the pool's last byte is NUL, so every string offset below pool_bytes
 * names a terminated string.
 *
 * A reader checks the header once per acquire (ls_table_open, O(1)) and each
 * entry as it reads it (ls_table_entry, O(1)): nothing in the table can make
 * a reader go outside the mapping, whatever its bytes.
 */
#ifndef LS_TABLE_H
#define LS_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "lorastore.pb-c.h"

#define LS_TABLE_MAGIC 0x3142544cu /* "LTB1" */
#define LS_TABLE_FORMAT 2u  /* 2: dtypes as numbers (enum ls_dtype), not names */
#define LS_TABLE_MAX_DIMS 8u

struct ls_table_hdr {
	uint32_t magic;
	uint32_t format;
	uint64_t bytes;          /* of the whole table */
	uint64_t generation;
	uint64_t data_length;    /* bytes of the adapter's data region */
	uint8_t digest[32];      /* SHA-256 content digest */
	uint32_t version;
	uint32_t n_tensors;
	uint32_t rank;           /* config r (largest with rank_pattern) */
	uint32_t name;           /* pool offset */
	uint32_t dtype;          /* enum ls_dtype of every tensor; 0 when they differ */
	uint32_t entries;        /* byte offset of the entries from the table's start */
	uint32_t order;          /* byte offset of order[] */
	uint32_t dims;           /* byte offset of dims[] (uint64) */
	uint32_t n_dims;         /* entries of dims[] */
	uint32_t pool;           /* byte offset of the string pool */
	uint32_t pool_bytes;
	uint32_t reserved;
	double scale;            /* of modules without a pattern */
};

struct ls_table_entry {
	uint64_t offset;         /* bytes from the start of the data region */
	uint64_t bytes;
	double scale;            /* of the module after the patterns (A, B), else 0 */
	uint32_t module;         /* pool offset */
	uint32_t dtype;          /* enum ls_dtype (any the safetensors format names) */
	uint32_t dim0;           /* index of the first dimension in dims[] */
	int32_t layer;           /* -1 when the module has none */
	uint32_t rank;           /* of the module (A, B), else 0 */
	uint8_t kind;            /* Lorastore__TensorKind */
	uint8_t ndim;
	uint8_t reserved[2];
};

/* Bytes of the table of rec (0 when rec cannot have one: too many strings, dims). */
size_t ls_table_size(const Lorastore__VersionRecord *rec);

/* Resident memory comes in pages of this size (the blob's page, LS_BLOB_PAGE). */
#define LS_TABLE_PAGE 4096u

/*
 * resident_bytes: what a version takes in memory when resident, its data
 * region (data_length) and its table (table_length), each rounded up to
 * whole pages.  One formula for the daemon's admission, its listings and
 * the client's adapter info.
 */
uint64_t ls_table_footprint_of(uint64_t data_length, uint64_t table_length);

/* ls_table_footprint_of rec's data region and table (0 when rec cannot have a table). */
uint64_t ls_table_footprint(const Lorastore__VersionRecord *rec);

/*
 * Write rec's table into dst (size bytes, at least ls_table_size(rec),
 * 8-byte aligned).  Returns 0, -ENOMEM, or -EINVAL when rec is malformed
 * (a tensor without module or dtype, more than LS_TABLE_MAX_DIMS dims).
 */
int ls_table_write(const Lorastore__VersionRecord *rec, void *dst, size_t size);

/*
 * Check the header of the table at t (avail bytes readable there, 8-byte
 * aligned) for generation gen, with room bytes of data region mapped.
 * Returns the header, or NULL when anything is out of place.
 */
const struct ls_table_hdr *ls_table_open(const void *t, size_t avail, uint64_t gen,
					 uint64_t room);

/* The string at pool offset off, or NULL when off is outside the pool. */
const char *ls_table_str(const struct ls_table_hdr *h, uint32_t off);

/* Entry i (record order) after checking it, or NULL. */
const struct ls_table_entry *ls_table_entry(const struct ls_table_hdr *h, uint32_t i);

/* The i-th dimension array of e (e->ndim values), checked by ls_table_entry. */
const uint64_t *ls_table_dims(const struct ls_table_hdr *h, const struct ls_table_entry *e);

/* The entry of (module, kind), or NULL. */
const struct ls_table_entry *ls_table_find(const struct ls_table_hdr *h, const char *module,
					   int kind);

#endif
