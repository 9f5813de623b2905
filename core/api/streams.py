"""Wire formats of Docker's streaming bodies.

* The multiplexed stream (logs and attach without a TTY): its framing is the
  domain's (core/containers/framing.py); this module parses it back.
* JSON-lines progress streams (pull, push, load, build, import): one JSON
  object per line, ended with ``\\r\\n`` as dockerd's stream formatter does; a
  failure is a final line with ``error`` and ``errorDetail``.
"""

from __future__ import annotations

import json
from typing import Any

from skiff.core.containers.framing import (  # noqa: F401  (re-exported for the API layer)
    HEADER,
    HEADER_SIZE,
    MAX_FRAME,
    STDERR,
    STDIN,
    STDOUT,
    SYSTEM,
    multiplex_frame,
)


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
            kind, size = HEADER.unpack_from(buf, pos)
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
