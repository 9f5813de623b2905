"""Limits on real container processes: the skiff runtime plus the cgroupfs driver.

What the daemon does on start, without the daemon: create the groups, hand the
driver's view mounts to the init, move the prepared process in, then "go".
Runs on this machine's cgroup v1 and in the VM rig's pure cgroup v2, where it
is quick enough to run under qemu without acceleration.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from skiff.core.containers.limits import resources_from
from skiff.core.hookspecs import CgroupContext
from skiff.plugins.isolation.runtime import ForkServerRuntime
from skiff.plugins.limits.cgroupfs import cgroupfs_factory
from skiff.plugins.limits.cgroupfs_v1 import CgroupfsV1
from skiff.plugins.limits.cgroupfs_v2 import CgroupfsV2
from tests.integration.runtimekit import NAMESPACES, make_spec, run_joined

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups")

MiB = 1024 * 1024


@pytest.fixture
def driver() -> Iterator[CgroupfsV1 | CgroupfsV2]:
    parent = "skiff-test-" + secrets.token_hex(6)
    drv = cgroupfs_factory(CgroupContext(parent))
    yield drv
    # the parent sits right under the root (v2) or a controller's mount (v1)
    left = [str(p) for p in [Path("/sys/fs/cgroup", parent),
                            *Path("/sys/fs/cgroup").glob(f"*/{parent}")] if p.exists()]
    assert not left, f"cgroups left behind: {left}"


def run_limited(rt: ForkServerRuntime, drv: CgroupfsV1 | CgroupfsV2, image: Path,
                bundle: Path, script: str, resources: dict) -> tuple[int, str, bool]:
    """Run ``sh -c script`` limited by ``resources``; (exit code, stdout, oom_killed)."""
    cid = secrets.token_hex(32)
    drv.create(cid, resources_from(resources))
    try:
        spec = make_spec(image, bundle, ["sh", "-c", script], id=cid,
                         mounts=drv.mounts(cid),
                         namespaces=dict(NAMESPACES, cgroup=None))

        code, out = trio.run(run_joined, rt, spec, partial(drv.add_process, cid))
        return code, out, drv.oom_killed(cid)
    finally:
        drv.destroy(cid)


def cat(v1: str, v2: str) -> str:
    return f"cat /sys/fs/cgroup/{v1} 2>/dev/null || cat /sys/fs/cgroup/{v2}"


#: what a container limited to 48m, 0.5 CPU and 30 pids reads of its own groups
#: (the runtime-level test and the end-to-end one run the same script)
OWN_LIMITS_SCRIPT = "; ".join([
    cat("memory/memory.limit_in_bytes", "memory.max"),
    cat("cpu/cpu.cfs_quota_us", "cpu.max"),
    cat("pids/pids.max", "pids.max"),
    "cat /proc/self/cgroup",
    "touch /sys/fs/cgroup/x 2>&1 || true",
])


def check_own_limits(out: str) -> None:
    """The limits show in the container's own files, its groups are its cgroup
    root (a private cgroup namespace) and /sys/fs/cgroup is read-only."""
    lines = out.splitlines()
    assert lines[0] == str(48 * MiB), lines
    assert lines[1] in ("50000", "50000 100000"), lines
    assert lines[2] == "30", lines
    cgroup_lines = [x for x in lines[3:] if re.match(r"^\d+:", x)]
    assert cgroup_lines and all(x.endswith(":/") for x in cgroup_lines), lines
    assert "Read-only file system" in lines[-1], lines


def test_oom_kill_is_137_and_reported(runtime: ForkServerRuntime, driver: CgroupfsV1 | CgroupfsV2,
                                      image: Path, tmp_path: Path) -> None:
    code, out, oom = run_limited(
        runtime, driver, image, tmp_path / "b",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
        {"Memory": 32 * MiB})
    assert (code, oom) == (137, True), out
    assert "survived" not in out


def test_no_oom_without_pressure(runtime: ForkServerRuntime, driver: CgroupfsV1 | CgroupfsV2,
                                 image: Path, tmp_path: Path) -> None:
    code, _, oom = run_limited(runtime, driver, image, tmp_path / "b", "exit 4",
                               {"Memory": 32 * MiB})
    assert (code, oom) == (4, False)


def test_pids_limit_stops_forks(runtime: ForkServerRuntime, driver: CgroupfsV1 | CgroupfsV2,
                                image: Path, tmp_path: Path) -> None:
    script = (
        "(for i in $(seq 100); do sleep 30 & done) 2>/tmp/err; "
        "read n < /sys/fs/cgroup/pids/pids.current 2>/dev/null "
        "|| read n < /sys/fs/cgroup/pids.current; echo current=$n; "
        "while read line; do echo \"err: $line\"; done < /tmp/err; "
        "kill -9 -1; wait; echo done"
    )
    code, out, _ = run_limited(runtime, driver, image, tmp_path / "b", script,
                               {"PidsLimit": 20})
    assert code == 0, out
    m = re.search(r"current=(\d+)", out)
    assert m and int(m.group(1)) <= 20, out
    assert re.search(r"err: .*can't fork", out), out


def test_limits_visible_read_only(runtime: ForkServerRuntime, driver: CgroupfsV1 | CgroupfsV2,
                                  image: Path, tmp_path: Path) -> None:
    script = OWN_LIMITS_SCRIPT
    code, out, _ = run_limited(runtime, driver, image, tmp_path / "b", script,
                               {"Memory": 48 * MiB, "NanoCpus": 500_000_000,
                                "PidsLimit": 30})
    assert code == 0, out
    check_own_limits(out)
