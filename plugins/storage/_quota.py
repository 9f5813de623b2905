"""Disk-quota helpers shared by the storage drivers (``--storage-opt size=``).

Docker spells a size the way ``docker run --memory`` does: a number with an
optional binary unit (``b``, ``k``, ``m``, ``g``, ``t``, ``p``; ``10G``,
``512m``, ``100MB``).  Two backends live here:

* :class:`LoopQuota` -- the fallback that works on any filesystem: a sparse
  file holding an ext4 filesystem of the requested size, loop-mounted where the
  layer keeps its writable files.  A write past the size fails with ENOSPC.
* btrfs qgroups, used by the btrfs driver (see ``btrfs.py``).

overlay2 mounts the loop filesystem over the layer's own directory (so
``diff``, ``work`` and ``merged`` live in it; overlayfs wants upper and work
on one mount) with copies of the small metadata files.

XFS and ext4 project quotas are not implemented yet (this machine's kernel has
no XFS quota support to test them against); see docs/storage-drivers.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess

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
