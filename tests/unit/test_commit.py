"""Pure logic of commit and prune: Moby's config merge, Docker's time filters."""

from __future__ import annotations

import pytest

from skiff.core.api.commit import go_duration, timestamp
from skiff.core.errors import InvalidParameter
from skiff.core.images.commit import EMPTY_TAR_DIFF_ID, merge_config


def test_empty_tar_digest_is_two_zero_blocks() -> None:
    import hashlib

    assert "sha256:" + hashlib.sha256(bytes(1024)).hexdigest() == EMPTY_TAR_DIFF_ID


def test_merge_fills_what_the_user_left_out() -> None:
    container = {
        "User": "nobody", "Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"], "Entrypoint": None,
        "WorkingDir": "/w", "Labels": {"x": "1", "y": "2"}, "ExposedPorts": {"80/tcp": {}},
        "Volumes": {"/v": {}}, "StopSignal": "SIGINT",
    }
    user = {"Env": ["A=2", "B=3"], "Labels": {"x": "9"}, "ExposedPorts": {"443/tcp": {}}}
    out = merge_config(user, container)
    assert out["User"] == "nobody"
    assert out["Env"] == ["A=2", "B=3", "PATH=/bin"]  # the user's A wins
    assert out["Labels"] == {"x": "9", "y": "2"}
    assert out["ExposedPorts"] == {"443/tcp": {}, "80/tcp": {}}
    assert out["Cmd"] == ["sh"] and out["WorkingDir"] == "/w"
    assert out["Volumes"] == {"/v": {}} and out["StopSignal"] == "SIGINT"


def test_merge_keeps_a_user_entrypoint_and_its_cmd() -> None:
    out = merge_config({"Entrypoint": ["/e"], "Cmd": None},
                       {"Entrypoint": ["/old"], "Cmd": ["old"]})
    assert out["Entrypoint"] == ["/e"] and out["Cmd"] is None
    out = merge_config({"Cmd": ["new"]}, {"Entrypoint": ["/old"], "Cmd": ["old"]})
    assert out["Cmd"] == ["new"] and out["Entrypoint"] == ["/old"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("10m", 600.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("250ms", 0.25), ("-10s", -10.0),
    ("0", 0.0), ("2h45m30s", 9930.0),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "h", "10x", "1h 2m", "."])
def test_not_go_durations(text: str) -> None:
    assert go_duration(text) is None


def test_until_timestamps() -> None:
    now = 1_700_000_000.0
    assert timestamp("1699999999", now) == 1699999999.0
    assert timestamp("1699999999.5", now) == 1699999999.5
    assert timestamp("24h", now) == now - 86400
    assert timestamp("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    assert timestamp("2023-11-14T23:13:20+01:00", now) == 1_700_000_000.0
    assert timestamp("2023-11-14", now) == 1_699_920_000.0
    with pytest.raises(InvalidParameter, match="failed to parse"):
        timestamp("yesterday", now)
