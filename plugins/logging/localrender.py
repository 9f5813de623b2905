"""The ``local`` format without a Python object per message: ``docker logs`` of
its files (:class:`BlockRenderer`), and the framing of a run of lines for the
writer (:class:`Framer`).

The C side (``_localc``) walks a block of entries and writes what
``docker logs`` sends for each; this module feeds it blocks of a file,
carries an entry cut by a block's end over to the next block, and hands an
entry the C side will not take (a corrupt one, a time it cannot show) to the
Python decoder, which raises the same :class:`~localfmt.CorruptEntry` as the
general reader or renders it.  So a file renders byte for byte as
``LocalDriver.read`` followed by ``logrender.render`` would.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import IO

from skiff.core.containers.logrender import render
from skiff.core.hookspecs import LogRender, ReadConfig, RenderedLog
from skiff.plugins.logging import localfmt
from skiff.plugins.logging._localc import ffi, lib  # type: ignore[import-not-found]

_STDOUT, _STDERR, _TIMESTAMPS, _FRAMED, _COALESCE, _DETAILS = 1, 2, 4, 8, 16, 32
_MORE, _FULL, _UNTIL = 0, 1, 2
_INT64 = (-(1 << 63), (1 << 63) - 1)
#: room for the output of one input block in the common case (a frame header
#: and a time per short line); it grows for a block that needs more
_OUT_SIZE = 4 * localfmt.BLOCK


def _ns(t: float) -> int:
    return round(t * 1e9)


def _seconds(ns: int) -> float:
    # as ``localfmt.decode`` computes a message's time, so cursors agree
    sec, nsec = divmod(ns, 1_000_000_000)
    return sec + nsec / 1e9


class BlockRenderer:
    """Renders the entries of one read (``config``, ``how``), file after file."""

    def __init__(self, config: ReadConfig, how: LogRender) -> None:
        self.config = config
        self.how = how
        st = ffi.new("struct skiff_lr *")
        st.lo_ns = _ns(config.since) if config.since is not None else _INT64[0]
        st.hi_ns = _ns(config.until) if config.until is not None else _INT64[1]
        st.flags = ((_STDOUT if config.stdout else 0) | (_STDERR if config.stderr else 0)
                    | (_TIMESTAMPS if how.timestamps else 0) | (_FRAMED if how.framed else 0)
                    | (_COALESCE if how.coalesce else 0) | (_DETAILS if how.details else 0))
        # the local format keeps no attrs: ``--details`` shows an empty text and its space
        self._details = ffi.new("uint8_t[1]")
        st.details = self._details
        st.details_len = 0
        st.max_entry = localfmt.MAX_ENTRY
        self._st = st
        self._out = ffi.new("uint8_t[]", _OUT_SIZE)
        self._cap = _OUT_SIZE
        #: a message past ``until`` was met: nothing after it is wanted
        self.stopped = False

    def render_file(self, f: IO[bytes], start: int, end: int) -> Iterator[RenderedLog]:
        """``f[start:end]`` rendered; an entry cut short by ``end`` ends it quietly
        (a write in progress), as ``localfmt.forward`` does."""
        f.seek(start)
        left = end - start
        rest = b""
        while left > 0 and not self.stopped:
            chunk = f.read(min(localfmt.BLOCK, left))
            if not chunk:
                return
            left -= len(chunk)
            data = rest + chunk if rest else chunk
            used = yield from self._render_block(data)
            rest = data[used:]

    def _render_block(self, data: bytes) -> Generator[RenderedLog, None, int]:
        """Renders the whole entries of ``data``; returns how many bytes they took."""
        st = self._st
        src = ffi.from_buffer(data)
        off = 0
        while True:
            status = lib.skiff_local_render(st, src + off, len(data) - off, self._out, self._cap)
            if st.written:
                yield RenderedLog(bytes(ffi.buffer(self._out, st.written)),
                                  _seconds(st.last_ns), st.last_count)
            off += st.consumed
            if status == _MORE:
                return off
            if status == _UNTIL:
                self.stopped = True
                return off
            if status == _FULL:
                if not st.written:  # one entry larger than the whole buffer
                    self._cap *= 2
                    self._out = ffi.new("uint8_t[]", self._cap)
                continue
            off = yield from self._one_entry(data, off)
            if self.stopped:
                return off

    def _one_entry(self, data: bytes, off: int) -> Generator[RenderedLog, None, int]:
        """The entry at ``off`` the Python way: ``CorruptEntry`` if it is one."""
        (size,) = localfmt.SIZE.unpack_from(data, off)
        if size > localfmt.MAX_ENTRY:
            raise localfmt.CorruptEntry(f"log entry of {size} bytes at block offset {off} "
                                        f"(at most {localfmt.MAX_ENTRY})")
        stop = off + 4 + size
        if localfmt.SIZE.unpack_from(data, stop)[0] != size:
            raise localfmt.CorruptEntry(f"log entry at block offset {off}: its sizes before "
                                        "and after disagree")
        msg = localfmt.decode(data, off + 4, stop)
        cfg = self.config
        if cfg.until is not None and msg.time > cfg.until:
            self.stopped = True
        elif ((cfg.stdout if msg.stream == "stdout" else cfg.stderr)
              and (cfg.since is None or msg.time >= cfg.since)):
            yield RenderedLog(render(msg, self.how), msg.time, 1)
        return stop + 4


class Framer:
    """Frames runs of whole lines as entries (``skiff_local_frame``), into a buffer
    kept from call to call; one per thread.  Every draining thread of a
    non-blocking container holds one, so it is small: a read that frames to
    more (two-byte lines grow 14-fold) is written in several passes."""

    SIZE = 256 << 10

    def __init__(self) -> None:
        self._out = ffi.new("uint8_t[]", self.SIZE)
        self._used = ffi.new("int64_t *")

    def frame(self, head: bytes, data: bytes, off: int, budget: int) -> tuple[memoryview, int]:
        """Entries for the newline-ended lines of ``data[off:]`` (all end with one),
        up to the one that brings the output to ``budget`` bytes; a view of the
        entries (valid until the next call) and how many bytes of ``data`` they
        took (0: the next line alone does not fit the buffer)."""
        src = ffi.from_buffer(data)
        n = lib.skiff_local_frame(head, len(head), src + off, len(data) - off, self._out,
                                  self.SIZE, budget, self._used)
        return memoryview(ffi.buffer(self._out, n)), int(self._used[0])
