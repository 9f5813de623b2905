"""The embedded DNS server against a flooding container (denial of service of the
daemon): in-flight relays, their tasks and their upstream sockets are bounded,
and the server keeps answering the flooder's neighbours and the flooder itself.

The upstream is a resolver of the test's on 127.0.0.1 that answers one name
and never answers the flood's names, so that every relayed flood query would
hold its task and socket for the whole upstream timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.plugins.network._netns import run_in_netns
from skiff.plugins.network.bridge import dns
from tests.daemon import Daemon, running_daemon
from tests.dnsstub import DnsStub

GOOD_NAME = "good.skiff.test"
GOOD_ADDR = "192.0.2.9"  # TEST-NET-1: an answer only, never a destination
FLOOD = 3000
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not in the socket module


@pytest.fixture(scope="module")
def upstream() -> Iterator[DnsStub]:
    u = DnsStub({GOOD_NAME: [GOOD_ADDR]}, unknown="silent")
    yield u
    u.close()


def query(name: str, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", dns.QTYPE_A, 1)


def flood(sock: socket.socket, dest: tuple[str, int], count: int) -> None:
    """``count`` queries for names only the (silent) upstream could answer, in
    bursts paced so that the server's receive buffer does not drop them."""
    for i in range(count):
        sock.sendto(query(f"f{i}-{secrets.token_hex(2)}.flood.test", i & 0xFFFF), dest)
        if i % 50 == 49:
            time.sleep(0.005)


def drain(sock: socket.socket) -> dict[int, int]:
    """Replies waiting on ``sock``, counted by rcode."""
    codes: dict[int, int] = {}
    sock.setblocking(False)
    try:
        while True:
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                return codes
            codes[reply[3] & 0x0F] = codes.get(reply[3] & 0x0F, 0) + 1
    finally:
        sock.setblocking(True)


def ask(sock: socket.socket, dest: tuple[str, int], name: str, timeout: float = 3
        ) -> bytes | None:
    """One query and its reply (matched by id), or None."""
    qid = secrets.randbelow(0x10000)
    sock.sendto(query(name, qid), dest)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            reply = sock.recv(4096)
            if struct.unpack("!H", reply[:2])[0] == qid:
                return reply
    except TimeoutError:
        pass
    return None


def answered_with(reply: bytes | None, addr: str) -> bool:
    return reply is not None and reply[3] & 0x0F == 0 and socket.inet_aton(addr) in reply


# -- the server alone: the bound, and the same flood without it ----------------------------


def _peak(server: dns.DnsServer, seconds: float) -> dict[str, int]:
    """The highest counts seen within ``seconds``, or until relays stop growing."""
    peak = {"relays": 0, "tasks": 0, "fds": 0}
    deadline = time.monotonic() + seconds
    steady = 0
    while time.monotonic() < deadline and steady < 10:
        now = {**server.stats(), "fds": len(os.listdir("/proc/self/fd"))}
        steady = steady + 1 if now["relays"] <= peak["relays"] else 0
        peak = {k: max(peak[k], now[k]) for k in peak}
        time.sleep(0.05)
    return peak


def _flood_server(upstream: DnsStub, clients: int, bounded: bool) -> dict[str, int]:
    """A DnsServer serving ``clients`` sockets, each flooded with FLOOD // clients
    queries; the peak of its relays, tasks and this process's descriptors
    (above what it had before the flood).  The upstream timeout is long here,
    so that on a slow machine too the relays of the whole flood overlap."""
    limits = {} if bounded else {"max_relays": None, "max_relays_per_client": None}
    server = dns.DnsServer(lambda key, name: None, [("127.0.0.1", upstream.port)], **limits)
    socks, attackers = [], []
    try:
        for i in range(clients):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)  # drop none
            socks.append(s)
            server.add(f"client{i}", s)
            attackers.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        base = {**server.stats(), "fds": len(os.listdir("/proc/self/fd"))}
        for s, a in zip(socks, attackers, strict=True):
            flood(a, s.getsockname(), FLOOD // clients)
        peak = _peak(server, 8.0)
        return {k: peak[k] - base[k] for k in peak}
    finally:
        server.stop()
        for s in socks + attackers:
            s.close()


@pytest.fixture
def slow_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns, "UPSTREAM_TIMEOUT", 15.0)


