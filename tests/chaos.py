"""A chaos harness for issue 21: a mixed workload from concurrent clients against
one skiffd, SIGKILLed at random moments and started again, with the engine's
state checked against what the clients were told after every restart.

Every random choice comes from one seeded ``random.Random`` per round (the seed
and the round number make it), so a failure names a seed that replays the same
choices (``SKIFF_CHAOS_SEED``); the timing of the kill against the workload
stays the kernel's, so a replay hits the same operations at nearby points.

What a client was told is the ledger: an answer received is a fact the engine
must keep (a container created, a tag set, a volume removed); a request cut by
the kill is uncertain, and either outcome is accepted, but only as a whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.daemon import Daemon

IMAGE = "busybox"
#: the CI run's seed; a longer run before a release picks others (docs/design.md)
SEED = 2121


class Unreachable(Exception):
    """The daemon went away in the middle of a request (killed)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def call(sock: str, method: str, path: str, body: Any = None,
         timeout: float = 30) -> tuple[int, Any]:
    """One API request; raises Unreachable when the daemon is gone mid-way."""
    conn = _UnixConnection(sock, timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, "/v1.41" + path, body=data, headers=headers)
        res = conn.getresponse()
        raw = res.read()
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(f"{method} {path}: {e}") from e
    finally:
        conn.close()
    try:
        return res.status, json.loads(raw) if raw else None
    except ValueError:
        return res.status, raw.decode(errors="replace")


