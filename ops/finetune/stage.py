"""Stage ``finetune``: a custom dataset -> a fine-tuned teacher -> a fine-tuned student.

1. the workspace's training images are encoded with the base VAE (``ops.models.latents``,
   resumable, skipped when up to date) and a share of the base training latents is replayed
   beside them (``ops.finetune.replay``);
2. the teacher continues from the base teacher's UNet on them (``ops.models.teacher`` with
   ``init_unet``): ``custom/<name>/models/teacher/``;
3. the consistency student continues from the base student (``finetune.base``, by default the
   champion of the registry), distilled from the fine-tuned teacher with the base student's
   solver and k (``ops.distill.stage`` with ``init_student``):
   ``models/finetuned/<name>/``, a stock ``LatentConsistencyModelPipeline`` directory with its
   class table, registered in MLflow as ``<name>`` with the alias ``champion``.

Both trainers checkpoint into ``custom/<name>/checkpoints/`` and resume like every trainer;
``python -m ops.entry finetune_teacher|finetune_student`` runs them standalone or launched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ops.config import stage_config
from ops.data.sources.registry import SourceSpec
from ops.finetune.dataset import custom_classes, ingest_sources, saved_request, train_counts
from ops.finetune.replay import replay_ids, write_replay
from ops.finetune.settings import (
    base_uri,
    finetune_config,
    with_finetune_values,
    with_stage_values,
)
from ops.layout import BASE_TEACHER, DataLayout, FinetuneLayout
from ops.training.launch import run_trainer

SUMMARY_FILE = "finetune.json"


def workspace_of(params: dict[str, Any], layout: DataLayout) -> FinetuneLayout:
    cfg = finetune_config(params)
    if not cfg.get("name"):
        raise ValueError("finetune.name is not set: which custom dataset to fine-tune on?")
    students = list(cfg.get("students") or ["llcm"])
    return layout.finetune_layout(str(cfg["name"]), student=students[0])


# --------------------------------------------------------------------------------------------
# the two trainers (TRAINERS "finetune_teacher", "finetune_student" of ops.entry)
# --------------------------------------------------------------------------------------------
def teacher_params(params: dict[str, Any], workspace: FinetuneLayout, replay_key: str) -> dict:
    cfg = finetune_config(params)
    values = {
        "steps": int(cfg["teacher_steps"]),
        "learning_rate": float(cfg["teacher_learning_rate"]),
        "warmup_steps": 0,
        "init_unet": str(workspace.model(BASE_TEACHER) / "unet"),
        "replay": replay_key,
    }
    return with_stage_values(params, "teacher", values)


def student_params(
    params: dict[str, Any], student: str, base_dir: Path, primary: bool, replay_key: str
) -> dict[str, Any]:
    """The distillation config of one fine-tuned student: the base student's solver, k and
    guidance range (from its ``llcm.json``), started from its UNet."""
    cfg = finetune_config(params)
    meta = json.loads((base_dir / "llcm.json").read_text())
    solvers = dict(stage_config(params, "distill")["solvers"])
    solvers[student] = meta["solver"]
    values = {
        "steps": int(cfg["student_steps"]),
        "learning_rate": float(cfg["student_learning_rate"]),
        "init_student": str(base_dir / "unet"),
        "k": int(meta["k"]),
        "solvers": solvers,
        "leapfrog_h": float(meta.get("leapfrog_h", 0.5)),
        "register": primary,
        "registered_name": str(cfg["name"]) if primary else None,
        "replay": replay_key,
    }
    return with_stage_values(params, "distill", values)


def train_finetuned_teacher(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Trainer: the teacher continued on the workspace (params prepared by :func:`run_finetune`)."""
    from ops.models.teacher import train_teacher

    return train_teacher(params, workspace_of(params, layout))


def train_finetuned_student(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Trainer: student ``finetune.current_student`` continued on the workspace."""
    from ops.distill.stage import train_distilled

    student = str(finetune_config(params)["current_student"])
    return train_distilled(student, params, workspace_of(params, layout))


# --------------------------------------------------------------------------------------------
# the whole fine-tune
# --------------------------------------------------------------------------------------------
def run_finetune(
    params: dict[str, Any],
    layout: DataLayout,
    name: str,
    *,
    sources: Sequence[SourceSpec] | None = None,
    base: str | None = None,
    students: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Ingest ``sources`` (none: what the workspace was last ingested from, else the dataset it
    holds), then
    encode, fine-tune the teacher, fine-tune each student; the summary (also written to
    ``custom/<name>/reports/finetune.json``)."""
    from ops.distill.registry import resolve_model_uri
    from ops.finetune.pictures import before_after_grids, loss_picture
    from ops.models.latents import build_latents

    began = time.perf_counter()
    cfg = finetune_config(params)
    students = list(students or cfg.get("students") or ["llcm"])
    params = with_finetune_values(params, name=name, students=students, base=base or cfg["base"])
    cfg = finetune_config(params)
    workspace = layout.finetune_layout(name, student=students[0])
    summary: dict[str, Any] = {"name": name, "workspace": str(workspace.root)}
    # no sources given: repeat the last ingest (a changed folder is picked up), if any
    specs = list(sources or []) or saved_request(workspace)
    if specs:
        log(f"ingesting {', '.join(s.name for s in specs)} into {workspace.root}")
        summary["ingest"] = ingest_sources(params, workspace, specs)["medimgs"]
    classes = custom_classes(workspace)
    summary["classes"] = classes
    summary["train_counts"] = train_counts(workspace)

    log("encoding the custom images with the base VAE")
    summary["latents"] = build_latents(params, workspace)
    replay = replay_ids(layout, int(cfg["replay_per_class"]), int(cfg["seed"]))
    replay_key = write_replay(workspace, layout, replay)
    summary["replay_images"] = len(replay)

    log(f"fine-tuning the teacher ({cfg['teacher_steps']} steps)")
    tparams = teacher_params(params, workspace, replay_key)
    summary["teacher"] = run_trainer(
        "finetune_teacher",
        train_finetuned_teacher,
        tparams,
        layout,
        stage_config(tparams, "teacher"),
    )
    summary["students"] = {}
    base_dirs: dict[str, Path] = {}
    for i, student in enumerate(students):
        uri = base_uri(cfg, student, primary=i == 0)
        base_dirs[student] = resolve_model_uri(uri, layout, params)
        log(f"fine-tuning student {student} from {uri} ({cfg['student_steps']} steps)")
        sparams = with_finetune_values(
            student_params(params, student, base_dirs[student], i == 0, replay_key),
            current_student=student,
        )
        summary["students"][student] = run_trainer(
            "finetune_student",
            train_finetuned_student,
            sparams,
            layout,
            stage_config(sparams, "distill"),
        )
        summary["students"][student]["base"] = uri
    product = workspace.model(students[0])
    summary["model_dir"] = str(product)
    summary["registered"] = f"models:/{name}@{params['mlflow']['champion_alias']}"
    reports = workspace.reports
    reports.mkdir(parents=True, exist_ok=True)
    summary["pictures"] = before_after_grids(
        base_dirs[students[0]], product, classes, reports, params
    )
    summary["pictures"]["loss"] = str(
        loss_picture(summary["teacher"], summary["students"], reports / "loss.png")
    )
    summary["seconds"] = round(time.perf_counter() - began, 1)
    (reports / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
