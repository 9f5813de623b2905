"""The fork server: one small process per daemon that forks container shims.

Started once by the runtime as ``python -m skiff.plugins.isolation.forkserver
<socket>``.  It imports only what a shim and a container init need (os,
socket, json, the compiled syscalls), so forking it costs about a millisecond
while starting a fresh interpreter costs tens.  For every connection on its
unix sockets it forks a shim, or hands the connection to the spare shim it
forked ahead of time (see shim.py), and the shim takes the connection over;
the fork server never reads from a connection and never waits for children
(SIGCHLD is ignored, so the kernel reaps shims), which keeps it
single-threaded and trivially correct.

It dies with the daemon (PR_SET_PDEATHSIG); running shims, in their own
sessions, do not.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
from typing import TYPE_CHECKING

from skiff.core import syscalls as sc
from skiff.plugins.isolation import initprocess, shim
from skiff.plugins.isolation.channel import set_comm

if TYPE_CHECKING:
    from collections.abc import Iterator

#: environment variable carrying the daemon's pid, to close the PDEATHSIG race
PARENT_ENV = "SKIFF_FORKSERVER_PARENT"
#: what the fork server writes on stdout once it accepts connections
READY = b"ready\n"
#: sun_path holds 108 bytes; longer paths go through a directory descriptor
_SUN_PATH_MAX = 100


@contextlib.contextmanager
def short_socket_path(path: str) -> Iterator[str]:
    """A path for bind/connect that fits sun_path, however deep ``path`` is."""
    if len(path.encode()) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


class _Stop(Exception):
    pass


def _on_term(signum: int, frame: object) -> None:
    raise _Stop


def _ensure_std_fds() -> None:
    # a received descriptor must never land on 0-2, where the init dup2s stdio
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def spare_socket_path(path: str) -> str:
    """Where the fork server takes connections meant for its spare shim."""
    return path + ".spare"


def userns_spare_socket_path(path: str) -> str:
    """Where it takes connections meant for its remapped spare shim (whose
    init made a user namespace and the namespaces it owns, see shim.py)."""
    return path + ".spare-userns"


def _listen(path: str) -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with short_socket_path(path) as bind_path:
        sock.bind(bind_path)
    os.chmod(path, 0o600)
    sock.listen(128)
    # a connection that vanished between select and accept must not block us
    sock.setblocking(False)
    return sock, os.stat(path).st_ino


class _Spare:
    """A pre-forked shim waiting, with its init, for a connection."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.control = control

    def hand_off(self, conn: socket.socket) -> bool:
        try:
            socket.send_fds(self.control, [b"c"], [conn.fileno()])
            return True
        except OSError:
            return False  # the spare died; the caller forks a fresh shim

    def close(self) -> None:
        self.control.close()

    def retire(self, timeout: float = 2.0) -> None:
        """Close the control socket and wait until the spare is gone.

        The spare shim sees EOF, kills its init and exits; waiting for that
        means that once the fork server has exited, nothing of it remains.
        SIGCHLD is ignored, so the kernel reaps it and a pidfd tells when.
        """
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = -1
        self.close()
        if pidfd >= 0:
            try:
                select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)


def _fork_spare(listeners: list[socket.socket], userns: bool = False,
                others: list[socket.socket] | None = None) -> _Spare | None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = _fork()
    if pid == 0:
        shim.run_spare(theirs, [*listeners, *(others or []), ours], userns=userns)
    theirs.close()
    if pid < 0:
        ours.close()
        return None
    return _Spare(pid, ours)


def _fork_fresh(conn: socket.socket, inherited: list[socket.socket]) -> None:
    pid = _fork()
    if pid == 0:
        shim.run(conn, inherited)
    if pid < 0:
        with contextlib.suppress(OSError):
            conn.sendall(b'{"error": "cannot fork a container shim", "exit_code": 125}\n')


def _fork() -> int:
    # SIGTERM's handler raises; it must not run in the child before the shim
    # has replaced it, or the child would unwind into the accept loop
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return pid


