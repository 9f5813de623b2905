"""The HTTP/1.1 server that serves the Docker Engine API on a unix socket.

This module owns the listening socket: it refuses to start over a live
daemon, replaces a stale socket file, sets the socket's mode and group, and
runs one task per accepted connection.  What happens on a connection (h11,
keep-alive, streaming, disconnect detection) is in :mod:`.connection`; the
raw stream a hijacking handler gets is in :mod:`.hijack`.  The names
handlers and the daemon used to import from here are re-exported.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat

import structlog
import trio

from skiff.core.api.connection import RECEIVE_SIZE, serve_connection
from skiff.core.api.hijack import HijackedStream
from skiff.core.api.router import (
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    Request,
    Response,
    Router,
    StreamResponse,
    json_response,
)

__all__ = [
    "MULTIPLEXED_STREAM",
    "RAW_STREAM",
    "RECEIVE_SIZE",
    "DaemonAlreadyRunning",
    "HijackedStream",
    "Request",
    "Response",
    "Router",
    "StreamResponse",
    "json_response",
    "serve_unix",
]

log = structlog.get_logger("skiff.api")

_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class DaemonAlreadyRunning(RuntimeError):
    """The socket path is answered by a live server: another daemon is running."""


async def _refuse_live_socket(path: str) -> None:
    """Remove a stale socket at ``path``; raise if a server still answers there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(
            f"{path} exists and is not a socket: remove it or choose another socket path")
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.move_on_after(2):
            await probe.connect(path)
        # connected, or the connect hung (a full backlog): someone is listening
        live = True
    except ConnectionRefusedError:
        live = False
    except FileNotFoundError:
        return
    finally:
        probe.close()
    if live:
        raise DaemonAlreadyRunning(
            f"another daemon is already running: it answers on {path}; stop it first or "
            "choose another socket path")
    os.unlink(path)
    log.info("api.stale_socket_removed", socket=path)


async def serve_unix(path: str, router: Router, *, mode: int = 0o660,
                     group: str | None = "skiff", backlog: int = 128,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``router`` on the unix socket ``path`` until cancelled.

    A stale socket file (nobody listening) is replaced; a live one raises
    :class:`DaemonAlreadyRunning`.  The socket gets ``mode`` and, if the
    group exists, ``group``.  ``task_status.started(path)`` once it listens.
    On exit (cancellation included) every connection is closed and the
    socket file removed.
    """
    await _refuse_live_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inode: int | None = None
    try:
        await sock.bind(path)
        inode = os.stat(path).st_ino
        os.chmod(path, mode)
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                gid = None
            if gid is not None:
                os.chown(path, -1, gid)
        sock.listen(backlog)
        log.info("api.listening", socket=path)
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                try:
                    conn, _ = await sock.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error("api.accept_failed", socket=path, error=str(exc))
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(serve_connection, trio.SocketStream(conn), router)
    finally:
        sock.close()
        if inode is not None:
            # only our own socket: a successor may already have bound a new one here
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
