"""Running code inside another process's network namespace.

Shared by the network drivers.  ``setns`` changes the namespace of the calling
thread only, so the switch happens in a dedicated, short-lived thread: the
daemon's worker threads never run in a container's namespace, even when the
switch back fails (the thread just ends).  A socket or netlink handle made
there keeps that namespace after the thread is gone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from skiff.core import syscalls

T = TypeVar("T")


def run_in_netns(ns_path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread that has entered the namespace at ``ns_path``.

    Only that thread changes namespace, and it switches back before it ends,
    so no thread of the daemon's pools ever runs in a container's namespace.
    """
    result: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    syscalls.setns(target, syscalls.CLONE_NEWNET)
                    try:
                        result.append(fn())
                    finally:
                        syscalls.setns(own, syscalls.CLONE_NEWNET)
                finally:
                    os.close(target)
            finally:
                os.close(own)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=body, name="skiff-netns", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
