/*
 * Apply two different adapters to one batch, as an inference worker does
 * for one layer: tokens 0 and 2 use the first adapter, token 1 the second,
 * token 3 none.
 *
 *   lorastore_example_apply ADAPTER1 ADAPTER2 MODULE
 *
 * MODULE is a module both adapters adapt (e.g.
 * model.layers.0.self_attn.q_proj); its width is read from the first
 * adapter here, where a worker would take it from its model.  The socket is
 * $LORASTORE_SOCKET, or the default one.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <lorastore.h>

static int fail(lorastore *conn, const char *what, int rc)
{
	fprintf(stderr, "%s: %s (%s)\n", what, conn ? lorastore_errmsg(conn) : "",
		lorastore_strerror(rc));
	lorastore_close(conn);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s ADAPTER1 ADAPTER2 MODULE\n", argv[0]);
		return 2;
	}
	lorastore *conn = NULL;
	int rc = lorastore_connect(NULL, &conn);
	if (rc)
		return fail(conn, "connect", rc);
	lorastore_adapter *ads[2];
	for (int i = 0; i < 2; i++)
		if ((rc = lorastore_acquire(conn, argv[1 + i], -1, &ads[i])))
			return fail(conn, argv[1 + i], rc);

	/* The layer's shape: x is [T][in], y is [T][out]. */
	lorastore_tensor a, b;
	if ((rc = lorastore_adapter_tensor(ads[0], argv[3], LORASTORE_KIND_A, &a)) ||
	    (rc = lorastore_adapter_tensor(ads[0], argv[3], LORASTORE_KIND_B, &b)))
		return fail(conn, argv[3], rc);
	uint64_t in = a.shape[1], out = b.shape[0];

	/* Once per layer and set of adapters: look up and check every tensor. */
	lorastore_slice slice = {.module = argv[3], .out_offset = 0, .out = out};
	lorastore_plan *plan = NULL;
	if ((rc = lorastore_plan_create(ads, 2, NULL, in, &slice, 1, &plan)))
		return fail(conn, "plan", rc);

	/* Per batch: the tokens' adapters, and a workspace so that nothing is allocated. */
	enum { T = 4 };
	const int32_t token_adapter[T] = {0, 1, 0, -1};
	float *x = malloc(T * in * sizeof(float));
	float *y = calloc(T * out, sizeof(float));
	size_t ws_size = lorastore_plan_workspace_size(plan, T);
	void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
	if (!x || !y || !ws)
		return fail(conn, "allocate", -12);
	for (uint64_t i = 0; i < T * in; i++)
		x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
	lorastore_batch batch = {.n_tokens = T, .token_adapter = token_adapter};
	rc = lorastore_apply(plan, &batch, LORASTORE_DTYPE_F32, x, in, y, out, ws, ws_size, 1);
	if (rc)
		return fail(conn, "apply", rc);

	for (int t = 0; t < T; t++) {
		double norm = 0;
		for (uint64_t o = 0; o < out; o++)
			norm += (double)y[t * out + o] * y[t * out + o];
		printf("token %d (adapter %s): |delta y| = %.6f\n", t,
		       token_adapter[t] < 0 ? "none" : argv[1 + token_adapter[t]], sqrt(norm));
	}
	free(ws);
	free(y);
	free(x);
	lorastore_plan_free(plan);
	lorastore_adapter_release(ads[0]);
	lorastore_adapter_release(ads[1]);
	lorastore_close(conn);
	return 0;
}
