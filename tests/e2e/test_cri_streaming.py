"""The CRI's streaming server (docs/cri.md#streaming): ``crictl exec`` (with and
without a TTY, stdin, resize, the exit code), ``crictl attach`` and ``crictl
port-forward`` over SPDY/3.1 against skiffd, and the server's refusals."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from skiff.core.cri import spdy
from skiff.core.cri.runtime_v1 import api_pb2 as pb
from tests.daemon import Daemon
from tests.e2e import test_cri as base
from tests.e2e.test_cri import Cri, container_config, cri_path, crictl, pod_config

# test_cri's daemon (the CRI on, busybox bootstrapped), crictl and a CRI client
tools = base.tools
skiffd = base.skiffd
cri = base.cri


@pytest.fixture(scope="module")
def pod(tools: Path, skiffd: Daemon, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("cri-stream")
    podcfg = pod_config(tmp, "streams")
    pid = crictl(tools, skiffd, "runp", str(podcfg)).stdout.strip()
    yield pid, podcfg
    crictl(tools, skiffd, "rmp", "-f", pid, check=False)


def start(tools: Path, d: Daemon, pod: tuple[str, Path], name: str, **extra: object) -> str:
    pid, podcfg = pod
    cfg = container_config(podcfg.parent, name, **extra)
    ctr = crictl(tools, d, "create", "--no-pull", pid, str(cfg), str(podcfg)).stdout.strip()
    crictl(tools, d, "start", ctr)
    return ctr


@pytest.fixture(scope="module")
def sleeper(tools: Path, skiffd: Daemon, pod: tuple[str, Path]) -> str:
    return start(tools, skiffd, pod, "sleeper")


def test_exec_without_tty(tools: Path, skiffd: Daemon, sleeper: str) -> None:
    res = crictl(tools, skiffd, "exec", sleeper, "sh", "-c",
                 "echo out; echo err >&2; exit 3", check=False)
    assert res.stdout == "out\n" and res.stderr.startswith("err\n"), res
    # the exit code, through the error stream's Status (crictl itself exits 1)
    assert res.returncode != 0 and "command terminated with exit code 3" in res.stderr
    res = crictl(tools, skiffd, "exec", sleeper, "true")
    assert res.returncode == 0 and res.stdout == ""
    # a command that cannot run: its exit code and why, on stderr
    res = crictl(tools, skiffd, "exec", sleeper, "/no/such/program", check=False)
    assert res.returncode != 0 and "no/such/program" in res.stderr, res
    assert re.search(r"exit code 12[67]", res.stderr), res


def test_exec_with_stdin(tools: Path, skiffd: Daemon, sleeper: str) -> None:
    endpoint = "unix://" + cri_path(skiffd)
    big = os.urandom(200_000).hex()  # more than one frame, more than one read
    res = subprocess.run([str(tools / "crictl"), "--runtime-endpoint", endpoint, "exec", "-i",
                          sleeper, "sh", "-c", "wc -c; echo done"], input=big,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CRI_CONFIG_FILE": "/dev/null"})
    assert res.returncode == 0, res
    assert res.stdout.split() == [str(len(big)), "done"]


def run_in_pty(cmd: list[str], rows: int, cols: int, typed: bytes = b"",
               timeout: float = 30, ready: bytes = b"") -> tuple[int, bytes]:
    """``cmd`` with a terminal of rows x cols as its stdin/stdout/stderr;
    ``typed`` is typed once ``ready`` shows (or after a second)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "CRI_CONFIG_FILE": "/dev/null"},
                            start_new_session=True)
    os.close(slave)
    out = b""
    start = time.monotonic()
    deadline = start + timeout
    try:
        while time.monotonic() < deadline:
            if typed and ((ready in out) if ready else time.monotonic() - start > 1.0):
                os.write(master, typed)
                typed = b""
            readable, _, _ = select.select([master], [], [], 0.2)
            if readable:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=5), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_exec_with_a_tty_and_its_size(tools: Path, skiffd: Daemon, sleeper: str) -> None:
    """``crictl exec -it``: a terminal in the container, sized as crictl's own
    (the resize stream), and its exit code."""
    endpoint = "unix://" + cri_path(skiffd)
    code, out = run_in_pty([str(tools / "crictl"), "--runtime-endpoint", endpoint, "exec",
                            "-it", sleeper, "sh", "-c", "stty size; tty; exit 5"], 33, 101)
    text = out.decode(errors="replace")
    assert "33 101" in text and "/dev/pts/" in text, text
    assert "command terminated with exit code 5" in text, text
    # typed input reaches the shell through the terminal
    code, out = run_in_pty([str(tools / "crictl"), "--runtime-endpoint", endpoint, "exec",
                            "-it", sleeper, "sh"], 24, 80, typed=b"echo typed-$((6*7))\rexit\r")
    assert b"typed-42" in out and code == 0 and b"exit code" not in out, out


