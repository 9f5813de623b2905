"""The container init: the child the shim forks, which becomes the user's process.

It runs inside the fork server's memory image (no new interpreter), already
PID 1 of the container's pid namespace.  One close-on-exec socket pair ties
it to the shim, carrying newline-delimited JSON:

* init -> shim: ``{"ready": true}`` once the container is built (with
  ``tty``: carrying the pty master as SCM_RIGHTS, see
  ``initprocess.open_terminal``), or
  ``{"error": ..., "exit_code": ...}``; after "go", an error line if
  ``execve`` failed.  The init's end closing on a successful exec tells the
  shim the user's command runs.
* shim -> init: ``{"cmd": "go"}``; EOF means abort.  A spare init (made
  before its container was asked for) first gets ``{"spec": ...}`` with the
  three stdio descriptors.

A socket pair rather than two pipes because a spare init receives its stdio
as SCM_RIGHTS.

Everything that can fail because of the image or the spec (mounts, user,
command lookup, working directory) happens before "ready", so ``prepare``
reports it and ``go`` nearly never fails.

This module holds the conversation with the shim, the namespaces and
cgroups, and the order of the steps (``build``, ``build_exec``);
``initprocess`` resolves the user's process before "ready" and becomes it
after "go"; ``containerfs`` builds the filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket

from skiff.core import syscalls as sc
from skiff.plugins.isolation import (
    capabilities,
    containerfs,
    fdmounts,
    initprocess,
    mounts,
    users,
)
from skiff.plugins.isolation.channel import LineChannel, set_comm
from skiff.plugins.isolation.initprocess import InitError, Prepared

# typing and dataclasses stay out of the fork server (see users.py)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

#: namespace kinds of ContainerSpec.namespaces -> clone flag
NAMESPACE_FLAGS: dict[str, int] = {
    "mount": sc.CLONE_NEWNS,
    "uts": sc.CLONE_NEWUTS,
    "ipc": sc.CLONE_NEWIPC,
    "net": sc.CLONE_NEWNET,
    "cgroup": sc.CLONE_NEWCGROUP,
    "pid": sc.CLONE_NEWPID,
    "user": sc.CLONE_NEWUSER,
}

#: namespaces a spare init makes before it knows its spec (see shim.py for
#: why the mount namespace is not among them)
SPARE_NAMESPACES = ("uts", "ipc", "net")
SPARE_FLAGS = sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET


def run(spec: dict[str, Any], stdio: list[int], chan: LineChannel, preset: int = 0) -> NoReturn:
    """Build the container, report, wait for go, exec.  Never returns.

    ``preset`` holds the clone flags of namespaces a spare init already made.
    """
    set_comm(b"skiff-init")
    _serve(build, (spec, preset), stdio, chan, spec.get("cgroup_procs") or [])


def run_exec(spec: dict[str, Any], stdio: list[int], chan: LineChannel,
             cgroups: list[int]) -> NoReturn:
    """The child of an exec shim, born inside the container's namespaces:
    report, wait for go, exec.  ``cgroups`` are descriptors of the
    container's ``cgroup.procs`` files the shim opened while it could."""
    set_comm(b"skiff-exec")
    _serve(build_exec, (spec,), stdio, chan, cgroups)


def _serve(prepare: Any, args: tuple[Any, ...], stdio: list[int], chan: LineChannel,
           cgroups: list[str] | list[int], adopt: bool = True) -> NoReturn:
    """The shim conversation shared by a container's init and an exec'd process.

    ``adopt``: take ``stdio`` as 0-2 and close everything else first (not for
    stage two of a remapped container, whose stage one did that).
    """
    code = 125
    try:
        # first: whatever we do from here on counts against the container
        join_cgroups(cgroups)
        if adopt:
            stdio = _adopt_stdio(stdio, chan.fileno())
        prepared = prepare(*args)
        if prepared.master >= 0:
            # the daemon's end of the terminal: ours must not outlive the send,
            # or the daemon would never read EIO (its EOF) after the exit
            try:
                chan.send({"ready": True}, [prepared.master])
            finally:
                os.close(prepared.master)
                prepared.master = -1
        else:
            chan.send({"ready": True})
        go = chan.receive()
        if go is None or go.get("cmd") != "go":
            # the shim (or the daemon behind it) gave up on this container
            os._exit(code)
        initprocess.execute(prepared, stdio, chan.fileno())
    except InitError as exc:
        code = exc.exit_code
        _report(chan, str(exc), code)
    except BaseException as exc:  # anything unexpected must still reach the daemon
        _report(chan, f"container init failed: {exc}", code)
    finally:
        os._exit(code)


