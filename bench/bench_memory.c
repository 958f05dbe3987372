/*
 * Memory of WORKERS processes that use the same ADAPTERS adapters: shared
 * through lorastored against every process loading its own copy.
 *
 * Inputs: ADAPTERS distinct synthetic adapters (Llama-style q/k/v/o, LAYERS
 * layers, rank RANK, HIDDEN wide, F16; 4.19 MB of safetensors each by
 * default).  "One copy" is the sum of their safetensors file sizes: what one
 * process that loads them all must hold at least.
 *
 * Two runs of WORKERS processes, each forked from this (small) process:
 *   baseline   each worker reads every adapter_model.safetensors into its own
 *              malloc'd buffer and reads every byte of it;
 *   lorastore  each worker connects to a real lorastored (started here,
 *              with the adapters imported and not yet resident),
 *              lorastore_acquire's all ADAPTERS, and reads every byte of
 *              every tensor in place (the slabs are mapped read-only).
 * When every worker has finished and still holds what it loaded, the Pss
 * line of /proc/<pid>/smaps_rollup is read for each worker and, for the
 * lorastore run, for the daemon.  Pss divides each page among the processes
 * that map it, so the sum over all processes counts a shared page once.
 * This process itself is counted in neither total.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_args.h"
#include "daemon_proc.h"
#include "lorastore.h"
#include "synth.h"

#define BENCH_MAX_WORKERS 64

struct bench_args {
	unsigned workers;
	size_t adapters;
	int layers, rank, hidden;
	const char *dir;    /* parent of the work directory, or NULL for $TMPDIR or /tmp */
	bool keep;          /* leave the work directory in place */
};

/* Memory of one process from smaps_rollup, in kB as the kernel gives it. */
struct bench_mem {
	uint64_t rss, pss, pss_anon, pss_file, pss_shmem;
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
		"usage: %s [--workers N] [--adapters N] [--layers N] [--rank N] [--hidden N]\n"
		"       [--dir DIR] [--keep]\n"
		"\n"
		"Total Pss of N worker processes that each use the same adapters: through\n"
		"lorastored (acquire all, read every byte in place; the daemon counted too)\n"
		"against each worker reading the safetensors files into its own memory.\n"
		"\n"
		"  --workers N   worker processes (default 8, at most %d)\n"
		"  --adapters N  adapters every worker uses (default 100)\n"
		"  --layers N    layers of each adapter (default 16)\n"
		"  --rank N      rank (default 8)\n"
		"  --hidden N    width of the q/k/v/o modules (default 2048)\n"
		"                bytes per adapter: about layers * 4 * 2 * rank * hidden * 2\n"
		"                (default 4.19 MB)\n"
		"  --dir DIR     create the work directory under DIR (default $TMPDIR or /tmp)\n"
		"  --keep        keep the work directory (inputs, daemon state and log)\n"
		"  --help        this text\n",
		argv0, BENCH_MAX_WORKERS);
}

