"""Resource stats and live updates of a container: the data behind
``GET /containers/{id}/stats`` and ``POST /containers/{id}/update``.

The counters come from the cgroup driver (cpu, memory, pids, blkio) and from
the kernel's per-namespace interface table (``/proc/<pid>/net/dev``); the shape
is Docker's ``types.StatsJSON`` so ``docker stats`` computes its percentages
from it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from skiff.core.containers.model import Container
from skiff.core.containers.netns import namespace_of
from skiff.core.errors import Conflict, InvalidParameter
from skiff.core.hookspecs import CgroupDriver, NetworkDriver
from skiff.core.timefmt import rfc3339

ZERO_TIME = "0001-01-01T00:00:00Z"

_NET_FIELDS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
               "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")
#: column of each field in /proc/net/dev (receive: 0-7, transmit: 8-15)
_NET_COLUMNS = (0, 1, 2, 3, 8, 9, 10, 11)

_BLKIO_KEYS = ("io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
               "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive",
               "io_time_recursive", "sectors_recursive")

#: HostConfig fields ``docker update`` may change, as Docker's UpdateContainer
_INT_FIELDS = ("BlkioWeight", "CpuShares", "NanoCpus", "CpuPeriod", "CpuQuota",
               "CpuRealtimePeriod", "CpuRealtimeRuntime", "Memory", "MemorySwap",
               "MemoryReservation", "KernelMemory")
_STR_FIELDS = ("CpusetCpus", "CpusetMems")


def empty_cpu_stats() -> dict[str, Any]:
    return {
        "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def empty_stats(c: Container) -> dict[str, Any]:
    """What Docker answers for a container that is not running: zeros, zero times."""
    return {
        "read": ZERO_TIME, "preread": ZERO_TIME,
        "pids_stats": {}, "blkio_stats": {k: None for k in _BLKIO_KEYS},
        "num_procs": 0, "storage_stats": {},
        "cpu_stats": empty_cpu_stats(), "precpu_stats": empty_cpu_stats(),
        "memory_stats": {}, "name": "/" + c.name, "id": c.id,
    }


def network_stats(pid: int) -> dict[str, dict[str, int]]:
    """Counters of every interface but ``lo`` in the network namespace of ``pid``."""
    out: dict[str, dict[str, int]] = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]  # two header lines
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        name = name.strip()
        values = rest.split()
        if name == "lo" or len(values) < 16:
            continue
        counters = {field: int(values[col]) for field, col in zip(_NET_FIELDS, _NET_COLUMNS,
                                                                 strict=True)}
        out[name] = counters
    return out


def sample(cgroups: CgroupDriver | None, network_driver: Callable[[str], NetworkDriver],
           c: Container, pid: int) -> dict[str, Any]:
    """One stats frame without ``preread``/``precpu_stats`` (blocking: call in a thread).

    ``cgroups`` gives the counters (None: no cgroup driver, none given);
    ``network_driver`` tells whether ``c`` has a network namespace of its own.
    """
    frame = empty_stats(c)
    frame["read"] = rfc3339(time.time())
    if cgroups is not None:
        counters = cgroups.stats(c.id)
        for key in ("cpu_stats", "memory_stats", "pids_stats"):
            if key in counters:
                frame[key] = counters[key]
        blkio = counters.get("blkio_stats") or {}
        frame["blkio_stats"] = {k: blkio.get(k) or [] for k in _BLKIO_KEYS}
    if _own_netns(network_driver, c):
        # Docker reports no networks for --network host; "none" has only lo: {}
        frame["networks"] = network_stats(pid)
    return frame


def _own_netns(network_driver: Callable[[str], NetworkDriver], c: Container) -> bool:
    """Whether the container has a network namespace of its own (not host's,
    not another container's)."""
    try:
        return namespace_of(c.network_mode, network_driver).kind == "new"
    except LookupError:  # a network removed meanwhile: count it as its own
        return True


def merge_update(hc: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """The host config after ``docker update``; Docker's rules and messages.

    The CLI sends every field, zeros for those not given, so zero (or empty)
    means "unchanged"; ``PidsLimit`` is the exception: absent or null leaves it,
    0 or -1 lifts the limit.
    """
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    out = dict(hc)
    new = {k: body.get(k) or 0 for k in _INT_FIELDS}
    try:
        for k in _INT_FIELDS:
            new[k] = int(new[k])
    except (TypeError, ValueError):
        raise InvalidParameter(f"invalid value {body.get(k)!r} for {k}: expected an integer"
                               ) from None
    if new["NanoCpus"] > 0 and (int(hc.get("CpuPeriod") or 0) > 0
                                or int(hc.get("CpuQuota") or 0) > 0):
        raise Conflict("Conflicting options: Nano CPUs cannot be updated as CPU Period "
                       "has already been set")
    if (new["CpuPeriod"] > 0 or new["CpuQuota"] > 0) and int(hc.get("NanoCpus") or 0) > 0:
        raise Conflict("Conflicting options: CPU Period cannot be updated as NanoCPUs "
                       "has already been set")
    # KernelMemory passes: the cgroup driver's validate decides whether this
    # kernel can enforce it, and says why not
    old_swap = int(hc.get("MemorySwap") or 0)
    if new["Memory"] and old_swap > 0 and new["Memory"] > old_swap and not new["MemorySwap"]:
        raise Conflict("Memory limit should be smaller than already set memoryswap limit, "
                       "update the memoryswap at the same time")
    for k in _INT_FIELDS:
        if new[k]:
            out[k] = new[k]
    for k in _STR_FIELDS:
        if body.get(k):
            out[k] = str(body[k])
    if "PidsLimit" in body and body["PidsLimit"] is not None:
        out["PidsLimit"] = int(body["PidsLimit"])
    policy = body.get("RestartPolicy") or {}
    if policy.get("Name"):
        from skiff.core.containers.restart import validate as validate_restart

        if hc.get("AutoRemove") and policy["Name"] != "no":
            raise InvalidParameter("Restart policy cannot be updated because AutoRemove is "
                                   "enabled for the container")
        try:
            out["RestartPolicy"] = validate_restart(policy)
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from exc
    return out


def cgroup_procs(cgroups: Any, container_id: str) -> list[str]:
    """``ContainerSpec.cgroup_procs`` from a cgroup driver that can tell them
    (``procs_files`` is optional in the contract)."""
    files = getattr(cgroups, "procs_files", None)
    return list(files(container_id)) if files is not None else []
