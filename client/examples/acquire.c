/*
 * Acquire an adapter from lorastored and read one of its tensors in place.
 *
 *   lorastore_example_acquire NAME[@VERSION] [MODULE [A|B]]
 *
 * Without MODULE it looks up the module of the adapter's first tensor.  The
 * socket is $LORASTORE_SOCKET, or the default one.
 */
#include <stdio.h>
#include <string.h>

#include <lorastore.h>

static const char *kind_name(lorastore_kind k)
{
	switch (k) {
	case LORASTORE_KIND_A:
		return "A";
	case LORASTORE_KIND_B:
		return "B";
	case LORASTORE_KIND_EXTRA:
		return "extra";
	case LORASTORE_KIND_MAGNITUDE:
		return "magnitude";
	}
	return "?";
}

static int fail(lorastore *conn, const char *what, int rc)
{
	fprintf(stderr, "%s: %s (%s)\n", what, lorastore_errmsg(conn), lorastore_strerror(rc));
	lorastore_close(conn);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: %s NAME[@VERSION] [MODULE [A|B]]\n", argv[0]);
		return 2;
	}
	lorastore *conn = NULL;
	int rc = lorastore_connect(NULL, &conn);
	if (rc)
		return fail(conn, "connect", rc);

	/* Wait as long as the load takes (timeout -1). */
	lorastore_adapter *ad = NULL;
	rc = lorastore_acquire(conn, argv[1], -1, &ad);
	if (rc)
		return fail(conn, "acquire", rc);

	lorastore_adapter_info info;
	lorastore_adapter_info_get(ad, &info);
	printf("%s@%u: rank %u, scale %g, %zu tensors of %llu bytes, %llu bytes in %s memory\n",
	       info.name, info.version, info.rank, info.scale, info.tensor_count,
	       (unsigned long long)info.tensor_bytes, (unsigned long long)info.resident_bytes,
	       info.tier);

	const char *module = argc > 2 ? argv[2] : NULL;
	lorastore_kind kind = argc > 3 && strcmp(argv[3], "B") == 0 ? LORASTORE_KIND_B
								      : LORASTORE_KIND_A;
	lorastore_tensor t;
	if (!module) {
		if (lorastore_adapter_tensor_at(ad, 0, &t) != 0) {
			fprintf(stderr, "%s has no tensors\n", info.name);
			lorastore_adapter_release(ad);
			lorastore_close(conn);
			return 1;
		}
		module = t.module;
		kind = t.kind;
	}
	rc = lorastore_adapter_tensor(ad, module, kind, &t);
	if (rc) {
		fprintf(stderr, "%s: %s\n", module, lorastore_strerror(rc));
		lorastore_adapter_release(ad);
		lorastore_close(conn);
		return 1;
	}

	printf("%s %s: shape [", t.module, kind_name(t.kind));
	for (unsigned i = 0; i < t.ndim; i++)
		printf("%s%llu", i ? ", " : "", (unsigned long long)t.shape[i]);
	printf("], dtype %s, %llu bytes, first bytes:", t.dtype_name, (unsigned long long)t.bytes);
	/* t.data points into the daemon's memory, mapped read-only: no copy was made. */
	const unsigned char *p = t.data;
	for (uint64_t i = 0; i < t.bytes && i < 16; i++)
		printf(" %02x", p[i]);
	printf("\n");

	lorastore_adapter_release(ad);
	lorastore_close(conn);
	return 0;
}
