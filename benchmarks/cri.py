"""``critest -benchmark`` against skiffd's CRI and Debian's containerd 1.6, side
by side on this machine (docs/benchmarks.md, docs/cri.md).

An extra of ``python -m benchmarks engine`` (``--only cri``; with
``--baseline`` the other checkout's skiffd is measured too), or alone:
``python -m benchmarks.cri [--baseline PYTHON] [--rounds N] [--smoke]`` (as
root; it enters a network and mount namespace of its own, as the harness
does).  Both runtimes run private:
their own folders, sockets and cgroups, inside the harness's namespaces;
containerd with its CRI plugin, its network namespaces under its state
folder, CNI's bridge and host-local (IPAM state in its folder too), and every
image, the pause included, from a local registry (per-registry mirrors), as
skiffd gets them (``registry-domain-mirrors``).  Both are stopped at the end,
whatever happened: nothing is left running.

The numbers: critest's own (20 pods and 20 containers two at a time, 10
pulls, image listing); per operation the median in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.engines import Engine, EngineError, Skiffd, _cleanup_cgroups, _unmount_under

TOOLS = Path(os.environ.get("SKIFF_CRI_TOOLS", "/work/shared/tools/cri"))
CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"
CNI_BIN = "/usr/lib/cni"
#: critest -benchmark's sizes (tests/e2e/test_cri_critest.py runs the same)
PARAMS = {
    "full": dict(containersNumber=20, containersNumberParallel=2, podsNumber=20,
                 podsNumberParallel=2, imagesNumber=10),
    "quick": dict(containersNumber=20, containersNumberParallel=2, podsNumber=20,
                  podsNumberParallel=2, imagesNumber=10),
    "smoke": dict(containersNumber=2, containersNumberParallel=1, podsNumber=2,
                  podsNumberParallel=1, imagesNumber=2),
}
#: the default container image of critest, pulled through the mirrors
TEST_IMAGE = "e2e-test-images/busybox:1.29-2"
PAUSE = "bench/pause:1"

Row = dict[str, Any]
Log = Callable[[str], None]


class Containerd(Engine):
    """Debian's containerd with its CRI plugin, everything under ``base``."""

    def __init__(self, base: Path, registry: str) -> None:
        super().__init__("containerd", base)
        self.registry = registry

    @staticmethod
    def available() -> bool:
        return os.path.exists(CONTAINERD) and os.path.isdir(CNI_BIN)

    @property
    def socket(self) -> str:
        return str(self.base / "containerd.sock")

    def command(self) -> list[str]:
        b, reg = self.base, self.registry
        (b / "cni").mkdir(parents=True, exist_ok=True)
        (b / "cni" / "10-bench.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "bench", "plugins": [{
                "type": "bridge", "bridge": "cribench0", "isGateway": True,
                "ipMasq": False, "ipam": {"type": "host-local", "dataDir": str(b / "ipam"),
                                          "ranges": [[{"subnet": "10.231.0.0/16"}]]}}]}))
        mirrors = "".join(
            f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{host}"]\n'
            f'  endpoint = ["http://{reg}"]\n' for host in (reg, "registry.k8s.io"))
        (b / "config.toml").write_text(f"""version = 2
root = "{b}/root"
state = "{b}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{reg}/{PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # this machine refuses to lower oom_score_adj (the pause's -998): no lower than
  # containerd's own, as for a containerd in a user namespace
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{b}/cni"
{mirrors}""")
        return [CONTAINERD, "--config", str(b / "config.toml"), "--log-level", "warn"]

    def start(self, timeout: float = 60) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=self.base)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"containerd exited with {self.proc.returncode}:\n"
                                  f"{self.logs()}")
            if os.path.exists(self.socket):
                return
            time.sleep(0.05)
        raise EngineError(f"containerd did not listen within {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 60) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        # its shims name its socket (under base) on their command line
        for _ in range(50):
            left = [p.pid for p in self.processes()]
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        _unmount_under(self.base)
        # runc's groups: critest gives containerd 1.6 (no RuntimeConfig RPC) the
        # slice /test.slice, which runc's cgroupfs driver takes as a path
        for name in ("test.slice:cri-containerd", "test.slice", "k8s.io"):
            _cleanup_cgroups(name)
        subprocess.run(["ip", "link", "del", "cribench0"], capture_output=True)


def unpack_tools(dest: Path) -> Path:
    subprocess.run(["sh", str(TOOLS / "install.sh"), str(dest)], check=True,
                   capture_output=True)
    return dest


def fill_registry(skiffd: Engine, registry: str, scratch: Path) -> list[str]:
    """The images both runtimes use, built by skiffd from busybox and pushed:
    the listing benchmark's three (the first also the pull benchmark's), critest's
    container image, and containerd's pause."""
    ctx = scratch / "ctx"
    ctx.mkdir()
    listing = [f"{registry}/bench/busybox:{tag}" for tag in ("1", "1-glibc", "1-musl")]
    images = [*((name, f"LABEL bench={i}\n") for i, name in enumerate(listing)),
              (f"{registry}/{TEST_IMAGE}", ""),
              (f"{registry}/{PAUSE}", 'CMD ["sleep", "2147483647"]\n')]
    for name, extra in images:
        (ctx / "Dockerfile").write_text(f"FROM busybox:latest\n{extra}")
        skiffd.docker("build", "-q", "-t", name, str(ctx), timeout=120)
        skiffd.docker("push", name, timeout=120)
        skiffd.docker("rmi", name)
    return listing


def critest_benchmark(tools: Path, endpoint: str, listing: list[str], mode: str,
                      scratch: Path) -> dict[str, list[float]]:
    """critest -benchmark against ``endpoint``: operation -> seconds per sample."""
    p = PARAMS[mode]
    params = scratch / "params.yaml"
    params.write_text("".join(f"{k}: {v}\n" for k, v in p.items()) + (
        "containerBenchmarkTimeoutSeconds: 60\npodBenchmarkTimeoutSeconds: 60\n"
        "imagesNumberParallel: 1\nimageBenchmarkTimeoutSeconds: 60\n"
        f"imagePullingBenchmarkImage: {listing[0]}\n"
        f"imageListingBenchmarkImages: [{', '.join(listing)}]\n"))
    out = scratch / "results"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    res = subprocess.run(
        [str(tools / "critest"), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
         "-benchmark", "-benchmarking-params-file", str(params),
         "-benchmarking-output-dir", str(out), "-ginkgo.no-color"],
        capture_output=True, text=True, timeout=900, cwd=scratch)
    if res.returncode != 0:
        raise EngineError(f"critest -benchmark against {endpoint} failed:\n"
                          f"{(res.stdout + res.stderr)[-4000:]}")
    took: dict[str, list[float]] = {}
    for f in sorted(out.glob("*.json")):
        data = json.loads(f.read_text())
        for i, op in enumerate(data["operationsNames"]):
            took.setdefault(op, []).extend(
                int(pt["operationsDurationsNs"][i]) / 1e9 for pt in data["datapoints"])
    return took


def measure(mode: str, scratch: Path, log: Log, baseline: str | None = None,
            rounds: int = 1) -> list[Row]:
    """critest -benchmark against each runtime in turn, ``rounds`` times
    (A B C, B C A, C A B ...: a load that comes and goes, and the first place
    of a round, weigh on each alike); the median of every sample of an
    operation.  ``baseline``: the Python of
    another skiff checkout, a second skiffd (column ``baseline``)."""
    from tests.registry import REGISTRY, running_registry

    if not (TOOLS / "critest.xz").exists() or not os.path.exists(REGISTRY):
        log(f"  no critest under {TOOLS} (SKIFF_CRI_TOOLS) or no docker-registry: "
            "the CRI benchmark is skipped")
        return []
    tools = unpack_tools(scratch / "tools")
    rows: list[Row] = []
    with running_registry(scratch / "registry") as reg:
        skiffd = Skiffd(scratch / "skiffd", config={
            "cri": str(scratch / "skiffd" / "cri.sock"),
            "registry-domain-mirrors": {"registry.k8s.io": [f"http://{reg.host}"]}})
        runtimes: list[tuple[Engine, str]] = [(skiffd, "unix://" + str(skiffd.config["cri"]))]
        if baseline:
            # its own bridge and subnet: two daemons on one bridge would clash
            base = Skiffd(scratch / "baseline", name="baseline", python=baseline, config={
                **skiffd.config, "cri": str(scratch / "baseline" / "cri.sock"),
                "bridge": "skiffbase0", "bip": "172.31.254.1/24"})
            runtimes.append((base, "unix://" + str(base.config["cri"])))
        containerd = Containerd(scratch / "containerd", reg.host)
        if Containerd.available():
            runtimes.append((containerd, "unix://" + containerd.socket))
        else:
            log("  containerd or the CNI plugins are not installed: skiffd only "
                "(apt-get install containerd containernetworking-plugins)")
        try:
            skiffd.start()
            skiffd.bootstrap_busybox()
            listing = fill_registry(skiffd, reg.host, scratch)
            took: dict[str, dict[str, list[float]]] = {}
            for i in range(rounds):
                # each round starts with the next runtime: the first of a round runs
                # slower (what the previous one left settling), so each takes its turn
                shift = i % len(runtimes)
                for engine, endpoint in runtimes[shift:] + runtimes[:shift]:
                    if engine is not skiffd:
                        engine.start()
                    log(f"  critest -benchmark against {engine.name} ({i + 1}/{rounds})")
                    try:
                        for op, samples in critest_benchmark(tools, endpoint, listing, mode,
                                                             scratch).items():
                            took.setdefault(engine.name, {}).setdefault(op, []).extend(samples)
                    except EngineError as exc:
                        # critest itself trips now and then on a loaded machine (ginkgo's
                        # "By outside of a running spec"): one round lost, not the run
                        if rounds == 1:
                            raise
                        log(f"  round {i + 1} against {engine.name} failed, left out: "
                            f"{str(exc)[-300:]}")
                    if engine is not skiffd:
                        engine.stop()
            for name, ops in took.items():
                for op, samples in ops.items():
                    samples.sort()
                    rows.append({"metric": f"CRI {op} (median)", "engine": name,
                                 "value": samples[len(samples) // 2], "unit": "s",
                                 "samples": len(samples)})
        finally:
            for engine, _ in runtimes:
                with contextlib.suppress(Exception):
                    engine.stop()
    return rows


def engine_rows(ctx: Any) -> list[Row]:
    """Extra rows for ``python -m benchmarks engine`` (``--only cri``)."""
    # the run's --baseline skiffd, if any, gets its critest run too
    baseline = next((e.python for e in ctx.engines
                     if isinstance(e, Skiffd) and e.name == "baseline"), None)
    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-cri-"))
    try:
        return measure(ctx.mode, scratch, ctx.log, baseline)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cri", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny counts: checks the harness works, measures nothing")
    p.add_argument("--baseline", metavar="PYTHON",
                   help="also run the skiffd of another checkout, by its venv's python "
                        "(engine 'baseline'): a change before and after, in one run")
    p.add_argument("--rounds", type=int, default=1,
                   help="critest runs per runtime, interleaved (default 1)")
    args = p.parse_args()
    if os.environ.get("SKIFF_BENCH_IN_NS") != "1":
        os.environ["SKIFF_BENCH_IN_NS"] = "1"
        os.execvp("unshare", ["unshare", "--net", "--mount", "--propagation", "private", "--",
                              sys.executable, "-m", "benchmarks.cri", *sys.argv[1:]])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    scratch = Path(tempfile.mkdtemp(prefix="skiff-bench-cri-"))
    try:
        rows = measure("smoke" if args.smoke else "full", scratch, print, args.baseline,
                       max(args.rounds, 1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