def spdy_exec(url: str, streams: dict[int, str], typed: bytes, resize: bytes = b"",
              timeout: float = 20) -> dict[int, bytes]:
    """A bare remotecommand v4 client on skiff's own SPDY framing (no escape
    proxy in the way, as crictl has): open ``streams`` (id -> streamtype), send
    ``resize`` and ``typed``, read every stream until the error stream ends."""
    host, port = url.split("/")[2].split(":")
    path = "/" + url.split("/", 3)[3]
    sock = socket.create_connection((host, int(port)), timeout)
    try:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
                      "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
                      "Content-Length: 0\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        codec = spdy.HeaderCodec()
        parser = spdy.Parser(spdy.HeaderCodec())
        ids = {v: k for k, v in streams.items()}
        for sid, kind in streams.items():
            sock.sendall(spdy.syn_stream(codec, sid, {"streamtype": kind}))
        if resize:
            sock.sendall(spdy.data_frame(ids["resize"], resize))
        time.sleep(1.0)  # the command runs and sets its terminal up
        sock.sendall(spdy.data_frame(ids["stdin"], typed))
        got: dict[int, bytes] = {sid: b"" for sid in streams}
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                break
            for f in parser.feed(data):
                if f.kind == 0:
                    got[f.stream_id] += f.data
                    done = done or (f.stream_id == ids["error"] and f.fin)
        return got
    finally:
        sock.close()


def test_exec_with_a_tty_passes_docker_detach_keys(skiffd: Daemon, cri: Cri,
                                                    sleeper: str) -> None:
    """Docker's detach keys (Ctrl-P Ctrl-Q) are input like any other in a CRI
    exec: kubelet has none, and a program (an editor) may want them."""
    url = cri.runtime.Exec(pb.ExecRequest(
        container_id=sleeper, tty=True, stdin=True, stdout=True,
        cmd=["sh", "-c", "stty raw -echo -ixon; dd bs=1 count=3 2>/dev/null | od -An -tx1"]),
        timeout=10).url
    got = spdy_exec(url, {1: "error", 3: "stdin", 5: "stdout", 7: "resize"},
                    typed=b"\x10\x11z", resize=b'{"Width":80,"Height":24}\n')
    assert b"10 11 7a" in got[5], got
    assert json.loads(got[1])["status"] == "Success", got


