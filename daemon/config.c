/* Configuration of lorastored: command-line options and the config file. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ls_file.h"

static const char ls_usage[] =
	"Usage: lorastored [OPTIONS]\n"
	"\n"
	"lorastored keeps LoRA adapters resident in host (or GPU) memory and shares\n"
	"them with inference processes through liblorastore.\n"
	"\n"
	"Options (each also a key of the config file, without the dashes):\n"
	"  --socket PATH          Unix socket to serve (default $LORASTORE_SOCKET or\n"
	"                         /run/lorastore/lorastored.sock); ignored when systemd\n"
	"                         passes a listening socket\n"
	"  --state-dir DIR        catalog and blobs (default $LORASTORE_STATE_DIR or\n"
	"                         /var/lib/lorastore)\n"
	"  --backend KIND         auto, host or cuda.  Host memory is always a tier;\n"
	"                         auto (the default) adds a device tier for every\n"
	"                         selected GPU that is usable, and logs why when none\n"
	"                         is; cuda does the same but fails at start without\n"
	"                         a usable GPU; host serves host memory only\n"
	"  --host-budget SIZE     bytes of resident adapters in host memory (default 1GiB)\n"
	"  --host-slab-size SIZE  bytes of one host slab (default 256MiB)\n"
	"  --device-budget SIZE|N%\n"
	"                         bytes of resident adapters in each GPU's memory, or\n"
	"                         a percentage of its free memory at start (default\n"
	"                         4GiB)\n"
	"  --devices LIST         the GPUs to serve: all (default), or ordinals and\n"
	"                         UUIDs (GPU-...) separated by commas\n"
	"  --device-slab-size SIZE\n"
	"                         bytes of one device slab, a multiple of the GPU's\n"
	"                         allocation granularity (default 256MiB)\n"
	"                         Adapters are packed best fit across a tier's slabs;\n"
	"                         where the regular slabs are full, one more slab is\n"
	"                         sized to what the budget has left, so that an\n"
	"                         adapter is evicted only when the budget has no room.\n"
	"                         A tier's slabs total at most its budget plus one\n"
	"                         slab (the space between adapters that cannot be\n"
	"                         used); stats shows both\n"
	"  --client-pin-limit SIZE\n"
	"                         bytes one connection may hold leased (default 0: the\n"
	"                         whole budget)\n"
	"  --admin-group GROUP    members may import, delete, evict and gc (root and the\n"
	"                         daemon's own user always may); checked against the\n"
	"                         connecting process's groups, supplementary included\n"
	"  --socket-group GROUP   the group of the socket the daemon creates (mode\n"
	"                         0660): the clients, who may acquire and read but\n"
	"                         not administer (default: the daemon's own group).\n"
	"                         A socket systemd passes keeps its SocketGroup=\n"
	"  --workers N            threads for imports, checksums and gc (default 2)\n"
	"  --max-clients N        connections served at once; one more is answered\n"
	"                         with an error saying so and closed (default: half\n"
	"                         the descriptor limit, at most 16384).  At start the\n"
	"                         soft descriptor limit is raised to the hard one\n"
	"  --metrics-listen ADDR:PORT\n"
	"                         serve Prometheus metrics at http://ADDR:PORT/metrics\n"
	"                         (off by default; for example 127.0.0.1:9464, or\n"
	"                         [::1]:9464)\n"
	"  --hello-timeout MS     a new connection that has not said Hello within MS\n"
	"                         milliseconds is closed (default 10000)\n"
	"  --client-reply-limit SIZE\n"
	"                         bytes of replies queued for one connection that has\n"
	"                         not read them; above it the daemon reads no further\n"
	"                         request from that connection until half of it has\n"
	"                         drained (default 8MiB)\n"
	"  --client-jobs N        requests of one connection that may wait for or run\n"
	"                         on the workers at once (imports, verifies, catalog\n"
	"                         reads); one more is answered with a busy error.  The\n"
	"                         workers take connections in turn, and the waiting\n"
	"                         jobs of a connection that closed are dropped\n"
	"                         (default 16)\n"
	"  --origin s3://BUCKET[/PREFIX]\n"
	"                         an S3-compatible object store that is the origin of\n"
	"                         every node's catalog: imports are acknowledged once\n"
	"                         they are in it (the version number is the fleet's),\n"
	"                         and a version this node lacks is pulled from it,\n"
	"                         checked, and served (README: Many nodes)\n"
	"  --origin-endpoint URL  the store's URL (default $AWS_ENDPOINT_URL_S3, then\n"
	"                         $AWS_ENDPOINT_URL, then AWS S3 of the region)\n"
	"  --origin-region REGION the signing region (default $AWS_REGION, then\n"
	"                         $AWS_DEFAULT_REGION, then us-east-1)\n"
	"  --origin-credentials FILE\n"
	"                         an AWS credentials file (profile $AWS_PROFILE or\n"
	"                         default), as systemd's LoadCredential= hands it over;\n"
	"                         without it $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY\n"
	"                         and $AWS_SESSION_TOKEN\n"
	"  --origin-addressing path|virtual\n"
	"                         ENDPOINT/BUCKET/KEY (default) or BUCKET.ENDPOINT/KEY\n"
	"  --origin-ttl MS        how long a look at the origin for a name's latest\n"
	"                         version holds (default 5000)\n"
	"  --origin-timeout MS    connecting to the origin, and a transfer that moves\n"
	"                         nothing, fail after MS milliseconds (default 10000)\n"
	"  --disk-budget SIZE     bytes of blobs pulled from the origin that the state\n"
	"                         directory keeps (default 0: no bound); past it the\n"
	"                         pulled versions used least recently, held by no\n"
	"                         tier and no alias, are removed here (the origin\n"
	"                         keeps them; a later request pulls them again)\n"
	"  --config FILE          read options from FILE (\"key = value\" lines);\n"
	"                         options given on the command line win\n"
	"  --log-level LEVEL      error, warning, info (default) or debug\n"
	"  --event-loop ENGINE    auto, io_uring or epoll (default auto: io_uring, or\n"
	"                         epoll with one log line naming the cause where\n"
	"                         io_uring is refused: a seccomp profile such as\n"
	"                         Docker's default, gVisor, kernel.io_uring_disabled);\n"
	"                         io_uring where it is refused fails at start\n"
	"  -h, --help             print this help\n"
	"  --version              print the version\n"
	"\n"
	"SIZE is a number with an optional unit: K, M, G, T (powers of 1000) or\n"
	"KiB, MiB, GiB, TiB (powers of 1024).\n"
	"\n"
	"Signals: SIGTERM and SIGINT drain (finish imports, close clients) and exit 0.\n"
	"Under systemd (Type=notify) READY is sent once the socket serves.\n";

enum {
	OPT_SOCKET = 256,
	OPT_STATE_DIR,
	OPT_BACKEND,
	OPT_HOST_BUDGET,
	OPT_DEVICE_BUDGET,
	OPT_PIN_LIMIT,
	OPT_ADMIN_GROUP,
	OPT_WORKERS,
	OPT_CONFIG,
	OPT_LOG_LEVEL,
	OPT_EVENT_LOOP,
	OPT_DEVICES,
	OPT_DEVICE_SLAB,
	OPT_HOST_SLAB,
	OPT_VERSION,
	OPT_MAX_CLIENTS,
	OPT_SOCKET_GROUP,
	OPT_METRICS_LISTEN,
	OPT_HELLO_TIMEOUT,
	OPT_CLIENT_REPLY_LIMIT,
	OPT_CLIENT_JOBS,
	OPT_ORIGIN,
	OPT_ORIGIN_ENDPOINT,
	OPT_ORIGIN_REGION,
	OPT_ORIGIN_CREDENTIALS,
	OPT_ORIGIN_ADDRESSING,
	OPT_ORIGIN_TTL,
	OPT_ORIGIN_TIMEOUT,
	OPT_DISK_BUDGET,
};

static const struct option ls_options[] = {
	{"socket", required_argument, NULL, OPT_SOCKET},
	{"state-dir", required_argument, NULL, OPT_STATE_DIR},
	{"backend", required_argument, NULL, OPT_BACKEND},
	{"host-budget", required_argument, NULL, OPT_HOST_BUDGET},
	{"device-budget", required_argument, NULL, OPT_DEVICE_BUDGET},
	{"client-pin-limit", required_argument, NULL, OPT_PIN_LIMIT},
	{"admin-group", required_argument, NULL, OPT_ADMIN_GROUP},
	{"socket-group", required_argument, NULL, OPT_SOCKET_GROUP},
	{"metrics-listen", required_argument, NULL, OPT_METRICS_LISTEN},
	{"workers", required_argument, NULL, OPT_WORKERS},
	{"config", required_argument, NULL, OPT_CONFIG},
	{"log-level", required_argument, NULL, OPT_LOG_LEVEL},
	{"event-loop", required_argument, NULL, OPT_EVENT_LOOP},
	{"devices", required_argument, NULL, OPT_DEVICES},
	{"device-slab-size", required_argument, NULL, OPT_DEVICE_SLAB},
	{"host-slab-size", required_argument, NULL, OPT_HOST_SLAB},
	{"max-clients", required_argument, NULL, OPT_MAX_CLIENTS},
	{"hello-timeout", required_argument, NULL, OPT_HELLO_TIMEOUT},
	{"client-reply-limit", required_argument, NULL, OPT_CLIENT_REPLY_LIMIT},
	{"client-jobs", required_argument, NULL, OPT_CLIENT_JOBS},
	{"origin", required_argument, NULL, OPT_ORIGIN},
	{"origin-endpoint", required_argument, NULL, OPT_ORIGIN_ENDPOINT},
	{"origin-region", required_argument, NULL, OPT_ORIGIN_REGION},
	{"origin-credentials", required_argument, NULL, OPT_ORIGIN_CREDENTIALS},
	{"origin-addressing", required_argument, NULL, OPT_ORIGIN_ADDRESSING},
	{"origin-ttl", required_argument, NULL, OPT_ORIGIN_TTL},
	{"origin-timeout", required_argument, NULL, OPT_ORIGIN_TIMEOUT},
	{"disk-budget", required_argument, NULL, OPT_DISK_BUDGET},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0},
};

/* The long name of option opt (its val in ls_options). */
static const char *ls_option_name(int opt)
{
	for (const struct option *o = ls_options; o->name; o++)
		if (o->val == opt)
			return o->name;
	return "?";
}

