"""Device cgroup rules: Docker's list, parsing, v1 semantics, the program's shape.

The kernel's own verdicts (v1 devices cgroup and the eBPF filter) are
compared with these in tests/integration/test_device_filter.py.
"""

from __future__ import annotations

import os
import struct

import pytest

from skiff.core import hostdevices
from skiff.core.containers.limits import resources_from
from skiff.plugins.limits import device_filter
from skiff.plugins.limits import device_rules as dr
from skiff.plugins.limits.device_rules import MKNOD, READ, WRITE, Rule

RWM = MKNOD | READ | WRITE


def lines(resources: dict) -> list[str]:
    rules = dr.container_rules(resources_from(resources))
    return [("allow " if r.allow else "deny ") + r.line() for r in rules]


def test_docker_20_10_default_list() -> None:
    """moby 20.10 oci/defaults.go, then runc 1.1.4's AllowedDevices appended."""
    assert lines({}) == [
        "deny a",
        "allow c 1:5 rwm", "allow c 1:3 rwm", "allow c 1:9 rwm", "allow c 1:8 rwm",
        "allow c 5:0 rwm", "allow c 5:1 rwm", "deny c 10:229 rwm",
        "allow c *:* m", "allow b *:* m",
        "allow c 1:3 rwm", "allow c 1:8 rwm", "allow c 1:7 rwm", "allow c 5:0 rwm",
        "allow c 1:5 rwm", "allow c 1:9 rwm", "allow c 136:* rwm", "allow c 5:2 rwm",
        "allow c 10:200 rwm",
    ]
    default_allow, exceptions = dr.effective(dr.container_rules(resources_from({})))
    assert default_allow is False
    opened = {(e.type, e.major, e.minor) for e in exceptions if e.access == RWM}
    assert opened == {("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9),
                      ("c", 5, 0), ("c", 5, 1), ("c", 5, 2), ("c", 136, None),
                      ("c", 10, 200)}
    # fuse and every block device: mknod only
    assert not dr.allows(default_allow, exceptions, "c", 10, 229, READ)
    assert dr.allows(default_allow, exceptions, "c", 10, 229, MKNOD)
    assert not dr.allows(default_allow, exceptions, "b", 8, 0, READ)
    assert dr.allows(default_allow, exceptions, "b", 8, 0, MKNOD)
    assert dr.allows(default_allow, exceptions, "c", 136, 7, READ | WRITE)


def test_privileged_is_allow_all_and_no_program() -> None:
    assert lines({"Privileged": True, "DeviceCgroupRules": ["c 1:3 r"]}) == ["allow a"]
    assert device_filter.program_for(dr.container_rules(resources_from(
            {"Privileged": True}))) is None


def test_devices_and_cgroup_rules_sit_before_runc_defaults() -> None:
    got = lines({"Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/x",
                              "CgroupPermissions": "r"}],
                 "DeviceCgroupRules": ["b 7:* rw", "c *:* m"]})
    assert got[8:11] == ["allow c 1:3 r", "allow b 7:* rw", "allow c *:* m"]
    assert got[11] == "allow c *:* m"


@pytest.mark.parametrize(("text", "rule"), [
    ("c 1:3 rwm", Rule(True, "c", 1, 3, RWM)),
    ("b *:* r", Rule(True, "b", None, None, READ)),
    ("a *:* rwm", Rule(True, "a", None, None, RWM)),
    ("c 4095:1048575 mw", Rule(True, "c", 4095, 1048575, MKNOD | WRITE)),
])
def test_parse_rule(text: str, rule: Rule) -> None:
    assert dr.parse_rule(text) == rule