@pytest.fixture
def room_for_the_flood() -> Iterator[None]:
    """A soft descriptor limit above the unbounded flood's needs, when the hard
    limit allows (a VM's shell may start with 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FLOOD + 1024 if hard == resource.RLIM_INFINITY else min(hard, FLOOD + 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("slow_upstream", "room_for_the_flood")
def test_relays_bounded_and_unbounded_without_the_bound(upstream: DnsStub) -> None:
    """Denial of service of the daemon by DNS flood: one container sends
    thousands of queries that the upstream never answers.  With the bound, the
    server holds at most MAX_RELAYS_PER_CLIENT relays (a task and a socket
    each) for it; without it (bounds None) the same flood makes a task and a
    socket per packet, far beyond."""
    bounded = _flood_server(upstream, 1, bounded=True)
    assert bounded["relays"] == dns.MAX_RELAYS_PER_CLIENT, bounded
    assert bounded["tasks"] <= dns.MAX_RELAYS_PER_CLIENT + 2, bounded
    assert bounded["fds"] <= dns.MAX_RELAYS_PER_CLIENT + 2, bounded
    unbounded = _flood_server(upstream, 1, bounded=False)
    # beyond even the bound of all containers together (or up to the process's
    # descriptor limit, when a hard limit keeps it low: the same exhaustion)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert unbounded["relays"] > min(2 * dns.MAX_RELAYS, limit - 128), unbounded
    assert unbounded["fds"] > min(2 * dns.MAX_RELAYS, limit - 128), unbounded


@contextlib.contextmanager
def no_descriptor_left() -> Iterator[None]:
    """Every new descriptor of this process fails with EMFILE for a while: the
    holes below the highest open descriptor are filled, and the soft limit
    put just above it."""
    fillers = []
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    while (fd := os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)) < top:
        fillers.append(fd)
    fillers.append(fd)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(fillers) + 1, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)


def test_a_relay_without_a_descriptor_does_not_end_the_server(upstream: DnsStub) -> None:
    """Descriptor exhaustion (EMFILE) while relaying: the relay answers SERVFAIL
    and the server goes on; an exception escaping a relay would end the one
    event loop that serves every container's 127.0.0.11."""
    server = dns.DnsServer(lambda key, name: ["192.0.2.1"] if name == "local.test" else None,
                           [("127.0.0.1", upstream.port)])
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.add("client", srv)
        assert answered_with(ask(cli, srv.getsockname(), "local.test"), "192.0.2.1")
        with no_descriptor_left():
            reply = ask(cli, srv.getsockname(), "needs.a.relay.test")
            assert reply is not None and reply[3] & 0x0F == dns.RCODE_SERVFAIL, reply
        assert answered_with(ask(cli, srv.getsockname(), "local.test"), "192.0.2.1")
        assert server.stats()["relays"] == 0
    finally:
        server.stop()
        srv.close()
        cli.close()


@pytest.mark.usefixtures("slow_upstream")
def test_relays_bounded_across_clients(upstream: DnsStub) -> None:
    """Many flooding containers together stay under the global bound."""
    clients = dns.MAX_RELAYS // dns.MAX_RELAYS_PER_CLIENT + 2
    peak = _flood_server(upstream, clients, bounded=True)
    assert peak["relays"] == dns.MAX_RELAYS, peak
    assert peak["fds"] <= dns.MAX_RELAYS + 2, peak


# -- a real daemon, a container flooding it --------------------------------------------------


