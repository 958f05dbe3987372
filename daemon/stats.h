/*
 * The daemon's figures, as of now: one snapshot (metrics.h's struct) taken
 * from residency, leases, sessions and counters, which both the stats reply
 * and the /metrics endpoint are made from, so that the two never disagree.
 */
#ifndef LS_STATS_H
#define LS_STATS_H

#include "metrics.h"
#include "server.h"

void ls_stats_snapshot(struct ls_server *srv, struct ls_metrics_snapshot *out);

#endif
