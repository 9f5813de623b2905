"""Per-device block I/O limits and --kernel-memory of the cgroupfs driver, on the
real cgroup filesystem: v1 here, v2 in the VM rig (scripts/vmrig-tests.sh).

Each test attaches its own loop device (detached afterwards) and uses its own
parent group, removed even when the test fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core.containers.limits import resources_from
from skiff.plugins.limits.cgroupfs_v1 import CgroupfsV1
from skiff.plugins.limits.cgroupfs_v2 import CgroupfsV2
from tests.integration.test_cgroupfs import Harness, cid
from tests.loopfs import attached_loop

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups")

MiB = 1024 * 1024


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(``/dev/loopN``, ``"MAJ:MIN"``) of a loop device the test attaches, then detaches."""
    with attached_loop(tmp_path) as dev:
        yield dev


def throttles(dev: str, read_bps: int = 0, write_bps: int = 0, read_iops: int = 0,
              write_iops: int = 0) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for field, rate in (("BlkioDeviceReadBps", read_bps), ("BlkioDeviceWriteBps", write_bps),
                        ("BlkioDeviceReadIOps", read_iops),
                        ("BlkioDeviceWriteIOps", write_iops)):
        out[field] = [{"Path": dev, "Rate": rate}] if rate else []
    return out


def blkio_view(h: Harness, c: str, majmin: str) -> dict[str, str]:
    """What the group says: v1 file -> its text, or v2 io.max key -> value for ``majmin``."""
    if isinstance(h.driver, CgroupfsV1):
        return {name: h.file(c, "blkio", f"blkio.throttle.{name}")
                for name in ("read_bps_device", "write_bps_device", "read_iops_device",
                             "write_iops_device")}
    # the kernel lists a device with all four keys, and drops it once all are max
    text = h.file(c, "io", "io.max")
    out = {k: "max" for k in ("rbps", "wbps", "riops", "wiops")}
    for line in text.splitlines():
        dev, *pairs = line.split()
        if dev == majmin:
            out.update(pair.split("=", 1) for pair in pairs)
    return out


def test_device_throttles_reach_the_group_and_update_clears_them(
        h: Harness, loop: tuple[str, str]) -> None:
    dev, majmin = loop
    c = cid()
    h.driver.create(c, resources_from(throttles(dev, MiB, 2 * MiB, 100, 50)))
    try:
        view = blkio_view(h, c, majmin)
        if isinstance(h.driver, CgroupfsV1):
            assert view == {"read_bps_device": f"{majmin} {MiB}",
                            "write_bps_device": f"{majmin} {2 * MiB}",
                            "read_iops_device": f"{majmin} 100",
                            "write_iops_device": f"{majmin} 50"}
        else:
            assert view == {"rbps": str(MiB), "wbps": str(2 * MiB), "riops": "100",
                            "wiops": "50"}
        # the complete set again, with only the read limit: the others go
        h.driver.update(c, resources_from(throttles(dev, read_bps=3 * MiB)))
        view = blkio_view(h, c, majmin)
        if isinstance(h.driver, CgroupfsV1):
            assert view["read_bps_device"] == f"{majmin} {3 * MiB}"
            assert view["write_bps_device"] == view["read_iops_device"] == ""
            assert view["write_iops_device"] == ""
        else:
            assert view == {"rbps": str(3 * MiB), "wbps": "max", "riops": "max",
                            "wiops": "max"}
        h.driver.update(c, resources_from(throttles(dev)))
        assert set(blkio_view(h, c, majmin).values()) <= {"", "max"}
    finally:
        h.driver.destroy(c)


