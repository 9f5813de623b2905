"""Helpers for the builder's tests: run ``docker build`` on an engine (skiffd or the
private dockerd) with the classic builder, read its output, and clean up after it.

Both engines are driven the same way (the stock CLI with the engine's
``env()``), so a Dockerfile can be built by each and the results compared.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.daemon import DOCKER

# the CLI's two ways to the classic builder: DOCKER_BUILDKIT unset (no buildx
# plugin here, so it warns and falls back) and DOCKER_BUILDKIT=0
BUILDKIT_MODES = (None, "0")
STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
BUILT = re.compile(r"^Successfully built ([0-9a-f]{12})$", re.M)
HEX = re.compile(r"[0-9a-f]{64}")


class HasEnv(Protocol):
    """skiffd's :class:`tests.daemon.Daemon` or benchmarks' Dockerd: both give the
    environment that points the CLI at their socket."""

    def env(self) -> dict[str, str]: ...


@dataclass
class Run:
    """One finished docker command: exit status and decoded output."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def ok(self) -> Run:
        assert self.returncode == 0, (
            f"docker {' '.join(self.args)} failed ({self.returncode}):\n{self.output[-4000:]}")
        return self


def cli_env(engine: HasEnv, buildkit: str | None = "0") -> dict[str, str]:
    env = engine.env()
    env.pop("DOCKER_BUILDKIT", None)
    if buildkit is not None:
        env["DOCKER_BUILDKIT"] = buildkit
    return env


def docker(engine: HasEnv, *args: str, buildkit: str | None = "0", input: bytes | None = None,
           timeout: float = 180, cwd: Path | None = None) -> Run:
    res = subprocess.run([DOCKER, *args], env=cli_env(engine, buildkit), input=input,
                         capture_output=True, timeout=timeout, cwd=cwd)
    return Run(tuple(args), res.returncode, res.stdout.decode(errors="replace"),
               res.stderr.decode(errors="replace"))


def build(engine: HasEnv, context: Path | str, *flags: str, buildkit: str | None = "0",
          input: bytes | None = None, timeout: float = 300) -> Run:
    """``docker build <flags> <context>`` with the classic builder."""
    return docker(engine, "build", *flags, str(context), buildkit=buildkit, input=input,
                  timeout=timeout)


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Files under ``root`` (parents made); returns ``root``."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


@dataclass
class Step:
    """One ``Step N/M : ...`` of the classic builder's output, and what followed it."""

    number: int
    total: int
    text: str
    lines: list[str] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return " ---> Using cache" in self.lines

    @property
    def ran_in(self) -> str | None:
        for line in self.lines:
            if line.startswith(" ---> Running in "):
                return line.removeprefix(" ---> Running in ").strip()
        return None

    @property
    def result(self) -> str | None:
        """The ID the step ended on (`` ---> <id>``), if it printed one."""
        ids = [m.group(1) for line in self.lines
               if (m := re.fullmatch(r" ---> ([0-9a-f]{12})", line))]
        return ids[-1] if ids else None


def steps(output: str) -> list[Step]:
    found: list[Step] = []
    for line in output.splitlines():
        m = STEP.match(line)
        if m:
            found.append(Step(int(m.group(1)), int(m.group(2)), m.group(3)))
        elif found:
            found[-1].lines.append(line.rstrip("\r"))
    return found


def built_id(output: str) -> str:
    """The short image ID of ``Successfully built <id>`` (exactly one)."""
    ids = BUILT.findall(output)
    assert len(ids) == 1, f"expected one 'Successfully built': {output[-3000:]}"
    return str(ids[0])


def image_id(engine: HasEnv, ref: str) -> str:
    return docker(engine, "image", "inspect", "--format", "{{.Id}}", ref).ok().stdout.strip()


def mask_digests(text: str) -> str:
    """Every 64-hex digest as ``<hex>`` (``COPY file:<hex> in /x``): two engines'
    content digests may differ where the instructions do not."""
    return HEX.sub("<hex>", text)


def all_images(engine: HasEnv) -> set[str]:
    return set(docker(engine, "images", "-aq", "--no-trunc").ok().stdout.split())


def all_containers(engine: HasEnv) -> set[str]:
    return set(docker(engine, "ps", "-aq", "--no-trunc").ok().stdout.split())


class Tracker:
    """What a test adds to an engine: the images and containers that were not there
    before.  ``cleanup()`` removes them (the tags it was told of first, then every new
    image, dangling stage images included) and returns the containers that were left."""

    def __init__(self, engine: HasEnv) -> None:
        self.engine = engine
        self.images = all_images(engine)
        self.containers = all_containers(engine)
        self.tags: list[str] = []

    def tag(self, ref: str) -> str:
        self.tags.append(ref)
        return ref

    def new_images(self) -> set[str]:
        return all_images(self.engine) - self.images

    def new_containers(self) -> set[str]:
        return all_containers(self.engine) - self.containers

    def cleanup(self) -> set[str]:
        left = self.new_containers()
        if left:
            docker(self.engine, "rm", "-f", *left)
        for ref in self.tags:
            docker(self.engine, "rmi", "-f", ref)
        # children before parents: a parent with a child cannot go
        for _ in range(5):
            new = self.new_images()
            if not new:
                break
            docker(self.engine, "rmi", "-f", *new)
        assert not self.new_images(), f"images left behind: {self.new_images()}"
        return left


def tracked(engine: HasEnv) -> Iterator[Tracker]:
    """For a fixture: a :class:`Tracker`, cleaned up after; a container left by the
    test fails it (a build removes its intermediate containers)."""
    t = Tracker(engine)
    yield t
    left = t.cleanup()
    assert not left, f"containers left behind: {left}"
