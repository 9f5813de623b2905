"""A remapped container's root filesystem, built by its shim as host root.

A container in a user namespace cannot build its own root filesystem: its
root is an unprivileged host uid, which can neither reach the storage
driver's directories (root-only) nor mount overlayfs over them with the
``trusted.*`` attributes the layers use.  So the shim, still host root,
builds it in a private mount namespace of its own and hands it to the init
as a detached mount (``open_tree(OPEN_TREE_CLONE)``), which the init
attaches inside the container's mount namespace with ``move_mount``.

With ``idmap``, every host directory the rootfs mounts use (a bind's source;
an overlay's lower directories, and the directory holding its upper and work
directories, which overlayfs wants on one mount) is first covered, in that
private namespace, by an idmapped copy of itself: ``open_tree(OPEN_TREE_CLONE)``
then ``mount_setattr(MOUNT_ATTR_IDMAP)`` with the container's user namespace
(Linux 5.12; overlayfs takes idmapped layers since 5.19).  Through it, what
is 0 on disk is the container's root and what the container's root writes is
0 on disk, so the layers stay as they are: shared with every other
container, remapped or not, and with commit, export and diff.

Overlayfs works in its upper layer with the credentials of whoever mounted
it, and those must be representable through the idmapped upper layer (host
root is not: it is outside the container's mapping, and overlayfs would fall
back to a read-only mount).  So the overlay is mounted with the filesystem
ids of the container's root (``setfsuid``/``setfsgid``, this thread only)
and the capabilities raised again that a fsuid change drops from the
effective set, then both are restored.

The private namespace is left again (``setns`` back) before the shim goes on,
so the shim never holds a copy of the host's mount table while its container
runs; the detached tree keeps alive what it needs.

Runs in the shim (the fork server's memory image): standard library ``os``
only.  ``python -m skiff.plugins.isolation.idmapfs`` is the runtime's probe
(``Runtime.probe_idmapped_rootfs``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from skiff.core import syscalls as sc
from skiff.plugins.isolation import fdmounts, mounts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

AT_FDCWD = -100
PROBE_FILE = ".skiff-idmap-probe"  # hookspecs.IDMAP_PROBE_FILE; not imported here


class IdmapError(Exception):
    """The root filesystem cannot be built; the message says why."""


def _cover(path: str, userns_fd: int, covered: list[str]) -> None:
    """Mount an idmapped copy of directory ``path`` over itself (private namespace)."""
    real = os.path.realpath(path)
    if any(real == c or real.startswith(c + "/") for c in covered):
        return  # already seen through an idmapped mount above it
    target = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fdmounts.bind_onto(real, target, recursive=False, userns_fd=userns_fd)
    covered.append(real)


def _overlay_dirs(options: list[str], cwd: str | None) -> tuple[list[str], list[str]]:
    """(lower dirs, [upper, work]) of an overlay's options, as host paths."""
    lowers: list[str] = []
    rw: list[str] = []
    for opt in options:
        key, _, value = opt.partition("=")
        if key == "lowerdir":
            lowers += [p for p in value.split(":") if p]
        elif key in ("upperdir", "workdir"):
            rw.append(value)
    base = cwd or "/"
    return [os.path.join(base, p) for p in lowers], [os.path.join(base, p) for p in rw]


def _as_root_of(uid: int, gid: int) -> tuple[int, int]:
    """Take the filesystem ids ``uid``/``gid`` with every capability still
    effective; returns what to restore with ``_restore``."""
    _, permitted, inheritable = sc.capget()
    old_gid = sc.setfsgid(gid)
    old_uid = sc.setfsuid(uid)
    sc.capset(permitted, permitted, inheritable)
    return old_uid, old_gid


def _restore(old: tuple[int, int]) -> None:
    sc.setfsuid(old[0])
    sc.setfsgid(old[1])
    _, permitted, inheritable = sc.capget()
    sc.capset(permitted, permitted, inheritable)


def _mount_one(m: dict[str, Any], target: str, userns_fd: int, idmap: bool,
               root_ids: tuple[int, int], covered: list[str]) -> None:
    flags, _, data = mounts.parse_options(m.get("options") or [])
    fstype = m.get("type") or "none"
    cwd = m.get("cwd")
    if fstype == "bind" or flags & sc.MS_BIND:
        source = os.path.join(cwd, m["source"]) if cwd else m["source"]
        dest = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        fdmounts.bind_onto(source, dest, recursive=bool(flags & sc.MS_REC),
                              attrs=sc.MOUNT_ATTR_RDONLY if flags & sc.MS_RDONLY else 0,
                              userns_fd=userns_fd if idmap else -1,
                              attrs_recursive=bool(flags & sc.MS_REC))
        return
    if fstype == "overlay":
        lowers, rw = _overlay_dirs(m.get("options") or [], cwd)
        if idmap:
            for path in lowers:
                _cover(path, userns_fd, covered)
            if rw:
                # upper and work dirs must stay on one mount: cover their parent
                _cover(os.path.commonpath([os.path.realpath(p) for p in rw]), userns_fd,
                       covered)
        old_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        saved = _as_root_of(*root_ids) if idmap and rw else None
        try:
            if cwd:
                os.chdir(cwd)
            sc.mount(m.get("source") or "overlay", target, "overlay", flags, data or None)
        finally:
            if saved is not None:
                _restore(saved)
            os.fchdir(old_cwd)
            os.close(old_cwd)
        return
    # a filesystem of its own (a device): mounted here, then seen through an
    # idmapped copy of itself
    sc.mount(m.get("source") or fstype, target, fstype, flags, data or None)
    if idmap:
        tree = sc.open_tree(AT_FDCWD, target, sc.OPEN_TREE_CLONE)
        try:
            sc.mount_setattr(tree, 0, userns_fd=userns_fd)
            sc.umount(target, sc.MNT_DETACH)
            dest = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sc.move_mount(tree, dest)
            finally:
                os.close(dest)
        finally:
            os.close(tree)


