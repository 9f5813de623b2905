"""Seccomp profiles: Docker's format parsed and checked, resolution, compilation.

The compiled programs are run here through a small classic-BPF interpreter,
so what they answer for a syscall (allowed, EPERM, ENOSYS) is checked
without installing them; tests/security/test_seccomp.py installs them in
real containers.
"""

from __future__ import annotations

import errno
import json
import struct
from collections.abc import Mapping
from typing import Any

import pytest

from skiff.plugins.isolation import capabilities, seccomp
from skiff.plugins.isolation.seccomp import compiler, default_profile
from skiff.plugins.isolation.seccomp.profile import (
    Host,
    ProfileError,
    loads,
    parse,
    parse_release,
    resolve,
)

AMD64 = Host(arch="amd64", oci_arch="SCMP_ARCH_X86_64", kernel=(6, 1))
DEFAULT_CAPS = capabilities.DEFAULT_CAPABILITIES

# ---------------------------------------------------------------------------
# A classic BPF interpreter for seccomp programs
# ---------------------------------------------------------------------------

AUDIT_X86_64 = 0xC000003E
AUDIT_I386 = 0x40000003
X32 = 0x40000000
ALLOW = 0x7FFF0000


def run_bpf(program: bytes, nr: int, arch: int = AUDIT_X86_64,
            args: tuple[int, ...] = ()) -> int:
    """The action ``program`` returns for one syscall (struct seccomp_data)."""
    argv = [*args, *([0] * (6 - len(args)))]
    data = struct.pack("=iIQ6Q", nr, arch, 0, *argv)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    a = x = 0
    pc = 0
    mem = [0] * 16
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # BPF_LD
            if code == 0x20:  # W|ABS
                a = struct.unpack_from("=I", data, k)[0]
            elif code == 0x00:  # W|IMM
                a = k
            elif code == 0x60:  # MEM
                a = mem[k]
            else:
                raise AssertionError(f"unhandled load {code:#x}")
        elif cls == 0x01:  # BPF_LDX
            x = mem[k] if code == 0x61 else k
        elif cls == 0x02:  # BPF_ST
            mem[k] = a
        elif cls == 0x03:  # BPF_STX
            mem[k] = x
        elif cls == 0x04:  # BPF_ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            ops = {0x00: a + src, 0x10: a - src, 0x20: a * src, 0x40: a | src,
                   0x50: a & src, 0x60: a << src, 0x70: a >> src, 0x80: -a, 0xA0: a ^ src}
            a = ops[op] & 0xFFFFFFFF
        elif cls == 0x05:  # BPF_JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if taken else jf
        elif cls == 0x06:  # BPF_RET
            return a if code & 0x10 else k
        elif cls == 0x07:  # BPF_MISC
            if code == 0x07:
                x = a
            else:
                a = x
        else:
            raise AssertionError(f"unhandled class {cls}")


def errno_of(action: int) -> int | None:
    """The errno an ERRNO action answers, or None for ALLOW; anything else fails."""
    if action == ALLOW:
        return None
    assert action & 0xFFFF0000 == 0x00050000, hex(action)
    return action & 0xFFFF


def default_program(caps: tuple[str, ...] | list[str] = DEFAULT_CAPS) -> bytes:
    resolved = resolve(seccomp.DEFAULT, caps, AMD64)
    assert resolved is not None
    return compiler.compile_filter(resolved)


# ---------------------------------------------------------------------------
# The default profile
# ---------------------------------------------------------------------------


def names_of(resolved: Mapping[str, Any], action: str = "SCMP_ACT_ALLOW") -> set[str]:
    return {n for s in resolved["syscalls"] if s["action"] == action and not s["args"]
            for n in s["names"]}