int ls_size_parse(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	double v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return -EINVAL;
	while (*end == ' ')
		end++;
	static const struct {
		const char *unit;
		double factor;
	} units[] = {
		{"", 1},
		{"B", 1},
		{"K", 1e3},
		{"M", 1e6},
		{"G", 1e9},
		{"T", 1e12},
		{"KB", 1e3},
		{"MB", 1e6},
		{"GB", 1e9},
		{"TB", 1e12},
		{"KiB", 1024.0},
		{"MiB", 1024.0 * 1024},
		{"GiB", 1024.0 * 1024 * 1024},
		{"TiB", 1024.0 * 1024 * 1024 * 1024},
	};
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcmp(end, units[i].unit) == 0) {
			double bytes = v * units[i].factor;
			if (bytes > 1.8e19)
				return -EINVAL;
			*out = (uint64_t)bytes;
			return 0;
		}
	return -EINVAL;
}

void ls_config_defaults(struct ls_config *c)
{
	memset(c, 0, sizeof(*c));
	const char *s = getenv("LORASTORE_SOCKET");
	snprintf(c->socket, sizeof(c->socket), "%s",
		 s && *s ? s : "/run/lorastore/lorastored.sock");
	s = getenv("LORASTORE_STATE_DIR");
	snprintf(c->state_dir, sizeof(c->state_dir), "%s", s && *s ? s : "/var/lib/lorastore");
	c->backend = LS_BACKEND_AUTO;
	c->host_budget = 1ull << 30;
	c->device_budget = 4ull << 30;
	c->device_slab_size = 256ull << 20;
	c->host_slab_size = 256ull << 20;
	snprintf(c->devices, sizeof(c->devices), "all");
	c->log_level = LS_LOG_INFO;
	c->workers = 2;
	c->hello_timeout_ms = 10000;
	c->client_reply_limit = 8ull << 20;
	c->client_jobs = 16;
	c->origin_ttl_ms = 5000;
	c->origin_timeout_ms = 10000;
}

