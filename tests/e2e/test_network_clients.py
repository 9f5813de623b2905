"""Networks as clients use them (issue 17, item 3): a container connected to a
user network after start resolves names there and its resolv.conf follows;
EndpointSettings at create and at connect inspected back; dockerd's errors
for missing and predefined networks; internal networks; labels; and the swarm
endpoints of a node outside any swarm.  Compared with the tests' dockerd
(tests/sidebyside.py) where dockerd 20.10 behaves the same.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import docker as dockerpy
import pytest

from benchmarks.engines import Dockerd
from tests.daemon import Daemon, running_daemon
from tests.e2e.conftest import twin_of
from tests.sidebyside import Side, SideBySide, fields, normalised, removing, unique

EMBEDDED = "nameserver 127.0.0.11"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("skiffd-netclients")) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def twins(daemon: Daemon, twin_dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[SideBySide]:
    sbs = twin_of(daemon, twin_dockerd, tmp_path_factory.mktemp("net-twin"))
    yield sbs
    sbs.close()


def subnet() -> str:
    """A /24 of 10.x no other test (nor the other engine) uses."""
    return f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.0/24"


def ok(d: Daemon, *args: str) -> str:
    return d.docker(*args, check=True).stdout.decode().strip()


def networks_of(d: Daemon, ref: str) -> dict[str, Any]:
    return json.loads(ok(d, "inspect", "--format", "{{json .NetworkSettings.Networks}}", ref))


# -- 1: connect from the default bridge, names and resolv.conf --------------------------


def test_connect_then_lookup_by_name_and_resolv_conf_follows(daemon: Daemon) -> None:
    """Stock CLI: `docker network connect`, then nslookup/ping by name from the
    connected container; resolv.conf is the embedded server's only meanwhile."""
    net, srv, cli = unique("net"), unique("srv"), unique("cli")
    ok(daemon, "network", "create", "--subnet", subnet(), net)
    try:
        ok(daemon, "run", "-d", "--name", srv, "--network", net, "--network-alias", "web",
           "busybox", "sleep", "300")
        ok(daemon, "run", "-d", "--name", cli, "busybox", "sleep", "300")
        host_derived = ok(daemon, "exec", cli, "cat", "/etc/resolv.conf")
        assert EMBEDDED not in host_derived
        assert daemon.docker("exec", cli, "nslookup", srv).returncode != 0

        ok(daemon, "network", "connect", net, cli)
        assert ok(daemon, "exec", cli, "cat", "/etc/resolv.conf").startswith(EMBEDDED)
        ip = networks_of(daemon, srv)[net]["IPAddress"]
        for name in (srv, "web"):
            res = daemon.docker("exec", cli, "nslookup", name)
            assert ip in res.stdout.decode(), res.stdout.decode() + res.stderr.decode()
        res = daemon.docker("exec", cli, "ping", "-c1", "-W2", srv)
        assert res.returncode == 0 and ip in res.stdout.decode(), res.stderr.decode()

        ok(daemon, "network", "disconnect", net, cli)
        assert ok(daemon, "exec", cli, "cat", "/etc/resolv.conf") == host_derived
        # stopped and connected: the next start has the embedded server again
        ok(daemon, "stop", "-t", "0", cli)
        ok(daemon, "network", "connect", net, cli)
        ok(daemon, "start", cli)
        assert ok(daemon, "exec", cli, "cat", "/etc/resolv.conf").startswith(EMBEDDED)
        res = daemon.docker("exec", cli, "nslookup", "web")
        assert ip in res.stdout.decode(), res.stdout.decode()
    finally:
        daemon.docker("rm", "-f", srv, cli)
        daemon.docker("network", "rm", net)


# -- 2: EndpointSettings ---------------------------------------------------------------


