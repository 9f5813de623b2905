"""``docker events`` against a real skiffd: container, image and network events,
since/until, filters and a live subscriber (docker-py)."""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.daemon import Daemon, running_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base: Path = tmp_path_factory.mktemp("skiffd-events")
    with running_daemon(base, **{"storage-driver": "overlay2"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def ok(d: Daemon, *args: str, input: bytes | None = None) -> str:
    return d.docker(*args, input=input, check=True).stdout.decode().strip()


def events(d: Daemon, since: float, *filters: str, until: float | None = None
           ) -> list[dict[str, Any]]:
    until = time.time() if until is None else until
    args = ["events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
            "--format", "{{json .}}"]
    for f in filters:
        args += ["--filter", f]
    return [json.loads(line) for line in ok(d, *args).splitlines() if line.strip()]


def test_run_and_rm_in_order_with_attributes(daemon: Daemon) -> None:
    name = f"ev-{secrets.token_hex(4)}"
    since = time.time() - 0.01
    res = daemon.docker("run", "--name", name, "--label", "team=sea", "--network", "none",
                        "busybox", "sh", "-c", "exit 5")
    assert res.returncode == 5
    cid = ok(daemon, "inspect", "-f", "{{.Id}}", name)
    ok(daemon, "rm", name)
    evs = events(daemon, since, f"container={name}")
    actions = [e["Action"] for e in evs]
    assert actions == ["create", "attach", "start", "die", "destroy"], actions
    for e in evs:
        assert e["Type"] == "container"
        assert e["Actor"]["ID"] == cid
        attrs = e["Actor"]["Attributes"]
        assert attrs["name"] == name and attrs["image"] == "busybox"
        assert attrs["team"] == "sea"
        assert e["status"] == e["Action"] and e["id"] == cid and e["from"] == "busybox"
    assert evs[3]["Actor"]["Attributes"]["exitCode"] == "5"
    times = [e["timeNano"] for e in evs]
    assert times == sorted(times)
    # the container filter by ID matches too
    assert [e["Action"] for e in events(daemon, since, f"container={cid}")] == actions


def test_filters(daemon: Daemon) -> None:
    label = f"evf={secrets.token_hex(4)}"
    since = time.time() - 0.01
    a = ok(daemon, "create", "--label", label, "--network", "none", "busybox", "true")
    b = ok(daemon, "create", "--network", "none", "busybox", "true")
    ok(daemon, "start", a)
    ok(daemon, "wait", a)
    ok(daemon, "rm", a, b)
    by_label = events(daemon, since, f"label={label}")
    assert {e["Actor"]["ID"] for e in by_label} == {a}
    assert [e["Action"] for e in by_label] == ["create", "start", "die", "destroy"]
    starts = events(daemon, since, "event=start")
    assert [e["Actor"]["ID"] for e in starts] == [a]
    creates = events(daemon, since, "event=create", "type=container")
    assert [e["Actor"]["ID"] for e in creates] == [a, b]
    assert events(daemon, since, "type=image") == []
    by_image = events(daemon, since, "image=busybox", "event=destroy")
    assert {e["Actor"]["ID"] for e in by_image} == {a, b}
    assert events(daemon, since, "image=nosuchimage") == []
    res = daemon.docker("events", "--since", "1", "--until", "2", "--filter", "colour=red")
    assert res.returncode != 0 and b"invalid filter" in res.stderr


def test_until_in_the_past_returns_at_once(daemon: Daemon) -> None:
    past = time.time() - 3600
    res = daemon.docker("events", "--since", f"{past - 60:.0f}", "--until", f"{past:.0f}",
                        timeout=15)
    assert res.returncode == 0 and res.stdout == b""


def test_live_subscriber_sees_events_as_they_happen(daemon: Daemon) -> None:
    client = docker.DockerClient(base_url=daemon.host)
    seen: list[dict[str, Any]] = []
    got_start = threading.Event()
    stream = client.events(decode=True, filters={"type": "container"})

    def read() -> None:
        for e in stream:
            seen.append(e)
            if e.get("Action") == "start":
                got_start.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        c = client.containers.run("busybox", ["sleep", "30"], detach=True, network_mode="none")
        try:
            assert got_start.wait(20), seen
            assert [e["Action"] for e in seen] == ["create", "start"]
            assert seen[-1]["Actor"]["ID"] == c.id
        finally:
            c.remove(force=True)
    finally:
        stream.close()
        reader.join(10)
        client.close()


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"hello\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_image_events(daemon: Daemon, tmp_path: Path) -> None:
    tag = f"evimg-{secrets.token_hex(3)}"
    since = time.time() - 0.01
    busybox_id = ok(daemon, "image", "inspect", "-f", "{{.Id}}", "busybox")
    ok(daemon, "tag", "busybox", f"{tag}:one")
    ok(daemon, "rmi", f"{tag}:one")
    imported = ok(daemon, "import", "-", f"{tag}:imp", input=_tarball())
    archive = tmp_path / "img.tar"
    ok(daemon, "save", "-o", str(archive), f"{tag}:imp")
    ok(daemon, "rmi", f"{tag}:imp")
    ok(daemon, "load", "-i", str(archive))
    ok(daemon, "rmi", f"{tag}:imp")
    evs = events(daemon, since, "type=image")
    got = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"].get("name")) for e in evs]
    assert got[:2] == [("tag", busybox_id, f"{tag}:one"), ("untag", busybox_id, busybox_id)]
    assert ("import", imported, imported) in got
    assert ("save", imported, imported) in got
    assert ("load", imported, f"{tag}:imp") in got
    actions = [a for a, _, _ in got]
    assert actions == ["tag", "untag", "import", "save", "untag", "delete", "load", "untag",
                       "delete"], got
    assert all(e["status"] == e["Action"] for e in evs)
    # a delete for busybox never happened
    assert ("delete", busybox_id, busybox_id) not in got


def test_network_events(daemon: Daemon) -> None:
    net = f"evnet-{secrets.token_hex(3)}"
    since = time.time() - 0.01
    net_id = ok(daemon, "network", "create", net)
    cid = ok(daemon, "run", "-d", "--network", net, "busybox", "sleep", "30")
    ok(daemon, "rm", "-f", cid)
    ok(daemon, "network", "rm", net)
    evs = events(daemon, since, "type=network", f"network={net_id}")
    got = [(e["Action"], e["Actor"]["Attributes"].get("container")) for e in evs]
    assert got == [("create", None), ("connect", cid), ("disconnect", cid), ("destroy", None)]
    for e in evs:
        assert e["Actor"]["ID"] == net_id
        assert e["Actor"]["Attributes"]["name"] == net
        assert e["Actor"]["Attributes"]["type"] == "bridge"
    # the network filter takes the name too
    assert len(events(daemon, since, f"network={net}")) == 4


def test_push_and_pull_events(daemon: Daemon, tmp_path: Path) -> None:
    from tests.registry import REGISTRY, running_registry

    if not Path(REGISTRY).exists():
        pytest.skip("needs Debian's docker-registry (scripts/install.sh --test)")
    with running_registry(tmp_path / "registry") as reg:
        ref = f"{reg.host}/ev/busybox:{secrets.token_hex(3)}"
        since = time.time() - 0.01
        ok(daemon, "tag", "busybox", ref)
        ok(daemon, "push", ref)
        ok(daemon, "rmi", ref)
        ok(daemon, "pull", ref)
        ok(daemon, "rmi", ref)
        evs = events(daemon, since, "type=image", "event=push", "event=pull")
        got = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]["name"]) for e in evs]
        assert got == [("push", ref, ref), ("pull", ref, ref)]


