/*
 * liblorastore: the client library of lorastore.
 *
 * A process connects to lorastored over its Unix socket, acquires adapters by
 * name ("tenant/name") or by name and version ("tenant/name@3"), and reads
 * their tensors in place: the daemon's memory is mapped read-only into the
 * process, so no tensor is ever copied.
 *
 * Caveats
 * - Threads: a connection (lorastore *) may be used by one thread at a time;
 *   callers serialize calls on it (a mutex around the calls is enough).
 *   Separate connections are independent.  An acquired adapter
 *   (lorastore_adapter *) may be read from any number of threads at once
 *   while it is held; releasing it must not race with those reads.
 * - What a lease pins: from lorastore_acquire until lorastore_adapter_release
 *   (or the connection's close or the process's exit, crashes included), the
 *   adapter's memory stays resident and unchanged and cannot be evicted or
 *   deleted.  Tensor pointers are valid exactly that long.
 * - The warm path: an acquire of a version that is resident, in a slab this
 *   connection has mapped already, is taken in shared memory without a
 *   request: liblorastore looks the reference up in a directory the daemon
 *   publishes (mapped read-only at connect), publishes the lease in the
 *   connection's lease page (shared with the daemon alone), and checks the
 *   directory again; release clears the slot.  No system call, no daemon
 *   in the path (an acquire and its release in about 0.2 us).  The daemon scans
 *   the lease pages before it evicts or frees a version, so such a lease
 *   pins exactly as one granted by a request, counts in stats and against
 *   the pin limit, and ends with the connection.  Anything else (not
 *   resident, a slab not mapped yet, a full page of 500 leases, a
 *   directory entry changing, an older daemon) takes the request path, with
 *   the same result and errors.  LORASTORE_WARM_PATH=0 in the environment
 *   at connect turns the warm path off for that connection.
 * - fork: a connection must not be used in both parent and child.  A child
 *   that needs lorastore opens its own connection; mappings inherited across
 *   fork stay readable but the child holds no lease on them (a release in
 *   the child of a lease taken in the parent would end the parent's lease).
 * - Mappings are read-only: a write through a tensor pointer faults.  The
 *   adapter's name and its tensor table are read from the same mapping, so
 *   their strings are valid exactly as long as the tensor pointers.
 * - Tiers: lorastore_acquire gives host memory, readable by the CPU.  On a
 *   daemon that serves GPUs, lorastore_acquire_tier with LORASTORE_TIER_DEVICE
 *   gives the copy in a GPU's memory: tensor pointers are then CUDA device
 *   addresses (CUdeviceptr values), for kernels, never to dereference on the
 *   CPU.  Each device slab is imported into the process once (connections
 *   to the same daemon share it; the last one to close unmaps it) and
 *   mapped into the process's unified address space with read access
 *   for that GPU, so the pointers are valid in every context of the process
 *   on that GPU (the primary context included).  A lease pins what the GPU
 *   reads: release it only after the kernels that read its tensors have
 *   finished (synchronize their stream or wait on an event first).
 * - Device mappings are read-only where the driver accepts a read-only
 *   mapping of imported memory (seen on CUDA 13 with an H200: a kernel's
 *   write faults); where it does not, they are mapped read-write and a
 *   write would change every process's copy.
 *   lorastore_adapter_info.device_read_only says which.
 * - The CUDA driver is loaded at run time, the first time a device tier is
 *   acquired: a process that only uses host memory never loads it, and
 *   liblorastore needs no CUDA library to load.
 *
 * Errors: functions return 0 on success, a negative errno for a system
 * failure, or a negative LORASTORE_E_* code.  lorastore_strerror() describes
 * any of them; lorastore_errmsg() gives the detailed message of the last
 * failure on a connection (hiredis-style).
 */
#ifndef LORASTORE_H
#define LORASTORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LORASTORE_VERSION_MAJOR 0
#define LORASTORE_VERSION_MINOR 1

/* Socket used when none is given and LORASTORE_SOCKET is unset. */
#define LORASTORE_DEFAULT_SOCKET "/run/lorastore/lorastored.sock"

