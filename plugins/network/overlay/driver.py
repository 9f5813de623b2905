"""The ``overlay`` network driver: one L2 network across the nodes of a cluster.

Global scope: a network created on one node is on every node (the daemon
shares its record through the cluster store; ``core/cluster/globalnets.py``).
What the driver keeps in the store, under its own prefix
(``hookspecs.ClusterAccess``):

- ``vni/<vni>`` -> network ID, and ``net/<id>/vni``: the network's VXLAN ID,
  taken in one transaction so no two networks share one;
- ``net/<id>/ip/<address>`` -> endpoint ID, node-bound: an address is taken
  by one transaction on one node, so no address is handed out twice across
  the cluster, and it comes free when its node goes;
- ``net/<id>/ep/<endpoint>``, node-bound: where a joined endpoint is (its
  address, MAC, names and node's address), which every node follows to
  program its VXLAN (``dataplane.Sandbox.learn``) and to answer names.

Names: containers resolve the names and aliases of every endpoint of their
overlay networks, on any node, through a name server the driver runs inside
each container at ``NAMESERVER`` (skiff's bridge runs its own at 127.0.0.11;
a container names one server in resolv.conf, that of its first user-defined
network, and each answers with its siblings' names too: bridge/dns.py).
Other names are relayed to the daemon's upstreams.

Not here: ``-o encrypted`` (IPsec) is refused, as are published ports (no
gateway bridge to the host: attach the container to a bridge network as well
to publish or reach outside) and IPv6.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from skiff.core.hookspecs import (
    ClusterAccess,
    ClusterUnavailable,
    Endpoint,
    NetworkContext,
    NetworkOptions,
)
from skiff.plugins.network.bridge.dns import DnsServer, parse_upstreams
from skiff.plugins.network.overlay.dataplane import Sandbox, socket_inside

log = structlog.get_logger("skiff.network.overlay")

NAME = "overlay"
NAMESERVER = "127.0.0.12"
#: VXLAN IDs skiff hands out (Docker's overlay starts at 4096 too)
VNI_FIRST, VNI_LAST = 4096, (1 << 24) - 1
#: dockerd's overlay options skiff refuses by name rather than ignore
REFUSED_OPTIONS = {
    "encrypted": "encrypted overlay networks (IPsec) are not supported by skiff",
    "com.docker.network.driver.overlay.vxlanid_list": "skiff chooses VXLAN IDs itself "
    "(one per network, unique in the cluster)",
}


@dataclass
class OverlayEndpoint(Endpoint):
    """What the driver made for one endpoint; the daemon hands it back."""

    veth: str = ""  #: the host end, inside the network's sandbox


@dataclass
class Remote:
    """An endpoint as the store describes it."""

    ip: str
    mac: str
    vtep: str
    node: str
    names: list[str] = field(default_factory=list)
    container: str = ""


@dataclass
class OvNet:
    vni: int
    subnet: ipaddress.IPv4Network
    gateway: str
    sandbox: Sandbox
    #: every endpoint of the network in the cluster, by endpoint ID (from the store)
    endpoints: dict[str, Remote] = field(default_factory=dict)


def _mac_of(ip: str) -> str:
    """Docker's scheme: 02:42 and the IPv4 address, so MACs are unique where IPs are."""
    return "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


