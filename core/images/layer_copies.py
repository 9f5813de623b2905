"""Chowned copies of layers, for remapped containers where idmapped mounts cannot serve.

On disk, beside the layer store's ``sha256/``::

    <data-root>/image/<driver>/layerdb/mapped/<uid>.<gid>/<chain hex>/cache-id
                                                                      parent

A copy of each layer of an image's chain whose files belong to the host ids
of one user namespace (its tar rewritten by ``skiff.core.idshift``), stacked
like the originals, made when a container first needs them and shared by
every container of that mapping.  A copy is held by its child copy and by
each container mount on it; it goes with the last, except those of a
*pinned* mapping (the daemon's own, which every remapped container without
``--userns=auto`` shares), which also stay while their original layer does,
as a remapped dockerd keeps its layers: made once per image, not per
container.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Container, Iterable
from typing import IO, TYPE_CHECKING

import structlog

from skiff.core.atomic import fsync_dir
from skiff.core.hookspecs import StorageDriver
from skiff.core.images.metafiles import read_meta, write_synced
from skiff.core.userns import IdMap

if TYPE_CHECKING:
    from skiff.core.images.layers import Layer

log = structlog.get_logger("skiff.images.layers")

__all__ = ["ChownedCopies"]


class ChownedCopies:
    """The chowned copies of one layer store, reference counted per (mapping, chain ID).

    Shares the layer store's lock (a copy's holders change with its layers
    and mounts); the store hands in how to look a layer up, rewrite a tar's
    owners, and retire and discard a metadata directory.
    """

    def __init__(
        self,
        root: str,
        driver: StorageDriver,
        pinned: frozenset[str],
        lock: threading.RLock,
        layer: Callable[[str], Layer],
        shifted: Callable[[IO[bytes], IdMap], IO[bytes]],
        retire: Callable[[str], str],
        discard: Callable[[str], None],
    ) -> None:
        self.root = root
        self.driver = driver
        #: mappings ("<uid>.<gid>") whose copies stay while their layer does
        self.pinned = pinned
        self._lock = lock
        self._layer = layer
        self._shifted = shifted
        self._retire = retire
        self._discard = discard
        #: (mapping key, chain ID) -> driver id, their holders, and the chain ID
        #: of their parent (the originals may be gone when they go)
        self._copies: dict[tuple[str, str], str] = {}
        self._refs: dict[tuple[str, str], int] = {}
        self._parent: dict[tuple[str, str], str | None] = {}
        #: one copy is made at a time (two containers of one mapping share them)
        self._copy_lock = threading.Lock()
        os.makedirs(root, mode=0o700, exist_ok=True)

    def restore(self, layers: Container[str], mounts: Iterable[tuple[str, str]]) -> None:
        """Load the copies on disk and count their holders: ``layers`` the live
        chain IDs (holding a pinned mapping's copies), ``mounts`` the
        (mapping, chain ID) each remapped container mount sits on."""
        for key in sorted(os.listdir(self.root)):
            kdir = os.path.join(self.root, key)
            for hexid in sorted(os.listdir(kdir)):
                path = os.path.join(kdir, hexid)
                if hexid.startswith("."):
                    self._discard(path)  # a copy cut short
                    continue
                try:
                    ident = (key, "sha256:" + hexid)
                    self._copies[ident] = read_meta(os.path.join(path, "cache-id"))
                    parent_path = os.path.join(path, "parent")
                    self._parent[ident] = (read_meta(parent_path)
                                           if os.path.exists(parent_path) else None)
                except OSError as exc:
                    log.warning("layer.copy_unreadable", mapping=key, chain_id=hexid,
                                error=str(exc))
        for key, chain in self._copies:
            self._refs[(key, chain)] = self._refs.get((key, chain), 0)
            if key in self.pinned and chain in layers:
                self._refs[(key, chain)] += 1  # held by its original
            parent = self._parent.get((key, chain))
            if parent is not None and (key, parent) in self._copies:
                self._refs[(key, parent)] = self._refs.get((key, parent), 0) + 1
        for ident in mounts:
            if ident in self._copies:
                self._refs[ident] += 1
        # copies no container holds any more (a removal cut short)
        for key, chain in [k for k, n in self._refs.items() if n == 0]:
            if self._refs.get((key, chain)) == 0:
                self._refs[(key, chain)] = 1
                self.release(key, chain)

    def holders(self) -> dict[tuple[str, str], int]:
        """(mapping, chain ID) -> holders of every copy."""
        with self._lock:
            return dict(self._refs)

    def has(self, key: str, chain: str) -> bool:
        return (key, chain) in self._copies

    def acquire(self, key: str, chain: str, idmap: IdMap) -> str:
        """The driver id of the copy of ``chain`` for mapping ``key``, made (with
        those of its parents) if missing; one reference for the caller."""
        with self._copy_lock:
            todo: list[Layer] = []
            with self._lock:
                cur: str | None = chain
                while cur is not None and (key, cur) not in self._copies:
                    layer = self._layer(cur)
                    todo.append(layer)
                    cur = layer.parent
            for layer in reversed(todo):  # base first
                self._copy_layer(key, layer, idmap)
            with self._lock:
                self._refs[(key, chain)] += 1
                return self._copies[(key, chain)]

    def _copy_layer(self, key: str, layer: Layer, idmap: IdMap) -> None:
        kdir = os.path.join(self.root, key)
        os.makedirs(kdir, mode=0o700, exist_ok=True)
        hexid = layer.chain_id.split(":", 1)[1]
        tmp = os.path.join(kdir, f".tmp-{hexid}-{secrets.token_hex(4)}")
        cache_id = secrets.token_hex(32)
        parent_copy = self._copies[(key, layer.parent)] if layer.parent else None
        parent_orig = self._layer(layer.parent).cache_id if layer.parent else None
        t0 = time.monotonic()
        try:
            os.mkdir(tmp, 0o700)
            write_synced(os.path.join(tmp, "cache-id"), cache_id)
            if layer.parent is not None:
                write_synced(os.path.join(tmp, "parent"), layer.parent)
            fsync_dir(tmp)
            self.driver.create(cache_id, parent_copy)
            source = self.driver.diff(layer.cache_id, parent_orig)
            try:
                shifted = self._shifted(source, idmap)
            finally:
                source.close()
            try:
                self.driver.apply_diff(cache_id, parent_copy, shifted)
            finally:
                shifted.close()
            os.rename(tmp, os.path.join(kdir, hexid))
            fsync_dir(kdir)
        except BaseException:
            self._discard(tmp)
            raise
        with self._lock:
            self._copies[(key, layer.chain_id)] = cache_id
            self._parent[(key, layer.chain_id)] = layer.parent
            # a pinned mapping's copy is held by its original layer too
            self._refs[(key, layer.chain_id)] = int(key in self.pinned)
            if layer.parent is not None:
                self._refs[(key, layer.parent)] += 1
        log.info("layer.copied_for_userns", chain_id=layer.chain_id, mapping=key,
                 cache_id=cache_id, ms=round((time.monotonic() - t0) * 1000, 1))

    def release(self, key: str, chain: str) -> None:
        """Drop one reference on a copy; at zero it goes, and its parent's is dropped."""
        doomed: list[str] = []
        with self._lock:
            cur: str | None = chain
            while cur is not None and (key, cur) in self._copies:
                self._refs[(key, cur)] -= 1
                if self._refs[(key, cur)] > 0:
                    break
                del self._refs[(key, cur)]
                del self._copies[(key, cur)]
                hexid = cur.split(":", 1)[1]
                doomed.append(self._retire(os.path.join(self.root, key, hexid)))
                cur = self._parent.pop((key, cur), None)
        for path in doomed:  # children first
            self._discard(path)
