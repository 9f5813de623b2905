"""The ``json-file`` log driver: Docker's default, file for file.

Each message is one JSON object on its own line of ``<id>-json.log``::

    {"log":"hello\\n","stream":"stdout","time":"2026-11-28T01:02:03.123456000Z"}

``time`` is RFC 3339 with nine fractional digits in UTC (Go's
``RFC3339NanoFixed``, as Docker writes it); skiff's message times are floats,
so the last three digits are always zero.

Options (``--log-opt``), with Docker's names and meanings:

``max-size``
    rotate once the file reached this size; a number with an optional
    ``k``/``m``/``g`` unit (decimal, as Docker's ``units.FromHumanSize``).
``max-file``
    how many files to keep, the live one included (``path``, ``path.1`` ...
    ``path.N-1``, ``.1`` the most recent); only meaningful with ``max-size``.
``compress``
    only ``false``: compressed rotated files are not supported.
``labels``, ``labels-regex``, ``env``, ``env-regex``, ``tag``
    accepted for compatibility and ignored (skiff writes no ``attrs``).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from json.encoder import encode_basestring
from typing import IO, Any

from skiff.core.hookspecs import (
    GENERIC_LOG_OPTIONS,
    LogContext,
    LogMessage,
    ReadConfig,
    hookimpl,
)
from skiff.core.timefmt import parse_rfc3339

NAME = "json-file"

_KNOWN_OPTS = frozenset(
    {"max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag"}
)
_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}

#: how much a backwards read fetches at a time when looking for the last lines
_BLOCK = 64 * 1024

#: rotation renames files that a reader may be opening one by one; one lock for
#: every instance because the daemon opens a fresh driver per ``docker logs``
_rotation_lock = threading.Lock()


def parse_size(text: str) -> int:
    """Bytes in a Docker size such as ``10m`` or ``1.5k`` (decimal units)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size: {text!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _parse_bool(text: str) -> bool:
    # Go's strconv.ParseBool, which Docker uses for "compress"
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f"invalid boolean: {text!r}")


def parse_options(options: dict[str, str]) -> tuple[int, int]:
    """Validate ``log-opts`` for json-file; ``(max_size or -1, max_file)``.

    Raises ``ValueError`` naming the option and what is allowed.
    """
    for key in options:
        if key not in _KNOWN_OPTS:
            raise ValueError(f"unknown log opt '{key}' for {NAME} log driver")
    max_size = -1
    if "max-size" in options:
        try:
            max_size = parse_size(options["max-size"])
        except ValueError:
            raise ValueError(
                f"invalid value {options['max-size']!r} for log opt 'max-size' of the {NAME} "
                "log driver: expected a size such as 10m, 512k or 1g"
            ) from None
        if max_size <= 0:
            raise ValueError(f"log opt 'max-size' of the {NAME} log driver must be positive")
    max_file = 1
    if "max-file" in options:
        try:
            max_file = int(options["max-file"])
        except ValueError:
            raise ValueError(
                f"invalid value {options['max-file']!r} for log opt 'max-file' of the {NAME} "
                "log driver: expected a whole number of files, at least 1"
            ) from None
        if max_file < 1:
            raise ValueError(f"log opt 'max-file' of the {NAME} log driver cannot be less than 1")
    if "compress" in options:
        try:
            compress = _parse_bool(options["compress"])
        except ValueError:
            raise ValueError(
                f"invalid value {options['compress']!r} for log opt 'compress' of the {NAME} "
                "log driver: expected true or false"
            ) from None
        if compress:
            raise ValueError(
                f"log opt 'compress=true' is not supported by the {NAME} log driver of skiff; "
                "remove it or set compress=false"
            )
    return max_size, max_file


class _TimeFormatter:
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


