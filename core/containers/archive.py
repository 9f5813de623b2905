"""``docker cp``: a container's files, reached without ever leaving its root.

Every path a client names is a path *inside the container*.  It is resolved
by the kernel with ``openat2(RESOLVE_IN_ROOT)`` on a descriptor of the
container's root directory, so ``..`` and symbolic links (absolute or
relative, planted by the container or not) are followed as the container
would follow them and can never lead outside its root: the same guarantee as
layer extraction (:mod:`skiff.core.archive`), which does the unpacking.

Which root:

- a running container's is ``/proc/<pid>/root`` of its PID 1.  The storage
  drivers mount the root filesystem only inside the container's mount
  namespace, and a descriptor taken there walks that namespace's mount tree:
  volumes, bind mounts and ``/etc/hosts`` are seen as the container sees them;
- a stopped container's is its layers mounted on the host with the storage
  driver's ``get`` (``put`` when done).  Its volumes and bind mounts are not
  mounted there (the host's mount namespace must not grow a copy of every
  container's mount tree), so a path under one of its mount points is served
  from that mount's own directory instead, with the same ``RESOLVE_IN_ROOT``
  rooted there: the volume mounted through its driver for the copy, a bind
  mount's host source.  As with Docker, a tmpfs shows the empty mount point.

The three operations are Docker's archive API: :func:`stat_path` (``HEAD``),
:func:`archive_path` (``GET``: a tar of the path) and :func:`extract_to_dir`
(``PUT``: a tar unpacked into a directory).  Each takes the
:class:`ContainerFiles` the engine builds: the storage and volume drivers
and the spool directory, nothing else of the daemon.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import posixpath
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from skiff.core import archive, fdops, idshift
from skiff.core.containers import mounts, passwd
from skiff.core.errors import Conflict, InvalidParameter, NotFound
from skiff.core.timefmt import rfc3339_nano_trimmed

if TYPE_CHECKING:
    from skiff.core.containers.model import Container
    from skiff.core.hookspecs import StorageDriver, VolumeDriver
    from skiff.core.userns import IdMap

_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS

# Go's os.FileMode type bits: the CLI decodes the stat header with them.
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_GO_DEVICE = 1 << 26
_GO_PIPE = 1 << 25
_GO_SOCKET = 1 << 24
_GO_SETUID = 1 << 23
_GO_SETGID = 1 << 22
_GO_CHARDEV = 1 << 21
_GO_STICKY = 1 << 20

STAT_HEADER = "X-Docker-Container-Path-Stat"


@dataclass
class PathStat:
    """Docker's ``container.PathStat``."""

    name: str
    size: int
    mode: int  #: Go ``os.FileMode`` bits
    mtime: str  #: RFC 3339 with nanoseconds
    link_target: str  #: the container path a symbolic link resolves to, else ""

    def header(self) -> str:
        """The value of the ``X-Docker-Container-Path-Stat`` header."""
        doc = {"name": self.name, "size": self.size, "mode": self.mode,
               "mtime": self.mtime, "linkTarget": self.link_target}
        return base64.b64encode(json.dumps(doc).encode()).decode()


def go_mode(st: os.stat_result) -> int:
    """``os.FileMode`` of a stat result, as Go's ``os.Lstat`` reports it."""
    mode = st.st_mode
    out = stat.S_IMODE(mode) & 0o777
    if stat.S_ISDIR(mode):
        out |= _GO_DIR
    elif stat.S_ISLNK(mode):
        out |= _GO_SYMLINK
    elif stat.S_ISFIFO(mode):
        out |= _GO_PIPE
    elif stat.S_ISSOCK(mode):
        out |= _GO_SOCKET
    elif stat.S_ISCHR(mode):
        out |= _GO_DEVICE | _GO_CHARDEV
    elif stat.S_ISBLK(mode):
        out |= _GO_DEVICE
    if mode & stat.S_ISUID:
        out |= _GO_SETUID
    if mode & stat.S_ISGID:
        out |= _GO_SETGID
    if mode & stat.S_ISVTX:
        out |= _GO_STICKY
    return out


def _oserror(exc: OSError, path: str, cid: str) -> Exception:
    """The client's error for a failed lookup of ``path``."""
    if exc.errno == errno.ENOENT:
        return NotFound(f"Could not find the file {path} in container {cid}")
    if exc.errno == errno.ENOTDIR:
        return InvalidParameter(f"{path}: not a directory")
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidParameter(f"{path}: file name too long")
    if exc.errno == errno.ELOOP:
        return InvalidParameter(f"{path}: too many levels of symbolic links")
    if exc.errno == errno.EROFS:
        return InvalidParameter("container rootfs is marked read-only")
    return exc


