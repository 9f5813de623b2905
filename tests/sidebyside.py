"""Side by side: the same client call against skiffd and the tests' private dockerd.

A test writes what a client does once, as a function of one :class:`Side`, and
:meth:`SideBySide.same` runs it against both engines and asserts that what it
returns is equal.  The function returns only what matters to clients (status
codes, the fields present, error text), with IDs and generated names taken out
by :func:`normalised`, so a difference that a client would notice fails the
test and one it would not (timestamps, IDs) does not.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import docker as dockerpy
import requests

T = TypeVar("T")

# The API version the stock clients of Debian 12 speak to both engines:
# dockerd 20.10 and skiffd both serve 1.41.
API_VERSION = "1.41"


@dataclass
class Side:
    """One engine as clients see it: the stock CLI, docker-py and raw HTTP."""

    name: str
    env: dict[str, str]
    host: str
    _client: dockerpy.DockerClient | None = field(default=None, repr=False)

    def docker(self, *args: str, input: bytes | None = None, timeout: float = 60
               ) -> subprocess.CompletedProcess[bytes]:
        """The stock CLI; never raises on a non-zero exit (the test compares it)."""
        return subprocess.run(["docker", *args], env=self.env, input=input,
                              capture_output=True, timeout=timeout)

    def out(self, *args: str) -> str:
        """The CLI's stdout, stripped; the command must succeed."""
        res = self.docker(*args)
        assert res.returncode == 0, (self.name, args, res.stderr.decode(errors="replace"))
        return res.stdout.decode().strip()

    @property
    def client(self) -> dockerpy.DockerClient:
        """docker-py's high-level client, made once per side."""
        if self._client is None:
            self._client = dockerpy.DockerClient(base_url=self.host, version=API_VERSION,
                                               timeout=60)
        return self._client

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One HTTP request as docker-py would send it, without its error mapping:
        ``raw("POST", "/containers/create", json={...}, params={...})``."""
        api = self.client.api
        return api.request(method, api._url(path), **kwargs)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class SideBySide:
    """skiffd and dockerd as two :class:`Side` objects, in that order."""

    def __init__(self, skiffd: Side, dockerd: Side) -> None:
        self.skiffd = skiffd
        self.dockerd = dockerd

    @property
    def sides(self) -> tuple[Side, Side]:
        return (self.skiffd, self.dockerd)

    def each(self, fn: Callable[[Side], T]) -> dict[str, T]:
        """``fn`` run against each engine, skiffd first: ``{"skiffd": …, "dockerd": …}``."""
        return {side.name: fn(side) for side in self.sides}

    def same(self, fn: Callable[[Side], T]) -> T:
        """``fn`` against both; the results must be equal.  Returns skiffd's."""
        seen = self.each(fn)
        assert seen["skiffd"] == seen["dockerd"], (
            "skiffd and dockerd differ:\n"
            f"  skiffd:  {seen['skiffd']!r}\n  dockerd: {seen['dockerd']!r}")
        return seen["skiffd"]

    def close(self) -> None:
        for side in self.sides:
            side.close()


def unique(prefix: str = "sbs") -> str:
    """A name no other test run uses, the same shape on both engines."""
    return f"{prefix}-{secrets.token_hex(4)}"


def fields(obj: Any, *paths: str) -> dict[str, Any]:
    """The dotted ``paths`` of a nested dict (``"State.ExitCode"``); a missing one
    is reported as the string ``"<absent>"``, so absence is compared too."""
    picked: dict[str, Any] = {}
    for path in paths:
        cur = obj
        for key in path.split("."):
            if isinstance(cur, dict) and key in cur:
                cur = cur[key]
            elif isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
                cur = cur[int(key)]
            else:
                cur = "<absent>"
                break
        picked[path] = cur
    return picked


_HEX_ID = re.compile(r"\b[0-9a-f]{64}\b|\b[0-9a-f]{12}\b")


def normalised(text: str, **names: str) -> str:
    """``text`` with 64- and 12-digit hex IDs replaced by ``<id>`` and each given
    value replaced by its key in angle brackets: ``normalised(err, name=n)``."""
    for key, value in sorted(names.items(), key=lambda kv: -len(kv[1])):
        if value:
            text = text.replace(value, f"<{key}>")
    return _HEX_ID.sub("<id>", text)


@contextlib.contextmanager
def removing(side: Side, *kinds_and_names: tuple[str, str]) -> Iterator[None]:
    """Remove the given ``("container"|"network"|"volume", name)`` on the way
    out, whatever the test did, so neither engine keeps what a test made."""
    try:
        yield
    finally:
        for kind, name in kinds_and_names:
            if kind == "container":
                side.docker("rm", "-f", "-v", name)
            else:
                side.docker(kind, "rm", name)
