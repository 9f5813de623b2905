"""Which storage driver owns a data-root, and moving its layers to another one.

Docker refuses to start when the data-root holds layers of a driver other
than the configured one, and otherwise silently loses every image when an
operator switches drivers.  skiff keeps the same refusal but adds a way out:
``skiff storage migrate --to DRIVER`` (offline) rebuilds every image layer on
the new driver from its byte-exact tar (tar-split), so diffIDs, chainIDs and
image IDs stay the same, and re-creates the init and read-write layers of the
containers with the same driver ids.

State kept in the data-root:

``storage-driver``
    the driver the daemon last used (written atomically at each start where
    it changed, and by a finished migration).  With no ``storage-driver`` in
    daemon.json this remembered choice wins over auto-selection.
``storage-migration.json``
    present while a migration runs: ``{"from": ..., "to": ...}``.  Until the
    switch (the rewrite of ``storage-driver``) the old driver's data is
    untouched, so an interrupted migration leaves the old driver usable;
    running the same migration again discards the half-built new driver data
    and starts over, or, after the switch, finishes the cleanup.

The data-root directory itself is locked: skiffd holds a shared ``flock`` on
it for its whole life, a migration an exclusive one, so neither can run while
the other does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, cast

import structlog

from skiff.core.atomic import fsync_dir, write_atomic, write_json_atomic
from skiff.core.config import ConfigError, socket_paths, storage_options
from skiff.core.hookspecs import StorageContext, StorageDriver
from skiff.core.images.errors import LayerDigestMismatch
from skiff.core.images.layers import Layer, LayerStore, chain_ids

log = structlog.get_logger("skiff.images.migrate")

__all__ = [
    "CHOICE_FILE",
    "MARKER_FILE",
    "MigrationError",
    "MigrationReport",
    "drivers_with_layers",
    "hold_data_root",
    "migrate",
    "read_choice",
    "read_marker",
    "remember_choice",
]

CHOICE_FILE = "storage-driver"
MARKER_FILE = "storage-migration.json"

#: data-root -> fd holding the daemon's shared lock (one per data-root per process)
_HELD: dict[str, int] = {}


class MigrationError(Exception):
    """A migration that cannot start or could not finish; the message says why."""


# ---------------------------------------------------------------------------
# What the data-root holds
# ---------------------------------------------------------------------------


def _non_empty(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def drivers_with_layers(data_root: str) -> list[str]:
    """Drivers whose layer database in ``data_root`` holds layers or container layers.

    Docker looks at whether ``<data-root>/<driver>`` is non-empty; skiff looks
    at ``image/<driver>/layerdb`` instead, because a driver's home is not
    empty after a mere start (overlay2 makes ``l/``), which would make a
    data-root that never held an image refuse another driver.
    """
    root = os.path.join(data_root, "image")
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        layerdb = os.path.join(root, name, "layerdb")
        if _non_empty(os.path.join(layerdb, "sha256")) or _non_empty(
                os.path.join(layerdb, "mounts")):
            out.append(name)
    return out


def read_choice(data_root: str) -> str | None:
    """The driver the daemon last used on ``data_root`` (None: never recorded)."""
    try:
        with open(os.path.join(data_root, CHOICE_FILE), encoding="utf-8") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def remember_choice(data_root: str, name: str) -> None:
    """Record ``name`` as the data-root's driver (atomically; skipped when unchanged)."""
    if read_choice(data_root) != name:
        write_atomic(os.path.join(data_root, CHOICE_FILE), name + "\n")


