/* liblorastore: listings (list, show, import results) and tensor records. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"

lorastore_kind ls_kind_from_pb(Lorastore__TensorKind k)
{
	switch (k) {
	case LORASTORE__TENSOR_KIND__TENSOR_KIND_A:
		return LORASTORE_KIND_A;
	case LORASTORE__TENSOR_KIND__TENSOR_KIND_B:
		return LORASTORE_KIND_B;
	case LORASTORE__TENSOR_KIND__TENSOR_KIND_EXTRA:
		return LORASTORE_KIND_EXTRA;
	case LORASTORE__TENSOR_KIND__TENSOR_KIND_MAGNITUDE:
		return LORASTORE_KIND_MAGNITUDE;
	default:
		return 0;
	}
}

const Lorastore__ModuleScale *ls_record_scale(const Lorastore__VersionRecord *rec,
					      const char *module)
{
	for (size_t i = 0; i < rec->n_scales; i++)
		if (rec->scales[i] && rec->scales[i]->module &&
		    strcmp(rec->scales[i]->module, module) == 0)
			return rec->scales[i];
	return NULL;
}

int ls_tensor_fill(const Lorastore__VersionRecord *rec, size_t j,
		   const Lorastore__ModuleScale *scale, const uint8_t *base, lorastore_tensor *out)
{
	const Lorastore__Tensor *t = rec->tensors[j];
	if (!t || !t->module || t->dtype == LORASTORE__DTYPE__DTYPE_NONE ||
	    t->n_shape > LORASTORE_MAX_DIMS)
		return LS_E_PROTOCOL;
	memset(out, 0, sizeof(*out));
	out->data = base ? base + t->offset : NULL;
	out->module = t->module;
	out->kind = ls_kind_from_pb(t->kind);
	out->dtype = ls_dtype_is_lora_float((enum ls_dtype)t->dtype) ? (lorastore_dtype)t->dtype : 0;
	out->dtype_name = ls_dtype_name((enum ls_dtype)t->dtype);
	out->layer = t->layer;
	out->ndim = (unsigned)t->n_shape;
	for (size_t k = 0; k < t->n_shape; k++)
		out->shape[k] = t->shape[k];
	out->bytes = t->length;
	out->offset = t->offset;
	if (scale && (out->kind == LORASTORE_KIND_A || out->kind == LORASTORE_KIND_B)) {
		out->rank = scale->rank;
		out->scale = scale->scale;
	}
	return 0;
}

void ls_list_digest_hex(const ProtobufCBinaryData *d, char out[LS_DIGEST_HEX])
{
	out[0] = '\0';
	if (d->len == LS_DIGEST_LEN && d->data)
		ls_digest_hex(d->data, out);
}

static const char *ls_str(const char *s)
{
	return s ? s : "";
}

/* Where an entry is resident, as lorastore_entry says it: "host", "device", "host,device", "disk". */
static const char *ls_entry_tiers(const Lorastore__AdapterEntry *a)
{
	bool host = false, device = false;
	for (size_t i = 0; a && i < a->n_tiers; i++)
		*(a->tiers[i] == LORASTORE__TIER__TIER_DEVICE ? &device : &host) = true;
	return host && device ? "host,device" : host ? "host" : device ? "device" : "disk";
}

static void ls_entry_fill(lorastore_entry *e, const Lorastore__VersionRecord *r, int resident,
			  const char *tier, uint32_t pins, size_t tensor_count,
			  uint64_t resident_bytes)
{
	memset(e, 0, sizeof(*e));
	e->name = ls_str(r->name);
	e->version = r->version;
	ls_list_digest_hex(&r->digest, e->digest);
	e->generation = r->generation;
	e->rank = r->rank;
	e->scale = r->scale;
	e->dtype = r->dtype ? ls_dtype_name((enum ls_dtype)r->dtype) : "mixed";
	e->tensor_bytes = r->tensor_bytes;
	if (!e->tensor_bytes)
		for (size_t i = 0; i < r->n_tensors; i++)
			e->tensor_bytes += r->tensors[i] ? r->tensors[i]->length : 0;
	/* A reply without it (an import's, a tag's) carries the tensors it is computed from. */
	e->resident_bytes = resident_bytes ? resident_bytes : ls_table_footprint(r);
	e->blob_bytes = r->blob_bytes;
	e->tensor_count = tensor_count ? tensor_count : r->n_tensors;
	e->resident = resident;
	e->tier = tier;
	e->pins = pins;
	e->created_unix_ns = r->created_unix_ns;
	e->base_model = r->config && r->config->has_base_model ? ls_str(r->config->base_model) : "";
	e->source = ls_str(r->source);
}

