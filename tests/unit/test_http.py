"""The API's HTTP layer: a real server on a unix socket in a temp dir, real clients.

Clients: a small h11 client (keep-alive, chunked uploads, incremental reads),
raw socket bytes (hijack), the stock docker CLI and docker-py.
"""

from __future__ import annotations

import grp
import json
import os
import platform
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import h11
import pytest
import trio

from skiff.core import errors as core_errors
from skiff.core.api import errors as api_errors
from skiff.core.api.connection import RECEIVE_SIZE
from skiff.core.api.http import DaemonAlreadyRunning, serve_unix
from skiff.core.api.router import (
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    Request,
    Response,
    Router,
    StreamResponse,
    json_response,
    split_version,
)
from skiff.core.api.streams import (
    STDERR,
    STDIN,
    STDOUT,
    Demuxer,
    demux,
    demux_streams,
    error_line,
    error_line_for,
    json_line,
    multiplex_frame,
)

DOCKER = "/usr/local/bin/docker"
MiB = 1024 * 1024


# -- harness ---------------------------------------------------------------------------
@pytest.fixture
def sock() -> Iterator[str]:
    # unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer
    d = tempfile.mkdtemp(prefix="skiff-http-", dir="/tmp")
    try:
        yield os.path.join(d, "api.sock")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_with_server(router: Router, path: str, body: Callable[[str], Awaitable[None]],
                    timeout: float = 60, **kw: Any) -> None:
    """Serve ``router`` on ``path``, run ``body(path)``, cancel the server, check cleanup."""

    kw.setdefault("group", None)

    async def main() -> None:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                started = await nursery.start(partial(serve_unix, path, router, **kw))
                assert started == path
                try:
                    await body(path)
                finally:
                    nursery.cancel_scope.cancel()

    trio.run(main)
    assert not os.path.exists(path), "the socket file must be removed on exit"


