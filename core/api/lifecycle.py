"""Routes of rename, pause, unpause and ``container prune``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Router
from skiff.core.containers import lifecycle
from skiff.core.errors import NotFound

if TYPE_CHECKING:
    from skiff.core.engine import Engine


def register(router: Router, engine: Engine) -> None:
    mgr = engine.containers

    @router.route("POST", "/containers/{id}/rename")
    async def rename(req: Request, id: str) -> None:
        await lifecycle.rename(mgr, id, req.q("name") or "")

    @router.route("POST", "/containers/{id}/pause")
    async def pause(req: Request, id: str) -> None:
        await lifecycle.pause(mgr, id)

    @router.route("POST", "/containers/{id}/unpause")
    async def unpause(req: Request, id: str) -> None:
        await lifecycle.unpause(mgr, id)

    @router.route("DELETE", "/containers/{id}/{link}")
    async def remove_link(req: Request, id: str, link: str) -> None:
        if not req.qbool("link"):  # a container's name has no "/": there is none such
            raise NotFound(f"No such container: {id}/{link}")
        await lifecycle.remove_link(mgr, id, link)

    @router.route("POST", "/containers/prune")
    async def prune(req: Request) -> dict[str, Any]:
        filters = parse_filters(req.q("filters"), lifecycle.PRUNE_FILTERS)
        return await lifecycle.prune(mgr, filters)
