"""The ``host`` network driver: containers share the host's network namespace.

Nothing to plumb: the runtime leaves the ``net`` namespace out of the
container's spec, so the container sees the host's interfaces, addresses and
ports, as with Docker's ``--network host``.
"""

from __future__ import annotations

from typing import Literal

from skiff.core.hookspecs import Endpoint, NetworkContext, NetworkOptions, hookimpl

NAME = "host"


class HostNetworkDriver:
    """Containers use the host's network stack; every operation is a no-op."""

    name = NAME
    netns: Literal["new", "host"] = "host"
    singleton = True  #: only the predefined ``host`` network; no other beside it

    def __init__(self, ctx: NetworkContext | None = None) -> None:
        self.ctx = ctx

    def create_network(self, network_id: str, options: NetworkOptions) -> None:
        pass

    def delete_network(self, network_id: str) -> None:
        pass

    def create_endpoint(self, network_id: str, endpoint: Endpoint) -> Endpoint:
        return endpoint

    def join(self, endpoint: Endpoint, pid: int) -> None:
        pass

    def leave(self, endpoint: Endpoint) -> None:
        pass

    def delete_endpoint(self, endpoint: Endpoint) -> None:
        pass


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.7"


@hookimpl
def skiff_network_drivers() -> dict[str, object]:
    return {NAME: HostNetworkDriver}
