"""``--security-opt`` values: parsed once, refused when skiff cannot honour them.

Docker's syntax: ``key=value`` or the old ``key:value``.  What skiff
understands:

* ``no-new-privileges`` (alone, ``=true`` or ``=false``): ``PR_SET_NO_NEW_PRIVS``;
* ``seccomp=unconfined``, ``seccomp=<profile JSON>`` (the CLI reads the file
  named on its command line and sends its content) and ``seccomp=builtin``
  (the default profile, explicitly);
* ``systempaths=unconfined``: no masked and no read-only ``/proc`` paths.

Everything else (``apparmor=``, ``label=``, a typo) is refused with the reason:
this host enforces no AppArmor or SELinux policy through skiff, and a
security setting accepted and silently ignored would make the operator
believe a container is confined when it is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class SecurityOptError(ValueError):
    """An ``--security-opt`` value that skiff refuses; the message says why."""


@dataclass
class SecurityOpts:
    #: None: not asked, the daemon's default applies
    no_new_privileges: bool | None = None
    #: "" (the daemon's default profile), "unconfined", "builtin" or a profile's JSON text
    seccomp: str = ""
    #: ``systempaths=unconfined``
    unconfined_paths: bool = False


_TRUE = ("true", "1", "t")
_FALSE = ("false", "0", "f")


def parse(values: Sequence[str] | None) -> SecurityOpts:
    """Parse HostConfig.SecurityOpt; ``SecurityOptError`` for anything not honoured."""
    out = SecurityOpts()
    for opt in values or []:
        if not isinstance(opt, str):
            raise SecurityOptError(f"invalid --security-opt {opt!r}: expected a string")
        if opt == "no-new-privileges":
            out.no_new_privileges = True
            continue
        # Docker accepts the old "key:value" form too
        sep = "=" if "=" in opt else ":"
        key, found, value = opt.partition(sep)
        key = key.strip()
        if not found:
            raise SecurityOptError(
                f"invalid --security-opt {opt!r}: expected key=value "
                "(no-new-privileges, seccomp=..., systempaths=unconfined)"
            )
        if key == "no-new-privileges":
            lowered = value.strip().lower()
            if lowered in _TRUE:
                out.no_new_privileges = True
            elif lowered in _FALSE:
                out.no_new_privileges = False
            else:
                raise SecurityOptError(
                    f"invalid --security-opt {opt!r}: no-new-privileges takes true or false"
                )
        elif key == "seccomp":
            if not value:
                raise SecurityOptError(
                    f"invalid --security-opt {opt!r}: seccomp takes unconfined or a profile"
                )
            out.seccomp = value
        elif key == "systempaths":
            if value != "unconfined":
                raise SecurityOptError(
                    f"invalid --security-opt {opt!r}: "
                    "the only value systempaths takes is unconfined"
                )
            out.unconfined_paths = True
        elif key == "apparmor":
            raise SecurityOptError(
                f"--security-opt {opt!r} is not supported: skiff does not load AppArmor "
                "profiles, so the container would run without the one you asked for; "
                "remove the option"
            )
        elif key == "label":
            raise SecurityOptError(
                f"--security-opt {opt!r} is not supported: skiff does not apply SELinux "
                "labels; remove the option"
            )
        else:
            raise SecurityOptError(
                f"invalid --security-opt {opt!r}: unknown option {key!r} (skiff understands "
                "no-new-privileges, seccomp=... and systempaths=unconfined)"
            )
    return out
