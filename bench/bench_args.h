/*
 * Option parsing shared by the benchmarks: a number on the command line
 * within a range, and the daemon's event-loop engines.  (A header, not a bench_*.c file: bench/CMakeLists.txt
 * makes every bench_*.c an executable.)
 */
#ifndef LS_BENCH_ARGS_H
#define LS_BENCH_ARGS_H

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* *out = s as a decimal number when all of s is one in [lo, hi]. */
static inline bool bench_parse_num(const char *s, unsigned long long lo, unsigned long long hi,
				   unsigned long long *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

/*
 * --event-loop: auto, io_uring or epoll (one daemon on that engine), or both
 * (two daemons, io_uring and epoll, measured in one run).  Fills engines[0..1]
 * and *n; false for anything else.
 */
static inline bool bench_parse_engines(const char *s, const char *engines[2], unsigned *n)
{
	if (strcmp(s, "both") == 0) {
		engines[0] = "io_uring";
		engines[1] = "epoll";
		*n = 2;
		return true;
	}
	if (strcmp(s, "auto") != 0 && strcmp(s, "io_uring") != 0 && strcmp(s, "epoll") != 0)
		return false;
	engines[0] = s;
	*n = 1;
	return true;
}

#endif
