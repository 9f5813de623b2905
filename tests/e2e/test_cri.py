"""The CRI socket (daemon.json ``cri``) driven by crictl v1.32.0 and by the
stubs generated from the CRI's api.proto: Version, Status, the image service on
the Docker API's own image store, UNIMPLEMENTED (named) for the rest, and the
bridge to trio under cancellation and shutdown (docs/cri.md)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.cri.runtime_v1 import api_pb2_grpc as rpc
from tests.daemon import Daemon, poll, running_daemon
from tests.registry import REGISTRY, HangingServer, Registry, running_registry

#: crictl and critest, xz-compressed with their install.sh (shared/tools/cri)
TOOL_DIRS = (Path("/work/shared/tools/cri"),
             Path(__file__).resolve().parents[3] / "shared" / "tools" / "cri")
TOOLS = next((d for d in TOOL_DIRS if (d / "crictl.xz").exists()), None)


def unpacked_tools(dest: Path) -> Path:
    assert TOOLS is not None
    subprocess.run(["sh", str(TOOLS / "install.sh"), str(dest)], check=True,
                   capture_output=True)
    return dest


def cri_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crictl and critest unpacked for this module (skipped without them)."""
    if TOOLS is None or not shutil.which("xz"):
        pytest.skip("crictl/critest (shared/tools/cri) or xz are not here")
    return unpacked_tools(tmp_path_factory.mktemp("cri-tools"))


def cri_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A local registry for this module (skipped without Debian's)."""
    if not os.path.exists(REGISTRY):
        pytest.skip("needs Debian's docker-registry (scripts/install.sh --test)")
    with running_registry(tmp_path_factory.mktemp("cri-registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cri_tools(tmp_path_factory)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from cri_registry(tmp_path_factory)


@pytest.fixture(scope="module")
def skiffd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("skiffd-cri")
    with running_daemon(base, **{"storage-driver": "overlay2",
                                 "cri": f"unix://{base}/cri.sock"}) as d:
        d.skiff("image", "bootstrap", "busybox")
        yield d


def cri_path(d: Daemon) -> str:
    return str(d.config["cri"]).removeprefix("unix://")


class Cri:
    """The generated stubs on one daemon's CRI socket."""

    def __init__(self, path: str) -> None:
        self.channel = grpc.insecure_channel("unix:" + path)
        self.runtime = rpc.RuntimeServiceStub(self.channel)
        self.images = rpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def cri(skiffd: Daemon) -> Iterator[Cri]:
    c = Cri(cri_path(skiffd))
    yield c
    c.close()


def crictl(tools: Path, d: Daemon, *args: str, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    endpoint = "unix://" + cri_path(d)
    res = subprocess.run([str(tools / "crictl"), "--runtime-endpoint", endpoint,
                          "--image-endpoint", endpoint, "--timeout", "20s", *args],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CRI_CONFIG_FILE": "/dev/null"})
    if check and res.returncode != 0:
        raise AssertionError(f"crictl {' '.join(args)} failed ({res.returncode}): "
                             f"{res.stderr}\n--- skiffd log ---\n{d.logs()}")
    return res


def image_id(d: Daemon, name: str) -> str:
    return d.docker("image", "inspect", "--format", "{{.Id}}", name,
                    check=True).stdout.decode().strip()


def push_built(d: Daemon, tmp: Path, names: list[str], label: str) -> str:
    """An image of its own (busybox plus a label), pushed under ``names`` and
    then removed here; returns its ID."""
    (tmp / "Dockerfile").write_text(f"FROM busybox:latest\nLABEL cri.test={label}\n")
    d.docker("build", "-q", "-t", names[0], str(tmp), check=True, timeout=120)
    iid = image_id(d, names[0])
    for name in names:
        d.docker("tag", names[0], name, check=True)
        d.docker("push", name, check=True, timeout=120)
    for name in names:
        d.docker("rmi", name, check=True)
    return iid


# -- the socket and the runtime service -------------------------------------------------


def test_socket_is_the_cris_own(skiffd: Daemon) -> None:
    st = os.stat(cri_path(skiffd))
    assert oct(st.st_mode & 0o777) == oct(0o660)
    assert cri_path(skiffd) != skiffd.socket


def test_crictl_version(tools: Path, skiffd: Daemon) -> None:
    out = crictl(tools, skiffd, "version").stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["RuntimeName"] == "skiff"
    assert fields["RuntimeApiVersion"] == "v1"
    assert fields["Version"] == "0.1.0"


def test_status_says_the_runtime_and_its_network_are_ready(tools: Path, skiffd: Daemon,
                                                         cri: Cri) -> None:
    reply = cri.runtime.Status(pb.StatusRequest(verbose=True), timeout=10)
    conditions = {c.type: c for c in reply.status.conditions}
    assert conditions["RuntimeReady"].status
    assert conditions["NetworkReady"].status  # the daemon's bridge: pods get it
    config = json.loads(reply.info["config"])
    assert config["storageDriver"] == "overlay2"
    info = json.loads(crictl(tools, skiffd, "info").stdout)
    assert {c["type"] for c in info["status"]["conditions"]} == {"RuntimeReady",
                                                                   "NetworkReady"}
    cgroup = cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=10)
    assert cgroup.linux.cgroup_driver == pb.CGROUPFS


def test_every_other_rpc_is_unimplemented_and_named(cri: Cri) -> None:
    """Every RPC of runtime.v1 skiff does not serve answers UNIMPLEMENTED at
    once, naming itself; none hangs (each has a 10 s deadline)."""
    from skiff.core.cri import runtime as runtime_mod

    for served in ("Exec", "ExecSync", "Attach", "PortForward", "RunPodSandbox",
                   "CreateContainer"):
        assert served not in runtime_mod.UNIMPLEMENTED
    assert len(runtime_mod.UNIMPLEMENTED) >= 5
    for name in runtime_mod.UNIMPLEMENTED:
        method = getattr(cri.runtime, name)
        request_type = pb.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name[
            name].input_type.name
        request = getattr(pb, request_type)()
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            reply = method(request, timeout=10)
            if name == "GetContainerEvents":  # server streaming: the error comes on read
                next(iter(reply))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
        assert f"runtime.v1.RuntimeService/{name} is not implemented" in info.value.details()
        assert time.monotonic() - t0 < 5, name


# -- images: the Docker API's store ------------------------------------------------------


def test_images_are_the_docker_apis(tools: Path, skiffd: Daemon, cri: Cri) -> None:
    want = image_id(skiffd, "busybox:latest")
    listed = json.loads(crictl(tools, skiffd, "images", "-o", "json").stdout)["images"]
    mine = [i for i in listed if i["id"] == want]
    assert mine and "docker.io/library/busybox:latest" in mine[0]["repoTags"]
    assert int(mine[0]["size"]) > 0
    for name in (want, want[7:19], "busybox", "docker.io/library/busybox:latest"):
        status = cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=name)),
                                        timeout=10)
        assert status.image.id == want, name
    missing = cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image="no/such-image:never")), timeout=10)
    assert not missing.HasField("image")
    only = cri.images.ListImages(pb.ListImagesRequest(
        filter=pb.ImageFilter(image=pb.ImageSpec(image="busybox"))), timeout=10)
    assert [i.id for i in only.images] == [want]
    verbose = cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=want), verbose=True), timeout=10)
    assert json.loads(verbose.info["info"])["rootfs"]["type"] == "layers"


