"""runtime.v1.RuntimeService: Version, Status, RuntimeConfig, pod sandboxes,
containers in pods and the streaming RPCs; every other RPC is UNIMPLEMENTED,
naming itself."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import grpc

from skiff import __version__
from skiff.core.cri.containers import Containers
from skiff.core.cri.portforward import Target
from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.cri.runtime_v1 import api_pb2_grpc as rpc
from skiff.core.cri.sandboxes import Sandboxes
from skiff.core.cri.service import Calls, fill_unimplemented
from skiff.core.cri.streaming import StreamingServer
from skiff.core.errors import Conflict, InvalidParameter, NotFound

if TYPE_CHECKING:
    from skiff.core.engine import Engine

SERVICE = "runtime.v1.RuntimeService"
#: the CRI's own version field: kubelet sends and expects "0.1.0"
KUBE_API_VERSION = "0.1.0"
RUNTIME_NAME = "skiff"
RUNTIME_API_VERSION = "v1"

#: NetworkReady false: pods would get no network but their loopback
NO_NETWORK_REASON = "NoPodNetwork"
NO_NETWORK_MESSAGE = ("this skiffd has no bridge network (daemon.json bridge is none, or no "
                      "bridge driver): pods get only a loopback; docs/cri.md")


class RuntimeService(rpc.RuntimeServiceServicer):
    def __init__(self, engine: Engine, calls: Calls, streaming: StreamingServer) -> None:
        self.engine = engine
        self.calls = calls
        self.streaming = streaming
        self.containers = Containers(engine, calls)
        self.sandboxes = Sandboxes(engine, calls, self.containers)

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext
                ) -> pb.VersionResponse:
        return pb.VersionResponse(version=KUBE_API_VERSION, runtime_name=RUNTIME_NAME,
                                  runtime_version=__version__,
                                  runtime_api_version=RUNTIME_API_VERSION)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext
               ) -> pb.StatusResponse:
        engine = self.engine

        async def work() -> pb.StatusResponse:
            # through the loop on purpose: an answer proves the engine's loop is
            # alive, which is what RuntimeReady says (pods, containers and the
            # streaming server run on it); NetworkReady: the network pods get
            # (the daemon's bridge) exists
            networked = engine.resolve_network_mode("default") != "none"
            conditions = [
                pb.RuntimeCondition(type="RuntimeReady", status=True),
                pb.RuntimeCondition(type="NetworkReady", status=networked,
                                    reason="" if networked else NO_NETWORK_REASON,
                                    message="" if networked else NO_NETWORK_MESSAGE),
            ]
            reply = pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions))
            if request.verbose:
                reply.info["config"] = json.dumps({
                    "runtime": engine.runtime_name, "storageDriver": engine.storage_name,
                    "cgroupDriver": engine.cgroup_driver_name, "dataRoot": engine.data_root,
                })
            return reply

        return self.calls.run(context, "Status", work)

    def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: grpc.ServicerContext
                      ) -> pb.RuntimeConfigResponse:
        driver = pb.SYSTEMD if self.engine.cgroup_driver_name == "systemd" else pb.CGROUPFS
        return pb.RuntimeConfigResponse(
            linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))


    # -- pod sandboxes (sandboxes.py) ---------------------------------------------------

    def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: grpc.ServicerContext
                      ) -> pb.RunPodSandboxResponse:
        return self.sandboxes.run(request, context)

    def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: grpc.ServicerContext
                       ) -> pb.StopPodSandboxResponse:
        return self.sandboxes.stop(request, context)

    def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest,
                         context: grpc.ServicerContext) -> pb.RemovePodSandboxResponse:
        return self.sandboxes.remove(request, context)

    def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest,
                         context: grpc.ServicerContext) -> pb.PodSandboxStatusResponse:
        return self.sandboxes.status(request, context)

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: grpc.ServicerContext
                       ) -> pb.ListPodSandboxResponse:
        return self.sandboxes.list(request, context)

    def PodSandboxStats(self, request: pb.PodSandboxStatsRequest,
                        context: grpc.ServicerContext) -> pb.PodSandboxStatsResponse:
        return self.sandboxes.stats(request, context)

    def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest,
                            context: grpc.ServicerContext) -> pb.ListPodSandboxStatsResponse:
        return self.sandboxes.list_stats(request, context)

    # -- containers in pods (containers.py) ---------------------------------------------

    def CreateContainer(self, request: pb.CreateContainerRequest,
                        context: grpc.ServicerContext) -> pb.CreateContainerResponse:
        return self.containers.create(request, context)

    def StartContainer(self, request: pb.StartContainerRequest, context: grpc.ServicerContext
                       ) -> pb.StartContainerResponse:
        return self.containers.start(request, context)

    def StopContainer(self, request: pb.StopContainerRequest, context: grpc.ServicerContext
                      ) -> pb.StopContainerResponse:
        return self.containers.stop(request, context)

    def RemoveContainer(self, request: pb.RemoveContainerRequest,
                        context: grpc.ServicerContext) -> pb.RemoveContainerResponse:
        return self.containers.remove(request, context)

    def ListContainers(self, request: pb.ListContainersRequest, context: grpc.ServicerContext
                       ) -> pb.ListContainersResponse:
        return self.containers.list(request, context)

    def ContainerStatus(self, request: pb.ContainerStatusRequest,
                        context: grpc.ServicerContext) -> pb.ContainerStatusResponse:
        return self.containers.status(request, context)

    def ExecSync(self, request: pb.ExecSyncRequest, context: grpc.ServicerContext
                 ) -> pb.ExecSyncResponse:
        return self.containers.exec_sync(request, context)

    # -- streaming (streaming.py): a URL each, served over SPDY ---------------------------

    def _stream_url(self, context: grpc.ServicerContext, rpc_name: str, kind: str,
                    request: pb.ExecRequest | pb.AttachRequest) -> str:
        async def work() -> str:
            if isinstance(request, pb.ExecRequest) and not request.cmd:
                raise InvalidParameter("Exec needs a command")
            check_streams(request.stdin, request.stdout, request.stderr, request.tty)
            found = self.containers._find(request.container_id)
            if found is None:
                raise NotFound(f"container {request.container_id!r} not found")
            c = found[0]
            if not c.state.Running:
                raise Conflict(f"container {c.id} is not running")
            if kind == "attach" and request.stdin and not c.config.get("OpenStdin"):
                raise InvalidParameter(f"container {c.id} was not created with stdin: "
                                       "cannot attach to its stdin")
            fields = type(request)()
            fields.CopyFrom(request)
            fields.container_id = c.id
            return self.streaming.url_for(kind, fields)

        return self.calls.run(context, rpc_name, work)

    def Exec(self, request: pb.ExecRequest, context: grpc.ServicerContext) -> pb.ExecResponse:
        return pb.ExecResponse(url=self._stream_url(context, "Exec", "exec", request))

    def Attach(self, request: pb.AttachRequest, context: grpc.ServicerContext
               ) -> pb.AttachResponse:
        return pb.AttachResponse(url=self._stream_url(context, "Attach", "attach", request))

    def PortForward(self, request: pb.PortForwardRequest, context: grpc.ServicerContext
                    ) -> pb.PortForwardResponse:
        async def work() -> str:
            found = self.sandboxes._find(request.pod_sandbox_id)
            if found is None:
                raise NotFound(f"pod sandbox {request.pod_sandbox_id!r} not found")
            c, record = found
            if not c.state.Running:
                raise Conflict(f"pod sandbox {c.id} is not ready")
            return self.streaming.url_for(
                "portforward", Target(c.id, bool(record.get("host_network"))))

        return pb.PortForwardResponse(url=self.calls.run(context, "PortForward", work))

    def ContainerStats(self, request: pb.ContainerStatsRequest, context: grpc.ServicerContext
                       ) -> pb.ContainerStatsResponse:
        return self.containers.stats(request, context)

    def ListContainerStats(self, request: pb.ListContainerStatsRequest,
                           context: grpc.ServicerContext) -> pb.ListContainerStatsResponse:
        return self.containers.list_stats(request, context)

    def ReopenContainerLog(self, request: pb.ReopenContainerLogRequest,
                           context: grpc.ServicerContext) -> pb.ReopenContainerLogResponse:
        return self.containers.reopen_log(request, context)

    def UpdateContainerResources(self, request: pb.UpdateContainerResourcesRequest,
                                 context: grpc.ServicerContext
                                 ) -> pb.UpdateContainerResourcesResponse:
        return self.containers.update_resources(request, context)


IMPLEMENTED = ("Version", "Status", "RuntimeConfig", "RunPodSandbox", "StopPodSandbox",
               "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox", "CreateContainer",
               "StartContainer", "StopContainer", "RemoveContainer", "ListContainers",
               "ContainerStatus", "ExecSync",
               "ContainerStats", "ListContainerStats", "ReopenContainerLog",
               "PodSandboxStats", "ListPodSandboxStats", "UpdateContainerResources",
               "Exec", "Attach", "PortForward")


def check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
    """kubelet's rules for a streaming request."""
    if not (stdin or stdout or stderr):
        raise InvalidParameter("one of stdin, stdout, or stderr must be set")
    if tty and stderr:
        raise InvalidParameter("tty and stderr cannot both be true")


UNIMPLEMENTED = fill_unimplemented(RuntimeService, rpc.RuntimeServiceServicer, SERVICE)
