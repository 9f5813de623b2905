"""A rotated set of log files, named as dockerd names them.

``path`` is the live file; rotation renames it to ``path.1`` and shifts the
older ones up (``path.2`` ... ``path.N-1``, the oldest dropped).  With
``compress`` the rotated files are gzip'd: ``path.1`` is compressed to
``path.1.gz`` after the rotation, and the shifting renames ``.gz`` names.
The gzip header's extra field holds ``{"lastTime":"<RFC 3339>"}``, the time
of the file's last message, as dockerd writes it: a reader with ``--since``
skips a whole file from its header.

Readers open every file under :data:`rotation_lock`, so a rotation cannot
shift a file under their feet between two opens; after that, renames and
unlinks never change what an open descriptor reads.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, cast

from skiff.core.timefmt import parse_rfc3339

#: one lock for every instance: the daemon opens a fresh driver per ``docker logs``
rotation_lock = threading.Lock()

#: bytes a forward read takes at a time
READ_BLOCK = 1 << 20
#: bytes a backwards read fetches at a time when looking for the last lines
BACK_BLOCK = 64 * 1024
#: gzip level: Go's default, which dockerd uses
GZIP_LEVEL = 6


def write_all(fd: int, data: bytes | memoryview) -> int:
    """``data`` written to ``fd`` whole; its length.  One write(2) in the common
    case, no user-space buffer: the lines are in the file (page cache) when
    this returns, for readers and after a crash; a short write (a signal, a
    nearly full disk) is finished, an error raised."""
    n = os.write(fd, data)
    total = n
    while n < len(data):
        data = data[n:]
        n = os.write(fd, data)
        total += n
    return total


@dataclass
class LogFile:
    """One file of the set, opened for reading."""

    f: IO[bytes]
    size: int  #: bytes to read (the size when opened; a compressed file: to its end)
    compressed: bool
    last_time: float | None = None  #: from a gzip header, when it says

    def close(self) -> None:
        self.f.close()


def write_gzip(src: str, dst: str, last_time: str) -> None:
    """``src`` compressed into ``dst`` as Go's gzip writer with dockerd's header extra."""
    extra = json.dumps({"lastTime": last_time}, separators=(",", ":")).encode()
    # magic, deflate, FEXTRA, no mtime, no flags, OS unknown (255): Go's header
    header = b"\x1f\x8b\x08\x04" + b"\0\0\0\0" + b"\x00\xff" + struct.pack("<H", len(extra))
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    crc = 0
    size = 0
    tmp = dst + ".tmp"
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        os.fchmod(fout.fileno(), 0o640)
        fout.write(header + extra)
        while block := fin.read(READ_BLOCK):
            crc = zlib.crc32(block, crc)
            size += len(block)
            fout.write(comp.compress(block))
        fout.write(comp.flush())
        fout.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    os.rename(tmp, dst)


def gzip_last_time(f: IO[bytes]) -> float | None:
    """The ``lastTime`` in a gzip header's extra field (dockerd's), if any."""
    head = f.read(12)
    f.seek(0)
    if len(head) < 12 or head[:2] != b"\x1f\x8b" or not head[3] & 0x04:
        return None
    (xlen,) = struct.unpack("<H", head[10:12])
    f.seek(12)
    extra = f.read(xlen)
    f.seek(0)
    try:
        return parse_rfc3339(json.loads(extra)["lastTime"])
    except (ValueError, KeyError, TypeError):
        return None


class LogFileSet:
    """Writing, rotating and opening ``path`` and its rotated siblings."""

    def __init__(self, path: str, max_size: int, max_file: int, compress: bool) -> None:
        self.path = path
        self.max_size = max_size  #: -1: never rotate
        self.max_file = max_file
        self.compress = compress
        self._compressing: threading.Thread | None = None

    def _name(self, i: int, gz: bool) -> str:
        return f"{self.path}.{i}.gz" if gz else f"{self.path}.{i}"

    def rotate(self, last_time: str) -> None:
        """Shift the files (the live one is closed); compress the new ``.1`` in the
        background.  A rotation waits for the last compression, as dockerd's."""
        self.wait()
        with rotation_lock:
            if self.max_file > 1:
                gz = self.compress
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._name(self.max_file - 1, gz))
                for i in range(self.max_file - 1, 1, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(self._name(i - 1, gz), self._name(i, gz))
                os.rename(self.path, self._name(1, False))
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        if self.compress and self.max_file > 1:
            t = threading.Thread(target=self._compress, args=(last_time,),
                                 name="json-file-compress", daemon=True)
            self._compressing = t
            t.start()

    def _compress(self, last_time: str) -> None:
        src, dst = self._name(1, False), self._name(1, True)
        try:
            write_gzip(src, dst, last_time)
            # the .gz is complete before the plain file goes: a reader sees one or the
            # other (at one index the plain file wins)
            with rotation_lock:
                os.unlink(src)
        except OSError:
            # the plain file stays and is read (and dropped) as any rotated file
            with contextlib.suppress(OSError):
                os.unlink(dst + ".tmp")

    def wait(self) -> None:
        """Until the last rotation's compression is done."""
        t, self._compressing = self._compressing, None
        if t is not None:
            t.join()

    def open_all(self, nowait: NoWaitBudget | None = None) -> list[LogFile]:
        """Every log file opened, oldest first.

        Rotated files beyond ``max-file`` (the option shrank) are read too; at
        each index the plain file wins over the compressed one (a compression
        in progress leaves both for a moment).

        With ``nowait`` the files are read through :class:`NoWaitFile` and
        ``BlockingIOError`` is raised instead of waiting: for a rotation in
        progress, a compressed file (its header is a read, its text CPU work),
        a read the page cache cannot serve, or past the budget's bytes.
        """
        opened: list[LogFile] = []
        if nowait is not None:
            if not rotation_lock.acquire(blocking=False):
                raise BlockingIOError("a rotation is in progress")
            try:
                top = max(self.max_file - 1, 0)
                while os.path.exists(self._name(top + 1, False)):
                    top += 1
                if any(os.path.exists(self._name(i, True)) for i in range(1, top + 2)):
                    raise BlockingIOError("the set has a compressed file")
                return [LogFile(cast(IO[bytes], NoWaitFile(f, nowait)),
                                os.fstat(f.fileno()).st_size, False)
                        for f in self._open_plain(top)]
            finally:
                rotation_lock.release()
        with rotation_lock:
            top = max(self.max_file - 1, 0)
            while (os.path.exists(self._name(top + 1, False))
                   or os.path.exists(self._name(top + 1, True))):
                top += 1
            for i in range(top, -1, -1):
                for name, gz in ((self._name(i, False), False), (self._name(i, True), True)):
                    if i == 0:
                        if gz:
                            continue
                        name = self.path
                    try:
                        f = open(name, "rb")  # noqa: SIM115 - closed by the caller
                    except FileNotFoundError:
                        continue
                    if gz:
                        last = gzip_last_time(f)
                        opened.append(LogFile(gzip.GzipFile(fileobj=f, mode="rb"),  # type: ignore[arg-type]
                                              -1, True, last))
                    else:
                        opened.append(LogFile(f, os.fstat(f.fileno()).st_size, False))
                    break
        return opened


    def _open_plain(self, top: int) -> list[IO[bytes]]:
        """The plain files up to ``.top``, oldest first (under ``rotation_lock``)."""
        names = [self._name(i, False) for i in range(top, 0, -1)] + [self.path]
        opened: list[IO[bytes]] = []
        try:
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    opened.append(open(name, "rb"))  # noqa: SIM115 - closed by the caller
        except BaseException:
            for f in opened:
                f.close()
            raise
        return opened


class NoWaitBudget:
    """Bytes a no-wait read may still take (it runs on the event loop)."""

    def __init__(self, limit: int) -> None:
        self.left = limit


class NoWaitFile:
    """A plain log file read with ``preadv2(RWF_NOWAIT)``: served from the page
    cache or ``BlockingIOError``, never a wait for the disk; and at most the
    budget's bytes in all.  Enough of a file for the readers here (``seek``,
    ``read``, ``close``)."""

    def __init__(self, f: IO[bytes], budget: NoWaitBudget) -> None:
        self._f = f
        self._pos = 0
        self._budget = budget

    def fileno(self) -> int:
        return self._f.fileno()

    def seek(self, pos: int) -> int:
        self._pos = pos
        return pos

    def read(self, size: int) -> bytes:
        if size > self._budget.left:
            raise BlockingIOError("more than a no-wait read takes")
        buf = bytearray(size)
        try:
            n = os.preadv(self._f.fileno(), [buf], self._pos, os.RWF_NOWAIT)
        except OSError as exc:  # EAGAIN (not cached), EOPNOTSUPP (a filesystem without it)
            raise BlockingIOError(str(exc)) from None
        if n < size and self._pos + n < os.fstat(self._f.fileno()).st_size:
            raise BlockingIOError("a short read: part of the range is not cached")
        self._budget.left -= n
        self._pos += n
        return bytes(buf[:n])

    def close(self) -> None:
        self._f.close()


def blocks_forward(lf: LogFile, start: int = 0) -> Iterator[bytes]:
    """Blocks of complete lines (each ending in a newline) of ``lf`` from ``start``;
    an unfinished last line (a write in progress) is left out."""
    f = lf.f
    f.seek(start)
    left = lf.size - start if lf.size >= 0 else -1
    rest = b""
    while left != 0:
        try:
            block = f.read(READ_BLOCK if left < 0 else min(READ_BLOCK, left))
        except (EOFError, zlib.error, gzip.BadGzipFile):
            break  # a damaged compressed file: what could be read of it
        if not block:
            break
        if left > 0:
            left -= len(block)
        nl = block.rfind(b"\n")
        if nl < 0:
            rest += block
            continue
        yield rest + block[:nl + 1]
        rest = block[nl + 1:]


def lines_forward(lf: LogFile, start: int = 0) -> Iterator[bytes]:
    """Complete, non-empty lines of ``lf`` from ``start``, without their newline."""
    for block in blocks_forward(lf, start):
        for line in block.split(b"\n"):
            if line:
                yield line


def lines_backwards(lf: LogFile) -> Iterator[tuple[bytes, int]]:
    """Complete lines of a plain file, last first, reading blocks from the end.

    Each comes without its newline, with the offset where it starts.  A
    trailing unfinished line (a write in progress) is skipped.
    """
    f, pos = lf.f, lf.size
    rest = b""  # the start of a line whose beginning lies in an earlier block
    unfinished = True  # still skipping what follows the last newline
    while pos > 0:
        size = min(BACK_BLOCK, pos)
        pos -= size
        f.seek(pos)
        block = f.read(size)
        if unfinished:
            nl = block.rfind(b"\n")
            if nl < 0:
                continue
            block = block[:nl]
            unfinished = False
        joined = block + rest
        parts = joined.split(b"\n")
        rest = parts[0]
        start = pos + len(joined)  # walks back to each part's first byte
        for line in reversed(parts[1:]):
            start -= len(line) + 1
            if line:
                yield line, start + 1
    if rest:
        yield rest, 0


def lines_with_offsets(lf: LogFile) -> Iterator[tuple[bytes, int]]:
    """Complete lines of any file, first first, each with its offset (in the
    uncompressed text)."""
    offset = 0
    for block in blocks_forward(lf):
        for line in block.split(b"\n")[:-1]:
            if line:
                yield line, offset
            offset += len(line) + 1


