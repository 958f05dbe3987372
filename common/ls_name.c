#define _GNU_SOURCE
#include "ls_name.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static bool ls_name_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

bool ls_name_valid(const char *name)
{
	if (!name)
		return false;
	const char *comp = name;
	for (const char *p = name;; p++) {
		if (p - name > LS_NAME_MAX)
			return false;
		if (*p == '/' || *p == '\0') {
			size_t clen = (size_t)(p - comp);
			if (clen == 0)
				return false;
			if (comp[0] == '.' && (clen == 1 || (clen == 2 && comp[1] == '.')))
				return false;
			if (*p == '\0')
				return true;
			comp = p + 1;
		} else if (!ls_name_char_ok(*p)) {
			return false;
		}
	}
}

/* Length of s, but no more than max + 1 (a name's checks stop there). */
static size_t ls_bounded_len(const char *s, size_t max)
{
	const char *nul = memchr(s, '\0', max + 1);
	return nul ? (size_t)(nul - s) : max + 1;
}

int ls_ref_parse(const char *ref, char *name, uint32_t *version, struct ls_err *err)
{
	static const char rule[] = "a name has 1 to 200 characters of [A-Za-z0-9._/-]";
	_Static_assert(LS_NAME_MAX == 200, "the rule's text names the limit");
	*version = 0;
	if (!ref)
		return ls_err_set(err, LS_E_NAME_INVALID, "no name given: %s", rule);
	/*
	 * A reference longer than a name and the longest version is refused
	 * without reading it all (it may be megabytes); the message quotes its
	 * start.
	 */
	size_t rlen = ls_bounded_len(ref, LS_NAME_MAX + 11);
	if (rlen > LS_NAME_MAX + 11)
		return ls_err_set(err, LS_E_NAME_INVALID, "'%.40s...' (over %d bytes): %s", ref,
				  LS_NAME_MAX + 11, rule);
	const char *at = memrchr(ref, '@', rlen);
	size_t len = at ? (size_t)(at - ref) : rlen;
	char buf[LS_NAME_MAX + 1];
	if (len == 0 || len > LS_NAME_MAX)
		return ls_err_set(err, LS_E_NAME_INVALID, "'%s': %s", ref, rule);
	memcpy(buf, ref, len);
	buf[len] = '\0';
	if (!ls_name_valid(buf))
		return ls_err_set(err, LS_E_NAME_INVALID, "'%s': %s", buf, rule);
	if (at) {
		char *end;
		errno = 0;
		unsigned long v = strtoul(at + 1, &end, 10);
		if (at[1] < '1' || at[1] > '9' || *end || errno || v > UINT32_MAX)
			return ls_err_set(err, LS_E_NAME_INVALID,
					  "'%s': a version is a positive number after '@'", ref);
		*version = (uint32_t)v;
	}
	if (name)
		memcpy(name, buf, len + 1);
	return 0;
}

bool ls_alias_valid(const char *s)
{
	if (!s)
		return false;
	size_t len = ls_bounded_len(s, LS_ALIAS_MAX);
	if (len > LS_ALIAS_MAX)
		return false;
	const char *colon = memchr(s, ':', len);
	if (!colon || colon == s || (size_t)(colon - s) > LS_NAME_MAX)
		return false;
	size_t tlen = len - (size_t)(colon - s) - 1;
	if (tlen == 0 || tlen > LS_TAG_MAX)
		return false;
	for (const char *p = colon + 1; *p; p++)
		if (!ls_name_char_ok(*p))
			return false;
	char name[LS_NAME_MAX + 1];
	memcpy(name, s, (size_t)(colon - s));
	name[colon - s] = '\0';
	return ls_name_valid(name);
}

int ls_ref_check_any(const char *ref, struct ls_err *err)
{
	uint32_t version;
	if (ref && memchr(ref, ':', ls_bounded_len(ref, LS_ALIAS_MAX)) && !strchr(ref, '@')) {
		if (ls_alias_valid(ref))
			return 0;
		return ls_err_set(err, LS_E_NAME_INVALID,
				  "'%.*s': an alias is NAME:TAG, a tag 1 to %d characters of "
				  "[A-Za-z0-9._-]",
				  LS_ALIAS_MAX, ref, LS_TAG_MAX);
	}
	return ls_ref_parse(ref, NULL, &version, err);
}
