/*
 * The daemon's state: the event loop, the store, the memory backends,
 * residency, the client sessions and what they hold.  Who owns what:
 *   session.c       connections: accept, receive and frame, send with
 *                   descriptors, teardown; it hands each request to
 *                   srv->dispatch and knows nothing of what requests do
 *   dispatch.c      Hello, and each request to the module that answers it
 *   request.c       what every answer needs: admin checks, the tier a request
 *                   names, the per-connection bound on worker jobs
 *   catalog_jobs.c  catalog writes and scans on the workers (import, delete,
 *                   tag, export, verify, gc, rebuild)
 *   catalog_reads.c catalog reads on the workers (show, list, and the
 *                   lookups of acquire, load, prefetch, evict)
 *   acquire.c       acquire, load, release, prefetch, evict
 *   leases.c        who pins what, and the per-client limits
 *   pending.c       requests waiting for a load
 *   refcache.c      references resolved to generations (kept in the directory)
 *   warm.c          the warm path: the directory, residency's hooks, the pages' look
 *   job_queue.c     catalog writes of one name, one at a time
 *   stats.c         the figures of stats and of /metrics, one mapping
 *   main.c          start-up, signals, the tick, shutdown
 * Arrows point down that list, and every module may call session.c's
 * senders; session.c calls up only through srv->dispatch.
 */
#ifndef LS_SERVER_H
#define LS_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "backend.h"
#include "config.h"
#include "frame.h"
#include "hist.h"
#include "job_queue.h"
#include "leases.h"
#include "loop.h"
#include "pending.h"
#include "refcache.h"
#include "residency.h"
#include "store.h"
#include "warm.h"
#include "workers.h"

/*
 * Most descriptors one session holds received and not yet given to a
 * request, and most one request may bring (no request takes more than two:
 * an import's config and weights).  More are closed and the request they
 * came with is refused.
 */
#define LS_SESSION_MAX_FDS 8
/* Bytes asked of one receive. */
#define LS_RECV_CHUNK (64u << 10)

struct ls_session;

/* Most descriptors one response carries (a data slab and a table slab). */
#define LS_OUTMSG_MAX_FDS 2

/* A response waiting to be sent, with its descriptors. */
struct ls_outmsg {
	struct ls_outmsg *next;
	uint8_t *buf;
	size_t len, off;
	int fds[LS_OUTMSG_MAX_FDS];  /* sent with the first bytes */
	unsigned n_fds;
	unsigned owned;              /* bit i: fds[i] is the message's, closed once sent or dropped */
};

struct ls_server;
struct ls_metrics;

struct ls_session {
	struct ls_server *srv;
	int fd;
	uint32_t id;
	int64_t accepted_ms;         /* CLOCK_MONOTONIC; the Hello is due hello_timeout_ms later */
	int64_t req_t0_ns;           /* CLOCK_MONOTONIC when the request being dispatched arrived */
	struct ucred cred;
	bool admin;
	bool hello_done;
	bool closing;                /* being torn down; freed when nothing refers to it */
	bool close_after_send;       /* close once the send queue is empty */
	struct ls_framer framer;

	struct ls_op recv_op;
	struct msghdr rmsg;
	struct iovec riov;
	union {
		char buf[CMSG_SPACE(sizeof(int) * LS_SESSION_MAX_FDS)];
		struct cmsghdr align;
	} rcmsg;
	/*
	 * Descriptors belong to the request whose frame holds the last byte
	 * of the receive that brought them: the kernel stops a receive right
	 * after the message that carried descriptors, and a client sends a
	 * request's descriptors with that request's frame alone.  Each
	 * descriptor's pos is that byte's position in the stream.
	 */
	uint64_t rx_bytes;           /* bytes received on this connection */
	uint64_t rx_framed;          /* bytes handed out as frames: where the next frame starts */
	struct ls_rx_fd {
		int fd;
		uint64_t pos;
	} rx_fds[LS_SESSION_MAX_FDS]; /* received, not yet given to a request, oldest first */
	unsigned n_rx_fds;
	bool rx_fds_dropped;         /* some could not be kept (closed): the request is refused */
	uint64_t rx_dropped_pos;
	int req_fds[LS_SESSION_MAX_FDS]; /* the request being dispatched: its descriptors */
	unsigned req_n_fds;
	bool req_fds_dropped;        /* it brought more than could be kept */
	bool recv_paused;            /* the reply queue is over --client-reply-limit */

	struct ls_op send_op;
	struct msghdr smsg;
	struct iovec siov;
	union {
		char buf[CMSG_SPACE(sizeof(int) * LS_OUTMSG_MAX_FDS)];
		struct cmsghdr align;
	} scmsg;
	struct ls_outmsg *out_head, *out_tail;
	uint64_t out_bytes;          /* reply bytes queued and not yet sent */

	struct ls_lease_set leases;
	uint8_t *slabs_sent;         /* one bit per slab id: its descriptor went to this peer */
	uint32_t n_slabs_sent;       /* bits */
	struct ls_pending_list pending;
	unsigned jobs;               /* worker jobs that will answer this session */
	struct ls_job_owner job_owner; /* its place in the workers' turns */

	struct ls_session *next, *prev;
};

struct ls_server {
	struct ls_config *cfg;
	struct ls_loop loop;
	struct ls_workers *workers;
	int workers_efd;
	struct ls_op workers_op;
	uint64_t workers_count;
	struct ls_store *store;
	struct ls_backend backend;   /* host memory */
	struct ls_backend devices[LS_RES_MAX_TIERS - 1]; /* one per GPU served, as the device tiers */
	unsigned n_devices;
	struct ls_residency *res;
	/* Answers a request session.c framed (main.c sets it: ls_dispatch). */
	void (*dispatch)(struct ls_session *s, Lorastore__Request *req);

	int listen_fd;
	bool listen_inherited;       /* from systemd socket activation */
	bool accepting;
	struct ls_op accept_op;
	/*
	 * Connections: at most max_clients sessions; one more is told why and
	 * closed.  When descriptors run out, accepting pauses until a session
	 * is freed or accept_resume_ms passes (backing off), and the spare
	 * descriptor is given up for a moment to tell the waiting peer why.
	 */
	unsigned max_clients;
	unsigned fd_limit;           /* RLIMIT_NOFILE soft limit after start-up */
	int spare_fd;
	bool accept_paused;
	int64_t accept_resume_ms;    /* CLOCK_MONOTONIC */
	unsigned accept_backoff_ms;
	uint64_t refused_connections; /* over max_clients or out of descriptors */
	uint64_t hello_timeouts;     /* connections closed for want of a Hello */
	struct ls_ratelimit log_refused, log_exhausted, log_hello, log_accept, log_malformed;
	/* Per-connection bounds at work (metrics): */
	uint64_t throttled;          /* times a connection's reading paused for its reply queue */
	uint64_t malformed;          /* connections closed for a request that cannot be answered */
	uint64_t jobs_refused;       /* requests refused over --client-jobs */
	uint64_t jobs_cancelled;     /* worker jobs skipped: their connection was gone */

	int signal_fd;                /* nonblocking */
	struct ls_op signal_op;

	struct ls_op tick_op;

	struct ls_session *sessions;
	uint32_t n_sessions;
	uint32_t next_session_id;
	uint64_t instance;           /* random at start: names this run's slabs to clients */
	struct ls_leases leases;
	struct ls_job_queue name_jobs; /* imports and deletes, one at a time per name */
	/* Figures for the metrics endpoint (metrics.h) besides the residency's. */
	struct ls_metrics *metrics;  /* NULL without --metrics-listen */
	struct ls_hist acquire_hist; /* request to lease */
	uint64_t imports, import_errors;
	double start_time;           /* Unix time */
	bool rebuilding;             /* a catalog rebuild runs: imports and deletes are refused */
	uint64_t delete_seq;         /* deletes finished so far: a catalog read older is stale */
	uint64_t catalog_seq;        /* imports, deletes and rebuilds finished so far */
	uint64_t catalog_versions;   /* versions in the catalog: counted at start, kept up to date */
	/* The origin's disk cache (disk_cache.h) */
	uint64_t origin_pulls_seen;  /* the origin's pulls already counted in catalog_versions */
	bool cache_trimming;         /* a trim of the pulled blobs is on the workers */
	uint64_t cache_evictions;    /* pulled versions the disk budget removed */
	bool stopping;

	bool have_admin_gid;
	gid_t admin_gid;

	/* References resolved to generations: entries for a name are dropped when it changes. */
	struct ls_refcache *refcache;
	struct ls_warm warm;         /* the directory and the warm path (warm.h) */
};

/* session.c */
void ls_server_accept(struct ls_server *srv);
/* Resume a paused accept once its backoff passed; close sessions past the Hello deadline. */
void ls_server_check_connections(struct ls_server *srv, int64_t now_ms);
void ls_session_send(struct ls_session *s, const Lorastore__Response *resp, int fd);
/* Send a frame encoded already (ls_response_encode's output), which it takes over. */
void ls_session_send_packed(struct ls_session *s, uint8_t *frame, size_t len);
/* The same with up to LS_OUTMSG_MAX_FDS descriptors. */
void ls_session_send_fds(struct ls_session *s, const Lorastore__Response *resp, const int *fds,
			 unsigned n_fds);
/* The same, the descriptors whose bit is set in owned closed once sent (or dropped). */
void ls_session_send_fds_owned(struct ls_session *s, const Lorastore__Response *resp,
			       const int *fds, unsigned n_fds, unsigned owned);
/*
 * Whether slab id's descriptor still has to go to this peer; marks it sent.
 * -ENOMEM when the record cannot grow.
 */
int ls_session_slab_unsent(struct ls_session *s, uint32_t id);
void ls_session_error(struct ls_session *s, uint64_t id, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void ls_session_close(struct ls_session *s, const char *why);
/* Take the next descriptor the request being dispatched brought, or -1. */
int ls_session_take_fd(struct ls_session *s);
/* Free sessions that are closed and no longer referred to. */
void ls_server_reap_sessions(struct ls_server *srv);

/* dispatch.c: answer a request (srv->dispatch). */
void ls_dispatch(struct ls_session *s, Lorastore__Request *req);

#endif
