"""``docker build`` with the stock CLI's classic builder against a real skiffd.

The yardstick is Docker itself: the multi-stage Dockerfile below is also built
by the tests' private dockerd (Debian's docker.io, the classic builder), and
the image's Config and history must come out the same.  That comparison is
skipped where dockerd is not installed; the checks of the image's effects are
not.  dockerd has no bridge here, so its builds use ``--network none``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker as dockerpy
import pytest

from benchmarks.engines import Dockerd
from tests.builds import (
    BUILDKIT_MODES,
    Tracker,
    build,
    built_id,
    docker,
    image_id,
    mask_digests,
    steps,
    tracked,
    write_tree,
)
from tests.daemon import Daemon
from tests.dockerd import own_dockerd

CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts",
                 "Healthcheck", "Volumes", "StopSignal", "Shell", "OnBuild", "ArgsEscaped")

MULTISTAGE = """\
ARG BASE=busybox:latest
FROM ${BASE} AS tools
ARG GREETING=hello
RUN mkdir -p /out && echo "$GREETING from tools" > /out/tool.txt

FROM ${BASE}
ARG APP_VERSION=0.0
ENV APP_HOME=/srv/app \\
    MODE=production
WORKDIR $APP_HOME
COPY . ./
RUN echo "built $APP_VERSION in $(pwd) as $(id -u)" > run-output.txt && chown -R 1000:1000 $APP_HOME
COPY --from=tools /out/tool.txt /opt/tool.txt
USER 1000:1000
LABEL org.example.name="skiff build" org.example.version=$APP_VERSION
EXPOSE 8080/tcp 9090/udp
VOLUME ["/data"]
STOPSIGNAL SIGUSR1
HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD ["true"]
ONBUILD RUN echo child
CMD ["sh", "-c", "cat run-output.txt"]
"""

MULTISTAGE_CONTEXT = {
    "Dockerfile": MULTISTAGE,
    ".dockerignore": "# logs and secrets stay out\n*.log\nsecret\n!keep.log\n",
    "app.txt": "application\n",
    "keep.log": "kept by the exception\n",
    "debug.log": "ignored\n",
    "secret/key": "hunter2\n",
    "sub/nested.txt": "nested\n",
}

# What the image shows when run: every instruction's effect.
EFFECTS = ("ls -A /srv/app | sort; echo --; cat run-output.txt /opt/tool.txt sub/nested.txt;"
           " pwd; id -u; id -g; echo \"$APP_HOME $MODE\"; ls /srv/app/secret 2>&1 || true")
EXPECTED_EFFECTS = """\
.dockerignore
Dockerfile
app.txt
keep.log
run-output.txt
sub
--
built 1.2 in /srv/app as 0
hello from tools
nested
/srv/app
1000
1000
/srv/app production
ls: /srv/app/secret: No such file or directory
"""


@pytest.fixture
def made(skiffd: Daemon) -> Iterator[Tracker]:
    yield from tracked(skiffd)


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd | None]:
    """The private dockerd, or None where it is not installed."""
    if not Dockerd.available():
        yield None
        return
    with own_dockerd("skiff-bld") as d:
        yield d


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """dockerd's results, built once per module (the same for every skiffd)."""
    return {}


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def give_busybox(skiffd: Daemon, dockerd: Dockerd, tmp_path: Path) -> None:
    """dockerd gets skiff's very busybox (same ID) by save and load: no internet."""
    want = image_id(skiffd, "busybox:latest")
    have = docker(dockerd, "image", "inspect", "--format", "{{.Id}}", "busybox:latest")
    if have.returncode == 0 and have.stdout.strip() == want:
        return
    tar = tmp_path / "busybox.tar"
    docker(skiffd, "save", "-o", str(tar), "busybox:latest").ok()
    docker(dockerd, "load", "-i", str(tar)).ok()
    tar.unlink()


def history(engine: Any, ref: str) -> list[str]:
    out = docker(engine, "history", "--no-trunc", "--format", "{{.CreatedBy}}", ref).ok()
    return [mask_digests(line) for line in out.stdout.splitlines()]


def config_of(engine: Any, ref: str) -> dict[str, Any]:
    info = json.loads(docker(engine, "image", "inspect", ref).ok().stdout)[0]
    return {k: info["Config"].get(k) for k in CONFIG_FIELDS}


