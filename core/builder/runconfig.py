"""The image config a build carries from step to step, and what each metadata
instruction does to it.

dockerd's classic builder keeps a container config per stage (its
``runConfig``): the base image's, changed by ENV, LABEL, CMD and the other
instructions that touch only metadata; every step's image gets a copy of it
as its ``config``.  This module holds that state (:class:`StageState`), the
arguments' rules (declared ARGs, the client's build args, which of them a
RUN sees and records), and the history texts in dockerd's exact format,
Go's ``%q`` and ``%v`` renderings included, because ``docker history``
shows them and the cache compares them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from skiff.core.dockerfile import instructions as ins
from skiff.core.dockerfile.errors import DockerfileError
from skiff.core.images.dockerfile_changes import check_signal, expose_ports
from skiff.core.timefmt import format_go_duration as go_duration

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_SHELL",
    "PROXY_ARGS",
    "StageState",
    "apply_metadata",
    "go_config",
    "go_duration",
    "go_quote",
    "go_quoted_list",
]

#: the shell of shell-form RUN, CMD and ENTRYPOINT until SHELL changes it
DEFAULT_SHELL = ("/bin/sh", "-c")
#: the PATH a stage gets when its base image sets none (``FROM scratch``)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: build args every Dockerfile may use undeclared; they reach RUN's environment
#: but never its history (nor, so, the cache key) unless an ARG names them
PROXY_ARGS = frozenset({
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})

#: the fields of Go's container.Config in their order, with the value of each
#: when unset; None marks an ``omitempty`` field (absent when empty)
_CONFIG_FIELDS: tuple[tuple[str, Any], ...] = (
    ("Hostname", ""), ("Domainname", ""), ("User", ""), ("AttachStdin", False),
    ("AttachStdout", False), ("AttachStderr", False), ("ExposedPorts", None),
    ("Tty", False), ("OpenStdin", False), ("StdinOnce", False), ("Env", []),
    ("Cmd", []), ("Healthcheck", None), ("ArgsEscaped", None), ("Image", ""),
    ("Volumes", {}), ("WorkingDir", ""), ("Entrypoint", []), ("NetworkDisabled", None),
    ("MacAddress", None), ("OnBuild", []), ("Labels", {}), ("StopSignal", None),
    ("StopTimeout", None), ("Shell", None),
)


def go_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` as Go's encoder writes a container.Config: every field in order,
    empty lists and maps as null, ``omitempty`` fields left out when empty.
    Images the builder makes carry configs of this shape, so inspect shows
    what dockerd's would and equal configs compare equal."""
    out: dict[str, Any] = {}
    for name, empty in _CONFIG_FIELDS:
        value = cfg.get(name)
        if empty is None:
            if value:
                out[name] = value
        elif isinstance(empty, list | dict):
            out[name] = value or None
        else:
            out[name] = value if value is not None else empty
    return out


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote``: double quotes, ``\\"`` and ``\\\\``, control
    characters escaped, printable Unicode kept."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\v":
            out.append("\\v")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_quoted_list(items: Iterable[str]) -> str:
    """Go's ``%q`` of a ``[]string``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def _go_quote_rune(value: int) -> str:
    """Go's ``%q`` of an int: the character it codes, single-quoted."""
    if value in (ord("'"), ord("\\")):
        return "'\\" + chr(value) + "'"
    inner = go_quote(chr(value))[1:-1] if 0 <= value <= 0x10FFFF else "\\ufffd"
    return "'" + inner.replace('\\"', '"') + "'"


def healthcheck_text(health: Mapping[str, Any]) -> str:
    """dockerd's history text of HEALTHCHECK: Go's ``%q`` of the HealthConfig
    pointer (``&{["CMD-SHELL" "x"] "30s" "3s" "0s" '\\x03'}``)."""
    parts = [go_quoted_list(health.get("Test") or []),
             go_quote(go_duration(int(health.get("Interval") or 0))),
             go_quote(go_duration(int(health.get("Timeout") or 0))),
             go_quote(go_duration(int(health.get("StartPeriod") or 0))),
             _go_quote_rune(int(health.get("Retries") or 0))]
    return "&{" + " ".join(parts) + "}"


