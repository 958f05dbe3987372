/* From an analyzed adapter to a blob manifest and its data region. */
#include "manifest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"

static char *ls_dup(const char *s)
{
	return strdup(s ? s : "");
}

static char **ls_dup_list(char *const *src, size_t n)
{
	char **out = calloc(n ? n : 1, sizeof(*out));
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!(out[i] = ls_dup(src[i]))) {
			for (size_t j = 0; j < i; j++)
				free(out[j]);
			free(out);
			return NULL;
		}
	return out;
}

static Lorastore__Pattern **ls_patterns(const struct ls_peft_pattern *p, size_t n)
{
	Lorastore__Pattern **out = calloc(n ? n : 1, sizeof(*out));
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		out[i] = malloc(sizeof(**out));
		if (!out[i])
			return out; /* caller frees the partial message */
		lorastore__pattern__init(out[i]);
		out[i]->pattern = ls_dup(p[i].pattern);
		out[i]->value = p[i].value;
	}
	return out;
}

static Lorastore__AdapterConfig *ls_config_message(const struct ls_peft_config *c)
{
	Lorastore__AdapterConfig *m = malloc(sizeof(*m));
	if (!m)
		return NULL;
	lorastore__adapter_config__init(m);
	m->r = (uint32_t)c->r;
	m->lora_alpha = c->lora_alpha;
	m->use_rslora = c->use_rslora;
	m->use_dora = c->use_dora;
	m->fan_in_fan_out = c->fan_in_fan_out;
	m->bias = ls_dup(c->bias ? c->bias : "none");
	m->has_base_model = c->base_model != NULL;
	m->base_model = ls_dup(c->base_model);
	m->task_type = ls_dup(c->task_type);
	m->target_regex = ls_dup(c->target_regex);
	m->n_target_modules = c->n_target_modules;
	m->target_modules = ls_dup_list(c->target_modules, c->n_target_modules);
	m->n_modules_to_save = c->n_modules_to_save;
	m->modules_to_save = ls_dup_list(c->modules_to_save, c->n_modules_to_save);
	m->n_rank_pattern = c->n_rank_pattern;
	m->rank_pattern = ls_patterns(c->rank_pattern, c->n_rank_pattern);
	m->n_alpha_pattern = c->n_alpha_pattern;
	m->alpha_pattern = ls_patterns(c->alpha_pattern, c->n_alpha_pattern);
	return m;
}

/* Whether every allocation of a freshly built config message succeeded. */
static bool ls_config_complete(const Lorastore__AdapterConfig *m)
{
	if (!m->bias || !m->base_model || !m->task_type || !m->target_regex ||
	    !m->target_modules || !m->modules_to_save || !m->rank_pattern || !m->alpha_pattern)
		return false;
	for (size_t i = 0; i < m->n_rank_pattern; i++)
		if (!m->rank_pattern[i] || !m->rank_pattern[i]->pattern)
			return false;
	for (size_t i = 0; i < m->n_alpha_pattern; i++)
		if (!m->alpha_pattern[i] || !m->alpha_pattern[i]->pattern)
			return false;
	return true;
}

/* protobuf-c frees a partial message as long as unset arrays are NULL with n = 0. */
static void ls_config_trim(Lorastore__AdapterConfig *m)
{
	if (!m->target_modules)
		m->n_target_modules = 0;
	if (!m->modules_to_save)
		m->n_modules_to_save = 0;
	if (!m->rank_pattern)
		m->n_rank_pattern = 0;
	for (size_t i = 0; i < m->n_rank_pattern; i++)
		if (!m->rank_pattern[i]) {
			m->n_rank_pattern = i;
			break;
		}
	if (!m->alpha_pattern)
		m->n_alpha_pattern = 0;
	for (size_t i = 0; i < m->n_alpha_pattern; i++)
		if (!m->alpha_pattern[i]) {
			m->n_alpha_pattern = i;
			break;
		}
}

/* Copy src (n elements of from) into dst as to; counts non-finite results. */
static size_t ls_place(enum ls_dtype from, const void *src, enum ls_dtype to, void *dst,
		       uint64_t n)
{
	if (from == to)
		memcpy(dst, src, n * ls_dtype_size(to));
	else
		ls_dtype_convert(from, src, to, dst, (size_t)n);
	return ls_count_nonfinite(to, dst, (size_t)n);
}