def test_image_user_fields(skiffd: Daemon, cri: Cri, tmp_path: Path) -> None:
    """uid and username as the CRI gives them (critest's four cases)."""
    cases = {"1002": (1002, ""), "www-data": (0, "www-data"), "1003:1003": (1003, ""),
             "www-data:www-data": (0, "www-data")}
    for user, (uid, username) in cases.items():
        tag = f"cri-user-{user.replace(':', '-')}:t"
        (tmp_path / "Dockerfile").write_text(f"FROM busybox:latest\nUSER {user}\n")
        skiffd.docker("build", "-q", "-t", tag, str(tmp_path), check=True, timeout=120)
        try:
            got = cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=tag)),
                                         timeout=10).image
            assert (got.uid.value, got.username) == (uid, username), user
            assert got.HasField("uid") == (uid != 0), user
        finally:
            skiffd.docker("rmi", tag)


def test_pull_status_remove_with_crictl(tools: Path, skiffd: Daemon, cri: Cri,
                                        registry: Registry, tmp_path: Path) -> None:
    name = f"{registry.host}/cri/app:v1"
    plain = f"{registry.host}/cri/app"
    want = push_built(skiffd, tmp_path, [name, plain + ":latest"], "pull")
    out = crictl(tools, skiffd, "pull", name).stdout
    assert want in out
    assert image_id(skiffd, name) == want  # the Docker API sees what the CRI pulled
    status = json.loads(crictl(tools, skiffd, "inspecti", "-o", "json", name).stdout)
    assert status["status"]["id"] == want
    assert status["status"]["repoTags"] == [name]
    assert [d.split("@")[0] for d in status["status"]["repoDigests"]] == [plain]
    # a name without a tag pulls latest, as kubelet means it
    reply = cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=plain)),
                                 timeout=60)
    assert reply.image_ref == want
    assert image_id(skiffd, plain + ":latest") == want
    # as containerd: RemoveImage takes the image, with every name it has
    crictl(tools, skiffd, "rmi", name)
    for gone in (name, plain + ":latest", want):
        assert skiffd.docker("image", "inspect", gone).returncode != 0, gone
    assert image_id(skiffd, "busybox:latest")  # its parent stays
    # idempotent: removing what is gone is no error
    cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=name)), timeout=10)


def test_remove_refuses_an_image_a_container_runs(skiffd: Daemon, cri: Cri,
                                                  tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nLABEL cri=busy\n")
    skiffd.docker("build", "-q", "-t", "cri-busy:a", str(tmp_path), check=True, timeout=120)
    cid = skiffd.docker("run", "-d", "cri-busy:a", "sleep", "60",
                        check=True).stdout.decode().strip()
    try:
        with pytest.raises(grpc.RpcError) as info:
            cri.images.RemoveImage(pb.RemoveImageRequest(
                image=pb.ImageSpec(image="cri-busy:a")), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "running container" in info.value.details() or "conflict" in \
            info.value.details()
        assert image_id(skiffd, "cri-busy:a")
    finally:
        skiffd.docker("rm", "-f", cid)
        skiffd.docker("rmi", "cri-busy:a")


def test_remove_by_id_takes_every_name(skiffd: Daemon, cri: Cri, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nLABEL cri=remove\n")
    skiffd.docker("build", "-q", "-t", "cri-rm:a", str(tmp_path), check=True, timeout=120)
    skiffd.docker("tag", "cri-rm:a", "cri-rm:b", check=True)
    iid = image_id(skiffd, "cri-rm:a")
    cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=iid)), timeout=10)
    for name in ("cri-rm:a", "cri-rm:b", iid):
        assert skiffd.docker("image", "inspect", name).returncode != 0, name
    assert image_id(skiffd, "busybox:latest")  # its parent stays


def test_pull_errors_are_statuses(skiffd: Daemon, cri: Cri, registry: Registry) -> None:
    with pytest.raises(grpc.RpcError) as info:
        cri.images.PullImage(pb.PullImageRequest(
            image=pb.ImageSpec(image=f"{registry.host}/cri/never:there")), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image="Bad Name")),
                             timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image="")), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in info.value.details()


def test_imagefsinfo(tools: Path, skiffd: Daemon, cri: Cri) -> None:
    reply = cri.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=30)
    (fs,) = reply.image_filesystems
    assert fs.fs_id.mountpoint == str(skiffd.data_root / "overlay2")
    assert fs.used_bytes.value > 1 << 20  # busybox at least
    assert fs.inodes_used.value > 100
    assert abs(fs.timestamp / 1e9 - time.time()) < 60
    out = json.loads(crictl(tools, skiffd, "imagefsinfo", "-o", "json").stdout)
    assert out["status"]["imageFilesystems"][0]["fsId"]["mountpoint"] == fs.fs_id.mountpoint


