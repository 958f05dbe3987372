/* Blob files: writing atomically, reading and checking. */
#include "blob.h"

#include <endian.h>
#include <stdbool.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <xxhash.h>

#include "fsutil.h"

/* Byte offsets of the header fields on disk. */
enum {
	LS_HDR_MAGIC = 0,
	LS_HDR_FORMAT = 8,
	LS_HDR_HEADER_SIZE = 12,
	LS_HDR_MANIFEST_OFFSET = 16,
	LS_HDR_MANIFEST_LENGTH = 24,
	LS_HDR_DATA_OFFSET = 32,
	LS_HDR_DATA_LENGTH = 40,
	LS_HDR_FILE_LENGTH = 48,
	LS_HDR_MANIFEST_XXH3 = 56,
	LS_HDR_DATA_XXH3 = 64,
	LS_HDR_DIGEST = 72,
	LS_HDR_HEADER_XXH3 = 104,
	LS_HDR_END = 112,
};

/* Chunk size for hashing a file region: large reads, bounded memory. */
#define LS_BLOB_CHUNK (8u << 20)

static void ls_put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static void ls_put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static uint32_t ls_get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return le32toh(v);
}

static uint64_t ls_get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return le64toh(v);
}

static void ls_header_encode(const struct ls_blob_header *h, uint8_t page[LS_BLOB_PAGE])
{
	memset(page, 0, LS_BLOB_PAGE);
	memcpy(page + LS_HDR_MAGIC, h->magic, 8);
	ls_put32(page + LS_HDR_FORMAT, h->format);
	ls_put32(page + LS_HDR_HEADER_SIZE, h->header_size);
	ls_put64(page + LS_HDR_MANIFEST_OFFSET, h->manifest_offset);
	ls_put64(page + LS_HDR_MANIFEST_LENGTH, h->manifest_length);
	ls_put64(page + LS_HDR_DATA_OFFSET, h->data_offset);
	ls_put64(page + LS_HDR_DATA_LENGTH, h->data_length);
	ls_put64(page + LS_HDR_FILE_LENGTH, h->file_length);
	ls_put64(page + LS_HDR_MANIFEST_XXH3, h->manifest_xxh3);
	ls_put64(page + LS_HDR_DATA_XXH3, h->data_xxh3);
	memcpy(page + LS_HDR_DIGEST, h->digest, LS_DIGEST_LEN);
	ls_put64(page + LS_HDR_HEADER_XXH3, XXH3_64bits(page, LS_HDR_HEADER_XXH3));
}

static void ls_header_decode(const uint8_t page[LS_BLOB_PAGE], struct ls_blob_header *h)
{
	memcpy(h->magic, page + LS_HDR_MAGIC, 8);
	h->format = ls_get32(page + LS_HDR_FORMAT);
	h->header_size = ls_get32(page + LS_HDR_HEADER_SIZE);
	h->manifest_offset = ls_get64(page + LS_HDR_MANIFEST_OFFSET);
	h->manifest_length = ls_get64(page + LS_HDR_MANIFEST_LENGTH);
	h->data_offset = ls_get64(page + LS_HDR_DATA_OFFSET);
	h->data_length = ls_get64(page + LS_HDR_DATA_LENGTH);
	h->file_length = ls_get64(page + LS_HDR_FILE_LENGTH);
	h->manifest_xxh3 = ls_get64(page + LS_HDR_MANIFEST_XXH3);
	h->data_xxh3 = ls_get64(page + LS_HDR_DATA_XXH3);
	memcpy(h->digest, page + LS_HDR_DIGEST, LS_DIGEST_LEN);
	h->header_xxh3 = ls_get64(page + LS_HDR_HEADER_XXH3);
}

static int ls_sha256(const void *a, size_t alen, const void *b, size_t blen,
		     uint8_t out[LS_DIGEST_LEN])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len = 0;
	int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
		 EVP_DigestUpdate(ctx, a, alen) && EVP_DigestUpdate(ctx, b, blen) &&
		 EVP_DigestFinal_ex(ctx, out, &len);
	EVP_MD_CTX_free(ctx);
	return ok && len == LS_DIGEST_LEN ? 0 : -ENOMEM;
}

/*
 * Whether dir_fd/name is an intact blob of the same content as hdr describes.
 * A damaged copy is replaced by the new write rather than trusted.
 */
