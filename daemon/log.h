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

#define ls_error(...) ls_log(LS_LOG_ERROR, __VA_ARGS__)
#define ls_warn(...) ls_log(LS_LOG_WARNING, __VA_ARGS__)
#define ls_info(...) ls_log(LS_LOG_INFO, __VA_ARGS__)
#define ls_debug(...) ls_log(LS_LOG_DEBUG, __VA_ARGS__)

#endif
