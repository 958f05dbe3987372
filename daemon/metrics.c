/* The Prometheus endpoint: libmicrohttpd on its own thread, a snapshot from the loop. */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "s3.h"

const double ls_hist_acquire_bounds[LS_HIST_BUCKETS] = {
	1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1,
};
const double ls_hist_load_bounds[LS_HIST_BUCKETS] = {
	1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60,
};

/* Scrapers served at once, and how long an idle one may stay (seconds). */
#define LS_METRICS_CONNECTIONS 16
#define LS_METRICS_TIMEOUT_S 10

struct ls_metrics {
	struct MHD_Daemon *mhd;
	pthread_mutex_t lock;
	struct ls_metrics_snapshot snap;
	bool have_snap;
};

static void ls_hist_write(FILE *f, const char *name, const char *labels,
			  const struct ls_hist *h, const double *bounds)
{
	uint64_t cum = 0;
	const char *sep = labels[0] ? "," : "";
	for (unsigned i = 0; i < LS_HIST_BUCKETS; i++) {
		cum += h->counts[i];
		fprintf(f, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, bounds[i],
			(unsigned long long)cum);
	}
	cum += h->counts[LS_HIST_BUCKETS];
	fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
	if (labels[0]) {
		fprintf(f, "%s_sum{%s} %.9g\n", name, labels, h->sum);
		fprintf(f, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
	} else {
		fprintf(f, "%s_sum %.9g\n", name, h->sum);
		fprintf(f, "%s_count %llu\n", name, (unsigned long long)h->count);
	}
}

/* One metric per tier: name, type, help, and the field of each tier. */
static void ls_tier_metric(FILE *f, const struct ls_metrics_snapshot *s, const char *name,
			   const char *type, const char *help, size_t offset)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	for (unsigned i = 0; i < s->n_tiers; i++) {
		const struct ls_metrics_tier *t = &s->tiers[i];
		uint64_t v;
		memcpy(&v, (const char *)t + offset, sizeof(v));
		fprintf(f, "%s{tier=\"%s\",device=\"%s\"} %llu\n", name, t->tier, t->device,
			(unsigned long long)v);
	}
}

/* A figure of the snapshot exposed as it is: a counter or a gauge without labels. */
struct ls_plain_metric {
	const char *name, *type, *help;
	size_t offset;               /* of its uint64_t in struct ls_metrics_snapshot */
};

static void ls_plain_metrics(FILE *f, const struct ls_metrics_snapshot *s,
			     const struct ls_plain_metric *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t v;
		memcpy(&v, (const char *)s + m[i].offset, sizeof(v));
		fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", m[i].name, m[i].help,
			m[i].name, m[i].type, m[i].name, (unsigned long long)v);
	}
}

