"""Unpacking an untrusted layer tar (:func:`extract`) and checking its names first.

See the package docstring for the rules: nothing is written outside the root,
no symbolic link is followed in a parent position, whiteouts become what the
storage driver asks for.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import os
import stat
import tarfile
import urllib.parse
from collections.abc import Callable, Sequence
from typing import IO, Literal, Protocol

from skiff.core import fdops
from skiff.core.archive.errors import ArchiveError
from skiff.core.archive.paths import _DIR_FLAGS, _clean_name, _open_dir, _proc_path, _remove_at
from skiff.core.archive.tario import _CHUNK, _Peek
from skiff.core.archive.whiteouts import (
    OPAQUE_XATTR,
    WHITEOUT_META_PREFIX,
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
    _drop_whiteouts,
    _is_opaque_fd,
    is_overlay_whiteout,
)
from skiff.core.archive.xattrs import _read_xattrs, _xattr_allowed
from skiff.core.tarlimits import open_stream

#: holes are detected at this granularity when writing files (sparse output)
_HOLE = 1 << 16
_ZEROS = bytes(_HOLE)


class _Readable(Protocol):
    """What :meth:`_Extractor.content` gives: a regular file's data, read in chunks."""

    def read(self, size: int, /) -> bytes: ...


_REPLACED = ("it was replaced while it was being written (a process is changing this "
             "directory); nothing was written through it")


def extract(
    stream: IO[bytes],
    root: str | int,
    *,
    whiteouts: Literal["overlay", "delete", "keep"] = "delete",
    allow_devices: bool = True,
    chown: bool = True,
    id_map: Callable[[int, int], tuple[int, int]] | None = None,
    lower_exists: Callable[[str], bool] | None = None,
    no_overwrite_dir_non_dir: bool = False,
) -> int:
    """Unpack a layer tar stream into the existing directory ``root`` (a path, or
    a descriptor of the directory, which stays the caller's).

    ``stream`` is an uncompressed tar; gzip, bzip2 and xz are recognised by
    their magic bytes and decompressed on the fly.  An empty stream is an empty
    layer.

    ``whiteouts`` says what OCI whiteout entries become:

    - ``"overlay"``: ``.wh.<name>`` becomes a 0/0 character device ``<name>``
      and ``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory,
      overlayfs's own representation (``root`` is an upper/diff directory).
    - ``"delete"``: ``root`` already holds the layers below (vfs copies its
      parent); ``.wh.<name>`` removes ``<name>`` and ``.wh..wh..opq`` removes
      everything in its directory that this tar did not itself write.
    - ``"keep"``: whiteout files are written as they are (aufs-style drivers).

    In ``"overlay"`` mode a whiteout is only made where something below would
    show through: overlayfs lists a directory that exists only in the upper
    (or is opaque) as it is, so a needless whiteout there would appear in
    ``readdir`` yet fail ``lookup``.  ``lower_exists(path)`` tells whether the
    layers below hold ``path`` (see :func:`lower_lookup`); without it a
    whiteout is made unless an opaque directory above already hides the path.

    Ownership (numeric; ``id_map`` may translate it), permission bits including
    setuid/setgid/sticky (applied after chown, which clears them), mtimes
    (directories' fixed after their content), hard links, symbolic links,
    devices, FIFOs and ``SCHILY.xattr.*`` / ``LIBARCHIVE.xattr.*`` attributes
    are restored.  Files are written sparsely: runs of zeros become holes.

    ``no_overwrite_dir_non_dir`` (``docker cp``'s ``noOverwriteDirNonDir``)
    refuses an entry that would replace an existing directory with a
    non-directory or the other way round.

    Returns the total size of the regular files unpacked.  Raises
    :class:`ArchiveError` for a hostile or corrupt stream; ``OSError`` (with a
    note naming the entry) for a failure of the host (disk full).  Either way
    the caller must discard what was unpacked.
    """
    if whiteouts not in ("overlay", "delete", "keep"):
        raise ValueError(f"unknown whiteout mode {whiteouts!r}")
    peek = _Peek(stream)
    if not peek.head:
        return 0
    head = peek.head
    if head.startswith(b"\x1f\x8b"):
        mode = "r|gz"
    elif head.startswith(b"BZh"):
        mode = "r|bz2"
    elif head.startswith(b"\xfd7zXZ\x00"):
        mode = "r|xz"
    elif head.startswith(b"\x28\xb5\x2f\xfd"):
        raise ArchiveError("", "zstd-compressed layers are not supported; decompress it first")
    else:
        mode = "r|"
    ex = _Extractor(root, whiteouts, allow_devices, chown, id_map, lower_exists)
    ex.no_overwrite_dir_non_dir = no_overwrite_dir_non_dir
    try:
        with _open_tar(peek, mode) as tf:
            while True:
                try:
                    member = tf.next()
                except (tarfile.TarError, EOFError) as exc:
                    raise ArchiveError("", f"corrupt tar stream: {exc}") from exc
                if member is None:
                    break
                # Streaming: drop what tarfile remembers, a layer can have 10^5 entries.
                tf.members.clear()  # type: ignore[attr-defined]  # typeshed lacks TarFile.members
                try:
                    ex.entry(tf, member)
                except (tarfile.TarError, EOFError) as exc:
                    raise ArchiveError(member.name, f"corrupt tar stream: {exc}") from exc
                except OSError as exc:
                    exc.add_note(f"while extracting layer tar entry {member.name!r}")
                    raise
        ex.finish()
    finally:
        ex.close()
    return ex.size


