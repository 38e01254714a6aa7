"""``llcm finetune SOURCE... --name NAME``: fine-tune the teacher and the champion student on a
custom dataset, outside Dagster (the ``finetuned`` asset runs the same code per partition).

    llcm finetune ~/data/dog_xrays --name dog_xray --species dog --body-part thorax \\
        --modality X-ray --steps 300

SOURCE is what ``llcm ingest`` takes (a folder of class folders, a zip of one,
``kaggle:<owner>/<slug>``, a registry name); it is ingested into ``custom/NAME/`` with the same
cleaning, rejects and manifests. The fine-tuned student is saved as
``models/finetuned/NAME/`` and registered as ``NAME`` (alias ``champion``); then
``llcm generate --model models:/NAME@champion --class CLASS`` draws a class by name. Run it
again to resume an interrupted fine-tune (or to repeat it on a changed folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ops.config import add_config_args, config_from_args, stage_config
from pipeline.commands.ingest import add_source_args, resolve_sources

PARTITIONS = "custom_datasets"  # the Dagster dynamic partitions of asset ``finetuned``


def run(args: argparse.Namespace) -> int:
    from ops.finetune.dataset import class_table
    from ops.finetune.settings import with_finetune_values
    from ops.layout import check_name

    params, layout = config_from_args(args)
    check_name(args.name)
    steps = {}
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {args.steps}")
        steps = {"teacher_steps": args.steps, "student_steps": args.steps}
    params = with_finetune_values(params, **steps)
    specs = resolve_sources(args.sources, stage_config(params, "ingest").get("registry"), args)
    add_partition(args.name)

    from ops.finetune.stage import run_finetune

    summary = run_finetune(
        params,
        layout,
        args.name,
        sources=specs,
        base=args.base,
        log=lambda m: print(f"llcm finetune: {m}"),
    )
    print(class_table(summary["classes"], summary.get("train_counts")))
    print(json.dumps(_brief(summary), indent=2, default=str))
    return 0


def _brief(summary: dict) -> dict:
    keep = (
        "name",
        "workspace",
        "model_dir",
        "registered",
        "classes",
        "replay_images",
        "pictures",
        "seconds",
    )
    brief = {k: summary[k] for k in keep if k in summary}
    brief["teacher_final_loss"] = summary["teacher"].get("final_loss")
    brief["student_final_loss"] = {n: s.get("final_loss") for n, s in summary["students"].items()}
    return brief


def add_partition(name: str) -> bool:
    """Add ``name`` to the ``finetuned`` asset's partitions when a Dagster instance is set up
    (``DAGSTER_HOME``), so the UI lists the custom dataset; True if it was added."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return False
    if not Path(home).is_dir():
        print(f"llcm finetune: note: DAGSTER_HOME {home} does not exist yet; the partition "
              f"{name!r} is not added (add it in the UI)", file=sys.stderr)  # fmt: skip
        return False
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    if instance.has_dynamic_partition(PARTITIONS, name):
        return False
    instance.add_dynamic_partitions(PARTITIONS, [name])
    return True


def register(sub) -> None:
    parser = sub.add_parser(
        "finetune",
        help="fine-tune teacher and champion student on a custom dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_args(parser)
    parser.add_argument(
        "--name", required=True, help="name of the dataset and of the registered model"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of the teacher and of the student (default: finetune.*_steps)",
    )
    parser.add_argument(
        "--base",
        default=None,
        help="student to start from (default: finetune.base, models:/llcm@champion)",
    )
    add_config_args(parser)
    parser.set_defaults(handler=run)
