"""IPv6 on the bridge (issue 20, item 3 and the IPv6 part of item 4).

``docker network create --ipv6 --subnet fd00:…/64``: containers get an IPv6
address of the subnet (``--ip6`` too), a default route through the gateway,
and find each other by name over IPv6 (the embedded DNS answers AAAA);
``-p [::1]:PORT:80`` reaches the container from the host's ``[::1]``;
docker-py's IPv6 cases (``enable_ipv6``, ``ipv6_address`` at create and at
connect); an overlapping IPv6 subnet is refused with dockerd's words; the
default bridge gets daemon.json ``fixed-cidr-v6``.  Every subnet is a random
``fd…/64`` (unique local); every packet stays inside the test's namespace.
Nothing is left behind: no ip6tables rule of skiff's once its daemon is gone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker as dockerpy
import pytest
from docker.types import IPAMConfig, IPAMPool

from benchmarks.engines import Dockerd
from tests import daemon as daemon_module
from tests.daemon import Daemon, running_daemon
from tests.dnsstub import DnsStub
from tests.e2e.conftest import twin_of
from tests.sidebyside import Side, SideBySide, normalised, unique

HTTPD = "mkdir -p /www && echo hello-v6 > /www/index.html && exec httpd -f -p 80 -h /www"


def subnet6() -> str:
    """A random unique-local /64, written as the daemons write it (no leading zeros)."""
    prefix = bytes([0xFD, *secrets.token_bytes(5)]) + bytes(10)
    return f"{ipaddress.IPv6Address(prefix)}/64"


def subnet4() -> str:
    return f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.0/24"


def host(subnet: str, n: int) -> str:
    return str(ipaddress.IPv6Network(subnet).network_address + n)


def ip6tables_save() -> str:
    return subprocess.run(["ip6tables-save"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("skiffd-ipv6")
    with running_daemon(base) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d
    # the daemon is gone: none of its IPv6 rules may stay
    assert "skiff:" not in ip6tables_save()


@pytest.fixture(scope="module")
def twins(daemon: Daemon, twin_dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[SideBySide]:
    sbs = twin_of(daemon, twin_dockerd, tmp_path_factory.mktemp("ipv6-twin"))
    yield sbs
    sbs.close()


def ok(d: Daemon, *args: str) -> str:
    return d.docker(*args, check=True).stdout.decode().strip()


def inspect(d: Daemon, ref: str) -> dict[str, Any]:
    return json.loads(ok(d, "inspect", ref))[0]


def v6net(d: Daemon, *extra: str) -> tuple[str, str]:
    name, sub = f"v6-{secrets.token_hex(3)}", subnet6()
    ok(d, "network", "create", "--ipv6", "--subnet", sub, *extra, name)
    return name, sub


def fetch(address: str, port: int, timeout: float = 10) -> bytes:
    """GET / from ``[address]:port`` until the container's httpd answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                if data:
                    return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on [{address}]:{port}")
        time.sleep(0.1)


def free_port6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


# -- item 3: addresses, routes, names --------------------------------------------------


