"""The syslog and journald drivers and the delivery modes through skiffd and the
stock CLI; syslog compared with dockerd pointed at the same test servers."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.engines import Dockerd
from tests.daemon import Daemon, poll, running_daemon
from tests.e2e.conftest import twin_of
from tests.sidebyside import Side, SideBySide, unique
from tests.syslogserver import StalledServer, SyslogServer, make_ca


@pytest.fixture(scope="module")
def journal_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("journal") / "socket"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, journal_path: Path
           ) -> Iterator[Daemon]:
    mp = pytest.MonkeyPatch()
    # test-only: where skiffd's journald driver looks for the journal
    mp.setenv("SKIFF_JOURNAL_SOCKET", str(journal_path))
    try:
        with running_daemon(tmp_path_factory.mktemp("skiffd-logremote")) as d:
            d.skiff("image", "bootstrap", "busybox")
            yield d
    finally:
        mp.undo()


@pytest.fixture
def twin(daemon: Daemon, twin_dockerd: Dockerd, tmp_path: Path) -> Iterator[SideBySide]:
    t = twin_of(daemon, twin_dockerd, tmp_path)
    yield t
    t.close()


def messages(data: bytes, octet_counted: bool) -> list[bytes]:
    """The messages of a stream (newline or RFC 5425 octet framing) or of
    concatenated datagrams (each ends in a newline)."""
    if not octet_counted:
        return data.splitlines(keepends=True)
    out = []
    while data:
        size, _, rest = data.partition(b" ")
        out.append(rest[:int(size)])
        assert len(out[-1]) == int(size), data
        data = rest[int(size):]
    return out


_STAMP = re.compile(rb"^(<\d+>)([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) ")
_TRAD_PID = re.compile(rb"\[\d+\]: ")


def shape(msg: bytes) -> bytes:
    """A message with its times' digits and the daemon's PID masked: the rest
    (priority, host name, tag, framing, content) must be equal byte for byte."""
    if msg[msg.index(b">") + 1:].startswith(b"1 "):  # RFC 5424
        parts = msg.split(b" ", 7)
        parts[1] = re.sub(rb"\d", b"9", parts[1])
        parts[4] = b"<pid>"
        return b" ".join(parts)
    msg = _STAMP.sub(lambda m: m.group(1) + re.sub(rb"\d", b"9", m.group(2)) + b" ", msg)
    return _TRAD_PID.sub(b"[<pid>]: ", msg)


def run_logged(side: Side, name: str, *opts: str, script: str) -> Any:
    args = ["run", "--rm", "--name", name, "--network", "none", "--log-driver", "syslog"]
    for opt in opts:
        args += ["--log-opt", opt]
    return side.docker(*args, "busybox", "sh", "-c", script)


SCRIPT = "echo out; echo err >&2; echo; printf tail"


@pytest.mark.parametrize(("proto", "fmt"), [
    ("udp", "rfc5424"), ("tcp", "rfc5424"), ("tcp", ""), ("tcp", "rfc3164"),
    ("tcp+tls", "rfc5424micro"), ("tcp+tls", ""), ("unixgram", "rfc5424"),
])
def test_syslog_lines_as_dockerd_sends_them(twin: SideBySide, tmp_path: Path,
                                           proto: str, fmt: str) -> None:
    ca, pem = make_ca(tmp_path)
    name = unique("syslog")
    opts = [f"syslog-format={fmt}", "tag={{.Name}}/{{.ImageName}}", "syslog-facility=local1"]
    if proto == "tcp+tls":
        opts.append(f"syslog-tls-ca-cert={ca}")

    def on(side: Side) -> list[bytes]:
        server = SyslogServer(proto, tmp_path, pem)
        try:
            res = run_logged(side, name, f"syslog-address={server.address}", *opts,
                             script=SCRIPT)
            assert res.returncode == 0, res.stderr
            octets = proto == "tcp+tls" and fmt.startswith("rfc5424")
            got = messages(server.wait_for(3, b"\n"), octets)
        finally:
            server.stop()
            if proto in ("unix", "unixgram"):
                Path(server.path).unlink()
        return sorted(shape(m) for m in got)

    got = twin.same(on)
    # the empty line is not sent; the tag; local1 (17) * 8 + info (6) or err (3)
    assert len(got) == 3 and all(f" {name}/busybox".encode() in m for m in got)
    assert sum(m.startswith(b"<142>") for m in got) == 2  # out and tail
    assert sum(m.startswith(b"<139>") for m in got) == 1  # err


def create_status(side: Side, log_config: dict[str, Any]) -> tuple[int, str]:
    res = side.raw("POST", "/containers/create", params={"name": unique("bad")},
                   json={"Image": "busybox", "Cmd": ["true"],
                         "HostConfig": {"LogConfig": log_config, "NetworkMode": "none"}})
    if res.status_code == 201:
        side.raw("DELETE", f"/containers/{res.json()['Id']}", params={"force": "1"})
        return 201, ""
    return res.status_code, res.json()["message"]


@pytest.mark.parametrize("config", [
    {"Type": "syslog", "Config": {"syslog-facility": "nope"}},
    {"Type": "syslog", "Config": {"syslog-format": "rfc1"}},
    {"Type": "syslog", "Config": {"syslog-address": "localhost:514"}},
    {"Type": "syslog", "Config": {"syslog-address": "unix:///nonexistent/x"}},
    {"Type": "syslog", "Config": {"max-size": "1m"}},
    {"Type": "journald", "Config": {"syslog-address": "udp://x"}},
    {"Type": "json-file", "Config": {"mode": "quick"}},
    {"Type": "json-file", "Config": {"max-buffer-size": "1m"}},
    {"Type": "json-file", "Config": {"mode": "non-blocking", "max-buffer-size": "big"}},
    {"Type": "json-file", "Config": {"mode": "non-blocking", "max-buffer-size": "2m"}},
])
def test_options_refused_as_dockerd(twin: SideBySide, config: dict[str, Any]) -> None:
    twin.same(lambda side: create_status(side, config))


def test_unreachable_server_fails_the_start_as_dockerd(twin: SideBySide) -> None:
    server = SyslogServer("tcp")
    server.stop()

    def on(side: Side) -> tuple[int, str, str]:
        name = unique("gone")
        res = side.raw("POST", "/containers/create", params={"name": name}, json={
            "Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none",
                "LogConfig": {"Type": "syslog", "Config": {"syslog-address": server.address}}}})
        assert res.status_code == 201, res.text
        try:
            start = side.raw("POST", f"/containers/{name}/start")
            state = side.raw("GET", f"/containers/{name}/json").json()["State"]
            return start.status_code, start.json()["message"], state["Status"]
        finally:
            side.raw("DELETE", f"/containers/{name}", params={"force": "1"})

    _status_code, message, status = twin.same(on)
    assert message == (f"failed to initialize logging driver: dial tcp 127.0.0.1:{server.port}: "
                       "connect: connection refused")
    assert status == "created"


# -- delivery modes ----------------------------------------------------------------------


def drop_warnings(daemon: Daemon, cid: str) -> list[dict[str, Any]]:
    found = []
    for raw in daemon.log_path.read_text(errors="replace").splitlines():
        if "log.messages_dropped" in raw and cid in raw:
            found.append(json.loads(raw))
    return found


WRITER = "sleep 2; i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done"


@pytest.mark.parametrize("mode", ["non-blocking", "blocking"])
def test_server_gone_the_container_runs_on_and_drops_are_counted(
        daemon: Daemon, mode: str) -> None:
    """The server is stopped while the container runs: in both modes the
    container finishes at its own pace (a refused connection fails each
    message at once, and the driver does not redial for a second after a
    failed dial), and skiffd's log counts what was lost."""
    server = SyslogServer("tcp")
    cid = ""
    try:
        opts = ["--log-opt", f"syslog-address={server.address}", "--log-opt", f"mode={mode}"]
        if mode == "non-blocking":
            opts += ["--log-opt", "max-buffer-size=64k"]
        cid = daemon.docker("run", "-d", "--network", "none", "--log-driver", "syslog", *opts,
                            "busybox", "sh", "-c", WRITER, check=True).stdout.decode().strip()
        poll(lambda: server.connections, what="the driver's connection")
        server.stop()
        t0 = time.monotonic()
        res = daemon.docker("wait", cid, timeout=60, check=True)
        assert res.stdout.strip() == b"0"
        assert time.monotonic() - t0 < 15
        def syslog_drops() -> list[dict[str, Any]]:
            # the dual-logging cache has a delivery of its own, which may report too
            return [w for w in drop_warnings(daemon, cid) if w["driver"] == "syslog"]

        warnings = poll(syslog_drops, what="a drop warning")
        last = poll(lambda: (w := syslog_drops()) and w[-1]["total"] >= 19_000
                    and w[-1], what="the final count")
        # rate-limited: one at once, then at most one per 10 s, and the final count
        assert len(warnings) <= 3
        assert 19_000 <= last["total"] <= 20_000 and last["driver"] == "syslog"
        assert last["level"] == "warning"
        # the cache lost nothing: `docker logs` has all 20,000 lines, in order
        logs = daemon.docker("logs", cid, check=True).stdout
        assert logs.splitlines() == [b"line %d" % i for i in range(20_000)]
        assert {w["driver"] for w in drop_warnings(daemon, cid)} == {"syslog"}
    finally:
        server.stop()
        if cid:
            daemon.docker("rm", "-f", cid)