#: the namespaces a remapped container's init makes before it knows its spec
#: (with the user namespace, which owns them); the mount namespace waits for
#: the spec, as for a spare (see shim.py)
USERNS_FLAGS = sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWPID


def userns_stage_one(namespaces: dict[str, str | None] | None, chan: LineChannel) -> NoReturn:
    """Stage one of a remapped container's init: its namespaces; never returns.

    Creates the user namespace together with the other new namespaces in one
    ``unshare``, so that they belong to it (or, for a container that shares
    another's network or pid namespace, joins that container's user
    namespace first and then those), forks stage two, which is PID 1 of the
    new pid namespace, reports ``{"init": pid}`` and exits; the shim (a child
    subreaper) adopts stage two.  ``namespaces`` None: a spare's, made before
    any spec (a user namespace of its own and new uts, ipc, net and pid).

    Nothing here needs a mapping: the shim writes it once the spec is known.
    """
    code = 125
    try:
        joins: list[tuple[int, int]] = []
        flags = USERNS_FLAGS
        if namespaces is not None:
            flags = 0
            for kind, path in namespaces.items():
                # the mount namespace waits for the spec; a cgroup namespace for go
                if path is None and kind not in ("cgroup", "user", "mount"):
                    if kind not in NAMESPACE_FLAGS:
                        raise InitError(f"unknown namespace kind {kind!r}")
                    flags |= NAMESPACE_FLAGS[kind]
            for kind in _JOIN_ORDER:
                path = namespaces.get(kind)
                if path is None or kind == "mount":
                    continue
                try:
                    joins.append((NAMESPACE_FLAGS[kind], os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
                except OSError as exc:
                    raise InitError(f"cannot open {kind} namespace {path}: {exc.strerror} "
                                    "(is the container whose namespaces this one shares "
                                    "still running?)") from None
        try:
            if not joins or joins[0][0] != sc.CLONE_NEWUSER:
                if joins:
                    raise InitError("a container with a user namespace of its own cannot "
                                    "join another's namespaces; join its user namespace")
                # one call: the user namespace is made first and owns the rest
                sc.unshare(sc.CLONE_NEWUSER | flags)
            else:
                # its user namespace first: its capabilities let us into the others
                for nstype, fd in joins:
                    sc.setns(fd, nstype)
                sc.unshare(flags)
        except OSError as exc:
            raise InitError(f"cannot create the container's namespaces: {exc.strerror}") from None
        finally:
            for _, fd in joins:
                os.close(fd)
        barrier_r, barrier_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(barrier_w)
            # our word must reach the shim before anything of stage two's
            os.read(barrier_r, 1)
            os.close(barrier_r)
            userns_stage_two(chan)
        os.close(barrier_r)
        chan.send({"init": pid})
        os.close(barrier_w)
        code = 0
    except InitError as exc:
        code = exc.exit_code
        _report(chan, str(exc), code)
    except BaseException as exc:
        _report(chan, f"container init failed: {exc}", code)
    finally:
        os._exit(code)


def userns_stage_two(chan: LineChannel) -> NoReturn:
    """PID 1 of a remapped container: waits for its spec, then builds it.

    Until the spec comes it is still the host's uid 0 to the filesystem (no
    mapping counts before ``setresuid``), with capabilities only in its own
    user namespace.  The shim, host root, meanwhile writes the mappings, puts
    it into the container's cgroups and sends, with the spec, what needs host
    root: the stdio, the root filesystem as a detached mount and every bind
    mount's source likewise (``{"spec": ..., "binds": [keys]}``).  Then it
    makes its mount namespace (a fresh copy of the host's, owned by its user
    namespace), opens the rootfs mount point while the owner's permission
    still reaches the daemon's root-only directory, becomes the namespace's
    root and builds the container as ``run`` does.
    """
    set_comm(b"skiff-init")
    code = 125
    try:
        chan.send({"idle": True})
        with contextlib.suppress(Exception):  # an optimisation; never a reason to fail
            warm_up()
        message = chan.receive(want_fds=_MAX_FDS)
        fds, chan.fds = chan.fds, []
        if message is None or "spec" not in message:
            os._exit(code)
        spec, keys = message["spec"], list(message.get("binds") or [])
        if len(fds) != 4 + len(keys):
            raise InitError(f"expected {4 + len(keys)} descriptors with the spec, "
                            f"got {len(fds)}")
        stdio = _adopt_stdio(fds[:3], chan.fileno(), keep=fds[3:])
        files = set(message.get("files") or [])
        pre = containerfs.Prebuilt(fds[3], -1, {key: (fd, key in files)
                                                for key, fd in zip(keys, fds[4:], strict=True)})
        try:
            sc.unshare(sc.CLONE_NEWNS)
            rootfs = os.path.join(os.path.abspath(spec["bundle"]), "rootfs")
            try:
                pre.rootfs_target = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise InitError(f"cannot open the container's rootfs {rootfs}: "
                                f"{exc.strerror}") from None
            try:
                os.setresgid(0, 0, 0)
                os.setgroups([])
                os.setresuid(0, 0, 0)
            except OSError as exc:
                raise InitError(f"cannot become root in the user namespace: {exc.strerror} "
                                "(are its uid and gid 0 mapped?)") from None
        except BaseException:
            pre.close()
            raise
    except InitError as exc:
        _report(chan, str(exc), exc.exit_code)
        os._exit(exc.exit_code)
    except BaseException as exc:
        _report(chan, f"container init failed: {exc}", code)
        os._exit(code)
    _serve(build, (spec, _PRESET_USERNS, pre), stdio, chan, [], adopt=False)


#: descriptors the shim may send with a remapped container's spec (SCM_MAX_FD)
_MAX_FDS = 253
#: namespaces stage one made (or joined) for stage two (see ``_enter_namespaces``)
_PRESET_USERNS = -1


def join_cgroups(targets: list[str] | list[int]) -> None:
    """Become a member of the container's groups: ``cgroup.procs`` files given
    by host path or as descriptors (which are closed); "0" means the writer."""
    for target in targets:
        try:
            fd = target if isinstance(target, int) else os.open(target,
                                                                 os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InitError(f"cannot join the container's cgroup {target}: {exc.strerror}"
                            ) from None
        try:
            os.write(fd, b"0")
        except OSError as exc:
            raise InitError(f"cannot join the container's cgroup: {exc.strerror}") from None
        finally:
            os.close(fd)


def _adopt_stdio(stdio: list[int], chan: int, keep: list[int] | None = None) -> list[int]:
    """Make ``stdio`` our 0, 1 and 2 and close every other descriptor but the
    channel ``chan`` (and ``keep``, which must all lie above 2).

    First thing after the fork: nothing the shim or the fork server had
    open stays reachable from a process that will run in the container.
    """
    # copies above 2 first, so that a descriptor already numbered 0-2 is not
    # overwritten by another's dup2
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in stdio]
    for target, fd in enumerate(high):
        os.dup2(fd, target)  # inheritable: they are the process's stdio
    last = 2
    for fd in sorted({chan, *(keep or [])}):
        os.closerange(last + 1, fd)
        last = fd
    os.closerange(last + 1, 1 << 20)
    return [0, 1, 2]


def run_spare(chan: LineChannel) -> NoReturn:
    """A spare init: make the namespaces every default container needs, then
    wait for the spec (and stdio) from the shim.  Never returns."""
    try:
        sc.unshare(SPARE_FLAGS)
        chan.send({"idle": True})
        with contextlib.suppress(Exception):  # an optimisation; never a reason to fail
            warm_up()
        message = chan.receive(want_fds=3)
    except BaseException as exc:
        _report(chan, f"spare init failed: {exc}", 125)
        os._exit(125)
    if message is None or "spec" not in message or len(chan.fds) != 3:
        os._exit(125)
    run(message["spec"], chan.fds, chan, SPARE_FLAGS)


SAMPLE_SPEC = (
    '{"id": "x", "bundle": "/x", "rootfs_mounts": [{"type": "bind", "source": "/x", '
    '"destination": "/", "options": ["rbind"], "cwd": null}], "mounts": [], "args": ["x"], '
    '"env": ["PATH=/bin"], "cwd": "/", "user": "", "hostname": "x", "namespaces": '
    '{"pid": null}, "capabilities": ["CHOWN"], "masked_paths": [], "readonly_paths": [], '
    '"no_new_privileges": true, "readonly_rootfs": false, "rlimits": [], "tty": false}'
)


def warm_up() -> None:
    """Run the pure parts of ``build`` on dummy data, while idle.

    A forked Python process pays a copy-on-write page fault (a few
    microseconds here) for every page of the inherited heap whose objects it
    touches, since even reading an object writes its reference count.  A
    spare init does that for the code it will run before anyone waits for
    it; this halves the faults ``build`` takes on the start path.
    """
    import json

    spec = json.loads(SAMPLE_SPEC)
    mounts.parse_options(["rbind", "ro", "nosuid", "rprivate", "size=1m"])
    users.resolve_user("", "root:x:0:0:root:/root:/bin/sh\n", "root:x:0:root\n")
    capabilities.to_mask(spec["capabilities"])
    initprocess.environment(spec["env"], users.ExecUser())
    for sig in signal.valid_signals():
        signal.getsignal(sig)
    for module in (mounts, containerfs, fdmounts, users, capabilities, sc, initprocess):
        for value in list(vars(module).values()):
            getattr(value, "__code__", None)
    for value in list(globals().values()):
        getattr(value, "__code__", None)


def _report(chan: LineChannel, error: str, code: int) -> None:
    chan.send({"error": error[:4000], "exit_code": code})


# ---------------------------------------------------------------------------
# Before "ready"
# ---------------------------------------------------------------------------


def build(spec: dict[str, Any], preset: int = 0,
          pre: containerfs.Prebuilt | None = None) -> Prepared:
    """Namespaces, root filesystem, hostname, user and command; as root.

    ``preset`` holds the clone flags of namespaces a spare init already made,
    or ``_PRESET_USERNS`` when stage one of a remapped container made (or
    joined) all of them and ``pre`` holds what it built.
    """
    os.umask(0)
    namespaces: dict[str, str | None] = spec.get("namespaces") or {}
    if "mount" not in namespaces or namespaces["mount"] is not None:
        raise InitError("the container needs a new mount namespace (namespaces['mount'] = None)")
    if "user" in namespaces and pre is None:
        raise InitError("a container in a user namespace starts through userns_stage_one")
    cap_mask, last_cap, rlimits = initprocess.privileges(spec)

    if preset != _PRESET_USERNS:
        _enter_namespaces(namespaces, preset)
    rootfs = os.path.join(os.path.abspath(spec["bundle"]), "rootfs")
    try:
        try:
            root = containerfs.build(rootfs, spec, pre)
        finally:
            if pre is not None:
                pre.close()
        try:
            containerfs.pivot(root)
            for path in spec.get("masked_paths") or []:
                containerfs.mask(root, path)
            for path in spec.get("readonly_paths") or []:
                containerfs.make_readonly(path)
        finally:
            root.close()
    except containerfs.FsError as exc:
        raise InitError(str(exc)) from None
    if spec.get("hostname") and "uts" in namespaces:
        socket.sethostname(spec["hostname"])

    return initprocess.prepare_process(
        spec, cap_mask, last_cap, rlimits, exec_into=False,
        new_cgroupns="cgroup" in namespaces and namespaces["cgroup"] is None,
    )


#: the order runc's nsenter joins in: the mount namespace after the others,
#: whose paths are host paths under the host's /proc, and the pid namespace
#: last of all (it only applies to children)
_EXEC_JOIN_ORDER = ("ipc", "uts", "net", "cgroup", "mount", "pid")
#: a remapped container's user namespace goes before all of them: joined,
#: it gives the capabilities over the namespaces it owns (and takes the
#: host's away)
_JOIN_ORDER = ("user", *_EXEC_JOIN_ORDER)


def join_container(namespaces: dict[str, str]) -> None:
    """Join a running container's namespaces, the pid namespace last (``ExecSpec``).

    Called by an exec's shim *before* it forks the process, so that the
    process is born inside the container's mount namespace: from its first
    instant in the container's pid namespace, where the container's own
    processes can see it, its ``/proc/<pid>/root`` and ``cwd`` are the
    container's, never the host's (the exec race: a container with
    SYS_PTRACE polling ``/proc/*/root`` while the host runs ``docker exec``).
    Every namespace file is opened before the first ``setns``: once in the
    container's mount namespace, ``/proc/<pid>`` means the container's pid.
    Joining the mount namespace puts root and cwd at that namespace's root,
    which after the init's ``pivot_root`` is the container's root filesystem.
    The caller also makes itself non-dumpable first, which the child
    inherits until ``execve``.
    """
    opened: list[tuple[str, int]] = []
    try:
        for kind in _JOIN_ORDER:
            path = namespaces.get(kind)
            if not path:
                continue
            try:
                opened.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as exc:
                raise InitError(
                    f"cannot open {kind} namespace {path}: {exc.strerror} "
                    "(is the container still running?)"
                ) from None
        for kind, fd in opened:
            try:
                sc.setns(fd, NAMESPACE_FLAGS[kind])
            except OSError as exc:
                raise InitError(f"cannot join {kind} namespace: {exc.strerror}") from None
    finally:
        for _, fd in opened:
            os.close(fd)


def build_exec(spec: dict[str, Any]) -> Prepared:
    """Resolve user and command of a process in a running container (``ExecSpec``).

    The shim joined every namespace of the container before it forked us
    (``join_container``), so this runs inside the container's root already.
    """
    cap_mask, last_cap, rlimits = initprocess.privileges(spec)
    return initprocess.prepare_process(spec, cap_mask, last_cap, rlimits, exec_into=True,
                                       new_cgroupns=False)


def _enter_namespaces(namespaces: dict[str, str | None], preset: int) -> None:
    # join existing namespaces first: a fresh one unshared afterwards must not
    # be replaced by a join (pid was handled by the shim, before the fork)
    for kind, path in namespaces.items():
        if path is None or kind == "pid":
            continue
        if kind not in NAMESPACE_FLAGS:
            raise InitError(f"unknown namespace kind {kind!r}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, NAMESPACE_FLAGS[kind])
            finally:
                os.close(fd)
        except OSError as exc:
            raise InitError(f"cannot join {kind} namespace {path}: {exc.strerror}") from None
    flags = 0
    for kind, path in namespaces.items():
        # a new cgroup namespace waits for go (see initprocess.execute)
        if path is None and kind not in ("pid", "cgroup"):
            if kind not in NAMESPACE_FLAGS:
                raise InitError(f"unknown namespace kind {kind!r}")
            flags |= NAMESPACE_FLAGS[kind]
    sc.unshare(flags & ~preset)

