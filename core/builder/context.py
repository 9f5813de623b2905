"""Receiving a build context: the tar of POST /build, unpacked once, hashed once.

:func:`receive_context` reads the request body (plain tar, gzip, bzip2 or xz,
:mod:`.contextstream`), unpacks it into a fresh private directory under the
daemon's spool directory and gives a :class:`BuildContext`: a descriptor of
that directory, the Dockerfile's text and a record of every entry with the
sha256 of each regular file (what COPY and ADD cache keys are made of).

- *Safety.*  Entries go through :mod:`skiff.core.archive`'s extractor, so a
  context can write nothing outside its directory: names are cleaned, a name
  climbing out is refused, parents are opened one component at a time with
  ``O_NOFOLLOW`` (a symbolic link in a parent position is refused), hard link
  targets must be inside.  Ownership is recorded, not applied (COPY sets its
  own).  Device nodes and FIFOs are not created: they are recorded with kind
  ``"other"`` and nothing on disk (a build has no use for a device of the
  client's machine, and creating one would be a host device in the spool).
- *One pass.*  Each regular file is hashed while it is written, never read
  back, except when the stat fast path (:mod:`.statindex`) finds an entry whose
  adler32 then disagrees: that file alone is read back once from the copy just
  written.
- *The limit* counts decompressed bytes, and reading stops as soon as it is
  passed.
- *.dockerignore* is applied as it is found: entries after it in the tar are
  not written at all, entries before it are removed at the end (the tar's
  order is the client's choice).  The Dockerfile and ``.dockerignore`` are
  always read, and, as dockerd does, removed from what COPY sees when the
  patterns exclude them.  A directory that is excluded but holds an entry
  that is included again (``!``) stays, as a plain 0755 root-owned parent, as
  the CLI's own walk would have sent it.
- *Failure* anywhere (a refused entry, the limit, a missing Dockerfile, a full
  disk) removes the directory and closes every descriptor before raising.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import IO

import structlog

from skiff.core import fdops
from skiff.core.archive.errors import ArchiveError

# The layer extractor's machinery, reused whole (its walk and its refusals);
# the subclass below only watches regular files' data go by.
from skiff.core.archive.extractor import _Extractor, _Readable
from skiff.core.archive.paths import _clean_name, _open_dir, _remove_at
from skiff.core.builder.contextstream import (
    CHUNK,
    ContextStream,
    Corrupt,
    TooLarge,
    Unsupported,
    small_plain_body,
)
from skiff.core.builder.statindex import StatIndex, StatKey
from skiff.core.dockerfile.errors import DockerfileError
from skiff.core.dockerfile.ignore import IgnoreMatcher, clean_path
from skiff.core.errors import InvalidParameter
from skiff.core.tarlimits import open_stream

__all__ = ["MAX_DOCKERFILE", "BuildContext", "ContextError", "ContextFile", "receive_context"]

log = structlog.get_logger("skiff.builder.context")

#: a Dockerfile above this is refused (dockerd reads it whole into memory too)
MAX_DOCKERFILE = 4 << 20
_DEFAULT_DOCKERFILE = "Dockerfile"
_IGNORE_FILE = ".dockerignore"
_NOT_TAR = "the build context is not a tar archive (plain, gzip, bzip2 or xz)"


class ContextError(InvalidParameter):
    """A build context that cannot be used (400): what was wrong, what to do."""


@dataclass(frozen=True)
class ContextFile:
    """One entry of the context as its tar header described it."""

    path: str  # relative, "/"-separated, cleaned: "a/b.txt"
    kind: str  # "file" | "dir" | "symlink" | "hardlink" | "other"
    mode: int  # permission bits with setuid/setgid/sticky, no type bits
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: str  # a symlink's target, a hard link's target path; "" otherwise
    digest: str | None  # "sha256:<hex>" of a regular file's (or hard link's) content


class BuildContext:
    """An unpacked context; :meth:`close` (or ``with``) removes it."""

    def __init__(self, *, root_fd: int, root: str, spool_fd: int, dir_name: str,
                 dockerfile_name: str, dockerfile: bytes, files: Mapping[str, ContextFile],
                 size: int, reused: int, hashed: int) -> None:
        self.root_fd = root_fd  # O_PATH | O_DIRECTORY
        self.root = root  # for messages and logs only: never resolved again
        self.dockerfile_name = dockerfile_name
        self.dockerfile = dockerfile
        self.files = files
        self.size = size
        #: digests taken from the stat index (verified by adler32) / computed
        self.reused = reused
        self.hashed = hashed
        self._spool_fd = spool_fd
        self._dir_name = dir_name

    def digest_of(self, path: str) -> str | None:
        entry = self.files.get(path)
        return entry.digest if entry is not None else None

    def close(self) -> None:
        """Remove the directory (through descriptors) and close them; idempotent."""
        if self._spool_fd < 0:
            return
        try:
            fdops.remove_at(self._spool_fd, self._dir_name)
        finally:
            os.close(self.root_fd)
            os.close(self._spool_fd)
            self.root_fd = self._spool_fd = -1

    def __enter__(self) -> BuildContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def receive_context(stream: IO[bytes], *, spool_dir: str, dockerfile: str = _DEFAULT_DOCKERFILE,
                    max_size: int, index: StatIndex | None = None,
                    memory_spool: str | None = None) -> BuildContext:
    """Unpack the context tar read from ``stream`` into a new directory of
    ``spool_dir``; ``dockerfile`` is its path inside the context.

    ``memory_spool``, a tmpfs: a plain (uncompressed) context of at most
    :data:`MEMORY_CONTEXT_LIMIT` bytes is unpacked there instead.  Creating a
    file costs a disk file system a journal entry (0.4 ms each on this
    project's test machine, against 7 us on tmpfs): a context of thousands of
    small files, sent whole at every build, is mostly that cost.  The body is
    read that far first to know; a larger or compressed one goes to
    ``spool_dir`` as it streams.

    Raises :class:`ContextError` for anything the client can fix (not a tar,
    too large, a refused entry, a bad ``.dockerignore``, no Dockerfile);
    ``OSError`` for a failure of the host.  Nothing is left behind either way.
    """
    wanted = _clean_dockerfile_name(dockerfile)
    if memory_spool is not None:
        stream, small = small_plain_body(stream, memory_spool)
        if small:
            spool_dir = memory_spool
    os.makedirs(spool_dir, 0o700, exist_ok=True)
    spool_fd = os.open(spool_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    dir_name: str | None = None
    root_fd = work_fd = -1
    try:
        dir_name = _make_private_dir(spool_fd)
        root_fd = os.open(dir_name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=spool_fd)
        # the extractor lists and fchmods directories: it needs a real descriptor
        work_fd = fdops.reopen(root_fd, os.O_RDONLY | os.O_DIRECTORY)
        names = {wanted, _IGNORE_FILE}
        if wanted == _DEFAULT_DOCKERFILE:
            names.add("dockerfile")
        ex = _ContextExtractor(work_fd, index, names)
        try:
            size = _unpack(stream, max_size, ex)
            matcher = ex.matcher
            try:
                if matcher is not None:
                    ex.prune(matcher, keep=names)
                name, text = _read_dockerfile(root_fd, wanted, dockerfile)
                if matcher is not None:
                    ex.prune(matcher, keep=set())  # dockerd hides them from COPY too
                ex.add_implicit_parents()
                ex.finish()  # directory mtimes, after the removals moved them
            except ArchiveError as exc:
                raise _refused(exc) from None
        finally:
            ex.close()
        if index is not None:
            index.save()
        ctx = BuildContext(root_fd=root_fd, root=os.path.join(spool_dir, dir_name),
                           spool_fd=spool_fd, dir_name=dir_name, dockerfile_name=name,
                           dockerfile=text, files=ex.files, size=size, reused=ex.reused,
                           hashed=ex.hashed)
    except BaseException:
        for fd in (work_fd, root_fd):
            if fd >= 0:
                os.close(fd)
        try:
            if dir_name is not None:
                fdops.remove_at(spool_fd, dir_name)
        finally:
            os.close(spool_fd)
        raise
    os.close(work_fd)
    log.info("builder.context_received", root=ctx.root, size=size, entries=len(ctx.files),
             reused=ctx.reused, hashed=ctx.hashed)
    return ctx


def _clean_dockerfile_name(dockerfile: str) -> str:
    """The Dockerfile's path in the context.  An absolute path is taken inside the
    context's root (as dockerd scopes it); one that climbs out is refused."""
    if not dockerfile:
        return _DEFAULT_DOCKERFILE
    cleaned = clean_path(dockerfile).lstrip("/")
    if cleaned == ".." or cleaned.startswith("../"):
        raise ContextError(
            f"the Dockerfile {dockerfile!r} is outside the build context; the CLI sends a "
            "Dockerfile from elsewhere inside the context tar, give its path there")
    if cleaned in ("", "."):
        raise ContextError(f"the Dockerfile {dockerfile!r} names the context's root directory")
    return cleaned


def _make_private_dir(spool_fd: int) -> str:
    while True:
        name = "skiff-context-" + secrets.token_hex(8)
        try:
            os.mkdir(name, 0o700, dir_fd=spool_fd)
        except FileExistsError:
            continue
        return name


class _Unpadded:
    """The context stream, with the end a Go client may leave out made up.

    The docker CLI's ``-f -`` and ``-f <outside the context>`` rewrite the
    context tar and end it right after the last file's data: no padding to
    the block, no two zero blocks.  Go's reader takes that; Python's does
    not.  Past the real end this gives the zeros that are missing; ``real``
    counts the bytes that came from the client, so a member whose data is cut
    short is still caught (by the caller, against the member's size)."""

    def __init__(self, inner: ContextStream) -> None:
        self._inner = inner
        self.real = 0
        self._pad: int | None = None

    def read(self, n: int = -1) -> bytes:
        if self._pad is None:
            data = self._inner.read(n)
            if data:
                self.real += len(data)
                return data
            self._pad = (-self.real) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE
        take = self._pad if n is None or n < 0 else min(n, self._pad)
        self._pad -= take
        return bytes(take)


def _unpack(stream: IO[bytes], max_size: int, ex: _ContextExtractor) -> int:
    """Read and unpack the whole tar; the decompressed bytes read."""
    try:
        body = ContextStream(stream, max_size)
        if body.empty:
            return 0  # dockerd takes an empty body as an empty context
        padded = _Unpadded(body)
        try:
            tf = open_stream(padded, "r|")  # type: ignore[arg-type]  # reads like an IO[bytes]
        except (tarfile.TarError, EOFError):
            if body.count == 0:
                return 0  # a compressed empty stream
            raise ContextError(_NOT_TAR) from None
        last: tarfile.TarInfo | None = None
        with tf:
            while True:
                try:
                    member = tf.next()
                except (tarfile.TarError, EOFError) as exc:
                    raise ContextError(f"the build context tar is corrupt: {exc}") from None
                if member is None:
                    # the zeros made up past the end must not have been a file's data
                    if last is not None and last.isreg() and \
                            padded.real < last.offset_data + last.size:
                        raise ContextError(f"the build context tar is corrupt at "
                                           f"{last.name!r}: its data is cut short")
                    break
                tf.members.clear()  # type: ignore[attr-defined]  # streaming: forget what was read
                try:
                    ex.add(tf, member)
                except (tarfile.TarError, EOFError) as exc:
                    raise ContextError(
                        f"the build context tar is corrupt at {member.name!r}: {exc}") from None
                except OSError as exc:
                    exc.add_note(f"while unpacking build context entry {member.name!r}")
                    raise
                last = member
        return body.count
    except TooLarge:
        raise ContextError(
            f"the build context is larger than the daemon allows ({max_size} bytes); exclude "
            "files with .dockerignore or set builder-max-context-size in daemon.json"
        ) from None
    except (Corrupt, Unsupported) as exc:
        raise ContextError(str(exc)) from None
    except ArchiveError as exc:
        raise _refused(exc) from None
    except DockerfileError as exc:
        raise ContextError(f"{_IGNORE_FILE}: {exc}") from None


def _refused(exc: ArchiveError) -> ContextError:
    # the extractor's reasons speak of a layer; the client sent a context
    reason = exc.reason.replace("the layer", "the build context")
    return ContextError(f"refusing build context entry {exc.entry!r}: {reason}")


def _read_dockerfile(root_fd: int, wanted: str, requested: str) -> tuple[str, bytes]:
    """(the name found, its text), resolved inside the context's root."""
    candidates = [wanted] + (["dockerfile"] if wanted == _DEFAULT_DOCKERFILE else [])
    for name in candidates:
        try:
            fd = fdops.open_in_root(root_fd, name, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            if exc.errno == errno.ELOOP:
                raise ContextError(
                    f"the Dockerfile {requested} is a symbolic link loop") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ContextError(f"the Dockerfile {requested} is not a regular file")
            if st.st_size > MAX_DOCKERFILE:
                raise ContextError(
                    f"the Dockerfile {requested} is {st.st_size} bytes; the builder reads "
                    f"Dockerfiles up to {MAX_DOCKERFILE} bytes")
            chunks = []
            left = MAX_DOCKERFILE + 1
            while left > 0 and (chunk := os.read(fd, min(left, CHUNK))):
                chunks.append(chunk)
                left -= len(chunk)
            if left <= 0:
                raise ContextError(
                    f"the Dockerfile {requested} is larger than {MAX_DOCKERFILE} bytes")
            return name, b"".join(chunks)
        finally:
            os.close(fd)
    raise ContextError(f"Cannot locate specified Dockerfile: {requested}")


def _mtime_ns(m: tarfile.TarInfo) -> int:
    """The entry's mtime in ns, exact when a PAX record gives a fraction."""
    text = m.pax_headers.get("mtime")
    if text:
        try:
            return int(Decimal(text) * 1_000_000_000)
        except (InvalidOperation, ValueError):
            pass
    return int(m.mtime * 1_000_000_000)


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "file"
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    return "other"


class _Watch:
    """A regular file's data on its way to disk: hashed (sha256, or only adler32
    when the stat index may know it), and kept when it is ``.dockerignore``."""

    def __init__(self, src: _Readable, sha: bool, adler: bool, keep: bool) -> None:
        self.src = src
        self.sha = hashlib.sha256() if sha else None
        self.adler = 1 if adler else None
        self.kept: list[bytes] | None = [] if keep else None

    def read(self, size: int, /) -> bytes:
        data = self.src.read(size)
        if self.sha is not None:
            self.sha.update(data)
        if self.adler is not None:
            self.adler = zlib.adler32(data, self.adler)
        if self.kept is not None:
            self.kept.append(data)
        return data


class _ContextExtractor(_Extractor):
    """The layer extractor, writing a context: no whiteouts (``.wh.x`` is a file
    like any other), no chown, no devices; it records each entry and digest."""

    def __init__(self, root_fd: int, index: StatIndex | None, always: set[str]) -> None:
        super().__init__(root_fd, "keep", allow_devices=False, chown=False, id_map=None)
        self.index = index
        self.always = always
        self.files: dict[str, ContextFile] = {}
        self.matcher: IgnoreMatcher | None = None
        self.reused = 0
        self.hashed = 0
        self._rel = ""
        self._watch: _Watch | None = None
        self._digest: str | None = None
        self._ignore_text = b""

    # -- entries -------------------------------------------------------------

    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = _clean_name(m.name)
        if not rel:
            return  # the root entry: the directory keeps its own 0700
        if rel.count("/") >= fdops.REMOVE_DEPTH - 1:
            # what could not be removed again through descriptors is not written
            raise ArchiveError(m.name, f"it is nested more than {fdops.REMOVE_DEPTH - 1} "
                               "directories deep")
        if self.matcher is not None and rel not in self.always and self.matcher.excluded(rel):
            return  # tarfile skips the data
        kind = _kind(m)
        old = self.files.get(rel)
        if old is not None and old.kind == "dir" and kind != "dir":
            prefix = rel + "/"
            for path in [p for p in self.files if p.startswith(prefix)]:
                del self.files[path]
        size = m.size
        digest: str | None = None
        linkname = m.linkname if kind in ("symlink", "hardlink") else ""
        if kind == "other":
            self.drop_existing(m.name, rel)
        else:
            self._rel, self._digest = rel, None
            self.entry(tf, m)
            digest = self._digest
            if kind == "hardlink":
                linkname = _clean_name(m.linkname)
                target = self.files.get(linkname)
                if target is not None:
                    digest, size = target.digest, target.size
        self.files[rel] = ContextFile(rel, kind, m.mode & 0o7777, m.uid, m.gid, size,
                                      float(m.mtime), linkname, digest)
        if rel == _IGNORE_FILE and kind == "file":
            self.matcher = IgnoreMatcher.from_dockerignore(self._ignore_text)

    def drop_existing(self, name: str, rel: str) -> None:
        """What an earlier entry of the same name wrote (an entry not written replaces it)."""
        parts = rel.split("/")
        pfd = self.parent(name, parts[:-1], create=True)
        assert pfd is not None
        try:
            _remove_at(pfd, parts[-1])
        finally:
            os.close(pfd)

    def regular(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        key: StatKey = (self._rel, m.size, _mtime_ns(m), m.mode & 0o7777, m.uid, m.gid)
        known = self.index.get(key) if self.index is not None else None
        watch = _Watch(tf.extractfile(m) or _Empty(), sha=known is None,
                       adler=self.index is not None, keep=self._rel == _IGNORE_FILE)
        self._watch = watch
        try:
            super().regular(tf, m, pfd, base)
        finally:
            self._watch = None
        if watch.kept is not None:
            self._ignore_text = b"".join(watch.kept)
        if known is not None and watch.adler == known[0]:
            self._digest = known[1]
            self.reused += 1
            return
        if watch.sha is not None:
            digest = "sha256:" + watch.sha.hexdigest()
        else:
            # same stat, other content: this file alone is read back, once
            digest = _hash_written(pfd, base)
        self._digest = digest
        self.hashed += 1
        if self.index is not None and watch.adler is not None:
            self.index.put(key, watch.adler, digest)

    def content(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> _Readable | None:
        return self._watch

    # -- after the stream ----------------------------------------------------

    def prune(self, matcher: IgnoreMatcher, keep: set[str]) -> None:
        """Remove what ``matcher`` excludes (but ``keep``) from disk and ``files``.

        An excluded directory that holds an entry that stays is kept, as the
        root-owned 0755 parent a client-side walk would have implied."""
        excluded = [p for p in self.files if p not in keep and matcher.excluded(p)]
        if not excluded:
            return
        gone = set(excluded)
        needed: set[str] = set()
        for path in self.files:
            if path not in gone:
                parts = path.split("/")
                needed.update("/".join(parts[:i]) for i in range(1, len(parts)))
        removed: set[str] = set()
        for path in sorted(excluded, key=lambda p: p.count("/")):
            parts = path.split("/")
            if any("/".join(parts[:i]) in removed for i in range(1, len(parts))):
                del self.files[path]  # went with its directory
                continue
            if path in needed:
                self.files[path] = self.implicit_dir(parts, chmod=True)
                continue
            self.remove(parts)
            removed.add(path)
            del self.files[path]
        # parents the tar never listed, made only for what was just removed
        orphans = {"/".join(p.split("/")[:i]) for p in removed
                   for i in range(1, p.count("/") + 1)} - needed - set(self.files)
        for path in sorted(orphans, key=lambda p: p.count("/"), reverse=True):
            self.remove(path.split("/"))
        for path, entry in list(self.files.items()):
            if entry.kind == "hardlink" and entry.linkname not in self.files:
                # its target is gone from the context: it is a file of its own now
                self.files[path] = ContextFile(path, "file", entry.mode, entry.uid, entry.gid,
                                               entry.size, entry.mtime, "", entry.digest)

    def remove(self, parts: list[str]) -> None:
        """Remove ``parts`` (a whole tree), walking to it without following links."""
        pfd = _open_dir(self.root_fd, parts[:-1])
        if pfd is not None:
            try:
                _remove_at(pfd, parts[-1])
            finally:
                os.close(pfd)

    def add_implicit_parents(self) -> None:
        """Record the directories the tar did not list but its entries needed."""
        missing: set[str] = set()
        for path in self.files:
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in self.files:
                    missing.add(parent)
        for parent in sorted(missing):
            self.files[parent] = self.implicit_dir(parent.split("/"), chmod=False)

    def implicit_dir(self, parts: list[str], chmod: bool) -> ContextFile:
        fd = _open_dir(self.root_fd, parts)
        if fd is None:
            raise ArchiveError("/".join(parts), "the directory vanished from the context")
        try:
            if chmod:
                os.fchmod(fd, 0o755)
            mtime = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        return ContextFile("/".join(parts), "dir", 0o755, 0, 0, 0, mtime, "", None)


class _Empty:
    def read(self, size: int, /) -> bytes:
        return b""


def _hash_written(pfd: int, base: str) -> str:
    fd = fdops.open_regular_at(pfd, base)
    try:
        h = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
        return "sha256:" + h.hexdigest()
    finally:
        os.close(fd)