def test_dual_stack_ping6_by_name_inspect_hosts_and_aaaa(daemon: Daemon) -> None:
    sub4 = subnet4()
    net, sub = v6net(daemon, "--subnet", sub4)
    a, b = f"a-{secrets.token_hex(3)}", f"b-{secrets.token_hex(3)}"
    try:
        ok(daemon, "run", "-d", "--name", a, "--network", net, "busybox", "sleep", "300")
        ok(daemon, "run", "-d", "--name", b, "--network", net, "--ip6", host(sub, 0x99),
           "busybox", "sleep", "300")
        # usable at once: no DAD wait between start and the first packet
        ok(daemon, "exec", a, "ping", "-6", "-c", "1", "-W", "3", b)
        ok(daemon, "exec", b, "ping", "-6", "-c", "1", "-W", "3", a)
        ok(daemon, "exec", a, "ping", "-4", "-c", "1", "-W", "3", b)  # and still IPv4

        sa = inspect(daemon, a)["NetworkSettings"]
        ep = sa["Networks"][net]
        assert (ep["GlobalIPv6Address"], ep["GlobalIPv6PrefixLen"], ep["IPv6Gateway"]) == (
            host(sub, 2), 64, host(sub, 1))
        assert ep["IPAddress"].startswith(sub4.rsplit(".", 1)[0] + ".")
        # top-level fields are the default bridge's, as dockerd's: empty here
        assert (sa["GlobalIPv6Address"], sa["GlobalIPv6PrefixLen"], sa["IPv6Gateway"]) == (
            "", 0, "")
        eb = inspect(daemon, b)["NetworkSettings"]["Networks"][net]
        assert eb["GlobalIPv6Address"] == host(sub, 0x99)
        assert eb["IPAMConfig"] == {"IPv6Address": host(sub, 0x99)}

        netinfo = json.loads(ok(daemon, "network", "inspect", net))[0]
        assert netinfo["EnableIPv6"] is True
        assert {"Subnet": sub} in netinfo["IPAM"]["Config"]  # as given, as dockerd
        by_name = {c["Name"]: c for c in netinfo["Containers"].values()}
        assert by_name[a]["IPv6Address"] == f"{host(sub, 2)}/64"

        # inside: the address, the default route, forwarding-ready sysctls
        addrs = ok(daemon, "exec", a, "ip", "-6", "addr", "show", "eth0")
        line = next(x for x in addrs.splitlines() if f"inet6 {host(sub, 2)}/64" in x)
        assert "tentative" not in line  # no DAD: usable at once
        routes = ok(daemon, "exec", a, "ip", "-6", "route")
        assert f"default via {host(sub, 1)}" in routes
        # the bridge has the gateway address
        assert host(sub, 1) in subprocess.run(
            ["ip", "-6", "addr"], capture_output=True, text=True).stdout

        # /etc/hosts: the IPv4 line, then the IPv6 one (dockerd's order)
        hostname = inspect(daemon, a)["Config"]["Hostname"]
        hosts = ok(daemon, "exec", a, "cat", "/etc/hosts").splitlines()
        mine = [line.split("\t")[0] for line in hosts if line.split("\t")[-1] == hostname]
        assert mine == [ep["IPAddress"], host(sub, 2)]

        # the embedded DNS: AAAA and A for the same name
        aaaa = ok(daemon, "exec", a, "nslookup", "-type=AAAA", b, "127.0.0.11")
        assert host(sub, 0x99) in aaaa
        a_rec = ok(daemon, "exec", a, "nslookup", "-type=A", b, "127.0.0.11")
        assert eb["IPAddress"] in a_rec and host(sub, 0x99) not in a_rec
    finally:
        daemon.docker("rm", "-f", a, b)
        daemon.docker("network", "rm", net)
    assert "skiff:" not in "\n".join(
        line for line in ip6tables_save().splitlines() if sub.split("::")[0] in line)


def test_ipv6_address_out_of_subnet_and_refusals(daemon: Daemon) -> None:
    net, sub = v6net(daemon)
    try:
        res = daemon.docker("create", "--network", net, "--ip6", "fd00:dead::5", "busybox")
        assert res.returncode != 0
        assert "It does not belong to any of this network's subnets" in res.stderr.decode()
        plain = f"v4-{secrets.token_hex(3)}"
        ok(daemon, "network", "create", "--subnet", subnet4(), plain)
        try:
            res = daemon.docker("create", "--network", plain, "--ip6", host(sub, 5), "busybox")
            assert "user configured subnets" in res.stderr.decode()
            res = daemon.docker("create", "--network", plain, "-p", "[::1]:8080:80", "busybox")
            assert res.returncode != 0 and "has no IPv6 subnet" in res.stderr.decode()
        finally:
            daemon.docker("network", "rm", plain)
        res = daemon.docker("network", "create", "--ipv6", f"nosub-{secrets.token_hex(3)}")
        assert res.returncode != 0 and "non-overlapping IPv6 address pool" in res.stderr.decode()
    finally:
        daemon.docker("network", "rm", net)


