/*
 * The CLI commands that ask the daemon: ls, show, load, evict, stats,
 * verify, gc.  Import is in import.c; rm, tag and untag in catalog_cmds.c.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ls_error.h"

/* ---- ls */

static const char ls_ls_help[] =
	"NAME\n"
	"    lorastore ls - list adapter versions\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] ls [--base-model MODEL] [PREFIX]\n"
	"    lorastore [--json] ls --origin [PREFIX]\n"
	"\n"
	"DESCRIPTION\n"
	"    List every version whose name begins with PREFIX (all when none), in\n"
	"    name and version order, one per line: name, version, the first 12 hex\n"
	"    digits of the digest, rank, dtype, size (its tensors' bytes), tier (host, device,\n"
	"    or disk when not resident), the number of leases held on it, its base\n"
	"    model and the aliases pointing at it.\n"
	"    With --json: {\"adapters\": [{\"name\", \"version\", \"digest\", \"rank\",\n"
	"    \"tensor_bytes\", \"resident_bytes\", \"blob_bytes\", \"resident\", \"tier\",\n"
	"    \"pins\", \"base_model\", \"aliases\"}]}: tensor_bytes is the size shown,\n"
	"    resident_bytes what it takes in host memory when resident, blob_bytes\n"
	"    its blob file on disk.\n"
	"    With --origin, the versions the daemon's origin has (an S3-compatible\n"
	"    object store that a fleet of daemons shares), read from its keys alone:\n"
	"    name, version, and whether this node has it.  With --json:\n"
	"    {\"versions\": [{\"name\", \"version\", \"here\"}]}.\n"
	"\n"
	"OPTIONS\n"
	"    -b, --base-model MODEL\n"
	"        Only the versions whose base model (base_model_name_or_path) is\n"
	"        MODEL.\n"
	"    -o, --origin\n"
	"        List the daemon's origin rather than this node's catalog.\n"
	"    -h, --help\n"
	"        Print this manual.\n"
	"\n" LS_EXIT_STATUS_TEXT;

struct ls_pages {
	lorastore_list **pages;
	size_t n, cap;
};

static void ls_pages_free(struct ls_pages *p)
{
	for (size_t i = 0; i < p->n; i++)
		lorastore_list_free(p->pages[i]);
	free(p->pages);
}

/* Every page of the listing, following the cursor. */
static int ls_pages_fetch(lorastore *conn, const char *prefix, struct ls_pages *p)
{
	const char *cursor = NULL;
	for (;;) {
		lorastore_list *l = NULL;
		int rc = lorastore_list_page(conn, prefix, cursor, 0, &l);
		if (rc)
			return rc;
		if (p->n == p->cap) {
			size_t cap = p->cap ? p->cap * 2 : 4;
			lorastore_list **np = realloc(p->pages, cap * sizeof(*np));
			if (!np) {
				lorastore_list_free(l);
				return -ENOMEM;
			}
			p->pages = np;
			p->cap = cap;
		}
		p->pages[p->n++] = l;
		cursor = lorastore_list_next(l);
		if (!cursor)
			return 0;
	}
}

/* Whether e is listed: every entry, or those of base model base. */
static bool ls_ls_keep(const lorastore_entry *e, const char *base)
{
	return !base || strcmp(e->base_model, base) == 0;
}

static void ls_print_ls(const struct ls_pages *p, const char *base)
{
	int w = (int)strlen("NAME"), bw = (int)strlen("BASE MODEL");
	for (size_t i = 0; i < p->n; i++)
		for (size_t j = 0; j < lorastore_list_count(p->pages[i]); j++) {
			const lorastore_entry *e = lorastore_list_entry(p->pages[i], j);
			if (!ls_ls_keep(e, base))
				continue;
			if ((int)strlen(e->name) > w)
				w = (int)strlen(e->name);
			if ((int)strlen(e->base_model) > bw)
				bw = (int)strlen(e->base_model);
		}
	printf("%-*s %7s  %-12s %5s %-6s %10s  %-11s %4s  %-*s  %s\n", w, "NAME", "VERSION",
	       "DIGEST", "RANK", "DTYPE", "SIZE", "TIER", "PINS", bw, "BASE MODEL", "ALIASES");
	for (size_t i = 0; i < p->n; i++)
		for (size_t j = 0; j < lorastore_list_count(p->pages[i]); j++) {
			const lorastore_entry *e = lorastore_list_entry(p->pages[i], j);
			if (!ls_ls_keep(e, base))
				continue;
			char size[32];
			ls_format_size(e->tensor_bytes, size, sizeof(size));
			printf("%-*s %7u  %-12.12s %5u %-6s %10s  %-11s %4u  %-*s  ", w, e->name,
			       e->version, e->digest, e->rank, e->dtype, size, e->tier, e->pins, bw,
			       *e->base_model ? e->base_model : "-");
			for (size_t k = 0; k < e->alias_count; k++)
				printf("%s%s", k ? "," : "", e->aliases[k]);
			printf("%s\n", e->alias_count ? "" : "-");
		}
}

