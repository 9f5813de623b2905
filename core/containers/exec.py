"""``docker exec``: processes started inside a running container.

An exec is created (``POST /containers/{id}/exec``), then started once
(``POST /exec/{id}/start``), attached or detached.  The runtime starts the
process in the container's namespaces (``Runtime.exec``); between that and
``go`` the daemon moves it into the container's cgroups, as for the
container's own process.  The exec inherits the container's capabilities,
no-new-privileges and rlimits from the spec the container was started with
(after every plugin amended it), and its user, working directory and
environment unless the exec overrides them.

A background task in the daemon's nursery owns each started exec: it copies
the output to whichever client is attached (or discards it once the client
detached, so the process never blocks on a full pipe) and records the exit
code for ``GET /exec/{id}/json``.  The process dies with the container.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiff.core.containers import pidproof
from skiff.core.containers.framing import STDERR, STDOUT, multiplex_frame
from skiff.core.containers.registry import ContainerRegistry, ToThread
from skiff.core.containers.resources import cgroup_procs
from skiff.core.containers.streams import (
    DEFAULT_DETACH_KEYS,
    READ_SIZE,
    feed_stdin,
    open_stdio,
    parse_detach_keys,
    set_winsize,
    take_terminal,
)
from skiff.core.errors import Conflict, InvalidParameter, NotFound
from skiff.core.hookspecs import (
    CgroupDriver,
    ContainerSpec,
    ExecSpec,
    Runtime,
    StartError,
    Stdio,
)

if TYPE_CHECKING:
    from skiff.core.containers.model import Container
    from skiff.core.hookspecs import ContainerProcess

log = structlog.get_logger("skiff.exec")

#: after the exec'd process exits, how long its output may stay open (a
#: background child still holding the pipe); the manager's OUTPUT_GRACE
OUTPUT_GRACE = 2.0
#: finished execs kept per container for inspect; older ones are dropped
KEEP_FINISHED = 64
#: starts a task in the daemon's nursery (which exists only once the daemon runs)
Spawn = Callable[..., None]
#: namespace kinds joined by an exec -> their name under /proc/PID/ns
NS_FILES = {"pid": "pid", "ipc": "ipc", "uts": "uts", "net": "net", "cgroup": "cgroup",
            "mount": "mnt"}


def merge_env(base: list[str], extra: list[str]) -> list[str]:
    """Docker's ReplaceOrAppendEnvValues: ``extra`` replaces same-named entries."""
    out = list(base)
    index = {item.partition("=")[0]: i for i, item in enumerate(out)}
    for item in extra:
        key = item.partition("=")[0]
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return out


@dataclass
class Exec:
    """One exec instance and its run-time state."""

    id: str
    container: Container
    cmd: list[str]
    env: list[str]
    user: str
    working_dir: str
    tty: bool
    attach_stdin: bool
    attach_stdout: bool
    attach_stderr: bool
    privileged: bool
    detach_keys: str
    console_size: list[int] | None = None
    #: False: no key sequence detaches (the CRI's exec: kubelet has no detach keys,
    #: and Ctrl-P must reach the program)
    detachable: bool = True
    created: float = field(default_factory=time.time)
    started: bool = False
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    process: ContainerProcess | None = None
    #: pty master duplicate while running with a TTY (resize)
    terminal: int = -1
    #: the attached client's stream and how to frame for it; None: discard output
    sink: trio.abc.Stream | None = None
    framed: bool = False
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    ended: trio.Event = field(default_factory=trio.Event)

    @property
    def command(self) -> str:
        return " ".join(self.cmd)

    def inspect(self) -> dict[str, Any]:
        """Docker's ExecInspect."""
        return {
            "ID": self.id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "tty": self.tty,
                "entrypoint": self.cmd[0] if self.cmd else "",
                "arguments": self.cmd[1:],
                "privileged": self.privileged,
                "user": self.user,
            },
            "OpenStdin": self.attach_stdin,
            "OpenStderr": self.attach_stderr,
            "OpenStdout": self.attach_stdout,
            "CanRemove": False,
            "ContainerID": self.container.id,
            "DetachKeys": self.detach_keys,
            "Pid": self.pid,
        }


class ExecManager:
    """The exec instances of one daemon.

    ``registry`` holds the containers the execs run in; ``runtime`` starts
    them, ``cgroups`` (None: no cgroup driver) takes them in, ``spawn``
    gives each started exec its task.
    """

    def __init__(self, registry: ContainerRegistry, runtime: Runtime, runtime_name: str,
                 cgroups: CgroupDriver | None, to_thread: ToThread, spawn: Spawn,
                 prime: Callable[[], None] = lambda: None) -> None:
        self.registry = registry
        #: the kernel's wait for the process's move into the container's
        #: groups, started ahead (``CgroupPrimer``)
        self.prime = prime
        self.runtime = runtime
        self.runtime_name = runtime_name
        self.cgroups = cgroups
        self.to_thread = to_thread
        self.spawn = spawn
        self.by_id: dict[str, Exec] = {}

    # -- lookup ------------------------------------------------------------------

    def get(self, exec_id: str) -> Exec:
        ex = self.by_id.get(exec_id)
        if ex is None or ex.container.id not in self.registry.by_id:
            raise NotFound(f"No such exec instance: {exec_id}")
        return ex

    def ids_for(self, container_id: str) -> list[str]:
        """IDs of the container's execs, for inspect's ExecIDs."""
        return [e.id for e in self.by_id.values() if e.container.id == container_id]

    def _prune(self) -> None:
        """Forget execs of removed containers and all but the newest finished ones."""
        live = self.registry.by_id
        finished: dict[str, list[Exec]] = {}
        for ex in list(self.by_id.values()):
            if ex.container.id not in live:
                del self.by_id[ex.id]
            elif ex.exit_code is not None:
                finished.setdefault(ex.container.id, []).append(ex)
        for items in finished.values():
            items.sort(key=lambda e: e.created)
            for ex in items[:-KEEP_FINISHED]:
                del self.by_id[ex.id]

    @staticmethod
    def _check_running(c: Container) -> None:
        if c.state.Paused:
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
        if c.state.Restarting:
            raise Conflict(f"Container {c.id} is restarting, wait until the container is running")
        if not c.state.Running:
            raise Conflict(f"Container {c.id} is not running")

    @staticmethod
    def _raise_if_ended(c: Container, pid: int, exc: BaseException) -> None:
        """An exec that failed because its container ended meanwhile (its
        namespaces gone, its shim gone) is the client's race, not the daemon's
        fault: the 409 dockerd gives an exec into a container not running."""
        if not isinstance(exc, Exception):  # a cancel is no failure of the exec
            return
        if c.state.Running and pidproof.namespaces_alive(pid):
            return
        raise Conflict(f"Container {c.id} is not running") from exc

    # -- create ------------------------------------------------------------------

    def create(self, ref: str, body: Any) -> str:
        """``POST /containers/{id}/exec``; returns the exec's ID."""
        c = self.registry.get(ref)
        if not isinstance(body, dict):
            raise InvalidParameter("the request body must be a JSON object")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd or not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
            raise InvalidParameter("No exec command specified")
        env = body.get("Env") or []
        if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
            raise InvalidParameter("Env must be a list of KEY=value strings")
        keys = body.get("DetachKeys") or ""
        if keys:
            try:
                parse_detach_keys(keys)
            except ValueError as exc:
                raise InvalidParameter(f"Invalid detach keys ({keys}) provided: {exc}") from exc
        self._check_running(c)
        self._prune()
        ex = Exec(
            id=secrets.token_hex(32), container=c, cmd=list(cmd), env=list(env),
            user=str(body.get("User") or ""), working_dir=str(body.get("WorkingDir") or ""),
            tty=bool(body.get("Tty")), attach_stdin=bool(body.get("AttachStdin")),
            attach_stdout=bool(body.get("AttachStdout")),
            attach_stderr=bool(body.get("AttachStderr")),
            privileged=bool(body.get("Privileged")), detach_keys=keys,
            console_size=body.get("ConsoleSize") or None,
        )
        self.by_id[ex.id] = ex
        self.prime()  # the start follows: its move finds the grace period over
        self.registry.event(c, f"exec_create: {ex.command}", execID=ex.id)
        log.info("exec.create", id=ex.id, container=c.id, cmd=ex.command)
        return ex.id

    # -- start -------------------------------------------------------------------

    def check_startable(self, exec_id: str) -> Exec:
        """Errors ``start`` would raise, checked before a connection is hijacked."""
        ex = self.get(exec_id)
        if ex.running:
            raise Conflict(f"Error: Exec command {ex.id} is already running")
        if ex.started:
            raise Conflict(f"Error: Exec command {ex.id} has already run")
        self._check_running(ex.container)
        return ex

    def _spec(self, ex: Exec, base: ContainerSpec | None) -> ExecSpec:
        """``ex``'s spec; ``base``, its container's run's, gives what it inherits."""
        c = ex.container
        pid = c.state.Pid
        cfg = c.config
        env = merge_env(list(cfg.get("Env") or []), ex.env)
        names = {item.partition("=")[0] for item in env}
        if "HOSTNAME" not in names and cfg.get("Hostname"):
            env.append(f"HOSTNAME={cfg['Hostname']}")
        if ex.tty and "TERM" not in names:
            env.append("TERM=xterm")
        namespaces = {kind: f"/proc/{pid}/ns/{name}" for kind, name in NS_FILES.items()}
        if base is not None and "user" in base.namespaces:
            # a remapped container: its user namespace first (see join_container)
            namespaces["user"] = f"/proc/{pid}/ns/user"
        return ExecSpec(
            id=ex.id,
            container_id=c.id,
            container_pid=pid,
            namespaces=namespaces,
            args=list(ex.cmd),
            env=env,
            cwd=ex.working_dir or cfg.get("WorkingDir") or "/",
            user=ex.user or cfg.get("User") or "",
            group_add=[str(g) for g in c.host_config.get("GroupAdd") or []],
            oom_score_adj=int(c.host_config.get("OomScoreAdj") or 0),
            capabilities=list(base.capabilities) if base is not None else [],
            privileged=ex.privileged,
            no_new_privileges=base.no_new_privileges if base is not None else True,
            rlimits=list(base.rlimits) if base is not None else [],
            seccomp=base.seccomp if base is not None else None,
            cgroup_procs=(cgroup_procs(self.cgroups, c.id)
                          if self.cgroups is not None else []),
            tty=ex.tty,
        )

    async def start(self, exec_id: str, stream: trio.abc.Stream | None, *,
                    framed: bool) -> None:
        """Start the exec; with ``stream`` serve it until the process ends or the
        client detaches, without (``Detach: true``) return once it runs."""
        ex = self.check_startable(exec_id)
        c = ex.container
        ex.started = True
        self.prime()
        track = self.registry.tracks.get(c.id)
        spec = self._spec(ex, await track.run_spec() if track is not None else None)
        attached = stream is not None
        # a detached exec gets its TTY too (Docker's exec -dt); _run drains it
        open_stdin = ex.attach_stdin and attached
        fds: list[int] = []
        try:
            if attached or spec.tty:
                # with a TTY: /dev/null; the runtime allocates the terminal in
                # the container and take_terminal below gives out_r and in_w
                out_r, out_w, err_r, err_w, in_r, in_w = open_stdio(
                    spec.tty, open_stdin, fds)
            else:
                # Docker discards a detached exec's output; /dev/null needs no reader
                null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                fds.append(null)
                out_r = err_r = in_w = -1
                out_w = err_w = in_r = null
            runtime_exec = getattr(self.runtime, "exec", None)
            if runtime_exec is None:  # a third-party runtime from before Runtime.exec
                raise StartError(f"the {self.runtime_name} runtime cannot exec into containers")
            process = await runtime_exec(spec, Stdio(in_r, out_w, err_w))
        except BaseException as exc:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._finish(ex, exc.exit_code if isinstance(exc, StartError) else 126)
            self._raise_if_ended(c, spec.container_pid, exc)
            raise
        # the process has its own copies now; ours must go or no EOF ever comes
        for fd in {in_r, out_w, err_w}:
            os.close(fd)
        try:
            if spec.tty:  # the pty master (out_r, err_r is -1); sized before go
                out_r, in_w = take_terminal(process, open_stdin, ex.console_size)
                ex.terminal = os.dup(out_r)  # for resize
            if self.cgroups is not None:
                await self.to_thread(self.cgroups.add_process, c.id, process.pid)
            await process.go()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await process.abort()
                for fd in (out_r, err_r, in_w, ex.terminal):
                    if fd >= 0:
                        os.close(fd)
                ex.terminal = -1
                self._finish(ex, exc.exit_code if isinstance(exc, StartError) else 126)
            self._raise_if_ended(c, spec.container_pid, exc)
            raise
        ex.process, ex.pid, ex.running = process, process.pid, True
        if attached:
            ex.sink, ex.framed = stream, framed
        self.registry.event(c, f"exec_start: {ex.command}", execID=ex.id)
        log.info("exec.start", id=ex.id, container=c.id, pid=process.pid)
        self.spawn(self._run, ex, process, out_r, err_r)
        if stream is None:
            return
        keys = (parse_detach_keys(ex.detach_keys or DEFAULT_DETACH_KEYS) if ex.detachable
                else b"")
        async with trio.open_nursery() as n:
            if in_w >= 0:
                n.start_soon(self._copy_stdin, ex, stream, in_w, keys, n.cancel_scope)
            await ex.ended.wait()
            n.cancel_scope.cancel()
        async with ex.send_lock:
            ex.sink = None

    async def _copy_stdin(self, ex: Exec, stream: trio.abc.Stream, in_w: int, keys: bytes,
                          scope: trio.CancelScope) -> None:
        target = trio.lowlevel.FdStream(in_w)
        try:
            how = await feed_stdin(stream, target, tty=ex.tty, close_on_eof=True,
                                   detach_keys=keys)
        finally:
            with trio.CancelScope(shield=True):
                await target.aclose()
        if how in ("detach", "eof"):
            if how == "detach":
                self.registry.event(ex.container, f"exec_detach: {ex.command}",
                                    execID=ex.id)
            scope.cancel()

    async def _run(self, ex: Exec, process: ContainerProcess, out_r: int, err_r: int) -> None:
        """Own a started exec: copy its output to the attached client, record its exit."""
        code = 255
        try:
            async with trio.open_nursery() as n:
                for fd, kind in ((out_r, STDOUT), (err_r, STDERR)):
                    if fd >= 0:
                        n.start_soon(self._pump, ex, trio.lowlevel.FdStream(fd), kind)
                code = await process.wait()
                n.cancel_scope.deadline = trio.current_time() + OUTPUT_GRACE
        finally:
            if ex.terminal >= 0:
                os.close(ex.terminal)
                ex.terminal = -1
            self._finish(ex, code)
            c = ex.container
            self.registry.event(c, "exec_die", execID=ex.id, exitCode=code)
            log.info("exec.exit", id=ex.id, container=c.id, code=code)

    async def _pump(self, ex: Exec, source: trio.lowlevel.FdStream, kind: int) -> None:
        async with source:
            while True:
                try:
                    data = await source.receive_some(READ_SIZE)
                except trio.BrokenResourceError:
                    data = b""  # EIO: the pty's last slave closed
                if not data:
                    return
                async with ex.send_lock:
                    if ex.sink is None:
                        continue
                    try:
                        await ex.sink.send_all(multiplex_frame(kind, data) if ex.framed
                                               else data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        ex.sink = None  # the client went away; keep draining

    def _finish(self, ex: Exec, code: int) -> None:
        ex.exit_code = code
        ex.running = False
        ex.process = None
        ex.ended.set()

    # -- resize ------------------------------------------------------------------

    def resize(self, exec_id: str, height: int, width: int) -> None:
        """``POST /exec/{id}/resize``."""
        ex = self.get(exec_id)
        if ex.terminal < 0:
            if not ex.tty:
                raise InvalidParameter(f"exec {ex.id} has no TTY to resize")
            raise Conflict(f"Exec {ex.id} is not running")
        try:
            set_winsize(ex.terminal, height, width)
        except OSError as exc:
            raise InvalidParameter(f"cannot resize the TTY: {exc.strerror}") from exc
