/*
 * Synthetic PEFT adapters: a safetensors writer and adapter directories laid
 * out as PEFT saves them.
 *
 * Nothing here calls the store.  Only the dtype enum is shared; the dtype
 * names, sizes and float conversions are written again below so that a bug in
 * store/dtype.c cannot hide itself by being on both sides of a test.
 */
#define _GNU_SOURCE

#include "synth.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- dtypes ------------------------------------------------------------ */

static const struct {
	const char *name;
	size_t size; /* bytes per element */
} synth_dtypes[LS_DTYPE_COUNT] = {
	[LS_DTYPE_F32] = {"F32", 4},         [LS_DTYPE_F16] = {"F16", 2},
	[LS_DTYPE_BF16] = {"BF16", 2},       [LS_DTYPE_F64] = {"F64", 8},
	[LS_DTYPE_BOOL] = {"BOOL", 1},       [LS_DTYPE_U8] = {"U8", 1},
	[LS_DTYPE_I8] = {"I8", 1},           [LS_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
	[LS_DTYPE_F8_E4M3] = {"F8_E4M3", 1}, [LS_DTYPE_I16] = {"I16", 2},
	[LS_DTYPE_U16] = {"U16", 2},         [LS_DTYPE_I32] = {"I32", 4},
	[LS_DTYPE_U32] = {"U32", 4},         [LS_DTYPE_I64] = {"I64", 8},
	[LS_DTYPE_U64] = {"U64", 8},
};

static bool synth_dtype_ok(enum ls_dtype d)
{
	return d > LS_DTYPE_INVALID && d < LS_DTYPE_COUNT;
}

/*
 * Round a finite or infinite value to a binary float format with ebits
 * exponent bits and mbits stored mantissa bits, ties to even, and return its
 * bit pattern.  has_inf selects IEEE-style formats (top exponent is inf/NaN);
 * without it (F8_E4M3, the "fn" variant) only all-ones is NaN and the top
 * exponent holds finite values.  The arithmetic is exact in double for every
 * input that is itself a float or double value.
 */
static uint32_t synth_round_small(double x, int ebits, int mbits, bool has_inf)
{
	const uint32_t sign = signbit(x) ? 1u << (ebits + mbits) : 0;
	const uint32_t exp_all = (1u << ebits) - 1;
	const uint32_t nan = has_inf ? (exp_all << mbits) | (1u << (mbits - 1))
				     : (exp_all << mbits) | ((1u << mbits) - 1);
	const uint32_t inf = exp_all << mbits;
	const int bias = (1 << (ebits - 1)) - 1;
	const int emin = 1 - bias;
	const int emax = has_inf ? bias : bias + 1;
	/* Largest finite: all-ones mantissa, or one below it without inf. */
	const double maxfin = has_inf ? ldexp(2.0 - ldexp(1.0, -mbits), emax)
				      : ldexp(2.0 - ldexp(2.0, -mbits), emax);

	if (isnan(x))
		return nan;
	double a = fabs(x);
	if (isinf(a))
		return sign | (has_inf ? inf : nan);
	if (a == 0.0)
		return sign;

	int e;
	(void)frexp(a, &e);
	int E = e - 1;
	if (E < emin)
		E = emin;
	double quantum = ldexp(1.0, E - mbits);
	double t = a / quantum;
	double fl = floor(t);
	double rest = t - fl;
	if (rest > 0.5 || (rest == 0.5 && fmod(fl, 2.0) != 0.0))
		fl += 1.0;
	double v = fl * quantum;
	if (v > maxfin)
		return sign | (has_inf ? inf : nan);
	if (v < ldexp(1.0, emin))
		return sign | (uint32_t)(v / ldexp(1.0, emin - mbits));
	(void)frexp(v, &e);
	E = e - 1;
	uint32_t mant = (uint32_t)((v / ldexp(1.0, E) - 1.0) * (double)(1u << mbits));
	return sign | ((uint32_t)(E + bias) << mbits) | mant;
}

/* ---- values ------------------------------------------------------------ */

static uint64_t synth_splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* The generator state for tensor i: each tensor has its own stream. */
static uint64_t synth_stream(uint64_t seed, size_t i)
{
	return seed ^ (0xD1B54A32D192ED03ULL * ((uint64_t)i + 1));
}

static void synth_put_le(unsigned char *p, uint64_t v, size_t size)
{
	for (size_t k = 0; k < size; k++)
		p[k] = (unsigned char)(v >> (8 * k));
}

/*
 * Fill count elements of dtype d from the stream *state.  Float types get
 * u/2^24 - 0.5 for a 24-bit u, a value every float type can hold before
 * rounding; integer types get small integers and BOOL gets 0 or 1.
 */
static void synth_fill(enum ls_dtype d, uint64_t *state, unsigned char *dst, size_t count)
{
	const size_t size = synth_dtypes[d].size;

	for (size_t k = 0; k < count; k++, dst += size) {
		uint64_t u = synth_splitmix64(state);
		double x = (double)(u >> 40) * 0x1p-24 - 0.5;
		uint64_t bits;

		switch (d) {
		case LS_DTYPE_F32: {
			float f = (float)x;
			uint32_t b32;
			memcpy(&b32, &f, 4);
			bits = b32;
			break;
		}
		case LS_DTYPE_F64:
			memcpy(&bits, &x, 8);
			break;
		case LS_DTYPE_F16:
			bits = synth_round_small(x, 5, 10, true);
			break;
		case LS_DTYPE_BF16:
			bits = synth_round_small(x, 8, 7, true);
			break;
		case LS_DTYPE_F8_E5M2:
			bits = synth_round_small(x, 5, 2, true);
			break;
		case LS_DTYPE_F8_E4M3:
			bits = synth_round_small(x, 4, 3, false);
			break;
		case LS_DTYPE_BOOL:
			bits = u >> 63;
			break;
		case LS_DTYPE_U8:
		case LS_DTYPE_U16:
		case LS_DTYPE_U32:
		case LS_DTYPE_U64:
			bits = u >> 60; /* 0..15 */
			break;
		default: /* the signed integers: -16..15, two's complement */
			bits = (uint64_t)((int64_t)(u >> 59) - 16);
			break;
		}
		synth_put_le(dst, bits, size);
	}
}

/* Bytes of tensor t, or -EINVAL / -EOVERFLOW. */
static int synth_nbytes(const struct synth_tensor *t, uint64_t *out)
{
	if (!synth_dtype_ok(t->dtype) || t->ndim > SYNTH_MAX_DIMS)
		return -EINVAL;
	uint64_t n = synth_dtypes[t->dtype].size;
	for (unsigned k = 0; k < t->ndim; k++)
		if (__builtin_mul_overflow(n, t->shape[k], &n))
			return -EOVERFLOW;
	*out = n;
	return 0;
}

void *synth_tensor_bytes(const struct synth_tensor *t, size_t n, size_t i, uint64_t seed,
			 size_t *len)
{
	uint64_t nbytes;

	*len = 0;
	if (i >= n || synth_nbytes(&t[i], &nbytes) != 0 || nbytes > SIZE_MAX - 1)
		return NULL;
	unsigned char *buf = malloc(nbytes ? (size_t)nbytes : 1);
	if (!buf)
		return NULL;
	uint64_t state = synth_stream(seed, i);
	synth_fill(t[i].dtype, &state, buf, (size_t)(nbytes / synth_dtypes[t[i].dtype].size));
	*len = (size_t)nbytes;
	return buf;
}

/* ---- files ------------------------------------------------------------- */

char *synth_mkdtemp(const char *tag)
{
	const char *base = getenv("TMPDIR");
	char *path;

	if (!base || !*base)
		base = "/tmp";
	if (asprintf(&path, "%s/lorastore-%s-XXXXXX", base, tag ? tag : "test") < 0) {
		fprintf(stderr, "synth_mkdtemp: out of memory\n");
		abort();
	}
	if (!mkdtemp(path)) {
		fprintf(stderr, "synth_mkdtemp: mkdtemp %s: %s\n", path, strerror(errno));
		abort();
	}
	return path;
}

static int synth_rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	/* Keep going past errors: a cleanup should remove what it can. */
	(void)remove(path);
	return 0;
}

