"""Sizes of layers: whole trees, or only what a change set adds or modifies."""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable

from skiff.core.archive.diff import CHANGE_DELETE
from skiff.core.archive.paths import _DIR_FLAGS, _open_dir
from skiff.core.hookspecs import Change


def _sizes(fd: int, seen: set[tuple[int, int]]) -> int:
    total = 0
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_size
        elif stat.S_ISDIR(st.st_mode):
            cfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                total += _sizes(cfd, seen)
            finally:
                os.close(cfd)
    return total


def directory_size(root: str) -> int:
    """Total size of the regular files under ``root``, each hard-linked file once."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _sizes(fd, set())
    finally:
        os.close(fd)


def changes_size(root: str, changes: Iterable[Change]) -> int:
    """Total size of the regular files that ``changes`` adds or modifies in ``root``."""
    fd_root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        for change in changes:
            if change.kind == CHANGE_DELETE:
                continue
            rel = change.path.strip("/")
            if not rel:
                continue
            dname, base = posixpath.split(rel)
            fd = _open_dir(fd_root, dname.split("/") if dname else [])
            if fd is None:
                continue
            try:
                st = os.stat(base, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            finally:
                os.close(fd)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    finally:
        os.close(fd_root)
    return total
