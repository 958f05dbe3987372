/*
 * The CLI commands on names and versions as a whole: rm (delete versions),
 * tag and untag (aliases), export (a version as a PEFT directory).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char ls_rm_help[] =
	"NAME\n"
	"    lorastore rm - delete adapter versions\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] rm NAME@V\n"
	"    lorastore [--json] rm --all NAME\n"
	"\n"
	"DESCRIPTION\n"
	"    Delete version V of NAME, or with --all every version of NAME.  NAME\n"
	"    alone without --all asks for a confirmation when standard input and\n"
	"    standard error are a terminal, and is refused otherwise.  A version\n"
	"    an alias points at is not deleted (move or untag the alias first).  A\n"
	"    version held by a client stays in memory until its last lease ends.\n"
	"    The blob files no version uses any more are removed from disk at\n"
	"    once.  Version numbers are never reused.  Prints\n"
	"        deleted NAME (N versions, SIZE; SIZE freed on disk)\n"
	"    When the daemon has an origin (an S3-compatible object store shared by\n"
	"    a fleet), the versions' records are deleted from it too, so that no\n"
	"    node pulls them again (nodes that have them keep them until they\n"
	"    delete them), and a version only the origin has is deleted there:\n"
	"        deleted NAME (...); M versions from the origin s3://...\n"
	"    When the origin cannot be reached the local delete stands, the\n"
	"    origin's error is printed, the exit status is 1, and running rm again\n"
	"    finishes it.  With --json: {\"ref\", \"result\", \"versions\",\n"
	"    \"blob_bytes\", \"freed_bytes\", \"origin\", \"origin_versions\",\n"
	"    \"origin_error\"} (\"origin\" null without one).  Needs an admin peer\n"
	"    (root, the daemon's user, or its admin group).\n"
	"\n"
	"OPTIONS\n"
	"    -a, --all\n"
	"        Delete every version of NAME.\n"
	"    -h, --help\n"
	"        Print this manual.\n"
	"\n"
	"EXIT STATUS\n"
	"    0 success, 1 error (message on standard error), 2 bad usage.\n";

static const char ls_tag_help[] =
	"NAME\n"
	"    lorastore tag - point an alias at an adapter version\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] tag NAME[@V] ALIAS\n"
	"\n"
	"DESCRIPTION\n"
	"    Point ALIAS at version V of NAME (its latest version now, without @V):\n"
	"    the alias is created, or moved from the version it named, atomically.\n"
	"    An alias is NAME:TAG (for example acme/support:prod), TAG 1 to 64\n"
	"    characters of A-Z a-z 0-9 . _ -; it is taken wherever a version is\n"
	"    (acquire, load, show, the vLLM plugin), and lorastore ls lists it\n"
	"    beside its version.  A version an alias points at cannot be deleted.\n"
	"    Prints: ALIAS -> NAME@V.  With --json: {\"alias\", \"name\", \"version\",\n"
	"    \"digest\"}.  Needs an admin peer.\n"
	"\n"
	"EXIT STATUS\n"
	"    0 success, 1 error (message on standard error), 2 bad usage.\n";

static const char ls_untag_help[] =
	"NAME\n"
	"    lorastore untag - remove an alias\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] untag ALIAS\n"
	"\n"
	"DESCRIPTION\n"
	"    Remove ALIAS (NAME:TAG); the version it pointed at is unchanged.\n"
	"    Prints: untagged ALIAS.  With --json: {\"alias\", \"result\"}.  Needs an\n"
	"    admin peer.\n"
	"\n"
	"EXIT STATUS\n"
	"    0 success, 1 error (message on standard error), 2 bad usage.\n";

/*
 * The versions of name and their blob bytes (a shared blob counted per
 * version: an estimate for the question), for the confirmation.
 */
