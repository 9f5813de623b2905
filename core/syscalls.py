"""Thin, typed wrappers over the compiled ``_syscalls`` module.

Each wrapper raises ``OSError`` with the real errno, as the os module does,
so callers handle failures the same way for every system call.
"""

from __future__ import annotations

import os

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
    fd = lib.skiff_openat2(dir_fd, _c(path), flags | os.O_CLOEXEC, mode, resolve)
    if fd < 0:
        _check(-1, "openat2", os.fsdecode(path))
    return fd


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
