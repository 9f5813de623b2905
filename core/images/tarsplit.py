"""tar-split: the raw bytes of a layer tar, minus file contents.

Saving an image must reproduce each layer tar byte for byte (its sha256 is the
diffID in the image config).  A driver's ``diff`` regenerates a tar, which
differs in header details, so like Docker we record the tar's raw headers and
padding while it is applied (``tar-split.json.gz`` beside the layer's
metadata) and later interleave them with file contents read from the mounted
layer.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from typing import IO, Any

from skiff.core.images.errors import InvalidImage, LayerDigestMismatch
from skiff.core.tarlimits import MAX_META

__all__ = ["HashingReader", "TarSplitRecorder", "assemble", "recorded_length"]

_CHUNK = 1 << 20

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


class TarSplitRecorder:
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


class HashingReader(io.RawIOBase):
    """Reads through to ``inner`` while hashing, counting and recording the tar."""

    def __init__(self, inner: IO[bytes], recorder: TarSplitRecorder) -> None:
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



def recorded_length(ts_path: str) -> int:
    """The length of the tar a record describes, without reading any file."""
    length = 0
    with gzip.open(ts_path, "rb") as f:
        for line in f:
            entry = json.loads(line)
            if entry["type"] == _SEGMENT:
                length += len(base64.b64decode(entry["payload"]))
            else:
                length += int(entry["size"])
    return length


def assemble(ts_path: str, mount: Callable[[], str], diff_id: str,
             what: str) -> Iterator[bytes]:
    """The tar a record describes, its file contents read from the root that
    ``mount`` returns (called once, at the first file: a layer of only
    directories is never mounted); checked against ``diff_id`` at the end.
    ``what`` names the layer in errors."""
    root: str | None = None
    sha = hashlib.sha256()
    with gzip.open(ts_path, "rb") as f:
        for line in f:
            entry = json.loads(line)
            if entry["type"] == _SEGMENT:
                data = base64.b64decode(entry["payload"])
                sha.update(data)
                yield data
                continue
            if root is None:
                root = mount()
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
                            f"layer {what}: {name} is shorter than recorded; "
                            "the layer's files were changed"
                        )
                    remaining -= len(data)
                    sha.update(data)
                    yield data
    if "sha256:" + sha.hexdigest() != diff_id:
        raise LayerDigestMismatch(diff_id, "sha256:" + sha.hexdigest(), f"stored layer {what}")