def dockerd_reference(dockerd: Dockerd | None, skiffd: Daemon, reference: dict[str, Any],
                      context: Path, tmp_path: Path) -> dict[str, Any] | None:
    if dockerd is None:
        return None
    if "multistage" not in reference:
        give_busybox(skiffd, dockerd, tmp_path)
        t = Tracker(dockerd)
        tag = t.tag(uniq("ref-multi") + ":1")
        try:
            build(dockerd, context, "--network", "none", "-t", tag,
                  "--build-arg", "APP_VERSION=1.2").ok()
            reference["multistage"] = {
                "config": config_of(dockerd, tag), "history": history(dockerd, tag),
                "effects": docker(dockerd, "run", "--rm", "--network", "none", tag, "sh", "-c",
                                  EFFECTS).ok().stdout,
            }
        finally:
            t.cleanup()
    return dict(reference["multistage"])


@pytest.mark.parametrize("buildkit", BUILDKIT_MODES, ids=["DOCKER_BUILDKIT-unset",
                                                          "DOCKER_BUILDKIT=0"])
def test_multistage_build_matches_dockerd(skiffd: Daemon, dockerd: Dockerd | None,
                                          reference: dict[str, Any], made: Tracker,
                                          tmp_path: Path, buildkit: str | None) -> None:
    context = write_tree(tmp_path / "ctx", MULTISTAGE_CONTEXT)
    tag = made.tag(uniq("multi") + ":1")
    res = build(skiffd, context, "-t", tag, "--build-arg", "APP_VERSION=1.2",
                buildkit=buildkit).ok()
    assert f"Successfully tagged {tag}" in res.stdout
    assert built_id(res.stdout) == image_id(skiffd, tag).removeprefix("sha256:")[:12]

    ran = docker(skiffd, "run", "--rm", tag, "sh", "-c", EFFECTS).ok()
    assert ran.stdout == EXPECTED_EFFECTS
    # the image's CMD, run as the image's user in its workdir
    assert docker(skiffd, "run", "--rm", tag).ok().stdout == "built 1.2 in /srv/app as 0\n"

    config = config_of(skiffd, tag)
    assert {"APP_HOME=/srv/app", "MODE=production"} <= set(config["Env"])
    assert config["Cmd"] == ["sh", "-c", "cat run-output.txt"]
    assert config["WorkingDir"] == "/srv/app"
    assert config["User"] == "1000:1000"
    assert config["Labels"] == {"org.example.name": "skiff build", "org.example.version": "1.2"}
    assert config["ExposedPorts"] == {"8080/tcp": {}, "9090/udp": {}}
    assert config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGUSR1"
    assert config["OnBuild"] == ["RUN echo child"]
    assert config["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 30_000_000_000,
                                     "Timeout": 3_000_000_000, "Retries": 2}

    created_by = history(skiffd, tag)
    base = history(skiffd, "busybox:latest")
    own = created_by[:len(created_by) - len(base)]
    assert created_by[len(own):] == base
    assert own[0] == '/bin/sh -c #(nop)  CMD ["sh" "-c" "cat run-output.txt"]'
    assert "/bin/sh -c #(nop)  ENV APP_HOME=/srv/app MODE=production" in own
    assert "/bin/sh -c #(nop)  USER 1000:1000" in own
    assert "/bin/sh -c #(nop) COPY file:<hex> in /opt/tool.txt " in own
    assert "/bin/sh -c #(nop) COPY dir:<hex> in ./ " in own
    assert any(line.startswith('|1 APP_VERSION=1.2 /bin/sh -c echo "built $APP_VERSION')
               for line in own), own

    ref = dockerd_reference(dockerd, skiffd, reference, context, tmp_path)
    if ref is None:
        pytest.skip("dockerd is not installed: the image was checked, not compared with "
                    "dockerd's")
    assert ran.stdout == ref["effects"]
    assert config == ref["config"]
    assert created_by == ref["history"]


CACHED = """\
FROM busybox:latest
RUN echo one-{tok} > /one
COPY early.txt /early.txt
RUN echo two-{tok} > /two
COPY late.txt /late.txt
RUN cat /late.txt > /three
"""


