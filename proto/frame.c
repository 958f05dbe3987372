/*
 * Framing and decoding of lorastore's wire protocol, from plain bytes.
 *
 * The framer keeps one growable buffer.  Received bytes are appended at
 * buf + len; frames are handed out from buf + start and consumed at once
 * (the payload pointer stays valid until the next call on the framer, because
 * only feed, space and next move bytes).  Consumed space is reclaimed lazily:
 * when everything was consumed the buffer restarts at offset 0, and when the
 * consumed prefix passes half the buffer, or more room is needed at the tail,
 * the pending bytes are moved to the front.  So the buffer never holds more
 * than one frame at the cap plus one receive, unless the caller feeds several
 * frames before pulling any.
 *
 * Decoding is protobuf-c's unpack followed by the checks that protobuf-c does
 * not make: a known body, the fields each body needs, and strings that are
 * valid UTF-8, at most LS_PROTO_STRING_MAX bytes and free of NUL bytes.
 */
#include "frame.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* First allocation of a framer's buffer (bytes); small frames never need more. */
#define LS_FRAMER_MIN_ALLOC 4096u

/* Longest string field a request may carry (bytes, without the NUL). */
#define LS_PROTO_STRING_MAX 4096u
/* Most refs one prefetch may name. */
#define LS_PROTO_PREFETCH_MAX 1024u

/*
 * Allocation budget for decoding one request (bytes, counting
 * LS_DECODE_ALLOC_OVERHEAD per allocation).  protobuf-c's unpack allocates a
 * record per field it scans and an array slot per repeated element, so a
 * frame of many 2-byte fields could otherwise turn 16 MiB of input into
 * hundreds of MiB inside the daemon.  The largest legitimate request, a
 * prefetch of 1024 refs of 4096 bytes, needs about 4.2 MiB.
 */
#define LS_DECODE_BUDGET (16u << 20)
/* What one malloc costs beyond the bytes asked for (bytes, glibc's chunk header). */
#define LS_DECODE_ALLOC_OVERHEAD 16u

/* ---------------------------------------------------------------------------
 * Framer
 */

void ls_framer_init(struct ls_framer *f, size_t max_payload)
{
	memset(f, 0, sizeof(*f));
	f->max_payload = max_payload ? max_payload : LS_FRAME_MAX;
}

void ls_framer_free(struct ls_framer *f)
{
	free(f->buf);
	size_t max_payload = f->max_payload;
	memset(f, 0, sizeof(*f));
	f->max_payload = max_payload;
}

size_t ls_framer_pending(const struct ls_framer *f)
{
	return f->len - f->start;
}

/* Move the pending bytes to the front of the buffer. */
static void framer_compact(struct ls_framer *f)
{
	size_t pending = f->len - f->start;
	if (f->start == 0)
		return;
	if (pending)
		memmove(f->buf, f->buf + f->start, pending);
	f->start = 0;
	f->len = pending;
}

/*
 * Make room for n more bytes at buf + len.  The buffer grows by doubling but
 * not past limit, unless the bytes already pending plus n need more.
 */
static int framer_reserve(struct ls_framer *f, size_t n, size_t limit)
{
	if (f->start == f->len)
		f->start = f->len = 0;
	else if (f->cap - f->len < n || f->start > f->cap / 2)
		framer_compact(f);
	if (f->cap - f->len >= n)
		return 0;

	if (n > SIZE_MAX - f->len)
		return -ENOMEM;
	size_t need = f->len + n;
	size_t ncap = f->cap ? f->cap : LS_FRAMER_MIN_ALLOC;
	while (ncap < need && ncap <= SIZE_MAX / 2)
		ncap *= 2;
	if (ncap < need)
		ncap = need;
	if (ncap > limit)
		ncap = limit > need ? limit : need;
	uint8_t *nbuf = realloc(f->buf, ncap);
	if (!nbuf)
		return -ENOMEM;
	f->buf = nbuf;
	f->cap = ncap;
	return 0;
}

/* What a frame at the cap needs plus extra bytes, saturated. */
static size_t framer_limit(const struct ls_framer *f, size_t extra)
{
	size_t frame = f->max_payload > SIZE_MAX - LS_FRAME_HEADER ? SIZE_MAX
								   : f->max_payload + LS_FRAME_HEADER;
	return extra > SIZE_MAX - frame ? SIZE_MAX : frame + extra;
}

