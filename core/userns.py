"""User-namespace remapping (daemon.json ``userns-remap``): the remap user, its
subordinate ids, and the id mappings containers get.

Docker's values: ``default`` (skiff's own remap user, ``skiffremap``, made
with ``useradd --system`` and given subordinate ranges in ``/etc/subuid`` and
``/etc/subgid`` when it has none, as dockerd does for ``dockremap``),
``user``, ``user:group``, ``uid`` and ``uid:gid``.  The remap user's first
subordinate ids become a container's 0..65535; the rest of its ranges are
cut into 65536-wide blocks for ``--userns=auto`` (one block per container,
see ``skiff.core.containers.userns``).

Everything an operator can get wrong is refused when the daemon starts, with
the file and the fix named: no such user, no subordinate ranges, ranges
smaller than 65536 ids, ranges that overlap each other or another user's, a
range that includes host id 0, a kernel without user namespaces.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTAINER_IDS",
    "DEFAULT_USER",
    "IdMap",
    "Remap",
    "RemapError",
    "identity",
    "resolve",
]

#: what ``userns-remap: default`` means: skiff's own remap user (Docker's is dockremap)
DEFAULT_SPEC = "default"
DEFAULT_USER = "skiffremap"
#: ids a container sees: 0..65535
CONTAINER_IDS = 65536
#: subordinate ids skiff gives skiffremap when it makes the ranges: the
#: daemon's own mapping plus 1024 blocks for ``--userns=auto``
DEFAULT_RANGE_COUNT = CONTAINER_IDS * 1025
#: where new ranges start at the lowest (shadow-utils' SUB_UID_MIN)
SUB_ID_MIN = 100000
SUBUID_FILE = "/etc/subuid"
SUBGID_FILE = "/etc/subgid"
#: the kernel's limit on user namespaces; 0 turns them off
MAX_USER_NAMESPACES = "/proc/sys/user/max_user_namespaces"


class RemapError(Exception):
    """``userns-remap`` cannot work as configured; the message says what to fix."""


@dataclass(frozen=True)
class IdMap:
    """A container's id mapping: ``(container id, host id, count)`` lines, as
    ``/proc/<pid>/uid_map`` takes them, for uids and for gids."""

    uids: tuple[tuple[int, int, int], ...]
    gids: tuple[tuple[int, int, int], ...]

    @property
    def root_uid(self) -> int:
        """The host uid of the container's root."""
        return _to_host(self.uids, 0)

    @property
    def root_gid(self) -> int:
        return _to_host(self.gids, 0)

    def host_uid(self, uid: int) -> int:
        """The host uid of container uid ``uid``; ``ValueError`` when unmapped."""
        return _to_host(self.uids, uid)

    def host_gid(self, gid: int) -> int:
        return _to_host(self.gids, gid)

    def to_json(self) -> dict[str, Any]:
        return {"UidMap": [list(m) for m in self.uids], "GidMap": [list(m) for m in self.gids]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdMap:
        return cls(tuple(_triple(m) for m in data["UidMap"]),
                   tuple(_triple(m) for m in data["GidMap"]))

    def ranges_text(self) -> str:
        """``0:100000:65536`` per uid range, comma-separated (for logs)."""
        return ",".join(f"{c}:{h}:{n}" for c, h, n in self.uids)


def _triple(m: Sequence[Any]) -> tuple[int, int, int]:
    c, h, n = (int(x) for x in m)
    return c, h, n


def _to_host(lines: Iterable[tuple[int, int, int]], cid: int) -> int:
    for container, host, count in lines:
        if container <= cid < container + count:
            return host + cid - container
    raise ValueError(f"container id {cid} is not mapped to a host id")


def identity() -> IdMap:
    """The mapping of an unremapped container (host ids are container ids)."""
    full = ((0, 0, 4294967295),)
    return IdMap(full, full)


@dataclass(frozen=True)
class Remap:
    """The daemon's remapping, resolved from ``userns-remap`` at start."""

    spec: str  #: as configured
    user: str  #: the remap user's name
    group: str  #: the group whose name or id the spec gave (the user's own by default)
    subuids: tuple[tuple[int, int], ...]  #: (start, count) from /etc/subuid, file order
    subgids: tuple[tuple[int, int], ...]
    default: IdMap  #: the first 65536 subordinate ids: every remapped container's
    #: (host uid, host gid) of each 65536-wide block left for ``--userns=auto``
    auto_blocks: tuple[tuple[int, int], ...]

    @property
    def root_dir_name(self) -> str:
        """``<uid>.<gid>`` of the container root on the host: the remapped data-root,
        as dockerd names it."""
        return f"{self.default.root_uid}.{self.default.root_gid}"


# ---------------------------------------------------------------------------
# /etc/subuid and /etc/subgid
# ---------------------------------------------------------------------------


def parse_subids(text: str, path: str) -> list[tuple[str, int, int]]:
    """``owner:start:count`` lines (comments and blank lines skipped)."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        try:
            if len(parts) != 3 or not parts[0]:
                raise ValueError
            start, count = int(parts[1]), int(parts[2])
            if start < 0 or count <= 0:
                raise ValueError
        except ValueError:
            raise RemapError(f"{path} line {number}: {line!r} is not owner:start:count; "
                             "fix or remove the line") from None
        out.append((parts[0], start, count))
    return out


def _read_subids(path: str) -> list[tuple[str, int, int]]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_subids(f.read(), path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RemapError(f"cannot read {path}: {exc.strerror}") from None


def _owned(entries: Iterable[tuple[str, int, int]], name: str, uid: int
           ) -> list[tuple[int, int]]:
    # shadow-utils' rule: a line names its owner by name or by numeric id
    return [(start, count) for owner, start, count in entries if owner in (name, str(uid))]


def _check_ranges(kind: str, path: str, user: str, uid: int,
                  entries: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    ranges = _owned(entries, user, uid)
    if not ranges:
        flag = "--add-subuids" if kind == "uid" else "--add-subgids"
        raise RemapError(
            f"userns-remap: {user} has no subordinate {kind} range in {path}; add one of "
            f"at least {CONTAINER_IDS} ids, e.g. 'usermod {flag} 100000-165535 {user}' "
            f"(the line '{user}:100000:65536')")
    for i, (start, count) in enumerate(ranges):
        if start == 0:
            raise RemapError(
                f"userns-remap: {user}'s subordinate {kind} range {start}-{start + count - 1} "
                f"in {path} includes host {kind} 0: container ids would be host root's; "
                "start the range at 100000 or above")
        for other_start, other_count in ranges[i + 1:]:
            if start < other_start + other_count and other_start < start + count:
                raise RemapError(
                    f"userns-remap: {user}'s subordinate {kind} ranges "
                    f"{start}-{start + count - 1} and "
                    f"{other_start}-{other_start + other_count - 1} in {path} overlap; "
                    "make them disjoint")
    total = sum(count for _, count in ranges)
    if total < CONTAINER_IDS:
        raise RemapError(
            f"userns-remap: {user} has only {total} subordinate {kind}s in {path}; a "
            f"container needs {CONTAINER_IDS} (its ids 0-65535): make the range "
            f"'{user}:{ranges[0][0]}:{CONTAINER_IDS}' or larger")
    for owner, start, count in entries:
        if owner in (user, str(uid)):
            continue
        for s, c in ranges:
            if start < s + c and s < start + count:
                raise RemapError(
                    f"userns-remap: {user}'s subordinate {kind} range {s}-{s + c - 1} "
                    f"overlaps {owner}'s {start}-{start + count - 1} in {path}: containers "
                    f"would share host {kind}s with {owner}'s; make the ranges disjoint")
    return ranges


def _first(ranges: Sequence[tuple[int, int]], want: int) -> tuple[tuple[int, int, int], ...]:
    """The first ``want`` ids of ``ranges`` as map lines from container id 0."""
    lines = []
    done = 0
    for start, count in ranges:
        take = min(count, want - done)
        lines.append((done, start, take))
        done += take
        if done == want:
            break
    return tuple(lines)


def _blocks(ranges: Sequence[tuple[int, int]], skip: int) -> list[int]:
    """Starts of the 65536-wide blocks in ``ranges`` after their first ``skip`` ids."""
    out = []
    for start, count in ranges:
        used = min(skip, count)
        skip -= used
        start, count = start + used, count - used
        while count >= CONTAINER_IDS:
            out.append(start)
            start += CONTAINER_IDS
            count -= CONTAINER_IDS
    return out


# ---------------------------------------------------------------------------
# The remap user
# ---------------------------------------------------------------------------


def _parse_spec(spec: str) -> tuple[str, str | None]:
    parts = spec.split(":")
    if len(parts) > 2 or not all(parts):
        raise RemapError(
            f"userns-remap: invalid value {spec!r}: use 'default', a user, user:group, "
            "uid or uid:gid")
    return parts[0], parts[1] if len(parts) == 2 else None


def _lookup_user(name: str) -> pwd.struct_passwd:
    try:
        if name.isdigit():
            return pwd.getpwuid(int(name))
        return pwd.getpwnam(name)
    except KeyError:
        what = "uid" if name.isdigit() else "user"
        raise RemapError(
            f"userns-remap: {what} {name} has no entry in /etc/passwd; create the user "
            f"(useradd --system {name}) or use 'default' for skiff's own "
            f"({DEFAULT_USER})") from None


def _lookup_group(name: str) -> grp.struct_group:
    try:
        if name.isdigit():
            return grp.getgrgid(int(name))
        return grp.getgrnam(name)
    except KeyError:
        what = "gid" if name.isdigit() else "group"
        raise RemapError(f"userns-remap: {what} {name} has no entry in /etc/group; "
                         "create it or name another") from None


def check_kernel(max_user_namespaces: str = MAX_USER_NAMESPACES) -> None:
    """Refuse a kernel that cannot make user namespaces, saying why."""
    if not os.path.exists("/proc/self/ns/user"):
        raise RemapError("userns-remap: this kernel has no user namespaces "
                         "(CONFIG_USER_NS); remove userns-remap or use a kernel with them")
    try:
        with open(max_user_namespaces) as f:
            limit = int(f.read())
    except (OSError, ValueError):
        return
    if limit <= 0:
        raise RemapError(f"userns-remap: user namespaces are turned off ({max_user_namespaces} "
                         "is 0); set the sysctl user.max_user_namespaces to a positive "
                         "number (e.g. 15000) or remove userns-remap")


Runner = Callable[[list[str]], None]


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise RemapError(f"userns-remap: cannot create {DEFAULT_USER}: {argv[0]} is not "
                         "installed (Debian: apt-get install passwd)") from None
    except subprocess.CalledProcessError as exc:
        raise RemapError(
            f"userns-remap: cannot create {DEFAULT_USER}: {' '.join(argv)} failed: "
            f"{exc.stderr.decode(errors='replace').strip()}") from None


def ensure_default_user(run: Runner = _run, subuid_file: str = SUBUID_FILE,
                        subgid_file: str = SUBGID_FILE) -> None:
    """Make ``skiffremap`` and its subordinate ranges when they are missing.

    As dockerd does for ``dockremap``: a system user (no home, no shell) with
    its own group, and one range in each file starting after every range
    already there, ``DEFAULT_RANGE_COUNT`` ids wide so that ``--userns=auto``
    has blocks to hand out.
    """
    try:
        user = pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        run(["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", DEFAULT_USER])
        user = pwd.getpwnam(DEFAULT_USER)
    uids, gids = _read_subids(subuid_file), _read_subids(subgid_file)
    if _owned(uids, DEFAULT_USER, user.pw_uid) and _owned(gids, DEFAULT_USER, user.pw_uid):
        return
    start = max([SUB_ID_MIN] + [s + c for _, s, c in uids + gids])
    last = start + DEFAULT_RANGE_COUNT - 1
    argv = ["usermod"]
    if not _owned(uids, DEFAULT_USER, user.pw_uid):
        argv += ["--add-subuids", f"{start}-{last}"]
    if not _owned(gids, DEFAULT_USER, user.pw_uid):
        argv += ["--add-subgids", f"{start}-{last}"]
    run([*argv, DEFAULT_USER])


def resolve(spec: str, *, create: bool = True, subuid_file: str = SUBUID_FILE,
            subgid_file: str = SUBGID_FILE) -> Remap:
    """The daemon's remapping for ``userns-remap`` value ``spec``.

    With ``create`` (the daemon's start) ``default`` makes skiffremap and its
    ranges when missing; without (``skiff`` commands that only read) it
    refuses instead.  Raises ``RemapError`` naming what to fix.
    """
    check_kernel()
    name, group_name = _parse_spec(spec)
    if name == DEFAULT_SPEC and group_name is None:
        if create:
            ensure_default_user(subuid_file=subuid_file, subgid_file=subgid_file)
        name = DEFAULT_USER
    user = _lookup_user(name)
    if user.pw_uid == 0:
        raise RemapError("userns-remap: root cannot be remapped onto itself (its containers "
                         "would run as host root); name another user or use 'default'")
    if group_name is None:
        try:
            group = grp.getgrgid(user.pw_gid).gr_name
        except KeyError:
            group = str(user.pw_gid)
    else:
        group = _lookup_group(group_name).gr_name
    uid_entries, gid_entries = _read_subids(subuid_file), _read_subids(subgid_file)
    # Docker's rule: both files name the user (the group only owns the data-root)
    subuids = _check_ranges("uid", subuid_file, user.pw_name, user.pw_uid, uid_entries)
    subgids = _check_ranges("gid", subgid_file, user.pw_name, user.pw_uid, gid_entries)
    default = IdMap(_first(subuids, CONTAINER_IDS), _first(subgids, CONTAINER_IDS))
    blocks = tuple(zip(_blocks(subuids, CONTAINER_IDS), _blocks(subgids, CONTAINER_IDS),
                       strict=False))
    return Remap(spec=spec, user=user.pw_name, group=group, subuids=tuple(subuids),
                 subgids=tuple(subgids), default=default, auto_blocks=blocks)