/* lorastore's own error codes (the range [-31000, -30900)). */
enum lorastore_error {
	LORASTORE_E_TRUNCATED = -31000,     /* safetensors file truncated */
	LORASTORE_E_HEADER_BOUNDS,          /* header length past the end of the file */
	LORASTORE_E_HEADER_TOO_LARGE,       /* header over the 100,000,000-byte cap */
	LORASTORE_E_HEADER_JSON,            /* header is not valid JSON */
	LORASTORE_E_HEADER_SCHEMA,          /* header is not a safetensors header */
	LORASTORE_E_DTYPE_UNKNOWN,          /* unknown dtype */
	LORASTORE_E_DTYPE_UNSUPPORTED,      /* dtype not allowed for LoRA tensors */
	LORASTORE_E_SHAPE_SIZE,             /* shape and dtype do not match the byte range */
	LORASTORE_E_OFFSET_BOUNDS,          /* tensor data out of bounds */
	LORASTORE_E_OFFSET_OVERLAP,         /* tensor data ranges overlap */
	LORASTORE_E_OFFSET_GAP,             /* gap in tensor data */
	LORASTORE_E_NONFINITE,              /* NaN or infinity in a tensor */
	LORASTORE_E_LORA_UNPAIRED,          /* lora_A without lora_B or the reverse */
	LORASTORE_E_LORA_RANK,              /* rank mismatch */
	LORASTORE_E_LORA_SHAPE,             /* LoRA tensor of an impossible shape */
	LORASTORE_E_TENSOR_NAME,            /* tensor name not understood */
	LORASTORE_E_NO_TENSORS,             /* adapter without LoRA tensors */
	LORASTORE_E_CONFIG_MISSING,         /* adapter_config.json missing */
	LORASTORE_E_CONFIG_INVALID,         /* adapter_config.json invalid */
	LORASTORE_E_NAME_INVALID,           /* adapter name or reference malformed */
	LORASTORE_E_NOT_FOUND,              /* no such adapter, version, lease or tensor */
	LORASTORE_E_CORRUPT,                /* blob checksum mismatch */
	LORASTORE_E_BLOB_FORMAT,            /* unreadable blob format */
	LORASTORE_E_CATALOG,                /* catalog failure in the daemon */
	LORASTORE_E_CATALOG_SCHEMA,         /* catalog of an incompatible version */
	LORASTORE_E_BUSY,                   /* busy: the state directory is another process's,
					       a rebuild runs, or this connection has
					       --client-jobs requests waiting for the
					       daemon's workers (wait for their answers) */
	LORASTORE_E_PROTOCOL,               /* malformed message */
	LORASTORE_E_FRAME_TOO_LARGE,        /* message over the frame cap */
	LORASTORE_E_VERSION,                /* protocol version not supported */
	LORASTORE_E_NO_SPACE,               /* budget exhausted by pinned adapters */
	LORASTORE_E_PIN_LIMIT,              /* the client's pinned-bytes limit reached */
	LORASTORE_E_DELETED,                /* the adapter was deleted */
	LORASTORE_E_CLOSED,                 /* the connection is closed */
	LORASTORE_E_BACKEND,                /* the memory backend is not available */
	LORASTORE_E_SHAPE,                  /* shapes or ranks do not fit together */
	LORASTORE_E_DTYPE,                  /* dtypes do not fit together */
	LORASTORE_E_NOT_BUILT,              /* path (CUDA) not built into this library */
	LORASTORE_E_NO_DEVICE,              /* no usable GPU */
	LORASTORE_E_DEVICE,                 /* a CUDA or cuBLAS call failed */
	LORASTORE_E_TIER,                   /* adapters held in another tier (or on another
					       GPU) than the call needs */
	LORASTORE_E_BLOB_MISSING,           /* the catalog names a blob missing from disk */
	LORASTORE_E_BLOB_TRUNCATED,         /* a blob shorter than its header says */
	LORASTORE_E_ADAPTER_LIMIT,          /* an adapter past lorastore's bounds: over 65,536
					       tensors, 4,096 metadata entries or 2,000,000
					       JSON values in its header, or a record (config
					       and tensor table) over 4 MiB; refused before
					       anything is committed */
	LORASTORE_E_BASE_CHANGED,           /* an import whose base model, or set of modules
					       and their sizes, differs from the name's
					       latest version (allow_new_base allows it) */
	LORASTORE_E_ALIASED,                /* a delete of a version an alias points at
					       (untag or move the alias first) */
	LORASTORE_E_ORIGIN,                 /* the daemon's origin (an S3-compatible object
					       store) is unreachable, timed out or refused the
					       request: the message names the origin */
};

/* Element types, as safetensors names them. */
typedef enum lorastore_dtype {
	LORASTORE_DTYPE_F32 = 1,
	LORASTORE_DTYPE_F16 = 2,
	LORASTORE_DTYPE_BF16 = 3,
} lorastore_dtype;

/* Kinds of tensors in an adapter. */
typedef enum lorastore_kind {
	LORASTORE_KIND_A = 1,          /* lora_A: [r, in] */
	LORASTORE_KIND_B = 2,          /* lora_B: [out, r] */
	LORASTORE_KIND_EXTRA = 3,      /* a full tensor saved beside (a head, a bias) */
	LORASTORE_KIND_MAGNITUDE = 4,  /* DoRA magnitude: [out] */
} lorastore_kind;

/* "A", "B", "extra" or "magnitude" ("?" for another value). */
const char *lorastore_kind_name(lorastore_kind kind);

