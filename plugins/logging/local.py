"""The ``local`` log driver: Docker's compact, rotated format, file for file.

Files live where dockerd 20.10 keeps them, ``<container dir>/local-logs/
container.log`` (the daemon hands that path in ``LogContext.log_path``), each
entry a size-framed protobuf (``localfmt``). Rotation renames ``container.log``
to ``container.log.1``, shifting older ones up (``.1`` the most recent) and
dropping the oldest beyond ``max-file``; with ``compress`` the rotated file is
then gzipped in a thread of its own to ``container.log.1.gz`` (``localgz``), as
dockerd does in a goroutine, so the container's output never waits on zlib.

Options, with dockerd's names, defaults and words:

``max-size``
    rotate once the file reached this size (default ``20m``; decimal units).
``max-file``
    files kept, the live one included (default 5).
``compress``
    gzip rotated files (default true; refused with ``max-file=1``).

The daemon builds the same driver, with ``cache-*`` options renamed, as the
dual-logging cache of a driver that cannot read back (``container-cached.log``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, cast

import structlog

from skiff.core.goparse import parse_bool
from skiff.core.hookspecs import (
    LogContext,
    LogMessage,
    LogRender,
    ReadConfig,
    RenderedLog,
    hookimpl,
)
from skiff.plugins.logging import localfmt, localgz, localrender
from skiff.plugins.logging.common import driver_options
from skiff.plugins.logging.jsonfile import parse_size
from skiff.plugins.logging.logfiles import write_all

NAME = "local"

log = structlog.get_logger("skiff.logging")

_KNOWN_OPTS = ("max-size", "max-file", "compress")
DEFAULT_MAX_SIZE = 20 * 1024 * 1024  # dockerd's: binary megabytes, unlike the option's unit
DEFAULT_MAX_FILE = 5
_INT = re.compile(r"^[+-]?\d+$")
#: what a broken compressed file raises when read
_BROKEN = (localfmt.CorruptEntry, OSError, EOFError, zlib.error)

#: rotation renames files a reader may be opening one by one; one lock for every
#: instance, because the daemon opens a fresh driver per ``docker logs``
_rotation_lock = threading.Lock()


@dataclass(frozen=True)
class Options:
    max_size: int = DEFAULT_MAX_SIZE
    max_file: int = DEFAULT_MAX_FILE
    compress: bool = True



def parse_options(options: Mapping[str, str], prefix: str = "") -> Options:
    """Validate the ``local`` options (named ``prefix`` + key, ``cache-`` for the
    dual-logging cache); ``ValueError`` in dockerd's words.

    dockerd checks the values only when the driver starts; skiff at create.
    """
    unknown = [k for k in options if k.removeprefix(prefix) not in _KNOWN_OPTS
               or not k.startswith(prefix)]
    if unknown:
        raise ValueError(f"unknown log opt '{unknown[0]}' for log driver {NAME}")
    opts = Options()
    size_key, file_key, compress_key = (prefix + k for k in _KNOWN_OPTS)
    if size_key in options:
        text = options[size_key]
        try:
            size = parse_size(text)
        except ValueError:
            raise ValueError(f"invalid value for {size_key}: {text}: invalid size: '{text}'"
                             ) from None
        if size <= 0:  # dockerd takes 0 and then rotates before every entry
            raise ValueError("max size should be a positive number")
        opts = Options(size, opts.max_file, opts.compress)
    if file_key in options:
        text = options[file_key]
        if not _INT.match(text):
            raise ValueError(f'invalid value for {file_key}: {text}: strconv.Atoi: parsing '
                             f'"{text}": invalid syntax')
        count = int(text)
        if count < 0:
            raise ValueError("max file count cannot be less than 0")
        opts = Options(opts.max_size, max(count, 1), opts.compress)
    if compress_key in options:
        text = options[compress_key]
        flag = parse_bool(text)
        if flag is None:
            raise ValueError(f'error reading {compress_key} log option: strconv.ParseBool: '
                             f'parsing "{text}": invalid syntax')
        opts = Options(opts.max_size, opts.max_file, flag)
    if opts.compress and opts.max_file <= 1:
        raise ValueError("compression cannot be enabled when max file count is 1")
    return opts


def _nanos(t: float) -> int:
    # whole microseconds, as json-file writes and the daemon's cursor compares them
    return int(t * 1e6 + 0.5) * 1000


class _Source:
    """One log file opened for reading: plain with its size then, or gzipped."""

    def __init__(self, name: str, f: IO[bytes], gz: bool) -> None:
        self.name = name
        self.f = f
        self.gz = gz
        self.size = sys.maxsize if gz else os.fstat(f.fileno()).st_size
        self._plain: IO[bytes] | None = None

    def stream(self) -> IO[bytes]:
        """Forwards from the start: the gzip stream read as it decompresses."""
        self.f.seek(0)
        if self.gz:
            return cast(IO[bytes], gzip.GzipFile(fileobj=self.f, mode="rb"))
        return self.f

    def seekable(self) -> tuple[IO[bytes], int]:
        """A file that can be read backwards, and its size."""
        if not self.gz:
            return self.f, self.size
        if self._plain is None:
            self._plain = localgz.open_plain(self.name)
        return self._plain, os.fstat(self._plain.fileno()).st_size

    def close(self) -> None:
        self.f.close()
        if self._plain is not None:
            self._plain.close()


class LocalDriver:
    """Writes and reads one container's local-format log and its rotated files.

    Each entry is one ``write(2)`` on an unbuffered descriptor opened on the
    first write (a driver built only to read creates nothing), mode 0640 in a
    0700 directory, as dockerd's.
    """

    name = NAME

    def __init__(self, ctx: LogContext) -> None:
        self.path = ctx.log_path
        self.opts = parse_options(ctx.options)
        self._fd = -1
        self._size = 0
        self._last_time: float | None = None
        self._stamp: tuple[tuple[float, str], bytes] = ((-1.0, ""), b"")
        self._compressor: threading.Thread | None = None

    # -- writing -------------------------------------------------------------

    def _open(self, flags: int = os.O_APPEND) -> int:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, 0o640)
        self._size = os.fstat(fd).st_size
        self._fd = fd
        return fd

    def _rotate(self) -> int:
        os.close(self._fd)
        self._fd = -1
        self._wait_compressor()  # dockerd too waits for the last one before the next
        n, path = self.opts.max_file, self.path
        compress = self.opts.compress and n > 1
        ext = ".gz" if compress else ""
        with _rotation_lock:
            # a reader holding the old files open keeps reading them: renames and
            # unlinks never change what an open descriptor sees
            if n > 1:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}.{n - 1}{ext}")
                for i in range(n - 1, 1, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(f"{path}.{i - 1}{ext}", f"{path}.{i}{ext}")
                os.rename(path, f"{path}.1")
            else:  # a new file rather than a truncated one, for readers holding this one
                os.unlink(path)
            fd = self._open(os.O_APPEND | os.O_TRUNC)
        if compress:
            t = threading.Thread(target=self._compress, args=(f"{path}.1", self._last_time),
                                 name="skiff-local-log-compress")
            t.start()
            self._compressor = t
        return fd

    @staticmethod
    def _compress(path: str, last_time: float | None) -> None:
        try:
            localgz.compress(path, last_time)
        except OSError as exc:  # the plain file stays and is read as it is
            log.warning("log.compress_failed", file=path, error=str(exc))

    def _wait_compressor(self) -> None:
        if self._compressor is not None:
            self._compressor.join()
            self._compressor = None

    def write(self, msg: LogMessage) -> None:
        fd = self._fd
        if fd < 0:
            fd = self._open()
        if self._size >= self.opts.max_size:
            fd = self._rotate()
        head = self._head(msg.stream, msg.time)
        self._size += write_all(fd, localfmt.frame(head, msg.line, msg.partial))
        self._last_time = msg.time

    def _head(self, stream: str, ts: float) -> bytes:
        key, head = self._stamp
        if key != (ts, stream):  # the daemon stamps every line of one read alike
            head = localfmt.entry_head(stream, _nanos(ts))
            self._stamp = ((ts, stream), head)
        return head

    def write_lines(self, stream: str, lines: list[bytes], ts: float) -> None:
        """Whole lines of one stream and time (what one read of the container's
        output gave), framed in C and written with one ``write(2)`` per file
        they go to, rotating where :meth:`write` would have: before an entry
        once the file reached ``max-size``."""
        fd = self._fd
        if fd < 0:
            fd = self._open()
        head = self._head(stream, ts)
        data = b"".join(lines)
        framer = _framer()
        off = 0
        while off < len(data):
            if self._size >= self.opts.max_size:
                fd = self._rotate()
            framed, used = framer.frame(head, data, off, self.opts.max_size - self._size)
            if not used:  # a line past the framer's buffer: the Python way
                end = data.index(b"\n", off) + 1
                self._size += write_all(fd, localfmt.frame(head, data[off:end]))
                off = end
                continue
            self._size += write_all(fd, framed)
            off += used
        self._last_time = ts

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._wait_compressor()

    # -- reading -------------------------------------------------------------

    def _open_all(self) -> list[_Source]:
        """Every log file opened, oldest first, under the rotation lock so that
        no rotation shifts a file between two opens."""
        opened: list[_Source] = []
        path = self.path
        with _rotation_lock:
            last = max(self.opts.max_file - 1, 0)
            # rotated files beyond max-file may exist if the option shrank; read them too
            while (os.path.exists(f"{path}.{last + 1}")
                   or os.path.exists(f"{path}.{last + 1}.gz")):
                last += 1
            for i in range(last, -1, -1):
                name = f"{path}.{i}" if i else path
                try:
                    opened.append(_Source(name, open(name, "rb"), gz=False))  # noqa: SIM115
                    continue
                except FileNotFoundError:
                    pass  # being compressed just now, or compressed long ago
                if i:
                    with contextlib.suppress(FileNotFoundError):
                        opened.append(_Source(name + ".gz", open(name + ".gz", "rb"), gz=True))  # noqa: SIM115
        return opened

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        """Messages oldest first, filtered by ``config``, as json-file's reader:
        ``tail`` counts the messages that pass the other filters, and finds them
        going backwards from the end, reading only as far as they reach."""
        opened = self._open_all()
        try:
            if config.tail is not None and config.tail >= 0:
                yield from self._read_tail(opened, config)
            else:
                yield from self._read_forward(opened, config)
        finally:
            for src in opened:
                src.close()

    @staticmethod
    def _entries(src: _Source, start: int = 0) -> Iterator[tuple[LogMessage, int]]:
        """``src``'s entries from ``start``; a broken entry ends the file, with a warning."""
        try:
            if start:
                f, size = src.seekable()
                yield from localfmt.forward(f, size, start)
            else:
                yield from localfmt.forward(src.stream(), src.size)
        except _BROKEN as exc:
            log.warning("log.corrupt_entry", file=src.name, error=str(exc),
                        action="the rest of this file is skipped")

    @staticmethod
    def _entries_backward(src: _Source) -> Iterator[tuple[LogMessage, int]]:
        """``src``'s entries, last first; a torn or corrupt file read forwards instead
        (as far as it is whole), since going backwards cannot pass the damage."""
        try:
            f, size = src.seekable()
        except _BROKEN as exc:
            log.warning("log.corrupt_entry", file=src.name, error=str(exc),
                        action="the file is skipped")
            return
        try:
            yield from localfmt.backward(f, size)
            return
        except localfmt.CorruptEntry as exc:
            log.warning("log.corrupt_entry", file=src.name, error=str(exc),
                        action="the file is read forwards up to the damage")
        # forwards stops at the first damage, backwards at the last one: what
        # came already lies after both, so none of these repeats it
        whole: list[tuple[LogMessage, int]] = []
        with contextlib.suppress(localfmt.CorruptEntry):
            for entry in localfmt.forward(f, size):
                whole.append(entry)
        yield from reversed(whole)

    def _read_forward(self, opened: list[_Source], config: ReadConfig) -> Iterator[LogMessage]:
        want = {s for s, on in (("stdout", config.stdout), ("stderr", config.stderr)) if on}
        since, until = config.since, config.until
        for src in opened:
            if _older_than_since(src, config):
                continue
            for msg, _ in self._entries(src):
                if until is not None and msg.time > until:
                    return
                if msg.stream in want and (since is None or msg.time >= since):
                    yield msg

    def _read_tail(self, opened: list[_Source], config: ReadConfig) -> Iterator[LogMessage]:
        start = self._tail_start(opened, config)
        if start is None:
            return
        wanted = _filter(config)
        until = config.until
        first, offset = start
        for index in range(first, len(opened)):
            src = opened[index]
            entries = (self._entries(src, offset) if index == first and offset
                       else self._entries(src))
            for msg, _ in entries:
                # the first message past ``until`` ends the read, as going forwards
                # and as the C renderer: a clock set back must not let later ones in
                if until is not None and msg.time > until:
                    return
                if wanted(msg):
                    yield msg

    def _tail_start(self, opened: list[_Source], config: ReadConfig) -> tuple[int, int] | None:
        """(file index, offset) where the last ``tail`` wanted messages start, found
        backwards from the end: the messages are never all held, whatever ``tail`` is."""
        assert config.tail is not None
        n = config.tail
        if n == 0:
            return None
        wanted = _filter(config)
        since = config.since
        found = 0
        start: tuple[int, int] | None = None
        for index in range(len(opened) - 1, -1, -1):
            for msg, offset in self._entries_backward(opened[index]):
                if since is not None and msg.time < since:
                    return start  # older still from here on: nothing left to find
                if not wanted(msg):
                    continue
                found += 1
                start = (index, offset)
                if found >= n:
                    return start
        return start

    def read_rendered(self, config: ReadConfig, how: LogRender) -> Iterator[RenderedLog]:
        """What :meth:`read` returns, rendered for ``docker logs`` in C a block at a
        time (``localrender``); ``--tail`` finds its start as :meth:`read` does."""
        opened = self._open_all()
        try:
            first, offset = 0, 0
            if config.tail is not None and config.tail >= 0:
                start = self._tail_start(opened, config)
                if start is None:
                    return
                first, offset = start
            renderer = localrender.BlockRenderer(config, how)
            for index in range(first, len(opened)):
                src = opened[index]
                if index > first and _older_than_since(src, config):
                    continue
                try:
                    if index == first and offset:
                        f, size = src.seekable()
                        yield from renderer.render_file(f, offset, size)
                    else:
                        yield from renderer.render_file(src.stream(), 0, src.size)
                except _BROKEN as exc:
                    log.warning("log.corrupt_entry", file=src.name, error=str(exc),
                                action="the rest of this file is skipped")
                if renderer.stopped:
                    return
        finally:
            for src in opened:
                src.close()


