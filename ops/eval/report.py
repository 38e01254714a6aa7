"""The benchmark's reports, built from the cell files: tables, DVC metrics, plots, grids, MLflow.

Files under ``reports/`` (the data directory's):

- ``benchmark.parquet``   every row of every cell: per (model, steps, class_name), class_name
                          also ``all`` (pooled, equal class weights) and ``mean``; model
                          ``real`` is the floor; intervals ``*_lo``/``*_hi`` and differences
                          against ``benchmark.baseline`` (``*_diff*``, ``ops.eval.differences``)
- ``benchmark.json``      DVC metrics, nested numbers only: ``{"fid": {model: {steps: x}}}``
                          (pooled), likewise ``kid``, ``class_fidelity``, ``seconds_per_image``,
                          and ``fid_per_class`` ``{class: {model: {steps: x}}}``
- ``benchmark.md``        Table 3 (pooled FID, the paper's number), per-class FID, timing,
                          skipped cells with their reasons
- ``fid_vs_steps.csv``    DVC plots data, one row per measured (model, steps), pooled
- ``fid_vs_steps.png``    the same as a picture with 95% intervals and the real floor
- ``fid_vs_ms.png``       FID against measured milliseconds per image: the quality-per-compute
                          front
- ``step_grids/<class>.png``  one sample per model x steps (the paper's Fig. 1), per class
- ``k_ablation.png``      students distilled with skip k (rows) x steps, when they exist (Fig. 3)
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ops.distill.ablation import BASE_MODEL, ablation_rows
from ops.eval.cells import cell_samples
from ops.eval.context import (
    MEAN,
    POOLED,
    REAL,
    SUMMARY,
    benchmark_config,
    evaluated_classes,
    image_seed,
)
from ops.eval.fidelity_table import write_fidelity_table
from ops.eval.plan import (
    ConsistencySampler,
    SkipCell,
    model_spec,
    model_steps,
    unavailable_reason,
)
from ops.eval.plots import (
    fid_vs_ms_plot,
    fid_vs_steps_plot,
    k_ablation_grid,
    step_comparison_grid,
)
from ops.eval.report_tables import markdown_report
from ops.eval.usability import add_usability, usability_markdown
from ops.layout import DataLayout

#: The report files under ``reports/`` by role (the k-ablation picture is written separately).
REPORT_FILES = {
    "parquet": "benchmark.parquet",
    "json": "benchmark.json",
    "markdown": "benchmark.md",
    "csv": "fid_vs_steps.csv",
    "plot": "fid_vs_steps.png",
    "front": "fid_vs_ms.png",
}
ABLATION_FILE = "k_ablation.png"
POOLED_COLUMNS = [
    "model", "steps", "fid", "fid_lo", "fid_hi", "kid", "kid_lo", "kid_hi", "n", "n_ref",
    "class_fidelity", "seconds_per_image", "nfe", "seeds",
]  # fmt: skip


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "class"


def _num(value: Any) -> float | None:
    """A finite float rounded for stable diffs, or None (DVC metrics hold numbers only)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, 6) if math.isfinite(value) else None