/* The kind named s (as lorastore_kind_name writes it): 0, or -EINVAL. */
int lorastore_kind_from_name(const char *s, lorastore_kind *out);

#define LORASTORE_MAX_DIMS 8

/* A connection to lorastored. */
typedef struct lorastore lorastore;
/* An acquired adapter: a lease on one resident version. */
typedef struct lorastore_adapter lorastore_adapter;

typedef struct lorastore_adapter_info {
	const char *name;              /* valid while the adapter is held */
	uint32_t version;
	uint8_t digest[32];            /* SHA-256 content digest: the identity */
	uint64_t generation;           /* unique across the store, never reused */
	uint32_t rank;                 /* config r (largest rank with rank_pattern) */
	double scale;                  /* alpha / r (or / sqrt(r)) of modules without a pattern */
	lorastore_dtype dtype;         /* of the LoRA tensors; 0 when mixed */
	size_t tensor_count;
	uint64_t tensor_bytes;         /* the adapter's size: its tensors' bytes, summed */
	uint64_t resident_bytes;       /* what it takes in its tier's memory: its data
					  region (the tensors at aligned offsets) and its
					  table, each in whole pages; on a device tier the
					  data region alone (its table is in host memory) */
	const char *tier;              /* "host" or "device" */
	int device;                    /* device tier: the GPU's CUDA ordinal in this
					  process; -1 on host */
	const char *device_uuid;       /* device tier: "GPU-..."; "" on host */
	int device_read_only;          /* device tier: 1 when mapped read-only */
} lorastore_adapter_info;

typedef struct lorastore_tensor {
	const void *data;              /* read-only, in the shared mapping; on a device
					  tier a CUDA device address */
	const char *module;            /* e.g. "model.layers.3.self_attn.q_proj" */
	lorastore_kind kind;
	lorastore_dtype dtype;
	int layer;                     /* -1 when the module has none */
	unsigned ndim;
	uint64_t shape[LORASTORE_MAX_DIMS];
	uint64_t bytes;
	uint32_t rank;                 /* of the module (A and B tensors), else 0 */
	double scale;                  /* of the module after the patterns, else 0 */
	const char *dtype_name;        /* safetensors name ("F16", "I64", ...); dtype is 0
					  for those outside lorastore_dtype */
	uint64_t offset;               /* bytes from the start of the adapter's data region */
	int device;                    /* the CUDA ordinal of the GPU that data is on; -1
					  when data is host memory */
} lorastore_tensor;

/*
 * Connect to the daemon at socket_path, or at $LORASTORE_SOCKET, or at
 * LORASTORE_DEFAULT_SOCKET when socket_path is NULL, and shake hands.
 * As in hiredis, *out is set even on failure (to a failed connection whose
 * lorastore_errmsg() says why, to be closed with lorastore_close), except
 * when the handle itself could not be allocated (-ENOMEM, *out NULL).
 * The connect and the handshake together wait at most
 * $LORASTORE_CONNECT_TIMEOUT_MS milliseconds (0 there: no limit), by default
 * 10,000; lorastore_connect_timeout sets the limit per call.
 * Errors: -ENOENT or -ECONNREFUSED (no daemon), -EACCES, -ENAMETOOLONG,
 * -ETIMEDOUT (no answer in time), -EUSERS (the daemon serves its
 * --max-clients already), -EMFILE (the daemon ran out of descriptors),
 * LORASTORE_E_VERSION (the daemon speaks another protocol version: the
 * message names its release and both versions), LORASTORE_E_PROTOCOL,
 * LORASTORE_E_CLOSED, -ENOMEM.
 */
int lorastore_connect(const char *socket_path, lorastore **out);

/*
 * lorastore_connect with a limit on the connect and the handshake:
 * timeout_ms > 0 milliseconds, 0 for the default ($LORASTORE_CONNECT_TIMEOUT_MS
 * or 10,000), < 0 for no limit.  The limit covers only the connection's
 * start; later calls on it are not bounded by it.
 */
int lorastore_connect_timeout(const char *socket_path, int timeout_ms, lorastore **out);

/*
 * Close the connection (NULL is a no-op).  Every adapter still held on it is
 * released and its handle freed: do not call lorastore_adapter_release on it
 * afterwards.  Tensor pointers become invalid.
 */
void lorastore_close(lorastore *conn);

/* The message of the last failure on conn ("" when none). */
const char *lorastore_errmsg(const lorastore *conn);

