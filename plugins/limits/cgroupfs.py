"""The ``cgroupfs`` cgroup driver: containers' groups written straight to cgroupfs.

Like Docker's ``cgroupfs`` driver, each container gets a group named after its
id under the daemon's ``cgroup-parent`` (default ``skiff``):

* cgroup v1 (one hierarchy per controller, as on this machine):
  ``<mount of each controller>/<parent>/<id>``, for every mounted controller
  hierarchy (named ones such as ``name=systemd`` are left alone);
* cgroup v2 (unified, ``/sys/fs/cgroup/cgroup.controllers`` exists):
  ``/sys/fs/cgroup/<parent>/<id>``, with the controllers enabled in every
  ancestor's ``cgroup.subtree_control``.

The parent groups are created on demand and removed when their last
container's group goes, so an idle daemon leaves nothing in ``/sys/fs/cgroup``.

``resources`` are HostConfig fields with Docker's names and units:
``Memory``, ``MemorySwap`` (0: twice ``Memory``, as Docker; -1: unlimited),
``MemoryReservation``, ``MemorySwappiness``, ``OomKillDisable``,
``PidsLimit``, ``CpuShares``, ``NanoCpus``, ``CpuPeriod``, ``CpuQuota``,
``CpusetCpus``, ``CpusetMems``, ``BlkioWeight``.  Zero or absent means no
limit.

Devices: Docker's allow-list plus ``Devices`` and ``DeviceCgroupRules``
(``device_rules``), every device when ``Privileged``.  v1 writes the rules to
``devices.deny``/``devices.allow``; v2 attaches an eBPF device program made
from them (``device_filter``), and a container whose program cannot be
attached is refused.  Both are set once, when the group is created:
``docker update`` changes no device rule and keeps the filter.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from skiff.core.hookspecs import CgroupContext, DriverNotSupported, MountSpec, hookimpl
from skiff.plugins.limits import _blkio, device_filter, device_rules

NAME = "cgroupfs"
CGROUP_ROOT = "/sys/fs/cgroup"

#: Docker's floor for ``--memory``
MIN_MEMORY = 6 * 1024 * 1024
#: Docker's floor for ``--kernel-memory``
MIN_KERNEL_MEMORY = 4 * 1024 * 1024
#: Docker's period for ``--cpus``, in microseconds
DEFAULT_CPU_PERIOD = 100_000
#: how long ``destroy`` waits for exiting processes to leave a group
RMDIR_TIMEOUT = 2.0
#: options of the mounts that show a container its own groups: it may read
#: its limits and counters but never write them
VIEW_OPTIONS = ["ro", "nosuid", "nodev", "noexec"]

_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str | int) -> None:
    """Write one value to a cgroup file; the error names the file and value."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open {path}: {exc.strerror}") from None
    try:
        os.write(fd, data)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {str(value)!r} to {path}: {exc.strerror}"
                      ) from None
    finally:
        os.close(fd)


def _int(resources: Mapping[str, Any], key: str) -> int:
    value = resources.get(key)
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid value {value!r} for {key}: expected an integer") from None


def _keyvals(path: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat) as a dict; empty if absent."""
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    with contextlib.suppress(ValueError):
                        out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def _int_file(path: str, default: int = 0) -> int:
    try:
        text = _read(path)
    except OSError:
        return default
    if text == "max":
        return default
    try:
        return int(text)
    except ValueError:
        return default


def parse_cpuset(text: str) -> set[int]:
    """The numbers of a cpuset list (``0-3,5``)."""
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _check_cpuset(kind: str, value: str, available: str) -> None:
    # Docker's messages, word for word, so scripts matching them keep working
    if not _CPUSET.match(value):
        raise ValueError(f"Invalid value {value} for cpuset {kind}")
    if available and not parse_cpuset(value) <= parse_cpuset(available):
        what = "CPUs" if kind == "cpus" else "memory nodes"
        raise ValueError(
            f"Requested {what} are not available - requested {value}, available: {available}"
        )


def _check_name(what: str, name: str) -> str:
    parts = [p for p in name.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid {what} {name!r}: expected a relative cgroup path")
    return "/".join(parts)


def _check_id(container_id: str) -> str:
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise ValueError(f"invalid container id {container_id!r} for a cgroup name")
    return container_id


def _read_pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return sorted(int(x) for x in f.read().split())
    except FileNotFoundError:
        return []


def _wait_for(check: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _system_cpu_usage() -> int:
    """Docker's ``system_cpu_usage``: host CPU time in nanoseconds (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                ticks = sum(int(x) for x in line.split()[1:8])
                return ticks * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))
    return 0


