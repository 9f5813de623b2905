"""The tar stream a COPY writes: sources read through descriptors, owners and
modes already as the copy sets them.

:func:`skiff.core.archive.extract` unpacks it into the destination directory,
so the writing side (never through a link of the image) is the layers'.
Entries are in byte order, parents first; modification times are whole
seconds (as dockerd's tars carry them); hard links within one source stay
hard links; sockets are skipped, as tar does.  Also here: ADD's test for a
local tar (:func:`is_tar`).
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from skiff.core import archive, fdops
from skiff.core.builder import sources
from skiff.core.builder.sources import Source

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
_END = bytes(2 * _BLOCK)


@dataclass
class CopyTar:
    """Builds the tar of one copy."""

    tree_fd: int  #: the source tree's root
    uid: int
    gid: int
    mode: int | None  #: ``--chmod``, for every entry but links

    def header(self, name: str, st: os.stat_result, kind: bytes, size: int = 0,
               linkname: str = "", mtime: float | None = None) -> bytes:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        perm = stat.S_IMODE(st.st_mode)
        ti.mode = 0o777 if kind == tarfile.SYMTYPE else (
            self.mode if self.mode is not None else perm)
        ti.uid, ti.gid = self.uid, self.gid
        ti.uname = ti.gname = ""
        ti.mtime = int(st.st_mtime if mtime is None else mtime)
        ti.size = size
        ti.linkname = linkname
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def regular(self, fd: int, name: str, st: os.stat_result,
                mtime: float | None = None) -> Iterator[bytes]:
        yield self.header(name, st, tarfile.REGTYPE, st.st_size, mtime=mtime)
        left = st.st_size
        while left > 0:
            data = os.read(fd, min(_CHUNK, left)) or bytes(min(_CHUNK, left))  # shrank
            left -= len(data)
            yield data
        if pad := -st.st_size % _BLOCK:
            yield bytes(pad)

    def node(self, pfd: int, base: str, name: str, st: os.stat_result,
             links: dict[tuple[int, int], str]) -> Iterator[bytes]:
        """One entry: ``base`` in ``pfd``, named ``name`` in the tar."""
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            yield self.header(name, st, tarfile.DIRTYPE)
            return
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            yield self.header(name, st, tarfile.LNKTYPE, linkname=links[key])
            return
        if stat.S_ISREG(mode):
            fd = fdops.open_regular_at(pfd, base)
            try:
                st = os.fstat(fd)
                if st.st_nlink > 1:
                    links[key] = name
                yield from self.regular(fd, name, st)
            finally:
                os.close(fd)
            return
        if stat.S_ISLNK(mode):
            yield self.header(name, st, tarfile.SYMTYPE, linkname=os.readlink(base, dir_fd=pfd))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            yield self.header(name, st, tarfile.CHRTYPE if stat.S_ISCHR(mode)
                              else tarfile.BLKTYPE)
        elif stat.S_ISFIFO(mode):
            yield self.header(name, st, tarfile.FIFOTYPE)
        else:
            return  # a socket is not copied
        if st.st_nlink > 1:
            links[key] = name

    def tar_dir(self, dfd: int) -> Iterator[bytes]:
        links: dict[tuple[int, int], str] = {}
        for pfd, base, rel, st in sources.walk(dfd):
            yield from self.node(pfd, base, rel, st, links)
        yield _END

    def tar_one(self, s: Source, name: str) -> Iterator[bytes]:
        """The tar of a non-directory source as ``name``."""
        if s.fetched is not None:
            fd = os.open(s.fetched, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                yield from self.regular(fd, name, os.fstat(fd), mtime=s.mtime)
            finally:
                os.close(fd)
        else:
            pfd = fdops.open_in_root(self.tree_fd, s.path, os.O_PATH)
            try:
                st = os.fstat(pfd)
                if stat.S_ISREG(st.st_mode):
                    fd = fdops.reopen(pfd, os.O_RDONLY)
                    try:
                        yield from self.regular(fd, name, os.fstat(fd))
                    finally:
                        os.close(fd)
                else:
                    # a device or a FIFO: its entry alone, nothing opened
                    yield from self.node(pfd, "", name, st, {})
            finally:
                os.close(pfd)
        yield _END


def reader(chunks: Iterator[bytes]) -> io.BufferedReader:
    return io.BufferedReader(archive.ChunkReader(chunks), buffer_size=_CHUNK)


def is_tar(f: io.BufferedReader) -> bool:
    """dockerd's ``isArchivePath``: (decompressed) content whose first header reads."""
    head = f.read(6)
    dec: zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor | None = None
    if head.startswith(b"\x1f\x8b"):
        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif head.startswith(b"BZh"):
        dec = bz2.BZ2Decompressor()
    elif head.startswith(b"\xfd7zXZ\x00"):
        dec = lzma.LZMADecompressor()
    data = head
    if dec is None:
        data += f.read(_BLOCK - len(head))
    else:
        data = b""
        pending = head
        try:
            for _ in range(64):  # a header is never more than a few KiB in
                data += dec.decompress(pending)
                if len(data) >= _BLOCK:
                    break
                pending = f.read(1 << 14)
                if not pending:
                    break
        except (OSError, EOFError, ValueError, zlib.error):
            return False
    if len(data) < _BLOCK:
        return False
    try:
        tarfile.TarInfo.frombuf(data[:_BLOCK], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True
