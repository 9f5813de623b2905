"""The container registry read from worker threads while the loop changes it:
``using_image`` (the image removal's in-use check, run in a worker thread by
the Docker API's and the CRI's ``rmi``) never fails with "dictionary changed
size during iteration"."""

from __future__ import annotations

import threading
import time

from skiff.core.containers.model import Container
from skiff.core.containers.registry import ContainerRegistry


def container(i: int, image_id: str) -> Container:
    return Container(id=f"{i:064x}", name=f"c{i}", created="", image_id=image_id, config={},
                     host_config={}, path="", args=[], driver="vfs", root="")


def test_using_image_while_containers_come_and_go() -> None:
    registry = ContainerRegistry(lambda *args, **kw: None)
    for i in range(200):
        registry.index(container(i, "sha256:a" if i % 2 else "sha256:b"))
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                assert all(c.image_id == "sha256:a" for c in registry.using_image("sha256:a"))
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)
                return

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.monotonic() + 1.0
    i = 200
    while time.monotonic() < deadline and not errors:
        c = container(i, "sha256:a")
        registry.index(c)  # as the loop does at create and at remove
        registry.drop(c)
        i += 1
    done.set()
    t.join(5)
    assert not errors, errors[0]
