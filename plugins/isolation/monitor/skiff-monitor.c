/*
 * skiff-monitor: what stays of a container's shim once the command runs.
 *
 *     skiff-monitor PID FD [BUNDLE]
 *
 * The Python shim (plugins/isolation/shim.py) does all the set-up: it gets
 * the spec, forks the container's init and passes it go.  Once the command
 * has started it has three duties left, and keeping a Python interpreter
 * (about 12 MB RSS) for them was most of skiff's cost per idle container.
 * So the shim execve()s this program, which keeps its pid, its session, its
 * children (PID is the init, still ours to wait for) and the descriptor FD,
 * the daemon's connection, and does only those three things:
 *
 *   1. wait for PID (reaping any other child that comes to us meanwhile, as
 *      the subreaper of a remapped container's init);
 *   2. record the exit code, 128+N for death by signal N, in BUNDLE/exitcode
 *      (written under a temporary name and renamed: a reader never sees half
 *      a number); an exec has no BUNDLE and records nothing;
 *   3. send `{"exit": N}` and a newline on FD, the message the daemon's
 *      ForkServerProcess.wait reads (plugins/isolation/shimclient.py).
 *
 * The daemon sends nothing once the command started (it signals the init
 * through a pidfd, resizes the pty itself), so nothing is read from FD.  A
 * daemon that went away costs nothing: the send fails quietly (no SIGPIPE)
 * and the exit code is on disk for the next daemon.
 *
 * So that a later daemon can tell what it would adopt, the monitor records
 * itself in BUNDLE/monitor, one JSON line written atomically:
 *     {"monitor": "skiff-monitor", "protocol": 1, "pid": M, "start": T, "init": PID}
 * (T: M's start time, which proves a pid is still M).  Protocol 1 is the
 * above: nothing is read, one exit message is sent, and the monitor exits
 * only after exitcode is written, so a pidfd on M turning readable means
 * the exit code is on disk.
 *
 * Built static (gcc -static -Os) by setup.py, as skiff-init is.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROTOCOL 1

static int parse_int(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > INT_MAX)
        return -1;
    *out = v;
    return 0;
}

static int write_all(int fd, const char *data, size_t len, int is_socket)
{
    while (len > 0) {
        ssize_t n = is_socket ? send(fd, data, len, MSG_NOSIGNAL) : write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* When this process started, in clock ticks since boot (field 22 of
   /proc/self/stat), 0 if unknown: with the pid, what proves to a later
   daemon that a pid is still this monitor (core/containers/pidproof.py). */
static unsigned long long start_ticks(void)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* the command name may hold spaces and parentheses: count from its end */
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ')
        return 0;
    p += 2;  /* field 3 */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

/* BUNDLE/NAME holds DATA, or is left as it was: never half written. */
static void record(const char *bundle, const char *name, const char *data, size_t len)
{
    char tmp[PATH_MAX], path[PATH_MAX];
    int a = snprintf(tmp, sizeof tmp, "%s/.%s.%d", bundle, name, (int)getpid());
    int b = snprintf(path, sizeof path, "%s/%s", bundle, name);
    if (a < 0 || b < 0 || (size_t)a >= sizeof tmp || (size_t)b >= sizeof path)
        return;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    int bad = write_all(fd, data, len, 0);
    if (close(fd) != 0)
        bad = -1;
    if (bad != 0 || rename(tmp, path) != 0)
        unlink(tmp);
}

int main(int argc, char **argv)
{
    long pid, fd;
    if (argc < 3 || argc > 4 || parse_int(argv[1], &pid) != 0 || pid == 0 ||
        parse_int(argv[2], &fd) != 0) {
        fprintf(stderr, "usage: skiff-monitor PID FD [BUNDLE]\n");
        return 2;
    }
    const char *bundle = argc == 4 ? argv[3] : "";
    char line[160];
    int len;

    /* as the shim was: no ptrace and no /proc/<pid> access for others;
       the connection is close-on-exec again, as it was in the shim */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    /* an ignored SIGCHLD (the fork server's) survives execve and would have
       the kernel reap the init before waitpid could see its status */
    signal(SIGCHLD, SIG_DFL);

    if (*bundle) {
        len = snprintf(line, sizeof line,
                       "{\"monitor\": \"skiff-monitor\", \"protocol\": %d, "
                       "\"pid\": %d, \"start\": %llu, \"init\": %ld}\n",
                       PROTOCOL, (int)getpid(), start_ticks(), pid);
        record(bundle, "monitor", line, (size_t)len);
    }

    int status = 0;
    for (;;) {
        int st;
        pid_t got = waitpid(-1, &st, __WALL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            /* the init is not our child: nothing to report; the daemon
               waits on its pidfd and reads what exitcode holds */
            perror("skiff-monitor: waitpid");
            return 1;
        }
        if (got == (pid_t)pid) {
            status = st;
            break;
        }
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status)
             : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 255;

    if (*bundle) {
        len = snprintf(line, sizeof line, "%d\n", code);
        record(bundle, "exitcode", line, (size_t)len);
    }
    len = snprintf(line, sizeof line, "{\"exit\": %d}\n", code);
    write_all((int)fd, line, (size_t)len, 1);
    return 0;
}
