"""Interactive use through the stock docker CLI on a real pseudo-terminal.

Each test runs the docker CLI with a pty (the standard library's
``os.openpty``) as its controlling terminal, as a person's terminal would
be, types into the master side and reads what the CLI prints: ``run -it``,
Ctrl-C, detach keys, ``attach``, ``start -ai``, window resize; and ``-i``
without ``-t`` through pipes.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator

import pytest

from tests.daemon import DOCKER, Daemon, poll

PROMPT = re.compile(rb"/ # ")


class Term:
    """A command on a fresh pseudo-terminal that it has as controlling terminal."""

    def __init__(self, args: list[str], env: dict[str, str], rows: int = 24,
                 cols: int = 80) -> None:
        master, slave = os.openpty()
        self.fd = master
        self.set_size(rows, cols)

        def make_controlling() -> None:  # runs after setsid (start_new_session)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
            start_new_session=True, preexec_fn=make_controlling,
        )
        os.close(slave)
        self.buf = b""
        self.eof = False

    def set_size(self, rows: int, cols: int) -> None:
        """Resize the terminal: the kernel sends SIGWINCH to the CLI."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the CLI closed its side
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float = 20) -> bytes:
        """Read until ``pattern`` shows; return what came up to its end and consume it."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.buf)
            if m:
                seen, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return seen
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError(f"{pattern!r} not seen; the terminal shows {self.buf!r}")
            self._read(min(left, 0.5))

    def drain(self) -> None:
        """Forget what was printed so far."""
        self._read(0.05)
        self.buf = b""

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


@pytest.fixture
def term(default_skiffd: Daemon) -> Iterator[list[Term]]:
    """Terminals a test opens; closed (CLI killed) afterwards whatever happened."""
    terms: list[Term] = []
    yield terms
    for t in terms:
        t.close()


def open_term(terms: list[Term], d: Daemon, *args: str) -> Term:
    t = Term([DOCKER, *args], d.env())
    terms.append(t)
    return t


def state(d: Daemon, name: str) -> dict[str, object]:
    out = d.docker("inspect", "-f", "{{json .State}}", name, check=True).stdout
    return json.loads(out)


def processes(d: Daemon, name: str) -> str:
    return d.docker("exec", name, "ps", "-o", "pid,args", check=True).stdout.decode()


def name(tag: str) -> str:
    return f"it-{tag}-{os.getpid()}-{time.monotonic_ns() % 100000}"


def test_run_it_shell_and_ctrl_c(default_skiffd: Daemon, term: list[Term]) -> None:
    d = default_skiffd
    n = name("shell")
    t = open_term(term, d, "run", "-it", "--rm", "--name", n, "busybox", "sh")
    t.expect(PROMPT)
    t.send(b"echo $((6*7))\r")
    t.expect(b"\r\n42\r\n")
    t.expect(PROMPT)

    # Ctrl-C goes through the container's line discipline to the foreground job
    t.send(b"sleep 100\r")
    poll(lambda: "sleep 100" in processes(d, n), what="sleep 100 to run")
    t.drain()
    t.send(b"\x03")
    t.expect(PROMPT)
    poll(lambda: "sleep 100" not in processes(d, n), what="sleep 100 to stop")
    assert state(d, n)["Running"] is True  # the shell itself survived

    t.send(b"exit 0\r")
    assert t.wait() == 0
    poll(lambda: d.docker("inspect", n).returncode != 0, what="--rm to remove it")


def test_terminal_is_the_containers_own(default_skiffd: Daemon, term: list[Term]) -> None:
    """The runtime allocates the pty inside the container (as runc does): the
    shell's terminal is /dev/pts/0 of the container's own devpts."""
    d = default_skiffd
    n = name("ownpty")
    t = open_term(term, d, "run", "-it", "--rm", "--name", n, "busybox", "sh")
    t.expect(PROMPT)
    t.send(b"tty; test -t 0 && test -t 1 && echo stdin-is-a-tty\r")
    t.expect(b"\r\n/dev/pts/0\r\nstdin-is-a-tty\r\n")
    t.expect(PROMPT)
    t.send(b"ls /dev/pts; stat -c '%t,%T' /dev/console\r")
    # /dev/console is the terminal too (136, 0)
    t.expect(re.compile(rb"\r\n0 +ptmx\r\n88,0\r\n"))
    t.expect(PROMPT)
    # ps (from an exec, which has no terminal) shows the shell on pts/0; busybox
    # prints the terminal as major,minor
    ps = d.docker("exec", n, "ps", "-o", "pid,tty,args", check=True).stdout.decode()
    assert any(line.split()[:3] == ["1", "136,0", "sh"] for line in ps.splitlines()), ps
    t.send(b"exit 0\r")
    assert t.wait() == 0


def test_detach_keys_then_attach(default_skiffd: Daemon, term: list[Term]) -> None:
    d = default_skiffd
    n = name("detach")
    t = open_term(term, d, "run", "-it", "--name", n, "busybox", "sh")
    t.expect(PROMPT)
    t.send(b"X=attached\r")
    t.expect(PROMPT)
    t.send(b"\x10\x11")  # Ctrl-P Ctrl-Q
    assert t.wait() == 0  # the CLI detached, and says so with success
    assert state(d, n)["Running"] is True

    again = open_term(term, d, "attach", n)
    time.sleep(0.3)  # no output to wait on: the shell prints nothing on attach
    again.send(b"echo $X-$((6*7))\r")
    again.expect(b"attached-42")  # the same shell, its variable still set
    again.send(b"exit 3\r")
    assert again.wait() == 3
    poll(lambda: state(d, n)["Running"] is False, what="the container to stop")
    assert state(d, n)["ExitCode"] == 3
    d.docker("rm", n, check=True)


def test_custom_detach_keys(default_skiffd: Daemon, term: list[Term]) -> None:
    d = default_skiffd
    n = name("keys")
    t = open_term(term, d, "run", "-it", "--detach-keys", "ctrl-x,x", "--name", n,
                  "busybox", "sh")
    t.expect(PROMPT)
    t.send(b"\x10\x11")  # not the detach keys now: the shell gets them
    t.send(b"\x18x")
    assert t.wait() == 0
    assert state(d, n)["Running"] is True
    d.docker("rm", "-f", n, check=True)


def test_start_ai(default_skiffd: Daemon, term: list[Term]) -> None:
    d = default_skiffd
    n = name("startai")
    d.docker("create", "-it", "--name", n, "busybox", "sh", check=True)
    t = open_term(term, d, "start", "-ai", n)
    t.expect(PROMPT)
    t.send(b"echo $((6*7))\r")
    t.expect(b"\r\n42\r\n")
    t.send(b"exit\r")
    assert t.wait() == 0
    assert state(d, n)["Running"] is False
    d.docker("rm", n, check=True)


def test_resize(default_skiffd: Daemon, term: list[Term]) -> None:
    d = default_skiffd
    n = name("resize")
    t = open_term(term, d, "run", "-it", "--rm", "--name", n, "busybox", "sh")
    t.expect(PROMPT)

    def size_is(rows: int, cols: int) -> bool:
        t.drain()
        t.send(b"stty size\r")
        seen = t.expect(re.compile(rb"\r\n(\d+) (\d+)\r\n"))
        found = re.findall(rb"\r\n(\d+) (\d+)\r\n", seen)[-1]
        return (int(found[0]), int(found[1])) == (rows, cols)

    # the CLI sets the container's TTY to its own size right after start
    poll(lambda: size_is(24, 80), what="the initial 24x80")
    t.set_size(33, 101)  # SIGWINCH to the CLI, which calls POST .../resize
    poll(lambda: size_is(33, 101), what="the new size 33x101")
    t.send(b"exit\r")
    assert t.wait() == 0


def test_stdin_without_tty(default_skiffd: Daemon) -> None:
    d = default_skiffd
    res = d.docker("run", "-i", "--rm", "busybox", "cat", input=b"hi\n", check=True)
    assert res.stdout == b"hi\n"
    # without a TTY stdout and stderr stay apart (the multiplexed stream)
    res = d.docker("run", "-i", "--rm", "busybox", "sh", "-c", "read x; echo got $x; echo e >&2",
                   input=b"line\n", check=True)
    assert (res.stdout, res.stderr) == (b"got line\n", b"e\n")
    # and without -i the container's stdin is empty
    res = d.docker("run", "--rm", "busybox", "cat", input=b"ignored\n", check=True)
    assert res.stdout == b""


def _raw_request(sock_path: str, request: bytes) -> tuple[socket.socket, bytes]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sock_path)
    s.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head


def test_server_side_detach_and_resize_api(default_skiffd: Daemon) -> None:
    """The daemon itself honours detachKeys (for API clients that do not)."""
    d = default_skiffd
    n = name("api")
    d.docker("run", "-dit", "--name", n, "busybox", "sh", check=True)
    try:
        s, head = _raw_request(
            d.socket,
            f"POST /v1.41/containers/{n}/attach?stream=1&stdin=1&stdout=1&stderr=1"
            f"&detachKeys=ctrl-x,x HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\n"
            f"Connection: Upgrade\r\nContent-Length: 0\r\n\r\n".encode(),
        )
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"application/vnd.docker.raw-stream" in head  # a TTY: raw, no headers
        s.sendall(b"echo $((6*7))\r")
        got = b""
        while b"42\r\n" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        s.sendall(b"\x18x")
        while s.recv(4096):  # the daemon ends the attach: EOF
            pass
        s.close()
        assert state(d, n)["Running"] is True

        res = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", d.socket,
             "-X", "POST", f"http://x/v1.41/containers/{n}/resize?h=40&w=120"],
            capture_output=True, check=False)
        if res.returncode == 0:  # curl is there
            assert res.stdout == b"200" or res.stdout == b"204"
            out = d.docker("exec", n, "sh", "-c", "stty size < /proc/1/fd/0", check=True)
            assert out.stdout.split() == [b"40", b"120"]
        bad = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", d.socket,
             "-X", "POST", f"http://x/v1.41/containers/{n}/resize?h=x&w=1"],
            capture_output=True, check=False)
        if bad.returncode == 0:
            assert bad.stdout == b"400"
    finally:
        d.docker("rm", "-f", n)


def test_sigwinch_reaches_the_container(default_skiffd: Daemon, term: list[Term]) -> None:
    d = default_skiffd
    n = name("winch")
    t = open_term(term, d, "run", "-it", "--name", n, "busybox", "sh", "-c",
                  "trap 'echo got-winch' WINCH; echo ready; while :; do sleep 0.1; done")
    t.expect(b"ready")
    time.sleep(0.3)  # the CLI's own first resize may come after "ready"
    t.drain()
    t.set_size(40, 90)
    t.expect(b"got-winch")
    d.docker("rm", "-f", n, check=True)
    t.wait()


# -- the detach-key machinery, without a daemon ----------------------------------


@pytest.mark.parametrize(("spec", "want"), [
    ("ctrl-p,ctrl-q", b"\x10\x11"),
    ("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_", b"\x00\x1b\x1c\x1d\x1e\x1f"),
    ("a,ctrl-X", b"a\x18"),
])
def test_parse_detach_keys(spec: str, want: bytes) -> None:
    from skiff.core.containers.streams import parse_detach_keys

    assert parse_detach_keys(spec) == want


@pytest.mark.parametrize("spec", ["ctrl-", "ctrl-1", "shift-a", "ab", ""])
def test_parse_detach_keys_rejects(spec: str) -> None:
    from skiff.core.containers.streams import parse_detach_keys

    with pytest.raises(ValueError, match="Unknown character"):
        parse_detach_keys(spec)


def test_detach_scanner_holds_back_partial_matches() -> None:
    from skiff.core.containers.streams import DetachScanner

    s = DetachScanner(b"\x10\x11")
    assert s.feed(b"ab\x10") == (b"ab", False)  # held: maybe the start of the sequence
    assert s.feed(b"c") == (b"\x10c", False)  # it was not: passed on, in order
    assert s.feed(b"\x10\x10") == (b"\x10", False)
    assert s.feed(b"\x11rest") == (b"", True)
    assert DetachScanner(b"").feed(b"\x10\x11") == (b"\x10\x11", False)
