"""Resource endpoints: ``GET /containers/{id}/stats`` and ``POST /containers/{id}/update``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from skiff.core.api import bodytypes
from skiff.core.api.router import Request, Router, StreamResponse, json_bytes
from skiff.core.containers import limits, netrates
from skiff.core.containers.resources import (
    ZERO_TIME,
    empty_cpu_stats,
    empty_stats,
    merge_update,
    sample,
)
from skiff.core.errors import InvalidParameter

if TYPE_CHECKING:
    from skiff.core.engine import Engine

#: seconds between two frames of a stats stream (Docker's collector interval)
STATS_INTERVAL = 1.0


def register(router: Router, engine: Engine) -> None:
    mgr = engine.containers

    @router.route("GET", "/containers/{id}/stats")
    async def stats(req: Request, id: str) -> StreamResponse:
        c = mgr.get(id)
        stream = req.qbool("stream", True)
        one_shot = req.qbool("one-shot")
        if stream and one_shot:
            raise InvalidParameter("cannot have stream=true and one-shot=true")

        async def frames() -> AsyncIterator[bytes]:
            prev: dict[str, Any] | None = None
            while True:
                pid = c.state.Pid if c.state.Running else 0
                if not pid:
                    if prev is None:
                        yield json_bytes(empty_stats(c))
                    return  # the container stopped: Docker ends the stream
                frame = await engine.to_thread(sample, engine.cgroups, engine.network_driver,
                                              c, pid)
                frame["preread"] = prev["read"] if prev else ZERO_TIME
                frame["precpu_stats"] = prev["cpu_stats"] if prev else empty_cpu_stats()
                # stream=false without one-shot: like Docker, answer with the
                # second sample so the CPU percentage has a baseline
                if stream or one_shot or prev is not None:
                    yield json_bytes(frame)
                    if not stream:
                        return
                prev = frame
                await trio.sleep(STATS_INTERVAL)

        return StreamResponse(frames(), content_type="application/json")

    @router.route("POST", "/containers/{id}/update")
    async def update(req: Request, id: str) -> dict[str, Any]:
        body = await req.json()
        bodytypes.check(body, bodytypes.CONTAINER_UPDATE, "container.UpdateConfig")
        c = mgr.get(id)
        track = mgr.tracks[c.id]
        async with track.lock:
            hc = merge_update(c.host_config, body)
            asked = body.get(netrates.UPDATE_FIELD) if isinstance(body, dict) else None
            labels = (engine.shaping.updated_labels(c, asked) if asked is not None
                      else None)
            try:
                resources = limits.check(hc, engine.cgroups)
            except ValueError as exc:
                raise InvalidParameter(str(exc)) from exc
            if engine.cgroups is not None:
                try:
                    if c.state.Running:
                        await engine.to_thread(engine.cgroups.update, c.id, resources)
                except ValueError as exc:
                    raise InvalidParameter(str(exc)) from exc
                except OSError as exc:
                    raise RuntimeError(f"Cannot update container {c.id}: {exc}") from exc
            if labels is not None:
                await _update_rates(engine, c, track, labels)
            c.host_config = hc
            c.save()
        return {"Warnings": []}


async def _update_rates(engine: Engine, c: Any, track: Any, labels: dict[str, str]) -> None:
    """``SkiffNetRates``: the container's labels changed, and its running
    endpoints' limits with them (the old labels back if the shaper fails)."""
    old = c.config.get("Labels")
    c.config["Labels"] = labels
    if not c.state.Running:
        return
    options = {name: engine.networks.get(name).options for name in track.endpoints
               if engine.networks.find(name) is not None}
    try:
        await engine.shaping.apply_update(c, track, options)
    except InvalidParameter:
        c.config["Labels"] = old
        raise
    except Exception as exc:  # the kernel refused (pyroute2's errors are not OSErrors)
        c.config["Labels"] = old
        raise RuntimeError(f"Cannot update container {c.id}: {exc}") from exc