@pytest.mark.parametrize(("text", "message"), [
    ("c 1:3 rwx", "invalid device cgroup rule format: 'c 1:3 rwx'"),
    ("x 1:3 r", "invalid device cgroup rule format"),
    ("c 1 r", "invalid device cgroup rule format"),
    (" c 1:3 r", "invalid device cgroup rule format"),
    (7, "invalid device cgroup rule format: '7'"),
    ("c 4096:0 r", "major numbers go up to 4095"),
    ("b 1:1048576 r", "minor numbers go up to 1048575"),
])
def test_bad_rules(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dr.parse_rule(text)
    with pytest.raises(ValueError, match=message):
        dr.check(resources_from({"DeviceCgroupRules": [text]}))


def test_effective_follows_v1_kernel_semantics() -> None:
    c13 = Rule(True, "c", 1, 3, READ)
    # the same (type, major, minor): access bits merge
    _, ex = dr.effective([Rule(False, "a", None, None, RWM), c13, c13._replace(access=WRITE)])
    assert [(e.major, e.minor, e.access) for e in ex] == [(1, 3, READ | WRITE)]
    # a deny under deny-by-default only removes bits of the identical entry
    _, ex = dr.effective([Rule(False, "a", None, None, RWM), Rule(True, "c", 1, None, RWM),
                          Rule(False, "c", 1, 3, RWM)])
    assert [(e.major, e.minor) for e in ex] == [(1, None)]
    _, ex = dr.effective([Rule(False, "a", None, None, RWM), Rule(True, "c", 1, 3, RWM),
                          Rule(False, "c", 1, 3, READ)])
    assert [(e.minor, e.access) for e in ex] == [(3, MKNOD | WRITE)]
    # "a" resets, whatever came before
    assert dr.effective([c13, Rule(True, "a", None, None, READ)]) == (True, [])
    # under allow-by-default a deny blocks any shared bit
    allow, ex = dr.effective([Rule(False, "b", 8, None, WRITE)])
    assert allow is True
    assert not dr.allows(allow, ex, "b", 8, 1, READ | WRITE)
    assert dr.allows(allow, ex, "b", 8, 1, READ)
    # under deny-by-default one exception must cover the whole access
    allow, ex = dr.effective([Rule(False, "a", None, None, RWM), Rule(True, "c", 1, None, READ),
                              Rule(True, "c", 1, 3, WRITE)])
    assert not dr.allows(allow, ex, "c", 1, 3, READ | WRITE)
    assert dr.allows(allow, ex, "c", 1, 3, WRITE) and dr.allows(allow, ex, "c", 1, 3, READ)


def test_program_shape() -> None:
    """Six loads and shifts, one block per exception, the default verdict last;
    a wildcard number or full access costs no instruction."""
    prog = device_filter.assemble(False, [dr.DevException("c", 1, 3, RWM)])
    insns = [struct.unpack("<BBhi", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert len(insns) == 6 + 5 + 2
    assert insns[6] == (0x55, 2, 4, 2)  # if r2 != CHAR skip the 4 after it
    assert insns[7] == (0x55, 4, 3, 1) and insns[8] == (0x55, 5, 2, 3)
    assert insns[9][0] == 0xB4 and insns[9][3] == 1  # allow
    assert insns[-2][3] == 0 and insns[-1][0] == 0x95  # deny by default
    wild = device_filter.assemble(False, [dr.DevException("b", None, None, MKNOD)])
    assert len(wild) // 8 == 6 + 6 + 2  # type, access (3), verdict, exit
    assert device_filter.program_for([Rule(True, "a", None, None, RWM)]) is None


def test_device_lookup(tmp_path: object) -> None:
    null = os.stat("/dev/null")
    [node] = hostdevices.devices_from_path("/dev/null", "/dev/mynull")
    assert (node.path, node.type, node.major, node.minor) == ("/dev/mynull", "c", 1, 3)
    assert node.file_mode == null.st_mode & 0o7777
    with pytest.raises(ValueError, match="No such file or directory"):
        hostdevices.devices_from_path("/dev/skiff-nope", "/dev/x")
    with pytest.raises(ValueError, match="not a device node"):
        hostdevices.devices_from_path("/etc/hostname", "/dev/x")
    for bad, message in (({"PathOnHost": "dev/null"}, "must be an absolute path"),
                         ({"PathOnHost": "/dev/null", "PathInContainer": "/"}, "bad format"),
                         ({"PathOnHost": "/dev/null", "CgroupPermissions": "rr"},
                          "bad mode specified: rr"),
                         ("/dev/null", "expected an object")):
        with pytest.raises(ValueError, match=message):
            hostdevices.check_mapping(bad)
    assert hostdevices.check_mapping({"PathOnHost": "/dev/null"}) == \
        ("/dev/null", "/dev/null", "rwm")


def test_directory_maps_every_device_below() -> None:
    if not os.path.isdir("/dev/net") or not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun here")
    nodes = hostdevices.devices_from_path("/dev/net", "/dev/vnet")
    assert "/dev/vnet/tun" in [n.path for n in nodes]


def test_privileged_host_devices() -> None:
    """runc's walk: every node, not console, nothing from pts/shm/mqueue/fd."""
    nodes = hostdevices.host_devices()
    paths = {n.path for n in nodes}
    assert "/dev/null" in paths and "/dev/console" not in paths
    assert not [p for p in paths if p.startswith(("/dev/pts/", "/dev/shm/", "/dev/mqueue/"))]
    assert all(n.type in ("b", "c") for n in nodes)
    mapped = hostdevices.container_devices(
        {"Privileged": True, "Devices": [{"PathOnHost": "/dev/null",
                                          "PathInContainer": "/dev/null2"},
                                         {"PathOnHost": "/dev/zero"}]})
    assert [n.path for n in mapped].count("/dev/zero") == 1  # same path: nothing added
    assert "/dev/null2" in [n.path for n in mapped]
