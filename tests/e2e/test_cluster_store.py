"""The cluster store (issue 19, item 2): skiffd registers itself in a real etcd
under a lease, keeps it alive, watches the other nodes, and leaves; with the
store away, containers go on and global-scope operations fail naming it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.daemon import Daemon, daemon_config, poll, running_daemon
from tests.sidebyside import unique

ETCD = shutil.which("etcd")
NODES = "/skiff/v1/nodes/"
#: short, so a dead node's lease runs out within the test
OPTS = {"discovery.ttl": "3", "discovery.heartbeat": "1"}

pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (Debian's "
                                "etcd-server; scripts/install.sh --test installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class Etcd:
    """One etcd member on loopback, stoppable and restartable on the same data."""

    data: Path
    client_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def store(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        url = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(self.data.with_suffix(".log"), "ab") as log:
            self.proc = subprocess.Popen(
                [str(ETCD), "--name", "t", "--data-dir", str(self.data),
                 "--listen-client-urls", url, "--advertise-client-urls", url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"t={peer}"], stdout=log, stderr=log)
        poll(lambda: self._answers(), timeout=20, what="etcd to answer")

    def _answers(self) -> bool:
        try:
            self.call("kv/range", {"key": _b64("/")})
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
            self.proc = None

    def call(self, rpc: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.client_port}/v3/{rpc}",
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as reply:
            data: dict[str, Any] = json.load(reply)
            return data

    def nodes(self) -> dict[str, tuple[dict[str, Any], int]]:
        """node id -> (its record, its lease)"""
        end = NODES[:-1] + chr(ord(NODES[-1]) + 1)
        reply = self.call("kv/range", {"key": _b64(NODES), "range_end": _b64(end)})
        return {base64.b64decode(kv["key"]).decode()[len(NODES):]:
                (json.loads(base64.b64decode(kv["value"])), int(kv.get("lease", 0)))
                for kv in reply.get("kvs", [])}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    e = Etcd(tmp_path / "etcd", _free_port(), _free_port())
    e.start()
    try:
        yield e
    finally:
        e.stop()


def _info(d: Daemon, key: str) -> str:
    """``GET /info``'s ``key`` (the docker CLI 28 no longer knows ClusterStore)."""
    client = docker.DockerClient(base_url=d.host)
    try:
        return str(client.info()[key])
    finally:
        client.close()


def _cluster(etcd: Etcd, port: int) -> dict[str, Any]:
    return {"cluster-store": etcd.store, "cluster-advertise": f"127.0.0.1:{port}",
            "cluster-store-opts": OPTS}


