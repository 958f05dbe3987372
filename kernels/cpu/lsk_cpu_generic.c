/*
 * The optimized CPU kernels for any target: built with the project's flags
 * only, so this is the table a CPU without AVX2, FMA or F16C runs.
 */
#define LSK_KERN_TABLE lsk_cpu_kern_generic
#define LSK_KERN_LABEL "generic"
#include "lsk_cpu_kern.h"
