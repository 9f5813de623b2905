"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_cgroupfs import Harness, leftovers


@pytest.fixture
def h() -> Iterator[Harness]:
    """The cgroupfs driver under a parent group of its own; the test must leave none."""
    harness = Harness()
    try:
        yield harness
    finally:
        left = leftovers(harness.parent)
        harness.cleanup()
        assert not leftovers(harness.parent)
        assert not left, f"the test left cgroups behind: {left}"
