"""A container's mounts: from HostConfig to mount points to ``MountSpec`` records.

Three steps, as Docker's ``registerMountPoints`` / ``setupMounts``:

``plan(cfg, hc)`` (at create, pure): parse ``Binds``, ``Mounts``, ``Tmpfs``
and the image's ``Config.Volumes`` into mount points; a bad spec is an
``InvalidConfig`` (400) before anything exists.

``realize(store, lookup, storage, c, points)`` (at create, blocking): add ``VolumesFrom``,
create the named volumes asked for and the anonymous ones, fill in each
volume's host path, copy the image's content into a new, empty volume
(unless ``nocopy``; :mod:`skiff.core.containers.copyup`, on descriptors).  The
result is kept in the container record (``Container.mount_points``) and is
what inspect shows as ``Mounts``.

``specs(store, c)`` (at every start, blocking): mount the volumes through
their drivers and describe every mount point as a ``MountSpec`` for the
container init, parents before children.  ``release(store, c)`` unmounts the
volumes when the container stops.

``store`` is the daemon's volume store (:mod:`skiff.core.volumes.store`): it
creates, counts and removes the volumes, gives their drivers, and keeps which
volumes each running container has mounted.

A mount point is a dict with Docker's ``MountPoint`` keys (Type, Name, Source,
Destination, Driver, Mode, RW, Propagation) and a few private ones, all
starting with ``_``: ``_named`` (the volume was named by the user, so
``rm -v`` keeps it), ``_copy`` (copy-up wanted), ``_create`` (a ``-v`` bind
whose missing source is created), ``_options`` (tmpfs options), ``_hidden``
(``HostConfig.Tmpfs``, which Docker does not list in ``Mounts``), ``_labels``
and ``_driver_opts`` (for the volume's creation).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from skiff.core.containers import copyup
from skiff.core.containers.config import InvalidConfig
from skiff.core.errors import InvalidParameter, NotFound
from skiff.core.hookspecs import MountSpec
from skiff.core.mountpolicy import PROC_BIND_ALLOWED, SYSTEM_DESTINATIONS

if TYPE_CHECKING:
    from skiff.core.containers.model import Container
    from skiff.core.hookspecs import StorageDriver
    from skiff.core.volumes.store import VolumeStore

log = structlog.get_logger("skiff.mounts")

PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
RW_MODES = ("ro", "rw")
LABEL_MODES = ("z", "Z")
COPY_MODES = ("nocopy",)
#: tmpfs options taken as they are; any other ``key=value`` must have one of these keys
TMPFS_FLAGS = ("ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync",
               "async", "dirsync", "noatime", "atime", "nodiratime", "diratime", "relatime",
               "norelatime", "strictatime", *PROPAGATIONS)
TMPFS_KEYS = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol", "huge")
#: Go's os.ModeSetuid, ModeSetgid, ModeSticky in TmpfsOptions.Mode
_GO_SETUID, _GO_SETGID, _GO_STICKY = 1 << 23, 1 << 22, 1 << 20


# -- parsing (create, pure) -------------------------------------------------------


def _check_destination(dest: str, kind: str, spec: str) -> str:
    if not dest:
        raise InvalidConfig(
            f'invalid mount config for type "{kind}": field Target must not be empty')
    if not dest.startswith("/"):
        raise InvalidConfig(
            f"invalid volume specification: '{spec}': invalid mount config for type "
            f"\"{kind}\": invalid mount path: '{dest}' mount path must be absolute")
    clean = os.path.normpath(dest)
    if clean.startswith("//"):
        clean = clean[1:]
    if clean == "/":
        raise InvalidConfig(
            f"invalid volume specification: '{spec}': invalid mount config for type "
            f"\"{kind}\": invalid specification: destination can't be '/'")
    if clean in SYSTEM_DESTINATIONS:
        # An image's VOLUME /dev with a planted dev/null -> core_pattern link
        # is how masks get redirected onto the host (CVE-2025-31133 class).
        raise InvalidConfig(
            f"invalid mount config for type \"{kind}\": cannot mount onto {clean}: the "
            f"container's {clean} is made by skiff and must not be replaced (use --device "
            "for a device, --privileged for every host device)")
    if clean.startswith("/proc/") and clean not in PROC_BIND_ALLOWED:
        raise InvalidConfig(
            f"invalid mount config for type \"{kind}\": cannot mount onto {clean}: mounts "
            "into /proc are not allowed, except over " + ", ".join(sorted(PROC_BIND_ALLOWED)))
    return clean


def parse_mode(mode: str, spec: str, kind: str) -> tuple[bool, str, bool]:
    """``ro,Z,rslave`` -> (rw, propagation or "", copy); Docker's validity rules."""
    words = [w for w in mode.split(",") if w] if mode else []
    counts = {"rw": 0, "label": 0, "prop": 0, "copy": 0}
    rw, propagation, copy = True, "", True
    for w in words:
        if w in RW_MODES:
            counts["rw"] += 1
            rw = w == "rw"
        elif w in LABEL_MODES:
            counts["label"] += 1
        elif w in PROPAGATIONS:
            counts["prop"] += 1
            propagation = w
        elif w in COPY_MODES:
            counts["copy"] += 1
            copy = False
        else:
            raise InvalidConfig(f"invalid mode: {w}")
    if any(n > 1 for n in counts.values()):
        raise InvalidConfig(f"invalid mode: {mode}")
    if counts["copy"] and kind == "bind":
        raise InvalidConfig(f"invalid volume specification: '{spec}': invalid mode: {mode}"
                            " (nocopy is for volumes, not bind mounts)")
    if counts["prop"] and kind == "volume":
        raise InvalidConfig(f"invalid volume specification: '{spec}': invalid mode: {mode}"
                            " (propagation is for bind mounts, not volumes)")
    return rw, propagation, copy


