/* The text form of a content digest (ls_digest.h). */
#include "ls_digest.h"

void ls_digest_hex(const uint8_t digest[LS_DIGEST_LEN], char buf[LS_DIGEST_HEX])
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < LS_DIGEST_LEN; i++) {
		buf[2 * i] = hex[digest[i] >> 4];
		buf[2 * i + 1] = hex[digest[i] & 15];
	}
	buf[2 * LS_DIGEST_LEN] = '\0';
}
