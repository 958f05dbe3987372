/* The CUDA driver, resolved at run time (ls_cudrv.h). */
#define _GNU_SOURCE
#include "ls_cudrv.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LS_STR(x) #x
#define LS_XSTR(x) LS_STR(x)

static struct ls_cudrv ls_drv;
static int ls_drv_rc;
static char ls_drv_why[LS_ERR_MSG_MAX];
static pthread_once_t ls_drv_once = PTHREAD_ONCE_INIT;

static void ls_cudrv_once(void)
{
	const char *path = getenv("LORASTORE_CUDA_DRIVER");
	if (!path || !*path)
		path = "libcuda.so.1";
	snprintf(ls_drv.path, sizeof(ls_drv.path), "%s", path);
	/* RTLD_NODELETE: pointers into the driver stay valid for the process's life. */
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
	if (!lib) {
		ls_drv_rc = LS_E_NO_DEVICE;
		snprintf(ls_drv_why, sizeof(ls_drv_why), "no NVIDIA driver: %s", dlerror());
		return;
	}
#define LS_CUDRV_LOAD(fn)                                                                  \
	ls_drv.fn = (__typeof__(ls_drv.fn))dlsym(lib, LS_XSTR(fn));                         \
	if (!ls_drv.fn) {                                                                  \
		ls_drv_rc = LS_E_NO_DEVICE;                                                \
		snprintf(ls_drv_why, sizeof(ls_drv_why), "%s does not export %s", path,     \
			 LS_XSTR(fn));                                                     \
		return;                                                                    \
	}
	LS_CUDRV_FUNCS(LS_CUDRV_LOAD)
#undef LS_CUDRV_LOAD
	CUresult r = ls_drv.cuInit(0);
	if (r != CUDA_SUCCESS) {
		char words[160];
		ls_drv_rc = LS_E_NO_DEVICE;
		snprintf(ls_drv_why, sizeof(ls_drv_why), "cuInit: %s",
			 ls_cudrv_strerror(&ls_drv, r, words, sizeof(words)));
		return;
	}
	if (ls_drv.cuDriverGetVersion(&ls_drv.version) != CUDA_SUCCESS)
		ls_drv.version = 0;
}

int ls_cudrv_load(const struct ls_cudrv **out, struct ls_err *err)
{
	pthread_once(&ls_drv_once, ls_cudrv_once);
	if (ls_drv_rc) {
		*out = NULL;
		return ls_err_set(err, ls_drv_rc, "%s", ls_drv_why);
	}
	*out = &ls_drv;
	return 0;
}

const char *ls_cudrv_strerror(const struct ls_cudrv *d, CUresult r, char *buf, size_t cap)
{
	const char *name = NULL, *text = NULL;
	if (!d || !d->cuGetErrorName || d->cuGetErrorName(r, &name) != CUDA_SUCCESS)
		name = NULL;
	if (!d || !d->cuGetErrorString || d->cuGetErrorString(r, &text) != CUDA_SUCCESS)
		text = NULL;
	if (name && text)
		snprintf(buf, cap, "%s (%s)", name, text);
	else
		snprintf(buf, cap, "CUDA error %d", (int)r);
	return buf;
}

int ls_cudrv_fail(const struct ls_cudrv *d, struct ls_err *err, CUresult r, const char *call,
		  const char *file, int line)
{
	char words[200];
	const char *base = strrchr(file, '/');
	int code = r == CUDA_ERROR_OUT_OF_MEMORY ? -ENOMEM : LS_E_DEVICE;
	return ls_err_set(err, code, "%s: %s (%s:%d)", call,
			  ls_cudrv_strerror(d, r, words, sizeof(words)), base ? base + 1 : file,
			  line);
}

void ls_cudrv_uuid_str(const CUuuid *u, char *buf, size_t cap)
{
	const unsigned char *b = (const unsigned char *)u->bytes;
	snprintf(buf, cap,
		 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
		 b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
		 b[14], b[15]);
}
