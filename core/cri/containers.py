"""Containers in pods: CreateContainer, StartContainer, StopContainer,
RemoveContainer, ListContainers and ContainerStatus on the engine's containers.

A pod's container is an engine container in the CRI's namespace that joins
its sandbox's network and IPC namespaces (and PID when the pod shares it),
with the CRI's record (metadata, sandbox, labels, annotations, creation time)
in its labels, as sandboxes keep theirs.  What skiff cannot honour yet is
refused by name (INVALID_ARGUMENT), never dropped.  A container's output is
written in the CRI's log format at its ``log_path`` (``logs.py``), where
kubelet reads it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import struct
import time
from typing import TYPE_CHECKING, Any

import grpc
import trio

from skiff.core.containers import limits
from skiff.core.containers.resources import merge_update
from skiff.core.cri.filters import chosen
from skiff.core.cri.logs import CriLogs
from skiff.core.cri.namespace import NAMESPACE, NAMESPACE_LABEL
from skiff.core.cri.records import parsed
from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.cri.sandboxes import KIND_LABEL, record_of
from skiff.core.cri.security import seccomp_opts
from skiff.core.cri.service import Calls
from skiff.core.errors import Conflict, InvalidParameter, NotFound, SkiffError, Timeout
from skiff.core.hookspecs import StartError
from skiff.core.timefmt import parse_rfc3339

if TYPE_CHECKING:
    from skiff.core.containers.model import Container, State
    from skiff.core.engine import Engine

RECORD_LABEL = "io.skiff.cri.container"

_PROPAGATION = {pb.PROPAGATION_PRIVATE: "rprivate", pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
                pb.PROPAGATION_BIDIRECTIONAL: "rshared"}


#: ExecSync keeps this much of each stream (kubelet's own cap on probe output is
#: far lower); the rest is dropped, the exec still runs to its end
MAX_EXEC_OUTPUT = 16 << 20
#: after killing a timed-out ExecSync, how long to wait for its reaping
KILL_WAIT = 5.0


class Demux(trio.abc.Stream):
    """The sink of an ExecSync: Docker's multiplexed frames (an 8-byte header:
    stream, 3 zero bytes, length) split back into stdout and stderr."""

    def __init__(self, limit: int = MAX_EXEC_OUTPUT) -> None:
        self.limit = limit
        self.pending = b""
        self.out = {1: bytearray(), 2: bytearray()}

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.pending += bytes(data)
        while len(self.pending) >= 8:
            kind, size = self.pending[0], struct.unpack(">I", self.pending[4:8])[0]
            if len(self.pending) < 8 + size:
                break
            chunk, self.pending = self.pending[8:8 + size], self.pending[8 + size:]
            buf = self.out.get(kind)
            if buf is not None and len(buf) < self.limit:
                buf += chunk[: self.limit - len(buf)]

    async def wait_send_all_might_not_block(self) -> None:
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return b""  # ExecSync has no stdin

    async def aclose(self) -> None:
        return None


def _refuse(what: str) -> InvalidParameter:
    return InvalidParameter(f"{what} is not supported by skiff's CRI yet (docs/cri.md)")


def _user(sc: pb.LinuxContainerSecurityContext) -> str:
    if sc.run_as_username:
        user = sc.run_as_username
    elif sc.HasField("run_as_user"):
        user = str(sc.run_as_user.value)
    elif sc.HasField("run_as_group"):
        raise InvalidParameter("run_as_group is set without run_as_user or run_as_username")
    else:
        return ""
    return user + (f":{sc.run_as_group.value}" if sc.HasField("run_as_group") else "")


def create_body(config: pb.ContainerConfig, sandbox: Container,
                sandbox_record: dict[str, Any]) -> dict[str, Any]:
    """The engine's create body of a container in ``sandbox``."""
    md = config.metadata
    if not md.name:
        raise InvalidParameter("the container config needs metadata with a name")
    if not config.image.image:
        raise InvalidParameter("the container config names no image")
    log_path = ""
    if config.log_path:
        log_dir = str(sandbox_record.get("log_directory") or "")
        if not log_dir:
            raise InvalidParameter("the container has a log_path but its pod sandbox no "
                                   "log_directory to put it in")
        log_path = os.path.normpath(os.path.join(log_dir, config.log_path))
        if not log_path.startswith(os.path.normpath(log_dir) + "/"):
            raise InvalidParameter(f"log_path {config.log_path!r} leaves the pod's "
                                   "log_directory")
    linux = config.linux
    sc = linux.security_context
    if sc.HasField("selinux_options") and any((sc.selinux_options.user, sc.selinux_options.role,
                                                sc.selinux_options.type,
                                                sc.selinux_options.level)):
        raise _refuse("SELinux options")
    if sc.apparmor.profile_type == pb.SecurityProfile.Localhost or sc.apparmor_profile:
        raise _refuse("an AppArmor profile")
    if sc.seccomp_profile_path:
        raise _refuse("seccomp_profile_path (deprecated; use seccomp)")
    ns = sc.namespace_options
    if ns.HasField("userns_options") and ns.userns_options.mode != pb.NODE:
        raise _refuse("a user namespace for a container")
    res = linux.resources
    if res.hugepage_limits or res.unified:
        raise _refuse("hugepage limits and unified cgroup settings")
    pod = f"container:{sandbox.id}"
    pod_ipc = int(sandbox_record.get("ipc", pb.POD))
    hc: dict[str, Any] = {
        "NetworkMode": "host" if sandbox_record.get("host_network") else pod,
        "IpcMode": "host" if pod_ipc == pb.NODE else pod,
        "Privileged": sc.privileged,
        "ReadonlyRootfs": sc.readonly_rootfs,
        "RestartPolicy": {"Name": "no"},
    }
    if parent := sandbox.host_config.get("CgroupParent"):
        hc["CgroupParent"] = parent  # under the pod's group, as kubelet's accounting needs
    if ns.pid == pb.NODE:
        hc["PidMode"] = "host"
    elif ns.pid == pb.POD:
        hc["PidMode"] = pod
    elif ns.pid == pb.TARGET:
        if not ns.target_id:
            raise InvalidParameter("a TARGET PID namespace needs target_id")
        hc["PidMode"] = f"container:{ns.target_id}"
    # kubelet sends its lists for every container (its defaults, or none for
    # procMount Unmasked); none given: the engine's (Docker's) defaults, as
    # containerd keeps its own then; privileged clears them, in the engine
    if sc.masked_paths:
        hc["MaskedPaths"] = list(sc.masked_paths)
    if sc.readonly_paths:
        hc["ReadonlyPaths"] = list(sc.readonly_paths)
    if sc.HasField("capabilities"):
        caps = sc.capabilities
        if caps.add_ambient_capabilities:
            raise _refuse("ambient capabilities")
        hc["CapAdd"] = list(caps.add_capabilities)
        hc["CapDrop"] = list(caps.drop_capabilities)
    if sc.supplemental_groups:
        hc["GroupAdd"] = [str(g) for g in sc.supplemental_groups]
    security = []
    if sc.no_new_privs:
        security.append("no-new-privileges")
    security.extend(seccomp_opts(sc))
    if security:
        hc["SecurityOpt"] = security
    binds = []
    for m in config.mounts:
        if not (m.host_path and m.container_path):
            raise InvalidParameter("a mount needs host_path and container_path")
        mode = "ro" if m.readonly else "rw"
        binds.append(f"{m.host_path}:{m.container_path}:{mode},"
                     f"{_PROPAGATION.get(m.propagation, 'rprivate')}")
    if binds:
        hc["Binds"] = binds
    if config.devices:
        hc["Devices"] = [{"PathOnHost": d.host_path, "PathInContainer": d.container_path,
                          "CgroupPermissions": d.permissions or "rwm"} for d in config.devices]
    for field, key in (("cpu_period", "CpuPeriod"), ("cpu_quota", "CpuQuota"),
                       ("cpu_shares", "CpuShares"), ("memory_limit_in_bytes", "Memory"),
                       ("oom_score_adj", "OomScoreAdj"),
                       ("memory_swap_limit_in_bytes", "MemorySwap")):
        value = getattr(res, field)
        if value:
            hc[key] = value
    if res.cpuset_cpus:
        hc["CpusetCpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        hc["CpusetMems"] = res.cpuset_mems
    body: dict[str, Any] = {
        "Image": config.image.image,
        "Env": [f"{kv.key}={kv.value}" for kv in config.envs],
        "Tty": config.tty, "OpenStdin": config.stdin, "StdinOnce": config.stdin_once,
        "HostConfig": hc,
    }
    if config.command:
        body["Entrypoint"] = list(config.command)
        body["Cmd"] = list(config.args)  # no image Cmd after a command, as kubelet means it
    elif config.args:
        body["Cmd"] = list(config.args)
    if config.working_dir:
        body["WorkingDir"] = config.working_dir
    user = _user(sc)
    if user:
        body["User"] = user
    record = {
        "metadata": {"name": md.name, "attempt": md.attempt}, "sandbox": sandbox.id,
        "labels": dict(config.labels), "annotations": dict(config.annotations),
        "created": time.time_ns(), "image": config.image.image, "log_path": log_path,
        "mounts": [{"container_path": m.container_path, "host_path": m.host_path,
                    "readonly": m.readonly, "propagation": m.propagation}
                   for m in config.mounts],
    }
    body["Labels"] = {NAMESPACE_LABEL: NAMESPACE, KIND_LABEL: "container",
                      RECORD_LABEL: json.dumps(record, sort_keys=True)}
    return body


def container_name(config: pb.ContainerConfig, sandbox_record: dict[str, Any]) -> str:
    md, pod = config.metadata, sandbox_record.get("metadata") or {}
    return (f"k8s_{md.name}_{pod.get('name', '')}_{pod.get('namespace', '')}_"
            f"{pod.get('uid', '')}_{md.attempt}")


def container_record(c: Container) -> dict[str, Any] | None:
    """The CRI's record of container ``c`` (shared: never change it), None
    when ``c`` is none of the CRI's containers."""
    labels = c.config.get("Labels") or {}
    if labels.get(KIND_LABEL) != "container" or NAMESPACE_LABEL not in labels:
        return None
    return parsed(str(labels.get(RECORD_LABEL, "")))


def _state(c: Container) -> pb.ContainerState:
    return _state_of(c.state)


def _state_of(st: State) -> pb.ContainerState:
    if st.Running or st.Paused or st.Restarting:
        return pb.CONTAINER_RUNNING
    if st.Status == "created":
        return pb.CONTAINER_CREATED
    return pb.CONTAINER_EXITED


def _ns(stamp: str | None) -> int:
    """RFC 3339 to the CRI's nanoseconds; 0 for Docker's zero time."""
    if not stamp or stamp.startswith("0001-"):
        return 0
    try:
        return int(parse_rfc3339(stamp) * 1e9)
    except ValueError:
        return 0


def _metadata(record: dict[str, Any]) -> pb.ContainerMetadata:
    md = record.get("metadata") or {}
    return pb.ContainerMetadata(name=md.get("name", ""), attempt=int(md.get("attempt", 0)))


class Containers:
    """The container RPCs; ``RuntimeService`` delegates to them."""

    def __init__(self, engine: Engine, calls: Calls) -> None:
        self.engine = engine
        self.calls = calls
        self.logs = CriLogs(engine)

    def all(self) -> list[tuple[Container, dict[str, Any]]]:
        out = []
        for c in list(self.engine.containers.by_id.values()):
            record = container_record(c)
            if record is not None:
                out.append((c, record))
        return out

    def of_sandbox(self, sandbox_id: str) -> list[Container]:
        return [c for c, r in self.all() if r.get("sandbox") == sandbox_id]

    def _find(self, ref: str) -> tuple[Container, dict[str, Any]] | None:
        if not ref:
            raise InvalidParameter("the container ID is empty")
        c = self.engine.containers.by_id.get(ref)  # kubelet's: the full ID
        if c is not None:
            record = container_record(c)
            return (c, record) if record is not None else None
        found = [(c, r) for c, r in self.all() if c.id.startswith(ref)]
        if len(found) > 1:
            raise InvalidParameter(f"container ID {ref!r} is ambiguous")
        return found[0] if found else None

    def create(self, request: pb.CreateContainerRequest, context: grpc.ServicerContext
               ) -> pb.CreateContainerResponse:
        engine = self.engine

        async def work() -> str:
            sandbox = None
            for c in list(engine.containers.by_id.values()):
                if c.id.startswith(request.pod_sandbox_id or "\0"):
                    record = record_of(c)
                    if record is not None:
                        sandbox = (c, record)
                        break
            if sandbox is None:
                raise NotFound(f"pod sandbox {request.pod_sandbox_id!r} not found")
            # off the loop: a Localhost seccomp profile is a file to read
            body = await engine.to_thread(create_body, request.config, *sandbox)
            cid, _ = await engine.containers.create(body,
                                                    container_name(request.config, sandbox[1]))
            return cid

        return pb.CreateContainerResponse(
            container_id=self.calls.run(context, "CreateContainer", work))

    def start(self, request: pb.StartContainerRequest, context: grpc.ServicerContext
              ) -> pb.StartContainerResponse:
        async def work() -> None:
            found = self._find(request.container_id)
            if found is None:
                raise NotFound(f"container {request.container_id!r} not found")
            c, record = found
            if record.get("log_path") and not c.state.Running:
                self.logs.start(c.id, record["log_path"])
            try:
                await self.engine.containers.start(c.id)
            except BaseException:
                self.logs.abort(c.id)
                raise

        self.calls.run(context, "StartContainer", work)
        return pb.StartContainerResponse()

    async def stop_container(self, c: Container, timeout: int) -> None:
        if c.state.Running or c.state.Paused or c.state.Restarting:
            await self.engine.containers.stop(c.id, max(timeout, 0))

    def stop(self, request: pb.StopContainerRequest, context: grpc.ServicerContext
             ) -> pb.StopContainerResponse:
        async def work() -> None:
            found = self._find(request.container_id)
            if found is not None:  # idempotent, as the CRI asks
                await self.stop_container(found[0], int(request.timeout))

        self.calls.run(context, "StopContainer", work)
        return pb.StopContainerResponse()

    async def remove_container(self, c: Container) -> None:
        with contextlib.suppress(NotFound):  # removed meanwhile
            await self.engine.containers.remove(c.id, force=True)
        self.logs.forget(c.id)

    def reopen_log(self, request: pb.ReopenContainerLogRequest,
                   context: grpc.ServicerContext) -> pb.ReopenContainerLogResponse:
        async def work() -> None:
            found = self._find(request.container_id)
            if found is None:
                raise NotFound(f"container {request.container_id!r} not found")
            c, record = found
            if not c.state.Running:
                raise Conflict(f"container {c.id} is not running")
            if not record.get("log_path"):
                raise InvalidParameter(f"container {c.id} has no log_path")
            await self.logs.reopen(c.id)

        self.calls.run(context, "ReopenContainerLog", work)
        return pb.ReopenContainerLogResponse()

    def remove(self, request: pb.RemoveContainerRequest, context: grpc.ServicerContext
               ) -> pb.RemoveContainerResponse:
        async def work() -> None:
            found = self._find(request.container_id)
            if found is not None:  # idempotent
                with trio.CancelScope(shield=True):  # never half-removed
                    await self.remove_container(found[0])

        self.calls.run(context, "RemoveContainer", work)
        return pb.RemoveContainerResponse()

    def _message(self, c: Container, record: dict[str, Any], state: pb.ContainerState
                 ) -> pb.Container:
        return pb.Container(
            id=c.id, pod_sandbox_id=record.get("sandbox", ""), metadata=_metadata(record),
            image=pb.ImageSpec(image=record.get("image", "")), image_ref=c.image_id,
            image_id=c.image_id, state=state, created_at=int(record.get("created", 0)),
            labels=record.get("labels") or {}, annotations=record.get("annotations") or {})

    def list(self, request: pb.ListContainersRequest, context: grpc.ServicerContext
             ) -> pb.ListContainersResponse:
        flt = request.filter if request.HasField("filter") else None

        # on gRPC's thread (Calls.read): safe off the loop, see sandboxes.Sandboxes
        def work() -> list[pb.Container]:
            out = []
            for c, record in sorted(self.all(), key=lambda x: x[0].created):
                state = _state(c)
                if chosen(c.id, record, flt, state):
                    out.append(self._message(c, record, state))
            return out

        return pb.ListContainersResponse(containers=self.calls.read(context, "ListContainers",
                                                                    work))

    def status(self, request: pb.ContainerStatusRequest, context: grpc.ServicerContext
               ) -> pb.ContainerStatusResponse:
        # on gRPC's thread (Calls.read): safe off the loop, see sandboxes.Sandboxes
        def work() -> pb.ContainerStatusResponse:
            found = self._find(request.container_id)
            if found is None:
                raise NotFound(f"container {request.container_id!r} not found")
            c, record = found
            st = c.state  # one State: the loop replaces it whole at start and exit
            state = _state_of(st)
            reason = ""
            if state == pb.CONTAINER_EXITED:
                reason = ("OOMKilled" if st.OOMKilled
                          else "Completed" if st.ExitCode == 0 else "Error")
            status = pb.ContainerStatus(
                id=c.id, metadata=_metadata(record), state=state,
                created_at=int(record.get("created", 0)),
                started_at=_ns(st.StartedAt) if state != pb.CONTAINER_CREATED else 0,
                finished_at=_ns(st.FinishedAt) if state == pb.CONTAINER_EXITED else 0,
                exit_code=int(st.ExitCode or 0), image=pb.ImageSpec(
                    image=record.get("image", "")),
                image_ref=c.image_id, image_id=c.image_id, reason=reason,
                message=str(st.Error or ""),
                labels=record.get("labels") or {}, annotations=record.get("annotations") or {},
                mounts=[pb.Mount(**m) for m in record.get("mounts") or []],
                log_path=record.get("log_path", ""))
            reply = pb.ContainerStatusResponse(status=status)
            if request.verbose:
                reply.info["info"] = json.dumps({"pid": st.Pid, "name": c.name,
                                                 "sandboxID": record.get("sandbox", "")})
            return reply

        return self.calls.read(context, "ContainerStatus", work)

    def exec_sync(self, request: pb.ExecSyncRequest, context: grpc.ServicerContext
                  ) -> pb.ExecSyncResponse:
        engine = self.engine
        cmd = list(request.cmd)
        timeout = int(request.timeout)

        async def work() -> pb.ExecSyncResponse:
            found = self._find(request.container_id)
            if found is None:
                raise NotFound(f"container {request.container_id!r} not found")
            if not cmd:
                raise InvalidParameter("ExecSync needs a command")
            sink = Demux()
            exec_id = engine.execs.create(found[0].id, {"Cmd": cmd, "AttachStdout": True,
                                                        "AttachStderr": True})
            ex = engine.execs.by_id[exec_id]
            try:
                with trio.move_on_after(timeout if timeout > 0 else math.inf) as scope:
                    try:
                        await engine.execs.start(exec_id, sink, framed=True)
                    except StartError as exc:
                        # no such command and the like: the exit code a shell gives
                        return pb.ExecSyncResponse(
                            stderr=f"exec failed: {exc}\n".encode(),
                            exit_code=ex.exit_code if ex.exit_code is not None else 126)
                if scope.cancelled_caught:
                    raise Timeout(f"command {cmd!r} timed out after {timeout}s")
                return pb.ExecSyncResponse(stdout=bytes(sink.out[1]),
                                           stderr=bytes(sink.out[2]),
                                           exit_code=ex.exit_code or 0)
            finally:
                # timed out, or the client left: the process goes with the call
                if not ex.ended.is_set() and ex.process is not None:
                    ex.process.kill(signal.SIGKILL)
                    with trio.CancelScope(shield=True), trio.move_on_after(KILL_WAIT):
                        await ex.ended.wait()
                engine.execs.by_id.pop(exec_id, None)

        return self.calls.run(context, "ExecSync", work)

    # -- stats -------------------------------------------------------------------------

    def sample(self, c: Container, record: dict[str, Any]) -> pb.ContainerStats:
        """One sample (blocking: call in a thread): the cgroup's counters of a
        running container, the bytes its writable layer holds."""
        engine = self.engine
        now = time.time_ns()
        stats = pb.ContainerStats(attributes=pb.ContainerAttributes(
            id=c.id, metadata=_metadata(record), labels=record.get("labels") or {},
            annotations=record.get("annotations") or {}))
        if c.state.Running and engine.cgroups is not None:
            try:
                counters = engine.cgroups.stats(c.id)
            except (OSError, ValueError):  # it stopped meanwhile
                counters = {}
            cpu = (counters.get("cpu_stats") or {}).get("cpu_usage") or {}
            if "total_usage" in cpu:
                stats.cpu.timestamp = now
                stats.cpu.usage_core_nano_seconds.value = int(cpu["total_usage"])
            mem = counters.get("memory_stats") or {}
            if "usage" in mem:
                detail = mem.get("stats") or {}
                usage = int(mem["usage"])
                inactive = int(detail.get("total_inactive_file",
                                          detail.get("inactive_file", 0)))
                stats.memory.timestamp = now
                stats.memory.usage_bytes.value = usage
                stats.memory.working_set_bytes.value = max(usage - inactive, 0)
                stats.memory.rss_bytes.value = int(detail.get("total_rss",
                                                              detail.get("anon", 0)))
                stats.memory.page_faults.value = int(detail.get("total_pgfault",
                                                                detail.get("pgfault", 0)))
                stats.memory.major_page_faults.value = int(
                    detail.get("total_pgmajfault", detail.get("pgmajfault", 0)))
        with contextlib.suppress(Exception):  # removed meanwhile: no layer to measure
            used = engine.layers.rw_size(c.id)
            stats.writable_layer.timestamp = now
            stats.writable_layer.fs_id.mountpoint = os.path.join(engine.data_root,
                                                                 engine.storage_name)
            stats.writable_layer.used_bytes.value = used
        return stats

    def stats(self, request: pb.ContainerStatsRequest, context: grpc.ServicerContext
              ) -> pb.ContainerStatsResponse:
        async def work() -> pb.ContainerStats:
            found = self._find(request.container_id)
            if found is None:
                raise NotFound(f"container {request.container_id!r} not found")
            return await self.engine.to_thread(self.sample, *found)

        return pb.ContainerStatsResponse(stats=self.calls.run(context, "ContainerStats", work))

    def list_stats(self, request: pb.ListContainerStatsRequest,
                   context: grpc.ServicerContext) -> pb.ListContainerStatsResponse:
        flt = request.filter if request.HasField("filter") else None

        async def work() -> list[pb.ContainerStats]:
            picked = [(c, record) for c, record in sorted(self.all(), key=lambda x: x[0].created)
                      if chosen(c.id, record, flt)]
            return await self.engine.to_thread(lambda: [self.sample(*x) for x in picked])

        return pb.ListContainerStatsResponse(
            stats=self.calls.run(context, "ListContainerStats", work))

    # -- resources -----------------------------------------------------------------

    def update_resources(self, request: pb.UpdateContainerResourcesRequest,
                         context: grpc.ServicerContext
                         ) -> pb.UpdateContainerResourcesResponse:
        engine = self.engine
        res = request.linux

        async def work() -> None:
            found = self._find(request.container_id)
            if found is None:
                raise NotFound(f"container {request.container_id!r} not found")
            if not request.HasField("linux"):
                return  # nothing asked
            if res.hugepage_limits or res.unified:
                raise _refuse("hugepage limits and unified cgroup settings")
            c = found[0]
            # Docker's update rules (zero: unchanged), the engine's checks, then
            # the running container's groups, as POST /containers/{id}/update does
            body = {"CpuPeriod": res.cpu_period, "CpuQuota": res.cpu_quota,
                    "CpuShares": res.cpu_shares, "Memory": res.memory_limit_in_bytes,
                    "MemorySwap": res.memory_swap_limit_in_bytes,
                    "CpusetCpus": res.cpuset_cpus, "CpusetMems": res.cpuset_mems}
            async with engine.registry.tracks[c.id].lock:
                hc = merge_update(c.host_config, body)
                try:
                    resources = limits.check(hc, engine.cgroups)
                    if engine.cgroups is not None and c.state.Running:
                        await engine.to_thread(engine.cgroups.update, c.id, resources)
                except ValueError as exc:
                    raise InvalidParameter(str(exc)) from exc
                except OSError as exc:  # the kernel refused: the API's words
                    raise SkiffError(f"Cannot update container {c.id}: {exc}") from exc
                c.host_config = hc
                await engine.to_thread(c.save)

        self.calls.run(context, "UpdateContainerResources", work)
        return pb.UpdateContainerResourcesResponse()
