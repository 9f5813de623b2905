"""Proving that a recorded pid is still the container's before signalling it.

After a crash the daemon finds containers recorded as running, with the host
pid of their PID 1.  By then that pid may belong to anything: the container
died and the kernel handed its pid to another process, or the machine
rebooted.  Killing on the strength of the number alone (as a ``kill(pid)``
would) can take down an unrelated process of the host.

So a start records, with the pid, the process's start time (field 22 of
``/proc/<pid>/stat``, clock ticks since boot) and the boot ID.  Before any
signal, :func:`kill_if_proven` opens a pidfd (it refers to the process that
holds the pid at that instant and never to a later one), reads the start time
again and signals through the pidfd only when they match on the same boot.  A
process that held the pid when the pidfd was opened and still holds it with
the recorded start time is the container's: pids are not reused while their
process lives.  Records written before start times were kept can be proved
by cgroup membership instead (the pid is in the container's own groups).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable

__all__ = ["boot_id", "kill_if_proven", "namespaces_alive", "start_time"]

_boot_id: str | None = None


def boot_id() -> str:
    """This boot's ID (``/proc/sys/kernel/random/boot_id``), "" if unreadable."""
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot_id = f.read().strip()
        except OSError:
            _boot_id = ""
    return _boot_id


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may hold spaces and parentheses: count from its end
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])  # field 22 overall; field 3 is fields[0]
    except (IndexError, ValueError):
        return None


def kill_if_proven(pid: int, recorded_start: int, recorded_boot: str,
                   in_cgroup: Callable[[int], bool] | None = None,
                   sig: int = signal.SIGKILL, wait: float = 0.0) -> str:
    """Send ``sig`` to ``pid`` only if it is proved to be the recorded process.

    Proof is the recorded start time on the recorded boot; for a record
    without a start time (``recorded_start`` 0), ``in_cgroup(pid)`` saying the
    pid is in the container's groups.  Returns what happened: ``"killed"``,
    ``"gone"`` (no such process, or another boot), ``"recycled"`` (the pid
    now belongs to another process, left alone) or ``"unproven"`` (no start
    time recorded and no cgroup proof: left alone).  With ``wait`` it waits
    that long at most for a killed process to be gone (a pidfd turns readable
    when its process ends, child of ours or not).
    """
    if pid <= 0:
        return "gone"
    if recorded_boot and boot_id() and recorded_boot != boot_id():
        return "gone"  # every process of that boot is gone; this pid is someone else's
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    try:
        now = start_time(pid)
        if now is None:
            return "gone"
        if recorded_start:
            if now != recorded_start:
                return "recycled"
        elif in_cgroup is None or not in_cgroup(pid):
            return "unproven"
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, sig)
        if wait > 0:
            select.select([pidfd], [], [], wait)
        return "killed"
    finally:
        os.close(pidfd)


def namespaces_alive(pid: int) -> bool:
    """Whether ``pid`` still has its namespaces, i.e. still runs: they go first
    when a process exits, while it may still wait for the rest of its pid
    namespace or to be reaped (a zombie keeps ``/proc/<pid>``, not its
    ``ns/`` links).  How an exec or a network connect that failed tells a
    container that ended meanwhile (a 409) from a fault of the daemon."""
    try:
        os.readlink(f"/proc/{pid}/ns/ipc")
    except OSError:
        return False
    return True
