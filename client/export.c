/*
 * liblorastore: export a version as a PEFT directory.  The daemon gives the
 * config text and the safetensors head (it reads the blob's manifest); the
 * tensor data is copied from a lease on the host tier, in place.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_internal.h"
#include "ls_file.h"
#include "ls_name.h"

static const char *const ls_export_files[2] = {"adapter_config.json",
					       "adapter_model.safetensors"};

/* The data of record tensor i on the lease: the lease's tensor at the same offset. */
static const void *ls_export_data(const lorastore_adapter *ad, const Lorastore__Tensor *t,
				  size_t i)
{
	lorastore_tensor lt;
	lorastore_adapter_info info;
	size_t n = lorastore_adapter_info_get(ad, &info) == 0 ? info.tensor_count : 0;
	if (i < n && lorastore_adapter_tensor_at(ad, i, &lt) == 0 && lt.offset == t->offset &&
	    lt.bytes == t->length)
		return lt.data;
	for (size_t k = 0; k < n; k++)
		if (lorastore_adapter_tensor_at(ad, k, &lt) == 0 && lt.offset == t->offset &&
		    lt.bytes == t->length)
			return lt.data;
	return NULL;
}

/* Write both files under temporary names in dirfd; their names go to tmp[]. */
static int ls_export_write(lorastore *conn, int dirfd, const char *dir,
			   const Lorastore__ExportReply *ex, const lorastore_adapter *ad,
			   char tmp[2][64])
{
	for (int f = 0; f < 2; f++) {
		snprintf(tmp[f], 64, ".%s.%d.tmp", ls_export_files[f], (int)getpid());
		int fd = openat(dirfd, tmp[f], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			int e = errno;
			tmp[f][0] = '\0';
			return ls_conn_error(conn, -e, "%s/%s: %s", dir, ls_export_files[f],
					     strerror(e));
		}
		int rc = 0;
		uint64_t off = 0;
		if (f == 0) {
			size_t n = strlen(ex->config_json);
			rc = ls_write_all(fd, ex->config_json, n, 0);
			if (!rc)
				rc = ls_write_all(fd, "\n", 1, n);
		} else {
			rc = ls_write_all(fd, ex->safetensors_head.data, ex->safetensors_head.len, 0);
			off = ex->safetensors_head.len;
			for (size_t i = 0; !rc && i < ex->record->n_tensors; i++) {
				const Lorastore__Tensor *t = ex->record->tensors[i];
				const void *data = ls_export_data(ad, t, i);
				if (!data) {
					close(fd);
					return ls_conn_error(conn, LS_E_PROTOCOL,
							     "export: tensor %s is not in the "
							     "version's table",
							     t->source_name ? t->source_name : "");
				}
				rc = ls_write_all(fd, data, t->length, off);
				off += t->length;
			}
		}
		if (!rc && fsync(fd) != 0)
			rc = -errno;
		close(fd);
		if (rc)
			return ls_conn_error(conn, rc, "%s/%s: %s", dir, ls_export_files[f],
					     strerror(-rc));
	}
	return 0;
}

LS_PUBLIC int lorastore_export(lorastore *conn, const char *ref, const char *dir,
			       char *exported, size_t len)
{
	if (exported && len)
		*exported = '\0';
	if (!conn)
		return -EINVAL;
	if (!dir || !*dir)
		return ls_conn_error(conn, -EINVAL, "export: no directory given");
	int rc = ls_ref_check(conn, "export", ref);
	if (rc)
		return rc;
	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		int e = errno;
		return ls_conn_error(conn, -e, "%s: %s", dir, strerror(e));
	}
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		int e = errno;
		return ls_conn_error(conn, -e, "%s: %s", dir, strerror(e));
	}
	for (int f = 0; f < 2; f++)
		if (faccessat(dirfd, ls_export_files[f], F_OK, 0) == 0) {
			close(dirfd);
			return ls_conn_error(conn, -EEXIST,
					     "%s already holds %s: export into an empty directory",
					     dir, ls_export_files[f]);
		}

	Lorastore__RefRequest rr = LORASTORE__REF_REQUEST__INIT;
	rr.ref = (char *)ref;
	Lorastore__Request req = LORASTORE__REQUEST__INIT;
	req.body_case = LORASTORE__REQUEST__BODY_EXPORT;
	req.export = &rr;
	Lorastore__Response *resp = NULL;
	rc = ls_conn_call(conn, &req, NULL, 0, LORASTORE__RESPONSE__BODY_EXPORTED, &resp);
	if (rc) {
		close(dirfd);
		return rc;
	}
	const Lorastore__ExportReply *ex = resp->exported;
	if (!ex || !ex->record || !ex->record->name || !ex->config_json) {
		lorastore__response__free_unpacked(resp, NULL);
		close(dirfd);
		return ls_conn_error(conn, LS_E_PROTOCOL, "export reply without a body");
	}
	/* The data: a lease on exactly the version exported, on the host tier. */
	char fixed[LS_NAME_MAX + 16];
	snprintf(fixed, sizeof(fixed), "%s@%u", ex->record->name, ex->record->version);
	lorastore_adapter *ad = NULL;
	rc = lorastore_acquire(conn, fixed, -1, &ad);
	char tmp[2][64] = {"", ""};
	if (rc == 0)
		rc = ls_export_write(conn, dirfd, dir, ex, ad, tmp);
	for (int f = 0; rc == 0 && f < 2; f++)
		if (renameat(dirfd, tmp[f], dirfd, ls_export_files[f]) != 0) {
			int e = errno;
			rc = ls_conn_error(conn, -e, "%s/%s: %s", dir, ls_export_files[f],
					   strerror(e));
		} else {
			tmp[f][0] = '\0';
		}
	for (int f = 0; f < 2; f++)
		if (tmp[f][0])
			unlinkat(dirfd, tmp[f], 0);
	if (rc == 0)
		fsync(dirfd);
	close(dirfd);
	if (ad)
		lorastore_adapter_release(ad);
	if (rc == 0 && exported && len)
		snprintf(exported, len, "%s", fixed);
	lorastore__response__free_unpacked(resp, NULL);
	return rc;
}
