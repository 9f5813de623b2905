"""The embedded DNS server's first start, when several containers join at once.

compose starts the containers of a project in parallel, so the first endpoints
of a user network reach ``DnsServer.add`` together while its event loop thread
is still starting; each of them must wait for the loop, not only the one that
started it (the others once failed with an AssertionError, a 500 for
``docker start``).  Real sockets on 127.0.0.1, served and queried.
"""

from __future__ import annotations

import socket
import struct
import threading

from skiff.plugins.network.bridge.dns import DnsServer

CONTAINERS = 8
ROUNDS = 10


def query(name: str) -> bytes:
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\0" + struct.pack("!HH", 1, 1)


def served(server: DnsServer, sock: socket.socket, name: str) -> list[str]:
    """The A records ``sock`` answers for ``name`` (asked over real UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.sendto(query(name), sock.getsockname())
        reply = c.recv(512)
    count = struct.unpack("!H", reply[6:8])[0]
    return [socket.inet_ntoa(reply[-4 - 16 * i:][:4]) for i in range(count)][::-1]


def start_together() -> None:
    """One fresh server, ``CONTAINERS`` threads calling ``add`` at the same moment."""
    server = DnsServer(lambda key, name: [f"10.0.0.{int(key)}"] if name == "web" else None,
                       upstreams=[])
    socks = []
    for _ in range(CONTAINERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    gate = threading.Barrier(CONTAINERS)
    failures: list[BaseException] = []

    def join(i: int) -> None:
        gate.wait()
        try:
            server.add(str(i + 1), socks[i])
        except BaseException as exc:  # what docker start would have answered 500
            failures.append(exc)

    threads = [threading.Thread(target=join, args=(i,)) for i in range(CONTAINERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert failures == []
        for i, s in enumerate(socks):
            assert served(server, s, "web") == [f"10.0.0.{i + 1}"]
    finally:
        server.stop()
        for s in socks:
            s.close()


def test_containers_joining_together_all_get_served() -> None:
    for _ in range(ROUNDS):  # the window is short: a few fresh starts
        start_together()


def test_a_container_on_two_networks_resolves_both_through_either_server() -> None:
    """The bridge's server (127.0.0.11) and the overlay's (127.0.0.12) both serve a
    container on both kinds of network; resolv.conf names only one of them, so
    each answers the other's names too, and stops once the other has left."""
    bridge = DnsServer(lambda key, name: ["10.1.0.5"] if name == "on-bridge" else None,
                       upstreams=[])
    overlay = DnsServer(lambda key, name: ["10.2.0.5"] if name == "on-overlay" else None,
                        upstreams=[])
    socks = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    try:
        bridge.add("c1", socks[0])
        overlay.add("c1", socks[1])
        bridge.add("c2", socks[2])  # c2 is on the bridge only
        for sock, server in ((socks[0], bridge), (socks[1], overlay)):
            assert served(server, sock, "on-bridge") == ["10.1.0.5"]
            assert served(server, sock, "on-overlay") == ["10.2.0.5"]
        assert served(bridge, socks[2], "on-overlay") == []  # not c2's network
        overlay.remove("c1")
        assert served(bridge, socks[0], "on-overlay") == []
    finally:
        bridge.stop()
        overlay.stop()
        for s in socks:
            s.close()
