"""Device cgroup rules: Docker's allow-list, HostConfig's additions, their meaning.

A rule is a line of the v1 devices cgroup (``c 1:3 rwm``): a type (``a``
all, ``b`` block, ``c`` character), major and minor numbers or ``*``, an
access (a subset of ``r`` read, ``w`` write, ``m`` mknod), allowed or denied.
A container's list (:func:`container_rules`) is what Docker 20.10 gives
runc, in runc's order:

1. moby's defaults (``oci/defaults.go``): deny everything, then allow
   ``/dev/zero``, ``null``, ``urandom``, ``random``, ``tty``, ``console``;
   deny ``/dev/fuse`` (10:229), so it is only there when asked for;
2. one rule per node of ``HostConfig.Devices`` with its ``CgroupPermissions``;
3. ``HostConfig.DeviceCgroupRules`` (``--device-cgroup-rule``), all allows;
4. runc 1.1's ``AllowedDevices``, appended last: mknod of any node, ``null``,
   ``random``, ``full``, ``tty``, ``zero``, ``urandom``, ``/dev/pts/*``,
   ``ptmx`` and ``/dev/net/tun``.

``--privileged`` is the single rule ``a`` (allow all).

On cgroup v1 the kernel applies the lines in order.  cgroup v2 has no such
files: :func:`effective` replays the lines the way the v1 kernel does
(``security/device_cgroup.c``) and the eBPF program of ``device_filter``
decides from the result, so a list means the same on both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from skiff.core import hostdevices
from skiff.core.hookspecs import Resources

#: access bits, the kernel's values (DEVCG_ACC_* and BPF_DEVCG_ACC_*)
MKNOD, READ, WRITE = 1, 2, 4
ALL_ACCESS = MKNOD | READ | WRITE
_ACCESS_BITS = {"m": MKNOD, "r": READ, "w": WRITE}

#: the largest numbers a Linux dev_t holds (12-bit major, 20-bit minor)
MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1

# moby's regular expression for --device-cgroup-rule, to accept what Docker does
_RULE = re.compile(r"^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})$")


class Rule(NamedTuple):
    """One devices cgroup rule."""

    allow: bool
    type: str  #: ``a``, ``b`` or ``c``
    major: int | None  #: None: any (``*``)
    minor: int | None  #: None: any (``*``)
    access: int  #: MKNOD | READ | WRITE bits

    def line(self) -> str:
        """The rule as written to ``devices.allow``/``devices.deny``."""
        if self.type == "a":
            return "a"  # the kernel ignores numbers and access for "all"
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.type} {major}:{minor} {access_text(self.access)}"


def access_text(access: int) -> str:
    return "".join(c for c in "rwm" if access & _ACCESS_BITS[c])


def _access(text: str) -> int:
    bits = 0
    for c in text:
        bits |= _ACCESS_BITS[c]
    return bits


def _allow(kind: str, major: int | None, minor: int | None, access: str = "rwm") -> Rule:
    return Rule(True, kind, major, minor, _access(access))


#: moby 20.10 oci/defaults.go, in its order
MOBY_DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(False, "a", None, None, ALL_ACCESS),
    _allow("c", 1, 5),  # /dev/zero
    _allow("c", 1, 3),  # /dev/null
    _allow("c", 1, 9),  # /dev/urandom
    _allow("c", 1, 8),  # /dev/random
    _allow("c", 5, 0),  # /dev/tty
    _allow("c", 5, 1),  # /dev/console
    Rule(False, "c", 10, 229, ALL_ACCESS),  # /dev/fuse: only with --device
)

#: runc 1.1 specconv.AllowedDevices, appended after everything else
RUNC_DEFAULT_RULES: tuple[Rule, ...] = (
    _allow("c", None, None, "m"),  # mknod of any character device
    _allow("b", None, None, "m"),  # and any block device (opening is another matter)
    _allow("c", 1, 3),  # /dev/null
    _allow("c", 1, 8),  # /dev/random
    _allow("c", 1, 7),  # /dev/full
    _allow("c", 5, 0),  # /dev/tty
    _allow("c", 1, 5),  # /dev/zero
    _allow("c", 1, 9),  # /dev/urandom
    _allow("c", 136, None),  # /dev/pts/*
    _allow("c", 5, 2),  # /dev/ptmx
    _allow("c", 10, 200),  # /dev/net/tun
)

#: ``--privileged``: every device, no filter
PRIVILEGED_RULES: tuple[Rule, ...] = (Rule(True, "a", None, None, ALL_ACCESS),)


def _number(text: str, limit: int, what: str, rule: str) -> int | None:
    if text == "*":
        return None
    value = int(text)
    if value > limit:
        raise ValueError(
            f"invalid {what} number {value} in device cgroup rule '{rule}': Linux "
            f"{what} numbers go up to {limit}"
        )
    return value


def parse_rule(text: Any) -> Rule:
    """One ``--device-cgroup-rule`` (an allow rule); ``ValueError`` in Docker's
    words, with what a good one looks like."""
    m = _RULE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"invalid device cgroup rule format: '{text}': expected TYPE MAJOR:MINOR "
            "ACCESS with TYPE a, b or c, numbers or *, ACCESS made of r, w and m, "
            "e.g. 'c 1:3 rwm' or 'b 7:* r'"
        )
    kind, major, minor, access = m.groups()
    return Rule(True, kind, _number(major, MAX_MAJOR, "major", text),
                _number(minor, MAX_MINOR, "minor", text), _access(access))


def check(resources: Resources) -> None:
    """Refuse a malformed ``DeviceCgroupRules``; does not read the host."""
    for rule in resources.device_cgroup_rules:
        parse_rule(rule)


def container_rules(resources: Resources) -> list[Rule]:
    """The container's rules, in the order the v1 kernel applies them.

    Reads ``Devices`` from the host (``ValueError`` when one is missing).
    """
    if resources.privileged:
        return list(PRIVILEGED_RULES)
    rules = list(MOBY_DEFAULT_RULES)
    for mapping in resources.devices:
        for node in hostdevices.devices_from_path(mapping.path_on_host,
                                                  mapping.path_in_container):
            rules.append(Rule(True, node.type, node.major, node.minor,
                              _access(mapping.cgroup_permissions)))
    rules.extend(parse_rule(r) for r in resources.device_cgroup_rules)
    rules.extend(RUNC_DEFAULT_RULES)
    return rules


class DevException(NamedTuple):
    """An entry of the kernel's exception list (``struct dev_exception_item``)."""

    type: str  #: ``b`` or ``c``
    major: int | None
    minor: int | None
    access: int