/* An array of n strings, or the regex string when there is one. */
static cJSON *ls_json_strings(const char *const *v, size_t n)
{
	cJSON *arr = cJSON_CreateArray();
	for (size_t i = 0; arr && i < n; i++)
		cJSON_AddItemToArray(arr, cJSON_CreateString(v[i]));
	return arr;
}

/* The PEFT config of entry i under PEFT's field names (as Python's "peft_config"). */
static cJSON *ls_json_peft_config(const lorastore_list *l, size_t i)
{
	lorastore_peft_config c;
	if (lorastore_list_peft_config(l, i, &c))
		return cJSON_CreateNull();
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "peft_type", "LORA");
	cJSON_AddNumberToObject(o, "r", c.r);
	cJSON_AddNumberToObject(o, "lora_alpha", c.lora_alpha);
	if (c.target_regex)
		cJSON_AddStringToObject(o, "target_modules", c.target_regex);
	else
		cJSON_AddItemToObject(o, "target_modules",
				      ls_json_strings(c.target_modules, c.n_target_modules));
	cJSON_AddBoolToObject(o, "use_rslora", c.use_rslora);
	for (int alpha = 0; alpha < 2; alpha++) {
		cJSON *p = cJSON_AddObjectToObject(o, alpha ? "alpha_pattern" : "rank_pattern");
		size_t n = alpha ? c.n_alpha_pattern : c.n_rank_pattern;
		for (size_t j = 0; p && j < n; j++) {
			const char *key;
			double value;
			if (lorastore_list_peft_pattern(l, i, alpha, j, &key, &value) == 0)
				cJSON_AddNumberToObject(p, key, value);
		}
	}
	cJSON_AddBoolToObject(o, "fan_in_fan_out", c.fan_in_fan_out);
	cJSON_AddStringToObject(o, "bias", c.bias);
	cJSON_AddBoolToObject(o, "use_dora", c.use_dora);
	if (c.base_model)
		cJSON_AddStringToObject(o, "base_model_name_or_path", c.base_model);
	else
		cJSON_AddNullToObject(o, "base_model_name_or_path");
	cJSON_AddItemToObject(o, "modules_to_save",
			      ls_json_strings(c.modules_to_save, c.n_modules_to_save));
	cJSON_AddStringToObject(o, "task_type", c.task_type);
	return o;
}

static cJSON *ls_json_ls(const struct ls_pages *p, const char *base)
{
	cJSON *doc = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(doc, "adapters");
	for (size_t i = 0; i < p->n; i++)
		for (size_t j = 0; j < lorastore_list_count(p->pages[i]); j++) {
			const lorastore_entry *e = lorastore_list_entry(p->pages[i], j);
			if (!ls_ls_keep(e, base))
				continue;
			cJSON *o = cJSON_CreateObject();
			ls_json_entry(o, e);
			cJSON_AddItemToArray(arr, o);
		}
	return doc;
}

int ls_cmd_ls(const struct ls_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
		{"base-model", required_argument, NULL, 'b'},
		{"origin", no_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *base = NULL;
	bool origin = false;
	int c, st;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":b:oh", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(ls_ls_help, stdout);
			return LS_EXIT_OK;
		}
		if (c == 'b')
			base = optarg;
		else if (c == 'o')
			origin = true;
		else if (c == ':')
			return ls_cli_cmd_usage_error("ls", "option '%s' needs an argument",
						      argv[optind - 1]);
		else
			return ls_cli_cmd_usage_error("ls", "unknown option '%s'", argv[optind - 1]);
	}
	if (argc - optind > 1)
		return ls_cli_cmd_usage_error("ls", "unexpected argument '%s'", argv[optind + 1]);
	const char *prefix = optind < argc ? argv[optind] : "";
	if (origin && base)
		return ls_cli_cmd_usage_error("ls", "--origin lists names and numbers only: "
						    "--base-model does not apply");
	if (origin)
		return ls_ls_origin(cli, prefix);
	lorastore *conn;
	if (ls_cli_connect(cli, "ls", &conn))
		return LS_EXIT_ERROR;
	struct ls_pages p = {0};
	int rc = ls_pages_fetch(conn, prefix, &p);
	if (rc) {
		st = ls_cli_fail("ls", conn, rc);
	} else if (cli->json) {
		st = ls_json_emit(ls_json_ls(&p, base));
	} else {
		ls_print_ls(&p, base);
		st = LS_EXIT_OK;
	}
	ls_pages_free(&p);
	lorastore_close(conn);
	return st;
}

