"""Container lifecycle: create, start, monitor, stop, kill, remove.

The manager owns the runs of the registry's containers and the tasks that
watch them; the other jobs are their own modules, each given what it needs:
records and events (registry.py), network endpoints (networking.py), the
spec of a run (runspec.py), attach and logs (attach.py, logstream.py),
start-up (restore.py), restart policies (restart.py), rename, pause and
prune (lifecycle.py).  Blocking driver calls go to worker threads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiff.core import metrics
from skiff.core.containers import (
    etcfiles,
    lifecycle,
    liverestore,
    names,
    pidproof,
    restart,
)
from skiff.core.containers import limits as container_limits
from skiff.core.containers import mounts as container_mounts
from skiff.core.containers import namespaces as container_namespaces
from skiff.core.containers import restore as container_restore
from skiff.core.containers import userns as container_userns
from skiff.core.containers.attach import Attacher
from skiff.core.containers.cgroupprime import GroupsAhead
from skiff.core.containers.config import (
    NAME_RE,
    InvalidConfig,
    command_line,
    effective_config,
    log_config,
    normalize_host_config,
    parse_signal,
)
from skiff.core.containers.config import runtime as config_runtime
from skiff.core.containers.logopts import check_generic
from skiff.core.containers.logstream import LogStreams, open_run_log
from skiff.core.containers.model import Container, State
from skiff.core.containers.netns import namespace_of
from skiff.core.containers.networking import NetworkAttachment
from skiff.core.containers.registry import ContainerRegistry, Notice, ToThread, Track
from skiff.core.containers.resources import cgroup_procs
from skiff.core.containers.runspec import SpecBuilder
from skiff.core.containers.streams import KeptStdin, open_stdio, pump, take_terminal
from skiff.core.containers.teardown import RunTeardown
from skiff.core.errors import Conflict, InvalidParameter, NotFound, NotModified
from skiff.core.hookspecs import (
    ContainerProcess,
    LogDriver,
    LogRender,
    ReadConfig,
    StartError,
    Stdio,
)
from skiff.core.images.errors import LayerNotFound
from skiff.core.networks import NoSuchNetwork
from skiff.core.timefmt import now_rfc3339
from skiff.core.trash import Trash
from skiff.core.userns import IdMap

if TYPE_CHECKING:
    from skiff.core.containers.exec import Spawn
    from skiff.core.containers.netrates import Shaping
    from skiff.core.containers.userns import RangeAllocator
    from skiff.core.events import Publish
    from skiff.core.hookspecs import CgroupDriver, NetworkDriver, Runtime, StorageDriver
    from skiff.core.images.layers import LayerStore
    from skiff.core.images.store import ImageStore
    from skiff.core.networks import NetworkStore
    from skiff.core.plugins import Plugins
    from skiff.core.userns import Remap
    from skiff.core.volumes.store import VolumeStore

log = structlog.get_logger("skiff.containers")

DEFAULT_STOP_TIMEOUT = 10
#: after PID 1 exits, how long its output pipes may stay open (a process that
#: escaped the pid namespace keeps them); the kernel kills the rest of the
#: namespace, so this is a safety net, not a normal wait
OUTPUT_GRACE = 2.0
#: live-restore: containers adopted at once at start
ADOPT_CONCURRENCY = 16
#: how long ``docker kill`` (SIGKILL) waits for the exit before it answers anyway
KILL_WAIT = 30.0
#: a removed container's folders wait for the trash as ``<data-root>/tmp/rm-<id>``
#: and ``<exec-root>/tmp/rm-<id>``
RETIRED_PREFIX = "rm-"


class ContainerManager:
    """The containers of one daemon.

    Each store and driver it uses is given by the engine (the composition
    root).  Two things are decided only after it is built, so it gets them
    as callables: ``spawn`` (the daemon's nursery) and ``userns_storage``
    (how a remapped container sees its layers, "idmap" or "chown").
    """

    def __init__(self, registry: ContainerRegistry, *, data_root: str,
                 config: dict[str, Any], exec_root: str, plugins: Plugins,
                 images: ImageStore, layers: LayerStore, storage: StorageDriver,
                 storage_name: str, runtime: Runtime, cgroups: CgroupDriver | None,
                 volumes: VolumeStore, networks: NetworkStore,
                 network_driver: Callable[[str], NetworkDriver],
                 resolve_network_mode: Callable[[str], str], remap: Remap | None,
                 userns_ranges: RangeAllocator | None, userns_storage: Callable[[], str],
                 publish: Publish, to_thread: ToThread, spawn: Spawn,
                 shaping: Shaping | None = None,
                 prime: Callable[[], None] = lambda: None) -> None:
        self.root = os.path.join(data_root, "containers")
        self.config = config
        self.exec_root = exec_root
        #: where a removed container's folders wait for the trash's worker
        #: (reconciliation empties both at start)
        self.retired = (os.path.join(data_root, "tmp"), os.path.join(exec_root, "tmp"))
        self.trash = Trash(shutil.rmtree, name="container")
        self.plugins = plugins
        self.images = images
        self.layers = layers
        self.storage = storage
        self.runtime = runtime
        self.cgroups = cgroups
        self.to_thread = to_thread
        self.remap = remap
        self.userns_ranges = userns_ranges
        self.userns_storage = userns_storage
        self.spawn = spawn
        #: the kernel's wait for the init's move into its groups, started
        #: ahead in the background (``CgroupPrimer``)
        self.prime = prime
        #: a created container's groups, made in the background for its start
        self.groups_ahead = GroupsAhead(cgroups, prime, to_thread, spawn)
        self.storage_name = storage_name
        self.volumes = volumes
        self.resolve_network_mode = resolve_network_mode
        self.publish = publish
        self.registry = registry
        # the registry's own dicts: the API, exec and volume code read them here
        self.by_id = self.registry.by_id
        self.by_name = self.registry.by_name
        self.tracks = self.registry.tracks
        self.network = NetworkAttachment(self.registry, networks, network_driver,
                                         self.publish, self.to_thread, shaping)
        self.teardown = RunTeardown(
            cgroups=self.cgroups, network=self.network, to_thread=self.to_thread,
            release_volumes=lambda c: container_mounts.release(self.volumes, c))
        self.logstreams = LogStreams(self.registry, self._log_factory, self.to_thread)
        self.attacher = Attacher(self.registry, self.logstreams)
        self.specs = SpecBuilder(
            lookup=self.registry.get, config=self.config, exec_root=self.exec_root,
            storage=self.storage, cgroups=self.cgroups, network_driver=network_driver,
            volume_mounts=lambda c: container_mounts.specs(self.volumes, c))
        #: with live-restore, the containers restore found still running (adopt_all)
        self.adoptable: list[Container] = []
        self.restarts = restart.RestartSupervisor(
            self.registry, start_run=self.start_run, start=self.start, remove=self.remove,
            spawn=spawn)

    def _log_factory(self, name: str) -> Any:
        return self.plugins.factory("logging", name)

    def _nameserver(self, c: Container) -> str:
        """The name server ``c`` resolves through ("" for the host's): its network driver's."""
        return self.network.nameserver(c)

    # -- lookup and events (the registry's) ----------------------------------

    def get(self, ref: str) -> Container:
        """By full ID, name (with or without "/") or unique ID prefix: Docker's order."""
        return self.registry.get(ref)

    def using_image(self, image_id: str) -> list[Container]:
        return self.registry.using_image(image_id)

    def counts(self) -> tuple[int, int, int, int]:
        return self.registry.counts()

    def event(self, c: Container, action: str, **extra: Any) -> None:
        """Publish a container event with Docker's attributes (image, name, labels)."""
        self.registry.event(c, action, **extra)

    # -- start-up ----------------------------------------------------------

    def restore(self) -> None:
        """Load every container record; see ``restore.restore``."""
        self.adoptable = container_restore.restore(
            self.root, self.exec_root, self.cgroups, self.registry, self.restarts.on_restore,
            live_restore=bool(self.config.get("live-restore")))

    def running_networks(self) -> set[str]:
        """After ``shutdown``: the networks of the containers it left running
        (live-restore; their plumbing stays)."""
        return {name for c in self.by_id.values() if c.state.Running for name in c.networks}

    async def adopt_all(self) -> None:
        """With live-restore, once the runtime started: take back the containers
        that ran on (``liverestore.adopt``), and log what those that ended while
        away wrote meanwhile."""
        adoptable, self.adoptable = self.adoptable, []
        began = time.perf_counter()
        # each waits on its monitor and a worker thread or two: side by side
        limit = trio.CapacityLimiter(ADOPT_CONCURRENCY)

        async def one(c: Container) -> None:
            async with limit:
                await liverestore.adopt(self, c)

        async with trio.open_nursery() as n:
            for c in adoptable:
                n.start_soon(one, c)
        if adoptable:
            log.info("containers.adopted", count=len(adoptable),
                     ms=round((time.perf_counter() - began) * 1000, 1))
        for c in list(self.by_id.values()):
            if not c.state.Running and os.path.exists(
                    os.path.join(self.specs.bundle(c.id), liverestore.SPOOL)):
                await liverestore.log_exited_spool(self, c)

    # -- create --------------------------------------------------------------

    @metrics.timed(metrics.container_actions, "create")
    async def create(self, body: dict[str, Any], name: str | None) -> tuple[str, list[str]]:
        if not isinstance(body, dict):
            raise InvalidParameter("the request body must be a JSON object")
        image_ref = body.get("Image")
        if not image_ref or not isinstance(image_ref, str):
            raise InvalidParameter("config.Image is required: name the image to run")
        if name:
            if not NAME_RE.match(name):
                raise InvalidParameter(
                    f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )
            name = name.lstrip("/")
            if name in self.by_name:
                raise Conflict(
                    f'Conflict. The container name "/{name}" is already in use by container '
                    f'"{self.by_name[name]}". You have to remove (or rename) that container '
                    "to be able to reuse that name."
                )
        image = self.images.get(image_ref)  # raises NotFound: "No such image: ..."
        try:
            cfg = effective_config(body, image.config.get("config") or {})
            cfg["Image"] = image_ref
            hc = normalize_host_config(body.get("HostConfig"))
            mount_plan = container_mounts.plan(cfg, hc)
            hc["LogConfig"] = log_config(hc.get("LogConfig"), self.config["log-driver"],
                                         self.config["log-opts"])
            check_generic(hc["LogConfig"]["Config"])
            if hc["LogConfig"]["Type"] != "none":  # none: no driver, nothing kept
                self.plugins.factory("logging", hc["LogConfig"]["Type"])
            hc["Runtime"] = config_runtime(hc.get("Runtime"), self.config["default-runtime"])
            network_mode = self.resolve_network_mode(hc.get("NetworkMode") or "default")
            # its driver's say (a driver not installed: refused here, a 400)
            netns = namespace_of(network_mode, self.network.network_driver)
            default_pids = self.config.get("default-pids-limit", 0)
            if not hc.get("PidsLimit") and default_pids > 0:
                # The docker CLI sends 0 when --pids-limit is not given, so 0
                # means "not set" here and -1 is the way to ask for no limit.
                # Stored, so inspect shows the limit the container really has.
                hc["PidsLimit"] = default_pids
            container_namespaces.validate(cfg, hc)
            container_userns.validate(hc, self.remap, self.config["default-userns-mode"])
            pid_mode = hc.get("PidMode") or ""
            if pid_mode.startswith("container:"):
                try:
                    self.get(pid_mode[10:])
                except NotFound as exc:
                    # 400, not 404: the CLI takes a 404 at create for a missing image
                    raise InvalidParameter(f"{exc.message} (--pid {pid_mode})") from None
            container_limits.check(hc, self.cgroups)
            self.plugins.hook.skiff_container_validate(
                config=cfg, host_config=hc, daemon_config=self.config)
        except NoSuchNetwork as exc:
            # dockerd's words, refused at create, but a 400: on a 404 at create
            # the docker CLI takes the image for missing and tries to pull it
            raise InvalidParameter(exc.message) from None
        except InvalidConfig as exc:  # its own words, quotes and all ("can't be '/'")
            raise InvalidParameter(str(exc)) from exc
        except (ValueError, LookupError) as exc:
            raise InvalidParameter(str(exc).strip("'\"")) from exc
        hc["RestartPolicy"] = restart.checked(hc)  # outside: its messages end in quotes
        cid = secrets.token_hex(32)
        while name is None or name in self.by_name:
            name = names.generate()
        if not cfg["Hostname"]:
            host_uts = netns.kind == "host" or hc.get("UTSMode") == "host"
            cfg["Hostname"] = socket.gethostname() if host_uts else cid[:12]
        path, args = command_line(cfg)
        root = os.path.join(self.root, cid)
        c = Container(
            id=cid, name=name, created=now_rfc3339(), image_id=image.id, config=cfg,
            host_config=hc, path=path, args=args, driver=self.storage_name, root=root,
            log_driver=hc["LogConfig"]["Type"], network_mode=network_mode,
        )
        c.networks = etcfiles.initial_networks(
            network_mode, body, hc, self.network.networks.find(network_mode), netns=netns,
            sole=netns.kind != "join" and self.network.sole(network_mode))
        self.network.shaping.check_container(cfg, network_mode, c.networks)
        # Reserve the name before the first await so a concurrent create cannot take it.
        self.registry.index(c)
        try:
            self.network.check_create(c)
            with contextlib.suppress(ValueError):  # the start says what is wrong
                self.groups_ahead.begin(cid, container_limits.resources_from(hc))
            os.makedirs(root, mode=0o700)
            idmap = await self._assign_userns(c)
            chowned = idmap if c.userns.get("Storage") == "chown" else None
            storage_opts = hc.get("StorageOpt") or {}
            init_id, mount_id = await self.to_thread(
                self.layers.create_rw, cid, image.top_layer, storage_opts, None, chowned
            )
            c.init_id, c.mount_id = init_id, mount_id
            c.graph_data = await self.to_thread(self.storage.metadata, mount_id)
            c.mount_points = await self.to_thread(container_mounts.realize, self.volumes,
                                                  self.registry.get, self.storage, c, mount_plan)
            etcfiles.write_at_create(c, self._nameserver(c), netns)
            c.save_new()
            self.plugins.hook.skiff_container_create(container=c)
        except BaseException:
            await self._discard(c)
            raise
        self.event(c, "create")
        log.info("container.create", id=cid, name=name, image=image_ref,
                 storage=self.storage_name, network=network_mode)
        return cid, []

    async def _assign_userns(self, c: Container) -> IdMap | None:
        """Give ``c`` its user namespace's mapping (recorded in ``c.userns``): the
        daemon's, or a range of its own for ``auto``; None for none."""
        if self.remap is None:
            return None
        mode = container_userns.mode_of(c.host_config, self.config["default-userns-mode"])
        if mode == "host":
            return None
        if mode == "auto":
            assert self.userns_ranges is not None
            try:
                idmap = await self.to_thread(self.userns_ranges.allocate, c.id)
            except InvalidConfig as exc:
                raise Conflict(str(exc)) from None
        else:
            idmap = self.remap.default
        c.userns = {"Mode": mode, **idmap.to_json(), "Storage": self.userns_storage() or "chown"}
        return idmap

    async def _discard(self, c: Container) -> None:
        """Undo a create that failed half-way; leaves no trace of ``c``."""
        await self.groups_ahead.drop(c.id)
        if c.mount_id:
            with contextlib.suppress(Exception):
                await self.to_thread(self.layers.remove_rw, c.id)
        if self.userns_ranges is not None:
            with contextlib.suppress(Exception):
                await self.to_thread(self.userns_ranges.release, c.id)
        shutil.rmtree(c.root, ignore_errors=True)
        self.registry.drop(c)
        with contextlib.suppress(Exception):  # the anonymous volumes it made
            await self.to_thread(container_mounts.remove_anonymous, self.volumes, c)

    # -- start ---------------------------------------------------------------

    @metrics.timed(metrics.container_actions, "start")
    async def start(self, ref: str) -> None:
        c = self.get(ref)
        track = self.tracks[c.id]
        async with track.lock:
            if c.id not in self.by_id:
                raise NotFound(f"No such container: {ref}")  # removed while we waited
            if c.state.Running:
                raise NotModified("container already started")
            if c.state.Status == "removing":
                raise Conflict(f"container {c.id} is marked for removal and cannot be started")
            self.restarts.user_start(c)
            try:
                await self.start_run(c, track)
            except BaseException as exc:
                # Attached clients must not wait for output that will never come,
                # and `docker run --rm` waits for the removal.
                track.hub.end_run()
                failed = exc
                if isinstance(exc, Exception):
                    self._record_start_failure(c, exc)
            else:
                return
        if c.host_config.get("AutoRemove"):
            with trio.CancelScope(shield=True):
                try:
                    await self.remove(c.id, force=True)
                except Exception as exc:
                    log.error("container.autoremove_failed", id=c.id, error=str(exc))
        if isinstance(failed, StartError):
            # Docker answers 400 here; the CLI turns "not found" into exit code 127.
            raise InvalidParameter(f"failed to start container {c.id[:12]}: {failed}") from failed
        raise failed

    def _record_start_failure(self, c: Container, exc: Exception) -> None:
        """As dockerd: the error in State.Error and, unless the start gave one, exit
        code 128, so that a container that never ran does not look like one that
        exited cleanly (docker-compose ps: ``Exit 128``, not ``Exit 0``)."""
        c.state.Error = str(exc)
        if not c.state.ExitCode:
            c.state.ExitCode = 128
        if c.id in self.by_id:
            c.save()

    async def start_run(self, c: Container, track: Track) -> None:
        t0 = time.perf_counter()
        spec = await self.to_thread(self.specs.build, c)
        os.makedirs(spec.bundle, mode=0o700, exist_ok=True)
        for left in ("exitcode", liverestore.SPOOL):  # of an earlier run
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(spec.bundle, left))
        self.plugins.hook.skiff_container_spec(container=c, spec=spec, daemon_config=self.config)
        if self.cgroups is not None:
            # before prepare: the init bind-mounts the groups into the container
            try:
                resources = container_limits.resources_from(c.host_config)
                if not await self.groups_ahead.claim(c.id, resources):
                    await self.to_thread(self.cgroups.create, c.id, resources)
            except ValueError as exc:  # a limit this host cannot apply: the client's
                raise InvalidParameter(str(exc)) from exc
            spec.cgroup_procs = cgroup_procs(self.cgroups, c.id)
        log_driver = None
        pipes: list[int] = []
        try:
            log_driver = open_run_log(self._log_factory, c)
            # with a TTY: /dev/null here, the runtime allocates the terminal in
            # the container and take_terminal below gives out_r and in_w
            out_r, out_w, err_r, err_w, in_r, in_w = open_stdio(
                spec.tty, spec.open_stdin, pipes)
            stdio = Stdio(in_r, out_w, err_w)
            if self.config.get("live-restore"):
                # the runtime keeps copies of our ends: the output outlives us,
                # stdin can be handed to the next daemon (KeptStdin)
                stdio = Stdio(in_r, out_w, err_w, daemon_stdout=out_r, daemon_stderr=err_r,
                              daemon_stdin=in_w, keep_ends=True)
            process = await self.runtime.prepare(spec, stdio)
        except BaseException as exc:
            if isinstance(exc, StartError):  # inspect tells why, as dockerd's does
                c.state.Error = str(exc)
                c.state.ExitCode = exc.exit_code
                c.save()
            for fd in pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if log_driver is not None:
                log_driver.close()
            if self.cgroups is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self.to_thread(self.cgroups.destroy, c.id)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        # read while the init waits for "go": the pid is certainly that process
        pid_start = pidproof.start_time(process.pid) or 0
        try:
            if spec.tty:  # the pty master (out_r, err_r is -1); sized before go
                out_r, in_w = take_terminal(process, spec.open_stdin,
                                            c.host_config.get("ConsoleSize"))
            await self._prestart(c, track, process)
            await process.go()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await process.abort()
                await self.teardown.release(c, track)
                for fd in (out_r, err_r, in_w):
                    if fd >= 0:
                        os.close(fd)
                if log_driver is not None:
                    log_driver.close()
            if isinstance(exc, StartError):
                c.state.Error = str(exc)
                c.state.ExitCode = exc.exit_code
                c.save()
            raise
        # The state and its record change together, on the loop: a record
        # written beside go, in a worker thread, was overwritten by any other
        # save of the container meanwhile (its state still "created"), and a
        # crash then left a started container recorded as created (CI's chaos)
        c.state = State(Status="running", Running=True, Pid=process.pid,
                        StartedAt=now_rfc3339(), FinishedAt=c.state.FinishedAt, pid_start=pid_start,
                        boot_id=pidproof.boot_id(), Health=c.state.Health)
        track.process = process
        track.spec, track.spec_loader = spec, None
        track.stopping = False
        track.hub.begin_run(out_r if spec.tty else -1)
        if in_w >= 0:
            track.hub.stdin = (KeptStdin(in_w, process)
                               if self.config.get("live-restore") and not spec.tty
                               else trio.lowlevel.FdStream(in_w))
            track.hub.stdin_ready.set()
        c.save()
        self.spawn(self._monitor, c, track, process, out_r, err_r, log_driver)
        self.event(c, "start")
        log.info("container.start", id=c.id, pid=process.pid,
                 ms=round((time.perf_counter() - t0) * 1000, 2))

    async def _prestart(self, c: Container, track: Track, process: ContainerProcess) -> None:
        if self.cgroups is not None:
            # the groups were made in start_run, before prepare
            await self.to_thread(self.cgroups.add_process, c.id, process.pid)
        await self.network.attach_all(c, track, process.pid)
        self.plugins.hook.skiff_container_prestart(container=c, pid=process.pid)

    async def _monitor(self, c: Container, track: Track, process: ContainerProcess,
                       out_r: int, err_r: int, log_driver: LogDriver | None,
                       carry: dict[str, bytes] | None = None) -> None:
        """Watch a run to its end.  ``carry``: per stream, the start of a line
        the output resumes with (an adopted run's, see liverestore)."""
        with trio.CancelScope() as detach:
            track.detach = detach
            async with trio.open_nursery() as n:
                for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
                    if fd < 0:
                        continue  # a TTY has one output stream
                    n.start_soon(pump, trio.lowlevel.FdStream(fd), name, track.hub, log_driver,
                                 track.log_limiter, (carry or {}).get(name, b""))
                code = await process.wait()
                n.cancel_scope.deadline = trio.current_time() + OUTPUT_GRACE
        track.detach = None
        if detach.cancelled_caught:
            # live-restore shutdown: the container runs on; what was read is
            # logged, the rest waits in the runtime for the next daemon
            with trio.CancelScope(shield=True):
                if log_driver is not None:
                    await trio.to_thread.run_sync(log_driver.close, limiter=track.log_limiter)
                drop = getattr(process, "close", None)  # the connection, not the run
                if drop is not None:
                    drop()
            return
        with trio.CancelScope(shield=True):
            if log_driver is not None:
                await trio.to_thread.run_sync(log_driver.close, limiter=track.log_limiter)
            oom = await self.teardown.oom_killed(c)
            await self.teardown.release(c, track)
            track.process = None
            c.state = State(Status="exited", ExitCode=code, StartedAt=c.state.StartedAt,
                            FinishedAt=now_rfc3339(), OOMKilled=oom, Health=c.state.Health)
            self.restarts.after_exit(c, code)
            autoremove = bool(c.host_config.get("AutoRemove"))
            # An auto-removed container's record goes in a moment: a crash
            # before then leaves it "running", which the next start finds
            # dead and removes (restart.after_restore), as it would "exited"
            if c.id in self.by_id and not autoremove:
                c.save()
            track.hub.end_run()
            self.plugins.hook.skiff_container_poststop(container=c, exit_code=code)
            if oom:
                self.event(c, "oom")
            self.event(c, "die", exitCode=code)
            notice, track.next_exit = track.next_exit, Notice()
            notice.fire(code)
            log.info("container.exit", id=c.id, code=code)
            if autoremove and c.id in self.by_id:
                try:
                    await self.remove(c.id, force=True)
                except Exception as exc:
                    log.error("container.autoremove_failed", id=c.id, error=str(exc))

    # -- stop, kill, wait ---------------------------------------------------

    async def kill(self, ref: str, sig: str | int | None) -> None:
        c = self.get(ref)
        try:
            signum = parse_signal(sig, signal.SIGKILL)
        except InvalidConfig as exc:
            raise InvalidParameter(str(exc)) from exc
        track = self.tracks[c.id]
        if self.restarts.user_stop(c):
            return  # it was waiting to restart: it stays stopped now
        if not c.state.Running or track.process is None:
            raise Conflict(f"Cannot kill container: {ref}: Container {c.id} is not running")
        notice = track.next_exit
        track.process.kill(signum)
        self.event(c, "kill", signal=signum)
        await lifecycle.thaw_after_signal(self, c, signum)
        if signum == signal.SIGKILL:
            # As dockerd: SIGKILL answers once the container has exited, so an
            # inspect right after the kill shows it stopped (other signals at once).
            # Bounded: a task stuck in the kernel must not hold the client forever.
            with trio.move_on_after(KILL_WAIT):
                await notice.event.wait()
            if not notice.event.is_set():
                log.warning("container.kill_slow", id=c.id, waited=KILL_WAIT)

    @metrics.timed(metrics.container_actions, "stop")
    async def stop(self, ref: str, timeout: int | None = None) -> None:
        c = self.get(ref)
        track = self.tracks[c.id]
        if self.restarts.user_stop(c):
            self.event(c, "stop")  # it was waiting to restart: it stays stopped now
            return
        if not c.state.Running or track.process is None:
            raise NotModified("container already stopped")
        await self._stop(c, track, timeout)
        self.event(c, "stop")

    async def _stop(self, c: Container, track: Track, timeout: int | None) -> None:
        if timeout is None or (timeout < 0 and timeout != -1):
            timeout = c.config.get("StopTimeout") or DEFAULT_STOP_TIMEOUT
        try:
            signum = parse_signal(c.config.get("StopSignal"), signal.SIGTERM)
        except InvalidConfig:
            signum = signal.SIGTERM
        notice = track.next_exit
        process = track.process
        if process is None:
            return
        track.stopping = True
        process.kill(signum)
        self.event(c, "kill", signal=signum)  # Docker's stop shows kill, die, stop
        await lifecycle.thaw_after_signal(self, c, signum)
        if timeout == -1:
            await notice.event.wait()
            return
        with trio.move_on_after(timeout):
            await notice.event.wait()
            return
        log.info("container.stop_timeout", id=c.id, signal=signum, timeout=timeout)
        process.kill(signal.SIGKILL)
        self.event(c, "kill", signal=int(signal.SIGKILL))
        await notice.event.wait()

    def waiter(self, ref: str, condition: str) -> Notice | None:
        """Register a wait now; the returned notice fires later (None: already true).

        Registering before the HTTP response is sent matters: ``docker run``
        waits with ``next-exit`` before it starts the container.
        """
        c = self.get(ref)
        track = self.tracks[c.id]
        if condition in ("", "not-running"):
            if not c.state.Running:
                return None
            return track.next_exit
        if condition == "next-exit":
            return track.next_exit
        if condition == "removed":
            return track.removed
        raise InvalidParameter(
            f"invalid condition: {condition!r}: use not-running, next-exit or removed"
        )

    # -- remove ----------------------------------------------------------------

    @metrics.timed(metrics.container_actions, "delete")
    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        c = self.get(ref)
        track = self.tracks[c.id]
        self.restarts.forget(c)
        while True:
            if c.state.Running:
                if not force:
                    raise Conflict(
                        f"You cannot remove a running container {c.id}. Stop the container "
                        "before attempting removal or force remove"
                    )
                notice = track.next_exit
                if track.process is not None:
                    track.process.kill(signal.SIGKILL)
                    self.event(c, "kill", signal=int(signal.SIGKILL))  # as dockerd's rm -f
                    await lifecycle.thaw_after_signal(self, c, signal.SIGKILL)
                await notice.event.wait()
            # Held while the container's files go: a start, connect or disconnect
            # under way must not write into (or run from) a directory being removed
            async with track.lock:
                if c.state.Running:
                    continue  # a start that held the lock got there first
                await self._remove_stopped(c, track, volumes)
                return

    async def _remove_stopped(self, c: Container, track: Track, volumes: bool) -> None:
        if c.id not in self.by_id:
            return  # removed meanwhile (auto-remove)
        if c.state.Status == "removing":
            raise Conflict(f"removal of container {c.id} is already in progress")
        c.state.Status = "removing"
        # the intent on disk first: a crash from here on is finished at the next
        # start (restart.after_restore), never left half-removed; an
        # auto-removed container that is not running is removed there anyway
        if not c.host_config.get("AutoRemove"):
            c.save()
        self.plugins.hook.skiff_container_remove(container=c)
        try:
            # the driver's removal of both layers (half of an exit+rm) follows
            # the answer, on the layer store's trash worker: the metadata is
            # retired first, so a crash leaves it to the next start's clean-up
            await self.to_thread(self.layers.remove_rw, c.id, True)
        except LayerNotFound:
            pass  # an earlier rm, cut by a crash, removed it already
        except Exception:
            c.state.Status = "dead"
            c.state.Dead = True
            c.save()
            raise
        # its folders go after the answer too: renamed where the next start's
        # clean-up looks (the rename is the removal; deleting a folder with a
        # log in it while other work writes was most of a CRI RemoveContainer)
        await self.to_thread(self._retire_folders, c)
        await self.groups_ahead.drop(c.id)
        if c.userns.get("Mode") == "auto" and self.userns_ranges is not None:
            # only now: the block is free once nothing of the container is left
            await self.to_thread(self.userns_ranges.release, c.id)
        self.registry.drop(c)
        # volumes: release what a failed start left mounted; rm -v and --rm drop anonymous
        await self.to_thread(container_mounts.on_remove, self.volumes, c,
                            volumes or bool(c.host_config.get("AutoRemove")))
        track.removed.fire(c.state.ExitCode)
        self.event(c, "destroy")
        log.info("container.remove", id=c.id)

    def _retire_folders(self, c: Container) -> None:
        """Rename ``c``'s folder and its exec-root folder into the retired
        folders and queue them for the trash's worker; removed here, inline,
        where a rename cannot do it (another filesystem)."""
        folders = (c.root, os.path.join(self.exec_root, "containers", c.id))
        for folder, retired in zip(folders, self.retired, strict=True):
            target = os.path.join(retired, RETIRED_PREFIX + c.id)
            try:
                os.makedirs(retired, mode=0o700, exist_ok=True)
            except OSError:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                os.rename(folder, target)
            except FileNotFoundError:
                continue  # never made (a create cut short), or an earlier rm's
            except OSError:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self.trash.put(target)

    # -- networks, attach and logs (their own modules) -----------------------

    async def connect(self, ref: str, network: str, config: Any) -> None:
        """``docker network connect``: now if running, else at the next start."""
        await self.network.connect(ref, network, config)

    async def disconnect(self, ref: str, network: str, force: bool = False) -> None:
        """``docker network disconnect``."""
        await self.network.disconnect(ref, network, force)

    async def attach(self, ref: str, stream: trio.abc.Stream, *, stdin: bool, stdout: bool,
                     stderr: bool, logs: bool, framed: bool,
                     detach_keys: bytes = b"\x10\x11", live: bool = True) -> None:
        """Serve a hijacked connection until the container's current run ends
        (``live`` False: once the recorded log is sent)."""
        await self.attacher.attach(ref, stream, stdin=stdin, stdout=stdout, stderr=stderr,
                                   logs=logs, framed=framed, detach_keys=detach_keys, live=live)

    def resize(self, ref: str, height: int, width: int) -> None:
        """``POST /containers/{id}/resize``: the TTY's size (SIGWINCH in the container)."""
        self.attacher.resize(ref, height, width)

    def logs(self, ref: str, cfg: ReadConfig, *, follow: bool, how: LogRender
             ) -> AsyncIterator[bytes]:
        """The log stream of ``docker logs``, history first, then live when following."""
        return self.logstreams.logs(ref, cfg, follow=follow, how=how)

    # -- shutdown --------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every running container, in parallel; with live-restore, leave
        them running, detached (see liverestore)."""
        self.restarts.shutdown()
        async with trio.open_nursery() as n:
            for c in list(self.by_id.values()):
                track = self.tracks.get(c.id)
                if not (c.state.Running and track is not None and track.process is not None):
                    continue
                if self.config.get("live-restore") and track.detach is not None:
                    if liverestore.can_be_adopted(self.specs.bundle(c.id)):
                        track.detach.cancel()
                        continue
                    log.warning("container.not_adoptable", id=c.id,
                                reason="nothing keeps its output for a next daemon (started "
                                       "without live-restore, or without skiff-monitor): it "
                                       "is stopped as without live-restore")
                n.start_soon(self._stop, c, track, None)
        await self.groups_ahead.close()

