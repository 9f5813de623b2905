"""The ``btrfs`` storage driver: every layer a subvolume, every child a snapshot.

Docker's layout::

    <home>/subvolumes/<id>/    the layer's whole tree (a btrfs subvolume)

A child layer starts as a writable snapshot of its parent, so it shares every
block with it until written; like vfs, each layer then holds a complete tree
and whiteouts are applied by deleting (``archive.extract(whiteouts="delete")``).
Diffs compare a layer with its parent's tree.

The subvolume operations go through btrfs-progs (``btrfs subvolume
create/snapshot/delete``): measured on a loop-backed btrfs here, each call
takes 4-7 ms, well below the cost of unpacking any layer, so the ioctls
through cffi would buy nothing worth their code.

Disk quota: ``--storage-opt size=`` (and the daemon-wide ``btrfs.size``) puts
a btrfs qgroup limit on the container's subvolume.  Like Docker's, the limit is
on the *referenced* size: the image's blocks the snapshot shares count too.
``btrfs.min_space`` refuses smaller sizes (Docker's option).  Quotas are
switched on for the filesystem the first time a size is asked for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping

from skiff.core.hookspecs import (
    DriverNotSupported,
    StorageContext,
    hookimpl,
)
from skiff.plugins.storage._common import backing_fs, check_storage_opts
from skiff.plugins.storage._dirlayers import DirectoryLayers
from skiff.plugins.storage._quota import parse_size

_KNOWN_OPTIONS = ("size", "min_space")
#: st_ino of every btrfs subvolume's root directory
_SUBVOL_INO = 256


class BtrfsDriver(DirectoryLayers):
    """Layers as btrfs subvolumes; a child is a snapshot of its parent."""

    name = "btrfs"

    def __init__(self, ctx: StorageContext) -> None:
        unknown = sorted(set(ctx.options) - set(_KNOWN_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) for the btrfs storage driver: {unknown}")
        self.min_space = parse_size(ctx.options["min_space"]) if "min_space" in ctx.options \
            else 0
        self.default_size = parse_size(ctx.options["size"]) if ctx.options.get("size") else 0
        if shutil.which("btrfs") is None:
            raise DriverNotSupported(
                "the btrfs storage driver needs the btrfs command (Debian package "
                "btrfs-progs), which is not on PATH"
            )
        probe = ctx.data_root if os.path.exists(ctx.data_root) else os.path.dirname(ctx.data_root)
        fs = backing_fs(probe)
        if fs != "btrfs":
            raise DriverNotSupported(
                f"the data-root {ctx.data_root} is on {fs}, not btrfs; the btrfs storage "
                "driver needs a btrfs filesystem there (mount one on the data-root, or "
                "choose overlay2 or vfs)"
            )
        self.home = ctx.home
        self.layers = os.path.join(self.home, "subvolumes")
        os.makedirs(self.layers, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._quota_on = False
        self._sweep()

    # -- btrfs-progs -------------------------------------------------------

    @staticmethod
    def _btrfs(*args: str, what: str) -> str:
        proc = subprocess.run(["btrfs", *args], stdin=subprocess.DEVNULL,
                              capture_output=True, check=False)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise OSError(f"{what}: btrfs {' '.join(args[:2])} failed: {err}")
        return proc.stdout.decode(errors="replace")

    def _delete(self, path: str) -> None:
        """Delete subvolume ``path`` and any subvolume a container made inside it."""
        nested = []
        for dirpath, dirnames, _ in os.walk(path):
            for d in list(dirnames):
                full = os.path.join(dirpath, d)
                with contextlib.suppress(OSError):
                    st = os.lstat(full)
                    if st.st_ino == _SUBVOL_INO and not os.path.islink(full):
                        nested.append(full)
                        dirnames.remove(d)
        for sub in nested:
            self._delete(sub)
        qgroup = self._qgroup_of(path) if self._quota_on else None
        self._btrfs("subvolume", "delete", path, what=f"deleting {path}")
        if qgroup:
            with contextlib.suppress(OSError):
                self._btrfs("qgroup", "destroy", qgroup, self.home, what="dropping a qgroup")

    def _qgroup_of(self, path: str) -> str | None:
        try:
            return "0/" + self._btrfs("inspect-internal", "rootid", path,
                                      what="reading a subvolume id").strip()
        except OSError:
            return None

    # -- helpers -----------------------------------------------------------

    def _make(self, path: str, parent: str | None) -> None:
        if parent is None:
            self._btrfs("subvolume", "create", path, what=f"creating {path}")
            os.chmod(path, 0o755)
        else:
            self._btrfs("subvolume", "snapshot", self._existing(parent), path,
                        what=f"snapshotting {parent}")

    def _create(self, layer_id: str, parent: str | None, size: int = 0) -> None:
        dst = self._vacant(layer_id)
        if parent is not None:
            self._existing(parent)
        tmp = self._tmp(layer_id)
        self._make(tmp, parent)
        try:
            if size:
                self._limit(tmp, size)
            os.rename(tmp, dst)  # only a complete layer carries its name
        except BaseException:
            with contextlib.suppress(OSError):
                self._delete(tmp)
            raise

    def _limit(self, path: str, size: int) -> None:
        with self._lock:
            if not self._quota_on:
                self._btrfs("quota", "enable", self.home, what="enabling btrfs quotas")
                self._quota_on = True
        self._btrfs("qgroup", "limit", str(size), path, what="setting a btrfs qgroup limit")

    # -- StorageDriver -----------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        try:
            version = self._btrfs("--version", what="btrfs version").strip()
        except OSError:
            version = "unknown"
        return [
            ("Backing Filesystem", "btrfs"),
            ("Build Version", version),
            ("Quota Backend", "btrfs qgroups"),
        ]

    def create_rw(self, id: str, parent: str | None, storage_opts: Mapping[str, str]) -> None:
        check_storage_opts(self.name, storage_opts, known=("size",))
        size = parse_size(storage_opts["size"]) if storage_opts.get("size") else \
            self.default_size
        if size and size < self.min_space:
            raise ValueError(
                f"--storage-opt size={size} is below the btrfs.min_space of {self.min_space}"
            )
        self._create(id, parent, size)

    def metadata(self, id: str) -> dict[str, str]:
        return {"Path": self._existing(id)}


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_storage_drivers() -> dict[str, type[BtrfsDriver]]:
    return {"btrfs": BtrfsDriver}