def parse_bind(spec: str) -> dict[str, Any]:
    """One ``Binds`` entry: ``/host:/ctr[:mode]`` or ``name:/ctr[:mode]``."""
    if not isinstance(spec, str):
        raise InvalidConfig(f"invalid volume specification: {spec!r}: expected a string")
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidConfig(f"invalid volume specification: '{spec}'")
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else ""
    kind = "bind" if src.startswith("/") else "volume"
    dest = _check_destination(dst, kind, spec)
    rw, propagation, copy = parse_mode(mode, spec, kind)
    if kind == "bind":
        return {"Type": "bind", "Source": os.path.normpath(src), "Destination": dest,
                "Mode": mode, "RW": rw, "Propagation": propagation or "rprivate",
                "_create": True}
    return {"Type": "volume", "Name": src, "Source": "", "Destination": dest,
            "Driver": "", "Mode": mode or "z", "RW": rw, "Propagation": "",
            "_named": True, "_copy": copy}


def parse_mount(m: Mapping[str, Any]) -> dict[str, Any]:
    """One ``HostConfig.Mounts`` entry (``--mount``)."""
    if not isinstance(m, Mapping):
        raise InvalidConfig(f"invalid mount config: expected an object, got {m!r}")
    kind = m.get("Type") or ""
    src = m.get("Source") or ""
    target = m.get("Target") or ""
    where = f'invalid mount config for type "{kind}"'
    if kind not in ("bind", "volume", "tmpfs"):
        raise InvalidConfig(f"{where}: mount type unknown")
    dest = _check_destination(target, kind, target)
    rw = not m.get("ReadOnly")
    for key, allowed in (("BindOptions", "bind"), ("VolumeOptions", "volume"),
                         ("TmpfsOptions", "tmpfs")):
        if m.get(key) and kind != allowed:
            raise InvalidConfig(f"{where}: {key} must not be specified")
    if kind == "bind":
        if not src:
            raise InvalidConfig(f"{where}: field Source must not be empty")
        if not src.startswith("/"):
            raise InvalidConfig(f"{where}: invalid mount path: '{src}' mount path must be "
                                "absolute")
        if not os.path.exists(src):
            raise InvalidConfig(f"{where}: bind source path does not exist: {src}")
        propagation = (m.get("BindOptions") or {}).get("Propagation") or "rprivate"
        if propagation not in PROPAGATIONS:
            raise InvalidConfig(f"{where}: invalid propagation mode: {propagation}")
        return {"Type": "bind", "Source": os.path.normpath(src), "Destination": dest,
                "Mode": "", "RW": rw, "Propagation": propagation, "_create": False,
                "_nonrecursive": bool((m.get("BindOptions") or {}).get("NonRecursive"))}
    if kind == "volume":
        vo = m.get("VolumeOptions") or {}
        driver_cfg = vo.get("DriverConfig") or {}
        return {"Type": "volume", "Name": src, "Source": "", "Destination": dest,
                "Driver": driver_cfg.get("Name") or "", "Mode": "z" if src else "",
                "RW": rw, "Propagation": "", "_named": bool(src),
                "_copy": not vo.get("NoCopy"), "_labels": dict(vo.get("Labels") or {}),
                "_driver_opts": dict(driver_cfg.get("Options") or {})}
    if src:
        raise InvalidConfig(f"{where}: field Source must not be specified")
    opts = []
    to = m.get("TmpfsOptions") or {}
    size = to.get("SizeBytes")
    if size:
        if not isinstance(size, int) or size < 0:
            raise InvalidConfig(f"{where}: invalid size: {size!r}")
        opts.append(f"size={size}")
    mode = to.get("Mode")
    if mode:
        perm = int(mode) & 0o7777
        perm |= 0o1000 if int(mode) & _GO_STICKY else 0
        perm |= 0o2000 if int(mode) & _GO_SETGID else 0
        perm |= 0o4000 if int(mode) & _GO_SETUID else 0
        opts.append(f"mode={perm:o}")
    return {"Type": "tmpfs", "Source": "", "Destination": dest, "Mode": "", "RW": rw,
            "Propagation": "", "_options": opts}


