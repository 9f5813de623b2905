"""Layer tarballs: safe extraction, tar streams of directories, filesystem diffs.

Everything that turns a tar stream into files, or files into a tar stream, goes
through this module: image pulls and loads, ``docker cp``, export, commit and
every storage driver's ``apply_diff`` and ``diff``.  Three jobs:

*Extraction* (:func:`extract`).  A layer tar is untrusted input.  It can never
write outside the directory it is unpacked into:

- Entry names are cleaned like Docker does: an absolute name is taken relative
  to the root (``/etc/passwd`` lands in ``<root>/etc/passwd``), and a name that
  still climbs out after cleaning (``../x``, ``a/../../x``) is refused.
- Every parent directory is opened component by component with
  ``O_DIRECTORY | O_NOFOLLOW`` relative to the previous one, and the entry
  itself is created relative to its parent's descriptor.  A symbolic link in a
  parent position, whether the tar made it or a lower layer did, is refused
  rather than followed, so it cannot redirect a write.
- A symbolic link's *content* may point anywhere: it is resolved later, inside
  the container.  A hard link's target must be a path inside the root, reached
  the same way, without following symbolic links.
- Device nodes are created when ``allow_devices`` is true (the daemon runs as
  root and there is no user namespace yet).

A hostile or malformed tar raises :class:`ArchiveError` naming the entry.
Extraction stops there and whatever was already unpacked stays: the caller
must discard the layer (every storage driver's ``apply_diff`` empties it).

*Tar streams* (:func:`tar_directory`, :func:`tar_changes`).  Streams are
produced lazily, one entry at a time, so a layer never sits in memory.  Entries
are in a deterministic order (depth first, names sorted by their bytes),
ownership is numeric, modification times are whole seconds (as Docker writes
them, so the same tree gives the same tar and the same diffID), hard links are
kept, and extended attributes travel as PAX ``SCHILY.xattr.*`` records.

*Diffs* (:func:`changes_between`, :func:`overlay_changes`).  What a layer adds,
modifies and deletes, as ``docker diff`` reports it, either by comparing two
whole trees (vfs) or by reading an overlay upper directory against the lower
layers it sits on (overlay2).

Whiteouts follow the OCI image spec: ``.wh.<name>`` deletes ``<name>`` from the
layers below and ``.wh..wh..opq`` hides everything below in its directory.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import io
import os
import posixpath
import stat
import tarfile
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from skiff.core import fdops
from skiff.core.hookspecs import Change
from skiff.core.tarlimits import open_stream

__all__ = [
    "OPAQUE_XATTR",
    "WHITEOUT_OPAQUE",
    "WHITEOUT_PREFIX",
    "ArchiveError",
    "LowerLookup",
    "changes_between",
    "changes_size",
    "check_names",
    "directory_size",
    "extract",
    "is_overlay_whiteout",
    "lower_lookup",
    "overlay_changes",
    "tar_changes",
    "tar_directory",
    "tar_entry",
]

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
#: AUFS keeps its own metadata under top-level names with this prefix.
WHITEOUT_META_PREFIX = ".wh..wh."
#: overlayfs marks a directory that hides the layers below it with this xattr.
OPAQUE_XATTR = "trusted.overlay.opaque"

CHANGE_MODIFY = 0
CHANGE_ADD = 1
CHANGE_DELETE = 2

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
#: holes are detected at this granularity when writing files (sparse output)
_HOLE = 1 << 16
_ZEROS = bytes(_HOLE)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REPLACED = ("it was replaced while it was being written (a process is changing this "
             "directory); nothing was written through it")

#: xattrs never taken from a tar nor written to one.  overlayfs's private
#: attributes steer its lookups (opaque, redirect, metacopy): accepting them
#: from a tar would let a layer rewire the union; SELinux labels belong to the
#: host's policy, not to an image.
_PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_HOST_ONLY_XATTRS = ("security.selinux",)


class ArchiveError(ValueError):
    """A tar stream that must not be (or cannot be) unpacked.

    ``entry`` names the offending tar entry (empty when the stream itself is
    unreadable).  Extraction stopped part-way: the caller must discard the
    layer it was unpacking into.
    """

    def __init__(self, entry: str, reason: str) -> None:
        self.entry = entry
        self.reason = reason
        if entry:
            msg = f"refusing layer tar entry {entry!r}: {reason}"
        else:
            msg = f"refusing layer tar: {reason}"
        super().__init__(msg + " (the layer is incomplete and must be discarded)")


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


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


def _xattr_allowed(name: str) -> bool:
    return not name.startswith(_PRIVATE_XATTR_PREFIXES) and name not in _HOST_ONLY_XATTRS


def _read_xattrs(target: int | bytes) -> list[tuple[str, bytes]]:
    """Extended attributes of an open fd or (without following) a path, sorted."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOENT):
            return []
        raise
    out = []
    for name in sorted(names):
        if not _xattr_allowed(name):
            continue
        try:
            out.append((name, os.getxattr(target, name, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
    return out


def is_overlay_whiteout(st: os.stat_result) -> bool:
    """overlayfs's whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque_fd(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


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


def _drop_whiteouts(dir_fd: int) -> None:
    """Remove overlay whiteouts anywhere under an (opaque) upper directory."""
    for name in os.listdir(dir_fd):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if is_overlay_whiteout(st):
            os.unlink(name, dir_fd=dir_fd)
        elif stat.S_ISDIR(st.st_mode):
            cfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _drop_whiteouts(cfd)
            finally:
                os.close(cfd)


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


class _Peek:
    """A readable that lets us sniff the first bytes of a non-seekable stream."""

    def __init__(self, raw: IO[bytes], size: int = 6) -> None:
        self._raw = raw
        head = b""
        while len(head) < size:
            chunk = raw.read(size - len(head))
            if not chunk:
                break
            head += chunk
        self.head = head

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self._raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            if len(data) < n:
                data += self._raw.read(n - len(data)) or b""
            return data
        return self._raw.read(n)


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------


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
                tf.members.clear()
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
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            self.metadata_node(m, pfd, base, kind)
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
            src = tf.extractfile(m)
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


# ---------------------------------------------------------------------------
# Tar streams
# ---------------------------------------------------------------------------


class ChunkReader(io.RawIOBase):
    """A raw readable over an iterator of byte chunks (a tar being produced).

    Closing it closes the iterator (a generator's finally blocks run) and then
    calls ``on_close``.
    """

    def __init__(self, chunks: Iterator[bytes],
                 on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                close = getattr(self._chunks, "close", None)
                if close is not None:
                    close()  # runs the generator's finally blocks: fds closed
            finally:
                try:
                    if self._on_close is not None:
                        self._on_close()
                finally:
                    super().close()


def _stream(chunks: Iterator[bytes], on_close: Callable[[], None] | None) -> IO[bytes]:
    return io.BufferedReader(ChunkReader(chunks, on_close), buffer_size=_CHUNK)


class _TarWriter:
    """Builds tar entries from files reached through directory descriptors."""

    def __init__(self, whiteouts: Literal["none", "overlay"], prefix: str) -> None:
        self.whiteouts = whiteouts
        self.prefix = prefix.strip("/")
        self.links: dict[tuple[int, int], str] = {}

    def name(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @staticmethod
    def header(ti: tarfile.TarInfo) -> bytes:
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    @staticmethod
    def info(name: str, st: os.stat_result, xattrs: list[tuple[str, bytes]]) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid = st.st_uid
        ti.gid = st.st_gid
        ti.uname = ti.gname = ""
        # Whole seconds, as Docker writes them: reproducible tars and diffIDs.
        ti.mtime = int(st.st_mtime)
        for key, value in xattrs:
            ti.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        return ti

    def whiteout(self, rel: str, st: os.stat_result | None) -> bytes:
        d, b = posixpath.split(rel)
        ti = tarfile.TarInfo(self.name(posixpath.join(d, WHITEOUT_PREFIX + b)))
        ti.mode = 0o600
        ti.uname = ti.gname = ""
        if st is not None:
            ti.uid, ti.gid, ti.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
        return self.header(ti)

    def entry(self, pfd: int, name: str, rel: str, st: os.stat_result) -> Iterator[bytes]:
        """The tar bytes of one entry (not recursive)."""
        mode = st.st_mode
        if self.whiteouts == "overlay" and is_overlay_whiteout(st):
            yield self.whiteout(rel, st)
            return
        if stat.S_ISREG(mode):
            yield from self.regular(pfd, name, rel)
            return
        if stat.S_ISDIR(mode):
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in _GONE:
                    return  # replaced or removed since the listing: a live tree
                raise
            try:
                xattrs = _read_xattrs(fd)
                opaque = self.whiteouts == "overlay" and _is_opaque_fd(fd)
            finally:
                os.close(fd)
            ti = self.info(self.name(rel), st, xattrs)
            ti.type = tarfile.DIRTYPE
            yield self.header(ti)
            if opaque:
                wo = tarfile.TarInfo(self.name(f"{rel}/{WHITEOUT_OPAQUE}"))
                wo.mode = stat.S_IMODE(mode) & 0o777
                wo.uid, wo.gid, wo.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
                wo.uname = wo.gname = ""
                yield self.header(wo)
            return
        xattrs = _read_xattrs(_proc_path(pfd, name))
        ti = self.info(self.name(rel), st, xattrs)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            ti.type = tarfile.LNKTYPE
            ti.linkname = self.links[key]
            yield self.header(ti)
            return
        if stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            try:
                ti.linkname = os.readlink(name, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in (*_GONE, errno.EINVAL):
                    return  # no longer a link: a live tree
                raise
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            return  # sockets cannot be archived; tar skips them too
        if st.st_nlink > 1:
            self.links[key] = ti.name
        yield self.header(ti)

    def regular(self, pfd: int, name: str, rel: str) -> Iterator[bytes]:
        # A running container can swap the file for a FIFO (an open would
        # hang) or a device node (an open acts on the host's device: a
        # watchdog starts counting): the name is opened for real only once
        # an O_PATH descriptor shows a regular file.
        try:
            fd = fdops.open_regular_at(pfd, name)
        except OSError as exc:
            if isinstance(exc, fdops.Replaced) or exc.errno in _GONE:
                return  # vanished or replaced while we walked: a live tree
            raise
        try:
            st = os.fstat(fd)
            ti = self.info(self.name(rel), st, _read_xattrs(fd))
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                if key in self.links:
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = self.links[key]
                    yield self.header(ti)
                    return
                self.links[key] = ti.name
            ti.type = tarfile.REGTYPE
            ti.size = st.st_size
            yield self.header(ti)
            remaining = st.st_size
            while remaining > 0:
                data = os.read(fd, min(_CHUNK, remaining))
                if not data:
                    # The file shrank under us; the header promised more.
                    data = bytes(min(_CHUNK, remaining))
                remaining -= len(data)
                yield data
            pad = -st.st_size % _BLOCK
            if pad:
                yield bytes(pad)
        finally:
            os.close(fd)

    def walk(self, dfd: int, rel: str) -> Iterator[bytes]:
        for name in sorted(os.listdir(dfd), key=os.fsencode):
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            child = f"{rel}/{name}" if rel else name
            yield from self.entry(dfd, name, child, st)
            if stat.S_ISDIR(st.st_mode):
                try:
                    cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        continue
                    raise
                try:
                    yield from self.walk(cfd, child)
                finally:
                    os.close(cfd)


_END_OF_ARCHIVE = bytes(2 * _BLOCK)
#: a name listed a moment ago is gone or is no longer what it was
_GONE = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)


def tar_directory(
    root: str,
    *,
    whiteouts: Literal["none", "overlay"] = "none",
    prefix: str = "",
    on_close: Callable[[], None] | None = None,
) -> IO[bytes]:
    """A tar stream of everything under ``root`` (the root itself excluded).

    ``whiteouts="overlay"`` reads ``root`` as an overlayfs upper directory and
    writes OCI whiteouts: a 0/0 character device becomes ``.wh.<name>`` and
    a directory with ``trusted.overlay.opaque=y`` is followed by its
    ``.wh..wh..opq`` marker.  ``prefix`` is prepended to every entry name.
    ``on_close`` runs when the stream is closed (a driver's ``put``).

    The stream is produced as it is read; read errors surface from ``read``.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def chunks() -> Iterator[bytes]:
        try:
            yield from _TarWriter(whiteouts, prefix).walk(root_fd, "")
            yield _END_OF_ARCHIVE
        finally:
            os.close(root_fd)

    return _stream(chunks(), on_close)


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
        with open_stream(peek) as tf:  # type: ignore[arg-type]
            for m in tf:
                tf.members.clear()
                _clean_name(m.name)
                if m.islnk():
                    _clean_name(m.linkname)
                count += 1
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError("", f"corrupt tar stream: {exc}") from exc
    return count


def tar_entry(
    dir_fd: int,
    name: str,
    arcname: str,
    *,
    on_close: Callable[[], None] | None = None,
    st: os.stat_result | None = None,
) -> IO[bytes]:
    """A tar stream of ``name`` in the open directory ``dir_fd``, the entry itself included.

    ``name`` is not followed if it is a symbolic link (``"."`` names the
    directory itself); a directory is walked as :func:`tar_directory` does,
    never following a symbolic link.  Entries are named ``arcname`` and
    ``arcname/...`` (``docker cp``'s rebase name).  ``dir_fd`` stays the
    caller's; ``on_close`` runs when the stream is closed.  ``st``, the
    caller's ``lstat`` of ``name``, saves looking again.
    """
    if st is None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def chunks() -> Iterator[bytes]:
        writer = _TarWriter("none", "")
        yield from writer.entry(dir_fd, name, arcname, st)
        if stat.S_ISDIR(st.st_mode):
            try:
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                cfd = -1  # replaced since the stat: a live tree; the entry alone
            if cfd >= 0:
                try:
                    yield from writer.walk(cfd, arcname)
                finally:
                    os.close(cfd)
        yield _END_OF_ARCHIVE

    return _stream(chunks(), on_close)


def tar_changes(
    root: str,
    changes: Iterable[Change],
    *,
    whiteouts: Literal["none", "overlay"] = "none",
    on_close: Callable[[], None] | None = None,
) -> IO[bytes]:
    """A layer tar of ``changes`` (as :func:`changes_between` gives them) over ``root``.

    Added and modified paths are read from ``root`` (not recursively: the
    change list names every added child); deleted paths become ``.wh.``
    whiteouts.  The parent directories of every change are included too, so
    applying the tar restores their metadata and never has to invent them.
    """
    wanted: dict[str, int] = {}
    for change in changes:
        rel = change.path.strip("/")
        if not rel:
            continue
        wanted[rel] = change.kind
        parent = posixpath.dirname(rel)
        while parent and parent not in wanted:
            wanted[parent] = CHANGE_MODIFY
            parent = posixpath.dirname(parent)
    order = sorted(wanted, key=_sort_key)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def chunks() -> Iterator[bytes]:
        writer = _TarWriter(whiteouts, "")
        cached: tuple[str, int] | None = None  # consecutive entries share parents
        try:
            for rel in order:
                dname, base = posixpath.split(rel)
                if cached is None or cached[0] != dname:
                    if cached is not None:
                        os.close(cached[1])
                        cached = None
                    fd = _open_dir(root_fd, dname.split("/") if dname else [])
                    if fd is None:
                        continue
                    cached = (dname, fd)
                pfd = cached[1]
                if wanted[rel] == CHANGE_DELETE:
                    yield writer.whiteout(rel, None)
                    continue
                try:
                    st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield from writer.entry(pfd, base, rel, st)
            yield _END_OF_ARCHIVE
        finally:
            if cached is not None:
                os.close(cached[1])
            os.close(root_fd)

    return _stream(chunks(), on_close)


# ---------------------------------------------------------------------------
# Diffs
# ---------------------------------------------------------------------------


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
