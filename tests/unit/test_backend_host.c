/*
 * The host memory backend (sealed memfd slabs), the backend dispatchers'
 * defaults, and the slab sub-allocator (extents).
 *
 * The sealing tests act as a client would: they map the slab's exported
 * descriptor themselves, read-only, and check that every way of writing
 * through it is refused.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "extents.h"

#define MiB (1024ull * 1024ull)

static struct ls_backend host;

static void host_setup(void)
{
	struct ls_err err;
	ls_err_clear(&err);
	int rc = ls_backend_host_create(&host, &err);
	cr_assert_eq(rc, 0, "ls_backend_host_create: %d %s", rc, err.msg);
}

static void host_teardown(void)
{
	ls_backend_destroy(&host);
}

static struct ls_slab alloc_slab(uint64_t size)
{
	struct ls_slab s;
	struct ls_err err;
	int rc = ls_backend_slab_alloc(&host, size, &s, &err);
	cr_assert_eq(rc, 0, "slab_alloc(%llu): %d %s", (unsigned long long)size, rc, err.msg);
	return s;
}

/* The daemon's writable mapping of a whole slab, through the backend. */
static unsigned char *host_of(struct ls_slab *s)
{
	return ls_backend_host_ptr(&host, s, 0, s->size);
}

/* A byte pattern that depends on the offset, so misplaced bytes are caught. */
static unsigned char pattern_at(uint64_t i)
{
	return (unsigned char)((i * 131u + 7u) ^ (i >> 12));
}

static void fill_pattern(unsigned char *p, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		p[i] = pattern_at(i);
}

static bool has_pattern(const unsigned char *p, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		if (p[i] != pattern_at(i))
			return false;
	return true;
}

/* A child that must die of a signal should not leave a core file behind. */
static void child_no_core(void)
{
	struct rlimit rl = { 0, 0 };
	setrlimit(RLIMIT_CORE, &rl);
}

