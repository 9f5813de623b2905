"""Where a registry answers: endpoints, mirrors, insecure registries, timeouts.

daemon.json's registry keys resolved once per pull or push (:class:`RegistryConfig`)
and the endpoint list it yields for a registry domain; no network I/O here
beyond the name lookup that decides whether a host is insecure.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DOCKER_HUB_ENDPOINT", "MAX_DOCUMENT", "USER_AGENT", "Endpoint", "RegistryConfig"]

DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
#: the largest manifest, config or token answer we read into memory
#: (registries cap manifests at 4 MiB)
MAX_DOCUMENT = 16 << 20
#: sent with every request to a registry and its token service
USER_AGENT = "skiff/0.1 (docker-compatible)"


@dataclass(frozen=True)
class Endpoint:
    """Where one registry answers: ``scheme://host[:port]``."""

    scheme: str
    netloc: str
    mirror: bool = False

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def _host_of(netloc: str) -> str:
    if netloc.startswith("["):
        return netloc[1:netloc.index("]")]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


@dataclass
class RegistryConfig:
    """daemon.json's registry keys, resolved once per pull or push."""

    insecure: Sequence[str] = ()
    mirrors: Sequence[str] = ()
    #: pull mirrors of registries other than Docker Hub, by domain (containerd's
    #: per-registry mirrors): the image keeps its own name, its bytes come from
    #: the first mirror that has them, else from the registry itself
    domain_mirrors: Mapping[str, Sequence[str]] = field(default_factory=dict)
    timeout: float = 30.0
    attempts: int = 5
    max_downloads: int = 3
    max_uploads: int = 5
    _nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Docker treats loopback as insecure by default: a local registry is plain HTTP
        nets = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
        for item in self.insecure:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                continue
        self._nets = nets

    @classmethod
    def from_daemon_config(cls, config: Mapping[str, Any]) -> RegistryConfig:
        return cls(
            insecure=list(config.get("insecure-registries") or []),
            mirrors=list(config.get("registry-mirrors") or []),
            domain_mirrors=dict(config.get("registry-domain-mirrors") or {}),
            timeout=float(config.get("registry-timeout") or 30),
            attempts=int(config.get("max-download-attempts") or 5),
            max_downloads=int(config.get("max-concurrent-downloads") or 3),
            max_uploads=int(config.get("max-concurrent-uploads") or 5),
        )

    def is_insecure(self, netloc: str) -> bool:
        if netloc in self.insecure:
            return True
        host = _host_of(netloc)
        if host == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:
                ip = ipaddress.ip_address(socket.gethostbyname(host))
            except (OSError, ValueError):
                return False
        return any(ip in net for net in self._nets)

    def endpoints(self, domain: str, *, push: bool = False) -> list[Endpoint]:
        """Where to talk to ``domain``; mirrors first for Docker Hub pulls (as dockerd)."""
        mirrors = self.mirrors if domain == "docker.io" else self.domain_mirrors.get(domain, ())
        out = []
        if not push:
            for m in mirrors:
                parts = urlsplit(m if "://" in m else "https://" + m)
                out.append(Endpoint(parts.scheme, parts.netloc, mirror=True))
        if domain == "docker.io":
            hub = urlsplit(DOCKER_HUB_ENDPOINT)
            return [*out, Endpoint(hub.scheme, hub.netloc)]
        # An insecure registry speaks plain HTTP.  dockerd would first try TLS
        # without verification; skiff goes straight to HTTP (see the README).
        return [*out, Endpoint("http" if self.is_insecure(domain) else "https", domain)]
