/* Configuration of lorastored: command-line options and the config file. */
#ifndef LS_CONFIG_H
#define LS_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "log.h"
#include "loop.h"

enum ls_backend_kind { LS_BACKEND_AUTO, LS_BACKEND_HOST, LS_BACKEND_CUDA };

struct ls_config {
	char socket[PATH_MAX];           /* --socket / socket */
	char state_dir[PATH_MAX];        /* --state-dir / state-dir */
	enum ls_backend_kind backend;    /* --backend / backend */
	uint64_t host_budget;            /* bytes; --host-budget / host-budget */
	uint64_t device_budget;          /* bytes per GPU; --device-budget / device-budget */
	unsigned device_budget_pct;      /* or this % of each GPU's free memory (0: bytes) */
	uint64_t device_slab_size;       /* bytes of a regular device slab */
	uint64_t host_slab_size;         /* bytes of a regular host slab */
	char devices[512];               /* --devices: "all", or ordinals and UUIDs, commas */
	uint64_t client_pin_limit;       /* bytes one connection may pin; 0: no limit */
	char admin_group[64];            /* --admin-group / admin-group; "" for none */
	char metrics_listen[128];        /* --metrics-listen ADDR:PORT; "" for none */
	char socket_group[64];           /* --socket-group: the clients' group of a socket it creates */
	enum ls_log_level log_level;     /* --log-level / log-level */
	enum ls_loop_kind event_loop;    /* --event-loop / event-loop */
	unsigned workers;                /* threads of the worker pool */
	unsigned max_clients;            /* connections served at once; 0: from the descriptor limit */
	unsigned hello_timeout_ms;       /* a new connection's Hello must arrive within this */
	uint64_t client_reply_limit;     /* bytes of replies queued for one connection before
					    its requests wait; --client-reply-limit */
	unsigned client_jobs;            /* worker jobs one connection may have queued or
					    running; --client-jobs */
	char config_file[PATH_MAX];      /* --config, "" when none */
	/* The origin (store/origin.h): every field "" or 0 when none is configured. */
	char origin[512];                /* --origin s3://BUCKET[/PREFIX] */
	char origin_endpoint[512];       /* --origin-endpoint URL (else AWS_ENDPOINT_URL) */
	char origin_region[64];          /* --origin-region (else AWS_REGION) */
	char origin_credentials[PATH_MAX]; /* --origin-credentials FILE (AWS credentials format) */
	bool origin_virtual_host;        /* --origin-addressing virtual */
	unsigned origin_ttl_ms;          /* --origin-ttl MS: how long "NAME" trusts a look */
	unsigned origin_timeout_ms;      /* --origin-timeout MS: connect, and a stalled transfer */
	uint64_t disk_budget;            /* --disk-budget: bytes of pulled blobs on disk; 0: no bound */
};

/*
 * Parse a size: a number with an optional unit K, M, G, T (powers of 1000),
 * KiB, MiB, GiB, TiB (powers of 1024), or B.  0 or -EINVAL.
 */
int ls_size_parse(const char *s, uint64_t *out);

/* The defaults: socket and state from LORASTORE_SOCKET / LORASTORE_STATE_DIR or /run, /var/lib. */
void ls_config_defaults(struct ls_config *c);

/*
 * Fill c from argv and, when --config names one, from the file ("key = value"
 * lines with the option names without dashes, '#' comments); options on the
 * command line win over the file.  Returns 0, 1 when --help or --version was
 * printed, or -EINVAL after printing a usage error to stderr.
 */
int ls_config_parse(struct ls_config *c, int argc, char **argv);

#endif
