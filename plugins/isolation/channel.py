"""Newline-delimited JSON over a blocking unix stream socket, with fd passing.

Used between the daemon's connection and the shim, and between the shim and
the container init.  Loaded by the fork server, so it imports only stdlib
modules that are loaded anyway.
"""

from __future__ import annotations

import json
import os
import socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_LINE = 16 << 20


class LineChannel:
    """One JSON object per line; descriptors ride along with a message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fds: list[int] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, want_fds: int = 0) -> dict[str, Any] | None:
        """The next message, or None at end of stream.

        With ``want_fds``, descriptors that arrive are appended to ``fds``.
        """
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise ValueError("message too long")
            if want_fds:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, want_fds)
                self.fds.extend(fds)
                want_fds -= len(fds)
            else:
                data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> bool:
        """Send; False when the peer is gone (the caller decides if that matters)."""
        data = json.dumps(message).encode() + b"\n"
        try:
            if fds:
                sent = socket.send_fds(self.sock, [data], fds)
                data = data[sent:]
            if data:
                self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


def set_comm(name: bytes) -> None:
    """Name this process in ps and top (the kernel keeps 15 bytes)."""
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, name[:15])
        finally:
            os.close(fd)
    except OSError:
        pass
