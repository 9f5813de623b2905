"""skiff.core.timefmt: the clock stamps the records and the cp stat header share."""

from __future__ import annotations

import re
import time

from skiff.core.timefmt import now_rfc3339, parse_rfc3339, rfc3339_nano_trimmed


def test_now_rfc3339_is_utc_with_nanosecond_digits_and_parses_back() -> None:
    before = time.time()
    stamp = now_rfc3339()
    after = time.time()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp)
    assert before - 1e-6 <= parse_rfc3339(stamp) <= after + 1e-6


def test_rfc3339_nano_trimmed_drops_trailing_zeros_as_go_does() -> None:
    base = 1_700_000_000 * 1_000_000_000  # 2023-11-14T22:13:20Z
    assert rfc3339_nano_trimmed(base) == "2023-11-14T22:13:20Z"
    assert rfc3339_nano_trimmed(base + 500_000_000) == "2023-11-14T22:13:20.5Z"
    assert rfc3339_nano_trimmed(base + 120_000) == "2023-11-14T22:13:20.00012Z"
    assert rfc3339_nano_trimmed(base + 1) == "2023-11-14T22:13:20.000000001Z"
    assert rfc3339_nano_trimmed(base + 999_999_999) == "2023-11-14T22:13:20.999999999Z"
    assert rfc3339_nano_trimmed(0) == "1970-01-01T00:00:00Z"


def test_rfc3339_nano_trimmed_parses_back_to_the_nanosecond() -> None:
    ns = 1_234_567_890_123_456_789
    stamp = rfc3339_nano_trimmed(ns)
    assert stamp == "2009-02-13T23:31:30.123456789Z"
    assert round(parse_rfc3339(stamp) * 1e9) // 1000 == ns // 1000