int ls_list_from_response(lorastore *conn, Lorastore__Response *resp, lorastore_list **out)
{
	*out = NULL;
	lorastore_list *l = calloc(1, sizeof(*l));
	if (!l) {
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, -ENOMEM, "out of memory");
	}
	l->resp = resp;
	size_t n = 0;
	if (resp->body_case == LORASTORE__RESPONSE__BODY_LIST && resp->list)
		n = resp->list->n_adapters;
	else if (resp->body_case == LORASTORE__RESPONSE__BODY_RECORD && resp->record)
		n = 1;
	else if (resp->body_case == LORASTORE__RESPONSE__BODY_IMPORTED && resp->imported &&
		 resp->imported->record)
		n = 1;
	else {
		lorastore_list_free(l);
		return ls_conn_error(conn, LS_E_PROTOCOL, "reply without a listing");
	}
	l->entries = calloc(n ? n : 1, sizeof(*l->entries));
	l->records = calloc(n ? n : 1, sizeof(*l->records));
	if (!l->entries || !l->records) {
		lorastore_list_free(l);
		return ls_conn_error(conn, -ENOMEM, "out of memory for %zu entries", n);
	}
	if (resp->body_case == LORASTORE__RESPONSE__BODY_RECORD) {
		l->records[0] = resp->record;
		ls_entry_fill(&l->entries[0], resp->record, 0, "disk", 0, 0, 0);
		l->n = 1;
	} else if (resp->body_case == LORASTORE__RESPONSE__BODY_IMPORTED) {
		l->records[0] = resp->imported->record;
		ls_entry_fill(&l->entries[0], resp->imported->record, 0, "disk", 0, 0, 0);
		l->entries[0].unchanged = resp->imported->unchanged;
		l->n = 1;
	} else {
		for (size_t i = 0; i < n; i++) {
			const Lorastore__AdapterEntry *a = resp->list->adapters[i];
			if (!a || !a->record) {
				lorastore_list_free(l);
				return ls_conn_error(conn, LS_E_PROTOCOL, "listing entry %zu without a record",
						     i);
			}
			l->records[i] = a->record;
			ls_entry_fill(&l->entries[i], a->record, a->resident, ls_entry_tiers(a), a->pins,
				      a->tensor_count, a->resident_bytes);
			l->entries[i].aliases = (const char *const *)a->aliases;
			l->entries[i].alias_count = a->n_aliases;
		}
		l->n = n;
		const char *next = resp->list->next_cursor;
		l->next = next && *next ? next : NULL;
	}
	*out = l;
	return 0;
}

LS_PUBLIC int lorastore_list_page(lorastore *conn, const char *prefix, const char *cursor,
				  unsigned limit, lorastore_list **out)
{
	if (!conn || !out)
		return -EINVAL;
	*out = NULL;
	if (limit > LS_PROTO_LIST_LIMIT_MAX)
		return ls_conn_error(conn, -EINVAL, "list: a page holds at most %u versions, not %u",
				     LS_PROTO_LIST_LIMIT_MAX, limit);
	Lorastore__ListRequest lr = LORASTORE__LIST_REQUEST__INIT;
	lr.prefix = (char *)(prefix ? prefix : "");
	lr.cursor = (char *)(cursor ? cursor : "");
	lr.limit = limit;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_LIST;
	req.list = &lr;
	Lorastore__Response *resp = NULL;
	int rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_LIST, &resp);
	if (rc)
		return rc;
	return ls_list_from_response(conn, resp, out);
}

