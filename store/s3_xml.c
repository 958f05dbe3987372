/*
 * The S3 XML the origin reads (expat): a ListObjectsV2 page, the answer to
 * a multipart upload's initiation, or an error document.
 */
#include <errno.h>
#include <expat.h>
#include <stdlib.h>
#include <string.h>

#include "s3.h"

/* Bounds on what one page may hold: S3 returns at most 1,000 keys of 1,024 bytes. */
#define LS_S3_PAGE_KEYS_MAX 10000
#define LS_S3_TEXT_MAX 4096

enum ls_s3_field { F_NONE, F_KEY, F_SIZE, F_TRUNCATED, F_TOKEN, F_CODE, F_MESSAGE, F_UPLOAD_ID };

struct ls_s3_parse {
	XML_Parser xp;
	struct ls_s3_page *page;
	int depth;
	bool list;                  /* root is ListBucketResult */
	bool error;                 /* root is Error */
	bool initiated;             /* root is InitiateMultipartUploadResult */
	bool completed;             /* root is CompleteMultipartUploadResult */
	bool in_contents;           /* inside <Contents> (depth 2) */
	enum ls_s3_field field;
	char text[LS_S3_TEXT_MAX + 1];
	size_t text_len;
	bool too_long;
	char *key;                  /* of the <Contents> being read */
	uint64_t size;
	int fail;                   /* -ENOMEM, or LS_E_ORIGIN for a page out of bounds */
};

/* The element's local name: S3 puts its elements in a namespace (expat reports "uri name"). */
static const char *ls_local(const XML_Char *name)
{
	const char *sp = strrchr(name, ' ');
	return sp ? sp + 1 : name;
}

static void ls_stop(struct ls_s3_parse *p, int code)
{
	if (!p->fail)
		p->fail = code;
	XML_StopParser(p->xp, XML_FALSE);
}

static void XMLCALL ls_start(void *ud, const XML_Char *name, const XML_Char **attrs)
{
	(void)attrs;
	struct ls_s3_parse *p = ud;
	const char *n = ls_local(name);
	p->depth++;
	p->field = F_NONE;
	p->text_len = 0;
	p->too_long = false;
	if (p->depth == 1) {
		p->list = strcmp(n, "ListBucketResult") == 0;
		p->error = strcmp(n, "Error") == 0;
		p->initiated = strcmp(n, "InitiateMultipartUploadResult") == 0;
		p->completed = strcmp(n, "CompleteMultipartUploadResult") == 0;
		if (!p->list && !p->error && !p->initiated && !p->completed)
			ls_stop(p, LS_E_ORIGIN);
		return;
	}
	if (p->initiated && p->depth == 2 && strcmp(n, "UploadId") == 0) {
		p->field = F_UPLOAD_ID;
		return;
	}
	if (p->list && p->depth == 2) {
		if (strcmp(n, "Contents") == 0) {
			p->in_contents = true;
			free(p->key);
			p->key = NULL;
			p->size = 0;
		} else if (strcmp(n, "IsTruncated") == 0) {
			p->field = F_TRUNCATED;
		} else if (strcmp(n, "NextContinuationToken") == 0) {
			p->field = F_TOKEN;
		}
	} else if (p->list && p->depth == 3 && p->in_contents) {
		if (strcmp(n, "Key") == 0)
			p->field = F_KEY;
		else if (strcmp(n, "Size") == 0)
			p->field = F_SIZE;
	} else if (p->error && p->depth == 2) {
		if (strcmp(n, "Code") == 0)
			p->field = F_CODE;
		else if (strcmp(n, "Message") == 0)
			p->field = F_MESSAGE;
	}
}

static void XMLCALL ls_text(void *ud, const XML_Char *s, int len)
{
	struct ls_s3_parse *p = ud;
	if (p->field == F_NONE || len <= 0)
		return;
	if (p->text_len + (size_t)len > LS_S3_TEXT_MAX) {
		p->too_long = true;
		return;
	}
	memcpy(p->text + p->text_len, s, (size_t)len);
	p->text_len += (size_t)len;
}

static int ls_take_text(struct ls_s3_parse *p, char **into)
{
	if (p->too_long)
		return LS_E_ORIGIN;
	p->text[p->text_len] = '\0';
	char *s = strdup(p->text);
	if (!s)
		return -ENOMEM;
	free(*into);
	*into = s;
	return 0;
}

