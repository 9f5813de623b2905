"""Issue 21's chaos harness in CI: skiffd SIGKILLed at random points amid a
mixed workload of three clients (sometimes a container's monitor first, or
its fork server with it), restarted each time, nothing lost, nothing phantom,
nothing leaked (tests/chaos.py says what is checked after every restart).

CI runs CI_KILLS kill points, issue 21's count, however long they take
(each costs a daemon start: about 0.6-0.9 s on the shared 2-core machine,
most of it skiffd's Python imports; 198 in 180 s in CI, docs/design.md):
the time is printed, never judged.  Every round's
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

#: the kill points of a CI run (issue 21: at least 200 per run)
CI_KILLS = 200


@pytest.mark.timeout(1800)
def test_chaos_kills_lose_nothing_and_leak_nothing(tmp_path: Path) -> None:
    seed, rounds = seed_and_rounds(CI_KILLS)
    with running_daemon(tmp_path / "d") as d:
        d.skiff("image", "bootstrap", "busybox")
        began = time.monotonic()
        chaos = run(d, rounds, seed)
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
        assert chaos.kills == rounds, f"{chaos.kills} of {rounds} kill points ran"
