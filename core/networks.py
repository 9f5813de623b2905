"""The daemon's networks: records, subnets for new networks, and their drivers.

Records persist as ``<data-root>/network/<id>.json`` in Docker's inspect
shape.  The predefined networks ``bridge`` (when a bridge driver is installed
and daemon.json ``bridge`` is not ``none``), ``host`` and ``none`` always
exist and cannot be removed.  Subnets of new networks come from
``default-address-pools`` (Docker's defaults when empty), skipping those that
overlap another network or a route of the host.

The store calls the network's driver: ``create_network`` when a network is
created and again for each network at daemon start (the driver rebuilds its
bridge and rules, whatever a crash left), ``delete_network`` when it is
removed, and at shutdown (bridges and rules go with the daemon; the records
stay).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from skiff.core.atomic import write_json_atomic
from skiff.core.errors import Conflict, Forbidden, InvalidParameter, NotFound
from skiff.core.hookspecs import NETWORK_DRIVER_TRAITS, NetworkDriver, NetworkOptions
from skiff.core.timefmt import now_rfc3339

if TYPE_CHECKING:
    from skiff.core.containers.model import Container

log = structlog.get_logger("skiff.networks")

#: the predefined networks, each named after the driver it has (as dockerd's)
PREDEFINED = ("bridge", "host", "none")
#: the driver of ``POST /networks/create`` without one: the API's default, as dockerd's
DEFAULT_DRIVER = "bridge"
DEFAULT_BRIDGE = "skiff0"
#: Docker's default-address-pools
DEFAULT_POOLS: tuple[tuple[str, int], ...] = (
    ("172.17.0.0/16", 16), ("172.18.0.0/16", 16), ("172.19.0.0/16", 16),
    ("172.20.0.0/14", 16), ("172.24.0.0/14", 16), ("172.28.0.0/14", 16),
    ("192.168.0.0/16", 20),
)
ICC_OPTION = "com.docker.network.bridge.enable_icc"
NAME_OPTION = "com.docker.network.bridge.name"
#: skiff's key in a network's record file (not in inspect)
USER_SUBNET_KEY = "SkiffUserSubnet"


def trait(driver: NetworkDriver, key: str) -> Any:
    """What ``driver`` says it is (``NETWORK_DRIVER_TRAITS``): its class
    attribute, or the contract's default when it sets none."""
    return getattr(driver, key, NETWORK_DRIVER_TRAITS[key])


#: dockerd 20.10's words (libnetwork's IPAM) for EnableIPv6 without an IPv6
#: subnet: no default pool is IPv6
NO_V6_POOL = ("could not find an available, non-overlapping IPv6 address pool among "
              "the defaults to assign to the network")


class NoSuchNetwork(NotFound):
    """A network a container asks for does not exist (a 404; at container create
    the manager answers it as a 400, see ``ContainerManager.create``)."""