def test_docker_py_connect_with_endpoint_settings(daemon: Daemon) -> None:
    """docker-py: connect with aliases, an IPv4 address, links and a MAC address,
    each inspected back as dockerd shows them, and the MAC is the interface's."""
    client = dockerpy.DockerClient(base_url=daemon.host, version="1.41", timeout=60)
    net_sub = subnet()
    net = client.networks.create(unique("dpy"), ipam=dockerpy.types.IPAMConfig(
        pool_configs=[dockerpy.types.IPAMPool(subnet=net_sub)]))
    target = client.containers.run("busybox", ["sleep", "300"], detach=True,
                                   name=unique("tgt"), network=net.name)
    c = client.containers.run("busybox", ["sleep", "300"], detach=True, name=unique("dpy"))
    want_ip = str(ipaddress.IPv4Network(net_sub).network_address + 77)
    try:
        net.connect(c, aliases=["api", "api2"], ipv4_address=want_ip,
                    links=[(target.name, "db")], mac_address="02:42:de:ad:be:ef",
                    driver_opt={"com.example.opt": "1"})
        c.reload()
        got = c.attrs["NetworkSettings"]["Networks"][net.name]
        assert got["Aliases"] == ["api", "api2", c.id[:12]]
        assert got["IPAMConfig"] == {"IPv4Address": want_ip}
        assert got["IPAddress"] == want_ip
        assert got["Links"] == [f"{target.name}:db"]
        assert got["MacAddress"] == "02:42:de:ad:be:ef"
        assert got["DriverOpts"] == {"com.example.opt": "1"}
        shown = client.api.inspect_network(net.id)["Containers"]
        assert shown[c.id]["MacAddress"] == "02:42:de:ad:be:ef"
        assert shown[c.id]["IPv4Address"].startswith(want_ip + "/")
        assert c.exec_run("cat /sys/class/net/eth1/address").output.decode().strip() == \
            "02:42:de:ad:be:ef"
        # the aliases answer on the network's DNS
        out = target.exec_run("nslookup api2").output.decode()
        assert want_ip in out, out
        # the link's alias answers for the linking container only, as dockerd's
        tip = client.api.inspect_container(target.id)["NetworkSettings"]["Networks"][
            net.name]["IPAddress"]
        out = c.exec_run("nslookup db").output.decode()
        assert tip in out, out
        assert tip not in target.exec_run("nslookup db").output.decode()
    finally:
        for x in (c, target):
            x.remove(force=True)
        net.remove()
        client.close()


def test_create_with_endpoints_config_and_mac_address(daemon: Daemon) -> None:
    """NetworkingConfig at create and Config.MacAddress (``--mac-address``: the
    stock CLI 28 does not send it to an API 1.41 daemon) on the first network,
    through a stop and a start."""
    net = unique("cfg")
    sub = subnet()
    ip = str(ipaddress.IPv4Network(sub).network_address + 9)
    ok(daemon, "network", "create", "--subnet", sub, net)
    api = dockerpy.APIClient(base_url=daemon.host, version="1.41")
    cid = ""
    try:
        cid = api.create_container(
            "busybox", ["sleep", "300"], mac_address="02:42:0a:0b:0c:0d",
            host_config=api.create_host_config(network_mode=net),
            networking_config=api.create_networking_config({
                net: api.create_endpoint_config(aliases=["front"], ipv4_address=ip,
                                                driver_opt={"o": "1"})}))["Id"]
        created = networks_of(daemon, cid)[net]
        assert created["IPAMConfig"] == {"IPv4Address": ip}
        assert created["Aliases"] == ["front"] and created["MacAddress"] == ""
        assert created["DriverOpts"] == {"o": "1"}
        for _ in range(2):  # the requested MAC survives a stop
            ok(daemon, "start", cid)
            running = networks_of(daemon, cid)[net]
            assert running["Aliases"] == ["front", cid[:12]]
            assert (running["IPAddress"], running["MacAddress"]) == (ip, "02:42:0a:0b:0c:0d")
            assert ok(daemon, "exec", cid, "cat", "/sys/class/net/eth0/address") == \
                "02:42:0a:0b:0c:0d"
            ok(daemon, "stop", "-t", "0", cid)
        # on the default bridge (the stock CLI 28 refuses --mac-address with API
        # 1.41: "requires API version 1.44"; docker-py sends Config.MacAddress)
        other = api.create_container("busybox", ["sleep", "300"],
                                     mac_address="02:42:99:88:77:66")["Id"]
        try:
            api.start(other)
            assert networks_of(daemon, other)["bridge"]["MacAddress"] == "02:42:99:88:77:66"
        finally:
            api.remove_container(other, force=True)
    finally:
        if cid:
            daemon.docker("rm", "-f", cid)
        api.close()
        daemon.docker("network", "rm", net)


