/* A client of the S3 API over libcurl (s3.h). */
#define _GNU_SOURCE
#include "s3.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "ls_clock.h"
#include "ls_digest.h"

/* SHA-256 of no bytes: the payload hash of a GET, HEAD or DELETE. */
static const char ls_empty_sha256[] =
	"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/* Error documents and small GETs kept in memory at most this long. */
#define LS_S3_ERROR_BODY_MAX (64u << 10)

struct ls_s3 {
	char *scheme_host;          /* "http://127.0.0.1:8333" (path style) */
	char *base;                 /* what keys are appended to: ".../bucket/" or "http://bucket.host/" */
	char *bucket;
	char *sigv4;                /* "aws:amz:REGION:s3" */
	char *access_key, *secret_key, *token_header;
	char *label;
	long connect_ms, stall_ms;
	uint64_t multipart_threshold;
	CURLSH *share;
	pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
	pthread_mutex_t counters_lock;
	struct ls_s3_counters counters;
};

int ls_s3_global_init(struct ls_err *err)
{
	CURLcode c = curl_global_init(CURL_GLOBAL_DEFAULT);
	if (c != CURLE_OK)
		return ls_err_set(err, LS_E_ORIGIN, "libcurl: %s", curl_easy_strerror(c));
	return 0;
}

static void ls_share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ud)
{
	(void)h;
	(void)access;
	struct ls_s3 *s3 = ud;
	pthread_mutex_lock(&s3->share_locks[data]);
}

static void ls_share_unlock(CURL *h, curl_lock_data data, void *ud)
{
	(void)h;
	struct ls_s3 *s3 = ud;
	pthread_mutex_unlock(&s3->share_locks[data]);
}

/* Percent-encode s into a new string, keeping unreserved characters (and '/' when keep_slash). */
static char *ls_uri_encode(const char *s, bool keep_slash)
{
	size_t n = strlen(s);
	char *out = malloc(3 * n + 1), *o = out;
	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		unsigned char c = *p;
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
			*o++ = (char)c;
		} else {
			snprintf(o, 4, "%%%02X", c);
			o += 3;
		}
	}
	*o = '\0';
	return out;
}

