"""Swarm mode's endpoints, answered as dockerd answers on a node outside any swarm.

skiff has no swarm mode.  Without these routes clients get a 404 and treat it
as a broken daemon; dockerd outside a swarm answers 503 ("not available"), and
clients know that answer: docker-py's ``swarm.leave(force=True)`` swallows it,
so clean-up code that leaves a swarm "just in case" goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skiff.core.api.router import Handler, Request, Router
from skiff.core.errors import InvalidParameter, Unavailable

if TYPE_CHECKING:
    from skiff.core.engine import Engine

NOT_A_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or '
                 '"docker swarm join" to connect this node to swarm and try again.')
NOT_IN_A_SWARM = "This node is not part of a swarm"
NO_SWARM_MODE = "swarm mode is not supported by skiff: this node cannot init or join a swarm"

#: (method, path) of every swarm-mode route of API v1.41
_MANAGER_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/swarm"), ("GET", "/swarm/unlockkey"), ("POST", "/swarm/unlock"),
    ("GET", "/nodes"), ("GET", "/nodes/{id}"), ("DELETE", "/nodes/{id}"),
    ("POST", "/nodes/{id}/update"),
    ("GET", "/services"), ("POST", "/services/create"), ("GET", "/services/{id}"),
    ("POST", "/services/{id}/update"), ("DELETE", "/services/{id}"),
    ("GET", "/services/{id}/logs"),
    ("GET", "/tasks"), ("GET", "/tasks/{id}"), ("GET", "/tasks/{id}/logs"),
    ("GET", "/secrets"), ("POST", "/secrets/create"), ("GET", "/secrets/{id}"),
    ("POST", "/secrets/{id}/update"), ("DELETE", "/secrets/{id}"),
    ("GET", "/configs"), ("POST", "/configs/create"), ("GET", "/configs/{id}"),
    ("POST", "/configs/{id}/update"), ("DELETE", "/configs/{id}"),
)


def _answer(message: str) -> Handler:
    async def handler(req: Request, **_params: str) -> None:
        raise Unavailable(message)
    return handler


def register(router: Router, engine: Engine) -> None:
    for method, path in _MANAGER_ROUTES:
        router.add(method, path, _answer(NOT_A_MANAGER))
    router.add("POST", "/swarm/leave", _answer(NOT_IN_A_SWARM))

    @router.route("POST", "/swarm/update")
    async def update(req: Request) -> None:
        version = req.q("version") or ""
        if not version.isdigit():
            raise InvalidParameter(f"invalid swarm version '{version}': not an integer")
        raise Unavailable(NOT_A_MANAGER)

    for path in ("/swarm/init", "/swarm/join"):
        router.add("POST", path, _answer(NO_SWARM_MODE))
