"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from skiff.core.hookspecs import RuntimeContext
from skiff.plugins.isolation.runtime import ForkServerRuntime
from tests.integration.runtimekit import assert_no_busy_shims, our_mounts
from tests.integration.test_cgroupfs import Harness, leftovers
from tests.rootfs import make_busybox_rootfs


@pytest.fixture
def h() -> Iterator[Harness]:
    """The cgroupfs driver under a parent group of its own; the test must leave none."""
    harness = Harness()
    try:
        yield harness
    finally:
        left = leftovers(harness.parent)
        harness.cleanup()
        assert not leftovers(harness.parent)
        assert not left, f"the test left cgroups behind: {left}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared, read-mostly busybox rootfs; tests that write build their own."""
    return make_busybox_rootfs(tmp_path_factory.mktemp("image") / "rootfs")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServerRuntime]:
    """The skiff runtime with its fork server, for one test module."""
    rt = ForkServerRuntime(
        RuntimeContext(exec_root=str(tmp_path_factory.mktemp("exec")), options={})
    )
    trio.run(rt.start)
    yield rt
    trio.run(rt.stop)


@pytest.fixture
def no_leaks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """After the test: no mount of ours on the host, no shim of ``runtime`` left
    running.  Runtime test modules use it for every test
    (``pytest.mark.usefixtures("no_leaks")``).

    Only this session's base temp is looked at: an earlier, killed session's
    leftovers are not this test's doing.  Nothing in the suite reports them
    (the session-wide check compares before with after); clean them by hand."""
    yield
    assert our_mounts(tmp_path_factory.getbasetemp()) == []
    if "runtime" in request.fixturenames:
        assert_no_busy_shims(request.getfixturevalue("runtime"))
