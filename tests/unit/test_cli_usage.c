/*
 * The lorastore CLI's command line, without a daemon: the built CLI started
 * as a real process.  Bad usage exits 2 before any connection is tried;
 * --help exits 0 with the manual; a missing daemon exits 1 with
 * "lorastore: COMMAND: message" on standard error.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc_run.h"
#include "synth.h"

#define CLI LS_BINARY_DIR "/cli/lorastore"

static char *work_dir;
static char missing_socket[PATH_MAX];

static void setup(void)
{
	work_dir = synth_mkdtemp("cli-usage");
	snprintf(missing_socket, sizeof(missing_socket), "%s/no-daemon.sock", work_dir);
}

static void teardown(void)
{
	synth_rm_rf(work_dir);
	free(work_dir);
}

TestSuite(cli_usage, .init = setup, .fini = teardown);

struct run {
	int status;     /* exit status, or 128 + the signal that ended it */
	char *out;
	char *err;
};

/*
 * Run the CLI with args (NULL-terminated).  LORASTORE_SOCKET points at a
 * socket that does not exist, unless env_socket says otherwise, so that no
 * test ever reaches a daemon running on this machine.
 */
static struct run run_cli_env(const char *env_socket, const char *const *args)
{
	cr_assert(access(CLI, X_OK) == 0, "%s is not built", CLI);
	char *argv[16];
	size_t n = 0;
	argv[n++] = (char *)CLI;
	for (size_t i = 0; args[i]; i++) {
		cr_assert_lt(n, sizeof(argv) / sizeof(argv[0]) - 1);
		argv[n++] = (char *)args[i];
	}
	argv[n] = NULL;
	char env[PATH_MAX + 32];
	snprintf(env, sizeof(env), "LORASTORE_SOCKET=%s", env_socket ? env_socket : missing_socket);
	struct ls_proc_result pr;
	cr_assert_eq(ls_proc_run((const char *const *)argv, (const char *const[]){env, NULL},
				 work_dir, &pr),
		     0, "could not start %s", CLI);
	struct run r = {.status = pr.status, .out = pr.out, .err = pr.err};
	cr_assert_neq(r.status, 126, "could not redirect the CLI's output");
	cr_assert_neq(r.status, 127, "could not start %s", CLI);
	return r;
}

#define RUN(...) run_cli_env(NULL, (const char *const[]){__VA_ARGS__, NULL})

static void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
}

/* Exit 2, nothing on stdout, and stderr says what and gives a hint. */
static void assert_usage(struct run r, const char *what)
{
	cr_assert_eq(r.status, 2, "exit %d, stderr: %s", r.status, r.err);
	cr_assert_str_empty(r.out, "stdout: %s", r.out);
	cr_assert_not_null(strstr(r.err, what), "\"%s\" not in stderr: %s", what, r.err);
	cr_assert_not_null(strstr(r.err, "--help"), "no hint in stderr: %s", r.err);
	/* Usage is judged before any connection: no connect error. */
	cr_assert_null(strstr(r.err, "connect"), "a connection was tried: %s", r.err);
	run_free(&r);
}

Test(cli_usage, no_command_exits_2)
{
	assert_usage(RUN("--json"), "no command");
}

Test(cli_usage, unknown_command_exits_2)
{
	assert_usage(RUN("frobnicate"), "unknown command 'frobnicate'");
}

Test(cli_usage, unknown_global_option_exits_2)
{
	assert_usage(RUN("--frob", "ls"), "unknown option '--frob'");
}

Test(cli_usage, socket_option_without_a_path_exits_2)
{
	assert_usage(RUN("--socket"), "'--socket' needs an argument");
}

Test(cli_usage, commands_taking_a_ref_exit_2_without_one)
{
	static const char *const cmds[] = {"show", "rm", "load", "evict", "tag", "untag"};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		assert_usage(RUN(cmds[i]), cmds[i]);
}

Test(cli_usage, commands_exit_2_on_extra_operands)
{
	assert_usage(RUN("ls", "a", "b"), "unexpected argument 'b'");
	assert_usage(RUN("show", "a", "b"), "unexpected argument 'b'");
	assert_usage(RUN("rm", "a", "b"), "unexpected argument 'b'");
	assert_usage(RUN("tag", "a", "a:b", "c"), "unexpected argument 'c'");
	assert_usage(RUN("stats", "x"), "unexpected argument 'x'");
	assert_usage(RUN("gc", "x"), "unexpected argument 'x'");
	assert_usage(RUN("verify", "a", "b"), "unexpected argument 'b'");
}

