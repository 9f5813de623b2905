"""``docker logs`` of a json-file block without a Python object per message.

A million lines read one by one cost seconds in Python whatever each step
costs; here a block of the file (a megabyte of complete lines) is checked
and rendered with whole-block operations (``bytes.count``, ``split``,
``join``, ``map``, slicing in comprehensions) when it is in the exact form
skiff writes: every line ``{"log":"`` + text + a fixed tail (stream, the
driver's own attrs, a 30-character time), and no
escape in the text but ``\\n``.  Anything else (a file from dockerd, a
control character) returns None and goes the general way.

Why the checks are enough: inside the JSON text every ``"`` is escaped, so
``{"log":"`` after a newline, ``"}`` before one and the stream key (which
starts with a quote) can only be structure.  One of each per line, counted
over the block, and a time ending as skiff's do, fix each line's shape; the
text is what lies between the head and the tail, and a tail that was not
where skiff puts it would leave a raw quote in the text.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from dataclasses import dataclass

from skiff.core.containers.framing import HEADER, STREAM_TYPES
from skiff.core.containers.logrender import frame

_HEAD = b'{"log":"'
_OUT, _ERR = b'"stream":"stdout"', b'"stream":"stderr"'
_TIME = 30  #: 2026-11-28T01:02:03.123456000Z
#: frame headers by payload length, built once; longer payloads are packed one by one
_TABLE_SIZE = 4096
_HEADERS = {
    stream.encode(): [HEADER.pack(kind, n) for n in range(_TABLE_SIZE)]
    for stream, kind in STREAM_TYPES.items() if stream != "stdin"
}


@dataclass
class Rendered:
    data: bytes
    last_stamp: bytes  #: the time text of the last message in ``data`` (empty: none)
    last_count: int  #: messages in ``data`` with that time
    stop: bool  #: a message past ``until`` was seen: nothing after it is wanted


class FastRenderer:
    """Renders blocks written by one json-file driver (its attrs fix the tail)."""

    def __init__(self, attrs_part: bytes, *, want: set[bytes], lo: bytes | None,
                 hi: bytes | None, timestamps: bool, details: bytes | None,
                 framed: bool, coalesce: bool = False) -> None:
        self.mids = {s: b'","stream":"' + s + b'",' + attrs_part + b'"time":"'
                     for s in (b"stdout", b"stderr")}
        self.tail = len(self.mids[b"stdout"]) + _TIME + 2
        self.want = want
        self.lo, self.hi = lo, hi
        self.timestamps = timestamps
        self.details = details  #: the ``--details`` prefix with its space, or None
        self.framed = framed
        self.coalesce = coalesce

    def render(self, block: bytes) -> Rendered | None:
        # single bytes are looked for with ``in`` (memchr), never counted: that is slow
        lines = block.split(b"\n")
        lines.pop()  # the block ends with a newline
        n = len(lines)
        if n == 0:
            return Rendered(b"", b"", 0, False)
        if not (block.startswith(_HEAD) and block.count(b'\n{"log":"') == n - 1
                and block.count(b'"}\n') == n):
            return None
        k, t = self.tail, -_TIME - 2
        # each line's tail: its stream key with the driver's attrs, then a time of
        # skiff's (microseconds: it ends in 000Z; dockerd 20.10 trims zeros)
        outs, errs = block.count(self.mids[b"stdout"]), block.count(self.mids[b"stderr"])
        if outs + errs != n or block.count(b'000Z"}\n') != n:
            return None
        stream: bytes | None = b"stdout" if errs == 0 else b"stderr" if outs == 0 else None
        if stream is not None and stream not in self.want:
            return Rendered(b"", b"", 0, False)
        stop = False
        times: list[bytes] | None = None
        if self.lo is not None or self.hi is not None or self.timestamps:
            times = [ln[t:-2] for ln in lines]
        if self.lo is not None or self.hi is not None:
            assert times is not None
            if times != sorted(times):  # a clock set back: the general way
                return None
            first = 0 if self.lo is None else bisect.bisect_left(times, self.lo)
            end = n if self.hi is None else bisect.bisect_right(times, self.hi)
            stop = end < n
            if first >= end:
                return Rendered(b"", b"", 0, stop)
            if first or end < n:
                lines, times = lines[first:end], times[first:end]
        streams: list[bytes] | None = None
        if stream is None:
            streams = [ln[12 - k:18 - k] for ln in lines]
            if len(self.want) == 1:
                (stream,) = self.want
                keep = [i for i, s in enumerate(streams) if s == stream]
                if not keep:
                    return Rendered(b"", b"", 0, stop)
                lines = [lines[i] for i in keep]
                if times is not None:
                    times = [times[i] for i in keep]
                streams = None
        # a raw NUL cannot be in valid JSON text: it separates the texts while
        # one replace unescapes them all.  A raw quote means a line whose tail
        # is not where skiff's is (the slice took some of it); a backslash left
        # after the replace, another escape: the general way for both
        joined = b"\0".join([ln[8:-k] for ln in lines])
        if b'"' in joined:
            return None
        if b"\\" in joined:
            joined = joined.replace(b"\\n", b"\n")
            if b"\\" in joined:
                return None
        texts = joined.split(b"\0")
        if len(texts) != len(lines):
            return None
        last = lines[-1][t:-2]
        if times is not None:
            count = times.count(last)
        elif streams is None and len(lines) == n:
            count = block.count(b'"time":"' + last + b'"}\n')
        else:
            count = [ln[t:-2] for ln in lines].count(last)
        data = self._frames(stream or b"stdout", streams, texts, times)
        return Rendered(data, last, count, stop)

    def _frames(self, stream: bytes, streams: list[bytes] | None, texts: list[bytes],
                times: list[bytes] | None) -> bytes:
        """The payloads, each framed (the stream of each line, or ``stream`` for all)."""
        m = len(texts)
        cols: list[list[bytes]] = []
        extra = 0
        if self.timestamps:
            assert times is not None
            cols += [times, [b" "] * m]
            extra += _TIME + 1
        if self.details is not None:
            cols.append([self.details] * m)
            extra += len(self.details)
        cols.append(texts)
        if self.framed and self.coalesce:
            if streams is None:
                return frame(stream.decode(), _interleave(cols))
            rows = texts if len(cols) == 1 else [b"".join(row) for row in zip(*cols, strict=True)]
            return b"".join([frame(s.decode(), b"".join([p for _, p in run])) for s, run in
                             itertools.groupby(zip(streams, rows, strict=True),
                                               key=operator.itemgetter(0))])
        if self.framed:
            lengths = list(map(len, texts))
            if max(lengths) + extra >= _TABLE_SIZE:
                kinds = [STREAM_TYPES[s.decode()] for s in streams or [stream] * m]
                headers = [HEADER.pack(kd, x + extra) for kd, x in zip(kinds, lengths,
                                                                       strict=True)]
            elif streams is None:
                table = _HEADERS[stream]
                headers = list(map(table.__getitem__, map(extra.__add__, lengths)))
            else:
                headers = [_HEADERS[s][x + extra] for s, x in zip(streams, lengths, strict=True)]
            cols.insert(0, headers)
        if len(cols) == 1:
            return b"".join(texts)
        return _interleave(cols)


def _interleave(cols: list[list[bytes]]) -> bytes:
    """Row by row: ``cols[0][0] + cols[1][0] + ... + cols[0][1] + ...``."""
    if len(cols) == 1:
        return b"".join(cols[0])
    width, m = len(cols), len(cols[0])
    parts: list[bytes] = [b""] * (width * m)
    for i, col in enumerate(cols):
        parts[i::width] = col
    return b"".join(parts)
