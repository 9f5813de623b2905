"""User namespaces (``userns-remap``): root in a container is nobody on the host.

The class these stand for: every container escape whose payoff is running as
host root (CVE-2019-5736 overwriting runc, CVE-2022-0492 release_agent,
CVE-2024-21626 a leaked host descriptor, a misconfigured bind mount of a host
directory).  With remapping, what escapes is the first subordinate uid of the
remap user, which owns nothing on the host; with ``--userns=auto`` each
container is a different one of those, so two escaped containers cannot even
reach each other.  Each protection is also shown off (``--userns=host``, a
shared mapping), where the same attack succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.core.userns import IdMap
from skiff.core.userns import resolve as resolve_remap
from tests.daemon import Daemon, daemon_config, running_daemon

IDENTITY = ["0", "0", "4294967295"]


def _out(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode()


def _err(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stderr.decode()


@pytest.fixture(scope="module")
def remapd(remap_user: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """skiffd with ``userns-remap: default``, busybox loaded."""
    with running_daemon(tmp_path_factory.mktemp("remapd"), **{"userns-remap": "default"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


@pytest.fixture(scope="module")
def autod(remap_user: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """skiffd where every container gets a user-namespace range of its own."""
    with running_daemon(tmp_path_factory.mktemp("autod"), **{
            "userns-remap": "default", "default-userns-mode": "auto"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def default_map() -> IdMap:
    """The mapping every ``userns-remap: default`` container gets (skiffremap exists)."""
    return resolve_remap("default", create=False).default


def _pid(d: Daemon, cid: str) -> int:
    return int(_out(d.docker("inspect", "-f", "{{.State.Pid}}", cid, check=True)))


def _host_ids(pid: int) -> tuple[list[int], list[int]]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return ([int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()])


def _uid_map(d: Daemon, cid: str) -> list[str]:
    return _out(d.docker("exec", cid, "cat", "/proc/self/uid_map", check=True)).split()


def _sleeper(d: Daemon, *flags: str) -> str:
    return _out(d.docker("run", "-d", *flags, "busybox", "sleep", "1000", check=True)).strip()


# -- the mapping ------------------------------------------------------------------


def test_root_inside_is_the_first_subordinate_uid_outside(remapd: Daemon) -> None:
    """``id -u`` is 0 in the container while the kernel, seen from the host,
    runs it as the remap user's first subordinate uid and gid; its uid_map
    is not the identity.  ``--userns=host`` (the protection off) is host
    root, identity map."""
    idmap = default_map()
    assert _out(remapd.docker("run", "--rm", "busybox", "id", "-u", check=True)).strip() == "0"
    cid = _sleeper(remapd)
    try:
        uids, gids = _host_ids(_pid(remapd, cid))
        assert uids == [idmap.root_uid] * 4 and gids == [idmap.root_gid] * 4
        assert idmap.root_uid >= 100000
        assert _uid_map(remapd, cid) == ["0", str(idmap.root_uid), "65536"]
        # an exec joins the same user namespace
        assert _out(remapd.docker("exec", cid, "id", "-u", check=True)).strip() == "0"
    finally:
        remapd.docker("rm", "-f", cid)
    cid = _sleeper(remapd, "--userns=host")
    try:
        assert _host_ids(_pid(remapd, cid)) == ([0] * 4, [0] * 4)
        assert _uid_map(remapd, cid) == IDENTITY
    finally:
        remapd.docker("rm", "-f", cid)


def test_info_shows_userns_and_the_remapped_root(remapd: Daemon) -> None:
    idmap = default_map()
    res = remapd.docker("info", "--format", "{{json .}}", check=True)
    info = json.loads(res.stdout)
    assert "name=userns" in info["SecurityOptions"]
    assert info["DockerRootDir"] == str(remapd.data_root / f"{idmap.root_uid}.{idmap.root_gid}")
    status = dict(info["DriverStatus"])
    assert status["User namespaces"].startswith("idmapped mounts"), status


def test_a_file_made_in_a_bind_mount_belongs_to_the_mapped_uid(remapd: Daemon,
                                                              tmp_path: Path) -> None:
    """Bind mounts are not idmapped: what the container's root creates there is
    owned on the host by the mapped uid, not by root."""
    idmap = default_map()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    remapd.docker("run", "--rm", "-v", f"{shared}:/data", "busybox", "sh", "-c",
                  "echo x > /data/made && mkdir /data/dir", check=True)
    for name in ("made", "dir"):
        st = os.lstat(shared / name)
        assert (st.st_uid, st.st_gid) == (idmap.root_uid, idmap.root_gid), name
    # and the image's files are the container's root's, not nobody's
    res = remapd.docker("run", "--rm", "busybox", "stat", "-c", "%u:%g", "/bin/busybox",
                        "/etc", check=True)
    assert _out(res).split() == ["0:0", "0:0"]


def test_root_that_reaches_a_host_file_cannot_write_it(remapd: Daemon, tmp_path: Path) -> None:
    """A container's root that reaches a root-owned host file (a bind mount
    here; an escape in general) cannot change it: it is an unprivileged uid to
    the host, whatever capabilities it holds in its namespace.  With
    ``--userns=host`` the same write succeeds."""
    host_dir = tmp_path / "etc"
    host_dir.mkdir()
    target = host_dir / "shadow"
    target.write_text("root:original\n")
    target.chmod(0o644)
    probe = ("echo 'root:owned' >> /host/shadow && echo WROTE || echo refused; "
             "rm -f /host/shadow 2>/dev/null; touch /host/planted 2>/dev/null; "
             "chmod 666 /host/shadow 2>/dev/null; true")
    res = remapd.docker("run", "--rm", "--cap-add", "ALL", "-v", f"{host_dir}:/host", "busybox",
                        "sh", "-c", probe, check=True)
    assert _out(res).strip() == "refused", _err(res)
    assert target.read_text() == "root:original\n"
    assert os.stat(target).st_mode & 0o777 == 0o644
    assert not (host_dir / "planted").exists()
    res = remapd.docker("run", "--rm", "--userns=host", "-v", f"{host_dir}:/host", "busybox",
                        "sh", "-c", "echo 'root:owned' >> /host/shadow && echo WROTE", check=True)
    assert _out(res).strip() == "WROTE"
    assert target.read_text() == "root:original\nroot:owned\n"


def test_container_root_keeps_what_docker_gives_it(remapd: Daemon) -> None:
    """Its namespaces belong to its user namespace, so root in the container
    still binds port 80, pings (raw socket) and writes its files and
    /etc/hosts; ``--cap-add NET_ADMIN`` reaches its own network, and without
    it the same change is refused (the capabilities are Docker's)."""
    probe = ("nc -l -p 80 & sleep 0.2; kill $! && echo BOUND; "
             "ping -c1 -W2 127.0.0.1 >/dev/null && echo PING; "
             "ip link set lo mtu 1500 2>/dev/null && echo NETADMIN; "
             "echo x > /etc/new && echo hosts >> /etc/hosts && echo WRITES")
    res = remapd.docker("run", "--rm", "--cap-add", "NET_ADMIN", "busybox", "sh", "-c", probe,
                        check=True)
    assert _out(res).split() == ["BOUND", "PING", "NETADMIN", "WRITES"], _err(res)
    res = remapd.docker("run", "--rm", "busybox", "sh", "-c", probe, check=True)
    assert _out(res).split() == ["BOUND", "PING", "WRITES"], _err(res)


def test_remapped_watcher_cannot_see_a_host_process_in_its_pid_namespace(remapd: Daemon) -> None:
    """Defence in depth for the exec race (CVE-2016-9962 class): even a host
    process that joined only the container's pid namespace (what a racy exec
    is for an instant) is out of reach of the container's root with
    SYS_PTRACE, which counts in its own user namespace only.
    tests/security/test_exec_race.py shows the same watcher catching it
    without the user namespace."""
    marker = Path("/tmp") / f"skiff-marker-{os.urandom(6).hex()}"
    marker.write_text("HOST\n")
    watch = (f"while true; do for d in /proc/[0-9]*; do cat $d/root{marker} 2>/dev/null "
             "&& echo FOUND; done; done")
    cid = _out(remapd.docker("run", "-d", "--cap-add", "SYS_PTRACE", "busybox", "sh", "-c",
                             watch, check=True)).strip()
    intruder = subprocess.Popen(["nsenter", "-t", str(_pid(remapd, cid)), "--pid", "--",
                                 "sleep", "30"])
    try:
        subprocess.run(["sleep", "3"], check=True)
        assert "FOUND" not in _out(remapd.docker("logs", cid))
    finally:
        intruder.kill()
        intruder.wait()
        remapd.docker("rm", "-f", cid)
        marker.unlink()


# -- Docker's rules and bad input ----------------------------------------------------


@pytest.mark.parametrize(("flags", "message"), [
    (["--privileged"], "privileged mode is incompatible with user namespaces"),
    (["--network", "host"], "cannot share the host's network namespace"),
    (["--pid", "host"], "cannot share the host PID namespace"),
])
def test_docker_rules_need_userns_host(remapd: Daemon, flags: list[str], message: str) -> None:
    """As dockerd: with remapping on, these share or grant what belongs to the
    host, so they need ``--userns=host`` (400 otherwise, nothing created)."""
    before = _out(remapd.docker("ps", "-aq"))
    res = remapd.docker("run", "--rm", *flags, "busybox", "true")
    assert res.returncode == 125 and message in _err(res), _err(res)
    assert _out(remapd.docker("ps", "-aq")) == before
    remapd.docker("run", "--rm", "--userns=host", *flags, "busybox", "true", check=True)


def test_bad_userns_modes_are_refused(tmp_path: Path) -> None:
    """``auto`` needs remapping; an unknown mode is a 400, as Docker's."""
    import docker

    with running_daemon(tmp_path / "plain") as d:
        d.skiff("image", "bootstrap", "busybox")
        api = docker.APIClient(base_url=d.host, version="1.41", timeout=60)
        for mode, message in (("auto", "needs user-namespace remapping"),
                              ("bogus", "invalid USER mode")):
            with pytest.raises(docker.errors.APIError) as info:
                api.create_container("busybox", "true", host_config={"UsernsMode": mode})
            assert info.value.status_code == 400 and message in str(info.value), info.value
        assert api.containers(all=True) == []


def test_a_remap_user_without_ranges_is_refused_at_start(tmp_path: Path) -> None:
    """Bad configuration is named at start with what to do: a user with no
    subordinate ranges (``daemon`` has none), an unknown user, root."""
    for spec, message in (("daemon", "has no subordinate uid range in /etc/subuid"),
                          ("no-such-user-xyz", "has no entry in /etc/passwd"),
                          ("root", "root cannot be remapped onto itself"),
                          ("a:b:c", "invalid value for 'userns-remap'")):
        d = Daemon(tmp_path, daemon_config(tmp_path, **{"userns-remap": spec}))
        with pytest.raises(RuntimeError) as info:
            d.start(timeout=20)
        assert message in str(info.value), info.value
        d.proc = None


# -- images: a separate root ---------------------------------------------------------


def test_images_of_the_unremapped_root_are_not_seen(remap_user: str, tmp_path: Path) -> None:
    """As dockerd: the remapped daemon keeps its images under
    ``<data-root>/<uid>.<gid>``, so an image stored before remapping was
    turned on is not there after (and runs again once it is turned off);
    one stored after runs."""
    base = tmp_path / "d"
    with running_daemon(base) as d:
        d.skiff("image", "bootstrap", "busybox")
        d.docker("tag", "busybox", "before:1", check=True)
        before = _out(d.docker("images", "-q", "before:1", check=True)).strip()
        assert before
        config = d.config
        d.stop()
        d.config = {**config, "userns-remap": "default"}
        d.start()
        assert _out(d.docker("images", "-q", check=True)).strip() == ""
        res = d.docker("run", "--pull=never", "--rm", "before:1", "true")
        assert res.returncode != 0 and "before:1" in _err(res), _err(res)
        d.skiff("image", "bootstrap", "busybox")
        res = d.docker("run", "--rm", "busybox", "id", "-u", check=True)
        assert _out(res).strip() == "0"
        d.stop()
        d.config = config
        d.start()
        assert _out(d.docker("images", "-q", "before:1", check=True)).strip() == before


# -- --userns=auto: a range per container ------------------------------------------------


def test_auto_ranges_are_disjoint_reused_and_survive_a_restart(remap_user: str,
                                                              tmp_path: Path) -> None:
    """Each container gets its own 65536 ids; a removed container's range is
    handed out again; after a restart of the daemon no range in use is handed
    out twice (the allocation is on disk)."""
    with running_daemon(tmp_path / "d", **{"userns-remap": "default",
                                           "default-userns-mode": "auto"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        default = default_map()

        def host_start(cid: str) -> int:
            return int(_uid_map(d, cid)[1])

        a, b = _sleeper(d), _sleeper(d)
        ranges = {host_start(a), host_start(b)}
        assert len(ranges) == 2
        assert all(r >= default.root_uid + 65536 for r in ranges)  # beyond the daemon's own
        low, high = sorted(ranges)
        assert high - low >= 65536
        a_range = host_start(a)
        d.docker("rm", "-f", a, check=True)
        c = _sleeper(d)
        assert host_start(c) == a_range
        b_range, c_range = host_start(b), host_start(c)
        d.stop()  # b and c stop with it and keep their ranges
        d.start()
        e = _sleeper(d)
        assert host_start(e) not in (b_range, c_range)
        d.docker("start", b, c, check=True)
        assert (host_start(b), host_start(c)) == (b_range, c_range)
        # --userns=host still runs one container unremapped
        res = d.docker("run", "--rm", "--userns=host", "busybox", "cat", "/proc/self/uid_map",
                       check=True)
        assert _out(res).split() == IDENTITY


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every uid of the host can reach (pytest's tmp is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="skiff-userns-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_auto_containers_cannot_signal_or_read_each_other(autod: Daemon, remapd: Daemon,
                                                          shared_dir: Path) -> None:
    """Two containers that both escaped to the host (played here by a host
    process with the first one's host uid) are still strangers with
    ``--userns=auto``: no signal, no reading the other's files in a
    directory both reach.  With the daemon's shared mapping (the control) the
    same uid signals and reads the other."""
    shared = shared_dir

    def attack(d: Daemon, victim_flags: list[str]) -> list[str]:
        victim = _out(d.docker("run", "-d", *victim_flags, "-v", f"{shared}:/shared", "busybox",
                               "sh", "-c", "echo s3cret > /shared/private && "
                               "chmod 600 /shared/private && exec sleep 1000",
                               check=True)).strip()
        attacker = _sleeper(d)
        try:
            uid = _host_ids(_pid(d, attacker))[0][0]
            gid = _host_ids(_pid(d, attacker))[1][0]
            as_attacker = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
            victim_pid = _pid(d, victim)
            signal = subprocess.run([*as_attacker, "kill", "-0", str(victim_pid)],
                                    capture_output=True)
            read = subprocess.run([*as_attacker, "cat", str(shared / "private")],
                                  capture_output=True)
            return ["SIGNAL" if signal.returncode == 0 else "no-signal",
                    "READ" if read.stdout == b"s3cret\n" else "no-read"]
        finally:
            d.docker("rm", "-f", victim, attacker)
            (shared / "private").unlink(missing_ok=True)

    assert attack(autod, []) == ["no-signal", "no-read"]
    assert attack(remapd, []) == ["SIGNAL", "READ"]


# -- storage: idmapped mounts, or chowned copies --------------------------------------


def _copies(d: Daemon) -> dict[str, int]:
    """Chowned layer copies on disk, per mapping."""
    found: dict[str, int] = {}
    for path in d.data_root.glob("*/image/*/layerdb/mapped/*/*"):
        if not path.name.startswith("."):
            found[path.parent.name] = found.get(path.parent.name, 0) + 1
    return found


def _tar_owners(data: bytes, names: set[str]) -> dict[str, tuple[int, int]]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (m.uid, m.gid) for m in tar if m.name.lstrip("./") in names}


def test_idmapped_storage_copies_nothing(remapd: Daemon) -> None:
    """With idmapped mounts the image's layers are used as they are: no copy
    is made for the mapping, and what the container writes is committed and
    exported with container ids."""
    cid = _out(remapd.docker("run", "-d", "busybox", "sh", "-c",
                             "echo x > /made && chown 1000:1000 /made && sleep 1000",
                             check=True)).strip()
    try:
        assert _copies(remapd) == {}
        exported = remapd.docker("export", cid, check=True).stdout
        assert _tar_owners(exported, {"made", "bin/busybox"}) == {
            "made": (1000, 1000), "bin/busybox": (0, 0)}
    finally:
        remapd.docker("rm", "-f", cid)


@pytest.mark.skipif(shutil.which("fuse-overlayfs") is None
                    or not Path("/dev/fuse").exists(), reason="needs fuse-overlayfs")
def test_chowned_copies_where_idmapped_mounts_cannot(remap_user: str, tmp_path: Path) -> None:
    """The fallback, chosen by the daemon itself: the aufs driver on a kernel
    without aufs runs on fuse-overlayfs, whose mounts cannot be idmapped.
    Remapped containers then get chowned copies of the layers (made once per
    image for the daemon's mapping, kept while the image is), `docker info`
    says so and why, and commit and export still give container ids."""
    with running_daemon(tmp_path / "d", **{"userns-remap": "default",
                                           "storage-driver": "aufs"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        status = dict(json.loads(_out(d.docker("info", "--format", "{{json .DriverStatus}}",
                                               check=True))))
        assert status["User namespaces"].startswith("chowned copies"), status
        assert "idmapped" in status["User namespaces"]  # the reason
        res = d.docker("run", "--rm", "busybox", "sh", "-c",
                       "id -u; stat -c %u:%g /bin/busybox; touch /made && echo wrote", check=True)
        assert _out(res).split() == ["0", "0:0", "wrote"]
        key = f"{default_map().root_uid}.{default_map().root_gid}"
        assert _copies(d) == {key: 1}  # busybox's one layer, kept for the next container
        cid = _out(d.docker("run", "-d", "busybox", "sh", "-c",
                            "echo x > /made && chown 1000:1000 /made && sleep 1000",
                            check=True)).strip()
        try:
            exported = d.docker("export", cid, check=True).stdout
            assert _tar_owners(exported, {"made", "bin/busybox"}) == {
                "made": (1000, 1000), "bin/busybox": (0, 0)}
            d.docker("commit", cid, "committed:1", check=True)
        finally:
            d.docker("rm", "-f", cid)
        res = d.docker("run", "--rm", "--userns=host", "committed:1", "stat", "-c", "%u:%g",
                       "/made", check=True)
        assert _out(res).strip() == "1000:1000"
        d.docker("rmi", "committed:1", "busybox", check=True)
        assert _copies(d) == {}  # they go with their image


def test_chowned_copies_per_auto_container(remap_user: str, tmp_path: Path) -> None:
    """Forced fallback (exec-opts) with ``--userns=auto``: every container
    gets copies for its own range, removed with it."""
    with running_daemon(tmp_path / "d", **{"userns-remap": "default",
                                           "default-userns-mode": "auto",
                                           "exec-opts": ["skiff.userns-storage=chown"]}) as d:
        d.skiff("image", "bootstrap", "busybox")
        a, b = _sleeper(d), _sleeper(d)
        keys = {f"{_uid_map(d, c)[1]}.{_uid_map(d, c)[1]}" for c in (a, b)}
        assert set(_copies(d)) == keys and len(keys) == 2
        res = d.docker("exec", a, "sh", "-c", "stat -c %u /bin/busybox; touch /x && echo ok",
                       check=True)
        assert _out(res).split() == ["0", "ok"]
        d.docker("rm", "-f", a, check=True)
        assert len(_copies(d)) == 1
        d.docker("rm", "-f", b, check=True)
        assert _copies(d) == {}


def test_sharing_a_namespace_shares_the_user_namespace(remapd: Daemon) -> None:
    """As dockerd: ``--network container:X`` and ``--pid container:X`` join X's
    user namespace too (those namespaces belong to it); an unremapped X
    cannot be shared by a remapped container (a clear error, nothing left)."""
    x = _sleeper(remapd)
    host = _sleeper(remapd, "--userns=host")
    try:
        x_user = os.readlink(f"/proc/{_pid(remapd, x)}/ns/user")
        for flag in (f"--network=container:{x}", f"--pid=container:{x}"):
            res = remapd.docker("run", "--rm", flag, "busybox", "readlink", "/proc/self/ns/user",
                                check=True)
            assert _out(res).strip() == x_user, flag
        res = remapd.docker("run", "--rm", f"--network=container:{host}", "busybox", "true")
        assert res.returncode != 0 and "without a user namespace" in _err(res), _err(res)
    finally:
        remapd.docker("rm", "-f", x, host)