uint8_t *ls_framer_space(struct ls_framer *f, size_t min, size_t *avail)
{
	if (min == 0)
		min = 1;
	if (framer_reserve(f, min, framer_limit(f, min)) != 0) {
		*avail = 0;
		return NULL;
	}
	*avail = f->cap - f->len;
	return f->buf + f->len;
}

void ls_framer_commit(struct ls_framer *f, size_t n)
{
	/* A caller cannot have written past the space it was given. */
	if (n > f->cap - f->len)
		n = f->cap - f->len;
	f->len += n;
}

int ls_framer_feed(struct ls_framer *f, const void *data, size_t n)
{
	if (n == 0)
		return 0;
	int rc = framer_reserve(f, n, framer_limit(f, n));
	if (rc != 0)
		return rc;
	memcpy(f->buf + f->len, data, n);
	f->len += n;
	return 0;
}

int ls_framer_next(struct ls_framer *f, const uint8_t **payload, size_t *len)
{
	f->frame_len = 0;
	if (f->start == f->len)
		f->start = f->len = 0;
	size_t pending = f->len - f->start;
	if (pending < LS_FRAME_HEADER)
		return 0;
	const uint8_t *p = f->buf + f->start;
	uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		     (uint32_t)p[3] << 24;
	/* The cap is checked on the announced length, before any byte of it is kept. */
	if (n > f->max_payload)
		return LS_E_FRAME_TOO_LARGE;
	if (pending - LS_FRAME_HEADER < n)
		return 0;
	*payload = p + LS_FRAME_HEADER;
	*len = n;
	f->start += LS_FRAME_HEADER + n;
	f->frame_len = n;
	return 1;
}

/* ---------------------------------------------------------------------------
 * Checks protobuf-c does not make
 */

/*
 * Length of the valid UTF-8 prefix of s[0..n): n when all of it is valid.
 * Overlong forms, surrogates and code points past U+10FFFF are invalid, as
 * the Unicode standard (table 3-7) and protobuf's own runtimes say.
 */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t extra;
		unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
		if (c >= 0xc2 && c <= 0xdf) {
			extra = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			extra = 2;
			if (c == 0xe0)
				lo = 0xa0; /* overlong */
			else if (c == 0xed)
				hi = 0x9f; /* surrogates */
		} else if (c >= 0xf0 && c <= 0xf4) {
			extra = 3;
			if (c == 0xf0)
				lo = 0x90; /* overlong */
			else if (c == 0xf4)
				hi = 0x8f; /* past U+10FFFF */
		} else {
			return i;
		}
		if (n - i <= extra || s[i + 1] < lo || s[i + 1] > hi)
			return i;
		for (size_t k = 2; k <= extra; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return i;
		i += extra + 1;
	}
	return n;
}

static int check_string(const char *s, const char *path, struct ls_err *err)
{
	size_t n = strlen(s);
	if (n > LS_PROTO_STRING_MAX)
		return ls_err_set(err, LS_E_PROTOCOL, "field %s is %zu bytes long, more than %u",
				  path, n, LS_PROTO_STRING_MAX);
	size_t ok = utf8_valid_prefix((const unsigned char *)s, n);
	if (ok != n)
		return ls_err_set(err, LS_E_PROTOCOL,
				  "field %s is not valid UTF-8 (byte %zu of %zu, 0x%02x)", path, ok,
				  n, (unsigned)(unsigned char)s[ok]);
	return 0;
}

/* path + "." + name (or "[i]" when name is NULL) into out. */
static void path_join(char *out, size_t size, const char *path, const char *name, size_t i)
{
	const char *dot = path[0] ? "." : "";
	int rc = name ? snprintf(out, size, "%s%s%s", path, dot, name)
		      : snprintf(out, size, "%s[%zu]", path, i);
	/* A truncated path only shortens the error message. */
	if (rc < 0)
		out[0] = '\0';
}

/*
 * Check every string field of m, at any depth, with protobuf-c's reflection:
 * fields added to the protocol later are covered without code here.
 */
