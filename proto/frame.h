/*
 * Framing and decoding of lorastore's wire protocol, from plain bytes.
 *
 * A frame is a 4-byte little-endian payload length followed by the payload,
 * one packed lorastore.Request or lorastore.Response.  The framer takes
 * whatever bytes a socket gave (split anywhere) and hands out whole frames;
 * it checks the announced length against the cap before allocating anything,
 * so tests and fuzzers feed it split, truncated, oversized and garbage input
 * directly, with no socket.
 */
#ifndef LS_FRAME_H
#define LS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lorastore.pb-c.h"
#include "ls_error.h"

/* Largest payload accepted by default (bytes). */
#define LS_FRAME_MAX (16u << 20)
/* Bytes of the length prefix. */
#define LS_FRAME_HEADER 4u

/*
 * Largest page a list may ask for: the daemon's page of records, the
 * framer's refusal and the client's check are this one number.
 */
#define LS_PROTO_LIST_LIMIT_MAX 1000u
/* The largest page of the origin's versions a request may ask for (names and numbers only). */
#define LS_PROTO_ORIGIN_LIST_LIMIT_MAX 10000u

struct ls_framer {
	uint8_t *buf;        /* bytes received and not yet consumed */
	size_t len;          /* bytes in buf */
	size_t cap;          /* bytes allocated */
	size_t start;        /* offset of the first unconsumed byte */
	size_t max_payload;  /* cap on one frame's payload */
	size_t frame_len;    /* payload length of the frame last returned, 0 when none */
};

/* Set up an empty framer with a payload cap (0 for LS_FRAME_MAX). */
void ls_framer_init(struct ls_framer *f, size_t max_payload);
void ls_framer_free(struct ls_framer *f);

/*
 * Space to receive into: at least min bytes (grows the buffer, never past
 * what a frame at the cap needs plus min).  Returns a pointer and sets *avail;
 * NULL on -ENOMEM.  After writing n bytes there, call ls_framer_commit(f, n).
 */
uint8_t *ls_framer_space(struct ls_framer *f, size_t min, size_t *avail);
void ls_framer_commit(struct ls_framer *f, size_t n);

/* Append n bytes (copying); 0 or -ENOMEM. */
int ls_framer_feed(struct ls_framer *f, const void *data, size_t n);

/*
 * The next whole frame: returns 1 with *payload and *len (valid until the next
 * call on f), 0 when more bytes are needed, or LS_E_FRAME_TOO_LARGE when the
 * announced length exceeds the cap (the connection should be closed).  Each
 * frame returned is consumed by the next call.
 */
int ls_framer_next(struct ls_framer *f, const uint8_t **payload, size_t *len);

/* Bytes buffered and not yet returned as frames. */
size_t ls_framer_pending(const struct ls_framer *f);

/*
 * What a caller needs to answer a request that decoded but broke a rule (a
 * string over the cap, a NUL byte, a missing field): its id.  The
 * descriptors that came with its frame are the caller's to close.
 */
struct ls_request_head {
	uint64_t id;
	bool answerable; /* the frame was a Request with a non-zero id */
};

/* Descriptors that travel with req (import: its files), which claims them. */
unsigned ls_request_fd_count(const Lorastore__Request *req);

/*
 * Decode a request payload and check it is well formed: a known body, and
 * the fields that body needs.  Returns 0 and *out (free with
 * lorastore__request__free_unpacked(out, NULL)) or LS_E_PROTOCOL with err;
 * then head (which may be NULL) says whether the request can be answered.
 */
int ls_request_decode(const uint8_t *payload, size_t len, Lorastore__Request **out,
		      struct ls_request_head *head, struct ls_err *err);

/* Same for a response. */
int ls_response_decode(const uint8_t *payload, size_t len, Lorastore__Response **out,
		       struct ls_err *err);

/*
 * Encode a message with its length prefix into a malloc'd buffer.
 * Returns 0, LS_E_FRAME_TOO_LARGE, or -ENOMEM.
 */
int ls_request_encode(const Lorastore__Request *req, uint8_t **out, size_t *len);
int ls_response_encode(const Lorastore__Response *resp, uint8_t **out, size_t *len);

#endif