def _open_tar(peek: _Peek, mode: str) -> tarfile.TarFile:
    try:
        # _Peek reads like the IO[bytes] tarfile takes, without its whole surface
        return open_stream(peek, mode)  # type: ignore[arg-type]
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError("", f"not a readable tar stream: {exc}") from exc


class _Extractor:
    """State of one extraction: the root's descriptor and what was written."""

    def __init__(
        self,
        root: str | int,
        whiteouts: str,
        allow_devices: bool,
        chown: bool,
        id_map: Callable[[int, int], tuple[int, int]] | None,
        lower_exists: Callable[[str], bool] | None = None,
    ) -> None:
        if isinstance(root, int):
            self.root_fd = fcntl.fcntl(root, fcntl.F_DUPFD_CLOEXEC, 0)
        else:
            self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.whiteouts = whiteouts
        self.lower_exists = lower_exists
        #: lstat of what the layers below show at a path (LowerLookup.stat)
        self.lower_stat: Callable[[str], os.stat_result | None] | None = getattr(
            lower_exists, "stat", None)
        self.allow_devices = allow_devices
        self.chown = chown
        self.id_map = id_map
        self.size = 0
        #: paths this tar wrote; an opaque marker in "delete" mode keeps only them
        self.unpacked: set[str] = set()
        #: directory -> mtime in ns, applied at the end: writing children moves it
        self.dir_times: dict[str, int] = {}
        self.no_overwrite_dir_non_dir = False

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    # -- walking -------------------------------------------------------------

    def parent(self, entry: str, parts: Sequence[str], create: bool) -> int | None:
        """The descriptor of directory ``parts``, never through a symlink.

        Missing components are created (0755, root) when ``create``; else None.
        A symlink or a non-directory in the way is refused.  In an overlay
        upper the layers below count too, so overlay2 decides as vfs (which
        holds them all) does: a lower layer's symlink or file in the way is
        refused, a lower directory is created in the upper with its owner and
        mode (as overlayfs's copy-up would), and a whiteout in the way becomes
        an opaque directory (the whiteout's name was deleted: nothing below
        may show through it).
        """
        fd = os.dup(self.root_fd)
        try:
            for i, name in enumerate(parts):
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    below = self.lower_dir(entry, parts[: i + 1])
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(name, 0o755, dir_fd=fd)
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(nfd, 0o755)  # the umask must not decide
                    if below is not None:
                        if self.chown:
                            os.fchown(nfd, below.st_uid, below.st_gid)
                        os.fchmod(nfd, stat.S_IMODE(below.st_mode))
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(parts[: i + 1])
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if create and self.whiteouts == "overlay" and is_overlay_whiteout(st):
                        os.unlink(name, dir_fd=fd)
                        os.mkdir(name, 0o755, dir_fd=fd)
                        nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                        os.fchmod(nfd, 0o755)
                        os.setxattr(nfd, OPAQUE_XATTR, b"y")
                        os.close(fd)
                        fd = nfd
                        continue
                    if stat.S_ISLNK(st.st_mode):
                        reason = (
                            f"its parent {where!r} is a symbolic link;"
                            " refusing to write through it"
                        )
                    elif stat.S_ISDIR(st.st_mode):  # a link a moment ago
                        reason = f"its parent {where!r} {_REPLACED}"
                    else:
                        reason = f"its parent {where!r} is not a directory"
                    raise ArchiveError(entry, reason) from None
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def lower_dir(self, entry: str, parts: Sequence[str]) -> os.stat_result | None:
        """The lower layers' directory at ``parts`` (missing from the upper), if any.

        Raises for a symlink or non-directory there, as a whole-tree driver
        would meet it.  Only asked in overlay mode, and only for a directory
        the tar did not list before its content (rare), so walking the
        upper's opaque flags again is cheap enough.
        """
        if self.whiteouts != "overlay" or self.lower_stat is None:
            return None
        fd = os.dup(self.root_fd)
        try:
            if _is_opaque_fd(fd):
                return None
            for part in parts[:-1]:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
                if _is_opaque_fd(fd):
                    return None
        finally:
            os.close(fd)
        where = "/".join(parts)
        st = self.lower_stat(where)
        if st is None or stat.S_ISDIR(st.st_mode):
            return st
        if stat.S_ISLNK(st.st_mode):
            reason = f"its parent {where!r} is a symbolic link; refusing to write through it"
        else:
            reason = f"its parent {where!r} is not a directory"
        raise ArchiveError(entry, reason)

    # -- entries -------------------------------------------------------------

    def entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = _clean_name(m.name)
        if not rel:
            if not m.isdir():
                raise ArchiveError(m.name, "the layer root can only be a directory")
            fd = os.dup(self.root_fd)
            try:
                self.metadata_fd(m, fd)
            finally:
                os.close(fd)
            self.dir_times[""] = self.mtime_ns(m)
            return
        parts = rel.split("/")
        base = parts[-1]
        if self.whiteouts != "keep":
            if parts[0].startswith(WHITEOUT_META_PREFIX) and rel != WHITEOUT_OPAQUE:
                return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content
            if base.startswith(WHITEOUT_PREFIX):
                self.whiteout(m, parts)
                return
        pfd = self.parent(m.name, parts[:-1], create=True)
        assert pfd is not None
        try:
            self.create(tf, m, pfd, base, rel)
        finally:
            os.close(pfd)
        self.unpacked.add(rel)

    def whiteout(self, m: tarfile.TarInfo, parts: list[str]) -> None:
        base = parts[-1]
        dparts = parts[:-1]
        overlay = self.whiteouts == "overlay"
        if base == WHITEOUT_OPAQUE:
            fd = self.parent(m.name, dparts, create=overlay)
            if fd is None:
                return
            try:
                if overlay:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                    # Nothing below shows through any more: whiteouts under
                    # it are needless and would be listed as entries.
                    _drop_whiteouts(fd)
                else:
                    self.purge(fd, dparts)
            finally:
                os.close(fd)
            return
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", ".."):
            raise ArchiveError(m.name, "a whiteout must name an entry of its directory")
        fd = self.parent(m.name, dparts, create=False)
        if fd is not None:
            try:
                _remove_at(fd, name)  # whatever this tar (or vfs's copy) holds there
            finally:
                os.close(fd)
        if not overlay or not self.needs_whiteout(dparts, name):
            return
        fd = self.parent(m.name, dparts, create=True)
        assert fd is not None
        try:
            os.mknod(name, stat.S_IFCHR | 0o000, 0, dir_fd=fd)
            if self.chown:
                uid, gid = self.ids(m)
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            # the whiteout's own time is its tar entry's when diffed again: keep it,
            # or the same layer would give another tar (and diffID) a second later
            ns = self.mtime_ns(m)
            os.utime(name, ns=(ns, ns), dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)

    def needs_whiteout(self, dparts: list[str], name: str) -> bool:
        """Whether a lower layer's ``dparts/name`` would show through without one."""
        fd = os.dup(self.root_fd)
        try:
            if _is_opaque_fd(fd):
                return False
            for part in dparts:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    break  # not in the upper yet: no opaque directory further down
                os.close(fd)
                fd = nfd
                if _is_opaque_fd(fd):
                    return False
        finally:
            os.close(fd)
        if self.lower_exists is None:
            return True
        return self.lower_exists("/".join([*dparts, name]))

    def purge(self, dir_fd: int, dparts: list[str]) -> None:
        """Opaque directory in "delete" mode: drop all this tar did not write."""
        prefix = "/".join(dparts)
        for name in os.listdir(dir_fd):
            rel = f"{prefix}/{name}" if prefix else name
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if rel not in self.unpacked:
                _remove_at(dir_fd, name, st)
            elif stat.S_ISDIR(st.st_mode):
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    self.purge(cfd, [*dparts, name])
                finally:
                    os.close(cfd)

    def create(
        self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str, rel: str
    ) -> None:
        try:
            st: os.stat_result | None = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        # In an overlay upper, a non-directory (a whiteout, or a file this tar
        # wrote) hides everything below its name; a directory replacing it
        # must go on hiding it, so it becomes opaque.
        hides_lower = (
            st is not None and self.whiteouts == "overlay" and not stat.S_ISDIR(st.st_mode)
        )
        if (self.no_overwrite_dir_non_dir and st is not None
                and stat.S_ISDIR(st.st_mode) != m.isdir()):
            kind = "directory" if stat.S_ISDIR(st.st_mode) else "non-directory"
            raise ArchiveError(m.name, f"it would replace the existing {kind} {rel!r}")
        if st is not None and not (m.isdir() and stat.S_ISDIR(st.st_mode)):
            try:
                _remove_at(pfd, base, st)
            except fdops.TooDeep as exc:
                raise ArchiveError(m.name, f"it would replace {exc.strerror}") from None
        if m.isreg():
            self.regular(tf, m, pfd, base)
        elif m.isdir():
            if st is None or not stat.S_ISDIR(st.st_mode):
                os.mkdir(base, 0o700, dir_fd=pfd)
            try:
                fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise ArchiveError(m.name, _REPLACED) from None
            try:
                if hides_lower:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                if st is not None and stat.S_ISDIR(st.st_mode):
                    # The entry describes the directory in full: attributes
                    # it does not list go, as they would in a fresh upper.
                    keep = {name for name, _ in self.xattrs(m)}
                    for name, _ in _read_xattrs(fd):
                        if name not in keep:
                            os.removexattr(fd, name)
                self.metadata_fd(m, fd)
            finally:
                os.close(fd)
            self.dir_times[rel] = self.mtime_ns(m)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            self.metadata_at(m, pfd, base, symlink=True)
        elif m.islnk():
            self.hardlink(m, pfd, base)
        elif m.ischr() or m.isblk():
            if not self.allow_devices:
                raise ArchiveError(m.name, "device nodes are not allowed here")
            node = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(base, node | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            self.metadata_node(m, pfd, base, node)
        elif m.isfifo():
            os.mknod(base, stat.S_IFIFO | 0o600, dir_fd=pfd)
            self.metadata_node(m, pfd, base, stat.S_IFIFO)
        else:
            raise ArchiveError(m.name, f"unsupported tar entry type {m.type!r}")

    def regular(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600, dir_fd=pfd,
        )
        try:
            src = self.content(tf, m)
            written = 0
            if src is not None:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    for off in range(0, len(view), _HOLE):
                        piece = view[off : off + _HOLE]
                        if piece == _ZEROS[: len(piece)]:
                            os.lseek(fd, len(piece), os.SEEK_CUR)
                        else:
                            os.write(fd, piece)
                    written += len(chunk)
            if written != m.size:
                raise ArchiveError(
                    m.name, f"the stream ended inside the file ({written} of {m.size} bytes)"
                )
            # Trailing holes: the seeks above did not extend the file.
            os.ftruncate(fd, m.size)
            self.metadata_fd(m, fd)
            os.utime(fd, ns=(self.mtime_ns(m), self.mtime_ns(m)))
        finally:
            os.close(fd)
        self.size += m.size

    def content(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> _Readable | None:
        """The data of the regular file ``m``, as :meth:`regular` reads it: a
        subclass may watch it go by (the builder hashes a context while writing it)."""
        return tf.extractfile(m)

    def hardlink(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        target = _clean_name(m.linkname) if m.linkname else ""
        if not target:
            raise ArchiveError(m.name, "a hard link must name a file inside the layer")
        tparts = target.split("/")
        missing = f"hard link target {m.linkname!r} does not exist in the layer"
        tfd = self.parent(m.name, tparts[:-1], create=False)
        if tfd is None:
            raise ArchiveError(m.name, missing)
        try:
            try:
                os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise ArchiveError(m.name, missing) from None
            except PermissionError:
                raise ArchiveError(
                    m.name, f"hard link target {m.linkname!r} is a directory"
                ) from None
        finally:
            os.close(tfd)

    # -- metadata ------------------------------------------------------------

    def ids(self, m: tarfile.TarInfo) -> tuple[int, int]:
        if self.id_map is not None:
            return self.id_map(m.uid, m.gid)
        return m.uid, m.gid

    @staticmethod
    def mtime_ns(m: tarfile.TarInfo) -> int:
        return int(m.mtime * 1_000_000_000)

    @staticmethod
    def xattrs(m: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        out = []
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                name = key[len("SCHILY.xattr.") :]
                data = value.encode("utf-8", "surrogateescape")
            elif key.startswith("LIBARCHIVE.xattr."):
                name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
                data = base64.b64decode(value + "=" * (-len(value) % 4))
            else:
                continue
            if name and _xattr_allowed(name):
                out.append((name, data))
        return out

    def set_xattrs(self, m: tarfile.TarInfo, target: int | bytes | str,
                   follow: bool | None = None) -> None:
        """``target``: a descriptor, a path not followed, or (``follow``) a
        descriptor's /proc/self/fd link, followed to the inode itself."""
        if follow is None:
            follow = isinstance(target, int)
        for name, value in self.xattrs(m):
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as exc:
                # As Docker: a filesystem (or an entry type, user.* on a
                # symlink) without support for an attribute is not fatal.
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    raise

    def metadata_fd(self, m: tarfile.TarInfo, fd: int) -> None:
        # Order matters: chown clears setuid bits and file capabilities, so
        # it comes first, then the mode, then the attributes.
        if self.chown:
            os.fchown(fd, *self.ids(m))
        os.fchmod(fd, m.mode & 0o7777)
        self.set_xattrs(m, fd)

    def metadata_at(self, m: tarfile.TarInfo, pfd: int, base: str, symlink: bool = False) -> None:
        """A symbolic link's owner, attributes and times, never following it."""
        if self.chown:
            os.chown(base, *self.ids(m), dir_fd=pfd, follow_symlinks=False)
        self.set_xattrs(m, _proc_path(pfd, base))
        ns = self.mtime_ns(m)
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def metadata_node(self, m: tarfile.TarInfo, pfd: int, base: str, kind: int) -> None:
        """A device node's or FIFO's metadata, on the inode we just made.

        A process of the container can swap the new node for a symbolic link
        at once, and ``fchmodat`` follows links: the node is held ``O_PATH``
        and checked first (see :mod:`skiff.core.fdops`).
        """
        try:
            fd = fdops.open_node_at(pfd, base, kind)
        except (fdops.Replaced, FileNotFoundError):
            raise ArchiveError(m.name, _REPLACED) from None
        try:
            ns = self.mtime_ns(m)
            uid, gid = self.ids(m) if self.chown else (None, None)
            fdops.set_node_meta(fd, uid, gid, m.mode & 0o7777)
            self.set_xattrs(m, fdops.proc_path(fd), follow=True)
            fdops.set_node_meta(fd, None, None, None, (ns, ns))
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Directory mtimes, deepest first: they moved while children arrived."""
        for rel in sorted(self.dir_times, key=lambda p: p.count("/"), reverse=True):
            fd = _open_dir(self.root_fd, rel.split("/") if rel else [])
            if fd is None:
                continue  # replaced or deleted later in the same tar
            try:
                ns = self.dir_times[rel]
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)