int ls_s3_new(const struct ls_s3_config *cfg, struct ls_s3 **out, struct ls_err *err)
{
	*out = NULL;
	const char *ep = cfg->endpoint;
	const char *sep = ep ? strstr(ep, "://") : NULL;
	if (!sep || (strncmp(ep, "http://", 7) != 0 && strncmp(ep, "https://", 8) != 0) ||
	    !sep[3] || !cfg->bucket || !*cfg->bucket)
		return ls_err_set(err, -EINVAL,
				  "origin endpoint '%s': give http://HOST[:PORT] or https://HOST[:PORT] "
				  "and a bucket",
				  ep ? ep : "");
	struct ls_s3 *s3 = calloc(1, sizeof(*s3));
	if (!s3)
		return ls_err_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&s3->share_locks[i], NULL);
	pthread_mutex_init(&s3->counters_lock, NULL);
	size_t eplen = strlen(ep);
	while (eplen > 0 && ep[eplen - 1] == '/')
		eplen--;
	s3->scheme_host = strndup(ep, eplen);
	s3->bucket = strdup(cfg->bucket);
	const char *region = cfg->region && *cfg->region ? cfg->region : "us-east-1";
	int ok = s3->scheme_host && s3->bucket &&
		 asprintf(&s3->sigv4, "aws:amz:%s:s3", region) >= 0 &&
		 (cfg->label ? (s3->label = strdup(cfg->label)) != NULL
			     : asprintf(&s3->label, "s3://%s at %s", cfg->bucket, s3->scheme_host) >= 0);
	if (ok) {
		if (cfg->virtual_host) {
			size_t scheme_len = (size_t)(sep + 3 - ep);
			ok = asprintf(&s3->base, "%.*s%s.%s/", (int)scheme_len, ep, cfg->bucket,
				      s3->scheme_host + scheme_len) >= 0;
		} else {
			char *b = ls_uri_encode(cfg->bucket, false);
			ok = b && asprintf(&s3->base, "%s/%s/", s3->scheme_host, b) >= 0;
			free(b);
		}
	}
	s3->access_key = strdup(cfg->access_key ? cfg->access_key : "");
	s3->secret_key = strdup(cfg->secret_key ? cfg->secret_key : "");
	if (ok && cfg->session_token && *cfg->session_token)
		ok = asprintf(&s3->token_header, "x-amz-security-token: %s", cfg->session_token) >= 0;
	s3->connect_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 3000;
	s3->stall_ms = cfg->stall_timeout_ms > 0 ? cfg->stall_timeout_ms : 10000;
	s3->multipart_threshold = cfg->multipart_threshold ? cfg->multipart_threshold : 64u << 20;
	if (s3->multipart_threshold < LS_S3_PART_SIZE)
		s3->multipart_threshold = LS_S3_PART_SIZE;
	s3->share = curl_share_init();
	if (!ok || !s3->access_key || !s3->secret_key || !s3->share || !s3->base) {
		ls_s3_free(s3);
		return ls_err_set(err, -ENOMEM, "out of memory");
	}
	curl_share_setopt(s3->share, CURLSHOPT_LOCKFUNC, ls_share_lock);
	curl_share_setopt(s3->share, CURLSHOPT_UNLOCKFUNC, ls_share_unlock);
	curl_share_setopt(s3->share, CURLSHOPT_USERDATA, s3);
	curl_share_setopt(s3->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
	curl_share_setopt(s3->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	*out = s3;
	return 0;
}

void ls_s3_free(struct ls_s3 *s3)
{
	if (!s3)
		return;
	if (s3->share)
		curl_share_cleanup(s3->share);
	for (size_t i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&s3->share_locks[i]);
	pthread_mutex_destroy(&s3->counters_lock);
	if (s3->secret_key)
		explicit_bzero(s3->secret_key, strlen(s3->secret_key));
	if (s3->token_header)
		explicit_bzero(s3->token_header, strlen(s3->token_header));
	free(s3->scheme_host);
	free(s3->base);
	free(s3->bucket);
	free(s3->sigv4);
	free(s3->access_key);
	free(s3->secret_key);
	free(s3->token_header);
	free(s3->label);
	free(s3);
}

const char *ls_s3_label(const struct ls_s3 *s3)
{
	return s3->label;
}

void ls_s3_counters(struct ls_s3 *s3, struct ls_s3_counters *out)
{
	pthread_mutex_lock(&s3->counters_lock);
	*out = s3->counters;
	pthread_mutex_unlock(&s3->counters_lock);
}

/* One request: what goes out, and where what comes back goes. */
struct ls_s3_req {
	const char *method;         /* "GET", "PUT", "POST", "HEAD", "DELETE" */
	const char *key;            /* NULL: the bucket itself */
	const char *query;          /* sorted and encoded, or NULL */
	bool if_absent;
	/* PUT or POST body: from memory, or from a file (from body_base on) */
	const uint8_t *body;
	int body_fd;
	uint64_t body_base, body_len, body_pos;
	char payload_sha256[65];
	/* GET body: to memory (up to max), or to a file or a sink once the status is 2xx */
	ls_s3_sink_fn sink;
	void *sink_ud;
	int sink_rc;                /* what the sink returned to stop the transfer */
	int out_fd;
	size_t max;
	uint8_t *buf;
	size_t len, cap;
	uint64_t written;
	int write_errno;
	bool too_large;
	CURL *h;
	/* results */
	long status;
	curl_off_t content_length;
	char etag[160];             /* the ETag header (a part's, for its completion) */
};

static size_t ls_on_read(char *dst, size_t size, size_t nmemb, void *ud)
{
	struct ls_s3_req *r = ud;
	size_t want = size * nmemb;
	uint64_t left = r->body_len - r->body_pos;
	if (want > left)
		want = (size_t)left;
	if (want == 0)
		return 0;
	if (r->body) {
		memcpy(dst, r->body + r->body_pos, want);
	} else {
		ssize_t n = pread(r->body_fd, dst, want, (off_t)(r->body_base + r->body_pos));
		if (n <= 0)
			return CURL_READFUNC_ABORT;
		want = (size_t)n;
	}
	r->body_pos += want;
	return want;
}

/* Keep the ETag header: a multipart upload's completion names every part by it. */
static size_t ls_on_header(char *line, size_t size, size_t nmemb, void *ud)
{
	struct ls_s3_req *r = ud;
	size_t n = size * nmemb;
	if (n > 5 && strncasecmp(line, "etag:", 5) == 0) {
		const char *v = line + 5;
		size_t len = n - 5;
		while (len && (*v == ' ' || *v == '\t'))
			v++, len--;
		while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
			len--;
		if (len < sizeof(r->etag)) {
			memcpy(r->etag, v, len);
			r->etag[len] = '\0';
		}
	}
	return n;
}

static size_t ls_on_write(char *src, size_t size, size_t nmemb, void *ud)
{
	struct ls_s3_req *r = ud;
	size_t n = size * nmemb;
	long status = 0;
	curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &status);
	if (r->sink && status >= 200 && status < 300) {
		r->sink_rc = r->sink(r->sink_ud, src, n);
		if (r->sink_rc)
			return 0;
		r->written += n;
		return n;
	}
	if (r->out_fd >= 0 && status >= 200 && status < 300) {
		for (size_t done = 0; done < n;) {
			ssize_t w = write(r->out_fd, src + done, n - done);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				r->write_errno = w < 0 ? errno : EIO;
				return 0;
			}
			done += (size_t)w;
		}
		r->written += n;
		return n;
	}
	size_t max = r->out_fd >= 0 || r->sink || status >= 300 ? LS_S3_ERROR_BODY_MAX : r->max;
	if (r->len + n > max) {
		r->too_large = true;
		return 0;
	}
	if (r->len + n > r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 4096;
		while (cap < r->len + n)
			cap *= 2;
		uint8_t *b = realloc(r->buf, cap + 1);
		if (!b)
			return 0;
		r->buf = b;
		r->cap = cap;
	}
	memcpy(r->buf + r->len, src, n);
	r->len += n;
	return n;
}

