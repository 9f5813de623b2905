"""Docker's checks of the resource fields, in core for every cgroup driver."""

from __future__ import annotations

from typing import cast

import pytest

from skiff.core.containers import limits
from skiff.core.hookspecs import CgroupDriver, Resources

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"Memory": -1}, "Invalid value for Memory: it must not be negative"),
        ({"Memory": 1024}, "Minimum memory limit allowed is 6MB"),
        ({"MemorySwap": 64 * MiB}, "You should always set the Memory limit"),
        ({"Memory": 64 * MiB, "MemorySwap": 32 * MiB}, "Minimum memoryswap limit"),
        ({"Memory": 8 * MiB, "MemoryReservation": 16 * MiB},
         "Minimum memory limit can not be less than memory reservation limit"),
        ({"MemorySwappiness": 101}, "valid memory swappiness range is 0-100"),
        ({"NanoCpus": 10**9, "CpuQuota": 50000}, "Conflicting options"),
        ({"NanoCpus": 3 * 10**9}, "Range of CPUs is from 0.01 to 2.00"),
        ({"CpuPeriod": 10}, "CPU cfs period can not be less than 1ms"),
        ({"CpuQuota": 10}, "CPU cfs quota can not be less than 1ms"),
        ({"CpuShares": -2}, "Invalid value for CpuShares"),
        ({"BlkioWeight": 5}, "Range of blkio weight is from 10 to 1000"),
        ({"KernelMemory": 1024}, "Minimum kernel memory limit allowed is 4MB"),
        ({"CpusetCpus": "0-"}, "Invalid value 0- for cpuset cpus"),
        ({"CpusetMems": "x"}, "Invalid value x for cpuset mems"),
        ({"Memory": "lots"}, "invalid value 'lots' for Memory"),
    ],
)
def test_docker_messages(resources: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        limits.validate(limits.resources_from(resources), ncpu=2)


def test_good_values_pass() -> None:
    limits.validate(limits.resources_from(
        {"Memory": 64 * MiB, "MemorySwap": -1, "MemorySwappiness": -1,
         "NanoCpus": 1_500_000_000, "CpusetCpus": "0-1,3", "PidsLimit": -1,
         "BlkioWeight": 300}), ncpu=2)
    limits.validate(limits.resources_from({}), ncpu=1)


def test_cpuset_availability_in_docker_words() -> None:
    limits.check_cpuset("cpus", "0-1", "0-3")
    with pytest.raises(ValueError, match="Requested CPUs are not available - requested 0-7, "
                                         "available: 0-3"):
        limits.check_cpuset("cpus", "0-7", "0-3")
    with pytest.raises(ValueError, match="Requested memory nodes are not available"):
        limits.check_cpuset("mems", "1", "0")
    assert limits.parse_cpuset("0-2,5") == {0, 1, 2, 5}


class _Driver:
    def __init__(self) -> None:
        self.seen: list[Resources] = []

    def validate(self, resources: Resources) -> None:
        self.seen.append(resources)


def test_check_runs_dockers_checks_before_the_drivers() -> None:
    seen = _Driver()
    drv = cast(CgroupDriver, seen)
    with pytest.raises(ValueError, match="Minimum memory limit"):
        limits.check({"Memory": 1}, drv)
    assert seen.seen == []
    limits.check({"Memory": 64 * MiB}, drv)
    assert seen.seen == [limits.resources_from({"Memory": 64 * MiB})]
    limits.check({}, None)
