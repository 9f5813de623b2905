"""Resource limits end to end: the stock docker CLI against a real skiffd.

Runs on this machine's cgroup v1 and, through scripts/vmrig-tests.sh, in the
VM rig's pure cgroup v2 hierarchy.  Every shell snippet reads the v1 file and
falls back to the v2 one, so the same test proves both.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.daemon import DOCKER, Daemon, daemon_config
from tests.integration.test_limits_runtime import OWN_LIMITS_SCRIPT, check_own_limits
from tests.loopfs import attached_loop

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"no docker CLI at {DOCKER}"),
]

MiB = 1024 * 1024
V2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
DEFAULT_PIDS = 2048
START_TIMEOUT = float(os.environ.get("SKIFF_TEST_START_TIMEOUT", "20"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base: Path = tmp_path_factory.mktemp("skiffd-limits")
    # in the VM rig (qemu without acceleration) the daemon needs far longer to start
    # (tests.daemon.running_daemon, with a configurable start timeout)
    d = Daemon(base, daemon_config(base))
    d.start(timeout=START_TIMEOUT)
    try:
        d.skiff("image", "bootstrap", "busybox", timeout=max(60, START_TIMEOUT))
        yield d
    finally:
        left = d.docker("ps", "-aq", timeout=60).stdout.decode().split()
        if left:
            d.docker("rm", "-f", *left, timeout=120)
        rc = d.stop()
        assert rc == 0, f"skiffd exited with {rc} on SIGTERM:\n{d.logs()}"
        shutil.rmtree(base, ignore_errors=True)
        parent = d.config["cgroup-parent"]
        # the parent sits right under the root (v2) or a controller's mount (v1)
        left = [str(p) for p in [Path("/sys/fs/cgroup", parent),
                                *Path("/sys/fs/cgroup").glob(f"*/{parent}")] if p.exists()]
        assert not left, f"cgroups left behind: {left}"


def name() -> str:
    return "lim-" + secrets.token_hex(4)


def run(d: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return d.docker("run", *args, timeout=timeout)


def inspect(d: Daemon, ref: str) -> dict:
    return json.loads(d.docker("inspect", ref, check=True).stdout)[0]


def cat(v1: str, v2: str) -> str:
    """Shell: print a cgroup file of the container's own group, v1 or v2 layout."""
    return f"cat /sys/fs/cgroup/{v1} 2>/dev/null || cat /sys/fs/cgroup/{v2}"


def host_group_file(d: Daemon, cid: str, v1: str, v2: str) -> Path:
    parent = d.config["cgroup-parent"]
    if V2:
        return Path("/sys/fs/cgroup", parent, cid, v2)
    controller, _, f = v1.partition("/")
    return Path("/sys/fs/cgroup", controller, parent, cid, f)


def test_oom_kill_reports_137_and_oomkilled(daemon: Daemon) -> None:
    n = name()
    since = time.time() - 0.01
    # the shell keeps the whole 100 MB command substitution in its own memory
    res = run(daemon, "--name", n, "--memory", "32m", "busybox", "sh", "-c",
              "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}")
    assert res.returncode == 137, (res.stdout, res.stderr, daemon.logs())
    assert b"survived" not in res.stdout
    state = inspect(daemon, n)["State"]
    assert state["OOMKilled"] is True
    assert state["ExitCode"] == 137
    assert "container.oom" in daemon.logs()
    # `docker events` shows oom before die, as Docker does (issue 7)
    evs = [json.loads(line) for line in daemon.docker(
        "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
        "--filter", f"container={n}", "--format", "{{json .}}", check=True,
    ).stdout.decode().splitlines() if line.strip()]
    actions = [e["Action"] for e in evs]
    assert "oom" in actions and actions.index("oom") < actions.index("die"), actions
    # the daemon stays up and the next container runs normally
    assert run(daemon, "--rm", "busybox", "true").returncode == 0
    daemon.docker("rm", n, check=True)


def test_exit_without_oom_is_not_oomkilled(daemon: Daemon) -> None:
    n = name()
    res = run(daemon, "--name", n, "--memory", "32m", "busybox", "sh", "-c", "exit 3")
    assert res.returncode == 3
    assert inspect(daemon, n)["State"]["OOMKilled"] is False
    daemon.docker("rm", n, check=True)


