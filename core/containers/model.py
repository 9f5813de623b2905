"""The container record: what is persisted, and the shapes the API returns.

On disk, as Docker keeps it: ``containers/<id>/config.v2.json`` (everything
but the host config) and ``containers/<id>/hostconfig.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from skiff.core.atomic import write_atomic, write_json_atomic
from skiff.core.containers.endpoints import shown
from skiff.core.containers.health import ps_suffix as health_suffix
from skiff.core.timefmt import format_duration_ago, parse_rfc3339
from skiff.core.userns import IdMap

ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class State:
    """Docker's ContainerState; times are RFC 3339 strings as inspect shows them."""

    Status: str = "created"  # created, running, paused, restarting, removing, exited, dead
    Running: bool = False
    Paused: bool = False
    Restarting: bool = False
    OOMKilled: bool = False
    Dead: bool = False
    Pid: int = 0
    ExitCode: int = 0
    Error: str = ""
    StartedAt: str = ZERO_TIME
    FinishedAt: str = ZERO_TIME
    #: Docker's Health (Status, FailingStreak, Log) once a run with a
    #: healthcheck began (``skiff.core.containers.health``); None: no check
    Health: dict[str, Any] | None = None
    #: seconds since the epoch of the last state change; not part of Docker's shape
    changed: float = field(default_factory=time.time)
    #: when ``Pid`` started (clock ticks since boot, /proc/<pid>/stat field 22)
    #: and on which boot: what proves after a crash that ``Pid`` is still ours
    #: (``skiff.core.containers.pidproof``); not part of Docker's shape
    pid_start: int = 0
    boot_id: str = ""

    def api(self) -> dict[str, Any]:
        d = asdict(self)
        for private in _PRIVATE_STATE:
            d.pop(private)
        if d["Health"] is None:
            del d["Health"]  # dockerd leaves it out for a container without a check
        return d

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> State:
        """From ``config.v2.json``; keys this version does not know are ignored."""
        return cls(**{k: v for k, v in rec.items() if k in _STATE_FIELDS})


_PRIVATE_STATE = ("changed", "pid_start", "boot_id")
_STATE_FIELDS = frozenset(State.__dataclass_fields__)


