/* The layout of a plan, shared by the host and the device plans (plan_layout.h). */
#include "plan_layout.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ls_error.h"

int ls_plan_lsk_dtype(lorastore_dtype dt, lsk_dtype *out)
{
	switch (dt) {
	case LORASTORE_DTYPE_F32:
		*out = LSK_F32;
		return 0;
	case LORASTORE_DTYPE_F16:
		*out = LSK_F16;
		return 0;
	case LORASTORE_DTYPE_BF16:
		*out = LSK_BF16;
		return 0;
	}
	return LS_E_DTYPE;
}

/* What a plan needs of one (adapter, slice): both tensors checked against the layer. */
static int ls_plan_pair(lorastore_adapter *ad, const lorastore_slice *sl, uint64_t in,
			const void **a, const void **b, int32_t *rank, double *scale,
			lorastore_dtype *wdt)
{
	lorastore_tensor ta, tb;
	int ra = lorastore_adapter_tensor(ad, sl->module, LORASTORE_KIND_A, &ta);
	int rb = lorastore_adapter_tensor(ad, sl->module, LORASTORE_KIND_B, &tb);
	if (ra == LS_E_NOT_FOUND && rb == LS_E_NOT_FOUND) {
		*a = *b = NULL;
		*rank = 0;
		*scale = 0;
		return 0; /* this adapter does not adapt the module */
	}
	if (ra || rb)
		return ra ? (ra == LS_E_NOT_FOUND ? LS_E_SHAPE : ra)
			  : (rb == LS_E_NOT_FOUND ? LS_E_SHAPE : rb);
	if (ta.ndim != 2 || tb.ndim != 2 || ta.shape[1] != in || tb.shape[0] != sl->out ||
	    ta.shape[0] != tb.shape[1] || ta.shape[0] == 0 || ta.shape[0] > LSK_MAX_RANK)
		return LS_E_SHAPE;
	if (ta.dtype != tb.dtype || ta.dtype == 0)
		return LS_E_DTYPE;
	if (*wdt && *wdt != ta.dtype)
		return LS_E_DTYPE;
	*wdt = ta.dtype;
	*a = ta.data;
	*b = tb.data;
	*rank = (int32_t)ta.shape[0];
	*scale = tb.scale;
	return 0;
}

void ls_plan_layout_free(struct ls_plan_layout *p)
{
	free(p->arrays);
	memset(p, 0, sizeof(*p));
}

/*
 * Whether slice s can join group g: every adapter that has the slice's
 * module has the group's scale for it, or the group has none yet (NaN).
 */
static bool ls_group_fits(const struct ls_plan_layout *p, const float *scales, size_t g,
			  size_t s)
{
	const float *gs = p->groups[g].scale;
	for (size_t i = 0; i < p->n_adapters; i++) {
		size_t c = s * p->n_adapters + i;
		if (p->ranks[c] && !isnan(gs[i]) && gs[i] != scales[c])
			return false;
	}
	return true;
}

/* The arguments, and the tier (and GPU) every adapter must be held in. */
static int ls_plan_args(lorastore_adapter *const *adapters, size_t n_adapters, uint64_t in,
			const lorastore_slice *slices, size_t n_slices, enum ls_tier_kind tier,
			int *device)
{
	if (!adapters || !slices || n_adapters == 0 || n_adapters > INT32_MAX || n_slices == 0 ||
	    n_slices > LSK_MAX_SLICES || in == 0 || in > INT64_MAX)
		return -EINVAL;
	for (size_t s = 0; s < n_slices; s++) {
		if (!slices[s].module || slices[s].out == 0 || slices[s].out > INT64_MAX ||
		    slices[s].out_offset > INT64_MAX - slices[s].out)
			return -EINVAL;
		for (size_t t = 0; t < s; t++)
			if (slices[s].out_offset < slices[t].out_offset + slices[t].out &&
			    slices[t].out_offset < slices[s].out_offset + slices[s].out)
				return LS_E_SHAPE;
	}
	*device = -1;
	for (size_t i = 0; i < n_adapters; i++) {
		lorastore_adapter_info info;
		if (!adapters[i] || lorastore_adapter_info_get(adapters[i], &info))
			return -EINVAL;
		enum ls_tier_kind held = info.device >= 0 ? LS_TIER_DEVICE : LS_TIER_HOST;
		if (held != tier || (i > 0 && info.device != *device))
			return LS_E_TIER;
		*device = info.device;
	}
	return 0;
}

int ls_plan_batch_check(lorastore_dtype act_dtype, size_t n_tokens, size_t n_segments,
			size_t ldx, size_t ldy, lsk_dtype *adt)
{
	if (ls_plan_lsk_dtype(act_dtype, adt))
		return LS_E_DTYPE;
	if (n_tokens > INT32_MAX || n_segments > INT32_MAX || ldx > INT64_MAX || ldy > INT64_MAX)
		return LS_E_SHAPE;
	return 0;
}

