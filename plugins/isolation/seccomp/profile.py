"""Docker's seccomp profile format: parsing, checking, and resolution for one container.

A profile (``docker run --security-opt seccomp=profile.json``, daemon.json
``seccomp-profile``, or the built-in default) is what an operator writes:
rules carry ``includes``/``excludes`` conditions on the container's
capabilities, the host's architecture and kernel.  ``resolve`` applies those
conditions and yields what a runtime installs, in the shape of the OCI
runtime spec's ``linux.seccomp`` (``ContainerSpec.seccomp``).

The rules of the game are dockerd's (20.10): keys match case-insensitively
as Go's ``encoding/json`` does; ``name`` and ``names`` are exclusive, as are
``architectures`` and ``archMap``; a profile with no ``defaultAction`` and no
``syscalls`` means no filter at all; ``includes.caps`` all have to be in the
container's capability set for the rule to apply, any one of
``excludes.caps`` drops it; ``arches`` conditions compare with this host's
architecture in Docker's spelling (``amd64``, ``arm64``...); ``minKernel``
(``"4.8"``) with its kernel version.  Where dockerd accepts a profile and
runc then fails the start (an unknown action or operator, ``SCMP_ACT_NOTIFY``
without an agent), skiff refuses the profile up front, naming the place, and
so it does for a key it does not know rather than ignoring it.  Unknown
syscall *names* are not errors: a profile lists syscalls of many kernels and
architectures, and the compiler skips those this host's libseccomp cannot
name, as runc does.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from skiff.plugins.isolation import capabilities

#: actions a rule or the default may take (libseccomp's names); SCMP_ACT_KILL
#: is SCMP_ACT_KILL_THREAD, as in runc
ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG",
})

#: actions whose ``errnoRet`` means something (the errno, or the tracer's data)
ERRNO_ACTIONS = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"})

OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
    "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
})

#: OCI architecture name -> libseccomp's name for it
ARCHITECTURES: dict[str, str] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_RISCV64": "riscv64",
}

#: the spellings ``includes.arches``/``excludes.arches`` use (dockerd's, from
#: Go's GOARCH; "mips3l64n32" is dockerd's own)
CONDITION_ARCHES = frozenset({
    "x86", "amd64", "x32", "arm", "arm64", "mips", "mipsle", "mipsel", "mips64",
    "mips64n32", "mipsel64", "mipsel64n32", "mips3l64n32", "ppc", "ppc64", "ppc64le",
    "s390", "s390x", "riscv64",
})

#: uname -m -> (Docker's spelling, OCI architecture)
_MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "i386": ("x86", "SCMP_ARCH_X86"),
    "i686": ("x86", "SCMP_ARCH_X86"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "armv8l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "ppc64": ("ppc64", "SCMP_ARCH_PPC64"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "mips64": ("mips64", "SCMP_ARCH_MIPS64"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
}

#: Linux syscalls take at most six arguments
MAX_ARGS = 6
#: the highest errno libseccomp takes for SCMP_ACT_ERRNO (the kernel's
#: MAX_ERRNO is 4095); SCMP_ACT_TRACE passes any 16-bit value to the tracer
MAX_ERRNO = 4094
MAX_TRACE_DATA = 0xFFFF
_U64 = (1 << 64) - 1


class ProfileError(ValueError):
    """A profile skiff cannot use; the message names the place and the fix."""


@dataclass(frozen=True)
class Arg:
    """One argument comparison: ``args[index] <op> value`` (``valueTwo`` for masks)."""

    index: int
    value: int
    value_two: int
    op: str


@dataclass(frozen=True)
class Condition:
    """``includes`` or ``excludes`` of a rule; empty parts do not constrain."""

    caps: tuple[str, ...] = ()  #: ``CAP_`` names
    arches: tuple[str, ...] = ()  #: Docker's spellings (``amd64``)
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[Arg, ...] = ()
    includes: Condition = field(default_factory=Condition)
    excludes: Condition = field(default_factory=Condition)


@dataclass(frozen=True)
class Profile:
    """A parsed profile, before resolution."""

    default_action: str  #: "" only together with no rules: no filter
    rules: tuple[Rule, ...] = ()
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()  #: OCI names, used as given
    #: (architecture, sub-architectures): the entry of this host's
    #: architecture, if any, gives the filter's architectures
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Host:
    """What resolution compares a profile's conditions with."""

    arch: str  #: Docker's spelling of this machine's architecture (``amd64``)
    oci_arch: str  #: the OCI name (``SCMP_ARCH_X86_64``)
    kernel: tuple[int, int]  #: (version, major revision)


