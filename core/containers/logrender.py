"""A log message as ``docker logs`` shows it (``hookspecs.LogRender``).

Shared by the daemon's general path and by drivers that render runs of
messages themselves (``read_rendered``), so both give the same bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import replace
from urllib.parse import quote_plus

from skiff.core.containers.framing import HEADER, MAX_FRAME, STREAM_TYPES, multiplex_frame
from skiff.core.hookspecs import LogMessage, LogRender
from skiff.core.timefmt import rfc3339


def details_text(attrs: Mapping[str, str] | None) -> bytes:
    """``--details``: the attrs sorted by key, each ``key=value`` query-escaped
    (Go's ``url.QueryEscape``: space as ``+``), comma-separated; empty for none."""
    if not attrs:
        return b""
    return ",".join(f"{quote_plus(k, safe='~')}={quote_plus(v, safe='~')}"
                    for k, v in sorted(attrs.items())).encode()


def frame(stream: str, data: bytes) -> bytes:
    """One frame (or several, for a payload past the uint32 limit)."""
    if len(data) > MAX_FRAME:
        return multiplex_frame(STREAM_TYPES[stream], data)
    return HEADER.pack(STREAM_TYPES[stream], len(data)) + data


def render(msg: LogMessage, how: LogRender) -> bytes:
    """What ``docker logs`` sends for ``msg``: timestamp, details, the line; framed."""
    data = msg.line
    if how.details:
        data = details_text(msg.attrs) + b" " + data
    if how.timestamps:
        data = rfc3339(msg.time).encode() + b" " + data
    return frame(msg.stream, data) if how.framed else data


def render_all(msgs: Iterable[LogMessage], how: LogRender) -> bytes:
    """Messages rendered one after the other; with ``coalesce``, one frame per run
    of one stream."""
    if not (how.framed and how.coalesce):
        return b"".join([render(m, how) for m in msgs])
    bare = replace(how, framed=False)
    return b"".join([frame(stream, b"".join([render(m, bare) for m in run]))
                     for stream, run in itertools.groupby(msgs, key=lambda m: m.stream)])
