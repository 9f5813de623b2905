"""Per-device block I/O limits of the ``cgroupfs`` driver.

HostConfig carries them with Docker's names: ``BlkioDeviceReadBps``,
``BlkioDeviceWriteBps``, ``BlkioDeviceReadIOps``, ``BlkioDeviceWriteIOps``
(``[{"Path": "/dev/sda", "Rate": N}]``, bytes or operations per second) and
``BlkioWeightDevice`` (``[{"Path": ..., "Weight": 10..1000}]``); the daemon
hands them over typed and checked (``Resources.blkio_device_read_bps`` ...).
The kernel names a device by major:minor, so each path is resolved with
``stat`` when the limits are checked and again when they are written (the
node may have been re-created since).

The functions here only plan: they return ``(file, value)`` pairs, one rule per
write as the kernel parses them, and leave the writing to the driver.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Any

from skiff.core.containers.limits import THROTTLE_FIELDS, WEIGHT_DEVICE, field_name
from skiff.core.hookspecs import Resources

#: HostConfig field, v1 file (under blkio), v2 io.max key, what the CLI flag is
THROTTLES = (
    ("BlkioDeviceReadBps", "blkio.throttle.read_bps_device", "rbps", "--device-read-bps"),
    ("BlkioDeviceWriteBps", "blkio.throttle.write_bps_device", "wbps", "--device-write-bps"),
    ("BlkioDeviceReadIOps", "blkio.throttle.read_iops_device", "riops", "--device-read-iops"),
    ("BlkioDeviceWriteIOps", "blkio.throttle.write_iops_device", "wiops",
     "--device-write-iops"),
)
#: v1 files for per-device weights: CFQ's, then BFQ's (kernel 5.0+ has only BFQ)
V1_WEIGHT_FILES = ("blkio.weight_device", "blkio.bfq.weight_device")
_IO_MAX_KEYS = ("rbps", "wbps", "riops", "wiops")

Device = tuple[int, int]


def block_device(field: str, path: Any) -> Device:
    """major:minor of the block device at ``path``; ``ValueError`` (a 400) otherwise."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{field_name(field)}: every entry needs a device Path")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{field_name(field)}: cannot use {path}: {exc.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(
            f"{field_name(field)}: {path} is not a block device; I/O limits apply to block "
            "devices such as /dev/sda or /dev/loop0"
        )
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def throttles(resources: Resources) -> dict[str, dict[Device, int]]:
    """HostConfig field -> {device: rate}; the last entry for a device wins."""
    out: dict[str, dict[Device, int]] = {}
    for field, _, _, _ in THROTTLES:
        entries = getattr(resources, THROTTLE_FIELDS[field][0])
        out[field] = {block_device(field, t.path): t.rate for t in entries}
    return out


def weights(resources: Resources) -> dict[Device, int]:
    """{device: weight} of ``BlkioWeightDevice`` (core checked the range; 0 drops it)."""
    return {block_device(WEIGHT_DEVICE, w.path): w.weight
            for w in resources.blkio_weight_device}


def validate(resources: Resources) -> None:
    """Every device path a block device."""
    throttles(resources)
    weights(resources)


def _v1_rules(path: str) -> dict[Device, int]:
    """The ``MAJ:MIN value`` lines of a v1 blkio file (empty if unreadable)."""
    out: dict[Device, int] = {}
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            dev, _, value = line.strip().partition(" ")
            major, _, minor = dev.partition(":")
            with contextlib.suppress(ValueError):
                out[(int(major), int(minor))] = int(value)
    return out


def v1_writes(group: str | None, resources: Resources,
              fresh: bool) -> list[tuple[str, str]]:
    """What to write in the container's v1 blkio group.

    On a group that is not fresh (an update, a group left by a dead daemon),
    rules no longer wanted are cleared (a v1 rule of 0 removes it).
    """
    plan: list[tuple[str, str]] = []
    wanted_throttles = throttles(resources)
    wanted_weights = weights(resources)
    for field, name, _, flag in THROTTLES:
        rules = wanted_throttles[field]
        if not rules and fresh:
            continue
        target = os.path.join(group, name) if group else None
        if target is None or not os.path.exists(target):
            if not rules:
                continue
            raise ValueError(f"{flag}: the kernel has no {name} (blkio throttling needs "
                             "CONFIG_BLK_DEV_THROTTLING and the blkio controller mounted)")
        stale = [] if fresh else [d for d in _v1_rules(target) if d not in rules]
        plan += [(target, f"{major}:{minor} 0") for major, minor in stale]
        plan += [(target, f"{major}:{minor} {rate}") for (major, minor), rate in rules.items()]
    if wanted_weights or not fresh:
        files = [os.path.join(group, n) for n in V1_WEIGHT_FILES] if group else []
        target = next((f for f in files if os.path.exists(f)), None)
        if target is None:
            if wanted_weights:
                raise ValueError("--blkio-weight-device: the kernel has no blkio.weight_device"
                                 " (needs the CFQ or BFQ I/O scheduler's blkio weights)")
        else:
            # a weight of 0 removes a device's rule
            stale = [] if fresh else [d for d in _v1_rules(target) if d not in wanted_weights]
            plan += [(target, f"{major}:{minor} 0") for major, minor in stale]
            plan += [(target, f"{major}:{minor} {w}") for (major, minor), w in
                     wanted_weights.items()]
    return plan


def _io_max(path: str) -> set[Device]:
    out: set[Device] = set()
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            major, _, minor = line.split(" ", 1)[0].partition(":")
            with contextlib.suppress(ValueError):
                out.add((int(major), int(minor)))
    return out


def v2_writes(group: str, resources: Resources,
              fresh: bool) -> list[tuple[str, str]]:
    """What to write in the container's v2 group: one ``io.max`` line per device
    (``MAJ:MIN rbps=N wbps=max riops=max wiops=max``: each key set, 0 meaning
    no limit) and ``BlkioWeightDevice`` in ``io.bfq.weight`` or ``io.weight``."""
    plan: list[tuple[str, str]] = []
    per_device: dict[Device, dict[str, int]] = {}
    for field, rules in throttles(resources).items():
        key = next(k for f, _, k, _ in THROTTLES if f == field)
        for dev, rate in rules.items():
            per_device.setdefault(dev, {})[key] = rate
    io_max = os.path.join(group, "io.max")
    stale = set() if fresh else _io_max(io_max) - set(per_device)
    if per_device or stale:
        if not os.path.exists(io_max):
            raise ValueError(f"the io controller of cgroup v2 is not available under "
                             f"{os.path.dirname(group)}, so io.max cannot be set")
        for major, minor in sorted(stale):
            plan.append((io_max, f"{major}:{minor} " + " ".join(f"{k}=max"
                                                                for k in _IO_MAX_KEYS)))
        for (major, minor), limits in per_device.items():
            values = " ".join(f"{k}={limits.get(k) or 'max'}" for k in _IO_MAX_KEYS)
            plan.append((io_max, f"{major}:{minor} {values}"))
    wanted = weights(resources)
    if wanted:
        bfq = os.path.join(group, "io.bfq.weight")
        if os.path.exists(bfq):
            # BFQ takes Docker's 10..1000 scale as it is
            plan += [(bfq, f"{major}:{minor} {w or 'default'}")
                     for (major, minor), w in wanted.items()]
        elif os.path.exists(os.path.join(group, "io.weight")):
            # runc's mapping of blkio weight [10, 1000] onto io.weight [1, 10000]
            plan += [(os.path.join(group, "io.weight"),
                      f"{major}:{minor} " + (str(1 + (w - 10) * 9999 // 990) if w else "default"))
                     for (major, minor), w in wanted.items()]
        else:
            raise ValueError("--blkio-weight-device: neither io.bfq.weight nor io.weight "
                             f"exists under {group} (the io controller with BFQ or iocost)")
    return plan
