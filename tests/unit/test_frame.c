/*
 * Tests of the wire protocol's framer, decoders and encoders.  Everything is
 * fed from plain byte arrays, split, truncated and oversized on purpose; no
 * socket is involved.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

/* ---------------------------------------------------------------------------
 * Helpers
 */

struct wire {
	uint8_t *p;
	size_t len;
};

static struct wire encode_request(const Lorastore__Request *req)
{
	struct wire w;
	int rc = ls_request_encode(req, &w.p, &w.len);
	cr_assert_eq(rc, 0, "encode: %d (%s)", rc, ls_strerror(rc));
	return w;
}

static struct wire encode_response(const Lorastore__Response *resp)
{
	struct wire w;
	int rc = ls_response_encode(resp, &w.p, &w.len);
	cr_assert_eq(rc, 0, "encode: %d (%s)", rc, ls_strerror(rc));
	return w;
}

/* A frame of n pattern bytes (not a message): its length, then the bytes. */
static struct wire raw_frame(size_t n, uint8_t seed)
{
	struct wire w = {.p = malloc(LS_FRAME_HEADER + n + 1), .len = LS_FRAME_HEADER + n};
	cr_assert_not_null(w.p);
	for (unsigned i = 0; i < LS_FRAME_HEADER; i++)
		w.p[i] = (uint8_t)(n >> (8 * i));
	for (size_t i = 0; i < n; i++)
		w.p[LS_FRAME_HEADER + i] = (uint8_t)(seed + i);
	return w;
}

/* Decode the payload of an encoded request (the frame without its prefix). */
static int decode_request(const Lorastore__Request *req, Lorastore__Request **out,
			  struct ls_err *e)
{
	struct wire w = encode_request(req);
	int rc = ls_request_decode(w.p + LS_FRAME_HEADER, w.len - LS_FRAME_HEADER, out, NULL, e);
	free(w.p);
	return rc;
}

/* The request is refused as malformed, with a message containing what. */
static void assert_request_refused(const Lorastore__Request *req, const char *what)
{
	Lorastore__Request *out = (Lorastore__Request *)1;
	struct ls_err e;
	int rc = decode_request(req, &out, &e);
	cr_assert_eq(rc, LS_E_PROTOCOL, "got %d (%s), want protocol error", rc, ls_error_name(rc));
	cr_assert_eq(e.code, LS_E_PROTOCOL);
	cr_assert_null(out);
	cr_assert_not_null(strstr(e.msg, what), "message \"%s\" does not mention \"%s\"", e.msg,
			   what);
}

static void assert_request_accepted(const Lorastore__Request *req)
{
	Lorastore__Request *out = NULL;
	struct ls_err e;
	int rc = decode_request(req, &out, &e);
	cr_assert_eq(rc, 0, "got %d (%s): %s", rc, ls_error_name(rc), e.msg);
	cr_assert_not_null(out);
	lorastore__request__free_unpacked(out, NULL);
}

static void assert_response_refused(const Lorastore__Response *resp, const char *what)
{
	struct wire w = encode_response(resp);
	Lorastore__Response *out = (Lorastore__Response *)1;
	struct ls_err e;
	int rc = ls_response_decode(w.p + LS_FRAME_HEADER, w.len - LS_FRAME_HEADER, &out, &e);
	free(w.p);
	cr_assert_eq(rc, LS_E_PROTOCOL, "got %d (%s), want protocol error", rc, ls_error_name(rc));
	cr_assert_null(out);
	cr_assert_not_null(strstr(e.msg, what), "message \"%s\" does not mention \"%s\"", e.msg,
			   what);
}

/*
 * encode -> feed -> next -> decode, then encode the decoded message again:
 * the same bytes prove that every field survived.
 */
static void assert_request_round_trip(const Lorastore__Request *req)
{
	struct wire w = encode_request(req);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	cr_assert_eq(ls_framer_feed(&f, w.p, w.len), 0);
	const uint8_t *p;
	size_t n;
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);
	cr_assert_eq(n, w.len - LS_FRAME_HEADER);

	Lorastore__Request *out;
	struct ls_err e;
	int rc = ls_request_decode(p, n, &out, NULL, &e);
	cr_assert_eq(rc, 0, "decode: %s", e.msg);
	cr_assert_eq(out->id, req->id);
	cr_assert_eq(out->body_case, req->body_case);
	struct wire again = encode_request(out);
	cr_assert_eq(again.len, w.len);
	cr_assert(memcmp(again.p, w.p, w.len) == 0, "re-encoded request differs");
	cr_assert_eq(ls_framer_next(&f, &p, &n), 0);
	cr_assert_eq(ls_framer_pending(&f), 0);

	lorastore__request__free_unpacked(out, NULL);
	free(again.p);
	free(w.p);
	ls_framer_free(&f);
}

static void assert_response_round_trip(const Lorastore__Response *resp)
{
	struct wire w = encode_response(resp);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	cr_assert_eq(ls_framer_feed(&f, w.p, w.len), 0);
	const uint8_t *p;
	size_t n;
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);

	Lorastore__Response *out;
	struct ls_err e;
	int rc = ls_response_decode(p, n, &out, &e);
	cr_assert_eq(rc, 0, "decode: %s", e.msg);
	cr_assert_eq(out->id, resp->id);
	cr_assert_eq(out->body_case, resp->body_case);
	struct wire again = encode_response(out);
	cr_assert_eq(again.len, w.len);
	cr_assert(memcmp(again.p, w.p, w.len) == 0, "re-encoded response differs");

	lorastore__response__free_unpacked(out, NULL);
	free(again.p);
	free(w.p);
	ls_framer_free(&f);
}

/* A request with a little of everything, for the framing tests. */
static struct wire sample_request(uint64_t id)
{
	Lorastore__ImportRequest imp = LORASTORE__IMPORT_REQUEST__INIT;
	imp.name = "tenant/adapter";
	imp.has_config = 1;
	imp.convert = LORASTORE__CONVERT__CONVERT_BF16;
	imp.source = "/home/user/adapters/tenant-adapter";
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = id;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &imp;
	return encode_request(&req);
}

