"""SIGHUP reloads daemon.json as dockerd does (issue 21): live-restore, debug
and labels change without a restart, the ``daemon reload`` event says so,
and a file that cannot be applied leaves the daemon serving as it was."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.plugins.isolation import monitor
from tests.daemon import Daemon, poll, running_daemon


@pytest.fixture
def skiffd(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "d", **{"live-restore": False, "debug": False,
                                           "labels": ["site=a"]}) as d:
        yield d


def _info(d: Daemon) -> dict[str, Any]:
    return json.loads(d.docker("info", "--format", "{{json .}}", check=True).stdout)


def _log(d: Daemon) -> str:
    return d.log_path.read_text(errors="replace")


def _hup(d: Daemon, config: dict[str, Any] | str) -> None:
    """daemon.json rewritten (a dict, or raw text), then SIGHUP; returns once
    skiffd logged the reload's outcome."""
    path = d.base / "daemon.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    before = _log(d).count('"daemon.reload')
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    poll(lambda: _log(d).count('"daemon.reload') >= before + 2, 10, "the reload's outcome")


def test_a_reload_turns_live_restore_debug_and_labels_on(skiffd: Daemon) -> None:
    info = _info(skiffd)
    assert (info["LiveRestoreEnabled"], info["Debug"], info["Labels"]) == (False, False,
                                                                          ["site=a"])
    since = str(int(time.time()) - 1)
    skiffd.config.update({"live-restore": True, "debug": True,
                          "labels": ["site=b", "tier=db", "tier=db"]})
    _hup(skiffd, skiffd.config)
    assert '"daemon.reloaded"' in _log(skiffd), skiffd.logs()
    info = _info(skiffd)
    assert (info["LiveRestoreEnabled"], info["Debug"], info["Labels"]) == (
        True, True, ["site=b", "tier=db"])
    # debug logging is on in loggers already in use: every request is logged
    assert '"api.request"' in _log(skiffd)
    events = skiffd.docker("events", "--since", since, "--until", str(int(time.time()) + 1),
                           "--filter", "type=daemon", "--format", "{{json .}}",
                           check=True).stdout.decode().splitlines()
    reloads = [json.loads(e) for e in events if json.loads(e)["Action"] == "reload"]
    assert len(reloads) == 1, events
    attrs = reloads[0]["Actor"]["Attributes"]
    assert reloads[0]["Actor"]["ID"] == info["ID"]
    assert (attrs["live-restore"], attrs["debug"], attrs["labels"], attrs["name"]) == (
        "true", "true", '["site=b","tier=db"]', info["Name"])
    assert {"max-concurrent-downloads", "max-concurrent-uploads", "max-download-attempts",
            "insecure-registries", "registry-mirrors"} <= set(attrs)
    if not monitor.available():
        return
    # a container started once live-restore is on outlives a SIGTERM
    skiffd.skiff("image", "bootstrap", "busybox")
    cid = skiffd.docker("run", "-d", "busybox", "sleep", "1000",
                        check=True).stdout.decode().strip()
    pid = json.loads(skiffd.docker("inspect", "-f", "{{json .State.Pid}}", cid,
                                   check=True).stdout)
    assert skiffd.stop() == 0, skiffd.logs()
    os.kill(pid, 0)  # still running with no skiffd
    skiffd.start()
    state = json.loads(skiffd.docker("inspect", "-f", "{{json .State}}", cid,
                                     check=True).stdout)
    assert state["Running"] and state["Pid"] == pid, state


def test_a_bad_file_or_a_fixed_key_keeps_the_old_configuration(skiffd: Daemon) -> None:
    _hup(skiffd, '{"live-restore": tru')
    assert "malformed JSON" in _log(skiffd)
    # a key that takes a restart refuses all of the reload, named
    _hup(skiffd, {**skiffd.config, "labels": ["site=c"], "cgroup-parent": "elsewhere"})
    assert "cgroup-parent cannot be changed by a reload" in _log(skiffd)
    _hup(skiffd, {**skiffd.config, "labels": ["nokey"]})
    assert "bad attribute format" in _log(skiffd)
    assert skiffd.proc is not None and skiffd.proc.poll() is None
    info = _info(skiffd)
    assert (info["LiveRestoreEnabled"], info["Debug"], info["Labels"]) == (False, False,
                                                                          ["site=a"])
    assert '"daemon.reloaded"' not in _log(skiffd)
    # put back for the fixture's own stop
    (skiffd.base / "daemon.json").write_text(json.dumps(skiffd.config))


def _reload_events(docker: Any, since: str) -> list[dict[str, str]]:
    out = docker("events", "--since", since, "--until", str(int(time.time()) + 1),
                 "--filter", "type=daemon", "--filter", "event=reload",
                 "--format", "{{json .Actor.Attributes}}").stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def test_the_reload_event_names_what_dockerds_names(skiffd: Daemon, twin_dockerd: Any) -> None:
    since = str(int(time.time()) - 1)
    _hup(skiffd, skiffd.config)  # nothing changed: a reload all the same, as dockerd's
    assert twin_dockerd.proc is not None
    twin_dockerd.proc.send_signal(signal.SIGHUP)
    theirs = poll(lambda: _reload_events(twin_dockerd.docker, since), 20,
                  "dockerd's reload event")[-1]
    ours = _reload_events(skiffd.docker, since)[-1]
    assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))
    # the same defaults, written the same way
    for key in ("live-restore", "max-concurrent-downloads", "max-concurrent-uploads",
                "max-download-attempts", "registry-mirrors", "insecure-registries"):
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])