void synth_rm_rf(const char *path)
{
	if (path)
		(void)nftw(path, synth_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int synth_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Close fd and report the first error of the write and the close. */
static int synth_close(int fd, int rc)
{
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	return rc;
}

int synth_write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	return synth_close(fd, synth_write_all(fd, text, strlen(text)));
}

/* ---- safetensors writer ------------------------------------------------ */

/* An integer exactly as written, not through cJSON's double formatting. */
static cJSON *synth_json_u64(uint64_t v)
{
	char buf[24];
	snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
	return cJSON_CreateRaw(buf);
}

static int synth_add_u64(cJSON *array, uint64_t v)
{
	cJSON *item = synth_json_u64(v);
	if (!item || !cJSON_AddItemToArray(array, item)) {
		cJSON_Delete(item);
		return -ENOMEM;
	}
	return 0;
}

/*
 * The header JSON, padded with spaces to a multiple of 8 bytes as the
 * reference writer does, so the data section starts 8-byte aligned.
 */
static int synth_header(const struct synth_tensor *t, size_t n, const uint64_t *sizes,
			const char *metadata_json, char **out, size_t *out_len)
{
	int rc = -ENOMEM;
	cJSON *root = cJSON_CreateObject();
	if (!root)
		return -ENOMEM;

	if (metadata_json) {
		cJSON *meta = cJSON_Parse(metadata_json);
		if (!meta || !cJSON_IsObject(meta)) {
			cJSON_Delete(meta);
			rc = -EINVAL;
			goto out;
		}
		if (!cJSON_AddItemToObject(root, "__metadata__", meta)) {
			cJSON_Delete(meta);
			goto out;
		}
	}

	uint64_t offset = 0;
	for (size_t i = 0; i < n; i++) {
		cJSON *entry = cJSON_AddObjectToObject(root, t[i].name);
		if (!entry || !cJSON_AddStringToObject(entry, "dtype", synth_dtypes[t[i].dtype].name))
			goto out;
		cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
		if (!shape)
			goto out;
		for (unsigned k = 0; k < t[i].ndim; k++)
			if (synth_add_u64(shape, t[i].shape[k]) != 0)
				goto out;
		cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
		if (!offsets || synth_add_u64(offsets, offset) != 0 ||
		    synth_add_u64(offsets, offset + sizes[i]) != 0)
			goto out;
		offset += sizes[i];
	}

	char *json = cJSON_PrintUnformatted(root);
	if (!json)
		goto out;
	size_t len = strlen(json);
	size_t padded = (len + 7) / 8 * 8;
	char *buf = malloc(padded);
	if (!buf) {
		cJSON_free(json);
		goto out;
	}
	memcpy(buf, json, len);
	memset(buf + len, ' ', padded - len);
	cJSON_free(json);
	*out = buf;
	*out_len = padded;
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

/* Generate and write tensor i in chunks, so large tensors need little memory. */
static int synth_write_tensor(int fd, const struct synth_tensor *t, size_t i, uint64_t seed,
			      uint64_t nbytes, unsigned char *chunk, size_t chunk_len)
{
	const size_t size = synth_dtypes[t->dtype].size;
	const size_t per_chunk = chunk_len / size;
	uint64_t left = nbytes / size;
	uint64_t state = synth_stream(seed, i);

	while (left > 0) {
		size_t count = left < per_chunk ? (size_t)left : per_chunk;
		synth_fill(t->dtype, &state, chunk, count);
		int rc = synth_write_all(fd, chunk, count * size);
		if (rc != 0)
			return rc;
		left -= count;
	}
	return 0;
}

int synth_write_safetensors(const char *path, const struct synth_tensor *t, size_t n,
			    uint64_t seed, const char *metadata_json)
{
	enum { CHUNK = 1 << 20 };
	uint64_t *sizes = calloc(n ? n : 1, sizeof *sizes);
	unsigned char *chunk = malloc(CHUNK);
	char *header = NULL;
	size_t header_len = 0;
	int rc = -ENOMEM;

	if (!sizes || !chunk)
		goto out;
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		rc = synth_nbytes(&t[i], &sizes[i]);
		if (rc != 0)
			goto out;
		if (__builtin_add_overflow(total, sizes[i], &total)) {
			rc = -EOVERFLOW;
			goto out;
		}
	}
	rc = synth_header(t, n, sizes, metadata_json, &header, &header_len);
	if (rc != 0)
		goto out;

	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	unsigned char len_le[8];
	synth_put_le(len_le, header_len, 8);
	rc = synth_write_all(fd, len_le, sizeof len_le);
	if (rc == 0)
		rc = synth_write_all(fd, header, header_len);
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = synth_write_tensor(fd, &t[i], i, seed, sizes[i], chunk, CHUNK);
	rc = synth_close(fd, rc);
out:
	free(header);
	free(chunk);
	free(sizes);
	return rc;
}

/* ---- PEFT adapters ----------------------------------------------------- */

struct synth_family_info {
	const char *base_model;
	const char *task_type;       /* without a head */
	const char *targets[4];      /* target_modules as a list; NULL-terminated */
	const char *target_regex;    /* target_modules as one regex string */
	size_t modules_per_layer;
	const char *head_module;     /* modules_to_save entry */
	size_t head_tensors;
	bool always_head;
	bool fan_in_fan_out;
};

static const struct synth_family_info synth_families[] = {
	[SYNTH_LLAMA] = {
		.base_model = "meta-llama/Llama-3.2-1B",
		.task_type = "CAUSAL_LM",
		.targets = {"q_proj", "k_proj", "v_proj", "o_proj"},
		.target_regex = ".*\\.self_attn\\.(q_proj|k_proj|v_proj|o_proj)",
		.modules_per_layer = 4,
		.head_module = "score",
		.head_tensors = 1,
	},
	[SYNTH_GPT2] = {
		.base_model = "openai-community/gpt2",
		.task_type = "CAUSAL_LM",
		.targets = {"c_attn", "c_proj"},
		.target_regex = ".*\\.attn\\.(c_attn|c_proj)",
		.modules_per_layer = 2,
		.head_module = "score",
		.head_tensors = 1,
		.fan_in_fan_out = true,
	},
	[SYNTH_T5] = {
		.base_model = "google-t5/t5-small",
		.task_type = "SEQ_2_SEQ_LM",
		.targets = {"q", "v"},
		.target_regex = ".*\\.(SelfAttention|EncDecAttention)\\.(q|v)",
		.modules_per_layer = 6,
		.head_module = "classification_head",
		.head_tensors = 4,
	},
	[SYNTH_NEOX] = {
		.base_model = "EleutherAI/pythia-70m",
		.task_type = "CAUSAL_LM",
		.targets = {"query_key_value"},
		.target_regex = ".*\\.attention\\.query_key_value",
		.modules_per_layer = 1,
		.head_module = "score",
		.head_tensors = 1,
	},
	[SYNTH_BERT] = {
		.base_model = "google-bert/bert-base-uncased",
		.task_type = "SEQ_CLS",
		.targets = {"query", "value"},
		.target_regex = ".*\\.attention\\.self\\.(query|value)",
		.modules_per_layer = 2,
		.head_module = "classifier",
		.head_tensors = 2,
		.always_head = true,
	},
};

/* Options with the defaults filled in. */
struct synth_resolved {
	const struct synth_family_info *fam;
	enum synth_family family;
	int layers, rank, hidden, heads, kv_heads, prefix_repeat;
	double alpha;
	enum ls_dtype dtype;
	bool head;
};

static int synth_resolve(const struct synth_opts *o, struct synth_resolved *r)
{
	if ((unsigned)o->family >= sizeof synth_families / sizeof synth_families[0])
		return -EINVAL;
	r->family = o->family;
	r->fam = &synth_families[o->family];
	r->layers = o->layers > 0 ? o->layers : 2;
	r->rank = o->rank > 0 ? o->rank : 8;
	r->alpha = o->alpha != 0 ? o->alpha : 2.0 * r->rank;
	r->dtype = o->dtype != LS_DTYPE_INVALID ? o->dtype : LS_DTYPE_F16;
	r->hidden = o->hidden > 0 ? o->hidden : 64;
	r->heads = o->heads > 0 ? o->heads : 4;
	r->kv_heads = o->kv_heads > 0 ? o->kv_heads : 2;
	r->prefix_repeat = o->prefix_repeat > 0 ? o->prefix_repeat : 1;
	r->head = o->head || r->fam->always_head;
	if (!synth_dtype_ok(r->dtype))
		return -EINVAL;
	if (r->family == SYNTH_LLAMA && (r->hidden % r->heads != 0 || r->kv_heads > r->heads))
		return -EINVAL;
	return 0;
}

size_t synth_lora_modules(const struct synth_opts *o)
{
	struct synth_resolved r;
	if (synth_resolve(o, &r) != 0)
		return 0;
	return r.fam->modules_per_layer * (size_t)r.layers;
}

size_t synth_tensor_count(const struct synth_opts *o)
{
	struct synth_resolved r;
	if (synth_resolve(o, &r) != 0)
		return 0;
	size_t per_module = o->dora ? 3 : 2;
	return synth_lora_modules(o) * per_module + (r.head ? r.fam->head_tensors : 0);
}

struct synth_module {
	char path[128];
	uint64_t in, out;
};

/* The LoRA-wrapped modules of one layer; returns how many were written. */
static size_t synth_layer_modules(const struct synth_resolved *r, int i,
				  struct synth_module *m)
{
	const uint64_t h = (uint64_t)r->hidden;
	size_t k = 0;

#define SYNTH_MOD(IN, OUT, ...)                                                   \
	do {                                                                      \
		snprintf(m[k].path, sizeof m[k].path, __VA_ARGS__);               \
		m[k].in = (IN);                                                   \
		m[k].out = (OUT);                                                 \
		k++;                                                              \
	} while (0)

	switch (r->family) {
	case SYNTH_LLAMA: {
		uint64_t kv = (uint64_t)r->kv_heads * (h / (uint64_t)r->heads);
		SYNTH_MOD(h, h, "model.layers.%d.self_attn.q_proj", i);
		SYNTH_MOD(h, kv, "model.layers.%d.self_attn.k_proj", i);
		SYNTH_MOD(h, kv, "model.layers.%d.self_attn.v_proj", i);
		SYNTH_MOD(h, h, "model.layers.%d.self_attn.o_proj", i);
		break;
	}
	case SYNTH_GPT2:
		SYNTH_MOD(h, 3 * h, "transformer.h.%d.attn.c_attn", i);
		SYNTH_MOD(h, h, "transformer.h.%d.attn.c_proj", i);
		break;
	case SYNTH_T5:
		SYNTH_MOD(h, h, "encoder.block.%d.layer.0.SelfAttention.q", i);
		SYNTH_MOD(h, h, "encoder.block.%d.layer.0.SelfAttention.v", i);
		SYNTH_MOD(h, h, "decoder.block.%d.layer.0.SelfAttention.q", i);
		SYNTH_MOD(h, h, "decoder.block.%d.layer.0.SelfAttention.v", i);
		SYNTH_MOD(h, h, "decoder.block.%d.layer.1.EncDecAttention.q", i);
		SYNTH_MOD(h, h, "decoder.block.%d.layer.1.EncDecAttention.v", i);
		break;
	case SYNTH_NEOX:
		SYNTH_MOD(h, 3 * h, "gpt_neox.layers.%d.attention.query_key_value", i);
		break;
	case SYNTH_BERT:
		SYNTH_MOD(h, h, "bert.encoder.layer.%d.attention.self.query", i);
		SYNTH_MOD(h, h, "bert.encoder.layer.%d.attention.self.value", i);
		break;
	}
#undef SYNTH_MOD
	return k;
}

/* True when a rank_pattern key names this module path. */
static bool synth_key_matches(const char *path, const char *key)
{
	size_t lp = strlen(path), lk = strlen(key);
	if (lk == 0 || lk > lp)
		return false;
	if (lk == lp)
		return strcmp(path, key) == 0;
	return path[lp - lk - 1] == '.' && strcmp(path + lp - lk, key) == 0;
}

/*
 * The rank of a module: the first matching rank_pattern entry whose value is
 * a whole number >= 1, else the default.  Other values are still written into
 * the config verbatim, so tests of config validation can use them, but they
 * cannot size a tensor.
 */
static int synth_module_rank(const cJSON *pattern, const char *path, int rank)
{
	const cJSON *e;
	cJSON_ArrayForEach(e, pattern)
	{
		if (!e->string || !synth_key_matches(path, e->string))
			continue;
		double v = e->valuedouble;
		if (cJSON_IsNumber(e) && v >= 1 && v <= 1 << 20 && v == floor(v))
			return (int)v;
		return rank;
	}
	return rank;
}

struct synth_list {
	struct synth_tensor *t;
	size_t n, cap;
};

static int synth_push(struct synth_list *l, const char *prefix, const char *path,
		      const char *suffix, enum ls_dtype dtype, unsigned ndim, uint64_t d0,
		      uint64_t d1)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		struct synth_tensor *t = realloc(l->t, cap * sizeof *t);
		if (!t)
			return -ENOMEM;
		l->t = t;
		l->cap = cap;
	}
	struct synth_tensor *t = &l->t[l->n];
	memset(t, 0, sizeof *t);
	int len = snprintf(t->name, sizeof t->name, "%s%s%s", prefix, path, suffix);
	if (len < 0 || (size_t)len >= sizeof t->name)
		return -ENAMETOOLONG;
	t->dtype = dtype;
	t->ndim = ndim;
	t->shape[0] = d0;
	t->shape[1] = d1;
	l->n++;
	return 0;
}

