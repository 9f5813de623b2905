"""daemon.json: schema, defaults, validation, and flags that overlap it.

Key names and meanings are Docker's, so an operator's dockerd configuration
reads the same here.  An unknown key, a value of the wrong type or malformed
JSON refuses the start with the file and key named; the same option given as a
flag and in the file is refused, as dockerd does.
"""

from __future__ import annotations

import argparse
import builtins
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from skiff.core.cluster import settings as cluster_settings
from skiff.core.hookspecs import NET_RATE_KEYS

DEFAULT_CONFIG_FILE = "/etc/skiff/daemon.json"
DEFAULT_SOCKET = "unix:///run/skiff.sock"


class ConfigError(Exception):
    """The configuration is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class Option:
    """One daemon.json key: its type, default and the flag that sets it too."""

    key: str
    type: type | tuple[type, ...]
    default: Any
    flag: str | None = None  #: long flag name, e.g. "--data-root"
    short: str | None = None
    help: str = ""
    item: builtins.type | None = None  #: element type of a list, value type of a dict
    multiple: bool = False  #: a flag that may repeat and collects into a list


OPTIONS: tuple[Option, ...] = (
    Option("data-root", str, "/var/lib/skiff", "--data-root",
           help="root of persistent state (images, containers, volumes)"),
    Option("exec-root", str, "/run/skiff", "--exec-root",
           help="root of run-time state (shim sockets, pid files)"),
    Option("pidfile", str, "/run/skiff.pid", "--pidfile", "-p", help="daemon pid file"),
    Option("storage-driver", str, "", "--storage-driver", "-s",
           help="storage driver; empty picks the best that works here"),
    Option("storage-opts", list, [], "--storage-opt", item=str, multiple=True,
           help="storage driver options, driver.key=value"),
    Option("log-driver", str, "json-file", "--log-driver", help="default log driver"),
    Option("log-opts", dict, {}, "--log-opt", item=str, multiple=True,
           help="default log driver options, key=value"),
    Option("log-level", str, "info", "--log-level", "-l",
           help="debug, info, warn, error or fatal"),
    Option("bridge", str, "", "--bridge", "-b",
           help="default bridge name ('none' disables the default bridge)"),
    Option("bip", str, "", "--bip", help="default bridge address, CIDR"),
    Option("iptables", bool, True, "--iptables", help="manage firewall rules"),
    Option("ipv6", bool, False, "--ipv6", help="IPv6 on the default bridge (needs fixed-cidr-v6)"),
    Option("fixed-cidr-v6", str, "", "--fixed-cidr-v6",
           help="IPv6 subnet of the default bridge, CIDR"),
    # dockerd 20.10 wants --experimental for it and defaults to false; skiff has
    # no experimental mode, and an IPv6 network without rules would have no
    # isolation, so it is on by default (as in later dockerd); only with iptables
    Option("ip6tables", bool, True, "--ip6tables",
           help="manage ip6tables rules for IPv6 networks (only while iptables is on)"),
    Option("ip-forward", bool, True, "--ip-forward", help="enable IP forwarding"),
    Option("ip-forward-no-drop", bool, False, "--ip-forward-no-drop",
           help="do not set the FORWARD policy to DROP when enabling IP forwarding"),
    Option("icc", bool, True, "--icc", help="inter-container traffic on the default bridge"),
    Option("dns", list, [], "--dns", item=str, multiple=True,
           help="upstream DNS servers of the embedded DNS server (IP or IP:PORT)"),
    Option("userns-remap", str, "", "--userns-remap",
           help="user namespace remapping: 'default' (skiff's own skiffremap user), user, "
                "user:group, uid or uid:gid; containers' root is the first subordinate id "
                "of that user (/etc/subuid, /etc/subgid)"),
    # Docker has default-ipc-mode and default-cgroupns-mode; this is their
    # sibling for the user namespace (skiff only)
    Option("default-userns-mode", str, "", "--default-userns-mode",
           help="user namespace of a container run without --userns, with userns-remap: "
                "'private' (the daemon's mapping, as Docker) or 'auto' (a range of its own "
                "for every container)"),
    Option("no-new-privileges", bool, False, "--no-new-privileges",
           help="set no_new_privs in every container by default"),
    Option("seccomp-profile", str, "", "--seccomp-profile",
           help="path to a seccomp profile (Docker's JSON format) used instead of the "
                "built-in default, read and checked at start; or 'builtin', or 'unconfined'"),
    Option("default-ulimits", dict, {}, "--default-ulimit", item=dict, multiple=True,
           help="default ulimits, name=soft:hard"),
    Option("live-restore", bool, False, "--live-restore",
           help="keep containers running while the daemon is down; the next daemon "
                "adopts them (docs/live-restore.md)"),
    Option("debug", bool, False, "--debug", "-D", help="debug logging"),
    Option("labels", list, [], "--label", item=str, multiple=True,
           help="the daemon's labels, key=value (docker info)"),
    Option("hosts", list, [], "--host", "-H", item=str, multiple=True,
           help="sockets to listen on"),
    Option("cgroup-parent", str, "skiff", "--cgroup-parent",
           help="parent cgroup of every container"),
    Option("exec-opts", list, [], "--exec-opt", item=str, multiple=True,
           help="runtime options, e.g. native.cgroupdriver=cgroupfs"),
    Option("default-address-pools", list, [], None, item=dict,
           help="pools for user-defined networks: [{base, size}]"),
    Option("default-runtime", str, "skiff", "--default-runtime",
           help="container runtime (isolation plugin)"),
    Option("insecure-registries", list, [], "--insecure-registry", item=str, multiple=True,
           help="registries (host:port or CIDR) spoken to over plain HTTP; 127.0.0.0/8 always"),
    Option("registry-mirrors", list, [], "--registry-mirror", item=str, multiple=True,
           help="mirrors tried before Docker Hub on pull (URLs)"),
    # skiff only (containerd has it per registry): docs/cri.md#test-images
    Option("registry-domain-mirrors", dict, {}, None, item=list,
           help="pull mirrors of registries other than Docker Hub, by domain: "
                '{"gcr.io": ["http://127.0.0.1:5000"]}; an image keeps its name'),
    Option("max-concurrent-downloads", int, 3, None,
           help="layers downloaded in parallel per pull"),
    Option("max-concurrent-uploads", int, 5, None, help="layers uploaded in parallel per push"),
    Option("max-download-attempts", int, 5, None,
           help="tries per layer download (a dropped connection resumes with a Range request)"),
    Option("registry-timeout", (int, float), 30, None,
           help="seconds a registry may take to answer a request before the pull fails "
                "(skiff-specific)"),
    # Docker has no such default; a fork bomb in any container must leave the
    # host usable, so skiff limits every container that asks for no limit
    # (Podman's default, 2048).  0 or -1: unlimited, as Docker.
    Option("default-pids-limit", int, 2048, None,
           help="pids limit of a container created without --pids-limit"),
    Option("init", bool, False, "--init",
           help="run an init inside containers that forwards signals and reaps processes"),
    Option("init-path", str, "", "--init-path",
           help="path to the init binary (default: skiff-init, shipped with skiff)"),
    # dockerd takes a context of any size; the context is unpacked under the
    # data-root, so an unbounded one can fill the disk (skiff-specific)
    Option("builder-max-context-size", int, 8 << 30, None,
           help="largest build context accepted, in bytes after decompression"),
    # skiff only: dockerd has no bandwidth limits (moby#26767); docs/limits.md
    Option("default-net-rates", dict, {}, None, item=str,
           help="bandwidth limits of every container's endpoints unless a network, label or "
                "endpoint says otherwise: skiff.net.* keys, tc units "
                '({"skiff.net.egress-rate": "100mbit"})'),
    # dockerd 20.10's spellings (its libnetwork "classic" cluster); etcd only
    Option("cluster-store", str, "", "--cluster-store",
           help="the cluster store, etcd://host:port[,host:port]: global-scope networks "
                "and this node's registration"),
    Option("cluster-advertise", str, "", "--cluster-advertise",
           help="this node's address for the other nodes, IP:port or interface:port"),
    Option("cluster-store-opts", dict, {}, "--cluster-store-opt", item=str, multiple=True,
           help="kv.cacertfile, kv.certfile, kv.keyfile (TLS to etcd), discovery.ttl and "
                "discovery.heartbeat (seconds)"),
    Option("metrics-addr", str, "", "--metrics-addr",
           help="host:port to serve Prometheus metrics on (GET /metrics); empty: not served. "
                "A host that is not a loopback address exposes them to that network"),
    # skiff only (docs/cri.md): Kubernetes' Container Runtime Interface, gRPC
    Option("cri", str, "", "--cri",
           help="unix socket to serve the Kubernetes CRI (gRPC runtime.v1) on, e.g. "
                "/run/skiff-cri.sock; empty: not served"),
    Option("cri-stream-address", str, "127.0.0.1:0", "--cri-stream-address",
           help="HOST:PORT of the CRI's streaming server (exec, attach, port-forward); "
                "port 0: one the kernel picks"),
)

BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}

_TYPE_NAMES = {str: "string", bool: "boolean", list: "array", dict: "object", int: "number"}


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(_TYPE_NAMES.get(x, x.__name__) for x in t)
    return _TYPE_NAMES.get(t, t.__name__)


def _check_type(path: str, key: str, value: Any, opt: Option) -> None:
    # bool is a subclass of int in Python; JSON true must not pass as a number
    ok = isinstance(value, opt.type) and not (opt.type is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"{path}: invalid value for {key!r}: expected a {_type_name(opt.type)}, "
            f"got {json.dumps(value)}"
        )
    if opt.item is not None:
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if not isinstance(item, opt.item):
                raise ConfigError(
                    f"{path}: invalid value for {key!r}: every entry must be a "
                    f"{_type_name(opt.item)}, got {json.dumps(item)}"
                )


def read_file(path: str, *, required: bool) -> dict[str, Any]:
    """Parse and type-check daemon.json; {} when it is absent and not required."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: configuration file not found") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from exc
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a JSON object")
    unknown = sorted(k for k in data if k not in BY_KEY)
    if unknown:
        raise ConfigError(
            f"{path}: unknown configuration key(s): {', '.join(unknown)} "
            f"(known keys: {', '.join(sorted(BY_KEY))})"
        )
    for key, value in data.items():
        _check_type(path, key, value, BY_KEY[key])
    return data