/* ---- show */

static const char ls_show_help[] =
	"NAME\n"
	"    lorastore show - show one adapter version\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] show NAME[@V]\n"
	"\n"
	"DESCRIPTION\n"
	"    Print the record of NAME@V (the latest version of NAME without @V):\n"
	"    digest, generation, rank, scale, dtype, size (tensor bytes), bytes in\n"
	"    memory when resident, bytes on disk, residency, creation time,\n"
	"    source, base model and aliases, then the tensor table (module, layer, kind,\n"
	"    shape, dtype, offset in the data region, size).  With --json one object\n"
	"    with those fields and \"tensors\": [{\"module\", \"layer\", \"kind\", \"shape\",\n"
	"    \"dtype\", \"offset\", \"bytes\"}]; \"created\" is an ISO 8601 UTC time.\n"
	"\n" LS_EXIT_STATUS_TEXT;

static void ls_print_show(const lorastore_list *l)
{
	const lorastore_entry *e = lorastore_list_entry(l, 0);
	char size[32], mem[32], disk[32], when[64];
	ls_format_size(e->tensor_bytes, size, sizeof(size));
	ls_format_size(e->resident_bytes, mem, sizeof(mem));
	ls_format_size(e->blob_bytes, disk, sizeof(disk));
	ls_format_time(e->created_unix_ns, false, when, sizeof(when));
	printf("name         %s\n", e->name);
	printf("version      %u\n", e->version);
	printf("digest       %s\n", e->digest);
	printf("generation   %llu\n", (unsigned long long)e->generation);
	printf("rank         %u\n", e->rank);
	printf("scale        %g\n", e->scale);
	printf("dtype        %s\n", e->dtype);
	printf("size         %s (%llu bytes of tensors)\n", size,
	       (unsigned long long)e->tensor_bytes);
	printf("in memory    %s (%llu, data region and table)\n", mem,
	       (unsigned long long)e->resident_bytes);
	printf("on disk      %s (%llu, the blob file)\n", disk, (unsigned long long)e->blob_bytes);
	printf("resident     %s\n", e->resident ? "yes" : "no");
	printf("tier         %s\n", e->tier);
	printf("pins         %u\n", e->pins);
	printf("created      %s\n", when);
	printf("source       %s\n", *e->source ? e->source : "-");
	printf("base model   %s\n", *e->base_model ? e->base_model : "(none)");
	printf("aliases      ");
	for (size_t k = 0; k < e->alias_count; k++)
		printf("%s%s", k ? ", " : "", e->aliases[k]);
	printf("%s\n", e->alias_count ? "" : "(none)");

	size_t n = lorastore_list_tensor_count(l, 0);
	if (!n)
		return;
	int w = (int)strlen("MODULE");
	lorastore_tensor t;
	for (size_t j = 0; j < n; j++)
		if (lorastore_list_tensor(l, 0, j, &t) == 0 && (int)strlen(t.module) > w)
			w = (int)strlen(t.module);
	printf("\n%-*s %5s %-9s %-16s %-5s %10s %10s\n", w, "MODULE", "LAYER", "KIND", "SHAPE",
	       "DTYPE", "OFFSET", "SIZE");
	for (size_t j = 0; j < n; j++) {
		if (lorastore_list_tensor(l, 0, j, &t))
			continue;
		char shape[128], layer[16], tsize[32];
		ls_format_shape(t.shape, t.ndim, shape, sizeof(shape));
		ls_format_size(t.bytes, tsize, sizeof(tsize));
		if (t.layer >= 0)
			snprintf(layer, sizeof(layer), "%d", t.layer);
		else
			snprintf(layer, sizeof(layer), "-");
		printf("%-*s %5s %-9s %-16s %-5s %10llu %10s\n", w, t.module, layer,
		       lorastore_kind_name(t.kind), shape, t.dtype_name, (unsigned long long)t.offset,
		       tsize);
	}
}

