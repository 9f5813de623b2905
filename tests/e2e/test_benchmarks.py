"""The benchmark harness end to end, tiny and skiffd only: it asserts structure, not speed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks.engine import summarize_profile

ROOT = Path(__file__).resolve().parents[2]
DOCKER = Path("/usr/local/bin/docker")


def smoke(tmp_path: Path, only: str, timeout: int
          ) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """``benchmarks engine --smoke --no-docker --only ONLY``: its output and its rows."""
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks", "engine", "--smoke", "--no-docker",
         "--only", only, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res, json.loads((out / "engine.json").read_text())["rows"]


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
def test_engine_smoke_writes_table_json_and_chart(tmp_path: Path) -> None:
    res, rows = smoke(tmp_path, "api,run,lifecycle,memory", timeout=180)
    out = tmp_path / "out"
    data = json.loads((out / "engine.json").read_text())
    assert data["meta"]["mode"] == "smoke"
    assert data["meta"]["cpus"] >= 1
    assert all({"metric", "engine", "value", "unit"} <= row.keys() for row in rows)
    by = {(r["metric"], r["engine"]): r for r in rows}
    median = by[("run --rm true: median", "skiffd")]
    assert median["unit"] == "s" and len(median["samples"]) == 3
    assert min(median["samples"]) > 0
    assert ("run --rm true: median", "kernel") in by
    assert by[("lifecycle: create+start+wait+rm x3", "skiffd")]["unit"] == "containers/s"
    assert by[("lifecycle (API): create+start+wait+rm x3", "skiffd")]["value"] > 0
    assert by[("idle: engine RSS, 0 containers", "skiffd")]["value"] > 0
    assert ("idle: RSS per container (2)", "skiffd") in by
    assert not any(r["engine"] == "dockerd" for r in rows)
    table = (out / "engine.md").read_text()
    assert table.startswith("| metric | skiffd |") and "run --rm true: median" in table
    assert "run --rm true: median" in res.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "engine.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_ratio_and_units() -> None:
    rows = [
        {"metric": "run", "engine": "skiffd", "value": 0.1, "unit": "s"},
        {"metric": "run", "engine": "dockerd", "value": 0.4, "unit": "s"},
        {"metric": "run", "engine": "kernel", "value": 0.002, "unit": "s"},
        {"metric": "rate", "engine": "dockerd", "value": 2.0, "unit": "containers/s"},
    ]
    text = report.table(rows, "engine", ["skiffd", "dockerd", "kernel"], ("skiffd", "dockerd"))
    lines = text.splitlines()
    assert lines[0] == "| metric | skiffd | dockerd | kernel | ratio skiffd/dockerd |"
    assert lines[2] == "| run | 100.0 ms | 400.0 ms | 2.0 ms | 0.25 |"
    assert lines[3] == "| rate | - | 2.00 containers/s | - | - |"
    assert report.higher_is_better("containers/s") and not report.higher_is_better("MB")


def test_profile_summary_counts_frames(tmp_path: Path) -> None:
    raw = tmp_path / "p.folded"
    raw.write_text("process 1:\"x\";main (core/a.py:1);slow (core/a.py:9) 30\n"
                   "process 1:\"x\";main (core/a.py:1);fast (json/b.py:5) 10\n"
                   "process 1:\"x\";run (trio/_core/_io_epoll.py:1);"
                   "EpollIOManager.get_events (trio/_core/_io_epoll.py:243) 99\n")
    text = summarize_profile(raw)
    assert text.startswith("40 busy samples")
    assert "100.0%  main (core/a.py:1)" in text and "75.0%  slow (core/a.py:9)" in text
    assert "25.0%  fast (json/b.py:5)" in text  # a leaf outside skiff still counts as self


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
def test_userns_workload_rows(tmp_path: Path) -> None:
    """The userns workload (issue 14): its three daemons' rows, structure only."""
    _, rows = smoke(tmp_path, "userns", timeout=600)
    by = {(r["metric"], r["engine"]): r for r in rows}
    for engine in ("skiffd", "skiffd userns (idmap)", "skiffd userns (chown)"):
        assert by[("userns: run --rm true, 10 layers: median", engine)]["value"] > 0
    slow = by[("userns: create --userns=auto, 10 layers: slowdown vs no remapping",
               "skiffd userns (chown)")]
    assert slow["unit"] == "x" and slow["value"] > 1


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
def test_build_workload_rows(tmp_path: Path) -> None:
    """The build workload (issue 16): its rows, structure only."""
    res, rows = smoke(tmp_path, "build", timeout=600)
    by = {(r["metric"], r["engine"]): r for r in rows}
    for metric in ("build_cold: FROM + 3 steps, --no-cache",
                   "build_warm: FROM + 3 steps, all cached",
                   "build_parallel: 2 independent stages + final, --no-cache",
                   "build_ctx_rehash: warm build, 50-file context"):
        row = by.get((f"{metric}: median", "skiffd"))
        assert row is not None, (metric, res.stdout[-3000:])
        assert row["unit"] == "s" and row["value"] > 0 and len(row["samples"]) == 1


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
def test_scale_rows(tmp_path: Path) -> None:
    """The scale extra (issue 22): its rows, structure only."""
    _, rows = smoke(tmp_path, "scale", timeout=600)
    by = {(r["metric"], r["engine"]): r for r in rows}
    for metric, unit in (("scale: run --rm true with 0 idle running, median", "s"),
                         ("scale: run --rm true with 2 idle running, median", "s"),
                         ("scale: engine PSS with 2 idle", "MB"),
                         ("scale: docker ps -a with 3 containers, median", "s"),
                         ("scale: GET /containers/json?all=1 with 3, median", "s"),
                         ("scale: create x3 (API, one connection)", "s"),
                         ("scale: rm x3 (API, one connection)", "s")):
        row = by.get((metric, "skiffd"))
        assert row is not None, (metric, sorted(by))
        assert row["unit"] == unit and row["value"] > 0


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
def test_budget_rows(tmp_path: Path) -> None:
    """The start path's budget (issue 22): spans from the daemon, the shim and the
    init land under the client's phases; structure only."""
    _, rows = smoke(tmp_path, "budget", timeout=300)
    by = {r["metric"]: r for r in rows}
    for metric in ("budget: API create: create: init + rw layers",
                   "budget: API start: start: runtime.prepare (fork server, shim, init "
                   "builds the rootfs)",
                   "budget: API start:   init: rootfs mounts, /proc, /sys, /dev",
                   "budget: API start: start: go until exec (rlimits, seccomp, caps, execve)",
                   "budget: API exit+rm: rm: init + rw layers removed",
                   "budget: CLI run --rm: (CLI: exec until its first request)"):
        row = by.get(metric)
        assert row is not None, (metric, sorted(by))
        assert row["unit"] == "s" and row["value"] > 0 and row["count"] == 3
    table = (tmp_path / "out" / "budget.md").read_text()
    assert table.startswith("| phase | span | at (ms) | ms (median) | where |")


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
def test_tc_workload_rows(tmp_path: Path) -> None:
    """The tc extra (issue 20): its rows, structure only."""
    _, rows = smoke(tmp_path, "tc", timeout=600)
    by = {(r["metric"], r["engine"]): r for r in rows}
    assert by[("tc: throughput on a user bridge, no limit", "skiffd")]["value"] > 10
    for direction in ("egress", "ingress"):
        for rate in ("1mbit", "10mbit", "100mbit"):
            row = by[(f"tc: {direction} {rate}, measured / limit", "skiffd")]
            assert row["unit"] == "%" and row["value"] > 0
    cost = by[("tc: set-up cost, egress+ingress rate labels (target < 3 ms)", "skiffd")]
    assert cost["unit"] == "ms"


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed")
def test_overlay_workload_rows(tmp_path: Path) -> None:
    """The overlay extra (issue 19): its rows, structure only."""
    _, rows = smoke(tmp_path, "overlay", timeout=600)
    by = {r["metric"]: r for r in rows}
    for kind in ("bridge, one host", "overlay, two hosts"):
        assert by[f"overlay: {kind}: ping round trip, median"]["value"] > 0
        assert by[f"overlay: {kind}: throughput"]["value"] > 1
    assert by["overlay: docker run on host 2 until host 1 gets an answer, median"]["unit"] == "s"


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
def test_logs_workload_rows(tmp_path: Path) -> None:
    """The logs rows (issue 18), per driver: structure only (numbers need a quiet machine)."""
    res, rows = smoke(tmp_path, "logs", timeout=300)
    assert "failed" not in res.stdout, res.stdout[-3000:]  # a row that failed is only logged
    by = {(r["metric"], r["engine"]): r for r in rows}
    for prefix in ("logs: ", "logs (local): "):
        assert by[(prefix + "2_000 lines, docker logs reads all", "skiffd")]["unit"] == "s"
        assert by[(prefix + "docker logs --tail 10 of a 2 MB log", "skiffd")]["value"] > 0
        assert by[(prefix + "write throughput, yes into head -c 2M", "skiffd")]["unit"] == "MB/s"


@pytest.mark.skipif(not DOCKER.exists(), reason="the stock docker CLI is not installed")
def test_daemonstart_rows(tmp_path: Path) -> None:
    """The daemon-start extra: a restart timed to its first /_ping, and the split."""
    res, rows = smoke(tmp_path, "daemonstart", timeout=300)
    by = {(r["metric"], r["engine"]): r for r in rows}
    start = by.get(("skiffd start to first /_ping (dockerd: its own start)", "skiffd"))
    assert start is not None, (sorted(by), res.stdout[-2000:])
    assert start["unit"] == "s" and 0 < start["value"] < 30 and len(start["samples"]) == 1
    for part in ("interpreter", "imports", "plugin loading"):
        row = by[(f"skiffd start: {part}", "skiffd")]
        assert row["unit"] == "s" and 0 < row["value"] < start["value"] + 30, row
    assert ("skiffd start: config, engine start, socket (the rest)", "skiffd") in by
