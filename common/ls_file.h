/*
 * Opening a file a user named, for reading.  A FIFO, a device or a socket
 * under an expected file name would block open() or read() for ever, so the
 * open does not wait (O_NONBLOCK), the result must be a regular file, and the
 * flag is cleared before the descriptor is used.
 */
#ifndef LS_FILE_H
#define LS_FILE_H

#include <stddef.h>
#include <stdint.h>

/*
 * Open path (relative to dirfd, or AT_FDCWD) read-only and close-on-exec.
 * Returns 0 with the descriptor in *out, -EINVAL when it is not a regular
 * file, or -errno of open or fstat.
 */
int ls_open_regular_at(int dirfd, const char *path, int *out);

/*
 * Whether an open descriptor (one a client passed, say) is a regular file,
 * checked before anything reads it.  Returns 0, -EINVAL when it is not
 * (then *kind, when kind is not NULL, says what it is: "a pipe or FIFO",
 * "a socket", ...), or -errno of fstat.
 */
int ls_fd_check_regular(int fd, const char **kind);

/* pwrite until len bytes are written at offset; 0 or -errno. */
int ls_write_all(int fd, const void *buf, size_t len, uint64_t offset);

#endif