/* The origin's figures: only a daemon with --origin has them. */
static void ls_origin_metrics(FILE *f, const struct ls_metrics_snapshot *s)
{
	/* A label value escapes backslash, quote and newline (the text format's rule). */
	char label[2 * sizeof(s->origin)], *o = label;
	for (const char *p = s->origin; *p; p++) {
		if (*p == '\\' || *p == '"' || *p == '\n')
			*o++ = '\\';
		*o++ = *p == '\n' ? 'n' : *p;
	}
	*o = '\0';
	fprintf(f, "# HELP lorastore_origin_info The daemon's origin (the value is always 1).\n"
		   "# TYPE lorastore_origin_info gauge\n"
		   "lorastore_origin_info{origin=\"%s\"} 1\n",
		label);
	static const struct ls_plain_metric origin[] = {
		{"lorastore_origin_requests_total", "counter", "Requests to the origin.",
		 offsetof(struct ls_metrics_snapshot, origin_requests)},
		{"lorastore_origin_errors_total", "counter",
		 "Requests to the origin that failed (refused, timed out, 5xx).",
		 offsetof(struct ls_metrics_snapshot, origin_errors)},
		{"lorastore_origin_received_bytes_total", "counter", "Bytes downloaded from the origin.",
		 offsetof(struct ls_metrics_snapshot, origin_bytes_in)},
		{"lorastore_origin_sent_bytes_total", "counter", "Bytes uploaded to the origin.",
		 offsetof(struct ls_metrics_snapshot, origin_bytes_out)},
		{"lorastore_origin_pulls_total", "counter",
		 "Versions pulled from the origin into this node's catalog.",
		 offsetof(struct ls_metrics_snapshot, origin_pulls)},
		{"lorastore_origin_pulls_in_flight", "gauge", "Pulls in progress.",
		 offsetof(struct ls_metrics_snapshot, origin_pulls_in_flight)},
		{"lorastore_origin_refused_total", "counter",
		 "Downloads refused: a digest, checksum, manifest or record that does not hold.",
		 offsetof(struct ls_metrics_snapshot, origin_refused)},
		{"lorastore_origin_published_total", "counter",
		 "Versions this node created in the origin.",
		 offsetof(struct ls_metrics_snapshot, origin_published)},
		{"lorastore_origin_cache_bytes", "gauge",
		 "Bytes of blobs pulled from the origin on this node's disk.",
		 offsetof(struct ls_metrics_snapshot, origin_cache_bytes)},
		{"lorastore_origin_cache_budget_bytes", "gauge",
		 "--disk-budget: the bytes of pulled blobs kept (0: no bound).",
		 offsetof(struct ls_metrics_snapshot, origin_cache_budget)},
		{"lorastore_origin_cache_evictions_total", "counter",
		 "Pulled versions the disk budget removed from this node (the origin keeps them).",
		 offsetof(struct ls_metrics_snapshot, origin_cache_evictions)},
	};
	ls_plain_metrics(f, s, origin, sizeof(origin) / sizeof(origin[0]));
	fprintf(f, "# HELP lorastore_origin_request_duration_seconds Time of one request to the "
		   "origin, a whole blob's transfer included.\n"
		   "# TYPE lorastore_origin_request_duration_seconds histogram\n");
	ls_hist_write(f, "lorastore_origin_request_duration_seconds", "", &s->origin_latency,
		      ls_s3_latency_bounds);
}

char *ls_metrics_format(const struct ls_metrics_snapshot *s, size_t *len)
{
	char *buf = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&buf, &n);
	if (!f)
		return NULL;
	fprintf(f, "# HELP lorastore_build_info The daemon's version (the value is always 1).\n"
		   "# TYPE lorastore_build_info gauge\n"
		   "lorastore_build_info{version=\"%s\",backend=\"%s\"} 1\n",
		s->version, s->backend);
	fprintf(f, "# HELP lorastore_event_loop_info The event-loop engine in use.\n"
		   "# TYPE lorastore_event_loop_info gauge\n"
		   "lorastore_event_loop_info{engine=\"%s\"} 1\n",
		s->event_loop);
	fprintf(f, "# HELP lorastore_start_time_seconds When the daemon started (Unix time).\n"
		   "# TYPE lorastore_start_time_seconds gauge\n"
		   "lorastore_start_time_seconds %.3f\n",
		s->start_time);
#define LS_TIER_FIELD(field) offsetof(struct ls_metrics_tier, field)
	ls_tier_metric(f, s, "lorastore_tier_budget_bytes", "gauge",
		       "Bytes of resident adapters a tier may hold.", LS_TIER_FIELD(budget));
	ls_tier_metric(f, s, "lorastore_tier_used_bytes", "gauge",
		       "Bytes held by resident adapters.", LS_TIER_FIELD(used));
	ls_tier_metric(f, s, "lorastore_tier_slab_bytes", "gauge", "Bytes of slabs allocated.",
		       LS_TIER_FIELD(slab_bytes));
	ls_tier_metric(f, s, "lorastore_tier_adapters", "gauge", "Resident adapters.",
		       LS_TIER_FIELD(adapters));
	ls_tier_metric(f, s, "lorastore_loads_total", "counter",
		       "Loads that completed (disk to host, host to GPU).", LS_TIER_FIELD(loads));
	ls_tier_metric(f, s, "lorastore_hits_total", "counter",
		       "Acquires and loads of a version already resident.", LS_TIER_FIELD(hits));
	ls_tier_metric(f, s, "lorastore_misses_total", "counter",
		       "Acquires and loads that had to load.", LS_TIER_FIELD(misses));
	ls_tier_metric(f, s, "lorastore_evictions_total", "counter",
		       "Versions evicted to make room or on request.", LS_TIER_FIELD(evictions));
	ls_tier_metric(f, s, "lorastore_load_errors_total", "counter",
		       "Loads that failed (a broken blob, no memory, a copy that failed).",
		       LS_TIER_FIELD(load_errors));
