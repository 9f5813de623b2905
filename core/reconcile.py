"""Reconciliation at daemon start: what a crash left that belongs to nothing goes.

Runs once, after the records are loaded (containers, networks) and before
the runtime starts or the API serves.  Without live-restore no container
runs at that moment, so every mount, temporary directory or kernel object
of a run is a leftover; what decides whether something else is a leftover
is whether a record owns it.  Each kind removed is logged once, as
``reconcile.<kind>`` with what went, so an operator sees what a crash cost.

Drivers clean their own leftovers through an optional method (contract 2.8)
core calls when present: ``reconcile(keep: set[str]) -> list[str]`` on the
storage and cgroup drivers (``keep``: the ids of the containers with a record
on disk) and on each network driver in use (``keep``: the network ids that
exist); each returns what it removed, for the log.  A driver without it is
skipped; one that fails is logged.  What is removed must be provably this
daemon's: several daemons may share a host, a cgroup parent, a network
namespace and ``/dev/shm``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable

import structlog

from skiff.core import syscalls
from skiff.core.hookspecs import CgroupDriver, NetworkDriver, StorageDriver
from skiff.core.images.layers import LayerStore

log = structlog.get_logger("skiff.reconcile")

#: a container directory of an interrupted create has no record file yet
RECORD = "config.v2.json"


def at_start(*, data_root: str, exec_root: str, storage_home: str, storage: StorageDriver,
             layers: LayerStore, known: set[str], cgroups: CgroupDriver | None,
             networks: list[NetworkDriver], network_ids: set[str], spare_layer: str,
             memory_spool: str | None = None, running: set[str] | None = None) -> None:
    """Everything, in an order where each step finds what the one before freed:
    records first (what owns what), mounts before the directories below them,
    processes before their groups.  ``known``: the containers loaded;
    ``spare_layer``: the prefix of build layers (the builder's own sweep);
    ``memory_spool``: this daemon's directory for build contexts in memory;
    ``running``: the containers running after restore (to be adopted), the only
    ones whose processes and groups stay: a start cut by a crash leaves a
    process in the container's group behind a record that does not run.
    A step that fails is logged and the next one runs: a leftover costs disk
    or memory, a daemon that does not start costs every container."""
    began = time.monotonic()
    containers = os.path.join(data_root, "containers")
    step("interrupted_creates", lambda: interrupted_creates(containers, known))
    # a record on disk owns its container's things even if it could not be
    # read (restore logged it): it may be repaired, its layer must still be there
    owned = known | set(_listdir(containers))
    # below the storage home the driver decides (a quota filesystem is mounted
    # over a layer for as long as the layer lives); the rest is a leftover
    step("mounts", lambda: unmount_strays([data_root, exec_root], keep=[storage_home]))
    call_driver("storage_mounts", storage, owned)
    step("container_layers", lambda: orphan_layers(layers, owned, spare_layer))
    bundles = os.path.join(exec_root, "containers")
    # an unreadable record keeps its processes and group, as it keeps its layer
    runs = owned if running is None else running | (owned - known)
    step("orphan_processes", lambda: kill_orphan_runs(bundles, runs, cgroups))
    step("bundles", lambda: clear_dir(bundles, keep=owned.__contains__))
    step("temp_dirs", lambda: [
        *clear_dir(os.path.join(data_root, "tmp")),
        # removed containers' exec-root folders the trash had not deleted yet
        *clear_dir(os.path.join(exec_root, "tmp")),
        *clear_dir(os.path.join(layers.image_root, "distribution", "tmp")),
        *(clear_dir(memory_spool) if memory_spool else []),
    ])
    if cgroups is not None:
        call_driver("cgroups", cgroups, runs)
    for driver in networks:
        call_driver("network", driver, network_ids)
    log.info("reconcile.done", containers=len(known),
             ms=round((time.monotonic() - began) * 1000, 1))


def step(kind: str, fn: Callable[[], list[str]]) -> None:
    try:
        removed(kind, fn())
    except Exception as exc:
        log.warning("reconcile.step_failed", kind=kind, error=str(exc))


def orphan_layers(layers: LayerStore, owned: set[str], spare: str) -> list[str]:
    """Remove the RW layers of containers no record owns (a create or rm cut short)."""
    gone = []
    for rw in layers.rw_layers():
        if rw.container_id in owned or rw.container_id.startswith(spare):
            continue
        try:
            layers.remove_rw(rw.container_id)
            gone.append(rw.container_id)
        except Exception as exc:
            log.warning("reconcile.layer_remove_failed", container=rw.container_id,
                        error=str(exc))
    return gone


def memory_spool(tmpfs: str | None, data_root: str) -> str | None:
    """This daemon's own directory on the memory spool (a tmpfs, ``/dev/shm``):
    every daemon of the host shares the tmpfs, so what a crashed build left
    there can only be told apart by whose directory it is in."""
    if tmpfs is None:
        return None
    path = os.path.join(tmpfs, "skiff-" + hashlib.sha256(data_root.encode()).hexdigest()[:12])
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        log.warning("builder.memory_spool_unusable", path=path, error=str(exc))
        return None
    return path


def drop_memory_spool(path: str | None) -> None:
    """At shutdown: the directory goes with its daemon (empty: no build outlives it)."""
    if path is not None:
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def removed(kind: str, what: list[str]) -> None:
    if what:
        log.warning(f"reconcile.{kind}", removed=what, count=len(what))


def host_mounts() -> list[str]:
    """The mount points of this mount namespace (the host's: skiffd's own)."""
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f]


def _unescape(path: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def stray_mounts(mounts: Iterable[str], roots: Iterable[str], keep: Iterable[str]) -> list[str]:
    """Mount points strictly below one of ``roots``, deepest first, except ``keep``,
    what is below them (a storage driver's home: the driver judges its own
    mounts) and their ancestors (the home may be a mount, and so may the
    filesystem the data-root sits on)."""
    kept = {os.path.normpath(k) for k in keep}
    protected = set(kept)
    for k in kept:
        while k not in ("/", ""):
            k = os.path.dirname(k)
            protected.add(k)
    found = set()
    for point in mounts:
        point = os.path.normpath(point)
        for root in roots:
            root = os.path.normpath(root)
            if (point.startswith(root + "/") and point not in protected
                    and not any(point.startswith(k + "/") for k in kept)):
                found.add(point)
    return sorted(found, key=lambda p: (-p.count("/"), p))


def unmount_strays(roots: Iterable[str], keep: Iterable[str]) -> list[str]:
    """Detach every stray mount (lazily: a leftover may still be busy)."""
    done = []
    for point in stray_mounts(host_mounts(), roots, keep):
        try:
            syscalls.umount(point, syscalls.MNT_DETACH)
            done.append(point)
        except OSError as exc:
            log.warning("reconcile.unmount_failed", mount=point, error=str(exc))
    return done


def interrupted_creates(containers_root: str, known: set[str]) -> list[str]:
    """Container directories with no record: a create cut short before its record
    was written.  A record that exists but cannot be read is not touched (it
    may be repaired; restore said so)."""
    gone: list[str] = []
    try:
        entries = os.listdir(containers_root)
    except FileNotFoundError:
        return gone
    for cid in entries:
        path = os.path.join(containers_root, cid)
        if cid in known or not os.path.isdir(path):
            continue
        if os.path.lexists(os.path.join(path, RECORD)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        gone.append(cid)
    return gone


def clear_dir(path: str, keep: Callable[[str], bool] = lambda _: False) -> list[str]:
    """Empty ``path`` (temporary files of pulls, loads, builds, copies), keeping
    the entries ``keep`` names."""
    gone: list[str] = []
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        return gone
    for name in entries:
        if keep(name):
            continue
        full = os.path.join(path, name)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
            gone.append(full)
        except OSError as exc:
            log.warning("reconcile.remove_failed", path=full, error=str(exc))
    return gone


def call_driver(kind: str, driver: object, keep: set[str]) -> None:
    """A driver's own ``reconcile(keep)``, when it has one; its failure is logged,
    never the daemon's start."""
    method = getattr(driver, "reconcile", None)
    if method is None:
        return
    try:
        removed(kind, list(method(keep)))
    except Exception as exc:
        log.warning("reconcile.driver_failed", kind=kind, driver=type(driver).__name__,
                    error=str(exc))


def kill_orphan_runs(bundles_root: str, known: set[str], cgroups: CgroupDriver | None
                     ) -> list[str]:
    """Kill what still runs of containers this daemon started and no longer has a
    record of, or whose record says they do not run.  Proof of ownership is
    twofold: a bundle in this daemon's exec-root, and membership of the
    container's group under this daemon's cgroup parent; a pid alone proves
    nothing.  Waits (2 s) for them to go, so their groups can be removed."""
    if cgroups is None:
        return []
    try:
        orphans = [cid for cid in os.listdir(bundles_root) if cid not in known]
    except FileNotFoundError:
        return []
    killed = []
    for cid in orphans:
        try:
            pids = cgroups.pids(cid)
        except (OSError, ValueError):
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{cid[:12]}:{pid}")
            except ProcessLookupError:
                pass
        if pids:
            # frozen by a pause or a commit the crash cut short: the kill waits
            # for a thaw
            with contextlib.suppress(Exception):
                cgroups.thaw(cid)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                if not cgroups.pids(cid):
                    break
            except (OSError, ValueError):
                break
            time.sleep(0.02)
    return killed
