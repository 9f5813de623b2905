"""A container's EndpointSettings as clients send them (``NetworkingConfig`` at
create, ``EndpointConfig`` at ``network connect``): checked, and kept as
``docker inspect`` shows them under ``NetworkSettings.Networks.<name>``.

The MAC address asked for is kept under ``REQUESTED_MAC``, apart from
``MacAddress`` (the address the endpoint has while it is joined, "" when not),
so that it survives a stop and applies again at the next start.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from skiff.core.errors import InvalidParameter

#: the key of the MAC address asked for; keys with "_" are never shown by inspect
REQUESTED_MAC = "_RequestedMac"

_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


def checked_mac(text: str) -> str:
    """``text`` as a lower-case, colon-separated MAC; 400 when it is not one."""
    if not _MAC.match(text):
        raise InvalidParameter(f"address {text}: invalid MAC address")
    mac = text.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:
        raise InvalidParameter(f"address {text}: invalid MAC address (a multicast address)")
    return mac


def _strings(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"{what} must be a list of strings")
    return list(value)


def requested(cfg: Any, *, subnet: str = "", config_mac: str = "", predefined: bool = False,
              user_subnet: bool = True, subnet6: str | None = None) -> dict[str, Any]:
    """The settings kept for one network from a client's EndpointSettings.

    Refused here, before anything is made, as dockerd refuses them: an
    IPv4Address outside ``subnet`` (the network's), or on a ``predefined``
    network, or on one whose subnet was not given at create (not
    ``user_subnet``); aliases on a predefined network.  ``config_mac``: the
    container's Config.MacAddress, which Docker applies to the first network.
    An IPv6Address is refused the same ways against ``subnet6`` (the
    network's IPv6 subnet, "" when it has none; None: not known, not checked).
    """
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise InvalidParameter("EndpointSettings must be a JSON object")
    ipam = cfg.get("IPAMConfig")
    if ipam is not None and not isinstance(ipam, dict):
        raise InvalidParameter("IPAMConfig must be a JSON object")
    ip = (ipam or {}).get("IPv4Address") or ""
    if ip:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            raise InvalidParameter(f"invalid IPv4 address: {ip}") from None
        if predefined:
            raise InvalidParameter(
                "user specified IP address is supported on user defined networks only")
        if not user_subnet:
            raise InvalidParameter(
                "user specified IP address is supported only when connecting to networks "
                "with user configured subnets")
        if subnet and addr not in ipaddress.IPv4Network(subnet):
            raise InvalidParameter(
                f"Invalid address {ip}: It does not belong to any of this network's subnets")
    ip6 = (ipam or {}).get("IPv6Address") or ""
    if ip6:
        try:
            addr6 = ipaddress.IPv6Address(ip6)
        except ValueError:
            raise InvalidParameter(f"invalid IPv6 address: {ip6}") from None
        if predefined:
            raise InvalidParameter(
                "user specified IP address is supported on user defined networks only")
        if subnet6 is not None and not subnet6:
            raise InvalidParameter(
                "user specified IP address is supported only when connecting to networks "
                "with user configured subnets")
        if subnet6 and addr6 not in ipaddress.IPv6Network(subnet6):
            raise InvalidParameter(
                f"Invalid address {ip6}: It does not belong to any of this network's subnets")
    opts = cfg.get("DriverOpts")
    if opts is not None and (not isinstance(opts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in opts.items())):
        raise InvalidParameter("DriverOpts must map strings to strings")
    links = _strings(cfg.get("Links"), "Links")
    for link in links or []:
        name, _, alias = link.partition(":")
        if not name.strip("/") or (":" in link and not alias):
            raise InvalidParameter(f"invalid link format: {link}")
    aliases = _strings(cfg.get("Aliases"), "Aliases")
    if aliases and predefined:
        raise InvalidParameter(
            "network-scoped alias is supported only for containers in user defined networks")
    settings: dict[str, Any] = {
        "IPAMConfig": ipam or None, "Links": links,
        "Aliases": aliases,
        "DriverOpts": dict(opts) if opts else None,
    }
    mac = cfg.get("MacAddress") or config_mac
    if mac:
        if not isinstance(mac, str):
            raise InvalidParameter("MacAddress must be a string")
        settings[REQUESTED_MAC] = checked_mac(mac)
    return settings


def with_short_id(aliases: list[str] | None, container_id: str) -> list[str]:
    """A user network's aliases with the container's short ID, which dockerd adds."""
    out = list(aliases or [])
    if container_id[:12] not in out:
        out.append(container_id[:12])
    return out


def shown(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without the daemon's private keys."""
    return {k: v for k, v in settings.items() if not k.startswith("_")}


def link_aliases(links: list[str] | None) -> dict[str, str]:
    """EndpointSettings.Links (``name`` or ``name:alias``) as alias -> name."""
    out: dict[str, str] = {}
    for link in links or []:
        name, _, alias = link.partition(":")
        name = name.strip("/")
        out[(alias or name).rsplit("/", 1)[-1]] = name
    return out