@dataclass
class Ledger:
    """What the clients were told, by name (names are unique per run)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: name -> "present" | "absent" | "maybe"
    containers: dict[str, str] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    networks: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)
    #: repo:tag -> "present" | "absent" | "maybe"
    tags: dict[str, str] = field(default_factory=dict)
    ops: int = 0
    #: name -> what happened to it, to explain a breach
    history: dict[str, list[str]] = field(default_factory=dict)

    def set(self, kind: str, name: str, state: str, why: str = "") -> None:
        with self.lock:
            getattr(self, kind)[name] = state
            self.history.setdefault(name, []).append(f"{state}{why}")

    def live(self, kind: str, rnd: random.Random) -> str | None:
        with self.lock:
            names = sorted(n for n, s in getattr(self, kind).items() if s == "present")
        return rnd.choice(names) if names else None


class Client:
    """One client: a stream of random operations until the daemon dies or time is up."""

    def __init__(self, sock: str, ledger: Ledger, rnd: random.Random, tag: str) -> None:
        self.sock, self.ledger, self.rnd, self.tag = sock, ledger, rnd, tag
        self.n = 0
        self.errors: list[str] = []

    def name(self, kind: str) -> str:
        self.n += 1
        return f"chaos-{kind}-{self.tag}-{self.n}"

    def run(self, stop: threading.Event) -> None:
        ops: list[Callable[[], None]] = [
            self.create, self.create, self.start, self.stop, self.rm, self.exec,
            self.commit, self.tag_image, self.untag, self.net_create, self.connect,
            self.disconnect, self.net_rm, self.vol_create, self.vol_rm,
        ]
        while not stop.is_set():
            op = self.rnd.choice(ops)
            try:
                op()
            except Unreachable:
                return
            with self.ledger.lock:
                self.ledger.ops += 1

    # Each operation marks its object "maybe" before the request and the
    # answer's outcome after it: a kill in between leaves "maybe".
    def _do(self, kind: str, name: str, method: str, path: str, body: Any, ok: set[int],
            after: str, refused: str) -> int:
        before = getattr(self.ledger, kind).get(name, "absent")
        self.ledger.set(kind, name, "maybe", f" {method} {self.tag}")
        status, answer = call(self.sock, method, path, body)
        why = f" {method} {status} {self.tag}"
        if status in ok:
            self.ledger.set(kind, name, after, why)
        elif status == 404 and method == "DELETE":
            self.ledger.set(kind, name, "absent", why)  # another client removed it first
        elif status < 500:
            self.ledger.set(kind, name, before if refused == "keep" else refused, why)
        else:
            self.errors.append(f"{method} {path}: {status} {answer}")
            # a 5xx says nothing sure about the outcome
        return status

    def create(self) -> None:
        name = self.name("c")
        vol = self.ledger.live("volumes", self.rnd) if self.rnd.random() < 0.3 else None
        body: dict[str, Any] = {"Image": IMAGE, "Cmd": ["sleep", "600"],
                                "HostConfig": {"NetworkMode": self.rnd.choice(
                                    ["none", "bridge", "bridge"])}}
        if vol:
            body["HostConfig"]["Binds"] = [f"{vol}:/data"]
            # a create names the volume: it makes it again if a rm got there first
            self.ledger.set("volumes", vol, "maybe")
        self._do("containers", name, "POST", f"/containers/create?name={name}", body,
                 {201}, "present", "absent")

    def start(self) -> None:
        name = self.ledger.live("containers", self.rnd)
        if name:
            status, answer = call(self.sock, "POST", f"/containers/{name}/start")
            if status in (204, 304):
                with self.ledger.lock:
                    self.ledger.started.add(name)
            elif status >= 500:
                self.errors.append(f"start {name}: {status} {answer}")

    def stop(self) -> None:
        name = self.ledger.live("containers", self.rnd)
        if name:
            status, answer = call(self.sock, "POST", f"/containers/{name}/stop?t=0")
            if status >= 500:
                self.errors.append(f"stop {name}: {status} {answer}")

    def rm(self) -> None:
        name = self.ledger.live("containers", self.rnd)
        if name:
            self._do("containers", name, "DELETE", f"/containers/{name}?force=1", None,
                     {204}, "absent", "keep")

    def exec(self) -> None:
        name = self.ledger.live("containers", self.rnd)
        if not name:
            return
        status, answer = call(self.sock, "POST", f"/containers/{name}/exec",
                              {"Cmd": ["true"]})
        if status == 201:
            status, answer = call(self.sock, "POST", f"/exec/{answer['Id']}/start",
                                  {"Detach": True})
        if status >= 500:
            self.errors.append(f"exec {name}: {status} {answer}")

    def commit(self) -> None:
        name = self.ledger.live("containers", self.rnd)
        if name:
            ref = f"chaos-img-{self.tag}:{self.n}"
            self.n += 1
            repo, tag = ref.split(":")
            self._do("tags", ref, "POST", f"/commit?container={name}&repo={repo}&tag={tag}",
                     {}, {201}, "present", "keep")

    def tag_image(self) -> None:
        src = self.ledger.live("tags", self.rnd) or IMAGE
        ref = f"chaos-tag-{self.tag}:{self.n}"
        self.n += 1
        repo, tag = ref.split(":")
        self._do("tags", ref, "POST", f"/images/{quote(src, safe='')}/tag?repo={repo}&tag={tag}",
                 None, {201}, "present", "keep")

    def untag(self) -> None:
        ref = self.ledger.live("tags", self.rnd)
        if ref:
            self._do("tags", ref, "DELETE", f"/images/{quote(ref, safe='')}", None, {200},
                     "absent", "keep")

    def net_create(self) -> None:
        name = self.name("n")
        self._do("networks", name, "POST", "/networks/create", {"Name": name}, {201},
                 "present", "absent")

    def connect(self) -> None:
        net, c = self.ledger.live("networks", self.rnd), self.ledger.live("containers",
                                                                            self.rnd)
        if net and c:
            status, answer = call(self.sock, "POST", f"/networks/{net}/connect",
                                  {"Container": c})
            if status >= 500:
                self.errors.append(f"connect {c} {net}: {status} {answer}")

    def disconnect(self) -> None:
        net, c = self.ledger.live("networks", self.rnd), self.ledger.live("containers",
                                                                            self.rnd)
        if net and c:
            status, answer = call(self.sock, "POST", f"/networks/{net}/disconnect",
                                  {"Container": c, "Force": True})
            if status >= 500:
                self.errors.append(f"disconnect {c} {net}: {status} {answer}")

    def net_rm(self) -> None:
        net = self.ledger.live("networks", self.rnd)
        if net:
            self._do("networks", net, "DELETE", f"/networks/{net}", None, {204}, "absent",
                     "keep")

    def vol_create(self) -> None:
        name = self.name("v")
        self._do("volumes", name, "POST", "/volumes/create", {"Name": name}, {201},
                 "present", "absent")

    def vol_rm(self) -> None:
        vol = self.ledger.live("volumes", self.rnd)
        if vol:
            self._do("volumes", vol, "DELETE", f"/volumes/{vol}", None, {204}, "absent",
                     "keep")


# --- what the host holds, for the leak checks -------------------------------------------

def _mounts_under(*roots: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if any(p == str(r) or p.startswith(f"{r}/") for r in roots)]


def _links() -> set[str]:
    return {Path(p).name for p in map(str, Path("/sys/class/net").iterdir())}


def _rules() -> list[str]:
    import subprocess
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        res = subprocess.run([tool], capture_output=True, text=True)
        found += [line for line in res.stdout.splitlines() if "skiff:" in line]
    return found


def _cgroups(parent: str) -> list[str]:
    found = []
    for top in Path("/sys/fs/cgroup").iterdir():
        group = top / parent
        if top.is_dir() and not top.is_symlink() and group.is_dir():
            found += [str(p) for p in group.iterdir() if p.is_dir()]
    return found


def _children(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {pid}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _ours(marker: str) -> dict[int, str]:
    """skiff processes (and container processes) whose command line names ``marker``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        args = raw.decode(errors="replace").split("\0")
        # not a test runner (whose tmp paths, "/tmp/pytest-of-...", every
        # process of the daemon's carries too: no "pytest" in cmd as such)
        if "pytest" in args or any(Path(a).name == "pytest" for a in args[:2]):
            continue
        cmd = " ".join(args)
        if marker in cmd:
            found[int(entry)] = cmd
    return found


