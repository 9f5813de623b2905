"""Network endpoints: list, inspect, create, connect, disconnect, remove, prune."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from skiff.core import namefilter
from skiff.core.api import bodytypes
from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Response, Router
from skiff.core.containers import netrates
from skiff.core.errors import InvalidParameter

if TYPE_CHECKING:
    from skiff.core.engine import Engine
    from skiff.core.networks import Network


def register(router: Router, engine: Engine) -> None:
    store = engine.networks
    mgr = engine.containers

    @router.route("GET", "/networks")
    async def list_networks(req: Request) -> list[dict[str, Any]]:
        filters = parse_filters(req.q("filters"), NETWORK_FILTERS)
        return [store.inspect(n) for n in sorted(store.by_id.values(), key=lambda n: n.name)
                if _matches(n, filters)]

    @router.route("GET", "/networks/{id}")
    async def inspect(req: Request, id: str) -> dict[str, Any]:
        return store.inspect(store.get(id))

    @router.route("POST", "/networks/create")
    async def create(req: Request) -> Response:
        body = await req.json()
        bodytypes.check(body, bodytypes.NETWORK_CREATE, "types.NetworkCreateRequest")
        if not isinstance(body, dict):
            raise InvalidParameter("the request body must be a JSON object")
        # -o skiff.net.*: the network's default bandwidth limits, checked before it exists
        engine.shaping.check(netrates.pick(body.get("Options")), " (network option)")
        net, warning = await engine.create_network(body)
        network_event(engine, "create", net)
        return Response(201, json.dumps({"Id": net.id, "Warning": warning}).encode(),
                        "application/json")

    @router.route("POST", "/networks/{id}/connect")
    async def connect(req: Request, id: str) -> Response:
        body = bodytypes.checked(await req.json(default={}), bodytypes.NETWORK_CONNECT,
                                 "types.NetworkConnect")
        await mgr.connect(str(body.get("Container") or ""), id, body.get("EndpointConfig"))
        return _done()

    @router.route("POST", "/networks/{id}/disconnect")
    async def disconnect(req: Request, id: str) -> Response:
        body = bodytypes.checked(await req.json(default={}), bodytypes.NETWORK_DISCONNECT,
                                 "types.NetworkDisconnect")
        await mgr.disconnect(str(body.get("Container") or ""), id, bool(body.get("Force")))
        return _done()

    @router.route("DELETE", "/networks/{id}")
    async def remove(req: Request, id: str) -> None:
        net = await engine.remove_network(id)
        network_event(engine, "destroy", net)

    @router.route("POST", "/networks/prune")
    async def prune(req: Request) -> dict[str, Any]:
        gone = await engine.prune_networks()
        for net in gone:
            network_event(engine, "destroy", net)
        engine.events.publish("network", "prune", "", {"reclaimed": "0"})
        return {"NetworksDeleted": [net.name for net in gone]}


def _done() -> Response:
    """dockerd answers connect and disconnect with 200 and an empty body, not 204."""
    return Response(200, b"")


def network_event(engine: Engine, action: str, net: Network, **extra: str) -> None:
    """Publish a network event with Docker's attributes (name, type)."""
    engine.events.publish("network", action, net.id,
                          {**extra, "name": net.name, "type": net.driver})


NETWORK_FILTERS = {"id", "name", "driver", "label", "type", "scope", "dangling"}


def _matches(n: Network, f: dict[str, list[str]]) -> bool:
    if f.get("id") and not any(n.id.startswith(v) for v in f["id"]):
        return False
    if f.get("name") and not namefilter.matches(f["name"], n.name):
        return False
    if f.get("driver") and n.driver not in f["driver"]:
        return False
    if f.get("scope") and n.scope not in f["scope"]:  # the driver's (``scope``)
        return False
    if f.get("type"):
        kind = "builtin" if n.predefined else "custom"
        if kind not in f["type"]:
            return False
    for want in f.get("label", []):
        key, eq, value = want.partition("=")
        if key not in n.labels or (eq and n.labels[key] != value):
            return False
    return True
