/*
 * Option parsing shared by the benchmarks: a number on the command line
 * within a range.  (A header, not a bench_*.c file: bench/CMakeLists.txt
 * makes every bench_*.c an executable.)
 */
#ifndef LS_BENCH_ARGS_H
#define LS_BENCH_ARGS_H

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

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

#endif
