/*
 * Programs as real processes for integration tests: started with their
 * output captured to files, waited for, and the CLI run against a daemon.
 */
#ifndef LS_PROC_RUN_H
#define LS_PROC_RUN_H

#include <sys/types.h>

struct ls_proc_result {
	int status;     /* exit status; 128 + signal when killed */
	char *out;      /* standard output, NUL-terminated */
	char *err;      /* standard error */
};

/*
 * Start argv[0] (looked up in PATH) with standard input from /dev/null and
 * standard output and error going to out_path and err_path.  env holds
 * "KEY=VALUE" to set and "KEY" to unset; the child never inherits the
 * test's NOTIFY_SOCKET or LISTEN_FDS.  Returns the pid, or -1 when fork
 * failed (the reason on stderr).  An exec that fails exits 127.
 */
pid_t ls_proc_spawn(const char *const *argv, const char *const *env, const char *out_path,
		    const char *err_path);

/* Wait for pid: its exit status, or 128 + the signal that ended it. */
int ls_proc_wait(pid_t pid);

/*
 * Run argv to its end as ls_proc_spawn starts it, its output captured in
 * scratch (a directory) and read back.  Returns 0, or -1 when it could not
 * be started.
 */
int ls_proc_run(const char *const *argv, const char *const *env, const char *scratch,
		struct ls_proc_result *r);

/* Run `lorastore --socket SOCKET args...` with $LORASTORE_SOCKET unset. */
int ls_cli_run(const char *socket, const char *scratch, const char *const *args,
	       struct ls_proc_result *r);

void ls_proc_result_free(struct ls_proc_result *r);

#endif
