"""A container's network endpoints: joined at start, left at exit, and
``docker network connect``/``disconnect`` while it runs or not."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import structlog
import trio

from skiff.core.containers import pidproof
from skiff.core.containers.config import dns_settings
from skiff.core.containers.endpoints import (
    REQUESTED_MAC,
    link_aliases,
    requested,
    with_short_id,
)
from skiff.core.containers.etcfiles import write_hosts, write_resolv_conf
from skiff.core.containers.links import linked
from skiff.core.containers.model import Container
from skiff.core.containers.netns import namespace_of
from skiff.core.containers.netrates import Shaping, pick
from skiff.core.containers.registry import ContainerRegistry, ToThread, Track
from skiff.core.errors import Conflict, Forbidden, InvalidParameter, NotFound
from skiff.core.events import Publish
from skiff.core.hookspecs import (
    NET_RATE_PREFIX,
    Endpoint,
    Link,
    NetworkDriver,
    NetworkNamespace,
    PortBinding,
)
from skiff.core.networks import Network, NetworkStore, NoSuchNetwork, trait

log = structlog.get_logger("skiff.containers")


class NetworkAttachment:
    """Endpoints of the registry's containers on the networks of ``networks``."""

    def __init__(self, registry: ContainerRegistry, networks: NetworkStore,
                 network_driver: Callable[[str], NetworkDriver], publish: Publish,
                 to_thread: ToThread, shaping: Shaping | None = None) -> None:
        self.registry = registry
        #: bandwidth limits (netrates.py): applied after join, released after leave
        self.shaping = shaping or Shaping(None, "no traffic shaper is configured", {},
                                          to_thread)
        self.shaping.mode_of = self.mode_traits
        self.networks = networks
        self.network_driver = network_driver
        self.publish = publish
        self.to_thread = to_thread

    async def attach(self, c: Container, track: Track, name: str, pid: int) -> None:
        """Create and join the endpoint of network ``name``; fills ``c.networks[name]``."""
        net = self.networks.get(name)
        driver = self.network_driver(net.name)
        settings = c.networks.setdefault(name, {})
        if user_defined(net):
            settings["Aliases"] = with_short_id(settings.get("Aliases"), c.id)
        endpoint = self._endpoint(c, net, name, settings)
        try:
            ep = await self.to_thread(driver.create_endpoint, net.id, endpoint)
            track.endpoints[name] = (driver, ep)
            await self.to_thread(driver.join, ep, pid)
        except LookupError:
            # removed while this start went on (dockerd allows that while the
            # container is stopped; the driver forgets it before the record
            # goes), also between the endpoint and the join: the start's own
            # 404, not a 500 (the failed start releases the endpoint)
            raise NotFound(f"network {net.name} not found") from None
        await self.shaping.joined(c, net.name, net.options, settings, ep)
        settings.update(NetworkID=net.id, EndpointID=ep.endpoint_id if ep.ip_address else "",
                        IPAddress=ep.ip_address, IPPrefixLen=ep.ip_prefix_len,
                        Gateway=ep.gateway, MacAddress=ep.mac_address,
                        GlobalIPv6Address=ep.ip6_address, GlobalIPv6PrefixLen=ep.ip6_prefix_len,
                        IPv6Gateway=ep.gateway6)
        if name == c.network_mode:
            c.ports = {key: None if bindings is None else
                       [{"HostIp": b.host_ip, "HostPort": b.host_port} for b in bindings]
                       for key, bindings in ep.ports.items()}
        self.publish("network", "connect", net.id,
                     {"container": c.id, "name": net.name, "type": net.driver})

    async def readopt_all(self, c: Container, track: Track, pid: int) -> None:
        """Live-restore: the endpoints of a container that ran on while no daemon
        did, learnt back by their drivers (``restore_endpoint``, contract 2.11)
        as the record has them; one that cannot be is logged and left out (the
        container keeps its interface; the daemon no longer manages it)."""
        for name, settings in list(c.networks.items()):
            try:
                net = self.networks.get(name)
                driver = self.network_driver(net.name)
            except NoSuchNetwork:
                continue
            restore = getattr(driver, "restore_endpoint", None)
            if not settings.get("EndpointID"):
                continue
            if restore is None:
                log.warning("network.endpoint_not_restored", container=c.id, network=name,
                            driver=net.driver,
                            reason="the driver cannot learn back an endpoint (no "
                                   "restore_endpoint): the container keeps its interface, "
                                   "the daemon no longer manages it")
                continue
            endpoint = self._endpoint(c, net, name, settings)
            endpoint.endpoint_id = settings["EndpointID"]
            endpoint.requested_ip = settings.get("IPAddress") or ""
            endpoint.requested_ip6 = settings.get("GlobalIPv6Address") or ""
            endpoint.requested_mac = settings.get("MacAddress") or ""
            if name == c.network_mode:
                # the host ports it had, not new ones
                endpoint.publish_all = False
                endpoint.port_bindings = {
                    key: [PortBinding(str(b.get("HostIp") or ""), str(b.get("HostPort") or ""))
                          for b in bindings]
                    for key, bindings in (c.ports or {}).items() if bindings}
            try:
                ep = await self.to_thread(restore, net.id, endpoint, pid)
            except Exception as exc:
                log.warning("network.restore_endpoint_failed", container=c.id,
                            network=name, error=str(exc))
                continue
            track.endpoints[name] = (driver, ep)
            await self.shaping.readopted(c, net.name, net.options, settings, ep)

    def _endpoint(self, c: Container, net: Network, name: str, settings: dict[str, Any]
                  ) -> Endpoint:
        """What ``c`` asks of network ``name``'s driver."""
        endpoint = Endpoint(
            network_id=net.id, endpoint_id=secrets.token_hex(32), container_id=c.id,
            name=c.name, hostname=c.config.get("Hostname") or "",
            aliases=list(settings.get("Aliases") or []),
            requested_ip=(settings.get("IPAMConfig") or {}).get("IPv4Address") or "",
            requested_ip6=(settings.get("IPAMConfig") or {}).get("IPv6Address") or "",
            requested_mac=settings.get(REQUESTED_MAC) or "",
            link_aliases=link_aliases(settings.get("Links")) if user_defined(net) else {},
            dns_servers=dns_settings(c.host_config)[0],
            driver_options={k: v for k, v in (settings.get("DriverOpts") or {}).items()
                            if not k.startswith(NET_RATE_PREFIX)})
        primary = name == c.network_mode
        # dockerd ignores publishing on an internal network: nothing may reach it
        if primary and not net.internal:
            _publishing(c, endpoint)
            endpoint.links = [
                Link(other.networks.get(name, {}).get("IPAddress", ""),
                     [(k.partition("/")[2] or "tcp", int(k.partition("/")[0]))
                      for k in (other.config.get("ExposedPorts") or {})])
                for other, _alias in linked(c, self.registry.get)
            ]
        return endpoint

    async def attach_all(self, c: Container, track: Track, pid: int) -> None:
        """Join every network of ``c`` at start; /etc/hosts gets the addresses."""
        netns = self.namespace(c)
        if not c.networks and netns.kind != "join":
            c.networks = {c.network_mode: {}}  # a record from before networks were kept
        for name in list(c.networks):
            await self.attach(c, track, name, pid)
        # one worker-thread hop for both files: a hop costs more than either write
        await self.to_thread(self._write_etc_files, c, track, netns, self.nameserver(c))

    def _write_etc_files(self, c: Container, track: Track, netns: NetworkNamespace,
                         nameserver: str | bool) -> None:
        self._write_hosts(c, track, netns)
        write_resolv_conf(c, nameserver, netns)

    def _write_hosts(self, c: Container, track: Track, netns: NetworkNamespace) -> None:
        """/etc/hosts (blocking): the daemon's lines, then those the drivers of
        the joined endpoints supply (their optional ``hosts``)."""
        extra: list[tuple[str, str]] = []
        for driver, ep in track.endpoints.values():
            hosts = getattr(driver, "hosts", None)
            if hosts is not None:
                extra.extend(hosts(ep))
        write_hosts(c, self.registry.get, netns, extra)

    def namespace(self, c: Container) -> NetworkNamespace:
        """Where ``c``'s network stack comes from (no path: not for the runtime)."""
        return namespace_of(c.network_mode, self.network_driver)

    def check_create(self, c: Container) -> None:
        """At create: the primary network's driver checks what is asked of it
        (its optional ``check_endpoint``, 2.9, quick: on the event loop); a
        ``ValueError`` is a 400."""
        net = self.networks.find(c.network_mode)
        if net is None or net.internal:
            return
        try:
            driver = self.network_driver(net.name)
        except Exception:  # its plugin is gone: the start says so, as before 2.9
            return
        check = getattr(driver, "check_endpoint", None)
        if check is None:
            return
        settings = c.networks.get(net.name) or {}
        endpoint = Endpoint(
            network_id=net.id, endpoint_id="", container_id=c.id, name=c.name,
            requested_ip=(settings.get("IPAMConfig") or {}).get("IPv4Address") or "",
            requested_ip6=(settings.get("IPAMConfig") or {}).get("IPv6Address") or "")
        _publishing(c, endpoint)
        try:
            check(net.id, endpoint)
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from None

    def mode_traits(self, network_mode: str) -> tuple[NetworkNamespace, bool]:
        """The namespace a container of ``network_mode`` gets, and whether its
        network's driver gives it only a loopback (``loopback_only``)."""
        try:
            netns = namespace_of(network_mode, self.network_driver)
            if netns.kind == "join":
                return netns, False
            return netns, bool(trait(self.network_driver(network_mode), "loopback_only"))
        except Exception:  # no such network or driver: the start refuses it, saying why
            return NetworkNamespace("new"), False

    def nameserver(self, c: Container) -> str:
        """The name server ``c`` resolves through, "" for the host's resolvers:
        that of the driver of its first user-defined network that runs one
        (the bridge's embedded DNS), as dockerd does."""
        for name in c.networks:
            net = self.networks.find(name)
            if net is not None and user_defined(net):
                address = trait(self.network_driver(net.name), "nameserver")
                if address:
                    return str(address)
        return ""

    def sole(self, network: str) -> bool:
        """Whether ``network``'s driver has only that network (host, none): a
        container on it joins no other."""
        net = self.networks.find(network)
        return net is not None and bool(trait(self.network_driver(net.name), "singleton"))

    async def detach(self, c: Container, track: Track, name: str) -> None:
        """Leave and delete the endpoint of network ``name``; never raises."""
        driver, ep = track.endpoints.pop(name)
        for step in (driver.leave, driver.delete_endpoint):
            try:
                await self.to_thread(step, ep)
            except Exception as exc:
                log.warning("container.network_release_failed", id=c.id, network=name,
                            step=step.__name__, error=str(exc))
        # after the interface went: the shaper's own devices must not hold up its deletion
        await self.shaping.left(c, name, ep)
        settings = c.networks.get(name)
        net = self.networks.find(name)
        self.publish(
            "network", "disconnect", net.id if net else (settings or {}).get("NetworkID", name),
            {"container": c.id, "name": name, "type": net.driver if net else ""})
        if settings is not None:
            for key in ("EndpointID", "IPAddress", "Gateway", "MacAddress",
                        "GlobalIPv6Address", "IPv6Gateway"):
                settings[key] = ""
            settings["IPPrefixLen"] = settings["GlobalIPv6PrefixLen"] = 0

    async def detach_all(self, c: Container, track: Track) -> None:
        """Leave every network ``c`` joined (its run ended); never raises."""
        for name in list(track.endpoints):
            await self.detach(c, track, name)
        c.ports = {}

    async def connect(self, ref: str, network: str, config: Any) -> None:
        """``docker network connect``: now if running, else at the next start."""
        c = self.registry.get(ref)
        net = self.networks.get(network)
        if self.sole(c.network_mode) or self.namespace(c).kind == "join":
            raise InvalidParameter(
                f"container cannot be disconnected from host network or connected to "
                f"{c.network_mode} network")
        if self.sole(net.name):
            raise InvalidParameter(f"container cannot be connected to {net.name} network")
        if net.name in c.networks:
            raise Forbidden(
                f"endpoint with name {c.name} already exists in network {net.name}")
        track = self.registry.tracks[c.id]
        async with track.lock:
            if c.id not in self.registry.by_id:
                raise NotFound(f"No such container: {ref}")  # removed while we waited
            settings = requested(config, subnet=net.subnet, predefined=net.predefined,
                                 user_subnet=net.user_subnet, subnet6=net.subnet6)
            self.shaping.check(pick(settings.get("DriverOpts")),
                               f" (DriverOpts on network {net.name})")
            c.networks[net.name] = settings
            if c.state.Running:
                try:
                    await self.attach(c, track, net.name, c.state.Pid)
                except BaseException as exc:
                    with trio.CancelScope(shield=True):
                        if net.name in track.endpoints:
                            await self.detach(c, track, net.name)
                    del c.networks[net.name]
                    if isinstance(exc, OSError) and not pidproof.namespaces_alive(c.state.Pid):
                        # the container ended while it was being connected
                        raise Conflict(f"Container {c.id} is not running") from exc
                    if isinstance(exc, ValueError) and not isinstance(exc, InvalidParameter):
                        # the driver refused what was asked: the contract's 400
                        raise InvalidParameter(str(exc)) from exc
                    raise
                await self.to_thread(self._write_hosts, c, track, self.namespace(c))
            await self.to_thread(write_resolv_conf, c, self.nameserver(c), self.namespace(c))
            c.save()

    async def disconnect(self, ref: str, network: str, force: bool = False) -> None:
        """``docker network disconnect``."""
        c = self.registry.get(ref)
        net = self.networks.get(network)
        if net.name not in c.networks:
            raise Conflict(f"container {c.id} is not connected to network {net.name}")
        track = self.registry.tracks.get(c.id)
        if track is None:
            raise NotFound(f"No such container: {ref}")  # removed meanwhile
        async with track.lock:
            if c.id not in self.registry.by_id:
                raise NotFound(f"No such container: {ref}")  # removed while we waited
            # a disconnect or a network rm that ran while we waited
            if self.networks.find(net.id) is None:
                raise NotFound(f"network {network} not found")
            if net.name not in c.networks:
                raise Conflict(f"container {c.id} is not connected to network {net.name}")
            if net.name in track.endpoints:
                await self.detach(c, track, net.name)
            del c.networks[net.name]
            if c.state.Running:
                await self.to_thread(self._write_hosts, c, track, self.namespace(c))
            await self.to_thread(write_resolv_conf, c, self.nameserver(c), self.namespace(c))
            c.save()


def user_defined(net: Network) -> bool:
    """Not one of the predefined networks: dockerd's "user-defined" (embedded DNS,
    aliases, the short ID as an alias)."""
    return not net.predefined


def _publishing(c: Container, endpoint: Endpoint) -> None:
    """The container's published and exposed ports, onto its primary endpoint."""
    endpoint.port_bindings = {
        key: [PortBinding(str((b or {}).get("HostIp") or ""),
                          str((b or {}).get("HostPort") or "")) for b in bindings or []]
        for key, bindings in (c.host_config.get("PortBindings") or {}).items()}
    endpoint.exposed_ports = sorted((c.config.get("ExposedPorts") or {}).keys())
    endpoint.publish_all = bool(c.host_config.get("PublishAllPorts"))