@pytest.fixture(scope="module")
def dnsd(tmp_path_factory: pytest.TempPathFactory, upstream: DnsStub) -> Iterator[Daemon]:
    base: Path = tmp_path_factory.mktemp("skiffd-dns")
    with running_daemon(base, dns=[f"127.0.0.1:{upstream.port}"]) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_dns_flood_leaves_daemon_bounded_and_answering(dnsd: Daemon,
                                                       upstream: DnsStub) -> None:
    """Denial of service of the daemon by DNS flood (issue 13, item 8): a
    container floods 127.0.0.11 with queries that must be relayed and are
    never answered.  The daemon's descriptors stay within the per-container
    bound, the flood beyond it is REFUSED at once, and during the flood the
    server still answers a neighbour's lookups (a container name, and a
    relayed name) and the flooder's own lookup of a container name."""
    assert dnsd.proc is not None
    pid = dnsd.proc.pid
    net = f"dnsflood-{secrets.token_hex(3)}"
    subnet = f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.0/24"
    dnsd.docker("network", "create", "--subnet", subnet, net, check=True)
    target, attacker = f"tgt-{secrets.token_hex(3)}", f"atk-{secrets.token_hex(3)}"
    try:
        for name in (target, attacker):
            dnsd.docker("run", "-d", "--name", name, "--network", net, "busybox",
                        "sleep", "3600", check=True)
        info = json.loads(dnsd.docker("inspect", target, attacker, check=True).stdout)
        target_ip = info[0]["NetworkSettings"]["Networks"][net]["IPAddress"]
        attacker_ip = info[1]["NetworkSettings"]["Networks"][net]["IPAddress"]
        attacker_pid = info[1]["State"]["Pid"]

        target_pid = info[0]["State"]["Pid"]

        def new_sock() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # room for every answer to the flood, to count them
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            return s

        sock = run_in_netns(f"/proc/{attacker_pid}/ns/net", new_sock)
        neighbour = run_in_netns(f"/proc/{target_pid}/ns/net", new_sock)
        with sock, neighbour:
            dest = (dns.DNS_IP, 53)
            # the server works, and its descriptors and memory before the flood
            assert answered_with(ask(sock, dest, target), target_ip)
            fds0, rss0 = _fds(pid), _rss_kib(pid)
            silent0 = upstream.silent
            started = time.monotonic()
            flood(sock, dest, FLOOD)
            peak_fds = _fds(pid)
            # during the flood (its relays wait out the upstream timeout): the
            # neighbour container's lookups, a name from the records and a
            # relayed one, and the flooder's own lookup of a name
            assert answered_with(ask(neighbour, dest, attacker, timeout=20), attacker_ip)
            peak_fds = max(peak_fds, _fds(pid))
            assert answered_with(ask(neighbour, dest, GOOD_NAME, timeout=20), GOOD_ADDR)
            codes = drain(sock)  # before ask() reads past the flood's answers
            assert answered_with(ask(sock, dest, target, timeout=20), target_ip)
            peak_fds = max(peak_fds, _fds(pid))
            assert peak_fds - fds0 <= dns.MAX_RELAYS_PER_CLIENT + 8, (fds0, peak_fds)
            # Only the bounded number was relayed: MAX_RELAYS_PER_CLIENT per
            # upstream timeout since the flood began (a slow machine works
            # through its backlog for longer); the rest got REFUSED at once.
            windows = 1 + int((time.monotonic() - started) / dns.UPSTREAM_TIMEOUT) + 1
            relayed = upstream.silent - silent0
            assert relayed <= dns.MAX_RELAYS_PER_CLIENT * windows, (relayed, windows)
            refused = codes.get(dns.RCODE_REFUSED, 0)
            assert refused >= 1 and sum(codes.values()) - refused <= relayed, codes
            # the relays' sockets close when their upstream timeout expires
            deadline = time.monotonic() + dns.UPSTREAM_TIMEOUT + 0.5
            while _fds(pid) > fds0 + 2:
                assert time.monotonic() < deadline, (_fds(pid), fds0)
                time.sleep(0.05)
            assert _rss_kib(pid) - rss0 < 32 * 1024, (rss0, _rss_kib(pid))
            # afterwards the flooder is served like anyone, and the container's
            # own resolver (busybox, through resolv.conf) works end to end
            assert answered_with(ask(sock, dest, GOOD_NAME, timeout=20), GOOD_ADDR)
            res = dnsd.docker("exec", attacker, "nslookup", target, timeout=120)
            assert target_ip in res.stdout.decode(), res.stdout.decode() + res.stderr.decode()
    finally:
        dnsd.docker("rm", "-f", target, attacker)
        dnsd.docker("network", "rm", net)
