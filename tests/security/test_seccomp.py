"""Seccomp: the syscalls a container needs, and not the ones an escape needs.

Every default container runs under skiff's built-in filter (Docker 20.10's
default profile, plus io_uring refused).  Each breakout test runs one attack
that goes through a syscall the filter refuses, shows it failing in a
default container, and shows the same attack succeeding once the filter is
off (``--security-opt seccomp=unconfined``) and the container has the
capability the attack needs: the test proves the filter, not a broken
environment.  Where the kernel would refuse the call by itself (a missing
capability), ``sysprobe reach`` shows that under the filter the kernel never
sees it.

The syscalls busybox cannot make come from small static C probes
(tests/security/probes/), compiled here with ``gcc -static``.

The differential test against dockerd 20.10.24 is in
test_seccomp_differential.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.daemon import Daemon, running_daemon
from tests.security.conftest import unique, unremapped

PROBES = Path(__file__).parent / "probes"
UNCONFINED = ("--security-opt", "seccomp=unconfined")

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None,
                                reason="gcc (and libc6-dev) build the probes")


def build_probe(name: str, out_dir: Path) -> Path:
    out = out_dir / name
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(PROBES / f"{name}.c")],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def probe_image(skiffd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """busybox with ``/bin/sysprobe``."""
    out_dir = tmp_path_factory.mktemp("probes")
    sysprobe = build_probe("sysprobe", out_dir)
    tag = unique("seccomp-probes") + ":latest"
    cid = skiffd.docker("create", "busybox", "true", check=True).stdout.decode().strip()
    try:
        skiffd.docker("cp", str(sysprobe), f"{cid}:/bin/sysprobe", check=True)
        skiffd.docker("commit", cid, tag, check=True)
    finally:
        skiffd.docker("rm", "-f", cid)
    yield tag
    skiffd.docker("rmi", "-f", tag)


def run(skiffd: Daemon, image: str, *args: str, opts: tuple[str, ...] = ()
        ) -> tuple[int, str]:
    """``docker run --rm [opts] image args``: exit code and stdout+stderr."""
    res = skiffd.docker("run", "--rm", "--network", "none", *opts, image, *args, timeout=60)
    return res.returncode, (res.stdout + res.stderr).decode(errors="replace")


def refused(out: str) -> bool:
    return "Operation not permitted" in out or out.startswith("err 1 ")


# ---------------------------------------------------------------------------
# The filter is on, and can be replaced
# ---------------------------------------------------------------------------


def status(out: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_default_container_runs_under_a_filter(skiffd: Daemon) -> None:
    """Seccomp mode 2 without no_new_privs, as under dockerd; none when unconfined
    or privileged (the class: a container without a filter reaches every
    syscall of the host kernel)."""
    grep = ("grep", "-E", "Seccomp|NoNewPrivs", "/proc/self/status")
    code, out = run(skiffd, "busybox", *grep)
    assert code == 0, out
    assert status(out)["Seccomp"] == "2" and status(out)["NoNewPrivs"] == "0", out
    code, out = run(skiffd, "busybox", *grep, opts=("--security-opt", "no-new-privileges"))
    assert status(out)["Seccomp"] == "2" and status(out)["NoNewPrivs"] == "1", out
    code, out = run(skiffd, "busybox", *grep, opts=UNCONFINED)
    assert status(out)["Seccomp"] == "0", out
    code, out = run(skiffd, "busybox", *grep, opts=(*unremapped(skiffd), "--privileged"))
    assert status(out)["Seccomp"] == "0", out
    code, out = run(skiffd, "busybox", *grep, opts=("--security-opt", "seccomp=builtin"))
    assert status(out)["Seccomp"] == "2", out


def test_docker_info_lists_the_default_profile(skiffd: Daemon) -> None:
    info = json.loads(skiffd.docker("info", "--format", "{{json .SecurityOptions}}",
                                    check=True).stdout)
    assert "name=seccomp,profile=default" in info


def write_profile(path: Path, denied: list[str], errno_ret: int | None = None) -> Path:
    rule: dict[str, object] = {"names": denied, "action": "SCMP_ACT_ERRNO"}
    if errno_ret is not None:
        rule["errnoRet"] = errno_ret
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
    return path


def test_custom_profile_denies_mkdir(skiffd: Daemon, tmp_path: Path) -> None:
    """``--security-opt seccomp=<file>``: the CLI sends the file's content."""
    profile = write_profile(tmp_path / "no-mkdir.json", ["mkdir", "mkdirat"])
    code, out = run(skiffd, "busybox", "mkdir", "/tmp/x",
                    opts=("--security-opt", f"seccomp={profile}"))
    assert code != 0 and "Operation not permitted" in out, out
    code, out = run(skiffd, "busybox", "mkdir", "/tmp/x")
    assert code == 0, out
    # errnoRet: the errno of the profile's choosing
    profile = write_profile(tmp_path / "eacces.json", ["mkdir", "mkdirat"], errno_ret=13)
    code, out = run(skiffd, "busybox", "mkdir", "/tmp/x",
                    opts=("--security-opt", f"seccomp={profile}"))
    assert code != 0 and "Permission denied" in out, out


