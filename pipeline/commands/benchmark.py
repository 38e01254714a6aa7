"""``llcm benchmark`` and ``llcm report``: the benchmark outside Dagster.

    llcm benchmark [--profile full] [--models llcm lcm] [--steps 1 2 4] [--force]
                   [--num-processes 2]

runs the cells of ``--models`` x ``--steps`` (default: the whole configured grid) that are
missing, stale or skipped (``--force``: all of them), then rewrites the reports from every cell
of the configured grid and logs them to MLflow; prints a JSON summary (the table goes to
``reports/benchmark.md``). ``--num-processes N`` (default ``benchmark.num_processes``) shards
the generation over N processes under ``accelerate launch``; the numbers do not change.
``--profile full`` overlays ``benchmark.profiles.full`` (the larger protocol: every model at
every step count, more images per seed) on the configured grid.
``llcm report`` prints that markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ops.config import add_config_args, config_from_args

REPORT_FILE = "benchmark.md"


def run_benchmark_command(args: argparse.Namespace) -> int:
    from ops.eval.runner import build_benchmark

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    params, layout = config_from_args(args)
    bench = params.setdefault("benchmark", {})
    bench["selection"] = {
        "models": args.models,
        "steps": args.steps,
        "force": args.force,
        "log_mlflow": not args.no_mlflow,
    }
    if args.profile:
        bench["profile"] = args.profile
    if args.num_processes:
        bench["num_processes"] = args.num_processes
    summary = build_benchmark(params, layout)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def run_report(args: argparse.Namespace) -> int:
    _, layout = config_from_args(args)
    path = layout.reports / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no benchmark report at {path}: run `llcm benchmark`, `llcm stage benchmark` or "
            "materialise the Dagster asset `benchmark` first"
        )
    print(path.read_text(), end="")
    fidelity = layout.reports / "class_fidelity.md"
    if fidelity.is_file():
        print("\n" + fidelity.read_text(), end="")
    return 0


def register(sub) -> None:
    parser = sub.add_parser(
        "benchmark",
        help="run the benchmark grid (missing cells) and write the reports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", nargs="+", default=[], help="models (default: benchmark.models)"
    )
    parser.add_argument(
        "--steps", nargs="+", type=int, default=[], help="step counts (default: benchmark.steps)"
    )
    parser.add_argument("--force", action="store_true", help="re-run cells even when fresh")
    parser.add_argument(
        "--profile", default=None, help="a benchmark.profiles entry overlaid on the grid (full)"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "--num-processes",
        type=int,
        default=0,
        help="shard generation over N processes (default: benchmark.num_processes)",
    )
    add_config_args(parser)
    parser.set_defaults(handler=run_benchmark_command)

    report = sub.add_parser("report", help="print the benchmark's Table 3 (reports/benchmark.md)")
    add_config_args(report)
    report.set_defaults(handler=run_report)
