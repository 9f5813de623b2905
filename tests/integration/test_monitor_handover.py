"""skiff-monitor protocol 2: a container's stdio outlives the daemon (issue 21).

The daemon gives the runtime its own ends of the container's pipes
(``Stdio.daemon_*``); the monitor keeps copies.  These tests play the daemon:
they drop their connection and their ends as a dying skiffd would, let the
container write (more than a pipe holds), then come back as a new daemon
through ``<bundle>/monitor.sock`` and check that the ends, the spooled output
(in order, with its times) and the exit code all come through.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from skiff.core.hookspecs import RuntimeContext, StartError, Stdio
from skiff.plugins.isolation import adopt, monitor
from skiff.plugins.isolation.runtime import ForkServerRuntime
from skiff.plugins.isolation.shimclient import ForkServerProcess
from tests.integration.runtimekit import make_spec, pid_alive

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the runtime needs root"),
              pytest.mark.skipif(not monitor.available(), reason="skiff-monitor is not built"),
              pytest.mark.usefixtures("no_leaks")]

#: more than a pipe buffers (64 KiB): without the monitor draining, the
#: container would block (or die of SIGPIPE once the daemon's ends closed)
LINES = 3000
#: the container: a line, then (on "x") LINES lines on stdout and one on
#: stderr, then (on "y") what it read, and exit 7
SCRIPT = (f'echo first; read x; i=0; while [ $i -lt {LINES} ]; do echo "line $i $x"; '
          'i=$((i+1)); done; echo "err $x" >&2; read y; echo "got $y"; exit 7')


class Daemon:
    """The daemon's side of one container: its ends and its process."""

    def __init__(self, process: ForkServerProcess, out: int, err: int, stdin: int) -> None:
        self.process, self.out, self.err, self.stdin = process, out, err, stdin

    def die(self) -> None:
        """As a killed skiffd: every descriptor of ours closes at once."""
        self.process.close()
        for fd in (self.out, self.err, self.stdin):
            os.close(fd)


async def start(rt: ForkServerRuntime, bundle: Path, script: str) -> Daemon:
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = await rt.prepare(make_spec(rt_image(), bundle, ["sh", "-c", script]),
                                Stdio(in_r, out_w, err_w, daemon_stdout=out_r,
                                      daemon_stderr=err_r, daemon_stdin=in_w))
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    await proc.go()
    _STARTED.append(proc.pid)
    with trio.fail_after(5):
        while not (bundle / monitor.MONITOR_RECORD).exists() or \
                not (bundle / monitor.SOCKET).exists():
            await trio.sleep(0.005)
    return Daemon(proc, out_r, err_r, in_w)


_IMAGE: list[Path] = []


def rt_image() -> Path:
    return _IMAGE[0]


#: the containers' inits a test started: a failed test must not leave one
#: running (its monitor would wait for it for ever)
_STARTED: list[int] = []


@pytest.fixture(autouse=True)
def _image(image: Path) -> Iterator[None]:
    _IMAGE[:] = [image]
    yield
    while _STARTED:
        with contextlib.suppress(ProcessLookupError):
            os.kill(_STARTED.pop(), signal.SIGKILL)


async def read_until(fd: int, want: bytes) -> bytes:
    got = b""
    with trio.fail_after(10):
        while want not in got:
            await trio.lowlevel.wait_readable(fd)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            assert chunk, got
            got += chunk
    return got


async def spooled_until(bundle: Path, want: bytes) -> adopt.Spooled:
    with trio.fail_after(10):
        while True:
            spooled = adopt.read_spool(str(bundle / monitor.SPOOL))
            if want in b"".join(body for _, _, body in spooled.records):
                return spooled
            await trio.sleep(0.02)


