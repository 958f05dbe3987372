/*
 * liblorastore internals: the connection, its socket I/O and the pieces the
 * public functions share.  Nothing here is exported from the shared library.
 */
#ifndef LS_CLIENT_INTERNAL_H
#define LS_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <limits.h>

#include "directory.h"
#include "frame.h"
#include "ls_clock.h"
#include "ls_digest.h"
#include "ls_types.h"
#include "ls_name.h"
#include "table.h"
#include "lorastore.h"

/* Marks the definitions of public functions: the only exported symbols. */
#define LS_PUBLIC __attribute__((visibility("default")))

/* Longest message lorastore_errmsg() gives, including the NUL. */
#define LS_CLIENT_ERRMSG_MAX 512

/* A slab mapped into this process: a host memfd, or a device slab imported. */
struct ls_slab_map {
	uint32_t id;
	const uint8_t *addr;       /* host: the read-only mapping; device: the device address */
	size_t size;               /* bytes mapped */
	int device;                /* device: this process's CUDA ordinal of its GPU; -1 on host */
	bool read_only;            /* device: mapped with read access only */
	uint64_t handle;           /* device: the imported allocation */
	char uuid[48];             /* device: its GPU */
	void *import;              /* device: the process's import it shares (device.c) */
};

struct lorastore {
	int fd;                    /* the socket, -1 once the connection failed */
	char errmsg[LS_CLIENT_ERRMSG_MAX];
	uint64_t next_id;          /* id of the next request */
	int64_t deadline_ms;       /* CLOCK_MONOTONIC limit of a receive; 0: none */
	struct ls_framer framer;

	/* Descriptors received and not yet claimed by a response, oldest first. */
	int *fdq;
	size_t fdq_head, fdq_len, fdq_cap;

	/* Slabs mapped so far; a later entry with the same id shadows an earlier. */
	struct ls_slab_map *slabs;
	size_t n_slabs, cap_slabs;

	/* Adapters held on this connection (doubly linked). */
	struct lorastore_adapter *adapters;

	/* From the daemon's HelloReply. */
	uint64_t instance;         /* the daemon's run: with a slab id, a slab's identity */

	/* The warm path (proto/directory.h), when the daemon gave it; else NULL. */
	const struct ls_dir_hdr *dir;  /* the directory, mapped read-only */
	size_t dir_bytes;
	struct ls_lease_page *page;    /* this connection's lease page, mapped read-write */
	uint16_t *free_slots;          /* the page's free slots, a stack */
	uint32_t n_free;
	uint64_t pinned_bytes;         /* what this connection's leases pin, as the daemon counts */
	uint64_t warm_acquires;        /* acquires made in shared memory (the page's count) */
};

struct lorastore_adapter {
	lorastore *conn;
	struct lorastore_adapter *prev, *next;
	uint64_t lease_id;                    /* 0 for a warm lease */
	uint32_t warm_slot;                   /* a warm lease: its slot in the page, plus one */
	uint64_t pinned_bytes;                /* what it counts against the pin limit */
	const struct ls_table_hdr *table;     /* in the slab mapping, shared by every client */
	const uint8_t *base;                  /* the data region in the slab mapping */
	lorastore_adapter_info info;          /* its strings point into the table */
};

struct lorastore_list {
	Lorastore__Response *resp;            /* owns every string of the entries */
	size_t n;
	lorastore_entry *entries;
	const Lorastore__VersionRecord **records;
	const char *next;                     /* NULL after the last page */
};

/* ---- errors (conn.c) */

