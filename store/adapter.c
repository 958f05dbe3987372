/* Analysis of a PEFT LoRA adapter: normalization, pairing and checks. */
#include "adapter.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_file.h"

static const char ls_prefix[] = "base_model.model.";

int ls_path_compare(const char *a, const char *b)
{
	while (*a && *b) {
		if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
			/* Compare whole numbers: skip leading zeros, then length, then digits. */
			while (*a == '0' && isdigit((unsigned char)a[1]))
				a++;
			while (*b == '0' && isdigit((unsigned char)b[1]))
				b++;
			size_t la = 0, lb = 0;
			while (isdigit((unsigned char)a[la]))
				la++;
			while (isdigit((unsigned char)b[lb]))
				lb++;
			if (la != lb)
				return la < lb ? -1 : 1;
			int c = memcmp(a, b, la);
			if (c)
				return c;
			a += la;
			b += lb;
			continue;
		}
		if (*a != *b)
			return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
		a++;
		b++;
	}
	return (unsigned char)*a - (unsigned char)*b;
}

/* Record a problem; the message is formatted.  Returns 0 or -ENOMEM. */
__attribute__((format(printf, 5, 6))) static int
ls_problem_add(struct ls_adapter *ad, int code, bool fatal, const char *tensor, const char *fmt,
	       ...)
{
	struct ls_problem *p = realloc(ad->problems, (ad->n_problems + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	ad->problems = p;
	char buf[LS_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	struct ls_problem *np = &p[ad->n_problems];
	np->code = code;
	np->fatal = fatal;
	np->tensor = tensor ? strdup(tensor) : NULL;
	np->message = strdup(buf);
	if (!np->message || (tensor && !np->tensor)) {
		free(np->tensor);
		free(np->message);
		return -ENOMEM;
	}
	ad->n_problems++;
	return 0;
}

/*
 * Strip ".<marker>.weight", ".<marker>.<adapter>.weight", ".<marker>" or
 * ".<marker>.<adapter>" from the end of s.  Adapter names are one component.
 */
static bool ls_strip_lora_suffix(char *s, const char *marker, bool weight_optional)
{
	char *pos = NULL;
	size_t lm = strlen(marker);
	for (char *p = strstr(s, marker); p; p = strstr(p + 1, marker))
		if (p > s && p[-1] == '.' && (p[lm] == '.' || p[lm] == '\0'))
			pos = p;
	if (!pos)
		return false;
	const char *rest = pos + lm; /* "", ".weight", ".x.weight", ".x" */
	int comps = 0;
	bool ends_weight = false;
	for (const char *q = rest; *q; q++)
		if (*q == '.')
			comps++;
	size_t lr = strlen(rest);
	if (lr >= 7 && strcmp(rest + lr - 7, ".weight") == 0)
		ends_weight = true;
	bool ok;
	if (weight_optional)
		ok = comps == 0 || comps == 1 || (comps == 2 && ends_weight);
	else
		ok = ends_weight && (comps == 1 || comps == 2);
	if (!ok)
		return false;
	pos[-1] = '\0';
	return true;
}

/* Remove PEFT's ".modules_to_save.<adapter>" wrapper from an extra tensor name. */
static void ls_strip_modules_to_save(char *s)
{
	static const char mark[] = "modules_to_save.";
	char *p = strstr(s, mark);
	if (!p || (p > s && p[-1] != '.'))
		return;
	char *adapter_end = strchr(p + sizeof(mark) - 1, '.');
	if (!adapter_end)
		return;
	char *from = adapter_end + 1;
	char *to = p;
	memmove(to, from, strlen(from) + 1);
}

static int ls_layer_of(const char *path)
{
	const char *p = path;
	while (*p) {
		const char *end = strchr(p, '.');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		bool digits = len > 0 && len < 10;
		for (size_t i = 0; digits && i < len; i++)
			digits = isdigit((unsigned char)p[i]);
		if (digits)
			return atoi(p);
		if (!end)
			break;
		p = end + 1;
	}
	return -1;
}

/* Normalize one tensor name into module path and kind. */
static int ls_normalize(const char *name, char **module, enum ls_tensor_kind *kind)
{
	const char *n = name;
	while (strncmp(n, ls_prefix, sizeof(ls_prefix) - 1) == 0)
		n += sizeof(ls_prefix) - 1;
	char *m = strdup(n);
	if (!m)
		return -ENOMEM;
	if (ls_strip_lora_suffix(m, "lora_A", false))
		*kind = LS_KIND_A;
	else if (ls_strip_lora_suffix(m, "lora_B", false))
		*kind = LS_KIND_B;
	else if (ls_strip_lora_suffix(m, "lora_embedding_A", true))
		*kind = LS_KIND_A;
	else if (ls_strip_lora_suffix(m, "lora_embedding_B", true))
		*kind = LS_KIND_B;
	else if (ls_strip_lora_suffix(m, "lora_magnitude_vector", true))
		*kind = LS_KIND_MAGNITUDE;
	else if (strstr(m, "lora_")) {
		free(m);
		return LS_E_TENSOR_NAME;
	} else {
		ls_strip_modules_to_save(m);
		*kind = LS_KIND_EXTRA;
	}
	if (!m[0]) {
		free(m);
		return LS_E_TENSOR_NAME;
	}
	*module = m;
	return 0;
}

static int ls_tensor_order(const void *pa, const void *pb)
{
	const struct ls_adapter_tensor *a = pa, *b = pb;
	if (a->layer != b->layer)
		return a->layer < b->layer ? -1 : 1;
	int c = ls_path_compare(a->module, b->module);
	if (c)
		return c;
	return (int)a->kind - (int)b->kind;
}

static void ls_shape_text(const struct ls_adapter_tensor *t, char *buf, size_t len)
{
	size_t off = (size_t)snprintf(buf, len, "[");
	for (unsigned i = 0; i < t->ndim && off < len; i++)
		off += (size_t)snprintf(buf + off, len - off, "%s%llu", i ? ", " : "",
					(unsigned long long)t->shape[i]);
	if (off < len)
		snprintf(buf + off, len - off, "]");
}

#define LS_TRY(expr)                     \
	do {                             \
		int ls_try_rc_ = (expr); \
		if (ls_try_rc_ < 0)      \
			return ls_try_rc_; \
	} while (0)

/* Build tensors[] from the safetensors table. */
static int ls_collect_tensors(struct ls_adapter *ad, const struct ls_adapter_opts *opts,
			      const char *label)
{
	ad->tensors = calloc(ad->st.n_tensors ? ad->st.n_tensors : 1, sizeof(*ad->tensors));
	if (!ad->tensors)
		return -ENOMEM;
	for (size_t i = 0; i < ad->st.n_tensors; i++) {
		const struct ls_st_tensor *st = &ad->st.tensors[i];
		char *module = NULL;
		enum ls_tensor_kind kind = LS_KIND_EXTRA;
		int rc = ls_normalize(st->name, &module, &kind);
		if (rc == -ENOMEM)
			return rc;
		if (rc) {
			LS_TRY(ls_problem_add(ad, LS_E_TENSOR_NAME, true, st->name,
					      "%s: tensor '%s': name has a LoRA marker but not the "
					      "form <module>.lora_A.weight / lora_B.weight",
					      label, st->name));
			continue;
		}
		struct ls_adapter_tensor *t = &ad->tensors[ad->n_tensors++];
		t->source_name = strdup(st->name);
		t->module = module;
		if (!t->source_name)
			return -ENOMEM;
		t->layer = ls_layer_of(module);
		t->kind = kind;
		t->source_dtype = st->dtype;
		t->dtype = ls_convert_target(opts->convert, st->dtype);
		t->ndim = st->ndim;
		memcpy(t->shape, st->shape, sizeof(t->shape));
		t->source_begin = st->begin;
		t->source_end = st->end;
		uint64_t numel = ls_st_tensor_numel(st);
		t->length = numel * ls_dtype_size(t->dtype);
		if (!ls_dtype_is_lora_float(st->dtype)) {
			LS_TRY(ls_problem_add(ad, LS_E_DTYPE_UNSUPPORTED, true, st->name,
					      "%s: tensor '%s' has dtype %s; adapter tensors must be "
					      "F32, F16 or BF16",
					      label, st->name, ls_dtype_name(st->dtype)));
			continue;
		}
		t->nonfinite = ls_count_nonfinite(st->dtype, ad->data + st->begin, numel);
		if (t->nonfinite)
			LS_TRY(ls_problem_add(
				ad, LS_E_NONFINITE, !opts->allow_nonfinite, st->name,
				"%s: tensor '%s' holds %zu NaN or infinite value%s of %llu%s", label,
				st->name, t->nonfinite, t->nonfinite == 1 ? "" : "s",
				(unsigned long long)numel,
				opts->allow_nonfinite ? " (allowed by option)" : ""));
	}
	qsort(ad->tensors, ad->n_tensors, sizeof(*ad->tensors), ls_tensor_order);
	return 0;
}

/* Check one module's group of tensors (first..last-1, all the same module). */
static int ls_check_module(struct ls_adapter *ad, size_t first, size_t last, const char *label)
{
	int idx[5] = {-1, -1, -1, -1, -1};
	const char *module = ad->tensors[first].module;
	for (size_t i = first; i < last; i++) {
		struct ls_adapter_tensor *t = &ad->tensors[i];
		if (idx[t->kind] >= 0) {
			LS_TRY(ls_problem_add(ad, LS_E_TENSOR_NAME, true, t->source_name,
					      "%s: tensors '%s' and '%s' both give %s of module '%s'",
					      label, ad->tensors[idx[t->kind]].source_name,
					      t->source_name, ls_tensor_kind_name(t->kind), module));
			continue;
		}
		idx[t->kind] = (int)i;
	}
	int ia = idx[LS_KIND_A], ib = idx[LS_KIND_B], im = idx[LS_KIND_MAGNITUDE];
	if (ia < 0 && ib < 0 && im < 0)
		return 0; /* only extra tensors */
	if (ia < 0 || ib < 0) {
		const struct ls_adapter_tensor *have = &ad->tensors[ia >= 0 ? ia : ib >= 0 ? ib : im];
		const char *missing = ia < 0 && ib < 0 ? "lora_A and lora_B"
				      : ia < 0	       ? "lora_A"
						       : "lora_B";
		return ls_problem_add(ad, LS_E_LORA_UNPAIRED, true, have->source_name,
				      "%s: module '%s' has '%s' but no %s tensor", label, module,
				      have->source_name, missing);
	}
	struct ls_adapter_tensor *a = &ad->tensors[ia], *b = &ad->tensors[ib];
	char sa[96], sb[96];
	ls_shape_text(a, sa, sizeof(sa));
	ls_shape_text(b, sb, sizeof(sb));
	/* Linear and embedding LoRA are 2-D; Conv LoRA is [r, in, kh, kw] / [out, r, 1, 1]. */
	bool a_ok = (a->ndim == 2 || a->ndim == 4 || a->ndim == 3) && a->shape[0] > 0;
	bool b_ok = b->ndim == a->ndim && b->shape[1] > 0;
	if (!a_ok || !b_ok)
		return ls_problem_add(ad, LS_E_LORA_SHAPE, true, a_ok ? b->source_name : a->source_name,
				      "%s: module '%s': lora_A %s and lora_B %s are not [r, in] and "
				      "[out, r]",
				      label, module, sa, sb);
	uint64_t r = a->shape[0];
	if (b->shape[1] != r)
		return ls_problem_add(ad, LS_E_LORA_RANK, true, b->source_name,
				      "%s: module '%s': lora_A %s has rank %llu but lora_B %s has "
				      "rank %llu",
				      label, module, sa, (unsigned long long)r, sb,
				      (unsigned long long)b->shape[1]);
	int want = ls_peft_rank_for(&ad->config, module);
	if (ad->have_config && (uint64_t)want != r)
		return ls_problem_add(ad, LS_E_LORA_RANK, true, a->source_name,
				      "%s: module '%s': tensors have rank %llu but the config gives "
				      "r = %d%s",
				      label, module, (unsigned long long)r, want,
				      ad->config.n_rank_pattern ? " (after rank_pattern)" : "");
	if (r > UINT32_MAX)
		return ls_problem_add(ad, LS_E_LORA_SHAPE, true, a->source_name,
				      "%s: module '%s': rank %llu is too large", label, module,
				      (unsigned long long)r);
	if (im >= 0) {
		struct ls_adapter_tensor *m = &ad->tensors[im];
		uint64_t numel = 1;
		for (unsigned i = 0; i < m->ndim; i++)
			numel *= m->shape[i];
		if (numel != b->shape[0])
			LS_TRY(ls_problem_add(ad, LS_E_LORA_SHAPE, true, m->source_name,
					      "%s: module '%s': DoRA magnitude has %llu elements but "
					      "lora_B has %llu outputs",
					      label, module, (unsigned long long)numel,
					      (unsigned long long)b->shape[0]));
		else if (ad->have_config && !ad->config.use_dora)
			LS_TRY(ls_problem_add(ad, LS_E_CONFIG_INVALID, false, m->source_name,
					      "%s: module '%s' has a DoRA magnitude but the config "
					      "says use_dora = false",
					      label, module));
	} else if (ad->have_config && ad->config.use_dora) {
		LS_TRY(ls_problem_add(ad, LS_E_LORA_UNPAIRED, false, a->source_name,
				      "%s: module '%s' has no DoRA magnitude although the config "
				      "says use_dora = true",
				      label, module));
	}
	if (ad->have_config && !ls_peft_targets(&ad->config, module))
		LS_TRY(ls_problem_add(ad, LS_E_CONFIG_INVALID, false, a->source_name,
				      "%s: module '%s' is not selected by target_modules", label,
				      module));

	struct ls_adapter_module *mods =
		realloc(ad->modules, (ad->n_modules + 1) * sizeof(*ad->modules));
	if (!mods)
		return -ENOMEM;
	ad->modules = mods;
	struct ls_adapter_module *mod = &mods[ad->n_modules];
	memset(mod, 0, sizeof(*mod));
	mod->module = strdup(module);
	if (!mod->module)
		return -ENOMEM;
	ad->n_modules++;
	mod->layer = a->layer;
	mod->a = ia;
	mod->b = ib;
	mod->magnitude = im;
	mod->rank = (uint32_t)r;
	mod->alpha = ls_peft_alpha_for(&ad->config, module);
	/* The scale follows the tensors' rank, which the checks above tie to the config. */
	mod->scale = ls_lora_scale(mod->alpha, r, ad->config.use_rslora);
	mod->in = a->shape[1];
	mod->out = b->shape[0];
	if (mod->rank > ad->max_rank)
		ad->max_rank = mod->rank;
	return 0;
}

static int ls_check_modules(struct ls_adapter *ad, const char *label)
{
	size_t i = 0;
	while (i < ad->n_tensors) {
		size_t j = i + 1;
		while (j < ad->n_tensors && strcmp(ad->tensors[j].module, ad->tensors[i].module) == 0)
			j++;
		LS_TRY(ls_check_module(ad, i, j, label));
		i = j;
	}
	if (ad->n_modules == 0)
		LS_TRY(ls_problem_add(ad, LS_E_NO_TENSORS, true, NULL,
				      "%s: no LoRA tensors (<module>.lora_A.weight and "
				      "<module>.lora_B.weight) in the file",
				      label));
	/* One dtype for the LoRA tensors, or "mixed". */
	ad->dtype = LS_DTYPE_INVALID;
	bool mixed = false;
	for (size_t k = 0; k < ad->n_tensors; k++) {
		const struct ls_adapter_tensor *t = &ad->tensors[k];
		ad->bytes += t->length;
		if (t->kind == LS_KIND_EXTRA)
			continue;
		if (ad->dtype == LS_DTYPE_INVALID && !mixed)
			ad->dtype = t->dtype;
		else if (ad->dtype != t->dtype) {
			mixed = true;
			ad->dtype = LS_DTYPE_INVALID;
		}
	}
	return 0;
}

static int ls_read_data(int fd, struct ls_adapter *ad, const char *label, struct ls_err *err)
{
	size_t len = (size_t)ad->st.data_len;
	ad->data = malloc(len ? len : 1);
	if (!ad->data)
		return ls_err_set(err, -ENOMEM, "%s: cannot allocate %zu bytes for tensor data",
				  label, len);
	size_t done = 0;
	while (done < len) {
		ssize_t n = pread(fd, ad->data + done, len - done,
				  (off_t)(ad->st.data_offset + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return ls_err_set(err, -errno, "%s: reading tensor data: %s", label,
					  strerror(errno));
		if (n == 0)
			return ls_err_set(err, LS_E_TRUNCATED,
					  "%s: file shrank while reading tensor data", label);
		done += (size_t)n;
	}
	return 0;
}

int ls_adapter_analyze(int config_fd, int st_fd, const char *label,
		       const struct ls_adapter_opts *opts, struct ls_adapter *out,
		       struct ls_err *err)
{
	static const struct ls_adapter_opts defaults = {0};
	if (!opts)
		opts = &defaults;
	memset(out, 0, sizeof(*out));
	ls_err_clear(err);
	char what[PATH_MAX];
	struct ls_err sub;
	int rc;

	/* The config first: a bad config is reported, and the tensors still checked. */
	if (config_fd < 0) {
		rc = ls_problem_add(out, LS_E_CONFIG_MISSING, true, NULL,
				    "%s: adapter_config.json is missing", label);
		if (rc)
			return ls_err_set(err, rc, "out of memory");
	} else {
		snprintf(what, sizeof(what), "%s/adapter_config.json", label);
		rc = ls_peft_config_read_fd(config_fd, what, &out->config, &sub);
		if (rc == -ENOMEM)
			return ls_err_set(err, rc, "%s", sub.msg);
		if (rc) {
			if (ls_problem_add(out, rc, true, NULL, "%s", sub.msg))
				return ls_err_set(err, -ENOMEM, "out of memory");
		} else {
			out->have_config = true;
		}
	}
	if (!out->have_config) {
		/* PEFT's defaults, so that the tensor checks below can still run. */
		ls_peft_config_free(&out->config);
		if (ls_peft_config_parse("{}", 2, "defaults", &out->config, NULL))
			return ls_err_set(err, -ENOMEM, "out of memory");
	}

	snprintf(what, sizeof(what), "%s/adapter_model.safetensors", label);
	rc = ls_st_read_fd(st_fd, what, &out->st, &sub);
	if (rc == 0)
		rc = ls_read_data(st_fd, out, what, &sub);
	if (rc) {
		if (rc == -ENOMEM || ls_problem_add(out, rc, true, NULL, "%s", sub.msg))
			return ls_err_set(err, -ENOMEM, "out of memory");
	} else {
		rc = ls_collect_tensors(out, opts, what);
		if (rc == 0)
			rc = ls_check_modules(out, what);
		if (rc)
			return ls_err_set(err, rc, "%s: %s", label, strerror(-rc));
	}

	for (size_t i = 0; i < out->n_problems; i++) {
		const struct ls_problem *p = &out->problems[i];
		if (!p->fatal)
			continue;
		if (p->code != LS_E_NONFINITE)
			return ls_err_set(err, p->code, "%s", p->message);
		/* Say how many tensors hold them, and the way to accept them. */
		size_t n = 0;
		for (size_t k = 0; k < out->n_problems; k++)
			n += out->problems[k].fatal && out->problems[k].code == LS_E_NONFINITE;
		return ls_err_set(err, p->code,
				  "%s; %zu tensor%s in all hold%s NaN or infinite values "
				  "(--allow-nonfinite, allow_nonfinite=True in Python, accepts them)",
				  p->message, n, n == 1 ? "" : "s", n == 1 ? "s" : "");
	}
	return 0;
}

int ls_adapter_analyze_dir(const char *dir, const struct ls_adapter_opts *opts,
			   struct ls_adapter *out, struct ls_err *err)
{
	char path[PATH_MAX];
	memset(out, 0, sizeof(*out));
	struct stat st;
	if (stat(dir, &st) != 0)
		return ls_err_set(err, -errno, "%s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return ls_err_set(err, -ENOTDIR, "%s: not a directory", dir);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	int st_fd = -1, cfg_fd = -1;
	int rc = ls_open_regular_at(AT_FDCWD, path, &st_fd);
	if (rc)
		return ls_err_set(err, rc, "%s: %s", path,
				  rc == -EINVAL ? "not a regular file" : strerror(-rc));
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	rc = ls_open_regular_at(AT_FDCWD, path, &cfg_fd);
	if (rc && rc != -ENOENT) {
		close(st_fd);
		return ls_err_set(err, rc, "%s: %s", path,
				  rc == -EINVAL ? "not a regular file" : strerror(-rc));
	}
	rc = ls_adapter_analyze(cfg_fd, st_fd, dir, opts, out, err);
	if (cfg_fd >= 0)
		close(cfg_fd);
	close(st_fd);
	return rc;
}

void ls_adapter_free(struct ls_adapter *ad)
{
	if (!ad)
		return;
	ls_peft_config_free(&ad->config);
	ls_st_file_free(&ad->st);
	free(ad->data);
	for (size_t i = 0; i < ad->n_tensors; i++) {
		free(ad->tensors[i].source_name);
		free(ad->tensors[i].module);
	}
	free(ad->tensors);
	for (size_t i = 0; i < ad->n_modules; i++)
		free(ad->modules[i].module);
	free(ad->modules);
	for (size_t i = 0; i < ad->n_problems; i++) {
		free(ad->problems[i].tensor);
		free(ad->problems[i].message);
	}
	free(ad->problems);
	memset(ad, 0, sizeof(*ad));
}

const struct ls_adapter_module *ls_adapter_find_module(const struct ls_adapter *ad,
						       const char *module)
{
	for (size_t i = 0; i < ad->n_modules; i++)
		if (strcmp(ad->modules[i].module, module) == 0)
			return &ad->modules[i];
	return NULL;
}
