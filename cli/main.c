/* lorastore: manage lorastore adapters.  Global options, then a command. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char ls_usage[] =
	"NAME\n"
	"    lorastore - manage the LoRA adapters of lorastored\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--socket PATH] [--connect-timeout MS] [--json] COMMAND [ARGS...]\n"
	"    lorastore COMMAND --help\n"
	"    lorastore --help | --version\n"
	"\n"
	"DESCRIPTION\n"
	"    lorastore imports Hugging Face PEFT adapters into lorastored, lists,\n"
	"    shows, loads, evicts and deletes them, and reports the daemon's memory\n"
	"    and counters.  Every command but inspect talks to the daemon over its\n"
	"    Unix socket.\n"
	"\n"
	"OPTIONS (before or after the command)\n"
	"    --socket PATH\n"
	"        The daemon's socket.  Default: $LORASTORE_SOCKET, else\n"
	"        " LORASTORE_DEFAULT_SOCKET ".\n"
	"    --connect-timeout MS\n"
	"        Give up when the daemon has not accepted the connection and\n"
	"        answered its handshake within MS milliseconds (default\n"
	"        $LORASTORE_CONNECT_TIMEOUT_MS, else 10000).  A refusal (the\n"
	"        daemon serves its --max-clients, or ran out of descriptors) is\n"
	"        reported at once.\n"
	"    --json\n"
	"        Print one JSON document on standard output instead of text.\n"
	"    -h, --help\n"
	"        Print this manual and exit.\n"
	"    --version\n"
	"        Print the version and exit.\n"
	"\n"
	"COMMANDS\n"
	"    import DIR... [--name NAME] [--dtype keep|f16|bf16|f32] [--allow-nonfinite]\n"
	"           [--allow-new-base]\n"
	"        Import PEFT adapter directories as new versions (needs an admin).\n"
	"    ls [--base-model MODEL] [PREFIX]\n"
	"        List every version whose name begins with PREFIX.\n"
	"    ls --origin [PREFIX]\n"
	"        List the versions the daemon's origin (an object store) has.\n"
	"    show NAME[@V]\n"
	"        Show one version's record and its tensor table.\n"
	"    rm NAME@V | rm --all NAME\n"
	"        Delete one version, or every version of NAME (needs an admin).\n"
	"    tag NAME[@V] ALIAS\n"
	"        Point an alias (NAME:TAG) at a version (needs an admin).\n"
	"    untag ALIAS\n"
	"        Remove an alias (needs an admin).\n"
	"    export NAME[@V] DIR\n"
	"        Write a version as a PEFT directory (config and safetensors).\n"
	"    load NAME[@V]\n"
	"        Make a version resident without holding it.\n"
	"    evict NAME[@V]\n"
	"        Drop a version from memory (needs an admin; refused while held).\n"
	"    stats\n"
	"        Memory tiers, budgets, clients, leases and counters.\n"
	"    verify [NAME[@V]]\n"
	"        Check the blobs of one adapter, or of all, against their checksums.\n"
	"    gc\n"
	"        Remove unreferenced blobs and what interrupted imports left.\n"
	"    rebuild\n"
	"        Build the catalog again from ref files and blobs (needs an admin).\n"
	"    push NAME[@V]\n"
	"        Upload versions of this node into the daemon's origin (needs an admin).\n"
	"    pull NAME[@V]\n"
	"        Bring a version of the daemon's origin onto this node.\n"
	"    inspect [--allow-nonfinite] DIR\n"
	"        Validate a PEFT adapter directory without a daemon.\n"
	"\n"
	"    'lorastore COMMAND --help' prints the manual of a command.\n"
	"\n"
	"ENVIRONMENT\n"
	"    LORASTORE_SOCKET\n"
	"        The daemon's socket when --socket is not given.\n"
	"    LORASTORE_CONNECT_TIMEOUT_MS\n"
	"        The connect and handshake limit when --connect-timeout is not\n"
	"        given (0: no limit).\n"
	"\n"
	"EXIT STATUS\n"
	"    0   success\n"
	"    1   error: invalid input, a refusal of the daemon, or a failure\n"
	"        (message on standard error: 'lorastore: COMMAND: MESSAGE')\n"
	"    2   bad usage\n";

struct ls_command {
	const char *name;
	int (*run)(const struct ls_cli *cli, int argc, char **argv);
};

static const struct ls_command ls_commands[] = {
	{"import", ls_cmd_import}, {"ls", ls_cmd_ls},         {"show", ls_cmd_show},
	{"rm", ls_cmd_rm},         {"load", ls_cmd_load},     {"evict", ls_cmd_evict},
	{"stats", ls_cmd_stats},   {"verify", ls_cmd_verify}, {"gc", ls_cmd_gc},
	{"rebuild", ls_cmd_rebuild}, {"tag", ls_cmd_tag},     {"untag", ls_cmd_untag},
	{"export", ls_cmd_export}, {"push", ls_cmd_push},     {"pull", ls_cmd_pull},
	{"inspect", ls_cmd_inspect},
};

static const struct ls_command *ls_command_find(const char *name)
{
	for (size_t i = 0; i < sizeof(ls_commands) / sizeof(ls_commands[0]); i++)
		if (strcmp(ls_commands[i].name, name) == 0)
			return &ls_commands[i];
	return NULL;
}

int ls_cli_usage_error(const struct ls_cli *cli, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "lorastore: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'lorastore --help'.\n");
	(void)cli;
	return LS_EXIT_USAGE;
}

int ls_cli_cmd_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "lorastore: %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'lorastore %s --help'.\n", cmd);
	return LS_EXIT_USAGE;
}

/* --socket's argument: 0, or a usage error's exit status. */
static int ls_set_socket(struct ls_cli *cli, const char *path)
{
	if (!*path)
		return ls_cli_usage_error(cli, "--socket needs a path");
	cli->socket = path;
	return 0;
}

