"""The container init: the child the shim forks, which becomes the user's process.

It runs inside the fork server's memory image (no new interpreter), already
PID 1 of the container's pid namespace.  One close-on-exec socket pair ties
it to the shim, carrying newline-delimited JSON:

* init -> shim: ``{"ready": true}`` once the container is built (with
  ``tty``: carrying the pty master as SCM_RIGHTS, see ``open_terminal``), or
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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import signal
import socket
import stat
import termios

from skiff.core import syscalls as sc
from skiff.plugins.isolation import capabilities, mounts, users
from skiff.plugins.isolation.channel import LineChannel, set_comm

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

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: (name, major, minor) of the character devices every container gets
DEVICES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)

DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
)

#: namespaces a spare init makes before it knows its spec (see shim.py for
#: why the mount namespace is not among them)
SPARE_NAMESPACES = ("uts", "ipc", "net")
SPARE_FLAGS = sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET

MS_DEFAULT = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC

#: ioctls on a pty master (asm-generic numbers, as on x86 and arm)
TIOCSPTLCK = 0x40045431  #: _IOW('T', 0x31, int): lock (1) or unlock (0) the slave
TIOCGPTPEER = 0x5441  #: _IO('T', 0x41): open the slave without a path lookup (Linux 4.13)

#: statvfs f_flag bits that a read-only remount of a bind mount must keep
_ST_KEEP = ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV), (os.ST_NOEXEC, sc.MS_NOEXEC))


class InitError(Exception):
    """The container cannot be built; ``exit_code`` follows ``StartError``."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Prepared:
    """What the init resolved before "ready" and needs after "go"."""

    def __init__(
        self,
        *,
        user: users.ExecUser,
        path: str,
        args: list[str],
        env: dict[str, str],
        cwd: str,
        cap_mask: int,
        last_cap: int,
        rlimits: list[tuple[int, int, int]],
        no_new_privileges: bool,
        new_cgroupns: bool,
        tty: bool = False,
        terminal: tuple[int, int] = (-1, -1),
        seccomp: bytes | None = None,
    ) -> None:
        self.user = user
        self.path = path  #: the executable, resolved through $PATH
        self.args = args
        self.env = env
        self.cwd = cwd
        self.cap_mask = cap_mask
        self.last_cap = last_cap
        self.rlimits = rlimits
        self.no_new_privileges = no_new_privileges
        self.new_cgroupns = new_cgroupns
        self.tty = tty  #: stdio is a pty slave to make the controlling terminal
        #: with tty: (master, slave) of the pty allocated in the container; the
        #: master goes to the shim with "ready", the slave becomes 0-2
        self.master, self.slave = terminal
        #: the seccomp filter's BPF program, compiled by the daemon
        self.seccomp = seccomp


def run(spec: dict[str, Any], stdio: list[int], chan: LineChannel, preset: int = 0) -> NoReturn:
    """Build the container, report, wait for go, exec.  Never returns.

    ``preset`` holds the clone flags of namespaces a spare init already made.
    """
    set_comm(b"skiff-init")
    _serve(build, (spec, preset), stdio, chan)


def run_exec(spec: dict[str, Any], stdio: list[int], chan: LineChannel) -> NoReturn:
    """The child of an exec shim: join the container, report, wait for go, exec."""
    set_comm(b"skiff-exec")
    _serve(build_exec, (spec,), stdio, chan)


def _serve(prepare: Any, args: tuple[Any, ...], stdio: list[int], chan: LineChannel) -> NoReturn:
    """The shim conversation shared by a container's init and an exec'd process."""
    code = 125
    try:
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
        execute(prepared, stdio, chan.fileno())
    except InitError as exc:
        code = exc.exit_code
        _report(chan, str(exc), code)
    except BaseException as exc:  # anything unexpected must still reach the daemon
        _report(chan, f"container init failed: {exc}", code)
    finally:
        os._exit(code)


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
    mounts.secure_join("/nonexistent/skiff-warm-up", "/a/../b")
    users.resolve_user("", "root:x:0:0:root:/root:/bin/sh\n", "root:x:0:root\n")
    capabilities.to_mask(spec["capabilities"])
    _environment(spec["env"], users.ExecUser())
    for sig in signal.valid_signals():
        signal.getsignal(sig)
    for module in (mounts, users, capabilities, sc):
        for value in list(vars(module).values()):
            getattr(value, "__code__", None)
    for value in list(globals().values()):
        getattr(value, "__code__", None)


