"""Host device nodes as Docker finds them for ``--device`` and ``--privileged``.

One lookup for the two plugins that must agree on it: the isolation plugin
makes the nodes in the container's ``/dev`` (``ContainerSpec.devices``) and
the cgroup driver lets the container open them (its device filter).  Both
read ``HostConfig.Devices`` through :func:`mapped_devices`, so a node is
never made that the filter does not know, nor the other way round.

Docker's rules (moby ``oci.DevicesFromPath``, runc ``devices.GetDevices``):

* ``PathOnHost`` may be a symlink (``/dev/disk/by-id/...``): its target is
  used.  A device node maps to ``PathInContainer``; a directory maps every
  device node below it, at the same place below ``PathInContainer``.
* ``--privileged`` gets every device node under the host's ``/dev`` except
  ``console`` and what lives in ``pts``, ``shm``, ``fd``, ``mqueue`` and
  the ``.lxc``, ``.lxd-mounts`` and ``.udev`` directories.  Symlinks and
  FIFOs are skipped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from typing import Any, Literal, NamedTuple

from skiff.core.hookspecs import DeviceNode

#: directories of the host's /dev a privileged container does not get
SKIPPED_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
#: the host's console is never given away (the container has its own)
SKIPPED_NAMES = frozenset({"console"})


class MappedDevice(NamedTuple):
    """One node of a ``--device`` mapping and the access the container gets to it."""

    node: DeviceNode
    permissions: str  #: cgroup access, a subset of ``rwm``


def node_from_path(host_path: str, container_path: str) -> DeviceNode | None:
    """The device node at ``host_path`` (not followed if a symlink), or None if
    it is not a character or block device."""
    st = os.lstat(host_path)
    kind: Literal["c", "b"]
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return DeviceNode(path=container_path, type=kind, major=os.major(st.st_rdev),
                      minor=os.minor(st.st_rdev), file_mode=stat.S_IMODE(st.st_mode),
                      uid=st.st_uid, gid=st.st_gid)


def _walk(top: str) -> Iterator[str]:
    """Every non-directory under ``top``; symlinks are listed, never followed."""
    try:
        entries = list(os.scandir(top))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        else:
            yield entry.path


def devices_from_path(host_path: str, container_path: str) -> list[DeviceNode]:
    """``--device HOST:CONTAINER``'s nodes; ``ValueError`` (Docker's message)
    when ``host_path`` is neither a device node nor a directory holding one."""
    resolved = host_path
    try:
        if stat.S_ISLNK(os.lstat(host_path).st_mode):
            resolved = os.path.realpath(host_path)
        node = node_from_path(resolved, container_path)
        if node is not None:
            return [node]
        found: list[DeviceNode] = []
        if os.path.isdir(resolved):
            for path in _walk(resolved):
                rel = os.path.relpath(path, resolved)
                try:
                    child = node_from_path(path, os.path.join(container_path, rel))
                except OSError:
                    continue  # gone meanwhile: Docker ignores it too
                if child is not None:
                    found.append(child)
        if found:
            return found
        reason = ("a directory without device nodes" if os.path.isdir(resolved)
                  else "not a device node")
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise ValueError(
        f"error gathering device information while adding custom device {host_path!r}: "
        f"{reason}; --device takes a character or block device of the host "
        "(or a directory of them), e.g. --device /dev/fuse"
    )


def host_devices(root: str = "/dev") -> list[DeviceNode]:
    """Every device node a ``--privileged`` container gets, at the host's paths."""
    out: list[DeviceNode] = []

    def visit(directory: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in SKIPPED_DIRS:
                    visit(entry.path)
                continue
            if entry.name in SKIPPED_NAMES:
                continue
            try:
                node = node_from_path(entry.path, "/dev/" + os.path.relpath(entry.path, root))
            except OSError:
                continue  # gone since the listing
            if node is not None:
                out.append(node)

    visit(root)
    return out


def _check_permissions(perms: str, host_path: str) -> str:
    if perms == "":
        return "rwm"  # the docker CLI's default, for API clients that leave it out
    if len(perms) > 3 or any(c not in "rwm" for c in perms) or len(set(perms)) != len(perms):
        raise ValueError(
            f"bad mode specified: {perms} for device {host_path!r}: CgroupPermissions "
            "is a combination of r (read), w (write) and m (mknod), e.g. rwm or r"
        )
    return perms


def check_mapping(mapping: Any) -> tuple[str, str, str]:
    """``(PathOnHost, PathInContainer, CgroupPermissions)`` of one ``Devices``
    entry, defaults filled in; ``ValueError`` for a malformed one."""
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"invalid device mapping {mapping!r}: expected an object with PathOnHost, "
            "PathInContainer and CgroupPermissions"
        )
    host = mapping.get("PathOnHost") or ""
    inside = mapping.get("PathInContainer") or host
    perms = mapping.get("CgroupPermissions") or ""
    if not isinstance(host, str) or not isinstance(inside, str) or not isinstance(perms, str):
        raise ValueError(f"invalid device mapping {dict(mapping)!r}: paths and "
                         "CgroupPermissions are strings")
    if not host.startswith("/"):
        raise ValueError(
            f"invalid device mapping: PathOnHost {host!r} must be an absolute path of a "
            "host device, e.g. /dev/fuse"
        )
    if not inside.startswith("/") or os.path.normpath(inside) == "/":
        raise ValueError(
            f"bad format for path: {inside}: PathInContainer must be an absolute path "
            "other than /, e.g. /dev/fuse"
        )
    return host, os.path.normpath(inside), _check_permissions(perms, host)


def mapped_devices(host_config: Mapping[str, Any]) -> list[MappedDevice]:
    """The nodes of ``HostConfig.Devices`` with their cgroup permissions.

    Reads the host: a path that is not there, or holds no device, is a
    ``ValueError`` for the client.
    """
    out: list[MappedDevice] = []
    for mapping in host_config.get("Devices") or []:
        host, inside, perms = check_mapping(mapping)
        out.extend(MappedDevice(node, perms) for node in devices_from_path(host, inside))
    return out


def container_devices(host_config: Mapping[str, Any]) -> list[DeviceNode]:
    """``ContainerSpec.devices`` for this HostConfig: the mapped devices, and for
    ``--privileged`` every host device first (a mapping onto the same path adds
    nothing then, as in Docker)."""
    if not host_config.get("Privileged"):
        return [m.node for m in mapped_devices(host_config)]
    nodes = host_devices()
    for mapping in host_config.get("Devices") or []:
        host, inside, _ = check_mapping(mapping)
        if host != inside:
            nodes.extend(devices_from_path(host, inside))
    return nodes
