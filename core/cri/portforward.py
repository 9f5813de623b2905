"""PortForward on a SPDY session (protocol ``portforward.k8s.io``): for each
connection the client opens a pair of streams, ``error`` and ``data``, with the
same ``requestid`` and the pod's ``port``; the server connects to
127.0.0.1:port inside the pod's network namespace and copies both ways.

The socket is made in the pod's namespace by a thread of its own that enters
it (``setns`` changes only the calling thread) and is connected from the loop:
a socket keeps the namespace it was made in.  A pod on the host's network
needs no namespace.  At the end the data stream gets FIN and the error stream
the error's text (nothing when all went well) and FIN.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
import trio

from skiff.core import syscalls as sc
from skiff.core.cri.spdysession import SpdySession, SpdyStream

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.cri")

CONNECT_TIMEOUT = 10.0
READ_SIZE = 32 << 10


@dataclass
class Target:
    """What PortForward's URL was made for: the pod's pause container."""

    sandbox_id: str
    host_network: bool


def socket_in_netns(pid: int) -> socket.socket:
    """A TCP socket in the network namespace of process ``pid``."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(target, sc.CLONE_NEWNET)
            finally:
                os.close(target)
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as exc:
            failed.append(exc)
        # the thread ends here, in the pod's namespace: no other work ever runs on it

    t = threading.Thread(target=enter, name="skiff-cri-netns", daemon=True)
    t.start()
    t.join()
    if failed:
        raise failed[0]
    return made[0]


async def _connect(pid: int | None, port: int) -> trio.SocketStream:
    if pid is None:
        return await trio.open_tcp_stream("127.0.0.1", port)
    raw = await trio.to_thread.run_sync(socket_in_netns, pid)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _forward(pid: int | None, port: int, error: SpdyStream, data: SpdyStream) -> None:
    message = ""
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            target = await _connect(pid, port)
    except (OSError, trio.TooSlowError) as exc:
        message = f"failed to connect to localhost:{port} inside the pod: {exc}"
    else:
        async with target, trio.open_nursery() as n:

            async def upstream() -> None:
                # the client's end: half-close the pod's side, the answer goes on
                while chunk := await data.receive_some(READ_SIZE):
                    await target.send_all(chunk)
                if data.was_reset:
                    n.cancel_scope.cancel()
                    return
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    await target.send_eof()

            n.start_soon(upstream)
            try:
                while chunk := await target.receive_some(READ_SIZE):
                    await data.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            n.cancel_scope.cancel()
    await data.send_eof()
    if message:
        log.info("cri.portforward_failed", port=port, error=message)
        with contextlib.suppress(trio.ClosedResourceError):
            await error.send_all(message.encode())
    await error.send_eof()


async def serve_portforward(engine: Engine, session: SpdySession, target: Target) -> None:
    pairs: dict[str, dict[str, SpdyStream]] = {}
    async with trio.open_nursery() as n:
        n.start_soon(session.run)
        async for s in session.incoming:
            kind = s.headers.get("streamtype", "")
            rid = s.headers.get("requestid", "")
            port = s.headers.get("port", "")
            if kind not in ("error", "data") or not port.isdigit() or not 0 < int(port) < 65536:
                await s.reset()
                continue
            pair = pairs.setdefault(rid, {})
            pair[kind] = s
            if len(pair) < 2:
                continue
            del pairs[rid]
            c = engine.containers.by_id.get(target.sandbox_id)
            pid = None
            if not target.host_network:
                if c is None or not c.state.Running or not c.state.Pid:
                    await pair["error"].send_all(b"the pod sandbox is not running")
                    await pair["error"].send_eof()
                    await pair["data"].send_eof()
                    continue
                pid = c.state.Pid
            log.info("cri.portforward", sandbox=target.sandbox_id, port=int(port))
            n.start_soon(_forward, pid, int(port), pair["error"], pair["data"])
        n.cancel_scope.cancel()
