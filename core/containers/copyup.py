"""Copy-up: what the image holds at a volume's destination, copied into the volume.

At create, a new or empty volume mounted where the image has a directory
gets that directory's content, as Docker does (``nocopy`` turns it off).

The destination is a volume directory, and a volume can be mounted by other
containers that are running at that moment: one of them can rename, replace
or swap any entry while the copy goes on.  So the copy never names a
destination file by a path: every directory is held by a descriptor from the
moment it is made, entries are created relative to it with ``O_EXCL`` (or
``mkdirat``, ``symlinkat``, ``mknodat``, ``linkat``) and their owner, mode
and times are set on descriptors of the new inodes (see
:mod:`skiff.core.fdops`).  A directory swapped for a symbolic link is
refused when it is opened, never followed; what the container does inside
the volume stays inside the volume.

The source, the container's root filesystem (image content through the
storage driver's ``get``), is walked the same way, and the destination path
is resolved in it with ``openat2(RESOLVE_IN_ROOT)``: a symbolic link of the
image at or above the destination is followed as the container would follow
it, never out of the image.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from skiff.core import fdops, idshift
from skiff.core.errors import Conflict, InvalidParameter

if TYPE_CHECKING:
    from skiff.core.containers.model import Container
    from skiff.core.hookspecs import StorageDriver, VolumeDriver

#: directory levels copied below a destination: each level holds two
#: descriptors while its content is copied, and a layer can nest directories
#: far deeper than PATH_MAX would let a path name them.
MAX_DEPTH = 256
#: errors that mean the volume changed under the copy (another container)
_RACE_ERRNOS = (errno.EEXIST, errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.ESTALE,
                errno.EXDEV)


class TooDeep(Exception):
    """The image's directory nests deeper than :data:`MAX_DEPTH`."""


#: (uid, gid) in the image -> (uid, gid) in the volume
IdShift = Callable[[int, int], tuple[int, int]]


def _same(uid: int, gid: int) -> tuple[int, int]:
    return uid, gid


def _volume_ids(c: Container) -> IdShift:
    """How the image's owners become the volume's: unchanged, except for a
    remapped container on idmapped storage, whose layers hold container ids
    while a volume is not idmapped: its copy takes the host ids the
    container's user namespace maps them to."""
    idmap = c.idmap
    if idmap is None or c.userns.get("Storage") != "idmap":
        return _same
    uid, gid = idshift.to_host(idmap)
    return lambda u, g: (uid(u), gid(g))


def copy_up(storage: StorageDriver, volume_driver: Callable[[str], VolumeDriver],
            c: Container, points: list[dict[str, Any]]) -> None:
    """Copy what the image has at each mount point's destination into its volume,
    if the volume is empty.

    ``storage`` mounts the container's layers (the image's content);
    ``volume_driver`` gives the driver of a volume by its name.
    """
    ref = f"copy-up-{c.id}"
    ids = _volume_ids(c)
    root = storage.get(c.mount_id)
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for mp in points:
                drv = volume_driver(mp["Driver"])
                path = drv.mount(mp["Name"], ref)
                try:
                    _copy_point(root_fd, path, mp, ids)
                finally:
                    drv.unmount(mp["Name"], ref)
        finally:
            os.close(root_fd)
    finally:
        storage.put(c.mount_id)


