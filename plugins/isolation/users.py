"""Docker's ``--user`` resolution against a container's /etc/passwd and /etc/group.

The rules are runc's ``GetExecUser``, which Docker relies on: ``""`` means
uid 0 with its passwd entry if any; a name must exist in passwd; a number need
not; an explicit group replaces the passwd gid and suppresses supplementary
groups, which otherwise come from /etc/group membership by user name.
"""

from __future__ import annotations

MAX_ID = 2**31 - 1


class UserError(Exception):
    """The user or group cannot be resolved; the message is Docker's."""


# Plain classes rather than dataclasses: the fork server imports this module
# and dataclasses would pull in inspect, ast and friends.


class PasswdEntry:
    __slots__ = ("gid", "home", "name", "uid")

    def __init__(self, name: str, uid: int, gid: int, home: str) -> None:
        self.name, self.uid, self.gid, self.home = name, uid, gid, home


class GroupEntry:
    __slots__ = ("gid", "members", "name")

    def __init__(self, name: str, gid: int, members: list[str]) -> None:
        self.name, self.gid, self.members = name, gid, members


class ExecUser:
    """Who the container's process runs as."""

    __slots__ = ("gid", "home", "name", "sgids", "uid")

    def __init__(
        self,
        uid: int = 0,
        gid: int = 0,
        sgids: list[int] | None = None,
        home: str = "/",
        name: str = "",
    ) -> None:
        self.uid, self.gid, self.home, self.name = uid, gid, home, name
        self.sgids = list(sgids or [])

    def __repr__(self) -> str:
        return (
            f"ExecUser(uid={self.uid}, gid={self.gid}, sgids={self.sgids}, "
            f"home={self.home!r}, name={self.name!r})"
        )


def _int(text: str) -> int | None:
    try:
        return int(text, 10) if text.strip() == text and text else None
    except ValueError:
        return None


#: an id field that is not a number in 0..MAX_ID: never read as 0 (root),
#: as runc's parser does; selecting such an entry is an error
INVALID_ID = -1


def _id(text: str) -> int:
    value = _int(text)
    return value if value is not None and 0 <= value <= MAX_ID else INVALID_ID


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        fields += [""] * (7 - len(fields))
        entries.append(PasswdEntry(fields[0], _id(fields[2]), _id(fields[3]), fields[5]))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        fields += [""] * (4 - len(fields))
        members = [m for m in fields[3].split(",") if m]
        entries.append(GroupEntry(fields[0], _id(fields[2]), members))
    return entries


def _valid(entry: PasswdEntry | GroupEntry, *ids: int) -> None:
    if INVALID_ID in ids:
        kind = "passwd" if isinstance(entry, PasswdEntry) else "group"
        raise UserError(
            f"invalid {kind} entry for {entry.name!r}: its ids must be numbers in "
            f"0-{MAX_ID}; fix the image's /etc/{kind}"
        )


def _check_range(value: int) -> None:
    if value < 0 or value > MAX_ID:
        raise UserError(f"uids and gids must be in range 0-{MAX_ID}")


def resolve_user(spec: str, passwd: str | None, group: str | None) -> ExecUser:
    """Resolve Docker's ``--user`` value; ``passwd``/``group`` are file contents
    (None when the file does not exist)."""
    user_arg, _, group_arg = spec.partition(":")
    uid_arg = _int(user_arg)
    gid_arg = _int(group_arg)
    result = ExecUser()

    users = parse_passwd(passwd or "")
    if user_arg == "":
        matches = [u for u in users if u.uid == result.uid]
    elif uid_arg is None:
        matches = [u for u in users if u.name == user_arg]
    else:
        _check_range(uid_arg)
        matches = [u for u in users if u.uid == uid_arg]
    if matches:
        # first match wins, as in runc
        found = matches[0]
        _valid(found, found.uid, found.gid)
        result.uid, result.gid, result.home, result.name = (
            found.uid,
            found.gid,
            found.home,
            found.name,
        )
    elif user_arg != "":
        if uid_arg is None:
            raise UserError(f"unable to find user {user_arg}: no matching entries in passwd file")
        _check_range(uid_arg)
        result.uid = uid_arg

    groups = parse_group(group or "")
    if group_arg != "":
        if gid_arg is None:
            named = [g for g in groups if g.name == group_arg]
        else:
            named = [g for g in groups if g.gid == gid_arg]
        if gid_arg is not None:
            _check_range(gid_arg)
        if named:
            _valid(named[0], named[0].gid)
            result.gid = named[0].gid
        elif gid_arg is None:
            raise UserError(f"unable to find group {group_arg}: no matching entries in group file")
        else:
            _check_range(gid_arg)
            result.gid = gid_arg
    elif result.name:
        # a group with a broken id grants nothing (fewer groups is the safe side)
        result.sgids = [g.gid for g in groups
                        if result.name in g.members and g.gid != INVALID_ID]
    return result


def additional_groups(wanted: list[str], group: str | None) -> list[int]:
    """``--group-add`` values as gids: a name or a number found in /etc/group
    (by name first), else a number; anything else is an error in runc's words,
    which dockerd passes on."""
    groups = parse_group(group or "")
    out: list[int] = []
    for item in wanted:
        found = [g for g in groups if g.name == item or str(g.gid) == item]
        if found:
            _valid(found[0], found[0].gid)
            gid = found[0].gid
        else:
            number = _int(item)
            if number is None:
                raise UserError(f"Unable to find group {item}: no matching entries in group file")
            if number < 0 or number > MAX_ID:
                raise UserError(f"Unable to find group {item}: groups must be in range 0-{MAX_ID}")
            gid = number
        if gid not in out:
            out.append(gid)
    return out


def add_groups(user: ExecUser, wanted: list[str], group: str | None) -> None:
    """Add ``--group-add``'s groups to ``user``'s supplementary groups."""
    for gid in additional_groups(wanted, group):
        if gid not in user.sgids:
            user.sgids.append(gid)
