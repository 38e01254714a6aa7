"""The benchmark grid: models x inference steps x evaluated classes, measured side by side.

A *cell* is one (model, steps) pair over every evaluated class. :func:`run_cell` generates
``images_per_class`` images per class in batches and streams each batch straight into feature
extraction (no image files, except a few samples per class kept as the cell's grid picture),
then measures per class and pooled over the classes:

* FID against the real test split of the class (reference stats cached by ``ops.metrics``),
* KID (unbiased, so meaningful at the small n of the CPU presets),
* n (generated) and n_ref (real), with ``ops.metrics``' warnings when n <= feature dim,
* class fidelity: share of images the domain classifier assigns to the prompted class,
* wall-clock seconds per image of generation (model loading and feature extraction excluded;
  summed over the processes of a sharded run, so per process-image) and the UNet evaluations
  per image (``nfe``; classifier-free guidance doubles the teacher's).

Generation can be sharded over the processes of a launch (``benchmark.num_processes``, or
Dagster's launcher): each process generates its own (class, batch) units, whose seeds do not
depend on the process, and rank 0 reassembles them in order (``ops.benchmark_shards``), so the
numbers equal a single-process run's.

The *pooled* row (``class_name == "all"``) merges the per-class statistics exactly
(``FeatureStats.merge_all``) and is the number Table 3 reports; per-class rows are kept next to
it. Each cell is written to ``reports/cells/<model>__<steps>.parquet`` with a fingerprint of
everything it was computed from (model files, extractor, reference images, config), so cells
re-run independently (a Dagster partition each) and :func:`run_benchmark` reruns only cells
that are missing, stale or were skipped. Models missing on disk give a ``skipped`` row with
the reason instead of failing, so a partial pipeline still benchmarks what exists.

:func:`summarize` assembles the cell files into the reports (``ops.benchmark_report``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ops.ablation import ablation_rows
from ops.benchmark_models import (
    ModelSpec,
    Sampler,
    SkipCell,
    model_spec,
    open_sampler,
    plan,
    unavailable_reason,
)
from ops.benchmark_shards import (
    ProcessGroup,
    Unit,
    UnitResult,
    cell_units,
    in_canonical_order,
    shard,
)
from ops.config import stage_config
from ops.layout import DataLayout
from ops.metrics import (
    FeatureExtractor,
    FeatureStats,
    Reference,
    evaluate_cell,
    extract_features,
    load_extractor,
    reference_stats,
)

_log = logging.getLogger(__name__)

POOLED = "all"
CELLS_DIR = "cells"
# Config keys that change what a cell measures (the rest: which cells, how reports look).
MEASURE_KEYS = (
    "images_per_class",
    "generation_batch_size",
    "guidance_scale",
    "teacher_timestep_spacing",
    "kid_subsets",
    "kid_subset_size",
    "grid_samples",
    "seed",
)


# --------------------------------------------------------------------------------------------
# configuration and the plan
# --------------------------------------------------------------------------------------------
def benchmark_config(params: dict[str, Any]) -> dict[str, Any]:
    """``benchmark`` merged with its preset section; the guidance scale (diffusers' w + 1) is
    ``sampling.guidance_scale``, the same for every model, so rows are comparable."""
    cfg = stage_config(params, "benchmark")
    cfg.setdefault(
        "guidance_scale", float((params.get("sampling") or {}).get("guidance_scale", 4.0))
    )
    cfg.setdefault("generation_batch_size", 32)
    cfg.setdefault("grid_samples", 4)
    cfg.setdefault("teacher_timestep_spacing", "trailing")
    return cfg


def evaluated_classes(params: dict[str, Any], manifest: pd.DataFrame) -> dict[str, str]:
    """The ``presets.*.benchmark.classes`` evaluated classes and their prompts, by name.

    Deterministic: among classes with non-holdout training rows (the models know them) and at
    least two test images (FID/KID need a reference), the ones with the most test images win,
    ties broken by name. The prompt is the class's most frequent training prompt.
    """
    want = int(benchmark_config(params)["classes"])
    df = manifest
    holdout = (
        df["holdout"].fillna(False).astype(bool)
        if "holdout" in df
        else pd.Series(False, index=df.index)
    )
    train = df[(df["split"] == "train") & ~holdout]
    tests = df[df["split"] == "test"]["class_name"].value_counts()
    eligible = [c for c in sorted(train["class_name"].unique()) if tests.get(c, 0) >= 2]
    if not eligible:
        raise ValueError("no class has both non-holdout training rows and >= 2 test images")
    chosen = sorted(eligible, key=lambda c: (-int(tests[c]), c))[:want]
    out: dict[str, str] = {}
    for name in sorted(chosen):
        counts = train[train["class_name"] == name]["prompt"].value_counts()
        out[name] = sorted(counts[counts == counts.max()].index)[0]
    return out


def cell_path(layout: DataLayout, model: str, steps: int) -> Path:
    return layout.reports / CELLS_DIR / f"{model}__{int(steps)}.parquet"


def grid_path(layout: DataLayout, model: str, steps: int) -> Path:
    return layout.reports / CELLS_DIR / f"{model}__{int(steps)}.png"


# --------------------------------------------------------------------------------------------
# what every cell shares: classes, extractor, references, classifier
# --------------------------------------------------------------------------------------------
@dataclass
class BenchContext:
    """Everything the cells of one benchmark run share, loaded once."""

    cfg: dict[str, Any]
    classes: dict[str, str]
    extractor: FeatureExtractor
    references: dict[str, Reference]
    classifier: Any = None  # ops.classifier.DomainClassifier, for class fidelity
    classifier_names: list[str] = field(default_factory=list)
    device: str = "cpu"
    fingerprint: str = ""


def load_context(
    params: dict[str, Any], layout: DataLayout, group: ProcessGroup | None = None
) -> BenchContext:
    """Classes, feature extractor, cached reference stats and the domain classifier.

    Under a launch every rank loads the extractor and the classifier (it featurises its own
    shard) on its own device; only rank 0 computes the references, which it alone compares
    against (and caches: one writer per file), and the fingerprint it decides freshness by."""
    from ops.classifier import MODEL_NAME, load_domain_classifier
    from ops.training.runtime import torch_threads

    group = group or ProcessGroup.current()
    cfg = benchmark_config(params)
    device = group.device
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"{layout.manifest} does not exist: run medimgs_manifest first")
    manifest = pd.read_parquet(layout.manifest)
    classes = evaluated_classes(params, manifest)
    classifier, names = None, []
    if (layout.model(MODEL_NAME) / "config.json").is_file():
        classifier, names = load_domain_classifier(layout, device=device)
    elif cfg["feature_extractor"] == "domain":
        raise FileNotFoundError(
            f"no domain classifier at {layout.model(MODEL_NAME)}: run the domain_classifier "
            "stage first (benchmark.feature_extractor is 'domain')"
        )
    extractor = load_extractor(cfg["feature_extractor"], layout, params, device)
    context = BenchContext(
        cfg=cfg,
        classes=classes,
        extractor=extractor,
        references={},
        classifier=classifier,
        classifier_names=names,
        device=device,
    )
    if not group.is_main:
        return context
    with torch_threads(cfg.get("classifier_threads")):
        refs = reference_stats(layout, extractor, list(classes), manifest=manifest, device=device)
    payload = {
        "extractor": extractor.fingerprint,
        "references": {c: r.fingerprint for c, r in sorted(refs.items())},
        "classes": classes,
        "classifier": _weights(classifier) if classifier is not None else None,
        "config": {k: cfg.get(k) for k in MEASURE_KEYS},
    }
    context.references = refs
    context.fingerprint = _sha(payload)
    return context


def _weights(model: Any) -> str:
    from ops.classifier import weights_fingerprint

    return weights_fingerprint(model)


def _sha(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_MODEL_HASHES: dict[tuple, str] = {}


def model_fingerprint(directory: Path) -> str:
    """Content hash of a model directory, memoised on (path, sizes, mtimes) so a run hashes
    each model once however many cells it has."""
    from ops.training.fingerprint import directory_hash

    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    key = (str(directory), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _MODEL_HASHES:
        _MODEL_HASHES[key] = directory_hash(Path(directory))
    return _MODEL_HASHES[key]


def cell_fingerprint(context: BenchContext, spec: ModelSpec, layout: DataLayout, steps: int) -> str:
    model = model_fingerprint(layout.model(spec.directory))
    return _sha([context.fingerprint, model, spec.__dict__, int(steps)])


def read_cell(layout: DataLayout, model: str, steps: int) -> pd.DataFrame | None:
    path = cell_path(layout, model, steps)
    return pd.read_parquet(path) if path.is_file() else None


def cell_is_fresh(context: BenchContext, layout: DataLayout, model: str, steps: int) -> bool:
    """A measured (not skipped) cell file computed from exactly the current inputs."""
    spec = model_spec(model)
    if unavailable_reason(spec, layout, steps) is not None:
        return False
    rows = read_cell(layout, model, steps)
    if rows is None or rows.empty or (rows["status"] != "ok").any():
        return False
    return str(rows["fingerprint"].iloc[0]) == cell_fingerprint(context, spec, layout, steps)


# --------------------------------------------------------------------------------------------
# one cell
# --------------------------------------------------------------------------------------------
def image_seed(seed: int, class_name: str, batch: int) -> int:
    """The seed of one batch: the same for every model (same starting noise), independent of
    which other classes are evaluated."""
    return (int(seed) * 1_000_003 + zlib.crc32(class_name.encode()) * 1009 + int(batch)) % 2**62


def _predict(context: BenchContext, images: np.ndarray, feats: np.ndarray) -> np.ndarray | None:
    from ops.classifier import classify, predict_from_features

    if context.classifier is None:
        return None
    if context.extractor.name == "domain":
        return predict_from_features(context.classifier, feats)
    return classify(context.classifier, images)


def _generate_unit(context: BenchContext, sampler: Sampler, unit: Unit, steps: int) -> UnitResult:
    """Generate one unit's images, featurise and classify them; keep its grid samples."""
    from ops.training.runtime import torch_threads

    prompt, _ = sampler.prompt_for(unit.class_name, context.classes[unit.class_name])
    t0 = time.perf_counter()
    images = sampler.images(prompt, unit.n, steps, unit.seed)
    seconds = time.perf_counter() - t0
    with torch_threads(context.cfg.get("classifier_threads")):
        feats = extract_features(images, context.extractor, device=context.device)
        preds = _predict(context, images, feats)
    keep = max(0, int(context.cfg["grid_samples"]) - unit.start)
    return UnitResult(unit, feats, preds, seconds, list(images[:keep]))


def generate_cell(
    context: BenchContext, sampler: Sampler, steps: int, group: ProcessGroup | None = None
) -> list[UnitResult] | None:
    """Generate this rank's share of the cell's units (``ops.benchmark_shards``); rank 0 gets
    every unit back in canonical order, other ranks None."""
    from ops.training.runtime import torch_threads

    group = group or ProcessGroup()
    cfg = context.cfg
    units = cell_units(
        list(context.classes),
        int(cfg["images_per_class"]),
        int(cfg["generation_batch_size"]),
        lambda name, batch: image_seed(cfg["seed"], name, batch),
    )
    mine: list[UnitResult | SkipCell]
    try:
        with torch_threads(cfg.get("threads")):
            mine = [
                _generate_unit(context, sampler, u, steps)
                for u in shard(units, group.rank, group.world_size)
            ]
    except SkipCell as exc:  # still gathered: a rank that raised alone would hang the others
        mine = [exc]
    gathered = group.gather(mine)
    if gathered is None:
        return None
    skips = [r for r in gathered if isinstance(r, SkipCell)]
    if skips:
        raise skips[0]
    return in_canonical_order(gathered, units)


def _class_row(
    context: BenchContext, sampler: Sampler, class_name: str, results: list[UnitResult]
) -> tuple[dict[str, Any], FeatureStats, np.ndarray, np.ndarray | None, float, list[np.ndarray]]:
    """Metrics of one class from its units, accumulated batch by batch in canonical order
    (the same ``update`` sequence whichever processes generated them)."""
    cfg = context.cfg
    prompt, warning = sampler.prompt_for(class_name, context.classes[class_name])
    stats = FeatureStats(context.extractor.dim)
    for r in results:
        stats.update(r.features)
    all_feats = np.concatenate([r.features for r in results])
    preds = [r.predictions for r in results if r.predictions is not None]
    seconds = sum(r.seconds for r in results)
    samples = [img for r in results for img in r.samples][: int(cfg["grid_samples"])]
    ref = context.references[class_name]
    metrics = evaluate_cell(
        stats,
        ref.stats,
        all_feats,
        ref.feats,
        kid_subsets=int(cfg.get("kid_subsets", 100)),
        kid_subset_size=int(cfg.get("kid_subset_size", 1000)),
        seed=int(cfg["seed"]),
    )
    warnings = list(metrics.warnings) + ([warning] if warning else [])
    hits = None
    if preds and class_name in context.classifier_names:
        hits = np.concatenate(preds) == context.classifier_names.index(class_name)
    elif preds:
        warnings.append(f"classifier has no class {class_name!r}: no class fidelity")
    row = {
        **metrics.as_dict(),
        "class_name": class_name,
        "prompt": prompt,
        "class_fidelity": float(np.mean(hits)) if hits is not None else float("nan"),
        "seconds_per_image": seconds / max(1, stats.n),
        "warnings": "; ".join(warnings),
    }
    return row, stats, all_feats, hits, seconds, samples


def _skipped(model: str, steps: int, reason: str) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "steps": int(steps),
            "class_name": POOLED,
            "status": "skipped",
            "reason": reason,
            "fid": float("nan"),
            "kid": float("nan"),
            "n": 0,
            "class_fidelity": float("nan"),
            "seconds_per_image": float("nan"),
        }
    ]


