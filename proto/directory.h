/*
 * The warm path in shared memory: the layout of the directory lorastored
 * publishes and of the lease page each connection shares with it, and the
 * reads and writes of both, for the daemon (the only writer of the
 * directory) and the client library (the only writer of its page).
 *
 * THE DIRECTORY is one memfd the daemon creates at start, maps read-write,
 * seals against growing, shrinking and any later writable mapping, and sends
 * with every HelloReply that asks for the warm path; clients map it
 * read-only.  It holds:
 *   - the reference cache (daemon/refcache.c): references ("name",
 *     "name@3", "name:tag") resolved to generations, direct-mapped by
 *     hash, a newer reference replacing an older one in its slot;
 *   - the resident table: for each (generation, tier) resident and usable,
 *     where a client finds it (the fields of an acquire's reply), in sets
 *     of LS_DIR_WAYS entries chosen by hash; a version that finds its set
 *     full is not published (its acquires take the request path).
 * Every entry has a sequence number (a seqlock): odd while the daemon
 * writes the entry, and different after every change, so that a reader
 * copies an entry, reads the sequence again, and keeps the copy only when
 * it did not move.  Every field is an atomic word, stored with release
 * order after the odd sequence and loaded with acquire order after the
 * first read of it, so a reader that sees any new field value also sees
 * the sequence moved: no reader ever keeps a torn entry, even one being
 * reused for another version.
 *
 * A LEASE PAGE is a memfd of LS_LEASE_PAGE_BYTES the daemon creates for one
 * connection and sends at its Hello alone; the client maps it read-write,
 * the daemon too (sealed against growing and shrinking).  Its slots are
 * hazard pointers across processes: a slot holding
 * LS_LEASE_WORD(generation, tier) | LS_LEASE_HELD is a lease on that
 * version in that tier.
 *
 * THE PROTOCOL, and why it is safe.
 *   Client, acquire: look the reference up (generation g), look (g, tier)
 *   up in the resident table (a consistent copy with its sequence s); store
 *   the held word in a free slot of its page, then read the entry's
 *   sequence again, both with seq_cst order.  Still s: the lease is taken.
 *   Otherwise: clear the slot and take the request path.
 *   Client, release: store the word without LS_LEASE_HELD (release order:
 *   every read of the adapter's memory comes before it).
 *   Daemon, before a version leaves a tier (evicted or deleted; its one
 *   retire point): remove the entry from the directory (its sequence
 *   changes, stored with seq_cst order), then scan every connection's page
 *   for the held word with seq_cst loads.  Found: the version stays (an eviction picks another
 *   victim and publishes it again; a deleted version waits and is
 *   rescanned on the tick, when memory is needed, and when a connection
 *   ends).  Not found: it is freed.
 *   Why no lease is lost: the client's store to its slot and the daemon's
 *   store to the sequence are each followed by a load of the other's
 *   location, all four seq_cst (Dekker's pattern).  All seq_cst operations
 *   fall in one total order: if the client's second read of the sequence
 *   comes before the daemon's store to it, then the client's slot store
 *   comes before the daemon's scan, which sees it and keeps the version;
 *   otherwise the client's read sees the new sequence and backs out.  Both may happen (a
 *   needless fallback), never neither.  A client sees an entry only while
 *   it is published, and the daemon publishes only usable versions, so a
 *   lease taken this way is on a resident, undeleted version at the moment
 *   its slot was stored, and it stays resident until the slot is cleared.
 *   A page dies with its connection (the daemon unmaps it at teardown, a
 *   crash included), and with it every lease in it.  What a client writes
 *   into its own page can pin versions as acquires could (counted against
 *   its pin limit, --client-pin-limit) and otherwise only harm itself.
 *
 * Native-endian and native-aligned: writer and readers are on one machine.
 */
#ifndef LS_DIRECTORY_H
#define LS_DIRECTORY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ls_name.h"

#define LS_DIR_MAGIC 0x3152444cu   /* "LDR1" */
#define LS_DIR_FORMAT 1u
#define LS_DIR_NAMES 4096u         /* reference slots (a power of two) */
#define LS_DIR_SETS 2048u          /* resident sets (a power of two) */
#define LS_DIR_WAYS 4u             /* entries per set */
#define LS_DIR_MAX_TIERS 9u        /* host, and one per GPU of an 8-GPU node */
/* Words of a reference: LS_ALIAS_MAX characters and a NUL, in whole words. */
#define LS_DIR_REF_WORDS ((LS_ALIAS_MAX + 1 + 7) / 8)

/* One reference resolved to a generation. */
struct ls_dir_name {
	_Atomic uint64_t seq;
	_Atomic uint64_t generation;      /* 0: empty */
	_Atomic int64_t put_ns;           /* CLOCK_MONOTONIC when it was resolved */
	_Atomic uint64_t ref[LS_DIR_REF_WORDS]; /* NUL-terminated */
};

/* Where a client finds a resident version: an acquire reply's fields. */
struct ls_dir_where {
	uint64_t generation;
	uint32_t tier;                    /* index in the directory's tiers */
	uint32_t data_slab_id, table_slab_id;
	uint64_t data_slab_size, data_offset;     /* bytes */
	uint64_t table_slab_size, table_offset, table_length; /* bytes */
	uint64_t pinned_bytes;            /* what a lease counts against the pin limit */
};