int ls_manifest_build(const struct ls_adapter *ad, const char *label, bool allow_nonfinite,
		      Lorastore__BlobManifest **out, void **data_out, uint64_t *data_length,
		      struct ls_err *err)
{
	*out = NULL;
	*data_out = NULL;
	Lorastore__BlobManifest *m = malloc(sizeof(*m));
	if (!m)
		return ls_err_set(err, -ENOMEM, "out of memory building a manifest");
	lorastore__blob_manifest__init(m);
	m->format_version = LS_BLOB_FORMAT;
	m->dtype = ls_dup(ad->dtype == LS_DTYPE_INVALID ? "mixed" : ls_dtype_name(ad->dtype));
	m->config = ls_config_message(&ad->config);
	m->tensors = calloc(ad->n_tensors ? ad->n_tensors : 1, sizeof(*m->tensors));
	m->scales = calloc(ad->n_modules ? ad->n_modules : 1, sizeof(*m->scales));
	m->metadata_keys = calloc(ad->st.n_meta ? ad->st.n_meta : 1, sizeof(char *));
	m->metadata_values = calloc(ad->st.n_meta ? ad->st.n_meta : 1, sizeof(char *));
	bool ok = m->dtype && m->config && m->tensors && m->scales && m->metadata_keys &&
		  m->metadata_values;
	if (m->config && !ls_config_complete(m->config)) {
		ls_config_trim(m->config);
		ok = false;
	}

	/* Tensor placement: each at a multiple of LS_BLOB_ALIGN, in table order. */
	uint64_t off = 0;
	for (size_t i = 0; ok && i < ad->n_tensors; i++) {
		const struct ls_adapter_tensor *t = &ad->tensors[i];
		Lorastore__BlobTensor *pt = malloc(sizeof(*pt));
		if (!pt) {
			ok = false;
			break;
		}
		lorastore__blob_tensor__init(pt);
		m->tensors[m->n_tensors++] = pt;
		off = ls_align_up(off, LS_BLOB_ALIGN);
		pt->module = ls_dup(t->module);
		pt->layer = t->layer;
		pt->kind = (Lorastore__TensorKind)t->kind;
		pt->dtype = ls_dup(ls_dtype_name(t->dtype));
		pt->source_name = ls_dup(t->source_name);
		pt->source_dtype = ls_dup(ls_dtype_name(t->source_dtype));
		pt->shape = calloc(t->ndim ? t->ndim : 1, sizeof(uint64_t));
		if (!pt->module || !pt->dtype || !pt->source_name || !pt->source_dtype ||
		    !pt->shape) {
			ok = false;
			break;
		}
		pt->n_shape = t->ndim;
		memcpy(pt->shape, t->shape, t->ndim * sizeof(uint64_t));
		pt->offset = off;
		pt->length = t->length;
		off += t->length;
	}
	for (size_t i = 0; ok && i < ad->n_modules; i++) {
		const struct ls_adapter_module *mod = &ad->modules[i];
		Lorastore__ModuleScale *s = malloc(sizeof(*s));
		if (!s) {
			ok = false;
			break;
		}
		lorastore__module_scale__init(s);
		m->scales[m->n_scales++] = s;
		s->module = ls_dup(mod->module);
		s->rank = mod->rank;
		s->alpha = mod->alpha;
		s->scale = mod->scale;
		ok = s->module != NULL;
	}
	for (size_t i = 0; ok && i < ad->st.n_meta; i++) {
		m->metadata_keys[i] = ls_dup(ad->st.meta[i].key);
		m->metadata_values[i] = ls_dup(ad->st.meta[i].value);
		m->n_metadata_keys = m->n_metadata_values = i + 1;
		ok = m->metadata_keys[i] && m->metadata_values[i];
	}
	if (!ok) {
		lorastore__blob_manifest__free_unpacked(m, NULL);
		return ls_err_set(err, -ENOMEM, "out of memory building a manifest");
	}
	m->data_length = off;

	/* The data region: page-padded for O_DIRECT, never empty. */
	uint64_t region = ls_align_up(off ? off : 1, LS_BLOB_PAGE);
	uint8_t *data = aligned_alloc(LS_BLOB_PAGE, (size_t)region);
	if (!data) {
		lorastore__blob_manifest__free_unpacked(m, NULL);
		return ls_err_set(err, -ENOMEM, "cannot allocate %llu bytes of blob data",
				  (unsigned long long)region);
	}
	memset(data, 0, (size_t)region);
	for (size_t i = 0; i < ad->n_tensors; i++) {
		const struct ls_adapter_tensor *t = &ad->tensors[i];
		uint64_t n = t->length / ls_dtype_size(t->dtype);
		size_t bad = ls_place(t->source_dtype, ad->data + t->source_begin, t->dtype,
				      data + m->tensors[i]->offset, n);
		/* A conversion can overflow (F32 -> F16); that is a non-finite value too. */
		if (bad > t->nonfinite && !allow_nonfinite) {
			free(data);
			lorastore__blob_manifest__free_unpacked(m, NULL);
			return ls_err_set(err, LS_E_NONFINITE,
					  "%s/adapter_model.safetensors: tensor '%s': %zu value%s "
					  "overflow%s %s on conversion from %s",
					  label, t->source_name, bad - t->nonfinite,
					  bad - t->nonfinite == 1 ? "" : "s",
					  bad - t->nonfinite == 1 ? "s" : "", ls_dtype_name(t->dtype),
					  ls_dtype_name(t->source_dtype));
		}
	}
	*out = m;
	*data_out = data;
	*data_length = region;
	return 0;
}
