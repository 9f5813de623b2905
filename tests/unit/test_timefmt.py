"""skiff.core.timefmt: the one clock stamp the image records share."""

from __future__ import annotations

import re
import time

from skiff.core.timefmt import now_rfc3339, parse_rfc3339


def test_now_rfc3339_is_utc_with_nanosecond_digits_and_parses_back() -> None:
    before = time.time()
    stamp = now_rfc3339()
    after = time.time()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp)
    assert before - 1e-6 <= parse_rfc3339(stamp) <= after + 1e-6
