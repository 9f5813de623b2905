"""COPY and ADD as dockerd 20.10's classic builder does them.

Two steps.  :func:`plan_copy` resolves the sources in the source tree (the
context, or a stage's root filesystem: :mod:`.sources`), downloads ADD's URLs
(:mod:`.fetch`) and computes the cache id; nothing of the image is looked at
yet.  :func:`apply_copy` writes into an image's root filesystem, held as a
descriptor; :func:`discard` removes the downloads.

The rules, dockerd's:

- a directory source copies its *content* into the destination, which is
  created; a file goes to ``dest/<name>`` when the destination ends with
  ``/`` or is a directory of the image, else it is written as ``dest``;
- several sources (after the wildcards) need a destination ending with ``/``;
- missing parents of the destination are made 0755, owned by the ``--chown``
  identity (root without one); existing ones are left as they are;
- what is copied is owned by 0:0 or the ``--chown`` identity (names looked up
  in the *image's* /etc/passwd and /etc/group), keeps its permission bits and
  modification time (whole seconds, as dockerd's tars carry them); links stay
  links, hard links stay hard links;
- ``--chmod`` (refused by dockerd 20.10's classic builder; accepted here as
  BuildKit does) sets the permission bits of every file and directory copied;
  the directories made to hold the copy stay 0755;
- ADD of a local tar (plain, gzip, bzip2, xz: recognised by content) unpacks
  it into the destination, with the tar's own owners and modes (``--chown``
  and ``--chmod`` do not apply, as with dockerd); a URL is never unpacked.

The destination is an image's filesystem, untrusted: its links are followed
inside its root (``/bin/x`` with ``/bin -> usr/bin`` lands in ``/usr/bin/x``,
a link to ``../../..`` stays in the root), and the files are written by
:func:`skiff.core.archive.extract` from a tar generated here, which never
writes through a link.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

from skiff.core import archive, fdops
from skiff.core.builder import copytar, fetch, sources
from skiff.core.builder.sources import Source, SourceTree
from skiff.core.containers import passwd
from skiff.core.containers.archive import resolve_in_root
from skiff.core.errors import InvalidParameter

__all__ = ["CopyPlan", "Source", "SourceTree", "apply_copy", "discard", "plan_copy"]

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
_DIR_MODE = 0o755


@dataclass(frozen=True)
class CopyPlan:
    keyword: str  #: "COPY" | "ADD"
    sources: tuple[Source, ...]
    #: the destination in the image, absolute (WORKDIR applied), no trailing "/"
    dest: str
    #: by the instruction alone: a trailing "/", or a directory source
    dest_is_dir: bool
    #: "file:<hex>", "dir:<hex>" or "multi:<hex>" (:mod:`.sources`)
    cache_id: str
    #: the destination as the Dockerfile wrote it (dockerd's history shows that)
    dest_as_written: str = ""

    def history_text(self, chown: str | None = None) -> str:
        """dockerd's comment of the step (its history and its cache key):
        ``"COPY file:<hex> in /dest "``, the trailing blank included; with
        ``--chown`` dockerd writes ``--chown=<spec>`` right before the id,
        without a blank, and so does this."""
        flag = f"--chown={chown}" if chown else ""
        return f"{self.keyword} {flag}{self.cache_id} in {self.dest_as_written or self.dest} "


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------


def _dest(dest: str, workdir: str) -> str:
    full = posixpath.normpath(posixpath.join("/", workdir, dest))
    return "/" + full.lstrip("/")


def plan_copy(src: SourceTree, sources_: Sequence[str], dest: str, *, workdir: str,
              keyword: str = "COPY", allow_urls: bool = False,
              fetch_dir: str | None = None, max_fetch: int = 1 << 30) -> CopyPlan:
    """Resolve ``sources_`` in ``src`` for a copy to ``dest`` (see the module doc).

    A URL is downloaded now (ADD only, ``allow_urls``), into ``fetch_dir``;
    call :func:`discard` when the plan is done with.
    """
    found: list[Source] = []
    try:
        for raw in sources_:
            if fetch.is_url(raw):
                if not allow_urls:
                    raise InvalidParameter(f"source can't be a URL for {keyword}")
                found.append(_fetch(raw, dest, fetch_dir, max_fetch))
                continue
            path = sources.trim_source(raw)
            if sources.contains_wildcards(path):
                found.extend(sources.expand(src, path, keyword))
            else:
                found.append(sources.resolve(src, path, keyword))
        if not found:
            raise InvalidParameter(f"{keyword} failed: no source files were specified")
        if len(found) > 1 and not dest.endswith("/"):
            raise InvalidParameter(
                f"When using {keyword} with more than one source file, the destination "
                "must be a directory and end with a /")
    except BaseException:
        _remove_fetched(found)
        raise
    ids = [s.cache_id for s in found]
    return CopyPlan(
        keyword=keyword,
        sources=tuple(found),
        dest=_dest(dest, workdir),
        dest_is_dir=dest.endswith("/") or any(s.kind == "dir" for s in found),
        cache_id=ids[0] if len(ids) == 1 else sources.multi_id(ids),
        dest_as_written=dest,
    )


def _fetch(url: str, dest: str, fetch_dir: str | None, max_fetch: int) -> Source:
    if fetch_dir is None:
        raise ValueError("a URL source needs a fetch_dir")
    got = fetch.fetch(url, fetch_dir, max_fetch)
    name = got.name
    if not name:
        if dest.endswith("/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(got.path)
            raise InvalidParameter(f"ADD failed: cannot determine filename for source {url}")
        name = fetch.UNNAMED
    st = os.stat(got.path)
    return Source(url, name, "url", sources.file_id(name, st, got.digest),
                  fetched=got.path, mtime=got.mtime)


def _remove_fetched(found: Sequence[Source]) -> None:
    for s in found:
        if s.fetched:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s.fetched)


def discard(plan: CopyPlan) -> None:
    """Remove the plan's downloads (again is fine)."""
    _remove_fetched(plan.sources)


