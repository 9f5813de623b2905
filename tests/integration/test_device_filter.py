"""The cgroup v2 device filter in the real kernel, against the v1 kernel's verdicts.

The eBPF program must decide exactly as the v1 devices cgroup does on the
same rule list (that is what makes a container's devices the same on v1 and
v2).  These tests load the programs with bpf(2), attach them to a cgroup2
group (the unified mount of a hybrid host like this one, or the VM rig's
pure v2 root), run a probe process inside it that mknods and opens device
nodes, and compare what the kernel let through with
``device_rules.allows``; where a v1 devices hierarchy is mounted, a second
probe in a v1 group holding the same rules must agree too.

The probe makes nodes on a tmpfs of its own (mount namespace) and only
opens devices harmless to open: null, zero, full and numbers no driver
owns (the kernel answers ENXIO/ENODEV once the filter let the open pass);
EPERM is the filter's refusal.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skiff.core.containers.limits import resources_from
from skiff.plugins.limits import device_filter
from skiff.plugins.limits import device_rules as dr
from skiff.plugins.limits._bpf import lib  # type: ignore[import-not-found]
from skiff.plugins.limits.cgroupfs_base import CGROUP_ROOT
from skiff.plugins.limits.cgroupfs_v2 import CgroupfsV2
from skiff.plugins.limits.device_rules import MKNOD, READ, WRITE, Rule

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bpf and cgroups")

#: devices probed: (type, major, minor); 4000-4001 have no driver
PROBES: tuple[tuple[str, int, int], ...] = (
    ("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 4000, 1), ("c", 4000, 2), ("c", 4001, 1),
    ("b", 4000, 1), ("b", 4001, 2),
)
#: accesses probed: mknod, open for read, write, read+write
ACCESSES = (("m", MKNOD), ("r", READ), ("w", WRITE), ("rw", READ | WRITE))

# made before the probe joins the group: the nodes to open (mknod could be
# denied inside); then, inside, one mknod and three opens per device
PROBE = r"""
import errno, json, os, stat, sys
from skiff.core import syscalls as sc
sc.unshare(sc.CLONE_NEWNS)
sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
d = sys.argv[2]  # the test's directory: the tmpfs over it goes with the namespace
sc.mount("tmpfs", d, "tmpfs", 0, "mode=700")
probes = json.loads(sys.argv[1])
def name(prefix, kind, major, minor):
    return os.path.join(d, "%s%s%d_%d" % (prefix, kind, major, minor))