static bool ls_blob_intact(int dir_fd, const char *name, const struct ls_blob_header *want)
{
	int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	struct ls_blob_header have;
	bool ok = ls_blob_read_header(fd, name, &have, NULL) == 0 &&
		  memcmp(have.digest, want->digest, LS_DIGEST_LEN) == 0 &&
		  have.data_xxh3 == want->data_xxh3 && have.file_length == want->file_length &&
		  ls_blob_verify(fd, name, &have, 0, NULL) == 0;
	close(fd);
	return ok;
}

int ls_blob_write(int tmp_dir_fd, int dir_fd, const Lorastore__BlobManifest *manifest,
		  const void *data, uint64_t data_length, struct ls_blob_header *hdr,
		  struct ls_err *err)
{
	if (data_length % LS_BLOB_PAGE)
		return ls_err_set(err, -EINVAL, "blob data region of %llu bytes is not padded",
				  (unsigned long long)data_length);
	size_t mlen = lorastore__blob_manifest__get_packed_size(manifest);
	uint64_t mpad = ls_align_up(mlen ? mlen : 1, LS_BLOB_PAGE);
	uint8_t *head = calloc(1, LS_BLOB_PAGE + mpad);
	if (!head)
		return ls_err_set(err, -ENOMEM, "out of memory packing a blob manifest");
	uint8_t *mbuf = head + LS_BLOB_PAGE;
	lorastore__blob_manifest__pack(manifest, mbuf);

	memset(hdr, 0, sizeof(*hdr));
	memcpy(hdr->magic, LS_BLOB_MAGIC, 8);
	hdr->format = LS_BLOB_FORMAT;
	hdr->header_size = LS_BLOB_PAGE;
	hdr->manifest_offset = LS_BLOB_PAGE;
	hdr->manifest_length = mlen;
	hdr->data_offset = LS_BLOB_PAGE + mpad;
	hdr->data_length = data_length;
	hdr->file_length = hdr->data_offset + data_length;
	hdr->manifest_xxh3 = XXH3_64bits(mbuf, mlen);
	hdr->data_xxh3 = XXH3_64bits(data, data_length);
	int rc = ls_sha256(mbuf, mlen, data, data_length, hdr->digest);
	if (rc) {
		free(head);
		return ls_err_set(err, rc, "SHA-256 failed");
	}
	ls_header_encode(hdr, head);

	char hex[LS_DIGEST_HEX], final_name[LS_DIGEST_HEX + 8];
	ls_digest_hex(hdr->digest, hex);
	snprintf(final_name, sizeof(final_name), "%s.blob", hex);

	if (ls_blob_intact(dir_fd, final_name, hdr)) {
		/* Same content is already stored (blobs are content-addressed). */
		free(head);
		return 0;
	}

	char tmp_name[64];
	int fd = ls_tmpfile_create(tmp_dir_fd, "blob", tmp_name, sizeof(tmp_name));
	if (fd < 0) {
		free(head);
		return ls_err_set(err, fd, "creating a temporary blob: %s", strerror(-fd));
	}
	rc = ls_write_all(fd, head, LS_BLOB_PAGE + mpad, 0);
	if (rc == 0)
		rc = ls_write_all(fd, data, data_length, hdr->data_offset);
	if (rc == 0 && fsync(fd) != 0)
		rc = -errno;
	free(head);
	close(fd);
	if (rc == 0 && renameat(tmp_dir_fd, tmp_name, dir_fd, final_name) != 0)
		rc = -errno;
	if (rc == 0 && fsync(dir_fd) != 0)
		rc = -errno;
	if (rc) {
		unlinkat(tmp_dir_fd, tmp_name, 0);
		return ls_err_set(err, rc, "writing blob %s: %s", final_name, strerror(-rc));
	}
	return 0;
}

/* Decode a header page and check it on its own (magic, format, checksum, offsets). */
static int ls_header_check(const uint8_t page[LS_BLOB_PAGE], const char *what,
			   struct ls_blob_header *hdr, struct ls_err *err)
{
	ls_header_decode(page, hdr);
	if (memcmp(hdr->magic, LS_BLOB_MAGIC, 8) != 0)
		return ls_err_set(err, LS_E_BLOB_FORMAT, "%s: not a lorastore blob (bad magic)",
				  what);
	if (hdr->format != LS_BLOB_FORMAT)
		return ls_err_set(err, LS_E_BLOB_FORMAT,
				  "%s: blob format %u, this build reads format %u", what,
				  hdr->format, LS_BLOB_FORMAT);
	if (XXH3_64bits(page, LS_HDR_HEADER_XXH3) != hdr->header_xxh3)
		return ls_err_set(err, LS_E_CORRUPT, "%s: header checksum mismatch", what);
	bool sane = hdr->header_size == LS_BLOB_PAGE && hdr->manifest_offset == LS_BLOB_PAGE &&
		    hdr->manifest_length <= hdr->data_offset - LS_BLOB_PAGE &&
		    hdr->data_offset % LS_BLOB_PAGE == 0 && hdr->data_offset >= LS_BLOB_PAGE &&
		    hdr->data_length % LS_BLOB_PAGE == 0 &&
		    hdr->file_length == hdr->data_offset + hdr->data_length &&
		    hdr->data_offset + hdr->data_length >= hdr->data_offset;
	if (!sane)
		return ls_err_set(err, LS_E_CORRUPT, "%s: inconsistent offsets in the header",
				  what);
	return 0;
}