/*
 * Acquire ref ("name" for the latest version, or "name@N"), loading it first
 * when it is not resident: by the warm path when it can (see Caveats), else
 * by a request.  timeout_ms < 0 waits as long as the load takes;
 * 0 succeeds only when it is already resident.  Errors: LORASTORE_E_NOT_FOUND,
 * LORASTORE_E_NAME_INVALID (checked before anything is sent), -ETIMEDOUT,
 * LORASTORE_E_NO_SPACE, LORASTORE_E_PIN_LIMIT, LORASTORE_E_CORRUPT (a
 * checksum of the blob's header, manifest or data differs),
 * LORASTORE_E_BLOB_MISSING, LORASTORE_E_BLOB_TRUNCATED, LORASTORE_E_CLOSED,
 * -errno.
 */
int lorastore_acquire(lorastore *conn, const char *ref, int timeout_ms,
		      lorastore_adapter **out);

/* Memory tiers of lorastored. */
typedef enum lorastore_tier {
	LORASTORE_TIER_HOST = 0,       /* host memory, readable by the CPU */
	LORASTORE_TIER_DEVICE = 1,     /* a GPU's memory */
} lorastore_tier;

/*
 * Acquire ref in a tier.  LORASTORE_TIER_HOST is lorastore_acquire.
 * LORASTORE_TIER_DEVICE acquires the copy in the memory of GPU device (its
 * UUID, "GPU-..."), loading it there first when it is not resident (from the
 * daemon's host tier when the version is there, else from disk); device NULL
 * names the GPU of the calling thread's current CUDA context, or, without
 * one, the daemon's only GPU.  Tensor pointers are then device addresses
 * (see Caveats).  Errors: those of lorastore_acquire, and
 * LORASTORE_E_BACKEND (the daemon serves no GPU), LORASTORE_E_NOT_FOUND (no
 * tier for that GPU), LORASTORE_E_NO_DEVICE (no CUDA driver in this process,
 * or the daemon's GPU is not one this process can see),
 * LORASTORE_E_NOT_BUILT (liblorastore built without the CUDA path),
 * LORASTORE_E_DEVICE (a driver call failed; the message names it).
 */
int lorastore_acquire_tier(lorastore *conn, const char *ref, lorastore_tier tier,
			   const char *device, int timeout_ms, lorastore_adapter **out);

/*
 * Release an adapter; its tensor pointers become invalid.  Errors:
 * LORASTORE_E_CLOSED (the lease ended with the connection; the handle is
 * freed anyway).
 */
int lorastore_adapter_release(lorastore_adapter *adapter);

/* Facts about an acquired adapter.  Never fails on a held adapter. */
int lorastore_adapter_info_get(const lorastore_adapter *adapter, lorastore_adapter_info *out);

/*
 * The tensor of module and kind.  Errors: LORASTORE_E_NOT_FOUND, -EINVAL.
 */
int lorastore_adapter_tensor(const lorastore_adapter *adapter, const char *module,
			     lorastore_kind kind, lorastore_tensor *out);

/* The i-th tensor (0 <= i < tensor_count).  Errors: -EINVAL. */
int lorastore_adapter_tensor_at(const lorastore_adapter *adapter, size_t i,
				lorastore_tensor *out);

/*
 * Ask the daemon to load refs[0..n) in the background (no lease is taken).
 * Errors: LORASTORE_E_NOT_FOUND for the first unknown ref, -errno.
 */
int lorastore_prefetch(lorastore *conn, const char *const *refs, size_t n);

/* One adapter version in a listing. */
typedef struct lorastore_entry {
	const char *name;
	uint32_t version;
	char digest[65];               /* hex */
	uint64_t generation;
	uint32_t rank;
	double scale;
	const char *dtype;             /* "F16", ..., or "mixed" */
	uint64_t tensor_bytes;         /* the adapter's size: its tensors' bytes, summed */
	uint64_t resident_bytes;       /* what it takes in host memory when resident there
					  (lorastore_adapter_info.resident_bytes of a host
					  lease) */
	uint64_t blob_bytes;           /* what its blob file takes on disk */
	size_t tensor_count;
	int resident;
	const char *tier;              /* "host", "device" or "disk" */
	uint32_t pins;                 /* leases held, all clients together */
	int64_t created_unix_ns;
	const char *base_model;        /* "" when none */
	const char *source;
	int unchanged;                 /* import: the name's latest version had this content
					  already, so no version was added (this is it) */
	const char *const *aliases;    /* list, show: the aliases pointing at this version */
	size_t alias_count;
} lorastore_entry;

typedef struct lorastore_list lorastore_list;

/*
 * One page of the versions whose name begins with prefix (NULL or "" for
 * all), after cursor (NULL for the first page); limit 0 takes the daemon's
 * page size (100), and a limit over 1,000 is refused (-EINVAL).  A page also
 * ends once it holds 8 MiB of
 * records (configs with long target_modules lists fill it sooner), so it
 * may hold fewer than limit: follow lorastore_list_next until it is NULL.
 * Free with lorastore_list_free.
 */