def test_pids_limit_stops_forks_and_host_is_fine(daemon: Daemon) -> None:
    # Only shell builtins after the loop: with 20 pids taken, the container
    # cannot fork even a cat.  The subshell dies on its first failed fork.
    script = (
        "(for i in $(seq 100); do sleep 30 & done) 2>/tmp/err; "
        "read n < /sys/fs/cgroup/pids/pids.current 2>/dev/null "
        "|| read n < /sys/fs/cgroup/pids.current; echo current=$n; "
        "while read line; do echo \"err: $line\"; done < /tmp/err; "
        "kill -9 -1; wait; echo done"
    )
    t0 = time.monotonic()
    res = run(daemon, "--rm", "--pids-limit", "20", "busybox", "sh", "-c", script)
    out = res.stdout.decode()
    assert res.returncode == 0, (out, res.stderr, daemon.logs())
    assert "done" in out
    m = re.search(r"current=(\d+)", out)
    assert m and int(m.group(1)) <= 20, out
    assert re.search(r"err: .*can't fork", out), out
    assert time.monotonic() - t0 < 120  # generous: qemu without acceleration is slow
    # the host still forks, and the daemon still answers
    subprocess.run(["true"], check=True)
    daemon.docker("ps", check=True)


def test_default_pids_limit_applies_without_flag(daemon: Daemon) -> None:
    n = name()
    res = run(daemon, "--name", n, "busybox", "sh", "-c", cat("pids/pids.max", "pids.max"))
    assert res.stdout.decode().strip() == str(DEFAULT_PIDS), res
    assert inspect(daemon, n)["HostConfig"]["PidsLimit"] == DEFAULT_PIDS
    daemon.docker("rm", n, check=True)
    res = run(daemon, "--rm", "--pids-limit", "-1", "busybox", "sh", "-c",
              cat("pids/pids.max", "pids.max"))
    assert res.stdout.decode().strip() == "max", res


def test_cpus_half_holds_a_busy_loop_near_half_a_core(daemon: Daemon) -> None:
    seconds = 3
    script = (
        f"timeout {seconds} sh -c 'while :; do :; done'; "
        "cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null "
        "|| sed -n 's/^usage_usec //p' /sys/fs/cgroup/cpu.stat"
    )
    t0 = time.monotonic()
    res = run(daemon, "--rm", "--cpus", "0.5", "busybox", "sh", "-c", script)
    wall = time.monotonic() - t0
    assert res.returncode == 0, res
    used = int(res.stdout.decode().split()[-1]) / (1e6 if V2 else 1e9)
    ratio = used / seconds
    # loose: CFS quota is 50 ms per 100 ms; a loaded host may give less
    assert 0.15 < ratio < 0.7, (used, wall)


def test_limits_visible_read_only_in_the_container(daemon: Daemon) -> None:
    res = run(daemon, "--rm", "--memory", "48m", "--cpus", "0.5", "--pids-limit", "30",
              "busybox", "sh", "-c", OWN_LIMITS_SCRIPT)
    assert res.returncode == 0, res
    check_own_limits(res.stdout.decode())


def test_invalid_memory_is_refused_at_create(daemon: Daemon) -> None:
    res = run(daemon, "--rm", "--memory", "1m", "busybox", "true")
    assert res.returncode == 125
    assert b"Minimum memory limit allowed is 6MB" in res.stderr