/* The server's error document, said in a sentence (never a secret: the server does not echo one). */
static int ls_s3_http_error(struct ls_s3 *s3, struct ls_s3_req *r, struct ls_err *err)
{
	struct ls_s3_page page;
	struct ls_err perr;
	const char *code = NULL, *msg = NULL;
	if (r->len > 0 && ls_s3_parse_page((const char *)r->buf, r->len, &page, &perr) == 0) {
		code = page.error_code;
		msg = page.error_message;
	}
	const char *hint = r->status == 403 ? " (check the origin's credentials and region)" : "";
	ls_err_set(err, LS_E_ORIGIN, "origin %s: %s %s: HTTP %ld%s%s%s%s%s", s3->label, r->method,
		   r->key ? r->key : "(bucket)", r->status, code ? " " : "", code ? code : "",
		   msg ? ": " : "", msg ? msg : "", hint);
	if (r->len > 0)
		ls_s3_page_free(&page);
	return LS_E_ORIGIN;
}

const double ls_s3_latency_bounds[LS_S3_LATENCY_BUCKETS] = {
	0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30,
};

static void ls_s3_count(struct ls_s3 *s3, const struct ls_s3_req *r, int64_t ns, bool failed)
{
	size_t b = 0;
	while (b < LS_S3_LATENCY_BUCKETS && (double)ns / 1e9 > ls_s3_latency_bounds[b])
		b++;
	pthread_mutex_lock(&s3->counters_lock);
	s3->counters.requests++;
	s3->counters.errors += failed;
	s3->counters.bytes_out += r->body_pos;
	s3->counters.bytes_in += r->written + (r->status >= 200 && r->status < 300 ? r->len : 0);
	s3->counters.latency[b]++;
	s3->counters.latency_sum_s += (double)ns / 1e9;
	pthread_mutex_unlock(&s3->counters_lock);
}

/*
 * Perform r: 0 for a 2xx answer, LS_E_NOT_FOUND for 404, -EEXIST for 412,
 * LS_E_ORIGIN (with the server's words) for any other answer or failure.
 */
