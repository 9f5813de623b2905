"""docker-py against a real skiffd."""

from __future__ import annotations

import docker
import pytest

from tests.daemon import Daemon


@pytest.fixture
def client(skiffd: Daemon) -> docker.DockerClient:
    c = docker.DockerClient(base_url=skiffd.host, version="auto", timeout=60)
    yield c
    c.close()


def test_run_returns_output(client: docker.DockerClient) -> None:
    assert client.containers.run("busybox", "echo hi", remove=True) == b"hi\n"


def test_version_and_ping(client: docker.DockerClient) -> None:
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.41"


def test_nonzero_exit_raises(client: docker.DockerClient) -> None:
    with pytest.raises(docker.errors.ContainerError) as exc:
        client.containers.run("busybox", "sh -c 'echo bad >&2; exit 5'", remove=True)
    assert exc.value.exit_status == 5


def test_detached_lifecycle(client: docker.DockerClient) -> None:
    c = client.containers.run("busybox", "sh -c 'echo started; sleep 300'", detach=True)
    try:
        c.reload()
        assert c.status == "running"
        c.stop(timeout=1)
        c.reload()
        assert c.status == "exited"
        assert c.logs() == b"started\n"
        assert c.wait()["StatusCode"] == 137
    finally:
        c.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(c.id)


def test_missing_image(client: docker.DockerClient) -> None:
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("nope:never")
