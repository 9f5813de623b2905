"""The offline ``skiff storage migrate``: the daemon's configuration, its plugins
and core.images.migrate, with skiffd stopped.

The CLI speaks only the API, so it cannot load storage drivers itself; it
runs ``python -m skiff.core.storage_migrate`` with its own arguments instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import structlog

from skiff.core import config as cfgmod
from skiff.core.config import ConfigError
from skiff.core.hookspecs import DriverNotSupported, StorageContext, StorageDriver
from skiff.core.images.migrate import MigrationError, migrate
from skiff.core.plugins import PluginLoadError, load_plugins


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiff storage migrate")
    p.add_argument("--to", required=True)
    p.add_argument("--config")
    p.add_argument("--data-root")
    p.add_argument("--keep-old", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    path = args.config or cfgmod.DEFAULT_CONFIG_FILE
    try:
        config: dict[str, Any] = {o.key: json.loads(json.dumps(o.default))
                                  for o in cfgmod.OPTIONS}
        config.update(cfgmod.read_file(path, required=args.config is not None))
        if args.data_root:
            config["data-root"] = args.data_root
        config["config-file"] = path
        cfgmod.validate(config, path)
        plugins = load_plugins()
        plugins.factory("storage", args.to)
    except (ConfigError, PluginLoadError, LookupError) as exc:
        print(f"skiff: {exc}", file=sys.stderr)
        return 1

    def build(name: str, ctx: StorageContext) -> StorageDriver:
        try:
            return plugins.factory("storage", name)(ctx)
        except LookupError as exc:
            raise MigrationError(str(exc)) from exc
        except DriverNotSupported as exc:
            raise MigrationError(f"storage driver {name!r} cannot be used here: {exc}") from exc

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    # progress is what say() prints; the library's log lines only when they warn
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    try:
        report = migrate(config, build, args.to, keep_old=args.keep_old, say=say)
    except MigrationError as exc:
        print(f"skiff: storage migrate: {exc}", file=sys.stderr)
        return 1
    print(f"migrated {report.layers} layers, {report.containers} container layers and "
          f"{report.images} images from {report.source} to {report.target} "
          f"in {report.seconds:.1f}s")
    for note in report.notes:
        print(note)
    if config.get("storage-driver") and config["storage-driver"] != args.to:
        print(f"note: {path} sets storage-driver to {config['storage-driver']!r}; change it "
              f"to {args.to!r} (or remove it) before starting skiffd")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