static int count_open_fds(void)
{
	int n = 0;
	for (int fd = 0; fd < 4096; fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			n++;
	return n;
}

/* ---- host backend: slabs and seals ---- */

TestSuite(host_backend, .init = host_setup, .fini = host_teardown);

Test(host_backend, reports_name_host_and_2mib_granularity)
{
	cr_assert_str_eq(ls_backend_name(&host), "host");
	cr_assert_eq(ls_backend_granularity(&host), 2 * MiB);
}

Test(host_backend, slab_is_sealed_memfd_of_rounded_size)
{
	struct ls_slab s = alloc_slab(1);
	cr_assert_eq(s.size, 2 * MiB);
	cr_assert_geq(ls_backend_slab_export(&host, &s), 0);
	cr_assert_not_null(host_of(&s));

	struct stat st;
	cr_assert_eq(fstat(ls_backend_slab_export(&host, &s), &st), 0);
	cr_assert_eq((uint64_t)st.st_size, 2 * MiB);

	int seals = fcntl(ls_backend_slab_export(&host, &s), F_GET_SEALS);
	cr_assert_geq(seals, 0, "F_GET_SEALS: %s", strerror(errno));
	cr_assert(seals & F_SEAL_SHRINK, "no F_SEAL_SHRINK: 0x%x", seals);
	cr_assert(seals & F_SEAL_GROW, "no F_SEAL_GROW: 0x%x", seals);
	cr_assert(seals & F_SEAL_FUTURE_WRITE, "no F_SEAL_FUTURE_WRITE: 0x%x", seals);
	cr_assert(seals & F_SEAL_SEAL, "no F_SEAL_SEAL: 0x%x", seals);
	cr_assert(fcntl(ls_backend_slab_export(&host, &s), F_GETFD) & FD_CLOEXEC, "slab fd is not close-on-exec");
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, sizes_round_up_to_whole_2mib)
{
	struct ls_slab a = alloc_slab(2 * MiB);
	struct ls_slab b = alloc_slab(2 * MiB + 1);
	struct ls_slab c = alloc_slab(5 * MiB - 4096);
	cr_assert_eq(a.size, 2 * MiB);
	cr_assert_eq(b.size, 4 * MiB);
	cr_assert_eq(c.size, 6 * MiB);
	ls_backend_slab_free(&host, &a);
	ls_backend_slab_free(&host, &b);
	ls_backend_slab_free(&host, &c);
}

Test(host_backend, seals_cannot_be_changed_after_alloc)
{
	struct ls_slab s = alloc_slab(1);
	errno = 0;
	cr_assert_eq(fcntl(ls_backend_slab_export(&host, &s), F_ADD_SEALS, F_SEAL_WRITE), -1);
	cr_assert_eq(errno, EPERM, "errno %d (%s)", errno, strerror(errno));
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, bytes_written_through_host_are_visible_in_readonly_client_map)
{
	struct ls_slab s = alloc_slab(3 * MiB);
	fill_pattern(host_of(&s), s.size);

	unsigned char *client = mmap(NULL, s.size, PROT_READ, MAP_SHARED, ls_backend_slab_export(&host, &s), 0);
	cr_assert_neq(client, MAP_FAILED, "client mmap: %s", strerror(errno));
	cr_assert(has_pattern(client, s.size));

	/* Later writes by the daemon show through the same client mapping. */
	host_of(&s)[12345] = 0xA5;
	cr_assert_eq(client[12345], 0xA5);
	munmap(client, s.size);
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, client_writable_shared_mmap_is_refused_with_eperm)
{
	struct ls_slab s = alloc_slab(1);
	errno = 0;
	void *p = mmap(NULL, s.size, PROT_READ | PROT_WRITE, MAP_SHARED, ls_backend_slab_export(&host, &s), 0);
	cr_assert_eq(p, MAP_FAILED, "a writable shared mapping of a sealed slab succeeded");
	cr_assert_eq(errno, EPERM, "errno %d (%s)", errno, strerror(errno));
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, mprotect_of_readonly_client_map_to_write_fails)
{
	struct ls_slab s = alloc_slab(1);
	void *p = mmap(NULL, s.size, PROT_READ, MAP_SHARED, ls_backend_slab_export(&host, &s), 0);
	cr_assert_neq(p, MAP_FAILED, "client mmap: %s", strerror(errno));
	errno = 0;
	cr_assert_eq(mprotect(p, s.size, PROT_READ | PROT_WRITE), -1,
		     "mprotect to PROT_WRITE of a sealed slab's mapping succeeded");
	cr_assert(errno == EACCES || errno == EPERM, "errno %d (%s)", errno, strerror(errno));
	munmap(p, s.size);
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, write_through_readonly_client_map_dies_of_sigsegv)
{
	struct ls_slab s = alloc_slab(1);
	volatile unsigned char *p = mmap(NULL, s.size, PROT_READ, MAP_SHARED, ls_backend_slab_export(&host, &s), 0);
	cr_assert_neq((void *)p, MAP_FAILED, "client mmap: %s", strerror(errno));

	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* Criterion and the sanitizers catch SIGSEGV; the test needs the default. */
		child_no_core();
		signal(SIGSEGV, SIG_DFL);
		signal(SIGBUS, SIG_DFL);
		p[100] = 1;
		_exit(0);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFSIGNALED(status), "the child was not killed by a signal (status 0x%x)",
		  status);
	cr_assert_eq(WTERMSIG(status), SIGSEGV, "killed by signal %d", WTERMSIG(status));
	cr_assert_eq(p[100], 0, "the write reached the slab");
	munmap((void *)p, s.size);
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, ftruncate_of_slab_fd_fails)
{
	struct ls_slab s = alloc_slab(1);
	errno = 0;
	cr_assert_eq(ftruncate(ls_backend_slab_export(&host, &s), (off_t)(s.size / 2)), -1, "the slab shrank");
	cr_assert_eq(errno, EPERM, "errno %d (%s)", errno, strerror(errno));
	errno = 0;
	cr_assert_eq(ftruncate(ls_backend_slab_export(&host, &s), (off_t)(s.size * 2)), -1, "the slab grew");
	cr_assert_eq(errno, EPERM, "errno %d (%s)", errno, strerror(errno));
	struct stat st;
	cr_assert_eq(fstat(ls_backend_slab_export(&host, &s), &st), 0);
	cr_assert_eq((uint64_t)st.st_size, s.size);
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, write_syscall_to_slab_fd_fails)
{
	struct ls_slab s = alloc_slab(1);
	unsigned char b = 0x5A;
	errno = 0;
	cr_assert_eq(pwrite(ls_backend_slab_export(&host, &s), &b, 1, 0), -1, "write(2) to a sealed slab succeeded");
	cr_assert_eq(errno, EPERM, "errno %d (%s)", errno, strerror(errno));
	cr_assert_eq(host_of(&s)[0], 0);
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, host_ptr_is_the_writable_mapping_at_the_offset)
{
	struct ls_slab s = alloc_slab(1);
	unsigned char *at = ls_backend_host_ptr(&host, &s, 4096, 8192);
	cr_assert_eq(at, host_of(&s) + 4096);
	memset(at, 0x5C, 8192);
	cr_assert_eq(host_of(&s)[4095], 0);
	cr_assert_eq(host_of(&s)[4096], 0x5C);
	cr_assert_eq(host_of(&s)[4096 + 8192], 0);
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, host_ptr_outside_the_slab_is_null)
{
	struct ls_slab s = alloc_slab(1);
	cr_assert_null(ls_backend_host_ptr(&host, &s, s.size - 4096, 8192));
	cr_assert_null(ls_backend_host_ptr(&host, &s, s.size + 1, 0));
	cr_assert_null(ls_backend_host_ptr(&host, &s, UINT64_MAX - 10, 100));
	/* Exactly up to the end is in bounds. */
	cr_assert_not_null(ls_backend_host_ptr(&host, &s, s.size - 4096, 4096));
	ls_backend_slab_free(&host, &s);
}