def test_a_stalled_server_blocks_only_a_blocking_container(daemon: Daemon) -> None:
    """A server that takes the connection and never reads: non-blocking mode
    fills its buffer, drops the rest and the container ends; blocking mode
    holds the container in its writes until the server goes away."""
    stalled = StalledServer()
    big = "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 100"
    ids: dict[str, str] = {}
    try:
        for mode in ("non-blocking", "blocking"):
            ids[mode] = daemon.docker(
                "run", "-d", "--network", "none", "--log-driver", "syslog", "--log-opt",
                f"syslog-address={stalled.address}", "--log-opt", f"mode={mode}",
                "busybox", "sh", "-c", big, check=True).stdout.decode().strip()
        t0 = time.monotonic()
        res = daemon.docker("wait", ids["non-blocking"], timeout=60, check=True)
        assert res.stdout.strip() == b"0" and time.monotonic() - t0 < 20
        assert daemon.docker("inspect", "-f", "{{.State.Running}}", ids["blocking"],
                             check=True).stdout.strip() == b"true"
        # the dual-logging cache is written as the output is read, whatever the
        # mode: the stalled remote dropped most of the 200,000 lines from its
        # buffer (1 MB: 10,000 of them), `docker logs` has every one
        logs = subprocess.run(["docker", "logs", ids["non-blocking"]], env=daemon.env(),
                              capture_output=True, timeout=120, check=True).stdout
        # (fold leaves the last line without its newline)
        assert len(logs) == 101 * 200_000 - 1 and logs.split(b"\n") == [b"x" * 100] * 200_000
        stalled.stop()  # gone: the blocked sends fail, the rest fail fast
        res = daemon.docker("wait", ids["blocking"], timeout=60, check=True)
        assert res.stdout.strip() == b"0"
        for cid in ids.values():
            poll(lambda cid=cid: drop_warnings(daemon, cid), what="a drop warning")
            # counted for the remote, never for the cache
            assert {w["driver"] for w in drop_warnings(daemon, cid)} == {"syslog"}
        dropped = poll(lambda: (w := drop_warnings(daemon, ids["non-blocking"]))
                       and w[-1]["total"] >= 100_000 and w[-1], what="the final count")
        assert dropped["total"] <= 200_000 - 10_000
    finally:
        stalled.stop()
        for cid in ids.values():
            daemon.docker("rm", "-f", cid)