def test_default_profile_resolution_follows_capabilities() -> None:
    plain = resolve(seccomp.DEFAULT, DEFAULT_CAPS, AMD64)
    assert plain is not None
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO" and "defaultErrnoRet" not in plain
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = names_of(plain)
    # Docker's default set: chroot comes with SYS_CHROOT, ptrace with kernel >= 4.8
    assert {"read", "chroot", "ptrace", "arch_prctl", "modify_ldt"} <= allowed
    for denied in ("mount", "unshare", "setns", "keyctl", "add_key", "bpf",
                   "perf_event_open", "open_by_handle_at", "io_uring_setup",
                   "io_uring_enter", "io_uring_register", "reboot", "init_module",
                   "clone", "clone3", "sync_file_range2", "s390_runtime_instr"):
        assert denied not in allowed, denied
    clone = [s for s in plain["syscalls"] if s["names"] == ["clone"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]
    clone3 = [s for s in plain["syscalls"] if s["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                       "args": []}]
    personalities = sorted(s["args"][0]["value"] for s in plain["syscalls"]
                           if s["names"] == ["personality"])
    assert personalities == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]

    admin = resolve(seccomp.DEFAULT, [*DEFAULT_CAPS, "SYS_ADMIN"], AMD64)
    assert admin is not None
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf",
            "perf_event_open", "sethostname"} <= names_of(admin)
    assert not [s for s in admin["syscalls"] if s["names"] == ["clone"] and s["args"]]
    assert not [s for s in admin["syscalls"] if s["action"] == "SCMP_ACT_ERRNO"]
    assert "open_by_handle_at" in names_of(
        resolve(seccomp.DEFAULT, ["DAC_READ_SEARCH"], AMD64) or {})
    assert "chroot" not in names_of(resolve(seccomp.DEFAULT, ["CHOWN"], AMD64) or {})


def test_default_profile_other_hosts() -> None:
    old = resolve(seccomp.DEFAULT, DEFAULT_CAPS, Host("amd64", "SCMP_ARCH_X86_64", (4, 4)))
    assert old is not None and "ptrace" not in names_of(old)
    arm = resolve(seccomp.DEFAULT, DEFAULT_CAPS, Host("arm64", "SCMP_ARCH_AARCH64", (6, 1)))
    assert arm is not None
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert {"cacheflush", "set_tls"} <= names_of(arm)
    assert "arch_prctl" not in names_of(arm)
    s390 = resolve(seccomp.DEFAULT, DEFAULT_CAPS, Host("s390x", "SCMP_ARCH_S390X", (6, 1)))
    assert s390 is not None
    assert [s["args"][0]["index"] for s in s390["syscalls"] if s["names"] == ["clone"]] == [1]


def test_default_program_answers_like_docker() -> None:
    program = default_program()

    def answer(nr: int, arch: int = AUDIT_X86_64, *args: int) -> int | None:
        return errno_of(run_bpf(program, nr, arch, args))

    assert answer(0) is None  # read
    assert answer(83) is None  # mkdir
    assert answer(272) == errno.EPERM  # unshare
    assert answer(165) == errno.EPERM  # mount
    assert answer(250) == errno.EPERM  # keyctl
    assert answer(425) == errno.EPERM  # io_uring_setup: skiff's one difference
    assert answer(435) == errno.ENOSYS  # clone3 without CAP_SYS_ADMIN
    # above the newest syscall the profile names (futex_waitv, 449): ENOSYS
    assert answer(449) is None
    assert answer(450) == errno.ENOSYS
    assert answer(1000) == errno.ENOSYS
    # clone: threads and forks yes, new namespaces no
    assert answer(56, AUDIT_X86_64, 0x3D0F00) is None
    assert answer(56, AUDIT_X86_64, 0x10000000 | 17) == errno.EPERM
    # personality: the five values only
    assert answer(135, AUDIT_X86_64, 0x20008) is None
    assert answer(135, AUDIT_X86_64, 0x0040000) == errno.EPERM
    # the 32-bit ABI is filtered too: unshare through int 0x80 is 310
    assert answer(20, AUDIT_I386) is None  # getpid
    assert answer(310, AUDIT_I386) == errno.EPERM
    assert answer(26, AUDIT_I386) is None  # ptrace
    assert answer(450, AUDIT_I386) == errno.ENOSYS
    # and x32: the same numbers with bit 30
    assert answer(X32 | 39) is None
    assert answer(X32 | 272) == errno.EPERM
    assert answer(X32 | 548) == errno.ENOSYS
    # an architecture the filter does not know is killed by libseccomp
    assert run_bpf(program, 0, 0xC00000B7) == 0


def test_default_program_with_capabilities() -> None:
    admin = default_program([*DEFAULT_CAPS, "SYS_ADMIN"])
    assert errno_of(run_bpf(admin, 272)) is None
    assert errno_of(run_bpf(admin, 435)) is None
    assert errno_of(run_bpf(admin, 56, AUDIT_X86_64, (0x10000000 | 17,))) is None
    shocker = default_program([*DEFAULT_CAPS, "DAC_READ_SEARCH"])
    assert errno_of(run_bpf(shocker, 304)) is None  # open_by_handle_at
    assert errno_of(run_bpf(default_program(), 304)) == errno.EPERM


# ---------------------------------------------------------------------------
# Custom profiles: Docker's format
# ---------------------------------------------------------------------------


def test_custom_profile_round_trip() -> None:
    prof = loads(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "comment": "no dirs"},
            {"name": "chmod", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["nosuchcall_skiff"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]},
            {"names": ["reboot"], "action": "SCMP_ACT_ERRNO",
             "includes": {"caps": ["CAP_SYS_BOOT"]}},
            {"names": ["sync"], "action": "SCMP_ACT_ERRNO", "excludes": {"arches": ["amd64"]}},
            {"names": ["syncfs"], "action": "SCMP_ACT_ERRNO",
             "includes": {"minKernel": "99.0"}},
        ],
    }))
    resolved = resolve(prof, DEFAULT_CAPS, AMD64)
    assert resolved == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "args": []},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": []},
            {"names": ["nosuchcall_skiff"], "action": "SCMP_ACT_ERRNO", "args": []},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        ],
    }
    program = compiler.compile_filter(resolved)
    assert errno_of(run_bpf(program, 83)) == errno.EPERM  # mkdir
    assert errno_of(run_bpf(program, 90)) == errno.EACCES  # chmod, errnoRet
    assert errno_of(run_bpf(program, 41, AUDIT_X86_64, (40,))) == errno.EPERM  # AF_VSOCK
    assert errno_of(run_bpf(program, 41, AUDIT_X86_64, (2,))) is None
    assert errno_of(run_bpf(program, 272)) is None
    # a default of ALLOW: no ENOSYS prologue, new syscalls pass
    assert errno_of(run_bpf(program, 1000)) is None