def _machine_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def validate(resources: Mapping[str, Any], ncpu: int | None = None) -> None:
    """Docker's checks of HostConfig's resources; ``ValueError`` with its messages.

    The daemon may call this at container create, so a bad value is a 400
    then rather than a failed start.
    """
    ncpu = ncpu or os.cpu_count() or 1
    memory = _int(resources, "Memory")
    swap = _int(resources, "MemorySwap")
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
    reservation = _int(resources, "MemoryReservation")
    if memory > 0 and reservation > memory:
        raise ValueError(
            "Minimum memory limit can not be less than memory reservation limit, see usage"
        )
    swappiness = resources.get("MemorySwappiness")
    if swappiness is not None and swappiness != -1 and not 0 <= int(swappiness) <= 100:
        raise ValueError(
            f"Invalid value: {swappiness}, valid memory swappiness range is 0-100"
        )
    nano = _int(resources, "NanoCpus")
    period = _int(resources, "CpuPeriod")
    quota = _int(resources, "CpuQuota")
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
    if _int(resources, "CpuShares") < 0:
        raise ValueError("Invalid value for CpuShares: it must not be negative")
    weight = _int(resources, "BlkioWeight")
    if weight and not 10 <= weight <= 1000:
        raise ValueError("Range of blkio weight is from 10 to 1000")
    _blkio.validate(resources)
    kmem = _int(resources, "KernelMemory")
    if kmem < 0 or 0 < kmem < MIN_KERNEL_MEMORY:
        raise ValueError("Minimum kernel memory limit allowed is 4MB")
    device_rules.check(resources)
    for key in ("CpusetCpus", "CpusetMems"):
        value = resources.get(key) or ""
        if value and not _CPUSET.match(value):
            raise ValueError(f"Invalid value {value} for cpuset {key[6:].lower()}")


def _probe_kmem(memory_root: str | None) -> str | None:
    """Why a v1 kernel memory limit would not work under ``memory_root`` (None: it would)."""
    if memory_root is None:
        return "the memory cgroup controller is not mounted"
    probe = os.path.join(memory_root, f"skiff-kmem-probe-{os.getpid()}-{threading.get_ident()}")
    os.mkdir(probe, 0o755)
    try:
        target = os.path.join(probe, "memory.kmem.limit_in_bytes")
        if not os.path.exists(target):
            return ("this kernel has no memory.kmem.limit_in_bytes (built without kernel "
                    "memory accounting, or the file was removed)")
        wanted = 64 * 1024 * 1024
        try:
            _write(target, wanted)
        except OSError as exc:
            return (f"this kernel refuses memory.kmem.limit_in_bytes "
                    f"({os.strerror(exc.errno) if exc.errno else exc}; "
                    f"disabled since Linux 5.16)")
        if _int_file(target) != wanted:
            return (f"this kernel ({os.uname().release}) accepts writes to "
                    "memory.kmem.limit_in_bytes but ignores them (deprecated: a write has "
                    "no effect)")
        return None
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(probe)


def _cpu_limit(resources: Mapping[str, Any]) -> tuple[int, int]:
    """``(quota, period)`` in microseconds; quota -1 when unlimited."""
    nano = _int(resources, "NanoCpus")
    if nano:
        return nano * DEFAULT_CPU_PERIOD // 1_000_000_000, DEFAULT_CPU_PERIOD
    quota = _int(resources, "CpuQuota")
    period = _int(resources, "CpuPeriod") or DEFAULT_CPU_PERIOD
    return (quota if quota > 0 else -1), period


def _swap_total(resources: Mapping[str, Any]) -> int:
    """Memory plus swap in bytes; -1 for unlimited, 0 for no setting."""
    memory = _int(resources, "Memory")
    swap = _int(resources, "MemorySwap")
    if swap == -1:
        return -1
    if swap > 0:
        return swap
    return 2 * memory if memory > 0 else 0  # Docker's default: as much swap as memory