static int ls_rm_count(lorastore *conn, const char *name, size_t *versions, uint64_t *bytes)
{
	*versions = 0;
	*bytes = 0;
	const char *cursor = NULL;
	lorastore_list *l = NULL, *prev = NULL;
	for (;;) {
		int rc = lorastore_list_page(conn, name, cursor, 0, &l);
		lorastore_list_free(prev);
		if (rc)
			return rc;
		for (size_t i = 0; i < lorastore_list_count(l); i++) {
			const lorastore_entry *e = lorastore_list_entry(l, i);
			if (strcmp(e->name, name) == 0) {
				(*versions)++;
				*bytes += e->blob_bytes;
			}
		}
		cursor = lorastore_list_next(l);
		prev = l;
		if (!cursor)
			break;
	}
	lorastore_list_free(prev);
	return 0;
}

/* Ask on the terminal whether every version of name goes; true for yes. */
static bool ls_rm_confirm(lorastore *conn, const char *name)
{
	size_t versions;
	uint64_t bytes;
	if (ls_rm_count(conn, name, &versions, &bytes) || versions == 0)
		return true; /* the delete itself says what is wrong */
	char size[32];
	ls_format_size(bytes, size, sizeof(size));
	fprintf(stderr, "lorastore: rm: delete every version of %s (%zu version%s, %s)? [y/N] ",
		name, versions, versions == 1 ? "" : "s", size);
	fflush(stderr);
	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		return false;
	return line[0] == 'y' || line[0] == 'Y';
}

int ls_cmd_rm(const struct ls_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
		{"all", no_argument, NULL, 'a'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	bool all = false;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "ah", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(ls_rm_help, stdout);
			return LS_EXIT_OK;
		}
		if (c == 'a')
			all = true;
		else
			return ls_cli_cmd_usage_error("rm", "unknown option '%s'", argv[optind - 1]);
	}
	if (argc - optind < 1)
		return ls_cli_cmd_usage_error("rm", "missing NAME@V (or --all NAME)");
	if (argc - optind > 1)
		return ls_cli_cmd_usage_error("rm", "unexpected argument '%s'", argv[optind + 1]);
	const char *ref = argv[optind];
	bool whole = !strchr(ref, '@') && !strchr(ref, ':');
	if (all && !whole)
		return ls_cli_cmd_usage_error("rm", "--all takes a NAME without @V");
	bool ask = whole && !all;
	if (ask && !(isatty(STDIN_FILENO) && isatty(STDERR_FILENO)))
		return ls_cli_cmd_usage_error("rm", "'%s' names every version of it: pass --all "
					      "to delete them all, or NAME@V for one",
					      ref);
	lorastore *conn;
	if (ls_cli_connect(cli, "rm", &conn))
		return LS_EXIT_ERROR;
	if (ask && !ls_rm_confirm(conn, ref)) {
		fprintf(stderr, "lorastore: rm: nothing deleted\n");
		lorastore_close(conn);
		return LS_EXIT_ERROR;
	}
	lorastore_delete_result r;
	int rc = lorastore_delete_report(conn, ref, &r);
	int st = LS_EXIT_OK;
	if (rc) {
		st = ls_cli_fail("rm", conn, rc);
	} else if (cli->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "ref", ref);
		cJSON_AddStringToObject(o, "result", "deleted");
		cJSON_AddNumberToObject(o, "versions", r.versions);
		cJSON_AddNumberToObject(o, "blob_bytes", (double)r.blob_bytes);
		cJSON_AddNumberToObject(o, "freed_bytes", (double)r.freed_bytes);
		if (r.origin[0]) {
			cJSON_AddStringToObject(o, "origin", r.origin);
			cJSON_AddNumberToObject(o, "origin_versions", r.origin_versions);
			cJSON_AddStringToObject(o, "origin_error", r.origin_error);
		} else {
			cJSON_AddNullToObject(o, "origin");
		}
		st = ls_json_emit(o);
	} else {
		char size[32], freed[32];
		ls_format_size(r.blob_bytes, size, sizeof(size));
		ls_format_size(r.freed_bytes, freed, sizeof(freed));
		printf("deleted %s (%u version%s, %s; %s freed on disk)", ref, r.versions,
		       r.versions == 1 ? "" : "s", size, freed);
		if (r.origin[0] && !r.origin_error[0])
			printf("; %u version%s from the origin %s", r.origin_versions,
			       r.origin_versions == 1 ? "" : "s", r.origin);
		printf("\n");
	}
	if (rc == 0 && r.origin_error[0]) {
		fprintf(stderr, "lorastore: rm: not deleted from the origin: %s; run rm again\n",
			r.origin_error);
		st = LS_EXIT_ERROR;
	}
	lorastore_close(conn);
	return st;
}