@dataclass
class StageState:
    """One stage's state between steps (see the module's doc)."""

    #: the config every image of the stage gets (dockerd's runConfig)
    config: dict[str, Any]
    #: the last image of the stage; None while a ``FROM scratch`` stage has none
    image_id: str | None
    #: the client's build args (None: named without a value)
    build_args: Mapping[str, str | None]
    #: the global ARGs' values (before the first FROM)
    meta_args: Mapping[str, str]
    escape: str = "\\"
    #: MAINTAINER's value: every later image's author
    maintainer: str = ""
    #: CMD given in this stage: a later ENTRYPOINT keeps it
    cmd_set: bool = False
    #: the ARGs this stage declared, with their defaults (None: no default)
    declared: dict[str, str | None] = field(default_factory=dict)
    #: build args some ARG declared or a RUN used (the unconsumed warning)
    referenced: set[str] = field(default_factory=set)

    def env(self) -> dict[str, str]:
        """The config's Env as a mapping (the last of a repeated name wins)."""
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            key, _, value = item.partition("=")
            out[key] = value
        return out

    def _arg_value(self, name: str) -> str | None:
        given = self.build_args.get(name)
        if given is not None:
            return given
        default = self.declared.get(name)
        if default is None:
            return self.meta_args.get(name)
        return default

    def allowed_args(self) -> dict[str, str]:
        """Declared ARGs with a value, and the proxy args the client gave."""
        out: dict[str, str] = {}
        for name in [*self.declared, *sorted(PROXY_ARGS)]:
            if name in out or (name in PROXY_ARGS and name not in self.declared
                               and name not in self.build_args):
                continue
            value = self._arg_value(name)
            if value is not None:
                out[name] = value
        return out

    def args_for_run(self) -> dict[str, str]:
        """The args a RUN sees as environment: allowed and not shadowed by ENV."""
        env = self.env()
        return {k: v for k, v in self.allowed_args().items() if k not in env}

    def expansion_env(self) -> dict[str, str]:
        """What ``$x`` expands from in an instruction: Env, then the args ENV
        does not shadow."""
        return {**self.env(), **self.args_for_run()}

    def shell(self) -> list[str]:
        """SHELL's value, or ``/bin/sh -c``."""
        return list(self.config.get("Shell") or DEFAULT_SHELL)

    def with_cmd_comment(self, comment: str) -> dict[str, Any]:
        """The config a metadata step is cached and recorded under: Cmd is
        ``<shell> "#(nop) " <comment>``, so history shows
        ``/bin/sh -c #(nop)  ENV a=b`` (two blanks, as dockerd's)."""
        return go_config({**self.config, "Cmd": [*self.shell(), "#(nop) ", comment]})

    def with_cmd_comment_string(self, comment: str) -> dict[str, Any]:
        """As :meth:`with_cmd_comment` with the comment in one word (COPY's:
        ``/bin/sh -c #(nop) COPY file:... in /x ``)."""
        return go_config({**self.config, "Cmd": [*self.shell(), "#(nop) " + comment]})

    def set_env(self, pairs: Sequence[tuple[str, str]]) -> None:
        env = list(self.config.get("Env") or [])
        for key, value in pairs:
            for i, item in enumerate(env):
                if item.partition("=")[0] == key:
                    env[i] = f"{key}={value}"
                    break
            else:
                env.append(f"{key}={value}")
        self.config["Env"] = env

    def set_default_path(self) -> None:
        """dockerd's ``setDefaultPath``: a stage whose base sets no PATH gets one."""
        if "PATH" not in self.env():
            self.config["Env"] = [*(self.config.get("Env") or []), f"PATH={DEFAULT_PATH}"]


