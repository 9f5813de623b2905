"""Races the chaos harness found (issue 21): a request that loses a race with
the container's end or with another request is the client's 404/409 in
dockerd's words, never a 500."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos import call
from tests.daemon import Daemon, running_daemon


@pytest.fixture(scope="module")
def skiffd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("races")) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def _run(d: Daemon, *args: str) -> str:
    return d.docker("run", "-d", *args, "busybox", "sleep", "1000",
                    check=True).stdout.decode().strip()


def test_an_exec_into_a_container_that_just_ended_is_409(skiffd: Daemon) -> None:
    answers = []
    for _ in range(4):
        cid = _run(skiffd)
        pid = json.loads(skiffd.docker("inspect", "-f", "{{json .State.Pid}}", cid,
                                       check=True).stdout)
        status, made = call(skiffd.socket, "POST", f"/containers/{cid}/exec",
                            {"Cmd": ["true"]})
        assert status == 201, made
        # ended behind skiffd's back: the exec starts before skiffd learns of it
        os.kill(pid, signal.SIGKILL)
        status, answer = call(skiffd.socket, "POST", f"/exec/{made['Id']}/start",
                              {"Detach": True})
        answers.append((status, answer))
        skiffd.docker("rm", "-f", cid)
    for status, answer in answers:
        assert status in (200, 409), answers
        if status == 409:
            assert answer["message"].endswith("is not running"), answers


def test_two_disconnects_at_once_are_one_200_and_one_409(skiffd: Daemon) -> None:
    net = f"race-{secrets.token_hex(3)}"
    skiffd.docker("network", "create", net, check=True)
    try:
        for _ in range(3):
            cid = _run(skiffd, "--network", net)
            got: list[tuple[int, Any]] = []

            def disconnect(cid: str = cid, got: list[tuple[int, Any]] = got) -> None:
                got.append(call(skiffd.socket, "POST", f"/networks/{net}/disconnect",
                                {"Container": cid}))

            threads = [threading.Thread(target=disconnect) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            skiffd.docker("rm", "-f", cid)
            statuses = sorted(s for s, _ in got)
            assert statuses[0] == 200 and statuses[1] == 409, got
            for status, answer in got:
                if status == 409:
                    assert "is not connected to network" in answer["message"], got
    finally:
        skiffd.docker("network", "rm", net)


def test_a_disconnect_from_a_removed_network_is_404(skiffd: Daemon) -> None:
    net = f"race-{secrets.token_hex(3)}"
    skiffd.docker("network", "create", net, check=True)
    cid = skiffd.docker("create", "--network", net, "busybox", "true",
                        check=True).stdout.decode().strip()
    try:
        skiffd.docker("network", "rm", net)
        status, answer = call(skiffd.socket, "POST", f"/networks/{net}/disconnect",
                              {"Container": cid})
        assert status in (404, 409), (status, answer)
    finally:
        skiffd.docker("rm", "-f", cid)
        skiffd.docker("network", "rm", net)

