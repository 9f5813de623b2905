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
 * through a pidfd, resizes the pty itself), so protocol 1 reads nothing from
 * FD (protocol 2, below, reads one word).  A daemon that went away costs
 * nothing: the send fails quietly (no SIGPIPE) and the exit code is on disk
 * for the next daemon.
 *
 * So that a later daemon can tell what it would adopt, the monitor records
 * itself in BUNDLE/monitor, one JSON line written atomically:
 *     {"monitor": "skiff-monitor", "protocol": P, "pid": M, "start": T, "init": PID}
 * (T: M's start time, which proves a pid is still M).  Protocol 1 is the
 * above: nothing is read, one exit message is sent, and the monitor exits
 * only after exitcode is written, so a pidfd on M turning readable means
 * the exit code is on disk.
 *
 * Protocol 2 (live-restore):
 *
 *     skiff-monitor PID FD BUNDLE OUT ERR IN [SPOOL_MAX]
 *
 * OUT and ERR are dups of the daemon's read ends of the container's stdout
 * and stderr (with a TTY, OUT is the pty master and ERR is -1), IN of the
 * daemon's write end of its stdin (or -1).  While FD is connected the
 * monitor leaves them alone (a line "close-stdin" on FD closes IN, so that
 * the container sees the EOF the daemon gave it).  When FD hits end of file
 * (the daemon is gone) the container must not get EPIPE or block: the
 * monitor drains OUT and ERR into BUNDLE/spool, a 16-byte header
 * ("skspool1", then the count of bytes dropped, u64) followed by records
 * (u64 CLOCK_REALTIME ns, u32 length, u32 stream 1 or 2, the bytes), native
 * byte order.  Past SPOOL_MAX bytes of file (8 MiB by default) what is read
 * is counted in the header and dropped.  A new daemon connects to
 * BUNDLE/monitor.sock (0600): the monitor stops draining and answers
 *     {"protocol": 2, "fds": [names of what follows], "spool": "spool"}
 * with OUT, ERR, IN (those still open) as SCM_RIGHTS; that connection is FD
 * from then on (the exit message goes there).  The daemon replays the spool
 * and removes it; the monitor keeps its dups for the next time.  A second
 * connection while FD is connected is told {"error": ...} and closed.
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
#include <poll.h>
#include <stdint.h>
#include <time.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROTOCOL_PLAIN 1
#define PROTOCOL_SPOOL 2
#define SPOOL_NAME "spool"
#define SOCKET_NAME "monitor.sock"
#define SPOOL_MAX_DEFAULT (8ULL << 20)
#define SPOOL_HEADER 16

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

static int parse_fd(const char *s, int *out)
{
    long v;
    if (strcmp(s, "-1") == 0) {
        *out = -1;
        return 0;
    }
    if (parse_int(s, &v) != 0)
        return -1;
    *out = (int)v;
    return 0;
}

/* protocol 2's state: the dups of the daemon's ends, the spool */
static const char *stream_names[3] = {"stdout", "stderr", "stdin"};
static int ends[3] = {-1, -1, -1};
static int spool_fd = -1;
static unsigned long long spool_size, spool_dropped, spool_max = SPOOL_MAX_DEFAULT;
static int bundle_dir = -1;

static void spool_header(void)
{
    char header[SPOOL_HEADER];
    uint64_t dropped = spool_dropped;
    memcpy(header, "skspool1", 8);
    memcpy(header + 8, &dropped, 8);
    pwrite(spool_fd, header, sizeof header, 0);
}

/* Start draining: open (or go on with, if the last daemon never took it)
   BUNDLE/spool. */
static void spool_open(void)
{
    struct stat st;
    if (spool_fd >= 0)
        return;
    spool_fd = openat(bundle_dir, SPOOL_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (spool_fd < 0)
        return;  /* no spool: the reads below are dropped and counted */
    if (fstat(spool_fd, &st) != 0 || st.st_size < SPOOL_HEADER) {
        spool_dropped = 0;
        spool_size = SPOOL_HEADER;
        if (ftruncate(spool_fd, 0) == 0)
            spool_header();
    } else {
        uint64_t dropped = 0;
        pread(spool_fd, &dropped, 8, 8);
        spool_dropped = dropped;
        spool_size = (unsigned long long)st.st_size;
    }
}

static void spool_close(void)
{
    if (spool_fd < 0)
        return;
    spool_header();
    close(spool_fd);
    spool_fd = -1;
}

/* Read what end I (0 stdout, 1 stderr) holds into the spool; -1 at EOF
   (the end is closed), 0 when there is nothing more for now. */
static int spool_read(int i)
{
    char buf[65536];
    ssize_t n = read(ends[i], buf, sizeof buf);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (n == 0)
        return -1;
    if (spool_fd < 0 || spool_size + SPOOL_HEADER >= spool_max) {
        spool_dropped += (unsigned long long)n;
        if (spool_fd >= 0)
            spool_header();
        return 1;
    }
    if (spool_size + SPOOL_HEADER + (unsigned long long)n > spool_max) {
        /* what fits is kept, the rest of this read dropped and counted */
        ssize_t fits = (ssize_t)(spool_max - spool_size - SPOOL_HEADER);
        spool_dropped += (unsigned long long)(n - fits);
        n = fits;
        spool_header();
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct {
        uint64_t ns;
        uint32_t len;
        uint32_t stream;
    } head = {(uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec, (uint32_t)n,
              (uint32_t)(i + 1)};
    char rec[SPOOL_HEADER + sizeof buf];
    memcpy(rec, &head, SPOOL_HEADER);
    memcpy(rec + SPOOL_HEADER, buf, (size_t)n);
    ssize_t w = pwrite(spool_fd, rec, SPOOL_HEADER + (size_t)n, (off_t)spool_size);
    if (w == (ssize_t)(SPOOL_HEADER + (size_t)n))
        spool_size += (unsigned long long)w;
    else {
        spool_dropped += (unsigned long long)n;
        spool_header();
    }
    return 1;
}

static void drain_all(void)
{
    for (int i = 0; i < 2; i++)
        while (ends[i] >= 0) {
            int got = spool_read(i);
            if (got < 0) {
                close(ends[i]);
                ends[i] = -1;
            } else if (got == 0)
                break;
        }
}

/* BUNDLE/monitor.sock, 0600, or -1 */
static int listen_here(void)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    /* the bundle's path may not fit sun_path: bind through the directory */
    snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/" SOCKET_NAME, bundle_dir);
    unlinkat(bundle_dir, SOCKET_NAME, 0);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    mode_t old = umask(077);
    int bad = bind(s, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(s, 4) != 0;
    umask(old);
    /* a socket is made 0777 & ~umask: 0700, and only root connects anyway */
    if (!bad && fchmodat(bundle_dir, SOCKET_NAME, 0600, 0) != 0)
        bad = 1;
    if (bad) {
        perror("skiff-monitor: " SOCKET_NAME);
        close(s);
        return -1;
    }
    return s;
}

/* A new daemon on CONN: the ends as SCM_RIGHTS, with what they are. */
static int hand_over(int conn)
{
    char msg[256];
    int fds[3], n = 0;
    int len = snprintf(msg, sizeof msg, "{\"protocol\": %d, \"fds\": [", PROTOCOL_SPOOL);
    for (int i = 0; i < 3; i++)
        if (ends[i] >= 0) {
            len += snprintf(msg + len, sizeof msg - (size_t)len, "%s\"%s\"", n ? ", " : "",
                            stream_names[i]);
            fds[n++] = ends[i];
        }
    len += snprintf(msg + len, sizeof msg - (size_t)len, "], \"spool\": \"" SPOOL_NAME "\"}\n");
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = msg, .iov_len = (size_t)len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > 0) {
        mh.msg_control = control.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
    }
    ssize_t sent;
    do
        sent = sendmsg(conn, &mh, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent != len)
        return -1;
    return 0;
}

/* The init's wait status, once PID is reaped (any other child reaped too) */
static int reap(long pid, int *status)
{
    for (;;) {
        int st;
        pid_t got = waitpid(-1, &st, __WALL | WNOHANG);
        if (got == 0)
            return 0;
        if (got < 0)
            return errno == EINTR ? 0 : -1;
        if (got == (pid_t)pid) {
            *status = st;
            return 1;
        }
    }
}

/* Protocol 2's loop: until the init is reaped; its wait status */
static int watch(long pid, int *conn, int listener)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    int status = 0;
    for (;;) {
        int r = reap(pid, &status);
        if (r != 0)
            return r > 0 ? status : -1;
        struct pollfd p[5];
        int n = 0, at_conn = -1, at_listener = -1, at_end[2] = {-1, -1};
        p[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        if (*conn >= 0) {
            at_conn = n;
            p[n++] = (struct pollfd){.fd = *conn, .events = POLLIN};
        }
        if (listener >= 0) {
            at_listener = n;
            p[n++] = (struct pollfd){.fd = listener, .events = POLLIN};
        }
        if (*conn < 0)
            for (int i = 0; i < 2; i++)
                if (ends[i] >= 0) {
                    at_end[i] = n;
                    p[n++] = (struct pollfd){.fd = ends[i], .events = POLLIN};
                }
        if (poll(p, (nfds_t)n, sfd < 0 ? 100 : -1) < 0 && errno != EINTR)
            return -1;
        if (sfd >= 0 && (p[0].revents & POLLIN)) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
        }
        if (at_conn >= 0 && p[at_conn].revents) {
            char buf[512];
            ssize_t got = recv(*conn, buf, sizeof buf - 1, MSG_DONTWAIT);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                /* the daemon is gone: drain from now on */
                close(*conn);
                *conn = -1;
                spool_open();
            } else if (got > 0) {
                buf[got] = '\0';
                if (strstr(buf, "close-stdin") != NULL && ends[2] >= 0) {
                    close(ends[2]);
                    ends[2] = -1;
                }
            }
        }
        for (int i = 0; i < 2; i++)
            if (at_end[i] >= 0 && p[at_end[i]].revents && ends[i] >= 0 &&
                spool_read(i) < 0) {
                close(ends[i]);
                ends[i] = -1;
            }
        if (at_listener >= 0 && (p[at_listener].revents & POLLIN)) {
            int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0 && *conn >= 0) {
                static const char busy[] =
                    "{\"error\": \"this container's monitor is connected to a daemon\"}\n";
                send(c, busy, sizeof busy - 1, MSG_NOSIGNAL);
                close(c);
            } else if (c >= 0) {
                /* what was read is in the spool: the daemon replays it before
                   it reads the ends, so nothing comes out of order */
                spool_close();
                if (hand_over(c) == 0)
                    *conn = c;
                else {
                    close(c);
                    spool_open();
                }
            }
        }
    }
}

