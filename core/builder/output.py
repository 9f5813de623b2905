"""A build's messages in dockerd's order while its stages run in parallel.

The classic builder prints ``Step N/M`` lines stage after stage, and clients
(the docker CLI, docker-py, compose) show them as they come.  skiff builds
stages that do not depend on each other at the same time, but the stream
must still read as one stage after the other: the first unfinished stage, in
build order, writes live; the others are held back until every stage before
them is done, then sent at once.  With ``q`` (quiet) nothing is sent while
the build goes well; a failing build sends everything, as dockerd does, so
the error has its context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BuildOutput", "StageOutput"]

Emit = Callable[[dict[str, Any]], None]


class StageOutput:
    """What one stage writes (see :class:`BuildOutput`)."""

    def __init__(self, owner: BuildOutput, index: int) -> None:
        self._owner = owner
        self.index = index
        self.held: list[dict[str, Any]] = []
        self.done = False

    def message(self, msg: dict[str, Any]) -> None:
        """A JSON message (a pull's progress, an aux record)."""
        self._owner.route(self, msg)

    def text(self, text: str) -> None:
        """Text as it comes (a RUN's output): sent unchanged."""
        if text:
            self.message({"stream": text})

    def line(self, text: str) -> None:
        """A line of the builder's own (``Step 1/3 : FROM x``, `` ---> abc``)."""
        self.message({"stream": text + "\n"})

    def finish(self) -> None:
        """The stage is done: the next one may write live."""
        self._owner.finish(self)


class BuildOutput:
    """The ordered stream of one build (see the module's doc)."""

    def __init__(self, emit: Emit, order: Sequence[int], quiet: bool = False) -> None:
        self._emit = emit
        self.quiet = quiet
        #: what quiet mode keeps back, sent only if the build fails
        self.kept: list[dict[str, Any]] = []
        self.stages = {i: StageOutput(self, i) for i in order}
        self._order = list(order)
        self._head = 0

    def _send(self, msg: dict[str, Any]) -> None:
        if self.quiet:
            self.kept.append(msg)
        else:
            self._emit(msg)

    def route(self, stage: StageOutput, msg: dict[str, Any]) -> None:
        if self._head < len(self._order) and self._order[self._head] == stage.index:
            self._send(msg)
        else:
            stage.held.append(msg)

    def line(self, text: str) -> None:
        """A line outside any stage (the global ARGs' steps, the summary)."""
        self._send({"stream": text + "\n"})

    def message(self, msg: dict[str, Any]) -> None:
        self._send(msg)

    def finish(self, stage: StageOutput) -> None:
        stage.done = True
        while self._head < len(self._order):
            current = self.stages[self._order[self._head]]
            for msg in current.held:
                self._send(msg)
            current.held.clear()
            if not current.done:
                return
            self._head += 1

    def flush_all(self) -> None:
        """Send everything held, in order (a build that failed)."""
        for i in self._order[self._head:]:
            for msg in self.stages[i].held:
                self._send(msg)
            self.stages[i].held.clear()
        self._head = len(self._order)

    def result(self, msg: dict[str, Any]) -> None:
        """A message sent even in quiet mode (the image ID)."""
        self._emit(msg)

    def failed(self) -> None:
        """The build failed: quiet mode sends what it kept back."""
        self.flush_all()
        if self.quiet:
            for msg in self.kept:
                self._emit(msg)
            self.kept.clear()
