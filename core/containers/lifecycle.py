"""rename, pause/unpause, restart and prune of containers (Docker's rules and messages).

Kept apart from the manager, which owns create/start/stop/remove: these
operations only change a record's name or state and call the cgroup driver.
They take :class:`Containers`, the little of the manager they use.
"""

from __future__ import annotations

import re
import signal
import time
from typing import Any, Protocol

import structlog

from skiff.core.containers.config import NAME_RE, InvalidConfig, parse_signal
from skiff.core.containers.model import Container
from skiff.core.containers.registry import ContainerRegistry, ToThread
from skiff.core.errors import Conflict, InvalidParameter, NotFound
from skiff.core.events import Publish
from skiff.core.hookspecs import CgroupDriver, DriverNotSupported, StorageDriver
from skiff.core.timefmt import parse_time_param

log = structlog.get_logger("skiff.containers.lifecycle")

PRUNE_FILTERS = {"until", "label", "label!"}


class Containers(Protocol):
    """What rename, pause, restart and prune use of the container manager."""

    registry: ContainerRegistry
    cgroups: CgroupDriver | None
    storage: StorageDriver

    # read-only: the manager's are bound methods of the engine, which an
    # attribute member (invariant) would not accept
    @property
    def to_thread(self) -> ToThread: ...

    @property
    def publish(self) -> Publish: ...

    async def start(self, ref: str) -> None: ...

    async def stop(self, ref: str, timeout: int | None = None) -> None: ...

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None: ...


