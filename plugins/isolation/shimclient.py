"""The daemon's side of the shim protocol (see shim.py): the connection to one
container's shim and the process it reports.

``ForkServerRuntime`` (runtime.py) connects to the fork server and sends the
spec; from the first reply on the conversation (pid, go, started, exit) is
with that container's shim alone (once the command runs, with the
``skiff-monitor`` the shim became, which speaks the same protocol), and
lives here: ``ShimChannel`` carries
its newline-delimited JSON (and the pty master as SCM_RIGHTS), and
``ForkServerProcess`` is the container's PID 1 as the daemon sees it.

Apart from runtime.py, which holds the hooks and starting the fork server,
because this is the part that runs for every container after it is
prepared.  Runs in the daemon (trio), never in the fork server.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
from collections.abc import Mapping
from typing import Any

import trio

from skiff.core.hookspecs import StartError
from skiff.plugins.isolation.shim import EXITCODE_FILE

#: exit code reported when neither the shim nor the exitcode file can say
UNKNOWN_EXIT = 255


class ShimChannel:
    """Newline-delimited JSON over a trio unix socket."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = b""
        #: descriptors received by ``receive(want_fds=...)``, the caller's to close
        self.fds: list[int] = []

    async def send(self, message: Mapping[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        while data:
            sent = await self.sock.send(data)
            data = data[sent:]

    async def receive(self, want_fds: int = 0) -> dict[str, Any] | None:
        """The next message, or None at end of stream.

        With ``want_fds``, up to that many descriptors that ride along are
        appended to ``fds`` (close-on-exec); without, a descriptor sent to us
        would be discarded by the kernel.
        """
        while b"\n" not in self.buf:
            try:
                if want_fds:
                    chunk, ancdata, _, _ = await self.sock.recvmsg(
                        65536, socket.CMSG_SPACE(want_fds * 4), socket.MSG_CMSG_CLOEXEC
                    )
                    got = _scm_rights(ancdata)
                    self.fds += got
                    want_fds = max(0, want_fds - len(got))
                else:
                    chunk = await self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            # outside trio (a sync caller dropping the container): no task can
            # be waiting on the socket, so closing the descriptor is enough
            if self.sock.fileno() >= 0:
                os.close(self.sock.detach())
            return
        self.sock.close()


def _scm_rights(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


class ForkServerProcess:
    """A container's PID 1 as the shim reports it; satisfies ``ContainerProcess``.

    ``kill`` goes through a pidfd opened while the process was known to be
    alive and unreaped, so a signal can never hit a recycled pid.  If ``go``
    is cancelled after it sent the word, the command may be running: the
    caller then ``abort``s (or ``kill``s and ``wait``s) as for any started
    process.

    ``terminal`` (with tty, the pty master from the container) belongs to the
    caller from the moment ``prepare``/``exec`` returns: nothing here closes
    it, not even ``close``, ``abort`` or ``wait``.
    """

    def __init__(
        self, chan: ShimChannel, pid: int, pidfd: int, bundle: str, terminal: int = -1
    ) -> None:
        self.pid = pid
        self.bundle = bundle
        self.terminal = terminal
        self._chan = chan
        self._pidfd = pidfd
        self._go_sent = False
        self._exit: int | None = None
        self._wait_lock = trio.Lock()

    async def go(self) -> None:
        if self._go_sent:
            raise RuntimeError("go() was already called")
        self._go_sent = True
        # a failed send shows in the reply, or its absence, below
        with contextlib.suppress(OSError):
            await self._chan.send({"cmd": "go"})
        reply = await self._chan.receive()
        if reply is not None and reply.get("started"):
            return
        if reply is None:
            code = await self.wait()
            raise StartError(
                f"container shim went away before the process started (exit code {code})"
            )
        await self.wait()
        raise StartError(
            reply.get("error", "container process failed to start"),
            int(reply.get("exit_code", 125)),
        )

    async def wait(self) -> int:
        async with self._wait_lock:
            if self._exit is not None:
                return self._exit
            code: int | None = None
            while code is None:
                message = await self._chan.receive()
                if message is None:
                    code = await self._exit_without_shim()
                elif "exit" in message:
                    code = int(message["exit"])
            self._exit = code
            self.close()
            return code

    async def _exit_without_shim(self) -> int:
        # The shim died (killed by someone): wait for the init itself through
        # the pidfd and take whatever exit code the shim managed to record.
        if self._pidfd >= 0:
            await trio.lowlevel.wait_readable(self._pidfd)
        if not self.bundle:
            return UNKNOWN_EXIT  # an exec: its shim was the only one to know
        try:
            with open(os.path.join(self.bundle, EXITCODE_FILE)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return UNKNOWN_EXIT

    def adopted(self) -> None:
        """A process taken back from its monitor (adopt.py): it runs already."""
        self._go_sent = True

    async def tell(self, message: Mapping[str, Any]) -> None:
        """A word to a protocol 2 monitor (``close-stdin``); lost if it is gone."""
        with contextlib.suppress(OSError, trio.ClosedResourceError):
            await self._chan.send(message)

    async def stdin_closed(self) -> None:
        """The daemon closed its stdin end: a protocol 2 monitor closes its
        copy, so the container reads the end of file (contract 2.11)."""
        await self.tell({"cmd": "close-stdin"})

    def kill(self, signal: int) -> None:
        if self._pidfd < 0:
            return
        with contextlib.suppress(ProcessLookupError):
            _pidfd_send_signal(self._pidfd, signal)

    async def abort(self) -> None:
        if not self._go_sent:
            self._go_sent = True
            with contextlib.suppress(OSError):
                await self._chan.send({"cmd": "abort"})
        self.kill(signal.SIGKILL)
        await self.wait()

    def close(self) -> None:
        """Drop the connection to the shim without waiting.

        The container keeps running (a prepared one that was never told to
        go is killed by its shim); the shim still records the exit code in
        ``<bundle>/exitcode``.  ``wait`` closes by itself.  Idempotent, and
        callable outside trio.
        """
        self._chan.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def _pidfd_send_signal(pidfd: int, sig: int) -> None:
    signal.pidfd_send_signal(pidfd, sig)
