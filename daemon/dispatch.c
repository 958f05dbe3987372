/*
 * Dispatch: each request to the module that answers it (request.h lists
 * them by file), and Hello, the one request that is the connection's own.
 * Nothing else: no request's work is done here.
 */
#include "log.h"
#include "ls_clock.h"
#include "request.h"

static void ls_on_hello(struct ls_session *s, Lorastore__Request *req)
{
	if (s->hello_done) {
		ls_session_error(s, req->id, LS_E_PROTOCOL,
				 "this connection has already said Hello; a connection says it "
				 "once, first");
		return;
	}
	if (req->hello->protocol_version != LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2) {
		ls_session_error(s, req->id, LS_E_VERSION,
				 "protocol version %u is not supported; this lorastored (%s) speaks 2",
				 (unsigned)req->hello->protocol_version, LS_VERSION);
		s->close_after_send = true;
		return;
	}
	s->hello_done = true;
	Lorastore__HelloReply hr = LORASTORE__HELLO_REPLY__INIT;
	hr.protocol_version = LORASTORE__PROTOCOL_VERSION__PROTOCOL_VERSION_2;
	hr.daemon_version = LS_VERSION;
	hr.admin = s->admin;
	hr.backend = s->srv->n_devices ? "cuda" : "host";
	hr.instance = s->srv->instance;
	Lorastore__Response resp = LORASTORE__RESPONSE__INIT;
	resp.id = req->id;
	resp.body_case = LORASTORE__RESPONSE__BODY_HELLO;
	resp.hello = &hr;
	/* The warm path: the directory (the daemon's) and a lease page (the message's). */
	int fds[2] = {s->srv->warm.dir_fd, -1};
	struct ls_err err;
	if (req->hello->warm_path && s->srv->warm.dir) {
		if (ls_lease_page_open(&s->srv->leases, &s->leases, &fds[1], &err) == 0) {
			hr.warm_attached = true;
			hr.directory_size = s->srv->warm.dir_bytes;
			ls_session_send_fds_owned(s, &resp, fds, 2, 2u);
			return;
		}
		ls_debug("session %u: no lease page, acquires take requests: %s", s->id, err.msg);
	}
	ls_session_send(s, &resp, -1);
}
void ls_dispatch(struct ls_session *s, Lorastore__Request *req)
{
	s->req_t0_ns = ls_mono_ns();
	if (!s->hello_done && req->body_case != LORASTORE__REQUEST__BODY_HELLO) {
		ls_session_error(s, req->id, LS_E_PROTOCOL, "the first request must be Hello");
		s->close_after_send = true;
		return;
	}
	switch (req->body_case) {
	case LORASTORE__REQUEST__BODY_HELLO:
		ls_on_hello(s, req);
		break;
	case LORASTORE__REQUEST__BODY_IMPORT:
		ls_on_import(s, req);
		break;
	case LORASTORE__REQUEST__BODY_SHOW:
		ls_on_show(s, req);
		break;
	case LORASTORE__REQUEST__BODY_LIST:
		ls_on_list(s, req);
		break;
	case LORASTORE__REQUEST__BODY_DELETE:
		ls_on_delete(s, req);
		break;
	case LORASTORE__REQUEST__BODY_LOAD:
		ls_on_acquire_or_load(s, req->id, req->load->ref, -1, false, req->load->tier,
				      req->load->device);
		break;
	case LORASTORE__REQUEST__BODY_EVICT:
		ls_on_evict(s, req);
		break;
	case LORASTORE__REQUEST__BODY_ACQUIRE:
		ls_on_acquire_or_load(s, req->id, req->acquire->ref, req->acquire->timeout_ms, true,
				      req->acquire->tier, req->acquire->device);
		break;
	case LORASTORE__REQUEST__BODY_RELEASE:
		ls_on_release(s, req);
		break;
	case LORASTORE__REQUEST__BODY_PREFETCH:
		ls_on_prefetch(s, req);
		break;
	case LORASTORE__REQUEST__BODY_STATS:
		ls_on_stats(s, req);
		break;
	case LORASTORE__REQUEST__BODY_VERIFY:
		ls_on_verify(s, req);
		break;
	case LORASTORE__REQUEST__BODY_GC:
		ls_on_gc(s, req);
		break;
	case LORASTORE__REQUEST__BODY_TAG:
		ls_on_tag(s, req, false);
		break;
	case LORASTORE__REQUEST__BODY_EXPORT:
		ls_on_export(s, req);
		break;
	case LORASTORE__REQUEST__BODY_UNTAG:
		ls_on_tag(s, req, true);
		break;
	case LORASTORE__REQUEST__BODY_REBUILD:
		ls_on_rebuild(s, req);
		break;
	case LORASTORE__REQUEST__BODY_PUSH:
		ls_on_push(s, req);
		break;
	case LORASTORE__REQUEST__BODY_ORIGIN_LIST:
		ls_on_origin_list(s, req);
		break;
	default:
		ls_session_error(s, req->id, LS_E_PROTOCOL, "unknown request");
		break;
	}
}
