"""Docker's defaults, exactly, unless asked: capabilities, no_new_privs,
``--privileged``, and security options refused when skiff cannot honour them."""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.daemon import Daemon, running_daemon
from tests.security.conftest import unique, unremapped

ALL_CAPS = "000001ffffffffff"  # CAP_CHOWN .. CAP_CHECKPOINT_RESTORE (40)
DOCKER_DEFAULT = "00000000a80425fb"

SETUID_PROBE = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d %d\n", (int)getuid(), (int)geteuid()); return 0; }
"""


def _status(d: Daemon, *args: str) -> dict[str, str]:
    res = d.docker("run", "--rm", *args, "busybox", "cat", "/proc/self/status", check=True)
    return dict(line.split(":\t", 1) for line in res.stdout.decode().splitlines() if ":\t" in line)


def _host_bounding() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    raise AssertionError("no CapBnd")


def _host_last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def test_capabilities_default_drop_all_and_privileged(skiffd: Daemon) -> None:
    status = _status(skiffd)
    assert status["CapEff"] == status["CapBnd"] == DOCKER_DEFAULT
    assert status["NoNewPrivs"] == "0"
    dropped = _status(skiffd, "--cap-drop", "ALL")
    assert dropped["CapEff"] == dropped["CapBnd"] == dropped["CapPrm"] == "0000000000000000"
    added = _status(skiffd, "--cap-drop", "ALL", "--cap-add", "CAP_NET_ADMIN",
                    "--cap-add", "sys_time")
    assert int(added["CapEff"], 16) == (1 << 12) | (1 << 25)
    # every capability the host has (a restricted VM may lack some)
    everything = f"{(1 << (min(_host_last_cap(), 40) + 1)) - 1 & _host_bounding():016x}"
    privileged = _status(skiffd, *unremapped(skiffd), "--privileged")
    assert privileged["CapEff"] == privileged["CapBnd"] == everything
    assert privileged["Seccomp"] == "0"


@pytest.fixture(scope="module")
def setuid_image(skiffd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """busybox plus ``/usr/bin/whoami-suid``: a setuid-root program printing uid and euid."""
    work = tmp_path_factory.mktemp("suid")
    (work / "p.c").write_text(SETUID_PROBE)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(work / "p"), str(work / "p.c")],
                   check=True, capture_output=True)
    data = (work / "p").read_bytes()
    # hostile_image is function-scoped; this one is built once, by hand
    cid = skiffd.docker("create", "busybox", "true", check=True).stdout.decode().strip()
    try:
        exported = skiffd.docker("export", cid, check=True).stdout
    finally:
        skiffd.docker("rm", "-f", cid)
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(exported)) as src, \
            tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        info = tarfile.TarInfo("usr/bin/whoami-suid")
        info.size, info.mode, info.uid, info.gid = len(data), 0o4755, 0, 0
        dst.addfile(info, io.BytesIO(data))
    tag = unique("suid") + ":latest"
    skiffd.docker("import", "-", tag, input=out.getvalue(), check=True)
    yield tag
    skiffd.docker("rmi", "-f", tag)


def test_setuid_programs_work_unless_no_new_privileges(skiffd: Daemon,
                                                       setuid_image: str) -> None:
    """Docker does not set no_new_privs by default: su, sudo and ping rely on
    setuid.  ``--security-opt no-new-privileges`` turns it on."""
    res = skiffd.docker("run", "--rm", "-u", "nobody", setuid_image, "/usr/bin/whoami-suid",
                        check=True)
    assert res.stdout.decode().split() == ["65534", "0"]
    for opt in ("no-new-privileges", "no-new-privileges=true", "no-new-privileges:true"):
        res = skiffd.docker("run", "--rm", "-u", "nobody", "--security-opt", opt, setuid_image,
                            "/usr/bin/whoami-suid", check=True)
        assert res.stdout.decode().split() == ["65534", "65534"], opt


@pytest.mark.parametrize(("opt", "why"), [
    ("apparmor=unconfined", "does not load AppArmor"),
    ("apparmor=docker-default", "does not load AppArmor"),
    ("label=disable", "SELinux"),
    ("label:type:svirt_t", "SELinux"),
    ("garbage", "expected key=value"),
    ("bogus=1", "unknown option 'bogus'"),
    ("no-new-privileges=maybe", "takes true or false"),
    ("systempaths=confined", "the only value systempaths takes is unconfined"),
])
def test_unsupported_security_options_are_refused(skiffd: Daemon, opt: str, why: str) -> None:
    """A security option accepted and ignored would leave the operator
    believing a container is confined in a way it is not: 400 at create."""
    api = docker.APIClient(base_url=skiffd.host, version="1.41", timeout=60)
    try:
        before = api.containers(all=True)
        with pytest.raises(docker.errors.APIError) as caught:
            api.create_container("busybox", "true",
                                 host_config=api.create_host_config(security_opt=[opt]))
        assert caught.value.status_code == 400
        assert why in str(caught.value.explanation), caught.value.explanation
        assert api.containers(all=True) == before
    finally:
        api.close()


def test_daemon_no_new_privileges(tmp_path: Path) -> None:
    """daemon.json ``no-new-privileges`` makes it every container's default;
    ``docker info`` says so; a container may still ask for it off."""
    with running_daemon(tmp_path / "d", **{"no-new-privileges": True}) as d:
        d.skiff("image", "bootstrap", "busybox")
        info = d.docker("info", "--format", "{{json .SecurityOptions}}", check=True)
        assert "name=no-new-privileges" in info.stdout.decode()
        res = d.docker("run", "--rm", "busybox", "grep", "NoNewPrivs", "/proc/self/status",
                       check=True)
        assert res.stdout.decode().split() == ["NoNewPrivs:", "1"]
        res = d.docker("run", "--rm", "--security-opt", "no-new-privileges=false", "busybox",
                       "grep", "NoNewPrivs", "/proc/self/status", check=True)
        assert res.stdout.decode().split() == ["NoNewPrivs:", "0"]
