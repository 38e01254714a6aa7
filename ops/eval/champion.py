"""The weekly re-benchmark of the registry's champion, and its FID regression rule.

Why: the model served as ``models:/<name>@champion`` can change (a new version promoted) and
the surroundings can drift (reference data, extractor, library versions). Re-measuring it on a
schedule with the benchmark's own cell code, and keeping every result, makes a regression
visible as a failed check rather than a surprise.

Each run measures each name of ``benchmark.champion_models`` at ``benchmark.champion_steps``
on the evaluated classes (pooled FID/KID/class fidelity, as Table 3) and appends its rows to
``reports/champion_history.parquet`` (one row per name x steps; ``run_id`` groups a run).
A name without a registered champion gives a ``skipped`` row, not a failure.

Regression rule (:func:`regressions`): for every (name, steps) of the latest run, compare the
pooled FID with that of the most recent earlier run that measured the same (name, steps); it
regresses when ``fid_new > fid_old * (1 + benchmark.fid_regression_tolerance)`` (relative, so
the same tolerance works at any FID scale).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pandas as pd

from ops.eval.cells import measure_cell
from ops.eval.context import POOLED, benchmark_config, load_context
from ops.eval.plan import ConsistencySampler, SkipCell
from ops.layout import DataLayout

HISTORY_FILE = "champion_history.parquet"
COLUMNS = [
    "run_id",
    "measured_at",
    "name",
    "uri",
    "version",
    "steps",
    "status",
    "reason",
    "fid",
    "kid",
    "class_fidelity",
    "seconds_per_image",
    "n",
]


def history_path(layout: DataLayout):
    return layout.reports / HISTORY_FILE


def read_history(layout: DataLayout) -> pd.DataFrame:
    path = history_path(layout)
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)


def append_history(layout: DataLayout, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Append rows atomically (write aside, then rename); returns the whole history."""
    history = read_history(layout)
    new = pd.DataFrame(rows, columns=COLUMNS)
    combined = new if history.empty else pd.concat([history, new], ignore_index=True)
    path = history_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    combined.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return combined


def champion_uri(name: str, params: dict[str, Any]) -> str:
    from ops.distill.registry import champion_alias

    return f"models:/{name}@{champion_alias(params)}"


def _champion_version(name: str, params: dict[str, Any]) -> str:
    import mlflow

    from ops.distill.registry import champion_alias

    client = mlflow.MlflowClient()
    return str(client.get_model_version_by_alias(name, champion_alias(params)).version)


def run_champion_benchmark(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Measure every configured champion at the champion steps; append to the history."""
    from ops.distill.registry import ModelNotFoundError, resolve_model_uri

    cfg = benchmark_config(params)
    run_id = uuid.uuid4().hex[:12]
    now = pd.Timestamp.now(tz="UTC").isoformat()
    rows: list[dict[str, Any]] = []
    context = None
    for name in cfg.get("champion_models") or []:
        uri = champion_uri(name, params)
        base = {"run_id": run_id, "measured_at": now, "name": name, "uri": uri}
        try:
            directory = resolve_model_uri(uri, layout, params)
            version = _champion_version(name, params)
        except (ModelNotFoundError, ValueError) as exc:
            rows.append(
                {**base, "version": None, "steps": -1, "status": "skipped", "reason": str(exc)}
            )
            continue
        context = context or load_context(params, layout)
        sampler = ConsistencySampler(directory, float(cfg["guidance_scale"]))
        for steps in sorted(int(s) for s in cfg.get("champion_steps") or cfg["steps"]):
            row = {**base, "version": version, "steps": steps}
            try:
                cell, _ = measure_cell(context, sampler, name, steps)
            except SkipCell as exc:
                rows.append({**row, "status": "skipped", "reason": str(exc)})
                continue
            pooled = next(r for r in cell if r["class_name"] == POOLED)
            rows.append(
                {
                    **row,
                    "status": "ok",
                    "reason": "",
                    **{
                        k: pooled[k]
                        for k in ("fid", "kid", "class_fidelity", "seconds_per_image", "n")
                    },
                }
            )
    history = append_history(layout, rows) if rows else read_history(layout)
    return {
        "run_id": run_id,
        "rows": rows,
        "history_runs": int(history["run_id"].nunique()) if not history.empty else 0,
        "history": str(history_path(layout)),
    }


def regressions(history: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """The latest run's measured (name, steps) against the previous measurement of each.

    Columns: name, steps, version, previous_version, fid, previous_fid, ratio, regressed.
    ``previous_fid`` is NaN (and ``regressed`` False) for a first measurement.
    """
    cols = [
        "name",
        "steps",
        "version",
        "previous_version",
        "fid",
        "previous_fid",
        "ratio",
        "regressed",
    ]
    ok = history[history["status"] == "ok"] if not history.empty else history
    if ok.empty:
        return pd.DataFrame(columns=cols)
    order = ok.sort_values(["measured_at", "run_id"], kind="stable")
    latest_run = order["run_id"].iloc[-1]
    latest = order[order["run_id"] == latest_run]
    earlier = order[order["run_id"] != latest_run]
    out = []
    for row in latest.itertuples(index=False):
        prev = earlier[(earlier["name"] == row.name) & (earlier["steps"] == row.steps)]
        if prev.empty:
            out.append(
                [row.name, row.steps, row.version, None, row.fid, float("nan"), float("nan"), False]
            )
            continue
        p = prev.iloc[-1]
        ratio = float(row.fid) / float(p["fid"]) if float(p["fid"]) > 0 else float("inf")
        regressed = float(row.fid) > float(p["fid"]) * (1.0 + float(tolerance))
        out.append(
            [row.name, row.steps, row.version, p["version"], row.fid, p["fid"], ratio, regressed]
        )
    return pd.DataFrame(out, columns=cols)
