"""The firewall against neighbours and containers: unpublished ports, direct routing,
spoofed loopback destinations, the host's 127.0.0.1 services, FORWARD policy.

"Outside" is a neighbour: a network namespace of the test's own, linked by a
veth to the suite's namespace (which plays the host), with a route to the
container subnet through the host.  Each test shows the attack failing, then
lifts the protection (deletes the rule in this namespace, or sets the sysctl
back) and shows the same attack succeeding, then puts it back.  Where two
layers stop one attack, each is shown to stop it alone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shlex
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from skiff.plugins.network._netns import run_in_netns
from tests.daemon import Daemon

T = TypeVar("T")
SERVE = "while true; do echo hello-from-$HOSTNAME | nc -l -p 80; done"
BLOCKED_WAIT = 1.5  # seconds a dropped SYN is given to be answered
ETH_P_IP = 0x0800


# -- the neighbour -----------------------------------------------------------------


def _sh(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


def netns_process() -> subprocess.Popen[bytes]:
    """A sleeping process in a network namespace of its own (kill it afterwards)."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    own = os.readlink("/proc/thread-self/ns/net")
    deadline = time.monotonic() + 30
    # Popen returns at fork; unshare(1) switches namespace a little later
    while os.readlink(f"/proc/{proc.pid}/ns/net") == own:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("unshare --net did not take effect")
        time.sleep(0.005)
    return proc


