"""The ``skiff`` container runtime: a fork server, a shim per container, a Python init.

Registered under the ``skiff.isolation`` entry point ``forkserver``.  It also
fills Docker's security defaults (capabilities, masked and read-only paths,
no-new-privileges) into every container spec.

Process model::

    skiffd ──unix socket──▶ fork server ──fork──▶ shim ──unshare(pid), fork──▶ init ─exec─▶ cmd
             (one, started by start())          (per container,     │
                                                 owns the connection)
                                                                    └─execve once cmd runs─▶
                                                  skiff-monitor (C: waits, exitcode, {"exit": N})

``prepare`` connects to the fork server and sends the spec with the stdio
descriptors; the fork server forks a shim that keeps the connection (or hands
the connection to a spare shim forked ahead of time, whose init already
waits in fresh pid, uts, ipc and net namespaces), so the rest of the
conversation (pid, go, started, exit) is between the daemon and that
container's shim alone.

With ``tty`` the init allocates the pseudo-terminal inside the container (its
own ``/dev/pts``, like runc's console socket) and the master travels init ->
shim -> daemon as SCM_RIGHTS on the ready and pid messages; it ends up in
``ForkServerProcess.terminal`` (shimclient.py), owned by the caller (see
``ContainerProcess.terminal``).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import structlog
import trio

from skiff.core import hostdevices
from skiff.core.hookspecs import (
    Adoption,
    ContainerSpec,
    ContainerView,
    ExecSpec,
    MountSpec,
    RuntimeContext,
    StartError,
    Stdio,
    hookimpl,
)
from skiff.plugins.isolation import adopt, capabilities, monitor, seccomp, securityopts
from skiff.plugins.isolation.forkserver import (
    PARENT_ENV,
    READY,
    short_socket_path,
    spare_socket_path,
    userns_spare_socket_path,
)
from skiff.plugins.isolation.shim import spec_fits_spare, spec_fits_userns_spare
from skiff.plugins.isolation.shimclient import ForkServerProcess, ShimChannel

log = structlog.get_logger("skiff.isolation")

FORKSERVER_MODULE = "skiff.plugins.isolation.forkserver"
IDMAPFS_MODULE = "skiff.plugins.isolation.idmapfs"
SOCKET_NAME = "forkserver.sock"

#: Docker's masked paths (moby oci/defaults.go)
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

#: Docker's read-only paths
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.11"


@hookimpl
def skiff_runtimes() -> Mapping[str, Any]:
    return {"skiff": ForkServerRuntime}


@hookimpl
def skiff_container_validate(host_config: Mapping[str, Any],
                             daemon_config: Mapping[str, Any]) -> None:
    """Refuse, at create, security settings skiff cannot honour."""
    hc = host_config
    security = securityopts.parse(hc.get("SecurityOpt"))
    caps = capabilities.tweak(capabilities.DEFAULT_CAPABILITIES, hc.get("CapAdd"),
                              hc.get("CapDrop"), bool(hc.get("Privileged")))
    seccomp.check_request(security.seccomp, caps)
    # --device: each host path must hold a device now, or the create is a 400
    if hostdevices.mapped_devices(hc) and daemon_config.get("userns-remap") \
            and hc.get("UsernsMode") != "host":
        # a user namespace may not mknod; the host's node would have to be
        # bind-mounted in, which this runtime does not do yet
        raise ValueError(
            "--device is not supported yet for containers in a user namespace "
            "(userns-remap); run this container with --userns=host to use devices")


@hookimpl
def skiff_daemon_config_check(config: Mapping[str, Any]) -> None:
    """daemon.json ``seccomp-profile``: read, checked and compiled now."""
    seccomp.check_daemon_config(config)


@hookimpl
def skiff_security_options(config: Mapping[str, Any]) -> list[str]:
    options = seccomp.security_options(config)
    if config.get("no-new-privileges"):
        options.append("name=no-new-privileges")
    return options


@hookimpl(tryfirst=True)
def skiff_container_spec(
    container: ContainerView, spec: ContainerSpec, daemon_config: Mapping[str, Any]
) -> None:
    """Docker's defaults from HostConfig; runs first so other plugins amend them."""
    hc = container.host_config or {}
    privileged = bool(hc.get("Privileged"))
    security = securityopts.parse(hc.get("SecurityOpt"))
    spec.capabilities = capabilities.tweak(
        capabilities.DEFAULT_CAPABILITIES, hc.get("CapAdd"), hc.get("CapDrop"), privileged
    )
    if privileged or security.unconfined_paths:
        spec.masked_paths = []
        spec.readonly_paths = []
    else:
        # API 1.40+: explicit lists (even empty ones) replace the defaults
        masked = hc.get("MaskedPaths")
        readonly = hc.get("ReadonlyPaths")
        spec.masked_paths = list(DEFAULT_MASKED_PATHS if masked is None else masked)
        spec.readonly_paths = list(DEFAULT_READONLY_PATHS if readonly is None else readonly)
    spec.readonly_sysfs = not privileged
    nnp = security.no_new_privileges
    spec.no_new_privileges = bool(daemon_config.get("no-new-privileges")) if nnp is None else nnp
    spec.seccomp = None if privileged else seccomp.profile_for(
        security.seccomp, daemon_config, spec.capabilities)
    if hc.get("ReadonlyRootfs"):
        spec.readonly_rootfs = True
    # the nodes only; the cgroup driver's device filter decides what opens
    spec.devices = hostdevices.container_devices(hc)


