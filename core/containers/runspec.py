"""The ``ContainerSpec`` of a container's next run: rootfs, binds, namespaces,
user namespace, rlimits and the process, from its record and the daemon's
configuration."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from skiff.core.containers import namespaces as container_namespaces
from skiff.core.containers.links import Lookup, link_env
from skiff.core.containers.model import Container
from skiff.core.containers.netns import namespace_of
from skiff.core.errors import Conflict
from skiff.core.hookspecs import (
    CgroupDriver,
    ContainerSpec,
    MountSpec,
    NetworkDriver,
    StorageDriver,
)


class SpecBuilder:
    """Builds specs for one daemon; blocking (volume drivers mount), so run in a thread."""

    def __init__(self, *, lookup: Lookup, config: Mapping[str, Any], exec_root: str,
                 storage: StorageDriver, cgroups: CgroupDriver | None,
                 network_driver: Callable[[str], NetworkDriver],
                 volume_mounts: Callable[[Container], list[MountSpec]]) -> None:
        self.lookup = lookup
        self.config = config
        self.exec_root = exec_root
        self.storage = storage
        self.cgroups = cgroups
        self.network_driver = network_driver
        #: binds, volumes (mounted through their drivers) and tmpfs of a container
        self.volume_mounts = volume_mounts

    def bundle(self, cid: str) -> str:
        return os.path.join(self.exec_root, "containers", cid)

    def build(self, c: Container) -> ContainerSpec:
        etc = c
        running_pid = container_namespaces.running_pid_of(self.lookup)
        netns = namespace_of(c.network_mode, self.network_driver,
                             lambda ref: running_pid(ref, "network"))
        if netns.owner:
            # as dockerd: in another's network namespace, the container takes that
            # one's names and /etc files, which hold that namespace's addresses
            etc = self.lookup(netns.owner)
            c.config["Hostname"] = etc.config.get("Hostname") or c.config["Hostname"]
            c.config["Domainname"] = etc.config.get("Domainname") or ""
        mounts = [
            MountSpec("bind", etc.resolv_conf_path, "/etc/resolv.conf", ["rbind", "rw"]),
            MountSpec("bind", etc.hostname_path, "/etc/hostname", ["rbind", "rw"]),
            MountSpec("bind", etc.hosts_path, "/etc/hosts", ["rbind", "rw"]),
        ]
        if self.cgroups is not None:
            # the container's own groups, read-only, under /sys/fs/cgroup
            mounts.extend(self.cgroups.mounts(c.id))
        namespaces, ns_mounts = container_namespaces.for_start(c.host_config, running_pid)
        mounts.extend(ns_mounts)
        mounts.extend(self.volume_mounts(c))
        if netns.kind == "join":
            namespaces["net"] = netns.path
        elif netns.kind == "new":
            namespaces["net"] = None
        idmap = c.idmap
        uid_map: list[tuple[int, int, int]] = []
        gid_map: list[tuple[int, int, int]] = []
        if idmap is not None:
            shared = self.shared_userns(c)
            namespaces["user"] = shared
            if shared is None:
                uid_map, gid_map = list(idmap.uids), list(idmap.gids)
        cfg = self.config
        rlimits = [
            (u["Name"], int(u["Soft"]), int(u["Hard"]))
            for u in list(cfg["default-ulimits"].values())
            + list(c.host_config.get("Ulimits") or [])
        ]
        return ContainerSpec(
            id=c.id,
            bundle=self.bundle(c.id),
            rootfs_mounts=self.storage.mounts(c.mount_id),
            mounts=mounts,
            args=[c.path, *c.args],
            env=list(c.config.get("Env") or []) + link_env(c, self.lookup),
            cwd=c.config.get("WorkingDir") or "/",
            user=c.config.get("User") or "",
            group_add=[str(g) for g in c.host_config.get("GroupAdd") or []],
            hostname=c.config["Hostname"],
            namespaces=namespaces,
            readonly_rootfs=bool(c.host_config.get("ReadonlyRootfs")),
            shm_size=max(int(c.host_config.get("ShmSize") or 0), 0),
            oom_score_adj=int(c.host_config.get("OomScoreAdj") or 0),
            rlimits=rlimits,
            tty=bool(c.config.get("Tty")),
            open_stdin=bool(c.config.get("OpenStdin")),
            # --init: HostConfig.Init wins; null means the daemon's default
            init=bool(cfg["init"] if c.host_config.get("Init") is None
                      else c.host_config["Init"]),
            init_path=cfg["init-path"],
            uid_map=uid_map,
            gid_map=gid_map,
            rootfs_idmap=c.userns.get("Storage") == "idmap",
        )

    def shared_userns(self, c: Container) -> str | None:
        """The user namespace a remapped ``c`` must join (None: one of its own).

        As dockerd: sharing another container's network or pid namespace
        means sharing its user namespace too, since those namespaces belong
        to it.  That container must be remapped as well, and with the same
        mapping when ``c``'s layers are chowned copies for its own.
        """
        for mode, what in ((c.network_mode, "network"),
                           (c.host_config.get("PidMode") or "", "PID")):
            if not mode.startswith("container:"):
                continue
            other = self.lookup(mode[10:])
            if not other.userns:
                raise Conflict(
                    f"cannot share the {what} namespace of container {other.id[:12]}: it runs "
                    "without a user namespace (--userns=host) and this one with; run both "
                    "the same way")
            if c.userns.get("Storage") == "chown" and (
                    other.userns.get("UidMap"), other.userns.get("GidMap")) != (
                    c.userns.get("UidMap"), c.userns.get("GidMap")):
                raise Conflict(
                    f"cannot share the {what} namespace of container {other.id[:12]}: its "
                    "user namespace maps other ids, and this daemon keeps chowned copies of "
                    "the layers per mapping; run both without --userns=auto")
            return f"/proc/{int(other.state.Pid)}/ns/user"
        return None
