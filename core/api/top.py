"""``GET /containers/{id}/top``: the container's processes, as ``docker top`` shows them.

As Docker does, ``ps`` runs on the host with the client's ``ps_args``
(default ``-ef``) and only the rows whose PID belongs to the container are
kept.  The container's processes are those of its cgroups (the limits
driver's ``pids``); a driver without that method falls back to the processes
that share the PID namespace of the container's init.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING, Any

import structlog

from skiff.core.api.router import Request, Router
from skiff.core.errors import Conflict, InvalidParameter

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.api.top")


def namespace_pids(init_pid: int) -> list[int]:
    """Host pids of the processes in the PID namespace of ``init_pid``."""
    try:
        want = os.stat(f"/proc/{init_pid}/ns/pid")
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/pid")
        except OSError:
            continue  # gone meanwhile
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            out.append(int(entry))
    return sorted(out)


def container_pids(engine: Engine, container_id: str, init_pid: int) -> list[int]:
    """Every host pid of the container: its cgroups, else its PID namespace."""
    driver: Any = engine.cgroups
    pids_of = getattr(driver, "pids", None) if driver is not None else None
    if pids_of is not None:
        try:
            found = list(pids_of(container_id))
        except (OSError, StopIteration):
            found = []
        if found:
            return sorted(found)
    return namespace_pids(init_pid)


def parse_ps(output: str, pids: set[int]) -> dict[str, Any]:
    """Docker's ``parsePSOutput``: titles, and the rows of ``pids``.

    The last column (``CMD``, ``COMMAND``) may hold spaces; every row is cut
    into as many fields as there are titles.
    """
    lines = output.splitlines()
    if not lines:
        raise InvalidParameter("ps printed nothing")
    titles = lines[0].split()
    try:
        pid_index = titles.index("PID")
    except ValueError:
        raise InvalidParameter("Couldn't find PID field in ps output") from None
    processes = []
    for line in lines[1:]:
        if not line.strip():
            continue
        fields = line.split(None, len(titles) - 1)
        try:
            pid = int(fields[pid_index])
        except (IndexError, ValueError):
            continue
        if pid in pids:
            processes.append(fields)
    return {"Titles": titles, "Processes": processes}


def run_ps(ps_args: str, pids: list[int]) -> str:
    """``ps ARGS -q PIDS`` on the host; without ``-q`` if ARGS cannot take it."""
    args = ps_args.split()
    # Without a terminal ps cuts lines at 80 columns; the client formats them.
    env = {**os.environ, "COLUMNS": "4096"}
    selected = ["-q", ",".join(str(p) for p in pids)] if pids else []
    res = subprocess.run(["ps", *args, *selected], capture_output=True, text=True, env=env)
    if res.returncode != 0 and selected:
        # some options (f, a BSD-style selection) do not combine with -q
        res = subprocess.run(["ps", *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise InvalidParameter(f"ps: {res.stderr.strip() or 'failed'}")
    return res.stdout


def register(router: Router, engine: Engine) -> None:
    mgr = engine.containers

    @router.route("GET", "/containers/{id}/top")
    async def top(req: Request, id: str) -> dict[str, Any]:
        c = mgr.get(id)
        if not c.state.Running:
            raise Conflict(f"Container {c.id} is not running")
        ps_args = req.q("ps_args") or "-ef"
        pid = c.state.Pid

        def collect() -> dict[str, Any]:
            pids = container_pids(engine, c.id, pid)
            return parse_ps(run_ps(ps_args, pids), set(pids))

        return await engine.to_thread(collect)
