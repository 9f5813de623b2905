"""Issue 21's chaos harness in CI: skiffd SIGKILLed at random points amid a
mixed workload of three clients (sometimes a container's monitor first, or
its fork server with it), restarted each time, nothing lost, nothing phantom,
nothing leaked (tests/chaos.py says what is checked after every restart).

CI runs as many kill points as fit in CHAOS_SECONDS (each costs a daemon
start: about 0.5-0.7 s on the shared 2-core machine, most of it skiffd's
Python imports; 155 and 164 in 180 s at load 5-7, docs/design.md); the
count is printed and must reach MIN_KILLS.  Every round's
choices come from the seed and the round's number, so a shorter run is the
start of a longer one.  Replay a failure with the seed and count it prints
(``SKIFF_CHAOS_SEED=<seed> SKIFF_CHAOS_KILLS=<n>``); a longer run before a
release: docs/design.md, "After a crash"."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos import run, seed_and_rounds
from tests.daemon import running_daemon
from tests.e2e.conftest import END_OF_RUN

#: the time CI gives the kill points (the daemon's first start and the
#: image's bootstrap come on top, a few seconds)
CHAOS_SECONDS = 180.0
#: the kill points a CI run reaches at least; fewer means the start got slow
#: (155-164 measured at load 5-7: room for a CI machine half as fast again)
MIN_KILLS = 100
#: the most a CI run makes, however fast the machine
MAX_KILLS = 400


@pytest.mark.timeout(1800)
def test_chaos_kills_lose_nothing_and_leak_nothing(tmp_path: Path) -> None:
    seed, rounds, seconds = seed_and_rounds(MAX_KILLS, CHAOS_SECONDS)
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        began = time.monotonic()
        chaos = run(d, rounds, seed, seconds=seconds)
        took = time.monotonic() - began
        line = (f"chaos: seed {seed}, {chaos.kills} kills of skiffd, {chaos.monitor_kills} of "
                f"a monitor, {chaos.forkserver_kills} of the fork server, "
                f"{chaos.ledger.ops} operations answered, {took:.1f} s "
                f"({', '.join(f'{k} {v:.1f} s' for k, v in chaos.seconds.items())})")
        print(line)
        END_OF_RUN.append(line)  # the count issue 21 asks of every CI run, at the log's end
        if chaos.problems:  # the daemon's log outlives the test's directory
            Path(f"/tmp/skiff-chaos-{seed}.log").write_bytes(d.log_path.read_bytes())
        assert not chaos.problems, (
            f"chaos seed {seed} (replay: SKIFF_CHAOS_SEED={seed} "
            f"SKIFF_CHAOS_KILLS={chaos.kills}): "
            + f"; skiffd's log: /tmp/skiff-chaos-{seed}.log\n" + "\n".join(chaos.problems[:40]))
        assert chaos.kills == rounds or (seconds is not None and chaos.kills >= MIN_KILLS), (
            f"{chaos.kills} kill points in {took:.0f} s: a daemon start has become slow "
            f"({chaos.seconds})")