# -- publishing over IPv6 -----------------------------------------------------------------


def test_publish_on_v6_loopback_and_every_address(daemon: Daemon) -> None:
    net, sub = v6net(daemon)
    lo_port, any_port = free_port6(), free_port6()
    names = [f"web-{secrets.token_hex(3)}" for _ in range(2)]
    try:
        ok(daemon, "run", "-d", "--name", names[0], "--network", net,
           "-p", f"[::1]:{lo_port}:80", "busybox", "sh", "-c", HTTPD)
        assert b"hello-v6" in fetch("::1", lo_port)
        ports = inspect(daemon, names[0])["NetworkSettings"]["Ports"]
        assert ports == {"80/tcp": [{"HostIp": "::1", "HostPort": str(lo_port)}]}
        # the container's own address, from the host, over the bridge
        assert b"hello-v6" in fetch(host(sub, 2), 80)

        # no host address: IPv4 and IPv6, on the same port, as dockerd
        ok(daemon, "run", "-d", "--name", names[1], "--network", net,
           "-p", f"{any_port}:80", "busybox", "sh", "-c", HTTPD)
        ports = inspect(daemon, names[1])["NetworkSettings"]["Ports"]
        assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(any_port)},
                                    {"HostIp": "::", "HostPort": str(any_port)}]}
        assert b"hello-v6" in fetch("::1", any_port)  # through the proxy
        assert b"hello-v6" in fetch(host(sub, 1), any_port)  # through the DNAT
        assert f"--dport {any_port} " in ip6tables_save()
        # hairpin: another container of the network through the published port
        got = ok(daemon, "run", "--rm", "--network", net, "busybox", "sh", "-c",
                 f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host(sub, 1)} {any_port}")
        assert "hello-v6" in got
    finally:
        daemon.docker("rm", "-f", *names)
        daemon.docker("network", "rm", net)
    save = ip6tables_save()
    assert f"--dport {lo_port} " not in save and f"--dport {any_port} " not in save
    with socket.socket(socket.AF_INET6) as s:  # no listener left (TIME_WAIT may stay)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1", lo_port))
        s.listen(1)


