"""The overlay's kernel side on one node: a namespace per network, a bridge and a VXLAN.

Each overlay network gets, on every node where it is plumbed, a network
namespace of its own (the "sandbox", as Docker's overlay has) holding a
bridge ``br0`` and a VXLAN device ``vxlan0`` enslaved to it.  The VXLAN is
made in the daemon's namespace and moved in: its UDP socket stays in the
namespace it was made in, so encapsulated traffic uses the host's routes and
addresses while the bridge and the containers' veths live apart from the
host's firewall and its other bridges.

The namespace is held by an open descriptor only (no bind mount, no name on
the host): when the daemon closes it or dies, the kernel removes the
namespace with its bridge, its VXLAN and the host ends of the containers'
veths.  Nothing is left to reconcile.

No learning and no flooding: ``vxlan0`` has learning off and ARP proxying on,
and the driver writes a forwarding entry (MAC -> remote node) and a neighbour
entry (IP -> MAC) for every endpoint of another node, from the store.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from skiff.core import syscalls
from skiff.plugins.network._netns import run_in_netns

T = TypeVar("T")

VXLAN_PORT = 4789  #: IANA's, as Docker's overlay
#: the VXLAN header and its outer IPv4/UDP/Ethernet headers on a 1500-byte underlay
MTU = 1450
BRIDGE = "br0"
VXLAN = "vxlan0"
NUD_PERMANENT = 0x80


def new_namespace() -> int:
    """A new network namespace, as an open descriptor (the only thing holding it)."""
    result: list[int] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            syscalls.unshare(syscalls.CLONE_NEWNET)  # this thread only; it ends right after
            result.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name="skiff-overlay-ns", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class Sandbox:
    """One overlay network's namespace on this node, with its bridge and VXLAN."""

    def __init__(self, vni: int, local_ip: str) -> None:
        self.vni = vni
        self.local_ip = local_ip
        self.fd = new_namespace()
        self.path = f"/proc/{os.getpid()}/fd/{self.fd}"
        self._lock = threading.Lock()
        try:
            self._plumb()
        except BaseException:
            self.close()
            raise

    def inside(self, fn: Callable[[], T]) -> T:
        return run_in_netns(self.path, fn)

    def _plumb(self) -> None:
        from pyroute2 import IPRoute

        temp = "skfx" + secrets.token_hex(5)
        with IPRoute() as ipr:
            ipr.link("add", ifname=temp, kind="vxlan", vxlan_id=self.vni,
                     vxlan_local=self.local_ip, vxlan_port=VXLAN_PORT, vxlan_learning=0,
                     vxlan_proxy=1, mtu=MTU)
            try:
                idx = ipr.link_lookup(ifname=temp)[0]
                ipr.link("set", index=idx, net_ns_fd=self.fd)
            except BaseException:
                with contextlib.suppress(Exception):
                    ipr.link("del", ifname=temp)
                raise

        def build() -> None:
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                ipr.link("add", ifname=BRIDGE, kind="bridge", mtu=MTU)
                br = ipr.link_lookup(ifname=BRIDGE)[0]
                vx = ipr.link_lookup(ifname=temp)[0]
                ipr.link("set", index=vx, ifname=VXLAN, master=br)
                ipr.link("set", index=br, state="up")
                ipr.link("set", index=vx, state="up")

        self.inside(build)

    def attach(self, container_ns: str, ifname: str, mac: str, address: str,
               prefix_len: int) -> str:
        """A veth from ``br0`` into the container's namespace, named ``ifname`` there,
        with ``mac`` and ``address``; the host end's name (in the sandbox)."""
        from pyroute2 import IPRoute

        host_end = "ov" + secrets.token_hex(5)
        peer = "ovp" + host_end[2:]
        target = os.open(container_ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            def plug() -> None:
                with IPRoute() as ipr:
                    br = ipr.link_lookup(ifname=BRIDGE)[0]
                    ipr.link("add", ifname=host_end, kind="veth", master=br, mtu=MTU,
                             peer={"ifname": peer, "net_ns_fd": target, "mtu": MTU})
                    ipr.link("set", index=ipr.link_lookup(ifname=host_end)[0], state="up")
            self.inside(plug)
        finally:
            os.close(target)

        def configure() -> None:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=peer)[0]
                ipr.link("set", index=idx, ifname=ifname, address=mac)
                ipr.addr("add", index=idx, address=address, prefixlen=prefix_len)
                ipr.link("set", index=idx, state="up")
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        run_in_netns(container_ns, configure)
        return host_end

    def detach(self, host_end: str) -> None:
        """Remove a container's veth (both ends go). Idempotent."""
        from pyroute2 import IPRoute

        def unplug() -> None:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=host_end)
                if found:
                    with contextlib.suppress(Exception):
                        ipr.link("del", index=found[0])
        with contextlib.suppress(OSError):
            self.inside(unplug)

    def learn(self, mac: str, ip: str, vtep: str) -> None:
        """Another node's endpoint: frames for ``mac`` go to ``vtep``, ``ip`` is ``mac``."""
        from pyroute2 import IPRoute

        def program() -> None:
            with IPRoute() as ipr:
                vx = ipr.link_lookup(ifname=VXLAN)[0]
                for entry in ipr.fdb("dump", ifindex=vx):  # a stale entry for this MAC
                    if entry.get_attr("NDA_LLADDR") == mac and entry.get_attr("NDA_DST"):
                        with contextlib.suppress(Exception):
                            ipr.fdb("del", ifindex=vx, lladdr=mac,
                                    dst=entry.get_attr("NDA_DST"))
                ipr.fdb("append", ifindex=vx, lladdr=mac, dst=vtep, state=NUD_PERMANENT)
                ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=vx, state=NUD_PERMANENT)
        with self._lock:
            self.inside(program)

    def forget(self, mac: str, ip: str, vtep: str) -> None:
        """Undo ``learn``. Idempotent."""
        from pyroute2 import IPRoute

        def unprogram() -> None:
            with IPRoute() as ipr:
                vx = ipr.link_lookup(ifname=VXLAN)[0]
                with contextlib.suppress(Exception):  # an appended entry is found by its dst
                    ipr.fdb("del", ifindex=vx, lladdr=mac, dst=vtep)
                with contextlib.suppress(Exception):
                    ipr.neigh("del", dst=ip, lladdr=mac, ifindex=vx)
        with self._lock, contextlib.suppress(OSError):
            self.inside(unprogram)

    def entries(self) -> dict[str, Any]:
        """The VXLAN's forwarding entries, MAC -> remote node (for tests and debugging)."""
        from pyroute2 import IPRoute

        def read() -> dict[str, Any]:
            with IPRoute() as ipr:
                vx = ipr.link_lookup(ifname=VXLAN)[0]
                return {m.get_attr("NDA_LLADDR"): m.get_attr("NDA_DST")
                        for m in ipr.fdb("dump", ifindex=vx) if m.get_attr("NDA_DST")}
        return self.inside(read)

    def close(self) -> None:
        """Let the namespace go, and everything in it. Idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def socket_inside(path: str, address: str, port: int) -> socket.socket:
    """A UDP socket bound to ``address:port`` inside the namespace at ``path``."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except BaseException:
            sock.close()
            raise
        return sock
    return run_in_netns(path, make)