int main(int argc, char **argv)
{
    long pid, fd;
    if (argc < 3 || (argc > 4 && argc != 7 && argc != 8) || parse_int(argv[1], &pid) != 0 ||
        pid == 0 || parse_int(argv[2], &fd) != 0) {
        fprintf(stderr, "usage: skiff-monitor PID FD [BUNDLE [OUT ERR IN [SPOOL_MAX]]]\n");
        return 2;
    }
    const char *bundle = argc >= 4 ? argv[3] : "";
    char line[160];
    int len, protocol = PROTOCOL_PLAIN, conn = (int)fd, listener = -1;
    if (argc >= 7) {
        for (int i = 0; i < 3; i++)
            if (parse_fd(argv[4 + i], &ends[i]) != 0) {
                fprintf(stderr, "skiff-monitor: bad descriptor %s\n", argv[4 + i]);
                return 2;
            }
        long cap;
        if (argc == 8 && parse_int(argv[7], &cap) == 0)
            spool_max = (unsigned long long)cap;
    }

    /* as the shim was: no ptrace and no /proc/<pid> access for others;
       the connection is close-on-exec again, as it was in the shim */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    /* an ignored SIGCHLD (the fork server's) survives execve and would have
       the kernel reap the init before waitpid could see its status */
    signal(SIGCHLD, SIG_DFL);

    if (*bundle && (ends[0] >= 0 || ends[1] >= 0 || ends[2] >= 0)) {
        for (int i = 0; i < 3; i++)
            if (ends[i] >= 0) {
                fcntl(ends[i], F_SETFD, FD_CLOEXEC);
                /* the daemon's copies share the flag: trio reads them
                   non-blocking anyway */
                if (i < 2)
                    fcntl(ends[i], F_SETFL, fcntl(ends[i], F_GETFL) | O_NONBLOCK);
            }
        bundle_dir = open(bundle, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (bundle_dir >= 0)
            listener = listen_here();
        if (listener >= 0)
            protocol = PROTOCOL_SPOOL;
        else
            for (int i = 0; i < 3; i++)
                if (ends[i] >= 0) {
                    /* no socket to hand them over on: protocol 1, as if
                       the daemon had kept the only copies */
                    close(ends[i]);
                    ends[i] = -1;
                }
    }

    if (*bundle) {
        len = snprintf(line, sizeof line,
                       "{\"monitor\": \"skiff-monitor\", \"protocol\": %d, "
                       "\"pid\": %d, \"start\": %llu, \"init\": %ld}\n",
                       protocol, (int)getpid(), start_ticks(), pid);
        record(bundle, "monitor", line, (size_t)len);
    }

    int status = 0;
    if (protocol == PROTOCOL_SPOOL) {
        status = watch(pid, &conn, listener);
        if (status == -1) {
            perror("skiff-monitor: waitpid");
            return 1;
        }
        if (conn < 0)
            drain_all();  /* what the container wrote last, for the next daemon */
        spool_close();
        close(listener);
    } else
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
        if (listener >= 0)
            unlinkat(bundle_dir, SOCKET_NAME, 0);
    }
    if (conn >= 0) {
        len = snprintf(line, sizeof line, "{\"exit\": %d}\n", code);
        write_all(conn, line, (size_t)len, 1);
    }
    return 0;
}
