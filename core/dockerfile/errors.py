"""The errors of the Dockerfile language: all are :class:`InvalidParameter`
(the client's Dockerfile or options are wrong: HTTP 400 for the builder)."""

from __future__ import annotations

from skiff.core.errors import InvalidParameter

__all__ = ["DockerfileError", "ParseError"]


class DockerfileError(InvalidParameter):
    """A Dockerfile, a ``.dockerignore`` or a build option that cannot be used."""


class ParseError(DockerfileError):
    """A Dockerfile line that cannot be parsed.

    The message is dockerd's: ``dockerfile parse error line 3: unknown
    instruction: FOO``.  ``line`` and ``end_line`` are the 1-based physical lines
    of the instruction (they differ for continued lines), ``text`` its text as
    written (continuation lines joined), ``reason`` the message without the
    location."""

    def __init__(self, reason: str, line: int, end_line: int | None = None,
                 text: str = "") -> None:
        super().__init__(f"dockerfile parse error line {line}: {reason}")
        self.reason = reason
        self.line = line
        self.end_line = end_line if end_line is not None else line
        self.text = text
