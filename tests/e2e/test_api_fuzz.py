"""No 5xx from bad input (issue 17, item 5): every operation of the v1.41 spec, fuzzed.

Requests come from tests/apifuzz.py (hypothesis, from the spec's schemas, with
fixed seeds: the same requests every run) and go to a real skiffd over its socket.
The run prints, per operation and in total, how many requests were sent, how many
were answered with a 5xx and how many with a status the spec does not declare for
the operation; it fails on any 500 (or other undeclared 5xx), on an operation of the
spec not exercised, and if the daemon stops answering.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from pathlib import Path

import docker as dockerpy
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings

from tests.apifuzz import FuzzRequest, Operation, Spec, load_spec, requests_for, spec_path
from tests.daemon import Daemon, running_daemon
from tests.registry import REGISTRY, Registry, running_registry

#: examples per operation: ~100 operations in well under the ~90 s budget on 2 cores
EXAMPLES = int(os.environ.get("SKIFF_FUZZ_EXAMPLES", "30"))
#: operations that must have answered some request with a 2xx (a run refused at the
#: door everywhere, by a broken router or generator, proves nothing)
MIN_OPERATIONS_2XX = 20
#: a request may be slow (an image import) but never hangs the run
TIMEOUT = (5, 8)


@pytest.fixture(scope="module")
def spec() -> Spec:
    path = spec_path()
    if path is None:
        pytest.skip("the v1.41 swagger (shared/specs) is not on this machine")
    return load_spec(path)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("skiffd-fuzz")) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with a password on 127.0.0.1: /auth talks to it, not to the Internet."""
    if not Path(REGISTRY).exists():
        pytest.skip("docker-registry is not installed")
    with running_registry(tmp_path_factory.mktemp("fuzz-registry"), "htpasswd") as reg:
        yield reg


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[dockerpy.APIClient]:
    c = dockerpy.APIClient(base_url=daemon.host, version="1.41", timeout=30)
    yield c
    c.close()


def _send(api: dockerpy.APIClient, req: FuzzRequest) -> int | None:
    """The status of ``req``; None when the daemon took longer than TIMEOUT
    (a stream that goes on, e.g. events: the status is what counts)."""
    url = api.base_url + "/v1.41" + req.path
    try:
        with api.request(req.op.method, url, params=req.params, data=req.body,
                                  headers=req.headers, timeout=TIMEOUT, stream=True) as res:
            # read a little of a streamed body, so a failure mid-stream is seen too
            for _ in res.iter_content(65536):
                break
            return res.status_code
    except requests.exceptions.Timeout:
        return None
    except requests.exceptions.ConnectionError as exc:
        if "Read timed out" in str(exc):
            return None
        raise


def _order(ops: list[Operation]) -> list[Operation]:
    """Deleting and pruning last, so the objects the others aim at live long enough."""
    def late(op: Operation) -> int:
        return 2 if op.method == "DELETE" else 1 if op.path.endswith("/prune") else 0
    return sorted(ops, key=late)


def test_every_operation_of_the_spec_without_a_5xx(daemon: Daemon, client: dockerpy.APIClient,
                                                   spec: Spec, registry: Registry) -> None:
    box = "fuzz-box"
    client.create_container("busybox", "true", name=box,
                            host_config=client.create_host_config(network_mode="none"))
    net = client.create_network("fuzz-net")["Id"]
    client.create_volume("fuzz-vol")
    client.tag("busybox:latest", "fuzz-img", "1")
    real = {"id": [box, "fuzz-net", net[:12]], "name": ["fuzz-img:1", "fuzz-vol"]}

    sent: collections.Counter[str] = collections.Counter()
    fives: list[str] = []
    undeclared: collections.Counter[str] = collections.Counter()
    timeouts: collections.Counter[str] = collections.Counter()
    declared_503: collections.Counter[str] = collections.Counter()
    answered_2xx: set[str] = set()
    started = time.monotonic()
    def run(op: Operation) -> None:
        # fields that take the request past the first lookup, into the handler's logic
        pinned = {"SystemAuth": {"serveraddress": registry.host},
                  "ContainerCreate": {"Image": "busybox"},
                  "NetworkConnect": {"Container": box},
                  "NetworkDisconnect": {"Container": box}}.get(op.id)

        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(req=requests_for(spec, op, real, pinned))
        def fuzz(req: FuzzRequest) -> None:
            status = _send(client, req)
            sent[op.id] += 1
            if status is None:
                timeouts[op.id] += 1
                return
            if 200 <= status < 300:
                answered_2xx.add(op.id)
            if status == 503 and 503 in op.statuses:
                declared_503[op.id] += 1  # a node not part of a swarm, as dockerd says
            elif status >= 500:
                fives.append(f"{status} {req.describe()}")
            if status not in op.statuses:
                undeclared[f"{op.id} {status}"] += 1

        fuzz()

    for op in _order(spec.operations):
        run(op)
    elapsed = time.monotonic() - started

    print(f"\napi fuzz: {sum(sent.values())} requests over {len(sent)} operations "
          f"in {elapsed:.0f} s; 5xx: {len(fives)}; undeclared statuses: "
          f"{sum(undeclared.values())}; timed out (streams): {sum(timeouts.values())}; "
          f"declared 503 (swarm): {sum(declared_503.values())}; operations with a 2xx: "
          f"{len(answered_2xx)}")
    for key, n in sorted(undeclared.items()):
        print(f"  undeclared: {key} x{n}")
    for line in fives[:40]:
        print(f"  5xx: {line}")
    assert client.ping(), "skiffd stopped answering"
    # a 500 is logged with what failed and where: shown here, so a run says why
    failed = [line for line in daemon.log_path.read_text(errors="replace").splitlines()
              if "api.handler_failed" in line]
    assert not fives, f"{len(fives)} 5xx answers:\n" + "\n".join(fives[:40]) + \
        "\n--- skiffd ---\n" + "\n".join(line[:3000] for line in failed[:20])
    missing = {op.id for op in spec.operations} - set(sent)
    assert not missing, f"operations never exercised: {sorted(missing)}"
    # the requests reached the handlers' work, not only their first refusal
    assert len(answered_2xx) >= MIN_OPERATIONS_2XX, sorted(answered_2xx)
