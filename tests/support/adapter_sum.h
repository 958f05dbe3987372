/* What tests of real daemons compare between two acquires: a checksum of an adapter's bytes. */
#ifndef LS_ADAPTER_SUM_H
#define LS_ADAPTER_SUM_H

#include <stdint.h>

#include <lorastore.h>

/*
 * FNV-1a over every tensor's bytes, in table order, read in place from the
 * shared mapping (host tier); 0 when the adapter cannot be read.
 */
static inline uint64_t ls_adapter_sum(const lorastore_adapter *ad)
{
	lorastore_adapter_info info;
	if (lorastore_adapter_info_get(ad, &info) != 0)
		return 0;
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < info.tensor_count; i++) {
		lorastore_tensor t;
		if (lorastore_adapter_tensor_at(ad, i, &t) != 0)
			return 0;
		const unsigned char *p = t.data;
		for (uint64_t k = 0; k < t.bytes; k++)
			h = (h ^ p[k]) * 1099511628211ull;
	}
	return h;
}

#endif
