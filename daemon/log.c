/* Logging of lorastored. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum ls_log_level ls_level = LS_LOG_INFO;

int ls_log_level_parse(const char *s, enum ls_log_level *out)
{
	static const struct {
		const char *name;
		enum ls_log_level level;
	} levels[] = {{"error", LS_LOG_ERROR},
		      {"warning", LS_LOG_WARNING},
		      {"info", LS_LOG_INFO},
		      {"debug", LS_LOG_DEBUG}};
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcmp(s, levels[i].name) == 0) {
			*out = levels[i].level;
			return 0;
		}
	return -EINVAL;
}

void ls_log_set_level(enum ls_log_level level)
{
	ls_level = level;
}

void ls_log(enum ls_log_level level, const char *fmt, ...)
{
	if (level > ls_level)
		return;
	static int journal = -1;
	if (journal < 0)
		journal = getenv("JOURNAL_STREAM") != NULL;
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (journal) {
		fprintf(stderr, "<%d>%s\n", (int)level, line);
	} else {
		const char *word = level <= LS_LOG_ERROR	? "error"
				   : level == LS_LOG_WARNING ? "warning"
				   : level == LS_LOG_INFO    ? "info"
							     : "debug";
		fprintf(stderr, "lorastored: %s: %s\n", word, line);
	}
}