def mode(kind):
    return (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | 0o600
for kind, major, minor in probes:
    os.mknod(name("o", kind, major, minor), mode(kind), os.makedev(major, minor))
print("prepared", flush=True)
sys.stdin.readline()
results = []
for kind, major, minor in probes:
    res = {}
    try:
        os.mknod(name("m", kind, major, minor), mode(kind), os.makedev(major, minor))
        res["m"] = True
    except OSError as e:
        res["m"] = e.errno != errno.EPERM
    for access, flags in (("r", os.O_RDONLY), ("w", os.O_WRONLY), ("rw", os.O_RDWR)):
        try:
            os.close(os.open(name("o", kind, major, minor),
                             flags | os.O_NONBLOCK | os.O_NOCTTY))
            res[access] = True
        except OSError as e:
            res[access] = e.errno != errno.EPERM
    results.append(res)
print(json.dumps(results))
"""


def v2_root() -> str | None:
    for candidate in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
        if os.path.exists(os.path.join(candidate, "cgroup.controllers")):
            return candidate
    return None


def v1_devices_root() -> str | None:
    path = os.path.join(CGROUP_ROOT, "devices")
    return path if os.path.exists(os.path.join(path, "devices.list")) else None


class Prober:
    """Runs the probe in a group; the nodes to open are made before it joins."""

    def __init__(self, scratch: Path) -> None:
        self.groups: list[str] = []
        self.scratch = scratch

    def group(self, root: str) -> str:
        path = os.path.join(root, "skiff-test-dev-" + secrets.token_hex(6))
        os.mkdir(path)
        self.groups.append(path)
        return path

    def run(self, group: str, probes: Sequence[tuple[str, int, int]] = PROBES
            ) -> dict[tuple[str, int, int, int], bool]:
        child = subprocess.Popen(
            [sys.executable, "-c", PROBE, json.dumps(probes), str(self.scratch)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout is not None
            line = child.stdout.readline()  # "prepared": the nodes to open exist
            assert line == b"prepared\n", child.stderr.read() if child.stderr else line
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(child.pid))
            out, err = child.communicate(b"go\n", timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0, err.decode()
        verdicts: dict[tuple[str, int, int, int], bool] = {}
        for (kind, major, minor), res in zip(probes, json.loads(out), strict=True):
            for name, access in ACCESSES:
                verdicts[(kind, major, minor, access)] = res[name]
        return verdicts

    def cleanup(self) -> None:
        """Remove the groups, and any group a failed test left inside them."""
        def remove(path: str) -> None:
            for entry in os.scandir(path):
                if entry.is_dir(follow_symlinks=False):
                    remove(entry.path)
            os.rmdir(path)

        for path in reversed(self.groups):
            if os.path.isdir(path):
                remove(path)


@pytest.fixture
def prober(tmp_path: Path) -> Iterator[Prober]:
    p = Prober(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()
    assert not [g for g in p.groups if os.path.exists(g)]


def expected(rules: Sequence[Rule]) -> dict[tuple[str, int, int, int], bool]:
    allow, exceptions = dr.effective(rules)
    return {(kind, major, minor, access): dr.allows(allow, exceptions, kind, major, minor, access)
            for kind, major, minor in PROBES for _, access in ACCESSES}


def write_v1(group: str, rules: Sequence[Rule]) -> None:
    for rule in rules:
        name = "devices.allow" if rule.allow else "devices.deny"
        with open(os.path.join(group, name), "w") as f:
            f.write(rule.line())


# ---------------------------------------------------------------------------


def test_default_program_loads_and_decides(prober: Prober) -> None:
    """Docker's default list: null, zero and full open, fuse-like and block
    numbers only mknod; the probe's mknod of a node to open needs the group
    not to exist yet, so the open half is what the filter saw."""
    root = v2_root()
    if root is None:
        pytest.skip("no cgroup2 mount")
    rules = dr.container_rules(resources_from({}))
    group = prober.group(root)
    prog_id = device_filter.install(group, device_filter.program_for(rules))
    assert device_filter.installed(group) == [prog_id]
    got = prober.run(group)
    assert got == expected(rules)
    assert got[("c", 1, 3, READ | WRITE)] and not got[("b", 4000, 1, READ)]
    assert got[("b", 4000, 1, MKNOD)]


def test_without_the_filter_everything_opens(prober: Prober) -> None:
    """The same probe in a group without a program: the block device opens (so
    the previous test's refusals are the filter's)."""
    root = v2_root()
    if root is None:
        pytest.skip("no cgroup2 mount")
    got = prober.run(prober.group(root))
    assert all(got.values()), got


_kinds = st.sampled_from(["a", "b", "c"])
_majors = st.sampled_from([None, 1, 4000])
_minors = st.sampled_from([None, 1, 3, 5])
_access = st.integers(min_value=1, max_value=7)
_rules = st.lists(st.builds(Rule, st.booleans(), _kinds, _majors, _minors, _access),
                  max_size=8)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=_rules)
def test_program_decides_as_the_v1_kernel(prober: Prober, rules: list[Rule]) -> None:
    """Random rule lists: the eBPF program's verdicts (v2) equal the emulation's,
    and the v1 kernel's own on the same lines where v1 is mounted."""
    v2 = v2_root()
    if v2 is None:
        pytest.skip("no cgroup2 mount")
    want = expected(rules)
    group = prober.group(v2)
    device_filter.install(group, device_filter.program_for(rules))
    assert prober.run(group) == want, [r.line() for r in rules]
    v1 = v1_devices_root()
    if v1 is not None:
        group = prober.group(v1)
        write_v1(group, rules)
        assert prober.run(group) == want, [(r.allow, r.line()) for r in rules]


def test_install_replaces_and_removes(prober: Prober) -> None:
    """A second install leaves only the new program (attached before the old
    one goes); ``None`` leaves none."""
    root = v2_root()
    if root is None:
        pytest.skip("no cgroup2 mount")
    group = prober.group(root)
    first = device_filter.install(group, device_filter.program_for(
        dr.container_rules(resources_from({}))))
    second = device_filter.install(group, device_filter.program_for(
        dr.container_rules(resources_from({"DeviceCgroupRules": ["b 4000:* r"]}))))
    assert first != second and device_filter.installed(group) == [second]
    assert prober.run(group)[("b", 4000, 1, READ)]
    assert device_filter.install(group, None) is None
    assert device_filter.installed(group) == []


def test_big_rule_lists_load() -> None:
    """A directory of devices makes a long list: it still loads."""
    exceptions = [dr.DevException("c", 4000 + i % 90, i, dr.ALL_ACCESS) for i in range(2000)]
    fd = device_filter.load(device_filter.assemble(False, exceptions))
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-prog"
    finally:
        os.close(fd)


def test_a_refused_program_names_the_verifier() -> None:
    with pytest.raises(device_filter.DeviceFilterError, match="refused the device filter"):
        device_filter.load(b"\x95" + b"\0" * 7)  # exit with r0 never set


def test_driver_refuses_without_attach(prober: Prober) -> None:
    """CgroupfsV2.create fails, leaving no group, when an ancestor's exclusive
    program forbids attaching ours (the security suite starts a container
    the same way)."""
    root = v2_root()
    if root is None:
        pytest.skip("no cgroup2 mount")
    top = prober.group(root)
    keep = os.path.join(top, "keep")
    os.mkdir(keep)
    prober.groups.append(keep)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    prog = device_filter.load(device_filter.assemble(True, []))
    try:
        assert lib.skiff_bpf_prog_attach(fd, prog, device_filter.BPF_CGROUP_DEVICE, 0) == 0
    finally:
        os.close(prog)
        os.close(fd)
    drv = CgroupfsV2(os.path.basename(top), root=root)
    with pytest.raises(device_filter.DeviceFilterError, match="cannot attach the device filter"):
        drv.create(secrets.token_hex(32), resources_from({}))
    assert os.listdir(top).count("keep") == 1
    assert [e for e in os.listdir(top) if os.path.isdir(os.path.join(top, e))] == ["keep"]


def test_one_loaded_program_serves_many_groups(prober: Prober) -> None:
    """The driver loads Docker's default program once: two groups get the same
    program, installing it again on a group keeps it, and the group still
    filters after the cache let go of its descriptor."""
    root = v2_root()
    if root is None:
        pytest.skip("no cgroup2 mount")
    programs = device_filter.Programs(limit=1)
    default = device_filter.program_for(dr.container_rules(resources_from({})))
    a, b = prober.group(root), prober.group(root)
    first = device_filter.install(a, default, programs)
    assert device_filter.install(b, default, programs) == first
    assert device_filter.install(a, default, programs) == first
    assert device_filter.installed(a) == device_filter.installed(b) == [first]
    other = device_filter.program_for(dr.container_rules(resources_from(
            {"DeviceCgroupRules": ["c 4000:1 r"]})))
    device_filter.install(b, other, programs)  # evicts (closes) the default's descriptor
    programs.close()
    got = prober.run(a)
    assert not got[("b", 4000, 1, READ)] and got[("c", 1, 3, READ)]
