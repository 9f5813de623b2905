"""Helpers shared by the storage drivers (this kind's folder only)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import IO

from skiff.core import archive
from skiff.core.hookspecs import Change

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def validate_id(layer_id: str, reserved: tuple[str, ...] = ()) -> str:
    """Refuse a layer id that could name something else on disk or in mount data.

    Ids become path components and (overlay2) parts of comma-separated mount
    options, so ``/``, ``,``, ``:`` and ``..`` have no place in them.
    """
    if not isinstance(layer_id, str) or not _ID.fullmatch(layer_id) or layer_id in reserved:
        raise ValueError(f"invalid layer id {layer_id!r}")
    return layer_id


def check_storage_opts(driver: str, opts: Mapping[str, str], known: tuple[str, ...] = ()) -> None:
    """A per-container ``--storage-opt`` the driver does not handle is an error."""
    for key in opts:
        if key not in known:
            raise ValueError(
                f"--storage-opt {key!r} is not supported by the {driver} storage driver"
            )


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount in this mount namespace."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append((_unescape(fields[4]), fields[sep + 1]))
    return out


def backing_fs(path: str) -> str:
    """Filesystem type holding ``path`` (the innermost mount containing it)."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    for point, kind in mount_table():
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, kind
    return fstype


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``, deepest last (in mount order)."""
    real = os.path.realpath(path).rstrip("/")
    return [p for p, _ in mount_table() if p == real or p.startswith(real + "/")]


def supports_d_type(directory: str) -> bool:
    """Whether the filesystem of ``directory`` reports file types in readdir.

    overlayfs needs d_type on its upper filesystem to find whiteouts (xfs
    formatted with ftype=0 lacks it).  ``directory`` must hold an entry.  The
    standard library hides d_type, so this reads it with libc's readdir
    (struct dirent of 64-bit glibc and musl).  If that cannot be done, it
    answers True and leaves the verdict to the probe mount.
    """
    import ctypes

    class Dirent(ctypes.Structure):
        _fields_ = (
            ("d_ino", ctypes.c_uint64),
            ("d_off", ctypes.c_int64),
            ("d_reclen", ctypes.c_ushort),
            ("d_type", ctypes.c_ubyte),
            ("d_name", ctypes.c_char * 256),
        )

    try:
        if ctypes.sizeof(ctypes.c_void_p) != 8:
            return True
        libc = ctypes.CDLL(None, use_errno=True)
        libc.opendir.restype = ctypes.c_void_p
        libc.opendir.argtypes = (ctypes.c_char_p,)
        libc.readdir.restype = ctypes.POINTER(Dirent)
        libc.readdir.argtypes = (ctypes.c_void_p,)
        libc.closedir.argtypes = (ctypes.c_void_p,)
    except (OSError, AttributeError):
        return True
    handle = libc.opendir(os.fsencode(directory))
    if not handle:
        return True
    try:
        while True:
            ent = libc.readdir(handle)
            if not ent:
                return True
            if ent.contents.d_name not in (b".", b".."):
                return ent.contents.d_type != 0  # DT_UNKNOWN
    finally:
        libc.closedir(handle)


class WholeTreeDiffs:
    """``diff``, ``changes`` and ``diff_size`` for drivers whose every layer is a
    whole tree (vfs copies, btrfs snapshots): a layer is compared with its
    parent's tree.  The driver provides ``_existing(id) -> path``.
    """

    def _existing(self, id: str) -> str:
        raise NotImplementedError

    def diff(self, id: str, parent: str | None) -> IO[bytes]:
        path = self._existing(id)
        if parent is None:
            return archive.tar_directory(path)
        return archive.tar_changes(path, self.changes(id, parent))

    def changes(self, id: str, parent: str | None) -> list[Change]:
        path = self._existing(id)
        lower = self._existing(parent) if parent is not None else None
        return archive.changes_between(lower, path)

    def diff_size(self, id: str, parent: str | None) -> int:
        path = self._existing(id)
        if parent is None:
            return archive.directory_size(path)
        return archive.changes_size(path, self.changes(id, parent))


class MountedTreeDiffs:
    """``diff``, ``changes`` and ``diff_size`` for drivers whose layer is a whole
    tree only while mounted (aufs unions, devicemapper thin devices): both
    trees are mounted with ``get`` and compared, then released with ``put``.
    ``_check_diff_args`` lets a driver refuse an unknown layer or wrong parent
    before anything is mounted.
    """

    def get(self, id: str) -> str:
        raise NotImplementedError

    def put(self, id: str) -> None:
        raise NotImplementedError

    def _check_diff_args(self, id: str, parent: str | None) -> None:
        """Raise for an unknown layer or a parent that is not its parent."""

    def _changes(self, id: str, parent: str | None) -> list[Change]:
        root = self.get(id)
        try:
            if parent is None:
                return archive.changes_between(None, root)
            lower = self.get(parent)
            try:
                return archive.changes_between(lower, root)
            finally:
                self.put(parent)
        finally:
            self.put(id)

    def diff(self, id: str, parent: str | None) -> IO[bytes]:
        self._check_diff_args(id, parent)
        changes = self._changes(id, parent) if parent is not None else None
        root = self.get(id)
        try:
            if changes is None:
                return archive.tar_directory(root, on_close=lambda: self.put(id))
            return archive.tar_changes(root, changes, on_close=lambda: self.put(id))
        except BaseException:
            self.put(id)
            raise

    def changes(self, id: str, parent: str | None) -> list[Change]:
        self._check_diff_args(id, parent)
        return self._changes(id, parent)

    def diff_size(self, id: str, parent: str | None) -> int:
        self._check_diff_args(id, parent)
        changes = self._changes(id, parent)
        root = self.get(id)
        try:
            return archive.changes_size(root, changes)
        finally:
            self.put(id)
