"""This daemon's place in the cluster: registered under a lease, the others watched.

Each skiffd writes ``/skiff/v1/nodes/<engine id>`` under a lease of
``discovery.ttl`` seconds and renews it every ``discovery.heartbeat``; a
daemon that dies (kill -9, a lost host) drops out when its lease runs out,
one that stops revokes it and drops out at once.  Every daemon watches the
prefix, so ``peers`` is the cluster as the store sees it.

The store going away never stops the daemon nor its containers: the
daemon keeps running on what it knows and marks the store unavailable, so
operations that need it (``require``) fail with the store named until a
new registration succeeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from skiff.core.cluster.etcd import EtcdGateway, Event, StoreUnavailable
from skiff.core.cluster.settings import ClusterSettings
from skiff.core.errors import Unavailable

log = structlog.get_logger("skiff.cluster")

NODES = "/skiff/v1/nodes/"


@dataclass
class Follower:
    """What another part of the daemon keeps in step with a prefix of the store.

    At every registration ``resync`` gets everything under ``prefix`` (the
    store may have changed while it was away); then ``changed`` gets each
    change as the watch sees it.  Both run in the daemon's trio loop; an
    exception from either is logged and the follower resynced at the next
    registration.
    """

    prefix: str
    resync: Callable[[dict[str, bytes]], Awaitable[None]]
    changed: Callable[[Event], Awaitable[None]]


def _record(value: bytes) -> dict[str, Any] | None:
    """A node's record; None (logged) for what another writer left that is not one."""
    try:
        rec = json.loads(value)
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        log.warning("cluster.bad_node_record", value=value[:200])
        return None
    return rec


class ClusterMembership:
    """Registration, keep-alive and the watch of peers; ``run`` is a daemon task."""

    def __init__(self, settings: ClusterSettings, node_id: str, name: str, advertise: str,
                 gateway: EtcdGateway | None = None) -> None:
        self.settings = settings
        self.node_id = node_id
        self.name = name
        self.advertise = advertise  #: resolved (``resolve_advertise``)
        self.gateway = gateway or EtcdGateway(settings)
        self.available = False
        self.error = f"cluster store {settings.store}: not registered yet"
        self.lease = 0
        #: node id -> what that node wrote (id, name, advertise, since)
        self.peers: dict[str, dict[str, Any]] = {}
        self.on_peers: list[Callable[[dict[str, dict[str, Any]]], None]] = []
        self._scope = trio.CancelScope()
        self.followers: list[Follower] = []

    @property
    def key(self) -> str:
        return NODES + self.node_id

    def require(self, what: str) -> None:
        """Raise ``Unavailable`` (503) naming the store unless it is reachable now."""
        if not self.available:
            raise Unavailable(f"cannot {what}: {self.error}; this needs the cluster store: "
                              "retry once it is back")

    def _down(self, error: str) -> None:
        if self.available or error != self.error:
            log.warning("cluster.store_unavailable", store=self.settings.store, error=error)
        self.available = False
        self.error = error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay registered until cancelled; never raises for the store's sake."""
        task_status.started()
        pause = 0.2
        with self._scope:
            while True:
                if await self._session():
                    pause = 0.2  # a lapsed lease: register again at once
                await trio.sleep(pause)
                pause = min(pause * 2, float(self.settings.heartbeat))

    async def _session(self) -> bool:
        """Register and serve one lease; True when it ended because the lease lapsed."""
        try:
            lease = await self.gateway.grant(self.settings.ttl)
            record = {"id": self.node_id, "name": self.name, "advertise": self.advertise,
                      "since": time.time()}
            await self.gateway.put(self.key, json.dumps(record).encode(), lease=lease)
            kvs, revision = await self.gateway.get_prefix(NODES)
            followed = [(f, await self.gateway.get_prefix(f.prefix)) for f in self.followers]
        except StoreUnavailable as exc:
            self._down(str(exc))
            return False
        for follower, (fkvs, _) in followed:
            try:
                await follower.resync(fkvs)
            except Exception as exc:  # one follower's bug must not stop the registration
                log.error("cluster.follower_failed", prefix=follower.prefix, error=str(exc))
        self.lease = lease
        self._set_peers({k[len(NODES):]: rec for k, v in kvs.items()
                         if (rec := _record(v)) is not None})
        self.available = True
        log.info("cluster.registered", store=self.settings.store, node=self.node_id,
                 advertise=self.advertise, ttl=self.settings.ttl, peers=sorted(self.peers))
        lapsed = False
        async with trio.open_nursery() as nursery:

            async def keepalive() -> None:
                nonlocal lapsed
                while True:
                    await trio.sleep(self.settings.heartbeat)
                    try:
                        left = await self.gateway.keepalive(lease)
                    except StoreUnavailable as exc:
                        self._down(str(exc))
                        break
                    if left <= 0:  # the store forgot us (it was away longer than the TTL)
                        lapsed = True
                        self._down(f"cluster store {self.settings.store}: this node's "
                                   "registration lapsed; registering again")
                        break
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                try:
                    async with self.gateway.watch(NODES, revision + 1) as events:
                        async for event in events:
                            peers = dict(self.peers)
                            node = event.key[len(NODES):]
                            if event.value is None:
                                peers.pop(node, None)
                                log.info("cluster.peer_left", node=node)
                            elif (rec := _record(event.value)) is not None:
                                peers[node] = rec
                                log.info("cluster.peer_joined", node=node,
                                         advertise=peers[node].get("advertise"))
                            self._set_peers(peers)
                except StoreUnavailable as exc:
                    self._down(str(exc))
                nursery.cancel_scope.cancel()

            async def follow(follower: Follower, after: int) -> None:
                try:
                    async with self.gateway.watch(follower.prefix, after + 1) as events:
                        async for event in events:
                            try:
                                await follower.changed(event)
                            except Exception as exc:
                                log.error("cluster.follower_failed", prefix=follower.prefix,
                                          key=event.key, error=str(exc))
                except StoreUnavailable as exc:
                    self._down(str(exc))
                nursery.cancel_scope.cancel()

            nursery.start_soon(keepalive)
            nursery.start_soon(watch)
            for follower, (_, frev) in followed:
                nursery.start_soon(follow, follower, frev)
        return lapsed

    def _set_peers(self, peers: dict[str, dict[str, Any]]) -> None:
        self.peers = peers
        for callback in self.on_peers:
            callback(peers)

    async def leave(self) -> None:
        """Revoke the lease, so the others see this node go at once; best effort."""
        self._scope.cancel()
        with trio.move_on_after(2):
            if self.lease:
                try:
                    await self.gateway.revoke(self.lease)
                    log.info("cluster.left", store=self.settings.store, node=self.node_id)
                except StoreUnavailable as exc:
                    log.warning("cluster.leave_failed", error=str(exc))
        self.available = False
        self.lease = 0
        await self.gateway.aclose()
