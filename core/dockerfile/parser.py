"""The Dockerfile parser: text to :mod:`~skiff.core.dockerfile.instructions`.

The rules are those of Docker's classic builder (Engine API v1.41):

- **Parser directives** (``# escape=``` `, ``# syntax=...``) are comment lines
  of the form ``# key=value`` at the very top; the first line that is not one
  (an empty line, an instruction, another comment) ends them.  A directive
  may appear once.  ``escape`` picks the escape character (``\\`` or `````);
  ``syntax`` asks for a BuildKit frontend, which this builder does not run: it
  is reported in :attr:`Dockerfile.syntax` so the builder can say it ignores it.
- **Comments** are lines whose first non-blank character is ``#``; ``#``
  elsewhere is an argument.  **Continuation**: a line ending with the escape
  character (trailing blanks allowed) goes on on the next line; comment lines
  and empty lines inside a continued instruction are skipped (an empty one is
  reported in :attr:`Dockerfile.warnings`, as Docker warns).
- An instruction is a keyword (any case), optional flags (``--name=value``
  words right after it) and its arguments; the exec form of RUN, CMD,
  ENTRYPOINT, SHELL, HEALTHCHECK CMD, COPY, ADD and VOLUME is a JSON array of
  strings, anything else is the shell form.
- **Heredocs** (``RUN <<EOF``), a BuildKit extension, are refused with an error
  naming the line.

Every error is a :class:`~skiff.core.dockerfile.errors.ParseError` carrying the
line and text, worded as dockerd words it where dockerd has a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from skiff.core.dockerfile import instructions as ins
from skiff.core.dockerfile.arguments import (
    BUILDERS,
    Refusal,
    extract_flags,
    refuse_heredoc,
    split_keyword,
)
from skiff.core.dockerfile.errors import ParseError
from skiff.core.dockerfile.words import DEFAULT_ESCAPE, ESCAPE_CHARS, trim, trim_left

__all__ = ["MAX_LINE", "Dockerfile", "parse_dockerfile", "parse_instruction"]

#: the longest physical line Docker reads (Go's bufio.Scanner limit)
MAX_LINE = 65535

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = ("escape", "syntax")


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: its instructions in order (ONBUILD triggers not
    expanded), the escape character its words use, the ``# syntax=`` directive's
    value (None without one) and the parser's warnings (each a line of text)."""

    instructions: tuple[ins.Instruction, ...]
    escape: str = DEFAULT_ESCAPE
    syntax: str | None = None
    warnings: tuple[str, ...] = ()


class _Directives:
    def __init__(self) -> None:
        self.escape = DEFAULT_ESCAPE
        self.values: dict[str, str] = {}
        self.done = False
        self.continuation = self._continuation_re(DEFAULT_ESCAPE)

    @staticmethod
    def _continuation_re(escape: str) -> re.Pattern[str]:
        e = re.escape(escape)
        # the escape char ends the line unless it is itself escaped; blanks may follow
        return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")

    def feed(self, line: str, lineno: int) -> None:
        """Look at a physical line (left-trimmed) while directives may still come."""
        if self.done:
            return
        m = _DIRECTIVE.match(line)
        if not m or m.group(1).lower() not in _KNOWN_DIRECTIVES:
            self.done = True
            return
        key, value = m.group(1).lower(), m.group(2)
        if key in self.values:
            raise ParseError(f"only one {key} parser directive can be used", lineno, text=line)
        self.values[key] = value
        if key == "escape":
            if value not in ESCAPE_CHARS:
                raise ParseError(f"invalid escape token '{value}' does not match ` or \\",
                                 lineno, text=line)
            self.escape = value
            self.continuation = self._continuation_re(value)

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        """The line without its continuation mark, and whether the instruction ends."""
        m = self.continuation.search(line)
        if not m:
            return line, True
        return line[:m.start()] + (m.group(1) or ""), False


def _is_comment(line: str) -> bool:
    return trim_left(line).startswith("#")


def _logical_lines(text: str, d: _Directives,
                   warnings: list[str]) -> list[tuple[str, int, int]]:
    """(instruction text, first line, last line) for each instruction."""
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()  # the newline ending the last line starts no new line
    if physical and physical[0].startswith("\ufeff"):
        physical[0] = physical[0][1:]
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(physical):
        raw = physical[i].rstrip("\r\n")
        i += 1
        if len(raw.encode("utf-8", "surrogatepass")) > MAX_LINE:
            raise ParseError(f"dockerfile line greater than max allowed size of {MAX_LINE}", i)
        line = trim_left(raw)
        d.feed(line, i)
        if _is_comment(line):
            line = ""
        start = i
        line, done = d.trim_continuation(line)
        if done and not line:
            continue
        parts = [line]
        empty_continuation = False
        while not done and i < len(physical):
            raw = physical[i].rstrip("\r\n")
            i += 1
            if len(raw.encode("utf-8", "surrogatepass")) > MAX_LINE:
                raise ParseError(f"dockerfile line greater than max allowed size of {MAX_LINE}",
                                 i)
            if _is_comment(raw):
                continue
            if not trim_left(raw):
                empty_continuation = True
                continue
            raw, done = d.trim_continuation(raw)
            parts.append(raw)
        joined = "".join(parts)
        if empty_continuation:
            warnings.append(f"Empty continuation line found in: {trim(joined)} "
                            f"(line {start}); empty continuation lines will become "
                            "errors in a future release")
        out.append((joined, start, i))
    return out


def parse_dockerfile(data: str | bytes) -> Dockerfile:
    """Parse a whole Dockerfile (bytes are read as UTF-8, a BOM dropped).

    Returns its instructions in order; raises :class:`ParseError` on the first
    bad line, and for a file with no instruction (``file with no
    instructions``).  The instructions are checked one by one; the order
    rules (an instruction before the first FROM, a stage name used twice)
    are :mod:`~skiff.core.dockerfile.stages`' business."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    d = _Directives()
    warnings: list[str] = []
    lines = _logical_lines(text, d, warnings)
    parsed = tuple(parse_instruction(line, d.escape, start, end)
                   for line, start, end in lines)
    if not parsed:
        raise ParseError("file with no instructions", max(text.count("\n"), 1))
    return Dockerfile(parsed, d.escape, d.values.get("syntax"), tuple(warnings))


def parse_instruction(line: str, escape: str = DEFAULT_ESCAPE, start: int = 1,
                      end: int | None = None) -> ins.Instruction:
    """Parse one instruction: ``line`` is its text, continuation lines already
    joined (as :func:`parse_dockerfile` joins them, or an image's ONBUILD
    trigger), ``start``..``end`` the lines it came from (for errors).

    Raises :class:`ParseError` (``unknown instruction: FOO``, a bad flag, a
    wrong number of arguments, a heredoc...)."""
    end = start if end is None else end
    original = trim(line)
    try:
        keyword, rest = split_keyword(line)
        builder = BUILDERS.get(keyword.upper())
        if builder is None:
            raise Refusal(f"unknown instruction: {keyword.upper()}")
        rest, flags = extract_flags(rest, escape)
        rest = trim(rest)
        refuse_heredoc(keyword.upper(), rest, escape)
        return builder(rest, flags, escape, {"original": original, "line": start,
                                             "end_line": end})
    except Refusal as err:
        raise ParseError(str(err), start, end, original) from None
