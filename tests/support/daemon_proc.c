/* A real lorastored child process for integration tests. */
#include "daemon_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "synth.h"

#ifndef LS_BINARY_DIR
#error "LS_BINARY_DIR must be defined by the build"
#endif

/*
 * The build tree, or LS_TEST_BINARY_DIR: a tree of the same layout elsewhere
 * (the folder scripts/gpu-check prepares and runs on another machine).
 */
static const char *ls_binary_path(char *buf, size_t cap, const char *rel)
{
	const char *dir = getenv("LS_TEST_BINARY_DIR");
	snprintf(buf, cap, "%s%s", dir && *dir ? dir : LS_BINARY_DIR, rel);
	return buf;
}

const char *ls_daemon_binary(void)
{
	static char path[4096];
	return ls_binary_path(path, sizeof(path), "/daemon/lorastored");
}

const char *ls_cli_binary(void)
{
	static char path[4096];
	return ls_binary_path(path, sizeof(path), "/cli/lorastore");
}

static long ls_ms_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

bool ls_daemon_wait_notify(struct ls_daemon_proc *d, const char *text, int timeout_ms)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		long left = timeout_ms - ls_ms_since(&t0);
		if (left <= 0)
			return false;
		struct pollfd p = {.fd = d->notify_fd, .events = POLLIN};
		if (poll(&p, 1, (int)(left > 200 ? 200 : left)) <= 0) {
			int status;
			if (d->pid > 0 && waitpid(d->pid, &status, WNOHANG) == d->pid) {
				d->pid = -1;
				return false;
			}
			continue;
		}
		char buf[4096];
		ssize_t n = recv(d->notify_fd, buf, sizeof(buf) - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		const char *st = strstr(buf, "STATUS=");
		if (st) {
			size_t len = strcspn(st + 7, "\n");
			if (len >= sizeof(d->status))
				len = sizeof(d->status) - 1;
			memcpy(d->status, st + 7, len);
			d->status[len] = '\0';
		}
		if (strstr(buf, text))
			return true;
	}
}

const char *ls_daemon_test_engine(void)
{
	const char *e = getenv("LS_TEST_EVENT_LOOP");
	return e && *e ? e : NULL;
}

#if defined(__x86_64__)
#define LS_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define LS_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/*
 * In the child before exec: a seccomp filter that answers the three io_uring
 * system calls with EPERM and allows everything else, the way Docker's
 * default profile treats them.  It survives exec (with no_new_privs set).
 */
static int ls_refuse_io_uring(void)
{
#ifdef LS_AUDIT_ARCH
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, LS_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
	};
	struct sock_fprog prog = {.len = (unsigned short)(sizeof(f) / sizeof(f[0])), .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
#else
	errno = ENOSYS;
	return -1;
#endif
}

/* The seccomp filter of LS_DAEMON_NO_WX (systemd's MemoryDenyWriteExecute=yes). */
int ls_seccomp_refuse_wx(void)
{
#ifdef LS_AUDIT_ARCH
	/* Low 32 bits of argument n (little-endian). */
#define LS_ARG(n) (offsetof(struct seccomp_data, args) + 8 * (n))
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, LS_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 0, 4),
		/* mmap: refuse when prot has both PROT_WRITE and PROT_EXEC */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, LS_ARG(2)),
		BPF_STMT(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 9, 8),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW), /* not reached */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mprotect, 1, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_pkey_mprotect, 0, 2),
		/* mprotect, pkey_mprotect: refuse PROT_EXEC */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, LS_ARG(2)),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 4, 3),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_shmat, 0, 2),
		/* shmat: refuse SHM_EXEC */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, LS_ARG(2)),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, SHM_EXEC, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
	};
#undef LS_ARG
	struct sock_fprog prog = {.len = (unsigned short)(sizeof(f) / sizeof(f[0])), .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
#else
	errno = ENOSYS;
	return -1;
#endif
}

int ls_daemon_start(struct ls_daemon_proc *d, const char *dir_or_null, const char *const *args)
{
	return ls_daemon_start_ex(d, dir_or_null, args, 0);
}