static int bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option longopts[] = {
		{"workers", required_argument, NULL, 'w'},
		{"adapters", required_argument, NULL, 'n'},
		{"layers", required_argument, NULL, 'l'},
		{"rank", required_argument, NULL, 'R'},
		{"hidden", required_argument, NULL, 'H'},
		{"dir", required_argument, NULL, 'd'},
		{"keep", no_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	a->workers = 8;
	a->adapters = 100;
	a->layers = 16;
	a->rank = 8;
	a->hidden = 2048;
	a->dir = NULL;
	a->keep = false;
	int c;
	unsigned long long v;
	while ((c = getopt_long(argc, argv, "w:n:l:R:H:d:kh", longopts, NULL)) != -1) {
		switch (c) {
		case 'w':
			if (!bench_parse_num(optarg, 1, BENCH_MAX_WORKERS, &v)) {
				fprintf(stderr, "%s: --workers wants 1 to %d\n", argv[0],
					BENCH_MAX_WORKERS);
				return 2;
			}
			a->workers = (unsigned)v;
			break;
		case 'n':
			if (!bench_parse_num(optarg, 1, 100000, &v)) {
				fprintf(stderr, "%s: --adapters wants 1 to 100000\n", argv[0]);
				return 2;
			}
			a->adapters = (size_t)v;
			break;
		case 'l':
			if (!bench_parse_num(optarg, 1, 512, &v)) {
				fprintf(stderr, "%s: --layers wants 1 to 512\n", argv[0]);
				return 2;
			}
			a->layers = (int)v;
			break;
		case 'R':
			if (!bench_parse_num(optarg, 1, 1024, &v)) {
				fprintf(stderr, "%s: --rank wants 1 to 1024\n", argv[0]);
				return 2;
			}
			a->rank = (int)v;
			break;
		case 'H':
			/* A multiple of 16: the heads of the synthetic model divide it. */
			if (!bench_parse_num(optarg, 16, 65536, &v) || v % 16) {
				fprintf(stderr, "%s: --hidden wants a multiple of 16, 16 to 65536\n",
					argv[0]);
				return 2;
			}
			a->hidden = (int)v;
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
	bench_path(tmpl, sizeof(tmpl), "%s/lorastore-bench-memory-XXXXXX", parent);
	if (!mkdtemp(tmpl)) {
		fprintf(stderr, "%s: %s\n", tmpl, strerror(errno));
		return NULL;
	}
	return strdup(tmpl);
}

static void bench_input_dir(const char *work, size_t i, char *buf, size_t len)
{
	bench_path(buf, len, "%s/in/a%05zu", work, i);
}

/* Generate the inputs (not timed); *one_copy gets the sum of the safetensors sizes. */
static int bench_generate(const char *work, const struct bench_args *a, uint64_t *one_copy)
{
	char path[PATH_MAX];
	bench_path(path, sizeof(path), "%s/in", work);
	if (mkdir(path, 0755) != 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	*one_copy = 0;
	for (size_t i = 0; i < a->adapters; i++) {
		char dir[PATH_MAX];
		bench_input_dir(work, i, dir, sizeof(dir));
		if (mkdir(dir, 0755) != 0) {
			fprintf(stderr, "%s: %s\n", dir, strerror(errno));
			return -1;
		}
		struct synth_opts o = {
			.family = SYNTH_LLAMA,
			.layers = a->layers,
			.rank = a->rank,
			.dtype = LS_DTYPE_F16,
			.hidden = a->hidden,
			.heads = 16,
			.kv_heads = 16,
			.seed = 0x3e30000u + (uint64_t)i,
		};
		int rc = synth_adapter_dir(dir, &o);
		if (rc) {
			fprintf(stderr, "%s: synth_adapter_dir: %s\n", dir, strerror(-rc));
			return -1;
		}
		struct stat sb;
		bench_path(path, sizeof(path), "%s/adapter_model.safetensors", dir);
		if (stat(path, &sb) != 0) {
			fprintf(stderr, "%s: %s\n", path, strerror(errno));
			return -1;
		}
		*one_copy += (uint64_t)sb.st_size;
	}
	return 0;
}

/* The memory lines of /proc/<pid>/smaps_rollup; 0 or -1. */
static int bench_smaps(pid_t pid, struct bench_mem *m)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	FILE *f = fopen(path, "re");
	if (!f) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	memset(m, 0, sizeof(*m));
	bool have_pss = false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long kb;
		if (sscanf(line, "Rss: %llu kB", &kb) == 1)
			m->rss = kb;
		else if (sscanf(line, "Pss: %llu kB", &kb) == 1) {
			m->pss = kb;
			have_pss = true;
		} else if (sscanf(line, "Pss_Anon: %llu kB", &kb) == 1)
			m->pss_anon = kb;
		else if (sscanf(line, "Pss_File: %llu kB", &kb) == 1)
			m->pss_file = kb;
		else if (sscanf(line, "Pss_Shmem: %llu kB", &kb) == 1)
			m->pss_shmem = kb;
	}
	fclose(f);
	return have_pss ? 0 : -1;
}

static void bench_mem_add(struct bench_mem *sum, const struct bench_mem *m)
{
	sum->rss += m->rss;
	sum->pss += m->pss;
	sum->pss_anon += m->pss_anon;
	sum->pss_file += m->pss_file;
	sum->pss_shmem += m->pss_shmem;
}

/* Sum of every 64-bit word of a buffer: reads every byte, cannot be skipped. */
static uint64_t bench_touch(const void *p, size_t len)
{
	const uint8_t *b = p;
	uint64_t s = 0;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t w;
		memcpy(&w, b + i, 8);
		s += w;
	}
	for (; i < len; i++)
		s += b[i];
	return s;
}

/* ---- workers */

/*
 * A worker's life: load (by its own means), say ready on the pipe with the
 * checksum of what it read, keep everything until the parent closes the hold
 * pipe, exit.  Returns only on failure (the caller exits).
 */
struct bench_pipes {
	int ready[2]; /* workers write a struct bench_ready */
	int hold[2];  /* the parent closes the write end to let them exit */
};

/* What a worker reports when it holds everything. */
struct bench_ready {
	uint64_t sum;        /* of every byte it read: equal in every worker of a run */
	uint64_t heap;       /* malloc'd bytes in use beyond those before it loaded */
};

/* Bytes malloc has handed out and not had back (arena chunks and mmapped blocks). */
static uint64_t bench_heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
}