int ls_plan_layout_new(size_t plan_bytes, lorastore_adapter *const *adapters, size_t n_adapters,
		       const float *factors, uint64_t in, const lorastore_slice *slices,
		       size_t n_slices, enum ls_tier_kind tier, int *device, void **out)
{
	if (!out)
		return -EINVAL;
	*out = NULL;
	struct ls_plan_layout *p = calloc(1, plan_bytes);
	if (!p)
		return -ENOMEM;
	int rc = ls_plan_layout_build(p, adapters, n_adapters, factors, in, slices, n_slices, tier,
				      device);
	if (rc) {
		free(p);
		return rc;
	}
	*out = p;
	return 0;
}

int ls_plan_layout_build(struct ls_plan_layout *p, lorastore_adapter *const *adapters,
			 size_t n_adapters, const float *factors, uint64_t in,
			 const lorastore_slice *slices, size_t n_slices, enum ls_tier_kind tier,
			 int *device)
{
	memset(p, 0, sizeof(*p));
	int dev;
	int rc = ls_plan_args(adapters, n_adapters, in, slices, n_slices, tier, &dev);
	if (rc)
		return rc;
	if (device)
		*device = dev;

	size_t cells = n_slices * n_adapters;
	p->arrays_bytes = 2 * cells * sizeof(*p->ptrs) + cells * sizeof(*p->ranks) +
			  cells * sizeof(*p->group_scales);
	p->arrays = calloc(1, p->arrays_bytes);
	float *scales = calloc(cells, sizeof(*scales)); /* module scale x factor per cell */
	if (!p->arrays || !scales) {
		free(scales);
		ls_plan_layout_free(p);
		return -ENOMEM;
	}
	p->ptrs = p->arrays;
	p->ranks = (int32_t *)(p->ptrs + 2 * cells);
	p->group_scales = (float *)(p->ranks + cells);
	p->n_adapters = n_adapters;

	lorastore_dtype wdt = 0;
	for (size_t s = 0; s < n_slices; s++) {
		const void **a = &p->ptrs[2 * s * n_adapters];
		const void **b = &p->ptrs[(2 * s + 1) * n_adapters];
		for (size_t i = 0; i < n_adapters; i++) {
			size_t c = s * n_adapters + i;
			double scale = 0;
			rc = ls_plan_pair(adapters[i], &slices[s], in, &a[i], &b[i], &p->ranks[c],
					  &scale, &wdt);
			if (rc) {
				free(scales);
				ls_plan_layout_free(p);
				return rc;
			}
			scales[c] = (float)(scale * (factors ? factors[i] : 1.0f));
			if (p->ranks[c] > p->max_rank)
				p->max_rank = p->ranks[c];
		}
	}
	p->weight_dtype = LSK_F32;
	if (wdt && ls_plan_lsk_dtype(wdt, &p->weight_dtype)) {
		free(scales);
		ls_plan_layout_free(p);
		return LS_E_DTYPE;
	}
	if (p->max_rank == 0)
		p->max_rank = 1; /* no adapter has these modules: every call adds nothing */

	for (size_t s = 0; s < n_slices; s++) {
		size_t g = 0;
		while (g < p->n_groups && !ls_group_fits(p, scales, g, s))
			g++;
		struct ls_plan_group *grp = &p->groups[g];
		lsk_lora *l = &grp->lora;
		if (g == p->n_groups) {
			p->n_groups++;
			grp->scale = &p->group_scales[g * n_adapters];
			for (size_t i = 0; i < n_adapters; i++)
				grp->scale[i] = NAN;
			l->weight_dtype = p->weight_dtype;
			l->in = (int64_t)in;
			l->n_adapters = (int32_t)n_adapters;
			l->max_rank = p->max_rank;
			l->scale = grp->scale;
		}
		for (size_t i = 0; i < n_adapters; i++) {
			size_t c = s * n_adapters + i;
			if (p->ranks[c])
				grp->scale[i] = scales[c];
		}
		lsk_slice *sl = &l->slices[l->n_slices++];
		sl->a = &p->ptrs[2 * s * n_adapters];
		sl->b = &p->ptrs[(2 * s + 1) * n_adapters];
		sl->rank = &p->ranks[s * n_adapters];
		sl->out_offset = (int64_t)slices[s].out_offset;
		sl->out = (int64_t)slices[s].out;
	}
	free(scales);
	/* An adapter with none of the modules keeps a scale it never uses. */
	for (size_t g = 0; g < p->n_groups; g++)
		for (size_t i = 0; i < n_adapters; i++)
			if (isnan(p->groups[g].scale[i]))
				p->groups[g].scale[i] = 0;
	return 0;
}

size_t ls_plan_layout_workspace(const struct ls_plan_layout *p, size_t n_tokens)
{
	size_t most = 0;
	for (size_t g = 0; g < p->n_groups; g++) {
		size_t w = lsk_workspace_size(&p->groups[g].lora, (int64_t)n_tokens);
		if (w > most)
			most = w;
	}
	return most;
}
