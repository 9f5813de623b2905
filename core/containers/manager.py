"""Container lifecycle: create, start, wait, stop, kill, remove, attach, logs.

The manager owns the records (``Container``), the run-time state of running
containers (``Live``) and the tasks that watch them.  Drivers are reached
through the engine; their blocking calls go to worker threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiff.core.containers import lifecycle, names, pidproof, restart
from skiff.core.containers import mounts as container_mounts
from skiff.core.containers import namespaces as container_namespaces
from skiff.core.containers import userns as container_userns
from skiff.core.containers.config import (
    NAME_RE,
    InvalidConfig,
    command_line,
    effective_config,
    normalize_host_config,
    parse_signal,
)
from skiff.core.containers.logread import LogCursor, RawProgress, RecordedLog
from skiff.core.containers.model import Container, State, now_rfc3339
from skiff.core.containers.resources import cgroup_procs
from skiff.core.containers.streams import OutputHub, feed_stdin, open_stdio, pump, take_terminal
from skiff.core.errors import Conflict, InvalidParameter, NotFound, NotModified
from skiff.core.hookspecs import (
    ContainerProcess,
    ContainerSpec,
    Endpoint,
    Link,
    LogContext,
    LogDriver,
    LogMessage,
    MountSpec,
    PortBinding,
    ReadConfig,
    StartError,
    Stdio,
)
from skiff.core.userns import IdMap

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.containers")

DEFAULT_STOP_TIMEOUT = 10
#: after PID 1 exits, how long its output pipes may stay open (a process that
#: escaped the pid namespace keeps them); the kernel kills the rest of the
#: namespace, so this is a safety net, not a normal wait
OUTPUT_GRACE = 2.0
#: after a crash, how long restore waits for a container it killed to be gone
RESTORE_KILL_WAIT = 5.0


@dataclass
class Notice:
    """A one-shot event carrying the exit code it announces."""

    event: trio.Event = field(default_factory=trio.Event)
    code: int = 0

    def fire(self, code: int) -> None:
        self.code = code
        self.event.set()


@dataclass
class Track:
    """Everything the manager keeps per container besides its record."""

    hub: OutputHub = field(default_factory=OutputHub)
    lock: trio.Lock = field(default_factory=trio.Lock)
    next_exit: Notice = field(default_factory=Notice)
    removed: Notice = field(default_factory=Notice)
    process: ContainerProcess | None = None
    #: network name -> (driver, endpoint) while the container runs
    endpoints: dict[str, tuple[Any, Endpoint]] = field(default_factory=dict)
    stopping: bool = False
    log_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    #: the spec of the current run, after every plugin amended it: what an exec inherits
    spec: ContainerSpec | None = None


class ContainerManager:
    """The containers of one daemon."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.root = os.path.join(engine.data_root, "containers")
        self.by_id: dict[str, Container] = {}
        self.by_name: dict[str, str] = {}
        self.tracks: dict[str, Track] = {}
        self.restarts = restart.RestartSupervisor(self)

    # -- lookup ------------------------------------------------------------

    def get(self, ref: str) -> Container:
        """By full ID, name (with or without "/") or unique ID prefix: Docker's order."""
        if ref in self.by_id:
            return self.by_id[ref]
        name = ref.lstrip("/")
        if name in self.by_name:
            return self.by_id[self.by_name[name]]
        if ref:
            matches = [cid for cid in self.by_id if cid.startswith(ref)]
            if len(matches) == 1:
                return self.by_id[matches[0]]
            if len(matches) > 1:
                raise InvalidParameter(
                    f"multiple IDs found with provided prefix: {ref}"
                )
        raise NotFound(f"No such container: {ref}")

    def using_image(self, image_id: str) -> list[Container]:
        return [c for c in self.by_id.values() if c.image_id == image_id]

    def counts(self) -> tuple[int, int, int, int]:
        running = sum(1 for c in self.by_id.values() if c.state.Running and not c.state.Paused)
        paused = sum(1 for c in self.by_id.values() if c.state.Paused)
        total = len(self.by_id)
        return total, running, paused, total - running - paused

    # -- start-up ----------------------------------------------------------

    def restore(self) -> None:
        """Load every container record; those that were running are not any more.

        Without live-restore a container does not survive its daemon.  A shim
        that outlived a crash has written the exit code beside the bundle.
        Otherwise the recorded PID 1 is killed, but only once proved to be the
        container's (``pidproof``): a pid the kernel has since given to another
        process is left alone.
        """
        os.makedirs(self.root, mode=0o710, exist_ok=True)
        for cid in os.listdir(self.root):
            path = os.path.join(self.root, cid)
            try:
                c = Container.load(path)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # a damaged record costs that container, never the daemon's start
                log.warning("container.restore_failed", id=cid, error=str(exc))
                continue
            if c.state.Running:
                code = self._exit_code_from_bundle(c.id)
                if code is None:
                    code = self._kill_recorded(c)
                c.state = State(
                    Status="exited", ExitCode=code if code is not None else 255,
                    StartedAt=c.state.StartedAt, FinishedAt=now_rfc3339(),
                )
                c.save()
                self._drop_crashed_groups(c)
            self.restarts.on_restore(c)
            self._index(c)

    def _kill_recorded(self, c: Container) -> int | None:
        """Kill the recorded PID 1 if it is proved to be the container's; its exit code."""
        cgroups = self.engine.cgroups

        def in_cgroup(pid: int) -> bool:
            try:
                return cgroups is not None and pid in cgroups.pids(c.id)
            except Exception:
                return False  # no groups left: no proof

        outcome = pidproof.kill_if_proven(c.state.Pid, c.state.pid_start, c.state.boot_id,
                                          in_cgroup, wait=RESTORE_KILL_WAIT)
        if outcome == "killed":
            log.info("container.restore_killed", id=c.id, pid=c.state.Pid)
            return 137
        if outcome in ("recycled", "unproven"):
            log.warning("container.restore_pid_not_ours", id=c.id, pid=c.state.Pid,
                        outcome=outcome,
                        reason="the recorded pid is not proved to be the container's "
                               "any more; it was left alone")
        return None

    def _drop_crashed_groups(self, c: Container) -> None:
        """Remove the groups of a container that ran when the daemon died, once empty.

        A group that still holds processes (a pid that could not be proved) is
        left, and said so: removing it would fail, killing by number is not ours.
        """
        cgroups = self.engine.cgroups
        if cgroups is None:
            return
        try:
            # the rest of a killed container's pid namespace goes just after its PID 1
            deadline = time.monotonic() + 2
            while (left := cgroups.pids(c.id)) and time.monotonic() < deadline:
                time.sleep(0.02)
            if left:
                log.warning("container.restore_groups_busy", id=c.id, pids=left,
                            hint="processes the daemon could not prove are the container's")
                return
            cgroups.destroy(c.id)
        except Exception as exc:
            log.warning("container.cgroup_destroy_failed", id=c.id, error=str(exc))

    def _exit_code_from_bundle(self, cid: str) -> int | None:
        try:
            with open(os.path.join(self.engine.exec_root, "containers", cid, "exitcode")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def event(self, c: Container, action: str, **extra: Any) -> None:
        """Publish a container event with Docker's attributes (image, name, labels)."""
        attrs = {str(k): str(v) for k, v in (c.config.get("Labels") or {}).items()}
        attrs.update(image=c.config.get("Image") or c.image_id, name=c.name)
        attrs.update({k: str(v) for k, v in extra.items()})
        self.engine.events.publish("container", action, c.id, attrs)

    def _index(self, c: Container) -> None:
        self.by_id[c.id] = c
        self.by_name[c.name] = c.id
        self.tracks.setdefault(c.id, Track()).hub.owner = c.id

    # -- create --------------------------------------------------------------

    async def create(self, body: dict[str, Any], name: str | None) -> tuple[str, list[str]]:
        eng = self.engine
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
        image = eng.images.get(image_ref)  # raises NotFound: "No such image: ..."
        try:
            cfg = effective_config(body, image.config.get("config") or {})
            cfg["Image"] = image_ref
            hc = normalize_host_config(body.get("HostConfig"))
            mount_plan = container_mounts.plan(cfg, hc)
            if hc.get("LogConfig", {}).get("Type") in ("", None):
                hc["LogConfig"] = {"Type": eng.config["log-driver"],
                                   "Config": dict(eng.config["log-opts"])}
            eng.plugins.factory("logging", hc["LogConfig"]["Type"])
            network_mode = eng.resolve_network_mode(hc.get("NetworkMode") or "default")
            default_pids = eng.config.get("default-pids-limit", 0)
            if not hc.get("PidsLimit") and default_pids > 0:
                # The docker CLI sends 0 when --pids-limit is not given, so 0
                # means "not set" here and -1 is the way to ask for no limit.
                # Stored, so inspect shows the limit the container really has.
                hc["PidsLimit"] = default_pids
            container_namespaces.validate(cfg, hc)
            container_userns.validate(hc, eng.remap, eng.config["default-userns-mode"])
            pid_mode = hc.get("PidMode") or ""
            if pid_mode.startswith("container:"):
                try:
                    self.get(pid_mode[10:])
                except NotFound as exc:
                    # 400, not 404: the CLI takes a 404 at create for a missing image
                    raise InvalidParameter(f"{exc.message} (--pid {pid_mode})") from None
            if eng.cgroups is not None:
                eng.cgroups.validate(hc)
            eng.plugins.hook.skiff_container_validate(
                config=cfg, host_config=hc, daemon_config=eng.config)
        except InvalidConfig as exc:  # its own words, quotes and all ("can't be '/'")
            raise InvalidParameter(str(exc)) from exc
        except (ValueError, LookupError) as exc:
            raise InvalidParameter(str(exc).strip("'\"")) from exc
        hc["RestartPolicy"] = restart.checked(hc)  # outside: its messages end in quotes
        cid = secrets.token_hex(32)
        while name is None or name in self.by_name:
            name = names.generate()
        if not cfg["Hostname"]:
            host_uts = network_mode == "host" or hc.get("UTSMode") == "host"
            cfg["Hostname"] = socket.gethostname() if host_uts else cid[:12]
        path, args = command_line(cfg)
        root = os.path.join(self.root, cid)
        c = Container(
            id=cid, name=name, created=now_rfc3339(), image_id=image.id, config=cfg,
            host_config=hc, path=path, args=args, driver=eng.storage_name, root=root,
            log_driver=hc["LogConfig"]["Type"], network_mode=network_mode,
        )
        c.networks = initial_networks(network_mode, body, hc)
        # Reserve the name before the first await so a concurrent create cannot take it.
        self._index(c)
        try:
            os.makedirs(root, mode=0o700)
            idmap = await self._assign_userns(c)
            chowned = idmap if c.userns.get("Storage") == "chown" else None
            storage_opts = hc.get("StorageOpt") or {}
            init_id, mount_id = await eng.to_thread(
                eng.layers.create_rw, cid, image.top_layer, storage_opts, None, chowned
            )
            c.init_id, c.mount_id = init_id, mount_id
            c.graph_data = await eng.to_thread(eng.storage.metadata, mount_id)
            c.mount_points = await eng.to_thread(container_mounts.realize, eng, c, mount_plan)
            self._write_etc_files(c)
            c.save()
            eng.plugins.hook.skiff_container_create(container=c)
        except BaseException:
            await self._discard(c)
            raise
        self.event(c, "create")
        log.info("container.create", id=cid, name=name, image=image_ref,
                 storage=eng.storage_name, network=network_mode)
        return cid, []

    async def _assign_userns(self, c: Container) -> IdMap | None:
        """Give ``c`` its user namespace's mapping (recorded in ``c.userns``): the
        daemon's, or a range of its own for ``auto``; None for none."""
        eng = self.engine
        if eng.remap is None:
            return None
        mode = container_userns.mode_of(c.host_config, eng.config["default-userns-mode"])
        if mode == "host":
            return None
        if mode == "auto":
            assert eng.userns_ranges is not None
            try:
                idmap = await eng.to_thread(eng.userns_ranges.allocate, c.id)
            except InvalidConfig as exc:
                raise Conflict(str(exc)) from None
        else:
            idmap = eng.remap.default
        c.userns = {"Mode": mode, **idmap.to_json(), "Storage": eng.userns_storage or "chown"}
        return idmap

    def _write_etc_files(self, c: Container) -> None:
        with open(c.hostname_path, "w") as f:
            f.write(c.config["Hostname"] + "\n")
        if c.network_mode == "host":
            shutil.copyfile("/etc/hosts", c.hosts_path)
        else:
            with open(c.hosts_path, "w") as f:
                f.write(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                    "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
                    "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
                )
        with open(c.resolv_conf_path, "w") as f:
            net = self.engine.networks.find(c.network_mode)
            if net is not None and net.driver == "bridge" and net.name != "bridge":
                # user networks: the embedded DNS server, as Docker
                f.write(f"nameserver {EMBEDDED_DNS}\noptions ndots:0\n")
            else:
                f.write(resolv_conf_for(c.network_mode))
        idmap = c.idmap
        if idmap is not None:
            # bind-mounted, not idmapped: the container's root owns them, as
            # dockerd chowns them to the remapped root
            for path in (c.hostname_path, c.hosts_path, c.resolv_conf_path):
                os.chown(path, idmap.root_uid, idmap.root_gid)

    async def _discard(self, c: Container) -> None:
        """Undo a create that failed half-way; leaves no trace of ``c``."""
        eng = self.engine
        if c.mount_id:
            with contextlib.suppress(Exception):
                await eng.to_thread(eng.layers.remove_rw, c.id)
        if eng.userns_ranges is not None:
            with contextlib.suppress(Exception):
                await eng.to_thread(eng.userns_ranges.release, c.id)
        shutil.rmtree(c.root, ignore_errors=True)
        self.by_id.pop(c.id, None)
        if self.by_name.get(c.name) == c.id:
            del self.by_name[c.name]
        self.tracks.pop(c.id, None)
        with contextlib.suppress(Exception):  # the anonymous volumes it made
            await eng.to_thread(container_mounts.remove_anonymous, eng, c)

    # -- start ---------------------------------------------------------------

    def _spec(self, c: Container) -> ContainerSpec:
        eng = self.engine
        mounts = [
            MountSpec("bind", c.resolv_conf_path, "/etc/resolv.conf", ["rbind", "rw"]),
            MountSpec("bind", c.hostname_path, "/etc/hostname", ["rbind", "rw"]),
            MountSpec("bind", c.hosts_path, "/etc/hosts", ["rbind", "rw"]),
        ]
        if eng.cgroups is not None:
            # the container's own groups, read-only, under /sys/fs/cgroup
            mounts.extend(eng.cgroups.mounts(c.id))
        running_pid = container_namespaces.running_pid_of(self.get)
        namespaces, ns_mounts = container_namespaces.for_start(c.host_config, running_pid)
        mounts.extend(ns_mounts)
        mounts.extend(container_mounts.specs(eng, c))  # binds, volumes, tmpfs
        if c.network_mode.startswith("container:"):
            namespaces["net"] = f"/proc/{running_pid(c.network_mode[10:], 'network')}/ns/net"
        elif eng.network_driver(c.network_mode).netns == "new":
            namespaces["net"] = None
        idmap = c.idmap
        uid_map: list[tuple[int, int, int]] = []
        gid_map: list[tuple[int, int, int]] = []
        if idmap is not None:
            shared = self._shared_userns(c)
            namespaces["user"] = shared
            if shared is None:
                uid_map, gid_map = list(idmap.uids), list(idmap.gids)
        rlimits = [
            (u["Name"], int(u["Soft"]), int(u["Hard"]))
            for u in list(eng.config["default-ulimits"].values())
            + list(c.host_config.get("Ulimits") or [])
        ]
        return ContainerSpec(
            id=c.id,
            bundle=os.path.join(eng.exec_root, "containers", c.id),
            rootfs_mounts=eng.storage.mounts(c.mount_id),
            mounts=mounts,
            args=[c.path, *c.args],
            env=list(c.config.get("Env") or []) + self._link_env(c),
            cwd=c.config.get("WorkingDir") or "/",
            user=c.config.get("User") or "",
            hostname=c.config["Hostname"],
            namespaces=namespaces,
            readonly_rootfs=bool(c.host_config.get("ReadonlyRootfs")),
            rlimits=rlimits,
            tty=bool(c.config.get("Tty")),
            open_stdin=bool(c.config.get("OpenStdin")),
            # --init: HostConfig.Init wins; null means the daemon's default
            init=bool(eng.config["init"] if c.host_config.get("Init") is None
                      else c.host_config["Init"]),
            init_path=eng.config["init-path"],
            uid_map=uid_map,
            gid_map=gid_map,
            rootfs_idmap=c.userns.get("Storage") == "idmap",
        )

    def _shared_userns(self, c: Container) -> str | None:
        """The user namespace a remapped ``c`` must join (None: one of its own).

        As dockerd: sharing another container's network or pid namespace
        means sharing its user namespace too, since those namespaces belong
        to it.  That container must be remapped as well, and with the same
        mapping when ``c``'s layers are chowned copies for its own.
        """
        for mode, what in ((c.network_mode, "network"),
                           (c.host_config.get("PidMode") or "", "PID")):
            if not mode.startswith("container:"):
                continue
            other = self.get(mode[10:])
            if not other.userns:
                raise Conflict(
                    f"cannot share the {what} namespace of container {other.id[:12]}: it runs "
                    "without a user namespace (--userns=host) and this one with; run both "
                    "the same way")
            if c.userns.get("Storage") == "chown" and (
                    other.userns.get("UidMap"), other.userns.get("GidMap")) != (
                    c.userns.get("UidMap"), c.userns.get("GidMap")):
                raise Conflict(
                    f"cannot share the {what} namespace of container {other.id[:12]}: its "
                    "user namespace maps other ids, and this daemon keeps chowned copies of "
                    "the layers per mapping; run both without --userns=auto")
            return f"/proc/{int(other.state.Pid)}/ns/user"
        return None

    async def start(self, ref: str) -> None:
        c = self.get(ref)
        track = self.tracks[c.id]
        async with track.lock:
            if c.state.Running:
                raise NotModified("container already started")
            if c.state.Status == "removing":
                raise Conflict(f"container {c.id} is marked for removal and cannot be started")
            self.restarts.user_start(c)
            try:
                await self._start_locked(c, track)
            except BaseException as exc:
                # Attached clients must not wait for output that will never come,
                # and `docker run --rm` waits for the removal.
                track.hub.end_run()
                failed = exc
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

    async def _start_locked(self, c: Container, track: Track) -> None:
        eng = self.engine
        t0 = time.perf_counter()
        spec = await eng.to_thread(self._spec, c)
        os.makedirs(spec.bundle, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(spec.bundle, "exitcode"))
        eng.plugins.hook.skiff_container_spec(container=c, spec=spec, daemon_config=eng.config)
        if eng.cgroups is not None:
            # before prepare: the init bind-mounts the groups into the container
            try:
                await eng.to_thread(eng.cgroups.create, c.id, c.host_config)
            except ValueError as exc:  # a limit this host cannot apply: the client's
                raise InvalidParameter(str(exc)) from exc
            spec.cgroup_procs = cgroup_procs(eng.cgroups, c.id)
        log_driver = None
        pipes: list[int] = []
        try:
            log_driver = self._open_log(c)
            # with a TTY: /dev/null here, the runtime allocates the terminal in
            # the container and take_terminal below gives out_r and in_w
            out_r, out_w, err_r, err_w, in_r, in_w = open_stdio(
                spec.tty, spec.open_stdin, pipes)
            process = await eng.runtime.prepare(spec, Stdio(in_r, out_w, err_w))
        except BaseException:
            for fd in pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if log_driver is not None:
                log_driver.close()
            if eng.cgroups is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await eng.to_thread(eng.cgroups.destroy, c.id)
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
                await self._release_run_resources(c, track)
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
        c.state = State(Status="running", Running=True, Pid=process.pid,
                        StartedAt=now_rfc3339(), FinishedAt=c.state.FinishedAt,
                        pid_start=pid_start, boot_id=pidproof.boot_id())
        track.process = process
        track.spec = spec
        track.stopping = False
        track.hub.begin_run(out_r if spec.tty else -1)
        if in_w >= 0:
            track.hub.stdin = trio.lowlevel.FdStream(in_w)
            track.hub.stdin_ready.set()
        c.save()
        eng.nursery.start_soon(self._monitor, c, track, process, out_r, err_r, log_driver)
        self.event(c, "start")
        log.info("container.start", id=c.id, pid=process.pid,
                 ms=round((time.perf_counter() - t0) * 1000, 2))

    async def _prestart(self, c: Container, track: Track, process: ContainerProcess) -> None:
        eng = self.engine
        if eng.cgroups is not None:
            # the groups were made in _start_locked, before prepare
            await eng.to_thread(eng.cgroups.add_process, c.id, process.pid)
        if not c.networks and not c.network_mode.startswith("container:"):
            c.networks = {c.network_mode: {}}  # a record from before networks were kept
        for name in list(c.networks):
            await self._attach(c, track, name, process.pid)
        await eng.to_thread(self._write_hosts, c)
        eng.plugins.hook.skiff_container_prestart(container=c, pid=process.pid)

    async def _release_run_resources(self, c: Container, track: Track) -> None:
        eng = self.engine
        await eng.to_thread(container_mounts.release, eng, c)
        for name in list(track.endpoints):
            await self._detach(c, track, name)
        c.ports = {}
        if eng.cgroups is not None:
            try:
                if not container_namespaces.private_pid(c.host_config):
                    # no pid namespace died with the main process to take
                    # its children along: runc's rule, kill what is left
                    await eng.to_thread(self._kill_leftovers, c)
                await eng.to_thread(eng.cgroups.destroy, c.id)
            except Exception as exc:
                log.warning("container.cgroup_destroy_failed", id=c.id, error=str(exc))

    def _kill_leftovers(self, c: Container) -> None:
        """SIGKILL every process still in ``c``'s groups, until none is left."""
        cgroups = self.engine.cgroups
        assert cgroups is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = cgroups.pids(c.id)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    # -- networks ------------------------------------------------------------

    async def _attach(self, c: Container, track: Track, name: str, pid: int) -> None:
        """Create and join the endpoint of network ``name``; fills ``c.networks[name]``."""
        eng = self.engine
        net = eng.networks.get(name)
        driver = eng.network_driver(net.driver)
        settings = c.networks.setdefault(name, {})
        endpoint = Endpoint(
            network_id=net.id, endpoint_id=secrets.token_hex(32), container_id=c.id,
            name=c.name, hostname=c.config.get("Hostname") or "",
            aliases=list(settings.get("Aliases") or []),
            requested_ip=(settings.get("IPAMConfig") or {}).get("IPv4Address") or "")
        primary = name == c.network_mode
        if primary:
            endpoint.port_bindings = {
                key: [PortBinding(str((b or {}).get("HostIp") or ""),
                                  str((b or {}).get("HostPort") or "")) for b in bindings or []]
                for key, bindings in (c.host_config.get("PortBindings") or {}).items()}
            endpoint.exposed_ports = sorted((c.config.get("ExposedPorts") or {}).keys())
            endpoint.publish_all = bool(c.host_config.get("PublishAllPorts"))
            endpoint.links = [
                Link(other.networks.get(name, {}).get("IPAddress", ""),
                     [(k.partition("/")[2] or "tcp", int(k.partition("/")[0]))
                      for k in (other.config.get("ExposedPorts") or {})])
                for other, _alias in self._links(c)
            ]
        ep = await eng.to_thread(driver.create_endpoint, net.id, endpoint)
        track.endpoints[name] = (driver, ep)
        await eng.to_thread(driver.join, ep, pid)
        settings.update(NetworkID=net.id, EndpointID=ep.endpoint_id if ep.ip_address else "",
                        IPAddress=ep.ip_address, IPPrefixLen=ep.ip_prefix_len,
                        Gateway=ep.gateway, MacAddress=ep.mac_address)
        if primary:
            c.ports = {key: None if bindings is None else
                       [{"HostIp": b.host_ip, "HostPort": b.host_port} for b in bindings]
                       for key, bindings in ep.ports.items()}
        eng.events.publish("network", "connect", net.id,
                           {"container": c.id, "name": net.name, "type": net.driver})

    async def _detach(self, c: Container, track: Track, name: str) -> None:
        """Leave and delete the endpoint of network ``name``; never raises."""
        driver, ep = track.endpoints.pop(name)
        for step in (driver.leave, driver.delete_endpoint):
            try:
                await self.engine.to_thread(step, ep)
            except Exception as exc:
                log.warning("container.network_release_failed", id=c.id, network=name,
                            step=step.__name__, error=str(exc))
        settings = c.networks.get(name)
        net = self.engine.networks.find(name)
        self.engine.events.publish(
            "network", "disconnect", net.id if net else (settings or {}).get("NetworkID", name),
            {"container": c.id, "name": name, "type": net.driver if net else ""})
        if settings is not None:
            for key in ("EndpointID", "IPAddress", "Gateway", "MacAddress"):
                settings[key] = ""
            settings["IPPrefixLen"] = 0

    def _links(self, c: Container) -> list[tuple[Container, str]]:
        """Running containers that ``c`` links to (``--link name:alias``), with the alias."""
        out = []
        for link in c.host_config.get("Links") or []:
            target, _, alias = link.partition(":")
            try:
                other = self.get(target.strip("/"))
            except NotFound:
                continue
            if other.state.Running:
                out.append((other, alias.rsplit("/", 1)[-1] or other.name))
        return out

    def _link_env(self, c: Container) -> list[str]:
        """Docker's legacy link variables (ALIAS_PORT_80_TCP_ADDR ...)."""
        env: list[str] = []
        for other, alias in self._links(c):
            prefix = alias.upper().replace("-", "_").replace(".", "_")
            ip = next((s.get("IPAddress") for s in other.networks.values()
                       if s.get("IPAddress")), "")
            env.append(f"{prefix}_NAME=/{c.name}/{alias}")
            ports = sorted(other.config.get("ExposedPorts") or {},
                           key=lambda k: int(k.partition("/")[0]))
            for i, key in enumerate(ports):
                port, _, proto = key.partition("/")
                proto = proto or "tcp"
                base = f"{prefix}_PORT_{port}_{proto.upper()}"
                if i == 0:
                    env.append(f"{prefix}_PORT={proto}://{ip}:{port}")
                env += [f"{base}={proto}://{ip}:{port}", f"{base}_ADDR={ip}",
                        f"{base}_PORT={port}", f"{base}_PROTO={proto}"]
            for item in other.config.get("Env") or []:
                key, _, value = item.partition("=")
                if key not in ("HOME", "PATH", "HOSTNAME"):
                    env.append(f"{prefix}_ENV_{key}={value}")
        return env

    def _write_hosts(self, c: Container) -> None:
        """/etc/hosts with the container's own addresses and its links (in place)."""
        if c.network_mode == "host" or c.network_mode.startswith("container:"):
            return
        lines = [
            "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
            "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix",
            "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters",
        ]
        for other, alias in self._links(c):
            ip = next((s.get("IPAddress") for s in other.networks.values()
                       if s.get("IPAddress")), "")
            if ip:
                names = dict.fromkeys([alias, other.config.get("Hostname") or "", other.name])
                lines.append(f"{ip}\t{' '.join(n for n in names if n)}")
        hostname = c.config.get("Hostname") or c.id[:12]
        for settings in c.networks.values():
            if settings.get("IPAddress"):
                lines.append(f"{settings['IPAddress']}\t{hostname}")
        # Truncate and rewrite the same inode: it is bind-mounted into the container.
        with open(c.hosts_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    async def connect(self, ref: str, network: str, config: dict[str, Any]) -> None:
        """``docker network connect``: now if running, else at the next start."""
        c = self.get(ref)
        net = self.engine.networks.get(network)
        if c.network_mode in ("host", "none") or c.network_mode.startswith("container:"):
            raise InvalidParameter(
                f"container cannot be disconnected from host network or connected to "
                f"{c.network_mode} network")
        if net.driver in ("host", "none"):
            raise InvalidParameter(f"container cannot be connected to {net.name} network")
        if net.name in c.networks:
            raise Conflict(f"endpoint with name {c.name} already exists in network {net.name}")
        track = self.tracks[c.id]
        async with track.lock:
            c.networks[net.name] = {
                "IPAMConfig": config.get("IPAMConfig"), "Links": config.get("Links"),
                "Aliases": config.get("Aliases"),
            }
            if c.state.Running:
                try:
                    await self._attach(c, track, net.name, c.state.Pid)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        if net.name in track.endpoints:
                            await self._detach(c, track, net.name)
                    del c.networks[net.name]
                    raise
                await self.engine.to_thread(self._write_hosts, c)
            c.save()

    async def disconnect(self, ref: str, network: str, force: bool = False) -> None:
        """``docker network disconnect``."""
        c = self.get(ref)
        net = self.engine.networks.get(network)
        if net.name not in c.networks:
            raise Conflict(f"container {c.id} is not connected to network {net.name}")
        track = self.tracks[c.id]
        async with track.lock:
            if net.name in track.endpoints:
                await self._detach(c, track, net.name)
            del c.networks[net.name]
            if c.state.Running:
                await self.engine.to_thread(self._write_hosts, c)
            c.save()

    def _open_log(self, c: Container) -> LogDriver | None:
        lc = c.host_config.get("LogConfig") or {}
        name = lc.get("Type") or "json-file"
        if name == "none":
            return None
        factory = self.engine.plugins.factory("logging", name)
        return factory(LogContext(container_id=c.id, container_name=c.name,
                                  log_path=c.log_path, options=dict(lc.get("Config") or {})))

    async def _monitor(self, c: Container, track: Track, process: ContainerProcess,
                       out_r: int, err_r: int, log_driver: LogDriver | None) -> None:
        async with trio.open_nursery() as n:
            for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
                if fd < 0:
                    continue  # a TTY has one output stream
                n.start_soon(pump, trio.lowlevel.FdStream(fd), name, track.hub, log_driver,
                             track.log_limiter)
            code = await process.wait()
            n.cancel_scope.deadline = trio.current_time() + OUTPUT_GRACE
        with trio.CancelScope(shield=True):
            if log_driver is not None:
                await trio.to_thread.run_sync(log_driver.close, limiter=track.log_limiter)
            oom = await self._oom_killed(c)
            await self._release_run_resources(c, track)
            track.process = None
            c.state = State(Status="exited", ExitCode=code, StartedAt=c.state.StartedAt,
                            FinishedAt=now_rfc3339(), OOMKilled=oom)
            self.restarts.after_exit(c, code)
            if c.id in self.by_id:
                c.save()
            track.hub.end_run()
            self.engine.plugins.hook.skiff_container_poststop(container=c, exit_code=code)
            if oom:
                self.event(c, "oom")
            self.event(c, "die", exitCode=code)
            notice, track.next_exit = track.next_exit, Notice()
            notice.fire(code)
            log.info("container.exit", id=c.id, code=code)
            if c.host_config.get("AutoRemove") and c.id in self.by_id:
                try:
                    await self.remove(c.id, force=True)
                except Exception as exc:
                    log.error("container.autoremove_failed", id=c.id, error=str(exc))

    async def _oom_killed(self, c: Container) -> bool:
        """Ask the cgroup driver, before its groups go, whether the OOM killer struck."""
        eng = self.engine
        if eng.cgroups is None:
            return False
        try:
            oom = await eng.to_thread(eng.cgroups.oom_killed, c.id)
        except Exception as exc:
            log.warning("container.oom_check_failed", id=c.id, error=str(exc))
            return False
        if oom:
            log.warning("container.oom", id=c.id, name=c.name)
        return oom

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
        track.process.kill(signum)
        self.event(c, "kill", signal=signum)
        await lifecycle.thaw_after_signal(self, c, signum)

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

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        c = self.get(ref)
        track = self.tracks[c.id]
        self.restarts.forget(c)
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
        if c.id not in self.by_id:
            return  # removed meanwhile (auto-remove)
        if c.state.Status == "removing":
            raise Conflict(f"removal of container {c.id} is already in progress")
        c.state.Status = "removing"
        eng = self.engine
        eng.plugins.hook.skiff_container_remove(container=c)
        try:
            await eng.to_thread(eng.layers.remove_rw, c.id)
        except Exception:
            c.state.Status = "dead"
            c.state.Dead = True
            c.save()
            raise
        await eng.to_thread(shutil.rmtree, c.root, True)
        await eng.to_thread(
            shutil.rmtree, os.path.join(eng.exec_root, "containers", c.id), True
        )
        if c.userns.get("Mode") == "auto" and eng.userns_ranges is not None:
            # only now: the block is free once nothing of the container is left
            await eng.to_thread(eng.userns_ranges.release, c.id)
        del self.by_id[c.id]
        if self.by_name.get(c.name) == c.id:
            del self.by_name[c.name]
        self.tracks.pop(c.id, None)
        # volumes: release what a failed start left mounted; rm -v and --rm drop anonymous
        await eng.to_thread(container_mounts.on_remove, eng, c,
                            volumes or bool(c.host_config.get("AutoRemove")))
        track.removed.fire(c.state.ExitCode)
        self.event(c, "destroy")
        log.info("container.remove", id=c.id)

    # -- attach and logs -----------------------------------------------------

    async def attach(self, ref: str, stream: trio.abc.Stream, *, stdin: bool, stdout: bool,
                     stderr: bool, logs: bool, framed: bool,
                     detach_keys: bytes = b"\x10\x11") -> None:
        """Serve a hijacked connection until the container's current run ends.

        With a TTY, ``detach_keys`` typed on stdin end the attach (the
        container keeps running); so does the end of stdin unless the
        container closes its stdin then (``StdinOnce`` without TTY): Docker's
        rules.
        """
        from skiff.core.api.streams import multiplex_frame

        c = self.get(ref)
        track = self.tracks[c.id]
        hub = track.hub
        kinds = {"stdout": 1, "stderr": 2}

        def frame(kind: str, data: bytes) -> bytes:
            return multiplex_frame(kinds[kind], data) if framed else data

        sub = hub.subscribe(stdout=stdout, stderr=stderr)
        progress = RawProgress(hub.pending, time.time())
        self.event(c, "attach")
        try:
            if logs and self._log_readable(c):
                recorded = RecordedLog(self._open_log_reader(c),
                                       ReadConfig(stdout=stdout, stderr=stderr),
                                       self.engine.to_thread)
                try:
                    await recorded.start()
                    async for batch in recorded.batches():
                        await stream.send_all(b"".join(frame(m.stream, m.line) for m in batch))
                finally:
                    recorded.close()

            async def copy_stdin(scope: trio.CancelScope) -> None:
                if not (stdin and c.config.get("OpenStdin")):
                    return
                await hub.stdin_ready.wait()
                if hub.stdin is None:
                    return
                how = await feed_stdin(stream, hub.stdin, tty=bool(c.config.get("Tty")),
                                       close_on_eof=bool(c.config.get("StdinOnce")),
                                       detach_keys=detach_keys)
                if how == "detach":
                    self.event(c, "detach")
                if how in ("detach", "eof"):
                    scope.cancel()

            async def copy_output() -> None:
                async for kind, data, when in sub:
                    await stream.send_all(frame(kind, data))
                    progress.sent(kind, data, when)
                if not sub.dropped or not self._log_readable(c):
                    return
                # Fell behind: on from the log, at this client's pace (nothing lost,
                # nothing held in memory, nobody else slowed), then live lines.
                cfg = ReadConfig(stdout=stdout, stderr=stderr)
                log.info("container.attach_catching_up", id=c.id,
                         reason="the client fell behind the live output; reading on from "
                                "the log")
                async for batch in self._log_messages(c, cfg, progress.cursor, follow=True,
                                                      first=progress.cursor.rewind(cfg)):
                    out = [frame(m.stream, data) for m in batch if (data := progress.trim(m))]
                    if out:
                        await stream.send_all(b"".join(out))

            async with trio.open_nursery() as n:
                n.start_soon(copy_stdin, n.cancel_scope)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await copy_output()
                n.cancel_scope.cancel()
        finally:
            hub.unsubscribe(sub)

    def resize(self, ref: str, height: int, width: int) -> None:
        """``POST /containers/{id}/resize``: the TTY's size (SIGWINCH in the container)."""
        c = self.get(ref)
        if not c.state.Running:
            raise Conflict(f"Container {c.id} is not running")
        try:
            self.tracks[c.id].hub.resize(height, width)
        except OSError as exc:
            raise InvalidParameter(f"cannot resize the TTY: {exc.strerror}") from exc

    def _open_log_reader(self, c: Container) -> LogDriver:
        lc = c.host_config.get("LogConfig") or {}
        factory = self.engine.plugins.factory("logging", lc.get("Type") or "json-file")
        return factory(LogContext(container_id=c.id, container_name=c.name,
                                  log_path=c.log_path, options=dict(lc.get("Config") or {})))

    async def logs(self, ref: str, cfg: ReadConfig, *, follow: bool, timestamps: bool,
                   framed: bool) -> AsyncIterator[bytes]:
        """The log stream of ``docker logs``, history first, then live when following."""
        from skiff.core.api.streams import multiplex_frame
        from skiff.core.timefmt import rfc3339

        c = self.get(ref)
        if not self._log_readable(c):
            raise InvalidParameter(
                'configured logging driver does not support reading: "none"'
            )
        kinds = {"stdout": 1, "stderr": 2}

        def render(kind: str, data: bytes, when: float) -> bytes:
            if timestamps:
                data = rfc3339(when).encode() + b" " + data
            return multiplex_frame(kinds[kind], data) if framed else data

        async for batch in self._log_messages(c, cfg, LogCursor(), follow=follow, first=cfg):
            # one HTTP chunk per batch, not per line
            yield b"".join(render(m.stream, m.line, m.time) for m in batch)

    def _log_readable(self, c: Container) -> bool:
        return (c.host_config.get("LogConfig") or {}).get("Type") != "none"

    async def _log_messages(self, c: Container, cfg: ReadConfig, cursor: LogCursor, *,
                            follow: bool, first: ReadConfig) -> AsyncIterator[list[LogMessage]]:
        """The recorded log (``first`` says what of it), then live lines when following.

        The log is read at the client's pace (each batch is taken when the
        last one was consumed); a client that falls behind the live lines is
        dropped from them and reads on from the log where ``cursor`` says it
        stopped, so it never holds the daemon's memory or anyone else up.
        """
        hub = self.tracks[c.id].hub
        read_cfg = first
        while True:
            recorded = RecordedLog(self._open_log_reader(c), read_cfg, self.engine.to_thread)
            live = None
            try:
                async with hub.log_lock:
                    await recorded.start()
                    if follow and c.state.Running:
                        live = hub.subscribe(stdout=cfg.stdout, stderr=cfg.stderr, lines=True)
                async for batch in recorded.batches():
                    new = [m for m in batch if cursor.take(m)]
                    if new:
                        yield new
                recorded.close()
                if live is None:
                    return
                async for kind, data, when in live:
                    if cfg.until is not None and when > cfg.until:
                        return
                    msg = LogMessage(kind, data, when)  # type: ignore[arg-type]
                    if cursor.take(msg):
                        yield [msg]
                if not live.dropped:
                    return  # the run ended
            finally:
                recorded.close()
                if live is not None:
                    hub.unsubscribe(live)
            log.info("container.logs_catching_up", id=c.id,
                     reason="the client fell behind the live output; reading on from the log")
            read_cfg = cursor.rewind(cfg)

    # -- shutdown --------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every running container (no live-restore yet), in parallel."""
        self.restarts.shutdown()
        async with trio.open_nursery() as n:
            for c in list(self.by_id.values()):
                track = self.tracks.get(c.id)
                if c.state.Running and track is not None and track.process is not None:
                    n.start_soon(self._stop, c, track, None)


EMBEDDED_DNS = "127.0.0.11"


def initial_networks(network_mode: str, body: dict[str, Any], hc: dict[str, Any]
                     ) -> dict[str, dict[str, Any]]:
    """The container's networks at create: its NetworkMode's, with EndpointsConfig."""
    if network_mode.startswith("container:"):
        return {}
    configs = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    requested = hc.get("NetworkMode") or "default"
    cfg = configs.get(requested) or configs.get(network_mode) or {}
    settings = {"IPAMConfig": cfg.get("IPAMConfig"), "Links": cfg.get("Links"),
                "Aliases": cfg.get("Aliases")}
    if network_mode == "bridge" and hc.get("Links"):
        settings["Links"] = list(hc["Links"])
    return {network_mode: settings}


def resolv_conf_for(network_mode: str) -> str:
    """The host's resolv.conf; loopback resolvers are dropped outside the host netns."""
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    if network_mode == "host":
        return "\n".join(lines) + "\n"
    kept = [
        line for line in lines
        if not (line.startswith("nameserver") and len(line.split()) > 1
                and (line.split()[1].startswith("127.") or line.split()[1] == "::1"))
    ]
    return "\n".join(kept) + ("\n" if kept else "")


def json_status(code: int, error: str | None = None) -> bytes:
    return json.dumps({"StatusCode": code, "Error": {"Message": error} if error else None}
                      ).encode() + b"\n"
