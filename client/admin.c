/*
 * liblorastore: administration (import, delete, load, evict, verify, gc).
 * The daemon decides who may do what; the client only asks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_internal.h"
#include "ls_file.h"
#include "ls_name.h"

#define LS_CONFIG_FILE "adapter_config.json"
#define LS_WEIGHTS_FILE "adapter_model.safetensors"

LS_PUBLIC int lorastore_import_dir_entry(lorastore *conn, const char *dir,
					 const lorastore_import_opts *opts, lorastore_list **out)
{
	if (!conn || !out)
		return -EINVAL;
	*out = NULL;
	if (!dir || !*dir || !opts)
		return ls_conn_error(conn, -EINVAL, "import: no directory or no options");
	/* hf:ORG/NAME and cache folders resolved, the name checked, the files looked at. */
	struct ls_import_src *src = malloc(sizeof(*src));
	if (!src)
		return ls_conn_error(conn, -ENOMEM, "out of memory");
	int rc = ls_import_source(conn, dir, opts->name, src);
	if (rc) {
		free(src);
		return rc;
	}
	dir = src->dir;
	const char *name = src->name;
	enum ls_convert convert = LS_CONVERT_KEEP;
	if (opts->dtype && ls_convert_from_name(opts->dtype, &convert) != 0)
		rc = ls_conn_error(conn, -EINVAL,
				   "import: dtype \"%s\" is not one of keep, f16, bf16, f32",
				   opts->dtype);
	if (!rc)
		rc = ls_conn_check(conn);
	int dirfd = rc ? -1 : open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!rc && dirfd < 0) {
		int e = errno;
		rc = ls_conn_error(conn, -e, "%s: %s", dir, strerror(e));
	}
	if (rc) {
		free(src);
		return rc;
	}
	int cfg = -1, weights = -1;
	char *abs = NULL;
	rc = ls_open_regular_at(dirfd, LS_CONFIG_FILE, &cfg);
	if (rc && rc != -ENOENT) {
		rc = ls_conn_error(conn, rc, "%s/%s: %s", dir, LS_CONFIG_FILE,
				   rc == -EINVAL ? "not a regular file" : strerror(-rc));
		goto out;
	}
	rc = ls_open_regular_at(dirfd, LS_WEIGHTS_FILE, &weights);
	if (rc) {
		rc = ls_conn_error(conn, rc, "%s/%s: %s", dir, LS_WEIGHTS_FILE,
				   rc == -EINVAL ? "not a regular file" : strerror(-rc));
		goto out;
	}
	abs = realpath(dir, NULL);

	Lorastore__ImportRequest ir = LORASTORE__IMPORT_REQUEST__INIT;
	ir.name = (char *)name;
	ir.has_config = cfg >= 0;
	ir.convert = (Lorastore__Convert)convert;
	ir.allow_nonfinite = opts->allow_nonfinite != 0;
	ir.allow_new_base = opts->allow_new_base != 0;
	ir.source = abs ? abs : (char *)dir;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_IMPORT;
	req.import = &ir;
	int fds[2];
	size_t nfds = 0;
	if (cfg >= 0)
		fds[nfds++] = cfg;
	fds[nfds++] = weights;
	Lorastore__Response *resp = NULL;
	rc = ls_conn_call(conn, &req, fds, nfds, LORASTORE__RESPONSE__BODY_IMPORTED, &resp);
	if (rc == 0)
		rc = ls_list_from_response(conn, resp, out);
out:
	free(abs);
	if (cfg >= 0)
		close(cfg);
	if (weights >= 0)
		close(weights);
	close(dirfd);
	free(src);
	return rc;
}

LS_PUBLIC int lorastore_import_dir(lorastore *conn, const char *dir,
				   const lorastore_import_opts *opts, uint32_t *version)
{
	lorastore_list *l = NULL;
	int rc = lorastore_import_dir_entry(conn, dir, opts, &l);
	if (rc)
		return rc;
	if (version)
		*version = lorastore_list_entry(l, 0)->version;
	lorastore_list_free(l);
	return 0;
}

/*
 * A request whose body is a RefRequest, answered done (a load: with the
 * version loaded, "name@N" into loaded, len bytes, when not NULL); tier
 * names a tier (NULL: every tier, for an evict), device its GPU.
 */