static cJSON *ls_json_show(const lorastore_list *l)
{
	const lorastore_entry *e = lorastore_list_entry(l, 0);
	cJSON *o = cJSON_CreateObject();
	ls_json_entry(o, e);
	cJSON_AddItemToObject(o, "peft_config", ls_json_peft_config(l, 0));
	cJSON *arr = cJSON_AddArrayToObject(o, "tensors");
	size_t n = lorastore_list_tensor_count(l, 0);
	for (size_t j = 0; j < n; j++) {
		lorastore_tensor t;
		if (lorastore_list_tensor(l, 0, j, &t))
			continue;
		cJSON *jt = cJSON_CreateObject();
		cJSON_AddStringToObject(jt, "module", t.module);
		if (t.layer >= 0)
			cJSON_AddNumberToObject(jt, "layer", t.layer);
		else
			cJSON_AddNullToObject(jt, "layer");
		cJSON_AddStringToObject(jt, "kind", lorastore_kind_name(t.kind));
		cJSON *shape = cJSON_AddArrayToObject(jt, "shape");
		for (unsigned k = 0; k < t.ndim; k++)
			cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t.shape[k]));
		cJSON_AddStringToObject(jt, "dtype", t.dtype_name);
		cJSON_AddNumberToObject(jt, "offset", (double)t.offset);
		cJSON_AddNumberToObject(jt, "bytes", (double)t.bytes);
		cJSON_AddItemToArray(arr, jt);
	}
	return o;
}

int ls_cmd_show(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("show", ls_show_help, argc, argv, 1, 1);
	if (st >= 0)
		return st;
	lorastore *conn;
	if (ls_cli_connect(cli, "show", &conn))
		return LS_EXIT_ERROR;
	lorastore_list *l = NULL;
	int rc = lorastore_show(conn, argv[optind], &l);
	if (rc) {
		st = ls_cli_fail("show", conn, rc);
	} else if (cli->json) {
		st = ls_json_emit(ls_json_show(l));
	} else {
		ls_print_show(l);
		st = LS_EXIT_OK;
	}
	lorastore_list_free(l);
	lorastore_close(conn);
	return st;
}

/* ---- rm, load, evict */

static const char ls_load_help[] =
	"NAME\n"
	"    lorastore load - make an adapter version resident\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] load [--tier host|device] [--device UUID] NAME[@V]\n"
	"\n"
	"DESCRIPTION\n"
	"    Load NAME@V (the latest version without @V; an alias's version) into\n"
	"    memory and wait until it is resident.  No lease is taken: it may be\n"
	"    evicted again when space is needed.  Prints: loaded REF (NAME@V), the\n"
	"    version REF named.  With --json: {\"ref\", \"result\", \"version\"}.\n"
	"\n"
	"OPTIONS\n"
	"    --tier host|device\n"
	"        Host memory (the default), or a GPU's memory.\n"
	"    --device UUID\n"
	"        The GPU (GPU-..., as lorastore stats shows it); implies --tier\n"
	"        device.  Without it, the daemon's only GPU.\n"
	"\n" LS_EXIT_STATUS_TEXT;

static const char ls_evict_help[] =
	"NAME\n"
	"    lorastore evict - drop an adapter version from memory\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] evict [--tier host|device] [--device UUID] NAME[@V]\n"
	"\n"
	"DESCRIPTION\n"
	"    Evict NAME@V (the latest version without @V) from memory, every tier;\n"
	"    it stays in the store.  Refused while a client holds it.  Needs an\n"
	"    admin peer.\n"
	"\n"
	"OPTIONS\n"
	"    --tier host|device\n"
	"        Evict from that tier only (a GPU's copy, keeping the host copy).\n"
	"    --device UUID\n"
	"        The GPU; implies --tier device.  Without it, the daemon's only GPU.\n"
	"\n" LS_EXIT_STATUS_TEXT;

/* Report a command on one reference (rc its result) and close conn; the exit status. */
static int ls_ref_report(const struct ls_cli *cli, const char *cmd, const char *done,
			 const char *ref, const char *version, lorastore *conn, int rc)
{
	int st;
	if (rc) {
		st = ls_cli_fail(cmd, conn, rc);
	} else if (cli->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "ref", ref);
		cJSON_AddStringToObject(o, "result", done);
		if (*version)
			cJSON_AddStringToObject(o, "version", version);
		st = ls_json_emit(o);
	} else if (*version && strcmp(version, ref) != 0) {
		printf("%s %s (%s)\n", done, ref, version);
		st = LS_EXIT_OK;
	} else {
		printf("%s %s\n", done, ref);
		st = LS_EXIT_OK;
	}
	lorastore_close(conn);
	return st;
}

