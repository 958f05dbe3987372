/*
 * libFuzzer harness for the parser of the origin's S3 answers
 * (store/s3_xml.c): a ListObjectsV2 page or an error document, from
 * arbitrary bytes.  What it returns must be consistent: keys and sizes for
 * every entry it counts, strings that end.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "s3.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy: a read past it lands in AddressSanitizer's redzone. */
	char *text = malloc(size ? size : 1);
	if (!text)
		return 0;
	if (size)
		memcpy(text, data, size);
	struct ls_s3_page page;
	struct ls_err err;
	int rc = ls_s3_parse_page(text, size, &page, &err);
	if (rc == 0) {
		size_t total = 0;
		for (size_t i = 0; i < page.n; i++)
			total += strlen(page.keys[i]) + (size_t)(page.sizes[i] & 1);
		if (page.next_token)
			total += strlen(page.next_token);
		if (page.error_code)
			total += strlen(page.error_code);
		if (page.error_message)
			total += strlen(page.error_message);
		if (total == SIZE_MAX)
			abort();
	}
	ls_s3_page_free(&page);
	free(text);
	return 0;
}
