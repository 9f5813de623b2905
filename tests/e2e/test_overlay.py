"""The overlay driver across hosts (issue 19, items 3 and 4): three skiffd "hosts"
in network namespaces of their own on an underlay, etcd as the cluster store
(tests/multihost.py). Containers on different hosts reach each other by name
and address over VXLAN; addresses are unique across hosts; a killed host's
endpoints leave everywhere when its lease runs out."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import poll
from tests.multihost import ETCD, Host, Rig
from tests.sidebyside import unique

pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (Debian's "
                                "etcd-server; scripts/install.sh --test installs it)")

HTTPD = ("mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && "
         "exec httpd -f -p 80 -h /www")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with Rig(tmp_path) as r:
        yield r


def _ready(host: Host) -> None:
    host.daemon.skiff("image", "bootstrap", "busybox")


def _networks(host: Host) -> dict[str, str]:
    out = host.out("network", "ls", "--no-trunc", "--format", "{{.Name}} {{.ID}}")
    return dict(line.split() for line in out.splitlines())


def _ip_of(host: Host, name: str, net: str) -> str:
    return host.out("inspect", "--format",
                    f"{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}", name)


def _vxlan_entries(host: Host) -> str:
    """``bridge fdb`` of the overlay's VXLAN devices in the host's skiffd: the
    sandboxes are held by descriptors only, so they are entered through them."""
    assert host.daemon.proc is not None
    pid = host.daemon.proc.pid
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("net:["):
                continue
        except OSError:
            continue
        res = subprocess.run(["nsenter", f"--net=/proc/{pid}/fd/{fd}", "bridge", "fdb",
                              "show", "dev", "vxlan0"], capture_output=True, text=True)
        if res.returncode == 0:
            out.append(res.stdout)
    return "".join(out)


def test_containers_on_three_hosts_talk_over_an_overlay(rig: Rig) -> None:
    h1, h2 = rig.add_host(), rig.add_host()
    for h in (h1, h2):
        _ready(h)
    net, other = unique("ov"), unique("ov")
    h1.docker("network", "create", "-d", "overlay", "--subnet", "10.231.1.0/24", net)
    made = _networks(h1)[net]
    inspected = json.loads(h1.out("network", "inspect", net))[0]
    assert (inspected["Driver"], inspected["Scope"]) == ("overlay", "global")
    poll(lambda: _networks(h2).get(net) == made, what="the overlay on host 2")

    a, b = unique("ova"), unique("ovb")
    h1.docker("run", "-d", "--name", a, "--hostname", a, "--network", net,
              "busybox", "sh", "-c", HTTPD)
    h2.docker("run", "-d", "--restart", "always", "--name", b, "--network", net,
              "busybox", "sleep", "600")
    ip_a, ip_b = _ip_of(h1, a, net), _ip_of(h2, b, net)
    assert ip_a != ip_b and ip_a.startswith("10.231.1.") and ip_b.startswith("10.231.1.")
    # across the hosts, by address and by name (the overlay's name server)
    h2.docker("exec", b, "ping", "-c", "1", "-W", "3", ip_a)
    h2.docker("exec", b, "ping", "-c", "1", "-W", "3", a)
    page = h2.out("exec", b, "wget", "-q", "-O", "-", f"http://{a}/")
    assert page == f"hello-from-{a}"
    # a container on an overlay and a user bridge resolves the names of both,
    # whichever network's server its resolv.conf names (the one it joined first)
    br, e = unique("br"), unique("ove")
    h1.docker("network", "create", br)
    h1.docker("run", "-d", "--name", e, "--network", br, "busybox", "sleep", "600")
    h1.docker("network", "connect", br, a)  # a: the overlay first, so 127.0.0.12
    h1.docker("network", "connect", net, e)  # e: the bridge first, so 127.0.0.11
    assert "127.0.0.12" in h1.out("exec", a, "cat", "/etc/resolv.conf")
    assert "127.0.0.11" in h1.out("exec", e, "cat", "/etc/resolv.conf")
    h1.docker("exec", a, "ping", "-c", "1", "-W", "3", e)  # a bridge name via .12
    h1.docker("exec", e, "ping", "-c", "1", "-W", "3", b)  # an overlay name via .11
    # the MTU leaves room for the VXLAN header
    assert h2.out("exec", b, "cat", "/sys/class/net/eth0/mtu") == "1450"
    # no flooding, no learning: host 1's VXLAN knows b's MAC from the store
    mac_b = h2.out("inspect", "--format",
                   f"{{{{(index .NetworkSettings.Networks \"{net}\").MacAddress}}}}", b)
    assert f"{mac_b} dst {h2.address}" in _vxlan_entries(h1)

    # a third host that joins later sees the network and both containers
    h3 = rig.add_host()
    _ready(h3)
    poll(lambda: net in _networks(h3), what="the overlay on host 3")
    c = unique("ovc")
    h3.docker("run", "-d", "--name", c, "--network", net, "busybox", "sleep", "600")
    h3.docker("exec", c, "ping", "-c", "1", "-W", "3", a)
    h3.docker("exec", c, "ping", "-c", "1", "-W", "3", b)

    # two overlays are apart: another VNI, another segment
    h2.docker("network", "create", "-d", "overlay", "--subnet", "10.231.2.0/24", other)
    poll(lambda: other in _networks(h1), what="the second overlay on host 1")
    d = unique("ovd")
    h1.docker("run", "-d", "--name", d, "--network", other, "busybox", "sleep", "600")
    assert h1.docker("exec", d, "ping", "-c", "1", "-W", "2", ip_b,
                     check=False).returncode != 0
    vnis = {k: v for k, v in rig.keys("/skiff/v1/driver/overlay/vni/").items()}
    assert sorted(v.decode() for v in vnis.values()) == sorted([made, _networks(h1)[other]])

    # addresses are unique across hosts when all three run at once
    def run_some(host: Host) -> list[str]:
        names = [unique("ovx") for _ in range(4)]
        for n in names:
            host.docker("run", "-d", "--name", n, "--network", net, "busybox", "sleep", "600")
        return [_ip_of(host, n, net) for n in names]

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        ips = [ip for got in pool.map(run_some, (h1, h2, h3)) for ip in got]
    ips += [ip_a, ip_b, _ip_of(h3, c, net)]
    assert len(ips) == len(set(ips)) == 15, ips

    # host 2 killed: its endpoints leave the store and host 1's VXLAN within the lease
    assert h2.daemon.proc is not None
    node2 = h2.daemon.docker("info", "--format", "{{.ID}}").stdout.decode().strip()
    os.killpg(h2.daemon.proc.pid, signal.SIGKILL)
    h2.daemon.proc.wait()
    h2.daemon.proc = None

    def endpoints_of(node: str) -> list[str]:
        return [k for k, v in rig.keys("/skiff/v1/driver/overlay/net/").items()
                if "/ep/" in k and json.loads(v)["node"] == node]

    poll(lambda: not endpoints_of(node2), timeout=15, what="host 2's endpoints to expire")
    # the VXLAN's static entry (the bridge's own learnt one ages out by itself)
    poll(lambda: f"{mac_b} dst" not in _vxlan_entries(h1), timeout=10,
         what="host 1 to forget host 2's endpoint")
    h3.docker("exec", c, "ping", "-c", "1", "-W", "3", a)  # hosts 1 and 3 go on
    # back: b (restart always) runs again and its endpoint returns
    h2.daemon.start()
    poll(lambda: endpoints_of(node2), timeout=30, what="host 2's endpoint back")
    ip_b2 = poll(lambda: _ip_of(h2, b, net), what="b's address after the restart")
    poll(lambda: h1.docker("exec", a, "ping", "-c", "1", "-W", "2", ip_b2,
                           check=False).returncode == 0, timeout=20,
         what="a to reach b again")


def test_the_store_away_leaves_the_overlay_working(rig: Rig) -> None:
    h1, h2 = rig.add_host(), rig.add_host()
    for h in (h1, h2):
        _ready(h)
    net = unique("ov")
    h1.docker("network", "create", "-d", "overlay", "--subnet", "10.231.3.0/24", net)
    poll(lambda: net in _networks(h2), what="the overlay on host 2")
    a, b = unique("ova"), unique("ovb")
    h1.docker("run", "-d", "--name", a, "--network", net, "busybox", "sleep", "600")
    h2.docker("run", "-d", "--name", b, "--network", net, "busybox", "sleep", "600")
    h2.docker("exec", b, "ping", "-c", "1", "-W", "3", a)
    rig.stop_etcd()
    stopped = time.monotonic()
    try:
        # containers keep talking; operations that need the store fail naming it
        h2.docker("exec", b, "ping", "-c", "1", "-W", "3", _ip_of(h1, a, net))

        def refused() -> str:
            res = h1.docker("network", "create", "-d", "overlay", "--subnet",
                            "10.231.4.0/24", unique("ov"), check=False)
            return res.stderr.decode() if res.returncode else ""

        err = poll(refused, timeout=10, what="network create to be refused")
        assert rig.store in err, err
        res = h1.docker("run", "--rm", "--network", net, "busybox", "true", check=False)
        assert res.returncode != 0 and rig.store in res.stderr.decode()
        time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))  # the issue's 10 s
        h2.docker("exec", b, "ping", "-c", "1", "-W", "3", a)  # still talking, by name
    finally:
        rig.start_etcd()
    poll(lambda: h1.docker("run", "--rm", "--network", net, "busybox", "ping", "-c", "1",
                           "-W", "3", b, check=False).returncode == 0, timeout=30,
         what="the overlay to work again once the store is back")


def test_overlay_refuses_what_it_does_not_do(rig: Rig) -> None:
    h1 = rig.add_host()
    _ready(h1)
    res = h1.docker("network", "create", "-d", "overlay", "-o", "encrypted", unique("ov"),
                    check=False)
    assert res.returncode != 0 and "encrypted overlay networks" in res.stderr.decode()
    net = unique("ov")
    h1.docker("network", "create", "-d", "overlay", "--subnet", "10.231.5.0/24", net)
    res = h1.docker("run", "--rm", "--network", net, "-p", "8080:80", "busybox", "true",
                    check=False)
    assert res.returncode != 0 and "publishes no ports" in res.stderr.decode()
    res = h1.docker("run", "--rm", "--network", net, "--ip", "10.231.5.1", "busybox", "true",
                    check=False)
    assert res.returncode != 0 and "already in use" in res.stderr.decode()
