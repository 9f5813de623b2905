"""What the two ``cgroupfs`` drivers (v1 and v2) share: reading and writing
cgroup files, finding the hierarchies, HostConfig's values in kernel units,
removing groups, and the base class holding the parent group and its lock.

Like Docker's ``cgroupfs`` driver, each container gets a group named after its
id under the daemon's ``cgroup-parent`` (default ``skiff``); the parent groups
are created on demand and removed when their last container's group goes, so
an idle daemon leaves nothing in ``/sys/fs/cgroup``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from skiff.core.containers import limits
from skiff.core.hookspecs import Resources
from skiff.plugins.limits import _blkio, device_rules

NAME = "cgroupfs"
CGROUP_ROOT = "/sys/fs/cgroup"

#: Docker's period for ``--cpus``, in microseconds
DEFAULT_CPU_PERIOD = 100_000
#: how long ``destroy`` waits for exiting processes to leave a group
RMDIR_TIMEOUT = 2.0
#: options of the mounts that show a container its own groups: it may read
#: its limits and counters but never write them
VIEW_OPTIONS = ["ro", "nosuid", "nodev", "noexec"]


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write(path: str, value: str | int) -> None:
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




def keyvals(path: str) -> dict[str, int]:
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


def int_file(path: str, default: int = 0) -> int:
    try:
        text = read(path)
    except OSError:
        return default
    if text == "max":
        return default
    try:
        return int(text)
    except ValueError:
        return default




def check_name(what: str, name: str) -> str:
    parts = [p for p in name.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid {what} {name!r}: expected a relative cgroup path")
    return "/".join(parts)


def own_cgroup(controller: str | None) -> str:
    """The daemon's own group in one hierarchy (``None``: the v2 one)."""
    return found_cgroup(controller) or "/"


def found_cgroup(controller: str | None) -> str | None:
    """``own_cgroup`` read afresh, or None where /proc/self/cgroup does not say."""
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if (names == "" and controller is None) or (
                    controller is not None and controller in names.split(",")):
                return path
    return None


def resolve_parent(parent: str, own: str) -> str:
    """A container's own cgroup parent as a path from the hierarchy's root.

    As runc places Docker's containers: an absolute parent is taken from the
    root of the hierarchy, a relative one under the daemon's own group.
    """
    check_parent(parent)
    base = "/" if parent.startswith("/") else own
    return check_name("CgroupParent", posixpath.join(base, parent))


def check_parent(parent: str) -> None:
    """Refuse what cgroupfs cannot take as a path (``ValueError``)."""
    if ":" in parent:
        # "slice:prefix:name" is how the systemd driver names a unit; cgroupfs has none
        raise ValueError(
            f"cgroup-parent {parent!r}: a systemd \"slice:prefix:name\" is only for the "
            "systemd cgroup driver; the cgroupfs driver takes a cgroup path")
    if any(p == ".." for p in parent.split("/")):
        raise ValueError(f"cgroup-parent {parent!r}: \"..\" is not allowed in a cgroup path")


def check_id(container_id: str) -> str:
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise ValueError(f"invalid container id {container_id!r} for a cgroup name")
    return container_id


def read_pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return sorted(int(x) for x in f.read().split())
    except FileNotFoundError:
        return []