static void assert_frame_is(const uint8_t *p, size_t n, const struct wire *w)
{
	cr_assert_eq(n, w->len - LS_FRAME_HEADER);
	cr_assert(memcmp(p, w->p + LS_FRAME_HEADER, n) == 0, "payload differs");
}

/* ---------------------------------------------------------------------------
 * Framer
 */

Test(framer, frame_split_at_every_byte_boundary_reassembles)
{
	struct wire w = sample_request(7);
	for (size_t k = 0; k < w.len; k++) {
		struct ls_framer f;
		ls_framer_init(&f, 0);
		const uint8_t *p;
		size_t n;
		cr_assert_eq(ls_framer_feed(&f, w.p, k), 0);
		cr_assert_eq(ls_framer_next(&f, &p, &n), 0, "split at %zu: frame too early", k);
		cr_assert_eq(ls_framer_feed(&f, w.p + k, w.len - k), 0);
		cr_assert_eq(ls_framer_next(&f, &p, &n), 1, "split at %zu: no frame", k);
		assert_frame_is(p, n, &w);
		cr_assert_eq(ls_framer_next(&f, &p, &n), 0);
		ls_framer_free(&f);
	}
	free(w.p);
}

Test(framer, frame_fed_one_byte_at_a_time_reassembles)
{
	struct wire w = sample_request(8);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	const uint8_t *p;
	size_t n;
	for (size_t k = 0; k + 1 < w.len; k++) {
		cr_assert_eq(ls_framer_feed(&f, w.p + k, 1), 0);
		cr_assert_eq(ls_framer_next(&f, &p, &n), 0);
	}
	cr_assert_eq(ls_framer_feed(&f, w.p + w.len - 1, 1), 0);
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);
	assert_frame_is(p, n, &w);
	ls_framer_free(&f);
	free(w.p);
}

Test(framer, two_frames_in_one_feed_come_out_in_order)
{
	struct wire a = sample_request(1), b = sample_request(2);
	uint8_t *both = malloc(a.len + b.len);
	memcpy(both, a.p, a.len);
	memcpy(both + a.len, b.p, b.len);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	cr_assert_eq(ls_framer_feed(&f, both, a.len + b.len), 0);
	const uint8_t *p;
	size_t n;
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);
	assert_frame_is(p, n, &a);
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);
	assert_frame_is(p, n, &b);
	cr_assert_eq(ls_framer_next(&f, &p, &n), 0);
	ls_framer_free(&f);
	free(both);
	free(a.p);
	free(b.p);
}

Test(framer, truncated_frame_yields_nothing)
{
	struct wire w = sample_request(3);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	const uint8_t *p = NULL;
	size_t n = 12345;
	/* Part of the length prefix, then all but the last payload byte. */
	cr_assert_eq(ls_framer_feed(&f, w.p, 2), 0);
	cr_assert_eq(ls_framer_next(&f, &p, &n), 0);
	cr_assert_eq(ls_framer_feed(&f, w.p + 2, w.len - 3), 0);
	cr_assert_eq(ls_framer_next(&f, &p, &n), 0);
	cr_assert_null(p);
	cr_assert_eq(n, 12345);
	cr_assert_eq(ls_framer_pending(&f), w.len - 1);
	cr_assert_eq(f.frame_len, 0);
	ls_framer_free(&f);
	free(w.p);
}

Test(framer, announced_length_over_cap_refused_before_allocating_it)
{
	/* The default cap and the largest length four bytes can announce. */
	const uint8_t headers[][4] = {
		{0x01, 0x00, 0x00, 0x01},  /* LS_FRAME_MAX + 1 */
		{0xff, 0xff, 0xff, 0xff},
	};
	for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
		struct ls_framer f;
		ls_framer_init(&f, 0);
		cr_assert_eq(ls_framer_feed(&f, headers[i], 4), 0);
		const uint8_t *p;
		size_t n;
		cr_assert_eq(ls_framer_next(&f, &p, &n), LS_E_FRAME_TOO_LARGE);
		/* Asking for receive space must not size the buffer by the announcement. */
		size_t avail;
		cr_assert_not_null(ls_framer_space(&f, 4096, &avail));
		cr_assert_eq(ls_framer_next(&f, &p, &n), LS_E_FRAME_TOO_LARGE);
		cr_assert_leq(f.cap, 8192, "buffer of %zu bytes after a refused header", f.cap);
		ls_framer_free(&f);
	}
}

Test(framer, frame_exactly_at_default_cap_accepted)
{
	struct wire w = raw_frame(LS_FRAME_MAX, 5);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	cr_assert_eq(ls_framer_feed(&f, w.p, w.len), 0);
	const uint8_t *p;
	size_t n;
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);
	assert_frame_is(p, n, &w);
	ls_framer_free(&f);
	free(w.p);
}

Test(framer, frame_exactly_at_custom_cap_accepted)
{
	struct wire w = raw_frame(1000, 9);
	struct ls_framer f;
	ls_framer_init(&f, 1000);
	cr_assert_eq(ls_framer_feed(&f, w.p, w.len), 0);
	const uint8_t *p;
	size_t n;
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);
	assert_frame_is(p, n, &w);
	ls_framer_free(&f);
	free(w.p);
}

Test(framer, frame_one_byte_over_custom_cap_refused)
{
	struct wire w = raw_frame(1001, 9);
	struct ls_framer f;
	ls_framer_init(&f, 1000);
	cr_assert_eq(ls_framer_feed(&f, w.p, LS_FRAME_HEADER), 0);
	const uint8_t *p;
	size_t n;
	cr_assert_eq(ls_framer_next(&f, &p, &n), LS_E_FRAME_TOO_LARGE);
	ls_framer_free(&f);
	free(w.p);
}

