"""Exec and Attach on a SPDY session, remotecommand protocol v4 (what
``kubectl exec``, ``crictl exec -it`` and critest speak).

The client opens one stream per channel, named by its ``streamtype`` header:
``error`` always, ``stdin``/``stdout``/``stderr`` as the request asked
(``stderr`` never with a TTY), ``resize`` with a TTY (JSON ``{"Width","Height"}``
objects, one after another).  Once every expected stream is there the command
runs on the engine's exec (or attach) with the streams as its client; at its
end stdout/stderr get FIN, the error stream a ``metav1.Status`` (Success, or
Failure with reason NonZeroExitCode and the code as its ``ExitCode`` cause)
and FIN, and the client closes the connection.
"""

from __future__ import annotations

import json
import signal
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiff.core.cri.spdysession import SpdySession, SpdyStream
from skiff.core.errors import SkiffError
from skiff.core.hookspecs import StartError

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.cri")

#: seconds the client has to open its streams after the upgrade (kubelet's)
STREAM_CREATION_TIMEOUT = 30.0
#: seconds the server waits for the client to close the connection at the end
CLIENT_CLOSE_WAIT = 10.0
#: what a terminal sends at the end of input: with a TTY the end of the
#: client's stdin becomes this, so a shell reading it ends as it would
EOT = b"\x04"
#: seconds an exec with a TTY waits for the client's first terminal size
FIRST_SIZE_WAIT = 0.5


def expected_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> set[str]:
    want = {"error"}
    if stdin:
        want.add("stdin")
    if stdout:
        want.add("stdout")
    if stderr and not tty:
        want.add("stderr")
    if tty:
        want.add("resize")
    return want


def status_json(code: int | None, message: str = "") -> bytes:
    """The v4 error stream's content: a ``metav1.Status``."""
    if code == 0 and not message:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    if code is None:
        return json.dumps({"metadata": {}, "status": "Failure", "message": message,
                           "reason": "InternalError"}).encode()
    return json.dumps({
        "metadata": {}, "status": "Failure",
        "message": message or f"command terminated with non-zero exit code: {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code & 0xFF)}]},
    }).encode()


class Sizes:
    """The resize stream's JSON objects, parsed as they come in pieces."""

    def __init__(self) -> None:
        self._buf = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        self._buf += data.decode("utf-8", "replace")
        out: list[tuple[int, int]] = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                return out
            try:
                obj, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                self._buf = text
                if len(text) > 4096:  # no object is this long: garbage
                    self._buf = ""
                return out
            self._buf = text[end:]
            if isinstance(obj, dict):
                width, height = obj.get("Width"), obj.get("Height")
                if isinstance(width, int) and isinstance(height, int) and width > 0 < height:
                    out.append((height, width))


class Client(trio.abc.Stream):
    """The engine's client for an exec or attach: its output (Docker's framed
    stream, or raw with a TTY) to the stdout/stderr streams, its stdin from
    the stdin stream."""

    def __init__(self, streams: dict[str, SpdyStream], framed: bool, tty: bool) -> None:
        self.streams = streams
        self.framed = framed
        self.tty = tty
        self._pending = b""
        self._stdin_ended = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.framed:
            await self._to("stdout", bytes(data))
            return
        self._pending += bytes(data)
        while len(self._pending) >= 8:
            kind, size = self._pending[0], struct.unpack(">I", self._pending[4:8])[0]
            if len(self._pending) < 8 + size:
                return
            chunk, self._pending = self._pending[8:8 + size], self._pending[8 + size:]
            await self._to("stderr" if kind == 2 else "stdout", chunk)

    async def _to(self, name: str, data: bytes) -> None:
        s = self.streams.get(name)
        if s is not None and data:
            await s.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        s = self.streams.get("stdin")
        if s is None or self._stdin_ended:
            await trio.sleep_forever()
            raise AssertionError("unreachable")
        data = await s.receive_some(max_bytes)
        if data or not self.tty:
            return data
        # a TTY has no half-close: the end of input is the terminal's EOT, and
        # the exec goes on until its process ends
        self._stdin_ended = True
        return EOT

    async def aclose(self) -> None:
        return None


async def _gather(session: SpdySession, want: set[str]) -> dict[str, SpdyStream] | None:
    got: dict[str, SpdyStream] = {}
    with trio.move_on_after(STREAM_CREATION_TIMEOUT):
        async for s in session.incoming:
            got[s.headers.get("streamtype", "")] = s
            if want <= got.keys():
                return got
    log.info("cri.streaming_streams_missing", want=sorted(want), got=sorted(got))
    error = got.get("error")
    if error is not None:
        await error.send_all(status_json(None, "timed out waiting for the client to create "
                                               f"its streams ({', '.join(sorted(want))})"))
        await error.send_eof()
    return None