/* Copy val into a field of len bytes: 0, or -EINVAL when it does not fit. */
static int ls_config_text(char *field, size_t len, const char *val)
{
	return snprintf(field, len, "%s", val) >= (int)len ? -EINVAL : 0;
}

/* Apply one option (from argv or the file); where names the source in messages. */
static int ls_config_apply(struct ls_config *c, int opt, const char *val, const char *where)
{
	int rc = 0;
	uint64_t size;
	switch (opt) {
	case OPT_SOCKET:
		rc = ls_config_text(c->socket, sizeof(c->socket), val);
		break;
	case OPT_STATE_DIR:
		rc = ls_config_text(c->state_dir, sizeof(c->state_dir), val);
		break;
	case OPT_BACKEND:
		if (strcmp(val, "auto") == 0)
			c->backend = LS_BACKEND_AUTO;
		else if (strcmp(val, "host") == 0)
			c->backend = LS_BACKEND_HOST;
		else if (strcmp(val, "cuda") == 0)
			c->backend = LS_BACKEND_CUDA;
		else
			rc = -EINVAL;
		break;
	case OPT_DEVICE_BUDGET: {
		size_t n = strlen(val);
		if (n > 1 && val[n - 1] == '%') {
			char *end;
			long pct = strtol(val, &end, 10);
			if (end != val + n - 1 || pct < 1 || pct > 100)
				rc = -EINVAL;
			else
				c->device_budget_pct = (unsigned)pct;
			break;
		}
		rc = ls_size_parse(val, &size);
		if (rc == 0) {
			c->device_budget = size;
			c->device_budget_pct = 0;
		}
		break;
	}
	case OPT_DEVICE_SLAB:
	case OPT_HOST_SLAB:
		rc = ls_size_parse(val, &size);
		if (rc == 0 && size == 0)
			rc = -EINVAL;
		if (rc == 0 && opt == OPT_DEVICE_SLAB)
			c->device_slab_size = size;
		else if (rc == 0)
			c->host_slab_size = size;
		break;
	case OPT_DEVICES:
		rc = !*val ? -EINVAL : ls_config_text(c->devices, sizeof(c->devices), val);
		break;
	case OPT_DISK_BUDGET:
		rc = ls_size_parse(val, &size);
		if (rc == 0)
			c->disk_budget = size;
		break;
	case OPT_HOST_BUDGET:
	case OPT_PIN_LIMIT:
		rc = ls_size_parse(val, &size);
		if (rc == 0 && opt == OPT_HOST_BUDGET)
			c->host_budget = size;
		else if (rc == 0)
			c->client_pin_limit = size;
		break;
	case OPT_ADMIN_GROUP:
		rc = ls_config_text(c->admin_group, sizeof(c->admin_group), val);
		break;
	case OPT_METRICS_LISTEN:
		rc = !*val ? -EINVAL : ls_config_text(c->metrics_listen, sizeof(c->metrics_listen), val);
		break;
	case OPT_SOCKET_GROUP:
		rc = ls_config_text(c->socket_group, sizeof(c->socket_group), val);
		break;
	case OPT_WORKERS: {
		char *end;
		long n = strtol(val, &end, 10);
		if (*end || n < 1 || n > 64)
			rc = -EINVAL;
		else
			c->workers = (unsigned)n;
		break;
	}
	case OPT_CLIENT_REPLY_LIMIT:
		/* Under 4 KiB a connection would pause after almost every reply. */
		rc = ls_size_parse(val, &size);
		if (rc == 0 && size < 4096)
			rc = -EINVAL;
		if (rc == 0)
			c->client_reply_limit = size;
		break;
	case OPT_CLIENT_JOBS:
	case OPT_MAX_CLIENTS:
	case OPT_HELLO_TIMEOUT: {
		char *end;
		errno = 0;
		unsigned long n = strtoul(val, &end, 10);
		if (!isdigit((unsigned char)*val) || *end || errno || n < 1 || n > 10000000)
			rc = -EINVAL;
		else if (opt == OPT_MAX_CLIENTS)
			c->max_clients = (unsigned)n;
		else if (opt == OPT_CLIENT_JOBS)
			c->client_jobs = (unsigned)n;
		else
			c->hello_timeout_ms = (unsigned)n;
		break;
	}
	case OPT_ORIGIN:
		rc = strncmp(val, "s3://", 5) != 0 || !val[5] || val[5] == '/'
			     ? -EINVAL
			     : ls_config_text(c->origin, sizeof(c->origin), val);
		break;
	case OPT_ORIGIN_ENDPOINT:
		rc = strncmp(val, "http://", 7) != 0 && strncmp(val, "https://", 8) != 0
			     ? -EINVAL
			     : ls_config_text(c->origin_endpoint, sizeof(c->origin_endpoint), val);
		break;
	case OPT_ORIGIN_REGION:
		rc = !*val ? -EINVAL : ls_config_text(c->origin_region, sizeof(c->origin_region), val);
		break;
	case OPT_ORIGIN_CREDENTIALS:
		rc = !*val ? -EINVAL
			   : ls_config_text(c->origin_credentials, sizeof(c->origin_credentials), val);
		break;
	case OPT_ORIGIN_ADDRESSING:
		if (strcmp(val, "path") == 0)
			c->origin_virtual_host = false;
		else if (strcmp(val, "virtual") == 0)
			c->origin_virtual_host = true;
		else
			rc = -EINVAL;
		break;
	case OPT_ORIGIN_TTL:
	case OPT_ORIGIN_TIMEOUT: {
		char *end;
		errno = 0;
		unsigned long n = strtoul(val, &end, 10);
		if (!isdigit((unsigned char)*val) || *end || errno || n < 1 || n > 86400000)
			rc = -EINVAL;
		else if (opt == OPT_ORIGIN_TTL)
			c->origin_ttl_ms = (unsigned)n;
		else
			c->origin_timeout_ms = (unsigned)n;
		break;
	}
	case OPT_LOG_LEVEL:
		rc = ls_log_level_parse(val, &c->log_level);
		break;
	case OPT_EVENT_LOOP:
		rc = ls_loop_kind_parse(val, &c->event_loop);
		break;
	default:
		rc = -EINVAL;
	}
	if (rc)
		fprintf(stderr, "lorastored: %s: invalid value '%s'\n", where, val);
	return rc;
}

