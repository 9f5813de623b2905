"""skiffd: configuration, start-up, serving, and a clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import structlog
import trio

from skiff import __version__
from skiff.core import metrics
from skiff.core.config import ConfigError, cri_socket, load, socket_paths
from skiff.core.plugins import PluginLoadError, load_plugins

log = structlog.get_logger("skiff.daemon")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR, "fatal": logging.CRITICAL}


#: the lowest level logged; a list so that a reload (SIGHUP) can change it
#: under loggers already cached by structlog
_threshold = [logging.INFO]


def _gated(base: type) -> type:
    """``base``'s level methods behind ``_threshold``: structlog's filtering
    loggers fix their level when first used, a reload must not be fixed."""
    def gate(name: str, level: int) -> Any:
        inner = getattr(base, name)

        def method(self: Any, *args: Any, **kw: Any) -> Any:
            if level < _threshold[0]:
                return None
            return inner(self, *args, **kw)
        return method

    methods = {name: gate(name, level) for name, level in (
        ("debug", logging.DEBUG), ("info", logging.INFO), ("msg", logging.INFO),
        ("warning", logging.WARNING), ("warn", logging.WARNING),
        ("error", logging.ERROR), ("exception", logging.ERROR),
        ("critical", logging.CRITICAL), ("fatal", logging.CRITICAL))}
    return type("ReloadableFilteringLogger", (base,), methods)


def set_log_level(level: str, debug: bool) -> None:
    _threshold[0] = logging.DEBUG if debug else LEVELS[level]


def configure_logging(level: str, debug: bool) -> None:
    """One event per line with key-value fields; JSON unless stderr is a terminal."""
    set_log_level(level, debug)
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if sys.stderr.isatty()
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=_gated(structlog.make_filtering_bound_logger(logging.DEBUG)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


@contextlib.contextmanager
def pidfile(path: str) -> Iterator[None]:
    """Hold ``path`` locked for the daemon's life: a second skiffd refuses to start."""
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise ConfigError(
            f"pid file found, ensure skiffd is not running or delete {path}"
            + (f" (held by pid {other})" if other else "")
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


async def serve(config: dict[str, Any], argv: list[str] | None = None) -> None:
    from skiff.core.api.app import build_router
    from skiff.core.api.http import serve_unix
    from skiff.core.api.metricsserver import (
        describe_engine,
        open_metrics_listeners,
        serve_metrics,
    )
    from skiff.core.engine import Engine

    cri = cri_socket(config)
    serve_cri = _cri_server(config) if cri else None
    # bound first: an address that cannot be had refuses the start before
    # anything else is done
    listeners = (await open_metrics_listeners(config["metrics-addr"])
                 if config["metrics-addr"] else [])
    try:
        plugins = load_plugins()
        engine = Engine(config, plugins)
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    router = build_router(engine)
    if listeners:
        router.observe = metrics.observe_request  # counted only while someone can read it
        describe_engine(engine)
    async with trio.open_nursery() as engine_nursery:
        await engine.start(engine_nursery)
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                           signal.SIGHUP) as signals:
                async with trio.open_nursery() as servers:
                    if serve_cri is not None:
                        # before the Docker API: a daemon that answers there is whole
                        await servers.start(serve_cri, engine, cri, config["cri-stream-address"])
                    for path in socket_paths(config):
                        await servers.start(serve_unix, path, router)
                    if listeners:
                        await servers.start(serve_metrics, listeners)
                    log.info("daemon.ready", version=__version__, sockets=socket_paths(config),
                             cri=cri or None,
                             storage=engine.storage_name, runtime=engine.runtime_name,
                             log_driver=config["log-driver"], cgroups=engine.cgroup_driver_name)
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            reload_config(engine, config, argv)
                            continue
                        log.info("daemon.shutdown", signal=signal.Signals(signum).name)
                        servers.cancel_scope.cancel()
                        break
        finally:
            await engine.shutdown()
            engine_nursery.cancel_scope.cancel()
    log.info("daemon.stopped")


def reload_config(engine: Any, config: dict[str, Any], argv: list[str] | None) -> None:
    """SIGHUP: the reloadable keys applied (core/reload.py), or the old
    configuration kept with the reason logged; never the end of the daemon."""
    import socket

    from skiff.core import reload
    from skiff.core.engineid import engine_id

    log.info("daemon.reload", config_file=config["config-file"])
    try:
        changes = reload.reread(argv, config)
    except ConfigError as exc:
        log.error("daemon.reload_failed", error=str(exc))
        return
    except Exception as exc:  # a reload must never take the daemon down
        log.exception("daemon.reload_failed", error=str(exc))
        return
    reload.apply(changes, config, engine.config)
    set_log_level(config["log-level"], config["debug"])
    log.info("daemon.reloaded", changed=sorted(changes),
             config={k: config[k] for k in sorted(reload.RELOADABLE)})
    engine.events.publish("daemon", "reload", engine_id(engine.data_root),
                          reload.event_attributes(config, socket.gethostname()))


def _cri_server(config: dict[str, Any]) -> Any:
    """``serve_cri``, imported only when daemon.json turns the CRI on (grpcio
    is the ``cri`` extra); refuses the start when it is not installed."""
    try:
        from skiff.core.cri.server import serve_cri
    except ImportError as exc:
        raise ConfigError(
            f"{config['config-file']}: 'cri' is set but the CRI cannot be served: {exc}; "
            "install skiff with its cri extra (pip install 'skiff[cri]')"
        ) from exc
    return serve_cri


def main(argv: list[str] | None = None) -> int:
    try:
        config, ns = load(argv)
    except ConfigError as exc:
        print(f"skiffd: {exc}", file=sys.stderr)
        return 1
    if ns.version:
        print(f"skiffd version {__version__}")
        return 0
    configure_logging(config["log-level"], config["debug"])
    if os.geteuid() != 0:
        print("skiffd: needs to run as root", file=sys.stderr)
        return 1
    try:
        with pidfile(config["pidfile"]):
            trio.run(serve, config, argv)
    except (ConfigError, PluginLoadError) as exc:
        log.error("daemon.refused", error=str(exc))
        print(f"skiffd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
