"""The layer store: content-addressed layers over one storage driver.

On disk (Docker's layout, so people who know Docker find their way)::

    <data-root>/image/<driver>/layerdb/
        sha256/<chainID>/diff             "sha256:<diffID>"
                         parent           parent chainID (absent for a base layer)
                         size             bytes the layer adds, as the driver unpacked it
                         cache-id         the driver's id for the layer (random 64 hex)
                         tar-split.json.gz  the layer tar's headers, to rebuild it byte-exact
        mounts/<container-id>/init-id     "<mount-id>-init"
                              mount-id    the container's read-write layer
                              parent      chainID of the image's top layer
                              mapped      "<uid>.<gid>": the layers sit on chowned
                                          copies for that user namespace (below)
        mapped/<uid>.<gid>/<chain hex>/cache-id   a chowned copy of layer <chain>
        tmp/                               work in progress; anything here at start-up
                                           is debris of a crash and is removed

A layer's metadata directory is written completely under ``tmp/`` and then
renamed into place, so a crash leaves either no layer or a whole one.

Reference counts are not persisted but derived: a layer is held by each child
layer (its ``parent`` file), each container mount (``mounts/*/parent``), each
image in the image store (which acquires its top layer when it loads) and each
caller between ``register`` and ``release``.  A layer is removed from the
driver and the layerdb when the count drops to zero, then its parent is
released in turn.

Chowned copies (``mapped/``) of the layers, for remapped containers, are
kept by ``skiff.core.images.layer_copies``, containers' init and read-write
layers (``mounts/``) by ``skiff.core.images.container_layers``; the store's
``create_rw``/``remove_rw`` hand over to them.

The chain ID is the OCI one: ``chain(L0) = diffID(L0)``,
``chain(Ln) = sha256(chain(Ln-1) + " " + diffID(Ln))``.

Saving an image must reproduce each layer tar byte for byte: while a layer is
applied its tar's headers are recorded (``skiff.core.images.tarsplit``), to be
interleaved later with the files of the mounted layer.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import lzma
import os
import secrets
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import structlog

from skiff.core import idshift
from skiff.core.archive import ArchiveError, ChunkReader
from skiff.core.atomic import fsync_dir
from skiff.core.hookspecs import StorageDriver
from skiff.core.images import tarsplit
from skiff.core.images.container_layers import ContainerLayers, RWLayer
from skiff.core.images.decompression import decompressed
from skiff.core.images.errors import (
    InvalidImage,
    LayerDigestMismatch,
    LayerNotFound,
)
from skiff.core.images.layer_copies import ChownedCopies
from skiff.core.images.metafiles import MetaDirs, read_meta, write_synced
from skiff.core.trash import Trash
from skiff.core.userns import IdMap

log = structlog.get_logger("skiff.images.layers")

__all__ = [
    "Layer",
    "LayerStore",
    "LayerTarStream",
    "chain_id",
    "chain_ids",
]

_CHUNK = 1 << 20


def _is_digest(text: Any) -> bool:
    if not isinstance(text, str) or not text.startswith("sha256:") or len(text) != 71:
        return False
    return all(c in "0123456789abcdef" for c in text[7:])


def chain_id(parent: str | None, diff_id: str) -> str:
    """The chain ID of a layer with ``diff_id`` on top of chain ``parent``."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain IDs of a stack of layers, base first."""
    out: list[str] = []
    parent: str | None = None
    for d in diff_ids:
        parent = chain_id(parent, d)
        out.append(parent)
    return out



