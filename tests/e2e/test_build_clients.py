"""POST /build from the other clients: docker-py (high and low level, compressed
custom contexts) and docker-compose 1.29's ``build:``, against a real skiffd."""

from __future__ import annotations

import io
import json
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker as dockerpy
import pytest

from tests.builds import Tracker, cli_env, docker, image_id, steps, tracked, write_tree
from tests.daemon import Daemon

COMPOSE = shutil.which("docker-compose")


@pytest.fixture
def made(skiffd: Daemon) -> Iterator[Tracker]:
    yield from tracked(skiffd)


@pytest.fixture
def client(skiffd: Daemon) -> Iterator[dockerpy.DockerClient]:
    c = dockerpy.DockerClient(base_url=skiffd.host, version="1.41", timeout=300)
    yield c
    c.close()


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def streamed(logs: Any) -> str:
    """The text of a build's JSON messages; every message must be a dict."""
    chunks = list(logs)
    assert chunks and all(isinstance(c, dict) for c in chunks), chunks
    assert not [c for c in chunks if "error" in c or "errorDetail" in c], chunks
    return "".join(c.get("stream", "") for c in chunks)


def test_images_build_from_a_path(client: dockerpy.DockerClient, made: Tracker,
                                  tmp_path: Path) -> None:
    tok = secrets.token_hex(4)
    context = write_tree(tmp_path / "ctx", {
        "Dockerfile": ("FROM busybox:latest\nCOPY . /app/\n"
                       f"RUN echo visible-{tok} && ls /app > /listing\n"),
        ".dockerignore": "*.tmp\n",
        "kept.txt": "kept\n", "junk.tmp": "junk\n"})
    tag = made.tag(uniq("dockerpy-path") + ":1")
    image, logs = client.images.build(path=str(context), tag=tag, rm=True)
    text = streamed(logs)
    found = steps(text)
    assert [s.text for s in found] == ["FROM busybox:latest", "COPY . /app/",
                                      f"RUN echo visible-{tok} && ls /app > /listing"]
    assert f"visible-{tok}" in found[2].lines  # the RUN's own output, streamed
    assert f"Successfully tagged {tag}" in text
    assert image.id == image_id(made.engine, tag) and tag in image.tags
    listing = client.containers.run(image.id, "cat /listing", remove=True).decode().split()
    assert "kept.txt" in listing and "junk.tmp" not in listing


def test_images_build_from_a_dockerfile_object(client: dockerpy.DockerClient, made: Tracker
                                               ) -> None:
    tok = secrets.token_hex(4)
    dockerfile = io.BytesIO(f"FROM busybox:latest\nRUN echo fileobj-{tok} > /f\n".encode())
    tag = made.tag(uniq("dockerpy-fileobj") + ":1")
    image, logs = client.images.build(fileobj=dockerfile, tag=tag, rm=True)
    assert "Step 2/2 : RUN echo" in streamed(logs)
    assert client.containers.run(image.id, "cat /f", remove=True) == f"fileobj-{tok}\n".encode()


@pytest.mark.parametrize("encoding,mode", [("gzip", "w:gz"), ("bzip2", "w:bz2"),
                                           ("xz", "w:xz")])
def test_compressed_custom_context(client: dockerpy.DockerClient, made: Tracker,
                                   encoding: str, mode: str) -> None:
    payload = f"{encoding} {secrets.token_hex(4)}\n".encode() * 500
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in (("Dockerfile", b"FROM busybox:latest\nCOPY data.txt /\n"),
                           ("data.txt", payload)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    tag = made.tag(uniq(f"ctx-{encoding}") + ":1")
    image, logs = client.images.build(fileobj=buf, custom_context=True, encoding=encoding,
                                      tag=tag, rm=True)
    assert "Successfully built" in streamed(logs)
    assert client.containers.run(image.id, "cat /data.txt", remove=True) == payload


def test_low_level_build_events(client: dockerpy.DockerClient, made: Tracker,
                                tmp_path: Path) -> None:
    tok = secrets.token_hex(4)
    context = write_tree(tmp_path / "ctx", {"Dockerfile": (
        f"FROM busybox:latest\nARG WHO=nobody\nRUN echo low-$WHO-{tok} > /w\n")})
    tag = made.tag(uniq("lowlevel") + ":1")
    events = list(client.api.build(path=str(context), tag=tag, decode=True, rm=True,
                                   buildargs={"WHO": "docker-py"},
                                   labels={"org.example.via": "api"}))
    text = streamed(events)
    assert " ---> Running in " in text
    built = image_id(made.engine, tag)
    # the image ID also arrives as an aux message (the CLI's --iidfile reads it)
    assert [e["aux"]["ID"] for e in events if "aux" in e] == [built]
    assert f"Successfully built {built.removeprefix('sha256:')[:12]}" in text
    inspect = client.api.inspect_image(tag)
    assert inspect["Config"]["Labels"] == {"org.example.via": "api"}
    assert client.containers.run(tag, "cat /w", remove=True) == f"low-docker-py-{tok}\n".encode()


COMPOSE_FILE = """\
version: "3.8"
services:
  app:
    image: {tag}
    build:
      context: ./app
      dockerfile: Dockerfile.app
      args:
        GREETING: from-compose-{tok}
      labels:
        org.example.compose: "yes"
"""


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose (1.29) is not installed")
@pytest.mark.parametrize("cli_build", ["0", "1"], ids=["compose-docker-py", "compose-cli"])
def test_compose_build(skiffd: Daemon, made: Tracker, tmp_path: Path, cli_build: str) -> None:
    """COMPOSE_DOCKER_CLI_BUILD=0: compose posts the build itself (its docker-py);
    =1: it runs ``docker build --iidfile``, which needs the aux ID message."""
    assert COMPOSE is not None
    tok = secrets.token_hex(4)
    tag = made.tag(uniq("compose") + ":1")
    project = write_tree(tmp_path / "proj", {
        "docker-compose.yml": COMPOSE_FILE.format(tag=tag, tok=tok),
        "app/Dockerfile.app": ("FROM busybox:latest\nARG GREETING=none\nCOPY msg.txt /\n"
                               "RUN echo \"$GREETING\" >> /msg.txt\nCMD [\"cat\", \"/msg.txt\"]\n"),
        "app/msg.txt": "hello\n"})
    env = cli_env(skiffd, "0")
    env["COMPOSE_DOCKER_CLI_BUILD"] = cli_build
    res = subprocess.run([COMPOSE, "-p", uniq("skiffbuild"), "build"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert docker(skiffd, "run", "--rm", tag).ok().stdout == f"hello\nfrom-compose-{tok}\n"
    labels = json.loads(docker(skiffd, "image", "inspect", "--format",
                               "{{json .Config.Labels}}", tag).ok().stdout)
    assert labels["org.example.compose"] == "yes"