int lorastore_list_page(lorastore *conn, const char *prefix, const char *cursor,
			unsigned limit, lorastore_list **out);
size_t lorastore_list_count(const lorastore_list *list);
const lorastore_entry *lorastore_list_entry(const lorastore_list *list, size_t i);
/* Cursor of the next page, or NULL after the last page. */
const char *lorastore_list_next(const lorastore_list *list);
/*
 * Tensors of entry i when the list came from lorastore_show (a listing
 * carries none): their descriptions, with data NULL.
 */
size_t lorastore_list_tensor_count(const lorastore_list *list, size_t i);
int lorastore_list_tensor(const lorastore_list *list, size_t i, size_t j, lorastore_tensor *out);

/*
 * The PEFT configuration of a version, as imported from its
 * adapter_config.json (the fields that matter to serving).  Strings and
 * arrays belong to the list: valid until lorastore_list_free.
 */
typedef struct lorastore_peft_config {
	uint32_t r;
	double lora_alpha;
	int use_rslora;
	int use_dora;
	int fan_in_fan_out;
	const char *bias;                    /* "none", "all" or "lora_only" */
	const char *base_model;              /* base_model_name_or_path; NULL when null or absent */
	const char *task_type;               /* "" when absent */
	const char *target_regex;            /* NULL, or target_modules when it was a regex */
	size_t n_target_modules;             /* the list of target_modules (0 with a regex) */
	const char *const *target_modules;
	size_t n_modules_to_save;
	const char *const *modules_to_save;
	size_t n_rank_pattern;               /* entries of rank_pattern and alpha_pattern: */
	size_t n_alpha_pattern;              /* lorastore_list_peft_pattern */
} lorastore_peft_config;

/*
 * The PEFT configuration of entry i.  Errors: -EINVAL (i out of range),
 * LORASTORE_E_NOT_FOUND (the daemon sent no configuration).
 */
int lorastore_list_peft_config(const lorastore_list *list, size_t i, lorastore_peft_config *out);

/*
 * Entry j of rank_pattern (alpha 0) or alpha_pattern (alpha 1) of entry i:
 * its key (a module name or pattern) and value.  Errors: -EINVAL,
 * LORASTORE_E_NOT_FOUND.
 */
int lorastore_list_peft_pattern(const lorastore_list *list, size_t i, int alpha, size_t j,
				const char **key, double *value);
void lorastore_list_free(lorastore_list *list);

/*
 * The record of one version with its tensor table, as a list of one entry.
 * Errors: LORASTORE_E_NOT_FOUND, LORASTORE_E_NAME_INVALID.
 */
int lorastore_show(lorastore *conn, const char *ref, lorastore_list **out);

typedef struct lorastore_tier_stats {
	char name[16];                 /* "host" or "device" */
	char device[48];               /* device tier: the GPU's UUID; "" on host */
	int ordinal;                   /* device tier: the daemon's CUDA ordinal; -1 on host */
	uint64_t table_bytes;          /* device tier: host memory of its tensor tables */
	uint64_t budget;               /* bytes */
	uint64_t used;                 /* bytes held by resident adapters */
	uint64_t slab_bytes;           /* bytes of slabs allocated */
	uint32_t adapters;             /* resident adapters */
} lorastore_tier_stats;

/* The daemon's traffic with its origin (an S3-compatible object store), since it started. */
typedef struct lorastore_origin_stats {
	char origin[256];              /* "s3://BUCKET/PREFIX at ENDPOINT"; "" when the
					  daemon has no origin (then all below are 0) */
	uint64_t requests;             /* requests to the object store */
	uint64_t errors;               /* of them, failed (refused, timed out, 5xx) */
	uint64_t bytes_in, bytes_out;  /* bytes downloaded and uploaded */
	uint64_t pulls;                /* versions pulled into this node's catalog */
	uint32_t pulls_in_flight;
	uint64_t refused;              /* downloads refused (digest, checksum, manifest) */
	uint64_t published;            /* versions this node created in the origin */
	uint64_t cache_bytes;          /* pulled blobs on this node's disk */
	uint64_t cache_budget;         /* lorastored --disk-budget (0: no bound) */
	uint64_t cache_evictions;      /* pulled versions the budget removed from this node
					  (the origin keeps them) */
} lorastore_origin_stats;

typedef struct lorastore_stats {
	size_t tier_count;
	lorastore_tier_stats tiers[9];     /* host, then one per GPU served */
	uint32_t clients;
	uint64_t leases;               /* held now, all connections, warm ones included */
	uint64_t warm_leases;          /* of leases: taken in shared memory (lease pages) */
	uint64_t warm_acquires;        /* acquires made in shared memory, as clients count them */
	uint64_t loads;
	uint64_t hits;
	uint64_t misses;
	uint64_t evictions;
	uint64_t load_errors;
	uint64_t catalog_versions;
	char event_loop[16];           /* the daemon's event-loop engine: "io_uring" or "epoll" */
	lorastore_origin_stats origin;
} lorastore_stats;

