"""COPY/ADD sources: which files a source names, and the cache id of what they hold.

A source tree is the build context or an earlier stage's root filesystem,
held as a descriptor.  A stage's files are an image's, untrusted, so nothing
here resolves a path by name on the host: a source path is resolved by the
kernel with ``openat2(RESOLVE_IN_ROOT)`` (``..`` and links stay inside the
tree, as dockerd's ``FollowSymlinkInScope``), and a directory is walked one
name at a time with ``O_NOFOLLOW`` (:func:`walk`).

Wildcards are Go's ``filepath.Match`` (:func:`go_match`): ``*`` and ``?`` never
match ``/``, a ``[...]`` class may, ``\\`` escapes.  As dockerd does, every
path of the tree is matched against the pattern; a walk only goes as deep as
a match could reach.

Cache ids (``file:``, ``dir:``, ``multi:`` and 64 hex digits) cover exactly what
a copy would write, save what the copy itself sets: names, kinds, permission
bits, file contents, link targets, hard-link structure and device numbers.
Owners (the copy sets them) and modification times are left out, so a fresh
checkout of the same files hits the cache.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol

from skiff.core import fdops, syscalls
from skiff.core.errors import InvalidParameter

#: directory levels a walk descends, one descriptor each
MAX_DEPTH = 256

_NO_LINKS = fdops.IN_ROOT | syscalls.RESOLVE_NO_SYMLINKS


class SourceTree(Protocol):
    """Where sources come from."""

    #: an ``O_PATH`` descriptor of the directory: the context's, or a stage's rootfs
    root_fd: int

    def digest_of(self, path: str) -> str | None:
        """``"sha256:<hex>"`` of the regular file ``path`` (relative to the root,
        no leading ``/``, no ``.`` or ``..`` component, no symbolic link on the
        way) when known; None: it is hashed here."""
        ...


@dataclass(frozen=True)
class Source:
    """One resolved source of a COPY/ADD."""

    #: what the copy is read from: the path inside the tree ("" for its root,
    #: a final link is followed when it is opened again), or the URL
    path: str
    #: the name a non-directory gets in a destination directory
    name: str
    kind: Literal["file", "dir", "url"]
    cache_id: str
    #: a URL's content, downloaded (a host path under the plan's fetch_dir)
    fetched: str | None = None
    #: a URL's Last-Modified, in seconds, when the server sent one
    mtime: float | None = None


def contains_wildcards(path: str) -> bool:
    """dockerd's test: an unescaped ``*``, ``?`` or ``[``."""
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            return True
        i += 1
    return False


def trim_source(path: str) -> str:
    """A source path relative to the tree: leading ``/`` and ``./`` dropped."""
    while True:
        if path.startswith("/"):
            path = path.lstrip("/")
        elif path.startswith("./"):
            path = path[2:]
        else:
            return path


# ---------------------------------------------------------------------------
# Go's filepath.Match
# ---------------------------------------------------------------------------


class _BadPattern(ValueError):
    pass


def _escaped(pattern: str, i: int) -> tuple[str, int]:
    """One class character at ``pattern[i]`` (``\\`` escapes): (char, next index)."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise _BadPattern(pattern)
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise _BadPattern(pattern)
    if i + 1 >= len(pattern):
        raise _BadPattern(pattern)  # the class is never closed
    return pattern[i], i + 1


def _class(pattern: str, i: int) -> tuple[str, int]:
    """The regular expression of the class opening at ``pattern[i - 1]``."""
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if i < len(pattern) and pattern[i] == "]" and ranges:
            i += 1
            break
        lo, i = _escaped(pattern, i)
        hi = lo
        if pattern[i] == "-":
            hi, i = _escaped(pattern, i + 1)
        ranges.append((lo, hi))
    # Go accepts an empty range (z-a), which matches nothing; re refuses it
    parts = [re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
             for lo, hi in ranges if lo <= hi]
    if not parts:
        return ("[\\s\\S]" if negated else "(?!)"), i
    return f"[{'^' if negated else ''}{''.join(parts)}]", i


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str] | None:
    out: list[str] = []
    i = 0
    try:
        while i < len(pattern):
            c = pattern[i]
            i += 1
            if c == "*":
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif c == "[":
                part, i = _class(pattern, i)
                out.append(part)
            elif c == "\\":
                if i >= len(pattern):
                    raise _BadPattern(pattern)
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append(re.escape(c))
    except _BadPattern:
        return None
    return re.compile("".join(out), re.DOTALL)


def go_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match``; a malformed pattern matches nothing (dockerd
    drops the error)."""
    rx = _compile(pattern)
    return rx is not None and rx.fullmatch(name) is not None


