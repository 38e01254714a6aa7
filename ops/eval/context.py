"""What a benchmark cell is computed from, and whether its stored result is still fresh.

:class:`BenchContext` holds what every cell shares (config, evaluated classes, the feature
extractor, the classifier, the reference and floor features). A cell file
``reports/cells/<model>__<steps>.parquet`` carries a fingerprint of everything it was computed
from (model weights, extractor, reference images, the config keys in ``MEASURE_KEYS``, the
source of the sampling and metric code and the library versions, ``ops.eval.versions``), so a
cell re-runs exactly when one of them changed.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ops.eval.extractor import load_extractor
from ops.eval.features import FeatureExtractor
from ops.eval.plan import (
    ModelSpec,
    model_spec,
    plan,
    unavailable_reason,
)
from ops.eval.reference import Reference, reference_stats
from ops.eval.settings import benchmark_config  # also imported from here by other stages
from ops.eval.shards import (
    ProcessGroup,
)
from ops.eval.versions import code_versions, library_versions
from ops.layout import DataLayout

POOLED = "all"
MEAN = "mean"
SUMMARY = (POOLED, MEAN)
REAL = "real"  # the floor: held-out real images against the reference


CELLS_DIR = "cells"


# Config keys that change what a cell measures (the rest: which cells, how reports look).
MEASURE_KEYS = (
    "images_per_class",
    "generation_batch_size",
    "guidance_scale",
    "teacher_timestep_spacing",
    "grid_samples",
    "seed",
    "headline",
    "bootstrap_replicates",
    "bootstrap_seed",
    "reference_images_per_class",
    "fidelity_k",
)


def evaluated_classes(params: dict[str, Any], manifest: pd.DataFrame) -> dict[str, str]:
    """The evaluated classes and their prompts, by name: every class with non-holdout training
    rows (the models know it) and at least two test images.

    ``benchmark.classes`` (null by default) caps the number for smoke runs: then the classes
    with the most test images win, ties broken by name. The prompt is the class's most frequent
    training prompt.
    """
    cap = benchmark_config(params).get("classes")
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
    chosen = sorted(eligible, key=lambda c: (-int(tests[c]), c))
    chosen = chosen[: int(cap)] if cap else chosen
    return training_prompts(train, chosen)


def training_prompts(train: pd.DataFrame, names: Sequence[str]) -> dict[str, str]:
    """Each class's most frequent prompt among ``train`` rows (ties: the first by name), the
    prompt every model is sampled with for that class."""
    out: dict[str, str] = {}
    for name in sorted(names):
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
    floors: dict[str, Reference] = field(default_factory=dict)
    classifier: Any = None  # ops.eval.classifier.DomainClassifier, for class fidelity
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
    from ops.eval.classifier import MODEL_NAME, load_domain_classifier
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
    from ops.eval.reference_sets import FLOOR, REFERENCE, image_sets

    sets = image_sets(params, layout, list(classes), manifest)
    sets[FLOOR] = {c: rows for c, rows in sets[FLOOR].items() if len(rows) >= 2}
    with torch_threads(cfg.get("classifier_threads")):
        refs, floors = (
            reference_stats(
                layout, extractor, list(sets[name]), rows_by_class=sets[name], set_name=name,
                device=device,
            )
            for name in (REFERENCE, FLOOR)
        )  # fmt: skip
    payload = {
        "extractor": extractor.fingerprint,
        "references": {c: r.fingerprint for c, r in sorted(refs.items())},
        "floors": {c: r.fingerprint for c, r in sorted(floors.items())},
        "classes": classes,
        "classifier": _weights(classifier) if classifier is not None else None,
        "config": {k: cfg.get(k) for k in MEASURE_KEYS},
        "metric_code": code_versions()["metrics"],
        "libraries": library_versions(),
    }
    context.references, context.floors = refs, floors
    context.fingerprint = _sha(payload)
    return context


def _weights(model: Any) -> str:
    from ops.eval.classifier import weights_fingerprint

    return weights_fingerprint(model)


def _sha(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_MODEL_HASHES: dict[tuple, str] = {}


def model_fingerprint(directory: Path) -> str:
    """Content hash of a model directory (paths relative to it, so two directories holding the
    same files hash alike whatever their names), memoised on (path, sizes, mtimes) so a run
    hashes each model once however many cells it has."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    key = (str(directory), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _MODEL_HASHES:
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(directory)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        _MODEL_HASHES[key] = digest.hexdigest()[:16]
    return _MODEL_HASHES[key]


def cell_fingerprint(context: BenchContext, spec: ModelSpec, layout: DataLayout, steps: int) -> str:
    """The context's fingerprint (inputs, metric code, libraries) + the model's weights, its
    sampler's code and the step count; the seeds per cell are in the config keys."""
    return _sha([measurement_key(context, spec, layout, steps), spec.name, spec.directory])


def measurement_key(context: BenchContext, spec: ModelSpec, layout: DataLayout, steps: int) -> str:
    """What decides a cell's numbers, without the model's *name*: two names whose directories
    hold identical files and are sampled alike (``lcm`` and ``llcm`` at h = 1/2) share it, so
    the second is copied instead of measured again (``ops.eval.runner``)."""
    from ops.eval.settings import headline_seeds

    model = model_fingerprint(layout.model(spec.directory))
    sampler = code_versions()[spec.family]
    how = {k: v for k, v in spec.__dict__.items() if k not in ("name", "directory")}
    seeds = headline_seeds(context.cfg, spec.name, steps)
    return _sha([context.fingerprint, model, sampler, how, int(steps), seeds])


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
def image_seed(seed: int, class_name: str, batch: int, replicate: int = 0) -> int:
    """The seed of one batch of one generation seed (``replicate``): the same for every model
    (same starting noise), independent of which other classes are evaluated; replicate 0 is
    the single-seed cell's."""
    base = int(seed) * 1_000_003 + zlib.crc32(class_name.encode()) * 1009 + int(batch)
    return (base + int(replicate) * 7_919_000_017) % 2**62


def collect_cells(layout: DataLayout, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every cell file's rows (of the configured grid when ``params`` is given), in table order."""
    if params is not None:
        frames = [read_cell(layout, m, s) for m, s in [*plan(params), (REAL, 0)]]
    else:
        frames = [
            pd.read_parquet(p) for p in sorted((layout.reports / CELLS_DIR).glob("*.parquet"))
        ]
    frames = [f for f in frames if f is not None and not f.empty]
    if not frames:
        return pd.DataFrame(columns=["model", "steps", "class_name", "status", "fid"])
    return pd.concat(frames, ignore_index=True)
