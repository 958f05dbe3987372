/*
 * Reader of PEFT adapter_config.json (LoRA).
 *
 * PEFT's patterns are Python regexes; PCRE2 compiles them here, once, at
 * parse time, so that a bad pattern is an error of the file and not a silent
 * "no match" later.  The compiled code lives behind cfg->priv.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "peft_config.h"
#include "json.h"
#include "ls_file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Real configs are a few kilobytes; anything near this is not a config. */
/*
 * Largest adapter_config.json taken.  Real ones have a few KB (a
 * target_modules list naming every module of a large model has tens of KB);
 * what a config holds goes into every reply about its version.
 */
#define LS_PEFT_FILE_MAX ((size_t)1 << 20)

/*
 * Bounds on one regex match, so that a hostile pattern cannot stall the
 * caller: backtracking steps, and heap for backtracking frames (KiB).
 */
#define LS_PEFT_MATCH_LIMIT 1000000u
#define LS_PEFT_HEAP_LIMIT_KIB 65536u

/*
 * Python's str patterns are Unicode patterns: \w and \d match Unicode letters
 * and digits.  MATCH_INVALID_UTF lets a module name that is not UTF-8 simply
 * fail to match instead of raising an error.
 */
#define LS_PEFT_RE_OPTIONS (PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF)

/* PEFT's get_pattern_key wraps a pattern key p as `(.*\.)?(p)$`. */
static const char ls_peft_wrap_head[] = "(.*\\.)?(";
static const char ls_peft_wrap_tail[] = ")$";

struct ls_peft_priv {
	pcre2_code *target;           /* target_regex, anchored at both ends */
	pcre2_code **rank;            /* one per rank_pattern entry */
	pcre2_code **alpha;           /* one per alpha_pattern entry */
	pcre2_match_context *mctx;    /* the limits above */
	bool all_linear;              /* target_modules is PEFT's "all-linear" */
};

/* What the parse helpers share. */
struct ls_peft_parse {
	const char *what;
	struct ls_err *err;
	struct ls_peft_config *cfg;
	struct ls_peft_priv *priv;
};

static int ls_peft_nomem(struct ls_peft_parse *p)
{
	return ls_err_set(p->err, -ENOMEM, "%s: out of memory while reading the PEFT config",
			  p->what);
}

/*
 * A short description of a JSON value for messages: the number itself, or
 * its kind.  Strings are quoted and cut to keep messages readable.
 */
static void ls_peft_describe(const cJSON *v, char *buf, size_t n)
{
	if (cJSON_IsNumber(v))
		snprintf(buf, n, "%g", v->valuedouble);
	else if (cJSON_IsString(v))
		snprintf(buf, n, "the string \"%.60s\"", v->valuestring);
	else if (cJSON_IsTrue(v))
		snprintf(buf, n, "true");
	else if (cJSON_IsFalse(v))
		snprintf(buf, n, "false");
	else if (cJSON_IsNull(v))
		snprintf(buf, n, "null");
	else if (cJSON_IsArray(v))
		snprintf(buf, n, "a list");
	else if (cJSON_IsObject(v))
		snprintf(buf, n, "an object");
	else
		snprintf(buf, n, "an unknown value");
}

/*
 * The member named key, compared case-sensitively.  Python's json module
 * keeps the last of duplicate keys, so the last one wins here as well.
 */
static const cJSON *ls_peft_member(const cJSON *obj, const char *key)
{
	const cJSON *found = NULL;
	for (const cJSON *it = obj->child; it; it = it->next)
		if (it->string && strcmp(it->string, key) == 0)
			found = it;
	return found;
}

/* A number that is a whole value in [1, INT_MAX]; 16.0 counts as 16. */
static bool ls_peft_positive_int(const cJSON *v, int *out)
{
	if (!cJSON_IsNumber(v))
		return false;
	double d = v->valuedouble;
	if (!isfinite(d) || d < 1.0 || d > (double)INT_MAX || d != floor(d))
		return false;
	*out = (int)d;
	return true;
}

static bool ls_peft_positive_real(const cJSON *v, double *out)
{
	if (!cJSON_IsNumber(v))
		return false;
	double d = v->valuedouble;
	if (!isfinite(d) || d <= 0.0)
		return false;
	*out = d;
	return true;
}

/*
 * Compile one regex.  field names the key for the message, key_text the
 * pattern as written in the file, and wrap selects PEFT's pattern-key form
 * (re.match of `(.*\.)?(p)$`) over target_modules' full match.
 */
