"""python -m benchmarks {engine,storage} [--quick] [--out DIR]

The harness re-executes itself in a network and mount namespace of its own
(``unshare --net --mount``, loopback up): the daemons it starts, their
containers and their mounts cannot touch the host's links, and whatever a
crash might leave mounted goes away with the namespace.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import engine, report

NS_FLAG = "SKIFF_BENCH_IN_NS"


def _enter_namespaces(argv: list[str]) -> None:
    if os.environ.get(NS_FLAG) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    os.environ[NS_FLAG] = "1"
    os.execvp("unshare", ["unshare", "--net", "--mount", "--propagation", "private", "--",
                          sys.executable, "-m", "benchmarks", *argv])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for name, text in (("engine", "skiffd against dockerd through the stock docker CLI"),
                       ("storage", "the installed storage drivers against each other")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--quick", action="store_true", help="fewer rounds: under 5 minutes")
        s.add_argument("--out", type=Path, default=Path("bench-out"),
                       help="folder for <name>.json, <name>.md and <name>.png "
                            "(default ./bench-out)")
        s.add_argument("--no-unshare", action="store_true",
                       help="stay in the caller's network and mount namespaces")
    e = sub.choices["engine"]
    e.add_argument("--no-docker", action="store_true", help="skiffd only")
    e.add_argument("--only", default=",".join(engine.WORKLOADS),
                   help=f"comma-separated workloads (default all: {','.join(engine.WORKLOADS)}); "
                        f"an extra alone by its short name ({','.join(engine.EXTRA_NAMES)}); "
                        "or a set by name: " + "; ".join(f"{k} = {','.join(v)}"
                                                          for k, v in engine.SETS.items()))
    e.add_argument("--no-extras", action="store_true",
                   help="skip the contributed workloads (" + ", ".join(engine.EXTRAS) + ")")
    e.add_argument("--profile", action="store_true",
                   help="also record skiffd with py-spy during run --rm and print the top frames")
    e.add_argument("--baseline", metavar="PYTHON",
                   help="also run the skiffd of another checkout, by its venv's python "
                        "(column 'baseline'): a change before and after, in one run")
    e.add_argument("--smoke", action="store_true",
                   help="tiny counts: checks the harness works, measures nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks: run as root (the engines manage mounts, namespaces and cgroups)",
              file=sys.stderr)
        return 1
    if not args.no_unshare:
        _enter_namespaces(argv)
    out: Path = args.out.resolve()
    meta = report.machine()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.what == "engine":
        mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        meta["mode"] = mode
        meta["plan"] = engine.PLANS[mode].__dict__
        only = tuple(name for w in args.only.split(",") if w.strip()
                     for name in engine.SETS.get(w.strip(), (w.strip(),)))
        unknown = set(only) - set(engine.WORKLOADS) - set(engine.EXTRA_NAMES)
        if unknown:
            print(f"benchmarks: unknown workloads {sorted(unknown)}", file=sys.stderr)
            return 2
        rows = engine.run(mode, out, with_docker=not args.no_docker, only=only,
                          profile=args.profile, extras=not args.no_extras, log=log,
                          baseline=args.baseline)
        key, columns, ratio = ("engine", ["skiffd", "baseline", "dockerd", "kernel"],
                               ("skiffd", "dockerd"))
    else:
        # benchmarks/storage.py when a contributed one is there, else the built-in one
        try:
            storage = importlib.import_module("benchmarks.storage")
        except ModuleNotFoundError as exc:
            if exc.name != "benchmarks.storage":
                raise
            storage = importlib.import_module("benchmarks._storage_fallback")

        meta["mode"] = "quick" if args.quick else "full"
        rows = storage.run(args.quick, out)
        key, columns, ratio = "driver", None, None
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    text = report.write(out, args.what, rows, key, meta, columns=columns, ratio=ratio)
    print()
    print(text)
    print(f"\n{args.what}: {meta['seconds']}s; wrote {out}/{args.what}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
