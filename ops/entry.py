"""Standalone entrypoint of every trainer, for one process or under ``accelerate launch``.

    python -m ops.entry teacher --preset tiny --data data
    accelerate launch --multi_gpu --num_processes 2 -m ops.entry teacher \\
        --preset tiny --set teacher.steps=100 --data data --summary summary.json

``STAGE`` is a name of ``TRAINERS`` or any ``package.module:function`` taking
``(params, layout)`` and returning a JSON-able summary; the main process prints the summary
and writes it to ``--summary``.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from ops.config import add_config_args, config_from_args
from ops.imports import import_callable
from ops.training.launch import Trainer

TRAINERS: dict[str, str] = {
    "autoencoder": "ops.models.autoencoder:train_autoencoder",
    "teacher": "ops.models.teacher:train_teacher",
    "llcm": "ops.distill.stage:train_llcm",
    "lcm": "ops.distill.stage:train_lcm",
    "llcm2": "ops.distill.stage:train_llcm2",
    "llcm_pcm": "ops.distill.stage:train_llcm_pcm",
    "llcm_dmd": "ops.distill.dmd_stage:train_llcm_dmd",
    "benchmark": "ops.eval.runner:benchmark_ranks",
    "finetune_teacher": "ops.finetune.stage:train_finetuned_teacher",
    "finetune_student": "ops.finetune.stage:train_finetuned_student",
}


def resolve_trainer(stage: str) -> Trainer:
    """A ``TRAINERS`` name, an ablation student ``llcm_k<k>`` or a ``module:function``."""
    from ops.distill.ablation import is_study_student

    if stage not in TRAINERS and is_study_student(stage):
        from ops.distill.stage import train_distilled

        return functools.partial(train_distilled, stage)
    if stage not in TRAINERS and ":" not in stage:
        raise KeyError(
            f"unknown trainer {stage!r}; known: {', '.join(TRAINERS)} or module:function"
        )
    return import_callable(TRAINERS.get(stage, stage))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.entry", description=__doc__)
    parser.add_argument("stage", help=f"one of {', '.join(TRAINERS)} or module:function")
    add_config_args(parser)
    parser.add_argument("--summary", default=None, help="write the summary JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params, layout = config_from_args(args)
    summary = resolve_trainer(args.stage)(params, layout)
    from accelerate import PartialState

    from ops.training.runtime import leave_process_group

    state = PartialState()
    if state.is_main_process:
        text = json.dumps(summary, indent=2, default=str)
        print(text)
        if args.summary:
            Path(args.summary).write_text(text)
    leave_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