def test_docker_and_cri_sockets_both_serve(skiffd: Daemon, cri: Cri) -> None:
    res = skiffd.docker("version", "--format", "{{.Server.Version}}", check=True)
    assert res.stdout.strip()
    assert cri.runtime.Version(pb.VersionRequest(), timeout=10).runtime_name == "skiff"


# -- cancellation and shutdown ----------------------------------------------------------


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    with HangingServer() as srv:
        yield srv


def _pull_in_thread(path: str, image: str, timeout: float | None
                    ) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        c = Cri(path)
        try:
            c.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                               timeout=timeout)
            box["ok"] = True
        except grpc.RpcError as exc:
            box["code"], box["details"] = exc.code(), exc.details()
        finally:
            c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_client_deadline_cancels_the_pull(tmp_path: Path, hanging: HangingServer) -> None:
    """A pull from a registry that never answers, abandoned by its client:
    the engine's pull is cancelled (logged), the socket keeps serving."""
    with running_daemon(tmp_path / "d", **{"cri": str(tmp_path / "cri.sock"),
                                           "registry-timeout": 3}) as d:
        c = Cri(cri_path(d))
        try:
            with pytest.raises(grpc.RpcError) as info:
                c.images.PullImage(pb.PullImageRequest(
                    image=pb.ImageSpec(image=f"127.0.0.1:{hanging.port}/stuck/img:v1")),
                    timeout=1)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            poll(lambda: '"cri.call_cancelled"' in d.logs() and '"PullImage"' in d.logs(),
                 timeout=20, what="the pull cancelled")
            assert c.runtime.Version(pb.VersionRequest(), timeout=10).runtime_name == "skiff"
        finally:
            c.close()


def test_shutdown_with_a_call_in_flight(tmp_path: Path, hanging: HangingServer) -> None:
    """SIGTERM while a CRI pull hangs: the call answers UNAVAILABLE, skiffd
    exits 0 within the registry timeout, the socket is gone."""
    base = tmp_path / "d"
    path = str(tmp_path / "cri.sock")
    with running_daemon(base, **{"cri": path, "registry-timeout": 3}) as d:
        t, box = _pull_in_thread(path, f"127.0.0.1:{hanging.port}/stuck/img:v1", None)
        poll(lambda: bool(hanging._conns), timeout=10, what="the pull reaching the registry")
        t0 = time.monotonic()
        rc = d.stop(timeout=30)
        took = time.monotonic() - t0
        t.join(10)
        assert rc == 0, d.logs()
        assert took < 15, f"skiffd took {took:.1f}s to stop"
        assert box.get("code") in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), box
        assert not os.path.exists(path)
        assert '"cri.stopped"' in d.logs()
        d.start()  # a clean start again on the same socket
        c = Cri(path)
        try:
            assert c.runtime.Version(pb.VersionRequest(), timeout=10).runtime_name == "skiff"
        finally:
            c.close()


def test_a_live_socket_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "cri.sock"
    holder = socket.socket(socket.AF_UNIX)
    holder.bind(str(path))
    holder.listen(1)
    try:
        with pytest.raises(RuntimeError, match="already running"), \
                running_daemon(tmp_path / "d", cri=str(path)):
            pass
    finally:
        holder.close()


# -- pod sandboxes ------------------------------------------------------------------------


def pod_config(tmp: Path, name: str, **extra: Any) -> Path:
    config = {"metadata": {"name": name, "uid": f"uid-{name}", "namespace": "cri-test",
                           "attempt": 1},
              "hostname": f"host-{name}", "log_directory": str(tmp / "logs"),
              "labels": {"app": name, "tier": "test"},
              "annotations": {"skiff.test/note": "a pod"}, "linux": {}, **extra}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def docker_ps_ids(d: Daemon, *args: str) -> list[str]:
    return d.docker("ps", "-aq", "--no-trunc", *args, check=True).stdout.decode().split()


