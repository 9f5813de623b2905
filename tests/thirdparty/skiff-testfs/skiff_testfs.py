"""copyfs: a storage driver that lives outside skiff, as a third party's would.

Each layer is a whole directory tree, copied from its parent with
``cp -a --reflink=auto``.  It imports only ``skiff.core`` (the contract and
the safe archive code), registers through the ``skiff.storage`` entry point,
and is chosen with ``"storage-driver": "copyfs"`` in daemon.json.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import IO

from skiff.core import archive
from skiff.core.hookspecs import Change, MountSpec, StorageContext, hookimpl


class CopyFs:
    name = "copyfs"

    def __init__(self, ctx: StorageContext) -> None:
        self.home = ctx.home
        os.makedirs(os.path.join(self.home, "trees"), mode=0o700, exist_ok=True)

    def _path(self, id: str) -> str:
        return os.path.join(self.home, "trees", id)

    def status(self) -> list[tuple[str, str]]:
        return [("Layers", str(len(os.listdir(os.path.join(self.home, "trees")))))]

    def create(self, id: str, parent: str | None) -> None:
        path = self._path(id)
        if parent is None:
            os.mkdir(path, 0o755)
            return
        subprocess.run(["cp", "-a", "--reflink=auto", self._path(parent), path], check=True)

    def create_rw(self, id: str, parent: str | None, storage_opts: Mapping[str, str]) -> None:
        if storage_opts:
            raise ValueError(f"copyfs takes no storage options, got {sorted(storage_opts)}")
        self.create(id, parent)

    def remove(self, id: str) -> None:
        shutil.rmtree(self._path(id), ignore_errors=True)

    def exists(self, id: str) -> bool:
        return os.path.isdir(self._path(id))

    def metadata(self, id: str) -> dict[str, str]:
        return {"Dir": self._path(id)}

    def mounts(self, id: str) -> list[MountSpec]:
        return [MountSpec("bind", self._path(id), "/", ["rbind"])]

    def get(self, id: str) -> str:
        return self._path(id)

    def put(self, id: str) -> None:
        pass

    def apply_diff(self, id: str, parent: str | None, diff: IO[bytes]) -> int:
        try:
            return archive.extract(diff, self._path(id), whiteouts="delete")
        except BaseException:
            # The contract: a refused tar leaves the layer as it was before.
            shutil.rmtree(self._path(id), ignore_errors=True)
            self.create(id, parent)
            raise

    def changes(self, id: str, parent: str | None) -> list[Change]:
        return archive.changes_between(self._path(parent) if parent else None, self._path(id))

    def diff(self, id: str, parent: str | None) -> IO[bytes]:
        return archive.tar_changes(self._path(id), self.changes(id, parent))

    def diff_size(self, id: str, parent: str | None) -> int:
        return archive.changes_size(self._path(id), self.changes(id, parent))

    def cleanup(self) -> None:
        pass


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_storage_drivers() -> dict[str, type[CopyFs]]:
    return {"copyfs": CopyFs}
