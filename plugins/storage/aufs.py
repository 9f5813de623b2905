"""The ``aufs`` storage driver: Docker's aufs layout, mounted by aufs or fuse-overlayfs.

Layout, as Docker's::

    <home>/diff/<id>/      the layer's own files; deletions as ``.wh.<name>``
                           files and opaque directories as ``.wh..wh..opq``
    <home>/layers/<id>     the parent chain, one id a line, nearest first
    <home>/mnt/<id>/       where the union is mounted on the host
    <home>/work/<id>/      fuse-overlayfs's work directory (read-write layers)
    <home>/quota/<id>.img  a read-write layer's size-limited filesystem, when
    <home>/quota/<id>/     ``--storage-opt size`` asked for one (mounted here)

Two ways to mount the union:

* **kernel aufs**, when ``/proc/filesystems`` lists it: ``mounts()`` describes
  an ``aufs`` mount with ``br:`` branches and the container init performs it
  in the container's namespace, like overlay2 (not available on the machine
  this was written on, so this path is untested).
* **fuse-overlayfs** otherwise (``docker info`` says which under "Mount
  Helper").  FUSE needs a process serving the filesystem, so it cannot be a
  mount described as data for ``mount(2)``.  The driver mounts the union on
  the host under ``mnt/<id>`` (one ``fuse-overlayfs -f`` child of the daemon
  per mounted layer) and ``mounts()`` describes a bind of that directory.  The
  host mount lives while the container runs: ``mounts()`` takes a reference
  that the container's poststop (or removal) releases; ``get``/``put`` share
  the same reference count, and ``cleanup`` (daemon shutdown) unmounts
  everything.  A container keeps running across a daemon restart: its own
  namespace still holds the union, and the FUSE process lives until that
  last reference is gone.

fuse-overlayfs honours ``.wh.`` whiteouts and ``.wh..wh..opq`` markers in its
lower directories, so image layers are stored exactly as Docker's aufs
driver stores them.  What a *running* container deletes, fuse-overlayfs
records in its own upper-directory form (0/0 character devices); diffs and
changes never read either form directly: they compare the mounted union of a
layer with its parent's, so both forms give the same answer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from typing import IO, Any, Literal

from skiff.core import archive, syscalls
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
from skiff.plugins.storage._quota import LoopQuota, parse_size

_TMP = ".tmp-"
_KNOWN_OPTIONS = ("size", "mount_helper")
_MOUNT_TIMEOUT = 10.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: every driver built in this process, so the container hooks can find theirs
_DRIVERS: weakref.WeakSet[AufsDriver] = weakref.WeakSet()


def _kernel_has_aufs() -> bool:
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1:] == ["aufs"] for line in f)
    except OSError:
        return False


def _to_aufs_whiteouts(root: str) -> None:
    """Turn overlay-style deletions under ``root`` into aufs's ``.wh.`` files.

    ``archive.extract(whiteouts="overlay")`` gets every ordering of a tar right
    (a whiteout after the tar wrote the name, a name written again after a
    whiteout); its result is then rewritten into aufs's form: a 0/0 character
    device ``X`` becomes an empty file ``.wh.X`` and an opaque directory gets a
    ``.wh..wh..opq`` file.  Directory mtimes are put back afterwards.
    """
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        _convert(root_fd)
    finally:
        os.close(root_fd)


def _mark(dir_fd: int, name: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o444, dir_fd=dir_fd)
    os.close(fd)


def _convert(dir_fd: int) -> None:
    before = os.fstat(dir_fd)
    touched = False
    try:
        if os.getxattr(dir_fd, archive.OPAQUE_XATTR) == b"y":
            os.removexattr(dir_fd, archive.OPAQUE_XATTR)
            _mark(dir_fd, archive.WHITEOUT_OPAQUE)
            touched = True
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise
    for name in os.listdir(dir_fd):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if archive.is_overlay_whiteout(st):
            os.unlink(name, dir_fd=dir_fd)
            _mark(dir_fd, archive.WHITEOUT_PREFIX + name)
            touched = True
        elif stat.S_ISDIR(st.st_mode):
            cfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _convert(cfd)
            finally:
                os.close(cfd)
    if touched:
        os.utime(dir_fd, ns=(before.st_atime_ns, before.st_mtime_ns))


#: directory levels :func:`_linked_names` descends (one descriptor and one
#: Python frame each)
_SCAN_DEPTH = 256


def _linked_names(branches: list[str]) -> list[str]:
    """Relative paths of files with more than one link in any of ``branches``.

    A container's upper branch may be changing (a running container's, read
    for an export): it is walked through descriptors, never following a link.
    """
    out: list[str] = []

    def scan(dir_fd: int, rel: str, depth: int) -> None:
        if depth > _SCAN_DEPTH:
            return  # only a link count shown too low until the name is looked up
        try:
            names = os.listdir(dir_fd)
        except OSError:
            return
        for name in names:
            path = f"{rel}/{name}" if rel else name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    cfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue
                try:
                    scan(cfd, path, depth + 1)
                finally:
                    os.close(cfd)
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                out.append(path)

    for branch in branches:
        try:
            fd = os.open(branch, _DIR_FLAGS)
        except OSError:
            continue
        try:
            scan(fd, "", 0)
        finally:
            os.close(fd)
    return out


def _look_up(top: str, rel: str) -> None:
    """``lstat`` of ``rel`` under ``top``, reached one name at a time, never
    through a symbolic link (see :func:`_linked_names`)."""
    parts = rel.split("/")
    fd = os.open(top, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


class AufsDriver(MountedTreeDiffs):
    """Docker's aufs layout; unions mounted by kernel aufs or by fuse-overlayfs."""

    name = "aufs"

    def __init__(self, ctx: StorageContext) -> None:
        unknown = sorted(set(ctx.options) - set(_KNOWN_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) for the aufs storage driver: {unknown}")
        self.default_size = parse_size(ctx.options["size"]) if ctx.options.get("size") else 0
        helper = ctx.options.get("mount_helper", "")
        if helper not in ("", "aufs", "fuse-overlayfs"):
            raise ValueError("aufs.mount_helper must be aufs or fuse-overlayfs")
        if helper == "aufs" or (not helper and _kernel_has_aufs()):
            if not _kernel_has_aufs():
                raise DriverNotSupported("aufs.mount_helper=aufs, but the kernel has no aufs")
            self.helper = "aufs"
            self.fuse_binary = ""
        else:
            binary = shutil.which("fuse-overlayfs")
            if binary is None:
                raise DriverNotSupported(
                    "the kernel has no aufs and the fuse-overlayfs program (Debian package "
                    "fuse-overlayfs) is not on PATH; install it or choose another storage "
                    "driver"
                )
            if not os.path.exists("/dev/fuse"):
                raise DriverNotSupported(
                    "the kernel has no aufs and /dev/fuse is missing for fuse-overlayfs "
                    "('modprobe fuse')"
                )
            self.helper = "fuse-overlayfs"
            self.fuse_binary = binary
        self.home = ctx.home
        created = not os.path.exists(self.home)
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        self.fs = backing_fs(self.home)
        if self.fs in ("aufs", "fuse.fuse-overlayfs"):
            if created:
                shutil.rmtree(self.home, ignore_errors=True)
            raise DriverNotSupported(
                f"the data-root {ctx.data_root} is on {self.fs}, which cannot hold aufs "
                "branches; move the data-root or use the vfs storage driver"
            )
        for sub in ("diff", "layers", "mnt", "work", "quota"):
            os.makedirs(os.path.join(self.home, sub), mode=0o700, exist_ok=True)
        self.empty = os.path.join(self.home, "empty")  # the lower of a parentless rw layer
        os.makedirs(self.empty, mode=0o755, exist_ok=True)
        self._lock = threading.RLock()
        self._refs: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._described: set[str] = set()
        self._sweep()
        _DRIVERS.add(self)

    # -- start-up ----------------------------------------------------------

    def _sweep(self) -> None:
        for sub in ("diff", "work"):
            base = os.path.join(self.home, sub)
            for name in os.listdir(base):
                if name.startswith(_TMP):
                    shutil.rmtree(os.path.join(base, name), ignore_errors=True)

    # -- paths -------------------------------------------------------------

    def _diff(self, layer_id: str) -> str:
        return os.path.join(self.home, "diff", validate_id(layer_id))

    def _layers_file(self, layer_id: str) -> str:
        return os.path.join(self.home, "layers", validate_id(layer_id))

    def _mnt(self, layer_id: str) -> str:
        return os.path.join(self.home, "mnt", validate_id(layer_id))

    def _work(self, layer_id: str) -> str:
        return os.path.join(self.home, "work", validate_id(layer_id))

    def _quota(self, layer_id: str) -> LoopQuota:
        base = os.path.join(self.home, "quota", validate_id(layer_id))
        return LoopQuota(base + ".img", base)

    def _existing(self, layer_id: str) -> str:
        path = self._diff(layer_id)
        if not os.path.isfile(self._layers_file(layer_id)) or not os.path.isdir(path):
            raise FileNotFoundError(f"aufs layer {layer_id} does not exist")
        return path

    def _chain(self, layer_id: str) -> list[str]:
        """The parent chain, nearest first (empty for a base layer)."""
        with open(self._layers_file(layer_id), encoding="ascii") as f:
            return [line.strip() for line in f if line.strip()]

    def _readonly(self, layer_id: str) -> bool:
        return not os.path.isdir(self._work(layer_id))

    def _upper(self, layer_id: str) -> tuple[str, str]:
        """(upper, work) of a read-write layer; on its quota filesystem if it has one."""
        quota = self._quota(layer_id)
        if quota.exists():
            point = quota.ensure_mounted()
            return os.path.join(point, "diff"), os.path.join(point, "work")
        return self._diff(layer_id), self._work(layer_id)

    def _check_parent(self, layer_id: str, parent: str | None) -> None:
        chain = self._chain(layer_id)
        actual = chain[0] if chain else None
        if actual != parent:
            raise ValueError(
                f"aufs layer {layer_id} sits on {actual or 'nothing'}, "
                f"not on {parent or 'nothing'}"
            )

    # -- create ------------------------------------------------------------

    def _create(self, layer_id: str, parent: str | None, rw: bool, size: int = 0) -> None:
        dst = self._diff(layer_id)
        layers = self._layers_file(layer_id)
        if os.path.lexists(dst) or os.path.lexists(layers):
            raise FileExistsError(f"aufs layer {layer_id} already exists")
        chain: list[str] = []
        if parent is not None:
            self._existing(parent)
            chain = [parent, *self._chain(parent)]
        tmp = os.path.join(self.home, "diff", f"{_TMP}{layer_id}-{secrets.token_hex(4)}")
        work = self._work(layer_id)
        quota = self._quota(layer_id)
        try:
            os.mkdir(tmp, 0o755)
            os.chmod(tmp, 0o755)
            if rw:
                os.mkdir(work, 0o700)
            if size:
                quota.create(size)
                point = quota.ensure_mounted()
                os.mkdir(os.path.join(point, "diff"), 0o755)
                os.chmod(os.path.join(point, "diff"), 0o755)
                os.mkdir(os.path.join(point, "work"), 0o700)
            os.rename(tmp, dst)
            # The layers file last: its presence is what makes the layer exist.
            write_atomic(layers, "".join(f"{p}\n" for p in chain).encode(), durable=False)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
            if size:
                quota.destroy()
            raise

    # -- mounting ----------------------------------------------------------

    def _branches(self, layer_id: str) -> tuple[str | None, str | None, list[str]]:
        """(upper, work, lowers nearest first) of the layer's union."""
        lowers = [self._diff(p) for p in self._chain(layer_id)]
        if self._readonly(layer_id):
            return None, None, [self._diff(layer_id), *lowers]
        upper, work = self._upper(layer_id)
        return upper, work, lowers or [self.empty]

    def _bare(self, layer_id: str) -> str | None:
        """The directory that *is* the layer's root when no union is needed."""
        if self._chain(layer_id):
            return None
        if self._readonly(layer_id):
            return self._diff(layer_id)
        return self._upper(layer_id)[0]

    def _aufs_options(self, layer_id: str) -> list[str]:
        upper, _, lowers = self._branches(layer_id)
        branches = ([f"{upper}=rw"] if upper else []) + [f"{d}=ro+wh" for d in lowers]
        data = ["br:" + ":".join(branches), "dio", "xino=/dev/shm/aufs.xino"]
        if len(",".join(data)) > os.sysconf("SC_PAGE_SIZE") - 1:
            raise OSError(f"aufs layer {layer_id}: mount data exceeds one page")
        return data

    def _mount(self, layer_id: str) -> None:
        target = self._mnt(layer_id)
        os.makedirs(target, mode=0o755, exist_ok=True)
        if self.helper == "aufs":
            flags = syscalls.MS_RDONLY if self._readonly(layer_id) else 0
            syscalls.mount("none", target, "aufs", flags, ",".join(self._aufs_options(layer_id)))
            return
        upper, work, lowers = self._branches(layer_id)
        opts = [f"lowerdir={':'.join(lowers)}"]
        if upper:
            opts += [f"upperdir={upper}", f"workdir={work}"]
        # allow_other: the container's user need not be root; default_permissions:
        # then the kernel, not the root-running helper, checks file permissions.
        opts += ["allow_other", "default_permissions", "suid", "dev", "noatime"]
        # Its messages go to an unnamed file, not a pipe: a pipe closed after
        # mounting would kill it with SIGPIPE at its next warning.
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                [self.fuse_binary, "-f", "-o", ",".join(opts), target],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                close_fds=True, start_new_session=True,
            )
            deadline = time.monotonic() + _MOUNT_TIMEOUT
            while not os.path.ismount(target):
                if proc.poll() is not None or time.monotonic() > deadline:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
                    errors.seek(0)
                    err = errors.read().decode(errors="replace").strip()
                    raise OSError(
                        f"mounting aufs layer {layer_id} with fuse-overlayfs failed: "
                        f"{err or 'timed out'}"
                    )
                time.sleep(0.001)
        self._procs[layer_id] = proc
        # fuse-overlayfs counts a file's hard links as it meets its names, so
        # the name looked up first would report st_nlink 1.  Looking up every
        # name of every hard-linked file now (found cheaply in the branches
        # themselves) gives the shared inode its full count before anyone looks.
        for rel in _linked_names([d for d in (upper, *lowers) if d]):
            with contextlib.suppress(OSError):
                _look_up(target, rel)
        # The helper exits when its filesystem's last mount goes (possibly
        # later, inside a container's namespace): reap it then.
        threading.Thread(target=proc.wait, name=f"aufs-reap-{layer_id[:12]}",
                         daemon=True).start()

    def _unmount(self, layer_id: str) -> None:
        target = self._mnt(layer_id)
        if os.path.ismount(target):
            syscalls.umount(target, syscalls.MNT_DETACH)
        self._procs.pop(layer_id, None)

    def _acquire(self, layer_id: str) -> str:
        self._existing(layer_id)
        with self._lock:
            bare = self._bare(layer_id)
            if bare is None and self._refs.get(layer_id, 0) == 0 \
                    and not os.path.ismount(self._mnt(layer_id)):
                self._mount(layer_id)
            self._refs[layer_id] = self._refs.get(layer_id, 0) + 1
            return bare if bare is not None else self._mnt(layer_id)

    def _release(self, layer_id: str) -> None:
        with self._lock:
            count = self._refs.get(layer_id, 0) - 1
            if count > 0:
                self._refs[layer_id] = count
                return
            self._refs.pop(layer_id, None)
            self._unmount(layer_id)

    def release_container(self, layer_id: str) -> None:
        """Drop the reference ``mounts()`` took for a container that stopped."""
        with self._lock:
            if layer_id in self._described:
                self._described.discard(layer_id)
                self._release(layer_id)

    # -- StorageDriver -----------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        status = [
            ("Backing Filesystem", self.fs),
            ("Mount Helper", self.helper),
            ("Dirs", str(len(os.listdir(os.path.join(self.home, "layers"))))),
            ("Quota Backend", "loop"),
        ]
        if self.helper == "fuse-overlayfs":
            status.append(("Mounts", "host mount under mnt/<id> while a container runs"))
        return status

    def create(self, id: str, parent: str | None) -> None:
        self._create(id, parent, rw=False)

    def create_rw(self, id: str, parent: str | None, storage_opts: Mapping[str, str]) -> None:
        check_storage_opts(self.name, storage_opts, known=("size",))
        size = parse_size(storage_opts["size"]) if storage_opts.get("size") else \
            self.default_size
        self._create(id, parent, rw=True, size=size)

    def remove(self, id: str) -> None:
        layers = self._layers_file(id)
        with self._lock:
            self._refs.pop(id, None)
            self._described.discard(id)
            self._unmount(id)
            # The layers file first: from here on the layer does not exist.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(layers)
            self._quota(id).destroy()
        for path in (self._diff(id), self._work(id)):
            if os.path.lexists(path):
                tmp = os.path.join(os.path.dirname(path),
                                   f"{_TMP}rm-{id}-{secrets.token_hex(4)}")
                os.rename(path, tmp)
                shutil.rmtree(tmp)
        with contextlib.suppress(OSError):
            os.rmdir(self._mnt(id))

    def exists(self, id: str) -> bool:
        return os.path.isfile(self._layers_file(id)) and os.path.isdir(self._diff(id))

    def metadata(self, id: str) -> dict[str, str]:
        path = self._existing(id)
        data = {"DiffDir": path, "MergedDir": self._mnt(id), "MountHelper": self.helper}
        if self._quota(id).exists():
            data["QuotaBackend"] = "loop"
            data["QuotaImage"] = self._quota(id).image
        return data

    def mounts(self, id: str) -> list[MountSpec]:
        self._existing(id)
        readonly = self._readonly(id)
        flags = ["rbind", "ro"] if readonly else ["rbind"]
        with self._lock:
            bare = self._bare(id)
            if bare is not None:
                return [MountSpec("bind", bare, "/", flags)]
            if self.helper == "aufs":
                opts = self._aufs_options(id) + (["ro"] if readonly else [])
                return [MountSpec("aufs", "none", "/", opts)]
            if id not in self._described:
                self._acquire(id)
                self._described.add(id)
            return [MountSpec("bind", self._mnt(id), "/", flags)]

    def get(self, id: str) -> str:
        return self._acquire(id)

    def put(self, id: str) -> None:
        self._release(id)

    def apply_diff(self, id: str, parent: str | None, diff: IO[bytes]) -> int:
        path = self._existing(id)
        self._check_parent(id, parent)
        # overlay mode gets every ordering of whiteouts and entries right;
        # the result is then rewritten into aufs's own form.
        mode: Literal["overlay", "delete"] = "overlay" if parent is not None else "delete"
        try:
            size = archive.extract(diff, path, whiteouts=mode)
            if parent is not None:
                _to_aufs_whiteouts(path)
            return size
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)
            raise

    def _check_diff_args(self, id: str, parent: str | None) -> None:
        self._existing(id)
        self._check_parent(id, parent)

    def cleanup(self) -> None:
        with self._lock:
            self._refs.clear()
            self._described.clear()
            for point in reversed(mounts_under(self.home)):
                # OSError: already gone with a parent mount
                with contextlib.suppress(OSError):
                    syscalls.umount(point, syscalls.MNT_DETACH)
            self._procs.clear()


def _release_for(container: Any) -> None:
    layer = getattr(container, "mount_id", None)
    if not layer:
        return
    for driver in list(_DRIVERS):
        with contextlib.suppress(Exception):
            driver.release_container(layer)


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_storage_drivers() -> dict[str, type[AufsDriver]]:
    return {"aufs": AufsDriver}


@hookimpl
def skiff_container_poststop(container: Any, exit_code: int) -> None:
    _release_for(container)


@hookimpl
def skiff_container_remove(container: Any) -> None:
    _release_for(container)
