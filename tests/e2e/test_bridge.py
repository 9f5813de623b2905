"""Bridge networking with the stock docker CLI: addresses, NAT, published ports,
user networks with the embedded DNS server, isolation, icc and links.

Every daemon here has its own bridge name and a 10.x/24 of its own
(tests.daemon.daemon_config); the suite runs in a network namespace of its
own, and every packet stays on 127.0.0.1 or inside the bridges the tests made.
The embedded DNS server's upstream is a tiny resolver on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.dnsstub import DnsStub

SERVE = "while true; do echo hello-from-$HOSTNAME | nc -l -p 80; done"
UPSTREAM_NAME = "upstream.skiff.test"
UPSTREAM_ADDR = "192.0.2.7"  # TEST-NET-1: only ever an answer, never a destination


@pytest.fixture(scope="module")
def upstream() -> Iterator[DnsStub]:
    u = DnsStub({UPSTREAM_NAME: [UPSTREAM_ADDR]})
    yield u
    u.close()


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory, upstream: DnsStub) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("skiffd-bridge")
    with running_daemon(base, dns=[f"127.0.0.1:{upstream.port}"]) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def out(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode()


def inspect(d: Daemon, ref: str) -> dict:
    return json.loads(d.docker("inspect", ref, check=True).stdout)[0]


def serve(d: Daemon, *args: str, name: str | None = None) -> str:
    name = name or f"srv-{secrets.token_hex(3)}"
    d.docker("run", "-d", "--name", name, *args, "busybox", "sh", "-c", SERVE, check=True)
    return name


def fetch_tcp(host: str, port: int, timeout: float = 5) -> bytes:
    """Connect until the container's server answers (it may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                data = s.recv(100)
                if data:
                    return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on {host}:{port}")
        time.sleep(0.1)


def client(d: Daemon, target: str, *args: str, wait: int = 2) -> subprocess.CompletedProcess[bytes]:
    """A busybox nc client that reads what the server at target:80 says."""
    script = (f"for i in 1 2 3 4 5; do r=$(nc -w {wait} {target} 80 </dev/null) && "
              f"[ -n \"$r\" ] && echo $r && exit 0; sleep 0.2; done; exit 1")
    return d.docker("run", "--rm", *args, "busybox", "sh", "-c", script, timeout=90)


def bridge_links() -> set[str]:
    res = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    return {line.split(":")[1].strip().split("@")[0] for line in res.stdout.splitlines()}


# -- the default bridge ---------------------------------------------------------


def test_default_bridge_address_route_and_inspect(bridged: Daemon) -> None:
    bip = ipaddress.IPv4Interface(bridged.config["bip"])
    name = serve(bridged)
    try:
        info = inspect(bridged, name)["NetworkSettings"]
        ip = ipaddress.IPv4Address(info["IPAddress"])
        assert ip in bip.network and ip != bip.ip
        assert info["Gateway"] == str(bip.ip)
        assert info["IPPrefixLen"] == bip.network.prefixlen
        assert info["MacAddress"] == "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)
        assert info["Networks"]["bridge"]["IPAddress"] == str(ip)
        res = bridged.docker("exec", name, "ip", "-o", "-4", "addr", "show", "eth0")
        if res.returncode == 0:  # exec may not exist yet; the run below checks the same
            assert str(ip) in out(res)
        res = bridged.docker("run", "--rm", "busybox", "sh", "-c",
                             "ip -o -4 addr show eth0; ip route", check=True)
        assert f"default via {bip.ip} dev eth0" in out(res)
        net = json.loads(bridged.docker("network", "inspect", "bridge", check=True).stdout)[0]
        assert net["IPAM"]["Config"][0]["Subnet"] == str(bip.network)
        assert inspect(bridged, name)["Id"] in net["Containers"]
        assert bridged.config["bridge"] in bridge_links()
    finally:
        bridged.docker("rm", "-f", name)


def test_default_bridge_reaches_by_ip_not_by_name(bridged: Daemon) -> None:
    name = serve(bridged)
    try:
        ip = inspect(bridged, name)["NetworkSettings"]["IPAddress"]
        res = client(bridged, ip)
        assert res.returncode == 0, res.stderr
        assert out(res).strip() == f"hello-from-{inspect(bridged, name)['Config']['Hostname']}"
        res = bridged.docker("run", "--rm", "busybox", "nc", "-w", "1", name, "80")
        assert res.returncode != 0
    finally:
        bridged.docker("rm", "-f", name)