static int ls_add_key(struct ls_s3_parse *p)
{
	struct ls_s3_page *pg = p->page;
	if (!p->key)
		return LS_E_ORIGIN;
	if (pg->n >= LS_S3_PAGE_KEYS_MAX)
		return LS_E_ORIGIN;
	if ((pg->n & (pg->n - 1)) == 0) { /* grow at powers of two */
		size_t cap = pg->n ? pg->n * 2 : 16;
		char **k = realloc(pg->keys, cap * sizeof(*k));
		if (!k)
			return -ENOMEM;
		pg->keys = k;
		uint64_t *sz = realloc(pg->sizes, cap * sizeof(*sz));
		if (!sz)
			return -ENOMEM;
		pg->sizes = sz;
	}
	pg->keys[pg->n] = p->key;
	pg->sizes[pg->n] = p->size;
	pg->n++;
	p->key = NULL;
	return 0;
}

static void XMLCALL ls_end(void *ud, const XML_Char *name)
{
	struct ls_s3_parse *p = ud;
	(void)name;
	int rc = 0;
	switch (p->field) {
	case F_KEY:
		rc = ls_take_text(p, &p->key);
		break;
	case F_SIZE: {
		p->text[p->text_len] = '\0';
		char *end;
		errno = 0;
		unsigned long long v = strtoull(p->text, &end, 10);
		if (p->too_long || p->text_len == 0 || *end || errno || p->text[0] == '-')
			rc = LS_E_ORIGIN;
		p->size = v;
		break;
	}
	case F_TRUNCATED:
		p->text[p->text_len] = '\0';
		p->page->truncated = !p->too_long && strcmp(p->text, "true") == 0;
		break;
	case F_TOKEN:
		rc = ls_take_text(p, &p->page->next_token);
		break;
	case F_CODE:
		rc = ls_take_text(p, &p->page->error_code);
		break;
	case F_MESSAGE:
		rc = ls_take_text(p, &p->page->error_message);
		break;
	case F_UPLOAD_ID:
		rc = ls_take_text(p, &p->page->upload_id);
		break;
	case F_NONE:
		if (p->list && p->depth == 2 && p->in_contents) {
			p->in_contents = false;
			rc = ls_add_key(p);
		}
		break;
	}
	p->field = F_NONE;
	p->text_len = 0;
	p->depth--;
	if (rc)
		ls_stop(p, rc);
}

int ls_s3_parse_page(const char *xml, size_t len, struct ls_s3_page *out, struct ls_err *err)
{
	memset(out, 0, sizeof(*out));
	if (len > INT32_MAX)
		return ls_err_set(err, LS_E_ORIGIN, "a listing of %zu bytes is too large", len);
	struct ls_s3_parse p = {.page = out};
	/* Namespace processing, so that a prefix or none gives the same local names. */
	p.xp = XML_ParserCreateNS(NULL, ' ');
	if (!p.xp)
		return ls_err_set(err, -ENOMEM, "out of memory");
	XML_SetUserData(p.xp, &p);
	XML_SetElementHandler(p.xp, ls_start, ls_end);
	XML_SetCharacterDataHandler(p.xp, ls_text);
	enum XML_Status st = XML_Parse(p.xp, xml, (int)len, XML_TRUE);
	int rc = 0;
	if (p.fail == -ENOMEM)
		rc = ls_err_set(err, -ENOMEM, "out of memory");
	else if (p.fail)
		rc = ls_err_set(err, LS_E_ORIGIN,
				"the origin's answer is not a listing or an error document (or "
				"holds a key, size or value out of bounds)");
	else if (st != XML_STATUS_OK)
		rc = ls_err_set(err, LS_E_ORIGIN, "the origin's answer is not XML: %s at line %lu",
				XML_ErrorString(XML_GetErrorCode(p.xp)),
				(unsigned long)XML_GetCurrentLineNumber(p.xp));
	else if (!p.list && !p.error && !p.initiated && !p.completed)
		rc = ls_err_set(err, LS_E_ORIGIN, "the origin's answer is empty");
	else if (p.initiated && !out->upload_id)
		rc = ls_err_set(err, LS_E_ORIGIN, "the origin began a multipart upload without an id");
	free(p.key);
	XML_ParserFree(p.xp);
	return rc;
}

void ls_s3_page_free(struct ls_s3_page *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->keys[i]);
	free(p->keys);
	free(p->sizes);
	free(p->next_token);
	free(p->error_code);
	free(p->error_message);
	free(p->upload_id);
	memset(p, 0, sizeof(*p));
}
