"""Volumes and mounts through the stock docker CLI against a real skiffd.

Named volumes (create/ls/inspect/rm/prune, labels, filters, in use refused),
``-v name:/data`` outliving its container, anonymous volumes from an image's
VOLUME and ``rm -v``, copy-up of the image's content (and ``nocopy``), bind
mounts (read-only, created on demand for ``-v``, refused for ``--mount``,
propagation), tmpfs mounts, ``--read-only`` with a writable volume,
``--volumes-from``, volume events, and the symlink attacks on mount
destinations.  Every test runs once per storage driver (``skiffd`` fixture).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def out(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode()


def err(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stderr.decode()


def volume_inspect(d: Daemon, name: str) -> dict:
    return json.loads(out(d.docker("volume", "inspect", name, check=True)))[0]


def volume_names(d: Daemon, *args: str) -> set[str]:
    return set(out(d.docker("volume", "ls", "-q", *args, check=True)).split())


@pytest.fixture
def image_with_volume(skiffd: Daemon) -> Iterator[str]:
    """An image whose VOLUME /data holds a file and a directory with owners and modes."""
    name = uniq("seed")
    ref = uniq("withvol") + ":1"
    skiffd.docker(
        "run", "--name", name, "busybox", "sh", "-c",
        "mkdir -p /data/sub && echo seeded > /data/seed && chown 1234:5678 /data/seed "
        "&& chmod 640 /data/seed && chmod 750 /data && chown 42:43 /data && "
        "ln -s /etc/passwd /data/link && echo deep > /data/sub/deep", check=True)
    skiffd.docker("commit", "--change", "VOLUME /data", name, ref, check=True)
    skiffd.docker("rm", name, check=True)
    yield ref
    skiffd.docker("rmi", "-f", ref)


# -- the volume API --------------------------------------------------------------


def test_volume_create_ls_inspect_rm_with_labels_and_filters(skiffd: Daemon) -> None:
    a, b = uniq("vola"), uniq("volb")
    skiffd.docker("volume", "create", "--label", "tier=db", "--label", "flag", a, check=True)
    skiffd.docker("volume", "create", b, check=True)
    info = volume_inspect(skiffd, a)
    assert info["Name"] == a and info["Driver"] == "local" and info["Scope"] == "local"
    assert info["Labels"] == {"tier": "db", "flag": ""}
    assert info["Mountpoint"] == str(skiffd.data_root / "volumes" / a / "_data")
    assert os.path.isdir(info["Mountpoint"])
    assert info["CreatedAt"].endswith("Z")
    assert {a, b} <= volume_names(skiffd)
    assert volume_names(skiffd, "--filter", "label=tier=db") == {a}
    assert volume_names(skiffd, "--filter", "label=flag") == {a}
    assert volume_names(skiffd, "--filter", f"name={b}") == {b}
    assert {a, b} <= volume_names(skiffd, "--filter", "dangling=true")
    assert {a, b} <= volume_names(skiffd, "--filter", "driver=local")
    # creating an existing volume again is not an error (Docker returns it)
    skiffd.docker("volume", "create", a, check=True)
    skiffd.docker("volume", "rm", a, b, check=True)
    assert not ({a, b} & volume_names(skiffd))
    assert not (skiffd.data_root / "volumes" / a).exists()
    res = skiffd.docker("volume", "inspect", a)
    assert res.returncode != 0 and "no such volume" in err(res).lower()
    res = skiffd.docker("volume", "rm", a)
    assert res.returncode != 0 and "no such volume" in err(res).lower()
    skiffd.docker("volume", "rm", "-f", a, check=True)  # force: a missing volume is fine
    res = skiffd.docker("volume", "create", "bad/name")
    assert res.returncode != 0 and "invalid characters" in err(res)
    res = skiffd.docker("volume", "create", "--opt", "colour=blue", uniq("volopt"))
    assert res.returncode != 0 and "invalid option key" in err(res)


def test_named_volume_outlives_its_container_and_in_use_is_refused(skiffd: Daemon) -> None:
    vol, c = uniq("keep"), uniq("writer")
    skiffd.docker("run", "--name", c, "-v", f"{vol}:/data", "busybox", "sh", "-c",
                  "echo kept > /data/f", check=True)
    assert vol in volume_names(skiffd)  # created on demand
    assert vol in volume_names(skiffd, "--filter", "dangling=false")
    cid = out(skiffd.docker("inspect", "-f", "{{.Id}}", c, check=True)).strip()
    res = skiffd.docker("volume", "rm", vol)
    assert res.returncode != 0
    assert f"remove {vol}: volume is in use - [{cid}]" in err(res)
    res = skiffd.docker("volume", "rm", "-f", vol)
    assert res.returncode != 0 and "in use" in err(res)
    mounts = json.loads(out(skiffd.docker("inspect", "-f", "{{json .Mounts}}", c, check=True)))
    assert mounts == [{
        "Type": "volume", "Name": vol, "Source": volume_inspect(skiffd, vol)["Mountpoint"],
        "Destination": "/data", "Driver": "local", "Mode": "z", "RW": True, "Propagation": "",
    }]
    skiffd.docker("rm", "-v", c, check=True)  # -v leaves named volumes alone
    res = skiffd.docker("run", "--rm", "-v", f"{vol}:/data", "busybox", "cat", "/data/f",
                        check=True)
    assert out(res) == "kept\n"
    skiffd.docker("volume", "rm", vol, check=True)


def test_volume_prune_removes_unused_volumes_only(skiffd: Daemon) -> None:
    used, unused, labelled, c = uniq("used"), uniq("unused"), uniq("lab"), uniq("holder")
    skiffd.docker("volume", "create", unused, check=True)
    skiffd.docker("volume", "create", "--label", "keep=yes", labelled, check=True)
    skiffd.docker("create", "--name", c, "-v", f"{used}:/data", "busybox", "true", check=True)
    res = skiffd.docker("volume", "prune", "-f", "--filter", "label!=keep", check=True)
    assert unused in out(res) and labelled not in out(res)
    names = volume_names(skiffd)
    assert used in names and labelled in names and unused not in names
    skiffd.docker("volume", "prune", "-f", check=True)  # API 1.41: named ones too
    names = volume_names(skiffd)
    assert used in names and labelled not in names
    skiffd.docker("rm", c, check=True)
    skiffd.docker("volume", "rm", used, check=True)


def test_volume_events(skiffd: Daemon) -> None:
    vol = uniq("evt")
    since = str(time.time() - 1)
    skiffd.docker("run", "--rm", "-v", f"{vol}:/data", "busybox", "true", check=True)
    skiffd.docker("volume", "rm", vol, check=True)
    until = str(time.time() + 1)
    res = skiffd.docker("events", "--since", since, "--until", until, "--filter",
                        "type=volume", "--filter", f"volume={vol}",
                        "--format", "{{.Action}}", check=True)
    assert out(res).split() == ["create", "mount", "unmount", "destroy"]


# -- anonymous volumes, copy-up ----------------------------------------------------


def test_image_volume_is_anonymous_copied_up_and_removed_by_rm_v(
        skiffd: Daemon, image_with_volume: str) -> None:
    c = uniq("anon")
    skiffd.docker("create", "--name", c, image_with_volume, "sh", "-c",
                  "cat /data/seed /data/sub/deep; readlink /data/link", check=True)
    mounts = json.loads(out(skiffd.docker("inspect", "-f", "{{json .Mounts}}", c, check=True)))
    assert len(mounts) == 1
    m = mounts[0]
    assert m["Type"] == "volume" and m["Destination"] == "/data" and m["RW"] is True
    assert len(m["Name"]) == 64 and m["Driver"] == "local"
    # copy-up happened at create: the host side already has the image's content
    src = Path(m["Source"])
    assert (src / "seed").read_text() == "seeded\n"
    st = os.lstat(src / "seed")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o640)
    st = os.lstat(src)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (42, 43, 0o750)
    assert os.readlink(src / "link") == "/etc/passwd"  # a link, copied as a link
    res = skiffd.docker("start", "-a", c, check=True)
    assert out(res) == "seeded\ndeep\n/etc/passwd\n"
    skiffd.docker("rm", "-v", c, check=True)
    assert m["Name"] not in volume_names(skiffd)
    assert not src.exists()


def test_copy_up_fills_only_a_new_empty_volume_and_nocopy_skips_it(
        skiffd: Daemon, image_with_volume: str) -> None:
    fresh, nocopy, nocopy2, full = uniq("fresh"), uniq("nocp"), uniq("nocp2"), uniq("full")
    res = skiffd.docker("run", "--rm", "-v", f"{fresh}:/data", image_with_volume,
                        "cat", "/data/seed", check=True)
    assert out(res) == "seeded\n"
    res = skiffd.docker("run", "--rm", "-v", f"{nocopy}:/data:nocopy", image_with_volume,
                        "ls", "-A", "/data", check=True)
    assert out(res) == ""
    res = skiffd.docker("run", "--rm", "--mount",
                        f"type=volume,source={nocopy2},target=/data,volume-nocopy",
                        image_with_volume, "ls", "-A", "/data", check=True)
    assert out(res) == ""
    # a volume that already has content keeps it
    skiffd.docker("run", "--rm", "-v", f"{full}:/data", "busybox", "sh", "-c",
                  "echo mine > /data/own", check=True)
    res = skiffd.docker("run", "--rm", "-v", f"{full}:/data", image_with_volume,
                        "ls", "-A", "/data", check=True)
    assert out(res).split() == ["own"]
    skiffd.docker("volume", "rm", fresh, nocopy, nocopy2, full, check=True)


def test_run_rm_removes_anonymous_volumes(skiffd: Daemon) -> None:
    before = volume_names(skiffd)
    skiffd.docker("run", "--rm", "-v", "/scratch", "busybox", "touch", "/scratch/x",
                  check=True)
    assert volume_names(skiffd) == before


# -- binds, tmpfs, read-only -------------------------------------------------------


def test_bind_mounts_read_only_read_write_and_missing_sources(
        skiffd: Daemon, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "hello").write_text("from the host\n")
    res = skiffd.docker("run", "--rm", "-v", f"{host}:/mnt:ro", "busybox", "sh", "-c",
                        "cat /mnt/hello; touch /mnt/new")
    assert res.returncode == 1
    assert out(res) == "from the host\n" and "Read-only file system" in err(res)
    assert not (host / "new").exists()
    skiffd.docker("run", "--rm", "-v", f"{host}:/mnt", "busybox", "sh", "-c",
                  "echo back > /mnt/written", check=True)
    assert (host / "written").read_text() == "back\n"
    # -v creates a missing host directory; --mount type=bind refuses it
    missing = tmp_path / "made" / "by" / "v"
    skiffd.docker("run", "--rm", "-v", f"{missing}:/mnt", "busybox", "true", check=True)
    assert missing.is_dir()
    res = skiffd.docker("run", "--rm", "--mount",
                        f"type=bind,source={tmp_path / 'absent'},target=/mnt", "busybox", "true")
    assert res.returncode == 125 and "bind source path does not exist" in err(res)
    assert not (tmp_path / "absent").exists()
    c = uniq("bindro")
    skiffd.docker("create", "--name", c, "--mount",
                  f"type=bind,source={host},target=/mnt,readonly", "busybox", "true", check=True)
    mounts = json.loads(out(skiffd.docker("inspect", "-f", "{{json .Mounts}}", c, check=True)))
    assert mounts == [{"Type": "bind", "Source": str(host), "Destination": "/mnt", "Mode": "",
                       "RW": False, "Propagation": "rprivate"}]
    skiffd.docker("rm", c, check=True)


@pytest.mark.parametrize("spec, message", [
    ("-v=relative:dest", "mount path must be absolute"),
    ("-v=/tmp:/mnt:bogus", "invalid mode: bogus"),
    ("-v=/tmp:/mnt:ro,rw", "invalid mode"),
    ("-v=/tmp:/mnt:nocopy", "invalid mode"),
    ("-v=/tmp:/", "destination can't be '/'"),
    ("-v=bad*name:/mnt", "invalid characters"),
    ("--tmpfs=/run:colour=red", "invalid tmpfs option"),
    ("--volumes-from=no-such-container-zz", "No such container"),
    ("--mount=type=volume,target=/m,volume-driver=nosuch", "volume driver 'nosuch' is not"),
])
def test_bad_mount_specs_are_refused_clearly(skiffd: Daemon, spec: str, message: str) -> None:
    before = volume_names(skiffd)
    res = skiffd.docker("run", "--rm", spec, "busybox", "true")
    assert res.returncode == 125 and message in err(res), err(res)
    assert volume_names(skiffd) == before


def test_tmpfs_mounts_with_size_and_mode(skiffd: Daemon) -> None:
    res = skiffd.docker(
        "run", "--rm", "--tmpfs", "/run:size=64m,mode=1770", "--mount",
        "type=tmpfs,target=/scratch,tmpfs-size=1048576,tmpfs-mode=0700", "busybox", "sh", "-c",
        "grep -E ' /(run|scratch) ' /proc/mounts; stat -c '%a' /run /scratch", check=True)
    lines = out(res).splitlines()
    run = next(line for line in lines if " /run " in line).split()
    scratch = next(line for line in lines if " /scratch " in line).split()
    assert run[2] == "tmpfs" and scratch[2] == "tmpfs"
    assert {"size=65536k", "mode=1770", "nosuid", "nodev", "noexec"} <= set(run[3].split(","))
    assert {"size=1024k", "mode=700"} <= set(scratch[3].split(","))
    assert lines[-2:] == ["1770", "700"]


def test_read_only_root_with_writable_volume_and_tmpfs(skiffd: Daemon) -> None:
    vol = uniq("rw")
    res = skiffd.docker("run", "--rm", "--read-only", "-v", f"{vol}:/data", "--tmpfs", "/tmp",
                        "busybox", "sh", "-c",
                        "touch /rootfile 2>&1; touch /data/ok /tmp/ok && echo writable")
    assert "Read-only file system" in out(res) and out(res).endswith("writable\n")
    skiffd.docker("volume", "rm", vol, check=True)


def test_volumes_from_shares_mounts_with_mode(skiffd: Daemon, tmp_path: Path) -> None:
    src, vol = uniq("source"), uniq("shared")
    host = tmp_path / "bind"
    host.mkdir()
    skiffd.docker("run", "--name", src, "-v", f"{vol}:/data", "-v", "/anon",
                  "-v", f"{host}:/bind", "busybox", "sh", "-c",
                  "echo one > /data/f; echo two > /anon/g", check=True)
    res = skiffd.docker("run", "--rm", "--volumes-from", src, "busybox", "sh", "-c",
                        "cat /data/f /anon/g; ls -d /bind; echo more >> /data/f", check=True)
    assert out(res) == "one\ntwo\n/bind\n"
    res = skiffd.docker("run", "--rm", "--volumes-from", f"{src}:ro", "busybox", "sh", "-c",
                        "cat /data/f; touch /data/x")
    assert out(res) == "one\nmore\n" and "Read-only file system" in err(res)
    anon = next(m["Name"] for m in json.loads(out(skiffd.docker(
        "inspect", "-f", "{{json .Mounts}}", src, check=True))) if m["Destination"] == "/anon")
    skiffd.docker("rm", "-v", src, check=True)
    names = volume_names(skiffd)
    assert vol in names and anon not in names
    skiffd.docker("volume", "rm", vol, check=True)


def test_bind_propagation_rslave_sees_later_host_mounts(
        skiffd: Daemon, tmp_path: Path) -> None:
    src = tmp_path / "prop"
    (src / "sub").mkdir(parents=True)
    # the source must be a shared mount for its events to reach a slave copy
    subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(src)], check=True)
        names = {}
        for mode in ("rslave", "rprivate"):
            names[mode] = uniq(mode)
            skiffd.docker(
                "run", "-d", "--name", names[mode], "--mount",
                f"type=bind,source={src},target=/mnt,bind-propagation={mode}", "busybox", "sh",
                "-c", "for i in $(seq 100); do [ -f /mnt/sub/marker ] && exit 0; sleep 0.1; "
                "done; exit 3", check=True)
        prop = out(skiffd.docker("inspect", "-f", "{{(index .Mounts 0).Propagation}}",
                                 names["rslave"], check=True)).strip()
        assert prop == "rslave"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "sub")],
                       check=True)
        try:
            (src / "sub" / "marker").write_text("x")
            codes = {mode: out(skiffd.docker("wait", name, check=True)).strip()
                     for mode, name in names.items()}
        finally:
            subprocess.run(["umount", str(src / "sub")], check=True)
        assert codes == {"rslave": "0", "rprivate": "3"}
        for name in names.values():
            skiffd.docker("rm", name, check=True)
    finally:
        subprocess.run(["umount", "-l", str(src)], check=True)


# -- safety: symlinks planted in the container ---------------------------------------


def test_bind_mount_cannot_reach_outside_through_a_planted_symlink(
        skiffd: Daemon, tmp_path: Path) -> None:
    """A bind mount cannot be used to reach outside its source through a symlink
    planted in the container (issue 5): the destination resolves inside the rootfs."""
    target = tmp_path / "host-target"  # what the planted links point at, on the host
    target.mkdir()
    source = tmp_path / "source"
    source.mkdir()
    (source / "marker").write_text("source content\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "marker").write_text("other content\n")
    planter, image = uniq("planter"), uniq("planted") + ":1"
    # 1. links planted in the image: one absolute, one climbing with ..
    skiffd.docker("run", "--name", planter, "busybox", "sh", "-c",
                  f"ln -s {target} /abs && ln -s ../../../../../../../..{target} /rel",
                  check=True)
    skiffd.docker("commit", planter, image, check=True)
    skiffd.docker("rm", planter, check=True)
    for link in ("abs", "rel"):
        res = skiffd.docker("run", "--rm", "-v", f"{source}:/{link}/sub", image,
                            "cat", f"/{link}/sub/marker", check=True)
        assert out(res) == "source content\n"
    # 2. a link planted by one container inside a bind-mounted source, used by the
    # destination of a nested mount of the next container
    skiffd.docker("run", "--rm", "-v", f"{source}:/data", "busybox",
                  "ln", "-s", str(target), "/data/link", check=True)
    assert os.readlink(source / "link") == str(target)
    res = skiffd.docker("run", "--rm", "-v", f"{source}:/data", "-v", f"{other}:/data/link/x",
                        "busybox", "cat", "/data/link/x/marker", check=True)
    assert out(res) == "other content\n"
    # nothing was created or mounted outside the container: not at the links'
    # host targets, not in the sources
    assert os.listdir(target) == []
    assert sorted(os.listdir(source)) == ["link", "marker"]
    with open("/proc/self/mountinfo") as f:
        assert str(target) not in f.read()
    skiffd.docker("rmi", image, check=True)


# -- the local driver's options, and a daemon restart ----------------------------------


def test_local_tmpfs_volume_is_shared_then_unmounted(skiffd: Daemon) -> None:
    vol, holder = uniq("mem"), uniq("memholder")
    skiffd.docker("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
                  "--opt", "o=size=1m,mode=0770", vol, check=True)
    info = volume_inspect(skiffd, vol)
    assert info["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=1m,mode=0770"}
    data = info["Mountpoint"]
    skiffd.docker("run", "-d", "--name", holder, "-v", f"{vol}:/data", "busybox", "sh", "-c",
                  "echo shared > /data/f; exec sleep 60", check=True)
    try:
        assert os.path.ismount(data)  # mounted on the host while a container uses it
        res = skiffd.docker("run", "--rm", "-v", f"{vol}:/data", "busybox", "sh", "-c",
                            "for i in $(seq 50); do [ -s /data/f ] && break; sleep 0.1; done; "
                            "cat /data/f; grep ' /data ' /proc/mounts", check=True)
        assert out(res).startswith("shared\ntmpfs /data tmpfs ")
        assert os.path.ismount(data)  # the first container still holds it
    finally:
        skiffd.docker("rm", "-f", holder, check=True)
    assert not os.path.ismount(data)
    assert os.listdir(data) == []  # a tmpfs: its content went with the mount
    skiffd.docker("volume", "rm", vol, check=True)


def test_volumes_and_their_users_survive_a_daemon_restart(tmp_path: Path) -> None:
    from tests.daemon import running_daemon

    with running_daemon(tmp_path / "d", **{"storage-driver": "vfs"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        vol, c = uniq("durable"), uniq("user")
        d.docker("volume", "create", "--label", "k=v", vol, check=True)
        d.docker("run", "--name", c, "-v", f"{vol}:/data", "-v", "/anon", "busybox", "sh",
                 "-c", "echo persisted > /data/f", check=True)
        mounts = d.docker("inspect", "-f", "{{json .Mounts}}", c, check=True).stdout
        d.stop()
        d.start()
        assert d.docker("inspect", "-f", "{{json .Mounts}}", c, check=True).stdout == mounts
        assert volume_inspect(d, vol)["Labels"] == {"k": "v"}
        res = d.docker("volume", "rm", vol)
        assert res.returncode != 0 and "volume is in use" in err(res)
        res = d.docker("start", "-a", c, check=True)
        res = d.docker("run", "--rm", "-v", f"{vol}:/data", "busybox", "cat", "/data/f",
                       check=True)
        assert out(res) == "persisted\n"
        anon = next(m["Name"] for m in json.loads(mounts) if m["Destination"] == "/anon")
        d.docker("rm", "-v", c, check=True)
        assert volume_names(d) == {vol}
        assert anon not in volume_names(d)
        d.docker("volume", "rm", vol, check=True)
