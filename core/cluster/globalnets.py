"""Global-scope networks: made on one node, there on every node of the cluster.

A network of a driver with ``scope = "global"`` is written to the store
(``/skiff/v1/networks/<id>``, its record as ``network inspect`` shows it) in
one transaction with its name (``/skiff/v1/network-names/<name>``), so two
nodes creating the same name at once cannot both succeed.  Every node
follows the prefix: a network that appears is plumbed here by its driver
(``NetworkStore.adopt``), one that goes is taken down (``withdraw``), and at
each registration the node's global networks are made to match the store,
which may have changed while the node or the store was away.

The records have no lease: a network outlives the node that made it.
Addresses inside a global network are the driver's business (the overlay
driver keeps them in the store too).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
import trio

from skiff.core.cluster.etcd import Event, StoreUnavailable
from skiff.core.cluster.membership import ClusterMembership, Follower
from skiff.core.errors import Conflict, Unavailable
from skiff.core.networks import Network, NetworkStore

log = structlog.get_logger("skiff.cluster")

NETWORKS = "/skiff/v1/networks/"
NAMES = "/skiff/v1/network-names/"

T = TypeVar("T")


class GlobalNetworks:
    """Keeps this node's global-scope networks in step with the cluster store."""

    def __init__(self, membership: ClusterMembership, networks: NetworkStore,
                 to_thread: Callable[..., Awaitable[Any]],
                 announce: Callable[[str, Network], object]) -> None:
        self.membership = membership
        self.networks = networks
        self._to_thread = to_thread
        #: ``announce("create" | "destroy", net)``: the network events of the API
        self._announce = announce
        # a resync must not see a network between its local create and its publication
        self._lock = trio.Lock()
        membership.add_follower(Follower(NETWORKS, self._resync, self._changed))

    async def create(self, body: dict[str, Any]) -> tuple[Network, str]:
        """``network create`` of a global-scope driver: here, then in the store."""
        async with self._lock:
            net: Network
            net, warning = await self._to_thread(self.networks.create, body)
            try:
                self.membership.require(f"create network {net.name}")
                record = json.dumps(self.networks.shared_record(net)).encode()
                created = await self.membership.gateway.create_all(
                    {NETWORKS + net.id: record, NAMES + net.name: net.id.encode()})
            except (StoreUnavailable, Unavailable) as exc:
                await self._to_thread(self.networks.remove, net.id)
                raise Unavailable(f"cannot create network {net.name}: {exc}") from None
            if not created:
                await self._to_thread(self.networks.remove, net.id)
                raise Conflict(f"network with name {net.name} already exists in the cluster")
            return net, warning

    async def remove(self, net: Network) -> None:
        """``network rm`` of a global network: from the store, then here."""
        async with self._lock:
            self.networks.check_removable(net)
            self.membership.require(f"remove network {net.name}")
            try:
                await self.membership.gateway.delete_all([NETWORKS + net.id, NAMES + net.name])
            except StoreUnavailable as exc:
                raise Unavailable(f"cannot remove network {net.name}: {exc}") from None
            await self._to_thread(self.networks.remove, net.id)

    async def _adopt(self, value: bytes) -> None:
        try:
            record = json.loads(value)
            if not isinstance(record, dict) or not record.get("Id"):
                raise ValueError("not a network record")
        except ValueError as exc:
            log.warning("cluster.bad_network_record", error=str(exc), value=value[:200])
            return
        if record["Id"] in self.networks.by_id:
            if record["Id"] in self.networks.pending:  # known here, confirmed by the store
                await self._to_thread(self.networks.plumb, record["Id"])
            return
        net = await self._to_thread(self.networks.adopt, record)
        if net is not None:
            self._announce("create", net)

    async def _withdraw(self, network_id: str) -> None:
        net = await self._to_thread(self.networks.withdraw, network_id)
        if net is not None:
            self._announce("destroy", net)

    async def _resync(self, kvs: dict[str, bytes]) -> None:
        async with self._lock:
            for value in kvs.values():
                await self._adopt(value)
            present = {key[len(NETWORKS):] for key in kvs}
            for net in list(self.networks.by_id.values()):
                if net.scope == "global" and net.id not in present:
                    await self._withdraw(net.id)

    async def _changed(self, event: Event) -> None:
        async with self._lock:
            if event.value is None:
                await self._withdraw(event.key[len(NETWORKS):])
            else:
                await self._adopt(event.value)
