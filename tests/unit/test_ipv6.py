"""IPv6 on the bridge, the parts that need no daemon: the IPv6 pool, AAAA
answers, ip6tables rules, the checks of an IPv6Address asked for, the
daemon.json keys, network records, and the [::1] proxy (in a namespace of
its own)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from skiff.core.config import ConfigError, load
from skiff.core.containers.endpoints import requested
from skiff.core.errors import Conflict, InvalidParameter, NotFound
from skiff.core.networks import Network, NetworkStore
from skiff.plugins.network.bridge import firewall as fw
from skiff.plugins.network.bridge.dns import QTYPE_A, QTYPE_AAAA, answer, parse_question
from skiff.plugins.network.bridge.ipam import AddressInUse, Pool

# -- the pool ---------------------------------------------------------------------


def test_v6_pool_hands_out_gateway_plus_one_as_dockerd() -> None:
    pool = Pool("fd00:db8:1::/64")
    assert str(pool.gateway) == "fd00:db8:1::1"
    assert [pool.allocate() for _ in range(3)] == [
        "fd00:db8:1::2", "fd00:db8:1::3", "fd00:db8:1::4"]
    pool.release("fd00:db8:1::3")
    assert pool.allocate() == "fd00:db8:1::3"


def test_v6_pool_range_gateway_and_asked_address() -> None:
    # docker-py's test_connect_with_ipv6_address network
    pool = Pool("2001:389::1/64", "2001:389::ffff", "2001:389::/96")
    assert pool.allocate() == "2001:389::1"
    assert pool.allocate("2001:389::f00d") == "2001:389::f00d"
    with pytest.raises(AddressInUse, match="already in use"):
        pool.allocate("2001:389::f00d")
    with pytest.raises(AddressInUse):
        pool.allocate("2001:388::1")  # outside the subnet
    with pytest.raises(ValueError, match="too small"):
        Pool("fd00::/127")


# -- DNS ----------------------------------------------------------------------------


def _query(name: str, qtype: int) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


@pytest.mark.parametrize(("qtype", "want"), [
    (QTYPE_A, [socket.inet_pton(socket.AF_INET, "10.1.0.2")]),
    (QTYPE_AAAA, [socket.inet_pton(socket.AF_INET6, "fd00:db8:1::2")]),
])
def test_answer_gives_each_family_its_records(qtype: int, want: list[bytes]) -> None:
    packet = _query("web", qtype)
    q = parse_question(packet)
    assert q is not None
    reply = answer(packet, q[2], ["10.1.0.2", "fd00:db8:1::2"], qtype)
    assert struct.unpack("!H", reply[6:8])[0] == len(want)
    rtype, _, _, rdlen = struct.unpack("!HHIH", reply[q[2] + 2:q[2] + 12])
    assert rtype == qtype
    assert reply[q[2] + 12:q[2] + 12 + rdlen] == want[0]


def test_aaaa_of_a_v4_only_name_is_an_empty_answer() -> None:
    packet = _query("web", QTYPE_AAAA)
    q = parse_question(packet)
    assert q is not None
    reply = answer(packet, q[2], ["10.1.0.2"], QTYPE_AAAA)
    assert struct.unpack("!H", reply[6:8])[0] == 0
    assert reply[3] & 0x0F == 0  # NOERROR: the name exists


# -- ip6tables rules ------------------------------------------------------------------


def test_v6_rules_are_the_v4_scheme_without_the_loopback_guard() -> None:
    rules = fw.network_rules6("skf-x", "fd00:db8:1::/64", icc=True)
    assert not [r for r in rules if r[1] == "INPUT"]
    assert ("nat", "POSTROUTING", ["-s", "fd00:db8:1::/64", "!", "-o", "skf-x",
                                   *fw.tag("skf-x"), "-j", "MASQUERADE"]) in rules
    assert any(r[0] == "raw" and "fd00:db8:1::/64" in r[2] for r in rules)


def test_v6_port_rules_bracket_the_destination() -> None:
    rules = fw.port_rules6("skf-x", "fd00:db8:1::2", "tcp", 80, "::1", 8080)
    dnat = next(r for r in rules if r[1] == fw.NAT_CHAIN)
    assert dnat[2][-1] == "[fd00:db8:1::2]:80"
    assert dnat[2][:2] == ["-d", "::1"]
    assert any("fd00:db8:1::2/128" in r[2] for r in rules)
    every = fw.port_rules6("skf-x", "fd00:db8:1::2", "tcp", 80, "::", 8080)
    assert "-d" not in next(r for r in every if r[1] == fw.NAT_CHAIN)[2]


def test_v6_firewall_leaves_loopback_to_the_proxy() -> None:
    output = [r for r in fw.Firewall(True, family=6)._jumps() if r[1] == "OUTPUT"]
    assert output[0][2][:3] == ["!", "-d", "::1/128"]
    assert not [r for r in fw.Firewall(True)._jumps() if "::1/128" in r[2]]


# -- EndpointSettings ---------------------------------------------------------------------


def _ipam6(addr: str) -> dict[str, Any]:
    return {"IPAMConfig": {"IPv6Address": addr}}


def test_ipv6_address_checked_against_the_networks_v6_subnet() -> None:
    got = requested(_ipam6("fd00:db8:1::10"), subnet6="fd00:db8:1::/64")
    assert got["IPAMConfig"] == {"IPv6Address": "fd00:db8:1::10"}
    with pytest.raises(InvalidParameter, match="does not belong"):
        requested(_ipam6("fd00:db8:2::10"), subnet6="fd00:db8:1::/64")
    with pytest.raises(InvalidParameter, match="user configured subnets"):
        requested(_ipam6("fd00:db8:1::10"), subnet6="")
    with pytest.raises(InvalidParameter, match="invalid IPv6 address"):
        requested(_ipam6("10.0.0.1"), subnet6="fd00:db8:1::/64")
    with pytest.raises(InvalidParameter, match="user defined networks only"):
        requested(_ipam6("fd00:db8:1::10"), subnet6="fd00:db8:1::/64", predefined=True)


# -- daemon.json ------------------------------------------------------------------------------


def _load(tmp_path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    p = tmp_path / "daemon.json"
    p.write_text(json.dumps(cfg))
    return load(["--config-file", str(p)])[0]


def test_daemon_json_ipv6_keys(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {"ipv6": True, "fixed-cidr-v6": "fd00:1::/64"})
    assert cfg["ip6tables"] is True  # skiff's default (dockerd 20.10: experimental only)
    with pytest.raises(ConfigError,
                       match=r"'fixed-cidr-v6' is not set.*non-overlapping IPv6 address pool"):
        _load(tmp_path, {"ipv6": True})
    with pytest.raises(ConfigError, match="'ipv6' is not true"):
        _load(tmp_path, {"fixed-cidr-v6": "fd00:1::/64"})
    with pytest.raises(ConfigError, match="invalid value for 'fixed-cidr-v6'"):
        _load(tmp_path, {"ipv6": True, "fixed-cidr-v6": "10.0.0.0/8"})
    with pytest.raises(ConfigError, match="'ip6tables'"):
        _load(tmp_path, {"ip6tables": "yes"})


# -- network records ----------------------------------------------------------------------------


class _Driver:
    def __init__(self) -> None:
        self.created: list[Any] = []

    def create_network(self, network_id: str, options: Any) -> None:
        self.created.append(options)

    def delete_network(self, network_id: str) -> None:
        pass


def _store(tmp_path: Path, config: dict[str, Any] | None = None) -> tuple[NetworkStore, _Driver]:
    driver = _Driver()
    store = NetworkStore(str(tmp_path), config or {}, lambda name: driver,  # type: ignore[arg-type,return-value]
                         lambda name: name in ("bridge", "host", "none"), {})
    store.load()
    return store, driver


def _create(store: NetworkStore, name: str, *configs: dict[str, str],
            ipv6: bool = True) -> Network:
    return store.create({"Name": name, "EnableIPv6": ipv6,
                         "IPAM": {"Config": list(configs)}})[0]


def test_network_create_dual_stack_record_and_options(tmp_path: Path) -> None:
    store, driver = _store(tmp_path)
    net = _create(store, "v6net", {"Subnet": "10.77.0.0/24"}, {"Subnet": "fd00:db8:1::/64"})
    rec = store.inspect(net)
    assert rec["EnableIPv6"] is True
    assert rec["IPAM"]["Config"] == [
        {"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.1"},
        {"Subnet": "fd00:db8:1::/64"}]  # dockerd shows the IPv6 keys given, no more
    opts = driver.created[-1]
    assert (opts.subnet, opts.subnet6, opts.gateway6) == (
        "10.77.0.0/24", "fd00:db8:1::/64", "")
    gw = _create(store, "gw", {"Subnet": "fd00:db8:9::/64", "Gateway": "fd00:db8:9::fe"})
    assert store.inspect(gw)["IPAM"]["Config"][1] == {
        "Subnet": "fd00:db8:9::/64", "Gateway": "fd00:db8:9::fe"}
    # the record survives a restart
    again, _ = _store(tmp_path)
    back = again.get("v6net")
    assert (back.enable_ipv6, back.subnet6, back.gateway6) == (True, "fd00:db8:1::/64", "")
    assert again.get("gw").gateway6 == "fd00:db8:9::fe"


def test_network_create_v6_refusals(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    _create(store, "a", {"Subnet": "fd00:db8:1::/64"})
    with pytest.raises(Conflict, match="Pool overlaps with other one on this address space"):
        _create(store, "b", {"Subnet": "fd00:db8:1:0:1::/80"})
    # dockerd 20.10: no default pool is IPv6, a 404 in libnetwork's words
    with pytest.raises(NotFound, match="non-overlapping IPv6 address pool among the defaults"):
        _create(store, "c")
    with pytest.raises(InvalidParameter, match="not in subnet"):
        _create(store, "d", {"Subnet": "fd00:db8:2::/64", "Gateway": "fd00:db8:3::1"})
    # an IPv6 subnet without EnableIPv6 is plumbed (docker-py's ipv6_address tests)
    e = _create(store, "e", {"Subnet": "2001:389::1/64"}, ipv6=False)
    assert (e.enable_ipv6, e.subnet6) == (False, "2001:389::/64")


def test_default_bridge_gets_fixed_cidr_v6(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, {"ipv6": True, "fixed-cidr-v6": "fd00:1::/64"})
    bridge = store.get("bridge")
    assert bridge.enable_ipv6 and bridge.subnet6 == "fd00:1::/64"
    assert bridge.gateway6 == "fd00:1::1"
    with pytest.raises(Conflict):
        _create(store, "x", {"Subnet": "fd00:1::/48"})


# -- the [::1] proxy ----------------------------------------------------------------------------

_PROXY_SCRIPT = r"""
import socket, sys, threading, time
from skiff.plugins.network.bridge.proxy import TcpProxy
srv = socket.socket(socket.AF_INET6)
srv.bind(("::1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def echo():
    c, _ = srv.accept()
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.sendall(data[::-1]); c.close()
threading.Thread(target=echo, daemon=True).start()
proxy = TcpProxy("::1", 40123, "::1", port)
c = socket.create_connection(("::1", 40123))
c.sendall(b"x" * 200000 + b"end"); c.shutdown(socket.SHUT_WR)
got = b""
while True:
    chunk = c.recv(65536)
    if not chunk:
        break
    got += chunk
assert got == (b"x" * 200000 + b"end")[::-1], len(got)
proxy.close()
try:
    socket.create_connection(("::1", 40123), timeout=1)
except OSError:
    print("closed")
"""


def test_proxy_relays_both_ways_and_closes() -> None:
    res = subprocess.run(["unshare", "--net", "sh", "-c",
                          f"ip link set lo up; {sys.executable} -c '{_PROXY_SCRIPT}'"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "closed"


_PROXY_CAP_SCRIPT = r"""
import socket, threading, time
from skiff.plugins.network.bridge import proxy as mod
mod.MAX_CONNECTIONS = 3
srv = socket.socket(socket.AF_INET6)
srv.bind(("::1", 0)); srv.listen(16)
port = srv.getsockname()[1]
def serve():
    while True:
        c, _ = srv.accept()
        threading.Thread(target=lambda c=c: (c.recv(10), c.recv(10), c.close()),
                         daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
p = mod.TcpProxy("::1", 40124, "::1", port)
held = [socket.create_connection(("::1", 40124)) for _ in range(3)]
for c in held:
    c.sendall(b"hi")
time.sleep(0.3)
before = threading.active_count()
print("threads before", before > 3)
extra = socket.create_connection(("::1", 40124))
extra.settimeout(2)
print("refused" if extra.recv(10) == b"" else "served")
print("threads", threading.active_count() - before)
for c in held:
    c.close()
time.sleep(0.3)
again = socket.create_connection(("::1", 40124))
again.settimeout(0.5)
try:
    print("served" if again.recv(10) == b"" else "served")
except socket.timeout:
    print("open")
p.close()
"""


def test_proxy_caps_its_connections() -> None:
    """A local client cannot make the daemon spawn relay threads without bound:
    past the cap a connection is closed at once; a slot freed is reusable."""
    res = subprocess.run(["unshare", "--net", "sh", "-c",
                          f"ip link set lo up; {sys.executable} -c '{_PROXY_CAP_SCRIPT}'"],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert res.returncode == 0, res.stderr
    ours = [ln for ln in res.stdout.splitlines() if not ln.startswith("20")]
    assert ours == ["threads before True", "refused", "threads 0", "open"], res.stdout
    assert "proxy.too_many_connections" in res.stdout


_UDP_PROXY_SCRIPT = r"""
import socket, threading, time
from skiff.plugins.network.bridge.proxy import UdpProxy
srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
srv.bind(("::1", 0))
port = srv.getsockname()[1]
def echo():
    while True:
        data, peer = srv.recvfrom(65535)
        srv.sendto(data[::-1] + b"|" + str(peer[1]).encode(), peer)
threading.Thread(target=echo, daemon=True).start()
proxy = UdpProxy("::1", 40125, "::1", port, max_flows=2, timeout=0.5)
def ask(c, text):
    c.sendto(text, ("::1", 40125))
    c.settimeout(1)
    try:
        data, peer = c.recvfrom(65535)
    except socket.timeout:
        return "dropped"
    assert peer[1] == 40125, peer  # the reply comes from the published port
    return data.decode()
clients = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(3)]
a1 = ask(clients[0], b"abc"); a2 = ask(clients[0], b"xyz"); b = ask(clients[1], b"123")
print(a1.split("|")[0], a2.split("|")[0], b.split("|")[0])
print("one flow per client", a1.split("|")[1] == a2.split("|")[1] != b.split("|")[1])
print("flows", proxy.flows)
print("third", ask(clients[2], b"over"))
time.sleep(1.5)
print("flows after idle", proxy.flows)
print("third again", ask(clients[2], b"now").split("|")[0])
big = b"y" * 60000
print("big", len(ask(clients[0], big).split("|")[0]))
proxy.close()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::1", 40125))
print("port free")
"""


def test_udp_proxy_relays_per_client_flows_bounded_and_expiring() -> None:
    """UDP on [::1] as docker-proxy relays it: each client its own flow to the
    container (replies from the published port), a cap on flows (a new
    client past it is dropped, logged), idle flows expire, close frees the port."""
    res = subprocess.run(["unshare", "--net", "sh", "-c",
                          f"ip link set lo up; {sys.executable} -c '{_UDP_PROXY_SCRIPT}'"],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert res.returncode == 0, res.stderr
    ours = [ln for ln in res.stdout.splitlines() if not ln.startswith("20")]
    assert ours == ["cba zyx 321", "one flow per client True", "flows 2", "third dropped",
                    "flows after idle 0", "third again won", "big 60000", "port free"], res.stdout
    assert "proxy.too_many_udp_flows" in res.stdout