def test_exec_runs_under_the_container_filter(skiffd: Daemon, tmp_path: Path) -> None:
    """``docker exec`` gets the container's filter, even ``--privileged``
    (as with runc): an exec is no way around it."""
    profile = write_profile(tmp_path / "no-mkdir.json", ["mkdir", "mkdirat"])
    name = unique("seccomp-exec")
    skiffd.docker("run", "-d", "--name", name, "--security-opt", f"seccomp={profile}",
                  "busybox", "sleep", "300", check=True)
    try:
        for extra in ((), ("--privileged",)):
            res = skiffd.docker("exec", *extra, name, "mkdir", "/tmp/x")
            assert res.returncode != 0 and b"Operation not permitted" in res.stderr, res
            res = skiffd.docker("exec", *extra, name, "grep", "Seccomp:", "/proc/self/status")
            assert res.stdout.split() == [b"Seccomp:", b"2"], res
    finally:
        skiffd.docker("rm", "-f", name)


def test_broken_profile_is_a_400_at_create(skiffd: Daemon) -> None:
    before = skiffd.docker("ps", "-aq", check=True).stdout
    api = docker.APIClient(base_url=skiffd.host)
    try:
        for profile, why in (
            ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_DENY"}]},
             "syscalls[0].action: 'SCMP_ACT_DENY' is not a seccomp action"),
            ({"defaultAction": "SCMP_ACT_ALLOW", "syscall": []}, "unknown key 'syscall'"),
            ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["read"], "action": "SCMP_ACT_KILL",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
             "adding the SCMP_ACT_KILL rule for read: File exists"),
        ):
            host_config = api.create_host_config(
                security_opt=[f"seccomp={json.dumps(profile)}"])
            with pytest.raises(docker.errors.APIError) as info:
                api.create_container("busybox", "true", host_config=host_config)
            assert info.value.status_code == 400
            assert why in str(info.value.explanation), info.value.explanation
    finally:
        api.close()
    assert skiffd.docker("ps", "-aq", check=True).stdout == before


# ---------------------------------------------------------------------------
# Breakouts
# ---------------------------------------------------------------------------


def test_user_namespace_unshare(skiffd: Daemon) -> None:
    """``unshare -Ur``: a user namespace gives an unprivileged process every
    capability over namespaces it then creates, and with them the kernel's
    namespaced-root attack surface (CVE-2022-0185 fsconfig overflow,
    CVE-2023-0386 overlayfs, CVE-2021-22555 netfilter)."""
    code, out = run(skiffd, "busybox", "unshare", "-Ur", "id", "-u")
    assert code != 0 and "Operation not permitted" in out, out
    code, out = run(skiffd, "busybox", "unshare", "-Ur", "id", "-u", opts=UNCONFINED)
    assert code == 0 and out.strip() == "0", out


def test_user_namespace_through_the_32_bit_entry(skiffd: Daemon, probe_image: str) -> None:
    """unshare(CLONE_NEWUSER) through int 0x80 (i386 numbering, 310): a filter
    that only knew x86_64's numbers would let a 64-bit process walk around
    it (the class of CVE-2009-0835, seccomp bypass by syscall ABI)."""
    code, out = run(skiffd, probe_image, "sysprobe", "unshare32")
    assert code != 0 and refused(out), out
    code, out = run(skiffd, probe_image, "sysprobe", "unshare32", opts=UNCONFINED)
    assert code == 0 and out.startswith("ok "), out


def test_mount_tmpfs(skiffd: Daemon, probe_image: str) -> None:
    """``mount -t tmpfs``: mount is where filesystem-parser bugs are reached
    (CVE-2022-0185); with CAP_SYS_ADMIN only, as dockerd gives it."""
    code, out = run(skiffd, "busybox", "mount", "-t", "tmpfs", "none", "/tmp")
    # busybox says "permission denied (are you root?)" for EPERM
    assert code != 0 and "permission denied" in out, out
    # without the capability the kernel refuses too; the filter refuses first
    code, out = run(skiffd, probe_image, "sysprobe", "reach", "165")
    assert code != 0 and refused(out), out
    code, out = run(skiffd, probe_image, "sysprobe", "reach", "165", opts=UNCONFINED)
    assert code == 0 and out.startswith("reached "), out
    code, out = run(skiffd, "busybox", "sh", "-c", "mount -t tmpfs none /tmp && "
                    "grep ' /tmp tmpfs' /proc/mounts",
                    opts=(*unremapped(skiffd), *UNCONFINED, "--cap-add", "SYS_ADMIN"))
    assert code == 0 and "/tmp tmpfs" in out, out