static int ls_peft_compile(struct ls_peft_parse *p, const char *field, const char *key_text,
			   bool wrap, pcre2_code **out)
{
	size_t klen = strlen(key_text);
	char *text = (char *)key_text;
	size_t tlen = klen;
	uint32_t options = LS_PEFT_RE_OPTIONS | PCRE2_ANCHORED;
	size_t head = 0;

	if (wrap) {
		head = sizeof(ls_peft_wrap_head) - 1;
		tlen = head + klen + sizeof(ls_peft_wrap_tail) - 1;
		text = malloc(tlen + 1);
		if (!text)
			return ls_peft_nomem(p);
		memcpy(text, ls_peft_wrap_head, head);
		memcpy(text + head, key_text, klen);
		memcpy(text + head + klen, ls_peft_wrap_tail, sizeof(ls_peft_wrap_tail));
	} else {
		/* re.fullmatch: the match must also end at the end of the path. */
		options |= PCRE2_ENDANCHORED;
	}

	int ecode = 0;
	PCRE2_SIZE eoff = 0;
	pcre2_code *code = pcre2_compile((PCRE2_SPTR)text, tlen, options, &ecode, &eoff, NULL);
	if (text != key_text)
		free(text);
	if (code) {
		*out = code;
		return 0;
	}
	if (ecode == PCRE2_ERROR_NOMEMORY || ecode == PCRE2_ERROR_HEAP_FAILED)
		return ls_peft_nomem(p);

	char emsg[160];
	if (pcre2_get_error_message(ecode, (PCRE2_UCHAR *)emsg, sizeof(emsg)) < 0)
		snprintf(emsg, sizeof(emsg), "PCRE2 error %d", ecode);
	/* Report the offset in the text the user wrote, not in the wrapper. */
	size_t at = eoff > head ? eoff - head : 0;
	if (at > klen)
		at = klen;
	return ls_err_set(p->err, LS_E_CONFIG_INVALID,
			  "%s: \"%s\" pattern \"%.80s\" is not a valid regular expression: %s "
			  "(at byte %zu of the pattern)",
			  p->what, field, key_text, emsg, at);
}

static int ls_peft_get_bool(struct ls_peft_parse *p, const cJSON *root, const char *key,
			    bool *out)
{
	const cJSON *v = ls_peft_member(root, key);
	if (!v)
		return 0;
	if (!cJSON_IsBool(v)) {
		char got[96];
		ls_peft_describe(v, got, sizeof(got));
		return ls_err_set(p->err, LS_E_CONFIG_INVALID,
				  "%s: \"%s\" must be true or false, got %s", p->what, key, got);
	}
	*out = cJSON_IsTrue(v);
	return 0;
}

/* A string or null (null and missing leave *out NULL). */
static int ls_peft_get_string(struct ls_peft_parse *p, const cJSON *root, const char *key,
			      char **out)
{
	const cJSON *v = ls_peft_member(root, key);
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsString(v)) {
		char got[96];
		ls_peft_describe(v, got, sizeof(got));
		return ls_err_set(p->err, LS_E_CONFIG_INVALID,
				  "%s: \"%s\" must be a string or null, got %s", p->what, key, got);
	}
	*out = strdup(v->valuestring);
	return *out ? 0 : ls_peft_nomem(p);
}

/*
 * A list of strings into a fresh array.  The array is allocated even for an
 * empty list, so that callers can tell "[]" from "missing".
 */
static int ls_peft_get_list(struct ls_peft_parse *p, const char *key, const cJSON *v,
			    char ***out, size_t *n_out)
{
	size_t n = (size_t)cJSON_GetArraySize(v);
	char **list = calloc(n + 1, sizeof(*list));
	if (!list)
		return ls_peft_nomem(p);
	*out = list;
	size_t i = 0;
	for (const cJSON *it = v->child; it; it = it->next, i++) {
		if (!cJSON_IsString(it)) {
			char got[96];
			ls_peft_describe(it, got, sizeof(got));
			return ls_err_set(p->err, LS_E_CONFIG_INVALID,
					  "%s: \"%s\" entry %zu must be a string, got %s", p->what,
					  key, i, got);
		}
		list[i] = strdup(it->valuestring);
		if (!list[i])
			return ls_peft_nomem(p);
		*n_out = i + 1;
	}
	return 0;
}

