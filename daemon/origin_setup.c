/*
 * The origin of lorastored's catalog, from its options and the AWS
 * conventions: endpoint, region and credentials (store/origin.h does the
 * rest).  Secrets are read here, handed to the origin's client, and wiped;
 * no message names one.
 */
#include "origin_setup.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "ls_file.h"
#include "origin.h"

struct ls_creds {
	char access_key[256];
	char secret_key[256];
	char token[4096];
};

static const char *ls_env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

static char *ls_strip(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* The profile's keys from an AWS credentials file ("[profile]", "key = value" lines). */
static int ls_creds_file(const char *path, const char *profile, struct ls_creds *c,
			 struct ls_err *err)
{
	int fd = -1;
	int rc = ls_open_regular_at(AT_FDCWD, path, &fd);
	FILE *f = rc ? NULL : fdopen(fd, "r");
	if (!f) {
		if (fd >= 0)
			close(fd);
		return ls_err_set(err, rc ? rc : -errno, "origin credentials %s: %s", path,
				  rc == -EINVAL ? "not a regular file" : strerror(rc ? -rc : errno));
	}
	char line[8192];
	bool in = false, seen = false;
	while (fgets(line, sizeof(line), f)) {
		char *s = ls_strip(line);
		if (*s == '#' || *s == ';' || !*s)
			continue;
		if (*s == '[') {
			char *end = strchr(s, ']');
			if (end)
				*end = '\0';
			char *name = ls_strip(s + 1);
			if (strncmp(name, "profile ", 8) == 0)
				name = ls_strip(name + 8);
			in = strcmp(name, profile) == 0;
			seen |= in;
			continue;
		}
		char *eq = strchr(s, '=');
		if (!in || !eq)
			continue;
		*eq = '\0';
		char *key = ls_strip(s), *val = ls_strip(eq + 1);
		if (strcmp(key, "aws_access_key_id") == 0)
			snprintf(c->access_key, sizeof(c->access_key), "%s", val);
		else if (strcmp(key, "aws_secret_access_key") == 0)
			snprintf(c->secret_key, sizeof(c->secret_key), "%s", val);
		else if (strcmp(key, "aws_session_token") == 0)
			snprintf(c->token, sizeof(c->token), "%s", val);
	}
	explicit_bzero(line, sizeof(line));
	fclose(f);
	if (!seen)
		return ls_err_set(err, -EINVAL, "origin credentials %s: no profile [%s]", path,
				  profile);
	return 0;
}

int ls_origin_setup(const struct ls_config *cfg, struct ls_store *store, struct ls_err *err)
{
	if (!cfg->origin[0])
		return 0;
	char bucket[256], prefix[512];
	int rc = ls_origin_parse_url(cfg->origin, bucket, sizeof(bucket), prefix, sizeof(prefix),
				     err);
	if (rc)
		return rc;
	const char *region = cfg->origin_region[0] ? cfg->origin_region : ls_env("AWS_REGION");
	if (!region)
		region = ls_env("AWS_DEFAULT_REGION");
	if (!region)
		region = "us-east-1";
	char endpoint[600];
	const char *ep = cfg->origin_endpoint[0] ? cfg->origin_endpoint : ls_env("AWS_ENDPOINT_URL_S3");
	if (!ep)
		ep = ls_env("AWS_ENDPOINT_URL");
	if (ep)
		snprintf(endpoint, sizeof(endpoint), "%s", ep);
	else
		snprintf(endpoint, sizeof(endpoint), "https://s3.%s.amazonaws.com", region);

	struct ls_creds *c = calloc(1, sizeof(*c));
	if (!c)
		return ls_err_set(err, -ENOMEM, "out of memory");
	const char *file = cfg->origin_credentials[0] ? cfg->origin_credentials : NULL;
	if (file) {
		const char *profile = ls_env("AWS_PROFILE");
		rc = ls_creds_file(file, profile ? profile : "default", c, err);
	} else {
		const char *v;
		if ((v = ls_env("AWS_ACCESS_KEY_ID")))
			snprintf(c->access_key, sizeof(c->access_key), "%s", v);
		if ((v = ls_env("AWS_SECRET_ACCESS_KEY")))
			snprintf(c->secret_key, sizeof(c->secret_key), "%s", v);
		if ((v = ls_env("AWS_SESSION_TOKEN")))
			snprintf(c->token, sizeof(c->token), "%s", v);
	}
	if (rc == 0 && (!c->access_key[0] || !c->secret_key[0]))
		rc = ls_err_set(err, -EINVAL,
				"origin %s: no credentials: give --origin-credentials FILE, or set "
				"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
				cfg->origin);
	struct ls_origin *o = NULL;
	if (rc == 0)
		rc = ls_s3_global_init(err);
	if (rc == 0) {
		struct ls_origin_config oc = {
			.s3 = {.endpoint = endpoint,
			       .region = region,
			       .bucket = bucket,
			       .virtual_host = cfg->origin_virtual_host,
			       .access_key = c->access_key,
			       .secret_key = c->secret_key,
			       .session_token = c->token,
			       .connect_timeout_ms = cfg->origin_timeout_ms,
			       .stall_timeout_ms = cfg->origin_timeout_ms},
			.prefix = prefix,
			.ttl_ms = cfg->origin_ttl_ms,
		};
		rc = ls_origin_open(&oc, &o, err);
	}
	explicit_bzero(c, sizeof(*c));
	free(c);
	if (rc)
		return rc;
	/* The first look at it is a worker's, after the socket serves (disk_cache.c). */
	ls_info("origin %s", ls_origin_label(o));
	ls_store_set_origin(store, o);
	return 0;
}