def _report(chan: LineChannel, error: str, code: int) -> None:
    chan.send({"error": error[:4000], "exit_code": code})


# ---------------------------------------------------------------------------
# Before "ready"
# ---------------------------------------------------------------------------


def build(spec: dict[str, Any], preset: int = 0) -> Prepared:
    """Namespaces, root filesystem, hostname, user and command; as root."""
    os.umask(0)
    namespaces: dict[str, str | None] = spec.get("namespaces") or {}
    if "mount" not in namespaces or namespaces["mount"] is not None:
        raise InitError("the container needs a new mount namespace (namespaces['mount'] = None)")
    if "user" in namespaces:
        raise InitError("user namespaces are not supported by the skiff runtime yet")
    cap_mask, last_cap, rlimits = _privileges(spec)

    _enter_namespaces(namespaces, preset)
    rootfs = os.path.join(os.path.abspath(spec["bundle"]), "rootfs")
    _mount_rootfs(rootfs, spec)
    _pivot_root(rootfs)
    for path in spec.get("masked_paths") or []:
        _mask_path(path)
    for path in spec.get("readonly_paths") or []:
        _readonly_path(path)
    if spec.get("hostname") and "uts" in namespaces:
        socket.sethostname(spec["hostname"])

    return _prepare_process(
        spec, cap_mask, last_cap, rlimits, exec_into=False,
        new_cgroupns="cgroup" in namespaces and namespaces["cgroup"] is None,
    )


