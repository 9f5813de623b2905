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
          for kind in ("Storage", "Network", "Log", "Isolation", "Limits")],
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
    image_id = ""
    for line in out.decode().splitlines() if isinstance(out, bytes) else []:
        if line.strip():
            image_id = json.loads(line).get("status", image_id)
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
    s.add_argument("image")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("ps", help="list containers")
    s.add_argument("-a", "--all", action="store_true")
    s.set_defaults(func=cmd_ps)

    s = sub.add_parser("images", help="list images")
    s.set_defaults(func=cmd_images)

    s = sub.add_parser("rm", help="remove containers")
    s.add_argument("-f", "--force", action="store_true")
    s.add_argument("containers", nargs="+")
    s.set_defaults(func=cmd_rm)
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
