/* lorastore import DIR...: import PEFT adapter directories through the daemon. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "ls_error.h"

static const char ls_import_help[] =
	"NAME\n"
	"    lorastore import - import PEFT adapters as new versions\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] import DIR... [--name NAME] [--dtype keep|f16|bf16|f32]\n"
	"                                     [--allow-nonfinite] [--allow-new-base]\n"
	"\n"
	"DESCRIPTION\n"
	"    Import each Hugging Face PEFT directory (adapter_config.json and\n"
	"    adapter_model.safetensors) as a new version of an adapter.  The files\n"
	"    are opened by this command, with your permissions, and passed to the\n"
	"    daemon as descriptors; the daemon never opens a path.  Importing an\n"
	"    existing name adds a version, unless the content is the same as the\n"
	"    name's latest version: then nothing is added and that version is\n"
	"    named.  A new version for another base model, or with other modules\n"
	"    or module sizes, than the name's latest version is refused unless\n"
	"    --allow-new-base.  For each adapter one line is printed:\n"
	"        imported NAME@V (DIGEST-PREFIX, SIZE)\n"
	"        unchanged NAME@V (DIGEST-PREFIX, SIZE): the same content\n"
	"    A failure is reported on standard error and the next directory is\n"
	"    imported.  With several directories and a terminal on standard error,\n"
	"    a progress bar is drawn there.  Needs an admin peer.\n"
	"\n"
	"OPTIONS\n"
	"    -n, --name NAME\n"
	"        The adapter's name (tenant/name: 1-200 characters of A-Z a-z 0-9\n"
	"        . _ - /).  Only with one DIR.  Default: the directory's own name,\n"
	"        unless it says nothing of the adapter (adapter, lora, output(s),\n"
	"        checkpoint-N, final, model, ...): then --name is required.\n"
	"    -d, --dtype keep|f16|bf16|f32\n"
	"        Store the LoRA tensors in this dtype (rounding to nearest even).\n"
	"        Default: keep the file's dtype.\n"
	"    --allow-nonfinite\n"
	"        Accept NaN and infinite values instead of refusing the adapter.\n"
	"    --allow-new-base\n"
	"        Accept a new version whose base model (base_model_name_or_path),\n"
	"        or whose set of modules and their sizes, differs from the name's\n"
	"        latest version.\n"
	"    -h, --help\n"
	"        Print this manual.\n"
	"\n"
	"    With --json: {\"imported\": [{\"dir\", the fields of the version as\n"
	"    ls --json gives them, \"unchanged\"}], \"failed\": [{\"dir\", \"name\",\n"
	"    \"code\", \"message\"}]}.\n"
	"\n"
	"EXIT STATUS\n"
	"    0 every adapter was imported, 1 some import failed, 2 bad usage.\n";

struct ls_progress {
	bool on;          /* drawing on a terminal */
	size_t total;
};

static void ls_progress_clear(const struct ls_progress *p)
{
	if (p->on) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
}