class Client:
    """A minimal HTTP/1.1 client over one unix-socket connection (h11, client side)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, path: str) -> Client:
        return cls(await trio.open_unix_socket(path))

    async def send(self, event: Any) -> None:
        data = self.h.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> Any:
        while True:
            ev = self.h.next_event()
            if ev is h11.NEED_DATA:
                self.h.receive_data(await self.stream.receive_some(1 << 20))
                continue
            return ev

    async def start(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                    body: bytes | None = None) -> None:
        hs = [("Host", "docker"), *(headers or [])]
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                        for k, _ in hs):
            hs.append(("Content-Length", str(len(body))))
        await self.send(h11.Request(method=method, target=target, headers=hs))
        if body:
            await self.send(h11.Data(data=body))
        if body is not None or not any(k.lower() == "transfer-encoding" for k, _ in hs):
            await self.send(h11.EndOfMessage())

    async def head(self) -> h11.Response:
        ev = await self.next_event()
        while isinstance(ev, h11.InformationalResponse) and ev.status_code == 100:
            ev = await self.next_event()
        assert isinstance(ev, h11.Response), ev
        return ev

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            ev = await self.next_event()
            if isinstance(ev, h11.Data):
                yield bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return
            else:
                raise AssertionError(ev)

    async def finish(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def reuse(self) -> None:
        self.h.start_next_cycle()

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        if self.h.our_state is h11.DONE:
            self.reuse()
        await self.start(method, target, headers, body)
        resp = await self.head()
        data = await self.finish()
        return resp.status_code, _hdict(resp.headers), data

    async def aclose(self) -> None:
        await self.stream.aclose()


def _hdict(headers: Any) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in headers}


async def one_request(path: str, method: str, target: str, **kw: Any
                      ) -> tuple[int, dict[str, str], bytes]:
    c = await Client.connect(path)
    try:
        return await c.request(method, target, **kw)
    finally:
        await c.aclose()


async def raw_exchange(path: str, request: bytes) -> tuple[trio.SocketStream, str,
                                                           dict[str, str], bytes]:
    """Send raw request bytes; return the stream, status line, headers, and bytes after them."""
    stream = await trio.open_unix_socket(path)
    await stream.send_all(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, f"EOF before the end of the response head: {buf!r}"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return stream, lines[0], headers, rest


async def read_to_eof(stream: trio.abc.ReceiveStream, initial: bytes = b"") -> bytes:
    parts = [initial]
    while data := await stream.receive_some(65536):
        parts.append(data)
    return b"".join(parts)


def version_payload() -> dict[str, Any]:
    kernel = platform.release()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "Platform": {"Name": "skiff-test"},
        "Components": [{"Name": "Engine", "Version": "0.0.1-test",
                        "Details": {"ApiVersion": "1.41", "MinAPIVersion": "1.24", "Os": "linux",
                                    "Arch": arch, "KernelVersion": kernel}}],
        "Version": "0.0.1-test", "ApiVersion": "1.41", "MinAPIVersion": "1.24",
        "GitCommit": "", "GoVersion": "", "Os": "linux", "Arch": arch, "KernelVersion": kernel,
        "BuildTime": "",
    }


def base_router() -> Router:
    r = Router()

    @r.route("GET", "/_ping")
    @r.route("HEAD", "/_ping")
    async def ping(req: Request) -> Response:
        return Response(200, b"OK", "text/plain; charset=utf-8",
                        headers=[("Cache-Control", "no-cache, no-store, must-revalidate"),
                                 ("Pragma", "no-cache")])

    @r.route("GET", "/version")
    async def version(req: Request) -> dict[str, Any]:
        return version_payload()

    return r


# -- keep-alive, versions, routing -----------------------------------------------------
def test_keepalive_several_requests_on_one_connection(sock: str) -> None:
    r = base_router()
    conns: list[object] = []

    @r.route("GET", "/containers/{id}/json")
    async def inspect(req: Request, id: str) -> dict[str, Any]:
        conns.append(req._conn)  # the server's connection object behind this request
        return {"Id": id, "n": len(conns)}

    async def body(path: str) -> None:
        c = await Client.connect(path)
        for i in range(6):
            status, headers, data = await c.request("GET", f"/v1.41/containers/c{i}/json")
            assert status == 200
            assert json.loads(data) == {"Id": f"c{i}", "n": i + 1}
            assert headers["content-type"] == "application/json"
            assert headers["api-version"] == "1.41"
            assert headers["docker-experimental"] == "false"
            assert headers["ostype"] == "linux"
            assert headers["server"].startswith("skiff/") and headers["server"].endswith("(linux)")
            assert "close" not in headers.get("connection", "")
        # HEAD on the same connection: headers, no body, connection still usable
        status, headers, data = await c.request("HEAD", "/_ping")
        assert (status, data) == (200, b"")
        assert headers["content-length"] == "2"
        status, _, data = await c.request("GET", "/_ping")
        assert (status, data) == (200, b"OK")
        await c.aclose()
        assert all(conn is conns[0] for conn in conns), "one connection served them all"

    run_with_server(r, sock, body)


def test_version_prefix_and_version_errors(sock: str) -> None:
    r = base_router()

    @r.route("GET", "/info")
    async def info(req: Request) -> dict[str, Any]:
        return {"api": req.api_version, "path": req.path, "at_least_1_40": req.api_at_least("1.40")}

    async def body(path: str) -> None:
        c = await Client.connect(path)
        for prefix, want in (("/v1.41", "1.41"), ("/v1.24", "1.24"), ("", "1.41"),
                             ("/v1.30", "1.30")):
            status, _, data = await c.request("GET", prefix + "/info")
            assert status == 200
            got = json.loads(data)
            assert got["api"] == want and got["path"] == "/info"
            assert got["at_least_1_40"] == (want >= "1.40")
        status, headers, data = await c.request("GET", "/v1.42/info")
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert json.loads(data) == {
            "message": "client version 1.42 is too new. Maximum supported API version is 1.41"}
        status, _, data = await c.request("GET", "/v1.23/info")
        assert status == 400
        assert "client version 1.23 is too old" in json.loads(data)["message"]
        # unknown path, and a known path with the wrong method: Docker's 404
        for method, target in (("GET", "/v1.41/nope"), ("DELETE", "/info"), ("GET", "/"),
                               ("POST", "/v1.41/info")):
            status, _, data = await c.request(method, target)
            assert (status, json.loads(data)) == (404, {"message": "page not found"})
        await c.aclose()

    run_with_server(r, sock, body)


def test_path_params_single_segment_and_path(sock: str) -> None:
    r = base_router()

    @r.route("GET", "/images/json")
    async def list_images(req: Request) -> list[str]:
        return ["list"]

    @r.route("GET", "/images/{name:path}/json")
    async def inspect(req: Request, name: str) -> dict[str, str]:
        return {"name": name}

    @r.route("DELETE", "/images/{name:path}")
    async def remove(req: Request, name: str) -> dict[str, str]:
        return {"removed": name, "force": str(req.qbool("force"))}

    @r.route("POST", "/containers/{id}/start")
    async def start(req: Request, id: str) -> None:
        return None

    async def body(path: str) -> None:
        c = await Client.connect(path)
        cases = {
            "/v1.41/images/a/b:tag/json": "a/b:tag",
            "/images/busybox/json": "busybox",
            "/v1.41/images/registry.local:5000/team/app:1.2/json":
                "registry.local:5000/team/app:1.2",
            "/v1.41/images/a%2Fb%3Atag/json": "a/b:tag",  # percent-encoded, as docker-py sends
            "/v1.41/images/sha256:0123abcd/json": "sha256:0123abcd",
        }
        for target, want in cases.items():
            status, _, data = await c.request("GET", target)
            assert (status, json.loads(data)) == (200, {"name": want}), target
        status, _, data = await c.request("GET", "/v1.41/images/json")
        assert json.loads(data) == ["list"]
        status, _, data = await c.request("DELETE", "/v1.41/images/a/b:tag?force=1")
        assert json.loads(data) == {"removed": "a/b:tag", "force": "True"}
        status, _, data = await c.request("POST", "/v1.41/containers/abc/start")
        assert (status, data) == (204, b"")
        # {id} is one segment
        status, _, _ = await c.request("POST", "/v1.41/containers/a/b/start")
        assert status == 404
        await c.aclose()

    run_with_server(r, sock, body)


# -- request bodies --------------------------------------------------------------------
def test_chunked_upload_is_streamed_not_buffered(sock: str) -> None:
    r = base_router()
    first_chunk = trio.Event()
    total_size = 50 * MiB

    @r.route("POST", "/images/load")
    async def load(req: Request) -> dict[str, int]:
        total = biggest = chunks = 0
        async for chunk in req.body_stream():
            total += len(chunk)
            biggest = max(biggest, len(chunk))
            chunks += 1
            first_chunk.set()
        return {"total": total, "biggest": biggest, "chunks": chunks}

    async def upload(path: str, chunked: bool) -> dict[str, int]:
        c = await Client.connect(path)
        piece = os.urandom(64 * 1024)
        framing = (("Transfer-Encoding", "chunked") if chunked
                   else ("Content-Length", str(total_size)))
        await c.send(h11.Request(method="POST", target="/v1.41/images/load?quiet=1",
                                 headers=[("Host", "docker"), framing,
                                          ("Content-Type", "application/x-tar")]))
        await c.send(h11.Data(data=piece))
        # The handler sees the first chunk while most of the body is still
        # unsent: a server that buffered the whole body would never get here.
        with trio.fail_after(10):
            await first_chunk.wait()
        sent = len(piece)
        while sent < total_size:
            await c.send(h11.Data(data=piece))
            sent += len(piece)
        await c.send(h11.EndOfMessage())
        resp = await c.head()
        data = await c.finish()
        await c.aclose()
        assert resp.status_code == 200, data
        return json.loads(data)

    async def body(path: str) -> None:
        nonlocal first_chunk
        for chunked in (True, False):
            first_chunk = trio.Event()
            got = await upload(path, chunked)
            assert got["total"] == total_size
            # memory per step is bounded by one receive, never the body
            assert 0 < got["biggest"] <= RECEIVE_SIZE
            assert got["chunks"] >= total_size // RECEIVE_SIZE

    run_with_server(r, sock, body, timeout=120)


def test_read_body_cap_and_json_errors(sock: str) -> None:
    r = base_router()

    @r.route("POST", "/containers/create")
    async def create(req: Request) -> Any:
        doc = await req.json(limit=1000)
        return json_response({"Id": "x", "got": doc}, status=201)

    @r.route("POST", "/containers/{id}/start")
    async def start(req: Request, id: str) -> None:
        await req.json(default=None)

    async def body(path: str) -> None:
        c = await Client.connect(path)
        status, _, data = await c.request("POST", "/containers/create", body=b'{"Image":"a"}',
                                          headers=[("Content-Type", "application/json")])
        assert (status, json.loads(data)) == (201, {"Id": "x", "got": {"Image": "a"}})
        status, headers, data = await c.request("POST", "/containers/create", body=b'{"Image":')
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert json.loads(data)["message"].startswith("invalid JSON in request body:")
        status, _, data = await c.request("POST", "/containers/create", body=b"")
        assert status == 400 and "empty" in json.loads(data)["message"]
        status, _, data = await c.request("POST", "/containers/create", body=b"\xff\xfe")
        assert status == 400 and "invalid JSON" in json.loads(data)["message"]
        # over the cap: 413, and the (small) unread body is drained so the connection lives on
        status, _, data = await c.request("POST", "/containers/create",
                                          body=b'{"x":"' + b"a" * 5000 + b'"}')
        assert status == 413 and "limit of 1000 bytes" in json.loads(data)["message"]
        status, _, data = await c.request("POST", "/containers/abc/start")
        assert (status, data) == (204, b"")
        # chunked body over the cap (no length known up front): 413, then the server closes
        c.reuse()
        await c.send(h11.Request(method="POST", target="/containers/create",
                                 headers=[("Host", "d"), ("Transfer-Encoding", "chunked")]))
        for _ in range(3):
            await c.send(h11.Data(data=b"b" * 600))
        await c.send(h11.EndOfMessage())
        resp = await c.head()
        assert resp.status_code == 413
        assert _hdict(resp.headers)["connection"] == "close"
        await c.finish()
        await c.aclose()

    run_with_server(r, sock, body)


def test_expect_100_continue(sock: str) -> None:
    r = base_router()

    @r.route("POST", "/echo")
    async def echo(req: Request) -> Response:
        return Response(200, await req.read_body(), "application/octet-stream")

    async def body(path: str) -> None:
        c = await Client.connect(path)
        await c.send(h11.Request(method="POST", target="/echo",
                                 headers=[("Host", "d"), ("Content-Length", "5"),
                                          ("Expect", "100-continue")]))
        ev = await c.next_event()
        assert isinstance(ev, h11.InformationalResponse) and ev.status_code == 100
        await c.send(h11.Data(data=b"hello"))
        await c.send(h11.EndOfMessage())
        resp = await c.head()
        assert resp.status_code == 200
        assert await c.finish() == b"hello"
        await c.aclose()

    run_with_server(r, sock, body)


# -- streaming responses ---------------------------------------------------------------
def test_stream_response_is_received_incrementally(sock: str) -> None:
    r = base_router()
    proceed = trio.Event()
    closed = trio.Event()

    @r.route("GET", "/events")
    async def events(req: Request) -> StreamResponse:
        async def gen() -> AsyncIterator[bytes]:
            try:
                yield json_line({"status": "first"})
                await proceed.wait()  # only the client can release this
                yield json_line({"status": "second"})
            finally:
                closed.set()

        return StreamResponse(gen(), content_type="application/json")

    async def body(path: str) -> None:
        c = await Client.connect(path)
        await c.start("GET", "/v1.41/events")
        resp = await c.head()
        headers = _hdict(resp.headers)
        assert resp.status_code == 200
        assert headers["transfer-encoding"] == "chunked"
        assert headers["api-version"] == "1.41"
        chunks = c.chunks()
        with trio.fail_after(5):
            first = await chunks.__anext__()
        assert first == b'{"status":"first"}\r\n'
        assert not closed.is_set()
        proceed.set()
        rest = b"".join([x async for x in chunks])
        assert rest == b'{"status":"second"}\r\n'
        assert closed.is_set()
        # the connection carries on after a chunked response
        status, _, data = await c.request("GET", "/_ping")
        assert (status, data) == (200, b"OK")
        await c.aclose()

    run_with_server(r, sock, body)


def test_client_disconnect_mid_stream_closes_generator(sock: str) -> None:
    r = base_router()
    finalized = trio.Event()
    idle_finalized = trio.Event()

    @r.route("GET", "/containers/{id}/logs")
    async def logs(req: Request, id: str) -> StreamResponse:
        async def gen() -> AsyncIterator[bytes]:
            try:
                i = 0
                while True:  # a busy producer: the send fails
                    yield multiplex_frame(STDOUT, b"line %d\n" % i)
                    i += 1
                    await trio.sleep(0.001)
            finally:
                finalized.set()

        return StreamResponse(gen(), content_type=MULTIPLEXED_STREAM)

    @r.route("POST", "/containers/{id}/wait")
    async def wait(req: Request, id: str) -> StreamResponse:
        async def gen() -> AsyncIterator[bytes]:
            try:
                await trio.sleep_forever()  # an idle producer: only the watcher can notice
                yield b""
            finally:
                idle_finalized.set()

        return StreamResponse(gen())

    async def body(path: str) -> None:
        c = await Client.connect(path)
        await c.start("GET", "/containers/x/logs?follow=1")
        await c.head()
        await c.chunks().__anext__()
        await c.aclose()
        with trio.fail_after(5):
            await finalized.wait()

        c = await Client.connect(path)
        await c.start("POST", "/v1.41/containers/x/wait")
        resp = await c.head()  # headers go out before the body has anything to say
        assert resp.status_code == 200
        await c.aclose()
        with trio.fail_after(5):
            await idle_finalized.wait()
        # the server is fine
        assert (await one_request(path, "GET", "/_ping"))[0] == 200

    run_with_server(r, sock, body)


def test_stream_error_mid_body(sock: str) -> None:
    r = base_router()

    async def failing() -> AsyncIterator[bytes]:
        yield json_line({"status": "Loading layer"})
        raise core_errors.InvalidParameter("archive/tar: invalid tar header")

    @r.route("POST", "/images/load")
    async def load(req: Request) -> StreamResponse:
        return StreamResponse(failing(), on_error=error_line_for)

    @r.route("GET", "/images/get")
    async def save(req: Request) -> StreamResponse:
        return StreamResponse(failing(), content_type="application/x-tar")

    async def body(path: str) -> None:
        # with on_error: the error is the last JSON line of a well-formed response
        status, _, data = await one_request(path, "POST", "/images/load")
        lines = data.split(b"\r\n")
        assert status == 200 and lines[-1] == b""
        assert json.loads(lines[-2]) == {"errorDetail": {"message": "archive/tar: invalid tar "
                                                         "header"},
                                         "error": "archive/tar: invalid tar header"}
        # without: the body is cut short, so the client cannot mistake it for a whole tar
        c = await Client.connect(path)
        await c.start("GET", "/images/get?names=a")
        assert (await c.head()).status_code == 200
        with pytest.raises(h11.RemoteProtocolError):
            await c.finish()
        await c.aclose()
        assert (await one_request(path, "GET", "/_ping"))[0] == 200

    run_with_server(r, sock, body)


# -- hijack ----------------------------------------------------------------------------
def hijack_router(log: list[bytes]) -> Router:
    r = base_router()

    @r.route("POST", "/containers/{id}/attach")
    async def attach(req: Request, id: str) -> None:
        if id == "missing":  # fails before the hijack: an ordinary error reply
            raise api_errors.NotFound(f"No such container: {id}")
        stream = await req.hijack(MULTIPLEXED_STREAM if req.qbool("mux") else RAW_STREAM)
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(multiplex_frame(STDOUT, data.upper()) if req.qbool("mux")
                                      else data.upper())
            # the client half-closed; its read side is still open
            await stream.send_all(multiplex_frame(STDERR, b"stdin closed") if req.qbool("mux")
                                  else b"|stdin closed")

    @r.route("POST", "/exec/{id}/start")
    async def exec_start(req: Request, id: str) -> None:
        spec = await req.json()
        stream = await req.hijack(RAW_STREAM)
        await stream.send_all(json.dumps(spec).encode())
        await stream.send_eof()  # server-side half-close: the client sees EOF ...
        while data := await stream.receive_some():  # ... and may still send
            log.append(data)
        await stream.aclose()

    return r


def test_hijack_with_upgrade_101_bidirectional_and_half_close(sock: str) -> None:
    async def body(path: str) -> None:
        # "early" rides in the same write as the request: h11 has it buffered at hijack time
        request = (b"POST /v1.41/containers/c1/attach?stream=1&stdin=1&stdout=1&mux=1 HTTP/1.1\r\n"
                   b"Host: docker\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                   b"\r\nearly;")
        stream, status, headers, rest = await raw_exchange(path, request)
        assert status == "HTTP/1.1 101 UPGRADED"
        assert headers["content-type"] == MULTIPLEXED_STREAM
        assert headers["connection"] == "Upgrade" and headers["upgrade"] == "tcp"
        assert headers["api-version"] == "1.41"
        d = Demuxer()
        frames = d.feed(rest)
        while not frames:
            frames += d.feed(await stream.receive_some(65536))
        assert frames == [(STDOUT, b"EARLY;")]
        await stream.send_all(b"hello")
        frames = []
        while not frames:
            frames += d.feed(await stream.receive_some(65536))
        assert frames == [(STDOUT, b"HELLO")]
        await stream.send_eof()
        tail = await read_to_eof(stream)
        assert demux(tail) == [(STDERR, b"stdin closed")]
        await stream.aclose()
        # an upgrade request that fails before hijacking gets JSON and keeps its connection
        c = await Client.connect(path)
        status, _, data = await c.request(
            "POST", "/v1.41/containers/missing/attach?stream=1",
            headers=[("Connection", "Upgrade"), ("Upgrade", "tcp")], body=b"")
        assert (status, json.loads(data)) == (404, {"message": "No such container: missing"})
        assert (await c.request("GET", "/_ping"))[0] == 200
        await c.aclose()

    run_with_server(hijack_router([]), sock, body)


def test_hijack_without_upgrade_200_and_server_half_close(sock: str) -> None:
    received: list[bytes] = []

    async def body(path: str) -> None:
        request = (b"POST /containers/c1/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n\r\n")
        stream, status, headers, rest = await raw_exchange(path, request)
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"] == RAW_STREAM
        assert "content-length" not in headers and "transfer-encoding" not in headers
        await stream.send_all(b"abc")
        got = rest
        while len(got) < 3:
            got += await stream.receive_some(65536)
        assert got == b"ABC"
        await stream.send_eof()
        assert await read_to_eof(stream) == b"|stdin closed"
        await stream.aclose()

        # exec start: JSON body read, then hijack; the server half-closes first
        spec = json.dumps({"Detach": False, "Tty": True}).encode()
        request = (b"POST /v1.41/exec/e1/start HTTP/1.1\r\nHost: d\r\nContent-Type: "
                   b"application/json\r\nContent-Length: " + str(len(spec)).encode()
                   + b"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n" + spec)
        stream, status, headers, rest = await raw_exchange(path, request)
        assert status == "HTTP/1.1 101 UPGRADED"
        assert json.loads(await read_to_eof(stream, rest)) == {"Detach": False, "Tty": True}
        await stream.send_all(b"after the server's EOF")
        await stream.send_eof()
        assert await read_to_eof(stream) == b""  # the handler returned: connection closed
        await stream.aclose()
        assert b"".join(received) == b"after the server's EOF"

    run_with_server(hijack_router(received), sock, body)


# -- errors ----------------------------------------------------------------------------
def test_error_responses_and_server_survives(sock: str) -> None:
    r = base_router()

    @r.route("GET", "/containers/{id}/json")
    async def inspect(req: Request, id: str) -> Any:
        if id == "api404":
            raise api_errors.NotFound(f"No such container: {id}")
        if id == "core404":
            raise core_errors.NotFound(f"No such container: {id}")
        if id == "conflict":
            raise api_errors.Conflict("container is running: stop the container before removing")
        if id == "bad":
            raise core_errors.InvalidParameter("bad parameter")
        if id == "custom":
            raise api_errors.ApiError(418, "short and stout")
        if id == "group":
            async with trio.open_nursery() as n:  # a strict ExceptionGroup around one NotFound
                async def child() -> None:
                    raise core_errors.NotFound("No such image: x")
                n.start_soon(child)
        if id == "boom":
            raise RuntimeError("something broke inside")
        if id == "empty":
            raise KeyError()
        return {"Id": id}

    @r.route("POST", "/containers/{id}/start")
    async def start(req: Request, id: str) -> None:
        raise core_errors.NotModified("already started")

    expected = {
        "api404": (404, "No such container: api404"),
        "core404": (404, "No such container: core404"),
        "conflict": (409, "container is running: stop the container before removing"),
        "bad": (400, "bad parameter"),
        "custom": (418, "short and stout"),
        "group": (404, "No such image: x"),
        # a handler bug: a 500 that names the operation (module and handler)
        "boom": (500, "test_http inspect failed: something broke inside"),
        "empty": (500, "test_http inspect failed: KeyError"),
    }

    async def body(path: str) -> None:
        c = await Client.connect(path)
        for cid, (want_status, want_message) in expected.items():
            status, headers, data = await c.request("GET", f"/v1.41/containers/{cid}/json")
            assert status == want_status, cid
            assert headers["content-type"] == "application/json"
            assert headers["api-version"] == "1.41"
            assert json.loads(data) == {"message": want_message}
        # same connection, after a 500: still serving
        status, _, data = await c.request("GET", "/v1.41/containers/ok/json")
        assert (status, json.loads(data)) == (200, {"Id": "ok"})
        status, headers, data = await c.request("POST", "/v1.41/containers/ok/start")
        assert (status, data) == (304, b"")
        await c.aclose()
        # a fresh connection too
        assert (await one_request(path, "GET", "/_ping"))[0] == 200

    run_with_server(r, sock, body)


def test_malformed_http_gets_400_and_server_survives(sock: str) -> None:
    async def body(path: str) -> None:
        stream = await trio.open_unix_socket(path)
        await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
        data = await read_to_eof(stream)
        assert data.startswith(b"HTTP/1.1 400 ")
        assert b'"message":"bad HTTP request' in data
        await stream.aclose()
        # a client that connects and leaves without a word
        stream = await trio.open_unix_socket(path)
        await stream.aclose()
        assert (await one_request(path, "GET", "/_ping"))[0] == 200

    run_with_server(base_router(), sock, body)


# -- the socket ------------------------------------------------------------------------
def test_socket_mode_group_and_stale_socket_replaced(sock: str) -> None:
    # a stale socket: bound by a daemon that died without removing it
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)
    s.close()
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    group = next((g for g in ("daemon", "bin", "sys") if _group_exists(g)), None)

    async def body(path: str) -> None:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        if group:
            assert st.st_gid == grp.getgrnam(group).gr_gid
        assert (await one_request(path, "GET", "/_ping"))[0] == 200

    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_unix, sock, base_router(), group=group))
                await body(sock)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert not os.path.exists(sock)
    # a group that does not exist is skipped, not an error
    run_with_server(base_router(), sock,
                    lambda p: _ping_ok(p), group="no-such-group-skiff-test")  # type: ignore[arg-type]


async def _ping_ok(path: str) -> None:
    assert (await one_request(path, "GET", "/_ping"))[0] == 200


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_live_server_refused_and_non_socket_left_alone(sock: str) -> None:
    async def body(path: str) -> None:
        with pytest.raises(DaemonAlreadyRunning, match="another daemon is already running"):
            await serve_unix(path, base_router(), group=None)
        # the first daemon's socket is intact and it still answers
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert (await one_request(path, "GET", "/_ping"))[0] == 200

    run_with_server(base_router(), sock, body)

    with open(sock, "w") as f:
        f.write("not a socket")

    async def main() -> None:
        with pytest.raises(FileExistsError, match="not a socket"):
            await serve_unix(sock, base_router(), group=None)

    trio.run(main)
    with open(sock) as f:
        assert f.read() == "not a socket"


def test_cancellation_closes_streams_and_hijacks(sock: str) -> None:
    r = base_router()
    stream_closed = trio.Event()
    hijacked = trio.Event()
    hijack_closed = trio.Event()

    @r.route("GET", "/events")
    async def events(req: Request) -> StreamResponse:
        async def gen() -> AsyncIterator[bytes]:
            try:
                yield b"{}\r\n"
                await trio.sleep_forever()
            finally:
                stream_closed.set()

        return StreamResponse(gen())

    @r.route("POST", "/containers/{id}/attach")
    async def attach(req: Request, id: str) -> None:
        stream = await req.hijack()
        hijacked.set()
        try:
            await stream.receive_some()
        finally:
            hijack_closed.set()

    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_unix, sock, r, group=None))
                ev = await Client.connect(sock)
                await ev.start("GET", "/events")
                await ev.head()
                await ev.chunks().__anext__()
                att, status, _, _ = await raw_exchange(
                    sock, b"POST /containers/x/attach HTTP/1.1\r\nHost: d\r\nUpgrade: tcp\r\n"
                          b"Connection: Upgrade\r\n\r\n")
                assert status.startswith("HTTP/1.1 101")
                await hijacked.wait()
                idle = await Client.connect(sock)  # a keep-alive connection between requests
                nursery.cancel_scope.cancel()  # daemon shutdown
            assert stream_closed.is_set() and hijack_closed.is_set()
            # every client sees its connection end
            assert await read_to_eof(att) == b""
            assert await read_to_eof(idle.stream) == b""
            for s in (ev, idle):
                await s.aclose()
            await att.aclose()

    trio.run(main)
    assert not os.path.exists(sock)


# -- real clients ----------------------------------------------------------------------
needs_docker_cli = pytest.mark.skipif(not os.access(DOCKER, os.X_OK),
                                      reason=f"{DOCKER} not installed")


def _docker_env(tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = tmp  # never read or write ~/.docker
    return env


@needs_docker_cli
def test_docker_cli_version(sock: str) -> None:
    async def body(path: str) -> None:
        with tempfile.TemporaryDirectory() as cfg:
            proc = await trio.run_process(
                [DOCKER, "-H", f"unix://{path}", "version", "--format", "{{.Server.APIVersion}}"],
                capture_stdout=True, capture_stderr=True, check=False, env=_docker_env(cfg))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode().strip() == "1.41"

    run_with_server(base_router(), sock, body)


def test_docker_py_version(sock: str) -> None:
    docker = pytest.importorskip("docker")

    def call(path: str) -> dict[str, Any]:
        client = docker.DockerClient(base_url=f"unix://{path}")
        try:
            assert client.api.api_version == "1.41"  # negotiated from /version
            assert client.ping() is True
            return client.version()
        finally:
            client.close()

    async def body(path: str) -> None:
        got = await trio.to_thread.run_sync(call, path)
        assert got["ApiVersion"] == "1.41" and got["MinAPIVersion"] == "1.24"
        assert got["Components"][0]["Name"] == "Engine"

    run_with_server(base_router(), sock, body)


def attach_router(exit_code: int = 3) -> Router:
    """Just enough of a container for ``docker attach`` and docker-py's attach."""
    r = base_router()
    state: dict[str, Any] = {}

    @r.route("GET", "/containers/{id}/json")
    async def inspect(req: Request, id: str) -> dict[str, Any]:
        state.setdefault("done", trio.Event())
        return {"Id": id * 4, "Name": "/" + id,
                "State": {"Status": "running", "Running": True, "Paused": False,
                          "Restarting": False, "ExitCode": 0},
                "Config": {"Tty": False, "OpenStdin": True, "StdinOnce": True,
                           "AttachStdin": True, "AttachStdout": True, "AttachStderr": True}}

    @r.route("POST", "/containers/{id}/attach")
    async def attach(req: Request, id: str) -> None:
        stream = await req.hijack(RAW_STREAM)
        async with stream:
            if req.qbool("logs"):
                await stream.send_all(multiplex_frame(STDOUT, b"old log line\n"))
            if req.qbool("stdin"):
                while data := await stream.receive_some(65536):
                    await stream.send_all(multiplex_frame(STDOUT, data.upper()))
            await stream.send_all(multiplex_frame(STDERR, b"bye\n"))
        state.setdefault("done", trio.Event()).set()

    @r.route("POST", "/containers/{id}/wait")
    async def wait(req: Request, id: str) -> StreamResponse:
        done = state.setdefault("done", trio.Event())

        async def gen() -> AsyncIterator[bytes]:
            await done.wait()
            yield json.dumps({"StatusCode": exit_code, "Error": None}).encode() + b"\n"

        return StreamResponse(gen())

    return r


