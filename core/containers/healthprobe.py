"""A healthcheck probe run as an exec: the same create and start as ``docker exec``.

The probe's output (stdout and stderr together, as dockerd keeps it) goes to
a capture stream that keeps the first ``MAX_OUTPUT`` bytes and drops the
rest, marked with "..." as dockerd marks it.  A probe still running at its
timeout is killed and counts as a failure with dockerd's message.  Its exec
is forgotten once done, so probes do not fill ``ExecIDs``.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiff.core.containers.health import MAX_OUTPUT, Check, ProbeResult
from skiff.core.errors import SkiffError
from skiff.core.hookspecs import StartError

if TYPE_CHECKING:
    from skiff.core.containers.exec import ExecManager
    from skiff.core.containers.model import Container

log = structlog.get_logger("skiff.health")

#: after killing a timed-out probe, how long to wait for its exec to be reaped
KILL_WAIT = 5.0


class OutputCapture(trio.abc.Stream):
    """The sink of a probe's exec: keeps the first ``limit`` bytes it is sent."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += bytes(data[:room])
        if len(data) > max(room, 0):
            self.truncated = True

    async def wait_send_all_might_not_block(self) -> None:
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # a probe has no stdin: never asked, and if asked, there is nothing
        return b""

    async def aclose(self) -> None:
        return None

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return text + "..." if self.truncated else text


class ExecProbe:
    """Runs probes through ``execs`` (the daemon's ExecManager)."""

    def __init__(self, execs: ExecManager) -> None:
        self.execs = execs

    async def __call__(self, c: Container, argv: list[str], check: Check) -> ProbeResult:
        start = time.time()
        capture = OutputCapture()
        body: dict[str, Any] = {"Cmd": argv, "AttachStdout": True, "AttachStderr": True}
        try:
            exec_id = self.execs.create(c.id, body)
        except SkiffError as exc:  # not running any more, or removed
            return ProbeResult(start, time.time(), -1, exc.message)
        try:
            return await self._start(exec_id, capture, check, start)
        finally:
            self.execs.by_id.pop(exec_id, None)

    async def _start(self, exec_id: str, capture: OutputCapture, check: Check,
                     start: float) -> ProbeResult:
        ex = self.execs.by_id[exec_id]
        with trio.move_on_after(check.timeout) as scope:
            try:
                await self.execs.start(exec_id, capture, framed=False)
            except SkiffError as exc:
                return ProbeResult(start, time.time(), -1, exc.message)
            except StartError as exc:  # worded as the exec endpoint words it, dockerd's
                return ProbeResult(start, time.time(), -1,
                                   f"OCI runtime exec failed: exec failed: {exc}")
        if not scope.cancelled_caught:
            code = ex.exit_code if ex.exit_code is not None else -1
            return ProbeResult(start, time.time(), code, capture.text())
        if ex.process is not None:
            ex.process.kill(signal.SIGKILL)
        # reaped before the next probe, so a slow check never piles up processes
        with trio.move_on_after(KILL_WAIT):
            await ex.ended.wait()
        log.info("container.health_timeout", id=ex.container.id, exec_id=exec_id,
                 timeout=check.timeout)
        return ProbeResult(start, time.time(), -1, check.timeout_message())
