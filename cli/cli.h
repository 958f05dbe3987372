/* The lorastore command-line tool: shared declarations of its commands. */
#ifndef LS_CLI_H
#define LS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Exit statuses: 0 success, 1 error (message on stderr), 2 bad usage. */
enum { LS_EXIT_OK = 0, LS_EXIT_ERROR = 1, LS_EXIT_USAGE = 2 };

/* Options that come before the command. */
struct ls_cli {
	bool json;                 /* --json: one JSON document on stdout */
	const char *prog;          /* argv[0] for messages */
};

/* Print a usage error ("lorastore: ...", then a hint) and return LS_EXIT_USAGE. */
int ls_cli_usage_error(const struct ls_cli *cli, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Format a byte count as "32.0 MiB" (binary units, one decimal). */
void ls_format_size(uint64_t bytes, char *buf, size_t len);

/* lorastore inspect DIR */
int ls_cmd_inspect(const struct ls_cli *cli, int argc, char **argv);

#endif
