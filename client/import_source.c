/*
 * liblorastore: what an import of a path opens, and the name it gives.
 *
 * A path is a PEFT directory, a Hugging Face cache folder of a repository
 * (models--ORG--NAME, holding refs/ and snapshots/), or "hf:ORG/NAME[@REV]"
 * for such a folder under $HF_HUB_CACHE ($HF_HOME/hub, ~/.cache/huggingface/hub).
 * A cache folder resolves to the snapshot of REV (a branch or tag under
 * refs/, or a commit), of refs/main when none is given, or to the newest
 * snapshot when refs/main is missing, and is named ORG/NAME.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_internal.h"
#include "ls_name.h"

/*
 * The adapter name a directory gives: its last path component, of the
 * resolved path so that "." and "dir/" name something.
 */
static void ls_dir_name(const char *dir, char *out, size_t len)
{
	char *abs = realpath(dir, NULL);
	const char *path = abs ? abs : dir;
	size_t end = strlen(path);
	while (end > 1 && path[end - 1] == '/')
		end--;
	size_t start = end;
	while (start > 0 && path[start - 1] != '/')
		start--;
	snprintf(out, len, "%.*s", (int)(end - start), path + start);
	free(abs);
}

/*
 * Whether a directory's name says nothing of the adapter in it: what
 * training scripts and hubs call every adapter's folder.
 */
static bool ls_dir_name_meaningless(const char *name)
{
	static const char *const words[] = {
		"adapter", "adapters", "lora", "loras", "peft", "output", "outputs", "out",
		"checkpoint", "checkpoints", "final", "final_checkpoint", "best", "last",
		"latest", "model", "models", "tmp", "result", "results", "run", "runs",
		"snapshot", "snapshots", "main",
	};
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (strcasecmp(name, words[i]) == 0)
			return true;
	/* checkpoint-14, checkpoint_14, step-500, epoch_3 */
	static const char *const numbered[] = {"checkpoint", "step", "epoch", "global_step"};
	for (size_t i = 0; i < sizeof(numbered) / sizeof(numbered[0]); i++) {
		size_t n = strlen(numbered[i]);
		if (strncasecmp(name, numbered[i], n) != 0)
			continue;
		const char *p = name + n;
		if (*p == '-' || *p == '_')
			p++;
		if (*p && strspn(p, "0123456789") == strlen(p))
			return true;
	}
	/* A Hugging Face cache snapshot: 40 hex digits of a commit. */
	return strlen(name) == 40 && strspn(name, "0123456789abcdef") == 40;
}

static bool ls_is_dir_at(int dirfd, const char *path)
{
	struct stat st;
	return fstatat(dirfd, path, &st, 0) == 0 && S_ISDIR(st.st_mode);
}

static bool ls_exists_at(int dirfd, const char *path)
{
	return faccessat(dirfd, path, F_OK, 0) == 0;
}

/* The Hugging Face hub cache: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub. */
static void ls_hf_cache(char *out, size_t len)
{
	const char *hub = getenv("HF_HUB_CACHE"), *home = getenv("HF_HOME");
	if (hub && *hub)
		snprintf(out, len, "%s", hub);
	else if (home && *home)
		snprintf(out, len, "%s/hub", home);
	else
		snprintf(out, len, "%s/.cache/huggingface/hub", getenv("HOME") ? getenv("HOME") : "");
}

/*
 * The snapshot folder of a cache repository folder repo for rev (NULL: main,
 * or the newest snapshot without refs/main) into out.  0, or an error on conn.
 */
