"""skiff.core.containers.pidproof: a recorded pid is signalled only once proved.

Class: pid reuse (a check on a pid number that the kernel may have handed to
another process meanwhile).  Real processes, real signals.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core.containers import pidproof


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "600"])
    yield p
    p.kill()
    p.wait()


def test_start_time_is_field_22_even_with_a_hostile_command_name(tmp_path: Path) -> None:
    """A process names itself ``a) 1 2 3 (b``: parsing must count from the last ')'."""
    odd = tmp_path / "a) 1 2 3 (b"
    shutil.copy(sys.executable, odd)
    p = subprocess.Popen([str(odd), "-c", "import time; time.sleep(60)"])
    try:
        stat = Path(f"/proc/{p.pid}/stat").read_bytes()
        assert b"a) 1 2 3 (b" in stat
        expected = int(stat[stat.rfind(b")") + 2:].split()[19])
        assert pidproof.start_time(p.pid) == expected > 0
    finally:
        p.kill()
        p.wait()
    assert pidproof.start_time(p.pid) is None


def test_recycled_pid_is_left_alone(sleeper: subprocess.Popen[bytes]) -> None:
    real = pidproof.start_time(sleeper.pid)
    assert real is not None
    assert pidproof.kill_if_proven(sleeper.pid, real - 1, pidproof.boot_id()) == "recycled"
    assert sleeper.poll() is None


def test_proved_pid_is_killed_and_waited_for(sleeper: subprocess.Popen[bytes]) -> None:
    """The check off (the start time matches): the same call kills."""
    real = pidproof.start_time(sleeper.pid)
    assert real is not None
    assert pidproof.kill_if_proven(sleeper.pid, real, pidproof.boot_id(), wait=5) == "killed"
    assert sleeper.wait(5) == -9


def test_another_boot_proves_nothing(sleeper: subprocess.Popen[bytes]) -> None:
    real = pidproof.start_time(sleeper.pid)
    assert real is not None
    assert pidproof.kill_if_proven(sleeper.pid, real, "another-boot") == "gone"
    assert sleeper.poll() is None


def test_old_records_need_cgroup_membership(sleeper: subprocess.Popen[bytes]) -> None:
    """A record without a start time: no signal without another proof."""
    assert pidproof.kill_if_proven(sleeper.pid, 0, "") == "unproven"
    assert pidproof.kill_if_proven(sleeper.pid, 0, "", lambda pid: False) == "unproven"
    assert sleeper.poll() is None
    assert pidproof.kill_if_proven(sleeper.pid, 0, "", lambda pid: pid == sleeper.pid,
                                   wait=5) == "killed"
    assert sleeper.wait(5) == -9


def test_missing_process_is_gone() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    assert pidproof.kill_if_proven(p.pid, 123, pidproof.boot_id()) == "gone"
    assert pidproof.kill_if_proven(0, 123, "") == "gone"