def test_go_json_rules() -> None:
    # keys match case-insensitively, as Go's encoding/json does for dockerd
    prof = parse({"DefaultAction": "SCMP_ACT_ERRNO", "Syscalls": [
        {"NAMES": ["read"], "Action": "SCMP_ACT_ALLOW", "ARGS": None}]})
    assert prof.default_action == "SCMP_ACT_ERRNO"
    assert prof.rules[0].names == ("read",)
    # no default action and no rules: no filter at all, as in dockerd
    assert resolve(parse({}), DEFAULT_CAPS, AMD64) is None
    assert resolve(parse({"syscalls": []}), DEFAULT_CAPS, AMD64) is None


def test_arch_map_and_multiple_conditions_on_one_argument() -> None:
    prof = parse({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"},
            # two conditions on argument 0: runc's reading is "either"
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            # on different arguments: both
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]},
        ],
    })
    resolved = resolve(prof, [], AMD64)
    assert resolved is not None
    assert resolved["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert resolved["defaultErrnoRet"] == 1
    program = compiler.compile_filter(resolved)
    assert errno_of(run_bpf(program, 135, AUDIT_X86_64, (8,))) is None
    assert errno_of(run_bpf(program, 135, AUDIT_X86_64, (0,))) is None
    assert errno_of(run_bpf(program, 135, AUDIT_X86_64, (1,))) == errno.EPERM
    assert errno_of(run_bpf(program, 62, AUDIT_X86_64, (1, 15))) is None
    assert errno_of(run_bpf(program, 62, AUDIT_X86_64, (1, 9))) == errno.EPERM
    assert errno_of(run_bpf(program, 62, AUDIT_X86_64, (2, 15))) == errno.EPERM
    # x32 is not in this filter: libseccomp kills its calls as a bad architecture
    assert run_bpf(program, X32 | 39) == 0
    assert errno_of(run_bpf(program, 20, AUDIT_I386)) is None


@pytest.mark.parametrize(("profile", "message"), [
    ({"defaultAction": "SCMP_ACT_FOO", "syscalls": []},
     r"defaultAction: 'SCMP_ACT_FOO' is not a seccomp action"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
     "defaultAction is missing"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "ALLOW"}]},
     r"syscalls\[0\].action: 'ALLOW' is not a seccomp action"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]},
     "'name' and 'names' were both specified"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
      "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]},
     "'architectures' and 'archMap' were both specified"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["x86_64"]},
     r"architectures\[0\]: 'x86_64' is not a seccomp architecture"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"],
      "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     r"args\[0\].index: expected a whole number from 0 to 5"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"],
      "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]},
     r"args\[0\].value: expected a whole number"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"],
      "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "=="}]}]},
     r"args\[0\].op: '==' is not a comparison operator"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"],
      "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]},
     "errnoRet is set but the action is SCMP_ACT_ALLOW"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 4095},
     "defaultErrnoRet: expected a whole number from 0 to 4094"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mount"],
      "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["SYS_ADMIN"]}}]},
     r"includes.caps\[0\]: 'SYS_ADMIN' is not a capability \(write it as CAP_SYS_ADMIN\)"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mount"],
      "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["x86_64"]}}]},
     r"excludes.arches\[0\]: 'x86_64' is not an architecture"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mount"],
      "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4"}}]},
     r"includes.minKernel: invalid kernel version '4'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mount"],
      "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "0.0"}}]},
     "cannot be 0.0"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
      "action": "SCMP_ACT_NOTIFY"}]},
     "SCMP_ACT_NOTIFY needs a seccomp agent"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock"},
     "SCMP_ACT_NOTIFY agents are not supported"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_LOG"]},
     "seccomp filter flags are not supported"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscall": []},
     "unknown key 'syscall'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
      "action": "SCMP_ACT_ALLOW", "arg": []}]},
     r"syscalls\[0\]: unknown key 'arg'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {"names": ["read"]}},
     "syscalls: expected an array"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [""],
      "action": "SCMP_ACT_ALLOW"}]},
     "an empty string is not a syscall name"),
    ([], "expected a JSON object"),
])
def test_broken_profiles_are_refused(profile: Any, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse(profile)
    # the create hook's check turns it into a ValueError (a 400)
    with pytest.raises(ValueError, match=message):
        seccomp.check_request(json.dumps(profile))


def test_not_json() -> None:
    with pytest.raises(ProfileError, match="decoding seccomp profile failed"):
        loads("{not json")


def test_parse_release() -> None:
    assert parse_release("6.1.0-18-amd64") == (6, 1)
    assert parse_release("3.12-1-amd64") == (3, 12)
    assert parse_release("4.9.0-rc5") == (4, 9)
    assert parse_release("6.18.44-fc-v1252") == (6, 18)


# ---------------------------------------------------------------------------
# Which profile a container gets
# ---------------------------------------------------------------------------


def test_profile_for() -> None:
    default = seccomp.profile_for("", {}, DEFAULT_CAPS)
    assert default is not None and default["defaultAction"] == "SCMP_ACT_ERRNO"
    assert seccomp.profile_for("builtin", {"seccomp-profile": "unconfined"}, DEFAULT_CAPS) \
        == default
    assert seccomp.profile_for("unconfined", {}, DEFAULT_CAPS) is None
    assert seccomp.profile_for("", {"seccomp-profile": "unconfined"}, DEFAULT_CAPS) is None
    custom = json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                         "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]})
    assert seccomp.profile_for(custom, {}, DEFAULT_CAPS) == {
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": [],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": []}]}
    for ok in ("", "unconfined", "builtin", custom):
        seccomp.check_request(ok)


