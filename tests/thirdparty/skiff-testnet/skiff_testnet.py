"""``testnet``: a third-party network driver, as a package outside skiff would ship one.

Each container of a ``testnet`` network gets a macvlan interface (mode
``bridge``) on the host device named by the network's ``-o parent=``, made
directly inside the container's namespace, with an address of the network's
subnet (the daemon chooses the subnet; this driver hands out addresses) and
a default route through the gateway; ``--driver-opt testnet.mtu=N`` on an
endpoint sets its MTU.  It runs no name server: a container's /etc/hosts gets
the names of the network's containers already running (``hosts``).
Containers on one parent reach each other through it; the host does not (a
macvlan never talks to its parent).

It uses only the contract (``skiff.core.hookspecs``) and ``ip(8)``: it says
what it is through the contract's class attributes and is installed by an
entry point in group ``skiff.network`` and nothing else.  The worked example
of docs/networking.md, "The network driver contract".
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Literal

from skiff.core.hookspecs import Endpoint, NetworkContext, NetworkOptions, hookimpl

NAME = "testnet"
GLOBAL_NAME = "testnet-global"
PARENT_OPT = "parent"
#: an endpoint's ``--driver-opt``: the interface's MTU
MTU_OPT = "testnet.mtu"

#: the plugin contract this module was written for
SKIFF_CONTRACT = "2.7"


def _ip(*args: str, netns: str = "") -> str:
    """Run ``ip`` (inside the namespace file ``netns`` when given); its stdout."""
    cmd = ["ip", *args]
    if netns:
        cmd = ["nsenter", f"--net={netns}", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


@dataclass
class MacvlanEndpoint(Endpoint):
    """What this driver made: the daemon hands this object back to ``leave``."""

    ifname: str = ""  #: the interface's name inside the container
    mtu: int = 0  #: 0: the parent's
    netns: str = ""  #: the namespace file it was made in


@dataclass
class _Net:
    parent: str
    subnet: ipaddress.IPv4Network
    gateway: str
    taken: set[str]
    #: joined endpoints: endpoint ID -> (address, names), for ``hosts``
    members: dict[str, tuple[str, str]] = field(default_factory=dict)


class MacvlanDriver:
    """Containers on a macvlan of the network's parent device."""

    name = NAME
    netns: Literal["new", "host"] = "new"
    scope = "local"
    ipam = "engine"  # the daemon picks subnets; addresses are handed out here
    ipv6 = False  # the daemon refuses an IPv6 subnet for these networks
    nameserver = ""  # no name server: containers get the host's resolvers

    def __init__(self, ctx: NetworkContext) -> None:
        self.ctx = ctx
        self._nets: dict[str, _Net] = {}
        self._lock = threading.Lock()  # calls for different containers run concurrently

    def create_network(self, network_id: str, options: NetworkOptions) -> None:
        parent = options.options.get(PARENT_OPT, "")
        if not parent:
            raise ValueError(f"the {self.name} driver needs -o {PARENT_OPT}=<host interface>")
        unknown = sorted(set(options.options) - {PARENT_OPT})
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for the {NAME} driver")
        try:
            socket.if_nametoindex(parent)  # this namespace's (a /sys mount may be another's)
        except OSError:
            raise ValueError(f"{PARENT_OPT} interface {parent} does not exist") from None
        if not options.subnet:
            raise ValueError(f"the {NAME} driver needs an IPv4 subnet")
        subnet = ipaddress.IPv4Network(options.subnet)
        gateway = options.gateway or str(subnet.network_address + 1)
        with self._lock:
            self._nets[network_id] = _Net(parent, subnet, gateway, {gateway})

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            self._nets.pop(network_id, None)

    def create_endpoint(self, network_id: str, endpoint: Endpoint) -> Endpoint:
        unknown = sorted(set(endpoint.driver_options) - {MTU_OPT})
        if unknown:
            raise ValueError(f"unknown endpoint option {unknown[0]!r} for the {NAME} driver")
        mtu = endpoint.driver_options.get(MTU_OPT, "0")
        if not mtu.isdigit() or not (int(mtu) == 0 or 68 <= int(mtu) <= 65535):
            raise ValueError(f"{MTU_OPT} must be an MTU from 68 to 65535, not {mtu!r}")
        with self._lock:
            net = self._nets[network_id]
            if endpoint.requested_ip:
                if endpoint.requested_ip in net.taken:
                    raise ValueError(f"address {endpoint.requested_ip} is already in use")
                ip = endpoint.requested_ip
            else:
                ip = next((str(a) for a in net.subnet.hosts() if str(a) not in net.taken), "")
                if not ip:
                    raise ValueError(f"no address left in {net.subnet}")
            net.taken.add(ip)
        fields = {f: getattr(endpoint, f) for f in Endpoint.__dataclass_fields__}
        ep = MacvlanEndpoint(**fields)
        ep.ip_address, ep.ip_prefix_len, ep.gateway = ip, net.subnet.prefixlen, net.gateway
        ep.mtu = int(mtu)
        # locally administered, unicast
        ep.mac_address = endpoint.requested_mac or "02:" + ":".join(
            f"{b:02x}" for b in secrets.token_bytes(5))
        return ep

    def join(self, endpoint: Endpoint, pid: int) -> None:
        ep = _own(endpoint)
        net = self._nets[ep.network_id]
        ns = f"/proc/{pid}/ns/net"
        links = {line.split(":")[1].strip().split("@")[0]
                 for line in _ip("-o", "link", netns=ns).splitlines()}
        ep.ifname = next(f"eth{i}" for i in range(len(links) + 1) if f"eth{i}" not in links)
        ep.netns = ns
        # made directly inside the container's namespace: never a name on the host
        mtu = ["mtu", str(ep.mtu)] if ep.mtu else []
        _ip("link", "add", "link", net.parent, "name", ep.ifname, "netns", str(pid),
            "address", ep.mac_address, *mtu, "type", "macvlan", "mode", "bridge")
        _ip("addr", "add", f"{ep.ip_address}/{ep.ip_prefix_len}", "dev", ep.ifname, netns=ns)
        _ip("link", "set", ep.ifname, "up", netns=ns)
        if not _ip("route", "show", "default", netns=ns).strip():
            _ip("route", "add", "default", "via", ep.gateway, "dev", ep.ifname, netns=ns)
        names = " ".join(dict.fromkeys(n for n in (ep.name, *ep.aliases) if n))
        with self._lock:
            net.members[ep.endpoint_id] = (ep.ip_address, names)

    def hosts(self, endpoint: Endpoint) -> list[tuple[str, str]]:
        """Name resolution without a name server: the container's /etc/hosts
        gets the names of the network's containers already joined."""
        with self._lock:
            net = self._nets.get(endpoint.network_id)
            if net is None:
                return []
            return [entry for eid, entry in net.members.items()
                    if eid != endpoint.endpoint_id and entry[1]]

    def leave(self, endpoint: Endpoint) -> None:
        ep = _own(endpoint)
        with self._lock:
            net = self._nets.get(ep.network_id)
            if net is not None:
                net.members.pop(ep.endpoint_id, None)
        # the interface goes with the namespace; a running container
        # disconnected from the network keeps its namespace, so delete it
        if ep.netns and os.path.exists(ep.netns):
            with contextlib.suppress(RuntimeError):  # already gone with its namespace
                _ip("link", "del", ep.ifname, netns=ep.netns)
        ep.netns = ""

    def delete_endpoint(self, endpoint: Endpoint) -> None:
        with self._lock:
            net = self._nets.get(endpoint.network_id)
            if net is not None:
                net.taken.discard(endpoint.ip_address)


def _own(endpoint: Endpoint) -> MacvlanEndpoint:
    if not isinstance(endpoint, MacvlanEndpoint):
        raise TypeError(f"endpoint {endpoint.endpoint_id[:12]} was not made by {NAME}")
    return endpoint


class GlobalMacvlanDriver(MacvlanDriver):
    """The same driver declaring ``scope = "global"``: what the daemon requires of
    a global-scope driver's networks (a cluster store) is tested with it."""

    name = GLOBAL_NAME
    scope = "global"


@hookimpl
def skiff_network_drivers() -> dict[str, object]:
    return {NAME: MacvlanDriver, GLOBAL_NAME: GlobalMacvlanDriver}