class Neighbour:
    """Another host on the LAN: its own network namespace, a veth to the suite's."""

    def __init__(self) -> None:
        self.proc = netns_process()
        self.ns = f"/proc/{self.proc.pid}/ns/net"
        tag = secrets.token_hex(3)
        self.host_if, self.if_ = f"skfo{tag}", f"skfn{tag}"
        # 198.18.0.0/15 (RFC 2544, benchmarking): never routed anywhere real
        net = ipaddress.IPv4Network(f"198.{18 + secrets.randbelow(2)}."
                                    f"{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30")
        self.host_ip, self.ip = (str(a) for a in net.hosts())
        try:
            _sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.if_,
                "netns", str(self.proc.pid))
            _sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _sh("ip", "link", "set", self.host_if, "up")
            self.ip_cmd("addr", "add", f"{self.ip}/30", "dev", self.if_)
            self.ip_cmd("link", "set", self.if_, "up")
            self.ip_cmd("link", "set", "lo", "up")
            # not /sys/class/net: sysfs shows the namespace that mounted it
            self.host_mac = _sh("ip", "-o", "link", "show", self.host_if).split(
                "link/ether ")[1].split()[0]
        except BaseException:
            self.close()
            raise

    def ip_cmd(self, *args: str) -> str:
        return _sh("nsenter", f"--net={self.ns}", "ip", *args)

    def route(self, subnet: str) -> None:
        """Route ``subnet`` through the host, as a LAN neighbour of a container host may."""
        self.ip_cmd("route", "add", subnet, "via", self.host_ip)

    def run(self, fn: Callable[[], T]) -> T:
        return run_in_netns(self.ns, fn)

    def tcp(self, ip: str, port: int, timeout: float = BLOCKED_WAIT) -> bytes | None:
        """What a server at ip:port says to this neighbour; None when nothing answers
        within ``timeout`` (a refusal is retried: the busybox server restarts its
        ``nc`` between connections)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock = self.run(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            with sock:
                sock.settimeout(left)
                try:
                    sock.connect((ip, port))
                    return sock.recv(100) or b""
                except ConnectionRefusedError:
                    time.sleep(0.05)
                except OSError:
                    return None
        return None

    def send_syn(self, dst: str, port: int, sport: int) -> None:
        """One TCP SYN for dst:port straight to the host's MAC: a crafted packet,
        whose destination may be one no router would carry (127.0.0.1)."""
        raw = self.run(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                             socket.htons(ETH_P_IP)))
        with raw:
            raw.bind((self.if_, ETH_P_IP))
            raw.send(bytes.fromhex(self.host_mac.replace(":", "")) + raw.getsockname()[4]
                     + b"\x08\x00" + _syn(self.ip, dst, sport, port))

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        self.proc.kill()
        self.proc.wait()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def container_answers_spoofed_syn(neighbour: Neighbour, bridge: str, ctr_ip: str,
                                  dst: str, port: int) -> bool:
    """The neighbour sends SYNs for dst:port; whether the container at ctr_ip
    answered one (SYN-ACK, or RST between two ``nc``s), seen on the bridge.

    Seen on the host, not at the neighbour: a recent kernel (6.18 here) drops
    the answer once conntrack has given it back its 127.0.0.1 source, an older
    one sends it out; either way the spoofed packet reached the container."""
    sport = 20000 + secrets.randbelow(10000)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP)) as sniff:
        sniff.bind((bridge, ETH_P_IP))
        ctr = socket.inet_aton(ctr_ip)
        deadline = time.monotonic() + BLOCKED_WAIT
        next_syn = 0.0
        while (now := time.monotonic()) < deadline:
            if now >= next_syn:
                neighbour.send_syn(dst, port, sport)
                next_syn = now + 0.3
            sniff.settimeout(max(0.01, min(next_syn, deadline) - now))
            try:
                data = sniff.recv(2048)
            except TimeoutError:
                continue
            ip = data[14:]
            if len(ip) < 40 or ip[9] != socket.IPPROTO_TCP or ip[12:16] != ctr:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4:]
            got_sport, got_dport = struct.unpack("!HH", tcp[:4])
            if got_sport == 80 and got_dport == sport and (tcp[13] & 0x16) in (0x12, 0x04,
                                                                                0x14):
                return True
    return False


def _syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, secrets.randbits(32), 0, 5 << 4, 0x02,
                      65535, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", _checksum(s + d + struct.pack("!BBH", 0, 6, len(tcp))
                                                 + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), secrets.randbits(16), 0x4000,
                     64, socket.IPPROTO_TCP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp


@pytest.fixture
def neighbour() -> Iterator[Neighbour]:
    n = Neighbour()
    try:
        yield n
    finally:
        n.close()


# -- rules, lifted and put back -------------------------------------------------------


def _chain_rules(table: str, chain: str) -> list[str]:
    return [line for line in _sh("iptables", "-t", table, "-S", chain).splitlines()
            if line.startswith("-A ")]


@contextlib.contextmanager
def lifted(table: str, chain: str, *must: str) -> Iterator[None]:
    """Delete the one rule of ``chain`` whose text holds every string of ``must``;
    put it back at the same place afterwards."""
    rules = _chain_rules(table, chain)
    found = [i for i, r in enumerate(rules) if all(m in r for m in must)]
    assert len(found) == 1, f"expected one rule with {must} in {table}/{chain}: {rules}"
    args = shlex.split(rules[found[0]])[2:]
    _sh("iptables", "-t", table, "-D", chain, *args)
    try:
        yield
    finally:
        _sh("iptables", "-t", table, "-I", chain, str(found[0] + 1), *args)


@contextlib.contextmanager
def forward_policy(policy: str) -> Iterator[None]:
    """The filter FORWARD policy set to ``policy`` for a while."""
    before = _sh("iptables", "-S", "FORWARD").splitlines()[0].split()[-1]
    _sh("iptables", "-P", "FORWARD", policy)
    try:
        yield
    finally:
        _sh("iptables", "-P", "FORWARD", before)


# -- containers ----------------------------------------------------------------------


def _inspect(d: Daemon, ref: str) -> dict:
    return json.loads(d.docker("inspect", ref, check=True).stdout)[0]


@contextlib.contextmanager
def server(d: Daemon, *args: str) -> Iterator[str]:
    """A busybox container answering on its port 80; yields its address."""
    name = f"srv-{secrets.token_hex(4)}"
    d.docker("run", "-d", "--name", name, *args, "busybox", "sh", "-c", SERVE, check=True)
    try:
        yield _inspect(d, name)["NetworkSettings"]["IPAddress"]
    finally:
        d.docker("rm", "-f", name)


def _wait_serving(ip: str, port: int = 80) -> None:
    """Until the container's nc listens (the host itself may always reach it)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1) as s:
            if s.recv(100).startswith(b"hello-from-"):
                return
        time.sleep(0.1)
    raise AssertionError(f"the container at {ip}:{port} never answered the host")


def _bridge(d: Daemon) -> tuple[str, str]:
    return d.config["bridge"], str(ipaddress.IPv4Interface(d.config["bip"]).network)


