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

Chowned copies (``mapped/``) serve remapped containers where idmapped mounts
cannot: a copy of each layer of the image's chain whose files belong to the
host ids of one user namespace (its tar rewritten by ``skiff.core.idshift``),
stacked like the originals, made when a container first needs them and shared
by every container of that mapping.  A copy is held by its child copy and by
each container mount on it; it goes with the last, except those of a
*pinned* mapping (the daemon's own, which every remapped container without
``--userns=auto`` shares), which also stay while their original layer does,
as a remapped dockerd keeps its layers: made once per image, not per
container.

The chain ID is the OCI one: ``chain(L0) = diffID(L0)``,
``chain(Ln) = sha256(chain(Ln-1) + " " + diffID(Ln))``.

Saving an image must reproduce each layer tar byte for byte (its sha256 is the
diffID in the image config).  A driver's ``diff`` regenerates a tar, which
differs in header details, so like Docker we record the tar's raw headers and
padding while it is applied (``tar-split.json.gz``) and later interleave them
with file contents read from the mounted layer.
"""

from __future__ import annotations

import base64
import bz2
import collections
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import structlog

from skiff.core import idshift
from skiff.core.archive import ArchiveError, ChunkReader
from skiff.core.atomic import fsync_dir
from skiff.core.hookspecs import StorageDriver
from skiff.core.images.errors import (
    ImageConflict,
    InvalidImage,
    LayerDigestMismatch,
    LayerNotFound,
)
from skiff.core.tarlimits import MAX_META
from skiff.core.userns import IdMap

log = structlog.get_logger("skiff.images.layers")

__all__ = [
    "INIT_DIRS",
    "INIT_FILES",
    "Layer",
    "LayerStore",
    "LayerTarStream",
    "RWLayer",
    "chain_id",
    "chain_ids",
    "decompressed",
]

_CHUNK = 1 << 20

#: directories every container's init layer holds (Docker's initlayer)
INIT_DIRS = ("dev", "dev/pts", "dev/shm", "etc", "proc", "sys")
#: empty placeholder files of the init layer; the daemon bind-mounts the real ones
INIT_FILES = (".dockerenv", "dev/console", "etc/hostname", "etc/hosts", "etc/resolv.conf")


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


# ---------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------


class _Prefixed(io.RawIOBase):
    """A stream with some already-read bytes put back in front of it."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(view))
        if not data:
            return 0
        view[: len(data)] = data
        return len(data)


