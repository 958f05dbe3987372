/* The parser of the origin's S3 answers (store/s3_xml.c): pages, errors, refusals. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3.h"

static struct ls_s3_page page;
static struct ls_err err;

static int parse(const char *xml)
{
	return ls_s3_parse_page(xml, strlen(xml), &page, &err);
}

static void fini(void)
{
	ls_s3_page_free(&page);
}

TestSuite(s3_xml, .fini = fini);

Test(s3_xml, a_list_page_gives_its_keys_sizes_and_continuation)
{
	cr_assert_eq(parse("<?xml version=\"1.0\"?><ListBucketResult "
			   "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><IsTruncated>true"
			   "</IsTruncated><NextContinuationToken>t/1=</NextContinuationToken>"
			   "<Contents><Key>p/versions/a@0000000001</Key><Size>3</Size></Contents>"
			   "<CommonPrefixes><Prefix>p/x/</Prefix></CommonPrefixes>"
			   "<Contents><Key>a&amp;b</Key><Size>18446744073709551615</Size>"
			   "</Contents></ListBucketResult>"),
		     0, "%s", err.msg);
	cr_assert_eq(page.n, 2);
	cr_assert_str_eq(page.keys[0], "p/versions/a@0000000001");
	cr_assert_eq(page.sizes[0], 3);
	cr_assert_str_eq(page.keys[1], "a&b");
	cr_assert_eq(page.sizes[1], UINT64_MAX);
	cr_assert(page.truncated);
	cr_assert_str_eq(page.next_token, "t/1=");
	cr_assert_null(page.error_code);
}

Test(s3_xml, an_error_document_gives_its_code_and_message)
{
	cr_assert_eq(parse("<Error><Code>AccessDenied</Code><Message>Access Denied</Message>"
			   "</Error>"),
		     0, "%s", err.msg);
	cr_assert_str_eq(page.error_code, "AccessDenied");
	cr_assert_str_eq(page.error_message, "Access Denied");
	cr_assert_eq(page.n, 0);
}

Test(s3_xml, text_that_is_not_xml_is_refused)
{
	cr_assert_eq(parse("<html><body>502 Bad Gateway"), LS_E_ORIGIN);
	ls_s3_page_free(&page);
	cr_assert_eq(parse("not xml at all"), LS_E_ORIGIN);
	ls_s3_page_free(&page);
	cr_assert_eq(parse(""), LS_E_ORIGIN);
}

Test(s3_xml, a_document_of_another_kind_is_refused)
{
	cr_assert_eq(parse("<ListAllMyBucketsResult></ListAllMyBucketsResult>"), LS_E_ORIGIN);
}

Test(s3_xml, a_size_that_is_not_a_number_is_refused)
{
	cr_assert_eq(parse("<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents>"
			   "</ListBucketResult>"),
		     LS_E_ORIGIN);
	ls_s3_page_free(&page);
	cr_assert_eq(parse("<ListBucketResult><Contents><Key>k</Key><Size>99999999999999999999"
			   "</Size></Contents></ListBucketResult>"),
		     LS_E_ORIGIN);
}

Test(s3_xml, an_entry_without_a_key_is_refused)
{
	cr_assert_eq(parse("<ListBucketResult><Contents><Size>1</Size></Contents>"
			   "</ListBucketResult>"),
		     LS_E_ORIGIN);
}

Test(s3_xml, a_key_longer_than_any_s3_key_is_refused)
{
	size_t n = 5000;
	char *xml = malloc(n + 128);
	int len = sprintf(xml, "<ListBucketResult><Contents><Key>");
	memset(xml + len, 'k', n);
	sprintf(xml + len + n, "</Key><Size>1</Size></Contents></ListBucketResult>");
	cr_assert_eq(parse(xml), LS_E_ORIGIN);
	free(xml);
}

Test(s3_xml, a_multipart_upload_begun_gives_its_id)
{
	cr_assert_eq(parse("<?xml version=\"1.0\"?><InitiateMultipartUploadResult "
			   "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket>"
			   "<Key>k</Key><UploadId>VXBsb2FkIElE+/=</UploadId>"
			   "</InitiateMultipartUploadResult>"),
		     0, "%s", err.msg);
	cr_assert_str_eq(page.upload_id, "VXBsb2FkIElE+/=");
}

Test(s3_xml, a_multipart_upload_begun_without_an_id_is_refused)
{
	cr_assert_eq(parse("<InitiateMultipartUploadResult><Key>k</Key>"
			   "</InitiateMultipartUploadResult>"),
		     LS_E_ORIGIN);
}
