"""The ``cgroupfs`` driver on cgroup v1: one hierarchy per controller.

The container's group is ``<mount of each controller>/<parent>/<id>`` in every
mounted controller hierarchy (named ones such as ``name=systemd`` are left
alone).  Device rules go, in order, to ``devices.deny``/``devices.allow`` when
the group is created; ``docker update`` changes no device rule.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from skiff.core.containers.limits import check_cpuset
from skiff.core.hookspecs import DriverNotSupported, MountSpec, Resources
from skiff.plugins.limits import _blkio, device_filter, device_rules
from skiff.plugins.limits.cgroupfs_base import (
    CGROUP_ROOT,
    RMDIR_TIMEOUT,
    VIEW_OPTIONS,
    CgroupfsBase,
    check_id,
    check_resources,
    cpu_limit,
    int_file,
    keyvals,
    machine_memory,
    read,
    read_pids,
    resolve_parent,
    rmdir_retry,
    swap_total,
    system_cpu_usage,
    v1_hierarchies,
    wait_for,
    write,
)


def probe_kernel_memory(memory_root: str | None) -> str | None:
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
            write(target, wanted)
        except OSError as exc:
            return (f"this kernel refuses memory.kmem.limit_in_bytes "
                    f"({os.strerror(exc.errno) if exc.errno else exc}; "
                    f"disabled since Linux 5.16)")
        if int_file(target) != wanted:
            return (f"this kernel ({os.uname().release}) accepts writes to "
                    "memory.kmem.limit_in_bytes but ignores them (deprecated: a write has "
                    "no effect)")
        return None
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(probe)


class CgroupfsV1(CgroupfsBase):
    """cgroupfs on per-controller (v1) hierarchies."""

    version = 1

    def __init__(self, parent: str = "skiff",
                 parent_of: Callable[[str], str] | None = None, state_dir: str = "") -> None:
        super().__init__(parent, parent_of, state_dir)
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
        #: why --kernel-memory cannot work here (None: it can); probed on first use
        self._kmem_probed = False
        self._kmem_reason: str | None = None

    # -- paths -----------------------------------------------------------------

    def path(self, container_id: str, controller: str) -> str | None:
        """The container's group in ``controller``'s hierarchy (None: not mounted)."""
        point = self.controllers.get(controller)
        return (os.path.join(point, self._rel(container_id, point), check_id(container_id))
                if point else None)

    def paths(self, container_id: str) -> dict[str, str]:
        """Mount point -> the container's group there, for every hierarchy."""
        cid = check_id(container_id)
        return {p: os.path.join(p, self._rel(cid, p), cid) for p in self.points}

    def _rel(self, container_id: str, point: str) -> str:
        """The container's parent group in one hierarchy, from its root."""
        own = self.custom_parent(container_id)
        if not own:
            return self.parent
        controller = next(c for c, p in self.controllers.items() if p == point)
        return resolve_parent(own, self._own(controller))

    def _mkdirs(self, point: str, rel: str) -> list[str]:
        """Create ``point/rel`` level by level; cpuset levels inherit cpus and mems.
        The levels made are returned."""
        made: list[str] = []
        is_cpuset = point == self.controllers.get("cpuset")
        cur = point
        for part in rel.split("/"):
            above, cur = cur, os.path.join(cur, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(cur, 0o755)
                made.append(cur)
            # a v1 cpuset group starts with empty cpus/mems and refuses tasks
            # until both are set; copy them down from the level above
            if is_cpuset:
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not read(os.path.join(cur, f)):
                        write(os.path.join(cur, f), read(os.path.join(above, f)) or "\n")
        return made

    # -- the driver API --------------------------------------------------------

    def create(self, container_id: str, resources: Resources) -> None:
        check_resources(resources)
        paths = self.paths(container_id)
        cid = check_id(container_id)
        made: list[str] = []
        with self._lock:
            try:
                for point, path in paths.items():
                    existed = os.path.isdir(path)
                    rel = self._rel(cid, point)
                    levels = self._mkdirs(point, f"{rel}/{cid}")
                    if rel != self.parent:
                        self._note_placed(cid, [p for p in levels if p != path])
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
                self._remove_parents(cid)
                raise

    def update(self, container_id: str, resources: Resources) -> None:
        """Rewrite every limit from ``resources``, the complete merged set."""
        check_resources(resources)
        self._apply(container_id, resources, fresh=False)

    def add_process(self, container_id: str, pid: int) -> None:
        for path in self.procs_files(container_id):
            write(path, pid)

    def procs_files(self, container_id: str) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self.paths(container_id).values()]

    def destroy(self, container_id: str) -> None:
        deadline = time.monotonic() + RMDIR_TIMEOUT
        with self._lock:
            errors: list[OSError] = []
            for path in self.paths(container_id).values():
                try:
                    rmdir_retry(path, deadline)
                except OSError as exc:
                    errors.append(exc)
            self._remove_parents(container_id)
            if not errors:
                self._forget(container_id)  # kept while a group is there
        if errors:
            raise errors[0]

    def _check_kernel_memory(self) -> None:
        """Refuse ``KernelMemory`` where the kernel would not enforce it.

        Probed once, on a scratch group at the top of the memory hierarchy:
        Linux 5.16 to 6.x refuse writes to ``memory.kmem.limit_in_bytes``
        (EOPNOTSUPP), later kernels keep the file but ignore what is written
        (the value read back is unchanged), and some kernels lack it.
        """
        if not self._kmem_probed:
            self._kmem_reason = probe_kernel_memory(self.controllers.get("memory"))
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
        return keyvals(os.path.join(mem, "memory.oom_control")).get("oom_kill", 0) > 0

    # -- beyond the protocol: docker top, pause, unpause -------------------------

    def pids(self, container_id: str) -> list[int]:
        """Host pids of every process in the container's group (for ``docker top``)."""
        path = self.path(container_id, "pids") or self.path(container_id, "memory")
        if path is None:
            path = next(iter(self.paths(container_id).values()))
        return read_pids(path)

    def freeze(self, container_id: str) -> None:
        """Freeze every process of the container (``docker pause``); waits until frozen."""
        state = self._freezer_state(container_id)
        write(state, "FROZEN")
        wait_for(lambda: read(state) == "FROZEN", "freezing the container")

    def thaw(self, container_id: str) -> None:
        """Undo ``freeze`` (``docker unpause``)."""
        state = self._freezer_state(container_id)
        write(state, "THAWED")
        wait_for(lambda: read(state) == "THAWED", "thawing the container")

    def _freezer_state(self, container_id: str) -> str:
        path = self.path(container_id, "freezer")
        if path is None:
            raise DriverNotSupported("the freezer cgroup controller is not mounted")
        return os.path.join(path, "freezer.state")

    def _parent_dirs(self) -> list[str]:
        return [os.path.join(point, self.parent) for point in self.points]

    def _remove_parents(self, container_id: str) -> None:
        """Remove the parent groups that no container uses any more."""
        if self.custom_parent(container_id):
            for point in self.points:
                self._remove_own_parent(container_id, point, self._rel(container_id, point))
            return
        levels = self.parent.split("/")
        for point in self.points:
            for n in range(len(levels), 0, -1):
                try:
                    os.rmdir(os.path.join(point, *levels[:n]))
                except OSError:
                    break  # still in use (ENOTEMPTY/EBUSY) or already gone

    # -- limits ----------------------------------------------------------------

    def _apply(self, container_id: str, r: Resources, fresh: bool) -> None:
        """Write the limits; on a fresh group, skip values that are the default."""
        mem = self.path(container_id, "memory")
        if mem:
            self._apply_memory(mem, r, fresh)
        cpu = self.path(container_id, "cpu")
        if cpu:
            shares = r.cpu_shares
            if shares or not fresh:
                write(os.path.join(cpu, "cpu.shares"), shares or 1024)
            quota, period = cpu_limit(r)
            if quota > 0 or not fresh:
                if not os.path.exists(os.path.join(cpu, "cpu.cfs_quota_us")):
                    raise ValueError("Your kernel does not support CPU CFS scheduler")
                # quota first to -1: a new period never conflicts with an old quota
                write(os.path.join(cpu, "cpu.cfs_quota_us"), -1)
                write(os.path.join(cpu, "cpu.cfs_period_us"), period)
                write(os.path.join(cpu, "cpu.cfs_quota_us"), quota)
        cpuset = self.path(container_id, "cpuset")
        if cpuset:
            above = os.path.dirname(cpuset)
            for value, f in ((r.cpuset_cpus, "cpuset.cpus"), (r.cpuset_mems, "cpuset.mems")):
                if value:
                    available = read(os.path.join(above, f))
                    check_cpuset(f[7:], value, available)
                    write(os.path.join(cpuset, f), value)
                elif not fresh:
                    write(os.path.join(cpuset, f), read(os.path.join(above, f)))
        pids = self.path(container_id, "pids")
        if pids:
            limit = r.pids_limit
            if limit > 0 or not fresh:
                write(os.path.join(pids, "pids.max"), limit if limit > 0 else "max")
        blkio = self.path(container_id, "blkio")
        weight = r.blkio_weight
        if weight:
            files = [os.path.join(blkio, f) for f in ("blkio.weight", "blkio.bfq.weight")
                     ] if blkio else []
            target = next((f for f in files if os.path.exists(f)), None)
            if target is None:
                raise ValueError("Your kernel does not support Block I/O weight")
            write(target, weight)
        for target, value in _blkio.v1_writes(blkio, r, fresh):
            write(target, value)

    def _apply_devices(self, container_id: str, r: Resources) -> None:
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
            write(os.path.join(devices, name), rule.line())

    def _apply_memory(self, mem: str, r: Resources, fresh: bool) -> None:
        memory = r.memory
        limit = memory if memory > 0 else -1
        memsw_file = os.path.join(mem, "memory.memsw.limit_in_bytes")
        total = swap_total(r) if os.path.exists(memsw_file) else 0
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
                write(limit_file, limit)
                if swap is not None:
                    write(memsw_file, swap)
            except OSError as exc:
                if exc.errno != errno.EINVAL or swap is None:
                    raise
                write(memsw_file, swap)
                write(limit_file, limit)
        reservation = r.memory_reservation
        if reservation or not fresh:
            write(os.path.join(mem, "memory.soft_limit_in_bytes"), reservation or -1)
        swappiness = r.memory_swappiness
        if swappiness is not None and swappiness >= 0:
            write(os.path.join(mem, "memory.swappiness"), swappiness)
        if r.oom_kill_disable or not fresh:
            write(os.path.join(mem, "memory.oom_control"), 1 if r.oom_kill_disable else 0)
        kmem = r.kernel_memory
        if kmem and not self._kmem_probed:
            with contextlib.suppress(ValueError):
                self._check_kernel_memory()
        # validate() refused KernelMemory at create where it cannot work; a
        # container saved with one by an older skiff still starts, without it
        if self._kmem_probed and self._kmem_reason is None and (kmem or not fresh):
            write(os.path.join(mem, "memory.kmem.limit_in_bytes"), kmem or -1)

    # -- stats -----------------------------------------------------------------

    def stats(self, container_id: str) -> dict[str, Any]:
        """Docker's stats fields for v1: cpu_stats, memory_stats, pids_stats, blkio_stats."""
        out: dict[str, Any] = {}
        acct = self.path(container_id, "cpuacct")
        cpu = self.path(container_id, "cpu")
        if acct or cpu:
            usage: dict[str, Any] = {}
            if acct:
                usage["total_usage"] = int_file(os.path.join(acct, "cpuacct.usage"))
                try:
                    usage["percpu_usage"] = [
                        int(x) for x in read(os.path.join(acct, "cpuacct.usage_percpu")).split()
                    ]
                except OSError:
                    usage["percpu_usage"] = []
                usage["usage_in_kernelmode"] = int_file(os.path.join(acct, "cpuacct.usage_sys"))
                usage["usage_in_usermode"] = int_file(os.path.join(acct, "cpuacct.usage_user"))
            throttle = keyvals(os.path.join(cpu, "cpu.stat")) if cpu else {}
            out["cpu_stats"] = {
                "cpu_usage": usage,
                "system_cpu_usage": system_cpu_usage(),
                "online_cpus": os.cpu_count() or 1,
                "throttling_data": {
                    "periods": throttle.get("nr_periods", 0),
                    "throttled_periods": throttle.get("nr_throttled", 0),
                    "throttled_time": throttle.get("throttled_time", 0),
                },
            }
        mem = self.path(container_id, "memory")
        if mem:
            limit = int_file(os.path.join(mem, "memory.limit_in_bytes"))
            machine = machine_memory()
            if machine and limit > machine:
                limit = machine  # unlimited: Docker reports the host's memory
            out["memory_stats"] = {
                "usage": int_file(os.path.join(mem, "memory.usage_in_bytes")),
                "max_usage": int_file(os.path.join(mem, "memory.max_usage_in_bytes")),
                "failcnt": int_file(os.path.join(mem, "memory.failcnt")),
                "limit": limit,
                "stats": keyvals(os.path.join(mem, "memory.stat")),
            }
        pids = self.path(container_id, "pids")
        if pids:
            out["pids_stats"] = {"current": int_file(os.path.join(pids, "pids.current"))}
            limit = int_file(os.path.join(pids, "pids.max"))
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
                text = read(os.path.join(group, name))
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
