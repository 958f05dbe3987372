/* The strict pass over a safetensors header's JSON (st_strict.h). */
#include "st_strict.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ls_error.h"

/* Where a value sits, for the rules that depend on it. */
enum st_place {
	ST_TOP,          /* the header's object */
	ST_ENTRY,        /* a tensor's object (a key of the header other than __metadata__) */
	ST_META,         /* the __metadata__ object */
	ST_INTS,         /* the array of a tensor's shape or data_offsets */
	ST_OTHER,        /* anything else (metadata values, fields the reference ignores) */
};

struct st_lex {
	const unsigned char *s;
	size_t len, pos;
	unsigned depth;
	size_t values;   /* JSON values seen */
	char *msg;
	size_t cap;
	int code;        /* of the failure: LS_E_HEADER_JSON, or _SCHEMA for a bad shape number */
};

static int st_lex_fail(struct st_lex *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int st_lex_fail(struct st_lex *l, const char *fmt, ...)
{
	char reason[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (l->code != LS_E_HEADER_JSON)
		snprintf(l->msg, l->cap, "the header has %s (byte %zu)", reason, l->pos);
	else
		snprintf(l->msg, l->cap,
			 "the header is not valid JSON as safetensors reads it: %s at byte %zu",
			 reason, l->pos);
	return l->code;
}

static void st_lex_space(struct st_lex *l)
{
	while (l->pos < l->len) {
		unsigned char b = l->s[l->pos];
		if (b != ' ' && b != '\t' && b != '\n' && b != '\r')
			break;
		l->pos++;
	}
}

static int st_hex(unsigned char b)
{
	if (b >= '0' && b <= '9')
		return b - '0';
	if (b >= 'a' && b <= 'f')
		return b - 'a' + 10;
	if (b >= 'A' && b <= 'F')
		return b - 'A' + 10;
	return -1;
}

/* Four hex digits at pos (after "\u"): the code unit, or -1. */
static long st_lex_u16(struct st_lex *l)
{
	if (l->len - l->pos < 4)
		return -1;
	long v = 0;
	for (int i = 0; i < 4; i++) {
		int h = st_hex(l->s[l->pos + i]);
		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	l->pos += 4;
	return v;
}

/* Append code point cp to out as UTF-8 while it fits (keys are compared decoded). */
static void st_put_utf8(char *out, size_t cap, size_t *n, uint32_t cp)
{
	char b[4];
	size_t k;
	if (cp < 0x80) {
		b[0] = (char)cp;
		k = 1;
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | (cp >> 6));
		b[1] = (char)(0x80 | (cp & 0x3f));
		k = 2;
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | (cp >> 12));
		b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		k = 3;
	} else {
		b[0] = (char)(0xf0 | (cp >> 18));
		b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		b[3] = (char)(0x80 | (cp & 0x3f));
		k = 4;
	}
	if (out && *n + k < cap)
		memcpy(out + *n, b, k);
	*n += k;
}

/*
 * A string at pos (its opening quote).  Decoded into out (cap bytes, NUL
 * terminated; NULL when not needed); *n gets the decoded length, which may
 * pass cap.
 */
static int st_lex_string(struct st_lex *l, char *out, size_t cap, size_t *n)
{
	size_t start = l->pos;
	*n = 0;
	l->pos++; /* the quote */
	for (;;) {
		if (l->pos >= l->len) {
			l->pos = start;
			return st_lex_fail(l, "a string that does not end");
		}
		unsigned char b = l->s[l->pos];
		if (b == '"') {
			l->pos++;
			break;
		}
		if (b < 0x20)
			return st_lex_fail(l, "control character 0x%02x inside a string (it must be "
					      "escaped)",
					   b);
		if (b != '\\') {
			if (out && *n + 1 < cap)
				out[*n] = (char)b;
			(*n)++;
			l->pos++;
			continue;
		}
		size_t esc = l->pos;
		l->pos++;
		if (l->pos >= l->len) {
			l->pos = esc;
			return st_lex_fail(l, "an escape cut short");
		}
		unsigned char e = l->s[l->pos++];
		const char *simple = strchr("\"\\/bfnrt", e);
		if (e && simple) {
			static const char decoded[] = "\"\\/\b\f\n\r\t";
			st_put_utf8(out, cap, n, (unsigned char)decoded[simple - "\"\\/bfnrt"]);
			continue;
		}
		if (e != 'u') {
			l->pos = esc;
			return st_lex_fail(l, "the escape \\%c, which JSON does not have", e);
		}
		long u = st_lex_u16(l);
		if (u < 0) {
			l->pos = esc;
			return st_lex_fail(l, "a \\u escape without four hex digits");
		}
		uint32_t cp = (uint32_t)u;
		if (u >= 0xdc00 && u <= 0xdfff) {
			l->pos = esc;
			return st_lex_fail(l, "a \\u escape of a lone trailing surrogate");
		}
		if (u >= 0xd800 && u <= 0xdbff) {
			long lo = -1;
			if (l->len - l->pos >= 2 && l->s[l->pos] == '\\' && l->s[l->pos + 1] == 'u') {
				l->pos += 2;
				lo = st_lex_u16(l);
			}
			if (lo < 0xdc00 || lo > 0xdfff) {
				l->pos = esc;
				return st_lex_fail(l, "a \\u escape of a lone leading surrogate");
			}
			cp = 0x10000 + (((uint32_t)u - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
		}
		if (cp == 0) {
			l->pos = esc;
			return st_lex_fail(l, "\\u0000 inside a string (lorastore takes no NUL in a "
					      "name or value)");
		}
		st_put_utf8(out, cap, n, cp);
	}
	if (out && cap)
		out[*n < cap ? *n : cap - 1] = '\0';
	return 0;
}

static bool st_digit(unsigned char b)
{
	return b >= '0' && b <= '9';
}

/* A number at pos; in a shape or data_offsets it must be a plain non-negative integer. */
static int st_lex_number(struct st_lex *l, enum st_place place)
{
	size_t start = l->pos;
	const unsigned char *s = l->s;
	bool minus = false, frac = false, exp = false;
	if (s[l->pos] == '-') {
		minus = true;
		l->pos++;
	}
	if (l->pos >= l->len || !st_digit(s[l->pos]))
		return st_lex_fail(l, "a number without digits");
	if (s[l->pos] == '0') {
		l->pos++;
		if (l->pos < l->len && st_digit(s[l->pos]))
			return st_lex_fail(l, "a number with a leading zero");
	} else {
		while (l->pos < l->len && st_digit(s[l->pos]))
			l->pos++;
	}
	if (l->pos < l->len && s[l->pos] == '.') {
		frac = true;
		l->pos++;
		if (l->pos >= l->len || !st_digit(s[l->pos]))
			return st_lex_fail(l, "a number with no digit after its decimal point");
		while (l->pos < l->len && st_digit(s[l->pos]))
			l->pos++;
	}
	if (l->pos < l->len && (s[l->pos] == 'e' || s[l->pos] == 'E')) {
		exp = true;
		l->pos++;
		if (l->pos < l->len && (s[l->pos] == '+' || s[l->pos] == '-'))
			l->pos++;
		if (l->pos >= l->len || !st_digit(s[l->pos]))
			return st_lex_fail(l, "a number with no digit in its exponent");
		while (l->pos < l->len && st_digit(s[l->pos]))
			l->pos++;
	}
	if (place == ST_INTS && (minus || frac || exp)) {
		size_t end = l->pos;
		l->pos = start;
		l->code = LS_E_HEADER_SCHEMA;
		return st_lex_fail(l, "%.*s in a shape or data_offsets, where only a plain "
				      "non-negative integer may stand",
				   (int)(end - start > 40 ? 40 : end - start), (const char *)s + start);
	}
	if (frac || exp) {
		/* serde_json reads it as an f64 and refuses one out of range. */
		errno = 0;
		double v = strtod((const char *)s + start, NULL);
		if (isinf(v)) {
			size_t end = l->pos;
			l->pos = start;
			return st_lex_fail(l, "the number %.*s, out of the range of a double",
					   (int)(end - start > 40 ? 40 : end - start),
					   (const char *)s + start);
		}
	}
	return 0;
}

static int st_lex_value(struct st_lex *l, enum st_place place);

/* Into an array or object: 0, or 1 when it closes at once (empty), or an error. */
static int st_lex_enter(struct st_lex *l, char close)
{
	if (++l->depth > LS_ST_DEPTH_MAX)
		return st_lex_fail(l, "arrays and objects nested more than %d deep (the "
				      "reference's limit)",
				   LS_ST_DEPTH_MAX);
	l->pos++;
	st_lex_space(l);
	if (l->pos < l->len && l->s[l->pos] == close) {
		l->pos++;
		l->depth--;
		return 1;
	}
	return 0;
}

/* After a member or element: 1 when a ',' says more follow, 0 at the closing byte, or an error. */
static int st_lex_after(struct st_lex *l, char close, const char *what)
{
	st_lex_space(l);
	if (l->pos < l->len && l->s[l->pos] == ',') {
		l->pos++;
		st_lex_space(l);
		return 1;
	}
	if (l->pos < l->len && l->s[l->pos] == close) {
		l->pos++;
		l->depth--;
		return 0;
	}
	return st_lex_fail(l, "no ',' or '%c' after %s", close, what);
}

/* An object; place says what it is (the header, a tensor's entry, or other). */
static int st_lex_object(struct st_lex *l, enum st_place place)
{
	int rc = st_lex_enter(l, '}');
	if (rc)
		return rc < 0 ? rc : 0;
	size_t members = 0;
	for (;;) {
		if (l->pos >= l->len || l->s[l->pos] != '"')
			return st_lex_fail(l, "an object key that is not a string");

		char key[16];
		size_t n;
		rc = st_lex_string(l, key, sizeof(key), &n);
		if (rc)
			return rc;
		st_lex_space(l);
		if (l->pos >= l->len || l->s[l->pos] != ':')
			return st_lex_fail(l, "no ':' after an object key");
		l->pos++;
		st_lex_space(l);
		enum st_place child = ST_OTHER;
		bool meta = n == 12 && strcmp(key, "__metadata__") == 0;
		if (place == ST_TOP)
			child = meta ? ST_META : ST_ENTRY;
		/* Tensors are the header's keys but __metadata__. */
		if ((place == ST_TOP && !meta) || place == ST_META) {
			unsigned bound = place == ST_TOP ? LS_ST_TENSORS_MAX : LS_ST_META_MAX;
			if (++members > bound) {
				l->code = LS_E_ADAPTER_LIMIT;
				return st_lex_fail(l, place == ST_TOP ? "more than %u tensors"
								      : "more than %u __metadata__ entries",
						   bound);
			}
		} else if (place == ST_ENTRY && ((n == 5 && strcmp(key, "shape") == 0) ||
						 (n == 12 && strcmp(key, "data_offsets") == 0))) {
			child = ST_INTS;
		}
		rc = st_lex_value(l, child);
		if (rc == 0)
			rc = st_lex_after(l, '}', "an object member");
		if (rc <= 0)
			return rc;
	}
}

/* An array; in a shape or data_offsets its numbers must be plain integers. */
static int st_lex_array(struct st_lex *l, enum st_place place)
{
	int rc = st_lex_enter(l, ']');
	if (rc)
		return rc < 0 ? rc : 0;
	for (;;) {
		rc = st_lex_value(l, place == ST_INTS ? ST_INTS : ST_OTHER);
		if (rc == 0)
			rc = st_lex_after(l, ']', "an array element");
		if (rc <= 0)
			return rc;
	}
}

static int st_lex_literal(struct st_lex *l, const char *word)
{
	size_t n = strlen(word);
	if (l->len - l->pos < n || memcmp(l->s + l->pos, word, n) != 0)
		return st_lex_fail(l, "an unexpected byte 0x%02x", l->s[l->pos]);
	l->pos += n;
	return 0;
}

static int st_lex_value(struct st_lex *l, enum st_place place)
{
	if (l->pos >= l->len)
		return st_lex_fail(l, "the header ends where a value should be");
	if (++l->values > LS_ST_VALUES_MAX) {
		l->code = LS_E_ADAPTER_LIMIT;
		return st_lex_fail(l, "more than %u JSON values", LS_ST_VALUES_MAX);
	}
	unsigned char b = l->s[l->pos];
	size_t n;
	switch (b) {
	case '{':
		return st_lex_object(l, place == ST_INTS ? ST_OTHER : place);
	case '[':
		return st_lex_array(l, place == ST_INTS ? ST_INTS : ST_OTHER);
	case '"':
		return st_lex_string(l, NULL, 0, &n);
	case 't':
		return st_lex_literal(l, "true");
	case 'f':
		return st_lex_literal(l, "false");
	case 'n':
		return st_lex_literal(l, "null");
	default:
		if (b == '-' || st_digit(b))
			return st_lex_number(l, place);
		return st_lex_fail(l, "an unexpected byte 0x%02x", b);
	}
}

int ls_st_strict_check(const char *text, size_t len, char *msg, size_t cap)
{
	struct st_lex l = {.s = (const unsigned char *)text, .len = len, .msg = msg, .cap = cap,
			   .code = LS_E_HEADER_JSON};
	st_lex_space(&l);
	/* The header's own value: an object is what the reference takes (others fail later). */
	int rc = st_lex_value(&l, l.pos < len && text[l.pos] == '{' ? ST_TOP : ST_OTHER);
	if (rc)
		return rc;
	st_lex_space(&l);
	if (l.pos < len)
		return st_lex_fail(&l, "bytes after the JSON value");
	return 0;
}