def chain_ids(diff_ids: list[str]) -> list[str]:
    chain: list[str] = []
    for diff in diff_ids:
        chain.append(diff if not chain else "sha256:" + hashlib.sha256(
            f"{chain[-1]} {diff}".encode()).hexdigest())
    return chain


# --- the loop -----------------------------------------------------------------------------

@dataclass
class Chaos:
    d: Daemon
    seed: int
    clients: int = 3
    ledger: Ledger = field(default_factory=Ledger)
    kills: int = 0
    monitor_kills: int = 0
    forkserver_kills: int = 0
    problems: list[str] = field(default_factory=list)
    #: where the time goes (start, check, tidy), for keeping a round cheap
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def sock(self) -> str:
        return self.d.socket

    def round(self, number: int) -> None:
        rnd = random.Random(f"{self.seed}-{number}")
        stop = threading.Event()
        workers = [Client(self.sock, self.ledger, random.Random(rnd.random()), f"{number}x{i}")
                   for i in range(self.clients)]
        threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        # the kill lands a random while after the workload started: early, while the
        # first operations are in flight, or later, amid a stream of them
        time.sleep(rnd.choice([0.0, 0.01, 0.05]) + rnd.random() * 0.4)
        if rnd.random() < 0.2:
            self._kill_a_monitor(rnd)
        assert self.d.proc is not None
        if rnd.random() < 0.15:
            # with the daemon, in the same instant: its half-made runs and
            # spares are the next daemon's to find (alone, it is restarted
            # by the daemon, and a run it was making fails as dockerd's would)
            self._kill_the_fork_server()
        self.d.proc.kill()
        self.d.proc.wait()
        self.d.proc = None
        self.kills += 1
        stop.set()
        for t in threads:
            t.join(60)
        for w in workers:
            self.problems += [f"round {number}: {e}" for e in w.errors]
        t0 = time.monotonic()
        self.d.start()
        t1 = time.monotonic()
        self.check(number)
        t2 = time.monotonic()
        self.tidy(rnd)
        for phase, took in (("start", t1 - t0), ("check", t2 - t1),
                            ("tidy", time.monotonic() - t2)):
            self.seconds[phase] = self.seconds.get(phase, 0.0) + took

    def _kill_a_monitor(self, rnd: random.Random) -> None:
        # this daemon's monitors name their bundle, below its exec-root
        exec_root = self.d.config["exec-root"]

        def monitors_now() -> list[int]:
            return sorted(p for p, cmd in _ours(exec_root).items()
                          if cmd.split(" ", 1)[0].endswith("skiff-monitor"))
        monitors = monitors_now()
        name = None if monitors else self.ledger.live("containers", rnd)
        if name is not None:
            # the workload seldom has one running this early: the harness starts one
            try:
                status, _ = call(self.sock, "POST", f"/containers/{name}/start")
            except Unreachable:
                return
            if status in (204, 304):
                with self.ledger.lock:
                    self.ledger.started.add(name)
            monitors = monitors_now()
        if monitors:
            with contextlib.suppress(ProcessLookupError):  # its container ended meanwhile
                os.kill(rnd.choice(monitors), signal.SIGKILL)
                self.monitor_kills += 1

    def _kill_the_fork_server(self) -> None:
        # the daemon's child that serves <exec-root>/forkserver.sock (its spares
        # and the runs it makes carry the same command line, a level below)
        assert self.d.proc is not None
        sock = str(Path(self.d.config["exec-root"]) / "forkserver.sock")
        for pid, cmd in _ours(sock).items():
            if cmd.rstrip().endswith(f"forkserver {sock}") and _parent(pid) == self.d.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.forkserver_kills += 1

    def _get(self, path: str) -> Any:
        status, answer = call(self.sock, "GET", path)
        if status != 200:
            self.problems.append(f"GET {path}: {status} {answer}")
            return None
        return answer

    def check(self, number: int) -> None:
        """The invariants after a restart; each breach is recorded with the round."""
        found: list[str] = []
        led = self.ledger
        listed = self._get("/containers/json?all=1") or []
        names = {c["Names"][0].lstrip("/"): c for c in listed}
        for name, c in names.items():
            state = led.containers.get(name)
            if state is None or state == "absent":
                found.append(f"phantom container {name} ({state})")
            status, info = call(self.sock, "GET", f"/containers/{c['Id']}/json")
            if status == 404 and state == "maybe":
                # an rm the kill cut, finished by the new daemon between the
                # listing and this inspect
                led.containers[name] = "absent"
                continue
            if status != 200:
                found.append(f"container {name} cannot be inspected: {status} {info}")
                continue
            st = info["State"]
            if st["Status"] == "removing":
                # an rm cut by the crash, being finished: gone by the next check
                led.containers[name] = "absent"
                continue
            if st["Running"] or st["Pid"] or st["Status"] not in ("created", "exited"):
                found.append(f"container {name}: state {st} after a crash")
            if name in led.started and st["Status"] == "created" and state == "present":
                found.append(f"container {name}: started but reported created")
        for name, state in led.containers.items():
            if state == "present" and name not in names:
                found.append(f"lost container {name}")
            if state == "maybe":
                led.containers[name] = "present" if name in names else "absent"

        nets = {n["Name"]: n for n in self._get("/networks") or []}
        for name, state in led.networks.items():
            if state == "present" and name not in nets:
                found.append(f"lost network {name}")
            if state == "absent" and name in nets:
                found.append(f"removed network {name} is back")
            if state == "maybe":
                led.networks[name] = "present" if name in nets else "absent"
        for name in nets:
            if name not in ("bridge", "none", "host") and name not in led.networks:
                found.append(f"phantom network {name}")

        vols = {v["Name"]: v for v in (self._get("/volumes") or {}).get("Volumes") or []}
        for name, state in led.volumes.items():
            if state == "present" and name not in vols:
                found.append(f"lost volume {name}")
            if state == "absent" and name in vols:
                found.append(f"removed volume {name} is back")
            if state == "maybe":
                led.volumes[name] = "present" if name in vols else "absent"
        for name, v in vols.items():
            if name not in led.volumes:
                found.append(f"phantom volume {name}")
            elif not v["Mountpoint"] or not Path(v["Mountpoint"]).is_dir():
                found.append(f"volume {name} has no directory {v['Mountpoint']}")

        images = self._get("/images/json?all=1") or []
        refs = {t for i in images for t in i.get("RepoTags") or []}
        for ref, state in led.tags.items():
            full = ref if ":" in ref else f"{ref}:latest"
            if state == "present" and full not in refs:
                found.append(f"lost tag {ref}")
            if state == "absent" and full in refs:
                found.append(f"removed tag {ref} is back: {led.history.get(ref)}")
            if state == "maybe":
                led.set("tags", ref, "present" if full in refs else "absent", " (check)")
        layerdb = self._layerdb()
        for image in images:
            info = self._get(f"/images/{image['Id']}/json")
            if info is None or self._get(f"/images/{image['Id']}/history") is None:
                found.append(f"image {image['Id'][:19]} cannot be inspected")
                continue
            if layerdb is not None:
                for chain in chain_ids(info["RootFS"]["Layers"]):
                    if not (layerdb / chain.replace(":", "/")).is_dir():
                        found.append(f"image {image['Id'][:19]} lacks layer {chain[:19]}")

        found += self._leaks(nets)
        self.problems += [f"round {number}: {f}" for f in found]

    def _layerdb(self) -> Path | None:
        found = list((self.d.root_dir / "image").glob("*/layerdb"))
        return found[0] if found else None

    def _leaks(self, nets: dict[str, Any]) -> list[str]:
        found = []
        roots = (self.d.data_root, Path(self.d.config["exec-root"]))
        # without live-restore nothing runs after a restart: nothing is mounted
        found += [f"leaked mount {m}" for m in _mounts_under(*roots)]
        found += [f"leaked cgroup {g}" for g in _cgroups(self.d.config["cgroup-parent"])]
        bridges = {self.d.config["bridge"]} | {
            f"skf-{n['Id'][:11]}" for n in nets.values() if n["Driver"] == "bridge"
            and n["Name"] != "bridge"}
        links = _links()
        found += [f"leaked veth {ln}" for ln in links if ln.startswith("skfv")]
        found += [f"leaked bridge {ln}" for ln in links
                  if ln.startswith("skf-") and ln not in bridges]
        # (a network's bridge is made when its first container starts: none may be up)
        tags = {f"skiff:{b}" for b in bridges}
        found += [f"leaked rule {r}" for r in _rules()
                  if not any(f"{t} " in r + " " or f'"{t}"' in r for t in tags)]
        assert self.d.proc is not None
        tree = _children(self.d.proc.pid)
        found += [f"leaked process {p}: {cmd}" for p, cmd in _ours(str(self.d.base)).items()
                  if p not in tree]
        return found

    def clear(self) -> None:
        """Remove what the clients made (the caller's daemon removes the containers)."""
        for c in self._get("/containers/json?all=1") or []:
            call(self.sock, "DELETE", f"/containers/{c['Id']}?force=1")
        for n in self._get("/networks") or []:
            if n["Name"].startswith("chaos-"):
                status, answer = call(self.sock, "DELETE", f"/networks/{n['Id']}")
                if status != 204:
                    self.problems.append(f"clear: network rm {n['Name']}: {status} {answer}")
        links = _links()
        self.problems += [f"clear: bridge {ln} left" for ln in links if ln.startswith("skf-")]
        for v in (self._get("/volumes") or {}).get("Volumes") or []:
            call(self.sock, "DELETE", f"/volumes/{v['Name']}")

    def tidy(self, rnd: random.Random) -> None:
        """Keep each round cheap: rm (which must work on every record) all but a few
        containers, and prune networks and volumes past a few."""
        led = self.ledger
        # few networks: skiffd sets up every network's bridge at start (~0.25 s each)
        for kind, path, keep in (("containers", "/containers/{}?force=1", 4),
                                 ("networks", "/networks/{}", 1),
                                 ("volumes", "/volumes/{}", 2)):
            live = sorted(n for n, s in getattr(led, kind).items() if s == "present")
            rnd.shuffle(live)
            for name in live[keep:]:
                status, answer = call(self.sock, "DELETE", path.format(name))
                if status == 204:
                    led.set(kind, name, "absent", " (tidy)")
                elif status >= 500 or kind == "containers":
                    self.problems.append(f"tidy: rm {kind} {name}: {status} {answer}")
        tags = sorted(n for n, s in led.tags.items() if s == "present")
        for ref in tags[6:]:
            status, _ = call(self.sock, "DELETE", f"/images/{quote(ref, safe='')}")
            if status == 200:
                led.set("tags", ref, "absent", " (tidy)")


def run(d: Daemon, rounds: int, seed: int, clients: int = 3) -> Chaos:
    """``rounds`` kill points: every round's choices come from the seed and
    its number, so a short run is the first rounds of a long one, replayed
    with ``SKIFF_CHAOS_KILLS``."""
    chaos = Chaos(d, seed, clients)
    try:
        for number in range(rounds):
            chaos.round(number)
    finally:
        if d.proc is not None:
            chaos.clear()
    return chaos


def seed_and_rounds(default_rounds: int) -> tuple[int, int]:
    """The seed and the kill points: the CI run's ``default_rounds`` unless
    ``SKIFF_CHAOS_SEED`` and ``SKIFF_CHAOS_KILLS`` ask for others."""
    seed = int(os.environ.get("SKIFF_CHAOS_SEED") or SEED)
    return seed, int(os.environ.get("SKIFF_CHAOS_KILLS") or default_rounds)
