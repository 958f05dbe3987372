#include "json.h"

#include <pthread.h>

static pthread_mutex_t ls_json_lock = PTHREAD_MUTEX_INITIALIZER;

cJSON *ls_json_parse(const char *text, size_t len, const char **end)
{
	pthread_mutex_lock(&ls_json_lock);
	cJSON *root = cJSON_ParseWithLengthOpts(text, len, end, 0);
	pthread_mutex_unlock(&ls_json_lock);
	return root;
}