static int ls_s3_perform(struct ls_s3 *s3, struct ls_s3_req *r, struct ls_err *err)
{
	char *key = r->key ? ls_uri_encode(r->key, true) : NULL;
	char *url = NULL;
	if ((r->key && !key) || asprintf(&url, "%s%s%s%s", s3->base, key ? key : "",
					  r->query ? "?" : "", r->query ? r->query : "") < 0) {
		free(key);
		return ls_err_set(err, -ENOMEM, "out of memory");
	}
	free(key);
	CURL *h = curl_easy_init();
	if (!h) {
		free(url);
		return ls_err_set(err, -ENOMEM, "out of memory (curl)");
	}
	r->h = h;
	char sha_header[96], errbuf[CURL_ERROR_SIZE] = "";
	snprintf(sha_header, sizeof(sha_header), "x-amz-content-sha256: %s",
		 r->payload_sha256[0] ? r->payload_sha256 : ls_empty_sha256);
	struct curl_slist *hdrs = curl_slist_append(NULL, sha_header);
	if (hdrs && s3->token_header)
		hdrs = curl_slist_append(hdrs, s3->token_header);
	if (hdrs && r->if_absent)
		hdrs = curl_slist_append(hdrs, "If-None-Match: *");
	int rc = 0;
	if (!hdrs) {
		rc = ls_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_SHARE, s3->share);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_AWS_SIGV4, s3->sigv4);
	curl_easy_setopt(h, CURLOPT_USERNAME, s3->access_key);
	curl_easy_setopt(h, CURLOPT_PASSWORD, s3->secret_key);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, s3->connect_ms);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	/* A transfer that stalls fails; one that moves goes on. */
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (s3->stall_ms + 999) / 1000);
	if (r->out_fd < 0 && !r->sink && r->body_len < (1u << 20))
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, s3->stall_ms);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, ls_on_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, ls_on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
	if (strcmp(r->method, "POST") == 0) {
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->body ? (const char *)r->body : "");
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
		r->body_pos = r->body_len; /* sent by curl from memory: counted as sent */
	} else if (strcmp(r->method, "PUT") == 0) {
		curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(h, CURLOPT_READFUNCTION, ls_on_read);
		curl_easy_setopt(h, CURLOPT_READDATA, r);
		curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
	} else if (strcmp(r->method, "HEAD") == 0) {
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	} else if (strcmp(r->method, "DELETE") == 0) {
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
	}
	int64_t t0 = ls_mono_ns();
	CURLcode c = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
	curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &r->content_length);
	if (c != CURLE_OK && r->sink_rc) {
		rc = r->sink_rc; /* the sink said why */
	} else if (c != CURLE_OK) {
		if (r->write_errno)
			rc = ls_err_set(err, -r->write_errno, "origin %s: GET %s: writing: %s",
					s3->label, r->key, strerror(r->write_errno));
		else if (r->too_large)
			rc = ls_err_set(err, LS_E_ORIGIN, "origin %s: %s %s: answer over %zu bytes",
					s3->label, r->method, r->key ? r->key : "(bucket)",
					r->status >= 300 || r->out_fd >= 0 ? (size_t)LS_S3_ERROR_BODY_MAX
									   : r->max);
		else
			rc = ls_err_set(err, LS_E_ORIGIN, "origin %s: %s %s: %s", s3->label,
					r->method, r->key ? r->key : "(bucket)",
					errbuf[0] ? errbuf : curl_easy_strerror(c));
	} else if (r->status >= 200 && r->status < 300) {
		rc = 0;
	} else if (r->status == 404) {
		rc = ls_err_set(err, LS_E_NOT_FOUND, "origin %s: no %s", s3->label,
				r->key ? r->key : "bucket");
	} else if (r->status == 412 && r->if_absent) {
		rc = ls_err_set(err, -EEXIST, "origin %s: %s exists", s3->label, r->key);
	} else {
		rc = ls_s3_http_error(s3, r, err);
	}
	ls_s3_count(s3, r, ls_mono_ns() - t0,
		    rc != 0 && rc != LS_E_NOT_FOUND && rc != -EEXIST && !r->sink_rc);
out:
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(h);
	free(url);
	return rc;
}

