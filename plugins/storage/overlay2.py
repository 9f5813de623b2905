"""The ``overlay2`` storage driver: layers stacked by the kernel's overlayfs.

Docker's on-disk layout, so an operator who knows one knows the other::

    <home>/<id>/diff/      the layer's own files (overlay whiteouts included)
    <home>/<id>/link       its 26-character short name
    <home>/<id>/lower      "l/<short>:l/<short>..." of the parent chain, nearest first
    <home>/<id>/work/      overlayfs's work directory (layers with a parent)
    <home>/<id>/merged/    where ``get`` mounts the union on the host
    <home>/<id>/committed  present for read-only (image) layers
    <home>/l/<short>       symlink to ../<id>/diff

Mount data is limited to one page; the short ``l/`` names, used relative to
``<home>``, keep 128 layers within it.  ``mounts`` describes the mount with
those relative paths and ``cwd=<home>``; the container init changes into
``cwd`` in its own mount namespace before mounting.  ``get`` does the same on
the host from a short-lived thread with a private working directory
(``unshare(CLONE_FS)``), so the daemon's other threads keep theirs.

Options the kernel knows are pinned off: ``index`` (it would tie an upper
directory to one set of lowers), ``redirect_dir`` and ``metacopy`` (both
leave upper entries whose meaning lives in xattrs, which would make the
native diff -- a tar of the upper directory -- wrong).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import IO, Literal

from skiff.core import archive, syscalls
from skiff.core.atomic import write_atomic
from skiff.core.hookspecs import (
    Change,
    DriverNotSupported,
    MountSpec,
    StorageContext,
    hookimpl,
)
from skiff.plugins.storage._common import (
    backing_fs,
    check_storage_opts,
    mounts_under,
    supports_d_type,
    validate_id,
)
from skiff.plugins.storage._quota import LoopQuota, ProjectQuota, parse_size

LINK_DIR = "l"
MAX_DEPTH = 128  #: Docker's limit; also what fits in one page of mount data
_SHORT = re.compile(r"[A-Z2-7]{26}")
_TMP = ".tmp-"
#: how the layer store names a container's init layer: ``<mount-id>-init``, as Docker
INIT_SUFFIX = "-init"
_CLONE_FS = 0x00000200
#: filesystems that cannot hold an overlay upper directory
_UNSUPPORTED_FS = {"overlay": "overlayfs", "aufs": "aufs", "ecryptfs": "eCryptfs"}
_KNOWN_OPTIONS = ("override_kernel_check", "size")
#: size-limited filesystems of read-write layers (``--storage-opt size``)
QUOTA_DIR = ".quota"


def _kernel_has_overlay() -> bool:
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def _pinned_options() -> list[str]:
    """``<option>=off`` for each overlay feature this kernel has (module parameter)."""
    params = "/sys/module/overlay/parameters"
    return [f"{opt}=off" for opt in ("index", "redirect_dir", "metacopy")
            if os.path.exists(os.path.join(params, opt))]


def _new_short_id() -> str:
    return base64.b32encode(os.urandom(16)).decode("ascii")[:26]


def _mount_from(cwd: str, data: str, target: str, flags: int) -> None:
    """mount(2) an overlay whose data uses paths relative to ``cwd``.

    The working directory is per process, and the daemon has many threads:
    a throwaway thread unshares its filesystem context first, so its chdir
    is its own.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            syscalls.unshare(_CLONE_FS)
            os.chdir(cwd)
            syscalls.mount("overlay", target, "overlay", flags, data)
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=run, name="overlay2-mount", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]