_host: Host | None = None


def this_host() -> Host:
    """This machine (read once)."""
    global _host
    if _host is None:
        machine = platform.machine()
        arch, oci = _MACHINES.get(machine, (machine, ""))
        _host = Host(arch=arch, oci_arch=oci, kernel=parse_release(os.uname().release))
    return _host


def parse_release(release: str) -> tuple[int, int]:
    """``6.1.0-18-amd64`` -> (6, 1): dockerd ignores everything after the major revision."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1].split("-")[0] if ch.isdigit()))
    except (IndexError, ValueError):
        raise ProfileError(f"cannot parse the kernel version {release!r}") from None


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def loads(text: str | bytes, source: str = "seccomp profile") -> Profile:
    """Parse a profile's JSON text; ``ProfileError`` naming ``source`` and the place."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProfileError(f"decoding {source} failed: {exc}") from None
    return parse(data, source)


def parse(data: Any, source: str = "seccomp profile") -> Profile:
    """Check a profile's decoded JSON and build the ``Profile``."""
    top = _fields(data, source, {
        "defaultAction": "defaultAction", "defaultErrnoRet": "defaultErrnoRet",
        "architectures": "architectures", "archMap": "archMap", "syscalls": "syscalls",
    }, refused={
        "flags": "seccomp filter flags are not supported by skiff; remove 'flags'",
        "listenerPath": "SCMP_ACT_NOTIFY agents are not supported by skiff; remove "
                        "'listenerPath'",
        "listenerMetadata": "SCMP_ACT_NOTIFY agents are not supported by skiff; remove "
                            "'listenerMetadata'",
    })
    default_action = _string(top.get("defaultAction"), f"{source}: defaultAction")
    rules_raw = _list(top.get("syscalls"), f"{source}: syscalls")
    if default_action == "" and not rules_raw:
        return Profile(default_action="")  # dockerd: no filter at all
    if default_action == "":
        raise ProfileError(
            f"{source}: defaultAction is missing: say what happens to the syscalls no rule "
            "names (usually SCMP_ACT_ERRNO)"
        )
    _action(default_action, f"{source}: defaultAction")
    default_errno = _errno(top.get("defaultErrnoRet"), f"{source}: defaultErrnoRet",
                           default_action)
    if default_errno is not None and default_action not in ERRNO_ACTIONS:
        raise ProfileError(
            f"{source}: defaultErrnoRet is set but defaultAction is {default_action}; "
            "it applies only to SCMP_ACT_ERRNO and SCMP_ACT_TRACE"
        )
    architectures = tuple(
        _arch(a, f"{source}: architectures[{i}]")
        for i, a in enumerate(_list(top.get("architectures"), f"{source}: architectures"))
    )
    arch_map = tuple(
        _arch_entry(e, f"{source}: archMap[{i}]")
        for i, e in enumerate(_list(top.get("archMap"), f"{source}: archMap"))
    )
    if architectures and arch_map:
        raise ProfileError(
            f"{source}: 'architectures' and 'archMap' were both specified; use one of them"
        )
    rules = tuple(_rule(r, f"{source}: syscalls[{i}]") for i, r in enumerate(rules_raw))
    return Profile(
        default_action=default_action, rules=rules, default_errno_ret=default_errno,
        architectures=architectures, arch_map=arch_map,
    )