static int check_strings(const ProtobufCMessage *m, const char *path, struct ls_err *err)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	const uint8_t *base = (const uint8_t *)m;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *fd = &d->fields[i];
		if (fd->type != PROTOBUF_C_TYPE_STRING && fd->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t which;
			memcpy(&which, base + fd->quantifier_offset, sizeof(which));
			if (which != fd->id)
				continue;
		}
		char here[256];
		path_join(here, sizeof(here), path, fd->name, 0);

		void *const *items;
		size_t count;
		if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
			memcpy(&count, base + fd->quantifier_offset, sizeof(count));
			memcpy(&items, base + fd->offset, sizeof(items));
		} else {
			items = (void *const *)(base + fd->offset);
			count = 1;
		}
		for (size_t k = 0; k < count; k++) {
			if (!items[k])
				continue;
			char elem[256];
			if (fd->label == PROTOBUF_C_LABEL_REPEATED)
				path_join(elem, sizeof(elem), here, NULL, k);
			else
				memcpy(elem, here, sizeof(elem));
			int rc = fd->type == PROTOBUF_C_TYPE_STRING
					 ? check_string(items[k], elem, err)
					 : check_strings(items[k], elem, err);
			if (rc != 0)
				return rc;
		}
	}
	return 0;
}

/* A varint at p[*i..n) into *v; false when it runs past n or over 10 bytes. */
static bool wire_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned shift = 0; shift < 64 && *i < n; shift += 7) {
		uint8_t b = p[(*i)++];
		x |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*v = x;
			return true;
		}
	}
	return false;
}

/*
 * protobuf-c hands a string field over as a C string, so a NUL byte inside
 * it would silently cut it ("a\0b" checked as "a", then used as "a").  The
 * wire bytes are walked once more with m's descriptor, and a string field
 * holding a NUL is refused by name.  Runs after a successful unpack, so the
 * encoding itself is known to be sound; anything unexpected stops the walk.
 */
static int check_wire_nul(const uint8_t *p, size_t n, const ProtobufCMessageDescriptor *d,
			  const char *path, unsigned depth, struct ls_err *err)
{
	size_t i = 0;
	while (i < n && depth < 32) {
		uint64_t key, len;
		if (!wire_varint(p, n, &i, &key))
			return 0;
		switch (key & 7) {
		case 0:
			if (!wire_varint(p, n, &i, &len))
				return 0;
			continue;
		case 1:
			i += 8;
			continue;
		case 5:
			i += 4;
			continue;
		case 2:
			break;
		default:
			return 0;
		}
		if (!wire_varint(p, n, &i, &len) || len > n - i)
			return 0;
		const ProtobufCFieldDescriptor *fd =
			key >> 3 <= UINT32_MAX
				? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3))
				: NULL;
		if (fd && (fd->type == PROTOBUF_C_TYPE_STRING || fd->type == PROTOBUF_C_TYPE_MESSAGE)) {
			char here[256];
			path_join(here, sizeof(here), path, fd->name, 0);
			if (fd->type == PROTOBUF_C_TYPE_STRING && memchr(p + i, '\0', len))
				return ls_err_set(err, LS_E_PROTOCOL, "field %s holds a NUL byte",
						  here);
			if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
				int rc = check_wire_nul(p + i, len, fd->descriptor, here, depth + 1,
							err);
				if (rc)
					return rc;
			}
		}
		i += len;
	}
	return 0;
}

struct decode_budget {
	size_t used;   /* bytes allocated so far, with overhead */
	size_t limit;  /* bytes */
	bool exceeded;
};

static void *budget_alloc(void *data, size_t size)
{
	struct decode_budget *b = data;
	size_t cost = size + LS_DECODE_ALLOC_OVERHEAD;
	if (cost < size || cost > b->limit - b->used) {
		b->exceeded = true;
		return NULL;
	}
	b->used += cost;
	return malloc(size);
}

/*
 * Memory from this allocator goes back with free(), so a request it decoded
 * may be freed with the default allocator (free_unpacked(out, NULL)).
 */
static void budget_free(void *data, void *ptr)
{
	free(ptr);
}

static int ref_required(const Lorastore__RefRequest *r, const char *kind, struct ls_err *err)
{
	if (!r->ref || !r->ref[0])
		return ls_err_set(err, LS_E_PROTOCOL, "%s request: field %s.ref is empty", kind,
				  kind);
	return 0;
}