static int ls_ref_call(lorastore *conn, Lorastore__Request__BodyCase body, const char *what,
		       const char *ref, const lorastore_tier *tier, const char *device,
		       char *loaded, size_t len)
{
	if (loaded && len)
		*loaded = '\0';
	if (!conn)
		return -EINVAL;
	int rc = ls_ref_check(conn, what, ref);
	if (rc)
		return rc;
	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = (char *)ref;
	char current[48] = "";
	rr.every_tier = !tier;
	if (tier) {
		rr.tier = (Lorastore__Tier)*tier;
		if (!device && *tier == LORASTORE_TIER_DEVICE)
			ls_device_current_uuid(current, sizeof(current));
		rr.device = (char *)(device ? device : current);
	}
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = body;
	switch (body) {
	case LORASTORE__REQUEST__BODY_DELETE:
		req.delete_ = &rr;
		break;
	case LORASTORE__REQUEST__BODY_LOAD:
		req.load = &rr;
		break;
	default:
		req.evict = &rr;
		break;
	}
	Lorastore__Response *resp = NULL;
	bool load = body == LORASTORE__REQUEST__BODY_LOAD;
	rc = ls_conn_call(conn, &req, NULL, 0,
			  load ? LORASTORE__RESPONSE__BODY_LOADED : LORASTORE__RESPONSE__BODY_DONE,
			  &resp);
	if (rc == 0 && load && loaded && len && resp->loaded && resp->loaded->name)
		snprintf(loaded, len, "%s@%u", resp->loaded->name, resp->loaded->version);
	if (resp)
		lorastore__response__free_unpacked(resp, NULL);
	return rc;
}

LS_PUBLIC int lorastore_delete_report(lorastore *conn, const char *ref,
				      lorastore_delete_result *out)
{
	if (out)
		memset(out, 0, sizeof(*out));
	if (!conn)
		return -EINVAL;
	int rc = ls_ref_check(conn, "delete", ref);
	if (rc)
		return rc;
	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = (char *)ref;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_DELETE;
	req.delete_ = &rr;
	Lorastore__Response *resp = NULL;
	rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_DELETED, &resp);
	if (rc)
		return rc;
	if (!resp->deleted) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, LS_E_PROTOCOL, "delete reply without a body");
	}
	if (out) {
		out->versions = resp->deleted->versions;
		out->blob_bytes = resp->deleted->blob_bytes;
		out->freed_bytes = resp->deleted->freed_bytes;
		const Lorastore__DeleteReply *d = resp->deleted;
		snprintf(out->origin, sizeof(out->origin), "%s", d->origin ? d->origin : "");
		out->origin_versions = d->origin_versions;
		snprintf(out->origin_error, sizeof(out->origin_error), "%s",
			 d->origin_error ? d->origin_error : "");
	}
	lorastore__response__free_unpacked(resp, NULL);
	return 0;
}

LS_PUBLIC int lorastore_delete(lorastore *conn, const char *ref)
{
	return lorastore_delete_report(conn, ref, NULL);
}

/* Tag (ref set) or untag alias. */
static int ls_tag_call(lorastore *conn, const char *alias, const char *ref, lorastore_list **out)
{
	if (out)
		*out = NULL;
	if (!conn)
		return -EINVAL;
	const char *what = ref ? "tag" : "untag";
	if (!alias || !ls_alias_valid(alias))
		return ls_conn_error(conn, LS_E_NAME_INVALID,
				     "%s: '%.*s': an alias is NAME:TAG, a tag 1 to %d characters of "
				     "[A-Za-z0-9._-]",
				     what, LS_ALIAS_MAX, alias ? alias : "", LS_TAG_MAX);
	uint32_t version;
	struct ls_err err;
	if (ref && ls_ref_parse(ref, NULL, &version, &err))
		return ls_conn_error(conn, err.code, "%s: %s", what, err.msg);
	Lorastore__TagRequest tr = LORASTORE__TAG_REQUEST__INIT;
	tr.alias = (char *)alias;
	tr.ref = (char *)(ref ? ref : "");
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = ref ? LORASTORE__REQUEST__BODY_TAG : LORASTORE__REQUEST__BODY_UNTAG;
	if (ref)
		req.tag = &tr;
	else
		req.untag = &tr;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0,
			      ref ? LORASTORE__RESPONSE__BODY_RECORD : LORASTORE__RESPONSE__BODY_DONE,
			      &resp);
	if (rc)
		return rc;
	if (out)
		return ls_list_from_response(conn, resp, out);
	lorastore__response__free_unpacked(resp, NULL);
	return 0;
}

LS_PUBLIC int lorastore_tag(lorastore *conn, const char *alias, const char *ref,
			    lorastore_list **out)
{
	if (!ref)
		return conn ? ls_conn_error(conn, -EINVAL, "tag: no version named") : -EINVAL;
	return ls_tag_call(conn, alias, ref, out);
}

