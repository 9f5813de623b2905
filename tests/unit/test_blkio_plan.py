"""What the cgroupfs driver plans to write for per-device I/O limits, v1 and v2,
against group directories made of plain files (the kernel side is covered by
tests/integration/test_blkio.py, here and in the VM rig)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from skiff.core.containers import limits
from skiff.core.containers.limits import resources_from
from skiff.plugins.limits import _blkio


def _a_block_device() -> tuple[str, str]:
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            return path, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    pytest.skip("no block device node in /dev")


@pytest.fixture
def dev() -> tuple[str, str]:
    return _a_block_device()


def group(tmp_path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


V1_FILES = {name: "" for _, name, _, _ in _blkio.THROTTLES}


def test_v1_one_rule_per_write(tmp_path: Path, dev: tuple[str, str]) -> None:
    path, majmin = dev
    g = group(tmp_path, V1_FILES)
    plan = _blkio.v1_writes(g, resources_from(
            {"BlkioDeviceReadBps": [{"Path": path, "Rate": 1024}],
             "BlkioDeviceWriteIOps": [{"Path": path, "Rate": 7}]}), True)
    assert plan == [(f"{g}/blkio.throttle.read_bps_device", f"{majmin} 1024"),
                    (f"{g}/blkio.throttle.write_iops_device", f"{majmin} 7")]
    assert _blkio.v1_writes(g, resources_from({}), True) == []


def test_v1_rewrite_clears_stale_rules(tmp_path: Path, dev: tuple[str, str]) -> None:
    path, majmin = dev
    g = group(tmp_path, {**V1_FILES, "blkio.throttle.read_bps_device": "253:9 500\n",
                         "blkio.throttle.write_bps_device": f"{majmin} 10\n"})
    plan = _blkio.v1_writes(g, resources_from(
            {"BlkioDeviceReadBps": [{"Path": path, "Rate": 2048}]}), False)
    assert plan == [(f"{g}/blkio.throttle.read_bps_device", "253:9 0"),
                    (f"{g}/blkio.throttle.read_bps_device", f"{majmin} 2048"),
                    (f"{g}/blkio.throttle.write_bps_device", f"{majmin} 0")]


def test_v1_missing_files_are_an_error_only_when_asked(tmp_path: Path,
                                                        dev: tuple[str, str]) -> None:
    path, _ = dev
    g = str(tmp_path)
    assert _blkio.v1_writes(g, resources_from({}), False) == []
    with pytest.raises(ValueError, match="--device-read-bps: the kernel has no"):
        _blkio.v1_writes(g, resources_from(
                {"BlkioDeviceReadBps": [{"Path": path, "Rate": 1}]}), True)
    with pytest.raises(ValueError, match="--blkio-weight-device"):
        _blkio.v1_writes(g, resources_from(
                {"BlkioWeightDevice": [{"Path": path, "Weight": 100}]}), True)
    with pytest.raises(ValueError, match="blkio controller mounted"):
        _blkio.v1_writes(None, resources_from(
                {"BlkioDeviceReadBps": [{"Path": path, "Rate": 1}]}), True)


def test_v2_io_max_line_per_device(tmp_path: Path, dev: tuple[str, str]) -> None:
    path, majmin = dev
    g = group(tmp_path, {"io.max": "", "io.weight": "default 100\n"})
    plan = _blkio.v2_writes(g, resources_from(
            {"BlkioDeviceReadBps": [{"Path": path, "Rate": 1 << 20}],
             "BlkioDeviceWriteIOps": [{"Path": path, "Rate": 50}],
             "BlkioWeightDevice": [{"Path": path, "Weight": 1000}]}), True)
    assert plan == [(f"{g}/io.max", f"{majmin} rbps=1048576 wbps=max riops=max wiops=50"),
                    (f"{g}/io.weight", f"{majmin} 10000")]


def test_v2_rewrite_lifts_stale_devices(tmp_path: Path) -> None:
    g = group(tmp_path, {"io.max": "253:9 rbps=10 wbps=max riops=max wiops=max\n"})
    assert _blkio.v2_writes(g, resources_from({}), False) == [
        (f"{g}/io.max", "253:9 rbps=max wbps=max riops=max wiops=max")]
    assert _blkio.v2_writes(g, resources_from({}), True) == []


def test_v2_bfq_weight_keeps_dockers_scale(tmp_path: Path, dev: tuple[str, str]) -> None:
    path, majmin = dev
    g = group(tmp_path, {"io.max": "", "io.bfq.weight": "default 100\n"})
    assert _blkio.v2_writes(g, resources_from(
            {"BlkioWeightDevice": [{"Path": path, "Weight": 300}]}),
                            True) == [(f"{g}/io.bfq.weight", f"{majmin} 300")]
    with pytest.raises(ValueError, match="io controller"):
        _blkio.v2_writes(str(tmp_path / "nowhere"),
                         resources_from({"BlkioDeviceReadBps": [{"Path": path, "Rate": 1}]}), True)


@pytest.mark.parametrize("entries, message", [
    ([{"Path": "/dev/null", "Rate": 1}], "is not a block device"),
    ([{"Rate": 1}], "needs a device Path"),
    ("not-a-list", "must be a list"),
])
def test_validation(entries: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _blkio.validate(resources_from({"BlkioDeviceWriteBps": entries}))


def test_rates_and_weights_are_checked(dev: tuple[str, str]) -> None:
    path, _ = dev
    with pytest.raises(ValueError, match="non-negative"):
        _blkio.validate(resources_from({"BlkioDeviceReadIOps": [{"Path": path, "Rate": "fast"}]}))
    with pytest.raises(ValueError, match="from 10 to 1000"):  # Docker's range: core's check
        limits.validate(resources_from({"BlkioWeightDevice": [{"Path": path, "Weight": 1001}]}))
    _blkio.validate(resources_from({"BlkioWeightDevice": [{"Path": path, "Weight": 0}],
                                    "BlkioDeviceReadBps": None}))
