"""The init layer under every container's read-write layer (Docker's
``initlayer.Setup``): the mount points and placeholder files the runtime
mounts over, so they exist whatever the image holds."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Mapping

__all__ = ["INIT_DIRS", "INIT_FILES", "init_tar"]

#: directories every container's init layer holds (Docker's initlayer)
INIT_DIRS = ("dev", "dev/pts", "dev/shm", "etc", "proc", "sys")
#: empty placeholder files of the init layer; the daemon bind-mounts the real ones
INIT_FILES = (".dockerenv", "dev/console", "etc/hostname", "etc/hosts", "etc/resolv.conf")


def init_tar(extra: Mapping[str, bytes] | None) -> bytes:
    """The init layer's content as a small tar (Docker's initlayer.Setup)."""
    now = time.time()
    buf = io.BytesIO()
    files: dict[str, bytes] = dict.fromkeys(INIT_FILES, b"")
    for path, data in (extra or {}).items():
        files[path.strip("/")] = data
    dirs = set(INIT_DIRS)
    for path in files:
        parent = os.path.dirname(path)
        while parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
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
