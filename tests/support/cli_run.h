/*
 * The CLI as a real process for integration tests: run against a daemon's
 * socket, its exit status and what it printed captured.
 */
#ifndef LS_CLI_RUN_H
#define LS_CLI_RUN_H

struct ls_cli_result {
	int status;     /* exit status; 128 + signal when killed */
	char *out;      /* standard output, NUL-terminated */
	char *err;      /* standard error */
};

/*
 * Run `lorastore --socket SOCKET args...` (args NULL-terminated) with
 * standard input from /dev/null and $LORASTORE_SOCKET unset; scratch is a
 * directory for the captured output.  Returns 0, or -1 when the process
 * could not be started (the reason on stderr).
 */
int ls_cli_run(const char *socket, const char *scratch, const char *const *args,
	       struct ls_cli_result *r);

void ls_cli_result_free(struct ls_cli_result *r);

#endif
