"""The daemon's router: every endpoint group registered on one ``Router``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from skiff.core.api import (
    archive,
    build,
    commit,
    containers,
    distribution,
    events,
    images,
    lifecycle,
    resources,
    swarm,
    system,
    top,
    wsattach,
)
from skiff.core.api import exec as exec_routes
from skiff.core.api import networks as network_routes
from skiff.core.api import volumes as volume_routes
from skiff.core.api.router import Router

if TYPE_CHECKING:
    from skiff.core.engine import Engine


def build_router(engine: Engine) -> Router:
    router = Router()
    system.register(router, engine)
    images.register(router, engine)
    containers.register(router, engine)
    resources.register(router, engine)
    commit.register(router, engine)
    distribution.register(router, engine)
    network_routes.register(router, engine)
    events.register(router, engine)
    exec_routes.register(router, engine)
    volume_routes.register(router, engine)
    top.register(router, engine)
    archive.register(router, engine)
    lifecycle.register(router, engine)
    wsattach.register(router, engine)
    build.register(router, engine)
    swarm.register(router, engine)
    return router