static void bench_worker_wait(struct bench_pipes *p, uint64_t sum, uint64_t heap0)
{
	struct bench_ready r = {.sum = sum, .heap = bench_heap_in_use() - heap0};
	if (write(p->ready[1], &r, sizeof(r)) != (ssize_t)sizeof(r))
		_exit(3);
	close(p->ready[1]);
	char c;
	while (read(p->hold[0], &c, 1) < 0 && errno == EINTR)
		;
}

static void bench_worker_baseline(struct bench_pipes *p, const char *work,
				  const struct bench_args *a)
{
	uint64_t heap0 = bench_heap_in_use();
	void **bufs = calloc(a->adapters, sizeof(*bufs));
	if (!bufs)
		_exit(4);
	uint64_t sum = 0;
	for (size_t i = 0; i < a->adapters; i++) {
		char path[PATH_MAX];
		bench_input_dir(work, i, path, sizeof(path));
		strncat(path, "/adapter_model.safetensors", sizeof(path) - strlen(path) - 1);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		struct stat sb;
		if (fd < 0 || fstat(fd, &sb) != 0) {
			fprintf(stderr, "%s: %s\n", path, strerror(errno));
			_exit(4);
		}
		size_t len = (size_t)sb.st_size;
		uint8_t *buf = malloc(len ? len : 1);
		size_t got = 0;
		while (buf && got < len) {
			ssize_t r = read(fd, buf + got, len - got);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				fprintf(stderr, "%s: short read\n", path);
				_exit(4);
			}
			got += (size_t)r;
		}
		close(fd);
		if (!buf)
			_exit(4);
		sum += bench_touch(buf, len);
		bufs[i] = buf;
	}
	bench_worker_wait(p, sum, heap0);
	for (size_t i = 0; i < a->adapters; i++)
		free(bufs[i]);
	free(bufs);
	_exit(0);
}

static void bench_worker_lorastore(struct bench_pipes *p, const char *sock,
				   const struct bench_args *a)
{
	uint64_t heap0 = bench_heap_in_use();
	lorastore *conn = NULL;
	if (lorastore_connect(sock, &conn) != 0) {
		fprintf(stderr, "worker: connect: %s\n", lorastore_errmsg(conn));
		_exit(5);
	}
	uint64_t sum = 0;
	for (size_t i = 0; i < a->adapters; i++) {
		char ref[64];
		snprintf(ref, sizeof(ref), "bench/mem%05zu", i);
		lorastore_adapter *ad = NULL;
		if (lorastore_acquire(conn, ref, -1, &ad) != 0) {
			fprintf(stderr, "worker: acquire %s: %s\n", ref, lorastore_errmsg(conn));
			_exit(5);
		}
		lorastore_adapter_info info;
		lorastore_adapter_info_get(ad, &info);
		for (size_t t = 0; t < info.tensor_count; t++) {
			lorastore_tensor ten;
			if (lorastore_adapter_tensor_at(ad, t, &ten) != 0)
				_exit(5);
			sum += bench_touch(ten.data, (size_t)ten.bytes);
		}
		/* Held until exit: the leases end with the connection. */
	}
	bench_worker_wait(p, sum, heap0);
	lorastore_close(conn);
	_exit(0);
}

/*
 * Fork the workers of one run, wait until all hold their adapters, read the
 * memory of each (and of the daemon when daemon_pid > 0), then let them go.
 */
