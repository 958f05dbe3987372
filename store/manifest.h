/* From an analyzed adapter to a blob manifest and its data region. */
#ifndef LS_MANIFEST_H
#define LS_MANIFEST_H

#include <stdbool.h>
#include <stdint.h>

#include "adapter.h"
#include "lorastore.pb-c.h"

/*
 * Lay out ad's tensors (converted to their target dtypes) in a data region and
 * describe them in a manifest.  The region is page-aligned memory, zero
 * padded to a multiple of LS_BLOB_PAGE (free with free()); the manifest is
 * freed with lorastore__blob_manifest__free_unpacked(m, NULL).  Returns 0,
 * LS_E_NONFINITE when a conversion overflowed and allow_nonfinite is false,
 * or -ENOMEM.  label names the adapter (its directory) in messages.
 */
int ls_manifest_build(const struct ls_adapter *ad, const char *label, bool allow_nonfinite,
		      Lorastore__BlobManifest **out, void **data, uint64_t *data_length,
		      struct ls_err *err);

#endif
