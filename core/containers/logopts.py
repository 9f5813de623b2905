"""The ``--log-opt`` keys the daemon handles for every driver
(``hookspecs.GENERIC_LOG_OPTIONS``): checked at create, kept out of what the
driver is given."""

from __future__ import annotations

from collections.abc import Mapping

from skiff.core.containers import logcache, logdelivery
from skiff.core.containers.config import InvalidConfig
from skiff.core.hookspecs import GENERIC_LOG_OPTIONS

#: the generic options carried out so far, each checked by its owner
_CARRIED = frozenset({"cache-disabled", "cache-max-size", "cache-max-file", "cache-compress"})


def check_generic(options: Mapping[str, str]) -> None:
    """Check the generic options; refuse those skiff does not carry out yet."""
    logdelivery.check_options(options)
    for key in sorted((GENERIC_LOG_OPTIONS - logdelivery.DELIVERY_OPTIONS - _CARRIED)
                      & options.keys()):
        raise InvalidConfig(f"log opt '{key}' is not supported by skiff yet")
    logcache.check(options)


def driver_options(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` without the daemon's own keys: what the driver sees."""
    return {k: v for k, v in options.items() if k not in GENERIC_LOG_OPTIONS}
