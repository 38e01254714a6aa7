"""Standalone entrypoint of every trainer, for one process or under ``accelerate launch``.

    python -m ops.training.entry teacher --preset tiny --data data
    accelerate launch --multi_gpu --num_processes 2 -m ops.training.entry teacher \\
        --preset tiny --set teacher.steps=100 --data data --summary summary.json

``STAGE`` is a name of ``TRAINERS`` or any ``package.module:function`` taking
``(params, layout)`` and returning a JSON-able summary; the main process prints the summary
and writes it to ``--summary``.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.config import load_params
from ops.imports import import_callable
from ops.layout import DataLayout

Trainer = Callable[[dict[str, Any], DataLayout], dict[str, Any]]

TRAINERS: dict[str, str] = {
    "autoencoder": "ops.autoencoder:train_autoencoder",
    "teacher": "ops.teacher:train_teacher",
    "llcm": "ops.distill_stage:train_llcm",
    "lcm": "ops.distill_stage:train_lcm",
    "llcm2": "ops.distill_stage:train_llcm2",
    "benchmark": "ops.benchmark:benchmark_ranks",
}


def resolve_trainer(stage: str) -> Trainer:
    """A ``TRAINERS`` name, an ablation student ``llcm_k<k>`` or a ``module:function``."""
    from ops.ablation import ablation_k

    if ablation_k(stage) is not None:
        from ops.distill_stage import train_distilled

        return functools.partial(train_distilled, stage)
    if stage not in TRAINERS and ":" not in stage:
        raise KeyError(
            f"unknown trainer {stage!r}; known: {', '.join(TRAINERS)} or module:function"
        )
    return import_callable(TRAINERS.get(stage, stage))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.training.entry", description=__doc__)
    parser.add_argument("stage", help=f"one of {', '.join(TRAINERS)} or module:function")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--data", default=None, help="data directory (default: $LLCM_DATA)")
    parser.add_argument("--summary", default=None, help="write the summary JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = load_params(args.params, args.preset, args.overrides)
    summary = resolve_trainer(args.stage)(params, DataLayout.from_env(args.data))
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        text = json.dumps(summary, indent=2, default=str)
        print(text)
        if args.summary:
            Path(args.summary).write_text(text)
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