Test(framer, zero_length_payload_is_a_frame)
{
	const uint8_t empty[4] = {0};
	struct ls_framer f;
	ls_framer_init(&f, 0);
	cr_assert_eq(ls_framer_feed(&f, empty, sizeof(empty)), 0);
	const uint8_t *p = NULL;
	size_t n = 99;
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);
	cr_assert_eq(n, 0);
	cr_assert_not_null(p);
	cr_assert_eq(ls_framer_pending(&f), 0);
	cr_assert_eq(ls_framer_next(&f, &p, &n), 0);
	ls_framer_free(&f);
}

Test(framer, pending_counts_bytes_not_yet_returned)
{
	struct wire a = sample_request(1);
	struct ls_framer f;
	ls_framer_init(&f, 0);
	cr_assert_eq(ls_framer_feed(&f, a.p, a.len), 0);
	cr_assert_eq(ls_framer_feed(&f, a.p, 3), 0);
	cr_assert_eq(ls_framer_pending(&f), a.len + 3);
	const uint8_t *p;
	size_t n;
	cr_assert_eq(ls_framer_next(&f, &p, &n), 1);
	cr_assert_eq(ls_framer_pending(&f), 3);
	cr_assert_eq(f.frame_len, n);
	ls_framer_free(&f);
	free(a.p);
}

/*
 * 100,000 frames of 0 to 49 bytes, fed in chunks of odd sizes and pulled
 * after each chunk: the buffer never holds more than one frame at the cap
 * plus one chunk, however long the connection lives.
 */
Test(framer, memory_stays_bounded_over_100000_small_frames)
{
	enum { FRAMES = 100000, CAP = 64 };
	static const size_t chunks[] = {1, 7, 13, 64, 97, 3, 251, 29};
	const size_t max_chunk = 251;

	size_t total = 0;
	for (size_t i = 0; i < FRAMES; i++)
		total += LS_FRAME_HEADER + i % 50;
	uint8_t *stream = malloc(total);
	cr_assert_not_null(stream);
	size_t pos = 0;
	for (size_t i = 0; i < FRAMES; i++) {
		struct wire w = raw_frame(i % 50, (uint8_t)i);
		memcpy(stream + pos, w.p, w.len);
		pos += w.len;
		free(w.p);
	}

	struct ls_framer f;
	ls_framer_init(&f, CAP);
	size_t fed = 0, got = 0, max_cap = 0;
	for (size_t c = 0; fed < total; c++) {
		size_t n = chunks[c % (sizeof(chunks) / sizeof(chunks[0]))];
		if (n > total - fed)
			n = total - fed;
		cr_assert_eq(ls_framer_feed(&f, stream + fed, n), 0);
		fed += n;
		const uint8_t *p;
		size_t len;
		int rc;
		while ((rc = ls_framer_next(&f, &p, &len)) == 1) {
			cr_assert_eq(len, got % 50, "frame %zu has %zu bytes", got, len);
			for (size_t j = 0; j < len; j++)
				cr_assert_eq(p[j], (uint8_t)(got + j), "frame %zu byte %zu", got, j);
			got++;
		}
		cr_assert_eq(rc, 0);
		if (f.cap > max_cap)
			max_cap = f.cap;
	}
	cr_assert_eq(got, FRAMES);
	cr_assert_eq(ls_framer_pending(&f), 0);
	cr_assert_leq(max_cap, LS_FRAME_HEADER + CAP + max_chunk, "buffer grew to %zu bytes",
		      max_cap);
	ls_framer_free(&f);
	free(stream);
}

/* The daemon's path: receive straight into the framer's buffer. */
Test(framer, space_and_commit_receive_into_the_buffer)
{
	struct wire a = sample_request(11), b = sample_request(12);
	uint8_t *both = malloc(a.len + b.len);
	memcpy(both, a.p, a.len);
	memcpy(both + a.len, b.p, b.len);
	size_t total = a.len + b.len, fed = 0, got = 0;

	struct ls_framer f;
	ls_framer_init(&f, 0);
	while (fed < total) {
		size_t avail = 0;
		uint8_t *space = ls_framer_space(&f, 5, &avail);
		cr_assert_not_null(space);
		cr_assert_geq(avail, 5);
		/* A receive that returns fewer bytes than there was room for. */
		size_t n = 5;
		if (n > total - fed)
			n = total - fed;
		memcpy(space, both + fed, n);
		ls_framer_commit(&f, n);
		fed += n;
		const uint8_t *p;
		size_t len;
		while (ls_framer_next(&f, &p, &len) == 1)
			assert_frame_is(p, len, got++ == 0 ? &a : &b);
	}
	cr_assert_eq(got, 2);
	cr_assert_eq(ls_framer_pending(&f), 0);
	ls_framer_free(&f);
	free(both);
	free(a.p);
	free(b.p);
}

Test(framer, space_never_grows_past_one_capped_frame_plus_the_receive)
{
	enum { CAP = 100 };
	struct wire w = raw_frame(CAP, 1);
	struct ls_framer f;
	ls_framer_init(&f, CAP);
	size_t fed = 0;
	while (fed < w.len) {
		size_t avail;
		uint8_t *space = ls_framer_space(&f, 16, &avail);
		cr_assert_not_null(space);
		cr_assert_leq(f.cap, LS_FRAME_HEADER + CAP + 16);
		size_t n = avail < w.len - fed ? avail : w.len - fed;
		memcpy(space, w.p + fed, n);
		ls_framer_commit(&f, n);
		fed += n;
	}
	const uint8_t *p;
	size_t len;
	cr_assert_eq(ls_framer_next(&f, &p, &len), 1);
	assert_frame_is(p, len, &w);
	ls_framer_free(&f);
	free(w.p);
}

/* ---------------------------------------------------------------------------
 * Request decoder: malformed input
 */

