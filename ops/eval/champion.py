"""The weekly re-benchmark of the registry's champion, and its regression rule.

Why: the model served as ``models:/<name>@champion`` can change (a new version promoted) and
the surroundings can drift (reference data, extractor, library versions). Re-measuring it on a
schedule with the benchmark's own cell code, and keeping every result, makes a regression
visible as a failed check rather than a surprise.

Each run measures each name of ``benchmark.champion_models`` at ``benchmark.champion_steps``
with ``benchmark.champion_seeds`` generation seeds (FID of all classes with its interval and
its seed-to-seed spread) and appends the rows to ``reports/champion_history.parquet``.

Regression rule (:func:`regressions`): each (name, steps) is compared with a *pinned* baseline
measured under the same evaluation fingerprint (reference images, extractor, classifier,
config, metric and sampler code, library versions: ``eval_fingerprint``), so a changed
measuring stick is never read as a changed model. The first run under a new fingerprint pins
itself (``reports/champion_baseline.parquet``). It regresses when
``fid - pinned_fid > champion_tolerance_sd * sqrt(sd^2 + pinned_sd^2)``, sd being the measured
seed-to-seed standard deviation of the FID: a tolerance from the noise actually measured, not
a fixed percentage. The check fails when the latest run measured nothing.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np
import pandas as pd

from ops.eval.cells import measure_cell
from ops.eval.context import POOLED, benchmark_config, load_context
from ops.eval.plan import ConsistencySampler, SkipCell
from ops.eval.versions import code_versions
from ops.layout import DataLayout

HISTORY_FILE = "champion_history.parquet"
BASELINE_FILE = "champion_baseline.parquet"
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
    "fid_lo",
    "fid_hi",
    "fid_seed_sd",
    "seeds",
    "kid",
    "class_fidelity",
    "seconds_per_image",
    "n",
    "eval_fingerprint",
]
MEASURED = ("fid", "fid_lo", "fid_hi", "fid_seed_sd", "seeds", "kid", "class_fidelity",
            "seconds_per_image", "n")  # fmt: skip


def history_path(layout: DataLayout):
    return layout.reports / HISTORY_FILE


def read_history(layout: DataLayout) -> pd.DataFrame:
    path = history_path(layout)
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)


def baseline_path(layout: DataLayout):
    return layout.reports / BASELINE_FILE


def read_baseline(layout: DataLayout) -> pd.DataFrame:
    path = baseline_path(layout)
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)


def pin_missing(layout: DataLayout, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Pin every measured (name, steps, eval_fingerprint) that has no pinned baseline yet."""
    pinned = read_baseline(layout)
    have = set(zip(pinned["name"], pinned["steps"], pinned["eval_fingerprint"], strict=True))
    new = [r for r in rows if r["status"] == "ok"
           and (r["name"], r["steps"], r["eval_fingerprint"]) not in have]  # fmt: skip
    if not new:
        return pinned
    return _write(baseline_path(layout), pinned, new)


def append_history(layout: DataLayout, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Append rows atomically (write aside, then rename); returns the whole history."""
    return _write(history_path(layout), read_history(layout), rows)


def _write(path, history: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    new = pd.DataFrame(rows, columns=COLUMNS)
    combined = new if history.empty else pd.concat([history, new], ignore_index=True)
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
        seeds = int(cfg["champion_seeds"])
        for steps in sorted(int(s) for s in cfg.get("champion_steps") or cfg["steps"]):
            row = {**base, "version": version, "steps": steps,
                   "eval_fingerprint": eval_fingerprint(context.fingerprint, seeds)}  # fmt: skip
            try:
                cell, _, _ = measure_cell(context, sampler, name, steps, seeds=seeds)
            except SkipCell as exc:
                rows.append({**row, "status": "skipped", "reason": str(exc)})
                continue
            pooled = next(r for r in cell if r["class_name"] == POOLED)
            rows.append({**row, "status": "ok", "reason": "", **{k: pooled[k] for k in MEASURED}})
    history = append_history(layout, rows) if rows else read_history(layout)
    pin_missing(layout, rows)
    return {
        "run_id": run_id,
        "rows": rows,
        "history_runs": int(history["run_id"].nunique()) if not history.empty else 0,
        "history": str(history_path(layout)),
    }


def eval_fingerprint(context_fingerprint: str, seeds: int) -> str:
    """The measuring stick of a champion row: the benchmark context (inputs, metric code,
    libraries), the consistency sampler's code and the number of seeds, not the model."""
    import hashlib

    text = f"{context_fingerprint}:{code_versions()['consistency']}:{int(seeds)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


COMPARISON = ["name", "steps", "version", "pinned_version", "fid", "pinned_fid", "tolerance",
              "regressed", "status"]  # fmt: skip


def regressions(history: pd.DataFrame, pinned: pd.DataFrame, tolerance_sd: float) -> pd.DataFrame:
    """The latest run's rows against the pinned baseline of the same eval fingerprint.

    ``status``: ``compared`` | ``pinned by this run`` | ``no pinned baseline``. A latest run
    without any measured row gives an empty table (the check then fails)."""
    ok = history[history["status"] == "ok"] if not history.empty else history
    if history.empty:
        return pd.DataFrame(columns=COMPARISON)
    latest_run = history.sort_values(["measured_at", "run_id"], kind="stable")["run_id"].iloc[-1]
    latest = ok[ok["run_id"] == latest_run]
    out = []
    for row in latest.itertuples(index=False):
        pin = pinned[(pinned["name"] == row.name) & (pinned["steps"] == row.steps)
                     & (pinned["eval_fingerprint"] == row.eval_fingerprint)]  # fmt: skip
        if pin.empty:
            out.append([row.name, row.steps, row.version, None, row.fid, float("nan"),
                        float("nan"), False, "no pinned baseline"])  # fmt: skip
            continue
        p = pin.iloc[0]
        if p["run_id"] == row.run_id:
            out.append([row.name, row.steps, row.version, p["version"], row.fid, p["fid"],
                        float("nan"), False, "pinned by this run"])  # fmt: skip
            continue
        sd = float(np.hypot(_finite(row.fid_seed_sd), _finite(p["fid_seed_sd"])))
        tolerance = float(tolerance_sd) * sd
        regressed = bool(float(row.fid) - float(p["fid"]) > tolerance)
        out.append([row.name, row.steps, row.version, p["version"], row.fid, p["fid"],
                    tolerance, regressed, "compared"])  # fmt: skip
    return pd.DataFrame(out, columns=COMPARISON)


def _finite(value: Any) -> float:
    value = float(value) if value is not None else float("nan")
    return value if np.isfinite(value) else 0.0
