"""daemon.json ``cluster-store``, ``cluster-advertise`` and ``cluster-store-opts``.

Parsed at start, before anything is built: a store that cannot be spoken to
as configured refuses the start with the key named, never later.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: cluster-store-opts keys skiff honours; dockerd's others (kv.path of
#: libkv's other stores, discovery.* of swarm classic) are refused by name
TLS_KEYS = ("kv.cacertfile", "kv.certfile", "kv.keyfile")
TIMING_KEYS = ("discovery.ttl", "discovery.heartbeat")
#: dockerd's defaults for the node's registration
DEFAULT_TTL = 60
DEFAULT_HEARTBEAT = 20


@dataclass(frozen=True)
class ClusterSettings:
    """Where the store is and how this daemon announces itself there."""

    store: str  #: as configured, ``etcd://host:port[,host:port]``: named in every error
    endpoints: tuple[str, ...]  #: ``http[s]://host:port`` of each etcd member
    advertise: str  #: ``IP:port`` or ``interface:port``, resolved at start
    ttl: int  #: seconds the registration outlives a silent daemon
    heartbeat: int  #: seconds between keep-alives (well under ``ttl``)
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.cafile or self.certfile)


def _seconds(key: str, text: str) -> int:
    value = text.strip().removesuffix("s")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"cluster-store-opts {key}={text!r}: use a whole number of seconds "
                         "such as 20 or 20s")
    return int(value)


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {text!r}: expected host:port")
    return host.strip("[]"), int(port)


def parse(config: Mapping[str, Any]) -> ClusterSettings | None:
    """The settings, or None when no store is configured; ``ValueError`` names the key."""
    store = config.get("cluster-store") or ""
    advertise = config.get("cluster-advertise") or ""
    opts: Mapping[str, str] = config.get("cluster-store-opts") or {}
    if not store:
        if advertise or opts:
            key = "cluster-advertise" if advertise else "cluster-store-opts"
            raise ValueError(f"'{key}' is set but 'cluster-store' is not; set both or neither")
        return None
    scheme, sep, rest = store.partition("://")
    if not sep or scheme != "etcd":
        raise ValueError(
            f"'cluster-store' {store!r}: skiff's cluster store is etcd; use "
            "etcd://host:port[,host:port] (consul:// and zk:// are not supported)")
    members = [m for m in rest.strip("/").split(",") if m]
    if not members:
        raise ValueError(f"'cluster-store' {store!r}: no etcd member given")
    unknown = sorted(set(opts) - set(TLS_KEYS) - set(TIMING_KEYS))
    if unknown:
        raise ValueError(
            f"'cluster-store-opts' key(s) not supported: {', '.join(unknown)} "
            f"(use {', '.join(TLS_KEYS + TIMING_KEYS)})")
    for key in TLS_KEYS:
        path = opts.get(key, "")
        if path and not os.path.isfile(path):
            raise ValueError(f"cluster-store-opts {key}: {path} is not a file")
    if bool(opts.get("kv.certfile")) != bool(opts.get("kv.keyfile")):
        raise ValueError("cluster-store-opts: kv.certfile and kv.keyfile go together")
    ttl = _seconds("discovery.ttl", opts["discovery.ttl"]) if "discovery.ttl" in opts \
        else DEFAULT_TTL
    beat = _seconds("discovery.heartbeat", opts["discovery.heartbeat"]) \
        if "discovery.heartbeat" in opts else min(DEFAULT_HEARTBEAT, max(1, ttl // 3))
    if beat >= ttl:
        raise ValueError(f"cluster-store-opts: discovery.heartbeat ({beat}s) must be shorter "
                         f"than discovery.ttl ({ttl}s), or the registration lapses between beats")
    tls = any(opts.get(k) for k in TLS_KEYS)
    scheme_out = "https" if tls else "http"
    endpoints = []
    for member in members:
        host, port = _host_port(member, "'cluster-store' member")
        bracketed = f"[{host}]" if ":" in host else host
        endpoints.append(f"{scheme_out}://{bracketed}:{port}")
    if not advertise:
        raise ValueError("'cluster-store' is set but 'cluster-advertise' is not: other hosts "
                         "need this one's address (IP:port or interface:port)")
    _host_port(advertise, "'cluster-advertise'")
    return ClusterSettings(store=store, endpoints=tuple(endpoints), advertise=advertise,
                           ttl=ttl, heartbeat=beat, cafile=opts.get("kv.cacertfile", ""),
                           certfile=opts.get("kv.certfile", ""),
                           keyfile=opts.get("kv.keyfile", ""))


def resolve_advertise(advertise: str) -> str:
    """``IP:port`` as given, or ``interface:port`` with the interface's first address.

    Resolved at start, as dockerd does: an interface that is absent or has no
    address refuses the start (``ValueError``).
    """
    host, port = _host_port(advertise, "'cluster-advertise'")
    try:
        addr = ipaddress.ip_address(host)
        return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
    except ValueError:
        pass
    try:
        socket.if_nametoindex(host)
    except OSError:
        raise ValueError(f"'cluster-advertise' {advertise!r}: {host} is neither an IP address "
                         "nor a network interface of this host") from None
    from pyroute2 import IPRoute  # only for interface:port

    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_addr(label=host, family=family) if family == socket.AF_INET \
                    else ipr.get_addr(index=socket.if_nametoindex(host), family=family):
                ip = msg.get_attr("IFA_ADDRESS")
                if ip and not ipaddress.ip_address(ip).is_link_local:
                    return f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
    raise ValueError(f"'cluster-advertise' {advertise!r}: interface {host} has no address")