static int ls_peft_get_targets(struct ls_peft_parse *p, const cJSON *root)
{
	const cJSON *v = ls_peft_member(root, "target_modules");
	if (!v || cJSON_IsNull(v))
		return 0;
	if (cJSON_IsArray(v)) {
		int rc = ls_peft_get_list(p, "target_modules", v, &p->cfg->target_modules,
					  &p->cfg->n_target_modules);
		if (rc)
			return rc;
		for (size_t i = 0; i < p->cfg->n_target_modules; i++)
			if (strcasecmp(p->cfg->target_modules[i], "all-linear") == 0)
				p->priv->all_linear = true;
		return 0;
	}
	if (cJSON_IsString(v)) {
		p->cfg->target_regex = strdup(v->valuestring);
		if (!p->cfg->target_regex)
			return ls_peft_nomem(p);
		/* PEFT checks for its shorthand before it would use the string as a regex. */
		if (strcasecmp(v->valuestring, "all-linear") == 0)
			p->priv->all_linear = true;
		return ls_peft_compile(p, "target_modules", v->valuestring, false,
				       &p->priv->target);
	}
	char got[96];
	ls_peft_describe(v, got, sizeof(got));
	return ls_err_set(p->err, LS_E_CONFIG_INVALID,
			  "%s: \"target_modules\" must be a list of module names, a regular "
			  "expression string or null, got %s",
			  p->what, got);
}

/*
 * rank_pattern or alpha_pattern: an object from pattern to number, kept in
 * file order.  A repeated key keeps its first position and takes the last
 * value, as a Python dict built by json.loads does.
 */
static int ls_peft_get_patterns(struct ls_peft_parse *p, const cJSON *root, const char *key,
				bool ranks, struct ls_peft_pattern **out, size_t *n_out,
				pcre2_code ***codes_out)
{
	const cJSON *v = ls_peft_member(root, key);
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsObject(v)) {
		char got[96];
		ls_peft_describe(v, got, sizeof(got));
		return ls_err_set(p->err, LS_E_CONFIG_INVALID,
				  "%s: \"%s\" must be an object from module pattern to %s, got %s",
				  p->what, key, ranks ? "rank" : "alpha", got);
	}
	size_t cap = (size_t)cJSON_GetArraySize(v);
	if (cap == 0)
		return 0;
	struct ls_peft_pattern *pats = calloc(cap, sizeof(*pats));
	pcre2_code **codes = calloc(cap, sizeof(*codes));
	if (!pats || !codes) {
		free(pats);
		free(codes);
		return ls_peft_nomem(p);
	}
	*out = pats;
	*codes_out = codes;

	for (const cJSON *it = v->child; it; it = it->next) {
		const char *pat = it->string ? it->string : "";
		double value = 0.0;
		int rank = 0;
		bool ok = ranks ? ls_peft_positive_int(it, &rank) : ls_peft_positive_real(it, &value);
		if (!ok) {
			char got[96];
			ls_peft_describe(it, got, sizeof(got));
			return ls_err_set(p->err, LS_E_CONFIG_INVALID,
					  "%s: \"%s\" value for \"%.80s\" must be a %s, got %s",
					  p->what, key, pat,
					  ranks ? "positive integer" : "finite positive number", got);
		}
		if (ranks)
			value = rank;

		size_t j = 0;
		while (j < *n_out && strcmp(pats[j].pattern, pat) != 0)
			j++;
		if (j < *n_out) {
			pats[j].value = value;
			continue;
		}
		pats[j].pattern = strdup(pat);
		if (!pats[j].pattern)
			return ls_peft_nomem(p);
		pats[j].value = value;
		*n_out = j + 1;
		int rc = ls_peft_compile(p, key, pat, true, &codes[j]);
		if (rc)
			return rc;
	}
	return 0;
}

static int ls_peft_get_numbers(struct ls_peft_parse *p, const cJSON *root)
{
	char got[96];
	const cJSON *v = ls_peft_member(root, "r");
	if (v && !ls_peft_positive_int(v, &p->cfg->r)) {
		ls_peft_describe(v, got, sizeof(got));
		return ls_err_set(p->err, LS_E_CONFIG_INVALID,
				  "%s: \"r\" must be a positive integer, got %s", p->what, got);
	}
	v = ls_peft_member(root, "lora_alpha");
	if (v && !ls_peft_positive_real(v, &p->cfg->lora_alpha)) {
		ls_peft_describe(v, got, sizeof(got));
		return ls_err_set(p->err, LS_E_CONFIG_INVALID,
				  "%s: \"lora_alpha\" must be a finite positive number, got %s",
				  p->what, got);
	}
	return 0;
}

