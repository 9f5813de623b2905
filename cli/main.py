"""The ``skiff`` command: a thin, fast client of skiffd's API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from skiff.cli.client import APIError, Client


def cmd_info(client: Client, args: argparse.Namespace) -> int:
    info = client.request("GET", "/info")
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    plugins = info.get("Plugins", {})
    rows = [
        ("Server Version", info["ServerVersion"]),
        ("Storage Driver", info["Driver"]),
        *[(f"  {k}", v) for k, v in info.get("DriverStatus") or []],
        ("Logging Driver", info["LoggingDriver"]),
        ("Cgroup Driver", f"{info['CgroupDriver']} (v{info['CgroupVersion']})"),
        ("Default Runtime", info.get("DefaultRuntime", "")),
        ("Containers", f"{info['Containers']} (running {info['ContainersRunning']}, "
                       f"stopped {info['ContainersStopped']})"),
        ("Images", info["Images"]),
        ("Root Dir", info["DockerRootDir"]),
        ("Kernel", info["KernelVersion"]),
        ("Operating System", info["OperatingSystem"]),
        ("Plugins", ""),
        *[(f"  {kind}", ", ".join(plugins.get(kind) or []))
          for kind in ("Storage", "Network", "Volume", "Log", "Isolation", "Limits")],
    ]
    for k, v in rows:  # docker info's "Key: value" shape, sub-items indented
        print(f"{k}: {v}".rstrip())
    return 0


def cmd_version(client: Client, args: argparse.Namespace) -> int:
    from skiff import __version__

    print(f"Client: skiff {__version__}")
    v = client.request("GET", "/version")
    print(f"Server: skiffd {v['Version']} (API {v['ApiVersion']}, min {v['MinAPIVersion']})")
    return 0


def cmd_bootstrap(client: Client, args: argparse.Namespace) -> int:
    from skiff.cli.bootstrap import BASES

    if args.base not in BASES:
        print(f"skiff: unknown base {args.base!r}; available: {', '.join(BASES)}",
              file=sys.stderr)
        return 2
    build = BASES[args.base]
    try:
        tar, changes = build(args.busybox)
    except FileNotFoundError as exc:
        print(f"skiff: {exc}", file=sys.stderr)
        return 1
    repo, _, tag = (args.tag or f"{args.base}:latest").partition(":")
    out = client.request(
        "POST", "/images/create",
        query={"fromSrc": "-", "repo": repo, "tag": tag or "latest", "changes": changes,
               "message": f"skiff image bootstrap {args.base}"},
        body=tar, headers={"Content-Type": "application/x-tar"},
    )
    # one JSON message, or JSON lines when the daemon streams progress
    messages = [out] if isinstance(out, dict) else [
        json.loads(line) for line in out.decode().splitlines() if line.strip()]
    image_id = next((m["status"] for m in reversed(messages) if "status" in m), "")
    print(f"{repo}:{tag or 'latest'} {image_id}")
    return 0


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "Image": args.image, "Cmd": args.command or None, "Env": args.env or [],
        "AttachStdout": True, "AttachStderr": True,
        "HostConfig": {"AutoRemove": args.rm, "NetworkMode": args.network or "default"},
    }
    if args.user:
        body["User"] = args.user
    if args.userns:
        # "auto" too, which the docker CLI refuses before it reaches the daemon
        body["HostConfig"]["UsernsMode"] = args.userns
    try:
        cid = client.request("POST", "/containers/create",
                             query={"name": args.name} if args.name else None, body=body)["Id"]
    except APIError as exc:
        print(f"skiff: {exc}", file=sys.stderr)
        return 125
    if args.detach:
        client.request("POST", f"/containers/{cid}/start")
        print(cid)
        return 0
    sock = client.attach(cid)
    wait = client.request("POST", f"/containers/{cid}/wait",
                          query={"condition": "removed" if args.rm else "next-exit"},
                          stream=True)
    try:
        client.request("POST", f"/containers/{cid}/start")
    except APIError as exc:
        print(f"skiff: {exc}", file=sys.stderr)
        return 127 if "not found" in str(exc) else 125
    for kind, data in client.demux(sock):
        (sys.stderr if kind == 2 else sys.stdout).buffer.write(data)
        (sys.stderr if kind == 2 else sys.stdout).flush()
    sock.close()
    return int(json.loads(wait.read())["StatusCode"])


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    rows = client.request("GET", "/containers/json", query={"all": int(args.all)})
    print(f"{'CONTAINER ID':<14}{'IMAGE':<20}{'COMMAND':<24}{'STATUS':<26}NAMES")
    for c in rows:
        print(f"{c['Id'][:12]:<14}{c['Image'][:19]:<20}{c['Command'][:23]:<24}"
              f"{c['Status'][:25]:<26}{c['Names'][0].lstrip('/')}")
    return 0


def cmd_images(client: Client, args: argparse.Namespace) -> int:
    rows = client.request("GET", "/images/json")
    print(f"{'REPOSITORY':<30}{'TAG':<12}{'IMAGE ID':<14}{'CREATED':<22}SIZE")
    for im in rows:
        tags = im.get("RepoTags") or ["<none>:<none>"]
        for t in tags:
            repo, _, tag = t.rpartition(":")
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(im["Created"]))
            print(f"{repo:<30}{tag:<12}{im['Id'][7:19]:<14}{created:<22}"
                  f"{im['Size'] / 1e6:.1f}MB")
    return 0


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    rc = 0
    for ref in args.containers:
        try:
            client.request("DELETE", f"/containers/{ref}", query={"force": int(args.force)})
            print(ref)
        except APIError as exc:
            print(f"skiff: {exc}", file=sys.stderr)
            rc = 1
    return rc


NET_RATE_PREFIX = "skiff.net."


def net_rate_item(text: str) -> tuple[str, str]:
    """``--net-rate`` ``egress=2mbit``, ``ingress-burst=32kb`` or a full
    ``skiff.net.*`` key: the label key and value ("" removes the label)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"invalid --net-rate {text!r}: expected NAME=VALUE, e.g. egress=2mbit")
    if not name.startswith(NET_RATE_PREFIX):
        name = NET_RATE_PREFIX + (name if "-" in name else f"{name}-rate")
    return name, value