Test(cli_usage, commands_exit_2_on_unknown_options)
{
	assert_usage(RUN("ls", "--long"), "ls: unknown option '--long'");
	assert_usage(RUN("stats", "-x"), "stats: unknown option '-x'");
	assert_usage(RUN("import", "--frob", "dir"), "import: unknown option '--frob'");
}

Test(cli_usage, rm_of_every_version_without_all_exits_2_off_a_terminal)
{
	assert_usage(RUN("rm", "t/a"), "--all");
	assert_usage(RUN("rm", "--all", "t/a@2"), "--all takes a NAME");
}

Test(cli_usage, import_without_a_directory_exits_2)
{
	assert_usage(RUN("import"), "no adapter directory");
	assert_usage(RUN("import", "--name", "t/a"), "no adapter directory");
}

Test(cli_usage, import_name_with_several_directories_exits_2)
{
	assert_usage(RUN("import", "a", "b", "--name", "t/x"), "--name");
	assert_usage(RUN("import", "--name", "t/x", "a", "b"), "--name");
}

Test(cli_usage, import_unknown_dtype_exits_2)
{
	assert_usage(RUN("import", "--dtype", "f64", "a"), "--dtype");
	assert_usage(RUN("import", "a", "--dtype=int8"), "--dtype");
}

Test(cli_usage, import_option_without_argument_exits_2)
{
	assert_usage(RUN("import", "a", "--name"), "'--name' needs an argument");
	assert_usage(RUN("import", "a", "--dtype"), "'--dtype' needs an argument");
}

Test(cli_usage, program_help_is_a_manual_listing_every_command)
{
	struct run r = RUN("--help");
	cr_assert_eq(r.status, 0);
	static const char *const want[] = {"NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS",
					   "LORASTORE_SOCKET", "--socket", "--json", "import",
					   "ls [--base-model MODEL] [PREFIX]", "show", "rm", "load",
					   "evict", "stats", "verify", "gc", "inspect", "tag", "untag",
					   "export"};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		cr_assert_not_null(strstr(r.out, want[i]), "\"%s\" not in --help", want[i]);
	cr_assert_str_empty(r.err);
	run_free(&r);
}

Test(cli_usage, every_command_has_its_own_help)
{
	static const char *const cmds[] = {"import", "ls", "show",   "rm", "load",    "evict",
					   "stats",  "verify", "gc", "inspect", "tag", "untag", "export"};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		struct run r = RUN(cmds[i], "--help");
		cr_assert_eq(r.status, 0, "%s --help: exit %d", cmds[i], r.status);
		char synopsis[64];
		snprintf(synopsis, sizeof(synopsis), " %s", cmds[i]);
		cr_assert_not_null(strstr(r.out, synopsis), "%s --help:\n%s", cmds[i], r.out);
		cr_assert_str_empty(r.err, "%s --help wrote to stderr: %s", cmds[i], r.err);
		run_free(&r);
		/* `lorastore help CMD` is the same manual. */
		r = RUN("help", cmds[i]);
		cr_assert_eq(r.status, 0, "help %s: exit %d", cmds[i], r.status);
		run_free(&r);
	}
}

Test(cli_usage, import_help_documents_its_options)
{
	struct run r = RUN("import", "--help");
	cr_assert_eq(r.status, 0);
	cr_assert_not_null(strstr(r.out, "--name"));
	cr_assert_not_null(strstr(r.out, "--dtype"));
	cr_assert_not_null(strstr(r.out, "--allow-nonfinite"));
	run_free(&r);
}

/* Exit 1 and "lorastore: CMD: connect to PATH: ..." on stderr. */
static void assert_no_daemon(struct run r, const char *cmd, const char *path)
{
	cr_assert_eq(r.status, 1, "%s: exit %d, stderr: %s", cmd, r.status, r.err);
	char prefix[PATH_MAX + 64];
	snprintf(prefix, sizeof(prefix), "lorastore: %s: connect to %s: ", cmd, path);
	cr_assert(strncmp(r.err, prefix, strlen(prefix)) == 0, "stderr: %s (wanted %s...)", r.err,
		  prefix);
	cr_assert_not_null(strstr(r.err, "No such file or directory"), "stderr: %s", r.err);
	run_free(&r);
}

