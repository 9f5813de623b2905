"""cffi out-of-line build of ``skiff.core._syscalls``.

The container start path needs a handful of Linux system calls that the
standard library does not expose (mount, pivot_root, unshare, setns, capset,
prctl, openat2, seccomp).  They are compiled once, when the package is built, so no
process on the start path pays for a run-time ``cdef``.  Storage drivers (overlay and bind
mounts) and the isolation plugin (the container init) both use them, which is
why they live in core/.
"""

from cffi import FFI

CDEF = """
int mount(const char *source, const char *target, const char *fstype,
          unsigned long flags, const void *data);
int umount2(const char *target, int flags);
int unshare(int flags);
int setns(int fd, int nstype);
int skiff_pivot_root(const char *new_root, const char *put_old);
int skiff_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable);
int skiff_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable);
int skiff_bounding_keep(uint64_t keep, int last_cap);
int skiff_ambient_clear(void);
int skiff_prctl(int option, unsigned long a2, unsigned long a3,
                unsigned long a4, unsigned long a5);
int skiff_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode,
                  uint64_t resolve);
int skiff_open_tree(int dirfd, const char *path, unsigned int flags);
int skiff_move_mount(int from_dirfd, const char *from_path, int to_dirfd,
                     const char *to_path, unsigned int flags);
int skiff_mount_setattr(int dirfd, const char *path, unsigned int flags,
                        uint64_t attr_set, uint64_t attr_clr, uint64_t propagation,
                        uint64_t userns_fd);
int setfsuid(unsigned int fsuid);
int setfsgid(unsigned int fsgid);
int skiff_seccomp_filter(unsigned int flags, const unsigned char *program, unsigned int count);
int skiff_prjquota_info(const char *special, int fd);
int skiff_prjquota_set(const char *special, int fd, uint32_t id, uint64_t limit);
int skiff_prjquota_get(const char *special, int fd, uint32_t id, uint64_t *limit,
                       uint64_t *used);
"""

SOURCE = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <sys/fsuid.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <linux/quota.h>
#include <string.h>

#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

int skiff_pivot_root(const char *new_root, const char *put_old)
{
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

int skiff_capset(uint64_t eff, uint64_t perm, uint64_t inh)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    data[0].effective = (uint32_t)eff;
    data[1].effective = (uint32_t)(eff >> 32);
    data[0].permitted = (uint32_t)perm;
    data[1].permitted = (uint32_t)(perm >> 32);
    data[0].inheritable = (uint32_t)inh;
    data[1].inheritable = (uint32_t)(inh >> 32);
    return (int)syscall(SYS_capset, &hdr, data);
}

int skiff_capget(uint64_t *eff, uint64_t *perm, uint64_t *inh)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    int rc = (int)syscall(SYS_capget, &hdr, data);
    if (rc != 0)
        return rc;
    *eff = ((uint64_t)data[1].effective << 32) | data[0].effective;
    *perm = ((uint64_t)data[1].permitted << 32) | data[0].permitted;
    *inh = ((uint64_t)data[1].inheritable << 32) | data[0].inheritable;
    return 0;
}

/* Drop every capability not in `keep` from the bounding set. */
int skiff_bounding_keep(uint64_t keep, int last_cap)
{
    for (int cap = 0; cap <= last_cap; cap++) {
        if (keep & ((uint64_t)1 << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
            return -1;
    }
    return 0;
}

int skiff_ambient_clear(void)
{
    return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
}

int skiff_prctl(int option, unsigned long a2, unsigned long a3,
                unsigned long a4, unsigned long a5)
{
    return prctl(option, a2, a3, a4, a5);
}

/* openat2(2): glibc has no wrapper.  RESOLVE_IN_ROOT lets the kernel resolve
   a container path (symlinks, "..") as if dirfd were "/", race-free. */
int skiff_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode,
                  uint64_t resolve)
{
    struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

/* Install a seccomp filter: `count` struct sock_filter instructions, as
   libseccomp's seccomp_export_bpf writes them.  The caller holds
   CAP_SYS_ADMIN or has set no_new_privs. */
int skiff_seccomp_filter(unsigned int flags, const unsigned char *program, unsigned int count)
{
    struct sock_fprog prog = {.len = (unsigned short)count,
                              .filter = (struct sock_filter *)program};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}
"""

SOURCE += r"""
/* The new mount API (Linux 5.2, mount_setattr 5.12): mounts made, changed
   and attached through descriptors, never through a path resolved twice. */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

struct skiff_mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

int skiff_open_tree(int dirfd, const char *path, unsigned int flags)
{
    return (int)syscall(SYS_open_tree, dirfd, path, flags);
}

int skiff_move_mount(int from_dirfd, const char *from_path, int to_dirfd,
                     const char *to_path, unsigned int flags)
{
    return (int)syscall(SYS_move_mount, from_dirfd, from_path, to_dirfd, to_path, flags);
}

int skiff_mount_setattr(int dirfd, const char *path, unsigned int flags,
                        uint64_t attr_set, uint64_t attr_clr, uint64_t propagation,
                        uint64_t userns_fd)
{
    /* userns_fd only counts with MOUNT_ATTR_IDMAP in attr_set (Linux 5.12) */
    struct skiff_mount_attr attr = {attr_set, attr_clr, propagation, userns_fd};
    return (int)syscall(SYS_mount_setattr, dirfd, path, flags, &attr, sizeof(attr));
}
"""

SOURCE += r"""
/* Project quotas (ext4, xfs) through quotactl(2): on the filesystem of block
   device `special`, or, when special is NULL, of the open file `fd`
   (quotactl_fd, Linux 5.14: no device node needed).  Limits are in bytes. */
static long skiff_qctl(const char *special, int fd, int cmd, uint32_t id, void *addr)
{
    if (special != NULL)
        return syscall(SYS_quotactl, QCMD(cmd, PRJQUOTA), special, id, addr);
    return syscall(SYS_quotactl_fd, fd, QCMD(cmd, PRJQUOTA), id, addr);
}

/* 0 when project quota accounting is on; ESRCH when off, ENOSYS without CONFIG_QUOTA */
int skiff_prjquota_info(const char *special, int fd)
{
    struct if_dqinfo info;
    memset(&info, 0, sizeof info);
    return (int)skiff_qctl(special, fd, Q_GETINFO, 0, &info);
}

int skiff_prjquota_set(const char *special, int fd, uint32_t id, uint64_t limit)
{
    struct if_dqblk d;
    memset(&d, 0, sizeof d);
    d.dqb_bhardlimit = (limit + QIF_DQBLKSIZE - 1) / QIF_DQBLKSIZE;
    d.dqb_bsoftlimit = d.dqb_bhardlimit;
    d.dqb_valid = QIF_BLIMITS;
    return (int)skiff_qctl(special, fd, Q_SETQUOTA, id, &d);
}

int skiff_prjquota_get(const char *special, int fd, uint32_t id, uint64_t *limit,
                       uint64_t *used)
{
    struct if_dqblk d;
    memset(&d, 0, sizeof d);
    int rc = (int)skiff_qctl(special, fd, Q_GETQUOTA, id, &d);
    if (rc != 0)
        return rc;
    *limit = d.dqb_bhardlimit * QIF_DQBLKSIZE;
    *used = d.dqb_curspace;
    return 0;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("skiff.core._syscalls", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
