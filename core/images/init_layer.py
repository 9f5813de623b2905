"""The init layer under every container's read-write layer (Docker's
``initlayer.Setup``): the mount points and placeholder files the runtime
mounts over, so they exist whatever the image holds."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Mapping

__all__ = ["INIT_DIRS", "INIT_FILES", "init_tar", "write_into"]

#: directories every container's init layer holds (Docker's initlayer)
INIT_DIRS = ("dev", "dev/pts", "dev/shm", "etc", "proc", "sys")
#: empty placeholder files of the init layer; the daemon bind-mounts the real ones
INIT_FILES = (".dockerenv", "dev/console", "etc/hostname", "etc/hosts", "etc/resolv.conf")


def _content(extra: Mapping[str, bytes] | None) -> tuple[list[str], dict[str, bytes]]:
    """The init layer's directories (sorted: parents first) and files."""
    files: dict[str, bytes] = dict.fromkeys(INIT_FILES, b"")
    for path, data in (extra or {}).items():
        files[path.strip("/")] = data
    dirs = set(INIT_DIRS)
    for path in files:
        parent = os.path.dirname(path)
        while parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    return sorted(dirs), files


def write_into(root_fd: int, extra: Mapping[str, bytes] | None,
               owner: tuple[int, int] | None = None) -> int:
    """Write the init layer's content into the empty directory ``root_fd``
    (a driver's ``apply_files``); returns the bytes of file content written.

    The same entries, modes and symlink as ``init_tar`` with its extraction
    (a tar built and unpacked was most of a create's layer work): every
    entry is new (``O_EXCL``, ``mkdir``), made relative to its parent's
    descriptor, and a parent is opened without following a symlink, so
    nothing already there is written through.  ``owner``: host (uid, gid)
    of every entry (a remapped container's root); None leaves the daemon's.
    """
    dirs, files = _content(extra)
    fds: dict[str, int] = {"": root_fd}
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    written = 0
    try:
        for d in dirs:
            parent = fds[os.path.dirname(d)]
            name = os.path.basename(d)
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = fds[d] = os.open(name, flags, dir_fd=parent)
            os.fchmod(fd, 0o755)  # exact, whatever the umask
            if owner is not None:
                os.fchown(fd, *owner)
        for path, data in sorted(files.items()):
            fd = os.open(os.path.basename(path),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=fds[os.path.dirname(path)])
            try:
                os.fchmod(fd, 0o644)
                if owner is not None:
                    os.fchown(fd, *owner)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            written += len(data)
        os.symlink("/proc/mounts", "mtab", dir_fd=fds["etc"])
        if owner is not None:
            os.chown("mtab", *owner, dir_fd=fds["etc"], follow_symlinks=False)
    finally:
        for path, fd in fds.items():
            if path:
                os.close(fd)
    return written


def init_tar(extra: Mapping[str, bytes] | None) -> bytes:
    """The init layer's content as a small tar (Docker's initlayer.Setup)."""
    now = time.time()
    buf = io.BytesIO()
    dirs, files = _content(extra)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = now
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = 0o644
            info.mtime = now
            tar.addfile(info, io.BytesIO(files[path]))
        link = tarfile.TarInfo("etc/mtab")
        link.type = tarfile.SYMTYPE
        link.linkname = "/proc/mounts"
        link.mtime = now
        tar.addfile(link)
    return buf.getvalue()
