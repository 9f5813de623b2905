"""skiffd as a process: refusals at start, the pid file, driver choice, clean shutdown."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.daemon import SKIFFD, Daemon, daemon_config, running_daemon


def start_refused(tmp_path: Path, text: str, *flags: str) -> str:
    cfg = tmp_path / "daemon.json"
    cfg.write_text(text)
    res = subprocess.run([*SKIFFD, "--config-file", str(cfg), *flags], capture_output=True,
                         timeout=60)
    assert res.returncode == 1, res
    return res.stderr.decode()


def base_config(tmp_path: Path, **kw: object) -> dict:
    return daemon_config(tmp_path, **kw)


@pytest.mark.parametrize("patch,expect", [
    ({"storage-driver": "zfs"}, "storage driver 'zfs' is not installed"),
    ({"log-driver": "splunk"}, "logging driver 'splunk' is not installed"),
    ({"no-such-key": 1}, "unknown configuration key(s): no-such-key"),
    ({"debug": "yes"}, "invalid value for 'debug'"),
])
def test_refused_with_key_named(tmp_path: Path, patch: dict, expect: str) -> None:
    cfg = base_config(tmp_path)
    cfg.update(patch)
    err = start_refused(tmp_path, json.dumps(cfg))
    assert expect in err, err
    if "not installed" in expect:
        assert "installed" in err and ("vfs" in err or "json-file" in err)
    assert not Path(cfg["hosts"][0].removeprefix("unix://")).exists()


def test_refused_malformed_json(tmp_path: Path) -> None:
    err = start_refused(tmp_path, '{"debug": tru}')
    assert "malformed JSON" in err and "daemon.json" in err


def test_refused_flag_and_file(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    err = start_refused(tmp_path, json.dumps(cfg), "--data-root", str(tmp_path / "other"))
    assert "both as a flag and in the configuration file" in err and "data-root" in err


def test_second_daemon_refused_by_pidfile(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "one") as d:
        cfg = dict(d.config)
        cfg["hosts"] = [f"unix://{tmp_path}/other.sock"]
        err = start_refused(tmp_path, json.dumps(cfg))
        assert "pid file found" in err
        assert d.docker("version").returncode == 0


def test_second_daemon_refused_by_socket(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "one") as d:
        cfg = dict(d.config)
        cfg["pidfile"] = str(tmp_path / "other.pid")
        err = start_refused(tmp_path, json.dumps(cfg))
        assert "already" in err or "in use" in err, err
        assert d.docker("version").returncode == 0


def test_auto_selects_overlay2_and_says_so(default_skiffd: Daemon) -> None:
    info = json.loads(default_skiffd.docker("info", "--format", "{{json .}}", check=True).stdout)
    assert info["Driver"] == "overlay2"
    assert "storage.auto_selected" in default_skiffd.logs()
    res = default_skiffd.docker("run", "--rm", "busybox", "echo", "hello", check=True)
    assert res.stdout == b"hello\n"


def test_socket_mode_and_sigterm_shutdown(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as d:
        sock = Path(d.socket)
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
        assert Path(d.config["pidfile"]).read_text().strip().isdigit()
        d.skiff("image", "bootstrap", "busybox")
        d.docker("run", "-d", "busybox", "sleep", "300", check=True)
        rc = d.stop()
        assert rc == 0, d.logs()
        assert not sock.exists()
        assert not Path(d.config["pidfile"]).exists()
        # the running container was stopped with the daemon, and comes back exited
        d.start()
        ps = d.docker("ps", "-a", "--format", "{{.Status}}", check=True).stdout.decode()
        assert ps.startswith("Exited"), ps


def test_skiff_cli_info_and_run(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d", **{"storage-driver": "vfs"}) as d:
        made = d.skiff("image", "bootstrap", "busybox").stdout.decode().split()
        image_id = json.loads(d.docker("inspect", "busybox", check=True).stdout)[0]["Id"]
        assert made == ["busybox:latest", image_id]
        info = d.skiff("info").stdout.decode()
        assert "Storage Driver: vfs" in info and "json-file" in info
        res = d.skiff("run", "--rm", "busybox", "echo", "ahoy")
        assert res.stdout == b"ahoy\n"
        res = d.skiff("run", "--rm", "busybox", "sh", "-c", "exit 4", check=False)
        assert res.returncode == 4
