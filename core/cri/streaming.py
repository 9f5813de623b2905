"""The CRI's streaming server: ``Exec``, ``Attach`` and ``PortForward`` answer
a URL, and the client (kubelet's proxy, crictl, critest) opens it with an HTTP
upgrade to SPDY/3.1, as it does with containerd's server.

Each URL holds a one-time token (``/exec/TOKEN``...) for a request the gRPC
call checked; a token lives ``TOKEN_TTL`` seconds and is spent by its first
use, as kubelet's. Plain HTTP on 127.0.0.1 and a port the kernel picks, by
default (daemon.json ``cri-stream-address``): the tokens are the only
authentication, as containerd's default, so it stays on loopback unless the
operator says otherwise.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
import structlog
import trio

from skiff.core.cri.portforward import serve_portforward
from skiff.core.cri.remotecommand import serve_attach, serve_exec
from skiff.core.cri.spdysession import SpdySession
from skiff.core.errors import InvalidParameter, Unavailable

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.cri")

#: seconds a URL answered by Exec/Attach/PortForward stays usable (kubelet's)
TOKEN_TTL = 60.0
#: URLs not used yet, at most (kubelet's maxInFlight)
MAX_PENDING = 1000
#: seconds a client has to send its request line and headers
REQUEST_TIMEOUT = 15.0
#: the protocols spoken: remotecommand v4 (its error stream a JSON Status) and
#: port-forward v1; a client offering none of them is refused with the list
EXEC_PROTOCOLS = ("v4.channel.k8s.io",)
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io",)


@dataclass
class Pending:
    kind: str  # exec | attach | portforward
    request: Any  # the CRI's request message
    expires: float


Handler = Callable[[SpdySession, Any, str], Awaitable[None]]


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` of daemon.json ``cri-stream-address`` (port 0: any)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidParameter(f"invalid cri-stream-address {value!r}: use HOST:PORT, "
                               "e.g. 127.0.0.1:0")
    return host, int(port)


class StreamingServer:
    """The HTTP front: tokens, the upgrade, then the session's handler."""

    def __init__(self, address: str, handlers: dict[str, Handler]) -> None:
        self.host, self.port = parse_address(address)
        self.handlers = handlers
        self.pending: dict[str, Pending] = {}
        self.base_url = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        sock = listeners[0].socket
        host, port = sock.getsockname()[:2]
        self.base_url = (f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
        log.info("cri.streaming_listening", url=self.base_url)
        task_status.started(self.base_url)
        await trio.serve_listeners(self._connection, listeners)

    # -- the gRPC side (on the loop) ---------------------------------------------

    def url_for(self, kind: str, request: Any) -> str:
        now = trio.current_time()
        for token in [t for t, p in self.pending.items() if p.expires < now]:
            del self.pending[token]
        if len(self.pending) >= MAX_PENDING:
            raise Unavailable(f"too many {kind} requests waiting for their client "
                              f"({MAX_PENDING}); try again")
        if not self.base_url:
            raise Unavailable("the CRI's streaming server is not listening yet")
        token = secrets.token_urlsafe(18)
        self.pending[token] = Pending(kind, request, now + TOKEN_TTL)
        return f"{self.base_url}/{kind}/{token}"

    # -- one connection -------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("cri.streaming_failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request = None
        with trio.move_on_after(REQUEST_TIMEOUT):
            while request is None:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    await _respond(stream, conn, 400, f"bad request: {exc}")
                    return
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                else:
                    return
        if request is None:
            return
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        offered = [p.strip() for k, v in request.headers
                   if k.decode().lower() == "x-stream-protocol-version"
                   for p in v.decode("latin-1").split(",") if p.strip()]
        parts = request.target.decode("latin-1").split("?")[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] not in self.handlers:
            await _respond(stream, conn, 404, "404 page not found")
            return
        kind, token = parts
        pending = self.pending.get(token)
        if pending is None or pending.kind != kind or pending.expires < trio.current_time():
            await _respond(stream, conn, 404,
                           f"unknown or expired {kind} token: ask the CRI for a new URL")
            return
        upgrade = headers.get("upgrade", "").lower()
        if "upgrade" not in headers.get("connection", "").lower() or not upgrade:
            await _respond(stream, conn, 400, "unable to upgrade: missing upgrade headers "
                           "in request (the streaming server speaks SPDY/3.1)")
            return
        if upgrade != "spdy/3.1":
            await _respond(stream, conn, 400, f"unable to upgrade to {upgrade!r}: skiff's "
                           "streaming server speaks SPDY/3.1 only (crictl --transport spdy)")
            return
        supported = PORTFORWARD_PROTOCOLS if kind == "portforward" else EXEC_PROTOCOLS
        chosen = next((p for p in offered if p in supported), "")
        if not chosen:
            await _respond(stream, conn, 403, "unable to upgrade: unable to negotiate "
                           f"protocol: client supports {offered}, server supports "
                           f"{list(supported)}", [("X-Accept-Stream-Protocol-Version",
                                                   ", ".join(supported))])
            return
        del self.pending[token]  # spent: one client per URL
        # h11 lets the server switch once the client's request (no body) has ended
        with trio.move_on_after(REQUEST_TIMEOUT):
            while (event := conn.next_event()) is not h11.PAUSED:
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
        if conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            return
        await stream.send_all(conn.send(h11.InformationalResponse(
            status_code=101, headers=[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                                      ("X-Stream-Protocol-Version", chosen)])) or b"")
        session = SpdySession(stream, conn.trailing_data[0])
        log.info("cri.streaming_session", kind=kind, protocol=chosen)
        await self.handlers[kind](session, pending.request, chosen)


async def _respond(stream: trio.SocketStream, conn: h11.Connection, status: int, text: str,
                   extra: list[tuple[str, str]] | None = None) -> None:
    body = (text + "\n").encode()
    await stream.send_all(conn.send(h11.Response(
        status_code=status, headers=[("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(body))),
                                     ("Connection", "close"), *(extra or [])])) or b"")
    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


def handlers_for(engine: Engine) -> dict[str, Handler]:
    """What serves each kind of URL, on ``engine``."""
    async def exec_(session: SpdySession, request: Any, protocol: str) -> None:
        await serve_exec(engine, session, request)

    async def attach(session: SpdySession, request: Any, protocol: str) -> None:
        await serve_attach(engine, session, request)

    async def portforward(session: SpdySession, request: Any, protocol: str) -> None:
        await serve_portforward(engine, session, request)

    return {"exec": exec_, "attach": attach, "portforward": portforward}