@dataclass
class Network:
    """One network's record, in the shape ``docker network inspect`` shows."""

    id: str
    name: str
    driver: str
    created: str
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    internal: bool = False
    attachable: bool = False
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    ipam_driver: str = "default"
    #: the subnet was given at create (``--subnet``): only then may a container
    #: ask for an address (dockerd's rule); records from before say True
    user_subnet: bool = True
    #: ``EnableIPv6`` as asked; the IPv6 subnet is plumbed whenever one is
    #: configured (``subnet6``), see ``docs/networking.md`` "IPv6"
    enable_ipv6: bool = False
    subnet6: str = ""
    gateway6: str = ""
    ip_range6: str = ""
    scope: str = "local"  #: the driver's (``NetworkDriver`` ``scope``)

    @property
    def predefined(self) -> bool:
        return self.name in PREDEFINED

    def record(self) -> dict[str, Any]:
        config: list[dict[str, str]] = []
        if self.subnet:
            entry = {"Subnet": self.subnet, "Gateway": self.gateway}
            if self.ip_range:
                entry["IPRange"] = self.ip_range
            config.append(entry)
        if self.subnet6:
            # as dockerd shows a subnet given at create: the keys that were given
            entry = {"Subnet": self.subnet6}
            if self.gateway6:
                entry["Gateway"] = self.gateway6
            if self.ip_range6:
                entry["IPRange"] = self.ip_range6
            config.append(entry)
        return {
            "Name": self.name,
            "Id": self.id,
            "Created": self.created,
            "Scope": self.scope,
            "Driver": self.driver,
            "EnableIPv6": self.enable_ipv6,
            "IPAM": {"Driver": self.ipam_driver, "Options": None, "Config": config},
            "Internal": self.internal,
            "Attachable": self.attachable,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Options": self.options,
            "Labels": self.labels,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Network:
        cfg = (rec.get("IPAM") or {}).get("Config") or []
        first: dict[str, str] = next(
            (c for c in cfg if ":" not in (c.get("Subnet") or "")), {})
        v6: dict[str, str] = next((c for c in cfg if ":" in (c.get("Subnet") or "")), {})
        return cls(id=rec["Id"], name=rec["Name"], driver=rec["Driver"], created=rec["Created"],
                   subnet=first.get("Subnet", ""), gateway=first.get("Gateway", ""),
                   ip_range=first.get("IPRange", ""), internal=bool(rec.get("Internal")),
                   attachable=bool(rec.get("Attachable")), options=rec.get("Options") or {},
                   labels=rec.get("Labels") or {},
                   ipam_driver=(rec.get("IPAM") or {}).get("Driver") or "default",
                   user_subnet=bool(rec.get(USER_SUBNET_KEY, True)),
                   enable_ipv6=bool(rec.get("EnableIPv6")), subnet6=v6.get("Subnet", ""),
                   gateway6=v6.get("Gateway", ""), ip_range6=v6.get("IPRange", ""),
                   scope=rec.get("Scope") or "local")


def host_routes() -> list[ipaddress.IPv4Network]:
    """Destinations of the host's IPv4 routes (not the default route)."""
    out = []
    try:
        with open("/proc/net/route") as f:
            next(f)
            for line in f:
                parts = line.split()
                dst = ipaddress.IPv4Address(int(parts[1], 16).to_bytes(4, "little"))
                mask = ipaddress.IPv4Address(int(parts[7], 16).to_bytes(4, "little"))
                net = ipaddress.IPv4Network(f"{dst}/{mask}", strict=False)
                if net.prefixlen:
                    out.append(net)
    except (OSError, ValueError, StopIteration):
        pass
    return out


def pick_subnet(pools: Iterable[tuple[str, int]],
                taken: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first subnet of ``pools`` that overlaps nothing in ``taken``."""
    busy = list(taken)
    for base, size in pools:
        for candidate in ipaddress.IPv4Network(base).subnets(new_prefix=int(size)):
            if not any(candidate.overlaps(t) for t in busy):
                return candidate
    raise InvalidParameter("could not find an available, non-overlapping IPv4 address pool "
                           "among the defaults to assign to the network")


def _no_store(what: str) -> None:
    raise InvalidParameter(f"cannot {what}: this daemon has no cluster store; set "
                           "cluster-store and cluster-advertise in daemon.json")


class NetworkStore:
    """Networks by id and name.

    ``config`` is daemon.json (its bridge, address-pool and bridge-option
    keys); ``driver`` gives the network driver of a driver name, ``installed``
    says whether one is installed; ``containers`` are the container records
    (by ID), whose endpoints keep a network in use.
    """

    def __init__(self, data_root: str, config: Mapping[str, Any],
                 driver: Callable[[str], NetworkDriver], installed: Callable[[str], bool],
                 containers: Mapping[str, Container]) -> None:
        self._config = config
        self._driver = driver
        self._installed = installed
        self._containers = containers
        self.root = os.path.join(data_root, "network")
        self.by_id: dict[str, Network] = {}
        cfg = config
        self.bridge_name = cfg.get("bridge") or DEFAULT_BRIDGE
        #: raises unless the cluster store can be used now (the engine's
        #: ``ClusterMembership.require``); without a store, always
        self.require_store: Callable[[str], None] = _no_store
        #: global-scope networks known from the records but not plumbed yet
        self.pending: set[str] = set()
        self.pools: list[tuple[str, int]] = [
            (p["base"], int(p["size"])) for p in cfg.get("default-address-pools") or []
        ] or list(DEFAULT_POOLS)

    # -- lookup --------------------------------------------------------------

    def installed(self, driver: str) -> bool:
        return self._installed(driver)

    def get(self, ref: str) -> Network:
        """By full id, name, or unique id prefix (Docker's order)."""
        if ref in self.by_id:
            return self.by_id[ref]
        for net in self.by_id.values():
            if net.name == ref:
                return net
        matches = [n for n in self.by_id.values() if ref and n.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidParameter(f"network {ref} is ambiguous ({len(matches)} matches found)")
        raise NotFound(f"network {ref} not found")

    def find(self, ref: str) -> Network | None:
        try:
            return self.get(ref)
        except (NotFound, InvalidParameter):
            return None

    # -- persistence -----------------------------------------------------------

    def _save(self, net: Network) -> None:
        # the record is inspect's shape plus skiff's own key, which inspect never shows
        write_json_atomic(os.path.join(self.root, f"{net.id}.json"),
                          {**net.record(), USER_SUBNET_KEY: net.user_subnet})

    def load(self) -> None:
        """Read the records, make the predefined networks, and plumb every network."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        for entry in sorted(os.listdir(self.root)):
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.root, entry)) as f:
                    net = Network.from_record(json.load(f))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("network.restore_failed", file=entry, error=str(exc))
                continue
            self.by_id[net.id] = net
        wanted = {"host": "host", "none": "none"}
        if self.installed("bridge") and self.bridge_name != "none":
            wanted["bridge"] = "bridge"
        for name in PREDEFINED:
            existing = self.find(name)
            if name not in wanted:
                if existing is not None and existing.predefined:
                    self._forget(existing)
                continue
            if existing is None:
                existing = Network(id=secrets.token_hex(32), name=name, driver=wanted[name],
                                   created=now_rfc3339())
                self.by_id[existing.id] = existing
            if name == "bridge":
                self._configure_default_bridge(existing)
            self._save(existing)
        for net in list(self.by_id.values()):
            if not self.installed(net.driver):
                log.warning("network.driver_missing", network=net.name, driver=net.driver)
                continue
            if net.scope == "global":
                # plumbed when the node registers with the cluster store, if the
                # store still has it (core/cluster/globalnets.py)
                self.pending.add(net.id)
                continue
            self.plumb(net.id)

    def plumb(self, network_id: str) -> None:
        """Have the driver make a known network's host side (at start; a global one
        when the cluster store confirms it); failures are logged."""
        net = self.by_id[network_id]
        self.pending.discard(network_id)
        try:
            driver = self._driver(net.driver)
            net.scope = trait(driver, "scope")
            driver.create_network(net.id, self.options(net))
        except Exception as exc:
            log.error("network.restore_failed", network=net.name, error=str(exc))

    def _configure_default_bridge(self, net: Network) -> None:
        cfg = self._config
        net.options = {
            "com.docker.network.bridge.default_bridge": "true",
            ICC_OPTION: "true" if cfg.get("icc", True) else "false",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
            NAME_OPTION: self.bridge_name,
            "com.docker.network.driver.mtu": "1500",
        }
        if cfg.get("bip"):
            iface = ipaddress.IPv4Interface(cfg["bip"])
            net.subnet, net.gateway = str(iface.network), str(iface.ip)
        elif not net.subnet:
            others = [ipaddress.IPv4Network(n.subnet) for n in self.by_id.values()
                      if n.subnet and n is not net]
            subnet = pick_subnet(self.pools, others + host_routes())
            net.subnet, net.gateway = str(subnet), str(subnet.network_address + 1)
        # daemon.json ipv6 + fixed-cidr-v6 (config.validate makes them come together)
        net.enable_ipv6 = bool(cfg.get("ipv6"))
        if net.enable_ipv6 and cfg.get("fixed-cidr-v6"):
            v6 = ipaddress.IPv6Network(cfg["fixed-cidr-v6"], strict=False)
            net.subnet6, net.gateway6 = str(v6), str(v6.network_address + 1)
        else:
            net.subnet6 = net.gateway6 = ""

    def _forget(self, net: Network) -> None:
        self.by_id.pop(net.id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, f"{net.id}.json"))

    def options(self, net: Network) -> NetworkOptions:
        """What the driver's ``create_network`` receives."""
        bridge = net.options.get(NAME_OPTION) or ""
        return NetworkOptions(
            name=net.name,
            bridge=self.bridge_name if net.name == "bridge" else bridge,
            subnet=net.subnet,
            gateway=net.gateway,
            ip_range=net.ip_range,
            icc=net.options.get(ICC_OPTION, "true") != "false",
            internal=net.internal,
            dns=not net.predefined,  # as dockerd: names resolve on user-defined networks only
            options=dict(net.options),
            labels=dict(net.labels),
            subnet6=net.subnet6,
            gateway6=net.gateway6,
            ip_range6=net.ip_range6,
        )

    # -- create / remove -------------------------------------------------------

    def create(self, body: dict[str, Any]) -> tuple[Network, str]:
        """``POST /networks/create``; blocking (the driver plumbs the bridge)."""
        name = body.get("Name")
        if not name or not isinstance(name, str):
            raise InvalidParameter("network name is required")
        if self.find(name) is not None and self.get(name).name == name:
            raise Conflict(f"network with name {name} already exists")
        driver = body.get("Driver") or DEFAULT_DRIVER
        if not self.installed(driver):
            raise NotFound(f"plugin \"{driver}\" not found")
        drv = self._driver(driver)
        if trait(drv, "singleton"):
            raise InvalidParameter(
                f"only one instance of \"{driver}\" network is allowed")
        if trait(drv, "scope") == "global":
            self.require_store(f"create network {name}: the {driver} driver's networks are "
                               "global (on every node of the cluster)")
        ipam = body.get("IPAM") or {}
        configs = ipam.get("Config") or []
        net = Network(id=secrets.token_hex(32), name=name, driver=driver, created=now_rfc3339(),
                      internal=bool(body.get("Internal")),
                      attachable=bool(body.get("Attachable")),
                      options={k: str(v) for k, v in (body.get("Options") or {}).items()},
                      labels=dict(body.get("Labels") or {}),
                      ipam_driver=ipam.get("Driver") or "default", scope=trait(drv, "scope"))
        others = [ipaddress.IPv4Network(n.subnet) for n in self.by_id.values() if n.subnet]
        try:
            v4 = [c for c in configs if ":" not in (c.get("Subnet") or "")]
            if v4 and v4[0].get("Subnet"):
                subnet = ipaddress.IPv4Network(v4[0]["Subnet"], strict=False)
                for other in others:
                    if subnet.overlaps(other):
                        raise Conflict("Pool overlaps with other one on this address space")
                net.subnet = str(subnet)
                gw = v4[0].get("Gateway") or ""
                if gw and ipaddress.IPv4Address(gw) not in subnet:
                    raise InvalidParameter(f"gateway {gw} is not in subnet {subnet}")
                net.gateway = gw or str(subnet.network_address + 1)
                net.ip_range = v4[0].get("IPRange") or ""
                if net.ip_range and not ipaddress.IPv4Network(net.ip_range).subnet_of(subnet):
                    raise InvalidParameter(f"ip-range {net.ip_range} is not in subnet {subnet}")
            elif trait(drv, "ipam") == "engine":
                subnet = pick_subnet(self.pools, others + host_routes())
                net.subnet, net.gateway = str(subnet), str(subnet.network_address + 1)
                net.user_subnet = False
            else:  # the driver's own address management chooses
                net.user_subnet = False
            self._configure_v6(net, configs, bool(body.get("EnableIPv6")))
        except ValueError as exc:
            raise InvalidParameter(f"invalid IPAM configuration: {exc}") from exc
        try:
            drv.create_network(net.id, self.options(net))
        except ValueError as exc:  # the contract's refusal of the options: the driver's words
            raise InvalidParameter(str(exc)) from exc
        self.by_id[net.id] = net
        self._save(net)
        log.info("network.create", id=net.id[:12], name=name, subnet=net.subnet)
        return net, ""

    def _configure_v6(self, net: Network, configs: list[dict[str, Any]], enable: bool) -> None:
        """The IPv6 part of ``POST /networks/create``'s IPAM config.

        An IPv6 subnet given without EnableIPv6 is plumbed too (docker-py's
        ``ipv6_address`` tests create such networks, and dockerd hands out
        their addresses); EnableIPv6 without a subnet is refused as dockerd
        20.10 refuses it: its default pools are IPv4 only, so it finds no IPv6
        pool and answers 404 with these words (skiff's pools are IPv4 only too).
        """
        net.enable_ipv6 = enable
        v6 = [c for c in configs if ":" in (c.get("Subnet") or "")]
        if len(v6) > 1:
            raise InvalidParameter("only one IPv6 subnet per network is supported")
        if not v6:
            if enable and trait(self._driver(net.driver), "ipam") == "engine":
                raise NotFound(NO_V6_POOL)
            return
        if not trait(self._driver(net.driver), "ipv6"):
            raise InvalidParameter(f"IPv6 is not supported by the {net.driver} driver")
        subnet = ipaddress.IPv6Network(v6[0]["Subnet"], strict=False)
        if subnet.prefixlen > 126:
            raise InvalidParameter(f"IPv6 subnet {subnet} is too small")
        for other in self.by_id.values():
            if other.subnet6 and subnet.overlaps(ipaddress.IPv6Network(other.subnet6)):
                raise Conflict("Pool overlaps with other one on this address space")
        gw = v6[0].get("Gateway") or ""
        if gw and ipaddress.IPv6Address(gw) not in subnet:
            raise InvalidParameter(f"gateway {gw} is not in subnet {subnet}")
        ip_range = v6[0].get("IPRange") or ""
        if ip_range and not ipaddress.IPv6Network(ip_range, strict=False).subnet_of(subnet):
            raise InvalidParameter(f"ip-range {ip_range} is not in subnet {subnet}")
        net.subnet6 = str(subnet)
        net.gateway6 = gw  # "": the driver takes the subnet's first address
        net.ip_range6 = str(ipaddress.IPv6Network(ip_range, strict=False)) if ip_range else ""

    # -- global scope: networks another node made (core/cluster/globalnets.py) --

    def shared_record(self, net: Network) -> dict[str, Any]:
        """What the cluster store keeps of a global-scope network."""
        return {**net.record(), USER_SUBNET_KEY: net.user_subnet}

    def adopt(self, record: dict[str, Any]) -> Network | None:
        """Plumb here a global-scope network another node created; blocking.

        None (logged) when it cannot be: its driver is not installed here, or
        a network of this node already has its name or an overlapping subnet.
        """
        net = Network.from_record(record)
        known = self.by_id.get(net.id)
        if known is not None:
            return known
        if not self.installed(net.driver):
            log.warning("network.global_skipped", network=net.name, driver=net.driver,
                        reason="its driver is not installed on this node")
            return None
        clash = self.find(net.name)
        if clash is not None and clash.name == net.name:
            log.warning("network.global_skipped", network=net.name,
                        reason=f"this node has a network of that name ({clash.id[:12]})")
            return None
        if net.subnet:
            mine = ipaddress.IPv4Network(net.subnet)
            for other in self.by_id.values():
                if other.subnet and mine.overlaps(ipaddress.IPv4Network(other.subnet)):
                    log.warning("network.global_skipped", network=net.name,
                                reason=f"its subnet {mine} overlaps {other.name}'s")
                    return None
        drv = self._driver(net.driver)
        net.scope = trait(drv, "scope")
        drv.create_network(net.id, self.options(net))
        self.by_id[net.id] = net
        self._save(net)
        log.info("network.global_adopted", id=net.id[:12], name=net.name, subnet=net.subnet)
        return net

    def withdraw(self, network_id: str) -> Network | None:
        """Take down a global-scope network its cluster no longer has; blocking.

        A network with running containers here stays until they are gone
        (logged): pulling their endpoints would cut them off.
        """
        net = self.by_id.get(network_id)
        if net is None or net.scope != "global":
            return None
        if self.users(net):
            log.warning("network.global_kept", network=net.name,
                        reason="removed from the cluster but containers here still use it")
            return None
        self._driver(net.driver).delete_network(net.id)
        self._forget(net)
        log.info("network.global_withdrawn", id=net.id[:12], name=net.name)
        return net

    def users(self, net: Network) -> list[Any]:
        """Running containers attached to ``net``."""
        return [c for c in self._containers.values()
                if c.state.Running and net.name in c.networks]

    def check_removable(self, net: Network) -> None:
        """Raise what ``remove`` would refuse ``net`` with (predefined, in use)."""
        if net.predefined:
            raise Forbidden(f"{net.name} is a pre-defined network and cannot be removed")
        if self.users(net):
            raise Conflict(f"error while removing network: network {net.name} id {net.id} "
                           "has active endpoints")

    def is_global(self, body: Mapping[str, Any]) -> bool:
        """Whether ``POST /networks/create``'s body asks for a global-scope driver."""
        driver = body.get("Driver") or DEFAULT_DRIVER
        return (isinstance(driver, str) and self.installed(driver)
                and trait(self._driver(driver), "scope") == "global")

    def remove(self, ref: str) -> None:
        net = self.get(ref)
        self.check_removable(net)
        driver = self._driver(net.driver)
        driver.delete_network(net.id)
        forget = getattr(driver, "forget_network", None)  # optional (2.10)
        if forget is not None:
            try:
                forget(net.id)
            except Exception as exc:  # the network is gone here; what it held, logged
                log.warning("network.forget_failed", network=net.name, error=str(exc))
        self._forget(net)
        log.info("network.remove", id=net.id[:12], name=net.name)

    def prune(self) -> list[str]:
        gone = []
        for net in list(self.by_id.values()):
            # a global network goes through the cluster store (Engine.prune_networks)
            if net.predefined or net.scope == "global" or self.users(net):
                continue
            try:
                self.remove(net.id)
            except Exception as exc:
                log.warning("network.prune_failed", network=net.name, error=str(exc))
                continue
            gone.append(net.name)
        return gone

    def shutdown(self, keep: set[str] | None = None) -> None:
        """Take every network's host-side plumbing down; the records stay.
        ``keep``: names of networks left plumbed (live-restore: containers
        that run on use them)."""
        for net in list(self.by_id.values()):
            if not self.installed(net.driver) or net.name in (keep or ()):
                continue
            try:
                self._driver(net.driver).delete_network(net.id)
            except Exception as exc:
                log.warning("network.shutdown_failed", network=net.name, error=str(exc))

    # -- API shapes --------------------------------------------------------------

    def inspect(self, net: Network) -> dict[str, Any]:
        rec = net.record()
        containers = {}
        for c in self.users(net):
            s = c.networks.get(net.name) or {}
            containers[c.id] = {
                "Name": c.name,
                "EndpointID": s.get("EndpointID", ""),
                "MacAddress": s.get("MacAddress", ""),
                "IPv4Address": (f"{s['IPAddress']}/{s.get('IPPrefixLen', 0)}"
                                if s.get("IPAddress") else ""),
                "IPv6Address": (f"{s['GlobalIPv6Address']}/{s.get('GlobalIPv6PrefixLen', 0)}"
                                if s.get("GlobalIPv6Address") else ""),
            }
        rec["Containers"] = containers
        return rec