class _TimeParser:
    """The inverse of ``_TimeFormatter`` with the seconds part cached.

    Falls back to the general RFC 3339 parser for anything not in our own
    format (a file written by Docker with an offset, say).
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


def _lines_backwards(f: IO[bytes], end: int) -> Iterator[tuple[bytes, int]]:
    """Complete lines of ``f[:end]``, last first, reading blocks from the end.

    Each comes without its newline, with the offset where it starts.  A
    trailing unfinished line (a write in progress) is skipped.
    """
    pos = end
    rest = b""  # the start of a line whose beginning lies in an earlier block
    unfinished = True  # still skipping what follows the last newline
    while pos > 0:
        size = min(_BLOCK, pos)
        pos -= size
        f.seek(pos)
        block = f.read(size)
        if unfinished:
            nl = block.rfind(b"\n")
            if nl < 0:
                continue
            block = block[:nl]
            unfinished = False
        joined = block + rest
        parts = joined.split(b"\n")
        rest = parts[0]
        start = pos + len(joined)  # walks back to each part's first byte
        for line in reversed(parts[1:]):
            start -= len(line) + 1
            if line:
                yield line, start + 1
    if rest:
        yield rest, 0


def _lines_forward(f: IO[bytes], end: int, start: int = 0) -> Iterator[bytes]:
    """Complete lines of ``f[start:end]`` in order, without their newline."""
    f.seek(start)
    left = end - start
    rest = b""
    while left > 0:
        block = f.read(min(1 << 20, left))
        if not block:
            break
        left -= len(block)
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        for line in parts:
            if line:
                yield line


class JsonFileDriver:
    """Writes and reads a container's ``<id>-json.log`` and its rotated siblings.

    The file opens on the first write (a driver built only to read never
    creates it) in append mode, mode 0640 as Docker's (logs may hold
    secrets), unbuffered: every ``write`` is one ``write(2)``, so the log is
    complete whenever a message returns and readers in other threads or
    processes see it at once.
    """

    name = NAME

    def __init__(self, ctx: LogContext) -> None:
        self.path = ctx.log_path
        self.max_size, self.max_file = parse_options(dict(ctx.options))
        self._fd = -1
        self._size = 0
        self._fmt = _TimeFormatter()

    # -- writing -------------------------------------------------------------

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(fd).st_size
        self._fd = fd
        return fd

    def _rotate(self) -> int:
        os.close(self._fd)
        self._fd = -1
        with _rotation_lock:
            # A reader holding the old files open keeps reading them: renames and
            # unlinks never change what an open descriptor sees.
            if self.max_file > 1:
                for i in range(self.max_file - 1, 0, -1):
                    src = f"{self.path}.{i - 1}" if i > 1 else self.path
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(src, f"{self.path}.{i}")
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            return self._open()

    def write(self, msg: LogMessage) -> None:
        fd = self._fd
        if fd < 0:
            fd = self._open()
        if 0 < self.max_size <= self._size:
            fd = self._rotate()
        # Go's encoder turns invalid UTF-8 into U+FFFD; "replace" does the same
        text = encode_basestring(msg.line.decode("utf-8", "replace"))
        data = f'{{"log":{text},"stream":"{msg.stream}","time":"{self._fmt(msg.time)}"}}\n'.encode()
        # one write(2) per message, no user-space buffer: the line is in the
        # file (page cache) when write returns, for readers and after a crash
        n = os.write(fd, data)
        self._size += n
        while n < len(data):  # short write (a signal, a nearly full disk): finish it
            data = data[n:]
            n = os.write(fd, data)
            self._size += n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- reading -------------------------------------------------------------

    def files(self) -> list[str]:
        """The log files that exist, oldest first (``path.N-1`` ... ``path``)."""
        names = [f"{self.path}.{i}" for i in range(self.max_file - 1, 0, -1)] + [self.path]
        return [n for n in names if os.path.exists(n)]

    def _open_all(self) -> list[tuple[IO[bytes], int]]:
        """Every log file opened, oldest first, with its size at this instant.

        Under the rotation lock, so a rotation cannot shift a file under our
        feet between two opens (we would read one file twice or skip one).
        """
        opened: list[tuple[IO[bytes], int]] = []
        with _rotation_lock:
            # rotated files beyond max-file may exist if the option shrank; read them too
            i = max(self.max_file - 1, 0)
            while os.path.exists(f"{self.path}.{i + 1}"):
                i += 1
            for name in [f"{self.path}.{n}" for n in range(i, 0, -1)] + [self.path]:
                try:
                    f = open(name, "rb")  # noqa: SIM115 - closed by the caller
                except FileNotFoundError:
                    continue
                opened.append((f, os.fstat(f.fileno()).st_size))
        return opened

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        """Messages oldest first, filtered by ``config``.

        ``tail`` counts messages that pass the other filters (stream, since,
        until), so ``--tail 5`` on stderr gives the last five stderr lines.
        ``since`` and ``until`` are inclusive.  With ``tail`` the files are read
        backwards from the end and only as far as needed.
        """
        opened = self._open_all()
        try:
            if config.tail is not None and config.tail >= 0:
                yield from self._read_tail(opened, config)
            else:
                yield from self._read_forward(opened, config)
        finally:
            for f, _ in opened:
                f.close()

    def _decode(self, raw: bytes, parse: _TimeParser) -> LogMessage | None:
        try:
            obj = json.loads(raw)
            return LogMessage(obj["stream"], obj["log"].encode(), parse(obj["time"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # a torn or foreign line: Docker skips those too

    def _read_forward(
        self, opened: list[tuple[IO[bytes], int]], config: ReadConfig
    ) -> Iterator[LogMessage]:
        parse = _TimeParser()
        want = {s for s, on in (("stdout", config.stdout), ("stderr", config.stderr)) if on}
        since, until = config.since, config.until
        for f, size in opened:
            for raw in _lines_forward(f, size):
                msg = self._decode(raw, parse)
                if msg is None:
                    continue
                if until is not None and msg.time > until:
                    return
                if msg.stream not in want or (since is not None and msg.time < since):
                    continue
                yield msg

    def _read_tail(
        self, opened: list[tuple[IO[bytes], int]], config: ReadConfig
    ) -> Iterator[LogMessage]:
        # Backwards to where the last ``tail`` messages start, then forwards from
        # there: the messages are never all held, whatever ``tail`` is.
        assert config.tail is not None
        n = config.tail
        if n == 0:
            return
        parse = _TimeParser()
        want = {s for s, on in (("stdout", config.stdout), ("stderr", config.stderr)) if on}
        since, until = config.since, config.until

        def wanted(msg: LogMessage) -> bool:
            if since is not None and msg.time < since:
                return False
            return msg.stream in want and (until is None or msg.time <= until)

        found = 0
        start: tuple[int, int] | None = None  # (file index, offset) of the earliest one
        for index in range(len(opened) - 1, -1, -1):
            f, size = opened[index]
            for raw, offset in _lines_backwards(f, size):
                msg = self._decode(raw, parse)
                if msg is None:
                    continue
                if since is not None and msg.time < since:
                    break  # older still from here on: nothing left to find
                if not wanted(msg):
                    continue
                found += 1
                start = (index, offset)
                if found >= n:
                    break
            else:
                continue
            break
        if start is None:
            return
        first, offset = start
        for index in range(first, len(opened)):
            f, size = opened[index]
            for raw in _lines_forward(f, size, offset if index == first else 0):
                msg = self._decode(raw, parse)
                if msg is not None and wanted(msg):
                    yield msg


def json_file_factory(ctx: LogContext) -> JsonFileDriver:
    """Build a json-file driver; ``ValueError`` for a bad ``--log-opt``."""
    return JsonFileDriver(ctx)


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_log_drivers() -> dict[str, object]:
    return {NAME: json_file_factory}


@hookimpl
def skiff_container_validate(host_config: Mapping[str, Any]) -> None:
    """Unknown or bad log opts are refused at create, as dockerd does, not at start."""
    lc = host_config.get("LogConfig") or {}
    if lc.get("Type") == NAME:
        parse_options({k: v for k, v in (lc.get("Config") or {}).items()
                       if k not in GENERIC_LOG_OPTIONS})
