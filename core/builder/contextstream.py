"""The build context's bytes: decompressed by their magic, counted, cut at the limit.

The request body is read in 1 MiB chunks.  The limit counts *decompressed*
bytes (what would land on disk), so a gzip bomb (kilobytes that inflate to
gigabytes) is stopped at the limit, and the rest of the body is not read.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from typing import IO, Any

__all__ = ["CHUNK", "ContextStream", "Corrupt", "TooLarge", "Unsupported"]

CHUNK = 1 << 20


class TooLarge(Exception):
    """More decompressed bytes than the limit.

    Not a ``ValueError``: ``tarfile`` (and :mod:`skiff.core.tarlimits`) turn
    those into header errors, and this must reach the caller as it is."""


class Corrupt(Exception):
    """The compressed data cannot be decompressed (``format``: which compression)."""

    def __init__(self, fmt: str, detail: str) -> None:
        super().__init__(f"the build context's {fmt} data is corrupt: {detail}")


class Unsupported(Exception):
    """A compression the builder does not read (zstd)."""


class _Source(io.RawIOBase):
    """The request body, with the chunk read to sniff its magic put back in front."""

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
        data = self._rest.read(min(len(view), CHUNK))
        if not data:
            return 0
        view[: len(data)] = data
        return len(data)


class ContextStream:
    """``read(n)`` of the decompressed context; :class:`TooLarge` past ``limit``.

    ``format`` is ``"tar"``, ``"gzip"``, ``"bzip2"`` or ``"xz"``; ``count``
    the decompressed bytes handed out so far; ``empty`` whether the body
    held nothing at all.
    """

    def __init__(self, body: IO[bytes], limit: int) -> None:
        self.limit = limit
        self.count = 0
        head = b""
        while len(head) < 6:
            more = body.read(CHUNK)
            if not more:
                break
            head += more
        self.empty = not head
        src = io.BufferedReader(_Source(head, body), CHUNK)
        self._inner: IO[bytes]
        if head.startswith(b"\x1f\x8b"):
            self.format = "gzip"
            # typeshed: GzipFile is no IO[bytes], it reads like one
            self._inner = gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[assignment]
        elif head.startswith(b"BZh"):
            self.format = "bzip2"
            self._inner = bz2.BZ2File(src)
        elif head.startswith(b"\xfd7zXZ\x00"):
            self.format = "xz"
            self._inner = lzma.LZMAFile(src)  # noqa: SIM115  (read until the tar ends)
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            raise Unsupported(
                "the build context is compressed with zstd, which the builder does not "
                "read; send it plain or compressed with gzip, bzip2 or xz")
        else:
            self.format = "tar"
            self._inner = src

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > CHUNK:
            n = CHUNK  # never inflate more than a chunk at once
        left = self.limit - self.count
        try:
            # one byte past the limit tells "over" from "exactly at it"
            data = self._inner.read(min(n, left + 1))
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            if self.format == "tar":
                raise  # the body itself failed (the client went away)
            raise Corrupt(self.format, str(exc) or type(exc).__name__) from exc
        self.count += len(data)
        if self.count > self.limit:
            raise TooLarge
        return data
