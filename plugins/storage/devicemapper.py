"""The ``devicemapper`` storage driver: one thin device per layer in a thin pool.

Like Docker's direct-lvm / loop-lvm modes:

* ``dm.thinpooldev=/dev/mapper/NAME`` uses an existing thin pool (direct-lvm
  style: an LVM thin pool or one made with ``dmsetup``);
* without it, a pool is built from two sparse loop files under
  ``<home>/devicemapper/{data,metadata}`` (``dm.loopdatasize``, default
  100G, and ``dm.loopmetadatasize``, default 2G), for tests and trials.

A *base* thin device holding an empty filesystem (``dm.fs``: ``ext4`` or
``xfs``, default ext4; ``dm.basesize``, default 10G) is made once; a layer
without a parent is a snapshot of it, a child a snapshot of its parent, so
no layer pays for mkfs.  Each layer's filesystem holds the layer's whole tree
at its root, and whiteouts are applied by deleting
(``archive.extract(whiteouts="delete")``); diffs compare a layer's tree with
its parent's, like vfs and btrfs.

State: ``<home>/metadata/<id>`` (JSON: thin device id, size) and
``<home>/metadata/deviceset`` (the pool, the base device, the next id).
Thin devices are named ``skiff-<hash of home>-<device id>`` and activated
on demand: ``mounts()`` activates the layer's device and describes a mount of
it, which the container init performs in the container's namespace -- nothing
is mounted on the host for a running container.  ``get`` mounts under
``<home>/mnt/<id>``.

Per-container ``--storage-opt size=`` (at least ``dm.basesize``) grows the
container's thin device and its filesystem, as Docker does.  This driver needs
the kernel's device-mapper with the thin-pool target and the ``dmsetup``
program; the factory refuses with the reason when either is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from typing import IO, Any

from skiff.core import archive
from skiff.core.atomic import write_atomic
from skiff.core.hookspecs import (
    DriverNotSupported,
    MountSpec,
    StorageContext,
    hookimpl,
)
from skiff.plugins.storage._common import (
    MountedTreeDiffs,
    backing_fs,
    check_storage_opts,
    mounts_under,
    validate_id,
)
from skiff.plugins.storage._quota import parse_size

_KNOWN_OPTIONS = ("thinpooldev", "basesize", "fs", "loopdatasize", "loopmetadatasize",
                  "blocksize", "mkfsarg", "mountopt")
_SECTOR = 512


def _run(args: list[str], what: str, input: bytes | None = None) -> str:
    proc = subprocess.run(args, input=input, capture_output=True, check=False,
                          stdin=None if input is not None else subprocess.DEVNULL)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() or \
            proc.stdout.decode(errors="replace").strip()
        raise OSError(f"{what}: {' '.join(args[:3])} failed: {err}")
    return proc.stdout.decode(errors="replace")


def _has_thin_target() -> bool:
    try:
        out = _run(["dmsetup", "targets"], "listing device-mapper targets")
    except OSError:
        return False
    if any(line.split()[:1] == ["thin-pool"] for line in out.splitlines()):
        return True
    subprocess.run(["modprobe", "dm_thin_pool"], capture_output=True, check=False)
    try:
        out = _run(["dmsetup", "targets"], "listing device-mapper targets")
    except OSError:
        return False
    return any(line.split()[:1] == ["thin-pool"] for line in out.splitlines())


class DeviceMapperDriver(MountedTreeDiffs):
    """Layers as thin devices of a device-mapper thin pool."""

    name = "devicemapper"

    def __init__(self, ctx: StorageContext) -> None:
        opts = ctx.options
        unknown = sorted(set(opts) - set(_KNOWN_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) for the devicemapper storage driver: "
                             f"{['dm.' + u for u in unknown]}")
        self.fs = opts.get("fs", "ext4")
        if self.fs not in ("ext4", "xfs"):
            raise ValueError("dm.fs must be ext4 or xfs")
        self.base_size = parse_size(opts.get("basesize", "10G"))
        self.data_size = parse_size(opts.get("loopdatasize", "100G"))
        self.meta_size = parse_size(opts.get("loopmetadatasize", "2G"))
        self.block_sectors = parse_size(opts.get("blocksize", "64k")) // _SECTOR
        self.mkfs_args = opts["mkfsarg"].split() if opts.get("mkfsarg") else []
        self.mount_opts = [o for o in opts.get("mountopt", "").split(",") if o]
        if self.fs == "xfs":
            # every snapshot of the base shares its UUID; xfs refuses that without nouuid
            self.mount_opts.append("nouuid")
        if not os.path.exists("/dev/mapper/control"):
            raise DriverNotSupported(
                "this kernel has no device-mapper (/dev/mapper/control is missing); load "
                "dm_mod and dm_thin_pool, or choose another storage driver such as overlay2"
            )
        for tool in ("dmsetup", "mkfs." + self.fs, "losetup", "blockdev"):
            if shutil.which(tool) is None:
                raise DriverNotSupported(
                    f"the devicemapper storage driver needs {tool}, which is not on PATH"
                )
        if not _has_thin_target():
            raise DriverNotSupported(
                "the kernel's device-mapper has no thin-pool target ('modprobe "
                "dm_thin_pool'); choose another storage driver"
            )
        self.home = ctx.home
        for sub in ("metadata", "mnt", "devicemapper"):
            os.makedirs(os.path.join(self.home, sub), mode=0o700, exist_ok=True)
        self.prefix = "skiff-" + hashlib.sha256(os.path.realpath(self.home).encode()) \
            .hexdigest()[:10]
        self._lock = threading.RLock()
        self._refs: dict[str, int] = {}
        self._loops: list[str] = []
        self.state = self._load_state()
        if opts.get("thinpooldev"):
            self.pool = opts["thinpooldev"]
            if not self.pool.startswith("/dev/"):
                self.pool = "/dev/mapper/" + self.pool
            if not os.path.exists(self.pool):
                raise DriverNotSupported(f"dm.thinpooldev {self.pool} does not exist")
            self.pool_name = _run(["dmsetup", "info", "-c", "--noheadings", "-o", "name",
                                   self.pool], "reading the thin pool").strip()
            self.own_pool = False
        else:
            self.pool_name = self.prefix + "-pool"
            self.pool = "/dev/mapper/" + self.pool_name
            self.own_pool = True
            self._loop_pool()
        if self.state.get("pool") not in (None, self.pool_name):
            raise DriverNotSupported(
                f"{self.home} was made with thin pool {self.state['pool']}, not "
                f"{self.pool_name}; set dm.thinpooldev accordingly"
            )
        self.state["pool"] = self.pool_name
        self._ensure_base()

    # -- state -------------------------------------------------------------

    def _state_path(self) -> str:
        return os.path.join(self.home, "metadata", "deviceset")

    def _load_state(self) -> dict[str, Any]:
        try:
            with open(self._state_path(), encoding="utf-8") as f:
                data: dict[str, Any] = json.load(f)
                return data
        except FileNotFoundError:
            return {"next_id": 1}

    def _save_state(self) -> None:
        write_atomic(self._state_path(), json.dumps(self.state).encode(), durable=False)

    def _meta_path(self, layer_id: str) -> str:
        return os.path.join(self.home, "metadata", validate_id(layer_id, ("deviceset",)))

    def _meta(self, layer_id: str) -> dict[str, Any]:
        try:
            with open(self._meta_path(layer_id), encoding="utf-8") as f:
                data: dict[str, Any] = json.load(f)
                return data
        except FileNotFoundError:
            raise FileNotFoundError(f"devicemapper layer {layer_id} does not exist") from None

    def _new_device_id(self) -> int:
        with self._lock:
            dev = int(self.state["next_id"])
            self.state["next_id"] = dev + 1
            self._save_state()
            return dev

    # -- the pool ----------------------------------------------------------

    def _loop_for(self, path: str, size: int) -> str:
        if not os.path.exists(path):
            with open(path, "xb") as f:
                f.truncate(size)
        found = _run(["losetup", "-j", path], "finding a loop device").strip()
        if found:
            return found.split(":", 1)[0]
        dev = _run(["losetup", "--find", "--show", path], "attaching a loop device").strip()
        self._loops.append(dev)
        return dev

    def _loop_pool(self) -> None:
        if os.path.exists(self.pool):
            return
        base = os.path.join(self.home, "devicemapper")
        data = self._loop_for(os.path.join(base, "data"), self.data_size)
        meta = self._loop_for(os.path.join(base, "metadata"), self.meta_size)
        sectors = int(_run(["blockdev", "--getsz", data], "sizing the data device"))
        table = f"0 {sectors} thin-pool {meta} {data} {self.block_sectors} 32768 1 " \
            "skip_block_zeroing"
        _run(["dmsetup", "create", self.pool_name, "--table", table], "creating the thin pool")

    def _message(self, text: str) -> None:
        _run(["dmsetup", "message", self.pool, "0", text], f"thin pool message {text!r}")

    # -- thin devices --------------------------------------------------------

    def _dm_name(self, dev_id: int) -> str:
        return f"{self.prefix}-{dev_id}"

    def _activate(self, dev_id: int, size: int) -> str:
        name = self._dm_name(dev_id)
        path = "/dev/mapper/" + name
        if not os.path.exists(path):
            table = f"0 {size // _SECTOR} thin {self.pool} {dev_id}"
            _run(["dmsetup", "create", name, "--table", table], "activating a thin device")
            _run(["dmsetup", "mknodes", name], "making the device node")
        return path

    def _deactivate(self, dev_id: int) -> None:
        name = self._dm_name(dev_id)
        if os.path.exists("/dev/mapper/" + name):
            _run(["dmsetup", "remove", "--retry", name], "deactivating a thin device")

    def _snapshot(self, origin: int, dev_id: int) -> None:
        name = self._dm_name(origin)
        active = os.path.exists("/dev/mapper/" + name)
        # A snapshot of an active origin needs it suspended (its writes flushed).
        if active:
            _run(["dmsetup", "suspend", name], "suspending the origin")
        try:
            self._message(f"create_snap {dev_id} {origin}")
        finally:
            if active:
                _run(["dmsetup", "resume", name], "resuming the origin")

    def _ensure_base(self) -> None:
        if "base_id" in self.state:
            return
        dev = self._new_device_id()
        self._message(f"create_thin {dev}")
        try:
            path = self._activate(dev, self.base_size)
            mkfs = ["mkfs." + self.fs, *self.mkfs_args]
            mkfs += ["-q", "-F", "-E",
                    "nodiscard,lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0"] \
                if self.fs == "ext4" else ["-q", "-f", "-K"]
            _run([*mkfs, path], "making the base filesystem")
            with tempfile.TemporaryDirectory(dir=os.path.join(self.home, "mnt")) as point:
                _run(["mount", "-t", self.fs, *self._opt_args(), path, point],
                     "mounting the base filesystem")
                try:
                    lost = os.path.join(point, "lost+found")
                    if os.path.isdir(lost):
                        os.rmdir(lost)
                    os.chmod(point, 0o755)
                finally:
                    _run(["umount", point], "unmounting the base filesystem")
            self._deactivate(dev)
        except BaseException:
            with contextlib.suppress(OSError):
                self._deactivate(dev)
            with contextlib.suppress(OSError):
                self._message(f"delete {dev}")
            raise
        self.state["base_id"] = dev
        self.state["base_size"] = self.base_size
        self.state["fs"] = self.fs
        self._save_state()

    def _opt_args(self) -> list[str]:
        return ["-o", ",".join(self.mount_opts)] if self.mount_opts else []

    # -- layers --------------------------------------------------------------

    def _create(self, layer_id: str, parent: str | None, size: int = 0,
                rw: bool = False) -> None:
        meta_path = self._meta_path(layer_id)
        if os.path.exists(meta_path):
            raise FileExistsError(f"devicemapper layer {layer_id} already exists")
        if parent is not None:
            pmeta = self._meta(parent)
            origin, origin_size = int(pmeta["device_id"]), int(pmeta["size"])
        else:
            origin, origin_size = int(self.state["base_id"]), int(self.state["base_size"])
        if size and size < origin_size:
            raise ValueError(
                f"--storage-opt size must be at least the base size {origin_size} bytes "
                "(dm.basesize); a thin device cannot shrink"
            )
        dev = self._new_device_id()
        self._snapshot(origin, dev)
        try:
            final = max(size, origin_size)
            if final > origin_size:
                self._grow(dev, final)
            write_atomic(meta_path, json.dumps({
                "device_id": dev, "size": final, "parent": parent, "rw": rw,
            }).encode(), durable=False)
        except BaseException:
            with contextlib.suppress(OSError):
                self._deactivate(dev)
            with contextlib.suppress(OSError):
                self._message(f"delete {dev}")
            raise

    def _grow(self, dev: int, size: int) -> None:
        path = self._activate(dev, size)
        try:
            with tempfile.TemporaryDirectory(dir=os.path.join(self.home, "mnt")) as point:
                _run(["mount", "-t", self.fs, *self._opt_args(), path, point],
                     "mounting to grow")
                try:
                    if self.fs == "ext4":
                        _run(["resize2fs", path], "growing the filesystem")
                    else:
                        _run(["xfs_growfs", point], "growing the filesystem")
                finally:
                    _run(["umount", point], "unmounting after growing")
        finally:
            self._deactivate(dev)

    def _device(self, layer_id: str) -> tuple[int, str]:
        meta = self._meta(layer_id)
        dev = int(meta["device_id"])
        return dev, self._activate(dev, int(meta["size"]))

    def _mnt(self, layer_id: str) -> str:
        return os.path.join(self.home, "mnt", validate_id(layer_id))

    def _unmount(self, layer_id: str) -> None:
        point = self._mnt(layer_id)
        if os.path.ismount(point):
            _run(["umount", point], "unmounting a layer")

    # -- StorageDriver -----------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        status = [
            ("Backing Filesystem", self.fs),
            ("Pool Name", self.pool_name),
            ("Pool Blocksize", str(self.block_sectors * _SECTOR)),
            ("Base Device Size", str(self.base_size)),
            ("Data loop file", os.path.join(self.home, "devicemapper", "data")
             if self.own_pool else ""),
            ("Host Filesystem", backing_fs(self.home)),
            ("Quota Backend", "devicemapper thin device size"),
        ]
        return status

    def create(self, id: str, parent: str | None) -> None:
        self._create(id, parent)

    def create_rw(self, id: str, parent: str | None, storage_opts: Mapping[str, str]) -> None:
        check_storage_opts(self.name, storage_opts, known=("size",))
        size = parse_size(storage_opts["size"]) if storage_opts.get("size") else 0
        self._create(id, parent, size, rw=True)

    def remove(self, id: str) -> None:
        path = self._meta_path(id)
        if not os.path.exists(path):
            return
        meta = self._meta(id)
        dev = int(meta["device_id"])
        with self._lock:
            self._refs.pop(id, None)
            self._unmount(id)
            self._deactivate(dev)
            os.unlink(path)
            with contextlib.suppress(OSError):
                self._message(f"delete {dev}")
        with contextlib.suppress(OSError):
            os.rmdir(self._mnt(id))

    def exists(self, id: str) -> bool:
        return os.path.exists(self._meta_path(id))

    def metadata(self, id: str) -> dict[str, str]:
        meta = self._meta(id)
        dev = int(meta["device_id"])
        return {"DeviceId": str(dev), "DeviceName": self._dm_name(dev),
                "DeviceSize": str(meta["size"])}

    def mounts(self, id: str) -> list[MountSpec]:
        _, path = self._device(id)
        ro = [] if self._meta(id).get("rw") else ["ro"]
        return [MountSpec(self.fs, path, "/", [*self.mount_opts, *ro])]

    def get(self, id: str) -> str:
        with self._lock:
            point = self._mnt(id)
            if self._refs.get(id, 0) == 0 and not os.path.ismount(point):
                _, path = self._device(id)
                os.makedirs(point, mode=0o755, exist_ok=True)
                _run(["mount", "-t", self.fs, *self._opt_args(), path, point],
                     f"mounting devicemapper layer {id}")
            self._refs[id] = self._refs.get(id, 0) + 1
            return point

    def put(self, id: str) -> None:
        with self._lock:
            count = self._refs.get(id, 0) - 1
            if count > 0:
                self._refs[id] = count
                return
            self._refs.pop(id, None)
            self._unmount(id)

    def apply_diff(self, id: str, parent: str | None, diff: IO[bytes]) -> int:
        meta = self._meta(id)
        if meta.get("parent") != parent:
            raise ValueError(f"devicemapper layer {id} sits on {meta.get('parent')}, "
                             f"not on {parent}")
        root = self.get(id)
        try:
            return archive.extract(diff, root, whiteouts="delete")
        except BaseException as exc:
            # Back to a fresh snapshot of the parent: "empty" for this layer.
            try:
                self.put(id)
                root = ""
                self.remove(id)
                self._create(id, parent, int(meta["size"]) if meta.get("rw") else 0,
                             rw=bool(meta.get("rw")))
            except Exception as again:  # report both; the first is the cause
                exc.add_note(f"resetting devicemapper layer {id} failed too: {again}")
            raise
        finally:
            if root:
                self.put(id)

    def cleanup(self) -> None:
        with self._lock:
            self._refs.clear()
            for point in reversed(mounts_under(self.home)):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            # Thin devices still open (a running container's root) stay active.
            out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True,
                                 check=False).stdout
            for line in out.splitlines():
                name = line.split()[0] if line.split() else ""
                if name.startswith(self.prefix + "-") and name != self.pool_name:
                    subprocess.run(["dmsetup", "remove", name], capture_output=True,
                                   check=False)
            if self.own_pool:
                busy = subprocess.run(["dmsetup", "remove", self.pool_name],
                                      capture_output=True, check=False).returncode
                if busy == 0:
                    self._detach_loops()

    def _detach_loops(self) -> None:
        base = os.path.join(self.home, "devicemapper")
        for name in ("data", "metadata"):
            found = subprocess.run(["losetup", "-j", os.path.join(base, name)],
                                   capture_output=True, text=True, check=False).stdout
            for line in found.splitlines():
                subprocess.run(["losetup", "-d", line.split(":", 1)[0]],
                               capture_output=True, check=False)
        self._loops.clear()


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_storage_drivers() -> dict[str, type[DeviceMapperDriver]]:
    return {"devicemapper": DeviceMapperDriver}
