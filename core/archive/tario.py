"""Plumbing shared by reading and writing tars: block and chunk sizes, a peeking reader."""

from __future__ import annotations

import tarfile
from typing import IO

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20


class _Peek:
    """A readable that lets us sniff the first bytes of a non-seekable stream."""

    def __init__(self, raw: IO[bytes], size: int = 6) -> None:
        self._raw = raw
        head = b""
        while len(head) < size:
            chunk = raw.read(size - len(head))
            if not chunk:
                break
            head += chunk
        self.head = head

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self._raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            if len(data) < n:
                data += self._raw.read(n - len(data)) or b""
            return data
        return self._raw.read(n)
