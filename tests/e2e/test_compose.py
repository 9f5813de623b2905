"""docker-compose 1.29 (Debian's package, its own docker-py) end to end against a
real skiffd, then the same project against the tests' dockerd 20.10.

The project: ``web``, busybox httpd built by compose from a Dockerfile with a
HEALTHCHECK; ``client``, which waits for web to be healthy (``depends_on`` with
``condition: service_healthy``, file format 2.4), reads an ``env_file``, keeps
what it fetched from ``http://web/`` in a named volume; ``worker``, run with
``--scale 3``, with a ``healthcheck:`` of the compose file and ``init: true``.
Each step is driven as a user would and what compose shows is recorded; the
skiffd test asserts it, the dockerd test asserts that dockerd shows the same.

Smaller projects, each run side by side: a start that fails (two services on
one host port: ``Exit 128`` and State.Error, as dockerd); the other everyday
commands (up again, scale down, port, top, pause, kill, restart, rm); a changed
service recreated with its anonymous volume; ``events --json``; and an attached
``up --exit-code-from`` as CI jobs use it (``service_completed_successfully``, a
network alias, tmpfs, mem_limit, restart policy, ``run`` with options); service
options as the container sees them (``shm_size``, ``network_mode: service:``).

The twin dockerd has no firewall of its own (``--iptables=false``), so
:func:`forwarding_between_dockerd_bridges` lets its containers talk.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.engines import Dockerd
from tests.builds import write_tree
from tests.daemon import Daemon, running_daemon
from tests.e2e.conftest import twin_of
from tests.sidebyside import fields

COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None,
                                reason="docker-compose (1.29) is not installed")

COMPOSE_FILE = """\
version: "2.4"
services:
  web:
    build: ./web
    image: {image}
  client:
    image: busybox:latest
    depends_on:
      web:
        condition: service_healthy
    env_file: client.env
    volumes:
      - data:/data
    command:
      - sh
      - -c
      - 'wget -q -O /data/got http://web/index.html && echo "$$GREETING: $$(cat /data/got)";
         exec sleep 3600'
  worker:
    image: busybox:latest
    init: true
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/ready"]
      interval: 1s
      timeout: 5s
      retries: 3
    command: ["sh", "-c", "touch /tmp/ready; echo worker up; exec sleep 3600"]
volumes:
  data: {{}}
"""

WEB_DOCKERFILE = """\
FROM busybox:latest
COPY index.html /www/index.html
HEALTHCHECK --interval=1s --timeout=5s --retries=3 \\
  CMD wget -q -O /dev/null http://127.0.0.1/index.html || exit 1
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

#: what ``docker-compose ps`` shows in its State column
STATE = re.compile(
    r"\s(Up \((?:healthy|unhealthy|health: starting)\)|Up|Paused|Restarting|Exit -?\d+)\s")