def test_mount_tmpfs_in_a_user_namespace(skiffd: Daemon) -> None:
    """The same mount without any capability, from a new user and mount
    namespace: the path CVE-2022-0185 took out of unprivileged containers."""
    attack = ("unshare", "-Urm", "sh", "-c", "mount -t tmpfs none /tmp && echo mounted")
    code, out = run(skiffd, "busybox", *attack)
    assert code != 0 and "Operation not permitted" in out, out
    code, out = run(skiffd, "busybox", *attack, opts=UNCONFINED)
    assert code == 0 and "mounted" in out, out


@pytest.mark.parametrize(("probe", "nr", "why"), [
    ("keyctl", 250, "the kernel's keyrings are not namespaced: a container reads or "
                    "pins the host's keys (CVE-2016-0728 refcount overflow)"),
    ("add_key", 248, "the same keyrings, written (CVE-2016-0728, CVE-2017-6951)"),
    ("io_uring", 425, "io_uring runs operations seccomp never sees, and is the entry of "
                      "many kernel escalations (CVE-2022-29582, CVE-2023-2598, "
                      "CVE-2024-0582); skiff refuses it as Docker 25 does"),
])
def test_syscalls_no_capability_guards(skiffd: Daemon, probe_image: str, probe: str,
                                       nr: int, why: str) -> None:
    """Syscalls any process may make on the host: only the filter stands
    between a container and them, so unconfined is enough to succeed."""
    code, out = run(skiffd, probe_image, "sysprobe", probe)
    assert code != 0 and refused(out), f"{why}: {out}"
    # the kernel never saw it: invalid arguments still answer EPERM
    code, out = run(skiffd, probe_image, "sysprobe", "reach", str(nr))
    assert code != 0 and refused(out), out
    code, out = run(skiffd, probe_image, "sysprobe", probe, opts=UNCONFINED)
    assert code == 0 and out.startswith("ok "), f"{why}: {out}"
    code, out = run(skiffd, probe_image, "sysprobe", "reach", str(nr), opts=UNCONFINED)
    assert code == 0 and out.startswith("reached "), out


def test_bpf(skiffd: Daemon, probe_image: str) -> None:
    """bpf(2): the verifier is a large kernel attack surface (CVE-2021-3490,
    CVE-2022-23222, CVE-2023-2163); with CAP_SYS_ADMIN only."""
    code, out = run(skiffd, probe_image, "sysprobe", "bpf")
    assert code != 0 and refused(out), out
    code, out = run(skiffd, probe_image, "sysprobe", "bpf",
                    opts=(*unremapped(skiffd), *UNCONFINED, "--cap-add", "SYS_ADMIN"))
    assert code == 0 and out.startswith("ok bpf"), out


def test_perf_event_open(skiffd: Daemon, probe_image: str) -> None:
    """perf_event_open: the perf subsystem's long CVE list (CVE-2013-2094,
    CVE-2023-2235) and a side channel into other tenants; with CAP_SYS_ADMIN only."""
    code, out = run(skiffd, probe_image, "sysprobe", "perf")
    assert code != 0 and refused(out), out
    code, out = run(skiffd, probe_image, "sysprobe", "reach", "298")
    assert code != 0 and refused(out), out
    code, out = run(skiffd, probe_image, "sysprobe", "perf",
                    opts=(*unremapped(skiffd), *UNCONFINED, "--cap-add", "SYS_ADMIN"))
    assert code == 0 and out.startswith("ok perf_event_open"), out


def test_shocker_open_by_handle_at(skiffd: Daemon, probe_image: str) -> None:
    """The "shocker" exploit (2014): open_by_handle_at with a guessed handle on
    the filesystem of any file bind-mounted from the host (here
    /etc/hosts) opens any file of that filesystem, outside the container;
    with CAP_DAC_READ_SEARCH only."""
    secret_dir = skiffd.base / unique("shocker")
    secret_dir.mkdir()
    secret = secret_dir / "host-secret"
    secret.write_text("the host's secret\n")
    # the handle an attacker would brute-force, taken here on the host (the
    # data-root, hence /etc/hosts of every container, is on this filesystem)
    helper = build_probe("sysprobe", secret_dir)
    handle = subprocess.run([str(helper), "handle", str(secret)], check=True,
                            capture_output=True, text=True).stdout.split()
    try:
        attack = ("sysprobe", "shocker", "/etc/hosts", *handle)
        code, out = run(skiffd, probe_image, *attack)
        assert code != 0 and refused(out), out
        code, out = run(skiffd, probe_image, *attack,
                        opts=(*unremapped(skiffd), *UNCONFINED, "--cap-add",
                              "DAC_READ_SEARCH"))
        assert code == 0 and "the host's secret" in out, out
    finally:
        shutil.rmtree(secret_dir)


