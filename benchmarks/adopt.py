"""Live-restore: skiffd's stop and start with N running containers to adopt (issue 21).

    unshare --net sh -c 'ip link set lo up; python -m benchmarks.adopt 0 100 500'

For each N: a skiffd with ``live-restore: true`` runs N idle containers
(``--network none``, ``sleep``); it is stopped (SIGTERM: the containers are
detached, not stopped), then started again and timed until it answers
``/_ping``; ``adopt_ms`` is its own ``containers.adopted`` event (every
container taken back, its log driver opened).  One JSON line per N.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def measure(n: int) -> dict[str, float | int]:
    from tests.daemon import running_daemon

    base = Path(tempfile.mkdtemp(prefix="skiff-adopt-"))
    try:
        with running_daemon(base, **{"storage-driver": "overlay2", "live-restore": True}) as d:
            d.skiff("image", "bootstrap", "busybox")
            names = [f"adopt-{i:04d}" for i in range(n)]
            for name in names:
                d.docker("run", "-d", "--network", "none", "--name", name, "busybox",
                         "sleep", "100000", check=True)
            began = time.monotonic()
            assert d.stop() == 0, d.logs()
            stopped = time.monotonic() - began
            began = time.monotonic()
            d.start(timeout=300)
            started = time.monotonic() - began
            events = [json.loads(line) for line in d.log_path.read_text().splitlines()
                      if '"containers.adopted"' in line]
            running = len(d.docker("ps", "-q", check=True).stdout.split())
            if names:
                d.docker("rm", "-f", *names, timeout=600)
        return {"containers": n, "running_after": running, "stop_s": round(stopped, 3),
                "start_s": round(started, 3),
                "adopt_ms": events[-1]["ms"] if events else 0.0}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    for n in [int(a) for a in argv] or [0, 100, 500]:
        print(json.dumps(measure(n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
