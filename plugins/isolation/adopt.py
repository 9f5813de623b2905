"""Taking a running container back from its skiff-monitor (protocol 2).

A monitor started with the daemon's ends (``Stdio.daemon_*``) keeps them when
its daemon goes away and spools what the container writes meanwhile (see
skiff-monitor.c).  A new daemon connects to ``<bundle>/monitor.sock`` and gets
the ends back plus the spool; from then on that connection is the container's,
as the first one was: the exit message comes on it.  Runs in the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import trio

from skiff.core.hookspecs import StartError
from skiff.plugins.isolation import monitor
from skiff.plugins.isolation.forkserver import short_socket_path
from skiff.plugins.isolation.shimclient import ForkServerProcess, ShimChannel

SPOOL_MAGIC = b"skspool1"
_HEADER = struct.Struct("=8sQ")
_RECORD = struct.Struct("=QII")
STREAMS = {1: "stdout", 2: "stderr"}
#: seconds a monitor has to hand its container over
HANDOVER_TIMEOUT = 5.0


@dataclass
class Spooled:
    """What the container wrote while no daemon read: records of (time in ns
    since the epoch, ``stdout``/``stderr``, bytes), in order, and how many
    bytes the monitor dropped past its cap."""

    records: list[tuple[int, str, bytes]] = field(default_factory=list)
    dropped: int = 0


def read_spool(path: str) -> Spooled:
    """The spool at ``path`` (empty when there is none); a torn last record
    (the monitor killed mid-write) is left out."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return Spooled()
    if len(data) < _HEADER.size or data[:8] != SPOOL_MAGIC:
        return Spooled()
    _, dropped = _HEADER.unpack_from(data)
    out = Spooled(dropped=dropped)
    at = _HEADER.size
    while at + _RECORD.size <= len(data):
        ns, length, stream = _RECORD.unpack_from(data, at)
        body = data[at + _RECORD.size: at + _RECORD.size + length]
        if len(body) < length or stream not in STREAMS:
            break
        out.records.append((ns, STREAMS[stream], body))
        at += _RECORD.size + length
    return out


@dataclass
class Adopted:
    """A running container taken back: its process (``wait`` reads the exit
    message from the monitor), the ends the monitor handed over (the
    caller's to close), and what was spooled (still on disk: the caller
    removes ``<bundle>/spool`` once it logged it)."""

    process: ForkServerProcess
    protocol: int
    ends: dict[str, int]
    spooled: Spooled


async def adopt(bundle: str, init_pid: int) -> Adopted:
    """Connect to the monitor of the container in ``bundle`` whose init is
    ``init_pid`` (from ``<bundle>/monitor``, which the caller proved, with the
    monitor's start time, to be still that monitor's).

    Raises ``StartError`` when there is nobody to adopt: no socket (a
    protocol 1 monitor, or it exited), or the monitor refused.
    """
    bundle = os.path.abspath(bundle)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    chan = ShimChannel(sock)
    try:
        try:
            with short_socket_path(os.path.join(bundle, monitor.SOCKET)) as short:
                await sock.connect(short)
        except OSError as exc:
            raise StartError(f"cannot reach the container's monitor: {exc.strerror}") from None
        # a monitor that cannot answer (stopped, wedged) must not hold the
        # daemon's start: it is given up on like a dead one
        hello: dict[str, Any] | None = None
        with trio.move_on_after(HANDOVER_TIMEOUT) as waited:
            hello = await chan.receive(want_fds=3)
        if waited.cancelled_caught:
            raise StartError(
                f"the container's monitor did not answer within {HANDOVER_TIMEOUT:g} s")
        if hello is None or "error" in hello or "protocol" not in hello:
            said = (hello or {}).get("error", "it closed the connection")
            raise StartError(f"the container's monitor refused: {said}")
        names = hello.get("fds") or []
        if len(names) != len(chan.fds):
            raise StartError(f"the monitor sent {len(chan.fds)} descriptors for {names}")
        # the monitor waits on its child: while it runs the init is not reaped,
        # and it answered just now, so this pid is still the init's
        pidfd = os.pidfd_open(init_pid)
    except BaseException:
        sock.close()
        for fd in chan.fds:
            os.close(fd)
        raise
    ends = dict(zip(names, chan.fds, strict=True))
    chan.fds = []
    # read, not removed: the caller removes it once logged (a daemon killed
    # in between has the next one log it again rather than lose it)
    spooled = read_spool(os.path.join(bundle, str(hello.get("spool") or monitor.SPOOL)))
    terminal = -1
    if "stderr" not in ends and "stdout" in ends:
        # a TTY's one end is the pty master, also the terminal to resize
        with contextlib.suppress(OSError):
            terminal = os.dup(ends["stdout"])
    process = ForkServerProcess(chan, init_pid, pidfd, bundle, terminal)
    process.adopted()
    return Adopted(process, int(hello["protocol"]), ends, spooled)


def _start_time(pid: int) -> int | None:
    """``pid``'s start time in clock ticks since boot (as pidproof reads it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rfind(b")") + 2:].split()[19])
    except (OSError, IndexError, ValueError):
        return None


async def adopt_recorded(bundle: str) -> Adopted:
    """``adopt`` the container whose monitor ``<bundle>/monitor`` records, once
    that monitor is proved alive: its pid runs and started when recorded (a
    pid reused since is some other process, never connected to or trusted).
    """
    try:
        with open(os.path.join(bundle, monitor.MONITOR_RECORD)) as f:
            record = json.loads(f.read())
        pid, start, init = int(record["pid"]), int(record["start"]), int(record["init"])
        protocol = int(record["protocol"])
    except FileNotFoundError:
        raise StartError("no monitor recorded for this container") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StartError(f"unreadable monitor record: {exc}") from None
    if protocol < monitor.PROTOCOL_SPOOL:
        raise StartError(f"its monitor speaks protocol {protocol}, which cannot hand the "
                         "container over (it was started without live-restore)")
    if protocol > monitor.PROTOCOL_SPOOL:
        raise StartError(f"its monitor speaks protocol {protocol}, newer than this skiff's "
                         f"{monitor.PROTOCOL_SPOOL}")
    if start == 0 or _start_time(pid) != start:
        raise StartError(f"its monitor (pid {pid}) is gone")
    return await adopt(bundle, init)