def test_pod_sandbox_life_with_crictl(tools: Path, skiffd: Daemon, cri: Cri,
                                      tmp_path: Path) -> None:
    pod = crictl(tools, skiffd, "runp", str(pod_config(tmp_path, "web"))).stdout.strip()
    try:
        listed = json.loads(crictl(tools, skiffd, "pods", "-o", "json").stdout)["items"]
        mine = [p for p in listed if p["id"] == pod]
        assert mine and mine[0]["state"] == "SANDBOX_READY"
        assert mine[0]["metadata"] == {"name": "web", "uid": "uid-web",
                                       "namespace": "cri-test", "attempt": 1}
        assert mine[0]["labels"] == {"app": "web", "tier": "test"}
        # its own namespace of the engine: docker ps does not list it unless asked
        assert pod not in docker_ps_ids(skiffd)
        assert pod in docker_ps_ids(skiffd, "--filter", "label=io.skiff.cri.namespace")
        status = json.loads(crictl(tools, skiffd, "inspectp", "-o", "json", pod).stdout)
        st = status["status"]
        assert st["state"] == "SANDBOX_READY"
        assert st["annotations"] == {"skiff.test/note": "a pod"}
        created = cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=pod), timeout=10).status.created_at
        assert abs(created / 1e9 - time.time()) < 120  # nanoseconds, as the CRI has it
        assert st["network"]["ip"]  # on the daemon's bridge
        # the pause process holds the namespaces: skiff-init --pause, hostname set
        pid = int(json.loads(skiffd.docker("inspect", pod, check=True).stdout)[0]
                  ["State"]["Pid"])
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        cmdlines = [Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0") for c in children]
        assert [b"/sbin/docker-init", b"--pause", b""] in cmdlines
        assert Path(f"/proc/{pid}/root/etc/hostname").read_text().strip() == "host-web"
        # filters: label, state, id prefix
        def ids(*args: str) -> list[str]:
            return crictl(tools, skiffd, "pods", "-q", *args).stdout.split()
        assert pod in ids("--label", "app=web")
        assert pod not in ids("--label", "app=other")
        assert pod in ids("--state", "ready") and pod not in ids("--state", "notready")
        assert ids("--id", pod[:12]) == [pod]
        crictl(tools, skiffd, "stopp", pod)
        assert crictl(tools, skiffd, "inspectp", "-o", "go-template", "--template",
                      "{{.status.state}}", pod).stdout.strip() == "SANDBOX_NOTREADY"
        assert pod in ids("--state", "notready")
        state = json.loads(skiffd.docker("inspect", pod, check=True).stdout)[0]["State"]
        assert state["ExitCode"] == 0  # the pause left on SIGTERM, not killed
        crictl(tools, skiffd, "stopp", pod)  # idempotent
    finally:
        crictl(tools, skiffd, "rmp", "-f", pod, check=False)
    assert pod not in ids()
    assert pod not in docker_ps_ids(skiffd, "--filter", "label=io.skiff.cri.namespace")
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod),
                                     timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_pod_sandbox_refusals(cri: Cri) -> None:
    def run(config: pb.PodSandboxConfig, handler: str = "") -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config,
                                                              runtime_handler=handler),
                                      timeout=30)
        return info.value

    md = pb.PodSandboxMetadata(name="refused", uid="uid-refused", namespace="cri-test")
    err = run(pb.PodSandboxConfig(metadata=md), handler="kata")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'kata'" in err.details()
    err = run(pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="x")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata" in err.details()
    err = run(pb.PodSandboxConfig(metadata=md, linux=pb.LinuxPodSandboxConfig(
        sysctls={"vm.swappiness": "1"})))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not namespaced" in err.details()
    err = run(pb.PodSandboxConfig(metadata=md, linux=pb.LinuxPodSandboxConfig(
        sysctls={"net.ipv4.no_such_sysctl": "1"})))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "no such sysctl" in err.details()
    err = run(pb.PodSandboxConfig(metadata=md, linux=pb.LinuxPodSandboxConfig(
        sysctls={"net.ipv4.ip_forward": "1"}, security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE)))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "host's network" in err.details()
    err = run(pb.PodSandboxConfig(metadata=md, linux=pb.LinuxPodSandboxConfig(
        cgroup_parent="system.slice:kubepods:pod1")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "systemd cgroup driver" in err.details()
    err = run(pb.PodSandboxConfig(metadata=md, linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(
            network=pb.TARGET)))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "TARGET" in err.details()
    # nothing was left behind by the refusals
    listed = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    assert not [p for p in listed if p.metadata.name in ("refused", "x")]


def test_pod_sysctls(skiffd: Daemon, cri: Cri) -> None:
    """Namespaced sysctls of a pod (kubelet's safe kernel.shm_rmid_forced, an IPC
    and a network one) are set in the pod's namespaces, seen by its containers,
    and the host's values stay as they were."""
    wanted = {"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100",
              "net.ipv4.ip_unprivileged_port_start": "80"}
    paths = {k: "/proc/sys/" + k.replace(".", "/") for k in wanted}
    host = {k: Path(p).read_text().strip() for k, p in paths.items()}
    assert host != wanted
    md = pb.PodSandboxMetadata(name="sysctls", uid="uid-sysctls", namespace="cri-test")
    config = pb.PodSandboxConfig(metadata=md, linux=pb.LinuxPodSandboxConfig(sysctls=wanted))
    with pod_with_sleeper(cri, config) as (_, ctr):
        reply = cri.runtime.ExecSync(pb.ExecSyncRequest(
            container_id=ctr, cmd=["cat", *paths.values()], timeout=10), timeout=20)
        assert reply.stdout.decode().split() == list(wanted.values()), reply
        assert {k: Path(p).read_text().strip() for k, p in paths.items()} == host


@contextlib.contextmanager
def pod_with_sleeper(cri: Cri, config: pb.PodSandboxConfig) -> Iterator[tuple[str, str]]:
    """A pod of ``config`` and a started container in it (``sleep 60``): their
    IDs; the pod is stopped and removed afterwards."""
    pod = cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                    timeout=60).pod_sandbox_id
    try:
        ctr = cri.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, sandbox_config=config, config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="sleeper"),
                image=pb.ImageSpec(image="busybox:latest"), command=["sleep", "60"])),
            timeout=60).container_id
        cri.runtime.StartContainer(pb.StartContainerRequest(container_id=ctr), timeout=60)
        yield pod, ctr
    finally:
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                     timeout=60)


def test_pod_under_its_cgroup_parent(skiffd: Daemon, cri: Cri) -> None:
    """kubelet's pod group (cgroupfs driver: /kubepods/burstable/pod<uid>): the
    pause and the pod's containers go under it; the levels made go with the pod."""
    top = f"skiff-test-cgp-{secrets.token_hex(3)}"
    parent = f"/{top}/burstable/poduid-cgp"
    md = pb.PodSandboxMetadata(name="cgp", uid="uid-cgp", namespace="cri-test")
    config = pb.PodSandboxConfig(metadata=md,
                                 linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent))
    with pod_with_sleeper(cri, config) as ids:
        for cid in ids:
            pid = skiffd.docker("inspect", "-f", "{{.State.Pid}}", cid,
                                check=True).stdout.decode().strip()
            memory = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                          if line.split(":")[1] == "memory")
            assert memory.endswith(f":{parent}/{cid}"), memory
    assert not Path(f"/sys/fs/cgroup/memory/{top}").exists()