/* The fields each kind of request needs. */
static int check_request_body(const Lorastore__Request *req, const char *kind,
			      struct ls_err *err)
{
	switch (req->body_case) {
	case LORASTORE__REQUEST__BODY_HELLO:
		if (req->hello->protocol_version == 0)
			return ls_err_set(err, LS_E_PROTOCOL,
					  "hello request: field hello.protocol_version is 0 "
					  "(unspecified)");
		return 0;
	case LORASTORE__REQUEST__BODY_IMPORT:
		if (!req->import->name || !req->import->name[0])
			return ls_err_set(err, LS_E_PROTOCOL,
					  "import request: field import.name is empty");
		return 0;
	case LORASTORE__REQUEST__BODY_SHOW:
		return ref_required(req->show, kind, err);
	case LORASTORE__REQUEST__BODY_DELETE:
		return ref_required(req->delete_, kind, err);
	case LORASTORE__REQUEST__BODY_LOAD:
		return ref_required(req->load, kind, err);
	case LORASTORE__REQUEST__BODY_EVICT:
		return ref_required(req->evict, kind, err);
	case LORASTORE__REQUEST__BODY_EXPORT:
		return ref_required(req->export, kind, err);
	case LORASTORE__REQUEST__BODY_PUSH:
		return ref_required(req->push, kind, err);
	case LORASTORE__REQUEST__BODY_ACQUIRE:
		if (!req->acquire->ref || !req->acquire->ref[0])
			return ls_err_set(err, LS_E_PROTOCOL,
					  "acquire request: field acquire.ref is empty");
		return 0;
	case LORASTORE__REQUEST__BODY_RELEASE:
		if (req->release->lease_id == 0)
			return ls_err_set(err, LS_E_PROTOCOL,
					  "release request: field release.lease_id is 0");
		return 0;
	case LORASTORE__REQUEST__BODY_PREFETCH: {
		const Lorastore__PrefetchRequest *p = req->prefetch;
		if (p->n_refs == 0)
			return ls_err_set(err, LS_E_PROTOCOL,
					  "prefetch request: field prefetch.refs is empty");
		if (p->n_refs > LS_PROTO_PREFETCH_MAX)
			return ls_err_set(err, LS_E_PROTOCOL,
					  "prefetch request: field prefetch.refs has %zu refs, "
					  "more than %u",
					  p->n_refs, LS_PROTO_PREFETCH_MAX);
		for (size_t i = 0; i < p->n_refs; i++)
			if (!p->refs[i] || !p->refs[i][0])
				return ls_err_set(err, LS_E_PROTOCOL,
						  "prefetch request: field prefetch.refs[%zu] is "
						  "empty",
						  i);
		return 0;
	}
	case LORASTORE__REQUEST__BODY_LIST:
		if (req->list->limit > LS_PROTO_LIST_LIMIT_MAX)
			return ls_err_set(err, LS_E_PROTOCOL,
					  "list request: field list.limit is %u, more than %u",
					  req->list->limit, LS_PROTO_LIST_LIMIT_MAX);
		return 0;
	case LORASTORE__REQUEST__BODY_ORIGIN_LIST:
		if (req->origin_list->limit > LS_PROTO_ORIGIN_LIST_LIMIT_MAX)
			return ls_err_set(err, LS_E_PROTOCOL,
					  "origin_list request: field origin_list.limit is %u, "
					  "more than %u",
					  req->origin_list->limit, LS_PROTO_ORIGIN_LIST_LIMIT_MAX);
		return 0;
	case LORASTORE__REQUEST__BODY_TAG:
		if (!req->tag->alias || !req->tag->alias[0] || !req->tag->ref || !req->tag->ref[0])
			return ls_err_set(err, LS_E_PROTOCOL,
					  "tag request: field tag.alias or tag.ref is empty");
		return 0;
	case LORASTORE__REQUEST__BODY_UNTAG:
		if (!req->untag->alias || !req->untag->alias[0])
			return ls_err_set(err, LS_E_PROTOCOL,
					  "untag request: field untag.alias is empty");
		return 0;
	case LORASTORE__REQUEST__BODY_VERIFY: /* an empty ref means every version */
	case LORASTORE__REQUEST__BODY_STATS:
	case LORASTORE__REQUEST__BODY_GC:
	case LORASTORE__REQUEST__BODY_REBUILD:
		return 0;
	case LORASTORE__REQUEST__BODY__NOT_SET:
	default:
		break;
	}
	return ls_err_set(err, LS_E_PROTOCOL, "request of unknown kind %d",
			  (int)req->body_case);
}

unsigned ls_request_fd_count(const Lorastore__Request *req)
{
	if (req->body_case == LORASTORE__REQUEST__BODY_IMPORT && req->import)
		return req->import->has_config ? 2 : 1;
	return 0;
}

