"""Container endpoints: create, list, inspect, start, stop, kill, wait, attach, logs, remove."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Response, Router, StreamResponse
from skiff.core.containers.manager import json_status
from skiff.core.containers.model import Container
from skiff.core.errors import InvalidParameter
from skiff.core.hookspecs import ReadConfig
from skiff.core.timefmt import parse_time_param

if TYPE_CHECKING:
    from skiff.core.engine import Engine

RAW = "application/vnd.docker.raw-stream"
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"


def register(router: Router, engine: Engine) -> None:
    mgr = engine.containers

    @router.route("POST", "/containers/create")
    async def create(req: Request) -> Response:
        body = await req.json()
        cid, warnings = await mgr.create(body, req.q("name") or None)
        return Response(201, json.dumps({"Id": cid, "Warnings": warnings}).encode(),
                        "application/json")

    @router.route("GET", "/containers/json")
    async def list_containers(req: Request) -> list[dict[str, Any]]:
        filters = parse_filters(req.q("filters"), CONTAINER_FILTERS)
        show_all = req.qbool("all")
        limit = req.qint("limit", -1)
        found = [c for c in mgr.by_id.values()
                 if (show_all or c.state.Running or filters.get("status"))
                 and _matches(c, filters)]
        found.sort(key=lambda c: c.created, reverse=True)
        if limit > 0:
            found = found[:limit]
        return [c.summary(c.config.get("Image") or c.image_id) for c in found]

    @router.route("GET", "/containers/{id}/json")
    async def inspect(req: Request, id: str) -> dict[str, Any]:
        return mgr.get(id).inspect()

    @router.route("POST", "/containers/{id}/start")
    async def start(req: Request, id: str) -> None:
        await mgr.start(id)

    @router.route("POST", "/containers/{id}/stop")
    async def stop(req: Request, id: str) -> None:
        t = req.q("t")
        await mgr.stop(id, int(t) if t not in (None, "") else None)

    @router.route("POST", "/containers/{id}/restart")
    async def restart(req: Request, id: str) -> None:
        t = req.q("t")
        c = mgr.get(id)
        if c.state.Running:
            await mgr.stop(id, int(t) if t not in (None, "") else None)
        await mgr.start(id)

    @router.route("POST", "/containers/{id}/kill")
    async def kill(req: Request, id: str) -> None:
        await mgr.kill(id, req.q("signal") or None)

    @router.route("POST", "/containers/{id}/wait")
    async def wait(req: Request, id: str) -> StreamResponse:
        notice = mgr.waiter(id, req.q("condition", "not-running"))
        code = mgr.get(id).state.ExitCode

        # The headers go out now, the body when the condition is met: the
        # docker CLI starts the container only after it has the headers.
        async def body() -> AsyncIterator[bytes]:
            if notice is None:
                yield json_status(code)
                return
            await notice.event.wait()
            yield json_status(notice.code)

        return StreamResponse(body(), content_type="application/json")

    @router.route("POST", "/containers/{id}/attach")
    async def attach(req: Request, id: str) -> None:
        c = mgr.get(id)
        tty = bool(c.config.get("Tty"))
        if not req.qbool("stream") and not req.qbool("logs"):
            raise InvalidParameter("attach needs stream=1 or logs=1")
        # Subscribe before the 101 goes out so no early output is lost.
        stream = await req.hijack(content_type=RAW if tty else MULTIPLEXED)
        async with stream:
            await mgr.attach(
                id, stream, stdin=req.qbool("stdin"), stdout=req.qbool("stdout"),
                stderr=req.qbool("stderr"), logs=req.qbool("logs"), framed=not tty,
            )

    @router.route("GET", "/containers/{id}/logs")
    async def logs(req: Request, id: str) -> StreamResponse:
        c = mgr.get(id)
        stdout, stderr = req.qbool("stdout"), req.qbool("stderr")
        if not (stdout or stderr):
            raise InvalidParameter("Bad parameters: you must choose at least one stream")
        tail = req.q("tail", "all")
        try:
            cfg = ReadConfig(
                tail=None if tail in ("all", "", None) or int(tail) < 0 else int(tail),
                since=parse_time_param(req.q("since")) if req.q("since") not in (None, "", "0")
                else None,
                until=parse_time_param(req.q("until")) if req.q("until") not in (None, "", "0")
                else None,
                stdout=stdout, stderr=stderr,
            )
        except ValueError as exc:
            raise InvalidParameter(f"invalid logs parameter: {exc}") from exc
        tty = bool(c.config.get("Tty"))
        gen = mgr.logs(id, cfg, follow=req.qbool("follow"),
                       timestamps=req.qbool("timestamps"), framed=not tty)
        return StreamResponse(gen, content_type=RAW if tty else MULTIPLEXED)

    @router.route("DELETE", "/containers/{id}")
    async def remove(req: Request, id: str) -> None:
        await mgr.remove(id, force=req.qbool("force"))


CONTAINER_FILTERS = {"id", "name", "status", "label", "ancestor", "exited"}


def _matches(c: Container, f: dict[str, list[str]]) -> bool:
    if f.get("id") and not any(c.id.startswith(v) for v in f["id"]):
        return False
    if f.get("name") and not any(v.lstrip("/") in c.name for v in f["name"]):
        return False
    if f.get("status") and c.state.Status not in f["status"]:
        return False
    if f.get("exited") and not (c.state.Status == "exited"
                                and str(c.state.ExitCode) in f["exited"]):
        return False
    if f.get("ancestor") and not any(v in (c.config.get("Image"), c.image_id)
                                     for v in f["ancestor"]):
        return False
    labels = c.config.get("Labels") or {}
    for want in f.get("label", []):
        key, eq, value = want.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True