/*
 * load and evict: [--tier host|device] [--device UUID] NAME[@V].  Without
 * either option, fn (every tier for evict, host for load); with them,
 * tier_fn on that tier.
 */
static int ls_tier_cmd(const struct ls_cli *cli, const char *cmd, const char *help,
		       const char *done, int (*fn)(lorastore *, const char *),
		       int (*tier_fn)(lorastore *, const char *, lorastore_tier, const char *),
		       int argc, char **argv)
{
	static const struct option opts[] = {
		{"tier", required_argument, NULL, 't'},
		{"device", required_argument, NULL, 'd'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *tier = NULL, *device = NULL;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(help, stdout);
			return LS_EXIT_OK;
		}
		if (c == 't' && (strcmp(optarg, "host") == 0 || strcmp(optarg, "device") == 0))
			tier = optarg;
		else if (c == 't')
			return ls_cli_cmd_usage_error(cmd, "--tier takes host or device, not '%s'",
						      optarg);
		else if (c == 'd')
			device = optarg;
		else
			return ls_cli_cmd_usage_error(cmd, "unknown or incomplete option '%s'",
						      argv[optind - 1]);
	}
	if (device && tier && strcmp(tier, "host") == 0)
		return ls_cli_cmd_usage_error(cmd, "--device names a GPU: not with --tier host");
	if (argc - optind < 1)
		return ls_cli_cmd_usage_error(cmd, "missing NAME[@V]");
	if (argc - optind > 1)
		return ls_cli_cmd_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
	const char *ref = argv[optind];
	lorastore *conn;
	if (ls_cli_connect(cli, cmd, &conn))
		return LS_EXIT_ERROR;
	int rc;
	char loaded[256] = ""; /* a name (200 characters at most), "@" and a version */
	bool on_device = device || (tier && strcmp(tier, "device") == 0);
	/* "": the daemon's only GPU (NULL would load the driver here to ask). */
	const char *gpu = device ? device : "";
	if (strcmp(cmd, "load") == 0)
		rc = lorastore_load_resolved(conn, ref,
					     on_device ? LORASTORE_TIER_DEVICE : LORASTORE_TIER_HOST,
					     on_device ? gpu : NULL, loaded, sizeof(loaded));
	else if (!tier && !device)
		rc = fn(conn, ref);
	else
		rc = tier_fn(conn, ref, on_device ? LORASTORE_TIER_DEVICE : LORASTORE_TIER_HOST,
			     on_device ? gpu : NULL);
	return ls_ref_report(cli, cmd, done, ref, loaded, conn, rc);
}

int ls_cmd_load(const struct ls_cli *cli, int argc, char **argv)
{
	return ls_tier_cmd(cli, "load", ls_load_help, "loaded", lorastore_load,
			   lorastore_load_tier, argc, argv);
}

int ls_cmd_evict(const struct ls_cli *cli, int argc, char **argv)
{
	return ls_tier_cmd(cli, "evict", ls_evict_help, "evicted", lorastore_evict,
			   lorastore_evict_tier, argc, argv);
}

/* ---- stats */

static const char ls_stats_help[] =
	"NAME\n"
	"    lorastore stats - the daemon's memory and counters\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] stats\n"
	"\n"
	"DESCRIPTION\n"
	"    Print each memory tier (host, and a device tier per GPU the daemon\n"
	"    serves, named by the GPU's UUID) with its budget, the bytes used by\n"
	"    resident adapters, the bytes of slabs allocated and the number of\n"
	"    resident adapters (the resident_bytes of each); a device tier also\n"
	"    says the host memory its adapters' tables take.  Then client\n"
	"    connections (this command's own included), leases held (those taken\n"
	"    in shared memory, the warm path, among them), warm acquires so far,\n"
	"    loads, hits, misses, evictions, failed loads, versions in the catalog\n"
	"    and the daemon's event-loop engine (io_uring, or epoll where io_uring\n"
	"    is refused).  With --json: {\"tiers\": [{\"name\", \"budget\", \"used\",\n"
	"    \"slab_bytes\", \"adapters\", and on a device tier \"device\" (the GPU's\n"
	"    UUID), \"ordinal\" (the daemon's CUDA ordinal), \"table_bytes\" (host\n"
	"    memory of its tables)}], \"clients\", \"leases\", \"warm_leases\",\n"
	"    \"warm_acquires\", \"loads\", \"hits\", \"misses\", \"evictions\",\n"
	"    \"load_errors\", \"catalog_versions\",\n"
	"    \"event_loop\", \"origin\"}, as the Python package's stats() gives it.\n"
	"    When the daemon has an origin (an S3-compatible object store), its\n"
	"    requests, errors, bytes in and out, versions pulled, pulls in\n"
	"    flight, downloads refused and versions published; \"origin\" is then {\"origin\", \"requests\",\n"
	"    \"errors\", \"bytes_in\", \"bytes_out\", \"pulls\", \"pulls_in_flight\",\n"
	"    \"refused\", \"published\", \"cache_bytes\", \"cache_budget\",\n"
	"    \"cache_evictions\"}, and null without one.\n"
	"\n" LS_EXIT_STATUS_TEXT;

