"""Tar streams of directories, single entries and change sets, produced lazily.

Entries are in a deterministic order (depth first, names sorted by their
bytes), ownership is numeric, mtimes are whole seconds, hard links are kept and
extended attributes travel as PAX ``SCHILY.xattr.*`` records.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Literal

from skiff.core import fdops
from skiff.core.archive.diff import CHANGE_DELETE, CHANGE_MODIFY
from skiff.core.archive.paths import _DIR_FLAGS, _open_dir, _proc_path, _sort_key
from skiff.core.archive.tario import _BLOCK, _CHUNK
from skiff.core.archive.whiteouts import (
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
    _is_opaque_fd,
    is_overlay_whiteout,
)
from skiff.core.archive.xattrs import _read_xattrs
from skiff.core.hookspecs import Change


class ChunkReader(io.RawIOBase):
    """A raw readable over an iterator of byte chunks (a tar being produced).

    Closing it closes the iterator (a generator's finally blocks run) and then
    calls ``on_close``.
    """

    def __init__(self, chunks: Iterator[bytes],
                 on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    # RawIOBase declares a wider buffer type; tarfile and BufferedReader pass these
    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                close = getattr(self._chunks, "close", None)
                if close is not None:
                    close()  # runs the generator's finally blocks: fds closed
            finally:
                try:
                    if self._on_close is not None:
                        self._on_close()
                finally:
                    super().close()


def _stream(chunks: Iterator[bytes], on_close: Callable[[], None] | None) -> IO[bytes]:
    return io.BufferedReader(ChunkReader(chunks, on_close), buffer_size=_CHUNK)


class _TarWriter:
    """Builds tar entries from files reached through directory descriptors."""

    def __init__(self, whiteouts: Literal["none", "overlay"], prefix: str) -> None:
        self.whiteouts = whiteouts
        self.prefix = prefix.strip("/")
        self.links: dict[tuple[int, int], str] = {}

    def name(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @staticmethod
    def header(ti: tarfile.TarInfo) -> bytes:
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    @staticmethod
    def info(name: str, st: os.stat_result, xattrs: list[tuple[str, bytes]]) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid = st.st_uid
        ti.gid = st.st_gid
        ti.uname = ti.gname = ""
        # Whole seconds, as Docker writes them: reproducible tars and diffIDs.
        ti.mtime = int(st.st_mtime)
        ti.pax_headers = {**ti.pax_headers, **{
            "SCHILY.xattr." + key: value.decode("utf-8", "surrogateescape")
            for key, value in xattrs}}
        return ti

    def whiteout(self, rel: str, st: os.stat_result | None) -> bytes:
        d, b = posixpath.split(rel)
        ti = tarfile.TarInfo(self.name(posixpath.join(d, WHITEOUT_PREFIX + b)))
        ti.mode = 0o600
        ti.uname = ti.gname = ""
        if st is not None:
            ti.uid, ti.gid, ti.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
        return self.header(ti)

    def entry(self, pfd: int, name: str, rel: str, st: os.stat_result) -> Iterator[bytes]:
        """The tar bytes of one entry (not recursive)."""
        mode = st.st_mode
        if self.whiteouts == "overlay" and is_overlay_whiteout(st):
            yield self.whiteout(rel, st)
            return
        if stat.S_ISREG(mode):
            yield from self.regular(pfd, name, rel)
            return
        if stat.S_ISDIR(mode):
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in _GONE:
                    return  # replaced or removed since the listing: a live tree
                raise
            try:
                xattrs = _read_xattrs(fd)
                opaque = self.whiteouts == "overlay" and _is_opaque_fd(fd)
            finally:
                os.close(fd)
            ti = self.info(self.name(rel), st, xattrs)
            ti.type = tarfile.DIRTYPE
            yield self.header(ti)
            if opaque:
                wo = tarfile.TarInfo(self.name(f"{rel}/{WHITEOUT_OPAQUE}"))
                wo.mode = stat.S_IMODE(mode) & 0o777
                wo.uid, wo.gid, wo.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
                wo.uname = wo.gname = ""
                yield self.header(wo)
            return
        xattrs = _read_xattrs(_proc_path(pfd, name))
        ti = self.info(self.name(rel), st, xattrs)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            ti.type = tarfile.LNKTYPE
            ti.linkname = self.links[key]
            yield self.header(ti)
            return
        if stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            try:
                ti.linkname = os.readlink(name, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in (*_GONE, errno.EINVAL):
                    return  # no longer a link: a live tree
                raise
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            return  # sockets cannot be archived; tar skips them too
        if st.st_nlink > 1:
            self.links[key] = ti.name
        yield self.header(ti)

    def regular(self, pfd: int, name: str, rel: str) -> Iterator[bytes]:
        # A running container can swap the file for a FIFO (an open would
        # hang) or a device node (an open acts on the host's device: a
        # watchdog starts counting): the name is opened for real only once
        # an O_PATH descriptor shows a regular file.
        try:
            fd = fdops.open_regular_at(pfd, name)
        except OSError as exc:
            if isinstance(exc, fdops.Replaced) or exc.errno in _GONE:
                return  # vanished or replaced while we walked: a live tree
            raise
        try:
            st = os.fstat(fd)
            ti = self.info(self.name(rel), st, _read_xattrs(fd))
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                if key in self.links:
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = self.links[key]
                    yield self.header(ti)
                    return
                self.links[key] = ti.name
            ti.type = tarfile.REGTYPE
            ti.size = st.st_size
            yield self.header(ti)
            remaining = st.st_size
            while remaining > 0:
                data = os.read(fd, min(_CHUNK, remaining))
                if not data:
                    # The file shrank under us; the header promised more.
                    data = bytes(min(_CHUNK, remaining))
                remaining -= len(data)
                yield data
            pad = -st.st_size % _BLOCK
            if pad:
                yield bytes(pad)
        finally:
            os.close(fd)

    def walk(self, dfd: int, rel: str) -> Iterator[bytes]:
        for name in sorted(os.listdir(dfd), key=os.fsencode):
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            child = f"{rel}/{name}" if rel else name
            yield from self.entry(dfd, name, child, st)
            if stat.S_ISDIR(st.st_mode):
                try:
                    cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        continue
                    raise
                try:
                    yield from self.walk(cfd, child)
                finally:
                    os.close(cfd)


_END_OF_ARCHIVE = bytes(2 * _BLOCK)
#: a name listed a moment ago is gone or is no longer what it was
_GONE = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)


def tar_directory(
    root: str,
    *,
    whiteouts: Literal["none", "overlay"] = "none",
    prefix: str = "",
    on_close: Callable[[], None] | None = None,
) -> IO[bytes]:
    """A tar stream of everything under ``root`` (the root itself excluded).

    ``whiteouts="overlay"`` reads ``root`` as an overlayfs upper directory and
    writes OCI whiteouts: a 0/0 character device becomes ``.wh.<name>`` and
    a directory with ``trusted.overlay.opaque=y`` is followed by its
    ``.wh..wh..opq`` marker.  ``prefix`` is prepended to every entry name.
    ``on_close`` runs when the stream is closed (a driver's ``put``).

    The stream is produced as it is read; read errors surface from ``read``.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def chunks() -> Iterator[bytes]:
        try:
            yield from _TarWriter(whiteouts, prefix).walk(root_fd, "")
            yield _END_OF_ARCHIVE
        finally:
            os.close(root_fd)

    return _stream(chunks(), on_close)






def tar_entry(
    dir_fd: int,
    name: str,
    arcname: str,
    *,
    on_close: Callable[[], None] | None = None,
    st: os.stat_result | None = None,
) -> IO[bytes]:
    """A tar stream of ``name`` in the open directory ``dir_fd``, the entry itself included.

    ``name`` is not followed if it is a symbolic link (``"."`` names the
    directory itself); a directory is walked as :func:`tar_directory` does,
    never following a symbolic link.  Entries are named ``arcname`` and
    ``arcname/...`` (``docker cp``'s rebase name).  ``dir_fd`` stays the
    caller's; ``on_close`` runs when the stream is closed.  ``st``, the
    caller's ``lstat`` of ``name``, saves looking again.
    """
    if st is None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def chunks() -> Iterator[bytes]:
        writer = _TarWriter("none", "")
        yield from writer.entry(dir_fd, name, arcname, st)
        if stat.S_ISDIR(st.st_mode):
            try:
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                cfd = -1  # replaced since the stat: a live tree; the entry alone
            if cfd >= 0:
                try:
                    yield from writer.walk(cfd, arcname)
                finally:
                    os.close(cfd)
        yield _END_OF_ARCHIVE

    return _stream(chunks(), on_close)


def tar_changes(
    root: str,
    changes: Iterable[Change],
    *,
    whiteouts: Literal["none", "overlay"] = "none",
    on_close: Callable[[], None] | None = None,
) -> IO[bytes]:
    """A layer tar of ``changes`` (as :func:`changes_between` gives them) over ``root``.

    Added and modified paths are read from ``root`` (not recursively: the
    change list names every added child); deleted paths become ``.wh.``
    whiteouts.  The parent directories of every change are included too, so
    applying the tar restores their metadata and never has to invent them.
    """
    wanted: dict[str, int] = {}
    for change in changes:
        rel = change.path.strip("/")
        if not rel:
            continue
        wanted[rel] = change.kind
        parent = posixpath.dirname(rel)
        while parent and parent not in wanted:
            wanted[parent] = CHANGE_MODIFY
            parent = posixpath.dirname(parent)
    order = sorted(wanted, key=_sort_key)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def chunks() -> Iterator[bytes]:
        writer = _TarWriter(whiteouts, "")
        cached: tuple[str, int] | None = None  # consecutive entries share parents
        try:
            for rel in order:
                dname, base = posixpath.split(rel)
                if cached is None or cached[0] != dname:
                    if cached is not None:
                        os.close(cached[1])
                        cached = None
                    fd = _open_dir(root_fd, dname.split("/") if dname else [])
                    if fd is None:
                        continue
                    cached = (dname, fd)
                pfd = cached[1]
                if wanted[rel] == CHANGE_DELETE:
                    yield writer.whiteout(rel, None)
                    continue
                try:
                    st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield from writer.entry(pfd, base, rel, st)
            yield _END_OF_ARCHIVE
        finally:
            if cached is not None:
                os.close(cached[1])
            os.close(root_fd)

    return _stream(chunks(), on_close)
