/*
 * The Prometheus endpoint (--metrics-listen): libmicrohttpd serves /metrics
 * in the text format on its own thread, from the last snapshot the loop
 * published (stats.h takes it; the stats request answers from the same).  The loop never waits on a scraper: publishing copies a few
 * hundred bytes under a mutex, and the HTTP thread formats its own copy.
 */
#ifndef LS_METRICS_H
#define LS_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "hist.h"
#include "ls_error.h"
#include "residency.h"

struct ls_metrics_tier {
	enum ls_tier_kind kind;
	char tier[8];                /* its name: "host" or "device" */
	char device[48];             /* device tier: the GPU's UUID */
	int ordinal;                 /* device tier: the daemon's CUDA ordinal; -1 on host */
	uint64_t budget, used, slab_bytes, table_bytes; /* bytes */
	uint64_t adapters;           /* resident versions */
	uint64_t loads, hits, misses, evictions, load_errors;
	struct ls_hist load;         /* load latencies */
};

struct ls_metrics_snapshot {
	unsigned n_tiers;
	struct ls_metrics_tier tiers[LS_RES_MAX_TIERS];
	struct ls_hist acquire;      /* acquire latencies, request to lease */
	uint64_t clients, max_clients, leases;
	uint64_t warm_leases;        /* of leases: held in lease pages */
	uint64_t warm_acquires;      /* acquires in shared memory, as the clients count them */
	uint64_t warm_unpublished;   /* publications refused: the version's set was full */
	uint64_t warm_over_limit;    /* connections closed for pinning too much through a page */
	uint64_t imports, import_errors, catalog_versions;
	uint64_t refused_connections, hello_timeouts;
	uint64_t throttled, malformed, jobs_refused, jobs_cancelled; /* per-connection bounds */
	char event_loop[16];
	char backend[8];
	char version[32];
	double start_time;           /* seconds since the epoch */
	/* The origin (--origin): origin[0] is '\0' when there is none. */
	char origin[256];            /* "s3://BUCKET/PREFIX at ENDPOINT" */
	uint64_t origin_requests, origin_errors, origin_bytes_in, origin_bytes_out;
	uint64_t origin_pulls, origin_pulls_in_flight, origin_refused, origin_published;
	uint64_t origin_cache_bytes, origin_cache_budget, origin_cache_evictions;
	struct ls_hist origin_latency; /* request latencies */
};

struct ls_metrics;

/*
 * Serve /metrics on listen ("ADDR:PORT", or "[ADDR6]:PORT") from a thread
 * of libmicrohttpd's.  Returns 0, -EINVAL for an address that does not
 * parse, or the failure to bind, with err.
 */
int ls_metrics_start(const char *listen, struct ls_metrics **out, struct ls_err *err);

/* Publish the loop's figures (copied). */
void ls_metrics_publish(struct ls_metrics *m, const struct ls_metrics_snapshot *snap);

/* Stop serving and free m (NULL is a no-op). */
void ls_metrics_stop(struct ls_metrics *m);

/* The text exposition of snap, malloc'ed (for tests and the HTTP thread); NULL on ENOMEM. */
char *ls_metrics_format(const struct ls_metrics_snapshot *snap, size_t *len);

#endif
