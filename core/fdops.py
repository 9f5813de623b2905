"""File operations through descriptors, for trees a container can change under us.

A container can rename, replace or swap (``renameat2(RENAME_EXCHANGE)``)
anything in its root filesystem and its volumes at any moment, also between
two system calls of the daemon.  A path resolved once and used again may lead
somewhere else by then, and a symbolic link swapped in for a directory leads
out of the container: the daemon resolves an absolute link against the
host's root.  So the daemon never names such a file by a path twice.  It holds
a descriptor of a directory it trusts (the container's root, a volume's
directory) and works relative to it:

- a whole container path is resolved once, by the kernel, with
  ``openat2(RESOLVE_IN_ROOT)``, which keeps ``..`` and every symbolic link
  inside the root (:func:`open_in_root`);
- a tree is walked one name at a time with ``O_NOFOLLOW``: a link where a
  directory was is refused, never followed (:func:`open_dir_at`);
- what is created is created relative to the held directory (``mkdirat``,
  ``openat(O_CREAT|O_EXCL)``, ``mknodat``, ``symlinkat``, ``linkat``) and its
  metadata is set on a descriptor of the new inode (``fchown``, ``fchmod``,
  ``futimens``), or with ``AT_SYMLINK_NOFOLLOW`` relative to the held
  directory where the kernel offers no descriptor call for the kind of file;
- a file that must not be opened for real before its kind is known (a FIFO
  blocks, opening a device has side effects on the host: a watchdog starts
  counting, a tape rewinds) is opened ``O_PATH``, checked with ``fstat``,
  and only then reopened through its ``/proc/self/fd`` link, which names the
  inode already held and resolves nothing else (:func:`open_node_at`,
  :func:`reopen`).  ``chmod`` of a device node or FIFO goes the same way:
  ``fchmod`` needs a real open and ``fchmodat`` has no ``AT_SYMLINK_NOFOLLOW``
  before Linux 6.6.

Standard library and :mod:`skiff.core.syscalls` only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from skiff.core import syscalls

#: openat2 resolution for a path inside a container's root: the root is ``/``
#: for ``..`` and absolute links, and /proc magic links are refused.
IN_ROOT = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
#: a directory, one name down, never through a symbolic link
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Replaced(OSError):
    """A file changed kind between two steps of ours: something else is
    changing the tree (a process of the container, or another container
    sharing the volume).  Nothing was done through it."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__(errno.ESTALE, f"{name!r} was replaced while {what}", name)


def _one_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a single directory entry name: {name!r}")
    return name


def proc_path(fd: int) -> str:
    """The ``/proc/self/fd`` link of ``fd``: resolving it lands on the very inode."""
    return f"/proc/self/fd/{fd}"


def open_dir(path: str) -> int:
    """A descriptor of a directory the daemon chose (a volume's, a layer's); the
    last component is not followed if it is a symbolic link."""
    return os.open(path, DIR_FLAGS)


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """``path`` of the container whose root is ``root_fd``, resolved by the kernel
    as the container would (see :data:`IN_ROOT`)."""
    return syscalls.openat2(root_fd, path or "/", flags, mode, IN_ROOT)


def open_dir_at(dir_fd: int, name: str) -> int:
    """Directory ``name`` of ``dir_fd``; ``ELOOP`` or ``ENOTDIR`` if it is a
    symbolic link or not a directory (never followed, never opened)."""
    return os.open(_one_name(name), DIR_FLAGS, dir_fd=dir_fd)


def open_node_at(dir_fd: int, name: str, kind: int) -> int:
    """An ``O_PATH`` descriptor of ``name`` in ``dir_fd``, which must be of
    ``kind`` (``stat.S_IFREG``, ``S_IFIFO`` ...); :class:`Replaced` otherwise.

    Nothing is opened for real, so a FIFO or a device node planted under the
    name does nothing; :func:`reopen` gives a real descriptor once the kind
    is right.
    """
    fd = os.open(_one_name(name), _NODE_FLAGS, dir_fd=dir_fd)
    try:
        if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
            raise Replaced(name, "it was being worked on")
    except BaseException:
        os.close(fd)
        raise
    return fd


def reopen(path_fd: int, flags: int) -> int:
    """A real descriptor (``flags``) of the inode held by the ``O_PATH`` ``path_fd``."""
    return os.open(proc_path(path_fd), flags | os.O_CLOEXEC)


