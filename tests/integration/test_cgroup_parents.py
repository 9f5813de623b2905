"""A container's own cgroup parent (HostConfig.CgroupParent) in the cgroupfs
driver, against the real cgroup filesystem: where the group goes, which parent
levels are removed with it, and a restarted driver finding it again.

Every parent here is named ``skiff-test-…`` and removed even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core.containers import limits
from skiff.core.containers.limits import resources_from
from skiff.core.hookspecs import CgroupContext
from skiff.plugins.limits import cgroupfs_base
from skiff.plugins.limits.cgroupfs import cgroupfs_factory
from skiff.plugins.limits.cgroupfs_v1 import CgroupfsV1
from skiff.plugins.limits.cgroupfs_v2 import CgroupfsV2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups")

ROOT = Path("/sys/fs/cgroup")


def tops() -> list[Path]:
    """Where a top-level group shows: each v1 hierarchy, or the v2 root."""
    if cgroupfs_base.cgroup_version() == 2:
        return [ROOT]
    return [Path(p) for p in cgroupfs_base.v1_hierarchies()]


def own_group(top: Path) -> str:
    """This process's group in the hierarchy at ``top``, as runc's base for a
    relative parent."""
    if top == ROOT:
        return os.path.dirname(cgroupfs_base.own_cgroup(None)).strip("/")
    controller = cgroupfs_base.v1_hierarchies()[str(top)].split(",")[0]
    return cgroupfs_base.own_cgroup(controller).strip("/")


def remove_tree(path: Path) -> None:
    for sub in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
        if sub.is_dir():
            os.rmdir(sub)
    os.rmdir(path)


@pytest.fixture
def top() -> Iterator[str]:
    """A fresh top-level name; whatever is left under it is removed afterwards."""
    name = "skiff-test-cgp-" + secrets.token_hex(4)
    yield name
    for t in tops():
        for base in (t, t / own_group(t)):
            if (base / name).exists():
                remove_tree(base / name)


def driver(parents: dict[str, str], state_dir: str) -> CgroupfsV1 | CgroupfsV2:
    return cgroupfs_factory(CgroupContext(
        "skiff-test-default-" + secrets.token_hex(3), parent_of=lambda c: parents.get(c, ""),
        state_dir=state_dir))


def groups(d: CgroupfsV1 | CgroupfsV2, c: str) -> list[str]:
    return list(d.paths(c).values())


def test_absolute_and_relative_parents(top: str, tmp_path: Path) -> None:
    a, r = secrets.token_hex(32), secrets.token_hex(32)
    d = driver({a: f"/{top}/abs/x", r: f"{top}/rel"}, str(tmp_path))
    d.create(a, resources_from({}))
    d.create(r, resources_from({}))
    try:
        for t in tops():
            assert (t / top / "abs" / "x" / a).is_dir()  # from the hierarchy's root
            # under the daemon's own group (v2: the level above it), as runc does
            assert (t / own_group(t) / top / "rel" / r).is_dir()
        p = subprocess.Popen(["sleep", "30"])
        try:
            d.add_process(a, p.pid)
            with open(f"/proc/{p.pid}/cgroup") as f:
                assert f"/{top}/abs/x/{a}\n" in f.read()
            assert d.pids(a) == [p.pid]
        finally:
            p.kill()
            p.wait()
    finally:
        d.destroy(a)
        d.destroy(r)
    # every level skiff made goes with the last container under it
    assert not any((t / top).exists() for t in tops())
    assert not any((t / d.parent).exists() for t in tops())


def test_a_level_skiff_did_not_make_stays(top: str, tmp_path: Path) -> None:
    for t in tops():
        (t / top).mkdir()  # someone else's group, e.g. kubelet's pod group
    c = secrets.token_hex(32)
    d = driver({c: f"/{top}/inner"}, str(tmp_path))
    d.create(c, resources_from({}))
    d.destroy(c)
    assert all((t / top).is_dir() for t in tops())
    assert not any((t / top / "inner").exists() for t in tops())


def test_a_restarted_driver_finds_and_removes_the_group(top: str, tmp_path: Path) -> None:
    c = secrets.token_hex(32)
    first = driver({c: f"/{top}/pod"}, str(tmp_path))
    first.create(c, resources_from({}))
    p = subprocess.Popen(["sleep", "30"])
    try:
        first.add_process(c, p.pid)
        # a new daemon with no record of the container (an orphan of a crash):
        # the driver's state in the exec-root still says where its group is
        second = driver({}, str(tmp_path))
        assert second.pids(c) == [p.pid]  # so the daemon can kill it
        assert second.reconcile(set()) == []  # busy: left alone
    finally:
        p.kill()
        p.wait()
    assert second.reconcile(set()) == [c]  # empty and no record's: removed
    assert not any((t / top).exists() for t in tops())
    assert driver({}, str(tmp_path)).custom_parent(c) == ""  # forgotten once removed


def test_what_cgroupfs_refuses(tmp_path: Path) -> None:
    d = driver({}, str(tmp_path))
    for parent, words in (("system.slice:docker:abc", "systemd cgroup driver"),
                          ("/a/../b", '".." is not allowed')):
        with pytest.raises(ValueError, match=words):
            limits.check({"CgroupParent": parent}, d)
    limits.check({"CgroupParent": "/kubepods/burstable/pod1"}, d)  # kubelet's shape