static int bench_run(const char *label, const char *work, const char *sock, pid_t daemon_pid,
		     const struct bench_args *a, struct bench_mem *workers_sum,
		     struct bench_mem *daemon_mem, struct bench_mem *worker_max, double *secs,
		     uint64_t *heap_max)
{
	struct bench_pipes p;
	if (pipe2(p.ready, O_CLOEXEC) != 0 || pipe2(p.hold, O_CLOEXEC) != 0) {
		fprintf(stderr, "pipe: %s\n", strerror(errno));
		return -1;
	}
	pid_t pids[BENCH_MAX_WORKERS];
	unsigned started = 0;
	fflush(stdout);
	fflush(stderr);
	double t0 = bench_now();
	for (unsigned k = 0; k < a->workers; k++) {
		pid_t pid = fork();
		if (pid == 0) {
			close(p.ready[0]);
			close(p.hold[1]);
			if (sock)
				bench_worker_lorastore(&p, sock, a);
			else
				bench_worker_baseline(&p, work, a);
			_exit(6);
		}
		if (pid < 0) {
			fprintf(stderr, "fork: %s\n", strerror(errno));
			break;
		}
		pids[started++] = pid;
	}
	close(p.ready[1]);
	close(p.hold[0]);
	unsigned ready = 0;
	uint64_t first_sum = 0;
	bool same = true;
	*heap_max = 0;
	while (ready < started) {
		struct bench_ready s;
		ssize_t r = read(p.ready[0], &s, sizeof(s));
		if (r < 0 && errno == EINTR)
			continue;
		if (r != (ssize_t)sizeof(s))
			break;
		if (ready == 0)
			first_sum = s.sum;
		else if (s.sum != first_sum)
			same = false;
		if (s.heap > *heap_max)
			*heap_max = s.heap;
		ready++;
	}
	*secs = bench_now() - t0;
	int ret = ready == a->workers ? 0 : -1;
	if (ret)
		fprintf(stderr, "%s: %u of %u workers got ready\n", label, ready, a->workers);
	if (!same) {
		fprintf(stderr, "%s: workers read different bytes\n", label);
		ret = -1;
	}
	memset(workers_sum, 0, sizeof(*workers_sum));
	memset(worker_max, 0, sizeof(*worker_max));
	for (unsigned k = 0; ret == 0 && k < started; k++) {
		struct bench_mem m;
		if (bench_smaps(pids[k], &m) != 0) {
			ret = -1;
			break;
		}
		bench_mem_add(workers_sum, &m);
		if (m.pss > worker_max->pss)
			*worker_max = m;
	}
	if (ret == 0 && daemon_pid > 0 && bench_smaps(daemon_pid, daemon_mem) != 0)
		ret = -1;
	close(p.ready[0]);
	close(p.hold[1]);
	for (unsigned k = 0; k < started; k++) {
		int st;
		while (waitpid(pids[k], &st, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "%s: worker %u failed (status 0x%x)\n", label, k, st);
			ret = -1;
		}
	}
	return ret;
}

static int bench_import_all(const char *sock, const char *work, const struct bench_args *a,
			    uint64_t *resident)
{
	lorastore *conn = NULL;
	int rc = lorastore_connect(sock, &conn);
	*resident = 0;
	for (size_t i = 0; rc == 0 && i < a->adapters; i++) {
		char dir[PATH_MAX], ref[64];
		bench_input_dir(work, i, dir, sizeof(dir));
		snprintf(ref, sizeof(ref), "bench/mem%05zu", i);
		lorastore_import_opts io = {.name = ref};
		lorastore_list *l = NULL;
		rc = lorastore_import_dir_entry(conn, dir, &io, &l);
		if (rc == 0) {
			*resident += lorastore_list_entry(l, 0)->resident_bytes;
			lorastore_list_free(l);
		}
	}
	if (rc)
		fprintf(stderr, "import: %s\n", conn ? lorastore_errmsg(conn) : lorastore_strerror(rc));
	lorastore_close(conn);
	return rc ? -1 : 0;
}

