"""A daemon no image, container or client can take down (issue 13, item 8).

Each test is one attack on the daemon's memory, threads or judgement, against
a real skiffd driven over its socket by raw HTTP (so a client can be as
hostile as it likes: send 512 bytes that claim 4 GiB, attach and never read,
upload one byte a second) and by the stock docker CLI.  Memory is read from
``/proc/<skiffd>/status`` (``VmRSS``, ``VmHWM``: the peak).

Where the protection is a limit inside the daemon, the same attack without
it is shown at the unit level (``tests/unit/test_tarlimits.py``,
``tests/unit/test_output_hub.py``); the slow-upload test also shows the
attack succeeding against what does share its thread pool.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core.containers.manager import RETIRED_PREFIX
from skiff.core.containers.pidproof import start_time
from skiff.core.engine import TRANSFER_THREADS
from tests.daemon import Daemon, poll
from tests.security.conftest import unique

MiB = 1 << 20
GiB = 1 << 30

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (skiffd)")


# -- a hostile client: raw HTTP on the unix socket ------------------------------------


def connect(d: Daemon, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(d.socket)
    return s


def request_head(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} /v1.41{path} HTTP/1.1", "Host: docker", *extra, "", ""]
    return "\r\n".join(lines).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def read_head(s: socket.socket, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, bytes after the head) of the response on ``s``."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before a response head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def read_body(s: socket.socket, headers: dict[str, str], rest: bytes) -> bytes:
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(rest) < length:
        data = s.recv(65536)
        if not data:
            break
        rest += data
    return rest if length < 0 else rest[:length]


def memory(d: Daemon) -> dict[str, int]:
    """skiffd's VmRSS and VmHWM, in bytes."""
    assert d.proc is not None
    out = {}
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def healthy(d: Daemon) -> None:
    """The daemon answers and still runs containers."""
    assert d.proc is not None and d.proc.poll() is None, d.logs()
    res = d.docker("run", "--rm", "busybox", "echo", "still-here", timeout=60)
    assert res.returncode == 0 and res.stdout == b"still-here\n", (res, d.logs())


def daemon_log(d: Daemon) -> str:
    return d.log_path.read_text(errors="replace")


def tmp_entries(d: Daemon) -> list[str]:
    """The daemon's temporary files, but for removed containers' folders, which
    the trash deletes on its own time (``RETIRED_PREFIX``)."""
    tmp = d.root_dir / "tmp"
    if not tmp.exists():
        return []
    return sorted(n for n in os.listdir(tmp) if not n.startswith(RETIRED_PREFIX))


# -- 1. tar headers ----------------------------------------------------------------------


