"""The files a container's /etc/hostname, /etc/hosts and /etc/resolv.conf are
bind-mounted from, written as Docker writes them."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from typing import Any

from skiff.core.containers.config import dns_settings, extra_hosts
from skiff.core.containers.endpoints import requested
from skiff.core.containers.links import Lookup, first_ip, linked
from skiff.core.containers.model import Container
from skiff.core.errors import InvalidParameter
from skiff.core.hookspecs import NetworkNamespace
from skiff.core.networks import Network

#: a namespace of the container's own: what a caller that names none means
NEW = NetworkNamespace("new")

#: what a caller passing ``True`` for a name server means: the address of
#: Docker's embedded DNS, which the bridge driver serves (``nameserver``)
EMBEDDED_DNS = "127.0.0.11"

_LOCAL_HOSTS = [
    "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix",
    "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters",
]


def write_at_create(c: Container, nameserver: str | bool,
                    netns: NetworkNamespace = NEW) -> None:
    """hostname, hosts and resolv.conf of a new container.

    ``nameserver``: the name server its network's driver runs for it (the
    bridge's embedded DNS on a user-defined network, as Docker's), "" for
    none: the host's resolvers.  ``netns``: where its network stack comes
    from; in the host's, the host's /etc/hosts and resolvers.
    """
    with open(c.hostname_path, "w") as f:
        f.write(c.config["Hostname"] + "\n")
    if netns.kind == "host":
        shutil.copyfile("/etc/hosts", c.hosts_path)
        with open(c.hosts_path, "a") as f:
            f.write("".join(f"{ip}\t{name}\n" for ip, name in extra_hosts(c.host_config)))
    else:
        with open(c.hosts_path, "w") as f:
            f.write("\n".join(_local_and_extra(c)) + "\n")
    text = resolv_conf_text(c, nameserver, netns)
    with open(c.resolv_conf_path, "w") as f:
        f.write(text)
    _remember(c, text.encode())
    idmap = c.idmap
    if idmap is not None:
        # bind-mounted, not idmapped: the container's root owns them, as
        # dockerd chowns them to the remapped root
        for path in (c.hostname_path, c.hosts_path, c.resolv_conf_path):
            os.chown(path, idmap.root_uid, idmap.root_gid)


def _local_and_extra(c: Container) -> list[str]:
    """The standard entries, then ``--add-host``'s, as Docker orders them."""
    return [*_LOCAL_HOSTS, *(f"{ip}\t{name}" for ip, name in extra_hosts(c.host_config))]


def write_hosts(c: Container, lookup: Lookup, netns: NetworkNamespace = NEW,
                extra: Sequence[tuple[str, str]] = ()) -> None:
    """/etc/hosts with the container's own addresses and its links, then
    ``extra`` (address, names) from its network drivers (in place); nothing in
    the host's namespace or one joined (the owner's file is used)."""
    if netns.kind != "new":
        return
    lines = _local_and_extra(c)
    for other, alias in linked(c, lookup):
        ip = first_ip(other)
        if ip:
            names = dict.fromkeys([alias, other.config.get("Hostname") or "", other.name])
            lines.append(f"{ip}\t{' '.join(n for n in names if n)}")
    hostname = c.config.get("Hostname") or c.id[:12]
    for settings in c.networks.values():
        for key in ("IPAddress", "GlobalIPv6Address"):  # dockerd's order: IPv4, then IPv6
            if settings.get(key):
                lines.append(f"{settings[key]}\t{hostname}")
    lines.extend(f"{ip}\t{names}" for ip, names in extra)
    # Truncate and rewrite the same inode: it is bind-mounted into the container.
    with open(c.hosts_path, "w") as f:
        f.write("\n".join(lines) + "\n")


def resolv_conf_text(c: Container, nameserver: str | bool,
                     netns: NetworkNamespace = NEW) -> str:
    """What /etc/resolv.conf holds, as dockerd 20.10 writes it.

    With a ``nameserver`` (a driver's, such as the embedded server), its address, with the
    container's ``--dns-search``/``--dns-option`` or else the host's search
    domains and options, and ``ndots:0`` unless an ndots is given (its
    ``--dns`` servers are the embedded server's upstreams for it, see
    ``Endpoint.dns_servers``).  Elsewhere the host-derived file, in which each
    of ``--dns``, ``--dns-search`` and ``--dns-option`` given replaces the
    host's lines of its kind.
    """
    servers, search, options = dns_settings(c.host_config)
    if nameserver:
        _, host_search, host_options = _parse_resolv(resolv_conf_for(netns.kind))
        options = options or host_options
        if not any(o.startswith("ndots:") for o in options):
            options = [*options, "ndots:0"]
        address = EMBEDDED_DNS if nameserver is True else str(nameserver)
        return _build_resolv(search or host_search, [address], options)
    text = resolv_conf_for(netns.kind)
    if not (servers or search or options):
        return text
    host_servers, host_search, host_options = _parse_resolv(text)
    return _build_resolv(search or host_search, servers or host_servers,
                         options or host_options)


