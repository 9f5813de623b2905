"""Filters and names as dockerd reads them (issue 17, item 4), side by side with
the tests' private dockerd: the ``name`` filters of ps, network ls and volume ls are
regular expressions, and ``docker load``/``docker import`` fail with dockerd's words.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import pytest

from benchmarks.engines import Dockerd
from tests.daemon import Daemon, running_daemon
from tests.e2e.conftest import twin_of
from tests.sidebyside import Side, SideBySide, normalised, removing, unique


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("skiffd-names")) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def twins(daemon: Daemon, twin_dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[SideBySide]:
    sbs = twin_of(daemon, twin_dockerd, tmp_path_factory.mktemp("names-twin"))
    yield sbs
    sbs.close()


def _tar(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_name_filters_are_regular_expressions_as_in_dockerd(twins: SideBySide) -> None:
    """ps, network ls and volume ls: the same ``name`` values find the same objects
    on both engines: substrings, anchors with and without the container's ``/``,
    alternations, and values that are not valid expressions."""
    stem = unique("nf")
    names = [stem, f"{stem}-web", f"x{stem}"]
    patterns = [stem, f"^{stem}$", f"^/{stem}$", f"^/{stem}", f"{stem}$", "-web$",
                f"^({stem}|x{stem})$", "[", f"{stem}(", f"(?={stem})", f"^{stem}-w.b$",
                f"^/x{stem}$"]

    def run(side: Side) -> dict[str, dict[str, list[str]]]:
        made = [("container", n) for n in names] + [("network", n) for n in names] + \
            [("volume", n) for n in names]
        with removing(side, *made):
            for n in names:
                side.out("create", "--name", n, "--network", "none", "busybox", "true")
                side.out("network", "create", n)
                side.out("volume", "create", n)
            seen: dict[str, dict[str, list[str]]] = {}
            for p in patterns:
                ps = side.out("ps", "-a", "--filter", f"name={p}", "--format", "{{.Names}}")
                nets = side.out("network", "ls", "--filter", f"name={p}", "--format",
                                "{{.Name}}")
                vols = side.out("volume", "ls", "--filter", f"name={p}", "--format",
                                "{{.Name}}")
                seen[p] = {kind: sorted(normalised(x, stem=stem) for x in out.split()
                                        if stem in x)
                           for kind, out in (("ps", ps), ("network", nets), ("volume", vols))}
            return seen

    seen = twins.same(run)
    # the test must tell anchored from unanchored: guard against both engines ignoring it
    assert seen[f"^/{stem}$"]["ps"] == ["<stem>"]
    assert seen[f"^{stem}$"]["network"] == ["<stem>"]
    assert seen[stem]["volume"] == ["<stem>", "<stem>-web", "x<stem>"]
    assert seen["["]["ps"] == []


def test_docker_py_list_with_an_anchored_name(daemon: Daemon) -> None:
    """docker-py's ``containers.list(filters={"name": "^…$"})`` finds only that one."""
    import docker as dockerpy

    stem = unique("nfpy")
    client = dockerpy.DockerClient(base_url=daemon.host, version="1.41", timeout=60)
    try:
        made = [client.containers.create("busybox", "true", name=n, network_mode="none")
                for n in (stem, stem + "-2")]
        try:
            assert [c.name for c in client.containers.list(
                all=True, filters={"name": f"^{stem}$"})] == [stem]
            assert sorted(c.name for c in client.containers.list(
                all=True, filters={"name": stem})) == [stem, stem + "-2"]
        finally:
            for c in made:
                c.remove(force=True)
    finally:
        client.close()


_DAEMON_SAYS = "Error response from daemon: "


def test_load_of_a_broken_archive_fails_in_dockerds_words(twins: SideBySide) -> None:
    """``docker load`` of what is not a tar, or is cut short: the same text from both
    engines (skiffd refuses with a 400 before any output, dockerd in its 200 stream:
    the CLI shows the text either way; a client reading the status sees the 400)."""
    def run(side: Side) -> list[tuple[int, str]]:
        out = []
        for data in (b"this is not a tar archive\n" * 100, _tar(("a.txt", b"a" * 4096))[:700]):
            res = side.docker("load", input=data)
            out.append((res.returncode,
                        res.stderr.decode().strip().removeprefix(_DAEMON_SAYS)))
        return out

    seen = twins.same(run)
    assert seen[0] == (1, "Error processing tar file(exit status 1): "
                          "archive/tar: invalid tar header")
    assert seen[1] == (1, "Error processing tar file(exit status 1): unexpected EOF")


def test_import_refusals_as_dockerd(twins: SideBySide) -> None:
    """``docker import`` with a bad change or reference: dockerd's status and words."""
    def run(side: Side) -> list[tuple[int, str]]:
        out = []
        for params in ({"repo": "x", "changes": "FOO bar"}, {"repo": "BAD:x:y"},
                       {"repo": "x", "changes": "EXPOSE 99999999"}):
            r = side.raw("POST", "/images/create", data=_tar(("a", b"a")),
                         params={"fromSrc": "-", **params})
            out.append((r.status_code, r.json().get("message", "")))
        return out

    twins.same(run)
