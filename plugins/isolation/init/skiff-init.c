/*
 * skiff-init: the tiny PID 1 of `docker run --init`.
 *
 *     /sbin/docker-init -- command [args...]
 *
 * A process that is PID 1 of a PID namespace has two duties the usual
 * command does not fulfil: the kernel hands it every orphaned process to
 * reap, and signals sent to it have no default action (SIGTERM from
 * `docker stop` would be ignored by a shell that installs no handler).  This
 * init forks the command, forwards the signals it receives to it, reaps
 * every zombie and exits with the command's status (128+N when a signal N
 * killed it), as tini does for Docker.
 *
 *     /sbin/docker-init --pause
 *
 * holds a namespace without a command: the pause process of a CRI pod
 * sandbox (docs/cri.md), which only reaps what is given to it and exits 0 on
 * SIGTERM, SIGINT or SIGHUP.
 *
 * Built static (gcc -static -Os) at install time, so it runs in any image,
 * with or without a libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* Synchronous signals concern this process itself and cannot be forwarded;
   SIGTTIN/SIGTTOU must keep their default so background reads stop us. */
static const int not_forwarded[] = {SIGFPE, SIGILL, SIGSEGV, SIGBUS, SIGABRT,
                                    SIGTRAP, SIGSYS, SIGTTIN, SIGTTOU};

static void die(const char *what)
{
    fprintf(stderr, "docker-init: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int pause_forever(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        die("sigprocmask");
    if (getpid() != 1)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    for (;;) {
        int sig = sigwaitinfo(&set, NULL);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            die("sigwaitinfo");
        }
        if (sig != SIGCHLD)
            return 0;
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--pause") == 0)
        return pause_forever();
    int first = 1;
    if (first < argc && strcmp(argv[first], "--") == 0)
        first++;
    if (first >= argc) {
        fprintf(stderr, "usage: %s -- command [args...]\n", argv[0]);
        return 1;
    }

    /* Block the signals we forward: they queue up and sigtimedwait takes
       them one by one.  A blocked signal is never discarded, even for a
       namespace's PID 1 without a handler. */
    sigset_t wait_set, parent_mask;
    sigfillset(&wait_set);
    for (size_t i = 0; i < sizeof(not_forwarded) / sizeof(not_forwarded[0]); i++)
        sigdelset(&wait_set, not_forwarded[i]);
    if (sigprocmask(SIG_SETMASK, &wait_set, &parent_mask) != 0)
        die("sigprocmask");

    /* Not PID 1 (the host's PID namespace): orphans must still come to us. */
    if (getpid() != 1)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        /* Its own process group, in the foreground of the terminal if there
           is one: Ctrl-C reaches the command once, not through us twice. */
        setpgid(0, 0);
        if (isatty(STDIN_FILENO)) {
            /* A background group taking the terminal gets SIGTTOU (blocking
               it is not enough: it stops us once unblocked); ignore it. */
            signal(SIGTTOU, SIG_IGN);
            tcsetpgrp(STDIN_FILENO, getpgrp());
            signal(SIGTTOU, SIG_DFL);
        }
        sigprocmask(SIG_SETMASK, &parent_mask, NULL);
        execvp(argv[first], &argv[first]);
        int err = errno;
        fprintf(stderr, "docker-init: exec %s: %s\n", argv[first], strerror(err));
        _exit(err == ENOENT ? 127 : 126);
    }

    int status = 0;
    int child_done = 0;
    while (!child_done) {
        siginfo_t info;
        int sig = sigwaitinfo(&wait_set, &info);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            die("sigwaitinfo");
        }
        if (sig != SIGCHLD) {
            /* The child may be gone already (ESRCH); the SIGCHLD follows. */
            kill(child, sig);
            continue;
        }
        for (;;) {
            int st;
            pid_t pid = waitpid(-1, &st, WNOHANG);
            if (pid <= 0)
                break;
            if (pid == child) {
                status = st;
                child_done = 1;
            }
        }
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 1;
}