def _parse_kv(values: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise ConfigError(f"invalid {flag} value {v!r}: expected key=value")
        out[k] = val
    return out


def _parse_ulimits(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for v in values:
        name, sep, limits = v.partition("=")
        soft, _, hard = limits.partition(":")
        try:
            s = int(soft)
            h = int(hard) if hard else s
        except ValueError:
            raise ConfigError(
                f"invalid --default-ulimit {v!r}: expected name=soft[:hard]"
            ) from None
        if not sep or not name:
            raise ConfigError(f"invalid --default-ulimit {v!r}: expected name=soft[:hard]")
        out[name] = {"Name": name, "Soft": s, "Hard": h}
    return out


def _bool_flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skiffd",
        description="skiff daemon: serves the Docker Engine API v1.41",
    )
    p.add_argument("--config-file", default=None,
                   help=f"daemon configuration file (default {DEFAULT_CONFIG_FILE})")
    p.add_argument("--version", "-v", action="store_true", help="print version and exit")
    for opt in OPTIONS:
        if opt.flag is None:
            continue
        names = [opt.flag] + ([opt.short] if opt.short else [])
        dest = opt.key.replace("-", "_")
        if opt.type is bool:
            # "--iptables" alone means true, "--iptables=false" turns it off, as dockerd
            p.add_argument(*names, dest=dest, nargs="?", const=True, type=_bool_flag,
                           default=None, help=opt.help)
        elif opt.multiple:
            p.add_argument(*names, dest=dest, action="append", default=None, help=opt.help)
        else:
            p.add_argument(*names, dest=dest, default=None, help=opt.help)
    return p


def _flag_values(ns: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, converted to daemon.json shape."""
    out: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.flag is None:
            continue
        value = getattr(ns, opt.key.replace("-", "_"))
        if value is None:
            continue
        if opt.key == "log-opts":
            value = _parse_kv(value, "--log-opt")
        elif opt.key == "cluster-store-opts":
            value = _parse_kv(value, "--cluster-store-opt")
        elif opt.key == "default-ulimits":
            value = _parse_ulimits(value)
        out[opt.key] = value
    return out


def load(argv: Sequence[str] | None = None) -> tuple[dict[str, Any], argparse.Namespace]:
    """Parse flags and daemon.json into one validated configuration.

    Returns the full configuration (every key present, defaults filled) and
    the parsed flags.
    """
    ns = build_parser().parse_args(argv)
    if ns.version:
        return {}, ns
    explicit = ns.config_file is not None
    path = ns.config_file or DEFAULT_CONFIG_FILE
    from_file = read_file(path, required=explicit)
    from_flags = _flag_values(ns)
    both = sorted(set(from_file) & set(from_flags))
    if both:
        detail = ", ".join(
            f"{k}: (from flag: {from_flags[k]}, from file: {from_file[k]})" for k in both
        )
        raise ConfigError(
            f"the following directives are specified both as a flag and in the "
            f"configuration file ({path}): {detail}"
        )
    config = {o.key: _copy(o.default) for o in OPTIONS}
    config.update(from_file)
    config.update(from_flags)
    config["config-file"] = path
    validate(config, path)
    return config, ns


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def validate(config: Mapping[str, Any], path: str) -> None:
    """Checks on values (not just types), each naming the key."""
    if config["log-level"] not in ("debug", "info", "warn", "error", "fatal"):
        raise ConfigError(
            f"{path}: invalid value for 'log-level': {config['log-level']!r} "
            "(use debug, info, warn, error or fatal)"
        )
    for key in ("data-root", "exec-root"):
        if not os.path.isabs(config[key]):
            raise ConfigError(f"{path}: {key!r} must be an absolute path, got {config[key]!r}")
    for item in config["storage-opts"]:
        if "=" not in item:
            raise ConfigError(f"{path}: invalid 'storage-opts' entry {item!r}: expected key=value")
    labels: dict[str, str] = {}
    for item in config["labels"]:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{path}: invalid 'labels' entry {item!r}: bad attribute format, "
                              "expected key=value")
        if key in labels and labels[key] != value:
            raise ConfigError(f"{path}: conflict labels for {key}={labels[key]} and "
                              f"{key}={value}")
        labels[key] = value
    for item in config["exec-opts"]:
        if "=" not in item:
            raise ConfigError(f"{path}: invalid 'exec-opts' entry {item!r}: expected key=value")
    for name, ul in config["default-ulimits"].items():
        if not isinstance(ul, dict) or not {"Soft", "Hard"} <= set(ul):
            raise ConfigError(
                f"{path}: invalid 'default-ulimits' entry {name!r}: expected "
                '{"Name": ..., "Soft": N, "Hard": N}'
            )
    for pool in config["default-address-pools"]:
        if not {"base", "size"} <= set(pool):
            raise ConfigError(
                f"{path}: invalid 'default-address-pools' entry {pool}: expected "
                '{"base": "CIDR", "size": N}'
            )
    if config["default-pids-limit"] < -1:
        raise ConfigError(
            f"{path}: invalid value for 'default-pids-limit': {config['default-pids-limit']} "
            "(use a positive number, or 0 or -1 for no limit)"
        )
    if config["builder-max-context-size"] < 1:
        raise ConfigError(
            f"{path}: invalid value for 'builder-max-context-size': "
            f"{config['builder-max-context-size']} (use a positive number of bytes)"
        )
    remap = config["userns-remap"]
    parts = remap.split(":")
    if remap and (len(parts) > 2 or not all(parts)):
        raise ConfigError(
            f"{path}: invalid value for 'userns-remap': {remap!r} (use 'default', a user, "
            "user:group, uid or uid:gid)"
        )
    if config["default-userns-mode"] not in ("", "private", "auto"):
        raise ConfigError(
            f"{path}: invalid value for 'default-userns-mode': "
            f"{config['default-userns-mode']!r} (use 'private' or 'auto')"
        )
    if config["default-userns-mode"] == "auto" and not remap:
        raise ConfigError(
            f"{path}: 'default-userns-mode' is 'auto' but 'userns-remap' is not set; the "
            "ranges come from the remap user's subordinate ids: set userns-remap too"
        )
    if config["ipv6"] and not config["fixed-cidr-v6"]:
        raise ConfigError(
            f"{path}: 'ipv6' is true but 'fixed-cidr-v6' is not set: Error creating default "
            "\"bridge\" network: could not find an available, non-overlapping IPv6 address "
            "pool among the defaults to assign to the network (as dockerd 20.10, whose "
            "default pools are IPv4 only); set fixed-cidr-v6 (e.g. fd00:1::/64)"
        )
    if config["fixed-cidr-v6"]:
        try:
            v6 = ipaddress.IPv6Network(config["fixed-cidr-v6"], strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"{path}: invalid value for 'fixed-cidr-v6': {config['fixed-cidr-v6']!r}: {exc}"
            ) from None
        if v6.prefixlen > 126:
            raise ConfigError(f"{path}: 'fixed-cidr-v6' {v6} is too small")
        if not config["ipv6"]:
            raise ConfigError(
                f"{path}: 'fixed-cidr-v6' is set but 'ipv6' is not true; set both or neither"
            )
    if config["metrics-addr"]:
        try:
            metrics_address(config["metrics-addr"])
        except ValueError as exc:
            raise ConfigError(
                f"{path}: invalid value for 'metrics-addr': {config['metrics-addr']!r}: {exc}"
            ) from None
    for key in config["default-net-rates"]:
        if key not in NET_RATE_KEYS:
            raise ConfigError(
                f"{path}: invalid 'default-net-rates' key {key!r}: use "
                f"{', '.join(NET_RATE_KEYS)} (values in tc units, e.g. "
                '{"skiff.net.egress-rate": "100mbit"})'
            )
    for domain, mirrors in config["registry-domain-mirrors"].items():
        if domain in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            raise ConfigError(
                f"{path}: 'registry-domain-mirrors' names Docker Hub ({domain!r}): its "
                "mirrors are 'registry-mirrors'"
            )
        if not domain or "/" in domain or "://" in domain:
            raise ConfigError(
                f"{path}: invalid 'registry-domain-mirrors' key {domain!r}: use a registry's "
                "domain (host[:port]), e.g. gcr.io"
            )
        for mirror in mirrors:
            scheme = str(mirror).partition("://")[0] if "://" in str(mirror) else "https"
            if not isinstance(mirror, str) or scheme not in ("http", "https") or \
                    not urlsplit(mirror if "://" in mirror else "https://" + mirror).netloc:
                raise ConfigError(
                    f"{path}: invalid 'registry-domain-mirrors' entry for {domain!r}: "
                    f"{json.dumps(mirror)}: use a URL, e.g. http://127.0.0.1:5000"
                )
    if config["cri"]:
        cri = cri_socket(config)
        if not os.path.isabs(cri):
            raise ConfigError(
                f"{path}: invalid value for 'cri': {config['cri']!r}: use the absolute path "
                "of a unix socket, e.g. /run/skiff-cri.sock (or unix:///run/skiff-cri.sock)"
            )
        if cri in socket_paths(config):
            raise ConfigError(
                f"{path}: 'cri' is {cri!r}, a socket the Docker API is served on (hosts); "
                "the CRI needs a socket of its own"
            )
    host, sep, port = str(config["cri-stream-address"]).rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{path}: invalid value for 'cri-stream-address': "
            f"{config['cri-stream-address']!r}: use HOST:PORT, e.g. 127.0.0.1:0"
        )
    try:
        cluster_settings.parse(config)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for host in config["hosts"]:
        if not host.startswith("unix://"):
            raise ConfigError(
                f"{path}: invalid 'hosts' entry {host!r}: only unix:// sockets are supported"
            )


def metrics_address(text: str) -> tuple[str, int]:
    """``(host, port)`` of a ``metrics-addr``: ``127.0.0.1:9323``, ``[::1]:9323``,
    ``localhost:9323``.  The host must be an IP address or ``localhost`` (skiff
    resolves no other name, so what the metrics listen on is never a DNS
    answer); the port must be 1-65535 (0 would listen where nobody looks)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port, e.g. 127.0.0.1:9323")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError("brackets are for IPv6 addresses, e.g. [::1]:9323")
    elif ":" in host:
        raise ValueError("an IPv6 address takes brackets, e.g. [::1]:9323")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, got {port!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"the host must be an IP address or localhost, got {host!r}") from None
    return host, int(port)


def metrics_on_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def storage_options(config: Mapping[str, Any], driver: str) -> dict[str, str]:
    """``storage-opts`` for ``driver``: keys with the driver's prefix stripped.

    Docker's options carry a driver prefix (``overlay2.size``); options of other
    drivers are ignored, unprefixed ones are passed through.
    """
    out: dict[str, str] = {}
    for item in config["storage-opts"]:
        key, _, value = item.partition("=")
        prefix, dot, rest = key.partition(".")
        if dot and prefix in (driver, "dm" if driver == "devicemapper" else driver):
            out[rest] = value
        elif not dot:
            out[key] = value
    return out


def exec_options(config: Mapping[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config["exec-opts"])


def cri_socket(config: Mapping[str, Any]) -> str:
    """The CRI's socket path ("" when the CRI is not served); kubelet's
    ``unix://`` form is accepted too."""
    return str(config["cri"]).removeprefix("unix://")


def socket_paths(config: Mapping[str, Any]) -> list[str]:
    hosts = config["hosts"] or [DEFAULT_SOCKET]
    return [h.removeprefix("unix://") for h in hosts]
