/*
 * What every kernel path shares: dtype facts, the checks of an operation
 * and a batch, and the workspace size.
 */
#include <errno.h>
#include <stdbool.h>

#include "ls_error.h"
#include "ls_types.h"
#include "lsk.h"
#include "lsk_internal.h"

_Static_assert((int)LSK_F32 == (int)LS_DTYPE_F32 && (int)LSK_F16 == (int)LS_DTYPE_F16 &&
		       (int)LSK_BF16 == (int)LS_DTYPE_BF16,
	       "the kernels' dtypes are lorastore's");

size_t lsk_dtype_size(lsk_dtype dt)
{
	switch (dt) {
	case LSK_F32:
		return 4;
	case LSK_F16:
	case LSK_BF16:
		return 2;
	}
	return 0;
}

const char *lsk_dtype_name(lsk_dtype dt)
{
	switch (dt) {
	case LSK_F32:
		return "F32";
	case LSK_F16:
		return "F16";
	case LSK_BF16:
		return "BF16";
	}
	return "unknown";
}

static bool lsk_dtype_known(lsk_dtype dt)
{
	return lsk_dtype_size(dt) != 0;
}

/* One slice on its own: its columns inside a row of y, its ranks and pointers. */
static int lsk_check_slice(const lsk_lora *l, const lsk_slice *s)
{
	if (s->out < 1 || s->out_offset < 0 || s->out_offset > l->ldy - s->out)
		return LS_E_SHAPE;
	if (l->n_adapters == 0)
		return 0;
	if (!s->a || !s->b || !s->rank)
		return -EINVAL;
	for (int32_t i = 0; i < l->n_adapters; i++) {
		int32_t r = s->rank[i];
		if (r < 0 || r > l->max_rank)
			return LS_E_SHAPE;
		if (r > 0 && (!s->a[i] || !s->b[i]))
			return -EINVAL;
		/* A module an adapter lacks has no weights; a pointer there means the
		 * caller's tables disagree with each other. */
		if (r == 0 && (s->a[i] || s->b[i]))
			return LS_E_SHAPE;
	}
	return 0;
}

static int lsk_check_lora(const lsk_lora *l)
{
	if (!lsk_dtype_known(l->act_dtype) || !lsk_dtype_known(l->weight_dtype))
		return LS_E_DTYPE;
	if (l->n_slices < 1 || l->n_slices > LSK_MAX_SLICES)
		return LS_E_SHAPE;
	if (l->in < 1 || l->ldx < l->in || l->ldy < 1)
		return LS_E_SHAPE;
	if (l->max_rank < 1 || l->max_rank > LSK_MAX_RANK || l->n_adapters < 0)
		return LS_E_SHAPE;
	if (l->n_adapters > 0 && !l->scale)
		return -EINVAL;
	for (int32_t s = 0; s < l->n_slices; s++) {
		int rc = lsk_check_slice(l, &l->slices[s]);
		if (rc)
			return rc;
	}
	/* Slices add into y with +=, each from its own columns: two slices on
	 * the same column would make the result depend on their order. */
	for (int32_t s = 0; s < l->n_slices; s++) {
		const lsk_slice *p = &l->slices[s];
		for (int32_t u = s + 1; u < l->n_slices; u++) {
			const lsk_slice *q = &l->slices[u];
			if (p->out_offset < q->out_offset + q->out &&
			    q->out_offset < p->out_offset + p->out)
				return LS_E_SHAPE;
		}
	}
	return 0;
}

static bool lsk_adapter_ok(const lsk_lora *l, int32_t a)
{
	return a >= -1 && a < l->n_adapters;
}

/*
 * Segments may come in any order.  Sorted segments (the usual case) are
 * checked for overlap in one pass; any other order falls back to comparing
 * every pair, which allocates nothing and is quick for the few hundred
 * segments a batch holds.
 */