#undef LS_TIER_FIELD
	fprintf(f, "# HELP lorastore_load_duration_seconds Time from the start of a load to "
		   "the version being resident.\n"
		   "# TYPE lorastore_load_duration_seconds histogram\n");
	for (unsigned i = 0; i < s->n_tiers; i++) {
		char labels[128];
		snprintf(labels, sizeof(labels), "tier=\"%s\",device=\"%s\"", s->tiers[i].tier,
			 s->tiers[i].device);
		ls_hist_write(f, "lorastore_load_duration_seconds", labels, &s->tiers[i].load,
			      ls_hist_load_bounds);
	}
	fprintf(f, "# HELP lorastore_acquire_duration_seconds Time from an acquire request to "
		   "its lease (a load included).\n"
		   "# TYPE lorastore_acquire_duration_seconds histogram\n");
	ls_hist_write(f, "lorastore_acquire_duration_seconds", "", &s->acquire,
		      ls_hist_acquire_bounds);
	static const struct ls_plain_metric plain[] = {
		{"lorastore_clients", "gauge", "Connections open.",
		 offsetof(struct ls_metrics_snapshot, clients)},
		{"lorastore_max_clients", "gauge", "Connections served at once at most.",
		 offsetof(struct ls_metrics_snapshot, max_clients)},
		{"lorastore_leases", "gauge", "Leases held, all connections (warm ones included).",
		 offsetof(struct ls_metrics_snapshot, leases)},
		{"lorastore_warm_leases", "gauge",
		 "Leases held in lease pages, taken in shared memory without a request.",
		 offsetof(struct ls_metrics_snapshot, warm_leases)},
		{"lorastore_warm_acquires_total", "counter",
		 "Acquires made in shared memory, as the clients count them.",
		 offsetof(struct ls_metrics_snapshot, warm_acquires)},
		{"lorastore_warm_unpublished_total", "counter",
		 "Times a version could not be published in the warm path's directory (its set "
		 "was full).",
		 offsetof(struct ls_metrics_snapshot, warm_unpublished)},
		{"lorastore_warm_over_limit_total", "counter",
		 "Connections closed for pinning more than --client-pin-limit through a lease page.",
		 offsetof(struct ls_metrics_snapshot, warm_over_limit)},
		{"lorastore_imports_total", "counter", "Imports that added a version.",
		 offsetof(struct ls_metrics_snapshot, imports)},
		{"lorastore_import_errors_total", "counter", "Imports refused or failed.",
		 offsetof(struct ls_metrics_snapshot, import_errors)},
		{"lorastore_catalog_versions", "gauge", "Versions in the catalog.",
		 offsetof(struct ls_metrics_snapshot, catalog_versions)},
		{"lorastore_refused_connections_total", "counter",
		 "Connections refused: over --max-clients, or out of descriptors.",
		 offsetof(struct ls_metrics_snapshot, refused_connections)},
		{"lorastore_hello_timeouts_total", "counter",
		 "Connections closed for want of a Hello in time.",
		 offsetof(struct ls_metrics_snapshot, hello_timeouts)},
		{"lorastore_client_reads_paused_total", "counter",
		 "Times a connection's requests were left unread because its unread replies "
		 "were over --client-reply-limit.",
		 offsetof(struct ls_metrics_snapshot, throttled)},
		{"lorastore_malformed_requests_total", "counter",
		 "Connections closed for a request that could not be answered (no protobuf "
		 "message, or no request id).",
		 offsetof(struct ls_metrics_snapshot, malformed)},
		{"lorastore_jobs_refused_total", "counter",
		 "Requests answered busy: their connection had --client-jobs requests on the "
		 "workers.",
		 offsetof(struct ls_metrics_snapshot, jobs_refused)},
		{"lorastore_jobs_cancelled_total", "counter",
		 "Worker jobs dropped unstarted because their connection closed.",
		 offsetof(struct ls_metrics_snapshot, jobs_cancelled)},
	};
	ls_plain_metrics(f, s, plain, sizeof(plain) / sizeof(plain[0]));
	if (s->origin[0])
		ls_origin_metrics(f, s);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