def _copy_point(root_fd: int, volume_path: str, mp: dict[str, Any], ids: IdShift) -> None:
    dest, name = mp["Destination"], mp["Name"]
    try:
        src_fd = fdops.open_in_root(root_fd, dest, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return  # nothing, or no directory, there in the image: nothing to copy
        if exc.errno == errno.ELOOP:
            raise InvalidParameter(
                f"the image's {dest} cannot be resolved (too many levels of symbolic "
                f"links); mount volume {name} elsewhere or with nocopy") from None
        raise
    try:
        try:
            dst_fd = fdops.open_dir(volume_path)
        except NotADirectoryError:
            return
        try:
            if os.listdir(dst_fd):
                return  # copy-up is for an empty volume only
            try:
                copy_tree(src_fd, dst_fd, ids)
                # the volume's root takes the image directory's owner and mode
                st = os.fstat(src_fd)
                fdops.set_fd_meta(dst_fd, *ids(st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode))
            except TooDeep:
                raise InvalidParameter(
                    f"the image's {dest} nests directories more than {MAX_DEPTH} levels "
                    f"deep; skiff does not copy it into volume {name} (mount it with "
                    "nocopy)") from None
            except OSError as exc:
                if exc.errno not in _RACE_ERRNOS:
                    raise
                raise Conflict(
                    f"volume {name} changed while the image's content at {dest} was being "
                    f"copied into it ({exc.strerror}: {exc.filename}); another container "
                    "using the volume is writing to it. Nothing was written outside the "
                    "volume; empty it, or use a new volume, and retry") from None
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def copy_tree(src_fd: int, dst_fd: int, ids: IdShift = _same) -> None:
    """Copy the content of the directory held by ``src_fd`` into the one held by
    ``dst_fd`` (both real descriptors, ``dst_fd`` an empty directory).

    Symbolic links are copied as links, never followed; owners, modes
    (setuid bits included) and times are kept; hard links within the tree stay
    hard links; a directory on another mount than ``src_fd`` (a mount inside
    the image's tree) is created empty, not entered; sockets are skipped.
    ``ids`` turns each owner into the copy's.  Nothing in the destination is
    ever reached by a path: see the module doc.
    """
    links: dict[tuple[int, int], tuple[tuple[str, ...], str, int]] = {}
    _copy_dir(src_fd, dst_fd, os.fstat(src_fd).st_dev, dst_fd, (), links, ids)


def _copy_dir(src_fd: int, dst_fd: int, src_dev: int, top_fd: int, where: tuple[str, ...],
              links: dict[tuple[int, int], tuple[tuple[str, ...], str, int]],
              ids: IdShift) -> None:
    if len(where) >= MAX_DEPTH:
        raise TooDeep()
    for name in os.listdir(src_fd):
        st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        uid, gid = ids(st.st_uid, st.st_gid)
        mode = st.st_mode
        perm = stat.S_IMODE(mode)
        times = (st.st_atime_ns, st.st_mtime_ns)
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst_fd)
            dfd = fdops.open_dir_at(dst_fd, name)
            try:
                if st.st_dev == src_dev:  # else a mount inside the image's tree: stop there
                    sfd = fdops.open_dir_at(src_fd, name)
                    try:
                        _copy_dir(sfd, dfd, src_dev, top_fd, (*where, name), links, ids)
                    finally:
                        os.close(sfd)
                # after the content: creating it moved the mtime
                fdops.set_fd_meta(dfd, uid, gid, perm, times)
            finally:
                os.close(dfd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=dst_fd)
            fdops.set_link_meta(dst_fd, name, uid, gid, times)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                _link(top_fd, links[key], dst_fd, name)
                continue
            fd_in = fdops.open_regular_at(src_fd, name)
            try:
                fd_out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600, dir_fd=dst_fd)
                try:
                    fdops.copy_data(fd_in, fd_out)
                    fdops.set_fd_meta(fd_out, uid, gid, perm, times)
                    made = os.fstat(fd_out).st_ino
                finally:
                    os.close(fd_out)
            finally:
                os.close(fd_in)
            if st.st_nlink > 1:
                links[key] = (where, name, made)
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dst_fd)
            nfd = fdops.open_node_at(dst_fd, name, stat.S_IFMT(mode))
            try:
                fdops.set_node_meta(nfd, uid, gid, perm, times)
            finally:
                os.close(nfd)
        # sockets belong to a process, not to an image: skipped


def _link(top_fd: int, first: tuple[tuple[str, ...], str, int], dst_fd: int,
          name: str) -> None:
    """Hard link ``name`` in ``dst_fd`` to the copy made first of the same file.

    The first copy's directory is reached again from the destination's top,
    one name at a time without following links, so whatever happened to it
    meanwhile, the link is made inside the destination; it is then checked to
    be the very inode copied.
    """
    where, first_name, ino = first
    fd = os.dup(top_fd)
    try:
        for part in where:
            nfd = fdops.open_dir_at(fd, part)
            os.close(fd)
            fd = nfd
        os.link(first_name, name, src_dir_fd=fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    finally:
        os.close(fd)
    if os.stat(name, dir_fd=dst_fd, follow_symlinks=False).st_ino != ino:
        raise fdops.Replaced(name, "its hard link was being made")
