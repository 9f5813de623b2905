"""Which extended attributes travel in a tar, and reading them without following links."""

from __future__ import annotations

import errno
import os

#: xattrs never taken from a tar nor written to one.  overlayfs's private
#: attributes steer its lookups (opaque, redirect, metacopy): accepting them
#: from a tar would let a layer rewire the union; SELinux labels belong to the
#: host's policy, not to an image.
_PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_HOST_ONLY_XATTRS = ("security.selinux",)


def _xattr_allowed(name: str) -> bool:
    return not name.startswith(_PRIVATE_XATTR_PREFIXES) and name not in _HOST_ONLY_XATTRS


def _read_xattrs(target: int | bytes) -> list[tuple[str, bytes]]:
    """Extended attributes of an open fd or (without following) a path, sorted."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOENT):
            return []
        raise
    out = []
    for name in sorted(names):
        if not _xattr_allowed(name):
            continue
        try:
            out.append((name, os.getxattr(target, name, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
    return out