def _max_depth(pattern: str) -> int:
    """Path components a match can have: each ``/`` of a path is matched by a
    ``/`` of the pattern or by a class."""
    return 1 + pattern.count("/") + pattern.count("[")


# ---------------------------------------------------------------------------
# Walking and hashing
# ---------------------------------------------------------------------------


def _too_deep(rel: str) -> InvalidParameter:
    return InvalidParameter(
        f"{rel}: directories nested more than {MAX_DEPTH} levels deep cannot be copied")


def walk(dir_fd: int, max_depth: int = MAX_DEPTH
         ) -> Iterator[tuple[int, str, str, os.stat_result]]:
    """(parent descriptor, name, relative path, lstat) of everything under the
    open directory ``dir_fd``, depth first, names in byte order, parents
    before children; links are reported, never followed.  The parent
    descriptor is valid until the next item is asked for.

    Paths of more than ``max_depth`` components are not visited; deeper than
    :data:`MAX_DEPTH` is an error (a copy must not silently drop files)."""
    stack: list[tuple[int, list[str], str]] = []

    def push(fd: int, rel: str) -> None:
        try:
            names = sorted(os.listdir(fd), key=os.fsencode, reverse=True)
        except BaseException:
            os.close(fd)
            raise
        stack.append((fd, names, rel))

    push(os.dup(dir_fd), "")
    try:
        while stack:
            fd, names, rel = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                continue
            name = names.pop()
            child = f"{rel}/{name}" if rel else name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield fd, name, child, st
            if stat.S_ISDIR(st.st_mode):
                if len(stack) >= max_depth:
                    if max_depth < MAX_DEPTH:
                        continue  # a pattern cannot match deeper
                    raise _too_deep(child)
                try:
                    cfd = fdops.open_dir_at(fd, name)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        continue
                    raise
                push(cfd, child)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _field(value: str) -> bytes:
    data = value.encode("utf-8", "surrogateescape")
    return str(len(data)).encode() + b":" + data


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


