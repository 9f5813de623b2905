"""A crashed skiffd (kill -9) starts again and removes what belongs to nothing
(core/reconcile.py and the drivers' ``reconcile``), keeps what belongs to a
record; a SIGTERM shutdown stops containers as dockerd does; restart policies
hold across a crash."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, poll, running_daemon

CGROUP = Path("/sys/fs/cgroup")


def ok(d: Daemon, *args: str, timeout: float = 60) -> str:
    return d.docker(*args, check=True, timeout=timeout).stdout.decode().strip()


def inspect(d: Daemon, name: str) -> dict[str, Any]:
    return json.loads(ok(d, "inspect", name))[0]


def crash(d: Daemon) -> None:
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    d.proc = None


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def rules(tag: str) -> list[str]:
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        res = subprocess.run([tool], capture_output=True, text=True)
        found += [line for line in res.stdout.splitlines() if f"skiff:{tag} " in line + " "
                  or f'"skiff:{tag}"' in line]
    return found


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def group_dirs(parent: str, cid: str) -> list[Path]:
    """Where a container's cgroup lives: the unified hierarchy, or one per v1 controller."""
    if (CGROUP / "cgroup.controllers").exists():
        return [CGROUP / parent / cid]
    return [p / parent / cid for p in CGROUP.iterdir()
            if p.is_dir() and not p.is_symlink() and (p / parent).is_dir()]


def _sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "600"])
    yield p
    p.kill()
    p.wait()


#: a process put into a group under skiff's parent that no container owns
stray = pytest.fixture(_sleeper)
#: another, whose group has no bundle of this daemon beside it
stranger = pytest.fixture(_sleeper)


@pytest.fixture
def planted() -> Iterator[list[Path]]:
    """Mount points the test makes; whatever the daemon did not unmount goes after."""
    points: list[Path] = []
    yield points
    for point in points:
        if mounted(point):
            subprocess.run(["umount", "-l", str(point)], check=False)
        elif str(point).startswith(str(CGROUP)):
            for level in (point, point.parent):  # the group, then the parent if empty
                with contextlib.suppress(OSError):
                    level.rmdir()
    subprocess.run(["ip", "link", "del", "skfvdead0"], check=False, capture_output=True)
    for tool in ("iptables", "ip6tables"):
        subprocess.run([tool, "-D", "FORWARD", "-o", "skfnone0", "-m", "comment",
                        "--comment", "skiff:skfnone0", "-j", "ACCEPT"], check=False,
                       capture_output=True)


