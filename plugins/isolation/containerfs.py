"""The container's filesystem, as the init builds it: through descriptors.

The image and the volumes are untrusted: any path inside the container may
be a symlink planted to send a mount, a mask or a new directory onto the
host.  So nothing here re-resolves a container path by name.  The init opens
the container's root once (an ``O_PATH`` descriptor, after the root
filesystem is mounted) and reaches every mount target from it with
``openat2(RESOLVE_IN_ROOT)``: symlinks and ``..`` are followed as the
container will see them, never past its root.  Missing directories are made
one component at a time with ``mkdirat`` relative to a descriptor of their
parent and reopened with ``O_NOFOLLOW``.  Mounts are then attached to the
descriptor (``/proc/self/fd/N`` for a new filesystem; ``open_tree`` and
``move_mount`` for binds, with their read-only and other attributes set
before the mount is attached, so it is never writable for an instant).
Those primitives are ``fdmounts``; this module decides what goes where.

After ``pivot_root`` the masks come from the ``/dev/null`` the init made
itself in the container's new ``/dev`` tmpfs, opened ``O_PATH|O_NOFOLLOW``
and checked to be the 1:3 character device (CVE-2025-31133 class: a masked
path bound from a ``/dev/null`` an image had made a symlink to
``/proc/sys/kernel/core_pattern``).

Mounts onto ``/proc``, ``/sys`` and ``/dev`` themselves, and anywhere in
``/proc`` but a few files LXCFS-style tools cover, are refused here as the
OCI runtimes refuse them (the daemon refuses them at create already; this is
the runtime's own check, made on what the destination resolves to).

Runs in the container init, inside the fork server's memory image: standard
library ``os`` and ``stat`` only.
"""

from __future__ import annotations

import contextlib
import os
import stat

from skiff.core import syscalls as sc
from skiff.core.mountpolicy import PROC_BIND_ALLOWED
from skiff.plugins.isolation import fdmounts, mounts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: (name, major, minor) of the character devices every container gets
DEVICES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)

DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
)

MS_DEFAULT = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
#: /dev/shm of a spec that names no size: Docker's default.
DEFAULT_SHM_SIZE = 64 << 20

#: mount(2) flags of a bind mount -> mount_setattr(2) attributes
_BIND_ATTRS = (
    (sc.MS_RDONLY, sc.MOUNT_ATTR_RDONLY),
    (sc.MS_NOSUID, sc.MOUNT_ATTR_NOSUID),
    (sc.MS_NODEV, sc.MOUNT_ATTR_NODEV),
    (sc.MS_NOEXEC, sc.MOUNT_ATTR_NOEXEC),
)


class FsError(Exception):
    """The container's filesystem cannot be built as asked; the message says why."""


class Prebuilt:
    """What the init of a remapped container gets ready-made from host root
    (see ``containerinit.userns_stage_two``), all descriptors: the root filesystem
    as a detached mount and the directory it goes on, and each bind mount's
    source as a detached mount with its attributes set (key ``m<index>`` in
    the spec's ``mounts``, ``r<index>`` in its ``rootfs_mounts``), with
    whether that source is a file."""

    def __init__(self, rootfs_tree: int, rootfs_target: int,
                 binds: dict[str, tuple[int, bool]]) -> None:
        self.rootfs_tree = rootfs_tree
        self.rootfs_target = rootfs_target
        self.binds = binds

    def close(self) -> None:
        for fd in (self.rootfs_tree, self.rootfs_target, *(t for t, _ in self.binds.values())):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.rootfs_tree = self.rootfs_target = -1
        self.binds = {}


