/*
 * liblorastore: applying held adapters to a batch through the kernels
 * library (kernels/include/lsk.h).
 *
 * A plan looks up, checks and keeps every (adapter, slice) pointer, rank and
 * scale once; lorastore_apply then only describes the batch and calls the
 * kernel.  The kernels take one scale per adapter, so slices whose modules
 * have different scales in some adapter (alpha_pattern) go to separate
 * kernel calls: the plan groups slices with equal scales, usually into one.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "lsk.h"

struct ls_plan_group {
	lsk_lora lora;
	float *scale;                  /* [n_adapters], NaN while no slice has set it */
};

struct lorastore_plan {
	size_t n_adapters;
	int32_t max_rank;
	size_t n_groups;
	struct ls_plan_group groups[LSK_MAX_SLICES];
	/* One allocation each: [n_slices][A pointers, B pointers][n_adapters], ... */
	const void **ptrs;
	int32_t *ranks;                /* [n_slices][n_adapters] */
	float *scales;                 /* [n_slices][n_adapters]: the module scales x factors */
	float *group_scales;           /* [n_slices][n_adapters]: groups[g].scale */
};

static int ls_lsk_dtype(lorastore_dtype dt, lsk_dtype *out)
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

LS_PUBLIC void lorastore_plan_free(lorastore_plan *plan)
{
	if (!plan)
		return;
	free(plan->ptrs);
	free(plan->ranks);
	free(plan->scales);
	free(plan->group_scales);
	free(plan);
}

/*
 * Whether slice s can join group g: every adapter that has the slice's
 * module has the group's scale for it, or the group has none yet.
 */
static bool ls_group_fits(const lorastore_plan *p, size_t g, size_t s)
{
	const float *gs = p->groups[g].scale;
	for (size_t i = 0; i < p->n_adapters; i++) {
		size_t c = s * p->n_adapters + i;
		if (p->ranks[c] && !isnan(gs[i]) && gs[i] != p->scales[c])
			return false;
	}
	return true;
}