def test_container_reaches_server_on_bridge_address(bridged: Daemon) -> None:
    gw = str(ipaddress.IPv4Interface(bridged.config["bip"]).ip)
    srv = socket.socket()
    srv.bind((gw, 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def accept() -> None:
        srv.settimeout(20)
        try:
            conn, _ = srv.accept()
            conn.sendall(b"hello-from-host\n")
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        res = bridged.docker("run", "--rm", "busybox", "nc", "-w", "3", gw, str(port),
                             timeout=60)
        assert out(res).strip() == "hello-from-host", res.stderr
    finally:
        srv.close()
        t.join()


def test_published_port_answers_on_localhost(bridged: Daemon) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = serve(bridged, "-p", f"127.0.0.1:{port}:80")
    try:
        assert fetch_tcp("127.0.0.1", port).startswith(b"hello-from-")
        info = inspect(bridged, name)["NetworkSettings"]["Ports"]
        assert info == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
        assert out(bridged.docker("port", name, check=True)).strip() == \
            f"80/tcp -> 127.0.0.1:{port}"
        ps = out(bridged.docker("ps", "--filter", f"name={name}", check=True))
        assert f"127.0.0.1:{port}->80/tcp" in ps
        # the same host port twice is refused, and leaves nothing behind
        before = bridge_links()
        res = bridged.docker("run", "--rm", "-p", f"127.0.0.1:{port}:80", "busybox", "true")
        assert res.returncode != 0
        assert "already allocated" in res.stderr.decode()
        assert bridge_links() <= before
    finally:
        bridged.docker("rm", "-f", name)
    assert f"--dport {port} " not in subprocess.run(
        ["iptables-save"], capture_output=True, text=True).stdout


def test_publish_all_picks_free_ports(bridged: Daemon) -> None:
    name = serve(bridged, "-P", "--expose", "80", "--expose", "81/udp")
    try:
        ports = inspect(bridged, name)["NetworkSettings"]["Ports"]
        tcp = int(ports["80/tcp"][0]["HostPort"])
        udp = int(ports["81/udp"][0]["HostPort"])
        assert 32768 <= tcp <= 60999 and 32768 <= udp <= 60999
        assert fetch_tcp("127.0.0.1", tcp).startswith(b"hello-from-")
        # hairpin: a container reaches its neighbour through the published port
        gw = str(ipaddress.IPv4Interface(bridged.config["bip"]).ip)
        res = bridged.docker("run", "--rm", "busybox", "nc", "-w", "3", gw, str(tcp))
        assert out(res).startswith("hello-from-"), res.stderr
    finally:
        bridged.docker("rm", "-f", name)


def test_addresses_are_released(bridged: Daemon) -> None:
    ips = set()
    for _ in range(3):
        res = bridged.docker("run", "--rm", "busybox", "sh", "-c",
                             "ip -o -4 addr show eth0", check=True)
        ips.add(out(res).split()[3])
    assert len(ips) == 1  # the lowest free address, given back each time


# -- user-defined networks --------------------------------------------------------


def test_user_network_dns_isolation_and_rm(bridged: Daemon, upstream: DnsStub) -> None:
    net = f"n-{secrets.token_hex(3)}"
    subnet = f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.0/24"
    bridged.docker("network", "create", "--subnet", subnet, net, check=True)
    a = f"a-{secrets.token_hex(3)}"
    try:
        serve(bridged, "--network", net, "--network-alias", "web", name=a)
        info = inspect(bridged, a)["NetworkSettings"]["Networks"][net]
        ip = info["IPAddress"]
        assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(subnet)
        # resolv.conf points at the embedded server, which knows names and aliases
        res = bridged.docker("run", "--rm", "--network", net, "busybox", "cat",
                             "/etc/resolv.conf", check=True)
        assert "nameserver 127.0.0.11" in out(res)
        res = bridged.docker("run", "--rm", "--network", net, "busybox", "nslookup", a)
        assert ip in out(res), out(res) + res.stderr.decode()
        res = bridged.docker("run", "--rm", "--network", net, "busybox", "nslookup", "web")
        assert ip in out(res), out(res) + res.stderr.decode()
        res = client(bridged, a, "--network", net)
        assert out(res).strip().startswith("hello-from-"), res.stderr
        # other names go to the configured upstream (a resolver of this test on 127.0.0.1)
        res = bridged.docker("run", "--rm", "--network", net, "busybox", "nslookup",
                             UPSTREAM_NAME)
        assert UPSTREAM_ADDR in out(res), out(res) + res.stderr.decode()
        assert UPSTREAM_NAME in upstream.queries
        # isolation: the default bridge cannot reach the user network
        res = bridged.docker("run", "--rm", "busybox", "nc", "-w", "2", ip, "80")
        assert not out(res).startswith("hello"), out(res)
        # ls / inspect / rm of an in-use network
        assert net in out(bridged.docker("network", "ls", check=True))
        inspected = json.loads(bridged.docker("network", "inspect", net, check=True).stdout)[0]
        assert inspected["IPAM"]["Config"][0]["Subnet"] == subnet
        assert inspect(bridged, a)["Id"] in inspected["Containers"]
        res = bridged.docker("network", "rm", net)
        assert res.returncode != 0 and "active endpoints" in res.stderr.decode()
        res = bridged.docker("network", "rm", "bridge")
        assert res.returncode != 0 and "pre-defined" in res.stderr.decode()
    finally:
        bridged.docker("rm", "-f", a)
        bridged.docker("network", "rm", net)
    assert net not in out(bridged.docker("network", "ls", check=True))


def test_dns_options_on_a_user_network(bridged: Daemon, upstream: DnsStub) -> None:
    """``--dns`` on a user network: resolv.conf keeps the embedded server, with the
    container's search domains and options, and the names the network does not
    know go to the container's own server, not the daemon's."""
    # the daemon's namespace is the test's, so it reaches this address
    own = DnsStub({UPSTREAM_NAME: [UPSTREAM_ADDR]}, "127.0.0.77", 53)
    net = f"d-{secrets.token_hex(3)}"
    subnet = f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.0/24"
    bridged.docker("network", "create", "--subnet", subnet, net, check=True)
    try:
        opts = ("--network", net, "--dns", "127.0.0.77", "--dns-search", "a.example",
                "--dns-option", "timeout:3")
        res = bridged.docker("run", "--rm", *opts, "busybox", "cat", "/etc/resolv.conf",
                             check=True)
        assert out(res) == ("search a.example\nnameserver 127.0.0.11\n"
                            "options timeout:3 ndots:0\n")
        before = len(upstream.queries)
        res = bridged.docker("run", "--rm", *opts, "busybox", "nslookup", UPSTREAM_NAME)
        assert UPSTREAM_ADDR in out(res), out(res) + res.stderr.decode()
        assert UPSTREAM_NAME in own.queries
        assert UPSTREAM_NAME not in upstream.queries[before:]
        # without --dns the daemon's upstream answers again
        res = bridged.docker("run", "--rm", "--network", net, "busybox", "nslookup",
                             UPSTREAM_NAME)
        assert UPSTREAM_ADDR in out(res), out(res) + res.stderr.decode()
        assert UPSTREAM_NAME in upstream.queries[before:]
    finally:
        bridged.docker("network", "rm", net)
        own.close()


def test_network_create_picks_a_pool_and_prune(bridged: Daemon) -> None:
    net = f"p-{secrets.token_hex(3)}"
    bridged.docker("network", "create", "--label", "skiff.test=1", net, check=True)
    try:
        inspected = json.loads(bridged.docker("network", "inspect", net, check=True).stdout)[0]
        subnet = ipaddress.IPv4Network(inspected["IPAM"]["Config"][0]["Subnet"])
        assert subnet.is_private
        assert inspected["Labels"] == {"skiff.test": "1"}
        assert f"skf-{inspected['Id'][:11]}" in bridge_links()
    finally:
        res = bridged.docker("network", "prune", "-f", check=True)
    assert net in out(res)
    assert f"skf-{inspected['Id'][:11]}" not in bridge_links()


def test_connect_and_disconnect_a_running_container(bridged: Daemon) -> None:
    net = f"c-{secrets.token_hex(3)}"
    bridged.docker("network", "create", net, check=True)
    name = serve(bridged)
    try:
        bridged.docker("network", "connect", net, name, check=True)
        networks = inspect(bridged, name)["NetworkSettings"]["Networks"]
        assert set(networks) == {"bridge", net}
        ip2 = networks[net]["IPAddress"]
        assert ip2
        res = client(bridged, name, "--network", net)
        assert out(res).startswith("hello-from-"), res.stderr
        res = client(bridged, ip2, "--network", net)
        assert out(res).startswith("hello-from-"), res.stderr
        bridged.docker("network", "disconnect", net, name, check=True)
        assert set(inspect(bridged, name)["NetworkSettings"]["Networks"]) == {"bridge"}
    finally:
        bridged.docker("rm", "-f", name)
        bridged.docker("network", "rm", net)


# -- icc and links -------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_icc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("skiffd-noicc")
    with running_daemon(base, icc=False) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def test_icc_false_blocks_and_links_open_exposed_ports(no_icc: Daemon) -> None:
    name = serve(no_icc, "--expose", "80", "-e", "SECRET=42")
    try:
        ip = inspect(no_icc, name)["NetworkSettings"]["IPAddress"]
        res = no_icc.docker("run", "--rm", "busybox", "nc", "-w", "2", ip, "80")
        assert not out(res).startswith("hello"), "icc=false let a container through"
        res = no_icc.docker("run", "--rm", "--link", f"{name}:db", "busybox", "sh", "-c",
                            "env; cat /etc/hosts; "
                            "for i in 1 2 3; do nc -w 2 db 80 && break; sleep 0.2; done",
                            check=True)
        text = out(res)
        assert f"DB_PORT_80_TCP_ADDR={ip}" in text
        assert "DB_ENV_SECRET=42" in text
        assert f"DB_PORT=tcp://{ip}:80" in text
        assert any(line.startswith(ip) and "db" in line.split() for line in text.splitlines())
        assert "hello-from-" in text
    finally:
        no_icc.docker("rm", "-f", name)


def test_network_none_and_host_still_work(bridged: Daemon) -> None:
    res = bridged.docker("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link",
                         check=True)
    assert [line.split(":")[1].strip() for line in out(res).splitlines()] == ["lo"]


def test_container_network_mode_shares_the_netns(bridged: Daemon) -> None:
    name = serve(bridged)
    try:
        ip = inspect(bridged, name)["NetworkSettings"]["IPAddress"]
        res = bridged.docker("run", "--rm", "--network", f"container:{name}", "busybox",
                             "sh", "-c", "ip -o -4 addr show eth0; nc -w 2 127.0.0.1 80",
                             check=True)
        assert ip in out(res) and "hello-from-" in out(res)
    finally:
        bridged.docker("rm", "-f", name)


def test_daemon_restart_rebuilds_and_shutdown_cleans(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        bridge = d.config["bridge"]
        d.docker("network", "create", "keep", check=True)
        name = serve(d, "-p", "127.0.0.1::80")
        assert bridge in bridge_links()
        d.stop()
        # the daemon took its bridges and rules down on the way out
        assert bridge not in bridge_links()
        assert f"skiff:{bridge}" not in subprocess.run(
            ["iptables-save"], capture_output=True, text=True).stdout
        d.start()
        assert "keep" in out(d.docker("network", "ls", check=True))
        d.docker("start", name, check=True)
        port = int(inspect(d, name)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        assert fetch_tcp("127.0.0.1", port).startswith(b"hello-from-")
        d.docker("rm", "-f", name, check=True)
        d.docker("network", "rm", "keep", check=True)


def _skiff_rules(bridge: str) -> list[str]:
    save = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return [line for line in save.splitlines() if f"skiff:{bridge}" in line]


def test_driver_rebuilds_rules_after_a_crash_without_duplicates() -> None:
    """A daemon killed with its bridge and rules in place: the next start rebuilds them once."""
    from skiff.core.hookspecs import NetworkContext, NetworkOptions
    from skiff.plugins.network.bridge.driver import BridgeNetworkDriver

    bridge = f"skf{secrets.token_hex(3)}"
    subnet = f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.0/24"
    opts = NetworkOptions(bridge=bridge, subnet=subnet, name="crash")
    nid = secrets.token_hex(32)
    first = BridgeNetworkDriver(NetworkContext("/nonexistent", "/nonexistent", {}))
    first.create_network(nid, opts)
    try:
        rules = _skiff_rules(bridge)
        assert rules and bridge in bridge_links()
        # "crash": the first driver never cleans up; a new one starts over it
        second = BridgeNetworkDriver(NetworkContext("/nonexistent", "/nonexistent", {}))
        second.create_network(nid, opts)
        assert sorted(_skiff_rules(bridge)) == sorted(rules)
        second.delete_network(nid)
        assert _skiff_rules(bridge) == [] and bridge not in bridge_links()
    finally:
        first.delete_network(nid)


def _forward_policy() -> str:
    first = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True,
                           check=True).stdout.splitlines()[0]
    return first.split()[-1]  # "-P FORWARD DROP"


def test_iptables_false_leaves_the_firewall_alone(tmp_path: Path) -> None:
    # An earlier daemon of this session may have set the FORWARD policy to
    # DROP when it turned forwarding on (as dockerd does).  With iptables off
    # the administrator owns the firewall: play the administrator who lets
    # the bridge forward, and put the policy back afterwards.
    policy = _forward_policy()
    subprocess.run(["iptables", "-P", "FORWARD", "ACCEPT"], check=True)
    try:
        _iptables_false_leaves_the_firewall_alone(tmp_path)
    finally:
        subprocess.run(["iptables", "-P", "FORWARD", policy], check=True)


def _iptables_false_leaves_the_firewall_alone(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", iptables=False) as d:
        d.skiff("image", "bootstrap", "busybox")
        bridge = d.config["bridge"]
        name = serve(d, "-p", "127.0.0.1::80")
        try:
            assert _skiff_rules(bridge) == []
            ip = inspect(d, name)["NetworkSettings"]["IPAddress"]
            res = client(d, ip)
            assert out(res).startswith("hello-from-"), res.stderr
        finally:
            d.docker("rm", "-f", name)