static cJSON *ls_json_stats(const lorastore_stats *s)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *tiers = cJSON_AddArrayToObject(o, "tiers");
	for (size_t i = 0; i < s->tier_count; i++) {
		const lorastore_tier_stats *t = &s->tiers[i];
		cJSON *jt = cJSON_CreateObject();
		cJSON_AddStringToObject(jt, "name", t->name);
		cJSON_AddNumberToObject(jt, "budget", (double)t->budget);
		cJSON_AddNumberToObject(jt, "used", (double)t->used);
		cJSON_AddNumberToObject(jt, "slab_bytes", (double)t->slab_bytes);
		cJSON_AddNumberToObject(jt, "adapters", t->adapters);
		/* What only a GPU's tier has; nothing that means "not applicable" on host. */
		if (t->ordinal >= 0) {
			cJSON_AddStringToObject(jt, "device", t->device);
			cJSON_AddNumberToObject(jt, "ordinal", t->ordinal);
			cJSON_AddNumberToObject(jt, "table_bytes", (double)t->table_bytes);
		}
		cJSON_AddItemToArray(tiers, jt);
	}
	cJSON_AddNumberToObject(o, "clients", s->clients);
	cJSON_AddNumberToObject(o, "leases", (double)s->leases);
	cJSON_AddNumberToObject(o, "warm_leases", (double)s->warm_leases);
	cJSON_AddNumberToObject(o, "warm_acquires", (double)s->warm_acquires);
	cJSON_AddNumberToObject(o, "loads", (double)s->loads);
	cJSON_AddNumberToObject(o, "hits", (double)s->hits);
	cJSON_AddNumberToObject(o, "misses", (double)s->misses);
	cJSON_AddNumberToObject(o, "evictions", (double)s->evictions);
	cJSON_AddNumberToObject(o, "load_errors", (double)s->load_errors);
	cJSON_AddNumberToObject(o, "catalog_versions", (double)s->catalog_versions);
	cJSON_AddStringToObject(o, "event_loop", s->event_loop);
	if (s->origin.origin[0]) {
		const lorastore_origin_stats *g = &s->origin;
		cJSON *jo = cJSON_AddObjectToObject(o, "origin");
		cJSON_AddStringToObject(jo, "origin", g->origin);
		cJSON_AddNumberToObject(jo, "requests", (double)g->requests);
		cJSON_AddNumberToObject(jo, "errors", (double)g->errors);
		cJSON_AddNumberToObject(jo, "bytes_in", (double)g->bytes_in);
		cJSON_AddNumberToObject(jo, "bytes_out", (double)g->bytes_out);
		cJSON_AddNumberToObject(jo, "pulls", (double)g->pulls);
		cJSON_AddNumberToObject(jo, "pulls_in_flight", g->pulls_in_flight);
		cJSON_AddNumberToObject(jo, "refused", (double)g->refused);
		cJSON_AddNumberToObject(jo, "published", (double)g->published);
		cJSON_AddNumberToObject(jo, "cache_bytes", (double)g->cache_bytes);
		cJSON_AddNumberToObject(jo, "cache_budget", (double)g->cache_budget);
		cJSON_AddNumberToObject(jo, "cache_evictions", (double)g->cache_evictions);
	} else {
		cJSON_AddNullToObject(o, "origin");
	}
	return o;
}

