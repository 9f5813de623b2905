"""A resolved filter (OCI ``linux.seccomp``) to the BPF program the init installs.

libseccomp does the compiling, called the way runc 1.1 calls it (so a
profile means the same program under skiff as under dockerd): the default
action, every architecture of the profile, no ``no_new_privs`` on load (the
init decides that), one rule per syscall name, names this host's libseccomp
does not know skipped, a rule whose action is the default's skipped, and the
conditions of a rule added together unless two of them test the same
argument, in which case each gets a rule of its own (an OR, runc's
long-standing reading).

One deliberate difference from runc: libseccomp is asked for its binary
tree layout (SCMP_FLTATR_CTL_OPTIMIZE 2) rather than a linear chain of
syscall comparisons.  The rules and so the answers are the same; what
changes is the cost.  At install the kernel runs the program once per
syscall number to find those it can allow without running it again (the
seccomp action cache, Linux 5.11): over Docker's 350-odd syscalls that is
1.1 ms for the chain and 0.35 ms for the tree here (median of 400 installs
each, interleaved), and a syscall the cache cannot answer (clone, whose
flags are filtered) walks a few dozen instructions instead of hundreds.

Then runc's ENOSYS prologue goes in front of libseccomp's program: per
architecture, a syscall numbered above the highest one the profile names
answers ENOSYS instead of the default EPERM, so a libc that tries a syscall
newer than the profile (clone3, faccessat2 when they were new) falls back
to the old one instead of failing.  libseccomp has no rule for "every
number above N", hence the few hand-assembled instructions; they only ever
jump forward, into the ENOSYS return or to the start of libseccomp's
program, which relocates unchanged because classic BPF jumps are relative.

Compiling the default profile takes milliseconds; ``FilterCache`` keeps each
distinct filter's program, so the start path of a container does no
libseccomp work once its filter was seen.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

# an extension module cffi builds at install time: no source for mypy to read
from skiff.plugins.isolation.seccomp._libseccomp import ffi, lib  # type: ignore[import-not-found]
from skiff.plugins.isolation.seccomp.profile import ARCHITECTURES

#: libseccomp's action values (<seccomp.h>)
_ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}

#: defaults under which runc adds no ENOSYS prologue: nothing is refused
#: (a tracer, runc says, should see new syscalls itself)
_PERMISSIVE = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"})

_OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": lib.SCMP_CMP_NE,
    "SCMP_CMP_LT": lib.SCMP_CMP_LT,
    "SCMP_CMP_LE": lib.SCMP_CMP_LE,
    "SCMP_CMP_EQ": lib.SCMP_CMP_EQ,
    "SCMP_CMP_GE": lib.SCMP_CMP_GE,
    "SCMP_CMP_GT": lib.SCMP_CMP_GT,
    "SCMP_CMP_MASKED_EQ": lib.SCMP_CMP_MASKED_EQ,
}

#: struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}, host byte order as
#: seccomp_export_bpf writes it
_INSN = struct.Struct("=HBBI")
#: the kernel's BPF_MAXINSNS
MAX_INSNS = 4096

# classic BPF opcodes of the prologue
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JA = 0x05  # BPF_JMP | BPF_JA
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGT = 0x25  # BPF_JMP | BPF_JGT | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

#: offsets in struct seccomp_data
_NR, _ARCH = 0, 4
#: x32 syscalls are x86_64's with this bit set in the number
_X32_BIT = 0x40000000


class CompileError(Exception):
    """libseccomp refused the filter; the message says where."""


def _action(name: str, errno_ret: int | None) -> int:
    value = _ACTIONS[name]
    if name == "SCMP_ACT_ERRNO":
        return value | (errno.EPERM if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_TRACE":
        return value | (errno.EPERM if errno_ret is None else errno_ret)
    return value


def _arch_token(arch: str) -> int:
    token = lib.seccomp_arch_resolve_name(ARCHITECTURES[arch].encode())
    if token == 0:
        raise CompileError(f"this libseccomp does not know the architecture {arch}")
    return int(token)


def _fail(what: str, rc: int) -> CompileError:
    return CompileError(f"{what}: {os.strerror(-rc)}")


def compile_filter(resolved: Mapping[str, Any]) -> bytes:
    """The BPF program (``struct sock_filter`` array, host order) of a resolved filter."""
    default = _action(resolved["defaultAction"], resolved.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if ctx == ffi.NULL:
        raise CompileError(f"libseccomp refused the default action {resolved['defaultAction']}")
    try:
        for arch in resolved.get("architectures") or []:
            rc = lib.seccomp_arch_add(ctx, _arch_token(arch))
            if rc not in (0, -errno.EEXIST):
                raise _fail(f"adding architecture {arch}", rc)
        rc = lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_CTL_NNP, 0)
        if rc != 0:
            raise _fail("clearing the no_new_privs attribute", rc)
        # a binary search over syscall numbers instead of runc's linear chain
        # (same rules, same answers); a libseccomp without it keeps the chain
        lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_CTL_OPTIMIZE, 2)
        for entry in resolved.get("syscalls") or []:
            _add_rules(ctx, entry, default)
        program = _export(ctx)
    finally:
        lib.seccomp_release(ctx)
    program = enosys_prologue(resolved) + program
    if len(program) // _INSN.size > MAX_INSNS:
        raise CompileError(
            f"the filter compiles to {len(program) // _INSN.size} BPF instructions; the "
            f"kernel takes at most {MAX_INSNS}"
        )
    return program


def _add_rules(ctx: Any, entry: Mapping[str, Any], default: int) -> None:
    action = _action(entry["action"], entry.get("errnoRet"))
    if action == default:
        return  # libseccomp refuses a rule that changes nothing
    args = entry.get("args") or []
    indexes = [a["index"] for a in args]
    if len(set(indexes)) == len(indexes):
        groups = [args] if args else [[]]
    else:
        groups = [[a] for a in args]
    for name in entry["names"]:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == lib.__NR_SCMP_ERROR:
            continue  # not a syscall this libseccomp knows: runc skips it too
        for group in groups:
            cmps = ffi.new("struct scmp_arg_cmp[]", max(len(group), 1))
            for i, a in enumerate(group):
                cmps[i].arg = a["index"]
                cmps[i].op = _OPERATORS[a["op"]]
                cmps[i].datum_a = a["value"]
                cmps[i].datum_b = a.get("valueTwo", 0)
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(group), cmps)
            if rc != 0:
                raise _fail(f"adding the {entry['action']} rule for {name}", rc)


def _export(ctx: Any) -> bytes:
    fd = os.memfd_create("skiff-seccomp", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc != 0:
            raise _fail("exporting the BPF program", rc)
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _audit_arch(token: int) -> int:
    # x32 shares x86_64's AUDIT_ARCH; libseccomp's token for it is its own
    return int(lib.SCMP_ARCH_X86_64) if token == lib.SCMP_ARCH_X32 else token


def highest_syscalls(resolved: Mapping[str, Any]) -> dict[int, dict[int, int]]:
    """AUDIT_ARCH -> {libseccomp arch token: highest syscall number the filter names}."""
    out: dict[int, dict[int, int]] = {}
    names = {n for entry in resolved.get("syscalls") or [] for n in entry["names"]}
    for arch in resolved.get("architectures") or []:
        token = _arch_token(arch)
        numbers = [lib.seccomp_syscall_resolve_name_arch(token, n.encode()) for n in names]
        top = max((n for n in numbers if n > 0), default=0)
        if top:
            out.setdefault(_audit_arch(token), {})[token] = top
    return out


def enosys_prologue(resolved: Mapping[str, Any]) -> bytes:
    """The instructions that answer ENOSYS above the highest named syscall."""
    if resolved["defaultAction"] in _PERMISSIVE:
        return b""
    if resolved["defaultAction"] == "SCMP_ACT_ERRNO" and \
            resolved.get("defaultErrnoRet") == errno.ENOSYS:
        return b""  # the default says ENOSYS already
    highest = highest_syscalls(resolved)
    if not highest:
        return b""
    # (opcode, true target or None, false target or None, k); targets are labels
    code: list[tuple[int, str | None, str | None, int]] = [(_LD_W_ABS, None, None, _ARCH)]
    code += [(_JEQ, f"arch{audit}", None, audit) for audit in highest]
    code.append((_JA, "filter", None, 0))
    labels: dict[str, int] = {}
    for audit, tops in highest.items():
        labels[f"arch{audit}"] = len(code)
        code.append((_LD_W_ABS, None, None, _NR))
        x64 = tops.get(int(lib.SCMP_ARCH_X86_64))
        x32 = tops.get(int(lib.SCMP_ARCH_X32))
        if audit == lib.SCMP_ARCH_X86_64 and x64 and x32:
            code.append((_JSET, f"x32_{audit}", None, _X32_BIT))
            code.append((_JGT, "enosys", "filter", x64))
            labels[f"x32_{audit}"] = len(code)
            code.append((_JGT, "enosys", "filter", x32))
        elif audit == lib.SCMP_ARCH_X86_64:
            # only one of the two ABIs is filtered: the other's numbers go on
            if x64:
                code.append((_JSET, "filter", None, _X32_BIT))
            else:
                code.append((_JSET, None, "filter", _X32_BIT))
            code.append((_JGT, "enosys", "filter", x64 or x32 or 0))
        else:
            (top,) = tops.values()
            code.append((_JGT, "enosys", "filter", top))
    labels["enosys"] = len(code)
    code.append((_RET, None, None, _action("SCMP_ACT_ERRNO", errno.ENOSYS)))
    labels["filter"] = len(code)

    out = bytearray()
    for i, (op, true, false, k) in enumerate(code):
        if op == _JA:
            out += _INSN.pack(op, 0, 0, labels[true or ""] - i - 1)
            continue
        jt = labels[true] - i - 1 if true else 0
        jf = labels[false] - i - 1 if false else 0
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise CompileError("the ENOSYS prologue needs a jump longer than BPF allows")
        out += _INSN.pack(op, jt, jf, k)
    return bytes(out)


class FilterCache:
    """Compiled programs by filter, so a filter is compiled once per daemon.

    Keyed by the filter's canonical JSON; bounded (least recently used goes)
    because each distinct custom profile adds an entry.  Thread-safe:
    ``compile`` runs in a worker thread.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._programs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(resolved: Mapping[str, Any]) -> str:
        return json.dumps(resolved, sort_keys=True, separators=(",", ":"))

    def get(self, key: str) -> bytes | None:
        with self._lock:
            program = self._programs.get(key)
            if program is not None:
                self._programs.move_to_end(key)
            return program

    def compile(self, resolved: Mapping[str, Any], key: str | None = None) -> bytes:
        """The program, compiled now unless cached; ``CompileError`` if libseccomp refuses."""
        key = key or self.key(resolved)
        program = self.get(key)
        if program is None:
            program = compile_filter(resolved)
            with self._lock:
                self._programs[key] = program
                while len(self._programs) > self.size:
                    self._programs.popitem(last=False)
        return program