def test_cache_hits_and_exact_invalidation(skiffd: Daemon, made: Tracker,
                                           tmp_path: Path) -> None:
    tok = secrets.token_hex(4)
    context = write_tree(tmp_path / "ctx", {"Dockerfile": CACHED.format(tok=tok),
                                            "early.txt": "early\n", "late.txt": "late 1\n"})
    tag = made.tag(uniq("cache") + ":1")

    def run(*flags: str, ref: str = tag) -> tuple[str, list[bool]]:
        res = build(skiffd, context, "-t", ref, *flags).ok()
        found = steps(res.stdout)
        assert [s.number for s in found] == list(range(1, 7)), res.stdout
        assert found[0].text == "FROM busybox:latest"
        return built_id(res.stdout), [s.cached for s in found[1:]]

    first, cached = run()
    assert cached == [False] * 5
    again, cached = run()
    assert cached == [True] * 5 and again == first

    # only the mtime changes: the content hash is the key, still all hits
    late = context / "late.txt"
    stamp = late.stat().st_mtime + 1000
    os.utime(late, (stamp, stamp))
    touched, cached = run()
    assert cached == [True] * 5 and touched == first

    # new content in the file copied late: every step before its COPY reused
    late.write_text("late 2\n")
    changed, cached = run()
    assert cached == [True, True, True, False, False]
    assert changed != first
    assert docker(skiffd, "run", "--rm", tag, "cat", "/three").ok().stdout == "late 2\n"

    # another tag over the same context reuses the cache, the image is the same
    other = made.tag(uniq("cache-other") + ":2")
    same, cached = run(ref=other)
    assert cached == [True] * 5 and same == changed

    # --no-cache rebuilds every step
    _, cached = run("--no-cache")
    assert cached == [False] * 5


