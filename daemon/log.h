/* Logging of lorastored: levels, to standard error (the journal under systemd). */
#ifndef LS_LOG_H
#define LS_LOG_H

enum ls_log_level { LS_LOG_ERROR = 3, LS_LOG_WARNING = 4, LS_LOG_INFO = 6, LS_LOG_DEBUG = 7 };

/* Parse "error", "warning", "info" or "debug"; 0 or -EINVAL. */
int ls_log_level_parse(const char *s, enum ls_log_level *out);
void ls_log_set_level(enum ls_log_level level);

/*
 * Log one line.  Under systemd (JOURNAL_STREAM set) lines carry the "<N>"
 * priority prefix the journal reads; otherwise a level word.
 */
void ls_log(enum ls_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * One kind of event that may repeat fast (a refused connection, descriptors
 * running out): logged at most once per interval, with how many were left out
 * since the last line.  Used from the loop thread only.
 */
struct ls_ratelimit {
	long long interval_ms;
	long long last_ms;          /* CLOCK_MONOTONIC of the last line; 0: none yet */
	unsigned long long left_out; /* events since then that were not logged */
};
#define LS_RATELIMIT_INIT(ms) {.interval_ms = (ms), .last_ms = 0, .left_out = 0}

/* Log one line for rl unless one was logged less than rl->interval_ms ago. */
void ls_log_limited(struct ls_ratelimit *rl, enum ls_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define ls_error(...) ls_log(LS_LOG_ERROR, __VA_ARGS__)
#define ls_warn(...) ls_log(LS_LOG_WARNING, __VA_ARGS__)
#define ls_info(...) ls_log(LS_LOG_INFO, __VA_ARGS__)
#define ls_debug(...) ls_log(LS_LOG_DEBUG, __VA_ARGS__)

#endif
