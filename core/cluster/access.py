"""``ClusterAccess`` for one network driver: its own corner of the store, from threads.

Drivers are synchronous and run in worker threads; the store's client is
async, on the daemon's trio loop.  Each call crosses back with
``trio.from_thread.run`` (the worker threads are trio's, so they know the
loop), and what the store sends a driver (``follow``) crosses the other way
through ``trio.to_thread`` with a limiter of one: one call at a time, in order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import trio

from skiff.core.cluster.etcd import Event, StoreUnavailable
from skiff.core.cluster.membership import ClusterMembership, Follower
from skiff.core.errors import Unavailable
from skiff.core.hookspecs import ClusterUnavailable

T = TypeVar("T")

DRIVERS = "/skiff/v1/driver/"


class DriverClusterAccess:
    """The store under ``/skiff/v1/driver/<driver>/`` (``hookspecs.ClusterAccess``)."""

    def __init__(self, membership: ClusterMembership, driver: str) -> None:
        self._membership = membership
        self.prefix = f"{DRIVERS}{driver}/"
        self.node_id = membership.node_id
        host = membership.advertise.rpartition(":")[0]
        self.address = host.strip("[]")
        self._serial = trio.CapacityLimiter(1)

    def _run(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            try:
                return await fn()
            except (StoreUnavailable, Unavailable) as exc:
                raise ClusterUnavailable(str(exc)) from None

        return trio.from_thread.run(call)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        async def get() -> dict[str, bytes]:
            self._membership.require("read the cluster store")
            kvs, _ = await self._membership.gateway.get_prefix(self.prefix + prefix)
            return {k[len(self.prefix):]: v for k, v in kvs.items()}
        return self._run(get)

    def create(self, items: Mapping[str, bytes], *, node_bound: bool = False) -> bool:
        full = {self.prefix + k: v for k, v in items.items()}

        async def create() -> bool:
            if node_bound:
                return await self._membership.create_bound(full)
            self._membership.require("write to the cluster store")
            return await self._membership.gateway.create_all(full)
        return self._run(create)

    def put(self, key: str, value: bytes, *, node_bound: bool = False) -> None:
        async def put() -> None:
            if node_bound:
                await self._membership.put_bound(self.prefix + key, value)
                return
            self._membership.require("write to the cluster store")
            await self._membership.gateway.put(self.prefix + key, value)
        self._run(put)

    def delete(self, keys: Sequence[str]) -> None:
        async def delete() -> None:
            if keys:
                await self._membership.delete_keys([self.prefix + k for k in keys])
        self._run(delete)

    def follow(self, changed: Callable[[str, bytes | None], None],
               resync: Callable[[Mapping[str, bytes]], None]) -> None:
        cut = len(self.prefix)

        async def on_resync(kvs: dict[str, bytes]) -> None:
            await trio.to_thread.run_sync(resync, {k[cut:]: v for k, v in kvs.items()},
                                          limiter=self._serial)

        async def on_change(event: Event) -> None:
            await trio.to_thread.run_sync(changed, event.key[cut:], event.value,
                                          limiter=self._serial)

        # never waits for the resync: the caller may hold a lock that resync takes
        trio.from_thread.run_sync(self._membership.add_follower,
                                  Follower(self.prefix, on_resync, on_change))