static void ls_req_init(struct ls_s3_req *r, const char *method, const char *key)
{
	memset(r, 0, sizeof(*r));
	r->method = method;
	r->key = key;
	r->body_fd = -1;
	r->out_fd = -1;
}

static void ls_sha256_hex_of(const void *data, size_t len, char hex[65])
{
	uint8_t d[32];
	unsigned dl = 0;
	EVP_Digest(data, len, d, &dl, EVP_sha256(), NULL);
	ls_digest_hex(d, hex);
}

int ls_s3_create_bucket(struct ls_s3 *s3, struct ls_err *err)
{
	struct ls_s3_req r;
	ls_req_init(&r, "PUT", NULL);
	r.body = (const uint8_t *)"";
	int rc = ls_s3_perform(s3, &r, err);
	/* Created before by this owner: there is nothing left to do. */
	if (rc == LS_E_ORIGIN && r.status == 409 && r.buf &&
	    memmem(r.buf, r.len, "BucketAlreadyOwnedByYou", 23)) {
		ls_err_clear(err);
		rc = 0;
	}
	free(r.buf);
	return rc;
}

int ls_s3_put(struct ls_s3 *s3, const char *key, const void *data, size_t len, bool if_absent,
	      struct ls_err *err)
{
	struct ls_s3_req r;
	ls_req_init(&r, "PUT", key);
	r.body = data ? data : (const void *)"";
	r.body_len = len;
	r.if_absent = if_absent;
	ls_sha256_hex_of(r.body, len, r.payload_sha256);
	int rc = ls_s3_perform(s3, &r, err);
	free(r.buf);
	return rc;
}

/* SHA-256 (hex) of len bytes of fd from base. */
static int ls_file_sha256(int fd, uint64_t base, uint64_t len, const char *key, char hex[65],
			  struct ls_err *err)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t chunk = 1u << 20;
	uint8_t *buf = malloc(chunk);
	if (!ctx || !buf || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(ctx);
		free(buf);
		return ls_err_set(err, -ENOMEM, "out of memory");
	}
	int rc = 0;
	for (uint64_t off = 0; off < len;) {
		size_t want = len - off < chunk ? (size_t)(len - off) : chunk;
		ssize_t n = pread(fd, buf, want, (off_t)(base + off));
		if (n <= 0) {
			rc = ls_err_set(err, n < 0 ? -errno : LS_E_BLOB_TRUNCATED,
					"uploading %s: reading the file: %s", key,
					n < 0 ? strerror(errno) : "shorter than expected");
			break;
		}
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		off += (uint64_t)n;
	}
	uint8_t d[32];
	unsigned dl = 0;
	EVP_DigestFinal_ex(ctx, d, &dl);
	EVP_MD_CTX_free(ctx);
	free(buf);
	if (rc == 0)
		ls_digest_hex(d, hex);
	return rc;
}

/* A POST of body (len bytes) to key?query, its answer parsed (an Error inside a 200 too). */
static int ls_s3_post(struct ls_s3 *s3, const char *key, const char *query, const char *body,
		      size_t len, struct ls_s3_page *page, struct ls_err *err)
{
	struct ls_s3_req r;
	ls_req_init(&r, "POST", key);
	r.query = query;
	r.body = (const uint8_t *)body;
	r.body_len = len;
	r.max = 1u << 20;
	ls_sha256_hex_of(body ? body : "", len, r.payload_sha256);
	int rc = ls_s3_perform(s3, &r, err);
	if (rc == 0)
		rc = ls_s3_parse_page((const char *)r.buf, r.len, page, err);
	free(r.buf);
	if (rc == 0 && page->error_code)
		rc = ls_err_set(err, LS_E_ORIGIN, "origin %s: POST %s: %s%s%s", s3->label, key,
				page->error_code, page->error_message ? ": " : "",
				page->error_message ? page->error_message : "");
	return rc;
}

/* The text of s with &, < and > escaped for an XML element (at most cap bytes). */
static void ls_xml_text(const char *s, char *out, size_t cap)
{
	size_t o = 0;
	for (; *s && o + 6 < cap; s++) {
		const char *e = *s == '&' ? "&amp;" : *s == '<' ? "&lt;" : *s == '>' ? "&gt;" : NULL;
		if (e) {
			memcpy(out + o, e, strlen(e));
			o += strlen(e);
		} else {
			out[o++] = *s;
		}
	}
	out[o] = '\0';
}