def _privileges(spec: dict[str, Any]) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(capability mask, last capability, rlimits) the process will keep."""
    permitted, last_cap = host_capabilities()
    try:
        cap_mask = capabilities.to_mask(spec.get("capabilities") or []) & permitted
    except capabilities.UnknownCapability as exc:
        raise InitError(str(exc)) from None
    return cap_mask, last_cap, [_rlimit(r) for r in spec.get("rlimits") or []]


def _prepare_process(spec: dict[str, Any], cap_mask: int, last_cap: int,
                     rlimits: list[tuple[int, int, int]], *, exec_into: bool,
                     new_cgroupns: bool) -> Prepared:
    """User, environment, working directory, command and terminal, inside the
    container's root.  A container's working directory is made when missing
    (Docker's rule); an exec's must exist (126 otherwise, as runc says)."""
    try:
        user = users.resolve_user(spec.get("user") or "", _read("/etc/passwd"), _read("/etc/group"))
    except users.UserError as exc:
        raise InitError(str(exc)) from None
    env = _environment(spec.get("env") or [], user)
    cwd = spec.get("cwd") or "/"
    if exec_into:
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise InitError(
                f"chdir to cwd ({cwd!r}) set in config.json failed: {exc.strerror.lower()}", 126
            ) from None
    else:
        _make_cwd(cwd)
    args = list(spec.get("args") or [])
    if not args:
        raise InitError("no command specified")
    path = look_path(args[0], env.get("PATH", DEFAULT_PATH))
    tty = bool(spec.get("tty"))
    return Prepared(
        user=user,
        path=path,
        args=args,
        env=env,
        cwd=cwd,
        cap_mask=cap_mask,
        last_cap=last_cap,
        rlimits=rlimits,
        no_new_privileges=bool(spec.get("no_new_privileges", False)),
        new_cgroupns=new_cgroupns,
        tty=tty,
        seccomp=_seccomp_program(spec),
        # last: nothing that can fail comes after it, so no descriptor leaks;
        # /dev/console is the container's, not an exec's
        terminal=open_terminal(user, console=not exec_into) if tty else (-1, -1),
    )


def _seccomp_program(spec: dict[str, Any]) -> bytes | None:
    """The filter to install: the runtime sends it compiled (``seccomp_bpf``,
    hex); a filter that arrived uncompiled is refused, never skipped."""
    program = spec.get("seccomp_bpf")
    if program:
        return bytes.fromhex(program)
    if spec.get("seccomp") is not None:
        raise InitError("the seccomp filter reached the container init uncompiled; "
                        "refusing to start the container without it")
    return None


def _install_seccomp(program: bytes) -> None:
    try:
        sc.seccomp_set_filter(program)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise InitError(f"cannot install the seccomp filter: {reason}") from None


#: the order runc's nsenter joins in; mount goes last because the other
#: namespace paths are host paths under the host's /proc
_EXEC_JOIN_ORDER = ("ipc", "uts", "net", "cgroup", "mount")


def build_exec(spec: dict[str, Any]) -> Prepared:
    """Join a running container (an ``ExecSpec``); resolve user and command.

    The pid namespace was joined by the shim before it forked us.  Every
    namespace file is opened before the first ``setns``: once in the
    container's mount namespace, ``/proc/<pid>`` means the container's pid.
    Joining the mount namespace puts root and cwd at that namespace's root,
    which after the init's ``pivot_root`` is the container's root filesystem.
    """
    namespaces: dict[str, str] = spec.get("namespaces") or {}
    cap_mask, last_cap, rlimits = _privileges(spec)
    opened: list[tuple[str, int]] = []
    try:
        for kind in _EXEC_JOIN_ORDER:
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
    return _prepare_process(spec, cap_mask, last_cap, rlimits, exec_into=True,
                            new_cgroupns=False)


_host_caps: tuple[int, int] | None = None


def host_capabilities() -> tuple[int, int]:
    """(permitted set, last capability number) of the fork server.

    Read once: every init inherits the same set, and the fork server calls
    this before forking so children find it cached.  A capability the host
    itself lacks (a restricted VM) is left out instead of failing capset.
    """
    global _host_caps
    if _host_caps is None:
        _host_caps = (sc.capget()[1], sc.last_cap())
    return _host_caps


def _rlimit(item: list[Any]) -> tuple[int, int, int]:
    name, soft, hard = item
    key = str(name).upper()
    if not key.startswith("RLIMIT_"):
        key = "RLIMIT_" + key
    which = getattr(resource, key, None)
    if which is None:
        raise InitError(f"unknown rlimit {name!r}")
    return which, int(soft), int(hard)


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
        # a new cgroup namespace waits for go (see execute)
        if path is None and kind not in ("pid", "cgroup"):
            if kind not in NAMESPACE_FLAGS:
                raise InitError(f"unknown namespace kind {kind!r}")
            flags |= NAMESPACE_FLAGS[kind]
    sc.unshare(flags & ~preset)


def _mount_rootfs(rootfs: str, spec: dict[str, Any]) -> None:
    # nothing done below may propagate back to the host's mount table; a bind
    # mount asking for slave or shared propagation needs the copies of the
    # host's mounts to stay slaves of them (Docker's rootfs propagation rslave)
    wants_events = any(
        opt in ("slave", "rslave", "shared", "rshared")
        for m in spec.get("mounts") or [] for opt in m.get("options") or []
    )
    sc.mount(None, "/", None, sc.MS_REC | (sc.MS_SLAVE if wants_events else sc.MS_PRIVATE))
    os.makedirs(rootfs, 0o755, exist_ok=True)
    rootfs_mounts = spec.get("rootfs_mounts") or []
    if not any(m.get("destination", "/") in ("", "/") for m in rootfs_mounts):
        # pivot_root needs the new root to be a mount point
        sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
    for m in rootfs_mounts:
        dest = m.get("destination", "/")
        target = rootfs if dest in ("", "/") else _prepare_destination(rootfs, m)
        _mount(m, target, rootfs)

    proc = _dir_in(rootfs, "/proc")
    _mount_checked(rootfs, proc, "proc", "proc", MS_DEFAULT)
    sys_dir = _dir_in(rootfs, "/sys")
    sys_ro = sc.MS_RDONLY if spec.get("readonly_sysfs", True) else 0
    _mount_checked(rootfs, sys_dir, "sysfs", "sysfs", MS_DEFAULT | sys_ro)
    _setup_dev(rootfs)

    for m in spec.get("mounts") or []:
        target = _prepare_destination(rootfs, m)
        _mount(m, target, rootfs)

    if spec.get("readonly_rootfs"):
        sc.mount(None, rootfs, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)


def _dir_in(rootfs: str, path: str) -> str:
    target = mounts.secure_join(rootfs, path)
    os.makedirs(target, 0o755, exist_ok=True)
    return target


def _setup_dev(rootfs: str) -> None:
    dev = _dir_in(rootfs, "/dev")
    _mount_checked(
        rootfs, dev, "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k"
    )
    # /dev is a fresh tmpfs from here on: no symlink of the image can be in it
    for name, major, minor in DEVICES:
        node = os.path.join(dev, name)
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        except PermissionError:
            # no CAP_MKNOD (or a nodev-locked mount): borrow the host's node
            os.close(os.open(node, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
            sc.mount(f"/dev/{name}", node, None, sc.MS_BIND)
    for name, target in DEV_SYMLINKS:
        os.symlink(target, os.path.join(dev, name))
    pts = os.path.join(dev, "pts")
    os.mkdir(pts, 0o755)
    sc.mount(
        "devpts",
        pts,
        "devpts",
        sc.MS_NOSUID | sc.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    shm = os.path.join(dev, "shm")
    os.mkdir(shm, 0o1777)
    sc.mount("shm", shm, "tmpfs", MS_DEFAULT, "mode=1777,size=65536k")
    mqueue = os.path.join(dev, "mqueue")
    os.mkdir(mqueue, 0o755)
    sc.mount("mqueue", mqueue, "mqueue", MS_DEFAULT)


def _prepare_destination(rootfs: str, m: dict[str, Any]) -> str:
    """The host path of a mount's destination, created to match its source."""
    target = mounts.secure_join(rootfs, m.get("destination") or "/")
    flags, _, _ = mounts.parse_options(m.get("options") or [])
    want_file = False
    if m.get("type") == "bind" or flags & sc.MS_BIND:
        source = m["source"]
        if m.get("cwd"):
            source = os.path.join(m["cwd"], source)
        try:
            want_file = not stat.S_ISDIR(os.stat(source).st_mode)
        except OSError as exc:
            raise InitError(f"bind source path {m['source']}: {exc.strerror}") from None
    try:
        if os.path.lexists(target):
            return target
        if want_file:
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            fd = os.open(
                target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755
            )
            os.close(fd)
        else:
            os.makedirs(target, 0o755, exist_ok=True)
    except OSError as exc:
        dest = m.get("destination")
        raise InitError(f"cannot create mount destination {dest}: {exc.strerror}") from None
    return target


def _mount(m: dict[str, Any], target: str, rootfs: str) -> None:
    """Perform one MountSpec onto ``target`` (a host path under ``rootfs``)."""
    flags, propagation, data = mounts.parse_options(m.get("options") or [])
    fstype = m.get("type") or "none"
    source = m.get("source") or fstype
    old_cwd = None
    if m.get("cwd"):
        # overlay2 passes lowerdir relative to its home so the data fits a page
        old_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.chdir(m["cwd"])
    try:
        if fstype == "bind" or flags & sc.MS_BIND:
            _mount_checked(rootfs, target, source, None, sc.MS_BIND | (flags & sc.MS_REC))
            extra = flags & mounts.BIND_REMOUNT_FLAGS
            if extra:
                # a bind mount ignores these flags until remounted
                sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | extra)
        else:
            _mount_checked(rootfs, target, source, fstype, flags, data or None)
        if propagation:
            sc.mount(None, target, None, propagation)
    except OSError as exc:
        raise InitError(
            f"cannot mount {m.get('source')} on {m.get('destination')} "
            f"(type {fstype}, options {','.join(m.get('options') or [])}): {exc.strerror}"
        ) from None
    finally:
        if old_cwd is not None:
            os.fchdir(old_cwd)
            os.close(old_cwd)


