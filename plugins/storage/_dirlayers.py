"""The part vfs and btrfs share: a layer is a directory named by its id.

Both keep every layer as a whole tree under one folder (vfs: plain copies,
btrfs: subvolumes), make it under a temporary name and rename it into place,
and remove it by renaming it away first.  Only how a tree is made and deleted
differs, so those two steps are what a subclass provides.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import IO

from skiff.core import archive
from skiff.core.hookspecs import MountSpec
from skiff.plugins.storage._common import WholeTreeDiffs, validate_id

#: names of trees not yet (or no longer) a layer: a crash may leave them behind
TMP_PREFIX = ".tmp-"


class DirectoryLayers(WholeTreeDiffs):
    """Layers as directories ``<layers>/<id>``; a subclass makes and deletes trees.

    Subclasses set ``name`` and ``layers`` (the folder) and implement
    ``_create(id, parent)`` (a complete tree, renamed into place only when
    whole) and ``_delete(path)``.
    """

    name: str
    layers: str

    def _create(self, layer_id: str, parent: str | None) -> None:
        raise NotImplementedError

    def _delete(self, path: str) -> None:
        raise NotImplementedError

    def _sweep(self) -> None:
        """Delete the trees a crash left under temporary names; nothing refers to them."""
        for name in os.listdir(self.layers):
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):  # tried again at the next start
                    self._delete(os.path.join(self.layers, name))

    def _dir(self, layer_id: str) -> str:
        return os.path.join(self.layers, validate_id(layer_id))

    def _existing(self, layer_id: str) -> str:
        path = self._dir(layer_id)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{self.name} layer {layer_id} does not exist")
        return path

    def _tmp(self, layer_id: str) -> str:
        return os.path.join(self.layers, f"{TMP_PREFIX}{layer_id}-{secrets.token_hex(4)}")

    def _vacant(self, layer_id: str) -> str:
        dst = self._dir(layer_id)
        if os.path.lexists(dst):
            raise FileExistsError(f"{self.name} layer {layer_id} already exists")
        return dst

    def create(self, id: str, parent: str | None) -> None:
        self._create(id, parent)

    def remove(self, id: str) -> None:
        path = self._dir(id)
        if not os.path.lexists(path):
            return
        # Renamed first so the layer is gone at once even if deleting is slow
        # or interrupted; start-up sweeps what is left.
        tmp = self._tmp(id)
        os.rename(path, tmp)
        self._delete(tmp)

    def exists(self, id: str) -> bool:
        return os.path.isdir(self._dir(id))

    def mounts(self, id: str) -> list[MountSpec]:
        return [MountSpec("bind", self._existing(id), "/", ["rbind"])]

    def get(self, id: str) -> str:
        return self._existing(id)

    def put(self, id: str) -> None:
        pass  # nothing was mounted: the tree is always reachable under the data-root

    def apply_diff(self, id: str, parent: str | None, diff: IO[bytes]) -> int:
        path = self._existing(id)
        try:
            return archive.extract(diff, path, whiteouts="delete")
        except BaseException as exc:
            # Back to exactly the parent's tree: an empty layer, made again.
            try:
                tmp = self._tmp(id)
                os.rename(path, tmp)
                self._delete(tmp)
                self._create(id, parent)
            except Exception as again:  # report both; the first is the cause
                exc.add_note(f"resetting {self.name} layer {id} failed too: {again}")
            raise

    def cleanup(self) -> None:
        pass  # these drivers mount nothing on the host
