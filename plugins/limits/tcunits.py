"""tc's units for the ``skiff.net.*`` options: rates, sizes and times read as
tc(8) reads them, and refused with the key and an example when they are not.

Rates need a unit (``10mbit``, ``500kbit``, ``1gbit``, ``2mbps`` for bytes):
tc reads a bare number as bits per second, which nobody means, so it is
refused rather than guessed.  Sizes (bursts) are bytes, a bare number too,
with tc's binary suffixes (``32kb`` is 32768 bytes).  Times (latencies)
take ``s``, ``ms`` and ``us``.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

#: rate units -> bits per second (tc_util.c's suffixes, matched ignoring case)
_RATE_UNITS = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "kibit": 2**10, "mibit": 2**20, "gibit": 2**30, "tibit": 2**40,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12,
    "kibps": 8 * 2**10, "mibps": 8 * 2**20, "gibps": 8 * 2**30, "tibps": 8 * 2**40,
}
#: size units -> bytes ("" is bytes, as in tc)
_SIZE_UNITS = {
    "": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30,
    "kbit": 2**10 // 8, "mbit": 2**20 // 8, "gbit": 2**30 // 8,
}
#: time units -> microseconds ("" is microseconds, as in tc)
_TIME_UNITS = {
    "": 1, "us": 1, "usec": 1, "usecs": 1, "ms": 1000, "msec": 1000, "msecs": 1000,
    "s": 10**6, "sec": 10**6, "secs": 10**6,
}

#: a TBF's rate is a 32-bit count of bytes per second
MIN_RATE = 8_000
MAX_RATE = 32 * 10**9
#: a burst below one full frame (1514 bytes on a 1500 MTU) lets nothing through
MIN_BURST = 2048
MAX_BURST = 64 * 2**20
MIN_LATENCY = 1_000
MAX_LATENCY = 10 * 10**6
#: the value that lifts a limit set at a lower level
NO_LIMIT = "none"


def _split(key: str, value: str, example: str) -> tuple[float, str]:
    m = _NUMBER.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"invalid value {value!r} for {key}: expected a number and a unit, "
                         f"e.g. {key}={example}")
    return float(m.group(1)), m.group(2).lower()


def parse_rate(key: str, value: str) -> int | None:
    """Bits per second of ``value``; None for ``none`` (no limit)."""
    if isinstance(value, str) and value.strip().lower() == NO_LIMIT:
        return None
    number, unit = _split(key, value, "10mbit")
    if unit not in _RATE_UNITS:
        hint = ("a bare number is bits per second to tc; give the unit"
                if not unit else f"unknown unit {unit!r}")
        raise ValueError(f"invalid rate {value!r} for {key}: {hint} (bit, kbit, mbit, gbit, "
                         f"or bps, kbps, mbps for bytes), e.g. {key}=10mbit")
    bits = int(number * _RATE_UNITS[unit])
    if not MIN_RATE <= bits <= MAX_RATE:
        raise ValueError(f"rate {value!r} for {key} is out of range: between 8kbit and 32gbit, "
                         f"e.g. {key}=10mbit")
    return bits


def parse_size(key: str, value: str) -> int:
    """Bytes of ``value`` (a burst)."""
    number, unit = _split(key, value, "32kb")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r} for {key}: unknown unit {unit!r} (b, kb, mb, "
                         f"or a number of bytes), e.g. {key}=32kb")
    size = int(number * _SIZE_UNITS[unit])
    if not MIN_BURST <= size <= MAX_BURST:
        raise ValueError(f"burst {value!r} for {key} is out of range: between 2kb (more than "
                         f"one full frame) and 64mb, e.g. {key}=32kb")
    return size


def parse_time(key: str, value: str) -> int:
    """Microseconds of ``value`` (a latency)."""
    number, unit = _split(key, value, "50ms")
    if unit not in _TIME_UNITS:
        raise ValueError(f"invalid time {value!r} for {key}: unknown unit {unit!r} (s, ms, us), "
                         f"e.g. {key}=50ms")
    usecs = int(number * _TIME_UNITS[unit])
    if not MIN_LATENCY <= usecs <= MAX_LATENCY:
        raise ValueError(f"latency {value!r} for {key} is out of range: between 1ms and 10s, "
                         f"e.g. {key}=50ms")
    return usecs