def build_rootfs(rootfs_mounts: list[dict[str, Any]], target: str, userns_fd: int,
                 idmap: bool, root_ids: tuple[int, int]) -> int:
    """A detached mount of the container's root filesystem; the caller closes it.

    ``rootfs_mounts`` are the storage driver's mounts with destination ``/``
    (``ContainerSpec.rootfs_mounts``), performed in order on ``target`` (the
    bundle's ``rootfs`` directory, a host path) inside a private mount
    namespace; ``root_ids`` are the host uid and gid of the container's root.
    Raises ``IdmapError``.
    """
    home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWNS)
        try:
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            os.makedirs(target, 0o755, exist_ok=True)
            covered: list[str] = []
            if not rootfs_mounts:
                rootfs_mounts = [{"type": "bind", "source": target, "options": ["bind"]}]
            for m in rootfs_mounts:
                _mount_one(m, target, userns_fd, idmap, root_ids, covered)
            return sc.open_tree(AT_FDCWD, target, sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE)
        except OSError as exc:
            what = "an idmapped root filesystem" if idmap else "the root filesystem"
            raise IdmapError(f"cannot build {what} for the user namespace: "
                             f"{exc.strerror or exc}") from None
        finally:
            # back to the host's mount namespace: the private one, and with it
            # the staging mounts, goes away (the detached tree holds its own)
            sc.setns(home, sc.CLONE_NEWNS)
    finally:
        os.close(home)


def write_maps(pid: int, uid_map: list[list[int]], gid_map: list[list[int]]) -> None:
    """Give the user namespace of ``pid`` its mappings (from its parent namespace).

    ``setgroups`` stays "allow" (written explicitly, before ``gid_map`` as the
    kernel requires): the mapping is set by host root, not by the user who
    owns the namespace, so supplementary groups (``--group-add``, a user's
    groups) keep working as under runc.
    """
    for name, data in (("setgroups", "allow"), ("uid_map", _map_text(uid_map)),
                       ("gid_map", _map_text(gid_map))):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())  # one write: the kernel takes the map whole
        finally:
            os.close(fd)


def _map_text(lines: list[list[int]]) -> str:
    return "".join(f"{int(c)} {int(h)} {int(n)}\n" for c, h, n in lines)


# ---------------------------------------------------------------------------
# The probe: python -m skiff.plugins.isolation.idmapfs < request.json
# ---------------------------------------------------------------------------


def probe(request: dict[str, Any]) -> str | None:
    """Build the rootfs of ``request["mounts"]`` idmapped with a throwaway user
    namespace of ``uid_map``/``gid_map`` and create ``PROBE_FILE`` at its top as
    the container's root; None on success, else why not."""
    uid_map, gid_map = request["uid_map"], request["gid_map"]
    hold_r, hold_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds the namespace until the parent has a descriptor of it
        os.close(hold_w)
        os.close(ready_r)
        try:
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"u")
        finally:
            os.read(hold_r, 1)
            os._exit(0)
    os.close(hold_r)
    os.close(ready_w)
    userns = -1
    try:
        if os.read(ready_r, 1) != b"u":
            return "cannot create a user namespace"
        write_maps(pid, uid_map, gid_map)
        userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        root_ids = (host_of_root(uid_map), host_of_root(gid_map))
        target = request["target"]
        tree = build_rootfs(request["mounts"], target, userns, True, root_ids)
        try:
            saved = _as_root_of(*root_ids)
            try:
                os.close(os.open(PROBE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | os.O_CLOEXEC, 0o644, dir_fd=tree))
            finally:
                _restore(saved)
        finally:
            os.close(tree)
        return None
    except (IdmapError, OSError) as exc:
        return str(exc) if isinstance(exc, IdmapError) else (exc.strerror or str(exc))
    finally:
        if userns >= 0:
            os.close(userns)
        os.close(hold_w)
        os.close(ready_r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def host_of_root(lines: list[list[int]]) -> int:
    """The host id of container id 0 in map ``lines``."""
    for c, h, n in lines:
        if int(c) <= 0 < int(c) + int(n):
            return int(h)
    raise ValueError("container id 0 is not mapped")


def main() -> int:
    import json

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    reason = probe(json.loads(sys.stdin.read()))
    sys.stdout.write(json.dumps({"error": reason}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