def read_marker(data_root: str) -> dict[str, str] | None:
    """The running (or interrupted) migration's ``{"from", "to"}``, if any."""
    try:
        with open(os.path.join(data_root, MARKER_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"from": "?", "to": "?"}
    return data if isinstance(data, dict) else {"from": "?", "to": "?"}


def _lock(data_root: str, how: int) -> int | None:
    fd = os.open(data_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def hold_data_root(data_root: str) -> None:
    """Take the daemon's shared lock on ``data_root`` for the rest of the process.

    Raises ``ConfigError`` when a storage migration holds it.  Several
    engines in one process (tests) share one lock.
    """
    key = os.path.realpath(data_root)
    if key in _HELD:
        return
    fd = _lock(data_root, fcntl.LOCK_SH)
    if fd is None:
        raise ConfigError(
            f"a storage migration ('skiff storage migrate') is running on {data_root}; "
            "start skiffd when it has finished"
        )
    _HELD[key] = fd


# ---------------------------------------------------------------------------
# Migration
# ---------------------------------------------------------------------------


@dataclass
class MigrationReport:
    """What a migration did."""

    source: str
    target: str
    layers: int = 0
    containers: int = 0
    images: int = 0
    kept_old: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


Say = Callable[[str], None]
#: builds a storage driver by name: (name, StorageContext) -> driver
DriverFactory = Callable[[str, StorageContext], StorageDriver]


def _daemon_running(config: Mapping[str, Any]) -> str | None:
    """Why we believe a skiffd runs on this configuration, or None."""
    pidfile = config.get("pidfile")
    if pidfile and os.path.exists(pidfile):
        try:
            fd = os.open(pidfile, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return f"its pid file {pidfile} is held" + (f" by pid {pid}" if pid else "")
            finally:
                os.close(fd)
    for path in socket_paths(config):
        if not os.path.exists(path):
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect(path)
        except OSError:
            continue
        finally:
            s.close()
        return f"its socket {path} answers"
    return None


def _containers(data_root: str) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """container id -> (record path, config.v2.json, hostconfig.json)."""
    out: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    root = os.path.join(data_root, "containers")
    if not os.path.isdir(root):
        return out
    for cid in sorted(os.listdir(root)):
        path = os.path.join(root, cid, "config.v2.json")
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
            with open(os.path.join(root, cid, "hostconfig.json"), encoding="utf-8") as f:
                hc = json.load(f)
        except (OSError, ValueError):
            continue
        out[cid] = (path, rec, hc)
    return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parents_first(layers: Iterable[Layer]) -> list[Layer]:
    by_id = {layer.chain_id: layer for layer in layers}
    depth: dict[str, int] = {}

    def level(cid: str) -> int:
        seen = []
        cur: str | None = cid
        while cur is not None and cur not in depth and cur in by_id:
            seen.append(cur)
            cur = by_id[cur].parent
        base = depth.get(cur, -1) if cur is not None else -1
        for c in reversed(seen):
            base += 1
            depth[c] = base
        return depth[cid]

    return sorted(by_id.values(), key=lambda layer: (level(layer.chain_id), layer.chain_id))


def _remove_driver_data(data_root: str, name: str, store: LayerStore | None) -> None:
    """Free every layer ``store`` knows through its driver, then delete the
    driver's home and its image metadata."""
    if store is not None:
        for rw in store.rw_layers():
            for ident in (rw.mount_id, rw.init_id):
                with contextlib.suppress(Exception):
                    store.driver.remove(ident)
        for layer in reversed(_parents_first(store.layers())):
            with contextlib.suppress(Exception):
                store.driver.remove(layer.cache_id)
        with contextlib.suppress(Exception):
            store.driver.cleanup()
    for path in (os.path.join(data_root, "image", name), os.path.join(data_root, name)):
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(os.path.join(data_root, "image"))


def migrate(
    config: Mapping[str, Any],
    build_driver: DriverFactory,
    target: str,
    *,
    keep_old: bool = False,
    say: Say = lambda _msg: None,
) -> MigrationReport:
    """Move every layer of ``config["data-root"]`` to storage driver ``target``.

    ``build_driver(name, ctx)`` makes a driver (the CLI passes the plugin
    manager's factory); it raises ``DriverNotSupported`` when the driver
    cannot work here.  Refuses (``MigrationError``) while a skiffd runs on the
    data-root, when the data-root's driver is ambiguous, when a container is
    still running, or when the target already holds layers of its own.
    """
    data_root = config["data-root"]
    if not os.path.isdir(data_root):
        raise MigrationError(f"the data-root {data_root} does not exist")
    why = _daemon_running(config)
    if why is not None:
        raise MigrationError(
            f"skiffd is running ({why}); stop it before migrating its storage driver"
        )
    fd = _lock(data_root, fcntl.LOCK_EX)
    if fd is None:
        raise MigrationError(
            f"skiffd (or another migration) is using {data_root}; stop it before "
            "migrating its storage driver"
        )
    try:
        return _migrate_locked(config, build_driver, target, keep_old, say)
    finally:
        os.close(fd)


def _ctx(config: Mapping[str, Any], name: str) -> StorageContext:
    data_root = config["data-root"]
    return StorageContext(home=os.path.join(data_root, name), data_root=data_root,
                          options=storage_options(config, name))


def _source_driver(config: Mapping[str, Any], target: str) -> str:
    data_root = config["data-root"]
    found = drivers_with_layers(data_root)
    marker = read_marker(data_root)
    remembered = read_choice(data_root)
    if marker is not None and marker.get("to") == target and marker.get("from") in found:
        return marker["from"]
    if marker is None and remembered == target and target in found:
        raise MigrationError(f"the data-root {data_root} already uses {target}")
    candidates = [d for d in found if d != target] if target in found else found
    if len(candidates) == 1 and target not in found:
        return candidates[0]
    for preferred in (config.get("storage-driver"), remembered):
        if preferred and preferred in found and preferred != target:
            return str(preferred)
    if not found:
        raise MigrationError(f"the data-root {data_root} holds no layers: nothing to migrate")
    if found == [target]:
        raise MigrationError(f"the data-root {data_root} already uses {target}")
    raise MigrationError(
        f"the data-root {data_root} holds layers of several storage drivers "
        f"({', '.join(found)}); set storage-driver in the configuration to the one to "
        "migrate from"
    )


def _migrate_locked(
    config: Mapping[str, Any], build_driver: DriverFactory, target: str, keep_old: bool,
    say: Say,
) -> MigrationReport:
    started = time.monotonic()
    data_root = config["data-root"]
    marker = read_marker(data_root)
    if (marker is not None and marker.get("to") == target and read_choice(data_root) == target
            and marker.get("from") not in drivers_with_layers(data_root)):
        # a crash after the old data was removed: only the marker is left
        os.unlink(os.path.join(data_root, MARKER_FILE))
        say(f"the migration to {target} had finished; removed its marker")
        return MigrationReport(source=str(marker.get("from")), target=target)
    source = _source_driver(config, target)
    mounts_dir = os.path.join(data_root, "image", source, "layerdb", "mounts")
    on_copies = sorted(cid for cid in (os.listdir(mounts_dir) if os.path.isdir(mounts_dir)
                                       else [])
                       if os.path.exists(os.path.join(mounts_dir, cid, "mapped")))
    if on_copies:
        # they sit on chowned copies of the layers (user namespaces without
        # idmapped mounts), which are not moved: the new driver remakes them
        # for new containers
        raise MigrationError(
            f"containers {', '.join(c[:12] for c in on_copies)} of {data_root} sit on "
            "chowned layer copies of user-namespace remapping; remove them first"
        )
    report = MigrationReport(source=source, target=target, kept_old=keep_old)
    resuming = marker is not None and marker.get("from") == source and marker.get("to") == target
    if marker is not None and not resuming:
        raise MigrationError(
            f"an interrupted migration from {marker.get('from')} to {marker.get('to')} is "
            f"recorded in {os.path.join(data_root, MARKER_FILE)}; run "
            f"'skiff storage migrate --to {marker.get('to')}' to finish it first"
        )
    switched = resuming and read_choice(data_root) == target
    if not resuming and target in drivers_with_layers(data_root):
        raise MigrationError(
            f"the data-root {data_root} already holds layers of {target} (left by "
            f"'migrate --keep-old'?); remove {os.path.join(data_root, 'image', target)} and "
            f"{os.path.join(data_root, target)} first"
        )
    containers = _containers(data_root)
    running = [cid[:12] for cid, (_, rec, _) in containers.items()
               if rec.get("State", {}).get("Running") and _pid_alive(
                   int(rec.get("State", {}).get("Pid") or 0))]
    if running:
        raise MigrationError(
            f"containers are still running ({', '.join(running)}); stop them first"
        )

    say(f"migrating {data_root} from {source} to {target}")
    old_driver = build_driver(source, _ctx(config, source))
    old = LayerStore(data_root, source, old_driver)
    try:
        if not switched:
            # Anything but the old driver is recorded as its owner from here on:
            # the daemon keeps using it until the switch.
            remember_choice(data_root, source)
            write_json_atomic(os.path.join(data_root, MARKER_FILE),
                              {"from": source, "to": target})
            if resuming:
                say(f"discarding the {target} data of the interrupted migration")
                with contextlib.suppress(Exception):
                    leftover = LayerStore(data_root, target,
                                          build_driver(target, _ctx(config, target)))
                    _remove_driver_data(data_root, target, leftover)
                _remove_driver_data(data_root, target, None)
            new_driver = build_driver(target, _ctx(config, target))
            new = LayerStore(data_root, target, new_driver)
            try:
                _copy_layers(old, new, report, say)
                _copy_rw_layers(old, new, containers, report, say)
                _copy_image_metadata(data_root, source, target, report)
                _check_images(data_root, target, new)
            except BaseException:
                # Nothing was switched: drop the half-built copy, the old driver
                # is as it was.  (A crash skips this; the next run redoes it.)
                with contextlib.suppress(Exception):
                    _remove_driver_data(data_root, target, new)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(data_root, MARKER_FILE))
                raise
            # The switch: from here on the daemon uses the new driver.
            remember_choice(data_root, target)
            say(f"switched {data_root} to {target}")
        else:
            new_driver = build_driver(target, _ctx(config, target))
            new = LayerStore(data_root, target, new_driver)
        _update_records(containers, target, new, report)
        new_driver.cleanup()
        if keep_old:
            old_driver.cleanup()
            report.notes.append(
                f"the {source} data is kept in {os.path.join(data_root, source)} and "
                f"{os.path.join(data_root, 'image', source)}; delete it when you no longer need it"
            )
        else:
            say(f"removing the {source} data")
            _remove_driver_data(data_root, source, old)
        os.unlink(os.path.join(data_root, MARKER_FILE))
        fsync_dir(data_root)
    except BaseException:
        with contextlib.suppress(Exception):
            old_driver.cleanup()
        raise
    report.seconds = time.monotonic() - started
    log.info("storage.migrated", source=source, target=target, layers=report.layers,
             containers=report.containers, images=report.images, seconds=report.seconds)
    return report


def _copy_layers(old: LayerStore, new: LayerStore, report: MigrationReport, say: Say) -> None:
    """Register each image layer on the new driver from its original tar bytes."""
    for layer in _parents_first(old.layers()):
        stream = old.tar_stream(layer.chain_id)
        try:
            try:
                # a ChunkReader is a binary file in all but typeshed's name for it
                got = new.register(cast(IO[bytes], stream), layer.parent,
                                   expected_diff_id=layer.diff_id)
            except LayerDigestMismatch as exc:
                raise MigrationError(
                    f"layer {layer.chain_id} cannot be rebuilt byte for byte on {new.driver_name} "
                    f"({exc}); it has no tar-split record or its files changed"
                ) from exc
        finally:
            stream.close()
        if got.chain_id != layer.chain_id:  # cannot happen with the same parent and diffID
            raise MigrationError(f"layer {layer.chain_id} came out as {got.chain_id}")
        report.layers += 1
        say(f"layer {layer.chain_id[7:19]} ({layer.size} bytes) done")


def _copy_rw_layers(
    old: LayerStore, new: LayerStore,
    containers: Mapping[str, tuple[str, dict[str, Any], dict[str, Any]]],
    report: MigrationReport, say: Say,
) -> None:
    """Re-create each container's init and read-write layers, same ids, same content."""
    for rw in old.rw_layers():
        parent_old = old.cache_id(rw.parent) if rw.parent else None
        parent_new = new.cache_id(rw.parent) if rw.parent else None
        opts: dict[str, str] = {}
        if rw.container_id in containers:
            opts = dict(containers[rw.container_id][2].get("StorageOpt") or {})
        for ident in (rw.mount_id, rw.init_id):
            if new.driver.exists(ident):  # debris of an earlier attempt
                new.driver.remove(ident)
        new.driver.create(rw.init_id, parent_new)
        _transfer(old.driver, new.driver, rw.init_id, parent_old, parent_new)
        try:
            new.driver.create_rw(rw.mount_id, rw.init_id, opts)
        except ValueError as exc:
            raise MigrationError(
                f"container {rw.container_id[:12]}: {new.driver_name} refuses its storage "
                f"options {opts}: {exc}"
            ) from exc
        _transfer(old.driver, new.driver, rw.mount_id, rw.init_id, rw.init_id)
        dest = os.path.join(new.root, "mounts", rw.container_id)
        tmp = os.path.join(new.root, "tmp", f"migrate-{rw.container_id}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o700)
        for name, value in (("init-id", rw.init_id), ("mount-id", rw.mount_id),
                            ("parent", rw.parent)):
            if value is not None:
                write_atomic(os.path.join(tmp, name), value, 0o600, durable=False)
        fsync_dir(tmp)
        os.rename(tmp, dest)
        fsync_dir(os.path.dirname(dest))
        report.containers += 1
        say(f"container {rw.container_id[:12]} done")


def _transfer(src: StorageDriver, dst: StorageDriver, ident: str,
              parent_src: str | None, parent_dst: str | None) -> None:
    stream = src.diff(ident, parent_src)
    try:
        dst.apply_diff(ident, parent_dst, stream)
    finally:
        stream.close()


def _copy_image_metadata(data_root: str, source: str, target: str,
                         report: MigrationReport) -> None:
    """imagedb, repositories.json, distribution metadata: driver-independent."""
    src_root = os.path.join(data_root, "image", source)
    dst_root = os.path.join(data_root, "image", target)
    for name in sorted(os.listdir(src_root)):
        if name == "layerdb":
            continue
        src = os.path.join(src_root, name)
        dst = os.path.join(dst_root, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("tmp"))
        else:
            shutil.copy2(src, dst)
    content = os.path.join(dst_root, "imagedb", "content", "sha256")
    report.images = len(os.listdir(content)) if os.path.isdir(content) else 0
    os.sync()  # the copies must be on disk before the switch names them


def _check_images(data_root: str, target: str, new: LayerStore) -> None:
    """Every image's layer stack must exist on the new driver before the switch."""
    content = os.path.join(data_root, "image", target, "imagedb", "content", "sha256")
    if not os.path.isdir(content):
        return
    for hexid in os.listdir(content):
        with open(os.path.join(content, hexid), "rb") as f:
            try:
                cfg = json.loads(f.read())
            except ValueError:
                continue
        diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") or []
        if diff_ids and not new.exists(chain_ids(diff_ids)[-1]):
            raise MigrationError(
                f"image sha256:{hexid[:12]} lost its layers on the way to {target}")


def _update_records(
    containers: Mapping[str, tuple[str, dict[str, Any], dict[str, Any]]], target: str,
    new: LayerStore, report: MigrationReport,
) -> None:
    """Point container records (Driver, GraphDriver data) at the new driver."""
    for path, rec, _ in containers.values():
        mount_id = rec.get("MountID") or ""
        rec["Driver"] = target
        if mount_id and new.driver.exists(mount_id):
            rec["GraphData"] = new.driver.metadata(mount_id)
        write_atomic(path, json.dumps(rec, separators=(",", ":")))
