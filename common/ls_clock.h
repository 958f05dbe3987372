/*
 * The two clocks lorastore reads.  Monotonic time measures intervals and
 * deadlines (it never jumps); Unix time is what a record says it was created
 * at.  Each has one name here, for every module.
 */
#ifndef LS_CLOCK_H
#define LS_CLOCK_H

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds. */
static inline int64_t ls_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CLOCK_MONOTONIC in milliseconds. */
static inline int64_t ls_mono_ms(void)
{
	return ls_mono_ns() / 1000000;
}

/* CLOCK_REALTIME in nanoseconds since the Unix epoch. */
static inline int64_t ls_unix_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif
