/*
 * Export: a stored version as the PEFT directory it came from, the text of
 * adapter_config.json and the head of adapter_model.safetensors (store.h).
 * Written so that importing them again gives the same digest: the fields the
 * import keeps, the tensors under the names and in the dtypes stored, the
 * safetensors metadata as stored.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "blob.h"
#include "store.h"
#include "store_internal.h"

/* adapter_config.json of c, as PEFT writes one (keys the import reads). */
static char *ls_export_config(const Lorastore__AdapterConfig *c)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "peft_type", "LORA");
	if (c->task_type && *c->task_type)
		cJSON_AddStringToObject(o, "task_type", c->task_type);
	else
		cJSON_AddNullToObject(o, "task_type");
	if (c->has_base_model)
		cJSON_AddStringToObject(o, "base_model_name_or_path",
					c->base_model ? c->base_model : "");
	else
		cJSON_AddNullToObject(o, "base_model_name_or_path");
	cJSON_AddNumberToObject(o, "r", c->r);
	cJSON_AddNumberToObject(o, "lora_alpha", c->lora_alpha);
	cJSON_AddBoolToObject(o, "use_rslora", c->use_rslora);
	cJSON_AddBoolToObject(o, "use_dora", c->use_dora);
	cJSON_AddBoolToObject(o, "fan_in_fan_out", c->fan_in_fan_out);
	cJSON_AddStringToObject(o, "bias", c->bias && *c->bias ? c->bias : "none");
	if (c->target_regex && *c->target_regex) {
		cJSON_AddStringToObject(o, "target_modules", c->target_regex);
	} else if (c->n_target_modules) {
		cJSON *t = cJSON_AddArrayToObject(o, "target_modules");
		for (size_t i = 0; t && i < c->n_target_modules; i++)
			cJSON_AddItemToArray(t, cJSON_CreateString(c->target_modules[i]));
	}
	if (c->n_modules_to_save) {
		cJSON *t = cJSON_AddArrayToObject(o, "modules_to_save");
		for (size_t i = 0; t && i < c->n_modules_to_save; i++)
			cJSON_AddItemToArray(t, cJSON_CreateString(c->modules_to_save[i]));
	} else {
		cJSON_AddNullToObject(o, "modules_to_save");
	}
	const struct {
		const char *key;
		size_t n;
		Lorastore__Pattern **p;
	} pats[] = {{"rank_pattern", c->n_rank_pattern, c->rank_pattern},
		    {"alpha_pattern", c->n_alpha_pattern, c->alpha_pattern}};
	for (size_t k = 0; k < 2; k++) {
		cJSON *m = cJSON_AddObjectToObject(o, pats[k].key);
		for (size_t i = 0; m && i < pats[k].n; i++)
			cJSON_AddNumberToObject(m, pats[k].p[i]->pattern, pats[k].p[i]->value);
	}
	char *text = cJSON_Print(o);
	cJSON_Delete(o);
	return text;
}

/*
 * The safetensors head of rec's tensors, in table order, their data
 * back to back: the 8-byte length and the JSON header, padded with spaces
 * to a multiple of 8 as the safetensors library pads it.
 */
static int ls_export_head(const Lorastore__VersionRecord *rec, const Lorastore__BlobManifest *m,
			  uint8_t **out, size_t *len, struct ls_err *err)
{
	cJSON *h = cJSON_CreateObject();
	bool ok = h != NULL;
	if (ok && m && m->n_metadata_keys) {
		cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
		for (size_t i = 0; meta && i < m->n_metadata_keys && i < m->n_metadata_values; i++)
			cJSON_AddStringToObject(meta, m->metadata_keys[i], m->metadata_values[i]);
		ok = meta != NULL;
	}
	uint64_t off = 0;
	for (size_t i = 0; ok && i < rec->n_tensors; i++) {
		const Lorastore__Tensor *t = rec->tensors[i];
		cJSON *e = cJSON_AddObjectToObject(h, t->source_name && *t->source_name
							      ? t->source_name
							      : t->module);
		cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
		cJSON *offs = NULL;
		if (shape) {
			cJSON_AddStringToObject(e, "dtype", ls_dtype_name((enum ls_dtype)t->dtype));
			for (size_t k = 0; k < t->n_shape; k++)
				cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[k]));
			offs = cJSON_AddArrayToObject(e, "data_offsets");
		}
		if (!offs) {
			ok = false;
			break;
		}
		cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
		off += t->length;
		cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
	}
	char *text = ok ? cJSON_PrintUnformatted(h) : NULL;
	cJSON_Delete(h);
	if (!text)
		return ls_err_set(err, -ENOMEM, "out of memory writing a safetensors header");
	size_t tlen = strlen(text), padded = (tlen + 7) / 8 * 8;
	uint8_t *buf = malloc(8 + padded);
	if (!buf) {
		free(text);
		return ls_err_set(err, -ENOMEM, "out of memory writing a safetensors header");
	}
	for (int i = 0; i < 8; i++)
		buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
	memcpy(buf + 8, text, tlen);
	memset(buf + 8 + tlen, ' ', padded - tlen);
	free(text);
	*out = buf;
	*len = 8 + padded;
	return 0;
}

int ls_store_export(struct ls_store *s, const char *ref, struct ls_export *out,
		    struct ls_err *err)
{
	memset(out, 0, sizeof(*out));
	int rc = ls_store_lookup(s, ref, &out->rec, err);
	if (rc)
		return rc;
	if (!out->rec->config) {
		ls_export_free(out);
		return ls_err_set(err, LS_E_CATALOG, "%s: the record has no config", ref);
	}
	/* The metadata is in the blob's manifest only. */
	char path[PATH_MAX];
	ls_store_blob_path(s, out->rec->digest.data, path, sizeof(path));
	int fd = -1;
	struct ls_blob_header hdr;
	Lorastore__BlobManifest *m = NULL;
	rc = ls_blob_open(path, out->rec->digest.data, &fd, &hdr, err);
	if (rc == LS_E_BLOB_MISSING) {
		/* Deleted since the lookup: its blob went after the catalog's commit. */
		Lorastore__VersionRecord *again = NULL;
		struct ls_err lerr;
		char fixed[LS_NAME_MAX + 16];
		snprintf(fixed, sizeof(fixed), "%s@%u", out->rec->name, out->rec->version);
		if (ls_store_lookup(s, fixed, &again, &lerr) == LS_E_NOT_FOUND)
			rc = ls_err_set(err, LS_E_NOT_FOUND, "%s was deleted while it was exported",
					fixed);
		if (again)
			lorastore__version_record__free_unpacked(again, NULL);
	}
	if (rc == 0)
		rc = ls_blob_read_manifest(fd, path, &hdr, &m, err);
	if (fd >= 0)
		close(fd);
	if (rc == 0 && !(out->config_json = ls_export_config(out->rec->config)))
		rc = ls_err_set(err, -ENOMEM, "out of memory writing adapter_config.json");
	if (rc == 0)
		rc = ls_export_head(out->rec, m, &out->head, &out->head_len, err);
	if (m)
		lorastore__blob_manifest__free_unpacked(m, NULL);
	if (rc)
		ls_export_free(out);
	return rc;
}

void ls_export_free(struct ls_export *e)
{
	if (e->rec)
		lorastore__version_record__free_unpacked(e->rec, NULL);
	free(e->config_json);
	free(e->head);
	memset(e, 0, sizeof(*e));
}
