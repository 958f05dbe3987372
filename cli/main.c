/* lorastore: manage lorastore adapters.  Global options, then a command. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char ls_usage[] =
	"Usage: lorastore [--json] COMMAND [ARGS...]\n"
	"       lorastore --help | --version\n"
	"\n"
	"Manage LoRA adapters for lorastore.\n"
	"\n"
	"Global options (before the command):\n"
	"  --json        print one JSON document on standard output instead of text\n"
	"  -h, --help    print this help and exit\n"
	"  --version     print the version and exit\n"
	"\n"
	"Commands:\n"
	"  inspect DIR   validate a Hugging Face PEFT adapter directory\n"
	"                (adapter_config.json + adapter_model.safetensors) without a\n"
	"                daemon: base model, rank, alpha, scales, dtypes, the tensor\n"
	"                table (module path, layer, kind, shape, dtype), total bytes\n"
	"                and every problem found.\n"
	"\n"
	"Exit status:\n"
	"  0  success\n"
	"  1  error: invalid input or a failure (message on standard error)\n"
	"  2  bad usage\n";

void ls_format_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	if (bytes < 1024) {
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
		return;
	}
	double v = (double)bytes;
	int u = 0;
	while (v >= 1024.0 && u < 5) {
		v /= 1024.0;
		u++;
	}
	snprintf(buf, len, "%.1f %s", v, units[u]);
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

int main(int argc, char **argv)
{
	struct ls_cli cli = {.json = false, .prog = argv[0]};
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	/* '+' stops at the command: its own options belong to it. */
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			cli.json = true;
			break;
		case 'h':
			fputs(ls_usage, stdout);
			return LS_EXIT_OK;
		case 'V':
			printf("lorastore %s\n", LS_VERSION);
			return LS_EXIT_OK;
		default:
			return ls_cli_usage_error(&cli, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return ls_cli_usage_error(&cli, "no command given");
	const char *cmd = argv[optind];
	int cargc = argc - optind;
	char **cargv = argv + optind;
	optind = 1; /* each command parses its own arguments from cargv[0] */
	if (strcmp(cmd, "inspect") == 0)
		return ls_cmd_inspect(&cli, cargc, cargv);
	if (strcmp(cmd, "help") == 0) {
		fputs(ls_usage, stdout);
		return LS_EXIT_OK;
	}
	return ls_cli_usage_error(&cli, "unknown command '%s'", cmd);
}