static void bench_print_row(const char *label, const struct bench_mem *m, uint64_t one_copy)
{
	double mb = (double)m->pss * 1024.0 / 1e6;
	printf("%-34s %10.1f %10.1f %9.3f %10.1f %10.1f %10.1f\n", label, mb,
	       (double)m->rss * 1024.0 / 1e6, mb / ((double)one_copy / 1e6),
	       (double)m->pss_anon * 1024.0 / 1e6, (double)m->pss_shmem * 1024.0 / 1e6,
	       (double)m->pss_file * 1024.0 / 1e6);
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
	struct ls_daemon_proc d = {.pid = -1, .notify_fd = -1};
	uint64_t one_copy = 0, resident = 0;
	double t0 = bench_now();
	if (bench_generate(work, &args, &one_copy) != 0)
		goto out;
	fprintf(stderr, "generated %zu adapters (%.1f MB of safetensors) in %.1f s\n", args.adapters,
		(double)one_copy / 1e6, bench_now() - t0);

	struct bench_mem base_w, base_max, base_d = {0};
	double base_s = 0;
	uint64_t base_heap = 0;
	fprintf(stderr, "baseline: %u workers reading the files...\n", args.workers);
	if (bench_run("baseline", work, NULL, 0, &args, &base_w, &base_d, &base_max, &base_s,
		      &base_heap) != 0)
		goto out;

	/* Room for all adapters with slack; nothing is evicted. */
	char budget_s[32], ddir[PATH_MAX];
	snprintf(budget_s, sizeof(budget_s), "%llu",
		 (unsigned long long)(one_copy * 2 + (256ull << 20)));
	bench_path(ddir, sizeof(ddir), "%s/daemon", work);
	if (mkdir(ddir, 0755) != 0) {
		fprintf(stderr, "%s: %s\n", ddir, strerror(errno));
		goto out;
	}
	const char *const dargs[] = {"--host-budget", budget_s, "--log-level", "warning", NULL};
	if (ls_daemon_start(&d, ddir, dargs) != 0)
		goto out;
	struct bench_mem ls_start = {0};
	if (bench_smaps(d.pid, &ls_start) != 0)
		goto out;
	if (bench_import_all(d.socket, work, &args, &resident) != 0)
		goto out;
	struct bench_mem ls_w, ls_max, ls_d = {0}, ls_d0 = {0};
	double ls_s = 0;
	uint64_t ls_heap = 0;
	/* The daemon before any adapter is resident, to show what residency adds (the
	 * imports ran in it, as an administrator's would). */
	if (bench_smaps(d.pid, &ls_d0) != 0)
		goto out;
	fprintf(stderr, "lorastore: %u workers acquiring...\n", args.workers);
	if (bench_run("lorastore", work, d.socket, d.pid, &args, &ls_w, &ls_d, &ls_max, &ls_s,
		      &ls_heap) != 0)
		goto out;
	struct bench_mem ls_total = ls_w;
	bench_mem_add(&ls_total, &ls_d);
	/*
	 * One copy is what the adapters take resident (data regions and tensor
	 * tables, as the daemon holds them), not the files, whose JSON headers
	 * no process keeps.
	 */
	uint64_t copy = resident ? resident : one_copy;

	printf("bench_memory: %u workers x %zu distinct adapters (Llama q/k/v/o, %d layers, rank %d, "
	       "%d wide, F16)\n",
	       args.workers, args.adapters, args.layers, args.rank, args.hidden);
	printf("one copy = the adapters' resident bytes (data and tensor tables) = %.1f MB; "
	       "the safetensors files hold %.1f MB (%.2f MB each)\n",
	       (double)copy / 1e6, (double)one_copy / 1e6,
	       (double)one_copy / 1e6 / (double)args.adapters);
	printf("every worker read every byte of every adapter and held them while measured; "
	       "MB = 10^6 bytes; x copy = Pss / one copy\n\n");
	printf("%-34s %10s %10s %9s %10s %10s %10s\n", "what", "Pss MB", "Rss MB", "x copy",
	       "Pss anon", "Pss shmem", "Pss file");
	bench_print_row("baseline: workers (total)", &base_w, copy);
	bench_print_row("baseline: largest worker", &base_max, copy);
	bench_print_row("lorastore: workers + daemon", &ls_total, copy);
	bench_print_row("lorastore: workers", &ls_w, copy);
	bench_print_row("lorastore: largest worker", &ls_max, copy);
	bench_print_row("lorastore: daemon", &ls_d, copy);
	bench_print_row("lorastore: daemon after imports", &ls_d0, copy);
	bench_print_row("lorastore: daemon at start", &ls_start, copy);
	double ls_x = (double)ls_total.pss * 1024.0 / (double)copy;
	printf("\nlorastore total / one copy: %.3f (target <= 1.05); baseline total / one copy: "
	       "%.3f; baseline / lorastore: %.2f\n",
	       ls_x, (double)base_w.pss * 1024.0 / (double)copy,
	       ls_total.pss ? (double)base_w.pss / (double)ls_total.pss : 0.0);
	/* Baseline buffers are malloc'd too; what a worker holds beyond them is overhead. */
	double base_extra = (double)base_heap - (double)one_copy;
	printf("malloc'd bytes the largest worker holds beyond the tensor data, per adapter: "
	       "lorastore %.1f kB, baseline %.1f kB\n",
	       (double)ls_heap / 1e3 / (double)args.adapters,
	       (base_extra > 0 ? base_extra : 0.0) / 1e3 / (double)args.adapters);
	printf("time until all workers held every adapter: baseline %.2f s, lorastore %.2f s "
	       "(including the first loads)\n",
	       base_s, ls_s);
	ret = 0;

out:
	if (d.pid > 0) {
		int st = ls_daemon_stop(&d);
		if (st != 0) {
			fprintf(stderr, "lorastored exited with %d (log: %s)\n", st, d.log);
			ret = 1;
		}
	}
	if (d.notify_fd >= 0)
		close(d.notify_fd);
	if (args.keep) {
		fprintf(stderr, "kept %s\n", work);
	} else {
		synth_rm_rf(work);
	}
	free(work);
	return ret;
}
