/* The daemon's origin, as a client sees it: push versions into it, list what it has. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "client_internal.h"
#include "ls_name.h"

LS_PUBLIC int lorastore_push(lorastore *conn, const char *ref, lorastore_push_result *out)
{
	if (out)
		memset(out, 0, sizeof(*out));
	if (!conn)
		return -EINVAL;
	int rc = ls_ref_check(conn, "push", ref);
	if (rc)
		return rc;
	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = (char *)ref;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_PUSH;
	req.push = &rr;
	Lorastore__Response *resp = NULL;
	rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_PUSHED, &resp);
	if (rc)
		return rc;
	const Lorastore__PushReply *p = resp->pushed;
	if (!p) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, LS_E_PROTOCOL, "push reply without a body");
	}
	if (out) {
		out->pushed = p->pushed;
		out->present = p->present;
		snprintf(out->origin, sizeof(out->origin), "%s", p->origin ? p->origin : "");
	}
	lorastore__response__free_unpacked(resp, NULL);
	return 0;
}

LS_PUBLIC int lorastore_origin_list(lorastore *conn, const char *prefix, const char *cursor,
				    unsigned limit,
				    void (*fn)(void *ud, const lorastore_origin_entry *e),
				    void *ud, char *next, size_t next_len)
{
	if (next && next_len)
		next[0] = '\0';
	if (!conn)
		return -EINVAL;
	Lorastore__ListRequest lr = LORASTORE__LIST_REQUEST__INIT;
	lr.prefix = (char *)(prefix ? prefix : "");
	lr.cursor = (char *)(cursor ? cursor : "");
	lr.limit = limit;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_ORIGIN_LIST;
	req.origin_list = &lr;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_ORIGIN_LIST, &resp);
	if (rc)
		return rc;
	const Lorastore__OriginListReply *r = resp->origin_list;
	if (!r) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, LS_E_PROTOCOL, "origin listing without a body");
	}
	for (size_t i = 0; fn && i < r->n_entries; i++) {
		const Lorastore__OriginEntry *e = r->entries[i];
		lorastore_origin_entry oe = {.name = e->name ? e->name : "",
					     .version = e->version,
					     .here = e->here ? 1 : 0,
					     .origin = r->origin ? r->origin : ""};
		fn(ud, &oe);
	}
	if (next && next_len)
		snprintf(next, next_len, "%s", r->next_cursor ? r->next_cursor : "");
	lorastore__response__free_unpacked(resp, NULL);
	return 0;
}