@needs_docker_cli
def test_docker_cli_attach(sock: str) -> None:
    async def body(path: str) -> None:
        with tempfile.TemporaryDirectory() as cfg:
            proc = await trio.run_process(
                [DOCKER, "-H", f"unix://{path}", "attach", "c0ffee"], stdin=b"hello\nworld\n",
                capture_stdout=True, capture_stderr=True, check=False, env=_docker_env(cfg))
        assert proc.stdout == b"HELLO\nWORLD\n"
        assert proc.stderr == b"bye\n"
        assert proc.returncode == 3  # the exit code from /wait

    run_with_server(attach_router(), sock, body)


def test_docker_py_attach(sock: str) -> None:
    docker = pytest.importorskip("docker")

    def call(path: str) -> tuple[list[bytes], bytes]:
        client = docker.APIClient(base_url=f"unix://{path}", version="1.41")
        try:
            out = list(client.attach("c0ffee", stdout=True, stderr=True, stream=True, logs=True))
            sock_io = client.attach_socket("c0ffee", params={"stdin": 1, "stdout": 1,
                                                             "stderr": 1, "stream": 1})
            raw = sock_io._sock
            raw.sendall(b"ping from docker-py")
            raw.shutdown(socket.SHUT_WR)
            chunks = []
            while data := raw.recv(65536):
                chunks.append(data)
            sock_io.close()
            return out, b"".join(chunks)
        finally:
            client.close()

    async def body(path: str) -> None:
        out, raw = await trio.to_thread.run_sync(call, path)
        assert b"".join(out) == b"old log line\nbye\n"
        assert demux_streams(raw) == (b"PING FROM DOCKER-PY", b"bye\n")

    run_with_server(attach_router(), sock, body)