/* One resident version of one tier. */
struct ls_dir_res {
	_Atomic uint64_t seq;
	_Atomic uint64_t key;             /* LS_LEASE_WORD(generation, tier); 0: empty */
	_Atomic uint64_t slab_ids;        /* data slab id << 32 | table slab id */
	_Atomic uint64_t data_slab_size, data_offset;
	_Atomic uint64_t table_slab_size, table_offset, table_length;
	_Atomic uint64_t pinned_bytes;
	uint64_t reserved[7];             /* to 128 bytes: two entries share no cache line pair */
};

struct ls_dir_tier {
	uint32_t kind;                    /* enum ls_tier_kind */
	uint32_t reserved;
	char uuid[48];                    /* "GPU-..." of a device tier; "" on host */
};

struct ls_dir_hdr {
	uint32_t magic;
	uint32_t format;
	uint64_t bytes;                   /* of the mapping */
	uint64_t instance;                /* the daemon's run (HelloReply.instance) */
	uint32_t n_names, n_sets, ways, n_tiers;
	uint64_t names;                   /* byte offset of the reference slots */
	uint64_t residents;               /* byte offset of the resident sets */
	_Atomic int64_t latest_ttl_ns;    /* "name" holds this long after put_ns; 0: until dropped */
	_Atomic uint64_t pin_limit;       /* bytes one connection may pin; 0: no limit */
	struct ls_dir_tier tiers[LS_DIR_MAX_TIERS];
};

/* Bytes of the directory's mapping. */
size_t ls_dir_size(void);

/* Lay an empty directory out in mem (ls_dir_size() bytes, zeroed, page-aligned). */
void ls_dir_init(void *mem, uint64_t instance);

/*
 * Check a mapping of avail bytes that claims to be a directory: the header,
 * and that its tables lie inside.  Returns the header or NULL.
 */
const struct ls_dir_hdr *ls_dir_open(const void *mem, size_t avail);

static inline struct ls_dir_name *ls_dir_names(const struct ls_dir_hdr *d)
{
	return (struct ls_dir_name *)((char *)d + d->names);
}

static inline struct ls_dir_res *ls_dir_residents(const struct ls_dir_hdr *d)
{
	return (struct ls_dir_res *)((char *)d + d->residents);
}

/* The slot of a reference (FNV-1a of its bytes, modulo the slots). */
uint32_t ls_dir_ref_slot(const char *ref);

/* Whether ref names the latest version of a name ("name", not "name@N" nor "name:tag"). */
static inline bool ls_dir_ref_is_latest(const char *ref)
{
	for (const char *p = ref; *p; p++)
		if (*p == '@' || *p == ':')
			return false;
	return true;
}

/*
 * The generation ref resolves to in the directory d, or 0 when it is not
 * there, has expired ("name" older than latest_ttl_ns at now_ns; now_ns < 0:
 * read the clock when needed), or was being written at every try.
 */
uint64_t ls_dir_ref_get(const struct ls_dir_hdr *d, const char *ref, int64_t now_ns);

/*
 * The resident entry of (generation, tier): a consistent copy in *out, with
 * the entry (*entry) and the sequence the copy was made at (*seq).  false
 * when there is none (or it was being written at every try).
 */
bool ls_dir_res_get(const struct ls_dir_hdr *d, uint64_t generation, uint32_t tier,
		    struct ls_dir_where *out, const struct ls_dir_res **entry, uint64_t *seq);

/* ---- Writes: the daemon's, one thread. */

/* Store ref -> generation (0: clear the slot) with put_ns; ref is at most LS_ALIAS_MAX long. */
void ls_dir_name_write(struct ls_dir_name *n, const char *ref, uint64_t generation,
		       int64_t put_ns);

/*
 * Publish w (replacing its entry, if any; an entry that says the same is left
 * as it is, its sequence too); false when its set is full.
 */
bool ls_dir_res_put(struct ls_dir_hdr *d, const struct ls_dir_where *w);

/* Remove the entry of (generation, tier), if there is one: its sequence changes. */
void ls_dir_res_remove(struct ls_dir_hdr *d, uint64_t generation, uint32_t tier);

/* ---- The lease page */

#define LS_LEASE_PAGE_MAGIC 0x3150444cu /* "LDP1" */
#define LS_LEASE_PAGE_BYTES 4096u
#define LS_LEASE_HELD 1u
/* A slot's word: generation and tier index; generations are below 2^55. */
#define LS_LEASE_WORD(gen, tier) (((uint64_t)(gen) << 8) | ((uint64_t)(tier) << 1))
#define LS_LEASE_GEN(word) ((word) >> 8)
#define LS_LEASE_TIER(word) ((uint32_t)((word) >> 1) & 0x7fu)

struct ls_lease_page {
	uint32_t magic;
	uint32_t n_slots;
	_Atomic uint64_t acquires;        /* the client's warm acquires so far (its own count) */
	uint64_t reserved[6];
	/*
	 * Written by the client alone: 0 (never used), a word with
	 * LS_LEASE_HELD (a lease), or a word without it (the last version
	 * the slot held, released: the daemon's LRU learns from it).
	 */
	_Atomic uint64_t slots[];
};

#define LS_LEASE_SLOTS ((LS_LEASE_PAGE_BYTES - sizeof(struct ls_lease_page)) / sizeof(uint64_t))

#endif