/* Record a failure's message on conn and return code. */
int ls_conn_error(lorastore *conn, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * The connection cannot go on: close the socket, keep code and message.
 * Every later call fails with LORASTORE_E_CLOSED.  Returns code.
 */
int ls_conn_fail(lorastore *conn, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* LORASTORE_E_CLOSED (message kept) when conn failed earlier, else 0. */
int ls_conn_check(lorastore *conn);

/*
 * Check a reference ("name" or "name@N") before it is sent: 0, or
 * LS_E_NAME_INVALID with the name rule in the connection's message, which
 * begins with what (the call's name).
 */
int ls_ref_check(lorastore *conn, const char *what, const char *ref);

/* What an import opens (import_source.c): the adapter's folder and its name. */
struct ls_import_src {
	char dir[PATH_MAX];
	char name[LS_NAME_MAX + 1];
};

/*
 * Resolve an import's path (a folder, a Hugging Face cache folder, or
 * hf:ORG/NAME[@REV]) and its name (name, or NULL for the repository's or
 * the folder's own), refusing a folder name that says nothing, a pickle
 * (adapter_model.bin) and a folder of adapter folders.  0, or an error on
 * conn.
 */
int ls_import_source(lorastore *conn, const char *arg, const char *name,
		     struct ls_import_src *out);

/* ---- socket I/O (conn.c) */

/*
 * Open the socket at path (connect only, no Hello); 0 or -errno with message.
 * While the daemon's backlog is full the connect is retried, until
 * conn->deadline_ms (-ETIMEDOUT then; 0: no deadline).  Receives also stop
 * at the deadline while one is set.
 */
int ls_conn_open(lorastore *conn, const char *path);

/*
 * Send req (its id is assigned here), with fds[0..nfds) attached to the
 * frame, and wait for its response.  On success *resp holds a response whose
 * body is of the case expected (free with lorastore__response__free_unpacked);
 * a Response.error comes back as its code with the message kept.
 */
int ls_conn_call(lorastore *conn, Lorastore__Request *req, const int *fds, size_t nfds,
		 Lorastore__Response__BodyCase expected, Lorastore__Response **resp);

/* The oldest descriptor received and not yet claimed, or -1 when none. */
int ls_conn_take_fd(lorastore *conn);

/* Close every descriptor still queued and free the framer. */
void ls_conn_teardown_io(lorastore *conn);

/* ---- records (list.c) */

/* lorastore_dtype for a safetensors dtype name (0 when not one of ours). */

/* lorastore_kind for a wire TensorKind (0 when unspecified). */
lorastore_kind ls_kind_from_pb(Lorastore__TensorKind k);

/*
 * Describe tensor j of rec into out, data = base + offset when base is not
 * NULL.  scale is the module's ModuleScale, or NULL.  LORASTORE_E_PROTOCOL
 * when the tensor does not fit the public struct.
 */
int ls_tensor_fill(const Lorastore__VersionRecord *rec, size_t j,
		   const Lorastore__ModuleScale *scale, const uint8_t *base, lorastore_tensor *out);

/* The ModuleScale of module in rec by a linear search, or NULL. */
const Lorastore__ModuleScale *ls_record_scale(const Lorastore__VersionRecord *rec,
					      const char *module);

/* Lower-case hex of a digest into out[65] ("" when it is not 32 bytes). */
void ls_list_digest_hex(const ProtobufCBinaryData *d, char out[LS_DIGEST_HEX]);

/*
 * Wrap resp (taken over, even on failure) in a list: the entries of its
 * ListReply, or its VersionRecord as one entry.
 */
int ls_list_from_response(lorastore *conn, Lorastore__Response *resp, lorastore_list **out);

/* ---- adapters (adapter.c) */

/* Free every adapter handle of conn without telling the daemon. */
void ls_adapters_drop(lorastore *conn);

/* Unmap every slab of conn. */
void ls_slabs_unmap(lorastore *conn);

/* ---- the warm path (lorastore.c) */

/* Map the directory and the lease page a HelloReply brought (each fd closed here). */
int ls_warm_map(lorastore *conn, int dir_fd, uint64_t dir_size, int page_fd);

/* Unmap them. */
void ls_warm_unmap(lorastore *conn);

/* ---- device slabs (device.c; the only client file that sees the CUDA driver) */

/*
 * Import device slab id of size bytes from fd (closed here, whatever
 * happens) for the GPU whose UUID is uuid, and map it for reading into this
 * process: fills m.  LORASTORE_E_NO_DEVICE, LORASTORE_E_NOT_BUILT,
 * LORASTORE_E_DEVICE with the message on conn.
 */
int ls_device_import(lorastore *conn, uint32_t id, uint64_t size, int fd, const char *uuid,
		     struct ls_slab_map *m);

/* Unmap and release an imported device slab. */
void ls_device_unmap(struct ls_slab_map *m);

/*
 * The UUID of the GPU of the calling thread's current CUDA context into buf,
 * or "" when there is no driver or no current context.
 */
void ls_device_current_uuid(char *buf, size_t cap);

#endif