def test_docker_stats_no_stream_is_sane(daemon: Daemon) -> None:
    n = name()
    daemon.docker("run", "-d", "--name", n, "--memory", "64m", "busybox", "sleep", "60",
                  check=True)
    try:
        res = daemon.docker("stats", "--no-stream", "--format", "{{json .}}", n, check=True)
        row = json.loads(res.stdout)
        usage, limit = (x.strip() for x in row["MemUsage"].split("/"))
        assert limit == "64MiB", row
        m = re.fullmatch(r"([\d.]+)(B|KiB|MiB)", usage)
        assert m, row
        value = float(m.group(1)) * {"B": 1, "KiB": 1024, "MiB": MiB}[m.group(2)]
        assert 0 < value < 16 * MiB, row  # a sleeping busybox uses well under 16 MiB
        assert row["PIDs"] == "1"
        assert row["CPUPerc"].endswith("%")

        # the raw API shape: one-shot and the CPU baseline of stream=false
        client = docker.APIClient(base_url=daemon.host, version="1.41", timeout=30)
        try:
            one = client.stats(n, stream=False, one_shot=True)
            for key in ("read", "preread", "pids_stats", "blkio_stats", "num_procs",
                        "cpu_stats", "precpu_stats", "memory_stats", "name", "id",
                        "networks"):
                assert key in one, key
            assert one["name"] == "/" + n
            assert one["memory_stats"]["limit"] == 64 * MiB
            assert one["cpu_stats"]["cpu_usage"]["total_usage"] > 0
            two = client.stats(n, stream=False)
            assert two["precpu_stats"]["system_cpu_usage"] > 0
            frames = client.stats(n, stream=True, decode=True)
            first, second = next(frames), next(frames)
            assert second["preread"] == first["read"]
            frames.close()
        finally:
            client.close()
    finally:
        daemon.docker("rm", "-f", n, check=True)


def test_docker_update_memory_takes_effect(daemon: Daemon) -> None:
    n = name()
    old = 32 * MiB
    # waits until its own limit changes, then needs more than the old limit
    script = (
        f"while [ \"$({cat('memory/memory.limit_in_bytes', 'memory.max')})\" = {old} ]; "
        "do sleep 0.1; done; "
        "x=$(head -c 48000000 /dev/zero | tr '\\0' a); echo allocated ${#x}"
    )
    res = daemon.docker("run", "-d", "--name", n, "--memory", "32m", "busybox", "sh", "-c",
                        script, check=True)
    cid = res.stdout.decode().strip()
    try:
        limit_file = host_group_file(daemon, cid, "memory/memory.limit_in_bytes",
                                     "memory.max")
        assert limit_file.read_text().strip() == str(old)
        daemon.docker("update", "--memory", "256m", "--memory-swap", "512m", n, check=True)
        assert limit_file.read_text().strip() == str(256 * MiB)
        code = daemon.docker("wait", n, check=True, timeout=60).stdout.decode().strip()
        logs = daemon.docker("logs", n, check=True).stdout.decode()
        assert code == "0", (code, logs)
        assert "allocated 48000000" in logs
        hc = inspect(daemon, n)["HostConfig"]
        assert hc["Memory"] == 256 * MiB and hc["MemorySwap"] == 512 * MiB
    finally:
        daemon.docker("rm", "-f", n, check=True)


def test_update_pids_and_cpus_of_a_running_container(daemon: Daemon) -> None:
    n = name()
    cid = daemon.docker("run", "-d", "--name", n, "busybox", "sleep", "60",
                        check=True).stdout.decode().strip()
    try:
        daemon.docker("update", "--pids-limit", "50", "--cpus", "0.25", n, check=True)
        pids = host_group_file(daemon, cid, "pids/pids.max", "pids.max")
        assert pids.read_text().strip() == "50"
        cpu = host_group_file(daemon, cid, "cpu/cpu.cfs_quota_us", "cpu.max")
        assert cpu.read_text().split()[0] == "25000"
        hc = inspect(daemon, n)["HostConfig"]
        assert hc["PidsLimit"] == 50 and hc["NanoCpus"] == 250_000_000
        bad = daemon.docker("update", "--memory", "1m", n)
        assert bad.returncode != 0 and b"Minimum memory limit" in bad.stderr
    finally:
        daemon.docker("rm", "-f", n, check=True)


