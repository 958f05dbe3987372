/*
 * Latency histograms with fixed bucket bounds (seconds), as Prometheus
 * exposes them: counts per bucket (not cumulative here), a sum and a count.
 * Kept by the loop thread; the metrics thread reads copies.
 */
#ifndef LS_HIST_H
#define LS_HIST_H

#include <stdint.h>

/* Buckets of a histogram, besides +Inf. */
#define LS_HIST_BUCKETS 14

struct ls_hist {
	uint64_t counts[LS_HIST_BUCKETS + 1]; /* the last is over every bound (+Inf) */
	double sum;                           /* seconds */
	uint64_t count;
};

/* Bounds of acquire latencies: 10 us to 1 s. */
extern const double ls_hist_acquire_bounds[LS_HIST_BUCKETS];
/* Bounds of load latencies: 1 ms to 60 s. */
extern const double ls_hist_load_bounds[LS_HIST_BUCKETS];

static inline void ls_hist_observe(struct ls_hist *h, const double *bounds, double seconds)
{
	unsigned i = 0;
	while (i < LS_HIST_BUCKETS && seconds > bounds[i])
		i++;
	h->counts[i]++;
	h->sum += seconds;
	h->count++;
}

#endif
