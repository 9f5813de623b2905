"""Entry names and the directory descriptors that reach them.

Names are cleaned as Docker does and ordered depth first; every walk opens
directories one component at a time, never following a symbolic link.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from collections.abc import Sequence
from typing import IO

from skiff.core import fdops
from skiff.core.archive.errors import ArchiveError
from skiff.core.archive.tario import _Peek
from skiff.core.tarlimits import open_stream

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _clean_name(name: str) -> str:
    """Docker's rule: absolute names are relative to the root; ``..`` may not escape.

    Returns the cleaned relative path, ``""`` for the root itself.
    """
    if name.startswith("/"):
        # normpath of an absolute path clamps ".." at "/", as filepath.Join does.
        return posixpath.normpath(name).lstrip("/")
    cleaned = posixpath.normpath(name) if name else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise ArchiveError(name, "the path climbs out of the layer root")
    return "" if cleaned == "." else cleaned


def _sort_key(path: str) -> tuple[bytes, ...]:
    # Depth first, siblings by their bytes: parents always precede children.
    return tuple(os.fsencode(p) for p in path.split("/"))


def _proc_path(dir_fd: int, name: str) -> bytes:
    """A path to ``name`` inside an open directory, for the l*xattr calls.

    The standard library has no ``*xattrat``; the magic link resolves to the
    directory itself, so only ``name`` is looked up and it is never followed.
    """
    return b"/proc/self/fd/%d/%s" % (dir_fd, os.fsencode(name))



def _open_dir(root_fd: int, parts: Sequence[str]) -> int | None:
    """Open ``parts`` under ``root_fd`` without following symlinks; None if absent."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    os.close(fd)
                    return None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise



def _remove_at(dir_fd: int, name: str, st: os.stat_result | None = None) -> None:
    """Remove ``name`` (a whole tree if a directory) without following symlinks
    and without opening anything but directories (:func:`fdops.remove_at`)."""
    if st is not None and not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(name, dir_fd=dir_fd)
            return
        except FileNotFoundError:
            return
        except IsADirectoryError:
            pass  # a directory by now: the tree goes
    fdops.remove_at(dir_fd, name)


def check_names(stream: IO[bytes]) -> int:
    """Read a whole tar and raise :class:`ArchiveError` for a name that climbs out.

    :func:`extract` refuses such an entry only when it reaches it, after the
    entries before it were written; a caller that must leave nothing behind
    (``docker cp`` into a container) checks a spooled copy first.  Hard link
    targets are checked too.  Returns the number of entries.
    """
    peek = _Peek(stream)
    if not peek.head:
        return 0
    count = 0
    try:
        # _Peek reads like the IO[bytes] tarfile takes, without its whole surface
        with open_stream(peek) as tf:  # type: ignore[arg-type]
            for m in tf:
                tf.members.clear()  # type: ignore[attr-defined]  # typeshed lacks TarFile.members
                _clean_name(m.name)
                if m.islnk():
                    _clean_name(m.linkname)
                count += 1
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError("", f"corrupt tar stream: {exc}") from exc
    return count