int ls_blob_read_header(int fd, const char *what, struct ls_blob_header *hdr,
			struct ls_err *err)
{
	uint8_t page[LS_BLOB_PAGE];
	struct stat st;
	if (fstat(fd, &st) != 0)
		return ls_err_set(err, -errno, "%s: %s", what, strerror(errno));
	if (st.st_size < (off_t)LS_BLOB_PAGE) {
		/* Empty, or a blob's start: cut short (a full disk, a copy stopped). */
		char magic[8];
		bool ours = st.st_size == 0 ||
			    (st.st_size >= 8 && ls_read_all(fd, magic, 8, 0) == 0 &&
			     memcmp(magic, LS_BLOB_MAGIC, 8) == 0);
		return ls_err_set(err, ours ? LS_E_BLOB_TRUNCATED : LS_E_BLOB_FORMAT,
				  "%s: %lld bytes is %s", what, (long long)st.st_size,
				  ours ? "shorter than a blob's header page (file truncated)"
				       : "too short for a blob");
	}
	int rc = ls_read_all(fd, page, LS_BLOB_PAGE, 0);
	if (rc)
		return ls_err_set(err, rc == LS_E_TRUNCATED ? LS_E_BLOB_TRUNCATED : rc,
				  "%s: reading the header: %s", what,
				  rc == LS_E_TRUNCATED ? "file truncated" : strerror(-rc));
	rc = ls_header_check(page, what, hdr, err);
	if (rc)
		return rc;
	if ((uint64_t)st.st_size < hdr->file_length)
		return ls_err_set(err, LS_E_BLOB_TRUNCATED,
				  "%s: file has %lld bytes, the header says %llu (file truncated)",
				  what, (long long)st.st_size, (unsigned long long)hdr->file_length);
	if ((uint64_t)st.st_size != hdr->file_length)
		return ls_err_set(err, LS_E_CORRUPT,
				  "%s: file has %lld bytes, the header says %llu", what,
				  (long long)st.st_size, (unsigned long long)hdr->file_length);
	return 0;
}

/* Read the manifest's bytes into *out (malloc'ed) and check them against the header. */
static int ls_manifest_bytes(int fd, const char *what, const struct ls_blob_header *hdr,
			     uint8_t **out, struct ls_err *err)
{
	size_t mlen = (size_t)hdr->manifest_length;
	uint8_t *buf = malloc(mlen ? mlen : 1);
	if (!buf)
		return ls_err_set(err, -ENOMEM, "%s: out of memory for the manifest", what);
	int rc = ls_read_all(fd, buf, mlen, hdr->manifest_offset);
	if (rc) {
		free(buf);
		return ls_err_set(err, rc == LS_E_TRUNCATED ? LS_E_BLOB_TRUNCATED : rc,
				  "%s: reading the manifest: %s", what,
				  rc == LS_E_TRUNCATED ? "file truncated" : strerror(-rc));
	}
	if (XXH3_64bits(buf, mlen) != hdr->manifest_xxh3) {
		free(buf);
		return ls_err_set(err, LS_E_CORRUPT, "%s: manifest checksum mismatch", what);
	}
	*out = buf;
	return 0;
}

int ls_blob_check_manifest(int fd, const char *what, const struct ls_blob_header *hdr,
			   struct ls_err *err)
{
	uint8_t *buf = NULL;
	int rc = ls_manifest_bytes(fd, what, hdr, &buf, err);
	free(buf);
	return rc;
}

