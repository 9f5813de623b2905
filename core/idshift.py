"""Shifting the owners in a tar stream: the chowned copies of user namespaces.

Where the kernel or the storage driver cannot show a remapped container its
layers through idmapped mounts, the container gets copies of them whose files
belong to its host ids (Docker's way for every remapped daemon): each layer's
tar is rewritten with ``to_host`` on the way in, and what the container
wrote (commit, export) with ``to_container`` on the way out, so images stay
in container ids whatever the daemon does.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from skiff.core import syscalls
from skiff.core.userns import IdMap

#: the id an unmapped one becomes (the kernel's overflow id, "nobody")
OVERFLOW_ID = 65534

IdFn = Callable[[int], int]


def to_host(idmap: IdMap) -> tuple[IdFn, IdFn]:
    """(uid, gid) functions from container ids to ``idmap``'s host ids; an
    id outside the mapping becomes the host id of 65534, as the kernel shows
    an unmapped id to the container."""

    def uid(value: int) -> int:
        try:
            return idmap.host_uid(value)
        except ValueError:
            return idmap.host_uid(OVERFLOW_ID)

    def gid(value: int) -> int:
        try:
            return idmap.host_gid(value)
        except ValueError:
            return idmap.host_gid(OVERFLOW_ID)

    return uid, gid


def to_container(idmap: IdMap) -> tuple[IdFn, IdFn]:
    """The inverse of ``to_host``: host ids back to container ids (65534 when
    outside the mapping, e.g. a file host root put into the layer)."""

    def back(lines: tuple[tuple[int, int, int], ...]) -> IdFn:
        def fn(value: int) -> int:
            for container, host, count in lines:
                if host <= value < host + count:
                    return container + value - host
            return OVERFLOW_ID
        return fn

    return back(idmap.uids), back(idmap.gids)


def rewrite_owners(src: IO[bytes], dst: IO[bytes], uid: IdFn, gid: IdFn) -> None:
    """Copy the tar ``src`` to ``dst`` with every entry's uid and gid mapped.

    Names, modes, times, links, devices and extended attributes (PAX
    ``SCHILY.xattr.*`` records) pass through; owner names are dropped, so
    that the numeric ids are what counts on extraction.
    """
    with tarfile.open(fileobj=src, mode="r|") as tin, \
            tarfile.open(fileobj=dst, mode="w|", format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            member.uid = uid(member.uid)
            member.gid = gid(member.gid)
            member.uname = member.gname = ""
            for key in ("uid", "gid", "uname", "gname"):
                # a dict, which typeshed calls a Mapping
                member.pax_headers.pop(key, None)  # type: ignore[attr-defined]
            tout.addfile(member, tin.extractfile(member) if member.isreg() else None)


@contextmanager
def filesystem_ids(uid: int, gid: int) -> Iterator[None]:
    """Create files as host ``uid``/``gid`` in this thread (``setfsuid``), every
    capability still effective.

    What host root writes through a container's idmapped mount must be
    representable there, and host root is outside any container's mapping
    (the kernel says ``EOVERFLOW``); the container's root is inside.
    """
    _, permitted, inheritable = syscalls.capget()
    old_gid = syscalls.setfsgid(gid)
    old_uid = syscalls.setfsuid(uid)
    try:
        # a fsuid change away from 0 drops the file capabilities from the effective set
        syscalls.capset(permitted, permitted, inheritable)
        yield
    finally:
        syscalls.setfsuid(old_uid)
        syscalls.setfsgid(old_gid)
        syscalls.capset(permitted, permitted, inheritable)
