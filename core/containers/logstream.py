"""``docker logs``: a container's recorded log, then its live output when
following, at the client's pace; and the opening of its log driver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import structlog

from skiff.core.containers import logcache, logdelivery
from skiff.core.containers.logopts import driver_options
from skiff.core.containers.logread import LogCursor, RecordedLog, RenderedRecordedLog
from skiff.core.containers.logrender import render_all
from skiff.core.containers.model import Container
from skiff.core.containers.registry import ContainerRegistry, ToThread
from skiff.core.errors import InvalidParameter
from skiff.core.hookspecs import (
    LogContext,
    LogDriver,
    LogMessage,
    LogRender,
    ReadConfig,
    RenderedLog,
)

log = structlog.get_logger("skiff.containers")

#: a logging driver's factory by its name (the engine's ``plugins.factory("logging", name)``)
LogFactories = Callable[[str], Callable[[LogContext], LogDriver]]


def open_log(factories: LogFactories, c: Container) -> LogDriver | None:
    """``c``'s log driver (None for ``none``), with its cache when it cannot read
    back (``logcache``)."""
    lc = c.host_config.get("LogConfig") or {}
    name = lc.get("Type") or "json-file"
    if name == "none":
        return None
    ctx = log_context(c)
    return logcache.with_cache(factories, factories(name)(ctx), ctx, c, lc.get("Config") or {})


def open_run_log(factories: LogFactories, c: Container) -> LogDriver | None:
    """What a run of ``c`` writes its output to: ``open_log``'s driver behind
    the delivery its ``mode`` and ``max-buffer-size`` ask for (``logdelivery``);
    the one builder for a start and for a container adopted by live-restore."""
    driver = open_log(factories, c)
    if driver is None:
        return None
    options = (c.host_config.get("LogConfig") or {}).get("Config") or {}
    return logdelivery.deliver(driver, options, c.id)


def log_context(c: Container) -> LogContext:
    """What ``c``'s log driver is told about it."""
    lc = c.host_config.get("LogConfig") or {}
    path = logcache.driver_log_path(c, lc.get("Type") or "json-file")
    return LogContext(container_id=c.id, container_name=c.name, log_path=path,
                      options=driver_options(lc.get("Config") or {}),
                      image_name=str(c.config.get("Image") or ""), image_id=c.image_id,
                      labels=dict(c.config.get("Labels") or {}),
                      env=list(c.config.get("Env") or []),
                      command=[c.path, *c.args], hostname=str(c.config.get("Hostname") or ""))


def log_readable(c: Container) -> bool:
    """Whether ``docker logs`` can read ``c``'s log, as far as known without
    building its driver (``LogStreams.readable`` knows for sure)."""
    lc = c.host_config.get("LogConfig") or {}
    if lc.get("Type") == "none":
        return False
    return not (logcache.known_unreadable(lc.get("Type") or "json-file")
                and not logcache.enabled(lc.get("Config") or {}))