int ls_blob_open(const char *path, const uint8_t digest[LS_DIGEST_LEN], int *out,
		 struct ls_blob_header *hdr, struct ls_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		int e = errno;
		return ls_err_set(err, e == ENOENT ? LS_E_BLOB_MISSING : -e, "%s: %s", path,
				  e == ENOENT ? "blob missing from the store" : strerror(e));
	}
	int rc = ls_blob_read_header(fd, path, hdr, err);
	if (rc == 0 && memcmp(hdr->digest, digest, LS_DIGEST_LEN) != 0)
		rc = ls_err_set(err, LS_E_CORRUPT, "%s: the digest in its header differs", path);
	if (rc == 0)
		rc = ls_blob_check_manifest(fd, path, hdr, err);
	if (rc) {
		close(fd);
		return rc;
	}
	*out = fd;
	return 0;
}

int ls_blob_read_manifest(int fd, const char *what, const struct ls_blob_header *hdr,
			  Lorastore__BlobManifest **out, struct ls_err *err)
{
	uint8_t *buf = NULL;
	int rc = ls_manifest_bytes(fd, what, hdr, &buf, err);
	if (rc)
		return rc;
	*out = lorastore__blob_manifest__unpack(NULL, (size_t)hdr->manifest_length, buf);
	free(buf);
	if (!*out)
		return ls_err_set(err, LS_E_CORRUPT, "%s: manifest does not decode", what);
	return 0;
}

int ls_blob_verify(int fd, const char *what, const struct ls_blob_header *hdr, int full,
		   struct ls_err *err)
{
	size_t chunk = LS_BLOB_CHUNK;
	uint8_t *buf = malloc(chunk);
	XXH3_state_t *xs = XXH3_createState();
	EVP_MD_CTX *md = full ? EVP_MD_CTX_new() : NULL;
	int rc = 0;
	if (!buf || !xs || (full && !md)) {
		rc = ls_err_set(err, -ENOMEM, "%s: out of memory verifying", what);
		goto out;
	}
	XXH3_64bits_reset(xs);
	if (full) {
		if (!EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
			rc = ls_err_set(err, -ENOMEM, "SHA-256 failed");
			goto out;
		}
		/* The digest covers the manifest, then the data region. */
		uint8_t *mbuf = malloc(hdr->manifest_length ? hdr->manifest_length : 1);
		if (!mbuf) {
			rc = ls_err_set(err, -ENOMEM, "%s: out of memory verifying", what);
			goto out;
		}
		rc = ls_read_all(fd, mbuf, hdr->manifest_length, hdr->manifest_offset);
		if (rc == 0)
			EVP_DigestUpdate(md, mbuf, hdr->manifest_length);
		free(mbuf);
		if (rc) {
			rc = ls_err_set(err, rc == LS_E_TRUNCATED ? LS_E_BLOB_TRUNCATED : rc,
					"%s: reading: %s", what,
					rc == LS_E_TRUNCATED ? "file truncated" : strerror(-rc));
			goto out;
		}
	}
	for (uint64_t off = 0; off < hdr->data_length; off += chunk) {
		size_t n = hdr->data_length - off < chunk ? (size_t)(hdr->data_length - off) : chunk;
		rc = ls_read_all(fd, buf, n, hdr->data_offset + off);
		if (rc) {
			rc = ls_err_set(err, rc == LS_E_TRUNCATED ? LS_E_BLOB_TRUNCATED : rc,
					"%s: reading the data: %s", what,
					rc == LS_E_TRUNCATED ? "file truncated" : strerror(-rc));
			goto out;
		}
		XXH3_64bits_update(xs, buf, n);
		if (full)
			EVP_DigestUpdate(md, buf, n);
	}
	if (XXH3_64bits_digest(xs) != hdr->data_xxh3) {
		rc = ls_err_set(err, LS_E_CORRUPT, "%s: data checksum mismatch", what);
		goto out;
	}
	if (full) {
		uint8_t digest[EVP_MAX_MD_SIZE];
		unsigned int len = 0;
		EVP_DigestFinal_ex(md, digest, &len);
		if (len != LS_DIGEST_LEN || memcmp(digest, hdr->digest, LS_DIGEST_LEN) != 0) {
			rc = ls_err_set(err, LS_E_CORRUPT, "%s: SHA-256 digest mismatch", what);
			goto out;
		}
	}
out:
	free(buf);
	XXH3_freeState(xs);
	EVP_MD_CTX_free(md);
	return rc;
}

struct ls_blob_check {
	uint8_t want[LS_DIGEST_LEN];
	uint8_t page[LS_BLOB_PAGE];
	struct ls_blob_header hdr;
	bool have_header;
	uint64_t pos;               /* bytes fed */
	EVP_MD_CTX *sha;            /* manifest, then data region */
	XXH3_state_t *manifest, *data;
};

