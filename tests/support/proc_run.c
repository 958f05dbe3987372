/* Programs as real processes, their output captured (proc_run.h). */
#include "proc_run.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_proc.h"

static char *ls_read_whole(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return strdup("");
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc(len > 0 ? (size_t)len + 1 : 1);
	size_t got = buf && len > 0 ? fread(buf, 1, (size_t)len, f) : 0;
	if (buf)
		buf[got] = '\0';
	fclose(f);
	return buf;
}

pid_t ls_proc_spawn(const char *const *argv, const char *const *env, const char *out_path,
		    const char *err_path)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		return -1;
	}
	if (pid > 0)
		return pid;
	int in = open("/dev/null", O_RDONLY);
	int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (in < 0 || out < 0 || err < 0)
		_exit(126);
	dup2(in, STDIN_FILENO);
	dup2(out, STDOUT_FILENO);
	dup2(err, STDERR_FILENO);
	unsetenv("NOTIFY_SOCKET");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_PID");
	for (int i = 0; env && env[i]; i++) {
		const char *eq = strchr(env[i], '=');
		if (eq) {
			char key[128];
			snprintf(key, sizeof(key), "%.*s", (int)(eq - env[i]), env[i]);
			setenv(key, eq + 1, 1);
		} else {
			unsetenv(env[i]);
		}
	}
	execvp(argv[0], (char *const *)argv);
	fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

int ls_proc_wait(pid_t pid)
{
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int ls_proc_run(const char *const *argv, const char *const *env, const char *scratch,
		struct ls_proc_result *r)
{
	static unsigned seq;
	memset(r, 0, sizeof(*r));
	char out_path[PATH_MAX], err_path[PATH_MAX];
	snprintf(out_path, sizeof(out_path), "%s/run-%d-%u.out", scratch, (int)getpid(), seq);
	snprintf(err_path, sizeof(err_path), "%s/run-%d-%u.err", scratch, (int)getpid(), seq);
	seq++;
	pid_t pid = ls_proc_spawn(argv, env, out_path, err_path);
	if (pid < 0)
		return -1;
	r->status = ls_proc_wait(pid);
	r->out = ls_read_whole(out_path);
	r->err = ls_read_whole(err_path);
	unlink(out_path);
	unlink(err_path);
	return 0;
}

int ls_cli_run(const char *socket, const char *scratch, const char *const *args,
	       struct ls_proc_result *r)
{
	const char *argv[64];
	int n = 0;
	argv[n++] = ls_cli_binary();
	argv[n++] = "--socket";
	argv[n++] = socket;
	for (int i = 0; args[i] && n < 63; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	return ls_proc_run(argv, (const char *const[]){"LORASTORE_SOCKET", NULL}, scratch, r);
}

void ls_proc_result_free(struct ls_proc_result *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}
