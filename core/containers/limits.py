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
from typing import Any

from skiff.core import hostdevices
from skiff.core.hookspecs import (
    CgroupDriver,
    DeviceMapping,
    Resources,
    ThrottleDevice,
    WeightDevice,
)

#: Docker's floor for ``--memory``
MIN_MEMORY = 6 * 1024 * 1024
#: Docker's floor for ``--kernel-memory``
MIN_KERNEL_MEMORY = 4 * 1024 * 1024

CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")

#: per-device HostConfig fields, their ``Resources`` attributes and CLI flags
THROTTLE_FIELDS = {
    "BlkioDeviceReadBps": ("blkio_device_read_bps", "--device-read-bps"),
    "BlkioDeviceWriteBps": ("blkio_device_write_bps", "--device-write-bps"),
    "BlkioDeviceReadIOps": ("blkio_device_read_iops", "--device-read-iops"),
    "BlkioDeviceWriteIOps": ("blkio_device_write_iops", "--device-write-iops"),
}
WEIGHT_DEVICE = "BlkioWeightDevice"
_FLAGS = {field: flag for field, (_, flag) in THROTTLE_FIELDS.items()}
_FLAGS[WEIGHT_DEVICE] = "--blkio-weight-device"


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


def validate(r: Resources, ncpu: int | None = None) -> None:
    """Docker's checks of HostConfig's resources; ``ValueError`` with its messages.

    The daemon calls this at container create and update, before the cgroup
    driver's own ``validate`` (which adds what depends on the host: device
    paths, cpusets the parent has, kernel memory), so a bad value is a 400
    then rather than a failed start.
    """
    ncpu = ncpu or os.cpu_count() or 1
    memory = r.memory
    swap = r.memory_swap
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
    reservation = r.memory_reservation
    if memory > 0 and reservation > memory:
        raise ValueError(
            "Minimum memory limit can not be less than memory reservation limit, see usage"
        )
    swappiness = r.memory_swappiness
    if swappiness is not None and swappiness != -1 and not 0 <= swappiness <= 100:
        raise ValueError(
            f"Invalid value: {swappiness}, valid memory swappiness range is 0-100"
        )
    nano = r.nano_cpus
    period = r.cpu_period
    quota = r.cpu_quota
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
    if r.cpu_shares < 0:
        raise ValueError("Invalid value for CpuShares: it must not be negative")
    weight = r.blkio_weight
    if weight and not 10 <= weight <= 1000:
        raise ValueError("Range of blkio weight is from 10 to 1000")
    kmem = r.kernel_memory
    if kmem < 0 or 0 < kmem < MIN_KERNEL_MEMORY:
        raise ValueError("Minimum kernel memory limit allowed is 4MB")
    for kind, value in (("cpus", r.cpuset_cpus), ("mems", r.cpuset_mems)):
        if value and not CPUSET.match(value):
            raise ValueError(f"Invalid value {value} for cpuset {kind}")
    for w in r.blkio_weight_device:
        if w.weight and not 10 <= w.weight <= 1000:
            raise ValueError(f"{field_name(WEIGHT_DEVICE)}: invalid weight {w.weight} for "
                             f"device {w.path}: the range is from 10 to 1000")




def check(host_config: Mapping[str, Any], cgroups: CgroupDriver | None) -> Resources:
    """The daemon's check at create and update: Docker's, then the driver's."""
    _refuse_unhonoured(host_config)
    resources = resources_from(host_config)
    validate(resources)
    if cgroups is not None:
        cgroups.validate(resources)
    if parent := host_config.get("CgroupParent"):
        check_parent(str(parent), cgroups)
    return resources


def check_parent(parent: str, cgroups: Any) -> None:
    """A container's own cgroup parent, if its driver can place it there."""
    check = getattr(cgroups, "check_parent", None)
    if check is None:
        # a parent asked for is never silently dropped
        raise ValueError(
            f"CgroupParent {parent!r}: the cgroup driver cannot place a container under "
            "a parent of its own; set daemon.json cgroup-parent for all containers")
    check(parent)


