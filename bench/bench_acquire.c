/*
 * Warm acquire + release round trips: the warm path in shared memory, the
 * request path through the daemon, and a socket ping-pong floor.
 *
 * One synthetic adapter (Llama-style q/k/v/o, LAYERS layers, rank 8, 1024
 * wide, F16: 8 tensors a layer) is imported into a real lorastored and made
 * resident.  A client then runs ITERS round trips of lorastore_acquire +
 * lorastore_adapter_release on it, first alone and then as CLIENTS
 * concurrent processes, each with its own connection.  Before the timed
 * iterations every client warms up: its first acquire brings the slab's
 * descriptor and maps it, which a warm acquire never does.
 *
 * Floor: the same number of bytes moved the same way between two processes
 * over an AF_UNIX SOCK_STREAM socket pair, with no other work: the client
 * sends as many bytes as an acquire request frame, the server answers with
 * as many as an acquire response frame, then the same for release.  1 pair,
 * then CLIENTS pairs at once.  The frame sizes are not guessed: this program
 * is linked with --wrap for send, sendmsg and recvmsg (see bench/CMakeLists.txt),
 * so the bytes liblorastore puts on and takes off its socket are counted for
 * one acquire and one release before the runs.
 *
 * --event-loop both starts two daemons, one per event-loop engine (io_uring
 * and epoll), and alternates floor, io_uring and epoll runs in one process,
 * so that both engines are measured against the same floors.
 *
 * Two lorastore paths: the request path (each acquire and release a request
 * the daemon answers; clients connect with LORASTORE_WARM_PATH=0), and the
 * warm path (the lease taken in the connection's lease page, no request;
 * proto/directory.h).  After the runs one client counts the system calls
 * of 10,000 warm acquires and releases: every system call traps (seccomp,
 * SIGSYS) and is counted.
 *
 * Latency is per round trip (acquire + release), wall clock (CLOCK_MONOTONIC),
 * measured inside each client process.  "cpu" is the user + system time of
 * every process of a run (clients, floor servers, and for lorastore the
 * daemon) divided by the round trips of the run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_args.h"
#include "daemon_proc.h"
#include "lorastore.h"
#include "synth.h"
#include "syscall_trap.h"

/* The adapter of this benchmark, apart from the layer count (an option). */
#define BENCH_RANK 8
#define BENCH_HIDDEN 1024
#define BENCH_HEADS 16
#define BENCH_NAME "bench/acquire"

/* ---- byte counters: the linker routes liblorastore's socket calls here */

static uint64_t bench_tx; /* bytes sent by this process */
static uint64_t bench_rx; /* bytes received by this process */
static uint64_t bench_calls; /* send, sendmsg and recvmsg calls of this process */

ssize_t __real_send(int fd, const void *buf, size_t len, int flags);
ssize_t __real_sendmsg(int fd, const struct msghdr *msg, int flags);
ssize_t __real_recvmsg(int fd, struct msghdr *msg, int flags);
ssize_t __wrap_send(int fd, const void *buf, size_t len, int flags);
ssize_t __wrap_sendmsg(int fd, const struct msghdr *msg, int flags);
ssize_t __wrap_recvmsg(int fd, struct msghdr *msg, int flags);

ssize_t __wrap_send(int fd, const void *buf, size_t len, int flags)
{
	ssize_t n = __real_send(fd, buf, len, flags);
	bench_calls++;
	if (n > 0)
		bench_tx += (uint64_t)n;
	return n;
}

ssize_t __wrap_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	ssize_t n = __real_sendmsg(fd, msg, flags);
	bench_calls++;
	if (n > 0)
		bench_tx += (uint64_t)n;
	return n;
}

ssize_t __wrap_recvmsg(int fd, struct msghdr *msg, int flags)
{
	ssize_t n = __real_recvmsg(fd, msg, flags);
	bench_calls++;
	if (n > 0)
		bench_rx += (uint64_t)n;
	return n;
}

/* ---- options */

struct bench_args {
	size_t iters;       /* timed round trips per client */
	size_t warmup;      /* untimed round trips per client before them */
	unsigned clients;   /* processes of the concurrent runs */
	int layers;         /* of the adapter: 8 tensors a layer */
	const char *dir;    /* parent of the work directory, or NULL for $TMPDIR or /tmp */
	bool keep;          /* leave the work directory in place */
	const char *engines[2]; /* --event-loop of each daemon */
	unsigned n_engines;
	lorastore_tier tier;    /* --tier: host, or a GPU's memory */
};

/* The bytes of one acquire and one release, as liblorastore sends and receives them. */
struct bench_frames {
	size_t acq_req, acq_resp;
	size_t rel_req, rel_resp;
	size_t acq_calls, rel_calls; /* socket calls of one acquire, one release */
};