def test_crash_leftovers_go_and_live_objects_stay(tmp_path: Path, planted: list[Path],
                                                  stray: subprocess.Popen[bytes],
                                                  stranger: subprocess.Popen[bytes]) -> None:
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        data, exec_root = d.root_dir, Path(d.config["exec-root"])
        parent = d.config["cgroup-parent"]
        net, gone_net = f"rec-{secrets.token_hex(3)}", f"recg-{secrets.token_hex(3)}"
        net_id = ok(d, "network", "create", net)
        gone_id = ok(d, "network", "create", gone_net)
        gone_bridge = f"skf-{gone_id[:11]}"
        bridge = f"skf-{net_id[:11]}"
        kept = ok(d, "create", "--name", f"kept-{secrets.token_hex(3)}", "busybox", "true")
        lost = ok(d, "create", "--name", f"lost-{secrets.token_hex(3)}", "busybox", "true")
        damaged = ok(d, "create", "--network", "none", "busybox", "true")
        # a layer with a size limit: on overlay2 without project quota its loop
        # filesystem is mounted over the layer for as long as the layer lives
        sized = ok(d, "create", "--network", "none", "--storage-opt", "size=20m", "busybox",
                   "sh", "-c", "head -c 31457280 /dev/zero > /f")
        lost_mount_id = (data / "image" / "overlay2" / "layerdb" / "mounts" / lost /
                         "mount-id").read_text() if (data / "image" / "overlay2").exists() \
            else ""
        served = ok(d, "run", "-d", "--network", net, "-p", "127.0.0.1::80", "busybox",
                    "httpd", "-f", "-p", "80")
        assert bridge in links() and gone_bridge in links()
        old_port = inspect(d, served)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
        assert any(f"--dport {old_port} " in r for r in rules(bridge))

        # What a crash at other points leaves: a copy's mount, a bundle's rootfs,
        # temp dirs of a load and a pull, a cgroup with a process, a veth that
        # never reached its container, rules of a bridge already gone.
        fake = secrets.token_hex(32)
        tmp_mount = data / "tmp" / "cp-dead"
        bundle_mount = exec_root / "containers" / fake / "rootfs"
        for point in (tmp_mount, bundle_mount):
            point.mkdir(parents=True)
            planted.append(point)
            subprocess.run(["mount", "-t", "tmpfs", "none", str(point)], check=True)
        (data / "tmp" / "load-dead").mkdir()
        (data / "tmp" / "load-dead" / "layer.tar").write_bytes(b"x" * 100)
        # a removed container's folders, renamed for the trash, which the crash
        # stopped before it deleted them (core/containers/manager.py)
        for retired in (data / "tmp" / f"rm-{fake}", exec_root / "tmp" / f"rm-{fake}"):
            retired.mkdir(parents=True)
            (retired / "config.v2.json").write_text("{}")
        spool = Path("/dev/shm", "skiff-" + hashlib.sha256(str(data).encode()).hexdigest()[:12])
        assert spool.is_dir()  # this daemon's own corner of the memory spool
        (spool / "skiff-context-dead").mkdir()
        (spool / "skiff-context-dead" / "Dockerfile").write_text("FROM busybox\n")
        pull_tmp = next((data / "image").iterdir()) / "distribution" / "tmp" / "pull-dead"
        pull_tmp.mkdir(parents=True)
        (pull_tmp / "blob").write_bytes(b"y")
        for group in group_dirs(parent, fake):
            group.mkdir()
            planted.append(group)
        (group_dirs(parent, fake)[0] / "cgroup.procs").write_text(str(stray.pid))
        # the same, without a bundle of this daemon: maybe another daemon's, that
        # shares the cgroup parent (every daemon's default is "skiff")
        other = secrets.token_hex(32)
        for group in group_dirs(parent, other):
            group.mkdir()
            planted.append(group)
        (group_dirs(parent, other)[0] / "cgroup.procs").write_text(str(stranger.pid))
        subprocess.run(["ip", "link", "add", "skfvdead0", "type", "veth", "peer", "name",
                        "skfpdead0"], check=True)
        subprocess.run(["ip", "link", "set", "skfvdead0", "master", bridge], check=True)
        for tool in ("iptables", "ip6tables"):
            subprocess.run([tool, "-A", "FORWARD", "-o", "skfnone0", "-m", "comment",
                            "--comment", "skiff:skfnone0", "-j", "ACCEPT"], check=True)
        assert len(rules("skfnone0")) == 2

        crash(d)
        # crashed in the middle of `network rm` (record gone, bridge not yet), of
        # `rm` (record gone, layer not yet), of `create` (directory, no record)
        (data / "network" / f"{gone_id}.json").unlink()
        subprocess.run(["rm", "-rf", str(data / "containers" / lost)], check=True)
        (data / "containers" / damaged / "config.v2.json").write_text("{not json")
        # its groups, made at its create, stay with the record nobody can read
        # (it may be repaired); the test removes them
        planted.extend(group_dirs(parent, damaged))
        (data / "containers" / fake).mkdir()
        (data / "containers" / fake / "hostconfig.json").write_text("{}")
        d.start()

        assert not mounted(tmp_mount) and not mounted(bundle_mount)
        assert not (exec_root / "containers" / fake).exists()
        assert os.listdir(data / "tmp") == []
        assert os.listdir(exec_root / "tmp") == []
        assert not pull_tmp.exists()
        assert spool.is_dir() and os.listdir(spool) == []
        assert all(not g.exists() for g in group_dirs(parent, fake))
        assert stray.wait(10) == -signal.SIGKILL
        assert stranger.poll() is None and group_dirs(parent, other)[0].exists()
        assert "cgroup.orphan_busy" in d.log_path.read_text()
        assert "skfvdead0" not in links() and "skfpdead0" not in links()
        assert gone_bridge not in links() and rules(gone_bridge) == []
        assert rules("skfnone0") == []
        assert not (data / "containers" / fake).exists()
        assert not (data / "image" / "overlay2" / "layerdb" / "mounts" / lost).exists()
        # a record that cannot be read still owns its layer (it may be repaired)
        assert (data / "image" / "overlay2" / "layerdb" / "mounts" / damaged).exists() \
            or not (data / "image" / "overlay2").exists()
        if lost_mount_id:
            assert not (data / "overlay2" / lost_mount_id).exists()
        log = d.log_path.read_text()
        for kind in ("mounts", "bundles", "temp_dirs", "cgroups", "network", "orphan_processes",
                     "interrupted_creates", "container_layers"):
            assert f'"reconcile.{kind}"' in log, kind

        # the crashed run's endpoint: its port rules went with its veth
        assert not any(f"--dport {old_port} " in r for r in rules(bridge))
        # nothing of a live object went
        assert bridge in links() and rules(bridge)
        assert net in ok(d, "network", "ls", "--format", "{{.Name}}").split()
        assert ok(d, "run", "--rm", "--network", net, "busybox", "echo", "up") == "up"
        ok(d, "start", "-a", kept)
        res = d.docker("start", "-a", sized)  # the limit still holds
        assert res.returncode != 0, res  # (busybox head reports the ENOSPC as an I/O error)
        ok(d, "start", served)
        port = inspect(d, served)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
        assert port and inspect(d, served)["State"]["Running"]
        ok(d, "rm", "-f", kept, served, sized)
        ok(d, "network", "rm", net)
        d.stop()
        assert not spool.exists()  # it goes with its daemon


