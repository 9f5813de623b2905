"""Two containers on one host (a user bridge) and on two hosts (the overlay).

An extra of ``python -m benchmarks engine`` (``engine_rows``; alone:
``--only overlay``), skiffd only: dockerd 20.10's overlay needs its own
cluster set-up and is deprecated there. Two skiffd "hosts" in network
namespaces on an underlay bridge, etcd on it (tests/multihost.py, the rig the
overlay's tests use). Rows, each for the bridge on host 1 and for the
overlay between hosts 1 and 2:

- round-trip latency: busybox ``ping`` from one container to the other,
  the median of the per-packet times;
- throughput: ``cat /dev/zero | nc`` for a fixed window, the receiver's
  ``eth0`` counter read from the host (as benchmarks/tc.py);
- overlay only: the time from ``docker run -d`` on host 2 until a container
  on host 1 gets an answer from it (the endpoint published in the store,
  followed by host 1, its VXLAN entry written).

Both hosts share this machine's two cores: the overlay's numbers are the
cost of VXLAN encapsulation on a veth underlay, not of a real network.
"""

from __future__ import annotations

import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.tc import PORT, _rx_bytes

if TYPE_CHECKING:
    from benchmarks.engine import Context
    from benchmarks.report import Row
    from tests.multihost import Host

IMAGE = "busybox:latest"


def _ip(host: Host, container: str, net: str) -> str:
    return host.out("inspect", "--format",
                    f"{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}", container)


def _ping_ms(src: Host, container: str, target: str, count: int) -> float:
    res = src.docker("exec", container, "ping", "-c", str(count), "-i", "0.05", target)
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", res.stdout.decode())]
    return statistics.median(times)


def _throughput(rcv_host: Host, snd_host: Host, net: str, window: float) -> float:
    import json

    rcv, snd = f"ovb-r-{secrets.token_hex(3)}", f"ovb-s-{secrets.token_hex(3)}"
    try:
        rcv_host.docker("run", "-d", "--name", rcv, "--network", net, IMAGE, "sh", "-c",
                        f"sleep 100000 | nc -l -p {PORT} > /dev/null")
        ip = _ip(rcv_host, rcv, net)
        snd_host.docker("run", "-d", "--name", snd, "--network", net, IMAGE, "sh", "-c",
                        f"until cat /dev/zero | nc {ip} {PORT}; do sleep 0.1; done")
        pid = json.loads(rcv_host.out("inspect", rcv))[0]["State"]["Pid"]
        deadline = time.monotonic() + 20
        while _rx_bytes(pid) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        b0, t0 = _rx_bytes(pid), time.monotonic()
        time.sleep(window)
        return (_rx_bytes(pid) - b0) * 8 / (time.monotonic() - t0)
    finally:
        rcv_host.docker("rm", "-f", rcv, check=False)
        snd_host.docker("rm", "-f", snd, check=False)


def engine_rows(ctx: Context) -> list[Row]:
    if not any(e.name == "skiffd" for e in ctx.engines) or shutil.which("etcd") is None:
        ctx.log("  overlay: needs skiffd and etcd (Debian's etcd-server); skipped")
        return []
    from tests.multihost import Rig

    smoke = ctx.mode == "smoke"
    pings, window, reach_rounds = (3, 0.5, 1) if smoke else (50, 3.0, 10)
    rows: list[Row] = []

    def add(metric: str, value: float, unit: str) -> None:
        rows.append({"metric": f"overlay: {metric}", "engine": "skiffd", "value": value,
                     "unit": unit})

    base = Path(tempfile.mkdtemp(prefix="skiff-bench-overlay-"))
    try:
        with Rig(base) as rig:
            h1, h2 = rig.add_host(), rig.add_host()
            for h in (h1, h2):
                h.daemon.skiff("image", "bootstrap", "busybox")
            bridge, overlay = f"ovb-br-{rig.tag}", f"ovb-ov-{rig.tag}"
            h1.docker("network", "create", bridge)
            h1.docker("network", "create", "-d", "overlay", "--subnet", "10.239.0.0/16",
                      overlay)
            deadline = time.monotonic() + 20
            while overlay not in h2.out("network", "ls") and time.monotonic() < deadline:
                time.sleep(0.1)
            a, b, c = (f"ovb-{x}-{rig.tag}" for x in "abc")
            h1.docker("run", "-d", "--name", a, "--network", overlay, IMAGE, "sleep", "100000")
            h1.docker("network", "connect", bridge, a)
            h1.docker("run", "-d", "--name", b, "--network", bridge, IMAGE, "sleep", "100000")
            h2.docker("run", "-d", "--name", c, "--network", overlay, IMAGE, "sleep", "100000")
            ip_b, ip_c = _ip(h1, b, bridge), _ip(h2, c, overlay)
            for ip in (ip_b, ip_c):  # c's endpoint reaches host 1 through the store first
                h1.docker("exec", a, "sh", "-c",
                          f"until ping -c 1 -W 1 {ip} >/dev/null; do :; done", timeout=60)
            add("bridge, one host: ping round trip, median", _ping_ms(h1, a, ip_b, pings), "ms")
            add("overlay, two hosts: ping round trip, median", _ping_ms(h1, a, ip_c, pings),
                "ms")
            add("bridge, one host: throughput", _throughput(h1, h1, bridge, window) / 1e6,
                "Mbit/s")
            add("overlay, two hosts: throughput", _throughput(h1, h2, overlay, window) / 1e6,
                "Mbit/s")
            reach = []
            for i in range(reach_rounds):
                name = f"ovb-t{i}-{rig.tag}"
                t0 = time.perf_counter()
                h2.docker("run", "-d", "--name", name, "--network", overlay, IMAGE,
                          "sleep", "100000")
                ip = _ip(h2, name, overlay)
                h1.docker("exec", a, "sh", "-c",
                          f"until ping -c 1 -W 1 {ip} >/dev/null; do :; done", timeout=60)
                reach.append(time.perf_counter() - t0)
                h2.docker("rm", "-f", name)
            add("docker run on host 2 until host 1 gets an answer, median",
                statistics.median(reach), "s")
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return rows
