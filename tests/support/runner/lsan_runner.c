/*
 * Linked into every Criterion test executable.  Criterion's runner, the
 * process ctest starts, leaks a little of its own (an object per skipped
 * test); the tests themselves run in worker processes it executes anew,
 * which BoxFort marks with BXFI_MAP.  LeakSanitizer is told to ignore what
 * the runner allocates, and stays on in the workers, where every test's own
 * allocations are: no suppression has to name Criterion's library, which is
 * on the stack of every allocation a test makes.
 */
#include <stdlib.h>

/* LeakSanitizer's interface; absent (NULL) in a build without it. */
extern void __lsan_disable(void) __attribute__((weak));

__attribute__((constructor)) static void ls_lsan_quiet_in_the_runner(void)
{
	if (__lsan_disable && !getenv("BXFI_MAP"))
		__lsan_disable();
}
