"""One benchmark cell: generate a model's images at one step count and measure them per class.

:func:`run_cell` generates ``images_per_class`` images per class in batches and streams each
batch straight into feature extraction (no image files, except a few samples per class kept
as the cell's grid picture), then measures per class and pooled over the classes: FID and
KID against the class's real reference, n and n_ref, class fidelity (share of images the
domain classifier assigns to the prompted class), wall-clock seconds per image and UNet
evaluations per image (``nfe``; classifier-free guidance doubles the teacher's).

The *pooled* row (``class_name == "all"``) merges the per-class statistics exactly
(``FeatureStats.merge_all``). Generation can be sharded over the processes of a launch: each
process generates its own (class, batch) units, whose seeds do not depend on the process, and
rank 0 reassembles them in order (``ops.eval.shards``), so the numbers equal a single-process
run's. A model missing on disk gives a ``skipped`` row with the reason instead of failing.
"""

from __future__ import annotations

import os
import time
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ops.eval.context import (
    POOLED,
    BenchContext,
    cell_fingerprint,
    cell_path,
    grid_path,
    image_seed,
    load_context,
)
from ops.eval.distances import FeatureStats
from ops.eval.features import extract_features
from ops.eval.metrics import evaluate_cell
from ops.eval.plan import (
    Sampler,
    SkipCell,
    model_spec,
    open_sampler,
    unavailable_reason,
)
from ops.eval.shards import (
    ProcessGroup,
    Unit,
    UnitResult,
    cell_units,
    in_canonical_order,
    shard,
)
from ops.layout import DataLayout


def _predict(context: BenchContext, images: np.ndarray, feats: np.ndarray) -> np.ndarray | None:
    from ops.eval.classifier import classify, predict_from_features

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
    """Generate this rank's share of the cell's units (``ops.eval.shards``); rank 0 gets
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
        return write_skipped(layout, model, steps, reason, group)
    context = context or load_context(params, layout, group)
    sampler = sampler or open_sampler(spec, layout, context.cfg, device=group.device)
    try:
        measured = measure_cell(context, sampler, model, steps, group)
    except SkipCell as exc:
        return write_skipped(layout, model, steps, str(exc), group)
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


def write_skipped(
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
