"""A connect racing ``rm -f``: the container's init is dead but not yet reaped
when the bridge opens its network namespace.  The check that turns that into
409 (not running) must see a zombie as ended (chaos test in CI: a 500)."""

from __future__ import annotations

import os
import time

from skiff.core.containers.pidproof import namespaces_alive


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_a_zombie_has_no_namespaces_though_its_proc_entry_stays() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while _state(pid) != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert os.path.exists(f"/proc/{pid}")  # what the old check looked at
        assert not namespaces_alive(pid)
    finally:
        os.waitpid(pid, 0)
    assert not namespaces_alive(pid)
    assert namespaces_alive(os.getpid())