def normalize_workdir(current: str, path: str) -> str:
    """WORKDIR ``path`` after WORKDIR ``current``: relative to it, cleaned."""
    if not path.startswith("/"):
        path = posixpath.join("/", current or "/", path)
    return posixpath.normpath(path)


def _command(state: StageState, node: ins.Entrypoint | ins.Cmd) -> list[str]:
    if node.json_form:
        return list(node.command)
    return [*state.shell(), *node.command] if node.command else []


def apply_metadata(state: StageState, node: ins.Instruction) -> str:
    """Apply a metadata instruction (already expanded) to ``state.config``;
    returns its history comment (``ENV a=b``).  DockerfileError for a bad value."""
    cfg = state.config
    if isinstance(node, ins.Env):
        for key, _ in node.pairs:
            if not key:
                raise DockerfileError("ENV names can not be blank")
        state.set_env(node.pairs)
        return "ENV " + " ".join(f"{k}={v}" for k, v in node.pairs)
    if isinstance(node, ins.Label):
        labels = dict(cfg.get("Labels") or {})
        for key, value in node.pairs:
            if not key:
                raise DockerfileError("LABEL names can not be blank")
            labels[key] = value
        cfg["Labels"] = labels
        return "LABEL " + " ".join(f"{k}={v}" for k, v in node.pairs)
    if isinstance(node, ins.Cmd):
        cfg["Cmd"] = _command(state, node) or None
        state.cmd_set = True
        return f"CMD {go_quoted_list(cfg['Cmd'] or [])}"
    if isinstance(node, ins.Entrypoint):
        cfg["Entrypoint"] = _command(state, node) or None
        if not state.cmd_set:
            cfg["Cmd"] = None
        return f"ENTRYPOINT {go_quoted_list(cfg['Entrypoint'] or [])}"
    if isinstance(node, ins.Expose):
        ports = dict(cfg.get("ExposedPorts") or {})
        try:
            for port in expose_ports(list(node.ports)):
                ports[port] = {}
        except ValueError as exc:
            raise DockerfileError(str(exc)) from exc
        cfg["ExposedPorts"] = ports
        return "EXPOSE " + " ".join(node.ports)
    if isinstance(node, ins.Volume):
        volumes = dict(cfg.get("Volumes") or {})
        for path in node.paths:
            if not path.strip():
                raise DockerfileError("VOLUME specified can not be an empty string")
            volumes[path.strip()] = {}
        cfg["Volumes"] = volumes
        return "VOLUME [" + " ".join(node.paths) + "]"
    if isinstance(node, ins.User):
        cfg["User"] = node.user
        return "USER " + node.user
    if isinstance(node, ins.Stopsignal):
        check_signal(node.signal)
        cfg["StopSignal"] = node.signal
        return "STOPSIGNAL " + node.signal
    if isinstance(node, ins.Shell):
        cfg["Shell"] = list(node.shell)
        return "SHELL [" + " ".join(node.shell) + "]"
    if isinstance(node, ins.Onbuild):
        cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), node.expression]
        return "ONBUILD " + node.expression
    if isinstance(node, ins.Maintainer):
        state.maintainer = node.maintainer
        return "MAINTAINER " + node.maintainer
    if isinstance(node, ins.Healthcheck):
        health: dict[str, Any] = {"Test": list(node.test)}
        timing: tuple[tuple[str, int], ...] = (
            ("Interval", node.interval), ("Timeout", node.timeout),
            ("StartPeriod", node.start_period), ("Retries", node.retries))
        for key, amount in timing:
            if amount:
                health[key] = amount
        cfg["Healthcheck"] = health
        return "HEALTHCHECK " + healthcheck_text(health)
    if isinstance(node, ins.Arg):
        words = []
        for name, default in node.args:
            state.declared[name] = default
            state.referenced.add(name)
            words.append(name if default is None else f"{name}={default}")
        return "ARG " + " ".join(words)
    raise TypeError(f"{node.keyword} is not a metadata instruction")
