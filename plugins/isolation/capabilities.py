"""Linux capability names and bits, and Docker's rules for choosing a set.

Imported by the container init inside the fork server, so it must stay free of
heavy imports (no pluggy, no trio).
"""

from __future__ import annotations

from collections.abc import Iterable

#: capability name (without ``CAP_``) -> bit number, from <linux/capability.h>
CAPABILITIES: dict[str, int] = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "MKNOD": 27,
    "LEASE": 28,
    "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}

#: Docker's default capability set (moby oci/caps/defaults.go), mask 0xa80425fb.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)


class UnknownCapability(ValueError):
    """A capability name that Linux does not define."""


def normalize(name: str) -> str:
    """``cap_net_admin``, ``NET_ADMIN`` and ``CAP_NET_ADMIN`` all mean ``NET_ADMIN``;
    ``all`` means ``ALL``.  Unknown names raise ``UnknownCapability``."""
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    bare = upper.removeprefix("CAP_")
    if bare not in CAPABILITIES:
        # Docker's wording, so scripts matching on it keep working
        raise UnknownCapability(f'unknown capability: "CAP_{bare}"')
    return bare


def to_mask(names: Iterable[str]) -> int:
    """Bit mask of capability names (``ALL`` allowed)."""
    mask = 0
    for name in names:
        bare = normalize(name)
        if bare == "ALL":
            mask |= all_mask()
        else:
            mask |= 1 << CAPABILITIES[bare]
    return mask


def all_mask() -> int:
    return sum(1 << bit for bit in CAPABILITIES.values())


def from_mask(mask: int) -> list[str]:
    """Capability names of a mask, in bit order."""
    return [name for name, bit in CAPABILITIES.items() if mask & (1 << bit)]


def tweak(
    basics: Iterable[str],
    adds: Iterable[str] | None,
    drops: Iterable[str] | None,
    privileged: bool,
) -> list[str]:
    """Docker's ``TweakCapabilities``: the set a container gets.

    Privileged containers get every capability.  ``ALL`` in ``adds`` means every
    capability except the dropped ones; ``ALL`` in ``drops`` means exactly the
    added ones; otherwise ``basics`` minus ``drops`` plus ``adds``.
    """
    if privileged:
        return list(CAPABILITIES)
    add = [normalize(c) for c in adds or []]
    drop = [normalize(c) for c in drops or []]
    base = [normalize(c) for c in basics]
    if "ALL" in add:
        caps = [c for c in CAPABILITIES if c not in drop]
    elif "ALL" in drop:
        caps = [c for c in add if c != "ALL"]
    else:
        caps = [c for c in base if c not in drop] + add
    # order by bit and without duplicates, so the spec is stable
    return from_mask(to_mask(caps))