# ---------------------------------------------------------------------------
# The container's root
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerFiles:
    """What the copy operations reach a container's files through."""

    #: mounts a stopped container's layers (``get``/``put``)
    storage: StorageDriver
    #: the driver of a volume by name: a stopped container's volume is mounted
    #: through it for one copy
    volume_driver: Callable[[str], VolumeDriver]
    #: where an upload is spooled whole before it is checked and unpacked
    spool_dir: str


@contextmanager
def container_root(files: ContainerFiles, c: Container) -> Iterator[int]:
    """An ``O_PATH`` descriptor of the container's root directory (see the module doc)."""
    if c.state.Running and c.state.Pid:
        try:
            fd = os.open(f"/proc/{c.state.Pid}/root",
                         os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Conflict(f"container {c.id} stopped during the copy; retry") from None
        try:
            yield fd
        finally:
            os.close(fd)
        return
    if not c.mount_id:
        raise Conflict(f"container {c.id} has no root filesystem")
    path = files.storage.get(c.mount_id)
    try:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        files.storage.put(c.mount_id)


@dataclass
class _Target:
    """Where a requested container path is looked up."""

    container_fd: int  #: the container's root (its /etc/passwd, for copyUIDGID)
    root_fd: int  #: the root ``path`` is resolved in: the container's or a mount's
    path: str  #: the requested path, inside ``root_fd``
    prefix: str  #: the container path of ``root_fd`` ("" for the container's root)


def _mount_of(c: Container, path: str) -> tuple[dict, str] | None:
    """(mount point, path inside it) of the volume or bind mount of ``c`` that
    holds ``path`` (the longest destination that matches), else None.

    Matching is lexical, as Docker's ``filepath.Join`` cleaning: a symbolic
    link of the image leading into a mount point is followed in the layers.
    """
    clean = posixpath.normpath("/" + path.lstrip("/"))
    best: tuple[dict, str] | None = None
    for mp in mounts.points_of(c):
        if mp.get("Type") not in ("volume", "bind"):
            continue
        dest = mp["Destination"]
        if clean != dest and not clean.startswith(dest.rstrip("/") + "/"):
            continue
        if best is not None and len(best[0]["Destination"]) >= len(dest):
            continue
        inner = clean[len(dest):] or "/"
        if inner != "/" and (path.endswith("/.") or path.endswith("/")):
            # keep "content of" / "a directory" as the client wrote it
            inner += "/." if path.endswith("/.") else "/"
        best = (mp, inner)
    return best


@contextmanager
def _mount_dir(files: ContainerFiles, c: Container, mp: dict) -> Iterator[str]:
    """The host directory of a stopped container's mount point, for one copy."""
    if mp["Type"] == "bind":
        yield mp["Source"]
        return
    drv = files.volume_driver(mp.get("Driver") or "")
    ref = f"{c.id}-cp-{os.urandom(6).hex()}"  # unique: never drops a start's reference
    try:
        source = drv.mount(mp["Name"], ref)
    except KeyError:
        raise NotFound(f"volume {mp['Name']} of mount {mp['Destination']} no longer "
                       "exists") from None
    try:
        yield source
    finally:
        drv.unmount(mp["Name"], ref)


@contextmanager
def _target(files: ContainerFiles, c: Container, path: str) -> Iterator[_Target]:
    """Where ``path`` of ``c`` is found (see the module doc)."""
    running = bool(c.state.Running and c.state.Pid)
    found = _mount_of(c, path)
    with container_root(files, c) as root_fd:
        if found is None or running:
            # a running container's root already shows its mounts where they are
            yield _Target(root_fd, root_fd, path, "")
            return
        mp, inner = found
        with _mount_dir(files, c, mp) as source:
            try:
                fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise _oserror(exc, path, c.id) from exc
            try:
                yield _Target(root_fd, fd, inner, mp["Destination"])
            finally:
                os.close(fd)


def _open(root_fd: int, path: str, flags: int) -> int:
    return fdops.open_in_root(root_fd, path, flags)


def _split(path: str) -> tuple[str, str, bool]:
    """(parent, base, whole) of a container path; ``whole`` when the path names
    a directory's content (``/``, a trailing ``/`` or ``/.``): then it is
    followed to the end and ``base`` is ``"."``."""
    if not path.startswith("/"):
        path = "/" + path
    if path.endswith(("/", "/.")) or posixpath.normpath(path) == "/":
        return path, ".", True
    # lexical cleaning first, as Docker's filepath.Join: "/a/../b" is "/b"
    parent, base = posixpath.split(posixpath.normpath(path))
    return parent, base, False


def resolve_in_root(root_fd: int, path: str) -> str:
    """The container path ``path`` leads to, every symbolic link followed.

    As Docker's ``FollowSymlinkInScope``: links are resolved inside the root,
    ``..`` stops at ``/``, components that do not exist are kept as written.
    Only used to *report* a link's target; files are always opened with
    ``openat2``, which enforces the same scope in the kernel.
    """
    todo = [p for p in path.split("/") if p and p != "."]
    todo.reverse()
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        try:
            pfd = _open(root_fd, "/" + "/".join(done), os.O_PATH | os.O_DIRECTORY)
        except OSError:
            done.append(part)
            continue
        try:
            st = os.stat(part, dir_fd=pfd, follow_symlinks=False)
            target = os.readlink(part, dir_fd=pfd) if stat.S_ISLNK(st.st_mode) else None
        except OSError:
            target = None
        finally:
            os.close(pfd)
        if target is None:
            done.append(part)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
        if target.startswith("/"):
            done = []
        todo.extend(reversed([p for p in target.split("/") if p and p != "."]))
    return "/" + "/".join(done)


@contextmanager
def _located(root_fd: int, path: str, cid: str,
             asked: str) -> Iterator[tuple[int, str, os.stat_result]]:
    """(parent descriptor, base name, lstat of the entry) of ``path`` in ``root_fd``;
    ``asked`` is the container path the client named, for errors."""
    parent, base, _ = _split(path)
    try:
        pfd = _open(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except BaseException:
            os.close(pfd)
            raise
    except OSError as exc:
        raise _oserror(exc, asked, cid) from exc
    try:
        yield pfd, base, st
    finally:
        os.close(pfd)


def _name_of(path: str) -> str:
    """Docker's ``filepath.Base`` of the requested path: the tar's rebase name."""
    if path.endswith("/.") or path == ".":
        return "."
    stripped = path.rstrip("/")
    # the root: its content, as for "/." (a name "/" would make "//x" entries)
    return posixpath.basename(stripped) if stripped else "."


def _path_stat(t: _Target, path: str, st: os.stat_result) -> PathStat:
    target = ""
    if stat.S_ISLNK(st.st_mode):
        inner = resolve_in_root(t.root_fd, t.path)
        target = t.prefix + inner if t.prefix and inner != "/" else (t.prefix or inner)
    return PathStat(_name_of(path), st.st_size, go_mode(st),
                    rfc3339_nano_trimmed(st.st_mtime_ns), target)


# ---------------------------------------------------------------------------
# The three operations
# ---------------------------------------------------------------------------


def stat_path(files: ContainerFiles, c: Container, path: str) -> PathStat:
    """``HEAD /containers/{id}/archive``: the entry itself, a final symlink not followed."""
    with _target(files, c, path) as t, _located(t.root_fd, t.path, c.id, path) as (_, _, st):
        return _path_stat(t, path, st)


def _host_ids(c: Container, t: _Target) -> IdMap | None:
    """The mapping of a remapped container whose files ``t`` shows with host
    ids (a running container's root, seen through its idmapped mounts; a
    mount's directory; chowned layers), else None: they are the container's."""
    idmap = c.idmap
    if idmap is None:
        return None
    if c.state.Running or t.prefix or c.userns.get("Storage") != "idmap":
        return idmap
    return None


class OpenedPath:
    """A container path resolved once for ``GET /containers/{id}/archive``.

    The path is looked up before the response starts (a missing path is a
    404, not a cut-short tar) and the tar is then read through the
    descriptors held here, never by resolving the path again: a container
    that swaps a component for a link in between changes nothing.  Exactly
    one of :meth:`write_tar` (it closes when done) and :meth:`discard` (the
    tar was never wanted) releases what is held: descriptors, the storage
    driver's ``get``, a volume mounted for the copy.
    """

    def __init__(self, stack: ExitStack, found: PathStat, tar: IO[bytes],
                 idmap: IdMap | None = None) -> None:
        self.stat = found
        self._stack = stack
        self._tar = tar
        #: a remapped container's mapping when the tar shows host ids
        self._idmap = idmap
        self._lock = threading.Lock()
        self._state = "open"  # -> "writing" -> "closed", or "open" -> "closed"

    def write_tar(self, out: IO[bytes]) -> None:
        """Write the tar into ``out``, then release everything (blocking)."""
        with self._lock:
            if self._state != "open":
                return
            self._state = "writing"
        try:
            if self._idmap is not None:
                idshift.rewrite_owners(self._tar, out, *idshift.to_container(self._idmap))
                return
            while chunk := self._tar.read(1 << 20):
                out.write(chunk)
        finally:
            with self._lock:
                self._state = "closed"
            self._stack.close()

    def discard(self) -> None:
        """Release everything unless :meth:`write_tar` has started (blocking)."""
        with self._lock:
            if self._state != "open":
                return
            self._state = "closed"
        self._stack.close()


def open_path(files: ContainerFiles, c: Container, path: str) -> OpenedPath:
    """``GET /containers/{id}/archive``: ``path`` resolved, its stat and its tar.

    The entry is named after the path's last component (``.`` for a path
    ending in ``/.``, whose content the CLI then copies); a final symbolic
    link is archived as a link (the CLI follows it itself for ``-L``).  The
    owners are the container's ids, whatever user namespace it runs in.
    """
    stack = ExitStack()
    try:
        t = stack.enter_context(_target(files, c, path))
        pfd, base, st = stack.enter_context(_located(t.root_fd, t.path, c.id, path))
        found = _path_stat(t, path, st)
        tar = stack.enter_context(archive.tar_entry(pfd, base, _name_of(path), st=st))
        return OpenedPath(stack, found, tar, _host_ids(c, t))
    except BaseException:
        stack.close()
        raise


def archive_path(files: ContainerFiles, c: Container, path: str, out: IO[bytes]) -> None:
    """Write a tar of ``path`` into ``out`` (:func:`open_path`, then its tar)."""
    open_path(files, c, path).write_tar(out)


def _copy_ids(root_fd: int, user: str) -> tuple[int, int] | None:
    """``copyUIDGID``: the uid/gid of the container's configured user, or None
    for root (the tar's own ownership is kept then)."""
    if not user:
        return None
    name, _, group = user.partition(":")
    uid = gid = None
    if name.isdigit():
        uid = int(name)
    found = passwd.user_entry(passwd.read_table(root_fd, passwd.PASSWD), name, uid)
    if found is not None:
        uid, gid = found
    if uid is None:
        raise InvalidParameter(f"unable to find user {name}: no matching entries in passwd file")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gid = passwd.group_id(passwd.read_table(root_fd, passwd.GROUP), group)
            if gid is None:
                raise InvalidParameter(
                    f"unable to find group {group}: no matching entries in group file")
    return uid, gid if gid is not None else uid


def extract_to_dir(files: ContainerFiles, c: Container, path: str, stream: IO[bytes], *,
                   no_overwrite_dir_non_dir: bool, copy_uid_gid: bool) -> None:
    """``PUT /containers/{id}/archive``: unpack a tar into the directory ``path``.

    The body is spooled and checked whole first: a tar that names a path
    outside the destination (``../x``) is refused before anything is written.
    Unpacking is :func:`skiff.core.archive.extract`'s: no entry is written
    through a symbolic link.
    """
    found = _mount_of(c, path)
    if found is not None and not found[0].get("RW", True):
        raise InvalidParameter("mounted volume is marked read-only")
    if found is None and c.host_config.get("ReadonlyRootfs") and not c.state.Running:
        raise InvalidParameter("container rootfs is marked read-only")
    spool_dir = files.spool_dir
    os.makedirs(spool_dir, 0o700, exist_ok=True)
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        while chunk := stream.read(1 << 20):
            spool.write(chunk)
        spool.seek(0)
        try:
            archive.check_names(spool)
        except archive.ArchiveError as exc:
            raise InvalidParameter(f"refusing the archive: {_reason(exc)}") from exc
        spool.seek(0)
        with _target(files, c, path) as t:
            try:
                dfd = _open(t.root_fd, t.path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    raise InvalidParameter("extraction point is not a directory") from exc
                raise _oserror(exc, path, c.id) from exc
            try:
                ids = (_copy_ids(t.container_fd, c.config.get("User") or "")
                       if copy_uid_gid else None)
                id_map = (lambda _u, _g: ids) if ids is not None else None
                idmap = _host_ids(c, t)
                writer: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
                if idmap is not None:
                    # the tar's (or the user's) container ids become host ids
                    uid, gid = idshift.to_host(idmap)
                    inner = id_map

                    def id_map(u: int, g: int) -> tuple[int, int]:
                        u, g = inner(u, g) if inner is not None else (u, g)
                        return uid(u), gid(g)
                    if c.state.Running:
                        writer = idshift.filesystem_ids(idmap.root_uid, idmap.root_gid)
                with writer:
                    archive.extract(
                        spool, dfd, whiteouts="keep", id_map=id_map,
                        no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
                    )
            except archive.ArchiveError as exc:
                raise InvalidParameter(f"refusing the archive: {_reason(exc)}") from exc
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ESTALE):
                    # made by us a moment ago, now something else: the container
                    raise Conflict(
                        f"{path} changed while the archive was being extracted into it "
                        f"({exc.strerror}: {exc.filename}); a process in container "
                        f"{c.id} is changing it. Nothing was written outside it; retry"
                    ) from exc
                raise _oserror(exc, path, c.id) from exc
            finally:
                os.close(dfd)


def _reason(exc: archive.ArchiveError) -> str:
    return f"entry {exc.entry!r}: {exc.reason}" if exc.entry else exc.reason