def sleeping(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline == f"sleep\0{marker}\0".encode():
                found.append(int(pid))
    return found


def test_exec_ends_with_its_client(cri: Cri, sleeper: str) -> None:
    """A client gone before its command ended takes the command with it, as with
    containerd: nobody is left to read it."""
    url = cri.runtime.Exec(pb.ExecRequest(container_id=sleeper, stdout=True, stderr=True,
                                          cmd=["sleep", "301"]), timeout=10).url
    host, port = url.split("/")[2].split(":")
    sock = socket.create_connection((host, int(port)), 10)
    try:
        sock.sendall((f"POST /{url.split('/', 3)[3]} HTTP/1.1\r\nHost: x\r\n"
                      "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                      "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
                      "Content-Length: 0\r\n\r\n").encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        codec = spdy.HeaderCodec()
        for sid, kind in ((1, "error"), (3, "stdout"), (5, "stderr")):
            sock.sendall(spdy.syn_stream(codec, sid, {"streamtype": kind}))
        deadline = time.monotonic() + 20
        while not sleeping("301") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sleeping("301")
    finally:
        sock.close()
    deadline = time.monotonic() + 10
    while sleeping("301") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sleeping("301")


def test_attach(tools: Path, skiffd: Daemon, pod: tuple[str, Path]) -> None:
    """``crictl attach -i``: the container's stdin gets what crictl reads, its
    output comes back; with stdin_once the end of stdin ends the container."""
    ctr = start(tools, skiffd, pod, "shell", command=["sh"], stdin=True, stdin_once=True)
    endpoint = "unix://" + cri_path(skiffd)
    res = subprocess.run([str(tools / "crictl"), "--runtime-endpoint", endpoint, "attach",
                          "-i", ctr], input="echo attached-$((2+3))\necho to-err >&2\n",
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CRI_CONFIG_FILE": "/dev/null"})
    assert res.returncode == 0, res
    assert res.stdout == "attached-5\n" and "to-err" in res.stderr
    st = json.loads(crictl(tools, skiffd, "inspect", "-o", "json", ctr).stdout)["status"]
    assert st["state"] == "CONTAINER_EXITED"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_forward_into_the_pod(tools: Path, skiffd: Daemon, pod: tuple[str, Path]
                                   ) -> None:
    """``crictl port-forward POD LOCAL:8080``: the pod's loopback port 8080 (its
    own network namespace, not the host's) answers on the local port."""
    start(tools, skiffd, pod, "web", command=[
        "sh", "-c", "mkdir -p /w && echo forwarded-ok > /w/index.html && "
        "exec httpd -f -p 127.0.0.1:8080 -h /w"])
    local = free_port()
    endpoint = "unix://" + cri_path(skiffd)
    proc = subprocess.Popen([str(tools / "crictl"), "--runtime-endpoint", endpoint,
                             "port-forward", pod[0], f"{local}:8080"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CRI_CONFIG_FILE": "/dev/null"})
    try:
        body = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                for _ in range(3):  # three connections over one session
                    with urllib.request.urlopen(f"http://127.0.0.1:{local}/",
                                                timeout=5) as r:
                        body = r.read()
                        assert body == b"forwarded-ok\n"
                break
            except (OSError, http.client.HTTPException):
                time.sleep(0.3)
        assert body == b"forwarded-ok\n", proc.stderr
        # port 8080 is the pod's, not the host's
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", 8080), 1):
            pass
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_port_forward_to_a_closed_port_says_so(tools: Path, skiffd: Daemon,
                                               pod: tuple[str, Path]) -> None:
    local = free_port()
    endpoint = "unix://" + cri_path(skiffd)
    proc = subprocess.Popen([str(tools / "crictl"), "--runtime-endpoint", endpoint,
                             "port-forward", pod[0], f"{local}:9"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CRI_CONFIG_FILE": "/dev/null"})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", local), 2) as s:
                    s.settimeout(10)
                    assert s.recv(100) == b""  # the pod refused: the connection ends
                break
            except ConnectionRefusedError:
                time.sleep(0.3)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"failed to connect to localhost:9 inside the pod" in err, err


def test_streaming_refusals(skiffd: Daemon, cri: Cri, sleeper: str) -> None:
    def refused(call: object, request: object) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)  # type: ignore[operator]
        return info.value

    err = refused(cri.runtime.Exec, pb.ExecRequest(container_id="nope", cmd=["true"],
                                                   stdout=True))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = refused(cri.runtime.Exec, pb.ExecRequest(container_id=sleeper, cmd=["true"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one of stdin, stdout, or stderr must be set" in err.details()
    err = refused(cri.runtime.Exec, pb.ExecRequest(container_id=sleeper, cmd=["true"],
                                                   tty=True, stderr=True))
    assert "tty and stderr cannot both be true" in err.details()
    err = refused(cri.runtime.Attach, pb.AttachRequest(container_id=sleeper, stdin=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # created without stdin
    err = refused(cri.runtime.PortForward, pb.PortForwardRequest(pod_sandbox_id="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    url = cri.runtime.Exec(pb.ExecRequest(container_id=sleeper, cmd=["true"], stdout=True),
                           timeout=10).url
    assert url.startswith("http://127.0.0.1:")  # loopback, a port of the kernel's choice
    host, port = url.split("/")[2].split(":")

    def post(path: str, headers: dict[str, str]) -> tuple[int, str]:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", path, headers=headers)
        r = conn.getresponse()
        out = r.status, (r.read().decode() if r.status != 101 else "")
        conn.close()
        return out

    path = "/" + url.split("/", 3)[3]
    status, text = post(path, {})
    assert status == 400 and "missing upgrade headers" in text
    status, text = post(path, {"Connection": "Upgrade", "Upgrade": "websocket"})
    assert status == 400 and "SPDY/3.1" in text
    status, text = post(path, {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                               "X-Stream-Protocol-Version": "v1.channel.k8s.io"})
    assert status == 403 and "v4.channel.k8s.io" in text
    status, text = post("/exec/not-a-token", {"Connection": "Upgrade",
                                              "Upgrade": "SPDY/3.1"})
    assert status == 404 and "unknown or expired exec token" in text
    # a URL serves one client: spent by the first upgrade
    status, _ = post(path, {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                            "X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    assert status == 101
    status, text = post(path, {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                               "X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    assert status == 404