# -- journald -----------------------------------------------------------------------------


def test_journald_refused_without_a_journal_then_delivers(daemon: Daemon,
                                                          journal_path: Path) -> None:
    res = daemon.docker("run", "--rm", "--network", "none", "--log-driver", "journald",
                        "busybox", "true")
    assert res.returncode != 0
    assert (f"journald is not enabled on this host: no journal listening on {journal_path}"
            in res.stderr.decode())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(journal_path))
    sock.settimeout(10)
    name = unique("journal")
    try:
        # a 40,000-byte line too: cut at 16 KiB into three entries, as dockerd's copier
        res = daemon.docker("run", "--name", name, "--network", "none",
                            "--log-driver", "journald",
                            "--label", "com.example.team=a", "--log-opt", "labels=com.example.team",
                            "busybox", "sh", "-c",
                            "echo hello; echo oops >&2; "
                            "head -c 40000 /dev/zero | tr '\\0' x; echo")
        assert res.returncode == 0, res.stderr
        entries = []
        for _ in range(5):
            data = sock.recv(1 << 17)
            entries.append(dict(line.split(b"=", 1) for line in data.splitlines()))
        # the dual-logging cache joins the pieces again
        logs = daemon.docker("logs", name, check=True)
    finally:
        sock.close()
        journal_path.unlink()
        daemon.docker("rm", "-f", name)
    assert logs.stdout == b"hello\n" + b"x" * 40000 + b"\n" and logs.stderr == b"oops\n"
    # dockerd's journald fields for the pieces: one id, ordinals from 1, the last
    # marked, CONTAINER_PARTIAL_MESSAGE on all but the last
    pieces = [e for e in entries if e[b"MESSAGE"].startswith(b"x")]
    assert [(len(e[b"MESSAGE"]), e[b"CONTAINER_PARTIAL_ORDINAL"], e[b"CONTAINER_PARTIAL_LAST"],
             e.get(b"CONTAINER_PARTIAL_MESSAGE")) for e in pieces] == [
        (16384, b"1", b"false", b"true"), (16384, b"2", b"false", b"true"),
        (7232, b"3", b"true", None)]
    assert len({e[b"CONTAINER_PARTIAL_ID"] for e in pieces}) == 1
    assert len(pieces[0][b"CONTAINER_PARTIAL_ID"]) == 64
    entries = [e for e in entries if e not in pieces]
    assert not any(k.startswith(b"CONTAINER_PARTIAL") for e in entries for k in e)
    by_message = {e[b"MESSAGE"]: e for e in entries}
    hello, oops = by_message[b"hello"], by_message[b"oops"]
    assert hello[b"PRIORITY"] == b"6" and oops[b"PRIORITY"] == b"3"
    assert hello[b"CONTAINER_NAME"] == name.encode()
    assert hello[b"IMAGE_NAME"] == b"busybox"
    assert len(hello[b"CONTAINER_ID"]) == 12
    assert hello[b"CONTAINER_ID_FULL"].startswith(hello[b"CONTAINER_ID"])
    assert hello[b"SYSLOG_IDENTIFIER"] == hello[b"CONTAINER_TAG"] == hello[b"CONTAINER_ID"]
    assert hello[b"COM_EXAMPLE_TEAM"] == b"a"
