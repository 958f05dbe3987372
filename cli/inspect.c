/* lorastore inspect DIR: validate a PEFT adapter directory without a daemon. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "adapter.h"
#include "cli.h"

static const char ls_inspect_usage[] =
	"NAME\n"
	"    lorastore inspect - validate a PEFT adapter directory without a daemon\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] inspect [--allow-nonfinite] DIR\n"
	"\n"
	"DESCRIPTION\n"
	"    Validate the PEFT LoRA adapter in DIR (adapter_config.json and\n"
	"    adapter_model.safetensors) as an import would, without a daemon, and\n"
	"    print its base model, rank, alpha, scales, dtypes, module count, the\n"
	"    tensor table (module path, layer, kind, shape, dtype), its size (the\n"
	"    tensors' bytes, as import and ls give it) and\n"
	"    every problem found.\n"
	"\n"
	"OPTIONS\n"
	"    --allow-nonfinite\n"
	"        Accept NaN and infinite values as import --allow-nonfinite does;\n"
	"        without it they are reported as problems.\n"
	"    -h, --help\n"
	"        Print this manual.\n"
	"\n"
	"EXIT STATUS\n"
	"    0 valid, 1 invalid adapter or unreadable files, 2 bad usage.\n";

static void ls_shape_str(const struct ls_adapter_tensor *t, char *buf, size_t len)
{
	size_t off = (size_t)snprintf(buf, len, "[");
	for (unsigned i = 0; i < t->ndim && off < len; i++)
		off += (size_t)snprintf(buf + off, len - off, "%s%llu", i ? ", " : "",
					(unsigned long long)t->shape[i]);
	if (off < len)
		snprintf(buf + off, len - off, "]");
}

static const char *ls_dtype_label(enum ls_dtype d)
{
	return d == LS_DTYPE_INVALID ? "mixed" : ls_dtype_name(d);
}

/* The scale most modules share, or the config's when there is no module. */
static double ls_base_scale(const struct ls_adapter *ad)
{
	const struct ls_peft_config *c = &ad->config;
	return ls_peft_scale_for(c, "");
}

static bool ls_scales_vary(const struct ls_adapter *ad)
{
	for (size_t i = 1; i < ad->n_modules; i++)
		if (ad->modules[i].scale != ad->modules[0].scale ||
		    ad->modules[i].rank != ad->modules[0].rank)
			return true;
	return false;
}

static size_t ls_count_kind(const struct ls_adapter *ad, enum ls_tensor_kind k)
{
	size_t n = 0;
	for (size_t i = 0; i < ad->n_tensors; i++)
		n += ad->tensors[i].kind == k;
	return n;
}

static void ls_print_text(const char *dir, const struct ls_adapter *ad)
{
	const struct ls_peft_config *c = &ad->config;
	char size[32];
	ls_format_size(ad->bytes, size, sizeof(size));
	printf("adapter      %s\n", dir);
	printf("base model   %s\n", c->base_model ? c->base_model : "(none)");
	if (c->task_type)
		printf("task         %s\n", c->task_type);
	printf("rank         %d", c->r);
	if (ad->max_rank && ad->max_rank != (uint32_t)c->r)
		printf(" (largest after rank_pattern: %u)", ad->max_rank);
	printf("\nalpha        %g\n", c->lora_alpha);
	printf("scale        %g (%s)\n", ls_base_scale(ad),
	       c->use_rslora ? "rslora: alpha / sqrt(r)" : "alpha / r");
	printf("dtype        %s\n", ls_dtype_label(ad->dtype));
	if (c->use_dora)
		printf("dora         yes\n");
	if (c->target_regex)
		printf("targets      /%s/\n", c->target_regex);
	else if (c->n_target_modules) {
		printf("targets     ");
		for (size_t i = 0; i < c->n_target_modules; i++)
			printf(" %s", c->target_modules[i]);
		printf("\n");
	}
	printf("modules      %zu LoRA, %zu extra tensor%s, %zu DoRA magnitude%s\n", ad->n_modules,
	       ls_count_kind(ad, LS_KIND_EXTRA), ls_count_kind(ad, LS_KIND_EXTRA) == 1 ? "" : "s",
	       ls_count_kind(ad, LS_KIND_MAGNITUDE),
	       ls_count_kind(ad, LS_KIND_MAGNITUDE) == 1 ? "" : "s");
	printf("size         %s (%llu bytes of tensors)\n", size, (unsigned long long)ad->bytes);

	if (ls_scales_vary(ad)) {
		printf("\n%-48s %5s %9s %9s\n", "MODULE", "RANK", "ALPHA", "SCALE");
		for (size_t i = 0; i < ad->n_modules; i++) {
			const struct ls_adapter_module *m = &ad->modules[i];
			printf("%-48s %5u %9g %9g\n", m->module, m->rank, m->alpha, m->scale);
		}
	}

	if (ad->n_tensors) {
		size_t w = strlen("MODULE");
		for (size_t i = 0; i < ad->n_tensors; i++)
			if (strlen(ad->tensors[i].module) > w)
				w = strlen(ad->tensors[i].module);
		printf("\n%-*s %5s %-9s %-16s %s\n", (int)w, "MODULE", "LAYER", "KIND", "SHAPE",
		       "DTYPE");
		for (size_t i = 0; i < ad->n_tensors; i++) {
			const struct ls_adapter_tensor *t = &ad->tensors[i];
			char shape[96], layer[16];
			ls_shape_str(t, shape, sizeof(shape));
			if (t->layer >= 0)
				snprintf(layer, sizeof(layer), "%d", t->layer);
			else
				snprintf(layer, sizeof(layer), "-");
			printf("%-*s %5s %-9s %-16s %s\n", (int)w, t->module, layer,
			       ls_tensor_kind_name(t->kind), shape, ls_dtype_name(t->dtype));
		}
	}

	printf("\nproblems     %s\n", ad->n_problems ? "" : "none");
	for (size_t i = 0; i < ad->n_problems; i++)
		printf("  %s: %s\n", ad->problems[i].fatal ? "error" : "warning",
		       ad->problems[i].message);
}

