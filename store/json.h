/*
 * JSON parsing for the store (safetensors headers, PEFT configs) on any
 * thread.  cJSON records the position of its last error in a global, written
 * by every parse, so two imports parsing at once on two workers would race
 * on it; parses go through one lock here.
 */
#ifndef LS_JSON_H
#define LS_JSON_H

#include <stddef.h>

#include <cjson/cJSON.h>

/*
 * cJSON_ParseWithLengthOpts(text, len, end, 0) under the parse lock: *end is
 * where parsing stopped (after the value, or at the error).
 */
cJSON *ls_json_parse(const char *text, size_t len, const char **end);

#endif