def open_regular_at(dir_fd: int, name: str) -> int:
    """``name`` in ``dir_fd`` opened for reading, only if it is a regular file
    (:class:`Replaced` otherwise); a link is not followed."""
    pfd = open_node_at(dir_fd, name, stat.S_IFREG)
    try:
        return reopen(pfd, os.O_RDONLY)
    finally:
        os.close(pfd)


def set_node_meta(path_fd: int, uid: int | None, gid: int | None, mode: int | None,
                  times_ns: tuple[int, int] | None = None) -> None:
    """Owner, then mode (a chown clears setuid bits), then times of the inode held by
    the ``O_PATH`` descriptor ``path_fd`` (not a symbolic link: see the module doc)."""
    where = proc_path(path_fd)
    if uid is not None and gid is not None:
        os.chown(where, uid, gid)
    if mode is not None:
        os.chmod(where, mode)
    if times_ns is not None:
        os.utime(where, ns=times_ns)


def set_link_meta(dir_fd: int, name: str, uid: int | None, gid: int | None,
                  times_ns: tuple[int, int] | None = None) -> None:
    """Owner and times of the symbolic link ``name`` in the held ``dir_fd``,
    never following it (a link has no mode of its own)."""
    _one_name(name)
    if uid is not None and gid is not None:
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    if times_ns is not None:
        os.utime(name, ns=times_ns, dir_fd=dir_fd, follow_symlinks=False)


def set_fd_meta(fd: int, uid: int | None, gid: int | None, mode: int | None,
                times_ns: tuple[int, int] | None = None) -> None:
    """As :func:`set_node_meta`, for a real descriptor (a regular file, a directory)."""
    if uid is not None and gid is not None:
        os.fchown(fd, uid, gid)
    if mode is not None:
        os.fchmod(fd, mode)
    if times_ns is not None:
        os.utime(fd, ns=times_ns)


#: directory levels :func:`remove_at` descends, one descriptor each
REMOVE_DEPTH = 512


class TooDeep(OSError):
    """A tree nests directories deeper than a walk of ours holds descriptors for."""

    def __init__(self, name: str, depth: int) -> None:
        super().__init__(errno.ELOOP, f"directories nested more than {depth} levels deep",
                         name)


def remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` from the held ``dir_fd``, a whole tree if it is a directory.

    Only directories are ever opened, with ``O_DIRECTORY | O_NOFOLLOW``: the
    kernel refuses anything else before opening it, so a FIFO, a device node
    or a link swapped in is unlinked, never opened or followed.  (The
    standard library's ``rmtree`` opens each name ``O_RDONLY`` and compares
    ``fstat`` after: the open itself follows a link, blocks on a FIFO, and
    acts on a device.)  A name already gone is fine; deeper than
    :data:`REMOVE_DEPTH` levels is :class:`TooDeep`, with what was above
    left in place.
    """
    top = _open_for_removal(dir_fd, name)
    if top is None:
        return
    # (descriptor, names left in it, its own name in the level above)
    stack: list[tuple[int, list[str], str]] = [(top, [], name)]
    try:
        stack[0] = (top, os.listdir(top), name)
        while stack:
            fd, names, own = stack[-1]
            if names:
                child = names.pop()
                cfd = _open_for_removal(fd, child)
                if cfd is not None:
                    if len(stack) >= REMOVE_DEPTH:
                        os.close(cfd)
                        raise TooDeep(name, REMOVE_DEPTH)
                    stack.append((cfd, [], child))  # held (closed below) before listing
                    stack[-1] = (cfd, os.listdir(cfd), child)
                continue
            stack.pop()
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(own, dir_fd=stack[-1][0] if stack else dir_fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _open_for_removal(dir_fd: int, name: str) -> int | None:
    """A descriptor of directory ``name``; None once a non-directory there is
    unlinked or nothing is there."""
    try:
        return open_dir_at(dir_fd, name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
    return None


def copy_data(fd_in: int, fd_out: int) -> int:
    """Copy all of ``fd_in`` (from its offset) to ``fd_out``; bytes copied."""
    total = 0
    while True:
        try:
            n = os.sendfile(fd_out, fd_in, None, 1 << 30)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS) or total:
                raise
            break  # a file sendfile cannot read: plain reads below
        if n == 0:
            return total
        total += n
    while chunk := os.read(fd_in, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd_out, view):]
        total += len(chunk)
    return total
