"""Removals off the answer's path: a folder already renamed to where the next
start's clean-up looks is deleted by a worker thread after the request that
removed it has answered.

Crash safety comes from where the work sits, not from the worker: each user
renames what it removes (atomically, within one filesystem) into a place
its start-up empties before the API serves, and queues it here.  So a
daemon that dies with work queued leaves what a crash inside an inline
removal always left: debris the next start removes.  Two users:

- the layer store (``images/container_layers.py``): a container's retired
  layer metadata under the layer database's ``tmp/`` (``MetaDirs.retire``),
  with the driver layers it names (``MetaDirs.clean`` at start).  It drains
  the queue before it removes an image layer (a driver may refuse to drop a
  lower layer while a layer on it exists), and daemon shutdown drains it
  before the driver's cleanup.  Nothing counts the queued layers as live:
  the store forgot the container before queueing.
- the container manager: a removed container's folder and its exec-root
  folder, under ``<data-root>/tmp`` and ``<exec-root>/tmp`` (reconciliation
  empties both at start).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("skiff.trash")

__all__ = ["Trash"]


class Trash:
    """A queue of retired paths and the one thread that empties it; ``discard``
    removes one, ``name`` names the thread (``<name>-trash``) and the warning
    of a failed removal (``<name>.trash_failed``).

    The thread exists only while there is work: an idle daemon keeps none.
    """

    def __init__(self, discard: Callable[[str], None], name: str = "layer") -> None:
        self._discard = discard
        self._name = name
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._pending = 0  #: queued or being discarded
        self._worker: threading.Thread | None = None

    def put(self, path: str) -> None:
        """Discard ``path`` (already where the next start's clean-up looks) soon."""
        with self._cond:
            self._queue.append(path)
            self._pending += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name=f"{self._name}-trash",
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
                log.warning(f"{self._name}.trash_failed", path=path, error=str(exc))
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
