"""Container endpoints: create, list, inspect, start, stop, kill, wait, attach, logs, remove."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from skiff.core import namefilter
from skiff.core.api import bodytypes
from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Response, Router, StreamResponse
from skiff.core.containers import health, lifecycle
from skiff.core.containers.model import Container
from skiff.core.containers.streams import DEFAULT_DETACH_KEYS, parse_detach_keys
from skiff.core.cri.namespace import asks_for_cri, in_cri_namespace
from skiff.core.errors import Conflict, InvalidParameter
from skiff.core.hookspecs import LogRender, ReadConfig
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
        bodytypes.check(body, bodytypes.CONTAINER_CREATE, "ContainerConfigWrapper")
        cid, warnings = await mgr.create(body, req.q("name") or None)
        return Response(201, json.dumps({"Id": cid, "Warnings": warnings}).encode(),
                        "application/json")

    @router.route("GET", "/containers/json")
    async def list_containers(req: Request) -> list[dict[str, Any]]:
        filters = parse_filters(req.q("filters"), CONTAINER_FILTERS)
        show_all = req.qbool("all")
        limit = req.qint("limit", -1)
        _resolve_filters(engine, filters)
        cri = asks_for_cri(filters.get("label", []))
        found = [c for c in mgr.by_id.values()
                 if (show_all or c.state.Running or c.state.Restarting or filters.get("status"))
                 and (cri or not in_cri_namespace(c.config))
                 and _matches(c, filters)]
        found.sort(key=lambda c: c.created, reverse=True)
        if limit > 0:
            found = found[:limit]
        out = [c.summary(c.config.get("Image") or c.image_id) for c in found]
        if req.qbool("size"):
            for c, summary in zip(found, out, strict=True):
                summary.update(await engine.to_thread(_sizes, engine, c))
        return out

    @router.route("GET", "/containers/{id}/json")
    async def inspect(req: Request, id: str) -> dict[str, Any]:
        data = mgr.get(id).inspect()
        data["ExecIDs"] = engine.execs.ids_for(data["Id"]) or None
        return data

    @router.route("POST", "/containers/{id}/start")
    async def start(req: Request, id: str) -> None:
        await mgr.start(id)

    @router.route("POST", "/containers/{id}/stop")
    async def stop(req: Request, id: str) -> None:
        await mgr.stop(id, _stop_timeout(req))

    @router.route("POST", "/containers/{id}/restart")
    async def restart(req: Request, id: str) -> None:
        await lifecycle.restart(mgr, id, _stop_timeout(req))

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
        keys = req.q("detachKeys") or DEFAULT_DETACH_KEYS
        try:
            detach_keys = parse_detach_keys(keys)
        except ValueError as exc:
            raise InvalidParameter(f"Invalid detach keys ({keys}) provided: {exc}") from exc
        # Subscribe before the 101 goes out so no early output is lost.
        stream = await req.hijack(content_type=RAW if tty else MULTIPLEXED)
        async with stream:
            await mgr.attach(
                id, stream, stdin=req.qbool("stdin"), stdout=req.qbool("stdout"),
                stderr=req.qbool("stderr"), logs=req.qbool("logs"), framed=not tty,
                detach_keys=detach_keys, live=req.qbool("stream"),
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
        # the docker CLI copies frames into its stdout and stderr: runs of one
        # stream can share a frame there, the output the same byte for byte
        cli = (req.headers.get("User-Agent") or "").startswith("Docker-Client/")
        how = LogRender(timestamps=req.qbool("timestamps"), details=req.qbool("details"),
                        framed=not tty, coalesce=cli)
        gen = mgr.logs(id, cfg, follow=req.qbool("follow"), how=how)
        return StreamResponse(gen, content_type=RAW if tty else MULTIPLEXED)

    @router.route("DELETE", "/containers/{id}")
    async def remove(req: Request, id: str) -> None:
        if req.qbool("link"):  # `docker rm --link name`: a link needs its alias too
            raise Conflict("Conflict, cannot remove the default link name of the container")
        await mgr.remove(id, force=req.qbool("force"), volumes=req.qbool("v"))


def _stop_timeout(req: Request) -> int | None:
    """``?t=``: seconds to wait before the kill; absent means the container's own."""
    if req.q("t") in (None, ""):
        return None
    return req.qint("t")