LS_PUBLIC int lorastore_plan_create(lorastore_adapter *const *adapters, size_t n_adapters,
				    const float *factors, uint64_t in,
				    const lorastore_slice *slices, size_t n_slices,
				    lorastore_plan **out)
{
	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!adapters || !slices || n_adapters == 0 || n_adapters > INT32_MAX ||
	    n_slices == 0 || n_slices > LSK_MAX_SLICES || in == 0 || in > INT64_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n_adapters; i++)
		if (!adapters[i])
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
	for (size_t i = 0; i < n_adapters; i++)
		if (strcmp(adapters[i]->info.tier, "host") != 0)
			return LS_E_NOT_BUILT; /* device memory needs the CUDA path */

	lorastore_plan *p = calloc(1, sizeof(*p));
	size_t cells = n_slices * n_adapters;
	if (p) {
		p->ptrs = calloc(2 * cells, sizeof(*p->ptrs));
		p->ranks = calloc(cells, sizeof(*p->ranks));
		p->scales = calloc(cells, sizeof(*p->scales));
		p->group_scales = calloc(cells, sizeof(*p->group_scales));
	}
	if (!p || !p->ptrs || !p->ranks || !p->scales || !p->group_scales) {
		lorastore_plan_free(p);
		return -ENOMEM;
	}
	p->n_adapters = n_adapters;
	lorastore_dtype wdt = 0;
	for (size_t s = 0; s < n_slices; s++) {
		const void **a = &p->ptrs[2 * s * n_adapters];
		const void **b = &p->ptrs[(2 * s + 1) * n_adapters];
		for (size_t i = 0; i < n_adapters; i++) {
			size_t c = s * n_adapters + i;
			double scale = 0;
			int rc = ls_plan_pair(adapters[i], &slices[s], in, &a[i], &b[i],
					      &p->ranks[c], &scale, &wdt);
			if (rc) {
				lorastore_plan_free(p);
				return rc;
			}
			p->scales[c] = (float)(scale * (factors ? factors[i] : 1.0f));
			if (p->ranks[c] > p->max_rank)
				p->max_rank = p->ranks[c];
		}
	}
	lsk_dtype weight_dtype = LSK_F32;
	if (wdt && ls_lsk_dtype(wdt, &weight_dtype)) {
		lorastore_plan_free(p);
		return LS_E_DTYPE;
	}
	if (p->max_rank == 0)
		p->max_rank = 1; /* no adapter has these modules: every call adds nothing */

	for (size_t s = 0; s < n_slices; s++) {
		size_t g = 0;
		while (g < p->n_groups && !ls_group_fits(p, g, s))
			g++;
		struct ls_plan_group *grp = &p->groups[g];
		lsk_lora *l = &grp->lora;
		if (g == p->n_groups) {
			p->n_groups++;
			grp->scale = &p->group_scales[g * n_adapters];
			for (size_t i = 0; i < n_adapters; i++)
				grp->scale[i] = NAN;
			l->weight_dtype = weight_dtype;
			l->in = (int64_t)in;
			l->n_adapters = (int32_t)n_adapters;
			l->max_rank = p->max_rank;
			l->scale = grp->scale;
		}
		for (size_t i = 0; i < n_adapters; i++) {
			size_t c = s * n_adapters + i;
			if (p->ranks[c])
				grp->scale[i] = p->scales[c];
		}
		lsk_slice *sl = &l->slices[l->n_slices++];
		sl->a = &p->ptrs[2 * s * n_adapters];
		sl->b = &p->ptrs[(2 * s + 1) * n_adapters];
		sl->rank = &p->ranks[s * n_adapters];
		sl->out_offset = (int64_t)slices[s].out_offset;
		sl->out = (int64_t)slices[s].out;
	}
	/* An adapter with none of the modules keeps a scale it never uses. */
	for (size_t g = 0; g < p->n_groups; g++)
		for (size_t i = 0; i < n_adapters; i++)
			if (isnan(p->groups[g].scale[i]))
				p->groups[g].scale[i] = 0;
	*out = p;
	return 0;
}

LS_PUBLIC size_t lorastore_plan_workspace_size(const lorastore_plan *plan, size_t n_tokens)
{
	if (!plan)
		return 0;
	size_t most = 0;
	for (size_t g = 0; g < plan->n_groups; g++) {
		size_t w = lsk_workspace_size(&plan->groups[g].lora, (int64_t)n_tokens);
		if (w > most)
			most = w;
	}
	return most;
}

LS_PUBLIC int lorastore_apply(const lorastore_plan *plan, const lorastore_batch *batch,
			      lorastore_dtype act_dtype, const void *x, size_t ldx, void *y,
			      size_t ldy, void *workspace, size_t workspace_size, int n_threads)
{
	if (!plan || !batch)
		return -EINVAL;
	lsk_dtype adt;
	if (ls_lsk_dtype(act_dtype, &adt))
		return LS_E_DTYPE;
	if (batch->n_tokens > INT32_MAX || batch->n_segments > INT32_MAX || ldx > INT64_MAX ||
	    ldy > INT64_MAX)
		return LS_E_SHAPE;
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
	for (size_t g = 0; g < plan->n_groups; g++) {
		calls[g] = plan->groups[g].lora;
		calls[g].act_dtype = adt;
		calls[g].ldx = (int64_t)ldx;
		calls[g].ldy = (int64_t)ldy;
		if (plan->n_groups == 1)
			break;
		int rc = lsk_check(&calls[g], &b);
		if (rc)
			return rc;
		if (!x || !y || (batch->n_tokens && !workspace))
			return -EINVAL;
		if (workspace_size < lsk_workspace_size(&calls[g], b.n_tokens))
			return LS_E_SHAPE;
	}
	for (size_t g = 0; g < plan->n_groups; g++) {
		int rc = lsk_cpu_apply(&calls[g], &b, x, y, workspace, workspace_size, n_threads);
		if (rc)
			return rc;
	}
	return 0;
}