def test_a_node_registers_under_a_lease_and_leaves_on_stop(etcd: Etcd, tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d1", **_cluster(etcd, 2377)) as d:
        node = _info(d, "ID")
        assert (_info(d, "ClusterStore"), _info(d, "ClusterAdvertise")) == \
            (etcd.store, "127.0.0.1:2377")
        record, lease = poll(lambda: etcd.nodes().get(node), what="the node's registration")
        assert record["advertise"] == "127.0.0.1:2377" and record["id"] == node
        assert lease != 0, "registered without a lease: a dead node would stay forever"
        ttl = int(etcd.call("kv/lease/timetolive", {"ID": str(lease)})["TTL"])
        assert 0 < ttl <= 3
        time.sleep(4)  # longer than the TTL: only the keep-alive keeps it
        assert node in etcd.nodes(), "the lease was not kept alive"
    # a clean stop revokes the lease: gone at once, not after the TTL
    assert node not in etcd.nodes()


def test_nodes_see_each_other_and_a_killed_one_drops_out(etcd: Etcd, tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d1", **_cluster(etcd, 2377)) as d1:
        n1 = _info(d1, "ID")
        with running_daemon(tmp_path / "d2", **_cluster(etcd, 2378)) as d2:
            n2 = _info(d2, "ID")
            poll(lambda: {n1, n2} <= set(etcd.nodes()), what="both registrations")
            # each watches the other: d1 learnt of d2 after it had registered
            poll(lambda: "cluster.peer_joined" in d1.logs() and n2 in d1.logs(),
                 what="d1 to see d2 join")
            assert d2.proc is not None
            os.killpg(d2.proc.pid, signal.SIGKILL)  # no goodbye: only the lease tells
            d2.proc.wait()
            d2.proc = None
            assert n2 in etcd.nodes(), "gone before its lease ran out: revoked by a dead node?"
            poll(lambda: n2 not in etcd.nodes(), timeout=10, what="d2's lease to run out")
            poll(lambda: "cluster.peer_left" in d1.logs(), what="d1 to see d2 leave")
            d2.start()  # the same data-root: the same node comes back
            poll(lambda: n2 in etcd.nodes(), what="d2 back in the store")


def test_without_the_store_containers_go_on_and_global_operations_fail(
        etcd: Etcd, tmp_path: Path, veth_parent: str) -> None:
    parent = veth_parent
    with running_daemon(tmp_path / "d1", **_cluster(etcd, 2377)) as d:
        d.skiff("image", "bootstrap", "busybox")
        node = _info(d, "ID")
        poll(lambda: node in etcd.nodes(), what="the registration")
        box = unique("csbox")
        d.docker("run", "-d", "--name", box, "busybox", "sleep", "600", check=True)
        net1, net2 = unique("gn"), unique("gn")
        d.docker("network", "create", "-d", "testnet-global", "--subnet", "10.214.7.0/24",
                 "-o", f"parent={parent}", net1, check=True)
        assert _info(d, "ClusterStore") == etcd.store
        etcd.stop()
        started = time.monotonic()

        def refused() -> str:
            res = d.docker("network", "create", "-d", "testnet-global", "--subnet",
                           "10.214.8.0/24", "-o", f"parent={parent}", net2)
            return res.stderr.decode() if res.returncode != 0 else ""

        err = poll(refused, timeout=10, what="network create to be refused")
        assert etcd.store in err and "cluster store" in err, err
        assert net2 not in d.docker("network", "ls", check=True).stdout.decode()
        # the daemon and its containers go on while the store is away
        assert d.docker("exec", box, "echo", "alive", check=True).stdout == b"alive\n"
        d.docker("run", "--rm", "busybox", "true", check=True)  # local work is unaffected
        time.sleep(max(0.0, 5 - (time.monotonic() - started)))
        etcd.start()
        # back: registered again (its old lease ran out meanwhile) and creates work
        poll(lambda: node in etcd.nodes(), timeout=15, what="the registration to return")
        poll(lambda: d.docker("network", "create", "-d", "testnet-global", "--subnet",
                              "10.214.8.0/24", "-o", f"parent={parent}",
                              net2).returncode == 0,
             timeout=15, what="network create once the store is back")
        assert "cluster.store_unavailable" in d.logs()
        d.docker("rm", "-f", box, check=True)
        d.docker("network", "rm", net1, net2, check=True)


def test_global_networks_need_a_store(default_skiffd: Daemon) -> None:
    res = default_skiffd.docker("network", "create", "-d", "testnet-global", "--subnet",
                                "10.214.9.0/24", "-o", "parent=lo", unique("gn"))
    assert res.returncode != 0
    err = res.stderr.decode()
    assert "no cluster store" in err and "cluster-store" in err, err


@pytest.mark.parametrize(("config", "message"), [
    ({"cluster-store": "consul://127.0.0.1:8500", "cluster-advertise": "127.0.0.1:1"},
     "skiff's cluster store is etcd"),
    ({"cluster-store": "etcd://127.0.0.1:2379"}, "'cluster-advertise' is not"),
    ({"cluster-advertise": "127.0.0.1:1"}, "'cluster-store' is not"),
    ({"cluster-store": "etcd://127.0.0.1:2379", "cluster-advertise": "127.0.0.1:1",
      "cluster-store-opts": {"kv.path": "/x"}}, "not supported: kv.path"),
    ({"cluster-store": "etcd://127.0.0.1:2379", "cluster-advertise": "nosuchif0:2376"},
     "neither an IP address nor a network interface"),
])
def test_bad_cluster_settings_refuse_the_start(tmp_path: Path, config: dict[str, Any],
                                                message: str) -> None:
    d = Daemon(tmp_path, {**daemon_config(tmp_path), **config})
    with pytest.raises(RuntimeError) as refused:
        d.start()
    assert message in str(refused.value), str(refused.value)
    assert d.proc is not None and d.proc.returncode == 1


def _net_ids(d: Daemon) -> dict[str, str]:
    out = d.docker("network", "ls", "--no-trunc", "--format", "{{.Name}} {{.ID}} {{.Scope}}",
                   check=True).stdout.decode()
    return {name: f"{nid} {scope}" for name, nid, scope in
            (line.split() for line in out.splitlines())}


def test_a_global_network_is_on_every_node(etcd: Etcd, tmp_path: Path, veth_parent: str
                                           ) -> None:
    net, late = unique("gn"), unique("gn")
    with running_daemon(tmp_path / "d1", **_cluster(etcd, 2377)) as d1, \
            running_daemon(tmp_path / "d2", **_cluster(etcd, 2378)) as d2:
        for d in (d1, d2):
            d.skiff("image", "bootstrap", "busybox")
        poll(lambda: len(etcd.nodes()) == 2, what="both nodes registered")
        d1.docker("network", "create", "-d", "testnet-global", "--subnet", "10.214.20.0/24",
                  "-o", f"parent={veth_parent}", net, check=True)
        made = _net_ids(d1)[net]
        assert made.endswith(" global")
        poll(lambda: _net_ids(d2).get(net) == made, what="the network on the other node")
        # one name in the cluster: the store's transaction refuses the second
        res = d2.docker("network", "create", "-d", "testnet-global", "--subnet",
                        "10.214.21.0/24", "-o", f"parent={veth_parent}", net)
        assert res.returncode != 0 and "already exists" in res.stderr.decode()
        # a container on each node, on the one network: they talk across the "hosts"
        a, b = unique("ga"), unique("gb")
        d1.docker("run", "-d", "--name", a, "--network", net, "--ip", "10.214.20.10",
                  "busybox", "sleep", "600", check=True)
        d2.docker("run", "-d", "--name", b, "--network", net, "--ip", "10.214.20.11",
                  "busybox", "sleep", "600", check=True)
        d1.docker("exec", a, "ping", "-c", "1", "-W", "3", "10.214.20.11", check=True)
        # in use on d1: refused there, and still in the store
        assert d1.docker("network", "rm", net).returncode != 0
        assert net in _net_ids(d2)
        # a node that was away catches up at its registration
        d2.docker("rm", "-f", b, check=True)
        assert d2.stop() == 0
        d1.docker("network", "create", "-d", "testnet-global", "--subnet", "10.214.22.0/24",
                  "-o", f"parent={veth_parent}", late, check=True)
        d1.docker("rm", "-f", a, check=True)
        d1.docker("network", "rm", net, check=True)
        d2.start()
        poll(lambda: late in _net_ids(d2) and net not in _net_ids(d2),
             what="d2 to catch up with the store")
        # a removal reaches a running node through its watch
        d1.docker("network", "rm", late, check=True)
        poll(lambda: late not in _net_ids(d2), what="the removal on the other node")
        assert "network.global_withdrawn" in d2.logs()


def test_a_node_killed_and_started_again_revokes_its_former_lease(etcd: Etcd,
                                                                   tmp_path: Path) -> None:
    slow = {**_cluster(etcd, 2377), "cluster-store-opts": {"discovery.ttl": "60",
                                                           "discovery.heartbeat": "5"}}
    with running_daemon(tmp_path / "d1", **slow) as d:
        node = _info(d, "ID")
        _, former = poll(lambda: etcd.nodes().get(node), what="the registration")
        assert d.proc is not None
        os.killpg(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        d.start()  # well within the 60 s the former lease has left
        poll(lambda: (got := etcd.nodes().get(node)) is not None and got[1] != former,
             what="a registration under a new lease")
        # what the former life wrote under its lease went with it, not 60 s later
        left = etcd.call("kv/lease/timetolive", {"ID": str(former)})
        assert int(left.get("TTL", -1)) == -1, left
        assert "cluster.former_lease_revoked" in d.logs()
