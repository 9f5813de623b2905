"""The ``cgroupfs`` driver on cgroup v2: the unified hierarchy.

The container's group is ``<root>/<parent>/<id>`` (root ``/sys/fs/cgroup``),
with the ``cpuset cpu io memory pids`` controllers enabled in every ancestor's
``cgroup.subtree_control``.  cgroup v2 has no device files: an eBPF device
program made from the rules (``device_filter``) is attached when the group is
created, and a container whose program cannot be attached is refused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from skiff.core.containers.limits import check_cpuset
from skiff.core.hookspecs import MountSpec, Resources
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
    wait_for,
    write,
)

_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")


class CgroupfsV2(CgroupfsBase):
    """cgroupfs on the unified (v2) hierarchy."""

    version = 2

    def __init__(self, parent: str = "skiff", root: str = CGROUP_ROOT,
                 parent_of: Callable[[str], str] | None = None, state_dir: str = "") -> None:
        super().__init__(parent, parent_of, state_dir)
        self.root = root
        #: device programs loaded once, attached to every group that needs them
        self._programs = device_filter.Programs()

    def path(self, container_id: str) -> str:
        """The container's group."""
        return os.path.join(self.root, self._rel(container_id), check_id(container_id))

    def _rel(self, container_id: str) -> str:
        """The container's parent group, from the root of the hierarchy."""
        own = self.custom_parent(container_id)
        # as runc on v2: the level above the daemon's own group, which may not
        # take children while it holds processes itself
        return resolve_parent(own, os.path.dirname(self._own(None))) if own else self.parent

    def paths(self, container_id: str) -> dict[str, str]:
        return {self.root: self.path(container_id)}

    def _mkdirs(self, rel: str) -> list[str]:
        """Create the parent levels, enabling the controllers all the way down;
        the levels made are returned."""
        made: list[str] = []
        cur = self.root
        for part in [*rel.split("/"), None]:
            available = set(read(os.path.join(cur, "cgroup.controllers")).split())
            enabled = set(read(os.path.join(cur, "cgroup.subtree_control")).split())
            for c in _CONTROLLERS:
                if c in available and c not in enabled:
                    # one at a time: a controller the kernel refuses here (cpu with
                    # realtime tasks around) must not keep the others off; a limit
                    # that needs it then fails in _apply, naming it
                    with contextlib.suppress(OSError):
                        write(os.path.join(cur, "cgroup.subtree_control"), f"+{c}")
            if part is None:
                break
            cur = os.path.join(cur, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(cur, 0o755)
                made.append(cur)
        return made

    def create(self, container_id: str, resources: Resources) -> None:
        check_resources(resources)
        path = self.path(container_id)
        rel = self._rel(container_id)
        with self._lock:
            made = False
            try:
                levels = self._mkdirs(rel)
                if rel != self.parent:
                    self._note_placed(container_id, levels)
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
                self._remove_parents(container_id, rel)
                raise

    def update(self, container_id: str, resources: Resources) -> None:
        """Rewrite every limit from ``resources``, the complete merged set."""
        check_resources(resources)
        self._apply(self.path(container_id), resources, fresh=False)

    def add_process(self, container_id: str, pid: int) -> None:
        write(os.path.join(self.path(container_id), "cgroup.procs"), pid)

    def procs_files(self, container_id: str) -> list[str]:
        return [os.path.join(self.path(container_id), "cgroup.procs")]

    def destroy(self, container_id: str) -> None:
        path = self.path(container_id)
        rel = self._rel(container_id)
        with self._lock:
            try:
                rmdir_retry(path, time.monotonic() + RMDIR_TIMEOUT)
            finally:
                self._remove_parents(container_id, rel)
            self._forget(container_id)  # kept while the group is there

    def _check_kernel_memory(self) -> None:
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
        return keyvals(events).get("oom_kill", 0) > 0

    def pids(self, container_id: str) -> list[int]:
        """Host pids of every process in the container's group (for ``docker top``)."""
        return read_pids(self.path(container_id))

    def freeze(self, container_id: str) -> None:
        """Freeze every process of the container (``docker pause``); waits until frozen."""
        self._set_frozen(container_id, True)

    def thaw(self, container_id: str) -> None:
        """Undo ``freeze`` (``docker unpause``)."""
        self._set_frozen(container_id, False)

    def _set_frozen(self, container_id: str, frozen: bool) -> None:
        path = self.path(container_id)
        write(os.path.join(path, "cgroup.freeze"), int(frozen))
        want = f"frozen {int(frozen)}"
        wait_for(lambda: want in read(os.path.join(path, "cgroup.events")).splitlines(),
                  "freezing the container" if frozen else "thawing the container")

    def _parent_dirs(self) -> list[str]:
        return [os.path.join(self.root, self.parent)]

    def _remove_parents(self, container_id: str, rel: str) -> None:
        if rel != self.parent:
            self._remove_own_parent(container_id, self.root, rel)
            return
        levels = self.parent.split("/")
        for n in range(len(levels), 0, -1):
            try:
                os.rmdir(os.path.join(self.root, *levels[:n]))
            except OSError:
                break

    def _apply(self, path: str, r: Resources, fresh: bool) -> None:
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

        memory = r.memory
        if f := file("memory.max", memory > 0):
            if memory > 0 or not fresh:
                write(f, memory if memory > 0 else "max")
            total = swap_total(r)
            swap_file = os.path.join(path, "memory.swap.max")
            if (total or not fresh) and os.path.exists(swap_file):
                # v2 limits swap alone, Docker's MemorySwap is memory plus swap
                write(swap_file, "max" if total <= 0 else max(total - memory, 0))
            reservation = r.memory_reservation
            if reservation or not fresh:
                write(os.path.join(path, "memory.low"), reservation)
        shares = r.cpu_shares
        quota, period = cpu_limit(r)
        if (f := file("cpu.weight", shares > 0)) and (shares or not fresh):
            # runc's mapping of shares [2, 262144] onto weight [1, 10000]
            shares = min(max(shares or 1024, 2), 262144)
            write(f, 1 + ((shares - 2) * 9999) // 262142)
        if (f := file("cpu.max", quota > 0)) and (quota > 0 or not fresh):
            write(f, f"{quota if quota > 0 else 'max'} {period}")
        for value, name in ((r.cpuset_cpus, "cpuset.cpus"), (r.cpuset_mems, "cpuset.mems")):
            if (f := file(name, bool(value))) and (value or not fresh):
                if value:
                    above = os.path.join(os.path.dirname(path), f"{name}.effective")
                    available = read(above) if os.path.exists(above) else ""
                    check_cpuset(name[7:], value, available)
                write(f, value or "\n")  # empty: inherit the parent's
        limit = r.pids_limit
        if (f := file("pids.max", limit > 0)) and (limit > 0 or not fresh):
            write(f, limit if limit > 0 else "max")
        weight = r.blkio_weight
        if weight:
            if not os.path.exists(os.path.join(path, "io.weight")):
                raise ValueError("Your kernel does not support Block I/O weight")
            # runc's mapping of blkio weight [10, 1000] onto io.weight [1, 10000]
            write(os.path.join(path, "io.weight"), 1 + (weight - 10) * 9999 // 990)
        for target, value in _blkio.v2_writes(path, r, fresh):
            write(target, value)

    def stats(self, container_id: str) -> dict[str, Any]:
        """Docker's stats fields for v2 (no percpu usage, no max_usage)."""
        path = self.path(container_id)
        cpu = keyvals(os.path.join(path, "cpu.stat"))
        out: dict[str, Any] = {
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": cpu.get("usage_usec", 0) * 1000,
                    "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
                    "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
                },
                "system_cpu_usage": system_cpu_usage(),
                "online_cpus": os.cpu_count() or 1,
                "throttling_data": {
                    "periods": cpu.get("nr_periods", 0),
                    "throttled_periods": cpu.get("nr_throttled", 0),
                    "throttled_time": cpu.get("throttled_usec", 0) * 1000,
                },
            }
        }
        if os.path.exists(os.path.join(path, "memory.current")):
            machine = machine_memory()
            limit = int_file(os.path.join(path, "memory.max"), machine)
            out["memory_stats"] = {
                "usage": int_file(os.path.join(path, "memory.current")),
                "limit": min(limit, machine) if machine else limit,
                "stats": keyvals(os.path.join(path, "memory.stat")),
            }
        if os.path.exists(os.path.join(path, "pids.current")):
            out["pids_stats"] = {"current": int_file(os.path.join(path, "pids.current"))}
            limit = int_file(os.path.join(path, "pids.max"))
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
