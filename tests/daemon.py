"""A real skiffd for tests: its own data-root, exec-root, socket and cgroup parent."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.engines import ping

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
SKIFFD = [sys.executable, "-m", "skiff.core.daemon"]
SKIFF = [sys.executable, "-m", "skiff.cli.main"]


def poll(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """``check()``'s first truthy value, asked every 50 ms; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Daemon:
    """One running skiffd and helpers to drive it with the stock CLI and skiff."""

    base: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    #: a command the daemon runs under, e.g. ``nsenter --net=...`` (tests/multihost.py)
    wrap: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_path = self.base / "skiffd.log"

    @property
    def socket(self) -> str:
        return self.config["hosts"][0].removeprefix("unix://")

    @property
    def host(self) -> str:
        return "unix://" + self.socket

    @property
    def data_root(self) -> Path:
        return Path(self.config["data-root"])

    @property
    def root_dir(self) -> Path:
        """Where the daemon keeps its state (``docker info``'s DockerRootDir):
        the data-root, or with ``userns-remap`` its ``<uid>.<gid>`` directory.
        Found on disk, so it can be asked while the daemon is down."""
        if not self.config.get("userns-remap"):
            return self.data_root
        found = [p for p in self.data_root.iterdir()
                 if p.is_dir() and re.fullmatch(r"\d+\.\d+", p.name)]
        assert len(found) == 1, f"no single remapped root in {self.data_root}: {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.host
        env["DOCKER_CONFIG"] = str(self.base / "docker-config")
        env["SKIFF_HOST"] = self.host
        env.pop("DOCKER_CONTEXT", None)
        return env

    def start(self, timeout: float | None = None) -> None:
        if timeout is None:
            # under the VM rig (TCG) a daemon takes far longer to come up
            timeout = float(os.environ.get("SKIFF_TEST_DAEMON_TIMEOUT", "20"))
        cfg_path = self.base / "daemon.json"
        cfg_path.write_text(json.dumps(self.config, indent=2))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrap, *SKIFFD, "--config-file", str(cfg_path)], stdout=log, stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"skiffd exited with {self.proc.returncode}:\n{self.logs()}")
            if ping(self.socket):
                return
            # a refused connect costs microseconds; every test and every chaos
            # kill point waits out half a poll on average
            time.sleep(0.01)
        raise RuntimeError(f"skiffd did not answer within {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        self.proc = None
        return rc

    def settled(self, timeout: float = 60) -> None:
        """Wait until the layers and folders of removed containers are gone from disk.

        ``docker rm`` answers before the driver's files of the container's
        layers are removed (core/trash.py); their metadata waits under
        the layer store's ``tmp/`` until they are, so an empty ``tmp/`` means
        nothing is being removed.  For tests that compare the data-root's
        files before and after something."""
        from skiff.core.containers.manager import RETIRED_PREFIX

        exec_tmp = Path(self.config["exec-root"]) / "tmp"

        def idle() -> bool:
            # their folders wait in the two tmp/ folders (core/containers/manager.py)
            return (all(not any(tmp.iterdir())
                        for tmp in self.root_dir.glob("image/*/layerdb/tmp"))
                    and not any(self.root_dir.glob(f"tmp/{RETIRED_PREFIX}*"))
                    and not any(exec_tmp.glob(f"{RETIRED_PREFIX}*")))
        poll(idle, timeout, "the removed containers' layers and folders to be gone")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def docker(self, *args: str, input: bytes | None = None, timeout: float = 60,
               check: bool = False) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run([DOCKER, *args], env=self.env(), input=input,
                             capture_output=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({res.returncode}): "
                f"{res.stderr.decode(errors='replace')}\n--- skiffd log ---\n{self.logs()}"
            )
        return res

    def skiff(self, *args: str, check: bool = True, timeout: float = 60
              ) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run([*SKIFF, *args], env=self.env(), capture_output=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(
                f"skiff {' '.join(args)} failed ({res.returncode}): "
                f"{res.stderr.decode(errors='replace')}\n--- skiffd log ---\n{self.logs()}"
            )
        return res


def daemon_config(base: Path, **overrides: Any) -> dict[str, Any]:
    """A configuration that shares nothing with a real skiffd or dockerd."""
    tag = secrets.token_hex(3)
    cfg: dict[str, Any] = {
        "data-root": str(base / "data"),
        "exec-root": str(base / "exec"),
        "pidfile": str(base / "skiffd.pid"),
        "hosts": [f"unix://{base}/skiff.sock"],
        "cgroup-parent": f"skiff-test-{tag}",
        # Never skiff0/docker0: a bridge and a 10.x subnet of this daemon's own.
        "bridge": f"skf{tag}",
        "bip": f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250)}.1/24",
        "debug": True,
    }
    cfg.update(overrides)
    return cfg


@contextlib.contextmanager
def running_daemon(base: Path, **overrides: Any) -> Iterator[Daemon]:
    base.mkdir(parents=True, exist_ok=True)
    d = Daemon(base, daemon_config(base, **overrides))
    d.start()
    try:
        yield d
    finally:
        # Whatever the test left, the daemon must clean it up on the way out.
        d.docker("rm", "-f", *_all_containers(d), timeout=60) if _all_containers(d) else None
        rc = d.stop()
        assert rc == 0, f"skiffd exited with {rc} on SIGTERM:\n{d.logs()}"
        shutil.rmtree(base, ignore_errors=True)


def _all_containers(d: Daemon) -> list[str]:
    res = d.docker("ps", "-aq", timeout=30)
    return res.stdout.decode().split() if res.returncode == 0 else []
