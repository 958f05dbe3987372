/* Content digests (SHA-256) and their one text form, lowercase hex. */
#ifndef LS_DIGEST_H
#define LS_DIGEST_H

#include <stdint.h>

#define LS_DIGEST_LEN 32
#define LS_DIGEST_HEX (2 * LS_DIGEST_LEN + 1)

/* digest as 64 lowercase hex digits and a NUL. */
void ls_digest_hex(const uint8_t digest[LS_DIGEST_LEN], char buf[LS_DIGEST_HEX]);

#endif
