"""The container init's side of ``ContainerSpec.devices``: make the nodes.

Runs in the init (the fork server's memory image): standard library and the
cffi syscalls only.  Every path is resolved inside the container's root
with ``openat2(RESOLVE_IN_ROOT)`` and each directory level and node is made
with ``*at`` calls relative to a descriptor, so a symlink the image planted
(``/dev`` itself is the init's fresh tmpfs, but ``--device
/dev/sda:/mnt/disk`` reaches into the image) cannot send a node to the host.

Which devices the container may *open* is the cgroup driver's business
(its device filter); these calls only make the nodes exist, with the host
node's type, numbers, mode and owner, as runc does.  A path that already
exists is left alone (runc's rule): the standard nodes and ``/dev/ptmx``
win over a privileged container's copies of the host's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from skiff.core import syscalls as sc

# typing stays out of the fork server (see users.py)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_TYPES = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS


class DeviceError(Exception):
    """A node could not be made; the container must not start."""


def _open_dir(root_fd: int, parts: list[str]) -> int:
    """An O_PATH descriptor of ``/parts...`` inside the root, made as needed."""
    fd = sc.openat2(root_fd, ".", os.O_PATH | os.O_DIRECTORY)
    for i, part in enumerate(parts):
        try:
            nxt = sc.openat2(root_fd, "/".join(parts[: i + 1]),
                             os.O_PATH | os.O_DIRECTORY, resolve=_RESOLVE)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # a dangling symlink: open says so
                os.mkdir(part, 0o755, dir_fd=fd)
            nxt = sc.openat2(fd, part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        fd = nxt
    return fd


def _make(root_fd: int, device: dict[str, Any]) -> None:
    path = device["path"]
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise DeviceError(f"invalid device path {path!r}: expected an absolute path "
                          "without '..'")
    mode = _TYPES.get(device["type"])
    if mode is None:
        raise DeviceError(f"invalid device type {device['type']!r} for {path}")
    dir_fd = _open_dir(root_fd, parts[:-1])
    try:
        rdev = 0 if device["type"] == "p" else os.makedev(device["major"], device["minor"])
        try:
            os.mknod(parts[-1], mode | (device.get("file_mode", 0o666) & 0o7777), rdev,
                     dir_fd=dir_fd)
        except FileExistsError:
            return
        uid, gid = device.get("uid", 0), device.get("gid", 0)
        if uid or gid:
            # the node is ours and the name is not followed
            os.chown(parts[-1], uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(dir_fd)


def make_nodes(rootfs: str, devices: list[dict[str, Any]] | None) -> None:
    """Create ``devices`` (``DeviceNode`` dicts) under the container's root."""
    if not devices:
        return
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    old_umask = os.umask(0)  # the node gets the host node's mode exactly
    try:
        for device in devices:
            try:
                _make(root_fd, device)
            except OSError as exc:
                why = exc.strerror or str(exc)
                hint = ("; making device nodes needs CAP_MKNOD and a mount without nodev"
                        if exc.errno in (errno.EPERM, errno.EACCES) else "")
                raise DeviceError(
                    f"cannot create device {device.get('path')} in the container: {why}{hint}"
                ) from None
    finally:
        os.umask(old_umask)
        os.close(root_fd)
