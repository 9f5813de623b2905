"""Which namespaces a container gets: Docker's PidMode, IpcMode, UTSMode,
CgroupnsMode and UsernsMode.

Each mode is checked at create (a bad or unsupported value is a 400 then,
never accepted and ignored) and turned into ``ContainerSpec.namespaces`` at
every start.  The network namespace is the network driver's business and is
added by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from skiff.core.containers.config import InvalidConfig
from skiff.core.errors import Conflict
from skiff.core.hookspecs import MountSpec

PID_MODES = ("", "host")
IPC_MODES = ("", "private", "shareable", "host")
UTS_MODES = ("", "host")
USERNS_MODES = ("", "host", "auto")  #: what they need: core.containers.userns
CGROUPNS_MODES = ("", "private", "host")


def _mode(hc: Mapping[str, Any], key: str) -> str:
    value = hc.get(key) or ""
    if not isinstance(value, str):
        raise InvalidConfig(f"HostConfig.{key} must be a string, got {value!r}")
    return value


def validate(cfg: Mapping[str, Any], hc: Mapping[str, Any]) -> None:
    """Docker's checks of the namespace modes of a create request."""
    pid = _mode(hc, "PidMode")
    if pid not in PID_MODES and not (pid.startswith("container:") and pid[10:]):
        raise InvalidConfig(f"invalid PID mode: {pid} (use host or container:<name|id>)")
    ipc = _mode(hc, "IpcMode")
    if ipc == "none" or ipc == "container:":
        raise InvalidConfig(
            f"IPC mode {ipc!r} is not supported by skiff yet; use private, shareable, host "
            "or container:<name|id>")
    if ipc not in IPC_MODES and not ipc.startswith("container:"):
        raise InvalidConfig(f"invalid IPC mode: {ipc}")
    uts = _mode(hc, "UTSMode")
    if uts not in UTS_MODES:
        raise InvalidConfig(f"invalid UTS mode: {uts}")
    if uts == "host" and cfg.get("Hostname"):
        raise InvalidConfig("Conflicting options: hostname and the UTS mode")
    userns = _mode(hc, "UsernsMode")
    if userns not in USERNS_MODES:
        raise InvalidConfig(f"invalid USER mode: {userns} (use host, or auto with userns-remap)")
    cgroupns = _mode(hc, "CgroupnsMode")
    if cgroupns not in CGROUPNS_MODES:
        raise InvalidConfig(f"invalid cgroup namespace mode: {cgroupns} (use private or host)")


def private_pid(hc: Mapping[str, Any]) -> bool:
    """Whether the container's processes live in a pid namespace of their own."""
    return not (hc.get("PidMode") or "")


def for_start(hc: Mapping[str, Any], running_pid: Callable[[str, str], int]
              ) -> tuple[dict[str, str | None], list[MountSpec]]:
    """``ContainerSpec.namespaces`` (without ``net``) and the mounts a mode needs.

    ``running_pid(ref, what)`` returns the host pid of a running container
    named by ``ref``, or raises ``Conflict`` naming ``what`` it was for.
    """
    namespaces: dict[str, str | None] = {"mount": None}
    mounts: list[MountSpec] = []
    pid = hc.get("PidMode") or ""
    if pid.startswith("container:"):
        namespaces["pid"] = f"/proc/{running_pid(pid[10:], 'PID')}/ns/pid"
    elif pid != "host":
        namespaces["pid"] = None
    if (hc.get("UTSMode") or "") != "host":
        namespaces["uts"] = None
    ipc = hc.get("IpcMode") or ""
    if ipc == "host":
        # System V IPC is the namespace's; POSIX shared memory is /dev/shm
        mounts.append(MountSpec("bind", "/dev/shm", "/dev/shm", ["rbind", "rw"]))
    elif ipc.startswith("container:"):
        # the other's System V IPC (a CRI pod's containers join their sandbox's);
        # /dev/shm stays the container's own (docs/cri.md)
        namespaces["ipc"] = f"/proc/{running_pid(ipc[10:], 'IPC')}/ns/ipc"
    else:
        namespaces["ipc"] = None
    if (hc.get("CgroupnsMode") or "") != "host":
        # private by default on v1 and v2 alike: /proc/self/cgroup shows "/"
        namespaces["cgroup"] = None
    return namespaces, mounts


def running_pid_of(get: Callable[[str], Any]) -> Callable[[str, str], int]:
    """A ``running_pid`` for ``for_start`` over a container lookup."""

    def running_pid(ref: str, what: str) -> int:
        other = get(ref)
        if not other.state.Running:
            raise Conflict(f"cannot join {what} of a non running container: {other.id}")
        if what == "IPC" and (other.host_config.get("IpcMode") or "") != "shareable":
            # as dockerd: only a donor made shareable lends its IPC namespace
            raise Conflict(f"cannot join IPC of container {other.id}: non-shareable IPC "
                           "(hint: use IpcMode:shareable for the donor container)")
        return int(other.state.Pid)

    return running_pid
