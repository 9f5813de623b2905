"""The ``json-file`` log driver: Docker's default, file for file.

Each message is one JSON object on its own line of ``<id>-json.log``, in
dockerd 20.10's form (see ``jsonlog``)::

    {"log":"hello\\n","stream":"stdout","attrs":{"tag":"web"},"time":"2026-11-28T01:02:03.123456000Z"}

Options (``--log-opt``), with Docker's names and meanings:

``max-size``
    rotate once the file reached this size; a number with an optional
    ``k``/``m``/``g`` unit (decimal, as Docker's ``units.FromHumanSize``);
    ``-1``: never rotate.
``max-file``
    how many files to keep, the live one included (``path``, ``path.1`` ...
    ``path.N-1``, ``.1`` the most recent).
``compress``
    gzip the rotated files (``path.1.gz`` ...); needs ``max-file`` of 2 or more.
``labels``, ``labels-regex``, ``env``, ``env-regex``
    the container's labels and environment variables so selected go into
    every line's ``attrs`` (and ``docker logs --details`` shows them).
``tag``
    when given (and not empty), ``attrs`` holds ``tag``: the template
    rendered (``{{.Name}}``, ``{{.ID}}`` ...).  No tag by default, as dockerd.

Bounded by default, skiff's departure from Docker: with neither ``max-size``
nor ``max-file`` given (by the container or daemon.json ``log-opts``), the
log is kept to :data:`DEFAULT_MAX_SIZE` x :data:`DEFAULT_MAX_FILE` files;
``max-size`` alone keeps Docker's one file, ``max-file`` alone gets the
default size.  ``max-size=-1`` is Docker's unbounded log.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from skiff.core.containers.logrender import details_text, render_all
from skiff.core.goparse import parse_bool
from skiff.core.hookspecs import (
    LogContext,
    LogMessage,
    LogRender,
    ReadConfig,
    RenderedLog,
    hookimpl,
)
from skiff.plugins.logging.common import (
    check_attribute_options,
    check_tag,
    driver_options,
    extra_attributes,
    render_tag,
)
from skiff.plugins.logging.jsonfast import FastRenderer
from skiff.plugins.logging.jsonlog import (
    TimeFormatter,
    TimeParser,
    decode_line,
    encode_attrs,
    encode_lines,
    encode_log,
)
from skiff.plugins.logging.logfiles import (
    LogFile,
    LogFileSet,
    NoWaitBudget,
    blocks_forward,
    lines_backwards,
    lines_forward,
    lines_with_offsets,
    write_all,
)

NAME = "json-file"

_KNOWN_OPTS = frozenset(
    {"max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag"}
)
_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}

#: skiff's bound when none is given: 10 MB x 5 files (Docker: unbounded)
DEFAULT_MAX_SIZE = 10 * 10**6
DEFAULT_MAX_FILE = 5
#: the most messages, and bytes read, a ``--tail`` served on the event loop takes
#: (``read_rendered_nowait``): about a millisecond of work at most
NOWAIT_TAIL = 1000
NOWAIT_BYTES = 1 << 20


def parse_size(text: str) -> int:
    """Bytes in a Docker size such as ``10m`` or ``1.5k`` (decimal units)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size: {text!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _parse_bool(text: str) -> bool:
    # Go's strconv.ParseBool, which Docker uses for "compress"
    value = parse_bool(text)
    if value is None:
        raise ValueError(f"invalid boolean: {text!r}")
    return value


@dataclass(frozen=True)
class Options:
    max_size: int  #: -1: never rotate
    max_file: int
    compress: bool


def _bad(key: str, value: str, expected: str) -> ValueError:
    return ValueError(f"invalid value {value!r} for log opt '{key}' of the {NAME} log driver: "
                      f"expected {expected}")


def parse_options(options: Mapping[str, str]) -> Options:
    """Validate ``log-opts`` for json-file, the default bound filled in.

    Raises ``ValueError`` naming the option and what is allowed.
    """
    for key in options:
        if key not in _KNOWN_OPTS:
            raise ValueError(f"unknown log opt '{key}' for {NAME} log driver")
    max_size = DEFAULT_MAX_SIZE
    if "max-size" in options:
        text = options["max-size"].strip()
        if text == "-1":
            max_size = -1
        else:
            try:
                max_size = parse_size(text)
            except ValueError:
                raise _bad("max-size", text, "a size such as 10m, 512k or 1g, or -1 for "
                           "no limit") from None
            if max_size <= 0:
                raise ValueError(f"log opt 'max-size' of the {NAME} log driver must be "
                                 "positive (or -1 for no limit)")
    max_file = DEFAULT_MAX_FILE if "max-size" not in options else 1
    if "max-file" in options:
        try:
            max_file = int(options["max-file"])
        except ValueError:
            raise _bad("max-file", options["max-file"],
                       "a whole number of files, at least 1") from None
        if max_file < 1:
            raise ValueError(f"log opt 'max-file' of the {NAME} log driver cannot be less than 1")
    compress = False
    if "compress" in options:
        try:
            compress = _parse_bool(options["compress"])
        except ValueError:
            raise _bad("compress", options["compress"], "true or false") from None
        if compress and (max_file < 2 or max_size == -1):
            # dockerd's words
            raise ValueError("compress cannot be true when max-file is less than 2 or "
                             "max-size is not set")
    if options.get("tag"):
        try:
            check_tag(options["tag"])
        except ValueError as exc:
            raise ValueError(f"log opt 'tag' of the {NAME} log driver: {exc}") from None
    try:
        check_attribute_options(dict(options))
    except ValueError as exc:
        raise ValueError(f"log opt {exc}") from None
    return Options(max_size, max_file, compress)


def attributes(ctx: LogContext) -> dict[str, str]:
    """Every line's ``attrs``: the selected labels and env, and ``tag`` when asked for."""
    attrs = extra_attributes(ctx)
    if ctx.options.get("tag"):  # no default tag: only when the user asked, as dockerd
        attrs["tag"] = render_tag(ctx)
    return attrs


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
        opts = parse_options(ctx.options)
        self.max_size, self.max_file = opts.max_size, opts.max_file
        self.files = LogFileSet(self.path, opts.max_size, opts.max_file, opts.compress)
        self.attrs = attributes(ctx)
        attrs_json = encode_attrs(self.attrs)
        self._attrs_part = b'"attrs":' + attrs_json + b"," if attrs_json else b""
        self._fd = -1
        self._size = 0
        self._last_time = ""
        self._fmt = TimeFormatter()
        #: the end of a line after the log text, per (stream, time text)
        self._ends: dict[tuple[str, str], bytes] = {}

    # -- writing -------------------------------------------------------------

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(fd).st_size
        self._fd = fd
        return fd

    def _rotate(self) -> int:
        os.close(self._fd)
        self._fd = -1
        self.files.rotate(self._last_time)
        return self._open()

    def _end(self, stream: str, ts: float) -> bytes:
        stamp = self._fmt(ts)
        end = self._ends.get((stream, stamp))
        if end is None:
            if len(self._ends) > 4:
                self._ends.clear()
            end = b'","stream":"' + stream.encode() + b'",' + self._attrs_part + \
                b'"time":"' + stamp.encode() + b'"}\n'
            self._ends[(stream, stamp)] = end
        self._last_time = stamp
        return end

    def write(self, msg: LogMessage) -> None:
        fd = self._fd
        if fd < 0:
            fd = self._open()
        if 0 < self.max_size <= self._size:
            fd = self._rotate()
        record = b'{"log":"' + encode_log(msg.line) + self._end(msg.stream, msg.time)
        self._size += write_all(fd, record)

    def write_lines(self, stream: str, lines: list[bytes], ts: float) -> None:
        """Several messages of one stream and time: one ``write(2)`` per file they go to."""
        end = self._end(stream, ts)
        data = encode_lines(lines, end)
        if data is None:
            data = b"".join([b'{"log":"' + encode_log(line) + end for line in lines])
        self._write_lines(data)

    def _write_lines(self, data: bytes) -> None:
        """Whole JSON lines, rotating where one message at a time would have: before
        a message once the file reached ``max-size``."""
        fd = self._fd
        if fd < 0:
            fd = self._open()
        while data:
            if 0 < self.max_size <= self._size:
                fd = self._rotate()
            room = self.max_size - self._size
            if self.max_size < 0 or len(data) <= room:
                self._size += write_all(fd, data)
                return
            # up to the end of the line that reaches the size
            cut = data.find(b"\n", room - 1) + 1 or len(data)
            self._size += write_all(fd, data[:cut])
            data = data[cut:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.files.wait()

    # -- reading -------------------------------------------------------------

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        """Messages oldest first, filtered by ``config``.

        ``tail`` counts messages that pass the other filters (stream, since,
        until), so ``--tail 5`` on stderr gives the last five stderr lines.
        ``since`` and ``until`` are inclusive.  With ``tail`` the files are read
        backwards from the end and only as far as needed.
        """
        opened = self.files.open_all()
        try:
            if config.tail is not None and config.tail >= 0:
                start = _tail_start(opened, config)
                if start is not None:
                    yield from _read_forward(opened, config, start)
            else:
                yield from _read_forward(opened, config, (0, 0))
        finally:
            for lf in opened:
                lf.close()

    def read_rendered_nowait(self, config: ReadConfig, how: LogRender) -> list[RenderedLog]:
        """What :meth:`read_rendered` gives, all of it, on the caller's thread (the
        event loop) when that can be done without waiting: a ``--tail`` of at
        most ``NOWAIT_TAIL`` messages from plain files the page cache holds,
        ``NOWAIT_BYTES`` read at most.  Else ``BlockingIOError``, before anything
        was returned: the daemon then reads in a worker thread as usual.  A
        ``docker logs --tail 10`` is then served without a thread hop, which
        on a busy machine costs several times the read itself."""
        if config.tail is None or not 0 <= config.tail <= NOWAIT_TAIL:
            raise BlockingIOError("not a short tail")
        opened = self.files.open_all(nowait=NoWaitBudget(NOWAIT_BYTES))
        try:
            start = _tail_start(opened, config)
            if start is None:
                return []
            return list(_render_forward(opened, config, how, start, self._attrs_part,
                                        self.attrs))
        finally:
            for lf in opened:
                lf.close()

    def read_rendered(self, config: ReadConfig, how: LogRender) -> Iterator[RenderedLog]:
        """The messages of :meth:`read`, rendered a block of the file at a time.

        Each block in skiff's own form is scanned in one regular-expression
        call and its lines rendered from the escaped text and the time as
        written (``--timestamps`` shows the same nine digits); ``since`` and
        ``until`` compare the time texts, which sort as the times do.  A block
        in any other form goes through :meth:`read`'s decoder.
        """
        opened = self.files.open_all()
        try:
            if config.tail is not None and config.tail >= 0:
                start = _tail_start(opened, config)
                if start is None:
                    return
            else:
                start = (0, 0)
            yield from _render_forward(opened, config, how, start, self._attrs_part, self.attrs)
        finally:
            for lf in opened:
                lf.close()


Position = tuple[int, int]  #: (file index, offset) where reading starts


def _wanted_streams(config: ReadConfig) -> set[str]:
    return {s for s, on in (("stdout", config.stdout), ("stderr", config.stderr)) if on}


def _skip_file(lf: LogFile, config: ReadConfig) -> bool:
    # a compressed file's header tells the time of its last message
    return (config.since is not None and lf.last_time is not None
            and lf.last_time < config.since)


def _read_forward(opened: list[LogFile], config: ReadConfig, start: Position
                  ) -> Iterator[LogMessage]:
    parse = TimeParser()
    want = _wanted_streams(config)
    since, until = config.since, config.until
    first, offset = start
    for index in range(first, len(opened)):
        lf = opened[index]
        if _skip_file(lf, config):
            continue
        for raw in lines_forward(lf, offset if index == first else 0):
            got = decode_line(raw, parse)
            if got is None:
                continue
            stream, line, when, attrs = got
            if until is not None and when > until:
                return
            if stream not in want or (since is not None and when < since):
                continue
            yield LogMessage(stream, line, when, attrs)  # type: ignore[arg-type]


def _tail_start(opened: list[LogFile], config: ReadConfig) -> Position | None:
    """Where the last ``tail`` wanted messages start; None when there are none.

    Plain files are read backwards from the end, only as far as needed; a
    compressed file has to be read from its start, so it is scanned forwards
    keeping the offsets of its last wanted messages.
    """
    assert config.tail is not None
    n = config.tail
    if n == 0:
        return None
    parse = TimeParser()
    want = _wanted_streams(config)
    since, until = config.since, config.until

    def wanted(raw: bytes) -> bool | None:
        """Whether the line counts; None when it is older than ``since``."""
        got = decode_line(raw, parse)
        if got is None:
            return False
        stream, _, when, _ = got
        if since is not None and when < since:
            return None
        return stream in want and (until is None or when <= until)

    found = 0
    start: Position | None = None
    for index in range(len(opened) - 1, -1, -1):
        lf = opened[index]
        if _skip_file(lf, config):
            break
        if lf.compressed:
            offsets: list[int] = []
            for raw, offset in lines_with_offsets(lf):
                if wanted(raw):
                    offsets.append(offset)
                    if len(offsets) > 2 * (n - found) + 1024:
                        del offsets[:len(offsets) - (n - found)]
            offsets = offsets[-(n - found):]
            if offsets:
                found += len(offsets)
                start = (index, offsets[0])
            if found >= n:
                break
            continue
        older = False
        for raw, offset in lines_backwards(lf):
            ok = wanted(raw)
            if ok is None:
                older = True
                break  # older still from here on: nothing left to find
            if ok:
                found += 1
                start = (index, offset)
                if found >= n:
                    break
        if older or found >= n:
            break
    return start


def _render_forward(opened: list[LogFile], config: ReadConfig, how: LogRender,
                    start: Position, attrs_part: bytes, attrs: dict[str, str]
                    ) -> Iterator[RenderedLog]:
    fmt = TimeFormatter()
    parse = TimeParser()
    # inclusive bounds as time texts, rounded inwards to the microsecond the file keeps
    fast = FastRenderer(
        attrs_part, want={s.encode() for s in _wanted_streams(config)},
        lo=fmt(_ceil_us(config.since)).encode() if config.since is not None else None,
        hi=fmt(_floor_us(config.until)).encode() if config.until is not None else None,
        timestamps=how.timestamps,
        details=details_text(attrs) + b" " if how.details else None, framed=how.framed,
        coalesce=how.coalesce)
    first, offset = start
    for index in range(first, len(opened)):
        lf = opened[index]
        if _skip_file(lf, config):
            continue
        for block in blocks_forward(lf, offset if index == first else 0):
            done = fast.render(block)
            if done is None:
                stop = False
                for out in _render_slow(block, config, how, parse):
                    stop = out.last_time < 0
                    if out.data:
                        yield out
                if stop:
                    return
                continue
            if done.data:
                yield RenderedLog(done.data, parse(done.last_stamp.decode()), done.last_count)
            if done.stop:
                return


def _render_slow(block: bytes, config: ReadConfig, how: LogRender, parse: TimeParser
                 ) -> Iterator[RenderedLog]:
    """A block not in skiff's exact form, line by line through the decoder."""
    want = _wanted_streams(config)
    msgs: list[LogMessage] = []
    last_time = 0.0
    count = 0
    stop = False
    for raw in block.split(b"\n"):
        got = decode_line(raw, parse) if raw else None
        if got is None:
            continue
        stream, line, when, attrs = got
        if stream not in want or (config.since is not None and when < config.since):
            continue
        if config.until is not None and when > config.until:
            stop = True
            break
        msgs.append(LogMessage(stream, line, when, attrs))  # type: ignore[arg-type]
        if when == last_time:
            count += 1
        else:
            last_time, count = when, 1
    if msgs:
        yield RenderedLog(render_all(msgs, how), last_time, count)
    if stop:
        yield RenderedLog(b"", -1.0, 0)  # tells the caller nothing after this is wanted


def _attrs(text: bytes) -> dict[str, str] | None:
    try:
        obj = json.loads(text) if text else None
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _ceil_us(t: float) -> float:
    us = int(t * 1e6)
    return (us + (1 if us / 1e6 < t else 0)) / 1e6


def _floor_us(t: float) -> float:
    return int(t * 1e6) / 1e6


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
    options = driver_options(NAME, host_config)
    if options is not None:
        parse_options(options)