# ---------------------------------------------------------------------------
# The runtime: the fork server, and the first words with each shim (the rest
# of the conversation is shimclient.py's)
# ---------------------------------------------------------------------------


class ForkServerRuntime:
    """The ``skiff`` runtime; satisfies ``Runtime``.

    ``ctx.exec_root`` holds the fork server's socket.  Containers' bundles are
    the caller's (``ContainerSpec.bundle``).
    """

    name = "skiff"

    def __init__(self, ctx: RuntimeContext) -> None:
        self.exec_root = os.path.abspath(ctx.exec_root)
        self.options = dict(ctx.options)
        self.socket_path = os.path.join(self.exec_root, SOCKET_NAME)
        #: exec-opt ``skiff.spare=false`` turns pre-forked shims off
        self.spares = self.options.get("skiff.spare", "true").lower() not in ("false", "0", "no")
        #: exec-opt ``skiff.monitor=false``: a running container keeps its
        #: Python shim instead of skiff-monitor (the fallback, on purpose)
        self.monitor = self.options.get("skiff.monitor", "true").lower() not in (
            "false", "0", "no")
        #: exec-opt ``skiff.spool-max``: bytes a protocol 2 monitor spools
        #: while no daemon reads (default in skiff-monitor.c: 8 MiB)
        spool = self.options.get("skiff.spool-max", "")
        self.spool_max = int(spool) if spool.isdigit() else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._start_lock = trio.Lock()
        #: libseccomp compiles in a worker thread, one filter at a time
        self._compile_limiter = trio.CapacityLimiter(1)

    @property
    def forkserver_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        async with self._start_lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            await self._spawn()

    async def _spawn(self) -> None:
        os.makedirs(self.exec_root, 0o711, exist_ok=True)
        if self.monitor:
            _warn_without_monitor()
        env = dict(os.environ)
        env[PARENT_ENV] = str(os.getpid())
        # Popen right here, not trio.lowlevel.open_process: trio spawns from a
        # worker thread, and PR_SET_PDEATHSIG fires when the *thread* that
        # forked exits, which trio's idle workers do after a few seconds.
        argv = [sys.executable, "-m", FORKSERVER_MODULE, self.socket_path]
        if not self.spares:
            argv.append("--no-spare")
        if not self.monitor:
            argv.append("--no-monitor")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C at the daemon's terminal is the daemon's
        )
        assert proc.stdout is not None
        stream = trio.lowlevel.FdStream(os.dup(proc.stdout.fileno()))
        proc.stdout.close()
        got = b""
        try:
            with trio.move_on_after(30):
                while not got.endswith(b"\n"):
                    chunk = await stream.receive_some(64)
                    if not chunk:
                        break
                    got += chunk
        except BaseException:
            # cancelled (daemon shutting down): leave no half-started server
            proc.kill()
            proc.wait()
            raise
        finally:
            await stream.aclose()
        if got != READY:
            proc.kill()
            code = await _wait_popen(proc)
            raise RuntimeError(
                f"the skiff fork server did not start (exit code {code}); "
                "see the daemon's stderr for its traceback"
            )
        self._proc = proc

    async def stop(self) -> None:
        async with self._start_lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await _wait_popen(proc)
                if proc.poll() is None:
                    proc.kill()
                    await _wait_popen(proc)
            if proc.returncode != 0:
                # it could not clean up after itself
                for path in (self.socket_path, spare_socket_path(self.socket_path),
                             userns_spare_socket_path(self.socket_path)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

    async def _ensure_started(self) -> None:
        if self._proc is None:
            raise StartError("the skiff runtime is not started")
        if self._proc.poll() is not None:
            # the fork server died (OOM killer, an operator's kill): start anew
            await self.start()

    async def probe_idmapped_rootfs(
        self, mounts: list[MountSpec], uid_map: list[tuple[int, int, int]],
        gid_map: list[tuple[int, int, int]],
    ) -> str | None:
        """Build the rootfs as a remapped container's shim would, in a fresh
        process (it makes a user namespace, which a threaded daemon cannot)."""
        target = os.path.join(self.exec_root, f"idmap-probe-{secrets.token_hex(4)}")
        request = {"mounts": [m.to_json() for m in mounts], "target": target,
                   "uid_map": [list(m) for m in uid_map], "gid_map": [list(m) for m in gid_map]}
        try:
            proc = await trio.run_process(
                [sys.executable, "-m", IDMAPFS_MODULE], stdin=json.dumps(request).encode(),
                capture_stdout=True, capture_stderr=True, check=False)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(target)
        try:
            return json.loads(proc.stdout)["error"]
        except (ValueError, KeyError, TypeError):
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
            return f"the probe failed (exit code {proc.returncode}): {' '.join(tail)}"

    async def exec(self, spec: ExecSpec, stdio: Stdio) -> ForkServerProcess:
        """A fresh shim joins the container (see ``shim.py``); never a spare,
        whose init has namespaces of its own already."""
        await self._ensure_started()
        data = spec.to_json()
        data["exec"] = True
        if spec.privileged:
            data["capabilities"] = list(capabilities.CAPABILITIES)
        await self._compile_seccomp(data)
        payload = json.dumps(data).encode() + b"\n"
        try:
            return await self._prepare(stdio, payload, self.socket_path, "", spec.tty,
                                       spec.oom_score_adj)
        except _NoReply:
            raise StartError("the exec shim exited before the process was ready") from None

    async def prepare(self, spec: ContainerSpec, stdio: Stdio) -> ForkServerProcess:
        await self._ensure_started()
        data = spec.to_json()
        # the shim and init resolve paths from the fork server's directory
        bundle = data["bundle"] = os.path.abspath(spec.bundle)
        await self._compile_seccomp(data)
        payload = json.dumps(data).encode() + b"\n"
        # a spare fits a default container; a remapped spare a remapped one
        # (the fork server keeps one of those once it was asked for one)
        socket_path = self.socket_path
        if self.spares and spec_fits_spare(spec.namespaces):
            socket_path = spare_socket_path(self.socket_path)
        elif self.spares and spec_fits_userns_spare(spec.namespaces):
            socket_path = userns_spare_socket_path(self.socket_path)
        try:
            return await self._prepare(stdio, payload, socket_path, bundle, spec.tty,
                                       spec.oom_score_adj)
        except _NoReply:
            if socket_path == self.socket_path:
                raise StartError(
                    "the container shim exited before the container was ready"
                ) from None
        # A spare shim that died just as it was handed our connection never
        # forked anything for us; a fresh shim is safe to ask.
        try:
            return await self._prepare(stdio, payload, self.socket_path, bundle, spec.tty,
                                       spec.oom_score_adj)
        except _NoReply:
            raise StartError("the container shim exited before the container was ready") from None

    async def adopt(self, container_id: str, bundle: str) -> Adoption:
        """Take back a container a daemon before us started (live-restore):
        its ``skiff-monitor`` must speak protocol 2 and be proved to be the
        one recorded in ``<bundle>/monitor`` (its pid and start time); see
        adopt.py.  Raises ``StartError`` saying why not otherwise."""
        got = await adopt.adopt_recorded(bundle)
        ends = got.ends
        return Adoption(got.process, ends.get("stdout", -1), ends.get("stderr", -1),
                        ends.get("stdin", -1), got.spooled.records, got.spooled.dropped)

    async def _compile_seccomp(self, data: dict[str, Any]) -> None:
        """Replace the payload's seccomp filter with its BPF program (``seccomp_bpf``).

        The init installs bytes and knows nothing of profiles; a filter seen
        before costs a dictionary lookup here, a new one a libseccomp compile
        in a worker thread.
        """
        resolved = data.pop("seccomp", None)
        if resolved is None:
            return
        try:
            key = seccomp.FILTERS.key(resolved)
            program = seccomp.FILTERS.get(key)
            if program is None:
                program = await trio.to_thread.run_sync(
                    seccomp.FILTERS.compile, resolved, key, limiter=self._compile_limiter)
        except seccomp.CompileError as exc:
            raise StartError(f"cannot compile the seccomp filter: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise StartError(f"invalid seccomp filter in the container spec: {exc!r}") from None
        data["seccomp_bpf"] = program.hex()

    async def _prepare(
        self, stdio: Stdio, payload: bytes, path: str, bundle: str, tty: bool,
        oom_score_adj: int = 0,
    ) -> ForkServerProcess:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        chan = ShimChannel(sock)
        try:
            try:
                with short_socket_path(path) as short:
                    await sock.connect(short)
            except OSError as exc:
                raise StartError(f"cannot reach the skiff fork server: {exc.strerror}") from None
            fds = array.array("i", [stdio.stdin, stdio.stdout, stdio.stderr])
            if min(fds) < 0:
                raise StartError(f"invalid stdio descriptors {list(fds)}; pass /dev/null instead")
            if bundle and (stdio.keep_ends or max(_daemon_ends(stdio).values(), default=-1) >= 0):
                # copies for skiff-monitor (protocol 2): the names say which follow
                ends = {k: v for k, v in _daemon_ends(stdio).items() if v >= 0}
                fds.extend(ends.values())
                payload = _with_ends(payload, list(ends), self.spool_max)
            try:
                sent = await sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                rest = payload[sent:]
                while rest:
                    rest = rest[await sock.send(rest) :]
            except (BrokenPipeError, ConnectionResetError):
                raise _NoReply from None
            # with a TTY the pid reply carries the pty master from the container
            reply = await chan.receive(want_fds=1 if tty else 0)
            if reply is None:
                raise _NoReply
            if "error" in reply:
                raise StartError(reply["error"], int(reply.get("exit_code", 125)))
            if tty and not chan.fds:
                raise StartError("the container shim sent no terminal for a TTY process")
            pid = int(reply["pid"])
            # the init is blocked waiting for go and only its shim may reap it,
            # so this pid cannot have been recycled yet
            pidfd = os.pidfd_open(pid)
            if oom_score_adj:
                try:
                    _set_oom_score_adj(pid, oom_score_adj)
                except BaseException:
                    os.close(pidfd)
                    raise
        except BaseException:
            # closing makes the shim kill a prepared init: nothing stays behind
            sock.close()
            for fd in chan.fds:
                os.close(fd)
            raise
        terminal, *extra = chan.fds or [-1]
        chan.fds = []
        for fd in extra:  # never sent by our shim; not worth failing over
            os.close(fd)
        return ForkServerProcess(chan, pid, pidfd, bundle, terminal)


def _daemon_ends(stdio: Stdio) -> dict[str, int]:
    return {"stdout": stdio.daemon_stdout, "stderr": stdio.daemon_stderr,
            "stdin": stdio.daemon_stdin}


def _with_ends(payload: bytes, names: list[str], spool_max: int | None) -> bytes:
    """The spec with ``monitor_ends``: which of the daemon's ends ride along
    after the three stdio descriptors, for the monitor to keep."""
    data = json.loads(payload)
    data["monitor_ends"] = names
    if spool_max is not None:
        data["spool_max"] = spool_max
    return json.dumps(data).encode() + b"\n"


_monitor_warned = False


def _warn_without_monitor() -> None:
    """Once per daemon: running containers keep a Python shim each (the fork
    server decides the same way, see ``shim.become_monitor``)."""
    global _monitor_warned
    if _monitor_warned or monitor.available():
        return
    _monitor_warned = True
    log.warning("runtime.no_monitor", path=monitor.MONITOR_PATH,
                consequence="each running container keeps a Python shim (about 12 MB) "
                            "instead of skiff-monitor; reinstall skiff with gcc and "
                            "libc6-dev to build it")


def _set_oom_score_adj(pid: int, value: int) -> None:
    """By the daemon, host root: a lower score needs CAP_SYS_RESOURCE in the
    host's user namespace, which a remapped container's init lacks.  The
    process waits for go, so what it starts inherits the value."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        raise StartError(f"cannot set the OOM score adjustment {value}: {exc.strerror}") from None


class _NoReply(Exception):
    """The shim closed the connection without a word."""


async def _wait_popen(proc: subprocess.Popen[bytes]) -> int:
    """Reap ``proc`` without blocking the event loop."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return proc.wait()
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return proc.wait()
