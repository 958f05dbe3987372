/*
 * The CLI commands on the daemon's origin (an S3-compatible object store
 * that feeds every node): push (versions of this node into it), pull (a
 * version of it onto this node), and ls --origin (what it has).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char ls_push_help[] =
	"NAME\n"
	"    lorastore push - upload versions of this node into the daemon's origin\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] push NAME[@V]\n"
	"\n"
	"DESCRIPTION\n"
	"    Upload version V of NAME, or every version of NAME this node has, into\n"
	"    the daemon's origin (lorastored's origin options: an S3-compatible\n"
	"    object store that every node of a fleet imports into and pulls from),\n"
	"    under their own numbers: versions imported before the daemon had an\n"
	"    origin.  An import on a daemon with an origin is in the origin before\n"
	"    it is acknowledged, so it never needs a push.  A version the origin has\n"
	"    already (same number, same digest) is left as it is.  Prints\n"
	"        pushed NAME: N uploaded, M there already (s3://...)\n"
	"    With --json: {\"ref\", \"pushed\", \"present\", \"origin\"}.  A number the\n"
	"    origin gave to other content (another node imported it) is refused:\n"
	"    import the files again to give them a number of the fleet's.  Needs an\n"
	"    admin peer.\n"
	"\n" LS_EXIT_STATUS_TEXT;

int ls_cmd_push(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("push", ls_push_help, argc, argv, 1, 1);
	if (st >= 0)
		return st;
	const char *ref = argv[optind];
	lorastore *conn;
	if (ls_cli_connect(cli, "push", &conn))
		return LS_EXIT_ERROR;
	lorastore_push_result r;
	int rc = lorastore_push(conn, ref, &r);
	if (rc) {
		st = ls_cli_fail("push", conn, rc);
	} else if (cli->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "ref", ref);
		cJSON_AddNumberToObject(o, "pushed", r.pushed);
		cJSON_AddNumberToObject(o, "present", r.present);
		cJSON_AddStringToObject(o, "origin", r.origin);
		st = ls_json_emit(o);
	} else {
		printf("pushed %s: %u uploaded, %u there already (%s)\n", ref, r.pushed, r.present,
		       r.origin);
		st = LS_EXIT_OK;
	}
	lorastore_close(conn);
	return st;
}

static const char ls_pull_help[] =
	"NAME\n"
	"    lorastore pull - bring a version of the daemon's origin onto this node\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] pull NAME[@V]\n"
	"\n"
	"DESCRIPTION\n"
	"    Make sure this node has NAME@V (NAME: the origin's latest version): the\n"
	"    daemon downloads its blob from the origin, checks its SHA-256 digest,\n"
	"    checksums and manifest, and adds it to its catalog, as an acquire,\n"
	"    load, prefetch or show of a version it lacks does.  Nothing is made\n"
	"    resident.  Prints\n"
	"        NAME@V here (DIGEST, SIZE)\n"
	"    With --json: {\"ref\", \"name\", \"version\", \"digest\", \"tensor_bytes\"}.\n"
	"\n" LS_EXIT_STATUS_TEXT;

int ls_cmd_pull(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("pull", ls_pull_help, argc, argv, 1, 1);
	if (st >= 0)
		return st;
	const char *ref = argv[optind];
	lorastore *conn;
	if (ls_cli_connect(cli, "pull", &conn))
		return LS_EXIT_ERROR;
	/* A show of a version this node lacks pulls it: the daemon's one way in. */
	lorastore_list *l = NULL;
	int rc = lorastore_show(conn, ref, &l);
	if (rc) {
		st = ls_cli_fail("pull", conn, rc);
	} else {
		const lorastore_entry *e = lorastore_list_entry(l, 0);
		const char *hex = e->digest;
		if (cli->json) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "ref", ref);
			cJSON_AddStringToObject(o, "name", e->name);
			cJSON_AddNumberToObject(o, "version", e->version);
			cJSON_AddStringToObject(o, "digest", hex);
			cJSON_AddNumberToObject(o, "tensor_bytes", (double)e->tensor_bytes);
			st = ls_json_emit(o);
		} else {
			char size[32];
			ls_format_size(e->tensor_bytes, size, sizeof(size));
			printf("%s@%u here (%.12s, %s)\n", e->name, e->version, hex, size);
			st = LS_EXIT_OK;
		}
	}
	lorastore_list_free(l);
	lorastore_close(conn);
	return st;
}

/* ---- ls --origin */

struct ls_origin_rows {
	cJSON *arr;                 /* --json */
	size_t n;
	char origin[256];
};

static void ls_origin_row(void *ud, const lorastore_origin_entry *e)
{
	struct ls_origin_rows *r = ud;
	snprintf(r->origin, sizeof(r->origin), "%s", e->origin);
	if (r->arr) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "name", e->name);
		cJSON_AddNumberToObject(o, "version", e->version);
		cJSON_AddBoolToObject(o, "here", e->here);
		cJSON_AddItemToArray(r->arr, o);
	} else {
		if (r->n == 0)
			printf("%-40s %7s  %s\n", "NAME", "VERSION", "HERE");
		printf("%-40s %7u  %s\n", e->name, e->version, e->here ? "yes" : "no");
	}
	r->n++;
}

int ls_ls_origin(const struct ls_cli *cli, const char *prefix)
{
	lorastore *conn;
	if (ls_cli_connect(cli, "ls", &conn))
		return LS_EXIT_ERROR;
	cJSON *doc = cli->json ? cJSON_CreateObject() : NULL;
	struct ls_origin_rows rows = {.arr = doc ? cJSON_AddArrayToObject(doc, "versions") : NULL};
	char cursor[256] = "", next[256];
	int rc;
	do {
		rc = lorastore_origin_list(conn, prefix, cursor, 0, ls_origin_row, &rows, next,
					   sizeof(next));
		snprintf(cursor, sizeof(cursor), "%s", next);
	} while (rc == 0 && next[0]);
	int st;
	if (rc) {
		cJSON_Delete(doc);
		st = ls_cli_fail("ls", conn, rc);
	} else if (doc) {
		st = ls_json_emit(doc);
	} else {
		if (rows.n == 0)
			printf("no versions%s%s in the origin\n", *prefix ? " beginning with " : "",
			       prefix);
		st = LS_EXIT_OK;
	}
	lorastore_close(conn);
	return st;
}
