/*
 * The optimized CPU kernels built with AVX2, FMA and F16C (kernels/
 * CMakeLists.txt adds the flags to this file only, on x86-64).  The driver
 * calls this table only when the running CPU reports all three features.
 */
#ifdef LSK_CPU_AVX2
#define LSK_KERN_TABLE lsk_cpu_kern_avx2
#define LSK_KERN_LABEL "avx2"
#include "lsk_cpu_kern.h"
#else
/* Not an x86-64 build: the driver knows no AVX2 table. */
typedef int lsk_cpu_avx2_unused;
#endif
