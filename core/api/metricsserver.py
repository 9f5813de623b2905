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
import platform
from typing import TYPE_CHECKING

import structlog
import trio

from skiff import __version__
from skiff.core import metrics
from skiff.core.api import system
from skiff.core.api.connection import serve_connection
from skiff.core.api.router import Request, Response, Router
from skiff.core.config import ConfigError, metrics_address, metrics_on_loopback

if TYPE_CHECKING:
    from skiff.core.engine import Engine

__all__ = ["describe_engine", "metrics_router", "open_metrics_listeners", "serve_metrics"]

log = structlog.get_logger("skiff.metrics")


def metrics_router(registry: metrics.Registry = metrics.REGISTRY) -> Router:
    router = Router()

    @router.route("GET", "/metrics")
    async def scrape(req: Request) -> Response:
        return Response(200, registry.render(), metrics.CONTENT_TYPE)

    return router


def describe_engine(engine: Engine) -> None:
    """dockerd's facts about the engine and its host: ``engine_daemon_engine_info``
    (value 1, the facts in its labels), the CPUs and the memory."""
    facts = (("version", __version__), ("commit", ""), ("architecture", system._arch()),
             ("graphdriver", engine.storage_name), ("kernel", platform.release()),
             ("os", system._os_release()), ("os_type", "linux"), ("os_version", ""),
             ("daemon_id", system._daemon_id(engine)))
    metrics.on_scrape("engine_daemon_engine_info",
                      "The information related to the engine and the OS it is running on",
                      lambda: [(tuple(v for _, v in facts), 1)],
                      labelnames=tuple(k for k, _ in facts))
    cpus = os.cpu_count() or 0
    metrics.on_scrape("engine_daemon_engine_cpus_cpus",
                      "The number of cpus that the host system of the engine has", lambda: cpus)
    memory = system._mem_total()
    metrics.on_scrape("engine_daemon_engine_memory_bytes",
                      "The number of bytes of memory that the host system of the engine has",
                      lambda: memory)


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