static char *ls_trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static int ls_config_file(struct ls_config *c, const char *path)
{
	/* A regular file only: a FIFO there would hold the start for ever. */
	int fd = -1;
	int orc = ls_open_regular_at(AT_FDCWD, path, &fd);
	FILE *f = orc ? NULL : fdopen(fd, "r");
	if (!f) {
		if (!orc)
			orc = -errno;
		if (fd >= 0)
			close(fd);
		fprintf(stderr, "lorastored: --config %s: %s\n", path,
			orc == -EINVAL ? "not a regular file" : strerror(-orc));
		return -EINVAL;
	}
	char line[PATH_MAX + 128];
	int lineno = 0, rc = 0;
	while (rc == 0 && fgets(line, sizeof(line), f)) {
		lineno++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char *s = ls_trim(line);
		if (!*s)
			continue;
		char *eq = strchr(s, '=');
		char where[PATH_MAX + 32];
		snprintf(where, sizeof(where), "%s:%d", path, lineno);
		if (!eq) {
			fprintf(stderr, "lorastored: %s: expected 'key = value'\n", where);
			rc = -EINVAL;
			break;
		}
		*eq = '\0';
		char *key = ls_trim(s), *val = ls_trim(eq + 1);
		int opt = 0;
		for (const struct option *o = ls_options; o->name; o++)
			if (strcmp(o->name, key) == 0 && o->has_arg == required_argument &&
			    o->val != OPT_CONFIG)
				opt = o->val;
		if (!opt) {
			fprintf(stderr, "lorastored: %s: unknown key '%s'\n", where, key);
			rc = -EINVAL;
			break;
		}
		rc = ls_config_apply(c, opt, val, where);
	}
	fclose(f);
	return rc;
}