class _ZstdReader(io.RawIOBase):
    def __init__(self, inner: IO[bytes]) -> None:
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise InvalidImage(
                "the layer is compressed with zstd, which needs the 'zstandard' Python "
                "package; install it in skiff's environment or use gzip layers"
            ) from None
        self._reader = zstandard.ZstdDecompressor().stream_reader(inner, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self._reader.read(len(buf))
        memoryview(buf).cast("B")[: len(data)] = data
        return len(data)


def decompressed(stream: IO[bytes]) -> IO[bytes]:
    """``stream`` uncompressed: gzip, bzip2, xz and (with ``zstandard``) zstd are
    recognised by their magic bytes; anything else passes through."""
    head = b""
    while len(head) < 6:
        more = stream.read(6 - len(head))
        if not more:
            break
        head += more
    src: IO[bytes] = io.BufferedReader(_Prefixed(head, stream), _CHUNK)  # type: ignore[arg-type]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(src)  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(src)  # type: ignore[return-value]
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return io.BufferedReader(_ZstdReader(src), _CHUNK)  # type: ignore[return-value]
    return src


# ---------------------------------------------------------------------------
# tar-split: the raw bytes of a tar, minus file contents
# ---------------------------------------------------------------------------

_SEGMENT, _FILE = 2, 1  # entry types, as in vbatts/tar-split
_REGULAR = (b"0", b"\x00", b"7")


def _tar_size_field(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256, for sizes over 8 GiB
        value = field[0] & 0x7F
        for b in field[1:]:
            value = (value << 8) | b
        return value
    text = field.split(b"\x00", 1)[0].strip(b" \x00")
    return int(text, 8) if text else 0


def _pax_records(payload: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(payload):
        sp = payload.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(payload[pos:sp])
        except ValueError:
            break
        if length <= 0:
            break
        record = payload[sp + 1 : pos + length]
        pos += length
        key, eq, value = record.partition(b"=")
        if eq:
            out[key.decode("utf-8", "replace")] = value.rstrip(b"\n")
    return out


class _TarSplitRecorder:
    """Parses a tar as it streams past and writes its non-content bytes.

    The output is tar-split's JSON-lines format: ``{"type":2,"payload":<b64>}``
    for raw bytes (headers, padding, the end-of-archive blocks and anything
    after them) and ``{"type":1,"name":...,"size":N}`` where a regular file's
    contents go.
    """

    _RAW_FLUSH = 1 << 20

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._position = 0
        self._raw = bytearray()
        self._header = bytearray()
        self._state = "header"  # header | meta | file | raw | pad | trailer
        self._remaining = 0
        self._pad = 0
        self._meta = bytearray()
        self._meta_kind = b""
        self._pax: dict[str, bytes] = {}
        self._longname: bytes | None = None
        self.total = 0

    def _emit(self, entry: dict[str, Any]) -> None:
        entry["position"] = self._position
        self._position += 1
        self._out.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")

    def _flush_raw(self) -> None:
        if self._raw:
            self._emit({"type": _SEGMENT, "payload": base64.b64encode(self._raw).decode()})
            self._raw = bytearray()

    def _file(self, name: bytes, size: int) -> None:
        self._flush_raw()
        entry: dict[str, Any] = {"type": _FILE, "size": size}
        try:
            entry["name"] = name.decode("utf-8")
        except UnicodeDecodeError:
            entry["name_raw"] = base64.b64encode(name).decode()
        self._emit(entry)

    def _parse_header(self, block: bytes) -> None:
        if block == bytes(512):
            self._state = "trailer"
            return
        kind = block[156:157]
        try:
            size = _tar_size_field(block[124:136])
        except ValueError:
            # not a tar header: the extractor will refuse the stream; just keep the bytes
            self._state = "trailer"
            return
        name = block[0:100].split(b"\x00", 1)[0]
        if block[257:263] == b"ustar\x00":
            prefix = block[345:500].split(b"\x00", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        if kind in (b"x", b"L") and size <= MAX_META:
            # (a bigger one is refused by the extractor: just keep its bytes, never whole)
            self._meta_kind = kind
            self._meta = bytearray()
            self._remaining, self._pad = size, (-size) % 512
            self._state = "meta" if size else ("pad" if self._pad else "header")
            return
        if kind not in (b"g", b"K"):
            # a real entry: the names and sizes announced before it apply to it
            if self._longname is not None:
                name = self._longname
            if "path" in self._pax:
                name = self._pax["path"]
            if "size" in self._pax:
                with contextlib.suppress(ValueError):
                    size = int(self._pax["size"])
            self._pax, self._longname = {}, None
        self._remaining, self._pad = size, (-size) % 512
        if kind in _REGULAR and size > 0:
            self._file(name, size)
            self._state = "file"
        elif size > 0:
            self._state = "raw"
        else:
            self._state = "header"

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.total += len(view)
        while view:
            st = self._state
            if st == "header":
                need = 512 - len(self._header)
                chunk, view = view[:need], view[need:]
                self._header += chunk
                self._raw += chunk
                if len(self._header) == 512:
                    block = bytes(self._header)
                    self._header = bytearray()
                    self._parse_header(block)
            elif st in ("meta", "raw", "file"):
                n = min(self._remaining, len(view))
                chunk, view = view[:n], view[n:]
                if st != "file":
                    self._raw += chunk
                if st == "meta":
                    self._meta += chunk
                self._remaining -= n
                if self._remaining == 0:
                    if st == "meta":
                        if self._meta_kind == b"L":
                            self._longname = bytes(self._meta).split(b"\x00", 1)[0]
                        else:
                            self._pax.update(_pax_records(bytes(self._meta)))
                        self._meta = bytearray()
                    self._state = "pad" if self._pad else "header"
            elif st == "pad":
                n = min(self._pad, len(view))
                self._raw += view[:n]
                view = view[n:]
                self._pad -= n
                if self._pad == 0:
                    self._state = "header"
            else:  # trailer: everything after the end-of-archive block, verbatim
                self._raw += view
                view = view[len(view) :]
            if len(self._raw) >= self._RAW_FLUSH:
                self._flush_raw()

    def close(self) -> None:
        self._raw += self._header  # a truncated header, if the stream ended in one
        self._header = bytearray()
        self._flush_raw()


class _HashingReader(io.RawIOBase):
    """Reads through to ``inner`` while hashing, counting and recording the tar."""

    def __init__(self, inner: IO[bytes], recorder: _TarSplitRecorder) -> None:
        self._inner = inner
        self._recorder = recorder
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        data = self._inner.read(len(view))
        if not data:
            return 0
        n = len(data)
        view[:n] = data
        self.sha.update(data)
        self._recorder.feed(data)
        return n

    def drain(self) -> None:
        """Read what the consumer left (tar padding after the end blocks): it is
        part of the digest."""
        while True:
            data = self._inner.read(_CHUNK)
            if not data:
                return
            self.sha.update(data)
            self._recorder.feed(data)


def _open_in_root(root: str, name: str) -> int:
    """Open regular file ``name`` inside ``root`` without escaping it.

    Symlinks among the parent directories resolve as if ``root`` were ``/``;
    the last component must be a regular file, not a link.
    """
    parts = collections.deque(p for p in name.split("/") if p not in ("", "."))
    if not parts:
        raise FileNotFoundError(name)
    resolved: list[str] = []
    hops = 0
    while len(parts) > 1:
        p = parts.popleft()
        if p == "..":
            if resolved:
                resolved.pop()
            continue
        here = os.path.join(root, *resolved, p)
        st = os.lstat(here)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(f"too many levels of symbolic links in {name}")
            target = os.readlink(here)
            if target.startswith("/"):
                resolved = []
            parts.extendleft(reversed([t for t in target.split("/") if t not in ("", ".")]))
            continue
        resolved.append(p)
    last = parts[0]
    if last == "..":
        raise IsADirectoryError(name)
    return os.open(os.path.join(root, *resolved, last), os.O_RDONLY | os.O_NOFOLLOW)


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


@dataclass(frozen=True)
class RWLayer:
    """A container's init and read-write layers (driver ids) and the image layer under them."""

    container_id: str
    init_id: str
    mount_id: str
    parent: str | None  #: chain ID of the image's top layer
    #: "<uid>.<gid>" when the layers below are chowned copies for that mapping
    mapped: str | None = None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write_synced(path: str, data: bytes | str) -> None:
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


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
        self._mounts_dir = os.path.join(self.root, "mounts")
        self._tmp_dir = os.path.join(self.root, "tmp")
        self._mapped_dir = os.path.join(self.root, "mapped")
        for d in (self._layers_dir, self._mounts_dir, self._tmp_dir, self._mapped_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._lock = threading.RLock()
        self._layers: dict[str, Layer] = {}
        self._refs: dict[str, int] = {}
        self._mounts: dict[str, RWLayer] = {}
        self._creating: set[str] = set()
        #: chowned copies: (mapping key, chain ID) -> driver id, their holders, and
        #: the chain ID of their parent (the originals may be gone when they go)
        self._copies: dict[tuple[str, str], str] = {}
        self._copy_refs: dict[tuple[str, str], int] = {}
        self._copy_parent: dict[tuple[str, str], str | None] = {}
        #: one copy is made at a time (two containers of one mapping share them)
        self._copy_lock = threading.Lock()
        self._restore()

    # -- start-up ------------------------------------------------------------

    def _restore(self) -> None:
        self._clean_tmp()
        for hexid in sorted(os.listdir(self._layers_dir)):
            d = os.path.join(self._layers_dir, hexid)
            try:
                parent_path = os.path.join(d, "parent")
                layer = Layer(
                    chain_id="sha256:" + hexid,
                    diff_id=_read(os.path.join(d, "diff")),
                    parent=_read(parent_path) if os.path.exists(parent_path) else None,
                    cache_id=_read(os.path.join(d, "cache-id")),
                    size=int(_read(os.path.join(d, "size"))),
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
        for cid in sorted(os.listdir(self._mounts_dir)):
            d = os.path.join(self._mounts_dir, cid)
            try:
                parent_path = os.path.join(d, "parent")
                mapped_path = os.path.join(d, "mapped")
                rw = RWLayer(
                    container_id=cid,
                    init_id=_read(os.path.join(d, "init-id")),
                    mount_id=_read(os.path.join(d, "mount-id")),
                    parent=_read(parent_path) if os.path.exists(parent_path) else None,
                    mapped=_read(mapped_path) if os.path.exists(mapped_path) else None,
                )
            except OSError as exc:
                log.warning("layer.mount_unreadable", container=cid, error=str(exc))
                continue
            self._mounts[cid] = rw
            if rw.parent is not None and rw.parent in self._layers:
                self._refs[rw.parent] += 1
        self._restore_copies()

    def _restore_copies(self) -> None:
        for key in sorted(os.listdir(self._mapped_dir)):
            kdir = os.path.join(self._mapped_dir, key)
            for hexid in sorted(os.listdir(kdir)):
                path = os.path.join(kdir, hexid)
                if hexid.startswith("."):
                    self._discard_dir(path)  # a copy cut short
                    continue
                try:
                    ident = (key, "sha256:" + hexid)
                    self._copies[ident] = _read(os.path.join(path, "cache-id"))
                    parent_path = os.path.join(path, "parent")
                    self._copy_parent[ident] = (_read(parent_path)
                                                if os.path.exists(parent_path) else None)
                except OSError as exc:
                    log.warning("layer.copy_unreadable", mapping=key, chain_id=hexid,
                                error=str(exc))
        for key, chain in self._copies:
            self._copy_refs[(key, chain)] = self._copy_refs.get((key, chain), 0)
            if key in self.pinned_copies and chain in self._layers:
                self._copy_refs[(key, chain)] += 1  # held by its original
            parent = self._copy_parent.get((key, chain))
            if parent is not None and (key, parent) in self._copies:
                self._copy_refs[(key, parent)] = self._copy_refs.get((key, parent), 0) + 1
        for rw in self._mounts.values():
            if rw.mapped and rw.parent and (rw.mapped, rw.parent) in self._copies:
                self._copy_refs[(rw.mapped, rw.parent)] += 1
        # copies no container holds any more (a removal cut short)
        for key, chain in [k for k, n in self._copy_refs.items() if n == 0]:
            if self._copy_refs.get((key, chain)) == 0:
                self._copy_refs[(key, chain)] = 1
                self._release_copy(key, chain)

    def _clean_tmp(self) -> None:
        """Remove what a crash left half-done: metadata under tmp/ and the
        driver layers it names."""
        for entry in os.listdir(self._tmp_dir):
            path = os.path.join(self._tmp_dir, entry)
            self._discard_dir(path)

    def _discard_dir(self, path: str) -> None:
        """Remove the driver layers a (temporary) metadata dir names, then the dir."""
        for name in ("mount-id", "init-id", "cache-id"):
            with contextlib.suppress(OSError):
                ident = _read(os.path.join(path, name))
                if ident:
                    try:
                        self.driver.remove(ident)
                    except Exception as exc:  # keep going: the rest can still be freed
                        log.warning("layer.driver_remove_failed", id=ident, error=str(exc))
        shutil.rmtree(path, ignore_errors=True)

    def _new_tmp(self, prefix: str) -> str:
        return os.path.join(self._tmp_dir, f"{prefix}-{secrets.token_hex(8)}")

    def _retire(self, path: str) -> str:
        """Move a live metadata dir into tmp/ (fast, atomic); the caller frees it."""
        dest = self._new_tmp("del")
        os.rename(path, dest)
        fsync_dir(os.path.dirname(path))
        return dest

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
                doomed.append((layer, self._retire(os.path.join(self._layers_dir, hexid))))
                cur = layer.parent
        # children before parents: a driver may refuse to drop a lower layer still in use
        for layer, path in doomed:
            for key in self.pinned_copies:
                if (key, layer.chain_id) in self._copies:
                    self._release_copy(key, layer.chain_id)  # its copy goes with it
            self._discard_dir(path)
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
        self._discard_dir(tmp)
        if parent is not None:
            self.release(parent)
        return existing

    def _apply(
        self, stream: IO[bytes], parent: Layer | None, expected: str | None
    ) -> tuple[Layer, str]:
        tmp = self._new_tmp("write")
        os.mkdir(tmp, 0o700)
        cache_id = secrets.token_hex(32)
        parent_cache = parent.cache_id if parent is not None else None
        try:
            # name the driver layer first, so a crash mid-unpack leaves nothing unfindable
            _write_synced(os.path.join(tmp, "cache-id"), cache_id)
            self.driver.create(cache_id, parent_cache)
            with gzip.open(os.path.join(tmp, "tar-split.json.gz"), "wb", compresslevel=6) as ts:
                recorder = _TarSplitRecorder(ts)  # type: ignore[arg-type]
                src = decompressed(stream)
                reader = _HashingReader(src, recorder)
                try:
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
            _write_synced(os.path.join(tmp, "diff"), diff_id)
            _write_synced(os.path.join(tmp, "size"), str(int(size)))
            if parent is not None:
                _write_synced(os.path.join(tmp, "parent"), parent.chain_id)
            with open(os.path.join(tmp, "tar-split.json.gz"), "rb") as f:
                os.fsync(f.fileno())
            fsync_dir(tmp)
        except BaseException:
            self._discard_dir(tmp)
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
        length = 0
        with gzip.open(ts_path, "rb") as f:
            for line in f:
                entry = json.loads(line)
                if entry["type"] == _SEGMENT:
                    length += len(base64.b64decode(entry["payload"]))
                else:
                    length += int(entry["size"])
        return LayerTarStream(self._assemble(layer, ts_path), length)

    def _assemble(self, layer: Layer, ts_path: str) -> Iterator[bytes]:
        root: str | None = None
        sha = hashlib.sha256()
        try:
            with gzip.open(ts_path, "rb") as f:
                for line in f:
                    entry = json.loads(line)
                    if entry["type"] == _SEGMENT:
                        data = base64.b64decode(entry["payload"])
                        sha.update(data)
                        yield data
                        continue
                    if root is None:
                        root = self.driver.get(layer.cache_id)
                    name = entry.get("name")
                    if name is None:
                        name = os.fsdecode(base64.b64decode(entry["name_raw"]))
                    remaining = int(entry["size"])
                    fd = _open_in_root(root, name)
                    with os.fdopen(fd, "rb") as src:
                        while remaining:
                            data = src.read(min(_CHUNK, remaining))
                            if not data:
                                raise InvalidImage(
                                    f"layer {layer.chain_id}: {name} is shorter than recorded; "
                                    "the layer's files were changed"
                                )
                            remaining -= len(data)
                            sha.update(data)
                            yield data
            if "sha256:" + sha.hexdigest() != layer.diff_id:
                raise LayerDigestMismatch(layer.diff_id, "sha256:" + sha.hexdigest(),
                                          f"stored layer {layer.chain_id}")
        finally:
            if root is not None:
                self.driver.put(layer.cache_id)

    # -- container layers ------------------------------------------------------------

    def create_rw(
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
        driver ids.  Holds a reference on ``parent`` until ``remove_rw``.

        With ``chowned`` (a remapped container without idmapped mounts) both
        sit on chowned copies of the image's layers for that mapping, made
        now if missing, and the init layer's files are the container root's.
        """
        with self._lock:
            if container_id in self._mounts or container_id in self._creating:
                raise ImageConflict(f"a read-write layer for container {container_id} exists")
            parent_layer = self.acquire(parent) if parent is not None else None
            self._creating.add(container_id)
        mount_id = secrets.token_hex(32)
        init_id = mount_id + "-init"
        parent_cache = parent_layer.cache_id if parent_layer else None
        key = f"{chowned.root_uid}.{chowned.root_gid}" if chowned is not None else None
        copied = False
        tmp = self._new_tmp("mount")
        try:
            os.mkdir(tmp, 0o700)
            _write_synced(os.path.join(tmp, "init-id"), init_id)
            _write_synced(os.path.join(tmp, "mount-id"), mount_id)
            if parent is not None:
                _write_synced(os.path.join(tmp, "parent"), parent)
            if key is not None:
                _write_synced(os.path.join(tmp, "mapped"), key)
            fsync_dir(tmp)
            init_tar = io.BytesIO(_init_tar(init_files))
            if key is not None and chowned is not None:
                if parent is not None:
                    parent_cache = self._acquire_copies(key, parent, chowned)
                    copied = True
                init_tar = self._shifted(init_tar, chowned)
            self.driver.create(init_id, parent_cache)
            try:
                self.driver.apply_diff(init_id, parent_cache, init_tar)
            finally:
                init_tar.close()
            self.driver.create_rw(mount_id, init_id, dict(storage_opts or {}))
            if chowned is not None:
                # the root directory is no entry of any tar: give it the container's root
                root = self.driver.get(mount_id)
                try:
                    os.chown(root, chowned.root_uid, chowned.root_gid)
                finally:
                    self.driver.put(mount_id)
            dest = os.path.join(self._mounts_dir, container_id)
            with self._lock:
                os.rename(tmp, dest)
                fsync_dir(self._mounts_dir)
                self._mounts[container_id] = RWLayer(container_id, init_id, mount_id, parent,
                                                     key)
                self._creating.discard(container_id)
        except BaseException:
            # the rw layer before the init layer it sits on
            self._discard_dir(tmp)
            with self._lock:
                self._creating.discard(container_id)
            if copied and key is not None and parent is not None:
                self._release_copy(key, parent)
            if parent is not None:
                self.release(parent)
            raise
        log.info("layer.rw_created", container=container_id, mount_id=mount_id, parent=parent)
        return init_id, mount_id

    def rw_layer(self, container_id: str) -> RWLayer:
        """The container's RW layer record; ``LayerNotFound`` if it has none."""
        with self._lock:
            try:
                return self._mounts[container_id]
            except KeyError:
                raise LayerNotFound(
                    f"no read-write layer for container {container_id}"
                ) from None

    def rw_layers(self) -> list[RWLayer]:
        with self._lock:
            return list(self._mounts.values())

    def remove_rw(self, container_id: str) -> None:
        """Remove a container's RW and init layers and release the image layer."""
        with self._lock:
            rw = self.rw_layer(container_id)
            del self._mounts[container_id]
            path = self._retire(os.path.join(self._mounts_dir, container_id))
        self._discard_dir(path)
        if rw.mapped and rw.parent is not None and (rw.mapped, rw.parent) in self._copies:
            self._release_copy(rw.mapped, rw.parent)
        if rw.parent is not None and self.exists(rw.parent):
            self.release(rw.parent)
        log.info("layer.rw_removed", container=container_id, mount_id=rw.mount_id)

    # -- chowned copies ----------------------------------------------------------

    def copies(self) -> dict[tuple[str, str], int]:
        """(mapping, chain ID) -> holders of every chowned copy (for tests and info)."""
        with self._lock:
            return dict(self._copy_refs)

    def _shifted(self, stream: IO[bytes], idmap: IdMap) -> IO[bytes]:
        """``stream`` (a tar) with its owners moved to ``idmap``'s host ids."""
        return self.spooled_owners(stream, idshift.to_host(idmap))

    def spooled_owners(self, stream: IO[bytes], ids: tuple[idshift.IdFn, idshift.IdFn]
                       ) -> IO[bytes]:
        """``stream`` (a tar) with its owners mapped by ``ids`` (uid, gid functions),
        spooled to a file of tmp/ that goes when the returned stream is closed."""
        spool = tempfile.TemporaryFile(dir=self._tmp_dir)  # noqa: SIM115 (returned open)
        try:
            idshift.rewrite_owners(stream, spool, *ids)  # type: ignore[arg-type]
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool  # type: ignore[return-value]

    def _acquire_copies(self, key: str, chain: str, idmap: IdMap) -> str:
        """The driver id of the chowned copy of ``chain`` for mapping ``key``,
        made (with those of its parents) if missing; one reference for the caller."""
        with self._copy_lock:
            todo: list[Layer] = []
            with self._lock:
                cur: str | None = chain
                while cur is not None and (key, cur) not in self._copies:
                    layer = self.get(cur)
                    todo.append(layer)
                    cur = layer.parent
            for layer in reversed(todo):  # base first
                self._copy_layer(key, layer, idmap)
            with self._lock:
                self._copy_refs[(key, chain)] += 1
                return self._copies[(key, chain)]

    def _copy_layer(self, key: str, layer: Layer, idmap: IdMap) -> None:
        kdir = os.path.join(self._mapped_dir, key)
        os.makedirs(kdir, mode=0o700, exist_ok=True)
        hexid = layer.chain_id.split(":", 1)[1]
        tmp = os.path.join(kdir, f".tmp-{hexid}-{secrets.token_hex(4)}")
        cache_id = secrets.token_hex(32)
        parent_copy = self._copies[(key, layer.parent)] if layer.parent else None
        parent_orig = self.cache_id(layer.parent)
        t0 = time.monotonic()
        try:
            os.mkdir(tmp, 0o700)
            _write_synced(os.path.join(tmp, "cache-id"), cache_id)
            if layer.parent is not None:
                _write_synced(os.path.join(tmp, "parent"), layer.parent)
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
            self._discard_dir(tmp)
            raise
        with self._lock:
            self._copies[(key, layer.chain_id)] = cache_id
            self._copy_parent[(key, layer.chain_id)] = layer.parent
            # a pinned mapping's copy is held by its original layer too
            self._copy_refs[(key, layer.chain_id)] = int(key in self.pinned_copies)
            if layer.parent is not None:
                self._copy_refs[(key, layer.parent)] += 1
        log.info("layer.copied_for_userns", chain_id=layer.chain_id, mapping=key,
                 cache_id=cache_id, ms=round((time.monotonic() - t0) * 1000, 1))

    def _release_copy(self, key: str, chain: str) -> None:
        """Drop one reference on a copy; at zero it goes, and its parent's is dropped."""
        doomed: list[str] = []
        with self._lock:
            cur: str | None = chain
            while cur is not None and (key, cur) in self._copies:
                self._copy_refs[(key, cur)] -= 1
                if self._copy_refs[(key, cur)] > 0:
                    break
                del self._copy_refs[(key, cur)]
                del self._copies[(key, cur)]
                hexid = cur.split(":", 1)[1]
                doomed.append(self._retire(os.path.join(self._mapped_dir, key, hexid)))
                cur = self._copy_parent.pop((key, cur), None)
        for path in doomed:  # children first
            self._discard_dir(path)


def _init_tar(extra: Mapping[str, bytes] | None) -> bytes:
    """The init layer's content as a small tar (Docker's initlayer.Setup)."""
    now = time.time()
    buf = io.BytesIO()
    files: dict[str, bytes] = dict.fromkeys(INIT_FILES, b"")
    for path, data in (extra or {}).items():
        files[path.strip("/")] = data
    dirs = set(INIT_DIRS)
    for path in files:
        parent = os.path.dirname(path)
        while parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = now
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = 0o644
            info.mtime = now
            tar.addfile(info, io.BytesIO(files[path]))
        link = tarfile.TarInfo("etc/mtab")
        link.type = tarfile.SYMTYPE
        link.linkname = "/proc/mounts"
        link.mtime = now
        tar.addfile(link)
    return buf.getvalue()
