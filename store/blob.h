/*
 * Blob files: one per adapter content, self-describing, GPU- and
 * O_DIRECT-friendly.
 *
 * Layout (all integers little-endian):
 *   [0, 4096)                 header page: struct ls_blob_header, zero padded
 *   [4096, 4096 + M)          manifest: a lorastore.BlobManifest (protobuf)
 *   padding to a multiple of 4096
 *   [data_offset, file_len)   tensor data, each tensor at a multiple of
 *                             LS_BLOB_ALIGN from data_offset, zero padding
 *                             between tensors and up to file_len (a multiple
 *                             of 4096), so one O_DIRECT read loads it all.
 *
 * Checksums: XXH3-64 of the manifest and of the whole data region (padding
 * included) are checked at every load (ls_blob_open, then the data region as
 * it is read); XXH3-64 of the header guards the header.  Identity: the SHA-256 digest of manifest || data region, computed
 * once at import; the blob's file name is that digest in hex.
 */
#ifndef LS_BLOB_H
#define LS_BLOB_H

#include <stdint.h>
#include <stddef.h>

#include "lorastore.pb-c.h"
#include "ls_digest.h"
#include "ls_error.h"

#define LS_BLOB_MAGIC "LSBLOB\r\n"     /* 8 bytes, no NUL */
#define LS_BLOB_FORMAT 1
#define LS_BLOB_PAGE 4096u             /* file and section alignment (O_DIRECT) */
#define LS_BLOB_ALIGN 256u             /* tensor alignment inside the data region */

struct ls_blob_header {
	char magic[8];
	uint32_t format;                  /* LS_BLOB_FORMAT */
	uint32_t header_size;             /* LS_BLOB_PAGE */
	uint64_t manifest_offset;         /* bytes from the start of the file */
	uint64_t manifest_length;         /* bytes, unpadded */
	uint64_t data_offset;             /* bytes; a multiple of LS_BLOB_PAGE */
	uint64_t data_length;             /* bytes of the data region, padding included */
	uint64_t file_length;             /* bytes; a multiple of LS_BLOB_PAGE */
	uint64_t manifest_xxh3;           /* XXH3-64 of the manifest bytes */
	uint64_t data_xxh3;               /* XXH3-64 of the data region */
	uint8_t digest[LS_DIGEST_LEN];    /* SHA-256 of manifest || data region */
	uint64_t header_xxh3;             /* XXH3-64 of the bytes before this field */
};

/* Round n up to a multiple of a (a power of two). */
static inline uint64_t ls_align_up(uint64_t n, uint64_t a)
{
	return (n + a - 1) & ~(a - 1);
}


/*
 * Write a blob into directory dir_fd: the manifest is packed, digests and
 * checksums computed, the file written under a temporary name in tmp_dir_fd,
 * fsync'ed, then renamed to "<hex digest>.blob" inside dir_fd, and dir_fd
 * fsync'ed.  data/data_length is the data region (a multiple of LS_BLOB_PAGE,
 * padding zeroed).  When a blob of that digest already exists, the temporary
 * file is removed and the existing blob kept.  On return *hdr holds the header.
 */
int ls_blob_write(int tmp_dir_fd, int dir_fd, const Lorastore__BlobManifest *manifest,
		  const void *data, uint64_t data_length, struct ls_blob_header *hdr,
		  struct ls_err *err);

/*
 * Read and check the header page of the blob open on fd: magic, format,
 * header checksum, offsets consistent with each other and with the file size.
 * Returns 0, LS_E_BLOB_FORMAT, LS_E_BLOB_TRUNCATED (shorter than the header
 * says), LS_E_CORRUPT, or -errno.
 */
int ls_blob_read_header(int fd, const char *what, struct ls_blob_header *hdr,
			struct ls_err *err);

/* Read the manifest and check its XXH3: 0, LS_E_CORRUPT, LS_E_BLOB_TRUNCATED or -errno. */
int ls_blob_check_manifest(int fd, const char *what, const struct ls_blob_header *hdr,
			   struct ls_err *err);

/*
 * Open the blob at path for a load or a verify: the header read and checked
 * (ls_blob_read_header), its digest equal to digest, and the manifest's
 * checksum checked.  Returns 0 with the descriptor in *out (blocking reads),
 * LS_E_BLOB_MISSING when there is no such file, or what the checks return.
 */
int ls_blob_open(const char *path, const uint8_t digest[LS_DIGEST_LEN], int *out,
		 struct ls_blob_header *hdr, struct ls_err *err);

/*
 * Read, check (XXH3) and decode the manifest.  Free the result with
 * lorastore__blob_manifest__free_unpacked(m, NULL).
 */
int ls_blob_read_manifest(int fd, const char *what, const struct ls_blob_header *hdr,
			  Lorastore__BlobManifest **out, struct ls_err *err);

/*
 * Check the data region's XXH3 against the header (what every load does) and,
 * with full set, the SHA-256 digest of manifest || data too.  Reads the file
 * in large chunks.  Returns 0, LS_E_CORRUPT naming what differs,
 * LS_E_BLOB_TRUNCATED, or -errno.
 */
int ls_blob_verify(int fd, const char *what, const struct ls_blob_header *hdr, int full,
		   struct ls_err *err);

/*
 * A blob checked as its bytes arrive in order (a download from the origin),
 * so that no second read is needed: the header as soon as its page is in
 * (and its digest against the one expected), then the manifest's and the
 * data region's XXH3 and the SHA-256 of both as the bytes pass.
 */
struct ls_blob_check;

/* A check for a blob of this digest: 0 or -ENOMEM. */
int ls_blob_check_new(const uint8_t digest[LS_DIGEST_LEN], struct ls_blob_check **out);

/* The next len bytes: 0, or the first fault found (LS_E_BLOB_FORMAT, LS_E_CORRUPT). */
int ls_blob_check_feed(struct ls_blob_check *c, const void *data, size_t len, const char *what,
		       struct ls_err *err);

/*
 * Every byte fed: 0 with *hdr when the blob is whole and every check holds,
 * LS_E_BLOB_TRUNCATED, or LS_E_CORRUPT naming what differs.
 */
int ls_blob_check_end(struct ls_blob_check *c, const char *what, struct ls_blob_header *hdr,
		      struct ls_err *err);
void ls_blob_check_free(struct ls_blob_check *c);

#endif
