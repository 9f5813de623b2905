"""Resolving a path inside a root the way the kernel would after a chroot.

The container init resolves mount destinations with it: a symlink planted in
an image or a container must never lead it outside the container's root.
The daemon does not use it: it resolves container paths with
``openat2(RESOLVE_IN_ROOT)`` on a held descriptor (:mod:`skiff.core.fdops`),
which a rename between resolving and using cannot defeat.  Standard library
only, because the fork server imports it.
"""

from __future__ import annotations

import errno
import os
import stat


def secure_join(root: str, unsafe: str) -> str:
    """``unsafe`` resolved as if ``root`` were ``/``: a host path under ``root``.

    Symlinks inside ``root`` are followed, but an absolute link target or a
    ``..`` restarts from, or stops at, ``root``, as the kernel does after a
    chroot.  Components that do not exist are kept as written, so the caller
    can create them.  This is the algorithm of Go's filepath-securejoin.
    """
    root = os.path.normpath(root)
    pending = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        current = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 255:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", unsafe)
            target = os.readlink(current)
            if target.startswith("/"):
                resolved = []
            pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)
