"""Disk-quota helpers shared by the storage drivers (``--storage-opt size=``).

Docker spells a size the way ``docker run --memory`` does: a number with an
optional binary unit (``b``, ``k``, ``m``, ``g``, ``t``, ``p``; ``10G``,
``512m``, ``100MB``).  The backends:

* :class:`LoopQuota` -- the fallback that works on any filesystem: a sparse
  file holding an ext4 filesystem of the requested size, loop-mounted where the
  layer keeps its writable files.  A write past the size fails with ENOSPC.
* :class:`ProjectQuota` -- XFS or ext4 project quota, when the data-root's
  filesystem is mounted with ``prjquota``: each limited layer directory gets a
  project ID of its own (``FS_IOC_FSSETXATTR`` with ``FS_XFLAG_PROJINHERIT``,
  so everything created below inherits it) and a block limit (``quotactl``
  ``Q_SETQUOTA`` on ``PRJQUOTA``).  No mount, no loop device.  XFS reports
  an exceeded project quota as ENOSPC (on purpose), ext4 as EDQUOT.
* btrfs qgroups, used by the btrfs driver (see ``btrfs.py``).

overlay2 uses the project quota where the data-root has it (as Docker does)
and otherwise mounts the loop filesystem over the layer's own directory (so
``diff``, ``work`` and ``merged`` live in it; overlayfs wants upper and work
on one mount) with copies of the small metadata files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import struct
import subprocess
import threading
from collections.abc import Iterator

from skiff.core import syscalls

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
#: ext4 needs room for its own metadata; smaller sizes are refused
MIN_SIZE = 16 << 20


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``10G``, ``512m``, ``100MB``); ValueError when malformed."""
    m = _SIZE.fullmatch(str(text))
    if not m:
        raise ValueError(f"invalid size {text!r}: use a number with an optional unit (10G, 512m)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: it must be positive")
    return value


def _run(args: list[str], what: str) -> str:
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() or proc.stdout.decode(errors="replace")
        raise OSError(f"{what} failed ({' '.join(args[:3])} ...): {err.strip()}")
    return proc.stdout.decode(errors="replace")


class LoopQuota:
    """A size-limited ext4 filesystem in a sparse file, one per writable layer.

    ``image`` is the backing file, ``mountpoint`` where it is mounted on the
    host.  The mount is made lazily (``ensure_mounted``) so a daemon restart,
    which unmounts everything at shutdown, finds it again on first use.
    """

    backend = "loop"

    def __init__(self, image: str, mountpoint: str) -> None:
        self.image = image
        self.mountpoint = mountpoint

    def create(self, size: int) -> None:
        """Make the backing file and its filesystem (not mounted yet)."""
        if size < MIN_SIZE:
            raise ValueError(
                f"--storage-opt size must be at least {MIN_SIZE >> 20}MB for the "
                "loop-device quota backend"
            )
        os.makedirs(os.path.dirname(self.image), mode=0o700, exist_ok=True)
        try:
            with open(self.image, "xb") as f:
                f.truncate(size)
            # No journal and no reserved blocks: the whole size is the container's.
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                  "-E", "nodiscard,root_owner=0:0", self.image], "making the quota filesystem")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.image)
            raise

    def exists(self) -> bool:
        return os.path.exists(self.image)

    def ensure_mounted(self) -> str:
        if not os.path.ismount(self.mountpoint):
            os.makedirs(self.mountpoint, mode=0o700, exist_ok=True)
            # mount(8) sets up the loop device with autoclear: it goes with the mount.
            _run(["mount", "-o", "loop,noatime", self.image, self.mountpoint],
                 "mounting the quota filesystem")
            lost = os.path.join(self.mountpoint, "lost+found")
            if os.path.isdir(lost):
                os.rmdir(lost)
        return self.mountpoint

    def unmount(self) -> None:
        if os.path.ismount(self.mountpoint):
            _run(["umount", self.mountpoint], "unmounting the quota filesystem")

    def destroy(self, remove_mountpoint: bool = True) -> None:
        with contextlib.suppress(OSError):
            self.unmount()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["umount", "-l", self.mountpoint], check=False,
                           capture_output=True)
        if remove_mountpoint:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(self.mountpoint)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.image)


# ---------------------------------------------------------------------------
# Project quota (XFS, ext4)
# ---------------------------------------------------------------------------

#: <linux/fs.h>: _IOR('X', 31, struct fsxattr), _IOW('X', 32, struct fsxattr)
FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820
FS_XFLAG_PROJINHERIT = 0x00000200
#: struct fsxattr: xflags, extsize, nextents, projid, cowextsize, pad[8]
_FSXATTR = struct.Struct("=IIIII8s")


