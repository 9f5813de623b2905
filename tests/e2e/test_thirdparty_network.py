"""A third-party network driver through the contract alone (issue 19, "What must
be shown"): ``testnet`` (tests/thirdparty/skiff-testnet) puts containers on
macvlans of a parent device; the stock CLI creates its network and runs
containers on it, and they reach each other through it."""

from __future__ import annotations

import json
import re
import socket
import subprocess

from tests.daemon import Daemon
from tests.sidebyside import unique


def _out(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode().strip()


def _ifindex(name: str) -> int:
    return socket.if_nametoindex(name)


def test_containers_on_a_third_party_network_talk(default_skiffd: Daemon, veth_parent: str) -> None:
    d = default_skiffd
    net, a, b = unique("tn"), unique("tna"), unique("tnb")
    try:
        d.docker("network", "create", "-d", "testnet", "--subnet", "10.213.7.0/24",
                 "-o", f"parent={veth_parent}", net, check=True)
        inspected = json.loads(_out(d.docker("network", "inspect", net, check=True)))[0]
        assert (inspected["Driver"], inspected["Scope"]) == ("testnet", "local")
        assert inspected["IPAM"]["Config"][0]["Subnet"] == "10.213.7.0/24"
        d.docker("run", "-d", "--name", a, "--network", net, "busybox", "sleep", "600",
                 check=True)
        settings = json.loads(_out(d.docker("inspect", "--format",
                                            "{{json .NetworkSettings.Networks}}", a, check=True)))
        ip_a = settings[net]["IPAddress"]
        assert (ip_a, settings[net]["Gateway"]) == ("10.213.7.2", "10.213.7.1")
        # the interface inside is the driver's: a macvlan with the address it reported
        pid = _out(d.docker("inspect", "--format", "{{.State.Pid}}", a, check=True))
        link = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-d", "-o", "link",
                               "show", "eth0"], capture_output=True, text=True, check=True).stdout
        assert "macvlan mode bridge" in link and f"@if{_ifindex(veth_parent)}" in link
        addr = _out(d.docker("exec", a, "ip", "-o", "-4", "addr", "show", "eth0", check=True))
        assert f"{ip_a}/24" in addr
        # a second container, by the stock CLI too, reaches the first through the parent
        res = d.docker("run", "--rm", "--name", b, "--network", net, "--ip", "10.213.7.50",
                       "--hostname", "bee", "busybox", "sh", "-c",
                       f"ip -o -4 addr show eth0; ping -c 1 -W 3 {ip_a}; grep bee /etc/hosts",
                       check=True)
        assert "10.213.7.50/24" in _out(res) and "1 packets received" in _out(res)
        assert "10.213.7.50\tbee" in _out(res)  # the daemon's own line, with its hostname
        # no name server: the driver's /etc/hosts lines resolve the first one's name
        res = d.docker("run", "--rm", "--network", net, "busybox", "sh", "-c",
                       f"grep -w {a} /etc/hosts; ping -c 1 -W 3 {a}", check=True)
        assert f"{ip_a}\t{a}" in _out(res) and "1 packets received" in _out(res)
        members = json.loads(_out(d.docker("network", "inspect", net, check=True)))[0]
        assert [m["IPv4Address"] for m in members["Containers"].values()] == [f"{ip_a}/24"]
        # a running container on the default bridge joins it too, with the endpoint's
        # --driver-opt reaching the driver (contract 2.7: Endpoint.driver_options)
        d.docker("run", "-d", "--name", b, "busybox", "sleep", "600", check=True)
        res = d.docker("network", "connect", "--driver-opt", "testnet.bogus=1", net, b)
        assert res.returncode != 0 and (
            "unknown endpoint option 'testnet.bogus' for the testnet driver"
            in res.stderr.decode())
        d.docker("network", "connect", "--driver-opt", "testnet.mtu=1400", net, b, check=True)
        links = _out(d.docker("exec", b, "ip", "-o", "link", check=True))
        assert re.search(r"eth1@if\d+: <[^>]*,UP,[^>]*> mtu 1400 ", links), links
        res = d.docker("exec", b, "ping", "-c", "1", "-W", "3", ip_a, check=True)
        assert "1 packets received" in _out(res)
        d.docker("network", "disconnect", net, b, check=True)
        assert "eth1" not in _out(d.docker("exec", b, "ip", "-o", "link", check=True))
    finally:
        d.docker("rm", "-f", a, b)
        d.docker("network", "rm", net)


def test_its_refusals_are_400s_in_its_words(default_skiffd: Daemon, veth_parent: str) -> None:
    d = default_skiffd
    net = unique("tn")
    res = d.docker("network", "create", "-d", "testnet", net)
    assert res.returncode != 0
    assert "the testnet driver needs -o parent=<host interface>" in res.stderr.decode()
    res = d.docker("network", "create", "-d", "testnet", "-o", "parent=nosuchdev0", net)
    assert "parent interface nosuchdev0 does not exist" in res.stderr.decode()
    # the daemon refuses what the driver says it cannot do (ipv6 = False)
    res = d.docker("network", "create", "-d", "testnet", "-o", f"parent={veth_parent}", "--ipv6",
                   "--subnet", "fd00:77::/64", net)
    assert "IPv6 is not supported by the testnet driver" in res.stderr.decode()
    assert d.docker("network", "inspect", net).returncode != 0  # none of them was made