class Overlay2Driver:
    """Layers as overlayfs upper directories, stacked through short links."""

    name = "overlay2"

    def __init__(self, ctx: StorageContext) -> None:
        unknown = sorted(set(ctx.options) - set(_KNOWN_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) for the overlay2 storage driver: {unknown}")
        if not _kernel_has_overlay():
            raise DriverNotSupported(
                "the kernel has no overlay filesystem (overlay is not listed in "
                "/proc/filesystems); load it with 'modprobe overlay' or use another "
                "storage driver such as vfs"
            )
        self.home = ctx.home
        created = not os.path.exists(self.home)
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        try:
            self.fs = backing_fs(self.home)
            if self.fs in _UNSUPPORTED_FS:
                raise DriverNotSupported(
                    f"the data-root {ctx.data_root} is on {_UNSUPPORTED_FS[self.fs]}, "
                    "which cannot hold overlay upper directories; move the data-root "
                    "to ext4 or xfs, or use the vfs storage driver"
                )
            self.extra = _pinned_options()
            self.d_type = self._probe()
        except BaseException:
            if created:
                shutil.rmtree(self.home, ignore_errors=True)
            raise
        os.makedirs(os.path.join(self.home, LINK_DIR), mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._refs: dict[str, int] = {}
        self._sweep()
        self.default_size = parse_size(ctx.options["size"]) if ctx.options.get("size") else 0
        # XFS/ext4 project quota where the data-root has it (Docker's only
        # backend); the loop filesystem per layer otherwise.
        self.project = ProjectQuota.probe(self.home)
        self._remount_quotas()

    # -- start-up ----------------------------------------------------------

    def _probe(self) -> bool:
        """Mount a tiny overlay under home and check whiteouts and opaque dirs work."""
        tmp = tempfile.mkdtemp(prefix=_TMP + "probe-", dir=self.home)
        try:
            paths = {d: os.path.join(tmp, d) for d in ("l1", "l2", "upper", "work", "merged")}
            for p in paths.values():
                os.mkdir(p)
            with open(os.path.join(paths["l1"], "file"), "wb"):
                pass
            os.mkdir(os.path.join(paths["l1"], "dir"))
            with open(os.path.join(paths["l1"], "dir", "x"), "wb"):
                pass
            d_type = supports_d_type(paths["l1"])
            if not d_type:
                raise DriverNotSupported(
                    f"the filesystem under {self.home} ({self.fs}) does not report file "
                    "types in directory listings (d_type), which overlayfs needs; on xfs, "
                    "reformat with ftype=1, or use the vfs storage driver"
                )
            data = ",".join([
                f"lowerdir={paths['l2']}:{paths['l1']}",
                f"upperdir={paths['upper']}",
                f"workdir={paths['work']}",
                *self.extra,
            ])
            try:
                syscalls.mount("overlay", paths["merged"], "overlay", 0, data)
            except OSError as exc:
                raise DriverNotSupported(
                    f"overlayfs cannot use {self.home} ({self.fs}) for its layers: a test "
                    f"mount failed ({exc.strerror}); use the vfs storage driver"
                ) from exc
            try:
                merged = paths["merged"]
                os.unlink(os.path.join(merged, "file"))
                os.unlink(os.path.join(merged, "dir", "x"))
                os.rmdir(os.path.join(merged, "dir"))
                os.mkdir(os.path.join(merged, "dir"))
                st = os.lstat(os.path.join(paths["upper"], "file"))
                opaque = os.getxattr(
                    os.path.join(paths["upper"], "dir"), archive.OPAQUE_XATTR
                ) == b"y"
            except OSError as exc:
                raise DriverNotSupported(
                    f"overlayfs on {self.home} ({self.fs}) does not behave: {exc}"
                ) from exc
            finally:
                syscalls.umount(paths["merged"], syscalls.MNT_DETACH)
            if not archive.is_overlay_whiteout(st) or not opaque:
                raise DriverNotSupported(
                    f"overlayfs on {self.home} ({self.fs}) does not record deletions as "
                    "whiteouts and opaque directories; use the vfs storage driver"
                )
            return d_type
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _sweep(self) -> None:
        """Remove what a crash cut short: temp dirs and links to no layer."""
        for name in os.listdir(self.home):
            if name.startswith(_TMP):
                shutil.rmtree(os.path.join(self.home, name), ignore_errors=True)
        links = os.path.join(self.home, LINK_DIR)
        for name in os.listdir(links):
            path = os.path.join(links, name)
            if os.path.islink(path) and not os.path.exists(path):
                os.unlink(path)

    # -- disk quota (loop backend) -----------------------------------------

    def _quota(self, layer_id: str) -> LoopQuota:
        image = os.path.join(self.home, QUOTA_DIR, validate_id(layer_id) + ".img")
        return LoopQuota(image, self._dir(layer_id))

    def _remount_quotas(self) -> None:
        """Mount again what the last shutdown unmounted; drop images of no layer."""
        qdir = os.path.join(self.home, QUOTA_DIR)
        if not os.path.isdir(qdir):
            return
        for name in os.listdir(qdir):
            layer_id = name.removesuffix(".img")
            quota = self._quota(layer_id)
            if os.path.isdir(os.path.join(self.home, layer_id, "diff")):
                quota.ensure_mounted()
            else:
                quota.destroy(remove_mountpoint=False)

    def _attach_quota(self, layer_id: str, size: int) -> None:
        """Put the layer's directory on a filesystem of ``size`` bytes.

        The loop filesystem is mounted over ``<home>/<id>`` itself, because
        overlayfs wants its upper and work directories on one mount; the small
        metadata files are copied into it (the originals stay underneath).
        """
        path = self._dir(layer_id)
        files: dict[str, bytes] = {}
        for name in ("link", "lower"):
            data = self._read(os.path.join(path, name))
            if data is not None:
                files[name] = data.encode()
        dirs = [(n, 0o755 if n == "diff" else 0o700) for n in ("diff", "work", "merged")
                if os.path.isdir(os.path.join(path, n))]
        quota = self._quota(layer_id)
        quota.create(size)
        try:
            quota.ensure_mounted()
            os.chmod(path, 0o700)
            for name, mode in dirs:
                os.mkdir(os.path.join(path, name), mode)
                os.chmod(os.path.join(path, name), mode)
            for name, blob in files.items():
                write_atomic(os.path.join(path, name), blob, durable=False)
        except BaseException:
            quota.destroy(remove_mountpoint=False)
            raise

    # -- helpers -----------------------------------------------------------

    def _dir(self, layer_id: str) -> str:
        return os.path.join(self.home, validate_id(layer_id, reserved=(LINK_DIR,)))

    def _existing(self, layer_id: str) -> str:
        path = self._dir(layer_id)
        if not os.path.isdir(os.path.join(path, "diff")):
            raise FileNotFoundError(f"overlay2 layer {layer_id} does not exist")
        return path

    def _read(self, path: str) -> str | None:
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def _short(self, layer_dir: str) -> str:
        short = self._read(os.path.join(layer_dir, "link"))
        if short is None or not _SHORT.fullmatch(short):
            raise OSError(f"overlay2 layer {layer_dir} has a missing or damaged link file")
        return short

    def _lowers(self, layer_dir: str) -> list[str]:
        """The parent chain as ``l/<short>`` entries, nearest first (empty: a base layer)."""
        text = self._read(os.path.join(layer_dir, "lower"))
        if not text:
            return []
        lowers = text.split(":")
        for entry in lowers:
            if not (entry.startswith(LINK_DIR + "/") and _SHORT.fullmatch(entry[2:])):
                raise OSError(f"overlay2 layer {layer_dir} has a damaged lower file")
        return lowers

    def _lower_dirs(self, layer_dir: str) -> list[str]:
        """Absolute diff directories of the parent chain, nearest first."""
        out = []
        for entry in self._lowers(layer_dir):
            link = os.path.join(self.home, entry)
            out.append(os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link))))
        return out

    def _parent_of(self, layer_dir: str) -> str | None:
        dirs = self._lower_dirs(layer_dir)
        return os.path.basename(os.path.dirname(dirs[0])) if dirs else None

    def _check_parent(self, layer_id: str, layer_dir: str, parent: str | None) -> None:
        actual = self._parent_of(layer_dir)
        if actual != parent:
            raise ValueError(
                f"overlay2 layer {layer_id} sits on {actual or 'nothing'}, "
                f"not on {parent or 'nothing'}"
            )

    def _create(self, layer_id: str, parent: str | None, readonly: bool) -> None:
        dst = self._dir(layer_id)
        if os.path.lexists(dst):
            raise FileExistsError(f"overlay2 layer {layer_id} already exists")
        lower = ""
        if parent is not None:
            pdir = self._existing(parent)
            chain = [f"{LINK_DIR}/{self._short(pdir)}", *self._lowers(pdir)]
            if len(chain) >= MAX_DEPTH:
                raise ValueError(
                    f"overlay2 layer {layer_id} would sit on {len(chain)} layers; "
                    f"the limit is {MAX_DEPTH - 1}"
                )
            lower = ":".join(chain)
        tmp = os.path.join(self.home, f"{_TMP}{layer_id}-{secrets.token_hex(4)}")
        short = _new_short_id()
        link = os.path.join(self.home, LINK_DIR, short)
        # The directory is renamed into place whole, so its files need no
        # atomic replace.  An image layer's are fsynced: after a power cut an
        # empty "link" would break every container of the image.  A
        # container's own two layers (its init layer and read-write layer,
        # made at every create) are not, as Docker's overlay2 fsyncs none:
        # five fsyncs were a third of a create.
        durable = readonly and not layer_id.endswith(INIT_SUFFIX)
        try:
            os.mkdir(tmp, 0o700)
            os.mkdir(os.path.join(tmp, "diff"), 0o755)
            os.chmod(os.path.join(tmp, "diff"), 0o755)
            _write_new(os.path.join(tmp, "link"), short.encode(), 0o644, durable)
            if lower:
                os.mkdir(os.path.join(tmp, "work"), 0o700)
                os.mkdir(os.path.join(tmp, "merged"), 0o700)
                _write_new(os.path.join(tmp, "lower"), lower.encode(), 0o644, durable)
            if readonly:
                _write_new(os.path.join(tmp, "committed"), b"", 0o600, durable)
            os.symlink(f"../{layer_id}/diff", link)
            os.rename(tmp, dst)  # the layer exists from here on, complete
        except BaseException:
            if os.path.islink(link):
                os.unlink(link)
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _mount_options(self, layer_id: str, layer_dir: str) -> tuple[str, list[str]] | None:
        """(type, options) of the layer's root mount; None when it is a bare diff dir."""
        lowers = self._lowers(layer_dir)
        if not lowers:
            return None
        if os.path.exists(os.path.join(layer_dir, "committed")):
            # Read-only: its own diff on top of the chain, no upper.
            opts = [f"lowerdir={layer_id}/diff:{':'.join(lowers)}", *self.extra]
        else:
            opts = [
                f"lowerdir={':'.join(lowers)}",
                f"upperdir={layer_id}/diff",
                f"workdir={layer_id}/work",
                *self.extra,
            ]
        data = ",".join(opts)
        if len(data.encode()) > os.sysconf("SC_PAGE_SIZE") - 1:
            raise OSError(f"overlay2 layer {layer_id}: mount data exceeds one page")
        return "overlay", opts

    def _unmount(self, merged: str) -> None:
        if os.path.ismount(merged):
            syscalls.umount(merged, syscalls.MNT_DETACH)

    # -- StorageDriver -----------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        return [
            ("Backing Filesystem", self.fs),
            ("Supports d_type", "true" if self.d_type else "false"),
            ("Using metacopy", "false"),
            ("Native Overlay Diff", "true"),
            ("Quota Backend", self.project.backend if self.project else "loop"),
        ]

    def create(self, id: str, parent: str | None) -> None:
        self._create(id, parent, readonly=True)

    def create_rw(self, id: str, parent: str | None, storage_opts: Mapping[str, str]) -> None:
        check_storage_opts(self.name, storage_opts, known=("size",))
        size = parse_size(storage_opts["size"]) if storage_opts.get("size") else \
            self.default_size
        self._create(id, parent, readonly=False)
        if size:
            try:
                if self.project is not None:
                    self.project.assign(self._dir(id), size)
                else:
                    self._attach_quota(id, size)
            except BaseException:
                self.remove(id)
                raise

    def remove(self, id: str) -> None:
        path = self._dir(id)
        if not os.path.lexists(path):
            return
        with self._lock:
            self._refs.pop(id, None)
            self._unmount(os.path.join(path, "merged"))
            self._quota(id).destroy(remove_mountpoint=False)
            if self.project is not None:
                self.project.release(path)
        short = self._read(os.path.join(path, "link"))
        if short is not None and _SHORT.fullmatch(short):
            link = os.path.join(self.home, LINK_DIR, short)
            if os.path.islink(link):
                os.unlink(link)
        # Renamed first so the layer is gone at once; start-up sweeps leftovers.
        tmp = os.path.join(self.home, f"{_TMP}rm-{id}-{secrets.token_hex(4)}")
        os.rename(path, tmp)
        shutil.rmtree(tmp)

    def exists(self, id: str) -> bool:
        return os.path.isdir(os.path.join(self._dir(id), "diff"))

    def metadata(self, id: str) -> dict[str, str]:
        path = self._existing(id)
        data = {
            "UpperDir": os.path.join(path, "diff"),
            "WorkDir": os.path.join(path, "work"),
            "MergedDir": os.path.join(path, "merged"),
        }
        if self._quota(id).exists():
            data["QuotaBackend"] = "loop"
        elif self.project is not None and self.project.limit(path):
            data["QuotaBackend"] = self.project.backend
        lowers = self._lower_dirs(path)
        if lowers:
            data["LowerDir"] = ":".join(lowers)
        return data

    def mounts(self, id: str) -> list[MountSpec]:
        path = self._existing(id)
        described = self._mount_options(id, path)
        readonly = os.path.exists(os.path.join(path, "committed"))
        if described is None:
            # A layer with no parent: overlayfs needs two lowers or an upper,
            # so the diff directory itself is the root.
            opts = ["rbind", "ro"] if readonly else ["rbind"]
            return [MountSpec("bind", os.path.join(path, "diff"), "/", opts)]
        fstype, opts = described
        if readonly:
            opts = [*opts, "ro"]
        return [MountSpec(fstype, "overlay", "/", opts, cwd=self.home)]

    def get(self, id: str) -> str:
        path = self._existing(id)
        with self._lock:
            described = self._mount_options(id, path)
            if described is None:
                self._refs[id] = self._refs.get(id, 0) + 1
                return os.path.join(path, "diff")
            merged = os.path.join(path, "merged")
            if self._refs.get(id, 0) == 0 and not os.path.ismount(merged):
                committed = os.path.exists(os.path.join(path, "committed"))
                flags = syscalls.MS_RDONLY if committed else 0
                try:
                    _mount_from(self.home, ",".join(described[1]), merged, flags)
                except OSError as exc:
                    msg = f"mounting overlay2 layer {id}: {exc.strerror}"
                    raise OSError(exc.errno, msg) from exc
            self._refs[id] = self._refs.get(id, 0) + 1
            return merged

    def put(self, id: str) -> None:
        path = self._dir(id)
        with self._lock:
            count = self._refs.get(id, 0) - 1
            if count > 0:
                self._refs[id] = count
                return
            self._refs.pop(id, None)
            self._unmount(os.path.join(path, "merged"))

    def apply_diff(self, id: str, parent: str | None, diff: IO[bytes]) -> int:
        path = self._existing(id)
        self._check_parent(id, path, parent)
        upper = os.path.join(path, "diff")
        # A layer with no parent is served as its bare diff directory (no
        # overlay to interpret whiteouts), and there is nothing below it to
        # hide: its whiteouts only undo what the same tar wrote.
        mode: Literal["overlay", "delete"] = "overlay" if parent is not None else "delete"
        lower = archive.lower_lookup(self._lower_dirs(path))
        try:
            return archive.extract(diff, upper, whiteouts=mode, lower_exists=lower)
        except BaseException:
            # Leave the layer empty: whatever the tar managed to write goes.
            shutil.rmtree(upper, ignore_errors=True)
            os.mkdir(upper, 0o755)
            os.chmod(upper, 0o755)
            raise

    def apply_files(self, id: str, parent: str | None, write: Callable[[int], int]) -> int:
        """Contract 2.17: ``write`` fills the new layer's empty diff directory
        through a descriptor of it (a container's init layer, without a tar)."""
        path = self._existing(id)
        self._check_parent(id, path, parent)
        upper = os.path.join(path, "diff")
        fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return write(fd)
        except BaseException:
            shutil.rmtree(upper, ignore_errors=True)  # empty again, as apply_diff leaves it
            os.mkdir(upper, 0o755)
            os.chmod(upper, 0o755)
            raise
        finally:
            os.close(fd)

    def diff(self, id: str, parent: str | None) -> IO[bytes]:
        path = self._existing(id)
        self._check_parent(id, path, parent)
        return archive.tar_directory(os.path.join(path, "diff"), whiteouts="overlay")

    def changes(self, id: str, parent: str | None) -> list[Change]:
        path = self._existing(id)
        self._check_parent(id, path, parent)
        return archive.overlay_changes(os.path.join(path, "diff"), self._lower_dirs(path))

    def diff_size(self, id: str, parent: str | None) -> int:
        path = self._existing(id)
        self._check_parent(id, path, parent)
        return archive.directory_size(os.path.join(path, "diff"))

    def reconcile(self, keep: set[str]) -> list[str]:
        """Daemon start (contract 2.8): no layer is in use yet, so every ``merged``
        mount is a crashed daemon's (a ``docker cp``, a commit, a diff); the quota
        filesystems over the layers themselves stay."""
        gone = []
        with self._lock:
            for point in reversed(mounts_under(self.home)):
                if os.path.basename(point) == "merged":
                    with contextlib.suppress(OSError):
                        syscalls.umount(point, syscalls.MNT_DETACH)
                        gone.append(point)
        return gone

    def cleanup(self) -> None:
        with self._lock:
            self._refs.clear()
            for point in reversed(mounts_under(self.home)):
                # OSError: already gone with a parent mount
                with contextlib.suppress(OSError):
                    syscalls.umount(point, syscalls.MNT_DETACH)


def _write_new(path: str, data: bytes, mode: int, durable: bool) -> None:
    """A new file in a directory not yet in place (``_create``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_storage_drivers() -> dict[str, type[Overlay2Driver]]:
    return {"overlay2": Overlay2Driver}
