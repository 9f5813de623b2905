"""Daemon start-up: the container records on disk loaded back, and the runs a
crashed daemon left behind ended."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import structlog

from skiff.core.containers import pidproof
from skiff.core.containers.model import Container, State
from skiff.core.containers.registry import ContainerRegistry
from skiff.core.hookspecs import CgroupDriver
from skiff.core.timefmt import now_rfc3339, rfc3339

log = structlog.get_logger("skiff.containers")

#: after a crash, how long restore waits for a container it killed to be gone
RESTORE_KILL_WAIT = 5.0


def restore(root: str, exec_root: str, cgroups: CgroupDriver | None,
            registry: ContainerRegistry, on_restore: Callable[[Container], None],
            live_restore: bool = False) -> list[Container]:
    """Load every container record under ``root``; those that were running are not any more,
    unless ``live_restore``: then those still watched by their monitor are
    returned, still running, for the runtime to adopt (``ContainerManager.adopt``).

    Without live-restore a container does not survive its daemon.  A shim
    that outlived a crash has written the exit code beside the bundle (and
    the time it did so is when the container ended).  Otherwise the recorded
    PID 1 is killed, but only once proved to be the container's
    (``pidproof``): a pid the kernel has since given to another process is
    left alone.
    """
    os.makedirs(root, mode=0o710, exist_ok=True)
    adoptable: list[Container] = []
    for cid in os.listdir(root):
        path = os.path.join(root, cid)
        try:
            c = Container.load(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # a damaged record costs that container, never the daemon's start
            log.warning("container.restore_failed", id=cid, error=str(exc))
            continue
        if c.state.Running and live_restore and _still_watched(exec_root, c.id):
            adoptable.append(c)
        elif c.state.Running:
            code, ended = _exit_code_from_bundle(exec_root, c.id)
            if code is None:
                code = _kill_recorded(cgroups, c)
            c.state = State(
                Status="exited", ExitCode=code if code is not None else 255,
                StartedAt=c.state.StartedAt, FinishedAt=ended or now_rfc3339(),
                Health=c.state.Health,
            )
            c.save()
            _drop_crashed_groups(cgroups, c)
        on_restore(c)
        registry.index(c)
    return adoptable


def _still_watched(exec_root: str, cid: str) -> bool:
    """A monitor that can hand the container over is recorded and its socket is
    there (the runtime proves the monitor's pid when it connects); no exit
    code yet."""
    bundle = os.path.join(exec_root, "containers", cid)
    return (os.path.exists(os.path.join(bundle, "monitor.sock"))  # liverestore.can_be_adopted
            and not os.path.exists(os.path.join(bundle, "exitcode")))


def end_unadopted(cgroups: CgroupDriver | None, c: Container) -> int | None:
    """Live-restore: ``c`` was kept for adoption but its runtime could not take it
    back (its monitor died): end what may still run of it, as after a crash
    without live-restore; the exit code if it was killed."""
    code = _kill_recorded(cgroups, c)
    _drop_crashed_groups(cgroups, c)
    return code


def _kill_recorded(cgroups: CgroupDriver | None, c: Container) -> int | None:
    """Kill the recorded PID 1 if it is proved to be the container's; its exit code."""

    def in_cgroup(pid: int) -> bool:
        try:
            return cgroups is not None and pid in cgroups.pids(c.id)
        except Exception:
            return False  # no groups left: no proof

    if cgroups is not None:
        # paused, or frozen by a commit the crash cut short: a frozen process
        # takes no signal, so it would outlive the kill (thawing harms nothing)
        with contextlib.suppress(Exception):
            cgroups.thaw(c.id)
    outcome = pidproof.kill_if_proven(c.state.Pid, c.state.pid_start, c.state.boot_id,
                                      in_cgroup, wait=RESTORE_KILL_WAIT)
    if outcome == "killed":
        log.info("container.restore_killed", id=c.id, pid=c.state.Pid)
        return 137
    if outcome in ("recycled", "unproven"):
        log.warning("container.restore_pid_not_ours", id=c.id, pid=c.state.Pid,
                    outcome=outcome,
                    reason="the recorded pid is not proved to be the container's "
                           "any more; it was left alone")
    return None


def _drop_crashed_groups(cgroups: CgroupDriver | None, c: Container) -> None:
    """Remove the groups of a container that ran when the daemon died, once empty.

    A group that still holds processes (a pid that could not be proved) is
    left, and said so: removing it would fail, killing by number is not ours.
    """
    if cgroups is None:
        return
    try:
        # the rest of a killed container's pid namespace goes just after its PID 1
        deadline = time.monotonic() + 2
        while (left := cgroups.pids(c.id)) and time.monotonic() < deadline:
            time.sleep(0.02)
        if left:
            log.warning("container.restore_groups_busy", id=c.id, pids=left,
                        hint="processes the daemon could not prove are the container's")
            return
        cgroups.destroy(c.id)
    except Exception as exc:
        log.warning("container.cgroup_destroy_failed", id=c.id, error=str(exc))


def _exit_code_from_bundle(exec_root: str, cid: str) -> tuple[int | None, str | None]:
    """The exit code the container's monitor recorded and when (the file's
    time: the monitor writes it as it reaps the container)."""
    try:
        with open(os.path.join(exec_root, "containers", cid, "exitcode")) as f:
            code = int(f.read().strip())
            ended = os.fstat(f.fileno()).st_mtime_ns
    except (OSError, ValueError):
        return None, None
    return code, rfc3339(ended / 1e9)
