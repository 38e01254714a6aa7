"""Arguments shared by several verbs: params file, preset, overrides, data directory."""

from __future__ import annotations

import argparse
from typing import Any

from ops.config import load_params
from ops.layout import DataLayout


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    parser.add_argument("--preset", default=None, help="preset name, e.g. tiny or sd15")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params key, as dvc exp run -S does (repeatable)",
    )
    parser.add_argument(
        "--data", default=None, help="data directory (default: $LLCM_DATA or ./data)"
    )


def config_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], DataLayout]:
    return load_params(args.params, args.preset, args.overrides), DataLayout.from_env(args.data)


def register(sub: Any) -> None:  # this module is a helper, not a verb
    return None
