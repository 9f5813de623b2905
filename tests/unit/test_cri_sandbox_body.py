"""What a PodSandboxConfig becomes in the engine's create body, and what is
refused by name (core/cri/sandboxes.py; the running pod is in tests/e2e/test_cri.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skiff.core.cri.namespace import NAMESPACE_LABEL, asks_for_cri, in_cri_namespace
from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.cri.sandboxes import PAUSE_COMMAND, PAUSE_IMAGE, create_body, sandbox_name
from skiff.core.cri.sysctls import plan
from skiff.core.errors import InvalidParameter

MD = pb.PodSandboxMetadata(name="web", uid="u1", namespace="ns", attempt=2)


def config(**kw: object) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(metadata=MD, **kw)


def test_the_default_pod() -> None:
    body = create_body(config(hostname="h", labels={"a": "b"}), "bridge")
    hc = body["HostConfig"]
    assert body["Image"] == PAUSE_IMAGE and body["Cmd"] == PAUSE_COMMAND
    assert hc["Init"] and hc["NetworkMode"] == "bridge" and hc["IpcMode"] == "shareable"
    assert hc["PidMode"] == "" and body["Hostname"] == "h"
    assert in_cri_namespace(body)
    record = json.loads(body["Labels"]["io.skiff.cri.sandbox"])
    assert record["metadata"] == {"name": "web", "uid": "u1", "namespace": "ns", "attempt": 2}
    assert record["labels"] == {"a": "b"}
    assert sandbox_name(config()) == "k8s_POD_web_ns_u1_2"


def test_host_namespaces_dns_ports_and_security() -> None:
    host = create_body(config(hostname="h", linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(
            network=pb.NODE, pid=pb.NODE, ipc=pb.NODE)))), "bridge")
    assert host["HostConfig"]["NetworkMode"] == "host"
    assert host["HostConfig"]["PidMode"] == "host" and host["HostConfig"]["IpcMode"] == "host"
    assert "Hostname" not in host  # the host's own
    pod = create_body(config(
        dns_config=pb.DNSConfig(servers=["10.0.0.10"], searches=["svc.local"],
                                options=["ndots:5"]),
        port_mappings=[pb.PortMapping(protocol=pb.UDP, container_port=53, host_port=5353,
                                      host_ip="127.0.0.1"),
                       pb.PortMapping(container_port=80)],
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            privileged=True, readonly_rootfs=True, supplemental_groups=[5, 6],
            run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=1001),
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)))),
        "bridge")
    hc = pod["HostConfig"]
    assert (hc["Dns"], hc["DnsSearch"], hc["DnsOptions"]) == (["10.0.0.10"], ["svc.local"],
                                                              ["ndots:5"])
    assert hc["PortBindings"] == {"53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}]}
    assert pod["ExposedPorts"] == {"53/udp": {}}
    assert hc["Privileged"] and hc["ReadonlyRootfs"] and hc["GroupAdd"] == ["5", "6"]
    assert pod["User"] == "1000:1001" and hc["SecurityOpt"] == ["seccomp=unconfined"]


@pytest.mark.parametrize("cfg,words", [
    (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="x")), "metadata"),
    (config(linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pb.TARGET)))), "TARGET"),
    (config(linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.POD))))),
     "user namespace"),
    (config(linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        selinux_options=pb.SELinuxOption(type="t")))), "SELinux"),
    (config(linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost,
                                   localhost_ref="/no/such/profile.json")))), "cannot read it"),
    (config(linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost,
                                   localhost_ref="rel.json")))), "absolute path"),
])
def test_refused_by_name(cfg: pb.PodSandboxConfig, words: str) -> None:
    with pytest.raises(InvalidParameter, match=words):
        create_body(cfg, "bridge")


def test_ports_need_a_network() -> None:
    with pytest.raises(InvalidParameter, match="port mappings need a pod network"):
        create_body(config(port_mappings=[pb.PortMapping(container_port=80, host_port=8080)]),
                    "none")


def test_cgroup_parent_is_the_sandboxs() -> None:
    for parent in ("/kubepods/burstable/pod1", "kubepods"):
        hc = create_body(config(linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent)),
                         "bridge")["HostConfig"]
        assert hc["CgroupParent"] == parent
    hc = create_body(config(linux=pb.LinuxPodSandboxConfig(
        sysctls={"kernel.shm_rmid_forced": "1"})), "bridge")["HostConfig"]
    assert "Sysctls" not in hc and "CgroupParent" not in hc  # sysctls: the CRI's own


def test_sysctls_plan() -> None:
    planned = plan({"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100",
                    "net/ipv4/ip_unprivileged_port_start": "80",
                    "net.ipv4.conf.eth0/1.forwarding": "1"}, host_network=False,
                   host_ipc=False)
    assert planned == [("ipc", "fs/mqueue/msg_max", "100"),
                       ("ipc", "kernel/shm_rmid_forced", "1"),
                       ("net", "net/ipv4/conf/eth0.1/forwarding", "1"),
                       ("net", "net/ipv4/ip_unprivileged_port_start", "80")]
    for bad, why in (({"vm.swappiness": "1"}, "not namespaced"),
                     ({"kernel.hostname": "x"}, "not namespaced"),
                     ({"net.ipv4.ip_forward": "1\n2"}, "invalid value"),
                     ({"net.ipv4/../../x": "1"}, "not a sysctl name"),
                     ({"../etc": "1"}, "not a sysctl name")):
        with pytest.raises(InvalidParameter, match=why):
            plan(bad, host_network=False, host_ipc=False)
    with pytest.raises(InvalidParameter, match="host's network"):
        plan({"net.ipv4.ip_forward": "1"}, host_network=True, host_ipc=False)
    with pytest.raises(InvalidParameter, match="host's IPC"):
        plan({"kernel.shmmax": "1"}, host_network=False, host_ipc=True)


def test_docker_ps_filter_asks_for_the_namespace() -> None:
    assert asks_for_cri([NAMESPACE_LABEL]) and asks_for_cri([f"{NAMESPACE_LABEL}=k8s.io"])
    assert not asks_for_cri(["app=web"]) and not asks_for_cri([])


def test_a_localhost_seccomp_profile_is_read_here(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    hc = create_body(config(linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(seccomp=pb.SecurityProfile(
            profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(profile))))),
        "bridge")["HostConfig"]
    assert hc["SecurityOpt"] == ['seccomp={"defaultAction": "SCMP_ACT_ALLOW"}']