int lorastore_stats_get(lorastore *conn, lorastore_stats *out);

/* ---- Applying adapters (y += scale * (x A^T) B^T for a batch of many adapters) */

/*
 * One module of a layer that the plan applies: its lora_A/lora_B tensors in
 * every adapter, and where its output lies in y.  A fused projection (q, k
 * and v packed in one output) is several slices over one x.
 */
typedef struct lorastore_slice {
	const char *module;            /* e.g. "model.layers.3.self_attn.q_proj" */
	uint64_t out_offset;           /* first column of y this module adds into */
	uint64_t out;                  /* its columns: rows of lora_B */
} lorastore_slice;

/*
 * A set of held adapters prepared for one layer: the tensor pointers, ranks
 * and scales of every (adapter, slice), looked up and checked once, and
 * reused for every batch.  Build one per layer and set of adapters; it
 * borrows the adapters, which must stay held while it is used.  Several
 * threads may apply one plan at once, each with its own workspace and y.
 */
typedef struct lorastore_plan lorastore_plan;

/*
 * Prepare adapters[0..n_adapters) (indices 0..n-1 in batches) for the
 * slices[0..n_slices) (at most 8) of a layer whose input has `in` columns.
 * factors (NULL: all 1) multiplies each adapter's scale, per request.  An
 * adapter without a slice's module adds nothing there.  Every lora_A must
 * be [r, in] and every lora_B [out, r] with r at most 512, in one dtype
 * (F32, F16 or BF16) across all adapters; slices must not overlap.
 * Errors: -EINVAL (null pointer, no slice, too many), LORASTORE_E_SHAPE (a
 * tensor of another shape, overlapping slices), LORASTORE_E_DTYPE (weights
 * of different or unsupported dtypes), LORASTORE_E_TIER (an adapter held on
 * a device tier: its plan is lorastore_cuda_plan_create, lorastore_cuda.h),
 * -ENOMEM.
 */
int lorastore_plan_create(lorastore_adapter *const *adapters, size_t n_adapters,
			  const float *factors, uint64_t in, const lorastore_slice *slices,
			  size_t n_slices, lorastore_plan **out);

/* Free a plan (NULL is a no-op).  The adapters stay held. */
void lorastore_plan_free(lorastore_plan *plan);

/* Consecutive tokens [start, start + len) that use adapter `adapter` (-1: none). */
typedef struct lorastore_segment {
	int32_t start;
	int32_t len;
	int32_t adapter;
} lorastore_segment;

/*
 * The tokens of one call: rows 0..n_tokens-1 of x and y.  Decode gives one
 * adapter index per token (token_adapter, -1: none); prefill gives segments
 * (sorted by start, not overlapping).  Exactly one of the two is set,
 * unless n_tokens is 0.
 */
typedef struct lorastore_batch {
	size_t n_tokens;
	const int32_t *token_adapter;
	size_t n_segments;
	const lorastore_segment *segments;
} lorastore_batch;

/* Workspace bytes lorastore_apply needs for batches of up to n_tokens tokens. */
size_t lorastore_plan_workspace_size(const lorastore_plan *plan, size_t n_tokens);

/*
 * y[t, slice columns] += scale_a * (x[t, :] A_a^T) B_a^T for every token t
 * of adapter a, where scale_a is the module's scale (alpha / r after the
 * patterns) times the adapter's factor.  x is [n_tokens][ldx] and y
 * [n_tokens][ldy] elements of act_dtype (F32, F16 or BF16), in host memory;
 * accumulation is F32 and y is rounded once.  workspace is
 * lorastore_plan_workspace_size(plan, n_tokens) bytes aligned to 64, which
 * lets a call allocate nothing; n_threads > 1 splits the work.  Columns of y
 * outside the slices, and tokens of adapter -1, are left untouched.
 * Errors: -EINVAL (null pointer), LORASTORE_E_SHAPE (ldx < in, a slice past
 * ldy, an index or segment out of range, a small workspace),
 * LORASTORE_E_DTYPE (act_dtype).  On an error y is unchanged.
 */
int lorastore_apply(const lorastore_plan *plan, const lorastore_batch *batch,
		    lorastore_dtype act_dtype, const void *x, size_t ldx, void *y, size_t ldy,
		    void *workspace, size_t workspace_size, int n_threads);

/* ---- Administration (needs an admin peer: root, the daemon's user, or its admin group) */