def test_bad_endpoint_settings_are_400(daemon: Daemon) -> None:
    net = unique("bad")
    ok(daemon, "network", "create", "--subnet", "10.250.3.0/24", net)
    client = dockerpy.APIClient(base_url=daemon.host, version="1.41")
    try:
        res = client.post(client._url("/containers/create"), json={
            "Image": "busybox", "MacAddress": "nope",
            "HostConfig": {"NetworkMode": net}})
        # dockerd 20.10: the same words, but at start and as a 500
        assert res.status_code == 400 and res.json()["message"] == \
            "address nope: invalid MAC address"
        res = client.post(client._url("/containers/create"), json={
            "Image": "busybox", "HostConfig": {"NetworkMode": net},
            "NetworkingConfig": {"EndpointsConfig": {
                net: {"IPAMConfig": {"IPv4Address": "10.250.4.2"}}}}})
        assert res.status_code == 400, res.text
        assert "10.250.4.2: It does not belong to any of this network's subnets" in \
            res.json()["message"]
        auto = unique("auto")
        ok(daemon, "network", "create", auto)
        res = client.post(client._url("/containers/create"), json={
            "Image": "busybox", "HostConfig": {"NetworkMode": auto},
            "NetworkingConfig": {"EndpointsConfig": {
                auto: {"IPAMConfig": {"IPv4Address": "10.250.4.2"}}}}})
        daemon.docker("network", "rm", auto)
        assert res.status_code == 400 and res.json()["message"] == (
            "user specified IP address is supported only when connecting to networks with "
            "user configured subnets")
        res = client.post(client._url("/containers/create"), json={
            "Image": "busybox", "HostConfig": {"NetworkMode": "bridge"},
            "NetworkingConfig": {"EndpointsConfig": {"bridge": {"Aliases": ["x"]}}}})
        assert res.status_code == 400 and res.json()["message"] == (
            "network-scoped alias is supported only for containers in user defined networks")
        cid = client.create_container("busybox", "true")["Id"]
        res = client.post(client._url(f"/networks/{net}/connect"), json={
            "Container": cid, "EndpointConfig": {"MacAddress": "01:00:5e:00:00:01"}})
        assert res.status_code == 400 and "invalid MAC address" in res.json()["message"]
        client.remove_container(cid, force=True)
    finally:
        client.close()
        daemon.docker("network", "rm", net)


# -- 3: errors as dockerd's ----------------------------------------------------------


def test_missing_and_predefined_networks_side_by_side(twins: SideBySide) -> None:
    def errors(side: Side) -> dict[str, Any]:
        missing = unique("nosuch")
        res = side.raw("POST", "/containers/create",
                       json={"Image": "busybox", "HostConfig": {"NetworkMode": missing}})
        if res.status_code == 201:
            # dockerd 20.10 creates it and fails at start with a 404 in the same
            # words; skiff refuses at create (a 400: see below)
            cid = res.json()["Id"]
            res = side.raw("POST", f"/containers/{cid}/start")
            side.raw("DELETE", f"/containers/{cid}", params={"force": True})
        run = side.docker("run", "--rm", "--network", missing, "busybox", "true")
        net = unique("dup")
        created = side.raw("POST", "/networks/create",
                           json={"Name": net, "CheckDuplicate": True})
        with removing(side, ("network", net)):
            dup = side.raw("POST", "/networks/create",
                           json={"Name": net, "CheckDuplicate": True})
        rm = side.raw("DELETE", "/networks/none")
        cli = side.docker("network", "rm", "host")
        return {
            "create": normalised(res.json()["message"], net=missing),
            "run": (run.returncode, normalised(run.stderr.decode().strip(), net=missing)),
            "first": created.status_code,
            "dup": (dup.status_code, normalised(dup.json()["message"], net=net)),
            "rm": (rm.status_code, rm.json()["message"]),
            "cli": (cli.returncode, cli.stderr.decode().strip()),
        }

    got = twins.same(errors)
    assert got["create"] == "network <net> not found"
    # no "Unable to find image": a 404 at create would send the CLI pulling
    assert got["run"] == (125, "docker: Error response from daemon: network <net> not found"
                               "\n\nRun 'docker run --help' for more information")
    assert got["rm"] == (403, "none is a pre-defined network and cannot be removed")


# -- 4: internal networks and labels -----------------------------------------------------


def test_internal_network_and_labels_side_by_side(twins: SideBySide) -> None:
    def internal(side: Side) -> dict[str, Any]:
        net, n = unique("int"), unique("int")
        sub = "10.251.7.0/24" if side.name == "skiffd" else "10.251.8.0/24"
        side.out("network", "create", "--internal", "--subnet", sub, "--label", "team=a",
                 "--label", "tier", net)
        with removing(side, ("container", n), ("network", net)):
            side.out("run", "-d", "--name", n, "--network", net, "-p", "8080:80",
                     "busybox", "sleep", "300")
            routes = side.out("exec", n, "ip", "route")
            ports = json.loads(side.out("inspect", "--format",
                                        "{{json .NetworkSettings.Ports}}", n))
            port_cli = side.docker("port", n).stdout.decode().strip()
            shown = json.loads(side.out("network", "inspect", net))[0]
            ls = side.out("network", "ls", "--filter", "label=team=a", "--format",
                          "{{.Name}}").split()
            ls_key = side.out("network", "ls", "--filter", "label=tier", "--format",
                              "{{.Name}}").split()
            ls_other = side.out("network", "ls", "--filter", "label=team=b", "--format",
                                "{{.Name}}").split()
            nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True,
                                 text=True).stdout if side.name == "skiffd" else ""
        return {
            "default_route": "default" in routes, "ports": ports, "port": port_cli,
            **fields(shown, "Internal", "Labels"),
            "ls": net in ls, "ls_key": net in ls_key, "ls_other": net in ls_other,
            "nat": nat,
        }

    seen = twins.each(internal)
    # dockerd 20.10 still gives the container a default route via the bridge
    # (its firewall drops what leaves); skiff gives none: no route out at all.
    assert seen["skiffd"].pop("default_route") is False
    assert seen["dockerd"].pop("default_route") is True
    got = dict(seen["skiffd"])
    for side in seen.values():
        side.pop("nat")
    assert seen["skiffd"] == seen["dockerd"]
    assert got["ports"] == {} and got["Labels"] == {"team": "a", "tier": ""}
    # no MASQUERADE out of the bridge and no DNAT of the port asked for
    assert "-s 10.251.7.0/24 ! -o" not in got["nat"] and "8080" not in got["nat"]
    assert "-s 10.251.7.0/24" in got["nat"]  # (the hairpin rule: the listing is real)
    assert got["ls"] and got["ls_key"] and not got["ls_other"]


