/*
 * A raw connection to lorastored for tests that must send what liblorastore
 * never would: requests with descriptors they do not take, pipelines that
 * are never read, frames that do not decode.  Frames go through the
 * project's own framer and encoder (proto/frame.h).
 */
#ifndef LS_RAW_CONN_H
#define LS_RAW_CONN_H

#include <stddef.h>

#include "frame.h"

/* Connect to a Unix socket: a descriptor, or -errno. */
int raw_conn_open(const char *path);

/*
 * Send req as one whole frame with n_fds descriptors riding on its first
 * bytes (one sendmsg, then plain sends for what is left).  0 or -errno.
 */
int raw_conn_send(int fd, const Lorastore__Request *req, const int *fds, unsigned n_fds);

/* Send bytes as they are (blocking). 0 or -errno. */
int raw_conn_send_bytes(int fd, const void *buf, size_t len);

/*
 * The next response frame, decoded, within timeout_ms: 0 with *out (free
 * with lorastore__response__free_unpacked), -ETIMEDOUT, -EPIPE when the
 * daemon closed the connection, -EPROTO for a frame that does not decode.
 * f keeps bytes between calls (ls_framer_init(f, 0) first).
 */
int raw_conn_read(int fd, struct ls_framer *f, int timeout_ms, Lorastore__Response **out);

/* Say Hello (request id 1) and read the answer: 0, or an error as above (-EPROTO: refused). */
int raw_conn_hello(int fd, struct ls_framer *f);

/*
 * Say Hello asking for the warm path, and take what the reply brings: the
 * directory's descriptor (and its size) and the lease page's.  0, or an
 * error as above (-ENOMSG: the reply brought no descriptors).
 */
int raw_conn_hello_warm(int fd, struct ls_framer *f, int *dir_fd, uint64_t *dir_size,
			int *page_fd);

#endif