/* --connect-timeout's argument: 0, or a usage error's exit status. */
static int ls_set_timeout(struct ls_cli *cli, const char *arg)
{
	char *end;
	errno = 0;
	long ms = strtol(arg, &end, 10);
	if (!*arg || *end || errno || ms < 1 || ms > INT_MAX)
		return ls_cli_usage_error(cli, "--connect-timeout needs milliseconds (1 or more), "
					  "not '%s'",
					  arg);
	cli->connect_timeout_ms = (int)ms;
	return 0;
}

/*
 * The global options given after the command (lorastore ls --json): taken
 * out of the command's arguments (up to a "--") and applied.  0, or a usage
 * error's exit status.
 */
static int ls_take_global_options(struct ls_cli *cli, int *argc, char **argv)
{
	int out = 1;
	for (int i = 1; i < *argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			while (i < *argc)
				argv[out++] = argv[i++];
			break;
		}
		int rc = -1;
		if (strcmp(a, "--json") == 0) {
			cli->json = true;
			rc = 0;
		} else if (strncmp(a, "--socket=", 9) == 0) {
			rc = ls_set_socket(cli, a + 9);
		} else if (strncmp(a, "--connect-timeout=", 18) == 0) {
			rc = ls_set_timeout(cli, a + 18);
		} else if (strcmp(a, "--socket") == 0 || strcmp(a, "--connect-timeout") == 0) {
			if (i + 1 >= *argc)
				return ls_cli_usage_error(cli, "option '%s' needs an argument", a);
			rc = a[2] == 's' ? ls_set_socket(cli, argv[++i]) : ls_set_timeout(cli, argv[++i]);
		}
		if (rc > 0)
			return rc;
		if (rc < 0)
			argv[out++] = argv[i];
	}
	argv[out] = NULL;
	*argc = out;
	return 0;
}

int main(int argc, char **argv)
{
	struct ls_cli cli = {.json = false, .prog = argv[0], .socket = NULL};
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"socket", required_argument, NULL, 's'},
		{"connect-timeout", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	/* '+' stops at the command: its own options belong to it.  ':' tells a
	 * missing argument apart from an unknown option. */
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			cli.json = true;
			break;
		case 's':
		case 't': {
			int st = c == 's' ? ls_set_socket(&cli, optarg) : ls_set_timeout(&cli, optarg);
			if (st)
				return st;
			break;
		}
		case 'h':
			fputs(ls_usage, stdout);
			return LS_EXIT_OK;
		case 'V':
			printf("lorastore %s\n", LS_VERSION);
			return LS_EXIT_OK;
		case ':':
			return ls_cli_usage_error(&cli, "option '%s' needs an argument",
						  argv[optind - 1]);
		default:
			return ls_cli_usage_error(&cli, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return ls_cli_usage_error(&cli, "no command given");
	const char *cmd = argv[optind];
	int cargc = argc - optind;
	char **cargv = argv + optind;
	int gst = ls_take_global_options(&cli, &cargc, cargv);
	if (gst)
		return gst;
	/*
	 * Each command parses its own arguments from cargv[1]; optind 0 makes
	 * glibc start afresh, in its default order (options may follow operands).
	 */
	optind = 0;
	if (strcmp(cmd, "help") == 0) {
		const struct ls_command *sub = cargc > 1 ? ls_command_find(cargv[1]) : NULL;
		if (sub) {
			char *help_argv[] = {cargv[1], "--help", NULL};
			return sub->run(&cli, 2, help_argv);
		}
		if (cargc > 1)
			return ls_cli_usage_error(&cli, "unknown command '%s'", cargv[1]);
		fputs(ls_usage, stdout);
		return LS_EXIT_OK;
	}
	const struct ls_command *command = ls_command_find(cmd);
	if (!command)
		return ls_cli_usage_error(&cli, "unknown command '%s'", cmd);
	return command->run(&cli, cargc, cargv);
}