static int ls_hf_snapshot(lorastore *conn, const char *repo, const char *rev, char *out,
			  size_t len)
{
	char path[PATH_MAX], commit[128] = "";
	snprintf(path, sizeof(path), "%s/refs/%s", repo, rev ? rev : "main");
	FILE *f = fopen(path, "r");
	if (f) {
		if (!fgets(commit, sizeof(commit), f))
			commit[0] = '\0';
		fclose(f);
		commit[strcspn(commit, " \r\n")] = '\0';
	} else if (rev) {
		/* Not a branch or tag: a commit. */
		snprintf(commit, sizeof(commit), "%s", rev);
	}
	if (!commit[0]) {
		/* No refs/main: the snapshot written last. */
		snprintf(path, sizeof(path), "%s/snapshots", repo);
		DIR *d = opendir(path);
		struct timespec newest = {0, 0};
		for (struct dirent *e; d && (e = readdir(d));) {
			struct stat st;
			if (e->d_name[0] == '.' || fstatat(dirfd(d), e->d_name, &st, 0) != 0 ||
			    !S_ISDIR(st.st_mode))
				continue;
			if (!commit[0] || st.st_mtim.tv_sec > newest.tv_sec ||
			    (st.st_mtim.tv_sec == newest.tv_sec && st.st_mtim.tv_nsec > newest.tv_nsec)) {
				newest = st.st_mtim;
				snprintf(commit, sizeof(commit), "%.100s", e->d_name);
			}
		}
		if (d)
			closedir(d);
		if (!commit[0])
			return ls_conn_error(conn, -ENOENT, "%s holds no snapshot", repo);
	}
	if (strchr(commit, '/') || strcmp(commit, "..") == 0)
		return ls_conn_error(conn, -EINVAL, "%s: '%s' is not a revision", repo, commit);
	int n = snprintf(out, len, "%s/snapshots/%s", repo, commit);
	if (n < 0 || (size_t)n >= len)
		return ls_conn_error(conn, -ENAMETOOLONG, "%s: path too long", repo);
	struct stat st;
	if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode))
		return rev ? ls_conn_error(conn, -ENOENT, "%s: no branch, tag or snapshot '%s'", repo,
					   rev)
			   : ls_conn_error(conn, -ENOENT, "%s: no snapshot %s (refs/main)", repo,
					   commit);
	return 0;
}

/* "models--ORG--NAME" as ORG/NAME into out; false when base is not such a name. */
static bool ls_hf_repo_name(const char *base, char *out, size_t len)
{
	if (strncmp(base, "models--", 8) != 0)
		return false;
	const char *sep = strstr(base + 8, "--");
	if (!sep || sep == base + 8 || !sep[2])
		return false;
	snprintf(out, len, "%.*s/%s", (int)(sep - (base + 8)), base + 8, sep + 2);
	return true;
}

/*
 * Why dir holds no adapter, when it holds adapter_model.bin or adapter
 * folders: an error on conn; 0 when neither (the open says what is missing).
 */
static int ls_explain_missing(lorastore *conn, const char *dir, int dirfd)
{
	if (ls_exists_at(dirfd, "adapter_model.bin"))
		return ls_conn_error(
			conn, LS_E_CONFIG_MISSING,
			"%s holds adapter_model.bin, a pickle, which lorastore never loads (loading "
			"one can run any code); write adapter_model.safetensors from it once: python "
			"-c \"import torch, safetensors.torch as st; st.save_file(torch.load('%s/"
			"adapter_model.bin', weights_only=True), '%s/adapter_model.safetensors')\"",
			dir, dir, dir);
	DIR *d = fdopendir(dup(dirfd));
	size_t n = 0;
	char names[256] = "";
	size_t used = 0;
	for (struct dirent *e; d && (e = readdir(d));) {
		if (e->d_name[0] == '.' || !ls_is_dir_at(dirfd, e->d_name))
			continue;
		char probe[NAME_MAX + 32];
		snprintf(probe, sizeof(probe), "%s/adapter_config.json", e->d_name);
		if (!ls_exists_at(dirfd, probe))
			continue;
		if (n < 4 && used < sizeof(names))
			used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s",
						 n ? ", " : "", e->d_name);
		n++;
	}
	if (d)
		closedir(d);
	if (n)
		return ls_conn_error(conn, LS_E_CONFIG_MISSING,
				     "%s is not an adapter but holds %zu adapter folder%s (%s%s): "
				     "import those (lorastore import %s/*, or one with --name)",
				     dir, n, n == 1 ? "" : "s", names, n > 4 ? ", ..." : "", dir);
	return 0;
}