def test_direct_reads_are_throttled_and_counted(h: Harness, loop: tuple[str, str]) -> None:
    """A process in the group reads the device with O_DIRECT: the throttle's own
    counters (v1) or io.stat (v2) account for it.  No timing is asserted."""
    dev, majmin = loop
    c = cid()
    # the v1 devices controller must let the group open the device at all
    h.driver.create(c, resources_from({**throttles(dev, read_bps=8 * MiB),
                        "DeviceCgroupRules": [f"b {majmin} r"]}))
    try:
        p = h.spawn("sh", "-c", f"read _; exec dd if={dev} of=/dev/null bs=64k count=16 "
                    "iflag=direct", stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        h.driver.add_process(c, p.pid)
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
        assert p.wait(timeout=60) == 0, p.stderr.read() if p.stderr else b""
        if isinstance(h.driver, CgroupfsV1):
            text = h.file(c, "blkio", "blkio.throttle.io_service_bytes")
            read = [line for line in text.splitlines() if line.startswith(f"{majmin} Read")]
            assert read and int(read[0].split()[2]) >= 16 * 64 * 1024, text
        else:
            text = h.file(c, "io", "io.stat")
            line = next(x for x in text.splitlines() if x.startswith(majmin + " "))
            fields = dict(kv.split("=") for kv in line.split()[1:])
            assert int(fields["rbytes"]) >= 16 * 64 * 1024, text
    finally:
        h.driver.destroy(c)


@pytest.mark.parametrize("path, message", [
    ("/dev/null", "is not a block device"),
    ("/etc/hostname", "is not a block device"),
    ("/dev/no-such-device", "No such file or directory"),
])
def test_a_path_that_is_no_block_device_is_refused(h: Harness, path: str,
                                                   message: str) -> None:
    for field in ("BlkioDeviceReadBps", "BlkioDeviceWriteIOps"):
        with pytest.raises(ValueError, match=message) as info:
            h.driver.validate(resources_from({field: [{"Path": path, "Rate": 1024}]}))
        assert field in str(info.value) and path in str(info.value)
    with pytest.raises(ValueError, match=message):
        h.driver.validate(resources_from({"BlkioWeightDevice": [{"Path": path, "Weight": 100}]}))


def test_bad_rates_and_weights_are_refused(h: Harness, loop: tuple[str, str]) -> None:
    dev, _ = loop
    with pytest.raises(ValueError, match="non-negative"):
        h.driver.validate(resources_from({"BlkioDeviceReadBps": [{"Path": dev, "Rate": -1}]}))
    with pytest.raises(ValueError, match="from 10 to 1000"):
        h.driver.validate(resources_from({"BlkioWeightDevice": [{"Path": dev, "Weight": 5}]}))
    h.driver.validate(resources_from({"BlkioWeightDevice": [{"Path": dev, "Weight": 500}]}))


def test_kernel_memory_is_applied_or_refused_with_the_reason(h: Harness) -> None:
    resources = {"Memory": 64 * MiB, "KernelMemory": 32 * MiB}
    with pytest.raises(ValueError, match="Minimum kernel memory limit allowed is 4MB"):
        h.driver.validate(resources_from({"KernelMemory": 1024}))
    if isinstance(h.driver, CgroupfsV2):
        with pytest.raises(ValueError, match="not supported on cgroup v2"):
            h.driver.validate(resources_from(resources))
        return
    probe = Path("/sys/fs/cgroup/memory") / f"skiff-kmem-probe-{os.getpid()}"
    assert not probe.exists()
    try:
        h.driver.validate(resources_from(resources))
    except ValueError as exc:
        # this machine's 6.18 kernel keeps the file but ignores writes; 5.16+
        # refuse them; either way the message says so
        assert "Kernel memory limit is not supported" in str(exc)
        assert "memory.kmem.limit_in_bytes" in str(exc)
        assert not any(p.name.startswith("skiff-kmem-probe-")
                       for p in Path("/sys/fs/cgroup/memory").iterdir())
        return
    c = cid()
    h.driver.create(c, resources_from(resources))
    try:
        assert int(h.file(c, "memory", "memory.kmem.limit_in_bytes")) == 32 * MiB
    finally:
        h.driver.destroy(c)
