/*
 * Counting the system calls of a stretch of code: from ls_syscall_trap_on()
 * on, every system call of the calling thread but exit_group and
 * rt_sigreturn traps (seccomp, SIGSYS), is counted, and fails with ENOSYS;
 * it cannot be turned off, so it is meant for a child process that ends
 * with ls_syscall_trap_exit().  x86-64 only (the handler sets the return
 * register).
 */
#ifndef LS_SYSCALL_TRAP_H
#define LS_SYSCALL_TRAP_H

/* 0, or -1 where it cannot be done (another architecture, seccomp refused). */
int ls_syscall_trap_on(void);

/* System calls trapped so far. */
long ls_syscall_trapped(void);

/* End the process with status code, by exit_group (the one call let through). */
void ls_syscall_trap_exit(int code) __attribute__((noreturn));

#endif