def test_masked_and_readonly_paths(skiffd: Daemon, cri: Cri) -> None:
    """A container's masked_paths and readonly_paths (kubelet sends its lists for
    every container) replace the engine's defaults; none given: Docker's."""
    md = pb.PodSandboxMetadata(name="paths", uid="uid-paths", namespace="cri-test")
    config = pb.PodSandboxConfig(metadata=md)
    pod = cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                    timeout=60).pod_sandbox_id
    try:
        def started(name: str, **sc: list[str]) -> str:
            ctr = cri.runtime.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod, sandbox_config=config, config=pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name=name),
                    image=pb.ImageSpec(image="busybox:latest"), command=["sleep", "60"],
                    linux=pb.LinuxContainerConfig(
                        security_context=pb.LinuxContainerSecurityContext(**sc)))),
                timeout=60).container_id
            cri.runtime.StartContainer(pb.StartContainerRequest(container_id=ctr), timeout=60)
            return ctr

        def sh(ctr: str, script: str) -> pb.ExecSyncResponse:
            return cri.runtime.ExecSync(pb.ExecSyncRequest(
                container_id=ctr, cmd=["sh", "-c", script], timeout=10), timeout=20)

        given = started("given", masked_paths=["/etc/hostname"], readonly_paths=["/tmp"])
        assert sh(given, "cat /etc/hostname").stdout == b""  # masked: /dev/null over it
        wrote = sh(given, "touch /tmp/x")
        assert wrote.exit_code != 0 and b"Read-only file system" in wrote.stderr
        assert int(sh(given, "wc -c < /proc/timer_list").stdout) > 0  # Docker's list replaced
        default = started("default")
        assert sh(default, "cat /etc/hostname").stdout.strip()
        assert sh(default, "touch /tmp/x").exit_code == 0
        assert sh(default, "wc -c < /proc/timer_list").stdout.strip() == b"0"  # Docker's mask
    finally:
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                     timeout=60)


def test_sandbox_outlives_a_daemon_restart(tmp_path: Path, tools: Path) -> None:
    """The CRI's record is in the container's labels: after a restart the pod is
    listed (NOTREADY: containers stop with the daemon) and can be removed."""
    path = str(tmp_path / "cri.sock")
    with running_daemon(tmp_path / "d", cri=path) as d:
        pod = crictl(tools, d, "runp", str(pod_config(tmp_path, "again"))).stdout.strip()
        assert d.stop() == 0
        d.start()
        c = Cri(path)
        try:
            (found,) = c.runtime.ListPodSandbox(pb.ListPodSandboxRequest(
                filter=pb.PodSandboxFilter(id=pod)), timeout=10).items
            assert found.state == pb.SANDBOX_NOTREADY
            assert found.metadata.name == "again" and found.labels["app"] == "again"
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                       timeout=30)
            assert not c.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
        finally:
            c.close()


def test_network_not_ready_without_a_bridge(tmp_path: Path) -> None:
    """With daemon.json bridge none, pods would get only a loopback: NetworkReady
    is false and says why (kubelet then keeps the node NotReady)."""
    with running_daemon(tmp_path, **{"bridge": "none", "cri": f"{tmp_path}/cri.sock"}) as d:
        c = Cri(cri_path(d))
        try:
            reply = c.runtime.Status(pb.StatusRequest(), timeout=10)
        finally:
            c.close()
    conditions = {c.type: c for c in reply.status.conditions}
    assert conditions["RuntimeReady"].status
    assert not conditions["NetworkReady"].status
    assert conditions["NetworkReady"].reason == "NoPodNetwork"
    assert "bridge" in conditions["NetworkReady"].message


