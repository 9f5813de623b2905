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

from skiff.core.hookspecs import LogMessage, PartialMeta

#: dockerd refuses to decode an entry larger than this (its ``maxMsgLen``)
MAX_ENTRY = 1_000_000
#: how much a reader fetches at a time
BLOCK = 1 << 20
#: how much a backwards reader fetches at a time (``--tail 10`` reads one of these)
BACK_BLOCK = 64 * 1024

SIZE = struct.Struct(">I")
_SOURCES = {"stdout": b"\x0a\x06stdout", "stderr": b"\x0a\x06stderr"}
_PARTIAL = b"\x20\x01"
_BYTE = [bytes((i,)) for i in range(256)]


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


def encode(stream: str, line: bytes, time_nano: int, partial: PartialMeta | None = None
           ) -> bytes:
    """One framed entry for ``line`` (with its newline, or a partial one without)."""
    return frame(entry_head(stream, time_nano), line, partial)


def entry_head(stream: str, time_nano: int) -> bytes:
    """The fields before the line: source and time (what lines of one read share)."""
    source = _SOURCES.get(stream)
    if source is None:
        raw = stream.encode()
        source = b"\x0a" + varint(len(raw)) + raw
    return source + b"\x10" + varint(time_nano) if time_nano else source


def frame(head: bytes, line: bytes, partial: PartialMeta | None = None) -> bytes:
    """A framed entry: ``head`` (:func:`entry_head`), then ``line``'s fields.

    A piece of a cut line is ``partial`` with its metadata, the last piece
    too (dockerd marks them all; its readers end the line after the piece
    whose metadata says ``last``).
    """
    n = len(line)
    if n and line[-1] == 0x0A:
        n -= 1
        tail = b""
    else:
        tail = _PARTIAL
    if partial is not None:
        tail = _PARTIAL + _metadata(partial)
    if n == 0:
        payload = head + tail
    elif n < 0x80:
        payload = b"".join((head, b"\x1a", _BYTE[n], line[:n], tail))
    else:
        payload = b"".join((head, b"\x1a", varint(n), line[:n], tail))
    size = SIZE.pack(len(payload))
    return b"".join((size, payload, size))


def _metadata(meta: PartialMeta) -> bytes:
    """Field 5, ``PartialLogEntryMetadata {1 last, 2 id, 3 ordinal}``, default values
    left out as protobuf writers do."""
    raw = meta.id.encode()
    body = (b"\x08\x01" if meta.last else b"") + (b"\x12" + varint(len(raw)) + raw if raw else b"")
    if meta.ordinal:
        body += b"\x18" + varint(meta.ordinal)
    return b"\x2a" + varint(len(body)) + body


