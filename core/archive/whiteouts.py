"""OCI whiteouts and overlayfs's own markers of deleted and opaque entries.

``.wh.<name>`` deletes ``<name>`` from the layers below and ``.wh..wh..opq``
hides everything below in its directory; overlayfs writes a 0/0 character
device and the ``trusted.overlay.opaque`` xattr instead.
"""

from __future__ import annotations

import os
import stat

from skiff.core.archive.paths import _DIR_FLAGS

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
#: AUFS keeps its own metadata under top-level names with this prefix.
WHITEOUT_META_PREFIX = ".wh..wh."
#: overlayfs marks a directory that hides the layers below it with this xattr.
OPAQUE_XATTR = "trusted.overlay.opaque"



def is_overlay_whiteout(st: os.stat_result) -> bool:
    """overlayfs's whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque_fd(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False



def _drop_whiteouts(dir_fd: int) -> None:
    """Remove overlay whiteouts anywhere under an (opaque) upper directory."""
    for name in os.listdir(dir_fd):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if is_overlay_whiteout(st):
            os.unlink(name, dir_fd=dir_fd)
        elif stat.S_ISDIR(st.st_mode):
            cfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _drop_whiteouts(cfd)
            finally:
                os.close(cfd)