Test(cli_usage, daemon_commands_without_a_daemon_exit_1_naming_the_socket)
{
	assert_no_daemon(RUN("ls"), "ls", missing_socket);
	assert_no_daemon(RUN("stats"), "stats", missing_socket);
	assert_no_daemon(RUN("show", "t/a"), "show", missing_socket);
	assert_no_daemon(RUN("rm", "t/a@2"), "rm", missing_socket);
	assert_no_daemon(RUN("gc"), "gc", missing_socket);
	assert_no_daemon(RUN("verify"), "verify", missing_socket);
	assert_no_daemon(RUN("import", "some-dir"), "import", missing_socket);
}

Test(cli_usage, socket_option_overrides_the_environment)
{
	char other[PATH_MAX];
	snprintf(other, sizeof(other), "%s/other.sock", work_dir);
	assert_no_daemon(RUN("--socket", other, "ls"), "ls", other);
	assert_no_daemon(RUN("--socket=" "/nonexistent/lorastore.sock", "stats"), "stats",
			 "/nonexistent/lorastore.sock");
}

Test(cli_usage, global_options_after_the_command_are_taken)
{
	char other[PATH_MAX];
	snprintf(other, sizeof(other), "%s/after.sock", work_dir);
	assert_no_daemon(RUN("ls", "--socket", other), "ls", other);
	assert_no_daemon(RUN("stats", "--json", "--socket=/nonexistent/x.sock"), "stats",
			 "/nonexistent/x.sock");
	assert_no_daemon(RUN("show", "t/a", "--connect-timeout", "50", "--socket", other), "show",
			 other);
	assert_usage(RUN("ls", "--socket"), "'--socket' needs an argument");
	struct run r = RUN("ls", "--connect-timeout", "soon");
	cr_assert_eq(r.status, 2, "exit %d: %s", r.status, r.err);
	cr_assert_not_null(strstr(r.err, "--connect-timeout needs milliseconds"), "%s", r.err);
	run_free(&r);
}

Test(cli_usage, every_option_of_a_command_is_in_its_synopsis)
{
	static const char *const cmds[] = {"import", "ls",   "show",   "rm",   "load",
					   "evict",  "stats", "verify", "gc",   "inspect",
					   "tag",    "untag", "export", "rebuild"};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		struct run r = RUN(cmds[i], "--help");
		cr_assert_eq(r.status, 0);
		const char *syn = strstr(r.out, "SYNOPSIS\n");
		cr_assert_not_null(syn, "%s --help has no SYNOPSIS:\n%s", cmds[i], r.out);
		const char *end = strstr(syn, "\n\n");
		size_t syn_len = end ? (size_t)(end - syn) : strlen(syn);
		for (const char *p = strstr(r.out, "--"); p; p = strstr(p + 2, "--")) {
			size_t n = 2;
			while ((p[n] >= 'a' && p[n] <= 'z') || p[n] == '-')
				n++;
			char opt[64];
			snprintf(opt, sizeof(opt), "%.*s", (int)n, p);
			if (n == 2 || strcmp(opt, "--help") == 0)
				continue;
			bool found = false;
			for (const char *q = syn; q && q < syn + syn_len; q = strstr(q + 1, opt))
				if ((size_t)(q - syn) < syn_len && strncmp(q, opt, n) == 0 &&
				    !((q[n] >= 'a' && q[n] <= 'z') || q[n] == '-'))
					found = true;
			cr_assert(found, "%s --help names %s but its synopsis does not:\n%.*s",
				  cmds[i], opt, (int)syn_len, syn);
		}
		run_free(&r);
	}
}

Test(cli_usage, inspect_still_works_without_a_daemon)
{
	struct run r = RUN("inspect", work_dir);
	/* An empty directory is no adapter: exit 1, but from inspect, not from a connect. */
	cr_assert_eq(r.status, 1, "exit %d, stderr: %s", r.status, r.err);
	cr_assert_null(strstr(r.err, "connect"), "inspect tried a daemon: %s", r.err);
	run_free(&r);
}