_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 5000))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b"echo:" + data, peer)
"""


@contextlib.contextmanager
def udp_echo_in(pid: int) -> Iterator[None]:
    """A UDP echo server on [::]:5000 inside the network namespace of ``pid``
    (busybox has no UDP server; the process is the host's, only its network is
    the container's)."""
    proc = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c",
                             _UDP_ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()


def udp_ask(address: str, port: int, payload: bytes, timeout: float = 10) -> bytes:
    """Send ``payload`` to ``[address]:port``/udp until a reply comes."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        while True:
            s.sendto(payload, (address, port))
            try:
                data, peer = s.recvfrom(65535)
                assert peer[1] == port  # from the published port, as a server replies
                return data
            except (TimeoutError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no UDP reply from [{address}]:{port}") from None


def test_publish_udp_on_v6_loopback_through_the_proxy(daemon: Daemon) -> None:
    """``-p [::1]:PORT:5000/udp`` and ``-p PORT:5000/udp`` on an IPv6 network: a
    datagram sent to the host's [::1] reaches the container and its reply
    comes back (the daemon's UDP proxy, as docker-proxy relays it)."""
    net, _ = v6net(daemon)
    lo_port, any_port = free_port6(), free_port6()
    name = f"udp6-{secrets.token_hex(3)}"
    try:
        ok(daemon, "run", "-d", "--name", name, "--network", net,
           "-p", f"[::1]:{lo_port}:5000/udp", "-p", f"{any_port}:5000/udp",
           "busybox", "sleep", "300")
        ports = inspect(daemon, name)["NetworkSettings"]["Ports"]["5000/udp"]
        assert {"HostIp": "::1", "HostPort": str(lo_port)} in ports
        assert {"HostIp": "::", "HostPort": str(any_port)} in ports
        with udp_echo_in(inspect(daemon, name)["State"]["Pid"]):
            assert udp_ask("::1", lo_port, b"ping-lo") == b"echo:ping-lo"
            assert udp_ask("::1", any_port, b"ping-any") == b"echo:ping-any"
    finally:
        daemon.docker("rm", "-f", name)
        daemon.docker("network", "rm", net)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:  # the proxy let go
        s.bind(("::1", lo_port))


# -- IPv6 upstreams of the embedded DNS ---------------------------------------------------

UPSTREAM_NAME, UPSTREAM_ADDR = "upstream6.skiff.test", "192.0.2.66"  # TEST-NET-1: an answer only


def test_embedded_dns_relays_to_an_ipv6_upstream_of_daemon_json(tmp_path: Path) -> None:
    """daemon.json ``dns: ["[::1]:PORT"]``: a name the network does not know is
    relayed over IPv6."""
    up = DnsStub({UPSTREAM_NAME: [UPSTREAM_ADDR]}, "::1", 0, unknown="empty")
    try:
        with running_daemon(tmp_path / "d", dns=[f"[::1]:{up.port}"]) as d:
            d.skiff("image", "bootstrap", "busybox")
            net, _ = v6net(d)
            try:
                res = d.docker("run", "--rm", "--network", net, "busybox", "nslookup",
                               UPSTREAM_NAME)
                assert UPSTREAM_ADDR in res.stdout.decode(), res.stdout + res.stderr
                assert UPSTREAM_NAME in up.queries
            finally:
                d.docker("network", "rm", net)
    finally:
        up.close()


def test_host_resolv_conf_with_only_ipv6_nameservers(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's resolv.conf names only ``::1``: a container on a user network
    still resolves through the embedded server, which relays over IPv6.  The
    daemon runs in a mount namespace of its own where /etc/resolv.conf is the
    test's file (the host's is never touched)."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver ::1\n")
    wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount --bind {conf} /etc/resolv.conf && exec "$0" "$@"',
               *daemon_module.SKIFFD]
    monkeypatch.setattr(daemon_module, "SKIFFD", wrapped)
    up = DnsStub({UPSTREAM_NAME: [UPSTREAM_ADDR]}, "::1", 53, unknown="empty")
    try:
        with running_daemon(tmp_path / "d") as d:
            d.skiff("image", "bootstrap", "busybox")
            net = f"v6dns-{secrets.token_hex(3)}"
            ok(d, "network", "create", net)
            try:
                res = d.docker("run", "--rm", "--network", net, "busybox", "sh", "-c",
                               f"cat /etc/resolv.conf; nslookup {UPSTREAM_NAME}")
                text = res.stdout.decode()
                assert "nameserver 127.0.0.11" in text, text
                assert UPSTREAM_ADDR in text, text + res.stderr.decode()
                assert UPSTREAM_NAME in up.queries
            finally:
                d.docker("network", "rm", net)
    finally:
        up.close()


# -- docker-py's IPv6 cases (its tests/integration/api_network_test.py) -------------------


