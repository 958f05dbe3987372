/*
 * safetensors header reader, as strict as the Hugging Face reference.
 *
 * The reference deserialises the header with serde_json into
 * {"__metadata__": Option<map of strings>, <name>: TensorInfo...} and then
 * checks the sorted byte ranges.  cJSON is more lenient than serde_json in a
 * few places (it skips a UTF-8 byte order mark, treats every byte <= 32 as
 * whitespace, does not check UTF-8, and keeps duplicate keys), so those are
 * checked here before or after parsing.
 *
 * Like serde's derived Deserialize for TensorInfo (which has no
 * deny_unknown_fields), unknown keys inside a tensor entry are ignored, but a
 * key given twice is an error.
 */
#include "safetensors.h"
#include "json.h"
#include "ls_file.h"
#include "st_strict.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

/* Largest integer a double holds exactly: cJSON keeps numbers as doubles. */
#define ST_EXACT_MAX 9007199254740992.0 /* 2^53 */

/* Longest tensor name quoted in full in a message; longer ones are cut. */
#define ST_NAME_QUOTE 120

/* What one parse works on, so that helpers can report with context. */
struct st_ctx {
	const char *what;        /* file name or label for messages */
	uint64_t data_len;       /* bytes in the data section */
	struct ls_err *err;
};

