/*
 * A small client of the S3 API, over libcurl: the requests the origin makes
 * (origin.h) and nothing else.  libcurl signs every request (AWS Signature
 * Version 4, CURLOPT_AWS_SIGV4); this file writes the payload's SHA-256 into
 * x-amz-content-sha256 itself (libcurl 7.88 does not, and the store may then
 * check an upload), percent-encodes keys and sorts query parameters as the
 * signature's canonical request wants them.  List results are parsed with
 * expat (s3_xml.c).
 *
 * Thread safety: a client may be used from several threads at once; each
 * request has its own curl handle, and connections and DNS results are
 * shared between them under a lock.  Call ls_s3_global_init once, before any
 * thread uses libcurl (the daemon's main does, before its workers start).
 *
 * Errors: a message names the endpoint and bucket, never a secret.
 * LS_E_NOT_FOUND for a missing object, -EEXIST for a conditional PUT that
 * lost (412), LS_E_ORIGIN for everything else the server or the network
 * answered (refused, timed out, 403 with the server's code, 5xx).
 */
#ifndef LS_S3_H
#define LS_S3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ls_error.h"

/* Bounds (seconds) of the request latency buckets: 1 ms to 30 s. */
#define LS_S3_LATENCY_BUCKETS 14
extern const double ls_s3_latency_bounds[LS_S3_LATENCY_BUCKETS];

struct ls_s3_config {
	const char *endpoint;      /* "http://127.0.0.1:8333", "https://s3.eu-west-1.amazonaws.com" */
	const char *region;        /* signing region; NULL: "us-east-1" */
	const char *bucket;
	bool virtual_host;         /* BUCKET.host/KEY rather than host/BUCKET/KEY */
	const char *access_key;
	const char *secret_key;
	const char *session_token; /* NULL or "" when there is none */
	long connect_timeout_ms;   /* 0: 3,000 */
	/*
	 * A transfer that moves nothing for this long fails (a slow but moving
	 * download of a large blob goes on); small requests (records, lists) are
	 * bounded by it as a whole.  0: 10,000.
	 */
	long stall_timeout_ms;
	/*
	 * ls_s3_put_file of more bytes than this is a multipart upload of
	 * parts of LS_S3_PART_SIZE (0: 64 MiB; at least LS_S3_PART_SIZE).
	 */
	uint64_t multipart_threshold;
	const char *label;         /* how messages name the store; NULL: "s3://BUCKET at ENDPOINT" */
};

struct ls_s3;

/* Once per process, before threads use libcurl: 0 or LS_E_ORIGIN. */
int ls_s3_global_init(struct ls_err *err);

/* A client (the strings are copied): 0, -ENOMEM, or -EINVAL for a bad endpoint. */
int ls_s3_new(const struct ls_s3_config *cfg, struct ls_s3 **out, struct ls_err *err);
void ls_s3_free(struct ls_s3 *s3);

/* "s3://BUCKET at ENDPOINT": how messages name the origin. */
const char *ls_s3_label(const struct ls_s3 *s3);

/* What the client has done since it was made (for stats and metrics). */
struct ls_s3_counters {
	uint64_t requests;
	uint64_t errors;           /* requests that failed (404 and a lost 412 are answers, not errors) */
	uint64_t bytes_in, bytes_out;
	/* Latency of each request: counts per bucket of ls_s3_latency_bounds (the last: above). */
	uint64_t latency[LS_S3_LATENCY_BUCKETS + 1];
	double latency_sum_s;
};
void ls_s3_counters(struct ls_s3 *s3, struct ls_s3_counters *out);

/* Create the bucket (tests and first use): 0, or LS_E_ORIGIN (one that exists is fine). */
int ls_s3_create_bucket(struct ls_s3 *s3, struct ls_err *err);

/*
 * PUT len bytes as key.  if_absent sends If-None-Match: * (the server
 * answers 412, returned as -EEXIST, when the key exists).
 */
int ls_s3_put(struct ls_s3 *s3, const char *key, const void *data, size_t len, bool if_absent,
	      struct ls_err *err);

/* Parts of a multipart upload: S3 wants at least 5 MiB but for the last. */
#define LS_S3_PART_SIZE ((uint64_t)16 << 20)

/*
 * PUT the len bytes of file fd from offset 0 (read twice: hashed, then
 * sent); past the client's multipart threshold as a multipart upload (each
 * part hashed and sent in turn; aborted on a failure, so that the store
 * keeps no part).
 */
int ls_s3_put_file(struct ls_s3 *s3, const char *key, int fd, uint64_t len, struct ls_err *err);

/* GET key into a malloc'ed buffer of at most max bytes (LS_E_ORIGIN when larger). */
int ls_s3_get(struct ls_s3 *s3, const char *key, size_t max, uint8_t **data, size_t *len,
	      struct ls_err *err);

/* GET key into file fd (written from its current offset); *len: bytes written. */
int ls_s3_get_file(struct ls_s3 *s3, const char *key, int fd, uint64_t *len, struct ls_err *err);

/* Where a GET's body goes, piece by piece, in order: 0, or a code that stops the transfer. */
typedef int (*ls_s3_sink_fn)(void *ud, const void *data, size_t len);

/*
 * GET key into sink; *len: bytes it took.  A code the sink returned is
 * returned as it is (the sink says why in its own words); else as
 * ls_s3_get_file.
 */
int ls_s3_get_to(struct ls_s3 *s3, const char *key, ls_s3_sink_fn sink, void *ud, uint64_t *len,
		 struct ls_err *err);

/* Whether key exists (HEAD): 0 with *size, or LS_E_NOT_FOUND. */
int ls_s3_head(struct ls_s3 *s3, const char *key, uint64_t *size, struct ls_err *err);

/* DELETE key (one that is absent is fine). */
int ls_s3_delete(struct ls_s3 *s3, const char *key, struct ls_err *err);

/* Called for each key of a listing, in order; non-zero stops it and is returned. */
typedef int (*ls_s3_key_fn)(void *ud, const char *key, uint64_t size);

/*
 * Every key beginning with prefix and sorting after start_after (NULL: from
 * the first), in order (ListObjectsV2, page after page).
 */
int ls_s3_list(struct ls_s3 *s3, const char *prefix, const char *start_after, ls_s3_key_fn fn,
	       void *ud, struct ls_err *err);

/* One parsed page of a ListObjectsV2 result, or an S3 error document (s3_xml.c). */
struct ls_s3_page {
	size_t n;
	char **keys;
	uint64_t *sizes;
	bool truncated;
	char *next_token;          /* NextContinuationToken, or NULL */
	char *error_code;          /* <Error><Code>, or NULL */
	char *error_message;       /* <Error><Message>, or NULL */
	char *upload_id;           /* <InitiateMultipartUploadResult><UploadId>, or NULL */
};

/*
 * Parse len bytes of XML (a ListBucketResult, an Error, or the results of
 * a multipart upload's initiation and completion).  0, or LS_E_ORIGIN for
 * text that is not well-formed XML of those kinds.  Free with
 * ls_s3_page_free (also after a failure).
 */
int ls_s3_parse_page(const char *xml, size_t len, struct ls_s3_page *out, struct ls_err *err);
void ls_s3_page_free(struct ls_s3_page *p);

#endif