static void ls_print_stats(const lorastore_stats *s)
{
	printf("%-8s %10s %10s %10s %8s  %s\n", "TIER", "BUDGET", "USED", "SLABS", "ADAPTERS",
	       "DEVICE");
	for (size_t i = 0; i < s->tier_count; i++) {
		const lorastore_tier_stats *t = &s->tiers[i];
		char budget[32], used[32], slabs[32];
		ls_format_size(t->budget, budget, sizeof(budget));
		ls_format_size(t->used, used, sizeof(used));
		ls_format_size(t->slab_bytes, slabs, sizeof(slabs));
		printf("%-8s %10s %10s %10s %8u  %s\n", t->name, budget, used, slabs, t->adapters,
		       t->device);
	}
	for (size_t i = 0; i < s->tier_count; i++)
		if (s->tiers[i].ordinal >= 0) {
			char tables[32];
			ls_format_size(s->tiers[i].table_bytes, tables, sizeof(tables));
			printf("%-8s tables in host memory: %s\n", s->tiers[i].name, tables);
		}
	printf("\nclients      %u (this command's connection included)\n", s->clients);
	printf("leases       %llu (%llu warm: taken in shared memory)\n",
	       (unsigned long long)s->leases, (unsigned long long)s->warm_leases);
	printf("warm acquires %llu\n", (unsigned long long)s->warm_acquires);
	printf("loads        %llu\n", (unsigned long long)s->loads);
	printf("hits         %llu\n", (unsigned long long)s->hits);
	printf("misses       %llu\n", (unsigned long long)s->misses);
	printf("evictions    %llu\n", (unsigned long long)s->evictions);
	printf("load errors  %llu\n", (unsigned long long)s->load_errors);
	printf("versions     %llu\n", (unsigned long long)s->catalog_versions);
	printf("event loop   %s\n", s->event_loop);
	const lorastore_origin_stats *g = &s->origin;
	if (g->origin[0]) {
		char in[32], out[32];
		ls_format_size(g->bytes_in, in, sizeof(in));
		ls_format_size(g->bytes_out, out, sizeof(out));
		printf("origin       %s\n", g->origin);
		printf("  requests   %llu (%llu failed), %s in, %s out\n",
		       (unsigned long long)g->requests, (unsigned long long)g->errors, in, out);
		printf("  pulls      %llu (%u in flight, %llu refused)\n",
		       (unsigned long long)g->pulls, g->pulls_in_flight,
		       (unsigned long long)g->refused);
		printf("  published  %llu\n", (unsigned long long)g->published);
		char used[32], budget[32];
		ls_format_size(g->cache_bytes, used, sizeof(used));
		ls_format_size(g->cache_budget, budget, sizeof(budget));
		printf("  disk cache %s of pulled blobs (budget %s), %llu removed\n", used,
		       g->cache_budget ? budget : "none", (unsigned long long)g->cache_evictions);
	}
}

int ls_cmd_stats(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("stats", ls_stats_help, argc, argv, 0, 0);
	if (st >= 0)
		return st;
	lorastore *conn;
	if (ls_cli_connect(cli, "stats", &conn))
		return LS_EXIT_ERROR;
	lorastore_stats s;
	int rc = lorastore_stats_get(conn, &s);
	if (rc) {
		st = ls_cli_fail("stats", conn, rc);
	} else if (cli->json) {
		st = ls_json_emit(ls_json_stats(&s));
	} else {
		ls_print_stats(&s);
		st = LS_EXIT_OK;
	}
	lorastore_close(conn);
	return st;
}

/* ---- verify */

static const char ls_verify_help[] =
	"NAME\n"
	"    lorastore verify - check stored adapters against their checksums\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] verify [NAME[@V]]\n"
	"\n"
	"DESCRIPTION\n"
	"    Read the blob of every version (or of NAME's versions, or of NAME@V)\n"
	"    and check its manifest and data checksums.  Each broken version is\n"
	"    printed with the reason.  With --json: {\"bad\": N, \"items\": [{\"name\",\n"
	"    \"version\", \"code\", \"message\"}]}.\n"
	"\n"
	"EXIT STATUS\n"
	"    0 every version checked is intact, 1 a version is broken or an error\n"
	"    occurred, 2 bad usage.\n";

struct ls_verify_out {
	cJSON *items; /* with --json */
};

static void ls_verify_item(void *ud, const char *name, uint32_t version, int code,
			   const char *message)
{
	struct ls_verify_out *o = ud;
	if (o->items) {
		cJSON *it = cJSON_CreateObject();
		cJSON_AddStringToObject(it, "name", name);
		cJSON_AddNumberToObject(it, "version", version);
		cJSON_AddStringToObject(it, "code", ls_error_name(code));
		cJSON_AddStringToObject(it, "message", message);
		cJSON_AddItemToArray(o->items, it);
	} else {
		printf("%s@%u: %s\n", name, version, *message ? message : lorastore_strerror(code));
	}
}