# ---------------------------------------------------------------------------
# --chown, --chmod
# ---------------------------------------------------------------------------

_NUMBER = re.compile(r"[0-9]+")


def _host_mapping(what: str) -> InvalidParameter:
    return InvalidParameter(f"unable to convert uid/gid chown string to host mapping: {what}")


def resolve_chown(root_fd: int, chown: str | None) -> tuple[int, int]:
    """dockerd's ``--chown=user[:group]`` in the image whose root is ``root_fd``;
    a lone user is also the group's name (or number)."""
    if not chown:
        return 0, 0
    parts = chown.split(":")
    if len(parts) > 2:
        raise InvalidParameter(f"invalid chown string format: {chown}")
    user, group = parts[0], parts[-1]
    if _NUMBER.fullmatch(user):
        uid = int(user)
    else:
        rows = passwd.read_table(root_fd, passwd.PASSWD)
        if rows is None:
            raise _host_mapping(f"can't find uid for user {user}: open /etc/passwd: "
                                "no such file or directory")
        entry = passwd.user_entry(rows, user)
        if entry is None:
            raise _host_mapping(f"can't find uid for user {user}: no such user: {user}")
        uid = entry[0]
    if _NUMBER.fullmatch(group):
        gid = int(group)
    else:
        grows = passwd.read_table(root_fd, passwd.GROUP)
        if grows is None:
            raise _host_mapping(f"can't find gid for group {group}: open /etc/group: "
                                "no such file or directory")
        found = passwd.group_id(grows, group)
        if found is None:
            raise _host_mapping(f"can't find gid for group {group}: no such group: {group}")
        gid = found
    if uid > 0xFFFFFFFE or gid > 0xFFFFFFFE:
        raise InvalidParameter(f"invalid chown string {chown}: ids go up to 4294967294")
    return uid, gid


def parse_chmod(chmod: str | None) -> int | None:
    """``--chmod=0755``: octal permission bits, up to 7777."""
    if not chmod:
        return None
    if not re.fullmatch(r"[0-7]{1,5}", chmod) or int(chmod, 8) > 0o7777:
        raise InvalidParameter(
            f"invalid --chmod value {chmod!r}: it must be an octal mode from 0 to 7777, "
            "such as 0755")
    return int(chmod, 8)


# ---------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------


