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
import shutil
import subprocess
from collections.abc import Mapping

from skiff.core.hookspecs import (
    DriverNotSupported,
    StorageContext,
    hookimpl,
)
from skiff.plugins.storage._common import backing_fs, check_storage_opts
from skiff.plugins.storage._dirlayers import DirectoryLayers


class VfsDriver(DirectoryLayers):
    """Layers as plain directories, each a complete copy of its parent."""

    name = "vfs"

    def __init__(self, ctx: StorageContext) -> None:
        if ctx.options:
            names = ", ".join(sorted(ctx.options))
            raise ValueError(f"the vfs storage driver takes no options (got {names})")
        if shutil.which("cp") is None:
            raise DriverNotSupported("vfs needs cp(1) from coreutils, which is not on PATH")
        self.home = ctx.home
        self.layers = os.path.join(self.home, "dir")
        os.makedirs(self.layers, mode=0o700, exist_ok=True)
        self._sweep()

    def _create(self, layer_id: str, parent: str | None) -> None:
        dst = self._vacant(layer_id)
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

    def _delete(self, path: str) -> None:
        shutil.rmtree(path)

    # -- StorageDriver -----------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        return [("Backing Filesystem", backing_fs(self.home))]

    def create_rw(self, id: str, parent: str | None, storage_opts: Mapping[str, str]) -> None:
        check_storage_opts(self.name, storage_opts)
        self._create(id, parent)

    def metadata(self, id: str) -> dict[str, str]:
        self._existing(id)
        return {}


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_storage_drivers() -> dict[str, type[VfsDriver]]:
    return {"vfs": VfsDriver}
