"""Layer tars arrive compressed in any of the formats Docker accepts; this
undoes the compression, recognising it by its magic bytes (as Moby's
``archive.DecompressStream``), so a caller never has to be told the format."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import IO, Any

from skiff.core.images.errors import InvalidImage

__all__ = ["Prefixed", "decompressed"]

_CHUNK = 1 << 20

class Prefixed(io.RawIOBase):
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
            import zstandard
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
    src: IO[bytes] = io.BufferedReader(Prefixed(head, stream), _CHUNK)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[return-value]  # typeshed: GzipFile is not an IO[bytes]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(src)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(src)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return io.BufferedReader(_ZstdReader(src), _CHUNK)
    return src

