"""One benchmark cell: generate a model's images at one step count and measure them per class.

:func:`run_cell` generates, for every evaluated class, ``images_per_class`` images (a headline
cell: ``headline.seeds`` generation seeds, ``ops.eval.settings.images_per_seed`` each) in
batches and streams each batch straight into feature extraction (no image files, except a few
samples per class kept as the cell's grid picture). ``ops.eval.cell_rows`` then measures each
class against its real reference and summarises over classes (rows ``all`` and ``mean``):
FID, unbiased KID and class fidelity with class-stratified bootstrap intervals,
precision/recall/density/coverage, n and n_ref, seconds per image and UNet evaluations per
image (``nfe``; classifier-free guidance doubles the teacher's).

The generated features are saved (``reports/features/<model>__<steps>.npz``) and so are the
bootstrap replicates (``reports/cells/<model>__<steps>.bootstrap.npz``): every number can be
recomputed, and differences between models are paired replicate by replicate. Generation can
be sharded over the processes of a launch: each process generates its own (class, batch)
units, whose seeds do not depend on the process, and rank 0 reassembles them in order
(``ops.eval.shards``), so the numbers equal a single-process run's. A model missing on disk
gives a ``skipped`` row with the reason instead of failing.
"""

from __future__ import annotations

import functools
import os
import time
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ops.eval.cell_rows import cell_rows, save_replicates
from ops.eval.classwise import ClassSample
from ops.eval.context import (
    POOLED,
    SUMMARY,
    BenchContext,
    cell_fingerprint,
    cell_path,
    grid_path,
    image_seed,
    load_context,
)
from ops.eval.features import extract_features
from ops.eval.plan import (
    Sampler,
    SkipCell,
    model_spec,
    open_sampler,
    unavailable_reason,
)
from ops.eval.saved_features import features_path, save_features
from ops.eval.settings import headline_seeds, images_per_seed
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


@functools.cache
def _phantom_labels() -> dict[str, tuple[str, bool]]:
    """Phantom class -> (family, diseased) of the registry's phantom source ({} without one)."""
    from ops.eval.findings import READERS, phantom_classes

    try:
        labels = phantom_classes()
    except (StopIteration, FileNotFoundError, KeyError):
        return {}
    return {name: label for name, label in labels.items() if label[0] in READERS}


def _findings(class_name: str, images: np.ndarray) -> np.ndarray | None:
    """Per image: does the finding read from its pixels (``ops.eval.findings``, no learned
    weights) match the class it was prompted for? None for classes without a reader."""
    from ops.eval.findings import read_finding

    label = _phantom_labels().get(class_name)
    if label is None:
        return None
    family, diseased = label
    return np.array([read_finding(family, image).diseased == diseased for image in images])


def finding_agreement(results: list[UnitResult]) -> dict[str, float]:
    """Per class: the share of its generated images whose read finding matches its label."""
    out: dict[str, float] = {}
    for name, group in groupby(results, key=lambda r: r.unit.class_name):
        found = [r.findings for r in group if r.findings is not None]
        if found:
            out[name] = float(np.concatenate(found).mean())
    return out


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
    findings = _findings(unit.class_name, images)
    return UnitResult(unit, feats, preds, seconds, list(images[:keep]), findings)


def generate_cell(
    context: BenchContext,
    sampler: Sampler,
    steps: int,
    group: ProcessGroup | None = None,
    seeds: int = 1,
) -> list[UnitResult] | None:
    """Generate this rank's share of the cell's units (``ops.eval.shards``), ``seeds``
    generation seeds per class; rank 0 gets every unit back in canonical order, others None."""
    from ops.training.runtime import torch_threads

    group = group or ProcessGroup()
    cfg = context.cfg
    units = cell_units(
        list(context.classes),
        images_per_seed(cfg, seeds),
        int(cfg["generation_batch_size"]),
        lambda name, replicate, batch: image_seed(cfg["seed"], name, batch, replicate),
        replicates=seeds,
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


def _hits(context: BenchContext, class_name: str, results: list[UnitResult]) -> np.ndarray | None:
    preds = [r.predictions for r in results if r.predictions is not None]
    if not preds or class_name not in context.classifier_names:
        return None
    return np.concatenate(preds) == context.classifier_names.index(class_name)


def _per_class(
    context: BenchContext, results: list[UnitResult]
) -> tuple[list[ClassSample], dict[str, np.ndarray], dict[str, float], list[list[np.ndarray]]]:
    """Class samples (generated vs reference features), seed index per image, generation
    seconds and kept grid samples, per class in canonical order."""
    samples, seeds, seconds, kept = [], {}, {}, []
    for name, group in groupby(results, key=lambda r: r.unit.class_name):
        parts = list(group)
        feats = np.concatenate([r.features for r in parts])
        hits = _hits(context, name, parts)
        samples.append(ClassSample(name, feats, context.references[name].feats, hits))
        seeds[name] = np.concatenate([np.full(r.unit.n, r.unit.replicate) for r in parts])
        seconds[name] = sum(r.seconds for r in parts)
        kept.append([img for r in parts for img in r.samples][: int(context.cfg["grid_samples"])])
    return samples, seeds, seconds, kept


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
    seeds: int | None = None,
) -> tuple[list[dict[str, Any]], list[list[np.ndarray]], dict[str, Any]] | None:
    """The rows of one cell (per class, then ``all`` and ``mean``), the kept samples per class
    and what to save (features, replicates); writes nothing. With a ``group`` of several
    processes every rank must call it: each generates its shard, rank 0 gets the result and
    the others None. Raises :class:`SkipCell` when the sampler cannot run ``steps``."""
    group = group or ProcessGroup()
    seeds = seeds or headline_seeds(context.cfg, model, steps)
    t0 = time.perf_counter()
    results = generate_cell(context, sampler, steps, group, seeds)
    if results is None:
        return None
    wall = time.perf_counter() - t0
    samples, seed_of, seconds, kept = _per_class(context, results)
    rows, reps = cell_rows(samples, context.cfg, seed_of)
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
    total_seconds = sum(seconds.values())
    agreement = finding_agreement(results)
    for i, row in enumerate(rows):
        name = row["class_name"]
        summary = name in SUMMARY
        row.update(common)
        values = list(agreement.values()) if summary else [agreement.get(name, float("nan"))]
        row["finding_agreement"] = float(np.mean(values)) if values else float("nan")
        row["prompt"] = "" if summary else sampler.prompt_for(name, context.classes[name])[0]
        row["seconds_per_image"] = (total_seconds if summary else seconds[name]) / max(1, row["n"])
        row["wall_seconds"] = wall if name == POOLED else float("nan")
        row["sample_row"] = -1 if summary else i
    saved = {
        "features": {s.name: s.gen for s in samples},
        "seeds": seed_of,
        "hits": {s.name: s.hits for s in samples},
        "replicates": reps,
    }
    return rows, kept, saved


def save_measurements(layout: DataLayout, model: str, steps: int, saved: dict[str, Any]) -> None:
    """The cell's features (``reports/features``) and bootstrap replicates (beside the cell)."""
    save_features(
        features_path(layout, model, steps), saved["features"], saved["seeds"], saved["hits"]
    )
    save_replicates(replicates_path(layout, model, steps), saved["replicates"])


def replicates_path(layout: DataLayout, model: str, steps: int) -> Path:
    return cell_path(layout, model, steps).with_suffix(".bootstrap.npz")


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
    rows, samples, saved = measured
    save_measurements(layout, model, steps, saved)
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

    per_class = rows[~rows["class_name"].isin(SUMMARY) & (rows["status"] == "ok")]
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
