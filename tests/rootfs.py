"""Shared test helper: a minimal busybox root filesystem in a directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = "/bin/busybox"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def make_busybox_rootfs(path: Path) -> Path:
    """Build a rootfs at ``path``: busybox with its applet links, root and nobody.

    ``bin/busybox`` is a copy of the host's static busybox; every applet of
    ``busybox --list-full`` is a symlink to ``/bin/busybox``.  /etc/passwd has
    root (0) and nobody (65534), /etc/group root and nogroup (65534); proc,
    sys, dev and tmp exist and are empty.  Returns ``path``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "root"):
        (path / d).mkdir(parents=True, exist_ok=True)
    os.chmod(path / "tmp", 0o1777)
    os.chmod(path / "root", 0o700)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = path / applet
        if link.name == "busybox" or os.path.lexists(link):
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (path / "etc" / "passwd").write_text(PASSWD)
    (path / "etc" / "group").write_text(GROUP)
    return path
