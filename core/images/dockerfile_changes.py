"""Dockerfile instructions applied to an image config: ``--change`` of
``docker import`` and ``docker commit`` (and, later, the builder).

Words are split and variables expanded by :mod:`skiff.core.dockerfile.words`,
as in a Dockerfile; the instructions accepted are :data:`CHANGE_INSTRUCTIONS`.
"""

from __future__ import annotations

import json
import posixpath
import re
import signal
from collections.abc import Sequence
from typing import Any

from skiff.core.dockerfile.words import expand as _expand
from skiff.core.dockerfile.words import split_words as _split_words
from skiff.core.errors import InvalidParameter

__all__ = ["CHANGE_INSTRUCTIONS", "apply_changes", "check_signal", "expose_ports"]

#: instructions ``docker import --change`` and ``docker commit --change`` accept
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL",
                       "USER", "VOLUME", "WORKDIR")


def _json_array(rest: str) -> list[str] | None:
    text = rest.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _name_values(rest: str, instr: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """``KEY=value ...`` or the legacy ``KEY value with spaces`` (ENV, LABEL)."""
    words = _split_words(rest)
    if not words:
        raise InvalidParameter(f"{instr} requires at least one argument")
    if "=" not in words[0]:
        parts = re.split(r"\s+", rest.strip(), maxsplit=1)
        if len(parts) < 2:
            raise InvalidParameter(f"{instr} must have two arguments")
        return [(_expand(parts[0], env), _expand(parts[1], env))]
    out = []
    for w in words:
        if "=" not in w:
            raise InvalidParameter(
                f"Syntax error - can't find = in {w!r}. Must be of the form: name=value"
            )
        key, _, value = w.partition("=")
        key = _expand(key, env)
        if not key:
            raise InvalidParameter(f"{instr} names can not be blank")
        out.append((key, _expand(value, env)))
    return out


def _env_dict(config: dict[str, Any]) -> dict[str, str]:
    out = {}
    for item in config.get("Env") or []:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def check_signal(text: str) -> None:
    if text.isdigit():
        if int(text) > 0:
            return
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal.Signals, name) or re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", name):
            return
    raise InvalidParameter(f"Invalid signal: {text}")


def expose_ports(words: list[str]) -> list[str]:
    out: list[str] = []
    for spec in words:
        port, _, proto = spec.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise InvalidParameter(f"invalid proto: {proto}")
        lo, dash, hi = port.partition("-")
        try:
            start = int(lo)
            end = int(hi) if dash else start
        except ValueError:
            raise InvalidParameter(f"Invalid containerPort: {port}") from None
        if not (0 < start <= end <= 65535):
            raise InvalidParameter(f"Invalid containerPort: {port}")
        out.extend(f"{p}/{proto}" for p in range(start, end + 1))
    return out


def apply_changes(config: dict[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """Apply ``--change`` Dockerfile instructions to a container config (a copy is
    returned).  CMD/ENTRYPOINT take a JSON array or a shell form, which becomes
    ``["/bin/sh", "-c", ...]``; variables expand from the config's Env."""
    cfg = json.loads(json.dumps(config))
    cmd_set = False
    for raw in changes:
        for line in str(raw).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.match(r"(\S+)\s*(.*)$", line, re.S)
            assert m is not None
            instr_word, rest = m.group(1), m.group(2)
            instr = instr_word.upper()
            if instr not in CHANGE_INSTRUCTIONS:
                raise InvalidParameter(f"{instr_word.lower()} is not a valid change command")
            env = _env_dict(cfg)
            if instr in ("CMD", "ENTRYPOINT"):
                args = _json_array(rest)
                if args is None:
                    args = ["/bin/sh", "-c", rest] if rest else []
                if instr == "CMD":
                    cfg["Cmd"] = args
                    cmd_set = True
                else:
                    cfg["Entrypoint"] = args or None
                    if not cmd_set:
                        cfg["Cmd"] = None
            elif instr == "ENV":
                pairs = _name_values(rest, "ENV", env)
                current = list(cfg.get("Env") or [])
                for key, value in pairs:
                    current = [e for e in current if e.partition("=")[0] != key]
                    current.append(f"{key}={value}")
                cfg["Env"] = current
            elif instr == "LABEL":
                labels = dict(cfg.get("Labels") or {})
                for key, value in _name_values(rest, "LABEL", env):
                    labels[key] = value
                cfg["Labels"] = labels
            elif instr == "EXPOSE":
                words = [_expand(w, env) for w in _split_words(rest)]
                if not words:
                    raise InvalidParameter("EXPOSE requires at least one argument")
                ports = dict(cfg.get("ExposedPorts") or {})
                for p in expose_ports(words):
                    ports[p] = {}
                cfg["ExposedPorts"] = ports
            elif instr == "VOLUME":
                vols = _json_array(rest)
                if vols is None:
                    vols = [_expand(w, env) for w in _split_words(rest)]
                if not vols:
                    raise InvalidParameter("VOLUME requires at least one argument")
                volumes = dict(cfg.get("Volumes") or {})
                for v in vols:
                    if not v.strip():
                        raise InvalidParameter("VOLUME specified can not be an empty string")
                    volumes[v.strip()] = {}
                cfg["Volumes"] = volumes
            elif instr == "WORKDIR":
                wd = _expand(rest.strip(), env)
                if not wd:
                    raise InvalidParameter("WORKDIR requires exactly one argument")
                if not wd.startswith("/"):
                    wd = posixpath.join("/", cfg.get("WorkingDir") or "", wd)
                cfg["WorkingDir"] = posixpath.normpath(wd)
            elif instr == "USER":
                user = _expand(rest.strip(), env)
                if not user:
                    raise InvalidParameter("USER requires exactly one argument")
                cfg["User"] = user
            elif instr == "STOPSIGNAL":
                sig = _expand(rest.strip(), env)
                check_signal(sig)
                cfg["StopSignal"] = sig
            elif instr == "ONBUILD":
                trigger = rest.strip()
                first = trigger.split(None, 1)[0].upper() if trigger else ""
                if first in ("ONBUILD", ""):
                    raise InvalidParameter("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
                                           if first else "ONBUILD requires an instruction")
                if first in ("FROM", "MAINTAINER"):
                    raise InvalidParameter(f"{first} isn't allowed as an ONBUILD trigger")
                cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), trigger]
    return cfg
