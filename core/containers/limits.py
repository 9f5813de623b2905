"""Docker's checks of HostConfig's resource fields, for every cgroup driver.

moby's ``verifyPlatformContainerResources`` and ``verifyContainerResources``
refuse a bad ``Memory``, ``MemorySwap``, ``CpuShares``, ``NanoCpus``, CPU
period and quota, cpuset list, blkio weight or kernel memory before any
cgroup exists; the same checks live here, in the same words, so a
third-party cgroup driver need not repeat them (the daemon runs them before
the driver's ``validate``).  What needs the host (device nodes, the cpus and
memory nodes the parent group has, whether kernel memory works) is the
driver's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skiff.core.hookspecs import CgroupDriver

#: Docker's floor for ``--memory``
MIN_MEMORY = 6 * 1024 * 1024
#: Docker's floor for ``--kernel-memory``
MIN_KERNEL_MEMORY = 4 * 1024 * 1024

CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def as_int(resources: Mapping[str, Any], key: str) -> int:
    value = resources.get(key)
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid value {value!r} for {key}: expected an integer") from None


def parse_cpuset(text: str) -> set[int]:
    """The numbers of a cpuset list (``0-3,5``)."""
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def check_cpuset(kind: str, value: str, available: str) -> None:
    # Docker's messages, word for word, so scripts matching them keep working
    if not CPUSET.match(value):
        raise ValueError(f"Invalid value {value} for cpuset {kind}")
    if available and not parse_cpuset(value) <= parse_cpuset(available):
        what = "CPUs" if kind == "cpus" else "memory nodes"
        raise ValueError(
            f"Requested {what} are not available - requested {value}, available: {available}"
        )


def validate(resources: Mapping[str, Any], ncpu: int | None = None) -> None:
    """Docker's checks of HostConfig's resources; ``ValueError`` with its messages.

    The daemon calls this at container create and update, before the cgroup
    driver's own ``validate`` (which adds what depends on the host: device
    paths, cpusets the parent has, kernel memory), so a bad value is a 400
    then rather than a failed start.
    """
    ncpu = ncpu or os.cpu_count() or 1
    memory = as_int(resources, "Memory")
    swap = as_int(resources, "MemorySwap")
    if memory < 0:
        raise ValueError("Invalid value for Memory: it must not be negative")
    if 0 < memory < MIN_MEMORY:
        raise ValueError("Minimum memory limit allowed is 6MB")
    if swap > 0 and memory == 0:
        raise ValueError(
            "You should always set the Memory limit when using Memoryswap limit, see usage"
        )
    if swap > 0 and swap < memory:
        raise ValueError(
            "Minimum memoryswap limit should be larger than memory limit, see usage"
        )
    reservation = as_int(resources, "MemoryReservation")
    if memory > 0 and reservation > memory:
        raise ValueError(
            "Minimum memory limit can not be less than memory reservation limit, see usage"
        )
    swappiness = resources.get("MemorySwappiness")
    if swappiness is not None and swappiness != -1 and not 0 <= int(swappiness) <= 100:
        raise ValueError(
            f"Invalid value: {swappiness}, valid memory swappiness range is 0-100"
        )
    nano = as_int(resources, "NanoCpus")
    period = as_int(resources, "CpuPeriod")
    quota = as_int(resources, "CpuQuota")
    if nano and (period or quota):
        raise ValueError(
            "Conflicting options: Nano CPUs and CPU Period/Quota cannot both be set"
        )
    if nano < 0 or nano > ncpu * 1_000_000_000:
        raise ValueError(
            f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
        )
    if period and not 1000 <= period <= 1_000_000:
        raise ValueError(
            "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s "
            "(i.e. 1000000)"
        )
    if quota > 0 and quota < 1000:
        raise ValueError("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    if as_int(resources, "CpuShares") < 0:
        raise ValueError("Invalid value for CpuShares: it must not be negative")
    weight = as_int(resources, "BlkioWeight")
    if weight and not 10 <= weight <= 1000:
        raise ValueError("Range of blkio weight is from 10 to 1000")
    kmem = as_int(resources, "KernelMemory")
    if kmem < 0 or 0 < kmem < MIN_KERNEL_MEMORY:
        raise ValueError("Minimum kernel memory limit allowed is 4MB")
    for key in ("CpusetCpus", "CpusetMems"):
        value = resources.get(key) or ""
        if value and not CPUSET.match(value):
            raise ValueError(f"Invalid value {value} for cpuset {key[6:].lower()}")




def check(resources: Mapping[str, Any], cgroups: CgroupDriver | None) -> None:
    """The daemon's check at create and update: Docker's, then the driver's."""
    validate(resources)
    if cgroups is not None:
        cgroups.validate(resources)