def _refuse_unhonoured(hc: Mapping[str, Any]) -> None:
    """Resources skiff cannot apply yet are refused, never silently dropped."""
    if hc.get("IOMaximumBandwidth") or hc.get("IOMaximumIOps"):
        # dockerd's words
        raise ValueError("Invalid QoS settings: linux does not support Maximum IO Bandwidth "
                         "or Maximum IO IOps")
    if hc.get("CpuCount") or hc.get("CpuPercent"):
        raise ValueError("CpuCount and CpuPercent are Windows-only; on Linux use --cpus "
                         "(NanoCpus) or --cpu-quota")
    if hc.get("DeviceRequests"):
        raise ValueError("DeviceRequests (--gpus): no device driver is installed in skiff; "
                         "pass devices with --device")


def field_name(field: str) -> str:
    """How an error names a per-device field: the CLI flag and the HostConfig field."""
    return f"{_FLAGS[field]} ({field})" if field in _FLAGS else field


def _entries(host_config: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    value = host_config.get(field) or []
    if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
        raise ValueError(f"{field_name(field)} must be a list of objects")
    return value


def _number(field: str, entry: Mapping[str, Any], key: str) -> int:
    value = entry.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field_name(field)}: invalid {key} {value!r} for device "
                         f"{entry.get('Path')}: expected a non-negative integer")
    return value


def _path(entry: Mapping[str, Any]) -> str:
    # checked as a device node by the driver, which says what is wrong with it
    path = entry.get("Path")
    return path if isinstance(path, str) else ""


def _throttles(host_config: Mapping[str, Any], field: str) -> tuple[ThrottleDevice, ...]:
    return tuple(ThrottleDevice(_path(e), _number(field, e, "Rate"))
                 for e in _entries(host_config, field))


def _device_rules(host_config: Mapping[str, Any]) -> tuple[str, ...]:
    rules = host_config.get("DeviceCgroupRules") or []
    if not isinstance(rules, list):
        raise ValueError("DeviceCgroupRules must be a list of rules such as 'c 1:3 rwm'")
    # a non-string fails the driver's parse with the rule shown as written
    return tuple(rule if isinstance(rule, str) else str(rule) for rule in rules)


def resources_from(host_config: Mapping[str, Any]) -> Resources:
    """HostConfig's resource fields as :class:`Resources`; ``ValueError`` for
    a value of the wrong type (Docker's range checks are :func:`validate`'s)."""
    hc = host_config
    swappiness = hc.get("MemorySwappiness")
    weights = tuple(WeightDevice(_path(e), _number(WEIGHT_DEVICE, e, "Weight"))
                    for e in _entries(hc, WEIGHT_DEVICE))
    return Resources(
        memory=as_int(hc, "Memory"),
        memory_swap=as_int(hc, "MemorySwap"),
        memory_reservation=as_int(hc, "MemoryReservation"),
        memory_swappiness=None if swappiness is None else as_int(hc, "MemorySwappiness"),
        oom_kill_disable=bool(hc.get("OomKillDisable")),
        kernel_memory=as_int(hc, "KernelMemory"),
        pids_limit=as_int(hc, "PidsLimit"),
        cpu_shares=as_int(hc, "CpuShares"),
        nano_cpus=as_int(hc, "NanoCpus"),
        cpu_period=as_int(hc, "CpuPeriod"),
        cpu_quota=as_int(hc, "CpuQuota"),
        cpuset_cpus=str(hc.get("CpusetCpus") or ""),
        cpuset_mems=str(hc.get("CpusetMems") or ""),
        blkio_weight=as_int(hc, "BlkioWeight"),
        blkio_weight_device=weights,
        blkio_device_read_bps=_throttles(hc, "BlkioDeviceReadBps"),
        blkio_device_write_bps=_throttles(hc, "BlkioDeviceWriteBps"),
        blkio_device_read_iops=_throttles(hc, "BlkioDeviceReadIOps"),
        blkio_device_write_iops=_throttles(hc, "BlkioDeviceWriteIOps"),
        devices=tuple(DeviceMapping(*hostdevices.check_mapping(m))
                      for m in hc.get("Devices") or []),
        device_cgroup_rules=_device_rules(hc),
        privileged=bool(hc.get("Privileged")),
    )
