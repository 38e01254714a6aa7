"""The benchmark grid run end to end: every cell of the plan that is missing, stale or was
skipped (``ops.eval.cells``, one (model, steps) pair over every evaluated class), then the
reports (``ops.eval.report``), on one process or on every rank of a launch.

Each cell is written to ``reports/cells/<model>__<steps>.parquet`` with a fingerprint of
everything it was computed from (model files, reference images, extractor, config, and the
metric and sampler code, ``ops.eval.versions``), so cells re-run independently (a Dagster
partition each) and :func:`run_benchmark` reruns only what changed. Generation can be sharded
over the processes of a launch (``benchmark.num_processes``, or Dagster's launcher): each
process generates its own (class, batch) units, whose seeds do not depend on the process, and
rank 0 reassembles them in order (``ops.eval.shards``), so the numbers equal a single-process
run's. Models missing on disk give a ``skipped`` row with the reason instead of failing, so a
partial pipeline still benchmarks what exists. What each row holds: docs/evaluation.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from ops.distill.ablation import ablation_rows, variant_models
from ops.eval.cells import run_cell, write_skipped
from ops.eval.context import (
    BenchContext,
    benchmark_config,
    cell_fingerprint,
    cell_is_fresh,
    collect_cells,
    load_context,
    measurement_key,
)
from ops.eval.plan import (
    model_spec,
    open_sampler,
    plan,
    unavailable_reason,
)
from ops.eval.reuse import copy_cell
from ops.eval.shards import (
    ProcessGroup,
)
from ops.layout import DataLayout

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# the whole grid
# --------------------------------------------------------------------------------------------
def run_cells(
    params: dict[str, Any],
    layout: DataLayout,
    cells: Sequence[tuple[str, int]],
    force: bool = False,
    progress: Any = None,
    group: ProcessGroup | None = None,
) -> dict[str, list[str]]:
    """Run the cells that are missing, stale or skipped (all of them with ``force``),
    loading each model once. Returns the cell names by outcome (on rank 0; the other ranks of
    a launch get empty lists, they only generate their shards).

    Rank 0 decides which cells to measure (it alone reads the cell files and the reference
    fingerprint) and broadcasts the list, so every rank walks the same cells in step."""
    group = group or ProcessGroup.current()
    context: BenchContext | None = None
    outcome: dict[str, list[str]] = {
        "measured": [], "reused": [], "skipped": [], "copied": [], "floor": []
    }  # fmt: skip
    todo: list[tuple[str, int]] = []

    def record(name: str, rows: list[dict[str, Any]]) -> None:
        outcome["skipped" if rows[0]["status"] == "skipped" else "measured"].append(name)
        if progress is not None:
            progress(name, rows)

    copies: list[tuple[tuple[str, int], tuple[str, int]]] = []  # (copy, of the measured cell)
    if group.is_main:
        seen: dict[str, tuple[str, int]] = {}
        for model, steps in cells:
            name, spec = f"{model}__{steps}", model_spec(model)
            reason = unavailable_reason(spec, layout, steps)
            if reason is not None:
                record(name, write_skipped(layout, model, steps, reason, group))
                continue
            context = context or load_context(params, layout, group)
            key = measurement_key(context, spec, layout, steps)
            if not force and cell_is_fresh(context, layout, model, steps):
                outcome["reused"].append(name)
            elif key in seen:
                copies.append(((model, steps), seen[key]))
            else:
                todo.append((model, steps))
            seen.setdefault(key, (model, steps))
        if context is not None:
            _floor(context, layout, force, outcome)
    todo = group.broadcast(todo)
    for model, model_cells in groupby(todo, key=lambda c: c[0]):
        context = context or load_context(params, layout, group)
        sampler = open_sampler(model_spec(model), layout, context.cfg, device=group.device)
        for _, steps in model_cells:
            rows = run_cell(
                model, steps, params, layout, context=context, sampler=sampler, group=group
            )
            if rows is not None:
                record(f"{model}__{steps}", rows)
        del sampler
    for (model, steps), source in copies:  # after the grid: the source cell is on disk now
        fingerprint = cell_fingerprint(context, model_spec(model), layout, steps)
        rows = copy_cell(layout, source, (model, steps), fingerprint)
        outcome["copied"].append(f"{model}__{steps}")
        if progress is not None:
            progress(f"{model}__{steps}", rows)
    return outcome


def _floor(context: BenchContext, layout: DataLayout, force: bool, outcome: dict) -> None:
    """The ``real`` row (``ops.eval.floor``): measured again only when its inputs changed."""
    from ops.eval.floor import floor_is_fresh, measure_floor

    if force or not floor_is_fresh(context, layout):
        measure_floor(context, layout)
        outcome["floor"] = ["measured"]
    else:
        outcome["floor"] = ["reused"]


def run_benchmark(
    params: dict[str, Any],
    layout: DataLayout,
    models: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    *,
    force: bool = False,
    log_mlflow: bool = True,
    progress: Any = None,
) -> dict[str, Any]:
    """Run the missing cells of the grid (or of ``models`` x ``steps``), render the k-ablation
    grid when its models exist, summarise every cell of the configured grid into the reports
    and log them to MLflow (one run named ``benchmark``).

    Launched in several processes (``benchmark.num_processes``, or a launcher), every rank
    runs this; generation is sharded and rank 0 alone writes. The other ranks return a
    summary of what they did."""
    group = ProcessGroup.current()
    t0 = time.perf_counter()
    outcome = run_cells(params, layout, plan(params, models, steps), force, progress, group)
    summary: dict[str, Any] = {"rank": group.rank, "world_size": group.world_size}
    if group.is_main:
        from ops.eval.report import log_to_mlflow

        summary = {**_report(params, layout), **outcome, "world_size": group.world_size}
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        if log_mlflow:
            summary["mlflow_run_id"] = log_to_mlflow(params, layout, summary)
    group.barrier()
    return summary


def _report(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Rank 0's part after the cells: the reports and the Fig. 3 picture."""
    from ops.eval.report import ABLATION_FILE, k_ablation, placeholder_picture

    summary = summarize(layout, params)
    ablation = k_ablation(params, layout) or placeholder_picture(
        layout.reports / ABLATION_FILE, "no skip-k ablation student (distill.k_ablation) yet"
    )
    summary["files"]["k_ablation"] = str(ablation)
    return summary