class _Hasher:
    """The records of one source's entries, hard links tracked within it."""

    def __init__(self, tree: SourceTree | None) -> None:
        self.tree = tree
        self.links: dict[tuple[int, int], str] = {}
        self.h = hashlib.sha256()

    def content(self, fd: int, canonical: str | None) -> str:
        known = None
        if self.tree is not None and canonical is not None:
            known = self.tree.digest_of(canonical)
        return known or _sha256_fd(fd)

    def record(self, name: str, st: os.stat_result, extra: str) -> None:
        mode = st.st_mode
        kind = ("d" if stat.S_ISDIR(mode) else "f" if stat.S_ISREG(mode)
                else "l" if stat.S_ISLNK(mode) else "c" if stat.S_ISCHR(mode)
                else "b" if stat.S_ISBLK(mode) else "p" if stat.S_ISFIFO(mode) else "")
        if not kind:
            return  # sockets are not copied
        perm = 0o777 if kind == "l" else stat.S_IMODE(mode)
        key = (st.st_dev, st.st_ino)
        if kind != "d" and st.st_nlink > 1:
            first = self.links.setdefault(key, name)
            if first != name:
                kind, extra = "h", first
        self.h.update(_field(name) + _field(kind) + _field(f"{perm:o}") + _field(extra))

    def node(self, pfd: int | None, name: str, rel: str, st: os.stat_result,
             canonical: str | None, fd: int | None = None) -> None:
        """The record of one entry: ``name`` in ``pfd``, or the open ``fd``."""
        mode = st.st_mode
        extra = ""
        if stat.S_ISREG(mode) and (st.st_nlink <= 1 or (st.st_dev, st.st_ino) not in self.links):
            own = fd is None
            rfd = fdops.open_regular_at(pfd, name) if own and pfd is not None else fd
            assert rfd is not None
            try:
                extra = self.content(rfd, canonical)
            finally:
                if own:
                    os.close(rfd)
        elif stat.S_ISLNK(mode) and pfd is not None:
            extra = os.readlink(name, dir_fd=pfd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            extra = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        self.record(rel, st, extra)


def _canonical(tree: SourceTree, path: str) -> str | None:
    """``path`` cleaned when no symbolic link is on its way (the name the tree
    knows a file by), else None."""
    clean = posixpath.normpath("/" + path).lstrip("/")
    try:
        fd = syscalls.openat2(tree.root_fd, clean or "/", os.O_PATH | os.O_CLOEXEC, 0, _NO_LINKS)
    except OSError:
        return None
    os.close(fd)
    return clean


def _hash_dir(tree: SourceTree, dfd: int, canonical: str | None) -> str:
    hasher = _Hasher(tree)
    for pfd, name, rel, st in walk(dfd):
        full = None if canonical is None else (f"{canonical}/{rel}" if canonical else rel)
        hasher.node(pfd, name, rel, st, full)
    return "dir:" + hasher.h.hexdigest()


def file_id(name: str, st: os.stat_result, digest: str) -> str:
    """The cache id of one regular file copied under ``name``."""
    hasher = _Hasher(None)
    hasher.record(name, st, digest)
    return "file:" + hasher.h.hexdigest()


def multi_id(ids: list[str]) -> str:
    return "multi:" + hashlib.sha256(",".join(ids).encode()).hexdigest()


# ---------------------------------------------------------------------------
# Resolving sources
# ---------------------------------------------------------------------------


def not_found(keyword: str, path: str) -> InvalidParameter:
    return InvalidParameter(
        f"{keyword} failed: file not found in build context or excluded by "
        f".dockerignore: stat {path}: file does not exist")


def resolve(tree: SourceTree, path: str, keyword: str) -> Source:
    """The source ``path`` (trimmed, no wildcards), a final link followed in the tree."""
    try:
        pfd = fdops.open_in_root(tree.root_fd, path, os.O_PATH)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise not_found(keyword, path) from None
        raise
    try:
        st = os.fstat(pfd)
        name = posixpath.basename(posixpath.normpath("/" + path))
        canonical = _canonical(tree, path)
        if stat.S_ISDIR(st.st_mode):
            dfd = fdops.reopen(pfd, os.O_RDONLY | os.O_DIRECTORY)
            try:
                return Source(path, name, "dir", _hash_dir(tree, dfd, canonical))
            finally:
                os.close(dfd)
        hasher = _Hasher(tree)
        if stat.S_ISREG(st.st_mode):
            fd = fdops.reopen(pfd, os.O_RDONLY)
            try:
                hasher.node(None, name, name, st, canonical, fd=fd)
            finally:
                os.close(fd)
        else:
            hasher.node(None, name, name, st, canonical)
        return Source(path, name, "file", "file:" + hasher.h.hexdigest())
    finally:
        os.close(pfd)


def expand(tree: SourceTree, pattern: str, keyword: str) -> list[Source]:
    """Every path of the tree ``pattern`` matches, as sources, in walk order."""
    found: list[Source] = []
    root = fdops.reopen(tree.root_fd, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _, _, rel, _ in walk(root, _max_depth(pattern)):
            if go_match(pattern, rel):
                found.append(resolve(tree, rel, keyword))
    finally:
        os.close(root)
    return found