int ls_daemon_start_ex(struct ls_daemon_proc *d, const char *dir_or_null, const char *const *args,
		       unsigned flags)
{
	/* Copied first: a restart may pass d->dir itself, which the memset clears. */
	char reuse[sizeof(d->dir)];
	if (dir_or_null)
		snprintf(reuse, sizeof(reuse), "%s", dir_or_null);
	memset(d, 0, sizeof(*d));
	d->pid = -1;
	d->notify_fd = -1;
	if (dir_or_null) {
		snprintf(d->dir, sizeof(d->dir), "%s", reuse);
	} else {
		char *dir = synth_mkdtemp("daemon");
		snprintf(d->dir, sizeof(d->dir), "%s", dir);
		free(dir);
	}
	snprintf(d->socket, sizeof(d->socket), "%s/sock", d->dir);
	snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
	snprintf(d->notify, sizeof(d->notify), "%s/notify", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/daemon.log", d->dir);

	unlink(d->notify);
	d->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (strlen(d->notify) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "notify socket path too long: %s\n", d->notify);
		return -1;
	}
	memcpy(addr.sun_path, d->notify, strlen(d->notify) + 1);
	if (d->notify_fd < 0 || bind(d->notify_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		fprintf(stderr, "notify socket %s: %s\n", d->notify, strerror(errno));
		return -1;
	}

	const char *argv[64];
	int argc = 0;
	argv[argc++] = ls_daemon_binary();
	argv[argc++] = "--socket";
	argv[argc++] = d->socket;
	argv[argc++] = "--state-dir";
	argv[argc++] = d->state;
	const char *want = NULL; /* the engine asked for, when not auto */
	for (int i = 0; args && args[i] && argc < 60; i++) {
		if (strcmp(args[i], "--event-loop") == 0 && args[i + 1])
			want = args[i + 1];
		argv[argc++] = args[i];
	}
	if (!want && ls_daemon_test_engine()) {
		want = ls_daemon_test_engine();
		argv[argc++] = "--event-loop";
		argv[argc++] = want;
	}
	if (want && strcmp(want, "auto") == 0)
		want = NULL;
	argv[argc] = NULL;

	d->pid = fork();
	if (d->pid == 0) {
		int log = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (log >= 0) {
			dup2(log, STDERR_FILENO);
			close(log);
		}
		setenv("NOTIFY_SOCKET", d->notify, 1);
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_PID");
		if ((flags & LS_DAEMON_NO_IO_URING) && ls_refuse_io_uring() != 0) {
			fprintf(stderr, "seccomp filter: %s\n", strerror(errno));
			_exit(126);
		}
		if ((flags & LS_DAEMON_NO_WX) && ls_seccomp_refuse_wx() != 0) {
			fprintf(stderr, "seccomp filter: %s\n", strerror(errno));
			_exit(126);
		}
		if (flags & LS_DAEMON_NOFILE_64) {
			struct rlimit rl = {.rlim_cur = 64, .rlim_max = 64};
			if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
				fprintf(stderr, "setrlimit: %s\n", strerror(errno));
				_exit(126);
			}
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (d->pid < 0)
		return -1;
	if (!ls_daemon_wait_notify(d, "READY=1", 10000)) {
		fprintf(stderr, "lorastored did not report READY=1 (log: %s)\n", d->log);
		char cmd[512];
		snprintf(cmd, sizeof(cmd), "tail -n 20 %s >&2", d->log);
		if (system(cmd)) {
		}
		if (d->pid > 0)
			ls_daemon_kill(d);
		return -1;
	}
	/* "serving, backend host, event loop epoll" */
	const char *e = strstr(d->status, "event loop ");
	if (e)
		snprintf(d->engine, sizeof(d->engine), "%.*s", (int)strcspn(e + 11, ", "), e + 11);
	if (want && strcmp(d->engine, want) != 0) {
		fprintf(stderr, "lorastored was asked for the %s event loop but reports '%s' (%s)\n",
			want, d->engine, d->status);
		ls_daemon_kill(d);
		return -1;
	}
	return 0;
}

static int ls_reap(struct ls_daemon_proc *d)
{
	int status = 0;
	if (d->pid <= 0)
		return -1;
	while (waitpid(d->pid, &status, 0) < 0 && errno == EINTR)
		;
	d->pid = -1;
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}

/* Seconds a daemon has to drain and exit after SIGTERM before it is killed. */
#define LS_STOP_WAIT_S 30

int ls_daemon_stop(struct ls_daemon_proc *d)
{
	if (d->pid <= 0)
		return -1;
	kill(d->pid, SIGTERM);
	/* Bounded: a daemon that does not drain is killed (and the status says so). */
	for (int i = 0; i < LS_STOP_WAIT_S * 100; i++) {
		int status = 0;
		pid_t r = waitpid(d->pid, &status, WNOHANG);
		if (r == d->pid) {
			d->pid = -1;
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		}
		if (r < 0 && errno != EINTR)
			break;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = 10000000};
		nanosleep(&ts, NULL);
	}
	fprintf(stderr, "lorastored (pid %d) did not exit within %d s of SIGTERM; killing it\n",
		(int)d->pid, LS_STOP_WAIT_S);
	kill(d->pid, SIGKILL);
	ls_reap(d);
	return 128 + SIGKILL;
}

void ls_daemon_kill(struct ls_daemon_proc *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGKILL);
	ls_reap(d);
}

void ls_daemon_cleanup(struct ls_daemon_proc *d)
{
	/*
	 * A daemon still running is stopped as in production, with SIGTERM,
	 * so that a sanitizer report (exit 66) or a failed drain is seen.
	 * Criterion does not count an assertion in a teardown, so that case
	 * aborts the test process, which fails the run.
	 */
	if (d->pid > 0) {
		fprintf(stderr, "teardown: lorastored (pid %d) still runs; stopping it with SIGTERM\n",
			(int)d->pid);
		int rc = ls_daemon_stop(d);
		if (rc != 0) {
			fprintf(stderr, "lorastored exited with %d when stopped at teardown (log %s)\n",
				rc, d->log);
			abort();
		}
	}
	if (d->notify_fd >= 0)
		close(d->notify_fd);
	d->notify_fd = -1;
	if (d->dir[0])
		synth_rm_rf(d->dir);
	d->dir[0] = '\0';
}