def wait_for(check: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def system_cpu_usage() -> int:
    """Docker's ``system_cpu_usage``: host CPU time in nanoseconds (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                ticks = sum(int(x) for x in line.split()[1:8])
                return ticks * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))
    return 0


def machine_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0




def cpu_limit(resources: Resources) -> tuple[int, int]:
    """``(quota, period)`` in microseconds; quota -1 when unlimited."""
    nano = resources.nano_cpus
    if nano:
        return nano * DEFAULT_CPU_PERIOD // 1_000_000_000, DEFAULT_CPU_PERIOD
    quota = resources.cpu_quota
    period = resources.cpu_period or DEFAULT_CPU_PERIOD
    return (quota if quota > 0 else -1), period


def swap_total(resources: Resources) -> int:
    """Memory plus swap in bytes; -1 for unlimited, 0 for no setting."""
    memory = resources.memory
    swap = resources.memory_swap
    if swap == -1:
        return -1
    if swap > 0:
        return swap
    return 2 * memory if memory > 0 else 0  # Docker's default: as much swap as memory


def rmdir_retry(path: str, deadline: float) -> None:
    """rmdir a group and any groups the container made inside it.

    Waits while the kernel still counts exiting tasks (EBUSY) until
    ``deadline``; never kills anything.
    """
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                rmdir_retry(entry.path, deadline)
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


def _mountinfo() -> Iterator[tuple[str, str, set[str], str]]:
    """``(mount point, fstype, super options, root)`` of every cgroup mount;
    root is the group the mount shows at its top (``/``: the hierarchy's own
    root; in a cgroup namespace, ``/..`` for a mount from outside it)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                # octal escapes (\040) in mount points: cgroupfs paths never have them
                yield fields[4], rfields[0], set(rfields[2].split(",")), fields[3]


def prime_target(version: int) -> tuple[str, str | None] | None:
    """Where a prime writes: a hierarchy mounted from its root, as (mount
    point, a controller of it; None for v2), or None when there is none."""
    if version == 2:
        return next(((point, None) for point, fstype, _, root in _mountinfo()
                     if fstype == "cgroup2" and point == CGROUP_ROOT and root == "/"), None)
    roots = {point: root for point, fstype, _, root in _mountinfo() if fstype == "cgroup"}
    return next(((point, controllers.split(",")[0])
                 for point, controllers in v1_hierarchies().items()
                 if roots.get(point) == "/"), None)


def prime_moves(target: tuple[str, str | None] | None) -> str | None:
    """Make the kernel ready for the next move of a process into a group.

    On both cgroup versions a write to a ``cgroup.procs`` takes the kernel's
    ``cgroup_threadgroup_rwsem`` for writing, and the first such write after
    an idle spell waits for an RCU grace period (5 to 15 ms on this VM);
    writes for about one grace period after the last are fast.  Writing
    ``0`` (the writer itself) into the group this process is already in
    takes the lock and moves nothing, so a move made soon after costs tens
    of microseconds.  ``target``: ``prime_target``'s.  Blocks for the grace
    period; returns why it could not (None: done).  The group is read from
    ``/proc/self/cgroup`` right before the write, so the process is never
    moved anywhere.
    """
    if target is None:
        return "the daemon's own group is not in a mounted hierarchy"
    point, controller = target
    own = found_cgroup(controller)
    if own is None or not own.startswith("/"):
        return "the daemon's own group is not in a mounted hierarchy"
    try:
        fd = os.open(os.path.join(point, own.lstrip("/"), "cgroup.procs"),
                     os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    except OSError as exc:
        return f"cannot write to the daemon's own cgroup.procs: {exc.strerror or exc}"
    return None


def v1_hierarchies() -> dict[str, str]:
    """Mounted v1 controller hierarchies: mount point -> comma-joined controllers.

    Named hierarchies (``name=systemd``) carry no controller and are skipped;
    a co-mounted ``cpu,cpuacct`` is one hierarchy.
    """
    options = {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode",
               "favordynmods", "nofavordynmods"}
    found: dict[str, str] = {}
    for point, fstype, opts, _ in _mountinfo():
        if fstype != "cgroup" or any(o.startswith("name=") for o in opts):
            continue
        controllers = sorted(o for o in opts if o not in options and "=" not in o)
        if controllers and point not in found and point.startswith(CGROUP_ROOT + "/"):
            found[point] = ",".join(controllers)
    return found


def cgroup_version() -> int:
    """2 on a unified hierarchy, 1 otherwise (a hybrid host counts as v1)."""
    return 2 if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) else 1




class CgroupfsBase:
    """The parent group, the lock that guards it, and the checks both versions run.

    Parents are created and removed under the lock, so a destroy that empties
    the parent cannot race a create that is about to use it.
    """

    name = NAME
    version: int

    def __init__(self, parent: str = "skiff",
                 parent_of: Callable[[str], str] | None = None, state_dir: str = "") -> None:
        self.parent = check_name("cgroup-parent", parent)
        self._lock = threading.Lock()
        #: a container's own ``CgroupParent`` ("" for the daemon's), from its record
        self._parent_of = parent_of
        #: the own parents of the containers placed (and of those looked up), and
        #: the levels of them this driver made (removed once empty); both kept in
        #: ``state_dir``, so a restarted daemon finds and removes them even when a
        #: container's record is gone (an orphan's processes are still killed)
        self._state_file = os.path.join(state_dir, "cgroup-parents.json") if state_dir else ""
        self._parents: dict[str, str] = {}
        self._made: set[str] = set()
        self._own_groups: dict[str | None, str] = {}
        self._prime_off = False
        #: where prime writes (``prime_target``), looked for at the first prime
        self._prime_target: tuple[str, str | None] | None = None
        self._prime_looked = False
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError), \
                open(self._state_file) as f:
            state = json.load(f)
            self._parents = {str(k): str(v) for k, v in state["parents"].items()}
            self._made = {str(p) for p in state["made"]}

    def _own(self, controller: str | None) -> str:
        """The daemon's own group in one hierarchy, read once: where a relative
        parent goes must not move while containers are placed there."""
        if controller not in self._own_groups:
            self._own_groups[controller] = own_cgroup(controller)
        return self._own_groups[controller]

    def prime(self) -> None:
        """Contract 2.18: see ``prime_moves``.  Turned off for good, with a
        warning, the first time it cannot work (a daemon in a group it cannot
        write, a hierarchy not mounted from its root): a start is then as
        slow as without it, never broken."""
        if self._prime_off:
            return
        if not self._prime_looked:
            # the mounts do not move under a running daemon: found once
            self._prime_target, self._prime_looked = prime_target(self.version), True
        why = prime_moves(self._prime_target)
        if why is not None:
            self._prime_off = True
            log.warning("cgroup.prime_off", reason=why,
                        hint="starts wait for the kernel's grace period on the start path")

    def check_parent(self, parent: str) -> None:
        """``HostConfig.CgroupParent``'s checks (contract 2.14): ``ValueError``."""
        check_parent(parent)

    def custom_parent(self, container_id: str) -> str:
        """The container's own parent as it gave it; "" for the daemon's."""
        if container_id in self._parents:
            return self._parents[container_id]
        parent = self._parent_of(container_id) if self._parent_of is not None else ""
        if parent:
            self._parents[container_id] = parent
        return parent

    def _note_placed(self, container_id: str, made: list[str]) -> None:
        self._parents[container_id] = self.custom_parent(container_id)
        self._made.update(made)
        self._save()

    def _save(self) -> None:
        if not self._state_file:
            return
        os.makedirs(os.path.dirname(self._state_file), exist_ok=True)
        tmp = self._state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"parents": self._parents, "made": sorted(self._made)}, f)
        os.replace(tmp, self._state_file)

    def _remove_own_parent(self, container_id: str, point: str, rel: str) -> None:
        """rmdir the levels of a container's own parent this driver made, deepest
        first, while they are empty; one it did not make ends the walk."""
        levels = rel.split("/")
        for n in range(len(levels), 0, -1):
            path = os.path.join(point, *levels[:n])
            if path not in self._made:
                break
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                break  # still in use
            self._made.discard(path)

    def _forget(self, container_id: str) -> None:
        if self._parents.pop(container_id, None) is not None:
            self._save()

    def validate(self, resources: Resources) -> None:
        """What this host cannot apply (device paths and rules, kernel memory),
        after Docker's checks again; ``ValueError`` with Docker's messages."""
        check_resources(resources)
        if resources.kernel_memory:
            self._check_kernel_memory()

    def _check_kernel_memory(self) -> None:
        """Refuse ``KernelMemory`` where this driver cannot enforce it."""
        raise NotImplementedError

    def _parent_dirs(self) -> list[str]:
        """The parent group in every hierarchy."""
        raise NotImplementedError

    def pids(self, container_id: str) -> list[int]:
        raise NotImplementedError

    def destroy(self, container_id: str) -> None:
        raise NotImplementedError

    def reconcile(self, keep: set[str]) -> list[str]:
        """Daemon start (contract 2.8): remove the empty groups under the parent
        that belong to no container in ``keep``.

        Only names shaped like container ids are looked at, so a parent shared
        with something else loses nothing of it.  A group that still holds
        processes is left and logged: another daemon may share the parent
        (the default is the same for every daemon), and killing its containers
        is not ours to do; the daemon kills first what it proves its own.
        """
        # and those placed under their own parents, as the driver's state says
        found: set[str] = {cid for cid in self._parents if _CONTAINER_ID.fullmatch(cid)}
        for parent in self._parent_dirs():
            with contextlib.suppress(OSError):
                found.update(n for n in os.listdir(parent) if _CONTAINER_ID.fullmatch(n))
        gone = []
        for cid in sorted(found - keep):
            try:
                if pids := self.pids(cid):
                    log.warning("cgroup.orphan_busy", id=cid, pids=pids,
                                hint="a group under skiff's parent with processes and no "
                                     "container of this daemon; left alone")
                    continue
                self.destroy(cid)
                gone.append(cid)
            except OSError as exc:
                log.warning("cgroup.reconcile_failed", id=cid, error=str(exc))
        return gone


#: the name of a container's group: its 64-hex id
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
log = structlog.get_logger("skiff.cgroups")


def check_resources(resources: Resources) -> None:
    """Docker's checks (the daemon ran them already; a direct caller may not
    have) and those of the per-device lists this driver reads."""
    limits.validate(resources)
    _blkio.validate(resources)
    device_rules.check(resources)