class OverlayDriver:
    """Containers of all nodes on one VXLAN segment per network."""

    name = NAME
    netns: Literal["new", "host"] = "new"
    scope = "global"
    ipam = "engine"  # the daemon picks the subnet; addresses are taken in the store
    ipv6 = False
    nameserver = NAMESERVER

    def __init__(self, ctx: NetworkContext) -> None:
        self.ctx = ctx
        self.cluster: ClusterAccess | None = ctx.cluster
        self.networks: dict[str, OvNet] = {}
        #: what the store holds under net/<id>/ep/, for networks not plumbed here too
        self._view: dict[str, dict[str, Remote]] = {}
        self._lock = threading.Lock()
        self._following = False
        self._dns_members: dict[str, int] = {}  # container id -> overlay endpoints joined
        self._containers: dict[str, set[str]] = {}  # container id -> network IDs joined
        self.dns = DnsServer(self._lookup, parse_upstreams(list(ctx.config.get("dns") or [])))

    def _store(self) -> ClusterAccess:
        if self.cluster is None:
            raise ValueError("overlay networks need a cluster store: set cluster-store and "
                             "cluster-advertise in daemon.json")
        if not self._following:
            self._following = True
            self.cluster.follow(self._changed, self._resync)
        return self.cluster

    # -- networks ----------------------------------------------------------------

    def create_network(self, network_id: str, options: NetworkOptions) -> None:
        for key in options.options:
            if key in REFUSED_OPTIONS:
                raise ValueError(REFUSED_OPTIONS[key])
            raise ValueError(f"unknown option {key!r} for the {NAME} driver")
        if not options.subnet:
            raise ValueError(f"the {NAME} driver needs an IPv4 subnet")
        store = self._store()
        with self._lock:
            if network_id in self.networks:
                return
        vni = self._vni(store, network_id)
        subnet = ipaddress.IPv4Network(options.subnet)
        gateway = options.gateway or str(subnet.network_address + 1)
        sandbox = Sandbox(vni, store.address)
        net = OvNet(vni, subnet, gateway, sandbox)
        with self._lock:
            self.networks[network_id] = net
            known = dict(self._view.get(network_id, {}))
        for eid, remote in known.items():
            self._learn(net, eid, remote)
        log.info("overlay.network_plumbed", network=network_id[:12], vni=vni,
                 subnet=str(subnet), remote_endpoints=len(known))

    def _vni(self, store: ClusterAccess, network_id: str) -> int:
        """The network's VXLAN ID: read, or taken in one transaction with its key."""
        mine = f"net/{network_id}/vni"
        start = VNI_FIRST + zlib.crc32(network_id.encode()) % (VNI_LAST - VNI_FIRST)
        for step in range(64):
            have = store.get_prefix(mine).get(mine)
            if have is not None:
                return int(have)
            vni = VNI_FIRST + (start - VNI_FIRST + step) % (VNI_LAST - VNI_FIRST)
            if store.create({f"vni/{vni}": network_id.encode(), mine: str(vni).encode()}):
                return vni
        raise ValueError("no free VXLAN ID found in 64 tries")

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            net = self.networks.pop(network_id, None)
        if net is not None:
            net.sandbox.close()

    def forget_network(self, network_id: str) -> None:
        """The network is removed from the cluster: its VXLAN ID comes free."""
        if self.cluster is None:
            return
        vni = self.cluster.get_prefix(f"net/{network_id}/").get(f"net/{network_id}/vni")
        keys = [f"net/{network_id}/vni"] + ([f"vni/{int(vni)}"] if vni else [])
        self.cluster.delete(keys)

    # -- endpoints ---------------------------------------------------------------

    def create_endpoint(self, network_id: str, endpoint: Endpoint) -> Endpoint:
        if endpoint.driver_options:
            raise ValueError(f"unknown endpoint option {sorted(endpoint.driver_options)[0]!r} "
                             f"for the {NAME} driver")
        if endpoint.port_bindings or endpoint.publish_all:
            raise ValueError(f"the {NAME} driver publishes no ports (it has no gateway to "
                             "the host): connect the container to a bridge network as well "
                             "and publish there")
        store = self._store()
        net = self._net(network_id)
        ip = self._take_address(store, network_id, net, endpoint)
        fields = {f: getattr(endpoint, f) for f in Endpoint.__dataclass_fields__}
        ep = OverlayEndpoint(**fields)
        ep.ip_address, ep.ip_prefix_len, ep.gateway = ip, net.subnet.prefixlen, net.gateway
        ep.mac_address = endpoint.requested_mac or _mac_of(ip)
        return ep

    def _take_address(self, store: ClusterAccess, network_id: str, net: OvNet,
                      endpoint: Endpoint) -> str:
        def take(ip: str) -> bool:
            return store.create({f"net/{network_id}/ip/{ip}": endpoint.endpoint_id.encode()},
                                node_bound=True)

        if endpoint.requested_ip:
            wanted = ipaddress.IPv4Address(endpoint.requested_ip)
            if wanted not in net.subnet:
                raise ValueError(f"address {wanted} is not in the network's subnet {net.subnet}")
            if str(wanted) == net.gateway or not take(str(wanted)):
                raise ValueError(f"address {wanted} is already in use")
            return str(wanted)
        taken = set(store.get_prefix(f"net/{network_id}/ip/"))
        for host in net.subnet.hosts():
            ip = str(host)
            if ip == net.gateway or f"net/{network_id}/ip/{ip}" in taken:
                continue
            if take(ip):
                return ip
        raise ValueError(f"no address left in {net.subnet}")

    def join(self, endpoint: Endpoint, pid: int) -> None:
        ep = _own(endpoint)
        net = self._net(ep.network_id)
        store = self._store()
        ns = f"/proc/{pid}/ns/net"
        with self._lock:
            n = len(self._containers.get(ep.container_id, set()))
        ifname = self._free_ifname(ns, n)
        ep.veth = net.sandbox.attach(ns, ifname, ep.mac_address, ep.ip_address,
                                     ep.ip_prefix_len)
        names = list(dict.fromkeys(n for n in (ep.name, *ep.aliases, ep.hostname) if n))
        record = {"ip": ep.ip_address, "mac": ep.mac_address, "vtep": store.address,
                  "node": store.node_id, "names": names, "container": ep.container_id}
        store.put(f"net/{ep.network_id}/ep/{ep.endpoint_id}", json.dumps(record).encode(),
                  node_bound=True)
        with self._lock:
            self._containers.setdefault(ep.container_id, set()).add(ep.network_id)
            first_dns = not self._dns_members.get(ep.container_id)
            self._dns_members[ep.container_id] = self._dns_members.get(ep.container_id, 0) + 1
        if first_dns:
            sock = socket_inside(ns, NAMESERVER, 53)
            self.dns.add(ep.container_id, sock,
                         parse_upstreams(ep.dns_servers) if ep.dns_servers else None)

    @staticmethod
    def _free_ifname(ns: str, start: int) -> str:
        from pyroute2 import IPRoute

        from skiff.plugins.network._netns import run_in_netns

        def names() -> set[str]:
            with IPRoute() as ipr:
                return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        taken = run_in_netns(ns, names)
        return next(f"eth{i}" for i in range(start, start + 64) if f"eth{i}" not in taken)

    def leave(self, endpoint: Endpoint) -> None:
        ep = _own(endpoint)
        with self._lock:
            net = self.networks.get(ep.network_id)
            nets = self._containers.get(ep.container_id)
            if nets is not None:
                nets.discard(ep.network_id)
                if not nets:
                    del self._containers[ep.container_id]
            stop_dns = False
            if ep.container_id in self._dns_members:
                self._dns_members[ep.container_id] -= 1
                if self._dns_members[ep.container_id] <= 0:
                    del self._dns_members[ep.container_id]
                    stop_dns = True
        if stop_dns:
            self.dns.remove(ep.container_id)
        if net is not None and ep.veth:
            net.sandbox.detach(ep.veth)
        ep.veth = ""
        if self.cluster is not None:
            with contextlib.suppress(ClusterUnavailable):  # it goes with the lease anyway
                self.cluster.delete([f"net/{ep.network_id}/ep/{ep.endpoint_id}"])

    def delete_endpoint(self, endpoint: Endpoint) -> None:
        if self.cluster is None or not endpoint.ip_address:
            return
        with contextlib.suppress(ClusterUnavailable):
            self.cluster.delete([f"net/{endpoint.network_id}/ip/{endpoint.ip_address}"])

    # -- the store's view ----------------------------------------------------------

    def _parse(self, key: str, value: bytes | None) -> tuple[str, str, Remote | None] | None:
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != "net" or parts[2] != "ep":
            return None
        if value is None:
            return parts[1], parts[3], None
        try:
            rec = json.loads(value)
            remote = Remote(ip=str(rec["ip"]), mac=str(rec["mac"]), vtep=str(rec["vtep"]),
                            node=str(rec["node"]), names=[str(n) for n in rec.get("names", [])],
                            container=str(rec.get("container", "")))
            ipaddress.IPv4Address(remote.ip)
            ipaddress.ip_address(remote.vtep)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("overlay.bad_endpoint_record", key=key, error=str(exc))
            return None
        return parts[1], parts[3], remote

    def _changed(self, key: str, value: bytes | None) -> None:
        parsed = self._parse(key, value)
        if parsed is None:
            return
        nid, eid, remote = parsed
        log.debug("overlay.endpoint_changed", network=nid[:12], endpoint=eid[:12],
                  gone=remote is None)
        with self._lock:
            view = self._view.setdefault(nid, {})
            old = view.pop(eid, None)
            if remote is not None:
                view[eid] = remote
            net = self.networks.get(nid)
        if net is None:
            return
        if old is not None and (remote is None or old.mac != remote.mac):
            self._unlearn(net, eid, old)
        if remote is not None:
            self._learn(net, eid, remote)

    def _resync(self, everything: Mapping[str, bytes]) -> None:
        fresh: dict[str, dict[str, Remote]] = {}
        for key, value in everything.items():
            parsed = self._parse(key, value)
            if parsed is not None and parsed[2] is not None:
                fresh.setdefault(parsed[0], {})[parsed[1]] = parsed[2]
        with self._lock:
            old_view, self._view = self._view, fresh
            nets = dict(self.networks)
        for nid, net in nets.items():
            before, after = old_view.get(nid, {}), fresh.get(nid, {})
            for eid, remote in before.items():
                if eid not in after:
                    self._unlearn(net, eid, remote)
            for eid, remote in after.items():
                self._learn(net, eid, remote)

    def _learn(self, net: OvNet, eid: str, remote: Remote) -> None:
        if self.cluster is not None and remote.node == self.cluster.node_id:
            return  # this node's own: the bridge in the sandbox knows it
        net.endpoints[eid] = remote
        try:
            net.sandbox.learn(remote.mac, remote.ip, remote.vtep)
        except Exception as exc:
            log.warning("overlay.learn_failed", endpoint=eid[:12], error=str(exc))

    def _unlearn(self, net: OvNet, eid: str, remote: Remote) -> None:
        net.endpoints.pop(eid, None)
        if self.cluster is not None and remote.node == self.cluster.node_id:
            return
        net.sandbox.forget(remote.mac, remote.ip, remote.vtep)

    # -- names -------------------------------------------------------------------

    def _lookup(self, container_id: str, name: str) -> list[str] | None:
        name = name.rstrip(".").lower()
        with self._lock:
            nets = self._containers.get(container_id, set())
            found = [r.ip for nid in nets for r in self._view.get(nid, {}).values()
                     if name in (n.lower() for n in r.names)
                     or (r.container and name in (r.container[:12], r.container))]
        return found or None

    # -- helpers -------------------------------------------------------------------

    def _net(self, network_id: str) -> OvNet:
        with self._lock:
            net = self.networks.get(network_id)
        if net is None:
            raise LookupError(f"overlay network {network_id[:12]} is not plumbed on this node")
        return net

    def status(self) -> dict[str, Any]:
        """What the driver holds, for tests: per network its VNI and learnt entries."""
        with self._lock:
            return {nid: {"vni": n.vni, "remote": sorted(n.endpoints)}
                    for nid, n in self.networks.items()}


def _own(endpoint: Endpoint) -> OverlayEndpoint:
    if not isinstance(endpoint, OverlayEndpoint):
        raise TypeError(f"endpoint {endpoint.endpoint_id[:12]} was not made by {NAME}")
    return endpoint
