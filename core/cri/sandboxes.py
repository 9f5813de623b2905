"""Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
PodSandboxStatus and ListPodSandbox on the engine's containers.

A sandbox is an engine container in the CRI's namespace (``namespace.py``:
hidden from ``docker ps``) whose process is the pause: skiff-init in its
``--pause`` mode (under ``--init``'s skiff-init as PID 1), in a local image
with one empty layer made on first use, so nothing is pulled.  It holds the
pod's network, IPC and UTS namespaces (and PID when the pod asks).  The CRI's
record of it (metadata, labels, annotations, creation time) is kept in the
container's labels, so it survives a daemon restart with the container.

What a pod asks that skiff cannot honour is refused (INVALID_ARGUMENT, naming
it), never dropped.  A pod's cgroup parent is its sandbox's ``CgroupParent``,
and its containers' (``containers.create_body``).  Sysctls are the CRI's own
(``sysctls.py``): written in the pod's namespaces once the pause holds them.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
from typing import TYPE_CHECKING, Any

import grpc
import trio

from skiff.core.containers.resources import cgroup_procs, network_stats
from skiff.core.cri import sysctls
from skiff.core.cri.filters import chosen
from skiff.core.cri.namespace import NAMESPACE, NAMESPACE_LABEL
from skiff.core.cri.records import parsed
from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.cri.security import seccomp_opts
from skiff.core.cri.service import Calls
from skiff.core.errors import InvalidParameter, NotFound
from skiff.core.images.archives.importer import import_tarball
from skiff.core.images.errors import ImageNotFound

if TYPE_CHECKING:
    from skiff.core.containers.model import Container
    from skiff.core.cri.containers import Containers
    from skiff.core.engine import Engine

#: the pause image, made locally from an empty layer (the process is skiff-init)
PAUSE_IMAGE = "skiff.local/cri-pause:1"
PAUSE_COMMAND = ["/sbin/docker-init", "--pause"]
KIND_LABEL = "io.skiff.cri.kind"
RECORD_LABEL = "io.skiff.cri.sandbox"
#: seconds a sandbox's pause gets to exit on SIGTERM before SIGKILL
STOP_TIMEOUT = 2

_PROTOCOLS = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}


def _refuse(what: str) -> InvalidParameter:
    return InvalidParameter(f"{what} is not supported by skiff's CRI yet (docs/cri.md)")


def create_body(config: pb.PodSandboxConfig, default_network: str) -> dict[str, Any]:
    """The engine's create body of a pod's sandbox (Docker's shape)."""
    md = config.metadata
    if not (md.name and md.uid and md.namespace):
        raise InvalidParameter("the sandbox config needs metadata with name, uid and namespace")
    linux = config.linux
    sc = linux.security_context
    ns = sc.namespace_options
    if ns.network == pb.TARGET or ns.pid == pb.TARGET or ns.ipc == pb.TARGET:
        raise _refuse("a TARGET namespace for a pod")
    if ns.HasField("userns_options") and ns.userns_options.mode != pb.NODE:
        raise _refuse("a user namespace for a pod")
    if sc.HasField("selinux_options") and any((sc.selinux_options.user, sc.selinux_options.role,
                                                sc.selinux_options.type,
                                                sc.selinux_options.level)):
        raise _refuse("SELinux options")
    host_network = ns.network == pb.NODE
    network = "host" if host_network else default_network
    hc: dict[str, Any] = {
        "Init": True,
        "NetworkMode": network,
        "IpcMode": "host" if ns.ipc == pb.NODE else "shareable",
        "PidMode": "host" if ns.pid == pb.NODE else "",
        "Privileged": sc.privileged,
        "ReadonlyRootfs": sc.readonly_rootfs,
        "RestartPolicy": {"Name": "no"},
    }
    if linux.cgroup_parent:
        # kubelet's pod group (--cgroups-per-qos); the pod's containers go there too
        hc["CgroupParent"] = linux.cgroup_parent
    if sc.supplemental_groups:
        hc["GroupAdd"] = [str(g) for g in sc.supplemental_groups]
    seccomp = seccomp_opts(sc)
    if seccomp:
        hc["SecurityOpt"] = seccomp
    if config.HasField("dns_config") and not host_network:
        hc["Dns"] = list(config.dns_config.servers)
        hc["DnsSearch"] = list(config.dns_config.searches)
        hc["DnsOptions"] = list(config.dns_config.options)
    body: dict[str, Any] = {"Image": PAUSE_IMAGE, "Cmd": PAUSE_COMMAND, "HostConfig": hc}
    if config.port_mappings and not host_network:
        if network == "none":
            raise InvalidParameter("port mappings need a pod network; this skiffd has none "
                                   "(no bridge)")
        ports: dict[str, list[dict[str, str]]] = {}
        for pm in config.port_mappings:
            key = f"{pm.container_port}/{_PROTOCOLS.get(pm.protocol, 'tcp')}"
            if pm.host_port:
                ports.setdefault(key, []).append({"HostIp": pm.host_ip,
                                                  "HostPort": str(pm.host_port)})
        body["ExposedPorts"] = {k: {} for k in ports}
        hc["PortBindings"] = ports
    if config.hostname and not host_network:
        body["Hostname"] = config.hostname
    if sc.HasField("run_as_user"):
        group = f":{sc.run_as_group.value}" if sc.HasField("run_as_group") else ""
        body["User"] = f"{sc.run_as_user.value}{group}"
    record = {
        "metadata": {"name": md.name, "uid": md.uid, "namespace": md.namespace,
                     "attempt": md.attempt},
        "labels": dict(config.labels), "annotations": dict(config.annotations),
        "created": time.time_ns(), "log_directory": config.log_directory,
        "host_network": host_network, "ipc": ns.ipc, "pid": ns.pid,
    }
    body["Labels"] = {NAMESPACE_LABEL: NAMESPACE, KIND_LABEL: "sandbox",
                      RECORD_LABEL: json.dumps(record, sort_keys=True)}
    return body


def sandbox_name(config: pb.PodSandboxConfig) -> str:
    md = config.metadata
    return f"k8s_POD_{md.name}_{md.namespace}_{md.uid}_{md.attempt}"


def record_of(c: Container) -> dict[str, Any] | None:
    """The CRI's record of sandbox ``c`` (shared: never change it), None when
    ``c`` is no sandbox."""
    labels = c.config.get("Labels") or {}
    if labels.get(KIND_LABEL) != "sandbox" or NAMESPACE_LABEL not in labels:
        return None
    return parsed(str(labels.get(RECORD_LABEL, "")))


def _metadata(record: dict[str, Any]) -> pb.PodSandboxMetadata:
    md = record.get("metadata") or {}
    return pb.PodSandboxMetadata(name=md.get("name", ""), uid=md.get("uid", ""),
                                 namespace=md.get("namespace", ""),
                                 attempt=int(md.get("attempt", 0)))


def _state(c: Container) -> pb.PodSandboxState:
    return pb.SANDBOX_READY if c.state.Running else pb.SANDBOX_NOTREADY


def _ip(c: Container) -> str:
    # a copy of the values first: the loop may join or leave a network meanwhile
    for net in list((c.networks or {}).values()):
        ip = net.get("IPAddress")
        if ip:
            return str(ip)
    return ""


class Sandboxes:
    """The sandbox RPCs; ``RuntimeService`` delegates to them.

    Read off the loop: the status and list RPCs (of pods here, of containers in
    ``containers.py``) answer on gRPC's thread, not the loop's (``Calls.read``).
    What they read, and who writes it:

    * ``engine.containers.by_id``: a dict the loop adds to and removes from;
      ``get`` and ``list(values())`` are single operations under the GIL, so a
      lookup sees a container either registered or not, never a dict mid-change.
    * the CRI record: the container's labels, written at create, never after.
    * ``c.state``: the loop replaces the whole ``State`` at start, exit and
      restart, so a reader that takes ``c.state`` once sees one of them; the
      fields set one by one (a failed start's error and exit code, pause,
      "removing") are each a value a status may show.
    * ``c.networks``: the loop's, read as a copy of its values (an IP per network).

    A lookup answered while the loop is between two of those writes answers
    the state just before or just after, as a call through the loop would have
    a moment earlier or later.  Nothing here writes.
    """

    def __init__(self, engine: Engine, calls: Calls, containers: Containers) -> None:
        self.engine = engine
        self.calls = calls
        self.containers = containers
        #: pods started together make the pause image once
        self._pause_lock = trio.Lock()

    # -- helpers (on the trio loop) ---------------------------------------------------------

    def _all(self) -> list[tuple[Container, dict[str, Any]]]:
        out = []
        for c in list(self.engine.containers.by_id.values()):
            record = record_of(c)
            if record is not None:
                out.append((c, record))
        return out

    def _find(self, ref: str) -> tuple[Container, dict[str, Any]] | None:
        if not ref:
            raise InvalidParameter("the pod sandbox ID is empty")
        c = self.engine.containers.by_id.get(ref)  # kubelet's: the full ID
        if c is not None:
            record = record_of(c)
            return (c, record) if record is not None else None
        found = [(c, r) for c, r in self._all() if c.id.startswith(ref)]
        if len(found) > 1:
            raise InvalidParameter(f"pod sandbox ID {ref!r} is ambiguous")
        return found[0] if found else None

    async def _pause_image(self) -> None:
        engine = self.engine
        async with self._pause_lock:
            try:
                engine.images.get(PAUSE_IMAGE)
                return
            except ImageNotFound:
                pass
            empty = io.BytesIO()
            tarfile.open(fileobj=empty, mode="w").close()
            empty.seek(0)
            await engine.to_thread(import_tarball, empty, engine.layers, engine.images,
                                   PAUSE_IMAGE, [],
                                   "skiff's CRI pause image (skiff-init --pause)")

    # -- the RPCs -----------------------------------------------------------------------

    def run(self, request: pb.RunPodSandboxRequest, context: grpc.ServicerContext
            ) -> pb.RunPodSandboxResponse:
        engine = self.engine
        handler = request.runtime_handler

        async def work() -> str:
            if handler not in ("", engine.runtime_name):
                raise InvalidParameter(
                    f"runtime handler {handler!r} is not configured; skiff has "
                    f"{engine.runtime_name!r} (or leave it empty)")
            # off the loop: a Localhost seccomp profile is a file to read
            body = await engine.to_thread(create_body, request.config,
                                          engine.resolve_network_mode("default"))
            ns = request.config.linux.security_context.namespace_options
            planned = sysctls.plan(dict(request.config.linux.sysctls),
                                   host_network=ns.network == pb.NODE,
                                   host_ipc=ns.ipc == pb.NODE)
            await self._pause_image()
            cid, _ = await engine.containers.create(body, sandbox_name(request.config))
            try:
                await engine.containers.start(cid)
                if planned:
                    pid = engine.containers.by_id[cid].state.Pid
                    await engine.to_thread(sysctls.apply, pid, planned)
            except BaseException:
                # a pod that did not start is no pod: gone even when the call was cancelled
                with trio.CancelScope(shield=True):
                    await engine.containers.remove(cid, force=True)
                raise
            return cid

        return pb.RunPodSandboxResponse(pod_sandbox_id=self.calls.run(context, "RunPodSandbox",
                                                                      work))

    def stop(self, request: pb.StopPodSandboxRequest, context: grpc.ServicerContext
             ) -> pb.StopPodSandboxResponse:
        async def work() -> None:
            found = self._find(request.pod_sandbox_id)
            if found is None:
                return  # idempotent, as the CRI asks
            c, _ = found
            # the pod's containers first (kubelet stopped them already, with its grace)
            async with trio.open_nursery() as nursery:
                for member in self.containers.of_sandbox(c.id):
                    nursery.start_soon(self.containers.stop_container, member, 0)
            if c.state.Running:
                await self.engine.containers.stop(c.id, STOP_TIMEOUT)

        self.calls.run(context, "StopPodSandbox", work)
        return pb.StopPodSandboxResponse()

    def remove(self, request: pb.RemovePodSandboxRequest, context: grpc.ServicerContext
               ) -> pb.RemovePodSandboxResponse:
        async def work() -> None:
            found = self._find(request.pod_sandbox_id)
            if found is None:
                return  # idempotent
            with trio.CancelScope(shield=True):  # never half-removed
                for member in self.containers.of_sandbox(found[0].id):
                    await self.containers.remove_container(member)
                try:
                    await self.engine.containers.remove(found[0].id, force=True)
                except NotFound:
                    return  # removed meanwhile

        self.calls.run(context, "RemovePodSandbox", work)
        return pb.RemovePodSandboxResponse()

    def status(self, request: pb.PodSandboxStatusRequest, context: grpc.ServicerContext
               ) -> pb.PodSandboxStatusResponse:
        # on gRPC's thread (Calls.read): safe off the loop, see Sandboxes
        def work() -> pb.PodSandboxStatusResponse:
            found = self._find(request.pod_sandbox_id)
            if found is None:
                raise NotFound(f"pod sandbox {request.pod_sandbox_id!r} not found")
            c, record = found
            st = c.state  # one State: the loop replaces it whole at start and exit
            options = pb.NamespaceOption(
                network=pb.NODE if record.get("host_network") else pb.POD,
                pid=pb.NamespaceMode.Name(int(record.get("pid", pb.CONTAINER))),
                ipc=pb.NamespaceMode.Name(int(record.get("ipc", pb.POD))))
            status = pb.PodSandboxStatus(
                id=c.id, metadata=_metadata(record),
                state=pb.SANDBOX_READY if st.Running else pb.SANDBOX_NOTREADY,
                created_at=int(record.get("created", 0)),
                network=pb.PodSandboxNetworkStatus(ip=_ip(c)),
                linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=options)),
                labels=record.get("labels") or {}, annotations=record.get("annotations") or {},
                runtime_handler="")
            reply = pb.PodSandboxStatusResponse(status=status)
            if request.verbose:
                reply.info["info"] = json.dumps({"pid": st.Pid, "name": c.name,
                                                 "image": PAUSE_IMAGE})
            return reply

        return self.calls.read(context, "PodSandboxStatus", work)

    def list(self, request: pb.ListPodSandboxRequest, context: grpc.ServicerContext
             ) -> pb.ListPodSandboxResponse:
        flt = request.filter if request.HasField("filter") else None

        # on gRPC's thread (Calls.read): safe off the loop, see Sandboxes
        def work() -> list[pb.PodSandbox]:
            out = []
            for c, record in sorted(self._all(), key=lambda x: x[0].created):
                state = _state(c)
                if not chosen(c.id, record, flt, state):
                    continue
                out.append(pb.PodSandbox(
                    id=c.id, metadata=_metadata(record), state=state,
                    created_at=int(record.get("created", 0)), labels=record.get("labels") or {},
                    annotations=record.get("annotations") or {}, runtime_handler=""))
            return out

        return pb.ListPodSandboxResponse(items=self.calls.read(context, "ListPodSandbox", work))

    # -- stats -------------------------------------------------------------------------

    def _stats(self, c: Container, record: dict[str, Any]) -> pb.PodSandboxStats:
        """One sample of a pod (blocking: call in a thread): its containers'
        samples, their CPU and memory summed with the pause's, the pod's
        network counters and process count."""
        now = time.time_ns()
        members = [(m, r) for m, r in self.containers.all() if r.get("sandbox") == c.id]
        samples = [self.containers.sample(m, r) for m, r in members]
        stats = pb.PodSandboxStats(attributes=pb.PodSandboxAttributes(
            id=c.id, metadata=_metadata(record), labels=record.get("labels") or {},
            annotations=record.get("annotations") or {}))
        linux = stats.linux
        linux.containers.extend(samples)
        pause = self.containers.sample(c, {})  # the pause's own counters
        every = [pause, *samples]
        with_cpu = [s for s in every if s.HasField("cpu")]
        if with_cpu:
            linux.cpu.timestamp = now
            linux.cpu.usage_core_nano_seconds.value = sum(
                s.cpu.usage_core_nano_seconds.value for s in with_cpu)
        with_memory = [s for s in every if s.HasField("memory")]
        if with_memory:
            linux.memory.timestamp = now
            for field in ("working_set_bytes", "usage_bytes", "rss_bytes", "page_faults",
                          "major_page_faults"):
                getattr(linux.memory, field).value = sum(
                    getattr(s.memory, field).value for s in with_memory)
        if c.state.Running and c.state.Pid:
            counters = network_stats(int(c.state.Pid))
            if counters:
                linux.network.timestamp = now
                for name, n in sorted(counters.items()):
                    usage = pb.NetworkInterfaceUsage(name=name)
                    usage.rx_bytes.value = n.get("rx_bytes", 0)
                    usage.rx_errors.value = n.get("rx_errors", 0)
                    usage.tx_bytes.value = n.get("tx_bytes", 0)
                    usage.tx_errors.value = n.get("tx_errors", 0)
                    linux.network.interfaces.append(usage)
                default = "eth0" if "eth0" in counters else sorted(counters)[0]
                linux.network.default_interface.CopyFrom(
                    next(i for i in linux.network.interfaces if i.name == default))
        if self.engine.cgroups is not None:
            count = 0
            for m in [c, *(m for m, _ in members)]:
                if m.state.Running:
                    with contextlib.suppress(Exception):  # stopped meanwhile
                        count += len(cgroup_procs(self.engine.cgroups, m.id))
            linux.process.timestamp = now
            linux.process.process_count.value = count
        return stats

    def stats(self, request: pb.PodSandboxStatsRequest, context: grpc.ServicerContext
              ) -> pb.PodSandboxStatsResponse:
        async def work() -> pb.PodSandboxStats:
            found = self._find(request.pod_sandbox_id)
            if found is None:
                raise NotFound(f"pod sandbox {request.pod_sandbox_id!r} not found")
            return await self.engine.to_thread(self._stats, *found)

        return pb.PodSandboxStatsResponse(stats=self.calls.run(context, "PodSandboxStats", work))

    def list_stats(self, request: pb.ListPodSandboxStatsRequest,
                   context: grpc.ServicerContext) -> pb.ListPodSandboxStatsResponse:
        flt = request.filter if request.HasField("filter") else None

        async def work() -> list[pb.PodSandboxStats]:
            picked = [(c, record) for c, record in sorted(self._all(), key=lambda x: x[0].created)
                      if chosen(c.id, record, flt)]
            return await self.engine.to_thread(lambda: [self._stats(*x) for x in picked])

        return pb.ListPodSandboxStatsResponse(
            stats=self.calls.run(context, "ListPodSandboxStats", work))