def _keyed_mounts(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [(f"r{i}", m) for i, m in enumerate(spec.get("rootfs_mounts") or [])
           if m.get("destination", "/") not in ("", "/")]
    return out + [(f"m{i}", m) for i, m in enumerate(spec.get("mounts") or [])]


def clone_bind_sources(spec: dict[str, Any]) -> dict[str, tuple[int, bool]]:
    """Detached copies of every bind mount's source, attributes (``ro``,
    ``nosuid``, ``nodev``, ``noexec``) already set, with whether each source
    is a file: made by the shim, host root, for a remapped container's init,
    which in its user namespace could reach neither the daemon's root-only
    directories nor set attributes on a mount host root made.  Bind mounts
    are never idmapped."""
    out: dict[str, tuple[int, bool]] = {}
    try:
        for key, m in _keyed_mounts(spec):
            flags, _, _ = mounts.parse_options(m.get("options") or [])
            if not _is_bind(m, flags):
                continue
            source = m["source"] if not m.get("cwd") else os.path.join(m["cwd"], m["source"])
            is_file = _want_file(m)
            try:
                tree = sc.open_tree(fdmounts.AT_FDCWD, source, sc.OPEN_TREE_CLONE
                                    | (sc.AT_RECURSIVE if flags & sc.MS_REC else 0))
            except OSError as exc:
                raise FsError(f"cannot bind {m['source']} on {m.get('destination')}: "
                              f"{exc.strerror}") from None
            out[key] = (tree, is_file)
            attrs = 0
            for ms_flag, attr in _BIND_ATTRS:
                if flags & ms_flag:
                    attrs |= attr
            if attrs:
                sc.mount_setattr(tree, attrs)
    except BaseException:
        for tree, _ in out.values():
            os.close(tree)
        raise
    return out


class ContainerRoot:
    """Descriptors of the container's root and of the trees the init made in it.

    ``fd`` is the root (an ``O_PATH`` descriptor of the mounted root
    filesystem); ``null`` the verified ``/dev/null`` the masks come from.
    ``special`` holds (st_dev, st_ino) of the ``/proc``, ``/sys`` and
    ``/dev`` the init mounted, so that a user mount resolving onto one of
    them is recognised whatever path led there; ``proc_dev`` the device of
    the container's procfs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.null = -1
        self.special: dict[tuple[int, int], str] = {}
        self.proc_dev = -1

    def close(self) -> None:
        for fd in (self.fd, self.null):
            if fd >= 0:
                os.close(fd)
        self.fd = self.null = -1


def build(rootfs: str, spec: dict[str, Any], pre: Prebuilt | None = None) -> ContainerRoot:
    """Mount the root filesystem, /proc, /sys, /dev and the spec's mounts.

    With ``pre`` (a remapped container) the root filesystem and the bind
    sources come ready-made and are only attached here.  Returns the root's
    descriptors; ``pivot`` makes it the process's root.
    """
    # nothing done below may propagate back to the host's mount table; a bind
    # mount asking for slave or shared propagation needs the copies of the
    # host's mounts to stay slaves of them (Docker's rootfs propagation rslave)
    wants_events = any(
        opt in ("slave", "rslave", "shared", "rshared")
        for m in spec.get("mounts") or [] for opt in m.get("options") or []
    )
    sc.mount(None, "/", None, sc.MS_REC | (sc.MS_SLAVE if wants_events else sc.MS_PRIVATE))
    rootfs_mounts = spec.get("rootfs_mounts") or []
    on_root = [m for m in rootfs_mounts if m.get("destination", "/") in ("", "/")]
    root = ContainerRoot(rootfs)
    if pre is not None:
        # attached where the descriptor (opened while we could reach the
        # daemon's directory) points; the tree's own descriptor is its root
        sc.move_mount(pre.rootfs_tree, pre.rootfs_target)
        root.fd, pre.rootfs_tree = pre.rootfs_tree, -1
    else:
        os.makedirs(rootfs, 0o755, exist_ok=True)
        if not on_root:
            # pivot_root needs the new root to be a mount point
            sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
        for m in on_root:
            # the bundle's rootfs is the daemon's own directory: a host path
            _mount_new(m, rootfs)
    binds = pre.binds if pre is not None else {}
    try:
        if root.fd < 0:
            root.fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for key, m in _keyed_mounts(spec):
            if key.startswith("r"):
                mount_in(root, m, check=False, tree=binds.pop(key, None))
        os.close(_mount_special(root, "/proc", "proc", "proc", MS_DEFAULT))
        sys_ro = sc.MS_RDONLY if spec.get("readonly_sysfs", True) else 0
        os.close(_mount_special(root, "/sys", "sysfs", "sysfs", MS_DEFAULT | sys_ro))
        _setup_dev(root, int(spec.get("shm_size") or DEFAULT_SHM_SIZE))
        # before the mounts: a volume over a node's path hides the node
        make_device_nodes(root, spec.get("devices") or [])
        for key, m in _keyed_mounts(spec):
            if key.startswith("m"):
                mount_in(root, m, tree=binds.pop(key, None))
        if spec.get("readonly_rootfs"):
            sc.mount_setattr(root.fd, sc.MOUNT_ATTR_RDONLY)
    except BaseException:
        root.close()
        raise
    return root


def _mount_special(root: ContainerRoot, dest: str, source: str, fstype: str, flags: int,
                   data: str | None = None) -> int:
    """Mount a fresh kernel filesystem at ``dest`` and record its identity in
    ``root.special``; returns a descriptor of its root, which the caller closes."""
    target = fdmounts.open_in_root(root.fd, dest, create="dir")
    try:
        sc.mount(source, fdmounts.fd_path(target), fstype, flags, data)
    finally:
        os.close(target)
    # reopened: the old descriptor is the directory underneath the new mount
    mounted = fdmounts.open_in_root(root.fd, dest)
    st = os.fstat(mounted)
    root.special[(st.st_dev, st.st_ino)] = dest
    if fstype == "proc":
        root.proc_dev = st.st_dev
    return mounted


def _setup_dev(root: ContainerRoot, shm_size: int = DEFAULT_SHM_SIZE) -> None:
    """/dev as a fresh tmpfs with the standard nodes, /dev/shm of ``shm_size``
    bytes; ``root.null`` from it."""
    dev = _mount_special(root, "/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME,
                         "mode=755,size=65536k")
    try:
        # a fresh tmpfs: no name in it can be anything but what we make here
        for name, major, minor in DEVICES:
            try:
                os.mknod(name, stat.S_IFCHR | 0o666, os.makedev(major, minor), dir_fd=dev)
            except PermissionError:
                # no CAP_MKNOD (or a nodev-locked mount): borrow the host's node
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                 0o666, dir_fd=dev))
                fdmounts.bind_onto(f"/dev/{name}", fdmounts.open_at(dev, name), recursive=False)
        for name, target in DEV_SYMLINKS:
            os.symlink(target, name, dir_fd=dev)
        os.mkdir("pts", 0o755, dir_fd=dev)
        fdmounts.mount_at(dev, "pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620,gid=5")
        os.mkdir("shm", 0o1777, dir_fd=dev)
        fdmounts.mount_at(dev, "shm", "shm", "tmpfs", MS_DEFAULT, f"mode=1777,size={shm_size}")
        os.mkdir("mqueue", 0o755, dir_fd=dev)
        fdmounts.mount_at(dev, "mqueue", "mqueue", "mqueue", MS_DEFAULT)
        root.null = verified_null(dev)
    finally:
        os.close(dev)


_NODE_TYPES = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def make_device_nodes(root: ContainerRoot, devices: list[dict[str, Any]]) -> None:
    """Make the nodes of ``ContainerSpec.devices`` (``--device``, ``--privileged``).

    Each with the host node's type, numbers, mode and owner, as runc does,
    in a parent directory reached (and made) inside the root; a path that
    exists already is left alone (runc's rule: the standard nodes and
    ``/dev/ptmx`` win over a privileged container's copies of the host's).
    Which devices the container may *open* is the cgroup driver's business.
    """
    old_umask = os.umask(0)  # the node gets the host node's mode exactly
    try:
        for device in devices:
            path = device["path"]
            parent, _, name = os.path.normpath("/" + path).rpartition("/")
            mode = _NODE_TYPES.get(device["type"])
            if mode is None or not name or ".." in path.split("/"):
                raise FsError(f"invalid device {path!r} of type {device['type']!r}")
            try:
                dir_fd = fdmounts.open_in_root(root.fd, parent or "/", create="dir")
                try:
                    rdev = 0 if device["type"] == "p" else os.makedev(device["major"],
                                                                      device["minor"])
                    try:
                        os.mknod(name, mode | (device.get("file_mode", 0o666) & 0o7777), rdev,
                                 dir_fd=dir_fd)
                    except FileExistsError:
                        continue
                    uid, gid = device.get("uid", 0), device.get("gid", 0)
                    if uid or gid:
                        # the node is ours and the name is not followed
                        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                hint = ("; making device nodes needs CAP_MKNOD and a mount without nodev"
                        if exc.errno in (1, 13) else "")  # EPERM, EACCES
                raise FsError(f"cannot create device {path} in the container: "
                              f"{exc.strerror}{hint}") from None
    finally:
        os.umask(old_umask)


def verified_null(dev_fd: int) -> int:
    """``O_PATH`` descriptor of ``null`` in ``dev_fd``, proven to be the 1:3 device."""
    fd = os.open("null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev_fd)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        os.close(fd)
        raise FsError("the container's /dev/null is not the null device (1:3); refusing to "
                      "mask paths with it")
    return fd


def _want_file(m: dict[str, Any]) -> bool:
    """Whether a bind mount's source is a file (so its destination must be one)."""
    source = m["source"]
    if m.get("cwd"):
        source = os.path.join(m["cwd"], source)
    try:
        return not stat.S_ISDIR(os.stat(source).st_mode)
    except OSError as exc:
        raise FsError(f"bind source path {m['source']}: {exc.strerror}") from None


def _is_bind(m: dict[str, Any], flags: int) -> bool:
    return m.get("type") == "bind" or bool(flags & sc.MS_BIND)


def mount_in(root: ContainerRoot, m: dict[str, Any], check: bool = True,
             tree: tuple[int, bool] | None = None) -> None:
    """Perform one MountSpec inside the container's root.

    With ``check`` (the spec's own mounts, as opposed to the storage driver's)
    a destination that resolves onto /proc, /sys or /dev themselves, or into
    /proc beyond the allowed files, is refused.  ``tree`` is a bind's source
    cloned beforehand (``clone_bind_sources``) and whether it is a file; it
    is attached as it is, and closed.
    """
    dest = m.get("destination") or "/"
    flags, propagation, data = mounts.parse_options(m.get("options") or [])
    bind = _is_bind(m, flags)
    try:
        is_file = tree[1] if tree is not None else bind and _want_file(m)
        target = fdmounts.open_in_root(root.fd, dest, create="file" if bind and is_file else "dir")
    except BaseException as exc:
        if tree is not None:
            os.close(tree[0])
        if isinstance(exc, OSError):
            raise FsError(f"cannot create mount destination {dest}: {exc.strerror}") from None
        raise
    try:
        if check:
            _check_destination(root, dest, target)
    except BaseException:
        os.close(target)
        if tree is not None:
            os.close(tree[0])
        raise
    fstype = m.get("type") or "none"
    try:
        if tree is not None:
            fdmounts.attach(tree[0], target, propagation)
        elif bind:
            attrs = 0
            for ms_flag, attr in _BIND_ATTRS:
                if flags & ms_flag:
                    attrs |= attr
            source = m["source"] if not m.get("cwd") else os.path.join(m["cwd"], m["source"])
            fdmounts.bind_onto(source, target, recursive=bool(flags & sc.MS_REC), attrs=attrs,
                       propagation=propagation)
        else:
            try:
                _mount_new(m, fdmounts.fd_path(target), flags, data)
                if propagation:
                    sc.mount(None, fdmounts.fd_path(target), None, propagation)
            finally:
                os.close(target)
    except OSError as exc:
        raise FsError(
            f"cannot mount {m.get('source')} on {dest} (type {fstype}, options "
            f"{','.join(m.get('options') or [])}): {exc.strerror}"
        ) from None


def _check_destination(root: ContainerRoot, dest: str, target: int) -> None:
    st = os.fstat(target)
    special = root.special.get((st.st_dev, st.st_ino))
    if special is not None:
        raise FsError(
            f"cannot mount on {dest}: it is the container's {special}, which skiff makes "
            "itself; mounts onto /proc, /sys and /dev are not allowed (use --device for "
            "devices, --privileged for every host device)"
        )
    if st.st_dev == root.proc_dev and not (
        os.path.normpath(dest) in PROC_BIND_ALLOWED and stat.S_ISREG(st.st_mode)
    ):
        raise FsError(f"cannot mount on {dest}: mounts into /proc are not allowed")


def _mount_new(m: dict[str, Any], target: str, flags: int | None = None,
               data: str | None = None) -> None:
    """mount(2) of a MountSpec that is not a bind, onto ``target``."""
    if flags is None:
        flags, _, data = mounts.parse_options(m.get("options") or [])
    fstype = m.get("type") or "none"
    source = m.get("source") or fstype
    old_cwd = None
    if m.get("cwd"):
        # overlay2 passes lowerdir relative to its home so the data fits a page
        old_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.chdir(m["cwd"])
    try:
        if fstype == "bind" or flags & sc.MS_BIND:
            sc.mount(source, target, None, sc.MS_BIND | (flags & sc.MS_REC))
            extra = flags & mounts.BIND_REMOUNT_FLAGS
            if extra:
                sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | extra)
        else:
            sc.mount(source, target, fstype, flags, data or None)
    except OSError as exc:
        raise FsError(
            f"cannot mount {m.get('source')} on {m.get('destination')} (type {fstype}, "
            f"options {','.join(m.get('options') or [])}): {exc.strerror}"
        ) from None
    finally:
        if old_cwd is not None:
            os.fchdir(old_cwd)
            os.close(old_cwd)