class LogStreams:
    """The logs of the registry's containers, as ``docker logs`` and attach read them."""

    def __init__(self, registry: ContainerRegistry, factories: LogFactories,
                 to_thread: ToThread) -> None:
        self.registry = registry
        self.factories = factories
        self.to_thread = to_thread

    def readable(self, c: Container) -> bool:
        """Whether ``docker logs`` can read ``c``'s log; a driver never built
        since the daemon started is built once to ask it."""
        lc = c.host_config.get("LogConfig") or {}
        name = lc.get("Type") or "json-file"
        if (name != "none" and not logcache.enabled(lc.get("Config") or {})
                and not logcache.known_unreadable(name)):
            probe = self.factories(name)(log_context(c))
            probe.close()
            if not logcache.readable_driver(probe):
                logcache.known_unreadable_add(name)
        return log_readable(c)

    def open_reader(self, c: Container) -> LogDriver:
        """A driver to read ``c``'s log; for an unreadable one, only its cache."""
        lc = c.host_config.get("LogConfig") or {}
        name = lc.get("Type") or "json-file"
        if logcache.known_unreadable(name) and logcache.enabled(lc.get("Config") or {}):
            return logcache.open_cache(self.factories, name, log_context(c), c,
                                       lc.get("Config") or {})
        driver = open_log(self.factories, c)
        # callers ask readable first; a driver found unreadable just now is refused
        if driver is None or not logcache.readable_driver(driver):
            if driver is not None:
                driver.close()
            raise InvalidParameter("configured logging driver does not support reading")
        return driver

    def logs(self, ref: str, cfg: ReadConfig, *, follow: bool, how: LogRender
             ) -> AsyncIterator[bytes]:
        """The log stream of ``docker logs``, history first, then live when following.
        A container without a readable log is refused now, before any header goes out."""
        c = self.registry.get(ref)
        if not self.readable(c):
            # dockerd's words (it answers 501; a 4xx here: nothing failed in skiffd)
            raise InvalidParameter("configured logging driver does not support reading")
        return self._logs(c, cfg, follow=follow, how=how)

    async def _logs(self, c: Container, cfg: ReadConfig, *, follow: bool, how: LogRender
                    ) -> AsyncIterator[bytes]:
        async for batch in self._feed(c, cfg, LogCursor(), follow=follow, first=cfg, how=how):
            if isinstance(batch, RenderedLog):
                yield batch.data
            else:
                # one HTTP chunk per batch, not per line
                yield render_all(batch, how)

    async def messages(self, c: Container, cfg: ReadConfig, cursor: LogCursor, *,
                       follow: bool, first: ReadConfig) -> AsyncIterator[list[LogMessage]]:
        """The recorded log (``first`` says what of it), then live lines when following.

        The log is read at the client's pace (each batch is taken when the
        last one was consumed); a client that falls behind the live lines is
        dropped from them and reads on from the log where ``cursor`` says it
        stopped, so it never holds the daemon's memory or anyone else up.
        """
        async for batch in self._feed(c, cfg, cursor, follow=follow, first=first, how=None):
            assert not isinstance(batch, RenderedLog)  # only asked for with ``how``
            yield batch

    def _recorded(self, c: Container, cfg: ReadConfig, cursor: LogCursor,
                  how: LogRender | None) -> RecordedLog | RenderedRecordedLog:
        driver = self.open_reader(c)
        # the driver's own rendering on a fresh read; a catch-up needs each
        # message's time to skip what the reader has
        if how is not None and cursor.at is None and RenderedRecordedLog.supported(driver):
            return RenderedRecordedLog(driver, cfg, how, self.to_thread)
        return RecordedLog(driver, cfg, self.to_thread)

    async def _feed(self, c: Container, cfg: ReadConfig, cursor: LogCursor, *,
                    follow: bool, first: ReadConfig, how: LogRender | None
                    ) -> AsyncIterator[list[LogMessage] | RenderedLog]:
        hub = self.registry.tracks[c.id].hub
        read_cfg = first
        while True:
            recorded = self._recorded(c, read_cfg, cursor, how)
            # what the driver records beside each line, for live lines too (--details)
            attrs = getattr(recorded.driver, "attrs", None) or None
            live = None
            try:
                async with hub.log_lock:
                    await recorded.start()
                    if follow and c.state.Running:
                        live = hub.subscribe(stdout=cfg.stdout, stderr=cfg.stderr, lines=True)
                async for batch in recorded.batches():
                    if isinstance(batch, RenderedLog):
                        cursor.advance(batch.last_time, batch.last_count)
                        yield batch
                        continue
                    new = [m for m in batch if cursor.take(m)]
                    if new:
                        yield new
                recorded.close()
                if live is None:
                    return
                async for kind, data, when in live:
                    if cfg.until is not None and when > cfg.until:
                        return
                    # the live feed yields only "stdout" and "stderr"; its type says str
                    msg = LogMessage(kind, data, when, attrs)  # type: ignore[arg-type]
                    if cursor.take(msg):
                        yield [msg]
                if not live.dropped:
                    return  # the run ended
            finally:
                recorded.close()
                if live is not None:
                    hub.unsubscribe(live)
            log.info("container.logs_catching_up", id=c.id,
                     reason="the client fell behind the live output; reading on from the log")
            read_cfg = cursor.rewind(cfg)
