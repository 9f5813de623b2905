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

The shim outlives the daemon: if the connection breaks after go it keeps
waiting and still records the exit code in ``<bundle>/exitcode``.

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
from skiff.plugins.isolation import containerinit, idmapfs
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
    """The shim's handle on its container init."""

    def __init__(self, pid: int, chan: LineChannel) -> None:
        self.pid = pid
        self.chan = chan

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
    def spawn_userns(cls, spec: dict[str, Any], stdio: list[int],
                     close_in_child: Iterable[socket.socket] = ()) -> Init:
        """Fork stage one of a container in a user namespace, give its
        namespace the mappings and build its root filesystem (see
        ``containerinit.run_userns``); returns stage two, PID 1 of the
        container, adopted by this shim once stage one exits."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # stage two's parent exits: its orphan must come to us, not to init
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        pid = os.fork()
        if pid == 0:
            ours.close()
            for sock in close_in_child:
                sock.close()
            containerinit.run_userns(spec, stdio, LineChannel(theirs))
        theirs.close()
        chan = LineChannel(ours)
        stage_one = cls(pid, chan)
        try:
            said = chan.receive()
            if said is None or "error" in said:
                raise _failed(stage_one, said)
            try:
                if spec["namespaces"]["user"] is None:
                    idmapfs.write_maps(pid, spec.get("uid_map") or [], spec.get("gid_map") or [])
                userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                stage_one.kill()
                stage_one.reap()
                raise containerinit.InitError(
                    f"cannot set up the container's user namespace: {exc.strerror}") from None
            try:
                root_ids = (idmapfs.host_of_root(spec.get("uid_map") or [[0, 0, 1]]),
                            idmapfs.host_of_root(spec.get("gid_map") or [[0, 0, 1]]))
                tree = idmapfs.build_rootfs(
                    [m for m in spec.get("rootfs_mounts") or []
                     if m.get("destination", "/") in ("", "/")],
                    os.path.join(os.path.abspath(spec["bundle"]), "rootfs"), userns,
                    bool(spec.get("rootfs_idmap")), root_ids)
            except idmapfs.IdmapError as exc:
                stage_one.kill()
                stage_one.reap()
                raise containerinit.InitError(str(exc)) from None
            finally:
                os.close(userns)
            try:
                chan.send({"rootfs": True}, [tree])
            finally:
                os.close(tree)
            said = chan.receive()
            if said is None or "init" not in said:
                raise _failed(stage_one, said)
            stage_one.reap()
        except BaseException:
            chan.close()
            raise
        return cls(int(said["init"]), chan)


def _failed(stage_one: Init, said: dict[str, Any] | None) -> containerinit.InitError:
    """Stage one of a remapped container reported an error or died: reap it."""
    code = stage_one.reap()
    if said is None or "error" not in said:
        return containerinit.InitError(f"container init exited during set-up (exit code {code})")
    return containerinit.InitError(said["error"], said.get("exit_code", 125))


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


def run_spare(control: socket.socket, inherited: Iterable[socket.socket] = ()) -> NoReturn:
    """Entry point of a spare shim; it gets its connection through ``control``."""

    def main() -> None:
        _become_shim(inherited)
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
    spec = chan.receive(want_fds=3)
    if spec is None or len(chan.fds) != 3:
        if init is not None:
            init.kill()
            init.reap()
        if spec is not None:
            chan.send({"error": "expected 3 stdio descriptors with the spec", "exit_code": 125})
        return
    # an exec (``"exec": true``, an ExecSpec) has no bundle: its exit code
    # matters only to the daemon that started it
    bundle = os.path.abspath(spec["bundle"]) if spec.get("bundle") else ""
    if bundle:
        os.makedirs(bundle, 0o711, exist_ok=True)
    namespaces = spec.get("namespaces") or {}
    if init is not None and not spec_fits_spare(namespaces):
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
                if "user" in namespaces:
                    init = Init.spawn_userns(spec, chan.fds, close_in_child=[chan.sock])
                else:
                    init = Init.spawn(namespaces, spec, chan.fds, close_in_child=[chan.sock],
                                      cgroups=cgroups)
            finally:
                for fd in cgroups:
                    os.close(fd)
        except containerinit.InitError as exc:
            chan.send({"error": str(exc), "exit_code": exc.exit_code})
            return
        except OSError as exc:
            chan.send(
                {"error": f"cannot create the container process: {exc.strerror}", "exit_code": 125}
            )
            return
    else:
        init.chan.send({"spec": spec}, chan.fds)
    # The shim keeps no copy of the stdio: the container's readers must see
    # EOF when the container (not the shim) closes them.
    for fd in chan.fds:
        os.close(fd)

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
    else:
        chan.send({"error": failure["error"], "exit_code": failure.get("exit_code", 126)})
    code = init.reap()
    write_exitcode(bundle, code)
    chan.send({"exit": code})
