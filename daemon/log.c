/* Logging of lorastored. */
#include "log.h"
#include "ls_clock.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

static void ls_vlog(enum ls_log_level level, const char *fmt, va_list ap, const char *tail)
	__attribute__((format(printf, 2, 0)));

void ls_log(enum ls_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ls_vlog(level, fmt, ap, "");
	va_end(ap);
}

void ls_log_limited(struct ls_ratelimit *rl, enum ls_log_level level, const char *fmt, ...)
{
	long long now = ls_mono_ms() + 1;
	if (rl->last_ms && now - rl->last_ms < rl->interval_ms) {
		rl->left_out++;
		return;
	}
	char tail[96] = "";
	if (rl->left_out)
		snprintf(tail, sizeof(tail), " (and %llu more like this in %.1f s)", rl->left_out,
			 (double)(now - rl->last_ms) / 1000.0);
	rl->last_ms = now;
	rl->left_out = 0;
	va_list ap;
	va_start(ap, fmt);
	ls_vlog(level, fmt, ap, tail);
	va_end(ap);
}

static void ls_vlog(enum ls_log_level level, const char *fmt, va_list ap, const char *tail)
{
	if (level > ls_level)
		return;
	static int journal = -1;
	if (journal < 0)
		journal = getenv("JOURNAL_STREAM") != NULL;
	char line[2048];
	vsnprintf(line, sizeof(line), fmt, ap);
	if (journal) {
		fprintf(stderr, "<%d>%s%s\n", (int)level, line, tail);
	} else {
		const char *word = level <= LS_LOG_ERROR	? "error"
				   : level == LS_LOG_WARNING ? "warning"
				   : level == LS_LOG_INFO    ? "info"
							     : "debug";
		fprintf(stderr, "lorastored: %s: %s%s\n", word, line, tail);
	}
}
