"""Container layers freed off the answer's path: ``docker rm`` answers once a
container's layer metadata is retired, and a worker thread removes the driver
layers it names.

Crash safety comes from where the work sits, not from the worker: a retired
metadata directory is already under the layer database's ``tmp/`` (renamed
there atomically, ``MetaDirs.retire``), and the store's start-up
discards everything under ``tmp/`` with the driver layers it names
(``MetaDirs.clean``) before the API serves.  So a daemon that dies with work
queued leaves what a crash inside an inline removal always left: debris the
next start removes.  Nothing counts the queued layers as live: the store
forgot the container before queueing (``docker system df`` and ``ps -s`` ask
the store), and the image layer below was released at once.

Only removals that nothing else orders against go here: a layer store drains
the queue before it removes an image layer (a driver may refuse to drop a
lower layer while a layer on it exists), and daemon shutdown drains it before
the driver's cleanup.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("skiff.images.layers")

__all__ = ["Trash"]


class Trash:
    """A queue of retired metadata directories and the one thread that empties it.

    The thread exists only while there is work: an idle daemon keeps none.
    """

    def __init__(self, discard: Callable[[str], None]) -> None:
        self._discard = discard
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._pending = 0  #: queued or being discarded
        self._worker: threading.Thread | None = None

    def put(self, path: str) -> None:
        """Discard ``path`` (a retired metadata dir) soon, on the worker."""
        with self._cond:
            self._queue.append(path)
            self._pending += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="layer-trash",
                                                daemon=True)
                self._worker.start()

    def pending(self) -> int:
        with self._cond:
            return self._pending

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is gone; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._worker = None
                    return
                path = self._queue.popleft()
            try:
                self._discard(path)
            except Exception as exc:  # the next start's clean-up retries it
                log.warning("layer.trash_failed", path=path, error=str(exc))
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
