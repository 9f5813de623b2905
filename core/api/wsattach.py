"""``GET /containers/{id}/attach/ws``: attach over a websocket (browsers, web consoles).

The handshake is answered on the connection hijack that attach uses; after
it, wsproto (sans-IO) turns the container's output into binary messages and
the client's messages, text or binary, into its stdin.  As dockerd: raw bytes,
never the multiplexed framing, and ``stream`` is off unless asked for.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import trio

from skiff.core.api.router import Request, Router
from skiff.core.containers.streams import DEFAULT_DETACH_KEYS, parse_detach_keys
from skiff.core.errors import InvalidParameter

if TYPE_CHECKING:
    from skiff.core.engine import Engine

# wsproto is imported by the first websocket attach, not by the daemon's start

#: the most bytes of stdin one receive hands on (a message may be larger: the rest waits)
RECEIVE_CHUNK = 65536


class WebSocketStream(trio.abc.Stream):
    """A trio stream over a websocket: ``send_all`` sends one binary message,
    ``receive_some`` yields message payloads, b"" once the client closed."""

    def __init__(self, raw: trio.abc.Stream) -> None:
        from wsproto.connection import Connection, ConnectionType

        self._raw = raw
        self._ws = Connection(ConnectionType.SERVER)
        self._pending = bytearray()
        self._closed = False
        self._send_lock = trio.Lock()

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self._raw.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        from wsproto.events import BytesMessage

        if self._closed:
            raise trio.ClosedResourceError("the websocket is closed")
        if data:
            await self._send(self._ws.send(BytesMessage(data=bytes(data))))

    async def wait_send_all_might_not_block(self) -> None:
        await self._raw.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

        limit = max_bytes or RECEIVE_CHUNK
        while not self._pending and not self._closed:
            raw = bytes(await self._raw.receive_some(RECEIVE_CHUNK))
            self._ws.receive_data(raw or None)
            for event in self._ws.events():
                if isinstance(event, (BytesMessage, TextMessage)):
                    data = event.data
                    self._pending += data.encode() if isinstance(data, str) else data
                elif isinstance(event, Ping):
                    await self._send(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):  # the peer may be gone
                        await self._send(self._ws.send(event.response()))
                    self._closed = True
            if not raw:
                self._closed = True
        out = bytes(self._pending[:limit])
        del self._pending[:limit]
        return out

    async def aclose(self) -> None:
        """Say goodbye with a close frame (if the client has not), then close."""
        from wsproto.events import CloseConnection

        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._send(self._ws.send(CloseConnection(code=1000)))
        await self._raw.aclose()


def handshake_head(req: Request) -> bytes:
    """The 101 that accepts the client's websocket handshake (RFC 6455)."""
    from wsproto.utilities import generate_accept_token

    key = req.headers.get("sec-websocket-key") or ""
    if "websocket" not in (req.headers.get("upgrade") or "").lower() or not key:
        raise InvalidParameter("this endpoint is a websocket: send a websocket handshake "
                               "(Upgrade: websocket, Sec-WebSocket-Key)")
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + generate_accept_token(key.encode("latin-1")) + b"\r\n")


def register(router: Router, engine: Engine) -> None:
    mgr = engine.containers

    @router.route("GET", "/containers/{id}/attach/ws")
    async def attach_ws(req: Request, id: str) -> None:
        mgr.get(id)  # a 404 before the handshake
        keys = req.q("detachKeys") or DEFAULT_DETACH_KEYS
        try:
            detach_keys = parse_detach_keys(keys)
        except ValueError as exc:
            raise InvalidParameter(f"Invalid detach keys ({keys}) provided: {exc}") from exc
        head = handshake_head(req)
        raw = await req.hijack(head=head)
        async with WebSocketStream(raw) as ws:
            await mgr.attach(id, ws, stdin=req.qbool("stdin"), stdout=req.qbool("stdout"),
                             stderr=req.qbool("stderr"), logs=req.qbool("logs"), framed=False,
                             detach_keys=detach_keys, live=req.qbool("stream"))
