"""A container's filesystem as data: export, diff (changes), commit; and image prune.

``GET /containers/{id}/export`` streams the whole root filesystem the
container sees (image layers, init layer and read-write layer, without its
bind mounts) as a tar, from the storage driver's ``get``/``put``.
``GET /containers/{id}/changes`` is ``docker diff``: the read-write layer
against the init layer, so the init layer's placeholders never show.
``POST /commit`` turns the read-write layer into a new image
(:mod:`skiff.core.images.commit`); ``POST /images/prune`` deletes unused
images.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import structlog
import trio

from skiff.core import archive, idshift, metrics
from skiff.core.api import bodytypes
from skiff.core.api.bridge import stream_sync_producer
from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Response, Router, StreamResponse
from skiff.core.containers.model import Container
from skiff.core.errors import Conflict, InvalidParameter
from skiff.core.images.commit import commit_container
from skiff.core.timefmt import go_duration

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.api.commit")

_CHUNK = 1 << 20
_DATE_FORMATS = ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H",
                 "%Y-%m-%d")


def timestamp(value: str, now: float | None = None) -> float:
    """Docker's ``timetypes.GetTimestamp``: Unix seconds, a Go duration before
    ``now``, or an RFC 3339 / date-only time (UTC when no zone is given)."""
    now = time.time() if now is None else now
    text = value.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return float(text)
    d = go_duration(text)
    if d is not None:
        return now - d
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    for fmt in _DATE_FORMATS:
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
    raise InvalidParameter(
        f"failed to parse value as time or duration: {value!r} (use Unix seconds, "
        "RFC 3339 such as 2026-01-02T15:04:05Z, or a duration such as 24h)"
    )


def _check_usable(c: Container, action: str) -> None:
    """Docker refuses to export or commit a dead container or one being removed."""
    if c.state.Dead or c.state.Status == "dead":
        raise Conflict(f"You cannot {action} container {c.id} which is Dead")
    if c.state.Status == "removing":
        raise Conflict(f"You cannot {action} container {c.id} which is being removed")
    if not c.mount_id:
        raise Conflict(f"container {c.id} has no read-write layer to {action}")


def register(router: Router, engine: Engine) -> None:
    mgr = engine.containers

    @router.route("GET", "/containers/{id}/export")
    async def export(req: Request, id: str) -> StreamResponse:
        c = mgr.get(id)
        _check_usable(c, "export")
        if not await engine.to_thread(engine.storage.exists, c.mount_id):
            raise Conflict(f"the read-write layer of container {c.id} is missing")
        mount_id = c.mount_id
        # chowned layers hold host ids: the tar shows the container's
        chowned = c.idmap if c.userns.get("Storage") == "chown" else None

        # get() inside the producer: the put() then always pairs with it,
        # whether the client reads everything or goes away half-way.
        def produce(out: IO[bytes]) -> None:
            root = engine.storage.get(mount_id)
            try:
                with archive.tar_directory(root) as tar:
                    if chowned is not None:
                        idshift.rewrite_owners(tar, out, *idshift.to_container(chowned))
                    else:
                        shutil.copyfileobj(tar, out, _CHUNK)
            finally:
                engine.storage.put(mount_id)
            log.info("container.export", id=c.id)

        return StreamResponse(stream_sync_producer(produce, engine.transfers, engine.nursery),
                              content_type="application/x-tar")

    @router.route("GET", "/containers/{id}/changes")
    async def changes(req: Request, id: str) -> Response:
        c = mgr.get(id)
        if not c.mount_id:
            raise Conflict(f"container {c.id} has no read-write layer")
        with metrics.container_actions.time("changes"):
            found = await engine.to_thread(engine.storage.changes, c.mount_id, c.init_id)
        out = [{"Path": "/" + ch.path.lstrip("/"), "Kind": int(ch.kind)} for ch in found]
        # Go's nil slice: Docker answers null when nothing changed
        return Response(200, json.dumps(out or None).encode(), "application/json")

    @router.route("POST", "/commit")
    async def commit(req: Request) -> Response:
        name = req.q("container", "")
        if not name:
            raise InvalidParameter("name the container to commit (?container=...)")
        c = mgr.get(name)
        _check_usable(c, "commit")
        body = await req.json(default=None)
        bodytypes.check(body, bodytypes.CONTAINER_CONFIG, "container.Config")
        if body is not None and not isinstance(body, dict):
            raise InvalidParameter("the request body must be a container config (a JSON object)")
        # Moby decodes the body into a wrapper whose embedded Config stays nil
        # unless a field of it is present: {} and null both mean "use the container's".
        config = {k: v for k, v in (body or {}).items()
                  if k not in ("HostConfig", "NetworkingConfig")} or None
        pause = req.qbool("pause", True)
        cgroups = engine.cgroups
        frozen = False
        if pause and c.state.Running and not c.state.Paused and cgroups is not None:
            # A consistent snapshot of the read-write layer: nothing writes while
            # it is read.  A host without the freezer commits the live layer.
            try:
                await engine.to_thread(cgroups.freeze, c.id)
                frozen = True
            except Exception as exc:
                log.info("container.commit_unpaused", id=c.id, reason=str(exc))
        try:
            image_id = await engine.to_thread(
                lambda: commit_container(
                    engine.layers, engine.images,
                    container_id=c.id, mount_id=c.mount_id, init_id=c.init_id,
                    image_id=c.image_id or None, container_config=c.config, config=config,
                    changes=req.query.get("changes", []),
                    author=req.q("author", ""), comment=req.q("comment", ""),
                    repo=req.q("repo", ""), tag=req.q("tag", ""),
                    chowned=c.idmap if c.userns.get("Storage") == "chown" else None,
                )
            )
        finally:
            if frozen and cgroups is not None:
                with trio.CancelScope(shield=True):
                    try:
                        await engine.to_thread(cgroups.thaw, c.id)
                    except FileNotFoundError as exc:
                        # a stop or kill meanwhile thawed it and its groups went
                        # with it: the commit itself is whole
                        log.info("container.commit_groups_gone", id=c.id, error=str(exc))
        log.info("container.commit", id=c.id, image=image_id, paused=frozen)
        return Response(201, json.dumps({"Id": image_id}).encode(), "application/json")

    @router.route("POST", "/images/prune")
    async def prune(req: Request) -> dict[str, Any]:
        flt = parse_filters(req.q("filters"))
        until = None
        if flt.get("until"):
            if len(flt["until"]) > 1:
                raise InvalidParameter("more than one until filter specified")
            until = timestamp(flt["until"][0])

        # a snapshot taken on the event loop: the worker thread must not walk
        # the manager's dicts while handlers change them
        users: dict[str, list[tuple[str, bool]]] = {}
        for c in list(mgr.by_id.values()):
            users.setdefault(c.image_id, []).append((c.id, bool(c.state.Running)))

        def in_use(image_id: str) -> list[tuple[str, bool]]:
            return users.get(image_id, [])

        return await engine.to_thread(engine.images.prune, flt, in_use, until)