LS_PUBLIC int lorastore_show(lorastore *conn, const char *ref, lorastore_list **out)
{
	if (!conn || !out)
		return -EINVAL;
	*out = NULL;
	int rc = ls_ref_check(conn, "show", ref);
	if (rc)
		return rc;
	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = (char *)ref;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_SHOW;
	req.show = &rr;
	Lorastore__Response *resp = NULL;
	rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_LIST, &resp);
	if (rc)
		return rc;
	if (!resp->list || resp->list->n_adapters != 1) {
		size_t n = resp->list ? resp->list->n_adapters : 0;
		lorastore__response__free_unpacked(resp, NULL);
		return ls_conn_error(conn, LS_E_PROTOCOL, "show of %s gave %zu entries, not 1", ref, n);
	}
	return ls_list_from_response(conn, resp, out);
}

LS_PUBLIC size_t lorastore_list_count(const lorastore_list *list)
{
	return list ? list->n : 0;
}

LS_PUBLIC const lorastore_entry *lorastore_list_entry(const lorastore_list *list, size_t i)
{
	return list && i < list->n ? &list->entries[i] : NULL;
}

LS_PUBLIC const char *lorastore_list_next(const lorastore_list *list)
{
	return list ? list->next : NULL;
}

LS_PUBLIC size_t lorastore_list_tensor_count(const lorastore_list *list, size_t i)
{
	return list && i < list->n ? list->records[i]->n_tensors : 0;
}

LS_PUBLIC int lorastore_list_tensor(const lorastore_list *list, size_t i, size_t j,
				    lorastore_tensor *out)
{
	if (!list || !out || i >= list->n || j >= list->records[i]->n_tensors)
		return -EINVAL;
	const Lorastore__VersionRecord *r = list->records[i];
	const Lorastore__Tensor *t = r->tensors[j];
	const Lorastore__ModuleScale *s = t && t->module ? ls_record_scale(r, t->module) : NULL;
	return ls_tensor_fill(r, j, s, NULL, out);
}

LS_PUBLIC int lorastore_list_peft_config(const lorastore_list *list, size_t i,
					 lorastore_peft_config *out)
{
	if (!list || !out || i >= list->n)
		return -EINVAL;
	const Lorastore__AdapterConfig *c = list->records[i] ? list->records[i]->config : NULL;
	if (!c)
		return LS_E_NOT_FOUND;
	*out = (lorastore_peft_config){
		.r = c->r,
		.lora_alpha = c->lora_alpha,
		.use_rslora = c->use_rslora,
		.use_dora = c->use_dora,
		.fan_in_fan_out = c->fan_in_fan_out,
		.bias = ls_str(c->bias),
		.base_model = c->has_base_model ? ls_str(c->base_model) : NULL,
		.task_type = ls_str(c->task_type),
		.target_regex = c->target_regex && *c->target_regex ? c->target_regex : NULL,
		.n_target_modules = c->n_target_modules,
		.target_modules = (const char *const *)c->target_modules,
		.n_modules_to_save = c->n_modules_to_save,
		.modules_to_save = (const char *const *)c->modules_to_save,
		.n_rank_pattern = c->n_rank_pattern,
		.n_alpha_pattern = c->n_alpha_pattern,
	};
	if (!*out->bias)
		out->bias = "none";
	return 0;
}

LS_PUBLIC int lorastore_list_peft_pattern(const lorastore_list *list, size_t i, int alpha,
					  size_t j, const char **key, double *value)
{
	if (!list || !key || !value || i >= list->n)
		return -EINVAL;
	const Lorastore__AdapterConfig *c = list->records[i] ? list->records[i]->config : NULL;
	if (!c)
		return LS_E_NOT_FOUND;
	size_t n = alpha ? c->n_alpha_pattern : c->n_rank_pattern;
	Lorastore__Pattern *const *p = alpha ? c->alpha_pattern : c->rank_pattern;
	if (j >= n || !p[j])
		return -EINVAL;
	*key = ls_str(p[j]->pattern);
	*value = p[j]->value;
	return 0;
}

LS_PUBLIC void lorastore_list_free(lorastore_list *list)
{
	if (!list)
		return;
	if (list->resp)
		lorastore__response__free_unpacked(list->resp, NULL);
	free(list->entries);
	free(list->records);
	free(list);
}