# -- the attacks ------------------------------------------------------------------------


def test_neighbour_cannot_reach_unpublished_port(skiffd: Daemon,
                                                 neighbour: Neighbour) -> None:
    """moby#14041 class (unpublished container ports reachable from the LAN): a
    neighbour that routes the container subnet through the host connects to a
    port that was never published.  Two layers stop it, each alone: the raw
    PREROUTING direct-routing drop and the final per-bridge FORWARD drop; the
    FORWARD policy is held at ACCEPT so that it proves nothing here."""
    bridge, subnet = _bridge(skiffd)
    neighbour.route(subnet)
    with forward_policy("ACCEPT"), server(skiffd) as ip:
        _wait_serving(ip)
        assert neighbour.tcp(ip, 80) is None, "an unpublished port answered a neighbour"
        with lifted("raw", "PREROUTING", f"skiff:{bridge}", f"-d {subnet}"):
            assert neighbour.tcp(ip, 80) is None, "the final FORWARD drop alone did not hold"
        with lifted("filter", "FORWARD", f"skiff:{bridge}", f"! -i {bridge} -o {bridge}",
                    "-j DROP"):
            assert neighbour.tcp(ip, 80) is None, "the direct-routing drop alone did not hold"
            with lifted("raw", "PREROUTING", f"skiff:{bridge}", f"-d {subnet}"):
                # both protections off: the same connection goes through
                assert (neighbour.tcp(ip, 80) or b"").startswith(b"hello-from-")
        assert neighbour.tcp(ip, 80) is None


def test_neighbour_reaches_published_port_only_through_the_host(
        skiffd: Daemon, neighbour: Neighbour) -> None:
    """The rules keep what must work: a port published on every address answers
    a neighbour at the host's address (DNAT), while the same container port at
    the container's own address is closed to it (moby#45610 class: direct
    routing around the published mapping)."""
    bridge, subnet = _bridge(skiffd)
    neighbour.route(subnet)
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    with forward_policy("ACCEPT"), server(skiffd, "-p", f"{port}:80") as ip:
        _wait_serving(ip)
        assert (neighbour.tcp(neighbour.host_ip, port, timeout=5) or b"").startswith(
            b"hello-from-"), "a published port did not answer a neighbour"
        assert neighbour.tcp(ip, 80) is None, "direct routing reached a published container port"
        with lifted("raw", "PREROUTING", f"skiff:{bridge}", f"-d {subnet}"):
            assert (neighbour.tcp(ip, 80) or b"").startswith(b"hello-from-")


def test_loopback_published_port_not_reachable_by_direct_routing(
        skiffd: Daemon, neighbour: Neighbour) -> None:
    """moby#45610: a port published on 127.0.0.1 only must not answer a neighbour
    that routes to the container's address.  The published port is ACCEPTed
    in FORWARD (it is published), so the raw direct-routing drop is what
    holds; lifted, the neighbour gets in."""
    bridge, subnet = _bridge(skiffd)
    neighbour.route(subnet)
    with forward_policy("ACCEPT"), server(skiffd, "-p", "127.0.0.1::80") as ip:
        _wait_serving(ip)
        assert neighbour.tcp(ip, 80) is None
        with lifted("raw", "PREROUTING", f"skiff:{bridge}", f"-d {subnet}"):
            assert (neighbour.tcp(ip, 80) or b"").startswith(b"hello-from-")


def test_spoofed_loopback_destination_dropped(skiffd: Daemon, neighbour: Neighbour) -> None:
    """moby#41872: a neighbour sends a SYN for 127.0.0.1:PORT (PORT published on
    127.0.0.1 only) to the host's MAC.  Without protection the DNAT happens
    before the kernel can call the destination a martian, and the container
    gets the packet and answers.  The per-port raw drop (not from lo) stops
    it; lifted, the container answers again."""
    bridge, _ = _bridge(skiffd)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with forward_policy("ACCEPT"), server(skiffd, "-p", f"127.0.0.1:{port}:80") as ip:
        _wait_serving(ip)
        _wait_serving("127.0.0.1", port)  # the host itself still uses it
        def attack() -> bool:
            return container_answers_spoofed_syn(neighbour, bridge, ip, "127.0.0.1", port)

        assert not attack(), "a spoofed 127.0.0.1 destination reached the container"
        with lifted("raw", "PREROUTING", f"skiff:{bridge}", "-d 127.0.0.1/32",
                    f"--dport {port}"):
            assert attack()
        assert not attack()
    # the port's rules went with the container
    assert f"--dport {port} " not in _sh("iptables-save")


