"""Containers' layers: each container's init layer and read-write layer, on
top of its image's top layer (or on chowned copies of the image's layers, for
a remapped container without idmapped mounts).

On disk, beside the layer store's ``sha256/``::

    <data-root>/image/<driver>/layerdb/mounts/<container-id>/
        init-id     "<mount-id>-init"
        mount-id    the container's read-write layer
        parent      chainID of the image's top layer
        mapped      "<uid>.<gid>": the layers sit on chowned copies for that mapping
"""

from __future__ import annotations

import io
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

import structlog

from skiff.core.atomic import fsync_dir
from skiff.core.hookspecs import StorageDriver
from skiff.core.images import init_layer
from skiff.core.images.errors import ImageConflict, LayerNotFound
from skiff.core.images.layer_copies import ChownedCopies
from skiff.core.images.metafiles import MetaDirs, read_meta, write_synced
from skiff.core.trash import Trash
from skiff.core.userns import IdMap

if TYPE_CHECKING:
    from skiff.core.images.layers import Layer

log = structlog.get_logger("skiff.images.layers")

__all__ = ["ContainerLayers", "ImageLayers", "RWLayer"]


@dataclass(frozen=True)
class RWLayer:
    """A container's init and read-write layers (driver ids) and the image layer under them."""

    container_id: str
    init_id: str
    mount_id: str
    parent: str | None  #: chain ID of the image's top layer
    #: "<uid>.<gid>" when the layers below are chowned copies for that mapping
    mapped: str | None = None


class ImageLayers(Protocol):
    """What a container's layers need of the image layers: holding one."""

    def acquire(self, chain_id: str) -> Layer: ...

    def release(self, chain_id: str) -> list[str]: ...

    def exists(self, chain_id: str) -> bool: ...