def _mount_of(path: str) -> tuple[str, str, set[str]]:
    """(fstype, source, super options) of the innermost mount holding ``path``."""
    real = os.path.realpath(path)
    best = ("", "unknown", "", set[str]())
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, tail = pre.split(), post.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            point = fields[4].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                opts = set(fields[5].split(",")) | set(tail[2].split(","))
                best = (point, tail[0], tail[1], opts)
    return best[1], best[2], best[3]


def project_id(path: str) -> int:
    """The project ID of a file or directory (0: none)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        raw = fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(_FSXATTR.size))
    finally:
        os.close(fd)
    return _FSXATTR.unpack(raw)[3]


def set_project_id(path: str, project: int) -> None:
    """Give ``path`` project ``project``; directories also pass it on (PROJINHERIT)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fields = list(_FSXATTR.unpack(fcntl.ioctl(fd, FS_IOC_FSGETXATTR,
                                                  bytes(_FSXATTR.size))))
        fields[3] = project
        if os.path.isdir(path):
            fields[0] |= FS_XFLAG_PROJINHERIT
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR, _FSXATTR.pack(*fields))
    finally:
        os.close(fd)


class ProjectQuota:
    """XFS or ext4 project quota over the directories of one driver home.

    Project IDs, as Docker allots them: above the project ID of ``home``
    (0 unless the operator set one, to keep skiff clear of IDs used for
    other purposes), the next after the highest one found under ``home`` at
    start-up.  Build it with :meth:`probe`, which returns None when the
    filesystem has no enforced project quota.
    """

    def __init__(self, home: str, fstype: str, special: str | None) -> None:
        self.home = home
        self.fstype = fstype
        self.backend = f"{fstype} project quota"
        #: block device for quotactl(2); None: quotactl_fd(2) on an fd of home
        self._special = special
        self._lock = threading.Lock()
        self.base = project_id(home)
        highest = self.base
        for entry in os.scandir(home):
            if entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    highest = max(highest, project_id(entry.path))
        self._next = highest + 1

    @classmethod
    def probe(cls, home: str) -> ProjectQuota | None:
        """The project quota of ``home``'s filesystem, or None when it has none
        (not XFS/ext4, not mounted with ``prjquota``, or a kernel without quota)."""
        fstype, source, opts = _mount_of(home)
        if fstype not in ("xfs", "ext4") or not opts & {"prjquota", "pquota"}:
            return None
        for special in (None, source):
            try:
                if special is None:
                    with _opened(home) as fd:
                        syscalls.prjquota_info(fd=fd)
                elif source.startswith("/dev/"):
                    syscalls.prjquota_info(special)
                else:
                    return None
            except OSError as exc:
                if special is None and exc.errno in (errno.ENOSYS, errno.EINVAL):
                    continue  # a kernel before quotactl_fd (5.14): try the device
                return None
            try:
                return cls(home, fstype, special)
            except OSError:
                return None
        return None

    def _set(self, project: int, limit: int) -> None:
        if self._special is not None:
            syscalls.prjquota_set(project, limit, self._special)
            return
        with _opened(self.home) as fd:
            syscalls.prjquota_set(project, limit, fd=fd)

    def _get(self, project: int) -> tuple[int, int]:
        if self._special is not None:
            return syscalls.prjquota_get(project, self._special)
        with _opened(self.home) as fd:
            return syscalls.prjquota_get(project, fd=fd)

    def assign(self, directory: str, size: int) -> int:
        """Limit what ``directory`` (and everything in it) holds to ``size`` bytes.

        The directory's tree gets a new project ID; files created later inherit
        it.  Returns the project ID.
        """
        with self._lock:
            project = self._next
            self._next += 1
        self._set(project, size)
        try:
            for root, dirs, files in os.walk(directory):
                for name in (*dirs, *files):
                    path = os.path.join(root, name)
                    if not os.path.islink(path):
                        set_project_id(path, project)
            set_project_id(directory, project)
        except BaseException:
            with contextlib.suppress(OSError):
                self._set(project, 0)
            raise
        return project

    def limit(self, directory: str) -> int:
        """The byte limit on ``directory`` (0: none of ours)."""
        try:
            project = project_id(directory)
            if project <= self.base:
                return 0
            return self._get(project)[0]
        except OSError:
            return 0

    def release(self, directory: str) -> None:
        """Drop the limit of ``directory``'s project (before the directory goes)."""
        with contextlib.suppress(OSError):
            project = project_id(directory)
            if project > self.base:
                self._set(project, 0)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
