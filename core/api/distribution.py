"""Registry endpoints: pull (``POST /images/create?fromImage=``), push, login (``/auth``).

Pull and push answer with Docker's JSON progress stream.  The work runs as a
task of the engine's nursery and sends messages through a channel; the
response waits for the first message before sending headers, so an early
failure (unknown manifest, 401, unreachable registry) is a plain HTTP error
the CLI prints as ``Error response from daemon: ...``, while a later one is
the stream's last ``errorDetail`` line, as with dockerd.  If the client goes
away the work is cancelled; what it had stored is released.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from skiff.core.api import bodytypes
from skiff.core.api.router import Request, Router, StreamResponse
from skiff.core.api.streams import error_line_for, json_line
from skiff.core.errors import InvalidParameter
from skiff.core.images.distribution.auth import AuthConfig
from skiff.core.images.distribution.client import login
from skiff.core.images.distribution.endpoints import RegistryConfig
from skiff.core.images.distribution.progress import Emit
from skiff.core.images.distribution.pull import pull, pull_reference
from skiff.core.images.distribution.push import push
from skiff.core.images.reference import familiar_string, split_domain

if TYPE_CHECKING:
    from skiff.core.engine import Engine

_DONE = object()


def registry_auth(req: Request) -> AuthConfig | None:
    """Credentials from ``X-Registry-Auth`` (base64url JSON, as the CLI sends them)."""
    return AuthConfig.from_header(req.headers.get("X-Registry-Auth"))


async def progress_response(engine: Engine,
                            work: Callable[[Emit], Awaitable[Any]]) -> StreamResponse:
    """Run ``work(emit)`` and stream what it emits as a JSON progress stream."""
    send, recv = trio.open_memory_channel[Any](math.inf)
    scope = trio.CancelScope()

    def put(item: object) -> None:
        # the client may have left; then the work is being cancelled
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            send.send_nowait(item)

    def emit(msg: dict[str, Any]) -> None:
        put(msg)

    async def run() -> None:
        with scope:
            try:
                await work(emit)
                put(_DONE)
            except Exception as exc:
                put(exc)
        send.close()

    engine.nursery.start_soon(run)
    try:
        first: Any = await recv.receive()
    except trio.EndOfChannel:
        first = _DONE
    except BaseException:
        scope.cancel()  # the client left before the first message
        raise
    if isinstance(first, Exception):
        raise first

    async def body() -> AsyncIterator[bytes]:
        try:
            item: Any = first
            while True:
                batch: list[bytes] = []
                while True:  # send what is already queued as one chunk
                    if item is _DONE or isinstance(item, Exception):
                        if batch:
                            yield b"".join(batch)
                        if isinstance(item, Exception):
                            raise item
                        return
                    batch.append(json_line(item))
                    try:
                        item = recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        item = _DONE
                yield b"".join(batch)
                try:
                    item = await recv.receive()
                except trio.EndOfChannel:
                    return
        finally:
            scope.cancel()
            recv.close()

    return StreamResponse(body(), on_error=error_line_for)


def register(router: Router, engine: Engine) -> None:
    @router.route("POST", "/images/{name:path}/push")
    async def push_image(req: Request, name: str) -> StreamResponse:
        tag = req.q("tag", "")
        auth = registry_auth(req)

        async def work(emit: Emit) -> None:
            await push(engine.distribution, name, tag, auth, emit)
            ref = name + (":" + tag if tag else "")
            engine.events.publish("image", "push", ref, {"name": ref})

        return await progress_response(engine, work)

    @router.route("POST", "/auth")
    async def auth(req: Request) -> dict[str, str]:
        data = await req.json(default={})
        bodytypes.check(data, bodytypes.AUTH_CONFIG, "types.AuthConfig")
        if not isinstance(data, dict):
            raise InvalidParameter("the body must be a JSON object")
        creds = AuthConfig.from_dict(data)
        server = creds.serveraddress or "docker.io"
        server = server.split("://", 1)[-1].rstrip("/").removesuffix("/v1").removesuffix("/v2")
        domain = split_domain(server.split("/", 1)[0] + "/x")[0]
        try:  # a host name no resolver could be asked about is the client's mistake
            domain.encode("idna")
        except UnicodeError as exc:
            raise InvalidParameter(f"unable to parse server address: {exc}") from None
        cfg = RegistryConfig.from_daemon_config(engine.config)
        endpoint = cfg.endpoints(domain, push=True)[-1]
        await engine.to_thread(login, endpoint, creds, cfg)
        return {"Status": "Login Succeeded", "IdentityToken": ""}


async def pull_response(req: Request, engine: Engine, image: str, tag: str) -> StreamResponse:
    """``POST /images/create?fromImage=...&tag=...``: the pull, streamed."""
    ref = pull_reference(image, tag)
    auth = registry_auth(req)

    async def work(emit: Emit) -> None:
        await pull(engine.distribution, ref, auth, emit)
        name = familiar_string(ref)
        attrs: dict[str, str] = {}
        with contextlib.suppress(Exception):
            attrs.update(engine.images.get(name).labels or {})
        engine.events.publish("image", "pull", name, {**attrs, "name": name})

    return await progress_response(engine, work)
