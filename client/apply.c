/*
 * liblorastore: applying held adapters to a batch through the kernels
 * library (kernels/include/lsk.h), on the CPU.
 *
 * A plan is a layout (plan_layout.h: every (adapter, slice) pointer, rank
 * and scale, looked up and checked once); lorastore_apply then only
 * describes the batch and calls the kernel once per group of slices.
 * Device adapters have their own plan, in liblorastore_cuda.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "lsk.h"
#include "plan_layout.h"

struct lorastore_plan {
	struct ls_plan_layout layout;
};

LS_PUBLIC void lorastore_plan_free(lorastore_plan *plan)
{
	if (!plan)
		return;
	ls_plan_layout_free(&plan->layout);
	free(plan);
}

LS_PUBLIC int lorastore_plan_create(lorastore_adapter *const *adapters, size_t n_adapters,
				    const float *factors, uint64_t in,
				    const lorastore_slice *slices, size_t n_slices,
				    lorastore_plan **out)
{
	_Static_assert(offsetof(lorastore_plan, layout) == 0, "the layout comes first");
	return ls_plan_layout_new(sizeof(lorastore_plan), adapters, n_adapters, factors, in, slices,
				  n_slices, LS_TIER_HOST, NULL, (void **)out);
}

LS_PUBLIC size_t lorastore_plan_workspace_size(const lorastore_plan *plan, size_t n_tokens)
{
	return plan ? ls_plan_layout_workspace(&plan->layout, n_tokens) : 0;
}

LS_PUBLIC int lorastore_apply(const lorastore_plan *plan, const lorastore_batch *batch,
			      lorastore_dtype act_dtype, const void *x, size_t ldx, void *y,
			      size_t ldy, void *workspace, size_t workspace_size, int n_threads)
{
	if (!plan || !batch)
		return -EINVAL;
	lsk_dtype adt;
	int crc = ls_plan_batch_check(act_dtype, batch->n_tokens, batch->n_segments, ldx, ldy, &adt);
	if (crc)
		return crc;
	_Static_assert(sizeof(lorastore_segment) == sizeof(lsk_segment) &&
			       offsetof(lorastore_segment, adapter) == offsetof(lsk_segment, adapter),
		       "lorastore_segment and lsk_segment differ");
	lsk_batch b = {
		.n_tokens = (int64_t)batch->n_tokens,
		.token_adapter = batch->token_adapter,
		.n_segments = (int32_t)batch->n_segments,
		.segments = (const lsk_segment *)batch->segments,
	};
	/*
	 * The kernel checks its call; with several groups every one is checked
	 * before the first runs, so that an error leaves y unchanged.
	 */
	lsk_lora calls[LSK_MAX_SLICES];
	for (size_t g = 0; g < plan->layout.n_groups; g++) {
		calls[g] = plan->layout.groups[g].lora;
		calls[g].act_dtype = adt;
		calls[g].ldx = (int64_t)ldx;
		calls[g].ldy = (int64_t)ldy;
		if (plan->layout.n_groups == 1)
			break;
		int rc = lsk_check(&calls[g], &b);
		if (rc)
			return rc;
		if (!x || !y || (batch->n_tokens && !workspace))
			return -EINVAL;
		if (workspace_size < lsk_workspace_size(&calls[g], b.n_tokens))
			return LS_E_SHAPE;
	}
	for (size_t g = 0; g < plan->layout.n_groups; g++) {
		int rc = lsk_cpu_apply(&calls[g], &b, x, y, workspace, workspace_size, n_threads);
		if (rc)
			return rc;
	}
	return 0;
}
