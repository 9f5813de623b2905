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
import os
import zlib
from typing import IO

from skiff.core.images.decompression import Prefixed

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
        src = io.BufferedReader(Prefixed(head, body), CHUNK)
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


#: the largest plain context unpacked in memory (``memory_spool``), in bytes
MEMORY_CONTEXT_LIMIT = 32 << 20
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def tmpfs_dir(path: str = "/dev/shm") -> str | None:
    """``path`` if a tmpfs is mounted there (the memory spool), else None."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[4] == path and fields[sep + 1] == "tmpfs":
                    return path
    except (OSError, ValueError, IndexError):
        return None
    return None


def small_plain_body(stream: IO[bytes], memory_spool: str) -> tuple[IO[bytes], bool]:
    """Read up to :data:`MEMORY_CONTEXT_LIMIT` bytes: (the stream to unpack, whether
    the whole body was that small, uncompressed, and fits the memory spool twice)."""
    chunks: list[bytes] = []
    size = 0
    while size <= MEMORY_CONTEXT_LIMIT:
        chunk = stream.read(min(1 << 20, MEMORY_CONTEXT_LIMIT + 1 - size))
        if not chunk:
            head = b"".join(chunks)
            st = os.statvfs(memory_spool)
            fits = st.f_bavail * st.f_frsize > 2 * size
            small = fits and not head.startswith(_COMPRESSED_MAGIC)
            return io.BytesIO(head), small
        chunks.append(chunk)
        size += len(chunk)
    return io.BufferedReader(Prefixed(b"".join(chunks), stream), 1 << 20), False
