/*
 * A real lorastored for integration tests: started as a child process on a
 * temporary socket and state directory, ready when it says READY=1 on a
 * NOTIFY_SOCKET the test owns (as systemd would see it).
 */
#ifndef LS_DAEMON_PROC_H
#define LS_DAEMON_PROC_H

#include <stdbool.h>
#include <sys/types.h>

struct ls_daemon_proc {
	pid_t pid;
	char dir[256];          /* temporary directory holding what follows */
	char socket[300];       /* dir/sock */
	char state[300];        /* dir/state */
	char notify[300];       /* dir/notify: the NOTIFY_SOCKET */
	char log[300];          /* dir/daemon.log: its standard error */
	int notify_fd;
	char status[256];       /* last STATUS= it sent */
	char engine[16];        /* the event-loop engine it reported at READY */
};

/*
 * Start lorastored with extra arguments (NULL-terminated, may be NULL) and
 * wait up to 10 s for READY=1.  dir_or_null reuses a directory (for restarts);
 * NULL makes a new one.  Returns 0, or -1 with the reason on stderr.
 *
 * The event-loop engine: LS_TEST_EVENT_LOOP (io_uring or epoll; ctest runs
 * every daemon test once with each) adds --event-loop unless args name one.
 * Whichever engine was asked for, the start fails unless the daemon's READY
 * status names that engine, so a run proves the engine it claims.
 */
int ls_daemon_start(struct ls_daemon_proc *d, const char *dir_or_null, const char *const *args);

/* What ls_daemon_start_ex does besides. */
enum ls_daemon_flags {
	/*
	 * Refuse io_uring_setup, io_uring_enter and io_uring_register with
	 * EPERM through a seccomp filter, as Docker's default profile does.
	 */
	LS_DAEMON_NO_IO_URING = 1,
	/* A descriptor limit of 64, soft and hard (as prlimit --nofile=64:64). */
	LS_DAEMON_NOFILE_64 = 2,
	/*
	 * No writable and executable memory, refused with EPERM as systemd's
	 * MemoryDenyWriteExecute=yes of lorastored.service refuses it: mmap
	 * with PROT_WRITE and PROT_EXEC, mprotect and pkey_mprotect to
	 * PROT_EXEC, shmat with SHM_EXEC.
	 */
	LS_DAEMON_NO_WX = 4,
};

/* LS_DAEMON_NO_WX's filter, applied to the calling process (for tests of the filter). */
int ls_seccomp_refuse_wx(void);

int ls_daemon_start_ex(struct ls_daemon_proc *d, const char *dir_or_null, const char *const *args,
		       unsigned flags);

/* The engine this run asks daemons for: LS_TEST_EVENT_LOOP, or NULL (the default, auto). */
const char *ls_daemon_test_engine(void);

/*
 * SIGTERM and wait up to 30 s; returns the exit status (or 128 + signal;
 * 128 + SIGKILL when it had to be killed).
 */
int ls_daemon_stop(struct ls_daemon_proc *d);

/* SIGKILL and wait. */
void ls_daemon_kill(struct ls_daemon_proc *d);

/* Wait up to timeout_ms for a notify message containing text (e.g. "STOPPING=1"). */
bool ls_daemon_wait_notify(struct ls_daemon_proc *d, const char *text, int timeout_ms);

/*
 * Remove the directory (after stop or kill).  A daemon still running is
 * stopped with SIGTERM first, and one that does not exit 0 then aborts the
 * calling process: a test cannot pass on a daemon that failed its stop.
 */
void ls_daemon_cleanup(struct ls_daemon_proc *d);

/* Path of the built daemon and CLI (LS_BINARY_DIR, or $LS_TEST_BINARY_DIR when set). */
const char *ls_daemon_binary(void);
const char *ls_cli_binary(void);

#endif
