"""Address management inside one subnet: Docker's default IPAM, per network.

The gateway takes the first host address unless configured; containers get
the lowest free address of ``ip_range`` (the whole subnet by default),
skipping the network and broadcast addresses.  An IPv6 subnet works the
same way (its network address, the subnet-router anycast, is skipped; there
is no broadcast): the gateway ``::1``, then ``::2``, ``::3``, as dockerd
20.10's IPAM hands them out.  Allocations live in memory:
without live-restore no container survives its daemon, so a restarted daemon
starts with every address free, as dockerd does for the default bridge.
"""

from __future__ import annotations

import ipaddress
import threading


class AddressExhausted(Exception):
    """No free address is left in the pool."""


class AddressInUse(Exception):
    """A requested address is taken or outside the subnet."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Pool:
    """The addresses of one network's subnet (IPv4 or IPv6)."""

    def __init__(self, subnet: str, gateway: str = "", ip_range: str = "") -> None:
        self.subnet = ipaddress.ip_network(subnet, strict=False)
        self.v6 = self.subnet.version == 6
        if self.subnet.prefixlen > (126 if self.v6 else 30):
            raise ValueError(f"subnet {subnet} is too small")
        self.range = ipaddress.ip_network(ip_range, strict=False) if ip_range else self.subnet
        if self.range.version != self.subnet.version or not self.range.subnet_of(
                self.subnet):  # type: ignore[arg-type]
            raise ValueError(f"ip-range {ip_range} is not inside subnet {subnet}")
        first = self.subnet.network_address + 1
        self.gateway: Address = ipaddress.ip_address(gateway) if gateway else first
        if self.gateway not in self.subnet:
            raise ValueError(f"gateway {gateway} is not inside subnet {subnet}")
        self._used: set[Address] = {self.gateway}
        self._lock = threading.Lock()
        # Docker hands out addresses round-robin-ish from the last one given;
        # lowest-free is simpler and deterministic, which the tests prefer.
        self._reserved: set[Address] = {self.subnet.network_address}
        if not self.v6:
            self._reserved.add(self.subnet.broadcast_address)

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def allocate(self, wanted: str = "") -> str:
        """A free address (``wanted`` when given and free)."""
        with self._lock:
            if wanted:
                addr = ipaddress.ip_address(wanted)
                if addr not in self.subnet or addr in self._reserved:
                    raise AddressInUse(f"address {wanted} is not usable in {self.subnet}")
                if addr in self._used:
                    raise AddressInUse(f"Address already in use: {wanted}")
                self._used.add(addr)
                return str(addr)
            for addr in self.range.hosts() if self.range.prefixlen < 31 else self.range:
                if addr not in self._used and addr not in self._reserved:
                    self._used.add(addr)
                    return str(addr)
        raise AddressExhausted(f"no available IPv{self.subnet.version} addresses on network "
                               f"{self.subnet}")

    def release(self, address: str) -> None:
        """Give ``address`` back; unknown addresses are ignored (idempotent)."""
        with self._lock:
            addr = ipaddress.ip_address(address)
            if addr != self.gateway:
                self._used.discard(addr)

    def in_use(self) -> set[str]:
        with self._lock:
            return {str(a) for a in self._used if a != self.gateway}


def mac_for(address: str) -> str:
    """Docker's MAC for an IPv4 address: 02:42 followed by the address bytes."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in octets)