def test_the_output_is_spooled_while_no_daemon_reads_and_handed_back(
    runtime: ForkServerRuntime, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"

    async def main() -> None:
        first = await start(runtime, bundle, SCRIPT)
        record = json.loads((bundle / monitor.MONITOR_RECORD).read_text())
        assert record["monitor"] == "skiff-monitor"
        assert record["protocol"] == monitor.PROTOCOL_SPOOL
        assert record["init"] == first.process.pid
        mode = os.stat(bundle / monitor.SOCKET).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert await read_until(first.out, b"first\n") == b"first\n"
        # while the daemon is connected, the monitor leaves the ends alone
        assert not (bundle / monitor.SPOOL).exists()

        os.write(first.stdin, b"x\n")
        before = time.time_ns()
        first.die()
        spooled = await spooled_until(bundle, b"err x\n")
        after = time.time_ns()
        assert pid_alive(first.process.pid)  # no SIGPIPE, not blocked

        again = await adopt.adopt(str(bundle), record["init"])
        try:
            assert again.protocol == 2
            assert sorted(again.ends) == ["stderr", "stdin", "stdout"]
            # still there: the daemon removes it once it logged it
            assert adopt.read_spool(str(bundle / monitor.SPOOL)) == again.spooled
            (bundle / monitor.SPOOL).unlink()
            assert again.spooled.dropped == 0
            assert again.spooled.records == spooled.records
            out = b"".join(b for _, s, b in spooled.records if s == "stdout")
            err = b"".join(b for _, s, b in spooled.records if s == "stderr")
            assert out == b"".join(b"line %d x\n" % i for i in range(LINES))
            assert err == b"err x\n"
            times = [t for t, _, _ in spooled.records]
            assert times == sorted(times) and before <= times[0] <= times[-1] <= after
            # the handed-over ends are the container's stdin and stdout
            os.write(again.ends["stdin"], b"y\n")
            assert await read_until(again.ends["stdout"], b"got y\n") == b"got y\n"
            assert await again.process.wait() == 7  # on the new connection
        finally:
            for fd in again.ends.values():
                os.close(fd)
        assert (bundle / "exitcode").read_text() == "7\n"
        assert not (bundle / monitor.SOCKET).exists()

    trio.run(main)


def test_a_container_that_exits_while_no_daemon_reads_leaves_its_output(
    runtime: ForkServerRuntime, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"

    async def main() -> int:
        first = await start(runtime, bundle, 'read x; echo "bye $x"; echo oops >&2; exit 3')
        os.write(first.stdin, b"now\n")
        first.die()
        monitor_pid = json.loads((bundle / monitor.MONITOR_RECORD).read_text())["pid"]
        with trio.fail_after(10):
            while pid_alive(monitor_pid):
                await trio.sleep(0.01)
        return monitor_pid

    trio.run(main)
    assert (bundle / "exitcode").read_text() == "3\n"
    spooled = adopt.read_spool(str(bundle / monitor.SPOOL))
    assert [(s, b) for _, s, b in spooled.records] in (
        [("stdout", b"bye now\n"), ("stderr", b"oops\n")],
        [("stderr", b"oops\n"), ("stdout", b"bye now\n")])
    assert not (bundle / monitor.SOCKET).exists()


def test_past_the_cap_output_is_counted_and_dropped(tmp_path: Path) -> None:
    cap = 4096
    rt = ForkServerRuntime(RuntimeContext(exec_root=str(tmp_path / "exec"),
                                          options={"skiff.spool-max": str(cap)}))
    bundle = tmp_path / "b"

    async def main() -> adopt.Adopted:
        await rt.start()
        try:
            first = await start(rt, bundle, SCRIPT)
            await read_until(first.out, b"first\n")
            os.write(first.stdin, b"x\n")
            first.die()
            with trio.fail_after(10):
                while True:
                    spooled = adopt.read_spool(str(bundle / monitor.SPOOL))
                    total = spooled.dropped + sum(len(b) for _, _, b in spooled.records)
                    if total >= len(b"".join(b"line %d x\n" % i for i in range(LINES))) + 6:
                        break
                    await trio.sleep(0.02)
            assert os.stat(bundle / monitor.SPOOL).st_size <= cap
            record = json.loads((bundle / monitor.MONITOR_RECORD).read_text())
            again = await adopt.adopt(str(bundle), record["init"])
            again.process.kill(signal.SIGKILL)
            assert await again.process.wait() == 137
            for fd in again.ends.values():
                os.close(fd)
            return again
        finally:
            await rt.stop()

    again = trio.run(main)
    out = b"".join(b for _, s, b in again.spooled.records if s == "stdout")
    err = b"".join(b for _, s, b in again.spooled.records if s == "stderr")
    # the first reads were kept, up to the cap, the rest counted
    written = b"".join(b"line %d x\n" % i for i in range(LINES))
    assert out and written.startswith(out)
    assert again.spooled.dropped == len(written) + len(b"err x\n") - len(out) - len(err)


def test_a_second_daemon_is_refused_while_one_is_connected(
    runtime: ForkServerRuntime, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"

    async def main() -> None:
        first = await start(runtime, bundle, "read x; exit 5")
        try:
            init = first.process.pid
            with pytest.raises(StartError, match="connected to a daemon"):
                await adopt.adopt(str(bundle), init)
            os.write(first.stdin, b"go\n")
            assert await first.process.wait() == 5  # the first one still has it
        finally:
            for fd in (first.out, first.err, first.stdin):
                os.close(fd)

    trio.run(main)


def test_the_stdin_copy_closes_when_the_daemon_says_so(
    runtime: ForkServerRuntime, tmp_path: Path
) -> None:
    # the monitor's copy of stdin's write end would keep the container from
    # ever reading the end of file; the daemon's word closes it
    bundle = tmp_path / "b"

    async def main() -> int:
        d = await start(runtime, bundle, "cat; echo done; exit 2")
        try:
            os.write(d.stdin, b"a\n")
            os.close(d.stdin)
            await d.process.stdin_closed()
            assert await read_until(d.out, b"done\n") == b"a\ndone\n"
            return await d.process.wait()
        finally:
            os.close(d.out)
            os.close(d.err)

    assert trio.run(main) == 2


def test_a_monitor_that_does_not_answer_is_given_up_on(
    runtime: ForkServerRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stopped monitor accepts nothing (the connection waits in its backlog):
    # the adopting daemon must not wait for it for ever
    monkeypatch.setattr(adopt, "HANDOVER_TIMEOUT", 0.5)
    bundle = tmp_path / "b"

    async def main() -> None:
        first = await start(runtime, bundle, "sleep 1000")
        record = json.loads((bundle / monitor.MONITOR_RECORD).read_text())
        first.die()
        os.kill(record["pid"], signal.SIGSTOP)
        try:
            with trio.fail_after(5), pytest.raises(StartError, match="did not answer"):
                await adopt.adopt(str(bundle), record["init"])
        finally:
            os.kill(record["pid"], signal.SIGCONT)
        again = await adopt.adopt(str(bundle), record["init"])  # awake: it answers
        again.process.kill(signal.SIGKILL)
        assert await again.process.wait() == 137
        for fd in again.ends.values():
            os.close(fd)

    trio.run(main)
