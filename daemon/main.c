/* lorastored: set up the store, the backend and the socket, then run the loop. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "backend_cuda.h"
#include "log.h"
#include "ls_clock.h"
#include "ls_size.h"
#include "metrics.h"
#include "disk_cache.h"
#include "origin_setup.h"
#include "server.h"
#include "stats.h"

#define LS_TICK_MS 100

static void ls_signal_submit(struct ls_server *srv);
static void ls_tick_submit(struct ls_server *srv);
static void ls_workers_submit_read(struct ls_server *srv);

static void ls_begin_stop(struct ls_server *srv, const char *why)
{
	if (srv->stopping)
		return;
	srv->stopping = true;
	ls_info("%s: draining (%u client%s, %u job%s)", why, srv->n_sessions,
		srv->n_sessions == 1 ? "" : "s", ls_workers_busy(srv->workers),
		ls_workers_busy(srv->workers) == 1 ? "" : "s");
	sd_notify(0, "STOPPING=1\nSTATUS=draining");
	if (srv->accepting)
		ls_loop_cancel(&srv->loop, &srv->accept_op);
	/* Idle sessions close now; sessions with jobs in flight close when answered. */
	for (struct ls_session *s = srv->sessions; s; s = s->next)
		if (s->jobs == 0)
			ls_session_close(s, "daemon stopping");
		else
			s->close_after_send = true;
}

/* The signalfd is nonblocking: read every signal queued, then wait again. */
static void ls_signal_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_server *srv = (struct ls_server *)((char *)op - offsetof(struct ls_server, signal_op));
	(void)loop;
	(void)res;
	struct signalfd_siginfo si;
	while (read(srv->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		int sig = (int)si.ssi_signo;
		ls_begin_stop(srv, sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "signal");
	}
	if (!srv->stopping)
		ls_signal_submit(srv);
}

static void ls_signal_submit(struct ls_server *srv)
{
	ls_loop_poll_in(&srv->loop, &srv->signal_op, ls_signal_done, srv->signal_fd);
}

static void ls_tick_done(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_server *srv = (struct ls_server *)((char *)op - offsetof(struct ls_server, tick_op));
	(void)loop;
	(void)res;
	/* Expire acquires whose timeout passed; check connections. */
	int64_t now = ls_mono_ms();
	ls_server_check_connections(srv, now);
	for (struct ls_session *s = srv->sessions; s; s = s->next)
		ls_pending_expire(&s->pending, now);
	ls_warm_tick(srv);
	if (srv->metrics) {
		struct ls_metrics_snapshot snap;
		ls_stats_snapshot(srv, &snap);
		ls_metrics_publish(srv->metrics, &snap);
	}
	if (!srv->stopping)
		ls_tick_submit(srv);
}

static void ls_tick_submit(struct ls_server *srv)
{
	ls_loop_timeout(&srv->loop, &srv->tick_op, ls_tick_done, LS_TICK_MS);
}

static void ls_workers_ready(struct ls_loop *loop, struct ls_op *op, int res)
{
	struct ls_server *srv = (struct ls_server *)((char *)op - offsetof(struct ls_server, workers_op));
	(void)loop;
	(void)res;
	ls_workers_reap(srv->workers);
	ls_workers_submit_read(srv);
}

static void ls_workers_submit_read(struct ls_server *srv)
{
	/* A poll, not a read: ls_workers_reap reads the counter itself. */
	ls_loop_poll_in(&srv->loop, &srv->workers_op, ls_workers_ready, srv->workers_efd);
}

/* Most clients by default, whatever the descriptor limit. */
#define LS_MAX_CLIENTS_DEFAULT_CAP 16384u

/*
 * Descriptors: the soft limit raised to the hard one (a flood of connections
 * should meet --max-clients, not EMFILE), the client limit derived from it
 * unless given, and a spare descriptor kept for telling a peer that the
 * daemon ran out.  Half the limit goes to clients; the other half is for
 * slabs, blobs being read, imports' files and the catalog.
 */
static void ls_connection_limits(struct ls_server *srv)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rlim_t soft = rl.rlim_cur;
		if (rl.rlim_cur < rl.rlim_max) {
			struct rlimit want = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
			if (setrlimit(RLIMIT_NOFILE, &want) == 0)
				soft = rl.rlim_max;
		}
		srv->fd_limit = soft > UINT_MAX ? UINT_MAX : (unsigned)soft;
		ls_info("descriptor limit %u (was %llu, hard limit %llu)", srv->fd_limit,
			(unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
	} else {
		srv->fd_limit = 1024;
	}
	unsigned derived = srv->fd_limit / 2;
	if (derived > LS_MAX_CLIENTS_DEFAULT_CAP)
		derived = LS_MAX_CLIENTS_DEFAULT_CAP;
	if (derived < 1)
		derived = 1;
	srv->max_clients = srv->cfg->max_clients ? srv->cfg->max_clients : derived;
	if (srv->cfg->max_clients && srv->cfg->max_clients > srv->fd_limit / 2)
		ls_warn("--max-clients %u is more than half the descriptor limit %u: the daemon "
			"may run out of descriptors before it refuses clients",
			srv->cfg->max_clients, srv->fd_limit);
	srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	struct ls_ratelimit every_10s = LS_RATELIMIT_INIT(10000);
	srv->log_refused = srv->log_exhausted = srv->log_hello = srv->log_accept =
		srv->log_malformed = every_10s;
}

/*
 * The listening socket: inherited from systemd, or created with mode 0660
 * (group: --socket-group, the clients', else the daemon's own).  A stale socket file nobody
 * listens on is replaced; a live one means another daemon runs there.
 */
static int ls_listen(struct ls_server *srv)
{
	int n = sd_listen_fds(1);
	if (n > 1) {
		ls_error("systemd passed %d sockets; lorastored takes one", n);
		return -EINVAL;
	}
	if (n == 1) {
		if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) <= 0) {
			ls_error("the socket systemd passed is not a listening Unix stream socket");
			return -EINVAL;
		}
		srv->listen_fd = SD_LISTEN_FDS_START;
		srv->listen_inherited = true;
		fcntl(srv->listen_fd, F_SETFD, FD_CLOEXEC);
		ls_info("serving the socket systemd passed");
		return 0;
	}
	const char *path = srv->cfg->socket;
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(addr.sun_path)) {
		ls_error("socket path too long: %s", path);
		return -ENAMETOOLONG;
	}
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			ls_error("%s exists and is not a socket", path);
			close(fd);
			return -EEXIST;
		}
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int live = probe >= 0 && connect(probe, (struct sockaddr *)&addr, sizeof(addr)) == 0;
		/*
		 * A daemon killed a moment ago can leave its socket accepting while
		 * the kernel tears down its event loop: it is stale when the process
		 * behind it no longer exists.
		 */
		struct ucred peer;
		socklen_t plen = sizeof(peer);
		if (live && getsockopt(probe, SOL_SOCKET, SO_PEERCRED, &peer, &plen) == 0 &&
		    peer.pid > 0 && kill(peer.pid, 0) != 0 && errno == ESRCH)
			live = 0;
		if (probe >= 0)
			close(probe);
		if (live) {
			ls_error("another lorastored serves %s", path);
			close(fd);
			return -EADDRINUSE;
		}
		unlink(path);
	}
	mode_t old = umask(0117);
	int rc = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
	umask(old);
	if (rc != 0 || chmod(path, 0660) != 0 || listen(fd, SOMAXCONN) != 0) {
		rc = -errno;
		ls_error("%s: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	if (srv->cfg->socket_group[0]) {
		struct group *g = getgrnam(srv->cfg->socket_group);
		if (!g || chown(path, (uid_t)-1, g->gr_gid) != 0) {
			ls_error("%s: cannot give the socket to group '%s': %s", path,
				 srv->cfg->socket_group, g ? strerror(errno) : "no such group");
			close(fd);
			unlink(path);
			return -EINVAL;
		}
	}
	srv->listen_fd = fd;
	ls_info("listening on %s", path);
	return 0;
}

/* Whether GPU dev is in the --devices list ("all", or ordinals and UUIDs). */
static bool ls_device_selected(const char *list, const struct ls_cuda_device *dev)
{
	if (strcmp(list, "all") == 0)
		return true;
	char buf[sizeof(((struct ls_config *)0)->devices)];
	snprintf(buf, sizeof(buf), "%s", list);
	char *save = NULL;
	for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
		char *end;
		long n = strtol(tok, &end, 10);
		if ((*end == '\0' && n == dev->ordinal) || strcasecmp(tok, dev->uuid) == 0)
			return true;
	}
	return false;
}

/*
 * The device tiers: one per selected, usable GPU.  auto without any logs why
 * and serves host memory; cuda without any fails.
 */
_Static_assert(LS_CUDA_MAX_DEVICES <= LS_RES_MAX_TIERS - 1,
	       "every GPU the driver lists can have a device tier");

static int ls_setup_devices(struct ls_server *srv)
{
	struct ls_config *cfg = srv->cfg;
	if (cfg->backend == LS_BACKEND_HOST)
		return 0;
	bool must = cfg->backend == LS_BACKEND_CUDA;
	struct ls_cuda_device devs[LS_CUDA_MAX_DEVICES];
	int n = 0;
	struct ls_err err;
	if (ls_cuda_devices(devs, &n, &err)) {
		if (must) {
			ls_error("--backend cuda: %s", err.msg);
			return LS_E_BACKEND;
		}
		ls_info("backend auto: host memory only (%s)", err.msg);
		return 0;
	}
	for (int i = 0; i < n; i++) {
		if (!ls_device_selected(cfg->devices, &devs[i]))
			continue;
		if (!devs[i].usable) {
			ls_warn("GPU %d (%s, %s) has no VMM with POSIX file descriptors; not served",
				devs[i].ordinal, devs[i].uuid, devs[i].name);
			continue;
		}
		struct ls_backend *b = &srv->devices[srv->n_devices];
		if (ls_backend_cuda_create(devs[i].ordinal, b, &err)) {
			ls_error("GPU %d (%s): %s", devs[i].ordinal, devs[i].uuid, err.msg);
			return LS_E_BACKEND;
		}
		srv->n_devices++;
		/* Free memory now that the daemon's own context on the GPU exists. */
		uint64_t free_bytes = devs[i].free_bytes, total_bytes = 0;
		if (ls_backend_query_memory(b, &free_bytes, &total_bytes) || total_bytes == 0)
			free_bytes = devs[i].free_bytes;
		uint64_t budget = cfg->device_budget;
		if (cfg->device_budget_pct)
			budget = free_bytes / 100 * cfg->device_budget_pct;
		else if (total_bytes && budget > free_bytes)
			ls_warn("GPU %d (%s): --device-budget %llu is more than its %llu free bytes: "
				"loads beyond them fall back to evicting", devs[i].ordinal,
				devs[i].uuid, (unsigned long long)budget,
				(unsigned long long)free_bytes);
		if (ls_residency_add_device(srv->res, b, devs[i].ordinal, devs[i].uuid, budget,
					    cfg->device_slab_size, &err)) {
			ls_error("GPU %d (%s): %s", devs[i].ordinal, devs[i].uuid, err.msg);
			return LS_E_BACKEND;
		}
		char b_s[32], f_s[32];
		ls_format_size(budget, b_s, sizeof(b_s));
		ls_format_size(free_bytes, f_s, sizeof(f_s));
		ls_info("device tier %u: GPU %d, %s, %s, budget %s of %s free",
			ls_res_tier_count(srv->res) - 1, devs[i].ordinal, devs[i].uuid, devs[i].name, b_s, f_s);
	}
	if (srv->n_devices == 0) {
		const char *why = n == 0 ? "the driver reports no GPU"
				  : "no selected GPU is usable (--devices)";
		if (must) {
			ls_error("--backend cuda: %s", why);
			return LS_E_BACKEND;
		}
		ls_info("backend auto: host memory only (%s)", why);
	}
	return 0;
}

int main(int argc, char **argv)
{
	/*
	 * Imports allocate whole adapters (megabytes) on worker threads.  A fixed
	 * mmap threshold gives such blocks back to the system when freed, where
	 * glibc's adaptive threshold would keep them in the threads' arenas.
	 */
	mallopt(M_MMAP_THRESHOLD, 256 << 10);
	struct ls_config cfg;
	ls_config_defaults(&cfg);
	int rc = ls_config_parse(&cfg, argc, argv);
	if (rc)
		return rc > 0 ? 0 : 2;
	ls_log_set_level(cfg.log_level);

	struct ls_server srv;
	memset(&srv, 0, sizeof(srv));
	srv.cfg = &cfg;
	srv.listen_fd = srv.signal_fd = srv.workers_efd = srv.warm.dir_fd = -1;
	ls_connection_limits(&srv);
	srv.start_time = (double)ls_unix_ns() * 1e-9;
	/* Clients share imports of a slab within a process by (instance, slab id). */
	if (getrandom(&srv.instance, sizeof(srv.instance), GRND_NONBLOCK) != sizeof(srv.instance)) {
		srv.instance = (uint64_t)ls_unix_ns() ^ ((uint64_t)getpid() << 48);
	}
	if (srv.instance == 0)
		srv.instance = 1;
	if (cfg.admin_group[0]) {
		struct group *g = getgrnam(cfg.admin_group);
		if (!g) {
			ls_error("admin group '%s' does not exist", cfg.admin_group);
			return 1;
		}
		srv.admin_gid = g->gr_gid;
		srv.have_admin_gid = true;
	}

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	srv.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

	struct ls_err err;
	int status = 1;
	if (ls_store_open(cfg.state_dir, &srv.store, &err)) {
		ls_error("state directory: %s", err.msg);
		goto out;
	}
	if (ls_origin_setup(&cfg, srv.store, &err)) {
		ls_error("%s", err.msg);
		goto out;
	}
	if (ls_store_count_versions(srv.store, &srv.catalog_versions, &err)) {
		ls_error("catalog: %s", err.msg);
		goto out;
	}
	if (ls_backend_host_create(&srv.backend, &err)) {
		ls_error("host backend: %s", err.msg);
		goto out;
	}
	if ((rc = ls_workers_start(cfg.workers, &srv.workers, &srv.workers_efd))) {
		ls_error("worker threads: %s", strerror(-rc));
		goto out;
	}
	if (ls_loop_init(&srv.loop, cfg.event_loop, 1024, &err)) {
		ls_error("event loop: %s", err.msg);
		goto out;
	}
	if (ls_residency_create(&srv.backend, cfg.host_budget, cfg.host_slab_size, &srv.loop,
				srv.workers, srv.store, &srv.res, &err)) {
		ls_error("%s", err.msg);
		goto out;
	}
	uint64_t host_free = 0, host_total = 0;
	if (ls_backend_query_memory(&srv.backend, &host_free, &host_total) == 0 && host_total &&
	    cfg.host_budget > host_total) {
		char b_s[32], t_s[32];
		ls_format_size(cfg.host_budget, b_s, sizeof(b_s));
		ls_format_size(host_total, t_s, sizeof(t_s));
		ls_warn("--host-budget %s is more than this machine's %s of memory", b_s, t_s);
	}
	if (ls_setup_devices(&srv))
		goto out;
	srv.dispatch = ls_dispatch;
	srv.leases.pin_limit = cfg.client_pin_limit;
	srv.name_jobs.workers = srv.workers;
	if (ls_warm_init(&srv, &err)) {
		ls_error("%s", err.msg);
		goto out;
	}
	if (ls_refcache_create(srv.warm.dir, &srv.refcache)) {
		ls_error("out of memory");
		goto out;
	}
	if (cfg.origin[0])
		ls_refcache_set_latest_ttl(srv.refcache, (int64_t)cfg.origin_ttl_ms * 1000000);
	ls_disk_cache_start(&srv);
	/* The metrics port before the socket: whoever sees the socket accept
	 * (a client, systemd, a test) finds the metrics served too. */
	if (cfg.metrics_listen[0]) {
		if (ls_metrics_start(cfg.metrics_listen, &srv.metrics, &err)) {
			ls_error("%s", err.msg);
			goto out;
		}
		struct ls_metrics_snapshot snap;
		ls_stats_snapshot(&srv, &snap);
		ls_metrics_publish(srv.metrics, &snap);
		ls_info("metrics at http://%s/metrics", cfg.metrics_listen);
	}
	if (ls_listen(&srv))
		goto out;

	ls_server_accept(&srv);
	ls_signal_submit(&srv);
	ls_tick_submit(&srv);
	ls_workers_submit_read(&srv);
	const char *backend = srv.n_devices ? "cuda" : "host";
	char budget_s[32];
	ls_format_size(cfg.host_budget, budget_s, sizeof(budget_s));
	ls_info("ready: state %s, backend %s (%u GPU%s), host budget %s, %u workers, "
		"event loop %s, at most %u clients",
		cfg.state_dir, backend, srv.n_devices, srv.n_devices == 1 ? "" : "s", budget_s,
		cfg.workers, ls_loop_name(&srv.loop), srv.max_clients);
	sd_notifyf(0, "READY=1\nSTATUS=serving, backend %s, event loop %s", backend,
		   ls_loop_name(&srv.loop));

	for (;;) {
		rc = ls_loop_run_once(&srv.loop, LS_TICK_MS);
		if (rc < 0) {
			ls_error("event loop: %s", strerror(-rc));
			goto out;
		}
		ls_server_reap_sessions(&srv);
		if (srv.stopping && srv.n_sessions == 0 && ls_workers_busy(srv.workers) == 0)
			break;
	}
	ls_info("stopped");
	status = 0;
out:
	if (srv.listen_fd >= 0) {
		close(srv.listen_fd);
		if (!srv.listen_inherited && status == 0)
			unlink(cfg.socket);
	}
	ls_metrics_stop(srv.metrics);
	if (srv.workers)
		ls_workers_stop(srv.workers);
	ls_residency_destroy(srv.res);
	for (unsigned i = 0; i < srv.n_devices; i++)
		ls_backend_destroy(&srv.devices[i]);
	ls_loop_destroy(&srv.loop);
	if (srv.backend.iface)
		ls_backend_destroy(&srv.backend);
	ls_store_close(srv.store);
	ls_refcache_destroy(srv.refcache);
	ls_warm_destroy(&srv.warm);
	if (srv.signal_fd >= 0)
		close(srv.signal_fd);
	if (srv.spare_fd >= 0)
		close(srv.spare_fd);
	return status;
}
