"""Reading untrusted tar streams without letting their headers take the memory.

Python's ``tarfile`` reads a GNU long name or long link (``L``, ``K``) and a
PAX extended or global header (``x``, ``g``, Solaris ``X``) whole into one
``bytes`` before looking at it; it reads a chain of them recursively, each
level keeping its buffer; it keeps every global PAX record for the rest of the
stream; and it reads an old GNU sparse header's extension blocks for as long as
each says another follows.  All of that is sized by the tar itself, so one
512-byte header claiming 4 GiB would make the daemon allocate 4 GiB.

:func:`open_stream` opens a tar with :class:`BoundedTarInfo`, which checks
each such header against :data:`MAX_META` from its size field, before reading
its payload, and raises :class:`TarHeaderTooLarge` (a ``tarfile.TarError``,
so every reader's existing handling turns it into a 400).  Go's
``archive/tar``, which dockerd uses, refuses these headers above the same
1 MiB (``maxSpecialFileSize``).  The limits, per stream:

- one metadata header (long name, long link, PAX): at most 1 MiB;
- the metadata headers in front of one entry: at most 1 MiB together, and at
  most :data:`MAX_META_HEADERS` of them (a chain of empty ones would otherwise
  recurse until Python's recursion limit);
- global PAX records kept for the stream: at most 1 MiB together;
- the GNU sparse map of one entry (old-style extension blocks, or the 1.0
  map in the data area): at most 1 MiB.

Every tar that comes from outside goes through here: ``docker load`` and
``import``, ``docker cp`` into a container, pulled layers
(:mod:`skiff.core.archive`, :mod:`skiff.core.images.archives`).
"""

from __future__ import annotations

import tarfile
from typing import IO, Any

__all__ = ["MAX_META", "MAX_META_HEADERS", "BoundedTarInfo", "TarHeaderTooLarge",
           "open_stream"]

#: the most bytes of metadata a tar may make a reader hold for one entry
MAX_META = 1 << 20
#: metadata headers allowed in front of one entry (real tars use one to three)
MAX_META_HEADERS = 32

_WHAT = {
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
    tarfile.XHDTYPE: "PAX extended",
    tarfile.XGLTYPE: "PAX global",
    tarfile.SOLARIS_XHDTYPE: "Solaris extended",
}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


class TarHeaderTooLarge(tarfile.TarError):
    """A tar header whose metadata is above the limits of this module."""


class _Budget:
    """What the metadata in front of the entry being read has used so far."""

    __slots__ = ("count", "size")

    def __init__(self) -> None:
        self.count = 0
        self.size = 0


class _CappedReads:
    """The stream seen by the GNU sparse header parser: it may read ``left`` bytes."""

    def __init__(self, inner: Any, left: int, offset: int) -> None:
        self._inner = inner
        self._left = left
        self._offset = offset

    def read(self, n: int) -> bytes:
        if n > self._left:
            raise TarHeaderTooLarge(
                f"the GNU sparse map of the entry at byte {self._offset} goes on for more "
                f"than {_mib(MAX_META)}; refusing the archive")
        self._left -= n
        data: bytes = self._inner.read(n)
        if len(data) < n:
            # tarfile would index past the end of a short block (IndexError)
            raise tarfile.ReadError("unexpected end of data in a GNU sparse map")
        return data

    def tell(self) -> int:
        return int(self._inner.tell())


class BoundedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that refuses oversized metadata headers before reading them.

    It also turns what ``tarfile`` lets escape on a malformed header
    (``ValueError`` from a bad number in a PAX or sparse record,
    ``IndexError`` from a short block) into ``tarfile.ReadError``, so a
    reader's ``except tarfile.TarError`` covers every bad header.
    """

    def _proc_member(self, tf: Any) -> Any:
        # tf is the TarFile being read; the budget lives on it, one per stream
        budget: _Budget | None = getattr(tf, "_skiff_meta_budget", None)
        if budget is None:
            budget = _Budget()
            tf._skiff_meta_budget = budget
        what = _WHAT.get(self.type)
        if what is None:
            budget.count = budget.size = 0  # a real entry: the next one starts afresh
        else:
            self._charge(tf, budget, what)
        try:
            # _proc_sparse and _proc_member: tarfile's private hooks, not in typeshed
            if self.type == tarfile.GNUTYPE_SPARSE:
                return self._with_capped_reads(tf, self._proc_sparse, tf)  # type: ignore[attr-defined]
            return super()._proc_member(tf)  # type: ignore[misc]
        except (ValueError, IndexError, OverflowError) as exc:
            raise tarfile.ReadError(
                f"invalid tar header at byte {self.offset}: {exc}") from exc

    def _charge(self, tf: Any, budget: _Budget, what: str) -> None:
        size = self.size
        if size < 0 or size > MAX_META:
            raise TarHeaderTooLarge(
                f"the {what} header at byte {self.offset} claims {size} bytes; tar metadata "
                f"headers above {_mib(MAX_META)} are refused (as Docker refuses them)")
        budget.count += 1
        budget.size += size
        if budget.count > MAX_META_HEADERS:
            raise TarHeaderTooLarge(
                f"more than {MAX_META_HEADERS} metadata headers in a row at byte "
                f"{self.offset}; refusing the archive")
        if budget.size > MAX_META:
            raise TarHeaderTooLarge(
                f"the metadata headers in front of the entry at byte {self.offset} claim "
                f"{budget.size} bytes together; more than {_mib(MAX_META)} is refused")
        if self.type == tarfile.XGLTYPE:
            kept = sum(len(k) + len(v) for k, v in tf.pax_headers.items())
            if kept + size > MAX_META:
                raise TarHeaderTooLarge(
                    f"the PAX global headers up to byte {self.offset} hold more than "
                    f"{_mib(MAX_META)}; refusing the archive")

    def _proc_gnusparse_10(self, next: Any, pax_headers: Any, tf: Any) -> None:
        # GNU sparse 1.0 keeps its map in the data area, as many numbers as it says
        # a private hook of tarfile's, not in typeshed
        self._with_capped_reads(tf, super()._proc_gnusparse_10,  # type: ignore[misc]
                                next, pax_headers, tf)

    def _with_capped_reads(self, tf: Any, fn: Any, *args: Any) -> Any:
        real = tf.fileobj
        tf.fileobj = _CappedReads(real, MAX_META, self.offset)
        try:
            return fn(*args)
        finally:
            tf.fileobj = real


def open_stream(fileobj: IO[bytes], mode: str = "r|*") -> tarfile.TarFile:
    """``tarfile.open`` for an untrusted, non-seekable stream, headers bounded.

    ``mode`` is a stream mode (``r|``, ``r|gz``, ``r|*`` ...).  Callers should
    iterate with ``next()`` and clear ``members`` as they go: tarfile keeps
    every ``TarInfo`` it has returned.
    """
    # typeshed's overloads take only literal modes; ``mode`` is any stream mode
    return tarfile.open(fileobj=fileobj, mode=mode,  # type: ignore[call-overload]
                        tarinfo=BoundedTarInfo)
