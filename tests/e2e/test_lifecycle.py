"""Lifecycle with the stock CLI: restart policies, --rm, rename, pause, prune, ps
filters, wait conditions, names and ID prefixes."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, poll, running_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base: Path = tmp_path_factory.mktemp("skiffd-lifecycle")
    with running_daemon(base, **{"storage-driver": "overlay2"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def ok(d: Daemon, *args: str, timeout: float = 60) -> str:
    return d.docker(*args, check=True, timeout=timeout).stdout.decode().strip()


def inspect(d: Daemon, name: str) -> dict[str, Any]:
    return json.loads(ok(d, "inspect", name))[0]


def events(d: Daemon, since: float, *filters: str) -> list[dict[str, Any]]:
    args = ["events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
            "--format", "{{json .}}"]
    for f in filters:
        args += ["--filter", f]
    return [json.loads(line) for line in ok(d, *args).splitlines() if line.strip()]


# -- restart policies -----------------------------------------------------------


def test_on_failure_3_restarts_exactly_three_times(daemon: Daemon) -> None:
    name = uniq("onfail")
    since = time.time() - 0.01
    ok(daemon, "run", "-d", "--name", name, "--network", "none", "--restart", "on-failure:3",
       "busybox", "sh", "-c", "exit 3")

    def settled() -> dict[str, Any] | None:
        info = inspect(daemon, name)
        s = info["State"]
        if s["Status"] == "exited" and not s["Restarting"] and info["RestartCount"] == 3:
            return info
        return None

    info = poll(settled, what="three restarts")
    assert info["State"]["ExitCode"] == 3
    assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    # no fourth restart comes later
    time.sleep(1.0)
    assert inspect(daemon, name)["RestartCount"] == 3
    evs = events(daemon, since, f"container={name}")
    actions = [e["Action"] for e in evs]
    assert actions.count("die") == 4
    assert actions.count("start") == 4
    assert all(e["Actor"]["Attributes"]["exitCode"] == "3" for e in evs if e["Action"] == "die")
    ok(daemon, "rm", name)


def test_restart_policy_validation(daemon: Daemon) -> None:
    res = daemon.docker("create", "--restart", "always:3", "busybox", "true")
    assert res.returncode != 0
    assert b"maximum retry count cannot be used with restart policy 'always'" in res.stderr
    res = daemon.docker("create", "--restart", "sometimes", "busybox", "true")
    assert res.returncode != 0
    # the CLI refuses --rm with --restart itself; the API says it too
    res = daemon.docker("create", "--rm", "--restart", "always", "busybox", "true")
    assert res.returncode != 0


def test_stop_cancels_a_pending_restart(daemon: Daemon) -> None:
    name = uniq("always")
    # a run of 0 s: the back-off grows to seconds quickly, so a stop finds it waiting
    ok(daemon, "run", "-d", "--name", name, "--network", "none", "--restart", "always",
       "busybox", "false")
    poll(lambda: inspect(daemon, name)["RestartCount"] >= 4, what="four restarts")
    poll(lambda: inspect(daemon, name)["State"]["Restarting"], what="restarting state")
    assert re.match(r"Restarting \(1\)", ok(daemon, "ps", "--filter", f"name={name}",
                                            "--format", "{{.Status}}"))
    assert name in ok(daemon, "ps", "--filter", "status=restarting", "--format", "{{.Names}}")
    ok(daemon, "stop", name)
    info = inspect(daemon, name)
    assert info["State"]["Status"] == "exited" and not info["State"]["Restarting"]
    count = info["RestartCount"]
    time.sleep(1.5)  # the point: longer than a restart's back-off, so a late restart shows
    assert inspect(daemon, name)["State"]["Status"] == "exited"
    assert inspect(daemon, name)["RestartCount"] == count
    ok(daemon, "rm", name)


def test_update_restart_policy(daemon: Daemon) -> None:
    name = uniq("upd")
    ok(daemon, "create", "--name", name, "busybox", "true")
    ok(daemon, "update", "--restart", "on-failure:2", name)
    assert inspect(daemon, name)["HostConfig"]["RestartPolicy"] == {
        "Name": "on-failure", "MaximumRetryCount": 2}
    res = daemon.docker("update", "--restart", "always:2", name)
    assert res.returncode != 0 and (
        b"maximum retry count cannot be used with restart policy 'always'" in res.stderr)
    ok(daemon, "rm", name)
    rm_name = uniq("updrm")
    ok(daemon, "create", "--rm", "--name", rm_name, "busybox", "true")
    res = daemon.docker("update", "--restart", "always", rm_name)
    assert res.returncode != 0 and b"AutoRemove is enabled" in res.stderr
    ok(daemon, "rm", rm_name)


def test_daemon_restart_policies_and_rm(tmp_path: Path) -> None:
    """always comes back after a daemon restart, unless-stopped after docker stop
    does not, and an --rm container that exited while skiffd was down is removed."""
    with running_daemon(tmp_path / "d", **{"storage-driver": "vfs"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        for name, policy in (("always", "always"), ("alwaysstopped", "always"),
                             ("unless", "unless-stopped"),
                             ("unlessstopped", "unless-stopped"), ("never", "no")):
            ok(d, "run", "-d", "--name", name, "--network", "none", "--restart", policy,
               "busybox", "sleep", "300")
        ok(d, "stop", "-t", "1", "unlessstopped", "alwaysstopped")
        assert inspect(d, "unlessstopped")["State"]["Status"] == "exited"
        ok(d, "run", "-d", "--rm", "--name", "autorm", "--network", "none", "busybox",
           "sleep", "300")
        d.stop()
        # skiffd stopped every container on the way out; --rm ones left a record
        assert (d.data_root / "containers").is_dir()
        d.start()

        def running(name: str) -> bool:
            return bool(inspect(d, name)["State"]["Running"])

        # Docker: a stopped `always` container comes back when the daemon starts
        poll(lambda: running("always") and running("unless") and running("alwaysstopped"),
             what="autostart")
        assert not running("unlessstopped")
        assert not running("never")
        poll(lambda: d.docker("inspect", "autorm").returncode != 0, what="--rm removal")
        assert "autorm" not in ok(d, "ps", "-a", "--format", "{{.Names}}").split()
        ok(d, "rm", "-f", "always", "alwaysstopped", "unless", "unlessstopped", "never")


def test_rm_container_removed_on_exit(daemon: Daemon) -> None:
    name = uniq("rm")
    ok(daemon, "run", "-d", "--rm", "--name", name, "--network", "none", "busybox", "true")
    poll(lambda: daemon.docker("inspect", name).returncode != 0, what="removal")


# -- rename, pause, restart, prune ------------------------------------------------------


def test_rename(daemon: Daemon) -> None:
    a, b, other = uniq("ren"), uniq("ren"), uniq("ren")
    since = time.time() - 0.01
    cid = ok(daemon, "create", "--name", a, "busybox", "true")
    ok(daemon, "create", "--name", other, "busybox", "true")
    ok(daemon, "rename", a, b)
    assert inspect(daemon, b)["Id"] == cid
    assert inspect(daemon, b)["Name"] == "/" + b
    assert daemon.docker("inspect", a).returncode != 0
    res = daemon.docker("rename", b, other)
    assert res.returncode != 0 and b"is already in use" in res.stderr
    res = daemon.docker("rename", b, "bad name!")
    assert res.returncode != 0 and b"Invalid container name" in res.stderr
    evs = events(daemon, since, "event=rename")
    assert [(e["Actor"]["Attributes"]["oldName"], e["Actor"]["Attributes"]["name"])
            for e in evs] == [("/" + a, b)]
    # the old name is free again
    ok(daemon, "create", "--name", a, "busybox", "true")
    ok(daemon, "rm", a, b, other)


def test_pause_unpause_and_stop_a_paused_container(daemon: Daemon) -> None:
    name = uniq("pause")
    since = time.time() - 0.01
    ok(daemon, "run", "-d", "--name", name, "--network", "none", "busybox",
       "sh", "-c", "while true; do date +%s%N > /tmp/t; usleep 20000; done")
    ok(daemon, "pause", name)
    info = inspect(daemon, name)
    assert info["State"]["Paused"] and info["State"]["Status"] == "paused"
    assert info["State"]["Running"]
    assert ok(daemon, "ps", "--filter", "status=paused", "--format", "{{.Names}}") == name
    assert "(Paused)" in ok(daemon, "ps", "--filter", f"name={name}", "--format",
                            "{{.Status}}")
    # frozen: the processes do not run (the state file of the freezer says so too)
    pid = info["State"]["Pid"]
    stat = Path(f"/proc/{pid}/stat").read_text()
    assert stat.rsplit(")", 1)[1].split()[0] in ("D", "S", "T")
    res = daemon.docker("pause", name)
    assert res.returncode != 0 and b"already paused" in res.stderr
    ok(daemon, "unpause", name)
    assert inspect(daemon, name)["State"]["Status"] == "running"
    res = daemon.docker("unpause", name)
    assert res.returncode != 0 and b"is not paused" in res.stderr
    ok(daemon, "pause", name)
    ok(daemon, "stop", "-t", "2", name, timeout=30)
    info = inspect(daemon, name)
    assert info["State"]["Status"] == "exited" and not info["State"]["Paused"]
    actions = [e["Action"] for e in events(daemon, since, f"container={name}")]
    assert actions.count("pause") == 2 and actions.count("unpause") == 2
    ok(daemon, "rm", name)


def test_kill_a_paused_container(daemon: Daemon) -> None:
    name = uniq("pkill")
    ok(daemon, "run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "300")
    ok(daemon, "pause", name)
    ok(daemon, "kill", name, timeout=30)
    poll(lambda: inspect(daemon, name)["State"]["Status"] == "exited", what="exit")
    assert inspect(daemon, name)["State"]["ExitCode"] == 137
    ok(daemon, "rm", name)


def test_restart_endpoint_emits_restart(daemon: Daemon) -> None:
    name = uniq("rst")
    since = time.time() - 0.01
    ok(daemon, "run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "300")
    pid1 = inspect(daemon, name)["State"]["Pid"]
    ok(daemon, "restart", "-t", "1", name)
    info = inspect(daemon, name)
    assert info["State"]["Running"] and info["State"]["Pid"] != pid1
    actions = [e["Action"] for e in events(daemon, since, f"container={name}")]
    assert actions[-3:] == ["die", "start", "restart"] or "restart" in actions
    assert actions.index("restart") > actions.index("die")
    ok(daemon, "rm", "-f", name)


def test_container_prune(daemon: Daemon) -> None:
    label = f"prune={secrets.token_hex(4)}"
    keep = uniq("keep")
    gone = [uniq("gone") for _ in range(2)]
    since = time.time() - 0.01
    for n in gone:
        ok(daemon, "run", "--name", n, "--label", label, "--network", "none", "busybox",
           "sh", "-c", "echo data > /big")
    ok(daemon, "run", "-d", "--name", keep, "--label", label, "--network", "none", "busybox",
       "sleep", "300")
    size = ok(daemon, "ps", "-a", "-s", "--filter", f"name={gone[0]}", "--format", "{{.Size}}")
    assert re.fullmatch(r"[\d.]+k?B \(virtual [\d.]+[kM]B\)", size), size
    assert not size.startswith("0B")  # /big is in the container's layer
    out = ok(daemon, "container", "prune", "-f", "--filter", f"label={label}")
    for n in gone:
        assert daemon.docker("inspect", n).returncode != 0
    assert inspect(daemon, keep)["State"]["Running"]
    assert "Total reclaimed space" in out
    evs = events(daemon, since, "event=prune")
    assert evs and evs[-1]["Type"] == "container" and "reclaimed" in evs[-1]["Actor"][
        "Attributes"]
    # until in the future of its creation keeps nothing back, in the past prunes nothing
    old = uniq("old")
    ok(daemon, "create", "--name", old, "busybox", "true")
    ok(daemon, "container", "prune", "-f", "--filter", "until=1h")
    assert daemon.docker("inspect", old).returncode == 0
    ok(daemon, "rm", "-f", keep, old)


# -- ps filters and format ------------------------------------------------------------


def test_ps_filters_and_format(daemon: Daemon) -> None:
    tag = secrets.token_hex(3)
    first, second, third = (f"psf-{tag}-{i}" for i in range(3))
    res = daemon.docker("run", "--name", first, "--label", f"grp={tag}", "--network", "none",
                        "busybox", "sh", "-c", "exit 7")
    assert res.returncode == 7
    ok(daemon, "run", "-d", "--name", second, "--label", f"grp={tag}", "--label", "x=1",
       "--network", "none", "busybox", "sleep", "300")
    cid3 = ok(daemon, "create", "--name", third, "--network", "none", "busybox", "true")

    def names(*filters: str, all_: bool = True) -> set[str]:
        args = ["ps", "--format", "{{.Names}}"] + (["-a"] if all_ else [])
        for f in filters:
            args += ["--filter", f]
        return {n for n in ok(daemon, *args).split() if tag in n}

    assert names(all_=False) == {second}
    assert names(f"label=grp={tag}") == {first, second}
    assert names("label=x") == {second}
    assert names("status=exited") == {first}
    assert names("status=created") == {third}
    assert names("exited=7") == {first}
    assert names(f"name={second}") == {second}
    assert names(f"id={cid3[:12]}") == {third}
    assert names(f"since={first}") == {second, third}
    assert names(f"before={third}") == {first, second}
    assert names("ancestor=busybox") == {first, second, third}
    assert names("ancestor=busybox:latest") == {first, second, third}
    image_id = inspect(daemon, first)["Image"]
    assert names(f"ancestor={image_id.removeprefix('sha256:')[:12]}") == {first, second, third}
    assert names("network=none") == {first, second, third}
    res = daemon.docker("ps", "--filter", "status=sleepy")
    assert res.returncode != 0 and b"invalid filter" in res.stderr.lower()
    fmt = ok(daemon, "ps", "--filter", f"name={second}", "--format",
             "{{.ID}}|{{.Image}}|{{.Command}}|{{.State}}|{{.Names}}|{{.Label \"x\"}}|"
             "{{.Networks}}|{{.RunningFor}}")
    cid, image, command, state, name, x, nets, running_for = fmt.split("|")
    assert cid == inspect(daemon, second)["Id"][:12]
    assert (image, state, name, x, nets) == ("busybox", "running", second, "1", "none")
    assert "sleep 300" in command and "ago" in running_for
    ok(daemon, "rm", "-f", first, second, third)


# -- wait conditions ------------------------------------------------------------------


def test_wait_conditions(daemon: Daemon) -> None:
    import docker

    client = docker.DockerClient(base_url=daemon.host)
    try:
        c = client.containers.create("busybox", ["sh", "-c", "sleep 0.3; exit 4"],
                                     network_mode="none")
        # not-running on a created container answers at once
        assert client.api.wait(c.id, condition="not-running", timeout=10)["StatusCode"] == 0
        c.start()
        assert c.wait(condition="next-exit", timeout=20)["StatusCode"] == 4
        done: dict[str, Any] = {}

        import threading

        def wait_removed() -> None:
            done.update(client.api.wait(c.id, condition="removed", timeout=20))

        t = threading.Thread(target=wait_removed)
        t.start()
        time.sleep(0.3)  # the point: a wait that did not wait for the removal would be back
        assert t.is_alive()  # it waits for the removal
        c.remove()
        t.join(20)
        assert done.get("StatusCode") == 4
    finally:
        client.close()


# -- names and IDs --------------------------------------------------------------------


def test_generated_names_and_name_rules(daemon: Daemon) -> None:
    cid = ok(daemon, "create", "busybox", "true")
    name = inspect(daemon, cid)["Name"].lstrip("/")
    assert re.fullmatch(r"[a-z]+_[a-z]+(_\d+)?", name)
    for bad in ("a", "-lead", "sp ace", "sl/ash"):
        res = daemon.docker("create", "--name", bad, "busybox", "true")
        assert res.returncode != 0, bad
        assert b"Invalid container name" in res.stderr, bad
    good = uniq("Good_name.1")
    ok(daemon, "create", "--name", good, "busybox", "true")
    res = daemon.docker("create", "--name", good, "busybox", "true")
    assert res.returncode != 0 and b"is already in use by container" in res.stderr
    ok(daemon, "rm", cid, good)


def test_id_prefixes(daemon: Daemon) -> None:
    ids = []
    # enough containers that two share a first hex digit
    for _ in range(17):
        ids.append(ok(daemon, "create", "--network", "none", "busybox", "true"))
    by_first: dict[str, list[str]] = {}
    for cid in ids:
        by_first.setdefault(cid[0], []).append(cid)
    shared = next(v for v in by_first.values() if len(v) > 1)
    res = daemon.docker("inspect", "--type", "container", shared[0][0])
    assert res.returncode != 0
    assert b"multiple IDs found with provided prefix" in res.stderr
    unique = ids[0][:12]
    assert inspect(daemon, unique)["Id"] == ids[0]
    res = daemon.docker("rm", "ffffffffffffffffzz")
    assert res.returncode != 0 and b"No such container" in res.stderr
    ok(daemon, "rm", *ids)


def test_ps_filters_is_task_and_health(daemon: Daemon) -> None:
    name = uniq("pstask")
    ok(daemon, "create", "--name", name, "busybox", "true")
    try:
        def names(*filters: str) -> list[str]:
            args = ["ps", "-a", "--format", "{{.Names}}"]
            for f in filters:
                args += ["--filter", f]
            return ok(daemon, *args).splitlines()

        assert name in names("is-task=false")
        assert names("is-task=true") == []
        assert name in names("health=none")
        assert names("health=healthy") == [] and names("health=starting") == []
        # dockerd's texts, word for word
        for bad, message in (("is-task=maybe", "Invalid filter 'is-task=maybe'"),
                             ("health=sick", "Unrecognised filter value for health: sick")):
            r = daemon.docker("ps", "-a", "--filter", bad)
            assert r.returncode != 0 and message in r.stderr.decode(), r.stderr
    finally:
        ok(daemon, "rm", "-f", name)


def test_ps_filters_publish_and_expose(daemon: Daemon) -> None:
    pub, exp = uniq("pspub"), uniq("psexp")
    ok(daemon, "create", "--name", pub, "-p", "18080:80", "-p", "18053:53/udp", "busybox", "true")
    ok(daemon, "create", "--name", exp, "--expose", "8125/udp", "busybox", "true")
    try:
        def names(f: str) -> set[str]:
            out = ok(daemon, "ps", "-a", "--filter", f, "--format", "{{.Names}}").splitlines()
            return set(out) & {pub, exp}

        assert names("publish=80") == {pub}
        assert names("publish=80/tcp") == {pub}
        assert names("publish=80/udp") == set()
        assert names("publish=50-60/udp") == {pub}
        assert names("publish=18080") == set()  # container ports, not host ports
        assert names("expose=8125/udp") == {exp}
        assert names("expose=8000-9000/udp") == {exp}
        assert names("expose=8125") == set()
        r = daemon.docker("ps", "-a", "--filter", "publish=http")
        assert r.returncode != 0 and "publish=http" in r.stderr.decode(), r.stderr
    finally:
        ok(daemon, "rm", "-f", pub, exp)
