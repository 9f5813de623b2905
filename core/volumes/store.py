"""The volume store: records, drivers, reference counts, filters, prune.

Drivers (``skiff.volume`` entry points, ``hookspecs.VolumeDriver``) hold the
data; the store keeps what Docker's volume service keeps in its metadata
database: per volume its driver, labels, options and creation time, one JSON
file each under ``<data-root>/volumes/_meta/`` (a volume name cannot start
with ``_``, so the folder never clashes with the local driver's volumes).

A volume is in use while any container, running or not, has a mount point
naming it; the count is derived from the container records, so it is right
after a daemon restart without bookkeeping of its own.  Every method blocks
(driver calls, file I/O) and runs on a worker thread; events are handed to
the trio thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiff.core import fdops, namefilter
from skiff.core.atomic import write_json_atomic
from skiff.core.errors import Conflict, InvalidParameter, NotFound
from skiff.core.events import Publish
from skiff.core.hookspecs import DriverNotSupported, VolumeContext, VolumeDriver
from skiff.core.timefmt import now_rfc3339, rfc3339

if TYPE_CHECKING:
    from skiff.core.containers.model import Container

log = structlog.get_logger("skiff.volumes")

DEFAULT_DRIVER = "local"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
VOLUME_FILTERS = {"dangling", "name", "label", "driver"}
PRUNE_FILTERS = {"label", "label!"}

#: the factory of the volume driver of a name (``Plugins.factory("volume", name)``);
#: LookupError when none is installed
DriverFactory = Callable[[str], Callable[[VolumeContext], VolumeDriver]]


@dataclass
class Volume:
    """The daemon's record of one volume."""

    name: str
    driver: str
    created_at: str
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"Name": self.name, "Driver": self.driver, "CreatedAt": self.created_at,
                "Labels": self.labels, "Options": self.options}