def _visible(skiffd: Daemon, image: str, pid: int, opts: tuple[str, ...]) -> bool:
    code, _ = run(skiffd, image, "test", "-e", f"/proc/{pid}/environ", opts=opts)
    return code == 0


def test_ptrace_of_another_containers_process(skiffd: Daemon, probe_image: str) -> None:
    """ptrace of another container's process: read its memory and environment
    (secrets) or inject code into it (the class of CVE-2019-5736's host
    process hijack).  By default the other container's processes are in
    another pid namespace, invisible; with the host's pid namespace,
    CAP_SYS_PTRACE and no filter, the attach succeeds and the secret shows."""
    victim = unique("victim")
    skiffd.docker("run", "-d", "--name", victim, "--network", "none",
                  "-e", "VICTIM_SECRET=hunter2", "busybox", "sleep", "300", check=True)
    try:
        pid = int(skiffd.docker("inspect", "--format", "{{.State.Pid}}", victim,
                                check=True).stdout)
        code, out = run(skiffd, probe_image, "sysprobe", "ptrace", str(pid))
        assert code != 0 and out.startswith("err "), out
        code, out = run(skiffd, probe_image, "cat", f"/proc/{pid}/environ")
        assert "hunter2" not in out, out
        control = (*unremapped(skiffd), "--pid", "host", "--cap-add", "SYS_PTRACE",
                   *UNCONFINED)
        if not _visible(skiffd, probe_image, pid, control):
            pytest.skip("this skiffd does not honour --pid=host (core/containers/namespaces.py "
                        "on main does): the positive control cannot run")
        code, out = run(skiffd, probe_image, "sh", "-c",
                        f"sysprobe ptrace {pid} && tr '\\0' '\\n' < /proc/{pid}/environ",
                        opts=control)
        assert code == 0 and out.startswith("ok ptrace") and "VICTIM_SECRET=hunter2" in out, out
    finally:
        skiffd.docker("rm", "-f", victim)


# ---------------------------------------------------------------------------
# daemon.json seccomp-profile
# ---------------------------------------------------------------------------


def test_daemon_profile(tmp_path: Path) -> None:
    """daemon.json ``seccomp-profile``: read and checked when skiffd starts,
    the default of every container, listed by ``docker info``; a broken one
    refuses the start with the file and the fault named."""
    profile = write_profile(tmp_path / "daemon-profile.json", ["mkdir", "mkdirat"])
    with running_daemon(tmp_path / "d1", **{"seccomp-profile": str(profile)}) as d:
        d.skiff("image", "bootstrap", "busybox")
        info = json.loads(d.docker("info", "--format", "{{json .SecurityOptions}}",
                                   check=True).stdout)
        assert f"name=seccomp,profile={profile}" in info
        code, out = run(d, "busybox", "mkdir", "/tmp/x")
        assert code != 0 and "Operation not permitted" in out, out
        # the built-in profile on request, and none on request
        code, out = run(d, "busybox", "mkdir", "/tmp/x",
                        opts=("--security-opt", "seccomp=builtin"))
        assert code == 0, out
        code, out = run(d, "busybox", "grep", "Seccomp:", "/proc/self/status", opts=UNCONFINED)
        assert out.split() == ["Seccomp:", "0"], out

    with running_daemon(tmp_path / "d2", **{"seccomp-profile": "unconfined"}) as d:
        info = json.loads(d.docker("info", "--format", "{{json .SecurityOptions}}",
                                   check=True).stdout)
        assert not [o for o in info if o.startswith("name=seccomp")], info

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALOW"}]}))
    for path, why in ((broken, r"syscalls\[0\]\.action: 'SCMP_ACT_ALOW' is not a seccomp "
                               r"action"),
                      (tmp_path / "missing.json", r"cannot read .*missing\.json")):
        with pytest.raises(RuntimeError) as refused_start, \
                running_daemon(tmp_path / "d3", **{"seccomp-profile": str(path)}):
            pass
        assert re.search(why, str(refused_start.value)), str(refused_start.value)