static int ls_peft_get_kind(struct ls_peft_parse *p, const cJSON *root)
{
	char got[96];
	const cJSON *v = ls_peft_member(root, "peft_type");
	if (v) {
		if (!cJSON_IsString(v) || strcmp(v->valuestring, "LORA") != 0) {
			ls_peft_describe(v, got, sizeof(got));
			return ls_err_set(p->err, LS_E_CONFIG_INVALID,
					  "%s: \"peft_type\" must be \"LORA\", got %s; only LoRA "
					  "adapters are supported",
					  p->what, got);
		}
		p->cfg->peft_type = strdup("LORA");
		if (!p->cfg->peft_type)
			return ls_peft_nomem(p);
	}

	v = ls_peft_member(root, "bias");
	const char *bias = "none";
	if (v) {
		if (!cJSON_IsString(v) ||
		    (strcmp(v->valuestring, "none") != 0 && strcmp(v->valuestring, "all") != 0 &&
		     strcmp(v->valuestring, "lora_only") != 0)) {
			ls_peft_describe(v, got, sizeof(got));
			return ls_err_set(p->err, LS_E_CONFIG_INVALID,
					  "%s: \"bias\" must be \"none\", \"all\" or \"lora_only\", "
					  "got %s",
					  p->what, got);
		}
		bias = v->valuestring;
	}
	p->cfg->bias = strdup(bias);
	return p->cfg->bias ? 0 : ls_peft_nomem(p);
}

static int ls_peft_get_all(struct ls_peft_parse *p, const cJSON *root)
{
	int rc;
	if ((rc = ls_peft_get_kind(p, root)) || (rc = ls_peft_get_numbers(p, root)) ||
	    (rc = ls_peft_get_bool(p, root, "use_rslora", &p->cfg->use_rslora)) ||
	    (rc = ls_peft_get_bool(p, root, "use_dora", &p->cfg->use_dora)) ||
	    (rc = ls_peft_get_bool(p, root, "fan_in_fan_out", &p->cfg->fan_in_fan_out)) ||
	    (rc = ls_peft_get_string(p, root, "task_type", &p->cfg->task_type)) ||
	    (rc = ls_peft_get_string(p, root, "base_model_name_or_path", &p->cfg->base_model)) ||
	    (rc = ls_peft_get_targets(p, root)))
		return rc;

	const cJSON *v = ls_peft_member(root, "modules_to_save");
	if (v && cJSON_IsArray(v)) {
		rc = ls_peft_get_list(p, "modules_to_save", v, &p->cfg->modules_to_save,
				      &p->cfg->n_modules_to_save);
		if (rc)
			return rc;
	} else if (v && !cJSON_IsNull(v)) {
		char got[96];
		ls_peft_describe(v, got, sizeof(got));
		return ls_err_set(p->err, LS_E_CONFIG_INVALID,
				  "%s: \"modules_to_save\" must be a list of module names or null, "
				  "got %s",
				  p->what, got);
	}

	rc = ls_peft_get_patterns(p, root, "rank_pattern", true, &p->cfg->rank_pattern,
				  &p->cfg->n_rank_pattern, &p->priv->rank);
	if (rc)
		return rc;
	return ls_peft_get_patterns(p, root, "alpha_pattern", false, &p->cfg->alpha_pattern,
				    &p->cfg->n_alpha_pattern, &p->priv->alpha);
}

/* JSON allows only these four between and after values. */
static bool ls_peft_json_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int ls_peft_config_parse(const char *json, size_t len, const char *what,
			 struct ls_peft_config *out, struct ls_err *err)
{
	if (!what)
		what = "adapter_config.json";
	memset(out, 0, sizeof(*out));
	ls_err_clear(err);
	if (!json && len)
		return ls_err_set(err, -EINVAL, "%s: no text to parse", what);
	if (!json)
		json = "";