def cmd_update(client: Client, args: argparse.Namespace) -> int:
    """``skiff update --net-rate``: the bandwidth labels of containers, live
    (``SkiffNetRates``, skiff's extension of ``POST /containers/{id}/update``)."""
    if not args.net_rate:
        print("skiff: nothing to update: give --net-rate NAME=VALUE", file=sys.stderr)
        return 2
    rates = dict(args.net_rate)
    rc = 0
    for ref in args.containers:
        try:
            client.request("POST", f"/containers/{ref}/update", body={"SkiffNetRates": rates})
            print(ref)
        except APIError as exc:
            print(f"skiff: Error response from daemon: {exc}", file=sys.stderr)
            rc = 1
    return rc


def _iec(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n:.4g}GiB"  # pragma: no cover


def stats_row(s: dict[str, Any]) -> str:
    """One ``docker stats`` line from a stats frame, with Docker's arithmetic."""
    cpu, pre = s.get("cpu_stats") or {}, s.get("precpu_stats") or {}
    cpu_delta = ((cpu.get("cpu_usage") or {}).get("total_usage", 0)
                 - (pre.get("cpu_usage") or {}).get("total_usage", 0))
    sys_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    ncpu = cpu.get("online_cpus") or 1
    cpu_pct = cpu_delta / sys_delta * ncpu * 100 if sys_delta > 0 and cpu_delta > 0 else 0.0
    mem = s.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    # page cache that can be dropped is not "used", as docker stats counts it
    usage = mem.get("usage", 0) - detail.get("total_inactive_file",
                                             detail.get("inactive_file", 0))
    limit = mem.get("limit", 0)
    mem_pct = usage / limit * 100 if limit else 0.0
    nets = (s.get("networks") or {}).values()
    rx, tx = sum(n["rx_bytes"] for n in nets), sum(n["tx_bytes"] for n in nets)
    blk = (s.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    rd = sum(e["value"] for e in blk if e["op"].lower() == "read")
    wr = sum(e["value"] for e in blk if e["op"].lower() == "write")
    pids = (s.get("pids_stats") or {}).get("current", 0)
    return (f"{s['id'][:12]:<14}{s['name'].lstrip('/')[:20]:<21}{cpu_pct:>6.2f}%   "
            f"{_iec(max(usage, 0)) + ' / ' + _iec(limit):<22}{mem_pct:>6.2f}%   "
            f"{_human(rx) + ' / ' + _human(tx):<18}{_human(rd) + ' / ' + _human(wr):<18}{pids}")


def cmd_stats(client: Client, args: argparse.Namespace) -> int:
    refs = args.containers or [c["Id"] for c in client.request("GET", "/containers/json")]
    header = (f"{'CONTAINER':<14}{'NAME':<21}{'CPU %':>7}   {'MEM USAGE / LIMIT':<22}"
              f"{'MEM %':>7}   {'NET I/O':<18}{'BLOCK I/O':<18}PIDS")
    while True:
        rows, rc = [], 0
        for ref in refs:
            try:
                # stream=false: the daemon answers with a second sample, so CPU % has a base
                rows.append(stats_row(client.request(
                    "GET", f"/containers/{ref}/stats", query={"stream": 0})))
            except APIError as exc:
                print(f"skiff: {exc}", file=sys.stderr)
                rc = 1
        if args.stream and sys.stdout.isatty():
            print("\x1b[2J\x1b[H", end="")
        print(header)
        for row in rows:
            print(row)
        if not args.stream:
            return rc
        sys.stdout.flush()


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}GB"  # pragma: no cover


