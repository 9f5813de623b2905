"""A multi-host rig on one machine: N skiffd "hosts", each in a network namespace
of its own on a shared underlay bridge, and etcd on the underlay.

The underlay is a bridge in the test's own namespace (the suite runs under
``unshare --net``) with 10.<a>.<b>.1/24; host ``i`` is a namespace held by
a ``sleep`` (no ``ip netns`` mount) with ``eth0`` = 10.<a>.<b>.(10+i), joined
to the bridge by a veth. etcd listens on the bridge's address. Each host's skiffd is started
under ``nsenter --net`` (only the network namespace changes: mounts, cgroups
and the docker CLI's unix socket are shared as for any test daemon), with its
own data-root, exec-root, socket, cgroup parent and default bridge, and
``cluster-store`` pointing at etcd, ``cluster-advertise`` at its ``eth0``.

``Rig`` tears everything down in reverse: daemons, namespaces, the bridge,
etcd. Used by tests/e2e/test_overlay.py.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.daemon import Daemon, daemon_config, poll

ETCD = shutil.which("etcd")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Host:
    name: str  #: a name for messages
    address: str  #: its underlay address
    daemon: Daemon

    def docker(self, *args: str, check: bool = True, timeout: float = 60
               ) -> subprocess.CompletedProcess[bytes]:
        return self.daemon.docker(*args, check=check, timeout=timeout)

    def out(self, *args: str) -> str:
        return self.docker(*args).stdout.decode().strip()


@dataclass
class Rig:
    base: Path
    hosts: list[Host] = field(default_factory=list)
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    etcd_proc: subprocess.Popen[bytes] | None = None
    etcd_port: int = 0
    _stack: ExitStack = field(default_factory=ExitStack)

    def __post_init__(self) -> None:
        # 10.200-229: overlay subnets in tests and benchmarks are 10.230 and up
        self.net = f"10.{200 + secrets.randbelow(30)}.{secrets.randbelow(250)}"
        self.bridge = f"ul{self.tag}"

    @property
    def store(self) -> str:
        return f"etcd://{self.net}.1:{self.etcd_port}"

    def __enter__(self) -> Rig:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._stack.callback(_ip, "link", "del", self.bridge)
            _ip("addr", "add", f"{self.net}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            # a real underlay forwards as a switch does; here frames crossing the bridge
            # meet this namespace's FORWARD chain (br_netfilter), whose policy a skiffd of
            # the suite in this namespace sets to DROP
            rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
            self._stack.callback(subprocess.run, ["iptables", "-D", *rule],
                                 capture_output=True)
            self.start_etcd()
            self._stack.callback(self.stop_etcd)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # -- etcd --------------------------------------------------------------------

    def start_etcd(self) -> None:
        assert ETCD is not None, "etcd is not installed (Debian's etcd-server)"
        host = f"{self.net}.1"
        if not self.etcd_port:
            self.etcd_port = _free_port(host)
            self.peer_port = _free_port(host)
        url, peer = f"http://{host}:{self.etcd_port}", f"http://{host}:{self.peer_port}"
        log = open(self.base / "etcd.log", "ab")  # noqa: SIM115 - the process holds it
        self.etcd_proc = subprocess.Popen(
            [ETCD, "--name", "rig", "--data-dir", str(self.base / "etcd"),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"rig={peer}"], stdout=log, stderr=log)
        log.close()
        poll(self._etcd_answers, timeout=20, what="etcd to answer")

    def stop_etcd(self) -> None:
        if self.etcd_proc is not None:
            self.etcd_proc.send_signal(signal.SIGTERM)
            self.etcd_proc.wait(20)
            self.etcd_proc = None

    def _etcd_answers(self) -> bool:
        try:
            self.etcd("kv/range", {"key": base64.b64encode(b"/").decode()})
            return True
        except OSError:
            return False

    def etcd(self, rpc: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"http://{self.net}.1:{self.etcd_port}/v3/{rpc}",
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as reply:
            data: dict[str, Any] = json.load(reply)
            return data

    def keys(self, prefix: str) -> dict[str, bytes]:
        raw = prefix.encode()
        end = raw[:-1] + bytes([raw[-1] + 1])
        reply = self.etcd("kv/range", {"key": base64.b64encode(raw).decode(),
                                       "range_end": base64.b64encode(end).decode()})
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
                for kv in reply.get("kvs", [])}

    # -- hosts -------------------------------------------------------------------

    def add_host(self, **config: Any) -> Host:
        i = len(self.hosts) + 1
        name = f"skh{self.tag}{i}"
        address = f"{self.net}.{10 + i}"
        # held by a process, not `ip netns add`: no mount on the host to clean up
        holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        self._stack.callback(holder.wait)
        self._stack.callback(holder.kill)
        ns = f"/proc/{holder.pid}/ns/net"
        poll(lambda: os.readlink(ns) != os.readlink("/proc/self/ns/net"),
             timeout=5, what="the host's namespace")
        outside, inside = f"uv{self.tag}{i}", f"uvp{self.tag}{i}"
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self._stack.callback(subprocess.run, ["ip", "link", "del", outside],
                             capture_output=True)
        _ip("link", "set", outside, "master", self.bridge, "up")
        _ip("link", "set", inside, "netns", str(holder.pid))
        for args in (("link", "set", inside, "name", "eth0"),
                     ("addr", "add", f"{address}/24", "dev", "eth0"),
                     ("link", "set", "eth0", "up"), ("link", "set", "lo", "up")):
            subprocess.run(["nsenter", f"--net={ns}", "ip", *args], check=True,
                           capture_output=True)
        base = self.base / f"host{i}"
        base.mkdir(parents=True, exist_ok=True)
        cfg = daemon_config(base, **{"cluster-store": self.store,
                                     "cluster-advertise": f"eth0:{2376}",
                                     "cluster-store-opts": {"discovery.ttl": "4",
                                                            "discovery.heartbeat": "1"},
                                     **config})
        daemon = Daemon(base, cfg, wrap=["nsenter", f"--net={ns}"])
        host = Host(name, address, daemon)
        self.hosts.append(host)
        daemon.start()
        self._stack.callback(self._stop_host, host)
        return host

    @staticmethod
    def _stop_host(host: Host) -> None:
        d = host.daemon
        if d.proc is None:
            # killed by the test and not started again: its containers outlive it
            # (their monitors hold them); a start ends them (pid proved), then rm
            d.start()
        ids = d.docker("ps", "-aq", timeout=30).stdout.decode().split()
        if ids:
            d.docker("rm", "-f", *ids, timeout=60)
        rc = d.stop()
        assert rc == 0, f"skiffd of {host.name} exited with {rc}:\n{d.logs()}"