int ls_cmd_tag(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("tag", ls_tag_help, argc, argv, 2, 2);
	if (st >= 0)
		return st;
	const char *ref = argv[optind], *alias = argv[optind + 1];
	lorastore *conn;
	if (ls_cli_connect(cli, "tag", &conn))
		return LS_EXIT_ERROR;
	lorastore_list *l = NULL;
	int rc = lorastore_tag(conn, alias, ref, &l);
	if (rc) {
		st = ls_cli_fail("tag", conn, rc);
	} else {
		const lorastore_entry *e = lorastore_list_entry(l, 0);
		if (cli->json) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "alias", alias);
			cJSON_AddStringToObject(o, "name", e->name);
			cJSON_AddNumberToObject(o, "version", e->version);
			cJSON_AddStringToObject(o, "digest", e->digest);
			st = ls_json_emit(o);
		} else {
			printf("%s -> %s@%u\n", alias, e->name, e->version);
			st = LS_EXIT_OK;
		}
	}
	lorastore_list_free(l);
	lorastore_close(conn);
	return st;
}

int ls_cmd_untag(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("untag", ls_untag_help, argc, argv, 1, 1);
	if (st >= 0)
		return st;
	const char *alias = argv[optind];
	lorastore *conn;
	if (ls_cli_connect(cli, "untag", &conn))
		return LS_EXIT_ERROR;
	int rc = lorastore_untag(conn, alias);
	if (rc) {
		st = ls_cli_fail("untag", conn, rc);
	} else if (cli->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "alias", alias);
		cJSON_AddStringToObject(o, "result", "untagged");
		st = ls_json_emit(o);
	} else {
		printf("untagged %s\n", alias);
		st = LS_EXIT_OK;
	}
	lorastore_close(conn);
	return st;
}

static const char ls_export_help[] =
	"NAME\n"
	"    lorastore export - write an adapter version as a PEFT directory\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] export NAME[@V] DIR\n"
	"\n"
	"DESCRIPTION\n"
	"    Write version V of NAME (its latest version without @V; an alias\n"
	"    names its version) into DIR as adapter_config.json and\n"
	"    adapter_model.safetensors: the tensors under their names in the file\n"
	"    imported, in the dtype stored, with the file's metadata.  PEFT loads\n"
	"    DIR, and importing DIR again gives the same digest.  DIR is made when\n"
	"    missing and must not hold either file.  Prints: exported NAME@V to DIR.\n"
	"    With --json: {\"ref\", \"exported\", \"dir\"}.\n"
	"\n"
	"EXIT STATUS\n"
	"    0 success, 1 error (message on standard error), 2 bad usage.\n";

int ls_cmd_export(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("export", ls_export_help, argc, argv, 2, 2);
	if (st >= 0)
		return st;
	const char *ref = argv[optind], *dir = argv[optind + 1];
	lorastore *conn;
	if (ls_cli_connect(cli, "export", &conn))
		return LS_EXIT_ERROR;
	char exported[512];
	int rc = lorastore_export(conn, ref, dir, exported, sizeof(exported));
	if (rc) {
		st = ls_cli_fail("export", conn, rc);
	} else if (cli->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "ref", ref);
		cJSON_AddStringToObject(o, "exported", exported);
		cJSON_AddStringToObject(o, "dir", dir);
		st = ls_json_emit(o);
	} else {
		printf("exported %s to %s\n", exported, dir);
		st = LS_EXIT_OK;
	}
	lorastore_close(conn);
	return st;
}