def test_sigterm_shutdown_stops_containers_as_dockerd(tmp_path: Path) -> None:
    """SIGTERM to skiffd: each container gets its stop signal, then SIGKILL after its
    own stop timeout, all at once; the exit codes survive the restart."""
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        trap = ok(d, "run", "-d", "--network", "none", "busybox", "sh", "-c",
                  "trap 'sleep 1; exit 3' TERM; while true; do sleep 0.1; done")
        deaf = ok(d, "run", "-d", "--network", "none", "--stop-timeout", "2", "busybox",
                  "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done")
        time.sleep(0.5)  # both shells have set their traps
        start = time.monotonic()
        assert d.stop() == 0
        took = time.monotonic() - start
        # in parallel: the 2 s of the deaf one, not 1 s + 2 s, nor the default 10 s
        assert 1.8 < took < 4.5, took
        d.start()
        assert inspect(d, trap)["State"]["ExitCode"] == 3
        assert inspect(d, deaf)["State"]["ExitCode"] == 137
        assert "container.stop_timeout" in d.log_path.read_text()
        ok(d, "rm", trap, deaf)


def test_restart_always_runs_again_after_a_crash(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        always = ok(d, "run", "-d", "--network", "none", "--restart", "always", "busybox",
                    "sleep", "600")
        never = ok(d, "run", "-d", "--network", "none", "busybox", "sleep", "600")
        old_pid = inspect(d, always)["State"]["Pid"]
        crash(d)
        d.start()
        poll(lambda: inspect(d, always)["State"]["Running"], what="always to run again")
        assert inspect(d, always)["State"]["Pid"] != old_pid
        assert inspect(d, never)["State"]["Status"] == "exited"
        ok(d, "rm", "-f", always, never)


def test_load_cut_by_a_crash_leaves_no_layer_and_no_temp(tmp_path: Path) -> None:
    """kill -9 in the middle of a ``docker load``: after the restart no part of it
    is there (no image, no layer, no temp files), and the same load then works."""
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        data = d.root_dir
        maker = ok(d, "run", "-d", "--network", "none", "busybox", "sh", "-c",
                   "head -c 8388608 /dev/urandom > /big")
        ok(d, "wait", maker)
        tag = f"loadcut:{secrets.token_hex(3)}"
        ok(d, "commit", maker, tag)
        archive = tmp_path / "img.tar"
        ok(d, "save", "-o", str(archive), tag)
        ok(d, "rm", maker)
        ok(d, "rmi", tag)
        d.settled()  # the removed container's folder is not the load's spool below
        layerdb = next((data / "image").iterdir()) / "layerdb"
        layers_before = sorted(os.listdir(layerdb / "sha256"))
        blob = archive.read_bytes()
        load = subprocess.Popen(["docker", "load"], env=d.env(), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert load.stdin is not None
            load.stdin.write(blob[: len(blob) * 2 // 3])
            load.stdin.flush()
            poll(lambda: os.listdir(data / "tmp"), 10, "the load to spool")
            time.sleep(0.3)
            crash(d)
        finally:
            load.kill()
            load.wait()
        d.start()
        assert os.listdir(data / "tmp") == []
        assert os.listdir(layerdb / "tmp") == []
        assert sorted(os.listdir(layerdb / "sha256")) == layers_before
        assert tag not in ok(d, "images", "--format", "{{.Repository}}:{{.Tag}}").split()
        assert '"reconcile.temp_dirs"' in d.log_path.read_text()
        ok(d, "load", "-i", str(archive))
        ok(d, "rmi", tag)


def test_a_removal_cut_by_a_crash_is_finished(tmp_path: Path) -> None:
    """rm writes its intent before it removes anything; a crash after that point
    (here: before the layer went, and after it went) is finished at the next
    start, never a container "stuck in removal"."""
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        data = d.root_dir
        early = ok(d, "create", "--network", "none", "busybox", "true")
        late = ok(d, "create", "--network", "none", "busybox", "true")
        kept = ok(d, "create", "--network", "none", "busybox", "true")
        mounts = next((data / "image").iterdir()) / "layerdb" / "mounts"
        crash(d)
        for cid in (early, late):
            path = data / "containers" / cid / "config.v2.json"
            rec = json.loads(path.read_text())
            rec["State"]["Status"] = "removing"
            path.write_text(json.dumps(rec))
        subprocess.run(["rm", "-rf", str(mounts / late)], check=True)  # the layer went
        d.start()
        for cid in (early, late):
            poll(lambda cid=cid: d.docker("inspect", cid).returncode != 0, 10,
                 f"the removal of {cid[:12]} to be finished")
            assert not (data / "containers" / cid).exists()
            assert not (mounts / cid).exists()
        assert ok(d, "ps", "-aq", "--no-trunc") == kept
        assert "container.interrupted_removal_finished" in d.log_path.read_text()
        ok(d, "rm", kept)


class _StallingRegistry:
    """A registry on 127.0.0.1 with one image whose layer blob stops half-way:
    a pull that is certainly in the middle of a download when skiffd dies."""

    def __init__(self) -> None:
        import gzip
        import hashlib
        import io
        import tarfile
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            payload = os.urandom(2 << 20)
            info = tarfile.TarInfo("big")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        layer = gzip.compress(raw.getvalue(), compresslevel=1)

        def digest(b: bytes) -> str:
            return "sha256:" + hashlib.sha256(b).hexdigest()

        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers",
                                        "diff_ids": [digest(raw.getvalue())]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": len(config), "digest": digest(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(layer), "digest": digest(layer)}]}).encode()
        blobs = {digest(config): config}
        self.half_sent = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _send(self, body: bytes, ctype: str, extra: dict[str, str] | None = None
                      ) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                if self.path == "/v2/":
                    self._send(b"{}", "application/json")
                elif "/manifests/" in self.path:
                    self._send(manifest, "application/vnd.docker.distribution.manifest.v2+json",
                               {"Docker-Content-Digest": digest(manifest)})
                elif self.path.endswith(digest(layer)):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(layer)))
                    self.end_headers()
                    self.wfile.write(layer[: len(layer) // 2])
                    self.wfile.flush()
                    outer.half_sent.set()
                    outer.release.wait(30)
                else:
                    body = blobs.get(self.path.rsplit("/", 1)[-1])
                    if body is None:
                        self.send_error(404)
                    else:
                        self._send(body, "application/octet-stream")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_pull_cut_by_a_crash_leaves_no_layer_and_no_temp(tmp_path: Path) -> None:
    """kill -9 while a layer downloads: after the restart the pull's temp files are
    gone, no layer or image of it is there, and nothing else was touched."""
    registry = _StallingRegistry()
    try:
        with running_daemon(tmp_path / "d") as d:
            d.skiff("image", "bootstrap", "busybox")
            image_root = next((d.root_dir / "image").iterdir())
            layers_before = sorted(os.listdir(image_root / "layerdb" / "sha256"))
            ref = f"127.0.0.1:{registry.port}/stall:1"
            pull = subprocess.Popen(["docker", "pull", ref], env=d.env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                assert registry.half_sent.wait(30), d.logs()
                pulls = image_root / "distribution" / "tmp"
                poll(lambda: any(p.iterdir() for p in pulls.iterdir()), 10,
                     "the download to reach the pull's temp dir")
                crash(d)
            finally:
                pull.kill()
                pull.wait()
            registry.release.set()
            d.start()
            assert os.listdir(image_root / "distribution" / "tmp") == []
            assert os.listdir(image_root / "layerdb" / "tmp") == []
            assert sorted(os.listdir(image_root / "layerdb" / "sha256")) == layers_before
            assert d.docker("image", "inspect", ref).returncode != 0
            assert '"reconcile.temp_dirs"' in d.log_path.read_text()
            assert ok(d, "run", "--rm", "--network", "none", "busybox", "echo", "ok") == "ok"
    finally:
        registry.close()


def test_run_of_a_start_cut_by_a_crash_goes(tmp_path: Path, planted: list[Path],
                                            stray: subprocess.Popen[bytes]) -> None:
    """A start killed after it put the container's process in its groups and before
    it recorded the run leaves both behind a record that does not run: found by
    the chaos harness (tests/chaos.py), they stayed for good (the group busy,
    the process of no running container)."""
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        cid = ok(d, "create", "--network", "none", "busybox", "true")
        parent = d.config["cgroup-parent"]
        unified = (CGROUP / "cgroup.controllers").exists()
        groups = [CGROUP / parent / cid] if unified else [
            p / parent / cid for p in CGROUP.iterdir()
            if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()
            and p.name not in ("unified", "systemd")]  # hybrid: not the driver's
        assert groups
        crash(d)
        for group in groups:  # what the cut start made, with its process
            group.mkdir(parents=True, exist_ok=True)
            planted.append(group)
        bundle = Path(d.config["exec-root"]) / "containers" / cid
        bundle.mkdir(parents=True, exist_ok=True)
        for group in groups:
            with contextlib.suppress(OSError):  # v1 cpuset: no cpus of its own yet
                (group / "cgroup.procs").write_text(str(stray.pid))
        d.start()
        assert all(not g.exists() for g in groups), (
            [g for g in groups if g.exists()],
            [ln[:200] for ln in d.log_path.read_text().splitlines() if "reconcile." in ln])
        assert inspect(d, cid)["State"]["Status"] == "created"
        assert stray.wait(10) == -signal.SIGKILL
        log = d.log_path.read_text()
        assert '"reconcile.cgroups"' in log and '"reconcile.orphan_processes"' in log


def test_a_bridge_added_by_a_daemon_killed_before_marking_it_goes(tmp_path: Path) -> None:
    """A kill between a bridge's add and its owner alias: the intent written
    before the add proves it this daemon's; an unmarked bridge without one
    (another daemon's, mid-create) stays."""
    ours, stranger = f"skf-{secrets.token_hex(5)}a", f"skf-{secrets.token_hex(5)}b"
    with running_daemon(tmp_path / "d") as d:
        intents = Path(d.config["exec-root"]) / "network" / "bridge-intents"
        crash(d)
        try:
            for name in (ours, stranger):
                subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
            intents.mkdir(parents=True, exist_ok=True)
            (intents / ours).touch()
            d.start()
            assert ours not in links() and stranger in links()
            assert not (intents / ours).exists()
            assert f"bridge {ours}" in d.log_path.read_text()
            # a network made now leaves no intent behind
            ok(d, "network", "create", f"rec-{secrets.token_hex(3)}")
            assert os.listdir(intents) == []
        finally:
            for name in (ours, stranger):
                subprocess.run(["ip", "link", "del", name], capture_output=True)
            for n in ok(d, "network", "ls", "-q", "--filter", "name=rec-").split():
                d.docker("network", "rm", n)
