"""The user's process, as the container init makes it: resolved before "ready",
become after "go".

Before "ready" (``prepare_process``, inside the container's root and
cgroups): the capabilities and rlimits it keeps, its user from the image's
``/etc/passwd`` and ``/etc/group`` (read as untrusted input), environment,
working directory, the command looked up through ``$PATH``, the seccomp
program and, with ``tty``, the terminal.  Everything that can fail because
of the image or the spec fails here, so ``containerinit`` reports it before
"ready".  After "go" (``execute``): the cgroup namespace, rlimits, seccomp,
capabilities, uid and gid, stdio, signals, ``execve``, in runc's order.

Apart from ``containerinit`` because it is the one part of the init that
knows nothing of namespaces, mounts or the shim conversation.  ``InitError``
lives here, at the bottom of the init's modules, since every step raises it.

Runs in the container init, inside the fork server's memory image: every
import is at module level and none pulls in more than the fork server
already holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import stat
import termios

from skiff.core import syscalls as sc
from skiff.plugins.isolation import capabilities, containerfs, users

# typing and dataclasses stay out of the fork server (see users.py)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: ioctls on a pty master (asm-generic numbers, as on x86 and arm)
TIOCSPTLCK = 0x40045431  #: _IOW('T', 0x31, int): lock (1) or unlock (0) the slave
TIOCGPTPEER = 0x5441  #: _IO('T', 0x41): open the slave without a path lookup (Linux 4.13)


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


# ---------------------------------------------------------------------------
# Before "ready"
# ---------------------------------------------------------------------------


def privileges(spec: dict[str, Any]) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(capability mask, last capability, rlimits) the process will keep."""
    permitted, last_cap = host_capabilities()
    try:
        cap_mask = capabilities.to_mask(spec.get("capabilities") or []) & permitted
    except capabilities.UnknownCapability as exc:
        raise InitError(str(exc)) from None
    return cap_mask, last_cap, [_rlimit(r) for r in spec.get("rlimits") or []]


def prepare_process(spec: dict[str, Any], cap_mask: int, last_cap: int,
                     rlimits: list[tuple[int, int, int]], *, exec_into: bool,
                     new_cgroupns: bool) -> Prepared:
    """User, environment, working directory, command and terminal, inside the
    container's root.  A container's working directory is made when missing
    (Docker's rule); an exec's must exist (126 otherwise, as runc says)."""
    try:
        group_file = read_account_file("/etc/group")
        user = users.resolve_user(spec.get("user") or "", read_account_file("/etc/passwd"),
                                  group_file)
        users.add_groups(user, spec.get("group_add") or [], group_file)
    except users.UserError as exc:
        raise InitError(str(exc)) from None
    env = environment(spec.get("env") or [], user)
    cwd = spec.get("cwd") or "/"
    if exec_into:
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise InitError(
                f"chdir to cwd ({cwd!r}) set in config.json failed: "
                f"{(exc.strerror or str(exc)).lower()}", 126
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


#: the largest /etc/passwd or /etc/group read; an image's file beyond it is refused
MAX_ACCOUNT_FILE = 4 << 20


def read_account_file(path: str) -> str | None:
    """An image's ``/etc/passwd`` or ``/etc/group`` (None when absent), read as
    the untrusted input it is: only a regular file (a link to ``/dev/zero``
    or a FIFO is refused at once, without blocking), no magic links, and no
    more than ``MAX_ACCOUNT_FILE`` bytes.  Called inside the container's root
    and cgroups."""
    try:
        fd = sc.openat2(AT_FDCWD, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, 0,
                        sc.RESOLVE_NO_MAGICLINKS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise InitError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InitError(f"{path} is not a regular file; refusing to read it")
        if st.st_size > MAX_ACCOUNT_FILE:
            raise InitError(f"{path} is larger than {MAX_ACCOUNT_FILE >> 20} MiB; "
                            "refusing to read it")
        # os-level reads: a text-mode open() costs more than the file is long
        chunks = []
        left = MAX_ACCOUNT_FILE + 1
        while left > 0 and (chunk := os.read(fd, min(65536, left))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise InitError(f"{path} is larger than {MAX_ACCOUNT_FILE >> 20} MiB; "
                            "refusing to read it")
        return b"".join(chunks).decode("utf-8", "replace")
    except OSError as exc:
        raise InitError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


AT_FDCWD = -100


def environment(env: list[str], user: users.ExecUser) -> dict[str, str]:
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
            containerfs.bind_console(slave)
    except BaseException:
        os.close(slave)
        os.close(master)
        raise
    return master, slave


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
        return f"stat {path}: {(exc.strerror or str(exc)).lower()}", 126
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
