"""Turning a create request and an image into a container's effective config.

Docker's rules: an Entrypoint given at create replaces the image's and drops
the image's Cmd; Env merges by key with the request winning; WorkingDir, User,
Labels, StopSignal, ExposedPorts and each unset field of Healthcheck fall
back to the image.
"""

from __future__ import annotations

import ipaddress
import re
import signal
from collections.abc import Mapping
from typing import Any

from skiff.core.containers import health

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CONFIG_KEYS = (
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr",
    "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Image", "Volumes",
    "WorkingDir", "Entrypoint", "OnBuild", "Labels", "StopSignal", "StopTimeout",
)


class InvalidConfig(ValueError):
    """The create request cannot make a container; the message says why."""


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidConfig(f"expected a string or a list of strings, got {value!r}")


def merge_env(image_env: list[str] | None, env: list[str] | None) -> list[str]:
    merged: dict[str, str] = {}
    for item in (image_env or []) + (env or []):
        key = item.split("=", 1)[0]
        merged.pop(key, None)  # a later value moves to the end, as Docker orders it
        merged[key] = item
    return list(merged.values())


def effective_config(body: Mapping[str, Any], image_config: Mapping[str, Any]) -> dict[str, Any]:
    """The container's Config: the request's fields with the image's defaults."""
    cfg: dict[str, Any] = {k: body.get(k) for k in CONFIG_KEYS}
    img = image_config or {}
    entrypoint = _as_list(body.get("Entrypoint"))
    cmd = _as_list(body.get("Cmd"))
    if entrypoint is not None:
        # An explicit entrypoint ([""] means "none") discards the image's Cmd.
        entrypoint = [e for e in entrypoint if e] or None
        if cmd is None:
            cmd = None
    else:
        entrypoint = _as_list(img.get("Entrypoint"))
        if cmd is None:
            cmd = _as_list(img.get("Cmd"))
    cfg["Entrypoint"] = entrypoint
    cfg["Cmd"] = cmd
    env = merge_env(img.get("Env"), _as_list(body.get("Env")))
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    cfg["Env"] = env
    cfg["WorkingDir"] = body.get("WorkingDir") or img.get("WorkingDir") or ""
    cfg["User"] = body.get("User") or img.get("User") or ""
    labels = dict(img.get("Labels") or {})
    labels.update(body.get("Labels") or {})
    cfg["Labels"] = labels
    cfg["StopSignal"] = body.get("StopSignal") or img.get("StopSignal") or None
    exposed = dict(img.get("ExposedPorts") or {})
    exposed.update(body.get("ExposedPorts") or {})
    cfg["ExposedPorts"] = exposed or None
    volumes = dict(img.get("Volumes") or {})
    volumes.update(body.get("Volumes") or {})
    cfg["Volumes"] = volumes or None
    for key in ("Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStdout", "AttachStderr"):
        cfg[key] = bool(body.get(key))
    cfg["Hostname"] = body.get("Hostname") or ""
    cfg["Domainname"] = body.get("Domainname") or ""
    health.check_config(body.get("Healthcheck"))  # the request's, before the image's merge
    healthcheck = health.merged(body.get("Healthcheck"), img.get("Healthcheck"))
    if healthcheck is not None:  # absent otherwise, as in dockerd's inspect
        cfg["Healthcheck"] = healthcheck
    shell = _as_list(body.get("Shell"))
    if shell:  # what a CMD-SHELL check runs in
        cfg["Shell"] = shell
    if not (entrypoint or cmd):
        raise InvalidConfig("No command specified")
    if cfg["WorkingDir"] and not cfg["WorkingDir"].startswith("/"):
        raise InvalidConfig(
            f"the working directory '{cfg['WorkingDir']}' is invalid, it needs to be an "
            "absolute path"
        )
    return cfg


def command_line(cfg: Mapping[str, Any]) -> tuple[str, list[str]]:
    argv = (cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])
    return argv[0], argv[1:]


def parse_signal(value: str | int | None, default: int = signal.SIGKILL) -> int:
    """``SIGTERM``, ``TERM``, ``15`` -> 15; a clear error otherwise."""
    if value is None or value == "":
        return int(default)
    if isinstance(value, int):
        sig = value
    elif value.isdigit():
        sig = int(value)
    else:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            sig = int(getattr(signal.Signals, name))
        except AttributeError:
            raise InvalidConfig(f"Invalid signal: {value}") from None
    if not 0 < sig < 65:
        raise InvalidConfig(f"Invalid signal: {value}")
    return sig