def pivot(root: ContainerRoot) -> None:
    """Make the container's root the process's root; the host's is detached."""
    os.fchdir(root.fd)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching
    # it leaves the new root alone, without needing a put_old directory
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")


_NO_LINKS = sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS


def _open_system_path(path: str) -> int:
    """``O_PATH`` descriptor of a path in /proc or /sys (after ``pivot``), no
    symlink followed on the way; -1 when it does not exist on this kernel."""
    try:
        return sc.openat2(fdmounts.AT_FDCWD, path, os.O_PATH | os.O_NOFOLLOW, 0, _NO_LINKS)
    except (FileNotFoundError, NotADirectoryError):
        return -1
    except OSError as exc:
        raise FsError(f"cannot open {path}: {exc.strerror}") from None


def mask(root: ContainerRoot, path: str) -> None:
    """Cover ``path``: a directory with an empty read-only tmpfs, anything else
    with the verified ``/dev/null``."""
    target = _open_system_path(path)
    if target < 0:
        return
    try:
        if stat.S_ISDIR(os.fstat(target).st_mode):
            try:
                sc.mount("tmpfs", fdmounts.fd_path(target), "tmpfs", sc.MS_RDONLY)
            finally:
                os.close(target)
        else:
            fdmounts.bind_onto(root.null, target, recursive=False)
    except OSError as exc:
        raise FsError(f"cannot mask {path}: {exc.strerror}") from None


