/*
 * The Criterion hooks that give a test binary one shared S3 server
 * (s3_server.h).  Included once, after criterion/hooks.h, by each test file
 * that uses it: the hooks are definitions, on lines of their own.
 */
#ifndef LS_S3_SHARED_HOOKS_H
#define LS_S3_SHARED_HOOKS_H

#include "s3_server.h"

ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
	(void)set;
	ls_s3_shared_start();
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
	(void)stats;
	ls_s3_shared_stop();
}

#endif
