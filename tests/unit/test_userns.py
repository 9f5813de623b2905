"""userns-remap's configuration: subordinate ranges, their checks, the mappings,
and the ``--userns=auto`` allocation record.

The remap user is ``daemon`` (every Debian system has it); its ranges come
from /etc/subuid-like files of the test's own, so nothing of the host's
accounts is touched here (tests/security/test_userns.py runs the real
``default``).
"""

from __future__ import annotations

import json
import pwd
from pathlib import Path

import pytest

from skiff.core import idshift
from skiff.core.config import ConfigError, load
from skiff.core.containers.config import InvalidConfig
from skiff.core.containers.userns import RangeAllocator, validate
from skiff.core.userns import (
    CONTAINER_IDS,
    IdMap,
    RemapError,
    check_kernel,
    parse_subids,
    resolve,
)

USER = "daemon"


def remap(tmp_path: Path, uids: str, gids: str | None = None, spec: str = USER):  # type: ignore[no-untyped-def]
    (tmp_path / "subuid").write_text(uids)
    (tmp_path / "subgid").write_text(uids if gids is None else gids)
    return resolve(spec, create=False, subuid_file=str(tmp_path / "subuid"),
                   subgid_file=str(tmp_path / "subgid"))


def test_first_range_is_the_containers_ids(tmp_path: Path) -> None:
    r = remap(tmp_path, f"{USER}:100000:65536\n", f"{USER}:200000:65536\n")
    assert r.default == IdMap(((0, 100000, 65536),), ((0, 200000, 65536),))
    assert (r.default.root_uid, r.default.root_gid) == (100000, 200000)
    assert r.root_dir_name == "100000.200000"
    assert r.auto_blocks == ()
    assert (r.user, r.group) == (USER, "daemon")


def test_ranges_by_numeric_owner_and_in_pieces(tmp_path: Path) -> None:
    uid = pwd.getpwnam(USER).pw_uid
    text = f"# comment\n\n{uid}:300000:1000\n{USER}:400000:70000\n"
    r = remap(tmp_path, text)
    assert r.default.uids == ((0, 300000, 1000), (1000, 400000, 64536))
    assert r.default.host_uid(0) == 300000
    assert r.default.host_uid(1000) == 400000
    assert r.default.host_uid(65535) == 400000 + 64535
    with pytest.raises(ValueError):
        r.default.host_uid(65536)


def test_the_rest_is_cut_into_blocks_for_auto(tmp_path: Path) -> None:
    r = remap(tmp_path, f"{USER}:100000:{CONTAINER_IDS * 3 + 5}\n",
              f"{USER}:500000:{CONTAINER_IDS * 2}\n")
    assert r.auto_blocks == ((100000 + CONTAINER_IDS, 500000 + CONTAINER_IDS),)
    r = remap(tmp_path, f"{USER}:100000:{CONTAINER_IDS * 3}\n")
    assert [u for u, _ in r.auto_blocks] == [100000 + CONTAINER_IDS, 100000 + 2 * CONTAINER_IDS]


@pytest.mark.parametrize(("uids", "message"), [
    ("", "has no subordinate uid range in"),
    ("other:100000:65536\n", "has no subordinate uid range in"),
    (f"{USER}:100000:1000\n", "has only 1000 subordinate uids"),
    (f"{USER}:100000:65536\n{USER}:150000:65536\n", "overlap; make them disjoint"),
    (f"{USER}:100000:65536\nbob:150000:65536\n", "overlaps bob's 150000-215535"),
    (f"{USER}:0:65536\n", "includes host uid 0"),
    (f"{USER}:100000\n", "is not owner:start:count"),
    (f"{USER}:x:65536\n", "is not owner:start:count"),
])
def test_bad_ranges_are_named(tmp_path: Path, uids: str, message: str) -> None:
    """Item 5 of the issue: a remap user without subordinate ranges, overlapping
    ranges, ranges under 65536: refused, naming the file and the fix."""
    with pytest.raises(RemapError) as info:
        remap(tmp_path, uids, f"{USER}:100000:65536\n")
    assert message in str(info.value)
    assert "subuid" in str(info.value)


def test_bad_gid_ranges_name_subgid(tmp_path: Path) -> None:
    with pytest.raises(RemapError, match=r"subordinate gids in .*subgid"):
        remap(tmp_path, f"{USER}:100000:65536\n", f"{USER}:100000:10\n")


