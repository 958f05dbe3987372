/* What the daemon commands of the CLI share: parsing, connecting, output. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

int ls_cli_parse_plain(const char *cmd, const char *help, int argc, char **argv, int min,
		       int max)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(help, stdout);
			return LS_EXIT_OK;
		}
		return ls_cli_cmd_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
	}
	int n = argc - optind;
	if (n < min)
		return ls_cli_cmd_usage_error(cmd, "missing %s", min == 1 && max == 1 ? "NAME[@V]"
											 : "operand");
	if (max >= 0 && n > max)
		return ls_cli_cmd_usage_error(cmd, "unexpected argument '%s'", argv[optind + max]);
	return -1;
}

const char *ls_cli_message(const char *cmd, const char *subject, const char *msg)
{
	for (bool again = true; again && msg;) {
		again = false;
		size_t n = strlen(cmd);
		if (strncmp(msg, cmd, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ') {
			msg += n + 2;
			again = true;
		}
		n = subject ? strlen(subject) : 0;
		if (n && strncmp(msg, subject, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ') {
			msg += n + 2;
			again = true;
		}
	}
	return msg;
}

int ls_cli_fail(const char *cmd, const lorastore *conn, int rc)
{
	const char *msg = conn ? lorastore_errmsg(conn) : "";
	if (!msg || !*msg)
		msg = lorastore_strerror(rc);
	fprintf(stderr, "lorastore: %s: %s\n", cmd, ls_cli_message(cmd, NULL, msg));
	return LS_EXIT_ERROR;
}

int ls_cli_connect(const struct ls_cli *cli, const char *cmd, lorastore **out)
{
	lorastore *conn = NULL;
	int rc = lorastore_connect_timeout(cli->socket, cli->connect_timeout_ms, &conn);
	if (rc) {
		ls_cli_fail(cmd, conn, rc);
		lorastore_close(conn);
		*out = NULL;
		return LS_EXIT_ERROR;
	}
	*out = conn;
	return LS_EXIT_OK;
}

int ls_json_emit(cJSON *doc)
{
	char *text = doc ? cJSON_Print(doc) : NULL;
	cJSON_Delete(doc);
	if (!text) {
		fprintf(stderr, "lorastore: out of memory for the JSON output\n");
		return LS_EXIT_ERROR;
	}
	puts(text);
	free(text);
	return LS_EXIT_OK;
}

void ls_format_shape(const uint64_t *shape, unsigned ndim, char *buf, size_t len)
{
	size_t off = (size_t)snprintf(buf, len, "[");
	for (unsigned i = 0; i < ndim && off < len; i++)
		off += (size_t)snprintf(buf + off, len - off, "%s%llu", i ? ", " : "",
					(unsigned long long)shape[i]);
	if (off < len)
		snprintf(buf + off, len - off, "]");
}

void ls_format_time(int64_t unix_ns, bool iso, char *buf, size_t len)
{
	time_t t = (time_t)(unix_ns / 1000000000);
	struct tm tm;
	if (unix_ns <= 0 || !gmtime_r(&t, &tm) ||
	    !strftime(buf, len, iso ? "%Y-%m-%dT%H:%M:%SZ" : "%Y-%m-%d %H:%M:%S UTC", &tm))
		snprintf(buf, len, "%s", iso ? "" : "-");
}

/* The three sizes of e into o, under the names every surface uses. */
static void ls_json_sizes(cJSON *o, const lorastore_entry *e)
{
	cJSON_AddNumberToObject(o, "tensor_bytes", (double)e->tensor_bytes);
	cJSON_AddNumberToObject(o, "resident_bytes", (double)e->resident_bytes);
	cJSON_AddNumberToObject(o, "blob_bytes", (double)e->blob_bytes);
}

/*
 * The fields of one version, the same set for ls and show, and the same as
 * the Python package's dicts (python/tests/test_catalog.py holds them equal).
 */
void ls_json_entry(cJSON *o, const lorastore_entry *e)
{
	char when[64];
	ls_format_time(e->created_unix_ns, true, when, sizeof(when));
	cJSON_AddStringToObject(o, "name", e->name);
	cJSON_AddNumberToObject(o, "version", e->version);
	cJSON_AddStringToObject(o, "digest", e->digest);
	cJSON_AddNumberToObject(o, "generation", (double)e->generation);
	cJSON_AddNumberToObject(o, "rank", e->rank);
	cJSON_AddNumberToObject(o, "scale", e->scale);
	cJSON_AddStringToObject(o, "dtype", e->dtype);
	ls_json_sizes(o, e);
	cJSON_AddNumberToObject(o, "tensor_count", (double)e->tensor_count);
	cJSON_AddBoolToObject(o, "resident", e->resident);
	cJSON_AddStringToObject(o, "tier", e->tier);
	cJSON_AddNumberToObject(o, "pins", e->pins);
	if (*when)
		cJSON_AddStringToObject(o, "created", when);
	else
		cJSON_AddNullToObject(o, "created");
	if (*e->base_model)
		cJSON_AddStringToObject(o, "base_model", e->base_model);
	else
		cJSON_AddNullToObject(o, "base_model");
	cJSON_AddStringToObject(o, "source", e->source);
	cJSON *arr = cJSON_AddArrayToObject(o, "aliases");
	for (size_t k = 0; k < e->alias_count; k++)
		cJSON_AddItemToArray(arr, cJSON_CreateString(e->aliases[k]));
}