int ls_blob_check_new(const uint8_t digest[LS_DIGEST_LEN], struct ls_blob_check **out)
{
	struct ls_blob_check *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	memcpy(c->want, digest, LS_DIGEST_LEN);
	c->sha = EVP_MD_CTX_new();
	c->manifest = XXH3_createState();
	c->data = XXH3_createState();
	if (!c->sha || !c->manifest || !c->data || !EVP_DigestInit_ex(c->sha, EVP_sha256(), NULL)) {
		ls_blob_check_free(c);
		return -ENOMEM;
	}
	XXH3_64bits_reset(c->manifest);
	XXH3_64bits_reset(c->data);
	*out = c;
	return 0;
}

void ls_blob_check_free(struct ls_blob_check *c)
{
	if (!c)
		return;
	EVP_MD_CTX_free(c->sha);
	XXH3_freeState(c->manifest);
	XXH3_freeState(c->data);
	free(c);
}

/* The part of [pos, pos + len) inside [lo, hi): its offset into the chunk and its length. */
static size_t ls_overlap(uint64_t pos, size_t len, uint64_t lo, uint64_t hi, size_t *skip)
{
	uint64_t a = pos > lo ? pos : lo, b = pos + len < hi ? pos + len : hi;
	if (a >= b)
		return 0;
	*skip = (size_t)(a - pos);
	return (size_t)(b - a);
}

int ls_blob_check_feed(struct ls_blob_check *c, const void *data, size_t len, const char *what,
		       struct ls_err *err)
{
	const uint8_t *p = data;
	size_t skip = 0, n;
	if (!c->have_header && (n = ls_overlap(c->pos, len, 0, LS_BLOB_PAGE, &skip))) {
		memcpy(c->page + c->pos + skip, p + skip, n);
		if (c->pos + skip + n == LS_BLOB_PAGE) {
			int rc = ls_header_check(c->page, what, &c->hdr, err);
			if (rc)
				return rc;
			if (memcmp(c->hdr.digest, c->want, LS_DIGEST_LEN) != 0)
				return ls_err_set(err, LS_E_CORRUPT,
						  "%s: the digest in its header differs", what);
			c->have_header = true;
		}
	}
	if (c->have_header) {
		const struct ls_blob_header *h = &c->hdr;
		if (c->pos + len > h->file_length)
			return ls_err_set(err, LS_E_CORRUPT,
					  "%s: longer than the %llu bytes its header says", what,
					  (unsigned long long)h->file_length);
		if ((n = ls_overlap(c->pos, len, h->manifest_offset,
				    h->manifest_offset + h->manifest_length, &skip))) {
			EVP_DigestUpdate(c->sha, p + skip, n);
			XXH3_64bits_update(c->manifest, p + skip, n);
		}
		if ((n = ls_overlap(c->pos, len, h->data_offset, h->file_length, &skip))) {
			EVP_DigestUpdate(c->sha, p + skip, n);
			XXH3_64bits_update(c->data, p + skip, n);
		}
	}
	c->pos += len;
	return 0;
}

int ls_blob_check_end(struct ls_blob_check *c, const char *what, struct ls_blob_header *hdr,
		      struct ls_err *err)
{
	if (!c->have_header || c->pos < c->hdr.file_length)
		return ls_err_set(err, LS_E_BLOB_TRUNCATED,
				  "%s: %llu bytes, %s (file truncated)", what,
				  (unsigned long long)c->pos,
				  c->have_header ? "fewer than its header says"
						 : "shorter than a blob's header page");
	if (XXH3_64bits_digest(c->manifest) != c->hdr.manifest_xxh3)
		return ls_err_set(err, LS_E_CORRUPT, "%s: manifest checksum mismatch", what);
	if (XXH3_64bits_digest(c->data) != c->hdr.data_xxh3)
		return ls_err_set(err, LS_E_CORRUPT, "%s: data checksum mismatch", what);
	uint8_t digest[EVP_MAX_MD_SIZE];
	unsigned int dlen = 0;
	EVP_DigestFinal_ex(c->sha, digest, &dlen);
	if (dlen != LS_DIGEST_LEN || memcmp(digest, c->hdr.digest, LS_DIGEST_LEN) != 0)
		return ls_err_set(err, LS_E_CORRUPT, "%s: SHA-256 digest mismatch", what);
	*hdr = c->hdr;
	return 0;
}