# -- in-process pieces -----------------------------------------------------------------
def test_request_helpers_and_router_without_socket() -> None:
    r = Router(context="engine")

    @r.route(["GET", "HEAD"], "/containers/json")
    async def ps(req: Request) -> dict[str, Any]:
        return {
            "all": [req.qbool(n) for n in ("t1", "t2", "t3", "t4", "f1", "f2", "f3", "f4", "f5",
                                           "missing")],
            "default": req.qbool("missing", True),
            "limit": req.qint("limit", -1), "nolimit": req.qint("nolimit", -1),
            "filters": req.qjson("filters", {}), "names": req.query.get("name"),
            "ctx": req.context, "ua": req.headers.get("USER-AGENT"), "q": req.q("absent", "d"),
        }

    @r.route("GET", "/containers/{id}/json")
    def sync_handler(req: Request, id: str) -> str:
        return id

    async def main() -> None:
        req = Request.build("GET", "/v1.40/containers/json?t1=1&t2=true&t3=True&t4=yes&f1=0"
                                   "&f2=false&f3=&f4=no&f5=none&limit=5&name=a&name=b"
                                   "&filters=%7B%22status%22%3A%5B%22running%22%5D%7D",
                            headers={"User-Agent": "test"})
        resp = await r.handle(req)
        assert isinstance(resp, Response) and resp.status == 200
        got = json.loads(resp.body)
        assert got["all"] == [True] * 4 + [False] * 6
        assert got["default"] is True
        assert (got["limit"], got["nolimit"]) == (5, -1)
        assert got["filters"] == {"status": ["running"]}
        assert got["names"] == ["a", "b"]
        assert (got["ctx"], got["ua"], got["q"]) == ("engine", "test", "d")
        assert req.api_version == "1.40" and req.path == "/containers/json"

        bad = await r.handle(Request.build("GET", "/containers/json?limit=ten"))
        assert bad.status == 400 and b"not an integer" in bad.body  # type: ignore[union-attr]
        bad = await r.handle(Request.build("GET", "/containers/json?filters=%7Bx"))
        assert bad.status == 400 and b"filters" in bad.body  # type: ignore[union-attr]
        resp = await r.handle(Request.build("GET", "/containers/abc/json"))
        assert resp.status == 200 and resp.body == b"abc"  # type: ignore[union-attr]
        resp = await r.handle(Request.build("POST", "/containers/json"))
        assert resp.status == 404  # type: ignore[union-attr]
        body_req = Request.build("POST", "/x", body=b'{"a": 1}')
        assert await body_req.json() == {"a": 1}
        with pytest.raises(RuntimeError, match="hijack"):
            await Request.build("POST", "/x").hijack()

    trio.run(main)
    assert split_version("/v1.41/info") == ("1.41", "/info")
    assert split_version("/volumes") == (None, "/volumes")
    assert split_version("/v1.41") == (None, "/v1.41")

    inner = Router()
    inner.add("GET", "/images/{name:path}/json", lambda req, name: {"n": name})
    outer = Router()
    outer.include(inner)
    assert outer.match("GET", "/images/a/b:c/json") is not None
    with pytest.raises(ValueError):
        outer.add("GET", "/bad/{x", lambda req: None)


def test_stream_formats() -> None:
    frame = multiplex_frame(STDERR, b"hi")
    assert frame == b"\x02\x00\x00\x00\x00\x00\x00\x02hi"
    assert multiplex_frame(STDIN, b"")[:1] == b"\x00"
    big = os.urandom(70000)
    data = multiplex_frame(STDOUT, b"out") + multiplex_frame(STDERR, b"err") + multiplex_frame(
        STDOUT, big)
    assert demux(data) == [(STDOUT, b"out"), (STDERR, b"err"), (STDOUT, big)]
    assert demux_streams(data) == (b"out" + big, b"err")
    d = Demuxer()
    frames = []
    for i in range(len(data)):  # one byte at a time
        frames += d.feed(data[i:i + 1])
    assert frames == demux(data) and d.pending == 0
    with pytest.raises(ValueError):
        demux(data[:-1])
    assert json_line({"status": "Ünïcode"}) == '{"status":"Ünïcode"}\r\n'.encode()
    assert json.loads(error_line("boom")) == {"errorDetail": {"message": "boom"}, "error": "boom"}
    assert json.loads(error_line_for(api_errors.NotFound("nope")))["error"] == "nope"