def _route_localnet(bridge: str) -> str:
    return Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").read_text().strip()


@contextlib.contextmanager
def route_localnet(bridge: str, value: str) -> Iterator[None]:
    path = Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
    before = path.read_text().strip()
    path.write_text(value)
    try:
        yield
    finally:
        path.write_text(before)


def test_container_cannot_reach_host_loopback_service(skiffd: Daemon) -> None:
    """CVE-2020-8558 class: a container (here with NET_ADMIN in its own namespace)
    routes 127.0.0.1 to its gateway and sends a datagram to a host service
    bound to 127.0.0.1 (one way is enough to show it: with raw sockets, or
    route_localnet in its own namespace, the replies are its too).  Two layers
    stop it, each alone: route_localnet off on a bridge with no port published
    on loopback (the kernel's martian check), and the INPUT guard kube-proxy
    added for CVE-2020-8558.  With both off the datagram reaches the host's
    service."""
    bridge, _ = _bridge(skiffd)
    gw = str(ipaddress.IPv4Interface(skiffd.config["bip"]).ip)
    secret = secrets.token_hex(8)
    service = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    service.bind(("127.0.0.1", 0))
    port = service.getsockname()[1]
    name = f"atk-{secrets.token_hex(4)}"
    skiffd.docker("run", "-d", "--name", name, "--cap-add", "NET_ADMIN", "busybox",
                  "sleep", "3600", check=True)
    try:
        skiffd.docker("exec", name, "sh", "-c",
                      "ip route del local 127.0.0.1 dev lo table local && "
                      "ip route del local 127.0.0.0/8 dev lo table local && "
                      f"ip route add 127.0.0.1/32 via {gw} dev eth0", check=True)

        def reached() -> bool:
            while True:  # drop what an earlier step may have let through late
                service.setblocking(False)
                try:
                    service.recv(100)
                except BlockingIOError:
                    break
            service.setblocking(True)
            # busybox's nc has no UDP; tftp's read request carries the
            # file name to any UDP port
            skiffd.docker("exec", name, "timeout", "1", "tftp", "-g", "-r", secret,
                          "-l", "/dev/null", "127.0.0.1", str(port))
            service.settimeout(BLOCKED_WAIT)
            try:
                return secret.encode() in service.recv(100)
            except TimeoutError:
                return False

        assert _route_localnet(bridge) == "0", "route_localnet on with nothing published"
        assert not reached(), "a container reached a host service on 127.0.0.1"
        guard = ("filter", "INPUT", f"skiff:{bridge}", "-d 127.0.0.0/8")
        with lifted(*guard):
            assert not reached(), "route_localnet=0 alone did not hold"
        with route_localnet(bridge, "1"):
            assert not reached(), "the INPUT guard alone did not hold"
            with lifted(*guard):
                assert reached()  # both off: the container is in
        assert not reached()
    finally:
        skiffd.docker("rm", "-f", name)
        service.close()


def test_route_localnet_only_while_a_port_is_published_on_loopback(skiffd: Daemon) -> None:
    """route_localnet (the kernel setting behind CVE-2020-8558) is on for a bridge
    only while one of its containers publishes on 127.0.0.1 or on every
    address, which the host reaches at 127.0.0.1:PORT; a port on another
    address leaves it off."""
    bridge, _ = _bridge(skiffd)
    assert _route_localnet(bridge) == "0"
    with server(skiffd, "-p", "198.18.255.1::80"):  # not a local address: never loopback
        assert _route_localnet(bridge) == "0"
    with server(skiffd, "-p", "127.0.0.1::80"):
        assert _route_localnet(bridge) == "1"
        with server(skiffd, "-p", "80"):
            assert _route_localnet(bridge) == "1"
        assert _route_localnet(bridge) == "1"  # the first one still publishes
    assert _route_localnet(bridge) == "0"