def test_off_by_default_grpc_is_not_even_loaded(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as d:
        assert d.proc is not None
        maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
        assert "cygrpc" not in maps and "grpc" not in maps
        assert "cri" not in json.loads((tmp_path / "d" / "daemon.json").read_text())
        assert not list((tmp_path / "d").glob("*cri*.sock"))


def test_a_pod_that_cannot_start_leaves_nothing(skiffd: Daemon, cri: Cri) -> None:
    """Its host port is taken: RunPodSandbox fails with the engine's words and
    the half-made sandbox is removed."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="taken", uid="uid-taken", namespace="cri-test"),
            port_mappings=[pb.PortMapping(container_port=80, host_port=port,
                                          host_ip="127.0.0.1")])
        with pytest.raises(grpc.RpcError) as info:
            cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60)
        assert str(port) in info.value.details()
    finally:
        holder.close()
    names = [p.metadata.name for p in
             cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items]
    assert "taken" not in names
    assert not docker_ps_ids(skiffd, "--filter", "label=io.skiff.cri.namespace")


# -- containers in pods -------------------------------------------------------------------


def container_config(tmp: Path, name: str, **extra: Any) -> Path:
    config = {"metadata": {"name": name}, "image": {"image": "busybox:latest"},
              "command": ["sleep", "300"], "envs": [{"key": "WHO", "value": name}],
              "labels": {"role": name}, "annotations": {"skiff.test/c": name},
              "linux": {}, **extra}
    path = tmp / f"c-{name}.json"
    path.write_text(json.dumps(config))
    return path


def test_containers_in_a_pod_with_crictl(tools: Path, skiffd: Daemon, cri: Cri,
                                         tmp_path: Path) -> None:
    podcfg = pod_config(tmp_path, "app")
    pod = crictl(tools, skiffd, "runp", str(podcfg)).stdout.strip()
    try:
        ctr = crictl(tools, skiffd, "create", "--no-pull", pod,
                     str(container_config(tmp_path, "main")), str(podcfg)).stdout.strip()
        st = json.loads(crictl(tools, skiffd, "inspect", "-o", "json", ctr).stdout)["status"]
        assert st["state"] == "CONTAINER_CREATED"
        assert st["metadata"]["name"] == "main" and st["labels"] == {"role": "main"}
        crictl(tools, skiffd, "start", ctr)
        listed = json.loads(crictl(tools, skiffd, "ps", "-o", "json").stdout)["containers"]
        (mine,) = [c for c in listed if c["id"] == ctr]
        assert mine["state"] == "CONTAINER_RUNNING" and mine["podSandboxId"] == pod
        # not in docker ps; in the pod's network, IPC and PID namespaces (pid POD, the
        # CRI's default), its own mounts
        assert ctr not in docker_ps_ids(skiffd)
        def pid_of(cid: str) -> int:
            return int(json.loads(skiffd.docker("inspect", cid, check=True).stdout)[0]
                       ["State"]["Pid"])
        pause, main = pid_of(pod), pid_of(ctr)
        for ns in ("net", "ipc", "pid"):
            assert os.readlink(f"/proc/{pause}/ns/{ns}") == os.readlink(
                f"/proc/{main}/ns/{ns}"), ns
        assert os.readlink(f"/proc/{pause}/ns/mnt") != os.readlink(f"/proc/{main}/ns/mnt")
        environ = Path(f"/proc/{main}/environ").read_bytes().split(b"\0")
        assert b"WHO=main" in environ
        # filters: by pod, by label, by state
        def ids(*args: str) -> list[str]:
            return crictl(tools, skiffd, "ps", "-a", "-q", *args).stdout.split()
        assert ids("--pod", pod) == [ctr] and ids("--label", "role=main") == [ctr]
        assert ids("--state", "exited") == []
        # a second container; stopping the pod stops both
        other = crictl(tools, skiffd, "create", "--no-pull", pod,
                       str(container_config(tmp_path, "side")), str(podcfg)).stdout.strip()
        crictl(tools, skiffd, "start", other)
        crictl(tools, skiffd, "stop", "--timeout", "1", ctr)
        st = json.loads(crictl(tools, skiffd, "inspect", "-o", "json", ctr).stdout)["status"]
        # not PID 1 in the pod's PID namespace: SIGTERM ends sleep
        assert st["state"] == "CONTAINER_EXITED" and st["exitCode"] == 143
        assert st["reason"] == "Error" and st["finishedAt"] > st["startedAt"]
        crictl(tools, skiffd, "stop", ctr)  # idempotent
        crictl(tools, skiffd, "stopp", pod)
        assert set(ids("--state", "exited")) == {ctr, other}
        crictl(tools, skiffd, "rmp", pod)  # removes its containers too
        assert ids() == []
    finally:
        crictl(tools, skiffd, "rmp", "-f", pod, check=False)
    assert not docker_ps_ids(skiffd, "--filter", "label=io.skiff.cri.namespace")
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=ctr), timeout=10)
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=ctr), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=ctr), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_lookups_off_the_loop_while_pods_come_and_go(skiffd: Daemon, cri: Cri) -> None:
    """The status and list RPCs answer on gRPC's threads, not the loop's
    (core/cri/service.py ``Calls.read``): hammered while a pod and its
    container are made, started, stopped and removed, every answer is a state
    the pod or container really passed through, or NOT_FOUND once it is gone;
    never an error of skiffd's own (a dict changed under a reader)."""
    done = threading.Event()
    seen: dict[str, set[str]] = {"pod": set(), "ctr": set(), "codes": set()}
    ids: dict[str, str] = {}

    def lookups() -> None:
        c = Cri(cri_path(skiffd))
        try:
            while not done.is_set():
                for name, call in (
                        ("pod", lambda: pb.PodSandboxState.Name(c.runtime.PodSandboxStatus(
                            pb.PodSandboxStatusRequest(pod_sandbox_id=ids["pod"]),
                            timeout=10).status.state)),
                        ("ctr", lambda: pb.ContainerState.Name(c.runtime.ContainerStatus(
                            pb.ContainerStatusRequest(container_id=ids["ctr"]),
                            timeout=10).status.state)),
                        ("codes", lambda: str(len(c.runtime.ListPodSandbox(
                            pb.ListPodSandboxRequest(), timeout=10).items) >= 0)),
                        ("codes", lambda: str(len(c.runtime.ListContainers(
                            pb.ListContainersRequest(), timeout=10).containers) >= 0))):
                    if name != "codes" and name not in ids:
                        continue
                    try:
                        seen[name].add(call())
                    except grpc.RpcError as exc:
                        seen["codes"].add(exc.code().name)
        finally:
            c.close()

    readers = [threading.Thread(target=lookups, daemon=True) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for round_ in range(2):
            config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(
                name=f"busy{round_}", uid=f"uid-busy{round_}", namespace="cri-test"))
            ids["pod"] = cri.runtime.RunPodSandbox(
                pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
            ids["ctr"] = cri.runtime.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=ids["pod"], sandbox_config=config,
                config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                          image=pb.ImageSpec(image="busybox:latest"),
                                          command=["sleep", "60"])),
                timeout=60).container_id
            cri.runtime.StartContainer(pb.StartContainerRequest(container_id=ids["ctr"]),
                                       timeout=60)
            cri.runtime.StopContainer(pb.StopContainerRequest(container_id=ids["ctr"],
                                                              timeout=0), timeout=60)
            cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=ids["ctr"]),
                                        timeout=60)
            cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=ids["pod"]),
                                       timeout=60)
            cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(
                pod_sandbox_id=ids["pod"]), timeout=60)
    finally:
        done.set()
        for t in readers:
            t.join(30)
    assert seen["pod"] <= {"SANDBOX_READY", "SANDBOX_NOTREADY"} and seen["pod"], seen
    assert seen["ctr"] <= {"CONTAINER_CREATED", "CONTAINER_RUNNING", "CONTAINER_EXITED"}, seen
    assert seen["codes"] <= {"True", "NOT_FOUND"}, (seen, skiffd.logs()[-3000:])


def test_container_refusals(skiffd: Daemon, cri: Cri) -> None:
    md = pb.PodSandboxMetadata(name="refusing", uid="uid-refusing", namespace="cri-test")
    pod = cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(
        config=pb.PodSandboxConfig(metadata=md)), timeout=60).pod_sandbox_id
    try:
        def create(config: pb.ContainerConfig, sandbox: str = pod) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as info:
                cri.runtime.CreateContainer(pb.CreateContainerRequest(
                    pod_sandbox_id=sandbox, config=config), timeout=30)
            return info.value

        base = {"metadata": pb.ContainerMetadata(name="c"),
                "image": pb.ImageSpec(image="busybox:latest")}
        err = create(pb.ContainerConfig(log_path="c/0.log", **base))  # the pod has no log dir
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "log_directory" in err.details()
        err = create(pb.ContainerConfig(**base), sandbox="f" * 64)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = create(pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                        image=pb.ImageSpec(image="no/such:image")))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = create(pb.ContainerConfig(linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                capabilities=pb.Capability(add_ambient_capabilities=["NET_RAW"]))), **base))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "ambient" in err.details()
        err = create(pb.ContainerConfig(linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                run_as_group=pb.Int64Value(value=5))), **base))
        assert "run_as_group is set without" in err.details()
        listed = cri.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
        assert not [c for c in listed if c.pod_sandbox_id == pod]
    finally:
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                     timeout=30)