static cJSON *ls_json_report(const char *dir, const struct ls_adapter *ad, bool valid)
{
	const struct ls_peft_config *c = &ad->config;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "path", dir);
	cJSON_AddBoolToObject(o, "valid", valid);
	if (c->base_model)
		cJSON_AddStringToObject(o, "base_model", c->base_model);
	else
		cJSON_AddNullToObject(o, "base_model");
	cJSON_AddNumberToObject(o, "rank", c->r);
	cJSON_AddNumberToObject(o, "max_rank", ad->max_rank);
	cJSON_AddNumberToObject(o, "alpha", c->lora_alpha);
	cJSON_AddNumberToObject(o, "scale", ls_base_scale(ad));
	cJSON_AddBoolToObject(o, "use_rslora", c->use_rslora);
	cJSON_AddBoolToObject(o, "use_dora", c->use_dora);
	cJSON_AddStringToObject(o, "dtype", ls_dtype_label(ad->dtype));
	cJSON_AddNumberToObject(o, "tensor_bytes", (double)ad->bytes);
	cJSON_AddNumberToObject(o, "modules", (double)ad->n_modules);

	cJSON *scales = cJSON_AddArrayToObject(o, "scales");
	for (size_t i = 0; i < ad->n_modules; i++) {
		const struct ls_adapter_module *m = &ad->modules[i];
		cJSON *s = cJSON_CreateObject();
		cJSON_AddStringToObject(s, "module", m->module);
		if (m->layer >= 0)
			cJSON_AddNumberToObject(s, "layer", m->layer);
		else
			cJSON_AddNullToObject(s, "layer");
		cJSON_AddNumberToObject(s, "rank", m->rank);
		cJSON_AddNumberToObject(s, "alpha", m->alpha);
		cJSON_AddNumberToObject(s, "scale", m->scale);
		cJSON_AddItemToArray(scales, s);
	}

	cJSON *tensors = cJSON_AddArrayToObject(o, "tensors");
	for (size_t i = 0; i < ad->n_tensors; i++) {
		const struct ls_adapter_tensor *t = &ad->tensors[i];
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "module", t->module);
		if (t->layer >= 0)
			cJSON_AddNumberToObject(j, "layer", t->layer);
		else
			cJSON_AddNullToObject(j, "layer");
		cJSON_AddStringToObject(j, "kind", ls_tensor_kind_name(t->kind));
		cJSON *shape = cJSON_AddArrayToObject(j, "shape");
		for (unsigned k = 0; k < t->ndim; k++)
			cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[k]));
		cJSON_AddStringToObject(j, "dtype", ls_dtype_name(t->dtype));
		cJSON_AddStringToObject(j, "name", t->source_name);
		cJSON_AddNumberToObject(j, "bytes", (double)t->length);
		cJSON_AddItemToArray(tensors, j);
	}

	cJSON *problems = cJSON_AddArrayToObject(o, "problems");
	for (size_t i = 0; i < ad->n_problems; i++) {
		const struct ls_problem *p = &ad->problems[i];
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "code", ls_error_name(p->code));
		cJSON_AddStringToObject(j, "severity", p->fatal ? "error" : "warning");
		if (p->tensor)
			cJSON_AddStringToObject(j, "tensor", p->tensor);
		else
			cJSON_AddNullToObject(j, "tensor");
		cJSON_AddStringToObject(j, "message", p->message);
		cJSON_AddItemToArray(problems, j);
	}
	return o;
}

int ls_cmd_inspect(const struct ls_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"allow-nonfinite", no_argument, NULL, 'f'},
		{NULL, 0, NULL, 0},
	};
	struct ls_adapter_opts aopts = {0};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(ls_inspect_usage, stdout);
			return LS_EXIT_OK;
		}
		if (c == 'f') {
			aopts.allow_nonfinite = true;
			continue;
		}
		return ls_cli_usage_error(cli, "inspect: unknown option '%s'", argv[optind - 1]);
	}
	if (optind + 1 != argc)
		return ls_cli_usage_error(cli, "inspect: expected one adapter directory");
	const char *dir = argv[optind];

	struct ls_adapter ad;
	struct ls_err err;
	int rc = ls_adapter_analyze_dir(dir, &aopts, &ad, &err);
	/* Without any problem recorded the directory itself could not be read. */
	if (rc && ad.n_problems == 0) {
		fprintf(stderr, "lorastore: inspect: %s\n", err.msg);
		ls_adapter_free(&ad);
		return LS_EXIT_ERROR;
	}
	if (cli->json) {
		cJSON *o = ls_json_report(dir, &ad, rc == 0);
		char *text = cJSON_Print(o);
		if (text)
			puts(text);
		free(text);
		cJSON_Delete(o);
	} else {
		ls_print_text(dir, &ad);
	}
	if (rc) {
		size_t fatal = 0;
		for (size_t i = 0; i < ad.n_problems; i++)
			fatal += ad.problems[i].fatal;
		fprintf(stderr, "lorastore: inspect: %s: invalid adapter (%zu error%s): %s\n", dir,
			fatal, fatal == 1 ? "" : "s", err.msg);
	}
	ls_adapter_free(&ad);
	return rc ? LS_EXIT_ERROR : LS_EXIT_OK;
}