int ls_config_parse(struct ls_config *c, int argc, char **argv)
{
	/* First pass: --config, --help and --version; the file loads before the flags. */
	int opt;
	opterr = 0;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "h", ls_options, NULL)) != -1) {
		if (opt == 'h') {
			fputs(ls_usage, stdout);
			return 1;
		}
		if (opt == OPT_VERSION) {
			printf("lorastored %s\n", LS_VERSION);
			return 1;
		}
		if (opt == OPT_CONFIG)
			snprintf(c->config_file, sizeof(c->config_file), "%s", optarg);
		if (opt == '?' || opt == ':') {
			fprintf(stderr, "lorastored: unknown or incomplete option '%s'\n"
					"Try 'lorastored --help'.\n",
				argv[optind - 1]);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lorastored: unexpected argument '%s'\nTry 'lorastored --help'.\n",
			argv[optind]);
		return -EINVAL;
	}
	if (c->config_file[0] && ls_config_file(c, c->config_file))
		return -EINVAL;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "h", ls_options, NULL)) != -1) {
		if (opt == OPT_CONFIG)
			continue;
		char where[64];
		snprintf(where, sizeof(where), "--%s", ls_option_name(opt));
		if (ls_config_apply(c, opt, optarg, where))
			return -EINVAL;
	}
	return 0;
}