@dataclass
class Container:
    """A container's persistent record.  Live process state lives in the manager."""

    id: str
    name: str  #: without the leading "/"
    created: str
    image_id: str
    config: dict[str, Any]  #: Docker's container Config, image defaults merged in
    host_config: dict[str, Any]
    path: str
    args: list[str]
    driver: str
    root: str  #: ``<data-root>/containers/<id>``
    mount_id: str = ""  #: the storage driver's id of the read-write layer
    init_id: str = ""
    log_driver: str = "json-file"
    network_mode: str = "none"
    state: State = field(default_factory=State)
    restart_count: int = 0
    #: stopped or killed through the API: ``unless-stopped`` stays down at daemon start
    manually_stopped: bool = False
    graph_data: dict[str, str] = field(default_factory=dict)
    #: network name -> Docker's EndpointSettings (addresses filled while running)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Docker's NetworkSettings.Ports while running: "80/tcp" -> [{HostIp, HostPort}] or None
    ports: dict[str, Any] = field(default_factory=dict)
    #: Docker's MountPoints (binds, volumes, tmpfs), resolved at create by
    #: ``skiff.core.containers.mounts``; keys starting with "_" are private
    mount_points: list[dict[str, Any]] = field(default_factory=list)
    #: with userns-remap, unless ``--userns=host``: ``Mode`` (private or
    #: auto), the mapping (``UidMap``/``GidMap``, as ``IdMap.to_json``) and
    #: ``Storage`` (idmap or chown: how it sees its layers); empty otherwise
    userns: dict[str, Any] = field(default_factory=dict)
    #: hostconfig.json as last written, to skip rewriting it unchanged
    _saved_host_config: str | None = field(default=None, repr=False, compare=False)

    # -- paths -----------------------------------------------------------

    @property
    def idmap(self) -> IdMap | None:
        """The container's user-namespace mapping; None when it runs unremapped."""
        return IdMap.from_json(self.userns) if self.userns else None

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, f"{self.id}-json.log")

    @property
    def hostname_path(self) -> str:
        return os.path.join(self.root, "hostname")

    @property
    def hosts_path(self) -> str:
        return os.path.join(self.root, "hosts")

    @property
    def resolv_conf_path(self) -> str:
        return os.path.join(self.root, "resolv.conf")

    # -- persistence -----------------------------------------------------

    def save(self) -> None:
        # State changes at every start and stop; its rename need not be durable
        # (a crash leaves the previous state, which restore() handles).  The
        # host config changes rarely: rewrite it only when it did.
        self._write_record()
        self._write_host_config(durable=True)

    def save_new(self) -> None:
        """The record of a container being created, written once, at the end of
        its create: hostconfig.json first, config.v2.json last, so a crash in
        between leaves a directory without a record, which reconciliation
        removes (complete or absent; the other order left a record that cannot
        be loaded).  Each file is fsynced before its rename; no directory
        fsync: the container's own directory entry is not fsynced either, and
        journalled renames in one directory reach the disk in order."""
        self._write_host_config(durable=False)
        self._write_record()

    def _write_host_config(self, *, durable: bool) -> None:
        hc = json.dumps(self.host_config, separators=(",", ":"))
        if hc != self._saved_host_config:
            write_atomic(os.path.join(self.root, "hostconfig.json"), hc, durable=durable)
            self._saved_host_config = hc

    def _write_record(self) -> None:
        record = {
            "ID": self.id,
            "Name": "/" + self.name,
            "Created": self.created,
            "Image": self.image_id,
            "Config": self.config,
            "Path": self.path,
            "Args": self.args,
            "Driver": self.driver,
            "MountID": self.mount_id,
            "InitID": self.init_id,
            "LogDriver": self.log_driver,
            "NetworkMode": self.network_mode,
            "State": asdict(self.state),
            "RestartCount": self.restart_count,
            "HasBeenManuallyStopped": self.manually_stopped,
            "GraphData": self.graph_data,
            "Networks": self.networks,
            "Ports": self.ports,
            "MountPoints": self.mount_points,
            "SkiffUserns": self.userns,
        }
        write_json_atomic(os.path.join(self.root, "config.v2.json"), record, durable=False)

    @classmethod
    def load(cls, root: str) -> Container:
        with open(os.path.join(root, "config.v2.json")) as f:
            rec = json.load(f)
        with open(os.path.join(root, "hostconfig.json")) as f:
            host_config = json.load(f)
        return cls(
            id=rec["ID"],
            name=rec["Name"].lstrip("/"),
            created=rec["Created"],
            image_id=rec["Image"],
            config=rec["Config"],
            host_config=host_config,
            path=rec["Path"],
            args=rec["Args"],
            driver=rec["Driver"],
            root=root,
            mount_id=rec.get("MountID", ""),
            init_id=rec.get("InitID", ""),
            log_driver=rec.get("LogDriver", "json-file"),
            network_mode=rec.get("NetworkMode", "none"),
            state=State.from_record(rec["State"]),
            restart_count=rec.get("RestartCount", 0),
            manually_stopped=bool(rec.get("HasBeenManuallyStopped", False)),
            graph_data=rec.get("GraphData", {}),
            networks=rec.get("Networks") or {},
            ports=rec.get("Ports") or {},
            mount_points=rec.get("MountPoints") or [],
            userns=rec.get("SkiffUserns") or {},
        )

    # -- API shapes ------------------------------------------------------

    def endpoints_api(self) -> dict[str, dict[str, Any]]:
        """``NetworkSettings.Networks``: Docker's EndpointSettings per network."""
        return {
            name: {**endpoint_settings(), **shown(settings)}
            for name, settings in (self.networks or {self.network_mode: {}}).items()
        }

    def network_settings(self) -> dict[str, Any]:
        networks = self.endpoints_api()
        # The top-level fields are the default bridge's, as in Docker.
        primary = networks.get("bridge") or {}
        return {
            **{k: primary.get(k, v) for k, v in (
                ("EndpointID", ""), ("Gateway", ""), ("IPAddress", ""), ("IPPrefixLen", 0),
                ("MacAddress", ""), ("GlobalIPv6Address", ""), ("GlobalIPv6PrefixLen", 0),
                ("IPv6Gateway", ""))},
            "Bridge": "",
            "SandboxID": "",
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": self.ports if self.state.Running else {},
            "SandboxKey": f"/proc/{self.state.Pid}/ns/net" if self.state.Running else "",
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "Networks": networks,
        }

    def mounts_api(self) -> list[dict[str, Any]]:
        if self.mount_points:
            from skiff.core.containers.mounts import api

            return api(self.mount_points)
        out = []
        for bind in self.host_config.get("Binds") or []:
            parts = bind.split(":")
            mode = parts[2] if len(parts) > 2 else ""
            out.append({
                "Type": "bind",
                "Source": parts[0],
                "Destination": parts[1],
                "Mode": mode,
                "RW": "ro" not in mode.split(","),
                "Propagation": "rprivate",
            })
        return out

    def inspect(self) -> dict[str, Any]:
        return {
            "Id": self.id,
            "Created": self.created,
            "Path": self.path,
            "Args": self.args,
            "State": self.state.api(),
            "Image": self.image_id,
            "ResolvConfPath": self.resolv_conf_path,
            "HostnamePath": self.hostname_path,
            "HostsPath": self.hosts_path,
            "LogPath": self.log_path if self.log_driver == "json-file" else "",
            "Name": "/" + self.name,
            "RestartCount": self.restart_count,
            "Driver": self.driver,
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": None,
            "HostConfig": self.host_config,
            "GraphDriver": {"Name": self.driver, "Data": self.graph_data},
            "Mounts": self.mounts_api(),
            "Config": self.config,
            "NetworkSettings": self.network_settings(),
        }

    def status_text(self, now: float | None = None) -> str:
        """The human ``Status`` column of ``docker ps``."""
        s = self.state
        if s.Running:
            up = f"Up {format_duration_ago(s.StartedAt, now)}"
            return up + (" (Paused)" if s.Paused else health_suffix(s.Health))
        if s.Restarting:
            return f"Restarting ({s.ExitCode}) {format_duration_ago(s.FinishedAt, now)} ago"
        if s.Status == "exited":
            return f"Exited ({s.ExitCode}) {format_duration_ago(s.FinishedAt, now)} ago"
        if s.Status == "removing":
            return "Removal In Progress"
        if s.Status == "dead":
            return "Dead"
        return "Created"

    def port_list(self) -> list[dict[str, Any]]:
        """The ``Ports`` of ``docker ps``: one entry per published or exposed port."""
        out: list[dict[str, Any]] = []
        for key, bindings in (self.ports if self.state.Running else {}).items():
            port, _, proto = key.partition("/")
            if not bindings:
                out.append({"PrivatePort": int(port), "Type": proto or "tcp"})
            for b in bindings or []:
                out.append({"IP": b.get("HostIp") or "0.0.0.0", "PrivatePort": int(port),
                            "PublicPort": int(b.get("HostPort") or 0), "Type": proto or "tcp"})
        return out

    def summary(self, image_name: str) -> dict[str, Any]:
        command = " ".join([self.path, *self.args]).strip()
        return {
            "Id": self.id,
            "Names": ["/" + self.name],
            "Image": image_name,
            "ImageID": self.image_id,
            "Command": command,
            "Created": int(parse_rfc3339(self.created)),
            "Ports": self.port_list(),
            "Labels": self.config.get("Labels") or {},
            "State": self.state.Status,
            "Status": self.status_text(),
            "HostConfig": {"NetworkMode": self.host_config.get("NetworkMode") or "default"},
            "NetworkSettings": {"Networks": self.endpoints_api()},
            "Mounts": self.mounts_api(),
        }


def endpoint_settings() -> dict[str, Any]:
    """Docker's EndpointSettings with every field empty."""
    return {
        "IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "", "EndpointID": "",
        "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "",
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "MacAddress": "",
        "DriverOpts": None,
    }