typedef struct lorastore_import_opts {
	const char *name;              /* adapter name; NULL: the directory's own name, refused
					  (LORASTORE_E_NAME_INVALID) when it says nothing of
					  the adapter: adapter, lora, output(s), checkpoint-N,
					  final, model, a snapshot's commit, ... */
	const char *dtype;             /* "keep" (NULL), "f16", "bf16" or "f32" */
	int allow_nonfinite;
	int allow_new_base;            /* accept another base model (base_model_name_or_path),
					  or other modules or module sizes, than the name's
					  latest version has; refused otherwise
					  (LORASTORE_E_BASE_CHANGED) */
} lorastore_import_opts;

/*
 * Import the PEFT adapter in directory dir.  The files are opened here, with
 * this process's permissions, and passed to the daemon as descriptors.  dir
 * may also be a Hugging Face cache folder of a repository
 * (.../models--ORG--NAME: the snapshot of refs/main, or the newest) or
 * "hf:ORG/NAME[@REVISION]" in $HF_HUB_CACHE ($HF_HOME/hub,
 * ~/.cache/huggingface/hub); those are named ORG/NAME when opts->name is
 * NULL.  adapter_model.bin (a pickle) is refused, never read.  The same
 * content as the name's latest version adds no version (that version is
 * the result; lorastore_entry.unchanged says so).  The version goes to
 * *version when version is not NULL.  Errors: every import error of the
 * LORASTORE_E_* list (LORASTORE_E_BASE_CHANGED, LORASTORE_E_NAME_INVALID for
 * a folder name that says nothing, LORASTORE_E_CONFIG_MISSING for a pickle or
 * a folder of adapter folders), -EPERM (not an admin), -errno.
 */
int lorastore_import_dir(lorastore *conn, const char *dir, const lorastore_import_opts *opts,
			 uint32_t *version);

/*
 * Same as lorastore_import_dir, but the new version's record (digest, sizes,
 * tensor table) goes to *out as a list of one entry, as lorastore_show gives
 * it (not resident, tier "disk").  Free it with lorastore_list_free.
 */
int lorastore_import_dir_entry(lorastore *conn, const char *dir,
			       const lorastore_import_opts *opts, lorastore_list **out);

/* Delete name@N, or every version of name.  Deletion waits for leases to end. */
int lorastore_delete(lorastore *conn, const char *ref);

/* What a delete removed. */
typedef struct lorastore_delete_result {
	uint32_t versions;             /* versions deleted */
	uint64_t blob_bytes;           /* bytes of their blob files (a blob two shared, once) */
	uint64_t freed_bytes;          /* bytes of blob files removed from disk: those no
					  version uses any more */
	char origin[256];              /* the daemon's origin, "" when it has none */
	uint32_t origin_versions;      /* version records removed from the origin (every
					  node stops pulling them; nodes that have them
					  keep serving them until they delete them too) */
	char origin_error[512];        /* "" or why the origin kept them: the local delete
					  stands, and deleting again finishes it */
} lorastore_delete_result;

/* ---- The origin: an S3-compatible object store that feeds every node (lorastored --origin) */

/* What a push did. */
typedef struct lorastore_push_result {
	uint32_t pushed;               /* versions uploaded */
	uint32_t present;              /* versions the origin had (same number and digest) */
	char origin[256];              /* "s3://BUCKET/PREFIX at ENDPOINT" */
} lorastore_push_result;

/*
 * Upload ref's versions ("name": every version this node has; "name@N":
 * one) into the daemon's origin under their own numbers: versions imported
 * before the daemon had an origin, or while it was away (imports with an
 * origin are in it before they are acknowledged).  Needs an admin peer.
 * Errors: LORASTORE_E_NOT_FOUND, -EEXIST (the origin has that number with
 * other content: another node took it; import the files again for a new
 * number), LORASTORE_E_ORIGIN (no origin, or it failed), -EPERM.
 */
int lorastore_push(lorastore *conn, const char *ref, lorastore_push_result *out);

/* A version the origin has. */
typedef struct lorastore_origin_entry {
	const char *name;              /* valid during the call */
	uint32_t version;
	int here;                      /* 1 when this node's catalog has it */
	const char *origin;            /* the origin, "s3://BUCKET/PREFIX at ENDPOINT" */
} lorastore_origin_entry;

/*
 * One page of the versions the daemon's origin has whose name begins with
 * prefix ("" for all), in name and version order, after cursor (NULL or ""
 * for the first page; else the next of the previous page), at most limit
 * (0: 1,000; at most 10,000).  fn is called for each; next (next_len bytes,
 * 256 is enough) gets the cursor of the next page, "" after the last.  Only
 * keys are read: nothing is downloaded.  Errors: LORASTORE_E_ORIGIN.
 */
int lorastore_origin_list(lorastore *conn, const char *prefix, const char *cursor,
			  unsigned limit, void (*fn)(void *ud, const lorastore_origin_entry *e),
			  void *ud, char *next, size_t next_len);

