"""Volume endpoints: list, create, inspect, remove, prune (API 1.41)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from skiff.core.api import bodytypes
from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Response, Router
from skiff.core.errors import InvalidParameter
from skiff.core.volumes.store import PRUNE_FILTERS, VOLUME_FILTERS

if TYPE_CHECKING:
    from skiff.core.engine import Engine


def register(router: Router, engine: Engine) -> None:
    store = engine.volumes

    @router.route("GET", "/volumes")
    async def list_volumes(req: Request) -> dict[str, Any]:
        filters = parse_filters(req.q("filters"), VOLUME_FILTERS)
        return {"Volumes": await engine.to_thread(store.list, filters), "Warnings": None}

    @router.route("POST", "/volumes/create")
    async def create(req: Request) -> Response:
        body = await req.json(default={})
        bodytypes.check(body, bodytypes.VOLUME_CREATE, "volume.VolumeCreateBody")
        if not isinstance(body, dict):
            raise InvalidParameter("the request body must be a JSON object")
        name = body.get("Name") or None
        if name is not None and not isinstance(name, str):
            raise InvalidParameter("Name must be a string")
        v, _ = await engine.to_thread(store.create, name, body.get("Driver") or None,
                                      body.get("DriverOpts"), body.get("Labels"))
        info = await engine.to_thread(store.inspect, v)
        return Response(201, json.dumps(info).encode(), "application/json")

    @router.route("GET", "/volumes/{name}")
    async def inspect(req: Request, name: str) -> dict[str, Any]:
        return await engine.to_thread(store.inspect, store.get(name))

    @router.route("DELETE", "/volumes/{name}")
    async def remove(req: Request, name: str) -> None:
        await engine.to_thread(store.remove, name, req.qbool("force"))

    @router.route("POST", "/volumes/prune")
    async def prune(req: Request) -> dict[str, Any]:
        filters = parse_filters(req.q("filters"), PRUNE_FILTERS)
        deleted, space = await engine.to_thread(store.prune, filters)
        return {"VolumesDeleted": deleted, "SpaceReclaimed": space}
