"""The ``llcm`` command line. Each verb lives in a module of ``pipeline.commands`` exposing
``register(subparsers)``; the verb's handler returns an exit code."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import pipeline.commands as commands
from ops.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llcm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as exc:
        # Expected user errors get one clear line, not a traceback.
        print(f"llcm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