def _nested(df: pd.DataFrame, column: str, keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if column not in df:
        return out
    for row in df.itertuples(index=False):
        value = _num(getattr(row, column))
        if value is None:
            continue
        node = out
        for key in keys[:-1]:
            node = node.setdefault(str(getattr(row, key)), {})
        node[str(getattr(row, keys[-1]))] = value
    return out


def dvc_metrics(pooled: pd.DataFrame, per_class: pd.DataFrame) -> dict[str, Any]:
    """``{"fid": {"llcm": {"1": 12.3, ...}}, ...}``: what ``dvc metrics diff`` compares."""
    pooled_metrics = (
        "fid", "fid_lo", "fid_hi", "kid", "kid_lo", "kid_hi", "class_fidelity",
        "seconds_per_image", "fid_diff", "fid_diff_lo", "fid_diff_hi",
    )  # fmt: skip
    metrics = {c: _nested(pooled, c, ["model", "steps"]) for c in pooled_metrics}
    metrics["fid_per_class"] = _nested(per_class, "fid", ["class_name", "model", "steps"])
    return metrics


def _fid_mean(df: pd.DataFrame) -> dict[str, Any]:
    return _nested(df, "fid", ["model", "steps"])


def placeholder_picture(path: Path, text: str) -> Path:
    """A picture that says why the real one is missing (DVC outputs must exist)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def step_grids(layout: DataLayout, ok: pd.DataFrame) -> dict[str, Path]:
    """One picture per class: a sample of every model (rows) at every step count (columns).

    The folder is rewritten (and exists even when empty: it is a DVC output)."""
    folder = layout.reports / "step_grids"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    by_class: dict[str, dict[str, dict[int, Any]]] = {}
    for (model, steps), cell in ok.groupby(["model", "steps"], sort=False):
        for class_name, images in cell_samples(layout, cell, count=1).items():
            rows = by_class.setdefault(class_name, {}).setdefault(str(model), {})
            rows[int(steps)] = images[0]
    return {
        name: step_comparison_grid(rows, folder / f"{_slug(name)}.png", title=name)
        for name, rows in by_class.items()
    }


def write_reports(
    layout: DataLayout,
    df: pd.DataFrame,
    ablation: dict[int, str] | None = None,
    table3_models: list[str] | None = None,
    baseline: str | None = None,
    variants: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write every report file from the cell rows; returns a summary (paths, counts, table).

    ``ablation`` (k -> model, ``ops.distill.ablation.ablation_rows``) gets its own table; the models
    that are only in the ablation (not in ``table3_models``, i.e. ``benchmark.models``) stay out
    of Table 3, the plot and the step grids (they are in the parquet and the DVC metrics)."""
    reports = layout.reports
    reports.mkdir(parents=True, exist_ok=True)
    ablation, variants = ablation or {}, variants or {}
    ablation_only = (set(ablation.values()) | set(variants.values())) - set(table3_models or [])
    if not df.empty:
        from ops.eval.cells import replicates_path
        from ops.eval.differences import add_differences

        df = add_differences(df, baseline or "", lambda m, s: replicates_path(layout, m, s))
        df = add_usability(df, layout)
    all_ok = df[df["status"] == "ok"] if not df.empty else df
    all_pooled = all_ok[all_ok["class_name"] == POOLED]
    table3 = df[~df["model"].isin(ablation_only)] if not df.empty else df
    ok = all_ok[~all_ok["model"].isin(ablation_only)] if not all_ok.empty else all_ok
    pooled = ok[ok["class_name"] == POOLED]
    files = {key: reports / name for key, name in REPORT_FILES.items()}
    df.to_parquet(files["parquet"], index=False)
    metrics = dvc_metrics(all_pooled, all_ok[~all_ok["class_name"].isin(SUMMARY)])
    metrics["fid_mean_over_classes"] = _fid_mean(all_ok[all_ok["class_name"] == MEAN])
    files["json"].write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    table = markdown_report(table3) + "\n".join(usability_markdown(table3)) + "\n"
    if ablation:
        table += "\n" + ablation_markdown(all_pooled, ablation)
    if variants:
        table += "\n" + variants_markdown(all_ok[all_ok["class_name"] == MEAN], variants)
    files["markdown"].write_text(table)
    csv = pooled[[c for c in POOLED_COLUMNS if c in pooled]].copy()
    csv.to_csv(files["csv"], index=False)
    models = pooled[pooled["model"] != REAL]
    floor = pooled[pooled["model"] == REAL]
    if models.empty:
        placeholder_picture(files["plot"], "no benchmark cell measured yet")
        placeholder_picture(files["front"], "no benchmark cell measured yet")
    else:
        fid_vs_steps_plot(models, files["plot"], title="FID (all classes) vs steps, 95% CI",
                          floor=floor)  # fmt: skip
        fid_vs_ms_plot(models, files["front"], floor=floor)
    grids = step_grids(layout, ok[ok["model"] != REAL])
    files["class_fidelity"] = write_fidelity_table(layout)
    skipped = df[df["status"] == "skipped"] if not df.empty else df
    return {
        "cells": int(df[["model", "steps"]].drop_duplicates().shape[0]) if not df.empty else 0,
        "measured_cells": len(models),
        "skipped_cells": {
            f"{r.model}__{r.steps}": str(r.reason) for r in skipped.itertuples(index=False)
        },
        "best_fid": _best(models),
        "files": {k: str(v) for k, v in files.items()},
        "step_grids": {k: str(v) for k, v in grids.items()},
        "table": table,
    }


def ablation_markdown(pooled: pd.DataFrame, ablation: dict[int, str]) -> str:
    """The skip-k ablation as a table: pooled FID of each k's student (rows) by steps."""
    from ops.eval.report_tables import fid_with_interval, table

    rows_of_students = pooled[pooled["model"].isin(list(ablation.values()))]
    steps = sorted(int(s) for s in rows_of_students["steps"].unique())
    lookup = {(str(r.model), int(r.steps)): r for r in pooled.itertuples(index=False)}
    rows = [
        [f"k = {k} (`{model}`)"] + [fid_with_interval(lookup.get((model, s))) for s in steps]
        for k, model in sorted(ablation.items())
    ]
    out = [
        "## Skip k ablation (the paper's Fig. 3)",
        "",
        "Pooled FID of LLCM students distilled with skip k, otherwise identical (same solver, "
        "seed, steps and data); `k_ablation.png` shows their samples. A step count above "
        "1000/k cannot be sampled (–).",
        "",
    ]
    return "\n".join(out + table(["Skip k", *[str(s) for s in steps]], rows)) + "\n"


def variants_markdown(mean: pd.DataFrame, variants: dict[str, str]) -> str:
    """The recipe variants (``distill.variants``): each student's mean-over-classes FID by
    steps, under ``llcm``'s own row (the recipe they each change one thing of)."""
    from ops.eval.report_tables import fid_with_interval, table

    models = {"(none)": BASE_MODEL, **variants}
    mine = mean[mean["model"].isin(list(models.values()))]
    steps = sorted(int(s) for s in mine["steps"].unique())
    lookup = {(str(r.model), int(r.steps)): r for r in mine.itertuples(index=False)}
    rows = [
        [f"{name} (`{model}`)"] + [fid_with_interval(lookup.get((model, s))) for s in steps]
        for name, model in models.items()
    ]
    out = [
        "## Recipe variants (`distill.variants`)",
        "",
        "Mean-over-classes FID [95% CI] of LLCM students each distilled with one change to the "
        "recipe (same solver, seed, steps, data and k); the first row is `llcm` itself.",
        "",
    ]
    return "\n".join(out + table(["Variant", *[str(s) for s in steps]], rows)) + "\n"


def _best(pooled: pd.DataFrame) -> dict[str, Any] | None:
    finite = pooled[np.isfinite(pooled["fid"].astype(float))] if not pooled.empty else pooled
    if finite.empty:
        return None
    row = finite.loc[finite["fid"].astype(float).idxmin()]
    return {"model": str(row["model"]), "steps": int(row["steps"]), "fid": float(row["fid"])}


def k_ablation(params: dict[str, Any], layout: DataLayout) -> Path | None:
    """Fig. 3: samples of the skip-k students (``ops.distill.ablation.ablation_rows``: ``llcm`` at
    ``distill.k``, ``llcm_k<k>`` at the others) at every step count for the first evaluated
    class, same seed everywhere. None when no ablation student exists yet."""
    cfg = benchmark_config(params)
    rows_by_k = {
        k: model
        for k, model in ablation_rows(params).items()
        if unavailable_reason(model_spec(model), layout, 1) is None
    }
    if set(rows_by_k.values()) <= {BASE_MODEL} or not layout.manifest.is_file():
        return None
    classes = evaluated_classes(params, pd.read_parquet(layout.manifest))
    class_name, prompt = next(iter(classes.items()))
    seed = image_seed(cfg["seed"], class_name, 0)
    rows: dict[int, dict[int, Any]] = {}
    for k, model in rows_by_k.items():
        sampler = ConsistencySampler(layout.model(model), float(cfg["guidance_scale"]))
        for steps in model_steps(cfg, model, list(rows_by_k.values())):
            try:
                rows.setdefault(k, {})[steps] = sampler.images(prompt, 1, steps, seed)[0]
            except SkipCell:
                continue
    return k_ablation_grid(rows, layout.reports / ABLATION_FILE, title=f"skip k: {class_name}")


def log_to_mlflow(params: dict[str, Any], layout: DataLayout, summary: dict[str, Any]) -> str:
    """One MLflow run ``benchmark``: config, pooled metrics per model with step = inference
    steps (so MLflow draws FID vs steps), the pooled table and every report file."""
    import mlflow

    from ops.tracking.mlflow_setup import flatten, setup_mlflow

    experiment = setup_mlflow(layout, params)
    df = pd.read_parquet(summary["files"]["parquet"])
    ok = df[df["status"] == "ok"] if not df.empty else df
    pooled = ok[ok["class_name"] == POOLED]
    with mlflow.start_run(experiment_id=experiment, run_name="benchmark") as run:
        mlflow.set_tag("stage", "benchmark")
        mlflow.log_params(
            {k: str(v)[:500] for k, v in flatten(benchmark_config(params), "benchmark.").items()}
            | {"preset": params["preset"]}
        )
        for row in pooled.itertuples(index=False):
            for column in ("fid", "kid", "class_fidelity", "seconds_per_image"):
                value = _num(getattr(row, column, None))
                if value is not None:
                    mlflow.log_metric(f"{column}/{row.model}", value, step=int(row.steps))
        if not pooled.empty:
            mlflow.log_table(
                pooled[[c for c in POOLED_COLUMNS if c in pooled]], "benchmark_pooled.json"
            )
        for path in summary["files"].values():
            if Path(path).is_file():
                mlflow.log_artifact(path, "reports")
        for path in summary.get("step_grids", {}).values():
            mlflow.log_artifact(path, "step_grids")
        for path in sorted((layout.reports / "cells").glob("*.png")):
            mlflow.log_artifact(str(path), "cells")
        return run.info.run_id