def _fields(data: Any, where: str, known: Mapping[str, str],
            refused: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An object's members under their canonical names.

    Go matches JSON keys to fields case-insensitively, so dockerd reads
    ``DefaultAction`` as ``defaultAction``; so does skiff.  A key skiff does
    not know is refused: ignoring it could leave a rule its author believes in
    out of the filter.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a JSON object, got {json.dumps(data)[:80]}")
    lower = {k.lower(): v for k, v in known.items()}
    refused_lower = {k.lower(): v for k, v in (refused or {}).items()}
    out: dict[str, Any] = {}
    for key, value in data.items():
        k = key.lower()
        if k in refused_lower:
            raise ProfileError(f"{where}: {refused_lower[k]}")
        if k not in lower:
            raise ProfileError(
                f"{where}: unknown key {key!r} (known: {', '.join(known)})"
            )
        out[lower[k]] = value
    return out


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProfileError(f"{where}: expected a string, got {json.dumps(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProfileError(f"{where}: expected an array, got {json.dumps(value)[:80]}")
    return value


def _uint(value: Any, where: str, limit: int = _U64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ProfileError(
            f"{where}: expected a whole number from 0 to {limit}, got {json.dumps(value)}"
        )
    return value


def _errno(value: Any, where: str, action: str) -> int | None:
    if value is None:
        return None
    return _uint(value, where, MAX_TRACE_DATA if action == "SCMP_ACT_TRACE" else MAX_ERRNO)


def _action(value: Any, where: str) -> str:
    action = _string(value, where)
    if action == "SCMP_ACT_NOTIFY":
        raise ProfileError(
            f"{where}: SCMP_ACT_NOTIFY needs a seccomp agent, which skiff does not support"
        )
    if action not in ACTIONS:
        raise ProfileError(
            f"{where}: {action!r} is not a seccomp action (use one of "
            f"{', '.join(sorted(ACTIONS))})"
        )
    return action


def _arch(value: Any, where: str) -> str:
    arch = _string(value, where)
    if arch not in ARCHITECTURES:
        raise ProfileError(
            f"{where}: {arch!r} is not a seccomp architecture (use one of "
            f"{', '.join(ARCHITECTURES)})"
        )
    return arch


def _arch_entry(value: Any, where: str) -> tuple[str, tuple[str, ...]]:
    entry = _fields(value, where, {"architecture": "architecture",
                                   "subArchitectures": "subArchitectures"})
    arch = _arch(entry.get("architecture"), f"{where}.architecture")
    subs = tuple(
        _arch(s, f"{where}.subArchitectures[{i}]")
        for i, s in enumerate(_list(entry.get("subArchitectures"),
                                    f"{where}.subArchitectures"))
    )
    return arch, subs


def _rule(value: Any, where: str) -> Rule:
    r = _fields(value, where, {
        "name": "name", "names": "names", "action": "action", "errnoRet": "errnoRet",
        "args": "args", "comment": "comment", "includes": "includes", "excludes": "excludes",
    })
    name = _string(r.get("name"), f"{where}.name")
    names = [_string(n, f"{where}.names[{i}]")
             for i, n in enumerate(_list(r.get("names"), f"{where}.names"))]
    if name and names:
        raise ProfileError(f"{where}: 'name' and 'names' were both specified; use one of them")
    if name:
        names = [name]
    for i, n in enumerate(names):
        if not n:
            raise ProfileError(f"{where}.names[{i}]: an empty string is not a syscall name")
    action = _action(r.get("action"), f"{where}.action")
    errno_ret = _errno(r.get("errnoRet"), f"{where}.errnoRet", action)
    if errno_ret is not None and action not in ERRNO_ACTIONS:
        raise ProfileError(
            f"{where}: errnoRet is set but the action is {action}; it applies only to "
            "SCMP_ACT_ERRNO and SCMP_ACT_TRACE"
        )
    args = tuple(_arg(a, f"{where}.args[{i}]")
                 for i, a in enumerate(_list(r.get("args"), f"{where}.args")))
    _string(r.get("comment"), f"{where}.comment")
    return Rule(
        names=tuple(names), action=action, errno_ret=errno_ret, args=args,
        includes=_condition(r.get("includes"), f"{where}.includes"),
        excludes=_condition(r.get("excludes"), f"{where}.excludes"),
    )


def _arg(value: Any, where: str) -> Arg:
    a = _fields(value, where, {"index": "index", "value": "value", "valueTwo": "valueTwo",
                               "op": "op"})
    index = _uint(a.get("index", 0), f"{where}.index", MAX_ARGS - 1)
    op = _string(a.get("op"), f"{where}.op")
    if op not in OPERATORS:
        raise ProfileError(
            f"{where}.op: {op!r} is not a comparison operator (use one of "
            f"{', '.join(sorted(OPERATORS))})"
        )
    return Arg(index=index, value=_uint(a.get("value", 0), f"{where}.value"),
               value_two=_uint(a.get("valueTwo", 0), f"{where}.valueTwo"), op=op)


def _condition(value: Any, where: str) -> Condition:
    c = _fields(value, where, {"caps": "caps", "arches": "arches", "minKernel": "minKernel"})
    caps = []
    for i, cap in enumerate(_list(c.get("caps"), f"{where}.caps")):
        cap = _string(cap, f"{where}.caps[{i}]")
        if cap.removeprefix("CAP_") not in capabilities.CAPABILITIES or \
                not cap.startswith("CAP_"):
            raise ProfileError(
                f"{where}.caps[{i}]: {cap!r} is not a capability (write it as CAP_SYS_ADMIN)"
            )
        caps.append(cap)
    arches = []
    for i, arch in enumerate(_list(c.get("arches"), f"{where}.arches")):
        arch = _string(arch, f"{where}.arches[{i}]")
        if arch not in CONDITION_ARCHES:
            raise ProfileError(
                f"{where}.arches[{i}]: {arch!r} is not an architecture (use Docker's names: "
                f"{', '.join(sorted(CONDITION_ARCHES))})"
            )
        arches.append(arch)
    return Condition(caps=tuple(caps), arches=tuple(arches),
                     min_kernel=_min_kernel(c.get("minKernel"), f"{where}.minKernel"))


def _min_kernel(value: Any, where: str) -> tuple[int, int] | None:
    text = _string(value, where)
    if text == "":
        return None
    parts = text.split(".")
    # dockerd's rule: "<kernel>.<major>", each a number below 256, not 0.0
    if len(parts) != 2 or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise ProfileError(f'{where}: invalid kernel version {text!r}, expected "<kernel>.<major>"')
    version = (int(parts[0]), int(parts[1]))
    if version == (0, 0):
        raise ProfileError(f"{where}: invalid kernel version {text!r}: it cannot be 0.0")
    return version


# ---------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------


def _applies(rule: Rule, caps: frozenset[str], host: Host) -> bool:
    exc, inc = rule.excludes, rule.includes
    if host.arch in exc.arches:
        return False
    if any(c in caps for c in exc.caps):
        return False
    if exc.min_kernel is not None and host.kernel >= exc.min_kernel:
        return False
    if inc.arches and host.arch not in inc.arches:
        return False
    if not all(c in caps for c in inc.caps):
        return False
    return inc.min_kernel is None or host.kernel >= inc.min_kernel


def resolve(profile: Profile, capability_names: Iterable[str],
            host: Host | None = None) -> dict[str, Any] | None:
    """The filter for a container with these capabilities (names without ``CAP_``)
    on ``host`` (this machine by default), OCI-shaped; None for no filter."""
    if profile.default_action == "":
        return None
    host = host or this_host()
    caps = frozenset("CAP_" + c for c in capability_names)
    out: dict[str, Any] = {"defaultAction": profile.default_action}
    if profile.default_errno_ret is not None:
        out["defaultErrnoRet"] = profile.default_errno_ret
    arches = list(profile.architectures)
    for arch, subs in profile.arch_map:
        if arch == host.oci_arch:
            arches = [arch, *subs]
            break
    out["architectures"] = arches
    syscalls = []
    for rule in profile.rules:
        if not _applies(rule, caps, host):
            continue
        entry: dict[str, Any] = {"names": list(rule.names), "action": rule.action}
        if rule.errno_ret is not None:
            entry["errnoRet"] = rule.errno_ret
        entry["args"] = [
            {"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op}
            for a in rule.args
        ]
        syscalls.append(entry)
    out["syscalls"] = syscalls
    return out
