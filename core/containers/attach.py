"""``docker attach`` (and ``docker run``'s streams): a hijacked connection
fed with a container's output and feeding its stdin; and TTY resize."""

from __future__ import annotations

import contextlib
import time

import structlog
import trio

from skiff.core.containers.framing import STREAM_TYPES, multiplex_frame
from skiff.core.containers.logread import RawProgress, RecordedLog
from skiff.core.containers.logstream import LogStreams
from skiff.core.containers.registry import ContainerRegistry
from skiff.core.containers.streams import feed_stdin
from skiff.core.errors import Conflict, InvalidParameter
from skiff.core.hookspecs import ReadConfig

log = structlog.get_logger("skiff.containers")


class Attacher:
    """Attach clients to the registry's containers; ``logs`` serves their history."""

    def __init__(self, registry: ContainerRegistry, logs: LogStreams) -> None:
        self.registry = registry
        self.logs = logs

    async def attach(self, ref: str, stream: trio.abc.Stream, *, stdin: bool, stdout: bool,
                     stderr: bool, logs: bool, framed: bool,
                     detach_keys: bytes = b"\x10\x11", live: bool = True) -> None:
        """Serve a hijacked connection until the container's current run ends.

        With a TTY, ``detach_keys`` typed on stdin end the attach (the
        container keeps running); so does the end of stdin unless the
        container closes its stdin then (``StdinOnce`` without TTY): Docker's
        rules.  ``live`` False (``stream=0``): only the recorded log, then the end.
        """
        c = self.registry.get(ref)
        track = self.registry.tracks[c.id]
        hub = track.hub

        def frame(kind: str, data: bytes) -> bytes:
            return multiplex_frame(STREAM_TYPES[kind], data) if framed else data

        sub = hub.subscribe(stdout=stdout, stderr=stderr)
        progress = RawProgress(hub.pending, time.time())
        self.registry.event(c, "attach")
        try:
            if logs and self.logs.readable(c):
                recorded = RecordedLog(self.logs.open_reader(c),
                                       ReadConfig(stdout=stdout, stderr=stderr),
                                       self.logs.to_thread)
                try:
                    await recorded.start()
                    async for batch in recorded.batches():
                        await stream.send_all(b"".join(frame(m.stream, m.line) for m in batch))
                finally:
                    recorded.close()
            if not live:  # stream=0: the recorded log only, then the end
                return

            async def copy_stdin(scope: trio.CancelScope) -> None:
                if not (stdin and c.config.get("OpenStdin")):
                    return
                await hub.stdin_ready.wait()
                if hub.stdin is None:
                    return
                how = await feed_stdin(stream, hub.stdin, tty=bool(c.config.get("Tty")),
                                       close_on_eof=bool(c.config.get("StdinOnce")),
                                       detach_keys=detach_keys)
                if how == "detach":
                    self.registry.event(c, "detach")
                if how in ("detach", "eof"):
                    scope.cancel()

            async def copy_output() -> None:
                async for kind, data, when in sub:
                    await stream.send_all(frame(kind, data))
                    progress.sent(kind, data, when)
                if not sub.dropped or not self.logs.readable(c):
                    return
                # Fell behind: on from the log, at this client's pace (nothing lost,
                # nothing held in memory, nobody else slowed), then live lines.
                cfg = ReadConfig(stdout=stdout, stderr=stderr)
                log.info("container.attach_catching_up", id=c.id,
                         reason="the client fell behind the live output; reading on from "
                                "the log")
                async for batch in self.logs.messages(c, cfg, progress.cursor, follow=True,
                                                      first=progress.cursor.rewind(cfg)):
                    out = [frame(m.stream, data) for m in batch if (data := progress.trim(m))]
                    if out:
                        await stream.send_all(b"".join(out))

            async with trio.open_nursery() as n:
                n.start_soon(copy_stdin, n.cancel_scope)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await copy_output()
                n.cancel_scope.cancel()
        finally:
            hub.unsubscribe(sub)

    def resize(self, ref: str, height: int, width: int) -> None:
        """``POST /containers/{id}/resize``: the TTY's size (SIGWINCH in the container)."""
        c = self.registry.get(ref)
        if not c.state.Running:
            raise Conflict(f"Container {c.id} is not running")
        try:
            self.registry.tracks[c.id].hub.resize(height, width)
        except OSError as exc:
            raise InvalidParameter(f"cannot resize the TTY: {exc.strerror}") from exc