CONTAINER_FILTERS = {"id", "name", "status", "label", "ancestor", "exited", "before", "since",
                     "network", "volume", "is-task", "health", "publish", "expose"}
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def _resolve_filters(engine: Engine, f: dict[str, list[str]]) -> None:
    """Check values and turn references into what ``_matches`` compares (in place):
    ``ancestor`` into image IDs (by name, name without tag, ID or ID prefix),
    ``before``/``since`` into creation times."""
    for status in f.get("status", []):
        if status not in STATUSES:
            raise InvalidParameter(f"invalid filter 'status={status}'")
    for value in f.get("is-task", []):
        if value not in ("true", "false"):
            raise InvalidParameter(f"Invalid filter 'is-task={value}'")
    for key in ("publish", "expose"):
        for value in f.get(key, []):
            _port_range(key, value)
    for value in f.get("health", []):
        if value not in health.FILTER_VALUES:
            raise InvalidParameter(f"Unrecognised filter value for health: {value}")
    if f.get("ancestor"):
        ids = set()
        for ref in f["ancestor"]:
            try:
                ids.add(engine.images.get(ref).id)
            except Exception:  # an unknown image matches by name only
                ids.add(ref)
        f["_ancestor_ids"] = sorted(ids)
    for key in ("before", "since"):
        for ref in f.get(key, []):
            f[f"_{key}_created"] = [engine.containers.get(ref).created]


def _matches(c: Container, f: dict[str, list[str]]) -> bool:
    if f.get("id") and not any(c.id.startswith(v) for v in f["id"]):
        return False
    if f.get("name") and not namefilter.matches_container(f["name"], c.name):
        return False
    if f.get("status") and c.state.Status not in f["status"]:
        return False
    if f.get("exited") and not (c.state.Status == "exited"
                                and str(c.state.ExitCode) in f["exited"]):
        return False
    if f.get("ancestor") and not _ancestor_match(c, f):
        return False
    # No swarm tasks here: every container is a non-task.
    if f.get("is-task") and "false" not in f["is-task"]:
        return False
    if f.get("health") and health.status_of(c.state.Health) not in f["health"]:
        return False
    if f.get("publish") and not _ports_match(c.host_config.get("PortBindings"), f["publish"]):
        return False
    if f.get("expose") and not _ports_match(c.config.get("ExposedPorts"), f["expose"]):
        return False
    if f.get("_before_created") and not c.created < f["_before_created"][0]:
        return False
    if f.get("_since_created") and not c.created > f["_since_created"][0]:
        return False
    if f.get("network") and not any(
        n in c.networks or any(s.get("NetworkID", "").startswith(n)
                               for s in c.networks.values() if s.get("NetworkID"))
        for n in f["network"]
    ):
        return False
    if f.get("volume") and not any(
        m.get("Name") == v or m.get("Source") == v or m.get("Destination") == v
        for v in f["volume"] for m in c.mounts_api()
    ):
        return False
    labels = c.config.get("Labels") or {}
    for want in f.get("label", []):
        key, eq, value = want.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True



def _port_range(key: str, value: str) -> tuple[int, int, str]:
    """``8080``, ``8080/tcp`` or ``8000-8080/udp`` as (first, last, proto)."""
    ports, _, proto = value.partition("/")
    first, _, last = ports.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise InvalidParameter(f"invalid filter '{key}={value}'") from None
    if not (0 < lo <= hi <= 65535) or (proto or "tcp") not in ("tcp", "udp", "sctp"):
        raise InvalidParameter(f"invalid filter '{key}={value}'")
    return lo, hi, proto or "tcp"


def _ports_match(ports: dict[str, Any] | None, wanted: list[str]) -> bool:
    """Whether a container port (``80/tcp`` keys) lies in one of the wanted ranges."""
    for key in ports or {}:
        number, _, proto = key.partition("/")
        if not number.isdigit():
            continue
        for value in wanted:
            lo, hi, want_proto = _port_range("publish", value)
            if lo <= int(number) <= hi and (proto or "tcp") == want_proto:
                return True
    return False


def _ancestor_match(c: Container, f: dict[str, list[str]]) -> bool:
    image = c.config.get("Image") or ""
    repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    for v in f["ancestor"]:
        if v in (image, c.image_id, repo) or (":" not in v and repo == v):
            return True
        if len(v) >= 4 and (c.image_id.startswith(v) or c.image_id.startswith("sha256:" + v)):
            return True
    return c.image_id in f.get("_ancestor_ids", [])


def _sizes(engine: Engine, c: Container) -> dict[str, int]:
    """``SizeRw`` and ``SizeRootFs`` of ``docker ps -s`` (blocking: walks the layer)."""
    try:
        rw = engine.storage.diff_size(c.mount_id, c.init_id or None) if c.mount_id else 0
    except Exception:
        rw = 0
    try:
        image = engine.images.get(c.image_id).size
    except Exception:
        image = 0
    return {"SizeRw": int(rw or 0), "SizeRootFs": int(rw or 0) + int(image or 0)}


def json_status(code: int, error: str | None = None) -> bytes:
    """The body of ``POST /containers/{id}/wait``'s reply."""
    return json.dumps({"StatusCode": code, "Error": {"Message": error} if error else None}
                      ).encode() + b"\n"
