"""The engines under test: a private skiffd and a private dockerd, driven by the stock CLI.

Each engine lives in a temp folder of its own (data-root, exec-root, socket,
pidfile, config) and in a cgroup parent of its own, so a benchmark shares
nothing with a real skiffd or dockerd on the machine.  Their processes are
found by that folder: every process whose command line names it, plus all of
their descendants (dockerd's containerd-shims re-parent away from dockerd but
name the private containerd socket on their command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DOCKER_CLI = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else (
    shutil.which("docker") or "docker")
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
CGROUP_ROOT = Path("/sys/fs/cgroup")


class EngineError(RuntimeError):
    """An engine failed to start, or a docker command against it failed."""


def ping(sock: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(sock)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@dataclass
class ProcInfo:
    """One process as /proc shows it, with its memory."""

    pid: int
    ppid: int
    comm: str
    rss_kb: int
    pss_kb: int


def _read_proc(pid: int) -> tuple[int, str, str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: split at the last ')'
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    ppid = int(stat[stat.rindex(")") + 2:].split()[1])
    return ppid, comm, cmd


def _memory_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def processes_of(marker: str) -> list[ProcInfo]:
    """Processes whose command line contains ``marker``, and all their descendants."""
    table: dict[int, tuple[int, str, str]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _read_proc(int(name))
            if info is not None:
                table[int(name)] = info
    mine = {os.getpid(), os.getppid()}
    found = {pid for pid, (_, _, cmd) in table.items() if marker in cmd and pid not in mine}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        grew = bool(more)
        found |= more
    out = []
    for pid in sorted(found):
        rss, pss = _memory_kb(pid)
        out.append(ProcInfo(pid, table[pid][0], table[pid][1], rss, pss))
    return out


def _cleanup_cgroups(name: str) -> None:
    """Remove the (empty) cgroup folders called ``name`` in every hierarchy, deepest first."""
    if not CGROUP_ROOT.exists():
        return
    tops = [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]
    for top in tops:
        path = top / name
        if not path.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def mounts_under(base: Path) -> list[str]:
    """Mount points below ``base``, deepest first."""
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _unmount_under(base: Path) -> None:
    """Detach every mount below ``base``: rmtree must never walk into a mount."""
    for point in mounts_under(base):
        subprocess.run(["umount", "-l", point], capture_output=True)


@dataclass
class Engine:
    """One engine (skiffd or dockerd) with a private folder, socket and cgroup parent."""

    name: str
    base: Path
    proc: subprocess.Popen[bytes] | None = None
    cgroup_parent: str = field(default_factory=lambda: f"skiff-bench-{secrets.token_hex(3)}")

    @property
    def socket(self) -> str:
        return str(self.base / "engine.sock")

    @property
    def host(self) -> str:
        return "unix://" + self.socket

    @property
    def log_path(self) -> Path:
        return self.base / "daemon.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.host
        env["SKIFF_HOST"] = self.host
        env["DOCKER_CONFIG"] = str(self.base / "docker-config")
        env.pop("DOCKER_CONTEXT", None)
        return env

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # cwd: its own folder, never a checkout's, whose skiff/ would shadow
            # the package of the interpreter's venv (``-m`` puts cwd first)
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=self.base)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"{self.name} exited with {self.proc.returncode}:\n"
                                  f"{self.logs()}")
            if ping(self.socket):
                return
            time.sleep(0.01)  # a start is timed to its first answer: 10 ms resolution
        raise EngineError(f"{self.name} did not answer within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def docker(self, *args: str, timeout: float = 300, check: bool = True,
               input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run([DOCKER_CLI, *args], env=self.env(), capture_output=True,
                             timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise EngineError(f"{self.name}: docker {' '.join(args)} failed "
                              f"({res.returncode}): {res.stderr.decode(errors='replace')}"
                              f"--- {self.name} log ---\n{self.logs()[-3000:]}")
        return res

    def timed(self, *args: str, timeout: float = 300) -> float:
        """Seconds one docker command takes, from exec to exit; it must succeed."""
        t0 = time.perf_counter()
        self.docker(*args, timeout=timeout)
        return time.perf_counter() - t0

    def processes(self) -> list[ProcInfo]:
        return processes_of(str(self.base))

    def remove_all_containers(self) -> None:
        ids = self.docker("ps", "-aq", check=False).stdout.decode().split()
        if ids:
            self.docker("rm", "-f", *ids, check=False, timeout=600)

    def stop(self, timeout: float = 60) -> None:
        """Stop the daemon and everything it started; leave no mount, process or cgroup."""
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.remove_all_containers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        # Whatever outlived the daemon (a managed containerd, shims) goes too.
        for _ in range(50):
            left = [p.pid for p in self.processes()]
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        _unmount_under(self.base)
        _cleanup_cgroups(self.cgroup_parent)


class Skiffd(Engine):
    """A private skiffd (python -m skiff.core.daemon) with its default drivers.

    ``config`` adds daemon.json keys (``userns-remap`` ...); ``name`` labels
    its column when several skiffd are compared.  ``python`` is the interpreter
    that runs it: another checkout's venv gives the code before a change, in
    the same run as the code after it.
    """

    def __init__(self, base: Path, storage_driver: str | None = None,
                 config: dict[str, object] | None = None, name: str = "skiffd",
                 python: str = sys.executable) -> None:
        super().__init__(name, base)
        self.storage_driver = storage_driver
        self.config = dict(config or {})
        self.python = python

    def command(self) -> list[str]:
        cfg: dict[str, object] = {
            "data-root": str(self.base / "data"),
            "exec-root": str(self.base / "exec"),
            "pidfile": str(self.base / "skiffd.pid"),
            "hosts": [self.host],
            "cgroup-parent": self.cgroup_parent,
        }
        if self.storage_driver:
            cfg["storage-driver"] = self.storage_driver
        cfg.update(self.config)
        path = self.base / "daemon.json"
        path.write_text(json.dumps(cfg, indent=2))
        return [self.python, "-m", "skiff.core.daemon", "--config-file", str(path)]

    def bootstrap_busybox(self) -> None:
        res = subprocess.run([self.python, "-m", "skiff.cli.main", "image", "bootstrap",
                              "busybox"], env=self.env(), capture_output=True, timeout=120)
        if res.returncode != 0:
            raise EngineError(f"skiff image bootstrap busybox failed: "
                              f"{res.stderr.decode(errors='replace')}")


class Dockerd(Engine):
    """A private dockerd (Debian's docker.io) with its own managed containerd.

    No bridge and no iptables: the harness runs it inside a network namespace
    of its own, and the workloads use ``--network none`` on both engines, so
    network set-up (a later benchmark) does not weigh on these numbers.
    """

    def __init__(self, base: Path, storage_driver: str = "overlay2") -> None:
        super().__init__("dockerd", base)
        self.storage_driver = storage_driver

    @staticmethod
    def available() -> bool:
        return os.path.exists(DOCKERD) and shutil.which("containerd") is not None

    def command(self) -> list[str]:
        cfg = self.base / "daemon.json"
        cfg.write_text("{}\n")
        return [DOCKERD, "--config-file", str(cfg),
                "--data-root", str(self.base / "data"),
                "--exec-root", str(self.base / "exec"),
                "--pidfile", str(self.base / "dockerd.pid"),
                "-H", self.host,
                "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                "--userland-proxy=false",
                "--cgroup-parent", self.cgroup_parent,
                "--storage-driver", self.storage_driver, "--log-driver", "json-file"]
