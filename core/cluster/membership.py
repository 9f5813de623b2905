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
        #: keys written under this node's lease, written again at each registration
        self._bound: dict[str, bytes] = {}
        self._session_nursery: trio.Nursery | None = None
        #: set once the first registration is done (followers resynced) or has failed
        self.first_attempt = trio.Event()
        self._session_revision = 0

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
            for key, value in list(self._bound.items()):  # they went with the old lease
                await self.gateway.put(key, value, lease=lease)
            kvs, revision = await self.gateway.get_prefix(NODES)
            followed = [(f, await self.gateway.get_prefix(f.prefix)) for f in self.followers]
        except StoreUnavailable as exc:
            self._down(str(exc))
            self.first_attempt.set()
            return False
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

            nursery.start_soon(keepalive)
            nursery.start_soon(watch)
            # a follower added while these resync (a driver built on first use) starts
            # through add_follower, in this session
            self._session_nursery = nursery
            # registered first: a follower may write (a driver's resync adopts networks)
            for follower, (fkvs, frev) in followed:
                try:
                    await follower.resync(fkvs)
                except Exception as exc:  # one follower's bug must not stop the registration
                    log.error("cluster.follower_failed", prefix=follower.prefix, error=str(exc))
                nursery.start_soon(self._follow, follower, frev, nursery)
            self.first_attempt.set()
        self._session_nursery = None
        return lapsed

    def add_follower(self, follower: Follower) -> None:
        """Follow ``follower.prefix`` from now on: started at once if registered (its
        resync runs as a task of the session), else at the next registration."""
        self.followers.append(follower)
        if self._session_nursery is not None:
            self._session_nursery.start_soon(self._start_follower, follower,
                                             self._session_nursery)

    async def _start_follower(self, follower: Follower, session: trio.Nursery) -> None:
        try:
            kvs, revision = await self.gateway.get_prefix(follower.prefix)
        except StoreUnavailable as exc:
            self._down(str(exc))
            session.cancel_scope.cancel()  # the next session resyncs every follower
            return
        try:
            await follower.resync(kvs)
        except Exception as exc:
            log.error("cluster.follower_failed", prefix=follower.prefix, error=str(exc))
        await self._follow(follower, revision, session)

    async def _follow(self, follower: Follower, after: int, session: trio.Nursery) -> None:
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
        session.cancel_scope.cancel()

    async def put_bound(self, key: str, value: bytes) -> None:
        """Write ``key`` under this node's lease (it goes when the node does)."""
        self.require(f"write {key}")
        await self.gateway.put(key, value, lease=self.lease)
        self._bound[key] = value

    async def create_bound(self, items: dict[str, bytes]) -> bool:
        """``create_all`` under this node's lease."""
        self.require(f"write {', '.join(items)}")
        created = await self.gateway.create_all(items, lease=self.lease)
        if created:
            self._bound.update(items)
        return created

    async def delete_keys(self, keys: list[str]) -> None:
        self.require(f"delete {', '.join(keys)}")
        await self.gateway.delete_all(keys)
        for key in keys:
            self._bound.pop(key, None)

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