def test_docker_py_ipv6_cases(daemon: Daemon) -> None:
    client = dockerpy.DockerClient(base_url=daemon.host, version="1.41", timeout=60)
    made: list[Any] = []
    try:
        sub = subnet6()
        # test_create_network_ipv6_enabled
        net = client.networks.create(unique("dpy6"), enable_ipv6=True, ipam=IPAMConfig(
            driver="default", pool_configs=[IPAMPool(subnet=sub, iprange=sub.replace(
                "::/64", "::/96"), gateway=host(sub, 0xffff))]))
        made.append(net)
        assert client.api.inspect_network(net.id)["EnableIPv6"] is True
        net.remove()
        made.remove(net)

        # test_create_with_ipv6_address: a v6 subnet without enable_ipv6
        net = client.networks.create(unique("dpy6"), ipam=IPAMConfig(
            driver="default", pool_configs=[IPAMPool(subnet=sub)]))
        made.append(net)
        api = client.api
        ctr = api.create_container(
            "busybox", "top", host_config=api.create_host_config(network_mode=net.name),
            networking_config=api.create_networking_config({
                net.name: api.create_endpoint_config(ipv6_address=host(sub, 0xf00d))}))
        made.append(client.containers.get(ctr["Id"]))
        api.start(ctr)
        data = api.inspect_container(ctr)["NetworkSettings"]["Networks"][net.name]
        assert data["IPAMConfig"]["IPv6Address"] == host(sub, 0xf00d)
        assert data["GlobalIPv6Address"] == host(sub, 0xf00d)

        # test_connect_with_ipv6_address
        api.disconnect_container_from_network(ctr, net.name)
        api.connect_container_to_network(ctr, net.name, ipv6_address=host(sub, 0xbeef))
        data = api.inspect_container(ctr)["NetworkSettings"]["Networks"][net.name]
        assert data["IPAMConfig"]["IPv6Address"] == host(sub, 0xbeef)
        assert data["GlobalIPv6Address"] == host(sub, 0xbeef)
        # the address works: the gateway (the host's bridge) answers it
        probe = client.containers.get(ctr["Id"]).exec_run(
            ["ping", "-6", "-c", "1", "-W", "3", host(sub, 1)])
        assert probe.exit_code == 0, probe.output
    finally:
        for thing in reversed(made):
            with contextlib.suppress(dockerpy.errors.APIError):
                if hasattr(thing, "kill"):  # a container
                    thing.remove(force=True)
                else:
                    thing.remove()
        client.close()


# -- item 4: overlaps, and the network's shape, side by side with dockerd -----------------


def test_overlapping_v6_subnet_refused_as_dockerd(twins: SideBySide) -> None:
    def attempt(side: Side) -> tuple[int, str]:
        first, second, sub = unique("v6a"), unique("v6b"), subnet6()
        side.out("network", "create", "--ipv6", "--subnet", sub, first)
        try:
            inner = f"{host(sub, 1 << 48)}/80"  # the second /80 of the first /64
            res = side.docker("network", "create", "--ipv6", "--subnet", inner, second)
            return res.returncode, normalised(res.stderr.decode(), second=second)
        finally:
            side.docker("network", "rm", first)
            side.docker("network", "rm", second)

    code, err = twins.same(attempt)
    assert code != 0 and "overlaps" in err


def test_ipv6_without_a_subnet_as_dockerd(twins: SideBySide) -> None:
    """``--ipv6`` without an IPv6 subnet: dockerd 20.10's default pools are IPv4
    only, so it finds no IPv6 pool and says so (a 404); skiff the same."""
    def attempt(side: Side) -> tuple[int, str]:
        name = unique("v6none")
        try:
            res = side.raw("POST", "/networks/create", json={"Name": name, "EnableIPv6": True})
            return res.status_code, res.json().get("message", "")
        finally:
            side.docker("network", "rm", name)

    code, message = twins.same(attempt)
    assert code == 404 and "IPv6 address pool" in message, message


@pytest.mark.parametrize("gateway", [True, False])
def test_v6_network_inspect_shape_as_dockerd(twins: SideBySide, gateway: bool) -> None:
    def shape(side: Side) -> dict[str, Any]:
        name, sub = unique("v6s"), subnet6()
        gw = ["--gateway", host(sub, 1)] if gateway else []
        side.out("network", "create", "--ipv6", "--subnet", sub, *gw, name)
        try:
            rec = json.loads(side.out("network", "inspect", name))[0]
        finally:
            side.docker("network", "rm", name)
        v6 = [c for c in rec["IPAM"]["Config"] if ":" in c["Subnet"]]
        return {"keys": sorted(rec), "EnableIPv6": rec["EnableIPv6"],
                "v6": [{k: normalised(v, sub=sub, gw=host(sub, 1)) for k, v in c.items()}
                       for c in v6]}

    twins.same(shape)


