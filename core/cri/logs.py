"""A pod container's output in the CRI's log format, where kubelet reads it.

``<RFC 3339 nano time> <stdout|stderr> <F|P> <text>``, one line each: F for a
whole line (its newline dropped), P for a piece of a longer one.  The writer
subscribes to the container's output hub (the Docker API's ``logs -f`` feed,
lines as the engine logs them) before the container starts, so nothing is
missed; the engine's own log (``docker logs``) is kept as usual.  A writer
that falls more than ``BACKLOG`` bytes behind is dropped by the hub (logged),
as a slow ``logs -f`` reader is.  ``ReopenContainerLog`` (kubelet's rotation)
closes the file and opens a new one at the same path.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import structlog

from skiff.core.timefmt import rfc3339_nano_trimmed

if TYPE_CHECKING:
    from skiff.core.containers.streams import Subscription
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.cri")

#: output a writer may leave unwritten before the hub drops it
BACKLOG = 16 << 20


def cri_line(stream: str, data: bytes, when: float) -> bytes:
    """One line of the CRI's log format."""
    tag = b"F" if data.endswith(b"\n") else b"P"
    text = data[:-1] if tag == b"F" else data
    stamp = rfc3339_nano_trimmed(int(when * 1e9)).encode()
    return b"%s %s %s %s\n" % (stamp, stream.encode(), tag, text)


class LogFile:
    """The open log file of one container; written from threads, one at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._lock = threading.Lock()

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or "/", mode=0o755, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o640)

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd < 0:
                self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def reopen(self) -> None:
        with self._lock:
            self._close()
            self._open()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        with self._lock:
            self._close()


class CriLogs:
    """The log writers of the CRI's running containers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.files: dict[str, LogFile] = {}
        self.subs: dict[str, Subscription] = {}

    def start(self, container_id: str, path: str) -> None:
        """Before the container starts (on the trio thread): follow its output."""
        hub = self.engine.registry.tracks[container_id].hub
        sub = hub.subscribe(lines=True, limit=BACKLOG)
        old = self.files.pop(container_id, None)
        if old is not None:
            old.close()
        f = self.files[container_id] = LogFile(path)
        self.subs[container_id] = sub
        self.engine.spawn(self._pump, container_id, sub, f)

    def abort(self, container_id: str) -> None:
        """The start failed: no run will end the subscription, this does."""
        sub = self.subs.pop(container_id, None)
        if sub is not None:
            self.engine.registry.tracks[container_id].hub.unsubscribe(sub)

    async def _pump(self, container_id: str, sub: Subscription, f: LogFile) -> None:
        try:
            # the file exists from the start, as kubelet expects of a running container
            await self.engine.to_thread(f.write, b"")
            async for stream, data, when in sub:
                await self.engine.to_thread(f.write, cri_line(stream, data, when))
            if sub.dropped:
                log.warning("cri.log_writer_dropped", id=container_id, path=f.path,
                            reason=f"fell more than {BACKLOG} bytes behind the output")
        except OSError as exc:
            log.error("cri.log_write_failed", id=container_id, path=f.path, error=str(exc))
        finally:
            sub.close()
            if self.subs.get(container_id) is sub:
                del self.subs[container_id]
            await self.engine.to_thread(f.close)

    async def reopen(self, container_id: str) -> None:
        f = self.files.get(container_id)
        if f is not None:
            await self.engine.to_thread(f.reopen)

    def forget(self, container_id: str) -> None:
        f = self.files.pop(container_id, None)
        if f is not None:
            f.close()
