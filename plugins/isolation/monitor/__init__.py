"""``skiff-monitor``: the C program a container's shim becomes once the command runs.

The source is ``skiff-monitor.c`` in this folder (what it does and why, its
protocol, the ``<bundle>/monitor`` record); setup.py builds it static next to
the source, as it builds skiff-init.  This module only names the binary: the
fork server imports it, so it imports nothing but ``os``.
"""

from __future__ import annotations

import os

#: the binary built by setup.py next to this file
MONITOR_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "skiff-monitor")
#: its ``argv[0]`` and ``comm``
MONITOR_NAME = "skiff-monitor"
#: the record the monitor writes in the bundle: which program watches the
#: container, which protocol it speaks, its pid and the init's
MONITOR_RECORD = "monitor"
#: what the monitor speaks on the daemon's connection: 1, nothing is read,
#: ``{"exit": N}`` is sent once, when the init is reaped
PROTOCOL = 1
#: protocol 2: also keeps the daemon's ends of the container's stdio, spools
#: the output to ``<bundle>/spool`` while no daemon is connected and hands the
#: ends over on ``<bundle>/monitor.sock`` (see skiff-monitor.c)
PROTOCOL_SPOOL = 2
#: the files of protocol 2 in the bundle
SPOOL = "spool"
SOCKET = "monitor.sock"


def available() -> bool:
    """Whether the monitor can be run (setup.py may have found no C compiler)."""
    return os.access(MONITOR_PATH, os.X_OK)