int ls_request_decode(const uint8_t *payload, size_t len, Lorastore__Request **out,
		      struct ls_request_head *head, struct ls_err *err)
{
	*out = NULL;
	if (head)
		memset(head, 0, sizeof(*head));
	struct decode_budget budget = {.limit = LS_DECODE_BUDGET};
	ProtobufCAllocator alloc = {
		/* .alloc = */ budget_alloc,
		/* .free = */ budget_free,
		/* .allocator_data = */ &budget,
	};
	Lorastore__Request *req = lorastore__request__unpack(&alloc, len, payload);
	if (!req) {
		if (budget.exceeded)
			return ls_err_set(err, LS_E_PROTOCOL,
					  "request of %zu bytes needs more than %u bytes of "
					  "memory to decode",
					  len, LS_DECODE_BUDGET);
		return ls_err_set(err, LS_E_PROTOCOL,
				  "request of %zu bytes is not a valid lorastore.Request message",
				  len);
	}

	int rc;
	/* An unknown body field lands in protobuf-c's unknown fields: no body. */
	const ProtobufCFieldDescriptor *body =
		req->body_case == LORASTORE__REQUEST__BODY__NOT_SET
			? NULL
			: protobuf_c_message_descriptor_get_field(&lorastore__request__descriptor,
								  (unsigned)req->body_case);
	if (!body || !req->hello) {
		rc = ls_err_set(err, LS_E_PROTOCOL,
				"request %llu has no body (the request kind is missing or "
				"unknown)",
				(unsigned long long)req->id);
		goto fail;
	}
	rc = check_request_body(req, body->name, err);
	if (rc != 0)
		goto fail;
	rc = check_strings(&req->base, "", err);
	if (rc == 0)
		rc = check_wire_nul(payload, len, &lorastore__request__descriptor, "", 0, err);
	if (rc != 0)
		goto fail;
	ls_err_clear(err);
	*out = req;
	return 0;
fail:
	/* A request that decoded has an id: the caller may answer it. */
	if (head) {
		head->id = req->id;
		head->answerable = req->id != 0;
	}
	lorastore__request__free_unpacked(req, NULL);
	return rc;
}

int ls_response_decode(const uint8_t *payload, size_t len, Lorastore__Response **out,
		       struct ls_err *err)
{
	*out = NULL;
	Lorastore__Response *resp = lorastore__response__unpack(NULL, len, payload);
	if (!resp)
		return ls_err_set(err, LS_E_PROTOCOL,
				  "response of %zu bytes is not a valid lorastore.Response message",
				  len);
	int rc = 0;
	/* Every member of the body union is a message pointer; hello stands for all. */
	bool has_body = resp->body_case != LORASTORE__RESPONSE__BODY__NOT_SET &&
			protobuf_c_message_descriptor_get_field(&lorastore__response__descriptor,
								(unsigned)resp->body_case) &&
			resp->hello;
	if (resp->error && has_body)
		rc = ls_err_set(err, LS_E_PROTOCOL,
				"response %llu has both an error and a body",
				(unsigned long long)resp->id);
	else if (resp->error && resp->error->code == 0)
		rc = ls_err_set(err, LS_E_PROTOCOL, "response %llu has an error with code 0",
				(unsigned long long)resp->id);
	else if (!resp->error && !has_body)
		rc = ls_err_set(err, LS_E_PROTOCOL,
				"response %llu has neither an error nor a body (the reply kind "
				"is missing or unknown)",
				(unsigned long long)resp->id);
	if (rc != 0) {
		lorastore__response__free_unpacked(resp, NULL);
		return rc;
	}
	ls_err_clear(err);
	*out = resp;
	return 0;
}

/* ---------------------------------------------------------------------------
 * Encoders
 */

static int frame_alloc(size_t packed, uint8_t **out, size_t *len)
{
	*out = NULL;
	*len = 0;
	if (packed > LS_FRAME_MAX)
		return LS_E_FRAME_TOO_LARGE;
	uint8_t *buf = malloc(LS_FRAME_HEADER + packed);
	if (!buf)
		return -ENOMEM;
	for (unsigned i = 0; i < LS_FRAME_HEADER; i++)
		buf[i] = (uint8_t)(packed >> (8 * i));
	*out = buf;
	*len = LS_FRAME_HEADER + packed;
	return 0;
}

int ls_request_encode(const Lorastore__Request *req, uint8_t **out, size_t *len)
{
	int rc = frame_alloc(lorastore__request__get_packed_size(req), out, len);
	if (rc == 0)
		lorastore__request__pack(req, *out + LS_FRAME_HEADER);
	return rc;
}

int ls_response_encode(const Lorastore__Response *resp, uint8_t **out, size_t *len)
{
	int rc = frame_alloc(lorastore__response__get_packed_size(resp), out, len);
	if (rc == 0)
		lorastore__response__pack(resp, *out + LS_FRAME_HEADER);
	return rc;
}