def make_readonly(path: str) -> None:
    """Remount ``path`` read-only, recursively: a read-only copy of what is
    mounted there is attached over it, through the descriptor of the path."""
    target = _open_system_path(path)
    if target < 0:
        return
    try:
        tree = sc.open_tree(target, "", sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE | sc.AT_EMPTY_PATH)
        try:
            sc.mount_setattr(tree, sc.MOUNT_ATTR_RDONLY, recursive=True)
            sc.move_mount(tree, target)
        finally:
            os.close(tree)
    except OSError as exc:
        raise FsError(f"cannot make {path} read-only: {exc.strerror}") from None
    finally:
        os.close(target)


def bind_console(slave: int) -> None:
    """Bind the terminal's slave at ``/dev/console`` (runc's console)."""
    # a missing one (a /dev made unwritable) only costs programs that write
    # to the console directly
    try:
        dev = sc.openat2(fdmounts.AT_FDCWD, "/dev", os.O_PATH | os.O_DIRECTORY, 0, _NO_LINKS)
    except OSError:
        return
    try:
        try:
            os.close(os.open("console", os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600, dir_fd=dev))
            target = fdmounts.open_at(dev, "console")
        except OSError:
            return
        with contextlib.suppress(OSError):
            fdmounts.bind_onto(slave, target, recursive=False)
    finally:
        os.close(dev)