class VolumeStore:
    """The volumes of one daemon.

    ``containers`` are the container records (by ID), where a volume's users
    are counted; ``drivers`` builds a volume driver by name; ``default_owner``
    (host uid, gid) owns a new volume's directory when its creator names no
    owner: the remapped root under userns-remap, else None (unchanged).
    """

    def __init__(self, data_root: str, drivers: DriverFactory,
                 containers: Mapping[str, Container], publish: Publish,
                 default_owner: tuple[int, int] | None = None) -> None:
        self.data_root = data_root
        self._factory = drivers
        self._containers = containers
        self._publish = publish
        self.default_owner = default_owner
        self.home = os.path.join(data_root, "volumes")
        self.meta_dir = os.path.join(self.home, "_meta")
        self.volumes: dict[str, Volume] = {}
        self._drivers: dict[str, VolumeDriver] = {}
        self._lock = threading.RLock()
        #: volume name -> containers being created that will use it (not yet recorded)
        self._pending: dict[str, int] = {}
        #: container ID -> (driver, volume) pairs mounted for its current run
        self.mounted: dict[str, list[tuple[str, str]]] = {}
        os.makedirs(self.meta_dir, mode=0o700, exist_ok=True)
        os.chmod(self.home, 0o701)

    # -- drivers ---------------------------------------------------------------

    def driver(self, name: str) -> VolumeDriver:
        """The volume driver ``name``, built on first use."""
        name = name or DEFAULT_DRIVER
        with self._lock:
            if name not in self._drivers:
                try:
                    factory = self._factory(name)
                except LookupError as exc:
                    raise NotFound(f"error looking up volume plugin {name}: {exc}") from exc
                try:
                    self._drivers[name] = factory(VolumeContext(
                        home=self.home, data_root=self.data_root))
                except DriverNotSupported as exc:
                    raise InvalidParameter(f"volume driver {name} cannot be used: {exc}"
                                           ) from exc
            return self._drivers[name]

    # -- events ----------------------------------------------------------------

    def event(self, action: str, name: str, attributes: Mapping[str, Any]) -> None:
        """Publish a volume event from the trio thread or from a worker thread."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            with contextlib.suppress(RuntimeError):  # no trio at all (unit use): no events
                trio.from_thread.run_sync(self._publish, "volume", action, name,
                                          dict(attributes))
            return
        self._publish("volume", action, name, dict(attributes))

    # -- records ---------------------------------------------------------------

    def load(self) -> None:
        """Read the records; a local volume without one (made by hand) gets one."""
        for entry in os.listdir(self.meta_dir):
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.meta_dir, entry)) as f:
                    rec = json.load(f)
                v = Volume(name=rec["Name"], driver=rec.get("Driver") or DEFAULT_DRIVER,
                           created_at=rec.get("CreatedAt") or "",
                           labels=dict(rec.get("Labels") or {}),
                           options=dict(rec.get("Options") or {}))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("volume.restore_failed", file=entry, error=str(exc))
                continue
            self.volumes[v.name] = v
        with contextlib.suppress(Exception):
            present = {info.name: info for info in self.driver(DEFAULT_DRIVER).list()}
            for name, v in list(self.volumes.items()):
                if v.driver == DEFAULT_DRIVER and name not in present:
                    # a remove killed between the driver's delete and the record's:
                    # finish it, or a create would find a volume without data
                    log.warning("volume.remove_finished", name=name)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.meta_dir, f"{name}.json"))
                    del self.volumes[name]
            for name, info in present.items():
                if name not in self.volumes:
                    v = Volume(name, DEFAULT_DRIVER, self._created(info.mountpoint))
                    self.volumes[v.name] = v
                    self._save(v)

    @staticmethod
    def _created(path: str) -> str:
        try:
            return rfc3339(os.stat(path).st_mtime)
        except OSError:
            return rfc3339(0)

    def _save(self, v: Volume) -> None:
        write_json_atomic(os.path.join(self.meta_dir, f"{v.name}.json"), v.to_json(), 0o600)

    def get(self, name: str) -> Volume:
        v = self.volumes.get(name)
        if v is None:
            raise NotFound(f"get {name}: no such volume")
        return v

    # -- usage -------------------------------------------------------------------

    def users(self, name: str) -> list[str]:
        """IDs of the containers whose mount points name volume ``name``."""
        out = []
        for c in list(self._containers.values()):
            for mp in getattr(c, "mount_points", None) or []:
                if mp.get("Type") == "volume" and mp.get("Name") == name:
                    out.append(c.id)
                    break
        return out

    def in_use(self, name: str) -> bool:
        return bool(self._pending.get(name)) or bool(self.users(name))

    def hold(self, name: str) -> bool:
        """Count a container being created as a user until ``release_hold``;
        False, holding nothing, when the volume is gone (a ``volume rm`` of
        another client between ``create`` finding it and this)."""
        with self._lock:
            if name not in self.volumes:
                return False
            self._pending[name] = self._pending.get(name, 0) + 1
            return True

    def release_hold(self, name: str) -> None:
        with self._lock:
            n = self._pending.get(name, 0) - 1
            if n > 0:
                self._pending[name] = n
            else:
                self._pending.pop(name, None)

    # -- API operations ----------------------------------------------------------

    def create(self, name: str | None, driver: str | None = None,
               options: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None,
               owner: tuple[int, int] | None = None) -> tuple[Volume, bool]:
        """Create a volume (a random name when none); (volume, whether it is new).

        Creating a volume that exists with the same driver returns it, as
        Docker does, so ``-v name:/x`` and ``docker volume create name`` agree.
        A new volume's directory belongs to ``owner`` (host uid, gid); with
        userns-remap and no ``owner``, to the remapped root, as dockerd makes
        them, so the root of a remapped container can write to it.
        """
        driver = driver or DEFAULT_DRIVER
        if options is not None and not isinstance(options, Mapping):
            raise InvalidParameter("DriverOpts must be a map of strings")
        if labels is not None and not isinstance(labels, Mapping):
            raise InvalidParameter("Labels must be a map of strings")
        with self._lock:
            if not name:
                name = secrets.token_hex(32)
            elif not NAME_RE.match(name):
                raise InvalidParameter(
                    f'create {name}: "{name}" includes invalid characters for a local volume '
                    'name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to '
                    "pass a host directory, use absolute path")
            existing = self.volumes.get(name)
            if existing is not None:
                if existing.driver != driver:
                    raise Conflict(
                        f"create {name}: volume name must be unique: a volume named {name} "
                        f"already exists with driver {existing.driver}")
                return existing, False
            drv = self.driver(driver)
            opts = {str(k): str(v) for k, v in (options or {}).items()}
            try:
                drv.create(name, opts)
            except ValueError as exc:
                raise InvalidParameter(f"create {name}: {exc}") from exc
            v = Volume(name=name, driver=driver, created_at=now_rfc3339(),
                       labels={str(k): str(val) for k, val in (labels or {}).items()},
                       options=opts)
            try:
                self._own(drv, name, owner)
                self._save(v)
            except BaseException:
                with contextlib.suppress(Exception):
                    drv.remove(name)
                raise
            self.volumes[name] = v
        self.event("create", name, {"driver": driver})
        log.info("volume.create", name=name, driver=driver)
        return v, True

    def _own(self, drv: VolumeDriver, name: str, owner: tuple[int, int] | None) -> None:
        if owner is None:
            owner = self.default_owner
        if owner is None:
            return
        path = drv.path(name)
        # a volume whose data only exists while mounted (a tmpfs) has nothing to own yet
        if path and os.path.isdir(path):
            os.chown(path, *owner)

    def remove(self, name: str, force: bool = False) -> None:
        """``docker volume rm``: refused while a container uses the volume.

        ``force`` ignores a missing volume and drops the record even when the
        driver fails to delete the data (Docker's purge), never a volume in use.
        """
        with self._lock:
            v = self.volumes.get(name)
            if v is None:
                if force:
                    return
                raise NotFound(f"get {name}: no such volume")
            users = self.users(name)
            if users or self._pending.get(name):
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
            try:
                self.driver(v.driver).remove(name)
            except KeyError:
                pass
            except Exception as exc:
                if not force:
                    raise
                log.warning("volume.remove_purged", name=name, error=str(exc))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.meta_dir, f"{name}.json"))
            del self.volumes[name]
        self.event("destroy", name, {"driver": v.driver})
        log.info("volume.remove", name=name)

    def prune(self, filters: Mapping[str, list[str]]) -> tuple[list[str], int]:
        """Remove every unused local volume matching ``filters`` (API 1.41 semantics:
        named and anonymous alike); the names and the bytes reclaimed."""
        deleted: list[str] = []
        space = 0
        for name, v in sorted(self.volumes.items()):
            if self.in_use(name) or not _labels_match(v.labels, filters):
                continue
            drv = self.driver(v.driver)
            if drv.capabilities().get("Scope", "local") != "local":
                continue
            size = _du(drv.path(name)) if v.driver == DEFAULT_DRIVER else 0
            try:
                self.remove(name)
            except (Conflict, NotFound):
                continue
            except Exception as exc:
                log.warning("volume.prune_failed", name=name, error=str(exc))
                continue
            deleted.append(name)
            space += size
        return deleted, space

    def inspect(self, v: Volume, usage: bool = False) -> dict[str, Any]:
        drv = self.driver(v.driver)
        try:
            info = drv.get(v.name)
            mountpoint, status = info.mountpoint, info.status
        except KeyError:
            mountpoint, status = "", {}
        scope = drv.capabilities().get("Scope", "local")
        out: dict[str, Any] = {
            "CreatedAt": v.created_at, "Driver": v.driver, "Labels": v.labels or None,
            "Mountpoint": mountpoint, "Name": v.name, "Options": v.options or None,
            "Scope": scope,
        }
        if status:
            out["Status"] = status
        if usage:
            out["UsageData"] = {"Size": _du(mountpoint) if mountpoint else -1,
                                "RefCount": len(self.users(v.name))}
        return out

    def list(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        out = []
        for name, v in sorted(self.volumes.items()):
            if filters.get("name") and not namefilter.matches(filters["name"], name):
                continue
            if filters.get("driver") and v.driver not in filters["driver"]:
                continue
            if filters.get("dangling"):
                want = filters["dangling"][-1].lower()
                if want not in ("1", "true", "0", "false"):
                    raise InvalidParameter(f"invalid filter 'dangling={want}'")
                if (want in ("1", "true")) == self.in_use(name):
                    continue
            if not _labels_match(v.labels, {"label": filters.get("label", [])}):
                continue
            out.append(self.inspect(v))
        return out


def _labels_match(labels: Mapping[str, str], filters: Mapping[str, list[str]]) -> bool:
    """Docker's label filters: ``key``, ``key=value``; ``label!`` negates."""
    def has(want: str) -> bool:
        key, eq, value = want.partition("=")
        return key in labels and (not eq or labels[key] == value)

    if not all(has(w) for w in filters.get("label", [])):
        return False
    return not any(has(w) for w in filters.get("label!", []))


#: directory levels :func:`_du` descends; each holds a descriptor, and a
#: container can nest directories in its volume without end
_DU_DEPTH = 128


def _du(path: str) -> int:
    """Bytes used under ``path``, without following symlinks or crossing mounts.

    A running container may be changing the tree: it is walked through
    descriptors one name at a time (:mod:`skiff.core.fdops`), so a directory
    swapped for a symbolic link is skipped, never followed onto the host's.
    """
    try:
        top = fdops.open_dir(path)
    except OSError:
        return 0
    total = 0
    # one (descriptor, names not yet seen) per level: depth first, one
    # descriptor per level held
    stack: list[tuple[int, list[str]]] = [(top, [])]
    try:
        dev = os.fstat(top).st_dev
        stack[0] = (top, _names(top))
        while stack:
            fd, names = stack[-1]
            if not names:
                os.close(fd)
                stack.pop()
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev:
                continue
            total += st.st_blocks * 512 if st.st_blocks else st.st_size
            if stat.S_ISDIR(st.st_mode) and len(stack) < _DU_DEPTH:
                try:
                    child = fdops.open_dir_at(fd, name)
                except OSError:
                    continue
                stack.append((child, _names(child)))
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total


def _names(fd: int) -> list[str]:
    try:
        return os.listdir(fd)
    except OSError:
        return []
