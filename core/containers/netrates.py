"""Bandwidth limits of containers' endpoints: which ``skiff.net.*`` options are
in force on each endpoint, checked where they are given, and handed to the
traffic shaper (``hookspecs.TrafficShaper``) as endpoints are joined, changed
and left.

Four levels, each key taken from the highest that sets it:

1. the endpoint's ``DriverOpts`` (``docker network connect --driver-opt``,
   ``--network name=N,driver-opt=K=V``);
2. the container's labels (``--label skiff.net.egress-rate=8mbit``), which
   ``POST /containers/{id}/update`` with ``SkiffNetRates`` changes;
3. the network's options (``docker network create -o K=V``);
4. daemon.json ``default-net-rates``.

A rate of ``none`` lifts a limit a lower level set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from skiff.core.containers.model import Container
from skiff.core.containers.registry import ToThread, Track
from skiff.core.errors import InvalidParameter
from skiff.core.hookspecs import (
    NET_RATE_KEYS,
    NET_RATE_PREFIX,
    Endpoint,
    NetworkNamespace,
    ShapedEndpoint,
    TrafficShaper,
)

log = structlog.get_logger("skiff.containers")

#: the API extension of ``POST /containers/{id}/update``: label keys -> values
UPDATE_FIELD = "SkiffNetRates"


def pick(mapping: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``skiff.net.*`` entries of a labels or options mapping."""
    return {k: v for k, v in (mapping or {}).items() if k.startswith(NET_RATE_PREFIX)}


def resolve(*levels: Mapping[str, str]) -> dict[str, str]:
    """The options in force, ``levels`` from the lowest (the daemon's) to the
    highest (the endpoint's); an empty value sets nothing."""
    out: dict[str, str] = {}
    for level in levels:
        out.update({k: v for k, v in level.items() if v != ""})
    return out


#: what a NetworkMode gives a container, from its network's driver: the
#: namespace (``NetworkNamespace``) and the driver's ``loopback_only`` trait
ModeOf = Callable[[str], "tuple[NetworkNamespace, bool]"]


def _no_interface(network_mode: str, netns: NetworkNamespace, loopback_only: bool
                  ) -> str | None:
    """Why a container of ``network_mode`` has no interface of its own to limit,
    from what the contract says of it (never from a driver's name)."""
    if netns.kind == "host":
        return (f"a container with --network {network_mode} is in the host network "
                "namespace and shares the host's interfaces")
    if netns.kind == "join":
        return (f"a container with --network {network_mode} shares that container's "
                "interfaces (limit that container instead)")
    if loopback_only:
        return f"a container with --network {network_mode} has only its loopback interface"
    return None