static void ls_progress_draw(const struct ls_progress *p, size_t done, const char *name)
{
	if (!p->on)
		return;
	enum { WIDTH = 30 };
	size_t fill = p->total ? done * WIDTH / p->total : WIDTH;
	char bar[WIDTH + 1];
	for (size_t i = 0; i < WIDTH; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[WIDTH] = '\0';
	fprintf(stderr, "\r\033[K[%s] %zu/%zu %.40s", bar, done, p->total, name ? name : "");
	fflush(stderr);
}

struct ls_import_args {
	const char *name;
	const char *dtype;
	bool allow_nonfinite;
	bool allow_new_base;
	int first, count; /* the DIR operands in argv */
};

static int ls_import_parse(int argc, char **argv, struct ls_import_args *a)
{
	static const struct option opts[] = {
		{"name", required_argument, NULL, 'n'},
		{"dtype", required_argument, NULL, 'd'},
		{"allow-nonfinite", no_argument, NULL, 'f'},
		{"allow-new-base", no_argument, NULL, 'B'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":n:d:h", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			a->name = optarg;
			break;
		case 'd':
			a->dtype = optarg;
			break;
		case 'f':
			a->allow_nonfinite = true;
			break;
		case 'B':
			a->allow_new_base = true;
			break;
		case 'h':
			fputs(ls_import_help, stdout);
			return LS_EXIT_OK;
		case ':':
			return ls_cli_cmd_usage_error("import", "option '%s' needs an argument",
						      argv[optind - 1]);
		default:
			return ls_cli_cmd_usage_error("import", "unknown option '%s'", argv[optind - 1]);
		}
	}
	a->first = optind;
	a->count = argc - optind;
	if (a->count < 1)
		return ls_cli_cmd_usage_error("import", "no adapter directory given");
	if (a->name && a->count > 1)
		return ls_cli_cmd_usage_error("import", "--name names one adapter, but %d "
						"directories were given", a->count);
	if (a->name && !*a->name)
		return ls_cli_cmd_usage_error("import", "--name is empty");
	if (a->dtype && strcmp(a->dtype, "keep") != 0 && strcmp(a->dtype, "f16") != 0 &&
	    strcmp(a->dtype, "bf16") != 0 && strcmp(a->dtype, "f32") != 0)
		return ls_cli_cmd_usage_error("import", "--dtype must be keep, f16, bf16 or f32, not '%s'",
					      a->dtype);
	return -1;
}

/*
 * Import one directory and report the result on stdout (or into the JSON
 * arrays) or the failure on stderr.  Returns the library's result.
 */
static int ls_import_one(lorastore *conn, const struct ls_import_args *a, const char *dir,
			  const struct ls_progress *prog, cJSON *imported, cJSON *failed)
{
	/* No --name: the library names it after the directory, or says why not. */
	const char *name = a->name ? a->name : "";
	lorastore_import_opts o = {.name = a->name, .dtype = a->dtype,
				   .allow_nonfinite = a->allow_nonfinite,
				   .allow_new_base = a->allow_new_base};
	lorastore_list *l = NULL;
	int rc = lorastore_import_dir_entry(conn, dir, &o, &l);
	ls_progress_clear(prog);
	if (rc) {
		const char *msg = lorastore_errmsg(conn);
		if (!msg || !*msg)
			msg = lorastore_strerror(rc);
		msg = ls_cli_message("import", dir, msg);
		/* A message that begins with dir (or a file of it) names dir already. */
		size_t dl = strlen(dir);
		if (strncmp(msg, dir, dl) == 0 && (msg[dl] == '/' || msg[dl] == ' '))
			fprintf(stderr, "lorastore: import: %s\n", msg);
		else
			fprintf(stderr, "lorastore: import: %s: %s\n", dir, msg);
		if (failed) {
			cJSON *f = cJSON_CreateObject();
			cJSON_AddStringToObject(f, "dir", dir);
			cJSON_AddStringToObject(f, "name", name);
			cJSON_AddStringToObject(f, "code", ls_error_name(rc));
			cJSON_AddStringToObject(f, "message", msg);
			cJSON_AddItemToArray(failed, f);
		}
		return rc;
	}
	const lorastore_entry *e = lorastore_list_entry(l, 0);
	if (imported) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "dir", dir);
		ls_json_entry(j, e);
		cJSON_AddBoolToObject(j, "unchanged", e->unchanged);
		cJSON_AddItemToArray(imported, j);
	} else {
		char size[32];
		ls_format_size(e->tensor_bytes, size, sizeof(size));
		if (e->unchanged)
			printf("unchanged %s@%u (%.12s, %s): the same content\n", e->name,
			       e->version, e->digest, size);
		else
			printf("imported %s@%u (%.12s, %s)\n", e->name, e->version, e->digest,
			       size);
		fflush(stdout);
	}
	lorastore_list_free(l);
	return 0;
}

int ls_cmd_import(const struct ls_cli *cli, int argc, char **argv)
{
	struct ls_import_args a = {0};
	int st = ls_import_parse(argc, argv, &a);
	if (st >= 0)
		return st;
	lorastore *conn;
	if (ls_cli_connect(cli, "import", &conn))
		return LS_EXIT_ERROR;
	struct ls_progress prog = {.on = a.count > 1 && isatty(STDERR_FILENO),
				   .total = (size_t)a.count};
	cJSON *doc = cli->json ? cJSON_CreateObject() : NULL;
	cJSON *imported = doc ? cJSON_AddArrayToObject(doc, "imported") : NULL;
	cJSON *failed = doc ? cJSON_AddArrayToObject(doc, "failed") : NULL;
	size_t nfail = 0;
	for (int i = 0; i < a.count; i++) {
		const char *dir = argv[a.first + i];
		ls_progress_draw(&prog, (size_t)i, dir);
		int rc = ls_import_one(conn, &a, dir, &prog, imported, failed);
		if (rc)
			nfail++;
		/* A closed connection would fail the rest the same way: say it once. */
		if (rc == LORASTORE_E_CLOSED) {
			nfail += (size_t)(a.count - i - 1);
			break;
		}
	}
	ls_progress_draw(&prog, (size_t)a.count, "done");
	ls_progress_clear(&prog);
	if (doc && ls_json_emit(doc) != LS_EXIT_OK)
		nfail++;
	if (nfail && a.count > 1)
		fprintf(stderr, "lorastore: import: %zu of %d failed\n", nfail, a.count);
	lorastore_close(conn);
	return nfail ? LS_EXIT_ERROR : LS_EXIT_OK;
}