def normalize_host_config(hc: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(hc or {})
    out.setdefault("NetworkMode", "default")
    out.setdefault("Binds", None)
    out.setdefault("AutoRemove", False)
    out.setdefault("Privileged", False)
    out.setdefault("CapAdd", None)
    out.setdefault("CapDrop", None)
    out.setdefault("LogConfig", {"Type": "", "Config": {}})
    out.setdefault("RestartPolicy", {"Name": "", "MaximumRetryCount": 0})  # dockerd's
    out.setdefault("ReadonlyRootfs", False)
    out.setdefault("SecurityOpt", None)
    extra_hosts(out)  # refused at create, not at start
    _refuse_unhonoured(out)
    shm = out.get("ShmSize")
    if isinstance(shm, int) and shm < 0:
        raise InvalidConfig("SHM size can not be less than 0")  # dockerd's words
    oom = out.get("OomScoreAdj")
    if isinstance(oom, int) and not -1000 <= oom <= 1000:
        raise InvalidConfig(  # dockerd's words
            f"Invalid value {oom}, range for oom score adj is [-1000, 1000]")
    dns_settings(out)
    groups = out.get("GroupAdd")
    if groups is not None and not (isinstance(groups, list)
                                   and all(isinstance(g, str) for g in groups)):
        raise InvalidConfig("HostConfig.GroupAdd must be a list of group names or numbers")
    return out


def _refuse_unhonoured(hc: Mapping[str, Any]) -> None:
    """Settings skiff does not carry out yet are refused, never silently dropped."""
    if hc.get("Sysctls"):
        names = ", ".join(sorted(str(k) for k in hc["Sysctls"]))
        raise InvalidConfig(
            f"HostConfig.Sysctls ({names}): setting sysctls in a container is not "
            "supported by skiff yet; remove --sysctl")
    if hc.get("Cgroup"):
        raise InvalidConfig(
            f"HostConfig.Cgroup {hc['Cgroup']!r}: joining another container's cgroup is "
            "not supported by skiff yet")


def dns_settings(hc: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """``--dns``, ``--dns-search`` and ``--dns-option``, checked: each becomes
    one word of a resolv.conf line, so nothing may hide a second line or word."""
    servers = _as_list(hc.get("Dns")) or []
    search = _as_list(hc.get("DnsSearch")) or []
    options = _as_list(hc.get("DnsOptions")) or []
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidConfig(f"{server} is not an ip address (HostConfig.Dns)") from None
    for kind, words in (("DnsSearch", search), ("DnsOptions", options)):
        for word in words:
            if not word or any(ch.isspace() for ch in word):
                raise InvalidConfig(
                    f"HostConfig.{kind}: {word!r} is not a single word (no spaces or "
                    "line breaks)")
    return servers, search, options


#: daemon.json ``log-opts`` that every container takes, whatever its driver
_CACHE_OPTIONS = frozenset({"cache-disabled", "cache-max-size", "cache-max-file",
                            "cache-compress"})


def log_config(given: Any, default_type: str, default_opts: Mapping[str, str]
               ) -> dict[str, Any]:
    """HostConfig.LogConfig as dockerd keeps it: an empty Type is the daemon's
    log driver, a null Config is ``{}``, and the daemon's ``log-opts`` fill in
    the options not given when the driver is the daemon's."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise InvalidConfig("HostConfig.LogConfig must be an object with Type and Config")
    kind = given.get("Type") or default_type
    opts = given.get("Config")
    if opts is None:
        opts = {}
    if not isinstance(kind, str) or not isinstance(opts, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in opts.items()):
        raise InvalidConfig("HostConfig.LogConfig: Type must be a string and Config an "
                            "object of strings")
    config = dict(opts)
    for key, value in default_opts.items():
        # the dual-logging cache's options apply whatever the driver, as dockerd's
        if kind == default_type or key in _CACHE_OPTIONS:
            config.setdefault(key, value)
    return {"Type": kind, "Config": config}


def runtime(given: Any, default: str) -> str:
    """HostConfig.Runtime: empty means the daemon's; only that one runs containers."""
    if given in (None, ""):
        return default
    if given != default:
        # dockerd's words for a runtime it does not have (clients match on them)
        raise InvalidConfig(f"Unknown runtime specified {given}")
    return default


def extra_hosts(hc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``ExtraHosts`` (``--add-host name:ip``) as (ip, name) pairs, checked."""
    out = []
    for item in _as_list(hc.get("ExtraHosts")) or []:
        name, sep, ip = item.partition(":")
        if not sep:
            name, sep, ip = item.partition("=")
        if not sep or not name:
            raise InvalidConfig(f"bad format for add-host: {item!r} (use name:ip)")
        if ip == "host-gateway":
            raise InvalidConfig(
                f"add-host {item!r}: host-gateway is not supported yet; give the address "
                "(the bridge's gateway, daemon.json bip)")
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise InvalidConfig(f"invalid IP address in add-host: {ip!r}") from None
        out.append((ip.strip("[]"), name))
    return out


def parse_binds(binds: list[str] | None) -> list[tuple[str, str, list[str]]]:
    """``/host:/ctr[:ro]`` into (source, destination, options)."""
    out = []
    for bind in binds or []:
        parts = bind.split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise InvalidConfig(f"invalid volume specification: '{bind}'")
        src, dst = parts[0], parts[1]
        if not src.startswith("/"):
            raise InvalidConfig(
                f"invalid volume specification: '{bind}': named volumes are not "
                "supported yet; use an absolute host path"
            )
        mode = parts[2].split(",") if len(parts) == 3 else []
        for m in mode:
            if m not in ("ro", "rw", "z", "Z", "rprivate", "private", "rslave", "slave",
                         "rshared", "shared"):
                raise InvalidConfig(f"invalid mode: {m}")
        opts = ["rbind", "ro" if "ro" in mode else "rw"]
        out.append((src, dst, opts))
    return out