@pytest.mark.parametrize(("spec", "message"), [
    ("no-such-user-xyz", "has no entry in /etc/passwd"),
    ("4000000000", "uid 4000000000 has no entry in /etc/passwd"),
    (f"{USER}:no-such-group-xyz", "group no-such-group-xyz has no entry in /etc/group"),
    ("root", "root cannot be remapped onto itself"),
    ("0:0", "root cannot be remapped onto itself"),
    ("a:b:c", "invalid value"),
])
def test_bad_users_are_named(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(RemapError, match=message):
        remap(tmp_path, f"{USER}:100000:65536\n", spec=spec)


def test_user_group_and_numeric_forms(tmp_path: Path) -> None:
    r = remap(tmp_path, f"{USER}:100000:65536\n", spec=f"{USER}:root")
    assert (r.user, r.group) == (USER, "root")
    uid = pwd.getpwnam(USER).pw_uid
    r = remap(tmp_path, f"{USER}:100000:65536\n", spec=f"{uid}:0")
    assert (r.user, r.group) == (USER, "root")


def test_kernel_without_user_namespaces(tmp_path: Path) -> None:
    off = tmp_path / "max_user_namespaces"
    off.write_text("0\n")
    with pytest.raises(RemapError, match=r"user\.max_user_namespaces"):
        check_kernel(str(off))
    off.write_text("15000\n")
    check_kernel(str(off))


def test_parse_subids_skips_comments() -> None:
    assert parse_subids("#x\n a:1:2 \n\n", "f") == [("a", 1, 2)]


def test_daemon_json_values(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    for value in ("default", "someone", "someone:grp", "1000", "1000:1000"):
        path.write_text(json.dumps({"userns-remap": value}))
        assert load(["--config-file", str(path)])[0]["userns-remap"] == value
    for bad, message in (({"userns-remap": "a:"}, "invalid value for 'userns-remap'"),
                         ({"default-userns-mode": "host"}, "use 'private' or 'auto'"),
                         ({"default-userns-mode": "auto"}, "'userns-remap' is not set")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load(["--config-file", str(path)])


# -- the container's mode ----------------------------------------------------------


def test_modes_and_dockers_rules(tmp_path: Path) -> None:
    r = remap(tmp_path, f"{USER}:100000:65536\n")
    validate({"UsernsMode": "host", "Privileged": True, "NetworkMode": "host"}, r, "")
    for hc, message in (({"Privileged": True}, "privileged mode is incompatible"),
                        ({"NetworkMode": "host"}, "host's network namespace"),
                        ({"PidMode": "host"}, "host PID namespace"),
                        ({"UsernsMode": "auto", "Privileged": True}, "privileged mode"),
                        ({"UsernsMode": "bogus"}, "invalid USER mode")):
        with pytest.raises(InvalidConfig, match=message):
            validate(hc, r, "")
    with pytest.raises(InvalidConfig, match="needs user-namespace remapping"):
        validate({"UsernsMode": "auto"}, None, "")
    validate({"Privileged": True}, None, "")  # no remapping: Docker's usual rules


# -- --userns=auto ----------------------------------------------------------------------


def _blocks(n: int) -> list[tuple[int, int]]:
    return [(1_000_000 + i * CONTAINER_IDS, 9_000_000 + i * CONTAINER_IDS) for i in range(n)]


def test_allocation_lowest_free_and_reused(tmp_path: Path) -> None:
    alloc = RangeAllocator(str(tmp_path), _blocks(3))
    a, b = alloc.allocate("a"), alloc.allocate("b")
    assert (a.root_uid, a.root_gid) == _blocks(3)[0]
    assert (b.root_uid, b.root_gid) == _blocks(3)[1]
    assert alloc.allocate("a") == a  # idempotent
    alloc.release("a")
    assert alloc.allocate("c") == a
    alloc.allocate("d")
    with pytest.raises(InvalidConfig, match="no free --userns=auto range"):
        alloc.allocate("e")


def test_allocation_survives_a_restart(tmp_path: Path) -> None:
    """Recorded on disk before it is returned: a new allocator (a restarted
    daemon) never hands out a block in use."""
    first = RangeAllocator(str(tmp_path), _blocks(4))
    taken = {first.allocate(c).root_uid for c in ("a", "b", "c")}
    first.release("b")
    again = RangeAllocator(str(tmp_path), _blocks(4))
    assert set(again.taken()) == {"a", "c"}
    new = again.allocate("d").root_uid
    assert new not in {first.taken()["a"][0], first.taken()["c"][0]}
    assert new in taken  # b's block, free again
    assert again.keep_only(["a", "d"]) == ["c"]
    assert set(RangeAllocator(str(tmp_path), _blocks(4)).taken()) == {"a", "d"}


def test_allocation_respects_blocks_recorded_under_other_ranges(tmp_path: Path) -> None:
    """If /etc/subuid changed since, a block overlapping a recorded one is not free."""
    RangeAllocator(str(tmp_path), [(1_000_000, 5_000_000)]).allocate("old")
    shifted = [(1_000_000 + 100, 6_000_000), (2_000_000, 7_000_000)]
    assert RangeAllocator(str(tmp_path), shifted).allocate("new").root_uid == 2_000_000


def test_a_damaged_record_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "userns-auto.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="unreadable"):
        RangeAllocator(str(tmp_path), _blocks(1))


# -- owners in tars ---------------------------------------------------------------------


def test_tar_owners_shift_both_ways() -> None:
    import io
    import tarfile

    idmap = IdMap(((0, 100000, 65536),), ((0, 200000, 65536),))
    src = io.BytesIO()
    with tarfile.open(fileobj=src, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, uid in (("root", 0), ("user", 1000), ("far", 70000)):
            info = tarfile.TarInfo(name)
            info.uid = info.gid = uid
            info.size = 3
            info.pax_headers = {"SCHILY.xattr.user.k": "v"}
            tar.addfile(info, io.BytesIO(b"abc"))
    src.seek(0)
    shifted = io.BytesIO()
    idshift.rewrite_owners(src, shifted, *idshift.to_host(idmap))
    shifted.seek(0)
    with tarfile.open(fileobj=shifted) as tar:
        seen = [(m.name, m.uid, m.gid, m.pax_headers.get("SCHILY.xattr.user.k"),
                 tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    assert seen == [("root", 100000, 200000, "v", b"abc"),
                    ("user", 101000, 201000, "v", b"abc"),
                    ("far", 165534, 265534, "v", b"abc")]  # unmapped: nobody's
    shifted.seek(0)
    back = io.BytesIO()
    idshift.rewrite_owners(shifted, back, *idshift.to_container(idmap))
    back.seek(0)
    with tarfile.open(fileobj=back) as tar:
        assert [(m.uid, m.gid) for m in tar] == [(0, 0), (1000, 1000), (65534, 65534)]