class ContainerLayers:
    """The init and read-write layers of the containers of one layer store.

    Shares the layer store's lock; each container holds a reference on its
    image's top layer (and on its chowned copy) from ``create`` to ``remove``.
    """

    def __init__(
        self,
        root: str,
        driver: StorageDriver,
        lock: threading.RLock,
        layers: ImageLayers,
        copies: ChownedCopies,
        dirs: MetaDirs,
        shifted: Callable[[IO[bytes], IdMap], IO[bytes]],
        trash: Trash,
    ) -> None:
        self.root = root
        self.driver = driver
        self._lock = lock
        self._layers = layers
        self._copies = copies
        self._dirs = dirs
        self._shifted = shifted
        self._trash = trash
        self._mounts: dict[str, RWLayer] = {}
        self._creating: set[str] = set()
        os.makedirs(root, mode=0o700, exist_ok=True)

    def restore(self) -> list[RWLayer]:
        """Load the containers' layers on disk; the caller counts what they hold."""
        for cid in sorted(os.listdir(self.root)):
            d = os.path.join(self.root, cid)
            try:
                parent_path = os.path.join(d, "parent")
                mapped_path = os.path.join(d, "mapped")
                rw = RWLayer(
                    container_id=cid,
                    init_id=read_meta(os.path.join(d, "init-id")),
                    mount_id=read_meta(os.path.join(d, "mount-id")),
                    parent=read_meta(parent_path) if os.path.exists(parent_path) else None,
                    mapped=read_meta(mapped_path) if os.path.exists(mapped_path) else None,
                )
            except OSError as exc:
                log.warning("layer.mount_unreadable", container=cid, error=str(exc))
                continue
            self._mounts[cid] = rw
        return list(self._mounts.values())

    def create(
        self,
        container_id: str,
        parent: str | None,
        storage_opts: Mapping[str, str] | None = None,
        init_files: Mapping[str, bytes] | None = None,
        chowned: IdMap | None = None,
    ) -> tuple[str, str]:
        """Create a container's init layer and read-write layer on image layer ``parent``.

        As Docker: an init layer ``<mount-id>-init`` holds the mount points and
        placeholder files the runtime mounts over (/proc, /sys, /dev/pts,
        /etc/hosts ...; ``init_files`` adds or replaces files, path -> content);
        the read-write layer sits on it.  Returns ``(init_id, mount_id)``, the
        driver ids.  Holds a reference on ``parent`` until ``remove``.

        With ``chowned`` (a remapped container without idmapped mounts) both
        sit on chowned copies of the image's layers for that mapping, made
        now if missing, and the init layer's files are the container root's.
        """
        with self._lock:
            if container_id in self._mounts or container_id in self._creating:
                raise ImageConflict(f"a read-write layer for container {container_id} exists")
            parent_layer = self._layers.acquire(parent) if parent is not None else None
            self._creating.add(container_id)
        mount_id = secrets.token_hex(32)
        init_id = mount_id + "-init"
        parent_cache = parent_layer.cache_id if parent_layer else None
        key = f"{chowned.root_uid}.{chowned.root_gid}" if chowned is not None else None
        copied = False
        tmp = self._dirs.new("mount")
        try:
            os.mkdir(tmp, 0o700)
            write_synced(os.path.join(tmp, "init-id"), init_id)
            write_synced(os.path.join(tmp, "mount-id"), mount_id)
            if parent is not None:
                write_synced(os.path.join(tmp, "parent"), parent)
            if key is not None:
                write_synced(os.path.join(tmp, "mapped"), key)
            # No fsync of tmp itself: each file's fsync made its new name
            # durable too on the journalling filesystems a data-root lives on
            # (ext4, xfs and btrfs commit a file's creation with the file),
            # and the directory's own entry is made durable by the fsync of
            # mounts/ after the rename below.  After a power cut the intent
            # is whole or, with nothing named, was never acted on.
            if key is not None and chowned is not None and parent is not None:
                parent_cache = self._copies.acquire(key, parent, chowned)
                copied = True
            self.driver.create(init_id, parent_cache)
            self._fill_init(init_id, parent_cache, init_files, chowned)
            self.driver.create_rw(mount_id, init_id, dict(storage_opts or {}))
            if chowned is not None:
                # the root directory is no entry of any tar: give it the container's root
                root = self.driver.get(mount_id)
                try:
                    os.chown(root, chowned.root_uid, chowned.root_gid)
                finally:
                    self.driver.put(mount_id)
            dest = os.path.join(self.root, container_id)
            with self._lock:
                os.rename(tmp, dest)
                fsync_dir(self.root)
                self._mounts[container_id] = RWLayer(container_id, init_id, mount_id, parent,
                                                     key)
                self._creating.discard(container_id)
        except BaseException:
            # the rw layer before the init layer it sits on
            self._dirs.discard(tmp)
            with self._lock:
                self._creating.discard(container_id)
            if copied and key is not None and parent is not None:
                self._copies.release(key, parent)
            if parent is not None:
                self._layers.release(parent)
            raise
        log.info("layer.rw_created", container=container_id, mount_id=mount_id, parent=parent)
        return init_id, mount_id

    def _fill_init(self, init_id: str, parent_cache: str | None,
                   init_files: Mapping[str, bytes] | None, chowned: IdMap | None) -> None:
        """The init layer's few entries: written directly where the driver
        offers ``apply_files`` (contract 2.17), else as a tar through ``apply_diff``."""
        apply_files = getattr(self.driver, "apply_files", None)
        if apply_files is not None:
            owner = (chowned.root_uid, chowned.root_gid) if chowned is not None else None
            apply_files(init_id, parent_cache,
                        lambda fd: init_layer.write_into(fd, init_files, owner))
            return
        init_tar: IO[bytes] = io.BytesIO(init_layer.init_tar(init_files))
        if chowned is not None:
            init_tar = self._shifted(init_tar, chowned)
        try:
            self.driver.apply_diff(init_id, parent_cache, init_tar)
        finally:
            init_tar.close()

    def get(self, container_id: str) -> RWLayer:
        """The container's RW layer record; ``LayerNotFound`` if it has none."""
        with self._lock:
            try:
                return self._mounts[container_id]
            except KeyError:
                raise LayerNotFound(
                    f"no read-write layer for container {container_id}"
                ) from None

    def all(self) -> list[RWLayer]:
        with self._lock:
            return list(self._mounts.values())

    def remove(self, container_id: str, defer: bool = False) -> None:
        """Remove a container's RW and init layers and release the image layer.

        ``defer``: the driver layers go on the trash's worker (``trash``),
        after this returns; the container's layers are gone for every caller
        at once all the same.  Not for layers on chowned copies: the copy
        below may go with this release, and must not before its child.
        """
        with self._lock:
            rw = self.get(container_id)
            del self._mounts[container_id]
            # not durable: a rename the power cut undoes puts the layers back
            # under a container whose record says "removing" (finished at the
            # next start), auto-removes (removed then too) or is gone (its
            # layers are an orphan reconciliation removes): rm is all or
            # nothing either way, so its fsync bought nothing
            path = self._dirs.retire(os.path.join(self.root, container_id), durable=False)
        if defer and not rw.mapped:
            self._trash.put(path)
        else:
            self._dirs.discard(path)
        if rw.mapped and rw.parent is not None and self._copies.has(rw.mapped, rw.parent):
            self._copies.release(rw.mapped, rw.parent)
        if rw.parent is not None and self._layers.exists(rw.parent):
            self._layers.release(rw.parent)
        log.info("layer.rw_removed", container=container_id, mount_id=rw.mount_id)