LS_PUBLIC int lorastore_untag(lorastore *conn, const char *alias)
{
	return ls_tag_call(conn, alias, NULL, NULL);
}

LS_PUBLIC int lorastore_load(lorastore *conn, const char *ref)
{
	const lorastore_tier host = LORASTORE_TIER_HOST;
	return ls_ref_call(conn, LORASTORE__REQUEST__BODY_LOAD, "load", ref, &host, NULL, NULL, 0);
}

LS_PUBLIC int lorastore_evict(lorastore *conn, const char *ref)
{
	return ls_ref_call(conn, LORASTORE__REQUEST__BODY_EVICT, "evict", ref, NULL, NULL, NULL, 0);
}

static bool ls_tier_known(lorastore_tier tier)
{
	return tier == LORASTORE_TIER_HOST || tier == LORASTORE_TIER_DEVICE;
}

LS_PUBLIC int lorastore_load_tier(lorastore *conn, const char *ref, lorastore_tier tier,
				  const char *device)
{
	if (!ls_tier_known(tier))
		return -EINVAL;
	return ls_ref_call(conn, LORASTORE__REQUEST__BODY_LOAD, "load", ref, &tier, device, NULL, 0);
}

LS_PUBLIC int lorastore_load_resolved(lorastore *conn, const char *ref, lorastore_tier tier,
				      const char *device, char *loaded, size_t len)
{
	if (!ls_tier_known(tier))
		return -EINVAL;
	return ls_ref_call(conn, LORASTORE__REQUEST__BODY_LOAD, "load", ref, &tier, device, loaded,
			   len);
}

LS_PUBLIC int lorastore_evict_tier(lorastore *conn, const char *ref, lorastore_tier tier,
				   const char *device)
{
	if (!ls_tier_known(tier))
		return -EINVAL;
	return ls_ref_call(conn, LORASTORE__REQUEST__BODY_EVICT, "evict", ref, &tier, device, NULL,
			   0);
}

LS_PUBLIC int lorastore_verify(lorastore *conn, const char *ref, size_t *bad,
			       void (*fn)(void *ud, const char *name, uint32_t version, int code,
					  const char *message),
			       void *ud)
{
	if (!conn)
		return -EINVAL;
	/* No reference (or "") verifies every version. */
	if (ref && *ref) {
		int rc = ls_ref_check(conn, "verify", ref);
		if (rc)
			return rc;
	}
	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = (char *)(ref ? ref : "");
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_VERIFY;
	req.verify = &rr;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_VERIFY, &resp);
	if (rc)
		return rc;
	const Lorastore__VerifyReply *v = resp->verify;
	if (!v) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, LS_E_PROTOCOL, "verify reply without a body");
	}
	if (bad)
		*bad = v->bad;
	for (size_t i = 0; fn && i < v->n_items; i++) {
		const Lorastore__VerifyItem *it = v->items[i];
		if (it)
			fn(ud, it->name ? it->name : "", it->version, it->code,
			   it->message ? it->message : "");
	}
	lorastore__response__free_unpacked(resp, NULL);
	return 0;
}

LS_PUBLIC int lorastore_rebuild(lorastore *conn, uint64_t *versions_restored, uint64_t *skipped)
{
	if (!conn)
		return -EINVAL;
	Lorastore__Empty e = LORASTORE__EMPTY__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_REBUILD;
	req.rebuild = &e;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_REBUILD, &resp);
	if (rc)
		return rc;
	if (!resp->rebuild) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, LS_E_PROTOCOL, "rebuild reply without a body");
	}
	if (versions_restored)
		*versions_restored = resp->rebuild->versions;
	if (skipped)
		*skipped = resp->rebuild->skipped;
	lorastore__response__free_unpacked(resp, NULL);
	return 0;
}

LS_PUBLIC int lorastore_gc(lorastore *conn, uint64_t *blobs_removed, uint64_t *bytes_removed)
{
	if (!conn)
		return -EINVAL;
	Lorastore__Empty e = LORASTORE__EMPTY__INIT;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_GC;
	req.gc = &e;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_GC, &resp);
	if (rc)
		return rc;
	if (!resp->gc) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, LS_E_PROTOCOL, "gc reply without a body");
	}
	if (blobs_removed)
		*blobs_removed = resp->gc->blobs_removed;
	if (bytes_removed)
		*bytes_removed = resp->gc->bytes_removed;
	lorastore__response__free_unpacked(resp, NULL);
	return 0;
}
