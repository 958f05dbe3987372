/* Byte counts as people read them: one format for the CLI and the daemon's log. */
#ifndef LS_SIZE_H
#define LS_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* "812 B", "32.0 MiB", "1.0 GiB": binary units, one decimal (len >= 16). */
void ls_format_size(uint64_t bytes, char *buf, size_t len);

#endif
