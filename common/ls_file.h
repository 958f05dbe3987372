/*
 * Opening a file a user named, for reading.  A FIFO, a device or a socket
 * under an expected file name would block open() or read() for ever, so the
 * open does not wait (O_NONBLOCK), the result must be a regular file, and the
 * flag is cleared before the descriptor is used.
 */
#ifndef LS_FILE_H
#define LS_FILE_H

/*
 * Open path (relative to dirfd, or AT_FDCWD) read-only and close-on-exec.
 * Returns 0 with the descriptor in *out, -EINVAL when it is not a regular
 * file, or -errno of open or fstat.
 */
int ls_open_regular_at(int dirfd, const char *path, int *out);

#endif