static void never_done(struct ls_upload *up, int rc)
{
	(void)up;
	(void)rc;
	cr_assert_fail("a host slab completed an upload it refused");
}

Test(host_backend, does_not_upload_its_slabs_are_filled_in_place)
{
	struct ls_slab s = alloc_slab(1);
	unsigned char src[64] = {0};
	struct ls_upload up = {.done = never_done};
	struct ls_err err;
	cr_assert_eq(ls_backend_upload(&host, &s, 0, src, sizeof(src), &up, &err), -ENOTSUP);
	cr_assert_eq(ls_backend_completion_fd(&host), -1);
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, query_memory_reports_plausible_numbers)
{
	uint64_t free_b = 0, total_b = 0;
	cr_assert_eq(ls_backend_query_memory(&host, &free_b, &total_b), 0);
	cr_assert_gt(total_b, 64 * MiB, "total %llu", (unsigned long long)total_b);
	cr_assert_gt(free_b, 0);
	cr_assert_leq(free_b, total_b, "free %llu > total %llu", (unsigned long long)free_b,
		      (unsigned long long)total_b);
}

Test(host_backend, impossible_size_fails_without_leaking_a_descriptor)
{
	int before = count_open_fds();
	struct ls_slab s;
	struct ls_err err;
	cr_assert_eq(ls_backend_slab_alloc(&host, UINT64_MAX, &s, &err), -ENOMEM);
	cr_assert_eq(ls_backend_slab_export(&host, &s), -1);
	cr_assert_null(s.priv);
	/* 1 PiB: the memfd can be sized, but no address space holds the mapping. */
	int rc = ls_backend_slab_alloc(&host, 1ull << 50, &s, &err);
	cr_assert_lt(rc, 0, "a 1 PiB slab was mapped");
	cr_assert_eq(ls_backend_slab_alloc(&host, 0, &s, &err), -EINVAL);
	cr_assert_eq(count_open_fds(), before);
}

static int send_fd(int sock, int fd)
{
	char byte = 'S';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	memset(&u, 0, sizeof(u));
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = u.buf,
		.msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = u.buf,
		.msg_controllen = sizeof(u.buf),
	};
	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
		return -1;
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

/*
 * The child exists before the slab does, so the only way it can see the
 * slab is the descriptor sent over the socket, as a client of the daemon.
 */
Test(host_backend, fd_sent_to_another_process_maps_readonly_with_same_bytes)
{
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		int fd = recv_fd(sv[1]);
		if (fd < 0)
			_exit(10);
		struct stat st;
		if (fstat(fd, &st) < 0 || st.st_size <= 0)
			_exit(11);
		size_t size = (size_t)st.st_size;
		if (mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) != MAP_FAILED)
			_exit(12);
		unsigned char *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED)
			_exit(13);
		_exit(has_pattern(p, size) ? 0 : 14);
	}
	close(sv[1]);

	struct ls_slab s = alloc_slab(2 * MiB);
	fill_pattern(host_of(&s), s.size);
	cr_assert_eq(send_fd(sv[0], ls_backend_slab_export(&host, &s)), 0, "sendmsg: %s", strerror(errno));

	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "child status 0x%x", status);
	cr_assert_eq(WEXITSTATUS(status), 0,
		     "child failed at step %d (10 recv, 11 fstat, 12 writable map allowed, "
		     "13 mmap, 14 bytes differ)",
		     WEXITSTATUS(status));
	close(sv[0]);
	ls_backend_slab_free(&host, &s);
}