def meta_header(kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo("././@LongLink")
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


def load_streamed(d: Daemon, first: bytes, most: int = 512 * MiB
                  ) -> tuple[int, bytes, int, float]:
    """POST /images/load with ``first`` then zeros, chunked, until the daemon answers.

    The body is made as it is sent (the client never holds it) and stops at
    ``most`` bytes.  Returns (status, body, bytes sent, seconds).
    """
    s = connect(d)
    t0 = time.monotonic()
    try:
        s.sendall(request_head("POST", "/images/load?quiet=1",
                               "Content-Type: application/x-tar",
                               "Transfer-Encoding: chunked") + chunk(first))
        sent = len(first)
        zeros = chunk(bytes(MiB))
        s.setblocking(False)
        while sent < most:
            readable, writable, _ = select.select([s], [s], [], 1)
            if readable:
                break
            if writable:
                try:
                    s.send(zeros)  # a partial send only misframes what is refused anyway
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += MiB
        status, headers, rest = read_head(s)
        body = read_body(s, headers, rest)
        return status, body, sent, time.monotonic() - t0
    finally:
        s.close()


@pytest.mark.parametrize(("kind", "what"), [
    pytest.param(tarfile.GNUTYPE_LONGNAME, "GNU long name", id="gnu-longname"),
    pytest.param(tarfile.XHDTYPE, "PAX extended", id="pax"),
])
def test_load_4gib_tar_header_is_a_quick_400_with_flat_memory(
        skiffd: Daemon, kind: bytes, what: str) -> None:
    """Memory exhaustion through archive metadata (Go's archive/tar ErrFieldTooLong
    class; Python's tarfile reads a long-name or PAX header whole): a ``docker load``
    whose first header claims a 4 GiB long name / PAX record is refused from the
    header alone, without the daemon reading or allocating the payload."""
    # warm up the same path (a refused load) so the measurement sees only the attack
    status, _, _, _ = load_streamed(skiffd, meta_header(kind, 2 * MiB), most=4 * MiB)
    assert status == 400
    before = memory(skiffd)
    tmp_before = tmp_entries(skiffd)
    status, body, sent, took = load_streamed(skiffd, meta_header(kind, 4 * GiB))
    after = memory(skiffd)
    assert status == 400, body
    message = json.loads(body)["message"]
    assert f"{what} header at byte 0 claims 4294967296 bytes" in message, message
    assert "1 MiB" in message
    assert sent < 256 * MiB, f"the daemon let the client send {sent} bytes first"
    assert took < 30
    grew = after["VmHWM"] - before["VmHWM"]
    assert grew < 32 * MiB, f"skiffd's peak memory grew by {grew} bytes: {before} -> {after}"
    poll(lambda: tmp_entries(skiffd) == tmp_before, 10, "the load's spool to go")
    healthy(skiffd)


def _sparse_map_garbage() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("s")
        info.size = 4
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
        tf.addfile(info, io.BytesIO(b"xxxx"))
    return out.getvalue()


BAD_TARS = {
    "not-a-tar": b"this is not a tar archive\n" * 100,
    "bad-gzip": b"\x1f\x8b\x08\x00" + b"\xff" * 2000,
    "4gib-long-name": meta_header(tarfile.GNUTYPE_LONGNAME, 4 * GiB) + bytes(1024),
    "pax-chain": b"".join(meta_header(tarfile.XHDTYPE, 0) for _ in range(5000)),
    "sparse-map-garbage": _sparse_map_garbage(),
}


def post(d: Daemon, method: str, path: str, body: bytes) -> tuple[int, str]:
    s = connect(d)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # the daemon may refuse (and close) before the whole body is sent
            s.sendall(request_head(method, path, "Content-Type: application/x-tar",
                                   f"Content-Length: {len(body)}") + body)
        status, headers, rest = read_head(s)
        data = read_body(s, headers, rest)
    finally:
        s.close()
    try:
        return status, json.loads(data)["message"] if data else ""
    except (ValueError, KeyError):
        return status, data.decode(errors="replace")


@pytest.mark.parametrize("bad", sorted(BAD_TARS))
def test_bad_tars_are_a_400_that_leaves_nothing(skiffd: Daemon, bad: str) -> None:
    """Bad input, every tar endpoint (load, import, cp into a container): a 400 with a
    message, no 5xx (stock tarfile let a ValueError or a RecursionError out of some of
    these), nothing left behind, the daemon serving on."""
    box = unique("cp-target")
    skiffd.docker("create", "--name", box, "busybox", "true", check=True)
    images = skiffd.docker("images", "-qa", check=True).stdout
    tmp_before = tmp_entries(skiffd)
    try:
        for method, path in (("POST", "/images/load"),
                             ("POST", "/images/create?fromSrc=-&repo=bad-import"),
                             ("PUT", f"/containers/{box}/archive?path=/tmp")):
            status, message = post(skiffd, method, path, BAD_TARS[bad])
            assert status == 400, (path, status, message)
            assert len(message) > 10, (path, message)
        assert skiffd.docker("images", "-qa", check=True).stdout == images
        poll(lambda: tmp_entries(skiffd) == tmp_before, 10, "spools to go")
        failed = [line for line in daemon_log(skiffd).splitlines()
                  if "api.handler_failed" in line]
        assert not failed, failed
    finally:
        skiffd.docker("rm", "-f", box)
    healthy(skiffd)


def _load_archive_with(manifest: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tf.addfile(info, io.BytesIO(manifest))
    return out.getvalue()


def test_deeply_nested_json_is_a_400(skiffd: Daemon) -> None:
    """Bad input, uncontrolled recursion (CWE-674) in the JSON parser: JSON
    nested 100 000 deep in a request body, a ``filters`` parameter or a loaded
    archive's manifest makes Python's parser raise RecursionError; it must be a 400,
    not a 500."""
    deep = b"[" * 100_000
    status, message = post(skiffd, "POST", "/containers/create", deep)
    assert status == 400 and "nested too deeply" in message, (status, message)
    status, message = post(skiffd, "GET", "/containers/json?filters=" + "%5B" * 50_000, b"")
    assert status == 400 and "invalid filters" in message, (status, message)
    status, message = post(skiffd, "POST", "/images/load", _load_archive_with(deep))
    assert status == 400 and "not valid JSON" in message, (status, message)
    healthy(skiffd)


# -- 2. attach / logs -f readers that never read ------------------------------------------


@contextlib.contextmanager
def chatty_container(d: Daemon) -> Iterator[str]:
    """A container writing as fast as it can, its log rotated so the disk is safe."""
    name = unique("chatty")
    d.docker("run", "-d", "--name", name, "--log-opt", "max-size=8m", "--log-opt",
             "max-file=2", "busybox", "sh", "-c", "yes 'chatty chatty chatty chatty "
             "chatty chatty chatty chatty chatty chatty chatty chatty'", check=True)
    try:
        yield name
    finally:
        d.docker("rm", "-f", name, timeout=60)


def attach_raw(d: Daemon, name: str, logs_follow: bool = False) -> socket.socket:
    """A client that attaches (or follows the logs), reads the response head, then stops."""
    s = connect(d, rcvbuf=4096)
    if logs_follow:
        s.sendall(request_head("GET", f"/containers/{name}/logs?follow=1&stdout=1&stderr=1"))
    else:
        s.sendall(request_head("POST",
                               f"/containers/{name}/attach?stream=1&stdout=1&stderr=1",
                               "Upgrade: tcp", "Connection: Upgrade"))
    status, _, _ = read_head(s)
    assert status in (101, 200), status
    return s


def read_for(s: socket.socket, seconds: float) -> int:
    """Bytes a reading client gets in ``seconds``."""
    got = 0
    deadline = time.monotonic() + seconds
    s.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            data = s.recv(1 << 16)
        except TimeoutError:
            continue
        if not data:
            break
        got += len(data)
    return got


def test_readers_that_never_read_do_not_grow_memory_or_stall_anyone(skiffd: Daemon) -> None:
    """Resource exhaustion by a slow consumer (dockerd's attach broadcaster blocks the
    container on its slowest reader; an unbounded queue grows the daemon without end):
    eight attached clients and four ``logs -f`` clients that never read, on a container
    writing as fast as it can.  The daemon's memory stays flat, another attach still
    streams, ``docker logs`` answers, and the log keeps being written."""
    with chatty_container(skiffd) as name:
        time.sleep(1)  # the point: the baseline is taken with the log pump at full speed
        before = memory(skiffd)
        stuck = [attach_raw(skiffd, name) for _ in range(8)]
        stuck += [attach_raw(skiffd, name, logs_follow=True) for _ in range(4)]
        try:
            time.sleep(8)  # well over 8 x 1 MiB goes by: each stuck reader is dropped
            after = memory(skiffd)
            grew = after["VmRSS"] - before["VmRSS"]
            assert grew < 48 * MiB, f"skiffd grew by {grew} bytes: {before} -> {after}"
            assert "container.reader_dropped" in daemon_log(skiffd)

            reader = attach_raw(skiffd, name)
            try:
                assert read_for(reader, 3) > MiB, "another attach must still stream"
            finally:
                reader.close()
            res = skiffd.docker("logs", "-t", "--tail", "1", name, timeout=60)
            assert res.returncode == 0, res
            stamp = res.stdout.split(b" ", 1)[0].decode()
            logged = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            assert abs(time.time() - logged) < 10, f"the log stalled: last line at {stamp}"
            assert memory(skiffd)["VmRSS"] - before["VmRSS"] < 64 * MiB
        finally:
            for s in stuck:
                s.close()
    healthy(skiffd)


def dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out.append(data[:n])
        data = data[n + 2:]
    return b"".join(out)


PAD = "p" * 100


def read_to_end(s: socket.socket, chunked: bool) -> bytes:
    body = b""
    s.settimeout(60)
    while not (chunked and body.endswith(b"0\r\n\r\n")):
        data = s.recv(1 << 20)
        if not data:
            break
        body += data
    return dechunk(body) if chunked else body


@pytest.mark.parametrize("how", ["attach", "logs-follow"])
def test_reader_that_falls_behind_loses_nothing(skiffd: Daemon, how: str) -> None:
    """The other side of dropping a slow reader from the live output: it reads on
    from the log file, so a client that paused gets every line exactly once (and the
    daemon held none of it meanwhile), where dockerd would have stopped the container
    for it."""
    from skiff.core.api.streams import demux_streams

    name = unique("counter")
    lines = 60000
    skiffd.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                  f"sleep 1; i=0; while [ $i -lt {lines} ]; do echo $i {PAD}; i=$((i+1)); done; "
                  "sleep 1", check=True)
    try:
        s = attach_raw(skiffd, name, logs_follow=how == "logs-follow")
        try:
            time.sleep(6)  # the container writes far more than 1 MiB of queue meanwhile
            body = read_to_end(s, chunked=how == "logs-follow")
        finally:
            s.close()
        out, _ = demux_streams(body)
        got = out.decode().splitlines()
        assert got == [f"{i} {PAD}" for i in range(lines)], (len(got), got[:2], got[-2:])
        assert "catching_up" in daemon_log(skiffd)
    finally:
        skiffd.docker("rm", "-f", name)


# -- 3. slow uploads never take the threads create/start/stop need -----------------------


class Trickle:
    """``n`` ``docker load`` uploads that send a byte now and then and never finish."""

    def __init__(self, d: Daemon, n: int) -> None:
        spools_before = len(tmp_entries(d))
        self.socks = []
        for _ in range(n):
            s = connect(d)
            # the start of a tar header: the daemon's reader waits for the rest
            s.sendall(request_head("POST", "/images/load", "Content-Type: application/x-tar",
                                   "Transfer-Encoding: chunked") + chunk(b"a" * 100))
            self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        # each upload holds its thread once the daemon spools it: wait for all of them
        try:
            poll(lambda: len(tmp_entries(d)) >= spools_before + n, 20, f"{n} upload spools")
        except BaseException:
            self.close()
            raise

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.send(chunk(b"a"))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def test_slow_uploads_do_not_stop_create_start_stop_rm(skiffd: Daemon) -> None:
    """Thread-pool exhaustion by slow clients (slowloris on blocking work): 16
    ``docker load`` bodies trickling a byte every half second hold 16 worker threads;
    create, start, stop, rm and ``docker run --rm`` still complete, and the daemon is
    healthy once the uploads are cut."""
    tmp_before = tmp_entries(skiffd)
    uploads = Trickle(skiffd, 16)
    try:
        res = skiffd.docker("run", "--rm", "busybox", "true", timeout=30)
        assert res.returncode == 0, (res, skiffd.logs())
        name = unique("lifecycle")
        skiffd.docker("create", "--name", name, "busybox", "sleep", "60", check=True,
                      timeout=30)
        skiffd.docker("start", name, check=True, timeout=30)
        skiffd.docker("stop", "-t", "1", name, check=True, timeout=30)
        skiffd.docker("rm", name, check=True, timeout=30)
    finally:
        uploads.close()
    poll(lambda: tmp_entries(skiffd) == tmp_before, 20, "the uploads' spools to go")
    healthy(skiffd)
    # the cut uploads are bad input (400), never a failure of the daemon
    failed = [line for line in daemon_log(skiffd).splitlines() if "api.handler_failed" in line]
    assert not failed, failed


def test_slow_uploads_do_hold_the_transfer_threads(skiffd: Daemon, tmp_path: Path) -> None:
    """The same attack against what shares its thread pool succeeds: with every
    transfer thread held by a trickling upload, a ``docker save`` waits until they
    are cut (so the uploads really hold threads, and only transfers pay for it)."""
    uploads = Trickle(skiffd, TRANSFER_THREADS)
    out = tmp_path / "busybox.tar"
    save = None
    try:
        save = subprocess.Popen(["docker", "save", "-o", str(out), "busybox"],
                                env=skiffd.env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        time.sleep(5)  # the point: long enough for a save that was not held to finish
        assert save.poll() is None, "docker save finished although every transfer thread was held"
        res = skiffd.docker("run", "--rm", "busybox", "true", timeout=30)
        assert res.returncode == 0, res
    finally:
        uploads.close()
    assert save is not None
    assert save.wait(60) == 0, save.stderr.read() if save.stderr else ""
    assert out.stat().st_size > 0
    healthy(skiffd)


# -- 4. restore never kills a pid it has not proved ---------------------------------------


def crash(d: Daemon) -> None:
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    d.proc = None


def record_of(d: Daemon, cid: str) -> tuple[Path, dict]:
    path = d.root_dir / "containers" / cid / "config.v2.json"
    return path, json.loads(path.read_text())


def inspect_state(d: Daemon, name: str) -> dict:
    res = d.docker("inspect", "-f", "{{json .State}}", name, check=True)
    return json.loads(res.stdout)


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of the host, which no container owns."""
    p = subprocess.Popen(["sleep", "600"])
    yield p
    p.kill()
    p.wait()


def crash_with_pid_taken(d: Daemon, victim: subprocess.Popen[bytes]) -> tuple[str, Path]:
    """A running container, skiffd killed, the container gone and its pid "recycled":
    the record now names ``victim``'s pid (with the container's own start time)."""
    name = unique("restore")
    cid = d.docker("run", "-d", "--name", name, "busybox", "sleep", "600",
                   check=True).stdout.decode().strip()
    pid = inspect_state(d, name)["Pid"]
    crash(d)
    os.kill(pid, 9)  # the container dies while no daemon watches
    exitcode = Path(d.config["exec-root"]) / "containers" / cid / "exitcode"
    poll(exitcode.exists, 10, "the shim to record the exit")
    exitcode.unlink()  # as if the shim had died too: restore must decide on its own
    path, rec = record_of(d, cid)
    assert rec["State"]["Running"] and rec["State"]["pid_start"] > 0
    rec["State"]["Pid"] = victim.pid
    path.write_text(json.dumps(rec))
    return name, path


def test_restore_leaves_a_recycled_pid_alone(skiffd: Daemon, victim: subprocess.Popen[bytes]
                                             ) -> None:
    """PID reuse (CWE-367, time-of-check/time-of-use on a pid number; runc keeps the
    init's start time for this): after a crash the record of a running
    container names a pid that now belongs to an unrelated process.  The restarted
    daemon leaves it alone and reports the container exited."""
    name, _ = crash_with_pid_taken(skiffd, victim)
    skiffd.start()
    state = inspect_state(skiffd, name)
    assert state["Status"] == "exited" and not state["Running"], state
    assert state["ExitCode"] == 255
    time.sleep(0.5)  # the point: a restore that signalled the pid would have killed it by now
    assert victim.poll() is None, "restore killed a process that was not the container's"
    assert "container.restore_pid_not_ours" in daemon_log(skiffd)
    skiffd.docker("rm", name, check=True)
    healthy(skiffd)


def test_restore_kills_what_it_proves(skiffd: Daemon, victim: subprocess.Popen[bytes]) -> None:
    """The check off: the same record with the victim's real start time (the proof
    holds) gets the victim killed, so only the proof stood between it and SIGKILL."""
    name, path = crash_with_pid_taken(skiffd, victim)
    rec = json.loads(path.read_text())
    rec["State"]["pid_start"] = start_time(victim.pid)
    path.write_text(json.dumps(rec))
    skiffd.start()
    state = inspect_state(skiffd, name)
    assert state["Status"] == "exited" and state["ExitCode"] == 137, state
    assert victim.wait(10) == -9
    skiffd.docker("rm", name, check=True)


def test_restore_after_a_crash_kills_the_running_container(skiffd: Daemon) -> None:
    """The ordinary crash: the container outlived skiffd, its pid proved, it is killed."""
    name = unique("crashed")
    skiffd.docker("run", "-d", "--name", name, "busybox", "sleep", "600", check=True)
    pid = inspect_state(skiffd, name)["Pid"]
    crash(skiffd)
    assert start_time(pid) is not None, "the container should outlive the daemon"
    skiffd.start()
    state = inspect_state(skiffd, name)
    assert state["Status"] == "exited" and state["ExitCode"] == 137, state
    poll(lambda: start_time(pid) is None, 10, "the container's process to go")
    skiffd.docker("rm", name, check=True)
    healthy(skiffd)
