#define _GNU_SOURCE
#include "ls_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

int ls_fd_check_regular(int fd, const char **kind)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISREG(st.st_mode))
		return 0;
	if (kind)
		*kind = S_ISFIFO(st.st_mode)	? "a pipe or FIFO"
			: S_ISSOCK(st.st_mode) ? "a socket"
			: S_ISDIR(st.st_mode)  ? "a directory"
			: S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
							      : "a special file";
	return -EINVAL;
}

int ls_open_regular_at(int dirfd, const char *path, int *out)
{
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	int rc = ls_fd_check_regular(fd, NULL);
	if (rc == 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		rc = -errno;
	if (rc) {
		close(fd);
		return rc;
	}
	*out = fd;
	return 0;
}

int ls_write_all(int fd, const void *buf, size_t len, uint64_t offset)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)offset);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
		offset += (uint64_t)n;
	}
	return 0;
}