static int st_fail(struct st_ctx *c, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefix every message with the file it is about. */
static int st_fail(struct st_ctx *c, int code, const char *fmt, ...)
{
	char reason[LS_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	return ls_err_set(c->err, code, "%s: %s", c->what, reason);
}

/*
 * Strict UTF-8 as Rust's str::from_utf8 checks it: no overlong forms, no
 * surrogates, nothing above U+10FFFF.  Returns the offset of the first bad
 * byte, or len when all is well.
 */
static size_t st_utf8_check(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned char b = s[i];
		if (b < 0x80) {
			i++;
			continue;
		}
		size_t need;
		unsigned char lo = 0x80, hi = 0xbf;
		if (b >= 0xc2 && b <= 0xdf) {
			need = 1;
		} else if (b >= 0xe0 && b <= 0xef) {
			need = 2;
			if (b == 0xe0)
				lo = 0xa0; /* overlong */
			else if (b == 0xed)
				hi = 0x9f; /* surrogates */
		} else if (b >= 0xf0 && b <= 0xf4) {
			need = 3;
			if (b == 0xf0)
				lo = 0x90; /* overlong */
			else if (b == 0xf4)
				hi = 0x8f; /* above U+10FFFF */
		} else {
			return i;
		}
		if (len - i - 1 < need)
			return i;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return i;
		for (size_t k = 2; k <= need; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return i;
		i += need + 1;
	}
	return len;
}

static bool st_json_space(unsigned char b)
{
	return b == ' ' || b == '\t' || b == '\n' || b == '\r';
}

/*
 * Parse the header text into a cJSON tree.  text[len] must be a NUL byte (the
 * callers own such a copy), so that cJSON never reads past the header.
 */
static int st_parse_json(struct st_ctx *c, const char *text, size_t len, cJSON **out)
{
	const unsigned char *u = (const unsigned char *)text;
	*out = NULL;

	/*
	 * Raw control bytes are never valid JSON (inside strings they must be
	 * escaped), but cJSON would skip them as whitespace.
	 */
	for (size_t i = 0; i < len; i++) {
		if (u[i] < 0x20 && !st_json_space(u[i]))
			return st_fail(c, LS_E_HEADER_JSON,
				       "the header holds control byte 0x%02x at offset %zu, "
				       "which is not valid JSON",
				       u[i], i);
	}
	size_t bad = st_utf8_check(u, len);
	if (bad != len)
		return st_fail(c, LS_E_HEADER_JSON,
			       "the header is not valid UTF-8 (bad byte 0x%02x at offset %zu)",
			       u[bad], bad);
	/* cJSON silently skips a byte order mark; serde_json rejects it. */
	if (len >= 3 && u[0] == 0xef && u[1] == 0xbb && u[2] == 0xbf)
		return st_fail(c, LS_E_HEADER_JSON,
			       "the header starts with a UTF-8 byte order mark, "
			       "which is not valid JSON");
	/* What cJSON would take and the reference refuses (st_strict.h). */
	char reason[LS_ERR_MSG_MAX];
	int rc = ls_st_strict_check(text, len, reason, sizeof(reason));
	if (rc)
		return st_fail(c, rc, "%s", reason);

	const char *end = NULL;
	cJSON *root = ls_json_parse(text, len, &end);
	if (!root) {
		size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
		return st_fail(c, LS_E_HEADER_JSON,
			       "the header is not valid JSON (parsing failed near byte %zu of %zu)",
			       at, len);
	}
	/*
	 * Only whitespace may follow the value.  cJSON's own check for this
	 * wants a NUL inside the given length, so it is done here instead.
	 */
	size_t pos = end ? (size_t)(end - text) : len;
	while (pos < len && st_json_space(u[pos]))
		pos++;
	if (pos < len) {
		cJSON_Delete(root);
		return st_fail(c, LS_E_HEADER_JSON,
			       "the header has trailing bytes after the JSON value, "
			       "starting at byte %zu of %zu",
			       pos, len);
	}
	*out = root;
	return 0;
}

/* A JSON number that is an integer in [0, 2^53], as serde reads a usize. */
static bool st_json_uint(const cJSON *v, uint64_t *out)
{
	if (!cJSON_IsNumber(v))
		return false;
	double d = v->valuedouble;
	if (!(d >= 0.0) || d > ST_EXACT_MAX)
		return false;
	uint64_t u = (uint64_t)d;
	if ((double)u != d)
		return false; /* not an integer */
	*out = u;
	return true;
}

/* Write a shape as "[4, 8]" into buf. */
static void st_shape_text(const struct ls_st_tensor *t, char *buf, size_t size)
{
	size_t used = 0;
	int n = snprintf(buf, size, "[");
	used = n > 0 ? (size_t)n : 0;
	for (unsigned i = 0; i < t->ndim && used < size; i++) {
		n = snprintf(buf + used, size - used, "%s%" PRIu64, i ? ", " : "", t->shape[i]);
		if (n < 0)
			return;
		used += (size_t)n;
	}
	if (used < size)
		snprintf(buf + used, size - used, "]");
}

/* Count the children of a cJSON object or array. */
static size_t st_count(const cJSON *v)
{
	size_t n = 0;
	for (const cJSON *ch = v ? v->child : NULL; ch; ch = ch->next)
		n++;
	return n;
}

static const cJSON *st_field(struct st_ctx *c, const cJSON *entry, const char *name,
			     const char *key, int *rc)
{
	const cJSON *found = NULL;
	for (const cJSON *ch = entry->child; ch; ch = ch->next) {
		if (!ch->string || strcmp(ch->string, key) != 0)
			continue;
		if (found) {
			*rc = st_fail(c, LS_E_HEADER_SCHEMA,
				      "tensor '%.*s' gives the field \"%s\" more than once",
				      ST_NAME_QUOTE, name, key);
			return NULL;
		}
		found = ch;
	}
	if (!found)
		*rc = st_fail(c, LS_E_HEADER_SCHEMA, "tensor '%.*s' has no \"%s\" field",
			      ST_NAME_QUOTE, name, key);
	return found;
}

/*
 * The dtypes safetensors defines that lorastore does not take: sub-byte and
 * exotic floats, and complex numbers.  They are refused as unsupported, not
 * as unknown.
 */
static bool st_dtype_unsupported(const char *name)
{
	static const char *const names[] = {"F4",	   "F6_E2M3",	  "F6_E3M2", "F8_E8M0",
					    "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

/* Read one tensor entry into t (name already set). */
static int st_parse_tensor(struct st_ctx *c, const cJSON *entry, struct ls_st_tensor *t)
{
	const char *name = t->name;
	int rc = 0;

	if (!cJSON_IsObject(entry))
		return st_fail(c, LS_E_HEADER_SCHEMA,
			       "tensor '%.*s' is not a JSON object with dtype, shape and "
			       "data_offsets",
			       ST_NAME_QUOTE, name);

	const cJSON *dtype = st_field(c, entry, name, "dtype", &rc);
	if (!dtype)
		return rc;
	const cJSON *shape = st_field(c, entry, name, "shape", &rc);
	if (!shape)
		return rc;
	const cJSON *offs = st_field(c, entry, name, "data_offsets", &rc);
	if (!offs)
		return rc;

	if (!cJSON_IsString(dtype) || !dtype->valuestring)
		return st_fail(c, LS_E_HEADER_SCHEMA, "tensor '%.*s' has a dtype that is not a string",
			       ST_NAME_QUOTE, name);
	t->dtype = ls_dtype_from_name(dtype->valuestring);
	if (t->dtype == LS_DTYPE_INVALID && st_dtype_unsupported(dtype->valuestring))
		return st_fail(c, LS_E_DTYPE_UNSUPPORTED,
			       "tensor '%.*s' has dtype %s: an unsupported dtype (safetensors "
			       "defines it; lorastore does not take it)",
			       ST_NAME_QUOTE, name, dtype->valuestring);
	if (t->dtype == LS_DTYPE_INVALID)
		return st_fail(c, LS_E_DTYPE_UNKNOWN,
			       "tensor '%.*s' has dtype \"%.32s\", which safetensors does not define",
			       ST_NAME_QUOTE, name, dtype->valuestring);

	if (!cJSON_IsArray(shape))
		return st_fail(c, LS_E_HEADER_SCHEMA, "tensor '%.*s' has a shape that is not an array",
			       ST_NAME_QUOTE, name);
	size_t ndim = st_count(shape);
	if (ndim > LS_ST_MAX_DIMS)
		return st_fail(c, LS_E_HEADER_SCHEMA,
			       "tensor '%.*s' has %zu dimensions, more than the %d supported",
			       ST_NAME_QUOTE, name, ndim, LS_ST_MAX_DIMS);
	t->ndim = (unsigned)ndim;
	unsigned i = 0;
	for (const cJSON *d = shape->child; d; d = d->next, i++) {
		if (!st_json_uint(d, &t->shape[i]))
			return st_fail(c, LS_E_HEADER_SCHEMA,
				       "tensor '%.*s' has shape dimension %u that is not a "
				       "non-negative integer up to 2^53",
				       ST_NAME_QUOTE, name, i);
	}

	if (!cJSON_IsArray(offs) || st_count(offs) != 2 ||
	    !st_json_uint(offs->child, &t->begin) || !st_json_uint(offs->child->next, &t->end))
		return st_fail(c, LS_E_HEADER_SCHEMA,
			       "tensor '%.*s' has data_offsets that are not two non-negative "
			       "integers up to 2^53",
			       ST_NAME_QUOTE, name);
	if (t->begin > t->end)
		return st_fail(c, LS_E_HEADER_SCHEMA,
			       "tensor '%.*s' has data_offsets [%" PRIu64 ", %" PRIu64
			       "] that end before they begin",
			       ST_NAME_QUOTE, name, t->begin, t->end);

	/*
	 * Multiply in order with overflow checks, as the reference does: an
	 * overflow is an error even when a later dimension is 0.
	 */
	char shape_text[200];
	uint64_t nbytes = 1;
	bool overflow = false;
	for (i = 0; i < t->ndim && !overflow; i++)
		overflow = __builtin_mul_overflow(nbytes, t->shape[i], &nbytes);
	if (!overflow)
		overflow = __builtin_mul_overflow(nbytes, (uint64_t)ls_dtype_size(t->dtype), &nbytes);
	if (overflow) {
		st_shape_text(t, shape_text, sizeof(shape_text));
		return st_fail(c, LS_E_SHAPE_SIZE,
			       "tensor '%.*s': shape %s of %s needs more bytes than 2^64",
			       ST_NAME_QUOTE, name, shape_text, ls_dtype_name(t->dtype));
	}
	if (nbytes != t->end - t->begin) {
		st_shape_text(t, shape_text, sizeof(shape_text));
		return st_fail(c, LS_E_SHAPE_SIZE,
			       "tensor '%.*s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
			       " bytes but shape %s of %s needs %" PRIu64,
			       ST_NAME_QUOTE, name, t->begin, t->end, t->end - t->begin, shape_text,
			       ls_dtype_name(t->dtype), nbytes);
	}
	if (t->end > c->data_len)
		return st_fail(c, LS_E_OFFSET_BOUNDS,
			       "tensor '%.*s': data_offsets [%" PRIu64 ", %" PRIu64
			       "] run past the end of the %" PRIu64 "-byte data section",
			       ST_NAME_QUOTE, name, t->begin, t->end, c->data_len);
	return 0;
}

static int st_cmp_meta_key(const void *a, const void *b)
{
	const struct ls_st_meta *x = *(const struct ls_st_meta *const *)a;
	const struct ls_st_meta *y = *(const struct ls_st_meta *const *)b;
	return strcmp(x->key, y->key);
}

/*
 * A key given twice is refused.  Sorted, not compared pairwise: a header of
 * millions of keys (it may have 100 MB) is checked in n log n.
 */
static int st_check_meta_duplicates(struct st_ctx *c, struct ls_st_file *f)
{
	if (f->n_meta < 2)
		return 0;
	const struct ls_st_meta **v = malloc(f->n_meta * sizeof(*v));
	if (!v)
		return st_fail(c, -ENOMEM, "out of memory checking %zu metadata keys", f->n_meta);
	for (size_t i = 0; i < f->n_meta; i++)
		v[i] = &f->meta[i];
	qsort(v, f->n_meta, sizeof(*v), st_cmp_meta_key);
	int rc = 0;
	for (size_t i = 1; i < f->n_meta && !rc; i++)
		if (strcmp(v[i - 1]->key, v[i]->key) == 0)
			rc = st_fail(c, LS_E_HEADER_SCHEMA,
				     "\"__metadata__\" gives the key \"%.*s\" more than once",
				     ST_NAME_QUOTE, v[i]->key);
	free(v);
	return rc;
}

static int st_parse_metadata(struct st_ctx *c, const cJSON *m, struct ls_st_file *f)
{
	if (!cJSON_IsObject(m))
		return st_fail(c, LS_E_HEADER_SCHEMA,
			       "\"__metadata__\" is not a JSON object of strings");
	size_t n = st_count(m);
	if (n == 0)
		return 0;
	f->meta = calloc(n, sizeof(*f->meta));
	if (!f->meta)
		return st_fail(c, -ENOMEM, "out of memory for %zu metadata entries", n);
	for (const cJSON *kv = m->child; kv; kv = kv->next) {
		if (!cJSON_IsString(kv) || !kv->valuestring || !kv->string)
			return st_fail(c, LS_E_HEADER_SCHEMA,
				       "\"__metadata__\" entry \"%.*s\" is not a string",
				       ST_NAME_QUOTE, kv->string ? kv->string : "");
		struct ls_st_meta *e = &f->meta[f->n_meta];
		e->key = strdup(kv->string);
		e->value = strdup(kv->valuestring);
		if (!e->key || !e->value) {
			free(e->key);
			free(e->value);
			e->key = e->value = NULL;
			return st_fail(c, -ENOMEM, "out of memory copying metadata");
		}
		f->n_meta++;
	}
	return st_check_meta_duplicates(c, f);
}

static int st_cmp_name(const void *a, const void *b)
{
	const struct ls_st_tensor *x = *(const struct ls_st_tensor *const *)a;
	const struct ls_st_tensor *y = *(const struct ls_st_tensor *const *)b;
	return strcmp(x->name, y->name);
}

/* Sort by (begin, end), then by name so that equal ranges sort the same way. */
static int st_cmp_range(const void *a, const void *b)
{
	const struct ls_st_tensor *x = a, *y = b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int st_check_duplicates(struct st_ctx *c, struct ls_st_file *f)
{
	if (f->n_tensors < 2)
		return 0;
	const struct ls_st_tensor **v = malloc(f->n_tensors * sizeof(*v));
	if (!v)
		return st_fail(c, -ENOMEM, "out of memory checking %zu tensor names", f->n_tensors);
	for (size_t i = 0; i < f->n_tensors; i++)
		v[i] = &f->tensors[i];
	qsort(v, f->n_tensors, sizeof(*v), st_cmp_name);
	int rc = 0;
	for (size_t i = 1; i < f->n_tensors; i++) {
		if (strcmp(v[i - 1]->name, v[i]->name) == 0) {
			rc = st_fail(c, LS_E_HEADER_SCHEMA, "tensor '%.*s' appears more than once",
				     ST_NAME_QUOTE, v[i]->name);
			break;
		}
	}
	free(v);
	return rc;
}

static int st_check_layout(struct st_ctx *c, struct ls_st_file *f)
{
	if (f->n_tensors == 0) {
		if (c->data_len != 0)
			return st_fail(c, LS_E_OFFSET_GAP,
				       "the header has no tensors but the data section holds %" PRIu64
				       " bytes",
				       c->data_len);
		return 0;
	}
	qsort(f->tensors, f->n_tensors, sizeof(*f->tensors), st_cmp_range);
	const struct ls_st_tensor *t = &f->tensors[0];
	if (t->begin != 0)
		return st_fail(c, LS_E_OFFSET_GAP,
			       "tensor '%.*s' starts at byte %" PRIu64
			       " of the data section, leaving bytes [0, %" PRIu64 ") unused",
			       ST_NAME_QUOTE, t->name, t->begin, t->begin);
	for (size_t i = 1; i < f->n_tensors; i++) {
		const struct ls_st_tensor *p = &f->tensors[i - 1];
		t = &f->tensors[i];
		if (t->begin < p->end)
			return st_fail(c, LS_E_OFFSET_OVERLAP,
				       "tensor '%.*s' at data_offsets [%" PRIu64 ", %" PRIu64
				       "] overlaps tensor '%.*s' at [%" PRIu64 ", %" PRIu64 "]",
				       ST_NAME_QUOTE, t->name, t->begin, t->end, ST_NAME_QUOTE,
				       p->name, p->begin, p->end);
		if (t->begin > p->end)
			return st_fail(c, LS_E_OFFSET_GAP,
				       "tensor '%.*s' starts at byte %" PRIu64 " but tensor '%.*s' "
				       "ends at byte %" PRIu64 ", leaving a gap",
				       ST_NAME_QUOTE, t->name, t->begin, ST_NAME_QUOTE, p->name,
				       p->end);
	}
	t = &f->tensors[f->n_tensors - 1];
	if (t->end != c->data_len)
		return st_fail(c, LS_E_OFFSET_GAP,
			       "the last tensor '%.*s' ends at byte %" PRIu64 " but the data "
			       "section holds %" PRIu64 " bytes, so its end is not covered",
			       ST_NAME_QUOTE, t->name, t->end, c->data_len);
	return 0;
}

static int st_from_json(struct st_ctx *c, const cJSON *root, struct ls_st_file *f)
{
	if (!cJSON_IsObject(root))
		return st_fail(c, LS_E_HEADER_SCHEMA, "the header is not a JSON object");

	size_t n = 0;
	const cJSON *meta = NULL;
	for (const cJSON *e = root->child; e; e = e->next) {
		if (e->string && strcmp(e->string, "__metadata__") == 0) {
			if (meta)
				return st_fail(c, LS_E_HEADER_SCHEMA,
					       "the header gives \"__metadata__\" more than once");
			meta = e;
		} else {
			n++;
		}
	}
	if (meta) {
		int rc = st_parse_metadata(c, meta, f);
		if (rc)
			return rc;
	}
	if (n > 0) {
		f->tensors = calloc(n, sizeof(*f->tensors));
		if (!f->tensors)
			return st_fail(c, -ENOMEM, "out of memory for %zu tensors", n);
	}
	for (const cJSON *e = root->child; e; e = e->next) {
		if (e == meta)
			continue;
		struct ls_st_tensor *t = &f->tensors[f->n_tensors];
		t->name = strdup(e->string ? e->string : "");
		if (!t->name)
			return st_fail(c, -ENOMEM, "out of memory copying tensor names");
		f->n_tensors++;
		int rc = st_parse_tensor(c, e, t);
		if (rc)
			return rc;
	}
	int rc = st_check_duplicates(c, f);
	if (rc)
		return rc;
	return st_check_layout(c, f);
}

/* Parse a header held in a NUL-terminated buffer text[0..len]. */
static int st_parse_text(const char *text, size_t len, uint64_t data_len, const char *what,
			 struct ls_st_file *out, struct ls_err *err)
{
	struct st_ctx c = {.what = what ? what : "safetensors header", .data_len = data_len,
			   .err = err};
	cJSON *root = NULL;
	int rc = st_parse_json(&c, text, len, &root);
	if (rc)
		return rc;
	rc = st_from_json(&c, root, out);
	cJSON_Delete(root);
	if (rc)
		ls_st_file_free(out);
	return rc;
}

/* Parse json[0..len] (not NUL terminated) via a terminated copy. */
static int st_parse_copy(const char *json, size_t len, uint64_t data_len, const char *what,
			 struct ls_st_file *out, struct ls_err *err)
{
	char *text = malloc(len + 1);
	if (!text)
		return ls_err_set(err, -ENOMEM, "%s: out of memory for a %zu-byte header",
				  what ? what : "safetensors header", len);
	if (len)
		memcpy(text, json, len);
	text[len] = '\0';
	int rc = st_parse_text(text, len, data_len, what, out, err);
	free(text);
	return rc;
}

int ls_st_parse_header(const char *json, size_t json_len, uint64_t data_len,
		       struct ls_st_file *out, struct ls_err *err)
{
	memset(out, 0, sizeof(*out));
	ls_err_clear(err);
	int rc = st_parse_copy(json, json_len, data_len, NULL, out, err);
	if (rc == 0) {
		out->header_len = json_len;
		out->data_offset = 8 + (uint64_t)json_len;
		out->data_len = data_len;
	}
	return rc;
}

static uint64_t st_le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/*
 * Check the 8-byte length against the cap and the file size.  Done before
 * any allocation so that a hostile length cannot make us allocate.
 */
static int st_check_length(const char *what, uint64_t n, uint64_t file_len, struct ls_err *err)
{
	if (n > LS_ST_HEADER_MAX)
		return ls_err_set(err, LS_E_HEADER_TOO_LARGE,
				  "%s: the header length field says %" PRIu64
				  " bytes, more than the limit of %llu",
				  what, n, LS_ST_HEADER_MAX);
	if (n > file_len - 8)
		return ls_err_set(err, LS_E_HEADER_BOUNDS,
				  "%s: the header length field says %" PRIu64
				  " bytes but only %" PRIu64 " bytes follow it",
				  what, n, file_len - 8);
	return 0;
}

int ls_st_parse_buffer(const void *buf, size_t len, const char *what, struct ls_st_file *out,
		       struct ls_err *err)
{
	memset(out, 0, sizeof(*out));
	ls_err_clear(err);
	if (!what)
		what = "safetensors file";
	if (len < 8)
		return ls_err_set(err, LS_E_TRUNCATED,
				  "%s: the file is %zu bytes, shorter than the 8-byte header "
				  "length field",
				  what, len);
	const unsigned char *b = buf;
	uint64_t n = st_le64(b);
	int rc = st_check_length(what, n, len, err);
	if (rc)
		return rc;
	uint64_t data_len = (uint64_t)len - 8 - n;
	rc = st_parse_copy((const char *)b + 8, (size_t)n, data_len, what, out, err);
	if (rc == 0) {
		out->header_len = n;
		out->data_offset = 8 + n;
		out->data_len = data_len;
	}
	return rc;
}

/* Read exactly len bytes at off; retries on EINTR and short reads. */
static int st_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *what,
			 struct ls_err *err)
{
	unsigned char *p = buf;
	size_t done = 0;
	while (done < len) {
		ssize_t r = pread(fd, p + done, len - done, (off_t)(off + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			return ls_err_set(err, -e, "%s: reading %zu bytes at offset %" PRIu64
					  " failed: %s", what, len - done, off + done, strerror(e));
		}
		if (r == 0)
			return ls_err_set(err, LS_E_TRUNCATED,
					  "%s: the file ended at byte %" PRIu64
					  " while reading its header (it shrank while being read)",
					  what, off + done);
		done += (size_t)r;
	}
	return 0;
}

int ls_st_read_fd(int fd, const char *what, struct ls_st_file *out, struct ls_err *err)
{
	memset(out, 0, sizeof(*out));
	ls_err_clear(err);
	if (!what)
		what = "safetensors file";
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		return ls_err_set(err, -e, "%s: fstat failed: %s", what, strerror(e));
	}
	const char *kind = NULL;
	if (ls_fd_check_regular(fd, &kind) == -EINVAL)
		return ls_err_set(err, -EINVAL, "%s: %s, not a regular file", what, kind);
	uint64_t file_len = (uint64_t)st.st_size;
	if (file_len < 8)
		return ls_err_set(err, LS_E_TRUNCATED,
				  "%s: the file is %" PRIu64 " bytes, shorter than the 8-byte "
				  "header length field",
				  what, file_len);
	unsigned char lenbuf[8];
	int rc = st_pread_full(fd, lenbuf, sizeof(lenbuf), 0, what, err);
	if (rc)
		return rc;
	uint64_t n = st_le64(lenbuf);
	rc = st_check_length(what, n, file_len, err);
	if (rc)
		return rc;
	char *text = malloc((size_t)n + 1);
	if (!text)
		return ls_err_set(err, -ENOMEM, "%s: out of memory for a %" PRIu64 "-byte header",
				  what, n);
	rc = st_pread_full(fd, text, (size_t)n, 8, what, err);
	if (rc == 0) {
		text[n] = '\0';
		uint64_t data_len = file_len - 8 - n;
		rc = st_parse_text(text, (size_t)n, data_len, what, out, err);
		if (rc == 0) {
			out->header_len = n;
			out->data_offset = 8 + n;
			out->data_len = data_len;
		}
	}
	free(text);
	return rc;
}

void ls_st_file_free(struct ls_st_file *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->n_tensors; i++)
		free(f->tensors[i].name);
	free(f->tensors);
	for (size_t i = 0; i < f->n_meta; i++) {
		free(f->meta[i].key);
		free(f->meta[i].value);
	}
	free(f->meta);
	memset(f, 0, sizeof(*f));
}

uint64_t ls_st_tensor_numel(const struct ls_st_tensor *t)
{
	uint64_t n = 1;
	for (unsigned i = 0; i < t->ndim && i < LS_ST_MAX_DIMS; i++)
		n *= t->shape[i];
	return n;
}
