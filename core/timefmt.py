"""Docker's time formats: RFC 3339 with nanoseconds, ``docker ps`` durations and
Go's duration strings (``1h30m``)."""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime

_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$"
)

_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def rfc3339(ts: float) -> str:
    """``2026-11-28T01:02:03.123456789Z`` for a Unix time (microsecond precision)."""
    secs = int(ts)
    frac = round((ts - secs) * 1_000_000)
    if frac >= 1_000_000:
        secs, frac = secs + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:06d}000Z"


def now_rfc3339() -> str:
    """The current time as Docker stamps records: RFC 3339, UTC, nanosecond digits."""
    t = time.time()
    ns = int((t - int(t)) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ns:09d}Z"


def rfc3339_nano_trimmed(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC for nanoseconds since the epoch.

    Go trims the fraction's trailing zeros (and drops it when it is zero);
    ``docker cp`` parses the stat header's mtime in this form.
    """
    when = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    frac = ns % 1_000_000_000
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


@functools.lru_cache(maxsize=4096)
def parse_rfc3339(text: str) -> float:
    """The Unix time of an RFC 3339 timestamp; 0.0 for Docker's zero time.

    Cached: a listing parses every container's creation and end times, which
    do not change (two thirds of ``GET /containers/json``'s own time without)."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    if y == "0001":
        return 0.0
    dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    ts = dt.timestamp() + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        ts -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return ts


def parse_time_param(text: str) -> float:
    """A ``since``/``until`` query value: Unix seconds (with fraction) or RFC 3339."""
    try:
        return float(text)
    except ValueError:
        return parse_rfc3339(text)


def human_duration(seconds: float) -> str:
    """Docker's go-units HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def format_duration_ago(stamp: str, now: float | None = None) -> str:
    then = parse_rfc3339(stamp)
    return human_duration((now or time.time()) - then)


def go_duration(text: str) -> float | None:
    """Seconds of a Go duration (``1h30m``, ``-10s``, ``250ms``); None if it is not one."""
    body = text.lstrip("+-")
    if not body:
        return None
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _GO_DURATION.match(body, pos)
        if not m or m.group(1) in ("", "."):
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return -total if text.startswith("-") else total


def format_go_duration(ns: int) -> str:
    """Go's ``time.Duration.String``: ``1m30s``, ``500ms``, ``0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _trim(rest / 1e9)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"
