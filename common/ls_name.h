/*
 * Adapter names and references, checked the same way by the store, the
 * daemon and the client (so that a bad name is refused before it is sent).
 */
#ifndef LS_NAME_H
#define LS_NAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ls_error.h"

/* Names: 1-200 characters of [A-Za-z0-9._/-]. */
#define LS_NAME_MAX 200

/*
 * True when name is a valid adapter name: 1 to LS_NAME_MAX characters of
 * [A-Za-z0-9._/-] (no '@', which separates a version) in '/'-separated
 * components that are neither empty nor "." nor "..".
 */
bool ls_name_valid(const char *name);

/* An alias is NAME:TAG, TAG 1 to LS_TAG_MAX characters of [A-Za-z0-9._-]. */
#define LS_TAG_MAX 64
#define LS_ALIAS_MAX (LS_NAME_MAX + 1 + LS_TAG_MAX)

/*
 * True when s is a valid alias: a valid name, ':', a tag.  An alias
 * names one version of any adapter (it is moved with lorastore tag); the
 * name before ':' only groups it.
 */
bool ls_alias_valid(const char *s);

/*
 * Split a reference "name" or "name@N" into the name (copied into name, at
 * least LS_NAME_MAX + 1 bytes, or NULL to only check) and the version (0 for
 * the latest).  Returns 0 or LS_E_NAME_INVALID with a message in err.
 */
int ls_ref_parse(const char *ref, char *name, uint32_t *version, struct ls_err *err);

/*
 * Check a reference that may also be an alias: 0 for "name", "name@N" or
 * "name:tag", else LS_E_NAME_INVALID with a message in err.
 */
int ls_ref_check_any(const char *ref, struct ls_err *err);

#endif
