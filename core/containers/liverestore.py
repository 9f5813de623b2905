"""Live-restore: running containers outlive their daemon; the next one adopts them.

With ``live-restore: true`` a container's run is started with the daemon's
ends of its stdio given to the runtime too (``Stdio.daemon_*``, contract
2.11): the runtime keeps copies beside the container, so when the daemon goes
the container's output is spooled instead of hitting a closed pipe.  At
shutdown the daemon *detaches* from each running container (its log driver
flushed and closed, nothing torn down: cgroups, network plumbing and
mounts stay).  At start, ``restore`` keeps the containers recorded running
whose monitor still watches them, and ``adopt`` asks the runtime for each
(``Runtime.adopt``): the ends come back with what was spooled, which is
written to the log driver with the times it was read, before the live output
resumes; then the run is watched as any other.  A container that cannot be
adopted (its monitor died, an older one, the runtime cannot) is recorded as
exited, with the code its monitor left if it did.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import TYPE_CHECKING, Literal

import structlog
import trio

from skiff.core.containers import restore as container_restore
from skiff.core.containers.logstream import open_run_log
from skiff.core.containers.model import Container, State
from skiff.core.containers.streams import KeptStdin, LineSplitter
from skiff.core.hookspecs import Adoption, ContainerSpec, LogDriver, LogMessage, StartError
from skiff.core.timefmt import now_rfc3339, rfc3339

if TYPE_CHECKING:
    from skiff.core.containers.manager import ContainerManager

log = structlog.get_logger("skiff.containers")

EXITCODE = "exitcode"
SPOOL = "spool"
#: what a protocol 2 monitor listens on (skiff-monitor.c)
MONITOR_SOCKET = "monitor.sock"


def can_be_adopted(bundle: str) -> bool:
    """Whether what watches the run in ``bundle`` can hand it to a next daemon:
    skiff-monitor's protocol 2 socket is there (a run started without
    live-restore, or by the Python shim, has none)."""
    return os.path.exists(os.path.join(bundle, MONITOR_SOCKET))


def replay(spooled: list[tuple[int, str, bytes]], driver: LogDriver | None
           ) -> dict[str, bytes]:
    """Write what was spooled to ``driver``, each line with the time its end was
    read; returns, per stream, the start of a line not finished yet (the live
    output finishes it)."""
    splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
    for ns, stream, data in spooled:
        kind: Literal["stdout", "stderr"] = "stderr" if stream == "stderr" else "stdout"
        lines = splitters[kind].feed(data)
        if driver is None:
            continue
        for line in lines:
            try:
                driver.write(LogMessage(kind, line, ns / 1e9))
            except OSError as exc:
                log.warning("log.write_failed", stream=kind, error=str(exc), dropped=1)
    return {k: s.buf for k, s in splitters.items()}


def flush_carry(carry: dict[str, bytes], driver: LogDriver | None, when: float) -> None:
    """The unfinished lines of a container that ended while away: written as they are."""
    if driver is None:
        return
    for stream, data in carry.items():
        if data:
            kind: Literal["stdout", "stderr"] = "stderr" if stream == "stderr" else "stdout"
            with contextlib.suppress(OSError):
                driver.write(LogMessage(kind, data, when))


def _read_spool_file(path: str) -> tuple[list[tuple[int, str, bytes]], int]:
    """A spool left by a monitor that exited (the format of skiff-monitor.c)."""
    import struct

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return [], 0
    if len(data) < 16 or data[:8] != b"skspool1":
        return [], 0
    (dropped,) = struct.unpack_from("=Q", data, 8)
    records: list[tuple[int, str, bytes]] = []
    at = 16
    while at + 16 <= len(data):
        ns, length, stream = struct.unpack_from("=QII", data, at)
        body = data[at + 16: at + 16 + length]
        if len(body) < length or stream not in (1, 2):
            break
        records.append((ns, "stdout" if stream == 1 else "stderr", body))
        at += 16 + length
    return records, dropped


async def log_exited_spool(m: ContainerManager, c: Container) -> None:
    """A container that ended while no daemon ran: what it wrote meanwhile
    (its monitor's spool, left in the bundle) goes to its log."""
    path = os.path.join(m.specs.bundle(c.id), SPOOL)
    records, dropped = _read_spool_file(path)
    if not records and not dropped:
        return
    driver = open_run_log(m._log_factory, c)
    try:
        carry = await m.to_thread(replay, records, driver)
        await m.to_thread(flush_carry, carry, driver, records[-1][0] / 1e9 if records else 0.0)
    finally:
        if driver is not None:
            await m.to_thread(driver.close)
    with contextlib.suppress(OSError):
        os.unlink(path)
    _log_spooled(c, len(records), dropped)


def _log_spooled(c: Container, records: int, dropped: int) -> None:
    if dropped:
        log.warning("container.spool_dropped", id=c.id, dropped_bytes=dropped,
                    reason="the container wrote more than the monitor's spool holds "
                           "while no daemon read its output")
    log.info("container.spool_replayed", id=c.id, records=records)


async def adopt(m: ContainerManager, c: Container) -> None:
    """Take ``c`` back from its runtime and watch it again (see the module)."""
    bundle = m.specs.bundle(c.id)
    take = getattr(m.runtime, "adopt", None)
    try:
        if take is None:
            raise StartError(f"the runtime {m.runtime.name} cannot adopt running containers")
        got: Adoption = await take(c.id, bundle)
    except StartError as exc:
        log.warning("container.adopt_failed", id=c.id, error=str(exc))
        await _ended(m, c)
        return
    if got.process.pid != c.state.Pid:
        log.warning("container.adopt_pid_differs", id=c.id, recorded=c.state.Pid,
                    monitor=got.process.pid)
    track = m.tracks[c.id]
    driver = open_run_log(m._log_factory, c)
    if got.spooled or got.dropped:
        carry = await m.to_thread(replay, got.spooled, driver) if got.spooled else {}
        # logged: only now may it go (killed before, the next daemon logs it again)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(bundle, SPOOL))
        _log_spooled(c, len(got.spooled), got.dropped)
    else:
        # Nothing spooled: the file, if any, is a bare header, which the
        # monitor goes on with next time as with a new one.  Kept: its
        # unlink (a journalled metadata write) was ~0.7 ms of the event
        # loop per container, a third of the adoption of 500.
        carry = {}
    tty = bool(c.config.get("Tty"))
    track.process = got.process
    track.stopping = False
    if any(mp.get("Type") == "volume" for mp in c.mount_points or []):
        # now: building it asks the volumes' drivers for their mounts again,
        # which the run's exit gives back
        track.spec, track.spec_loader = await _spec(m, c), None
    else:
        track.spec, track.spec_loader = None, functools.partial(_spec, m, c)
    await m.network.readopt_all(c, track, got.process.pid)
    track.hub.begin_run(got.stdout if tty else -1)
    if got.stdin >= 0:
        track.hub.stdin = KeptStdin(got.stdin, got.process)
        track.hub.stdin_ready.set()
    elif tty and c.config.get("OpenStdin") and got.stdout >= 0:
        track.hub.stdin = trio.lowlevel.FdStream(os.dup(got.stdout))  # the terminal
        track.hub.stdin_ready.set()
    m.spawn(m._monitor, c, track, got.process, got.stdout, -1 if tty else got.stderr, driver,
            carry)
    log.info("container.adopted", id=c.id, pid=got.process.pid, spooled=len(got.spooled))


async def _spec(m: ContainerManager, c: Container) -> ContainerSpec | None:
    """The run's spec as its start made it (an exec inherits its capabilities,
    its user namespace): built again, the plugins amending it as then.  Its
    volumes are asked of their drivers again, so the run's exit releases
    them as for any run (a volume its driver mounts on the host gets a new
    mount there; the container keeps the one it has)."""
    try:
        spec = await m.to_thread(m.specs.build, c)
        m.plugins.hook.skiff_container_spec(container=c, spec=spec, daemon_config=m.config)
    except Exception as exc:
        log.warning("container.adopt_spec_failed", id=c.id, error=str(exc),
                    reason="an exec in it runs without the container's capabilities")
        return None
    return spec


async def _ended(m: ContainerManager, c: Container) -> None:
    """``c`` could not be adopted: it ended (or its monitor did) while away."""
    path = os.path.join(m.specs.bundle(c.id), EXITCODE)
    code, ended = None, None
    try:
        with open(path) as f:
            code = int(f.read().strip())
            ended = rfc3339(os.fstat(f.fileno()).st_mtime_ns / 1e9)
    except (OSError, ValueError):
        pass
    if code is None:
        # nothing watches it: what may still run of it is ended (pid proved first)
        code = await m.to_thread(container_restore.end_unadopted, m.cgroups, c)
    elif m.cgroups is not None:
        with contextlib.suppress(Exception):
            await m.to_thread(m.cgroups.destroy, c.id)
    code = 255 if code is None else code
    c.state = State(Status="exited", ExitCode=code, StartedAt=c.state.StartedAt,
                    FinishedAt=ended or now_rfc3339(), Health=c.state.Health)
    c.save()
    await log_exited_spool(m, c)
    # its restart policy is honoured by restarts.after_restore, as after a crash