class Project:
    """One compose project in a folder, driven against one engine's environment."""

    def __init__(self, folder: Path, name: str, env: dict[str, str]) -> None:
        self.folder, self.name = folder, name
        self.env = dict(env)
        self.env["COMPOSE_DOCKER_CLI_BUILD"] = "0"  # compose posts the build itself
        self.env.pop("DOCKER_BUILDKIT", None)

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        assert COMPOSE is not None
        return subprocess.run([COMPOSE, "--ansi", "never", "-p", self.name, *args], cwd=self.folder,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str, timeout: float = 180) -> str:
        res = self.compose(*args, timeout=timeout)
        assert res.returncode == 0, (args, res.stdout[-3000:], res.stderr[-3000:])
        return res.stdout

    def docker(self, *args: str) -> str:
        res = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, (args, res.stderr)
        return res.stdout

    def states(self) -> dict[str, str]:
        """``docker-compose ps``: container name (project prefix taken out) -> State."""
        seen = {}
        for line in self.ok("ps").splitlines():
            if not line.startswith(self.name + "_"):
                continue
            m = STATE.search(line + " ")
            assert m, line
            seen[line.split()[0].removeprefix(self.name + "_")] = m.group(1)
        return seen

    def wait_states(self, want: dict[str, str], timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        seen = self.states()
        while seen != want and time.monotonic() < deadline:
            time.sleep(0.3)
            seen = self.states()
        return seen

    def leftovers(self) -> dict[str, list[str]]:
        """What of the project the engine still has (compose's labels and names)."""
        label = f"label=com.docker.compose.project={self.name}"
        return {
            "containers": self.docker("ps", "-aq", "--filter", label).split(),
            "volumes": self.docker("volume", "ls", "-q", "--filter", label).split(),
            "networks": [n for n in self.docker("network", "ls", "--format",
                                                "{{.Name}}").split()
                         if n.startswith(self.name + "_")],
        }

    def clean(self, image: str) -> None:
        self.compose("down", "-v", "-t", "1")
        subprocess.run(["docker", "rmi", "-f", image], env=self.env, capture_output=True,
                       timeout=60)


def make_project(folder: Path, tok: str) -> Path:
    return write_tree(folder, {
        "docker-compose.yml": COMPOSE_FILE.format(image=f"skiffcompose-web-{tok}:1"),
        "web/Dockerfile": WEB_DOCKERFILE,
        "web/index.html": f"page-{tok}\n",
        "client.env": f"# the client's environment\nGREETING=hello-{tok}\n",
    })


ALL_UP = {"web_1": "Up (healthy)", "client_1": "Up", "worker_1": "Up (healthy)",
          "worker_2": "Up (healthy)", "worker_3": "Up (healthy)"}


def scenario(folder: Path, tok: str, env: dict[str, str]) -> dict[str, Any]:
    """The project's life on one engine: what compose showed at each step, with
    the per-run token taken out so that two engines' runs compare."""
    p = Project(make_project(folder, tok), f"skc{tok}", env)
    seen: dict[str, Any] = {}
    try:
        up = p.compose("up", "-d", "--scale", "worker=3")
        assert up.returncode == 0, (up.stdout[-3000:], up.stderr[-3000:])
        # depends_on service_healthy: compose created the client only after web
        # was healthy, so web is healthy as soon as up returns
        seen["web_after_up"] = p.states()["web_1"]
        web = json.loads(p.docker("inspect", f"{p.name}_web_1"))[0]
        seen["web_health"] = web["State"]["Health"]["Status"]
        worker = json.loads(p.docker("inspect", f"{p.name}_worker_2"))[0]
        seen["worker_healthcheck"] = worker["Config"]["Healthcheck"]
        seen["worker_init"] = worker["HostConfig"]["Init"]
        seen["ps_up"] = p.wait_states(ALL_UP)

        # the client fetched web's page by service name, its greeting from env_file
        logs = p.ok("logs", "--no-color", "client")
        seen["client_logs"] = [line.split("|", 1)[1].strip().replace(tok, "<tok>")
                               for line in logs.splitlines() if "|" in line]
        seen["worker_logs"] = sorted(line.split("|", 1)[1].strip()
                                     for line in p.ok("logs", "--no-color", "worker")
                                     .splitlines() if "|" in line)

        seen["exec"] = p.ok("exec", "-T", "client", "cat", "/data/got").replace(tok, "<tok>")
        lookup = p.ok("exec", "-T", "client", "nslookup", "worker")
        seen["worker_addresses"] = len({a for a in re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", lookup)
                                        if not a.startswith("127.")})
        # one-off: same network, volume and env_file; its exit code is run's
        run = p.compose("run", "--rm", "-T", "client", "sh", "-c",
                        'echo "$GREETING"; cat /data/got; wget -q -O - http://web/index.html;'
                        " exit 3")
        seen["run"] = (run.returncode, run.stdout.replace(tok, "<tok>"))
        seen["ps_after_run"] = p.states()

        p.ok("stop", "-t", "1")
        seen["ps_stopped"] = p.states()
        p.ok("start")
        seen["ps_restarted"] = p.wait_states(ALL_UP)
        # the volume kept what the first start wrote
        seen["exec_after_start"] = p.ok("exec", "-T", "client", "cat", "/data/got").replace(
            tok, "<tok>")

        down = p.compose("down", "-v", "-t", "1")
        seen["down_rc"] = down.returncode
        seen["left_after_down"] = p.leftovers()
    finally:
        p.clean(f"skiffcompose-web-{tok}:1")
    return seen


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """skiffd on the default configuration (a default bridge, so user networks)."""
    base: Path = tmp_path_factory.mktemp("skiffd-compose")
    with running_daemon(base) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def on_skiffd(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return scenario(tmp_path_factory.mktemp("compose-skiffd"), secrets.token_hex(3),
                    daemon.env())


def test_compose_project_on_skiffd(on_skiffd: dict[str, Any]) -> None:
    seen = on_skiffd
    assert seen["web_health"] == "healthy", seen
    assert seen["web_after_up"] == "Up (healthy)", seen
    assert seen["worker_healthcheck"] == {"Test": ["CMD-SHELL", "test -f /tmp/ready"],
                                          "Interval": 10**9, "Timeout": 5 * 10**9,
                                          "Retries": 3}, seen
    assert seen["worker_init"] is True, seen
    assert seen["ps_up"] == ALL_UP, seen
    assert seen["client_logs"] == ["hello-<tok>: page-<tok>"], seen
    assert seen["worker_logs"] == ["worker up"] * 3, seen
    assert seen["exec"] == "page-<tok>\n", seen
    assert seen["worker_addresses"] == 3, seen
    assert seen["run"] == (3, "hello-<tok>\npage-<tok>\npage-<tok>\n"), seen
    assert seen["ps_after_run"] == ALL_UP, seen  # the one-off is gone
    # stop -t 1: httpd and sleep as PID 1 ignore SIGTERM and are killed; the
    # workers' init passes SIGTERM on to sleep and exits 128 + 15
    assert seen["ps_stopped"] == {"web_1": "Exit 137", "client_1": "Exit 137",
                                  "worker_1": "Exit 143", "worker_2": "Exit 143",
                                  "worker_3": "Exit 143"}, seen
    assert seen["ps_restarted"] == ALL_UP, seen
    assert seen["exec_after_start"] == "page-<tok>\n", seen
    assert seen["down_rc"] == 0, seen
    assert seen["left_after_down"] == {"containers": [], "volumes": [], "networks": []}, seen


@contextlib.contextmanager
def forwarding_between_dockerd_bridges() -> Iterator[None]:
    """Let traffic between containers on one of dockerd's user bridges through.

    The twin dockerd runs with ``--iptables=false`` in the tests' network
    namespace, where skiffd (as dockerd would) set the FORWARD policy to DROP;
    bridged frames meet that chain (br_netfilter), so nothing of dockerd's
    lets its containers reach each other.  dockerd's user bridges are
    ``br-<id>``, skiff's never are, so the rule touches only dockerd's.
    """
    rule = ["FORWARD", "-i", "br-+", "-o", "br-+", "-m", "comment", "--comment",
            "tests:twin-dockerd-bridges", "-j", "ACCEPT"]
    subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True, capture_output=True)


def test_compose_project_as_on_dockerd(daemon: Daemon, twin_dockerd: Dockerd,
                                       on_skiffd: dict[str, Any], tmp_path: Path) -> None:
    twin = twin_of(daemon, twin_dockerd, tmp_path)
    try:
        with forwarding_between_dockerd_bridges():
            on_dockerd = scenario(tmp_path / "dockerd", secrets.token_hex(3), twin.dockerd.env)
    finally:
        twin.close()
    assert on_skiffd == on_dockerd


PORT_CLASH = """\
version: "2.4"
services:
  one:
    image: busybox:latest
    command: ["sleep", "3600"]
    ports: ["{port}:80"]
  two:
    image: busybox:latest
    command: ["sleep", "3600"]
    ports: ["{port}:80"]
"""


def port_clash(folder: Path, tok: str, env: dict[str, str]) -> dict[str, Any]:
    """Two services that publish the same host port: one of them cannot start."""
    port = 20000 + secrets.randbelow(10000)
    p = Project(write_tree(folder, {"docker-compose.yml": PORT_CLASH.format(port=port)}),
                f"skc{tok}", env)
    try:
        up = p.compose("up", "-d")
        states = p.states()
        failed = [name for name, state in states.items() if state != "Up"]
        error = ""
        if len(failed) == 1:
            got = json.loads(p.docker("inspect", f"{p.name}_{failed[0]}"))[0]["State"]
            error = got["Error"]
        return {"up_rc": up.returncode,
                "up_says_allocated": "port is already allocated" in up.stderr,
                "states": sorted(states.values()),
                "error_says_allocated": "port is already allocated" in error}
    finally:
        p.compose("down", "-t", "1")


def test_compose_failed_start_shows_exit_128(daemon: Daemon, twin_dockerd: Dockerd,
                                             tmp_path: Path) -> None:
    """A service whose start failed shows ``Exit 128`` and the reason in
    State.Error, as with dockerd; never ``Exit 0``, a clean exit it never had."""
    twin = twin_of(daemon, twin_dockerd, tmp_path)
    try:
        seen = twin.same(lambda side: port_clash(tmp_path / side.name, secrets.token_hex(3),
                                                 side.env))
    finally:
        twin.close()
    assert seen == {"up_rc": 1, "up_says_allocated": True, "states": ["Exit 128", "Up"],
                    "error_says_allocated": True}


SMALL = """\
version: "2.4"
services:
  web:
    image: busybox:latest
    command: ["httpd", "-f", "-p", "80", "-h", "/"]
    ports: ["80"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/etc/hostname"]
      interval: 1s
  worker:
    image: busybox:latest
    init: true
    command: ["sleep", "3600"]
"""


def more_commands(folder: Path, tok: str, env: dict[str, str]) -> dict[str, Any]:
    """The rest of compose's everyday commands on a running project."""
    p = Project(write_tree(folder, {"docker-compose.yml": SMALL}), f"skc{tok}", env)
    seen: dict[str, Any] = {}
    up = {"web_1": "Up (healthy)", "worker_1": "Up", "worker_2": "Up", "worker_3": "Up"}
    try:
        p.ok("up", "-d", "--scale", "worker=3")
        seen["up"] = p.wait_states(up)
        again = p.compose("up", "-d", "--scale", "worker=3")
        seen["up_again"] = (again.returncode, sorted(
            line.removeprefix(p.name + "_") for line in again.stderr.splitlines()
            if "up-to-date" in line))
        p.ok("up", "-d", "--scale", "worker=1")
        seen["scaled_down"] = p.states()
        port = p.ok("port", "web", "80").strip()
        seen["port"] = re.sub(r":\d+$", ":<port>", port)
        top = p.ok("top", "web")
        seen["top_has_httpd"] = "httpd -f -p 80" in top
        p.ok("pause", "worker")
        seen["paused"] = p.states()["worker_1"]
        p.ok("unpause", "worker")
        p.ok("kill", "-s", "SIGKILL", "worker")
        seen["killed"] = p.states()["worker_1"]
        p.ok("restart", "-t", "1", "worker")
        seen["restarted"] = p.states()["worker_1"]
        p.ok("rm", "-f", "-s", "worker")
        seen["after_rm"] = p.states()
        down = p.compose("down", "-t", "1")
        seen["down_rc"] = down.returncode
        seen["left_after_down"] = p.leftovers()
    finally:
        p.compose("down", "-t", "1")
    return seen


def test_compose_commands_as_on_dockerd(daemon: Daemon, twin_dockerd: Dockerd,
                                        tmp_path: Path) -> None:
    twin = twin_of(daemon, twin_dockerd, tmp_path)
    try:
        seen = twin.same(lambda side: more_commands(tmp_path / side.name, secrets.token_hex(3),
                                                    side.env))
    finally:
        twin.close()
    assert seen["up"]["web_1"] == "Up (healthy)", seen
    assert seen["up_again"] == (0, sorted(f"{n} is up-to-date" for n in (
        "web_1", "worker_1", "worker_2", "worker_3"))), seen
    assert seen["scaled_down"] == {"web_1": "Up (healthy)", "worker_1": "Up"}, seen
    assert seen["paused"] == "Paused" and seen["killed"] == "Exit 137", seen
    assert seen["restarted"] == "Up", seen
    assert seen["after_rm"] == {"web_1": "Up (healthy)"}, seen
    assert seen["left_after_down"] == {"containers": [], "volumes": [], "networks": []}


ATTACHED = """\
version: "2.4"
services:
  setup:
    image: busybox:latest
    command: ["sh", "-c", "echo setting up; echo ready > /shared/flag"]
    volumes: ["shared:/shared"]
  server:
    image: busybox:latest
    command: ["httpd", "-f", "-p", "8080", "-h", "/shared"]
    volumes: ["shared:/shared"]
    depends_on:
      setup:
        condition: service_completed_successfully
    networks:
      default:
        aliases: ["files.internal"]
    tmpfs: ["/scratch"]
    mem_limit: 64m
    restart: on-failure
  tester:
    image: busybox:latest
    depends_on: ["server"]
    command:
      - sh
      - -c
      - 'for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://files.internal:8080/flag && break;
         sleep 0.5; done; echo "tester done"; exit 3'
volumes:
  shared: {}
"""


def attached(folder: Path, tok: str, env: dict[str, str]) -> dict[str, Any]:
    """``up --exit-code-from``, as CI jobs run a project: attached to every
    service's output, ended by the tester's exit, whose code compose returns."""
    p = Project(write_tree(folder, {"docker-compose.yml": ATTACHED}), f"skc{tok}", env)
    try:
        up = p.compose("up", "--no-color", "--exit-code-from", "tester", timeout=120)
        # what up printed as it went is cut short when a container exits (setup's
        # exit already ends compose's printer, on either engine): the logs are not
        logs = p.ok("logs", "--no-color", "setup", "tester")
        lines = [line.split("|", 1) for line in logs.splitlines() if "|" in line]
        said = sorted((who.strip().removeprefix(p.name + "_"), what.strip())
                      for who, what in lines)
        server = json.loads(p.docker("inspect", f"{p.name}_server_1"))[0]["HostConfig"]
        run = p.compose("run", "--rm", "--no-deps", "-T", "-e", "WHO=one-off", "-w", "/shared",
                        "--entrypoint", "sh", "server", "-c", 'echo "$WHO in $PWD"; cat flag')
        return {"rc": up.returncode, "said": said, "states": p.states(),
                "server_config": fields_of(server, "Tmpfs", "Memory", "RestartPolicy"),
                "run": (run.returncode, run.stdout)}
    finally:
        p.compose("down", "-v", "-t", "1")


def fields_of(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: obj.get(k) for k in keys}


def test_compose_attached_up_as_on_dockerd(daemon: Daemon, twin_dockerd: Dockerd,
                                           tmp_path: Path) -> None:
    twin = twin_of(daemon, twin_dockerd, tmp_path)
    try:
        with forwarding_between_dockerd_bridges():
            seen = twin.same(lambda side: attached(tmp_path / side.name, secrets.token_hex(3),
                                                   side.env))
    finally:
        twin.close()
    assert seen["rc"] == 3, seen
    assert ("tester_1", "ready") in seen["said"], seen  # by its alias, after setup's flag
    assert ("tester_1", "tester done") in seen["said"], seen
    assert ("setup_1", "setting up") in seen["said"], seen
    assert seen["states"] == {"setup_1": "Exit 0", "server_1": "Exit 137",
                              "tester_1": "Exit 3"}, seen
    assert seen["server_config"] == {"Tmpfs": {"/scratch": ""}, "Memory": 64 << 20,
                                     "RestartPolicy": {"Name": "on-failure",
                                                       "MaximumRetryCount": 0}}, seen
    assert seen["run"] == (0, "one-off in /shared\nready\n"), seen


RECREATE = """\
version: "2.4"
services:
  keeper:
    image: busybox:latest
    environment:
      ROUND: "{round}"
    volumes: ["/data"]
    command: ["sh", "-c", "echo round $$ROUND >> /data/rounds; exec sleep 3600"]
"""


def recreated(folder: Path, tok: str, env: dict[str, str]) -> dict[str, Any]:
    """A changed service is recreated by ``up -d`` and keeps its anonymous volume
    (compose hands the old container's volumes to the new one)."""
    p = Project(write_tree(folder, {"docker-compose.yml": RECREATE.format(round=1)}),
                f"skc{tok}", env)
    seen: dict[str, Any] = {}
    try:
        p.ok("up", "-d")
        first = p.docker("inspect", "--format", "{{.Id}}", f"{p.name}_keeper_1").strip()
        (folder / "docker-compose.yml").write_text(RECREATE.format(round=2))
        up = p.compose("up", "-d", "-t", "1")
        seen["up"] = (up.returncode, [line.replace(p.name, "<project>")
                                      for line in up.stderr.splitlines() if "eating" in line])
        second = p.docker("inspect", "--format", "{{.Id}}", f"{p.name}_keeper_1").strip()
        seen["new_container"] = first != second
        p.ok("up", "-d", "-t", "1", "--force-recreate")
        seen["rounds"] = p.ok("exec", "-T", "keeper", "cat", "/data/rounds")
        seen["containers"] = len(p.leftovers()["containers"])
    finally:
        p.compose("down", "-v", "-t", "1")
    seen["left_after_down"] = p.leftovers()
    return seen


def test_compose_recreate_keeps_anonymous_volumes(daemon: Daemon, twin_dockerd: Dockerd,
                                                  tmp_path: Path) -> None:
    twin = twin_of(daemon, twin_dockerd, tmp_path)
    try:
        seen = twin.same(lambda side: recreated(tmp_path / side.name, secrets.token_hex(3),
                                                side.env))
    finally:
        twin.close()
    assert seen["up"][0] == 0, seen
    assert seen["new_container"] is True, seen
    assert seen["rounds"] == "round 1\nround 2\nround 2\n", seen
    assert seen["containers"] == 1, seen
    assert seen["left_after_down"] == {"containers": [], "volumes": [], "networks": []}


EVENTFUL = """\
version: "2.4"
services:
  blip:
    image: busybox:latest
    command: ["sh", "-c", "sleep 1; exit 4"]
"""


def events(folder: Path, tok: str, env: dict[str, str]) -> dict[str, Any]:
    """``docker-compose events --json`` while the project comes up and its service ends."""
    assert COMPOSE is not None
    p = Project(write_tree(folder, {"docker-compose.yml": EVENTFUL}), f"skc{tok}", env)
    watch = subprocess.Popen([COMPOSE, "--ansi", "never", "-p", p.name, "events", "--json"],
                             cwd=folder, env=p.env, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()

    def next_event(timeout: float) -> tuple[str, str, Any] | None:
        try:
            e = json.loads(lines.get(timeout=timeout))
        except queue.Empty:
            return None
        return (e["service"], e["action"], e["attributes"].get("exitCode"))

    try:
        # compose subscribes once it has read the project: create the service
        # until its create event shows that it listens
        first = None
        deadline = time.monotonic() + 30
        while first is None and time.monotonic() < deadline:
            p.ok("rm", "-f", "-s")
            p.ok("up", "--no-start")
            first = next_event(1)
            while first is not None and first[1] != "create":
                first = next_event(1)
        assert first is not None, "compose events showed nothing"
        p.ok("start")
        got = [first]
        while got[-1][1] != "die" and (e := next_event(30)) is not None:
            got.append(e)
        return {"events": got, "exit": p.states()}
    finally:
        watch.kill()
        watch.wait()
        p.compose("down", "-t", "1")


def test_compose_events_as_on_dockerd(daemon: Daemon, twin_dockerd: Dockerd,
                                      tmp_path: Path) -> None:
    twin = twin_of(daemon, twin_dockerd, tmp_path)
    try:
        seen = twin.same(lambda side: events(tmp_path / side.name, secrets.token_hex(3),
                                             side.env))
    finally:
        twin.close()
    # compose's start attaches before it starts, as with dockerd
    assert seen["events"] == [("blip", "create", None), ("blip", "attach", None),
                              ("blip", "start", None), ("blip", "die", "4")], seen
    assert seen["exit"] == {"blip_1": "Exit 4"}, seen


OPTIONS = """\
version: "2.4"
services:
  base:
    image: busybox:latest
    command: ["sleep", "3600"]
    hostname: basehost
  opts:
    image: busybox:latest
    hostname: optshost
    domainname: example.test
    extra_hosts: ["db.example.test:10.9.8.7"]
    cap_drop: ["CHOWN"]
    cap_add: ["NET_ADMIN"]
    ulimits:
      nofile: {soft: 1000, hard: 2000}
    read_only: true
    tmpfs: ["/tmp"]
    user: "1234:5678"
    working_dir: /tmp
    stop_signal: SIGUSR1
    stop_grace_period: 3s
    shm_size: 16m
    labels: {org.example.role: options}
    logging:
      driver: json-file
      options: {max-size: 1m, max-file: "2"}
    command:
      - sh
      - -c
      - 'hostname; id -u; id -g; pwd; ulimit -n; ulimit -Hn; grep -c db.example.test /etc/hosts;
         touch /ro 2>/dev/null || echo read-only; df -m /dev/shm | tail -1 | awk "{print \\$$2}"'
  sidecar:
    image: busybox:latest
    network_mode: "service:base"
    command: ["hostname"]
"""

OPTION_FIELDS = ("Config.Hostname", "Config.Domainname", "Config.User", "Config.WorkingDir",
                 "Config.StopSignal", "Config.StopTimeout",
                 "HostConfig.ExtraHosts", "HostConfig.CapAdd", "HostConfig.CapDrop",
                 "HostConfig.Ulimits", "HostConfig.ReadonlyRootfs",
                 "HostConfig.Tmpfs", "HostConfig.ShmSize", "HostConfig.LogConfig")


def options(folder: Path, tok: str, env: dict[str, str]) -> dict[str, Any]:
    """Service options as compose sends them: what the container sees and inspect
    shows (``shm_size`` and ``network_mode: service:`` once differed from dockerd)."""
    p = Project(write_tree(folder, {"docker-compose.yml": OPTIONS}), f"skc{tok}", env)
    try:
        p.ok("up", "-d", "base")
        run = p.compose("run", "--rm", "-T", "opts")
        p.ok("up", "-d", "--no-deps", "opts", "sidecar")
        p.ok("stop", "-t", "3", "opts")
        opts = json.loads(p.docker("inspect", f"{p.name}_opts_1"))[0]
        sidecar = p.compose("logs", "--no-color", "sidecar").stdout
        return {"run": (run.returncode, run.stdout),
                "fields": fields(opts, *OPTION_FIELDS),
                "label": opts["Config"]["Labels"].get("org.example.role"),
                "state": opts["State"]["Status"],
                "sidecar": [line.split("|", 1)[1].strip() for line in sidecar.splitlines()
                            if "|" in line]}
    finally:
        p.compose("down", "-t", "1")


def test_compose_service_options_as_on_dockerd(daemon: Daemon, twin_dockerd: Dockerd,
                                               tmp_path: Path) -> None:
    twin = twin_of(daemon, twin_dockerd, tmp_path)
    try:
        with forwarding_between_dockerd_bridges():
            seen = twin.same(lambda side: options(tmp_path / side.name, secrets.token_hex(3),
                                                  side.env))
    finally:
        twin.close()
    assert seen["run"] == (0, "optshost\n1234\n5678\n/tmp\n1000\n2000\n1\nread-only\n16\n"), seen
    assert seen["label"] == "options" and seen["state"] == "exited", seen
    # network_mode service:base: base's namespace, so base's hostname, as dockerd
    assert seen["sidecar"] == ["basehost"], seen
