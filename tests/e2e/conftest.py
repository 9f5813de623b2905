"""Fixtures: a real skiffd per storage driver, with a busybox image made by skiff."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon


@pytest.fixture(scope="module", params=["overlay2", "vfs"])
def skiffd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Daemon]:
    """skiffd with the storage driver of the parameter and busybox:latest loaded."""
    base: Path = tmp_path_factory.mktemp(f"skiffd-{request.param}")
    with running_daemon(base, **{"storage-driver": request.param}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def default_skiffd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """skiffd with no storage-driver configured: it picks the best that works."""
    base = tmp_path_factory.mktemp("skiffd-default")
    with running_daemon(base) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d
