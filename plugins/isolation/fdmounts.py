"""Paths and mounts through descriptors: the container init's primitives.

A path inside the container is resolved by the kernel from a descriptor of
the container's root (``open_in_root``: ``openat2(RESOLVE_IN_ROOT)``), so a
symlink the image or a volume planted is followed as the container will
follow it, never past its root; what is missing is made one component at a
time relative to a descriptor of its parent.  A mount is then attached to
the descriptor: through ``/proc/self/fd/N`` for a new filesystem
(``fd_path``, ``mount_at``), with ``open_tree`` and ``move_mount`` for a bind
(``bind_onto``, ``attach``), whose attributes are set on the detached copy
before it is attached, so it is never writable for an instant.

Apart from ``containerfs``, which decides what goes where, because these
know nothing of the container's layout; ``idmapfs`` uses them too.  Runs in
the container init, inside the fork server's memory image: standard
library ``os`` and ``stat`` only.
"""

from __future__ import annotations

import contextlib
import os
import stat

from skiff.core import syscalls as sc

_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
AT_FDCWD = -100


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def open_in_root(root_fd: int, path: str, create: str | None = None) -> int:
    """An ``O_PATH`` descriptor of ``path`` inside the root ``root_fd``.

    Resolved by the kernel as the container will resolve it (``RESOLVE_IN_ROOT``).
    With ``create`` (``"dir"`` or ``"file"``) what is missing is made, one
    component at a time, each relative to a descriptor of its parent that
    the kernel resolved inside the root; a dangling symlink on the way is
    followed inside the root, as the container would follow it.  A racing
    container can at worst move the result elsewhere inside its own root.
    The caller closes the descriptor.
    """
    rel = "/".join(p for p in path.split("/") if p) or "."
    try:
        return sc.openat2(root_fd, rel, os.O_PATH, 0, _RESOLVE)
    except FileNotFoundError:
        if create is None:
            raise
    todo = [p for p in path.split("/") if p not in ("", ".")]
    todo.reverse()
    resolved: list[str] = []
    links = 0
    while todo:
        name = todo.pop()
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        parent = sc.openat2(root_fd, "/".join(resolved) or ".", os.O_PATH | os.O_DIRECTORY, 0,
                            _RESOLVE)
        try:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                if create == "file" and not todo:
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY
                                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755, dir_fd=parent))
                else:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=parent)
                resolved.append(name)
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > 40:
                    raise OSError(40, os.strerror(40), path)  # ELOOP
                target = os.readlink(name, dir_fd=parent)
                if target.startswith("/"):
                    resolved = []
                todo.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            resolved.append(name)
        finally:
            os.close(parent)
    return sc.openat2(root_fd, "/".join(resolved) or ".", os.O_PATH, 0, _RESOLVE)


def open_at(dir_fd: int, name: str) -> int:
    return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def mount_at(dir_fd: int, name: str, source: str, fstype: str, flags: int,
              data: str | None = None) -> None:
    target = open_at(dir_fd, name)
    try:
        sc.mount(source, fd_path(target), fstype, flags, data)
    finally:
        os.close(target)


def bind_onto(source: str | int, target_fd: int, *, recursive: bool, attrs: int = 0,
              propagation: int = 0, userns_fd: int = -1, attrs_recursive: bool = False) -> None:
    """Bind ``source`` (a host path, or a descriptor) onto ``target_fd``, which is
    closed.  The attributes (and, with ``userns_fd``, an idmapping) are set on
    the detached copy before it is attached: on its top mount, or on all of it
    with ``attrs_recursive``."""
    try:
        flags = sc.OPEN_TREE_CLONE | (sc.AT_RECURSIVE if recursive else 0)
        if isinstance(source, int):
            tree = sc.open_tree(source, "", flags | sc.AT_EMPTY_PATH)
        else:
            tree = sc.open_tree(AT_FDCWD, source, flags)
    except BaseException:
        os.close(target_fd)
        raise
    try:
        if attrs or userns_fd >= 0:
            sc.mount_setattr(tree, attrs, recursive=attrs_recursive, userns_fd=userns_fd)
    except BaseException:
        os.close(tree)
        os.close(target_fd)
        raise
    attach(tree, target_fd, propagation)


def attach(tree: int, target_fd: int, propagation: int) -> None:
    """Attach the detached mount ``tree`` onto ``target_fd``; both are closed."""
    try:
        sc.move_mount(tree, target_fd)
        if propagation:
            # on the attached mount: a detached tree has no peers to follow
            sc.mount_setattr(tree, 0, propagation=propagation & ~sc.MS_REC,
                             recursive=bool(propagation & sc.MS_REC))
    finally:
        os.close(tree)
        os.close(target_fd)