def test_skiff_stats(daemon: Daemon) -> None:
    n = name()
    daemon.docker("run", "-d", "--name", n, "--memory", "64m", "busybox", "sleep", "60",
                  check=True)
    try:
        res = daemon.skiff("stats", n)
        lines = res.stdout.decode().splitlines()
        assert lines[0].split()[:2] == ["CONTAINER", "NAME"]
        assert n in lines[1] and "64MiB" in lines[1]
    finally:
        daemon.docker("rm", "-f", n, check=True)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(``/dev/loopN``, ``"MAJ:MIN"``) of a loop device the test attaches, then detaches."""
    with attached_loop(tmp_path) as dev:
        yield dev


def test_device_io_limits_in_the_containers_own_group(
        daemon: Daemon, loop_device: tuple[str, str]) -> None:
    dev, majmin = loop_device
    script = "; ".join([
        cat("blkio/blkio.throttle.read_bps_device", "io.max"),
        cat("blkio/blkio.throttle.write_bps_device", "io.max"),
        cat("blkio/blkio.throttle.read_iops_device", "io.max"),
        cat("blkio/blkio.throttle.write_iops_device", "io.max"),
    ])
    n = name()
    res = run(daemon, "--name", n, "--device-read-bps", f"{dev}:1mb",
              "--device-write-bps", f"{dev}:2mb", "--device-read-iops", f"{dev}:100",
              "--device-write-iops", f"{dev}:50", "busybox", "sh", "-c", script)
    assert res.returncode == 0, res
    lines = res.stdout.decode().splitlines()
    if V2:
        assert lines == [f"{majmin} rbps={MiB} wbps={2 * MiB} riops=100 wiops=50"] * 4
    else:
        assert lines == [f"{majmin} {MiB}", f"{majmin} {2 * MiB}", f"{majmin} 100",
                         f"{majmin} 50"]
    hc = inspect(daemon, n)["HostConfig"]
    assert hc["BlkioDeviceReadBps"] == [{"Path": dev, "Rate": MiB}]
    assert hc["BlkioDeviceWriteIOps"] == [{"Path": dev, "Rate": 50}]
    daemon.docker("rm", n, check=True)


def test_device_io_limit_on_a_non_block_device_is_refused(daemon: Daemon) -> None:
    before = daemon.docker("ps", "-aq", check=True).stdout
    res = run(daemon, "--rm", "--device-read-bps", "/dev/null:1mb", "busybox", "true")
    assert res.returncode == 125
    assert b"/dev/null is not a block device" in res.stderr, res.stderr
    res = run(daemon, "--rm", "--device-write-iops", "/dev/nonexistent-skiff:10", "busybox",
              "true")
    assert res.returncode == 125 and b"No such file or directory" in res.stderr, res.stderr
    assert daemon.docker("ps", "-aq", check=True).stdout == before  # nothing half-made


def test_kernel_memory_is_refused_with_the_reason(daemon: Daemon) -> None:
    # Neither this machine's kernel (6.18: writes to memory.kmem.limit_in_bytes
    # are ignored) nor cgroup v2 (no separate kmem limit) can enforce it.
    res = run(daemon, "--rm", "--kernel-memory", "64m", "busybox", "true")
    assert res.returncode == 125, res
    err = res.stderr.decode()
    assert "Kernel memory limit is not supported" in err
    assert ("cgroup v2" in err) if V2 else ("memory.kmem.limit_in_bytes" in err), err


# -- a created container's groups, made ahead of its start (cgroupprime.py) ------

def group_dirs(d: Daemon, cid: str) -> list[Path]:
    """The container's groups on the host, in every hierarchy that has one."""
    parent = d.config["cgroup-parent"]
    if V2:
        return [p for p in [Path("/sys/fs/cgroup", parent, cid)] if p.is_dir()]
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/{parent}/{cid}") if p.is_dir()]