def test_connect_endpoint_settings_side_by_side(twins: SideBySide) -> None:
    """What dockerd 20.10 shows after a connect with aliases, an address, links and
    DriverOpts (its MacAddress at connect is ignored by 20.10; skiff honours it)."""
    def connect(side: Side) -> dict[str, Any]:
        a, b = unique("na"), unique("nb")
        one = "10.252.1.0/24" if side.name == "skiffd" else "10.252.2.0/24"
        two = "10.252.3.0/24" if side.name == "skiffd" else "10.252.4.0/24"
        t, c = unique("t"), unique("c")
        side.out("network", "create", "--subnet", one, a)
        side.out("network", "create", "--subnet", two, b)
        with removing(side, ("container", c), ("container", t), ("network", a),
                      ("network", b)):
            side.out("run", "-d", "--name", t, "--network", b, "busybox", "sleep", "300")
            side.out("run", "-d", "--name", c, "--network", a, "busybox", "sleep", "300")
            ip = str(ipaddress.IPv4Network(two).network_address + 50)
            body = {"Container": c, "EndpointConfig": {
                "Aliases": ["x1"], "Links": [f"{t}:db"], "IPAMConfig": {"IPv4Address": ip},
                "DriverOpts": {"com.example.k": "v"}}}
            res = side.raw("POST", f"/networks/{b}/connect", json=body)
            got = side.client.api.inspect_container(c)["NetworkSettings"]["Networks"][b]
            bad = side.raw("POST", f"/networks/{a}/disconnect", json={"Container": c})
            again = side.raw("POST", f"/networks/{b}/connect", json={"Container": c})
            return {
                "status": res.status_code,
                "settings": {k: normalised(json.dumps(got[k]), t=t, ip=ip) for k in (
                    "Aliases", "Links", "IPAMConfig", "IPAddress", "DriverOpts")},
                "mac_set": bool(got["MacAddress"]),
                "disconnect": bad.status_code,
                "again": (again.status_code, normalised(again.json()["message"], c=c, b=b)),
            }

    got = twins.same(connect)
    assert got["again"][0] == 403 and got["status"] == 200


# -- 5: swarm -------------------------------------------------------------------------


SWARM_CALLS = [("GET", "/swarm"), ("POST", "/swarm/leave"), ("POST", "/swarm/unlock"),
               ("GET", "/swarm/unlockkey"), ("POST", "/swarm/update"), ("GET", "/nodes"),
               ("GET", "/nodes/x"), ("GET", "/services"), ("GET", "/services/x"),
               ("POST", "/services/create"), ("GET", "/tasks"), ("GET", "/secrets"),
               ("GET", "/configs"), ("DELETE", "/configs/x")]


def test_swarm_endpoints_as_a_node_outside_a_swarm(twins: SideBySide) -> None:
    def swarm(side: Side) -> list[tuple[str, int, str]]:
        out = []
        for method, path in SWARM_CALLS:
            # /swarm/update reads its version before it finds no swarm
            params = {"version": "1"} if path == "/swarm/update" else None
            res = side.raw(method, path, json={} if method == "POST" else None, params=params)
            out.append((path, res.status_code, res.json()["message"]))
        return out

    got = twins.same(swarm)
    assert ("/swarm/leave", 503, "This node is not part of a swarm") in got


def test_docker_py_swarm_leave(daemon: Daemon) -> None:
    client = dockerpy.DockerClient(base_url=daemon.host, version="1.41")
    try:
        assert client.swarm.leave(force=True) is True  # docker-py swallows the 503 when forced
        with pytest.raises(dockerpy.errors.APIError) as err:
            client.swarm.leave()
        assert err.value.status_code == 503
        assert "This node is not part of a swarm" in str(err.value)
        assert client.info()["Swarm"]["LocalNodeState"] == "inactive"
    finally:
        client.close()
