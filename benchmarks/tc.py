"""Bandwidth limits with tc (skiffd only: dockerd has none, moby#26767).

An extra of ``python -m benchmarks engine`` (``engine_rows``; alone:
``--only tc``).  Rows: the throughput of a user bridge with no limit (two
busybox containers, ``cat /dev/zero | nc``: the bridge's own cost), the
rate measured under a limit of 1, 10 and 100 Mbit/s in each direction
(egress: the sender's IFB; ingress: the receiver's veth), and ``run --rm
true`` on the default bridge with and without a rate label in each
direction (what setting up tc costs a container start; target under 3 ms).

The receiver's ``eth0`` counter is read from the host (``/proc/<pid>/net/dev``:
frames as tc counts them) over a steady window.

``run --rm`` on a loaded two-core machine spreads over 100-400 ms, so a few
milliseconds of tc drown in it; the rows ``tc: shaper set-up`` time the
shaper's ``joined`` alone, on fresh veth pairs in the benchmark's namespace,
by each engine's own Python (so ``--baseline`` compares checkouts): what tc
adds to a container's start, without the noise of the rest.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import time
from typing import TYPE_CHECKING

from benchmarks.engines import Engine, Skiffd

if TYPE_CHECKING:
    from benchmarks.engine import Context
    from benchmarks.report import Row

IMAGE = "busybox:latest"
PORT = 5001
WINDOW = 3.0
RATES = (("1mbit", 1e6), ("10mbit", 10e6), ("100mbit", 100e6))
EGRESS, INGRESS = "skiff.net.egress-rate", "skiff.net.ingress-rate"
LABELS = ["--label", f"{EGRESS}=10mbit", "--label", f"{INGRESS}=10mbit"]


def _rx_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f.read().splitlines()[2:]:
            name, _, rest = line.partition(":")
            if name.strip() == "eth0":
                return int(rest.split()[0])
    return 0


def _pair(e: Engine, net: str, rcv_args: list[str], snd_args: list[str],
          window: float) -> float:
    """Bits per second from a sender to a receiver on ``net``, over ``window``."""
    rcv, snd = f"tcb-r-{secrets.token_hex(3)}", f"tcb-s-{secrets.token_hex(3)}"
    try:
        e.docker("run", "-d", "--name", rcv, "--network", net, *rcv_args, IMAGE, "sh", "-c",
                 f"sleep 100000 | nc -l -p {PORT} > /dev/null")
        e.docker("run", "-d", "--name", snd, "--network", net, *snd_args, IMAGE, "sh", "-c",
                 f"until cat /dev/zero | nc {rcv} {PORT}; do sleep 0.1; done")
        pid = json.loads(e.docker("inspect", rcv).stdout)[0]["State"]["Pid"]
        deadline = time.monotonic() + 20
        while _rx_bytes(pid) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # past slow start and the bucket's first burst
        b0, t0 = _rx_bytes(pid), time.monotonic()
        time.sleep(window)
        return (_rx_bytes(pid) - b0) * 8 / (time.monotonic() - t0)
    finally:
        e.docker("rm", "-f", rcv, snd, check=False)


#: run by each engine's Python: the median of ``joined`` per case, in ms, as JSON
_SHAPER_COST = r"""
import json, secrets, socket, statistics, sys, time
from pyroute2 import IPRoute
from skiff.core.hookspecs import ShapedEndpoint, TrafficShaperContext
from skiff.plugins.limits import tc
E, I = "skiff.net.egress-rate", "skiff.net.ingress-rate"
shaper = tc.TcShaper(TrafficShaperContext(exec_root="/nonexistent"))
cases = {"egress+ingress": {E: "10mbit", I: "10mbit"}, "ingress": {I: "10mbit"}}
got = {k: [] for k in cases}
with IPRoute() as ipr:
    for _ in range(int(sys.argv[1])):
        for label, rates in cases.items():
            veth = "skfv" + secrets.token_hex(4)
            ipr.link("add", ifname=veth, kind="veth", peer="skfp" + veth[4:])
            t = time.perf_counter()
            shaper.joined(ShapedEndpoint("c" * 64, "n" * 64, "net", "e" * 64, veth,
                                         rates=rates))
            got[label].append((time.perf_counter() - t) * 1e3)
            ipr.link("del", index=socket.if_nametoindex(veth))
            for index in ipr.link_lookup(ifname=tc.ifb_name(veth)):
                ipr.link("del", index=index)
print(json.dumps({k: statistics.median(v) for k, v in got.items()}))
"""


def _shaper_rows(e: Skiffd, runs: int) -> list[Row]:
    res = subprocess.run([e.python, "-c", _SHAPER_COST, str(runs)], capture_output=True,
                         text=True, timeout=300, check=True)
    medians = json.loads(res.stdout.strip().splitlines()[-1])
    return [{"metric": f"tc: shaper set-up, {label} (joined alone; median of {runs})",
             "engine": e.name, "value": ms, "unit": "ms"} for label, ms in medians.items()]


def _rows(e: Engine, runs: int, window: float) -> list[Row]:
    rows: list[Row] = []
    net = f"tcbench-{secrets.token_hex(3)}"
    e.docker("network", "create", net)
    try:
        free = _pair(e, net, [], [], window)
        rows.append({"metric": "tc: throughput on a user bridge, no limit",
                     "engine": e.name, "value": free / 1e6, "unit": "Mbit/s"})
        for text, bits in RATES:
            for direction, rcv_args, snd_args in (
                    ("egress", [], ["--label", f"{EGRESS}={text}"]),
                    ("ingress", ["--label", f"{INGRESS}={text}"], [])):
                got = _pair(e, net, rcv_args, snd_args, window)
                rows.append({"metric": f"tc: {direction} {text}, measured",
                             "engine": e.name, "value": got / 1e6, "unit": "Mbit/s"})
                rows.append({"metric": f"tc: {direction} {text}, measured / limit",
                             "engine": e.name, "value": 100 * got / bits, "unit": "%"})
    finally:
        e.docker("network", "rm", net, check=False)
    cases = (("no rate", []), ("egress+ingress rate labels", LABELS),
             ("ingress rate label", LABELS[2:]))
    samples: dict[str, list[float]] = {label: [] for label, _ in cases}
    for _ in range(runs):
        for label, args in cases:
            samples[label].append(e.timed("run", "--rm", *args, IMAGE, "true"))
    for label, s in samples.items():
        rows.append({"metric": f"tc: run --rm true, bridge, {label}: median",
                     "engine": e.name, "value": statistics.median(s), "unit": "s",
                     "samples": [round(x, 6) for x in s]})
    base = statistics.median(samples["no rate"])
    for label, _ in cases[1:]:
        rows.append({"metric": f"tc: set-up cost, {label} (target < 3 ms)",
                     "engine": e.name, "value": (statistics.median(samples[label]) - base) * 1e3,
                     "unit": "ms"})
    return rows


def engine_rows(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    runs = max(5, ctx.plan.runs)
    window = 0.5 if ctx.mode == "smoke" else WINDOW  # smoke: the rows' structure only
    for e in ctx.engines:
        if not isinstance(e, Skiffd):
            continue  # dockerd has no bandwidth limits to measure
        rows.extend(_rows(e, runs, window))
        rows.extend(_shaper_rows(e, max(30, runs)))
    return rows