def wait_groups(d: Daemon, cid: str, present: bool, timeout: float = 10) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        found = group_dirs(d, cid)
        if bool(found) == present or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_created_groups_are_made_ahead_follow_update_and_go_with_rm(daemon: Daemon) -> None:
    """docker create makes the container's groups in the background, with its
    limits (its start then finds them, and the kernel's grace period for
    the move over); a limit changed before the start is the one the
    container gets; rm of a container that never started removes them."""
    n = name()
    limit = cat("memory/memory.limit_in_bytes", "memory.max")
    cid = daemon.docker("create", "--name", n, "--memory", "32m", "--memory-swap", "64m",
                        "busybox", "sh", "-c", limit, check=True).stdout.decode().strip()
    try:
        assert wait_groups(daemon, cid, True), "no groups made at create"
        host_limit = host_group_file(daemon, cid, "memory/memory.limit_in_bytes", "memory.max")
        assert host_limit.read_text().strip() == str(32 * MiB)
        daemon.docker("update", "--memory", "48m", "--memory-swap", "96m", n, check=True)
        out = daemon.docker("start", "-a", n, check=True, timeout=60).stdout.decode()
        assert out.strip() == str(48 * MiB)
    finally:
        daemon.docker("rm", "-f", n, check=True)
    assert not group_dirs(daemon, cid)

    n2 = name()
    cid2 = daemon.docker("create", "--name", n2, "busybox", "true",
                         check=True).stdout.decode().strip()
    assert wait_groups(daemon, cid2, True)
    daemon.docker("rm", n2, check=True)
    assert not group_dirs(daemon, cid2), "rm left the groups made at create"


def test_at_most_eight_created_containers_have_groups_ahead(daemon: Daemon) -> None:
    """A thousand ``docker create`` must not make a thousand empty memory
    groups: only ``AHEAD_MAX`` created containers have theirs, and the
    others make them at start, as before."""
    from skiff.core.containers.cgroupprime import AHEAD_MAX

    names = [name() for _ in range(AHEAD_MAX + 3)]
    ids = [daemon.docker("create", "--name", n, "busybox", "true",
                         check=True).stdout.decode().strip() for n in names]
    try:
        for c in ids[:AHEAD_MAX]:
            assert wait_groups(daemon, c, True), f"{c[:12]} has no groups made ahead"
        # the others were never begun (the cap is checked at their create);
        # without the cap theirs would appear within milliseconds
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert not [c for c in ids[AHEAD_MAX:] if group_dirs(daemon, c)]
            time.sleep(0.05)
        # one without: its start makes them; it runs, exits and keeps none
        res = daemon.docker("start", "-a", names[-1], timeout=60)
        assert res.returncode == 0, res
        assert not group_dirs(daemon, ids[-1])
    finally:
        daemon.docker("rm", "-f", *names, check=True)
    assert not any(group_dirs(daemon, c) for c in ids)


def test_groups_made_ahead_end_with_the_daemon(tmp_path: Path) -> None:
    """SIGTERM removes the groups of created containers (the next daemon
    makes them at start); after SIGKILL, the next daemon's reconciliation
    removes them (it keeps the groups of running containers only).  The
    container starts either way."""
    d = Daemon(tmp_path, daemon_config(tmp_path))
    d.start(timeout=START_TIMEOUT)
    try:
        d.skiff("image", "bootstrap", "busybox", timeout=max(60, START_TIMEOUT))
        cid = d.docker("create", "busybox", "true", check=True).stdout.decode().strip()
        assert wait_groups(d, cid, True)
        assert d.stop() == 0
        assert not group_dirs(d, cid), "SIGTERM left a created container's groups"
        d.start(timeout=START_TIMEOUT)
        cid2 = d.docker("create", "busybox", "true", check=True).stdout.decode().strip()
        assert wait_groups(d, cid2, True)
        assert d.proc is not None
        os.killpg(d.proc.pid, 9)
        d.proc.wait()
        d.proc = None
        assert group_dirs(d, cid2)  # the crash left them
        d.start(timeout=START_TIMEOUT)
        assert not group_dirs(d, cid2), "reconciliation kept a created container's groups"
        for c in (cid, cid2):
            res = d.docker("start", "-a", c, timeout=60)
            assert res.returncode == 0, res
        d.docker("rm", cid, cid2, check=True)
    finally:
        if d.proc is not None:
            left = d.docker("ps", "-aq", timeout=60).stdout.decode().split()
            if left:
                d.docker("rm", "-f", *left, timeout=120)
            d.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
    parent = d.config["cgroup-parent"]
    assert not [p for p in [Path("/sys/fs/cgroup", parent),
                            *Path("/sys/fs/cgroup").glob(f"*/{parent}")] if p.exists()]
