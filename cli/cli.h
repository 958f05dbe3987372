/* The lorastore command-line tool: shared declarations of its commands. */
#ifndef LS_CLI_H
#define LS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "lorastore.h"
#include "ls_size.h"

/* Exit statuses: 0 success, 1 error (message on stderr), 2 bad usage. */
enum { LS_EXIT_OK = 0, LS_EXIT_ERROR = 1, LS_EXIT_USAGE = 2 };

/* Options that come before the command. */
struct ls_cli {
	bool json;                 /* --json: one JSON document on stdout */
	const char *prog;          /* argv[0] for messages */
	const char *socket;        /* --socket PATH, or NULL: $LORASTORE_SOCKET, the default */
	int connect_timeout_ms;    /* --connect-timeout; 0: $LORASTORE_CONNECT_TIMEOUT_MS or 10 s */
};

/* Print a usage error ("lorastore: ...", then a hint) and return LS_EXIT_USAGE. */
int ls_cli_usage_error(const struct ls_cli *cli, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Same for a command: "lorastore: CMD: ...", then "Try 'lorastore CMD --help'." */
int ls_cli_cmd_usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));


/* ---- output.c: what the daemon commands share */

/*
 * Parse a command that takes no option but --help and between min and max
 * operands (max < 0: any number).  Returns -1 to go on (operands from
 * argv[optind]), or an exit status: LS_EXIT_OK after --help, LS_EXIT_USAGE.
 */
int ls_cli_parse_plain(const char *cmd, const char *help, int argc, char **argv, int min,
		       int max);

/* Connect as the global options say; prints the failure and returns LS_EXIT_ERROR. */
int ls_cli_connect(const struct ls_cli *cli, const char *cmd, lorastore **out);

/*
 * msg without what the CLI's own "lorastore: CMD: SUBJECT: " says already: a
 * leading "CMD: " or "SUBJECT: " (subject may be NULL), so each is said once.
 */
const char *ls_cli_message(const char *cmd, const char *subject, const char *msg);

/* Print "lorastore: CMD: message" for rc on conn; returns LS_EXIT_ERROR. */
int ls_cli_fail(const char *cmd, const lorastore *conn, int rc);

/*
 * The fields of one version into o: the same set for ls, show and import,
 * and the same as the Python package's dicts (python/tests/test_catalog.py).
 */
void ls_json_entry(cJSON *o, const lorastore_entry *e);

/* Print doc on stdout, delete it; LS_EXIT_OK, or LS_EXIT_ERROR when out of memory. */
int ls_json_emit(cJSON *doc);

/* Text of a kind: "A", "B", "extra", "magnitude" ("?" otherwise). */

/* "[8, 4096]" */
void ls_format_shape(const uint64_t *shape, unsigned ndim, char *buf, size_t len);

/* "2024-05-01 12:00:00 UTC" (iso false) or "2024-05-01T12:00:00Z" (iso true). */
void ls_format_time(int64_t unix_ns, bool iso, char *buf, size_t len);

/* The EXIT STATUS section of a command's manual. */
#define LS_EXIT_STATUS_TEXT                                                               \
	"EXIT STATUS\n"                                                                   \
	"    0 success, 1 error (message on standard error), 2 bad usage.\n"

/* ---- commands */

/* lorastore inspect DIR */
int ls_cmd_inspect(const struct ls_cli *cli, int argc, char **argv);
/* lorastore import DIR... [--name NAME] [--dtype D] [--allow-nonfinite] */
int ls_cmd_import(const struct ls_cli *cli, int argc, char **argv);
/* lorastore ls [PREFIX] */
int ls_cmd_ls(const struct ls_cli *cli, int argc, char **argv);
/* lorastore show NAME[@V] */
int ls_cmd_show(const struct ls_cli *cli, int argc, char **argv);
/* lorastore rm [--all] NAME[@V], tag NAME[@V] ALIAS, untag ALIAS (catalog_cmds.c) */
int ls_cmd_rm(const struct ls_cli *cli, int argc, char **argv);
int ls_cmd_tag(const struct ls_cli *cli, int argc, char **argv);
int ls_cmd_untag(const struct ls_cli *cli, int argc, char **argv);
/* lorastore export NAME[@V] DIR (catalog_cmds.c) */
int ls_cmd_export(const struct ls_cli *cli, int argc, char **argv);
/* lorastore load | evict NAME[@V] */
int ls_cmd_load(const struct ls_cli *cli, int argc, char **argv);
int ls_cmd_evict(const struct ls_cli *cli, int argc, char **argv);
/* lorastore stats */
int ls_cmd_stats(const struct ls_cli *cli, int argc, char **argv);
/* lorastore verify [NAME[@V]] */
int ls_cmd_verify(const struct ls_cli *cli, int argc, char **argv);
/* lorastore gc */
int ls_cmd_gc(const struct ls_cli *cli, int argc, char **argv);
int ls_cmd_rebuild(const struct ls_cli *cli, int argc, char **argv);

/* lorastore push NAME[@V], pull NAME[@V]; ls --origin [PREFIX] (origin_cmds.c) */
int ls_cmd_push(const struct ls_cli *cli, int argc, char **argv);
int ls_cmd_pull(const struct ls_cli *cli, int argc, char **argv);
int ls_ls_origin(const struct ls_cli *cli, const char *prefix);

#endif
