"""A pod's sysctls (``LinuxPodSandboxConfig.sysctls``): the namespaced ones,
written in the pod's own network and IPC namespaces once its pause process
holds them, before RunPodSandbox answers (so before any container of the pod
starts, and every container of the pod shares them).

Which sysctls a pod may ask for is kubelet's policy (its safe set, and
``--allowed-unsafe-sysctls``); the runtime's rule, as runc's, is that a sysctl
must belong to a namespace the pod has of its own: ``net.*`` with the pod's
network (not the host's), the System V IPC and POSIX message queue ones with
the pod's IPC namespace.  Anything else would change the host for every pod and
is refused, naming it.
"""

from __future__ import annotations

import os
import re
import threading

from skiff.core import syscalls as sc
from skiff.core.errors import InvalidParameter

#: IPC-namespaced sysctls (the kernel's ipc_sysctl and mq_sysctl tables)
IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                         "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                         "kernel.shm_rmid_forced"})
IPC_PREFIX = "fs.mqueue."
NET_PREFIX = "net."
_NAME = re.compile(r"^[a-z0-9_]+(\.[a-zA-Z0-9_\-/]+)+$")


def normalise(name: str) -> str:
    """kubelet accepts ``net/ipv4/ip_forward`` too; dots are the canonical form
    (an interface name with a dot keeps it: ``net.ipv4.conf.eth0/1.forwarding``)."""
    if "/" in name and "." not in name.split("/")[0]:
        return name.replace("/", ".")
    return name


def plan(sysctls: dict[str, str], host_network: bool, host_ipc: bool
         ) -> list[tuple[str, str, str]]:
    """(namespace kind, /proc/sys path, value) per sysctl; refuses what the pod
    cannot be given."""
    out = []
    for raw, value in sorted(sysctls.items()):
        name = normalise(raw)
        if not _NAME.match(name) or ".." in name:
            raise InvalidParameter(f"sysctl {raw!r}: not a sysctl name")
        if "\n" in value or "\0" in value or len(value) > 4096:
            raise InvalidParameter(f"sysctl {raw!r}: invalid value {value!r}")
        if name.startswith(NET_PREFIX):
            if host_network:
                raise InvalidParameter(f"sysctl {raw!r} is not allowed with the host's "
                                       "network: it would change the host")
            kind = "net"
        elif name in IPC_SYSCTLS or name.startswith(IPC_PREFIX):
            if host_ipc:
                raise InvalidParameter(f"sysctl {raw!r} is not allowed with the host's IPC "
                                       "namespace: it would change the host")
            kind = "ipc"
        else:
            raise InvalidParameter(f"sysctl {raw!r} is not namespaced: a pod may set only "
                                   "net.*, kernel.shm*/msg*/sem and fs.mqueue.* sysctls")
        # a dotted interface name was written with "/" (see normalise)
        path = "/".join(part.replace("/", ".") for part in name.split("."))
        out.append((kind, path, value))
    return out


def apply(pid: int, planned: list[tuple[str, str, str]]) -> None:
    """Write ``planned`` in the namespaces of process ``pid`` (blocking: run it
    in a worker thread).  A thread of its own enters them, as setns changes
    only the calling thread, and ends there."""
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            flags = {"net": sc.CLONE_NEWNET, "ipc": sc.CLONE_NEWIPC}
            for kind in sorted({k for k, _, _ in planned}):
                fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    sc.setns(fd, flags[kind])
                finally:
                    os.close(fd)
            for _, path, value in planned:
                try:
                    with open(f"/proc/sys/{path}", "w") as f:
                        f.write(value)
                except FileNotFoundError:
                    raise InvalidParameter(
                        f"sysctl {path.replace('/', '.')!r}: no such sysctl") from None
                except OSError as exc:
                    raise InvalidParameter(
                        f"sysctl {path.replace('/', '.')!r}={value!r}: {exc.strerror}"
                    ) from exc
        except BaseException as exc:
            failed.append(exc)

    t = threading.Thread(target=enter, name="skiff-cri-sysctl", daemon=True)
    t.start()
    t.join()
    if failed:
        raise failed[0]
