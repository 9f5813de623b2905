"""Where a container's network stack comes from, as the contract's
``NetworkNamespace``: the one place that reads ``--network container:<ref>``
for the runtime, so the spec is built from the record, not from the mode."""

from __future__ import annotations

from collections.abc import Callable

from skiff.core.hookspecs import NetworkDriver, NetworkNamespace

#: Docker's NetworkMode for another container's namespace: ``container:<name|id>``
CONTAINER_PREFIX = "container:"


def namespace_of(network_mode: str, driver_of: Callable[[str], NetworkDriver],
                 pid_of: Callable[[str], int] | None = None) -> NetworkNamespace:
    """The namespace of a container whose NetworkMode is ``network_mode``.

    ``container:<ref>``: ``join`` that container's (its path once ``pid_of``
    gives the running process; without ``pid_of``, "").  Otherwise what the
    network's driver says (``netns``), from ``driver_of`` by network name.
    """
    if network_mode.startswith(CONTAINER_PREFIX):
        owner = network_mode[len(CONTAINER_PREFIX):]
        path = f"/proc/{pid_of(owner)}/ns/net" if pid_of is not None else ""
        return NetworkNamespace("join", path, owner)
    return NetworkNamespace(driver_of(network_mode).netns)
