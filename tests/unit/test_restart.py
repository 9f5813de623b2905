"""Restart policy decisions and validation (core/containers/restart.py)."""

from __future__ import annotations

import pytest

from skiff.core.containers.restart import (
    FIRST_DELAY,
    MAX_DELAY,
    Policy,
    decide,
    next_delay,
    validate,
)


def run(policy: Policy, code: int, count: int = 0, stopped: bool = False,
        ran_for: float = 0.0, prev: float = 0.0, shutting_down: bool = False,
        cancelled: bool = False) -> bool:
    return decide(policy, code, manually_stopped=stopped, restart_count=count,
                  ran_for=ran_for, previous_delay=prev, shutting_down=shutting_down,
                  cancelled=cancelled).restart


def test_no_policy_never_restarts() -> None:
    assert not run(Policy("no"), 1)
    assert not run(Policy("no"), 0)


def test_always_and_unless_stopped_restart_on_any_code() -> None:
    for name in ("always", "unless-stopped"):
        assert run(Policy(name), 0)
        assert run(Policy(name), 137, count=1000)


def test_manual_stop_prevents_every_policy() -> None:
    for name in ("always", "unless-stopped", "on-failure"):
        assert not run(Policy(name), 1, stopped=True, cancelled=True)


def test_manual_stop_flag_alone_keeps_only_unless_stopped_down() -> None:
    # what the daemon asks at start-up: `always` comes back, `unless-stopped` not
    assert run(Policy("always"), 0, stopped=True)
    assert not run(Policy("unless-stopped"), 0, stopped=True)
    assert run(Policy("unless-stopped"), 0, stopped=False)
    assert run(Policy("on-failure"), 1, stopped=True)


def test_shutdown_prevents_restart() -> None:
    assert not run(Policy("always"), 1, shutting_down=True)


def test_on_failure_counts() -> None:
    p = Policy("on-failure", 3)
    assert not run(p, 0)
    assert [run(p, 3, count=n) for n in range(5)] == [True, True, True, False, False]
    # 0 means no maximum
    assert run(Policy("on-failure", 0), 1, count=10_000)


def test_exactly_three_restarts_simulated() -> None:
    p, count, delay, restarts = Policy("on-failure", 3), 0, 0.0, 0
    while True:
        d = decide(p, 3, manually_stopped=False, restart_count=count, ran_for=0.01,
                   previous_delay=delay)
        delay = d.delay
        if not d.restart:
            break
        count += 1
        restarts += 1
    assert restarts == 3


def test_backoff_doubles_and_resets() -> None:
    assert next_delay(0.0, 0.0) == FIRST_DELAY
    assert next_delay(0.1, 1.0) == pytest.approx(0.2)
    assert next_delay(0.2, 1.0) == pytest.approx(0.4)
    assert next_delay(40.0, 1.0) == MAX_DELAY
    assert next_delay(MAX_DELAY, 1.0) == MAX_DELAY
    # a run of 10 s or more starts over
    assert next_delay(6.4, 10.0) == FIRST_DELAY
    delays, d = [], 0.0
    for _ in range(4):
        d = decide(Policy("always"), 1, manually_stopped=False, restart_count=0,
                   ran_for=0.0, previous_delay=d).delay
        delays.append(d)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])


@pytest.mark.parametrize("policy,auto_remove,message", [
    ({"Name": "always", "MaximumRetryCount": 2}, False,
     "^maximum retry count cannot be used with restart policy 'always'$"),
    ({"Name": "unless-stopped", "MaximumRetryCount": 1}, False,
     "^maximum retry count cannot be used with restart policy 'unless-stopped'$"),
    ({"Name": "no", "MaximumRetryCount": -1}, False,
     "^maximum retry count cannot be used with restart policy 'no'$"),
    ({"Name": "on-failure", "MaximumRetryCount": -1}, False,
     "^maximum retry count cannot be negative$"),
    ({"Name": "sometimes"}, False, "^invalid restart policy 'sometimes'$"),
    ({"Name": "always"}, True, "can't create 'AutoRemove' container with restart policy"),
])
def test_validate_refuses(policy: dict[str, object], auto_remove: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate(policy, auto_remove)


def test_validate_normalises() -> None:
    # an empty name stays empty (dockerd's inspect), whatever the count
    assert validate(None) == {"Name": "", "MaximumRetryCount": 0}
    assert validate({"Name": ""}, auto_remove=True) == {"Name": "", "MaximumRetryCount": 0}
    assert validate({"Name": "", "MaximumRetryCount": 1}) == {"Name": "", "MaximumRetryCount": 1}
    assert validate({"Name": "on-failure", "MaximumRetryCount": 3}) == {
        "Name": "on-failure", "MaximumRetryCount": 3}