def test_daemon_profile_file(tmp_path: Any) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}))
    config = {"seccomp-profile": str(path)}
    seccomp.check_daemon_config(config)
    # read once, when the daemon starts: a later change does not count
    path.write_text("garbage")
    resolved = seccomp.profile_for("", config, DEFAULT_CAPS)
    assert resolved is not None and resolved["defaultAction"] == "SCMP_ACT_ALLOW"
    assert seccomp.security_options(config) == [f"name=seccomp,profile={path}"]
    assert seccomp.security_options({}) == ["name=seccomp,profile=default"]
    assert seccomp.security_options({"seccomp-profile": "builtin"}) == \
        ["name=seccomp,profile=default"]
    assert seccomp.security_options({"seccomp-profile": "unconfined"}) == []
    with pytest.raises(ValueError, match=r"decoding seccomp-profile .*profile.json failed"):
        seccomp.check_daemon_config(config)
    with pytest.raises(ValueError, match=r"cannot read .*missing.json: No such file"):
        seccomp.check_daemon_config({"seccomp-profile": str(tmp_path / "missing.json")})
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_KILL_ME"}))
    with pytest.raises(ValueError, match="not a seccomp action"):
        seccomp.check_daemon_config(config)
    for fine in ("", "builtin", "unconfined"):
        seccomp.check_daemon_config({"seccomp-profile": fine})