	/*
	 * cJSON's own "require NUL" check looks for a NUL inside len, which a
	 * file does not have; trailing data is therefore checked here.
	 */
	const char *end = NULL;
	cJSON *root = ls_json_parse(json, len, &end);
	if (!root) {
		size_t at = end && end >= json ? (size_t)(end - json) : 0;
		return ls_err_set(err, LS_E_CONFIG_INVALID,
				  "%s: the file is not valid JSON (error near byte %zu of %zu)", what,
				  at, len);
	}
	size_t at = end && end >= json && end <= json + len ? (size_t)(end - json) : len;
	while (at < len && ls_peft_json_space(json[at]))
		at++;
	if (at < len) {
		cJSON_Delete(root);
		return ls_err_set(err, LS_E_CONFIG_INVALID,
				  "%s: the file is not valid JSON (unexpected data after the "
				  "top-level value at byte %zu)",
				  what, at);
	}
	if (!cJSON_IsObject(root)) {
		char got[96];
		ls_peft_describe(root, got, sizeof(got));
		cJSON_Delete(root);
		return ls_err_set(err, LS_E_CONFIG_INVALID,
				  "%s: the top level must be a JSON object, got %s", what, got);
	}

	struct ls_peft_config cfg = {0};
	struct ls_peft_priv *priv = calloc(1, sizeof(*priv));
	struct ls_peft_parse p = {.what = what, .err = err, .cfg = &cfg, .priv = priv};
	int rc;
	if (!priv) {
		rc = ls_peft_nomem(&p);
		goto out;
	}
	cfg.priv = priv;
	cfg.r = 8;
	cfg.lora_alpha = 8.0;

	priv->mctx = pcre2_match_context_create(NULL);
	if (!priv->mctx) {
		rc = ls_peft_nomem(&p);
		goto out;
	}
	pcre2_set_match_limit(priv->mctx, LS_PEFT_MATCH_LIMIT);
	pcre2_set_heap_limit(priv->mctx, LS_PEFT_HEAP_LIMIT_KIB);

	rc = ls_peft_get_all(&p, root);
out:
	cJSON_Delete(root);
	if (rc) {
		ls_peft_config_free(&cfg);
		return rc;
	}
	*out = cfg;
	return 0;
}

int ls_peft_config_read_fd(int fd, const char *what, struct ls_peft_config *out,
			   struct ls_err *err)
{
	if (!what)
		what = "adapter_config.json";
	memset(out, 0, sizeof(*out));
	ls_err_clear(err);

	/* A pipe or socket would hold the reader until its writer lets go. */
	const char *kind = NULL;
	int rrc = ls_fd_check_regular(fd, &kind);
	if (rrc == -EINVAL)
		return ls_err_set(err, -EINVAL, "%s: %s, not a regular file", what, kind);
	struct stat st;
	if (rrc || fstat(fd, &st) < 0) {
		int e = rrc ? -rrc : errno;
		return ls_err_set(err, -e, "%s: cannot stat the file: %s", what, strerror(e));
	}
	if ((uint64_t)st.st_size > LS_PEFT_FILE_MAX)
		return ls_err_set(err, LS_E_CONFIG_INVALID,
				  "%s: the file has %lld bytes, more than the 1 MiB a PEFT config "
				  "may have",
				  what, (long long)st.st_size);

	/* One byte past the expected size, so that a file that grew is noticed. */
	size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
	size_t len = 0;
	char *buf = malloc(cap);
	if (!buf)
		return ls_err_set(err, -ENOMEM, "%s: out of memory while reading the file", what);