@dataclass
class _Apply:
    plan: CopyPlan
    tree: SourceTree
    root_fd: int
    uid: int
    gid: int
    tar: copytar.CopyTar

    def fail(self, what: str) -> InvalidParameter:
        return InvalidParameter(f"{self.plan.keyword} failed: {what}")

    def resolve(self, path: str) -> str:
        """``path`` of the image with its links followed inside the root."""
        try:
            return resolve_in_root(self.root_fd, path)
        except OSError as exc:
            raise self.fail(f"{path}: {exc.strerror}") from None

    def dest_dir(self, path: str) -> int:
        """A real descriptor of the image's directory ``path`` (links followed
        inside the root), made with missing parents (see the module doc)."""
        resolved = self.resolve(path)
        fd = fdops.open_in_root(self.root_fd, "/", os.O_RDONLY | os.O_DIRECTORY)
        done = ""
        try:
            for part in [p for p in resolved.split("/") if p]:
                done = f"{done}/{part}"
                try:
                    nfd = fdops.open_in_root(self.root_fd, done, os.O_RDONLY | os.O_DIRECTORY)
                except FileNotFoundError:
                    nfd = self.make_dir(fd, part)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise self.fail(f"{done} is not a directory in the image") from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def make_dir(self, pfd: int, name: str) -> int:
        """Directory ``name`` made in ``pfd`` (0755, the copy's owner)."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, _DIR_MODE, dir_fd=pfd)
        fd = fdops.open_dir_at(pfd, name)
        try:
            fdops.set_fd_meta(fd, self.uid, self.gid, _DIR_MODE)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def is_dir(self, path: str) -> bool:
        try:
            fd = fdops.open_in_root(self.root_fd, path, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return False
        os.close(fd)
        return True

    def extract(self, stream: io.BufferedReader, dfd: int) -> None:
        try:
            with stream:
                archive.extract(stream, dfd, whiteouts="keep", allow_devices=True)
        except archive.ArchiveError as exc:
            where = f"{exc.entry}: " if exc.entry else ""
            raise self.fail(f"{where}{exc.reason}") from None

    # -- the sources ---------------------------------------------------------

    def copy(self, s: Source, decompress: bool) -> None:
        if s.kind == "dir":
            self.copy_dir(s)
        elif decompress and s.kind == "file" and self.unpack(s):
            pass
        else:
            self.copy_file(s)

    def copy_dir(self, s: Source) -> None:
        pfd = fdops.open_in_root(self.tree.root_fd, s.path, os.O_PATH)
        try:
            sfd = fdops.reopen(pfd, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            os.close(pfd)
        try:
            dfd = self.dest_dir(self.plan.dest)
            try:
                self.extract(copytar.reader(self.tar.tar_dir(sfd)), dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def copy_file(self, s: Source) -> None:
        final = self.resolve(self.plan.dest)
        if self.plan.dest_is_dir or self.is_dir(final):
            where, name = final, s.name
        else:
            where, name = posixpath.split(final)
        dfd = self.dest_dir(where)
        try:
            self.extract(copytar.reader(self.tar.tar_one(s, name)), dfd)
        finally:
            os.close(dfd)

    def unpack(self, s: Source) -> bool:
        """ADD of a local tar: unpacked into the destination; False if not a tar."""
        try:
            fd = fdops.open_in_root(self.tree.root_fd, s.path, os.O_PATH)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return False
                rfd = fdops.reopen(fd, os.O_RDONLY)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise sources.not_found(self.plan.keyword, s.path) from None
            raise
        with os.fdopen(rfd, "rb") as f:
            if not copytar.is_tar(f):
                return False
            f.seek(0)
            dfd = self.dest_dir(self.plan.dest)
            try:
                self.extract(f, dfd)
            finally:
                os.close(dfd)
        return True


def apply_copy(plan: CopyPlan, src: SourceTree, dst_root_fd: int, *,
               chown: str | None = None, chmod: str | None = None,
               decompress: bool = False) -> None:
    """Write the plan's sources into the image whose root is ``dst_root_fd``."""
    mode = parse_chmod(chmod)
    uid, gid = resolve_chown(dst_root_fd, chown)
    job = _Apply(plan, src, dst_root_fd, uid, gid,
                 copytar.CopyTar(src.root_fd, uid, gid, mode))
    for s in plan.sources:
        job.copy(s, decompress)