static enum MHD_Result ls_metrics_answer(void *cls, struct MHD_Connection *c, const char *url,
					 const char *method, const char *version,
					 const char *upload_data, size_t *upload_size, void **state)
{
	struct ls_metrics *m = cls;
	(void)version;
	(void)upload_data;
	(void)state;
	static const char not_found[] = "not found: lorastored serves /metrics\n";
	static const char not_allowed[] = "only GET and HEAD\n";
	struct MHD_Response *r;
	unsigned status;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
		r = MHD_create_response_from_buffer(sizeof(not_allowed) - 1, (void *)not_allowed,
						    MHD_RESPMEM_PERSISTENT);
	} else if (*upload_size != 0) {
		return MHD_NO;
	} else if (strcmp(url, "/metrics") != 0) {
		status = MHD_HTTP_NOT_FOUND;
		r = MHD_create_response_from_buffer(sizeof(not_found) - 1, (void *)not_found,
						    MHD_RESPMEM_PERSISTENT);
	} else {
		struct ls_metrics_snapshot snap;
		pthread_mutex_lock(&m->lock);
		snap = m->snap;
		bool have = m->have_snap;
		pthread_mutex_unlock(&m->lock);
		size_t len = 0;
		char *text = have ? ls_metrics_format(&snap, &len) : NULL;
		if (!text) {
			static const char busy[] = "no figures yet\n";
			status = MHD_HTTP_SERVICE_UNAVAILABLE;
			r = MHD_create_response_from_buffer(sizeof(busy) - 1, (void *)busy,
							    MHD_RESPMEM_PERSISTENT);
		} else {
			status = MHD_HTTP_OK;
			r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
			if (r)
				MHD_add_response_header(r, "Content-Type",
							"text/plain; version=0.0.4; charset=utf-8");
			else
				free(text);
		}
	}
	if (!r)
		return MHD_NO;
	enum MHD_Result rc = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return rc;
}

/* "1.2.3.4:9464" or "[::1]:9464" into a socket address. */
static int ls_parse_listen(const char *s, struct sockaddr_storage *ss, bool *v6)
{
	char host[64];
	const char *port;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof(host))
			return -EINVAL;
		memcpy(host, s + 1, (size_t)(end - s - 1));
		host[end - s - 1] = '\0';
		port = end + 2;
	} else {
		const char *colon = strrchr(s, ':');
		if (!colon || (size_t)(colon - s) >= sizeof(host))
			return -EINVAL;
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port = colon + 1;
	}
	char *end;
	long p = strtol(port, &end, 10);
	if (!*port || *end || p < 1 || p > 65535)
		return -EINVAL;
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)p);
		*v6 = false;
		return 0;
	}
	if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)p);
		*v6 = true;
		return 0;
	}
	return -EINVAL;
}

int ls_metrics_start(const char *listen, struct ls_metrics **out, struct ls_err *err)
{
	*out = NULL;
	struct sockaddr_storage ss;
	bool v6 = false;
	if (ls_parse_listen(listen, &ss, &v6) != 0)
		return ls_err_set(err, -EINVAL,
				  "--metrics-listen %s: expected ADDR:PORT (an IPv4 address) or "
				  "[ADDR]:PORT (IPv6), such as 127.0.0.1:9464",
				  listen);
	struct ls_metrics *m = calloc(1, sizeof(*m));
	if (!m)
		return ls_err_set(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&m->lock, NULL);
	unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
	m->mhd = MHD_start_daemon(flags, 0, NULL, NULL, ls_metrics_answer, m, MHD_OPTION_SOCK_ADDR,
				  (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
				  (unsigned)LS_METRICS_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
				  (unsigned)LS_METRICS_TIMEOUT_S, MHD_OPTION_END);
	if (!m->mhd) {
		int e = errno ? errno : EADDRNOTAVAIL;
		pthread_mutex_destroy(&m->lock);
		free(m);
		return ls_err_set(err, -e, "--metrics-listen %s: cannot serve HTTP there (%s)",
				  listen, strerror(e));
	}
	*out = m;
	return 0;
}

void ls_metrics_publish(struct ls_metrics *m, const struct ls_metrics_snapshot *snap)
{
	pthread_mutex_lock(&m->lock);
	m->snap = *snap;
	m->have_snap = true;
	pthread_mutex_unlock(&m->lock);
}

void ls_metrics_stop(struct ls_metrics *m)
{
	if (!m)
		return;
	MHD_stop_daemon(m->mhd);
	pthread_mutex_destroy(&m->lock);
	free(m);
}
