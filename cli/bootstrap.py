"""Base images made from host binaries, for machines without a registry.

``skiff image bootstrap busybox`` packs Debian's statically linked busybox,
its applet links and a minimal /etc into a one-layer image, as the official
busybox image is laid out.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from collections.abc import Callable

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\ntty:x:5:\nnobody:x:65534:\nnogroup:x:65534:\n"


def _add(tar: tarfile.TarFile, name: str, *, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755,
         data: bytes = b"", link: str = "", mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = int(mtime)
    info.uname = info.gname = "root"
    if kind == tarfile.SYMTYPE:
        info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def busybox(binary: str = "/bin/busybox") -> tuple[bytes, list[str]]:
    """The rootfs tar of a busybox image and its Dockerfile-style changes."""
    if not os.path.exists(binary):
        raise FileNotFoundError(
            f"{binary} not found: install Debian's busybox-static (apt-get install busybox-static)"
        )
    listing = subprocess.run([binary, "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    now = time.time()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "home", "root", "tmp",
                "var", "var/spool", "var/spool/mail", "var/www", "proc", "sys", "dev"]
        modes = {"root": 0o700, "tmp": 0o1777}
        for d in dirs:
            _add(tar, d, mode=modes.get(d, 0o755), mtime=now)
        with open(binary, "rb") as f:
            _add(tar, "bin/busybox", kind=tarfile.REGTYPE, data=f.read(), mtime=now)
        for path in sorted(set(listing)):
            path = path.lstrip("/")
            if path == "bin/busybox" or not path:
                continue
            parent = os.path.dirname(path)
            if parent not in dirs:
                dirs.append(parent)
                _add(tar, parent, mtime=now)
            target = os.path.relpath("bin/busybox", parent)
            _add(tar, path, kind=tarfile.SYMTYPE, link=target, mtime=now)
        _add(tar, "etc/passwd", kind=tarfile.REGTYPE, data=PASSWD.encode(), mode=0o644,
             mtime=now)
        _add(tar, "etc/group", kind=tarfile.REGTYPE, data=GROUP.encode(), mode=0o644, mtime=now)
    return buf.getvalue(), ['CMD ["sh"]']


BASES: dict[str, Callable[[str], tuple[bytes, list[str]]]] = {"busybox": busybox}
