/*
 * The layout of a plan: what applying a set of held adapters to one layer
 * needs, looked up and checked once.  The host plan (apply.c, in
 * liblorastore) and the device plan (cuda/plan_cuda.c, in liblorastore_cuda)
 * share it; it reads adapters through the public API only, so that both
 * libraries can carry it.
 *
 * The kernels take one scale per adapter, so slices whose modules have
 * different scales in some adapter (alpha_pattern) go to separate kernel
 * calls: the layout groups slices with equal scales, usually into one.
 */
#ifndef LS_PLAN_LAYOUT_H
#define LS_PLAN_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "lorastore.h"
#include "ls_types.h"
#include "lsk.h"

struct ls_plan_group {
	lsk_lora lora;                 /* act_dtype, ldx and ldy are set per call */
	float *scale;                  /* [n_adapters], in the layout's arrays */
};

struct ls_plan_layout {
	size_t n_adapters;
	int32_t max_rank;
	lsk_dtype weight_dtype;
	size_t n_groups;
	struct ls_plan_group groups[LSK_MAX_SLICES];
	/*
	 * One allocation holds every array the kernels read, so that a device
	 * plan copies it whole and finds each array at the same offset:
	 * ptrs [n_slices][A pointers, B pointers][n_adapters], then
	 * ranks [n_slices][n_adapters], group_scales [n_slices][n_adapters].
	 */
	void *arrays;
	size_t arrays_bytes;
	const void **ptrs;
	int32_t *ranks;
	float *group_scales;
};

/*
 * Build the layout of adapters[0..n_adapters) for slices[0..n_slices) of a
 * layer of `in` input columns (see lorastore_plan_create for the rules and
 * errors).  Every adapter must be held in `tier` (host or device), on
 * one GPU for device: LS_E_TIER otherwise.  Its GPU's ordinal goes to
 * *device (-1 on host) when device is not NULL.
 */
int ls_plan_layout_build(struct ls_plan_layout *p, lorastore_adapter *const *adapters,
			 size_t n_adapters, const float *factors, uint64_t in,
			 const lorastore_slice *slices, size_t n_slices, enum ls_tier_kind tier,
			 int *device);

void ls_plan_layout_free(struct ls_plan_layout *p);

/*
 * The opening both plan constructors share: a zeroed plan of plan_bytes
 * whose first member is its struct ls_plan_layout, built as
 * ls_plan_layout_build does.  0 with *out, -EINVAL (out NULL), -ENOMEM, or
 * the build's error (*out NULL).
 */
int ls_plan_layout_new(size_t plan_bytes, lorastore_adapter *const *adapters, size_t n_adapters,
		       const float *factors, uint64_t in, const lorastore_slice *slices,
		       size_t n_slices, enum ls_tier_kind tier, int *device, void **out);

/*
 * The checks both applies make of a batch before the kernels' own: the
 * activation dtype (into *adt) and the sizes the kernels' types hold.
 * 0, LS_E_DTYPE or LS_E_SHAPE.
 */
int ls_plan_batch_check(lorastore_dtype act_dtype, size_t n_tokens, size_t n_segments,
			size_t ldx, size_t ldy, lsk_dtype *adt);

/* Workspace bytes for batches of up to n_tokens tokens. */
size_t ls_plan_layout_workspace(const struct ls_plan_layout *p, size_t n_tokens);

/* lorastore_dtype to lsk_dtype: 0, or LS_E_DTYPE. */
int ls_plan_lsk_dtype(lorastore_dtype dt, lsk_dtype *out);

#endif