def _mount_checked(
    rootfs: str, target: str, source: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    """mount(2) onto ``target`` only if it really is under ``rootfs``.

    The target is opened without following a final symlink and mounted on
    through /proc/self/fd, so a symlink swapped in after ``secure_join``
    cannot redirect the mount onto the host.
    """
    if target == rootfs:
        sc.mount(source, target, fstype, flags, data)
        return
    fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not mounts.within(rootfs, real):
            raise InitError(f"mount destination {target} resolves outside the container: {real}")
        sc.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def _pivot_root(rootfs: str) -> None:
    os.chdir(rootfs)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching
    # it leaves the new root alone, without needing a put_old directory
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")


def _mask_path(path: str) -> None:
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if is_dir:
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
        else:
            sc.mount("/dev/null", path, None, sc.MS_BIND)
    except OSError as exc:
        raise InitError(f"cannot mask {path}: {exc.strerror}") from None


def _readonly_path(path: str) -> None:
    try:
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise InitError(f"cannot make {path} read-only: {exc.strerror}") from None
    keep = 0
    f_flag = os.statvfs(path).f_flag
    for st_flag, ms_flag in _ST_KEEP:
        if f_flag & st_flag:
            keep |= ms_flag
    sc.mount(path, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC | keep)


def _read(path: str) -> str | None:
    # os-level reads: a text-mode open() costs more than the file is long
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _environment(env: list[str], user: users.ExecUser) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if sep and key:
            result[key] = value
    if "HOME" not in result:
        result["HOME"] = user.home or "/"
    return result


def open_terminal(user: users.ExecUser, console: bool) -> tuple[int, int]:
    """Allocate a pseudo-terminal in the container's own ``/dev/pts``: (master, slave).

    Called inside the container's mount namespace (after ``pivot_root``, or
    after an exec joined it), so ``/dev/ptmx`` is the container's devpts
    instance and the process sees its terminal as ``/dev/pts/N`` there, as
    with runc.  The slave is opened from the master (``TIOCGPTPEER``), not by
    path, so a container that mounted something over ``/dev/pts`` cannot
    hand us another file; the ioctl also proves ``/dev/ptmx`` is a real pty
    multiplexer.  The slave is given to the process's user (group stays
    ``tty``, mode 0620 from the devpts options), as runc's
    fixStdioPermissions does, so a non-root user can ``chmod``/``mesg`` it.
    With ``console`` the slave is also bind-mounted at ``/dev/console``.
    """
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InitError(
            f"cannot allocate a TTY in the container: /dev/ptmx: {exc.strerror}"
        ) from None
    try:
        fcntl.ioctl(master, TIOCSPTLCK, b"\0\0\0\0")
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(master)
        raise InitError(f"cannot allocate a TTY in the container: {exc.strerror}") from None
    try:
        if user.uid != 0:
            os.fchown(slave, user.uid, -1)
        if console:
            _bind_console(slave)
    except BaseException:
        os.close(slave)
        os.close(master)
        raise
    return master, slave


def _bind_console(slave: int) -> None:
    # runc's /dev/console; a missing one (a /dev bind-mounted from elsewhere,
    # read-only) only costs programs that write to the console directly
    console = "/dev/console"
    with contextlib.suppress(OSError):
        os.close(os.open(console, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        sc.mount(f"/proc/self/fd/{slave}", console, None, sc.MS_BIND)


def _controlling_terminal() -> None:
    """Make stdin (a pty slave) the controlling terminal of a new session.

    The shim is a session leader, we are not, so ``setsid`` succeeds; then
    the terminal's line discipline turns Ctrl-C into SIGINT for our
    foreground process group and a resize into SIGWINCH.
    """
    os.setsid()
    try:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    except OSError as exc:
        raise InitError(f"cannot make the TTY the controlling terminal: {exc.strerror}") from None


def _make_cwd(cwd: str) -> None:
    # Docker creates a missing working directory root-owned, mode 0755
    try:
        os.makedirs(cwd, 0o755, exist_ok=True)
        os.chdir(cwd)
    except OSError as exc:
        raise InitError(f"cannot use working directory {cwd}: {exc.strerror}") from None


def _executable_error(path: str) -> tuple[str, int] | None:
    """Why ``path`` cannot be executed (Go's wording), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"stat {path}: no such file or directory", 127
    except NotADirectoryError:
        return f"stat {path}: not a directory", 127
    except OSError as exc:
        return f"stat {path}: {exc.strerror.lower()}", 126
    if stat.S_ISDIR(st.st_mode):
        return "is a directory", 126
    if not st.st_mode & 0o111:
        return "permission denied", 126
    return None


def look_path(name: str, path_env: str) -> str:
    """Go's ``exec.LookPath``, which Docker's runtime applies to ``args[0]``."""
    if "/" in name:
        err = _executable_error(name)
        if err is not None:
            raise InitError(f'exec: "{name}": {err[0]}', err[1])
        return name
    for directory in path_env.split(":"):
        candidate = os.path.join(directory or ".", name)
        if _executable_error(candidate) is None:
            return candidate
    raise InitError(f'exec: "{name}": executable file not found in $PATH', 127)


# ---------------------------------------------------------------------------
# After "go"
# ---------------------------------------------------------------------------


def execute(p: Prepared, stdio: list[int], status_fd: int) -> None:
    """Drop privileges and exec; returns only by raising ``InitError``."""
    if p.new_cgroupns:
        # Only now: the daemon put the process into its cgroups between
        # prepare and go, and a cgroup namespace is rooted where the process
        # is when it is made (runc waits for the same reason).
        try:
            sc.unshare(sc.CLONE_NEWCGROUP)
        except OSError as exc:
            raise InitError(f"cannot create a cgroup namespace: {exc.strerror}") from None
    for which, soft, hard in p.rlimits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError) as exc:
            raise InitError(f"cannot set rlimit {which} to {soft}:{hard}: {exc}") from None
    if p.seccomp is not None and not p.no_new_privileges:
        # runc's order: without no_new_privs, installing a filter takes
        # CAP_SYS_ADMIN, so it goes in while the init still has it; every
        # syscall from here to execve must pass the filter
        _install_seccomp(p.seccomp)
    # the bounding set needs CAP_SETPCAP, so it goes before the uid change
    sc.bounding_keep(p.cap_mask, p.last_cap)
    sc.ambient_clear()
    u = p.user
    os.setgroups(u.sgids)
    os.setresgid(u.gid, u.gid, u.gid)
    # for a non-root uid the kernel clears permitted and effective here, which
    # is what Docker gives such a user (CapEff 0, CapBnd the container's set)
    os.setresuid(u.uid, u.uid, u.uid)
    if u.uid == 0:
        sc.capset(p.cap_mask, p.cap_mask, 0)
    else:
        sc.capset(0, 0, 0)
    if p.no_new_privileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    try:
        os.chdir(p.cwd)
    except OSError as exc:
        raise InitError(f"cannot change to working directory {p.cwd}: {exc.strerror}") from None

    if p.slave >= 0:
        # the terminal allocated in the container replaces the daemon's stdio
        stdio = [p.slave, p.slave, p.slave]
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    if p.tty:
        _controlling_terminal()
    # everything but 0-2 and the close-on-exec channel to the shim goes
    os.closerange(3, status_fd)
    os.closerange(status_fd + 1, 1 << 20)
    os.umask(0o022)
    # Caught signals revert to default across exec by themselves; ignored ones
    # (SIGPIPE and SIGXFSZ, which Python ignores, or whatever the daemon
    # inherited) would stay ignored in the container.  Python's table knows
    # every disposition, so only those not at default need a system call.
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # signals reserved by libc
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if p.seccomp is not None and p.no_new_privileges:
        # with no_new_privs it needs no privilege, so it goes in last: the
        # filter then only has to allow the execve
        _install_seccomp(p.seccomp)
    try:
        os.execve(p.path, p.args, p.env)
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        reason = os.strerror(exc.errno or 0).lower() if exc.errno else str(exc)
        raise InitError(f'exec: "{p.args[0]}": {reason}', code) from None