int ls_import_source(lorastore *conn, const char *arg, const char *name,
		     struct ls_import_src *out)
{
	memset(out, 0, sizeof(*out));
	char repo[PATH_MAX] = "", hf_name[LS_NAME_MAX + 1] = "";
	const char *rev = NULL;
	char revbuf[128];
	if (strncmp(arg, "hf:", 3) == 0) {
		/* hf:ORG/NAME[@REV] in the hub cache. */
		const char *id = arg + 3, *at = strchr(id, '@'), *slash = strchr(id, '/');
		size_t idlen = at ? (size_t)(at - id) : strlen(id);
		if (!slash || slash >= id + idlen || slash == id || slash + 1 == id + idlen ||
		    memchr(slash + 1, '/', idlen - (size_t)(slash + 1 - id)))
			return ls_conn_error(conn, -EINVAL, "'%s': a repository is hf:ORG/NAME[@REV]",
					     arg);
		if (at) {
			snprintf(revbuf, sizeof(revbuf), "%s", at + 1);
			rev = revbuf;
		}
		char cache[PATH_MAX - 300];
		ls_hf_cache(cache, sizeof(cache));
		snprintf(repo, sizeof(repo), "%s/models--%.*s--%.*s", cache, (int)(slash - id), id,
			 (int)(idlen - (size_t)(slash + 1 - id)), slash + 1);
		snprintf(hf_name, sizeof(hf_name), "%.*s", (int)idlen, id);
		struct stat st;
		if (stat(repo, &st) != 0)
			return ls_conn_error(conn, -ENOENT,
					     "%.*s is not in the Hugging Face cache (%s): download it "
					     "first (huggingface-cli download %.*s)",
					     (int)idlen, id, cache, (int)idlen, id);
	} else {
		char base[NAME_MAX + 1];
		ls_dir_name(arg, base, sizeof(base));
		struct stat st;
		char probe[PATH_MAX];
		snprintf(probe, sizeof(probe), "%s/snapshots", arg);
		if (ls_hf_repo_name(base, hf_name, sizeof(hf_name)) && stat(probe, &st) == 0 &&
		    S_ISDIR(st.st_mode))
			snprintf(repo, sizeof(repo), "%s", arg);
		else
			hf_name[0] = '\0';
	}
	int rc;
	if (repo[0]) {
		rc = ls_hf_snapshot(conn, repo, rev, out->dir, sizeof(out->dir));
		if (rc)
			return rc;
	} else if (strlen(arg) >= sizeof(out->dir)) {
		return ls_conn_error(conn, -ENAMETOOLONG, "%.64s...: path too long", arg);
	} else {
		snprintf(out->dir, sizeof(out->dir), "%s", arg);
	}

	/* The name: given, the repository's, or the folder's when it says something. */
	bool from_dir = false;
	if (name)
		snprintf(out->name, sizeof(out->name), "%.*s", LS_NAME_MAX, name);
	else if (hf_name[0])
		snprintf(out->name, sizeof(out->name), "%s", hf_name);
	else {
		ls_dir_name(out->dir, out->name, sizeof(out->name));
		from_dir = true;
	}
	int dirfd = open(out->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd >= 0) {
		rc = ls_exists_at(dirfd, "adapter_model.safetensors")
			     ? 0
			     : ls_explain_missing(conn, out->dir, dirfd);
		close(dirfd);
		if (rc)
			return rc;
	}
	if (name && !*name)
		return ls_conn_error(conn, LS_E_NAME_INVALID, "import: no adapter name given");
	if (from_dir && ls_dir_name_meaningless(out->name))
		/* Every training run's folder is called that: two adapters would mix. */
		return ls_conn_error(conn, LS_E_NAME_INVALID,
				     "the directory's name '%s' says nothing of the adapter; give "
				     "it a name (--name TENANT/NAME)",
				     out->name);
	/* A name given is checked whole, not its copy (which stops at LS_NAME_MAX). */
	const char *check = name ? name : out->name;
	if (!ls_name_valid(check))
		return ls_conn_error(conn, LS_E_NAME_INVALID,
				     "'%.*s%s' is not an adapter name: a name has 1 to %d characters "
				     "of [A-Za-z0-9._/-]%s",
				     LS_NAME_MAX, check,
				     strnlen(check, LS_NAME_MAX + 1) > LS_NAME_MAX ? "..." : "",
				     LS_NAME_MAX, name ? "" : " (--name gives another)");
	return 0;
}