class LayerTarStream(ChunkReader):
    """A layer's tar, read-only; ``length`` is its size in bytes when known.

    Closing it releases what producing it needed (a driver mount).
    """

    def __init__(self, chunks: Iterator[bytes], length: int | None) -> None:
        super().__init__(chunks)
        self.length = length


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One read-only layer.  ``size`` is what this layer alone adds."""

    chain_id: str
    diff_id: str
    parent: str | None  #: the parent's chain ID
    cache_id: str  #: the storage driver's id
    size: int


class LayerStore:
    """Layers of one storage driver, deduplicated by chain ID and reference counted.

    Thread-safe: the daemon calls it from worker threads.  Slow work (unpacking,
    removing trees) happens outside the lock.
    """

    def __init__(self, data_root: str, driver_name: str, driver: StorageDriver,
                 pinned_copies: Sequence[str] = ()) -> None:
        self.data_root = data_root
        #: mappings ("<uid>.<gid>") whose chowned copies stay while their layer does
        self.pinned_copies = frozenset(pinned_copies)
        self.driver_name = driver_name
        self.driver = driver
        self.image_root = os.path.join(data_root, "image", driver_name)
        self.root = os.path.join(self.image_root, "layerdb")
        self._layers_dir = os.path.join(self.root, "sha256")
        self._tmp_dir = os.path.join(self.root, "tmp")
        for d in (self._layers_dir, self._tmp_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._lock = threading.RLock()
        self._layers: dict[str, Layer] = {}
        self._refs: dict[str, int] = {}
        self._dirs = MetaDirs(self._tmp_dir, driver)
        #: containers' layers removed after ``remove_rw(defer=True)`` returned
        self.trash = Trash(self._dirs.discard)
        self._copies = ChownedCopies(
            os.path.join(self.root, "mapped"), driver, self.pinned_copies, self._lock,
            self.get, self._shifted, self._dirs.retire, self._dirs.discard)
        self._containers = ContainerLayers(
            os.path.join(self.root, "mounts"), driver, self._lock, self, self._copies,
            self._dirs, self._shifted, self.trash)
        self._restore()

    # -- start-up ------------------------------------------------------------

    def _restore(self) -> None:
        self._dirs.clean()
        for hexid in sorted(os.listdir(self._layers_dir)):
            d = os.path.join(self._layers_dir, hexid)
            try:
                parent_path = os.path.join(d, "parent")
                layer = Layer(
                    chain_id="sha256:" + hexid,
                    diff_id=read_meta(os.path.join(d, "diff")),
                    parent=read_meta(parent_path) if os.path.exists(parent_path) else None,
                    cache_id=read_meta(os.path.join(d, "cache-id")),
                    size=int(read_meta(os.path.join(d, "size"))),
                )
            except (OSError, ValueError) as exc:
                log.warning("layer.unreadable", chain_id=hexid, error=str(exc))
                continue
            self._layers[layer.chain_id] = layer
            self._refs.setdefault(layer.chain_id, 0)
        for layer in self._layers.values():
            if layer.parent is not None:
                if layer.parent not in self._layers:
                    log.warning("layer.parent_missing", chain_id=layer.chain_id,
                                parent=layer.parent)
                    continue
                self._refs[layer.parent] += 1
        mounts = self._containers.restore()
        for rw in mounts:
            if rw.parent is not None and rw.parent in self._layers:
                self._refs[rw.parent] += 1
        self._copies.restore(
            self._layers,
            [(rw.mapped, rw.parent) for rw in mounts if rw.mapped and rw.parent])

    # -- queries ---------------------------------------------------------------

    def get(self, chain_id: str) -> Layer:
        """The layer with ``chain_id``; ``LayerNotFound`` if there is none."""
        with self._lock:
            try:
                return self._layers[chain_id]
            except KeyError:
                raise LayerNotFound(f"layer does not exist: {chain_id}") from None

    def exists(self, chain_id: str) -> bool:
        with self._lock:
            return chain_id in self._layers

    def layers(self) -> list[Layer]:
        with self._lock:
            return list(self._layers.values())

    def refcount(self, chain_id: str) -> int:
        """How many holders keep the layer (children, images, mounts, callers)."""
        with self._lock:
            return self._refs.get(chain_id, 0)

    def size(self, chain_id: str | None) -> int:
        """The size of the whole chain down to the base: an image's Size."""
        total = 0
        with self._lock:
            while chain_id is not None:
                layer = self._layers.get(chain_id)
                if layer is None:
                    break
                total += layer.size
                chain_id = layer.parent
        return total

    def disk_usage(self, chains: Mapping[str, Sequence[str]]) -> tuple[int, dict[str, int]]:
        """Sizes for ``docker system df``, over images given as ``id -> chain IDs``.

        Returns the bytes of the distinct layers under them, each counted once
        however many images share it (Docker's LayersSize), and per image the
        bytes of its layers that another of the images uses too (SharedSize).
        """
        users: collections.Counter[str] = collections.Counter()
        for chain in chains.values():
            users.update(set(chain))
        with self._lock:
            sizes = {c: self._layers[c].size for c in users if c in self._layers}
        shared = {
            image: sum(sizes.get(c, 0) for c in set(chain) if users[c] > 1)
            for image, chain in chains.items()
        }
        return sum(sizes.values()), shared

    def rw_size(self, container_id: str) -> int:
        """Bytes of the files a container wrote or changed (Docker's SizeRw): the
        driver's ``diff_size`` of its read-write layer over its init layer."""
        rw = self.rw_layer(container_id)
        return self.driver.diff_size(rw.mount_id, rw.init_id)

    def cache_id(self, chain_id: str | None) -> str | None:
        """The driver id of ``chain_id`` (None for None)."""
        return None if chain_id is None else self.get(chain_id).cache_id

    def metadata(self, chain_id: str | None) -> dict[str, str] | None:
        """The driver's data for inspect's GraphDriver.Data."""
        if chain_id is None:
            return None
        return self.driver.metadata(self.get(chain_id).cache_id)

    # -- references --------------------------------------------------------------

    def acquire(self, chain_id: str) -> Layer:
        """Take one reference on a layer (an image holding its top layer)."""
        with self._lock:
            layer = self.get(chain_id)
            self._refs[chain_id] += 1
            return layer

    def release(self, chain_id: str) -> list[str]:
        """Drop one reference; at zero the layer goes, and its parent is released.

        Returns the chain IDs removed, top first (``docker rmi`` lists them).
        """
        doomed: list[tuple[Layer, str]] = []
        with self._lock:
            self.get(chain_id)
            cur: str | None = chain_id
            while cur is not None:
                self._refs[cur] -= 1
                if self._refs[cur] > 0:
                    break
                layer = self._layers.pop(cur)
                del self._refs[cur]
                hexid = cur.split(":", 1)[1]
                doomed.append((layer, self._dirs.retire(os.path.join(self._layers_dir, hexid))))
                cur = layer.parent
        # children before parents: a driver may refuse to drop a lower layer still in use
        if doomed:
            self.trash.drain()  # containers' layers on it may still be queued
        for layer, path in doomed:
            for key in self.pinned_copies:
                if self._copies.has(key, layer.chain_id):
                    self._copies.release(key, layer.chain_id)  # its copy goes with it
            self._dirs.discard(path)
            log.info("layer.removed", chain_id=layer.chain_id, cache_id=layer.cache_id)
        return [layer.chain_id for layer, _ in doomed]

    def prune_unreferenced(self) -> list[str]:
        """Remove the layers nothing holds: debris of a load, import or commit cut
        short by a crash between registering a layer and creating its image.

        Only correct once every holder has taken its references again, so the
        image store calls it at the end of its start-up.
        """
        removed: list[str] = []
        while True:
            with self._lock:
                orphan = next((c for c, n in self._refs.items() if n <= 0), None)
                if orphan is None:
                    return removed
                self._refs[orphan] = 1
            log.warning("layer.unreferenced", chain_id=orphan, action="removing")
            removed.extend(self.release(orphan))

    # -- registering -----------------------------------------------------------

    def register(
        self,
        stream: IO[bytes],
        parent: str | None = None,
        expected_diff_id: str | None = None,
    ) -> Layer:
        """Unpack a layer tar (plain, gzip, bzip2, xz, zstd) on top of chain ``parent``.

        The diffID is the sha256 of the *uncompressed* stream.  When
        ``expected_diff_id`` is given and differs, ``LayerDigestMismatch`` is
        raised and nothing is kept; when a layer with the resulting chain ID
        already exists it is reused (with ``expected_diff_id`` without even
        reading the stream) and the new copy is discarded.

        The returned layer carries one reference for the caller: release it
        with ``release(layer.chain_id)`` once an image holds the layer
        (``ImageStore.create`` takes its own), or to drop the layer again.
        """
        if expected_diff_id is not None and not _is_digest(expected_diff_id):
            raise InvalidImage(f"invalid layer digest {expected_diff_id!r}")
        with self._lock:
            parent_layer = self.get(parent) if parent is not None else None
            if expected_diff_id is not None:
                known = chain_id(parent, expected_diff_id)
                if known in self._layers:
                    return self.acquire(known)
            if parent is not None:
                self._refs[parent] += 1  # keep the parent while we unpack on it
        try:
            layer, tmp = self._apply(stream, parent_layer, expected_diff_id)
        except BaseException:
            if parent is not None:
                self.release(parent)
            raise
        with self._lock:
            existing = self._layers.get(layer.chain_id)
            if existing is None:
                dest = os.path.join(self._layers_dir, layer.chain_id.split(":", 1)[1])
                os.rename(tmp, dest)
                fsync_dir(self._layers_dir)
                self._layers[layer.chain_id] = layer
                self._refs[layer.chain_id] = 1  # the caller's; the parent ref is now the child's
                log.info("layer.registered", chain_id=layer.chain_id, diff_id=layer.diff_id,
                         cache_id=layer.cache_id, size=layer.size)
                return layer
            self._refs[existing.chain_id] += 1
        # a twin was stored meanwhile (or before): keep that one
        self._dirs.discard(tmp)
        if parent is not None:
            self.release(parent)
        return existing

    def _apply(
        self, stream: IO[bytes], parent: Layer | None, expected: str | None
    ) -> tuple[Layer, str]:
        tmp = self._dirs.new("write")
        os.mkdir(tmp, 0o700)
        cache_id = secrets.token_hex(32)
        parent_cache = parent.cache_id if parent is not None else None
        try:
            # name the driver layer first, so a crash mid-unpack leaves nothing unfindable
            write_synced(os.path.join(tmp, "cache-id"), cache_id)
            self.driver.create(cache_id, parent_cache)
            with gzip.open(os.path.join(tmp, "tar-split.json.gz"), "wb", compresslevel=6) as ts:
                # typeshed: GzipFile is not an IO[bytes], though it is one
                recorder = tarsplit.TarSplitRecorder(ts)  # type: ignore[arg-type]
                src = decompressed(stream)
                reader = tarsplit.HashingReader(src, recorder)
                try:
                    # HashingReader reads like the IO[bytes] the driver takes (not all of it)
                    size = self.driver.apply_diff(cache_id, parent_cache, reader)  # type: ignore[arg-type]
                    reader.drain()
                except ArchiveError as exc:
                    raise InvalidImage(str(exc)) from exc
                except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile,
                        tarfile.TarError) as exc:
                    raise InvalidImage(f"the layer is not a valid (compressed) tar: {exc}") from exc
                recorder.close()
            diff_id = "sha256:" + reader.sha.hexdigest()
            if expected is not None and diff_id != expected:
                raise LayerDigestMismatch(expected, diff_id)
            chain = chain_id(parent.chain_id if parent else None, diff_id)
            write_synced(os.path.join(tmp, "diff"), diff_id)
            write_synced(os.path.join(tmp, "size"), str(int(size)))
            if parent is not None:
                write_synced(os.path.join(tmp, "parent"), parent.chain_id)
            with open(os.path.join(tmp, "tar-split.json.gz"), "rb") as f:
                os.fsync(f.fileno())
            fsync_dir(tmp)
        except BaseException:
            self._dirs.discard(tmp)
            raise
        layer = Layer(chain_id=chain, diff_id=diff_id,
                      parent=parent.chain_id if parent else None, cache_id=cache_id,
                      size=int(size))
        return layer, tmp

    # -- reading back --------------------------------------------------------------

    def tar_stream(self, chain_id: str) -> LayerTarStream:
        """The layer's tar exactly as it was registered (its sha256 is the diffID).

        Rebuilt from the recorded headers and the files of the mounted layer
        (``driver.get``/``put``); falls back to ``driver.diff`` for a layer
        without a record, whose bytes may then differ from the original.
        The caller closes the stream.
        """
        layer = self.get(chain_id)
        ts_path = os.path.join(self._layers_dir, chain_id.split(":", 1)[1], "tar-split.json.gz")
        if not os.path.exists(ts_path):
            parent_cache = self.cache_id(layer.parent)
            inner = self.driver.diff(layer.cache_id, parent_cache)

            def relay() -> Iterator[bytes]:
                try:
                    while True:
                        data = inner.read(_CHUNK)
                        if not data:
                            return
                        yield data
                finally:
                    inner.close()

            return LayerTarStream(relay(), None)
        length = tarsplit.recorded_length(ts_path)
        return LayerTarStream(self._assemble(layer, ts_path), length)

    def _assemble(self, layer: Layer, ts_path: str) -> Iterator[bytes]:
        mounted = False

        def mount() -> str:
            nonlocal mounted
            root = self.driver.get(layer.cache_id)
            mounted = True
            return root

        try:
            yield from tarsplit.assemble(ts_path, mount, layer.diff_id, layer.chain_id)
        finally:
            if mounted:
                self.driver.put(layer.cache_id)

    # -- container layers (see skiff.core.images.container_layers) --------------------

    def create_rw(
        self,
        container_id: str,
        parent: str | None,
        storage_opts: Mapping[str, str] | None = None,
        init_files: Mapping[str, bytes] | None = None,
        chowned: IdMap | None = None,
    ) -> tuple[str, str]:
        """Create a container's init and read-write layers on image layer ``parent``;
        returns ``(init_id, mount_id)``, the driver ids (``ContainerLayers.create``)."""
        return self._containers.create(container_id, parent, storage_opts, init_files, chowned)

    def rw_layer(self, container_id: str) -> RWLayer:
        """The container's RW layer record; ``LayerNotFound`` if it has none."""
        return self._containers.get(container_id)

    def rw_layers(self) -> list[RWLayer]:
        return self._containers.all()

    def remove_rw(self, container_id: str, defer: bool = False) -> None:
        """Remove a container's RW and init layers and release the image layer;
        ``defer``: the driver's work after the return (``ContainerLayers.remove``)."""
        self._containers.remove(container_id, defer)

    # -- chowned copies ----------------------------------------------------------

    def copies(self) -> dict[tuple[str, str], int]:
        """(mapping, chain ID) -> holders of every chowned copy (for tests and info)."""
        with self._lock:
            return self._copies.holders()

    def _shifted(self, stream: IO[bytes], idmap: IdMap) -> IO[bytes]:
        """``stream`` (a tar) with its owners moved to ``idmap``'s host ids."""
        return self.spooled_owners(stream, idshift.to_host(idmap))

    def spooled_owners(self, stream: IO[bytes], ids: tuple[idshift.IdFn, idshift.IdFn]
                       ) -> IO[bytes]:
        """``stream`` (a tar) with its owners mapped by ``ids`` (uid, gid functions),
        spooled to a file of tmp/ that goes when the returned stream is closed."""
        spool = tempfile.TemporaryFile(dir=self._tmp_dir)  # noqa: SIM115 (returned open)
        try:
            idshift.rewrite_owners(stream, spool, *ids)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool
