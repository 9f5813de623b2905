"""Thin, typed wrappers over the compiled ``_syscalls`` module.

Each wrapper raises ``OSError`` with the real errno, as the os module does,
so callers handle failures the same way for every system call.
"""

from __future__ import annotations

import errno
import os

# an extension module cffi builds at install time: no source for mypy to read
from skiff.core._syscalls import ffi, lib  # type: ignore[import-not-found]

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# the new mount API, <linux/mount.h>
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
MOUNT_ATTR_NOEXEC = 0x08
MOUNT_ATTR_IDMAP = 0x00100000

# <linux/magic.h>
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# <linux/openat2.h>
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


def _check(rc: int, what: str, path: str | None = None) -> None:
    if rc != 0:
        err = ffi.errno
        if path is None:
            raise OSError(err, f"{what}: {os.strerror(err)}")
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _c(s: str | bytes | None):
    if s is None:
        return ffi.NULL
    return s.encode() if isinstance(s, str) else s


def mount(source: str | None, target: str, fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    _check(lib.mount(_c(source), _c(target), _c(fstype), flags, _c(data)), "mount", target)


def umount(target: str, flags: int = 0) -> None:
    _check(lib.umount2(_c(target), flags), "umount", target)


def unshare(flags: int) -> None:
    _check(lib.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(lib.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(lib.skiff_pivot_root(_c(new_root), _c(put_old)), "pivot_root", new_root)


def capset(effective: int, permitted: int, inheritable: int) -> None:
    _check(lib.skiff_capset(effective, permitted, inheritable), "capset")


def capget() -> tuple[int, int, int]:
    eff, perm, inh = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
    _check(lib.skiff_capget(eff, perm, inh), "capget")
    return eff[0], perm[0], inh[0]


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def bounding_keep(keep: int, last: int | None = None) -> None:
    _check(lib.skiff_bounding_keep(keep, last_cap() if last is None else last), "capbset_drop")


def ambient_clear() -> None:
    # EINVAL on kernels without ambient capabilities: nothing to clear there.
    if lib.skiff_ambient_clear() != 0 and ffi.errno != 22:
        _check(-1, "prctl(PR_CAP_AMBIENT)")


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> None:
    _check(lib.skiff_prctl(option, a2, a3, a4, a5), "prctl")


def openat2(dir_fd: int, path: str | bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): a new descriptor for ``path`` resolved from ``dir_fd`` under ``resolve``.

    With ``RESOLVE_IN_ROOT`` the kernel treats ``dir_fd`` as the root for this
    lookup: absolute symlinks and ``..`` cannot leave it.  ``O_CLOEXEC`` is
    always added.
    """
    cpath = _c(path)
    for _ in range(_OPENAT2_TRIES):
        fd = lib.skiff_openat2(dir_fd, cpath, flags | os.O_CLOEXEC, mode, resolve)
        # EAGAIN: a ".." under RESOLVE_IN_ROOT/BENEATH raced with a rename or a
        # mount somewhere on the system; the kernel asks the caller to retry
        if fd >= 0 or ffi.errno != errno.EAGAIN:
            break
    if fd < 0:
        _check(-1, "openat2", os.fsdecode(path))
    return fd


_OPENAT2_TRIES = 128


def open_tree(dir_fd: int, path: str, flags: int) -> int:
    """open_tree(2): a descriptor of the mount at ``path`` (or, with
    ``OPEN_TREE_CLONE``, of a detached copy of it, recursive with
    ``AT_RECURSIVE``).  ``O_CLOEXEC`` is always added."""
    fd = lib.skiff_open_tree(dir_fd, _c(path), flags | os.O_CLOEXEC)
    if fd < 0:
        _check(-1, "open_tree", path or None)
    return fd


def move_mount(from_fd: int, to_fd: int) -> None:
    """move_mount(2) of the mount ``from_fd`` (from ``open_tree``) onto the
    file or directory ``to_fd`` (an ``O_PATH`` descriptor): attached where the
    descriptor points, whatever its path has become since it was opened."""
    _check(lib.skiff_move_mount(from_fd, b"", to_fd, b"",
                                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
           "move_mount")


def mount_setattr(fd: int, attr_set: int, attr_clr: int = 0, propagation: int = 0,
                  recursive: bool = False, userns_fd: int = -1) -> None:
    """mount_setattr(2) on the mount ``fd`` refers to (``MOUNT_ATTR_*`` flags).

    With ``userns_fd`` (a ``/proc/<pid>/ns/user`` descriptor) the mount, which
    must be a detached one from ``open_tree(OPEN_TREE_CLONE)``, becomes an
    idmapped mount: ids on disk are seen through that namespace's mapping.
    """
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    if userns_fd >= 0:
        attr_set |= MOUNT_ATTR_IDMAP
    _check(lib.skiff_mount_setattr(fd, b"", flags, attr_set, attr_clr, propagation,
                                   max(userns_fd, 0)),
           "mount_setattr")


def setfsuid(uid: int) -> int:
    """setfsuid(2) for the calling thread only; returns the previous fsuid."""
    return int(lib.setfsuid(uid))


def setfsgid(gid: int) -> int:
    """setfsgid(2) for the calling thread only; returns the previous fsgid."""
    return int(lib.setfsgid(gid))
def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """Install a seccomp filter on the calling thread: ``program`` is an array of
    ``struct sock_filter`` (8 bytes each, host order, at most 4096).

    Needs CAP_SYS_ADMIN, or no_new_privs set; a filter, once installed, stays
    for this process and everything it executes or forks.
    """
    if not program or len(program) % 8 or len(program) > 8 * 4096:
        raise OSError(22, f"seccomp: a filter of {len(program)} bytes is not a BPF program")
    _check(lib.skiff_seccomp_filter(flags, program, len(program) // 8), "seccomp")


def prjquota_info(path: str | None = None, fd: int = -1) -> None:
    """Raise ``OSError`` unless project quota accounting is on for the filesystem
    of block device ``path`` (or, with ``path`` None, of open file ``fd``):
    ESRCH when it is off, ENOSYS when the kernel has no quota support."""
    _check(lib.skiff_prjquota_info(_c(path), fd), "quotactl(Q_GETINFO, PRJQUOTA)", path)


def prjquota_set(project: int, limit: int, path: str | None = None, fd: int = -1) -> None:
    """Set project ``project``'s block limit (hard and soft) to ``limit`` bytes;
    0 removes the limit.  The filesystem is named as for ``prjquota_info``."""
    _check(lib.skiff_prjquota_set(_c(path), fd, project, limit),
           "quotactl(Q_SETQUOTA, PRJQUOTA)", path)


def prjquota_get(project: int, path: str | None = None, fd: int = -1) -> tuple[int, int]:
    """(limit, bytes used) of project ``project``."""
    limit, used = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    _check(lib.skiff_prjquota_get(_c(path), fd, project, limit, used),
           "quotactl(Q_GETQUOTA, PRJQUOTA)", path)
    return limit[0], used[0]