class Shaping:
    """The daemon's traffic shaper, if one works here, and the rules above."""

    def __init__(self, shaper: TrafficShaper | None, why_not: str,
                 daemon_rates: Mapping[str, str], to_thread: ToThread,
                 mode_of: ModeOf | None = None) -> None:
        self.shaper = shaper
        #: what a NetworkMode gives a container (``NetworkAttachment`` sets it:
        #: it knows the networks and their drivers); None: no check at create,
        #: the start refuses an endpoint without a host interface instead
        self.mode_of = mode_of
        #: why there is no shaper (no plugin installed, or it cannot work here)
        self.why_not = why_not
        self.daemon_rates = dict(daemon_rates)
        self.to_thread = to_thread
        #: endpoint IDs the shaper acted on, so ``left`` is asked only of those
        self._shaped: set[str] = set()

    # -- checks (on the event loop; quick) ---------------------------------

    def check(self, rates: Mapping[str, str], where: str = "") -> None:
        """A 400 naming the key when ``rates`` (one level) is not good."""
        if not rates:
            return
        unknown = sorted(set(rates) - set(NET_RATE_KEYS))
        if unknown:
            raise InvalidParameter(
                f"unknown bandwidth option {unknown[0]!r}{where}: the {NET_RATE_PREFIX}* "
                f"options are {', '.join(NET_RATE_KEYS)}")
        if self.shaper is None:
            key = sorted(rates)[0]
            raise InvalidParameter(f"{key}{where} cannot be honoured: {self.why_not}")
        try:
            self.shaper.validate(rates)
        except ValueError as exc:
            raise InvalidParameter(f"{exc}{where}") from None

    def check_daemon(self) -> None:
        """daemon.json ``default-net-rates``; ``ValueError`` refuses the start."""
        try:
            self.check(self.daemon_rates, " (daemon.json default-net-rates)")
        except InvalidParameter as exc:
            raise ValueError(exc.message) from None

    def check_container(self, config: Mapping[str, Any], network_mode: str,
                        networks: Mapping[str, Mapping[str, Any]]) -> None:
        """At create: the labels and the endpoints' DriverOpts asked for."""
        labels = pick(config.get("Labels"))
        self._check_mode(labels, network_mode)
        self.check(labels, " (container label)")
        for name, settings in networks.items():
            self.check(pick(settings.get("DriverOpts")), f" (DriverOpts on network {name})")

    def _check_mode(self, rates: Mapping[str, str], network_mode: str) -> None:
        if not rates or self.mode_of is None:
            return
        why = _no_interface(network_mode, *self.mode_of(network_mode))
        if why is not None:
            raise InvalidParameter(
                f"{sorted(rates)[0]} cannot be applied: {why}; bandwidth limits need an "
                "interface of the container's own (a bridge network)")

    # -- the levels --------------------------------------------------------

    def in_force(self, c: Container, network_options: Mapping[str, str],
                 settings: Mapping[str, Any]) -> dict[str, str]:
        return resolve(self.daemon_rates, pick(network_options),
                       pick(c.config.get("Labels")), pick(settings.get("DriverOpts")))

    def _endpoint(self, c: Container, network_name: str, network_options: Mapping[str, str],
                  settings: Mapping[str, Any], ep: Endpoint) -> ShapedEndpoint:
        return ShapedEndpoint(
            container_id=c.id, network_id=ep.network_id, network_name=network_name,
            endpoint_id=ep.endpoint_id, host_interface=ep.host_interface,
            rates=self.in_force(c, network_options, settings),
            network_options=dict(network_options),
            driver_opts=dict(settings.get("DriverOpts") or {}))

    # -- the endpoints' life (NetworkAttachment calls these) ----------------

    async def joined(self, c: Container, network_name: str, network_options: Mapping[str, str],
                     settings: Mapping[str, Any], ep: Endpoint) -> None:
        """An endpoint was joined: its limits go on before the container runs.
        Raises when they cannot (the start fails: a limit is never dropped)."""
        shaped = self._endpoint(c, network_name, network_options, settings, ep)
        if not shaped.rates:
            return  # a fresh interface has no queues to take off
        if not ep.host_interface:
            asked = resolve(pick(network_options), pick(c.config.get("Labels")),
                            pick(settings.get("DriverOpts")))
            if not asked:
                return  # daemon.json's default is for endpoints with an interface
            raise InvalidParameter(
                f"{sorted(asked)[0]} cannot be applied: network {network_name}'s driver gives "
                "its endpoints no host interface to shape")
        if self.shaper is None:
            raise InvalidParameter(f"{sorted(shaped.rates)[0]} cannot be honoured: "
                                   f"{self.why_not}")
        self._shaped.add(ep.endpoint_id)
        await self.to_thread(self.shaper.joined, shaped)

    async def readopted(self, c: Container, network_name: str,
                        network_options: Mapping[str, str], settings: Mapping[str, Any],
                        ep: Endpoint) -> None:
        """Live-restore: an endpoint learnt back from a run that outlived its
        daemon.  Its queues are the kernel's still; they are set again as the
        options now say (daemon.json may have changed meanwhile), and the
        endpoint is the shaper's again, so an update and the stop reach it.
        Never raises: the container runs on, a failure is logged."""
        if self.shaper is None or not ep.host_interface:
            return
        shaped = self._endpoint(c, network_name, network_options, settings, ep)
        self._shaped.add(ep.endpoint_id)
        if not shaped.rates:
            return  # nothing asked; an IFB of an earlier life goes at the stop
        try:
            await self.to_thread(self.shaper.changed, shaped)
        except Exception as exc:
            log.warning("container.shaping_restore_failed", id=c.id, network=network_name,
                        error=str(exc))

    async def left(self, c: Container, network_name: str, ep: Endpoint) -> None:
        """An endpoint was left (its interface is gone); never raises."""
        if self.shaper is None or ep.endpoint_id not in self._shaped:
            return
        self._shaped.discard(ep.endpoint_id)
        shaped = ShapedEndpoint(container_id=c.id, network_id=ep.network_id,
                                network_name=network_name, endpoint_id=ep.endpoint_id,
                                host_interface=ep.host_interface)
        try:
            await self.to_thread(self.shaper.left, shaped)
        except Exception as exc:
            log.warning("container.shaping_release_failed", id=c.id, network=network_name,
                        error=str(exc))

    def close(self) -> None:
        """The daemon stops: the shaper finishes its background work (optional
        in the contract).  Blocking."""
        close = getattr(self.shaper, "close", None)
        if close is not None:
            close()

    # -- POST /containers/{id}/update ---------------------------------------

    def updated_labels(self, c: Container, asked: Any) -> dict[str, str]:
        """The container's labels after an update's ``SkiffNetRates`` (an empty
        value removes the label); 400 for anything that is not good."""
        if not isinstance(asked, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in asked.items()):
            raise InvalidParameter(
                f'{UPDATE_FIELD} must map strings to strings, e.g. '
                '{"skiff.net.egress-rate": "2mbit"}')
        self._check_mode(asked, c.network_mode)
        self.check({k: v for k, v in asked.items() if v != "" or k not in NET_RATE_KEYS},
                   f" ({UPDATE_FIELD})")
        labels = dict(c.config.get("Labels") or {})
        for key, value in asked.items():
            if value == "":
                labels.pop(key, None)
            else:
                labels[key] = value
        return labels

    async def apply_update(self, c: Container, track: Track,
                           network_options: Mapping[str, Mapping[str, str]]) -> None:
        """Apply the container's current options to each endpoint of its run
        (``network_options``: each joined network's options, by name)."""
        for name, (_driver, ep) in list(track.endpoints.items()):
            shaped = self._endpoint(c, name, network_options.get(name, {}),
                                    c.networks.get(name, {}), ep)
            if not shaped.rates and ep.endpoint_id not in self._shaped:
                continue
            if self.shaper is None:
                raise InvalidParameter(f"{sorted(shaped.rates)[0]} cannot be honoured: "
                                       f"{self.why_not}")
            self._shaped.add(ep.endpoint_id)
            await self.to_thread(self.shaper.changed, shaped)