def serve(path: str, spares: bool = True) -> None:
    """Accept and fork until SIGTERM.

    Connections on ``path`` get a freshly forked shim; connections on the
    spare socket go to the pre-forked spare when there is one (and to a fresh
    shim otherwise), and a new spare is forked right after.  The remapped
    spare socket works the same way, with a spare of its own kept only once
    a remapped container has been asked for (a daemon without userns-remap
    never pays for one).
    """
    fresh, fresh_ino = _listen(path)
    spare_path = spare_socket_path(path)
    spare_l, spare_ino = _listen(spare_path)
    userns_path = userns_spare_socket_path(path)
    userns_l, userns_ino = _listen(userns_path)
    listeners = [fresh, spare_l, userns_l]
    os.write(1, READY)
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    spare: _Spare | None = None
    userns_spare: _Spare | None = None
    userns_wanted = False
    failed_spares = 0
    try:
        while True:
            if spares and spare is None:
                spare = _fork_spare(listeners, others=[userns_spare.control]
                                    if userns_spare else [])
            if spares and userns_wanted and userns_spare is None:
                userns_spare = _fork_spare(listeners, userns=True,
                                           others=[spare.control] if spare else [])
            ready, _, _ = select.select(listeners, [], [])
            for listener in ready:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                if listener is userns_l:
                    userns_wanted = True
                    if userns_spare is not None:
                        used, userns_spare = userns_spare, None
                        handed = used.hand_off(conn)
                        used.close()
                        if handed:
                            conn.close()
                            continue
                    _fork_fresh(conn, [*listeners, *([spare.control] if spare else [])])
                elif listener is spare_l and spare is not None:
                    used, spare = spare, None
                    handed = used.hand_off(conn)
                    used.close()
                    if not handed:
                        _fork_fresh(conn, [*listeners,
                                           *([userns_spare.control] if userns_spare else [])])
                        failed_spares += 1
                        if spares and failed_spares >= 3:
                            # spares die on this host (their namespaces cannot
                            # be made ahead of time?): stop wasting forks
                            spares = False
                            os.write(
                                2,
                                b"skiff fork server: spare shims keep dying; "
                                b"forking shims on demand only\n",
                            )
                    else:
                        failed_spares = 0
                else:
                    _fork_fresh(conn, [*listeners,
                                       *[x.control for x in (spare, userns_spare) if x]])
                conn.close()
    except _Stop:
        pass
    finally:
        for left in (spare, userns_spare):
            if left is not None:
                left.retire()
        for listener, p, ino in ((fresh, path, fresh_ino), (spare_l, spare_path, spare_ino),
                                 (userns_l, userns_path, userns_ino)):
            listener.close()
            # remove the socket only if it is still ours (a new fork server
            # may already have replaced it)
            with contextlib.suppress(OSError):
                if os.stat(p).st_ino == ino:
                    os.unlink(p)


def main(argv: list[str]) -> int:
    args = argv[1:]
    spares = "--no-spare" not in args
    monitor = "--no-monitor" not in args
    args = [a for a in args if a not in ("--no-spare", "--no-monitor")]
    if len(args) != 1:
        print(f"usage: {argv[0]} SOCKET [--no-spare] [--no-monitor]", file=sys.stderr)
        return 2
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    set_comm(b"skiff-forksrv")
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if parent and os.getppid() != parent:
        return 0  # the daemon died before PDEATHSIG was armed
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)
    _ensure_std_fds()
    if monitor:  # without it running containers keep their Python shims
        shim.open_monitor()
    initprocess.host_capabilities()
    # Shims and inits live for milliseconds before exec (or are mostly
    # asleep): a cyclic GC pass in them would only touch every object and
    # copy its page.  Freezing keeps the collector off the inherited heap.
    gc.collect()
    gc.freeze()
    gc.disable()
    serve(os.path.abspath(args[0]), spares)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
