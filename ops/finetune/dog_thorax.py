"""Stage ``dog_thorax_finetune``: the paper's unseen dog cardiac X-ray experiment (its Fig. 4).

The dog thorax family (normal, cardiomegaly) is held out of base training. Here it becomes a
custom dataset like a user's (``custom/dog_thorax/``, its MedImgs rows and images exported from
the base MedImgs with the base splits), and:

1. the teacher and both students (LLCM and LCM, each from its base champion) are fine-tuned on
   its train split with replay (``ops.finetune.stage``);
2. DreamBooth is fitted on the dog classes from the *base* teacher (the paper's few-shot
   baseline);
3. the benchmark (every metric and interval of ``ops.eval``) runs in the workspace against the
   dog *test* split: the base teacher zero-shot, DreamBooth, the fine-tuned teacher (DDIM-50,
   DPM-Solver++ 4) and the fine-tuned LCM and LLCM at 1, 2 and 4 steps, plus the real floor;
4. the clinical measurement: the heart-to-thorax ratio of generated normal and cardiomegaly
   images against the real ones (``ops.finetune.heart_ratio``), and the Fig. 4 picture;
5. forgetting: the base classes' FID of the base LLCM and of the fine-tuned one, measured side
   by side at 4 steps in the base benchmark's protocol.

Everything lands in ``custom/dog_thorax/reports/`` (``dog_thorax.md`` is the reading).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd

from ops.config import stage_config
from ops.eval.plan import ModelSpec
from ops.eval.settings import benchmark_config
from ops.finetune.dataset import export_family
from ops.finetune.settings import finetune_config, with_stage_values
from ops.layout import DataLayout, FinetuneLayout

NAME = "dog_thorax"
REPORT = "dog_thorax.md"
MODELS = ["base_teacher_dpmpp", "dreambooth", "teacher_ddim50", "teacher_dpmpp", "lcm", "llcm"]
MODEL_STEPS = {"base_teacher_dpmpp": [4], "dreambooth": [4], "teacher_dpmpp": [4]}
STUDENT_STEPS = [1, 2, 4]
FORGETTING_STEPS = 4


def experiment_config(params: dict[str, Any]) -> dict[str, Any]:
    return dict(finetune_config(params)["dog_thorax"])


def workspace_params(params: dict[str, Any]) -> dict[str, Any]:
    """The benchmark as the experiment runs it in the workspace: its six models, no ablation,
    and references from the dog test split (the workspace's source is no phantom draw)."""
    out = with_stage_values(
        params,
        "benchmark",
        {"models": MODELS, "model_steps": MODEL_STEPS, "steps": STUDENT_STEPS, "classes": None},
    )
    out = with_stage_values(out, "distill", {"k_ablation": []})
    return with_stage_values(out, "ingest", {"sources": []})


def build_dog_thorax(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """The whole experiment (see the module docstring); its summary."""
    from ops.baselines.dreambooth_stage import build_dreambooth
    from ops.eval.runner import run_benchmark
    from ops.finetune.stage import run_finetune

    began = time.perf_counter()
    exp = experiment_config(params)
    students = list(exp["students"])
    workspace = layout.finetune_layout(NAME, student=students[0])
    rows = export_family(layout, workspace, exp["classes"])
    tuned = run_finetune(params, layout, NAME, students=students)
    wparams = workspace_params(params)
    dreambooth = build_dreambooth(wparams, workspace.with_base_teacher())
    bench = run_benchmark(wparams, workspace, log_mlflow=False)
    ratios, figure = clinical_measurement(wparams, workspace, exp)
    forgetting = measure_forgetting(params, layout, workspace)
    reports = workspace.reports
    ratios.to_parquet(reports / "heart_ratio.parquet", index=False)
    forgetting.to_parquet(reports / "forgetting.parquet", index=False)
    table = pd.read_parquet(reports / "benchmark.parquet")
    text = report_text(table, ratios, forgetting, figure.name)
    (reports / REPORT).write_text(text)
    summary = {
        "rows": rows,
        "classes": tuned["classes"],
        "finetune_seconds": tuned["seconds"],
        "dreambooth_loss": [dreambooth.get("loss_before"), dreambooth.get("loss_after")],
        "benchmark_cells": bench.get("measured", []),
        "report": str(reports / REPORT),
        "figure": str(figure),
        "pictures": tuned["pictures"],
        "seconds": round(time.perf_counter() - began, 1),
    }
    (reports / "dog_thorax.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def clinical_measurement(
    params: dict[str, Any], workspace: FinetuneLayout, exp: dict[str, Any]
) -> tuple[pd.DataFrame, Any]:
    """Heart-to-thorax ratios of every student cell and the teachers, and Fig. 4."""
    from ops.eval.findings import phantom_classes
    from ops.finetune.dataset import custom_classes
    from ops.finetune.heart_ratio import figure4, measure_ratios

    known = custom_classes(workspace)
    classes = {c: known[c] for c in exp["classes"]}  # config order: normal, then cardiomegaly
    labels = phantom_classes(stage_config(params, "ingest").get("registry"))
    diseased = {c: labels[c][1] if c in labels else False for c in classes}
    cells = [("base_teacher_dpmpp", 4), ("dreambooth", 4), ("teacher_ddim50", 50),
             ("teacher_dpmpp", 4)] + [(m, s) for m in ("lcm", "llcm") for s in STUDENT_STEPS]  # fmt: skip
    n, k = int(exp["ratio_images_per_class"]), int(exp["figure_samples"])
    table, figure = measure_ratios(
        workspace, cells, classes, diseased, benchmark_config(params), n, k
    )
    return table, figure4(figure, k * len(classes), workspace.reports / "figure4.png")


def measure_forgetting(
    params: dict[str, Any], layout: DataLayout, workspace: FinetuneLayout
) -> pd.DataFrame:
    """The base classes' rows of the base student and of the fine-tuned one at
    ``FORGETTING_STEPS`` steps, generated from the same seeds against the base references."""
    from ops.eval.cells import measure_cell
    from ops.eval.context import load_context
    from ops.eval.plan import model_spec, open_sampler

    context = load_context(params, layout)
    student = workspace.student
    tuned = ModelSpec(f"{NAME}_{student}", "consistency", f"finetuned/{NAME}")
    frames = []
    for label, spec in (("before", model_spec(student)), ("after", tuned)):
        sampler = open_sampler(spec, layout, context.cfg)
        rows, _, _ = measure_cell(context, sampler, spec.name, FORGETTING_STEPS)
        frame = pd.DataFrame(rows)
        frame.insert(0, "when", label)
        frames.append(frame)
    keep = ["when", "model", "steps", "class_name", "fid", "fid_lo", "fid_hi", "kid",
            "class_fidelity", "finding_agreement", "n", "n_ref"]  # fmt: skip
    out = pd.concat(frames, ignore_index=True)
    return out[[c for c in keep if c in out]]


def _fmt(row: pd.Series, col: str) -> str:
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    value = row.get(col)
    if value is None or pd.isna(value):
        return "-"
    if lo is not None and not pd.isna(lo):
        return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"
    return f"{value:.2f}"


def report_text(
    table: pd.DataFrame, ratios: pd.DataFrame, forgetting: pd.DataFrame, figure: str
) -> str:
    """The experiment's reading: the benchmark (mean over the two dog classes), the ratios,
    forgetting."""
    lines = ["# The unseen dog cardiac X-ray experiment", "",
             "Mean over the dog classes, against the dog test split (95% bootstrap intervals).",
             "", "| model | steps | FID | KID | finding agreement | ms / image |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    mean = table[(table["class_name"] == "mean") & (table["status"] == "ok")]
    for _, row in mean.iterrows():
        kid = row.get("kid")
        kid_text = f"{kid:.3g}" if kid is not None and not pd.isna(kid) else "-"
        lines.append(
            f"| {row['model']} | {int(row['steps'])} | {_fmt(row, 'fid')} | {kid_text} | "
            f"{row.get('finding_agreement', float('nan')):.2f} | "
            f"{1e3 * row['seconds_per_image']:.1f} |"
        )
    lines += ["", "## Heart-to-thorax ratio (read from the pixels)", "",
              "| model | steps | class | n | readable | ratio mean | sd | read enlarged | W1 to real |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for _, r in ratios.iterrows():
        lines.append(
            f"| {r['model']} | {r['steps']} | {r['class_name']} | {r['n']} | {r['readable']:.2f} | "
            f"{r['ratio_mean']:.3f} | {r['ratio_sd']:.3f} | {r['read_enlarged']:.2f} | "
            f"{r['w1_to_real']:.3f} |"
        )
    lines += ["", "## Forgetting: the base classes before and after the fine-tune", "",
              "| | model | steps | FID (mean over base classes) | class fidelity |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    for _, r in forgetting[forgetting["class_name"] == "mean"].iterrows():
        lines.append(
            f"| {r['when']} | {r['model']} | {int(r['steps'])} | {_fmt(r, 'fid')} | "
            f"{_fmt(r, 'class_fidelity')} |"
        )
    lines += [
        "",
        f"Fig. 4: `{figure}` (rows: real, then each model; normal left, cardiomegaly right).",
    ]
    return "\n".join(lines) + "\n"