def parse_tmpfs(dest: str, options: str) -> dict[str, Any]:
    """One ``HostConfig.Tmpfs`` entry: ``/run`` -> ``size=64m,mode=1777``."""
    clean = _check_destination(dest, "tmpfs", f"{dest}:{options}")
    opts = [o for o in (options or "").split(",") if o]
    for o in opts:
        key, eq, _ = o.partition("=")
        if not (o in TMPFS_FLAGS or (eq and key in TMPFS_KEYS)):
            raise InvalidConfig(f"invalid tmpfs option {o!r} for {dest}")
    return {"Type": "tmpfs", "Source": "", "Destination": clean, "Mode": options or "",
            "RW": "ro" not in opts, "Propagation": "", "_options": opts, "_hidden": True}


def plan(cfg: Mapping[str, Any], hc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Mount points of a create request, without VolumesFrom (see ``realize``)."""
    by_dest: dict[str, dict[str, Any]] = {}
    binds = hc.get("Binds") or []
    if not isinstance(binds, list):
        raise InvalidConfig("HostConfig.Binds must be a list of strings")
    for spec in binds:
        mp = parse_bind(spec)
        if mp["Destination"] in by_dest:
            raise InvalidConfig(f"Duplicate mount point: {mp['Destination']}")
        by_dest[mp["Destination"]] = mp
    explicit = set(by_dest)
    for dest in (cfg.get("Volumes") or {}):
        if not isinstance(dest, str):
            raise InvalidConfig(f"invalid volume: {dest!r}")
        clean = _check_destination(dest, "volume", dest)
        by_dest.setdefault(clean, {
            "Type": "volume", "Name": "", "Source": "", "Destination": clean, "Driver": "",
            "Mode": "", "RW": True, "Propagation": "", "_named": False, "_copy": True})
    mounts = hc.get("Mounts") or []
    if not isinstance(mounts, list):
        raise InvalidConfig("HostConfig.Mounts must be a list")
    for m in mounts:
        mp = parse_mount(m)
        if mp["Destination"] in explicit:
            raise InvalidConfig(f"Duplicate mount point: {mp['Destination']}")
        explicit.add(mp["Destination"])
        by_dest[mp["Destination"]] = mp
    tmpfs = hc.get("Tmpfs") or {}
    if not isinstance(tmpfs, Mapping):
        raise InvalidConfig("HostConfig.Tmpfs must be a map of path to options")
    for dest, options in tmpfs.items():
        mp = parse_tmpfs(dest, options)
        by_dest[mp["Destination"]] = mp  # Docker: a tmpfs wins over any other mount
    for ref in hc.get("VolumesFrom") or []:
        _, _, mode = str(ref).partition(":")
        if mode and any(w not in RW_MODES + LABEL_MODES for w in mode.split(",")):
            raise InvalidConfig(f"invalid mode: {mode}")
    return list(by_dest.values())


# -- realizing (create, blocking) ---------------------------------------------------


def realize(store: VolumeStore, lookup: Callable[[str], Container], storage: StorageDriver,
            c: Container, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Final mount points of ``c``: VolumesFrom merged, volumes created, copy-up done.

    ``lookup`` finds the containers of ``VolumesFrom``; ``storage`` mounts
    ``c``'s layers for the copy-up.  Volumes created here are removed again
    if anything fails, so a refused create leaves no anonymous volume behind.
    """
    by_dest: dict[str, dict[str, Any]] = {}
    for ref in c.host_config.get("VolumesFrom") or []:
        name, _, mode = str(ref).partition(":")
        try:
            other = lookup(name)
        except NotFound as exc:
            # 400, not 404: the CLI takes a 404 at create for a missing image and pulls
            raise InvalidParameter(f"{exc.message} (--volumes-from {ref})") from None
        for mp in getattr(other, "mount_points", None) or []:
            if mp.get("_hidden"):
                continue
            copied = dict(mp)
            if "ro" in mode.split(","):
                copied["RW"] = False
            elif "rw" in mode.split(","):
                copied["RW"] = True
            if mode:
                copied["Mode"] = mode
            by_dest[copied["Destination"]] = copied
    for mp in points:
        by_dest[mp["Destination"]] = dict(mp)
    created: list[str] = []
    held: list[str] = []
    default_driver = c.host_config.get("VolumeDriver") or ""
    idmap = c.idmap
    owner = (idmap.root_uid, idmap.root_gid) if idmap is not None else None
    try:
        for mp in by_dest.values():
            if mp["Type"] != "volume":
                continue
            try:
                v, new = store.create(mp.get("Name") or None,
                                      mp.get("Driver") or default_driver or None,
                                      mp.pop("_driver_opts", None) or None,
                                      mp.pop("_labels", None) or None, owner)
            except NotFound as exc:  # an unknown driver; 400 for the reason above
                raise InvalidParameter(exc.message) from None
            if new:
                created.append(v.name)
            if not store.hold(v.name):  # removed meanwhile (found by the chaos test: a 500)
                raise NotFound(f"get {v.name}: no such volume")
            held.append(v.name)
            mp["Name"], mp["Driver"] = v.name, v.driver
            mp["Source"] = store.driver(v.driver).path(v.name)
        copies = [mp for mp in by_dest.values() if mp["Type"] == "volume" and mp.get("_copy")]
        if copies and c.mount_id:
            copyup.copy_up(storage, store.driver, c, copies)
    except BaseException:
        for name in held:
            store.release_hold(name)
        for name in created:
            with contextlib.suppress(Exception):
                store.remove(name, force=True)
        raise
    for mp in by_dest.values():
        mp.pop("_copy", None)  # copy-up happens once, at create, as in Docker
    result = sorted(by_dest.values(), key=lambda mp: _depth(mp["Destination"]))
    c.mount_points = result  # the record counts as a user before the holds go
    for name in held:
        store.release_hold(name)
    return result


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


# -- starting and stopping (blocking) -----------------------------------------------


def points_of(c: Container) -> list[dict[str, Any]]:
    """``c``'s mount points; a record from before they were kept has only its binds."""
    points = getattr(c, "mount_points", None) or []
    if not points and c.host_config.get("Binds"):
        points = [mp for mp in plan({}, {"Binds": c.host_config["Binds"]})
                  if mp["Type"] == "bind"]
    return points


def specs(store: VolumeStore, c: Container) -> list[MountSpec]:
    """MountSpecs of ``c``'s mount points, volumes mounted through their drivers."""
    out: list[MountSpec] = []
    mounted: list[tuple[str, str]] = []
    points = getattr(c, "mount_points", None) or []
    if not points and c.host_config.get("Binds"):
        # a record from before mount points were kept: its binds are host paths
        points = [mp for mp in plan({}, {"Binds": c.host_config["Binds"]})
                  if mp["Type"] == "bind"]
    try:
        for mp in points:
            kind = mp["Type"]
            rw = "rw" if mp.get("RW", True) else "ro"
            if kind == "tmpfs":
                opts = ["nosuid", "nodev", "noexec", *(mp.get("_options") or [])]
                if rw == "ro":
                    opts.append("ro")
                out.append(MountSpec("tmpfs", "tmpfs", mp["Destination"], opts))
                continue
            if kind == "volume":
                drv = store.driver(mp["Driver"])
                try:
                    source = drv.mount(mp["Name"], c.id)
                except KeyError:
                    raise InvalidParameter(
                        f"volume {mp['Name']} of mount {mp['Destination']} no longer exists"
                    ) from None
                mounted.append((mp["Driver"], mp["Name"]))
                store.event("mount", mp["Name"], {
                    "container": c.id, "destination": mp["Destination"],
                    "driver": mp["Driver"], "propagation": mp.get("Propagation") or "",
                    "read/write": str(rw == "rw").lower()})
                out.append(MountSpec("bind", source, mp["Destination"], ["rbind", rw]))
                continue
            source = mp["Source"]
            if mp.get("_create") and not os.path.lexists(source):
                # -v creates a missing host directory, as Docker does (--mount refuses)
                os.makedirs(source, 0o755, exist_ok=True)
            elif not os.path.exists(source):
                raise InvalidParameter(
                    f'invalid mount config for type "bind": bind source path does not '
                    f"exist: {source}")
            opts = ["bind" if mp.get("_nonrecursive") else "rbind", rw]
            if mp.get("Propagation"):
                opts.append(mp["Propagation"])
            out.append(MountSpec("bind", source, mp["Destination"], opts))
    except BaseException:
        for driver, name in mounted:
            with contextlib.suppress(Exception):
                store.driver(driver).unmount(name, c.id)
        raise
    store.mounted[c.id] = mounted
    return out


def release(store: VolumeStore, c: Container) -> None:
    """Unmount the volumes ``specs`` mounted for ``c``; never raises."""
    for driver, name in store.mounted.pop(c.id, []):
        try:
            store.driver(driver).unmount(name, c.id)
        except Exception as exc:
            log.warning("volume.unmount_failed", name=name, container=c.id, error=str(exc))
            continue
        store.event("unmount", name, {"container": c.id, "driver": driver})


def on_remove(store: VolumeStore, c: Container, volumes: bool) -> None:
    """The container is gone: unmount what is left; with ``volumes``, ``remove_anonymous``."""
    release(store, c)
    if volumes:
        remove_anonymous(store, c)


def remove_anonymous(store: VolumeStore, c: Container) -> None:
    """``docker rm -v``: remove the volumes of ``c`` that were not named by the user.

    A volume another container still uses stays (Docker ignores that error too).
    """
    from skiff.core.errors import Conflict, NotFound

    for mp in getattr(c, "mount_points", None) or []:
        if mp.get("Type") != "volume" or mp.get("_named"):
            continue
        try:
            store.remove(mp["Name"])
        except (Conflict, NotFound):
            continue
        except Exception as exc:
            log.warning("volume.remove_failed", name=mp["Name"], container=c.id,
                        error=str(exc))


def api(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Docker's ``Mounts`` of inspect and ``ps`` from the stored mount points."""
    out = []
    for mp in points:
        if mp.get("_hidden"):
            continue
        item = {"Type": mp["Type"]}
        if mp["Type"] == "volume":
            item["Name"] = mp.get("Name", "")
        item.update(Source=mp.get("Source", ""), Destination=mp["Destination"])
        if mp["Type"] == "volume":
            item["Driver"] = mp.get("Driver", "")
        item.update(Mode=mp.get("Mode", ""), RW=bool(mp.get("RW", True)),
                    Propagation=mp.get("Propagation", ""))
        out.append(item)
    return out
