"""``llcm stage NAME``: run one pipeline stage outside Dagster (this is what dvc.yaml calls)."""

from __future__ import annotations

import argparse
import json

from ops.config import add_config_args, config_from_args
from pipeline.stages import STAGES, resolve


def run(args: argparse.Namespace) -> int:
    params, layout = config_from_args(args)
    summary = resolve(args.name)(params, layout)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def register(sub) -> None:
    parser = sub.add_parser("stage", help="run one pipeline stage (as dvc repro does)")
    parser.add_argument(
        "name", help=f"one of {', '.join(STAGES)}, or llcm_k<k> (a skip-k ablation student)"
    )
    add_config_args(parser)
    parser.set_defaults(handler=run)
