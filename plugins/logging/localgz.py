"""Compressed rotated files of the ``local`` driver, as dockerd writes them.

A rotated file ``container.log.1`` becomes ``container.log.1.gz``: gzip whose
header's extra field holds JSON ``{"lastTime":"<RFC 3339>"}``, the time of the
file's last entry, so a ``--since`` reader can pass over older files without
decompressing them.  Python's ``gzip`` module cannot write an extra field, so
the header is written here and the body is zlib's raw deflate.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import struct
import tempfile
import zlib
from typing import IO

from skiff.core.timefmt import parse_rfc3339, rfc3339

_CHUNK = 1 << 20


def compress(path: str, last_time: float | None) -> None:
    """``path`` to ``path.gz`` (mode 0640), then ``path`` removed.

    The ``.gz`` is written under a temporary name and renamed, so a reader
    sees either the plain file or the whole compressed one, never half of it.
    """
    tmp = path + ".gz.tmp"
    extra = json.dumps({"lastTime": rfc3339(last_time)} if last_time else {},
                       separators=(",", ":")).encode()
    crc = 0
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
            # magic, deflate, FEXTRA, mtime 0, no extra flags, OS unknown (as Go's writer)
            out.write(b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff")
            out.write(struct.pack("<H", len(extra)) + extra)
            deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            while chunk := src.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                out.write(deflate.compress(chunk))
            out.write(deflate.flush())
            out.write(struct.pack("<II", crc, size & 0xFFFFFFFF))
        os.rename(tmp, path + ".gz")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.unlink(path)


def last_time(path: str) -> float | None:
    """The ``lastTime`` a compressed file's header records; None when it has none."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:2] != b"\x1f\x8b" or not head[3] & 4:
                return None
            (xlen,) = struct.unpack("<H", head[10:12])
            meta = json.loads(f.read(xlen))
            return parse_rfc3339(meta["lastTime"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_plain(path: str) -> IO[bytes]:
    """The decompressed content of ``path`` as a seekable, anonymous file.

    Reading backwards (``--tail``) needs to seek, which a gzip stream cannot do
    cheaply; the temporary file lives beside the log (same disk, same owner)
    and disappears when closed.
    """
    out = tempfile.TemporaryFile(dir=os.path.dirname(path))  # noqa: SIM115 - the caller's
    try:
        with gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
        out.flush()
    except BaseException:
        out.close()
        raise
    return out
