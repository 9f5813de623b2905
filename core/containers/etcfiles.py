"""The files a container's /etc/hostname, /etc/hosts and /etc/resolv.conf are
bind-mounted from, written as Docker writes them."""

from __future__ import annotations

import os
import shutil
from typing import Any

from skiff.core.containers.config import extra_hosts
from skiff.core.containers.links import Lookup, first_ip, linked
from skiff.core.containers.model import Container

EMBEDDED_DNS = "127.0.0.11"

_LOCAL_HOSTS = [
    "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix",
    "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters",
]


def write_at_create(c: Container, embedded_dns: bool) -> None:
    """hostname, hosts and resolv.conf of a new container.

    ``embedded_dns``: its network is a user-defined bridge, whose containers
    resolve through the embedded DNS server, as Docker's do.
    """
    with open(c.hostname_path, "w") as f:
        f.write(c.config["Hostname"] + "\n")
    if c.network_mode == "host":
        shutil.copyfile("/etc/hosts", c.hosts_path)
        with open(c.hosts_path, "a") as f:
            f.write("".join(f"{ip}\t{name}\n" for ip, name in extra_hosts(c.host_config)))
    else:
        with open(c.hosts_path, "w") as f:
            f.write("\n".join(_local_and_extra(c)) + "\n")
    with open(c.resolv_conf_path, "w") as f:
        if embedded_dns:
            f.write(f"nameserver {EMBEDDED_DNS}\noptions ndots:0\n")
        else:
            f.write(resolv_conf_for(c.network_mode))
    idmap = c.idmap
    if idmap is not None:
        # bind-mounted, not idmapped: the container's root owns them, as
        # dockerd chowns them to the remapped root
        for path in (c.hostname_path, c.hosts_path, c.resolv_conf_path):
            os.chown(path, idmap.root_uid, idmap.root_gid)


def _local_and_extra(c: Container) -> list[str]:
    """The standard entries, then ``--add-host``'s, as Docker orders them."""
    return [*_LOCAL_HOSTS, *(f"{ip}\t{name}" for ip, name in extra_hosts(c.host_config))]


def write_hosts(c: Container, lookup: Lookup) -> None:
    """/etc/hosts with the container's own addresses and its links (in place)."""
    if c.network_mode == "host" or c.network_mode.startswith("container:"):
        return
    lines = _local_and_extra(c)
    for other, alias in linked(c, lookup):
        ip = first_ip(other)
        if ip:
            names = dict.fromkeys([alias, other.config.get("Hostname") or "", other.name])
            lines.append(f"{ip}\t{' '.join(n for n in names if n)}")
    hostname = c.config.get("Hostname") or c.id[:12]
    for settings in c.networks.values():
        if settings.get("IPAddress"):
            lines.append(f"{settings['IPAddress']}\t{hostname}")
    # Truncate and rewrite the same inode: it is bind-mounted into the container.
    with open(c.hosts_path, "w") as f:
        f.write("\n".join(lines) + "\n")


def initial_networks(network_mode: str, body: dict[str, Any], hc: dict[str, Any]
                     ) -> dict[str, dict[str, Any]]:
    """The container's networks at create: its NetworkMode's, with EndpointsConfig."""
    if network_mode.startswith("container:"):
        return {}
    configs = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    requested = hc.get("NetworkMode") or "default"
    cfg = configs.get(requested) or configs.get(network_mode) or {}
    settings = {"IPAMConfig": cfg.get("IPAMConfig"), "Links": cfg.get("Links"),
                "Aliases": cfg.get("Aliases")}
    if network_mode == "bridge" and hc.get("Links"):
        settings["Links"] = list(hc["Links"])
    return {network_mode: settings}


def resolv_conf_for(network_mode: str) -> str:
    """The host's resolv.conf; loopback resolvers are dropped outside the host netns."""
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    if network_mode == "host":
        return "\n".join(lines) + "\n"
    kept = [
        line for line in lines
        if not (line.startswith("nameserver") and len(line.split()) > 1
                and (line.split()[1].startswith("127.") or line.split()[1] == "::1"))
    ]
    return "\n".join(kept) + ("\n" if kept else "")
