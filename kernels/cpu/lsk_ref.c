/*
 * The reference path: plain loops in the order lsk.h writes the sum, so that
 * anyone can check it by reading.  Every other path is tested against it.
 *
 * For one token and one slice of its adapter:
 *   v[r] = sum over k ascending of x[k] * A[r][k]        (float)
 *   acc  = sum over r ascending of v[r] * B[o][r]        (float)
 *   y[o] = round(float(y[o]) + scale * acc)              (two float roundings,
 *                                                         then one to y's dtype)
 * The file is compiled with -ffp-contract=off so that no fused multiply-add
 * changes these roundings when the build targets an FMA machine.
 */
#include <errno.h>

#include "ls_error.h"
#include "lsk.h"
#include "../lsk_internal.h"

/* The update of one token (row t of x and y) by adapter a, every slice. */
static void lsk_ref_token(const lsk_lora *l, int32_t a, const void *x, void *y, int64_t t)
{
	float v[LSK_MAX_RANK];
	const int64_t xrow = t * l->ldx;
	const int64_t yrow = t * l->ldy;
	for (int32_t s = 0; s < l->n_slices; s++) {
		const lsk_slice *sl = &l->slices[s];
		int32_t rank = sl->rank[a];
		if (rank == 0)
			continue;
		const void *A = sl->a[a];
		const void *B = sl->b[a];
		for (int32_t r = 0; r < rank; r++) {
			float sum = 0.0f;
			for (int64_t k = 0; k < l->in; k++)
				sum += lsk_load(l->act_dtype, x, xrow + k) *
				       lsk_load(l->weight_dtype, A, (int64_t)r * l->in + k);
			v[r] = sum;
		}
		for (int64_t o = 0; o < sl->out; o++) {
			float acc = 0.0f;
			for (int32_t r = 0; r < rank; r++)
				acc += v[r] * lsk_load(l->weight_dtype, B, o * rank + r);
			int64_t col = yrow + sl->out_offset + o;
			float upd = l->scale[a] * acc;
			float sum = lsk_load(l->act_dtype, y, col) + upd;
			lsk_store(l->act_dtype, y, col, sum);
		}
	}
}

int lsk_ref_apply(const lsk_lora *l, const lsk_batch *b, const void *x, void *y)
{
	int rc = lsk_check(l, b);
	if (rc)
		return rc;
	if (b->n_tokens == 0)
		return 0;
	if (!x || !y)
		return -EINVAL;
	if (b->token_adapter) {
		for (int64_t t = 0; t < b->n_tokens; t++)
			if (b->token_adapter[t] >= 0)
				lsk_ref_token(l, b->token_adapter[t], x, y, t);
		return 0;
	}
	for (int32_t i = 0; i < b->n_segments; i++) {
		const lsk_segment *sg = &b->segments[i];
		if (sg->adapter < 0)
			continue;
		for (int64_t t = sg->start; t < (int64_t)sg->start + sg->len; t++)
			lsk_ref_token(l, sg->adapter, x, y, t);
	}
	return 0;
}
