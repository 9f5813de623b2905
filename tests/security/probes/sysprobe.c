/* sysprobe: one syscall-level attack per sub-command, for the seccomp breakout tests.
 *
 * Built statically at test time (gcc -static) and put into a busybox image,
 * because busybox has no applet for these calls.  Each sub-command prints one
 * line, "ok ..." when the call did what the attacker wanted or
 * "err <errno> <message>" when it was refused, and exits 0 or 1 to match.
 *
 *   keyctl                 read the id of the user keyring (kernel keyrings are
 *                          not namespaced: CVE-2016-0728 and friends)
 *   add_key                add a key to a new process keyring
 *   bpf                    create a BPF array map (the verifier is a large
 *                          attack surface: CVE-2021-3490, CVE-2022-23222)
 *   perf                   open a software perf event on itself (CVE-2013-2094,
 *                          CVE-2023-2235)
 *   io_uring               set up an io_uring (CVE-2022-29582, CVE-2023-2598)
 *   handle PATH            (run on the host) print PATH's file handle, as
 *                          name_to_handle_at gives it: "<type> <hex bytes>"
 *   shocker FILE TYPE HEX  open_by_handle_at on FILE's filesystem with that handle
 *                          and print what the file holds: the "shocker" exploit,
 *                          reading a host file from inside a container
 *   ptrace PID             attach to PID with PTRACE_SEIZE, then detach
 *   unshare32              unshare(CLONE_NEWUSER) through int 0x80, the i386
 *                          entry: a filter that only knew x86_64 numbers would
 *                          let it through
 *   reach NR               call syscall NR with arguments that are invalid for
 *                          every syscall: "err EPERM" from a filter means the
 *                          kernel never saw the call, any other answer that it did
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

static int report(long rc, const char *what)
{
    if (rc < 0) {
        int e = errno;
        printf("err %d %s: %s\n", e, what, strerror(e));
        return 1;
    }
    printf("ok %s %ld\n", what, rc);
    return 0;
}

static int do_handle(const char *path)
{
    struct file_handle *fh = malloc(sizeof *fh + MAX_HANDLE_SZ);
    int mount_id;
    fh->handle_bytes = MAX_HANDLE_SZ;
    if (name_to_handle_at(AT_FDCWD, path, fh, &mount_id, 0) != 0)
        return report(-1, "name_to_handle_at");
    printf("%d ", fh->handle_type);
    const unsigned char *bytes = fh->f_handle;
    for (unsigned i = 0; i < fh->handle_bytes; i++)
        printf("%02x", bytes[i]);
    printf("\n");
    return 0;
}

static int do_shocker(const char *file, const char *type, const char *hex)
{
    size_t n = strlen(hex) / 2;
    if (n > MAX_HANDLE_SZ) {
        printf("err 0 handle too long\n");
        return 1;
    }
    struct file_handle *fh = malloc(sizeof *fh + MAX_HANDLE_SZ);
    fh->handle_type = atoi(type);
    fh->handle_bytes = n;
    unsigned char *bytes = fh->f_handle;
    for (size_t i = 0; i < n; i++)
        sscanf(hex + 2 * i, "%2hhx", &bytes[i]);
    int mount_fd = open(file, O_RDONLY);
    if (mount_fd < 0)
        return report(-1, "open");
    int fd = open_by_handle_at(mount_fd, fh, O_RDONLY);
    if (fd < 0)
        return report(-1, "open_by_handle_at");
    char buf[256];
    ssize_t got = read(fd, buf, sizeof buf - 1);
    if (got < 0)
        return report(-1, "read");
    buf[got] = 0;
    printf("ok read %s\n", buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: sysprobe keyctl|add_key|bpf|perf|io_uring|handle|shocker|"
                        "ptrace|unshare32|reach ...\n");
        return 2;
    }
    const char *cmd = argv[1];
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(cmd, "keyctl"))
        return report(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 1),
                      "keyctl");
    if (!strcmp(cmd, "add_key"))
        return report(syscall(SYS_add_key, "user", "skiff-probe", "secret", 6,
                              KEY_SPEC_PROCESS_KEYRING), "add_key");
    if (!strcmp(cmd, "bpf")) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.map_type = BPF_MAP_TYPE_ARRAY;
        attr.key_size = 4;
        attr.value_size = 4;
        attr.max_entries = 1;
        return report(syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr), "bpf");
    }
    if (!strcmp(cmd, "perf")) {
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.size = sizeof attr;
        attr.type = PERF_TYPE_SOFTWARE;
        attr.config = PERF_COUNT_SW_TASK_CLOCK;
        attr.exclude_kernel = 1;
        attr.exclude_hv = 1;
        return report(syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0), "perf_event_open");
    }
    if (!strcmp(cmd, "io_uring")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        return report(syscall(SYS_io_uring_setup, 4, &p), "io_uring_setup");
    }
    if (!strcmp(cmd, "handle") && argc == 3)
        return do_handle(argv[2]);
    if (!strcmp(cmd, "shocker") && argc == 5)
        return do_shocker(argv[2], argv[3], argv[4]);
    if (!strcmp(cmd, "ptrace") && argc == 3) {
        pid_t pid = atoi(argv[2]);
        if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0)
            return report(-1, "ptrace");
        ptrace(PTRACE_DETACH, pid, 0, 0);
        return report(0, "ptrace");
    }
    if (!strcmp(cmd, "unshare32")) {
        long rc;
        /* 310 is unshare on i386; the answer comes back in %eax */
        __asm__ volatile("int $0x80" : "=a"(rc) : "a"(310L), "b"(0x10000000L)
                         : "r8", "r9", "r10", "r11", "memory");
        rc = (int)rc;
        if (rc < 0) {
            errno = (int)-rc;
            rc = -1;
        }
        return report(rc, "unshare through int 0x80");
    }
    if (!strcmp(cmd, "reach") && argc == 3) {
        long nr = atol(argv[2]);
        long rc = syscall(nr, -1L, -1L, -1L, -1L, -1L, -1L);
        if (rc < 0 && errno == EPERM) {
            printf("err %d filtered or refused: %s\n", EPERM, strerror(EPERM));
            return 1;
        }
        printf("reached %d\n", rc < 0 ? errno : 0);
        return 0;
    }
    fprintf(stderr, "sysprobe: unknown command %s\n", cmd);
    return 2;
}
