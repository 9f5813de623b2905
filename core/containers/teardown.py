"""The end of a container's run: what the OOM killer did, and the volumes,
network endpoints and cgroups of the run released."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import structlog

from skiff.core.containers import namespaces as container_namespaces
from skiff.core.containers.model import Container
from skiff.core.containers.networking import NetworkAttachment
from skiff.core.containers.registry import ToThread, Track
from skiff.core.hookspecs import CgroupDriver

log = structlog.get_logger("skiff.containers")


class RunTeardown:
    """Releases what a run held; every step logs its failure and goes on."""

    def __init__(self, *, cgroups: CgroupDriver | None, network: NetworkAttachment,
                 release_volumes: Callable[[Container], None], to_thread: ToThread) -> None:
        self.cgroups = cgroups
        self.network = network
        #: unmount the volumes mounted for the run (blocking; never raises)
        self.release_volumes = release_volumes
        self.to_thread = to_thread

    async def release(self, c: Container, track: Track) -> None:
        await self.to_thread(self.release_volumes, c)
        await self.network.detach_all(c, track)
        if self.cgroups is not None:
            try:
                if not container_namespaces.private_pid(c.host_config):
                    # no pid namespace died with the main process to take
                    # its children along: runc's rule, kill what is left
                    await self.to_thread(self._kill_leftovers, c)
                await self.to_thread(self.cgroups.destroy, c.id)
            except Exception as exc:
                log.warning("container.cgroup_destroy_failed", id=c.id, error=str(exc))

    def _kill_leftovers(self, c: Container) -> None:
        """SIGKILL every process still in ``c``'s groups, until none is left."""
        cgroups = self.cgroups
        assert cgroups is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = cgroups.pids(c.id)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    async def oom_killed(self, c: Container) -> bool:
        """Ask the cgroup driver, before its groups go, whether the OOM killer struck."""
        if self.cgroups is None:
            return False
        try:
            oom = await self.to_thread(self.cgroups.oom_killed, c.id)
        except Exception as exc:
            log.warning("container.oom_check_failed", id=c.id, error=str(exc))
            return False
        if oom:
            log.warning("container.oom", id=c.id, name=c.name)
        return oom
