"""Docker's ``local`` log format, entry by entry.

Each entry is a protobuf ``LogEntry`` (moby ``api/types/plugins/logdriver``)
framed by its size, a big-endian uint32, before and after::

    [size][LogEntry: 1 source, 2 time_nano, 3 line, 4 partial, 5 partial_log_metadata][size]

The leading size lets a reader go forward, the trailing one backward (``--tail``
without reading the file).  ``line`` is stored without its newline; an entry
whose line had none (a long line cut in pieces, the last bytes before EOF) is
``partial``.  The message is small and fixed, so it is encoded by hand: a few
varints cost less than a protobuf library and its generated code.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO

from skiff.core.hookspecs import LogMessage

#: dockerd refuses to decode an entry larger than this (its ``maxMsgLen``)
MAX_ENTRY = 1_000_000
#: how much a reader fetches at a time
BLOCK = 1 << 20
#: how much a backwards reader fetches at a time (``--tail 10`` reads one of these)
BACK_BLOCK = 64 * 1024

_SIZE = struct.Struct(">I")
_SOURCES = {"stdout": b"\x0a\x06stdout", "stderr": b"\x0a\x06stderr"}
_PARTIAL = b"\x20\x01"


class CorruptEntry(ValueError):
    """An entry that cannot be what a writer wrote: its sizes disagree, it is
    larger than any writer writes, or its protobuf does not parse."""


def varint(n: int) -> bytes:
    """``n`` (0 or more; a negative int64 as its 64-bit two's complement) as a varint."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode(stream: str, line: bytes, time_nano: int) -> bytes:
    """One framed entry for ``line`` (with its newline, or a partial one without)."""
    partial = not line.endswith(b"\n")
    body = line if partial else line[:-1]
    source = _SOURCES.get(stream)
    if source is None:
        raw = stream.encode()
        source = b"\x0a" + varint(len(raw)) + raw
    parts = [source]
    if time_nano:  # proto3 leaves zero values out, as gogo's marshaller does
        parts.append(b"\x10" + varint(time_nano))
    if body:
        parts.append(b"\x1a" + varint(len(body)))
        parts.append(body)
    if partial:
        parts.append(_PARTIAL)
    payload = b"".join(parts)
    size = _SIZE.pack(len(payload))
    return size + payload + size


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise CorruptEntry("a varint runs past its entry")


def decode(data: bytes, start: int, end: int) -> LogMessage:
    """The message in the protobuf ``data[start:end]``.

    Unknown fields are skipped, as protobuf readers must; the partial
    metadata (id, ordinal, last) is not kept: skiff's messages have no place
    for it, and a partial line is one without its newline.
    """
    source = "stdout"
    time_nano = 0
    line = b""
    partial = False
    pos = start
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos, end)
            if field == 2:
                time_nano = value - (1 << 64) if value >= 1 << 63 else value
            elif field == 4:
                partial = value != 0
        elif wire == 2:
            n, pos = _read_varint(data, pos, end)
            if pos + n > end:
                raise CorruptEntry("a field runs past its entry")
            if field == 1:
                source = data[pos:pos + n].decode("utf-8", "replace")
            elif field == 3:
                line = data[pos:pos + n]
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise CorruptEntry(f"protobuf wire type {wire} in a log entry")
    if pos != end:
        raise CorruptEntry("a field runs past its entry")
    if source not in ("stdout", "stderr"):
        raise CorruptEntry(f"unknown stream {source!r}")
    if not partial:
        line += b"\n"
    return LogMessage(source, line, time_nano / 1e9)  # type: ignore[arg-type]


def forward(f: IO[bytes], end: int, start: int = 0) -> Iterator[tuple[LogMessage, int]]:
    """The entries of ``f[start:end]`` in order, each with the offset where it starts.

    An entry cut short by ``end`` (a write in progress, a crash in the middle of
    one) ends the iteration quietly; one that cannot be an entry raises
    :class:`CorruptEntry` (the caller decides whether to skip the file).
    """
    f.seek(start)
    buf = b""
    base = start  # the file offset of buf[0]
    left = end - start
    pos = 0
    while True:
        have = len(buf) - pos
        size = _SIZE.unpack_from(buf, pos)[0] if have >= 4 else 0
        if have < 4 or have < size + 8:
            if size > MAX_ENTRY:
                raise CorruptEntry(f"log entry of {size} bytes at offset {base + pos} "
                                   f"(at most {MAX_ENTRY})")
            if left <= 0:
                return
            chunk = f.read(min(max(BLOCK, size + 8), left))
            if not chunk:
                return
            left -= len(chunk)
            base += pos
            buf = buf[pos:] + chunk
            pos = 0
            continue
        stop = pos + 4 + size
        if _SIZE.unpack_from(buf, stop)[0] != size:
            raise CorruptEntry(f"log entry at offset {base + pos}: its sizes before and "
                               "after disagree")
        yield decode(buf, pos + 4, stop), base + pos
        pos = stop + 4


def backward(f: IO[bytes], end: int) -> Iterator[tuple[LogMessage, int]]:
    """The entries of ``f[:end]``, last first, each with its offset, read from the end.

    Each step reads the trailing size, then checks the leading one: a
    mismatch raises :class:`CorruptEntry`.  So does a file torn at its end (a
    crash in the middle of a write): going backwards, its last bytes are no
    size; the caller falls back to reading that file forwards.
    """
    lo, hi, block = 0, 0, b""  # block holds f[lo:hi]

    def get(a: int, b: int) -> bytes:
        nonlocal lo, hi, block
        if not (lo <= a and b <= hi):
            lo = max(0, min(a, b - BACK_BLOCK))
            hi = b
            f.seek(lo)
            block = f.read(hi - lo)
            if len(block) != hi - lo:
                raise CorruptEntry("the log file shrank while being read")
        return block[a - lo:b - lo]

    pos = end
    while pos >= 8:
        (size,) = _SIZE.unpack(get(pos - 4, pos))
        start = pos - 8 - size
        if size > MAX_ENTRY or start < 0:
            raise CorruptEntry(f"log entry ending at offset {pos}: bad trailing size {size}")
        data = get(start, pos)
        if _SIZE.unpack_from(data, 0)[0] != size:
            raise CorruptEntry(f"log entry ending at offset {pos}: its sizes before and "
                               "after disagree")
        yield decode(data, 4, 4 + size), start
        pos = start
    if pos:
        raise CorruptEntry(f"{pos} stray bytes at the start of the log file")
