"""Crash-safe file writes: a reader sees either the old content or the new, never a mix.

The recipe is the classic one: write a temporary file in the *same* directory
(``rename`` is only atomic within one filesystem), ``fsync`` it so its data is
on disk before its name is, ``rename`` it over the target, then ``fsync`` the
directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

__all__ = ["fsync_dir", "write_atomic", "write_json_atomic"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (new names, renames, unlinks) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644,
                 *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (str is written as UTF-8).

    The parent directory must exist.  ``mode`` is applied exactly (not through
    the umask), so secrets can be written 0o600 from the first byte.
    ``durable=False`` skips the directory fsync: after a power cut the file
    may hold the old content, never a torn one.  For state that changes on
    every container start and stop, where that fsync was the largest single
    cost of a start.
    """
    path = os.fspath(path)
    payload = data.encode() if isinstance(data, str) else data
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        os.fchmod(fd, mode)
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, mode: int = 0o644, *, indent: int | None = None,
    durable: bool = True,
) -> None:
    """Serialise ``obj`` as JSON and write it with ``write_atomic``.

    Compact by default (Docker's state files are compact); keys keep their
    insertion order so a file reads the way its writer built it.
    """
    if indent is None:
        text = json.dumps(obj, separators=(",", ":"))
    else:
        text = json.dumps(obj, indent=indent)
    write_atomic(path, text, mode, durable=durable)