_framers = threading.local()


def _framer() -> localrender.Framer:
    """This thread's framer (its output buffer is reused from write to write)."""
    framer: localrender.Framer | None = getattr(_framers, "framer", None)
    if framer is None:
        framer = _framers.framer = localrender.Framer()
    return framer


def _filter(config: ReadConfig) -> Callable[[LogMessage], bool]:
    want = {s for s, on in (("stdout", config.stdout), ("stderr", config.stderr)) if on}
    since, until = config.since, config.until

    def wanted(msg: LogMessage) -> bool:
        if since is not None and msg.time < since:
            return False
        return msg.stream in want and (until is None or msg.time <= until)

    return wanted


def _older_than_since(src: _Source, config: ReadConfig) -> bool:
    """A compressed file whose newest message is older than ``--since``: it is not
    even decompressed."""
    if config.since is None or not src.gz:
        return False
    newest = localgz.last_time(src.name)
    return newest is not None and newest < config.since


def local_factory(ctx: LogContext) -> LocalDriver:
    """Build a local driver; ``ValueError`` for a bad ``--log-opt``."""
    return LocalDriver(ctx)


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.3"


@hookimpl
def skiff_log_drivers() -> dict[str, object]:
    return {NAME: local_factory}


@hookimpl
def skiff_container_validate(host_config: Mapping[str, Any]) -> None:
    """Bad options are refused at create (dockerd finds bad values only at start).

    The ``cache-*`` options of any driver are this driver's options for the
    dual-logging cache, so they are checked here too; ``cache-disabled`` is
    the daemon's (``logopts.check_generic``).
    """
    options = driver_options(NAME, host_config)
    if options is not None:
        parse_options(options)
    config = (host_config.get("LogConfig") or {}).get("Config") or {}
    cache = {k: v for k, v in config.items()
             if k.startswith("cache-") and k != "cache-disabled"}
    if cache:
        parse_options(cache, prefix="cache-")


