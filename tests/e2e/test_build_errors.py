"""``docker build`` given bad input, and a build whose client goes away.

Each case must fail with the message a user can act on (dockerd's wording
where a client may match it), leave no container and no image behind, and
leave the daemon serving.  The cancelled build must stop its running step:
no container, no process of the step and no mount stay (the session's leak
check proves the last again at the end).
"""

from __future__ import annotations

import queue
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker as dockerpy
import pytest

from benchmarks.engines import mounts_under
from tests.builds import (
    Run,
    Tracker,
    all_containers,
    build,
    built_id,
    cli_env,
    docker,
    tracked,
    write_tree,
)
from tests.daemon import DOCKER, Daemon, poll, running_daemon


@pytest.fixture
def made(skiffd: Daemon) -> Iterator[Tracker]:
    yield from tracked(skiffd)


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def nothing_left(d: Daemon, made: Tracker) -> None:
    """No container or image is left of the failed build, and the daemon answers."""
    assert not made.new_containers(), made.new_containers()
    assert not made.new_images(), made.new_images()
    assert docker(d, "version", "--format", "{{.Server.APIVersion}}").ok().stdout == "1.41\n"


def refused(d: Daemon, made: Tracker, res: Run) -> str:
    """The failed build's output, after checking it failed cleanly."""
    assert res.returncode != 0, res.output
    nothing_left(d, made)
    return res.output


def dockerfile(tmp_path: Path, text: str, **files: str) -> Path:
    return write_tree(tmp_path / "ctx", {"Dockerfile": text, **files})


def test_parse_error_names_line_and_text(skiffd: Daemon, made: Tracker,
                                         tmp_path: Path) -> None:
    context = dockerfile(tmp_path, "FROM busybox:latest\nRUN echo ok\nLABEL a=1 nope\n")
    out = refused(skiffd, made, build(skiffd, context, "-t", uniq("parse")))
    # dockerd's classic builder leaves the line out of this one; skiff names it
    assert "line 3" in out, out
    assert '"nope"' in out, out