/*
 * lorastore_delete, and what it removed into *out (may be NULL).  The blob
 * files no version uses any more are removed at once; the memory of a
 * version still leased is freed when its last lease ends.  Errors:
 * LORASTORE_E_NOT_FOUND, LORASTORE_E_ALIASED (an alias points at a version
 * it would delete: nothing is deleted), LORASTORE_E_NAME_INVALID (an alias
 * given: untag it instead), -EPERM (not an admin), LORASTORE_E_BUSY.
 */
int lorastore_delete_report(lorastore *conn, const char *ref, lorastore_delete_result *out);

/*
 * Point alias ("name:tag", the tag 1-64 characters of [A-Za-z0-9._-]) at ref
 * ("name" for its latest version now, or "name@N"): created, or moved
 * atomically from the version it named.  An alias is taken wherever a
 * reference is (acquire, load, show, prefetch), and a version an alias
 * points at cannot be deleted.  The version goes to *out as a list of one
 * entry when out is not NULL.  Needs an admin.  Errors:
 * LORASTORE_E_NAME_INVALID, LORASTORE_E_NOT_FOUND, -EPERM.
 */
int lorastore_tag(lorastore *conn, const char *alias, const char *ref, lorastore_list **out);

/* Remove alias.  Needs an admin.  Errors: LORASTORE_E_NOT_FOUND, -EPERM. */
int lorastore_untag(lorastore *conn, const char *alias);

/*
 * Write version ref as a PEFT directory: dir/adapter_config.json and
 * dir/adapter_model.safetensors, the tensors under their names in the file
 * imported, in the dtype stored (a version converted at import comes out
 * converted), with the file's metadata.  PEFT loads the directory, and
 * importing it again gives the same digest.  dir is made when missing and
 * must not hold either file; the files appear complete or not at all.  The
 * data is read from a host-tier lease (the version is loaded if needed).
 * The "name@version" exported goes to exported (len bytes; may be NULL).
 * Errors: LORASTORE_E_NOT_FOUND, -EEXIST, -errno of the files, those of
 * lorastore_acquire.
 */
int lorastore_export(lorastore *conn, const char *ref, const char *dir, char *exported,
		     size_t len);

/* Make ref resident without taking a lease. */
int lorastore_load(lorastore *conn, const char *ref);

/*
 * The same in a tier (device: NULL names the GPU as lorastore_acquire_tier
 * does).  Errors: those of lorastore_load, LORASTORE_E_BACKEND,
 * LORASTORE_E_NOT_FOUND (no tier for that GPU).
 */
int lorastore_load_tier(lorastore *conn, const char *ref, lorastore_tier tier,
			const char *device);

/*
 * lorastore_load_tier, and the version ref named ("name@N"; an alias or a
 * plain name resolved) into loaded, len bytes (may be NULL).
 */
int lorastore_load_resolved(lorastore *conn, const char *ref, lorastore_tier tier,
			    const char *device, char *loaded, size_t len);

/* Evict ref from memory, every tier (refused while leases exist: -EBUSY). */
int lorastore_evict(lorastore *conn, const char *ref);

/*
 * Evict ref from one tier only (a device copy, keeping the host one as the
 * staging cache).  Errors: those of lorastore_evict (-EBUSY also while a
 * device load stages from the host copy), LORASTORE_E_BACKEND.
 */
int lorastore_evict_tier(lorastore *conn, const char *ref, lorastore_tier tier,
			 const char *device);

/*
 * Verify blobs (ref NULL: all).  *bad counts the broken versions; details
 * for each broken one go to fn when fn is not NULL.
 */
int lorastore_verify(lorastore *conn, const char *ref, size_t *bad,
		     void (*fn)(void *ud, const char *name, uint32_t version, int code,
				const char *message),
		     void *ud);

/* Remove unreferenced blobs and what interrupted imports left. */
int lorastore_gc(lorastore *conn, uint64_t *blobs_removed, uint64_t *bytes_removed);

/*
 * Build the catalog again from the store's ref files and blobs (after the
 * catalog was lost or damaged), and put it in place of the old one.  Every
 * version whose ref file and blob are intact comes back with its name,
 * version, digest and generation; versions_restored and skipped (ref files
 * whose blob is missing or broken) may be NULL.  While it runs the daemon
 * refuses imports and deletes (LORASTORE_E_BUSY).  Needs an admin peer.
 * Errors: -EPERM, LORASTORE_E_BUSY (imports or deletes running, or another
 * rebuild), LORASTORE_E_CATALOG, -errno.
 */
int lorastore_rebuild(lorastore *conn, uint64_t *versions_restored, uint64_t *skipped);

/* ---- Errors */

/* Static description of any error code this library returns. */
const char *lorastore_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif
