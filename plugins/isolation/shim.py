"""The per-container shim: forked by the fork server, owns one container.

It takes over the daemon's connection from the fork server, so that
connection becomes a direct channel between the daemon and this container.
Protocol: newline-separated JSON objects both ways.

daemon -> shim
    the spec (with the three stdio descriptors as SCM_RIGHTS on it), then
    ``{"cmd": "go"}`` or ``{"cmd": "abort"}``.
shim -> daemon
    ``{"pid": N}`` once the init is ready (with ``tty``: carrying, as
    SCM_RIGHTS, the pty master the init allocated inside the container; the
    shim keeps no copy), or ``{"error": msg, "exit_code": c}``;
    after go, ``{"started": true}`` or ``{"error": ..., "exit_code": ...}``;
    finally ``{"exit": code}``.

A shim starts in one of two ways.  *Fresh*: forked when a connection
arrives; it reads the spec, then forks the init.  *Spare*: forked ahead of
time, it has already forked an init that sits, as PID 1 of a new pid
namespace and with new uts, ipc and net namespaces, waiting for a spec; the
fork server passes it the next connection on the spare socket.  That takes
two forks and the (slow) network namespace off the start path.  The mount
namespace is never made ahead of time: a copy of the host's mount table
taken early would miss mounts made since (volumes, layers).

Once the command has started the shim has nothing left to do but wait for
the init, record its exit code and send ``{"exit": N}``, so it ``execve``s
``skiff-monitor`` (C, plugins/isolation/monitor/), which does just that with
the same pid, the same child and the same connection: an idle container costs
a few hundred kilobytes instead of a Python interpreter.  The monitor records
itself in ``<bundle>/monitor`` (its protocol version, for a later daemon that
adopts it).  Without the binary (no C compiler at install) the shim does the
waiting itself, as before.  With live-restore the spec names, in
``monitor_ends``, the daemon's own ends of the stdio that follow the three
stdio descriptors (with a TTY none: the shim keeps a copy of the pty
master); they go to the monitor, which then speaks protocol 2 (it holds the
output while no daemon reads and hands it to the next one, see
skiff-monitor.c); the Python fallback closes them and speaks protocol 1.

The shim (or its monitor) outlives the daemon: if the connection breaks after
go it keeps waiting and still records the exit code in ``<bundle>/exitcode``.

``docker exec`` uses a fresh shim too: its spec carries ``"exec": true`` (an
``ExecSpec``); the shim joins the container's pid namespace before it forks,
and the child (``containerinit.run_exec``) joins the rest by path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

from skiff.core import syscalls as sc
from skiff.plugins.isolation import containerinit, idmapfs, initprocess, monitor
from skiff.plugins.isolation.channel import LineChannel, set_comm

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, NoReturn

EXITCODE_FILE = "exitcode"


def spec_fits_spare(namespaces: dict[str, str | None]) -> bool:
    """Whether a spare init's namespaces are the ones this spec asks for.

    Never for a user namespace: a spare's namespaces belong to the host's.
    """
    return "user" not in namespaces and all(
        kind in namespaces and namespaces[kind] is None
        for kind in ("pid", *containerinit.SPARE_NAMESPACES)
    )


#: the namespaces of a remapped spare (``containerinit.USERNS_FLAGS`` and the
#: user namespace; the mount namespace is made once the spec is there)
USERNS_SPARE_NAMESPACES = ("user", "pid", "uts", "ipc", "net", "mount")


def spec_fits_userns_spare(namespaces: dict[str, str | None]) -> bool:
    """Whether a remapped spare init fits: a user namespace of its own and every
    other namespace new (the cgroup one, made at go, either way)."""
    return set(USERNS_SPARE_NAMESPACES) <= set(namespaces) <= {
        *USERNS_SPARE_NAMESPACES, "cgroup"} and all(v is None for v in namespaces.values())


def exit_code(status: int) -> int:
    """Shell convention: the exit status, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def write_exitcode(bundle: str, code: int) -> None:
    """Record the exit code atomically for a daemon that was not listening.

    No fsync: the bundle lives under the exec-root (a tmpfs) and only has to
    survive a daemon restart, not a host crash, which kills containers anyway.
    An exec has no bundle (``""``): nothing is written.
    """
    if not bundle:
        return
    tmp = os.path.join(bundle, f".{EXITCODE_FILE}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, b"%d\n" % code)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(bundle, EXITCODE_FILE))
    except OSError:
        pass


class Init:
    """The shim's handle on its container init (``userns``: a remapped one's,
    see ``spawn_userns``)."""

    def __init__(self, pid: int, chan: LineChannel, userns: bool = False) -> None:
        self.pid = pid
        self.chan = chan
        self.userns = userns

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def reap(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return exit_code(status)

    @classmethod
    def spawn(
        cls,
        namespaces: dict[str, str | None],
        spec: dict[str, Any] | None,
        stdio: list[int],
        close_in_child: Iterable[socket.socket] = (),
        cgroups: list[int] | None = None,
    ) -> Init:
        """Fork the init: with a spec it builds that container at once; without
        one it is a spare that makes its namespaces and waits for a spec."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _enter_pid_namespace(namespaces)
        pid = os.fork()
        if pid == 0:
            ours.close()
            for sock in close_in_child:
                sock.close()
            if spec is None:
                containerinit.run_spare(LineChannel(theirs))
            if spec.get("exec"):
                containerinit.run_exec(spec, stdio, LineChannel(theirs), cgroups or [])
            containerinit.run(spec, stdio, LineChannel(theirs))
        theirs.close()
        return cls(pid, LineChannel(ours))

    @classmethod
    def spawn_userns(cls, namespaces: dict[str, str | None] | None,
                     close_in_child: Iterable[socket.socket] = ()) -> Init:
        """Fork a remapped container's init (see ``containerinit.userns_stage_one``):
        stage one makes its namespaces (``namespaces`` None: a spare's) and forks
        stage two, which this shim, a child subreaper, adopts once stage one
        exits.  Returns stage two, idle, waiting for ``give_userns_spec``;
        raises ``InitError`` with nothing left running."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # stage two's parent exits: its orphan must come to us, not to init
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        pid = os.fork()
        if pid == 0:
            ours.close()
            for sock in close_in_child:
                sock.close()
            containerinit.userns_stage_one(namespaces, LineChannel(theirs))
        theirs.close()
        chan = LineChannel(ours)
        try:
            stage_one = cls(pid, chan)
            said = chan.receive()
            if said is None or "init" not in said:
                raise _failed(stage_one, said)
            stage_one.reap()
            init = cls(int(said["init"]), chan, userns=True)
            said = chan.receive()
            if said is None or not said.get("idle"):
                raise _failed(init, said)
        except BaseException:
            chan.close()
            raise
        return init

    def give_userns_spec(self, spec: dict[str, Any], stdio: list[int]) -> None:
        """Host root's part of a remapped container, then its spec to the init.

        In order: the init joins the container's cgroups (we write its pid:
        whatever it does from here on counts against them), its user namespace
        gets the mappings, the root filesystem is built (idmapped or not, see
        ``idmapfs``) and every bind source is cloned; all of it goes to the
        init as descriptors with the spec.  Raises ``InitError`` with the init
        killed and reaped.
        """
        fds: list[int] = []
        try:
            try:
                for path in spec.get("cgroup_procs") or []:
                    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.write(fd, b"%d" % self.pid)
                    finally:
                        os.close(fd)
            except OSError as exc:
                raise initprocess.InitError(
                    f"cannot join the container's cgroups: {exc.strerror}") from None
            namespaces = spec.get("namespaces") or {}
            uid_map, gid_map = spec.get("uid_map") or [], spec.get("gid_map") or []
            try:
                if namespaces.get("user", "") is None:
                    idmapfs.write_maps(self.pid, uid_map, gid_map)
                userns = os.open(f"/proc/{self.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise initprocess.InitError(
                    f"cannot set up the container's user namespace: {exc.strerror}") from None
            try:
                fds.append(idmapfs.build_rootfs(
                    [m for m in spec.get("rootfs_mounts") or []
                     if m.get("destination", "/") in ("", "/")],
                    os.path.join(os.path.abspath(spec["bundle"]), "rootfs"), userns,
                    bool(spec.get("rootfs_idmap")),
                    (idmapfs.host_of_root(uid_map or [[0, 0, 1]]),
                     idmapfs.host_of_root(gid_map or [[0, 0, 1]]))))
            except idmapfs.IdmapError as exc:
                raise initprocess.InitError(str(exc)) from None
            finally:
                os.close(userns)
            try:
                binds = containerinit.containerfs.clone_bind_sources(spec)
            except containerinit.containerfs.FsError as exc:
                raise initprocess.InitError(str(exc)) from None
            fds += [fd for fd, _ in binds.values()]
            message = {"spec": spec, "binds": list(binds),
                       "files": [key for key, (_, is_file) in binds.items() if is_file]}
            self.chan.send(message, [*stdio, *fds])
        except BaseException:
            self.kill()
            self.reap()
            raise
        finally:
            for fd in fds:
                os.close(fd)


def move_into_cgroups(pid: int, procs_files: list[str]) -> None:
    """Write ``pid`` into every ``cgroup.procs`` of the container.

    Done here, in parallel with the init building the container, and not by
    the init first thing: on cgroup v1 the first move waits for an RCU grace
    period (the kernel's cgroup_threadgroup_rwsem taken for writing), about
    10 ms on a busy two-core VM, the largest single part of a start; the
    init's mounts take about as long.  Nothing of the container runs before
    it: the shim passes go on only after this returned.  Only the init's own
    mounts (root filesystem, /dev, /proc) are made outside the groups.
    """
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"%d" % pid)
        finally:
            os.close(fd)


def _failed(init: Init, said: dict[str, Any] | None) -> initprocess.InitError:
    """A remapped container's init reported an error or died: reap it."""
    if said is not None and "error" not in said:
        init.kill()
    code = init.reap()
    if said is None or "error" not in said:
        return initprocess.InitError(f"container init exited during set-up (exit code {code})")
    return initprocess.InitError(said["error"], said.get("exit_code", 125))


def _make_undumpable() -> None:
    """Non-dumpable until ``execve``: no ptrace attach and no ``/proc/<pid>``
    access by processes without CAP_SYS_PTRACE, for us and our children."""
    sc.prctl(PR_SET_DUMPABLE, 0)


PR_SET_DUMPABLE = 4


def _enter_pid_namespace(namespaces: dict[str, str | None]) -> None:
    # A pid namespace applies to children only, so it is chosen here, before
    # the fork; the shim itself stays in the host's namespaces.
    if "pid" not in namespaces:
        return
    path = namespaces["pid"]
    if path is None:
        sc.unshare(sc.CLONE_NEWPID)
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWPID)
    finally:
        os.close(fd)


#: ``skiff-monitor`` opened (O_PATH) by the fork server at its start, or -1;
#: every shim inherits it.  Executed through the descriptor, not the path: an
#: exec's shim has joined the container's mount namespace by then, where the
#: path means nothing (or, worse, whatever the container put there).
MONITOR_FD = -1


def open_monitor() -> None:
    """In the fork server, once: find the monitor (see ``MONITOR_FD``)."""
    global MONITOR_FD
    if MONITOR_FD < 0 and monitor.available():
        with contextlib.suppress(OSError):
            MONITOR_FD = os.open(monitor.MONITOR_PATH, os.O_PATH | os.O_CLOEXEC)


#: the daemon's ends the monitor may keep, in the order of its arguments
MONITOR_ENDS = ("stdout", "stderr", "stdin")


def _valid_ends(names: object) -> bool:
    return names is None or (isinstance(names, list) and len(set(names)) == len(names)
                             and all(n in MONITOR_ENDS for n in names))


def become_monitor(pid: int, chan: LineChannel, bundle: str,
                   ends: list[int] | None = None, spool_max: int | None = None) -> None:
    """Replace this shim by ``skiff-monitor`` watching ``pid`` (see shim.py's
    docstring); returns only when there is no monitor or it cannot run, and
    the caller then goes on waiting in Python.  ``ends`` (stdout, stderr,
    stdin; -1 for none): the daemon's ends, kept by a protocol 2 monitor."""
    if MONITOR_FD < 0:
        return
    fd = chan.sock.fileno()
    argv = [monitor.MONITOR_NAME, str(pid), str(fd), *([bundle] if bundle else [])]
    inherit = [fd]
    if bundle and ends is not None:
        argv += [str(end) for end in ends]
        if spool_max is not None:
            argv.append(str(spool_max))
        inherit += [end for end in ends if end >= 0]
    for each in inherit:
        os.set_inheritable(each, True)
    try:
        os.execve(MONITOR_FD, argv, os.environ)
    except OSError as exc:
        for each in inherit:
            os.set_inheritable(each, False)
        print(f"skiff-shim: cannot run {monitor.MONITOR_PATH} ({exc.strerror}); "
              "this shim waits for the container itself", file=sys.stderr)


def record_monitor(bundle: str, name: str, init_pid: int) -> None:
    """``<bundle>/monitor`` as skiff-monitor writes it, for the Python fallback."""
    if not bundle:
        return
    import json

    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        start = int(stat[stat.rfind(b")") + 2:].split()[19])  # field 22
    except (OSError, IndexError, ValueError):
        start = 0
    line = json.dumps({"monitor": name, "protocol": monitor.PROTOCOL, "pid": os.getpid(),
                       "start": start, "init": init_pid}) + "\n"
    tmp = os.path.join(bundle, f".{monitor.MONITOR_RECORD}.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(line)
        os.rename(tmp, os.path.join(bundle, monitor.MONITOR_RECORD))
    except OSError:
        pass


def warm_up() -> None:
    """Take, while idle, the copy-on-write faults of what ``serve`` runs
    (see ``containerinit.warm_up``)."""
    import json

    spec = json.loads(containerinit.SAMPLE_SPEC)
    json.dumps({"spec": spec})
    spec_fits_spare(spec["namespaces"])
    os.path.abspath(spec["bundle"])
    exit_code(0)
    for value in list(globals().values()):
        getattr(value, "__code__", None)


def _become_shim(inherited: Iterable[socket.socket]) -> None:
    for sock in inherited:
        sock.close()
    set_comm(b"skiff-shim")
    os.setsid()
    # a process that joins a pid namespace others live in (an exec, a
    # container sharing another's) must not be open to them before execve
    _make_undumpable()
    # the fork server ignores SIGCHLD (auto-reap) and handles SIGTERM; the
    # shim must reap its init and die on SIGTERM like any process
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _exit_after(func: Any, *args: Any) -> NoReturn:
    code = 0
    try:
        func(*args)
    except BaseException:
        import traceback  # only now: the fork server stays small

        traceback.print_exc(file=sys.stderr)
        code = 1
    finally:
        os._exit(code)


def run(conn: socket.socket, inherited: Iterable[socket.socket] = ()) -> NoReturn:
    """Entry point of a fresh shim (child of the fork server); never returns."""

    def main() -> None:
        _become_shim(inherited)
        serve(LineChannel(conn), None)

    _exit_after(main)


def run_spare(control: socket.socket, inherited: Iterable[socket.socket] = (),
              userns: bool = False) -> NoReturn:
    """Entry point of a spare shim; it gets its connection through ``control``.
    ``userns``: its init is a remapped container's (``Init.spawn_userns``)."""

    def main() -> None:
        _become_shim(inherited)
        if userns:
            try:
                init = Init.spawn_userns(None, close_in_child=[control])
            except initprocess.InitError:
                return  # as below: the fork server forks fresh shims instead
        else:
            init = Init.spawn({"pid": None}, None, [], close_in_child=[control])
            warm_up()
            idle = init.chan.receive()
            if idle is None or not idle.get("idle"):
                # the init could not make its namespaces; the fork server will
                # find this spare gone and fork fresh shims instead
                init.reap()
                return
        try:
            _, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            fds = []
        control.close()
        if not fds:
            # the fork server stopped: nobody will ever use this spare
            init.kill()
            init.reap()
            return
        serve(LineChannel(socket.socket(fileno=fds[0])), init)

    _exit_after(main)


def serve(chan: LineChannel, init: Init | None) -> None:
    """Run one container from spec to exit code."""
    spec = chan.receive(want_fds=3 + len(MONITOR_ENDS))
    # the daemon's own ends, if it sent them, follow the stdio: the monitor
    # keeps them (protocol 2, see skiff-monitor.c); never the init's
    names = spec.get("monitor_ends") if spec is not None else None
    wanted = 3 + (len(names) if isinstance(names, list) else 0)
    if spec is None or len(chan.fds) != wanted or not _valid_ends(names):
        if init is not None:
            init.kill()
            init.reap()
        if spec is not None:
            chan.send({"error": f"expected {wanted} descriptors with the spec",
                       "exit_code": 125})
        return
    ends = dict(zip(names or [], chan.fds[3:], strict=True))
    chan.fds = chan.fds[:3]
    for fd in ends.values():
        os.set_inheritable(fd, False)
    # an exec (``"exec": true``, an ExecSpec) has no bundle: its exit code
    # matters only to the daemon that started it
    bundle = os.path.abspath(spec["bundle"]) if spec.get("bundle") else ""
    if bundle:
        os.makedirs(bundle, 0o711, exist_ok=True)
    namespaces = spec.get("namespaces") or {}
    userns = "user" in namespaces and not spec.get("exec")
    # A container's init is moved into its cgroups by us, while it builds the
    # container (``move_into_cgroups``); an exec's joins them itself, a remapped
    # init is moved by give_userns_spec before anything else.
    cgroup_procs: list[str] = []
    if not spec.get("exec") and not userns:
        cgroup_procs = list(spec.pop("cgroup_procs", None) or [])
    fits = spec_fits_userns_spare if userns else spec_fits_spare
    if init is not None and (init.userns != userns or not fits(namespaces)):
        init.kill()
        init.reap()
        chan.send(
            {
                "error": "this spec's namespaces do not fit a spare shim "
                "(the runtime chose the wrong socket)",
                "exit_code": 125,
            }
        )
        return
    if init is None:
        try:
            cgroups: list[int] = []
            try:
                if spec.get("exec"):
                    # the container's groups are host paths: opened while we see them
                    for path in spec.get("cgroup_procs") or []:
                        cgroups.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
                    # in every namespace of the container before the fork (see
                    # containerinit.join_container); our own pid namespace stays
                    containerinit.join_container(namespaces)
                    namespaces = {}
                if userns:
                    init = Init.spawn_userns(namespaces, close_in_child=[chan.sock])
                else:
                    init = Init.spawn(namespaces, spec, chan.fds, close_in_child=[chan.sock],
                                      cgroups=cgroups)
            finally:
                for fd in cgroups:
                    os.close(fd)
        except initprocess.InitError as exc:
            chan.send({"error": str(exc), "exit_code": exc.exit_code})
            return
        except OSError as exc:
            chan.send(
                {"error": f"cannot create the container process: {exc.strerror}", "exit_code": 125}
            )
            return
    elif not userns:
        init.chan.send({"spec": spec}, chan.fds)
    if userns:
        try:
            init.give_userns_spec(spec, chan.fds)
        except initprocess.InitError as exc:
            for fd in chan.fds:
                os.close(fd)
            chan.send({"error": str(exc), "exit_code": exc.exit_code})
            return
    # The shim keeps no copy of the stdio: the container's readers must see
    # EOF when the container (not the shim) closes them.
    for fd in chan.fds:
        os.close(fd)
    try:
        move_into_cgroups(init.pid, cgroup_procs)
    except OSError as exc:
        init.kill()
        init.reap()
        chan.send({"error": f"cannot join the container's cgroups: {exc.strerror}",
                   "exit_code": 125})
        return

    # with a TTY the init's ready line carries the pty master; only then is a
    # descriptor expected (a plain recv would drop one)
    ready = init.chan.receive(want_fds=1 if spec.get("tty") else 0)
    terminal, init.chan.fds = init.chan.fds, []
    if ready is None or "error" in ready:
        for fd in terminal:
            os.close(fd)
        code = init.reap()
        if ready is None:
            ready = {"error": f"container init exited during set-up (exit code {code})"}
        chan.send({"error": ready["error"], "exit_code": ready.get("exit_code", 125)})
        return

    if terminal and names is not None:
        ends["stdout"] = os.dup(terminal[0])  # non-inheritable, as dup makes it
    try:
        chan.send({"pid": init.pid}, terminal)
    finally:
        # the daemon owns the master now; a copy kept here would hold the
        # terminal open after the daemon closed it (no hangup for the session)
        for fd in terminal:
            os.close(fd)
    try:
        command = chan.receive()
    except (OSError, ValueError):
        command = None
    if command is None or command.get("cmd") != "go":
        # aborted, or the daemon went away before go: nothing may be left
        init.kill()
        code = init.reap()
        write_exitcode(bundle, code)
        chan.send({"exit": code})
        return

    init.chan.send({"cmd": "go"})
    # the init's end closes on a successful exec; a line means execve failed
    failure = init.chan.receive()
    init.chan.close()
    if failure is None:
        chan.send({"started": True})
        # returns only if it cannot
        spool_max = spec.get("spool_max")
        become_monitor(init.pid, chan, bundle,
                       [ends.get(k, -1) for k in MONITOR_ENDS] if names is not None else None,
                       spool_max if isinstance(spool_max, int) and spool_max >= 0 else None)
        for fd in ends.values():
            os.close(fd)  # the Python shim speaks protocol 1 only
        record_monitor(bundle, "skiff-shim", init.pid)
    else:
        chan.send({"error": failure["error"], "exit_code": failure.get("exit_code", 126)})
    code = init.reap()
    write_exitcode(bundle, code)
    chan.send({"exit": code})