static int synth_cmp_name(const void *a, const void *b)
{
	const struct synth_tensor *x = a, *y = b;
	return strcmp(x->name, y->name);
}

/* Parse an optional JSON object; NULL text gives an empty object. */
static int synth_parse_object(const char *text, cJSON **out)
{
	*out = text ? cJSON_Parse(text) : cJSON_CreateObject();
	if (*out && cJSON_IsObject(*out))
		return 0;
	cJSON_Delete(*out);
	*out = NULL;
	return text ? -EINVAL : -ENOMEM;
}

static int synth_add_strings(cJSON *obj, const char *key, const char *const *s, size_t n)
{
	cJSON *array = cJSON_AddArrayToObject(obj, key);
	if (!array)
		return -ENOMEM;
	for (size_t i = 0; i < n && s[i]; i++) {
		cJSON *item = cJSON_CreateString(s[i]);
		if (!item || !cJSON_AddItemToArray(array, item)) {
			cJSON_Delete(item);
			return -ENOMEM;
		}
	}
	return 0;
}

/*
 * adapter_config.json as PEFT writes it (a subset of its fields; the ones an
 * importer looks at plus a few it must ignore).  Takes ownership of the two
 * pattern objects.
 */
static int synth_config(const struct synth_resolved *r, const struct synth_opts *o,
			cJSON *rank_pattern, cJSON *alpha_pattern, char **out)
{
	const struct synth_family_info *fam = r->fam;
	cJSON *root = cJSON_CreateObject();
	bool ok = root != NULL;
	int rc = -ENOMEM;

	ok = ok && cJSON_AddStringToObject(root, "peft_type", "LORA");
	if (!o->old_config) {
		const char *task = r->head && r->family != SYNTH_BERT ? "SEQ_CLS" : fam->task_type;
		ok = ok && cJSON_AddStringToObject(root, "task_type", task);
		ok = ok && cJSON_AddStringToObject(root, "base_model_name_or_path", fam->base_model);
		ok = ok && cJSON_AddNullToObject(root, "revision");
		ok = ok && cJSON_AddBoolToObject(root, "inference_mode", true);
	}
	ok = ok && cJSON_AddNumberToObject(root, "r", r->rank);
	ok = ok && cJSON_AddNumberToObject(root, "lora_alpha", r->alpha);
	if (ok && o->regex_targets)
		ok = cJSON_AddStringToObject(root, "target_modules", fam->target_regex);
	else if (ok)
		ok = synth_add_strings(root, "target_modules", fam->targets, 4) == 0;
	if (!o->old_config) {
		ok = ok && cJSON_AddNumberToObject(root, "lora_dropout", 0.05);
		ok = ok && cJSON_AddBoolToObject(root, "fan_in_fan_out", fam->fan_in_fan_out);
		ok = ok && cJSON_AddStringToObject(root, "bias", "none");
		ok = ok && cJSON_AddBoolToObject(root, "use_rslora", o->rslora);
		if (ok && r->head)
			ok = synth_add_strings(root, "modules_to_save", &fam->head_module, 1) == 0;
		else if (ok)
			ok = cJSON_AddNullToObject(root, "modules_to_save");
		ok = ok && cJSON_AddBoolToObject(root, "init_lora_weights", true);
		ok = ok && cJSON_AddNullToObject(root, "layers_to_transform");
		ok = ok && cJSON_AddNullToObject(root, "layers_pattern");
		if (ok && cJSON_AddItemToObject(root, "rank_pattern", rank_pattern))
			rank_pattern = NULL;
		else
			ok = false;
		if (ok && cJSON_AddItemToObject(root, "alpha_pattern", alpha_pattern))
			alpha_pattern = NULL;
		else
			ok = false;
		ok = ok && cJSON_AddBoolToObject(root, "use_dora", o->dora);
	}
	if (ok) {
		*out = cJSON_Print(root);
		if (*out)
			rc = 0;
	}
	cJSON_Delete(rank_pattern);
	cJSON_Delete(alpha_pattern);
	cJSON_Delete(root);
	return rc;
}