# -- the FORWARD policy ---------------------------------------------------------------


def _host_between_neighbours(config: dict) -> tuple[str, bool]:
    """In a fresh namespace, forwarding off and policy ACCEPT (a host that never
    routed): the bridge driver makes a network; then neighbour A, with a route
    to neighbour B through the host, connects to a server on B.  Returns the
    FORWARD policy left and whether A got through."""
    from skiff.core.hookspecs import NetworkContext, NetworkOptions
    from skiff.plugins.network.bridge.driver import BridgeNetworkDriver

    fresh = netns_process()
    try:
        ns = f"/proc/{fresh.pid}/ns/net"

        def inside() -> tuple[str, bool]:
            _sh("ip", "link", "set", "lo", "up")
            # a new namespace copies the init namespace's IPv4 settings
            # (devconf_inherit_init_net 0): make it a host that never routed
            Path("/proc/sys/net/ipv4/ip_forward").write_text("0")
            _sh("iptables", "-P", "FORWARD", "ACCEPT")
            a, b = Neighbour(), Neighbour()
            driver = BridgeNetworkDriver(NetworkContext("/nonexistent", "/nonexistent", config))
            nid = secrets.token_hex(32)
            try:
                a.route(f"{b.ip}/32")
                b.route(f"{a.ip}/32")
                driver.create_network(nid, NetworkOptions(
                    bridge=f"skf{secrets.token_hex(3)}",
                    subnet=f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.0/24"))
                assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
                policy = _sh("iptables", "-S", "FORWARD").splitlines()[0].split()[-1]
                listener = b.run(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                with listener:
                    listener.bind((b.ip, 0))
                    listener.listen(1)
                    conn = a.run(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    with conn:
                        conn.settimeout(BLOCKED_WAIT)
                        try:
                            conn.connect((b.ip, listener.getsockname()[1]))
                            through = True
                        except OSError:
                            through = False
                return policy, through
            finally:
                driver.delete_network(nid)
                a.close()
                b.close()

        return run_in_netns(ns, inside)
    finally:
        fresh.kill()
        fresh.wait()


def test_enabling_forwarding_does_not_make_the_host_a_router() -> None:
    """Forwarding turned on for containers must not turn the host into a router
    between its neighbours (the reason dockerd sets FORWARD to DROP when it
    enables ip_forward).  With daemon.json ``ip-forward-no-drop`` (the
    protection off) the same neighbour gets through."""
    policy, through = _host_between_neighbours({})
    assert policy == "DROP" and not through, "the host forwarded between its neighbours"
    policy, through = _host_between_neighbours({"ip-forward-no-drop": True})
    assert policy == "ACCEPT" and through


def test_drops_go_ahead_of_an_administrators_accepts() -> None:
    """Rules an administrator had before skiff came (a blanket ACCEPT in raw
    PREROUTING, or for the bridge in INPUT) must not skip the direct-routing
    drop or the CVE-2020-8558 guard: skiff inserts them first in those chains.
    (An ordering check: the attacks above show what those rules stop.)"""
    from skiff.core.hookspecs import NetworkContext, NetworkOptions
    from skiff.plugins.network.bridge.driver import BridgeNetworkDriver

    bridge = f"skf{secrets.token_hex(3)}"
    mark = ["-m", "comment", "--comment", f"admin-{bridge}"]
    admin = [("raw", "PREROUTING", ["-j", "ACCEPT", *mark]),
             ("filter", "INPUT", ["-i", bridge, "-j", "ACCEPT", *mark])]
    for table, chain, spec in admin:
        _sh("iptables", "-t", table, "-A", chain, *spec)
    driver = BridgeNetworkDriver(NetworkContext("/nonexistent", "/nonexistent", {}))
    nid = secrets.token_hex(32)
    try:
        driver.create_network(nid, NetworkOptions(
            bridge=bridge,
            subnet=f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.0/24"))
        for table, chain, _ in admin:
            rules = [r for r in _chain_rules(table, chain) if bridge in r]
            assert f"skiff:{bridge}" in rules[0] and f"admin-{bridge}" in rules[-1], rules
    finally:
        driver.delete_network(nid)
        for table, chain, spec in admin:
            subprocess.run(["iptables", "-t", table, "-D", chain, *spec], capture_output=True)
