"""One HTTP/1.1 connection of the API server (h11 over trio).

Requests on a connection are handled one after the other (keep-alive, as the
docker CLI reuses its connection).  Request bodies stream to the handler;
responses are either whole (``Response``) or chunked and flushed chunk by
chunk (``StreamResponse``); a handler may instead hijack the connection
(:mod:`.hijack`).

While a ``StreamResponse`` body is being sent (and the request body has been
read), a per-connection watcher waits for the socket to turn readable.  EOF
there means the client went away (Ctrl-C on ``docker run`` while it waits,
``docker logs -f`` or ``docker events`` closed), so the stream is cancelled
and closed instead of waiting forever, as Go's server cancels a request's
context.  Plain handlers are not watched: they finish what they started.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import h11
import structlog
import trio

from skiff import __version__
from skiff.core import errors as core_errors
from skiff.core.api.errors import ClientDisconnected, status_and_message, unwrap
from skiff.core.api.hijack import HijackedStream, wait_consumed
from skiff.core.api.router import (
    API_VERSION,
    Headers,
    Request,
    Response,
    Router,
    StreamResponse,
    error_response,
    json_response,
)

__all__ = [
    "DOCKER_HEADERS",
    "RECEIVE_SIZE",
    "SERVER_HEADER",
    "HttpConnection",
    "serve_connection",
]

log = structlog.get_logger("skiff.api")

RECEIVE_SIZE = 256 * 1024
#: request line + headers; Go's http server allows 1 MiB too (X-Registry-Auth can be large)
MAX_HEADER_SIZE = 1024 * 1024
#: after the response, read and discard at most this much of a body the handler left unread
#: to keep the connection; a bigger rest closes it instead
DRAIN_LIMIT = 1024 * 1024
#: and for no longer than this before a connection that is to close anyway closes
DRAIN_SECONDS = 2.0
#: bodies above this are handed to the socket without joining them to the headers
_JOIN_LIMIT = 64 * 1024

SERVER_HEADER = f"skiff/{__version__} (linux)"
#: Docker's headers on every response (Go's canonical casing)
DOCKER_HEADERS: list[tuple[bytes, bytes]] = [
    (b"Api-Version", API_VERSION.encode()),
    (b"Docker-Experimental", b"false"),
    (b"Ostype", b"linux"),
    (b"Server", SERVER_HEADER.encode()),
]
_RAW_DOCKER_HEADERS = b"".join(k + b": " + v + b"\r\n" for k, v in DOCKER_HEADERS)
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


def _encode_headers(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


class HttpConnection:
    """One client connection: parse requests, dispatch, respond, watch for disconnects."""

    def __init__(self, stream: trio.SocketStream, router: Router) -> None:
        self.stream = stream
        self.router = router
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_SIZE)
        # the request in flight
        self.req_scope: trio.CancelScope | None = None
        self.body_done = True
        self.responded = False
        self.hijacked = False
        self.client_gone = False
        self.close_after = False
        # disconnect watcher
        self.armed = False
        self.arm_event = trio.Event()
        self.watch_scope: trio.CancelScope | None = None

    # -- connection loop -------------------------------------------------------------
    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch)
                try:
                    await self._serve_requests()
                finally:
                    nursery.cancel_scope.cancel()
        except Exception as exc:
            # a bug in this layer costs one connection, never the server
            log.error("api.connection_failed", error=str(exc) or type(exc).__name__,
                      exc_info=exc)
        finally:
            await self.stream.aclose()

    async def _serve_requests(self) -> None:
        h = self.h11
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as exc:
                await self._protocol_error(exc)
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed
            if not await self._handle(event):
                return
            if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                return
            h.start_next_cycle()

    async def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        log.debug("api.bad_request", error=str(exc))
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = exc.error_status_hint or 400
        body = json_response({"message": f"bad HTTP request: {exc}"}, status).body
        headers = [*DOCKER_HEADERS, (b"Content-Type", b"application/json"),
                   (b"Content-Length", str(len(body)).encode()), (b"Connection", b"close")]
        with contextlib.suppress(Exception):
            data = self.h11.send(h11.Response(status_code=status, headers=headers,
                                              reason=_reason(status)))
            data += self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
            await self.stream.send_all(data)

    async def _next_event(self) -> Any:
        h = self.h11
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            if h.they_are_waiting_for_100_continue:
                await self._send_raw(h.send(h11.InformationalResponse(status_code=100,
                                                                      headers=[])))
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            h.receive_data(data)

    async def _send_raw(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.client_gone = True
            raise ClientDisconnected("client closed the connection") from exc

    # -- one request ------------------------------------------------------------------
    async def _handle(self, event: h11.Request) -> bool:
        """Serve one request; whether the connection may carry another."""
        started = time.perf_counter()
        request = Request(event.method.decode("ascii"), event.target.decode("latin-1"),
                          Headers(event.headers), self,
                          http_version=event.http_version.decode("ascii"))
        self.body_done = False
        self.responded = self.hijacked = self.client_gone = self.close_after = False
        status: int | None = None
        if request.body_complete:
            await self.read_body_chunk()  # h11's EndOfMessage; no I/O for an empty body
        try:
            try:
                response = await self.router.dispatch(request)
            except Exception as exc:
                response = self._error(request, exc)
            if response is not None and not self.hijacked and not self.client_gone:
                status = response.status
                self._decide_close(request)
                if isinstance(response, StreamResponse):
                    # Only a streamed body is cancelled when the client goes
                    # away: a plain handler runs to completion (a half-done
                    # stop or create helps nobody), and a handler that waits
                    # for long (wait, events, logs -f) streams.
                    with trio.CancelScope() as scope:
                        self.req_scope = scope
                        try:
                            await self._send_stream(request, response)
                        finally:
                            self._disarm()
                            self.req_scope = None
                    if scope.cancelled_caught:
                        self.client_gone = True
                else:
                    await self._send_response(request, response)
        except ClientDisconnected:
            self.client_gone = True
        elapsed = time.perf_counter() - started
        log.debug("api.request", method=request.method, path=request.target,
                  status=101 if self.hijacked else status, ms=round(elapsed * 1000, 3),
                  **({"disconnected": True} if self.client_gone else {}))
        observe = self.router.observe
        if observe is not None:
            observe(request.operation or "unmatched",
                    "101" if self.hijacked else str(status) if status is not None
                    else "disconnected", elapsed)
        if self.hijacked or self.client_gone:
            return False
        if self.close_after:
            if not self.body_done:
                # a client still sending (docker cp's chunked tar) would get a
                # reset instead of the answer if we closed on unread bytes: read
                # and drop a bounded rest first, as Go's server does
                with trio.move_on_after(DRAIN_SECONDS):
                    await self._drain()
            return False
        if not self.body_done:
            return await self._drain()
        return True

    def _error(self, request: Request, exc: Exception) -> Response | None:
        if isinstance(exc, ClientDisconnected):
            self.client_gone = True
            return None
        if self.hijacked or self.responded:
            # nobody can be told over HTTP any more
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                log.debug("api.hijacked_stream_closed", path=request.target, error=str(exc))
            else:
                log.error("api.handler_failed", method=request.method, path=request.target,
                          error=str(exc) or type(exc).__name__, hijacked=True, exc_info=exc)
            return None
        status, message = status_and_message(exc)
        # a bad-input error from a child task arrives in an exception group: still a 4xx
        expected = isinstance(unwrap(exc), core_errors.SkiffError)
        if not expected or status >= 500:
            log.error("api.handler_failed", method=request.method, path=request.target,
                      status=status, error=message, exc_info=None if expected else exc)
        return error_response(exc)

    def _decide_close(self, request: Request) -> None:
        # A body the handler left unread either gets drained after the
        # response (small) or the connection closes (big or unknown length).
        if self.body_done:
            return
        length = request.content_length
        if length is None or length - request.body_bytes_read > DRAIN_LIMIT:
            self.close_after = True

    def _headers(self, content_type: str | None, extra: list[tuple[str, str]]
                 ) -> list[tuple[bytes, bytes]]:
        headers = list(DOCKER_HEADERS)
        if content_type and not any(k.lower() == "content-type" for k, _ in extra):
            headers.append((b"Content-Type", content_type.encode("latin-1")))
        if extra:
            headers.extend(_encode_headers(extra))
        if self.close_after:
            headers.append((b"Connection", b"close"))
        return headers

    async def _send_response(self, request: Request, response: Response) -> None:
        h = self.h11
        status = response.status
        bodyless = status in (204, 304) or status < 200
        body = b"" if bodyless else response.body
        headers = self._headers(None if bodyless else response.content_type, response.headers)
        if not bodyless:
            headers.append((b"Content-Length", str(len(body)).encode()))
        head = h.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
        self.responded = True
        if body and request.method != "HEAD":
            h.send_with_data_passthrough(h11.Data(data=body))  # bookkeeping; returns [body]
            end = h.send(h11.EndOfMessage())
            if len(body) <= _JOIN_LIMIT:
                await self._send_raw(b"".join((head, body, end)))
            else:
                await self._send_raw(head)
                await self._send_raw(body)
                if end:
                    await self._send_raw(end)
        else:
            await self._send_raw(head + h.send(h11.EndOfMessage()))

    async def _send_stream(self, request: Request, response: StreamResponse) -> None:
        h = self.h11
        body = response.body
        iterator: AsyncIterator[bytes] | None = None
        try:
            headers = self._headers(response.content_type, response.headers)
            await self._send_raw(h.send(h11.Response(status_code=response.status,
                                                     headers=headers,
                                                     reason=_reason(response.status))))
            self.responded = True
            if request.method == "HEAD":
                await self._send_raw(h.send(h11.EndOfMessage()))
                return
            if self.body_done:
                self._arm()
            iterator = aiter(body)
            try:
                async for chunk in iterator:
                    if chunk:
                        await self._send_raw(h.send(h11.Data(data=chunk)))
            except ClientDisconnected:
                raise
            except Exception as exc:
                last = None
                if response.on_error is not None:
                    with contextlib.suppress(Exception):
                        last = response.on_error(exc)
                status, message = status_and_message(exc)
                log.warning("api.stream_failed", method=request.method, path=request.target,
                            error=message, exc_info=None if status < 500 else exc)
                if last is None:
                    # end without the terminating chunk: the client sees a cut-short body
                    self.close_after = True
                    return
                if last:
                    await self._send_raw(h.send(h11.Data(data=last)))
            await self._send_raw(h.send(h11.EndOfMessage()))
        finally:
            await _aclose_quietly(iterator if iterator is not None else body)

    async def _drain(self) -> bool:
        drained = 0
        try:
            while chunk := await self.read_body_chunk():
                drained += len(chunk)
                if drained > DRAIN_LIMIT:
                    return False
        except ClientDisconnected:
            return False
        return True

    # -- what Request calls ----------------------------------------------------------
    async def read_body_chunk(self) -> bytes:
        if self.body_done:
            return b""
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as exc:
                self.client_gone = True
                raise ClientDisconnected(f"client closed the connection mid-body: {exc}") from None
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.body_done = True
                self._arm()
                return b""
            else:
                self.client_gone = True
                raise ClientDisconnected("client closed the connection mid-body")

    async def hijack(self, request: Request, content_type: str,
                     head: bytes | None = None) -> HijackedStream:
        if self.responded:
            raise RuntimeError("cannot hijack: a response has already been sent")
        self._disarm()
        self.hijacked = True  # from here on the watcher stays off and h11 is out of the loop
        while await self.read_body_chunk():
            pass
        if head is None and "upgrade" in request.headers:
            # Docker checks only that Upgrade is present; the docker CLI wants a 101
            head = (b"HTTP/1.1 101 UPGRADED\r\nContent-Type: " + content_type.encode("latin-1")
                    + b"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n")
        elif head is None:
            # the pre-1.x way: a 200 without length; the body is the raw stream
            head = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type.encode("latin-1") + b"\r\n"
        await self._send_raw(head + _RAW_DOCKER_HEADERS + b"\r\n")
        self.responded = True
        await wait_consumed(self.stream.socket)
        buffered, eof = self.h11.trailing_data
        return HijackedStream(self.stream, buffered, eof)

    # -- disconnect watcher ----------------------------------------------------------
    def _arm(self) -> None:
        if self.req_scope is None or self.hijacked or self.armed:
            return
        self.armed = True
        self.arm_event.set()

    def _disarm(self) -> None:
        self.armed = False
        if self.arm_event.is_set():
            self.arm_event = trio.Event()
        if self.watch_scope is not None:
            # aborts the pending wait synchronously: the fd is free for a reader right away
            self.watch_scope.cancel()

    async def _watch(self) -> None:
        sock = self.stream.socket
        while True:
            await self.arm_event.wait()
            if not self.armed:
                await trio.lowlevel.checkpoint()
                continue
            target = self.req_scope
            with trio.CancelScope() as ws:
                self.watch_scope = ws
                try:
                    await trio.lowlevel.wait_readable(sock)
                finally:
                    self.watch_scope = None
            if ws.cancelled_caught or not self.armed or self.req_scope is not target:
                continue
            try:
                # peek, do not consume: data here belongs to the next request
                peek = await sock.recv(1, socket.MSG_PEEK)
            except OSError:
                peek = b""
            if not self.armed or self.req_scope is not target or target is None:
                continue
            self.armed = False
            self.arm_event = trio.Event()
            if not peek:
                self.client_gone = True
                target.cancel()


async def _aclose_quietly(obj: object) -> None:
    aclose = getattr(obj, "aclose", None)
    if aclose is None:
        return
    # Bounded and shielded: the body's cleanup (unsubscribe, close a pipe)
    # should run even when the request was cancelled, but never hang.
    with trio.CancelScope(deadline=trio.current_time() + 5, shield=True):
        try:
            await aclose()
        except Exception as exc:
            log.warning("api.stream_close_failed", error=str(exc) or type(exc).__name__)


async def serve_connection(stream: trio.SocketStream, router: Router) -> None:
    await HttpConnection(stream, router).serve()
