"""A small Engine API client over the unix socket, with the standard library only.

The ``skiff`` command must start fast, so it carries none of the daemon's
imports: http.client for plain requests, a raw socket for attach.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_HOST = "unix:///run/skiff.sock"
API = "/v1.41"


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Client:
    def __init__(self, host: str | None = None) -> None:
        host = host or os.environ.get("SKIFF_HOST") or DEFAULT_HOST
        if not host.startswith("unix://"):
            raise SystemExit(f"skiff: only unix:// hosts are supported, got {host!r}")
        self.path = host.removeprefix("unix://")

    def _conn(self) -> _UnixConnection:
        return _UnixConnection(self.path)

    def request(self, method: str, path: str, query: dict[str, Any] | None = None,
                body: Any = None, headers: dict[str, str] | None = None,
                stream: bool = False) -> Any:
        url = API + path + ("?" + urlencode(query, doseq=True) if query else "")
        hdrs = dict(headers or {})
        data: Any = None
        if body is not None and not isinstance(body, bytes | bytearray) and not hasattr(
                body, "read"):
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        else:
            data = body
        conn = self._conn()
        try:
            conn.request(method, url, body=data, headers=hdrs)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise SystemExit(
                f"skiff: cannot connect to skiffd at unix://{self.path}: {exc.strerror}. "
                "Is skiffd running?"
            ) from None
        resp = conn.getresponse()
        if resp.status >= 400:
            raw = resp.read()
            try:
                message = json.loads(raw)["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")
            raise APIError(resp.status, message)
        if stream:
            return resp
        raw = resp.read()
        conn.close()
        if resp.getheader("Content-Type", "").startswith("application/json") and raw:
            return json.loads(raw)
        return raw

    def attach(self, cid: str) -> socket.socket:
        """Hijack a connection for the container's stdout/stderr."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        s.sendall(
            f"POST {API}/containers/{quote(cid)}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
            "Host: localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
            .encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise APIError(500, "attach: connection closed")
            head += chunk
        status_line, _, rest = head.partition(b"\r\n\r\n")
        status = int(status_line.split()[1])
        if status not in (101, 200):
            raise APIError(status, status_line.decode(errors="replace"))
        self._pending = rest
        return s

    def demux(self, s: socket.socket) -> Iterator[tuple[int, bytes]]:
        buf = self._pending
        while True:
            while len(buf) < 8:
                chunk = s.recv(65536)
                if not chunk:
                    return
                buf += chunk
            kind, size = struct.unpack(">BxxxL", buf[:8])
            while len(buf) < 8 + size:
                chunk = s.recv(65536)
                if not chunk:
                    return
                buf += chunk
            yield kind, buf[8:8 + size]
            buf = buf[8 + size:]
