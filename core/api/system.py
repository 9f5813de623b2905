"""System endpoints: /_ping, /version, /info, /system/df."""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import TYPE_CHECKING, Any

import structlog

from skiff import __version__
from skiff.core import userns_storage
from skiff.core.api.router import Request, Response, Router
from skiff.core.builder.prune import cache_usage
from skiff.core.engineid import engine_id
from skiff.core.images.errors import ImageNotFound, LayerNotFound
from skiff.core.reload import unique_labels
from skiff.core.timefmt import rfc3339

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.api.system")

API_VERSION = "1.41"
MIN_API_VERSION = "1.24"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _read_flag(path: str) -> bool:
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def version_payload() -> dict[str, Any]:
    kernel = platform.release()
    return {
        "Platform": {"Name": "skiff"},
        "Components": [{
            "Name": "Engine",
            "Version": __version__,
            "Details": {
                "ApiVersion": API_VERSION, "Arch": _arch(), "BuildTime": "",
                "Experimental": "false", "GitCommit": "", "GoVersion": "",
                "KernelVersion": kernel, "MinAPIVersion": MIN_API_VERSION, "Os": "linux",
                "Python": platform.python_version(),
            },
        }],
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "python" + platform.python_version(),
        "Os": "linux",
        "Arch": _arch(),
        "KernelVersion": kernel,
        "BuildTime": "",
    }


def register(router: Router, engine: Engine) -> None:
    @router.route("GET", "/_ping")
    @router.route("HEAD", "/_ping")
    async def ping(req: Request) -> Response:
        return Response(200, b"" if req.method == "HEAD" else b"OK", "text/plain; charset=utf-8",
                        headers=[("Cache-Control", "no-cache, no-store, must-revalidate"),
                                 ("Pragma", "no-cache"), ("Builder-Version", "1")])

    @router.route("GET", "/version")
    async def version(req: Request) -> dict[str, Any]:
        return version_payload()

    @router.route("GET", "/info")
    async def info(req: Request) -> dict[str, Any]:
        return await engine.to_thread(info_payload, engine)

    @router.route("GET", "/system/df")
    async def disk_usage(req: Request) -> dict[str, Any]:
        return await engine.to_thread(disk_usage_payload, engine)


def disk_usage_payload(engine: Engine) -> dict[str, Any]:
    """``GET /system/df`` (``docker system df [-v]``) from the layer store.

    As dockerd computes it: an image's Size is its whole chain, SharedSize the
    bytes of its layers another listed image uses too, Containers how many
    containers run from it; LayersSize counts every layer under the images
    once; a container's SizeRw is what its read-write layer holds (the storage
    driver's diff_size), SizeRootFs that plus its image.
    """
    images = engine.images.list()
    chains: dict[str, list[str]] = {}
    for summary in images:
        try:
            chains[summary["Id"]] = list(engine.images.get(summary["Id"]).chain)
        except ImageNotFound:  # removed meanwhile
            continue
    images = [s for s in images if s["Id"] in chains]
    layers_size, shared = engine.layers.disk_usage(chains)
    by_image: dict[str, int] = {}
    containers = []
    for c in sorted(engine.containers.by_id.values(), key=lambda c: c.created, reverse=True):
        by_image[c.image_id] = by_image.get(c.image_id, 0) + 1
        summary = c.summary(c.config.get("Image") or c.image_id)
        try:
            size_rw = engine.layers.rw_size(c.id)
            base = engine.layers.size(engine.layers.rw_layer(c.id).parent)
        except (LayerNotFound, OSError) as exc:  # being removed: report it, sizeless
            log.warning("system_df.container_size_failed", container=c.id, error=str(exc))
            size_rw, base = 0, 0
        summary["SizeRw"] = size_rw
        summary["SizeRootFs"] = size_rw + base
        containers.append(summary)
    for summary in images:
        summary["Containers"] = by_image.get(summary["Id"], 0)
        summary["SharedSize"] = shared.get(summary["Id"], 0)
    volumes: list[dict[str, Any]] = []
    store = getattr(engine, "volumes", None)
    for volume in list(getattr(store, "volumes", {}).values()) if store is not None else []:
        try:
            # the loop runs only when store is not None; mypy cannot see that
            volumes.append(store.inspect(volume, usage=True))  # type: ignore[union-attr]
        except Exception as exc:  # one broken volume must not hide the rest
            log.warning("system_df.volume_failed", volume=getattr(volume, "name", "?"),
                        error=str(exc))
    return {"LayersSize": layers_size, "Images": images, "Containers": containers,
            "Volumes": volumes,
            "BuildCache": cache_usage(engine.builds.cache, engine.images, engine.layers)}


