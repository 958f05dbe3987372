/*
 * libFuzzer harness for the wire protocol.  The input is a byte stream from
 * a peer: it goes to a framer in two feeds split at a point the fuzzer picks
 * (the last byte scales the split over the input), the first by copying and
 * the second through ls_framer_space/commit as the daemon receives; every
 * frame that comes out is decoded as a request and as a response.  The whole
 * input is also decoded directly as one request payload.  Besides crashes
 * and sanitizer reports, it checks what the framer and decoders promise.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decode_both(const uint8_t *p, size_t n)
{
	struct ls_err err;
	Lorastore__Request *req = NULL;
	int rc = ls_request_decode(p, n, &req, NULL, &err);
	if (rc == 0) {
		if (!req || req->body_case == LORASTORE__REQUEST__BODY__NOT_SET)
			abort();
		lorastore__request__free_unpacked(req, NULL);
	} else if (rc != LS_E_PROTOCOL || req || err.code != rc ||
		   !memchr(err.msg, '\0', sizeof(err.msg)) || !err.msg[0]) {
		abort();
	}

	Lorastore__Response *resp = NULL;
	rc = ls_response_decode(p, n, &resp, &err);
	if (rc == 0) {
		if (!resp || (resp->error != NULL) ==
				     (resp->body_case != LORASTORE__RESPONSE__BODY__NOT_SET))
			abort();
		lorastore__response__free_unpacked(resp, NULL);
	} else if (rc != LS_E_PROTOCOL || resp || err.code != rc) {
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t split = size ? (size_t)data[size - 1] * size / 256 : 0;

	struct ls_framer f;
	ls_framer_init(&f, 0);
	if (ls_framer_feed(&f, data, split) != 0)
		abort();
	size_t rest = size - split;
	if (rest) {
		size_t avail;
		uint8_t *space = ls_framer_space(&f, rest, &avail);
		if (!space || avail < rest)
			abort();
		memcpy(space, data + split, rest);
		ls_framer_commit(&f, rest);
	}
	if (ls_framer_pending(&f) != size)
		abort();

	size_t consumed = 0;
	for (;;) {
		const uint8_t *p;
		size_t n;
		int rc = ls_framer_next(&f, &p, &n);
		if (rc == 0 || rc == LS_E_FRAME_TOO_LARGE)
			break;
		if (rc != 1 || n > f.max_payload)
			abort();
		/* Frames come out in order, each exactly as it was in the input. */
		if (consumed + LS_FRAME_HEADER + n > size ||
		    memcmp(p, data + consumed + LS_FRAME_HEADER, n) != 0)
			abort();
		consumed += LS_FRAME_HEADER + n;
		if (ls_framer_pending(&f) != size - consumed)
			abort();
		decode_both(p, n);
	}
	ls_framer_free(&f);

	decode_both(data, size);
	return 0;
}
