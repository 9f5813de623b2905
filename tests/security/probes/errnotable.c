/* errnotable: what every x86 syscall answers in this process, one line each.
 *
 * For the differential test of seccomp filters: run in a container of each
 * engine with the same capabilities, the two tables must match, syscall for
 * syscall.  Every syscall number of the three x86 ABIs is tried (x86_64, x32
 * with bit 30 set, i386 through int 0x80), each in a child of its own, with
 * arguments that are invalid for every syscall (-1: a bad descriptor, a bad
 * address, bad flags), so that a call the filter lets through fails in the
 * kernel's argument checks and does nothing.  Then the calls whose filter
 * rules look at arguments, with real arguments: personality values, clone
 * flags, socket families.
 *
 * Lines: "<abi> <what> <outcome>", the outcome "ok" (returned >= 0),
 * "E<errno>", "exit<code>" (the call ended the child: exit, exit_group),
 * "sig<n>" (the call killed it: rt_sigreturn with a garbage frame) or "hang"
 * (still blocked after a second: pause, or i386 sigsuspend with every signal
 * masked, which the parent then kills).  Calls that create a process (fork,
 * vfork, clone, clone3) run in inline assembly that makes the new process
 * exit at once, without touching memory it might share with its parent.
 *
 * x86_64 only; build with gcc -static -O2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define X32_BIT 0x40000000L
#define MAX_NR 470     /* beyond the newest syscall of any kernel the tests meet */
#define MAX_X32_NR 560 /* x32's own numbers go up to 547 */

enum abi { X86_64, X32, I386 };

/* A syscall on the 64-bit entry.  With `forks`, a new process (the call
 * returned 0) exits at once (exit, 60) without returning to C. */
static long sys64(long nr, long forks, long a, long b, long c)
{
    long ret;
    register long r10 __asm__("r10") = -1L;
    register long r8 __asm__("r8") = -1L;
    register long r9 __asm__("r9") = -1L;
    register long r12 __asm__("r12") = forks;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "test %%r12, %%r12\n\t"
        "jz 1f\n\t"
        "mov $60, %%eax\n\t"
        "xor %%edi, %%edi\n\t"
        "syscall\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9), "r"(r12)
        : "rcx", "r11", "memory");
    return ret;
}

/* The same through int 0x80, the i386 entry (32-bit arguments; the fourth to
 * sixth are -1).  %rbp, the sixth argument's register, is kept in %r13; the
 * kernel zeroes %r8-%r11 on this entry. */
static long sys32(long nr, long forks, long a, long b, long c)
{
    long ret;
    register long r12 __asm__("r12") = forks;
    __asm__ volatile(
        "mov %%rbp, %%r13\n\t"
        "mov $-1, %%ebp\n\t"
        "int $0x80\n\t"
        "mov %%r13, %%rbp\n\t"
        "test %%eax, %%eax\n\t"
        "jnz 1f\n\t"
        "test %%r12, %%r12\n\t"
        "jz 1f\n\t"
        "mov $1, %%eax\n\t"
        "xor %%ebx, %%ebx\n\t"
        "int $0x80\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(-1L), "D"(-1L), "r"(r12)
        : "r8", "r9", "r10", "r11", "r13", "memory");
    /* the i386 entry answers in %eax: sign-extend it */
    return (long)(int)ret;
}

static long call(enum abi abi, long nr, long a, long b, long c, int forks)
{
    if (abi == I386)
        return sys32(nr, forks, a, b, c);
    return sys64(abi == X32 ? (nr | X32_BIT) : nr, forks, a, b, c);
}

static const char *ABI[] = {"x86_64", "x32", "i386"};

static int makes_process(enum abi abi, long nr)
{
    if (abi == I386)
        return nr == 2 || nr == 120 || nr == 190 || nr == 435;
    return nr == 56 || nr == 57 || nr == 58 || nr == 435;
}

/* Run one call in a child; print its outcome. */
static void probe(enum abi abi, const char *what, long nr, long a, long b, long c)
{
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(2);
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(fds[0]);
        alarm(1);
        long rc = call(abi, nr, a, b, c, makes_process(abi, nr));
        long out = rc < 0 && rc > -4096 ? rc : 0;
        if (write(fds[1], &out, sizeof out) != sizeof out)
            _exit(3);
        _exit(0);
    }
    close(fds[1]);
    long out;
    ssize_t got = -1;
    /* a call may block with every signal masked (i386 sigsuspend): give it
       a second and a half, then kill it */
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    if (poll(&pfd, 1, 1500) == 1)
        got = read(fds[0], &out, sizeof out);
    else
        kill(pid, SIGKILL);
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (got == sizeof out) {
        if (out == 0)
            printf("%s %s ok\n", ABI[abi], what);
        else
            printf("%s %s E%ld\n", ABI[abi], what, -out);
    } else if (WIFSIGNALED(status) &&
               (WTERMSIG(status) == SIGALRM || WTERMSIG(status) == SIGKILL)) {
        printf("%s %s hang\n", ABI[abi], what);
    } else if (WIFSIGNALED(status)) {
        printf("%s %s sig%d\n", ABI[abi], what, WTERMSIG(status));
    } else {
        printf("%s %s exit%d\n", ABI[abi], what, WEXITSTATUS(status));
    }
}

int main(void)
{
    char what[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long nr = 0; nr <= MAX_NR; nr++) {
        snprintf(what, sizeof what, "%ld", nr);
        probe(X86_64, what, nr, -1L, -1L, -1L);
    }
    for (long nr = 0; nr <= MAX_X32_NR; nr++) {
        snprintf(what, sizeof what, "%ld", nr);
        probe(X32, what, nr, -1L, -1L, -1L);
    }
    for (long nr = 0; nr <= MAX_NR; nr++) {
        snprintf(what, sizeof what, "%ld", nr);
        probe(I386, what, nr, -1L, -1L, -1L);
    }

    /* personality (135 on x86_64, 136 on i386): a few allowed values, some not */
    static const long personalities[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffffL,
                                         0x0040000 /* ADDR_NO_RANDOMIZE */,
                                         0x0400000 /* READ_IMPLIES_EXEC */, 0x1};
    for (size_t i = 0; i < sizeof personalities / sizeof *personalities; i++) {
        snprintf(what, sizeof what, "personality(%#lx)", personalities[i]);
        probe(X86_64, what, 135, personalities[i], 0, 0);
        probe(I386, what, 136, personalities[i], 0, 0);
    }

    /* clone (56; 120 on i386) with each namespace flag, and without any */
    static const long clone_flags[] = {SIGCHLD, 0x00020000 | SIGCHLD, 0x02000000 | SIGCHLD,
                                       0x04000000 | SIGCHLD, 0x08000000 | SIGCHLD,
                                       0x10000000 | SIGCHLD, 0x20000000 | SIGCHLD,
                                       0x40000000 | SIGCHLD};
    for (size_t i = 0; i < sizeof clone_flags / sizeof *clone_flags; i++) {
        snprintf(what, sizeof what, "clone(%#lx)", clone_flags[i]);
        probe(X86_64, what, 56, clone_flags[i], 0, 0);
        probe(I386, what, 120, clone_flags[i], 0, 0);
    }

    /* socket (41) per address family, stream then datagram */
    for (long family = 0; family < 46; family++) {
        snprintf(what, sizeof what, "socket(%ld,stream)", family);
        probe(X86_64, what, 41, family, SOCK_STREAM, 0);
        snprintf(what, sizeof what, "socket(%ld,dgram)", family);
        probe(X86_64, what, 41, family, SOCK_DGRAM, 0);
    }
    return 0;
}