def test_docker_ipc_container_mode(skiffd: Daemon) -> None:
    """What pods' containers use, through the Docker API too: --ipc container:<donor>
    joins a shareable donor's IPC namespace and is refused for a private one, as dockerd."""
    ids = []
    try:
        for ipc in ("shareable", "private"):
            ids.append(skiffd.docker("run", "-d", "--ipc", ipc, "busybox", "sleep", "60",
                                     check=True).stdout.decode().strip())
        joiner = skiffd.docker("run", "-d", "--ipc", f"container:{ids[0]}", "busybox",
                               "sleep", "60", check=True).stdout.decode().strip()
        ids.append(joiner)

        def ipc_ns(cid: str) -> str:
            pid = json.loads(skiffd.docker("inspect", cid, check=True).stdout)[0]["State"]["Pid"]
            return os.readlink(f"/proc/{pid}/ns/ipc")

        assert ipc_ns(joiner) == ipc_ns(ids[0]) != ipc_ns(ids[1])
        res = skiffd.docker("run", "-d", "--ipc", f"container:{ids[1]}", "busybox", "true")
        assert res.returncode != 0 and "non-shareable IPC" in res.stderr.decode()
    finally:
        skiffd.docker("rm", "-f", *ids)
        leftover = skiffd.docker("ps", "-aq", "--filter", "status=created").stdout.split()
        if leftover:
            skiffd.docker("rm", "-f", *[x.decode() for x in leftover])


def test_exec_sync(tools: Path, skiffd: Daemon, cri: Cri, tmp_path: Path) -> None:
    podcfg = pod_config(tmp_path, "execs")
    pod = crictl(tools, skiffd, "runp", str(podcfg)).stdout.strip()
    try:
        ctr = crictl(tools, skiffd, "create", "--no-pull", pod,
                     str(container_config(tmp_path, "sh")), str(podcfg)).stdout.strip()
        crictl(tools, skiffd, "start", ctr)
        out = crictl(tools, skiffd, "exec", "-s", ctr, "sh", "-c", "echo out; echo $WHO").stdout
        assert out.strip() == "out\nsh"  # crictl adds its own newlines

        def run(cmd: list[str], timeout: int = 10) -> pb.ExecSyncResponse:
            return cri.runtime.ExecSync(pb.ExecSyncRequest(container_id=ctr, cmd=cmd,
                                                           timeout=timeout), timeout=30)
        reply = run(["sh", "-c", "echo to-out; echo to-err >&2; exit 3"])
        assert (reply.stdout, reply.stderr, reply.exit_code) == (b"to-out\n", b"to-err\n", 3)
        missing = run(["/no/such/command"])
        assert missing.exit_code in (126, 127) and missing.stderr
        # a timeout: an error, and the process is gone with it
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            run(["sleep", "77"], timeout=1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 10
        poll(lambda: b"sleep 77" not in run(["ps", "-o", "args"]).stdout, timeout=10,
             what="the timed-out exec killed")
    finally:
        crictl(tools, skiffd, "rmp", "-f", pod, check=False)


def test_container_stats(tools: Path, skiffd: Daemon, cri: Cri, tmp_path: Path) -> None:
    podcfg = pod_config(tmp_path, "stats")
    pod = crictl(tools, skiffd, "runp", str(podcfg)).stdout.strip()
    try:
        ctr = crictl(tools, skiffd, "create", "--no-pull", pod,
                     str(container_config(tmp_path, "busy")), str(podcfg)).stdout.strip()
        idle = crictl(tools, skiffd, "create", "--no-pull", pod,
                      str(container_config(tmp_path, "idle")), str(podcfg)).stdout.strip()
        crictl(tools, skiffd, "start", ctr)
        cri.runtime.ExecSync(pb.ExecSyncRequest(
            container_id=ctr, cmd=["sh", "-c", "head -c 3000000 /dev/zero > /big; "
                                               "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"],
            timeout=30), timeout=60)
        st = cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=ctr),
                                        timeout=30).stats
        assert st.attributes.id == ctr and st.attributes.metadata.name == "busy"
        assert st.cpu.usage_core_nano_seconds.value > 0
        assert st.memory.working_set_bytes.value > 0
        assert st.memory.usage_bytes.value >= st.memory.working_set_bytes.value
        assert st.writable_layer.used_bytes.value >= 3_000_000  # /big
        listed = cri.runtime.ListContainerStats(pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(pod_sandbox_id=pod)), timeout=30).stats
        assert {s.attributes.id for s in listed} == {ctr, idle}
        (created,) = [s for s in listed if s.attributes.id == idle]
        assert not created.HasField("cpu")  # not running: no counters
        only = cri.runtime.ListContainerStats(pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(label_selector={"role": "busy"})), timeout=30).stats
        assert [s.attributes.id for s in only] == [ctr]
        out = json.loads(crictl(tools, skiffd, "stats", "-o", "json", ctr).stdout)
        assert out["stats"][0]["attributes"]["id"] == ctr
        # the pod's: its containers', summed with the pause's, its network, its processes
        ps = cri.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod),
                                         timeout=30).stats
        assert ps.attributes.id == pod and ps.attributes.metadata.name == "stats"
        assert {s.attributes.id for s in ps.linux.containers} == {ctr, idle}
        assert ps.linux.cpu.usage_core_nano_seconds.value >= st.cpu.usage_core_nano_seconds.value
        assert ps.linux.memory.usage_bytes.value > 0
        assert ps.linux.network.default_interface.name == "eth0"
        assert ps.linux.process.process_count.value >= 3  # two inits of the pause, sleep
        listed = cri.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(
            filter=pb.PodSandboxStatsFilter(label_selector={"app": "stats"})), timeout=30).stats
        assert [p.attributes.id for p in listed] == [pod]
    finally:
        crictl(tools, skiffd, "rmp", "-f", pod, check=False)