def effective(rules: Iterable[Rule]) -> tuple[bool, list[DevException]]:
    """``(default_allow, exceptions)`` after applying ``rules`` in order to a
    fresh group under an unrestricted parent (everything allowed, no
    exceptions), as the v1 kernel does (``devcgroup_update_access``):

    * ``a`` resets: everything allowed (or denied), no exceptions;
    * a rule going the default's way removes those access bits from the
      exception with exactly the same type and numbers (no overlap logic);
    * a rule against the default adds its bits to the exception with exactly
      the same type and numbers, or appends a new one.

    With ``default_allow`` False an access is allowed when one exception
    matches it whole; with True it is denied when any exception shares a bit.
    """
    default_allow = True
    exceptions: list[DevException] = []
    for rule in rules:
        if rule.type == "a":
            default_allow = rule.allow
            exceptions = []
            continue
        key = (rule.type, rule.major, rule.minor)
        index = next((i for i, e in enumerate(exceptions) if (e.type, e.major, e.minor) == key),
                     None)
        if rule.allow == default_allow:
            if index is not None:
                left = exceptions[index].access & ~rule.access
                if left:
                    exceptions[index] = exceptions[index]._replace(access=left)
                else:
                    del exceptions[index]
        elif index is not None:
            exceptions[index] = exceptions[index]._replace(
                access=exceptions[index].access | rule.access)
        else:
            exceptions.append(DevException(rule.type, rule.major, rule.minor, rule.access))
    return default_allow, exceptions


def allows(default_allow: bool, exceptions: Sequence[DevException], kind: str, major: int,
           minor: int, access: int) -> bool:
    """Whether the v1 kernel would let ``access`` to device ``kind major:minor`` pass;
    the reference the eBPF program is tested against."""
    for e in exceptions:
        if e.type != kind:
            continue
        if e.major is not None and e.major != major:
            continue
        if e.minor is not None and e.minor != minor:
            continue
        if default_allow and access & e.access:
            return False
        if not default_allow and not access & ~e.access:
            return True
    return default_allow