Test(request_decode, garbage_payload_refused)
{
	static const struct {
		const char *bytes;
		size_t len;
	} cases[] = {
		{"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11}, /* a tag varint too long */
		{"\x08", 1},                                          /* id without its value */
		{"\x52\x10\x08", 3},   /* hello announcing 16 bytes, holding 1 */
		{"\x0a\x01\x00", 3},   /* id sent as bytes: wrong wire type */
		{"\x00\x00", 2},       /* field number 0 */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		Lorastore__Request *out = (Lorastore__Request *)1;
		struct ls_err e;
		int rc = ls_request_decode((const uint8_t *)cases[i].bytes, cases[i].len, &out, NULL, &e);
		cr_assert_eq(rc, LS_E_PROTOCOL, "case %zu: got %d", i, rc);
		cr_assert_eq(e.code, LS_E_PROTOCOL);
		cr_assert_null(out);
		cr_assert_not_null(strstr(e.msg, "not a valid"), "case %zu: %s", i, e.msg);
	}
}

Test(request_decode, empty_payload_refused_for_lack_of_a_body)
{
	Lorastore__Request *out = (Lorastore__Request *)1;
	struct ls_err e;
	int rc = ls_request_decode((const uint8_t *)"", 0, &out, NULL, &e);
	cr_assert_eq(rc, LS_E_PROTOCOL);
	cr_assert_null(out);
	cr_assert_not_null(strstr(e.msg, "no body"), "%s", e.msg);
}

Test(request_decode, id_without_body_refused)
{
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 42;
	assert_request_refused(&req, "no body");
}

Test(request_decode, unknown_body_kind_refused)
{
	/* id 1, then field 99 (not in the oneof) as an empty message. */
	const uint8_t bytes[] = {0x08, 0x01, 0x9a, 0x06, 0x00};
	Lorastore__Request *out;
	struct ls_err e;
	int rc = ls_request_decode(bytes, sizeof(bytes), &out, NULL, &e);
	cr_assert_eq(rc, LS_E_PROTOCOL);
	cr_assert_not_null(strstr(e.msg, "no body"), "%s", e.msg);
}

Test(request_decode, request_needing_too_much_memory_refused)
{
	/* 600,000 empty refs: 1.2 MB on the wire, far more once unpacked. */
	enum { REFS = 600000 };
	size_t len = 0;
	uint8_t *body = malloc(2 * REFS);
	for (size_t i = 0; i < REFS; i++) {
		body[len++] = 0x0a; /* PrefetchRequest.refs, length-delimited */
		body[len++] = 0x00;
	}
	/* Request.prefetch (field 19, length-delimited) = tag 0x9a 0x01, then a varint length. */
	uint8_t *msg = malloc(len + 16);
	size_t m = 0;
	msg[m++] = 0x9a;
	msg[m++] = 0x01;
	for (size_t v = len; ; v >>= 7) {
		msg[m++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
		if (v < 0x80)
			break;
	}
	memcpy(msg + m, body, len);
	Lorastore__Request *out;
	struct ls_err e;
	int rc = ls_request_decode(msg, m + len, &out, NULL, &e);
	cr_assert_eq(rc, LS_E_PROTOCOL);
	cr_assert_not_null(strstr(e.msg, "memory"), "%s", e.msg);
	free(msg);
	free(body);
}

/* ---------------------------------------------------------------------------
 * Request decoder: the fields each body needs
 */

Test(request_rules, hello_with_protocol_version_0_refused)
{
	Lorastore__Hello hello = LORASTORE__HELLO__INIT;
	hello.client_name = "test";
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_HELLO;
	req.hello = &hello;
	assert_request_refused(&req, "protocol_version");
}

Test(request_rules, import_with_empty_name_refused)
{
	Lorastore__ImportRequest imp = LORASTORE__IMPORT_REQUEST__INIT;
	imp.convert = LORASTORE__CONVERT__CONVERT_KEEP;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &imp;
	assert_request_refused(&req, "import.name");
}

Test(request_rules, show_delete_load_evict_with_empty_ref_refused)
{
	static const struct {
		Lorastore__Request__BodyCase body;
		const char *field;
	} kinds[] = {
		{LORASTORE__REQUEST__BODY_SHOW, "show.ref"},
		{LORASTORE__REQUEST__BODY_DELETE, "delete.ref"},
		{LORASTORE__REQUEST__BODY_LOAD, "load.ref"},
		{LORASTORE__REQUEST__BODY_EVICT, "evict.ref"},
	};
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		Lorastore__RefRequest ref = LORASTORE__REF_REQUEST__INIT;
		Lorastore__Request req = LORASTORE__REQUEST__INIT;
		req.body_case = kinds[i].body;
		req.show = &ref; /* every member of the union is a message pointer */
		assert_request_refused(&req, kinds[i].field);
	}
}

Test(request_rules, acquire_with_empty_ref_refused)
{
	Lorastore__AcquireRequest acq = LORASTORE__ACQUIRE_REQUEST__INIT;
	acq.timeout_ms = -1;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_ACQUIRE;
	req.acquire = &acq;
	assert_request_refused(&req, "acquire.ref");
}

Test(request_rules, verify_with_empty_ref_accepted)
{
	Lorastore__RefRequest ref = LORASTORE__REF_REQUEST__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_VERIFY;
	req.verify = &ref;
	assert_request_accepted(&req);
}

Test(request_rules, release_of_lease_0_refused)
{
	Lorastore__ReleaseRequest rel = LORASTORE__RELEASE_REQUEST__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_RELEASE;
	req.release = &rel;
	assert_request_refused(&req, "release.lease_id");
}

Test(request_rules, prefetch_without_refs_refused)
{
	Lorastore__PrefetchRequest pf = LORASTORE__PREFETCH_REQUEST__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_PREFETCH;
	req.prefetch = &pf;
	assert_request_refused(&req, "prefetch.refs is empty");
}

Test(request_rules, prefetch_with_an_empty_ref_refused)
{
	char *refs[] = {"a/b", "", "c/d"};
	Lorastore__PrefetchRequest pf = LORASTORE__PREFETCH_REQUEST__INIT;
	pf.n_refs = 3;
	pf.refs = refs;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_PREFETCH;
	req.prefetch = &pf;
	assert_request_refused(&req, "prefetch.refs[1]");
}

/* Prefetch with n refs, each of len bytes. */
static int decode_prefetch(size_t n, size_t len)
{
	char *ref = malloc(len + 1);
	memset(ref, 'r', len);
	ref[len] = '\0';
	char **refs = malloc(n * sizeof(*refs));
	for (size_t i = 0; i < n; i++)
		refs[i] = ref;
	Lorastore__PrefetchRequest pf = LORASTORE__PREFETCH_REQUEST__INIT;
	pf.n_refs = n;
	pf.refs = refs;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_PREFETCH;
	req.prefetch = &pf;
	Lorastore__Request *out = NULL;
	struct ls_err e;
	int rc = decode_request(&req, &out, &e);
	if (rc == 0)
		lorastore__request__free_unpacked(out, NULL);
	else
		cr_assert_not_null(strstr(e.msg, "prefetch.refs"), "%s", e.msg);
	free(refs);
	free(ref);
	return rc;
}

Test(request_rules, prefetch_of_1025_refs_refused)
{
	cr_assert_eq(decode_prefetch(1025, 8), LS_E_PROTOCOL);
}

Test(request_rules, prefetch_of_1024_longest_refs_accepted)
{
	cr_assert_eq(decode_prefetch(1024, 4096), 0);
}

static int decode_list(uint32_t limit)
{
	Lorastore__ListRequest list = LORASTORE__LIST_REQUEST__INIT;
	list.limit = limit;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_LIST;
	req.list = &list;
	Lorastore__Request *out = NULL;
	struct ls_err e;
	int rc = decode_request(&req, &out, &e);
	if (rc == 0)
		lorastore__request__free_unpacked(out, NULL);
	else
		cr_assert_not_null(strstr(e.msg, "list.limit"), "%s", e.msg);
	return rc;
}

Test(request_rules, list_limit_over_1000_refused)
{
	cr_assert_eq(decode_list(LS_PROTO_LIST_LIMIT_MAX + 1), LS_E_PROTOCOL);
	cr_assert_eq(decode_list(10000), LS_E_PROTOCOL);
	cr_assert_eq(decode_list(UINT32_MAX), LS_E_PROTOCOL);
}

Test(request_rules, list_limit_of_1000_accepted)
{
	cr_assert_eq(LS_PROTO_LIST_LIMIT_MAX, 1000);
	cr_assert_eq(decode_list(1000), 0);
	cr_assert_eq(decode_list(0), 0);
}

static int decode_show(const char *ref, struct ls_err *e)
{
	Lorastore__RefRequest r = LORASTORE__REF_REQUEST__INIT;
	r.ref = (char *)ref;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_SHOW;
	req.show = &r;
	Lorastore__Request *out = NULL;
	int rc = decode_request(&req, &out, e);
	if (rc == 0) {
		cr_assert_str_eq(out->show->ref, ref);
		lorastore__request__free_unpacked(out, NULL);
	}
	return rc;
}

Test(request_rules, string_over_4096_bytes_refused)
{
	char *s = malloc(4098);
	memset(s, 'x', 4097);
	s[4097] = '\0';
	struct ls_err e;
	cr_assert_eq(decode_show(s, &e), LS_E_PROTOCOL);
	cr_assert_not_null(strstr(e.msg, "show.ref"), "%s", e.msg);
	cr_assert_not_null(strstr(e.msg, "4097 bytes"), "%s", e.msg);
	free(s);
}

Test(request_rules, string_of_4096_bytes_accepted)
{
	char *s = malloc(4097);
	memset(s, 'x', 4096);
	s[4096] = '\0';
	struct ls_err e;
	cr_assert_eq(decode_show(s, &e), 0, "%s", e.msg);
	free(s);
}

/*
 * protobuf-c hands strings over as C strings: a NUL inside "ab\0cd" would
 * cut the name to "ab" after every check.  The byte is written into the
 * encoded payload, since protobuf-c encodes only up to the first NUL.
 */
Test(request_rules, a_nul_byte_inside_a_string_is_refused_naming_the_field)
{
	Lorastore__RefRequest r = LORASTORE__REF_REQUEST__INIT;
	r.ref = "abXcd";
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 7;
	req.body_case = LORASTORE__REQUEST__BODY_SHOW;
	req.show = &r;
	struct wire w = encode_request(&req);
	uint8_t *x = memchr(w.p, 'X', w.len);
	cr_assert_not_null(x);
	*x = '\0';
	Lorastore__Request *out = (Lorastore__Request *)1;
	struct ls_request_head head;
	struct ls_err e;
	int rc = ls_request_decode(w.p + LS_FRAME_HEADER, w.len - LS_FRAME_HEADER, &out, &head, &e);
	free(w.p);
	cr_assert_eq(rc, LS_E_PROTOCOL, "got %d (%s)", rc, ls_error_name(rc));
	cr_assert_null(out);
	cr_assert_not_null(strstr(e.msg, "show.ref holds a NUL byte"), "%s", e.msg);
	cr_assert(head.answerable);
	cr_assert_eq(head.id, 7);
}

Test(request_rules, an_oversized_field_of_an_import_can_be_answered_and_names_its_descriptors)
{
	char *name = malloc(5001);
	memset(name, 'n', 5000);
	name[5000] = '\0';
	Lorastore__ImportRequest im = LORASTORE__IMPORT_REQUEST__INIT;
	im.name = name;
	im.has_config = true;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 9;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &im;
	struct wire w = encode_request(&req);
	Lorastore__Request *out = NULL;
	struct ls_request_head head;
	struct ls_err e;
	int rc = ls_request_decode(w.p + LS_FRAME_HEADER, w.len - LS_FRAME_HEADER, &out, &head, &e);
	free(w.p);
	free(name);
	cr_assert_eq(rc, LS_E_PROTOCOL);
	cr_assert_not_null(strstr(e.msg, "import.name is 5000 bytes"), "%s", e.msg);
	cr_assert(head.answerable);
	cr_assert_eq(head.id, 9);
}

Test(request_rules, a_payload_that_is_no_request_cannot_be_answered)
{
	static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
	Lorastore__Request *out = NULL;
	struct ls_request_head head = {.answerable = true, .id = 3};
	struct ls_err e;
	cr_assert_eq(ls_request_decode(junk, sizeof(junk), &out, &head, &e), LS_E_PROTOCOL);
	cr_assert_not(head.answerable);
	cr_assert_eq(head.id, 0);
}

Test(request_rules, invalid_utf8_refused)
{
	static const char *const bad[] = {
		"abc\xff",              /* a byte that never occurs in UTF-8 */
		"\x80",                 /* a continuation byte alone */
		"a\xc3",                /* a sequence cut short */
		"\xc3\x28",             /* a lead byte without its continuation */
		"\xc0\xaf",             /* overlong '/' */
		"\xe0\x80\xaf",         /* overlong '/' in three bytes */
		"\xf0\x80\x80\xaf",     /* overlong '/' in four bytes */
		"\xed\xa0\x80",         /* a UTF-16 surrogate, U+D800 */
		"\xf4\x90\x80\x80",     /* U+110000, past the last code point */
		"\xf5\x80\x80\x80",     /* a lead byte past U+10FFFF */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct ls_err e;
		cr_assert_eq(decode_show(bad[i], &e), LS_E_PROTOCOL, "case %zu accepted", i);
		cr_assert_not_null(strstr(e.msg, "UTF-8"), "case %zu: %s", i, e.msg);
		cr_assert_not_null(strstr(e.msg, "show.ref"), "case %zu: %s", i, e.msg);
	}
}

Test(request_rules, invalid_utf8_in_a_list_names_the_element)
{
	char *refs[] = {"a/b", "c/\xe2\x82", "e/f"};
	Lorastore__PrefetchRequest pf = LORASTORE__PREFETCH_REQUEST__INIT;
	pf.n_refs = 3;
	pf.refs = refs;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_PREFETCH;
	req.prefetch = &pf;
	assert_request_refused(&req, "prefetch.refs[1] is not valid UTF-8");
}

Test(request_rules, invalid_utf8_in_an_optional_field_refused)
{
	Lorastore__Hello hello = LORASTORE__HELLO__INIT;
	hello.protocol_version = 2;
	hello.client_name = "client\xfe";
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_HELLO;
	req.hello = &hello;
	assert_request_refused(&req, "hello.client_name");
}

Test(request_rules, multibyte_utf8_accepted)
{
	/* Two-, three- and four-byte forms, up to the last code point U+10FFFF. */
	struct ls_err e;
	cr_assert_eq(decode_show("t\xc3\xa9nant/\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf", &e),
		     0, "%s", e.msg);
}

/* ---------------------------------------------------------------------------
 * Round trips of every request kind
 */

static void round_trip_ref(Lorastore__Request__BodyCase body, const char *ref)
{
	Lorastore__RefRequest r = LORASTORE__REF_REQUEST__INIT;
	r.ref = (char *)ref;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 1000 + (uint64_t)body;
	req.body_case = body;
	req.show = &r;
	assert_request_round_trip(&req);
}

Test(round_trip, hello_request)
{
	Lorastore__Hello hello = LORASTORE__HELLO__INIT;
	hello.protocol_version = LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2;
	hello.client_name = "test_frame";
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 1;
	req.body_case = LORASTORE__REQUEST__BODY_HELLO;
	req.hello = &hello;
	assert_request_round_trip(&req);
}

Test(round_trip, import_request)
{
	Lorastore__ImportRequest imp = LORASTORE__IMPORT_REQUEST__INIT;
	imp.name = "tenant/adapter";
	imp.has_config = 1;
	imp.convert = LORASTORE__CONVERT__CONVERT_F16;
	imp.allow_nonfinite = 1;
	imp.source = "/srv/adapters/x";
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = UINT64_MAX;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &imp;
	assert_request_round_trip(&req);
}

Test(round_trip, show_request) { round_trip_ref(LORASTORE__REQUEST__BODY_SHOW, "a/b@3"); }
Test(round_trip, delete_request) { round_trip_ref(LORASTORE__REQUEST__BODY_DELETE, "a/b"); }
Test(round_trip, load_request) { round_trip_ref(LORASTORE__REQUEST__BODY_LOAD, "a/b@1"); }
Test(round_trip, evict_request) { round_trip_ref(LORASTORE__REQUEST__BODY_EVICT, "a/b"); }
Test(round_trip, verify_request) { round_trip_ref(LORASTORE__REQUEST__BODY_VERIFY, "a/b@2"); }

Test(round_trip, list_request)
{
	Lorastore__ListRequest list = LORASTORE__LIST_REQUEST__INIT;
	list.prefix = "tenant/";
	list.cursor = "tenant/m";
	list.limit = 500;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 3;
	req.body_case = LORASTORE__REQUEST__BODY_LIST;
	req.list = &list;
	assert_request_round_trip(&req);
}

Test(round_trip, acquire_request)
{
	Lorastore__AcquireRequest acq = LORASTORE__ACQUIRE_REQUEST__INIT;
	acq.ref = "tenant/adapter@2";
	acq.timeout_ms = -1;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 4;
	req.body_case = LORASTORE__REQUEST__BODY_ACQUIRE;
	req.acquire = &acq;
	assert_request_round_trip(&req);
}

Test(round_trip, release_request)
{
	Lorastore__ReleaseRequest rel = LORASTORE__RELEASE_REQUEST__INIT;
	rel.lease_id = 0x123456789abcdefull;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 5;
	req.body_case = LORASTORE__REQUEST__BODY_RELEASE;
	req.release = &rel;
	assert_request_round_trip(&req);
}

Test(round_trip, prefetch_request)
{
	char *refs[] = {"a/b", "c/d@4", "e/f"};
	Lorastore__PrefetchRequest pf = LORASTORE__PREFETCH_REQUEST__INIT;
	pf.n_refs = 3;
	pf.refs = refs;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 6;
	req.body_case = LORASTORE__REQUEST__BODY_PREFETCH;
	req.prefetch = &pf;
	assert_request_round_trip(&req);
}

Test(round_trip, stats_request)
{
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 7;
	req.body_case = LORASTORE__REQUEST__BODY_STATS;
	req.stats = &empty;
	assert_request_round_trip(&req);
}

Test(round_trip, gc_request)
{
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.id = 8;
	req.body_case = LORASTORE__REQUEST__BODY_GC;
	req.gc = &empty;
	assert_request_round_trip(&req);
}

/* ---------------------------------------------------------------------------
 * Responses
 */

static void fill_record(Lorastore__VersionRecord *rec, Lorastore__Tensor *t,
			Lorastore__Tensor **tp, uint64_t *shape, uint8_t *digest)
{
	lorastore__tensor__init(t);
	t->module = "model.layers.0.self_attn.q_proj";
	t->layer = 0;
	t->kind = LORASTORE__TENSOR_KIND__TENSOR_KIND_A;
	t->dtype = LORASTORE__DTYPE__DTYPE_F16;
	shape[0] = 8;
	shape[1] = 64;
	t->n_shape = 2;
	t->shape = shape;
	t->length = 8 * 64 * 2;
	tp[0] = t;
	lorastore__version_record__init(rec);
	rec->schema = 1;
	rec->name = "tenant/adapter";
	rec->version = 2;
	for (int i = 0; i < 32; i++)
		digest[i] = (uint8_t)i;
	rec->digest.data = digest;
	rec->digest.len = 32;
	rec->generation = 17;
	rec->n_tensors = 1;
	rec->tensors = tp;
	rec->rank = 8;
	rec->scale = 2.0;
}

Test(round_trip, hello_response)
{
	Lorastore__HelloReply hello = LORASTORE__HELLO_REPLY__INIT;
	hello.protocol_version = 2;
	hello.daemon_version = "0.1.0";
	hello.admin = 1;
	hello.backend = "host";
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 1;
	resp.body_case = LORASTORE__RESPONSE__BODY_HELLO;
	resp.hello = &hello;
	assert_response_round_trip(&resp);
}

Test(round_trip, record_response)
{
	Lorastore__VersionRecord rec;
	Lorastore__Tensor t, *tp[1];
	uint64_t shape[2];
	uint8_t digest[32];
	fill_record(&rec, &t, tp, shape, digest);
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 2;
	resp.body_case = LORASTORE__RESPONSE__BODY_RECORD;
	resp.record = &rec;
	assert_response_round_trip(&resp);
}

Test(round_trip, list_response)
{
	Lorastore__VersionRecord rec;
	Lorastore__Tensor t, *tp[1];
	uint64_t shape[2];
	uint8_t digest[32];
	fill_record(&rec, &t, tp, shape, digest);
	Lorastore__AdapterEntry entry = LORASTORE__ADAPTER_ENTRY__INIT;
	entry.record = &rec;
	entry.resident = 1;
	Lorastore__Tier host = LORASTORE__TIER__TIER_HOST;
	entry.n_tiers = 1;
	entry.tiers = &host;
	entry.pins = 3;
	Lorastore__AdapterEntry *entries[] = {&entry, &entry};
	Lorastore__ListReply list = LORASTORE__LIST_REPLY__INIT;
	list.n_adapters = 2;
	list.adapters = entries;
	list.next_cursor = "tenant/b";
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 3;
	resp.body_case = LORASTORE__RESPONSE__BODY_LIST;
	resp.list = &list;
	assert_response_round_trip(&resp);
}

Test(round_trip, done_response)
{
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 4;
	resp.body_case = LORASTORE__RESPONSE__BODY_DONE;
	resp.done = &empty;
	assert_response_round_trip(&resp);
}

Test(round_trip, acquire_response)
{
	Lorastore__AcquireReply acq = LORASTORE__ACQUIRE_REPLY__INIT;
	acq.lease_id = 99;
	acq.generation = 17;
	acq.table_offset = 4096 + 65536;
	acq.table_length = 9000;
	acq.slab_id = 2;
	acq.slab_size = 1u << 30;
	acq.offset = 4096;
	acq.fd_attached = 1;
	acq.tier = LORASTORE__TIER__TIER_DEVICE;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 5;
	resp.body_case = LORASTORE__RESPONSE__BODY_ACQUIRE;
	resp.acquire = &acq;
	assert_response_round_trip(&resp);
}

Test(round_trip, stats_response)
{
	Lorastore__TierStats host = LORASTORE__TIER_STATS__INIT;
	host.tier = LORASTORE__TIER__TIER_HOST;
	host.budget = 1u << 30;
	host.used = 12345;
	host.adapters = 2;
	host.slab_bytes = 1u << 28;
	Lorastore__TierStats *tiers[] = {&host};
	Lorastore__StatsReply stats = LORASTORE__STATS_REPLY__INIT;
	stats.n_tiers = 1;
	stats.tiers = tiers;
	stats.clients = 3;
	stats.loads = 10;
	stats.hits = 7;
	stats.misses = 3;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 6;
	resp.body_case = LORASTORE__RESPONSE__BODY_STATS;
	resp.stats = &stats;
	assert_response_round_trip(&resp);
}

Test(round_trip, verify_response)
{
	Lorastore__VerifyItem item = LORASTORE__VERIFY_ITEM__INIT;
	item.name = "tenant/adapter";
	item.version = 1;
	item.code = LS_E_CORRUPT;
	item.message = "checksum mismatch";
	Lorastore__VerifyItem *items[] = {&item};
	Lorastore__VerifyReply verify = LORASTORE__VERIFY_REPLY__INIT;
	verify.n_items = 1;
	verify.items = items;
	verify.bad = 1;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 7;
	resp.body_case = LORASTORE__RESPONSE__BODY_VERIFY;
	resp.verify = &verify;
	assert_response_round_trip(&resp);
}

Test(round_trip, gc_response)
{
	Lorastore__GcReply gc = LORASTORE__GC_REPLY__INIT;
	gc.blobs_removed = 2;
	gc.bytes_removed = 1u << 20;
	gc.refs_removed = 2;
	gc.temps_removed = 1;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 8;
	resp.body_case = LORASTORE__RESPONSE__BODY_GC;
	resp.gc = &gc;
	assert_response_round_trip(&resp);
}

Test(round_trip, error_response)
{
	Lorastore__Error error = LORASTORE__ERROR__INIT;
	error.code = LS_E_NOT_FOUND;
	error.message = "no adapter named tenant/missing";
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 9;
	resp.error = &error;
	assert_response_round_trip(&resp);
}

Test(response_decode, error_and_body_together_refused)
{
	Lorastore__Error error = LORASTORE__ERROR__INIT;
	error.code = LS_E_NOT_FOUND;
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.error = &error;
	resp.body_case = LORASTORE__RESPONSE__BODY_DONE;
	resp.done = &empty;
	assert_response_refused(&resp, "both an error and a body");
}

Test(response_decode, error_with_code_0_refused)
{
	Lorastore__Error error = LORASTORE__ERROR__INIT;
	error.message = "nothing went wrong";
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.error = &error;
	assert_response_refused(&resp, "code 0");
}

Test(response_decode, neither_error_nor_body_refused)
{
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = 12;
	assert_response_refused(&resp, "neither an error nor a body");
}

Test(response_decode, garbage_payload_refused)
{
	const uint8_t bytes[] = {0x12, 0x05, 0x08}; /* error announcing 5 bytes, holding 1 */
	Lorastore__Response *out = (Lorastore__Response *)1;
	struct ls_err e;
	cr_assert_eq(ls_response_decode(bytes, sizeof(bytes), &out, &e), LS_E_PROTOCOL);
	cr_assert_null(out);
	cr_assert_eq(e.code, LS_E_PROTOCOL);
}

/* ---------------------------------------------------------------------------
 * Encoders
 */

Test(encode, length_prefix_is_little_endian_payload_size)
{
	struct wire w = sample_request(1);
	size_t n = w.len - LS_FRAME_HEADER;
	cr_assert_eq(w.p[0], (uint8_t)n);
	cr_assert_eq(w.p[1], (uint8_t)(n >> 8));
	cr_assert_eq(w.p[2], 0);
	cr_assert_eq(w.p[3], 0);
	free(w.p);
}

Test(encode, request_over_frame_max_refused)
{
	char *name = malloc(LS_FRAME_MAX + 1);
	memset(name, 'n', LS_FRAME_MAX);
	name[LS_FRAME_MAX] = '\0';
	Lorastore__ImportRequest imp = LORASTORE__IMPORT_REQUEST__INIT;
	imp.name = name;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &imp;
	uint8_t *out = (uint8_t *)1;
	size_t len = 1;
	cr_assert_eq(ls_request_encode(&req, &out, &len), LS_E_FRAME_TOO_LARGE);
	cr_assert_null(out);
	cr_assert_eq(len, 0);
	free(name);
}

Test(encode, response_over_frame_max_refused)
{
	char *msg = malloc(LS_FRAME_MAX + 1);
	memset(msg, 'm', LS_FRAME_MAX);
	msg[LS_FRAME_MAX] = '\0';
	Lorastore__Error error = LORASTORE__ERROR__INIT;
	error.code = LS_E_CORRUPT;
	error.message = msg;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.error = &error;
	uint8_t *out;
	size_t len;
	cr_assert_eq(ls_response_encode(&resp, &out, &len), LS_E_FRAME_TOO_LARGE);
	free(msg);
}

/* ---------------------------------------------------------------------------
 * The fuzzer's seed corpus stays valid as the protocol grows
 */

Test(seeds, protocol_fuzz_seeds_decode_as_valid_requests)
{
	const char *dir = LS_SOURCE_DIR "/tests/fuzz/corpus/protocol";
	DIR *d = opendir(dir);
	cr_assert_not_null(d, "no seed corpus at %s", dir);
	size_t frames = 0, raws = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		bool framed = strncmp(de->d_name, "frames_", 7) == 0;
		bool raw = strncmp(de->d_name, "payload_", 8) == 0;
		if (!framed && !raw)
			continue;
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		FILE *fp = fopen(path, "rb");
		cr_assert_not_null(fp, "%s", path);
		uint8_t buf[4096];
		size_t n = fread(buf, 1, sizeof(buf), fp);
		fclose(fp);
		cr_assert_lt(n, sizeof(buf), "%s: seeds should be small", path);

		Lorastore__Request *out;
		struct ls_err e;
		if (raw) {
			cr_assert_eq(ls_request_decode(buf, n, &out, NULL, &e), 0, "%s: %s", path, e.msg);
			lorastore__request__free_unpacked(out, NULL);
			raws++;
			continue;
		}
		struct ls_framer f;
		ls_framer_init(&f, 0);
		cr_assert_eq(ls_framer_feed(&f, buf, n), 0);
		const uint8_t *p;
		size_t len;
		size_t here = 0;
		while (ls_framer_next(&f, &p, &len) == 1) {
			cr_assert_eq(ls_request_decode(p, len, &out, NULL, &e), 0, "%s: %s", path, e.msg);
			lorastore__request__free_unpacked(out, NULL);
			here++;
		}
		cr_assert_gt(here, 0, "%s holds no frame", path);
		cr_assert_eq(ls_framer_pending(&f), 0, "%s ends in a partial frame", path);
		ls_framer_free(&f);
		frames++;
	}
	closedir(d);
	cr_assert_gt(frames, 0, "no frames_* seed");
	cr_assert_gt(raws, 0, "no payload_* seed");
}

Test(request_rules, only_an_import_takes_descriptors_two_with_a_config_one_without)
{
	Lorastore__ImportRequest im = LORASTORE__IMPORT_REQUEST__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &im;
	im.has_config = true;
	cr_assert_eq(ls_request_fd_count(&req), 2);
	im.has_config = false;
	cr_assert_eq(ls_request_fd_count(&req), 1);
	Lorastore__Empty empty = LORASTORE__EMPTY__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_STATS;
	req.stats = &empty;
	cr_assert_eq(ls_request_fd_count(&req), 0);
}