def info_payload(engine: Engine) -> dict[str, Any]:
    total, running, paused, stopped = engine.containers.counts()
    cg = engine.cgroups
    plugins = engine.plugins.drivers
    names = {kind: sorted(found) for kind, found in plugins.items()}
    return {
        "ID": _daemon_id(engine),
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": stopped,
        "Images": engine.images.count(),
        "Driver": engine.storage_name,
        "DriverStatus": [list(kv) for kv in engine.storage.status()]
        + [list(kv) for kv in userns_storage.status(engine)],
        "SystemStatus": None,
        "Plugins": {
            "Volume": names.get("volume", []),
            "Network": names.get("network", []),
            "Authorization": None,
            "Log": names.get("logging", []),
            # skiff's own kinds; the docker CLI ignores keys it does not know
            "Storage": names.get("storage", []),
            "Isolation": names.get("isolation", []),
            "Limits": names.get("limits", []) + names.get("traffic", []),
        },
        "SkiffPluginModules": engine.plugins.modules,
        "MemoryLimit": True,
        "SwapLimit": os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
        "KernelMemory": False,
        "KernelMemoryTCP": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": True,
        "PidsLimit": True,
        "IPv4Forwarding": _read_flag("/proc/sys/net/ipv4/ip_forward"),
        "BridgeNfIptables": _read_flag("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        "BridgeNfIp6tables": _read_flag("/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
        "Debug": bool(engine.config["debug"]),
        "NFd": len(os.listdir("/proc/self/fd")),
        "OomKillDisable": True,
        "NGoroutines": 0,
        "SystemTime": rfc3339(time.time()),
        "LoggingDriver": engine.config["log-driver"],
        "CgroupDriver": getattr(cg, "name", "none"),
        "CgroupVersion": str(getattr(cg, "version", "")),
        "NEventsListener": 0,
        "KernelVersion": platform.release(),
        "OperatingSystem": _os_release(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"AllowNondistributableArtifactsCIDRs": [],
                           "AllowNondistributableArtifactsHostnames": [],
                           "InsecureRegistryCIDRs": ["127.0.0.0/8"],
                           "IndexConfigs": {}, "Mirrors": []},
        "NCPU": os.cpu_count() or 1,
        "MemTotal": _mem_total(),
        "GenericResources": None,
        "DockerRootDir": engine.data_root,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": socket.gethostname(),
        "Labels": unique_labels(engine.config),
        "ExperimentalBuild": False,
        "ServerVersion": __version__,
        # only the default runtime runs containers (HostConfig.Runtime): docs/runtimes.md
        "Runtimes": {engine.runtime_name: {"path": engine.runtime_name}},
        "DefaultRuntime": engine.runtime_name,
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                  "ControlAvailable": False, "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": bool(engine.config["live-restore"]),
        # dockerd 20.10's fields: the store as configured, this node's resolved address
        "ClusterStore": engine.config["cluster-store"],
        "ClusterAdvertise": engine.cluster.advertise if engine.cluster is not None else "",
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": [opt for opts in engine.plugins.hook.skiff_security_options(
            config=engine.config) for opt in opts]
        + (["name=userns"] if getattr(engine, "remap", None) is not None else []),
        "Warnings": [],
    }


def _daemon_id(engine: Engine) -> str:
    return engine_id(engine.data_root)