/* The head tensors (modules_to_save), named as PEFT saves them. */
static int synth_head_tensors(const struct synth_resolved *r, struct synth_list *l,
			      const char *prefix)
{
	const uint64_t h = (uint64_t)r->hidden;
	const enum ls_dtype d = r->dtype;
	int rc = 0;

	switch (r->family) {
	case SYNTH_LLAMA:
	case SYNTH_GPT2:
	case SYNTH_NEOX:
		rc = synth_push(l, prefix, "score", ".weight", d, 2, 2, h);
		break;
	case SYNTH_T5:
		rc = synth_push(l, prefix, "classification_head.dense", ".weight", d, 2, h, h);
		if (rc == 0)
			rc = synth_push(l, prefix, "classification_head.dense", ".bias", d, 1, h, 0);
		if (rc == 0)
			rc = synth_push(l, prefix, "classification_head.out_proj", ".weight", d, 2,
					2, h);
		if (rc == 0)
			rc = synth_push(l, prefix, "classification_head.out_proj", ".bias", d, 1,
					2, 0);
		break;
	case SYNTH_BERT:
		rc = synth_push(l, prefix, "classifier", ".weight", d, 2, 2, h);
		if (rc == 0)
			rc = synth_push(l, prefix, "classifier", ".bias", d, 1, 2, 0);
		break;
	}
	return rc;
}