def _decode_metadata(data: bytes, pos: int, end: int) -> PartialMeta:
    last, ident, ordinal = False, "", 0
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos, end)
            if field == 1:
                last = value != 0
            elif field == 3:
                ordinal = value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 2:
            n, pos = _read_varint(data, pos, end)
            if pos + n > end:
                raise CorruptEntry("a field of the partial metadata runs past it")
            if field == 2:
                ident = data[pos:pos + n].decode("utf-8", "replace")
            pos += n
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise CorruptEntry(f"protobuf wire type {wire} in a log entry's partial metadata")
    if pos != end:
        raise CorruptEntry("a field of the partial metadata runs past it")
    return PartialMeta(ident, ordinal, last)


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

    Unknown fields are skipped, as protobuf readers must.  A partial entry's
    line has no newline unless its metadata says it is the last piece.
    """
    source = "stdout"
    time_nano = 0
    line = b""
    partial = False
    meta: PartialMeta | None = None
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
            elif field == 5:
                meta = _decode_metadata(data, pos, pos + n)
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
        meta = None
        line += b"\n"
    elif meta is not None and meta.last:
        line += b"\n"
    # seconds and nanoseconds apart: one division of the whole count would round
    # it to a float first and land off the time json-file would give
    sec, nsec = divmod(time_nano, 1_000_000_000)
    return LogMessage(source, line, sec + nsec / 1e9, partial=meta)  # type: ignore[arg-type]


class Decoder:
    """:func:`decode` with a fast path for the layout every writer produces
    (source, a nine-byte time, the line, maybe partial), and the last time
    remembered: the daemon stamps every line of one read alike."""

    __slots__ = ("_raw", "_time")

    def __init__(self) -> None:
        self._raw = b""
        self._time = 0.0

    def __call__(self, data: bytes, start: int, end: int) -> LogMessage:
        # 0a 06 "stdout" | 10 <time: 9 bytes from 1973 to 2262> | 1a <len> line | [20 01]
        if (end - start >= 20 and data[start + 8] == 0x10 and data[start + 17] < 0x80
                and data[start + 18] == 0x1A
                and (data.startswith(b"\x0a\x06stdout", start)
                     or data.startswith(b"\x0a\x06stderr", start))):
            n = data[start + 19]
            p = start + 20
            if n >= 0x80:  # a line of 128 bytes or more
                b = data[p]
                p += 1
                n = (n & 0x7F) | (b & 0x7F) << 7
                if b >= 0x80:  # 16 KiB or more: the long way
                    return decode(data, start, end)
            stop = p + n
            partial = stop + 2 == end and data[stop] == 0x20 and data[stop + 1] == 1
            if stop == end or partial:
                raw = data[start + 9:start + 18]
                if raw != self._raw:
                    t = 0
                    for i, b in enumerate(raw):
                        t |= (b & 0x7F) << (7 * i)
                    sec, nsec = divmod(t, 1_000_000_000)
                    self._raw, self._time = raw, sec + nsec / 1e9
                line = data[p:stop]
                return LogMessage("stdout" if data[start + 5] == 0x6F else "stderr",
                                  line if partial else line + b"\n", self._time)
        return decode(data, start, end)


def forward(f: IO[bytes], end: int, start: int = 0) -> Iterator[tuple[LogMessage, int]]:
    """The entries of ``f[start:end]`` in order, each with the offset where it starts.

    An entry cut short by ``end`` (a write in progress, a crash in the middle of
    one) ends the iteration quietly; one that cannot be an entry raises
    :class:`CorruptEntry` (the caller decides whether to skip the file).
    """
    decoder = Decoder()
    f.seek(start)
    buf = b""
    base = start  # the file offset of buf[0]
    left = end - start
    pos = 0
    while True:
        have = len(buf) - pos
        size = SIZE.unpack_from(buf, pos)[0] if have >= 4 else 0
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
        if SIZE.unpack_from(buf, stop)[0] != size:
            raise CorruptEntry(f"log entry at offset {base + pos}: its sizes before and "
                               "after disagree")
        yield decoder(buf, pos + 4, stop), base + pos
        pos = stop + 4


def backward(f: IO[bytes], end: int) -> Iterator[tuple[LogMessage, int]]:
    """The entries of ``f[:end]``, last first, each with its offset, read from the end.

    Each step reads the trailing size, then checks the leading one: a
    mismatch raises :class:`CorruptEntry`.  So does a file torn at its end (a
    crash in the middle of a write): going backwards, its last bytes are no
    size; the caller falls back to reading that file forwards.
    """
    decoder = Decoder()
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
        (size,) = SIZE.unpack(get(pos - 4, pos))
        start = pos - 8 - size
        if size > MAX_ENTRY or start < 0:
            raise CorruptEntry(f"log entry ending at offset {pos}: bad trailing size {size}")
        data = get(start, pos)
        if SIZE.unpack_from(data, 0)[0] != size:
            raise CorruptEntry(f"log entry ending at offset {pos}: its sizes before and "
                               "after disagree")
        yield decoder(data, 4, 4 + size), start
        pos = start
    if pos:
        raise CorruptEntry(f"{pos} stray bytes at the start of the log file")