Test(host_backend, client_map_stays_readable_after_slab_free)
{
	struct ls_slab s = alloc_slab(1);
	uint64_t size = s.size;
	fill_pattern(host_of(&s), size);
	unsigned char *client = mmap(NULL, size, PROT_READ, MAP_SHARED, ls_backend_slab_export(&host, &s), 0);
	cr_assert_neq(client, MAP_FAILED, "client mmap: %s", strerror(errno));

	ls_backend_slab_free(&host, &s);
	cr_assert_eq(ls_backend_slab_export(&host, &s), -1);
	cr_assert_null(s.priv);
	cr_assert(has_pattern(client, size), "bytes changed after the slab was freed");
	munmap(client, size);
}

/* ---- dispatcher defaults, with a backend that implements only what it must ---- */

static const char *bare_name(void *ctx)
{
	(void)ctx;
	return "bare";
}

static int bare_slab_alloc(void *ctx, uint64_t size, struct ls_slab *out, struct ls_err *err)
{
	(void)ctx;
	(void)err;
	out->size = size;
	return 0;
}

static void bare_slab_free(void *ctx, struct ls_slab *slab)
{
	(void)ctx;
	(void)slab;
}

static int bare_slab_export(void *ctx, const struct ls_slab *slab)
{
	(void)ctx;
	(void)slab;
	return -1;
}

static const struct ls_backend_i bare_iface = {
	/* .name            = */ bare_name,
	/* .slab_alloc      = */ bare_slab_alloc,
	/* .slab_free       = */ bare_slab_free,
	/* .slab_export     = */ bare_slab_export,
	/* .host_ptr        = */ NULL,
	/* .upload          = */ NULL,
	/* .completion_fd   = */ NULL,
	/* .reap            = */ NULL,
	/* .host_register   = */ NULL,
	/* .host_unregister = */ NULL,
	/* .query_memory    = */ NULL,
	/* .granularity     = */ NULL,
	/* .destroy         = */ NULL,
};

Test(dispatch, optional_members_get_their_defaults)
{
	struct ls_backend b = { .iface = &bare_iface, .ctx = NULL };
	cr_assert_eq(ls_backend_granularity(&b), 4096);
	uint64_t free_b = 123, total_b = 456;
	cr_assert_eq(ls_backend_query_memory(&b, &free_b, &total_b), 0);
	cr_assert_eq(free_b, 0);
	cr_assert_eq(total_b, 0);
	cr_assert_eq(ls_backend_completion_fd(&b), -1);
	ls_backend_reap(&b);
	struct ls_err err;
	unsigned char mem[64];
	cr_assert_eq(ls_backend_host_register(&b, mem, sizeof(mem), &err), 0);
	ls_backend_host_unregister(&b, mem);
	ls_backend_destroy(&b);
	cr_assert_null(b.iface);
}

Test(dispatch, default_host_ptr_is_null_and_default_upload_is_refused)
{
	struct ls_backend b = { .iface = &bare_iface, .ctx = NULL };
	struct ls_slab s;
	struct ls_err err;
	cr_assert_eq(ls_backend_slab_alloc(&b, 4096, &s, &err), 0);
	cr_assert_null(ls_backend_host_ptr(&b, &s, 0, 16));
	unsigned char src[16] = { 0 };
	struct ls_upload up = {.done = never_done};
	cr_assert_eq(ls_backend_upload(&b, &s, 0, src, sizeof(src), &up, &err), -ENOTSUP);
	cr_assert_eq(ls_backend_upload(&b, &s, 4090, src, sizeof(src), &up, &err), -EINVAL);
	cr_assert_eq(ls_backend_upload(&b, &s, 0, NULL, 1, &up, &err), -EINVAL);
}

/* ---- extents ---- */

Test(extents, best_fit_takes_the_hole_that_leaves_least_over)
{
	struct ls_extents e;
	uint64_t a, b, c, d, f, g, h;
	cr_assert_eq(ls_extents_init(&e, 1 * MiB), 0);
	cr_assert_eq(ls_extents_alloc(&e, 12288, 1, &a), 0);
	cr_assert_eq(ls_extents_alloc(&e, 4096, 1, &b), 0);
	cr_assert_eq(ls_extents_alloc(&e, 8192, 1, &c), 0);
	cr_assert_eq(ls_extents_alloc(&e, 4096, 1, &d), 0);
	cr_assert_eq(a, 0);
	cr_assert_eq(c, 16384);
	cr_assert_eq(ls_extents_free(&e, a, 12288), 0); /* hole [0, 12288) */
	cr_assert_eq(ls_extents_free(&e, c, 8192), 0);  /* hole [16384, 24576) */
	cr_assert_eq(ls_extents_best_slack(&e, 8192, 1), 0);
	cr_assert_eq(ls_extents_alloc(&e, 8192, 1, &f), 0);
	cr_assert_eq(f, 16384, "an 8 KiB request fills the 8 KiB hole, not the first one");
	cr_assert_eq(ls_extents_best_slack(&e, 16384, 1), 1 * MiB - 28672 - 16384,
		     "a 16 KiB request fits only the space after the last adapter");
	cr_assert_eq(ls_extents_alloc(&e, 16384, 1, &g), 0);
	cr_assert_eq(g, 28672);
	cr_assert_eq(ls_extents_alloc(&e, 12288, 1, &h), 0);
	cr_assert_eq(h, 0, "the 12 KiB hole was kept whole for a 12 KiB request");
	cr_assert_eq(ls_extents_best_slack(&e, 2 * MiB, 1), UINT64_MAX);
	ls_extents_destroy(&e);
}

Test(extents, alignment_is_respected_and_the_gap_stays_free)
{
	struct ls_extents e;
	uint64_t a, b, c;
	cr_assert_eq(ls_extents_init(&e, 1 * MiB), 0);
	cr_assert_eq(ls_extents_alloc(&e, 4096, 0, &a), 0);
	cr_assert_eq(ls_extents_alloc(&e, 4096, 65536, &b), 0);
	cr_assert_eq(b, 65536);
	cr_assert_eq(ls_extents_free_bytes(&e), 1 * MiB - 8192);
	cr_assert_eq(ls_extents_alloc(&e, 65536 - 4096, 4096, &c), 0);
	cr_assert_eq(c, 4096, "the gap before the aligned range was lost");
	cr_assert_eq(ls_extents_alloc(&e, 4096, 3, &c), -EINVAL, "align 3 accepted");
	cr_assert_eq(ls_extents_alloc(&e, 0, 1, &c), -EINVAL, "len 0 accepted");
	ls_extents_destroy(&e);
}

Test(extents, exhaustion_gives_enospc)
{
	struct ls_extents e;
	uint64_t off;
	cr_assert_eq(ls_extents_init(&e, 64 * 1024), 0);
	cr_assert_eq(ls_extents_alloc(&e, 64 * 1024 + 1, 1, &off), -ENOSPC);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(ls_extents_alloc(&e, 4096, 1, &off), 0);
	cr_assert_eq(ls_extents_alloc(&e, 1, 1, &off), -ENOSPC);
	cr_assert_eq(ls_extents_free_bytes(&e), 0);
	cr_assert_eq(ls_extents_largest_free(&e), 0);
	ls_extents_destroy(&e);
}

Test(extents, fragmented_free_space_larger_than_request_still_gives_enospc)
{
	struct ls_extents e;
	uint64_t off;
	cr_assert_eq(ls_extents_init(&e, 64 * 1024), 0);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(ls_extents_alloc(&e, 4096, 1, &off), 0);
	for (uint64_t o = 0; o < 64 * 1024; o += 8192)
		cr_assert_eq(ls_extents_free(&e, o, 4096), 0);
	cr_assert_eq(ls_extents_free_bytes(&e), 32 * 1024);
	cr_assert_eq(ls_extents_largest_free(&e), 4096);
	cr_assert_eq(ls_extents_alloc(&e, 8192, 1, &off), -ENOSPC);
	ls_extents_destroy(&e);
}

