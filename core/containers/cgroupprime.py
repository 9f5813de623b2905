"""Taking the kernel's wait for a move into a cgroup off the start path.

Every move of a process into a group (the container's init at start, an
exec's process) writes a ``cgroup.procs``.  The first such write after an
idle spell waits for an RCU grace period, 5 to 15 ms on this VM: on cgroup v1
it was the largest single piece of a start (docs/benchmarks.md, the start
path's budget).  Writes for about one grace period after the last are fast.
So when a move is likely soon the daemon has the cgroup driver pay that wait
in a worker thread beside the request's own work (``CgroupDriver.prime``,
contract 2.18), and the move then finds the lock ready: a container's create
makes its groups and primes (``GroupsAhead``), an exec primes at its create
and its start.  A start itself never primes: see ``GroupsAhead``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio

if TYPE_CHECKING:
    from skiff.core.hookspecs import CgroupDriver, Resources

log = structlog.get_logger("skiff.cgroups")


class CgroupPrimer:
    """Calls the driver's optional ``prime`` in the background, one at a time.

    A prime asked for while one is under way is dropped: it would wait for
    the same grace period.  ``prime`` never raises into the daemon: a driver
    whose prime fails is the same as one without it.
    """

    def __init__(self, cgroups: CgroupDriver | None, to_thread: Callable[..., Awaitable[Any]],
                 spawn: Callable[..., None]) -> None:
        # optional in the contract: a driver without it (or none) primes nothing
        self._prime: Callable[[], None] | None = getattr(cgroups, "prime", None)
        self._to_thread = to_thread
        self._spawn = spawn
        self._busy = False

    def __call__(self) -> None:
        """Ask for a prime; returns at once (never blocks the event loop)."""
        if self._prime is None or self._busy:
            return
        self._busy = True
        try:
            self._spawn(self._run)
        except (AttributeError, RuntimeError):  # no nursery (yet, or any more)
            self._busy = False

    async def _run(self) -> None:
        try:
            assert self._prime is not None
            await self._to_thread(self._prime)
        except Exception as exc:  # noqa: BLE001: a prime is an optimisation only
            log.warning("cgroup.prime_failed", error=str(exc))
            self._prime = None
        finally:
            self._busy = False


#: at most this many created containers have their groups made ahead: a
#: thousand ``docker create`` must not leave a thousand empty memory groups
#: (the kernel has 65535 memory group ids)
AHEAD_MAX = 8


@dataclass
class _Ahead:
    resources: Resources
    done: trio.Event = field(default_factory=trio.Event)
    made: bool = False


class GroupsAhead:
    """A created container's groups, made in the background right at create.

    ``docker run`` starts what it created a few milliseconds later, and a
    start cannot prime (``CgroupPrimer``) without waiting for its own prime:
    making the groups needs the kernel's cgroup_mutex, which a prime holds
    through its grace period.  So create makes the groups and then primes,
    both in the background, and the start finds the groups there and the
    grace period over.  Only while fewer than ``AHEAD_MAX`` created
    containers have theirs; anything that goes wrong is left to the start,
    which makes the groups again and says why they cannot be made.
    """

    def __init__(self, cgroups: CgroupDriver | None, prime: Callable[[], None],
                 to_thread: Callable[..., Awaitable[Any]], spawn: Callable[..., None]) -> None:
        self.cgroups = cgroups
        self.prime = prime
        self.to_thread = to_thread
        self.spawn = spawn
        self._ahead: dict[str, _Ahead] = {}

    def begin(self, container_id: str, resources: Resources) -> None:
        """Make the groups of a container being created, in the background."""
        if self.cgroups is None or len(self._ahead) >= AHEAD_MAX:
            return
        ahead = self._ahead[container_id] = _Ahead(resources)
        try:
            self.spawn(self._make, container_id, ahead)
        except (AttributeError, RuntimeError):
            del self._ahead[container_id]

    async def _make(self, container_id: str, ahead: _Ahead) -> None:
        assert self.cgroups is not None
        try:
            await self.to_thread(self.cgroups.create, container_id, ahead.resources)
            ahead.made = True
            self.prime()
        except Exception as exc:  # noqa: BLE001: the start makes them and tells why not
            log.debug("cgroup.ahead_failed", id=container_id, error=str(exc))
        finally:
            ahead.done.set()

    async def claim(self, container_id: str, resources: Resources) -> bool:
        """At start: whether the groups are there with these limits (the
        start then skips making them)."""
        ahead = self._ahead.pop(container_id, None)
        if ahead is None:
            return False
        with trio.CancelScope(shield=True):  # the groups are the start's from here
            await ahead.done.wait()
        return ahead.made and ahead.resources == resources

    async def drop(self, container_id: str) -> None:
        """At rm, or a create that failed: remove the groups made ahead.  (Those
        of a daemon that crashed go at the next start: reconciliation keeps
        the groups of running containers only.)"""
        ahead = self._ahead.pop(container_id, None)
        if ahead is None or self.cgroups is None:
            return
        await ahead.done.wait()
        if ahead.made:
            with contextlib.suppress(OSError):
                await self.to_thread(self.cgroups.destroy, container_id)

    async def close(self) -> None:
        """At shutdown: no created container keeps groups made ahead (the
        next daemon makes them at start, as for any container)."""
        for container_id in list(self._ahead):
            await self.drop(container_id)