def test_save_event_after_archive_is_complete(daemon: Daemon) -> None:
    """Docker publishes "save" once the export has been written, not when it starts."""
    # busybox's layer (a static binary) is far larger than the pipe and socket buffers, so
    # the export cannot have finished while the client has read only its first chunk.
    tag = f"evsave-{secrets.token_hex(3)}:x"
    ok(daemon, "tag", "busybox", tag)
    imported = ok(daemon, "image", "inspect", "-f", "{{.Id}}", tag)
    api = docker.APIClient(base_url=daemon.host)
    try:
        since = time.time() - 0.01
        chunks = api.get_image(tag, chunk_size=512)
        first = next(iter(chunks))
        assert first
        mid = [e for e in events(daemon, since, "type=image", "event=save")]
        assert mid == [], mid  # the archive is still being streamed
        data = first + b"".join(chunks)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert "manifest.json" in tf.getnames()
        deadline = time.monotonic() + 10
        got: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not got:
            got = events(daemon, since, "type=image", "event=save")
        assert [e["Actor"]["ID"] for e in got] == [imported]
    finally:
        api.close()
        ok(daemon, "rmi", tag)


def test_rm_force_of_a_running_container_shows_kill_die_destroy(daemon: Daemon) -> None:
    since = time.time() - 0.01
    cid = ok(daemon, "run", "-d", "--network", "none", "busybox", "sleep", "300")
    ok(daemon, "rm", "-f", cid)
    evs = events(daemon, since, f"container={cid}")
    assert [e["Action"] for e in evs] == ["create", "start", "kill", "die", "destroy"]
    assert evs[2]["Actor"]["Attributes"]["signal"] == "9"
    assert evs[3]["Actor"]["Attributes"]["exitCode"] == "137"