/* A multipart upload of the len bytes of fd: begin, each part, complete (or abort). */
static int ls_s3_put_parts(struct ls_s3 *s3, const char *key, int fd, uint64_t len,
			   struct ls_err *err)
{
	struct ls_s3_page page;
	int rc = ls_s3_post(s3, key, "uploads=", "", 0, &page, err);
	char *id = rc == 0 ? page.upload_id : NULL;
	page.upload_id = NULL;
	if (rc == 0)
		ls_s3_page_free(&page);
	if (rc)
		return rc;
	char *enc_id = ls_uri_encode(id, false);
	size_t n_parts = (size_t)((len + LS_S3_PART_SIZE - 1) / LS_S3_PART_SIZE);
	size_t cap = 128 + n_parts * 240;
	char *xml = malloc(cap);
	if (!enc_id || !xml) {
		rc = ls_err_set(err, -ENOMEM, "out of memory");
		goto abort;
	}
	size_t used = (size_t)snprintf(xml, cap, "<CompleteMultipartUpload>");
	for (size_t i = 0; i < n_parts && rc == 0; i++) {
		struct ls_s3_req r;
		ls_req_init(&r, "PUT", key);
		char query[512];
		snprintf(query, sizeof(query), "partNumber=%zu&uploadId=%s", i + 1, enc_id);
		r.query = query;
		r.body_fd = fd;
		r.body_base = (uint64_t)i * LS_S3_PART_SIZE;
		r.body_len = len - r.body_base < LS_S3_PART_SIZE ? len - r.body_base : LS_S3_PART_SIZE;
		rc = ls_file_sha256(fd, r.body_base, r.body_len, key, r.payload_sha256, err);
		if (rc == 0)
			rc = ls_s3_perform(s3, &r, err);
		free(r.buf);
		if (rc == 0 && !r.etag[0])
			rc = ls_err_set(err, LS_E_ORIGIN, "origin %s: part %zu of %s has no ETag",
					s3->label, i + 1, key);
		char etag[sizeof(r.etag) * 5];
		ls_xml_text(r.etag, etag, sizeof(etag));
		if (rc == 0)
			used += (size_t)snprintf(xml + used, cap - used,
						 "<Part><PartNumber>%zu</PartNumber><ETag>%s</ETag></Part>",
						 i + 1, etag);
	}
	if (rc == 0) {
		used += (size_t)snprintf(xml + used, cap - used, "</CompleteMultipartUpload>");
		char query[512];
		snprintf(query, sizeof(query), "uploadId=%s", enc_id);
		rc = ls_s3_post(s3, key, query, xml, used, &page, err);
		if (rc == 0)
			ls_s3_page_free(&page);
	}
abort:
	if (rc && enc_id) {
		/* Nothing of a failed upload stays in the store. */
		struct ls_s3_req r;
		struct ls_err e;
		char query[512];
		snprintf(query, sizeof(query), "uploadId=%s", enc_id);
		ls_req_init(&r, "DELETE", key);
		r.query = query;
		ls_s3_perform(s3, &r, &e);
		free(r.buf);
	}
	free(xml);
	free(enc_id);
	free(id);
	return rc;
}

int ls_s3_put_file(struct ls_s3 *s3, const char *key, int fd, uint64_t len, struct ls_err *err)
{
	if (len > s3->multipart_threshold)
		return ls_s3_put_parts(s3, key, fd, len, err);
	struct ls_s3_req r;
	ls_req_init(&r, "PUT", key);
	r.body_fd = fd;
	r.body_len = len;
	/* The payload's hash first: it is signed, and the server may check the body against it. */
	int rc = ls_file_sha256(fd, 0, len, key, r.payload_sha256, err);
	if (rc == 0)
		rc = ls_s3_perform(s3, &r, err);
	free(r.buf);
	return rc;
}