def test_unknown_instruction_is_named(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    context = dockerfile(tmp_path, "FROM busybox:latest\nFOO bar\nRUN echo never\n")
    out = refused(skiffd, made, build(skiffd, context))
    assert "unknown instruction: FOO" in out, out
    assert "line 2" in out, out
    assert "Step 1/" not in out  # refused before any step


def test_failing_run_reports_command_and_code(skiffd: Daemon, made: Tracker,
                                              tmp_path: Path) -> None:
    context = dockerfile(tmp_path, "FROM busybox:latest\nRUN exit 3\n")
    res = build(skiffd, context, "-t", uniq("fails"))
    out = refused(skiffd, made, res)
    assert "The command '/bin/sh -c exit 3' returned a non-zero code: 3" in out, out
    assert res.returncode == 3  # the CLI exits with the errorDetail's code

    # the same through the API: the error is in the stream, with its code
    client = dockerpy.APIClient(base_url=skiffd.host, version="1.41", timeout=120)
    try:
        events = list(client.build(path=str(context), decode=True, rm=True))
    finally:
        client.close()
    last = events[-1]
    assert last["errorDetail"] == {
        "code": 3, "message": "The command '/bin/sh -c exit 3' returned a non-zero code: 3"}
    assert last["error"] == last["errorDetail"]["message"]
    nothing_left(skiffd, made)


def test_copy_of_a_missing_file_names_it(skiffd: Daemon, made: Tracker,
                                         tmp_path: Path) -> None:
    missing = uniq("nope") + ".txt"
    context = dockerfile(tmp_path, f"FROM busybox:latest\nCOPY {missing} /\n", **{
        "present.txt": "here\n"})
    out = refused(skiffd, made, build(skiffd, context, "-t", uniq("copy")))
    assert missing in out, out


def test_heredoc_is_refused_clearly(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    context = dockerfile(tmp_path, "FROM busybox:latest\nRUN <<EOF\necho hi > /x\nEOF\n")
    out = refused(skiffd, made, build(skiffd, context, "-t", uniq("heredoc")))
    assert "heredoc" in out.lower(), out


def test_other_platform_is_refused_clearly(skiffd: Daemon, made: Tracker,
                                           tmp_path: Path) -> None:
    context = dockerfile(tmp_path, "FROM busybox:latest\nRUN true\n")
    out = refused(skiffd, made, build(skiffd, context, "--platform", "linux/arm64"))
    assert "linux/arm64" in out, out


def test_squash_is_refused_clearly(skiffd: Daemon, made: Tracker, tmp_path: Path) -> None:
    context = dockerfile(tmp_path, "FROM busybox:latest\nRUN echo squashed > /s\n")
    client = dockerpy.APIClient(base_url=skiffd.host, version="1.41", timeout=120)
    try:
        try:
            events = list(client.build(path=str(context), squash=True, decode=True))
            message = " ".join(str(e.get("error", "")) for e in events)
        except dockerpy.errors.APIError as exc:
            assert exc.status_code == 400, exc
            message = str(exc.explanation)
    finally:
        client.close()
    assert "squash" in message.lower(), message
    nothing_left(skiffd, made)


def test_context_over_the_daemon_limit(tmp_path_factory: pytest.TempPathFactory,
                                       tmp_path: Path) -> None:
    """A daemon of the test's own with a small ``builder-max-context-size``."""
    base = tmp_path_factory.mktemp("skiffd-ctx-limit")
    with running_daemon(base, **{"builder-max-context-size": 64 * 1024}) as d:
        d.skiff("image", "bootstrap", "busybox")
        t = Tracker(d)
        try:
            big = write_tree(tmp_path / "big", {
                "Dockerfile": "FROM busybox:latest\nCOPY blob /\n",
                "blob": secrets.token_bytes(1024 * 1024)})
            out = refused(d, t, build(d, big, "-t", uniq("big")))
            assert "larger than the daemon allows" in out, out
            assert "builder-max-context-size" in out, out
            # a context under the limit builds on the same daemon
            small = write_tree(tmp_path / "small", {
                "Dockerfile": "FROM busybox:latest\nCOPY note /\n", "note": "small\n"})
            tag = t.tag(uniq("small") + ":1")
            build(d, small, "-t", tag).ok()
            assert docker(d, "run", "--rm", tag, "cat", "/note").ok().stdout == "small\n"
        finally:
            left = t.cleanup()
        assert not left


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in Path("/proc").iterdir():
        if not pid.name.isdigit():
            continue
        try:
            cmd = (pid / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd:
            found.append(int(pid.name))
    return found


def test_cancelled_build_leaves_nothing(skiffd: Daemon, made: Tracker,
                                        tmp_path: Path) -> None:
    tok = secrets.token_hex(4)
    marker = f"cancel-{tok}"
    # more after the sleep: the shell cannot exec it, so its command line (with the
    # marker) stays visible while the step runs
    context = dockerfile(tmp_path, f"FROM busybox:latest\nRUN echo {marker} && sleep 30;"
                                   f" echo {marker}-end\n")
    mounts_before = mounts_under(skiffd.base)
    proc = subprocess.Popen([DOCKER, "build", str(context)], env=cli_env(skiffd, "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    container = None
    deadline = time.monotonic() + 60
    try:
        # the step has started once its container printed the marker
        while not any(line.strip() == marker for line in seen):
            assert time.monotonic() < deadline, "".join(seen)
            assert proc.poll() is None or not lines.empty(), "".join(seen)
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            if line.startswith(" ---> Running in "):
                container = line.removeprefix(" ---> Running in ").strip()
        assert container, "".join(seen)
        assert _processes_with(marker), "the step's process is not running"
    finally:
        proc.kill()
        proc.wait(10)

    cid: str = container
    poll(lambda: not any(c.startswith(cid) for c in all_containers(skiffd)), 15,
         "the build's container to go")
    poll(lambda: not _processes_with(marker), 15, "the step's processes to end")
    poll(lambda: mounts_under(skiffd.base) == mounts_before, 15,
         f"the build's mounts to go: {set(mounts_under(skiffd.base)) - set(mounts_before)}")
    assert docker(skiffd, "container", "inspect", cid).returncode != 0
    assert not made.new_images(), made.new_images()  # no half-committed layer as an image
    # the daemon serves, builds included
    quick = write_tree(tmp_path / "after", {"Dockerfile": "FROM busybox:latest\nRUN true\n"})
    tag = made.tag(uniq("after") + ":1")
    assert built_id(build(skiffd, quick, "-t", tag).ok().stdout)