	for (;;) {
		if (len == cap) {
			if (cap > LS_PEFT_FILE_MAX) {
				free(buf);
				return ls_err_set(err, LS_E_CONFIG_INVALID,
						  "%s: the file is larger than the 1 MiB a PEFT "
						  "config may have",
						  what);
			}
			size_t ncap = cap * 2 > LS_PEFT_FILE_MAX + 1 ? LS_PEFT_FILE_MAX + 1 : cap * 2;
			char *nbuf = realloc(buf, ncap);
			if (!nbuf) {
				free(buf);
				return ls_err_set(err, -ENOMEM,
						  "%s: out of memory while reading the file", what);
			}
			buf = nbuf;
			cap = ncap;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			free(buf);
			return ls_err_set(err, -e, "%s: cannot read the file: %s", what,
					  strerror(e));
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}

	int rc = ls_peft_config_parse(buf, len, what, out, err);
	free(buf);
	return rc;
}

static void ls_peft_free_strings(char **list, size_t n)
{
	if (!list)
		return;
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

static void ls_peft_free_patterns(struct ls_peft_pattern *pats, pcre2_code **codes, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (pats)
			free(pats[i].pattern);
		if (codes)
			pcre2_code_free(codes[i]);
	}
	free(pats);
	free(codes);
}

void ls_peft_config_free(struct ls_peft_config *cfg)
{
	if (!cfg)
		return;
	struct ls_peft_priv *priv = cfg->priv;
	free(cfg->peft_type);
	free(cfg->task_type);
	free(cfg->bias);
	free(cfg->base_model);
	ls_peft_free_strings(cfg->target_modules, cfg->n_target_modules);
	free(cfg->target_regex);
	ls_peft_free_strings(cfg->modules_to_save, cfg->n_modules_to_save);
	/*
	 * The code arrays are as long as the pattern arrays were allocated, and
	 * entries past n are NULL (calloc), so freeing up to n covers them.
	 */
	ls_peft_free_patterns(cfg->rank_pattern, priv ? priv->rank : NULL, cfg->n_rank_pattern);
	ls_peft_free_patterns(cfg->alpha_pattern, priv ? priv->alpha : NULL,
			      cfg->n_alpha_pattern);
	if (priv) {
		pcre2_code_free(priv->target);
		pcre2_match_context_free(priv->mctx);
		free(priv);
	}
	memset(cfg, 0, sizeof(*cfg));
}

/* Whether code matches subject; a match over the limits counts as no match. */
static bool ls_peft_match(const struct ls_peft_priv *priv, const pcre2_code *code,
			  const char *subject)
{
	/* One pair of offsets: only "did it match" matters, and rc 0 still means yes. */
	pcre2_match_data *md = pcre2_match_data_create(1, NULL);
	if (!md)
		return false;
	int rc = pcre2_match(code, (PCRE2_SPTR)subject, strlen(subject), 0, 0, md, priv->mctx);
	pcre2_match_data_free(md);
	return rc >= 0;
}

/*
 * PEFT's get_pattern_key: the first pattern whose regex matches, else the
 * module's own name looked up as a key (which only differs when a name is
 * not matched by itself as a regex).
 */
static const struct ls_peft_pattern *ls_peft_find(const struct ls_peft_config *cfg,
						  const struct ls_peft_pattern *pats,
						  pcre2_code *const *codes, size_t n,
						  const char *module)
{
	const struct ls_peft_priv *priv = cfg->priv;
	if (!module || !priv || !codes)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (codes[i] && ls_peft_match(priv, codes[i], module))
			return &pats[i];
	for (size_t i = 0; i < n; i++)
		if (strcmp(pats[i].pattern, module) == 0)
			return &pats[i];
	return NULL;
}

int ls_peft_rank_for(const struct ls_peft_config *cfg, const char *module)
{
	const struct ls_peft_priv *priv = cfg->priv;
	const struct ls_peft_pattern *hit =
		ls_peft_find(cfg, cfg->rank_pattern, priv ? priv->rank : NULL,
			     cfg->n_rank_pattern, module);
	return hit ? (int)hit->value : cfg->r;
}

double ls_peft_alpha_for(const struct ls_peft_config *cfg, const char *module)
{
	const struct ls_peft_priv *priv = cfg->priv;
	const struct ls_peft_pattern *hit =
		ls_peft_find(cfg, cfg->alpha_pattern, priv ? priv->alpha : NULL,
			     cfg->n_alpha_pattern, module);
	return hit ? hit->value : cfg->lora_alpha;
}

double ls_peft_scale_for(const struct ls_peft_config *cfg, const char *module)
{
	int r = ls_peft_rank_for(cfg, module);
	double alpha = ls_peft_alpha_for(cfg, module);
	/* Only a config that was never parsed has r < 1. */
	return ls_lora_scale(alpha, r, cfg->use_rslora);
}

double ls_lora_scale(double alpha, int64_t r, bool use_rslora)
{
	if (r < 1)
		return 0.0;
	return use_rslora ? alpha / sqrt((double)r) : alpha / (double)r;
}

bool ls_peft_targets(const struct ls_peft_config *cfg, const char *module)
{
	const struct ls_peft_priv *priv = cfg->priv;
	if (!module)
		return false;
	if (priv && priv->all_linear)
		return true;
	if (cfg->target_regex)
		return priv && priv->target && ls_peft_match(priv, priv->target, module);
	if (!cfg->target_modules)
		return true;
	size_t mlen = strlen(module);
	for (size_t i = 0; i < cfg->n_target_modules; i++) {
		const char *t = cfg->target_modules[i];
		size_t tlen = strlen(t);
		if (tlen == mlen && memcmp(t, module, mlen) == 0)
			return true;
		if (mlen > tlen && module[mlen - tlen - 1] == '.' &&
		    memcmp(module + mlen - tlen, t, tlen) == 0)
			return true;
	}
	return false;
}