static int lsk_check_segments(const lsk_lora *l, const lsk_batch *b)
{
	const lsk_segment *sg = b->segments;
	bool sorted = true;
	for (int32_t i = 0; i < b->n_segments; i++) {
		if (sg[i].start < 0 || sg[i].len < 0 ||
		    (int64_t)sg[i].start + sg[i].len > b->n_tokens)
			return LS_E_SHAPE;
		if (!lsk_adapter_ok(l, sg[i].adapter))
			return LS_E_SHAPE;
		if (i > 0 && sg[i].start < sg[i - 1].start)
			sorted = false;
	}
	if (sorted) {
		/* Sorted by start: only neighbours among non-empty segments can
		 * overlap, and the latest end so far covers every earlier one. */
		int64_t end = 0;
		for (int32_t i = 0; i < b->n_segments; i++) {
			if (sg[i].len == 0)
				continue;
			if (sg[i].start < end)
				return LS_E_SHAPE;
			end = (int64_t)sg[i].start + sg[i].len;
		}
		return 0;
	}
	for (int32_t i = 0; i < b->n_segments; i++) {
		if (sg[i].len == 0)
			continue;
		for (int32_t j = i + 1; j < b->n_segments; j++) {
			if (sg[j].len == 0)
				continue;
			if ((int64_t)sg[i].start < (int64_t)sg[j].start + sg[j].len &&
			    (int64_t)sg[j].start < (int64_t)sg[i].start + sg[i].len)
				return LS_E_SHAPE;
		}
	}
	return 0;
}

static int lsk_check_batch(const lsk_lora *l, const lsk_batch *b)
{
	if (b->n_tokens < 0 || b->n_segments < 0)
		return LS_E_SHAPE;
	/* Row addresses are computed as t * ldx and t * ldy: they must fit. */
	if (b->n_tokens > 0 &&
	    (b->n_tokens - 1 > (INT64_MAX - l->in) / l->ldx ||
	     b->n_tokens - 1 > (INT64_MAX - l->ldy) / l->ldy))
		return LS_E_SHAPE;
	if (b->token_adapter && b->segments)
		return LS_E_SHAPE;
	if (b->token_adapter) {
		if (b->n_segments != 0)
			return LS_E_SHAPE;
		for (int64_t t = 0; t < b->n_tokens; t++)
			if (!lsk_adapter_ok(l, b->token_adapter[t]))
				return LS_E_SHAPE;
		return 0;
	}
	if (b->segments)
		return lsk_check_segments(l, b);
	/* Neither array: only an empty batch needs none. */
	if (b->n_tokens > 0 || b->n_segments > 0)
		return -EINVAL;
	return 0;
}

int lsk_check(const lsk_lora *l, const lsk_batch *b)
{
	if (!l || !b)
		return -EINVAL;
	int rc = lsk_check_lora(l);
	if (rc)
		return rc;
	return lsk_check_batch(l, b);
}

static size_t lsk_align(size_t n, size_t a)
{
	return (n + a - 1) / a * a;
}

size_t lsk_workspace_size(const lsk_lora *l, int64_t n_tokens)
{
	if (!l || n_tokens < 0 || l->n_slices < 1 || l->n_slices > LSK_MAX_SLICES ||
	    l->max_rank < 1 || l->max_rank > LSK_MAX_RANK)
		return SIZE_MAX;
	size_t per_token = (size_t)l->n_slices * (size_t)lsk_ws_rank_stride(l->max_rank) * 4;
	size_t v_bytes, key_bytes, total;
	if (__builtin_mul_overflow((size_t)n_tokens, per_token, &v_bytes) ||
	    __builtin_mul_overflow((size_t)n_tokens, (size_t)8, &key_bytes) ||
	    v_bytes > SIZE_MAX / 2 || key_bytes > SIZE_MAX / 4)
		return SIZE_MAX;
	/* The same layout lsk_ws_v_bytes describes, plus one alignment unit of
	 * slack so that a caller (the CUDA path) may round the base up. */
	total = lsk_align(v_bytes, LSK_WS_ALIGN) + lsk_align(key_bytes, LSK_WS_ALIGN) +
		LSK_WS_ALIGN;
	return total;
}
