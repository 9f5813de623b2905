"""Seccomp for the skiff runtime: which filter a container gets, compiled once.

* ``profile.py``: Docker's profile format, parsed and checked; resolution of
  a profile for one container (its capabilities, this host's architecture
  and kernel) into the OCI-shaped filter of ``ContainerSpec.seccomp``;
* ``default_profile.py``: the built-in profile (Docker 20.10's behaviour);
* ``compiler.py``: a resolved filter to BPF with libseccomp, and the cache
  that keeps the start path free of libseccomp work.

The container init installs the program (``skiff.core.syscalls``); it never
imports this package.

Which profile applies, as in dockerd: ``--privileged`` none;
``--security-opt seccomp=unconfined`` none; ``seccomp=<profile JSON>`` that
profile; ``seccomp=builtin`` the built-in one; otherwise daemon.json
``seccomp-profile`` (a path, ``unconfined`` or ``builtin``), else the
built-in one.  On a kernel without seccomp the default falls back to none,
as dockerd does, while a custom profile is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from skiff.plugins.isolation.seccomp import default_profile
from skiff.plugins.isolation.seccomp.compiler import CompileError, FilterCache
from skiff.plugins.isolation.seccomp.profile import Profile, ProfileError, loads, resolve

__all__ = [
    "FILTERS", "CompileError", "ProfileError", "check_daemon_config", "check_request",
    "profile_for", "security_options",
]

#: the compiled programs of this daemon's filters
FILTERS = FilterCache()

#: a profile file larger than this is refused (Docker's default is 25 KiB)
MAX_PROFILE_BYTES = 1 << 20

DEFAULT: Profile = default_profile.profile()

_kernel_seccomp: bool | None = None
#: daemon.json seccomp-profile path -> its profile, read when the daemon starts
_daemon_profiles: dict[str, Profile] = {}


def kernel_has_seccomp() -> bool:
    """Whether this kernel filters syscalls (CONFIG_SECCOMP_FILTER)."""
    global _kernel_seccomp
    if _kernel_seccomp is None:
        try:
            with open("/proc/self/status") as f:
                _kernel_seccomp = any(line.startswith("Seccomp:") for line in f)
        except OSError:
            _kernel_seccomp = False
    return _kernel_seccomp


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> Profile:
    # a container's profile arrives as text on every start: parse it once
    return loads(text, "seccomp profile")


def check_request(value: str, capabilities: Sequence[str] = ()) -> None:
    """Refuse, at create, a ``seccomp=`` value that cannot be honoured.

    A custom profile is parsed, resolved for the container's
    ``capabilities`` and compiled, so that a profile libseccomp refuses (two
    rules giving one syscall different actions on the same condition) is a
    400 here, not a failed start; the compiled program stays in the cache
    for the start.
    """
    if value in ("", "unconfined", "builtin"):
        return
    if not kernel_has_seccomp():
        raise ValueError("seccomp is not enabled in your kernel, cannot run a custom "
                         "seccomp profile")
    resolved = resolve(_parsed(value), capabilities)
    if resolved is not None:
        try:
            FILTERS.compile(resolved)
        except CompileError as exc:
            raise ProfileError(f"seccomp profile: {exc}") from None


def read_profile_file(path: str) -> Profile:
    """The profile in file ``path``; ``ValueError`` saying what is wrong with it."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(
            f"seccomp-profile: cannot read {path}: {exc.strerror}"
        ) from None
    if len(text) > MAX_PROFILE_BYTES:
        raise ValueError(f"seccomp-profile: {path} is larger than {MAX_PROFILE_BYTES} bytes")
    return loads(text, f"seccomp-profile {path}")


def check_daemon_config(config: Mapping[str, Any]) -> None:
    """Read and check daemon.json ``seccomp-profile`` when the daemon starts.

    The file is read once, as dockerd does; the filter a default container
    gets is compiled now so that the first ``docker run`` does not wait for
    libseccomp.
    """
    path = config.get("seccomp-profile") or ""
    if path in ("", "builtin", "unconfined"):
        prof = None if path == "unconfined" else DEFAULT
    else:
        if not kernel_has_seccomp():
            raise ValueError(f"seccomp-profile: {path} is set but this kernel has no seccomp")
        prof = _daemon_profiles[path] = read_profile_file(path)
    if prof is None or not kernel_has_seccomp():
        return
    from skiff.plugins.isolation import capabilities

    resolved = resolve(prof, capabilities.DEFAULT_CAPABILITIES)
    if resolved is not None:
        try:
            FILTERS.compile(resolved)
        except CompileError as exc:
            raise ValueError(f"seccomp-profile {path or 'builtin'}: {exc}") from None


def _daemon_default(config: Mapping[str, Any]) -> Profile | None:
    path = config.get("seccomp-profile") or ""
    if path in ("", "builtin"):
        return DEFAULT
    if path == "unconfined":
        return None
    prof = _daemon_profiles.get(path)
    if prof is None:  # a daemon that skipped check_daemon_config (tests)
        prof = _daemon_profiles[path] = read_profile_file(path)
    return prof


def profile_for(value: str, config: Mapping[str, Any],
                capabilities: Sequence[str]) -> dict[str, Any] | None:
    """The resolved filter for one container, or None for none.

    ``value`` is the container's ``seccomp=`` security option ("" when not
    given), ``config`` the daemon's configuration, ``capabilities`` the
    container's set (names without ``CAP_``), on which Docker's
    capability-dependent rules depend.
    """
    if value == "unconfined":
        return None
    if value in ("", "builtin"):
        if not kernel_has_seccomp():
            return None  # dockerd: a warning, and no filter
        prof = DEFAULT if value == "builtin" else _daemon_default(config)
    else:
        prof = _parsed(value)
    if prof is None:
        return None
    return resolve(prof, capabilities)


def security_options(config: Mapping[str, Any]) -> list[str]:
    """``docker info`` SecurityOptions entries for seccomp: only when it is enforced."""
    path = config.get("seccomp-profile") or ""
    if path == "unconfined" or not kernel_has_seccomp():
        return []
    if path in ("", "builtin"):
        return ["name=seccomp,profile=default"]
    return [f"name=seccomp,profile={path}"]