class PullRenderer:
    """Draws Docker's pull progress: one line per layer, redrawn in place on a
    terminal; on a pipe, one line per status change (no byte counts)."""

    def __init__(self, out: Any, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.order: list[str] = []
        self.lines: dict[str, str] = {}
        self.drawn = 0

    def _line(self, msg: dict[str, Any]) -> str:
        status = msg.get("status", "")
        detail = msg.get("progressDetail") or {}
        cur, total = detail.get("current"), detail.get("total")
        if cur is not None and total:
            width = 30
            n = min(width, int(width * cur / total))
            bar = "=" * n + (">" if n < width else "") + " " * (width - n - (n < width))
            return f"{msg['id']}: {status:<12}[{bar}] {_human(cur)}/{_human(total)}"
        return f"{msg['id']}: {status}"

    def feed(self, msg: dict[str, Any]) -> None:
        ident = msg.get("id")
        if not ident or msg.get("status", "").startswith("Pulling from"):
            self._print(f"{ident + ': ' if ident else ''}{msg.get('status', '')}")
            return
        if ident not in self.lines:
            self.order.append(ident)
        line = self._line(msg)
        changed = self.lines.get(ident, "").split("[")[0] != line.split("[")[0]
        self.lines[ident] = line
        if self.tty:
            self._redraw()
        elif changed:
            print(f"{ident}: {msg.get('status', '')}", file=self.out, flush=True)

    def _print(self, text: str) -> None:
        if self.tty and self.drawn:
            self.drawn = 0
            self.order, self.lines = [], {}
        print(text, file=self.out, flush=True)

    def _redraw(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}A")
        for ident in self.order:
            self.out.write("\x1b[2K" + self.lines[ident] + "\n")
        self.drawn = len(self.order)
        self.out.flush()


def _registry_auth(user: str | None, ref: str) -> dict[str, str]:
    if not user:
        return {}
    import base64

    name, _, password = user.partition(":")
    first = ref.split("/", 1)[0]
    server = first if "/" in ref and ("." in first or ":" in first) else "docker.io"
    blob = json.dumps({"username": name, "password": password, "serveraddress": server})
    return {"X-Registry-Auth": base64.urlsafe_b64encode(blob.encode()).decode()}


def cmd_pull(client: Client, args: argparse.Namespace) -> int:
    ref = args.image
    if "@" in ref:
        name, _, tag = ref.partition("@")
    else:
        slash = ref.rfind("/")
        colon = ref.rfind(":")
        name, tag = (ref[:colon], ref[colon + 1:]) if colon > slash else (ref, "latest")
    resp = client.request("POST", "/images/create", query={"fromImage": name, "tag": tag},
                          headers=_registry_auth(args.user, ref), stream=True)
    tty = sys.stdout.isatty() and not args.quiet
    render = PullRenderer(sys.stdout, tty)
    last = ""
    while True:
        raw = resp.readline()
        if not raw:
            break
        if not raw.strip():
            continue
        msg = json.loads(raw)
        if "error" in msg:
            print(f"skiff: {msg['error']}", file=sys.stderr)
            return 1
        last = msg.get("status", last)
        if not args.quiet:
            render.feed(msg)
    if args.quiet:
        print(ref if "@" in ref or ":" in ref.rsplit("/", 1)[-1] else ref + ":latest")
    return 0 if last.startswith("Status:") else 1


def cmd_storage_migrate(client: Client, args: argparse.Namespace) -> int:
    """Offline: move every layer of a data-root to another storage driver.

    The work needs the storage drivers, which the CLI may not load (it speaks
    only the API); core's offline entry point does it in a process of its own.
    """
    import subprocess

    argv = [sys.executable, "-m", "skiff.core.storage_migrate", "--to", args.to]
    if args.config:
        argv += ["--config", args.config]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    if args.keep_old:
        argv.append("--keep-old")
    if args.quiet:
        argv.append("--quiet")
    return subprocess.run(argv, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiff", description="skiff container engine client")
    p.add_argument("-H", "--host", help="daemon socket (default unix:///run/skiff.sock, "
                                        "or $SKIFF_HOST)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="show daemon information")
    s.add_argument("--format", choices=["text", "json"], default="text")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("version", help="show client and daemon versions")
    s.set_defaults(func=cmd_version)

    image = sub.add_parser("image", help="manage images")
    isub = image.add_subparsers(dest="image_command", required=True)
    s = isub.add_parser("bootstrap", help="make a base image from host binaries (no registry)")
    s.add_argument("base", help="base to make: busybox")
    s.add_argument("--tag", help="name:tag of the image (default <base>:latest)")
    s.add_argument("--busybox", default="/bin/busybox",
                   help="a statically linked busybox (Debian's busybox-static)")
    s.set_defaults(func=cmd_bootstrap)

    s = sub.add_parser("run", help="run a command in a new container")
    s.add_argument("--rm", action="store_true")
    s.add_argument("-d", "--detach", action="store_true")
    s.add_argument("--name")
    s.add_argument("-e", "--env", action="append")
    s.add_argument("-u", "--user")
    s.add_argument("--network")
    s.add_argument("--userns", help="host, or auto (a user-namespace range of its own; "
                                     "needs userns-remap)")
    s.add_argument("image")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("pull", help="pull an image from a registry, with a progress bar")
    s.add_argument("-q", "--quiet", action="store_true", help="print only the image name")
    s.add_argument("-u", "--user", help="registry credentials, user:password")
    s.add_argument("image", help="name[:tag] or name@digest")
    s.set_defaults(func=cmd_pull)

    s = sub.add_parser("ps", help="list containers")
    s.add_argument("-a", "--all", action="store_true")
    s.set_defaults(func=cmd_ps)

    s = sub.add_parser("images", help="list images")
    s.set_defaults(func=cmd_images)

    s = sub.add_parser("rm", help="remove containers")
    s.add_argument("-f", "--force", action="store_true")
    s.add_argument("containers", nargs="+")
    s.set_defaults(func=cmd_rm)
    s = sub.add_parser("update", help="change the bandwidth limits of containers, running "
                                      "or not (docs/limits.md)")
    s.add_argument("--net-rate", action="append", type=net_rate_item, metavar="NAME=VALUE",
                   help="egress=8mbit (traffic leaving the container), ingress=8mbit "
                        "(arriving), egress-burst=32kb, ingress-latency=50ms, or a full "
                        "skiff.net.* key; an empty value removes the label; repeatable")
    s.add_argument("containers", nargs="+")
    s.set_defaults(func=cmd_update)
    s = sub.add_parser("stats", help="resource usage of running containers")
    s.add_argument("containers", nargs="*", help="default: every running container")
    s.add_argument("--stream", action="store_true", help="refresh every second until ^C")
    s.set_defaults(func=cmd_stats)

    storage = sub.add_parser("storage", help="manage the daemon's storage (offline)")
    ssub = storage.add_subparsers(dest="storage_command", required=True)
    s = ssub.add_parser(
        "migrate", help="move every image and stopped container to another storage driver, "
                        "keeping image IDs (skiffd must be stopped)")
    s.add_argument("--to", required=True, metavar="DRIVER", help="the storage driver to use")
    s.add_argument("--config", metavar="FILE",
                   help="skiffd's daemon.json (default /etc/skiff/daemon.json)")
    s.add_argument("--data-root", help="the data-root (default: from the configuration)")
    s.add_argument("--keep-old", action="store_true",
                   help="keep the old driver's data after a successful migration")
    s.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    s.set_defaults(func=cmd_storage_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(args.host)
    try:
        return int(args.func(client, args))
    except APIError as exc:
        print(f"skiff: Error response from daemon: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