def _rmdir_retry(path: str, deadline: float) -> None:
    """rmdir a group and any groups the container made inside it.

    Waits while the kernel still counts exiting tasks (EBUSY) until
    ``deadline``; never kills anything.
    """
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _rmdir_retry(entry.path, deadline)
    delay = 0.002
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise OSError(exc.errno, f"cannot remove cgroup {path}: {exc.strerror}"
                              ) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _mountinfo() -> Iterator[tuple[str, str, set[str]]]:
    """``(mount point, fstype, super options)`` of every cgroup mount."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                # octal escapes (\040) in mount points: cgroupfs paths never have them
                yield fields[4], rfields[0], set(rfields[2].split(","))


def v1_hierarchies() -> dict[str, str]:
    """Mounted v1 controller hierarchies: mount point -> comma-joined controllers.

    Named hierarchies (``name=systemd``) carry no controller and are skipped;
    a co-mounted ``cpu,cpuacct`` is one hierarchy.
    """
    options = {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode",
               "favordynmods", "nofavordynmods"}
    found: dict[str, str] = {}
    for point, fstype, opts in _mountinfo():
        if fstype != "cgroup" or any(o.startswith("name=") for o in opts):
            continue
        controllers = sorted(o for o in opts if o not in options and "=" not in o)
        if controllers and point not in found and point.startswith(CGROUP_ROOT + "/"):
            found[point] = ",".join(controllers)
    return found


def cgroup_version() -> int:
    """2 on a unified hierarchy, 1 otherwise (a hybrid host counts as v1)."""
    return 2 if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) else 1


# ---------------------------------------------------------------------------
# cgroup v1
# ---------------------------------------------------------------------------


class CgroupfsV1:
    """cgroupfs on per-controller (v1) hierarchies."""

    name = NAME
    version = 1

    def __init__(self, parent: str = "skiff") -> None:
        self.parent = _check_name("cgroup-parent", parent)
        hierarchies = v1_hierarchies()
        if not hierarchies:
            raise DriverNotSupported(
                f"no cgroup v1 controller is mounted under {CGROUP_ROOT}; "
                "mount the controllers or use cgroup v2"
            )
        #: controller -> its hierarchy's mount point
        self.controllers: dict[str, str] = {}
        for point, controllers in hierarchies.items():
            for c in controllers.split(","):
                self.controllers.setdefault(c, point)
        self.points = sorted(set(self.controllers.values()))
        # parents are created and removed under this lock, so a destroy that
        # empties the parent cannot race a create that is about to use it
        self._lock = threading.Lock()
        #: why --kernel-memory cannot work here (None: it can); probed on first use
        self._kmem_probed = False
        self._kmem_reason: str | None = None

    # -- paths -----------------------------------------------------------------

    def path(self, container_id: str, controller: str) -> str | None:
        """The container's group in ``controller``'s hierarchy (None: not mounted)."""
        point = self.controllers.get(controller)
        return os.path.join(point, self.parent, _check_id(container_id)) if point else None

    def paths(self, container_id: str) -> dict[str, str]:
        """Mount point -> the container's group there, for every hierarchy."""
        cid = _check_id(container_id)
        return {p: os.path.join(p, self.parent, cid) for p in self.points}

    def _mkdirs(self, point: str, rel: str) -> None:
        """Create ``point/rel`` level by level; cpuset levels inherit cpus and mems."""
        is_cpuset = point == self.controllers.get("cpuset")
        cur = point
        for part in rel.split("/"):
            above, cur = cur, os.path.join(cur, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(cur, 0o755)
            # a v1 cpuset group starts with empty cpus/mems and refuses tasks
            # until both are set; copy them down from the level above
            if is_cpuset:
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not _read(os.path.join(cur, f)):
                        _write(os.path.join(cur, f), _read(os.path.join(above, f)) or "\n")

    # -- the driver API --------------------------------------------------------

    def create(self, container_id: str, resources: Mapping[str, Any]) -> None:
        validate(resources)
        paths = self.paths(container_id)
        cid = _check_id(container_id)
        made: list[str] = []
        with self._lock:
            try:
                for point, path in paths.items():
                    existed = os.path.isdir(path)
                    self._mkdirs(point, f"{self.parent}/{cid}")
                    if not existed:
                        made.append(path)
                # groups left by a daemon that died: rewrite every value
                self._apply(container_id, resources, fresh=len(made) == len(paths))
                self._apply_devices(container_id, resources)
            except BaseException:
                # undo: nothing half-made stays behind
                for path in made:
                    with contextlib.suppress(OSError):
                        os.rmdir(path)
                self._remove_parents()
                raise

    def update(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """Rewrite every limit from ``resources``, the complete merged set."""
        validate(resources)
        self._apply(container_id, resources, fresh=False)

    def add_process(self, container_id: str, pid: int) -> None:
        for path in self.procs_files(container_id):
            _write(path, pid)

    def procs_files(self, container_id: str) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self.paths(container_id).values()]

    def destroy(self, container_id: str) -> None:
        deadline = time.monotonic() + RMDIR_TIMEOUT
        with self._lock:
            errors: list[OSError] = []
            for path in self.paths(container_id).values():
                try:
                    _rmdir_retry(path, deadline)
                except OSError as exc:
                    errors.append(exc)
            self._remove_parents()
        if errors:
            raise errors[0]

    def validate(self, resources: Mapping[str, Any]) -> None:
        """Docker's checks of ``resources``; ``ValueError`` with its messages."""
        validate(resources)
        if _int(resources, "KernelMemory"):
            self._check_kmem()

    def _check_kmem(self) -> None:
        """Refuse ``KernelMemory`` where the kernel would not enforce it.

        Probed once, on a scratch group at the top of the memory hierarchy:
        Linux 5.16 to 6.x refuse writes to ``memory.kmem.limit_in_bytes``
        (EOPNOTSUPP), later kernels keep the file but ignore what is written
        (the value read back is unchanged), and some kernels lack it.
        """
        if not self._kmem_probed:
            self._kmem_reason = _probe_kmem(self.controllers.get("memory"))
            self._kmem_probed = True
        if self._kmem_reason is not None:
            raise ValueError(
                f"Kernel memory limit is not supported: {self._kmem_reason}. Drop "
                "--kernel-memory: kernel memory is counted in --memory anyway, and "
                "Docker 20.10+ deprecates the option"
            )

    def mounts(self, container_id: str) -> list[MountSpec]:
        """A read-only copy of the host's ``/sys/fs/cgroup`` tmpfs (only its empty
        controller directories: the bind is not recursive), with the container's
        own group bound read-only on each controller's directory, as runc does."""
        if os.path.ismount(CGROUP_ROOT):
            out = [MountSpec("bind", CGROUP_ROOT, CGROUP_ROOT, list(VIEW_OPTIONS))]
        else:
            # the hierarchies sit on sysfs itself: a bind would hide their
            # directories, so make them on a tmpfs (which cannot be read-only
            # then: the binds below need their mount points made first)
            out = [MountSpec("tmpfs", "tmpfs", CGROUP_ROOT,
                             ["nosuid", "nodev", "noexec", "mode=755"])]
        for point, path in self.paths(container_id).items():
            out.append(MountSpec("bind", path, point, list(VIEW_OPTIONS)))
        return out

    def oom_killed(self, container_id: str) -> bool:
        """The ``oom_kill`` counter of ``memory.oom_control`` (kernel 4.13+)."""
        mem = self.path(container_id, "memory")
        if mem is None:
            return False
        return _keyvals(os.path.join(mem, "memory.oom_control")).get("oom_kill", 0) > 0

    # -- beyond the protocol: docker top, pause, unpause -------------------------

    def pids(self, container_id: str) -> list[int]:
        """Host pids of every process in the container's group (for ``docker top``)."""
        path = self.path(container_id, "pids") or self.path(container_id, "memory")
        if path is None:
            path = next(iter(self.paths(container_id).values()))
        return _read_pids(path)

    def freeze(self, container_id: str) -> None:
        """Freeze every process of the container (``docker pause``); waits until frozen."""
        state = self._freezer_state(container_id)
        _write(state, "FROZEN")
        _wait_for(lambda: _read(state) == "FROZEN", "freezing the container")

    def thaw(self, container_id: str) -> None:
        """Undo ``freeze`` (``docker unpause``)."""
        state = self._freezer_state(container_id)
        _write(state, "THAWED")
        _wait_for(lambda: _read(state) == "THAWED", "thawing the container")

    def _freezer_state(self, container_id: str) -> str:
        path = self.path(container_id, "freezer")
        if path is None:
            raise DriverNotSupported("the freezer cgroup controller is not mounted")
        return os.path.join(path, "freezer.state")

    def _remove_parents(self) -> None:
        """Remove the parent groups that no container uses any more."""
        levels = self.parent.split("/")
        for point in self.points:
            for n in range(len(levels), 0, -1):
                try:
                    os.rmdir(os.path.join(point, *levels[:n]))
                except OSError:
                    break  # still in use (ENOTEMPTY/EBUSY) or already gone

    # -- limits ----------------------------------------------------------------

    def _apply(self, container_id: str, r: Mapping[str, Any], fresh: bool) -> None:
        """Write the limits; on a fresh group, skip values that are the default."""
        mem = self.path(container_id, "memory")
        if mem:
            self._apply_memory(mem, r, fresh)
        cpu = self.path(container_id, "cpu")
        if cpu:
            shares = _int(r, "CpuShares")
            if shares or not fresh:
                _write(os.path.join(cpu, "cpu.shares"), shares or 1024)
            quota, period = _cpu_limit(r)
            if quota > 0 or not fresh:
                if not os.path.exists(os.path.join(cpu, "cpu.cfs_quota_us")):
                    raise ValueError("Your kernel does not support CPU CFS scheduler")
                # quota first to -1: a new period never conflicts with an old quota
                _write(os.path.join(cpu, "cpu.cfs_quota_us"), -1)
                _write(os.path.join(cpu, "cpu.cfs_period_us"), period)
                _write(os.path.join(cpu, "cpu.cfs_quota_us"), quota)
        cpuset = self.path(container_id, "cpuset")
        if cpuset:
            above = os.path.dirname(cpuset)
            for key, f in (("CpusetCpus", "cpuset.cpus"), ("CpusetMems", "cpuset.mems")):
                value = r.get(key) or ""
                if value:
                    available = _read(os.path.join(above, f))
                    _check_cpuset(f[7:], value, available)
                    _write(os.path.join(cpuset, f), value)
                elif not fresh:
                    _write(os.path.join(cpuset, f), _read(os.path.join(above, f)))
        pids = self.path(container_id, "pids")
        if pids:
            limit = _int(r, "PidsLimit")
            if limit > 0 or not fresh:
                _write(os.path.join(pids, "pids.max"), limit if limit > 0 else "max")
        blkio = self.path(container_id, "blkio")
        weight = _int(r, "BlkioWeight")
        if weight:
            files = [os.path.join(blkio, f) for f in ("blkio.weight", "blkio.bfq.weight")
                     ] if blkio else []
            target = next((f for f in files if os.path.exists(f)), None)
            if target is None:
                raise ValueError("Your kernel does not support Block I/O weight")
            _write(target, weight)
        for target, value in _blkio.v1_writes(blkio, r, fresh):
            _write(target, value)

    def _apply_devices(self, container_id: str, r: Mapping[str, Any]) -> None:
        """The rules in order; the kernel applies them (deny ``a`` first, so a
        group left by a daemon that died is rewritten from scratch)."""
        devices = self.path(container_id, "devices")
        rules = device_rules.container_rules(r)
        if devices is None:
            if rules == list(device_rules.PRIVILEGED_RULES):
                return
            # without the controller every device node would open: refuse
            raise device_filter.DeviceFilterError(
                errno.ENODEV, "the devices cgroup controller (v1) is not mounted under "
                f"{CGROUP_ROOT}, so the container's device access cannot be confined; mount "
                "it (mount -t cgroup -o devices devices /sys/fs/cgroup/devices)")
        for rule in rules:
            name = "devices.allow" if rule.allow else "devices.deny"
            _write(os.path.join(devices, name), rule.line())

    def _apply_memory(self, mem: str, r: Mapping[str, Any], fresh: bool) -> None:
        memory = _int(r, "Memory")
        limit = memory if memory > 0 else -1
        memsw_file = os.path.join(mem, "memory.memsw.limit_in_bytes")
        total = _swap_total(r) if os.path.exists(memsw_file) else 0
        # without swap accounting there is no memsw file and swap is not limited,
        # as with Docker on such a kernel
        swap = None
        if os.path.exists(memsw_file) and (total or not fresh):
            swap = total or -1
        if memory > 0 or not fresh:
            # the kernel keeps limit <= memsw limit at every step, so the order
            # depends on whether the limits grow or shrink: try one, then the other
            limit_file = os.path.join(mem, "memory.limit_in_bytes")
            try:
                _write(limit_file, limit)
                if swap is not None:
                    _write(memsw_file, swap)
            except OSError as exc:
                if exc.errno != errno.EINVAL or swap is None:
                    raise
                _write(memsw_file, swap)
                _write(limit_file, limit)
        reservation = _int(r, "MemoryReservation")
        if reservation or not fresh:
            _write(os.path.join(mem, "memory.soft_limit_in_bytes"), reservation or -1)
        swappiness = r.get("MemorySwappiness")
        if swappiness is not None and int(swappiness) >= 0:
            _write(os.path.join(mem, "memory.swappiness"), int(swappiness))
        if r.get("OomKillDisable") or not fresh:
            _write(os.path.join(mem, "memory.oom_control"), 1 if r.get("OomKillDisable") else 0)
        kmem = _int(r, "KernelMemory")
        if kmem and not self._kmem_probed:
            with contextlib.suppress(ValueError):
                self._check_kmem()
        # validate() refused KernelMemory at create where it cannot work; a
        # container saved with one by an older skiff still starts, without it
        if self._kmem_probed and self._kmem_reason is None and (kmem or not fresh):
            _write(os.path.join(mem, "memory.kmem.limit_in_bytes"), kmem or -1)

    # -- stats -----------------------------------------------------------------

    def stats(self, container_id: str) -> dict[str, Any]:
        """Docker's stats fields for v1: cpu_stats, memory_stats, pids_stats, blkio_stats."""
        out: dict[str, Any] = {}
        acct = self.path(container_id, "cpuacct")
        cpu = self.path(container_id, "cpu")
        if acct or cpu:
            usage: dict[str, Any] = {}
            if acct:
                usage["total_usage"] = _int_file(os.path.join(acct, "cpuacct.usage"))
                try:
                    usage["percpu_usage"] = [
                        int(x) for x in _read(os.path.join(acct, "cpuacct.usage_percpu")).split()
                    ]
                except OSError:
                    usage["percpu_usage"] = []
                usage["usage_in_kernelmode"] = _int_file(os.path.join(acct, "cpuacct.usage_sys"))
                usage["usage_in_usermode"] = _int_file(os.path.join(acct, "cpuacct.usage_user"))
            throttle = _keyvals(os.path.join(cpu, "cpu.stat")) if cpu else {}
            out["cpu_stats"] = {
                "cpu_usage": usage,
                "system_cpu_usage": _system_cpu_usage(),
                "online_cpus": os.cpu_count() or 1,
                "throttling_data": {
                    "periods": throttle.get("nr_periods", 0),
                    "throttled_periods": throttle.get("nr_throttled", 0),
                    "throttled_time": throttle.get("throttled_time", 0),
                },
            }
        mem = self.path(container_id, "memory")
        if mem:
            limit = _int_file(os.path.join(mem, "memory.limit_in_bytes"))
            machine = _machine_memory()
            if machine and limit > machine:
                limit = machine  # unlimited: Docker reports the host's memory
            out["memory_stats"] = {
                "usage": _int_file(os.path.join(mem, "memory.usage_in_bytes")),
                "max_usage": _int_file(os.path.join(mem, "memory.max_usage_in_bytes")),
                "failcnt": _int_file(os.path.join(mem, "memory.failcnt")),
                "limit": limit,
                "stats": _keyvals(os.path.join(mem, "memory.stat")),
            }
        pids = self.path(container_id, "pids")
        if pids:
            out["pids_stats"] = {"current": _int_file(os.path.join(pids, "pids.current"))}
            limit = _int_file(os.path.join(pids, "pids.max"))
            if limit:
                out["pids_stats"]["limit"] = limit
        blkio = self.path(container_id, "blkio")
        if blkio:
            out["blkio_stats"] = {
                "io_service_bytes_recursive": self._blkio(
                    blkio, "blkio.io_service_bytes_recursive",
                    "blkio.throttle.io_service_bytes_recursive"),
                "io_serviced_recursive": self._blkio(
                    blkio, "blkio.io_serviced_recursive",
                    "blkio.throttle.io_serviced_recursive"),
            }
        return out

    @staticmethod
    def _blkio(group: str, *names: str) -> list[dict[str, Any]]:
        for name in names:
            try:
                text = _read(os.path.join(group, name))
            except OSError:
                continue
            entries = []
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and ":" in parts[0]:
                    major, minor = parts[0].split(":")
                    entries.append({"major": int(major), "minor": int(minor),
                                    "op": parts[1], "value": int(parts[2])})
            return entries
        return []


# ---------------------------------------------------------------------------
# cgroup v2
# ---------------------------------------------------------------------------


class CgroupfsV2:
    """cgroupfs on the unified (v2) hierarchy."""

    name = NAME
    version = 2

    def __init__(self, parent: str = "skiff", root: str = CGROUP_ROOT) -> None:
        self.parent = _check_name("cgroup-parent", parent)
        self.root = root
        self._lock = threading.Lock()
        #: device programs loaded once, attached to every group that needs them
        self._programs = device_filter.Programs()

    def path(self, container_id: str) -> str:
        """The container's group."""
        return os.path.join(self.root, self.parent, _check_id(container_id))

    def paths(self, container_id: str) -> dict[str, str]:
        return {self.root: self.path(container_id)}

    def _mkdirs(self) -> None:
        """Create the parent levels, enabling the controllers all the way down."""
        cur = self.root
        for part in [*self.parent.split("/"), None]:
            available = set(_read(os.path.join(cur, "cgroup.controllers")).split())
            enabled = set(_read(os.path.join(cur, "cgroup.subtree_control")).split())
            for c in _V2_CONTROLLERS:
                if c in available and c not in enabled:
                    # one at a time: a controller the kernel refuses here (cpu with
                    # realtime tasks around) must not keep the others off; a limit
                    # that needs it then fails in _apply, naming it
                    with contextlib.suppress(OSError):
                        _write(os.path.join(cur, "cgroup.subtree_control"), f"+{c}")
            if part is None:
                break
            cur = os.path.join(cur, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(cur, 0o755)

    def create(self, container_id: str, resources: Mapping[str, Any]) -> None:
        validate(resources)
        path = self.path(container_id)
        with self._lock:
            made = False
            try:
                self._mkdirs()
                try:
                    os.mkdir(path, 0o755)
                    made = True
                except FileExistsError:
                    pass
                self._apply(path, resources, fresh=made)
                # before any process can join: the filter is there from the first exec
                device_filter.install(
                    path, device_filter.program_for(device_rules.container_rules(resources)),
                    self._programs)
            except BaseException:
                if made:
                    with contextlib.suppress(OSError):
                        os.rmdir(path)
                self._remove_parents()
                raise

    def update(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """Rewrite every limit from ``resources``, the complete merged set."""
        validate(resources)
        self._apply(self.path(container_id), resources, fresh=False)

    def add_process(self, container_id: str, pid: int) -> None:
        _write(os.path.join(self.path(container_id), "cgroup.procs"), pid)

    def procs_files(self, container_id: str) -> list[str]:
        return [os.path.join(self.path(container_id), "cgroup.procs")]

    def destroy(self, container_id: str) -> None:
        path = self.path(container_id)
        with self._lock:
            try:
                _rmdir_retry(path, time.monotonic() + RMDIR_TIMEOUT)
            finally:
                self._remove_parents()

    def validate(self, resources: Mapping[str, Any]) -> None:
        """Docker's checks of ``resources``; ``ValueError`` with its messages."""
        validate(resources)
        if _int(resources, "KernelMemory"):
            raise ValueError(
                "Kernel memory limit is not supported on cgroup v2: it has no separate "
                "kernel memory limit, kernel memory is counted in memory.max (--memory). "
                "Drop --kernel-memory (Docker 20.10+ deprecates it)"
            )

    def mounts(self, container_id: str) -> list[MountSpec]:
        """The container's group bound read-only at ``/sys/fs/cgroup``.

        Together with the private cgroup namespace the init enters at "go",
        this is what a cgroup2 mount made inside that namespace would show.
        """
        return [MountSpec("bind", self.path(container_id), CGROUP_ROOT, list(VIEW_OPTIONS))]

    def oom_killed(self, container_id: str) -> bool:
        """The ``oom_kill`` counter of the group's ``memory.events``."""
        events = os.path.join(self.path(container_id), "memory.events")
        return _keyvals(events).get("oom_kill", 0) > 0

    def pids(self, container_id: str) -> list[int]:
        """Host pids of every process in the container's group (for ``docker top``)."""
        return _read_pids(self.path(container_id))

    def freeze(self, container_id: str) -> None:
        """Freeze every process of the container (``docker pause``); waits until frozen."""
        self._set_frozen(container_id, True)

    def thaw(self, container_id: str) -> None:
        """Undo ``freeze`` (``docker unpause``)."""
        self._set_frozen(container_id, False)

    def _set_frozen(self, container_id: str, frozen: bool) -> None:
        path = self.path(container_id)
        _write(os.path.join(path, "cgroup.freeze"), int(frozen))
        want = f"frozen {int(frozen)}"
        _wait_for(lambda: want in _read(os.path.join(path, "cgroup.events")).splitlines(),
                  "freezing the container" if frozen else "thawing the container")

    def _remove_parents(self) -> None:
        levels = self.parent.split("/")
        for n in range(len(levels), 0, -1):
            try:
                os.rmdir(os.path.join(self.root, *levels[:n]))
            except OSError:
                break

    def _apply(self, path: str, r: Mapping[str, Any], fresh: bool) -> None:
        """Write the limits; on a fresh group, skip values that are the default.

        A limit asked for whose controller is not enabled here is an error
        naming the controller; an unset one is skipped silently.
        """

        def file(name: str, wanted: bool) -> str | None:
            full = os.path.join(path, name)
            if os.path.exists(full):
                return full
            if wanted:
                controller = name.split(".")[0]
                raise ValueError(
                    f"the {controller} controller of cgroup v2 is not available under "
                    f"{os.path.dirname(path)}, so {name} cannot be set"
                )
            return None

        memory = _int(r, "Memory")
        if f := file("memory.max", memory > 0):
            if memory > 0 or not fresh:
                _write(f, memory if memory > 0 else "max")
            total = _swap_total(r)
            swap_file = os.path.join(path, "memory.swap.max")
            if (total or not fresh) and os.path.exists(swap_file):
                # v2 limits swap alone, Docker's MemorySwap is memory plus swap
                _write(swap_file, "max" if total <= 0 else max(total - memory, 0))
            reservation = _int(r, "MemoryReservation")
            if reservation or not fresh:
                _write(os.path.join(path, "memory.low"), reservation)
        shares = _int(r, "CpuShares")
        quota, period = _cpu_limit(r)
        if (f := file("cpu.weight", shares > 0)) and (shares or not fresh):
            # runc's mapping of shares [2, 262144] onto weight [1, 10000]
            shares = min(max(shares or 1024, 2), 262144)
            _write(f, 1 + ((shares - 2) * 9999) // 262142)
        if (f := file("cpu.max", quota > 0)) and (quota > 0 or not fresh):
            _write(f, f"{quota if quota > 0 else 'max'} {period}")
        for key, name in (("CpusetCpus", "cpuset.cpus"), ("CpusetMems", "cpuset.mems")):
            value = r.get(key) or ""
            if (f := file(name, bool(value))) and (value or not fresh):
                if value:
                    above = os.path.join(os.path.dirname(path), f"{name}.effective")
                    available = _read(above) if os.path.exists(above) else ""
                    _check_cpuset(name[7:], value, available)
                _write(f, value or "\n")  # empty: inherit the parent's
        limit = _int(r, "PidsLimit")
        if (f := file("pids.max", limit > 0)) and (limit > 0 or not fresh):
            _write(f, limit if limit > 0 else "max")
        weight = _int(r, "BlkioWeight")
        if weight:
            if not os.path.exists(os.path.join(path, "io.weight")):
                raise ValueError("Your kernel does not support Block I/O weight")
            # runc's mapping of blkio weight [10, 1000] onto io.weight [1, 10000]
            _write(os.path.join(path, "io.weight"), 1 + (weight - 10) * 9999 // 990)
        for target, value in _blkio.v2_writes(path, r, fresh):
            _write(target, value)

    def stats(self, container_id: str) -> dict[str, Any]:
        """Docker's stats fields for v2 (no percpu usage, no max_usage)."""
        path = self.path(container_id)
        cpu = _keyvals(os.path.join(path, "cpu.stat"))
        out: dict[str, Any] = {
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": cpu.get("usage_usec", 0) * 1000,
                    "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
                    "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
                },
                "system_cpu_usage": _system_cpu_usage(),
                "online_cpus": os.cpu_count() or 1,
                "throttling_data": {
                    "periods": cpu.get("nr_periods", 0),
                    "throttled_periods": cpu.get("nr_throttled", 0),
                    "throttled_time": cpu.get("throttled_usec", 0) * 1000,
                },
            }
        }
        if os.path.exists(os.path.join(path, "memory.current")):
            machine = _machine_memory()
            limit = _int_file(os.path.join(path, "memory.max"), machine)
            out["memory_stats"] = {
                "usage": _int_file(os.path.join(path, "memory.current")),
                "limit": min(limit, machine) if machine else limit,
                "stats": _keyvals(os.path.join(path, "memory.stat")),
            }
        if os.path.exists(os.path.join(path, "pids.current")):
            out["pids_stats"] = {"current": _int_file(os.path.join(path, "pids.current"))}
            limit = _int_file(os.path.join(path, "pids.max"))
            if limit:
                out["pids_stats"]["limit"] = limit
        entries: list[dict[str, Any]] = []
        with contextlib.suppress(OSError), open(os.path.join(path, "io.stat")) as f:
            for line in f:
                dev, *fields = line.split()
                major, _, minor = dev.partition(":")
                kv = dict(x.split("=", 1) for x in fields if "=" in x)
                for op, key in (("read", "rbytes"), ("write", "wbytes")):
                    if key in kv:
                        entries.append({"major": int(major), "minor": int(minor),
                                        "op": op, "value": int(kv[key])})
        out["blkio_stats"] = {"io_service_bytes_recursive": entries}
        return out


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def cgroupfs_factory(ctx: CgroupContext) -> CgroupfsV1 | CgroupfsV2:
    """The driver for this host's cgroup layout (v2 if unified, else v1)."""
    parent = ctx.parent or "skiff"
    return CgroupfsV2(parent) if cgroup_version() == 2 else CgroupfsV1(parent)


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_cgroup_drivers() -> dict[str, object]:
    return {NAME: cgroupfs_factory}