def _parse_resolv(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search domains, options) of a resolv.conf; the last
    search line counts, as for the resolver."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options.extend(words[1:])
    return servers, search, options


def _build_resolv(search: list[str], servers: list[str], options: list[str]) -> str:
    lines = []
    if search and search != ["."]:  # "." means no search domain, as for dockerd
        lines.append("search " + " ".join(search))
    lines += [f"nameserver {s}" for s in servers]
    if options:
        lines.append("options " + " ".join(options))
    return "".join(line + "\n" for line in lines)


def write_resolv_conf(c: Container, nameserver: str | bool,
                      netns: NetworkNamespace = NEW) -> None:
    """Rewrite resolv.conf in place when its resolver changes (``network connect``
    and ``disconnect``, start), unless the user has edited it since.

    The file is bind-mounted into a running container, so the same inode is
    truncated and rewritten through one descriptor; ``O_NOFOLLOW``: the daemon
    never follows a link where its own file should be.
    """
    if netns.kind == "join":  # the owner's file is bind-mounted instead
        return
    text = resolv_conf_text(c, nameserver, netns).encode()
    fd = os.open(c.resolv_conf_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        old = b""
        while chunk := os.read(fd, 65536):
            old += chunk
        if old == text or not _ours(c, old):
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    finally:
        os.close(fd)
    _remember(c, text)


def _hash_path(c: Container) -> str:
    return os.path.join(c.root, "resolv.conf.hash")


def _remember(c: Container, text: bytes) -> None:
    """Note what skiff wrote, to tell it from what a user wrote later."""
    with open(_hash_path(c), "w") as f:
        f.write(hashlib.sha256(text).hexdigest())


def _ours(c: Container, text: bytes) -> bool:
    """Whether resolv.conf still holds what skiff wrote: a file the user edited
    inside the container is kept, as dockerd keeps it (a record from before
    the hash counts as skiff's)."""
    try:
        with open(_hash_path(c)) as f:
            return f.read().strip() == hashlib.sha256(text).hexdigest()
    except FileNotFoundError:
        return True


def initial_networks(network_mode: str, body: dict[str, Any], hc: dict[str, Any],
                     network: Network | None = None, *, netns: NetworkNamespace = NEW,
                     sole: bool = False) -> dict[str, dict[str, Any]]:
    """The container's networks at create: its NetworkMode's, with EndpointsConfig
    (checked against ``network``: see ``endpoints.requested``) and
    Config.MacAddress, which dockerd ignores on a network whose driver has
    only that network (``sole``: host, none).  None in a joined namespace."""
    if netns.kind == "join":
        return {}
    networking = body.get("NetworkingConfig") or {}
    if not isinstance(networking, dict):
        raise InvalidParameter("NetworkingConfig must be a JSON object")
    configs = networking.get("EndpointsConfig") or {}
    if not isinstance(configs, dict):
        raise InvalidParameter("NetworkingConfig.EndpointsConfig must be a JSON object")
    mode = hc.get("NetworkMode") or "default"
    cfg = configs.get(mode) or configs.get(network_mode) or {}
    mac = (body.get("MacAddress") or "") if not sole else ""
    settings = requested(cfg, config_mac=mac if isinstance(mac, str) else "",
                         subnet=network.subnet if network else "",
                         predefined=network.predefined if network else False,
                         user_subnet=network.user_subnet if network else True,
                         subnet6=network.subnet6 if network else None)
    if network_mode == "bridge" and hc.get("Links"):
        settings["Links"] = list(hc["Links"])
    if network is not None:
        check_v6_bindings(hc, network)
    return {network_mode: settings}


def check_v6_bindings(hc: dict[str, Any], network: Network) -> None:
    """Refuse at create what would fail at start: a port published on an IPv6
    host address of a network without IPv6.  What else a driver cannot
    publish (a protocol, a firewall turned off) its ``check_endpoint`` says."""
    for key, bindings in (hc.get("PortBindings") or {}).items():
        for b in bindings or []:
            host_ip = str((b or {}).get("HostIp") or "")
            if ":" not in host_ip:
                continue
            if not network.subnet6:
                raise InvalidParameter(
                    f"cannot publish {key} on {host_ip}: network {network.name} has no IPv6 "
                    "subnet (docker network create --ipv6 --subnet ...)")


def resolv_conf_for(kind: str) -> str:
    """The host's resolv.conf; loopback resolvers are dropped unless the
    namespace's ``kind`` is ``host`` (``NetworkNamespace.kind``)."""
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    if kind == "host":
        return "\n".join(lines) + "\n"
    kept = [
        line for line in lines
        if not (line.startswith("nameserver") and len(line.split()) > 1
                and (line.split()[1].startswith("127.") or line.split()[1] == "::1"))
    ]
    return "\n".join(kept) + ("\n" if kept else "")
