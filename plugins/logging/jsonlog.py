"""One line of a json-file log, written and read as dockerd 20.10 does.

::

    {"log":"hello\\n","stream":"stdout","attrs":{"tag":"web"},"time":"2026-11-28T01:02:03.123456000Z"}

The ``log`` string is escaped as dockerd's own encoder does (``<``, ``>``,
``&``, U+2028 and U+2029 as ``\\u`` escapes, control characters other than
newline and carriage return as ``\\u00XX``, each invalid UTF-8 byte as
``\\ufffd``, the rest of UTF-8 as is); ``attrs`` is Go's ``json.Marshal`` of
a string map (keys sorted, the same escapes, tab as ``\\t``) and is absent
when empty.  ``time`` is RFC 3339 in UTC with nine fractional digits; skiff's
times are floats of microsecond precision, so the last three are zero.

:func:`decode_line` reads any line dockerd or skiff wrote; ``jsonfast``
reads whole blocks in skiff's own form.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Any

from skiff.core.timefmt import parse_rfc3339

_LOG_ESCAPES = {chr(i): f"\\u{i:04x}" for i in range(0x20)}
_LOG_ESCAPES.update({"\n": "\\n", "\r": "\\r", '"': '\\"', "\\": "\\\\", "<": "\\u003c",
                     ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                     "\u2029": "\\u2029"})
# invalid UTF-8 bytes, decoded with "surrogateescape", become U+DC80..U+DCFF
_LOG_ESCAPES.update({chr(0xDC00 + b): "\\ufffd" for b in range(0x80, 0x100)})
#: encoding/json (the attrs) differs in one character: a tab is \t
_JSON_ESCAPES = dict(_LOG_ESCAPES, **{"\t": "\\t"})
_SPECIAL = re.compile("[\x00-\x1f\"\\\\<>&\u2028\u2029\udc80-\udcff]")
#: anything in a line that is not plain printable ASCII needing no escape
_BYTES_SPECIAL = re.compile(rb'[\x00-\x1f"\\<>&\x80-\xff]')


#: bytes a message may hold and be written as is: printable ASCII but " \\ < > &
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\<>&')


def encode_lines(lines: list[bytes], end: bytes) -> bytes | None:
    """Whole JSON lines for messages that all end with a newline and need no
    escape but it, in a few whole-buffer operations; None otherwise.

    ``end`` is what follows the log text (``","stream":...}`` and a newline).
    """
    data = b"".join(lines)
    rest = data.translate(None, _PLAIN)  # all that is not plain: newlines only, one a line
    if len(rest) != len(lines) or rest != b"\n" * len(lines) or not data.endswith(b"\n"):
        return None
    head = b'{"log":"'
    return head + data.replace(b"\n", b"\\n" + end + head)[:-len(head)]


def _escape(text: str, table: dict[str, str]) -> str:
    return _SPECIAL.sub(lambda m: table[m.group()], text)


def encode_log(line: bytes) -> bytes:
    """The inside of the ``log`` string (without its quotes) for a message's bytes."""
    body = line[:-1] if line.endswith(b"\n") else line
    if _BYTES_SPECIAL.search(body) is None:
        return body + b"\\n" if len(body) < len(line) else body
    return _escape(line.decode("utf-8", "surrogateescape"), _LOG_ESCAPES).encode()


def json_string(text: str) -> str:
    """``text`` as Go's encoding/json writes a string."""
    return '"' + _escape(text, _JSON_ESCAPES) + '"'


def encode_attrs(attrs: dict[str, str]) -> bytes:
    """``json.Marshal`` of a ``map[string]string``: sorted keys, no spaces; empty for none."""
    if not attrs:
        return b""
    items = ",".join(f"{json_string(k)}:{json_string(v)}" for k, v in sorted(attrs.items()))
    return ("{" + items + "}").encode()


class TimeFormatter:
    """RFC 3339 (nine digits, UTC) from a float, with the seconds part cached.

    Containers log many lines per second, so ``strftime`` runs once a second
    rather than once a line; and the daemon stamps every line of one read
    with the same time, so the last result is cached whole as well.
    """

    __slots__ = ("_last", "_last_ts", "_prefix", "_sec")

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""
        self._last_ts = -1.0
        self._last = ""

    def __call__(self, ts: float) -> str:
        if ts == self._last_ts:
            return self._last
        # round once on the microsecond count so 0.9999996 carries into the seconds
        sec, usec = divmod(int(ts * 1e6 + 0.5), 1_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        self._last_ts = ts
        self._last = text = f"{self._prefix}{usec:06d}000Z"
        return text


class TimeParser:
    """The inverse of :class:`TimeFormatter` with the seconds part cached.

    Falls back to the general RFC 3339 parser for anything not in that
    format (dockerd 20.10 trims trailing zeros, and may write an offset).
    """

    __slots__ = ("_prefix", "_sec")

    def __init__(self) -> None:
        self._prefix = ""
        self._sec = 0

    def __call__(self, text: str) -> float:
        if len(text) == 30 and text[19] == "." and text[29] == "Z":
            prefix = text[:19]
            if prefix != self._prefix:
                try:
                    self._sec = calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))
                except ValueError:
                    return parse_rfc3339(text)
                self._prefix = prefix
            # nanoseconds as an int, divided once: exact to the float's precision
            return self._sec + int(text[20:29]) / 1e9
        return parse_rfc3339(text)


def decode_line(raw: bytes, parse: TimeParser
                ) -> tuple[str, bytes, float, dict[str, str] | None] | None:
    """``(stream, line, time, attrs)`` of one line; None for a torn or foreign one
    (dockerd skips those too)."""
    try:
        obj: Any = json.loads(raw)
        attrs = obj.get("attrs") or None
        if attrs is not None and not isinstance(attrs, dict):
            attrs = None
        # dockerd leaves "log" out of an empty message
        return (obj["stream"], obj.get("log", "").encode("utf-8", "surrogatepass"),
                parse(obj["time"]), attrs)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
