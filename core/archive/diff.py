"""What a layer adds, modifies and deletes, as ``docker diff`` reports it.

Either by comparing two whole trees (vfs and friends) or by reading an overlay
upper directory against the lower layers it sits on (overlay2).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from skiff.core.archive.paths import _open_dir, _proc_path, _sort_key
from skiff.core.archive.whiteouts import OPAQUE_XATTR, _is_opaque_fd, is_overlay_whiteout
from skiff.core.archive.xattrs import _read_xattrs
from skiff.core.hookspecs import Change

CHANGE_MODIFY: Final = 0
CHANGE_ADD: Final = 1
CHANGE_DELETE: Final = 2


@dataclass(frozen=True)
class _Node:
    """What a diff compares of one filesystem entry."""

    st: os.stat_result
    xattrs: tuple[tuple[str, bytes], ...]
    target: str | None  #: symlink content

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def _node_at(dir_fd: int, name: str, st: os.stat_result) -> _Node:
    target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
    return _Node(st, tuple(_read_xattrs(_proc_path(dir_fd, name))), target)


def _same_time(a: os.stat_result, b: os.stat_result) -> bool:
    # As Docker: a file that came out of a tar has lost its nanoseconds.
    if int(a.st_mtime) != int(b.st_mtime):
        return False
    na, nb = a.st_mtime_ns % 1_000_000_000, b.st_mtime_ns % 1_000_000_000
    return na == 0 or nb == 0 or na == nb


def _differs(old: _Node, new: _Node) -> bool:
    a, b = old.st, new.st
    if (
        a.st_mode != b.st_mode
        or a.st_uid != b.st_uid
        or a.st_gid != b.st_gid
        or not _same_time(a, b)
        or old.xattrs != new.xattrs
    ):
        return True
    if stat.S_ISDIR(a.st_mode):
        return False
    if (stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode)) and a.st_rdev != b.st_rdev:
        return True
    return a.st_size != b.st_size or old.target != new.target


class _DirTree:
    """A real directory tree, read through descriptors without following links."""

    def __init__(self, root: str, skip_whiteouts: bool = False) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.skip_whiteouts = skip_whiteouts

    def close(self) -> None:
        os.close(self.fd)

    def children(self, rel: str) -> dict[str, _Node]:
        fd = _open_dir(self.fd, rel.split("/") if rel else [])
        if fd is None:
            return {}
        try:
            out = {}
            for name in os.listdir(fd):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if self.skip_whiteouts and is_overlay_whiteout(st):
                    continue
                out[name] = _node_at(fd, name, st)
            return out
        finally:
            os.close(fd)

    def is_opaque(self, rel: str) -> bool:
        fd = _open_dir(self.fd, rel.split("/") if rel else [])
        if fd is None:
            return False
        try:
            return _is_opaque_fd(fd)
        finally:
            os.close(fd)


class _LowerView:
    """The union of overlay layers (nearest first) as overlayfs would show it.

    Whiteouts (0/0 character devices) hide a name, an opaque directory hides
    the layers below it, and a non-directory hides any directory below it.
    """

    def __init__(self, layers: Sequence[str]) -> None:
        self.layers = [os.fsencode(d) for d in layers]

    def _probe(self, layer: bytes, parts: Sequence[str]) -> tuple[str, os.stat_result | None]:
        """("found", st) | ("hidden", None) | ("missing", None) | ("blocked", None).

        "blocked": absent here, and an opaque directory on the way hides the
        layers below.
        """
        path = layer
        opaque = False
        for i, part in enumerate(parts):
            path = path + b"/" + os.fsencode(part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return ("blocked" if opaque else "missing"), None
            if is_overlay_whiteout(st):
                return "hidden", None
            if i == len(parts) - 1:
                return "found", st
            if not stat.S_ISDIR(st.st_mode):
                return "hidden", None
            if _path_opaque(path):
                opaque = True
        return "found", os.lstat(path)

    def lookup(self, rel: str) -> _Node | None:
        parts = rel.split("/")
        for layer in self.layers:
            kind, st = self._probe(layer, parts)
            if kind == "found":
                assert st is not None
                return _path_node(layer + b"/" + os.fsencode(rel), st)
            if kind != "missing":
                return None
        return None

    def children(self, rel: str) -> dict[str, _Node]:
        parts = rel.split("/") if rel else []
        out: dict[str, _Node] = {}
        hidden: set[str] = set()
        for layer in self.layers:
            if parts:
                kind, st = self._probe(layer, parts)
                if kind == "missing":
                    continue
                if kind != "found" or st is None or not stat.S_ISDIR(st.st_mode):
                    break
            base = layer + (b"/" + os.fsencode(rel) if rel else b"")
            for bname in os.listdir(base):
                name = os.fsdecode(bname)
                if name in out or name in hidden:
                    continue
                path = base + b"/" + bname
                cst = os.lstat(path)
                if is_overlay_whiteout(cst):
                    hidden.add(name)
                else:
                    out[name] = _path_node(path, cst)
            # A directory further up the path being opaque was handled by
            # _probe; this one being opaque ends the union here.
            if _path_opaque(base):
                break
            if parts and self._blocked_above(layer, parts):
                break
        return out

    def _blocked_above(self, layer: bytes, parts: Sequence[str]) -> bool:
        path = layer
        for part in parts[:-1]:
            path = path + b"/" + os.fsencode(part)
            if _path_opaque(path):
                return True
        return False


class LowerLookup:
    """``lower_exists`` for :func:`extract`: what overlay lower layers show at a path.

    Calling it answers whether a path is visible; :meth:`stat` gives its
    ``lstat`` (the extractor uses it to treat a lower layer's symlink or file in
    the way of a path exactly as a whole-tree driver does).
    """

    def __init__(self, lowers: Sequence[str]) -> None:
        self._view = _LowerView(lowers)

    def __call__(self, rel: str) -> bool:
        return self._view.lookup(rel) is not None

    def stat(self, rel: str) -> os.stat_result | None:
        node = self._view.lookup(rel)
        return None if node is None else node.st


def lower_lookup(lowers: Sequence[str]) -> LowerLookup:
    """``lower_exists`` for :func:`extract` over these overlay layers.

    ``lowers`` are the lower layers' directories, nearest first.
    """
    return LowerLookup(lowers)


def _path_opaque(path: bytes) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _path_node(path: bytes, st: os.stat_result) -> _Node:
    target = os.fsdecode(os.readlink(path)) if stat.S_ISLNK(st.st_mode) else None
    return _Node(st, tuple(_read_xattrs(path)), target)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _all_added(upper: _DirTree, rel: str, out: list[Change]) -> None:
    for name, node in upper.children(rel).items():
        path = _join(rel, name)
        out.append(Change("/" + path, CHANGE_ADD))
        if node.is_dir:
            _all_added(upper, path, out)


def _compare(
    lower: _DirTree | _LowerView | None, upper: _DirTree, rel: str, out: list[Change]
) -> None:
    """Both sides hold directory ``rel``: report what differs beneath it."""
    uch = upper.children(rel)
    lch = lower.children(rel) if lower is not None else {}
    for name in lch.keys() - uch.keys():
        out.append(Change("/" + _join(rel, name), CHANGE_DELETE))
    for name, unode in uch.items():
        path = _join(rel, name)
        lnode = lch.get(name)
        if lnode is None:
            out.append(Change("/" + path, CHANGE_ADD))
            if unode.is_dir:
                _all_added(upper, path, out)
            continue
        if _differs(lnode, unode):
            out.append(Change("/" + path, CHANGE_MODIFY))
        if unode.is_dir:
            if lnode.is_dir:
                _compare(lower, upper, path, out)
            else:
                _all_added(upper, path, out)


def _sorted_changes(out: list[Change]) -> list[Change]:
    """Sorted depth first, every changed path's parent directories listed too.

    As Docker's archive.Changes does: a directory holding a change is itself
    reported modified (``C /etc`` before ``A /etc/foo``) unless it is already
    listed (added, or modified in its own right).  That keeps overlay2 (which
    sees the copied-up parent) and whole-tree drivers (which do not) in
    agreement, and a layer built from the list restores the parents' metadata.
    """
    listed = {c.path for c in out}
    for change in list(out):
        parent = posixpath.dirname(change.path)
        while parent != "/" and parent not in listed:
            listed.add(parent)
            out.append(Change(parent, CHANGE_MODIFY))
            parent = posixpath.dirname(parent)
    return sorted(out, key=lambda c: _sort_key(c.path.lstrip("/")))


def changes_between(lower_root: str | None, upper_root: str) -> list[Change]:
    """What ``upper_root`` adds, modifies and deletes compared with ``lower_root``.

    Both are whole trees (vfs).  ``lower_root`` None means an empty tree.  An
    entry is modified when its type, mode, owner, mtime, xattrs or (for
    non-directories) size, device number or link target differ; content is
    not read, as Docker does not.  A deleted directory is reported once, not
    its children; an added one with all its children; a directory holding a
    change is reported modified (as Docker does).  Paths are absolute
    (``/etc/passwd``) and sorted depth first.
    """
    upper = _DirTree(upper_root)
    lower = _DirTree(lower_root) if lower_root is not None else None
    out: list[Change] = []
    try:
        _compare(lower, upper, "", out)
    finally:
        upper.close()
        if lower is not None:
            lower.close()
    return _sorted_changes(out)


def overlay_changes(upper: str, lowers: Sequence[str]) -> list[Change]:
    """What an overlayfs upper directory changes over its lower layers.

    ``lowers`` are the lower layers' directories, nearest first.  Only the
    upper is walked (cheap for a container); the lowers are consulted for the
    names it holds.  The result is what :func:`changes_between` reports for
    the merged trees.
    """
    view = _LowerView(lowers)
    tree = _DirTree(upper, skip_whiteouts=True)
    raw = _DirTree(upper)
    out: list[Change] = []

    def walk(rel: str) -> None:
        for name, unode in raw.children(rel).items():
            path = _join(rel, name)
            if is_overlay_whiteout(unode.st):
                if view.lookup(path) is not None:
                    out.append(Change("/" + path, CHANGE_DELETE))
                continue
            lnode = view.lookup(path)
            if lnode is None:
                out.append(Change("/" + path, CHANGE_ADD))
                if unode.is_dir:
                    _all_added(tree, path, out)
                continue
            if _differs(lnode, unode):
                out.append(Change("/" + path, CHANGE_MODIFY))
            if not unode.is_dir:
                continue
            if not lnode.is_dir:
                _all_added(tree, path, out)
            elif tree.is_opaque(path):
                _compare(view, tree, path, out)
            else:
                walk(path)

    try:
        walk("")
    finally:
        tree.close()
        raw.close()
    return _sorted_changes(out)
