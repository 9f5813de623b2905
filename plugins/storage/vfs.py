"""The ``vfs`` storage driver: every layer is a full copy of its parent.

Slow and greedy with disk, but it needs nothing from the kernel or the
filesystem, so it works everywhere (including on top of overlayfs) and serves
as the reference the other drivers are compared against.  Layout, as Docker's:
``<data-root>/vfs/dir/<id>/`` holds the layer's whole tree.  A copy is made
with ``cp -a --reflink=auto``, which keeps owners, modes, times, hard links,
devices and extended attributes, and shares blocks where the filesystem can
(btrfs, xfs).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from typing import IO

from skiff.core import archive
from skiff.core.hookspecs import (
    DriverNotSupported,
    MountSpec,
    StorageContext,
    hookimpl,
)
from skiff.plugins.storage._common import (
    WholeTreeDiffs,
    backing_fs,
    check_storage_opts,
    validate_id,
)

_TMP = ".tmp-"


class VfsDriver(WholeTreeDiffs):
    """Layers as plain directories, each a complete copy of its parent."""

    name = "vfs"

    def __init__(self, ctx: StorageContext) -> None:
        if ctx.options:
            names = ", ".join(sorted(ctx.options))
            raise ValueError(f"the vfs storage driver takes no options (got {names})")
        if shutil.which("cp") is None:
            raise DriverNotSupported("vfs needs cp(1) from coreutils, which is not on PATH")
        self.home = ctx.home
        self.dirs = os.path.join(self.home, "dir")
        os.makedirs(self.dirs, mode=0o700, exist_ok=True)
        # Copies or removals cut short by a crash; nothing refers to them.
        for name in os.listdir(self.dirs):
            if name.startswith(_TMP):
                shutil.rmtree(os.path.join(self.dirs, name), ignore_errors=True)

    # -- helpers -----------------------------------------------------------

    def _dir(self, layer_id: str) -> str:
        return os.path.join(self.dirs, validate_id(layer_id))

    def _existing(self, layer_id: str) -> str:
        path = self._dir(layer_id)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"vfs layer {layer_id} does not exist")
        return path

    def _tmp(self, layer_id: str) -> str:
        return os.path.join(self.dirs, f"{_TMP}{layer_id}-{secrets.token_hex(4)}")

    def _create(self, layer_id: str, parent: str | None) -> None:
        dst = self._dir(layer_id)
        if os.path.lexists(dst):
            raise FileExistsError(f"vfs layer {layer_id} already exists")
        src = self._existing(parent) if parent is not None else None
        tmp = self._tmp(layer_id)
        try:
            if src is None:
                os.mkdir(tmp, 0o755)
                os.chmod(tmp, 0o755)
            else:
                proc = subprocess.run(
                    ["cp", "-a", "--reflink=auto", "--", src, tmp],
                    stdin=subprocess.DEVNULL, capture_output=True, check=False,
                )
                if proc.returncode != 0:
                    err = proc.stderr.decode(errors="replace").strip()
                    raise OSError(f"copying vfs layer {parent} for {layer_id} failed: {err}")
            # Only a complete copy ever carries the layer's name.
            os.rename(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- StorageDriver -----------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        return [("Backing Filesystem", backing_fs(self.home))]

    def create(self, id: str, parent: str | None) -> None:
        self._create(id, parent)

    def create_rw(self, id: str, parent: str | None, storage_opts: Mapping[str, str]) -> None:
        check_storage_opts(self.name, storage_opts)
        self._create(id, parent)

    def remove(self, id: str) -> None:
        path = self._dir(id)
        if not os.path.lexists(path):
            return
        # Renamed first so the layer is gone at once even if deleting is slow
        # or interrupted; start-up sweeps what is left.
        tmp = self._tmp(id)
        os.rename(path, tmp)
        shutil.rmtree(tmp)

    def exists(self, id: str) -> bool:
        return os.path.isdir(self._dir(id))

    def metadata(self, id: str) -> dict[str, str]:
        self._existing(id)
        return {}

    def mounts(self, id: str) -> list[MountSpec]:
        return [MountSpec("bind", self._existing(id), "/", ["rbind"])]

    def get(self, id: str) -> str:
        return self._existing(id)

    def put(self, id: str) -> None:
        pass  # nothing was mounted

    def apply_diff(self, id: str, parent: str | None, diff: IO[bytes]) -> int:
        path = self._existing(id)
        try:
            return archive.extract(diff, path, whiteouts="delete")
        except BaseException as exc:
            # Back to exactly the parent's tree: "empty" for a vfs layer.
            try:
                tmp = self._tmp(id)
                os.rename(path, tmp)
                shutil.rmtree(tmp, ignore_errors=True)
                self._create(id, parent)
            except Exception as again:  # report both; the first is the cause
                exc.add_note(f"resetting vfs layer {id} failed too: {again}")
            raise

    def cleanup(self) -> None:
        pass  # vfs mounts nothing on the host


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_storage_drivers() -> dict[str, type[VfsDriver]]:
    return {"vfs": VfsDriver}