async def rename(mgr: Containers, ref: str, new_name: str) -> None:
    """``docker rename``: Docker's name rules; event ``rename`` with ``oldName``."""
    c = mgr.registry.get(ref)
    if not new_name:
        raise InvalidParameter("Neither old nor new names may be empty")
    if not NAME_RE.match(new_name):
        raise InvalidParameter(
            f"Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )
    new_name = new_name.lstrip("/")
    old_name = c.name
    if new_name == old_name:
        raise InvalidParameter("Renaming a container with the same name as its current name")
    owner = mgr.registry.by_name.get(new_name)
    if owner is not None:
        raise Conflict(
            f'Conflict. The container name "/{new_name}" is already in use by container '
            f'"{owner}". You have to remove (or rename) that container to be able to reuse '
            "that name."
        )
    mgr.registry.by_name[new_name] = c.id
    if mgr.registry.by_name.get(old_name) == c.id:
        del mgr.registry.by_name[old_name]
    c.name = new_name
    try:
        await mgr.to_thread(c.save)
    except BaseException:
        c.name = old_name
        mgr.registry.by_name[old_name] = c.id
        mgr.registry.by_name.pop(new_name, None)
        raise
    mgr.registry.event(c, "rename", oldName="/" + old_name)
    log.info("container.rename", id=c.id, old=old_name, new=new_name)


def without_link(links: list[str], alias: str) -> list[str]:
    """``links`` (HostConfig.Links) without the one named ``alias``: entries are
    "name:alias", dockerd's own "/name:/parent/alias", or a bare name (its alias)."""
    return [link for link in links
            if (link.partition(":")[2] or link.partition(":")[0]).rsplit("/", 1)[-1] != alias]


async def remove_link(mgr: Containers, parent_ref: str, alias: str) -> None:
    """``docker rm --link parent/alias`` (DELETE /containers/{parent}/{alias}?link=1):
    forget the legacy link ``alias`` of ``parent``; both containers stay."""
    try:
        c = mgr.registry.get(parent_ref)
    except NotFound:
        raise NotFound(f"No such container: {parent_ref}/{alias}") from None
    links = list(c.host_config.get("Links") or [])
    kept = without_link(links, alias)
    if len(kept) == len(links):
        raise NotFound(f"No such container: {parent_ref}/{alias}")
    c.host_config["Links"] = kept or None
    await mgr.to_thread(c.save)
    log.info("container.link_removed", id=c.id, alias=alias)


def _freezer(mgr: Containers) -> Any:
    cg = mgr.cgroups
    if cg is None:
        raise InvalidParameter("pause needs a cgroup driver: this daemon runs without one")
    return cg


async def pause(mgr: Containers, ref: str) -> None:
    """``docker pause``: freeze every process of the container."""
    c = mgr.registry.get(ref)
    track = mgr.registry.tracks[c.id]
    async with track.lock:
        if c.state.Restarting:
            raise Conflict(f"Container {c.id} is restarting, wait until the container is running")
        if not c.state.Running:
            raise Conflict(f"Container {c.id} is not running")
        if c.state.Paused:
            raise Conflict(f"Container {c.id} is already paused")
        cg = _freezer(mgr)
        try:
            await mgr.to_thread(cg.freeze, c.id)
        except DriverNotSupported as exc:
            raise InvalidParameter(f"Cannot pause container {c.id}: {exc}") from exc
        except OSError as exc:
            raise RuntimeError(f"Cannot pause container {c.id}: {exc}") from exc
        c.state.Paused = True
        c.state.Status = "paused"
        c.save()
    mgr.registry.event(c, "pause")


async def unpause(mgr: Containers, ref: str) -> None:
    """``docker unpause``."""
    c = mgr.registry.get(ref)
    track = mgr.registry.tracks[c.id]
    async with track.lock:
        if not c.state.Paused:
            raise Conflict(f"Container {c.id} is not paused")
        await _thaw(mgr, c)


async def _thaw(mgr: Containers, c: Container) -> None:
    cg = _freezer(mgr)
    try:
        await mgr.to_thread(cg.thaw, c.id)
    except OSError as exc:
        raise RuntimeError(f"Cannot unpause container {c.id}: {exc}") from exc
    c.state.Paused = False
    if c.state.Running:
        c.state.Status = "running"
    c.save()
    mgr.registry.event(c, "unpause")


async def thaw_after_signal(mgr: Containers, c: Container, signum: int) -> None:
    """A paused container that was sent SIGKILL or its stop signal is thawed, as
    Docker does, so the signal is acted on (a frozen task does not die)."""
    if not c.state.Paused:
        return
    try:
        stop = parse_signal(c.config.get("StopSignal"), signal.SIGTERM)
    except InvalidConfig:
        stop = signal.SIGTERM
    if signum not in (signal.SIGKILL, stop):
        return
    try:
        await _thaw(mgr, c)
    except Exception as exc:  # the group may be gone already: the process exited
        log.warning("container.thaw_failed", id=c.id, error=str(exc))


async def restart(mgr: Containers, ref: str, timeout: int | None) -> None:
    """``docker restart``: stop if running, start; event ``restart``."""
    c = mgr.registry.get(ref)
    if c.state.Running or c.state.Restarting:
        await mgr.stop(c.id, timeout)
    await mgr.start(c.id)
    mgr.registry.event(c, "restart")


_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_until(value: str, now: float | None = None) -> float:
    """Docker's ``until``: a Go duration before now (``24h``), Unix seconds or RFC 3339."""
    now = time.time() if now is None else now
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return now - sum(float(n) * _UNITS[u] for n, u in parts)
    try:
        return parse_time_param(value)
    except ValueError as exc:
        raise InvalidParameter(f"invalid until value {value!r}: {exc}") from exc


def _label_match(labels: dict[str, str], want: str) -> bool:
    key, eq, value = want.partition("=")
    return key in labels and (not eq or labels[key] == value)


async def prune(mgr: Containers, filters: dict[str, list[str]]) -> dict[str, Any]:
    """``docker container prune``: every stopped container that matches ``filters``."""
    from skiff.core.timefmt import parse_rfc3339

    until = [parse_until(v) for v in filters.get("until", [])]
    deleted: list[str] = []
    reclaimed = 0
    for c in list(mgr.registry.by_id.values()):
        s = c.state
        if s.Running or s.Paused or s.Restarting or s.Status == "removing":
            continue
        if until and not parse_rfc3339(c.created) < min(until):
            continue
        labels = c.config.get("Labels") or {}
        if not all(_label_match(labels, w) for w in filters.get("label", [])):
            continue
        if any(_label_match(labels, w) for w in filters.get("label!", [])):
            continue
        size = 0
        if c.mount_id:
            try:
                size = await mgr.to_thread(mgr.storage.diff_size, c.mount_id, c.init_id or None)
            except Exception as exc:
                log.debug("container.prune_size_failed", id=c.id, error=str(exc))
        try:
            await mgr.remove(c.id)
        except Exception as exc:
            log.warning("container.prune_failed", id=c.id, error=str(exc))
            continue
        deleted.append(c.id)
        reclaimed += int(size or 0)
    mgr.publish("container", "prune", "", {"reclaimed": str(reclaimed)})
    return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}