def build_benchmark(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Stage ``benchmark`` (``llcm stage benchmark``, ``llcm benchmark``, dvc.yaml, the Dagster
    asset): the grid and the reports, in ``benchmark.num_processes`` processes under
    ``accelerate launch`` when that is > 1 (sharded generation), else here. Inside a launch
    (Dagster's launcher starts one per rank) every rank joins it. The summary leaves out the
    markdown table (it is in ``reports/benchmark.md``)."""
    from ops.training.launch import run_trainer

    return run_trainer("benchmark", benchmark_ranks, params, layout, benchmark_config(params))


def benchmark_ranks(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """What every rank of the benchmark runs (trainer ``benchmark`` of ``ops.entry``).

    ``benchmark.selection`` (set by ``llcm benchmark --models/--steps/--force``, not kept in
    params.yaml) narrows which cells are run; the reports always cover the configured grid."""
    selection = benchmark_config(params).get("selection") or {}
    summary = run_benchmark(
        params,
        layout,
        models=selection.get("models") or None,
        steps=selection.get("steps") or None,
        force=bool(selection.get("force", False)),
        log_mlflow=bool(selection.get("log_mlflow", True)),
        progress=log_progress,
    )
    summary.pop("table", None)
    return summary


def log_progress(name: str, rows: list[dict[str, Any]]) -> None:
    """One log line per finished cell (forwarded to Dagster by the Pipes entrypoint)."""
    reason = rows[0].get("reason") or ""
    _log.info(f"cell {name}: {rows[0]['status']} {reason}".rstrip())


def summarize(layout: DataLayout, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the cell files into ``reports/benchmark.{parquet,json,md}``,
    ``reports/fid_vs_steps.{csv,png}`` and a step-comparison grid per class."""
    from ops.eval.report import write_reports

    if params is None:
        return write_reports(layout, collect_cells(layout))
    return write_reports(
        layout,
        collect_cells(layout, params),
        ablation=ablation_rows(params),
        table3_models=list(benchmark_config(params)["models"]),
        baseline=str(benchmark_config(params).get("baseline") or ""),
        variants=variant_models(params),
    )
