/* The hostile side of tests/security/test_fd_races.py: a process in a
 * container that swaps a name for a symbolic link as fast as it can.
 *
 *   swapper [-c] A B TARGET SECONDS
 *
 * Once A exists (made by the operation under attack, or with -c by the
 * swapper itself), B is made a symbolic link to TARGET (a host path: the
 * daemon, not the container, would resolve it) and A and B are exchanged
 * with renameat2(RENAME_EXCHANGE) in a tight loop, so A is the real entry
 * half of the time and the link the other half, with no moment where it is
 * missing.  When A goes away the loop waits for it again; when the link is
 * gone (removed while it sat under A's name) a new one is made.  Prints the
 * number of exchanges once a second and stops after SECONDS.
 *
 * Built by the test with gcc -static: the busybox image has no compiler.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int create = 0;
    if (argc > 1 && strcmp(argv[1], "-c") == 0) {
        create = 1;
        argv++;
        argc--;
    }
    if (argc != 5) {
        fprintf(stderr, "usage: swapper [-c] A B TARGET SECONDS\n");
        return 2;
    }
    const char *a = argv[1], *b = argv[2], *target = argv[3];
    double end = now() + atof(argv[4]), report = now() + 1;
    unsigned long exchanges = 0, spins = 0, junks = 0;
    char junk[4096];
    struct stat st;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        if ((++spins & 1023) == 0) {
            double t = now();
            if (t >= report) {
                printf("exchanges=%lu\n", exchanges);
                report = t + 1;
            }
            if (t >= end)
                break;
        }
        if (lstat(a, &st) != 0) {
            if (create)
                mkdir(a, 0755);
            continue;
        }
        int a_is_link = S_ISLNK(st.st_mode);
        if (lstat(b, &st) != 0) {
            if (symlink(target, b) != 0)
                continue;
        } else if (!a_is_link && !S_ISLNK(st.st_mode)) {
            /* the operation replaced our link (it removed it while it sat
             * under A's name): move the old entry aside, make a new link */
            snprintf(junk, sizeof junk, "%s.junk%lu", b, ++junks);
            rename(b, junk);
            continue;
        }
        /* a short burst, then the names are checked again */
        for (int i = 0; i < 64; i++) {
            if (syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0)
                break;
            exchanges++;
        }
    }
    printf("exchanges=%lu\n", exchanges);
    return 0;
}
