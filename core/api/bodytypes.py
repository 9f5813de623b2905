"""The JSON types of request bodies, checked before a handler reads them.

dockerd decodes a body into Go structs, so a field of the wrong JSON type is a 400
("json: cannot unmarshal string into Go struct field ... of type int64") before
anything happens; handlers here read plain dicts and would trip over a number where
a string belongs.  :func:`checked` gives them a body whose known fields have the
types dockerd would have accepted.  Unknown fields pass (Go ignores them), ``null``
stands for a field's zero value, and field names match case-insensitively, as in
Go's decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from skiff.core.api.errors import BadRequest

INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class MapOf:
    """A JSON object of any keys whose values have one shape (a Go map[string]T)."""

    value: Shape


@dataclass(frozen=True)
class StrSlice:
    """A string or a list of strings (Docker's ``strslice.StrSlice``: Cmd, Entrypoint)."""


@dataclass(frozen=True)
class Anything:
    """Any JSON value (a field skiff does not read, or reads with its own checks)."""


Shape: TypeAlias = "type | dict[str, Shape] | list[Shape] | MapOf | StrSlice | Anything"

_GO = {str: "string", int: "int64", bool: "bool", float: "float64"}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _go_type(shape: Shape) -> str:
    if isinstance(shape, type):
        return _GO.get(shape, shape.__name__)
    if isinstance(shape, list):
        return "[]" + _go_type(shape[0])
    if isinstance(shape, MapOf):
        return "map[string]" + _go_type(shape.value)
    if isinstance(shape, StrSlice):
        return "strslice.StrSlice"
    return "struct"


def _refuse(value: Any, shape: Shape, struct: str, path: str) -> BadRequest:
    where = f"Go struct field {struct}.{path}" if path else f"Go value of type {struct}"
    return BadRequest(f"json: cannot unmarshal {_json_kind(value)} into {where} "
                      f"of type {_go_type(shape)}")


def _check(value: Any, shape: Shape, struct: str, path: str) -> None:
    if value is None or isinstance(shape, Anything):
        return
    if isinstance(shape, StrSlice):
        if isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return
        raise _refuse(value, shape, struct, path)
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise _refuse(value, shape, struct, path)
        for item in value:
            _check(item, shape[0], struct, path)
        return
    if isinstance(shape, MapOf):
        if not isinstance(value, dict):
            raise _refuse(value, shape, struct, path)
        for item in value.values():
            _check(item, shape.value, struct, path)
        return
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise _refuse(value, shape, struct, path)
        fields = {k.lower(): (k, s) for k, s in shape.items()}
        for key, item in value.items():
            known = fields.get(str(key).lower())
            if known is not None:
                _check(item, known[1], struct, f"{path}.{known[0]}" if path else known[0])
        return
    if shape is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(value, shape, struct, path)
        if (isinstance(value, float) and not value.is_integer()) or \
                not INT64[0] <= value <= INT64[1]:
            raise _refuse(value, shape, struct, path)
        return
    if shape is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(value, shape, struct, path)
        return
    if not isinstance(value, shape) or (shape is not bool and isinstance(value, bool)):
        raise _refuse(value, shape, struct, path)


def checked(body: Any, shape: Mapping[str, Shape], struct: str) -> dict[str, Any]:
    """``body`` if its known fields have their JSON types (``null`` is ``{}``); else a
    400 naming the field, in dockerd's words."""
    if body is None:
        return {}
    _check(body, dict(shape), struct, "")
    return dict(body)


# -- the bodies -----------------------------------------------------------------------

_STRS: Shape = [str]
_STRMAP: Shape = MapOf(str)
_THROTTLE: Shape = [{"Path": str, "Rate": int}]

RESOURCES: dict[str, Shape] = {
    "CpuShares": int, "Memory": int, "CgroupParent": str, "BlkioWeight": int,
    "BlkioWeightDevice": [{"Path": str, "Weight": int}],
    "BlkioDeviceReadBps": _THROTTLE, "BlkioDeviceWriteBps": _THROTTLE,
    "BlkioDeviceReadIOps": _THROTTLE, "BlkioDeviceWriteIOps": _THROTTLE,
    "CpuPeriod": int, "CpuQuota": int, "CpuRealtimePeriod": int, "CpuRealtimeRuntime": int,
    "CpusetCpus": str, "CpusetMems": str,
    "Devices": [{"PathOnHost": str, "PathInContainer": str, "CgroupPermissions": str}],
    "DeviceCgroupRules": _STRS,
    "DeviceRequests": [{"Driver": str, "Count": int, "DeviceIDs": _STRS,
                        "Capabilities": [_STRS], "Options": _STRMAP}],
    "KernelMemory": int, "KernelMemoryTCP": int, "MemoryReservation": int, "MemorySwap": int,
    "MemorySwappiness": int, "NanoCpus": int, "OomKillDisable": bool, "Init": bool,
    "PidsLimit": int, "Ulimits": [{"Name": str, "Soft": int, "Hard": int}],
    "CpuCount": int, "CpuPercent": int, "IOMaximumIOps": int, "IOMaximumBandwidth": int,
}
RESTART_POLICY: Shape = {"Name": str, "MaximumRetryCount": int}

HOST_CONFIG: dict[str, Shape] = {
    **RESOURCES,
    "Binds": _STRS, "ContainerIDFile": str, "LogConfig": {"Type": str, "Config": _STRMAP},
    "NetworkMode": str, "PortBindings": MapOf([{"HostIp": str, "HostPort": str}]),
    "RestartPolicy": RESTART_POLICY, "AutoRemove": bool, "VolumeDriver": str,
    "VolumesFrom": _STRS,
    "Mounts": [{"Target": str, "Source": str, "Type": str, "ReadOnly": bool,
                "Consistency": str,
                "BindOptions": {"Propagation": str, "NonRecursive": bool},
                "VolumeOptions": {"NoCopy": bool, "Labels": _STRMAP,
                                  "DriverConfig": {"Name": str, "Options": _STRMAP}},
                "TmpfsOptions": {"SizeBytes": int, "Mode": int}}],
    "CapAdd": _STRS, "CapDrop": _STRS, "CgroupnsMode": str, "Dns": _STRS,
    "DnsOptions": _STRS, "DnsSearch": _STRS, "ExtraHosts": _STRS, "GroupAdd": _STRS,
    "IpcMode": str, "Cgroup": str, "Links": _STRS, "OomScoreAdj": int, "PidMode": str,
    "Privileged": bool, "PublishAllPorts": bool, "ReadonlyRootfs": bool,
    "SecurityOpt": _STRS, "StorageOpt": _STRMAP, "Tmpfs": _STRMAP, "UTSMode": str,
    "UsernsMode": str, "ShmSize": int, "Sysctls": _STRMAP, "Runtime": str,
    "ConsoleSize": [int], "Isolation": str, "MaskedPaths": _STRS, "ReadonlyPaths": _STRS,
}

ENDPOINT: dict[str, Shape] = {
    "IPAMConfig": {"IPv4Address": str, "IPv6Address": str, "LinkLocalIPs": _STRS},
    "Links": _STRS, "Aliases": _STRS, "NetworkID": str, "EndpointID": str, "Gateway": str,
    "IPAddress": str, "IPPrefixLen": int, "IPv6Gateway": str, "GlobalIPv6Address": str,
    "GlobalIPv6PrefixLen": int, "MacAddress": str, "DriverOpts": _STRMAP,
}

CONTAINER_CONFIG: dict[str, Shape] = {
    "Hostname": str, "Domainname": str, "User": str, "AttachStdin": bool,
    "AttachStdout": bool, "AttachStderr": bool, "ExposedPorts": MapOf(Anything()),
    "Tty": bool, "OpenStdin": bool, "StdinOnce": bool, "Env": _STRS, "Cmd": StrSlice(),
    "Healthcheck": {"Test": StrSlice(), "Interval": int, "Timeout": int, "Retries": int,
                    "StartPeriod": int},
    "ArgsEscaped": bool, "Image": str, "Volumes": MapOf(Anything()), "WorkingDir": str,
    "Entrypoint": StrSlice(), "NetworkDisabled": bool, "MacAddress": str, "OnBuild": _STRS,
    "Labels": _STRMAP, "StopSignal": str, "StopTimeout": int, "Shell": StrSlice(),
}

CONTAINER_CREATE: dict[str, Shape] = {
    **CONTAINER_CONFIG, "HostConfig": HOST_CONFIG,
    "NetworkingConfig": {"EndpointsConfig": MapOf(ENDPOINT)},
}
CONTAINER_UPDATE: dict[str, Shape] = {**RESOURCES, "RestartPolicy": RESTART_POLICY,
                                      # skiff's extension: bandwidth labels (docs/limits.md)
                                      "SkiffNetRates": _STRMAP}

NETWORK_CREATE: dict[str, Shape] = {
    "Name": str, "CheckDuplicate": bool, "Driver": str, "Internal": bool, "Attachable": bool,
    "Ingress": bool, "EnableIPv6": bool, "Scope": str, "ConfigOnly": bool,
    "ConfigFrom": {"Network": str},
    "IPAM": {"Driver": str, "Options": _STRMAP,
             "Config": [{"Subnet": str, "IPRange": str, "Gateway": str,
                         "AuxiliaryAddresses": _STRMAP}]},
    "Options": _STRMAP, "Labels": _STRMAP,
}
NETWORK_CONNECT: dict[str, Shape] = {"Container": str, "EndpointConfig": ENDPOINT}
NETWORK_DISCONNECT: dict[str, Shape] = {"Container": str, "Force": bool}

VOLUME_CREATE: dict[str, Shape] = {"Name": str, "Driver": str, "DriverOpts": _STRMAP,
                                   "Labels": _STRMAP}

EXEC_CONFIG: dict[str, Shape] = {
    "AttachStdin": bool, "AttachStdout": bool, "AttachStderr": bool, "DetachKeys": str,
    "Tty": bool, "Env": _STRS, "Cmd": StrSlice(), "Privileged": bool, "User": str,
    "WorkingDir": str, "ConsoleSize": [int],
}
EXEC_START: dict[str, Shape] = {"Detach": bool, "Tty": bool, "ConsoleSize": [int]}

AUTH_CONFIG: dict[str, Shape] = {
    "username": str, "password": str, "auth": str, "email": str, "serveraddress": str,
    "identitytoken": str, "registrytoken": str,
}


def check(body: Any, shape: Mapping[str, Shape], struct: str) -> None:
    """:func:`checked` for a handler that keeps its own reading of ``null`` and non-objects
    of the right kind: only the types of what is there are checked."""
    if body is not None:
        checked(body, shape, struct)