async def _resizes(stream: SpdyStream, apply: Callable[[int, int], bool],
                   first: trio.Event | None = None) -> None:
    sizes = Sizes()
    while data := await stream.receive_some():
        for height, width in sizes.feed(data):
            if first is not None:
                first.set()
            # the terminal exists only once the process runs: a size that
            # comes first is tried again for a moment
            for _ in range(100):
                if apply(height, width):
                    break
                await trio.sleep(0.05)


async def _finish(session: SpdySession, streams: dict[str, SpdyStream], status: bytes) -> None:
    for name in ("stdout", "stderr"):
        if name in streams:
            await streams[name].send_eof()
    await streams["error"].send_all(status)
    await streams["error"].send_eof()
    await session.wait_closed(CLIENT_CLOSE_WAIT)


async def _serve(session: SpdySession, want: set[str],
                 work: Callable[[dict[str, SpdyStream], trio.Nursery], Any]) -> None:
    async with trio.open_nursery() as n:
        n.start_soon(session.run)
        streams = await _gather(session, want)
        if streams is not None:
            status = await work(streams, n)
            await _finish(session, streams, status)
        n.cancel_scope.cancel()


async def serve_exec(engine: Engine, session: SpdySession, request: Any) -> None:
    tty = bool(request.tty)
    want = expected_streams(request.stdin, request.stdout, request.stderr, tty)

    async def work(streams: dict[str, SpdyStream], n: trio.Nursery) -> bytes:
        try:
            exec_id = engine.execs.create(request.container_id, {
                "Cmd": list(request.cmd), "AttachStdin": bool(request.stdin),
                "AttachStdout": bool(request.stdout), "AttachStderr": bool(request.stderr),
                "Tty": tty})
        except SkiffError as exc:
            return status_json(None, str(exc))
        ex = engine.execs.by_id[exec_id]
        ex.detachable = False  # Ctrl-P Ctrl-Q is the program's input here

        def resize(height: int, width: int) -> bool:
            if ex.terminal < 0:
                if not ex.started:
                    ex.console_size = [height, width]  # sized before it runs
                return ex.ended.is_set() or not ex.started
            engine.execs.resize(exec_id, height, width)
            return True

        if "resize" in streams:
            first = trio.Event()
            n.start_soon(_resizes, streams["resize"], resize, first)
            # a client with a terminal sends its size first: the process starts
            # with it (a client without one sends none, and waits this long once)
            with trio.move_on_after(FIRST_SIZE_WAIT):
                await first.wait()
        log.info("cri.exec", container=request.container_id, tty=tty, cmd=list(request.cmd))

        async def run() -> bytes:
            try:
                await engine.execs.start(exec_id, Client(streams, framed=not tty, tty=tty),
                                         framed=not tty)
            except StartError as exc:
                code = exc.exit_code if exc.exit_code else 126
                where = streams.get("stderr") or streams.get("stdout")
                if where is not None:
                    await where.send_all(f"exec failed: {exc}\n".encode())
                return status_json(code, f"command terminated with non-zero exit code: {exc}")
            except SkiffError as exc:
                return status_json(None, str(exc))
            await ex.ended.wait()
            return status_json(ex.exit_code if ex.exit_code is not None else 255)

        async with trio.open_nursery() as watch:
            watch.start_soon(_kill_when_gone, session, ex)
            status = await run()
            watch.cancel_scope.cancel()
        return status

    await _serve(session, want, work)


async def _kill_when_gone(session: SpdySession, ex: Any) -> None:
    """The client went away before its command ended: the command goes too, as
    containerd's does (nobody is left to read it or to be told its end)."""
    await session.closed.wait()
    while not ex.ended.is_set():
        if ex.process is not None:  # once it runs (it may be starting still)
            log.info("cri.exec_client_gone", exec=ex.id, pid=ex.pid)
            ex.process.kill(signal.SIGKILL)
            return
        await trio.sleep(0.05)


async def serve_attach(engine: Engine, session: SpdySession, request: Any) -> None:
    tty = bool(request.tty)
    want = expected_streams(request.stdin, request.stdout, request.stderr, tty)

    async def work(streams: dict[str, SpdyStream], n: trio.Nursery) -> bytes:
        ref = request.container_id

        def resize(height: int, width: int) -> bool:
            try:
                engine.containers.resize(ref, height, width)
            except SkiffError:
                return False
            return True

        if "resize" in streams:
            n.start_soon(_resizes, streams["resize"], resize)
        log.info("cri.attach", container=ref, tty=tty)
        try:
            await engine.containers.attach(
                ref, Client(streams, framed=not tty, tty=False), stdin=bool(request.stdin),
                stdout=bool(request.stdout), stderr=bool(request.stderr), logs=False,
                framed=not tty)
        except SkiffError as exc:
            return status_json(None, str(exc))
        return status_json(0)

    await _serve(session, want, work)