# -- daemon.json: the default bridge --------------------------------------------------------


def test_default_bridge_fixed_cidr_v6(tmp_path: Path) -> None:
    sub = subnet6()
    with running_daemon(tmp_path / "d", ipv6=True, **{"fixed-cidr-v6": sub}) as d:
        d.skiff("image", "bootstrap", "busybox")
        name = f"fx-{secrets.token_hex(3)}"
        ok(d, "run", "-d", "--name", name, "busybox", "sleep", "300")
        s = inspect(d, name)["NetworkSettings"]
        assert (s["GlobalIPv6Address"], s["GlobalIPv6PrefixLen"], s["IPv6Gateway"]) == (
            host(sub, 2), 64, host(sub, 1))
        assert s["Networks"]["bridge"]["GlobalIPv6Address"] == host(sub, 2)
        bridge = json.loads(ok(d, "network", "inspect", "bridge"))[0]
        assert bridge["EnableIPv6"] is True
        assert f"default via {host(sub, 1)}" in ok(d, "exec", name, "ip", "-6", "route")
        ok(d, "exec", name, "ping", "-6", "-c", "1", "-W", "3", host(sub, 1))
        ok(d, "rm", "-f", name)

        # a restart: the rules go with the daemon and come back with the records
        net, sub2 = v6net(d)
        ok(d, "create", "--name", name, "--network", net, "--ip6", host(sub2, 0x42),
           "busybox", "sleep", "300")
        ok(d, "start", name)
        d.stop()
        assert "skiff:" not in ip6tables_save()
        d.start()
        assert json.loads(ok(d, "network", "inspect", net))[0]["EnableIPv6"] is True
        ok(d, "start", name)
        assert inspect(d, name)["NetworkSettings"]["Networks"][net]["GlobalIPv6Address"] == \
            host(sub2, 0x42)
        ok(d, "exec", name, "ping", "-6", "-c", "1", "-W", "3", host(sub2, 1))
        ok(d, "exec", name, "ping", "-6", "-c", "1", "-W", "3", host(sub, 1))  # the bridge's
        ok(d, "rm", "-f", name)
        ok(d, "network", "rm", net)
    assert "skiff:" not in ip6tables_save()


def test_ip6tables_false_no_rules_and_publishing_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", ip6tables=False) as d:
        d.skiff("image", "bootstrap", "busybox")
        net, sub = v6net(d)
        name = f"n6-{secrets.token_hex(3)}"
        try:
            ok(d, "run", "-d", "--name", name, "--network", net, "busybox", "sleep", "300")
            ok(d, "exec", name, "ping", "-6", "-c", "1", "-W", "3", host(sub, 1))
            assert "skiff:" not in ip6tables_save()
            res = d.docker("run", "--rm", "--network", net, "-p", f"[::1]:{free_port6()}:80",
                           "busybox", "true")
            assert res.returncode != 0 and "needs ip6tables" in res.stderr.decode()
            # refused at create, a 400 naming the reason, not at start; nothing made
            before = ok(d, "ps", "-aq")
            api = dockerpy.APIClient(base_url=d.host, version="1.41", timeout=30)
            for addr in ("::1", "fd00::1", "::"):
                with pytest.raises(dockerpy.errors.APIError) as exc:
                    api.create_container(
                        "busybox", "true", ports=[80],
                        host_config=api.create_host_config(network_mode=net,
                                                           port_bindings={80: (addr, 8080)}))
                assert exc.value.status_code == 400
                assert "needs ip6tables" in str(exc.value.explanation)
            assert ok(d, "ps", "-aq") == before
        finally:
            d.docker("rm", "-f", name)
            d.docker("network", "rm", net)
