"""Without skiff-monitor (no C compiler at install) the daemon says so once."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from skiff.plugins.isolation import monitor, runtime


def test_a_missing_monitor_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "MONITOR_PATH", "/nonexistent/skiff-monitor")
    monkeypatch.setattr(runtime, "_monitor_warned", False)
    assert not monitor.available()
    with capture_logs() as logs:
        runtime._warn_without_monitor()
        runtime._warn_without_monitor()  # a restarted fork server: not again
    assert [e["event"] for e in logs] == ["runtime.no_monitor"]
    assert logs[0]["path"] == "/nonexistent/skiff-monitor"


def test_a_built_monitor_is_not_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    if not monitor.available():
        pytest.skip("skiff-monitor is not built")
    monkeypatch.setattr(runtime, "_monitor_warned", False)
    with capture_logs() as logs:
        runtime._warn_without_monitor()
    assert logs == []
