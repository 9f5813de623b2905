"""``--init``: skiff's own tiny init as the container's PID 1.

``skiff-init`` (C, in this folder, built static by setup.py) forks the
command, forwards the signals it receives, reaps every zombie and exits with
the command's status.  The daemon decides whether a container gets it
(HostConfig.Init, daemon.json ``init``) and sets ``ContainerSpec.init``; this
plugin then bind-mounts the binary read-only at ``/sbin/docker-init`` and puts
``/sbin/docker-init --`` in front of the command, Docker's layout, so any
runtime starts it like any other command.
"""

from __future__ import annotations

import os
import shutil

from skiff.core.hookspecs import ContainerSpec, ContainerView, MountSpec, hookimpl

#: the binary built by setup.py next to this file
INIT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "skiff-init")
#: where Docker puts its init inside the container
CONTAINER_INIT = "/sbin/docker-init"


def init_binary(configured: str = "") -> str:
    """The host path of the init to use: daemon.json ``init-path`` or ours.

    A relative ``init-path`` is looked up in ``PATH`` (Docker's default is
    ``docker-init``).  Raises ``FileNotFoundError`` when there is none.
    """
    if configured:
        found = configured if os.path.isabs(configured) else shutil.which(configured)
        if found and os.access(found, os.X_OK):
            return found
        raise FileNotFoundError(f"init-path {configured!r}: no such executable")
    if os.access(INIT_PATH, os.X_OK):
        return INIT_PATH
    raise FileNotFoundError(
        f"{INIT_PATH} is missing: reinstall skiff (setup.py builds it with gcc -static)"
    )


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_container_spec(container: ContainerView, spec: ContainerSpec) -> None:
    if not spec.init:
        return
    spec.mounts.append(
        MountSpec("bind", init_binary(spec.init_path), CONTAINER_INIT, ["rbind", "ro"])
    )
    spec.args = [CONTAINER_INIT, "--", *spec.args]