int synth_adapter_dir(const char *dir, const struct synth_opts *o)
{
	struct synth_resolved r;
	struct synth_list list = {0};
	cJSON *rank_pattern = NULL, *alpha_pattern = NULL;
	char *config = NULL, *path = NULL;
	char prefix[256] = "";
	int rc = synth_resolve(o, &r);

	if (rc != 0)
		return rc;
	rc = synth_parse_object(o->rank_pattern, &rank_pattern);
	if (rc == 0)
		rc = synth_parse_object(o->alpha_pattern, &alpha_pattern);
	if (rc != 0)
		goto out;

	for (int k = 0; k < r.prefix_repeat; k++) {
		if (strlen(prefix) + strlen("base_model.model.") >= sizeof prefix) {
			rc = -ENAMETOOLONG;
			goto out;
		}
		strcat(prefix, "base_model.model.");
	}

	for (int i = 0; i < r.layers && rc == 0; i++) {
		struct synth_module m[8];
		size_t nm = synth_layer_modules(&r, i, m);
		for (size_t k = 0; k < nm && rc == 0; k++) {
			uint64_t rank = (uint64_t)synth_module_rank(rank_pattern, m[k].path, r.rank);
			rc = synth_push(&list, prefix, m[k].path, ".lora_A.weight", r.dtype, 2, rank,
					m[k].in);
			if (rc == 0)
				rc = synth_push(&list, prefix, m[k].path, ".lora_B.weight", r.dtype, 2,
						m[k].out, rank);
			if (rc == 0 && o->dora)
				rc = synth_push(&list, prefix, m[k].path, ".lora_magnitude_vector",
						r.dtype, 1, m[k].out, 0);
		}
	}
	if (rc == 0 && r.head)
		rc = synth_head_tensors(&r, &list, prefix);
	if (rc != 0)
		goto out;
	/* The reference writer orders tensors of one dtype by name. */
	qsort(list.t, list.n, sizeof *list.t, synth_cmp_name);

	rc = synth_config(&r, o, rank_pattern, alpha_pattern, &config);
	rank_pattern = alpha_pattern = NULL;
	if (rc != 0)
		goto out;
	if (asprintf(&path, "%s/adapter_config.json", dir) < 0) {
		path = NULL;
		rc = -ENOMEM;
		goto out;
	}
	rc = synth_write_text(path, config);
	if (rc != 0)
		goto out;
	free(path);
	if (asprintf(&path, "%s/adapter_model.safetensors", dir) < 0) {
		path = NULL;
		rc = -ENOMEM;
		goto out;
	}
	rc = synth_write_safetensors(path, list.t, list.n, o->seed, "{\"format\":\"pt\"}");
out:
	cJSON_Delete(rank_pattern);
	cJSON_Delete(alpha_pattern);
	if (config)
		cJSON_free(config);
	free(path);
	free(list.t);
	return rc;
}