/* One run: n clients, each writing its latencies into shared memory. */
struct bench_run {
	const char *label;
	unsigned clients;
	size_t iters;            /* per client */
	double wall_s;           /* from the start signal until the last client exited */
	double cpu_s;            /* every process of the run, daemon included */
	double daemon_cpu_s;     /* the daemon's share of cpu_s (lorastore runs) */
	bool ok;
	double *rt_us, *acq_us, *rel_us; /* clients * iters each, MAP_SHARED */
};

static double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* snprintf for paths: a path that does not fit ends the benchmark. */
static void bench_path(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void bench_path(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= len) {
		fprintf(stderr, "path too long: %s...\n", buf);
		exit(1);
	}
}

static void bench_usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--iters N] [--clients N] [--warmup N] [--layers N]\n"
		"       [--event-loop auto|io_uring|epoll|both] [--tier host|device] [--dir DIR]\n"
		"       [--keep]\n"
		"\n"
		"Time warm lorastore_acquire + lorastore_adapter_release round trips on one\n"
		"resident adapter (rank %d, %d wide, F16, q/k/v/o) with 1 client and with N\n"
		"concurrent client processes: the warm path (a lease taken in shared memory)\n"
		"and the request path (LORASTORE_WARM_PATH=0), against an AF_UNIX ping-pong of\n"
		"the request path's frame sizes between 1 and N process pairs (the floor).\n"
		"Then counts the system calls of 10,000 warm acquires and releases.\n"
		"\n"
		"  --iters N    timed round trips per client (default 20000)\n"
		"  --clients N  processes of the concurrent runs (default 16)\n"
		"  --warmup N   untimed round trips per client first (default 200)\n"
		"  --layers N   layers of the adapter, 8 tensors each (default 16)\n"
		"  --event-loop ENGINE\n"
		"               the daemon's event-loop engine (default auto: the daemon's\n"
		"               choice); both: one daemon per engine, their runs alternated\n"
		"               with the floor's\n"
		"  --tier T     host (default), or device: the adapter in the GPU's memory\n"
		"               (the daemon's only GPU; LORASTORE_CUDA_DRIVER names the\n"
		"               driver, as for lorastored)\n"
		"  --dir DIR    create the work directory under DIR (default $TMPDIR or /tmp)\n"
		"  --keep       keep the work directory (input, daemon state and log)\n"
		"  --help       this text\n",
		argv0, BENCH_RANK, BENCH_HIDDEN);
}

static int bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option longopts[] = {
		{"iters", required_argument, NULL, 'n'},
		{"clients", required_argument, NULL, 'c'},
		{"warmup", required_argument, NULL, 'w'},
		{"layers", required_argument, NULL, 'l'},
		{"event-loop", required_argument, NULL, 'e'},
		{"tier", required_argument, NULL, 't'},
		{"dir", required_argument, NULL, 'd'},
		{"keep", no_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	a->iters = 20000;
	a->warmup = 200;
	a->clients = 16;
	a->layers = 16;
	a->dir = NULL;
	a->keep = false;
	a->engines[0] = "auto";
	a->n_engines = 1;
	a->tier = LORASTORE_TIER_HOST;
	int c;
	unsigned long long v;
	while ((c = getopt_long(argc, argv, "n:c:w:l:e:t:d:kh", longopts, NULL)) != -1) {
		switch (c) {
		case 'n':
			if (!bench_parse_num(optarg, 1, 10000000, &v)) {
				fprintf(stderr, "%s: --iters wants 1 to 10000000\n", argv[0]);
				return 2;
			}
			a->iters = (size_t)v;
			break;
		case 'c':
			if (!bench_parse_num(optarg, 1, 256, &v)) {
				fprintf(stderr, "%s: --clients wants 1 to 256\n", argv[0]);
				return 2;
			}
			a->clients = (unsigned)v;
			break;
		case 'w':
			if (!bench_parse_num(optarg, 1, 10000000, &v)) {
				fprintf(stderr, "%s: --warmup wants 1 to 10000000\n", argv[0]);
				return 2;
			}
			a->warmup = (size_t)v;
			break;
		case 'l':
			if (!bench_parse_num(optarg, 1, 512, &v)) {
				fprintf(stderr, "%s: --layers wants 1 to 512\n", argv[0]);
				return 2;
			}
			a->layers = (int)v;
			break;
		case 'e':
			if (!bench_parse_engines(optarg, a->engines, &a->n_engines)) {
				fprintf(stderr, "%s: --event-loop wants auto, io_uring, epoll or both\n",
					argv[0]);
				return 2;
			}
			break;
		case 't':
			if (strcmp(optarg, "host") == 0) {
				a->tier = LORASTORE_TIER_HOST;
			} else if (strcmp(optarg, "device") == 0) {
				a->tier = LORASTORE_TIER_DEVICE;
			} else {
				fprintf(stderr, "%s: --tier wants host or device\n", argv[0]);
				return 2;
			}
			break;
		case 'd':
			a->dir = optarg;
			break;
		case 'k':
			a->keep = true;
			break;
		case 'h':
			bench_usage(stdout, argv[0]);
			return 1;
		default:
			bench_usage(stderr, argv[0]);
			return 2;
		}
	}
	if (optind != argc) {
		bench_usage(stderr, argv[0]);
		return 2;
	}
	return 0;
}

/* A fresh work directory under parent (mkdtemp), malloc'd; NULL on failure. */
static char *bench_workdir(const char *parent)
{
	char tmpl[PATH_MAX];
	if (mkdir(parent, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "%s: %s\n", parent, strerror(errno));
		return NULL;
	}
	bench_path(tmpl, sizeof(tmpl), "%s/lorastore-bench-acquire-XXXXXX", parent);
	if (!mkdtemp(tmpl)) {
		fprintf(stderr, "%s: %s\n", tmpl, strerror(errno));
		return NULL;
	}
	return strdup(tmpl);
}

/* User + system CPU seconds of the waited-for descendants of this process. */
static double bench_children_cpu(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_CHILDREN, &ru) != 0)
		return 0.0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* User + system CPU seconds of a live process (all its threads), from /proc. */
static double bench_proc_cpu(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0.0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0.0;
	buf[n] = '\0';
	/* Fields after the command name, which may hold spaces: state is field 3. */
	const char *p = strrchr(buf, ')');
	if (!p)
		return 0.0;
	unsigned long long ut = 0, st = 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return 0.0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- start gate: every client of a run starts its timed loop at once */

struct bench_gate {
	int ready[2]; /* clients write one byte when warmed up */
	int go[2];    /* the parent closes the write end to start them */
};

static int bench_gate_open(struct bench_gate *g)
{
	if (pipe2(g->ready, O_CLOEXEC) != 0)
		return -1;
	if (pipe2(g->go, O_CLOEXEC) != 0) {
		close(g->ready[0]);
		close(g->ready[1]);
		return -1;
	}
	return 0;
}

/* In a client, right after fork: keep only its ends. */
static void bench_gate_child(struct bench_gate *g)
{
	close(g->ready[0]);
	close(g->go[1]);
}

/* In a client: say ready (ok false: say nothing, so the parent sees a failure) and wait. */
static void bench_gate_wait(struct bench_gate *g, bool ok)
{
	if (ok && write(g->ready[1], "r", 1) != 1)
		_exit(3);
	close(g->ready[1]);
	char c;
	while (read(g->go[0], &c, 1) < 0 && errno == EINTR)
		;
	close(g->go[0]);
}

/* In the parent: wait for n ready clients, then start them; returns how many were ready. */
static unsigned bench_gate_release(struct bench_gate *g, unsigned n)
{
	close(g->ready[1]);
	close(g->go[0]);
	unsigned got = 0;
	while (got < n) {
		char buf[256];
		ssize_t r = read(g->ready[0], buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (unsigned)r;
	}
	close(g->ready[0]);
	close(g->go[1]);
	return got;
}

/* ---- floor: AF_UNIX ping-pong of the same byte counts */

static int bench_send_n(int fd, const uint8_t *buf, size_t len)
{
	while (len) {
		ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Receive exactly len bytes; 1 at a clean end of stream before any byte, 0, or -1. */
static int bench_recv_n(int fd, uint8_t *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = recv(fd, buf + got, len - got, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			return got == 0 ? 1 : -1;
		got += (size_t)r;
	}
	return 0;
}

/* The floor's server: answer each acquire-sized and release-sized request until EOF. */
static void bench_floor_server(int fd, const struct bench_frames *f, uint8_t *buf)
{
	for (;;) {
		int rc = bench_recv_n(fd, buf, f->acq_req);
		if (rc)
			_exit(rc == 1 ? 0 : 4);
		if (bench_send_n(fd, buf, f->acq_resp))
			_exit(4);
		if (bench_recv_n(fd, buf, f->rel_req))
			_exit(4);
		if (bench_send_n(fd, buf, f->rel_resp))
			_exit(4);
	}
}

/* One round trip of the floor: acquire-sized exchange, then release-sized. */
static int bench_floor_rt(int fd, const struct bench_frames *f, uint8_t *buf, double *t_mid)
{
	if (bench_send_n(fd, buf, f->acq_req) || bench_recv_n(fd, buf, f->acq_resp))
		return -1;
	*t_mid = bench_now();
	if (bench_send_n(fd, buf, f->rel_req) || bench_recv_n(fd, buf, f->rel_resp))
		return -1;
	return 0;
}

/* A floor client process: fork its server, warm up, wait at the gate, run. */
static void bench_floor_client(struct bench_gate *g, const struct bench_frames *f,
			       const struct bench_args *a, struct bench_run *run, unsigned k)
{
	bench_gate_child(g);
	size_t cap = f->acq_resp;
	if (f->acq_req > cap)
		cap = f->acq_req;
	if (f->rel_req > cap)
		cap = f->rel_req;
	if (f->rel_resp > cap)
		cap = f->rel_resp;
	uint8_t *buf = calloc(1, cap);
	int sv[2];
	if (!buf || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		bench_gate_wait(g, false);
		_exit(5);
	}
	pid_t srv = fork();
	if (srv == 0) {
		close(g->ready[1]);
		close(g->go[0]);
		close(sv[0]);
		bench_floor_server(sv[1], f, buf);
	}
	close(sv[1]);
	bool ok = srv > 0;
	double mid;
	for (size_t i = 0; ok && i < a->warmup; i++)
		ok = bench_floor_rt(sv[0], f, buf, &mid) == 0;
	bench_gate_wait(g, ok);
	if (!ok)
		_exit(6);
	double *rt = run->rt_us + (size_t)k * a->iters;
	double *acq = run->acq_us + (size_t)k * a->iters;
	double *rel = run->rel_us + (size_t)k * a->iters;
	for (size_t i = 0; i < a->iters; i++) {
		double t0 = bench_now();
		if (bench_floor_rt(sv[0], f, buf, &mid))
			_exit(7);
		double t1 = bench_now();
		rt[i] = (t1 - t0) * 1e6;
		acq[i] = (mid - t0) * 1e6;
		rel[i] = (t1 - mid) * 1e6;
	}
	close(sv[0]);
	int st;
	while (waitpid(srv, &st, 0) < 0 && errno == EINTR)
		;
	_exit(WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 8);
}

/* ---- lorastore clients */

static void bench_ls_client(struct bench_gate *g, const char *sock, bool warm,
			    const struct bench_args *a, struct bench_run *run, unsigned k)
{
	bench_gate_child(g);
	/* The request path: the connection asks for no lease page. */
	if (!warm)
		setenv("LORASTORE_WARM_PATH", "0", 1);
	lorastore *conn = NULL;
	int rc = lorastore_connect(sock, &conn);
	bool ok = rc == 0;
	if (!ok)
		fprintf(stderr, "client %u: connect: %s\n", k, lorastore_errmsg(conn));
	/* The first acquire brings the slab's descriptor and maps it; later ones do not. */
	for (size_t i = 0; ok && i < a->warmup; i++) {
		lorastore_adapter *ad = NULL;
		rc = lorastore_acquire_tier(conn, BENCH_NAME, a->tier, NULL, -1, &ad);
		if (rc == 0)
			rc = lorastore_adapter_release(ad);
		if (rc) {
			fprintf(stderr, "client %u: warm-up: %s\n", k, lorastore_errmsg(conn));
			ok = false;
		}
	}
	bench_gate_wait(g, ok);
	if (!ok)
		_exit(6);
	double *rt = run->rt_us + (size_t)k * a->iters;
	double *acq = run->acq_us + (size_t)k * a->iters;
	double *rel = run->rel_us + (size_t)k * a->iters;
	for (size_t i = 0; i < a->iters; i++) {
		lorastore_adapter *ad = NULL;
		double t0 = bench_now();
		rc = lorastore_acquire_tier(conn, BENCH_NAME, a->tier, NULL, -1, &ad);
		double t1 = bench_now();
		if (rc == 0)
			rc = lorastore_adapter_release(ad);
		double t2 = bench_now();
		if (rc) {
			fprintf(stderr, "client %u: iteration %zu: %s\n", k, i, lorastore_errmsg(conn));
			_exit(7);
		}
		rt[i] = (t2 - t0) * 1e6;
		acq[i] = (t1 - t0) * 1e6;
		rel[i] = (t2 - t1) * 1e6;
	}
	lorastore_close(conn);
	_exit(0);
}

/* ---- system calls of the warm path */

/*
 * System calls of n warm acquires and releases in a client of its own: every
 * system call but exit_group and rt_sigreturn traps and is counted (and
 * fails).  Returns the count, or -1 when the count could not be made
 * (-2: an acquire failed, i.e. it left the warm path).
 */
static long bench_count_syscalls(const char *sock, const struct bench_args *a, long n)
{
	long *out = mmap(NULL, sizeof(long), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			 -1, 0);
	if (out == MAP_FAILED)
		return -1;
	*out = -1;
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0) {
		lorastore *conn = NULL;
		lorastore_adapter *ad = NULL;
		if (lorastore_connect(sock, &conn))
			_exit(1);
		for (int i = 0; i < 1000; i++) {
			if (lorastore_acquire_tier(conn, BENCH_NAME, a->tier, NULL, -1, &ad))
				_exit(1);
			lorastore_adapter_release(ad);
		}
		if (ls_syscall_trap_on())
			_exit(1);
		long failed = 0;
		for (long i = 0; i < n; i++) {
			if (lorastore_acquire_tier(conn, BENCH_NAME, a->tier, NULL, -1, &ad)) {
				failed++;
				break;
			}
			lorastore_adapter_release(ad);
		}
		*out = failed ? -2 : ls_syscall_trapped();
		ls_syscall_trap_exit(0);
	}
	int st = 0;
	if (pid > 0)
		waitpid(pid, &st, 0);
	long r = pid > 0 && WIFEXITED(st) ? *out : -1;
	munmap(out, sizeof(long));
	return r;
}

/* ---- runs */

static int bench_run_alloc(struct bench_run *r, const char *label, unsigned clients, size_t iters)
{
	memset(r, 0, sizeof(*r));
	r->label = label;
	r->clients = clients;
	r->iters = iters;
	size_t bytes = (size_t)clients * iters * sizeof(double);
	double *p[3];
	for (int i = 0; i < 3; i++) {
		p[i] = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (p[i] == MAP_FAILED) {
			while (i-- > 0)
				munmap(p[i], bytes);
			return -1;
		}
	}
	r->rt_us = p[0];
	r->acq_us = p[1];
	r->rel_us = p[2];
	return 0;
}

static void bench_run_free(struct bench_run *r)
{
	size_t bytes = (size_t)r->clients * r->iters * sizeof(double);
	if (r->rt_us) {
		munmap(r->rt_us, bytes);
		munmap(r->acq_us, bytes);
		munmap(r->rel_us, bytes);
	}
	r->rt_us = r->acq_us = r->rel_us = NULL;
}

/*
 * Fork r->clients clients (floor when sock is NULL), start them together and
 * wait for them.  daemon_pid > 0 adds the daemon's CPU time to the run's.
 */
static int bench_run(struct bench_run *r, const struct bench_args *a, const struct bench_frames *f,
		     const char *sock, bool warm, pid_t daemon_pid)
{
	struct bench_gate g;
	if (bench_gate_open(&g) != 0) {
		fprintf(stderr, "pipe: %s\n", strerror(errno));
		return -1;
	}
	pid_t *pids = calloc(r->clients, sizeof(*pids));
	if (!pids)
		return -1;
	fflush(stdout);
	fflush(stderr);
	double c0 = bench_children_cpu();
	double d0 = daemon_pid > 0 ? bench_proc_cpu(daemon_pid) : 0.0;
	unsigned started = 0;
	for (unsigned k = 0; k < r->clients; k++) {
		pid_t pid = fork();
		if (pid == 0) {
			if (sock)
				bench_ls_client(&g, sock, warm, a, r, k);
			else
				bench_floor_client(&g, f, a, r, k);
		}
		if (pid < 0) {
			fprintf(stderr, "fork: %s\n", strerror(errno));
			break;
		}
		pids[started++] = pid;
	}
	unsigned ready = bench_gate_release(&g, started);
	double t0 = bench_now();
	bool ok = started == r->clients && ready == r->clients;
	for (unsigned k = 0; k < started; k++) {
		int st;
		while (waitpid(pids[k], &st, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "%s: client %u failed (status 0x%x)\n", r->label, k, st);
			ok = false;
		}
	}
	r->wall_s = bench_now() - t0;
	r->cpu_s = bench_children_cpu() - c0;
	if (daemon_pid > 0) {
		r->daemon_cpu_s = bench_proc_cpu(daemon_pid) - d0;
		r->cpu_s += r->daemon_cpu_s;
	}
	r->ok = ok;
	free(pids);
	return ok ? 0 : -1;
}

static int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static double bench_percentile(const double *v, size_t n, double p)
{
	if (n == 0)
		return 0.0;
	size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

struct bench_summary {
	double rt_per_s, med, p99, acq_med, rel_med, cpu_us;
};

static struct bench_summary bench_summarize(struct bench_run *r)
{
	size_t n = (size_t)r->clients * r->iters;
	qsort(r->rt_us, n, sizeof(double), bench_cmp_double);
	qsort(r->acq_us, n, sizeof(double), bench_cmp_double);
	qsort(r->rel_us, n, sizeof(double), bench_cmp_double);
	struct bench_summary s = {
		.rt_per_s = r->wall_s > 0 ? (double)n / r->wall_s : 0.0,
		.med = bench_percentile(r->rt_us, n, 50.0),
		.p99 = bench_percentile(r->rt_us, n, 99.0),
		.acq_med = bench_percentile(r->acq_us, n, 50.0),
		.rel_med = bench_percentile(r->rel_us, n, 50.0),
		.cpu_us = r->cpu_s * 1e6 / (double)n,
	};
	return s;
}

static void bench_print_row(const struct bench_run *r, const struct bench_summary *s)
{
	printf("%7u  %-30s %9.0f %9.1f %9.1f %9.1f %9.1f %9.1f\n", r->clients, r->label, s->rt_per_s,
	       s->med, s->p99, s->acq_med, s->rel_med, s->cpu_us);
}

/* ---- set-up */

/* Write the adapter, import it, make it resident, and count its frame bytes. */
static int bench_setup(const char *work, const char *sock, const struct bench_args *a,
		       struct bench_frames *f, size_t *tensors, uint64_t *bytes)
{
	char dir[PATH_MAX];
	bench_path(dir, sizeof(dir), "%s/in", work);
	if (mkdir(dir, 0755) != 0) {
		fprintf(stderr, "%s: %s\n", dir, strerror(errno));
		return -1;
	}
	struct synth_opts o = {
		.family = SYNTH_LLAMA,
		.layers = a->layers,
		.rank = BENCH_RANK,
		.dtype = LS_DTYPE_F16,
		.hidden = BENCH_HIDDEN,
		.heads = BENCH_HEADS,
		.kv_heads = BENCH_HEADS,
		.seed = 0xac0u,
	};
	int rc = synth_adapter_dir(dir, &o);
	if (rc) {
		fprintf(stderr, "%s: synth_adapter_dir: %s\n", dir, strerror(-rc));
		return -1;
	}
	/* The frames of the request path are counted (this runs in a child of its own). */
	setenv("LORASTORE_WARM_PATH", "0", 1);
	uint64_t calls0 = bench_calls;
	lorastore *conn = NULL;
	rc = lorastore_connect(sock, &conn);
	lorastore_import_opts io = {.name = BENCH_NAME};
	if (rc == 0)
		rc = lorastore_import_dir(conn, dir, &io, NULL);
	if (rc == 0)
		rc = lorastore_load(conn, BENCH_NAME);
	lorastore_adapter *ad = NULL;
	/* The first acquire maps the slab: not what a warm acquire costs. */
	if (rc == 0)
		rc = lorastore_acquire_tier(conn, BENCH_NAME, a->tier, NULL, -1, &ad);
	if (rc == 0)
		rc = lorastore_adapter_release(ad);
	if (rc == 0) {
		uint64_t tx = bench_tx, rx = bench_rx;
		calls0 = bench_calls;
		rc = lorastore_acquire_tier(conn, BENCH_NAME, a->tier, NULL, -1, &ad);
		f->acq_req = (size_t)(bench_tx - tx);
		f->acq_resp = (size_t)(bench_rx - rx);
		f->acq_calls = (size_t)(bench_calls - calls0);
		if (rc == 0) {
			lorastore_adapter_info info;
			lorastore_adapter_info_get(ad, &info);
			*tensors = info.tensor_count;
			*bytes = info.resident_bytes;
			tx = bench_tx;
			rx = bench_rx;
			calls0 = bench_calls;
			rc = lorastore_adapter_release(ad);
			f->rel_req = (size_t)(bench_tx - tx);
			f->rel_resp = (size_t)(bench_rx - rx);
			f->rel_calls = (size_t)(bench_calls - calls0);
		}
	}
	if (rc)
		fprintf(stderr, "set-up: %s (%s)\n", conn ? lorastore_errmsg(conn) : "",
			lorastore_strerror(rc));
	else if (!f->acq_req || !f->acq_resp || !f->rel_req || !f->rel_resp) {
		fprintf(stderr, "set-up: no bytes counted; was the program linked with --wrap?\n");
		rc = -1;
	}
	lorastore_close(conn);
	return rc ? -1 : 0;
}

/*
 * bench_setup in a child process: the CUDA driver (which a device-tier
 * acquire loads) does not survive a fork, and every client is forked from
 * this process later.
 */
static int bench_setup_apart(const char *work, const char *sock, const struct bench_args *a,
			     struct bench_frames *f, size_t *tensors, uint64_t *bytes)
{
	struct {
		struct bench_frames f;
		size_t tensors;
		uint64_t bytes;
	} out;
	int p[2];
	if (pipe2(p, O_CLOEXEC) != 0)
		return -1;
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0) {
		close(p[0]);
		memset(&out, 0, sizeof(out));
		int rc = bench_setup(work, sock, a, &out.f, &out.tensors, &out.bytes);
		_exit(rc == 0 && write(p[1], &out, sizeof(out)) == (ssize_t)sizeof(out) ? 0 : 1);
	}
	close(p[1]);
	ssize_t n = pid > 0 ? read(p[0], &out, sizeof(out)) : -1;
	close(p[0]);
	int st = 1;
	if (pid > 0)
		waitpid(pid, &st, 0);
	if (n != (ssize_t)sizeof(out) || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return -1;
	*f = out.f;
	*tensors = out.tensors;
	*bytes = out.bytes;
	return 0;
}

int main(int argc, char **argv)
{
	struct bench_args args;
	setvbuf(stdout, NULL, _IOLBF, 0);
	int prc = bench_parse(argc, argv, &args);
	if (prc)
		return prc == 1 ? 0 : prc;
	signal(SIGPIPE, SIG_IGN);

	const char *parent = args.dir;
	if (!parent) {
		parent = getenv("TMPDIR");
		if (!parent || !*parent)
			parent = "/tmp";
	}
	char *work = bench_workdir(parent);
	if (!work)
		return 1;
	fprintf(stderr, "work directory %s\n", work);

	int ret = 1;
	unsigned ne = args.n_engines;
	struct ls_daemon_proc d[2] = {{.pid = -1, .notify_fd = -1}, {.pid = -1, .notify_fd = -1}};
	char labels[2][64], warm_label[64];
	/* For 1 client, then for N: the floor, the request path of each engine, the warm path. */
	unsigned per = 2 + ne;
	unsigned n_runs = 2 * per;
	struct bench_run runs[8];
	memset(runs, 0, sizeof(runs));
	struct bench_frames f = {0};
	size_t tensors = 0;
	uint64_t bytes = 0;
	for (unsigned e = 0; e < ne; e++) {
		char ddir[PATH_MAX], sub[PATH_MAX];
		bench_path(ddir, sizeof(ddir), "%s/daemon-%u", work, e);
		bench_path(sub, sizeof(sub), "%s/e%u", work, e);
		if (mkdir(ddir, 0755) != 0 || mkdir(sub, 0755) != 0) {
			fprintf(stderr, "%s: %s\n", ddir, strerror(errno));
			goto out;
		}
		const char *const dargs[] = {"--host-budget", "256MiB", "--log-level", "warning",
					     "--event-loop", args.engines[e], NULL};
		if (ls_daemon_start(&d[e], ddir, dargs) != 0)
			goto out;
		snprintf(labels[e], sizeof(labels[e]), "request path (%s%s)", d[e].engine,
			 args.tier == LORASTORE_TIER_DEVICE ? ", device" : "");
		if (e == 0)
			snprintf(warm_label, sizeof(warm_label), "warm path%s",
				 args.tier == LORASTORE_TIER_DEVICE ? " (device)" : "");
		if (bench_setup_apart(sub, d[e].socket, &args, &f, &tensors, &bytes) != 0)
			goto out;
	}

	/* Alternate floor and lorastore so that drift on the machine hits both. */
	for (unsigned i = 0; i < n_runs; i++) {
		unsigned n = i < n_runs / 2 ? 1 : args.clients;
		/* 0: floor; e + 1: request path of engine e; per - 1: warm path (engine 0's daemon) */
		unsigned slot = i % per;
		bool warm = slot == per - 1;
		const char *label = slot == 0 ? "floor (AF_UNIX ping-pong)"
				    : warm    ? warm_label
					      : labels[slot - 1];
		if (bench_run_alloc(&runs[i], label, n, args.iters) != 0) {
			fprintf(stderr, "mmap: %s\n", strerror(errno));
			goto out;
		}
		fprintf(stderr, "running %s with %u client%s...\n", label, n, n == 1 ? "" : "s");
		struct ls_daemon_proc *dp = slot == 0 ? NULL : warm ? &d[0] : &d[slot - 1];
		if (bench_run(&runs[i], &args, &f, dp ? dp->socket : NULL, warm,
			      dp ? dp->pid : 0) != 0)
			goto out;
	}
	long syscalls = bench_count_syscalls(d[0].socket, &args, 10000);

	printf("bench_acquire: warm acquire + release of one resident adapter in %s memory (%d "
	       "layers, rank %d, %d wide, F16; %zu tensors, %.2f MB)\n",
	       args.tier == LORASTORE_TIER_DEVICE ? "GPU" : "host", args.layers, BENCH_RANK,
	       BENCH_HIDDEN, tensors, (double)bytes / 1e6);
	printf("request path frames (4-byte length + protobuf): acquire %zu B -> %zu B, release %zu "
	       "B -> %zu B\n",
	       f.acq_req, f.acq_resp, f.rel_req, f.rel_resp);
	printf("%zu timed round trips per client after %zu warm-up; latencies in us, per round trip;\n"
	       "cpu = user + system time of all processes of the run (daemon included) per round "
	       "trip\n\n",
	       args.iters, args.warmup);
	printf("%7s  %-30s %9s %9s %9s %9s %9s %9s\n", "clients", "what", "rt/s", "median", "p99",
	       "acq med", "rel med", "cpu");
	struct bench_summary s[8];
	for (unsigned i = 0; i < n_runs; i++) {
		s[i] = bench_summarize(&runs[i]);
		bench_print_row(&runs[i], &s[i]);
	}
	printf("\n");
	unsigned half = n_runs / 2;
	const struct bench_summary *w1 = &s[per - 1], *wn = &s[half + per - 1];
	printf("warm path: median %.2f us, p99 %.2f us with 1 client (target p50 <= 1 us); "
	       "%.2f us, p99 %.2f us with %u clients\n",
	       w1->med, w1->p99, wn->med, wn->p99, args.clients);
	printf("warm path round trips per second / floor's: %.1f with 1 client, %.1f with %u "
	       "clients (target >= 10 with 16 clients on 16 CPUs; this machine has %ld)\n",
	       s[0].rt_per_s > 0 ? w1->rt_per_s / s[0].rt_per_s : 0.0,
	       s[half].rt_per_s > 0 ? wn->rt_per_s / s[half].rt_per_s : 0.0, args.clients,
	       sysconf(_SC_NPROCESSORS_ONLN));
	for (unsigned e = 0; e < ne; e++)
		printf("%-10s warm path / request path, median: %.3f with 1 client, %.3f with %u "
		       "clients\n",
		       d[e].engine, s[e + 1].med > 0 ? w1->med / s[e + 1].med : 0.0,
		       s[half + e + 1].med > 0 ? wn->med / s[half + e + 1].med : 0.0, args.clients);
	if (syscalls >= 0)
		printf("system calls of 10,000 warm acquires + releases: %ld (request path: %zu socket "
		       "calls per acquire, %zu per release)\n",
		       syscalls, f.acq_calls, f.rel_calls);
	else
		printf("system calls of the warm path: not counted (%s)\n",
		       syscalls == -2 ? "an acquire left the warm path" : "no seccomp here");
	for (unsigned e = 0; e < ne; e++) {
		const struct bench_summary *a1 = &s[e + 1], *an = &s[half + e + 1];
		printf("%-10s median request path/floor: %.2f with 1 client, %.2f with %u clients "
		       "(target <= 2)\n",
		       d[e].engine, s[0].med > 0 ? a1->med / s[0].med : 0.0,
		       s[half].med > 0 ? an->med / s[half].med : 0.0, args.clients);
		printf("%-10s p99 request path/floor:    %.2f with 1 client, %.2f with %u clients\n",
		       d[e].engine, s[0].p99 > 0 ? a1->p99 / s[0].p99 : 0.0,
		       s[half].p99 > 0 ? an->p99 / s[half].p99 : 0.0, args.clients);
		printf("%-10s lorastored's cpu: %.1f us per round trip with 1 client, %.1f us with "
		       "%u clients\n",
		       d[e].engine, runs[e + 1].daemon_cpu_s * 1e6 / (double)args.iters,
		       runs[half + e + 1].daemon_cpu_s * 1e6 / ((double)args.iters * args.clients),
		       args.clients);
	}
	if (ne == 2)
		printf("median %s/%s: %.2f with 1 client, %.2f with %u clients (target <= 1.3)\n",
		       d[1].engine, d[0].engine, s[1].med > 0 ? s[2].med / s[1].med : 0.0,
		       s[half + 1].med > 0 ? s[half + 2].med / s[half + 1].med : 0.0, args.clients);
	ret = 0;

out:
	for (unsigned i = 0; i < 8; i++)
		bench_run_free(&runs[i]);
	for (unsigned e = 0; e < 2; e++) {
		if (d[e].pid > 0) {
			int st = ls_daemon_stop(&d[e]);
			if (st != 0) {
				fprintf(stderr, "lorastored exited with %d (log: %s)\n", st, d[e].log);
				ret = 1;
			}
		}
		if (d[e].notify_fd >= 0)
			close(d[e].notify_fd);
	}
	if (args.keep) {
		fprintf(stderr, "kept %s\n", work);
	} else {
		synth_rm_rf(work);
	}
	free(work);
	return ret;
}
