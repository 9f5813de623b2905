"""Exec and terminal endpoints: create/start/resize/inspect an exec, resize a container's TTY.

``POST /exec/{id}/start`` hijacks the connection unless ``Detach`` is true;
the stream is raw with a TTY and multiplexed (8-byte headers) without, as
for attach.  An error after the hijack (command not found) is written into
the stream, as dockerd does, and the exit code (126/127) shows in
``GET /exec/{id}/json``, where the docker CLI reads it.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import trio

from skiff.core.api import bodytypes
from skiff.core.api.router import MULTIPLEXED_STREAM, RAW_STREAM, Request, Response, Router
from skiff.core.api.streams import STDOUT, multiplex_frame
from skiff.core.errors import InvalidParameter, SkiffError
from skiff.core.hookspecs import StartError

if TYPE_CHECKING:
    from skiff.core.engine import Engine


def _size(req: Request) -> tuple[int, int]:
    """``h`` and ``w`` of a resize request; both required, as in Docker."""
    values = []
    for name in ("h", "w"):
        raw = req.q(name)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise InvalidParameter(
                f'strconv.Atoi: parsing "{raw or ""}": invalid syntax ({name} must be a number)'
            ) from None
        if not 0 <= value <= 0xFFFF:
            raise InvalidParameter(f"{name}={value} is out of range (0 to 65535)")
        values.append(value)
    return values[0], values[1]


def register(router: Router, engine: Engine) -> None:
    execs = engine.execs
    mgr = engine.containers

    @router.route("POST", "/containers/{id}/exec")
    async def create(req: Request, id: str) -> Response:
        body = await req.json()
        bodytypes.check(body, bodytypes.EXEC_CONFIG, "types.ExecConfig")
        exec_id = execs.create(id, body)
        return Response(201, json.dumps({"Id": exec_id}).encode(), "application/json")

    @router.route("POST", "/exec/{id}/start")
    async def start(req: Request, id: str) -> Response | None:
        body: Any = await req.json(default={})
        bodytypes.check(body, bodytypes.EXEC_START, "types.ExecStartCheck")
        if not isinstance(body, dict):
            raise InvalidParameter("the request body must be a JSON object")
        ex = execs.check_startable(id)
        if body.get("Detach"):
            await execs.start(id, None, framed=False)
            return Response(200)
        tty = bool(body.get("Tty", ex.tty))
        stream = await req.hijack(content_type=RAW_STREAM if tty else MULTIPLEXED_STREAM)
        async with stream:
            try:
                await execs.start(id, stream, framed=not tty)
            except SkiffError as exc:
                await _report(stream, exc.message, tty)
            except StartError as exc:
                await _report(stream, f"OCI runtime exec failed: exec failed: {exc}", tty)
        return None

    @router.route("POST", "/exec/{id}/resize")
    async def resize(req: Request, id: str) -> None:
        h, w = _size(req)
        execs.resize(id, h, w)

    @router.route("GET", "/exec/{id}/json")
    async def inspect(req: Request, id: str) -> dict[str, Any]:
        return execs.get(id).inspect()

    @router.route("POST", "/containers/{id}/resize")
    async def resize_container(req: Request, id: str) -> None:
        h, w = _size(req)
        mgr.resize(id, h, w)


async def _report(stream: Any, message: str, tty: bool) -> None:
    data = (message + "\r\n").encode()
    # a client that is gone learns the exit code from ExecInspect anyway
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data if tty else multiplex_frame(STDOUT, data))
