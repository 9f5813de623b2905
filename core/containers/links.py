"""Docker's legacy container links (``--link name:alias``): who a container
links to, and the environment variables the link gives it."""

from __future__ import annotations

from collections.abc import Callable

from skiff.core.containers.model import Container
from skiff.core.errors import NotFound

#: a container by ID or name (``ContainerRegistry.get``)
Lookup = Callable[[str], Container]


def linked(c: Container, lookup: Lookup) -> list[tuple[Container, str]]:
    """Running containers that ``c`` links to (``--link name:alias``), with the alias."""
    out = []
    for link in c.host_config.get("Links") or []:
        target, _, alias = link.partition(":")
        try:
            other = lookup(target.strip("/"))
        except NotFound:
            continue
        if other.state.Running:
            out.append((other, alias.rsplit("/", 1)[-1] or other.name))
    return out


def first_ip(c: Container) -> str:
    """The first address ``c`` has on any of its networks ("" if none)."""
    return next((str(s["IPAddress"]) for s in c.networks.values() if s.get("IPAddress")), "")


def link_env(c: Container, lookup: Lookup) -> list[str]:
    """Docker's legacy link variables (ALIAS_PORT_80_TCP_ADDR ...)."""
    env: list[str] = []
    for other, alias in linked(c, lookup):
        prefix = alias.upper().replace("-", "_").replace(".", "_")
        ip = first_ip(other)
        env.append(f"{prefix}_NAME=/{c.name}/{alias}")
        ports = sorted(other.config.get("ExposedPorts") or {},
                       key=lambda k: int(k.partition("/")[0]))
        for i, key in enumerate(ports):
            port, _, proto = key.partition("/")
            proto = proto or "tcp"
            base = f"{prefix}_PORT_{port}_{proto.upper()}"
            if i == 0:
                env.append(f"{prefix}_PORT={proto}://{ip}:{port}")
            env += [f"{base}={proto}://{ip}:{port}", f"{base}_ADDR={ip}",
                    f"{base}_PORT={port}", f"{base}_PROTO={proto}"]
        for item in other.config.get("Env") or []:
            key, _, value = item.partition("=")
            if key not in ("HOME", "PATH", "HOSTNAME"):
                env.append(f"{prefix}_ENV_{key}={value}")
    return env
