"""Wire formats of Docker's streaming bodies.

* The multiplexed stream (logs and attach without a TTY): each frame is an
  8-byte header ``[type, 0, 0, 0, size (uint32, big-endian)]`` then ``size``
  bytes; type 0 is stdin (written on stdout), 1 stdout, 2 stderr.
* JSON-lines progress streams (pull, push, load, build, import): one JSON
  object per line, ended with ``\\r\\n`` as dockerd's stream formatter does; a
  failure is a final line with ``error`` and ``errorDetail``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

STDIN = 0
STDOUT = 1
STDERR = 2

_HEADER = struct.Struct(">BxxxL")
HEADER_SIZE = _HEADER.size  # 8
#: a frame's payload length is a uint32
MAX_FRAME = 0xFFFFFFFF


def multiplex_frame(stream_type: int, data: bytes) -> bytes:
    """One frame of the multiplexed stream: 8-byte header then ``data``."""
    if len(data) > MAX_FRAME:
        # dockerd never writes frames this big; splitting keeps the header's uint32 honest
        return b"".join(multiplex_frame(stream_type, data[i:i + MAX_FRAME])
                        for i in range(0, len(data), MAX_FRAME))
    return _HEADER.pack(stream_type, len(data)) + data


def json_line(obj: Any) -> bytes:
    """``obj`` as one line of a JSON progress stream (compact JSON, UTF-8, ``\\r\\n``)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "replace") + b"\r\n"


def error_line(message: str) -> bytes:
    """The last line of a failed progress stream, as the docker CLI expects it."""
    return json_line({"errorDetail": {"message": message}, "error": message})


def error_line_for(exc: BaseException) -> bytes:
    """:func:`error_line` for an exception; fits ``StreamResponse(on_error=...)``."""
    from skiff.core.api.errors import status_and_message

    return error_line(status_and_message(exc)[1])


class Demuxer:
    """Incremental parser of the multiplexed stream: feed bytes, get whole frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return the frames they complete as ``(type, payload)``."""
        self._buf += data
        frames: list[tuple[int, bytes]] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= HEADER_SIZE:
            kind, size = _HEADER.unpack_from(buf, pos)
            end = pos + HEADER_SIZE + size
            if end > len(buf):
                break
            frames.append((kind, bytes(buf[pos + HEADER_SIZE:end])))
            pos = end
        del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest."""
        return len(self._buf)


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """All frames in ``data``; ``ValueError`` if it ends inside a frame."""
    d = Demuxer()
    frames = d.feed(data)
    if d.pending:
        raise ValueError(f"multiplexed stream ends inside a frame ({d.pending} bytes left over)")
    return frames


def demux_streams(data: bytes) -> tuple[bytes, bytes]:
    """``(stdout, stderr)`` from a whole multiplexed stream (stdin frames count as stdout)."""
    out: list[bytes] = []
    err: list[bytes] = []
    for kind, payload in demux(data):
        (err if kind == STDERR else out).append(payload)
    return b"".join(out), b"".join(err)