def _write_cell(layout: DataLayout, model: str, steps: int, rows: list[dict[str, Any]]) -> Path:
    path = cell_path(layout, model, steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df = pd.DataFrame(rows)
    df["steps"] = df["steps"].astype("int64")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def measure_cell(
    context: BenchContext,
    sampler: Sampler,
    model: str,
    steps: int,
    group: ProcessGroup | None = None,
) -> tuple[list[dict[str, Any]], list[list[np.ndarray]]] | None:
    """The rows of one cell (per class, then pooled) and the kept samples per class; writes
    nothing. With a ``group`` of several processes every rank must call it: each generates its
    shard, rank 0 gets the rows and the others None. Raises :class:`SkipCell` when the sampler
    cannot run ``steps``."""
    group = group or ProcessGroup()
    t0 = time.perf_counter()
    results = generate_cell(context, sampler, steps, group)
    if results is None:
        return None
    wall = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    parts: list[tuple[FeatureStats, np.ndarray, np.ndarray | None, float]] = []
    samples: list[list[np.ndarray]] = []
    for class_name, group_results in groupby(results, key=lambda r: r.unit.class_name):
        row, stats, feats, hits, seconds, kept = _class_row(
            context, sampler, class_name, list(group_results)
        )
        rows.append(row)
        parts.append((stats, feats, hits, seconds))
        samples.append(kept)
    rows.append(_pooled_row(context, parts))
    rows[-1]["wall_seconds"] = wall
    common = {
        "model": model,
        "steps": int(steps),
        "status": "ok",
        "reason": "",
        "nfe": int(steps) * sampler.unet_calls_per_step,
        "guidance_scale": float(context.cfg["guidance_scale"]),
        "extractor": context.extractor.name,
        "processes": group.world_size,
        "measured_at": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    for i, row in enumerate(rows):
        row.update(common)
        row["sample_row"] = i if row["class_name"] != POOLED else -1
    return rows, samples


def run_cell(
    model: str,
    steps: int,
    params: dict[str, Any],
    layout: DataLayout,
    *,
    context: BenchContext | None = None,
    sampler: Sampler | None = None,
    group: ProcessGroup | None = None,
) -> list[dict[str, Any]] | None:
    """Measure one (model, steps) cell over every evaluated class; write and return its rows.

    Rows: one per class plus the pooled row (``class_name == "all"``). A model that is not on
    disk, or a step count it cannot run, gives a single ``status == "skipped"`` row with the
    reason. ``context`` and ``sampler`` let a caller reuse what it already loaded. Under a
    launch every rank calls it and generates its shard; rank 0 writes and returns the rows,
    the other ranks return None.
    """
    group = group or ProcessGroup.current()
    spec = model_spec(model)
    steps = int(steps)
    if spec.fixed_steps and steps != spec.fixed_steps:
        raise ValueError(f"{model} is measured at {spec.fixed_steps} steps only, not {steps}")
    reason = unavailable_reason(spec, layout, steps)
    if reason is not None:
        return _write_skipped(layout, model, steps, reason, group)
    context = context or load_context(params, layout, group)
    sampler = sampler or open_sampler(spec, layout, context.cfg, device=group.device)
    try:
        measured = measure_cell(context, sampler, model, steps, group)
    except SkipCell as exc:
        return _write_skipped(layout, model, steps, str(exc), group)
    if measured is None:
        return None
    rows, samples = measured
    grid = _save_grid(layout, model, steps, samples)
    fingerprint = cell_fingerprint(context, spec, layout, steps)
    for row in rows:
        row.update(
            model_dir=str(layout.model(spec.directory)),
            fingerprint=fingerprint,
            sample_grid=str(grid.relative_to(layout.root)),
            grid_cols=max(len(s) for s in samples),
        )
    _write_cell(layout, model, steps, rows)
    return rows


def _write_skipped(
    layout: DataLayout, model: str, steps: int, reason: str, group: ProcessGroup
) -> list[dict[str, Any]] | None:
    if not group.is_main:
        return None
    rows = _skipped(model, steps, reason)
    _write_cell(layout, model, steps, rows)
    return rows


def _pooled_row(
    context: BenchContext, parts: list[tuple[FeatureStats, np.ndarray, np.ndarray | None, float]]
) -> dict[str, Any]:
    """Pooled over the evaluated classes: merged moments on both sides (the Table-3 FID)."""
    cfg = context.cfg
    gen = FeatureStats.merge_all(p[0] for p in parts)
    ref = FeatureStats.merge_all(context.references[c].stats for c in context.classes)
    metrics = evaluate_cell(
        gen,
        ref,
        np.concatenate([p[1] for p in parts]),
        np.concatenate([context.references[c].feats for c in context.classes]),
        kid_subsets=int(cfg.get("kid_subsets", 100)),
        kid_subset_size=int(cfg.get("kid_subset_size", 1000)),
        seed=int(cfg["seed"]),
    )
    hits = [p[2] for p in parts if p[2] is not None]
    fidelity = float(np.mean(np.concatenate(hits))) if hits else float("nan")
    seconds = sum(p[3] for p in parts)
    return {
        **metrics.as_dict(),
        "class_name": POOLED,
        "prompt": "",
        "class_fidelity": fidelity,
        "seconds_per_image": seconds / max(1, gen.n),
    }


def _save_grid(layout: DataLayout, model: str, steps: int, samples: list[list[np.ndarray]]) -> Path:
    """The cell's picture: one row per class (in class order), ``grid_samples`` columns,
    tiled without gaps so :func:`cell_samples` can cut single images back out."""
    from PIL import Image

    from ops.training.grids import image_grid

    cols = max(len(s) for s in samples)
    tiles = []
    for row in samples:
        blank = np.zeros_like(row[0])
        tiles += [Image.fromarray(x) for x in row] + [Image.fromarray(blank)] * (cols - len(row))
    path = grid_path(layout, model, steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(tiles, cols=cols, pad=0).save(path)
    return path


def cell_samples(layout: DataLayout, rows: pd.DataFrame, count: int = 1) -> dict[str, list[Any]]:
    """The first ``count`` sample images of each class of one cell, cut from its grid PNG
    (lossless), as {class_name: [uint8 (H, W, 3), ...]}."""
    from PIL import Image

    per_class = rows[(rows["class_name"] != POOLED) & (rows["status"] == "ok")]
    if per_class.empty:
        return {}
    path = layout.root / str(per_class["sample_grid"].iloc[0])
    if not path.is_file():
        return {}
    grid = np.asarray(Image.open(path).convert("RGB"))
    h = grid.shape[0] // len(per_class)
    w = grid.shape[1] // int(per_class["grid_cols"].iloc[0])
    out: dict[str, list[Any]] = {}
    for row in per_class.itertuples(index=False):
        r = int(row.sample_row)
        out[str(row.class_name)] = [
            grid[r * h : (r + 1) * h, c * w : (c + 1) * w]
            for c in range(min(count, grid.shape[1] // w))
        ]
    return out


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
    outcome: dict[str, list[str]] = {"measured": [], "reused": [], "skipped": []}
    todo: list[tuple[str, int]] = []

    def record(name: str, rows: list[dict[str, Any]]) -> None:
        outcome["skipped" if rows[0]["status"] == "skipped" else "measured"].append(name)
        if progress is not None:
            progress(name, rows)

    if group.is_main:
        for model, steps in cells:
            name, spec = f"{model}__{steps}", model_spec(model)
            reason = unavailable_reason(spec, layout, steps)
            if reason is not None:
                record(name, _write_skipped(layout, model, steps, reason, group))
                continue
            context = context or load_context(params, layout, group)
            if not force and cell_is_fresh(context, layout, model, steps):
                outcome["reused"].append(name)
            else:
                todo.append((model, steps))
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
    return outcome


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
        from ops.benchmark_report import log_to_mlflow

        summary = {**_report(params, layout), **outcome, "world_size": group.world_size}
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        if log_mlflow:
            summary["mlflow_run_id"] = log_to_mlflow(params, layout, summary)
    group.barrier()
    return summary


def _report(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Rank 0's part after the cells: the reports and the Fig. 3 picture."""
    from ops.benchmark_report import ABLATION_FILE, k_ablation, placeholder_picture

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

    return run_trainer("benchmark", params, layout, benchmark_config(params))


def benchmark_ranks(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """What every rank of the benchmark runs (trainer ``benchmark`` of ``ops.training.entry``).

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


def collect_cells(layout: DataLayout, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every cell file's rows (of the configured grid when ``params`` is given), in table order."""
    if params is not None:
        frames = [read_cell(layout, m, s) for m, s in plan(params)]
    else:
        frames = [
            pd.read_parquet(p) for p in sorted((layout.reports / CELLS_DIR).glob("*.parquet"))
        ]
    frames = [f for f in frames if f is not None and not f.empty]
    if not frames:
        return pd.DataFrame(columns=["model", "steps", "class_name", "status", "fid"])
    return pd.concat(frames, ignore_index=True)


def summarize(layout: DataLayout, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the cell files into ``reports/benchmark.{parquet,json,md}``,
    ``reports/fid_vs_steps.{csv,png}`` and a step-comparison grid per class."""
    from ops.benchmark_report import write_reports

    if params is None:
        return write_reports(layout, collect_cells(layout))
    return write_reports(
        layout,
        collect_cells(layout, params),
        ablation=ablation_rows(params),
        table3_models=list(benchmark_config(params)["models"]),
    )