def test_container_logs_in_the_cri_format(tools: Path, skiffd: Daemon, cri: Cri,
                                          tmp_path: Path) -> None:
    podcfg = pod_config(tmp_path, "logs")
    logdir = tmp_path / "logs"
    pod = crictl(tools, skiffd, "runp", str(podcfg)).stdout.strip()
    try:
        escape = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="x"),
                                    image=pb.ImageSpec(image="busybox:latest"),
                                    log_path="../../escape.log")
        with pytest.raises(grpc.RpcError) as info:
            cri.runtime.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=escape), timeout=30)
        assert "leaves the pod's log_directory" in info.value.details()
        # a line longer than the engine's 16 KiB pieces: P pieces, then its F end
        script = ("echo first; echo to-err >&2; printf 'held '; sleep 1; echo back; "
                  "head -c 20000 /dev/zero | tr '\\0' x; echo; "
                  "while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after-reopen; sleep 300")
        cfg = container_config(tmp_path, "talker", command=["sh", "-c", script],
                               log_path="talker/0.log")
        ctr = crictl(tools, skiffd, "create", "--no-pull", pod, str(cfg),
                     str(podcfg)).stdout.strip()
        crictl(tools, skiffd, "start", ctr)
        path = logdir / "talker" / "0.log"
        st = json.loads(crictl(tools, skiffd, "inspect", "-o", "json", ctr).stdout)["status"]
        assert st["logPath"] == str(path)
        poll(lambda: path.exists() and path.read_text().count("\n") >= 5, timeout=20,
             what="five log lines")
        lines = path.read_text().splitlines()
        parsed = [line.split(" ", 3) for line in lines]
        # each stream in its order (two pipes: no order between them)
        assert [(p[2], p[3]) for p in parsed if p[1] == "stderr"] == [("F", "to-err")]
        out = [(p[2], p[3]) for p in parsed if p[1] == "stdout"]
        assert out[:2] == [("F", "first"), ("F", "held back")]
        pieces = out[2:]
        assert [p[0] for p in pieces] == ["P", "F"]
        assert "".join(p[1] for p in pieces) == "x" * 20000
        for p in parsed:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", p[0]), p[0]
        # crictl logs reads the file back, as kubelet does
        out = crictl(tools, skiffd, "logs", ctr)
        assert "first" in out.stdout and "to-err" in out.stderr
        # kubelet's rotation: move the file, ReopenContainerLog, output goes to a new one
        path.rename(path.with_name("0.log.1"))
        crictl(tools, skiffd, "logs", "--reopen", ctr, check=False)
        cri.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=ctr),
                                       timeout=10)
        assert path.exists()
        cri.runtime.ExecSync(pb.ExecSyncRequest(container_id=ctr, cmd=["touch", "/tmp/go"],
                                                timeout=10), timeout=30)
        poll(lambda: "after-reopen" in path.read_text(), timeout=20, what="the new log")
        assert "after-reopen" not in path.with_name("0.log.1").read_text()
        crictl(tools, skiffd, "stop", "--timeout", "0", ctr)
        with pytest.raises(grpc.RpcError) as info:
            cri.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=ctr),
                                           timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        crictl(tools, skiffd, "rmp", "-f", pod, check=False)


def test_docker_and_cri_each_see_their_own(tools: Path, skiffd: Daemon, tmp_path: Path) -> None:
    """A Docker-API container and a CRI pod side by side on one skiffd."""
    podcfg = pod_config(tmp_path, "side")
    pod = crictl(tools, skiffd, "runp", str(podcfg)).stdout.strip()
    ctr = crictl(tools, skiffd, "create", "--no-pull", pod,
                 str(container_config(tmp_path, "side")), str(podcfg)).stdout.strip()
    docker_ctr = skiffd.docker("run", "-d", "busybox", "sleep", "60",
                               check=True).stdout.decode().strip()
    try:
        assert docker_ctr in docker_ps_ids(skiffd)
        assert not {pod, ctr} & set(docker_ps_ids(skiffd))
        assert crictl(tools, skiffd, "ps", "-a", "-q").stdout.split() == [ctr]
        assert crictl(tools, skiffd, "pods", "-q").stdout.split() == [pod]
    finally:
        skiffd.docker("rm", "-f", docker_ctr)
        crictl(tools, skiffd, "rmp", "-f", pod, check=False)


def test_update_container_resources(tools: Path, skiffd: Daemon, cri: Cri,
                                    tmp_path: Path) -> None:
    podcfg = pod_config(tmp_path, "resize")
    pod = crictl(tools, skiffd, "runp", str(podcfg)).stdout.strip()
    try:
        ctr = crictl(tools, skiffd, "create", "--no-pull", pod,
                     str(container_config(tmp_path, "grow")), str(podcfg)).stdout.strip()
        crictl(tools, skiffd, "start", ctr)
        cri.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
            container_id=ctr, linux=pb.LinuxContainerResources(
                memory_limit_in_bytes=64 << 20, cpu_shares=512)), timeout=30)
        hc = json.loads(skiffd.docker("inspect", ctr, check=True).stdout)[0]["HostConfig"]
        assert (hc["Memory"], hc["CpuShares"]) == (64 << 20, 512)
        parent = skiffd.config["cgroup-parent"]
        v1 = Path(f"/sys/fs/cgroup/memory/{parent}/{ctr}/memory.limit_in_bytes")
        v2 = Path(f"/sys/fs/cgroup/{parent}/{ctr}/memory.max")
        limit = (v1 if v1.exists() else v2).read_text().strip()
        assert int(limit) == 64 << 20
        with pytest.raises(grpc.RpcError) as info:
            cri.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
                container_id=ctr, linux=pb.LinuxContainerResources(cpuset_cpus="bogus")),
                timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cpuset" in info.value.details()
    finally:
        crictl(tools, skiffd, "rmp", "-f", pod, check=False)