# ---------------------------------------------------------------------------
# Compilation and its cache
# ---------------------------------------------------------------------------


def test_unknown_names_are_skipped_and_same_action_rules_dropped() -> None:
    resolved = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": ["getpid", "no_such_syscall_at_all"], "action": "SCMP_ACT_ALLOW",
                     "args": []},
                    {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": []}]}
    program = compiler.compile_filter(resolved)
    assert errno_of(run_bpf(program, 39)) is None
    assert errno_of(run_bpf(program, 83)) == errno.EPERM
    # the highest syscall named is mkdir (83): everything above is ENOSYS
    assert errno_of(run_bpf(program, 84)) == errno.ENOSYS


def test_enosys_prologue_only_when_something_is_refused() -> None:
    base = {"architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "args": []}]}
    for default in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"):
        assert compiler.enosys_prologue({**base, "defaultAction": default}) == b""
    assert compiler.enosys_prologue({**base, "defaultAction": "SCMP_ACT_ERRNO",
                                     "defaultErrnoRet": errno.ENOSYS}) == b""
    assert compiler.enosys_prologue({**base, "defaultAction": "SCMP_ACT_KILL_PROCESS"})
    # without architectures, runc adds none either
    assert compiler.enosys_prologue({**base, "architectures": [],
                                     "defaultAction": "SCMP_ACT_ERRNO"}) == b""


def test_kill_default_and_trap() -> None:
    resolved = {"defaultAction": "SCMP_ACT_KILL_PROCESS", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "args": []},
                             {"names": ["getppid"], "action": "SCMP_ACT_TRAP", "args": []}]}
    program = compiler.compile_filter(resolved)
    assert run_bpf(program, 39) == ALLOW
    assert run_bpf(program, 110) == 0x00030000
    assert run_bpf(program, 60) == 0x80000000
    assert errno_of(run_bpf(program, 200)) == errno.ENOSYS


def test_filter_cache_compiles_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = compiler.FilterCache(size=2)
    calls: list[int] = []
    real = compiler.compile_filter

    def counting(resolved: Mapping[str, Any]) -> bytes:
        calls.append(1)
        return real(resolved)

    monkeypatch.setattr(compiler, "compile_filter", counting)
    resolved = seccomp.profile_for("", {}, DEFAULT_CAPS)
    assert resolved is not None
    first = cache.compile(resolved)
    # an equal filter (another container, same capabilities): no compile
    again = cache.compile(json.loads(json.dumps(resolved)))
    assert again is first and len(calls) == 1
    assert cache.get(cache.key(resolved)) is first
    # bounded: the least recently used goes
    cache.compile(seccomp.profile_for("", {}, ["SYS_ADMIN"]) or {})
    cache.compile(seccomp.profile_for("", {}, ["CHOWN"]) or {})
    assert cache.get(cache.key(resolved)) is None and len(calls) == 3


def test_profiles_libseccomp_refuses_are_refused_at_create() -> None:
    # two actions for one syscall on the same condition: libseccomp says EEXIST
    same = {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}
    profile = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [same]},
        {"names": ["read"], "action": "SCMP_ACT_TRAP", "args": [same]}]})
    with pytest.raises(ValueError, match="adding the SCMP_ACT_TRAP rule for read: File exists"):
        seccomp.check_request(profile, DEFAULT_CAPS)


def test_default_names_are_known_syscalls() -> None:
    # every name of the built-in profile is one libseccomp knows on some
    # architecture: a typo would silently allow nothing
    lib = compiler.lib
    tokens = [lib.seccomp_arch_resolve_name(a.encode()) for a in
              ("x86_64", "x86", "x32", "aarch64", "arm", "s390x", "ppc64le", "mips64")]
    prof = default_profile.profile()
    for rule in prof.rules:
        for name in rule.names:
            assert any(lib.seccomp_syscall_resolve_name_arch(t, name.encode()) != -1
                       for t in tokens), name


def test_daemon_start_compiles_the_default_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    # the first default container after a start finds its program compiled
    monkeypatch.setattr(seccomp, "FILTERS", compiler.FilterCache())
    seccomp.check_daemon_config({})
    caps = capabilities.tweak(capabilities.DEFAULT_CAPABILITIES, None, None, False)
    resolved = seccomp.profile_for("", {}, caps)
    assert resolved is not None
    assert seccomp.FILTERS.get(seccomp.FILTERS.key(resolved)) is not None
