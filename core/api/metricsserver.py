"""``metrics-addr``: Prometheus's ``GET /metrics`` on TCP, served by skiffd's trio loop.

The listener is bound before the engine starts, so an address that cannot be
had (taken, not on this host) refuses the start with the reason instead of a
daemon that runs without the metrics it was asked for.  The connections are
the API's own (h11, keep-alive, a bad request answered), on a router that
holds one route: nothing of the Docker API is reachable here, and scrapes are
not counted as API requests.
"""

from __future__ import annotations

import errno
import os

import structlog
import trio

from skiff.core import metrics
from skiff.core.api.connection import serve_connection
from skiff.core.api.router import Request, Response, Router
from skiff.core.config import ConfigError, metrics_address, metrics_on_loopback

__all__ = ["metrics_router", "open_metrics_listeners", "serve_metrics"]

log = structlog.get_logger("skiff.metrics")


def metrics_router(registry: metrics.Registry = metrics.REGISTRY) -> Router:
    router = Router()

    @router.route("GET", "/metrics")
    async def scrape(req: Request) -> Response:
        return Response(200, registry.render(), metrics.CONTENT_TYPE)

    return router


async def open_metrics_listeners(addr: str) -> list[trio.SocketListener]:
    """Listen on ``addr`` (``host:port``, checked by the configuration), or refuse."""
    host, port = metrics_address(addr)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        hint = " (another process listens there)" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"metrics-addr {addr}: cannot listen: {why}{hint}") from None
    if not metrics_on_loopback(host):
        # served because the operator asked; anyone on that network reads
        # container counts and the API's traffic, so say it once, loudly
        log.warning("metrics.exposed", address=addr,
                    hint="metrics-addr is not a loopback address: the metrics are readable "
                         "from that network without authentication")
    return listeners


async def serve_metrics(listeners: list[trio.SocketListener],
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``GET /metrics`` on ``listeners`` until cancelled."""
    router = metrics_router()

    async def handle(stream: trio.SocketStream) -> None:
        await serve_connection(stream, router)

    addresses = [str(listener.socket.getsockname()[:2]) for listener in listeners]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        log.info("metrics.listening", addresses=addresses)
        task_status.started()
