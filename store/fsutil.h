/* Small file helpers of the store: whole reads and writes, temporaries. */
#ifndef LS_FSUTIL_H
#define LS_FSUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "ls_file.h" /* ls_write_all */

/* pread until len bytes are read; LS_E_TRUNCATED at end of file, or -errno. */
int ls_read_all(int fd, void *buf, size_t len, uint64_t offset);


/*
 * Create a new file "tmp-<tag>-<random>" in dir_fd with O_EXCL, mode 0640;
 * its name goes to name (at least 64 bytes).  Returns the fd or -errno.
 * gc removes such files once no import can still be writing them.
 */
int ls_tmpfile_create(int dir_fd, const char *tag, char *name, size_t name_len);

/* mkdir that accepts an existing directory; 0 or -errno. */
int ls_mkdir(const char *path, unsigned mode);

/* Remove a flat directory and the files in it (best effort; for leftovers). */
void ls_remove_dir(const char *path);

/* fsync a directory by path; 0 or -errno. */
int ls_fsync_path(const char *path);

#endif