def test_output_stream_and_several_tags(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    tok = secrets.token_hex(4)
    context = write_tree(tmp_path / "ctx", {"Dockerfile": (
        f"FROM busybox:latest\nRUN echo building-{tok} > /made\nCMD [\"cat\", \"/made\"]\n")})
    tags = [made.tag(uniq("out") + ":a"), made.tag(uniq("out") + ":b")]
    res = build(skiffd, context, "-t", tags[0], "-t", tags[1]).ok()
    found = steps(res.stdout)
    assert [(s.number, s.total, s.text) for s in found] == [
        (1, 3, "FROM busybox:latest"), (2, 3, f"RUN echo building-{tok} > /made"),
        (3, 3, 'CMD ["cat", "/made"]')]
    container = found[1].ran_in
    assert container and re.fullmatch(r"[0-9a-f]{12}", container), res.stdout
    assert found[1].result and found[2].result
    final = built_id(res.stdout)
    assert found[2].result == final
    for tag in tags:
        assert f"Successfully tagged {tag}" in res.stdout.splitlines()
        assert image_id(skiffd, tag).removeprefix("sha256:")[:12] == final
    # the intermediate container is gone (rm defaults to true)
    assert docker(skiffd, "container", "inspect", container).returncode != 0
    assert docker(skiffd, "run", "--rm", tags[1]).ok().stdout == f"building-{tok}\n"


def test_quiet_prints_only_the_image_id(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    context = write_tree(tmp_path / "ctx", {"Dockerfile": (
        f"FROM busybox:latest\nRUN echo quiet-{secrets.token_hex(4)} > /q\n")})
    tag = made.tag(uniq("quiet") + ":1")
    res = build(skiffd, context, "-q", "-t", tag).ok()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", res.stdout), res.stdout
    assert res.stdout.strip() == image_id(skiffd, tag)


def test_target_builds_only_the_stages_it_needs(skiffd: Daemon, made: Tracker,
                                                tmp_path: Path) -> None:
    """Unlike dockerd's classic builder (which builds every stage before the target),
    skiff builds only what the target depends on, as BuildKit does."""
    tok = secrets.token_hex(4)
    context = write_tree(tmp_path / "ctx", {"Dockerfile": f"""\
FROM busybox:latest AS broken
RUN echo unneeded-{tok} && exit 7
FROM busybox:latest AS base
RUN echo base-{tok} > /base
FROM base AS wanted
RUN cat /base > /wanted
FROM wanted AS after
RUN echo later-{tok} && exit 9
"""})
    tag = made.tag(uniq("target") + ":1")
    res = build(skiffd, context, "--target", "wanted", "-t", tag).ok()
    assert f"unneeded-{tok}" not in res.output
    assert f"later-{tok}" not in res.output
    assert docker(skiffd, "run", "--rm", tag, "cat", "/wanted").ok().stdout == f"base-{tok}\n"
    # without --target, the last stage is built: the failing RUN does fail it
    assert build(skiffd, context).returncode != 0


def test_build_args_labels_hosts_shm_network(skiffd: Daemon, made: Tracker,
                                             tmp_path: Path) -> None:
    context = write_tree(tmp_path / "ctx", {"Dockerfile": f"""\
FROM busybox:latest
ARG FLAVOR=plain
RUN echo "flavor=$FLAVOR {secrets.token_hex(4)}" > /facts \\
 && grep sk-extra /etc/hosts | tr -s ' \\t' ' ' >> /facts \\
 && df -k /dev/shm | tail -n 1 | awk '{{print "shm=" $2}}' >> /facts \\
 && echo "links=$(ip -o link | wc -l)" >> /facts
"""})
    tag = made.tag(uniq("args") + ":1")
    build(skiffd, context, "-t", tag, "--build-arg", "FLAVOR=spicy",
          "--label", "org.example.extra=yes", "--add-host", "sk-extra:10.9.8.7",
          "--shm-size", "64m", "--network", "none").ok()
    facts = docker(skiffd, "run", "--rm", tag, "cat", "/facts").ok().stdout.splitlines()
    assert facts[0].startswith("flavor=spicy ")
    assert facts[1:] == ["10.9.8.7 sk-extra", "shm=65536", "links=1"]
    labels = json.loads(docker(skiffd, "image", "inspect", "--format",
                               "{{json .Config.Labels}}", tag).ok().stdout)
    assert labels == {"org.example.extra": "yes"}


DUMP_CONTEXT = """\
FROM busybox:latest
COPY . /ctx/
RUN ls -A /ctx > /listing
"""


def test_dockerfile_outside_the_context(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    """``-f`` outside the context dir: the CLI adds it to the context under a random
    name and excludes it with .dockerignore; COPY . must not see it."""
    context = write_tree(tmp_path / "ctx", {"a.txt": "a\n", "sub/b.txt": "b\n"})
    dockerfile = write_tree(tmp_path / "elsewhere", {"Build.df": DUMP_CONTEXT}) / "Build.df"
    tag = made.tag(uniq("outside") + ":1")
    build(skiffd, context, "-f", str(dockerfile), "-t", tag).ok()
    listing = docker(skiffd, "run", "--rm", tag, "cat", "/listing").ok().stdout.split()
    assert "a.txt" in listing and "sub" in listing
    assert not [n for n in listing if n.startswith(".dockerfile") or n == "Build.df"], listing


def test_dockerfile_on_stdin(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    context = write_tree(tmp_path / "ctx", {"a.txt": "a\n"})
    tag = made.tag(uniq("stdin") + ":1")
    build(skiffd, context, "-f", "-", "-t", tag, input=DUMP_CONTEXT.encode()).ok()
    listing = docker(skiffd, "run", "--rm", tag, "cat", "/listing").ok().stdout.split()
    assert "a.txt" in listing
    assert not [n for n in listing if n.startswith(".dockerfile")], listing
    # no context at all: `docker build - < Dockerfile`
    bare = made.tag(uniq("bare") + ":1")
    res = docker(skiffd, "build", "-t", bare, "-",
                 input=b"FROM busybox:latest\nRUN echo bare > /bare\n").ok()
    assert f"Successfully tagged {bare}" in res.stdout
    assert docker(skiffd, "run", "--rm", bare, "cat", "/bare").ok().stdout == "bare\n"


def test_compressed_context_from_the_cli(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    context = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM busybox:latest\nCOPY a.txt /\n",
                                            "a.txt": "gzipped\n" * 1000})
    tag = made.tag(uniq("compress") + ":1")
    build(skiffd, context, "--compress", "-t", tag).ok()
    out = docker(skiffd, "run", "--rm", tag, "cat", "/a.txt").ok().stdout
    assert out == "gzipped\n" * 1000


def test_build_prune_and_system_df(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    tok = secrets.token_hex(4)
    context = write_tree(tmp_path / "ctx", {"Dockerfile": (
        f"FROM busybox:latest\nRUN echo pruned-{tok} > /p\nRUN cat /p > /q\n")})
    tag = made.tag(uniq("prune") + ":1")
    build(skiffd, context, "-t", tag).ok()

    df = docker(skiffd, "system", "df").ok().stdout
    assert any(line.startswith("Build Cache") for line in df.splitlines()), df
    client = dockerpy.APIClient(base_url=skiffd.host, version="1.41", timeout=120)
    try:
        usage = client.df()
        assert usage.get("BuildCache"), usage.get("BuildCache")
        for entry in usage["BuildCache"]:
            assert {"ID", "Type", "Size", "InUse", "Shared"} <= entry.keys(), entry

        pruned = client.prune_builds()
        assert set(pruned) == {"CachesDeleted", "SpaceReclaimed"}
        assert isinstance(pruned["CachesDeleted"], list) and pruned["CachesDeleted"]
        assert isinstance(pruned["SpaceReclaimed"], int) and pruned["SpaceReclaimed"] >= 0
    finally:
        client.close()

    res = build(skiffd, context, "-t", tag).ok()
    assert [s.cached for s in steps(res.stdout)[1:]] == [False, False], res.stdout


def test_cache_from_reuses_a_named_images_steps(skiffd: Daemon, made: Tracker,
                                                tmp_path: Path) -> None:
    """After the cache is pruned, ``--cache-from`` an image built earlier makes its
    steps hits again (its chain is kept: it is tagged); without it they miss."""
    tok = secrets.token_hex(4)
    context = write_tree(tmp_path / "ctx", {"Dockerfile": (
        f"FROM busybox:latest\nRUN echo from-{tok} > /f\nENV K={tok}\n")})
    tag = made.tag(uniq("cachefrom") + ":1")
    first = built_id(build(skiffd, context, "-t", tag).ok().stdout)
    client = dockerpy.APIClient(base_url=skiffd.host, version="1.41", timeout=120)
    try:
        client.prune_builds()
    finally:
        client.close()
    res = build(skiffd, context, "-t", tag, "--cache-from", tag).ok()
    assert [s.cached for s in steps(res.stdout)[1:]] == [True, True], res.stdout
    assert built_id(res.stdout) == first
    client = dockerpy.APIClient(base_url=skiffd.host, version="1.41", timeout=120)
    try:
        client.prune_builds()
    finally:
        client.close()
    res = build(skiffd, context, "-t", made.tag(uniq("nocachefrom") + ":1")).ok()
    assert [s.cached for s in steps(res.stdout)[1:]] == [False, False], res.stdout


def test_onbuild_triggers_add_tar_and_shell(skiffd: Daemon, made: Tracker,
                                            tmp_path: Path) -> None:
    """A child of an image with ONBUILD runs its triggers right after FROM; ADD
    unpacks a local tar; SHELL changes the shell of later shell-form RUNs."""
    import io
    import tarfile

    tok = secrets.token_hex(4)
    parent_ctx = write_tree(tmp_path / "parent", {"Dockerfile": (
        "FROM busybox:latest\n"
        f"ONBUILD RUN echo trigger-{tok} > /from-trigger\n"
        "ONBUILD COPY marker.txt /marker.txt\n")})
    parent = made.tag(uniq("onbuild-parent") + ":1")
    build(skiffd, parent_ctx, "-t", parent).ok()

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = f"inside-{tok}\n".encode()
        info = tarfile.TarInfo("pkg/inside.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    child_ctx = write_tree(tmp_path / "child", {
        "Dockerfile": (f"FROM {parent}\n"
                       "ADD bundle.tar.gz /opt/\n"
                       'SHELL ["/bin/sh", "-ec"]\n'
                       "RUN echo $0 > /shell-arg\n"),
        "marker.txt": f"marker-{tok}\n",
        "bundle.tar.gz": buf.getvalue()})
    child = made.tag(uniq("onbuild-child") + ":1")
    out = build(skiffd, child_ctx, "-t", child).ok().stdout
    assert "# Executing 2 build triggers" in out, out
    shown = docker(skiffd, "run", "--rm", child, "cat", "/from-trigger", "/marker.txt",
                   "/opt/pkg/inside.txt", "/shell-arg").ok().stdout
    assert shown == f"trigger-{tok}\nmarker-{tok}\ninside-{tok}\n/bin/sh\n"
    config = json.loads(docker(skiffd, "image", "inspect", "--format", "{{json .Config}}",
                               child).ok().stdout)
    assert not config.get("OnBuild")  # triggers run once, in the child; not inherited
    assert config["Shell"] == ["/bin/sh", "-ec"]
