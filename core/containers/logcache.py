"""Dual logging, as dockerd 20.10: a driver that cannot read back (its class says
``readable = False``) gets a ``local``-format cache beside it, so ``docker logs``
works whatever the driver.

The cache is the ``local`` driver, found by name like any other
(``plugins.factory("logging", "local")``; core never imports plugins), writing
``<container dir>/container-cached.log`` with the ``cache-*`` options renamed
(``cache-max-size`` is its ``max-size``; defaults 20 MiB x 5 files, gzipped).
``cache-disabled=true`` turns it off; ``docker logs`` then answers as dockerd
does, "configured logging driver does not support reading".

Three differences from dockerd, on purpose: the ``cache-*`` sizes are
honoured (dockerd 20.10 accepts them and ignores them, giving its cache the
driver's own options); a line the driver failed to deliver still goes to
the cache (dockerd drops it from both), so ``docker logs`` shows what a dead
syslog server missed; and the cache is written as the output is read, whatever
the ``mode`` (``logdelivery.deliver``), so ``docker logs`` has every line even
while a stalled remote drops from its non-blocking buffer (dockerd gives the
cache a ring buffer of its own, which drops too when the writer outruns it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Literal

import structlog

from skiff.core.containers.config import InvalidConfig
from skiff.core.containers.model import Container
from skiff.core.goparse import parse_bool
from skiff.core.hookspecs import LogContext, LogDriver, LogMessage, ReadConfig

#: the driver that keeps the cache, and the file it keeps, as dockerd names them
CACHE_DRIVER = "local"
CACHE_FILE = "container-cached.log"
CACHE_PREFIX = "cache-"
DISABLED = "cache-disabled"

log = structlog.get_logger("skiff.containers")

LogFactories = Callable[[str], Callable[[LogContext], LogDriver]]

#: names of the drivers seen to be unreadable, so that reading a container's
#: cache need not build its driver (a syslog connection) just to ask
_unreadable: set[str] = set()



def check(options: Mapping[str, str]) -> None:
    """``cache-disabled`` must be a boolean (dockerd's words).  The other
    ``cache-*`` keys are the local driver's options, which its plugin checks."""
    text = options.get(DISABLED)
    if text and parse_bool(text) is None:
        raise InvalidConfig(f"invalid value for option {DISABLED}: {text}")


def enabled(options: Mapping[str, str]) -> bool:
    return not parse_bool(options.get(DISABLED) or "false")


def driver_log_path(c: Container, driver: str) -> str:
    """Where ``driver`` keeps ``c``'s log, as dockerd decides it for its drivers:
    the local driver in ``local-logs/container.log``, others ``<id>-json.log``."""
    if driver == CACHE_DRIVER:
        return os.path.join(c.root, "local-logs", "container.log")
    return c.log_path


def readable_driver(driver: LogDriver) -> bool:
    return getattr(driver, "readable", True) is not False


class CachedLog:
    """A driver and its local cache: writes go to both, reads to the cache."""

    readable = True

    def __init__(self, driver: LogDriver, cache: LogDriver) -> None:
        self.name = driver.name
        self.driver = driver
        self.cache = cache

    def write(self, msg: LogMessage) -> None:
        # the cache first: a line the driver fails to deliver is still in
        # ``docker logs``.  Each of the two sits behind a delivery of its own
        # (core/containers/logdelivery.py), which counts and reports what it
        # loses, so a failing driver never costs the cache a line
        self.cache.write(msg)
        self.driver.write(msg)

    def write_lines(self, stream: Literal["stdout", "stderr"], lines: list[bytes],
                    ts: float) -> None:
        """A read's whole lines: the cache (local) takes them in one write(2)."""
        cached = getattr(self.cache, "write_lines", None)
        if cached is not None:
            cached(stream, lines, ts)
        else:
            for line in lines:
                self.cache.write(LogMessage(stream, line, ts))
        batched = getattr(self.driver, "write_lines", None)
        if batched is not None:
            batched(stream, lines, ts)
            return
        for line in lines:
            self.driver.write(LogMessage(stream, line, ts))

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        return self.cache.read(config)

    def close(self) -> None:
        try:
            self.driver.close()
        finally:
            self.cache.close()


def open_cache(factories: LogFactories, driver_name: str, ctx: LogContext, c: Container,
               options: Mapping[str, str]) -> LogDriver:
    """The cache of ``c``'s log; ``ctx`` is what its driver was given."""
    try:
        factory = factories(CACHE_DRIVER)
    except LookupError as exc:
        raise LookupError(f"logging driver {driver_name!r} cannot read back, and its cache "
                          f"(dual logging) needs the {CACHE_DRIVER!r} log driver: {exc}; "
                          f"or set --log-opt {DISABLED}=true") from None
    cache_opts = {k.removeprefix(CACHE_PREFIX): v for k, v in options.items()
                  if k.startswith(CACHE_PREFIX) and k != DISABLED}
    return factory(replace(ctx, log_path=os.path.join(c.root, CACHE_FILE),
                           options=cache_opts))


def with_cache(factories: LogFactories, driver: LogDriver, ctx: LogContext, c: Container,
               options: Mapping[str, str]) -> LogDriver:
    """``driver``, with a cache when it cannot read back and the cache is on."""
    if readable_driver(driver):
        return driver
    _unreadable.add(driver.name)
    if not enabled(options):
        return driver
    try:
        cache = open_cache(factories, driver.name, ctx, c, options)
    except BaseException:
        driver.close()
        raise
    return CachedLog(driver, cache)


def known_unreadable(name: str) -> bool:
    return name in _unreadable


def known_unreadable_add(name: str) -> None:
    _unreadable.add(name)