int ls_s3_get(struct ls_s3 *s3, const char *key, size_t max, uint8_t **data, size_t *len,
	      struct ls_err *err)
{
	struct ls_s3_req r;
	ls_req_init(&r, "GET", key);
	r.max = max;
	int rc = ls_s3_perform(s3, &r, err);
	if (rc) {
		free(r.buf);
		return rc;
	}
	if (!r.buf && !(r.buf = malloc(1)))
		return ls_err_set(err, -ENOMEM, "out of memory");
	r.buf[r.len] = 0; /* room was kept: text answers end in NUL */
	*data = r.buf;
	*len = r.len;
	return 0;
}

int ls_s3_get_file(struct ls_s3 *s3, const char *key, int fd, uint64_t *len, struct ls_err *err)
{
	struct ls_s3_req r;
	ls_req_init(&r, "GET", key);
	r.out_fd = fd;
	int rc = ls_s3_perform(s3, &r, err);
	free(r.buf);
	*len = r.written;
	return rc;
}

int ls_s3_get_to(struct ls_s3 *s3, const char *key, ls_s3_sink_fn sink, void *ud, uint64_t *len,
		 struct ls_err *err)
{
	struct ls_s3_req r;
	ls_req_init(&r, "GET", key);
	r.sink = sink;
	r.sink_ud = ud;
	int rc = ls_s3_perform(s3, &r, err);
	free(r.buf);
	*len = r.written;
	return rc;
}

int ls_s3_head(struct ls_s3 *s3, const char *key, uint64_t *size, struct ls_err *err)
{
	struct ls_s3_req r;
	ls_req_init(&r, "HEAD", key);
	int rc = ls_s3_perform(s3, &r, err);
	free(r.buf);
	if (rc == 0 && size)
		*size = r.content_length > 0 ? (uint64_t)r.content_length : 0;
	return rc;
}

int ls_s3_delete(struct ls_s3 *s3, const char *key, struct ls_err *err)
{
	struct ls_s3_req r;
	ls_req_init(&r, "DELETE", key);
	int rc = ls_s3_perform(s3, &r, err);
	free(r.buf);
	return rc == LS_E_NOT_FOUND ? 0 : rc;
}

int ls_s3_list(struct ls_s3 *s3, const char *prefix, const char *start_after, ls_s3_key_fn fn,
	       void *ud, struct ls_err *err)
{
	char *enc_prefix = ls_uri_encode(prefix, false);
	char *enc_after = start_after ? ls_uri_encode(start_after, false) : NULL;
	char *token = NULL;
	int rc = enc_prefix && (!start_after || enc_after) ? 0
							   : ls_err_set(err, -ENOMEM, "out of memory");
	while (rc == 0) {
		/* Parameters in the order the signature sorts them. */
		char *query = NULL, *enc_token = token ? ls_uri_encode(token, false) : NULL;
		if ((token && !enc_token) ||
		    asprintf(&query, "%s%s%slist-type=2&prefix=%s%s%s",
			     token ? "continuation-token=" : "", token ? enc_token : "",
			     token ? "&" : "", enc_prefix, enc_after ? "&start-after=" : "",
			     enc_after ? enc_after : "") < 0) {
			free(enc_token);
			rc = ls_err_set(err, -ENOMEM, "out of memory");
			break;
		}
		free(enc_token);
		struct ls_s3_req r;
		ls_req_init(&r, "GET", NULL);
		r.query = query;
		r.max = 16u << 20;
		rc = ls_s3_perform(s3, &r, err);
		free(query);
		struct ls_s3_page page;
		if (rc == 0)
			rc = ls_s3_parse_page((const char *)r.buf, r.len, &page, err);
		free(r.buf);
		if (rc)
			break;
		if (page.error_code)
			rc = ls_err_set(err, LS_E_ORIGIN, "origin %s: listing %s: %s", s3->label,
					prefix, page.error_code);
		for (size_t i = 0; rc == 0 && i < page.n; i++)
			rc = fn(ud, page.keys[i], page.sizes[i]);
		free(token);
		token = NULL;
		bool more = rc == 0 && page.truncated && page.next_token;
		if (more)
			token = page.next_token, page.next_token = NULL;
		ls_s3_page_free(&page);
		if (!more)
			break;
	}
	free(token);
	free(enc_prefix);
	free(enc_after);
	return rc;
}