Test(extents, freeing_everything_in_random_order_coalesces_to_one_range)
{
	enum { N = 256 };
	const uint64_t unit = 4096, size = N * unit;
	struct ls_extents e;
	uint64_t offs[N];
	cr_assert_eq(ls_extents_init(&e, size), 0);
	for (int i = 0; i < N; i++)
		cr_assert_eq(ls_extents_alloc(&e, unit, 1, &offs[i]), 0);

	srand(12345);
	for (int i = N - 1; i > 0; i--) {
		int j = rand() % (i + 1);
		uint64_t t = offs[i];
		offs[i] = offs[j];
		offs[j] = t;
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(ls_extents_free(&e, offs[i], unit), 0);

	cr_assert_eq(e.count, 1, "%zu free ranges left", e.count);
	uint64_t off;
	cr_assert_eq(ls_extents_alloc(&e, size, 1, &off), 0);
	cr_assert_eq(off, 0);
	ls_extents_destroy(&e);
}

Test(extents, double_free_is_refused_and_changes_nothing)
{
	struct ls_extents e;
	uint64_t a, b;
	cr_assert_eq(ls_extents_init(&e, 1 * MiB), 0);
	cr_assert_eq(ls_extents_alloc(&e, 8192, 1, &a), 0);
	cr_assert_eq(ls_extents_alloc(&e, 8192, 1, &b), 0);
	cr_assert_eq(ls_extents_free(&e, a, 8192), 0);
	uint64_t free_before = ls_extents_free_bytes(&e);
	size_t count_before = e.count;

	cr_assert_eq(ls_extents_free(&e, a, 8192), -EINVAL, "exact double free accepted");
	cr_assert_eq(ls_extents_free(&e, a + 4096, 8192), -EINVAL, "half-free range accepted");
	cr_assert_eq(ls_extents_free(&e, b, 16384), -EINVAL, "range running into free space");
	cr_assert_eq(ls_extents_free_bytes(&e), free_before);
	cr_assert_eq(e.count, count_before);

	/* b is still owned and can be freed properly, and everything merges. */
	cr_assert_eq(ls_extents_free(&e, b, 8192), 0);
	cr_assert_eq(ls_extents_largest_free(&e), 1 * MiB);
	ls_extents_destroy(&e);
}

Test(extents, out_of_range_free_is_refused)
{
	struct ls_extents e;
	uint64_t off;
	cr_assert_eq(ls_extents_init(&e, 64 * 1024), 0);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(ls_extents_alloc(&e, 4096, 1, &off), 0);
	cr_assert_eq(ls_extents_free(&e, 60 * 1024, 8192), -EINVAL);
	cr_assert_eq(ls_extents_free(&e, 64 * 1024, 4096), -EINVAL);
	cr_assert_eq(ls_extents_free(&e, UINT64_MAX - 100, 4096), -EINVAL);
	cr_assert_eq(ls_extents_free(&e, 4096, UINT64_MAX), -EINVAL);
	cr_assert_eq(ls_extents_free(&e, 0, 0), -EINVAL);
	cr_assert_eq(ls_extents_free_bytes(&e), 0);
	ls_extents_destroy(&e);
}

/* Model for the random test: one bool per byte of a small slab. */
enum { MODEL_SIZE = 4096, MODEL_MAX_LIVE = 512 };

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	/* xorshift64*: deterministic and good enough to pick operations. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static uint64_t rng_below(uint64_t n)
{
	return rng_next() % n;
}

/*
 * Where best fit puts len bytes in the model, or -1: of the maximal free
 * runs with room at an aligned start, the one that leaves the fewest bytes
 * over (the lowest on a tie), at its lowest aligned start.
 */
static int64_t model_best_fit(const bool *used, uint64_t len, uint64_t align)
{
	int64_t best = -1;
	uint64_t best_slack = UINT64_MAX;
	uint64_t i = 0;
	while (i < MODEL_SIZE) {
		if (used[i]) {
			i++;
			continue;
		}
		uint64_t run = i;
		while (i < MODEL_SIZE && !used[i])
			i++;
		uint64_t start = (run + align - 1) / align * align;
		if (start < i && i - start >= len && (i - run) - len < best_slack) {
			best = (int64_t)start;
			best_slack = (i - run) - len;
		}
	}
	return best;
}

/* The allocator's free list must equal the model's maximal free runs, exactly. */
static void check_against_model(const struct ls_extents *e, const bool *used, int op)
{
	size_t k = 0;
	uint64_t free_total = 0, largest = 0;
	uint64_t i = 0;
	while (i < MODEL_SIZE) {
		if (used[i]) {
			i++;
			continue;
		}
		uint64_t run = i;
		while (i < MODEL_SIZE && !used[i])
			i++;
		cr_assert_lt(k, e->count, "op %d: free run [%llu,%llu) missing", op,
			     (unsigned long long)run, (unsigned long long)i);
		cr_assert(e->free[k].off == run && e->free[k].len == i - run,
			  "op %d: range %zu is [%llu,+%llu), model says [%llu,%llu)", op, k,
			  (unsigned long long)e->free[k].off, (unsigned long long)e->free[k].len,
			  (unsigned long long)run, (unsigned long long)i);
		free_total += i - run;
		if (i - run > largest)
			largest = i - run;
		k++;
	}
	cr_assert_eq(k, e->count, "op %d: %zu extra free ranges", op, e->count - k);
	cr_assert_eq(ls_extents_free_bytes(e), free_total, "op %d", op);
	cr_assert_eq(ls_extents_largest_free(e), largest, "op %d", op);
}

Test(extents, random_operations_match_a_byte_map_model)
{
	static bool used[MODEL_SIZE];
	struct ls_extent live[MODEL_MAX_LIVE];
	size_t nlive = 0;
	int allocs = 0, frees = 0, nospc = 0, refused = 0;
	struct ls_extents e;

	memset(used, 0, sizeof(used));
	rng_state = 0x9E3779B97F4A7C15ull;
	cr_assert_eq(ls_extents_init(&e, MODEL_SIZE), 0);

	for (int op = 0; op < 10000; op++) {
		uint64_t r = rng_below(100);
		if (r < 10) {
			/* A free the allocator must refuse: some byte free, or out of range. */
			uint64_t off = rng_below(MODEL_SIZE + 64);
			uint64_t len = 1 + rng_below(128);
			bool bad = off + len > MODEL_SIZE;
			for (uint64_t i = off; !bad && i < off + len; i++)
				bad = !used[i];
			if (bad) {
				cr_assert_eq(ls_extents_free(&e, off, len), -EINVAL,
					     "op %d: bad free [%llu,+%llu) accepted", op,
					     (unsigned long long)off, (unsigned long long)len);
				refused++;
			}
		} else if (r < 55 || nlive == MODEL_MAX_LIVE) {
			if (nlive == 0)
				continue;
			size_t k = rng_below(nlive);
			struct ls_extent x = live[k];
			cr_assert_eq(ls_extents_free(&e, x.off, x.len), 0, "op %d", op);
			memset(used + x.off, 0, x.len);
			live[k] = live[--nlive];
			frees++;
		} else {
			uint64_t len = rng_below(4) ? 1 + rng_below(64) : 1 + rng_below(600);
			uint64_t align = 1ull << rng_below(8);
			int64_t want = model_best_fit(used, len, align);
			uint64_t off = UINT64_MAX;
			int rc = ls_extents_alloc(&e, len, align, &off);
			if (want < 0) {
				cr_assert_eq(rc, -ENOSPC, "op %d: len %llu align %llu gave %d", op,
					     (unsigned long long)len, (unsigned long long)align, rc);
				nospc++;
			} else {
				cr_assert_eq(rc, 0, "op %d: len %llu align %llu", op,
					     (unsigned long long)len, (unsigned long long)align);
				cr_assert_eq(off, (uint64_t)want, "op %d: best fit is %lld, got %llu",
					     op, (long long)want, (unsigned long long)off);
				memset(used + off, 1, len);
				live[nlive++] = (struct ls_extent){ .off = off, .len = len };
				allocs++;
			}
		}
		check_against_model(&e, used, op);
	}

	/* A run that exercised nothing must not pass. */
	cr_assert_gt(allocs, 1000);
	cr_assert_gt(frees, 1000);
	cr_assert_gt(nospc, 10);
	cr_assert_gt(refused, 100);

	while (nlive > 0) {
		struct ls_extent x = live[--nlive];
		cr_assert_eq(ls_extents_free(&e, x.off, x.len), 0);
	}
	cr_assert_eq(e.count, 1);
	cr_assert_eq(ls_extents_largest_free(&e), MODEL_SIZE);
	ls_extents_destroy(&e);
}
