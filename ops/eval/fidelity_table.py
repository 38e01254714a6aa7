"""Does each stage keep the disease? One table per class: the domain classifier's accuracy on
real test images (the ceiling), on the VAE's reconstructions of them, and its class fidelity on
the teacher's and each student's samples; beside it the finding read from the pixels
(``ops.eval.findings``), which no network learned.

It gathers what the stages already wrote (``models/domain_classifier/config.json``,
``reports/vae_fidelity.json``, ``reports/benchmark.parquet``) and measures nothing itself, so
``llcm report`` can print it at any time; a missing source is a missing column, never an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ops.distill.ablation import MAIN_STUDENTS
from ops.eval.classifier import CONFIG_FILE, MODEL_NAME
from ops.eval.context import POOLED
from ops.eval.report_tables import fmt, table
from ops.eval.vae_fidelity import FIDELITY_FILE
from ops.layout import DataLayout

FILE = "class_fidelity.md"
TEACHER = "teacher_dpmpp"
STUDENTS = MAIN_STUDENTS
STUDENT_STEPS = (1, 2, 4)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _cells(layout: DataLayout) -> pd.DataFrame:
    path = layout.reports / "benchmark.parquet"
    if not path.is_file():
        return pd.DataFrame(columns=["model", "steps", "class_name", "status"])
    df = pd.read_parquet(path)
    return df[df["status"] == "ok"]


def fidelity_columns(layout: DataLayout) -> dict[str, dict[str, float]]:
    """Column name -> {class -> share}: ceiling, VAE, teacher at its most steps, students."""
    summary = _json(layout.model(MODEL_NAME) / CONFIG_FILE).get("summary", {})
    vae = _json(layout.reports / FIDELITY_FILE).get("per_class_accuracy", {})
    untrained = set(summary.get("classes_without_training_rows") or [])  # held-out families
    ceiling = {
        c: a for c, a in (summary.get("per_class_accuracy") or {}).items() if c not in untrained
    }
    columns: dict[str, dict[str, float]] = {
        "ceiling (real test images)": ceiling,
        "VAE reconstructions": {c: pair[1] for c, pair in vae.items()},
    }
    cells = _cells(layout)
    teacher = cells[cells["model"] == TEACHER]
    if not teacher.empty:
        steps = int(teacher["steps"].max())
        columns[f"teacher DPM-Solver++ {steps}"] = _by_class(teacher, steps, "class_fidelity")
    for model in STUDENTS:
        for steps in STUDENT_STEPS:
            values = _by_class(cells[cells["model"] == model], steps, "class_fidelity")
            if values:
                columns[f"{model} {steps}"] = values
    return columns


def _by_class(cells: pd.DataFrame, steps: int, column: str) -> dict[str, float]:
    rows = cells[(cells["steps"] == steps) & ~cells["class_name"].isin([POOLED, "mean"])]
    if column not in rows:
        return {}
    return dict(zip(rows["class_name"], rows[column], strict=True))


def finding_columns(layout: DataLayout) -> dict[str, dict[str, float]]:
    """Column name -> {class -> finding agreement} for the real floor, teacher and students."""
    cells = _cells(layout)
    if "finding_agreement" not in cells:
        return {}
    out = {}
    for model, steps in [("real", 0), (TEACHER, None)] + [
        (m, s) for m in STUDENTS for s in STUDENT_STEPS
    ]:
        rows = cells[cells["model"] == model]
        if rows.empty:
            continue
        steps = int(rows["steps"].max()) if steps is None else steps
        values = _by_class(rows, steps, "finding_agreement")
        if any(pd.notna(v) for v in values.values()):
            out[f"{model} {steps}"] = values
    return out


def _markdown(columns: dict[str, dict[str, float]]) -> list[str]:
    classes = sorted({c for values in columns.values() for c in values})
    body = [[c] + [fmt(values.get(c)) for values in columns.values()] for c in classes]
    means = []
    for values in columns.values():
        known = [v for c in classes if pd.notna(v := values.get(c, float("nan")))]
        means.append(fmt(sum(known) / len(known)) if known else "–")
    return table(["class", *columns], body + [["**mean**", *means]])


def fidelity_markdown(layout: DataLayout) -> str:
    """The two per-class tables as markdown (written to ``reports/class_fidelity.md``)."""
    out = [
        "# Does each stage keep the disease?",
        "",
        "Domain classifier accuracy (ceiling: real test images; VAE: its reconstructions of "
        "them) and class fidelity (share of generated images classified as the prompted class), "
        "per class, model and steps:",
        "",
        *_markdown(fidelity_columns(layout)),
    ]
    findings = finding_columns(layout)
    if findings:
        out += [
            "",
            "Finding agreement: share of images whose finding, read from the pixels by a fixed "
            "rule per phantom family (no learned weights), matches the prompted class:",
            "",
            *_markdown(findings),
        ]
    return "\n".join(out) + "\n"


def write_fidelity_table(layout: DataLayout) -> Path:
    path = layout.reports / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(fidelity_markdown(layout))
    return path