int ls_cmd_verify(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("verify", ls_verify_help, argc, argv, 0, 1);
	if (st >= 0)
		return st;
	const char *ref = optind < argc ? argv[optind] : NULL;
	lorastore *conn;
	if (ls_cli_connect(cli, "verify", &conn))
		return LS_EXIT_ERROR;
	cJSON *doc = cli->json ? cJSON_CreateObject() : NULL;
	struct ls_verify_out o = {.items = doc ? cJSON_AddArrayToObject(doc, "items") : NULL};
	size_t bad = 0;
	int rc = lorastore_verify(conn, ref, &bad, ls_verify_item, &o);
	if (rc) {
		cJSON_Delete(doc);
		st = ls_cli_fail("verify", conn, rc);
	} else {
		if (doc) {
			cJSON_AddNumberToObject(doc, "bad", (double)bad);
			st = ls_json_emit(doc);
		} else {
			if (bad == 0)
				printf("%s: intact\n", ref ? ref : "every version");
			st = LS_EXIT_OK;
		}
		if (bad) {
			fprintf(stderr, "lorastore: verify: %zu broken version%s\n", bad,
				bad == 1 ? "" : "s");
			st = LS_EXIT_ERROR;
		}
	}
	lorastore_close(conn);
	return st;
}

/* ---- gc */

static const char ls_gc_help[] =
	"NAME\n"
	"    lorastore gc - remove what no version needs\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] gc\n"
	"\n"
	"DESCRIPTION\n"
	"    Remove blobs that no version references and the files interrupted\n"
	"    imports left, and print how many blobs and bytes were removed.  With\n"
	"    --json: {\"blobs_removed\", \"bytes_removed\"}.  Needs an admin peer.\n"
	"\n" LS_EXIT_STATUS_TEXT;

int ls_cmd_gc(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("gc", ls_gc_help, argc, argv, 0, 0);
	if (st >= 0)
		return st;
	lorastore *conn;
	if (ls_cli_connect(cli, "gc", &conn))
		return LS_EXIT_ERROR;
	uint64_t blobs = 0, bytes = 0;
	int rc = lorastore_gc(conn, &blobs, &bytes);
	if (rc) {
		st = ls_cli_fail("gc", conn, rc);
	} else if (cli->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "blobs_removed", (double)blobs);
		cJSON_AddNumberToObject(o, "bytes_removed", (double)bytes);
		st = ls_json_emit(o);
	} else {
		char size[32];
		ls_format_size(bytes, size, sizeof(size));
		printf("removed %llu blob%s (%s)\n", (unsigned long long)blobs, blobs == 1 ? "" : "s",
		       size);
		st = LS_EXIT_OK;
	}
	lorastore_close(conn);
	return st;
}

static const char ls_rebuild_help[] =
	"NAME\n"
	"    lorastore rebuild - build the catalog again from ref files and blobs\n"
	"\n"
	"SYNOPSIS\n"
	"    lorastore [--json] rebuild\n"
	"\n"
	"DESCRIPTION\n"
	"    Rebuild the daemon's catalog from its state directory's refs/ and\n"
	"    blobs/ (after the catalog directory was lost or damaged) and put it in\n"
	"    place of the old one.  Every version whose ref file and blob are intact\n"
	"    comes back with its name, version, digest and generation.  Imports and\n"
	"    deletes are refused while it runs.  Prints the versions restored and\n"
	"    the ref files skipped (their blob missing or broken); with --json:\n"
	"    {\"versions\", \"skipped\"}.  Needs an admin peer.\n"
	"\n" LS_EXIT_STATUS_TEXT;

int ls_cmd_rebuild(const struct ls_cli *cli, int argc, char **argv)
{
	int st = ls_cli_parse_plain("rebuild", ls_rebuild_help, argc, argv, 0, 0);
	if (st >= 0)
		return st;
	lorastore *conn;
	if (ls_cli_connect(cli, "rebuild", &conn))
		return LS_EXIT_ERROR;
	uint64_t versions = 0, skipped = 0;
	int rc = lorastore_rebuild(conn, &versions, &skipped);
	if (rc) {
		st = ls_cli_fail("rebuild", conn, rc);
	} else if (cli->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "versions", (double)versions);
		cJSON_AddNumberToObject(o, "skipped", (double)skipped);
		st = ls_json_emit(o);
	} else {
		printf("rebuilt the catalog: %llu version%s restored, %llu ref file%s skipped\n",
		       (unsigned long long)versions, versions == 1 ? "" : "s",
		       (unsigned long long)skipped, skipped == 1 ? "" : "s");
		st = LS_EXIT_OK;
	}
	lorastore_close(conn);
	return st;
}
